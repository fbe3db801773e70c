//! The software data path of the emulated VF (the seed's `net_iavfbe`): ring engines that move
//! packets between the driver's descriptor rings and a back-end, attached to the device as an
//! emudev [`DataPathProvider`].
//!
//! - [`TxEngine`]: `[head, QTX_TAIL)`, 16-byte data descriptors gathered until EOP, context
//!   descriptors skipped, DESC_DONE written into RS descriptors.
//! - [`RxEngine`]: only descriptors below `QRX_TAIL`; a frame spans buffers when it is larger
//!   than one; 32-byte legacy write-back with DD|EOF and the length in qword1, stored last.
//! - [`PairEngine`]: one queue pair and its back-end queue; [`PairEngine::poll`] moves up to
//!   `budget` packets (at most [`BURST`] per call is what the provider uses). It owns all it
//!   needs (no locks), so a worker thread can own it as well as the provider does.
//! - Back-ends: [`Loopback`] (queue q's TX comes back on queue q's RX).
//!
//! Memory: descriptors and buffers are reached only through the DMA table. The ring is one
//! window per burst; buffers are reached through up to four windows over whole mappings per
//! burst. A descriptor whose buffer lies outside mapped memory drops its packet and counts an
//! error; nothing panics on what the client wrote.
//!
//! Driving (this slice): synchronously from the trapped `QTX_TAIL` write, on the vfio-user
//! server thread; `QRX_TAIL` writes only move the RX tail. After frames are written back the
//! RX queue's vector is raised through [`IavfHandle::raise_queue_irq`] (gated by INTENA).
//!
//! Counters: per queue ([`QueueStats`], [`DatapathStats`]) and the VSI's (`GET_STATS`),
//! added once per burst.

mod mem;
mod rx;
mod tx;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use emudev::{DataPathProvider, DeviceView, MemTableView, ProviderError, ProviderKind, QueueInfo};
use emudev_dma::DmaTable;
use thiserror::Error;

pub use self::rx::{Discard, RxBurst, RxEngine, RxSink, RX_PTYPE_L2};
pub use self::tx::{TxEngine, MAX_TX_FRAME};

use crate::device::{queue_ids, IavfHandle, VsiStats, WeakIavfHandle, MAX_FRAME_SIZE};

/// Most packets per burst.
pub const BURST: usize = 32;

/// Counts of one burst on one direction, added to the shared counters once at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Good packets.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of the good packets: unicast, multicast, broadcast destinations.
    pub unicast: u64,
    /// See `unicast`.
    pub multicast: u64,
    /// See `unicast`.
    pub broadcast: u64,
    /// Packets dropped for a fault (bad descriptor or buffer, too long, ring not accessible).
    pub errors: u64,
    /// Packets dropped for want of RX descriptors.
    pub drops: u64,
}

impl Tally {
    /// Counts one good frame.
    pub fn count(&mut self, frame: &[u8]) {
        self.packets += 1;
        self.bytes += frame.len() as u64;
        match frame.get(..6) {
            Some([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) => self.broadcast += 1,
            Some([b, ..]) if b & 1 != 0 => self.multicast += 1,
            _ => self.unicast += 1,
        }
    }
}

/// One queue pair's counters.
#[derive(Debug, Default)]
pub struct QueueCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_errors: AtomicU64,
    rx_drops: AtomicU64,
}

/// One queue pair's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets taken from the TX ring and handed to the back-end.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// TX packets dropped: a descriptor or buffer outside mapped memory, a frame too long, a
    /// bad descriptor type, a ring the device cannot reach.
    pub tx_errors: u64,
    /// Packets written into the RX ring.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// RX packets dropped for a fault (buffer outside mapped memory, frame too long).
    pub rx_errors: u64,
    /// RX packets dropped because no descriptor was posted.
    pub rx_drops: u64,
}

impl QueueCounters {
    fn add(&self, tx: &Tally, rx: &Tally) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.tx_packets, tx.packets);
        add(&self.tx_bytes, tx.bytes);
        add(&self.tx_errors, tx.errors + tx.drops);
        add(&self.rx_packets, rx.packets);
        add(&self.rx_bytes, rx.bytes);
        add(&self.rx_errors, rx.errors);
        add(&self.rx_drops, rx.drops);
    }

    /// The counters now.
    pub fn snapshot(&self) -> QueueStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            tx_errors: l(&self.tx_errors),
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            rx_errors: l(&self.rx_errors),
            rx_drops: l(&self.rx_drops),
        }
    }
}

/// Adds a burst's counts to the VSI's (what GET_STATS reports).
fn add_vsi(vsi: &VsiStats, tx: &Tally, rx: &Tally) {
    let add = |a: &AtomicU64, v: u64| {
        if v != 0 {
            a.fetch_add(v, Ordering::Relaxed);
        }
    };
    add(&vsi.tx_bytes, tx.bytes);
    add(&vsi.tx_unicast, tx.unicast);
    add(&vsi.tx_multicast, tx.multicast);
    add(&vsi.tx_broadcast, tx.broadcast);
    add(&vsi.tx_errors, tx.errors);
    add(&vsi.tx_discards, tx.drops);
    add(&vsi.rx_bytes, rx.bytes);
    add(&vsi.rx_unicast, rx.unicast);
    add(&vsi.rx_multicast, rx.multicast);
    add(&vsi.rx_broadcast, rx.broadcast);
    add(&vsi.rx_discards, rx.drops + rx.errors);
}

/// Where the packets a queue sends go.
pub trait Backend: Send + Sync {
    /// Its name ("loopback").
    fn name(&self) -> &'static str;
    /// The back-end's side of queue pair `queue`.
    fn queue(&self, queue: u16) -> Box<dyn BackendQueue>;
}

/// One queue pair's side of a back-end.
pub trait BackendQueue: Send {
    /// A frame the client sent. `local_rx` delivers to the same pair's RX queue.
    fn transmit(&mut self, frame: &[u8], local_rx: &mut dyn RxSink);
}

/// The `loopback` back-end: what a queue sends comes back on the same queue's RX.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loopback;

struct LoopbackQueue;

impl BackendQueue for LoopbackQueue {
    fn transmit(&mut self, frame: &[u8], local_rx: &mut dyn RxSink) {
        local_rx.deliver(frame);
    }
}

impl Backend for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn queue(&self, _queue: u16) -> Box<dyn BackendQueue> {
        Box::new(LoopbackQueue)
    }
}

/// One queue pair: its TX and RX engines (while the queues are enabled), its back-end queue and
/// counters. Everything [`PairEngine::poll`] touches is owned or reference-counted.
pub struct PairEngine {
    queue: u16,
    dma: Arc<DmaTable>,
    device: WeakIavfHandle,
    backend: Box<dyn BackendQueue>,
    tx: Option<TxEngine>,
    rx: Option<RxEngine>,
    rx_vector: Option<u16>,
    counters: Arc<QueueCounters>,
}

impl std::fmt::Debug for PairEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairEngine")
            .field("queue", &self.queue)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .field("rx_vector", &self.rx_vector)
            .finish_non_exhaustive()
    }
}

impl PairEngine {
    /// Moves up to `budget` packets from the TX ring through the back-end; returns how many
    /// TX packets were completed (sent or dropped). Counters are added and the RX vector is
    /// raised once, at the end.
    pub fn poll(&mut self, budget: usize) -> usize {
        let Some(tx) = self.tx.as_mut() else {
            return 0;
        };
        if tx.pending() == 0 {
            return 0;
        }
        let mut txt = Tally::default();
        let mut rxt = Tally::default();
        let backend = &mut self.backend;
        let dma = &*self.dma;
        let (done, written) = match self.rx.as_mut() {
            Some(rx) => {
                let mut burst = rx.burst(dma, &mut rxt);
                let done = tx.poll(dma, budget, &mut txt, &mut |f| {
                    backend.transmit(f, &mut burst)
                });
                (done, burst.written())
            }
            None => {
                let mut sink = Discard(&mut rxt);
                let done = tx.poll(dma, budget, &mut txt, &mut |f| {
                    backend.transmit(f, &mut sink)
                });
                (done, 0)
            }
        };
        self.counters.add(&txt, &rxt);
        if let Some(dev) = self.device.upgrade() {
            add_vsi(dev.vsi_stats(), &txt, &rxt);
            if written > 0 {
                if let Some(v) = self.rx_vector {
                    dev.raise_queue_irq(v);
                }
            }
        }
        done
    }

    /// The TX engine, while the TX queue is enabled.
    pub fn tx(&self) -> Option<&TxEngine> {
        self.tx.as_ref()
    }

    /// The RX engine, while the RX queue is enabled.
    pub fn rx(&self) -> Option<&RxEngine> {
        self.rx.as_ref()
    }
}

/// The per-queue counters of an attached data path, readable from any thread.
#[derive(Debug, Clone)]
pub struct DatapathStats {
    queues: Arc<[Arc<QueueCounters>]>,
}

impl DatapathStats {
    /// Queue pair `q`'s counters now.
    pub fn queue(&self, q: u16) -> Option<QueueStats> {
        self.queues.get(usize::from(q)).map(|c| c.snapshot())
    }

    /// The sum over every queue pair.
    pub fn total(&self) -> QueueStats {
        self.queues.iter().fold(QueueStats::default(), |t, c| {
            let s = c.snapshot();
            QueueStats {
                tx_packets: t.tx_packets + s.tx_packets,
                tx_bytes: t.tx_bytes + s.tx_bytes,
                tx_errors: t.tx_errors + s.tx_errors,
                rx_packets: t.rx_packets + s.rx_packets,
                rx_bytes: t.rx_bytes + s.rx_bytes,
                rx_errors: t.rx_errors + s.rx_errors,
                rx_drops: t.rx_drops + s.rx_drops,
            }
        })
    }
}

/// Why [`attach`] failed.
#[derive(Debug, Error)]
pub enum AttachDatapathError {
    /// The emudev object model refused the provider (no DMA table bound yet: serve the device
    /// first; another provider attached; the device closed).
    #[error("emudev refused the data path: {0}")]
    Provider(#[from] ProviderError),
}

/// Attaches a software data path with `backend` to the device behind `handle` (after
/// [`crate::IavfDevice::serve`], which binds the DMA table). Queues enabled from then on are
/// serviced. Returns the per-queue counters.
pub fn attach(
    handle: &IavfHandle,
    backend: Arc<dyn Backend>,
) -> Result<DatapathStats, AttachDatapathError> {
    let pairs = handle.snapshot().tx.len();
    let queues: Arc<[Arc<QueueCounters>]> = (0..pairs)
        .map(|_| Arc::new(QueueCounters::default()))
        .collect();
    let provider = IavfDatapath {
        device: handle.downgrade(),
        backend,
        counters: queues.clone(),
        dma: None,
        pairs: Vec::new(),
    };
    handle.emu().attach_provider(Box::new(provider))?;
    Ok(DatapathStats { queues })
}

/// The provider: one [`PairEngine`] per queue pair, driven from the TX doorbell.
struct IavfDatapath {
    device: WeakIavfHandle,
    backend: Arc<dyn Backend>,
    counters: Arc<[Arc<QueueCounters>]>,
    dma: Option<Arc<DmaTable>>,
    pairs: Vec<PairEngine>,
}

/// Which pair and direction an emudev queue is: `(pair, is_tx)`.
fn decode_queue(id: emudev::QueueId) -> Option<(u16, bool)> {
    let n = id.0.checked_sub(queue_ids::tx(0).0)?;
    let pair = u16::try_from(n / 2).ok()?;
    Some((pair, n % 2 == 0))
}

impl IavfDatapath {
    fn pair(&mut self, q: u16) -> Option<&mut PairEngine> {
        self.pairs.get_mut(usize::from(q))
    }
}

impl DataPathProvider for IavfDatapath {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Software
    }

    fn attach(&mut self, dev: DeviceView) -> Result<(), ProviderError> {
        let MemTableView::Full(dma) = dev.mem_table() else {
            return Err(ProviderError::Rejected(
                "a software data path needs the whole DMA table".into(),
            ));
        };
        self.dma = Some(dma.clone());
        self.pairs = (0..self.counters.len())
            .map(|q| {
                // q < the device's queue count (<= 16).
                let q16 = q as u16;
                PairEngine {
                    queue: q16,
                    dma: dma.clone(),
                    device: self.device.clone(),
                    backend: self.backend.queue(q16),
                    tx: None,
                    rx: None,
                    rx_vector: None,
                    counters: self.counters[q].clone(),
                }
            })
            .collect();
        log::debug!(
            "iavf {}: {} data path attached",
            dev.name(),
            self.backend.name()
        );
        Ok(())
    }

    fn queue_ready(&mut self, info: &QueueInfo) {
        let Some((q, is_tx)) = decode_queue(info.id) else {
            return;
        };
        let Some(dev) = self.device.upgrade() else {
            return;
        };
        let tails = dev.queue_tails(q).unwrap_or((0, 0));
        if is_tx {
            let mut tx = TxEngine::new(info.base.0, info.size);
            tx.set_tail(tails.0);
            if let Some(p) = self.pair(q) {
                p.tx = Some(tx);
            }
        } else {
            let snap = dev.snapshot();
            let Some(state) = snap.rx.get(usize::from(q)) else {
                return;
            };
            let max = if state.max_pkt_size == 0 {
                MAX_FRAME_SIZE
            } else {
                state.max_pkt_size
            };
            let mut rx = RxEngine::new(info.base.0, info.size, state.databuffer_size, max);
            rx.set_tail(tails.1);
            let vector = info.irq_vector.and_then(|v| u16::try_from(v).ok());
            if let Some(p) = self.pair(q) {
                p.rx = Some(rx);
                p.rx_vector = vector;
            }
        }
        // A TX tail written before the queue was enabled is served now.
        if is_tx {
            self.drive(q);
        }
    }

    fn queue_stopped(&mut self, info: &QueueInfo) {
        let Some((q, is_tx)) = decode_queue(info.id) else {
            return;
        };
        if let Some(p) = self.pair(q) {
            if is_tx {
                p.tx = None;
            } else {
                p.rx = None;
                p.rx_vector = None;
            }
        }
    }

    fn doorbell_rung(&mut self, info: &QueueInfo, value: u64) {
        let Some((q, is_tx)) = decode_queue(info.id) else {
            return;
        };
        let Some(p) = self.pair(q) else {
            return;
        };
        let tail = u32::try_from(value).unwrap_or(u32::MAX);
        let accepted = if is_tx {
            p.tx.as_mut().is_some_and(|t| t.set_tail(tail))
        } else {
            p.rx.as_mut().is_some_and(|r| r.set_tail(tail))
        };
        if !accepted {
            log::debug!("iavf: queue {q} tail {value:#x} beyond the ring, ignored");
            return;
        }
        if is_tx {
            self.drive(q);
        }
    }

    fn detach(&mut self) {
        self.pairs.clear();
        self.dma = None;
    }
}

impl IavfDatapath {
    /// Polls pair `q` until its TX ring is empty (bounded by one pass over the ring).
    fn drive(&mut self, q: u16) {
        let Some(p) = self.pair(q) else {
            return;
        };
        let len = p.tx.as_ref().map_or(0, |t| t.pending() as usize);
        for _ in 0..len.div_ceil(BURST).max(1) + 1 {
            if p.poll(BURST) == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
