//! Data-path providers: the part of a device that moves the data.
//!
//! The device (its control plane) owns the lifecycle, the layout, attributes and the queue
//! configuration; a [`DataPathProvider`] attached to it (`port attach net_iavfbe,emu=emu_iavf0`
//! in the later CLI) services the queues. The framework tells the provider which queues are
//! ready ([`DataPathProvider::queue_ready`]: configured while the device is started) and when
//! they stop; it forwards writes to trapped doorbells of ready queues.
//!
//! What memory a provider may touch depends on its [`ProviderKind`], and the framework, not the
//! device, decides it from the queues' [`crate::QueuePath`]:
//!
//! - a **software** provider gets [`MemTableView::Full`]: the whole DMA table;
//! - a **hardware** provider gets [`MemTableView::ControlPlane`]: only the rings of
//!   control-path queues (the admin queue, say), checked on every access; the data rings are
//!   for the hardware behind its own IOMMU, programmed from the [`QueueInfo`]s it is given.
//!
//! So a hardware provider can be added without touching device code.
//!
//! Provider callbacks run on the thread whose operation changed the state (the vfio-user
//! server thread for register writes), with the provider's lock held and no other emudev lock.
//! A provider may call any [`DeviceView`] operation from a callback; it must not wait there for
//! another thread that calls into the same device.

use std::fmt;
use std::sync::{Arc, Weak};

use emudev_dma::{DmaProt, DmaTable, DmaWindow, Iova};

use crate::attr::AttrValue;
use crate::device::{EmuDev, Inner, IrqVectorInfo};
use crate::doorbell::{DoorbellId, DoorbellInfo};
use crate::error::{
    AttrError, ControlAccessError, DoorbellError, IrqError, NotifyError, ProviderError, QueueError,
    RegionError,
};
use crate::event::{EventSink, SubscriptionId};
use crate::queue::{IovaRange, QueueId, QueueInfo};
use crate::region::RegionMapping;

/// What kind of data path a provider is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Moves data in software through the DMA table (sees all of client memory).
    Software,
    /// Offloads the data path to hardware with its own IOMMU (sees only control-plane memory).
    Hardware,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Software => "software",
            ProviderKind::Hardware => "hardware",
        })
    }
}

/// A data path attached to a device.
pub trait DataPathProvider: Send {
    /// Its kind (decides the memory view it gets).
    fn kind(&self) -> ProviderKind;

    /// Attached to a device; `Err` refuses it (the provider is then dropped by the caller of
    /// `attach_provider`, which gets the error).
    fn attach(&mut self, dev: DeviceView) -> Result<(), ProviderError>;

    /// `q` is configured and the device is started: start servicing it. A reconfigured queue
    /// is first stopped (with its old info) and then made ready again.
    fn queue_ready(&mut self, q: &QueueInfo);

    /// Stop servicing `q` (as last given to `queue_ready`): cleared, reconfigured, device
    /// stopped or closed, or the provider is being detached.
    fn queue_stopped(&mut self, q: &QueueInfo);

    /// The driver wrote `value` to the trapped doorbell of ready queue `q` (after the device's
    /// own handler ran). Mem and eventfd doorbells are polled/waited on by the provider instead.
    fn doorbell_rung(&mut self, _q: &QueueInfo, _value: u64) {}

    /// Detached: every ready queue has been stopped; drop references to the device.
    fn detach(&mut self);
}

/// The memory a provider may reach.
#[derive(Clone, Debug)]
pub enum MemTableView {
    /// The whole DMA table (software providers).
    Full(Arc<DmaTable>),
    /// Only the rings of control-path queues (hardware providers).
    ControlPlane(ControlPlaneTable),
}

impl MemTableView {
    /// Whether this is the whole table.
    pub fn is_full(&self) -> bool {
        matches!(self, MemTableView::Full(_))
    }

    /// Copies client memory at `iova` into `buf`.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), ControlAccessError> {
        match self {
            MemTableView::Full(t) => Ok(t.read(iova, buf)?),
            MemTableView::ControlPlane(c) => c.read(iova, buf),
        }
    }

    /// Copies `data` into client memory at `iova`.
    pub fn write(&self, iova: Iova, data: &[u8]) -> Result<(), ControlAccessError> {
        match self {
            MemTableView::Full(t) => Ok(t.write(iova, data)?),
            MemTableView::ControlPlane(c) => c.write(iova, data),
        }
    }

    /// A window over `[iova, iova + len)` for repeated access.
    pub fn window(
        &self,
        iova: Iova,
        len: u64,
        access: DmaProt,
    ) -> Result<DmaWindow, ControlAccessError> {
        match self {
            MemTableView::Full(t) => Ok(t.window(iova, len, access)?),
            MemTableView::ControlPlane(c) => c.window(iova, len, access),
        }
    }
}

/// The control-plane part of a DMA table: accesses must lie inside the ring of one
/// control-path queue configured *now* (checked on every access, so a cleared queue's ring
/// stops being reachable at once).
#[derive(Clone)]
pub struct ControlPlaneTable {
    dma: Arc<DmaTable>,
    dev: Weak<Inner>,
}

impl fmt::Debug for ControlPlaneTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneTable")
            .field("ranges", &self.ranges())
            .finish()
    }
}

impl ControlPlaneTable {
    pub(crate) fn new(dma: Arc<DmaTable>, dev: Weak<Inner>) -> Self {
        ControlPlaneTable { dma, dev }
    }

    /// The reachable ranges: the rings of the configured control-path queues, by IOVA.
    pub fn ranges(&self) -> Vec<IovaRange> {
        self.dev
            .upgrade()
            .map(|d| EmuDev::from_inner(d).control_ranges())
            .unwrap_or_default()
    }

    /// Whether `[iova, iova + len)` is reachable.
    pub fn allows(&self, iova: Iova, len: u64) -> bool {
        self.ranges().iter().any(|r| r.contains(iova, len))
    }

    fn check(&self, iova: Iova, len: u64) -> Result<(), ControlAccessError> {
        if self.allows(iova, len) {
            Ok(())
        } else {
            Err(ControlAccessError::OutsideControlPlane { iova, len })
        }
    }

    /// Copies control-plane memory at `iova` into `buf`.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), ControlAccessError> {
        self.check(iova, buf.len() as u64)?;
        Ok(self.dma.read(iova, buf)?)
    }

    /// Copies `data` into control-plane memory at `iova`.
    pub fn write(&self, iova: Iova, data: &[u8]) -> Result<(), ControlAccessError> {
        self.check(iova, data.len() as u64)?;
        Ok(self.dma.write(iova, data)?)
    }

    /// A window inside one control-plane range. (The window stays usable after the queue is
    /// cleared, like any window after an unmap; take a new one per burst.)
    pub fn window(
        &self,
        iova: Iova,
        len: u64,
        access: DmaProt,
    ) -> Result<DmaWindow, ControlAccessError> {
        self.check(iova, len)?;
        Ok(self.dma.window(iova, len, access)?)
    }
}

/// What a provider gets when attached: the device's queue, doorbell, IRQ, region and attribute
/// ops, and the memory view its kind allows. It holds the device weakly: once the device is
/// dropped, its operations fail as if the device were closed.
#[derive(Clone)]
pub struct DeviceView {
    dev: Weak<Inner>,
    name: String,
    kind: ProviderKind,
    mem: MemTableView,
}

impl fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceView")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("mem", &self.mem)
            .finish()
    }
}

impl DeviceView {
    pub(crate) fn new(
        dev: Weak<Inner>,
        name: String,
        kind: ProviderKind,
        mem: MemTableView,
    ) -> Self {
        DeviceView {
            dev,
            name,
            kind,
            mem,
        }
    }

    fn dev(&self) -> Option<EmuDev> {
        self.dev.upgrade().map(EmuDev::from_inner)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider kind this view was made for.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The memory this provider may reach.
    pub fn mem_table(&self) -> &MemTableView {
        &self.mem
    }

    /// `get_queue_info`.
    pub fn get_queue_info(&self, q: QueueId) -> Result<QueueInfo, QueueError> {
        self.dev().ok_or(QueueError::Closed)?.get_queue_info(q)
    }

    /// Every configured queue.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.dev().map(|d| d.queues()).unwrap_or_default()
    }

    /// `get_db_info`.
    pub fn get_db_info(&self, db: DoorbellId) -> Result<DoorbellInfo, DoorbellError> {
        self.dev().ok_or(DoorbellError::Closed)?.get_db_info(db)
    }

    /// `get_irq_info`.
    pub fn get_irq_info(&self, vector: u32) -> Result<IrqVectorInfo, IrqError> {
        self.dev().ok_or(IrqError::NoContext)?.get_irq_info(vector)
    }

    /// Raises interrupt `vector` (of the device's queue IRQ index).
    pub fn trigger_irq(&self, vector: u32) -> Result<bool, IrqError> {
        self.dev().ok_or(IrqError::NoContext)?.trigger_irq(vector)
    }

    /// `region_map`.
    pub fn region_map(&self, name: &str) -> Result<RegionMapping, RegionError> {
        self.dev().ok_or(RegionError::Closed)?.region_map(name)
    }

    /// `get_attr`.
    pub fn get_attr(&self, name: &str) -> Result<AttrValue, AttrError> {
        self.dev().ok_or(AttrError::Closed)?.get_attr(name)
    }

    /// `subscribe_event`.
    pub fn subscribe_event(&self, sink: EventSink) -> Result<SubscriptionId, NotifyError> {
        self.dev().ok_or(NotifyError::Closed)?.subscribe_event(sink)
    }

    /// `unsubscribe_event`.
    pub fn unsubscribe_event(&self, id: SubscriptionId) -> Result<(), NotifyError> {
        self.dev().ok_or(NotifyError::Closed)?.unsubscribe_event(id)
    }
}
