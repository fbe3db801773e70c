//! Shared pieces of emudev's benchmarks: latency recording and pinning.
//!
//! Benchmarks print figures; they never assert on time. Each run reports operations per
//! second over a measured window after a warm-up, with the median and 99th percentile of the
//! per-operation latency.

use std::time::{Duration, Instant};

/// Per-operation latencies of one run.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Vec<u32>,
    total: Duration,
}

impl Latencies {
    /// Runs `op` for `warmup` then for `window` (or at most `max_ops` operations), recording each
    /// operation's latency in nanoseconds.
    pub fn measure(
        warmup: Duration,
        window: Duration,
        max_ops: usize,
        mut op: impl FnMut(),
    ) -> Latencies {
        let end = Instant::now() + warmup;
        while Instant::now() < end {
            op();
        }
        let mut samples = Vec::with_capacity(max_ops.min(1 << 24));
        let start = Instant::now();
        let stop = start + window;
        let mut t = start;
        while samples.len() < max_ops {
            op();
            let now = Instant::now();
            samples.push((now - t).as_nanos().min(u32::MAX as u128) as u32);
            t = now;
            if now >= stop {
                break;
            }
        }
        Latencies {
            samples,
            total: t - start,
        }
    }

    /// Operations measured.
    pub fn ops(&self) -> usize {
        self.samples.len()
    }

    /// Operations per second over the window.
    pub fn per_sec(&self) -> f64 {
        self.ops() as f64 / self.total.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut s = self.samples.clone();
        s.sort_unstable();
        let i = ((s.len() - 1) as f64 * q).round() as usize;
        s[i] as f64 / 1000.0
    }

    /// One line: name, ops/s, p50, p99.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>12.0} ops/s   p50 {:>7.2} us   p99 {:>7.2} us   ({} ops)",
            self.per_sec(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.ops()
        )
    }
}

/// Pins the calling thread to `cpu` (best effort; returns whether it worked).
pub fn pin_to_cpu(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// Runs `f` (a server's loop) on a new thread, on CPU 0 when `pin`, and then pins the caller
/// (the client side) to CPU 1: the placement every benchmark here uses.
pub fn spawn_pinned<T: Send + 'static>(
    pin: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let thread = std::thread::spawn(move || {
        if pin {
            pin_to_cpu(0);
        }
        f()
    });
    if pin {
        pin_to_cpu(1);
    }
    thread
}

/// The median of a few values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}
