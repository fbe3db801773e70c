//! [`PciFunction`], the small trait a PCI device implements, and [`PciDevice`], the adapter
//! that turns it into an [`emudev_vfio_user::Device`].
//!
//! The adapter answers everything the PCI layout decides:
//!
//! - `DEVICE_GET_INFO`: PCI | RESET, 9 regions, 5 IRQ indexes.
//! - `DEVICE_GET_REGION_INFO`: BARs 0-5 from the config space's [`crate::BarSpec`]s (read and
//!   write; the upper slot of a 64-bit BAR is absent), the expansion ROM (region 6, read-only)
//!   when the space has one, config space (region 7, 256 or 4096 bytes), VGA absent. A BAR
//!   backed by [`BarMemory`] is offered for mmap, minus the pages that hold MSI-X structures.
//! - `DEVICE_GET_IRQ_INFO`: from the config space ([`default_irq_info`]): INTx 1 if there is an
//!   interrupt pin, MSI and MSI-X with their vector counts, ERR 1, REQ 1.
//! - `REGION_READ/WRITE`: region 7 to [`PciFunction::config_read`] /
//!   [`PciFunction::config_write`] (by default the config space, with MSI-X control,
//!   pending-MSI and INTx follow-ups); accesses entirely inside the MSI-X table or PBA to the
//!   function's [`MsixTable`] (one that straddles their edge is refused with `EINVAL`); accesses
//!   entirely inside a mappable area of [`BarMemory`] to that memory; everything else to
//!   [`PciFunction::bar_read`] / [`PciFunction::bar_write`].
//!
//! Region accesses are **not** gated by the command register's MEMORY/IO enable bits: QEMU and
//! libvfio-user servers do not gate them either, because the client only forwards guest
//! accesses that hit a decoded BAR. DMA is the device's own initiative, so devices check
//! [`crate::ConfigSpace::bus_master`] before touching client memory.

use emudev_dma::DmaMapInfo;
use emudev_vfio_user::irq::{IrqTable, ERR, INTX, MSI, MSIX, REQ};
use emudev_vfio_user::{
    Device, DeviceContext, DeviceInfo, Errno, IoEventFd, IrqInfo, RegionInfo, SparseArea,
};
use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_ROM_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::bar::{BarKind, BarMemory};
use crate::config::{ConfigSpace, InterruptPin};
use crate::irq::IrqSink;
use crate::msix::{MsixRange, MsixTable};
use crate::regs::PCI_NUM_BARS;

/// The region index of the expansion ROM, as [`PciFunction::bar_read`] never sees it (ROM
/// reads go to [`PciFunction::rom_read`]).
pub const ROM_REGION: u32 = VFIO_PCI_ROM_REGION_INDEX;
/// The region index of config space.
pub const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;

/// A PCI function: its config space, its BAR handlers, and optional MSI-X table and BAR memory.
///
/// Only the config accessors and the BAR handlers are required. Methods with defaults have a
/// public `default_*` function with the same behaviour, so an override can add to it.
pub trait PciFunction: Send {
    /// The config space.
    fn config(&self) -> &ConfigSpace;

    /// The config space, mutable.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Read of `data.len()` bytes at `offset` in BAR `bar` (the BAR's first slot), not in the
    /// MSI-X structures nor in mappable BAR memory. The adapter checked the range.
    fn bar_read(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno>;

    /// Write of `data` at `offset` in BAR `bar`.
    fn bar_write(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno>;

    /// Read of the expansion ROM (only when the config space has one). Default: zeros.
    fn rom_read(
        &mut self,
        _ctx: &DeviceContext,
        _offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        data.fill(0);
        Ok(())
    }

    /// The MSI-X table the adapter routes table and PBA accesses to (default: none). It must
    /// be built for the config space's MSI-X capability.
    fn msix_table(&self) -> Option<&MsixTable> {
        None
    }

    /// Shared memory backing BAR `bar` (default: none). Its size must be the BAR's.
    fn bar_memory(&self, _bar: u8) -> Option<&BarMemory> {
        None
    }

    /// A REGION_WRITE landed in mappable BAR memory (already written there).
    fn bar_memory_written(&mut self, _ctx: &DeviceContext, _bar: u8, _offset: u64, _len: usize) {}

    /// Guest read of config space. Default: [`default_config_read`].
    fn config_read(
        &mut self,
        ctx: &DeviceContext,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        default_config_read(self, ctx, offset, data)
    }

    /// Guest write of config space. Default: [`default_config_write`].
    fn config_write(&mut self, ctx: &DeviceContext, offset: u64, data: &[u8]) -> Result<(), Errno> {
        default_config_write(self, ctx, offset, data)
    }

    /// `DEVICE_RESET`. Default: [`default_reset`] (config space and MSI-X table to power-on).
    fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
        default_reset(self);
        Ok(())
    }

    /// `DEVICE_GET_IRQ_INFO` for `index` < 5. Default: [`default_irq_info`].
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        default_irq_info(self.config(), index)
    }

    /// `DEVICE_GET_REGION_IO_FDS` for BAR `bar` (default: none).
    fn region_io_fds(&self, _bar: u8) -> Option<Vec<IoEventFd>> {
        None
    }

    /// A client connected.
    fn client_connected(&mut self, _ctx: &DeviceContext) {}

    /// The client went away (device state is kept).
    fn client_disconnected(&mut self, _ctx: &DeviceContext) {}

    /// A DMA map was added.
    fn dma_mapped(&mut self, _ctx: &DeviceContext, _map: &DmaMapInfo) {}

    /// A DMA map was removed.
    fn dma_unmapped(&mut self, _ctx: &DeviceContext, _map: &DmaMapInfo) {}

    /// SET_IRQS changed `index`.
    fn irqs_changed(&mut self, _ctx: &DeviceContext, _index: u32) {}
}

/// The config space read: [`ConfigSpace::read`], `EINVAL` outside it.
pub fn default_config_read<F: PciFunction + ?Sized>(
    f: &mut F,
    _ctx: &DeviceContext,
    offset: u64,
    data: &mut [u8],
) -> Result<(), Errno> {
    f.config().read(offset, data).map_err(|e| {
        log::debug!("pci: {e}");
        Errno::INVAL
    })
}

/// The config space write and what follows from it:
///
/// 1. [`ConfigSpace::write`] (`EINVAL` outside the space);
/// 2. the MSI-X table takes the new enable / function-mask bits, sending vectors they unmask
///    ([`MsixTable::sync_control`] through the IRQ table's MSI-X index);
/// 3. MSI vectors the write unmasked that were pending go out ([`ConfigSpace::deliver_pending_msi`]);
/// 4. if an asserted INTx became deliverable (INTx disable cleared, MSI/MSI-X turned off), it is
///    signalled again.
pub fn default_config_write<F: PciFunction + ?Sized>(
    f: &mut F,
    ctx: &DeviceContext,
    offset: u64,
    data: &[u8],
) -> Result<(), Errno> {
    let intx_before = f.config().intx_deliverable();
    f.config_mut().write(offset, data).map_err(|e| {
        log::debug!("pci: {e}");
        Errno::INVAL
    })?;
    if let (Some(table), Some(control)) = (f.msix_table(), f.config().msix_control()) {
        table.sync_control(control, &mut IrqSink::msix(&ctx.irqs));
    }
    f.config_mut()
        .deliver_pending_msi(&mut IrqSink::msi(&ctx.irqs));
    if !intx_before && f.config().intx_deliverable() {
        signal_intx(&ctx.irqs);
    }
    Ok(())
}

fn signal_intx(irqs: &IrqTable) {
    match irqs.trigger(INTX, 0) {
        Ok(_) | Err(Errno::NOENT) => {}
        Err(e) => log::warn!("pci: signalling INTx failed: {e}"),
    }
}

/// Config space and MSI-X table back to power-on.
pub fn default_reset<F: PciFunction + ?Sized>(f: &mut F) {
    f.config_mut().reset();
    if let Some(table) = f.msix_table() {
        table.reset();
    }
}

/// IRQ info from the config space: INTx (EVENTFD | MASKABLE | AUTOMASKED) with 1 vector if there
/// is an interrupt pin; MSI (EVENTFD | NORESIZE) and MSI-X (EVENTFD | MASKABLE | NORESIZE) with
/// their capabilities' vector counts; ERR and REQ (EVENTFD) with 1. Absent ones have count 0;
/// `None` for an index >= 5.
pub fn default_irq_info(config: &ConfigSpace, index: u32) -> Option<IrqInfo> {
    let none = IrqInfo { flags: 0, count: 0 };
    let ev = VFIO_IRQ_INFO_EVENTFD;
    Some(match index {
        INTX if config.interrupt_pin() != InterruptPin::None => IrqInfo {
            flags: ev | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            count: 1,
        },
        MSI => config.msi_capability().map_or(none, |c| IrqInfo {
            flags: ev | VFIO_IRQ_INFO_NORESIZE,
            count: u32::from(c.vectors),
        }),
        MSIX => config.msix_capability().map_or(none, |c| IrqInfo {
            flags: ev | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_NORESIZE,
            count: u32::from(c.vectors),
        }),
        ERR | REQ => IrqInfo {
            flags: ev,
            count: 1,
        },
        i if i < VFIO_PCI_NUM_IRQS => none,
        _ => return None,
    })
}

/// Why [`PciDevice::validate`] found the function's layout inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ValidateLayoutError {
    /// BAR memory for a slot that is not a memory BAR.
    #[error("BAR{0} has memory but is not a memory BAR")]
    MemoryWithoutBar(u8),
    /// BAR memory of a different size than its BAR.
    #[error("BAR{bar} is {bar_size:#x} bytes but its memory is {memory_size:#x}")]
    MemorySize {
        /// BAR slot.
        bar: u8,
        /// BAR size.
        bar_size: u64,
        /// Memory size.
        memory_size: u64,
    },
    /// An MSI-X table without an MSI-X capability, or built for another one.
    #[error("the MSI-X table does not match the MSI-X capability")]
    MsixMismatch,
}

/// The adapter from a [`PciFunction`] to [`Device`] (see the module documentation).
#[derive(Debug)]
pub struct PciDevice<F> {
    function: F,
}

fn rw() -> u32 {
    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
}

/// `areas` minus the pages that hold `holes` (ranges inside the BAR).
fn subtract_pages(
    areas: Vec<SparseArea>,
    holes: &[std::ops::Range<u64>],
    page: u64,
) -> Vec<SparseArea> {
    let mut out = areas;
    for hole in holes {
        let start = hole.start - hole.start % page;
        let end = hole.end.div_ceil(page).saturating_mul(page);
        out = out
            .into_iter()
            .flat_map(|a| {
                let a_end = a.offset.saturating_add(a.size);
                let mut parts = Vec::with_capacity(2);
                if end <= a.offset || start >= a_end {
                    parts.push(a);
                    return parts;
                }
                if a.offset < start {
                    parts.push(SparseArea {
                        offset: a.offset,
                        size: start - a.offset,
                    });
                }
                if end < a_end {
                    parts.push(SparseArea {
                        offset: end,
                        size: a_end - end,
                    });
                }
                parts
            })
            .collect();
    }
    out
}

impl<F: PciFunction> PciDevice<F> {
    /// Wraps `function`.
    pub fn new(function: F) -> Self {
        PciDevice { function }
    }

    /// The function.
    pub fn function(&self) -> &F {
        &self.function
    }

    /// The function, mutable.
    pub fn function_mut(&mut self) -> &mut F {
        &mut self.function
    }

    /// Unwraps the function.
    pub fn into_inner(self) -> F {
        self.function
    }

    /// Checks that the function's BAR memory and MSI-X table agree with its config space.
    /// (Inconsistent parts are also ignored at run time: memory of the wrong size is not
    /// offered for mmap, a mismatched MSI-X table gets no accesses.)
    pub fn validate(&self) -> Result<(), ValidateLayoutError> {
        let config = self.function.config();
        for slot in 0..PCI_NUM_BARS as u8 {
            let Some(mem) = self.function.bar_memory(slot) else {
                continue;
            };
            let bar = config
                .bar(slot)
                .filter(|b| b.is_memory())
                .ok_or(ValidateLayoutError::MemoryWithoutBar(slot))?;
            if bar.size != mem.size() {
                return Err(ValidateLayoutError::MemorySize {
                    bar: slot,
                    bar_size: bar.size,
                    memory_size: mem.size(),
                });
            }
        }
        if let Some(table) = self.function.msix_table() {
            if config.msix_capability() != Some(table.capability()) {
                return Err(ValidateLayoutError::MsixMismatch);
            }
        }
        Ok(())
    }

    /// The function's MSI-X table, if it matches the capability.
    fn msix(&self) -> Option<&MsixTable> {
        let table = self.function.msix_table()?;
        (self.function.config().msix_capability() == Some(table.capability())).then_some(table)
    }

    /// The BAR memory of `bar`, if it is a memory BAR of the same size.
    fn memory(&self, bar: u8) -> Option<&BarMemory> {
        let spec = self.function.config().bar(bar)?;
        let mem = self.function.bar_memory(bar)?;
        (spec.kind != BarKind::Io && mem.size() == spec.size).then_some(mem)
    }

    fn bar_region(&self, bar: u8) -> RegionInfo {
        let Some(spec) = self.function.config().bar(bar) else {
            return RegionInfo::absent();
        };
        let mmap = self.memory(bar).and_then(|mem| {
            let holes: Vec<_> = self
                .msix()
                .map(|t| t.capability())
                .into_iter()
                .flat_map(|c| {
                    let mut h = Vec::new();
                    if c.table_bar == bar {
                        h.push(c.table_range());
                    }
                    if c.pba_bar == bar {
                        h.push(c.pba_range());
                    }
                    h
                })
                .collect();
            let mut mm = mem.region_mmap();
            if !holes.is_empty() {
                let page = rustix::param::page_size() as u64;
                mm.sparse = subtract_pages(mem.mappable(), &holes, page);
                if mm.sparse.is_empty() {
                    return None;
                }
            }
            Some(mm)
        });
        RegionInfo {
            flags: rw(),
            size: spec.size,
            mmap,
        }
    }

    /// `(bar, size)` for a BAR region access that fits the BAR.
    fn bar_access(&self, index: u32, offset: u64, len: usize) -> Result<u8, Errno> {
        let bar = u8::try_from(index).map_err(|_| Errno::INVAL)?;
        let spec = self.function.config().bar(bar).ok_or(Errno::INVAL)?;
        let end = offset.checked_add(len as u64).ok_or(Errno::INVAL)?;
        if end > spec.size {
            return Err(Errno::INVAL);
        }
        Ok(bar)
    }
}

impl<F: PciFunction> Device for PciDevice<F> {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
            num_regions: VFIO_PCI_NUM_REGIONS,
            num_irqs: VFIO_PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let config = self.function.config();
        Some(match index {
            i if i < PCI_NUM_BARS as u32 => self.bar_region(i as u8),
            ROM_REGION => match config.rom_size() {
                Some(size) => RegionInfo {
                    flags: VFIO_REGION_INFO_FLAG_READ,
                    size: u64::from(size),
                    mmap: None,
                },
                None => RegionInfo::absent(),
            },
            CONFIG_REGION => RegionInfo {
                flags: rw(),
                size: config.size() as u64,
                mmap: None,
            },
            i if i < VFIO_PCI_NUM_REGIONS => RegionInfo::absent(),
            _ => return None,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        if index >= VFIO_PCI_NUM_IRQS {
            return None;
        }
        self.function.irq_info(index)
    }

    fn region_read(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match index {
            CONFIG_REGION => return self.function.config_read(ctx, offset, data),
            ROM_REGION => {
                let size = self.function.config().rom_size().ok_or(Errno::INVAL)?;
                let end = offset.checked_add(data.len() as u64).ok_or(Errno::INVAL)?;
                if end > u64::from(size) {
                    return Err(Errno::INVAL);
                }
                return self.function.rom_read(ctx, offset, data);
            }
            _ => {}
        }
        let bar = self.bar_access(index, offset, data.len())?;
        if let Some(table) = self.msix() {
            match table.classify(bar, offset, data.len()) {
                Some(MsixRange::Table(off)) => {
                    return table.table_read(off, data).map_err(|_| Errno::INVAL)
                }
                Some(MsixRange::Pba(off)) => {
                    return table
                        .pba_read(off, data, &IrqSink::msix(&ctx.irqs))
                        .map_err(|_| Errno::INVAL)
                }
                Some(MsixRange::Straddles) => return Err(Errno::INVAL),
                None => {}
            }
        }
        if let Some(mem) = self
            .memory(bar)
            .filter(|m| m.covers(offset, data.len() as u64))
        {
            return mem.memory().read_at(offset, data).map_err(|e| {
                log::warn!("pci: BAR{bar} memory read failed: {e}");
                Errno::IO
            });
        }
        self.function.bar_read(ctx, bar, offset, data)
    }

    fn region_write(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        match index {
            CONFIG_REGION => return self.function.config_write(ctx, offset, data),
            ROM_REGION => return Err(Errno::INVAL),
            _ => {}
        }
        let bar = self.bar_access(index, offset, data.len())?;
        if let Some(table) = self.msix() {
            match table.classify(bar, offset, data.len()) {
                Some(MsixRange::Table(off)) => {
                    return table
                        .table_write(off, data, &mut IrqSink::msix(&ctx.irqs))
                        .map_err(|_| Errno::INVAL)
                }
                // The PBA is read-only; QEMU drops PBA writes too.
                Some(MsixRange::Pba(_)) => return Ok(()),
                Some(MsixRange::Straddles) => return Err(Errno::INVAL),
                None => {}
            }
        }
        if let Some(mem) = self
            .memory(bar)
            .filter(|m| m.covers(offset, data.len() as u64))
        {
            mem.memory().write_at(offset, data).map_err(|e| {
                log::warn!("pci: BAR{bar} memory write failed: {e}");
                Errno::IO
            })?;
            self.function
                .bar_memory_written(ctx, bar, offset, data.len());
            return Ok(());
        }
        self.function.bar_write(ctx, bar, offset, data)
    }

    fn reset(&mut self, ctx: &DeviceContext) -> Result<(), Errno> {
        self.function.reset(ctx)
    }

    fn region_io_fds(&self, index: u32) -> Option<Vec<IoEventFd>> {
        let bar = u8::try_from(index).ok()?;
        self.function.config().bar(bar)?;
        self.function.region_io_fds(bar)
    }

    fn client_connected(&mut self, ctx: &DeviceContext) {
        self.function.client_connected(ctx);
    }

    fn client_disconnected(&mut self, ctx: &DeviceContext) {
        self.function.client_disconnected(ctx);
    }

    fn dma_mapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        self.function.dma_mapped(ctx, map);
    }

    fn dma_unmapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        self.function.dma_unmapped(ctx, map);
    }

    fn irqs_changed(&mut self, ctx: &DeviceContext, index: u32) {
        self.function.irqs_changed(ctx, index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarSpec;
    use crate::caps::{MsiSpec, MsixSpec, PcieSpec, PmSpec};
    use crate::config::{ConfigKind, PciIds};
    use crate::irq::FireOutcome;
    use crate::msix::MsixMaskMode;
    use crate::regs::*;
    use emudev_dma::{DmaLimits, DmaTable};
    use rustix::event::{eventfd, EventfdFlags};
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    const IDS: PciIds = PciIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
        revision: 2,
        class_code: 0x01_08_02,
    };
    /// BAR2: 4 pages of memory; MSI-X table at the start of page 2, PBA at the start of page 3.
    fn table_at() -> u64 {
        2 * page()
    }
    fn pba_at() -> u64 {
        3 * page()
    }

    /// A function with every feature: trapped BAR0 (64-bit) and BAR4 (I/O), memory-backed
    /// BAR2 holding the MSI-X structures, a ROM, PM, MSI, MSI-X and PCIe.
    #[derive(Debug)]
    struct TestFn {
        config: ConfigSpace,
        msix: MsixTable,
        mem: BarMemory,
        regs: Vec<u8>,
        reads: Vec<(u8, u64, usize)>,
        writes: Vec<(u8, u64, Vec<u8>)>,
        mem_writes: Vec<(u8, u64, usize)>,
        resets: usize,
    }

    fn page() -> u64 {
        rustix::param::page_size() as u64
    }

    fn test_fn() -> TestFn {
        let mut config = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::IntA);
        config.add_bar(BarSpec::mem64(0, 0x4000)).unwrap();
        config
            .add_bar(BarSpec::mem32(2, 4 * page()).prefetchable())
            .unwrap();
        config.add_bar(BarSpec::io(4, 32)).unwrap();
        config.set_rom(0x1_0000).unwrap();
        config.add_pm(PmSpec::default(), None).unwrap();
        config
            .add_msi(MsiSpec::new(4).with_masking(), None)
            .unwrap();
        let spec = MsixSpec::new(8, 2, table_at() as u32, 2, pba_at() as u32);
        let cap = config.add_msix(spec, None).unwrap();
        config.add_pcie(PcieSpec::default(), None).unwrap();
        TestFn {
            config,
            msix: MsixTable::new(cap, MsixMaskMode::Auto),
            mem: BarMemory::new("test-bar2", 4 * page(), &[]).unwrap(),
            regs: vec![0; 0x4000],
            reads: Vec::new(),
            writes: Vec::new(),
            mem_writes: Vec::new(),
            resets: 0,
        }
    }

    impl PciFunction for TestFn {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(
            &mut self,
            _ctx: &DeviceContext,
            bar: u8,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), Errno> {
            self.reads.push((bar, offset, data.len()));
            let at = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
            let src = self.regs.get(at..at + data.len()).ok_or(Errno::INVAL)?;
            data.copy_from_slice(src);
            Ok(())
        }
        fn bar_write(
            &mut self,
            _ctx: &DeviceContext,
            bar: u8,
            offset: u64,
            data: &[u8],
        ) -> Result<(), Errno> {
            self.writes.push((bar, offset, data.to_vec()));
            let at = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
            let dst = self.regs.get_mut(at..at + data.len()).ok_or(Errno::INVAL)?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn msix_table(&self) -> Option<&MsixTable> {
            Some(&self.msix)
        }
        fn bar_memory(&self, bar: u8) -> Option<&BarMemory> {
            (bar == 2).then_some(&self.mem)
        }
        fn bar_memory_written(&mut self, _ctx: &DeviceContext, bar: u8, offset: u64, len: usize) {
            self.mem_writes.push((bar, offset, len));
        }
        fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
            self.resets += 1;
            default_reset(self);
            Ok(())
        }
    }

    /// A minimal function: conventional, one BAR, no capabilities, optional pin.
    #[derive(Debug)]
    struct Plain {
        config: ConfigSpace,
    }

    impl PciFunction for Plain {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(
            &mut self,
            _: &DeviceContext,
            _: u8,
            _: u64,
            d: &mut [u8],
        ) -> Result<(), Errno> {
            d.fill(0xab);
            Ok(())
        }
        fn bar_write(&mut self, _: &DeviceContext, _: u8, _: u64, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn plain(pin: InterruptPin) -> PciDevice<Plain> {
        let mut config = ConfigSpace::new(ConfigKind::Conventional, &IDS, pin);
        config.add_bar(BarSpec::mem32(0, 0x1000)).unwrap();
        PciDevice::new(Plain { config })
    }

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
    }

    fn fired(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(_) => u64::from_ne_bytes(b),
            Err(_) => 0,
        }
    }

    /// A context whose IRQ table is sized from the device's IRQ info, as the server does.
    fn ctx_for(dev: &dyn Device) -> DeviceContext {
        let counts: Vec<u32> = (0..dev.info().num_irqs)
            .map(|i| dev.irq_info(i).map_or(0, |q| q.count))
            .collect();
        DeviceContext {
            dma: Arc::new(DmaTable::new(DmaLimits::default())),
            irqs: Arc::new(IrqTable::new(&counts)),
        }
    }

    /// Binds one eventfd to every vector of `index`; returns it.
    fn bind_all(ctx: &DeviceContext, index: u32) -> OwnedFd {
        let fd = new_eventfd();
        let fds = (0..ctx.irqs.count(index))
            .map(|_| Some(fd.try_clone().unwrap()))
            .collect();
        ctx.irqs.set_eventfds(index, 0, fds).unwrap();
        fd
    }

    fn cfg_w(dev: &mut PciDevice<TestFn>, ctx: &DeviceContext, off: u16, data: &[u8]) {
        dev.region_write(ctx, CONFIG_REGION, u64::from(off), data)
            .unwrap();
    }

    #[test]
    fn device_info_and_regions() {
        let dev = PciDevice::new(test_fn());
        dev.validate().unwrap();
        let info = dev.info();
        assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        let r = |i| dev.region_info(i).unwrap();
        assert_eq!((r(0).size, r(0).flags), (0x4000, 3));
        assert!(r(0).mmap.is_none());
        assert_eq!(
            (r(1).size, r(1).flags),
            (0, 0),
            "upper half of the 64-bit BAR"
        );
        let bar2 = r(2);
        assert_eq!((bar2.size, bar2.flags), (4 * page(), 3));
        let mm = bar2.mmap.expect("BAR2 is mappable");
        assert_eq!(mm.file_offset, 0);
        assert!(Arc::ptr_eq(&mm.fd, dev.function().mem.fd()));
        // Pages 2 and 3 hold the MSI-X table and PBA: only pages 0-1 are offered.
        assert_eq!(
            mm.sparse,
            [SparseArea {
                offset: 0,
                size: 2 * page()
            }]
        );
        assert_eq!((r(3).size, r(5).size), (0, 0));
        assert_eq!((r(4).size, r(4).flags), (32, 3), "I/O BAR");
        assert_eq!(
            (r(6).size, r(6).flags),
            (0x1_0000, VFIO_REGION_INFO_FLAG_READ)
        );
        assert_eq!((r(7).size, r(7).flags), (4096, 3));
        assert_eq!((r(8).size, r(8).flags), (0, 0));
        assert!(dev.region_info(9).is_none());
        assert!(dev.region_info(u32::MAX).is_none());
    }

    #[test]
    fn irq_info_from_capabilities() {
        let dev = PciDevice::new(test_fn());
        let q = |i| dev.irq_info(i).unwrap();
        assert_eq!(q(0), IrqInfo { flags: 7, count: 1 });
        assert_eq!(q(1), IrqInfo { flags: 9, count: 4 });
        assert_eq!(
            q(2),
            IrqInfo {
                flags: 11,
                count: 8
            }
        );
        assert_eq!(q(3), IrqInfo { flags: 1, count: 1 });
        assert_eq!(q(4), IrqInfo { flags: 1, count: 1 });
        assert!(dev.irq_info(5).is_none());
        let p = plain(InterruptPin::None);
        assert_eq!(p.irq_info(0), Some(IrqInfo { flags: 0, count: 0 }));
        assert_eq!(p.irq_info(1), Some(IrqInfo { flags: 0, count: 0 }));
        assert_eq!(p.irq_info(2), Some(IrqInfo { flags: 0, count: 0 }));
        assert_eq!(p.irq_info(3), Some(IrqInfo { flags: 1, count: 1 }));
        assert_eq!(
            plain(InterruptPin::IntD).irq_info(0).map(|i| i.count),
            Some(1)
        );
        // The plain device: conventional config region, BAR0 only.
        assert_eq!(p.region_info(7).map(|r| r.size), Some(256));
        assert_eq!(p.region_info(6).map(|r| r.size), Some(0));
    }

    #[test]
    fn bar_accesses_are_routed() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        // BAR0 (trapped).
        dev.region_write(&ctx, 0, 0x10, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        dev.region_read(&ctx, 0, 0x10, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(dev.function().reads, [(0, 0x10, 4)]);
        assert_eq!(dev.function().writes, [(0, 0x10, vec![1, 2, 3, 4])]);
        // BAR4 (I/O, trapped).
        dev.region_write(&ctx, 4, 0x1f, &[9]).unwrap();
        assert_eq!(
            dev.function().writes.last().map(|w| (w.0, w.1)),
            Some((4, 0x1f))
        );
        // BAR2 memory: goes to the memfd, the function is told about writes.
        dev.region_write(&ctx, 2, 0x100, b"mapped").unwrap();
        let mut m = [0u8; 6];
        dev.function().mem.memory().read_at(0x100, &mut m).unwrap();
        assert_eq!(&m, b"mapped");
        dev.function()
            .mem
            .memory()
            .write_at(0x1ff8, &[7; 8])
            .unwrap();
        let mut r8 = [0u8; 8];
        dev.region_read(&ctx, 2, 0x1ff8, &mut r8).unwrap();
        assert_eq!(r8, [7; 8]);
        assert_eq!(dev.function().mem_writes, [(2, 0x100, 6)]);
        // The rest of the PBA page is memory too.
        dev.region_write(&ctx, 2, pba_at() + 0x10, &[5]).unwrap();
        assert_eq!(dev.function().mem_writes.len(), 2);
        assert_eq!(
            dev.function().reads.len(),
            1,
            "no BAR2 access reached the function"
        );
        // Out of range, absent BARs, the upper half of BAR0.
        assert_eq!(dev.region_read(&ctx, 0, 0x3ffe, &mut b), Err(Errno::INVAL));
        assert_eq!(
            dev.region_read(&ctx, 0, u64::MAX, &mut b),
            Err(Errno::INVAL)
        );
        assert_eq!(dev.region_read(&ctx, 1, 0, &mut b), Err(Errno::INVAL));
        assert_eq!(dev.region_write(&ctx, 3, 0, &b), Err(Errno::INVAL));
        assert_eq!(dev.region_write(&ctx, 8, 0, &b), Err(Errno::INVAL));
        assert_eq!(dev.region_write(&ctx, 9, 0, &b), Err(Errno::INVAL));
        // ROM: zeros by default, read-only, bounded.
        let mut rom = [0xffu8; 16];
        dev.region_read(&ctx, ROM_REGION, 0xfff0, &mut rom).unwrap();
        assert_eq!(rom, [0; 16]);
        assert_eq!(
            dev.region_read(&ctx, ROM_REGION, 0xfff8, &mut rom),
            Err(Errno::INVAL)
        );
        assert_eq!(
            dev.region_write(&ctx, ROM_REGION, 0, &rom),
            Err(Errno::INVAL)
        );
        let mut p = plain(InterruptPin::None);
        assert_eq!(
            p.region_read(&ctx, ROM_REGION, 0, &mut b),
            Err(Errno::INVAL)
        );
        p.region_read(&ctx, 0, 0, &mut b).unwrap();
        assert_eq!(b, [0xab; 4]);
    }

    #[test]
    fn msix_table_in_a_bar_through_the_adapter() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        let fd = bind_all(&ctx, MSIX);
        let ctrl = dev
            .function()
            .config
            .msix_capability()
            .unwrap()
            .control_offset();
        // The guest enables MSI-X with the function masked, through config space.
        cfg_w(&mut dev, &ctx, ctrl + 1, &[0xc0]);
        assert!(dev.function().msix.control().enabled);
        let table = &dev.function().msix;
        assert_eq!(
            table.fire(5, &mut IrqSink::msix(&ctx.irqs)),
            Ok(FireOutcome::Pending)
        );
        // The PBA, read through BAR2, shows it.
        let mut pba = [0u8; 8];
        dev.region_read(&ctx, 2, pba_at(), &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 1 << 5);
        // PBA writes are dropped.
        dev.region_write(&ctx, 2, pba_at(), &[0; 8]).unwrap();
        dev.region_read(&ctx, 2, pba_at(), &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 1 << 5);
        // The client programs entry 5 through BAR2 (Auto: table masks now apply).
        let mut entry = [0u8; 16];
        entry[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        entry[8..12].copy_from_slice(&0x25u32.to_le_bytes());
        dev.region_write(&ctx, 2, table_at() + 5 * 16, &entry)
            .unwrap();
        let mut back = [0u8; 16];
        dev.region_read(&ctx, 2, table_at() + 5 * 16, &mut back)
            .unwrap();
        assert_eq!(back, entry);
        assert_eq!(fired(&fd), 0, "function still masked");
        // Clearing the function mask delivers it.
        cfg_w(&mut dev, &ctx, ctrl + 1, &[0x80]);
        assert_eq!(fired(&fd), 1);
        dev.region_read(&ctx, 2, pba_at(), &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0);
        // A masked entry (vector 6, masked from power-on) now pends; unmasking it by a
        // vector-control write through the BAR delivers.
        let table = &dev.function().msix;
        assert_eq!(
            table.fire(6, &mut IrqSink::msix(&ctx.irqs)),
            Ok(FireOutcome::Pending)
        );
        dev.region_write(&ctx, 2, table_at() + 6 * 16 + 12, &[0, 0, 0, 0])
            .unwrap();
        assert_eq!(fired(&fd), 1);
        // An access straddling the table's end is refused.
        let mut b8 = [0u8; 8];
        let end = table_at() + 8 * 16;
        assert_eq!(
            dev.region_read(&ctx, 2, end - 4, &mut b8),
            Err(Errno::INVAL)
        );
        assert_eq!(
            dev.region_read(&ctx, 2, table_at() - 4, &mut b8),
            Err(Errno::INVAL)
        );
        assert_eq!(
            dev.region_write(&ctx, 2, pba_at() + 4, &b8),
            Err(Errno::INVAL)
        );
        // Right after the table is plain BAR memory.
        dev.region_read(&ctx, 2, end, &mut b8).unwrap();
    }

    #[test]
    fn msi_pending_goes_out_when_unmasked_by_config_write() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        let fd = bind_all(&ctx, MSI);
        let cap = dev.function().config.msi_capability().unwrap();
        let mask = cap.mask_offset().unwrap();
        cfg_w(&mut dev, &ctx, mask, &[0x1, 0, 0, 0]);
        cfg_w(&mut dev, &ctx, cap.control_offset(), &[0x21, 0]);
        let out = dev
            .function_mut()
            .config
            .fire_msi(0, &mut IrqSink::msi(&ctx.irqs));
        assert_eq!(out, Ok(FireOutcome::Pending));
        assert_eq!(fired(&fd), 0);
        cfg_w(&mut dev, &ctx, mask, &[0, 0, 0, 0]);
        assert_eq!(fired(&fd), 1);
        assert_eq!(dev.function().config.msi_state().unwrap().pending, 0);
    }

    #[test]
    fn intx_resignalled_when_the_guest_reenables_it() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        let fd = bind_all(&ctx, INTX);
        cfg_w(
            &mut dev,
            &ctx,
            PCI_COMMAND,
            &PCI_COMMAND_INTX_DISABLE.to_le_bytes(),
        );
        let out = dev.function_mut().config.set_intx(&ctx.irqs, true);
        assert_eq!(out, Ok(crate::irq::IntxOutcome::Suppressed));
        assert_eq!(fired(&fd), 0);
        cfg_w(&mut dev, &ctx, PCI_COMMAND, &[0, 0]);
        assert_eq!(fired(&fd), 1);
        // A write that changes nothing about INTx signals nothing.
        cfg_w(&mut dev, &ctx, PCI_COMMAND, &[PCI_COMMAND_MEMORY as u8, 0]);
        assert_eq!(fired(&fd), 0);
        // Turning MSI on and off again with the line up re-signals it too.
        let msi = dev
            .function()
            .config
            .msi_capability()
            .unwrap()
            .control_offset();
        cfg_w(&mut dev, &ctx, msi, &[1, 0]);
        cfg_w(&mut dev, &ctx, msi, &[0, 0]);
        assert_eq!(fired(&fd), 1);
    }

    #[test]
    fn config_region_accesses() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        let mut b = [0u8; 4];
        dev.region_read(&ctx, CONFIG_REGION, 0, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x0010_1b36);
        dev.region_read(&ctx, CONFIG_REGION, 4092, &mut b).unwrap();
        assert_eq!(
            dev.region_read(&ctx, CONFIG_REGION, 4093, &mut b),
            Err(Errno::INVAL)
        );
        assert_eq!(
            dev.region_write(&ctx, CONFIG_REGION, 4096, &b[..1]),
            Err(Errno::INVAL)
        );
        // BAR sizing through the region.
        dev.region_write(&ctx, CONFIG_REGION, 0x18, &[0xff; 4])
            .unwrap();
        dev.region_read(&ctx, CONFIG_REGION, 0x18, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), !(4 * page() as u32 - 1) | 0x8);
    }

    #[test]
    fn reset_restores_config_and_table() {
        let mut dev = PciDevice::new(test_fn());
        let ctx = ctx_for(&dev);
        let pristine = test_fn().config;
        dev.region_write(&ctx, CONFIG_REGION, 0, &[0xff; 4096])
            .unwrap();
        dev.region_write(&ctx, 2, table_at(), &[0; 16]).unwrap();
        assert!(dev.function().msix.control().enabled);
        assert_eq!(dev.function().msix.entry(0).map(|e| e.masked), Some(false));
        dev.reset(&ctx).unwrap();
        assert_eq!(dev.function().resets, 1);
        let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
        dev.function().config.read(0, &mut a).unwrap();
        pristine.read(0, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(!dev.function().msix.control().enabled);
        assert_eq!(dev.function().msix.entry(0).map(|e| e.masked), Some(true));
        // The default reset (no override) does the same for the plain device.
        let mut p = plain(InterruptPin::IntA);
        p.region_write(&ctx, CONFIG_REGION, 4, &[0x07, 0x04])
            .unwrap();
        p.reset(&ctx).unwrap();
        assert_eq!(p.function().config.command(), 0);
    }

    #[test]
    fn inconsistent_layouts_are_reported_and_ignored() {
        // BAR memory of the wrong size: not offered, accesses go to the function.
        let mut f = test_fn();
        f.mem = BarMemory::new("small", page(), &[]).unwrap();
        let mut dev = PciDevice::new(f);
        assert_eq!(
            dev.validate(),
            Err(ValidateLayoutError::MemorySize {
                bar: 2,
                bar_size: 4 * page(),
                memory_size: page()
            })
        );
        assert!(dev.region_info(2).unwrap().mmap.is_none());
        let ctx = ctx_for(&dev);
        let mut b = [0u8; 4];
        dev.region_read(&ctx, 2, 0x10, &mut b).unwrap();
        assert_eq!(dev.function().reads, [(2, 0x10, 4)]);
        // An MSI-X table for another capability: not used.
        let mut f = test_fn();
        let mut other = f.msix.capability();
        other.vectors = 4;
        f.msix = MsixTable::new(other, MsixMaskMode::Auto);
        let mut dev = PciDevice::new(f);
        assert_eq!(dev.validate(), Err(ValidateLayoutError::MsixMismatch));
        dev.region_read(&ctx, 2, table_at(), &mut b).unwrap();
        assert_eq!(b, [0; 4], "read from memory, not the table");
        assert_eq!(plain(InterruptPin::None).validate(), Ok(()));
    }

    #[test]
    fn memory_with_sparse_areas_and_no_msix() {
        let pg = page();
        let mut f = test_fn();
        f.mem = BarMemory::new(
            "sparse",
            4 * pg,
            &[SparseArea {
                offset: pg,
                size: pg,
            }],
        )
        .unwrap();
        let dev = PciDevice::new(f);
        let mm = dev.region_info(2).unwrap().mmap.unwrap();
        assert_eq!(
            mm.sparse,
            [SparseArea {
                offset: pg,
                size: pg
            }]
        );
        // Memory on a BAR whose every page holds MSI-X structures is not offered.
        let mut config = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::None);
        config.add_bar(BarSpec::mem32(2, pg)).unwrap();
        let cap = config
            .add_msix(MsixSpec::new(1, 2, 0, 2, 0x800), None)
            .unwrap();
        let mut f = test_fn();
        f.config = config;
        f.msix = MsixTable::new(cap, MsixMaskMode::Auto);
        f.mem = BarMemory::new("one-page", pg, &[]).unwrap();
        let dev = PciDevice::new(f);
        dev.validate().unwrap();
        assert!(dev.region_info(2).unwrap().mmap.is_none());
    }

    #[test]
    fn page_subtraction() {
        let a = |offset, size| SparseArea { offset, size };
        let whole = vec![a(0, 0x4000)];
        assert_eq!(
            subtract_pages(
                whole.clone(),
                std::slice::from_ref(&(0x2000..0x2080)),
                0x1000
            ),
            [a(0, 0x2000), a(0x3000, 0x1000)]
        );
        assert_eq!(
            subtract_pages(
                whole.clone(),
                std::slice::from_ref(&(0x0ff8..0x1008)),
                0x1000
            ),
            [a(0x2000, 0x2000)]
        );
        assert_eq!(
            subtract_pages(whole.clone(), std::slice::from_ref(&(0..0x4000)), 0x1000),
            []
        );
        assert_eq!(
            subtract_pages(
                whole.clone(),
                std::slice::from_ref(&(0x5000..0x5010)),
                0x1000
            ),
            whole
        );
        assert_eq!(
            subtract_pages(
                vec![a(0, 0x1000), a(0x2000, 0x2000)],
                &[0x2000..0x2010, 0x3ff0..0x4000],
                0x1000
            ),
            [a(0, 0x1000)]
        );
    }
}
