//! [`DmaWindow`]: a checked view of part of one fd-backed mapping, for repeated access.
//!
//! The window is validated once by [`crate::DmaTable::window`] (inside one mapping, rights
//! granted, host memory present); each access then only checks its offset against the window.
//! The window owns an `Arc` of the mapping, so an unmap while it is in use only removes the
//! table entry: the memory stays mapped until the window is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::DmaAccessError;
use crate::raw::{HostRegion, Word};
use crate::table::{raw_to_access, Mapping};
use crate::types::{DmaProt, Iova};

/// A bounds-checked window over one fd-backed mapping.
#[derive(Clone, Debug)]
pub struct DmaWindow {
    mapping: Arc<Mapping>,
    iova: Iova,
    /// Offset of the window's first byte inside the mapping.
    base: u64,
    len: u64,
    access: DmaProt,
}

impl DmaWindow {
    /// Only called by `DmaTable::window` after checking `base + len <= mapping.size`, the
    /// rights and that the mapping has host memory.
    pub(crate) fn new(
        mapping: Arc<Mapping>,
        iova: Iova,
        base: u64,
        len: u64,
        access: DmaProt,
    ) -> Self {
        DmaWindow {
            mapping,
            iova,
            base,
            len,
            access,
        }
    }

    /// First IOVA of the window.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window has length 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rights the window was created with.
    pub fn access(&self) -> DmaProt {
        self.access
    }

    fn check(&self, offset: u64, len: u64, need: DmaProt) -> Result<&HostRegion, DmaAccessError> {
        let fits = offset.checked_add(len).is_some_and(|end| end <= self.len);
        if !fits {
            return Err(DmaAccessError::OutOfWindow { offset, len });
        }
        // `offset <= self.len`, and the window lies inside the mapping, so this cannot wrap.
        let at = self.iova.0 + offset;
        if !self.access.contains(need) {
            return Err(DmaAccessError::Forbidden { iova: Iova(at) });
        }
        self.mapping
            .host
            .as_ref()
            .ok_or(DmaAccessError::NotMmapped { iova: self.iova })
    }

    /// Copies `buf.len()` bytes at `offset` of the window into `buf` (needs READ access).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaAccessError> {
        let len = buf.len() as u64;
        let host = self.check(offset, len, DmaProt::READ)?;
        host.copy_out(self.base + offset, buf)
            .map_err(|e| raw_to_access(e, self.iova.0 + offset, len, offset))
    }

    /// Copies `data` to `offset` of the window (needs WRITE access).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DmaAccessError> {
        let len = data.len() as u64;
        let host = self.check(offset, len, DmaProt::WRITE)?;
        host.copy_in(self.base + offset, data)
            .map_err(|e| raw_to_access(e, self.iova.0 + offset, len, offset))
    }

    fn load<W: Word>(&self, offset: u64, order: Ordering) -> Result<W, DmaAccessError> {
        let len = size_of::<W>() as u64;
        let host = self.check(offset, len, DmaProt::READ)?;
        host.load::<W>(self.base + offset, order)
            .map_err(|e| raw_to_access(e, self.iova.0 + offset, len, offset))
    }

    fn store<W: Word>(&self, offset: u64, value: W, order: Ordering) -> Result<(), DmaAccessError> {
        let len = size_of::<W>() as u64;
        let host = self.check(offset, len, DmaProt::WRITE)?;
        host.store::<W>(self.base + offset, value, order)
            .map_err(|e| raw_to_access(e, self.iova.0 + offset, len, offset))
    }

    /// Atomic load of a `u16` at `offset` (address must be 2-byte aligned; needs READ).
    /// `Release`/`AcqRel` are treated as `Relaxed`/`Acquire`.
    pub fn load_u16(&self, offset: u64, order: Ordering) -> Result<u16, DmaAccessError> {
        self.load::<u16>(offset, order)
    }

    /// Atomic load of a `u32` at `offset` (address must be 4-byte aligned; needs READ).
    pub fn load_u32(&self, offset: u64, order: Ordering) -> Result<u32, DmaAccessError> {
        self.load::<u32>(offset, order)
    }

    /// Atomic load of a `u64` at `offset` (address must be 8-byte aligned; needs READ).
    pub fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, DmaAccessError> {
        self.load::<u64>(offset, order)
    }

    /// Atomic store of a `u16` at `offset` (address must be 2-byte aligned; needs WRITE).
    /// `Acquire`/`AcqRel` are treated as `Relaxed`/`Release`.
    pub fn store_u16(
        &self,
        offset: u64,
        value: u16,
        order: Ordering,
    ) -> Result<(), DmaAccessError> {
        self.store::<u16>(offset, value, order)
    }

    /// Atomic store of a `u32` at `offset` (address must be 4-byte aligned; needs WRITE).
    pub fn store_u32(
        &self,
        offset: u64,
        value: u32,
        order: Ordering,
    ) -> Result<(), DmaAccessError> {
        self.store::<u32>(offset, value, order)
    }

    /// Atomic store of a `u64` at `offset` (address must be 8-byte aligned; needs WRITE).
    pub fn store_u64(
        &self,
        offset: u64,
        value: u64,
        order: Ordering,
    ) -> Result<(), DmaAccessError> {
        self.store::<u64>(offset, value, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{dup, fd_req, file_read, file_write, memfd};
    use crate::{DmaLimits, DmaTable};

    const PG: u64 = 4096;

    fn setup(prot: DmaProt) -> (DmaTable, std::os::fd::OwnedFd) {
        let t = DmaTable::new(DmaLimits::default());
        let fd = memfd(2 * PG);
        t.map(fd_req(0x10000, 2 * PG, prot, 0, dup(&fd)))
            .expect("map");
        (t, fd)
    }

    #[test]
    fn read_and_write_inside_the_window() {
        let (t, fd) = setup(DmaProt::RW);
        let w = t.window(Iova(0x10100), 0x100, DmaProt::RW).expect("window");
        assert_eq!(w.access(), DmaProt::RW);
        w.write_at(0, b"ring").expect("write at 0");
        w.write_at(0xfc, &[1, 2, 3, 4])
            .expect("write the last bytes");
        assert_eq!(file_read(&fd, 0x100, 4), b"ring".to_vec());
        assert_eq!(file_read(&fd, 0x1fc, 4), vec![1, 2, 3, 4]);
        file_write(&fd, 0x180, b"from client");
        let mut buf = [0u8; 11];
        w.read_at(0x80, &mut buf).expect("read");
        assert_eq!(&buf, b"from client");
        w.read_at(0x100, &mut [])
            .expect("empty access at the very end");
    }

    #[test]
    fn accesses_outside_the_window_fail() {
        let (t, fd) = setup(DmaProt::RW);
        let w = t.window(Iova(0x10100), 0x100, DmaProt::RW).expect("window");
        let e = w.write_at(0xfd, &[0; 4]).expect_err("one byte past");
        assert!(matches!(
            e,
            DmaAccessError::OutOfWindow {
                offset: 0xfd,
                len: 4
            }
        ));
        assert_eq!(e.errno(), 14);
        // The mapping goes on, but the window does not: nothing was written there.
        assert_eq!(file_read(&fd, 0x1fd, 4), vec![0; 4]);
        assert!(matches!(
            w.read_at(0x101, &mut []),
            Err(DmaAccessError::OutOfWindow { .. })
        ));
        assert!(matches!(
            w.read_at(u64::MAX, &mut [0]),
            Err(DmaAccessError::OutOfWindow { .. })
        ));
        assert!(matches!(
            w.load_u32(0x100, Ordering::Relaxed),
            Err(DmaAccessError::OutOfWindow { .. })
        ));
        assert!(matches!(
            w.store_u64(0xfc, 0, Ordering::Relaxed),
            Err(DmaAccessError::OutOfWindow { .. })
        ));
        w.store_u64(0xf8, 1, Ordering::Relaxed)
            .expect("last aligned u64");
    }

    #[test]
    fn window_rights_are_enforced() {
        let (t, fd) = setup(DmaProt::RW);
        let r = t
            .window(Iova(0x10000), 64, DmaProt::READ)
            .expect("read window");
        let e = r.write_at(0, &[1]).expect_err("write through read window");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden {
                iova: Iova(0x10000)
            }
        ));
        assert_eq!(e.errno(), 13);
        assert!(matches!(
            r.store_u32(8, 1, Ordering::Release),
            Err(DmaAccessError::Forbidden {
                iova: Iova(0x10008)
            })
        ));
        let w = t
            .window(Iova(0x10000), 64, DmaProt::WRITE)
            .expect("write window");
        assert!(matches!(
            w.read_at(0, &mut [0]),
            Err(DmaAccessError::Forbidden { .. })
        ));
        assert!(matches!(
            w.load_u16(0, Ordering::Acquire),
            Err(DmaAccessError::Forbidden { .. })
        ));
        assert_eq!(file_read(&fd, 0, 16), vec![0; 16]);

        // A read-only mapping: reads and atomic loads work, no write window can exist.
        let (t, fd) = setup(DmaProt::READ);
        file_write(&fd, 0x18, &0xfeed_f00d_u32.to_ne_bytes());
        let r = t
            .window(Iova(0x10000), PG, DmaProt::READ)
            .expect("ro window");
        assert_eq!(
            r.load_u32(0x18, Ordering::Acquire).expect("ro load"),
            0xfeed_f00d
        );
        file_write(&fd, 0x20, &0x1122_3344_5566_7788_u64.to_ne_bytes());
        assert_eq!(
            r.load_u64(0x20, Ordering::SeqCst).expect("ro u64 load"),
            0x1122_3344_5566_7788
        );
        let first_two = 0x1122_3344_5566_7788_u64.to_ne_bytes();
        let expect = u16::from_ne_bytes([first_two[0], first_two[1]]);
        assert_eq!(
            r.load_u16(0x20, Ordering::Relaxed).expect("ro u16 load"),
            expect
        );
        assert!(matches!(
            t.window(Iova(0x10000), 8, DmaProt::WRITE),
            Err(DmaAccessError::Forbidden { .. })
        ));
    }

    #[test]
    fn atomics_round_trip_and_require_alignment() {
        let (t, fd) = setup(DmaProt::RW);
        let w = t.window(Iova(0x10000), PG, DmaProt::RW).expect("window");
        w.store_u16(0x10, 0xabcd, Ordering::Release).expect("u16");
        w.store_u32(0x14, 0x1234_5678, Ordering::SeqCst)
            .expect("u32");
        w.store_u64(0x18, 0x0102_0304_0506_0708, Ordering::Relaxed)
            .expect("u64");
        assert_eq!(w.load_u16(0x10, Ordering::Acquire).expect("u16"), 0xabcd);
        assert_eq!(
            w.load_u32(0x14, Ordering::SeqCst).expect("u32"),
            0x1234_5678
        );
        assert_eq!(
            w.load_u64(0x18, Ordering::Relaxed).expect("u64"),
            0x0102_0304_0506_0708
        );
        assert_eq!(
            file_read(&fd, 0x18, 8),
            0x0102_0304_0506_0708u64.to_ne_bytes().to_vec()
        );

        for (offset, result) in [
            (0x11, w.load_u16(0x11, Ordering::Relaxed).map(u64::from)),
            (0x16, w.load_u32(0x16, Ordering::Relaxed).map(u64::from)),
            (0x1c, w.load_u64(0x1c, Ordering::Relaxed)),
            (0x13, w.store_u16(0x13, 0, Ordering::Relaxed).map(|()| 0)),
            (0x12, w.store_u32(0x12, 0, Ordering::Relaxed).map(|()| 0)),
            (0x14, w.store_u64(0x14, 0, Ordering::Relaxed).map(|()| 0)),
        ] {
            let e = result.expect_err("misaligned");
            assert!(
                matches!(e, DmaAccessError::Misaligned { offset: o } if o == offset),
                "{e:?}"
            );
            assert_eq!(e.errno(), 22);
        }
        // Misaligned stores left memory alone.
        assert_eq!(
            w.load_u32(0x14, Ordering::Relaxed).expect("u32"),
            0x1234_5678
        );
    }

    #[test]
    fn alignment_is_of_the_address_not_the_window_offset() {
        let (t, _fd) = setup(DmaProt::RW);
        let w = t
            .window(Iova(0x10002), 0x100, DmaProt::RW)
            .expect("unaligned window");
        assert!(matches!(
            w.load_u32(0, Ordering::Relaxed),
            Err(DmaAccessError::Misaligned { offset: 0 })
        ));
        w.store_u32(2, 0x55aa_55aa, Ordering::Relaxed)
            .expect("aligned address");
        assert_eq!(t.read_u32(Iova(0x10004)).expect("read back"), 0x55aa_55aa);
    }

    #[test]
    fn window_outlives_unmap() {
        let (t, fd) = setup(DmaProt::RW);
        file_write(&fd, 0x40, b"still here");
        let w = t.window(Iova(0x10000), PG, DmaProt::RW).expect("window");
        let w2 = w.clone();
        t.unmap(Iova(0x10000), 2 * PG).expect("unmap");
        assert!(t.is_empty());
        assert!(matches!(
            t.read_u32(Iova(0x10040)),
            Err(DmaAccessError::Unmapped { .. })
        ));
        assert!(matches!(
            t.window(Iova(0x10000), 8, DmaProt::READ),
            Err(DmaAccessError::Unmapped { .. })
        ));
        drop(fd);
        let mut buf = [0u8; 10];
        w.read_at(0x40, &mut buf).expect("read after unmap");
        assert_eq!(&buf, b"still here");
        drop(w);
        w2.write_at(0, b"ok").expect("clone still valid");
        w2.read_at(0, &mut buf[..2]).expect("read");
        assert_eq!(&buf[..2], b"ok");

        // The IOVA range can be mapped again to different memory while the old window lives.
        let fresh = memfd(2 * PG);
        t.map(fd_req(0x10000, 2 * PG, DmaProt::RW, 0, dup(&fresh)))
            .expect("remap");
        assert_eq!(t.read_u32(Iova(0x10040)).expect("new memory"), 0);
        assert_eq!(
            w2.load_u16(0, Ordering::Relaxed).expect("old memory"),
            u16::from_ne_bytes(*b"ok")
        );
    }

    #[test]
    fn window_used_by_another_thread_across_unmap() {
        let (t, fd) = setup(DmaProt::RW);
        file_write(&fd, 0, &7u64.to_ne_bytes());
        let t = std::sync::Arc::new(t);
        let w = t.window(Iova(0x10000), 8, DmaProt::READ).expect("window");
        let worker = std::thread::spawn(move || {
            let mut sum = 0u64;
            for _ in 0..10_000 {
                sum += w.load_u64(0, Ordering::Acquire).expect("load");
            }
            sum
        });
        t.unmap_all();
        assert_eq!(worker.join().expect("worker"), 70_000);
    }
}
