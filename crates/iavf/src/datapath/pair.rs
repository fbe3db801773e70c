//! The `pair` back-end: two emulated VFs joined by a virtual cable. What queue q of one side
//! transmits arrives on the RX of queue q of the other side.
//!
//! **Folding.** When the receiving side has fewer queue pairs (`n`) than the sender, sender
//! queue q arrives on receiver queue `q % n`; receiver queue r then takes turns (round robin,
//! one burst at a time) between every sender queue that folds onto it. The queue counts are
//! those each side's data path was attached with.
//!
//! **Wires.** Per direction there is one bounded single-producer/single-consumer ring
//! ([`super::spsc`]) per *sender* queue, made when that queue is first opened, with
//! preallocated slots: nothing is allocated per packet, and because each ring has exactly one
//! sender queue and one receiver queue, folding keeps every ring single-producer. A sender
//! whose ring is full, or whose peer has no data path attached (link down), drops the frame
//! and counts it on its own side (a TX discard of its queue, and [`PairStats::dropped`]).
//! A receiver only takes a frame when its RX ring has descriptors for it
//! ([`RxSink::fits`]); until then the frame waits in the ring, which is how a slow receiver
//! pushes back on the sender.
//!
//! **Meeting by name.** [`PairRegistry`] joins `backend=pair:emu_iavf1` given to `emu_iavf0`
//! with `backend=pair:emu_iavf0` given to `emu_iavf1`, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use thiserror::Error;

use super::spsc::{self, Consumer, Probe, Producer};
use super::{lock, Backend, BackendQueue, RxSink};
use crate::spec::regs::MAX_QUEUE_PAIRS;

/// Frames each ring holds unless told otherwise.
pub const PAIR_DEFAULT_CAPACITY: usize = 1024;

/// Bytes preallocated per slot (a full-size 1500-MTU frame fits; larger frames grow their
/// slot once).
const SLOT_BYTES: usize = 2048;

const QUEUES: usize = MAX_QUEUE_PAIRS as usize;

/// A ring end waiting for a queue to pick it up (a queue hands it back when it is dropped).
struct Parked<T> {
    slot: Mutex<Option<T>>,
    parked: AtomicBool,
}

impl<T> Parked<T> {
    fn new(v: T) -> Self {
        Parked {
            slot: Mutex::new(Some(v)),
            parked: AtomicBool::new(true),
        }
    }

    /// The end, if nobody holds it (one atomic load when somebody does).
    fn take(&self) -> Option<T> {
        if !self.parked.load(Ordering::Acquire) {
            return None;
        }
        let mut g = lock(&self.slot);
        let v = g.take();
        self.parked.store(false, Ordering::Release);
        v
    }

    fn put(&self, v: T) {
        let mut g = lock(&self.slot);
        *g = Some(v);
        self.parked.store(true, Ordering::Release);
    }

    fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }
}

/// One sender queue's ring, both ends parked until the queues on either side take them.
struct Wire {
    producer: Parked<Producer>,
    consumer: Parked<Consumer>,
    probe: Probe,
}

/// The frames one side sends.
struct Direction {
    /// By sender queue.
    wires: [OnceLock<Wire>; QUEUES],
    sent: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            wires: std::array::from_fn(|_| OnceLock::new()),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }
}

/// Both directions of one cable.
struct PairShared {
    capacity: usize,
    /// `dirs[s]`: what side `s` sends.
    dirs: [Direction; 2],
    /// Queues currently open on each side (0: that side's data path is not attached).
    open: [AtomicUsize; 2],
}

impl PairShared {
    fn wire(&self, side: usize, queue: usize) -> Option<&Wire> {
        let cap = self.capacity;
        self.dirs[side].wires.get(queue).map(|w| {
            w.get_or_init(|| {
                let (p, c) = spsc::ring(cap, SLOT_BYTES);
                Wire {
                    probe: p.probe(),
                    producer: Parked::new(p),
                    consumer: Parked::new(c),
                }
            })
        })
    }
}

/// Makes pairs: [`Pair::new`].
#[derive(Debug, Clone, Copy)]
pub struct Pair;

impl Pair {
    /// A cable whose rings hold `capacity` frames each (rounded up to a power of two): side 0
    /// and side 1, each a [`Backend`] for one device.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(capacity: usize) -> (Arc<PairSide>, Arc<PairSide>) {
        let shared = Arc::new(PairShared {
            capacity,
            dirs: [Direction::new(), Direction::new()],
            open: [AtomicUsize::new(0), AtomicUsize::new(0)],
        });
        (
            Arc::new(PairSide {
                shared: shared.clone(),
                side: 0,
            }),
            Arc::new(PairSide { shared, side: 1 }),
        )
    }
}

/// One end of a cable: the back-end of one device.
pub struct PairSide {
    shared: Arc<PairShared>,
    side: usize,
}

impl std::fmt::Debug for PairSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairSide")
            .field("side", &self.side)
            .field("stats", &self.stats())
            .finish()
    }
}

/// One side's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairStats {
    /// Frames this side put on the cable.
    pub sent: u64,
    /// Frames this side could not put on the cable (ring full, or the peer not attached).
    pub dropped: u64,
    /// Frames from the peer delivered into this side's RX.
    pub received: u64,
}

impl PairSide {
    /// This side's counts now.
    pub fn stats(&self) -> PairStats {
        let mine = &self.shared.dirs[self.side];
        let theirs = &self.shared.dirs[1 - self.side];
        PairStats {
            sent: mine.sent.load(Ordering::Relaxed),
            dropped: mine.dropped.load(Ordering::Relaxed),
            received: theirs.delivered.load(Ordering::Relaxed),
        }
    }

    /// Whether the other side has a data path attached.
    pub fn peer_attached(&self) -> bool {
        self.shared.open[1 - self.side].load(Ordering::Acquire) > 0
    }

    /// Frames one ring holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity.clamp(2, 1 << 20).next_power_of_two()
    }
}

impl Backend for PairSide {
    fn name(&self) -> &'static str {
        "pair"
    }

    fn queue(&self, queue: u16, queues: u16) -> Box<dyn BackendQueue> {
        let n = usize::from(queues).clamp(1, QUEUES);
        let q = usize::from(queue).min(QUEUES - 1);
        self.shared.open[self.side].fetch_add(1, Ordering::AcqRel);
        let producer = self
            .shared
            .wire(self.side, q)
            .and_then(|w| w.producer.take());
        let sources = (q % n..QUEUES).step_by(n).map(|s| (s, None)).collect();
        Box::new(PairQueue {
            shared: self.shared.clone(),
            side: self.side,
            queue: q,
            producer,
            sources,
            next: 0,
        })
    }

    fn originates(&self) -> bool {
        true
    }
}

/// One queue of one side: the producer of its own ring, the consumers of the peer's rings
/// that fold onto it.
struct PairQueue {
    shared: Arc<PairShared>,
    side: usize,
    queue: usize,
    producer: Option<Producer>,
    /// Peer sender queues folding onto this queue, with their consumer once taken.
    sources: Vec<(usize, Option<Consumer>)>,
    /// Where the next round robin starts.
    next: usize,
}

impl PairQueue {
    fn peer(&self) -> usize {
        1 - self.side
    }

    /// Picks up ring ends that were not free when the queue was made (the peer's sender
    /// queue opened later, or a previous holder was still being dropped).
    fn adopt(&mut self) {
        let peer = self.peer();
        for (s, c) in self.sources.iter_mut().filter(|(_, c)| c.is_none()) {
            if let Some(w) = self.shared.dirs[peer].wires[*s].get() {
                *c = w.consumer.take();
            }
        }
    }
}

impl BackendQueue for PairQueue {
    fn transmit(&mut self, frame: &[u8], _local_rx: &mut dyn RxSink) -> bool {
        let dir = &self.shared.dirs[self.side];
        if self.shared.open[self.peer()].load(Ordering::Acquire) == 0 {
            dir.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.producer.is_none() {
            self.producer = dir.wires[self.queue].get().and_then(|w| w.producer.take());
        }
        let pushed = self.producer.as_mut().is_some_and(|p| p.push(frame));
        let counter = if pushed { &dir.sent } else { &dir.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
        pushed
    }

    fn receive(&mut self, rx: &mut dyn RxSink, budget: usize) -> usize {
        self.adopt();
        let k = self.sources.len();
        let mut n = 0;
        'sources: for i in 0..k {
            let idx = (self.next + i) % k;
            let Some(c) = self.sources[idx].1.as_mut() else {
                continue;
            };
            while n < budget {
                let Some(f) = c.front() else {
                    break;
                };
                if !rx.fits(f.len()) {
                    // RX is full: the frame waits; start here next time.
                    self.next = idx;
                    break 'sources;
                }
                rx.deliver(f);
                c.pop();
                n += 1;
            }
            if n >= budget {
                self.next = (idx + 1) % k;
                break;
            }
        }
        if n > 0 {
            self.shared.dirs[self.peer()]
                .delivered
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn rx_pending(&self) -> bool {
        let peer = &self.shared.dirs[self.peer()];
        self.sources.iter().any(|(s, c)| match c {
            Some(c) => c.has_frames(),
            None => peer.wires[*s]
                .get()
                .is_some_and(|w| w.consumer.is_parked() && w.probe.has_frames()),
        })
    }
}

impl Drop for PairQueue {
    fn drop(&mut self) {
        let peer = self.peer();
        if let Some(p) = self.producer.take() {
            if let Some(w) = self.shared.dirs[self.side].wires[self.queue].get() {
                w.producer.put(p);
            }
        }
        for (s, c) in self.sources.iter_mut() {
            if let (Some(c), Some(w)) = (c.take(), self.shared.dirs[peer].wires[*s].get()) {
                w.consumer.put(c);
            }
        }
        self.shared.open[self.side].fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`PairRegistry::connect`] refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectPairError {
    /// `pair:<peer>` names the device itself.
    #[error("{device}: a device cannot be paired with itself")]
    SelfPair {
        /// The device.
        device: String,
    },
    /// A device or peer name is empty.
    #[error("pair: empty device name")]
    EmptyName,
    /// The device already has a live side of a cable.
    #[error("{device} is already paired with {peer}")]
    AlreadyPaired {
        /// The device.
        device: String,
        /// Its peer.
        peer: String,
    },
    /// The peer is paired (or waiting) with another device.
    #[error("{peer} is already paired with {with}")]
    PeerTaken {
        /// The peer asked for.
        peer: String,
        /// The device it is paired with.
        with: String,
    },
}

/// One cable known to a registry: the two names and the sides handed out.
struct Link {
    names: [String; 2],
    shared: Arc<PairShared>,
    sides: [Weak<PairSide>; 2],
}

impl Link {
    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn live(&self) -> bool {
        self.sides.iter().any(|s| s.strong_count() > 0)
    }
}

/// Where devices configured with `backend=pair:<peer>` find each other, by device name.
#[derive(Default)]
pub struct PairRegistry {
    links: Mutex<Vec<Link>>,
}

impl std::fmt::Debug for PairRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let links = lock(&self.links);
        let names: Vec<&[String; 2]> = links.iter().map(|l| &l.names).collect();
        f.debug_struct("PairRegistry")
            .field("links", &names)
            .finish()
    }
}

impl PairRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        PairRegistry::default()
    }

    /// The side of the cable between `device` and `peer` that belongs to `device`, with rings
    /// of [`PAIR_DEFAULT_CAPACITY`]. The first of the two to connect makes the cable; the
    /// other gets the far side. A device whose previous side was dropped (its data path
    /// detached for good) gets a new side on the same cable.
    pub fn connect(&self, device: &str, peer: &str) -> Result<Arc<PairSide>, ConnectPairError> {
        self.connect_with_capacity(device, peer, PAIR_DEFAULT_CAPACITY)
    }

    /// [`PairRegistry::connect`] with rings of `capacity` frames (used only by whichever of
    /// the two makes the cable).
    pub fn connect_with_capacity(
        &self,
        device: &str,
        peer: &str,
        capacity: usize,
    ) -> Result<Arc<PairSide>, ConnectPairError> {
        if device.is_empty() || peer.is_empty() {
            return Err(ConnectPairError::EmptyName);
        }
        if device == peer {
            return Err(ConnectPairError::SelfPair {
                device: device.to_string(),
            });
        }
        let mut links = lock(&self.links);
        links.retain(Link::live);
        if let Some(l) = links.iter_mut().find(|l| l.index(device).is_some()) {
            let me = l.index(device).unwrap_or(0);
            let other = &l.names[1 - me];
            if other != peer || l.sides[me].strong_count() > 0 {
                return Err(ConnectPairError::AlreadyPaired {
                    device: device.to_string(),
                    peer: other.clone(),
                });
            }
            let side = Arc::new(PairSide {
                shared: l.shared.clone(),
                side: me,
            });
            l.sides[me] = Arc::downgrade(&side);
            return Ok(side);
        }
        if let Some(l) = links.iter().find(|l| l.index(peer).is_some()) {
            let p = l.index(peer).unwrap_or(0);
            return Err(ConnectPairError::PeerTaken {
                peer: peer.to_string(),
                with: l.names[1 - p].clone(),
            });
        }
        let (a, b) = Pair::new(capacity);
        links.push(Link {
            names: [device.to_string(), peer.to_string()],
            shared: a.shared.clone(),
            sides: [Arc::downgrade(&a), Weak::new()],
        });
        drop(b);
        Ok(a)
    }

    /// Forgets every cable `device` is on (both names become free); true if there was one.
    /// Sides already handed out keep working until dropped.
    pub fn release(&self, device: &str) -> bool {
        let mut links = lock(&self.links);
        let before = links.len();
        links.retain(|l| l.index(device).is_none());
        links.len() != before
    }

    /// The device `device` is paired with (or waiting for), if any.
    pub fn peer_of(&self, device: &str) -> Option<String> {
        let mut links = lock(&self.links);
        links.retain(Link::live);
        links
            .iter()
            .find_map(|l| l.index(device).map(|i| l.names[1 - i].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::VecSink;
    use super::*;

    fn send(q: &mut dyn BackendQueue, frame: &[u8]) -> bool {
        q.transmit(frame, &mut VecSink::new(0))
    }

    #[test]
    fn frames_cross_in_both_directions_in_order() {
        let (a, b) = Pair::new(8);
        assert!(a.originates() && a.name() == "pair");
        let mut qa = a.queue(0, 1);
        let mut qb = b.queue(0, 1);
        assert!(!qa.rx_pending() && !qb.rx_pending());
        assert!(send(&mut *qa, b"one"));
        assert!(send(&mut *qa, b"two"));
        assert!(send(&mut *qb, b"back"));
        assert!(qb.rx_pending());
        let mut rb = VecSink::new(10);
        assert_eq!(qb.receive(&mut rb, 32), 2);
        assert_eq!(rb.frames, vec![b"one".to_vec(), b"two".to_vec()]);
        let mut ra = VecSink::new(10);
        assert_eq!(qa.receive(&mut ra, 32), 1);
        assert_eq!(ra.frames, vec![b"back".to_vec()]);
        assert!(!qb.rx_pending());
        assert_eq!(
            a.stats(),
            PairStats {
                sent: 2,
                dropped: 0,
                received: 1
            }
        );
        assert_eq!(b.stats().received, 2);
    }

    #[test]
    fn a_full_ring_drops_on_the_sender_and_a_full_rx_holds_frames() {
        let (a, b) = Pair::new(4);
        assert_eq!(a.capacity(), 4);
        let mut qa = a.queue(0, 1);
        let mut qb = b.queue(0, 1);
        for i in 0..4u8 {
            assert!(send(&mut *qa, &[i; 10]));
        }
        assert!(!send(&mut *qa, &[9; 10]), "ring full");
        assert_eq!(a.stats().dropped, 1);
        // RX has room for one: the others wait in the ring.
        let mut rb = VecSink::new(1);
        assert_eq!(qb.receive(&mut rb, 32), 1);
        assert_eq!(rb.refused, 0);
        assert!(qb.rx_pending());
        rb.room = 10;
        assert_eq!(qb.receive(&mut rb, 2), 2, "budget");
        assert_eq!(qb.receive(&mut rb, 32), 1);
        let firsts: Vec<u8> = rb.frames.iter().map(|f| f[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_peer_without_a_data_path_is_a_link_down() {
        let (a, b) = Pair::new(4);
        let mut qa = a.queue(0, 1);
        assert!(!a.peer_attached());
        assert!(!send(&mut *qa, b"lost"));
        assert_eq!(a.stats().dropped, 1);
        let qb = b.queue(0, 1);
        assert!(a.peer_attached());
        assert!(send(&mut *qa, b"kept"));
        drop(qb);
        assert!(!a.peer_attached());
        // The frame sent while attached is still there for the next data path.
        let mut qb = b.queue(0, 1);
        let mut rb = VecSink::new(4);
        assert_eq!(qb.receive(&mut rb, 32), 1);
        assert_eq!(rb.frames, vec![b"kept".to_vec()]);
    }

    #[test]
    fn more_sender_queues_fold_modulo_the_receivers_count() {
        let (a, b) = Pair::new(16);
        let mut qa: Vec<_> = (0..4).map(|q| a.queue(q, 4)).collect();
        let mut qb: Vec<_> = (0..2).map(|q| b.queue(q, 2)).collect();
        for (q, tx) in qa.iter_mut().enumerate() {
            assert!(send(&mut **tx, &[q as u8]));
        }
        let mut r0 = VecSink::new(10);
        let mut r1 = VecSink::new(10);
        assert_eq!(qb[0].receive(&mut r0, 32), 2);
        assert_eq!(qb[1].receive(&mut r1, 32), 2);
        let mut got0: Vec<u8> = r0.frames.iter().map(|f| f[0]).collect();
        let mut got1: Vec<u8> = r1.frames.iter().map(|f| f[0]).collect();
        got0.sort_unstable();
        got1.sort_unstable();
        assert_eq!((got0, got1), (vec![0, 2], vec![1, 3]));
        // The other way round: B's two queues land on A's queues 0 and 1.
        assert!(send(&mut *qb[1], b"x"));
        let mut r = VecSink::new(10);
        assert_eq!(qa[0].receive(&mut r, 32), 0);
        assert_eq!(qa[1].receive(&mut r, 32), 1);
    }

    #[test]
    fn round_robin_between_folded_sources_is_fair_under_a_budget() {
        let (a, b) = Pair::new(64);
        let mut q0 = a.queue(0, 2);
        let mut q1 = a.queue(1, 2);
        let mut rx = b.queue(0, 1);
        for _ in 0..10 {
            assert!(send(&mut *q0, &[0]));
            assert!(send(&mut *q1, &[1]));
        }
        let mut r = VecSink::new(100);
        assert_eq!(rx.receive(&mut r, 4), 4);
        assert_eq!(rx.receive(&mut r, 4), 4);
        let ones = r.frames.iter().filter(|f| f[0] == 1).count();
        assert!(ones >= 2, "both sources served: {:?}", r.frames);
    }

    #[test]
    fn a_requeued_side_picks_its_ring_ends_back_up() {
        let (a, b) = Pair::new(8);
        let qb = b.queue(0, 1);
        let qa = a.queue(0, 1);
        drop(qa);
        let mut qa = a.queue(0, 1);
        assert!(send(&mut *qa, b"again"));
        drop(qb);
        let mut qb = b.queue(0, 1);
        let mut r = VecSink::new(4);
        assert_eq!(qb.receive(&mut r, 8), 1);
        // Two live queues for the same sender queue: the second has no producer and drops
        // instead of breaking the single-producer rule.
        let mut twin = a.queue(0, 1);
        assert!(!send(&mut *twin, b"twin"));
        assert!(send(&mut *qa, b"first"));
    }

    #[test]
    fn the_registry_joins_two_names_whichever_comes_first_and_refuses_the_rest() {
        let reg = PairRegistry::new();
        assert_eq!(
            reg.connect("emu_iavf0", "emu_iavf0").map(|_| ()),
            Err(ConnectPairError::SelfPair {
                device: "emu_iavf0".into()
            })
        );
        assert_eq!(
            reg.connect("", "x").map(|_| ()),
            Err(ConnectPairError::EmptyName)
        );
        let b = reg.connect("emu_iavf1", "emu_iavf0").expect("first");
        assert_eq!(reg.peer_of("emu_iavf0").as_deref(), Some("emu_iavf1"));
        assert_eq!(
            reg.connect("emu_iavf2", "emu_iavf1").map(|_| ()),
            Err(ConnectPairError::PeerTaken {
                peer: "emu_iavf1".into(),
                with: "emu_iavf0".into()
            })
        );
        assert_eq!(
            reg.connect("emu_iavf1", "emu_iavf0").map(|_| ()),
            Err(ConnectPairError::AlreadyPaired {
                device: "emu_iavf1".into(),
                peer: "emu_iavf0".into()
            }),
            "the same name twice"
        );
        let a = reg.connect("emu_iavf0", "emu_iavf1").expect("second");
        assert!(matches!(
            reg.connect("emu_iavf0", "emu_iavf3"),
            Err(ConnectPairError::AlreadyPaired { .. })
        ));
        // They share a cable.
        let mut qa = a.queue(0, 1);
        let mut qb = b.queue(0, 1);
        assert!(send(&mut *qa, b"hi"));
        let mut r = VecSink::new(1);
        assert_eq!(qb.receive(&mut r, 1), 1);
        // A side dropped and asked for again: same cable.
        drop(qa);
        drop(a);
        let a2 = reg.connect("emu_iavf0", "emu_iavf1").expect("again");
        let mut qa = a2.queue(0, 1);
        assert!(send(&mut *qb, b"ho"));
        let mut r = VecSink::new(1);
        assert_eq!(qa.receive(&mut r, 1), 1);
        // Released: the names are free again.
        assert!(reg.release("emu_iavf1"));
        assert!(!reg.release("emu_iavf1"));
        assert!(reg.connect("emu_iavf2", "emu_iavf1").is_ok());
    }

    #[test]
    fn a_cable_nobody_holds_is_forgotten() {
        let reg = PairRegistry::new();
        drop(reg.connect("a", "b").expect("a"));
        assert_eq!(reg.peer_of("a"), None);
        assert!(reg.connect("c", "b").is_ok());
    }
}
