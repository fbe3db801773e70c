//! The driver's data path: [`IavfDriver::tx_burst`] and [`IavfDriver::rx_burst`] on a queue
//! pair's rings and buffers in the driver's DMA memory.
//!
//! Buffers come from a per-pair pool of `2 * ring_len` buffers (the pair's RX and TX areas):
//! each RX descriptor holds one, each TX descriptor in flight holds one until the device marks
//! its packet done, and the rest are free.
//!
//! - TX: a packet is copied into pool buffers, as many descriptors as it needs (a segment larger
//!   than a buffer is split); its last descriptor carries `EOP|RS` (as Linux sets them).
//!   `QTX_TAIL` is written once per burst. Completed descriptors are reclaimed (and their
//!   buffers freed) when the device has written DESC_DONE into a packet's last descriptor;
//!   every burst reclaims first.
//! - RX: a packet is taken once every descriptor of its chain has DD (read with acquire
//!   ordering) and the last has EOF; its bytes are copied out, the descriptors re-posted in read
//!   format, and `QRX_TAIL` is written once per burst to the descriptor before the next one to
//!   look at (one slot always stays empty). Packets written back with an error bit are dropped
//!   and counted ([`QueuePair::rx_errors`]).
//! - Zero copy ([`IavfDriver::rx_burst_segs`], [`IavfDriver::tx_burst_segs`]): received packets
//!   are handed out as [`Seg`]s (pool buffer, length, end of packet) and their descriptors
//!   re-posted with free pool buffers; segments go back out on TX as they are, so forwarding
//!   (`driver::fwd`) touches no packet bytes.
//!
//! Tail writes are trapped REGION_WRITEs that wait for the server's reply, so with a
//! synchronous (inline) data path the packets a TX burst loops back are in the RX ring when
//! `tx_burst` returns. After [`IavfDriver::map_doorbells`] on a device with doorbell pages, a
//! tail write is a plain store into the mmapped page (posted: no message, no wait), preceded by
//! a release fence so the descriptors are visible first; the device's worker polls it. After
//! [`IavfDriver::enable_kicks`] on a device with kick doorbells, each such store is followed by
//! a signal on the register's eventfd, so an idle worker sleeps until kicked.

use std::sync::atomic::Ordering;

use emudev_dma::SharedMemory;
use emudev_vfio_user::wire::IO_FD_TYPE_IOEVENTFD;

use super::queues::{Area, NO_BUF};
use super::{pci, DriverError, IavfDriver, QueuePair};
use crate::spec::desc::{
    dtype, rx_status, tx_cmd, RxDescRead, RxDescWb, TxDesc, RXD_QW1_LENGTH_PBUF_MASK,
    RX_DESC32_SIZE, TXD_QW1_DTYPE_MASK, TX_DESC_SIZE,
};

/// Largest buffer size a TX descriptor can carry (14 bits).
const TX_MAX_BUF: usize = 0x3FFF;

impl IavfDriver {
    /// mmaps the device's doorbell pages (the sparse-mmap areas of BAR0) if it offers them;
    /// from then on `QTX_TAIL`/`QRX_TAIL` writes are stores into shared memory. Returns whether
    /// anything was mapped (false: the device traps its tails, writes stay messages).
    pub fn map_doorbells(&mut self) -> Result<bool, DriverError> {
        Ok(self.client.map_region(pci::BAR0_REGION)? > 0)
    }

    /// Takes BAR0's ioeventfds (`GET_REGION_IO_FDS`) as kick eventfds: from then on every tail
    /// write is followed by a signal on the register's eventfd, which wakes an idle data-path
    /// worker at once instead of at its next poll. Meant for a device with kick doorbells
    /// ([`crate::IavfConfig::doorbell_kicks`]) whose pages were mapped with
    /// [`IavfDriver::map_doorbells`]. Returns how many registers have one (0: the device offers
    /// no io fds and nothing changes). A kick costs one `write(2)` per tail write.
    pub fn enable_kicks(&mut self) -> Result<usize, DriverError> {
        let list = match self.client.get_region_io_fds(pci::BAR0_REGION) {
            Ok(l) => l,
            // The server's answer for a region without io fds.
            Err(e) if e.errno() == rustix::io::Errno::INVAL => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        self.kicks = list
            .into_iter()
            .filter(|(e, _)| e.kind == IO_FD_TYPE_IOEVENTFD && e.flags == 0 && e.size == 4)
            .map(|(e, fd)| (e.offset, fd))
            .collect();
        Ok(self.kicks.len())
    }

    /// Stops kicking (tail writes are plain stores again); the eventfds are closed.
    pub fn disable_kicks(&mut self) {
        self.kicks.clear();
    }

    /// Pair `i`'s RX ring was consumed up to `next` and re-posted: `QRX_TAIL` goes to the
    /// descriptor before `next` (one slot always stays empty).
    fn advance_rx(&mut self, i: usize, next: u32) -> Result<(), DriverError> {
        let p = &mut self.pairs[i];
        let len = u32::from(p.ring_len());
        p.ring.rx_next = next;
        let (reg, tail) = (p.rx_tail_register(), (next + len - 1) % len);
        self.write_tail(reg, tail)
    }

    /// Writes a tail register after a release fence (descriptors first, then the tail).
    fn write_tail(&mut self, reg: u64, tail: u32) -> Result<(), DriverError> {
        std::sync::atomic::fence(Ordering::Release);
        pci::wr32(&mut self.client, reg, tail)?;
        if let Some((_, fd)) = self.kicks.iter().find(|(off, _)| *off == reg) {
            // The store is in the page before the signal; a full counter is signalled anyway.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
        Ok(())
    }

    fn pair_index(&self, queue: u16, what: &'static str) -> Result<usize, DriverError> {
        self.pairs
            .iter()
            .position(|p| p.id() == queue)
            .ok_or(DriverError::NotReady {
                what,
                state: self.state.name(),
            })
    }

    /// Queues `packets` on TX queue `queue`: copies each into the pair's TX buffers, writes
    /// its descriptors and rings `QTX_TAIL` once. Returns how many were queued: it stops at the
    /// first empty packet or the first that does not fit the free descriptors.
    pub fn tx_burst(&mut self, queue: u16, packets: &[&[u8]]) -> Result<usize, DriverError> {
        self.tx_packets(queue, packets.iter().map(std::slice::from_ref))
    }

    /// Like [`IavfDriver::tx_burst`] with each packet given as segments: each segment starts a
    /// new descriptor (a gathered packet), split further if larger than a buffer.
    pub fn tx_burst_segments(
        &mut self,
        queue: u16,
        packets: &[&[&[u8]]],
    ) -> Result<usize, DriverError> {
        self.tx_packets(queue, packets.iter().copied())
    }

    fn tx_packets<'a>(
        &mut self,
        queue: u16,
        packets: impl Iterator<Item = &'a [&'a [u8]]>,
    ) -> Result<usize, DriverError> {
        let i = self.pair_index(queue, "tx_burst")?;
        let p = &mut self.pairs[i];
        tx_clean(p)?;
        let len = u32::from(p.ring_len());
        let chunk = (p.buffer_size() as usize).min(TX_MAX_BUF);
        if len == 0 || chunk == 0 {
            return Ok(0);
        }
        let mem = p.memory.memory();
        let ring = p.tx_ring();
        let mut sent = 0;
        for segs in packets {
            let total: usize = segs.iter().map(|s| s.len()).sum();
            let needed: usize = segs.iter().map(|s| s.len().div_ceil(chunk)).sum();
            let free = (len - 1 - p.tx_in_flight()) as usize;
            if total == 0 || needed > free || needed > p.ring.free.len() {
                break;
            }
            let first = p.ring.tx_next;
            let mut idx = first;
            let mut left = needed;
            for piece in segs.iter().flat_map(|s| s.chunks(chunk)) {
                left -= 1;
                // `needed` buffers are free (checked above).
                let buf = p.ring.free.pop().unwrap_or(NO_BUF);
                let (boff, biova) = p.buffer(buf).ok_or_else(|| {
                    DriverError::InvalidConfig("TX buffer beyond its area".into())
                })?;
                p.ring.tx_buf[idx as usize] = buf;
                mem.write_at(boff, piece)?;
                let cmd = if left == 0 {
                    tx_cmd::EOP | tx_cmd::RS
                } else {
                    0
                };
                // piece.len() <= 0x3FFF.
                put_tx(
                    mem,
                    ring,
                    idx,
                    &TxDesc::data(biova, piece.len() as u16, cmd, 0, 0),
                )?;
                if left == 0 {
                    p.ring.tx_rs.push_back(idx);
                }
                idx = (idx + 1) % len;
            }
            p.ring.tx_next = idx;
            sent += 1;
        }
        if sent > 0 {
            let (reg, tail) = (p.tx_tail_register(), p.ring.tx_next);
            self.write_tail(reg, tail)?;
        }
        Ok(sent)
    }

    /// Posts `descs` as one packet on TX queue `queue`, exactly as given (any address, any
    /// type: for tests and tools), except that RS is set on the last one when it is a data
    /// descriptor (so the driver can reclaim it). Rings `QTX_TAIL`. Returns false if the free
    /// descriptors do not suffice (nothing is posted).
    pub fn tx_post_raw(&mut self, queue: u16, descs: &[TxDesc]) -> Result<bool, DriverError> {
        let i = self.pair_index(queue, "tx_post_raw")?;
        let p = &mut self.pairs[i];
        tx_clean(p)?;
        let len = u32::from(p.ring_len());
        if descs.is_empty() || len == 0 || descs.len() > (len - 1 - p.tx_in_flight()) as usize {
            return Ok(false);
        }
        let mem = p.memory.memory();
        let ring = p.tx_ring();
        let first = p.ring.tx_next;
        let mut idx = first;
        for (k, d) in descs.iter().enumerate() {
            let mut d = *d;
            if k + 1 == descs.len() && d.dtype() == dtype::DATA {
                d = TxDesc::data(
                    d.buffer_addr,
                    d.buf_size(),
                    d.cmd() | tx_cmd::RS,
                    d.offset(),
                    d.l2tag1(),
                );
                p.ring.tx_rs.push_back(idx);
            }
            put_tx(mem, ring, idx, &d)?;
            idx = (idx + 1) % len;
        }
        p.ring.tx_next = idx;
        let reg = p.tx_tail_register();
        self.write_tail(reg, idx)?;
        Ok(true)
    }

    /// Reclaims TX descriptors the device marked done; returns how many are still in flight.
    pub fn tx_complete(&mut self, queue: u16) -> Result<u32, DriverError> {
        let i = self.pair_index(queue, "tx_complete")?;
        let p = &mut self.pairs[i];
        tx_clean(p)?;
        Ok(p.tx_in_flight())
    }

    /// Takes up to `max` received packets from RX queue `queue` into `out` (appended), re-posts
    /// their buffers and rings `QRX_TAIL` once. Returns how many were appended.
    pub fn rx_burst(
        &mut self,
        queue: u16,
        out: &mut Vec<Vec<u8>>,
        max: usize,
    ) -> Result<usize, DriverError> {
        self.rx_packets(queue, RxOut::Append(out), max)
    }

    /// Like [`IavfDriver::rx_burst`], but packet `k` of the burst replaces the contents of
    /// `bufs[k]` (their capacity is reused: no allocation once they are large enough); at most
    /// `bufs.len()` packets. Returns how many of `bufs` were filled.
    pub fn rx_burst_into(
        &mut self,
        queue: u16,
        bufs: &mut [Vec<u8>],
    ) -> Result<usize, DriverError> {
        let max = bufs.len();
        self.rx_packets(queue, RxOut::Fill(bufs), max)
    }

    fn rx_packets(
        &mut self,
        queue: u16,
        mut out: RxOut<'_>,
        max: usize,
    ) -> Result<usize, DriverError> {
        let i = self.pair_index(queue, "rx_burst")?;
        let p = &mut self.pairs[i];
        let len = u32::from(p.ring_len());
        if len < 2 {
            return Ok(0);
        }
        let mem = p.memory.memory();
        let (ring, bs) = (p.rx_ring(), u64::from(p.buffer_size()));
        let desc_off = |idx: u32| ring.offset + u64::from(idx) * RX_DESC32_SIZE as u64;
        let mut idx = p.ring.rx_next;
        let mut consumed = 0u32;
        let mut got = 0;
        while got < max && consumed < len - 1 {
            // Find a complete chain: DD on every descriptor, EOF on the last.
            let mut last = None;
            for j in 0..len - 1 - consumed {
                let q1 =
                    u64::from_le(mem.load_u64(desc_off((idx + j) % len) + 8, Ordering::Acquire)?);
                if q1 & rx_status::DD == 0 {
                    break;
                }
                if q1 & rx_status::EOF != 0 {
                    last = Some(j);
                    break;
                }
            }
            let Some(last) = last else {
                break;
            };
            let pkt = out.slot(got);
            let mut error = false;
            for j in 0..=last {
                let d = (idx + j) % len;
                let mut raw = [0u8; RX_DESC32_SIZE];
                mem.read_at(desc_off(d), &mut raw)?;
                let wb = RxDescWb::decode(&raw)
                    .map_err(|_| DriverError::InvalidConfig("RX descriptor size".into()))?;
                error |= wb.error() != 0;
                let n = (u64::from(wb.pkt_len()) & RXD_QW1_LENGTH_PBUF_MASK).min(bs);
                let (boff, biova) = p.buffer(p.ring.rx_buf[d as usize]).ok_or_else(|| {
                    DriverError::InvalidConfig("RX buffer beyond its area".into())
                })?;
                let start = pkt.len();
                pkt.resize(start + n as usize, 0);
                mem.read_at(boff, &mut pkt[start..])?;
                // Re-post: read format, which also clears DD.
                let post = RxDescRead {
                    pkt_addr: biova,
                    hdr_addr: 0,
                };
                mem.write_at(desc_off(d), &post.encode32())?;
            }
            idx = (idx + last + 1) % len;
            consumed += last + 1;
            if error {
                out.discard();
                p.ring.rx_errors += 1;
            } else {
                got += 1;
            }
        }
        if consumed > 0 {
            self.advance_rx(i, idx)?;
        }
        Ok(got)
    }
}

/// One buffer of a packet in the zero-copy API: a pool buffer of the queue pair, the bytes
/// used in it, and whether it ends its packet. A packet is a run of segments, the last with
/// `eop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// The pool buffer ([`QueuePair::buffer`]).
    pub buf: u32,
    /// Bytes used, from the buffer's start.
    pub len: u16,
    /// Last segment of its packet.
    pub eop: bool,
}

impl IavfDriver {
    /// Takes up to `max` received packets from RX queue `queue` without copying them: their
    /// segments are appended to `out` (each packet a run ending with `eop`) and now belong to
    /// the caller, who sends them ([`IavfDriver::tx_burst_segs`]) or frees them
    /// ([`IavfDriver::free_segs`]). The descriptors are re-posted with free pool buffers, so a
    /// packet is taken only while the pool has enough; `QRX_TAIL` is written once. Returns
    /// the number of packets appended.
    pub fn rx_burst_segs(
        &mut self,
        queue: u16,
        out: &mut Vec<Seg>,
        max: usize,
    ) -> Result<usize, DriverError> {
        let i = self.pair_index(queue, "rx_burst_segs")?;
        let p = &mut self.pairs[i];
        let len = u32::from(p.ring_len());
        if len < 2 {
            return Ok(0);
        }
        let mem = p.memory.memory();
        let ring = p.rx_ring();
        let bs = p.buffer_size();
        let desc_off = |idx: u32| ring.offset + u64::from(idx) * RX_DESC32_SIZE as u64;
        let mut idx = p.ring.rx_next;
        let mut consumed = 0u32;
        let mut got = 0;
        while got < max && consumed < len - 1 {
            let mut chain = 0u32;
            let mut lens = [0u16; 8];
            let mut error = false;
            let mut complete = false;
            while chain < len - 1 - consumed {
                let q1 = u64::from_le(
                    mem.load_u64(desc_off((idx + chain) % len) + 8, Ordering::Acquire)?,
                );
                if q1 & rx_status::DD == 0 {
                    break;
                }
                let wb = RxDescWb {
                    status_error_len: q1,
                    ..RxDescWb::default()
                };
                error |= wb.error() != 0;
                let n = (u64::from(wb.pkt_len()) & RXD_QW1_LENGTH_PBUF_MASK).min(u64::from(bs));
                if let Some(l) = lens.get_mut(chain as usize) {
                    // n <= buffer size <= 16 KiB.
                    *l = n as u16;
                } else {
                    error = true;
                }
                chain += 1;
                if q1 & rx_status::EOF != 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || (chain as usize) > p.ring.free.len() {
                break;
            }
            for j in 0..chain {
                let d = ((idx + j) % len) as usize;
                // `chain` buffers are free (checked above).
                let fresh = p.ring.free.pop().unwrap_or(NO_BUF);
                let (_, biova) = p.buffer(fresh).ok_or_else(|| {
                    DriverError::InvalidConfig("pool buffer beyond its area".into())
                })?;
                let taken = std::mem::replace(&mut p.ring.rx_buf[d], fresh);
                // Read format: the buffer address, then qword1 (hdr_addr, where the write-back
                // keeps DD) cleared. The device reads only these two words.
                mem.store_u64(desc_off(d as u32), biova.to_le(), Ordering::Relaxed)?;
                mem.store_u64(desc_off(d as u32) + 8, 0, Ordering::Relaxed)?;
                if error {
                    p.ring.free.push(taken);
                } else {
                    out.push(Seg {
                        buf: taken,
                        len: lens[j as usize],
                        eop: j + 1 == chain,
                    });
                }
            }
            idx = (idx + chain) % len;
            consumed += chain;
            if error {
                p.ring.rx_errors += 1;
            } else {
                got += 1;
            }
        }
        if consumed > 0 {
            self.advance_rx(i, idx)?;
        }
        Ok(got)
    }

    /// Queues whole packets given as segments on TX queue `queue`, without copying: each
    /// segment becomes a descriptor pointing at its pool buffer (owned by the ring until the
    /// device marks the packet done). Stops at the first packet that does not fit the free
    /// descriptors; rings `QTX_TAIL` once. Returns the number of segments consumed (whole
    /// packets): the rest still belong to the caller. An empty or unknown buffer fails with
    /// `InvalidConfig` before anything is posted for its packet.
    pub fn tx_burst_segs(&mut self, queue: u16, segs: &[Seg]) -> Result<usize, DriverError> {
        let i = self.pair_index(queue, "tx_burst_segs")?;
        let p = &mut self.pairs[i];
        tx_clean(p)?;
        let len = u32::from(p.ring_len());
        if len == 0 {
            return Ok(0);
        }
        let mem = p.memory.memory();
        let ring = p.tx_ring();
        let mut used = 0;
        // The last EOP descriptor written so far is held back: if it ends the call it gets RS
        // (written once, with it), else it goes out as it is when the next one is written.
        let mut held: Option<(u32, TxDesc)> = None;
        while used < segs.len() {
            let n = segs[used..]
                .iter()
                .position(|s| s.eop)
                .map_or(segs.len() - used, |k| k + 1);
            let pkt = &segs[used..used + n];
            if n > (len - 1 - p.tx_in_flight()) as usize {
                break;
            }
            // Checked before anything of the packet is written.
            for s in pkt {
                if s.len == 0 || p.buffer(s.buf).is_none() {
                    return Err(DriverError::InvalidConfig(format!(
                        "segment {s:?} is not a pool buffer"
                    )));
                }
            }
            let mut idx = p.ring.tx_next;
            for (k, s) in pkt.iter().enumerate() {
                let biova = p.buffer(s.buf).map_or(0, |(_, iova)| iova);
                let size = s.len.min(TX_MAX_BUF as u16);
                let cmd = if k + 1 == n { tx_cmd::EOP } else { 0 };
                let d = TxDesc::data(biova, size, cmd, 0, 0);
                if let Some((at, h)) = held.take() {
                    put_tx(mem, ring, at, &h)?;
                }
                if k + 1 == n {
                    held = Some((idx, d));
                } else {
                    put_tx(mem, ring, idx, &d)?;
                }
                p.ring.tx_buf[idx as usize] = s.buf;
                idx = (idx + 1) % len;
            }
            p.ring.tx_next = idx;
            used += n;
        }
        // One RS per call, on the last packet's EOP (DPDK's tx_rs_thresh idea): the device
        // writes one DESC_DONE per burst, and reclaiming it frees the whole burst.
        if let Some((idx, d)) = held {
            let rs = TxDesc::data(d.buffer_addr, d.buf_size(), d.cmd() | tx_cmd::RS, 0, 0);
            put_tx(mem, ring, idx, &rs)?;
            p.ring.tx_rs.push_back(idx);
        }
        if used > 0 {
            let (reg, tail) = (p.tx_tail_register(), p.ring.tx_next);
            self.write_tail(reg, tail)?;
        }
        Ok(used)
    }

    /// Returns segments the caller holds to queue `queue`'s pool.
    pub fn free_segs(&mut self, queue: u16, segs: &[Seg]) -> Result<(), DriverError> {
        let i = self.pair_index(queue, "free_segs")?;
        let p = &mut self.pairs[i];
        let size = p.pool_size();
        p.ring
            .free
            .extend(segs.iter().map(|s| s.buf).filter(|&b| b < size));
        Ok(())
    }

    /// Takes a free pool buffer of queue `queue` (None: the pool is empty); reclaims completed
    /// TX descriptors first.
    pub fn alloc_buf(&mut self, queue: u16) -> Result<Option<u32>, DriverError> {
        let i = self.pair_index(queue, "alloc_buf")?;
        let p = &mut self.pairs[i];
        tx_clean(p)?;
        Ok(p.ring.free.pop())
    }

    /// Copies `data` into pool buffer `buf` of queue `queue` at `offset`.
    pub fn write_buf(
        &self,
        queue: u16,
        buf: u32,
        offset: u32,
        data: &[u8],
    ) -> Result<(), DriverError> {
        let p = &self.pairs[self.pair_index(queue, "write_buf")?];
        let (off, _) = p
            .buffer(buf)
            .filter(|_| offset as usize + data.len() <= p.buffer_size() as usize)
            .ok_or_else(|| DriverError::InvalidConfig(format!("buffer {buf} range")))?;
        p.memory.memory().write_at(off + u64::from(offset), data)?;
        Ok(())
    }

    /// Copies bytes from pool buffer `buf` of queue `queue` at `offset` into `out`.
    pub fn read_buf(
        &self,
        queue: u16,
        buf: u32,
        offset: u32,
        out: &mut [u8],
    ) -> Result<(), DriverError> {
        let p = &self.pairs[self.pair_index(queue, "read_buf")?];
        let (off, _) = p
            .buffer(buf)
            .filter(|_| offset as usize + out.len() <= p.buffer_size() as usize)
            .ok_or_else(|| DriverError::InvalidConfig(format!("buffer {buf} range")))?;
        p.memory.memory().read_at(off + u64::from(offset), out)?;
        Ok(())
    }
}

/// Writes TX descriptor `idx` of `ring`.
fn put_tx(mem: &SharedMemory, ring: Area, idx: u32, d: &TxDesc) -> Result<(), DriverError> {
    mem.write_at(
        ring.offset + u64::from(idx) * TX_DESC_SIZE as u64,
        &d.encode(),
    )?;
    Ok(())
}

/// Where received packets go.
enum RxOut<'a> {
    /// Appended to the vector.
    Append(&'a mut Vec<Vec<u8>>),
    /// Into the given buffers, in order.
    Fill(&'a mut [Vec<u8>]),
}

impl RxOut<'_> {
    /// The (empty) buffer for packet `k` of the burst (`k` < the burst's `max`).
    fn slot(&mut self, k: usize) -> &mut Vec<u8> {
        match self {
            RxOut::Append(v) => {
                v.push(Vec::new());
                let last = v.len() - 1;
                &mut v[last]
            }
            RxOut::Fill(b) => {
                let s = &mut b[k];
                s.clear();
                s
            }
        }
    }

    /// Forgets the packet last put in a slot (it had an error).
    fn discard(&mut self) {
        if let RxOut::Append(v) = self {
            v.pop();
        }
    }
}

/// Moves `tx_clean` past every RS descriptor that reads DESC_DONE (and everything before it),
/// returning the pool buffers of those descriptors.
fn tx_clean(p: &mut QueuePair) -> Result<(), DriverError> {
    let len = u32::from(p.ring_len());
    let ring = p.tx_ring();
    let mem = p.memory.memory();
    while let Some(&last) = p.ring.tx_rs.front() {
        let off = ring.offset + u64::from(last) * TX_DESC_SIZE as u64 + 8;
        let q1 = u64::from_le(mem.load_u64(off, Ordering::Acquire)?);
        if q1 & TXD_QW1_DTYPE_MASK != u64::from(dtype::DESC_DONE) {
            break;
        }
        let mut i = p.ring.tx_clean;
        loop {
            let b = std::mem::replace(&mut p.ring.tx_buf[i as usize], NO_BUF);
            if b != NO_BUF {
                p.ring.free.push(b);
            }
            if i == last {
                break;
            }
            i = (i + 1) % len;
        }
        p.ring.tx_clean = (last + 1) % len;
        p.ring.tx_rs.pop_front();
    }
    Ok(())
}
