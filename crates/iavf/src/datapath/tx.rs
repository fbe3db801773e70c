//! The TX ring engine: consumes the descriptors the driver placed in `[head, QTX_TAIL)`,
//! gathers each packet's data descriptors up to EOP into one frame, skips context descriptors,
//! and writes DESC_DONE back into descriptors that asked for it (RS).

use std::sync::atomic::Ordering;

use emudev_dma::{DmaProt, DmaTable, Iova};

use super::mem::BufCache;
use super::ring::RingPos;
use super::Tally;
use crate::spec::desc::{dtype, tx_cmd, TxDesc, TX_DESC_SIZE};

/// Descriptors loaded ahead at the start of a poll.
const PRELOAD: usize = 32;

/// Largest frame the engine gathers (bigger packets, TSO included for now, are errors).
pub const MAX_TX_FRAME: usize = 16 * 1024;

/// One TX queue's engine state. Owned by whoever polls the queue; no locks.
#[derive(Debug)]
pub struct TxEngine {
    ring: u64,
    pos: RingPos,
    /// The packet being gathered: `frame[..frame_len]` ([`MAX_TX_FRAME`] bytes, allocated and
    /// zeroed once, so gathering never clears memory it is about to overwrite).
    frame: Box<[u8]>,
    frame_len: usize,
    /// The packet being gathered already failed (bad buffer, too long, bad descriptor).
    bad: bool,
}

impl TxEngine {
    /// An engine for the ring of `len` descriptors at IOVA `ring`, head and tail 0.
    pub fn new(ring: u64, len: u32) -> Self {
        TxEngine {
            ring,
            pos: RingPos::new(len),
            frame: vec![0u8; MAX_TX_FRAME].into_boxed_slice(),
            frame_len: 0,
            bad: false,
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
    /// Every complete good packet goes to `sink`; counts go to `tally` (packets, bytes and the
    /// destination kind of the good ones, errors for dropped ones and ring faults). Returns the
    /// number of packets completed (good or dropped).
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
                    self.gather(&mut bufs, &d);
                    if d.cmd() & tx_cmd::RS != 0 {
                        // The buffer is copied: the driver may reuse it.
                        let done = d.done_qword1().to_le();
                        if ring.store_u64(off + 8, done, Ordering::Release).is_err() {
                            tally.errors += 1;
                        }
                    }
                    if d.cmd() & tx_cmd::EOP != 0 {
                        let frame = &self.frame[..self.frame_len];
                        if self.bad {
                            tally.errors += 1;
                        } else {
                            tally.count(frame);
                            sink(frame);
                        }
                        self.frame_len = 0;
                        self.bad = false;
                        packets += 1;
                    }
                }
                // Offloads are not applied yet: the frame goes out as the driver built it.
                dtype::CONTEXT => {}
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

    /// Appends a data descriptor's buffer to the frame, or marks the frame bad.
    fn gather(&mut self, bufs: &mut BufCache, d: &TxDesc) {
        let n = usize::from(d.buf_size());
        if self.bad || n == 0 {
            return;
        }
        let start = self.frame_len;
        let Some(dst) = self.frame.get_mut(start..start + n) else {
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
        self.frame_len = start + n;
    }
}
