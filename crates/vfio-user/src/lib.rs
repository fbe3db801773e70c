//! # emudev-vfio-user
//!
//! The vfio-user protocol (QEMU `docs/interop/vfio-user.rst`, spec 0.9.2) as emudev speaks it.
//!
//! - [`wire`] is sans-I/O: bytes to typed messages and back, every length checked, no socket.
//! - [`transport`] moves whole messages and their fds over an `AF_UNIX` stream socket, with the
//!   fds attached to the message's first byte (one `sendmsg` per message).
//! - [`server`] accepts clients on a socket path and dispatches each request to a [`Device`],
//!   which sees region offsets, a DMA table and an IRQ table, never the socket.
//! - [`client`] is the other side: negotiate, query, map DMA memory, access regions, set IRQs.
//!
//! Nothing in this crate knows PCI config space or any particular device.

pub mod client;
pub mod device;
pub mod irq;
pub mod server;
pub mod trace;
pub mod transport;
pub mod wire;

pub use device::{
    Device, DeviceContext, DeviceInfo, Errno, IoEventFd, IrqInfo, RegionInfo, RegionMmap,
    SparseArea,
};
pub use emudev_dma::DmaMapInfo;
