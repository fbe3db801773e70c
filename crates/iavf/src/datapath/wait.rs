//! How an idle polling worker sleeps: on its own waker eventfd (signalled to stop it and on
//! trapped tail writes) and on the kick eventfds of the device's mem+kick doorbells (signalled
//! by a client after it stores a tail on the doorbell page).
//!
//! Whether the client kicks is learnt, not configured: a sleep ended by a kick marks the
//! client as a kicker, and an idle worker then sleeps up to [`super::PollConfig::kicked_sleep`];
//! a sleep that timed out and was followed by work means tails moved without a kick (QEMU
//! maps the page into a guest and never kicks), and the worker goes back to the short polling
//! schedule. No wake-up is lost either way: an eventfd signalled before the worker sleeps
//! stays readable until it is drained.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

/// Counters of a polling worker, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    sleeps: AtomicU64,
    kicks: AtomicU64,
}

/// A snapshot of a polling worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Times the idle worker slept (on its eventfds, with a timeout).
    pub sleeps: u64,
    /// Of those, sleeps a client's kick ended.
    pub kicks: u64,
}

impl WorkerCounters {
    pub(crate) fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            sleeps: self.sleeps.load(Ordering::Relaxed),
            kicks: self.kicks.load(Ordering::Relaxed),
        }
    }
}

/// Why a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The timeout passed.
    Timeout,
    /// The waker (stop, a trapped tail write).
    Waker,
    /// A client's kick.
    Kick,
}

/// The eventfds an idle worker sleeps on.
#[derive(Debug)]
pub(crate) struct Waiter {
    waker: OwnedFd,
    kicks: Vec<Arc<OwnedFd>>,
    counters: Arc<WorkerCounters>,
}

impl Waiter {
    /// A waiter with a new waker and the device's kick eventfds (each at most once).
    pub(crate) fn new(
        kicks: Vec<Arc<OwnedFd>>,
        counters: Arc<WorkerCounters>,
    ) -> std::io::Result<Self> {
        let waker = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let mut unique: Vec<Arc<OwnedFd>> = Vec::with_capacity(kicks.len());
        for k in kicks {
            if !unique.iter().any(|u| Arc::ptr_eq(u, &k)) {
                unique.push(k);
            }
        }
        Ok(Waiter {
            waker,
            kicks: unique,
            counters,
        })
    }

    /// Whether the device has kick eventfds at all.
    pub(crate) fn has_kicks(&self) -> bool {
        !self.kicks.is_empty()
    }

    /// Ends the current (or the next) sleep. Callable from any thread.
    pub(crate) fn wake(&self) {
        signal(&self.waker);
    }

    /// Sleeps until an eventfd is signalled or `timeout` passes; drains what was signalled.
    pub(crate) fn sleep(&self, timeout: Duration) -> Woken {
        self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + self.kicks.len());
        fds.push(PollFd::new(&self.waker, PollFlags::IN));
        fds.extend(self.kicks.iter().map(|k| PollFd::new(&**k, PollFlags::IN)));
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // EINTR and friends: treated as a timeout; the worker polls again either way.
        if poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            return Woken::Timeout;
        }
        // fds[0] is the waker, fds[1..] the kicks in order; a kick outranks the waker.
        let mut woken = Woken::Timeout;
        for (i, f) in fds
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
        {
            drain(f);
            woken = if i == 0 { Woken::Waker } else { Woken::Kick };
        }
        if woken == Woken::Kick {
            self.counters.kicks.fetch_add(1, Ordering::Relaxed);
        }
        woken
    }
}

/// Adds 1 to an eventfd (non-blocking; a counter at its maximum is already signalled).
pub(crate) fn signal(fd: impl AsFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets a non-blocking eventfd's counter.
fn drain(fd: impl AsFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efd() -> Arc<OwnedFd> {
        Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd"))
    }

    #[test]
    fn a_sleep_ends_on_its_timeout_the_waker_or_a_kick() {
        let k = efd();
        let counters = Arc::new(WorkerCounters::default());
        let w = Waiter::new(vec![k.clone(), k.clone()], counters.clone()).expect("waiter");
        assert!(w.has_kicks());
        assert_eq!(w.kicks.len(), 1, "a shared kick fd is waited on once");
        assert_eq!(w.sleep(Duration::from_millis(1)), Woken::Timeout);
        // Signalled before the sleep: not lost.
        w.wake();
        assert_eq!(w.sleep(Duration::from_secs(30)), Woken::Waker);
        signal(&*k);
        assert_eq!(w.sleep(Duration::from_secs(30)), Woken::Kick);
        // Drained: the next sleep times out again.
        assert_eq!(w.sleep(Duration::from_millis(20)), Woken::Timeout);
        assert_eq!(
            counters.snapshot(),
            WorkerStats {
                sleeps: 4,
                kicks: 1
            }
        );
        // Another thread's wake ends a long sleep.
        let w = Arc::new(w);
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        w.wake();
        assert_eq!(t.join().expect("sleeper"), Woken::Waker);
    }

    #[test]
    fn without_kicks_only_the_waker_counts() {
        let w = Waiter::new(Vec::new(), Arc::default()).expect("waiter");
        assert!(!w.has_kicks());
        w.wake();
        assert_eq!(w.sleep(Duration::from_secs(30)), Woken::Waker);
    }
}
