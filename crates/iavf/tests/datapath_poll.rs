//! The polled software data path over a real vfio-user socket: a worker thread polls the
//! queues; the tails are on mmapped doorbell pages the driver stores into (or trapped writes
//! copied there for a client that does not mmap, or plain trapped doorbells). Loopback of
//! 64 B and 1500 B frames, many rounds over the ring's wrap, queue disable and VF reset under
//! traffic, and the worker stopping on detach.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{frame, rx_wait, serve, tx_all, unique_number, Vf};
use emudev_iavf::datapath::{self, Loopback, PollConfig, QueueStats, WorkerStats};
use emudev_iavf::driver::DriverConfig;
use emudev_iavf::IavfConfig;

/// A VF (`pages`: tails on doorbell pages) with a polled loopback data path, a driver brought
/// up, and the doorbell pages mapped by the driver when `map` is set. Returns whether the
/// driver mapped anything too.
fn up(pages: bool, map: bool, queue_pairs: u16) -> (Vf, bool) {
    let device = IavfConfig::new(&format!("emu_iavf_dpp{}", unique_number()))
        .with_queues(queue_pairs)
        .with_doorbell_pages(pages);
    serve(
        "dpp",
        device,
        |h| datapath::attach_polled(h, Arc::new(Loopback), PollConfig::default()),
        &DriverConfig::with_queue_pairs(queue_pairs),
        map,
    )
}

/// Sends every frame (retrying while the TX ring is full) and checks they come back in order.
fn loop_frames(vf: &mut Vf, q: u16, frames: &[Vec<u8>]) {
    tx_all(vf, q, frames);
    assert_eq!(rx_wait(vf, q, frames.len()), frames);
}

/// The counters once they reach `rx_packets` received (a burst's counters are added just after
/// its frames are written back), or after two seconds.
fn stats_at(vf: &Vf, q: u16, rx_packets: u64) -> QueueStats {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let s = vf.stats.queue(q).expect("queue");
        if s.rx_packets >= rx_packets || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn mmapped_doorbells_loop_frames_back_identical() {
    let (mut vf, mapped) = up(true, true, 1);
    assert!(mapped, "the device offers its doorbell pages");
    let frames = vec![frame(64, 1), frame(1500, 2)];
    loop_frames(&mut vf, 0, &frames);
    // 40 rounds of 32 go around the 512-entry rings a few times.
    let burst: Vec<Vec<u8>> = (0..32).map(|i| frame(60 + i * 45, i as u8)).collect();
    for _ in 0..40 {
        loop_frames(&mut vf, 0, &burst);
    }
    let q = stats_at(&vf, 0, 2 + 40 * 32);
    assert_eq!((q.tx_packets, q.rx_packets), (2 + 40 * 32, 2 + 40 * 32));
    assert_eq!((q.tx_errors, q.rx_errors, q.rx_drops), (0, 0, 0));
    // Nothing else arrives.
    assert!(rx_wait(&mut vf, 0, 1).is_empty());
    assert_eq!(vf.d().tx_complete(0).expect("clean"), 0);
    // The tails the driver stored into the page are what the device's registers hold.
    let (tx, rx) = vf.handle.queue_tails(0).expect("tails");
    let pair = vf.d().queue_pairs()[0].clone();
    let len = u32::from(pair.ring_len());
    assert_eq!(tx, (2 + 40 * 32) % len);
    assert_eq!((rx + 1) % len, tx, "every received buffer re-posted");
}

#[test]
fn a_client_that_does_not_mmap_still_works_through_trapped_writes() {
    let (mut vf, mapped) = up(true, false, 2);
    assert!(!mapped);
    for q in 0..2 {
        let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(64 + 100 * i, q as u8)).collect();
        loop_frames(&mut vf, q, &frames);
    }
    let rx = stats_at(&vf, 0, 8).rx_packets + stats_at(&vf, 1, 8).rx_packets;
    assert_eq!(rx, 16);
}

#[test]
fn trapped_doorbells_work_in_poll_mode_and_mapping_finds_nothing() {
    let (mut vf, mapped) = up(false, true, 1);
    assert!(
        !mapped,
        "a device with trapped tails has nothing to mmap in BAR0"
    );
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(64, i)).collect();
    for _ in 0..20 {
        loop_frames(&mut vf, 0, &frames);
    }
    assert_eq!(stats_at(&vf, 0, 640).rx_packets, 640);
}

#[test]
fn queue_disable_and_vf_reset_under_traffic_stop_and_restart() {
    let (mut vf, _) = up(true, true, 1);
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(128, i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // Traffic in flight, then the queues go away.
    vf.d().tx_burst(0, &refs).expect("tx");
    vf.d().disable_queues().expect("disable");
    // Reset and bring the VF up again: traffic flows on the new rings.
    vf.d().reset_vf().expect("reset");
    let frames2 = vec![frame(64, 9), frame(1500, 10)];
    loop_frames(&mut vf, 0, &frames2);
    assert_eq!(vf.d().tx_complete(0).expect("clean"), 0);
}

#[test]
fn the_worker_stops_on_detach() {
    let (mut vf, _) = up(true, true, 1);
    loop_frames(&mut vf, 0, &[frame(64, 1)]);
    let before = stats_at(&vf, 0, 1);
    let provider = vf.handle.emu().detach_provider().expect("detach");
    drop(provider);
    // Nobody polls any more: the frame stays in the TX ring.
    assert_eq!(vf.d().tx_burst(0, &[&frame(64, 2)]).expect("tx"), 1);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx_wait(&mut vf, 0, 1).is_empty());
    assert_eq!(vf.stats.queue(0), Some(before));
    assert_eq!(vf.d().tx_complete(0).expect("clean"), 1, "still in flight");
}

/// Keeps `inflight` distinct frames circulating on queue `q` until `total` came back, checking
/// each returned frame against the one sent in that position (the ring keeps order).
fn circulate(vf: &mut Vf, q: u16, inflight: usize, total: usize) {
    let frames: Vec<Vec<u8>> = (0..inflight)
        .map(|i| frame(60 + (i * 97) % 1400, (i as u8) ^ (q as u8)))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut sent = 0;
    while sent < refs.len() {
        sent += vf.d().tx_burst(q, &refs[sent..]).expect("inject");
    }
    let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| Vec::new()).collect();
    let (mut got, mut next) = (0, 0);
    let end = Instant::now() + Duration::from_secs(120);
    while got < total {
        assert!(
            Instant::now() < end,
            "queue {q}: stalled at {got} of {total}"
        );
        let n = vf.d().rx_burst_into(q, &mut bufs).expect("rx");
        for b in &bufs[..n] {
            assert_eq!(b, &frames[next], "queue {q}: packet {got}");
            next = (next + 1) % inflight;
            got += 1;
        }
        let out: Vec<&[u8]> = bufs[..n].iter().map(Vec::as_slice).collect();
        let mut sent = 0;
        while sent < out.len() {
            sent += vf.d().tx_burst(q, &out[sent..]).expect("tx");
        }
    }
}

#[test]
fn a_million_packets_come_back_identical_on_one_and_on_four_queue_pairs() {
    let (mut vf, _) = up(true, true, 1);
    circulate(&mut vf, 0, 256, 1_000_000);
    let s = stats_at(&vf, 0, 1_000_000);
    assert!(s.rx_packets >= 1_000_000);
    assert_eq!((s.tx_errors, s.rx_errors, s.rx_drops), (0, 0, 0));

    let (mut vf, _) = up(true, true, 4);
    for q in 0..4 {
        circulate(&mut vf, q, 128, 250_000);
    }
    for q in 0..4 {
        stats_at(&vf, q, 250_000);
    }
    let t = vf.stats.total();
    assert!(t.rx_packets >= 1_000_000);
    assert_eq!((t.tx_errors, t.rx_errors, t.rx_drops), (0, 0, 0));
}

/// A VF with kick doorbells (tails on pages plus one eventfd per pair) and a polled loopback
/// data path run by `poll`; the driver maps the pages.
fn up_kicked(queue_pairs: u16, poll: PollConfig) -> Vf {
    let device = IavfConfig::new(&format!("emu_iavf_kick{}", unique_number()))
        .with_queues(queue_pairs)
        .with_doorbell_kicks(true);
    assert!(device.doorbell_pages, "kicks come with the pages");
    let (vf, mapped) = serve(
        "kick",
        device,
        move |h| datapath::attach_polled(h, Arc::new(Loopback), poll),
        &DriverConfig::with_queue_pairs(queue_pairs),
        true,
    );
    assert!(mapped);
    vf
}

/// The worker's counters once `done` holds for them, or after two seconds (a kick is counted
/// when a sleep takes it, which may be just after the frames it woke the worker for).
fn worker_when(vf: &Vf, done: impl Fn(&WorkerStats) -> bool) -> WorkerStats {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let w = vf.stats.worker();
        if done(&w) || Instant::now() >= end {
            return w;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn kick_doorbells_are_offered_as_one_shared_ioeventfd_per_pair() {
    let mut vf = up_kicked(4, PollConfig::default());
    let list = vf
        .d()
        .client_mut()
        .get_region_io_fds(0)
        .expect("GET_REGION_IO_FDS");
    let mut entries: Vec<(u64, u64, u32, u32, u32)> = list
        .iter()
        .map(|(e, _)| (e.offset, e.size, e.kind, e.flags, e.fd_index))
        .collect();
    entries.sort();
    // QTX_TAIL(q) = 4q and QRX_TAIL(q) = 0x2000 + 4q; plain ioeventfds, no data match; the
    // pair's two tails share one fd, sent once.
    let want: Vec<(u64, u64, u32, u32)> = (0..4u64)
        .map(|q| (4 * q, 4, 0, 0))
        .chain((0..4u64).map(|q| (0x2000 + 4 * q, 4, 0, 0)))
        .collect();
    assert_eq!(
        entries
            .iter()
            .map(|&(o, s, k, f, _)| (o, s, k, f))
            .collect::<Vec<_>>(),
        want
    );
    for q in 0..4 {
        assert_eq!(entries[q].4, entries[q + 4].4, "pair {q} shares its fd");
    }
    let mut idx: Vec<u32> = entries.iter().map(|e| e.4).collect();
    idx.sort();
    idx.dedup();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(vf.d().enable_kicks().expect("kicks"), 8);

    // A device without kick doorbells offers none: the driver keeps writing plain tails.
    let (mut plain, _) = up(true, true, 1);
    assert_eq!(plain.d().enable_kicks().expect("no kicks"), 0);
    loop_frames(&mut plain, 0, &[frame(64, 1)]);
    assert_eq!(plain.stats.worker().kicks, 0);
}

#[test]
fn kicks_wake_a_worker_that_sleeps_until_kicked() {
    // No spinning, and once the client has kicked an idle worker sleeps a minute: only the
    // kicks can get these frames through within the two seconds rx_wait allows.
    let poll = PollConfig {
        spin_polls: 0,
        yield_polls: 0,
        max_sleep: Duration::from_secs(60),
        kicked_sleep: Duration::from_secs(60),
        kicked_spin_polls: 0,
        ..PollConfig::default()
    };
    let mut vf = up_kicked(2, poll);
    assert_eq!(vf.d().enable_kicks().expect("kicks"), 4);
    // The first kick ends whatever sleep the idle worker is in and marks the client a kicker.
    loop_frames(&mut vf, 0, &[frame(64, 1)]);
    let first = worker_when(&vf, |w| w.kicks >= 1);
    assert!(first.kicks >= 1, "{first:?}");
    for round in 0..10u8 {
        // Idle long enough to be in the minute-long sleep.
        std::thread::sleep(Duration::from_millis(20));
        for q in 0..2 {
            let frames: Vec<Vec<u8>> = (0..5)
                .map(|i| frame(64 + 300 * i, round ^ q as u8))
                .collect();
            loop_frames(&mut vf, q, &frames);
        }
    }
    // Every round got through although the idle worker sleeps a minute: kicks ended those
    // sleeps (one sleep may take several rounds' kicks when this machine is busy).
    let after = worker_when(&vf, |w| w.kicks > first.kicks);
    assert!(after.kicks > first.kicks, "{first:?} then {after:?}");
    assert_eq!(stats_at(&vf, 0, 51).rx_packets, 51);
    assert_eq!(stats_at(&vf, 1, 50).rx_packets, 50);
    // Detach wakes the sleeper through its own eventfd and the worker is gone.
    drop(vf.handle.emu().detach_provider().expect("detach"));
    let sleeps = vf.stats.worker().sleeps;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        vf.stats.worker().sleeps,
        sleeps,
        "no worker sleeps any more"
    );
}

#[test]
fn a_client_that_never_kicks_is_polled_as_before() {
    // As QEMU does: the pages are mapped (into a guest) and the io fds never asked for.
    let mut vf = up_kicked(1, PollConfig::default());
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(64, i)).collect();
    for _ in 0..5 {
        // Frames sent to a sleeping worker.
        let slept = vf.stats.worker().sleeps;
        assert!(worker_when(&vf, |w| w.sleeps > slept).sleeps > slept);
        loop_frames(&mut vf, 0, &frames);
    }
    assert_eq!(stats_at(&vf, 0, 160).rx_packets, 160);
    // Asleep again after the traffic: a kick, had there been one, would have been counted.
    let slept = vf.stats.worker().sleeps;
    let w = worker_when(&vf, |w| w.sleeps > slept);
    assert!(w.sleeps > slept);
    assert_eq!(w.kicks, 0);
}

#[test]
fn a_client_that_stops_kicking_is_still_served() {
    let mut vf = up_kicked(1, PollConfig::default());
    assert_eq!(vf.d().enable_kicks().expect("kicks"), 2);
    loop_frames(&mut vf, 0, &[frame(64, 1)]);
    std::thread::sleep(Duration::from_millis(20));
    loop_frames(&mut vf, 0, &[frame(64, 2)]);
    assert!(worker_when(&vf, |w| w.kicks >= 1).kicks >= 1);
    // Plain stores from now on: the worker's kicked sleep (100 ms) times out, it finds the
    // work, and goes back to polling on the short schedule.
    vf.d().disable_kicks();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        loop_frames(&mut vf, 0, &[frame(64, 3 + i)]);
    }
    assert_eq!(stats_at(&vf, 0, 7).rx_packets, 7);
}
