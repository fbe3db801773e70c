//! Engine tests over a DMA table backed by a memfd: the TX gather, context skip, DESC_DONE and
//! faults; RX spanning, write-back layout, exhaustion and faults.

use std::sync::atomic::Ordering;

use emudev_dma::{DmaTable, SharedMemory};

use super::*;
use crate::spec::desc::{rx_error, tx_cmd, RxDescRead, RxDescWb, TxContextDesc, TxDesc};

const BASE: u64 = 0x10_0000;
const SIZE: u64 = 0x10_0000;
const TX_RING: u64 = BASE;
const RX_RING: u64 = BASE + 0x1000;
const BUFS: u64 = BASE + 0x4000;

fn table() -> (DmaTable, SharedMemory) {
    super::testing::memfd_table("dp-test", BASE, SIZE)
}

fn put_tx(mem: &SharedMemory, i: u64, d: [u8; 16]) {
    mem.write_at(TX_RING - BASE + 16 * i, &d).expect("desc");
}

fn tx_desc(mem: &SharedMemory, i: u64) -> TxDesc {
    let mut b = [0u8; 16];
    mem.read_at(TX_RING - BASE + 16 * i, &mut b).expect("read");
    TxDesc::decode(&b).expect("decode")
}

#[test]
fn tx_gathers_until_eop_skips_context_and_marks_rs_done() {
    let (t, mem) = table();
    mem.write_at(BUFS - BASE, b"hello ").expect("buf");
    mem.write_at(BUFS - BASE + 0x800, b"world").expect("buf");
    put_tx(&mem, 0, TxContextDesc::new(0, 0, 0, 0).encode());
    put_tx(&mem, 1, TxDesc::data(BUFS, 6, 0, 0, 0).encode());
    put_tx(
        &mem,
        2,
        TxDesc::data(BUFS + 0x800, 5, tx_cmd::EOP | tx_cmd::RS, 0, 0).encode(),
    );
    let mut e = TxEngine::new(TX_RING, 64);
    assert!(!e.set_tail(64));
    assert!(e.set_tail(3));
    let mut got = Vec::new();
    let mut tally = Tally::default();
    assert_eq!(
        e.poll(&t, BURST, &mut tally, &mut |f| got.push(f.to_vec())),
        1
    );
    assert_eq!(got, vec![b"hello world".to_vec()]);
    assert_eq!((tally.packets, tally.bytes, tally.errors), (1, 11, 0));
    assert_eq!(e.head(), 3);
    assert!(tx_desc(&mem, 2).is_done());
    assert_eq!(tx_desc(&mem, 2).buf_size(), 5);
    assert!(!tx_desc(&mem, 1).is_done(), "no RS, no write-back");
    // Nothing more to do.
    assert_eq!(
        e.poll(&t, BURST, &mut tally, &mut |_| panic!("no packet")),
        0
    );
}

#[test]
fn tx_buffer_outside_memory_is_an_error_and_the_next_packet_flows() {
    let (t, mem) = table();
    mem.write_at(BUFS - BASE, &[7u8; 60]).expect("buf");
    let cmd = tx_cmd::EOP | tx_cmd::RS;
    put_tx(
        &mem,
        0,
        TxDesc::data(0xDEAD_0000_0000, 60, cmd, 0, 0).encode(),
    );
    put_tx(
        &mem,
        1,
        TxDesc::data(BASE + SIZE - 10, 60, cmd, 0, 0).encode(),
    );
    put_tx(&mem, 2, TxDesc::data(BUFS, 60, cmd, 0, 0).encode());
    let mut e = TxEngine::new(TX_RING, 64);
    e.set_tail(3);
    let mut got = Vec::new();
    let mut tally = Tally::default();
    assert_eq!(
        e.poll(&t, BURST, &mut tally, &mut |f| got.push(f.to_vec())),
        3
    );
    assert_eq!(got, vec![vec![7u8; 60]]);
    assert_eq!((tally.packets, tally.errors), (1, 2));
    assert!((0..3).all(|i| tx_desc(&mem, i).is_done()));
}

#[test]
fn tx_ring_outside_memory_is_counted_and_wrapping_works() {
    let (t, mem) = table();
    let mut bad = TxEngine::new(0x4000_0000, 64);
    bad.set_tail(1);
    let mut tally = Tally::default();
    assert_eq!(bad.poll(&t, BURST, &mut tally, &mut |_| {}), 0);
    assert_eq!(tally.errors, 1);
    // Wrap: head 63 -> 0.
    let mut e = TxEngine::new(TX_RING, 64);
    for i in 0..64u64 {
        put_tx(&mem, i, TxDesc::data(BUFS, 1, tx_cmd::EOP, 0, 0).encode());
    }
    e.set_tail(63);
    let mut n = 0;
    assert_eq!(e.poll(&t, BURST, &mut tally, &mut |_| n += 1), 32);
    assert_eq!(e.poll(&t, 100, &mut tally, &mut |_| n += 1), 31);
    e.set_tail(1);
    assert_eq!(e.poll(&t, 100, &mut tally, &mut |_| n += 1), 2);
    assert_eq!((n, e.head()), (65, 1));
}

fn post_rx(mem: &SharedMemory, n: u64, buf: u64) {
    for i in 0..n {
        let d = RxDescRead {
            pkt_addr: BUFS + i * buf,
            hdr_addr: 0,
        };
        mem.write_at(RX_RING - BASE + 32 * i, &d.encode32())
            .expect("post");
    }
}

fn rx_wb(mem: &SharedMemory, i: u64) -> RxDescWb {
    let mut b = [0u8; 32];
    mem.read_at(RX_RING - BASE + 32 * i, &mut b).expect("read");
    RxDescWb::decode(&b).expect("decode")
}

#[test]
fn rx_writes_frames_spanning_buffers_and_drops_without_descriptors() {
    let (t, mem) = table();
    post_rx(&mem, 64, 1024);
    let mut e = RxEngine::new(RX_RING, 64, 1024, 9728);
    assert!(e.set_tail(3));
    let mut tally = Tally::default();
    let big: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
    {
        let mut b = e.burst(&t, &mut tally);
        assert!(b.deliver(&[0xFF; 64]));
        assert!(b.deliver(&big));
        // One descriptor left: a 1500-byte frame needs two.
        assert!(!b.deliver(&big));
        assert!(!b.deliver(&[]));
        assert_eq!(b.written(), 2);
    }
    assert_eq!(tally.packets, 2);
    assert_eq!(tally.broadcast, 1);
    assert_eq!((tally.drops, tally.errors), (1, 1));
    let w0 = rx_wb(&mem, 0);
    assert!(w0.dd() && w0.eof());
    assert_eq!((w0.pkt_len(), w0.error(), w0.ptype()), (64, 0, RX_PTYPE_L2));
    let (w1, w2) = (rx_wb(&mem, 1), rx_wb(&mem, 2));
    assert!(w1.dd() && !w1.eof() && w2.dd() && w2.eof());
    assert_eq!((w1.pkt_len(), w2.pkt_len()), (1024, 476));
    let mut got = vec![0u8; 1500];
    mem.read_at(BUFS - BASE + 1024, &mut got[..1024])
        .expect("read");
    mem.read_at(BUFS - BASE + 2048, &mut got[1024..])
        .expect("read");
    assert_eq!(got, big);
    assert_eq!(e.available(), 0);
    assert!(!rx_wb(&mem, 3).dd());
}

#[test]
fn rx_buffer_outside_memory_is_written_back_with_an_error() {
    let (t, mem) = table();
    let d = RxDescRead {
        pkt_addr: 0x7000_0000,
        hdr_addr: 0,
    };
    mem.write_at(RX_RING - BASE, &d.encode32()).expect("post");
    let mut e = RxEngine::new(RX_RING, 64, 2048, 9728);
    e.set_tail(63);
    let mut tally = Tally::default();
    assert!(!e.burst(&t, &mut tally).deliver(&[1; 60]));
    let w = rx_wb(&mem, 0);
    assert!(w.dd() && w.eof());
    assert_eq!(w.error(), rx_error::RXE);
    assert_eq!((tally.packets, tally.errors), (0, 1));
    // Too long for max_frame.
    let mut small = RxEngine::new(RX_RING, 64, 2048, 100);
    small.set_tail(10);
    assert!(!small.burst(&t, &mut tally).deliver(&[0; 101]));
    assert_eq!(tally.errors, 2);
}

#[test]
fn tally_classifies_destinations_and_counters_add_up() {
    let mut t = Tally::default();
    t.count(&[0x02, 0, 0, 0, 0, 1, 9]);
    t.count(&[0x01, 0, 0x5e, 0, 0, 1]);
    t.count(&[0xFF; 6]);
    t.count(&[0x02]);
    assert_eq!((t.unicast, t.multicast, t.broadcast), (2, 1, 1));
    assert_eq!((t.packets, t.bytes), (4, 20));
    let c = QueueCounters::default();
    let rx = Tally { drops: 3, ..t };
    c.add(&t, &rx);
    let s = c.snapshot();
    assert_eq!((s.tx_packets, s.rx_packets, s.rx_drops), (4, 4, 3));
    let vsi = VsiStats::default();
    add_vsi(&vsi, &t, &rx);
    let e = vsi.snapshot();
    assert_eq!((e.tx_bytes, e.rx_discards, e.tx_broadcast), (20, 3, 1));
    assert_eq!(vsi.rx_unicast.load(Ordering::Relaxed), 2);
}

#[test]
fn queue_ids_decode_to_pairs() {
    assert_eq!(decode_queue(queue_ids::tx(0)), Some((0, true)));
    assert_eq!(decode_queue(queue_ids::rx(0)), Some((0, false)));
    assert_eq!(decode_queue(queue_ids::rx(15)), Some((15, false)));
    assert_eq!(decode_queue(queue_ids::ATQ), None);
    assert_eq!(decode_queue(queue_ids::ARQ), None);
}

#[test]
fn idle_back_off_spins_then_yields_then_sleeps_longer_up_to_the_cap() {
    let cfg = PollConfig {
        spin_polls: 10,
        yield_polls: 5,
        max_sleep: std::time::Duration::from_micros(100),
        kicked_sleep: std::time::Duration::from_millis(50),
        kicked_spin_polls: 3,
        on_start: None,
    };
    assert_eq!(cfg.sleep_for(1), None);
    assert_eq!(
        cfg.sleep_for(15),
        None,
        "spin and yield phases do not sleep"
    );
    let us = |idle| cfg.sleep_for(idle).map(|d| d.as_micros());
    assert_eq!(us(16), Some(1));
    assert_eq!(us(17), Some(2));
    assert_eq!(us(20), Some(16));
    assert_eq!(us(23), Some(100), "capped");
    // A kicking client: a short spin, then every sleep is the long one.
    let kicked = |idle, originates| {
        cfg.idle_sleep(idle, true, originates)
            .map(|d| d.as_micros())
    };
    assert_eq!(kicked(3, false), None);
    assert_eq!(kicked(4, false), Some(50_000));
    assert_eq!(kicked(23, false), Some(50_000));
    // ...unless the back-end originates frames: nobody kicks for those.
    assert_eq!(kicked(17, true), Some(2));
    assert_eq!(cfg.idle_sleep(17, false, false), cfg.sleep_for(17));
    assert_eq!(us(u32::MAX), Some(100), "never back to spinning while idle");
}

#[test]
fn rx_fits_answers_for_descriptors_only() {
    let (t, mem) = table();
    post_rx(&mem, 8, 1024);
    let mut e = RxEngine::new(RX_RING, 8, 1024, 9728);
    e.set_tail(3);
    let mut tally = Tally::default();
    let mut b = e.burst(&t, &mut tally);
    assert!(b.fits(64));
    assert!(b.fits(3 * 1024), "three buffers, three descriptors");
    assert!(!b.fits(3 * 1024 + 1), "a fourth descriptor is not posted");
    // Frames that can never be received say yes: delivering them counts an error.
    assert!(b.fits(0));
    assert!(b.fits(9729));
    assert!(b.deliver(&[0x02; 2048]));
    assert!(b.fits(1024) && !b.fits(1025));
    assert!(b.deliver(&[0x02; 60]));
    assert!(!b.fits(1));
    assert!(!Discard(&mut Tally::default()).fits(64));
    // A ring outside mapped memory: deliver reports the error, so fits does not hold it back.
    let mut far = RxEngine::new(0x7000_0000, 8, 1024, 9728);
    far.set_tail(3);
    let mut t2 = Tally::default();
    assert!(far.burst(&t, &mut t2).fits(64));
}
