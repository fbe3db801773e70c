//! Notification benchmark: how the three ways of ringing the iavf tails (`doorbells=trap`,
//! `mmap`, `kick`) serve sparse traffic. The client sends one 64-byte frame, waits (spinning)
//! for the loopback back-end to return it, then stays idle for a gap, many times over. Per
//! mode it prints the round-trip time (median and 99th percentile) and the CPU the device side
//! burnt (the process's CPU time minus the client thread's) as a share of one CPU.
//!
//! - `trap`: every tail write is a REGION_WRITE; the data path runs inline on the server thread.
//! - `mmap`: tails are stores into the doorbell pages; the worker polls, and when idle spins,
//!   yields, then sleeps in doubling steps up to 1 ms.
//! - `kick`: as `mmap`, and the client signals the pair's kick eventfd after each store
//!   (`IavfDriver::enable_kicks`); once kicked, the idle worker sleeps until the next kick.
//!
//! `cargo bench -p emudev-benches --bench notify`
//!
//! Environment: `EMUDEV_BENCH_PINGS` (default 2000 per run), `EMUDEV_BENCH_GAP_US` (idle gap,
//! default 1000), `EMUDEV_BENCH_RUNS` (default 3, modes alternate run by run),
//! `EMUDEV_BENCH_PIN=0` (default: device threads on CPU 0, client on CPU 1).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emudev_benches::{median, pin_to_cpu, spawn_pinned};
use emudev_iavf::datapath::{self, Loopback, PollConfig};
use emudev_iavf::driver::{DriverConfig, IavfDriver};
use emudev_iavf::{IavfConfig, IavfDevice};
use emudev_vfio_user::server::ServerConfig;
use rustix::time::{clock_gettime, ClockId};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Trap,
    Mmap,
    Kick,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Trap => "trap",
            Mode::Mmap => "mmap",
            Mode::Kick => "kick",
        }
    }
}

struct Run {
    rtt_us: Vec<f64>,
    device_cpu: f64,
    sleeps: u64,
    kicks: u64,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn cpu_secs(id: ClockId) -> f64 {
    let t = clock_gettime(id);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn run_once(dir: &Path, n: usize, mode: Mode, pings: usize, gap: Duration, pin: bool) -> Run {
    let path = dir.join(format!("n{n}.sock"));
    let cfg = IavfConfig::new("emu_iavf0")
        .with_queues(1)
        .with_doorbell_pages(mode != Mode::Trap)
        .with_doorbell_kicks(mode == Mode::Kick);
    let dev = IavfDevice::new(cfg).expect("device");
    let handle = dev.handle();
    let server = dev.serve(&path, ServerConfig::default()).expect("bind");
    let stats = if mode == Mode::Trap {
        datapath::attach(&handle, Arc::new(Loopback))
    } else {
        let pin_worker: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {
            pin_to_cpu(0);
        });
        let poll = PollConfig {
            on_start: pin.then_some(pin_worker),
            ..PollConfig::default()
        };
        datapath::attach_polled(&handle, Arc::new(Loopback), poll)
    }
    .expect("attach data path");
    let shandle = server.handle();
    let thread = spawn_pinned(pin, move || server.run());
    let mut d = IavfDriver::connect(&path).expect("connect");
    if mode != Mode::Trap {
        assert!(d.map_doorbells().expect("map"), "no doorbell pages");
    }
    if mode == Mode::Kick {
        assert_eq!(d.enable_kicks().expect("kicks"), 2, "no kick eventfds");
    }
    assert!(d.bring_up(&DriverConfig::default()).expect("bring-up").up);
    let frame = emudev_iavf::spec::frame::udp_frame(64, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut rx = Vec::with_capacity(4);
    let mut ping = |rtt: Option<&mut Vec<f64>>| {
        let t0 = Instant::now();
        assert_eq!(d.tx_burst(0, &[&frame]).expect("tx"), 1);
        rx.clear();
        let end = t0 + Duration::from_secs(5);
        while rx.is_empty() {
            d.rx_burst(0, &mut rx, 4).expect("rx");
            assert!(Instant::now() < end, "no frame back in 5 s");
        }
        if let Some(r) = rtt {
            r.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    };
    for _ in 0..50 {
        ping(None);
        std::thread::sleep(gap);
    }
    let w0 = stats.worker();
    let (p0, c0, t0) = (
        cpu_secs(ClockId::ProcessCPUTime),
        cpu_secs(ClockId::ThreadCPUTime),
        Instant::now(),
    );
    let mut rtt_us = Vec::with_capacity(pings);
    for _ in 0..pings {
        ping(Some(&mut rtt_us));
        std::thread::sleep(gap);
    }
    let wall = t0.elapsed().as_secs_f64();
    let device = (cpu_secs(ClockId::ProcessCPUTime) - p0) - (cpu_secs(ClockId::ThreadCPUTime) - c0);
    let w1 = stats.worker();
    d.close().expect("close");
    shandle.stop();
    thread.join().expect("server thread").expect("server run");
    Run {
        rtt_us,
        device_cpu: device / wall,
        sleeps: w1.sleeps - w0.sleeps,
        kicks: w1.kicks - w0.kicks,
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

fn main() {
    let pings = env_num("EMUDEV_BENCH_PINGS", 2000) as usize;
    let gap = Duration::from_micros(env_num("EMUDEV_BENCH_GAP_US", 1000));
    let runs = env_num("EMUDEV_BENCH_RUNS", 3).max(1) as usize;
    let pin = env_num("EMUDEV_BENCH_PIN", 1) != 0;
    let dir = std::env::temp_dir().join(format!("emudev-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "notification: one 64 B frame through loopback, then {} us idle; {pings} pings per run, {runs} runs per mode (alternating){}",
        gap.as_micros(),
        if pin { ", device on CPU 0, client on CPU 1" } else { "" }
    );
    let modes = [Mode::Trap, Mode::Mmap, Mode::Kick];
    let mut results: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    let mut n = 0;
    for r in 0..runs {
        for (i, &m) in modes.iter().enumerate() {
            n += 1;
            let run = run_once(&dir, n, m, pings, gap, pin);
            println!(
                "  run {} {:<4}  rtt p50 {:>7.1} us  p99 {:>7.1} us  device CPU {:>5.1} %  worker sleeps {:>6}  kicks {:>6}",
                r + 1,
                m.name(),
                quantile(&run.rtt_us, 0.5),
                quantile(&run.rtt_us, 0.99),
                run.device_cpu * 100.0,
                run.sleeps,
                run.kicks
            );
            results[i].push(run);
        }
    }
    println!("medians of {runs} runs:");
    for (i, m) in modes.iter().enumerate() {
        let p50: Vec<f64> = results[i]
            .iter()
            .map(|r| quantile(&r.rtt_us, 0.5))
            .collect();
        let p99: Vec<f64> = results[i]
            .iter()
            .map(|r| quantile(&r.rtt_us, 0.99))
            .collect();
        let cpu: Vec<f64> = results[i].iter().map(|r| r.device_cpu * 100.0).collect();
        println!(
            "  {:<4}  rtt p50 {:>7.1} us  p99 {:>7.1} us  device CPU {:>5.1} %",
            m.name(),
            median(p50),
            median(p99),
            median(cpu)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
