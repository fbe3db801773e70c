//! [`SharedMemory`]: one shared fd mapping outside any table.
//!
//! The client side of vfio-user needs the same kind of memory the server's table holds: the
//! memfd it allocates and DMA-maps for a device, and the region fds a server hands out for
//! mmappable BARs. Both are memory another process changes at any time, so they get the same
//! treatment as [`crate::DmaWindow`]: offset-checked copies and aligned atomics, never a Rust
//! reference into the mapping.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use crate::error::DmaAccessError;
use crate::raw::{HostRegion, RawAccessError, Word};
use crate::types::{DmaProt, HostAddr};

/// A `MAP_SHARED` mapping of part of a file descriptor.
#[derive(Debug)]
pub struct SharedMemory {
    region: HostRegion,
    len: u64,
    prot: DmaProt,
}

impl SharedMemory {
    /// Maps `len` bytes of `fd` from `file_offset` with `prot` (READ, or READ|WRITE).
    pub fn map(fd: impl AsFd, file_offset: u64, len: u64, prot: DmaProt) -> io::Result<Self> {
        let size =
            usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if !prot.contains(DmaProt::READ) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping must be readable",
            ));
        }
        let owned: OwnedFd = fd.as_fd().try_clone_to_owned()?;
        let region =
            HostRegion::map_shared(&owned, file_offset, size, prot.contains(DmaProt::WRITE))?;
        Ok(SharedMemory { region, len, prot })
    }

    /// Creates a memfd of `len` bytes (zero-filled), maps it read-write, and returns the mapping
    /// with the fd (to pass to the peer).
    pub fn memfd(name: &str, len: u64) -> io::Result<(Self, OwnedFd)> {
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        ftruncate(&fd, len)?;
        let mem = Self::map(&fd, 0, len, DmaProt::RW)?;
        Ok((mem, fd))
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty (never: zero-length maps are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rights it was mapped with.
    pub fn prot(&self) -> DmaProt {
        self.prot
    }

    /// Host address of the first byte (diagnostics only).
    pub fn host_addr(&self) -> HostAddr {
        HostAddr::new(self.region.base_addr())
    }

    fn err(e: RawAccessError, offset: u64, len: u64) -> DmaAccessError {
        match e {
            RawAccessError::OutOfRange => DmaAccessError::OutOfWindow { offset, len },
            RawAccessError::ReadOnly => DmaAccessError::Forbidden {
                iova: crate::Iova(offset),
            },
            RawAccessError::Misaligned | RawAccessError::Unsupported => {
                DmaAccessError::Misaligned { offset }
            }
        }
    }

    /// Copies bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaAccessError> {
        self.region
            .copy_out(offset, buf)
            .map_err(|e| Self::err(e, offset, buf.len() as u64))
    }

    /// Copies `data` to `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DmaAccessError> {
        self.region
            .copy_in(offset, data)
            .map_err(|e| Self::err(e, offset, data.len() as u64))
    }

    fn load<W: Word>(&self, offset: u64, order: Ordering) -> Result<W, DmaAccessError> {
        self.region
            .load::<W>(offset, order)
            .map_err(|e| Self::err(e, offset, size_of::<W>() as u64))
    }

    fn store<W: Word>(&self, offset: u64, v: W, order: Ordering) -> Result<(), DmaAccessError> {
        self.region
            .store::<W>(offset, v, order)
            .map_err(|e| Self::err(e, offset, size_of::<W>() as u64))
    }

    /// Atomic load of a naturally aligned u16.
    pub fn load_u16(&self, offset: u64, order: Ordering) -> Result<u16, DmaAccessError> {
        self.load(offset, order)
    }
    /// Atomic load of a naturally aligned u32.
    pub fn load_u32(&self, offset: u64, order: Ordering) -> Result<u32, DmaAccessError> {
        self.load(offset, order)
    }
    /// Atomic load of a naturally aligned u64.
    pub fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, DmaAccessError> {
        self.load(offset, order)
    }
    /// Atomic store of a naturally aligned u16.
    pub fn store_u16(&self, offset: u64, v: u16, order: Ordering) -> Result<(), DmaAccessError> {
        self.store(offset, v, order)
    }
    /// Atomic store of a naturally aligned u32.
    pub fn store_u32(&self, offset: u64, v: u32, order: Ordering) -> Result<(), DmaAccessError> {
        self.store(offset, v, order)
    }
    /// Atomic store of a naturally aligned u64.
    pub fn store_u64(&self, offset: u64, v: u64, order: Ordering) -> Result<(), DmaAccessError> {
        self.store(offset, v, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_round_trip_and_second_mapping_sees_writes() {
        let (a, fd) = SharedMemory::memfd("t", 8192).unwrap();
        let b = SharedMemory::map(&fd, 4096, 4096, DmaProt::READ).unwrap();
        a.write_at(4096 + 10, b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read_at(10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        a.store_u32(4096 + 16, 0xdead_beef, Ordering::Release)
            .unwrap();
        assert_eq!(b.load_u32(16, Ordering::Acquire).unwrap(), 0xdead_beef);
        assert!(matches!(
            b.write_at(0, b"x"),
            Err(DmaAccessError::Forbidden { .. })
        ));
        assert!(matches!(
            b.read_at(4095, &mut buf),
            Err(DmaAccessError::OutOfWindow { .. })
        ));
        assert!(matches!(
            a.load_u32(2, Ordering::Relaxed),
            Err(DmaAccessError::Misaligned { .. })
        ));
        assert!(SharedMemory::map(&fd, 0, 0, DmaProt::RW).is_err());
        assert!(SharedMemory::map(&fd, 0, 4096, DmaProt::WRITE).is_err());
    }
}
