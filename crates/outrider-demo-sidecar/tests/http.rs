//! End-to-end tests over real sockets on 127.0.0.1 (port 0).

use std::{
    future::Future,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use outrider_demo_sidecar::{Config, Faults, RunError, run_with_listener};
use tokio::{sync::oneshot, task::JoinHandle, time::timeout};

/// Upper bound for anything that should happen promptly; only hit when a test fails.
const PATIENCE: Duration = Duration::from_secs(20);

struct Sidecar {
    addr: SocketAddr,
    base: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Sidecar {
    fn start(config: Config) -> Self {
        // Idle keep-alive connections of the client pool would hold every stop for the default 1s.
        let config = Config { drain_idle_grace: Duration::from_millis(50), ..config };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_with_listener(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown: Some(tx),
            task,
        }
    }

    fn with_faults(spec: &str) -> Self {
        Self::start(Config { version: "9.9.9".into(), faults: spec.parse::<Faults>().unwrap(), ..Config::default() })
    }

    fn get(&self, path: &str) -> impl Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        self.client.get(format!("{}{path}", self.base)).send()
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let response = self.get(path).await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// The value of an unlabelled sample in `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.text("/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| {
                let (n, v) = line.split_once(' ')?;
                (n == name).then(|| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} missing in:\n{body}"))
    }

    /// Waits (without a fixed sleep) until `n` requests are being handled.
    async fn wait_in_flight(&self, n: f64) {
        timeout(PATIENCE, async {
            while self.metric("requests_in_flight").await != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("requests never got in flight");
    }

    async fn stop(mut self) -> Result<(), RunError> {
        self.shutdown.take().unwrap().send(()).unwrap();
        timeout(PATIENCE, self.task).await.expect("sidecar did not stop").unwrap()
    }
}

#[tokio::test]
async fn root_reports_version_instance_and_pid() {
    let sidecar = Sidecar::start(Config { version: "1.3.0".into(), instance: "svc-a-7".into(), ..Config::default() });
    let response = sidecar.get("/").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "service": "demo",
            "version": "1.3.0",
            "instance": "svc-a-7",
            "pid": std::process::id(),
        })
    );
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn missing_version_and_instance_are_unknown() {
    let sidecar = Sidecar::start(Config::default());
    let body: serde_json::Value = sidecar.get("/").await.unwrap().json().await.unwrap();
    assert_eq!(body["version"], "unknown");
    assert_eq!(body["instance"], "unknown");
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_is_ok_and_fail_health_makes_it_503() {
    let healthy = Sidecar::with_faults("");
    assert_eq!(healthy.text("/healthz").await, (200, "ok".to_owned()));
    healthy.stop().await.unwrap();

    let failing = Sidecar::with_faults("fail-health");
    assert_eq!(failing.text("/healthz").await.0, 503);
    // The business endpoint still works.
    assert_eq!(failing.text("/").await.0, 200);
    failing.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_served_requests_but_not_probes() {
    let sidecar = Sidecar::with_faults("");
    for _ in 0..3 {
        assert_eq!(sidecar.text("/").await.0, 200);
    }
    assert_eq!(sidecar.text("/healthz").await.0, 200);
    assert_eq!(sidecar.metric("requests_total").await, 3.0);
    assert_eq!(sidecar.metric("errors_total").await, 0.0);
    assert_eq!(sidecar.metric("request_duration_seconds_count").await, 3.0);
    let (_, body) = sidecar.text("/metrics").await;
    assert!(body.lines().any(|l| l == "demo_info{version=\"9.9.9\"} 1"), "{body}");
    assert!(body.contains("# TYPE request_duration_seconds histogram"), "{body}");
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn error_rate_one_fails_every_request_and_counts_errors() {
    let sidecar = Sidecar::with_faults("error-rate=1.0");
    for _ in 0..5 {
        assert_eq!(sidecar.text("/").await.0, 500);
    }
    assert_eq!(sidecar.metric("requests_total").await, 5.0);
    assert_eq!(sidecar.metric("errors_total").await, 5.0);
    // Probes are unaffected by error-rate.
    assert_eq!(sidecar.text("/healthz").await.0, 200);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn error_rate_zero_never_fails() {
    let sidecar = Sidecar::with_faults("error-rate=0");
    for _ in 0..20 {
        assert_eq!(sidecar.text("/").await.0, 200);
    }
    assert_eq!(sidecar.metric("errors_total").await, 0.0);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn latency_delays_root_and_shows_in_the_histogram() {
    let sidecar = Sidecar::with_faults("latency=300ms");
    let started = Instant::now();
    assert_eq!(sidecar.text("/").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(sidecar.metric("request_duration_seconds_sum").await >= 0.3);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn error_rate_and_latency_are_counted_under_concurrent_load() {
    let sidecar = Sidecar::with_faults("error-rate=0.3,latency=200ms");
    let n = 300;
    let answers = futures_join_all((0..n).map(|_| sidecar.get("/"))).await;
    let errors = answers.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 500)).count();
    assert!(answers.iter().all(Result::is_ok), "every request is answered");
    let (status, body) = sidecar.text("/metrics").await;
    assert_eq!(status, 200);
    let samples = outrider_promtext::parse(&body, &outrider_promtext::Limits::default()).unwrap();
    let value = |name: &str, le: Option<&str>| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("le") == le)
            .unwrap_or_else(|| panic!("{name} {le:?} missing in:\n{body}"))
            .value
    };
    assert_eq!(value("requests_total", None), f64::from(n));
    assert_eq!(value("errors_total", None), errors as f64, "errors_total counts the 500s answered");
    let ratio = errors as f64 / f64::from(n);
    assert!((0.2..=0.4).contains(&ratio), "error ratio {ratio} far from 0.3");
    assert_eq!(value("request_duration_seconds_count", None), f64::from(n));
    assert_eq!(value("request_duration_seconds_bucket", Some("0.128")), 0.0, "every request took 200ms or more");
    assert_eq!(value("request_duration_seconds_bucket", Some("+Inf")), f64::from(n));
    assert!(value("request_duration_seconds_sum", None) >= 0.2 * f64::from(n));
    sidecar.stop().await.unwrap();
}

/// Runs all `futures` concurrently and returns their outputs in order.
async fn futures_join_all<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops_listening() {
    let sidecar = Sidecar::with_faults("latency=500ms");
    let in_flight = tokio::spawn(sidecar.get("/"));
    sidecar.wait_in_flight(1.0).await;
    let addr = sidecar.addr;
    sidecar.stop().await.unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(TcpStream::connect(addr).is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn drain_timeout_bounds_the_shutdown() {
    let sidecar = Sidecar::start(Config {
        faults: "latency=1h".parse().unwrap(),
        drain_timeout: Duration::from_millis(100),
        ..Config::default()
    });
    let stuck = tokio::spawn(sidecar.get("/"));
    sidecar.wait_in_flight(1.0).await;
    sidecar.stop().await.unwrap();
    stuck.abort();
}

#[tokio::test]
async fn crash_after_ends_the_sidecar_with_an_error() {
    let sidecar = Sidecar::with_faults("crash-after=100ms");
    let err = timeout(PATIENCE, sidecar.task).await.expect("did not crash").unwrap().unwrap_err();
    assert!(err.to_string().contains("crash-after=100ms"), "{err}");
}

#[tokio::test]
async fn exit_immediately_fails_at_start() {
    let sidecar = Sidecar::with_faults("exit-immediately");
    let err = timeout(PATIENCE, sidecar.task).await.expect("did not exit").unwrap().unwrap_err();
    assert!(err.to_string().contains("exit-immediately"), "{err}");
}

#[tokio::test]
async fn background_faults_start_and_stop_with_the_sidecar() {
    let sidecar = Sidecar::with_faults("cpu-burn,leak=1MB/s");
    assert_eq!(sidecar.text("/").await.0, 200);
    sidecar.stop().await.unwrap();
}
