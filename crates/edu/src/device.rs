//! The edu device: BAR0 registers, the factorial unit, the DMA engine, interrupts, and the
//! [`Device`] the vfio-user server drives.
//!
//! The device is an `emudev-pci` [`PciFunction`] (config space, BAR0 handlers, config writes,
//! reset) behind the [`PciDevice`] adapter, which answers region and IRQ info from the config
//! space and routes region 7 to config space and BAR0 to the handlers. [`EduDevice`] wraps the
//! adapter so its API stays the device's own.
//!
//! Everything happens inside the register access that causes it: a factorial write computes
//! the result, a DMA command write copies the bytes, and either may raise an interrupt before
//! the write returns. The interrupt is MSI when the guest enabled the MSI capability and the
//! client bound an MSI eventfd, INTx otherwise (level: asserted while the interrupt status is
//! non-zero, signalled again on an acknowledge that leaves bits set). Like QEMU's model, edu
//! does not gate its DMA on the command register's bus-master bit.

use emudev_dma::{DmaAccessError, Iova};
use emudev_pci::{
    BarSpec, ConfigKind, ConfigSpace, InterruptPin, MsiSpec, PciDevice, PciFunction, PciIds,
};
use emudev_vfio_user::irq::{INTX, MSI};
use emudev_vfio_user::{DeviceContext, Errno};
use thiserror::Error;

use crate::regs::*;
use crate::stats::{Counters, EduStatsHandle};
use crate::{
    EduStats, EDU_BAR0_SIZE, EDU_CLASS_CODE, EDU_DEVICE_ID, EDU_DMA_BUF_ADDR, EDU_DMA_BUF_SIZE,
    EDU_ID_REG_VALUE, EDU_MSI_CAP_OFFSET, EDU_REVISION, EDU_SUBSYSTEM_ID, EDU_SUBSYSTEM_VENDOR_ID,
    EDU_VENDOR_ID,
};

/// `n!` modulo 2^32, as the edu factorial register computes it.
///
/// From 34 on the product holds at least 32 factors of two, so the result is 0; the loop is
/// therefore never longer than 33 steps, whatever the guest writes.
pub fn factorial(n: u32) -> u32 {
    if n >= 34 {
        return 0;
    }
    (1..=n).fold(1u32, u32::wrapping_mul)
}

/// Why a DMA transfer ended without copying.
#[derive(Debug, Error)]
pub enum DmaTransferError {
    /// The count is 0 or larger than the 4 KiB buffer.
    #[error("DMA count {0:#x} is 0 or larger than the {EDU_DMA_BUF_SIZE:#x}-byte buffer")]
    BadCount(u64),
    /// The EDU-side range is not inside the buffer at 0x40000, or overflows.
    #[error("DMA range {addr:#x} + {count:#x} is outside the EDU buffer")]
    OutsideBuffer {
        /// EDU-side address.
        addr: u64,
        /// Byte count.
        count: u64,
    },
    /// The RAM-side range wraps around the 64-bit address space.
    #[error("DMA range {iova} + {count:#x} wraps")]
    IovaWraps {
        /// RAM-side address.
        iova: Iova,
        /// Byte count.
        count: u64,
    },
    /// Client memory could not be read or written.
    #[error("DMA access failed")]
    Access(#[source] DmaAccessError),
}

/// The BAR0 register file (power-on values are all zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EduRegisters {
    /// Stored liveness value (already inverted: this is what a read returns).
    pub liveness: u32,
    /// Last factorial result.
    pub factorial: u32,
    /// Status register (`STATUS_*`).
    pub status: u32,
    /// Interrupt status.
    pub irq_status: u32,
    /// DMA source address.
    pub dma_src: u64,
    /// DMA destination address.
    pub dma_dst: u64,
    /// DMA count.
    pub dma_count: u64,
    /// DMA command (`DMA_CMD_*`).
    pub dma_cmd: u64,
}

/// The QEMU `edu` device.
#[derive(Debug)]
pub struct EduDevice {
    pci: PciDevice<Edu>,
}

impl Default for EduDevice {
    fn default() -> Self {
        Self::new()
    }
}

/// The edu config space at power-on: conventional, INTA, BAR0 of 1 MiB (32-bit, not
/// prefetchable), one 64-bit MSI vector at 0x40.
fn edu_config() -> ConfigSpace {
    let ids = PciIds {
        vendor_id: EDU_VENDOR_ID,
        device_id: EDU_DEVICE_ID,
        subsystem_vendor_id: EDU_SUBSYSTEM_VENDOR_ID,
        subsystem_id: EDU_SUBSYSTEM_ID,
        revision: EDU_REVISION,
        class_code: EDU_CLASS_CODE,
    };
    let mut config = ConfigSpace::new(ConfigKind::Conventional, &ids, InterruptPin::IntA);
    // Fixed, valid arguments: these cannot fail; log rather than panic all the same.
    if let Err(e) = config.add_bar(BarSpec::mem32(0, EDU_BAR0_SIZE)) {
        log::error!("edu: BAR0 setup failed: {e}");
    }
    if let Err(e) = config.add_msi(MsiSpec::new(1), Some(u16::from(EDU_MSI_CAP_OFFSET))) {
        log::error!("edu: MSI capability setup failed: {e}");
    }
    config
}

impl EduDevice {
    /// A device in its power-on state.
    pub fn new() -> Self {
        EduDevice {
            pci: PciDevice::new(Edu {
                config: edu_config(),
                regs: EduRegisters::default(),
                dma_buf: Box::new([0; EDU_DMA_BUF_SIZE]),
                stats: EduStatsHandle::default(),
            }),
        }
    }

    fn edu(&self) -> &Edu {
        self.pci.function()
    }

    /// The counters now.
    pub fn stats(&self) -> EduStats {
        self.edu().stats.snapshot()
    }

    /// A handle that reads the counters from any thread, after the device is given away.
    pub fn stats_handle(&self) -> EduStatsHandle {
        self.edu().stats.clone()
    }

    /// The register file now.
    pub fn registers(&self) -> EduRegisters {
        self.edu().regs
    }

    /// The config space now.
    pub fn config(&self) -> &ConfigSpace {
        &self.edu().config
    }

    /// The 4 KiB DMA buffer (EDU addresses 0x40000-0x40fff).
    pub fn dma_buffer(&self) -> &[u8] {
        &self.edu().dma_buf[..]
    }
}

/// The edu function behind the PCI adapter.
#[derive(Debug)]
struct Edu {
    config: ConfigSpace,
    regs: EduRegisters,
    dma_buf: Box<[u8; EDU_DMA_BUF_SIZE]>,
    stats: EduStatsHandle,
}

impl Edu {
    fn counters(&self) -> &Counters {
        &self.stats.0
    }

    /// Whether a BAR0 access of `len` bytes at `offset` is one edu accepts.
    fn access_ok(offset: u64, len: usize) -> bool {
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= EDU_BAR0_SIZE);
        let size_ok = match len {
            4 => true,
            8 => offset >= DMA_REGS_START,
            _ => false,
        };
        fits && size_ok && offset.is_multiple_of(len as u64)
    }

    /// BAR0 read. Bad sizes and alignments read all-ones and are counted.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        Counters::bump(&self.counters().mmio_reads);
        let value = if Self::access_ok(offset, data.len()) {
            self.reg_read(offset).unwrap_or(u64::MAX)
        } else {
            Counters::bump(&self.counters().bad_accesses);
            log::debug!("edu: bad {}-byte read at {offset:#x}", data.len());
            u64::MAX
        };
        let bytes = value.to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0xff)))
        {
            *d = *b;
        }
    }

    /// The value of the register at `offset`; `None` for an offset with no readable register.
    fn reg_read(&self, offset: u64) -> Option<u64> {
        let r = &self.regs;
        Some(match offset {
            REG_ID => u64::from(EDU_ID_REG_VALUE),
            REG_LIVENESS => u64::from(r.liveness),
            REG_FACTORIAL => u64::from(r.factorial),
            REG_STATUS => u64::from(r.status),
            REG_IRQ_STATUS => u64::from(r.irq_status),
            REG_DMA_SRC => r.dma_src,
            REG_DMA_DST => r.dma_dst,
            REG_DMA_COUNT => r.dma_count,
            REG_DMA_CMD => r.dma_cmd,
            _ => return None,
        })
    }

    /// BAR0 write. Bad sizes and alignments are ignored and counted.
    fn mmio_write(&mut self, ctx: &DeviceContext, offset: u64, data: &[u8]) {
        Counters::bump(&self.counters().mmio_writes);
        if !Self::access_ok(offset, data.len()) {
            Counters::bump(&self.counters().bad_accesses);
            log::debug!("edu: bad {}-byte write at {offset:#x}", data.len());
            return;
        }
        let mut bytes = [0u8; 8];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        let value = u64::from_le_bytes(bytes);
        // Registers below 0x80 are 32 bits wide.
        let value32 = value as u32;
        match offset {
            REG_LIVENESS => self.regs.liveness = !value32,
            REG_FACTORIAL => self.start_factorial(ctx, value32),
            REG_STATUS => {
                self.regs.status =
                    (self.regs.status & !STATUS_IRQ_FACT) | (value32 & STATUS_IRQ_FACT);
            }
            REG_IRQ_RAISE => self.raise_irq(ctx, value32),
            REG_IRQ_ACK => self.ack_irq(ctx, value32),
            REG_DMA_SRC => self.regs.dma_src = value,
            REG_DMA_DST => self.regs.dma_dst = value,
            REG_DMA_COUNT => self.regs.dma_count = value,
            REG_DMA_CMD => {
                self.regs.dma_cmd = value;
                if value & DMA_CMD_START != 0 {
                    self.run_dma(ctx);
                }
            }
            // RO registers and holes: writes are dropped.
            _ => {}
        }
    }

    /// A factorial write: ignored while a computation runs (never, as it is synchronous).
    fn start_factorial(&mut self, ctx: &DeviceContext, n: u32) {
        if self.regs.status & STATUS_COMPUTING != 0 {
            return;
        }
        self.regs.status |= STATUS_COMPUTING;
        self.regs.factorial = factorial(n);
        self.regs.status &= !STATUS_COMPUTING;
        if self.regs.status & STATUS_IRQ_FACT != 0 {
            self.raise_irq(ctx, IRQ_FACT);
        }
    }

    /// Runs the programmed DMA, clears the start bit, raises `IRQ_DMA` if asked. A failed
    /// transfer copies nothing, is counted, and still ends (and interrupts) like a good one so
    /// a driver waiting for completion is not left hanging.
    fn run_dma(&mut self, ctx: &DeviceContext) {
        match self.dma_transfer(ctx) {
            Ok(()) => Counters::bump(&self.counters().dma_transfers),
            Err(e) => {
                Counters::bump(&self.counters().dma_errors);
                log::debug!("edu: DMA failed: {e}");
            }
        }
        self.regs.dma_cmd &= !DMA_CMD_START;
        if self.regs.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise_irq(ctx, IRQ_DMA);
        }
    }

    fn dma_transfer(&mut self, ctx: &DeviceContext) -> Result<(), DmaTransferError> {
        let r = self.regs;
        let count = r.dma_count;
        let len = usize::try_from(count)
            .ok()
            .filter(|&n| n != 0 && n <= EDU_DMA_BUF_SIZE)
            .ok_or(DmaTransferError::BadCount(count))?;
        let to_ram = r.dma_cmd & DMA_CMD_TO_RAM != 0;
        let (edu_addr, iova) = if to_ram {
            (r.dma_src, Iova(r.dma_dst))
        } else {
            (r.dma_dst, Iova(r.dma_src))
        };
        let outside = || DmaTransferError::OutsideBuffer {
            addr: edu_addr,
            count,
        };
        let start = edu_addr
            .checked_sub(EDU_DMA_BUF_ADDR)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(outside)?;
        let end = start.checked_add(len).ok_or_else(outside)?;
        if iova.checked_add(count).is_none() {
            return Err(DmaTransferError::IovaWraps { iova, count });
        }
        if to_ram {
            let src = self.dma_buf.get(start..end).ok_or_else(outside)?;
            ctx.dma.write(iova, src).map_err(DmaTransferError::Access)?;
        } else {
            let dst = self.dma_buf.get_mut(start..end).ok_or_else(outside)?;
            // Read into a scratch buffer first so a failed read leaves the EDU buffer alone.
            let mut scratch = vec![0u8; len];
            ctx.dma
                .read(iova, &mut scratch)
                .map_err(DmaTransferError::Access)?;
            dst.copy_from_slice(&scratch);
        }
        Ok(())
    }

    /// Whether interrupts go out as MSI: enabled by the guest and an eventfd to carry them.
    fn msi_active(&self, ctx: &DeviceContext) -> bool {
        self.config.msi_enabled() && ctx.irqs.state(MSI, 0).is_some_and(|s| s.has_eventfd)
    }

    /// Whether the INTx line is asserted and would reach the client.
    fn intx_deliverable(&self, ctx: &DeviceContext) -> bool {
        self.regs.irq_status != 0 && !self.config.intx_disabled() && !self.msi_active(ctx)
    }

    /// Keeps the config status INTERRUPT bit in step with the INTx line.
    fn sync_intx_status(&mut self) {
        let asserted = self.regs.irq_status != 0 && !self.config.msi_enabled();
        self.config.set_interrupt_status(asserted);
    }

    fn raise_irq(&mut self, ctx: &DeviceContext, bits: u32) {
        if bits == 0 {
            return;
        }
        let was = self.regs.irq_status;
        self.regs.irq_status |= bits;
        self.sync_intx_status();
        if self.msi_active(ctx) {
            // MSI is an edge: every raise sends a message.
            self.signal(ctx, MSI);
        } else if was == 0 {
            // INTx is a level: only the rising edge is signalled.
            self.signal_intx(ctx);
        }
    }

    fn ack_irq(&mut self, ctx: &DeviceContext, bits: u32) {
        self.regs.irq_status &= !bits;
        self.sync_intx_status();
        if self.regs.irq_status != 0 && !self.msi_active(ctx) {
            // The level is still up: tell the client again.
            self.signal_intx(ctx);
        }
    }

    fn signal_intx(&mut self, ctx: &DeviceContext) {
        if self.config.intx_disabled() {
            Counters::bump(&self.counters().irqs_raised);
            Counters::bump(&self.counters().irqs_undelivered);
            return;
        }
        self.signal(ctx, INTX);
    }

    fn signal(&mut self, ctx: &DeviceContext, index: u32) {
        Counters::bump(&self.counters().irqs_raised);
        match ctx.irqs.trigger(index, 0) {
            Ok(_) => {}
            Err(Errno::NOENT) => Counters::bump(&self.counters().irqs_undelivered),
            Err(e) => {
                Counters::bump(&self.counters().irqs_undelivered);
                log::warn!("edu: signalling IRQ index {index} failed: {e}");
            }
        }
    }
}

impl PciFunction for Edu {
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
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.mmio_read(offset, data);
        Ok(())
    }

    fn bar_write(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        if bar != 0 {
            return Err(Errno::INVAL);
        }
        self.mmio_write(ctx, offset, data);
        Ok(())
    }

    /// Guest config write; signals INTx if the write unmasked an asserted line (INTx disable
    /// cleared, or MSI turned off with interrupt bits set). edu's own rule rather than the
    /// default one: its INTx also carries interrupts while MSI is enabled without an eventfd.
    fn config_write(&mut self, ctx: &DeviceContext, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let before = self.intx_deliverable(ctx);
        self.config.write(offset, data).map_err(|e| {
            log::debug!("edu: {e}");
            Errno::INVAL
        })?;
        self.sync_intx_status();
        if !before && self.intx_deliverable(ctx) {
            self.signal(ctx, INTX);
        }
        Ok(())
    }

    /// Power-on state for registers, buffer and config space; counters are kept.
    fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
        self.regs = EduRegisters::default();
        self.dma_buf.fill(0);
        self.config.reset();
        Ok(())
    }
}

emudev_vfio_user::delegate_device!(EduDevice => pci);

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_dma::{DmaLimits, DmaMapRequest, DmaProt, DmaTable};
    use emudev_pci::regs::{PCI_COMMAND_INTX_DISABLE, PCI_STATUS_INTERRUPT};
    use emudev_vfio_user::irq::IrqTable;
    use emudev_vfio_user::{Device, IrqInfo};
    use rustix::event::{eventfd, EventfdFlags};
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use vfio_bindings::bindings::vfio::{
        VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_BAR0_REGION_INDEX,
        VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    };

    const BAR0: u32 = VFIO_PCI_BAR0_REGION_INDEX;
    const CFG: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
    const MSI_CTRL: u64 = EDU_MSI_CAP_OFFSET as u64 + 2;

    /// Client memory: a memfd of 4 pages mapped at IOVA 0x10_0000.
    const RAM_IOVA: u64 = 0x10_0000;
    const RAM_SIZE: u64 = 0x4000;

    struct Rig {
        dev: EduDevice,
        ctx: DeviceContext,
        ram: OwnedFd,
        intx: OwnedFd,
        msi: OwnedFd,
    }

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
    }

    /// How many times the eventfd fired since the last look (reading resets it).
    fn fired(fd: &OwnedFd) -> u64 {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => u64::from_ne_bytes(buf),
            Ok(n) => panic!("short eventfd read of {n} bytes"),
            Err(Errno::AGAIN) => 0,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    /// A device, a DMA table with the memfd mapped, and an IRQ table with INTx and MSI
    /// eventfds bound (the test keeps dups to read).
    fn rig() -> Rig {
        let ram = memfd_create("edu-test-ram", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&ram, RAM_SIZE).expect("ftruncate");
        let dma = DmaTable::new(DmaLimits::default());
        dma.map(DmaMapRequest {
            iova: Iova(RAM_IOVA),
            size: RAM_SIZE,
            prot: DmaProt::RW,
            file_offset: 0,
            fd: Some(ram.try_clone().expect("dup memfd")),
        })
        .expect("dma map");
        let irqs = IrqTable::new(&[1, 1, 0, 0, 0]);
        let intx = new_eventfd();
        let msi = new_eventfd();
        irqs.set_eventfds(INTX, 0, vec![Some(intx.try_clone().unwrap())])
            .unwrap();
        irqs.set_eventfds(MSI, 0, vec![Some(msi.try_clone().unwrap())])
            .unwrap();
        Rig {
            dev: EduDevice::new(),
            ctx: DeviceContext {
                dma: Arc::new(dma),
                irqs: Arc::new(irqs),
            },
            ram,
            intx,
            msi,
        }
    }

    impl Rig {
        fn r32(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.region_read(&self.ctx, BAR0, off, &mut b).unwrap();
            u32::from_le_bytes(b)
        }
        fn w32(&mut self, off: u64, v: u32) {
            self.dev
                .region_write(&self.ctx, BAR0, off, &v.to_le_bytes())
                .unwrap();
        }
        fn r64(&mut self, off: u64) -> u64 {
            let mut b = [0u8; 8];
            self.dev.region_read(&self.ctx, BAR0, off, &mut b).unwrap();
            u64::from_le_bytes(b)
        }
        fn w64(&mut self, off: u64, v: u64) {
            self.dev
                .region_write(&self.ctx, BAR0, off, &v.to_le_bytes())
                .unwrap();
        }
        fn cfg_r(&mut self, off: u64, len: usize) -> u32 {
            let mut b = [0u8; 4];
            self.dev
                .region_read(&self.ctx, CFG, off, &mut b[..len])
                .unwrap();
            u32::from_le_bytes(b)
        }
        fn cfg_w(&mut self, off: u64, len: usize, v: u32) {
            self.dev
                .region_write(&self.ctx, CFG, off, &v.to_le_bytes()[..len])
                .unwrap();
        }
        fn enable_msi(&mut self) {
            self.cfg_w(MSI_CTRL, 2, 1);
        }
        fn dma(&mut self, src: u64, dst: u64, count: u64, cmd: u64) {
            self.w64(REG_DMA_SRC, src);
            self.w64(REG_DMA_DST, dst);
            self.w64(REG_DMA_COUNT, count);
            self.w64(REG_DMA_CMD, cmd);
        }
    }

    #[test]
    fn identification() {
        let mut r = rig();
        assert_eq!(r.r32(REG_ID), EDU_ID_REG_VALUE);
        r.w32(REG_ID, 0);
        assert_eq!(r.r32(REG_ID), 0x0100_00ed);
        assert_eq!(r.dev.stats().mmio_reads, 2);
        assert_eq!(r.dev.stats().mmio_writes, 1);
    }

    #[test]
    fn liveness_returns_not() {
        let mut r = rig();
        assert_eq!(r.r32(REG_LIVENESS), 0);
        r.w32(REG_LIVENESS, 0x1234_5678);
        assert_eq!(r.r32(REG_LIVENESS), !0x1234_5678);
        r.w32(REG_LIVENESS, 0);
        assert_eq!(r.r32(REG_LIVENESS), 0xffff_ffff);
    }

    #[test]
    fn factorial_register() {
        let mut r = rig();
        let expect = [
            1u32, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800, 479001600,
        ];
        for (n, &f) in expect.iter().enumerate() {
            r.w32(REG_FACTORIAL, n as u32);
            assert_eq!(r.r32(REG_FACTORIAL), f, "{n}!");
            assert_eq!(r.r32(REG_STATUS) & STATUS_COMPUTING, 0);
        }
        // 13! = 6227020800 wraps to 6227020800 - 2^32.
        r.w32(REG_FACTORIAL, 13);
        assert_eq!(r.r32(REG_FACTORIAL), 1_932_053_504);
        r.w32(REG_FACTORIAL, 20);
        assert_eq!(
            r.r32(REG_FACTORIAL),
            (2_432_902_008_176_640_000u64 % (1 << 32)) as u32
        );
        // Huge inputs return at once (and are 0 mod 2^32).
        r.w32(REG_FACTORIAL, u32::MAX);
        assert_eq!(r.r32(REG_FACTORIAL), 0);
    }

    #[test]
    fn factorial_shortcut_matches_the_loop() {
        for n in 0..200u32 {
            let mut slow = 1u32;
            for i in 1..=n {
                slow = slow.wrapping_mul(i);
            }
            assert_eq!(factorial(n), slow, "{n}");
        }
        assert_ne!(factorial(33), 0);
    }

    #[test]
    fn factorial_interrupt_with_msi() {
        let mut r = rig();
        r.enable_msi();
        r.w32(REG_STATUS, 0xffff_ffff);
        assert_eq!(r.r32(REG_STATUS), STATUS_IRQ_FACT, "only bit 7 is writable");
        r.w32(REG_FACTORIAL, 5);
        assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_FACT);
        assert_eq!(fired(&r.msi), 1);
        assert_eq!(fired(&r.intx), 0);
        r.w32(REG_IRQ_ACK, IRQ_FACT);
        r.w32(REG_STATUS, 0);
        r.w32(REG_FACTORIAL, 5);
        assert_eq!(r.r32(REG_IRQ_STATUS), 0);
        assert_eq!(fired(&r.msi), 0);
    }

    #[test]
    fn raise_and_ack_with_msi() {
        let mut r = rig();
        r.enable_msi();
        r.w32(REG_IRQ_RAISE, 0x10);
        assert_eq!(r.r32(REG_IRQ_STATUS), 0x10);
        assert_eq!(fired(&r.msi), 1);
        // MSI is an edge: a second raise while pending sends again.
        r.w32(REG_IRQ_RAISE, 0x20);
        assert_eq!(fired(&r.msi), 1);
        r.w32(REG_IRQ_ACK, 0x10);
        assert_eq!(r.r32(REG_IRQ_STATUS), 0x20);
        r.w32(REG_IRQ_ACK, 0x20);
        assert_eq!(r.r32(REG_IRQ_STATUS), 0);
        assert_eq!(fired(&r.msi), 0);
        assert_eq!(fired(&r.intx), 0);
        // Raising 0 does nothing.
        r.w32(REG_IRQ_RAISE, 0);
        assert_eq!(fired(&r.msi), 0);
        let s = r.dev.stats();
        assert_eq!((s.irqs_raised, s.irqs_undelivered), (2, 0));
    }

    #[test]
    fn raise_and_ack_with_intx() {
        let mut r = rig();
        r.w32(REG_IRQ_RAISE, 0x1);
        assert_eq!(fired(&r.intx), 1);
        assert_eq!(fired(&r.msi), 0);
        assert_ne!(r.cfg_r(6, 2) as u16 & PCI_STATUS_INTERRUPT, 0);
        // Level already high: no new edge.
        r.w32(REG_IRQ_RAISE, 0x2);
        assert_eq!(fired(&r.intx), 0);
        // Ack leaving bits set re-signals.
        r.w32(REG_IRQ_ACK, 0x1);
        assert_eq!(fired(&r.intx), 1);
        // Ack to zero sends nothing.
        r.w32(REG_IRQ_ACK, 0x2);
        assert_eq!(fired(&r.intx), 0);
        assert_eq!(r.cfg_r(6, 2) as u16 & PCI_STATUS_INTERRUPT, 0);
        assert_eq!(r.dev.stats().irqs_raised, 2);
    }

    #[test]
    fn msi_enabled_without_eventfd_falls_back_to_intx() {
        let mut r = rig();
        r.ctx.irqs.set_eventfds(MSI, 0, vec![None]).unwrap();
        r.enable_msi();
        r.w32(REG_IRQ_RAISE, 0x1);
        assert_eq!(fired(&r.intx), 1);
    }

    #[test]
    fn intx_disabled_is_not_delivered() {
        let mut r = rig();
        r.cfg_w(4, 2, u32::from(PCI_COMMAND_INTX_DISABLE));
        r.w32(REG_IRQ_RAISE, 0x1);
        assert_eq!(fired(&r.intx), 0);
        let s = r.dev.stats();
        assert_eq!((s.irqs_raised, s.irqs_undelivered), (1, 1));
        // Re-enabling INTx with the line up delivers it.
        r.cfg_w(4, 2, 0);
        assert_eq!(fired(&r.intx), 1);
    }

    #[test]
    fn no_eventfd_is_counted_not_fatal() {
        let mut r = rig();
        r.ctx.irqs.set_eventfds(INTX, 0, vec![None]).unwrap();
        r.w32(REG_IRQ_RAISE, 0x1);
        assert_eq!(r.r32(REG_IRQ_STATUS), 1);
        let s = r.dev.stats();
        assert_eq!((s.irqs_raised, s.irqs_undelivered), (1, 1));
    }

    #[test]
    fn dma_round_trip_through_client_memory() {
        let mut r = rig();
        r.enable_msi();
        let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
        // The "guest" puts bytes in its RAM at IOVA RAM_IOVA + 0x100.
        rustix::io::pwrite(&r.ram, &pattern, 0x100).unwrap();
        // RAM -> EDU at buffer offset 0x80.
        r.dma(
            RAM_IOVA + 0x100,
            EDU_DMA_BUF_ADDR + 0x80,
            256,
            DMA_CMD_START | DMA_CMD_IRQ,
        );
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_IRQ, "start bit cleared");
        assert_eq!(&r.dev.dma_buffer()[0x80..0x180], &pattern[..]);
        assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_DMA);
        assert_eq!(fired(&r.msi), 1);
        r.w32(REG_IRQ_ACK, IRQ_DMA);
        // EDU -> RAM at another IOVA, on another page.
        r.dma(
            EDU_DMA_BUF_ADDR + 0x80,
            RAM_IOVA + 0x2ff0,
            256,
            DMA_CMD_START | DMA_CMD_TO_RAM | DMA_CMD_IRQ,
        );
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_TO_RAM | DMA_CMD_IRQ);
        let mut back = vec![0u8; 256];
        rustix::io::pread(&r.ram, &mut back[..], 0x2ff0).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(fired(&r.msi), 1);
        let s = r.dev.stats();
        assert_eq!((s.dma_transfers, s.dma_errors), (2, 0));
    }

    #[test]
    fn dma_with_4_byte_register_writes_and_whole_buffer() {
        let mut r = rig();
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        rustix::io::pwrite(&r.ram, &pattern, 0).unwrap();
        r.w32(REG_DMA_SRC, RAM_IOVA as u32);
        r.w32(REG_DMA_DST, EDU_DMA_BUF_ADDR as u32);
        r.w32(REG_DMA_COUNT, 4096);
        r.w32(REG_DMA_CMD, DMA_CMD_START as u32);
        assert_eq!(r.dev.dma_buffer(), &pattern[..]);
        assert_eq!(r.dev.stats().dma_transfers, 1);
        // No IRQ bit: no interrupt.
        assert_eq!(r.r32(REG_IRQ_STATUS), 0);
        assert_eq!(fired(&r.intx), 0);
    }

    fn assert_dma_fails(r: &mut Rig, src: u64, dst: u64, count: u64, cmd: u64) {
        let before = r.dev.stats().dma_errors;
        let buf_before = r.dev.dma_buffer().to_vec();
        let mut ram_before = vec![0u8; RAM_SIZE as usize];
        rustix::io::pread(&r.ram, &mut ram_before[..], 0).unwrap();
        r.dma(src, dst, count, cmd | DMA_CMD_START);
        assert_eq!(
            r.dev.stats().dma_errors,
            before + 1,
            "src {src:#x} dst {dst:#x} count {count:#x}"
        );
        assert_eq!(r.r64(REG_DMA_CMD) & DMA_CMD_START, 0);
        assert_eq!(r.dev.dma_buffer(), &buf_before[..]);
        let mut ram_after = vec![0u8; RAM_SIZE as usize];
        rustix::io::pread(&r.ram, &mut ram_after[..], 0).unwrap();
        assert_eq!(ram_after, ram_before);
    }

    #[test]
    fn dma_to_unmapped_iova_is_an_error() {
        let mut r = rig();
        rustix::io::pwrite(&r.ram, &[0x5a; 64], 0).unwrap();
        r.dma(RAM_IOVA, EDU_DMA_BUF_ADDR, 64, DMA_CMD_START);
        assert_eq!(r.dev.stats().dma_transfers, 1);
        // Read from unmapped memory, write to unmapped memory, run past the end of the map.
        assert_dma_fails(&mut r, 0x1000, EDU_DMA_BUF_ADDR, 16, 0);
        assert_dma_fails(&mut r, EDU_DMA_BUF_ADDR, 0x1000, 16, DMA_CMD_TO_RAM);
        assert_dma_fails(
            &mut r,
            EDU_DMA_BUF_ADDR,
            RAM_IOVA + RAM_SIZE - 8,
            16,
            DMA_CMD_TO_RAM,
        );
        assert_dma_fails(&mut r, RAM_IOVA + RAM_SIZE - 8, EDU_DMA_BUF_ADDR, 16, 0);
        assert_dma_fails(&mut r, u64::MAX - 4, EDU_DMA_BUF_ADDR, 16, 0);
        assert_eq!(r.dev.stats().dma_errors, 5);
        assert_eq!(r.dev.stats().dma_transfers, 1);
    }

    #[test]
    fn dma_bad_ranges_are_errors() {
        let mut r = rig();
        let buf = EDU_DMA_BUF_ADDR;
        let size = EDU_DMA_BUF_SIZE as u64;
        // EDU address below, at the end of, and straddling the end of the buffer.
        assert_dma_fails(&mut r, RAM_IOVA, buf - 1, 1, 0);
        assert_dma_fails(&mut r, RAM_IOVA, buf + size, 1, 0);
        assert_dma_fails(&mut r, RAM_IOVA, buf + size - 4, 8, 0);
        assert_dma_fails(&mut r, buf + size - 4, RAM_IOVA, 8, DMA_CMD_TO_RAM);
        assert_dma_fails(&mut r, 0, RAM_IOVA, 8, DMA_CMD_TO_RAM);
        // Count 0 and count > 4096.
        assert_dma_fails(&mut r, RAM_IOVA, buf, 0, 0);
        assert_dma_fails(&mut r, RAM_IOVA, buf, size + 1, 0);
        assert_dma_fails(&mut r, buf, RAM_IOVA, u64::MAX, DMA_CMD_TO_RAM);
        // Address + count overflow on either side.
        assert_dma_fails(&mut r, RAM_IOVA, u64::MAX - 2, 16, 0);
        assert_dma_fails(&mut r, buf, u64::MAX - 2, 16, DMA_CMD_TO_RAM);
        assert_eq!(r.dev.stats().dma_errors, 10);
        assert_eq!(r.dev.stats().dma_transfers, 0);
    }

    #[test]
    fn failed_dma_still_interrupts_when_asked() {
        let mut r = rig();
        r.dma(0x1000, EDU_DMA_BUF_ADDR, 16, DMA_CMD_START | DMA_CMD_IRQ);
        assert_eq!(r.dev.stats().dma_errors, 1);
        assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_DMA);
        assert_eq!(fired(&r.intx), 1);
    }

    #[test]
    fn dma_command_without_start_does_nothing() {
        let mut r = rig();
        r.dma(RAM_IOVA, EDU_DMA_BUF_ADDR, 16, DMA_CMD_IRQ | DMA_CMD_TO_RAM);
        let s = r.dev.stats();
        assert_eq!((s.dma_transfers, s.dma_errors), (0, 0));
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_IRQ | DMA_CMD_TO_RAM);
        assert_eq!(r.r64(REG_DMA_SRC), RAM_IOVA);
        assert_eq!(r.r64(REG_DMA_COUNT), 16);
        assert_eq!(r.r32(REG_DMA_DST), EDU_DMA_BUF_ADDR as u32);
    }

    #[test]
    fn bad_accesses_are_counted() {
        let mut r = rig();
        // 8-byte read below 0x80.
        let mut b8 = [0u8; 8];
        r.dev.region_read(&r.ctx, BAR0, REG_ID, &mut b8).unwrap();
        assert_eq!(b8, [0xff; 8]);
        // 2-byte read and write.
        let mut b2 = [0u8; 2];
        r.dev.region_read(&r.ctx, BAR0, REG_ID, &mut b2).unwrap();
        assert_eq!(b2, [0xff; 2]);
        r.dev
            .region_write(&r.ctx, BAR0, REG_LIVENESS, &[1, 2])
            .unwrap();
        // 8-byte write below 0x80 is ignored.
        r.dev
            .region_write(&r.ctx, BAR0, REG_LIVENESS - 4, &u64::MAX.to_le_bytes())
            .unwrap();
        // Unaligned 4- and 8-byte accesses; 1-byte access.
        r.dev
            .region_write(&r.ctx, BAR0, REG_LIVENESS + 1, &[1, 2, 3, 4])
            .unwrap();
        r.dev
            .region_write(&r.ctx, BAR0, REG_DMA_SRC + 4, &[9; 8])
            .unwrap();
        r.dev
            .region_read(&r.ctx, BAR0, REG_DMA_SRC, &mut [0u8; 1])
            .unwrap();
        assert_eq!(r.r32(REG_LIVENESS), 0, "no bad write landed");
        assert_eq!(r.r64(REG_DMA_SRC), 0);
        assert_eq!(r.dev.stats().bad_accesses, 7);
        // Holes and write-only registers read all-ones but are not bad accesses.
        assert_eq!(r.r32(0x0c), u32::MAX);
        assert_eq!(r.r32(REG_IRQ_RAISE), u32::MAX);
        assert_eq!(r.r64(0xa0), u64::MAX);
        // An access running past the BAR is refused (by the PCI adapter, before edu sees it;
        // the server refuses it even earlier), not a panic.
        assert_eq!(
            r.dev
                .region_read(&r.ctx, BAR0, EDU_BAR0_SIZE - 4, &mut [0u8; 8]),
            Err(Errno::INVAL)
        );
        assert_eq!(
            r.dev.region_read(&r.ctx, BAR0, u64::MAX - 3, &mut [0u8; 4]),
            Err(Errno::INVAL)
        );
        assert_eq!(
            r.dev.region_write(&r.ctx, BAR0, EDU_BAR0_SIZE, &[0u8; 4]),
            Err(Errno::INVAL)
        );
        assert_eq!(r.dev.stats().bad_accesses, 7);
    }

    #[test]
    fn config_space_ids_and_layout() {
        let mut r = rig();
        assert_eq!(r.cfg_r(0, 2), u32::from(EDU_VENDOR_ID));
        assert_eq!(r.cfg_r(2, 2), u32::from(EDU_DEVICE_ID));
        assert_eq!(r.cfg_r(0, 4), 0x11e8_1234);
        assert_eq!(r.cfg_r(8, 4), 0x00ff_0010, "class 00ff00, revision 0x10");
        assert_eq!(r.cfg_r(0x0e, 1), 0, "header type 0");
        assert_eq!(r.cfg_r(0x2c, 4), 0x1100_1af4);
        assert_eq!(r.cfg_r(6, 2), 0x0010, "capability list");
        assert_eq!(r.cfg_r(0x34, 1), 0x40);
        assert_eq!(r.cfg_r(0x3d, 1), 1, "INTA");
        assert_eq!(r.cfg_r(0x40, 2), 0x0005, "MSI, last capability");
        assert_eq!(r.cfg_r(MSI_CTRL, 2), 0x0080, "64-bit, 1 vector, disabled");
        let mut all = [0u8; 256];
        r.dev.region_read(&r.ctx, CFG, 0, &mut all).unwrap();
        assert_eq!(all[0x3d], 1);
    }

    #[test]
    fn config_bar_sizing_and_read_only_bits() {
        let mut r = rig();
        for off in (0..256).step_by(4) {
            r.cfg_w(off, 4, u32::MAX);
        }
        assert_eq!(r.cfg_r(0x10, 4), 0xfff0_0000);
        for bar in 1..6 {
            assert_eq!(r.cfg_r(0x10 + 4 * bar, 4), 0, "BAR{bar}");
        }
        assert_eq!(r.cfg_r(0x30, 4), 0, "ROM");
        assert_eq!(r.cfg_r(0, 4), 0x11e8_1234);
        assert_eq!(
            r.cfg_r(4, 2),
            0x0547,
            "command: IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE only"
        );
        assert_eq!(r.cfg_r(6, 2), 0x0010);
        assert_eq!(r.cfg_r(8, 4), 0x00ff_0010);
        assert_eq!(r.cfg_r(0x34, 1), 0x40);
        assert_eq!(r.cfg_r(0x3c, 2), 0x01ff, "line RW, pin RO");
        assert_eq!(r.cfg_r(0x40, 2), 0x0005);
        assert_eq!(
            r.cfg_r(MSI_CTRL, 2),
            0x00f1,
            "enable + MME writable, 64-bit RO"
        );
        assert_eq!(r.cfg_r(0x44, 4), 0xffff_fffc);
        assert_eq!(r.cfg_r(0x48, 4), 0xffff_ffff);
        assert_eq!(r.cfg_r(0x4c, 2), 0xffff);
        assert_eq!(r.cfg_r(0x50, 4), 0);
        // A real address goes in.
        r.cfg_w(0x10, 4, 0xfea0_0000);
        assert_eq!(r.dev.config().bar_address(0), Some(0xfea0_0000));
        // Byte and word writes at odd offsets only touch writable bits.
        r.cfg_w(0x3d, 1, 7);
        assert_eq!(r.cfg_r(0x3d, 1), 1);
        r.cfg_w(0x11, 2, 0);
        assert_eq!(r.cfg_r(0x10, 4), 0xfe00_0000);
    }

    #[test]
    fn config_msi_enable_bit_is_writable() {
        let mut r = rig();
        r.cfg_w(MSI_CTRL, 2, 1);
        assert_eq!(r.cfg_r(MSI_CTRL, 2), 0x0081);
        assert!(r.dev.config().msi_enabled());
        r.cfg_w(MSI_CTRL, 1, 0);
        assert!(!r.dev.config().msi_enabled());
    }

    #[test]
    fn config_out_of_range_is_einval() {
        let mut r = rig();
        let mut b = [0u8; 4];
        assert_eq!(
            r.dev.region_read(&r.ctx, CFG, 254, &mut b),
            Err(Errno::INVAL)
        );
        assert_eq!(r.dev.region_write(&r.ctx, CFG, 256, &b), Err(Errno::INVAL));
        assert_eq!(r.dev.region_read(&r.ctx, 1, 0, &mut b), Err(Errno::INVAL));
        assert_eq!(r.dev.region_write(&r.ctx, 8, 0, &b), Err(Errno::INVAL));
    }

    #[test]
    fn reset_restores_power_on() {
        let mut r = rig();
        let pristine = EduDevice::new();
        r.cfg_w(4, 2, 0x0406);
        r.cfg_w(0x10, 4, 0xfea0_0000);
        r.cfg_w(0x3c, 1, 11);
        r.enable_msi();
        r.w32(REG_LIVENESS, 5);
        r.w32(REG_FACTORIAL, 6);
        r.w32(REG_STATUS, STATUS_IRQ_FACT);
        r.w32(REG_IRQ_RAISE, 0x40);
        rustix::io::pwrite(&r.ram, &[0xaa; 32], 0).unwrap();
        r.dma(RAM_IOVA, EDU_DMA_BUF_ADDR, 32, DMA_CMD_START | DMA_CMD_IRQ);
        assert_ne!(r.dev.registers(), EduRegisters::default());
        assert_eq!(r.dev.dma_buffer()[0], 0xaa);

        r.dev.reset(&r.ctx).unwrap();
        assert_eq!(r.dev.registers(), EduRegisters::default());
        assert!(r.dev.dma_buffer().iter().all(|&b| b == 0));
        assert_eq!(r.r32(REG_LIVENESS), 0);
        assert_eq!(r.r32(REG_IRQ_STATUS), 0);
        let mut now = [0u8; 256];
        let mut then = [0u8; 256];
        r.dev.region_read(&r.ctx, CFG, 0, &mut now).unwrap();
        pristine.config().read(0, &mut then).unwrap();
        assert_eq!(now, then);
        assert_eq!(r.cfg_r(4, 2), 0);
        assert_eq!(r.cfg_r(0x10, 4), 0);
        assert!(!r.dev.config().msi_enabled());
        // Counters survive a reset.
        assert_eq!(r.dev.stats().dma_transfers, 1);
    }

    #[test]
    fn disconnect_keeps_state_and_stats_handle_follows() {
        let mut r = rig();
        let handle = r.dev.stats_handle();
        r.w32(REG_LIVENESS, 1);
        r.dev.client_disconnected(&r.ctx);
        assert_eq!(r.r32(REG_LIVENESS), !1);
        assert_eq!(handle.snapshot(), r.dev.stats());
        assert_eq!(handle.snapshot().mmio_writes, 1);
    }

    #[test]
    fn info_regions_and_irqs() {
        let dev = EduDevice::default();
        let info = dev.info();
        assert_eq!(info.flags, VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI);
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        let bar0 = dev.region_info(0).unwrap();
        assert_eq!(bar0.size, 0x10_0000);
        assert_eq!(
            bar0.flags,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        );
        assert!(bar0.mmap.is_none());
        let cfg = dev.region_info(7).unwrap();
        assert_eq!((cfg.size, cfg.flags), (256, 3));
        for i in [1, 2, 3, 4, 5, 6, 8] {
            let ri = dev.region_info(i).unwrap();
            assert_eq!((ri.size, ri.flags), (0, 0), "region {i}");
        }
        assert!(dev.region_info(9).is_none());
        assert_eq!(dev.irq_info(0), Some(IrqInfo { flags: 7, count: 1 }));
        assert_eq!(dev.irq_info(1), Some(IrqInfo { flags: 9, count: 1 }));
        assert_eq!(dev.irq_info(2).map(|x| x.count), Some(0), "no MSI-X");
        // ERR and REQ have one vector each: QEMU warns that error recovery cannot be enabled
        // when ERR has none.
        assert_eq!(dev.irq_info(3), Some(IrqInfo { flags: 1, count: 1 }));
        assert_eq!(dev.irq_info(4), Some(IrqInfo { flags: 1, count: 1 }));
        assert!(dev.irq_info(5).is_none());
    }
}
