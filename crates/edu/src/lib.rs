//! # emudev-edu
//!
//! QEMU's `edu` educational PCI device (`docs/specs/edu.rst`), served natively over vfio-user:
//! PCI 1234:11e8 with a 1 MiB MMIO BAR holding an id register, a liveness check, a factorial
//! unit, an interrupt status/raise/ack block and a 4 KiB DMA engine, plus INTx and one MSI
//! vector. It is the smallest complete device in emudev.
//!
//! - [`EduDevice`] implements [`emudev_vfio_user::Device`]; hand it to the server.
//! - It is built on `emudev-pci`: an [`emudev_pci::PciFunction`] behind the
//!   [`emudev_pci::PciDevice`] adapter. [`config`] re-exports that crate's config space and
//!   register names under the path they had when the config space lived here.
//! - [`regs`] names the BAR0 registers and their bits.
//! - [`EduStats`] counts what the device did; [`EduStatsHandle`] reads them from another thread
//!   once the device belongs to the server.
//!
//! Differences from QEMU's model, all on purpose: the factorial and DMA run synchronously inside
//! the register write (the "computing" status bit is never seen set), and a DMA with a bad
//! range or an unmapped IOVA ends without copying and is counted instead of aborting the process.

/// The PCI config space edu builds its header with, now in `emudev-pci` (re-exported).
pub mod config {
    pub use emudev_pci::config::*;
    pub use emudev_pci::regs::*;
}
mod device;
pub mod regs;
mod stats;

pub use device::{factorial, DmaTransferError, EduDevice, EduRegisters};
pub use stats::{EduStats, EduStatsHandle};

pub use emudev_pci;

/// PCI vendor id (QEMU's).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// PCI device id.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// PCI revision id.
pub const EDU_REVISION: u8 = 0x10;
/// 24-bit PCI class code: base class 0x00, sub-class 0xff ("others"), prog-if 0.
pub const EDU_CLASS_CODE: u32 = 0x00ff00;
/// PCI subsystem vendor id.
pub const EDU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// PCI subsystem id.
pub const EDU_SUBSYSTEM_ID: u16 = 0x1100;
/// Value of the identification register (BAR0 offset 0): version 1.0, 0xed.
pub const EDU_ID_REG_VALUE: u32 = 0x0100_00ed;
/// Size of BAR0.
pub const EDU_BAR0_SIZE: u64 = 0x10_0000;
/// Offset of the MSI capability in config space.
pub const EDU_MSI_CAP_OFFSET: u8 = 0x40;
/// EDU-side address of the DMA buffer.
pub const EDU_DMA_BUF_ADDR: u64 = 0x4_0000;
/// Size of the DMA buffer.
pub const EDU_DMA_BUF_SIZE: usize = 0x1000;
