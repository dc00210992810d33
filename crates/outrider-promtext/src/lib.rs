//! The Prometheus text exposition format 0.0.4 from a `prometheus-client` registry.
//!
//! `prometheus-client` writes OpenMetrics: a counter family is named without its `_total`
//! suffix (`# TYPE requests counter`, then `requests_total 3`), `info` is a type of its own,
//! and the text ends with `# EOF`. Served as `text/plain; version=0.0.4`, that is read as a
//! family `requests` without samples and an untyped `requests_total` without help, which
//! `promtool check metrics` rejects. [`encode`] writes the same metrics as text 0.0.4.
//!
//! [`parse`] reads that format back (bounded), for the agent's scrapes of sidecars.

mod parse;

use prometheus_client::registry::Registry;

pub use parse::{Limits, MAX_BODY, ParseError, Sample, parse};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of `registry` in the text format 0.0.4.
pub fn encode(registry: &Registry) -> String {
    let mut openmetrics = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut openmetrics, registry);
    from_openmetrics(&openmetrics)
}

/// OpenMetrics text as `prometheus-client` writes it (no exemplars, no `_created` samples)
/// rewritten as text 0.0.4: counter and info families take their samples' names (`_total`,
/// `_info`), `info` becomes `gauge` and `unknown` `untyped`; `# UNIT` and `# EOF` go.
fn from_openmetrics(text: &str) -> String {
    // Families whose name gains a suffix, from their TYPE lines (HELP comes first).
    let suffixed: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, kind)| match kind {
            "counter" => Some((name, "_total")),
            "info" => Some((name, "_info")),
            _ => None,
        })
        .collect();
    let renamed = |name: &str| -> String {
        let suffix = suffixed.iter().find(|(n, _)| *n == name).map_or("", |(_, s)| *s);
        format!("{name}{suffix}")
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|l| l.split_once(' ')) {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')) {
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{
        counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info,
    };

    use super::*;

    #[test]
    fn counters_and_infos_are_named_as_their_samples() {
        let mut registry = Registry::with_prefix("demo");
        let requests = Counter::<u64>::default();
        requests.inc();
        registry.register("requests", "Requests answered", requests);
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "Whether it is up", up);
        let latency = Histogram::new([0.1, 1.0]);
        latency.observe(0.25);
        registry.register("request_duration_seconds", "Time to answer", latency);
        let by_code = Family::<Vec<(String, String)>, Counter>::default();
        by_code.get_or_create(&vec![("code".to_owned(), "500".to_owned())]).inc();
        registry.register("answers", "Answers by status", by_code);
        registry.register("build", "The build", Info::new(vec![("version".to_owned(), "1.2.3".to_owned())]));

        let text = encode(&registry);
        let want = "\
# HELP demo_requests_total Requests answered.
# TYPE demo_requests_total counter
demo_requests_total 1
# HELP demo_up Whether it is up.
# TYPE demo_up gauge
demo_up 1
# HELP demo_request_duration_seconds Time to answer.
# TYPE demo_request_duration_seconds histogram
demo_request_duration_seconds_sum 0.25
demo_request_duration_seconds_count 1
demo_request_duration_seconds_bucket{le=\"0.1\"} 0
demo_request_duration_seconds_bucket{le=\"1.0\"} 1
demo_request_duration_seconds_bucket{le=\"+Inf\"} 1
# HELP demo_answers_total Answers by status.
# TYPE demo_answers_total counter
demo_answers_total{code=\"500\"} 1
# HELP demo_build_info The build.
# TYPE demo_build_info gauge
demo_build_info{version=\"1.2.3\"} 1
";
        assert_eq!(text, want);
    }
}
