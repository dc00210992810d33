//! The client against a tiny in-process HTTP server that answers as Prometheus does (and as
//! it does not): results, errors, oversized and slow answers.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use outrider_prometheus::{Client, Error, Limits, MAX_POINTS_PER_SERIES};
use time::{OffsetDateTime, macros::datetime};

/// Serves `router` on a free loopback port until the test ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A server whose query endpoints both answer `status` with `body` (JSON), recording the
/// request bodies they got.
async fn answering(status: StatusCode, body: &'static str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let handler = move |form: String| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(form);
            (status, [(header::CONTENT_TYPE, "application/json")], body)
        }
    };
    let router = Router::new()
        .route("/prom/api/v1/query_range", post(handler.clone()))
        .route("/prom/api/v1/query", post(handler));
    let addr = serve(router).await;
    (Client::new(&format!("http://{addr}/prom"), Duration::from_secs(5)).unwrap(), seen)
}

const START: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

fn minutes(n: i64) -> OffsetDateTime {
    START + time::Duration::minutes(n)
}

const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
  {"metric":{"__name__":"outrider_sim_error_ratio","instance":"a-i0","service":"a"},
   "values":[[1767225600,"0.25"],[1767225615.5,"NaN"],[1767225630.125,"+Inf"],[1767225645,"-Inf"],[1767225660,"1e-3"]]},
  {"metric":{"instance":"a-i1"},"values":[]}
]}}"#;

#[tokio::test]
async fn reads_a_matrix_with_special_values_and_fractional_timestamps() {
    let (client, seen) = answering(StatusCode::OK, MATRIX).await;
    let series = client.query_range("up{a=\"b c\"}", START, minutes(1), Duration::from_secs(15)).await.unwrap();
    assert_eq!(series.len(), 2);
    let s = &series[0];
    assert_eq!(s.labels["__name__"], "outrider_sim_error_ratio");
    assert_eq!(s.labels["instance"], "a-i0");
    let times: Vec<OffsetDateTime> = s.points.iter().map(|p| p.0).collect();
    assert_eq!(
        times,
        [
            START,
            START + time::Duration::milliseconds(15_500),
            START + time::Duration::milliseconds(30_125),
            START + time::Duration::seconds(45),
            minutes(1)
        ]
    );
    let values: Vec<f64> = s.points.iter().map(|p| p.1).collect();
    assert_eq!(values[0], 0.25);
    assert!(values[1].is_nan());
    assert_eq!(values[2..], [f64::INFINITY, f64::NEG_INFINITY, 0.001]);
    assert!(series[1].points.is_empty());

    // The form sent: the query, unix seconds with milliseconds, the step in seconds.
    let form = seen.lock().unwrap().pop().unwrap();
    assert_eq!(form, "query=up%7Ba%3D%22b+c%22%7D&start=1767225600.000&end=1767225660.000&step=15");
}

#[tokio::test]
async fn reads_an_instant_vector() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"instance":"a-i0"},"value":[1767225600.25,"0.2"]},{"metric":{},"value":[1767225600.25,"NaN"]}]}}"#;
    let (client, seen) = answering(StatusCode::OK, body).await;
    let samples = client.query("x", START).await.unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].labels["instance"], "a-i0");
    assert_eq!((samples[0].at, samples[0].value), (START + time::Duration::milliseconds(250), 0.2));
    assert!(samples[1].labels.is_empty() && samples[1].value.is_nan());
    assert_eq!(seen.lock().unwrap().pop().unwrap(), "query=x&time=1767225600.000");
}

#[tokio::test]
async fn a_result_of_another_type_is_refused() {
    let (client, _) = answering(StatusCode::OK, MATRIX).await;
    let err = client.query("x", START).await.unwrap_err();
    assert!(matches!(err, Error::ResultType { expected: "vector", ref got } if got == "matrix"), "{err:?}");
    let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1767225600,"1"]}}"#;
    let (client, _) = answering(StatusCode::OK, scalar).await;
    let err = client.query_range("1", START, minutes(1), Duration::from_secs(15)).await.unwrap_err();
    assert!(matches!(err, Error::ResultType { expected: "matrix", ref got } if got == "scalar"), "{err:?}");
}

#[tokio::test]
async fn prometheus_errors_keep_their_type_and_message() {
    let body = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}"#;
    let (client, _) = answering(StatusCode::BAD_REQUEST, body).await;
    let err = client.query("up}", START).await.unwrap_err();
    let Error::Prometheus { status, error_type, message } = &err else { panic!("{err:?}") };
    assert_eq!((*status, error_type.as_str()), (400, "bad_data"));
    assert!(message.contains("parse error"), "{message}");
    assert!(err.to_string().contains("HTTP 400, bad_data"), "{err}");

    let body = r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
    let (client, _) = answering(StatusCode::SERVICE_UNAVAILABLE, body).await;
    let err = client.query("up", START).await.unwrap_err();
    assert!(matches!(err, Error::Prometheus { status: 503, ref error_type, .. } if error_type == "timeout"));
}

#[tokio::test]
async fn other_http_errors_and_bad_json() {
    let (client, _) = answering(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").await;
    let err = client.query("up", START).await.unwrap_err();
    assert!(
        matches!(err, Error::Status { status: 502, ref excerpt, .. } if excerpt.contains("bad gateway")),
        "{err:?}"
    );

    for body in [
        "not json",
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"x"]]}]}}"#,
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,2]]}]}}"#,
        r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
    ] {
        let (client, _) = answering(StatusCode::OK, body).await;
        let err = client.query_range("up", START, minutes(1), Duration::from_secs(15)).await.unwrap_err();
        assert!(matches!(err, Error::BadJson { .. }), "{body}: {err:?}");
    }
    let huge_time =
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1e300,"1"]}]}}"#;
    let (client, _) = answering(StatusCode::OK, huge_time).await;
    assert!(matches!(client.query("up", START).await.unwrap_err(), Error::BadValue { .. }));
}

#[tokio::test]
async fn answers_over_the_limits_are_refused() {
    let limits = Limits { max_body_bytes: 4096, max_series: 1, max_points: 4 };
    // Too many series, then too many points.
    let (client, _) = answering(StatusCode::OK, MATRIX).await;
    let err = client.with_limits(limits).query_range("up", START, minutes(1), Duration::from_secs(15)).await;
    assert!(matches!(err, Err(Error::TooLarge { ref what, .. }) if what == "more than 1 series"), "{err:?}");
    let (client, _) = answering(StatusCode::OK, MATRIX).await;
    let limits = Limits { max_series: 2, ..limits };
    let err = client.with_limits(limits).query_range("up", START, minutes(1), Duration::from_secs(15)).await;
    assert!(matches!(err, Err(Error::TooLarge { ref what, .. }) if what == "more than 4 points"), "{err:?}");

    // A body larger than the limit, announced and streamed (chunked, no length).
    let big = format!("{{\"status\":\"success\",\"pad\":\"{}\"}}", "x".repeat(10_000));
    let big: &'static str = big.leak();
    let (client, _) = answering(StatusCode::OK, big).await;
    let err = client.with_limits(limits).query("up", START).await;
    assert!(matches!(err, Err(Error::TooLarge { ref what, .. }) if what == "more than 4096 bytes"), "{err:?}");
    let streamed = post(|| async {
        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
        Response::new(Body::from_stream(futures::stream::iter(chunks)))
    });
    let addr = serve(Router::new().route("/api/v1/query", streamed)).await;
    let client = Client::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap().with_limits(limits);
    let err = client.query("up", START).await;
    assert!(matches!(err, Err(Error::TooLarge { .. })), "{err:?}");
}

#[tokio::test]
async fn a_slow_server_times_out_and_a_closed_port_is_unreachable() {
    let slow = post(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        StatusCode::OK.into_response()
    });
    let addr = serve(Router::new().route("/api/v1/query", slow)).await;
    let client = Client::new(&format!("http://{addr}"), Duration::from_millis(200)).unwrap();
    let err = client.query("up", START).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(200)), "{err:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = Client::new(&format!("http://{closed}"), Duration::from_secs(2)).unwrap();
    let err = client.query("up", START).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn ranges_prometheus_would_refuse_are_not_sent() {
    // Nothing listens: a request sent would fail as unreachable instead.
    let client = Client::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let day = START + time::Duration::days(1);
    let err = client.query_range("up", START, day, Duration::from_secs(7)).await.unwrap_err();
    assert!(matches!(err, Error::StepTooSmall { points: 12_342, max: MAX_POINTS_PER_SERIES, .. }), "{err:?}");
    let err = client.query_range("up", day, START, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let err = client.query_range("up", START, day, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    // 11,000 steps exactly is allowed (and then fails to connect).
    let err = client.query_range("up", START, START + time::Duration::seconds(11_000), Duration::from_secs(1)).await;
    assert!(matches!(err, Err(Error::Unreachable { .. })), "{err:?}");
}

#[test]
fn base_urls_are_checked() {
    let timeout = Duration::from_secs(1);
    for bad in ["ftp://h/", "127.0.0.1:9090", "http://", "http://h/?a=b", "http://u:p@h/", "unix:/run/p.sock"] {
        assert!(matches!(Client::new(bad, timeout), Err(Error::Url { .. })), "{bad}");
    }
    assert!(Client::new("http://h:9090", Duration::ZERO).is_err());
    assert_eq!(Client::new("http://h:9090", timeout).unwrap().base_url(), "http://h:9090/");
    assert_eq!(Client::new("http://h/prom", timeout).unwrap().base_url(), "http://h/prom/");
    let https = Client::new("https://h", timeout).unwrap_err();
    assert!(https.to_string().contains("https is not supported yet"), "{https}");
}
