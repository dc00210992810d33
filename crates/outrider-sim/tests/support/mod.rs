//! Helpers shared by the sim crate's integration tests.

use std::time::Duration;

use outrider_client::{Client, InstanceFilter};
use outrider_model::Instance;

/// Polls `GET /instances` of the default tenant until `done` holds for the list, or fails
/// after `timeout`.
pub async fn until(
    client: &Client,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Instance]) -> bool,
) -> Vec<Instance> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = client.list_instances("default", &InstanceFilter::default()).await.unwrap();
        if done(&list) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A manager in-process on a free loopback port with its data in `dir`, a client with the
/// admin token, and the token.
#[allow(dead_code, reason = "not every test binary that includes this module boots a manager this way")]
pub async fn boot(dir: &std::path::Path) -> (outrider_manager::RunningManager, Client, String) {
    let config = outrider_manager::ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap());
    let m = outrider_manager::start(config).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let client = Client::new(&format!("http://{}", m.addr), Some(token.clone())).unwrap();
    (m, client, token)
}
