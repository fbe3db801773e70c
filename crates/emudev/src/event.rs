//! Events and their delivery.
//!
//! Everything that changes a device's state the outside may care about is an [`EmuEvent`]:
//! the client coming and going, DMA maps, IRQ setup, resets, queues, doorbells, the lifecycle
//! and attributes. Subscribers register an [`EventSink`]: a callback or an `mpsc` channel.
//!
//! Delivery is serialised and lock-free from the subscriber's point of view:
//!
//! - Emitting appends the event to one queue per device. If no thread is delivering, the
//!   emitting thread becomes the deliverer and delivers queued events, in order, to every
//!   subscriber, with **no emudev lock held** during a callback. So every subscriber sees
//!   every event in the same total order.
//! - A callback may call back into the device (any [`crate::EmuDev`] op, including ones that
//!   emit): the new event is queued and delivered after the current one, by the same thread.
//!   When another thread is delivering, an emitter returns at once and the deliverer delivers
//!   its event; so a callback can run on a thread other than the one that caused the event.
//! - A callback that panics is logged and skipped; delivery goes on. A channel whose receiver
//!   is gone is unsubscribed.
//!
//! Events raised from vfio-user callbacks are emitted while the server holds its lock on the
//! device, so a callback must not lock the server's device (`Server::device()`); emudev ops
//! take no such lock.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use emudev_dma::DmaMapInfo;

use crate::doorbell::DoorbellId;
use crate::provider::ProviderKind;
use crate::queue::QueueId;

/// Something that happened to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmuEvent {
    /// A client connected and negotiated.
    ClientConnected,
    /// The client left (its DMA maps and IRQ eventfds are already gone).
    ClientDisconnected,
    /// The client added a DMA map (already in the memory table).
    DmaMapped(DmaMapInfo),
    /// A DMA map was removed (already out of the memory table).
    DmaUnmapped(DmaMapInfo),
    /// SET_IRQS changed the eventfds or masks of IRQ `index`.
    IrqConfigChanged {
        /// The vfio IRQ index (INTx = 0, MSI = 1, MSI-X = 2, ...).
        index: u32,
    },
    /// The client reset the device (queues have been cleared).
    DeviceReset,
    /// A queue was configured (or reconfigured).
    QueueConfigured {
        /// The queue.
        queue: QueueId,
    },
    /// A queue's configuration was removed.
    QueueCleared {
        /// The queue.
        queue: QueueId,
    },
    /// A doorbell was declared or changed.
    DoorbellConfigured {
        /// The doorbell.
        doorbell: DoorbellId,
    },
    /// `configure` succeeded.
    Configured,
    /// `start` succeeded.
    Started,
    /// `stop` succeeded (or `close` stopped a started device).
    Stopped,
    /// `close` succeeded; the last event a subscriber gets.
    Closed,
    /// An attribute's value changed.
    AttrChanged {
        /// The attribute.
        name: String,
    },
    /// A data-path provider was attached.
    ProviderAttached {
        /// Its kind.
        kind: ProviderKind,
    },
    /// The data-path provider was detached.
    ProviderDetached,
}

/// Identifies one subscription (for `unsubscribe_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscription {}", self.0)
    }
}

/// A subscriber callback.
pub type EventCallback = Arc<dyn Fn(&EmuEvent) + Send + Sync>;

/// Where a subscriber wants its events.
#[derive(Clone)]
pub enum EventSink {
    /// Called with each event (see the module doc for the rules).
    Callback(EventCallback),
    /// Sent a clone of each event; unsubscribed when the receiver is dropped.
    Channel(Sender<EmuEvent>),
}

impl EventSink {
    /// A callback sink.
    pub fn callback(f: impl Fn(&EmuEvent) + Send + Sync + 'static) -> Self {
        EventSink::Callback(Arc::new(f))
    }

    /// A channel sink.
    pub fn channel(tx: Sender<EmuEvent>) -> Self {
        EventSink::Channel(tx)
    }

    /// Delivers one event; false when the sink is gone for good.
    fn deliver(&self, ev: &EmuEvent) -> bool {
        match self {
            EventSink::Callback(f) => {
                if catch_unwind(AssertUnwindSafe(|| f(ev))).is_err() {
                    log::error!("an event subscriber panicked on {ev:?}");
                }
                true
            }
            EventSink::Channel(tx) => tx.send(ev.clone()).is_ok(),
        }
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventSink::Callback(_) => "EventSink::Callback",
            EventSink::Channel(_) => "EventSink::Channel",
        })
    }
}

#[derive(Debug, Default)]
struct State {
    subs: Vec<(SubscriptionId, EventSink)>,
    queue: VecDeque<EmuEvent>,
    draining: bool,
    next_id: u64,
    closed: bool,
}

/// The subscriber list and event queue of one device.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    state: Mutex<State>,
}

impl Notifier {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a subscriber; `None` once the device is closed.
    pub(crate) fn subscribe(&self, sink: EventSink) -> Option<SubscriptionId> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        s.next_id += 1;
        let id = SubscriptionId(s.next_id);
        s.subs.push((id, sink));
        Some(id)
    }

    /// Removes a subscriber; false if there is none with `id`.
    pub(crate) fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut s = self.lock();
        let before = s.subs.len();
        s.subs.retain(|(i, _)| *i != id);
        s.subs.len() != before
    }

    /// Number of subscribers.
    pub(crate) fn len(&self) -> usize {
        self.lock().subs.len()
    }

    /// Queues events and delivers them unless another thread is delivering.
    pub(crate) fn emit(&self, events: impl IntoIterator<Item = EmuEvent>) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            s.queue.extend(events);
            if s.draining || s.queue.is_empty() {
                return;
            }
            s.draining = true;
        }
        loop {
            let (ev, subs) = {
                let mut s = self.lock();
                match s.queue.pop_front() {
                    Some(ev) => (ev, s.subs.clone()),
                    None => {
                        s.draining = false;
                        return;
                    }
                }
            };
            let mut gone = Vec::new();
            for (id, sink) in &subs {
                // A sink unsubscribed by an earlier callback of this round gets nothing more.
                if !self.lock().subs.iter().any(|(i, _)| i == id) {
                    continue;
                }
                if !sink.deliver(&ev) {
                    gone.push(*id);
                }
            }
            let mut s = self.lock();
            s.subs.retain(|(i, _)| !gone.contains(i));
            if ev == EmuEvent::Closed {
                // Nothing is delivered after Closed.
                s.closed = true;
                s.subs.clear();
                s.queue.clear();
                s.draining = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn recorder() -> (Arc<Mutex<Vec<EmuEvent>>>, EventSink) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            seen,
            EventSink::callback(move |e| s.lock().expect("lock").push(e.clone())),
        )
    }

    #[test]
    fn subscribers_get_events_in_order_until_unsubscribed() {
        let n = Notifier::default();
        let (seen, sink) = recorder();
        let a = n.subscribe(sink).expect("subscribe");
        let (tx, rx) = channel();
        let b = n.subscribe(EventSink::channel(tx)).expect("subscribe");
        assert_ne!(a, b);
        n.emit([EmuEvent::Started, EmuEvent::Stopped]);
        assert!(n.unsubscribe(a));
        assert!(!n.unsubscribe(a));
        n.emit([EmuEvent::DeviceReset]);
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![EmuEvent::Started, EmuEvent::Stopped]
        );
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(
            got,
            vec![EmuEvent::Started, EmuEvent::Stopped, EmuEvent::DeviceReset]
        );
    }

    #[test]
    fn reentrant_emits_are_queued_not_deadlocked() {
        let n = Arc::new(Notifier::default());
        let (seen, sink) = recorder();
        let n2 = n.clone();
        n.subscribe(EventSink::callback(move |e| {
            if *e == EmuEvent::Started {
                // Emitting from inside a callback must neither deadlock nor reorder.
                n2.emit([EmuEvent::AttrChanged { name: "x".into() }]);
            }
        }))
        .expect("subscribe");
        n.subscribe(sink).expect("subscribe");
        n.emit([EmuEvent::Started, EmuEvent::Stopped]);
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                EmuEvent::Started,
                EmuEvent::Stopped,
                EmuEvent::AttrChanged { name: "x".into() }
            ]
        );
    }

    #[test]
    fn a_callback_may_unsubscribe_another() {
        let n = Arc::new(Notifier::default());
        let victim = Arc::new(Mutex::new(None::<SubscriptionId>));
        let (n2, v2) = (n.clone(), victim.clone());
        n.subscribe(EventSink::callback(move |_| {
            if let Some(id) = *v2.lock().expect("lock") {
                n2.unsubscribe(id);
            }
        }))
        .expect("subscribe");
        let (seen, sink) = recorder();
        *victim.lock().expect("lock") = n.subscribe(sink);
        n.emit([EmuEvent::Started]);
        assert!(seen.lock().expect("lock").is_empty());
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn panicking_callbacks_and_dead_channels_do_not_stop_delivery() {
        let n = Notifier::default();
        n.subscribe(EventSink::callback(|_| panic!("subscriber bug")))
            .expect("subscribe");
        let (tx, rx) = channel();
        n.subscribe(EventSink::channel(tx)).expect("subscribe");
        drop(rx);
        let (seen, sink) = recorder();
        n.subscribe(sink).expect("subscribe");
        n.emit([EmuEvent::Started]);
        n.emit([EmuEvent::Stopped]);
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![EmuEvent::Started, EmuEvent::Stopped]
        );
        // The dead channel was dropped; the panicking callback stays.
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn nothing_after_closed() {
        let n = Notifier::default();
        let (seen, sink) = recorder();
        n.subscribe(sink).expect("subscribe");
        n.emit([EmuEvent::Closed, EmuEvent::Started]);
        n.emit([EmuEvent::Stopped]);
        assert_eq!(*seen.lock().expect("lock"), vec![EmuEvent::Closed]);
        assert!(n.subscribe(EventSink::callback(|_| {})).is_none());
        assert_eq!(n.len(), 0);
    }

    #[test]
    fn events_from_many_threads_reach_everyone_in_one_order() {
        let n = Arc::new(Notifier::default());
        let (a, sa) = recorder();
        let (b, sb) = recorder();
        n.subscribe(sa).expect("subscribe");
        n.subscribe(sb).expect("subscribe");
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let n = n.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        n.emit([EmuEvent::IrqConfigChanged {
                            index: t * 1000 + i,
                        }]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let a = a.lock().expect("lock").clone();
        assert_eq!(a.len(), 400);
        assert_eq!(a, *b.lock().expect("lock"));
        // Per emitting thread, order is preserved.
        for t in 0..4u32 {
            let mine: Vec<u32> = a
                .iter()
                .filter_map(|e| match e {
                    EmuEvent::IrqConfigChanged { index } if index / 1000 == t => Some(index % 1000),
                    _ => None,
                })
                .collect();
            assert_eq!(mine, (0..100).collect::<Vec<_>>());
        }
    }
}
