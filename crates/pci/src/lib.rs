//! # emudev-pci
//!
//! The PCI device model every emudev device is built on, reached over vfio-user:
//!
//! - [`config`]: [`ConfigSpace`], a type-0 header in 256 (conventional) or 4096 (PCI Express)
//!   bytes with per-byte RO / RW / RW1C bits, the command and status registers, BARs with
//!   sizing ([`BarSpec`]), the expansion ROM, and capability lists (standard from 0x40,
//!   extended from 0x100) with a walker.
//! - [`caps`]: the PM, MSI, MSI-X and PCI Express capability builders and their state.
//! - [`bar`]: BAR kinds and rules, and [`BarMemory`] for BARs the client may mmap.
//! - [`msix`]: [`MsixTable`], the MSI-X table and PBA inside a BAR, with per-vector and
//!   function masking, pending bits and delivery on unmask.
//! - [`irq`]: where interrupts go ([`MsiSink`], [`IrqSink`] over the server's IRQ table), MSI
//!   with per-vector masking, and INTx level semantics.
//! - [`function`]: [`PciFunction`], the small trait a device implements, and [`PciDevice`],
//!   which makes it an [`emudev_vfio_user::Device`] (region and IRQ info from the config space,
//!   config/MSI-X/BAR-memory routing).
//! - [`regs`]: register offsets and bits.
//!
//! Nothing here knows a particular device, and there is no `unsafe`: BAR memory goes through
//! `emudev-dma`'s `SharedMemory`.

pub mod bar;
pub mod caps;
pub mod config;
pub mod function;
pub mod irq;
pub mod msix;
pub mod regs;

pub use bar::{AddBarError, BarKind, BarMemory, BarSpec, CreateBarMemoryError};
pub use caps::{
    MsiCapability, MsiSpec, MsiState, MsixCapability, MsixControl, MsixSpec, PcieCapability,
    PcieDeviceType, PcieSpec, PmCapability, PmSpec, PowerState,
};
pub use config::{
    AddCapabilityError, Capability, ConfigAccessError, ConfigKind, ConfigSpace, ExtCapability,
    InterruptPin, PciIds,
};
pub use function::{
    default_config_read, default_config_write, default_irq_info, default_reset, PciDevice,
    PciFunction, ValidateLayoutError, CONFIG_REGION, ROM_REGION,
};
pub use irq::{FireError, FireOutcome, IntxOutcome, IrqSink, MsiMessage, MsiSink};
pub use msix::{MsixAccessError, MsixEntry, MsixMaskMode, MsixRange, MsixTable};
