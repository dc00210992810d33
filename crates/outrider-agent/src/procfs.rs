//! Just enough of Linux's `/proc` to identify a process across agent restarts (its start
//! time), tell whether it still runs, and sample its CPU time and resident memory.

use std::{fs, io, sync::OnceLock};

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
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

impl ProcStat {
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
pub(crate) fn parse_stat(line: &str) -> Result<ProcStat, String> {
    let bad = |what: &str| format!("malformed /proc stat line ({what}): {line:?}");
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
    Ok(ProcStat { pid, comm, state, pgrp, utime: number(14)?, stime: number(15)?, start_time: number(22)? })
}

/// Reads `/proc/<pid>/stat`. An error of kind `NotFound` means no such process.
pub(crate) fn read_stat(pid: u32) -> io::Result<ProcStat> {
    let line = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether `pid` is a live (not zombie) process that started at `start_time` ticks: the
/// same process that was recorded, not another one that reused the pid.
pub(crate) fn is_same_live_process(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_ok_and(|s| s.start_time == start_time && !s.is_exited())
}

/// Parses `/proc/<pid>/statm` and returns the resident set size in pages (second field).
pub(crate) fn parse_statm_resident_pages(text: &str) -> Result<u64, String> {
    text.split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| format!("malformed /proc statm: {text:?}"))
}

/// Resident memory of `pid` in bytes.
pub(crate) fn read_rss_bytes(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages = parse_statm_resident_pages(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(pages.saturating_mul(page_size()))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 if unknown).
pub(crate) fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100))
}

/// Memory page size in bytes (`sysconf(_SC_PAGE_SIZE)`, 4096 if unknown).
pub(crate) fn page_size() -> u64 {
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
    fn reads_this_process() {
        let me = std::process::id();
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(is_same_live_process(me, s.start_time));
        assert!(!is_same_live_process(me, s.start_time + 1));
        assert!(read_rss_bytes(me).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0 && page_size() >= 4096);
        assert_eq!(read_stat(u32::MAX).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
