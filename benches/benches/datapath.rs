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
//! If `dpdk-testpmd` is installed, the same invocation runs the DPDK reference
//! (`/work/shared/bench/dpdk-loopback.sh memif|vhost <secs> <bytes> 1`, or
//! `EMUDEV_DPDK_SCRIPT`) alternating with emudev run by run (this machine is noisy: a slow
//! spell then hits both), prints every run, the medians, and emudev's median as a ratio of
//! each reference's.
//!
//! `cargo bench -p emudev-benches --bench datapath`
//!
//! Environment:
//! - `EMUDEV_BENCH_SECS`: measured seconds per run (default 3), after 1 s of warm-up.
//! - `EMUDEV_BENCH_RUNS`: runs per size (default 3).
//! - `EMUDEV_BENCH_PIN=0`: do not pin (default: device to CPU 0, client to CPU 1).
//! - `EMUDEV_BENCH_DPDK=0`: skip the DPDK reference.
//! - `EMUDEV_BENCH_MODE=trapped`: trapped tails, inline data path (default `mmap`); `kick`:
//!   doorbell pages plus kick eventfds the client signals after each tail store.
//! - `EMUDEV_BENCH_SIZES=64,1500`: the frame sizes (default both).
//! - `EMUDEV_BENCH_IDLE_PAUSE`: the client's pause hints after an empty round
//!   (`FwdConfig::idle_pause`, default `FWD_IDLE_PAUSE`); 0 polls flat out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emudev_benches::{median, pin_to_cpu, spawn_pinned};
use emudev_iavf::datapath::{self, Loopback, PollConfig};
use emudev_iavf::driver::{
    DriverConfig, FwdConfig, FwdCounters, FwdMode, IavfDriver, FWD_IDLE_PAUSE,
};
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
fn run_once(
    dir: &Path,
    n: usize,
    size: usize,
    secs: u64,
    pin: bool,
    mmap: bool,
    kick: bool,
) -> f64 {
    let path = dir.join(format!("dp{n}.sock"));
    let cfg = IavfConfig::new("emu_iavf0")
        .with_queues(1)
        .with_doorbell_pages(mmap)
        .with_doorbell_kicks(kick);
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
    let thread = spawn_pinned(pin, move || server.run());
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
    if kick {
        assert!(d.enable_kicks().expect("kicks") > 0, "no kick eventfds");
    }
    let link = d.bring_up(&cfg).expect("bring-up");
    assert!(link.up, "link down");

    // testpmd `start tx_first 16`: 16 bursts of 32 frames, then io forwarding (zero copy: the
    // received buffers go back out as they are). A warm-up call, then the measured one.
    let counters = FwdCounters::default();
    let stop = AtomicBool::new(false);
    let idle_pause = env_num("EMUDEV_BENCH_IDLE_PAUSE", u64::from(FWD_IDLE_PAUSE)) as u32;
    let mut fwd = FwdConfig {
        idle_pause,
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

/// One run of the DPDK reference for `kind` at `size` bytes: its Mpps, parsed from the
/// script's "<kind> <bytes>B Mpps <median> Gbps <median> runs ..." line (runs=1).
fn dpdk(script: &Path, kind: &str, secs: u64, size: usize) -> Option<f64> {
    let out = Command::new("bash")
        .arg(script)
        .arg(kind)
        .arg(secs.to_string())
        .arg(size.to_string())
        .arg("1")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(kind) && l.contains(" Mpps "))?;
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
    let mode_env = std::env::var("EMUDEV_BENCH_MODE").unwrap_or_default();
    let mmap = mode_env != "trapped";
    let kick = mode_env == "kick";
    let mode = if kick {
        "mmapped doorbells kicked through eventfds, polled worker"
    } else if mmap {
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
        "iavf data path ({mode}), io-forward <-> loopback, {} packets in flight, rings of {RING}, client idle pause {}: {placement} ({cpus} CPUs, load {})",
        INJECT_BURSTS * BURST,
        env_num("EMUDEV_BENCH_IDLE_PAUSE", u64::from(FWD_IDLE_PAUSE)),
        load()
    );
    let use_dpdk = !std::env::var("EMUDEV_BENCH_DPDK").is_ok_and(|v| v == "0");
    let have = use_dpdk
        && Command::new("sh")
            .args(["-c", "command -v dpdk-testpmd"])
            .output()
            .is_ok_and(|o| o.status.success());
    if use_dpdk && !have {
        println!("dpdk-testpmd not installed: no DPDK reference (apt-get install -y dpdk-dev)");
    }
    let script = std::env::var("EMUDEV_DPDK_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/work/shared/bench/dpdk-loopback.sh"));
    let kinds: &[&str] = if have { &["memif", "vhost"] } else { &[] };
    if have {
        println!(
            "DPDK reference: {} (testpmd io forward, same sizes, pinning and packets in flight); \
             emudev and each reference alternate run by run",
            script.display()
        );
    }
    let sizes: Vec<usize> = std::env::var("EMUDEV_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| SIZES.to_vec());
    let mut n = 0;
    for size in sizes {
        let mut ours = Vec::new();
        let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        for run in 1..=runs {
            let r = run_once(&dir, n, size, secs, pin, mmap, kick) / 1e6;
            n += 1;
            println!("  run {run} emudev {size}B {r:.3} Mpps (load {})", load());
            ours.push(r);
            for (k, kind) in kinds.iter().enumerate() {
                match dpdk(&script, kind, secs, size) {
                    Some(m) => {
                        println!("  run {run} {kind} {size}B {m:.3} Mpps");
                        theirs[k].push(m);
                    }
                    None => println!("  run {run} {kind} {size}B: no figure"),
                }
            }
        }
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let m = median(ours.clone());
        println!(
            "emudev {size}B Mpps {m:.3} Gbps {:.2} runs {}",
            m * 1e6 * size as f64 * 8.0 / 1e9,
            list(&ours)
        );
        for (k, kind) in kinds.iter().enumerate() {
            if theirs[k].is_empty() {
                println!("ratio emudev/{kind} {size}B: no DPDK figure");
                continue;
            }
            let t = median(theirs[k].clone());
            println!(
                "{kind} {size}B Mpps {t:.3} Gbps {:.2} runs {}",
                t * 1e6 * size as f64 * 8.0 / 1e9,
                list(&theirs[k])
            );
            println!(
                "ratio emudev/{kind} {size}B {:.3} ({m:.3} / {t:.3} Mpps)",
                m / t
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
