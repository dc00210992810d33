//! Persisted records of running sidecars (`<data-dir>/sidecars/<name>.json`): what a new
//! agent process needs to re-adopt them instead of starting them again.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use outrider_model::DesiredSidecar;
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;

/// One running sidecar process as the agent left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    /// Sidecar name.
    pub name: String,
    /// Version the process runs.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Start time of the process in clock ticks after boot (from `/proc/<pid>/stat`): a pid
    /// whose start time differs is another process that reused the number.
    pub start_time_ticks: u64,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Unexpected exits so far.
    #[serde(default)]
    pub exits: u32,
    /// What the process was started from.
    pub desired: DesiredSidecar,
    /// A new generation started beside this one by a hot upgrade still in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<Successor>,
}

/// The new process of a hot upgrade in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Successor {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_time_ticks: u64,
    /// What it was started from.
    pub desired: DesiredSidecar,
}

/// The `sidecars/` directory.
#[derive(Debug, Clone)]
pub(super) struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes `record` atomically and durably.
    pub(super) async fn save(&self, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let path = self.path(&record.name);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await.map_err(io::Error::other)?
    }

    /// Deletes the record of `name`, if any.
    pub(super) async fn remove(&self, name: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(name)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes the record of `name` without an async runtime (used at start).
    pub(super) fn remove_now(&self, name: &str) {
        if let Err(e) = fs::remove_file(self.path(name))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(sidecar = name, error = %e, "could not delete sidecar record");
        }
    }

    /// Every readable record. Unreadable or malformed files are reported and deleted: they
    /// cannot be adopted, and the sidecar is started fresh once it is desired.
    pub(super) fn load_all(&self) -> Vec<Record> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read sidecar records");
                }
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read_record(&path) {
                Ok(r) if path.file_stem().is_some_and(|s| *s == *r.name) => out.push(r),
                Ok(r) => {
                    tracing::warn!(path = %path.display(), name = %r.name, "sidecar record under the wrong name; deleting it");
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "malformed sidecar record; deleting it");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Reads and parses one record; a malformed file is an `InvalidData` error.
fn read_record(path: &Path) -> io::Result<Record> {
    Ok(serde_json::from_slice(&fs::read(path)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, pid: u32) -> Record {
        Record {
            name: name.into(),
            version: "1.0.0".into(),
            pid,
            start_time_ticks: 99,
            restarts: 2,
            exits: 3,
            desired: outrider_model::testing::desired_sidecar(name, "1.0.0"),
            successor: None,
        }
    }

    #[tokio::test]
    async fn round_trips_and_cleans_up_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path().to_owned());
        store.save(&record("mesh", 10)).await.unwrap();
        store.save(&record("logs", 11)).await.unwrap();
        fs::write(dir.path().join("broken.json"), b"{").unwrap();
        fs::write(dir.path().join("alias.json"), serde_json::to_vec(&record("mesh", 12)).unwrap()).unwrap();
        fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let names: Vec<_> = store.load_all().into_iter().map(|r| (r.name, r.pid)).collect();
        assert_eq!(names, vec![("logs".to_owned(), 11), ("mesh".to_owned(), 10)]);
        assert!(!dir.path().join("broken.json").exists());
        assert!(!dir.path().join("alias.json").exists());
        store.remove("mesh").await.unwrap();
        store.remove("mesh").await.unwrap();
        store.remove_now("logs");
        assert!(store.load_all().is_empty());
    }
}
