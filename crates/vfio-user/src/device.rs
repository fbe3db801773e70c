//! The device side of the server: what a device implements, and the handles it gets.
//!
//! A device sees region indexes and offsets, a DMA table and an interrupt table. It never sees
//! the socket, message ids or fds: the server decodes and validates every message before a
//! device method runs, and turns the device's [`Errno`] into an error reply.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use emudev_dma::{DmaMapInfo, DmaTable};

use crate::irq::IrqTable;

pub use rustix::io::Errno;

/// What `DEVICE_GET_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*` (RESET, PCI).
    pub flags: u32,
    /// Number of regions (9 for a PCI device: BAR0-5, ROM, CONFIG, VGA).
    pub num_regions: u32,
    /// Number of IRQ indexes (5 for a PCI device: INTX, MSI, MSIX, ERR, REQ).
    pub num_irqs: u32,
}

/// One sparse-mmap area of a region, relative to the region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset inside the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// How a region can be mmapped by the client.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    /// The fd the client mmaps (sent with the REGION_INFO reply). Shared, so the device keeps it.
    pub fd: Arc<OwnedFd>,
    /// File offset of the region's first byte in `fd`.
    pub file_offset: u64,
    /// Mappable parts; empty means the whole region is mappable.
    pub sparse: Vec<SparseArea>,
}

/// What `DEVICE_GET_REGION_INFO` reports for one region.
#[derive(Debug, Clone)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_{READ,WRITE}` (MMAP and CAPS are derived from `mmap`).
    pub flags: u32,
    /// Region size in bytes; 0 for an absent region.
    pub size: u64,
    /// Present when (parts of) the region can be mmapped.
    pub mmap: Option<RegionMmap>,
}

impl RegionInfo {
    /// An absent region (size 0, no flags).
    pub fn absent() -> Self {
        RegionInfo {
            flags: 0,
            size: 0,
            mmap: None,
        }
    }
}

/// What `DEVICE_GET_IRQ_INFO` reports for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*` flags (EVENTFD, MASKABLE, AUTOMASKED, NORESIZE).
    pub flags: u32,
    /// Number of vectors of this index (0 if unsupported).
    pub count: u32,
}

/// One ioeventfd a device offers for a region (`DEVICE_GET_REGION_IO_FDS`).
#[derive(Debug, Clone)]
pub struct IoEventFd {
    /// Offset of the doorbell inside the region.
    pub offset: u64,
    /// Access size that triggers it (1, 2, 4 or 8).
    pub size: u64,
    /// The eventfd the client's hypervisor signals.
    pub fd: Arc<OwnedFd>,
    /// `KVM_IOEVENTFD_FLAG_*` (DATAMATCH = 1).
    pub flags: u32,
    /// Value to match when DATAMATCH is set.
    pub datamatch: u64,
}

/// Handles a device uses to reach the client: its DMA memory and its interrupts.
///
/// Cheap to clone; a device may keep a clone for worker threads.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// The client's DMA mappings (fd-backed ones mmapped here, fd-less ones reached by message).
    pub dma: Arc<DmaTable>,
    /// The interrupt eventfds the client has set up with SET_IRQS.
    pub irqs: Arc<IrqTable>,
}

/// A device served over vfio-user.
///
/// The server calls these from its connection thread, one message at a time, after checking
/// sizes, indexes and bounds against what `info`, `region_info` and `irq_info` report: a
/// `region_read`/`region_write` always has `offset + data.len() <= region size`.
pub trait Device: Send {
    /// `DEVICE_GET_INFO`.
    fn info(&self) -> DeviceInfo;

    /// `DEVICE_GET_REGION_INFO`; `None` for an index the device does not have.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;

    /// `DEVICE_GET_IRQ_INFO`; `None` for an index the device does not have.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;

    /// `REGION_READ`: fill `data` from region `index` at `offset`.
    fn region_read(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno>;

    /// `REGION_WRITE` (and each entry of `REGION_WRITE_MULTI`).
    fn region_write(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno>;

    /// `DEVICE_RESET`. (A disconnect does not reset the device: see `client_disconnected`.)
    fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
        Ok(())
    }

    /// `DEVICE_GET_REGION_IO_FDS`; `None` when the region has no io fds (the client gets EINVAL).
    fn region_io_fds(&self, _index: u32) -> Option<Vec<IoEventFd>> {
        None
    }

    /// A client connected and negotiated its version.
    fn client_connected(&mut self, _ctx: &DeviceContext) {}

    /// The client went away. The server has already dropped its DMA maps and IRQ fds; device
    /// state is kept (the spec says so), so a new client finds the device as it was.
    fn client_disconnected(&mut self, _ctx: &DeviceContext) {}

    /// A DMA map was added (after it is in `ctx.dma`).
    fn dma_mapped(&mut self, _ctx: &DeviceContext, _map: &DmaMapInfo) {}

    /// A DMA map was removed (after it left `ctx.dma`).
    fn dma_unmapped(&mut self, _ctx: &DeviceContext, _map: &DmaMapInfo) {}

    /// `SET_IRQS` changed the eventfds or masks of `index` (already applied to `ctx.irqs`).
    fn irqs_changed(&mut self, _ctx: &DeviceContext, _index: u32) {}

    /// `DEVICE_FEATURE`: `flags` as sent (feature index and GET/SET/PROBE bits), `data` the
    /// payload after the 8-byte header; returns the reply payload after the header.
    fn device_feature(
        &mut self,
        _ctx: &DeviceContext,
        _flags: u32,
        _data: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        Err(Errno::NOTSUP)
    }

    /// `MIG_DATA_READ`: up to `size` bytes of migration data; fewer means end of stream.
    fn mig_data_read(&mut self, _ctx: &DeviceContext, _size: u32) -> Result<Vec<u8>, Errno> {
        Err(Errno::INVAL)
    }

    /// `MIG_DATA_WRITE`.
    fn mig_data_write(&mut self, _ctx: &DeviceContext, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::INVAL)
    }
}

/// Implements [`Device`] for a type by forwarding every method to one of its fields, itself a
/// [`Device`] (typically a `emudev_pci::PciDevice` the type wraps with extra accessors).
///
/// ```ignore
/// emudev_vfio_user::delegate_device!(EduDevice => pci);
/// ```
#[macro_export]
macro_rules! delegate_device {
    ($ty:ty => $field:ident) => {
        impl $crate::Device for $ty {
            fn info(&self) -> $crate::DeviceInfo {
                self.$field.info()
            }
            fn region_info(&self, index: u32) -> Option<$crate::RegionInfo> {
                self.$field.region_info(index)
            }
            fn irq_info(&self, index: u32) -> Option<$crate::IrqInfo> {
                self.$field.irq_info(index)
            }
            fn region_read(
                &mut self,
                ctx: &$crate::DeviceContext,
                index: u32,
                offset: u64,
                data: &mut [u8],
            ) -> Result<(), $crate::Errno> {
                self.$field.region_read(ctx, index, offset, data)
            }
            fn region_write(
                &mut self,
                ctx: &$crate::DeviceContext,
                index: u32,
                offset: u64,
                data: &[u8],
            ) -> Result<(), $crate::Errno> {
                self.$field.region_write(ctx, index, offset, data)
            }
            fn reset(&mut self, ctx: &$crate::DeviceContext) -> Result<(), $crate::Errno> {
                self.$field.reset(ctx)
            }
            fn region_io_fds(&self, index: u32) -> Option<Vec<$crate::IoEventFd>> {
                self.$field.region_io_fds(index)
            }
            fn client_connected(&mut self, ctx: &$crate::DeviceContext) {
                self.$field.client_connected(ctx)
            }
            fn client_disconnected(&mut self, ctx: &$crate::DeviceContext) {
                self.$field.client_disconnected(ctx)
            }
            fn dma_mapped(&mut self, ctx: &$crate::DeviceContext, map: &$crate::DmaMapInfo) {
                self.$field.dma_mapped(ctx, map)
            }
            fn dma_unmapped(&mut self, ctx: &$crate::DeviceContext, map: &$crate::DmaMapInfo) {
                self.$field.dma_unmapped(ctx, map)
            }
            fn irqs_changed(&mut self, ctx: &$crate::DeviceContext, index: u32) {
                self.$field.irqs_changed(ctx, index)
            }
            fn device_feature(
                &mut self,
                ctx: &$crate::DeviceContext,
                flags: u32,
                data: &[u8],
            ) -> Result<Vec<u8>, $crate::Errno> {
                self.$field.device_feature(ctx, flags, data)
            }
            fn mig_data_read(
                &mut self,
                ctx: &$crate::DeviceContext,
                size: u32,
            ) -> Result<Vec<u8>, $crate::Errno> {
                self.$field.mig_data_read(ctx, size)
            }
            fn mig_data_write(
                &mut self,
                ctx: &$crate::DeviceContext,
                data: &[u8],
            ) -> Result<(), $crate::Errno> {
                self.$field.mig_data_write(ctx, data)
            }
        }
    };
}
