//! Plain value types of the DMA table: addresses, access rights, limits, map requests and the
//! per-mapping description used by the memory-table view.

use std::fmt;
use std::os::fd::OwnedFd;

/// An I/O virtual address: an address in the client's DMA address space. Never a host pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

impl Iova {
    /// The address as a plain integer.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` if that overflows the 64-bit address space.
    pub const fn checked_add(self, offset: u64) -> Option<Iova> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl From<u64> for Iova {
    fn from(v: u64) -> Self {
        Iova(v)
    }
}

/// A host virtual address inside one of our mmaps (opaque; only for diagnostics / mem-table views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAddr(usize);

impl HostAddr {
    pub(crate) const fn new(addr: usize) -> Self {
        HostAddr(addr)
    }

    /// The address as a plain integer (not to be dereferenced).
    pub const fn raw(self) -> usize {
        self.0
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Access rights of a mapping: the vfio-user DMA_MAP flag bits (READ = 1<<0, WRITE = 1<<1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DmaProt(u32);

impl DmaProt {
    /// No access (not valid for a mapping; the neutral element for `contains`).
    pub const NONE: DmaProt = DmaProt(0);
    /// The device may read the memory.
    pub const READ: DmaProt = DmaProt(1 << 0);
    /// The device may write the memory.
    pub const WRITE: DmaProt = DmaProt(1 << 1);
    /// Read and write.
    pub const RW: DmaProt = DmaProt((1 << 0) | (1 << 1));

    /// Parses DMA_MAP flag bits; `None` if any bit other than READ/WRITE is set.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::RW.0 != 0 {
            None
        } else {
            Some(DmaProt(bits))
        }
    }

    /// The flag bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every right in `other` is also in `self`.
    pub const fn contains(self, other: DmaProt) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no right is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both sets of rights.
    pub const fn union(self, other: DmaProt) -> DmaProt {
        DmaProt(self.0 | other.0)
    }
}

impl std::ops::BitOr for DmaProt {
    type Output = DmaProt;
    fn bitor(self, rhs: DmaProt) -> DmaProt {
        self.union(rhs)
    }
}

impl fmt::Display for DmaProt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(DmaProt::READ) {
            'r'
        } else {
            '-'
        };
        let w = if self.contains(DmaProt::WRITE) {
            'w'
        } else {
            '-'
        };
        write!(f, "{r}{w}")
    }
}

/// Limits the table enforces on DMA_MAP requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaLimits {
    /// Most mappings valid at once (the `max_dma_maps` capability; default 65535).
    pub max_maps: usize,
    /// IOVA, size and file offset must be multiples of this (the `pgsizes` capability; default 4096).
    /// A value of 0 or 1 disables the alignment check.
    pub page_size: u64,
    /// Largest single mapping in bytes (default 1 << 43, 8 TiB).
    pub max_map_size: u64,
}

impl Default for DmaLimits {
    fn default() -> Self {
        DmaLimits {
            max_maps: 65535,
            page_size: 4096,
            max_map_size: 1 << 43,
        }
    }
}

/// A decoded DMA_MAP request. With `fd`, the memory is mmapped; without, it is reachable only
/// through DMA_READ/DMA_WRITE messages (see [`crate::RemoteDma`]).
#[derive(Debug)]
pub struct DmaMapRequest {
    /// First IOVA of the mapping.
    pub iova: Iova,
    /// Length in bytes.
    pub size: u64,
    /// Access the device is granted.
    pub prot: DmaProt,
    /// Offset of the mapping in the file behind `fd` (ignored without an fd).
    pub file_offset: u64,
    /// The file descriptor sent with the message, if any. Closed once the memory is mapped.
    pub fd: Option<OwnedFd>,
}

/// Description of one mapping (the memory-table view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaMapInfo {
    /// First IOVA of the mapping.
    pub iova: Iova,
    /// Length in bytes.
    pub size: u64,
    /// Access the device is granted.
    pub prot: DmaProt,
    /// Offset in the client's file.
    pub file_offset: u64,
    /// Where the memory is mapped in this process; `None` for an fd-less mapping.
    pub host: Option<HostAddr>,
}

impl DmaMapInfo {
    /// One past the last IOVA of the mapping (saturating; mappings never wrap).
    pub fn end(&self) -> u64 {
        self.iova.0.saturating_add(self.size)
    }

    /// Whether `iova` lies inside the mapping.
    pub fn contains(&self, iova: Iova) -> bool {
        iova.0 >= self.iova.0 && iova.0 - self.iova.0 < self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_arithmetic_and_display() {
        assert_eq!(Iova(0x1000).checked_add(0x10), Some(Iova(0x1010)));
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(Iova(u64::MAX).checked_add(0), Some(Iova(u64::MAX)));
        assert_eq!(Iova(0xdead_b000).to_string(), "0xdeadb000");
        assert_eq!(Iova(7).raw(), 7);
        assert!(Iova(1) < Iova(2));
    }

    #[test]
    fn prot_bits() {
        assert_eq!(DmaProt::from_bits(0), Some(DmaProt::NONE));
        assert_eq!(DmaProt::from_bits(1), Some(DmaProt::READ));
        assert_eq!(DmaProt::from_bits(2), Some(DmaProt::WRITE));
        assert_eq!(DmaProt::from_bits(3), Some(DmaProt::RW));
        assert_eq!(DmaProt::from_bits(4), None);
        assert_eq!(DmaProt::from_bits(0x8000_0001), None);
        assert!(DmaProt::RW.contains(DmaProt::READ));
        assert!(DmaProt::RW.contains(DmaProt::WRITE));
        assert!(!DmaProt::READ.contains(DmaProt::WRITE));
        assert!(!DmaProt::WRITE.contains(DmaProt::RW));
        assert!(DmaProt::READ.contains(DmaProt::NONE));
        assert_eq!(DmaProt::READ | DmaProt::WRITE, DmaProt::RW);
        assert_eq!(DmaProt::RW.bits(), 3);
        assert!(DmaProt::default().is_empty());
        assert_eq!(DmaProt::READ.to_string(), "r-");
        assert_eq!(DmaProt::RW.to_string(), "rw");
    }

    #[test]
    fn limits_default() {
        let l = DmaLimits::default();
        assert_eq!(l.max_maps, 65535);
        assert_eq!(l.page_size, 4096);
        assert_eq!(l.max_map_size, 8 << 40);
    }

    #[test]
    fn info_contains() {
        let info = DmaMapInfo {
            iova: Iova(0x1000),
            size: 0x1000,
            prot: DmaProt::RW,
            file_offset: 0,
            host: None,
        };
        assert!(info.contains(Iova(0x1000)));
        assert!(info.contains(Iova(0x1fff)));
        assert!(!info.contains(Iova(0x2000)));
        assert!(!info.contains(Iova(0xfff)));
        assert_eq!(info.end(), 0x2000);
    }
}
