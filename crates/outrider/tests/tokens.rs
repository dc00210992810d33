//! `outrider token create|list|revoke` against a real manager (in process, real sockets): the
//! secret is printed once, tokens are listed without it, a token's role and tenant bound what
//! its holder may do, and a revoked token is refused at once.

use std::path::{Path, PathBuf};

use outrider_manager::{ManagerConfig, start};
use serde_json::Value;

/// Runs `outrider ARGS --manager BASE --token-file TOKEN`: success, standard output, error.
async fn outrider(base: &str, token: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outrider"))
        .args(args)
        .arg("--manager")
        .arg(base)
        .arg("--token-file")
        .arg(token)
        .env_remove("OUTRIDER_TENANT")
        .output()
        .await
        .expect("run outrider");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// Writes `token` to a file of its own in `dir`.
fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, token).unwrap();
    path
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(ManagerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let base = format!("http://{}", m.addr);
    let admin = dir.path().join("data/admin.token");
    let ok = |r: (bool, String, String)| {
        assert!(r.0, "{}", r.2);
        r.1
    };
    ok(outrider(&base, &admin, &["tenant", "create", "acme"]).await);

    // The table shows the secret once, with the warning to keep it.
    let table =
        ok(outrider(&base, &admin, &["token", "create", "--name", "ci", "--role", "viewer", "--tenant", "acme"]).await);
    assert!(table.contains("ci") && table.contains("acme") && table.contains("viewer"), "{table}");
    assert!(table.contains("not shown again"), "{table}");
    let secret = table.lines().find_map(|l| l.strip_prefix("token: ")).expect("the secret").trim().to_owned();
    // `-o json` prints it for scripts; --all-tenants makes a token of every tenant.
    let json = ok(outrider(
        &base,
        &admin,
        &["token", "create", "--name", "ops", "--role", "operator", "--all-tenants", "-o", "json"],
    )
    .await);
    let issued: Value = serde_json::from_str(&json).unwrap();
    assert_eq!((issued["name"].as_str(), issued["tenant"].is_null()), (Some("ops"), true), "{issued}");
    assert!(issued["token"].as_str().unwrap().starts_with("otr_"));
    // Without --tenant a token is of the `default` tenant, never of all by accident.
    let scoped =
        ok(outrider(&base, &admin, &["token", "create", "--name", "d", "--role", "viewer", "-o", "json"]).await);
    assert_eq!(serde_json::from_str::<Value>(&scoped).unwrap()["tenant"], "default");
    let (good, _, err) = outrider(&base, &admin, &["token", "create", "--name", "ci", "--role", "viewer"]).await;
    assert!(!good && err.contains("conflict"), "{err}");

    let list = ok(outrider(&base, &admin, &["token", "list"]).await);
    for name in ["admin", "ci", "ops", "d"] {
        assert!(list.lines().any(|l| l.starts_with(name)), "{name} in {list}");
    }
    assert!(!list.contains(&secret), "never the secret: {list}");
    let listed: Value =
        serde_json::from_str(&ok(outrider(&base, &admin, &["token", "list", "-o", "json"]).await)).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|t| t.get("token").is_none()));

    // The viewer reads its tenant, and nothing else.
    let viewer = token_file(dir.path(), "ci", &secret);
    ok(outrider(&base, &viewer, &["sidecar", "list", "--tenant", "acme"]).await);
    let (good, _, err) = outrider(&base, &viewer, &["sidecar", "list", "--tenant", "default"]).await;
    assert!(!good && err.contains("forbidden"), "{err}");
    let (good, _, err) = outrider(&base, &viewer, &["token", "list"]).await;
    assert!(!good && err.contains("forbidden"), "{err}");

    let revoked = ok(outrider(&base, &admin, &["token", "revoke", "ci"]).await);
    assert!(revoked.contains("token ci revoked"), "{revoked}");
    let (good, _, err) = outrider(&base, &viewer, &["sidecar", "list", "--tenant", "acme"]).await;
    assert!(!good && err.contains("unauthenticated"), "{err}");
    let (good, _, err) = outrider(&base, &admin, &["token", "revoke", "ci"]).await;
    assert!(!good && err.contains("not_found"), "{err}");
    m.shutdown().await;
}
