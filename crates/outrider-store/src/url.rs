//! Opening a store by URL, so callers choose a backend without naming it in code.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{RedbStore, Store, StoreError};

/// The embedded store's file in a data dir.
const EMBEDDED_FILE: &str = "outrider.redb";

/// The URL of the embedded store kept in `data_dir` (`redb:<data_dir>/outrider.redb`).
pub fn embedded_url(data_dir: &Path) -> String {
    format!("redb:{}", data_dir.join(EMBEDDED_FILE).display())
}

/// Opens the store `url` names:
/// - `redb:PATH`, or a plain `PATH`: the embedded store in that file, created if absent
///   (its directory must exist);
/// - `etcd://…`: refused for now (the etcd backend is not built yet).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match parse(url)? {
        Location::Embedded(path) => Ok(Arc::new(RedbStore::open(&path)?)),
    }
}

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// A file of the embedded store.
    Embedded(PathBuf),
}

fn parse(url: &str) -> Result<Location, StoreError> {
    let refuse = |reason: &str| StoreError::Url { url: url.to_owned(), reason: reason.to_owned() };
    let path = if let Some(path) = url.strip_prefix("redb:") {
        path
    } else if url.starts_with("etcd:") {
        return Err(refuse("etcd store not built yet; use redb:PATH"));
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(refuse(&format!("unknown store scheme {scheme:?}; use redb:PATH")));
    } else {
        url
    };
    if path.is_empty() {
        return Err(refuse("no file named; use redb:PATH"));
    }
    Ok(Location::Embedded(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_embedded_file_or_are_refused_clearly() {
        let embedded = |p: &str| Some(Location::Embedded(PathBuf::from(p)));
        assert_eq!(parse("redb:/var/lib/outrider/outrider.redb").ok(), embedded("/var/lib/outrider/outrider.redb"));
        assert_eq!(parse("redb:relative/store.redb").ok(), embedded("relative/store.redb"));
        assert_eq!(parse("/plain/path.redb").ok(), embedded("/plain/path.redb"));
        assert_eq!(parse(&embedded_url(Path::new("/data"))).ok(), embedded("/data/outrider.redb"));
        let reason = |url: &str| match parse(url) {
            Err(StoreError::Url { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert!(reason("etcd://127.0.0.1:2379").contains("etcd store not built yet"));
        assert!(reason("s3://bucket/key").contains("unknown store scheme \"s3\""));
        assert!(reason("redb:").contains("no file"));
        assert!(reason("").contains("no file"));
    }

    #[tokio::test]
    async fn opens_the_same_embedded_file_by_either_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let url = embedded_url(dir.path());
        let rev =
            open(&url).await.unwrap().txn(crate::Txn::ops(vec![crate::Op::put("k", "v")])).await.unwrap().revision;
        let plain = dir.path().join(EMBEDDED_FILE);
        let again = open(plain.to_str().unwrap()).await.unwrap();
        assert_eq!(again.revision().await.unwrap(), rev);
        assert_eq!(again.get("k").await.unwrap().unwrap().value, b"v");
        let err = open("etcd://127.0.0.1:2379").await.err().unwrap();
        assert!(err.to_string().contains("etcd store not built yet"), "{err}");
    }
}
