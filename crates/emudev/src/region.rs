//! Regions: the device's layout (BARs, config space) and how each is reached.
//!
//! A region is trapped (every access is a REGION_READ/REGION_WRITE message the device answers),
//! mmappable as a whole, or mmappable in sparse areas with the rest trapped. The layout is
//! fixed when the device is built; the vfio-user adapter answers `DEVICE_GET_REGION_INFO` from
//! it. [`crate::EmuDev::region_map`] maps the mmappable areas into this process, which is how
//! the device side (or a provider) reaches a doorbell page the client writes directly.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use emudev_dma::{DmaProt, SharedMemory};
use emudev_vfio_user::{RegionInfo, RegionMmap, SparseArea};
use vfio_bindings::bindings::vfio::{VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};

use crate::error::BuildError;

/// Page size that mmappable offsets must be aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// How a region is reached.
#[derive(Clone, Debug)]
pub enum RegionAccess {
    /// Every access is a message to the device.
    Trapped,
    /// The whole region is `size` bytes of `fd` from `file_offset`.
    Mmap {
        /// The backing file (a memfd, typically); a duplicate goes to the client.
        fd: Arc<OwnedFd>,
        /// File offset of the region's first byte (page aligned).
        file_offset: u64,
    },
    /// Only `areas` are mmappable (at `file_offset + area.offset` in `fd`); the rest is trapped.
    Sparse {
        /// The backing file.
        fd: Arc<OwnedFd>,
        /// File offset of the region's first byte (page aligned).
        file_offset: u64,
        /// The mmappable areas, region relative (page aligned, disjoint, inside the region).
        areas: Vec<SparseArea>,
    },
}

/// One region of the device layout.
#[derive(Clone, Debug)]
pub struct Region {
    /// vfio region index (for PCI: BAR0-5 = 0-5, ROM = 6, CONFIG = 7).
    pub index: u32,
    /// Name, unique in the device ("bar0", "config", ...); `region_map` looks regions up by it.
    pub name: String,
    /// Size in bytes (non-zero).
    pub size: u64,
    /// The client may read it.
    pub readable: bool,
    /// The client may write it.
    pub writable: bool,
    /// How it is reached.
    pub access: RegionAccess,
}

impl Region {
    /// A read-write trapped region.
    pub fn trapped(index: u32, name: &str, size: u64) -> Self {
        Region {
            index,
            name: name.to_string(),
            size,
            readable: true,
            writable: true,
            access: RegionAccess::Trapped,
        }
    }

    /// A read-write region mmappable as a whole from `fd` at `file_offset`.
    pub fn mmap(index: u32, name: &str, size: u64, fd: Arc<OwnedFd>, file_offset: u64) -> Self {
        Region {
            access: RegionAccess::Mmap { fd, file_offset },
            ..Self::trapped(index, name, size)
        }
    }

    /// A read-write region whose `areas` are mmappable from `fd` and the rest trapped.
    pub fn sparse(
        index: u32,
        name: &str,
        size: u64,
        fd: Arc<OwnedFd>,
        file_offset: u64,
        areas: Vec<SparseArea>,
    ) -> Self {
        Region {
            access: RegionAccess::Sparse {
                fd,
                file_offset,
                areas,
            },
            ..Self::trapped(index, name, size)
        }
    }

    /// The same region without client write access.
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// `VFIO_REGION_INFO_FLAG_{READ,WRITE}`.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.readable {
            f |= VFIO_REGION_INFO_FLAG_READ;
        }
        if self.writable {
            f |= VFIO_REGION_INFO_FLAG_WRITE;
        }
        f
    }

    /// The mmappable areas, region relative: none for a trapped region, `[0, size)` for a
    /// whole-mmap one.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        match &self.access {
            RegionAccess::Trapped => Vec::new(),
            RegionAccess::Mmap { .. } => vec![SparseArea {
                offset: 0,
                size: self.size,
            }],
            RegionAccess::Sparse { areas, .. } => areas.clone(),
        }
    }

    /// Whether `[offset, offset + len)` lies inside one mmappable area.
    pub fn is_mmapped(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        self.mmap_areas()
            .iter()
            .any(|a| offset >= a.offset && end <= a.offset + a.size)
    }

    /// Whether any byte of `[offset, offset + len)` lies inside an mmappable area.
    pub fn touches_mmap(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.mmap_areas()
            .iter()
            .any(|a| offset < a.offset + a.size && a.offset < end)
    }

    /// The backing fd and file offset, for an mmappable region.
    pub fn backing(&self) -> Option<(&Arc<OwnedFd>, u64)> {
        match &self.access {
            RegionAccess::Trapped => None,
            RegionAccess::Mmap { fd, file_offset }
            | RegionAccess::Sparse {
                fd, file_offset, ..
            } => Some((fd, *file_offset)),
        }
    }

    /// The region as `DEVICE_GET_REGION_INFO` reports it.
    pub fn to_region_info(&self) -> RegionInfo {
        let mmap = match &self.access {
            RegionAccess::Trapped => None,
            RegionAccess::Mmap { fd, file_offset } => Some(RegionMmap {
                fd: fd.clone(),
                file_offset: *file_offset,
                sparse: Vec::new(),
            }),
            RegionAccess::Sparse {
                fd,
                file_offset,
                areas,
            } => Some(RegionMmap {
                fd: fd.clone(),
                file_offset: *file_offset,
                sparse: areas.clone(),
            }),
        };
        RegionInfo {
            flags: self.flags(),
            size: self.size,
            mmap,
        }
    }

    /// Checks the region on its own (sizes, areas, alignment).
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.name.is_empty() {
            return Err(BuildError::EmptyRegionName { index: self.index });
        }
        if self.size == 0 {
            return Err(BuildError::EmptyRegion {
                name: self.name.clone(),
            });
        }
        let Some((_, file_offset)) = self.backing() else {
            return Ok(());
        };
        let bad = |offset: u64, size: u64, reason: &'static str| BuildError::BadMmapArea {
            region: self.name.clone(),
            offset,
            size,
            reason,
        };
        if !self.readable {
            return Err(bad(0, self.size, "an mmappable region must be readable"));
        }
        if !file_offset.is_multiple_of(PAGE_SIZE) {
            return Err(bad(0, self.size, "file offset is not page aligned"));
        }
        file_offset
            .checked_add(self.size)
            .ok_or_else(|| bad(0, self.size, "file range overflows"))?;
        let mut areas = self.mmap_areas();
        if areas.is_empty() {
            return Err(bad(0, 0, "a sparse region needs at least one area"));
        }
        areas.sort_by_key(|a| a.offset);
        let mut prev_end = 0u64;
        for (i, a) in areas.iter().enumerate() {
            if a.size == 0 {
                return Err(bad(a.offset, a.size, "empty area"));
            }
            if !a.offset.is_multiple_of(PAGE_SIZE) {
                return Err(bad(a.offset, a.size, "area offset is not page aligned"));
            }
            let end = a.offset.checked_add(a.size).filter(|&e| e <= self.size);
            let Some(end) = end else {
                return Err(bad(a.offset, a.size, "area extends past the region"));
            };
            if i > 0 && a.offset < prev_end {
                return Err(bad(a.offset, a.size, "areas overlap"));
            }
            prev_end = end;
        }
        Ok(())
    }

    /// Maps every mmappable area (read-write, or read-only when the fd refuses writes).
    pub(crate) fn map(&self) -> io::Result<Vec<MappedArea>> {
        let Some((fd, file_offset)) = self.backing() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "region is trapped",
            ));
        };
        self.mmap_areas()
            .into_iter()
            .map(|a| {
                let at = file_offset.checked_add(a.offset).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "mmap offset overflows")
                })?;
                let mem = SharedMemory::map(fd, at, a.size, DmaProt::RW)
                    .or_else(|_| SharedMemory::map(fd, at, a.size, DmaProt::READ))?;
                Ok(MappedArea {
                    offset: a.offset,
                    size: a.size,
                    mem: Arc::new(mem),
                })
            })
            .collect()
    }
}

/// Creates a zero-filled memfd of `len` bytes to back an mmappable region.
pub fn memfd_backing(name: &str, len: u64) -> io::Result<Arc<OwnedFd>> {
    let (_mapping, fd) = SharedMemory::memfd(name, len)?;
    Ok(Arc::new(fd))
}

/// One mmappable area of a region, mapped into this process.
#[derive(Clone, Debug)]
pub struct MappedArea {
    /// Offset of the area in the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// The mapping (offset 0 is the area's first byte).
    pub mem: Arc<SharedMemory>,
}

/// What [`crate::EmuDev::region_map`] returns: where a region's mmappable parts are.
#[derive(Clone, Debug)]
pub struct RegionMapping {
    /// Region index.
    pub index: u32,
    /// Region name.
    pub name: String,
    /// Region size.
    pub size: u64,
    /// File offset of the region in its backing fd.
    pub file_offset: u64,
    /// The mapped areas, sorted by offset.
    pub areas: Vec<MappedArea>,
}

impl RegionMapping {
    /// The mapping holding `[offset, offset + len)` of the region and the offset inside it.
    pub fn area_at(&self, offset: u64, len: u64) -> Option<(&Arc<SharedMemory>, u64)> {
        let end = offset.checked_add(len)?;
        self.areas
            .iter()
            .find(|a| offset >= a.offset && end <= a.offset + a.size)
            .map(|a| (&a.mem, offset - a.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        memfd_backing("region-test", 4 * PAGE_SIZE).expect("memfd")
    }

    #[test]
    fn region_info_reflects_the_access_kind() {
        let t = Region::trapped(0, "bar0", 0x1000);
        let info = t.to_region_info();
        assert_eq!(
            info.flags,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        );
        assert_eq!(info.size, 0x1000);
        assert!(info.mmap.is_none());
        assert!(t.mmap_areas().is_empty());
        assert!(t.validate().is_ok());

        let m = Region::mmap(1, "bar1", 0x2000, fd(), 0x1000).read_only();
        let info = m.to_region_info();
        assert_eq!(info.flags, VFIO_REGION_INFO_FLAG_READ);
        let mm = info.mmap.expect("mmap");
        assert_eq!((mm.file_offset, mm.sparse.len()), (0x1000, 0));
        assert_eq!(
            m.mmap_areas(),
            vec![SparseArea {
                offset: 0,
                size: 0x2000
            }]
        );
        assert!(m.validate().is_ok());

        let areas = vec![SparseArea {
            offset: 0,
            size: 0x1000,
        }];
        let s = Region::sparse(2, "bar2", 0x2000, fd(), 0, areas.clone());
        assert_eq!(s.to_region_info().mmap.expect("mmap").sparse, areas);
        assert!(s.is_mmapped(0xffc, 4));
        assert!(!s.is_mmapped(0xffe, 4));
        assert!(s.touches_mmap(0xffe, 4));
        assert!(!s.touches_mmap(0x1000, 4));
        assert!(!s.is_mmapped(u64::MAX, 2));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_layouts_are_refused() {
        let sp = |size, areas| Region::sparse(2, "bar2", size, fd(), 0, areas);
        let area = |offset, size| SparseArea { offset, size };
        let reason = |r: Region| match r.validate() {
            Err(BuildError::BadMmapArea { reason, .. }) => reason,
            other => panic!("expected BadMmapArea, got {other:?}"),
        };
        assert_eq!(
            reason(sp(0x2000, vec![])),
            "a sparse region needs at least one area"
        );
        assert_eq!(reason(sp(0x2000, vec![area(0, 0)])), "empty area");
        assert_eq!(
            reason(sp(0x2000, vec![area(0x800, 0x800)])),
            "area offset is not page aligned"
        );
        assert_eq!(
            reason(sp(0x2000, vec![area(0x1000, 0x2000)])),
            "area extends past the region"
        );
        assert_eq!(
            reason(sp(0x2000, vec![area(0x1000, u64::MAX)])),
            "area extends past the region"
        );
        assert_eq!(
            reason(sp(0x3000, vec![area(0x1000, 0x2000), area(0x2000, 0x1000)])),
            "areas overlap"
        );
        assert_eq!(
            reason(Region::mmap(0, "b", 0x1000, fd(), 0x10)),
            "file offset is not page aligned"
        );
        assert_eq!(
            reason(Region::mmap(0, "b", 0x1000, fd(), u64::MAX - 0xfff)),
            "file range overflows"
        );
        let mut wo = Region::mmap(0, "b", 0x1000, fd(), 0);
        wo.readable = false;
        assert_eq!(reason(wo), "an mmappable region must be readable");
        assert!(matches!(
            Region::trapped(0, "", 1).validate(),
            Err(BuildError::EmptyRegionName { index: 0 })
        ));
        assert!(matches!(
            Region::trapped(0, "x", 0).validate(),
            Err(BuildError::EmptyRegion { .. })
        ));
    }

    #[test]
    fn mapping_finds_areas() {
        let f = fd();
        let s = Region::sparse(
            2,
            "bar2",
            0x3000,
            f.clone(),
            0,
            vec![SparseArea {
                offset: 0x2000,
                size: 0x1000,
            }],
        );
        let areas = s.map().expect("map");
        assert_eq!(areas.len(), 1);
        let m = RegionMapping {
            index: 2,
            name: "bar2".into(),
            size: 0x3000,
            file_offset: 0,
            areas,
        };
        let (mem, off) = m.area_at(0x2010, 4).expect("area");
        assert_eq!(off, 0x10);
        // The device-side mapping sees writes made through another mapping of the same fd.
        let other = SharedMemory::map(&*f, 0x2000, 0x1000, DmaProt::RW).expect("map");
        other.write_at(0x10, &[9, 8, 7, 6]).expect("write");
        let mut b = [0u8; 4];
        mem.read_at(off, &mut b).expect("read");
        assert_eq!(b, [9, 8, 7, 6]);
        assert!(m.area_at(0x1ffc, 8).is_none());
        assert!(m.area_at(u64::MAX, 2).is_none());
        assert!(Region::trapped(0, "bar0", 0x1000).map().is_err());
    }
}
