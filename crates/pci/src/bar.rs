//! Base address registers: what a BAR is ([`BarSpec`]), the rules for its size, and
//! [`BarMemory`], a memfd that backs a BAR the client may mmap (whole or in sparse areas).
//!
//! Sizes are powers of two: at least 16 bytes for memory BARs (the low four bits hold the type),
//! at least 4 for I/O BARs (two type bits). A 32-bit memory BAR is at most 2 GiB, a 64-bit one
//! at most 2^63 bytes, and an I/O BAR at most 256 bytes (PCI 3.0 §6.2.5.1). A 64-bit BAR takes
//! two slots, so it cannot start at slot 5; I/O space is never prefetchable.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use emudev_dma::SharedMemory;
use emudev_vfio_user::{RegionMmap, SparseArea};
use thiserror::Error;

use crate::regs::{
    PCI_BAR_IO_FLAG_MASK, PCI_BAR_MEM_FLAG_MASK, PCI_BAR_MEM_PREFETCH, PCI_BAR_MEM_TYPE_64,
    PCI_BAR_SPACE_IO, PCI_NUM_BARS,
};

/// The kind of address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space (two BAR slots: low and high dword).
    Mem64,
    /// I/O space.
    Io,
}

/// One BAR: its first slot, size, kind and prefetchability.
///
/// Build with [`BarSpec::mem32`], [`BarSpec::mem64`] or [`BarSpec::io`], then
/// [`BarSpec::prefetchable`]; [`crate::ConfigSpace::add_bar`] validates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// First BAR slot (0-5).
    pub index: u8,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Address space.
    pub kind: BarKind,
    /// Prefetchable memory (bit 3).
    pub prefetchable: bool,
}

/// Why a BAR (or the expansion ROM) could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddBarError {
    /// The slot is not 0-5, or a 64-bit BAR starts at slot 5.
    #[error("BAR index {0} is not 0-5 (0-4 for a 64-bit BAR)")]
    BadIndex(u8),
    /// The size is not a power of two within the kind's limits.
    #[error("BAR{index} size {size:#x} is not a power of two within the limits of a {kind:?} BAR")]
    BadSize {
        /// BAR slot.
        index: u8,
        /// Requested size.
        size: u64,
        /// Requested kind.
        kind: BarKind,
    },
    /// An I/O BAR cannot be prefetchable.
    #[error("I/O BAR{0} cannot be prefetchable")]
    PrefetchableIo(u8),
    /// The slot is already used (by another BAR or the upper half of a 64-bit one).
    #[error("BAR slot {index} is already in use")]
    SlotTaken {
        /// The slot in use.
        index: u8,
    },
    /// The expansion ROM size is not a power of two from 2 KiB to 16 MiB.
    #[error("expansion ROM size {0:#x} is not a power of two from 2 KiB to 16 MiB")]
    BadRomSize(u32),
    /// The expansion ROM was already defined.
    #[error("the expansion ROM is already defined")]
    RomAlreadyDefined,
}

impl BarSpec {
    /// A non-prefetchable 32-bit memory BAR.
    pub const fn mem32(index: u8, size: u64) -> Self {
        BarSpec {
            index,
            size,
            kind: BarKind::Mem32,
            prefetchable: false,
        }
    }

    /// A non-prefetchable 64-bit memory BAR (slots `index` and `index + 1`).
    pub const fn mem64(index: u8, size: u64) -> Self {
        BarSpec {
            index,
            size,
            kind: BarKind::Mem64,
            prefetchable: false,
        }
    }

    /// An I/O BAR.
    pub const fn io(index: u8, size: u64) -> Self {
        BarSpec {
            index,
            size,
            kind: BarKind::Io,
            prefetchable: false,
        }
    }

    /// The same BAR, prefetchable.
    pub const fn prefetchable(mut self) -> Self {
        self.prefetchable = true;
        self
    }

    /// Number of slots it takes (2 for a 64-bit BAR).
    pub fn slots(&self) -> u8 {
        match self.kind {
            BarKind::Mem64 => 2,
            BarKind::Mem32 | BarKind::Io => 1,
        }
    }

    /// Whether it decodes memory space.
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }

    /// Checks index, size and flags against the rules in the module documentation.
    pub fn validate(&self) -> Result<(), AddBarError> {
        if usize::from(self.index) + usize::from(self.slots()) > PCI_NUM_BARS {
            return Err(AddBarError::BadIndex(self.index));
        }
        let (min, max) = match self.kind {
            BarKind::Mem32 => (16, 1 << 31),
            BarKind::Mem64 => (16, 1 << 63),
            BarKind::Io => (4, 256),
        };
        if !self.size.is_power_of_two() || self.size < min || self.size > max {
            return Err(AddBarError::BadSize {
                index: self.index,
                size: self.size,
                kind: self.kind,
            });
        }
        if self.kind == BarKind::Io && self.prefetchable {
            return Err(AddBarError::PrefetchableIo(self.index));
        }
        Ok(())
    }

    /// The read-only type bits of the (low) BAR register.
    pub(crate) fn type_bits(&self) -> u32 {
        let prefetch = if self.prefetchable {
            PCI_BAR_MEM_PREFETCH
        } else {
            0
        };
        match self.kind {
            BarKind::Mem32 => prefetch,
            BarKind::Mem64 => PCI_BAR_MEM_TYPE_64 | prefetch,
            BarKind::Io => PCI_BAR_SPACE_IO,
        }
    }

    /// The low bits of the (low) register that are never address bits.
    pub(crate) fn flag_mask(&self) -> u32 {
        match self.kind {
            BarKind::Io => PCI_BAR_IO_FLAG_MASK,
            BarKind::Mem32 | BarKind::Mem64 => PCI_BAR_MEM_FLAG_MASK,
        }
    }
}

/// Why [`BarMemory::new`] failed.
#[derive(Debug, Error)]
pub enum CreateBarMemoryError {
    /// The size is 0 or not a multiple of the page size.
    #[error("BAR memory size {0:#x} is not a non-zero multiple of the page size")]
    BadSize(u64),
    /// A sparse area is empty, not page-aligned, outside the size, or overlaps another.
    #[error("sparse area {offset:#x}+{size:#x} is empty, unaligned, out of range or overlapping")]
    BadArea {
        /// Offset of the area.
        offset: u64,
        /// Size of the area.
        size: u64,
    },
    /// The memfd could not be created or mapped.
    #[error("creating the BAR memfd failed")]
    Create(#[source] io::Error),
}

/// Shared memory backing a BAR the client may mmap: a memfd mapped here, offered whole or in
/// sparse areas through the BAR's region info.
///
/// The device reads and writes it through [`BarMemory::memory`] (copies and aligned atomics,
/// never references: the client changes it at any time). The adapter serves REGION_READ/WRITE
/// that fall entirely inside a mappable area from the same memory, so a client that does not
/// mmap sees the same bytes.
#[derive(Debug)]
pub struct BarMemory {
    mem: SharedMemory,
    fd: Arc<OwnedFd>,
    areas: Vec<SparseArea>,
}

impl BarMemory {
    /// A zero-filled memfd of `size` bytes (a non-zero multiple of the page size). `areas`
    /// lists the mappable parts (page-aligned, inside `size`, non-overlapping); empty means the
    /// whole BAR is mappable.
    pub fn new(name: &str, size: u64, areas: &[SparseArea]) -> Result<Self, CreateBarMemoryError> {
        let page = rustix::param::page_size() as u64;
        if size == 0 || !size.is_multiple_of(page) {
            return Err(CreateBarMemoryError::BadSize(size));
        }
        let mut sorted = areas.to_vec();
        sorted.sort_by_key(|a| a.offset);
        let mut prev_end = 0u64;
        for a in &sorted {
            let end = a.offset.checked_add(a.size).ok_or_else(|| bad_area(a))?;
            if a.size == 0
                || !a.offset.is_multiple_of(page)
                || !a.size.is_multiple_of(page)
                || end > size
                || a.offset < prev_end
            {
                return Err(bad_area(a));
            }
            prev_end = end;
        }
        let (mem, fd) = SharedMemory::memfd(name, size).map_err(CreateBarMemoryError::Create)?;
        Ok(BarMemory {
            mem,
            fd: Arc::new(fd),
            areas: sorted,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.mem.len()
    }

    /// The mapping, for the device's own accesses.
    pub fn memory(&self) -> &SharedMemory {
        &self.mem
    }

    /// The memfd.
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// The mappable areas, sorted; empty means the whole BAR.
    pub fn areas(&self) -> &[SparseArea] {
        &self.areas
    }

    /// The mappable areas, with the whole BAR spelled out as one area when `areas` is empty.
    pub fn mappable(&self) -> Vec<SparseArea> {
        if self.areas.is_empty() {
            vec![SparseArea {
                offset: 0,
                size: self.size(),
            }]
        } else {
            self.areas.clone()
        }
    }

    /// Whether `offset..offset + len` lies entirely inside one mappable area.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if self.areas.is_empty() {
            return end <= self.size();
        }
        self.areas
            .iter()
            .any(|a| offset >= a.offset && end <= a.offset.saturating_add(a.size))
    }

    /// What the BAR's region info reports: the fd, file offset 0, the areas.
    pub fn region_mmap(&self) -> RegionMmap {
        RegionMmap {
            fd: Arc::clone(&self.fd),
            file_offset: 0,
            sparse: self.areas.clone(),
        }
    }
}

fn bad_area(a: &SparseArea) -> CreateBarMemoryError {
    CreateBarMemoryError::BadArea {
        offset: a.offset,
        size: a.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigKind, ConfigSpace, InterruptPin, PciIds};

    const IDS: PciIds = PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1000,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        revision: 0,
        class_code: 0x02_00_00,
    };

    fn space() -> ConfigSpace {
        ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::IntA)
    }

    fn read32(cs: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        cs.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn write32(cs: &mut ConfigSpace, off: u64, v: u32) {
        cs.write(off, &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn mem32_sizing_and_address() {
        let mut cs = space();
        cs.add_bar(BarSpec::mem32(0, 0x10_0000)).unwrap();
        cs.add_bar(BarSpec::mem32(1, 16).prefetchable()).unwrap();
        cs.add_bar(BarSpec::mem32(2, 1 << 31)).unwrap();
        assert_eq!(read32(&cs, 0x10), 0);
        assert_eq!(read32(&cs, 0x14), 0x8, "prefetchable bit before sizing");
        for off in [0x10, 0x14, 0x18] {
            write32(&mut cs, off, u32::MAX);
        }
        assert_eq!(read32(&cs, 0x10), 0xfff0_0000);
        assert_eq!(read32(&cs, 0x14), 0xffff_fff8);
        assert_eq!(read32(&cs, 0x18), 0x8000_0000);
        write32(&mut cs, 0x10, 0xfe12_3456);
        assert_eq!(
            read32(&cs, 0x10),
            0xfe10_0000,
            "address bits below the size read 0"
        );
        assert_eq!(cs.bar_address(0), Some(0xfe10_0000));
        write32(&mut cs, 0x14, 0xfeb0_001f);
        assert_eq!(cs.bar_address(1), Some(0xfeb0_0010));
        assert_eq!(cs.bar_size(2), Some(1 << 31));
        assert_eq!(cs.bar(3), None);
        assert_eq!(cs.bar_address(3), None);
    }

    #[test]
    fn mem64_sizes_both_halves() {
        let mut cs = space();
        // 16 KiB: the whole high dword is address.
        cs.add_bar(BarSpec::mem64(0, 0x4000).prefetchable())
            .unwrap();
        // 8 GiB: the low dword has no address bits at all.
        cs.add_bar(BarSpec::mem64(2, 0x2_0000_0000)).unwrap();
        assert_eq!(read32(&cs, 0x10), 0xc, "64-bit, prefetchable");
        assert_eq!(read32(&cs, 0x18), 0x4, "64-bit");
        for off in (0x10..0x20).step_by(4) {
            write32(&mut cs, off, u32::MAX);
        }
        assert_eq!(read32(&cs, 0x10), 0xffff_c00c);
        assert_eq!(read32(&cs, 0x14), 0xffff_ffff);
        assert_eq!(read32(&cs, 0x18), 0x0000_0004);
        assert_eq!(read32(&cs, 0x1c), 0xffff_fffe);
        // The size the guest computes from both halves.
        let sized = |lo: u32, hi: u32| {
            let mask = (u64::from(hi) << 32) | u64::from(lo & !0xf);
            (!mask).wrapping_add(1)
        };
        assert_eq!(sized(read32(&cs, 0x10), read32(&cs, 0x14)), 0x4000);
        assert_eq!(sized(read32(&cs, 0x18), read32(&cs, 0x1c)), 0x2_0000_0000);
        write32(&mut cs, 0x10, 0xfe00_0000);
        write32(&mut cs, 0x14, 0x0000_0080);
        assert_eq!(cs.bar_address(0), Some(0x80_fe00_0000));
        write32(&mut cs, 0x18, 0xffff_ffff);
        write32(&mut cs, 0x1c, 0x0000_0013);
        assert_eq!(cs.bar_address(2), Some(0x12_0000_0000));
        // The upper slots are not BARs of their own.
        assert_eq!(cs.bar(1), None);
        assert_eq!(cs.bar(3), None);
        assert_eq!(cs.bars().count(), 2);
    }

    #[test]
    fn io_bar_sizing() {
        let mut cs = space();
        cs.add_bar(BarSpec::io(4, 0x20)).unwrap();
        cs.add_bar(BarSpec::io(5, 4)).unwrap();
        assert_eq!(read32(&cs, 0x20), 0x1);
        write32(&mut cs, 0x20, u32::MAX);
        write32(&mut cs, 0x24, u32::MAX);
        assert_eq!(read32(&cs, 0x20), 0xffff_ffe1);
        assert_eq!(read32(&cs, 0x24), 0xffff_fffd);
        write32(&mut cs, 0x20, 0xc053);
        assert_eq!(read32(&cs, 0x20), 0xc041);
        assert_eq!(cs.bar_address(4), Some(0xc040));
        assert!(!cs.bar(4).unwrap().is_memory());
    }

    #[test]
    fn absent_bars_read_zero_after_sizing() {
        let mut cs = space();
        cs.add_bar(BarSpec::mem32(2, 0x1000)).unwrap();
        for off in (0x10..0x28).step_by(4) {
            write32(&mut cs, off, u32::MAX);
        }
        for (slot, off) in (0x10..0x28).step_by(4).enumerate() {
            let expect = if slot == 2 { 0xffff_f000 } else { 0 };
            assert_eq!(read32(&cs, off), expect, "BAR{slot}");
        }
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut cs = space();
        let bad_size = |index, size, kind| AddBarError::BadSize { index, size, kind };
        assert_eq!(
            cs.add_bar(BarSpec::mem32(6, 0x1000)),
            Err(AddBarError::BadIndex(6))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem64(5, 0x1000)),
            Err(AddBarError::BadIndex(5))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem32(0, 0x1001)),
            Err(bad_size(0, 0x1001, BarKind::Mem32))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem32(0, 8)),
            Err(bad_size(0, 8, BarKind::Mem32))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem32(0, 0)),
            Err(bad_size(0, 0, BarKind::Mem32))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem32(0, 1 << 32)),
            Err(bad_size(0, 1 << 32, BarKind::Mem32))
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem64(0, 8)),
            Err(bad_size(0, 8, BarKind::Mem64))
        );
        assert_eq!(
            cs.add_bar(BarSpec::io(0, 2)),
            Err(bad_size(0, 2, BarKind::Io))
        );
        assert_eq!(
            cs.add_bar(BarSpec::io(0, 512)),
            Err(bad_size(0, 512, BarKind::Io))
        );
        assert_eq!(
            cs.add_bar(BarSpec::io(0, 16).prefetchable()),
            Err(AddBarError::PrefetchableIo(0))
        );
        cs.add_bar(BarSpec::mem64(1, 0x1000)).unwrap();
        assert_eq!(
            cs.add_bar(BarSpec::mem32(1, 0x1000)),
            Err(AddBarError::SlotTaken { index: 1 })
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem32(2, 0x1000)),
            Err(AddBarError::SlotTaken { index: 2 })
        );
        assert_eq!(
            cs.add_bar(BarSpec::mem64(0, 0x1000)),
            Err(AddBarError::SlotTaken { index: 1 })
        );
        // Failed adds left nothing behind.
        assert_eq!(cs.bars().count(), 1);
        assert_eq!(read32(&cs, 0x10), 0);
        cs.add_bar(BarSpec::mem32(0, 0x1000)).unwrap();
        cs.add_bar(BarSpec::mem64(3, 1 << 40)).unwrap();
        assert_eq!(cs.bars().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 3]);
    }

    #[test]
    fn bar_memory_areas() {
        let page = rustix::param::page_size() as u64;
        let m = BarMemory::new("bar", 4 * page, &[]).unwrap();
        assert_eq!(m.size(), 4 * page);
        assert!(m.covers(0, 4 * page));
        assert!(!m.covers(1, 4 * page));
        assert!(!m.covers(u64::MAX, 2));
        assert_eq!(
            m.mappable(),
            [SparseArea {
                offset: 0,
                size: 4 * page
            }]
        );
        let rm = m.region_mmap();
        assert_eq!(rm.file_offset, 0);
        assert!(rm.sparse.is_empty());

        let areas = [
            SparseArea {
                offset: 3 * page,
                size: page,
            },
            SparseArea {
                offset: page,
                size: page,
            },
        ];
        let s = BarMemory::new("bar", 4 * page, &areas).unwrap();
        assert_eq!(s.areas()[0].offset, page, "sorted");
        assert!(s.covers(page + 8, 8));
        assert!(!s.covers(0, 8));
        assert!(!s.covers(2 * page - 4, 8), "straddles the area end");
        assert!(s.covers(3 * page, page));
        // The memory is shared with whoever maps the fd.
        s.memory().write_at(page, b"bar!").unwrap();
        let other =
            SharedMemory::map(s.fd().as_ref(), 0, 4 * page, emudev_dma::DmaProt::READ).unwrap();
        let mut b = [0u8; 4];
        other.read_at(page, &mut b).unwrap();
        assert_eq!(&b, b"bar!");
    }

    #[test]
    fn bad_bar_memory_is_refused() {
        let page = rustix::param::page_size() as u64;
        assert!(matches!(
            BarMemory::new("bar", 0, &[]),
            Err(CreateBarMemoryError::BadSize(0))
        ));
        assert!(matches!(
            BarMemory::new("bar", page + 1, &[]),
            Err(CreateBarMemoryError::BadSize(_))
        ));
        let bad = [
            SparseArea { offset: 0, size: 0 },
            SparseArea {
                offset: 1,
                size: page,
            },
            SparseArea {
                offset: 0,
                size: page + 1,
            },
            SparseArea {
                offset: page,
                size: 2 * page,
            },
            SparseArea {
                offset: u64::MAX - page + 1,
                size: page,
            },
        ];
        for a in bad {
            assert!(
                matches!(
                    BarMemory::new("bar", 2 * page, &[a]),
                    Err(CreateBarMemoryError::BadArea { .. })
                ),
                "{a:?}"
            );
        }
        let overlapping = [
            SparseArea {
                offset: 0,
                size: 2 * page,
            },
            SparseArea {
                offset: page,
                size: page,
            },
        ];
        assert!(BarMemory::new("bar", 2 * page, &overlapping).is_err());
        assert!(matches!(
            BarMemory::new("bad\0name", page, &[]),
            Err(CreateBarMemoryError::Create(_))
        ));
    }
}
