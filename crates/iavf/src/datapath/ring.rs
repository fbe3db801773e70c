//! A descriptor ring's indexes as an engine keeps them: its length, the next descriptor the
//! engine handles (head) and the tail the driver last wrote, each below the length.

/// Head and tail of a ring of `len` descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingPos {
    pub(crate) len: u32,
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl RingPos {
    /// A ring of `len` descriptors, head and tail 0.
    pub(crate) fn new(len: u32) -> Self {
        RingPos {
            len,
            head: 0,
            tail: 0,
        }
    }

    /// Descriptors from head up to the tail.
    pub(crate) fn between(&self) -> u32 {
        if self.len == 0 {
            return 0;
        }
        self.wrap(self.tail + self.len - self.head)
    }

    /// `i` folded into the ring, for `i < 2 * len` (one subtraction, no division: ring sizes
    /// are not known at compile time and a `%` costs a divide per descriptor).
    #[inline]
    pub(crate) fn wrap(&self, i: u32) -> u32 {
        debug_assert!(i < 2 * self.len.max(1));
        if i >= self.len {
            i - self.len
        } else {
            i
        }
    }

    /// The index after `i` (< len).
    #[inline]
    pub(crate) fn next(&self, i: u32) -> u32 {
        let n = i + 1;
        if n >= self.len {
            0
        } else {
            n
        }
    }

    /// Moves the head; refused (false, nothing changes) beyond the ring.
    pub(crate) fn set_head(&mut self, head: u32) -> bool {
        if head >= self.len {
            return false;
        }
        self.head = head;
        true
    }

    /// A new tail; refused (false, nothing changes) beyond the ring.
    pub(crate) fn set_tail(&mut self, tail: u32) -> bool {
        if tail >= self.len {
            return false;
        }
        self.tail = tail;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_wraps_and_indexes_beyond_the_ring_are_refused() {
        let mut r = RingPos::new(8);
        assert_eq!(r.between(), 0);
        assert!(r.set_tail(5));
        assert_eq!(r.between(), 5);
        assert!(r.set_head(6));
        assert_eq!(r.between(), 7, "the tail is behind the head: it wrapped");
        assert_eq!((r.wrap(7), r.wrap(8), r.wrap(15)), (7, 0, 7));
        assert_eq!((r.next(6), r.next(7)), (7, 0));
        assert!(!r.set_tail(8));
        assert!(!r.set_head(9));
        assert_eq!((r.head, r.tail), (6, 5));
        assert_eq!(
            RingPos::new(0).between(),
            0,
            "an unconfigured ring has nothing"
        );
    }
}
