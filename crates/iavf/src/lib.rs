//! # emudev-iavf
//!
//! An emulated Intel Adaptive Virtual Function (AVF): the Ethernet VF that DPDK's `net_iavf`
//! and Linux's `iavf` drive, served over vfio-user.
//!
//! - [`spec`]: the interface itself, defined once for the device and the client-side driver:
//!   BAR0 registers, the admin-queue descriptor, virtchnl 1.1 messages, TX/RX descriptors.
//!   Little-endian on the wire, every decoder length-checked.
//! - [`device`]: the emulated VF (`emu_iavf`) on `emudev-pci` and the emudev object model:
//!   [`IavfDevice`] is a vfio-user `Device`; [`IavfHandle`] reaches it from other threads.
//! - [`datapath`]: the software data path (TX/RX ring engines, back-ends) attached to it.

pub mod datapath;
pub mod device;
pub mod driver;
pub mod spec;

pub use device::{
    CreateIavfError, IavfConfig, IavfConfigError, IavfDevice, IavfHandle, IavfSnapshot, IavfStats,
    VsiStats,
};
