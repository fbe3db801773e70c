//! PCI configuration space: a type-0 header in 256 bytes (conventional PCI) or 4096 bytes (PCI
//! Express), with per-byte masks that give every bit its guest-visible behaviour.
//!
//! Every byte has a current value, a power-on value, a writable mask (RW bits) and a
//! write-1-to-clear mask (RW1C bits); every other bit is read-only. A guest access of any length
//! at any offset inside the space goes byte by byte:
//!
//! ```text
//! new = (old & !rw) | (value & rw)      // RW bits take the written value
//! new = new & !(value & rw1c)           // RW1C bits written with 1 clear
//! ```
//!
//! so read-only bits (ids, class, BAR type bits and the address bits below a BAR's size,
//! capability ids and links, the status interrupt bit) keep their value whatever is written, and
//! BAR sizing falls out of the masks: writing all-ones to a BAR of size `s` reads back
//! `!(s - 1)` plus the type bits. The one write with side rules is PMCSR, whose power-state
//! field ignores writes of states the function does not support (see [`crate::caps`]).
//!
//! The device builds its space once ([`ConfigSpace::new`], [`ConfigSpace::add_bar`],
//! [`ConfigSpace::set_rom`], the capability builders in [`crate::caps`], [`ConfigSpace::define_u8`]
//! and friends for device-specific registers); [`ConfigSpace::reset`] restores the power-on
//! bytes. Device-side updates that bypass the masks (status bits, MSI pending bits) use
//! [`ConfigSpace::set_u16`] and friends.
//!
//! The command register's MEMORY and IO enable bits are only reported
//! ([`ConfigSpace::memory_enabled`], [`ConfigSpace::io_enabled`]): like QEMU's and libvfio-user's
//! servers, emudev does not refuse region accesses while decoding is off, because the client
//! (the VMM) already gates guest accesses on them. Bus mastering gates DMA, which only the device
//! performs, so devices check [`ConfigSpace::bus_master`] before they touch client memory.

use thiserror::Error;

use crate::bar::{AddBarError, BarKind, BarSpec};
use crate::caps::{MsiCapability, MsixCapability, PcieCapability, PmCapability};
use crate::regs::*;

/// Conventional (256-byte) or PCI Express (4096-byte) configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// 256 bytes; standard capabilities only.
    Conventional,
    /// 4096 bytes; extended capabilities from 0x100.
    Express,
}

impl ConfigKind {
    /// Size of the space in bytes.
    pub fn size(self) -> usize {
        match self {
            ConfigKind::Conventional => PCI_CONFIG_SPACE_SIZE,
            ConfigKind::Express => PCIE_CONFIG_SPACE_SIZE,
        }
    }
}

/// The legacy interrupt pin a function uses (the read-only interrupt pin register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterruptPin {
    /// No INTx (register value 0).
    #[default]
    None,
    /// INTA# (1).
    IntA,
    /// INTB# (2).
    IntB,
    /// INTC# (3).
    IntC,
    /// INTD# (4).
    IntD,
}

impl InterruptPin {
    /// The interrupt pin register value (0-4).
    pub fn register_value(self) -> u8 {
        match self {
            InterruptPin::None => 0,
            InterruptPin::IntA => 1,
            InterruptPin::IntB => 2,
            InterruptPin::IntC => 3,
            InterruptPin::IntD => 4,
        }
    }
}

/// The identity a type-0 header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
    /// Revision id.
    pub revision: u8,
    /// 24-bit class code: base class, sub-class, programming interface (high to low byte).
    pub class_code: u32,
}

/// Why a guest access to config space was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConfigAccessError {
    /// The access does not fit inside the space.
    #[error("config space access of {len} bytes at {offset:#x} is outside the {size} bytes")]
    OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Size of the space.
        size: usize,
    },
}

/// Why a capability could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddCapabilityError {
    /// The offset is inside the header, not dword-aligned, or the capability runs past the end
    /// of its area (0x100 for standard capabilities, the space for extended ones); or it is the
    /// first extended capability and not at 0x100.
    #[error("capability of {len} bytes cannot be placed at {offset:#x}")]
    BadPlacement {
        /// Requested offset.
        offset: u16,
        /// Capability length.
        len: usize,
    },
    /// Automatic placement found no free dword-aligned room.
    #[error("no room left for a capability of {len} bytes")]
    NoRoom {
        /// Capability length.
        len: usize,
    },
    /// The capability overlaps one added before.
    #[error("capability at {offset:#x} overlaps the capability at {existing:#x}")]
    Overlap {
        /// Requested offset.
        offset: u16,
        /// Offset of the capability it overlaps.
        existing: u16,
    },
    /// Extended capabilities and the PCI Express capability need a 4096-byte space.
    #[error("this capability needs PCI Express (4096-byte) config space")]
    NeedsExpress,
    /// A capability of this kind is already present.
    #[error("a {0} capability is already present")]
    Duplicate(&'static str),
    /// The capability's parameters are invalid.
    #[error("bad {cap} capability: {reason}")]
    BadParameters {
        /// Which capability.
        cap: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One standard capability found by walking the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Offset of its header.
    pub offset: u16,
    /// Capability id.
    pub id: u8,
    /// Next pointer as read (0 ends the list).
    pub next: u16,
}

/// One extended capability found by walking the list from 0x100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCapability {
    /// Offset of its header.
    pub offset: u16,
    /// Extended capability id.
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Next offset as read (0 ends the list).
    pub next: u16,
}

/// Where a capability occupies config space (offset, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapRecord {
    pub(crate) offset: u16,
    pub(crate) len: u16,
}

impl CapRecord {
    fn end(self) -> u32 {
        u32::from(self.offset) + u32::from(self.len)
    }

    fn overlaps(self, offset: u16, len: u16) -> bool {
        let (s, e) = (u32::from(offset), u32::from(offset) + u32::from(len));
        s < self.end() && u32::from(self.offset) < e
    }
}

/// PCI configuration space with per-byte RW and RW1C masks.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    kind: ConfigKind,
    bytes: Box<[u8]>,
    power_on: Box<[u8]>,
    wmask: Box<[u8]>,
    w1cmask: Box<[u8]>,
    /// BARs by their first slot; the upper slot of a 64-bit BAR stays `None`.
    bars: [Option<BarSpec>; PCI_NUM_BARS],
    rom_size: Option<u32>,
    /// Standard capabilities in list order.
    caps: Vec<CapRecord>,
    /// Extended capabilities in list order.
    ext_caps: Vec<CapRecord>,
    pub(crate) pm: Option<PmCapability>,
    pub(crate) msi: Option<MsiCapability>,
    pub(crate) msix: Option<MsixCapability>,
    pub(crate) pcie: Option<PcieCapability>,
}

impl ConfigSpace {
    /// A type-0 header of `kind` with `ids` and the interrupt pin; no BARs, no capabilities.
    ///
    /// Guest-writable: command bits IO, MEMORY, MASTER, PARITY, SERR and INTX_DISABLE, the
    /// cache line size and the interrupt line. Status bits 8 and 11-15 are RW1C. Everything else
    /// is read-only (latency timer, BIST, CardBus CIS, Min_Gnt and Max_Lat read 0).
    pub fn new(kind: ConfigKind, ids: &PciIds, pin: InterruptPin) -> Self {
        let size = kind.size();
        let zeros = || vec![0u8; size].into_boxed_slice();
        let mut cs = ConfigSpace {
            kind,
            bytes: zeros(),
            power_on: zeros(),
            wmask: zeros(),
            w1cmask: zeros(),
            bars: [None; PCI_NUM_BARS],
            rom_size: None,
            caps: Vec::new(),
            ext_caps: Vec::new(),
            pm: None,
            msi: None,
            msix: None,
            pcie: None,
        };
        cs.define_u16(PCI_VENDOR_ID, ids.vendor_id, 0);
        cs.define_u16(PCI_DEVICE_ID, ids.device_id, 0);
        cs.define_u16(PCI_COMMAND, 0, PCI_COMMAND_WRITABLE);
        cs.define_u16_rw1c(PCI_STATUS, 0, 0, PCI_STATUS_RW1C);
        cs.define_u8(PCI_REVISION_ID, ids.revision, 0);
        let [prog, sub, base, _] = ids.class_code.to_le_bytes();
        cs.define_u8(PCI_CLASS_PROG, prog, 0);
        cs.define_u8(PCI_CLASS_SUB, sub, 0);
        cs.define_u8(PCI_CLASS_BASE, base, 0);
        cs.define_u8(PCI_CACHE_LINE_SIZE, 0, 0xff);
        cs.define_u8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_NORMAL, 0);
        cs.define_u16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id, 0);
        cs.define_u16(PCI_SUBSYSTEM_ID, ids.subsystem_id, 0);
        cs.define_u8(PCI_INTERRUPT_LINE, 0, 0xff);
        cs.define_u8(PCI_INTERRUPT_PIN, pin.register_value(), 0);
        cs
    }

    /// Conventional or PCI Express.
    pub fn kind(&self) -> ConfigKind {
        self.kind
    }

    /// Size in bytes (256 or 4096).
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    // ----- definition (device side) ------------------------------------------------------------

    /// Defines bytes from `offset`: power-on (and current) values and RW / RW1C masks. A bit set
    /// in both masks is RW1C. Bytes past the end of the space are dropped (logged).
    pub fn define_bytes(&mut self, offset: u16, value: &[u8], wmask: &[u8], w1cmask: &[u8]) {
        for (k, &v) in value.iter().enumerate() {
            let i = usize::from(offset) + k;
            let w1c = w1cmask.get(k).copied().unwrap_or(0);
            let w = wmask.get(k).copied().unwrap_or(0) & !w1c;
            let (Some(b), Some(p), Some(wm), Some(cm)) = (
                self.bytes.get_mut(i),
                self.power_on.get_mut(i),
                self.wmask.get_mut(i),
                self.w1cmask.get_mut(i),
            ) else {
                log::warn!("pci: config define at {i:#x} is past the end of the space");
                return;
            };
            *b = v;
            *p = v;
            *wm = w;
            *cm = w1c;
        }
    }

    /// Defines a byte: its power-on (and current) value and its guest-writable bits.
    pub fn define_u8(&mut self, offset: u16, value: u8, wmask: u8) {
        self.define_bytes(offset, &[value], &[wmask], &[0]);
    }

    /// Defines a little-endian u16 with its writable bits.
    pub fn define_u16(&mut self, offset: u16, value: u16, wmask: u16) {
        self.define_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes(), &[0; 2]);
    }

    /// Defines a little-endian u32 with its writable bits.
    pub fn define_u32(&mut self, offset: u16, value: u32, wmask: u32) {
        self.define_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes(), &[0; 4]);
    }

    /// Defines a little-endian u16 with writable and write-1-to-clear bits.
    pub fn define_u16_rw1c(&mut self, offset: u16, value: u16, wmask: u16, w1cmask: u16) {
        self.define_bytes(
            offset,
            &value.to_le_bytes(),
            &wmask.to_le_bytes(),
            &w1cmask.to_le_bytes(),
        );
    }

    /// Defines a little-endian u32 with writable and write-1-to-clear bits.
    pub fn define_u32_rw1c(&mut self, offset: u16, value: u32, wmask: u32, w1cmask: u32) {
        self.define_bytes(
            offset,
            &value.to_le_bytes(),
            &wmask.to_le_bytes(),
            &w1cmask.to_le_bytes(),
        );
    }

    /// The guest-writable (RW) bits of a byte.
    pub fn writable_mask(&self, offset: u16) -> u8 {
        self.wmask.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// The write-1-to-clear bits of a byte.
    pub fn rw1c_mask(&self, offset: u16) -> u8 {
        self.w1cmask.get(usize::from(offset)).copied().unwrap_or(0)
    }

    // ----- device-side access ------------------------------------------------------------------

    fn load(&self, offset: u16, out: &mut [u8]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self
                .bytes
                .get(usize::from(offset) + k)
                .copied()
                .unwrap_or(0);
        }
    }

    fn store(&mut self, offset: u16, value: &[u8]) {
        for (k, &v) in value.iter().enumerate() {
            if let Some(b) = self.bytes.get_mut(usize::from(offset) + k) {
                *b = v;
            }
        }
    }

    /// Current value of a byte (0 past the end).
    pub fn u8_at(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// Current little-endian u16 (bytes past the end read as 0).
    pub fn u16_at(&self, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        self.load(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Current little-endian u32 (bytes past the end read as 0).
    pub fn u32_at(&self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        self.load(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets a byte from the device side (no masks; the power-on value is kept).
    pub fn set_u8(&mut self, offset: u16, value: u8) {
        self.store(offset, &[value]);
    }

    /// Sets a little-endian u16 from the device side.
    pub fn set_u16(&mut self, offset: u16, value: u16) {
        self.store(offset, &value.to_le_bytes());
    }

    /// Sets a little-endian u32 from the device side.
    pub fn set_u32(&mut self, offset: u16, value: u32) {
        self.store(offset, &value.to_le_bytes());
    }

    fn power_on_u32(&self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        for (k, o) in b.iter_mut().enumerate() {
            *o = self
                .power_on
                .get(usize::from(offset) + k)
                .copied()
                .unwrap_or(0);
        }
        u32::from_le_bytes(b)
    }

    // ----- guest access ------------------------------------------------------------------------

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, ConfigAccessError> {
        let err = ConfigAccessError::OutOfRange {
            offset,
            len,
            size: self.size(),
        };
        let start = usize::try_from(offset).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.size() {
            return Err(err);
        }
        Ok(start..end)
    }

    /// Guest read of `data.len()` bytes at `offset` (any length, any alignment).
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigAccessError> {
        let range = self.range(offset, data.len())?;
        if let Some(src) = self.bytes.get(range) {
            data.copy_from_slice(src);
        }
        Ok(())
    }

    /// Guest write of `data` at `offset`: RW bits take the written value, RW1C bits written
    /// with 1 clear, every other bit keeps its value.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigAccessError> {
        let range = self.range(offset, data.len())?;
        let pm_before = self.pm_fixup_snapshot(&range);
        let (Some(bytes), Some(wmask), Some(w1c)) = (
            self.bytes.get_mut(range.clone()),
            self.wmask.get(range.clone()),
            self.w1cmask.get(range),
        ) else {
            return Ok(());
        };
        for (((b, &w), &c), &v) in bytes.iter_mut().zip(wmask).zip(w1c).zip(data) {
            *b = ((*b & !w) | (v & w)) & !(v & c);
        }
        if let Some(snapshot) = pm_before {
            self.pm_fixup_apply(snapshot);
        }
        Ok(())
    }

    /// Restores every byte to its power-on value (command, BARs, capability state, status).
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.power_on);
    }

    // ----- header ------------------------------------------------------------------------------

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(PCI_COMMAND)
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.u16_at(PCI_STATUS)
    }

    /// Whether the guest enabled memory decoding (command bit 1). Reported only: see the
    /// module documentation.
    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }

    /// Whether the guest enabled I/O decoding (command bit 0). Reported only.
    pub fn io_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_IO != 0
    }

    /// Whether the guest enabled bus mastering (command bit 2): a device must not DMA without.
    pub fn bus_master(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// Whether the guest disabled INTx (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// The interrupt pin register as a pin.
    pub fn interrupt_pin(&self) -> InterruptPin {
        match self.u8_at(PCI_INTERRUPT_PIN) {
            1 => InterruptPin::IntA,
            2 => InterruptPin::IntB,
            3 => InterruptPin::IntC,
            4 => InterruptPin::IntD,
            _ => InterruptPin::None,
        }
    }

    /// The interrupt line the guest wrote.
    pub fn interrupt_line(&self) -> u8 {
        self.u8_at(PCI_INTERRUPT_LINE)
    }

    /// The status register's interrupt bit (the device's INTx level).
    pub fn interrupt_status(&self) -> bool {
        self.status() & PCI_STATUS_INTERRUPT != 0
    }

    /// Sets or clears the status register's interrupt bit (device side; RO to the guest).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let status = self.status();
        let status = if asserted {
            status | PCI_STATUS_INTERRUPT
        } else {
            status & !PCI_STATUS_INTERRUPT
        };
        self.set_u16(PCI_STATUS, status);
    }

    /// Sets status error bits from the device side (e.g. `PCI_STATUS_SIG_TARGET_ABORT`); the
    /// guest clears them by writing 1.
    pub fn set_status_bits(&mut self, bits: u16) {
        let status = self.status() | bits;
        self.set_u16(PCI_STATUS, status);
    }

    // ----- BARs --------------------------------------------------------------------------------

    fn bar_offset(index: u8) -> u16 {
        PCI_BAR0 + 4 * u16::from(index)
    }

    /// Which BAR (by first slot) covers slot `slot`, if any.
    fn bar_covering(&self, slot: u8) -> Option<BarSpec> {
        self.bars
            .iter()
            .flatten()
            .find(|b| slot >= b.index && slot < b.index + b.slots())
            .copied()
    }

    /// Adds a BAR. Its address bits below the size and its type bits are read-only, so sizing
    /// (writing all-ones) reads back the size mask; a 64-bit BAR takes slots `index` and
    /// `index + 1` and sizes across both halves.
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), AddBarError> {
        spec.validate()?;
        for slot in spec.index..spec.index + spec.slots() {
            if self.bar_covering(slot).is_some() {
                return Err(AddBarError::SlotTaken { index: slot });
            }
        }
        let offset = Self::bar_offset(spec.index);
        let mask = !(spec.size - 1);
        match spec.kind {
            BarKind::Mem32 | BarKind::Io => {
                self.define_u32(offset, spec.type_bits(), mask as u32 & !spec.flag_mask());
            }
            BarKind::Mem64 => {
                self.define_u32(
                    offset,
                    spec.type_bits(),
                    mask as u32 & !PCI_BAR_MEM_FLAG_MASK,
                );
                self.define_u32(offset + 4, 0, (mask >> 32) as u32);
            }
        }
        if let Some(slot) = self.bars.get_mut(usize::from(spec.index)) {
            *slot = Some(spec);
        }
        Ok(())
    }

    /// The BAR starting at slot `index` (`None` for an absent BAR or the upper half of a 64-bit
    /// one).
    pub fn bar(&self, index: u8) -> Option<BarSpec> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// Every BAR, in slot order.
    pub fn bars(&self) -> impl Iterator<Item = BarSpec> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// Size of the BAR starting at slot `index`.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        self.bar(index).map(|b| b.size)
    }

    /// The address the guest programmed into the BAR starting at `index` (type bits stripped,
    /// both halves of a 64-bit BAR combined).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let spec = self.bar(index)?;
        let offset = Self::bar_offset(index);
        let low = u64::from(self.u32_at(offset) & !spec.flag_mask());
        let high = match spec.kind {
            BarKind::Mem64 => u64::from(self.u32_at(offset + 4)),
            BarKind::Mem32 | BarKind::Io => 0,
        };
        Some((high << 32) | low)
    }

    /// Adds an expansion ROM BAR of `size` bytes (a power of two, 2 KiB to 16 MiB): address
    /// bits above the size and the enable bit are writable. Without one the ROM BAR reads 0.
    pub fn set_rom(&mut self, size: u32) -> Result<(), AddBarError> {
        if !size.is_power_of_two() || !(0x800..=0x100_0000).contains(&size) {
            return Err(AddBarError::BadRomSize(size));
        }
        if self.rom_size.is_some() {
            return Err(AddBarError::RomAlreadyDefined);
        }
        let wmask = (!(size - 1) & PCI_ROM_ADDRESS_MASK) | PCI_ROM_ADDRESS_ENABLE;
        self.define_u32(PCI_ROM_ADDRESS, 0, wmask);
        self.rom_size = Some(size);
        Ok(())
    }

    /// Size of the expansion ROM, if there is one.
    pub fn rom_size(&self) -> Option<u32> {
        self.rom_size
    }

    /// The ROM address the guest programmed and whether it enabled decoding.
    pub fn rom_address(&self) -> Option<(u32, bool)> {
        self.rom_size?;
        let v = self.u32_at(PCI_ROM_ADDRESS);
        Some((v & PCI_ROM_ADDRESS_MASK, v & PCI_ROM_ADDRESS_ENABLE != 0))
    }

    // ----- capability lists --------------------------------------------------------------------

    fn overlapping(list: &[CapRecord], offset: u16, len: u16) -> Option<u16> {
        list.iter()
            .find(|c| c.overlaps(offset, len))
            .map(|c| c.offset)
    }

    fn first_fit(list: &[CapRecord], start: u16, end: u32, len: u16) -> Option<u16> {
        let mut offset = start;
        while u32::from(offset) + u32::from(len) <= end {
            match list.iter().find(|c| c.overlaps(offset, len)) {
                None => return Some(offset),
                // Jump past the blocking capability, dword-aligned.
                Some(c) => {
                    let next = (c.end() + 3) & !3;
                    offset = u16::try_from(next).ok()?;
                }
            }
        }
        None
    }

    /// Adds a standard capability header (`id`, next = 0) of `len` bytes and links it at the end
    /// of the list. `at = None` places it at the first free dword-aligned offset from 0x40;
    /// `Some(offset)` must be dword-aligned, after the header and end by 0x100. The body is
    /// read-only zero until defined with the `define_*` methods. Returns the offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        len: u16,
        at: Option<u16>,
    ) -> Result<u16, AddCapabilityError> {
        let end = PCI_CONFIG_SPACE_SIZE as u32;
        let offset = match at {
            Some(offset) => {
                let bad = AddCapabilityError::BadPlacement {
                    offset,
                    len: usize::from(len),
                };
                if offset < PCI_HEADER_END
                    || !offset.is_multiple_of(4)
                    || len < 2
                    || u32::from(offset) + u32::from(len) > end
                {
                    return Err(bad);
                }
                if let Some(existing) = Self::overlapping(&self.caps, offset, len) {
                    return Err(AddCapabilityError::Overlap { offset, existing });
                }
                offset
            }
            None => {
                if len < 2 {
                    return Err(AddCapabilityError::BadPlacement {
                        offset: PCI_HEADER_END,
                        len: usize::from(len),
                    });
                }
                Self::first_fit(&self.caps, PCI_HEADER_END, end, len).ok_or(
                    AddCapabilityError::NoRoom {
                        len: usize::from(len),
                    },
                )?
            }
        };
        // Capability offsets are below 0x100, so they fit the 8-bit pointers.
        let link = offset as u8;
        match self.caps.last() {
            Some(prev) => self.define_u8(prev.offset + PCI_CAP_NEXT_OFF, link, 0),
            None => {
                self.define_u8(PCI_CAPABILITY_LIST, link, 0);
                let status = self.power_on_u32(PCI_STATUS) as u16 | PCI_STATUS_CAP_LIST;
                self.define_u16_rw1c(PCI_STATUS, status, 0, PCI_STATUS_RW1C);
            }
        }
        self.define_u8(offset, id, 0);
        self.define_u8(offset + PCI_CAP_NEXT_OFF, 0, 0);
        self.caps.push(CapRecord { offset, len });
        Ok(offset)
    }

    /// Adds an extended capability header (`id`, `version`, next = 0) of `len` bytes and links
    /// it at the end of the extended list. The first one must be at 0x100 (`None` puts it
    /// there); later ones go at the first free dword-aligned offset above it, or at `at`.
    /// Without any, the dword at 0x100 reads 0, which ends the list. Returns the offset.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        len: u16,
        at: Option<u16>,
    ) -> Result<u16, AddCapabilityError> {
        if self.kind != ConfigKind::Express {
            return Err(AddCapabilityError::NeedsExpress);
        }
        if version > 0xf {
            return Err(AddCapabilityError::BadParameters {
                cap: "extended",
                reason: "version is wider than 4 bits",
            });
        }
        let end = PCIE_CONFIG_SPACE_SIZE as u32;
        let first = self.ext_caps.is_empty();
        let offset = match at {
            Some(offset) => {
                let bad = AddCapabilityError::BadPlacement {
                    offset,
                    len: usize::from(len),
                };
                if offset < PCIE_EXT_CAP_START
                    || (first && offset != PCIE_EXT_CAP_START)
                    || !offset.is_multiple_of(4)
                    || len < 4
                    || u32::from(offset) + u32::from(len) > end
                {
                    return Err(bad);
                }
                if let Some(existing) = Self::overlapping(&self.ext_caps, offset, len) {
                    return Err(AddCapabilityError::Overlap { offset, existing });
                }
                offset
            }
            None => {
                let fits = len >= 4 && u32::from(PCIE_EXT_CAP_START) + u32::from(len) <= end;
                if !fits {
                    return Err(AddCapabilityError::BadPlacement {
                        offset: PCIE_EXT_CAP_START,
                        len: usize::from(len),
                    });
                }
                Self::first_fit(&self.ext_caps, PCIE_EXT_CAP_START, end, len).ok_or(
                    AddCapabilityError::NoRoom {
                        len: usize::from(len),
                    },
                )?
            }
        };
        if let Some(prev) = self.ext_caps.last().copied() {
            let header = self.power_on_u32(prev.offset) & 0x000f_ffff;
            let header = header | (u32::from(offset) << PCI_EXT_CAP_NEXT_SHIFT);
            self.define_u32(prev.offset, header, 0);
        }
        let header = u32::from(id) | (u32::from(version) << PCI_EXT_CAP_VER_SHIFT);
        self.define_u32(offset, header, 0);
        self.ext_caps.push(CapRecord { offset, len });
        Ok(offset)
    }

    /// Walks the standard capability list from the pointer at 0x34, as a guest would (the
    /// bytes, not the builder's records). Stops at a 0 pointer, a pointer into the header or a
    /// loop (at most 48 entries, as many as fit).
    pub fn capabilities(&self) -> CapabilityIter<'_> {
        let first = if self.status() & PCI_STATUS_CAP_LIST != 0 {
            u16::from(self.u8_at(PCI_CAPABILITY_LIST) & !3)
        } else {
            0
        };
        CapabilityIter {
            cs: self,
            next: first,
            left: 48,
        }
    }

    /// Walks the extended capability list from 0x100 (empty for conventional space or when the
    /// header at 0x100 is 0). At most 960 entries.
    pub fn ext_capabilities(&self) -> ExtCapabilityIter<'_> {
        let first = if self.kind == ConfigKind::Express {
            PCIE_EXT_CAP_START
        } else {
            0
        };
        ExtCapabilityIter {
            cs: self,
            next: first,
            left: 960,
        }
    }

    /// Offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities().find(|c| c.id == id).map(|c| c.offset)
    }

    /// Offset of the first extended capability with `id`.
    pub fn find_ext_capability(&self, id: u16) -> Option<u16> {
        self.ext_capabilities()
            .find(|c| c.id == id)
            .map(|c| c.offset)
    }
}

/// Iterator over the standard capability list ([`ConfigSpace::capabilities`]).
#[derive(Debug)]
pub struct CapabilityIter<'a> {
    cs: &'a ConfigSpace,
    next: u16,
    left: u32,
}

impl Iterator for CapabilityIter<'_> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        let offset = self.next;
        if offset < PCI_HEADER_END || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let next = u16::from(self.cs.u8_at(offset + PCI_CAP_NEXT_OFF) & !3);
        self.next = next;
        Some(Capability {
            offset,
            id: self.cs.u8_at(offset),
            next,
        })
    }
}

/// Iterator over the extended capability list ([`ConfigSpace::ext_capabilities`]).
#[derive(Debug)]
pub struct ExtCapabilityIter<'a> {
    cs: &'a ConfigSpace,
    next: u16,
    left: u32,
}

impl Iterator for ExtCapabilityIter<'_> {
    type Item = ExtCapability;

    fn next(&mut self) -> Option<ExtCapability> {
        let offset = self.next;
        if offset < PCIE_EXT_CAP_START || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let header = self.cs.u32_at(offset);
        if header == 0 {
            return None;
        }
        let next = ((header >> PCI_EXT_CAP_NEXT_SHIFT) as u16) & !3;
        self.next = next;
        Some(ExtCapability {
            offset,
            id: header as u16,
            version: ((header >> PCI_EXT_CAP_VER_SHIFT) & 0xf) as u8,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const IDS: PciIds = PciIds {
        vendor_id: 0x1234,
        device_id: 0x5678,
        subsystem_vendor_id: 0x9abc,
        subsystem_id: 0xdef0,
        revision: 0x42,
        class_code: 0x0c_03_30,
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
    fn header_ids_class_and_sizes() {
        let cs = space();
        assert_eq!(cs.size(), 256);
        assert_eq!(read32(&cs, 0), 0x5678_1234);
        assert_eq!(read32(&cs, 8), 0x0c03_3042);
        assert_eq!(read32(&cs, 0x2c), 0xdef0_9abc);
        assert_eq!(cs.u8_at(PCI_HEADER_TYPE), 0);
        assert_eq!(cs.interrupt_pin(), InterruptPin::IntA);
        assert_eq!(cs.u8_at(PCI_INTERRUPT_PIN), 1);
        // No capabilities: the list bit is clear and the pointer is 0.
        assert_eq!(cs.status(), 0);
        assert_eq!(cs.u8_at(PCI_CAPABILITY_LIST), 0);
        assert_eq!(cs.capabilities().count(), 0);
        let ex = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::None);
        assert_eq!(ex.size(), 4096);
        assert_eq!(ex.interrupt_pin(), InterruptPin::None);
        assert_eq!(ex.ext_capabilities().count(), 0);
        assert_eq!(ex.u32_at(0x100), 0, "empty extended list is terminated");
    }

    #[test]
    fn read_only_bits_survive_all_ones_writes() {
        for kind in [ConfigKind::Conventional, ConfigKind::Express] {
            let mut cs = ConfigSpace::new(kind, &IDS, InterruptPin::IntB);
            cs.add_bar(BarSpec::mem32(0, 0x1000)).unwrap();
            let before = cs.clone();
            let size = cs.size();
            cs.write(0, &vec![0xff; size]).unwrap();
            for i in 0..size {
                let expect = (before.bytes[i] | before.wmask[i]) & !before.w1cmask[i];
                assert_eq!(cs.bytes[i], expect, "byte {i:#x}");
            }
            assert_eq!(read32(&cs, 0), 0x5678_1234);
            assert_eq!(read32(&cs, 8), 0x0c03_3042);
            assert_eq!(cs.command(), PCI_COMMAND_WRITABLE);
            assert_eq!(cs.command(), 0x0547);
            assert_eq!(cs.status(), 0, "RW1C bits cleared, nothing set");
            assert_eq!(cs.u8_at(PCI_CACHE_LINE_SIZE), 0xff);
            assert_eq!(cs.u8_at(PCI_LATENCY_TIMER), 0);
            assert_eq!(cs.u8_at(PCI_BIST), 0);
            assert_eq!(cs.u8_at(PCI_INTERRUPT_LINE), 0xff);
            assert_eq!(cs.u8_at(PCI_INTERRUPT_PIN), 2);
            assert_eq!(read32(&cs, 0x10), 0xffff_f000);
            assert_eq!(read32(&cs, 0x14), 0);
            assert_eq!(read32(&cs, 0x28), 0, "CardBus CIS");
            assert_eq!(read32(&cs, 0x30), 0, "no ROM");
            // Zeros clear what all-ones set, and only that.
            cs.write(0, &vec![0; size]).unwrap();
            assert_eq!(cs.bytes, before.bytes);
        }
    }

    #[test]
    fn command_queries() {
        let mut cs = space();
        assert!(!cs.memory_enabled() && !cs.io_enabled() && !cs.bus_master());
        assert!(!cs.intx_disabled());
        cs.write(4, &[0x01]).unwrap();
        assert!(cs.io_enabled() && !cs.memory_enabled());
        cs.write(4, &[0x06]).unwrap();
        assert!(cs.memory_enabled() && cs.bus_master() && !cs.io_enabled());
        cs.write(5, &[0x04]).unwrap();
        assert!(cs.intx_disabled());
        // Bits 3 (special cycles), 5 (VGA snoop) and 9 (fast back-to-back) are read-only.
        cs.write(4, &0x0228u16.to_le_bytes()).unwrap();
        assert_eq!(cs.command(), 0);
    }

    #[test]
    fn status_error_bits_are_rw1c() {
        let mut cs = space();
        let errors = PCI_STATUS_PARITY
            | PCI_STATUS_SIG_TARGET_ABORT
            | PCI_STATUS_REC_TARGET_ABORT
            | PCI_STATUS_REC_MASTER_ABORT
            | PCI_STATUS_SIG_SYSTEM_ERROR
            | PCI_STATUS_DETECTED_PARITY;
        assert_eq!(errors, 0xf900);
        // A guest write cannot set them.
        cs.write(6, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(cs.status(), 0);
        cs.set_status_bits(errors);
        cs.set_interrupt_status(true);
        assert_eq!(cs.status(), errors | PCI_STATUS_INTERRUPT);
        // Writing 0 clears nothing.
        cs.write(6, &[0, 0]).unwrap();
        assert_eq!(cs.status(), errors | PCI_STATUS_INTERRUPT);
        // Writing 1 to one bit clears that bit only; the interrupt bit is RO.
        cs.write(6, &0x0800u16.to_le_bytes()).unwrap();
        assert_eq!(cs.status(), (errors & !0x0800) | PCI_STATUS_INTERRUPT);
        // A byte write to the high half clears the bits it names.
        cs.write(7, &[0xc0]).unwrap();
        assert_eq!(cs.status(), 0x3100 | PCI_STATUS_INTERRUPT);
        cs.write(6, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(cs.status(), PCI_STATUS_INTERRUPT);
        cs.set_interrupt_status(false);
        assert!(!cs.interrupt_status());
        assert_eq!(cs.rw1c_mask(7), 0xf9);
        assert_eq!(cs.rw1c_mask(6), 0);
        assert_eq!(cs.writable_mask(7), 0);
    }

    #[test]
    fn status_interrupt_bit_is_device_side_only() {
        let mut cs = space();
        cs.set_interrupt_status(true);
        assert!(cs.interrupt_status());
        cs.write(6, &[0xff, 0]).unwrap();
        assert!(cs.interrupt_status());
        cs.write(6, &[0, 0]).unwrap();
        assert!(cs.interrupt_status());
    }

    #[test]
    fn interrupt_line_rw_pin_ro() {
        let mut cs = space();
        cs.write(0x3c, &[0x0b, 0x07]).unwrap();
        assert_eq!(cs.interrupt_line(), 0x0b);
        assert_eq!(cs.u8_at(PCI_INTERRUPT_PIN), 1);
        assert_eq!(read32(&cs, 0x3c), 0x0000_010b);
    }

    #[test]
    fn accesses_of_every_size_at_unaligned_offsets() {
        let mut cs = space();
        let mut reference = [0u8; 256];
        cs.read(0, &mut reference).unwrap();
        for len in 1..=8usize {
            for off in 0..=(256 - len) {
                let mut b = vec![0u8; len];
                cs.read(off as u64, &mut b).unwrap();
                assert_eq!(
                    &b[..],
                    &reference[off..off + len],
                    "{len} bytes at {off:#x}"
                );
            }
        }
        let mut three = [0u8; 3];
        cs.read(1, &mut three).unwrap();
        assert_eq!(three, [0x12, 0x78, 0x56]);
        // A 3-byte write straddling the line/pin registers changes only the line.
        cs.write(0x3b, &[0xaa, 0x0b, 0x02]).unwrap();
        assert_eq!(cs.u8_at(0x3b), 0);
        assert_eq!(cs.u8_at(0x3c), 0x0b);
        assert_eq!(cs.u8_at(0x3d), 1);
        // A 2-byte write at an odd offset spanning command and status.
        cs.write(5, &[0x04, 0xff]).unwrap();
        assert!(cs.intx_disabled());
        assert_eq!(cs.u8_at(6), 0);
        // An 8-byte write over the cache line size, latency, header type and BIST.
        cs.write(0x0a, &[0xff; 8]).unwrap();
        assert_eq!(cs.u8_at(PCI_CACHE_LINE_SIZE), 0xff);
        assert_eq!(read32(&cs, 8), 0x0c03_3042);
        assert_eq!(cs.u8_at(PCI_HEADER_TYPE), 0);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut cs = space();
        let mut b = [0u8; 4];
        assert!(cs.read(254, &mut b).is_err());
        assert!(cs.read(256, &mut b[..1]).is_err());
        assert!(cs.read(u64::MAX, &mut b).is_err());
        assert!(cs.write(253, &b).is_err());
        assert!(cs.write(u64::MAX - 1, &b).is_err());
        assert_eq!(
            cs.write(256, &b[..1]),
            Err(ConfigAccessError::OutOfRange {
                offset: 256,
                len: 1,
                size: 256
            })
        );
        cs.read(252, &mut b).unwrap();
        cs.read(0, &mut []).unwrap();
        let mut ex = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::None);
        ex.read(4092, &mut b).unwrap();
        assert!(ex.read(4093, &mut b).is_err());
        assert!(ex.write(4096, &b[..1]).is_err());
    }

    #[test]
    fn reset_restores_power_on() {
        let mut cs = space();
        cs.add_bar(BarSpec::mem64(2, 0x4000)).unwrap();
        let before = cs.clone();
        cs.write(0, &[0xff; 256]).unwrap();
        cs.set_interrupt_status(true);
        cs.set_status_bits(PCI_STATUS_REC_MASTER_ABORT);
        assert_ne!(cs.bytes, before.bytes);
        cs.reset();
        assert_eq!(cs.bytes, before.bytes);
    }

    #[test]
    fn define_past_the_end_is_dropped() {
        let mut cs = space();
        cs.define_u32(0xfe, 0xaabb_ccdd, 0xffff_ffff);
        assert_eq!(cs.u16_at(0xfe), 0xccdd);
        assert_eq!(cs.u32_at(0xfe), 0xccdd);
        cs.define_u8(0x1000, 1, 1);
        assert_eq!(cs.u8_at(0x1000), 0);
        // A bit in both masks is RW1C, not RW.
        cs.define_u16_rw1c(0x80, 0x0003, 0x0003, 0x0001);
        cs.write(0x80, &[0x03, 0]).unwrap();
        assert_eq!(
            cs.u16_at(0x80),
            0x0002,
            "bit 0 cleared by its 1, bit 1 written 1"
        );
        cs.write(0x80, &[0, 0]).unwrap();
        assert_eq!(cs.u16_at(0x80), 0);
    }

    #[test]
    fn device_side_setters_ignore_masks() {
        let mut cs = space();
        cs.set_u16(PCI_VENDOR_ID, 0xbeef);
        assert_eq!(cs.u16_at(0), 0xbeef);
        cs.set_u32(0x40, 0x1122_3344);
        cs.set_u8(0x44, 0x55);
        assert_eq!(read32(&cs, 0x40), 0x1122_3344);
        cs.set_u32(0xfe, u32::MAX);
        assert_eq!(cs.u16_at(0xfe), 0xffff);
        cs.reset();
        assert_eq!(cs.u16_at(0), 0x1234);
        assert_eq!(cs.u8_at(0x44), 0);
    }

    #[test]
    fn capability_placement_and_links() {
        let mut cs = space();
        let a = cs.add_capability(PCI_CAP_ID_VNDR, 6, None).unwrap();
        let b = cs.add_capability(PCI_CAP_ID_VNDR, 8, Some(0x80)).unwrap();
        let c = cs.add_capability(PCI_CAP_ID_VNDR, 0x38, None).unwrap();
        let d = cs.add_capability(PCI_CAP_ID_VNDR, 0x10, None).unwrap();
        assert_eq!((a, b, c, d), (0x40, 0x80, 0x48, 0x88));
        assert_ne!(cs.status() & PCI_STATUS_CAP_LIST, 0);
        assert_eq!(cs.u8_at(PCI_CAPABILITY_LIST), 0x40);
        let walk: Vec<(u16, u16)> = cs.capabilities().map(|c| (c.offset, c.next)).collect();
        assert_eq!(walk, [(0x40, 0x80), (0x80, 0x48), (0x48, 0x88), (0x88, 0)]);
        // Links and ids are read-only to the guest.
        cs.write(0x34, &[0x50]).unwrap();
        cs.write(0x40, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.capabilities().count(), 4);
        // And survive a reset.
        cs.reset();
        assert_eq!(cs.capabilities().count(), 4);
        assert_ne!(cs.status() & PCI_STATUS_CAP_LIST, 0);
    }

    #[test]
    fn bad_capability_placements_are_refused() {
        let mut cs = space();
        cs.add_capability(PCI_CAP_ID_VNDR, 8, Some(0x50)).unwrap();
        assert_eq!(
            cs.add_capability(PCI_CAP_ID_VNDR, 4, Some(0x54)),
            Err(AddCapabilityError::Overlap {
                offset: 0x54,
                existing: 0x50
            })
        );
        assert!(matches!(
            cs.add_capability(PCI_CAP_ID_VNDR, 8, Some(0x4c)),
            Err(AddCapabilityError::Overlap { .. })
        ));
        for (at, len) in [(0x3c, 4), (0x82, 4), (0xfc, 8), (0x60, 1), (0x100, 4)] {
            assert!(
                matches!(
                    cs.add_capability(PCI_CAP_ID_VNDR, len, Some(at)),
                    Err(AddCapabilityError::BadPlacement { .. })
                ),
                "{at:#x}+{len}"
            );
        }
        assert!(matches!(
            cs.add_capability(PCI_CAP_ID_VNDR, 0xc1, None),
            Err(AddCapabilityError::NoRoom { .. })
        ));
        assert!(cs.add_capability(PCI_CAP_ID_VNDR, 1, None).is_err());
        // Nothing failed changed the list.
        assert_eq!(cs.capabilities().count(), 1);
        // Fill the space in 0x10 chunks: 0x40, 0x58.. (0x50 is taken) until none fits.
        let mut n = 1;
        while cs.add_capability(PCI_CAP_ID_VNDR, 0x10, None).is_ok() {
            n += 1;
        }
        assert_eq!(cs.capabilities().count(), n);
        assert_eq!(n, 12);
    }

    #[test]
    fn extended_capabilities_chain_from_0x100() {
        let mut cs = space();
        assert_eq!(
            cs.add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, None),
            Err(AddCapabilityError::NeedsExpress)
        );
        let mut ex = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::None);
        assert!(matches!(
            ex.add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, Some(0x200)),
            Err(AddCapabilityError::BadPlacement { .. })
        ));
        assert!(ex.add_ext_capability(1, 0x10, 8, None).is_err());
        let a = ex
            .add_ext_capability(PCI_EXT_CAP_ID_DSN, 1, 12, None)
            .unwrap();
        let b = ex
            .add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 16, Some(0x200))
            .unwrap();
        let c = ex
            .add_ext_capability(PCI_EXT_CAP_ID_VNDR, 2, 8, None)
            .unwrap();
        assert_eq!((a, b, c), (0x100, 0x200, 0x10c));
        assert!(matches!(
            ex.add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, Some(0x204)),
            Err(AddCapabilityError::Overlap {
                existing: 0x200,
                ..
            })
        ));
        assert!(ex
            .add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, Some(0xffc))
            .is_err());
        assert!(ex
            .add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, Some(0x102))
            .is_err());
        let walk: Vec<ExtCapability> = ex.ext_capabilities().collect();
        assert_eq!(walk.len(), 3);
        assert_eq!(
            walk[0],
            ExtCapability {
                offset: 0x100,
                id: PCI_EXT_CAP_ID_DSN,
                version: 1,
                next: 0x200
            }
        );
        assert_eq!((walk[1].offset, walk[1].next), (0x200, 0x10c));
        assert_eq!(
            (walk[2].offset, walk[2].version, walk[2].next),
            (0x10c, 2, 0)
        );
        assert_eq!(ex.u32_at(0x100), 0x2001_0003);
        assert_eq!(ex.find_ext_capability(PCI_EXT_CAP_ID_VNDR), Some(0x200));
        assert_eq!(ex.find_ext_capability(0x42), None);
        // Headers are read-only.
        ex.write(0x100, &[0xff; 4]).unwrap();
        assert_eq!(ex.u32_at(0x100), 0x2001_0003);
    }

    #[test]
    fn walks_stop_on_loops_and_bad_pointers() {
        let mut cs = space();
        cs.add_capability(PCI_CAP_ID_VNDR, 4, Some(0x40)).unwrap();
        cs.add_capability(PCI_CAP_ID_VNDR, 4, Some(0x44)).unwrap();
        // A device that corrupts its own list into a loop: the walk still ends.
        cs.set_u8(0x45, 0x40);
        assert_eq!(cs.capabilities().count(), 48);
        // A pointer into the header ends the walk.
        cs.set_u8(0x45, 0x3c);
        assert_eq!(cs.capabilities().count(), 2);
        let mut ex = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::None);
        ex.add_ext_capability(PCI_EXT_CAP_ID_VNDR, 1, 8, None)
            .unwrap();
        ex.set_u32(0x100, 0x1001_000b);
        assert_eq!(ex.ext_capabilities().count(), 960);
        ex.set_u32(0x100, 0x0801_000b);
        assert_eq!(ex.ext_capabilities().count(), 1);
    }

    #[test]
    fn rom_bar() {
        let mut cs = space();
        assert_eq!(cs.rom_size(), None);
        assert_eq!(cs.rom_address(), None);
        cs.write(0x30, &[0xff; 4]).unwrap();
        assert_eq!(read32(&cs, 0x30), 0, "absent ROM reads 0");
        for bad in [0, 0x400, 0x801, 0x200_0000] {
            assert_eq!(cs.set_rom(bad), Err(AddBarError::BadRomSize(bad)));
        }
        cs.set_rom(0x1_0000).unwrap();
        assert_eq!(cs.set_rom(0x1_0000), Err(AddBarError::RomAlreadyDefined));
        write32(&mut cs, 0x30, u32::MAX);
        assert_eq!(read32(&cs, 0x30), 0xffff_0001);
        write32(&mut cs, 0x30, 0xfeb4_5679);
        assert_eq!(cs.rom_address(), Some((0xfeb4_0000, true)));
        assert_eq!(cs.rom_size(), Some(0x1_0000));
    }
}
