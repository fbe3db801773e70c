//! The software data path of the emulated VF (the seed's `net_iavfbe`): ring engines that move
//! packets between the driver's descriptor rings and a back-end, attached to the device as an
//! emudev [`DataPathProvider`].
//!
//! - [`TxEngine`]: `[head, QTX_TAIL)`, 16-byte data descriptors gathered until EOP, DESC_DONE
//!   written into RS descriptors; the offloads a packet asks for (IPv4 header, TCP/UDP and SCTP
//!   checksums from the data descriptor, TSO from a context descriptor) applied on the gathered
//!   copy before the back-end sees it ([`TxOffloader`]).
//! - [`RxEngine`]: only descriptors below `QRX_TAIL`; a frame spans buffers when it is larger
//!   than one; 32-byte legacy write-back with DD|EOF and the length in qword1, stored last.
//! - [`PairEngine`]: one queue pair and its back-end queue; [`PairEngine::poll`] moves up to
//!   `budget` packets (at most [`BURST`] per call is what the provider uses). It owns all it
//!   needs (no locks), so a worker thread can own it as well as the provider does.
//! - Back-ends ([`Backend`], one [`BackendQueue`] per queue pair): [`Loopback`] (queue q's TX
//!   comes back on queue q's RX), [`MacSwap`], [`Sink`] (`rxonly`), [`Generator`] (`txonly`),
//!   [`Pair`] (two VFs joined, met by name through a [`PairRegistry`]), [`PcapBackend`]
//!   (write to / replay from a pcap file), [`ChannelBackend`] (frames to and from the
//!   application, [`ChannelPort`]); [`BackendSpec`] parses the `backend=` vdev value and builds
//!   one. A back-end that *originates* frames ([`Backend::originates`]: pair, replay,
//!   generator, channel) delivers them through [`BackendQueue::receive`] in RX-only bursts
//!   (TX idle, frames waiting, RX descriptors posted), so it always gets a polled data path.
//!   It asks [`RxSink::fits`] first and keeps a frame the RX ring has no room for yet; frames
//!   a back-end pushes into a full RX ring anyway (loopback, macswap) are RX drops, counted.
//! - Capture tap: [`DatapathStats::capture_start`] / [`DatapathStats::capture_stop`] write
//!   every frame the data path handles (TX taken and RX delivered) to a pcap file at run time.
//!
//! Memory: descriptors and buffers are reached only through the DMA table. The ring is one
//! window per burst; buffers are reached through up to four windows over whole mappings per
//! burst. A descriptor whose buffer lies outside mapped memory drops its packet and counts an
//! error; nothing panics on what the client wrote.
//!
//! Driving, two modes:
//! - inline ([`attach`] on a device with trapped tails and a back-end that does not originate
//!   frames): synchronously from the trapped `QTX_TAIL` write, on the vfio-user server thread;
//!   `QRX_TAIL` writes only move the RX tail.
//! - polled ([`attach_polled`], and [`attach`] on a device with doorbell pages): one worker
//!   thread polls every queue pair with bursts of [`BURST`], reading the tails from the
//!   mmapped doorbell pages (or taking trapped tail writes). Idle, it spins, then yields, then
//!   sleeps on eventfds with a doubling timeout up to [`PollConfig::max_sleep`]: its own waker
//!   (detach, trapped tail writes) and, on a device with kick doorbells
//!   ([`crate::IavfConfig::doorbell_kicks`]), the queue pairs' kick eventfds, which a client
//!   signals after storing a tail ([`crate::driver::IavfDriver::enable_kicks`]). Once a kick
//!   has woken it, an idle worker sleeps up to [`PollConfig::kicked_sleep`] (interrupt mode);
//!   a client that stores without kicking is noticed when a sleep times out onto work, and
//!   polled again. It stops when the data path is detached or the device closes. Each pair sits behind its own mutex, taken once
//!   per burst (uncontended in steady state) and by the queue callbacks, so a stopped queue is
//!   never touched afterwards.
//!
//! After frames are written back the RX queue's vector is raised through
//! [`IavfHandle::raise_queue_irq`] (gated by INTENA), with the pair released.
//!
//! Counters: per queue ([`QueueStats`], [`DatapathStats`]) and the VSI's (`GET_STATS`),
//! added once per burst.

mod backend_spec;
mod basic;
mod capture;
mod channel;
mod mem;
mod offload;
mod pair;
mod pcap;
mod ring;
mod rx;
mod spsc;
#[cfg(test)]
mod testing;
mod tx;
mod wait;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use emudev::{
    DataPathProvider, DeviceView, DoorbellMem, MemTableView, ProviderError, ProviderKind, QueueInfo,
};
use emudev_dma::DmaTable;
use thiserror::Error;

pub use self::backend_spec::{
    BackendControl, BackendSpec, BuildBackendError, BuiltBackend, ParseBackendSpecError,
};
pub use self::basic::{
    udp_frame, CreateGeneratorError, Generator, Loopback, MacSwap, Sink, GENERATOR_DEFAULT_LEN,
    GENERATOR_MIN_LEN,
};
pub use self::capture::{CaptureStartError, CaptureStopError};
pub use self::channel::{
    ChannelBackend, ChannelPort, ChannelSendError, ChannelStats, CreateChannelError,
    CHANNEL_DEFAULT_CAPACITY,
};
pub use self::offload::{
    apply_checksums, crc32c, OffloadError, TsoRequest, TxOffload, TxOffloader, MAX_TSO_FRAME,
    MAX_TX_HEADERS,
};
pub use self::pair::{
    ConnectPairError, Pair, PairRegistry, PairSide, PairStats, PAIR_DEFAULT_CAPACITY,
};
pub use self::pcap::{
    pcap_global_header, pcap_record_header, read_pcap, CreatePcapError, OpenPcapBackendError,
    PcapBackend, PcapWriter, ReadPcapError, LINKTYPE_ETHERNET, PCAP_MAGIC, PCAP_SNAPLEN,
};
pub use self::rx::{Discard, RxBurst, RxEngine, RxSink, RX_PTYPE_L2};
pub use self::tx::{TxEngine, MAX_TX_FRAME};
pub use self::wait::WorkerStats;

use self::capture::{Capture, TapSink};
use self::wait::{Waiter, Woken, WorkerCounters};
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
    /// TX: good packets that went out with offloads applied (each TSO segment counts).
    pub offloaded: u64,
    /// TX: TSO packets cut into segments.
    pub tso: u64,
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
    tx_offloaded: AtomicU64,
    tx_tso: AtomicU64,
}

/// One queue pair's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets taken from the TX ring and handed to the back-end.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// TX packets dropped: a descriptor or buffer outside mapped memory, a frame too long, a
    /// bad descriptor type, a ring the device cannot reach, an offload request that does not fit
    /// the frame (offsets past it, TSO of anything but TCP, a TSO length that does not match).
    pub tx_errors: u64,
    /// Packets written into the RX ring.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// RX packets dropped for a fault (buffer outside mapped memory, frame too long).
    pub rx_errors: u64,
    /// RX packets dropped because no descriptor was posted.
    pub rx_drops: u64,
    /// Of `tx_packets`, those that went out with checksum or TSO offloads applied (each TSO
    /// segment counts).
    pub tx_offloaded: u64,
    /// TSO packets the device cut into segments (each is one ring packet, several
    /// `tx_packets`).
    pub tx_tso: u64,
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
        add(&self.tx_offloaded, tx.offloaded);
        add(&self.tx_tso, tx.tso);
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
            tx_offloaded: l(&self.tx_offloaded),
            tx_tso: l(&self.tx_tso),
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

/// Where the packets a queue sends go, and where the frames it receives come from.
pub trait Backend: Send + Sync {
    /// Its name ("loopback").
    fn name(&self) -> &'static str;
    /// The back-end's side of queue pair `queue` of a data path with `queues` pairs (called
    /// once per pair when the data path attaches; dropped when it detaches).
    fn queue(&self, queue: u16, queues: u16) -> Box<dyn BackendQueue>;
    /// Whether it delivers frames nobody sent on the same queue ([`BackendQueue::receive`]);
    /// such a back-end always gets a polled data path, since no doorbell announces its
    /// frames.
    fn originates(&self) -> bool {
        false
    }
}

/// One queue pair's side of a back-end. Driven by one thread at a time.
pub trait BackendQueue: Send {
    /// A frame the client sent. `local_rx` delivers to the same pair's RX queue. Returns
    /// false when the back-end dropped the frame (counted as a TX discard of the queue); a
    /// frame `local_rx` refused is counted there, as an RX drop, and is not a TX discard.
    fn transmit(&mut self, frame: &[u8], local_rx: &mut dyn RxSink) -> bool;

    /// Delivers up to `budget` frames the back-end originates into `rx`; returns how many it
    /// delivered. A back-end that holds frames asks [`RxSink::fits`] first and keeps those
    /// that do not fit yet. Only called when [`Backend::originates`].
    fn receive(&mut self, _rx: &mut dyn RxSink, _budget: usize) -> usize {
        0
    }

    /// Whether [`BackendQueue::receive`] has frames now (cheap: called on every poll).
    fn rx_pending(&self) -> bool {
        false
    }
}

/// One queue pair: its TX and RX engines (while the queues are enabled), its back-end queue and
/// counters. Everything [`PairEngine::poll`] touches is owned or reference-counted.
pub struct PairEngine {
    queue: u16,
    dma: Arc<DmaTable>,
    device: WeakIavfHandle,
    backend: Box<dyn BackendQueue>,
    /// The back-end originates frames: RX-only bursts run when it has some.
    originates: bool,
    capture: Arc<Capture>,
    tx: Option<TxEngine>,
    rx: Option<RxEngine>,
    rx_vector: Option<u16>,
    counters: Arc<QueueCounters>,
    /// The TX and RX tails' words on the mmapped doorbell pages, when the device has them.
    bells: Option<(DoorbellMem, DoorbellMem)>,
}

/// What one burst did, to be published (counters, GET_STATS, the RX vector) after the pair
/// is released.
#[derive(Debug, Default)]
struct BurstOutcome {
    /// TX packets completed.
    done: usize,
    /// Frames the back-end originated into RX.
    received: usize,
    tx: Tally,
    rx: Tally,
    raise: Option<u16>,
}

impl BurstOutcome {
    fn publish(&self, counters: &QueueCounters, device: &WeakIavfHandle) {
        if self.tx == Tally::default() && self.rx == Tally::default() {
            return;
        }
        counters.add(&self.tx, &self.rx);
        if let Some(dev) = device.upgrade() {
            add_vsi(dev.vsi_stats(), &self.tx, &self.rx);
            if let Some(v) = self.raise {
                dev.raise_queue_irq(v);
            }
        }
    }
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
        let out = self.burst(budget);
        out.publish(&self.counters, &self.device);
        out.done
    }

    /// Reads the tails from the doorbell pages (when the device has them): a tail beyond the
    /// ring is ignored, as a trapped one is. The RX tail is read only when a burst may write
    /// into RX (TX pending, or the back-end has frames of its own).
    fn refresh_tails(&mut self) {
        let Some((txb, rxb)) = self.bells.as_ref() else {
            return;
        };
        let mut tx_pending = false;
        if let Some(tx) = self.tx.as_mut() {
            if let Ok(v) = txb.read() {
                tx.set_tail(u32::try_from(v).unwrap_or(u32::MAX));
            }
            tx_pending = tx.pending() != 0;
        }
        let rx_wanted = self.originates && self.backend.rx_pending();
        if !tx_pending && !rx_wanted {
            return;
        }
        if let (Some(rx), Ok(v)) = (self.rx.as_mut(), rxb.read()) {
            rx.set_tail(u32::try_from(v).unwrap_or(u32::MAX));
        }
    }

    /// One burst without publishing anything: the TX ring through the back-end (when TX has
    /// pending descriptors), then the frames the back-end originates (when it has some and
    /// RX has descriptors posted).
    fn burst(&mut self, budget: usize) -> BurstOutcome {
        let PairEngine {
            dma,
            backend,
            originates,
            capture,
            tx,
            rx,
            rx_vector,
            ..
        } = self;
        let tx_pending = tx.as_ref().is_some_and(|t| t.pending() != 0);
        let rx_wanted =
            *originates && rx.as_ref().is_some_and(|r| r.available() != 0) && backend.rx_pending();
        if !tx_pending && !rx_wanted {
            return BurstOutcome::default();
        }
        let tap = capture.active().then_some(&**capture);
        let dma = &**dma;
        let mut txt = Tally::default();
        let mut rxt = Tally::default();
        let mut discards = 0u64;
        let mut done = 0;
        let mut received = 0;
        let mut written = 0;
        let mut run = |sink: &mut dyn RxSink| {
            if let Some(tx) = tx.as_mut().filter(|_| tx_pending) {
                done = tx.poll(dma, budget, &mut txt, &mut |f| {
                    if let Some(c) = tap {
                        c.record(f);
                    }
                    if !backend.transmit(f, sink) {
                        discards += 1;
                    }
                });
            }
            if rx_wanted {
                received = backend.receive(sink, budget);
            }
        };
        match rx.as_mut() {
            Some(rx) => {
                let mut burst = rx.burst(dma, &mut rxt);
                match tap {
                    Some(capture) => run(&mut TapSink {
                        inner: &mut burst,
                        capture,
                    }),
                    None => run(&mut burst),
                }
                written = burst.written();
            }
            None => run(&mut Discard(&mut rxt)),
        }
        txt.drops += discards;
        BurstOutcome {
            done,
            received,
            tx: txt,
            rx: rxt,
            raise: if written > 0 { *rx_vector } else { None },
        }
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

/// The per-queue counters of an attached data path, readable from any thread, and its capture
/// tap.
#[derive(Debug, Clone)]
pub struct DatapathStats {
    queues: Arc<[Arc<QueueCounters>]>,
    capture: Arc<Capture>,
    worker: Arc<WorkerCounters>,
}

/// What [`attach`] returns: the data path's counters and controls.
pub type DatapathHandle = DatapathStats;

impl DatapathStats {
    /// Starts writing every frame the data path handles (TX taken from the client, RX
    /// delivered to it) to a new pcap file at `path` (created or truncated).
    pub fn capture_start(&self, path: impl AsRef<Path>) -> Result<(), CaptureStartError> {
        self.capture.start(path.as_ref(), 0)
    }

    /// Like [`DatapathStats::capture_start`], keeping only the first `frames` frames (the tap
    /// goes quiet after them; `capture_stop` still closes the file).
    pub fn capture_start_first(
        &self,
        path: impl AsRef<Path>,
        frames: u64,
    ) -> Result<(), CaptureStartError> {
        self.capture.start(path.as_ref(), frames)
    }

    /// Stops the capture and flushes its file; returns the frames written.
    pub fn capture_stop(&self) -> Result<u64, CaptureStopError> {
        self.capture.stop()
    }

    /// Frames written by the running capture (`None`: no capture runs).
    pub fn capture_frames(&self) -> Option<u64> {
        self.capture.frames()
    }

    /// The polling worker's sleeps and the kicks that ended them (zero for an inline data
    /// path, which has no worker).
    pub fn worker(&self) -> WorkerStats {
        self.worker.snapshot()
    }

    /// Queue pair `q`'s counters now.
    pub fn queue(&self, q: u16) -> Option<QueueStats> {
        self.queues.get(usize::from(q)).map(|c| c.snapshot())
    }

    /// Every queue pair's counters now, in queue order.
    pub fn queues(&self) -> Vec<QueueStats> {
        self.queues.iter().map(|c| c.snapshot()).collect()
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
                tx_offloaded: t.tx_offloaded + s.tx_offloaded,
                tx_tso: t.tx_tso + s.tx_tso,
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

/// How a polled data path's worker runs.
#[derive(Clone)]
pub struct PollConfig {
    /// Empty polls spent spinning before the worker starts yielding, then sleeping.
    pub spin_polls: u32,
    /// Empty polls spent yielding the CPU after the spin, before sleeping.
    pub yield_polls: u32,
    /// The longest sleep between polls of an idle data path (the sleep doubles from 1 µs up to
    /// this).
    pub max_sleep: Duration,
    /// The longest sleep of an idle worker once the client has been seen to kick (the device
    /// has mem+kick doorbells, [`crate::IavfConfig::doorbell_kicks`], and the back-end
    /// originates nothing): a kick ends it at once. See the `wait` module for how a client
    /// that stops kicking is noticed.
    pub kicked_sleep: Duration,
    /// Empty polls spent spinning before sleeping once the client has been seen to kick (no
    /// yield phase then: a kick wakes the sleeper at once, so a long spin only burns CPU).
    pub kicked_spin_polls: u32,
    /// Called on the worker thread when it starts (to pin it to a CPU, say).
    pub on_start: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            spin_polls: 20_000,
            yield_polls: 1_000,
            max_sleep: Duration::from_millis(1),
            kicked_sleep: Duration::from_millis(100),
            kicked_spin_polls: 1_000,
            on_start: None,
        }
    }
}

impl std::fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConfig")
            .field("spin_polls", &self.spin_polls)
            .field("yield_polls", &self.yield_polls)
            .field("max_sleep", &self.max_sleep)
            .field("kicked_sleep", &self.kicked_sleep)
            .field("kicked_spin_polls", &self.kicked_spin_polls)
            .field("on_start", &self.on_start.is_some())
            .finish()
    }
}

impl PollConfig {
    /// How long the worker waits before its `idle`-th consecutive empty poll (`None`: spin or
    /// yield instead of sleeping).
    fn sleep_for(&self, idle: u32) -> Option<Duration> {
        let spun = self.spin_polls.saturating_add(self.yield_polls);
        if idle <= spun {
            return None;
        }
        let shift = (idle - spun - 1).min(20);
        Some(Duration::from_micros(1u64 << shift).min(self.max_sleep))
    }

    /// How long the worker sleeps before its `idle`-th consecutive empty poll: as
    /// [`PollConfig::sleep_for`], or, for a worker whose client kicks (`kicker`) and whose
    /// back-end originates nothing (nobody kicks for those frames), `kicked_sleep` once
    /// `kicked_spin_polls` empty polls were spun.
    fn idle_sleep(&self, idle: u32, kicker: bool, originates: bool) -> Option<Duration> {
        if kicker && !originates {
            (idle > self.kicked_spin_polls).then_some(self.kicked_sleep)
        } else {
            self.sleep_for(idle)
        }
    }
}

/// How the attached data path is driven.
#[derive(Debug, Clone)]
enum Mode {
    /// From the trapped `QTX_TAIL` write, on the server thread.
    Inline,
    /// By a worker thread polling every queue pair.
    Polled(PollConfig),
}

/// Attaches a software data path with `backend` to the device behind `handle` (after
/// [`crate::IavfDevice::serve`], which binds the DMA table). Queues enabled from then on are
/// serviced. Returns the per-queue counters and the capture tap.
///
/// On a device with trapped tails the data path runs synchronously from the `QTX_TAIL` write;
/// on one with doorbell pages ([`crate::IavfConfig::doorbell_pages`]) nobody is told about a
/// tail write, and a back-end that originates frames ([`Backend::originates`]) has nobody to
/// tell, so for those this attaches a polled data path ([`attach_polled`], default
/// [`PollConfig`]).
pub fn attach(
    handle: &IavfHandle,
    backend: Arc<dyn Backend>,
) -> Result<DatapathStats, AttachDatapathError> {
    attach_mode(handle, backend, None)
}

/// Attaches a software data path driven by one worker thread that polls every queue pair
/// (reading the tails from the doorbell pages when the device has them, else taking the
/// trapped tail writes), backing off when idle as `poll` says. The worker stops when the data
/// path is detached or the device closes.
pub fn attach_polled(
    handle: &IavfHandle,
    backend: Arc<dyn Backend>,
    poll: PollConfig,
) -> Result<DatapathStats, AttachDatapathError> {
    attach_mode(handle, backend, Some(poll))
}

fn attach_mode(
    handle: &IavfHandle,
    backend: Arc<dyn Backend>,
    poll: Option<PollConfig>,
) -> Result<DatapathStats, AttachDatapathError> {
    let pairs = handle.snapshot().tx.len();
    let queues: Arc<[Arc<QueueCounters>]> = (0..pairs)
        .map(|_| Arc::new(QueueCounters::default()))
        .collect();
    let capture = Arc::new(Capture::default());
    let worker = Arc::new(WorkerCounters::default());
    let mode = match poll {
        Some(cfg) => Mode::Polled(cfg),
        None if backend.originates() => Mode::Polled(PollConfig::default()),
        None => Mode::Inline,
    };
    let provider = IavfDatapath {
        device: handle.downgrade(),
        backend,
        counters: queues.clone(),
        capture: capture.clone(),
        mode,
        dma: None,
        pairs: Arc::from(Vec::new()),
        worker: None,
        worker_counters: worker.clone(),
    };
    handle.emu().attach_provider(Box::new(provider))?;
    Ok(DatapathStats {
        queues,
        capture,
        worker,
    })
}

/// The polling worker's handle: its stop flag, what it sleeps on, and its thread.
struct Worker {
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    waiter: Arc<Waiter>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn(
        pairs: Arc<[Mutex<PairEngine>]>,
        cfg: PollConfig,
        waiter: Waiter,
        originates: bool,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let waiter = Arc::new(waiter);
        let (s, r, w) = (stop.clone(), running.clone(), waiter.clone());
        let thread = std::thread::Builder::new()
            .name("iavf-datapath".into())
            .spawn(move || {
                if let Some(f) = cfg.on_start.as_ref() {
                    f();
                }
                poll_loop(&pairs, &cfg, &w, originates, &s);
                r.store(false, Ordering::Release);
            })?;
        Ok(Worker {
            stop,
            running,
            waiter,
            thread,
        })
    }

    /// Tells the worker to stop and waits a bounded time for it (it may be waiting for a lock
    /// the caller holds; then it finishes on its own right after).
    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.waiter.wake();
        let end = Instant::now() + Duration::from_millis(100);
        while self.running.load(Ordering::Acquire) && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(50));
        }
        if !self.running.load(Ordering::Acquire) {
            let _ = self.thread.join();
        }
    }
}

/// The worker: polls every pair; after a run of empty polls spins, then yields, then sleeps
/// on its eventfds with a doubling timeout (up to `kicked_sleep` while the client kicks).
/// Counters and interrupts are published with the pair released.
fn poll_loop(
    pairs: &[Mutex<PairEngine>],
    cfg: &PollConfig,
    waiter: &Waiter,
    originates: bool,
    stop: &AtomicBool,
) {
    let mut idle: u32 = 0;
    // The client has kicked and nothing moved without a kick since.
    let mut kicker = false;
    let mut timed_out = false;
    while !stop.load(Ordering::Acquire) {
        let mut work = 0;
        for slot in pairs {
            let (out, counters, device) = {
                let mut p = lock(slot);
                p.refresh_tails();
                let out = p.burst(BURST);
                if out.tx == Tally::default() && out.rx == Tally::default() {
                    continue;
                }
                (out, p.counters.clone(), p.device.clone())
            };
            work += out.done + out.received;
            out.publish(&counters, &device);
        }
        if work > 0 {
            // Tails moved while the worker slept through its timeout: not kicked.
            kicker &= !timed_out;
            timed_out = false;
            idle = 0;
            continue;
        }
        timed_out = false;
        idle = idle.saturating_add(1);
        match cfg.idle_sleep(idle, kicker, originates) {
            Some(d) => match waiter.sleep(d) {
                Woken::Kick => kicker = true,
                Woken::Timeout => timed_out = true,
                Woken::Waker => {}
            },
            None if idle > cfg.spin_polls => std::thread::yield_now(),
            None => std::hint::spin_loop(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The provider: one [`PairEngine`] per queue pair, driven from the TX doorbell (inline) or
/// by a worker (polled). Each pair sits behind its own mutex, taken once per burst and by the
/// queue callbacks, so a queue stopped here is never touched by the worker afterwards.
struct IavfDatapath {
    device: WeakIavfHandle,
    backend: Arc<dyn Backend>,
    counters: Arc<[Arc<QueueCounters>]>,
    capture: Arc<Capture>,
    mode: Mode,
    dma: Option<Arc<DmaTable>>,
    pairs: Arc<[Mutex<PairEngine>]>,
    worker: Option<Worker>,
    worker_counters: Arc<WorkerCounters>,
}

impl Drop for IavfDatapath {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Which pair and direction an emudev queue is: `(pair, is_tx)`.
fn decode_queue(id: emudev::QueueId) -> Option<(u16, bool)> {
    let n = id.0.checked_sub(queue_ids::tx(0).0)?;
    let pair = u16::try_from(n / 2).ok()?;
    Some((pair, n % 2 == 0))
}

impl IavfDatapath {
    fn pair(&self, q: u16) -> Option<MutexGuard<'_, PairEngine>> {
        self.pairs.get(usize::from(q)).map(lock)
    }
}

/// The kick eventfds of the first `n` pairs' tail doorbells (mem+kick doorbells).
fn kick_fds(dev: &DeviceView, n: u16) -> Vec<Arc<std::os::fd::OwnedFd>> {
    (0..n)
        .flat_map(|q| [queue_ids::tx_doorbell(q), queue_ids::rx_doorbell(q)])
        .filter_map(|id| dev.get_db_info(id).ok()?.kind.eventfd().cloned())
        .collect()
}

/// The doorbell-page words of pair `q`'s tails, if the device put them on pages.
fn bells(dev: &DeviceView, q: u16) -> Option<(DoorbellMem, DoorbellMem)> {
    let tx = dev.get_db_info(queue_ids::tx_doorbell(q)).ok()?.mem?;
    let rx = dev.get_db_info(queue_ids::rx_doorbell(q)).ok()?.mem?;
    Some((tx, rx))
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
        let pages = bells(&dev, 0).is_some();
        if pages && matches!(self.mode, Mode::Inline) {
            self.mode = Mode::Polled(PollConfig::default());
        }
        self.dma = Some(dma.clone());
        // The device's queue count, <= 16.
        let n = self.counters.len() as u16;
        let originates = self.backend.originates();
        let pairs: Vec<Mutex<PairEngine>> = (0..n)
            .map(|q16| {
                let q = usize::from(q16);
                Mutex::new(PairEngine {
                    queue: q16,
                    dma: dma.clone(),
                    device: self.device.clone(),
                    backend: self.backend.queue(q16, n),
                    originates,
                    capture: self.capture.clone(),
                    tx: None,
                    rx: None,
                    rx_vector: None,
                    counters: self.counters[q].clone(),
                    bells: bells(&dev, q16),
                })
            })
            .collect();
        self.pairs = Arc::from(pairs);
        if let Mode::Polled(cfg) = &self.mode {
            let rejected =
                |e| ProviderError::Rejected(format!("cannot start the data-path worker: {e}"));
            let waiter =
                Waiter::new(kick_fds(&dev, n), self.worker_counters.clone()).map_err(rejected)?;
            let w = Worker::spawn(self.pairs.clone(), cfg.clone(), waiter, originates)
                .map_err(rejected)?;
            self.worker = Some(w);
        }
        let kicks = self.worker.as_ref().is_some_and(|w| w.waiter.has_kicks());
        log::debug!(
            "iavf {}: {} data path attached ({}, {} tails)",
            dev.name(),
            self.backend.name(),
            if self.worker.is_some() {
                "polled"
            } else {
                "inline"
            },
            match (pages, kicks) {
                (true, true) => "mmapped and kicked",
                (true, false) => "mmapped",
                _ => "trapped",
            }
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
        // Where a previous data path left this queue (detach and attach while it runs).
        let head = dev.take_queue_head(q, is_tx).unwrap_or(0);
        if is_tx {
            let mut tx = TxEngine::new(info.base.0, info.size);
            tx.set_head(head);
            tx.set_tail(tails.0);
            if let Some(mut p) = self.pair(q) {
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
            rx.set_head(head);
            rx.set_tail(tails.1);
            let vector = info.irq_vector.and_then(|v| u16::try_from(v).ok());
            if let Some(mut p) = self.pair(q) {
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
        let head = self.pair(q).and_then(|mut p| {
            if is_tx {
                p.tx.take().map(|t| t.head())
            } else {
                p.rx_vector = None;
                p.rx.take().map(|r| r.head())
            }
        });
        // Parked with the pair released (the device takes its own lock).
        if let (Some(h), Some(dev)) = (head, self.device.upgrade()) {
            dev.park_queue_head(q, is_tx, h);
        }
    }

    fn doorbell_rung(&mut self, info: &QueueInfo, value: u64) {
        let Some((q, is_tx)) = decode_queue(info.id) else {
            return;
        };
        {
            let Some(mut p) = self.pair(q) else {
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
        }
        match &self.worker {
            // A trapped tail write: the worker need not wait out its idle sleep.
            Some(w) => w.waiter.wake(),
            None if is_tx => self.drive(q),
            None => {}
        }
    }

    fn detach(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.pairs = Arc::from(Vec::new());
        self.dma = None;
    }
}

impl IavfDatapath {
    /// Inline mode: polls pair `q` until its TX ring is empty (bounded by one pass over the
    /// ring). Polled mode: the worker will.
    fn drive(&self, q: u16) {
        if self.worker.is_some() {
            return;
        }
        let Some(mut p) = self.pair(q) else {
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
