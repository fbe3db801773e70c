//! The RX ring engine: writes frames into the buffers of the descriptors the driver posted
//! (`[head, QRX_TAIL)`), spanning descriptors when a frame is larger than one buffer, and writes
//! the legacy 32-byte write-back with qword1 (DD, EOF, length) stored last, with release
//! ordering.

use std::sync::atomic::Ordering;

use emudev_dma::{DmaProt, DmaTable, DmaWindow, Iova};

use super::mem::BufCache;
use super::ring::RingPos;
use super::Tally;
use crate::spec::desc::{rx_error, rx_qword1, rx_status, RX_DESC32_SIZE};

/// Packet type written back: 1, "L2 MAC, payload" in the legacy table (no parsing is done).
pub const RX_PTYPE_L2: u8 = 1;

/// Where a frame can go: an RX queue's burst, or nowhere.
pub trait RxSink {
    /// Delivers one frame; false if it was dropped (and counted).
    fn deliver(&mut self, frame: &[u8]) -> bool;

    /// Whether delivering a `len`-byte frame now would find the RX descriptors it needs.
    /// False only for want of descriptors (a back-end that can hold the frame should keep it
    /// and try again later); a frame that can never be received (empty, too long, a ring the
    /// device cannot reach) reports true, and delivering it counts an error.
    fn fits(&self, len: usize) -> bool;
}

/// A sink for a queue that is not ready: every frame is dropped and counted.
#[derive(Debug)]
pub struct Discard<'a>(pub &'a mut Tally);

impl RxSink for Discard<'_> {
    fn deliver(&mut self, _frame: &[u8]) -> bool {
        self.0.drops += 1;
        false
    }

    fn fits(&self, _len: usize) -> bool {
        false
    }
}

/// One RX queue's engine state. Owned by whoever polls the queue; no locks.
#[derive(Debug, Clone)]
pub struct RxEngine {
    ring: u64,
    pos: RingPos,
    buf_size: u32,
    max_frame: u32,
}

impl RxEngine {
    /// An engine for the ring of `len` 32-byte descriptors at `ring`, buffers of `buf_size`
    /// bytes, frames up to `max_frame` bytes; head and tail 0 (nothing posted).
    pub fn new(ring: u64, len: u32, buf_size: u32, max_frame: u32) -> Self {
        RxEngine {
            ring,
            pos: RingPos::new(len),
            buf_size,
            max_frame,
        }
    }

    /// The next descriptor the engine will fill.
    pub fn head(&self) -> u32 {
        self.pos.head
    }

    /// Descriptors posted and not yet used.
    pub fn available(&self) -> u32 {
        self.pos.between()
    }

    /// Moves the head (a data path taking over a running queue); refused (false) beyond the
    /// ring.
    pub fn set_head(&mut self, head: u32) -> bool {
        self.pos.set_head(head)
    }

    /// A new `QRX_TAIL`; refused (false, nothing changes) if it is beyond the ring.
    pub fn set_tail(&mut self, tail: u32) -> bool {
        self.pos.set_tail(tail)
    }

    /// Starts a burst: the ring window is looked up once here.
    pub fn burst<'a>(&'a mut self, dma: &'a DmaTable, tally: &'a mut Tally) -> RxBurst<'a> {
        let bytes = u64::from(self.pos.len) * RX_DESC32_SIZE as u64;
        let ring = dma.window(Iova(self.ring), bytes, DmaProt::RW).ok();
        RxBurst {
            eng: self,
            ring,
            bufs: BufCache::new(dma, DmaProt::WRITE),
            tally,
            written: 0,
            pre: [0; PRELOAD],
            pre_start: 0,
            pre_len: 0,
        }
    }
}

/// Frames going into one RX queue during one burst.
pub struct RxBurst<'a> {
    eng: &'a mut RxEngine,
    ring: Option<DmaWindow>,
    bufs: BufCache<'a>,
    tally: &'a mut Tally,
    written: usize,
    /// Buffer addresses of the posted descriptors from `pre_start` on, loaded back to back
    /// (the driver's CPU wrote them: independent loads let the cache misses overlap).
    pre: [u64; PRELOAD],
    pre_start: u32,
    pre_len: u32,
}

/// Descriptors whose addresses are loaded ahead.
const PRELOAD: usize = 32;

impl RxBurst<'_> {
    /// The buffer address (as stored, little-endian) in descriptor `idx`, from the preloaded
    /// ones when it is among them; otherwise loads the next run of posted descriptors.
    fn addr_at(&mut self, ring: &DmaWindow, idx: u32) -> Option<u64> {
        let len = self.eng.pos.len;
        let pos = self.eng.pos;
        let rel = pos.wrap(idx + len - self.pre_start);
        if rel < self.pre_len {
            return Some(self.pre[rel as usize]);
        }
        let avail = pos.wrap(pos.tail + len - idx).min(PRELOAD as u32).max(1);
        self.pre_start = idx;
        self.pre_len = 0;
        for k in 0..avail {
            let off = u64::from(pos.wrap(idx + k)) * RX_DESC32_SIZE as u64;
            match ring.load_u64(off, Ordering::Acquire) {
                Ok(a) => {
                    self.pre[k as usize] = a;
                    self.pre_len = k + 1;
                }
                Err(_) => break,
            }
        }
        (self.pre_len > 0).then(|| self.pre[0])
    }
}

impl std::fmt::Debug for RxBurst<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBurst")
            .field("eng", &self.eng)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl RxBurst<'_> {
    /// Frames written back (good or flagged with an error) so far.
    pub fn written(&self) -> usize {
        self.written
    }
}

impl RxSink for RxBurst<'_> {
    fn fits(&self, len: usize) -> bool {
        let e = &*self.eng;
        let max = if e.max_frame == 0 {
            u32::MAX
        } else {
            e.max_frame
        };
        if len == 0 || len > max as usize || e.buf_size == 0 || self.ring.is_none() {
            return true;
        }
        len.div_ceil(e.buf_size as usize) <= e.available() as usize
    }

    fn deliver(&mut self, frame: &[u8]) -> bool {
        let e = &mut *self.eng;
        let max = if e.max_frame == 0 {
            u32::MAX
        } else {
            e.max_frame
        };
        if frame.is_empty() || frame.len() > max as usize || e.buf_size == 0 {
            self.tally.errors += 1;
            return false;
        }
        let Some(ring) = self.ring.take() else {
            log::debug!("iavf rx: ring at {:#x} is not accessible", e.ring);
            self.tally.errors += 1;
            return false;
        };
        let ok = self.write_frame(&ring, frame);
        self.ring = Some(ring);
        ok
    }
}

impl RxBurst<'_> {
    /// [`RxSink::deliver`] with the ring window in hand.
    fn write_frame(&mut self, ring: &DmaWindow, frame: &[u8]) -> bool {
        let e = &mut *self.eng;
        let bs = e.buf_size as usize;
        // One buffer is the common case: no division for it.
        let needed = if frame.len() <= bs {
            1
        } else {
            frame.len().div_ceil(bs)
        };
        if needed > e.available() as usize {
            self.tally.drops += 1;
            return false;
        }
        // Data first, into every buffer of the chain.
        let mut ok = true;
        let pos = e.pos;
        let mut idx = pos.head;
        for chunk in frame.chunks(bs) {
            match self.addr_at(ring, idx) {
                Some(addr) => {
                    if ok && self.bufs.write(u64::from_le(addr), chunk).is_err() {
                        log::debug!("iavf rx: buffer {:#x} outside mapped memory", addr);
                        ok = false;
                    }
                }
                None => ok = false,
            }
            idx = pos.next(idx);
        }
        let e = &mut *self.eng;
        // Then the write-backs, qword1 last in each.
        let mut idx = e.pos.head;
        let last = needed - 1;
        for (i, chunk) in frame.chunks(bs).enumerate() {
            let off = u64::from(idx) * RX_DESC32_SIZE as u64;
            let mut status = rx_status::DD;
            if i == last {
                status |= rx_status::EOF;
            }
            let error = if ok { 0 } else { rx_error::RXE };
            // chunk.len() <= buf_size <= 16 KiB - 128: fits the 14-bit length.
            let q1 = rx_qword1(status, error, RX_PTYPE_L2, chunk.len() as u16);
            let stored = ring
                .store_u64(off, 0, Ordering::Relaxed)
                .and_then(|()| ring.store_u64(off + 16, 0, Ordering::Relaxed))
                .and_then(|()| ring.store_u64(off + 24, 0, Ordering::Relaxed))
                .and_then(|()| ring.store_u64(off + 8, q1.to_le(), Ordering::Release));
            if stored.is_err() {
                ok = false;
            }
            idx = e.pos.next(idx);
        }
        e.pos.head = idx;
        self.written += 1;
        if ok {
            self.tally.count(frame);
        } else {
            self.tally.errors += 1;
        }
        ok
    }
}
