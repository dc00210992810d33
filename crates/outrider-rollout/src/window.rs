//! When a plan may change anything: its change windows ([`Windows`]), and what stops it
//! whatever the windows say: freezes and the services' protected periods ([`blocked_until`]).

use std::{collections::BTreeMap, sync::OnceLock};

use jiff::{
    Timestamp,
    civil::{Date, DateTime},
    tz::{TimeZone, TimeZoneDatabase},
};
use outrider_model::{ChangeWindow, Freeze, ProtectedPeriod, ValidationError};
use time::OffsetDateTime;

use crate::hash::FastMap;

/// Days looked ahead for the next opening: a window skipped by a DST gap opens the next week.
const HORIZON_DAYS: usize = 15;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const SECONDS_PER_DAY: u32 = 86_400;

/// The time zone database bundled in the binary: the same answers on every host, no file read.
fn tzdb() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// A plan's allowed change hours. Empty: always open.
///
/// Each window is open on its `days` from `from` (inclusive) to `to` (exclusive), local time
/// in `tz`. A window whose `to` is before `from` runs over midnight and belongs to the day it
/// starts: `fri 22:00–02:00` is open from Friday 22:00 to Saturday 02:00. `to` may be `24:00`
/// (the end of the day). Local times are those on the wall clock: on the day clocks spring
/// forward, a window inside the skipped hour does not open; when they fall back, the repeated
/// hour is in the window twice.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    /// Bit `i` set: open on weekday `i` (Monday = 0).
    days: u8,
    /// Opening, seconds after local midnight.
    from: u32,
    /// Closing, seconds after local midnight (up to a whole day).
    to: u32,
    tz: TimeZone,
}

impl Windows {
    /// Parses the windows of a plan body; errors name the field (`windows[1].days`).
    pub fn new(windows: &[ChangeWindow]) -> Result<Self, ValidationError> {
        let windows = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let field = |f: &str| format!("windows[{i}].{f}");
                let days = parse_days(&w.days).map_err(|m| ValidationError::new(field("days"), m))?;
                let from = parse_time(&w.from, false).map_err(|m| ValidationError::new(field("from"), m))?;
                let to = parse_time(&w.to, true).map_err(|m| ValidationError::new(field("to"), m))?;
                if from == to {
                    return Err(ValidationError::new(
                        field("to"),
                        "must differ from `from` (00:00 to 24:00 is a whole day)",
                    ));
                }
                let tz = tzdb()
                    .get(&w.tz)
                    .map_err(|_| ValidationError::new(field("tz"), format!("{:?} is not an IANA time zone", w.tz)))?;
                Ok(Window { days, from, to, tz })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { windows })
    }

    /// Whether there is no window (changes are allowed at any time).
    pub fn is_always_open(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether a change may start at `t`.
    pub fn allows(&self, t: OffsetDateTime) -> bool {
        self.windows.is_empty() || to_jiff(t).is_some_and(|ts| self.allows_at(ts))
    }

    /// The first instant at or after `t` when a change may start (`t` itself when
    /// [`Windows::allows`] it); `None` if no window opens within the next two weeks, which
    /// valid windows always do.
    pub fn next_open(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.allows(t) {
            return Some(t);
        }
        let ts = to_jiff(t)?;
        let horizon = ts.checked_add(jiff::SignedDuration::from_hours(24 * (HORIZON_DAYS as i64 + 1))).ok()?;
        let candidates = self.windows.iter().flat_map(|w| w.candidates(ts, horizon));
        let next = candidates.filter(|&c| c > ts && c <= horizon && self.allows_at(c)).min()?;
        from_jiff(next, t)
    }

    fn allows_at(&self, ts: Timestamp) -> bool {
        self.windows.iter().any(|w| w.allows(w.tz.to_datetime(ts)))
    }
}

impl Window {
    fn open_on(&self, d: Date) -> bool {
        self.days & (1 << d.weekday().to_monday_zero_offset()) != 0
    }

    fn allows(&self, local: DateTime) -> bool {
        let sec = u32::from(local.hour() as u8) * 3600 + u32::from(local.minute() as u8) * 60 + local.second() as u32;
        let d = local.date();
        if self.from < self.to {
            self.open_on(d) && self.from <= sec && sec < self.to
        } else {
            (self.open_on(d) && sec >= self.from) || (sec < self.to && d.yesterday().is_ok_and(|y| self.open_on(y)))
        }
    }

    /// Instants where this window may open after `ts`: its openings on the days around
    /// (both readings of an opening in a repeated hour) and the time zone's transitions, where
    /// a clock jumping forward over the opening opens the window.
    fn candidates(&self, ts: Timestamp, horizon: Timestamp) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let (h, m) = ((self.from / 3600) as i8, ((self.from % 3600) / 60) as i8);
        let mut day = self.tz.to_datetime(ts).date().yesterday().ok();
        for _ in 0..=HORIZON_DAYS + 1 {
            let Some(d) = day else { break };
            if self.open_on(d) {
                let amb = self.tz.to_ambiguous_timestamp(d.at(h, m, 0, 0));
                out.extend(amb.earlier().ok());
                out.extend(amb.later().ok());
            }
            day = d.tomorrow().ok();
        }
        out.extend(self.tz.following(ts).map(|t| t.timestamp()).take_while(|&t| t <= horizon));
        out
    }
}

/// `mon-fri`, `sat,sun`, `mon-wed,fri`, `fri-mon` (ranges may wrap around the week).
fn parse_days(s: &str) -> Result<u8, String> {
    let day = |name: &str| -> Result<usize, String> {
        let name = name.trim().to_ascii_lowercase();
        DAY_NAMES
            .iter()
            .position(|d| *d == name)
            .ok_or_else(|| format!("{name:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"))
    };
    let mut days = 0u8;
    for item in s.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(item)?, day(item)?),
        };
        let mut d = first;
        loop {
            days |= 1 << d;
            if d == last {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

/// `HH:MM` as seconds after midnight; `24:00` only when `end_of_day` is allowed.
fn parse_time(s: &str, end_of_day: bool) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a time of day: use HH:MM, e.g. 09:30");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let digits =
        |x: &str, n: std::ops::RangeInclusive<usize>| n.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end_of_day => Ok(SECONDS_PER_DAY),
        (0..=23, 0..=59) => Ok(h * 3600 + m * 60),
        _ => Err(bad()),
    }
}

fn to_jiff(t: OffsetDateTime) -> Option<Timestamp> {
    Timestamp::from_nanosecond(t.unix_timestamp_nanos()).ok()
}

/// `ts` at the offset of `like`.
fn from_jiff(ts: Timestamp, like: OffsetDateTime) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond()).ok().map(|t| t.to_offset(like.offset()))
}

/// Follows blocking periods from `t`: while `covering_end(u)` names the end of a period in
/// force at `u`, move to it. `None` if nothing is in force at `t`.
fn chase(
    t: OffsetDateTime,
    mut covering_end: impl FnMut(OffsetDateTime) -> Option<OffsetDateTime>,
) -> Option<OffsetDateTime> {
    let mut u = t;
    while let Some(end) = covering_end(u) {
        u = end;
    }
    (u > t).then_some(u)
}

/// When `service` may be changed again if it may not be at `t`: the end of the freezes and
/// protected periods in force at `t`, and of those that follow without a gap. `None` if
/// neither a freeze covering `service` nor one of `periods` is in force at `t`.
pub fn blocked_until(
    t: OffsetDateTime,
    service: &str,
    freezes: &[Freeze],
    periods: &[ProtectedPeriod],
) -> Option<OffsetDateTime> {
    chase(t, |u| {
        let frozen = freezes.iter().filter(|f| f.covers(u, service)).map(|f| f.to);
        frozen.chain(periods.iter().filter(|p| p.from <= u && u < p.to).map(|p| p.to)).max()
    })
}

/// A half-open period `[from, to)`.
type Period = (OffsetDateTime, OffsetDateTime);

/// Freezes and the services' protected periods, indexed by service to check the many cells
/// of many batches quickly.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blockers<'a> {
    /// Freezes of the whole tenant.
    everywhere: Vec<Period>,
    /// Freezes naming the service, and its protected periods.
    by_service: FastMap<&'a str, Vec<Period>>,
}

impl<'a> Blockers<'a> {
    /// The blockers of `freezes` (tenant-wide, or of the services they name) and of the
    /// services' protected `periods`.
    pub(crate) fn new(freezes: &'a [Freeze], periods: &'a BTreeMap<String, Vec<ProtectedPeriod>>) -> Self {
        let mut b = Self::default();
        for f in freezes {
            if f.services.is_empty() {
                b.everywhere.push((f.from, f.to));
            }
            for s in &f.services {
                b.by_service.entry(s).or_default().push((f.from, f.to));
            }
        }
        for (service, periods) in periods {
            b.by_service.entry(service).or_default().extend(periods.iter().map(|p| (p.from, p.to)));
        }
        b
    }

    /// Like [`blocked_until`] for a change touching all of `services` at once.
    pub(crate) fn blocked_until<'s, I>(&self, t: OffsetDateTime, services: I) -> Option<OffsetDateTime>
    where
        I: IntoIterator<Item = &'s str> + Clone,
    {
        let in_force = |u: OffsetDateTime| move |&(from, to): &Period| (from <= u && u < to).then_some(to);
        chase(t, |u| {
            let tenant = self.everywhere.iter().filter_map(in_force(u));
            // Most fleets have no service-specific blocker: skip the lookups then.
            let named = (!self.by_service.is_empty())
                .then(|| services.clone())
                .into_iter()
                .flatten()
                .filter_map(|s| self.by_service.get(s))
                .flat_map(move |periods| periods.iter().filter_map(in_force(u)));
            tenant.chain(named).max()
        })
    }
}

#[cfg(test)]
mod tests;
