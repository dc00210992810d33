//! The instance claim: a random secret the agent makes once and keeps in its data dir
//! (`instance.claim`, mode 0600). It proves to the manager that a new sync stream comes from
//! the agent that holds the instance (restarted, or reconnecting after a half-open
//! connection) and not from another host using the same instance id.

use std::{io, path::Path};

use rand::RngCore;

use crate::atomic_file::write_atomic_private;

/// File in the agent's data dir holding the claim.
pub const CLAIM_FILE: &str = "instance.claim";

/// Whether `s` is a claim this agent could have written.
fn well_formed(s: &str) -> bool {
    (16..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The claim kept in `data_dir`, made (crash-safe, mode 0600) when there is none yet.
/// Blocking: it may fsync.
pub fn load_or_create(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(CLAIM_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if well_formed(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => tracing::warn!(path = %path.display(), "unreadable instance claim replaced by a new one"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let claim = hex::encode(raw);
    write_atomic_private(&path, claim.as_bytes())?;
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), first, "a restart keeps the claim");
        let meta = std::fs::metadata(dir.path().join(CLAIM_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first, "another data dir, another claim");
    }

    #[test]
    fn a_damaged_claim_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CLAIM_FILE), b"").unwrap();
        let claim = load_or_create(dir.path()).unwrap();
        assert!(well_formed(&claim));
    }
}
