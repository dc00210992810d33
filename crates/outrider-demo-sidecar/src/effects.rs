//! The background faults: a spinning thread (`cpu-burn`) and a memory leak (`leak`).

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::fault::Faults;

/// How often the leak allocates (a tenth of its per-second rate each time).
const LEAK_TICK: Duration = Duration::from_millis(100);
const LEAK_TICKS_PER_SEC: u64 = 10;
const PAGE: usize = 4096;

/// The running background faults; dropping it stops them and frees the leaked memory.
#[derive(Debug)]
pub(crate) struct Effects {
    stop: Arc<AtomicBool>,
    leak: Option<JoinHandle<()>>,
}

impl Drop for Effects {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.leak.take() {
            task.abort();
        }
    }
}

/// Starts the background faults `faults` asks for. Must run inside a tokio runtime.
pub(crate) fn start(faults: &Faults) -> Effects {
    let stop = Arc::new(AtomicBool::new(false));
    if faults.cpu_burn {
        let stop = stop.clone();
        let spawned = std::thread::Builder::new().name("cpu-burn".to_owned()).spawn(move || burn(&stop));
        match spawned {
            Ok(_) => info!("fault cpu-burn: one thread is spinning"),
            Err(e) => warn!("fault cpu-burn: could not start the spinning thread: {e}"),
        }
    }
    let leak = faults.leak_bytes_per_sec.map(|rate| {
        info!(bytes_per_sec = rate, "fault leak: leaking memory");
        tokio::spawn(leak(rate))
    });
    Effects { stop, leak }
}

fn burn(stop: &AtomicBool) {
    let mut x: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..100_000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

async fn leak(bytes_per_sec: u64) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut allocated: u64 = 0;
    let mut ticks: u64 = 0;
    let mut interval = tokio::time::interval(LEAK_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        ticks += 1;
        let target = bytes_per_sec.saturating_mul(ticks) / LEAK_TICKS_PER_SEC;
        let Ok(chunk) = usize::try_from(target - allocated) else {
            continue;
        };
        if chunk == 0 {
            continue;
        }
        // Zeroed allocations are not resident until written: touch every page.
        let mut block = vec![0u8; chunk];
        for byte in block.iter_mut().step_by(PAGE) {
            *byte = 0xA5;
        }
        kept.push(black_box(block));
        allocated = target;
    }
}
