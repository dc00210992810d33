//! `outrider server --store etcd://…` on a real etcd (Debian's `etcd-server`, started on
//! loopback and stopped afterwards): what it wrote is there after a restart, an etcd outage
//! answers writes 503 with a reason, reads from the last state and /readyz not ready until
//! etcd returns, and an unreachable etcd at start is a clear error. Skipped with a note when etcd is not installed, unless
//! `OUTRIDER_REQUIRE_ETCD` is set (as in CI).

use std::{
    ffi::OsString,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use outrider_client::Client;
use outrider_devtools::harness::{Child, PROCESS_GRACE, free_ports, wait_manager_ready};
use outrider_store::test_etcd::{TestEtcd, etcd_or_skip};

const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

fn server_args(data_dir: &Path, port: u16, store: &str) -> Vec<OsString> {
    let listen = format!("127.0.0.1:{port}");
    ["server", "--store", store, "--listen", &listen, "--data-dir"]
        .map(OsString::from)
        .into_iter()
        .chain([data_dir.into()])
        .collect()
}

async fn start_manager(data_dir: &Path, store: &str) -> (Child, Client) {
    let port = free_ports(1).unwrap()[0];
    let log = data_dir.join(format!("manager-{port}.log"));
    let mut manager = Child::spawn("manager", Path::new(OUTRIDER), server_args(data_dir, port, store), log).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let (client, _) = wait_manager_ready(&mut manager, &url, data_dir, Duration::from_secs(30)).await.unwrap();
    (manager, client)
}

async fn tenants(client: &Client) -> Vec<String> {
    client.list_tenants().await.unwrap().into_iter().map(|t| t.name).collect()
}

#[tokio::test]
async fn a_manager_on_etcd_keeps_its_data_across_restarts_and_rides_out_an_outage() {
    let Some(binary) = etcd_or_skip() else { return };
    let mut etcd = TestEtcd::start(&binary).await.unwrap();
    let store = etcd.url("outrider");
    let dir = tempfile::tempdir().unwrap();

    let (mut manager, client) = start_manager(dir.path(), &store).await;
    client.create_tenant("acme").await.unwrap();
    manager.stop(PROCESS_GRACE).await;
    assert!(!dir.path().join("outrider.redb").exists(), "nothing in the embedded store");

    let (_manager, client) = start_manager(dir.path(), &store).await;
    assert!(tenants(&client).await.contains(&"acme".to_owned()), "read back from etcd after a restart");
    // The store's last state follows etcd from a watch of its own: give it a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    etcd.stop();
    let err = client.create_tenant("beta").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("unavailable")), "{err}");
    assert!(err.to_string().contains("etcd"), "the reason names etcd: {err}");
    assert!(client.readyz().await.is_err(), "not ready without etcd");
    assert!(tenants(&client).await.contains(&"acme".to_owned()), "reads from the last state");

    etcd.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.readyz().await.is_err() {
        assert!(Instant::now() < deadline, "the manager did not become ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.create_tenant("beta").await.unwrap();
    assert!(tenants(&client).await.contains(&"beta".to_owned()));
}

#[test]
fn an_unreachable_etcd_at_start_is_a_clear_error_and_a_failed_exit() {
    // A port nobody listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("etcd://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(OUTRIDER).args(server_args(dir.path(), 0, &store)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot open the store {store}")), "{stderr}");
    assert!(stderr.contains("store unavailable: etcd at 127.0.0.1:"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
}
