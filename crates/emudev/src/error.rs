//! Error types, one per family of operations.

use std::io;

use emudev_dma::{DmaAccessError, Iova};
use emudev_vfio_user::Errno;

use crate::attr::AttrKind;
use crate::device::{DevState, LifecycleOp};
use crate::doorbell::DoorbellId;
use crate::event::SubscriptionId;
use crate::provider::ProviderKind;
use crate::queue::QueueId;

/// Why [`crate::EmuDevBuilder::build`] refused a layout.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Two regions share an index.
    #[error("region index {0} is declared twice")]
    DuplicateRegionIndex(u32),
    /// Two regions share a name.
    #[error("region name {0:?} is declared twice")]
    DuplicateRegionName(String),
    /// A region has no name.
    #[error("region {index} has an empty name")]
    EmptyRegionName {
        /// Its index.
        index: u32,
    },
    /// A region has size 0 (leave absent regions out of the layout).
    #[error("region {name:?} has size 0")]
    EmptyRegion {
        /// Its name.
        name: String,
    },
    /// An mmappable area is unusable.
    #[error("region {region:?}: mmap area {offset:#x}+{size:#x}: {reason}")]
    BadMmapArea {
        /// The region.
        region: String,
        /// Area offset.
        offset: u64,
        /// Area size.
        size: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An attribute is declared twice (or has an empty name).
    #[error("attribute {0:?} is declared twice or has an empty name")]
    DuplicateAttr(String),
    /// An attribute's default fails its own check.
    #[error("attribute {name:?}: default refused: {reason}")]
    BadAttrDefault {
        /// The attribute.
        name: String,
        /// The check's reason.
        reason: String,
    },
    /// A doorbell declaration is invalid.
    #[error("{id}: {source}")]
    Doorbell {
        /// The doorbell.
        id: DoorbellId,
        /// What is wrong.
        #[source]
        source: DoorbellError,
    },
    /// `max_queues` is 0.
    #[error("a device needs at least one queue slot")]
    NoQueues,
}

/// Why a lifecycle operation (`configure`, `start`, `stop`, `close`) failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The operation is not allowed in the current state (nothing changed).
    #[error("cannot {op} a device that is {state}")]
    IllegalTransition {
        /// What was attempted.
        op: LifecycleOp,
        /// The state the device is in.
        state: DevState,
    },
    /// The configuration asks for more queues than the device has.
    #[error("configuration asks for {requested} queues; the device has {max}")]
    TooManyQueues {
        /// Requested.
        requested: u32,
        /// The device's maximum.
        max: u32,
    },
    /// The configuration asks for no queues.
    #[error("configuration asks for 0 queues")]
    NoQueues,
    /// An attribute in the configuration is invalid (nothing changed).
    #[error("configuration: {0}")]
    Attr(#[from] AttrError),
}

/// Why `subscribe_event`/`unsubscribe_event` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// No such subscription.
    #[error("no {0}")]
    UnknownSubscription(SubscriptionId),
}

/// Why `region_map` failed.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// No region has this name.
    #[error("no region named {0:?}")]
    Unknown(String),
    /// The region is trapped: nothing to map.
    #[error("region {0:?} is not mappable")]
    NotMappable(String),
    /// mmap failed.
    #[error("cannot map region {name:?}: {source}")]
    Map {
        /// The region.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why `get_attr`/`set_attr`/`update_attr` failed (nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttrError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// No attribute has this name.
    #[error("no attribute {0:?}")]
    Unknown(String),
    /// Only the device may change it.
    #[error("attribute {0:?} is read-only")]
    ReadOnly(String),
    /// Wrong value type.
    #[error("attribute {name:?} is a {expected}, not a {got}")]
    TypeMismatch {
        /// The attribute.
        name: String,
        /// Its type.
        expected: AttrKind,
        /// The value's type.
        got: AttrKind,
    },
    /// The attribute's check refused the value.
    #[error("attribute {name:?}: {reason}")]
    Rejected {
        /// The attribute.
        name: String,
        /// The check's reason.
        reason: String,
    },
}

/// Why a doorbell operation (`configure_doorbell`, `get_db_info`) failed.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// No such doorbell.
    #[error("no {0}")]
    Unknown(DoorbellId),
    /// The doorbell names a region the layout does not have.
    #[error("no region {0}")]
    UnknownRegion(u32),
    /// Width is not 1, 2, 4 or 8.
    #[error("doorbell width {0} is not 1, 2, 4 or 8")]
    BadWidth(u8),
    /// The offset is not a multiple of the width.
    #[error("doorbell offset {offset:#x} is not aligned to its width {width}")]
    Misaligned {
        /// Offset.
        offset: u64,
        /// Width.
        width: u8,
    },
    /// The register does not fit in its region.
    #[error("doorbell at {offset:#x} does not fit in region {region} of {size:#x} bytes")]
    OutOfRegion {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
        /// Region size.
        size: u64,
    },
    /// It overlaps another doorbell.
    #[error("overlaps {0}")]
    Overlaps(DoorbellId),
    /// A `Mem` doorbell must lie inside one mmappable area.
    #[error("a mem doorbell must lie inside an mmappable area of its region")]
    NotMmapped,
    /// A trapped or eventfd doorbell in an mmappable area would never be seen.
    #[error("a {0} doorbell must not lie in an mmappable area (writes there are never seen)")]
    Mmapped(&'static str),
    /// The client cannot write the region.
    #[error("region {0} is not writable by the client")]
    ReadOnlyRegion(u32),
    /// A configured queue uses it, so it cannot change.
    #[error("in use by {0}")]
    InUse(QueueId),
    /// Mapping the doorbell page failed.
    #[error("doorbell page: {0}")]
    Map(#[source] RegionError),
}

/// Why a queue operation (`configure_queue`, `clear_queue`, `get_queue_info`) failed
/// (nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// Queues can be set up only once the device is configured.
    #[error("the device is {0}; queues need a configured device")]
    WrongState(DevState),
    /// The queue number is beyond the configured queue count.
    #[error("{queue} is beyond the {count} configured queues")]
    NoSuchQueue {
        /// The queue.
        queue: QueueId,
        /// Configured count.
        count: u32,
    },
    /// The queue is not configured.
    #[error("{0} is not configured")]
    NotConfigured(QueueId),
    /// The doorbell does not exist.
    #[error("no {0}")]
    UnknownDoorbell(DoorbellId),
    /// Another queue uses the doorbell.
    #[error("{doorbell} is used by {queue}")]
    DoorbellInUse {
        /// The doorbell.
        doorbell: DoorbellId,
        /// The queue using it.
        queue: QueueId,
    },
    /// Zero entries or zero-sized entries.
    #[error("a ring needs at least one entry of at least one byte")]
    EmptyRing,
    /// The ring wraps the IOVA space.
    #[error("ring at {base} of {size} x {entry_size} bytes wraps the address space")]
    RingOverflow {
        /// Ring base.
        base: Iova,
        /// Entries.
        size: u32,
        /// Entry size.
        entry_size: u32,
    },
    /// The interrupt vector does not exist.
    #[error("interrupt vector {vector} does not exist (the IRQ index has {count})")]
    NoSuchVector {
        /// The vector.
        vector: u32,
        /// Vectors of the device's queue IRQ index.
        count: u32,
    },
}

/// Why an interrupt operation (`get_irq_info`, `trigger_irq`) failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IrqError {
    /// No transport context (IRQ table) is bound yet.
    #[error("no IRQ table is bound to the device yet")]
    NoContext,
    /// The vector does not exist.
    #[error("IRQ index {index} has no vector {vector}")]
    NoSuchVector {
        /// IRQ index.
        index: u32,
        /// Vector.
        vector: u32,
    },
    /// No eventfd is bound to the vector.
    #[error("no eventfd bound to IRQ {index} vector {vector}")]
    NotBound {
        /// IRQ index.
        index: u32,
        /// Vector.
        vector: u32,
    },
    /// Writing the eventfd failed.
    #[error("signalling IRQ {index} vector {vector}: {errno}")]
    Signal {
        /// IRQ index.
        index: u32,
        /// Vector.
        vector: u32,
        /// The OS error.
        errno: Errno,
    },
}

/// Why `get_mem_table` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemTableError {
    /// No transport context (DMA table) is bound yet.
    #[error("no DMA table is bound to the device yet")]
    NoContext,
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
}

/// Why `attach_provider`/`detach_provider` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The device is closed.
    #[error("the device is closed")]
    Closed,
    /// A provider is already attached.
    #[error("a {0} provider is already attached")]
    AlreadyAttached(ProviderKind),
    /// No provider is attached.
    #[error("no provider is attached")]
    NotAttached,
    /// No transport context (DMA table) is bound yet, so there is no memory to give.
    #[error("no DMA table is bound to the device yet")]
    NoContext,
    /// Called from inside a provider callback.
    #[error("a provider cannot be attached or detached from a provider callback")]
    Reentrant,
    /// The provider's `attach` refused the device.
    #[error("the provider refused the device: {0}")]
    Rejected(String),
}

/// Why an access through a control-plane memory view failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlAccessError {
    /// The range is not part of a control-path queue's ring.
    #[error("{iova}+{len:#x} is outside the control-plane memory")]
    OutsideControlPlane {
        /// First IOVA.
        iova: Iova,
        /// Length.
        len: u64,
    },
    /// The DMA access itself failed.
    #[error(transparent)]
    Dma(#[from] DmaAccessError),
}
