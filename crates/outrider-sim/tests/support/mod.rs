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
