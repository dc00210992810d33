use std::collections::BTreeMap;

use crate::ValidationError;

/// Checks an object name: 1 to 63 characters of `a-z`, `0-9`, `-`, `_` and `.`, starting and
/// ending with a letter or digit (DNS-label-like, so names are safe in keys, paths and labels).
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 63 {
        return Err(ValidationError::new(field, "must be 1 to 63 characters long"));
    }
    if !name.chars().all(ok_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(ValidationError::new(
            field,
            format!("{name:?} must use a-z, 0-9, '-', '_', '.' and start and end with a letter or digit"),
        ));
    }
    Ok(())
}

/// Deserializes a string map, refusing a key that appears twice (serde keeps the last one
/// silently).
pub(crate) fn unique_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("key {k:?} appears twice")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// Whether `c` is a control character or a bidirectional formatting character (overrides,
/// embeddings, isolates, marks): characters that hide or reorder what an operator reads.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks a free-text field (a reason, a trait value, a description): at most `max` bytes,
/// no control or bidirectional formatting characters (`multiline` allows `\n` and `\t`).
pub fn validate_text(field: &str, text: &str, max: usize, multiline: bool) -> Result<(), ValidationError> {
    if text.len() > max {
        return Err(ValidationError::new(field, format!("must be at most {max} bytes long")));
    }
    if let Some(c) = text.chars().find(|&c| is_hidden(c) && !(multiline && matches!(c, '\n' | '\t'))) {
        return Err(ValidationError::new(
            field,
            format!("must not contain control or bidirectional formatting characters (found {c:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_hidden_characters_and_length() {
        validate_text("reason", "deploy freeze: Black Friday", 100, false).unwrap();
        validate_text("description", "line one\nline two", 100, true).unwrap();
        for t in ["a\0b", "a\r\nb", "a\u{202e}b", "a\u{2066}b", "a\u{1b}[31m"] {
            assert!(validate_text("reason", t, 100, true).is_err(), "{t:?} accepted");
        }
        assert!(validate_text("reason", "a\nb", 100, false).is_err());
        assert!(validate_text("reason", &"x".repeat(101), 100, false).is_err());
    }

    #[test]
    fn accepts_dns_like_names() {
        for n in ["a", "mesh-proxy", "svc.checkout_v2", "p0"] {
            validate_name("name", n).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "a".repeat(64);
        for n in ["", "-a", "a-", "Mesh", "a b", "a/b", "../x", long.as_str()] {
            assert!(validate_name("name", n).is_err(), "{n:?} accepted");
        }
    }
}
