//! iavf bring-up benchmark: the client driver connects to the emulated AVF VF over a real UNIX
//! socket and brings it to link-up (vfio-user connect and negotiation, DEVICE_RESET, PCI enable,
//! reset wait, admin queue, VERSION, GET_VF_RESOURCES, MSI-X, VLAN stripping, RSS,
//! CONFIG_VSI_QUEUES, CONFIG_IRQ_MAP, ADD_ETH_ADDR, ENABLE_QUEUES, LINK_CHANGE). Each run is timed
//! from `connect` to the link-up return; the close that follows, and the server noticing it,
//! are outside the timing. Prints p50/p99 over the runs and the median time of each step.
//!
//! `cargo bench -p emudev-benches --bench iavf_bringup`
//!
//! Environment:
//! - `EMUDEV_BENCH_RUNS`: measured runs per configuration (default 100), after 5 warm-up runs.
//! - `EMUDEV_BENCH_PIN=1`: pin the server to CPU 0 and the driver to CPU 1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use emudev_benches::{median, spawn_pinned};
use emudev_iavf::driver::{BringUpStep, DriverConfig, IavfDriver};
use emudev_iavf::{IavfConfig, IavfDevice};
use emudev_vfio_user::server::{ServerConfig, ServerHandle};

const WARMUP: usize = 5;

/// Waits until the server has let the previous client go.
fn wait_idle(h: &ServerHandle) {
    let end = Instant::now() + Duration::from_secs(5);
    while h.stats().connected && Instant::now() < end {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Run {
    total: Vec<Duration>,
    steps: BTreeMap<usize, (BringUpStep, Vec<f64>)>,
}

fn measure(path: &std::path::Path, h: &ServerHandle, cfg: &DriverConfig, runs: usize) -> Run {
    let mut r = Run {
        total: Vec::with_capacity(runs),
        steps: BTreeMap::new(),
    };
    for i in 0..WARMUP + runs {
        wait_idle(h);
        let t = Instant::now();
        let mut d = IavfDriver::connect(path).expect("connect");
        let link = d.bring_up(cfg).expect("bring-up");
        let elapsed = t.elapsed();
        assert!(link.up, "link down");
        if i >= WARMUP {
            r.total.push(elapsed);
            for (k, s) in d.steps().iter().enumerate() {
                r.steps
                    .entry(k)
                    .or_insert_with(|| (s.step, Vec::new()))
                    .1
                    .push(s.duration.as_secs_f64() * 1e6);
            }
        }
        d.close().expect("close");
    }
    r.total.sort_unstable();
    r
}

fn report(name: &str, r: Run) {
    let (p50, p99) = (quantile_us(&r.total, 0.5), quantile_us(&r.total, 0.99));
    let (min, max) = (quantile_us(&r.total, 0.0), quantile_us(&r.total, 1.0));
    let verdict = if p99 < 5000.0 { "under" } else { "OVER" };
    println!(
        "{name:<34} {} runs   p50 {:>8.1} us   p99 {:>8.1} us   min {:>8.1} us   max {:>8.1} us   ({verdict} the 5 ms target at p99)",
        r.total.len(),
        p50,
        p99,
        min,
        max
    );
    for (step, samples) in r.steps.into_values() {
        println!("    {:<32} median {:>8.1} us", step.name(), median(samples));
    }
}

fn main() {
    let runs: usize = std::env::var("EMUDEV_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus > 1 && std::env::var("EMUDEV_BENCH_PIN").is_ok_and(|v| v == "1");
    let dir = std::env::temp_dir().join(format!("emudev-bench-iavf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let placement = if pin {
        "server pinned to CPU 0, driver to CPU 1"
    } else {
        "threads not pinned"
    };
    println!("iavf bring-up (connect -> link up): {placement} ({cpus} CPUs)");

    for (queues, label) in [(1u16, "1 queue pair"), (16, "16 queue pairs")] {
        let path = dir.join(format!("iavf{queues}.sock"));
        let dev =
            IavfDevice::new(IavfConfig::new("emu_iavf0").with_queues(queues)).expect("device");
        let server = dev.serve(&path, ServerConfig::default()).expect("bind");
        let handle = server.handle();
        let thread = spawn_pinned(pin, move || server.run());
        let r = measure(
            &path,
            &handle,
            &DriverConfig::with_queue_pairs(queues),
            runs,
        );
        report(label, r);
        handle.stop();
        thread.join().expect("server thread").expect("server run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
