//! The `channel` back-end: frames cross to and from the application (the TypeScript back-end
//! through the Node binding) through bounded per-queue queues. A slow path: each frame is a
//! `Vec<u8>` of its own.
//!
//! - Toward the application: what the client sends on queue q waits in queue q's outbound
//!   queue; when it is full the frame is dropped and counted (a TX discard of the device queue
//!   and [`ChannelStats::dropped`]).
//! - From the application: [`ChannelPort::send`] queues a frame for queue q's RX; the data
//!   path delivers it when the client has posted RX descriptors for it (it waits otherwise).
//!
//! Channel queues are numbered like the device's queue pairs, 0..16, whatever the device's
//! queue count; frames sent to a queue the device does not have wait there until it has.
//!
//! **Waiting.** [`ChannelPort::wait`] blocks (with a timeout) until a frame toward the
//! application is waiting. For an event loop, [`ChannelPort::event_fd`] is an eventfd that
//! becomes readable when a queue toward the application goes from empty to non-empty: call
//! [`ChannelPort::clear_event`] *first*, then [`ChannelPort::recv_any`] until it returns
//! `None`; a frame arriving after that makes the fd readable again.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{lock, Backend, BackendQueue, RxSink};
use crate::device::MAX_FRAME_SIZE;
use crate::spec::regs::MAX_QUEUE_PAIRS;

/// Frames each queue holds in each direction unless told otherwise.
pub const CHANNEL_DEFAULT_CAPACITY: usize = 1024;

const QUEUES: usize = MAX_QUEUE_PAIRS as usize;

/// Why a channel could not be made.
#[derive(Debug, Error)]
pub enum CreateChannelError {
    /// The eventfd could not be created.
    #[error("cannot create the channel's eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Why [`ChannelPort::send`] refused a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelSendError {
    /// The queue toward the device already holds its capacity.
    #[error("channel queue {queue} is full")]
    Full {
        /// The queue.
        queue: u16,
    },
    /// No such queue (0..16).
    #[error("channel queue {queue} does not exist (0..16)")]
    NoSuchQueue {
        /// The queue.
        queue: u16,
    },
    /// An empty frame, or one longer than the device can receive.
    #[error("frame of {len} bytes: must be 1..=9728")]
    Length {
        /// Its length.
        len: usize,
    },
}

/// One queue's two directions.
#[derive(Default)]
struct ChanQueue {
    to_app: Mutex<VecDeque<Vec<u8>>>,
    from_app: Mutex<VecDeque<Vec<u8>>>,
    /// `from_app.len()`, readable without the lock.
    from_app_len: AtomicUsize,
}

struct ChannelShared {
    queues: [ChanQueue; QUEUES],
    capacity: usize,
    event: OwnedFd,
    /// Bumped (with `cond` notified) when a queue toward the application becomes non-empty.
    generation: Mutex<u64>,
    cond: Condvar,
    /// Frames waiting toward the application, over every queue.
    to_app_len: AtomicUsize,
    next_any: AtomicUsize,
    to_app: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

impl ChannelShared {
    fn signal(&self) {
        // A full counter (EAGAIN) is still readable: nothing is lost.
        let _ = rustix::io::write(&self.event, &1u64.to_ne_bytes());
        let mut g = lock(&self.generation);
        *g = g.wrapping_add(1);
        self.cond.notify_all();
    }

    fn queue(&self, q: u16) -> Option<&ChanQueue> {
        self.queues.get(usize::from(q))
    }
}

/// The `channel` back-end (device side). [`ChannelBackend::port`] gives the application side.
#[derive(Clone)]
pub struct ChannelBackend {
    shared: Arc<ChannelShared>,
}

/// The application's side of a channel: `Send + Sync + Clone`.
#[derive(Clone)]
pub struct ChannelPort {
    shared: Arc<ChannelShared>,
}

/// A channel's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Frames the client sent that were queued toward the application.
    pub to_app: u64,
    /// Frames the client sent that were dropped (the queue toward the application was full).
    pub dropped: u64,
    /// Frames from the application delivered into the client's RX.
    pub delivered: u64,
}

impl std::fmt::Debug for ChannelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBackend")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ChannelPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPort")
            .field("capacity", &self.shared.capacity)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl ChannelBackend {
    /// A channel whose queues hold `capacity` frames each way (at least 1).
    pub fn new(capacity: usize) -> Result<Self, CreateChannelError> {
        use rustix::event::{eventfd, EventfdFlags};
        let event = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| CreateChannelError::EventFd(e.into()))?;
        Ok(ChannelBackend {
            shared: Arc::new(ChannelShared {
                queues: Default::default(),
                capacity: capacity.max(1),
                event,
                generation: Mutex::new(0),
                cond: Condvar::new(),
                to_app_len: AtomicUsize::new(0),
                next_any: AtomicUsize::new(0),
                to_app: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
            }),
        })
    }

    /// The application's side.
    pub fn port(&self) -> ChannelPort {
        ChannelPort {
            shared: self.shared.clone(),
        }
    }
}

impl ChannelPort {
    /// Queues `frame` for the client's RX on queue `queue`.
    pub fn send(&self, queue: u16, frame: &[u8]) -> Result<(), ChannelSendError> {
        if frame.is_empty() || frame.len() > MAX_FRAME_SIZE as usize {
            return Err(ChannelSendError::Length { len: frame.len() });
        }
        let q = self
            .shared
            .queue(queue)
            .ok_or(ChannelSendError::NoSuchQueue { queue })?;
        let mut g = lock(&q.from_app);
        if g.len() >= self.shared.capacity {
            return Err(ChannelSendError::Full { queue });
        }
        g.push_back(frame.to_vec());
        q.from_app_len.store(g.len(), Ordering::Release);
        Ok(())
    }

    /// The oldest frame the client sent on `queue`, if any.
    pub fn recv(&self, queue: u16) -> Option<Vec<u8>> {
        let q = self.shared.queue(queue)?;
        let f = lock(&q.to_app).pop_front()?;
        self.shared.to_app_len.fetch_sub(1, Ordering::AcqRel);
        Some(f)
    }

    /// The oldest frame of some queue that has one, and its queue; queues take turns.
    pub fn recv_any(&self) -> Option<(u16, Vec<u8>)> {
        if self.shared.to_app_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let start = self.shared.next_any.fetch_add(1, Ordering::Relaxed);
        (0..QUEUES).find_map(|i| {
            // i < 16: fits u16.
            let q = ((start + i) % QUEUES) as u16;
            self.recv(q).map(|f| (q, f))
        })
    }

    /// Frames waiting toward the application, over every queue.
    pub fn pending(&self) -> usize {
        self.shared.to_app_len.load(Ordering::Acquire)
    }

    /// Frames from the application not yet delivered on `queue` (0 for no such queue).
    pub fn queued_for_rx(&self, queue: u16) -> usize {
        self.shared
            .queue(queue)
            .map_or(0, |q| q.from_app_len.load(Ordering::Acquire))
    }

    /// Waits until a frame toward the application is waiting (true) or `timeout` passes
    /// (false).
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.generation);
        loop {
            if self.pending() > 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// The eventfd that becomes readable when frames arrive for the application (see the
    /// module documentation for the order of clearing and draining).
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.shared.event.as_fd()
    }

    /// Resets the eventfd (it is non-blocking: nothing happens if it was not readable).
    pub fn clear_event(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.shared.event, &mut buf);
    }

    /// The channel's counts now.
    pub fn stats(&self) -> ChannelStats {
        let s = &self.shared;
        ChannelStats {
            to_app: s.to_app.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
        }
    }
}

struct ChannelQueue {
    shared: Arc<ChannelShared>,
    queue: usize,
}

impl ChannelQueue {
    fn q(&self) -> &ChanQueue {
        &self.shared.queues[self.queue]
    }
}

impl BackendQueue for ChannelQueue {
    fn transmit(&mut self, frame: &[u8], _local_rx: &mut dyn RxSink) -> bool {
        let s = &*self.shared;
        let became_ready = {
            let mut g = lock(&self.q().to_app);
            if g.len() >= s.capacity {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            g.push_back(frame.to_vec());
            s.to_app_len.fetch_add(1, Ordering::AcqRel);
            g.len() == 1
        };
        s.to_app.fetch_add(1, Ordering::Relaxed);
        if became_ready {
            s.signal();
        }
        true
    }

    fn receive(&mut self, rx: &mut dyn RxSink, budget: usize) -> usize {
        let q = self.q();
        if q.from_app_len.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut g = lock(&q.from_app);
        let mut n = 0;
        while n < budget {
            let Some(f) = g.front() else {
                break;
            };
            if !rx.fits(f.len()) {
                break;
            }
            rx.deliver(f);
            g.pop_front();
            n += 1;
        }
        q.from_app_len.store(g.len(), Ordering::Release);
        drop(g);
        self.shared.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn rx_pending(&self) -> bool {
        self.q().from_app_len.load(Ordering::Acquire) > 0
    }
}

impl Backend for ChannelBackend {
    fn name(&self) -> &'static str {
        "channel"
    }

    fn queue(&self, queue: u16, _queues: u16) -> Box<dyn BackendQueue> {
        Box::new(ChannelQueue {
            shared: self.shared.clone(),
            queue: usize::from(queue).min(QUEUES - 1),
        })
    }

    fn originates(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::VecSink;
    use super::*;
    use rustix::event::{poll, PollFd, PollFlags};

    fn readable(port: &ChannelPort) -> bool {
        let mut fds = [PollFd::new(&port.shared.event, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).expect("poll") == 1
    }

    #[test]
    fn client_frames_reach_the_application_and_back() {
        let ch = ChannelBackend::new(4).expect("channel");
        let port = ch.port();
        assert!(ch.originates());
        let mut q0 = ch.queue(0, 2);
        let mut q1 = ch.queue(1, 2);
        let mut rx = VecSink::new(8);
        assert!(!readable(&port));
        assert!(q0.transmit(b"from q0", &mut rx));
        assert!(q1.transmit(b"from q1", &mut rx));
        assert!(rx.frames.is_empty(), "nothing loops back");
        assert!(readable(&port));
        assert_eq!(port.pending(), 2);
        port.clear_event();
        assert!(!readable(&port));
        assert_eq!(port.recv(1), Some(b"from q1".to_vec()));
        assert_eq!(port.recv_any(), Some((0, b"from q0".to_vec())));
        assert_eq!(port.recv_any(), None);
        assert_eq!(port.recv(99), None);
        // The application answers on queue 1.
        assert!(!q1.rx_pending());
        port.send(1, b"reply").expect("send");
        assert_eq!(port.queued_for_rx(1), 1);
        assert!(q1.rx_pending() && !q0.rx_pending());
        assert_eq!(q0.receive(&mut rx, 32), 0);
        assert_eq!(q1.receive(&mut rx, 32), 1);
        assert_eq!(rx.frames, vec![b"reply".to_vec()]);
        assert_eq!(
            port.stats(),
            ChannelStats {
                to_app: 2,
                dropped: 0,
                delivered: 1
            }
        );
    }

    #[test]
    fn bounds_are_enforced_both_ways() {
        let ch = ChannelBackend::new(2).expect("channel");
        let port = ch.port();
        let mut q = ch.queue(0, 1);
        let mut rx = VecSink::new(0);
        assert!(q.transmit(b"1", &mut rx));
        assert!(q.transmit(b"2", &mut rx));
        assert!(!q.transmit(b"3", &mut rx), "full toward the application");
        assert_eq!(port.stats().dropped, 1);
        port.send(0, b"a").expect("a");
        port.send(0, b"b").expect("b");
        assert_eq!(port.send(0, b"c"), Err(ChannelSendError::Full { queue: 0 }));
        assert_eq!(
            port.send(16, b"c"),
            Err(ChannelSendError::NoSuchQueue { queue: 16 })
        );
        assert_eq!(port.send(0, b""), Err(ChannelSendError::Length { len: 0 }));
        assert_eq!(
            port.send(0, &vec![0; 9729]),
            Err(ChannelSendError::Length { len: 9729 })
        );
        // RX without descriptors: the frames wait.
        assert_eq!(q.receive(&mut rx, 32), 0);
        assert_eq!(port.queued_for_rx(0), 2);
        rx.room = 1;
        assert_eq!(q.receive(&mut rx, 32), 1);
        assert_eq!(rx.frames, vec![b"a".to_vec()]);
    }

    #[test]
    fn wait_returns_when_a_frame_arrives_and_times_out_otherwise() {
        let ch = ChannelBackend::new(8).expect("channel");
        let port = ch.port();
        let t0 = Instant::now();
        assert!(!port.wait(Duration::from_millis(20)));
        assert!(t0.elapsed() >= Duration::from_millis(20));
        let mut q = ch.queue(3, 4);
        let waiter = {
            let port = port.clone();
            std::thread::spawn(move || port.wait(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(q.transmit(b"wake", &mut VecSink::new(0)));
        assert!(waiter.join().expect("waiter"));
        assert!(port.wait(Duration::ZERO), "still there");
        assert_eq!(port.recv(3), Some(b"wake".to_vec()));
    }
}
