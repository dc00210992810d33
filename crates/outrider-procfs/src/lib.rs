//! Just enough of Linux's `/proc` for Outrider: a process's identity across restarts (pid and
//! start time), whether it still runs, its CPU time, resident memory, `status` fields, open
//! file descriptors, command line, environment and executable.
//!
//! Every reader takes a pid (`std::process::id()` for this process). A missing process is a
//! [`ProcError`] for which [`ProcError::is_no_process`] holds.

use std::{
    ffi::OsString,
    fs, io,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// A `/proc` file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading the file failed (`NotFound`: no such process).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not have the expected shape.
    #[error("malformed {path} ({what}): {text:?}")]
    Malformed {
        /// The file (or `stat` for a parsed line).
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
        /// The text, or the part that does not parse.
        text: String,
    },
}

impl ProcError {
    /// Whether the error means that the process does not exist (any more).
    pub fn is_no_process(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == io::ErrorKind::NotFound
            || source.raw_os_error() == Some(nix::libc::ESRCH))
    }
}

/// `/proc/<pid>/<file>`.
fn path_of(pid: u32, file: &str) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join(file)
}

fn read_string(path: PathBuf) -> Result<String, ProcError> {
    fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

fn read_bytes(path: PathBuf) -> Result<Vec<u8>, ProcError> {
    fs::read(&path).map_err(|source| ProcError::Read { path, source })
}

/// The fields of `/proc/<pid>/stat` Outrider uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Process id.
    pub pid: u32,
    /// Executable name as the kernel reports it (may contain spaces and parentheses).
    pub comm: String,
    /// State letter: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Process group id.
    pub pgrp: i32,
    /// User-mode CPU time in clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time in clock ticks.
    pub stime: u64,
    /// Start time in clock ticks after boot: with the pid, identifies one process for good.
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped counts as exited).
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Whether the process leads its own process group.
    pub fn leads_group(&self) -> bool {
        u32::try_from(self.pgrp).ok() == Some(self.pid)
    }

    /// CPU time used so far, user plus kernel, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }
}

/// Parses one `/proc/<pid>/stat` line. The `comm` field sits in parentheses and may itself
/// contain spaces and parentheses, so the line is split at the *last* `)`.
pub fn parse_stat(line: &str) -> Result<Stat, ProcError> {
    let bad = |what| ProcError::Malformed { path: "stat".into(), what, text: line.to_owned() };
    let open = line.find('(').ok_or_else(|| bad("no '('"))?;
    let close = line.rfind(')').ok_or_else(|| bad("no ')'"))?;
    if close < open {
        return Err(bad("')' before '('"));
    }
    let pid = line[..open].trim().parse().map_err(|_| bad("pid"))?;
    let comm = line[open + 1..close].to_owned();
    // Fields after the comm, numbered from 3 as in proc(5): index = field number - 3.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied().ok_or_else(|| bad("too few fields"));
    let number = |n: usize| field(n)?.parse::<u64>().map_err(|_| bad("number"));
    let state = field(3)?.chars().next().ok_or_else(|| bad("state"))?;
    let pgrp = field(5)?.parse().map_err(|_| bad("pgrp"))?;
    Ok(Stat { pid, comm, state, pgrp, utime: number(14)?, stime: number(15)?, start_time: number(22)? })
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> Result<Stat, ProcError> {
    let path = path_of(pid, "stat");
    let line = read_string(path.clone())?;
    parse_stat(&line).map_err(|e| match e {
        ProcError::Malformed { what, text, .. } => ProcError::Malformed { path, what, text },
        other => other,
    })
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_ok_and(|s| !s.is_exited())
}

/// Whether `pid` is a live (not zombie) process that started at `start_time` ticks: the
/// same process that was recorded, not another one that reused the pid.
pub fn is_same_live_process(pid: u32, start_time: u64) -> bool {
    stat(pid).is_ok_and(|s| s.start_time == start_time && !s.is_exited())
}

/// Parses `/proc/<pid>/statm` and returns the resident set size in pages (second field).
pub fn parse_statm_resident_pages(text: &str) -> Result<u64, ProcError> {
    text.split_whitespace().nth(1).and_then(|f| f.parse().ok()).ok_or_else(|| ProcError::Malformed {
        path: "statm".into(),
        what: "no resident pages",
        text: text.to_owned(),
    })
}

/// Resident memory of `pid` in bytes (`/proc/<pid>/statm`).
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    let text = read_string(path_of(pid, "statm"))?;
    Ok(parse_statm_resident_pages(&text)?.saturating_mul(page_size()))
}

/// A `kB` figure of a `/proc/<pid>/status` text (`VmRSS`, `VmHWM`), in bytes.
pub fn parse_status_bytes(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
}

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &'static str) -> Result<u64, ProcError> {
    let path = path_of(pid, "status");
    let status = read_string(path.clone())?;
    parse_status_bytes(&status, key).ok_or(ProcError::Malformed { path, what: "no such kB field", text: key.into() })
}

/// Number of open file descriptors of `pid` (`/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> Result<usize, ProcError> {
    let path = path_of(pid, "fd");
    fs::read_dir(&path).map(Iterator::count).map_err(|source| ProcError::Read { path, source })
}

/// The command line of `pid`, one argument each (`/proc/<pid>/cmdline`).
pub fn cmdline(pid: u32) -> Result<Vec<OsString>, ProcError> {
    Ok(split_nul(read_bytes(path_of(pid, "cmdline"))?))
}

/// The environment of `pid`, `KEY=VALUE` each (`/proc/<pid>/environ`).
pub fn environ(pid: u32) -> Result<Vec<OsString>, ProcError> {
    Ok(split_nul(read_bytes(path_of(pid, "environ"))?))
}

/// The NUL-terminated strings of `bytes`.
fn split_nul(bytes: Vec<u8>) -> Vec<OsString> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| OsString::from_vec(s.to_vec())).collect()
}

/// The executable `pid` runs (`/proc/<pid>/exe`; ` (deleted)` is appended by the kernel when
/// the file was removed).
pub fn exe(pid: u32) -> Result<PathBuf, ProcError> {
    let path = path_of(pid, "exe");
    fs::read_link(&path).map_err(|source| ProcError::Read { path, source })
}

/// Every process id in `/proc` (a snapshot: processes come and go).
pub fn pids() -> Result<Vec<u32>, ProcError> {
    let path = PathBuf::from("/proc");
    let entries = fs::read_dir(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
}

/// Clock ticks per second of the times in `stat` (`sysconf(_SC_CLK_TCK)`, 100 if unknown).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100))
}

/// Memory page size in bytes (`sysconf(_SC_PAGE_SIZE)`, 4096 if unknown).
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, 4096))
}

fn sysconf_or(var: nix::unistd::SysconfVar, fallback: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => u64::try_from(v).unwrap_or(fallback),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "10192 (cat) R 10187 10187 5963 0 -1 4194304 102 0 0 0 7 3 0 0 20 0 1 0 60384 3133440 379 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_a_plain_line() {
        let s = parse_stat(PLAIN).unwrap();
        assert_eq!(s.pid, 10192);
        assert_eq!(s.comm, "cat");
        assert_eq!(s.state, 'R');
        assert_eq!(s.pgrp, 10187);
        assert_eq!((s.utime, s.stime, s.cpu_ticks()), (7, 3, 10));
        assert_eq!(s.start_time, 60384);
        assert!(!s.is_exited());
    }

    #[test]
    fn comm_with_spaces_and_parens_is_split_at_the_last_paren() {
        let line = PLAIN.replace("(cat) R", "(a) (b) Z) ) Z");
        let s = parse_stat(&line).unwrap();
        assert_eq!(s.comm, "a) (b) Z) ");
        assert_eq!(s.state, 'Z');
        assert!(s.is_exited());
        assert_eq!(s.start_time, 60384);
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x) S 1 2").is_err());
        assert!(parse_stat("12 x) S (y").is_err());
        assert!(parse_stat(&PLAIN.replace(" 60384 ", " sixty ")).is_err());
    }

    #[test]
    fn statm_gives_resident_pages() {
        assert_eq!(parse_statm_resident_pages("765 379 330 5 0 82 0\n").unwrap(), 379);
        assert!(parse_statm_resident_pages("765").is_err());
    }

    #[test]
    fn status_fields_are_kib() {
        let status = "Name:\tcat\nVmHWM:\t    1024 kB\nVmRSS:\t     512 kB\nThreads:\t1\n";
        assert_eq!(parse_status_bytes(status, "VmHWM"), Some(1 << 20));
        assert_eq!(parse_status_bytes(status, "VmRSS"), Some(512 << 10));
        assert_eq!(parse_status_bytes(status, "Threads"), None);
        assert_eq!(parse_status_bytes(status, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(is_alive(me));
        assert!(is_same_live_process(me, s.start_time));
        assert!(!is_same_live_process(me, s.start_time + 1));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(status_bytes(me, "VmHWM").unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        assert_eq!(cmdline(me).unwrap()[0], std::env::args_os().next().unwrap());
        assert!(!environ(me).unwrap().is_empty());
        assert_eq!(exe(me).unwrap(), std::env::current_exe().unwrap());
        assert!(pids().unwrap().contains(&me));
        assert!(clock_ticks_per_second() > 0 && page_size() >= 4096);
        let gone = stat(u32::MAX).unwrap_err();
        assert!(gone.is_no_process(), "{gone}");
        assert!(!is_alive(u32::MAX));
    }
}
