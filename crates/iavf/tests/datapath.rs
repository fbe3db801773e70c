//! The software data path over a real vfio-user socket: the client driver's `tx_burst` /
//! `rx_burst` against the emulated VF with the loopback back-end. Byte-identical loopback of
//! 64 B and 1500 B frames, a full burst, gathered and spanning packets, RX ring exhaustion and
//! recovery, GET_STATS, and a TX descriptor outside mapped memory.

use std::sync::Arc;

mod common;

use common::{frame, rx_all, serve, unique_number, Vf};
use emudev_iavf::datapath::{self, Loopback, QueueStats};
use emudev_iavf::driver::DriverConfig;
use emudev_iavf::spec::desc::{tx_cmd, TxContextDesc, TxDesc};
use emudev_iavf::IavfConfig;

/// A VF with an inline loopback data path and a driver brought up with `cfg`.
fn up(cfg: DriverConfig) -> Vf {
    let name = format!("emu_iavf_dp{}", unique_number());
    let device = IavfConfig::new(&name).with_queues(cfg.queue_pairs);
    serve(
        "dp",
        device,
        |h| datapath::attach(h, Arc::new(Loopback)),
        &cfg,
        false,
    )
    .0
}

#[test]
fn frames_of_64_and_1500_bytes_come_back_identical() {
    let mut vf = up(DriverConfig::default());
    let small = frame(64, 1);
    let big = frame(1500, 2);
    assert_eq!(vf.d().tx_burst(0, &[&small, &big]).expect("tx"), 2);
    let got = rx_all(&mut vf, 0);
    assert_eq!(got, vec![small.clone(), big.clone()]);
    assert_eq!(
        vf.d().tx_complete(0).expect("clean"),
        0,
        "all TX descriptors done"
    );
    let q = vf.stats.queue(0).expect("queue 0");
    assert_eq!(
        q,
        QueueStats {
            tx_packets: 2,
            tx_bytes: 1564,
            rx_packets: 2,
            rx_bytes: 1564,
            ..Default::default()
        }
    );
    // Nothing else arrives.
    assert!(rx_all(&mut vf, 0).is_empty());
}

#[test]
fn a_burst_of_32_and_stats_match_get_stats() {
    let mut vf = up(DriverConfig::default());
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(60 + i * 40, i as u8)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    for round in 0..4 {
        assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 32, "round {round}");
        let got = rx_all(&mut vf, 0);
        assert_eq!(got, frames, "round {round}");
    }
    let mut bcast = frame(64, 9);
    bcast[..6].fill(0xFF);
    let mut mcast = frame(64, 10);
    mcast[0] = 0x01;
    assert_eq!(vf.d().tx_burst(0, &[&bcast, &mcast]).expect("tx"), 2);
    assert_eq!(rx_all(&mut vf, 0).len(), 2);
    let s = vf.d().get_stats().expect("GET_STATS");
    assert_eq!(s.tx_bytes, 4 * bytes + 128);
    assert_eq!(s.rx_bytes, 4 * bytes + 128);
    assert_eq!((s.tx_unicast, s.tx_multicast, s.tx_broadcast), (128, 1, 1));
    assert_eq!((s.rx_unicast, s.rx_multicast, s.rx_broadcast), (128, 1, 1));
    assert_eq!((s.rx_discards, s.tx_errors, s.tx_discards), (0, 0, 0));
    let t = vf.stats.total();
    assert_eq!((t.tx_packets, t.rx_packets), (130, 130));
    assert_eq!(vf.handle.vsi_stats().snapshot(), s);
}

#[test]
fn gathered_tx_and_rx_spanning_buffers() {
    let cfg = DriverConfig {
        rx_buffer_size: 1024,
        ..Default::default()
    };
    let mut vf = up(cfg);
    // Three segments, three TX descriptors.
    let whole = frame(1400, 3);
    let (a, rest) = whole.split_at(14);
    let (b, c) = rest.split_at(600);
    assert_eq!(vf.d().tx_burst_segments(0, &[&[a, b, c]]).expect("tx"), 1);
    // 1500 bytes: two 1024-byte TX buffers and two RX descriptors.
    let big = frame(1500, 4);
    assert_eq!(vf.d().tx_burst(0, &[&big]).expect("tx"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![whole, big]);
    assert_eq!(vf.stats.queue(0).map(|q| q.rx_packets), Some(2));
    // A context descriptor before a data descriptor is skipped.
    let pair = vf.d().queue_pairs()[0].clone();
    let payload = frame(100, 5);
    let (off, iova) = pair.tx_buffers().element(200, 1024).expect("buffer 200");
    pair.memory()
        .memory()
        .write_at(off, &payload)
        .expect("fill");
    let ctx = TxContextDesc::new(0, 0, 0, 0).encode();
    let ctx = TxDesc::decode(&ctx).expect("as raw");
    let data = TxDesc::data(iova, 100, tx_cmd::EOP, 0, 0);
    assert!(vf.d().tx_post_raw(0, &[ctx, data]).expect("raw"));
    assert_eq!(rx_all(&mut vf, 0), vec![payload]);
    assert_eq!(vf.d().tx_complete(0).expect("clean"), 0);
}

#[test]
fn rx_exhaustion_counts_drops_and_recovers() {
    let cfg = DriverConfig {
        ring_len: 64,
        ..Default::default()
    };
    let mut vf = up(cfg);
    let frames: Vec<Vec<u8>> = (0..32).map(|i| frame(64, i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // 63 RX descriptors posted: 96 frames sent without receiving leave 33 without one.
    for _ in 0..3 {
        assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 32);
        vf.d().tx_complete(0).expect("clean");
    }
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_packets, q.rx_packets, q.rx_drops), (96, 63, 33));
    assert_eq!(vf.d().get_stats().expect("stats").rx_discards, 33);
    let got = rx_all(&mut vf, 0);
    assert_eq!(got.len(), 63);
    assert_eq!(&got[..32], &frames[..]);
    assert_eq!(&got[32..], &frames[..31]);
    // Buffers re-posted: traffic flows again, over the ring's wrap.
    for _ in 0..4 {
        assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 32);
        assert_eq!(rx_all(&mut vf, 0), frames);
    }
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.rx_packets, q.rx_drops, q.rx_errors), (63 + 128, 33, 0));
}

#[test]
fn tx_descriptor_outside_mapped_memory_is_an_error_and_traffic_continues() {
    let mut vf = up(DriverConfig::default());
    let bad = TxDesc::data(0x7FFF_0000_0000, 64, tx_cmd::EOP, 0, 0);
    assert!(vf.d().tx_post_raw(0, &[bad]).expect("raw"));
    // A buffer that starts mapped and runs past the end of the mapping.
    let pair = vf.d().queue_pairs()[0].clone();
    let end = pair.memory().iova() + pair.memory().len();
    let straddle = TxDesc::data(end - 16, 64, tx_cmd::EOP, 0, 0);
    assert!(vf.d().tx_post_raw(0, &[straddle]).expect("raw"));
    assert!(rx_all(&mut vf, 0).is_empty());
    assert_eq!(
        vf.d().tx_complete(0).expect("clean"),
        0,
        "bad descriptors still completed"
    );
    let f = frame(64, 7);
    assert_eq!(vf.d().tx_burst(0, &[&f]).expect("tx"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![f]);
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_errors, q.tx_packets, q.rx_packets), (2, 1, 1));
    assert_eq!(vf.d().get_stats().expect("stats").tx_errors, 2);
    // The device is fine: its admin queue still answers and nothing faulted there.
    assert_eq!(vf.handle.stats().aq_errors, 0);
}

#[test]
fn queue_interrupts_follow_intena_and_queues_are_independent() {
    let cfg = DriverConfig {
        queue_pairs: 2,
        queue_interrupts: true,
        ..DriverConfig::with_queue_pairs(2)
    };
    let mut vf = up(cfg);
    let before = vf.handle.stats().irqs_raised;
    let a = frame(64, 1);
    let b = frame(128, 2);
    assert_eq!(vf.d().tx_burst(1, &[&b]).expect("tx q1"), 1);
    assert_eq!(
        vf.handle.stats().irqs_raised,
        before + 1,
        "one vector raise per burst"
    );
    assert_eq!(vf.d().tx_burst(0, &[&a]).expect("tx q0"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![a]);
    assert_eq!(rx_all(&mut vf, 1), vec![b]);
    assert_eq!(vf.stats.queue(1).map(|q| q.rx_bytes), Some(128));
    assert!(vf.d().tx_burst(2, &[&[1u8; 60][..]]).is_err(), "no queue 2");

    // Poll mode (INTENA clear): the data path raises nothing.
    let mut poll = up(DriverConfig::default());
    let before = poll.handle.stats().irqs_raised;
    assert_eq!(poll.d().tx_burst(0, &[&frame(64, 3)]).expect("tx"), 1);
    assert_eq!(rx_all(&mut poll, 0).len(), 1);
    assert_eq!(poll.handle.stats().irqs_raised, before);
}

#[test]
fn rx_burst_into_reuses_the_callers_buffers() {
    let mut vf = up(DriverConfig::default());
    let frames = [frame(64, 1), frame(1500, 2), frame(200, 3)];
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(vf.d().tx_burst(0, &refs).expect("tx"), 3);
    let mut bufs = vec![vec![0xEE; 4000], Vec::new()];
    let cap = bufs[0].capacity();
    assert_eq!(vf.d().rx_burst_into(0, &mut bufs).expect("rx"), 2);
    assert_eq!(bufs, vec![frames[0].clone(), frames[1].clone()]);
    assert_eq!(bufs[0].capacity(), cap, "no new allocation");
    // The third: only bufs[0] changes.
    assert_eq!(vf.d().rx_burst_into(0, &mut bufs).expect("rx"), 1);
    assert_eq!(bufs[0], frames[2]);
    assert_eq!(bufs[1], frames[1]);
    assert_eq!(vf.d().rx_burst_into(0, &mut bufs).expect("rx"), 0);
    assert_eq!(vf.d().rx_burst_into(0, &mut []).expect("rx"), 0);
}
