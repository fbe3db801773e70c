//! Interrupt moderation (ITR, "interrupt throttling rate") of the emulated VF's queue vectors,
//! as the 700-series hardware does it, as far as a software device can.
//!
//! ## The registers
//!
//! Every vector has three ITR intervals, in 2 µs units (12 bits, so at most 8.19 ms):
//! `VFINT_ITRN1(i, n)` for queue vector `n` (MSI-X vector `n + 1`) and `VFINT_ITR01(i)` for
//! vector 0, `i` = 0..=2. The driver writes them directly, or through the vector's dynamic
//! control register: a `DYN_CTLN1(n)` (or `DYN_CTL01`) write with `ITR_INDX = i` (0..=2) stores
//! its `INTERVAL` field in ITR `i` of that vector, as Linux's `iavf_buildreg_itr` uses it to
//! change the rate; `ITR_INDX = 3` ("NO_ITR") updates nothing. `SW_ITR_INDX_ENA` and
//! `SW_ITR_INDX` are stored and read back, and have no further effect.
//!
//! ## Which interval moderates a vector
//!
//! The one of the ITR index its RX cause was mapped with: the `rxitr_idx` that
//! `VIRTCHNL_OP_CONFIG_IRQ_MAP` gave the lowest-numbered RX queue on the vector (the data path
//! raises queue vectors after RX write-backs), or, with no RX queue on it, the `txitr_idx` of
//! its lowest-numbered TX queue. A vector without queues, or mapped with index 3, is not
//! moderated. Vector 0 uses `ITR01`, vectors `n + 1` use `ITRN1(·, n)`.
//!
//! ## Moderation ([`Moderator`])
//!
//! After an interrupt on a vector fires, another one on that vector is held until the interval
//! has passed since. A raise inside that window marks the vector pending, and the pending
//! interrupt fires once when the window ends: several raises in one window make one interrupt
//! (the later ones are *coalesced*, the one fired at the window's end is *deferred*; both are
//! counted, `irqs_coalesced` and `irqs_deferred` in [`super::IavfStats`]). An interval of 0
//! means no moderation: every raise fires at once, which is the power-on and post-reset state,
//! so a driver that never programs an ITR sees every interrupt as before.
//!
//! A new interval applies from the next raise on. An interrupt already pending keeps its
//! deadline, except that a raise under a shorter interval brings it forward; if that makes it
//! due, the raise fires it at once (one interrupt, counted as deferred, with the raise
//! coalesced into it).
//!
//! `DYN_CTL*.INTENA` gates as before: a raise on a vector the driver has not enabled is not
//! raised at all (`IrqOutcome::Gated`) and leaves moderation alone, and a pending interrupt
//! whose vector is not enabled when its window ends is dropped the same way (nothing fires,
//! nothing is counted, the window does not restart). A VF reset clears every vector's
//! moderation state, pending interrupts included.
//!
//! Only queue interrupts (`IavfHandle::raise_queue_irq`) are moderated. The admin-queue cause
//! on vector 0 and software triggers (`DYN_CTL*.SWINT_TRIG`) fire at once, as they did, and
//! do not open a window.
//!
//! `DYN_CTLN1.WB_ON_ITR` (write descriptors back when the ITR expires, for a driver polling
//! with interrupts off) needs nothing here: the data path writes every descriptor back at once.
//!
//! ## The timer ([`ItrTimer`])
//!
//! A deferred interrupt must go out when its window ends even if nothing else happens, so the
//! device has one timer thread, started on the first deferral (a device whose driver never
//! programs an ITR never starts it). It sleeps on a condition variable until the earliest
//! deadline it was given, then calls back into the device without holding its own lock; the
//! device fires what is due through the same path a raise uses and returns its next deadline.
//! The thread is stopped and joined when the device's shared state is dropped.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// One ITR unit.
pub const ITR_UNIT: Duration = Duration::from_micros(2);
/// The largest ITR interval value (12 bits).
pub const ITR_INTERVAL_MAX: u32 = 0xFFF;

/// The moderation window of an ITR register value (2 µs units, the low 12 bits count).
pub fn itr_interval(units: u32) -> Duration {
    ITR_UNIT * (units & ITR_INTERVAL_MAX)
}

/// What to do with one raise of a vector ([`Moderator::raise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No window open: fire now (a window opens).
    Fire,
    /// A pending interrupt's window is over: fire now; this raise is folded into it.
    FireDue,
    /// Inside the window: the vector is now pending and fires at the deadline.
    Deferred(Instant),
    /// Inside the window of an interrupt already pending (due at the deadline): folded into it.
    Coalesced(Instant),
}

/// The moderation state of one vector: when it last fired and, if a raise is held, when that
/// fires. Pure: every call takes the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Moderator {
    last_fire: Option<Instant>,
    pending: Option<Instant>,
}

impl Moderator {
    /// A raise at `now` under `interval`.
    pub(crate) fn raise(&mut self, now: Instant, interval: Duration) -> Decision {
        let window_end = self.last_fire.and_then(|t| t.checked_add(interval));
        if let Some(deadline) = self.pending {
            let deadline = window_end.map_or(deadline, |w| w.min(deadline));
            if deadline <= now {
                self.pending = None;
                self.last_fire = Some(now);
                return Decision::FireDue;
            }
            self.pending = Some(deadline);
            return Decision::Coalesced(deadline);
        }
        match window_end {
            Some(end) if !interval.is_zero() && end > now => {
                self.pending = Some(end);
                Decision::Deferred(end)
            }
            _ => {
                self.last_fire = Some(now);
                Decision::Fire
            }
        }
    }

    /// Takes the pending interrupt if it is due at `now`. The caller fires it (and then calls
    /// [`Moderator::fired`]) or drops it.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        match self.pending {
            Some(d) if d <= now => {
                self.pending = None;
                true
            }
            _ => false,
        }
    }

    /// Takes the pending interrupt whatever its deadline.
    pub(crate) fn take_pending(&mut self) -> bool {
        self.pending.take().is_some()
    }

    /// An interrupt taken from here fired at `now`: the next window starts.
    pub(crate) fn fired(&mut self, now: Instant) {
        self.last_fire = Some(now);
    }

    /// When the pending interrupt fires, if one is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending
    }

    /// Forgets everything (VF reset).
    pub(crate) fn reset(&mut self) {
        *self = Moderator::default();
    }
}

/// Why [`ItrTimer::schedule`] could not arm the timer.
#[derive(Debug, Error)]
pub(crate) enum StartItrTimerError {
    /// The timer thread could not be created.
    #[error("spawning the ITR timer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// What the timer calls when a deadline has passed: fire what is due at the given time and
/// return the next deadline, if any.
type ExpireFn = dyn Fn(Instant) -> Option<Instant> + Send + Sync;

#[derive(Debug, Default)]
struct TimerState {
    /// The earliest deadline the thread must wake up for.
    next: Option<Instant>,
    stop: bool,
}

struct TimerShared {
    state: Mutex<TimerState>,
    wake: Condvar,
    expire: Box<ExpireFn>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A lazily started timer thread for deferred interrupts (see the module documentation).
pub(crate) struct ItrTimer {
    shared: Arc<TimerShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ItrTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItrTimer")
            .field("state", &*lock(&self.shared.state))
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl ItrTimer {
    /// A timer that calls `expire` (never with the timer's own lock held) when a deadline
    /// passes. No thread runs until the first [`ItrTimer::schedule`].
    pub(crate) fn new(expire: impl Fn(Instant) -> Option<Instant> + Send + Sync + 'static) -> Self {
        ItrTimer {
            shared: Arc::new(TimerShared {
                state: Mutex::new(TimerState::default()),
                wake: Condvar::new(),
                expire: Box::new(expire),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Whether the thread has been started.
    pub(crate) fn running(&self) -> bool {
        lock(&self.thread).is_some()
    }

    /// Makes sure the thread wakes up by `deadline`, starting it if needed.
    pub(crate) fn schedule(&self, deadline: Instant) -> Result<(), StartItrTimerError> {
        {
            let mut thread = lock(&self.thread);
            if thread.is_none() {
                let shared = Arc::clone(&self.shared);
                let handle = std::thread::Builder::new()
                    .name("iavf-itr".into())
                    .spawn(move || run(&shared))
                    .map_err(StartItrTimerError::Spawn)?;
                *thread = Some(handle);
            }
        }
        let mut st = lock(&self.shared.state);
        if st.next.is_none_or(|n| deadline < n) {
            st.next = Some(deadline);
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for ItrTimer {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        let handle = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            // The last owner may go away inside the thread's own callback: then the thread
            // ends by itself as soon as the callback returns (it sees `stop`).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// The timer thread: sleep until the earliest deadline, expire, repeat; never busy.
fn run(shared: &TimerShared) {
    let mut st = lock(&shared.state);
    loop {
        if st.stop {
            return;
        }
        let Some(deadline) = st.next else {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let now = Instant::now();
        if deadline > now {
            st = shared
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        st.next = None;
        drop(st);
        let next = (shared.expire)(Instant::now());
        st = lock(&shared.state);
        if let Some(n) = next {
            st.next = Some(st.next.map_or(n, |m| m.min(n)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    const MS: Duration = Duration::from_millis(1);

    fn t(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn interval_is_in_two_microsecond_units_of_twelve_bits() {
        assert_eq!(itr_interval(0), Duration::ZERO);
        assert_eq!(itr_interval(1), Duration::from_micros(2));
        assert_eq!(itr_interval(4000), Duration::from_millis(8));
        assert_eq!(itr_interval(0xFFF), Duration::from_micros(8190));
        assert_eq!(
            itr_interval(0x1000),
            Duration::ZERO,
            "bit 12 is not counted"
        );
        assert_eq!(itr_interval(u32::MAX), Duration::from_micros(8190));
    }

    #[test]
    fn interval_zero_fires_every_raise() {
        let base = Instant::now();
        let mut m = Moderator::default();
        for i in 0..5 {
            assert_eq!(m.raise(t(base, i), Duration::ZERO), Decision::Fire);
            assert_eq!(m.raise(t(base, i), Duration::ZERO), Decision::Fire);
        }
        assert_eq!(m.deadline(), None);
        assert!(!m.take_due(t(base, 100)));
    }

    #[test]
    fn a_raise_inside_the_window_is_deferred_to_its_end() {
        let base = Instant::now();
        let mut m = Moderator::default();
        let iv = 8 * MS;
        assert_eq!(m.raise(base, iv), Decision::Fire);
        assert_eq!(m.raise(t(base, 3), iv), Decision::Deferred(t(base, 8)));
        assert_eq!(m.deadline(), Some(t(base, 8)));
        assert!(!m.take_due(t(base, 7)), "not before the window ends");
        assert_eq!(m.deadline(), Some(t(base, 8)), "still pending");
        assert!(m.take_due(t(base, 8)));
        assert_eq!(m.deadline(), None);
        assert!(!m.take_due(t(base, 9)), "taken once");
        m.fired(t(base, 8));
        // The deferred interrupt opened a new window.
        assert_eq!(m.raise(t(base, 9), iv), Decision::Deferred(t(base, 16)));
    }

    #[test]
    fn raises_after_the_window_fire_at_once() {
        let base = Instant::now();
        let mut m = Moderator::default();
        let iv = 8 * MS;
        assert_eq!(m.raise(base, iv), Decision::Fire);
        assert_eq!(
            m.raise(t(base, 8), iv),
            Decision::Fire,
            "window is half-open"
        );
        assert_eq!(m.raise(t(base, 20), iv), Decision::Fire);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn several_raises_in_one_window_coalesce_into_one() {
        let base = Instant::now();
        let mut m = Moderator::default();
        let iv = 8 * MS;
        assert_eq!(m.raise(base, iv), Decision::Fire);
        assert_eq!(m.raise(t(base, 1), iv), Decision::Deferred(t(base, 8)));
        for ms in 2..8 {
            assert_eq!(m.raise(t(base, ms), iv), Decision::Coalesced(t(base, 8)));
        }
        assert!(m.take_due(t(base, 8)));
        assert!(!m.take_due(t(base, 8)));
    }

    #[test]
    fn a_longer_interval_keeps_the_pending_deadline_and_a_shorter_one_brings_it_forward() {
        let base = Instant::now();
        let mut m = Moderator::default();
        assert_eq!(m.raise(base, 8 * MS), Decision::Fire);
        assert_eq!(m.raise(t(base, 1), 8 * MS), Decision::Deferred(t(base, 8)));
        // Longer: the window already running keeps its end.
        assert_eq!(
            m.raise(t(base, 2), 50 * MS),
            Decision::Coalesced(t(base, 8))
        );
        // Shorter, still ahead: brought forward.
        assert_eq!(m.raise(t(base, 3), 5 * MS), Decision::Coalesced(t(base, 5)));
        // Shorter, already over: the pending interrupt goes out with this raise.
        assert_eq!(m.raise(t(base, 4), 2 * MS), Decision::FireDue);
        assert_eq!(m.deadline(), None);
        // Interval 0 from now on: no moderation.
        assert_eq!(m.raise(t(base, 4), Duration::ZERO), Decision::Fire);
        // A new interval applies from the next raise: it starts at the last fire.
        assert_eq!(m.raise(t(base, 5), 4 * MS), Decision::Deferred(t(base, 8)));
        assert_eq!(m.raise(t(base, 6), Duration::ZERO), Decision::FireDue);
    }

    #[test]
    fn a_dropped_pending_interrupt_does_not_restart_the_window() {
        let base = Instant::now();
        let mut m = Moderator::default();
        assert_eq!(m.raise(base, 8 * MS), Decision::Fire);
        assert_eq!(m.raise(t(base, 1), 8 * MS), Decision::Deferred(t(base, 8)));
        // Taken at its deadline but not fired (gated): `fired` is not called.
        assert!(m.take_due(t(base, 9)));
        assert_eq!(m.raise(t(base, 9), 8 * MS), Decision::Fire);
    }

    #[test]
    fn reset_and_take_pending_forget_the_window() {
        let base = Instant::now();
        let mut m = Moderator::default();
        assert_eq!(m.raise(base, 8 * MS), Decision::Fire);
        assert_eq!(m.raise(t(base, 1), 8 * MS), Decision::Deferred(t(base, 8)));
        m.reset();
        assert_eq!(m, Moderator::default());
        assert!(!m.take_due(t(base, 100)), "the pending one is gone");
        assert_eq!(m.raise(t(base, 2), 8 * MS), Decision::Fire, "no window");
        assert_eq!(m.raise(t(base, 3), 8 * MS), Decision::Deferred(t(base, 10)));
        assert!(m.take_pending(), "taken before its deadline");
        assert!(!m.take_pending());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn the_timer_starts_lazily_and_expires_each_deadline() {
        let (tx, rx) = mpsc::channel::<Instant>();
        let tx = Mutex::new(tx);
        let timer = ItrTimer::new(move |now| {
            let _ = lock(&tx).send(now);
            None
        });
        assert!(!timer.running(), "no thread before the first deferral");
        let d = Instant::now() + 5 * MS;
        timer.schedule(d).expect("schedule");
        assert!(timer.running());
        let at = rx.recv_timeout(Duration::from_secs(2)).expect("expired");
        assert!(at >= d, "not before the deadline");
        // Nothing more without a new deadline.
        assert!(rx.recv_timeout(20 * MS).is_err());
        // An earlier deadline replaces a later one; the thread is reused.
        timer
            .schedule(Instant::now() + Duration::from_secs(3600))
            .expect("late");
        timer.schedule(Instant::now() + MS).expect("early");
        assert!(rx.recv_timeout(Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn the_timer_follows_the_next_deadline_its_callback_returns() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<usize>();
        let tx = Mutex::new(tx);
        let c = Arc::clone(&calls);
        let timer = ItrTimer::new(move |now| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = lock(&tx).send(n);
            (n < 3).then(|| now + MS)
        });
        timer.schedule(Instant::now()).expect("schedule");
        for want in 1..=3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(2)), Ok(want));
        }
        assert!(rx.recv_timeout(20 * MS).is_err(), "stops when told none");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn dropping_the_timer_joins_a_thread_waiting_for_a_far_deadline() {
        let token = Arc::new(());
        let held = Arc::clone(&token);
        let timer = ItrTimer::new(move |_| {
            let _ = Arc::strong_count(&held);
            None
        });
        timer
            .schedule(Instant::now() + Duration::from_secs(3600))
            .expect("schedule");
        let (tx, rx) = mpsc::channel();
        let dropper = std::thread::spawn(move || {
            drop(timer);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(2))
            .expect("drop returned without waiting for the deadline");
        dropper.join().expect("dropper");
        // The thread is gone with its callback: only our reference is left.
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn dropping_an_idle_timer_that_never_started_is_fine() {
        let timer = ItrTimer::new(|_| None);
        assert!(!timer.running());
        drop(timer);
    }
}
