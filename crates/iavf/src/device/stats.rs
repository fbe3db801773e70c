//! Counters: what the emulated VF did ([`IavfStats`], for diagnostics and tests) and the VSI's
//! Ethernet statistics ([`VsiStats`], what `VIRTCHNL_OP_GET_STATS` reports, filled by the data
//! path). Both are atomics, readable and writable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::spec::virtchnl::EthStats;

/// A snapshot of the device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IavfStats {
    /// BAR0 reads.
    pub mmio_reads: u64,
    /// BAR0 writes.
    pub mmio_writes: u64,
    /// BAR0 accesses of a size or alignment other than one aligned dword (read all-ones,
    /// written nowhere).
    pub bad_accesses: u64,
    /// Admin transmit queue descriptors completed.
    pub aq_commands: u64,
    /// Admin-queue faults: a ring or buffer outside mapped memory, a bad opcode, length or tail,
    /// DMA while bus mastering is off, an unusable ARQ entry.
    pub aq_errors: u64,
    /// virtchnl messages handled with status SUCCESS (RESET_VF included).
    pub vc_ok: u64,
    /// virtchnl messages refused with an error status (bad length, bad id, before VERSION,
    /// not supported, ...).
    pub vc_errors: u64,
    /// Of `vc_errors`, those refused as NOT_SUPPORTED (unknown op, capability not granted).
    pub vc_not_supported: u64,
    /// Messages written to the admin receive queue (replies and events).
    pub arq_delivered: u64,
    /// Messages dropped because too many waited for ARQ buffers (ARQLEN OVFL is set).
    pub arq_dropped: u64,
    /// VF resets (RESET_VF, DEVICE_RESET, client disconnect).
    pub vf_resets: u64,
    /// LINK_CHANGE events queued.
    pub link_events: u64,
    /// Interrupts the device tried to signal (deferred queue interrupts included, when they
    /// went out).
    pub irqs_raised: u64,
    /// Of those, the ones that reached no eventfd now (MSI-X disabled, no eventfd bound) —
    /// a masked vector left pending is not counted here.
    pub irqs_undelivered: u64,
    /// Queue interrupt raises folded into one already pending on their vector (ITR
    /// moderation: several raises in one window make one interrupt).
    pub irqs_coalesced: u64,
    /// Queue interrupts held by ITR moderation that fired at the end of their window (also
    /// counted in `irqs_raised`).
    pub irqs_deferred: u64,
    /// Queue or attribute updates the emudev object model refused (a device bug if non-zero).
    pub emu_errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) mmio_reads: AtomicU64,
    pub(crate) mmio_writes: AtomicU64,
    pub(crate) bad_accesses: AtomicU64,
    pub(crate) aq_commands: AtomicU64,
    pub(crate) aq_errors: AtomicU64,
    pub(crate) vc_ok: AtomicU64,
    pub(crate) vc_errors: AtomicU64,
    pub(crate) vc_not_supported: AtomicU64,
    pub(crate) arq_delivered: AtomicU64,
    pub(crate) arq_dropped: AtomicU64,
    pub(crate) vf_resets: AtomicU64,
    pub(crate) link_events: AtomicU64,
    pub(crate) irqs_raised: AtomicU64,
    pub(crate) irqs_undelivered: AtomicU64,
    pub(crate) irqs_coalesced: AtomicU64,
    pub(crate) irqs_deferred: AtomicU64,
    pub(crate) emu_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> IavfStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IavfStats {
            mmio_reads: load(&self.mmio_reads),
            mmio_writes: load(&self.mmio_writes),
            bad_accesses: load(&self.bad_accesses),
            aq_commands: load(&self.aq_commands),
            aq_errors: load(&self.aq_errors),
            vc_ok: load(&self.vc_ok),
            vc_errors: load(&self.vc_errors),
            vc_not_supported: load(&self.vc_not_supported),
            arq_delivered: load(&self.arq_delivered),
            arq_dropped: load(&self.arq_dropped),
            vf_resets: load(&self.vf_resets),
            link_events: load(&self.link_events),
            irqs_raised: load(&self.irqs_raised),
            irqs_undelivered: load(&self.irqs_undelivered),
            irqs_coalesced: load(&self.irqs_coalesced),
            irqs_deferred: load(&self.irqs_deferred),
            emu_errors: load(&self.emu_errors),
        }
    }
}

/// The VSI's Ethernet counters (`struct virtchnl_eth_stats`), zero until a data path adds to
/// them. A data path bumps the fields directly (`fetch_add`, relaxed); `GET_STATS` replies with a
/// [`VsiStats::snapshot`]. A VF reset zeroes them.
#[derive(Debug, Default)]
pub struct VsiStats {
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Unicast packets received.
    pub rx_unicast: AtomicU64,
    /// Multicast packets received.
    pub rx_multicast: AtomicU64,
    /// Broadcast packets received.
    pub rx_broadcast: AtomicU64,
    /// Received packets dropped (no RX buffer, say).
    pub rx_discards: AtomicU64,
    /// Received packets of an unknown protocol.
    pub rx_unknown_protocol: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Unicast packets sent.
    pub tx_unicast: AtomicU64,
    /// Multicast packets sent.
    pub tx_multicast: AtomicU64,
    /// Broadcast packets sent.
    pub tx_broadcast: AtomicU64,
    /// Packets to send that were dropped.
    pub tx_discards: AtomicU64,
    /// Send errors.
    pub tx_errors: AtomicU64,
}

impl VsiStats {
    fn fields(&self) -> [&AtomicU64; 12] {
        [
            &self.rx_bytes,
            &self.rx_unicast,
            &self.rx_multicast,
            &self.rx_broadcast,
            &self.rx_discards,
            &self.rx_unknown_protocol,
            &self.tx_bytes,
            &self.tx_unicast,
            &self.tx_multicast,
            &self.tx_broadcast,
            &self.tx_discards,
            &self.tx_errors,
        ]
    }

    /// The counters now, as GET_STATS reports them (each read on its own).
    pub fn snapshot(&self) -> EthStats {
        let [a, b, c, d, e, f, g, h, i, j, k, l] = self.fields().map(|x| x.load(Ordering::Relaxed));
        EthStats {
            rx_bytes: a,
            rx_unicast: b,
            rx_multicast: c,
            rx_broadcast: d,
            rx_discards: e,
            rx_unknown_protocol: f,
            tx_bytes: g,
            tx_unicast: h,
            tx_multicast: i,
            tx_broadcast: j,
            tx_discards: k,
            tx_errors: l,
        }
    }

    /// Zeroes every counter.
    pub fn clear(&self) {
        for f in self.fields() {
            f.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsi_stats_snapshot_maps_each_field_and_clears() {
        let s = VsiStats::default();
        for (i, f) in s.fields().iter().enumerate() {
            f.store(i as u64 + 1, Ordering::Relaxed);
        }
        let snap = s.snapshot();
        assert_eq!(snap.rx_bytes, 1);
        assert_eq!(snap.rx_unknown_protocol, 6);
        assert_eq!(snap.tx_bytes, 7);
        assert_eq!(snap.tx_errors, 12);
        s.clear();
        assert_eq!(s.snapshot(), EthStats::default());
    }

    #[test]
    fn counters_snapshot_sees_bumps() {
        let c = Counters::default();
        Counters::bump(&c.vc_errors);
        Counters::bump(&c.vc_errors);
        Counters::bump(&c.aq_errors);
        let s = c.snapshot();
        assert_eq!((s.vc_errors, s.aq_errors, s.vc_ok), (2, 1, 0));
    }

    #[test]
    fn moderation_counters_are_snapshotted_apart() {
        let c = Counters::default();
        Counters::bump(&c.irqs_coalesced);
        Counters::bump(&c.irqs_coalesced);
        Counters::bump(&c.irqs_coalesced);
        Counters::bump(&c.irqs_deferred);
        Counters::bump(&c.irqs_raised);
        let s = c.snapshot();
        assert_eq!(
            (
                s.irqs_raised,
                s.irqs_coalesced,
                s.irqs_deferred,
                s.irqs_undelivered
            ),
            (1, 3, 1, 0)
        );
        assert_eq!(
            IavfStats {
                irqs_coalesced: 3,
                irqs_deferred: 1,
                irqs_raised: 1,
                ..Default::default()
            },
            s
        );
    }
}
