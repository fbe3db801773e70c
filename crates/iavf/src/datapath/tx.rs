//! The TX ring engine: consumes the descriptors the driver placed in `[head, QTX_TAIL)`,
//! gathers each packet's data descriptors up to EOP into one frame (a copy: nothing refers to
//! guest memory afterwards), applies the offloads the packet asks for, and writes DESC_DONE
//! back into descriptors that asked for it (RS).
//!
//! Offloads ([`super::TxOffloader`]): the CMD (IIPT, L4T) and OFFSET (MACLEN, IPLEN, L4LEN)
//! of a packet's first data descriptor ask for the IPv4 header checksum and the TCP, UDP or
//! SCTP checksum; a context descriptor with CMD_TSO before a packet's data descriptors asks for
//! TCP segmentation (TSO_LEN, MSS) of that packet only (the next packet to start: a context
//! descriptor inside a packet applies to the one after it). Checksums are computed on the
//! gathered copy; a TSO packet goes out as one frame per segment, each counted as a packet of
//! its own (hardware counts wire packets), while [`TxEngine::poll`]'s budget and return value
//! count ring packets. A request that cannot be applied drops the packet as a TX error. Not
//! applied: tunnel offloads, IPsec, TSYN, L2 tag insertion (see [`super::TxOffloader`]'s
//! module); RX reports no checksum status.
//!
//! Frames: at most [`MAX_TX_FRAME`] bytes without TSO. A TSO packet may be as long as its
//! headers and TSO_LEN say (up to [`MAX_TSO_FRAME`](super::MAX_TSO_FRAME)); the gather
//! buffer, allocated once, grows the first time a TSO packet needs more and keeps its size.
//! A packet without offload bits costs a flag test per descriptor and one test of its request
//! at EOP, and allocates nothing.

use std::sync::atomic::Ordering;

use emudev_dma::{DmaProt, DmaTable, Iova};

use super::mem::BufCache;
use super::offload::{TsoRequest, TxOffload, TxOffloader};
use super::ring::RingPos;
use super::Tally;
use crate::spec::desc::{dtype, tx_cmd, TxContextDesc, TxDesc, TX_DESC_SIZE};

/// Descriptors loaded ahead at the start of a poll.
const PRELOAD: usize = 32;

/// Largest frame the engine gathers for a packet without TSO (longer ones are errors).
pub const MAX_TX_FRAME: usize = 16 * 1024;

/// One TX queue's engine state. Owned by whoever polls the queue; no locks.
pub struct TxEngine {
    ring: u64,
    pos: RingPos,
    /// The packet being gathered: `frame[..frame_len]`. Allocated and zeroed once
    /// ([`MAX_TX_FRAME`] bytes), grown only for a TSO packet that needs more, never shrunk, so
    /// gathering never clears memory it is about to overwrite.
    frame: Vec<u8>,
    frame_len: usize,
    /// Most bytes the packet being gathered may have.
    limit: usize,
    /// The packet being gathered already failed (bad buffer, too long, bad descriptor).
    bad: bool,
    /// The packet being gathered has had its first data descriptor (its request is known).
    started: bool,
    /// What the packet being gathered asks for.
    offload: TxOffload,
    /// A TSO request from a context descriptor, for the next packet to start.
    next_tso: Option<TsoRequest>,
    offloader: TxOffloader,
}

impl std::fmt::Debug for TxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxEngine")
            .field("ring", &self.ring)
            .field("pos", &self.pos)
            .field("frame_size", &self.frame.len())
            .field("frame_len", &self.frame_len)
            .field("limit", &self.limit)
            .field("bad", &self.bad)
            .field("started", &self.started)
            .field("offload", &self.offload)
            .field("next_tso", &self.next_tso)
            .finish_non_exhaustive()
    }
}

impl TxEngine {
    /// An engine for the ring of `len` descriptors at IOVA `ring`, head and tail 0.
    pub fn new(ring: u64, len: u32) -> Self {
        TxEngine {
            ring,
            pos: RingPos::new(len),
            frame: vec![0u8; MAX_TX_FRAME],
            frame_len: 0,
            limit: MAX_TX_FRAME,
            bad: false,
            started: false,
            offload: TxOffload::default(),
            next_tso: None,
            offloader: TxOffloader::new(),
        }
    }

    /// The next descriptor the engine will read.
    pub fn head(&self) -> u32 {
        self.pos.head
    }

    /// `QTX_TAIL` as last accepted.
    pub fn tail(&self) -> u32 {
        self.pos.tail
    }

    /// Descriptors waiting between head and tail.
    pub fn pending(&self) -> u32 {
        self.pos.between()
    }

    /// Moves the head (a data path taking over a running queue); refused (false) beyond the
    /// ring.
    pub fn set_head(&mut self, head: u32) -> bool {
        self.pos.set_head(head)
    }

    /// A new `QTX_TAIL`; refused (false, nothing changes) if it is beyond the ring.
    pub fn set_tail(&mut self, tail: u32) -> bool {
        self.pos.set_tail(tail)
    }

    /// Processes descriptors until the tail, `budget` packets, or one pass over the ring.
    /// Every complete good packet goes to `sink` with its offloads applied (a TSO packet as
    /// its segments, one call each); counts go to `tally` (packets, bytes and the destination
    /// kind of the frames handed to `sink`, errors for dropped packets and ring faults).
    /// Returns the number of ring packets completed (good or dropped; a TSO packet is one).
    pub fn poll(
        &mut self,
        dma: &DmaTable,
        budget: usize,
        tally: &mut Tally,
        sink: &mut dyn FnMut(&[u8]),
    ) -> usize {
        if self.pos.head == self.pos.tail || self.pos.len == 0 {
            return 0;
        }
        let bytes = u64::from(self.pos.len) * TX_DESC_SIZE as u64;
        let Ok(ring) = dma.window(Iova(self.ring), bytes, DmaProt::RW) else {
            tally.errors += 1;
            log::debug!("iavf tx: ring at {:#x} is not accessible", self.ring);
            return 0;
        };
        let mut bufs = BufCache::new(dma, DmaProt::READ);
        // The first descriptors are loaded back to back before any is processed: they were
        // written by the driver's CPU, and independent loads let their cache misses overlap
        // instead of stalling once per descriptor.
        let mut pre = [(0u64, 0u64); PRELOAD];
        let ahead = (self.pending() as usize).min(PRELOAD);
        for (k, slot) in pre.iter_mut().take(ahead).enumerate() {
            let off = u64::from(self.pos.wrap(self.pos.head + k as u32)) * TX_DESC_SIZE as u64;
            match (
                ring.load_u64(off, Ordering::Acquire),
                ring.load_u64(off + 8, Ordering::Acquire),
            ) {
                (Ok(q0), Ok(q1)) => *slot = (q0, q1),
                _ => {
                    tally.errors += 1;
                    return 0;
                }
            }
        }
        let mut packets = 0;
        let mut descs = 0;
        while self.pos.head != self.pos.tail && packets < budget && descs < self.pos.len {
            let off = u64::from(self.pos.head) * TX_DESC_SIZE as u64;
            let loaded = match pre.get(descs as usize).filter(|_| (descs as usize) < ahead) {
                Some(&(q0, q1)) => Ok((q0, q1)),
                None => ring
                    .load_u64(off, Ordering::Acquire)
                    .and_then(|q0| Ok((q0, ring.load_u64(off + 8, Ordering::Acquire)?))),
            };
            let Ok((q0, q1)) = loaded else {
                tally.errors += 1;
                return packets;
            };
            let d = TxDesc {
                buffer_addr: u64::from_le(q0),
                cmd_type_offset_bsz: u64::from_le(q1),
            };
            match d.dtype() {
                dtype::DATA => {
                    if !self.started {
                        self.start(&d);
                    }
                    self.gather(&mut bufs, &d);
                    if d.cmd() & tx_cmd::RS != 0 {
                        // The buffer is copied: the driver may reuse it.
                        let done = d.done_qword1().to_le();
                        if ring.store_u64(off + 8, done, Ordering::Release).is_err() {
                            tally.errors += 1;
                        }
                    }
                    if d.cmd() & tx_cmd::EOP != 0 {
                        self.finish(tally, sink);
                        packets += 1;
                    }
                }
                // Only TSO is taken from a context descriptor; it is for the next packet.
                dtype::CONTEXT => {
                    self.next_tso = TsoRequest::from_context(&TxContextDesc::from_raw(&d));
                }
                other => {
                    log::debug!("iavf tx: descriptor type {other:#x} at {}", self.pos.head);
                    self.bad = true;
                }
            }
            self.pos.head = self.pos.next(self.pos.head);
            descs += 1;
        }
        packets
    }

    /// A packet's first data descriptor: its request, and room for it if it is a TSO packet.
    fn start(&mut self, d: &TxDesc) {
        self.started = true;
        self.offload = TxOffload::new(d.cmd(), d.offset(), self.next_tso.take());
        if let Some(len) = self.offload.tso_frame_len() {
            self.limit = len;
            if self.frame.len() < len {
                // At most MAX_TSO_FRAME; the buffer keeps this size for later packets.
                self.frame.resize(len, 0);
            }
        }
    }

    /// Appends a data descriptor's buffer to the frame, or marks the frame bad.
    fn gather(&mut self, bufs: &mut BufCache, d: &TxDesc) {
        let n = usize::from(d.buf_size());
        if self.bad || n == 0 {
            return;
        }
        let start = self.frame_len;
        let end = start + n;
        let Some(dst) = self.frame.get_mut(start..end).filter(|_| end <= self.limit) else {
            self.bad = true;
            return;
        };
        if bufs.read(d.buffer_addr, dst).is_err() {
            log::debug!(
                "iavf tx: buffer {:#x}+{n:#x} outside mapped memory",
                d.buffer_addr
            );
            self.bad = true;
            return;
        }
        self.frame_len = end;
    }

    /// EOP: the packet goes to `sink` (as it is, or through its offloads) or is counted as an
    /// error; the next packet starts from scratch.
    fn finish(&mut self, tally: &mut Tally, sink: &mut dyn FnMut(&[u8])) {
        let frame = self.frame.get_mut(..self.frame_len).unwrap_or_default();
        if self.bad {
            tally.errors += 1;
        } else if !self.offload.is_active() {
            tally.count(frame);
            sink(frame);
        } else {
            let sent = self.offloader.apply(frame, &self.offload, &mut |f| {
                tally.count(f);
                tally.offloaded += 1;
                sink(f);
            });
            match sent {
                Ok(_) if self.offload.tso.is_some() => tally.tso += 1,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("iavf tx: offload request refused, packet dropped: {e}");
                    tally.errors += 1;
                }
            }
        }
        self.frame_len = 0;
        self.limit = MAX_TX_FRAME;
        self.bad = false;
        self.started = false;
    }
}

#[cfg(test)]
mod tests {
    use emudev_dma::SharedMemory;

    use super::super::offload::test_frames::*;
    use super::super::BURST;
    use super::*;
    use crate::spec::desc::{tx_ctx, tx_offset};

    const BASE: u64 = 0x10_0000;
    const SIZE: u64 = 0x10_0000;
    const RING: u64 = BASE;
    const BUFS: u64 = BASE + 0x1000;

    const V4_TCP: u16 = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_TCP;
    const V4_UDP: u16 = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_UDP;

    fn table() -> (DmaTable, SharedMemory) {
        super::super::testing::memfd_table("tx-offload-test", BASE, SIZE)
    }

    /// Lays descriptors into the ring from slot `next` and the bytes they point at into the
    /// buffer area from `buf`; [`Ring::tail`] is the tail to set afterwards.
    struct Ring<'m> {
        mem: &'m SharedMemory,
        next: u64,
        buf: u64,
    }

    impl<'m> Ring<'m> {
        fn new(mem: &'m SharedMemory) -> Self {
            Ring {
                mem,
                next: 0,
                buf: BUFS,
            }
        }

        fn put(&mut self, d: TxDesc) {
            self.mem
                .write_at(RING - BASE + 16 * self.next, &d.encode())
                .expect("desc");
            self.next += 1;
        }

        fn context(&mut self, len: u32, mss: u16) {
            self.put(TxContextDesc::new(tx_ctx::CMD_TSO, len, mss, 0).to_raw());
        }

        /// A packet as data descriptors over `pieces` (cmd/offset on each, EOP|RS on the
        /// last, as Linux posts them).
        fn packet(&mut self, data: &[u8], pieces: &[usize], cmd: u16, offset: u32) {
            let mut at = 0;
            for (k, &n) in pieces.iter().enumerate() {
                self.mem
                    .write_at(self.buf - BASE, &data[at..at + n])
                    .expect("buf");
                let eop = if k + 1 == pieces.len() {
                    tx_cmd::EOP | tx_cmd::RS
                } else {
                    0
                };
                self.put(TxDesc::data(self.buf, n as u16, cmd | eop, offset, 0));
                self.buf += (n as u64).next_multiple_of(64);
                at += n;
            }
            assert_eq!(at, data.len(), "pieces cover the packet");
        }

        fn tail(&self) -> u32 {
            self.next as u32
        }
    }

    fn run(e: &mut TxEngine, t: &DmaTable, tail: u32) -> (usize, Tally, Vec<Vec<u8>>) {
        assert!(e.set_tail(tail));
        let mut tally = Tally::default();
        let mut out = Vec::new();
        let n = e.poll(t, BURST, &mut tally, &mut |f| out.push(f.to_vec()));
        (n, tally, out)
    }

    /// A TSO super-frame: IPv4 (total length and checksum 0) + TCP with options + `body`.
    fn tso_frame(body: &[u8], flags: u8) -> Vec<u8> {
        let mut f = ipv4(6, &tcp(1_000_000, flags, body));
        f[16..18].fill(0);
        f[24..26].fill(0);
        f
    }

    fn check_segments(segs: &[Vec<u8>], body: &[u8], mss: usize) {
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(internet_checksum(&s[MAC..34]), 0, "IPv4 checksum {i}");
            assert!(l4_ok(s, MAC, 34, s.len(), false, 6), "TCP checksum {i}");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq as usize, 1_000_000 + i * mss, "sequence {i}");
            assert_eq!(
                usize::from(u16::from_be_bytes([s[16], s[17]])),
                s.len() - MAC
            );
            joined.extend_from_slice(&s[66..]);
        }
        assert_eq!(joined, body);
    }

    #[test]
    fn a_tso_packet_over_three_buffers_goes_out_as_counted_segments() {
        let (t, mem) = table();
        let body = payload(20_000, 1);
        let f = tso_frame(&body, 0x18);
        let off = tx_offset::encode(14, 20, 32);
        let mut r = Ring::new(&mem);
        r.context(20_000, 1448);
        r.packet(&f, &[66, 10_000, 10_000], V4_TCP, off);
        let mut e = TxEngine::new(RING, 64);
        let (n, tally, segs) = run(&mut e, &t, r.tail());
        assert_eq!(n, 1, "one ring packet");
        assert_eq!(segs.len(), 14, "20000 / 1448 rounded up");
        check_segments(&segs, &body, 1448);
        let bytes: usize = segs.iter().map(Vec::len).sum();
        assert_eq!((tally.packets, tally.errors), (14, 0));
        assert_eq!(tally.bytes, bytes as u64);
        assert_eq!(tally.unicast, 14);
        assert!(e.frame.len() >= f.len(), "the gather buffer grew");
        let mut last = [0u8; 16];
        mem.read_at(RING - BASE + 16 * 3, &mut last).expect("read");
        assert!(TxDesc::decode(&last).expect("decode").is_done());
        // The next packet, without a context descriptor, is a plain one again: its limit is
        // MAX_TX_FRAME although the buffer is larger now.
        let plain = payload(MAX_TX_FRAME + 1, 2);
        let mut r2 = Ring::new(&mem);
        r2.next = u64::from(r.tail());
        r2.buf = BUFS + 0x2_0000;
        r2.packet(&plain, &[10_000, MAX_TX_FRAME + 1 - 10_000], 0, 0);
        let small = payload(64, 3);
        r2.packet(&small, &[64], 0, 0);
        let (n, tally, out) = run(&mut e, &t, r2.tail());
        assert_eq!(n, 2);
        assert_eq!((tally.packets, tally.errors), (1, 1));
        assert_eq!(out, vec![small]);
    }

    #[test]
    fn a_context_descriptor_is_for_the_next_packet_only() {
        let (t, mem) = table();
        let off = tx_offset::encode(14, 20, 32);
        let body = payload(3000, 4);
        let f = tso_frame(&body, 0x10);
        let mut r = Ring::new(&mem);
        r.context(3000, 1000);
        r.packet(&f, &[f.len()], V4_TCP, off);
        // Same request bits, no context: a checksum-only packet, one frame.
        let mut one = ipv4(6, &tcp(5, 0x18, &payload(100, 5)));
        r.packet(&one.clone(), &[one.len()], V4_TCP, off);
        // A context descriptor in the middle of a packet: for the packet after it.
        let two = ipv4(6, &tcp(6, 0x18, &payload(100, 6)));
        r.put(TxDesc::data(BUFS + 0x8000, 34, V4_TCP, off, 0));
        mem.write_at(BUFS + 0x8000 - BASE, &two[..34]).expect("buf");
        r.context(2000, 1000);
        mem.write_at(BUFS + 0x9000 - BASE, &two[34..]).expect("buf");
        r.put(TxDesc::data(
            BUFS + 0x9000,
            (two.len() - 34) as u16,
            V4_TCP | tx_cmd::EOP,
            off,
            0,
        ));
        let body3 = payload(2000, 7);
        let three = tso_frame(&body3, 0x10);
        r.packet(&three, &[three.len()], V4_TCP, off);
        let mut e = TxEngine::new(RING, 64);
        let (n, tally, out) = run(&mut e, &t, r.tail());
        assert_eq!(n, 4);
        assert_eq!((tally.packets, tally.errors), (3 + 1 + 1 + 2, 0));
        check_segments(&out[..3], &body, 1000);
        // The checksum-only packets: same bytes but for the two checksums.
        assert!(l4_ok(&out[3], MAC, 34, out[3].len(), false, 6));
        one[24..26].copy_from_slice(&out[3][24..26]);
        one[50..52].copy_from_slice(&out[3][50..52]);
        assert_eq!(out[3], one);
        assert_eq!(out[4].len(), two.len());
        assert!(l4_ok(&out[4], MAC, 34, out[4].len(), false, 6));
        check_segments(&out[5..], &body3, 1000);
    }

    #[test]
    fn checksum_requests_are_applied_and_plain_packets_untouched() {
        let (t, mem) = table();
        let mut udp_pkt = ipv4(17, &udp(&payload(200, 8)));
        seed_partial(&mut udp_pkt, MAC, 34, false, 17, 6);
        let plain = ipv4(17, &udp(&payload(200, 8)));
        let mut r = Ring::new(&mem);
        r.packet(
            &udp_pkt,
            &[14, 20, 208],
            V4_UDP,
            tx_offset::encode(14, 20, 8),
        );
        // IIPT alone asks for nothing: the frame goes out as it is, garbage checksum and all.
        r.packet(&plain, &[plain.len()], tx_cmd::IIPT_IPV4, 0);
        let mut e = TxEngine::new(RING, 64);
        let (n, tally, out) = run(&mut e, &t, r.tail());
        assert_eq!((n, tally.packets, tally.errors), (2, 2, 0));
        assert_eq!(internet_checksum(&out[0][MAC..34]), 0);
        assert!(l4_ok(&out[0], MAC, 34, out[0].len(), false, 17));
        assert_eq!(out[1], plain);
        assert_eq!(
            e.frame.len(),
            MAX_TX_FRAME,
            "no TSO: the buffer kept its size"
        );
    }

    #[test]
    fn refused_requests_are_errors_and_the_queue_goes_on() {
        let (t, mem) = table();
        let f = ipv4(17, &udp(&payload(20, 9)));
        let body = payload(3000, 10);
        let tso = tso_frame(&body, 0x10);
        let off = tx_offset::encode(14, 20, 32);
        let mut r = Ring::new(&mem);
        // MACLEN past the frame.
        r.packet(&f, &[f.len()], V4_UDP, tx_offset::encode(200, 20, 8));
        // TSO_LEN one short of the payload: the packet is longer than its limit.
        r.context(2999, 1000);
        r.packet(&tso, &[1000, tso.len() - 1000], V4_TCP, off);
        // TSO_LEN one more than the payload: too short.
        r.context(3001, 1000);
        r.packet(&tso, &[tso.len()], V4_TCP, off);
        // MSS 0.
        r.context(3000, 0);
        r.packet(&tso, &[tso.len()], V4_TCP, off);
        // UDP segmentation.
        r.context(3000, 1000);
        r.packet(&tso, &[tso.len()], V4_UDP, off);
        // Then a good one.
        r.packet(&f, &[f.len()], V4_UDP, tx_offset::encode(14, 20, 8));
        let mut e = TxEngine::new(RING, 64);
        let (n, tally, out) = run(&mut e, &t, r.tail());
        assert_eq!(n, 6);
        assert_eq!((tally.packets, tally.errors), (1, 5));
        assert_eq!(out.len(), 1);
        assert!(l4_ok(&out[0], MAC, 34, out[0].len(), false, 17));
        // Every RS descriptor was completed, refused packets included.
        for i in 0..u64::from(r.tail()) {
            let mut b = [0u8; 16];
            mem.read_at(RING - BASE + 16 * i, &mut b).expect("read");
            let d = TxDesc::decode(&b).expect("decode");
            if d.dtype() != dtype::CONTEXT && d.cmd() & tx_cmd::EOP != 0 {
                assert!(d.is_done(), "descriptor {i}");
            }
        }
    }
}
