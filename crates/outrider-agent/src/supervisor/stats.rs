//! Periodic resource sampling of running sidecars: CPU percent and resident memory.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use super::board::StatusBoard;

/// The previous sample of one sidecar.
struct Sample {
    pid: u32,
    cpu_ticks: u64,
    at: Instant,
}

/// CPU use in percent of one core between two samples.
pub(super) fn cpu_percent(ticks_delta: u64, elapsed: Duration, ticks_per_second: u64) -> f64 {
    if elapsed.is_zero() || ticks_per_second == 0 {
        return 0.0;
    }
    // Tick counts stay far below 2^52, so the conversions are exact.
    let cpu_seconds = ticks_delta as f64 / ticks_per_second as f64;
    cpu_seconds / elapsed.as_secs_f64() * 100.0
}

/// Samples every sidecar that has a pid, every `interval`, forever. The first sample of a
/// process reports 0% CPU (there is nothing to compare with yet).
pub(super) async fn sample_forever(board: Arc<StatusBoard>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous: HashMap<String, Sample> = HashMap::new();
    let ticks_per_second = outrider_procfs::clock_ticks_per_second();
    loop {
        ticker.tick().await;
        let running = board.pids();
        previous.retain(|name, _| running.iter().any(|(n, _)| n == name));
        for (name, pid) in running {
            let Ok(stat) = outrider_procfs::stat(pid) else { continue };
            if stat.is_exited() {
                continue;
            }
            let rss = outrider_procfs::rss_bytes(pid).unwrap_or(0);
            let now = Instant::now();
            let cpu = match previous.get(&name) {
                Some(p) if p.pid == pid => {
                    cpu_percent(stat.cpu_ticks().saturating_sub(p.cpu_ticks), now - p.at, ticks_per_second)
                }
                _ => 0.0,
            };
            board.update_stats(&name, pid, cpu, rss);
            previous.insert(name, Sample { pid, cpu_ticks: stat.cpu_ticks(), at: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_ticks_over_wall_time() {
        assert_eq!(cpu_percent(100, Duration::from_secs(2), 100), 50.0);
        assert_eq!(cpu_percent(400, Duration::from_secs(2), 100), 200.0);
        assert_eq!(cpu_percent(5, Duration::ZERO, 100), 0.0);
    }
}
