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

#[cfg(test)]
mod tests {
    use super::*;

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
