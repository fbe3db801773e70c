//! Error types, one per failed operation, each mapping to the errno a vfio-user reply carries.

use std::io;

use rustix::io::Errno;

use crate::types::Iova;

const EINVAL: i32 = Errno::INVAL.raw_os_error();
const EEXIST: i32 = Errno::EXIST.raw_os_error();
const ENOSPC: i32 = Errno::NOSPC.raw_os_error();
const ENOENT: i32 = Errno::NOENT.raw_os_error();
const EFAULT: i32 = Errno::FAULT.raw_os_error();
const EACCES: i32 = Errno::ACCESS.raw_os_error();
const EIO: i32 = Errno::IO.raw_os_error();

/// Why a DMA_MAP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DmaMapError {
    /// The mapping has size 0.
    #[error("DMA map of size 0")]
    ZeroSize,
    /// IOVA, size or file offset is not a multiple of the page size.
    #[error("DMA map not page-aligned: iova {iova}, size {size:#x}, file offset {file_offset:#x}")]
    Misaligned {
        /// Requested IOVA.
        iova: Iova,
        /// Requested size.
        size: u64,
        /// Requested file offset.
        file_offset: u64,
    },
    /// `iova + size` overflows the 64-bit address space.
    #[error("DMA map wraps around the address space")]
    Wraps,
    /// The range overlaps a mapping that already exists (its IOVA and size are reported).
    #[error("DMA map overlaps the existing mapping at {iova} (size {size:#x})")]
    Overlaps {
        /// IOVA of the existing mapping.
        iova: Iova,
        /// Size of the existing mapping.
        size: u64,
    },
    /// The table already holds `limit` mappings.
    #[error("too many DMA mappings (limit {limit})")]
    TooMany {
        /// The configured `max_maps`.
        limit: usize,
    },
    /// The mapping is larger than `max_map_size`.
    #[error("DMA map too large: {size:#x} bytes")]
    TooLarge {
        /// Requested size.
        size: u64,
    },
    /// mmap (or the check of the file before it) failed.
    #[error("mmap of DMA region failed: {0}")]
    Mmap(#[source] io::Error),
    /// Neither READ nor WRITE was requested.
    #[error("DMA map grants neither read nor write access")]
    BadProt,
}

impl DmaMapError {
    /// The errno to put in the vfio-user error reply.
    pub fn errno(&self) -> i32 {
        match self {
            DmaMapError::ZeroSize
            | DmaMapError::Misaligned { .. }
            | DmaMapError::Wraps
            | DmaMapError::TooMany { .. }
            | DmaMapError::BadProt => EINVAL,
            DmaMapError::Overlaps { .. } => EEXIST,
            DmaMapError::TooLarge { .. } => ENOSPC,
            DmaMapError::Mmap(e) => e.raw_os_error().filter(|&n| n > 0).unwrap_or(EINVAL),
        }
    }
}

/// Why a DMA_UNMAP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DmaUnmapError {
    /// No mapping has exactly this IOVA and size (never mapped, or a partial range).
    #[error("no DMA mapping at {iova} with size {size:#x}")]
    NotFound {
        /// Requested IOVA.
        iova: Iova,
        /// Requested size.
        size: u64,
    },
}

impl DmaUnmapError {
    /// The errno to put in the vfio-user error reply.
    pub fn errno(&self) -> i32 {
        match self {
            DmaUnmapError::NotFound { .. } => ENOENT,
        }
    }
}

/// Why a device access to client memory failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaAccessError {
    /// Some byte of the range is not in any mapping (or the range wraps).
    #[error("DMA access to unmapped memory: {iova} + {len:#x}")]
    Unmapped {
        /// First IOVA of the access.
        iova: Iova,
        /// Length of the access.
        len: u64,
    },
    /// The mapping (or window) does not grant the access: write to a read-only map, read from a
    /// write-only one.
    #[error("DMA access at {iova} not permitted by the mapping")]
    Forbidden {
        /// IOVA of the refused part.
        iova: Iova,
    },
    /// An atomic access at an offset that is not naturally aligned.
    #[error("misaligned atomic DMA access at window offset {offset:#x}")]
    Misaligned {
        /// Offset inside the window.
        offset: u64,
    },
    /// The access does not fit inside the window.
    #[error("DMA access outside the window: offset {offset:#x}, length {len:#x}")]
    OutOfWindow {
        /// Offset inside the window.
        offset: u64,
        /// Length of the access.
        len: u64,
    },
    /// The memory is an fd-less mapping and no [`crate::RemoteDma`] is installed.
    #[error("DMA access at {iova} needs DMA_READ/DMA_WRITE but no remote is set")]
    NoRemote {
        /// IOVA of the fd-less part.
        iova: Iova,
    },
    /// The DMA_READ/DMA_WRITE exchange with the client failed.
    #[error("remote DMA failed: {0}")]
    Remote(#[source] io::Error),
    /// A window was requested over an fd-less mapping (there is no host memory to point at).
    #[error("DMA window at {iova} over a mapping without host memory")]
    NotMmapped {
        /// Requested IOVA.
        iova: Iova,
    },
    /// A window was requested over a range that is mapped but by more than one mapping.
    #[error("DMA window {iova} + {len:#x} spans several mappings")]
    SpansMappings {
        /// Requested IOVA.
        iova: Iova,
        /// Requested length.
        len: u64,
    },
}

impl DmaAccessError {
    /// The errno to report (e.g. in a reply to a request that triggered the access).
    pub fn errno(&self) -> i32 {
        match self {
            DmaAccessError::Unmapped { .. }
            | DmaAccessError::OutOfWindow { .. }
            | DmaAccessError::NoRemote { .. }
            | DmaAccessError::NotMmapped { .. }
            | DmaAccessError::SpansMappings { .. } => EFAULT,
            DmaAccessError::Forbidden { .. } => EACCES,
            DmaAccessError::Misaligned { .. } => EINVAL,
            DmaAccessError::Remote(_) => EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_match_linux_values() {
        assert_eq!(DmaMapError::ZeroSize.errno(), 22);
        assert_eq!(DmaMapError::Wraps.errno(), 22);
        assert_eq!(DmaMapError::BadProt.errno(), 22);
        assert_eq!(DmaMapError::TooMany { limit: 1 }.errno(), 22);
        assert_eq!(
            DmaMapError::Misaligned {
                iova: Iova(1),
                size: 1,
                file_offset: 0
            }
            .errno(),
            22
        );
        assert_eq!(
            DmaMapError::Overlaps {
                iova: Iova(0),
                size: 1
            }
            .errno(),
            17
        );
        assert_eq!(DmaMapError::TooLarge { size: 1 }.errno(), 28);
        assert_eq!(
            DmaMapError::Mmap(io::Error::from_raw_os_error(12)).errno(),
            12
        );
        assert_eq!(DmaMapError::Mmap(io::Error::other("x")).errno(), 22);
        assert_eq!(
            DmaUnmapError::NotFound {
                iova: Iova(0),
                size: 1
            }
            .errno(),
            2
        );
        assert_eq!(
            DmaAccessError::Unmapped {
                iova: Iova(0),
                len: 1
            }
            .errno(),
            14
        );
        assert_eq!(DmaAccessError::Forbidden { iova: Iova(0) }.errno(), 13);
        assert_eq!(DmaAccessError::Misaligned { offset: 1 }.errno(), 22);
        assert_eq!(
            DmaAccessError::OutOfWindow { offset: 1, len: 1 }.errno(),
            14
        );
        assert_eq!(DmaAccessError::NoRemote { iova: Iova(0) }.errno(), 14);
        assert_eq!(DmaAccessError::Remote(io::Error::other("x")).errno(), 5);
        assert_eq!(DmaAccessError::NotMmapped { iova: Iova(0) }.errno(), 14);
        assert_eq!(
            DmaAccessError::SpansMappings {
                iova: Iova(0),
                len: 2
            }
            .errno(),
            14
        );
    }

    #[test]
    fn messages_name_the_range() {
        let e = DmaMapError::Overlaps {
            iova: Iova(0x2000),
            size: 0x1000,
        };
        assert_eq!(
            e.to_string(),
            "DMA map overlaps the existing mapping at 0x2000 (size 0x1000)"
        );
        let e = DmaAccessError::Unmapped {
            iova: Iova(0x10),
            len: 4,
        };
        assert_eq!(e.to_string(), "DMA access to unmapped memory: 0x10 + 0x4");
    }
}
