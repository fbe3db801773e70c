//! Doorbells: how the driver tells the device that a queue has new work.
//!
//! A doorbell is a register (region, offset, width) and a way for the device side to notice
//! a write to it. The device chooses per doorbell:
//!
//! - [`DoorbellKind::Trapped`]: the register is in a trapped part of its region, so every write
//!   reaches the device as a REGION_WRITE. The vfio-user adapter also forwards it to the
//!   attached data-path provider when the doorbell belongs to a ready queue.
//! - [`DoorbellKind::Mem`]: the register is on a page of a (sparse) mmappable region. The
//!   driver's store lands directly in shared memory; nobody is told. The provider polls the
//!   value through [`DoorbellMem`] (the emudev `EMU_DEV_DB_MEM` scheme).
//! - [`DoorbellKind::EventFd`]: an ioeventfd handed to the client with
//!   `GET_REGION_IO_FDS`; the client's hypervisor signals it on a write to the register (the
//!   emudev `EMU_DEV_DB_FD` scheme), and the provider waits on the fd.
//! - [`DoorbellKind::MemKick`]: both at once, for clients that run the driver in their own
//!   process rather than under a hypervisor. The value lives on the mmapped page as with
//!   `Mem`, and `GET_REGION_IO_FDS` also hands out an eventfd for the register (a plain
//!   ioeventfd entry, no data match): after storing, the client signals it, so a provider that
//!   went idle can sleep on the fd instead of polling. A plain ioeventfd carries no value and
//!   the page carries no signal; together they carry both. A client that never signals (QEMU
//!   maps the page into the guest and does not ask for io fds) still works: the provider
//!   keeps polling the page, on a slower schedule when idle.
//!
//! Register values are little-endian, as on PCI.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use emudev_dma::{DmaAccessError, SharedMemory};

use crate::queue::QueueId;

/// A doorbell number, unique within one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DoorbellId(pub u32);

impl fmt::Display for DoorbellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "doorbell {}", self.0)
    }
}

/// How the device side notices a doorbell write.
#[derive(Clone, Debug)]
pub enum DoorbellKind {
    /// A trapped register: writes arrive as REGION_WRITEs.
    Trapped,
    /// A word on an mmapped doorbell page, polled through shared memory.
    Mem,
    /// An ioeventfd the client's hypervisor signals on a write (GET_REGION_IO_FDS).
    EventFd {
        /// The eventfd (the device side reads it; a duplicate goes to the client).
        fd: Arc<OwnedFd>,
        /// Signal only when the written value equals this (KVM `DATAMATCH`).
        datamatch: Option<u64>,
    },
    /// A word on an mmapped doorbell page plus an eventfd the client signals after storing
    /// there (handed out by GET_REGION_IO_FDS as an ioeventfd without data match).
    MemKick {
        /// The eventfd (the device side reads it; a duplicate goes to the client).
        fd: Arc<OwnedFd>,
    },
}

impl DoorbellKind {
    /// A short name for messages: "trapped", "mem" or "eventfd".
    pub fn name(&self) -> &'static str {
        match self {
            DoorbellKind::Trapped => "trapped",
            DoorbellKind::Mem => "mem",
            DoorbellKind::EventFd { .. } => "eventfd",
            DoorbellKind::MemKick { .. } => "mem+kick",
        }
    }

    /// Whether the value is a word on an mmapped page (`Mem` and `MemKick`).
    pub fn on_page(&self) -> bool {
        matches!(self, DoorbellKind::Mem | DoorbellKind::MemKick { .. })
    }

    /// The eventfd the device side waits on (`EventFd` and `MemKick`).
    pub fn eventfd(&self) -> Option<&Arc<OwnedFd>> {
        match self {
            DoorbellKind::EventFd { fd, .. } | DoorbellKind::MemKick { fd } => Some(fd),
            DoorbellKind::Trapped | DoorbellKind::Mem => None,
        }
    }
}

/// A doorbell declaration: where the register is and how writes are noticed.
#[derive(Clone, Debug)]
pub struct Doorbell {
    /// Region index the register is in.
    pub region: u32,
    /// Offset of the register in the region (naturally aligned to `width`).
    pub offset: u64,
    /// Register width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// How writes are noticed.
    pub kind: DoorbellKind,
}

impl Doorbell {
    /// A trapped 4-byte doorbell.
    pub fn trapped(region: u32, offset: u64) -> Self {
        Doorbell {
            region,
            offset,
            width: 4,
            kind: DoorbellKind::Trapped,
        }
    }

    /// A 4-byte doorbell on an mmapped page.
    pub fn mem(region: u32, offset: u64) -> Self {
        Doorbell {
            region,
            offset,
            width: 4,
            kind: DoorbellKind::Mem,
        }
    }

    /// A 4-byte ioeventfd doorbell signalling `fd` on any written value.
    pub fn eventfd(region: u32, offset: u64, fd: Arc<OwnedFd>) -> Self {
        Doorbell {
            region,
            offset,
            width: 4,
            kind: DoorbellKind::EventFd {
                fd,
                datamatch: None,
            },
        }
    }

    /// A 4-byte doorbell on an mmapped page whose writer also signals `fd`.
    pub fn mem_kick(region: u32, offset: u64, fd: Arc<OwnedFd>) -> Self {
        Doorbell {
            region,
            offset,
            width: 4,
            kind: DoorbellKind::MemKick { fd },
        }
    }

    /// Changes the register width.
    pub fn with_width(mut self, width: u8) -> Self {
        self.width = width;
        self
    }

    /// `[offset, offset + width)`, or `None` on overflow.
    pub(crate) fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.width))
    }
}

/// The shared-memory word behind a [`DoorbellKind::Mem`] or [`DoorbellKind::MemKick`] doorbell: the provider's polling
/// handle. The mapping is the same one [`crate::EmuDev::region_map`] returns, so every user of
/// the page shares one mapping.
#[derive(Clone, Debug)]
pub struct DoorbellMem {
    mem: Arc<SharedMemory>,
    offset: u64,
    width: u8,
}

impl DoorbellMem {
    pub(crate) fn new(mem: Arc<SharedMemory>, offset: u64, width: u8) -> Self {
        DoorbellMem { mem, offset, width }
    }

    /// The mapping of the doorbell page (or the whole mmappable area holding it).
    pub fn memory(&self) -> &Arc<SharedMemory> {
        &self.mem
    }

    /// Offset of the register in [`DoorbellMem::memory`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Register width in bytes.
    pub fn width(&self) -> u8 {
        self.width
    }

    /// Reads the register (acquire ordering for 2-, 4- and 8-byte registers, so ring entries
    /// the driver wrote before ringing are visible after this returns).
    pub fn read(&self) -> Result<u64, DmaAccessError> {
        let a = Ordering::Acquire;
        Ok(match self.width {
            2 => u64::from(u16::from_le(self.mem.load_u16(self.offset, a)?)),
            4 => u64::from(u32::from_le(self.mem.load_u32(self.offset, a)?)),
            8 => u64::from_le(self.mem.load_u64(self.offset, a)?),
            _ => {
                let mut b = [0u8; 1];
                self.mem.read_at(self.offset, &mut b)?;
                u64::from(b[0])
            }
        })
    }

    /// Writes the register (release ordering), e.g. to reset it on a device reset.
    pub fn write(&self, value: u64) -> Result<(), DmaAccessError> {
        let r = Ordering::Release;
        // Truncation to the register width is the point of these casts.
        match self.width {
            2 => self.mem.store_u16(self.offset, (value as u16).to_le(), r),
            4 => self.mem.store_u32(self.offset, (value as u32).to_le(), r),
            8 => self.mem.store_u64(self.offset, value.to_le(), r),
            _ => self.mem.write_at(self.offset, &[value as u8]),
        }
    }
}

/// What [`crate::EmuDev::get_db_info`] reports for one doorbell.
#[derive(Clone, Debug)]
pub struct DoorbellInfo {
    /// Doorbell number.
    pub id: DoorbellId,
    /// Region index.
    pub region: u32,
    /// Offset in the region.
    pub offset: u64,
    /// Register width in bytes.
    pub width: u8,
    /// How writes are noticed (with the eventfd for [`DoorbellKind::EventFd`]).
    pub kind: DoorbellKind,
    /// The configured queue rung through this doorbell, if any.
    pub queue: Option<QueueId>,
    /// For a [`DoorbellKind::Mem`] or [`DoorbellKind::MemKick`] doorbell: the word to poll.
    pub mem: Option<DoorbellMem>,
}

/// The value of a trapped doorbell write: `data` as a little-endian integer (at most 8 bytes).
pub(crate) fn value_of(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_dma::DmaProt;

    #[test]
    fn constructors_and_names() {
        let d = Doorbell::trapped(0, 0x10);
        assert_eq!(
            (d.region, d.offset, d.width, d.kind.name()),
            (0, 0x10, 4, "trapped")
        );
        assert_eq!(Doorbell::mem(2, 8).with_width(8).width, 8);
        assert_eq!(Doorbell::mem(2, 8).kind.name(), "mem");
        let (_, fd) = SharedMemory::memfd("db-test", 4096).expect("memfd");
        let e = Doorbell::eventfd(1, 0, Arc::new(fd));
        assert_eq!(e.kind.name(), "eventfd");
        assert!(matches!(
            e.kind,
            DoorbellKind::EventFd {
                datamatch: None,
                ..
            }
        ));
        assert_eq!(Doorbell::trapped(0, u64::MAX).end(), None);
        assert_eq!(DoorbellId(3).to_string(), "doorbell 3");
    }

    #[test]
    fn mem_doorbell_reads_what_another_mapping_wrote() {
        let (_, fd) = SharedMemory::memfd("db-test", 4096).expect("memfd");
        let ours = Arc::new(SharedMemory::map(&fd, 0, 4096, DmaProt::RW).expect("map"));
        let theirs = SharedMemory::map(&fd, 0, 4096, DmaProt::RW).expect("map");
        for (width, offset, value) in [
            (1u8, 3u64, 0xabu64),
            (2, 6, 0xbeef),
            (4, 8, 0xdead_beef),
            (8, 16, 0x0102_0304_0506_0708),
        ] {
            let db = DoorbellMem::new(ours.clone(), offset, width);
            assert_eq!(db.read().expect("read"), 0);
            let bytes = value.to_le_bytes();
            theirs
                .write_at(offset, &bytes[..usize::from(width)])
                .expect("write");
            assert_eq!(db.read().expect("read"), value, "width {width}");
            db.write(0).expect("reset");
            assert_eq!(db.read().expect("read"), 0);
            assert_eq!((db.offset(), db.width()), (offset, width));
        }
        // Misaligned or out-of-range words fail rather than touching other memory.
        assert!(DoorbellMem::new(ours.clone(), 2, 4).read().is_err());
        assert!(DoorbellMem::new(ours, 4096, 4).read().is_err());
    }

    #[test]
    fn trapped_values_are_little_endian_and_truncated() {
        assert_eq!(value_of(&[1, 0, 0, 0]), 1);
        assert_eq!(value_of(&[0x34, 0x12]), 0x1234);
        assert_eq!(value_of(&[]), 0);
        assert_eq!(
            value_of(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            0x0807_0605_0403_0201
        );
    }
}
