//! vfio-user control-path benchmark: 4-byte REGION_READ and REGION_WRITE round trips and
//! DMA_MAP+DMA_UNMAP pairs, client and server on separate threads over a real UNIX socket,
//! serving the edu device. Prints ops/s with p50/p99 latency, median of several runs.
//!
//! `cargo bench -p emudev-benches --bench vfio_user` (env `EMUDEV_BENCH_SECS` = window per run,
//! default 2; `EMUDEV_BENCH_RUNS` = runs, default 3).

use std::os::fd::AsFd;
use std::time::Duration;

use emudev_benches::{median, pin_to_cpu, Latencies};
use emudev_dma::{DmaProt, SharedMemory};
use emudev_edu::EduDevice;
use emudev_vfio_user::client::Client;
use emudev_vfio_user::server::{Server, ServerConfig};

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let secs: f64 = std::env::var("EMUDEV_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let runs: usize = std::env::var("EMUDEV_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let window = Duration::from_secs_f64(secs);
    let warmup = Duration::from_millis(300);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let dir = std::env::temp_dir().join(format!("emudev-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("edu.sock");
    let server = Server::bind(&path, EduDevice::new(), ServerConfig::default()).expect("bind");
    let handle = server.handle();
    let server_thread = std::thread::spawn(move || {
        if cpus > 1 {
            pin_to_cpu(0);
        }
        server.run()
    });
    if cpus > 1 {
        pin_to_cpu(1);
    }
    let mut client = Client::connect(&path).expect("connect");
    let (mem, fd) = SharedMemory::memfd("bench", 1 << 16).expect("memfd");
    drop(mem);

    println!("vfio-user control path, edu device, {runs} runs x {secs} s, server on CPU 0, client on CPU 1 ({cpus} CPUs)");
    let mut results: Vec<(&str, Vec<Latencies>)> = vec![("REGION_READ 4 B", vec![]), ("REGION_WRITE 4 B", vec![]), ("DMA_MAP+UNMAP 64 KiB", vec![])];
    for _ in 0..runs {
        results[0].1.push(Latencies::measure(warmup, window, 50_000_000, || {
            std::hint::black_box(client.read_u32(0, 0).expect("read"));
        }));
        let mut v = 0u32;
        results[1].1.push(Latencies::measure(warmup, window, 50_000_000, || {
            v = v.wrapping_add(1);
            client.write_u32(0, 4, v).expect("write");
        }));
        results[2].1.push(Latencies::measure(warmup, window, 50_000_000, || {
            client.dma_map(0x10_0000, 1 << 16, DmaProt::RW, Some((fd.as_fd(), 0))).expect("map");
            client.dma_unmap(0x10_0000, 1 << 16).expect("unmap");
        }));
    }
    for (name, runs) in &results {
        let rate = median(runs.iter().map(|l| l.per_sec()).collect());
        let p50 = median(runs.iter().map(|l| l.quantile_us(0.5)).collect());
        let p99 = median(runs.iter().map(|l| l.quantile_us(0.99)).collect());
        println!("{name:<24} {rate:>12.0} /s   p50 {p50:>7.2} us   p99 {p99:>7.2} us   (median of {} runs)", runs.len());
        for (i, l) in runs.iter().enumerate() {
            println!("    run {i}: {}", l.line(name));
        }
    }
    client.close();
    handle.stop();
    server_thread.join().expect("server thread").expect("server run");
    let _ = std::fs::remove_dir_all(&dir);
}
