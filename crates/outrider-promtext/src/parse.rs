//! A bounded reader of the text exposition format 0.0.4, for what the agent scrapes from
//! sidecars: samples with their labels and values; comments (`# HELP`, `# TYPE`), blank
//! lines and timestamps are accepted and not kept.
//!
//! Like Prometheus, one malformed line fails the whole exposition (a half-read scrape would
//! yield wrong deltas). The reader never panics, borrows from the input instead of copying
//! it, and refuses more than [`Limits::max_samples`] samples or
//! [`Limits::max_labels`] labels on one sample; the caller caps the body's size
//! ([`MAX_BODY`]).

use std::borrow::Cow;

use thiserror::Error;

/// The largest body a scraper should read (4 MiB).
pub const MAX_BODY: usize = 4 << 20;

/// Bounds of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples in one exposition.
    pub max_samples: usize,
    /// Labels on one sample.
    pub max_labels: usize,
}

impl Default for Limits {
    /// 100 000 samples, 64 labels each.
    fn default() -> Self {
        Self { max_samples: 100_000, max_labels: 64 }
    }
}

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name (for a histogram bucket, `…_bucket`).
    pub name: &'a str,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value (may be `±Inf` or `NaN`).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_ref())
    }
}

/// Why an exposition was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// More samples than [`Limits::max_samples`].
    #[error("more than {0} samples")]
    TooManySamples(usize),
    /// A line that is not a comment, blank, or a sample.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The samples of `text`, in order.
pub fn parse<'a>(text: &'a str, limits: &Limits) -> Result<Vec<Sample<'a>>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if samples.len() >= limits.max_samples {
            return Err(ParseError::TooManySamples(limits.max_samples));
        }
        let sample = sample(line, limits).map_err(|message| ParseError::Syntax { line: i + 1, message })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn is_name_start(c: u8, colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || (colon && c == b':')
}

fn is_name_char(c: u8, colon: bool) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || (colon && c == b':')
}

/// The name at the start of `s` (`colon`: a metric name, else a label name) and the rest.
fn name(s: &str, colon: bool) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first().is_some_and(|&c| is_name_start(c, colon)) {
        return None;
    }
    let end = b.iter().position(|&c| !is_name_char(c, colon)).unwrap_or(b.len());
    Some(s.split_at(end))
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// A quoted label value at the start of `s` (after the opening quote), unescaped, and the
/// rest after the closing quote.
fn label_value(s: &str) -> Result<(Cow<'_, str>, &str), String> {
    let Some(end) = s.find(['"', '\\']) else { return Err("unterminated label value".into()) };
    if s.as_bytes()[end] == b'"' {
        return Ok((Cow::Borrowed(&s[..end]), &s[end + 1..]));
    }
    let mut out = String::with_capacity(s.len().min(256));
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(out), &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, other)) => return Err(format!("invalid escape \\{other} in a label value")),
                None => return Err("unterminated label value".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

fn sample<'a>(line: &'a str, limits: &Limits) -> Result<Sample<'a>, String> {
    let (name, mut rest) = name(line, true).ok_or("expected a metric name")?;
    let mut labels: Vec<(&str, Cow<'_, str>)> = Vec::new();
    if let Some(after) = skip_blanks(rest).strip_prefix('{') {
        rest = skip_blanks(after);
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = self::name(rest, false).ok_or("expected a label name or '}'")?;
            let after = skip_blanks(after).strip_prefix('=').ok_or("expected '=' after a label name")?;
            let after = skip_blanks(after).strip_prefix('"').ok_or("expected '\"' to open a label value")?;
            let (value, after) = label_value(after)?;
            if labels.iter().any(|(k, _)| *k == key) {
                return Err(format!("label {key:?} appears twice"));
            }
            if labels.len() >= limits.max_labels {
                return Err(format!("more than {} labels", limits.max_labels));
            }
            labels.push((key, value));
            rest = skip_blanks(after);
            if let Some(after) = rest.strip_prefix(',') {
                rest = skip_blanks(after);
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label".into());
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a blank before the value".into());
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or("expected a value")?;
    let value = parse_value(value).ok_or_else(|| format!("{:?} is not a number", truncate(value)))?;
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("{:?} is not a timestamp", truncate(ts)));
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".into());
    }
    Ok(Sample { name, labels, value })
}

/// A float as Go's `ParseFloat` reads it in the exposition: decimal or exponent forms,
/// `NaN`, `±Inf` (any case).
fn parse_value(s: &str) -> Option<f64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let special = ["inf", "infinity", "nan"].iter().any(|w| digits.eq_ignore_ascii_case(w));
    let plain = digits.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !special && !plain {
        return None;
    }
    s.parse().ok()
}

/// At most 64 bytes of `s`, for error messages.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<Sample<'_>> {
        parse(text, &Limits::default()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    }

    fn err(text: &str) -> String {
        match parse(text, &Limits::default()) {
            Ok(s) => panic!("accepted {text:?}: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_what_the_demo_sidecar_writes() {
        let text = "\
# HELP requests_total Requests answered.
# TYPE requests_total counter
requests_total 17
# HELP request_duration_seconds Time to answer a request, in seconds.
# TYPE request_duration_seconds histogram
request_duration_seconds_sum 0.25
request_duration_seconds_count 2
request_duration_seconds_bucket{le=\"0.1\"} 1
request_duration_seconds_bucket{le=\"+Inf\"} 2
demo_info{version=\"1.2.3\"} 1
";
        let s = ok(text);
        assert_eq!(s.len(), 6);
        assert_eq!((s[0].name, s[0].value), ("requests_total", 17.0));
        assert_eq!(s[4].name, "request_duration_seconds_bucket");
        assert_eq!(s[4].label("le"), Some("+Inf"));
        assert_eq!(s[5].label("version"), Some("1.2.3"));
    }

    #[test]
    fn labels_escapes_specials_and_timestamps() {
        let s = ok(r#"http_requests_total{method="post",code="200",} 1027 1395066363000"#);
        assert_eq!(s[0].labels.len(), 2);
        assert_eq!(s[0].label("code"), Some("200"));
        let s = ok(
            r#"msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9"#,
        );
        assert_eq!(s[0].label("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(s[0].label("error"), Some("Cannot find file:\n\"FILE.TXT\""));
        assert_eq!(s[0].value, 1.458255915e9);
        let s = ok("a +Inf\nb -Inf\nc NaN\nd 1e-3\n e { } 2 \t\n:colon:name 3\nf{x=\"}{,=\"} 4");
        assert_eq!(s[0].value, f64::INFINITY);
        assert_eq!(s[1].value, f64::NEG_INFINITY);
        assert!(s[2].value.is_nan());
        assert_eq!(s[3].value, 0.001);
        assert_eq!((s[4].name, s[4].value), ("e", 2.0));
        assert_eq!(s[5].name, ":colon:name");
        assert_eq!(s[6].label("x"), Some("}{,="));
        assert!(ok("").is_empty() && ok("# only\n\n# comments").is_empty());
    }

    #[test]
    fn refuses_malformed_lines_with_their_number() {
        for (text, want) in [
            ("ok 1\n1bad 2", "line 2: expected a metric name"),
            ("a{b=\"c} 1", "unterminated"),
            ("a{b=\"c\\", "unterminated"),
            ("a{b=\"\\x\"} 1", "invalid escape"),
            ("a{b=\"1\",b=\"2\"} 1", "appears twice"),
            ("a{b=c} 1", "open a label value"),
            ("a{b-c=\"1\"} 1", "'='"),
            ("a{b=\"1\" c=\"2\"} 1", "',' or '}'"),
            ("a{b=\"1\"}1", "blank before the value"),
            ("a", "blank before the value"),
            ("a one", "not a number"),
            ("a 0x10", "not a number"),
            ("a 1 12.5", "not a timestamp"),
            ("a 1 2 3", "after the timestamp"),
            ("a{", "label name"),
            ("é 1", "metric name"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn hostile_inputs_are_bounded_and_never_panic() {
        let limits = Limits { max_samples: 10, max_labels: 3 };
        let many = "x 1\n".repeat(11);
        assert_eq!(parse(&many, &limits).unwrap_err(), ParseError::TooManySamples(10));
        assert!(parse(&"x 1\n".repeat(10), &limits).is_ok());
        let wide = "x{a=\"1\",b=\"2\",c=\"3\",d=\"4\"} 1";
        assert!(parse(wide, &limits).unwrap_err().to_string().contains("more than 3 labels"));
        // Every prefix of valid input, and some noise, is answered without a panic.
        let text = "# TYPE h histogram\nh_bucket{le=\"0.5\",path=\"\\\"é\\n\"} 3 1700000000000\nh_count 3\n";
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse(&text[..end], &Limits::default());
        }
        for noise in ["{", "}", "\"", "\\", "{=\"\"}", "a{=} 1", "\u{0}", "a\u{0} 1", "a{b=\"\u{feff}\"} 1", "\r\n"] {
            let _ = parse(noise, &Limits::default());
        }
        let long = format!("{} 1", "a".repeat(1 << 20));
        assert_eq!(ok(&long)[0].value, 1.0);
        let e = err(&format!("a {}", "9".repeat(1000) + "x"));
        assert!(e.len() < 200, "error messages are short: {e}");
    }
}
