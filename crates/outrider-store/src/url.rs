//! Opening a store by URL, so callers choose a backend without naming it in code.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{ETCD_MAX_TXN_OPS, EtcdStore, RedbStore, Store, StoreError};

/// The embedded store's file in a data dir.
const EMBEDDED_FILE: &str = "outrider.redb";

/// The URL of the embedded store kept in `data_dir` (`redb:<data_dir>/outrider.redb`).
pub fn embedded_url(data_dir: &Path) -> String {
    format!("redb:{}", data_dir.join(EMBEDDED_FILE).display())
}

/// Opens the store `url` names:
/// - `redb:PATH`, or a plain `PATH`: the embedded store in that file, created if absent
///   (its directory must exist);
/// - `etcd://HOST:PORT[,HOST:PORT…][/PREFIX][?max-txn-ops=N]`: an etcd cluster (v3 API,
///   plain HTTP), every key under `PREFIX/` when given (several deployments can share one
///   cluster's keyspace, not its revisions), `N` its `--max-txn-ops` (128 by default); fails
///   with [`StoreError::Unavailable`] when etcd does not answer within a few seconds.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match parse(url)? {
        Location::Embedded(path) => Ok(Arc::new(RedbStore::open(&path)?)),
        Location::Etcd { endpoints, root, max_txn_ops } => {
            Ok(Arc::new(EtcdStore::connect(&endpoints, &root).await?.with_max_txn_ops(max_txn_ops)))
        }
    }
}

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// A file of the embedded store.
    Embedded(PathBuf),
    /// An etcd cluster's members (`host:port`), the root of the keys (empty or ending in `/`)
    /// and its `--max-txn-ops`.
    Etcd { endpoints: Vec<String>, root: String, max_txn_ops: usize },
}

/// Members an etcd URL may name.
const MAX_ETCD_MEMBERS: usize = 16;

fn parse(url: &str) -> Result<Location, StoreError> {
    let refuse = |reason: &str| StoreError::Url { url: url.to_owned(), reason: reason.to_owned() };
    let path = if let Some(path) = url.strip_prefix("redb:") {
        path
    } else if let Some(rest) = url.strip_prefix("etcd://") {
        return parse_etcd(rest).map_err(|reason| refuse(&reason));
    } else if url.starts_with("etcd:") {
        return Err(refuse("an etcd URL is etcd://HOST:PORT[,HOST:PORT…][/PREFIX]"));
    } else if let Some((scheme, _)) = url.split_once("://") {
        return Err(refuse(&format!("unknown store scheme {scheme:?}; use redb:PATH or etcd://HOST:PORT")));
    } else {
        url
    };
    if path.is_empty() {
        return Err(refuse("no file named; use redb:PATH"));
    }
    Ok(Location::Embedded(PathBuf::from(path)))
}

/// The `max-txn-ops` an etcd URL may give.
const MAX_TXN_OPS_RANGE: std::ops::RangeInclusive<usize> = 4..=100_000;

/// `HOST:PORT[,HOST:PORT…][/PREFIX][?max-txn-ops=N]`, the part after `etcd://`.
fn parse_etcd(rest: &str) -> Result<Location, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let max_txn_ops = match query.split_once('=') {
        None if query.is_empty() => ETCD_MAX_TXN_OPS,
        Some(("max-txn-ops", n)) => n
            .parse()
            .ok()
            .filter(|n| MAX_TXN_OPS_RANGE.contains(n))
            .ok_or_else(|| format!("max-txn-ops {n:?} is not a number from 4 to 100000"))?,
        _ => return Err(format!("unknown option {query:?}; the one option is max-txn-ops=N")),
    };
    let (members, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = members.split(',').map(str::to_owned).collect();
    if endpoints.len() > MAX_ETCD_MEMBERS {
        return Err(format!("more than {MAX_ETCD_MEMBERS} etcd members"));
    }
    for member in &endpoints {
        let port = member.rsplit_once(':').filter(|(host, _)| !host.is_empty()).map(|(_, port)| port);
        let port = port.and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
        if port == 0 || member.contains(['@', '?', '#', ' ']) {
            return Err(format!("etcd member {member:?} is not HOST:PORT"));
        }
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.split('/').any(str::is_empty) && !prefix.is_empty() {
        return Err(format!("key prefix {prefix:?} has an empty segment"));
    }
    let root = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    Ok(Location::Etcd { endpoints, root, max_txn_ops })
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
        assert!(reason("s3://bucket/key").contains("unknown store scheme \"s3\""));
        assert!(reason("redb:").contains("no file"));
        assert!(reason("").contains("no file"));
    }

    #[test]
    fn etcd_urls_name_members_and_a_key_prefix() {
        let etcd = |endpoints: &[&str], root: &str| {
            let endpoints = endpoints.iter().map(|e| (*e).to_owned()).collect();
            Some(Location::Etcd { endpoints, root: root.into(), max_txn_ops: ETCD_MAX_TXN_OPS })
        };
        assert_eq!(parse("etcd://127.0.0.1:2379").ok(), etcd(&["127.0.0.1:2379"], ""));
        assert_eq!(parse("etcd://127.0.0.1:2379/").ok(), etcd(&["127.0.0.1:2379"], ""));
        assert_eq!(parse("etcd://a:1,b:2,[::1]:3/outrider").ok(), etcd(&["a:1", "b:2", "[::1]:3"], "outrider/"));
        assert_eq!(parse("etcd://a:1/team/prod/").ok(), etcd(&["a:1"], "team/prod/"));
        let limit = |url: &str| match parse(url) {
            Ok(Location::Etcd { max_txn_ops, .. }) => max_txn_ops,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(limit("etcd://a:1/p?max-txn-ops=1024"), 1024);
        assert_eq!(limit("etcd://a:1?max-txn-ops=256"), 256);
        let reason = |url: &str| match parse(url) {
            Err(StoreError::Url { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert!(reason("etcd://a:1?max-txn-ops=3").contains("from 4 to 100000"));
        assert!(reason("etcd://a:1?max-txn-ops=lots").contains("from 4 to 100000"));
        assert!(reason("etcd://a:1?tls=1").contains("unknown option"));
        assert_eq!(limit("etcd://a:1?"), ETCD_MAX_TXN_OPS, "an empty query is no option");
        assert!(reason("etcd://").contains("is not HOST:PORT"));
        assert!(reason("etcd://host").contains("\"host\" is not HOST:PORT"));
        assert!(reason("etcd://host:0").contains("is not HOST:PORT"));
        assert!(reason("etcd://:2379").contains("is not HOST:PORT"));
        assert!(reason("etcd://a:1,,b:2").contains("\"\" is not HOST:PORT"));
        assert!(reason("etcd://a:99999").contains("is not HOST:PORT"));
        assert!(reason("etcd://user@a:1").contains("is not HOST:PORT"));
        assert!(reason("etcd://a:1//x").contains("empty segment"));
        assert!(reason("etcd:a:1").contains("etcd://HOST:PORT"));
        let many = vec!["h:1"; MAX_ETCD_MEMBERS + 1].join(",");
        assert!(reason(&format!("etcd://{many}")).contains("more than"));
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
    }
}
