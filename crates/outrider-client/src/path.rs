//! Building request paths from names without letting a name escape its segment.

use std::fmt::Write;

use crate::ClientError;

/// Appends `/segment` to `path` for each segment, percent-encoding every byte but the URL
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`), so `/`, `?`, `#` and `%` in a name stay
/// inside its segment. Empty, `.` and `..` segments are refused: URL parsers resolve the dot
/// segments (even percent-encoded) and an empty one would name another route.
pub(crate) fn push_segments(path: &mut String, segments: &[&str]) -> Result<(), ClientError> {
    for segment in segments {
        if segment.is_empty() || *segment == "." || *segment == ".." {
            return Err(ClientError::InvalidInput(format!("{segment:?} cannot be used as a name in a request path")));
        }
        path.push('/');
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                path.push(char::from(b));
            } else {
                // Writing to a String cannot fail.
                let _ = write!(path, "%{b:02X}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(segments: &[&str]) -> Result<String, ClientError> {
        let mut s = String::new();
        push_segments(&mut s, segments).map(|()| s)
    }

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(
            encode(&["sidecars", "mesh-proxy", "versions", "1.2.0-rc.1"]).unwrap(),
            "/sidecars/mesh-proxy/versions/1.2.0-rc.1"
        );
    }

    #[test]
    fn separators_are_encoded() {
        assert_eq!(encode(&["a/b?c#d%e f+g", "é"]).unwrap(), "/a%2Fb%3Fc%23d%25e%20f%2Bg/%C3%A9");
        assert_eq!(encode(&["%2e%2e"]).unwrap(), "/%252e%252e");
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for bad in ["", ".", ".."] {
            assert!(matches!(encode(&["ok", bad]), Err(ClientError::InvalidInput(_))), "{bad:?} accepted");
        }
        assert_eq!(encode(&["..."]).unwrap(), "/...");
    }
}
