//! Data-path benchmark: the client driver forwards in io mode ([`IavfDriver::forward`], zero
//! copy: received buffers are posted back on TX as they are) against the emulated VF's software data path with the `loopback` back-end,
//! so every packet goes client TX -> device TX engine -> loopback -> device RX engine -> client
//! RX, over and over. Default mode: tails on mmapped doorbell pages (the driver stores, the
//! device's worker thread polls); `EMUDEV_BENCH_MODE=trapped`: trapped tail writes served
//! inline on the server thread (a message round trip per tail write). 512 packets are injected once after link up (16 bursts of 32, like
//! testpmd's `start tx_first 16`) and kept in flight on 1024-entry rings. The rate is the
//! client's received packets over a measured window after a warm-up; each size is run a few
//! times and the median printed with every run.
//!
//! Then, if `dpdk-testpmd` is installed, the same invocation runs the DPDK reference
//! (`/work/shared/bench/dpdk-loopback.sh memif|vhost <secs> <bytes>`, or `EMUDEV_DPDK_SCRIPT`)
//! and prints emudev's median as a ratio of each.
//!
//! `cargo bench -p emudev-benches --bench datapath`
//!
//! Environment:
//! - `EMUDEV_BENCH_SECS`: measured seconds per run (default 3), after 1 s of warm-up.
//! - `EMUDEV_BENCH_RUNS`: runs per size (default 3).
//! - `EMUDEV_BENCH_PIN=0`: do not pin (default: device to CPU 0, client to CPU 1).
//! - `EMUDEV_BENCH_DPDK=0`: skip the DPDK reference.
//! - `EMUDEV_BENCH_MODE=trapped`: trapped tails, inline data path (default `mmap`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emudev_benches::{median, pin_to_cpu};
use emudev_iavf::datapath::{self, Loopback, PollConfig};
use emudev_iavf::driver::{DriverConfig, FwdConfig, FwdCounters, FwdMode, IavfDriver};
use emudev_iavf::{IavfConfig, IavfDevice};
use emudev_vfio_user::server::ServerConfig;

const RING: u16 = 1024;
const BURST: usize = 32;
const INJECT_BURSTS: usize = 16;
const WARMUP: Duration = Duration::from_secs(1);
const SIZES: [usize; 2] = [64, 1500];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One run: packets per second received (and forwarded back) by the client.
fn run_once(dir: &Path, n: usize, size: usize, secs: u64, pin: bool, mmap: bool) -> f64 {
    let path = dir.join(format!("dp{n}.sock"));
    let cfg = IavfConfig::new("emu_iavf0")
        .with_queues(1)
        .with_doorbell_pages(mmap);
    let dev = IavfDevice::new(cfg).expect("device");
    let handle = dev.handle();
    let server = dev.serve(&path, ServerConfig::default()).expect("bind");
    let stats = if mmap {
        let pin_worker: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {
            pin_to_cpu(0);
        });
        let poll = PollConfig {
            on_start: pin.then_some(pin_worker),
            ..PollConfig::default()
        };
        datapath::attach_polled(&handle, Arc::new(Loopback), poll)
    } else {
        datapath::attach(&handle, Arc::new(Loopback))
    }
    .expect("attach data path");
    let shandle = server.handle();
    let thread = std::thread::spawn(move || {
        if pin {
            pin_to_cpu(0);
        }
        server.run()
    });
    if pin {
        pin_to_cpu(1);
    }
    let cfg = DriverConfig {
        ring_len: RING,
        ..DriverConfig::default()
    };
    let mut d = IavfDriver::connect(&path).expect("connect");
    if mmap {
        assert!(
            d.map_doorbells().expect("map doorbells"),
            "no doorbell pages"
        );
    }
    let link = d.bring_up(&cfg).expect("bring-up");
    assert!(link.up, "link down");

    // testpmd `start tx_first 16`: 16 bursts of 32 frames, then io forwarding (zero copy: the
    // received buffers go back out as they are). A warm-up call, then the measured one.
    let counters = FwdCounters::default();
    let stop = AtomicBool::new(false);
    let mut fwd = FwdConfig {
        mode: FwdMode::Io,
        burst: BURST,
        tx_first: INJECT_BURSTS,
        frame_len: size,
        deadline: Some(Instant::now() + WARMUP),
        ..FwdConfig::default()
    };
    d.forward(&fwd, &counters, &stop).expect("warm-up");
    let before = counters.snapshot();
    fwd.tx_first = 0;
    let start = Instant::now();
    fwd.deadline = Some(start + Duration::from_secs(secs));
    let after = d.forward(&fwd, &counters, &stop).expect("forward");
    let packets = after.rx_packets - before.rx_packets;
    if after.tx_dropped > 0 {
        println!(
            "    (client dropped {} packets: TX ring full)",
            after.tx_dropped
        );
    }
    let rate = packets as f64 / start.elapsed().as_secs_f64();
    let s = stats.total();
    if s.rx_drops + s.tx_errors + s.rx_errors > 0 {
        println!(
            "    (device counted {} RX drops, {} TX errors, {} RX errors)",
            s.rx_drops, s.tx_errors, s.rx_errors
        );
    }
    d.close().expect("close");
    shandle.stop();
    thread.join().expect("server thread").expect("server run");
    rate
}

/// The DPDK reference's median Mpps for `kind` at `size` bytes, parsed from the script's
/// "<kind> <bytes>B Mpps <median> Gbps <median> runs ..." line.
fn dpdk(script: &Path, kind: &str, secs: u64, size: usize) -> Option<f64> {
    let out = Command::new("bash")
        .arg(script)
        .arg(kind)
        .arg(secs.to_string())
        .arg(size.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(kind) && l.contains(" Mpps "))?;
    println!("  dpdk: {line}");
    let mut words = line.split_whitespace();
    words.find(|w| *w == "Mpps")?;
    let mpps: f64 = words.next()?.parse().ok()?;
    (mpps > 0.0).then_some(mpps)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let secs = env_num("EMUDEV_BENCH_SECS", 3).max(1);
    let runs = env_num("EMUDEV_BENCH_RUNS", 3).max(1) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus > 1 && std::env::var("EMUDEV_BENCH_PIN").map_or(true, |v| v != "0");
    let dir: PathBuf = std::env::temp_dir().join(format!("emudev-bench-dp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mmap = std::env::var("EMUDEV_BENCH_MODE").map_or(true, |v| v != "trapped");
    let mode = if mmap {
        "mmapped doorbells, polled worker"
    } else {
        "trapped tails, inline"
    };
    let placement = if pin {
        "device pinned to CPU 0, client to CPU 1"
    } else {
        "threads not pinned"
    };
    println!(
        "iavf data path ({mode}), io-forward <-> loopback, {} packets in flight, rings of {RING}: {placement} ({cpus} CPUs, load {})",
        INJECT_BURSTS * BURST,
        load()
    );
    let mut results = Vec::new();
    let mut n = 0;
    for size in SIZES {
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(run_once(&dir, n, size, secs, pin, mmap) / 1e6);
            n += 1;
        }
        let list: Vec<String> = rates.iter().map(|r| format!("{r:.3}")).collect();
        let m = median(rates);
        println!(
            "emudev {size}B Mpps {m:.3} Gbps {:.2} runs {}",
            m * 1e6 * size as f64 * 8.0 / 1e9,
            list.join(" ")
        );
        results.push((size, m));
    }
    let _ = std::fs::remove_dir_all(&dir);

    if std::env::var("EMUDEV_BENCH_DPDK").is_ok_and(|v| v == "0") {
        return;
    }
    let have = Command::new("sh")
        .args(["-c", "command -v dpdk-testpmd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("dpdk-testpmd not installed: no DPDK reference (apt-get install -y dpdk)");
        return;
    }
    let script = std::env::var("EMUDEV_DPDK_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/work/shared/bench/dpdk-loopback.sh"));
    println!("DPDK reference ({}, load {})", script.display(), load());
    for (size, ours) in results {
        for kind in ["memif", "vhost"] {
            match dpdk(&script, kind, secs, size) {
                Some(theirs) => println!(
                    "ratio emudev/{kind} {size}B {:.3} ({ours:.3} / {theirs:.3} Mpps)",
                    ours / theirs
                ),
                None => println!("ratio emudev/{kind} {size}B: no DPDK figure"),
            }
        }
    }
}
