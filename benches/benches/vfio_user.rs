//! vfio-user control-path benchmark: 4-byte REGION_READ and REGION_WRITE round trips and
//! DMA_MAP+DMA_UNMAP pairs, client and server on separate threads over a real UNIX socket.
//! Prints ops/s with p50/p99 latency, the median of several runs.
//!
//! `cargo bench -p emudev-benches --bench vfio_user` (or `npm run bench`).
//!
//! Environment:
//! - `EMUDEV_BENCH_PIN=1`: pin emudev's server to CPU 0 and the clients to CPU 1.
//! - `EMUDEV_BENCH_SECS`: measured window per run (default 2), `EMUDEV_BENCH_RUNS` (default 3).
//! - `EMUDEV_BENCH_PEER=<socket>[,region=N][,offset=X]`: also run the same loops, alternating
//!   with emudev's, against another vfio-user server already listening on `<socket>` (for
//!   example libvfio-user's `samples/server`), and print emudev's figure as a ratio of it. The
//!   peer is started by the person running the benchmark; nothing here builds it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use emudev_benches::{median, spawn_pinned, Latencies};
use emudev_dma::{DmaProt, SharedMemory};
use emudev_edu::EduDevice;
use emudev_vfio_user::client::Client;
use emudev_vfio_user::server::{Server, ServerConfig};

struct Target {
    name: String,
    client: Client,
    region: u32,
    offset: u64,
}

#[derive(Default)]
struct Results {
    read: Vec<Latencies>,
    write: Vec<Latencies>,
    map: Vec<Latencies>,
}

fn run_once(t: &mut Target, fd: &OwnedFd, warmup: Duration, window: Duration, r: &mut Results) {
    let (region, offset) = (t.region, t.offset);
    let c = &mut t.client;
    r.read
        .push(Latencies::measure(warmup, window, 50_000_000, || {
            std::hint::black_box(c.read_u32(region, offset).expect("REGION_READ"));
        }));
    let mut v = 0u32;
    r.write
        .push(Latencies::measure(warmup, window, 50_000_000, || {
            v = v.wrapping_add(1);
            c.write_u32(region, offset, v).expect("REGION_WRITE");
        }));
    r.map
        .push(Latencies::measure(warmup, window, 50_000_000, || {
            c.dma_map(0x1000_0000, 1 << 16, DmaProt::RW, Some((fd.as_fd(), 0)))
                .expect("DMA_MAP");
            c.dma_unmap(0x1000_0000, 1 << 16).expect("DMA_UNMAP");
        }));
}

/// Median ops/s, p50 and p99 (us) over runs.
type Summary = (f64, f64, f64);

fn summary(runs: &[Latencies]) -> Summary {
    (
        median(runs.iter().map(|l| l.per_sec()).collect()),
        median(runs.iter().map(|l| l.quantile_us(0.5)).collect()),
        median(runs.iter().map(|l| l.quantile_us(0.99)).collect()),
    )
}

fn parse_peer(spec: &str) -> (PathBuf, u32, u64) {
    let mut parts = spec.split(',');
    let path = PathBuf::from(parts.next().unwrap_or_default());
    let (mut region, mut offset) = (0u32, 0u64);
    for kv in parts {
        match kv.split_once('=') {
            Some(("region", v)) => region = v.parse().expect("region=N"),
            Some(("offset", v)) => {
                offset = if let Some(h) = v.strip_prefix("0x") {
                    u64::from_str_radix(h, 16)
                } else {
                    v.parse()
                }
                .expect("offset=X")
            }
            _ => panic!("EMUDEV_BENCH_PEER: unknown part {kv:?}"),
        }
    }
    (path, region, offset)
}

fn main() {
    let secs: f64 = std::env::var("EMUDEV_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let runs: usize = std::env::var("EMUDEV_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let window = Duration::from_secs_f64(secs);
    let warmup = Duration::from_millis(300);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Pin the emudev server to CPU 0 and the clients to CPU 1 only when asked: an external peer
    // server cannot be pinned from here, and on a loaded machine pinning one side only skews
    // the comparison.
    let pin = cpus > 1 && std::env::var("EMUDEV_BENCH_PIN").is_ok_and(|v| v == "1");

    let dir = std::env::temp_dir().join(format!("emudev-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("edu.sock");
    let server = Server::bind(&path, EduDevice::new(), ServerConfig::default()).expect("bind");
    let handle = server.handle();
    let server_thread = spawn_pinned(pin, move || server.run());
    // edu: BAR0 offset 4 is the liveness register (read and write, no side effects beyond it).
    let mut targets = vec![Target {
        name: "emudev (edu)".into(),
        client: Client::connect(&path).expect("connect"),
        region: 0,
        offset: 4,
    }];
    if let Ok(spec) = std::env::var("EMUDEV_BENCH_PEER") {
        let (peer, region, offset) = parse_peer(&spec);
        let client = Client::connect(&peer)
            .unwrap_or_else(|e| panic!("EMUDEV_BENCH_PEER {}: {e}", peer.display()));
        targets.push(Target {
            name: format!("peer {}", peer.display()),
            client,
            region,
            offset,
        });
    }
    let (mem, fd) = SharedMemory::memfd("bench", 1 << 16).expect("memfd");
    drop(mem);

    let placement = if pin {
        "emudev server pinned to CPU 0, clients to CPU 1"
    } else {
        "threads not pinned"
    };
    println!("vfio-user control path: {runs} runs x {secs} s per loop, {placement} ({cpus} CPUs)");
    let mut results: Vec<Results> = targets.iter().map(|_| Results::default()).collect();
    for _ in 0..runs {
        // Alternate targets run by run so machine noise spreads over both.
        for (t, r) in targets.iter_mut().zip(results.iter_mut()) {
            run_once(t, &fd, warmup, window, r);
        }
    }
    let mut rows: Vec<(String, [Summary; 3])> = Vec::new();
    for (t, r) in targets.iter().zip(results.iter()) {
        rows.push((
            t.name.clone(),
            [summary(&r.read), summary(&r.write), summary(&r.map)],
        ));
    }
    let names = [
        "REGION_READ 4 B",
        "REGION_WRITE 4 B",
        "DMA_MAP+UNMAP 64 KiB",
    ];
    for (i, op) in names.iter().enumerate() {
        for (name, s) in &rows {
            let (rate, p50, p99) = s[i];
            println!("{op:<22} {name:<40} {rate:>10.0} /s   p50 {p50:>7.2} us   p99 {p99:>7.2} us");
        }
        if rows.len() > 1 {
            println!(
                "{op:<22} {:<40} {:>10.2}x",
                "ratio emudev / peer",
                rows[0].1[i].0 / rows[1].1[i].0
            );
        }
    }
    for t in targets {
        t.client.close();
    }
    handle.stop();
    server_thread
        .join()
        .expect("server thread")
        .expect("server run");
    let _ = std::fs::remove_dir_all(&dir);
}
