//! The driver's zero-copy API and forwarding engines over a real vfio-user socket, against the
//! emulated VF with the loopback back-end: segments in and out without copies (single and
//! multi-buffer packets), the pool's accounting, and io / macswap / rxonly / txonly with their
//! counters checked against the device's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{frame, rx_all, serve, unique_number, Vf};
use emudev_iavf::datapath::{self, Loopback};
use emudev_iavf::driver::{udp_frame, DriverConfig, FwdConfig, FwdCounters, FwdMode, Seg};
use emudev_iavf::IavfConfig;

/// Every pool buffer of pair 0 is free, posted in an RX descriptor, or in flight on TX
/// (`held` are the ones the test holds).
fn assert_pool_whole(vf: &mut Vf, held: usize) {
    let in_flight = vf.d().tx_complete(0).expect("clean") as usize;
    let p = &vf.d().queue_pairs()[0];
    let rx_posted = usize::from(p.ring_len());
    assert_eq!(
        p.pool_free() + rx_posted + in_flight + held,
        p.pool_size() as usize,
        "a pool buffer leaked or was freed twice"
    );
}

/// A VF with an inline loopback data path, MTU `mtu`, and a driver brought up with `cfg`.
fn up(cfg: DriverConfig, mtu: u16) -> Vf {
    let mut device =
        IavfConfig::new(&format!("emu_iavf_fwd{}", unique_number())).with_queues(cfg.queue_pairs);
    device.set("mtu", &mtu.to_string()).expect("mtu");
    serve(
        "fwd",
        device,
        |h| datapath::attach(h, Arc::new(Loopback)),
        &cfg,
        false,
    )
    .0
}

#[test]
fn segments_go_back_out_without_copies_single_and_spanning() {
    let cfg = DriverConfig {
        rx_buffer_size: 1024,
        ring_len: 64,
        ..Default::default()
    };
    let mut vf = up(cfg, 3000);
    let small = frame(100, 1);
    let big = frame(2500, 2);
    assert_eq!(vf.d().tx_burst(0, &[&small, &big]).expect("tx"), 2);
    let mut segs = Vec::new();
    assert_eq!(vf.d().rx_burst_segs(0, &mut segs, 32).expect("rx"), 2);
    // 100 B in one buffer; 2500 B over three 1024-byte buffers.
    let shape: Vec<(u16, bool)> = segs.iter().map(|s| (s.len, s.eop)).collect();
    assert_eq!(
        shape,
        vec![(100, true), (1024, false), (1024, false), (452, true)]
    );
    // The bytes are in the buffers the segments name.
    let mut head = vec![0u8; 100];
    vf.d().read_buf(0, segs[0].buf, 0, &mut head).expect("read");
    assert_eq!(head, small);
    assert_pool_whole(&mut vf, segs.len());
    // Back out as they are: the device gathers the three descriptors into one frame.
    assert_eq!(vf.d().tx_burst_segs(0, &segs).expect("tx segs"), 4);
    assert_eq!(rx_all(&mut vf, 0), vec![small, big]);
    assert_pool_whole(&mut vf, 0);
    let s = vf.stats.total();
    assert_eq!((s.tx_packets, s.rx_packets, s.tx_errors), (4, 4, 0));
}

#[test]
fn zero_copy_calls_refuse_what_is_not_a_pool_buffer() {
    let mut vf = up(DriverConfig::default(), 1500);
    let bogus = Seg {
        buf: 1_000_000,
        len: 64,
        eop: true,
    };
    assert!(vf.d().tx_burst_segs(0, &[bogus]).is_err());
    let empty = Seg {
        buf: 0,
        len: 0,
        eop: true,
    };
    assert!(vf.d().tx_burst_segs(0, &[empty]).is_err());
    assert!(
        vf.d().write_buf(0, 0, 2040, &[0; 16]).is_err(),
        "past the buffer"
    );
    assert!(
        vf.d().rx_burst_segs(7, &mut Vec::new(), 1).is_err(),
        "no queue 7"
    );
    // Nothing was posted: the ring is still usable.
    let f = frame(64, 9);
    assert_eq!(vf.d().tx_burst(0, &[&f]).expect("tx"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![f]);
    assert_pool_whole(&mut vf, 0);
}

#[test]
fn io_forwarding_keeps_the_injected_packets_circulating() {
    let cfg = DriverConfig {
        ring_len: 256,
        ..Default::default()
    };
    let mut vf = up(cfg, 1500);
    let counters = FwdCounters::default();
    let fwd = FwdConfig {
        mode: FwdMode::Io,
        tx_first: 2,
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        ..FwdConfig::default()
    };
    let s = vf
        .d()
        .forward(&fwd, &counters, &AtomicBool::new(false))
        .expect("forward");
    assert_eq!(s, counters.snapshot());
    // 64 injected, then every received packet sent again: the difference is what is in flight.
    assert!(
        s.rx_packets > 64,
        "only {} packets went round",
        s.rx_packets
    );
    assert_eq!(s.tx_packets, s.rx_packets + 64);
    assert_eq!(s.tx_dropped, 0);
    assert_eq!(s.rx_bytes, s.rx_packets * 64);
    let dev = vf.stats.total();
    assert_eq!(dev.rx_drops + dev.tx_errors + dev.rx_errors, 0);
    assert!(dev.tx_packets >= s.rx_packets && dev.tx_packets <= s.tx_packets);
    // The 64 in flight come back once more, untouched.
    let left = rx_all(&mut vf, 0);
    assert_eq!(left.len() as u64, s.tx_packets - s.rx_packets);
    let mac = vf.d().mac().expect("mac");
    let template = udp_frame(64, mac, [0x02, 0, 0, 0, 0, 2]);
    assert!(left.iter().all(|f| *f == template));
    assert_pool_whole(&mut vf, 0);
}

#[test]
fn macswap_swaps_on_every_pass() {
    let mut vf = up(DriverConfig::default(), 1500);
    let counters = FwdCounters::default();
    let fwd = FwdConfig {
        mode: FwdMode::MacSwap,
        burst: 1,
        tx_first: 1,
        frame_len: 80,
        deadline: Some(Instant::now() + Duration::from_millis(200)),
        ..FwdConfig::default()
    };
    let s = vf
        .d()
        .forward(&fwd, &counters, &AtomicBool::new(false))
        .expect("forward");
    assert_eq!(s.tx_packets, s.rx_packets + 1);
    let left = rx_all(&mut vf, 0);
    assert_eq!(left.len(), 1);
    let mac = vf.d().mac().expect("mac");
    let mut want = udp_frame(80, mac, [0x02, 0, 0, 0, 0, 2]);
    if s.rx_packets % 2 == 1 {
        let (d, src) = want.split_at_mut(6);
        d.swap_with_slice(&mut src[..6]);
    }
    assert_eq!(left[0], want, "after {} swaps", s.rx_packets);
}

#[test]
fn rxonly_counts_and_frees_what_arrives() {
    let mut vf = up(DriverConfig::default(), 1500);
    let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(60 + i, i as u8)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 40);
    let counters = FwdCounters::default();
    let stop = AtomicBool::new(false);
    let fwd = FwdConfig {
        mode: FwdMode::RxOnly,
        deadline: Some(Instant::now() + Duration::from_millis(100)),
        ..FwdConfig::default()
    };
    let s = vf.d().forward(&fwd, &counters, &stop).expect("forward");
    assert_eq!(s.rx_packets, 40);
    assert_eq!(s.rx_bytes, (0..40).map(|i| 60 + i).sum::<u64>());
    assert_eq!(s.tx_packets, 0);
    assert_pool_whole(&mut vf, 0);
}

#[test]
fn txonly_sends_the_template_and_stops_on_the_flag() {
    let mut vf = up(DriverConfig::default(), 1500);
    let counters = Arc::new(FwdCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let fwd = FwdConfig {
        mode: FwdMode::TxOnly,
        frame_len: 128,
        // Far away: the flag must end it.
        deadline: Some(Instant::now() + Duration::from_secs(20)),
        ..FwdConfig::default()
    };
    let mut d = vf.driver.take().expect("driver");
    let (c2, s2) = (counters.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        let r = d.forward(&fwd, &c2, &s2);
        (d, r)
    });
    let t0 = Instant::now();
    while counters.snapshot().tx_packets < 1000 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (d, r) = t.join().expect("forward thread");
    vf.driver = Some(d);
    let s = r.expect("forward");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the stop flag was not honoured"
    );
    assert!(s.tx_packets >= 1000);
    assert_eq!(s.tx_bytes, s.tx_packets * 128);
    // Loopback: what was sent came back (and was counted) or is still in the rings.
    let dev = vf.stats.total();
    assert_eq!(dev.tx_bytes, dev.tx_packets * 128);
    assert!(s.rx_packets <= dev.rx_packets);
    assert_pool_whole(&mut vf, 0);
}

#[test]
fn forward_refuses_a_template_larger_than_a_buffer() {
    let mut vf = up(DriverConfig::default(), 1500);
    let fwd = FwdConfig {
        template: Some(vec![0u8; 4096]),
        tx_first: 1,
        ..FwdConfig::default()
    };
    let e = vf
        .d()
        .forward(&fwd, &FwdCounters::default(), &AtomicBool::new(false))
        .expect_err("too big");
    assert!(e.to_string().contains("4096"), "{e}");
}

#[test]
fn a_data_path_attached_again_while_queues_run_continues_where_the_last_stopped() {
    let mut vf = up(DriverConfig::default(), 1500);
    for round in 0..3u8 {
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|i| frame(64 + i, round * 10 + i as u8))
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 5);
        assert_eq!(rx_all(&mut vf, 0), frames, "round {round}");
        vf.handle.emu().detach_provider().expect("detach");
        vf.stats = datapath::attach(&vf.handle, Arc::new(Loopback)).expect("attach again");
    }
    // The new engines neither replayed old descriptors nor skipped new ones.
    let s = vf.stats.total();
    assert_eq!((s.tx_packets, s.tx_errors, s.rx_packets), (0, 0, 0));
    let f = frame(200, 99);
    assert_eq!(vf.d().tx_burst(0, &[&f]).expect("tx"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![f]);
    let s = vf.stats.total();
    assert_eq!((s.tx_packets, s.tx_errors, s.rx_packets), (1, 0, 1));
}
