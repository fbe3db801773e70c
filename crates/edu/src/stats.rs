//! Counters of what the edu device did, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A snapshot of the device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EduStats {
    /// BAR0 reads (including bad ones).
    pub mmio_reads: u64,
    /// BAR0 writes (including bad ones).
    pub mmio_writes: u64,
    /// DMA transfers that completed.
    pub dma_transfers: u64,
    /// DMA transfers that ended without copying (bad range or count, unmapped IOVA).
    pub dma_errors: u64,
    /// Interrupts the device tried to signal (MSI or INTx).
    pub irqs_raised: u64,
    /// Of those, the ones nobody received: no eventfd bound, or INTx disabled.
    pub irqs_undelivered: u64,
    /// BAR0 accesses of a wrong size or alignment.
    pub bad_accesses: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) mmio_reads: AtomicU64,
    pub(crate) mmio_writes: AtomicU64,
    pub(crate) dma_transfers: AtomicU64,
    pub(crate) dma_errors: AtomicU64,
    pub(crate) irqs_raised: AtomicU64,
    pub(crate) irqs_undelivered: AtomicU64,
    pub(crate) bad_accesses: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A shared handle on a device's counters; clone it before giving the device to the server.
#[derive(Debug, Clone, Default)]
pub struct EduStatsHandle(pub(crate) Arc<Counters>);

impl EduStatsHandle {
    /// The counters now (each read on its own; they are not a consistent cut).
    pub fn snapshot(&self) -> EduStats {
        let c = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EduStats {
            mmio_reads: load(&c.mmio_reads),
            mmio_writes: load(&c.mmio_writes),
            dma_transfers: load(&c.dma_transfers),
            dma_errors: load(&c.dma_errors),
            irqs_raised: load(&c.irqs_raised),
            irqs_undelivered: load(&c.irqs_undelivered),
            bad_accesses: load(&c.bad_accesses),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sees_bumps_through_clones() {
        let h = EduStatsHandle::default();
        let h2 = h.clone();
        Counters::bump(&h.0.dma_errors);
        Counters::bump(&h.0.dma_errors);
        Counters::bump(&h.0.bad_accesses);
        let s = h2.snapshot();
        assert_eq!(s.dma_errors, 2);
        assert_eq!(s.bad_accesses, 1);
        assert_eq!(s.mmio_reads, 0);
    }
}
