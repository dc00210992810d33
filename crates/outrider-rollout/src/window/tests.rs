use time::macros::{datetime, offset};

use super::*;

fn win(days: &str, from: &str, to: &str, tz: &str) -> ChangeWindow {
    ChangeWindow { days: days.into(), from: from.into(), to: to.into(), tz: tz.into() }
}

fn windows(ws: &[ChangeWindow]) -> Windows {
    Windows::new(ws).unwrap()
}

fn field_of(w: ChangeWindow) -> String {
    Windows::new(&[win("mon", "10:00", "11:00", "UTC"), w]).unwrap_err().field
}

#[test]
fn errors_name_the_field() {
    assert_eq!(field_of(win("funday", "10:00", "11:00", "UTC")), "windows[1].days");
    assert_eq!(field_of(win("mon-", "10:00", "11:00", "UTC")), "windows[1].days");
    assert_eq!(field_of(win("mon", "25:00", "11:00", "UTC")), "windows[1].from");
    assert_eq!(field_of(win("mon", "10:0", "11:00", "UTC")), "windows[1].from");
    assert_eq!(field_of(win("mon", "24:00", "11:00", "UTC")), "windows[1].from", "24:00 only ends a window");
    assert_eq!(field_of(win("mon", "10:00", "11:60", "UTC")), "windows[1].to");
    assert_eq!(field_of(win("mon", "10:00", "10:00", "UTC")), "windows[1].to");
    assert_eq!(field_of(win("mon", "10:00", "11:00", "Mars/Olympus")), "windows[1].tz");
}

#[test]
fn parses_day_lists_and_ranges() {
    assert_eq!(parse_days("mon-fri"), Ok(0b001_1111));
    assert_eq!(parse_days("sat,sun"), Ok(0b110_0000));
    assert_eq!(parse_days("mon-wed,fri"), Ok(0b001_0111));
    assert_eq!(parse_days("Fri-Mon"), Ok(0b111_0001), "ranges wrap around the week");
    assert_eq!(parse_days("mon-sun"), Ok(0b111_1111));
    assert!(parse_days("").is_err());
}

#[test]
fn no_window_is_always_open() {
    let w = windows(&[]);
    let t = datetime!(2026-03-08 07:30 UTC);
    assert!(w.is_always_open() && w.allows(t));
    assert_eq!(w.next_open(t), Some(t));
}

#[test]
fn weekday_office_hours_in_shanghai() {
    let w = windows(&[win("mon-fri", "10:00", "17:00", "Asia/Shanghai")]);
    // Friday 2026-03-06 16:59 in Shanghai (UTC+8) is open, 17:00 is not.
    assert!(w.allows(datetime!(2026-03-06 08:59 UTC)));
    assert!(!w.allows(datetime!(2026-03-06 09:00 UTC)));
    // From Friday evening the next opening is Monday 10:00 Shanghai time.
    assert_eq!(w.next_open(datetime!(2026-03-06 09:00 UTC)), Some(datetime!(2026-03-09 02:00 UTC)));
    // The answer keeps the offset of the question.
    let asked = datetime!(2026-03-06 17:00 +08:00);
    let got = w.next_open(asked).unwrap();
    assert_eq!((got, got.offset()), (datetime!(2026-03-09 10:00 +08:00), offset!(+08:00)));
}

#[test]
fn over_midnight_belongs_to_the_day_it_starts() {
    let w = windows(&[win("fri", "22:00", "02:00", "UTC")]);
    // 2026-03-06 is a Friday.
    assert!(!w.allows(datetime!(2026-03-06 21:59 UTC)));
    assert!(w.allows(datetime!(2026-03-06 22:00 UTC)));
    assert!(w.allows(datetime!(2026-03-07 01:59 UTC)), "Saturday early morning belongs to Friday's window");
    assert!(!w.allows(datetime!(2026-03-07 02:00 UTC)));
    assert!(!w.allows(datetime!(2026-03-07 23:00 UTC)), "Saturday evening is not open");
    assert!(!w.allows(datetime!(2026-03-06 01:00 UTC)), "Friday early morning belongs to Thursday");
    assert_eq!(w.next_open(datetime!(2026-03-07 02:00 UTC)), Some(datetime!(2026-03-13 22:00 UTC)));
}

#[test]
fn to_may_be_the_end_of_the_day() {
    let w = windows(&[win("sat", "20:00", "24:00", "UTC")]);
    assert!(w.allows(datetime!(2026-03-07 23:59:59 UTC)));
    assert!(!w.allows(datetime!(2026-03-08 00:00 UTC)));
}

#[test]
fn office_hours_follow_the_wall_clock_across_dst() {
    // America/New_York springs forward on 2026-03-08 (EST, UTC-5 → EDT, UTC-4) and falls back
    // on 2026-11-01.
    let w = windows(&[win("mon-sun", "09:00", "17:00", "America/New_York")]);
    assert!(w.allows(datetime!(2026-03-07 14:00 UTC)), "09:00 EST");
    assert!(!w.allows(datetime!(2026-03-07 13:59 UTC)));
    assert!(w.allows(datetime!(2026-03-08 13:00 UTC)), "09:00 EDT");
    assert!(!w.allows(datetime!(2026-03-08 21:00 UTC)), "17:00 EDT");
    assert_eq!(w.next_open(datetime!(2026-03-07 23:00 UTC)), Some(datetime!(2026-03-08 13:00 UTC)));
    assert_eq!(w.next_open(datetime!(2026-10-31 22:00 UTC)), Some(datetime!(2026-11-01 14:00 UTC)));
}

#[test]
fn a_window_in_the_skipped_hour_waits_a_week() {
    let w = windows(&[win("sun", "02:00", "03:00", "America/New_York")]);
    // 02:00–03:00 does not exist on 2026-03-08: the next window is 2026-03-15 02:00 EDT.
    assert_eq!(w.next_open(datetime!(2026-03-07 12:00 UTC)), Some(datetime!(2026-03-15 06:00 UTC)));
}

#[test]
fn a_window_starting_in_the_skipped_hour_opens_when_the_clock_jumps() {
    let w = windows(&[win("sun", "02:30", "04:00", "America/New_York")]);
    // At 07:00 UTC the clock jumps from 01:59:59 EST to 03:00 EDT, inside the window.
    assert!(!w.allows(datetime!(2026-03-08 06:59 UTC)));
    assert!(w.allows(datetime!(2026-03-08 07:00 UTC)));
    assert_eq!(w.next_open(datetime!(2026-03-08 05:00 UTC)), Some(datetime!(2026-03-08 07:00 UTC)));
}

#[test]
fn the_repeated_hour_is_in_the_window_twice() {
    let w = windows(&[win("sun", "01:00", "01:30", "America/New_York")]);
    // 01:00–01:30 happens at 05:00Z (EDT) and again at 06:00Z (EST) on 2026-11-01.
    assert!(w.allows(datetime!(2026-11-01 05:15 UTC)));
    assert!(!w.allows(datetime!(2026-11-01 05:45 UTC)));
    assert!(w.allows(datetime!(2026-11-01 06:15 UTC)));
    assert_eq!(w.next_open(datetime!(2026-11-01 05:45 UTC)), Some(datetime!(2026-11-01 06:00 UTC)));
}

#[test]
fn several_windows_open_at_the_first_of_them() {
    let w = windows(&[win("sat", "10:00", "12:00", "UTC"), win("mon-fri", "20:00", "21:00", "Europe/Paris")]);
    // Friday 2026-03-06 12:00 UTC: Paris (UTC+1) opens at 19:00 UTC, before Saturday.
    assert_eq!(w.next_open(datetime!(2026-03-06 12:00 UTC)), Some(datetime!(2026-03-06 19:00 UTC)));
    assert_eq!(w.next_open(datetime!(2026-03-06 20:00 UTC)), Some(datetime!(2026-03-07 10:00 UTC)));
}

fn freeze(from: OffsetDateTime, to: OffsetDateTime, services: &[&str]) -> Freeze {
    Freeze {
        id: "f".into(),
        from,
        to,
        reason: "test".into(),
        services: services.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn blocked_until_chases_adjacent_freezes_and_periods() {
    let h = |n: u8| datetime!(2026-03-02 00:00 UTC) + time::Duration::hours(n.into());
    let freezes = [freeze(h(10), h(12), &[]), freeze(h(12), h(13), &["a"])];
    let periods = [ProtectedPeriod { from: h(13), to: h(14), reason: "sale".into() }];
    assert_eq!(blocked_until(h(11), "a", &freezes, &periods), Some(h(14)));
    assert_eq!(blocked_until(h(11), "b", &freezes, &[]), Some(h(12)));
    assert_eq!(blocked_until(h(9), "a", &freezes, &periods), None);
    assert_eq!(blocked_until(h(12), "b", &freezes, &[]), None, "a freeze ends before its `to`");
    assert_eq!(blocked_until(h(13), "a", &freezes, &periods), Some(h(14)));
}

#[test]
fn blockers_check_every_service_of_a_change() {
    let h = |n: u8| datetime!(2026-03-02 00:00 UTC) + time::Duration::hours(n.into());
    let freezes = [freeze(h(10), h(12), &["a"]), freeze(h(20), h(21), &[])];
    let periods =
        BTreeMap::from([("b".to_owned(), vec![ProtectedPeriod { from: h(11), to: h(15), reason: "sale".into() }])]);
    let blockers = Blockers::new(&freezes, &periods);
    assert_eq!(blockers.blocked_until(h(10), ["c"]), None);
    assert_eq!(blockers.blocked_until(h(10), ["c", "a"]), Some(h(12)));
    assert_eq!(blockers.blocked_until(h(10), ["a", "b"]), Some(h(15)), "a's freeze, then b's period");
    assert_eq!(blockers.blocked_until(h(20), ["c"]), Some(h(21)), "tenant-wide");
}
