//! # emudev
//!
//! The emudev object model: what an emulated device *is* (regions, queues, doorbells, the
//! memory table, interrupt vectors, attributes), the operations on it (lifecycle, notify,
//! region, queue, DMA), the events it raises, and the interface of the data-path providers
//! that move its data. It is the framework layer between the vfio-user core
//! (`emudev-vfio-user`, `emudev-dma`) and concrete devices (iavf, edu); it grows from DPDK's
//! never-merged `librte_emudev` (`emu_dev_ops`, `emu_dev_q_info`, `emu_dev_db_info`, ...).
//!
//! ## Objects
//!
//! - [`Region`]: index, name ("bar0"), size, client rights, and how it is reached
//!   ([`RegionAccess`]: trapped, whole-mmap, or sparse mmap areas with the rest trapped). The
//!   layout is fixed when the device is built ([`EmuDev::builder`]).
//! - [`Doorbell`]: a register (region, offset, width) and how a write to it is noticed
//!   ([`DoorbellKind`]): `Trapped` (a REGION_WRITE), `Mem` (a word on an mmapped doorbell page,
//!   polled through [`DoorbellMem`]), or `EventFd` (an ioeventfd handed out by
//!   GET_REGION_IO_FDS). The device chooses per doorbell; the builder checks that the choice fits
//!   the region (a mem doorbell must be mmapped, a trapped or eventfd one must not be).
//! - [`QueueInfo`]: a ring (base IOVA, entries, entry size), its doorbell and optional
//!   interrupt vector, its kind and whether it is data or control path. Queues are set up at
//!   run time by the device's control plane with [`EmuDev::configure_queue`] and
//!   [`EmuDev::clear_queue`].
//! - The memory table is the vfio-user server's `DmaTable`; IRQ vectors are the server's
//!   `IrqTable`. Both come from the transport ([`EmuDev::bind_context`]).
//! - Attributes: a typed key/value store ([`AttrValue`]) declared by the device ("mac", "mtu",
//!   "link_up").
//!
//! ## Operations and events
//!
//! [`EmuDev`] is a cloneable handle shared by the device logic, the application and the
//! transport adapter; its module doc lists the operations and the lifecycle state machine
//! (Created → Configured → Started ⇄ Stopped → Closed). Changes are announced as
//! [`EmuEvent`]s to subscribers ([`EventSink`]: callbacks or channels) in one total order,
//! never under an emudev lock, so a subscriber may call back into the device.
//!
//! ## Data-path providers
//!
//! A [`DataPathProvider`] is attached to a device ([`EmuDev::attach_provider`]). It gets a
//! [`DeviceView`] and is told when queues become ready (configured while started) or stop, and
//! when a trapped doorbell of a ready queue is written. The view's memory depends on the
//! provider's [`ProviderKind`] and the queues' [`QueuePath`]: a software provider gets the whole
//! DMA table ([`MemTableView::Full`]), a hardware provider only the rings of control-path queues
//! ([`MemTableView::ControlPlane`]). Device code describes queues and never decides this, so a
//! hardware provider needs no device changes.
//!
//! ## vfio-user
//!
//! [`VfioUserAdapter`] wraps device logic written against `emudev_vfio_user::Device`: the
//! layout answers region info and ioeventfd queries, transport callbacks become events, and
//! the server's DMA and IRQ tables are bound to the device ([`bind_server`]). Device logic
//! keeps handling region offsets.
//!
//! ## Threads
//!
//! Everything is `Send + Sync`. Operations may be called from the server thread, worker
//! threads and subscriber or provider callbacks; the lock order and the reentrancy rules are
//! in the `device`, `event` and `provider` module docs.

mod attr;
mod device;
mod doorbell;
mod error;
mod event;
mod provider;
mod queue;
mod region;
mod vfio;

#[cfg(test)]
mod test_device;

pub use attr::{AttrAccess, AttrCheck, AttrKind, AttrSpec, AttrValue};
pub use device::{
    DevState, EmuDev, EmuDevBuilder, EmuDevConf, EmuDevInfo, IrqVectorInfo, LifecycleOp,
};
pub use doorbell::{Doorbell, DoorbellId, DoorbellInfo, DoorbellKind, DoorbellMem};
pub use error::{
    AttrError, BuildError, ControlAccessError, DoorbellError, IrqError, LifecycleError,
    MemTableError, NotifyError, ProviderError, QueueError, RegionError,
};
pub use event::{EmuEvent, EventCallback, EventSink, SubscriptionId};
pub use provider::{ControlPlaneTable, DataPathProvider, DeviceView, MemTableView, ProviderKind};
pub use queue::{IovaRange, QueueConfig, QueueId, QueueInfo, QueueKind, QueuePath};
pub use region::{memfd_backing, MappedArea, Region, RegionAccess, RegionMapping, PAGE_SIZE};
pub use vfio::{bind_server, VfioUserAdapter};
