//! Queues: a descriptor ring in client memory, its doorbell and its interrupt vector.
//!
//! A device's control plane configures queues at run time, when the client's driver tells it
//! where a ring lives (for iavf, the admin queue registers and `VIRTCHNL_OP_CONFIG_VSI_QUEUES`),
//! through [`crate::EmuDev::configure_queue`]. Each queue says whether it carries data or
//! control traffic ([`QueuePath`]); the framework uses that to decide which memory a hardware
//! data-path provider may see (only the rings of control-path queues).

use std::fmt;

use emudev_dma::Iova;

use crate::doorbell::DoorbellId;

/// A queue number, unique within one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u32);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue {}", self.0)
    }
}

/// What a queue is for. `Other` is free-form for device types this list does not name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Receive ring (device to driver).
    Rx,
    /// Transmit ring (driver to device).
    Tx,
    /// Admin / mailbox queue (control messages).
    Admin,
    /// Anything else, named by the device.
    Other(String),
}

impl QueueKind {
    /// The path a queue of this kind takes unless the device says otherwise: admin queues are
    /// control path, everything else data path.
    pub fn default_path(&self) -> QueuePath {
        match self {
            QueueKind::Admin => QueuePath::Control,
            QueueKind::Rx | QueueKind::Tx | QueueKind::Other(_) => QueuePath::Data,
        }
    }
}

/// Whether a queue belongs to the data path or the control path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueuePath {
    /// Packets/blocks: handled by hardware behind an IOMMU when the provider is hardware.
    Data,
    /// Control messages: always handled in software, so their rings are visible to every
    /// provider.
    Control,
}

/// A range of IOVAs, `[start, start + len)`. Never wraps once validated by the framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IovaRange {
    /// First IOVA.
    pub start: Iova,
    /// Length in bytes.
    pub len: u64,
}

impl IovaRange {
    /// `[start, start + len)`.
    pub const fn new(start: Iova, len: u64) -> Self {
        IovaRange { start, len }
    }

    /// One past the last IOVA, or `None` if the range wraps the address space.
    pub fn end(&self) -> Option<u64> {
        self.start.raw().checked_add(self.len)
    }

    /// Whether `[iova, iova + len)` lies entirely inside this range.
    pub fn contains(&self, iova: Iova, len: u64) -> bool {
        let (Some(end), Some(want_end)) = (self.end(), iova.raw().checked_add(len)) else {
            return false;
        };
        iova.raw() >= self.start.raw() && want_end <= end
    }
}

/// What a device's control plane tells the framework about one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// What the queue is for.
    pub kind: QueueKind,
    /// Data or control path (defaults from `kind`).
    pub path: QueuePath,
    /// IOVA of the first ring entry.
    pub base: Iova,
    /// Number of ring entries (non-zero).
    pub size: u32,
    /// Bytes per ring entry (non-zero; 32 for an iavf admin descriptor, 16 or 32 for data).
    pub entry_size: u32,
    /// The doorbell the driver rings for this queue (its tail register).
    pub doorbell: DoorbellId,
    /// The interrupt vector of the device's queue IRQ index (usually MSI-X), if any.
    pub irq_vector: Option<u32>,
}

impl QueueConfig {
    /// A queue of `kind` with `size` entries of `entry_size` bytes at `base`, rung through
    /// `doorbell`; the path follows the kind and there is no interrupt vector.
    pub fn new(
        kind: QueueKind,
        base: Iova,
        size: u32,
        entry_size: u32,
        doorbell: DoorbellId,
    ) -> Self {
        let path = kind.default_path();
        QueueConfig {
            kind,
            path,
            base,
            size,
            entry_size,
            doorbell,
            irq_vector: None,
        }
    }

    /// Overrides the data/control path.
    pub fn with_path(mut self, path: QueuePath) -> Self {
        self.path = path;
        self
    }

    /// Sets the interrupt vector.
    pub fn with_irq(mut self, vector: u32) -> Self {
        self.irq_vector = Some(vector);
        self
    }

    /// Ring length in bytes, or `None` on overflow.
    pub fn ring_bytes(&self) -> Option<u64> {
        u64::from(self.size).checked_mul(u64::from(self.entry_size))
    }
}

/// A configured queue, as [`crate::EmuDev::get_queue_info`] and providers see it.
///
/// The framework has checked that the ring is non-empty and does not wrap the IOVA space; it
/// has not checked that the ring is mapped (the client may map it later, or unmap it: every
/// access through the DMA table is checked anyway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue number.
    pub id: QueueId,
    /// What the queue is for.
    pub kind: QueueKind,
    /// Data or control path.
    pub path: QueuePath,
    /// IOVA of the first ring entry.
    pub base: Iova,
    /// Number of ring entries.
    pub size: u32,
    /// Bytes per ring entry.
    pub entry_size: u32,
    /// The queue's doorbell.
    pub doorbell: DoorbellId,
    /// Its interrupt vector, if any.
    pub irq_vector: Option<u32>,
}

impl QueueInfo {
    pub(crate) fn new(id: QueueId, c: QueueConfig) -> Self {
        QueueInfo {
            id,
            kind: c.kind,
            path: c.path,
            base: c.base,
            size: c.size,
            entry_size: c.entry_size,
            doorbell: c.doorbell,
            irq_vector: c.irq_vector,
        }
    }

    /// The IOVA range of the ring (`size * entry_size` bytes from `base`).
    pub fn ring(&self) -> IovaRange {
        // Validated at configuration: the product does not overflow and the range does not wrap.
        IovaRange::new(self.base, u64::from(self.size) * u64::from(self.entry_size))
    }

    /// IOVA of ring entry `index`, or `None` when `index >= size`.
    pub fn entry(&self, index: u32) -> Option<Iova> {
        (index < self.size)
            .then(|| Iova(self.base.raw() + u64::from(index) * u64::from(self.entry_size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_default_to_their_path() {
        assert_eq!(QueueKind::Admin.default_path(), QueuePath::Control);
        assert_eq!(QueueKind::Rx.default_path(), QueuePath::Data);
        assert_eq!(QueueKind::Tx.default_path(), QueuePath::Data);
        assert_eq!(
            QueueKind::Other("event".into()).default_path(),
            QueuePath::Data
        );
        let c = QueueConfig::new(QueueKind::Admin, Iova(0x1000), 64, 32, DoorbellId(0));
        assert_eq!(c.path, QueuePath::Control);
        assert_eq!(c.irq_vector, None);
        let c = c.with_path(QueuePath::Data).with_irq(3);
        assert_eq!(c.path, QueuePath::Data);
        assert_eq!(c.irq_vector, Some(3));
        assert_eq!(c.ring_bytes(), Some(2048));
        let huge = QueueConfig::new(QueueKind::Tx, Iova(0), u32::MAX, u32::MAX, DoorbellId(0));
        assert_eq!(
            huge.ring_bytes(),
            Some(u64::from(u32::MAX) * u64::from(u32::MAX))
        );
    }

    #[test]
    fn range_containment() {
        let r = IovaRange::new(Iova(0x1000), 0x100);
        assert_eq!(r.end(), Some(0x1100));
        assert!(r.contains(Iova(0x1000), 0x100));
        assert!(r.contains(Iova(0x10ff), 1));
        assert!(r.contains(Iova(0x1100), 0));
        assert!(!r.contains(Iova(0x10ff), 2));
        assert!(!r.contains(Iova(0xfff), 1));
        assert!(!r.contains(Iova(u64::MAX), 2));
        let wrapping = IovaRange::new(Iova(u64::MAX), 2);
        assert_eq!(wrapping.end(), None);
        assert!(!wrapping.contains(Iova(u64::MAX), 1));
    }

    #[test]
    fn entries_and_ring() {
        let q = QueueInfo::new(
            QueueId(1),
            QueueConfig::new(QueueKind::Tx, Iova(0x2000), 4, 16, DoorbellId(1)),
        );
        assert_eq!(q.ring(), IovaRange::new(Iova(0x2000), 64));
        assert_eq!(q.entry(0), Some(Iova(0x2000)));
        assert_eq!(q.entry(3), Some(Iova(0x2030)));
        assert_eq!(q.entry(4), None);
        assert_eq!(QueueId(7).to_string(), "queue 7");
    }
}
