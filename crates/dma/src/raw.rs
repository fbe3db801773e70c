//! Raw access to the host mappings of client memory: the only module of this crate with `unsafe`.
//!
//! A [`HostRegion`] owns one `MAP_SHARED` mmap of a file descriptor the client sent with
//! DMA_MAP. Every accessor takes an offset relative to the start of the region, checks it
//! against the region (with overflow-checked arithmetic) and only then touches memory, so each
//! `unsafe` block here relies on checks made a few lines above it, never on the caller.
//!
//! The memory is shared with another process that may change it at any time. It is therefore
//! treated like I/O memory: no Rust reference (`&[u8]`, `&mut [u8]`, `&T`) into it is ever
//! formed or handed out; data moves by `ptr::copy_nonoverlapping` into/out of buffers owned by
//! the caller, or by an atomic load/store of one naturally aligned word (`&AtomicUxx` is the one
//! kind of reference allowed, because atomic types are designed for shared mutation).

use std::io;
use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// Why a raw access was refused (translated into the public error by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawAccessError {
    /// Some byte of the access lies outside the region.
    OutOfRange,
    /// A store into a region mapped without `PROT_WRITE`.
    ReadOnly,
    /// An atomic access at an address that is not naturally aligned.
    Misaligned,
    /// An atomic load of this width cannot be done on read-only memory on this target.
    Unsupported,
}

/// One `MAP_SHARED` mmap of client memory. Dropping it unmaps the memory.
#[derive(Debug)]
pub(crate) struct HostRegion {
    map: MmapRaw,
    writable: bool,
}

impl HostRegion {
    /// Maps `len` bytes of `fd` starting at `file_offset`, shared with the client.
    /// `writable` selects `PROT_READ | PROT_WRITE`, else `PROT_READ` only.
    pub(crate) fn map_shared(
        fd: &OwnedFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zero-length mapping",
            ));
        }
        let mut opts = MmapOptions::new();
        opts.offset(file_offset).len(len);
        let map = if writable {
            opts.map_raw(fd)?
        } else {
            opts.map_raw_read_only(fd)?
        };
        if map.len() != len {
            return Err(io::Error::other(
                "mmap returned a mapping of unexpected length",
            ));
        }
        Ok(Self { map, writable })
    }

    /// The host address of the first byte (diagnostics only; never dereferenced by callers).
    pub(crate) fn base_addr(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// Checks that `[offset, offset + len)` lies inside the region; returns `offset` as `usize`.
    fn checked_span(&self, offset: u64, len: usize) -> Result<usize, RawAccessError> {
        let start = usize::try_from(offset).map_err(|_| RawAccessError::OutOfRange)?;
        let end = start.checked_add(len).ok_or(RawAccessError::OutOfRange)?;
        if end > self.map.len() {
            return Err(RawAccessError::OutOfRange);
        }
        Ok(start)
    }

    /// Copies `buf.len()` bytes at `offset` of the region into `buf`.
    pub(crate) fn copy_out(&self, offset: u64, buf: &mut [u8]) -> Result<(), RawAccessError> {
        let start = self.checked_span(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        // SAFETY: `checked_span` proved `start + buf.len() <= self.map.len()`, so the source
        // range is inside the live mapping owned by `self` (it stays mapped while `&self` is
        // held) and `add(start)` stays in bounds. The mapping is readable (PROT_READ is always
        // set). `buf` is a distinct, caller-owned allocation: it cannot overlap the mmap because
        // this crate never creates references into the mapping. No reference into the mapping
        // is formed; concurrent changes by the client only affect which bytes are copied.
        unsafe {
            ptr::copy_nonoverlapping(self.map.as_ptr().add(start), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    /// Copies `data` into the region at `offset`. Fails on a read-only region.
    pub(crate) fn copy_in(&self, offset: u64, data: &[u8]) -> Result<(), RawAccessError> {
        let start = self.checked_span(offset, data.len())?;
        if !self.writable {
            return Err(RawAccessError::ReadOnly);
        }
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: `checked_span` proved the destination range `[start, start + data.len())` is
        // inside the live mapping owned by `self`, and `self.writable` proved it was mapped
        // PROT_WRITE (MAP_SHARED, so the client sees the bytes). `data` is caller-owned and
        // cannot overlap the mapping (no references into it exist). No reference into the
        // mapping is formed.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(start), data.len());
        }
        Ok(())
    }

    /// Checks bounds and natural alignment for an atomic `W` at `offset`; returns the pointer.
    fn atomic_ptr<W: Word>(&self, offset: u64) -> Result<*mut W::Atomic, RawAccessError> {
        let start = self.checked_span(offset, size_of::<W::Atomic>())?;
        let addr = self.base_addr().wrapping_add(start);
        if addr % align_of::<W::Atomic>() != 0 {
            return Err(RawAccessError::Misaligned);
        }
        Ok(self
            .map
            .as_mut_ptr()
            .wrapping_add(start)
            .cast::<W::Atomic>())
    }

    /// Atomically loads a `W` at `offset` (natural alignment required).
    pub(crate) fn load<W: Word>(&self, offset: u64, order: Ordering) -> Result<W, RawAccessError> {
        let ptr = self.atomic_ptr::<W>(offset)?;
        let order = load_order(order);
        // Atomic loads from read-only memory are only defined by Rust for `Relaxed` loads no
        // wider than the target's native atomic width; stronger orderings are rebuilt with a
        // fence, which gives the same synchronisation with the client's release stores.
        let ro = !self.writable;
        if ro && size_of::<W::Atomic>() > size_of::<usize>() {
            return Err(RawAccessError::Unsupported);
        }
        // SAFETY: `atomic_ptr` proved the `size_of::<W::Atomic>()` bytes at `ptr` lie inside the
        // live mapping owned by `self` and that `ptr` is aligned to `align_of::<W::Atomic>()`.
        // `W::Atomic` is an atomic integer type, which permits shared mutation (by us and by the
        // client process), and has the same size and bit validity as the plain integer, so
        // every bit pattern is a valid value. The reference lives only inside this block, which
        // is shorter than the `&self` borrow keeping the mapping alive. For a read-only mapping
        // only a `Relaxed` load of at most the native word width is performed (checked above),
        // which Rust documents as sound on read-only memory.
        let value = unsafe {
            let atomic = &*ptr;
            W::load(atomic, if ro { Ordering::Relaxed } else { order })
        };
        if ro && order != Ordering::Relaxed {
            fence(order);
        }
        Ok(value)
    }

    /// Atomically stores a `W` at `offset` (natural alignment required). Fails on a read-only region.
    pub(crate) fn store<W: Word>(
        &self,
        offset: u64,
        value: W,
        order: Ordering,
    ) -> Result<(), RawAccessError> {
        let ptr = self.atomic_ptr::<W>(offset)?;
        if !self.writable {
            return Err(RawAccessError::ReadOnly);
        }
        let order = store_order(order);
        // SAFETY: `atomic_ptr` proved the bytes at `ptr` lie inside the live mapping owned by
        // `self` and that `ptr` is naturally aligned for `W::Atomic`; `self.writable` proved the
        // mapping is PROT_WRITE. Atomic types permit shared mutation, so a shared reference is
        // the sanctioned way to store through memory that the client may access concurrently.
        // The reference does not outlive this block (and so not the `&self` borrow).
        unsafe {
            let atomic = &*ptr;
            W::store(atomic, value, order);
        }
        Ok(())
    }
}

/// The legal load ordering closest to `order` (`load` panics on `Release`/`AcqRel`).
fn load_order(order: Ordering) -> Ordering {
    match order {
        Ordering::Relaxed | Ordering::Release => Ordering::Relaxed,
        Ordering::Acquire | Ordering::AcqRel => Ordering::Acquire,
        _ => Ordering::SeqCst,
    }
}

/// The legal store ordering closest to `order` (`store` panics on `Acquire`/`AcqRel`).
fn store_order(order: Ordering) -> Ordering {
    match order {
        Ordering::Relaxed | Ordering::Acquire => Ordering::Relaxed,
        Ordering::Release | Ordering::AcqRel => Ordering::Release,
        _ => Ordering::SeqCst,
    }
}

/// An integer that has a same-sized atomic twin (u16, u32, u64). Sealed to this crate.
pub(crate) trait Word: Copy {
    /// The atomic type with the same size and in-memory representation.
    type Atomic;
    /// `atomic.load(order)`; `order` is always a legal load ordering here.
    fn load(atomic: &Self::Atomic, order: Ordering) -> Self;
    /// `atomic.store(value, order)`; `order` is always a legal store ordering here.
    fn store(atomic: &Self::Atomic, value: Self, order: Ordering);
}

impl Word for u16 {
    type Atomic = AtomicU16;
    fn load(atomic: &AtomicU16, order: Ordering) -> u16 {
        atomic.load(order)
    }
    fn store(atomic: &AtomicU16, value: u16, order: Ordering) {
        atomic.store(value, order);
    }
}

impl Word for u32 {
    type Atomic = AtomicU32;
    fn load(atomic: &AtomicU32, order: Ordering) -> u32 {
        atomic.load(order)
    }
    fn store(atomic: &AtomicU32, value: u32, order: Ordering) {
        atomic.store(value, order);
    }
}

impl Word for u64 {
    type Atomic = AtomicU64;
    fn load(atomic: &AtomicU64, order: Ordering) -> u64 {
        atomic.load(order)
    }
    fn store(atomic: &AtomicU64, value: u64, order: Ordering) {
        atomic.store(value, order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

    fn memfd(len: u64) -> OwnedFd {
        let fd = memfd_create("emudev-dma-raw-test", MemfdFlags::CLOEXEC).expect("memfd_create");
        ftruncate(&fd, len).expect("ftruncate");
        fd
    }

    #[test]
    fn copy_round_trip_and_bounds() {
        let fd = memfd(8192);
        let region = HostRegion::map_shared(&fd, 4096, 4096, true).expect("map");
        region
            .copy_in(4090, &[1, 2, 3, 4, 5, 6])
            .expect("copy_in at the end");
        let mut buf = [0u8; 6];
        region
            .copy_out(4090, &mut buf)
            .expect("copy_out at the end");
        assert_eq!(buf, [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            region.copy_out(4091, &mut buf),
            Err(RawAccessError::OutOfRange)
        );
        assert_eq!(region.copy_in(4091, &buf), Err(RawAccessError::OutOfRange));
        assert_eq!(
            region.copy_out(u64::MAX, &mut buf),
            Err(RawAccessError::OutOfRange)
        );
        assert_eq!(region.copy_out(4096, &mut []), Ok(()));
        assert_eq!(
            region.copy_out(4097, &mut []),
            Err(RawAccessError::OutOfRange)
        );
    }

    #[test]
    fn read_only_region_refuses_stores() {
        let fd = memfd(4096);
        let region = HostRegion::map_shared(&fd, 0, 4096, false).expect("map");
        assert_eq!(region.copy_in(0, &[1]), Err(RawAccessError::ReadOnly));
        assert_eq!(
            region.store::<u32>(0, 1, Ordering::SeqCst),
            Err(RawAccessError::ReadOnly)
        );
        let mut b = [0xffu8; 4];
        region.copy_out(0, &mut b).expect("read");
        assert_eq!(b, [0; 4]);
        assert_eq!(region.load::<u32>(0, Ordering::Acquire), Ok(0));
        assert_eq!(region.load::<u16>(2, Ordering::SeqCst), Ok(0));
    }

    #[test]
    fn atomics_check_alignment_and_bounds() {
        let fd = memfd(4096);
        let region = HostRegion::map_shared(&fd, 0, 4096, true).expect("map");
        region
            .store::<u64>(8, 0x1122_3344_5566_7788, Ordering::Release)
            .expect("store");
        assert_eq!(
            region.load::<u64>(8, Ordering::Acquire),
            Ok(0x1122_3344_5566_7788)
        );
        let low_half = if cfg!(target_endian = "little") {
            0x5566_7788
        } else {
            0x1122_3344
        };
        assert_eq!(region.load::<u32>(8, Ordering::Relaxed), Ok(low_half));
        assert_eq!(
            region.load::<u32>(2, Ordering::Relaxed),
            Err(RawAccessError::Misaligned)
        );
        assert_eq!(
            region.store::<u16>(1, 0, Ordering::Relaxed),
            Err(RawAccessError::Misaligned)
        );
        assert_eq!(
            region.load::<u64>(4096 - 4, Ordering::Relaxed),
            Err(RawAccessError::OutOfRange)
        );
        assert_eq!(region.load::<u64>(4088, Ordering::Relaxed), Ok(0));
        // Orderings that `load`/`store` would panic on are mapped to legal ones.
        assert_eq!(region.load::<u16>(8, Ordering::Release).map(|_| ()), Ok(()));
        assert_eq!(region.store::<u16>(8, 7, Ordering::Acquire), Ok(()));
        assert_eq!(region.store::<u16>(8, 7, Ordering::AcqRel), Ok(()));
        assert_eq!(region.load::<u16>(8, Ordering::AcqRel), Ok(7));
    }

    #[test]
    fn zero_length_and_bad_offset_fail_to_map() {
        let fd = memfd(4096);
        assert!(HostRegion::map_shared(&fd, 0, 0, true).is_err());
        // An offset beyond what off_t can express is refused by mmap.
        assert!(HostRegion::map_shared(&fd, u64::MAX - 4095, 4096, true).is_err());
    }
}
