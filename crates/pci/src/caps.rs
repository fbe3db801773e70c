//! Capability builders and their state: power management, MSI, MSI-X and PCI Express.
//!
//! Each `add_*` method on [`ConfigSpace`] places the capability (at the next free dword-aligned
//! offset from 0x40, or where asked), links it into the list and defines every register's
//! power-on value and RW / RW1C bits:
//!
//! - **PM** (id 0x01, PM 1.2): PMCSR's power-state field takes D0 and D3hot; writes of D1 or D2
//!   (not supported) are discarded as the PM spec requires. No_Soft_Reset is set (leaving D3hot
//!   keeps state). PME_En / PME_Status are RW / RW1C only if the function declares PME support.
//! - **MSI** (id 0x05): 1-32 vectors, 32- or 64-bit address, optional per-vector masking with
//!   mask (RW) and pending (device-set) registers. Enable and multiple-message-enable are RW.
//! - **MSI-X** (id 0x11): table size, table and PBA BIR/offset are RO; function mask and enable
//!   are RW. The table and PBA live in a BAR, served by [`crate::MsixTable`].
//! - **PCI Express** (id 0x10): a version-2 endpoint capability whose link reports x1 at
//!   2.5 GT/s, trained (link up); device control's error-reporting enables, relaxed ordering,
//!   max payload / read request size and no-snoop are RW, device status' error bits RW1C.
//!   Needs a 4096-byte space. Function-level reset is not offered.

use std::ops::Range;

use crate::config::{AddCapabilityError, ConfigKind, ConfigSpace};
use crate::regs::*;

// ----- power management ------------------------------------------------------------------------

/// Parameters of a PM capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmSpec {
    /// PMCSR No_Soft_Reset: moving from D3hot to D0 keeps the function's state (default true).
    pub no_soft_reset: bool,
    /// PME support, one bit per state: D0 = bit 0 ... D3cold = bit 4 (default 0: no PME).
    pub pme_support: u8,
}

impl Default for PmSpec {
    fn default() -> Self {
        PmSpec {
            no_soft_reset: true,
            pme_support: 0,
        }
    }
}

/// Where the PM capability lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmCapability {
    /// Offset of the capability header.
    pub offset: u16,
}

impl PmCapability {
    /// Offset of PMCSR.
    pub fn control_offset(&self) -> u16 {
        self.offset + PCI_PM_CTRL_OFF
    }
}

/// A function power state (PMCSR bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// D1 (never entered: not supported).
    D1,
    /// D2 (never entered: not supported).
    D2,
    /// D3hot.
    D3Hot,
}

/// PMCSR power-state bits before a guest write that touches them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PmSnapshot {
    ctrl: u16,
    state: u16,
}

// ----- MSI -------------------------------------------------------------------------------------

/// Parameters of an MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiSpec {
    /// Vectors the function can use: 1, 2, 4, 8, 16 or 32.
    pub vectors: u8,
    /// 64-bit message address (default true).
    pub address_64: bool,
    /// Per-vector masking with mask and pending registers (default false).
    pub per_vector_mask: bool,
}

impl MsiSpec {
    /// `vectors` vectors, 64-bit address, no per-vector masking.
    pub const fn new(vectors: u8) -> Self {
        MsiSpec {
            vectors,
            address_64: true,
            per_vector_mask: false,
        }
    }

    /// The same, with a 32-bit message address.
    pub const fn address_32(mut self) -> Self {
        self.address_64 = false;
        self
    }

    /// The same, with per-vector masking.
    pub const fn with_masking(mut self) -> Self {
        self.per_vector_mask = true;
        self
    }
}

/// Where the MSI capability lives and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Vectors the function can use (multiple message capable).
    pub vectors: u8,
    /// Whether the message address is 64 bits.
    pub address_64: bool,
    /// Whether per-vector masking is present.
    pub per_vector_mask: bool,
}

impl MsiCapability {
    /// Length of the capability in bytes.
    pub fn cap_len(&self) -> u16 {
        match (self.address_64, self.per_vector_mask) {
            (false, false) => 0x0a,
            (true, false) => 0x0e,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    /// Offset of message control.
    pub fn control_offset(&self) -> u16 {
        self.offset + PCI_MSI_FLAGS_OFF
    }

    /// Offset of the message data.
    pub fn data_offset(&self) -> u16 {
        self.offset
            + if self.address_64 {
                PCI_MSI_DATA_64_OFF
            } else {
                PCI_MSI_DATA_32_OFF
            }
    }

    /// Offset of the mask bits (with per-vector masking).
    pub fn mask_offset(&self) -> Option<u16> {
        self.per_vector_mask.then(|| self.data_offset() + 4)
    }

    /// Offset of the pending bits (with per-vector masking).
    pub fn pending_offset(&self) -> Option<u16> {
        self.per_vector_mask.then(|| self.data_offset() + 8)
    }

    fn vector_bits(&self) -> u32 {
        if self.vectors >= 32 {
            u32::MAX
        } else {
            (1u32 << self.vectors) - 1
        }
    }
}

/// What the guest programmed into the MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiState {
    /// MSI enable bit.
    pub enabled: bool,
    /// Vectors enabled (multiple message enable, at most what is capable).
    pub vectors: u8,
    /// Message address (the high half is 0 for a 32-bit capability).
    pub address: u64,
    /// Message data (the function replaces its low log2(vectors) bits with the vector).
    pub data: u16,
    /// Mask bits (0 without per-vector masking).
    pub mask: u32,
    /// Pending bits (0 without per-vector masking).
    pub pending: u32,
}

// ----- MSI-X -----------------------------------------------------------------------------------

/// Parameters of an MSI-X capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixSpec {
    /// Table size: 1-2048 vectors.
    pub vectors: u16,
    /// BAR (first slot) holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR (first slot) holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixSpec {
    /// `vectors` vectors, the table at `table_bar` + `table_offset`, the PBA at `pba_bar` +
    /// `pba_offset`.
    pub const fn new(
        vectors: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Self {
        MsixSpec {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        }
    }
}

/// Where the MSI-X capability, table and PBA live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Table size.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR.
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR.
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Bytes of the table (16 per vector).
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * PCI_MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA (one bit per vector, in whole qwords).
    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Offset of message control.
    pub fn control_offset(&self) -> u16 {
        self.offset + PCI_MSIX_FLAGS_OFF
    }

    /// The table's range inside its BAR.
    pub fn table_range(&self) -> Range<u64> {
        let start = u64::from(self.table_offset);
        start..start + self.table_size()
    }

    /// The PBA's range inside its BAR.
    pub fn pba_range(&self) -> Range<u64> {
        let start = u64::from(self.pba_offset);
        start..start + self.pba_size()
    }
}

/// The guest-controlled bits of MSI-X message control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsixControl {
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask: every vector masked.
    pub function_masked: bool,
}

// ----- PCI Express -----------------------------------------------------------------------------

/// The device/port type the PCI Express capability reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PcieDeviceType {
    /// PCI Express endpoint (type 0).
    #[default]
    Endpoint,
    /// Legacy PCI Express endpoint (type 1).
    LegacyEndpoint,
}

/// Parameters of a PCI Express capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieSpec {
    /// Device/port type (default endpoint).
    pub device_type: PcieDeviceType,
    /// Max payload size supported in bytes: 128 (default) to 4096, a power of two.
    pub max_payload_size: u16,
    /// 8-bit tags supported (then the enable bit is writable; default false).
    pub extended_tag: bool,
}

impl Default for PcieSpec {
    fn default() -> Self {
        PcieSpec {
            device_type: PcieDeviceType::Endpoint,
            max_payload_size: 128,
            extended_tag: false,
        }
    }
}

/// Where the PCI Express capability lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Device/port type.
    pub device_type: PcieDeviceType,
}

// ----- builders --------------------------------------------------------------------------------

fn bad(cap: &'static str, reason: &'static str) -> AddCapabilityError {
    AddCapabilityError::BadParameters { cap, reason }
}

impl ConfigSpace {
    /// Adds a PCI power management capability (8 bytes) at `at` or the next free offset.
    pub fn add_pm(
        &mut self,
        spec: PmSpec,
        at: Option<u16>,
    ) -> Result<PmCapability, AddCapabilityError> {
        if self.pm.is_some() {
            return Err(AddCapabilityError::Duplicate("PM"));
        }
        if spec.pme_support > 0x1f {
            return Err(bad("PM", "PME support has more than 5 state bits"));
        }
        let offset = self.add_capability(PCI_CAP_ID_PM, PCI_PM_CAP_LEN, at)?;
        let pmc = PCI_PM_CAP_VER_1_2 | (u16::from(spec.pme_support) << 11);
        self.define_u16(offset + PCI_PM_PMC_OFF, pmc, 0);
        let mut ctrl = 0;
        if spec.no_soft_reset {
            ctrl |= PCI_PM_CTRL_NO_SOFT_RESET;
        }
        let (mut wmask, mut w1c) = (PCI_PM_CTRL_STATE_MASK, 0);
        if spec.pme_support != 0 {
            wmask |= PCI_PM_CTRL_PME_ENABLE;
            w1c |= PCI_PM_CTRL_PME_STATUS;
        }
        self.define_u16_rw1c(offset + PCI_PM_CTRL_OFF, ctrl, wmask, w1c);
        let cap = PmCapability { offset };
        self.pm = Some(cap);
        Ok(cap)
    }

    /// The PM capability, if one was added.
    pub fn pm_capability(&self) -> Option<PmCapability> {
        self.pm
    }

    /// The power state the guest set, if there is a PM capability.
    pub fn power_state(&self) -> Option<PowerState> {
        let pm = self.pm?;
        Some(
            match self.u16_at(pm.control_offset()) & PCI_PM_CTRL_STATE_MASK {
                0 => PowerState::D0,
                1 => PowerState::D1,
                2 => PowerState::D2,
                _ => PowerState::D3Hot,
            },
        )
    }

    /// Sets PME_Status from the device side (only if the function declared PME support).
    pub fn set_pme_status(&mut self) {
        let Some(pm) = self.pm else { return };
        if self.u16_at(pm.offset + PCI_PM_PMC_OFF) & PCI_PM_CAP_PME_MASK == 0 {
            return;
        }
        let ctrl = self.u16_at(pm.control_offset()) | PCI_PM_CTRL_PME_STATUS;
        self.set_u16(pm.control_offset(), ctrl);
    }

    /// Before a guest write to `range`: PMCSR's power-state bits if the write reaches them.
    pub(crate) fn pm_fixup_snapshot(&self, range: &Range<usize>) -> Option<PmSnapshot> {
        let ctrl = self.pm?.control_offset();
        range.contains(&usize::from(ctrl)).then(|| PmSnapshot {
            ctrl,
            state: self.u16_at(ctrl) & PCI_PM_CTRL_STATE_MASK,
        })
    }

    /// After the write: a write of D1 or D2 (unsupported) leaves the old state.
    pub(crate) fn pm_fixup_apply(&mut self, before: PmSnapshot) {
        let now = self.u16_at(before.ctrl);
        if matches!(now & PCI_PM_CTRL_STATE_MASK, 1 | 2) {
            self.set_u16(before.ctrl, (now & !PCI_PM_CTRL_STATE_MASK) | before.state);
        }
    }

    /// Adds an MSI capability at `at` or the next free offset.
    pub fn add_msi(
        &mut self,
        spec: MsiSpec,
        at: Option<u16>,
    ) -> Result<MsiCapability, AddCapabilityError> {
        if self.msi.is_some() {
            return Err(AddCapabilityError::Duplicate("MSI"));
        }
        if !spec.vectors.is_power_of_two() || spec.vectors > 32 {
            return Err(bad("MSI", "vectors must be 1, 2, 4, 8, 16 or 32"));
        }
        let mut cap = MsiCapability {
            offset: 0,
            vectors: spec.vectors,
            address_64: spec.address_64,
            per_vector_mask: spec.per_vector_mask,
        };
        cap.offset = self.add_capability(PCI_CAP_ID_MSI, cap.cap_len(), at)?;
        let mut control = (spec.vectors.trailing_zeros() as u16) << 1;
        if spec.address_64 {
            control |= PCI_MSI_FLAGS_64BIT;
        }
        if spec.per_vector_mask {
            control |= PCI_MSI_FLAGS_MASKBIT;
        }
        self.define_u16(
            cap.control_offset(),
            control,
            PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE,
        );
        self.define_u32(cap.offset + PCI_MSI_ADDRESS_LO_OFF, 0, 0xffff_fffc);
        if spec.address_64 {
            self.define_u32(cap.offset + PCI_MSI_ADDRESS_HI_OFF, 0, 0xffff_ffff);
        }
        self.define_u16(cap.data_offset(), 0, 0xffff);
        if let (Some(mask), Some(pending)) = (cap.mask_offset(), cap.pending_offset()) {
            self.define_u32(mask, 0, cap.vector_bits());
            self.define_u32(pending, 0, 0);
        }
        self.msi = Some(cap);
        Ok(cap)
    }

    /// The MSI capability, if one was added.
    pub fn msi_capability(&self) -> Option<MsiCapability> {
        self.msi
    }

    /// What the guest programmed into the MSI capability.
    pub fn msi_state(&self) -> Option<MsiState> {
        let cap = self.msi?;
        let control = self.u16_at(cap.control_offset());
        let capable_log2 = cap.vectors.trailing_zeros() as u16;
        let enabled_log2 = ((control & PCI_MSI_FLAGS_QSIZE) >> 4).min(capable_log2);
        let lo = u64::from(self.u32_at(cap.offset + PCI_MSI_ADDRESS_LO_OFF));
        let hi = if cap.address_64 {
            u64::from(self.u32_at(cap.offset + PCI_MSI_ADDRESS_HI_OFF))
        } else {
            0
        };
        Some(MsiState {
            enabled: control & PCI_MSI_FLAGS_ENABLE != 0,
            vectors: 1 << enabled_log2,
            address: (hi << 32) | lo,
            data: self.u16_at(cap.data_offset()),
            mask: cap.mask_offset().map_or(0, |o| self.u32_at(o)),
            pending: cap.pending_offset().map_or(0, |o| self.u32_at(o)),
        })
    }

    /// Whether MSI is present and enabled.
    pub fn msi_enabled(&self) -> bool {
        self.msi_state().is_some_and(|s| s.enabled)
    }

    /// Sets or clears an MSI pending bit from the device side (no-op without masking or for a
    /// vector the function does not have).
    pub fn set_msi_pending(&mut self, vector: u8, pending: bool) {
        let Some(cap) = self.msi else { return };
        let Some(offset) = cap.pending_offset() else {
            return;
        };
        if vector >= cap.vectors {
            return;
        }
        let bit = 1u32 << vector;
        let now = self.u32_at(offset);
        self.set_u32(offset, if pending { now | bit } else { now & !bit });
    }

    /// Adds an MSI-X capability (12 bytes) at `at` or the next free offset. The table and PBA
    /// BARs must already be defined memory BARs that hold them; both offsets 8-byte aligned;
    /// table and PBA must not overlap.
    pub fn add_msix(
        &mut self,
        spec: MsixSpec,
        at: Option<u16>,
    ) -> Result<MsixCapability, AddCapabilityError> {
        if self.msix.is_some() {
            return Err(AddCapabilityError::Duplicate("MSI-X"));
        }
        if spec.vectors == 0 || spec.vectors > PCI_MSIX_MAX_VECTORS {
            return Err(bad("MSI-X", "vectors must be 1-2048"));
        }
        if !spec.table_offset.is_multiple_of(8) || !spec.pba_offset.is_multiple_of(8) {
            return Err(bad("MSI-X", "table and PBA offsets must be 8-byte aligned"));
        }
        let mut cap = MsixCapability {
            offset: 0,
            vectors: spec.vectors,
            table_bar: spec.table_bar,
            table_offset: spec.table_offset,
            pba_bar: spec.pba_bar,
            pba_offset: spec.pba_offset,
        };
        for (bar, range, what) in [
            (
                spec.table_bar,
                cap.table_range(),
                "the table does not fit a memory BAR",
            ),
            (
                spec.pba_bar,
                cap.pba_range(),
                "the PBA does not fit a memory BAR",
            ),
        ] {
            let fits = self
                .bar(bar)
                .is_some_and(|b| b.is_memory() && range.end <= b.size);
            if !fits {
                return Err(bad("MSI-X", what));
            }
        }
        let (t, p) = (cap.table_range(), cap.pba_range());
        if spec.table_bar == spec.pba_bar && t.start < p.end && p.start < t.end {
            return Err(bad("MSI-X", "the table and the PBA overlap"));
        }
        cap.offset = self.add_capability(PCI_CAP_ID_MSIX, PCI_MSIX_CAP_LEN, at)?;
        self.define_u16(
            cap.control_offset(),
            spec.vectors - 1,
            PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL,
        );
        self.define_u32(
            cap.offset + PCI_MSIX_TABLE_OFF,
            spec.table_offset | u32::from(spec.table_bar),
            0,
        );
        self.define_u32(
            cap.offset + PCI_MSIX_PBA_OFF,
            spec.pba_offset | u32::from(spec.pba_bar),
            0,
        );
        self.msix = Some(cap);
        Ok(cap)
    }

    /// The MSI-X capability, if one was added.
    pub fn msix_capability(&self) -> Option<MsixCapability> {
        self.msix
    }

    /// MSI-X enable and function mask as the guest set them.
    pub fn msix_control(&self) -> Option<MsixControl> {
        let cap = self.msix?;
        let control = self.u16_at(cap.control_offset());
        Some(MsixControl {
            enabled: control & PCI_MSIX_FLAGS_ENABLE != 0,
            function_masked: control & PCI_MSIX_FLAGS_MASKALL != 0,
        })
    }

    /// Whether MSI-X is present and enabled.
    pub fn msix_enabled(&self) -> bool {
        self.msix_control().is_some_and(|c| c.enabled)
    }

    /// Adds a version-2 PCI Express capability (60 bytes) at `at` or the next free offset.
    /// Needs PCI Express config space.
    pub fn add_pcie(
        &mut self,
        spec: PcieSpec,
        at: Option<u16>,
    ) -> Result<PcieCapability, AddCapabilityError> {
        if self.kind() != ConfigKind::Express {
            return Err(AddCapabilityError::NeedsExpress);
        }
        if self.pcie.is_some() {
            return Err(AddCapabilityError::Duplicate("PCI Express"));
        }
        let mps = spec.max_payload_size;
        if !mps.is_power_of_two() || !(128..=4096).contains(&mps) {
            return Err(bad(
                "PCI Express",
                "max payload size must be 128-4096, a power of two",
            ));
        }
        let offset = self.add_capability(PCI_CAP_ID_EXP, PCI_EXP_CAP_V2_LEN, at)?;
        let type_bits: u16 = match spec.device_type {
            PcieDeviceType::Endpoint => 0,
            PcieDeviceType::LegacyEndpoint => 1,
        };
        self.define_u16(
            offset + PCI_EXP_FLAGS_OFF,
            PCI_EXP_FLAGS_VERSION_2 | (type_bits << 4),
            0,
        );
        let mut devcap = (mps.trailing_zeros() - 7) | PCI_EXP_DEVCAP_RBER;
        let mut devctl_w = PCI_EXP_DEVCTL_WRITABLE;
        if spec.extended_tag {
            devcap |= PCI_EXP_DEVCAP_EXT_TAG;
        } else {
            devctl_w &= !PCI_EXP_DEVCTL_EXT_TAG;
        }
        self.define_u32(offset + PCI_EXP_DEVCAP_OFF, devcap, 0);
        self.define_u16(
            offset + PCI_EXP_DEVCTL_OFF,
            PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN | PCI_EXP_DEVCTL_READRQ_512B,
            devctl_w,
        );
        self.define_u16_rw1c(offset + PCI_EXP_DEVSTA_OFF, 0, 0, PCI_EXP_DEVSTA_ERRORS);
        self.define_u32(
            offset + PCI_EXP_LNKCAP_OFF,
            PCI_EXP_LNKCAP_SLS_2_5GB | PCI_EXP_LNKCAP_MLW_X1,
            0,
        );
        self.define_u16(
            offset + PCI_EXP_LNKCTL_OFF,
            0,
            PCI_EXP_LNKCTL_RCB | PCI_EXP_LNKCTL_CCC | PCI_EXP_LNKCTL_ES,
        );
        self.define_u16(
            offset + PCI_EXP_LNKSTA_OFF,
            PCI_EXP_LNKSTA_CLS_2_5GB | PCI_EXP_LNKSTA_NLW_X1,
            0,
        );
        self.define_u32(offset + PCI_EXP_LNKCAP2_OFF, PCI_EXP_LNKCAP2_SLS_2_5GB, 0);
        self.define_u16(offset + PCI_EXP_LNKCTL2_OFF, PCI_EXP_LNKCTL2_TLS_2_5GT, 0);
        let cap = PcieCapability {
            offset,
            device_type: spec.device_type,
        };
        self.pcie = Some(cap);
        Ok(cap)
    }

    /// The PCI Express capability, if one was added.
    pub fn pcie_capability(&self) -> Option<PcieCapability> {
        self.pcie
    }

    /// PCI Express device control as the guest set it.
    pub fn pcie_device_control(&self) -> Option<u16> {
        Some(self.u16_at(self.pcie?.offset + PCI_EXP_DEVCTL_OFF))
    }

    /// Sets PCI Express device status error bits from the device side (RW1C to the guest).
    pub fn set_pcie_device_status(&mut self, bits: u16) {
        let Some(cap) = self.pcie else { return };
        let at = cap.offset + PCI_EXP_DEVSTA_OFF;
        let now = self.u16_at(at) | (bits & PCI_EXP_DEVSTA_ERRORS);
        self.set_u16(at, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarSpec;
    use crate::config::{InterruptPin, PciIds};

    const IDS: PciIds = PciIds {
        vendor_id: 0x8086,
        device_id: 0x1889,
        subsystem_vendor_id: 0x8086,
        subsystem_id: 0,
        revision: 1,
        class_code: 0x02_00_00,
    };

    fn conventional() -> ConfigSpace {
        ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::IntA)
    }

    fn express() -> ConfigSpace {
        let mut cs = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::IntA);
        cs.add_bar(BarSpec::mem64(0, 0x2_0000)).unwrap();
        cs.add_bar(BarSpec::mem32(3, 0x4000)).unwrap();
        cs
    }

    /// Everything this crate builds, placed automatically.
    fn full() -> ConfigSpace {
        let mut cs = express();
        cs.add_pm(PmSpec::default(), None).unwrap();
        cs.add_msi(MsiSpec::new(4).with_masking(), None).unwrap();
        cs.add_msix(MsixSpec::new(17, 3, 0, 3, 0x1000), None)
            .unwrap();
        cs.add_pcie(PcieSpec::default(), None).unwrap();
        cs.add_ext_capability(PCI_EXT_CAP_ID_DSN, 1, 12, None)
            .unwrap();
        cs
    }

    fn write16(cs: &mut ConfigSpace, off: u16, v: u16) {
        cs.write(u64::from(off), &v.to_le_bytes()).unwrap();
    }

    fn write32(cs: &mut ConfigSpace, off: u16, v: u32) {
        cs.write(u64::from(off), &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn capability_walk_finds_every_capability() {
        let cs = full();
        let walk: Vec<_> = cs.capabilities().collect();
        let ids: Vec<u8> = walk.iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [
                PCI_CAP_ID_PM,
                PCI_CAP_ID_MSI,
                PCI_CAP_ID_MSIX,
                PCI_CAP_ID_EXP
            ]
        );
        let offsets: Vec<u16> = walk.iter().map(|c| c.offset).collect();
        // PM 8 bytes at 0x40, MSI 0x18 at 0x48, MSI-X 12 at 0x60, PCIe 0x3c at 0x6c.
        assert_eq!(offsets, [0x40, 0x48, 0x60, 0x6c]);
        assert_eq!(walk.last().map(|c| c.next), Some(0), "the chain terminates");
        for w in walk.windows(2) {
            assert_eq!(w[0].next, w[1].offset);
        }
        assert_eq!(
            cs.find_capability(PCI_CAP_ID_PM),
            cs.pm_capability().map(|c| c.offset)
        );
        assert_eq!(
            cs.find_capability(PCI_CAP_ID_MSI),
            cs.msi_capability().map(|c| c.offset)
        );
        assert_eq!(
            cs.find_capability(PCI_CAP_ID_MSIX),
            cs.msix_capability().map(|c| c.offset)
        );
        assert_eq!(
            cs.find_capability(PCI_CAP_ID_EXP),
            cs.pcie_capability().map(|c| c.offset)
        );
        assert_eq!(cs.find_capability(PCI_CAP_ID_VNDR), None);
        // The extended list starts at 0x100 and terminates.
        let ext: Vec<_> = cs.ext_capabilities().collect();
        assert_eq!(ext.len(), 1);
        assert_eq!(
            (ext[0].offset, ext[0].id, ext[0].next),
            (0x100, PCI_EXT_CAP_ID_DSN, 0)
        );
    }

    #[test]
    fn capabilities_at_given_offsets() {
        let mut cs = express();
        cs.add_pcie(PcieSpec::default(), Some(0x80)).unwrap();
        cs.add_msix(MsixSpec::new(1, 0, 0, 0, 0x800), Some(0x70))
            .unwrap();
        cs.add_pm(PmSpec::default(), Some(0xc0)).unwrap();
        let walk: Vec<(u8, u16)> = cs.capabilities().map(|c| (c.id, c.offset)).collect();
        assert_eq!(
            walk,
            [
                (PCI_CAP_ID_EXP, 0x80),
                (PCI_CAP_ID_MSIX, 0x70),
                (PCI_CAP_ID_PM, 0xc0)
            ]
        );
        assert!(matches!(
            cs.add_msi(MsiSpec::new(1), Some(0x84)),
            Err(AddCapabilityError::Overlap { existing: 0x80, .. })
        ));
        // The failed add left no MSI behind; an automatic one goes to 0x40.
        assert_eq!(cs.msi_capability(), None);
        assert_eq!(
            cs.add_msi(MsiSpec::new(1), None).map(|c| c.offset),
            Ok(0x40)
        );
    }

    #[test]
    fn pm_state_d0_and_d3hot_only() {
        let mut cs = full();
        let pm = cs.pm_capability().unwrap();
        let ctrl = pm.control_offset();
        assert_eq!(
            cs.u16_at(pm.offset + PCI_PM_PMC_OFF),
            0x0003,
            "PM 1.2, no PME"
        );
        assert_eq!(cs.power_state(), Some(PowerState::D0));
        assert_eq!(cs.u16_at(ctrl), PCI_PM_CTRL_NO_SOFT_RESET);
        write16(&mut cs, ctrl, 3);
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        // D1 and D2 are not supported: the write is discarded.
        write16(&mut cs, ctrl, 1);
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        cs.write(u64::from(ctrl), &[2]).unwrap();
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        // A wide write covering PMCSR with D2 is discarded for the state bits too.
        write32(&mut cs, ctrl, 0xffff_fffe);
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        write16(&mut cs, ctrl, 0);
        assert_eq!(cs.power_state(), Some(PowerState::D0));
        // All-ones: D3hot; No_Soft_Reset, PME bits, PMC and the id stay.
        write32(&mut cs, pm.offset, u32::MAX);
        write32(&mut cs, ctrl, u32::MAX);
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        assert_eq!(cs.u16_at(ctrl), PCI_PM_CTRL_NO_SOFT_RESET | 3);
        assert_eq!(cs.u32_at(pm.offset) & 0xffff_00ff, 0x0003_0001);
        // Without PME, the device cannot set PME_Status.
        cs.set_pme_status();
        assert_eq!(cs.u16_at(ctrl) & PCI_PM_CTRL_PME_STATUS, 0);
        cs.reset();
        assert_eq!(cs.power_state(), Some(PowerState::D0));
        assert_eq!(conventional().power_state(), None);
    }

    #[test]
    fn pm_with_pme() {
        let mut cs = conventional();
        let pm = cs
            .add_pm(
                PmSpec {
                    no_soft_reset: false,
                    pme_support: 0x19,
                },
                None,
            )
            .unwrap();
        let ctrl = pm.control_offset();
        assert_eq!(cs.u16_at(pm.offset + 2), 0xc803);
        assert_eq!(cs.u16_at(ctrl), 0);
        write16(&mut cs, ctrl, 0xffff);
        assert_eq!(cs.u16_at(ctrl), PCI_PM_CTRL_PME_ENABLE | 3);
        cs.set_pme_status();
        assert_ne!(cs.u16_at(ctrl) & PCI_PM_CTRL_PME_STATUS, 0);
        write16(&mut cs, ctrl, PCI_PM_CTRL_PME_STATUS | 3);
        assert_eq!(cs.u16_at(ctrl), 3, "PME_Status is RW1C; PME_En written 0");
        assert!(matches!(
            cs.add_pm(PmSpec::default(), None),
            Err(AddCapabilityError::Duplicate(_))
        ));
        assert!(conventional()
            .add_pm(
                PmSpec {
                    no_soft_reset: true,
                    pme_support: 0x20
                },
                None
            )
            .is_err());
    }

    #[test]
    fn msi_layouts() {
        for (spec, len, data) in [
            (MsiSpec::new(1).address_32(), 0x0a, 0x08),
            (MsiSpec::new(1), 0x0e, 0x0c),
            (MsiSpec::new(1).address_32().with_masking(), 0x14, 0x08),
            (MsiSpec::new(1).with_masking(), 0x18, 0x0c),
        ] {
            let mut cs = conventional();
            let cap = cs.add_msi(spec, None).unwrap();
            assert_eq!(cap.cap_len(), len);
            assert_eq!(cap.data_offset(), 0x40 + data);
            assert_eq!(cap.mask_offset().is_some(), spec.per_vector_mask);
            // The next capability goes right after it (dword-aligned).
            let next = cs.add_capability(PCI_CAP_ID_VNDR, 4, None).unwrap();
            assert_eq!(next, 0x40 + len.next_multiple_of(4));
        }
    }

    #[test]
    fn msi_fields_and_masks() {
        let mut cs = conventional();
        let cap = cs
            .add_msi(MsiSpec::new(4).with_masking(), Some(0x50))
            .unwrap();
        assert!(!cs.msi_enabled());
        let ctrl = cap.control_offset();
        assert_eq!(
            cs.u16_at(ctrl),
            0x0184,
            "4 vectors capable, 64-bit, maskable"
        );
        // Enable + MME=7 requested; only MME and enable stick.
        write16(&mut cs, ctrl, 0xffff);
        assert_eq!(cs.u16_at(ctrl), 0x01f5);
        let st = cs.msi_state().unwrap();
        assert!(st.enabled);
        assert_eq!(st.vectors, 4, "clamped to capable");
        write32(&mut cs, 0x54, 0xfee0_1003);
        write32(&mut cs, 0x58, 0x1);
        cs.write(0x5c, &[0x34, 0x12, 0xff, 0xff]).unwrap();
        // Mask: only the 4 vector bits; pending: read-only.
        write32(&mut cs, 0x60, u32::MAX);
        write32(&mut cs, 0x64, u32::MAX);
        let st = cs.msi_state().unwrap();
        assert_eq!(st.address, 0x1_fee0_1000);
        assert_eq!(st.data, 0x1234);
        assert_eq!(cs.u16_at(0x5e), 0, "extended message data is RO 0");
        assert_eq!((st.mask, st.pending), (0xf, 0));
        cs.set_msi_pending(2, true);
        cs.set_msi_pending(9, true);
        assert_eq!(cs.msi_state().unwrap().pending, 0x4);
        cs.set_msi_pending(2, false);
        assert_eq!(cs.msi_state().unwrap().pending, 0);
        write16(&mut cs, ctrl, 0);
        assert!(!cs.msi_enabled());
        let mut all32 = conventional();
        let c = all32
            .add_msi(MsiSpec::new(32).with_masking(), None)
            .unwrap();
        write32(&mut all32, c.mask_offset().unwrap(), u32::MAX);
        assert_eq!(all32.msi_state().unwrap().mask, u32::MAX);
    }

    #[test]
    fn bad_msi_is_refused() {
        let mut cs = conventional();
        for v in [0, 3, 64] {
            assert!(matches!(
                cs.add_msi(MsiSpec::new(v), None),
                Err(AddCapabilityError::BadParameters { .. })
            ));
        }
        cs.add_msi(MsiSpec::new(1), None).unwrap();
        assert_eq!(
            cs.add_msi(MsiSpec::new(1), None),
            Err(AddCapabilityError::Duplicate("MSI"))
        );
    }

    #[test]
    fn msix_registers() {
        let mut cs = full();
        let cap = cs.msix_capability().unwrap();
        assert_eq!((cap.table_size(), cap.pba_size()), (17 * 16, 8));
        let ctrl = cap.control_offset();
        assert_eq!(cs.u16_at(ctrl), 16, "table size - 1");
        assert_eq!(cs.u32_at(cap.offset + 4), 3, "table at BAR3 + 0");
        assert_eq!(cs.u32_at(cap.offset + 8), 0x1003, "PBA at BAR3 + 0x1000");
        assert_eq!(cs.msix_control(), Some(MsixControl::default()));
        write16(&mut cs, ctrl, 0xffff);
        assert_eq!(
            cs.u16_at(ctrl),
            0xc010,
            "only enable and function mask are writable"
        );
        assert_eq!(
            cs.msix_control(),
            Some(MsixControl {
                enabled: true,
                function_masked: true
            })
        );
        assert!(cs.msix_enabled());
        write32(&mut cs, cap.offset + 4, u32::MAX);
        write32(&mut cs, cap.offset + 8, u32::MAX);
        assert_eq!(cs.u32_at(cap.offset + 4), 3);
        assert_eq!(cs.u32_at(cap.offset + 8), 0x1003);
        cs.write(u64::from(ctrl) + 1, &[0x40]).unwrap();
        assert_eq!(
            cs.msix_control(),
            Some(MsixControl {
                enabled: false,
                function_masked: true
            })
        );
        let big = MsixCapability {
            vectors: 2048,
            ..cap
        };
        assert_eq!((big.table_size(), big.pba_size()), (0x8000, 256));
    }

    #[test]
    fn bad_msix_is_refused() {
        let mut cs = express();
        let bad = |r| {
            Err(AddCapabilityError::BadParameters {
                cap: "MSI-X",
                reason: r,
            })
        };
        let cases = [
            (MsixSpec::new(0, 3, 0, 3, 0x1000), "vectors must be 1-2048"),
            (
                MsixSpec::new(2049, 0, 0, 0, 0x1_0000),
                "vectors must be 1-2048",
            ),
            (
                MsixSpec::new(4, 3, 4, 3, 0x1000),
                "table and PBA offsets must be 8-byte aligned",
            ),
            (
                MsixSpec::new(4, 3, 0, 3, 0x1004),
                "table and PBA offsets must be 8-byte aligned",
            ),
            (
                MsixSpec::new(4, 1, 0, 3, 0x1000),
                "the table does not fit a memory BAR",
            ),
            (
                MsixSpec::new(4, 2, 0, 3, 0x1000),
                "the table does not fit a memory BAR",
            ),
            (
                MsixSpec::new(4, 3, 0x3fc8, 3, 0),
                "the table does not fit a memory BAR",
            ),
            (
                MsixSpec::new(4, 3, 0, 5, 0),
                "the PBA does not fit a memory BAR",
            ),
            (
                MsixSpec::new(4, 3, 0, 3, 0x4000),
                "the PBA does not fit a memory BAR",
            ),
            (
                MsixSpec::new(4, 3, 0, 3, 0x38),
                "the table and the PBA overlap",
            ),
        ];
        for (spec, reason) in cases {
            assert_eq!(cs.add_msix(spec, None), bad(reason), "{spec:?}");
        }
        // An I/O BAR cannot hold the table.
        let mut io = conventional();
        io.add_bar(BarSpec::io(0, 256)).unwrap();
        assert!(io.add_msix(MsixSpec::new(1, 0, 0, 0, 0x80), None).is_err());
        // Table in a 64-bit BAR, PBA right after it in the same BAR.
        cs.add_msix(MsixSpec::new(4, 0, 0, 0, 0x40), None).unwrap();
        assert_eq!(
            cs.add_msix(MsixSpec::new(4, 0, 0, 0, 0x40), None),
            Err(AddCapabilityError::Duplicate("MSI-X"))
        );
    }

    #[test]
    fn pcie_capability_fields() {
        let mut cs = full();
        let cap = cs.pcie_capability().unwrap();
        let o = cap.offset;
        assert_eq!(cs.u16_at(o + PCI_EXP_FLAGS_OFF), 0x0002, "v2 endpoint");
        assert_eq!(cs.u32_at(o + PCI_EXP_DEVCAP_OFF), 0x8000, "128B MPS, RBER");
        assert_eq!(cs.pcie_device_control(), Some(0x2810));
        assert_eq!(
            cs.u32_at(o + PCI_EXP_LNKCAP_OFF) & 0x3ff,
            0x11,
            "x1, 2.5 GT/s"
        );
        assert_eq!(
            cs.u16_at(o + PCI_EXP_LNKSTA_OFF),
            0x0011,
            "link up at x1, 2.5 GT/s"
        );
        assert_eq!(cs.u32_at(o + PCI_EXP_LNKCAP2_OFF), 0x2);
        assert_eq!(cs.u16_at(o + PCI_EXP_LNKCTL2_OFF), 0x1);
        // Device control: the writable set, ext tag excluded (not supported), bit 15 RO.
        write16(&mut cs, o + PCI_EXP_DEVCTL_OFF, 0xffff);
        assert_eq!(cs.pcie_device_control(), Some(0x78ff));
        write16(&mut cs, o + PCI_EXP_DEVCTL_OFF, 0);
        assert_eq!(cs.pcie_device_control(), Some(0));
        // Device status error bits are RW1C.
        cs.set_pcie_device_status(0xff);
        assert_eq!(cs.u16_at(o + PCI_EXP_DEVSTA_OFF), 0xf);
        write16(&mut cs, o + PCI_EXP_DEVSTA_OFF, 0x5);
        assert_eq!(cs.u16_at(o + PCI_EXP_DEVSTA_OFF), 0xa);
        // Link control: RCB, common clock, extended synch only.
        write16(&mut cs, o + PCI_EXP_LNKCTL_OFF, 0xffff);
        assert_eq!(cs.u16_at(o + PCI_EXP_LNKCTL_OFF), 0x00c8);
        // Everything else in the capability is read-only.
        let before: Vec<u8> = (0..PCI_EXP_CAP_V2_LEN).map(|i| cs.u8_at(o + i)).collect();
        for i in (0..PCI_EXP_CAP_V2_LEN).step_by(4) {
            if ![PCI_EXP_DEVCTL_OFF, PCI_EXP_LNKCTL_OFF].contains(&i) {
                write32(&mut cs, o + i, u32::MAX);
            }
        }
        write16(&mut cs, o + PCI_EXP_DEVSTA_OFF, 0xffff);
        write16(&mut cs, o + PCI_EXP_LNKSTA_OFF, 0xffff);
        let after: Vec<u8> = (0..PCI_EXP_CAP_V2_LEN).map(|i| cs.u8_at(o + i)).collect();
        let devsta = usize::from(PCI_EXP_DEVSTA_OFF);
        assert_eq!(after[..devsta], before[..devsta]);
        assert_eq!(after[devsta], 0, "RW1C bits cleared by the all-ones write");
        assert_eq!(after[devsta + 1..], before[devsta + 1..]);
    }

    #[test]
    fn pcie_options_and_refusals() {
        let mut cs = express();
        let spec = PcieSpec {
            device_type: PcieDeviceType::LegacyEndpoint,
            max_payload_size: 512,
            extended_tag: true,
        };
        let cap = cs.add_pcie(spec, None).unwrap();
        assert_eq!(cs.u16_at(cap.offset + 2), 0x0012);
        assert_eq!(cs.u32_at(cap.offset + 4), 0x8022);
        write16(&mut cs, cap.offset + PCI_EXP_DEVCTL_OFF, 0x0100);
        assert_eq!(
            cs.pcie_device_control(),
            Some(0x0100),
            "ext tag enable is writable"
        );
        assert_eq!(
            cs.add_pcie(PcieSpec::default(), None),
            Err(AddCapabilityError::Duplicate("PCI Express"))
        );
        assert_eq!(
            conventional().add_pcie(PcieSpec::default(), None),
            Err(AddCapabilityError::NeedsExpress)
        );
        for mps in [0, 64, 200, 8192] {
            let spec = PcieSpec {
                max_payload_size: mps,
                ..PcieSpec::default()
            };
            assert!(express().add_pcie(spec, None).is_err(), "{mps}");
        }
    }

    #[test]
    fn reset_restores_capability_state() {
        let mut cs = full();
        let pristine = cs.clone();
        let size = cs.size();
        cs.write(0, &vec![0xff; size]).unwrap();
        assert!(cs.msix_enabled() && cs.msi_enabled());
        assert_eq!(cs.power_state(), Some(PowerState::D3Hot));
        cs.reset();
        let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
        cs.read(0, &mut a).unwrap();
        pristine.read(0, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(cs.capabilities().count(), 4);
    }
}
