//! Conventional PCI configuration space: 256 bytes with a type-0 header, 32-bit memory BARs
//! with sizing, a capability list and an MSI capability.
//!
//! Every byte has a current value, a power-on value and a guest-writable mask. A guest access
//! (any length at any offset inside the 256 bytes) goes byte by byte: a write changes only the
//! writable bits of each byte, so read-only bits (ids, class, BAR type bits, the low address bits
//! that BAR sizing relies on, capability ids and links) keep their value whatever is written.
//! BAR sizing falls out of the mask: writing all-ones to a BAR of size `s` reads back `!(s - 1)`
//! plus the RO type bits.
//!
//! The device defines its registers when it builds the space ([`ConfigSpace::new_type0`],
//! [`ConfigSpace::add_mem_bar32`], [`ConfigSpace::add_msi`], [`ConfigSpace::define_u8`] and
//! friends); [`ConfigSpace::reset`] restores the power-on bytes. Nothing here knows a particular
//! device, so the module can move to a shared PCI crate as it is.

use thiserror::Error;

/// Size of conventional PCI configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Offset of the vendor id (u16).
pub const PCI_VENDOR_ID: u8 = 0x00;
/// Offset of the device id (u16).
pub const PCI_DEVICE_ID: u8 = 0x02;
/// Offset of the command register (u16).
pub const PCI_COMMAND: u8 = 0x04;
/// Offset of the status register (u16).
pub const PCI_STATUS: u8 = 0x06;
/// Offset of the revision id (u8).
pub const PCI_REVISION_ID: u8 = 0x08;
/// Offset of the programming interface byte, the low byte of the 24-bit class code.
pub const PCI_CLASS_PROG: u8 = 0x09;
/// Offset of the sub-class byte.
pub const PCI_CLASS_SUB: u8 = 0x0a;
/// Offset of the base-class byte.
pub const PCI_CLASS_BASE: u8 = 0x0b;
/// Offset of the cache line size (u8, RW).
pub const PCI_CACHE_LINE_SIZE: u8 = 0x0c;
/// Offset of the latency timer (u8).
pub const PCI_LATENCY_TIMER: u8 = 0x0d;
/// Offset of the header type (u8).
pub const PCI_HEADER_TYPE: u8 = 0x0e;
/// Offset of BAR0; BARn is at `PCI_BAR0 + 4 * n`.
pub const PCI_BAR0: u8 = 0x10;
/// Number of BARs in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;
/// Offset of the CardBus CIS pointer (u32).
pub const PCI_CARDBUS_CIS: u8 = 0x28;
/// Offset of the subsystem vendor id (u16).
pub const PCI_SUBSYSTEM_VENDOR_ID: u8 = 0x2c;
/// Offset of the subsystem id (u16).
pub const PCI_SUBSYSTEM_ID: u8 = 0x2e;
/// Offset of the expansion ROM base address (u32).
pub const PCI_ROM_ADDRESS: u8 = 0x30;
/// Offset of the capability list pointer (u8).
pub const PCI_CAPABILITY_LIST: u8 = 0x34;
/// Offset of the interrupt line (u8, RW).
pub const PCI_INTERRUPT_LINE: u8 = 0x3c;
/// Offset of the interrupt pin (u8, RO; 1 = INTA).
pub const PCI_INTERRUPT_PIN: u8 = 0x3d;
/// First offset after the standard header, where capabilities may start.
pub const PCI_HEADER_END: u8 = 0x40;

/// Command: I/O space enable.
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;

/// Status: INTx asserted.
pub const PCI_STATUS_INTERRUPT: u16 = 0x0008;
/// Status: the capability list pointer is valid.
pub const PCI_STATUS_CAP_LIST: u16 = 0x0010;

/// Interrupt pin value for INTA.
pub const PCI_INTERRUPT_PIN_INTA: u8 = 1;

/// BAR bit 3: prefetchable memory.
pub const PCI_BAR_MEM_PREFETCH: u32 = 0x8;
/// Low BAR bits that hold the type, never the address (memory BARs).
pub const PCI_BAR_MEM_FLAG_MASK: u32 = 0xf;

/// Capability id of MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// MSI message control: MSI enable.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 0x0001;
/// MSI message control: multiple message capable (log2 of vectors), bits 1-3.
pub const PCI_MSI_FLAGS_QMASK: u16 = 0x000e;
/// MSI message control: multiple message enable (log2 of vectors), bits 4-6.
pub const PCI_MSI_FLAGS_QSIZE: u16 = 0x0070;
/// MSI message control: 64-bit address capable.
pub const PCI_MSI_FLAGS_64BIT: u16 = 0x0080;

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
    /// The access does not fit inside the 256 bytes.
    #[error("config space access of {len} bytes at {offset:#x} is outside the {CONFIG_SPACE_SIZE} bytes")]
    OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
}

/// Why a BAR could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddBarError {
    /// The BAR index is not 0-5.
    #[error("BAR index {0} is not 0-5")]
    BadIndex(usize),
    /// The size is not a power of two of at least 16 bytes.
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BadSize(u32),
    /// The BAR was already defined.
    #[error("BAR{0} is already defined")]
    AlreadyDefined(usize),
}

/// Why a capability could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddCapabilityError {
    /// The offset is inside the header, not dword-aligned, or the capability runs past 256.
    #[error(
        "capability of {len} bytes at {offset:#x} does not fit after the header, dword-aligned"
    )]
    BadPlacement {
        /// Requested offset.
        offset: u8,
        /// Capability length.
        len: usize,
    },
    /// The capability overlaps one added before.
    #[error("capability at {offset:#x} overlaps the capability at {existing:#x}")]
    Overlap {
        /// Requested offset.
        offset: u8,
        /// Offset of the capability it overlaps.
        existing: u8,
    },
    /// Too many MSI vectors (more than 32) or a second MSI capability.
    #[error("bad MSI capability: {0}")]
    BadMsi(&'static str),
}

/// Where the MSI capability lives and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability header.
    pub offset: u8,
    /// Whether the message address is 64 bits.
    pub is_64bit: bool,
    /// log2 of the vectors the function can use (multiple message capable).
    pub vectors_log2: u8,
}

impl MsiCapability {
    /// Length in bytes (no per-vector masking).
    pub fn len(&self) -> usize {
        if self.is_64bit {
            0x0e
        } else {
            0x0a
        }
    }

    /// Always false: the capability has at least its header. (Clippy wants it next to `len`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    fn control(&self) -> u8 {
        self.offset.wrapping_add(2)
    }

    fn data_offset(&self) -> u8 {
        self.offset
            .wrapping_add(if self.is_64bit { 0x0c } else { 0x08 })
    }
}

/// What the guest programmed into the MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiState {
    /// MSI enable bit.
    pub enabled: bool,
    /// Vectors enabled (from the multiple message enable field, at most what is capable).
    pub vectors: u32,
    /// Message address (the high half is 0 for a 32-bit capability).
    pub address: u64,
    /// Message data.
    pub data: u16,
}

/// 256 bytes of conventional PCI config space with per-byte writable masks.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    power_on: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Size of each BAR, 0 when absent.
    bar_sizes: [u32; PCI_NUM_BARS],
    /// (offset, length) of each capability, in list order.
    caps: Vec<(u8, usize)>,
    msi: Option<MsiCapability>,
}

impl ConfigSpace {
    /// A type-0 header with `ids`, the given interrupt pin (0 = none, 1 = INTA ...), writable
    /// command bits IO/MEMORY/MASTER/INTX_DISABLE, writable cache line size and interrupt line;
    /// everything else read-only and zero, no BARs, no capabilities.
    pub fn new_type0(ids: &PciIds, interrupt_pin: u8) -> Self {
        let mut cs = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
            power_on: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            bar_sizes: [0; PCI_NUM_BARS],
            caps: Vec::new(),
            msi: None,
        };
        cs.define_u16(PCI_VENDOR_ID, ids.vendor_id, 0);
        cs.define_u16(PCI_DEVICE_ID, ids.device_id, 0);
        cs.define_u16(
            PCI_COMMAND,
            0,
            PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE,
        );
        cs.define_u8(PCI_REVISION_ID, ids.revision, 0);
        let [prog, sub, base, _] = ids.class_code.to_le_bytes();
        cs.define_u8(PCI_CLASS_PROG, prog, 0);
        cs.define_u8(PCI_CLASS_SUB, sub, 0);
        cs.define_u8(PCI_CLASS_BASE, base, 0);
        cs.define_u8(PCI_CACHE_LINE_SIZE, 0, 0xff);
        cs.define_u8(PCI_HEADER_TYPE, 0, 0);
        cs.define_u16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id, 0);
        cs.define_u16(PCI_SUBSYSTEM_ID, ids.subsystem_id, 0);
        cs.define_u8(PCI_INTERRUPT_LINE, 0, 0xff);
        cs.define_u8(PCI_INTERRUPT_PIN, interrupt_pin, 0);
        cs
    }

    /// Defines a byte: its power-on (and current) value and its guest-writable bits.
    pub fn define_u8(&mut self, offset: u8, value: u8, wmask: u8) {
        let i = usize::from(offset);
        // `offset` is a u8, so it is always inside the 256 bytes.
        if let (Some(b), Some(p), Some(w)) = (
            self.bytes.get_mut(i),
            self.power_on.get_mut(i),
            self.wmask.get_mut(i),
        ) {
            *b = value;
            *p = value;
            *w = wmask;
        }
    }

    /// Defines a little-endian u16 (bytes past 255 are dropped).
    pub fn define_u16(&mut self, offset: u8, value: u16, wmask: u16) {
        self.define_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes());
    }

    /// Defines a little-endian u32 (bytes past 255 are dropped).
    pub fn define_u32(&mut self, offset: u8, value: u32, wmask: u32) {
        self.define_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes());
    }

    fn define_bytes(&mut self, offset: u8, value: &[u8], wmask: &[u8]) {
        for (k, (&v, &w)) in value.iter().zip(wmask).enumerate() {
            if let Some(o) = usize::from(offset)
                .checked_add(k)
                .and_then(|o| u8::try_from(o).ok())
            {
                self.define_u8(o, v, w);
            }
        }
    }

    /// Current value of a byte (device side, no masks).
    pub fn u8_at(&self, offset: u8) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// Current little-endian u16 (bytes past 255 read as 0).
    pub fn u16_at(&self, offset: u8) -> u16 {
        let mut b = [0u8; 2];
        self.load(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Current little-endian u32 (bytes past 255 read as 0).
    pub fn u32_at(&self, offset: u8) -> u32 {
        let mut b = [0u8; 4];
        self.load(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn load(&self, offset: u8, out: &mut [u8]) {
        let start = usize::from(offset);
        for (k, o) in out.iter_mut().enumerate() {
            *o = start
                .checked_add(k)
                .and_then(|i| self.bytes.get(i))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Sets the current value of a little-endian u16 from the device side (ignores the writable
    /// mask, keeps the power-on value).
    pub fn set_u16(&mut self, offset: u8, value: u16) {
        let start = usize::from(offset);
        for (k, v) in value.to_le_bytes().into_iter().enumerate() {
            if let Some(b) = start.checked_add(k).and_then(|i| self.bytes.get_mut(i)) {
                *b = v;
            }
        }
    }

    /// Adds a 32-bit memory BAR of `size` bytes (a power of two, at least 16). The address bits
    /// below `size` and the type bits are read-only, so sizing reads back `!(size - 1)`.
    pub fn add_mem_bar32(
        &mut self,
        index: usize,
        size: u32,
        prefetchable: bool,
    ) -> Result<(), AddBarError> {
        let Some(slot) = self.bar_sizes.get_mut(index) else {
            return Err(AddBarError::BadIndex(index));
        };
        if !size.is_power_of_two() || size < 16 {
            return Err(AddBarError::BadSize(size));
        }
        if *slot != 0 {
            return Err(AddBarError::AlreadyDefined(index));
        }
        *slot = size;
        let flags = if prefetchable {
            PCI_BAR_MEM_PREFETCH
        } else {
            0
        };
        // index < 6, so the offset is at most 0x24.
        let offset = PCI_BAR0 + 4 * (index as u8);
        self.define_u32(offset, flags, !(size - 1));
        Ok(())
    }

    /// Size of BAR `index`, `None` when the BAR is absent.
    pub fn bar_size(&self, index: usize) -> Option<u32> {
        self.bar_sizes.get(index).copied().filter(|&s| s != 0)
    }

    /// The address the guest programmed into BAR `index` (type bits stripped).
    pub fn bar_address(&self, index: usize) -> Option<u32> {
        self.bar_size(index)?;
        let offset = PCI_BAR0 + 4 * u8::try_from(index).ok()?;
        Some(self.u32_at(offset) & !PCI_BAR_MEM_FLAG_MASK)
    }

    /// Adds a capability header (`id`, next = 0) of `len` bytes at `offset` and links it at the
    /// end of the list. The body is read-only zero until defined with `define_*`.
    pub fn add_capability(
        &mut self,
        offset: u8,
        id: u8,
        len: usize,
    ) -> Result<(), AddCapabilityError> {
        let start = usize::from(offset);
        let bad = AddCapabilityError::BadPlacement { offset, len };
        if offset < PCI_HEADER_END || !offset.is_multiple_of(4) || len < 2 {
            return Err(bad);
        }
        let end = start.checked_add(len).ok_or(bad)?;
        if end > CONFIG_SPACE_SIZE {
            return Err(bad);
        }
        for &(o, l) in &self.caps {
            let (os, oe) = (usize::from(o), usize::from(o) + l);
            if start < oe && os < end {
                return Err(AddCapabilityError::Overlap {
                    offset,
                    existing: o,
                });
            }
        }
        match self.caps.last() {
            Some(&(prev, _)) => self.define_u8(prev.wrapping_add(1), offset, 0),
            None => {
                self.define_u8(PCI_CAPABILITY_LIST, offset, 0);
                let status = self.power_on_u16(PCI_STATUS) | PCI_STATUS_CAP_LIST;
                self.define_u16(PCI_STATUS, status, 0);
            }
        }
        self.define_u8(offset, id, 0);
        self.define_u8(offset.wrapping_add(1), 0, 0);
        self.caps.push((offset, len));
        Ok(())
    }

    fn power_on_u16(&self, offset: u8) -> u16 {
        let i = usize::from(offset);
        let lo = self.power_on.get(i).copied().unwrap_or(0);
        let hi = self.power_on.get(i + 1).copied().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }

    /// Adds an MSI capability without per-vector masking: `2^vectors_log2` vectors (at most
    /// 32), 32- or 64-bit message address. Writable: the enable bit, the multiple message
    /// enable field, the address (dword-aligned) and the data.
    pub fn add_msi(
        &mut self,
        offset: u8,
        vectors_log2: u8,
        is_64bit: bool,
    ) -> Result<MsiCapability, AddCapabilityError> {
        if vectors_log2 > 5 {
            return Err(AddCapabilityError::BadMsi("more than 32 vectors"));
        }
        if self.msi.is_some() {
            return Err(AddCapabilityError::BadMsi("MSI capability already present"));
        }
        let cap = MsiCapability {
            offset,
            is_64bit,
            vectors_log2,
        };
        self.add_capability(offset, PCI_CAP_ID_MSI, cap.len())?;
        let mut control = u16::from(vectors_log2) << 1;
        if is_64bit {
            control |= PCI_MSI_FLAGS_64BIT;
        }
        self.define_u16(
            cap.control(),
            control,
            PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE,
        );
        self.define_u32(offset.wrapping_add(4), 0, 0xffff_fffc);
        if is_64bit {
            self.define_u32(offset.wrapping_add(8), 0, 0xffff_ffff);
        }
        self.define_u16(cap.data_offset(), 0, 0xffff);
        self.msi = Some(cap);
        Ok(cap)
    }

    /// The MSI capability, if one was added.
    pub fn msi_capability(&self) -> Option<MsiCapability> {
        self.msi
    }

    /// What the guest programmed into the MSI capability, if there is one.
    pub fn msi_state(&self) -> Option<MsiState> {
        let cap = self.msi?;
        let control = self.u16_at(cap.control());
        let enabled_log2 = ((control & PCI_MSI_FLAGS_QSIZE) >> 4).min(u16::from(cap.vectors_log2));
        let lo = u64::from(self.u32_at(cap.offset.wrapping_add(4)));
        let hi = if cap.is_64bit {
            u64::from(self.u32_at(cap.offset.wrapping_add(8)))
        } else {
            0
        };
        Some(MsiState {
            enabled: control & PCI_MSI_FLAGS_ENABLE != 0,
            vectors: 1 << enabled_log2,
            address: (hi << 32) | lo,
            data: self.u16_at(cap.data_offset()),
        })
    }

    /// Whether MSI is present and enabled.
    pub fn msi_enabled(&self) -> bool {
        self.msi_state().is_some_and(|s| s.enabled)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(PCI_COMMAND)
    }

    /// Whether the guest disabled INTx (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// Whether the guest enabled bus mastering (command bit 2).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// Whether the guest enabled memory decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }

    /// Reflects the INTx line in the status register's interrupt bit.
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let mut status = self.u16_at(PCI_STATUS);
        if asserted {
            status |= PCI_STATUS_INTERRUPT;
        } else {
            status &= !PCI_STATUS_INTERRUPT;
        }
        self.set_u16(PCI_STATUS, status);
    }

    /// Guest read of `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigAccessError> {
        let src = self
            .range(offset, data.len())
            .and_then(|r| self.bytes.get(r));
        let src = src.ok_or(ConfigAccessError::OutOfRange {
            offset,
            len: data.len(),
        })?;
        data.copy_from_slice(src);
        Ok(())
    }

    /// Guest write of `data` at `offset`: only the writable bits of each byte change.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigAccessError> {
        let range = self.range(offset, data.len());
        let err = ConfigAccessError::OutOfRange {
            offset,
            len: data.len(),
        };
        let range = range.ok_or(err)?;
        let (Some(bytes), Some(wmask)) = (self.bytes.get_mut(range.clone()), self.wmask.get(range))
        else {
            return Err(err);
        };
        for ((b, &w), &v) in bytes.iter_mut().zip(wmask).zip(data) {
            *b = (*b & !w) | (v & w);
        }
        Ok(())
    }

    fn range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= CONFIG_SPACE_SIZE).then_some(start..end)
    }

    /// Restores every byte to its power-on value (command, BARs, MSI enable, interrupt line).
    pub fn reset(&mut self) {
        self.bytes = self.power_on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: PciIds = PciIds {
        vendor_id: 0x1234,
        device_id: 0x5678,
        subsystem_vendor_id: 0x9abc,
        subsystem_id: 0xdef0,
        revision: 0x42,
        class_code: 0x0c_03_30,
    };

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new_type0(&IDS, PCI_INTERRUPT_PIN_INTA);
        cs.add_mem_bar32(0, 0x10_0000, false).unwrap();
        cs.add_mem_bar32(2, 0x1000, true).unwrap();
        cs.add_msi(0x50, 2, true).unwrap();
        cs
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
    fn header_ids_and_class() {
        let cs = space();
        assert_eq!(read32(&cs, 0), 0x5678_1234);
        assert_eq!(read32(&cs, 8), 0x0c03_3042);
        assert_eq!(read32(&cs, 0x2c), 0xdef0_9abc);
        assert_eq!(cs.u8_at(PCI_INTERRUPT_PIN), 1);
        assert_eq!(cs.u8_at(PCI_CAPABILITY_LIST), 0x50);
        assert_ne!(cs.u16_at(PCI_STATUS) & PCI_STATUS_CAP_LIST, 0);
    }

    #[test]
    fn all_ones_everywhere_only_touches_writable_bits() {
        let mut cs = space();
        let before = cs.clone();
        cs.write(0, &[0xff; CONFIG_SPACE_SIZE]).unwrap();
        for i in 0..CONFIG_SPACE_SIZE {
            let expect = before.bytes[i] | before.wmask[i];
            assert_eq!(cs.bytes[i], expect, "byte {i:#x}");
        }
        assert_eq!(read32(&cs, 0), 0x5678_1234);
        assert_eq!(cs.command(), 0x0407);
        assert_eq!(read32(&cs, 0x10), 0xfff0_0000);
        assert_eq!(read32(&cs, 0x14), 0);
        assert_eq!(read32(&cs, 0x18), 0xffff_f008);
        assert_eq!(read32(&cs, 0x30), 0);
        // Zeros clear what all-ones set, and only that.
        cs.write(0, &[0; CONFIG_SPACE_SIZE]).unwrap();
        assert_eq!(cs.bytes, before.bytes);
    }

    #[test]
    fn bar_sizing_and_address() {
        let mut cs = space();
        write32(&mut cs, 0x10, 0xffff_ffff);
        assert_eq!(read32(&cs, 0x10), 0xfff0_0000);
        write32(&mut cs, 0x10, 0xfe12_3456);
        assert_eq!(read32(&cs, 0x10), 0xfe10_0000);
        assert_eq!(cs.bar_address(0), Some(0xfe10_0000));
        assert_eq!(cs.bar_address(1), None);
        assert_eq!(cs.bar_size(2), Some(0x1000));
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut cs = ConfigSpace::new_type0(&IDS, 0);
        assert_eq!(
            cs.add_mem_bar32(6, 0x1000, false),
            Err(AddBarError::BadIndex(6))
        );
        assert_eq!(
            cs.add_mem_bar32(0, 0x1001, false),
            Err(AddBarError::BadSize(0x1001))
        );
        assert_eq!(cs.add_mem_bar32(0, 8, false), Err(AddBarError::BadSize(8)));
        cs.add_mem_bar32(0, 0x1000, false).unwrap();
        assert_eq!(
            cs.add_mem_bar32(0, 0x1000, false),
            Err(AddBarError::AlreadyDefined(0))
        );
    }

    #[test]
    fn capabilities_link_and_refuse_overlap() {
        let mut cs = space();
        cs.add_capability(0x70, 0x09, 8).unwrap();
        assert_eq!(cs.u8_at(0x51), 0x70);
        assert_eq!(cs.u8_at(0x70), 0x09);
        assert_eq!(cs.u8_at(0x71), 0);
        assert!(matches!(
            cs.add_capability(0x54, 0x09, 4),
            Err(AddCapabilityError::Overlap { existing: 0x50, .. })
        ));
        assert!(cs.add_capability(0x3c, 0x09, 4).is_err());
        assert!(cs.add_capability(0x82, 0x09, 4).is_err());
        assert!(cs.add_capability(0xfc, 0x09, 8).is_err());
        assert!(cs.add_msi(0x90, 0, false).is_err());
        assert!(ConfigSpace::new_type0(&IDS, 0)
            .add_msi(0x40, 6, false)
            .is_err());
    }

    #[test]
    fn msi_fields() {
        let mut cs = space();
        assert!(!cs.msi_enabled());
        // Control: enable + MME=7 requested; only MME bits and enable stick, MMC/64-bit RO.
        cs.write(0x52, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(cs.u16_at(0x52), 0x0080 | 0x0004 | 0x0071);
        let st = cs.msi_state().unwrap();
        assert!(st.enabled);
        assert_eq!(st.vectors, 4, "clamped to capable");
        write32(&mut cs, 0x54, 0xfee0_1003);
        write32(&mut cs, 0x58, 0x1);
        cs.write(0x5c, &[0x34, 0x12]).unwrap();
        let st = cs.msi_state().unwrap();
        assert_eq!(st.address, 0x1_fee0_1000);
        assert_eq!(st.data, 0x1234);
        cs.write(0x52, &[0, 0]).unwrap();
        assert!(!cs.msi_enabled());
    }

    #[test]
    fn odd_sizes_and_offsets() {
        let mut cs = space();
        let mut three = [0u8; 3];
        cs.read(1, &mut three).unwrap();
        assert_eq!(three, [0x12, 0x78, 0x56]);
        cs.write(0x3b, &[0xaa, 0x0b, 0x02]).unwrap();
        assert_eq!(cs.u8_at(0x3c), 0x0b);
        assert_eq!(cs.u8_at(0x3d), 1);
        let mut all = [0u8; 256];
        cs.read(0, &mut all).unwrap();
        assert_eq!(&all[..4], &[0x34, 0x12, 0x78, 0x56]);
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
        cs.read(252, &mut b).unwrap();
    }

    #[test]
    fn reset_restores_power_on() {
        let mut cs = space();
        let before = cs.clone();
        cs.write(0, &[0xff; CONFIG_SPACE_SIZE]).unwrap();
        cs.set_interrupt_status(true);
        assert_ne!(cs.bytes, before.bytes);
        cs.reset();
        assert_eq!(cs.bytes, before.bytes);
    }

    #[test]
    fn interrupt_status_bit_is_device_side_only() {
        let mut cs = space();
        cs.set_interrupt_status(true);
        assert_ne!(cs.u16_at(PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
        cs.write(6, &[0, 0]).unwrap();
        assert_ne!(cs.u16_at(PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
        cs.set_interrupt_status(false);
        assert_eq!(cs.u16_at(PCI_STATUS), PCI_STATUS_CAP_LIST);
    }

    #[test]
    fn define_past_the_end_is_dropped() {
        let mut cs = ConfigSpace::new_type0(&IDS, 0);
        cs.define_u32(0xfe, 0xaabb_ccdd, 0xffff_ffff);
        assert_eq!(cs.u16_at(0xfe), 0xccdd);
        assert_eq!(cs.u32_at(0xfe), 0xccdd);
    }
}
