//! A bounded, lock-free, single-producer/single-consumer ring of preallocated frame slots: the
//! wire of the `pair` back-end. This is the crate's only module with `unsafe` code.
//!
//! [`ring`] returns the two ends. Each end is a unique owner (neither is `Clone`, every
//! operation takes `&mut self`), which is what makes the slot accesses below sound: the
//! producer only ever writes the slot at `tail` while `tail - head < capacity`, the consumer
//! only ever reads the slot at `head` while `head < tail`, and the indices are published with
//! release stores and observed with acquire loads.
//!
//! Each slot is a `Vec<u8>` allocated with `slot_bytes` of capacity when the ring is made; a
//! frame larger than that grows its slot once (and the slot keeps the capacity), so steady-state
//! traffic allocates nothing.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An index on its own cache line, so the producer's and the consumer's do not share one.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicUsize);

/// One frame's storage.
struct Slot(UnsafeCell<Vec<u8>>);

/// What both ends share.
struct Shared {
    slots: Box<[Slot]>,
    mask: usize,
    /// Next slot the consumer reads (written by the consumer only).
    head: Padded,
    /// Next slot the producer writes (written by the producer only).
    tail: Padded,
}

// SAFETY: the only non-`Sync` part of `Shared` is the `UnsafeCell` of each slot. A slot is
// accessed by the producer only while it lies outside `[head, tail)` and by the consumer only
// while it lies inside it; `head` and `tail` are atomics published with release/acquire
// ordering, and there is exactly one `Producer` and one `Consumer` per ring (neither is
// `Clone`, both operate through `&mut self`), so no slot is ever accessed from two threads
// at once.
unsafe impl Sync for Shared {}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("capacity", &self.slots.len())
            .field("head", &self.head.0.load(Ordering::Relaxed))
            .field("tail", &self.tail.0.load(Ordering::Relaxed))
            .finish()
    }
}

/// The producing end.
#[derive(Debug)]
pub(crate) struct Producer {
    shared: Arc<Shared>,
    /// Our own copy of `tail` (we are its only writer).
    tail: usize,
    /// The consumer's `head` as last read (refreshed only when the ring looks full).
    head: usize,
}

/// The consuming end.
#[derive(Debug)]
pub(crate) struct Consumer {
    shared: Arc<Shared>,
    /// Our own copy of `head` (we are its only writer).
    head: usize,
    /// The producer's `tail` as last read (refreshed only when the ring looks empty).
    tail: usize,
}

/// A read-only view of a ring's fill level, for whoever holds neither end.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    shared: Arc<Shared>,
}

impl Probe {
    /// True when a frame is waiting.
    pub(crate) fn has_frames(&self) -> bool {
        let head = self.shared.head.0.load(Ordering::Acquire);
        self.shared.tail.0.load(Ordering::Acquire) != head
    }
}

impl Producer {
    /// A probe of this ring.
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            shared: self.shared.clone(),
        }
    }
}

/// A ring of `capacity` slots (rounded up to a power of two, at least 2), each preallocated
/// with `slot_bytes` bytes of capacity.
pub(crate) fn ring(capacity: usize, slot_bytes: usize) -> (Producer, Consumer) {
    let cap = capacity.clamp(2, 1 << 20).next_power_of_two();
    let slots: Box<[Slot]> = (0..cap)
        .map(|_| Slot(UnsafeCell::new(Vec::with_capacity(slot_bytes))))
        .collect();
    let shared = Arc::new(Shared {
        slots,
        mask: cap - 1,
        head: Padded::default(),
        tail: Padded::default(),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            head: 0,
        },
        Consumer {
            shared,
            head: 0,
            tail: 0,
        },
    )
}

impl Producer {
    /// Slots in the ring.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shared.slots.len()
    }

    /// Copies `frame` into the next free slot and publishes it; false (nothing changes) when
    /// the ring is full.
    pub(crate) fn push(&mut self, frame: &[u8]) -> bool {
        let cap = self.shared.slots.len();
        if self.tail.wrapping_sub(self.head) >= cap {
            self.head = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head) >= cap {
                return false;
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: `tail - head < capacity`, so the slot at `tail` is outside `[head, tail)`:
        // the consumer has released it (its `head` store, observed with acquire above or
        // earlier, happens after its last read of it) and will not read it until we publish
        // `tail + 1` below. We are the only producer, so no other writer exists.
        let buf = unsafe { &mut *slot.0.get() };
        buf.clear();
        buf.extend_from_slice(frame);
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.0.store(self.tail, Ordering::Release);
        true
    }
}

impl Consumer {
    /// True when no frame is waiting (one acquire load when our cached view is empty).
    pub(crate) fn is_empty(&mut self) -> bool {
        if self.head != self.tail {
            return false;
        }
        self.tail = self.shared.tail.0.load(Ordering::Acquire);
        self.head == self.tail
    }

    /// True when a frame is waiting, without updating the cached view (for `&self` callers).
    pub(crate) fn has_frames(&self) -> bool {
        self.shared.tail.0.load(Ordering::Acquire) != self.head
    }

    /// Frames waiting now.
    #[cfg(test)]
    pub(crate) fn len(&mut self) -> usize {
        self.tail = self.shared.tail.0.load(Ordering::Acquire);
        self.tail.wrapping_sub(self.head)
    }

    /// The oldest waiting frame, left in the ring until [`Consumer::pop`].
    pub(crate) fn front(&mut self) -> Option<&[u8]> {
        if self.is_empty() {
            return None;
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: `head < tail` and `tail` was loaded with acquire, which synchronises with
        // the producer's release store made after it finished writing this slot; the producer
        // does not touch the slot again until we publish `head + 1` in `pop`, which needs
        // `&mut self` and so cannot happen while the returned borrow lives.
        let buf = unsafe { &*slot.0.get() };
        Some(buf.as_slice())
    }

    /// Releases the oldest frame; false if there was none.
    pub(crate) fn pop(&mut self) -> bool {
        if self.is_empty() {
            return false;
        }
        self.head = self.head.wrapping_add(1);
        self.shared.head.0.store(self.head, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_a_full_ring_refuses() {
        let (mut p, mut c) = ring(3, 16);
        assert_eq!(p.capacity(), 4, "rounded up to a power of two");
        assert!(c.front().is_none());
        assert!(!c.pop());
        assert!(!c.has_frames());
        let probe = p.probe();
        assert!(!probe.has_frames());
        for i in 0..4u8 {
            assert!(p.push(&[i; 5]));
        }
        assert!(!p.push(b"nope"), "full");
        assert_eq!(c.len(), 4);
        assert!(c.has_frames() && probe.has_frames());
        assert_eq!(c.front(), Some(&[0u8; 5][..]));
        assert_eq!(c.front(), Some(&[0u8; 5][..]), "front does not consume");
        assert!(c.pop());
        assert!(p.push(b"a frame larger than the slot's initial sixteen bytes"));
        for i in 1..4u8 {
            assert_eq!(c.front(), Some(&[i; 5][..]));
            assert!(c.pop());
        }
        assert_eq!(
            c.front(),
            Some(&b"a frame larger than the slot's initial sixteen bytes"[..])
        );
        assert!(c.pop());
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn indices_wrap_many_times_around_the_ring() {
        let (mut p, mut c) = ring(2, 8);
        for i in 0..10_000u32 {
            assert!(p.push(&i.to_le_bytes()));
            assert_eq!(c.front(), Some(&i.to_le_bytes()[..]));
            assert!(c.pop());
        }
        assert!(c.is_empty());
    }

    #[test]
    fn a_producer_and_a_consumer_on_two_threads_see_every_frame_once_in_order() {
        let (mut p, mut c) = ring(64, 64);
        const N: u32 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                let mut f = vec![(i % 251) as u8; 4 + (i as usize % 40)];
                f[..4].copy_from_slice(&i.to_le_bytes());
                if p.push(&f) {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut want = 0u32;
        while want < N {
            let Some(f) = c.front() else {
                std::hint::spin_loop();
                continue;
            };
            let mut id = [0u8; 4];
            id.copy_from_slice(&f[..4]);
            assert_eq!(u32::from_le_bytes(id), want);
            assert!(f[4..].iter().all(|&b| b == (want % 251) as u8));
            assert!(c.pop());
            want += 1;
        }
        t.join().expect("producer");
        assert!(c.is_empty());
    }
}
