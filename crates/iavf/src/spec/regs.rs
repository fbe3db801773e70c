//! BAR0 register map of an AVF virtual function (the VF view; the offsets are the same in DPDK's
//! and Linux's `iavf_register.h`), with the bit fields the drivers use, and the `VFGEN_RSTAT`
//! reset states (`enum virtchnl_vfr_states`).
//!
//! All registers are 32 bits wide. Per-queue and per-vector registers are functions of their
//! index; they return `None` for an index outside the register array.

/// Smallest BAR0 that holds the whole register map (the highest register is `VFQF_HLUT(15)` at
/// 0xD03C).
pub const BAR0_MIN_SIZE: u64 = 0x1_0000;

/// Number of TX/RX tail registers (and of queue pairs in base mode).
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// MSI-X vectors of a VF: one for the admin queue ("misc") plus one per queue pair.
pub const MAX_VECTORS: u16 = MAX_QUEUE_PAIRS + 1;

/// `IAVF_QTX_TAIL1(0)`: TX tail of queue 0; queue `q` at `+ 4*q`.
pub const QTX_TAIL1_BASE: u64 = 0x0000;
/// `IAVF_QRX_TAIL1(0)`: RX tail of queue 0; queue `q` at `+ 4*q`.
pub const QRX_TAIL1_BASE: u64 = 0x2000;
/// `IAVF_VFINT_ITRN1(0, 0)`: ITR `i` (0..3) of queue vector `n` (0..16) at `+ 64*i + 4*n`.
pub const VFINT_ITRN1_BASE: u64 = 0x2800;
/// `IAVF_VFINT_DYN_CTLN1(0)`: dynamic control of queue vector `n` (MSI-X vector `n + 1`) at
/// `+ 4*n`.
pub const VFINT_DYN_CTLN1_BASE: u64 = 0x3800;
/// `IAVF_VFINT_ICR01`: cause register of vector 0 (reading clears it).
pub const VFINT_ICR01: u64 = 0x4800;
/// `IAVF_VFINT_ITR01(0)`: ITR `i` (0..3) of vector 0 at `+ 4*i`.
pub const VFINT_ITR01_BASE: u64 = 0x4C00;
/// `IAVF_VFINT_ICR0_ENA1`: cause enable of vector 0.
pub const VFINT_ICR0_ENA1: u64 = 0x5000;
/// `IAVF_VFINT_STAT_CTL01`.
pub const VFINT_STAT_CTL01: u64 = 0x5400;
/// `IAVF_VFINT_DYN_CTL01`: dynamic control of vector 0 (same layout as `DYN_CTLN1`).
pub const VFINT_DYN_CTL01: u64 = 0x5C00;
/// `IAVF_VF_ARQBAH1`: admin receive queue base, high 32 bits.
pub const VF_ARQBAH1: u64 = 0x6000;
/// `IAVF_VF_ATQH1`: admin transmit queue head.
pub const VF_ATQH1: u64 = 0x6400;
/// `IAVF_VF_ATQLEN1`: admin transmit queue length and flags ([`AQLEN_LEN_MASK`], ...).
pub const VF_ATQLEN1: u64 = 0x6800;
/// `IAVF_VF_ARQBAL1`: admin receive queue base, low 32 bits.
pub const VF_ARQBAL1: u64 = 0x6C00;
/// `IAVF_VF_ARQT1`: admin receive queue tail.
pub const VF_ARQT1: u64 = 0x7000;
/// `IAVF_VF_ARQH1`: admin receive queue head.
pub const VF_ARQH1: u64 = 0x7400;
/// `IAVF_VF_ATQBAH1`: admin transmit queue base, high 32 bits.
pub const VF_ATQBAH1: u64 = 0x7800;
/// `IAVF_VF_ATQBAL1`: admin transmit queue base, low 32 bits.
pub const VF_ATQBAL1: u64 = 0x7C00;
/// `IAVF_VF_ARQLEN1`: admin receive queue length and flags.
pub const VF_ARQLEN1: u64 = 0x8000;
/// `IAVF_VF_ATQT1`: admin transmit queue tail.
pub const VF_ATQT1: u64 = 0x8400;
/// `IAVF_VFGEN_RSTAT`: reset state ([`RSTAT_VFR_STATE_MASK`], [`VfrState`]).
pub const VFGEN_RSTAT: u64 = 0x8800;
/// `IAVF_VFQF_HENA(0)`: RSS hash enable, low 32 bits; `HENA(1)` at `+ 4` is the high half.
pub const VFQF_HENA_BASE: u64 = 0xC400;
/// `IAVF_VFQF_HKEY(0)`: RSS key, 13 dwords.
pub const VFQF_HKEY_BASE: u64 = 0xCC00;
/// `IAVF_VFQF_HLUT(0)`: RSS lookup table, 16 dwords.
pub const VFQF_HLUT_BASE: u64 = 0xD000;

/// Number of `VFINT_ITRN1` / `VFINT_ITR01` ITR indexes.
pub const ITR_INDEXES: u16 = 3;
/// Number of `VFQF_HENA` dwords.
pub const HENA_DWORDS: u16 = 2;
/// Number of `VFQF_HKEY` dwords (the RSS key is 52 bytes).
pub const HKEY_DWORDS: u16 = 13;
/// Number of `VFQF_HLUT` dwords (the RSS LUT is 64 bytes).
pub const HLUT_DWORDS: u16 = 16;
/// RSS key size in bytes, as the register file holds it.
pub const RSS_KEY_SIZE: u16 = HKEY_DWORDS * 4;
/// RSS LUT size in entries (bytes), as the register file holds it.
pub const RSS_LUT_SIZE: u16 = HLUT_DWORDS * 4;

/// `QTX_TAIL1(q)`.
pub const fn qtx_tail(q: u16) -> Option<u64> {
    if q < MAX_QUEUE_PAIRS {
        Some(QTX_TAIL1_BASE + 4 * q as u64)
    } else {
        None
    }
}

/// `QRX_TAIL1(q)`.
pub const fn qrx_tail(q: u16) -> Option<u64> {
    if q < MAX_QUEUE_PAIRS {
        Some(QRX_TAIL1_BASE + 4 * q as u64)
    } else {
        None
    }
}

/// `VFINT_ITRN1(i, n)`.
pub const fn vfint_itrn1(i: u16, n: u16) -> Option<u64> {
    if i < ITR_INDEXES && n < MAX_QUEUE_PAIRS {
        Some(VFINT_ITRN1_BASE + 64 * i as u64 + 4 * n as u64)
    } else {
        None
    }
}

/// `VFINT_DYN_CTLN1(n)`, the control of MSI-X vector `n + 1`.
pub const fn vfint_dyn_ctln1(n: u16) -> Option<u64> {
    if n < MAX_QUEUE_PAIRS {
        Some(VFINT_DYN_CTLN1_BASE + 4 * n as u64)
    } else {
        None
    }
}

/// `VFINT_ITR01(i)`.
pub const fn vfint_itr01(i: u16) -> Option<u64> {
    if i < ITR_INDEXES {
        Some(VFINT_ITR01_BASE + 4 * i as u64)
    } else {
        None
    }
}

/// `VFQF_HENA(i)`.
pub const fn vfqf_hena(i: u16) -> Option<u64> {
    if i < HENA_DWORDS {
        Some(VFQF_HENA_BASE + 4 * i as u64)
    } else {
        None
    }
}

/// `VFQF_HKEY(i)`.
pub const fn vfqf_hkey(i: u16) -> Option<u64> {
    if i < HKEY_DWORDS {
        Some(VFQF_HKEY_BASE + 4 * i as u64)
    } else {
        None
    }
}

/// `VFQF_HLUT(i)`.
pub const fn vfqf_hlut(i: u16) -> Option<u64> {
    if i < HLUT_DWORDS {
        Some(VFQF_HLUT_BASE + 4 * i as u64)
    } else {
        None
    }
}

/// Which queue's TX tail `offset` is, if it is one.
pub const fn qtx_tail_index(offset: u64) -> Option<u16> {
    // QTX_TAIL1_BASE is 0: only the upper bound needs a check.
    if offset < QTX_TAIL1_BASE + 4 * MAX_QUEUE_PAIRS as u64 && offset.is_multiple_of(4) {
        Some((offset / 4) as u16)
    } else {
        None
    }
}

/// Which queue's RX tail `offset` is, if it is one.
pub const fn qrx_tail_index(offset: u64) -> Option<u16> {
    if offset >= QRX_TAIL1_BASE
        && offset < QRX_TAIL1_BASE + 4 * MAX_QUEUE_PAIRS as u64
        && offset.is_multiple_of(4)
    {
        Some(((offset - QRX_TAIL1_BASE) / 4) as u16)
    } else {
        None
    }
}

// ----- VFINT_DYN_CTL01 / VFINT_DYN_CTLN1 -----------------------------------------------------

/// `DYN_CTL*_INTENA`: interrupt enable.
pub const DYN_CTL_INTENA: u32 = 1 << 0;
/// `DYN_CTL*_CLEARPBA`: clear the pending bit.
pub const DYN_CTL_CLEARPBA: u32 = 1 << 1;
/// `DYN_CTL*_SWINT_TRIG`: software interrupt trigger.
pub const DYN_CTL_SWINT_TRIG: u32 = 1 << 2;
/// `DYN_CTL*_ITR_INDX` shift.
pub const DYN_CTL_ITR_INDX_SHIFT: u32 = 3;
/// `DYN_CTL*_ITR_INDX` mask (2 bits).
pub const DYN_CTL_ITR_INDX_MASK: u32 = 0x3 << DYN_CTL_ITR_INDX_SHIFT;
/// `DYN_CTL*_INTERVAL` shift.
pub const DYN_CTL_INTERVAL_SHIFT: u32 = 5;
/// `DYN_CTL*_INTERVAL` mask (12 bits).
pub const DYN_CTL_INTERVAL_MASK: u32 = 0xFFF << DYN_CTL_INTERVAL_SHIFT;
/// `DYN_CTL*_SW_ITR_INDX_ENA`.
pub const DYN_CTL_SW_ITR_INDX_ENA: u32 = 1 << 24;
/// `DYN_CTL*_SW_ITR_INDX` shift.
pub const DYN_CTL_SW_ITR_INDX_SHIFT: u32 = 25;
/// `DYN_CTL*_SW_ITR_INDX` mask (2 bits).
pub const DYN_CTL_SW_ITR_INDX_MASK: u32 = 0x3 << DYN_CTL_SW_ITR_INDX_SHIFT;
/// `DYN_CTLN1_WB_ON_ITR`: write back descriptors on ITR expiry (queue vectors only).
pub const DYN_CTLN1_WB_ON_ITR: u32 = 1 << 30;

// ----- VFINT_ICR01 / VFINT_ICR0_ENA1 ----------------------------------------------------------

/// `ICR01_QUEUE_0`.
pub const ICR01_QUEUE_0: u32 = 1 << 1;
/// `ICR01_LINK_STAT_CHANGE`.
pub const ICR01_LINK_STAT_CHANGE: u32 = 1 << 25;
/// `ICR01_ADMINQ`: the admin receive queue has something.
pub const ICR01_ADMINQ: u32 = 1 << 30;
/// `ICR0_ENA1_ADMINQ`: enable the admin-queue cause on vector 0.
pub const ICR0_ENA1_ADMINQ: u32 = 1 << 30;
/// `ICR0_ENA1_RSVD`.
pub const ICR0_ENA1_RSVD: u32 = 1 << 31;

// ----- ATQLEN1 / ARQLEN1, heads and tails ----------------------------------------------------

/// `ATQLEN/ARQLEN` length field (number of descriptors).
pub const AQLEN_LEN_MASK: u32 = 0x3FF;
/// `ATQLEN/ARQLEN` VFE: VF error.
pub const AQLEN_VFE: u32 = 1 << 28;
/// `ATQLEN/ARQLEN` OVFL: overflow.
pub const AQLEN_OVFL: u32 = 1 << 29;
/// `ATQLEN/ARQLEN` CRIT: critical error.
pub const AQLEN_CRIT: u32 = 1 << 30;
/// `ATQLEN/ARQLEN` ENABLE: the queue is enabled. Linux treats a cleared `ARQLEN` enable as a
/// hardware reset.
pub const AQLEN_ENABLE: u32 = 1 << 31;
/// `ATQH/ATQT/ARQH/ARQT` index mask.
pub const AQ_INDEX_MASK: u32 = 0x3FF;

// ----- VFGEN_RSTAT -----------------------------------------------------------------------------

/// `VFGEN_RSTAT_VFR_STATE` mask (bits 0-1).
pub const RSTAT_VFR_STATE_MASK: u32 = 0x3;

/// `enum virtchnl_vfr_states`: what `VFGEN_RSTAT` reports. The PF writes 0 when it starts a
/// reset, 1 when the reset is complete, and 2 when it sees the VF active again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum VfrState {
    /// `VIRTCHNL_VFR_INPROGRESS`.
    InProgress = 0,
    /// `VIRTCHNL_VFR_COMPLETED`.
    Completed = 1,
    /// `VIRTCHNL_VFR_VFACTIVE`.
    VfActive = 2,
}

impl VfrState {
    /// The state in a `VFGEN_RSTAT` value (`None` for 3, what a read of all-ones gives during
    /// a hardware reset).
    pub const fn from_rstat(value: u32) -> Option<Self> {
        match value & RSTAT_VFR_STATE_MASK {
            0 => Some(VfrState::InProgress),
            1 => Some(VfrState::Completed),
            2 => Some(VfrState::VfActive),
            _ => None,
        }
    }

    /// Whether a driver may proceed: reset completed or VF active (what both drivers poll for).
    pub const fn is_reset_done(self) -> bool {
        matches!(self, VfrState::Completed | VfrState::VfActive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_reference_table() {
        assert_eq!(qtx_tail(0), Some(0x0000));
        assert_eq!(qtx_tail(15), Some(0x003C));
        assert_eq!(qtx_tail(16), None);
        assert_eq!(qrx_tail(1), Some(0x2004));
        assert_eq!(qrx_tail(16), None);
        assert_eq!(vfint_itrn1(2, 15), Some(0x2800 + 128 + 60));
        assert_eq!(vfint_itrn1(3, 0), None);
        assert_eq!(vfint_dyn_ctln1(0), Some(0x3800));
        assert_eq!(vfint_dyn_ctln1(15), Some(0x383C));
        assert_eq!(vfint_dyn_ctln1(16), None);
        assert_eq!(vfint_itr01(2), Some(0x4C08));
        assert_eq!(vfqf_hena(1), Some(0xC404));
        assert_eq!(vfqf_hkey(12), Some(0xCC30));
        assert_eq!(vfqf_hkey(13), None);
        assert_eq!(vfqf_hlut(15), Some(0xD03C));
        assert!(vfqf_hlut(15).is_some_and(|o| o + 4 <= BAR0_MIN_SIZE));
        assert_eq!(RSS_KEY_SIZE, 52);
        assert_eq!(RSS_LUT_SIZE, 64);
        let aq = [
            (VF_ARQBAH1, 0x6000),
            (VF_ATQH1, 0x6400),
            (VF_ATQLEN1, 0x6800),
            (VF_ARQBAL1, 0x6C00),
            (VF_ARQT1, 0x7000),
            (VF_ARQH1, 0x7400),
            (VF_ATQBAH1, 0x7800),
            (VF_ATQBAL1, 0x7C00),
            (VF_ARQLEN1, 0x8000),
            (VF_ATQT1, 0x8400),
            (VFGEN_RSTAT, 0x8800),
            (VFINT_ICR01, 0x4800),
            (VFINT_ICR0_ENA1, 0x5000),
            (VFINT_DYN_CTL01, 0x5C00),
        ];
        for (got, want) in aq {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn tail_index_inverts_the_offset() {
        for q in 0..MAX_QUEUE_PAIRS {
            assert_eq!(qtx_tail(q).and_then(qtx_tail_index), Some(q));
            assert_eq!(qrx_tail(q).and_then(qrx_tail_index), Some(q));
        }
        assert_eq!(qtx_tail_index(0x40), None);
        assert_eq!(qtx_tail_index(0x2), None);
        assert_eq!(qrx_tail_index(0x1FFC), None);
        assert_eq!(qrx_tail_index(0x2040), None);
    }

    #[test]
    fn bit_fields_match_the_reference() {
        assert_eq!(DYN_CTL_ITR_INDX_MASK, 0x18);
        assert_eq!(DYN_CTL_INTERVAL_MASK, 0x1FFE0);
        assert_eq!(DYN_CTL_SW_ITR_INDX_MASK, 0x0600_0000);
        assert_eq!(DYN_CTLN1_WB_ON_ITR, 0x4000_0000);
        assert_eq!(ICR01_ADMINQ, 0x4000_0000);
        assert_eq!(AQLEN_ENABLE, 0x8000_0000);
    }

    #[test]
    fn rstat_states_decode() {
        assert_eq!(VfrState::from_rstat(0), Some(VfrState::InProgress));
        assert_eq!(VfrState::from_rstat(0xFFFF_FFFD), Some(VfrState::Completed));
        assert_eq!(VfrState::from_rstat(2), Some(VfrState::VfActive));
        assert_eq!(VfrState::from_rstat(0xDEAD_BEEF), None);
        assert!(!VfrState::InProgress.is_reset_done());
        assert!(VfrState::Completed.is_reset_done() && VfrState::VfActive.is_reset_done());
        assert_eq!(VfrState::VfActive as u32, 2);
    }
}
