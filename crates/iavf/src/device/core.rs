//! The VF's state behind one lock ([`Core`]): the BAR0 register file, the admin-queue engine,
//! interrupt gating and moderation (the ITR rules are in `itr.rs`), and the VF reset. The
//! virtchnl handlers are in `vc.rs`.
//!
//! Core methods never call into the emudev object model: what should change there is collected
//! as [`EmuOp`]s in the [`Io`] and applied by the caller after the lock is released, because
//! emudev delivers events (and provider callbacks) synchronously, and a subscriber may call back
//! into the device.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use emudev::{AttrValue, QueueConfig, QueueId, QueueKind, RegionMapping};
use emudev_dma::Iova;
use emudev_pci::{FireOutcome, IrqSink, MsixTable};
use emudev_vfio_user::DeviceContext;

use super::itr::{itr_interval, Decision, Moderator};
use super::queue_ids;
use super::stats::{Counters, VsiStats};
use super::{IavfSnapshot, IrqOutcome, RxQueueState, TxQueueState, ARQ_PENDING_MAX};
use crate::spec::aq::{self, rc, AqDesc};
use crate::spec::regs::*;
use crate::spec::virtchnl::{pctype, VersionInfo, VirtchnlStatus};

/// A change to apply to the emudev object model once the core lock is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EmuOp {
    /// `configure_queue`.
    Configure(QueueId, QueueConfig),
    /// `clear_queue` (a queue that is not configured is fine).
    Clear(QueueId),
    /// `update_attr`.
    Attr(&'static str, AttrValue),
}

/// What a core method may use besides the core: client memory and interrupts (absent before a
/// transport is bound), counters, and the list of emudev changes it wants.
pub(crate) struct Io<'a> {
    pub(crate) ctx: Option<&'a DeviceContext>,
    pub(crate) msix: &'a MsixTable,
    pub(crate) counters: &'a Counters,
    pub(crate) vsi_stats: &'a VsiStats,
    /// The command register's bus-master bit.
    pub(crate) bus_master: bool,
    pub(crate) ops: Vec<EmuOp>,
}

/// Why a DMA access of the admin-queue engine failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DmaFault {
    /// No transport bound yet.
    NoContext,
    /// The range is not (entirely) mapped, not permitted, or wraps.
    Access,
}

impl Io<'_> {
    pub(crate) fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let ctx = self.ctx.ok_or(DmaFault::NoContext)?;
        if iova.checked_add(buf.len() as u64).is_none() {
            return Err(DmaFault::Access);
        }
        ctx.dma.read(Iova(iova), buf).map_err(|e| {
            log::debug!("iavf: DMA read of {:#x} bytes at {iova:#x}: {e}", buf.len());
            DmaFault::Access
        })
    }

    pub(crate) fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let ctx = self.ctx.ok_or(DmaFault::NoContext)?;
        if iova.checked_add(data.len() as u64).is_none() {
            return Err(DmaFault::Access);
        }
        ctx.dma.write(Iova(iova), data).map_err(|e| {
            log::debug!(
                "iavf: DMA write of {:#x} bytes at {iova:#x}: {e}",
                data.len()
            );
            DmaFault::Access
        })
    }

    /// Fires MSI-X `vector`; counts it, and counts it undelivered when it reached nobody.
    pub(crate) fn fire(&self, vector: u16) -> Option<FireOutcome> {
        Counters::bump(&self.counters.irqs_raised);
        let Some(ctx) = self.ctx else {
            Counters::bump(&self.counters.irqs_undelivered);
            return None;
        };
        match self.msix.fire(vector, &mut IrqSink::msix(&ctx.irqs)) {
            Ok(FireOutcome::Delivered) => Some(FireOutcome::Delivered),
            Ok(FireOutcome::Pending) => Some(FireOutcome::Pending),
            Ok(FireOutcome::Disabled) => {
                Counters::bump(&self.counters.irqs_undelivered);
                Some(FireOutcome::Disabled)
            }
            Err(e) => {
                Counters::bump(&self.counters.irqs_undelivered);
                log::debug!("iavf: MSI-X vector {vector} not delivered: {e}");
                None
            }
        }
    }
}

/// One admin queue's registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AqRegs {
    pub(crate) bal: u32,
    pub(crate) bah: u32,
    pub(crate) len: u32,
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

impl AqRegs {
    pub(crate) fn entries(&self) -> u32 {
        self.len & AQLEN_LEN_MASK
    }

    pub(crate) fn enabled(&self) -> bool {
        self.len & AQLEN_ENABLE != 0 && self.entries() > 0
    }

    pub(crate) fn base(&self) -> u64 {
        (u64::from(self.bah) << 32) | u64::from(self.bal)
    }

    /// IOVA of descriptor `index`, if it does not wrap.
    fn desc(&self, index: u32) -> Option<u64> {
        self.base()
            .checked_add(u64::from(index) * aq::DESC_SIZE as u64)
    }

    /// The emudev queue for this ring, if enabled and it does not wrap the IOVA space.
    fn queue_config(&self, kind_arq: bool) -> Option<QueueConfig> {
        if !self.enabled() {
            return None;
        }
        self.base()
            .checked_add(u64::from(self.entries()) * aq::DESC_SIZE as u64)?;
        let (db, cfg) = if kind_arq {
            (queue_ids::ARQ_DOORBELL, Some(0))
        } else {
            (queue_ids::ATQ_DOORBELL, None)
        };
        let q = QueueConfig::new(
            QueueKind::Admin,
            Iova(self.base()),
            self.entries(),
            aq::DESC_SIZE as u32,
            db,
        );
        Some(match cfg {
            Some(v) => q.with_irq(v),
            None => q,
        })
    }
}

/// A message for the VF waiting for an ARQ entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArqMessage {
    pub(crate) op: u32,
    pub(crate) status: VirtchnlStatus,
    pub(crate) body: Vec<u8>,
}

/// The virtchnl-level state of the VF.
#[derive(Debug, Clone)]
pub(crate) struct VfState {
    pub(crate) version: Option<VersionInfo>,
    pub(crate) caps: u32,
    pub(crate) tx: Vec<TxQueueState>,
    pub(crate) rx: Vec<RxQueueState>,
    pub(crate) macs: BTreeSet<[u8; 6]>,
    pub(crate) vlans: BTreeSet<u16>,
    pub(crate) promisc: u16,
    pub(crate) vlan_strip: bool,
    /// A LINK_CHANGE went out since queues were first enabled.
    pub(crate) link_reported: bool,
    /// Per queue pair, the TX and RX ring heads a data path left when it stopped servicing
    /// the queue (detached, or the queue disabled); a data path taking the queue over
    /// continues from there. ENABLE_QUEUES clears them (a queue starts at 0, as on hardware).
    pub(crate) parked: Vec<[Option<u32>; 2]>,
}

impl VfState {
    fn new(queues: u16, mac: [u8; 6]) -> Self {
        VfState {
            version: None,
            caps: 0,
            tx: vec![TxQueueState::default(); usize::from(queues)],
            rx: vec![RxQueueState::default(); usize::from(queues)],
            macs: BTreeSet::from([mac]),
            vlans: BTreeSet::new(),
            promisc: 0,
            vlan_strip: false,
            link_reported: false,
            parked: vec![[None; 2]; usize::from(queues)],
        }
    }
}

/// RSS state, shared by virtchnl (RSS_PF) and the `VFQF_*` registers (RSS_REG).
#[derive(Debug, Clone)]
pub(crate) struct Rss {
    pub(crate) key: [u8; RSS_KEY_SIZE as usize],
    pub(crate) lut: [u8; RSS_LUT_SIZE as usize],
    pub(crate) hena: u64,
}

impl Rss {
    fn new(queues: u16) -> Self {
        let mut lut = [0u8; RSS_LUT_SIZE as usize];
        for (i, e) in lut.iter_mut().enumerate() {
            *e = (i % usize::from(queues.max(1))) as u8;
        }
        Rss {
            key: [0; RSS_KEY_SIZE as usize],
            lut,
            hena: pctype::DEFAULT_HENA,
        }
    }
}

/// The whole VF.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) queues: u16,
    pub(crate) mac: [u8; 6],
    pub(crate) mtu: u16,
    pub(crate) rstat: VfrState,
    pub(crate) atq: AqRegs,
    pub(crate) arq: AqRegs,
    icr01: u32,
    icr0_ena1: u32,
    dyn_ctl01: u32,
    stat_ctl01: u32,
    itr01: [u32; ITR_INDEXES as usize],
    /// A vector-0 cause was raised while the vector was gated off.
    misc_pending: bool,
    dyn_ctln1: [u32; MAX_QUEUE_PAIRS as usize],
    itrn1: [[u32; MAX_QUEUE_PAIRS as usize]; ITR_INDEXES as usize],
    /// ITR moderation of each MSI-X vector (0..=16) for queue interrupts.
    moderators: [Moderator; MAX_VECTORS as usize],
    /// A queue cause was raised on the vector (1..=16) while `DYN_CTLN1.INTENA` was off: its
    /// pending-bit. The interrupt fires when the driver enables the vector again, unless that
    /// write also sets CLEARPBA.
    queue_pending: [bool; MAX_VECTORS as usize],
    tx_tail: [u32; MAX_QUEUE_PAIRS as usize],
    rx_tail: [u32; MAX_QUEUE_PAIRS as usize],
    /// With doorbell pages: BAR0's mmapped tail pages, where the tails really live (a client's
    /// mmapped stores land there; trapped writes are copied there).
    tail_page: Option<RegionMapping>,
    pub(crate) rss: Rss,
    pub(crate) vf: VfState,
    pub(crate) link_up: bool,
    pub(crate) arq_pending: VecDeque<ArqMessage>,
}

/// `DYN_CTL*` bits that are actions, not state (they read 0).
const DYN_CTL_ACTIONS: u32 = DYN_CTL_CLEARPBA | DYN_CTL_SWINT_TRIG;
/// `ITR*` interval field.
const ITR_MASK: u32 = 0xFFF;

impl Core {
    pub(crate) fn new(queues: u16, mac: [u8; 6], mtu: u16) -> Self {
        Core {
            queues,
            mac,
            mtu,
            rstat: VfrState::VfActive,
            atq: AqRegs::default(),
            arq: AqRegs::default(),
            icr01: 0,
            icr0_ena1: 0,
            dyn_ctl01: 0,
            stat_ctl01: 0,
            itr01: [0; ITR_INDEXES as usize],
            misc_pending: false,
            dyn_ctln1: [0; MAX_QUEUE_PAIRS as usize],
            itrn1: [[0; MAX_QUEUE_PAIRS as usize]; ITR_INDEXES as usize],
            moderators: [Moderator::default(); MAX_VECTORS as usize],
            queue_pending: [false; MAX_VECTORS as usize],
            tx_tail: [0; MAX_QUEUE_PAIRS as usize],
            rx_tail: [0; MAX_QUEUE_PAIRS as usize],
            tail_page: None,
            rss: Rss::new(queues),
            vf: VfState::new(queues, mac),
            link_up: true,
            arq_pending: VecDeque::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> IavfSnapshot {
        IavfSnapshot {
            rstat: self.rstat,
            version: self.vf.version,
            caps: self.vf.caps,
            tx: self.vf.tx.clone(),
            rx: self.vf.rx.clone(),
            macs: self.vf.macs.iter().copied().collect(),
            vlans: self.vf.vlans.iter().copied().collect(),
            promisc: self.vf.promisc,
            vlan_strip: self.vf.vlan_strip,
            rss_key: self.rss.key.to_vec(),
            rss_lut: self.rss.lut.to_vec(),
            hena: self.rss.hena,
            link_up: self.link_up,
            arq_pending: self.arq_pending.len(),
            atq_len: self.atq.len,
            arq_len: self.arq.len,
            atq_head: self.atq.head,
            arq_head: self.arq.head,
        }
    }

    /// `QTX_TAIL1(q)` and `QRX_TAIL1(q)` as last written, for a data path taking over a queue.
    pub(crate) fn tails(&self, q: u16) -> Option<(u32, u32)> {
        let i = usize::from(q);
        let (tx, rx) = (*self.tx_tail.get(i)?, *self.rx_tail.get(i)?);
        if self.tail_page.is_some() {
            let page = |off: Option<u64>| off.and_then(|o| self.page_load(o));
            return Some((
                page(qtx_tail(q)).unwrap_or(tx),
                page(qrx_tail(q)).unwrap_or(rx),
            ));
        }
        Some((tx, rx))
    }

    /// Keeps the tails on `page` (BAR0's mmapped doorbell pages) from now on.
    pub(crate) fn set_tail_page(&mut self, page: RegionMapping) {
        self.tail_page = Some(page);
    }

    /// A tail word on the doorbell pages (acquire), if they exist and hold `off`.
    fn page_load(&self, off: u64) -> Option<u32> {
        let (mem, o) = self.tail_page.as_ref()?.area_at(off, 4)?;
        mem.load_u32(o, Ordering::Acquire).ok().map(u32::from_le)
    }

    /// Stores a tail word on the doorbell pages (release), if they exist and hold `off`.
    fn page_store(&self, off: u64, v: u32) {
        if let Some((mem, o)) = self.tail_page.as_ref().and_then(|p| p.area_at(off, 4)) {
            // Inside the area by construction: cannot fail.
            let _ = mem.store_u32(o, v.to_le(), Ordering::Release);
        }
    }

    // ----- registers ---------------------------------------------------------------------------

    /// A 4-byte register read at `off` (aligned, inside BAR0). Unknown offsets read 0.
    pub(crate) fn reg_read(&mut self, off: u64) -> u32 {
        if let Some(q) = qtx_tail_index(off) {
            return self.page_load(off).unwrap_or(self.tx_tail[usize::from(q)]);
        }
        if let Some(q) = qrx_tail_index(off) {
            return self.page_load(off).unwrap_or(self.rx_tail[usize::from(q)]);
        }
        if let Some((i, n)) = itrn1_index(off) {
            return self.itrn1[i][n];
        }
        if let Some(n) = dyn_ctln1_index(off) {
            return self.dyn_ctln1[n];
        }
        if let Some(i) = dword_index(off, VFINT_ITR01_BASE, ITR_INDEXES) {
            return self.itr01[i];
        }
        if let Some(i) = dword_index(off, VFQF_HENA_BASE, HENA_DWORDS) {
            return (self.rss.hena >> (32 * i)) as u32;
        }
        if let Some(i) = dword_index(off, VFQF_HKEY_BASE, HKEY_DWORDS) {
            return dword_of(&self.rss.key, i);
        }
        if let Some(i) = dword_index(off, VFQF_HLUT_BASE, HLUT_DWORDS) {
            return dword_of(&self.rss.lut, i);
        }
        match off {
            VFGEN_RSTAT => self.rstat as u32,
            VF_ATQBAL1 => self.atq.bal,
            VF_ATQBAH1 => self.atq.bah,
            VF_ATQLEN1 => self.atq.len,
            VF_ATQH1 => self.atq.head,
            VF_ATQT1 => self.atq.tail,
            VF_ARQBAL1 => self.arq.bal,
            VF_ARQBAH1 => self.arq.bah,
            VF_ARQLEN1 => self.arq.len,
            VF_ARQH1 => self.arq.head,
            VF_ARQT1 => self.arq.tail,
            // "These reads clear the registers" (Linux iavf_msix_aq).
            VFINT_ICR01 => std::mem::take(&mut self.icr01),
            VFINT_ICR0_ENA1 => std::mem::take(&mut self.icr0_ena1),
            VFINT_DYN_CTL01 => self.dyn_ctl01,
            VFINT_STAT_CTL01 => self.stat_ctl01,
            _ => 0,
        }
    }

    /// A 4-byte register write of `v` at `off`.
    pub(crate) fn reg_write(&mut self, io: &mut Io, off: u64, v: u32) {
        if let Some(q) = qtx_tail_index(off) {
            self.tx_tail[usize::from(q)] = v;
            self.page_store(off, v);
            return;
        }
        if let Some(q) = qrx_tail_index(off) {
            self.rx_tail[usize::from(q)] = v;
            self.page_store(off, v);
            return;
        }
        if let Some((i, n)) = itrn1_index(off) {
            self.itrn1[i][n] = v & ITR_MASK;
            return;
        }
        if let Some(n) = dyn_ctln1_index(off) {
            self.dyn_ctln1[n] = v & !DYN_CTL_ACTIONS;
            if let Some((i, interval)) = dyn_ctl_itr_update(v) {
                self.itrn1[i][n] = interval;
            }
            // WB_ON_ITR (bit 30) is stored and needs nothing more: the data path writes every
            // descriptor back at once, so there is never a write-back left for the ITR.
            // n < 16, so the vector fits.
            let vector = n as u16 + 1;
            let pending = &mut self.queue_pending[usize::from(vector)];
            if v & DYN_CTL_CLEARPBA != 0 {
                *pending = false;
            }
            if v & DYN_CTL_INTENA != 0 && (v & DYN_CTL_SWINT_TRIG != 0 || *pending) {
                // A cause that came while the vector was off fires now, as the PBA bit of a
                // masked MSI-X vector does: Linux re-enables the vector after its NAPI poll saw
                // the ring empty, and a frame written in between would otherwise wait for the
                // next interrupt (seen as multi-second ping times with 4 queue pairs).
                *pending = false;
                io.fire(vector);
            }
            return;
        }
        if let Some(i) = dword_index(off, VFINT_ITR01_BASE, ITR_INDEXES) {
            self.itr01[i] = v & ITR_MASK;
            return;
        }
        if let Some(i) = dword_index(off, VFQF_HENA_BASE, HENA_DWORDS) {
            let shift = 32 * i;
            self.rss.hena = (self.rss.hena & !(0xFFFF_FFFFu64 << shift)) | (u64::from(v) << shift);
            return;
        }
        if let Some(i) = dword_index(off, VFQF_HKEY_BASE, HKEY_DWORDS) {
            set_dword(&mut self.rss.key, i, v);
            return;
        }
        if let Some(i) = dword_index(off, VFQF_HLUT_BASE, HLUT_DWORDS) {
            set_dword(&mut self.rss.lut, i, v);
            return;
        }
        match off {
            VF_ATQBAL1 => {
                self.atq.bal = v;
                self.admin_queue_changed(io, false);
            }
            VF_ATQBAH1 => {
                self.atq.bah = v;
                self.admin_queue_changed(io, false);
            }
            VF_ATQLEN1 => {
                self.atq.len = v;
                if self.atq.enabled() && self.rstat == VfrState::Completed {
                    // The PF sees the VF active again.
                    self.rstat = VfrState::VfActive;
                }
                self.admin_queue_changed(io, false);
            }
            VF_ATQH1 => self.atq.head = v & AQ_INDEX_MASK,
            VF_ATQT1 => {
                self.atq.tail = v & AQ_INDEX_MASK;
                self.process_atq(io);
            }
            VF_ARQBAL1 => {
                self.arq.bal = v;
                self.admin_queue_changed(io, true);
            }
            VF_ARQBAH1 => {
                self.arq.bah = v;
                self.admin_queue_changed(io, true);
            }
            VF_ARQLEN1 => {
                self.arq.len = v;
                self.admin_queue_changed(io, true);
            }
            VF_ARQH1 => self.arq.head = v & AQ_INDEX_MASK,
            VF_ARQT1 => {
                self.arq.tail = v & AQ_INDEX_MASK;
                self.deliver_arq(io);
            }
            VFINT_ICR0_ENA1 => {
                self.icr0_ena1 = v & ICR0_ENA1_ADMINQ;
                self.misc_gate_changed(io);
            }
            VFINT_DYN_CTL01 => {
                self.dyn_ctl01 = v & !DYN_CTL_ACTIONS;
                if let Some((i, interval)) = dyn_ctl_itr_update(v) {
                    self.itr01[i] = interval;
                }
                if v & DYN_CTL_SWINT_TRIG != 0 && v & DYN_CTL_INTENA != 0 {
                    io.fire(0);
                }
                self.misc_gate_changed(io);
            }
            VFINT_STAT_CTL01 => self.stat_ctl01 = v,
            // RSTAT, ICR01 and holes are read-only.
            _ => {}
        }
    }

    /// Keeps the emudev admin queue in step with the registers.
    fn admin_queue_changed(&mut self, io: &mut Io, arq: bool) {
        let (regs, id) = if arq {
            (self.arq, queue_ids::ARQ)
        } else {
            (self.atq, queue_ids::ATQ)
        };
        io.ops.push(match regs.queue_config(arq) {
            Some(cfg) => EmuOp::Configure(id, cfg),
            None => EmuOp::Clear(id),
        });
        if arq {
            self.deliver_arq(io);
        }
    }

    // ----- interrupts --------------------------------------------------------------------------

    fn misc_gate_open(&self) -> bool {
        self.icr0_ena1 & ICR0_ENA1_ADMINQ != 0 && self.dyn_ctl01 & DYN_CTL_INTENA != 0
    }

    /// Raises the admin-queue cause: fires vector 0 now if the gate is open, later otherwise.
    fn adminq_cause(&mut self, io: &mut Io) {
        self.icr01 |= ICR01_ADMINQ;
        if self.misc_gate_open() {
            io.fire(0);
        } else {
            self.misc_pending = true;
        }
    }

    fn misc_gate_changed(&mut self, io: &mut Io) {
        if self.misc_pending && self.misc_gate_open() {
            self.misc_pending = false;
            io.fire(0);
        }
    }

    /// Whether vector 0 is enabled for queue causes (`DYN_CTL01.INTENA`).
    pub(crate) fn misc_enabled(&self) -> bool {
        self.dyn_ctl01 & DYN_CTL_INTENA != 0
    }

    /// Whether queue vector `vector` (>= 1) may fire: `DYN_CTLN1(vector - 1).INTENA`.
    pub(crate) fn queue_vector_enabled(&self, vector: u16) -> bool {
        vector
            .checked_sub(1)
            .and_then(|n| self.dyn_ctln1.get(usize::from(n)))
            .is_some_and(|v| v & DYN_CTL_INTENA != 0)
    }

    /// Whether `vector` may fire for a queue cause: `DYN_CTL01.INTENA` for vector 0,
    /// `DYN_CTLN1(vector - 1).INTENA` otherwise.
    fn vector_enabled(&self, vector: u16) -> bool {
        if vector == 0 {
            self.misc_enabled()
        } else {
            self.queue_vector_enabled(vector)
        }
    }

    /// The ITR index moderating `vector`: the `rxitr_idx` of the lowest-numbered RX queue
    /// CONFIG_IRQ_MAP put on it, else the `txitr_idx` of its lowest-numbered TX queue; `None`
    /// for a vector without queues or mapped with index 3 (NO_ITR).
    fn vector_itr_index(&self, vector: u16) -> Option<usize> {
        let rx = self.vf.rx.iter().find(|r| r.vector == Some(vector));
        let idx = match rx {
            Some(r) => r.itr_idx,
            None => {
                self.vf
                    .tx
                    .iter()
                    .find(|t| t.vector == Some(vector))?
                    .itr_idx
            }
        };
        (idx < ITR_INDEXES).then_some(usize::from(idx))
    }

    /// The moderation interval of `vector` now: `ITR01(i)` for vector 0, `ITRN1(i, vector - 1)`
    /// otherwise, `i` from [`Core::vector_itr_index`]; zero (no moderation) without an index.
    pub(crate) fn vector_interval(&self, vector: u16) -> Duration {
        let Some(i) = self.vector_itr_index(vector) else {
            return Duration::ZERO;
        };
        let units = if vector == 0 {
            self.itr01.get(i)
        } else {
            vector
                .checked_sub(1)
                .and_then(|n| self.itrn1.get(i)?.get(usize::from(n)))
        };
        itr_interval(units.copied().unwrap_or(0))
    }

    /// A queue interrupt on `vector` at `now` (see `itr.rs`): gated by INTENA, then fired,
    /// held or coalesced by the vector's moderation. Returns what happened and, when an
    /// interrupt is pending on the vector, when it is due (for the timer).
    pub(crate) fn raise_queue_irq(
        &mut self,
        io: &mut Io,
        vector: u16,
        now: Instant,
    ) -> (IrqOutcome, Option<Instant>) {
        if !self.vector_enabled(vector) {
            if vector > 0 {
                if let Some(p) = self.queue_pending.get_mut(usize::from(vector)) {
                    *p = true;
                }
            }
            return (IrqOutcome::Gated, None);
        }
        let interval = self.vector_interval(vector);
        let Some(m) = self.moderators.get_mut(usize::from(vector)) else {
            // Enabled vectors are at most 16: not reached.
            return (IrqOutcome::Gated, None);
        };
        match m.raise(now, interval) {
            Decision::Fire => (fire_outcome(io.fire(vector)), None),
            Decision::FireDue => {
                Counters::bump(&io.counters.irqs_coalesced);
                Counters::bump(&io.counters.irqs_deferred);
                (fire_outcome(io.fire(vector)), None)
            }
            Decision::Deferred(at) => (IrqOutcome::Deferred, Some(at)),
            Decision::Coalesced(at) => {
                Counters::bump(&io.counters.irqs_coalesced);
                (IrqOutcome::Coalesced, Some(at))
            }
        }
    }

    /// Fires the held queue interrupts due at `now` (every held one with `all`) whose vector
    /// is enabled; the others are dropped as a gated raise is. Returns the next deadline.
    pub(crate) fn expire_moderation(
        &mut self,
        io: &mut Io,
        now: Instant,
        all: bool,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for v in 0..MAX_VECTORS {
            let enabled = self.vector_enabled(v);
            let Some(m) = self.moderators.get_mut(usize::from(v)) else {
                continue;
            };
            let due = if all {
                m.take_pending()
            } else {
                m.take_due(now)
            };
            if due && enabled {
                m.fired(now);
                Counters::bump(&io.counters.irqs_deferred);
                io.fire(v);
            } else if due && v > 0 {
                // Disabled meanwhile: pending until the driver enables the vector again.
                if let Some(p) = self.queue_pending.get_mut(usize::from(v)) {
                    *p = true;
                }
            }
            if let Some(d) = m.deadline() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    // ----- admin transmit queue ----------------------------------------------------------------

    /// Processes `[ATQH, ATQT)`.
    pub(crate) fn process_atq(&mut self, io: &mut Io) {
        if !self.atq.enabled() || self.atq.head == self.atq.tail {
            return;
        }
        let n = self.atq.entries();
        if self.atq.tail >= n || self.atq.head >= n {
            // Driver bug: an index beyond the ring. Flag it and wait for a sane tail.
            Counters::bump(&io.counters.aq_errors);
            self.atq.len |= AQLEN_VFE;
            log::debug!(
                "iavf: ATQ head {} / tail {} beyond {n} entries",
                self.atq.head,
                self.atq.tail
            );
            return;
        }
        if !io.bus_master {
            Counters::bump(&io.counters.aq_errors);
            log::debug!("iavf: ATQ rung with bus mastering off; waiting");
            return;
        }
        // At most one pass over the ring per doorbell.
        for _ in 0..n {
            if self.atq.head == self.atq.tail || !self.atq.enabled() {
                break;
            }
            let head = self.atq.head;
            let mut raw = [0u8; aq::DESC_SIZE];
            let Some(at) = self.atq.desc(head) else {
                self.aq_ring_fault(io, false);
                break;
            };
            if io.read(at, &mut raw).is_err() {
                self.aq_ring_fault(io, false);
                break;
            }
            let mut desc = AqDesc::from_bytes(&raw);
            let (err, retval) = self.execute(io, &desc);
            desc.flags |= aq::FLAG_DD | aq::FLAG_CMP;
            if err {
                desc.flags |= aq::FLAG_ERR;
            }
            desc.retval = retval;
            let written = write_desc(io, at, &desc);
            Counters::bump(&io.counters.aq_commands);
            if !self.atq.enabled() {
                // A RESET_VF just cleared the ring registers: the descriptor was completed
                // (best effort) and there is no head to advance.
                break;
            }
            if written.is_err() {
                self.aq_ring_fault(io, false);
            }
            self.atq.head = (head + 1) % n;
        }
        self.deliver_arq(io);
    }

    /// A ring the device cannot read or write: CRIT, counted.
    fn aq_ring_fault(&mut self, io: &mut Io, arq: bool) {
        Counters::bump(&io.counters.aq_errors);
        if arq {
            self.arq.len |= AQLEN_CRIT;
            log::debug!("iavf: ARQ ring at {:#x} is not accessible", self.arq.base());
        } else {
            self.atq.len |= AQLEN_CRIT;
            log::debug!("iavf: ATQ ring at {:#x} is not accessible", self.atq.base());
        }
    }

    /// Executes one ATQ descriptor: returns (ERR flag, retval) for its write-back.
    fn execute(&mut self, io: &mut Io, desc: &AqDesc) -> (bool, u16) {
        if desc.opcode == aq::OPC_QUEUE_SHUTDOWN {
            // Nothing to tear down on our side; Linux ignores the result but expects DD|CMP.
            return (false, rc::OK);
        }
        if desc.opcode != aq::OPC_SEND_MSG_TO_PF {
            Counters::bump(&io.counters.aq_errors);
            log::debug!("iavf: ATQ opcode {:#06x} is not send-to-PF", desc.opcode);
            return (true, rc::ESRCH);
        }
        let op = desc.v_opcode();
        let len = usize::from(desc.datalen);
        let has_buf = desc.flags & aq::FLAG_BUF != 0;
        if len > aq::AQ_BUF_SIZE || (len > 0 && !has_buf) {
            Counters::bump(&io.counters.aq_errors);
            log::debug!("iavf: ATQ op {op}: datalen {len} without a buffer or above 4096");
            self.refuse(io, op, VirtchnlStatus::ErrParam, "bad datalen");
            return (true, rc::EINVAL);
        }
        let mut msg = vec![0u8; if has_buf { len } else { 0 }];
        if !msg.is_empty() && io.read(desc.buffer_addr(), &mut msg).is_err() {
            Counters::bump(&io.counters.aq_errors);
            self.refuse(
                io,
                op,
                VirtchnlStatus::ErrAdminQueueError,
                "buffer outside mapped memory",
            );
            return (true, rc::BAD_ADDR);
        }
        self.handle_virtchnl(io, op, &msg);
        (false, rc::OK)
    }

    // ----- admin receive queue -----------------------------------------------------------------

    /// Queues a message for the VF (dropped, with OVFL, when too many wait).
    pub(crate) fn push_message(
        &mut self,
        io: &mut Io,
        op: u32,
        status: VirtchnlStatus,
        body: Vec<u8>,
    ) {
        if self.arq_pending.len() >= ARQ_PENDING_MAX {
            Counters::bump(&io.counters.arq_dropped);
            self.arq.len |= AQLEN_OVFL;
            log::debug!("iavf: ARQ overflow, op {op} dropped");
            return;
        }
        self.arq_pending.push_back(ArqMessage { op, status, body });
    }

    /// Delivers waiting messages into posted ARQ entries `[ARQH, ARQT)`.
    pub(crate) fn deliver_arq(&mut self, io: &mut Io) {
        let mut delivered = false;
        while let Some(msg) = self.arq_pending.front() {
            if !self.arq.enabled() || !io.bus_master || io.ctx.is_none() {
                break;
            }
            let n = self.arq.entries();
            let (head, tail) = (self.arq.head, self.arq.tail);
            if head >= n || tail >= n {
                Counters::bump(&io.counters.aq_errors);
                self.arq.len |= AQLEN_VFE;
                break;
            }
            if head == tail {
                break;
            }
            let Some(at) = self.arq.desc(head) else {
                self.aq_ring_fault(io, true);
                break;
            };
            let mut raw = [0u8; aq::DESC_SIZE];
            if io.read(at, &mut raw).is_err() {
                self.aq_ring_fault(io, true);
                break;
            }
            let posted = AqDesc::from_bytes(&raw);
            let room = if posted.flags & aq::FLAG_BUF != 0 {
                usize::from(posted.datalen)
            } else {
                0
            };
            let mut flags =
                (posted.flags & (aq::FLAG_BUF | aq::FLAG_LB)) | aq::FLAG_DD | aq::FLAG_CMP;
            let mut retval = rc::OK;
            let mut copied = msg.body.len().min(room);
            if msg.body.len() > room {
                flags |= aq::FLAG_ERR;
                retval = rc::EFBIG;
                Counters::bump(&io.counters.aq_errors);
                log::debug!(
                    "iavf: ARQ buffer of {room} bytes too small for {}",
                    msg.body.len()
                );
            }
            if copied > 0 && io.write(posted.buffer_addr(), &msg.body[..copied]).is_err() {
                flags |= aq::FLAG_ERR;
                retval = rc::BAD_ADDR;
                copied = 0;
                Counters::bump(&io.counters.aq_errors);
            }
            let done = AqDesc {
                flags,
                opcode: aq::OPC_SEND_MSG_TO_VF,
                // `copied` <= the posted u16 datalen.
                datalen: copied as u16,
                retval,
                cookie_high: msg.op,
                cookie_low: msg.status.to_cookie(),
                param0: 0,
                param1: 0,
                addr_high: posted.addr_high,
                addr_low: posted.addr_low,
            };
            if write_desc(io, at, &done).is_err() {
                self.aq_ring_fault(io, true);
                break;
            }
            self.arq_pending.pop_front();
            self.arq.head = (head + 1) % n;
            Counters::bump(&io.counters.arq_delivered);
            delivered = true;
        }
        if delivered {
            self.adminq_cause(io);
        }
    }

    /// Bus mastering was turned on: run the work that waited for it.
    pub(crate) fn dma_enabled(&mut self, io: &mut Io) {
        self.process_atq(io);
        self.deliver_arq(io);
    }

    // ----- reset -------------------------------------------------------------------------------

    /// A VF reset (see the module documentation of `device`). Ends with RSTAT = COMPLETED.
    /// Resets the VF. `keep_version`: the negotiated virtchnl version survives (a reset the VF
    /// or the VMM asked for: Linux goes straight to GET_VF_RESOURCES afterwards, as i40e and ice
    /// keep the version); a new client (disconnect) starts from nothing.
    pub(crate) fn vf_reset(&mut self, io: &mut Io, keep_version: bool) {
        Counters::bump(&io.counters.vf_resets);
        self.rstat = VfrState::InProgress;
        for q in 0..self.queues {
            if self.vf.tx.get(usize::from(q)).is_some_and(|t| t.enabled) {
                io.ops.push(EmuOp::Clear(queue_ids::tx(q)));
            }
            if self.vf.rx.get(usize::from(q)).is_some_and(|r| r.enabled) {
                io.ops.push(EmuOp::Clear(queue_ids::rx(q)));
            }
        }
        io.ops.push(EmuOp::Clear(queue_ids::ATQ));
        io.ops.push(EmuOp::Clear(queue_ids::ARQ));
        let version = if keep_version { self.vf.version } else { None };
        self.vf = VfState::new(self.queues, self.mac);
        self.vf.version = version;
        self.rss = Rss::new(self.queues);
        self.atq = AqRegs::default();
        self.arq = AqRegs::default();
        self.arq_pending.clear();
        self.icr01 = 0;
        self.icr0_ena1 = 0;
        self.dyn_ctl01 = 0;
        self.stat_ctl01 = 0;
        self.itr01 = [0; ITR_INDEXES as usize];
        self.misc_pending = false;
        self.dyn_ctln1 = [0; MAX_QUEUE_PAIRS as usize];
        self.itrn1 = [[0; MAX_QUEUE_PAIRS as usize]; ITR_INDEXES as usize];
        for m in &mut self.moderators {
            m.reset();
        }
        self.queue_pending = [false; MAX_VECTORS as usize];
        self.tx_tail = [0; MAX_QUEUE_PAIRS as usize];
        self.rx_tail = [0; MAX_QUEUE_PAIRS as usize];
        for q in 0..MAX_QUEUE_PAIRS {
            for off in [qtx_tail(q), qrx_tail(q)].into_iter().flatten() {
                self.page_store(off, 0);
            }
        }
        io.vsi_stats.clear();
        // Linux's reset task waits for VFACTIVE (only its probe path also accepts COMPLETED);
        // i40e ends every VF reset by writing VFACTIVE.
        self.rstat = VfrState::VfActive;
    }
}

/// Writes a descriptor with its flags word last, so a driver polling DD sees the rest first.
fn write_desc(io: &Io, at: u64, desc: &AqDesc) -> Result<(), DmaFault> {
    let b = desc.encode();
    io.write(at.checked_add(2).ok_or(DmaFault::Access)?, &b[2..])?;
    io.write(at, &b[..2])
}

/// Index `i` of a dword array at `base` with `count` entries, if `off` is one of them.
fn dword_index(off: u64, base: u64, count: u16) -> Option<usize> {
    let rel = off.checked_sub(base)?;
    (rel < 4 * u64::from(count) && rel.is_multiple_of(4)).then_some((rel / 4) as usize)
}

fn itrn1_index(off: u64) -> Option<(usize, usize)> {
    let rel = off.checked_sub(VFINT_ITRN1_BASE)?;
    let (i, n) = ((rel / 64) as usize, ((rel % 64) / 4) as usize);
    (rel.is_multiple_of(4) && i < usize::from(ITR_INDEXES) && n < usize::from(MAX_QUEUE_PAIRS))
        .then_some((i, n))
}

fn dyn_ctln1_index(off: u64) -> Option<usize> {
    dword_index(off, VFINT_DYN_CTLN1_BASE, MAX_QUEUE_PAIRS)
}

/// The ITR a `DYN_CTL*` write updates and the interval it stores there: `ITR_INDX` 0..=2 takes
/// the `INTERVAL` field (2 µs units); 3 (NO_ITR) updates nothing.
fn dyn_ctl_itr_update(v: u32) -> Option<(usize, u32)> {
    let i = ((v & DYN_CTL_ITR_INDX_MASK) >> DYN_CTL_ITR_INDX_SHIFT) as usize;
    let interval = (v & DYN_CTL_INTERVAL_MASK) >> DYN_CTL_INTERVAL_SHIFT;
    (i < usize::from(ITR_INDEXES)).then_some((i, interval))
}

/// The [`IrqOutcome`] of an [`Io::fire`].
fn fire_outcome(f: Option<FireOutcome>) -> IrqOutcome {
    match f {
        Some(FireOutcome::Delivered) => IrqOutcome::Delivered,
        Some(FireOutcome::Pending) => IrqOutcome::Pending,
        Some(FireOutcome::Disabled) | None => IrqOutcome::Undelivered,
    }
}

fn dword_of(bytes: &[u8], i: usize) -> u32 {
    let mut d = [0u8; 4];
    if let Some(s) = bytes.get(4 * i..4 * i + 4) {
        d.copy_from_slice(s);
    }
    u32::from_le_bytes(d)
}

fn set_dword(bytes: &mut [u8], i: usize, v: u32) {
    if let Some(s) = bytes.get_mut(4 * i..4 * i + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::pci::pci_config;
    use super::super::IavfConfig;
    use super::*;
    use emudev_pci::MsixMaskMode;

    /// A core and what its `Io` borrows; no transport (every fire is undelivered but counted).
    struct Bench {
        core: Core,
        msix: MsixTable,
        counters: Counters,
        vsi: VsiStats,
    }

    impl Bench {
        fn new(queues: u16) -> Self {
            let cfg = IavfConfig::new("itr").with_queues(queues);
            let cap = pci_config(&cfg)
                .expect("config")
                .msix_capability()
                .expect("MSI-X");
            Bench {
                core: Core::new(queues, cfg.mac, cfg.mtu),
                msix: MsixTable::new(cap, MsixMaskMode::Auto),
                counters: Counters::default(),
                vsi: VsiStats::default(),
            }
        }

        fn run<R>(&mut self, f: impl FnOnce(&mut Core, &mut Io) -> R) -> R {
            let mut io = Io {
                ctx: None,
                msix: &self.msix,
                counters: &self.counters,
                vsi_stats: &self.vsi,
                bus_master: false,
                ops: Vec::new(),
            };
            f(&mut self.core, &mut io)
        }

        fn w(&mut self, off: u64, v: u32) {
            self.run(|c, io| c.reg_write(io, off, v));
        }

        fn r(&mut self, off: u64) -> u32 {
            self.core.reg_read(off)
        }

        fn raise(&mut self, vector: u16, now: Instant) -> (IrqOutcome, Option<Instant>) {
            self.run(|c, io| c.raise_queue_irq(io, vector, now))
        }

        fn expire(&mut self, now: Instant) -> Option<Instant> {
            self.run(|c, io| c.expire_moderation(io, now, false))
        }

        /// (raised, coalesced, deferred).
        fn irqs(&self) -> (u64, u64, u64) {
            let s = self.counters.snapshot();
            (s.irqs_raised, s.irqs_coalesced, s.irqs_deferred)
        }

        /// RX queue `q` on `vector` with ITR index `idx`, as CONFIG_IRQ_MAP leaves it.
        fn map_rx(&mut self, q: usize, vector: u16, idx: u16) {
            self.core.vf.rx[q].vector = Some(vector);
            self.core.vf.rx[q].itr_idx = idx;
        }
    }

    fn ctl(itr_idx: u32, interval: u32) -> u32 {
        DYN_CTL_INTENA | (itr_idx << DYN_CTL_ITR_INDX_SHIFT) | (interval << DYN_CTL_INTERVAL_SHIFT)
    }

    fn reg(r: Option<u64>) -> u64 {
        r.expect("register")
    }

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn dyn_ctl_writes_update_the_itr_they_index() {
        let mut b = Bench::new(4);
        b.w(reg(vfint_dyn_ctln1(3)), ctl(1, 100));
        assert_eq!(b.r(reg(vfint_itrn1(1, 3))), 100);
        for (i, n) in [(0, 3), (2, 3), (1, 2), (1, 0)] {
            assert_eq!(b.r(reg(vfint_itrn1(i, n))), 0, "ITRN1({i}, {n}) untouched");
        }
        assert_eq!(b.r(reg(vfint_dyn_ctln1(3))), ctl(1, 100), "reads back");
        // ITR_INDX = 3 (NO_ITR): nothing updated, whatever the interval says.
        b.w(
            reg(vfint_dyn_ctln1(3)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK | (55 << DYN_CTL_INTERVAL_SHIFT),
        );
        for i in 0..ITR_INDEXES {
            let want = if i == 1 { 100 } else { 0 };
            assert_eq!(b.r(reg(vfint_itrn1(i, 3))), want);
        }
        // Index 0 with interval 0 is an update to 0 (Linux's buildreg_itr(RX, 0)).
        b.w(reg(vfint_dyn_ctln1(3)), ctl(1, 0));
        assert_eq!(b.r(reg(vfint_itrn1(1, 3))), 0);
        // The largest interval, and the INTENA-less form.
        b.w(
            reg(vfint_dyn_ctln1(0)),
            (2 << DYN_CTL_ITR_INDX_SHIFT) | DYN_CTL_INTERVAL_MASK,
        );
        assert_eq!(b.r(reg(vfint_itrn1(2, 0))), 0xFFF);
        // DYN_CTL01 does the same for ITR01.
        b.w(VFINT_DYN_CTL01, ctl(2, 7));
        assert_eq!(b.r(reg(vfint_itr01(2))), 7);
        b.w(VFINT_DYN_CTL01, DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK);
        assert_eq!(b.r(reg(vfint_itr01(2))), 7, "NO_ITR keeps it");
        assert_eq!(dyn_ctl_itr_update(ctl(0, 4000)), Some((0, 4000)));
        assert_eq!(
            dyn_ctl_itr_update(DYN_CTL_ITR_INDX_MASK | DYN_CTL_INTERVAL_MASK),
            None
        );
    }

    #[test]
    fn the_interval_is_the_one_of_the_rx_itr_index_of_the_irq_map() {
        let mut b = Bench::new(3);
        for i in 0..ITR_INDEXES {
            b.w(reg(vfint_itrn1(i, 0)), 10 * (u32::from(i) + 1));
            b.w(reg(vfint_itrn1(i, 1)), 100 * (u32::from(i) + 1));
            b.w(reg(vfint_itr01(i)), 1000 * (u32::from(i) + 1));
        }
        let us = |u: u64| Duration::from_micros(u);
        assert_eq!(b.core.vector_interval(1), Duration::ZERO, "no queue mapped");
        b.map_rx(0, 1, 1);
        assert_eq!(b.core.vector_interval(1), us(2 * 20), "ITRN1(1, 0)");
        // The lowest RX queue decides; TX indexes do not count while an RX queue is there.
        b.map_rx(2, 1, 2);
        b.core.vf.tx[0].vector = Some(1);
        b.core.vf.tx[0].itr_idx = 0;
        assert_eq!(b.core.vector_interval(1), us(2 * 20));
        // Without an RX queue: the TX queue's index.
        b.core.vf.tx[1].vector = Some(2);
        b.core.vf.tx[1].itr_idx = 2;
        assert_eq!(b.core.vector_interval(2), us(2 * 300), "ITRN1(2, 1)");
        // NO_ITR in the map: unmoderated.
        b.map_rx(1, 2, 3);
        assert_eq!(b.core.vector_interval(2), Duration::ZERO);
        // Vector 0 reads ITR01.
        b.map_rx(0, 0, 0);
        assert_eq!(b.core.vector_interval(0), us(2 * 1000));
        assert_eq!(b.core.vector_interval(17), Duration::ZERO, "no such vector");
    }

    #[test]
    fn moderated_raises_fire_once_then_defer_and_coalesce_until_the_window_ends() {
        let mut b = Bench::new(1);
        b.map_rx(0, 1, 0);
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 4000));
        let t0 = Instant::now();
        let end = at(t0, 8000);
        assert_eq!(b.raise(1, t0), (IrqOutcome::Undelivered, None));
        assert_eq!(b.irqs(), (1, 0, 0));
        assert_eq!(b.raise(1, at(t0, 10)), (IrqOutcome::Deferred, Some(end)));
        for us in [20, 3000, 7999] {
            assert_eq!(b.raise(1, at(t0, us)), (IrqOutcome::Coalesced, Some(end)));
        }
        assert_eq!(b.irqs(), (1, 3, 0), "nothing fired inside the window");
        // A software trigger is not moderated and leaves the pending one alone.
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_SWINT_TRIG | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (2, 3, 0));
        assert_eq!(b.expire(at(t0, 7999)), Some(end), "not due yet");
        assert_eq!(b.irqs(), (2, 3, 0));
        assert_eq!(b.expire(end), None, "fired, nothing left");
        assert_eq!(b.irqs(), (3, 3, 1));
        assert_eq!(b.expire(at(t0, 20_000)), None, "once");
        assert_eq!(b.irqs(), (3, 3, 1));
        // The deferred interrupt opened a window of its own.
        assert_eq!(
            b.raise(1, at(t0, 9000)),
            (IrqOutcome::Deferred, Some(at(t0, 16_000)))
        );
    }

    #[test]
    fn interval_zero_fires_every_raise_and_a_shorter_interval_releases_a_pending_one() {
        let mut b = Bench::new(1);
        b.map_rx(0, 1, 0);
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
        );
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.raise(1, t0), (IrqOutcome::Undelivered, None));
        }
        assert_eq!(b.irqs(), (5, 0, 0), "the default is no moderation");
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 500));
        assert_eq!(
            b.raise(1, at(t0, 100)),
            (IrqOutcome::Deferred, Some(at(t0, 1000)))
        );
        // Back to 0: the next raise finds the pending interrupt due and sends it with itself.
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 0));
        assert_eq!(b.raise(1, at(t0, 200)), (IrqOutcome::Undelivered, None));
        assert_eq!(b.irqs(), (6, 1, 1));
        assert_eq!(b.expire(at(t0, 5000)), None, "nothing left to fire");
        assert_eq!(b.irqs(), (6, 1, 1));
    }

    #[test]
    fn a_held_interrupt_whose_vector_is_disabled_at_the_window_end_waits_for_the_enable() {
        let mut b = Bench::new(1);
        b.map_rx(0, 1, 0);
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 4000));
        let t0 = Instant::now();
        b.raise(1, t0);
        assert_eq!(b.raise(1, at(t0, 1)).0, IrqOutcome::Deferred);
        // Linux masks the vector while it polls: INTENA clear, no ITR update.
        b.w(reg(vfint_dyn_ctln1(0)), DYN_CTL_ITR_INDX_MASK);
        assert_eq!(b.raise(1, at(t0, 2)), (IrqOutcome::Gated, None));
        assert_eq!(b.expire(at(t0, 8000)), None);
        assert_eq!(b.irqs(), (1, 0, 0), "nothing fires while the vector is off");
        // Enabled again: the pending cause fires with the enable (as a masked MSI-X vector's
        // PBA bit does), once.
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (2, 0, 0));
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (2, 0, 0), "not twice");
        assert_eq!(b.raise(1, at(t0, 8001)), (IrqOutcome::Undelivered, None));
        assert_eq!(b.irqs(), (3, 0, 0));
    }

    #[test]
    fn a_cause_raised_while_the_vector_is_off_fires_on_enable_unless_clearpba() {
        let mut b = Bench::new(2);
        let t0 = Instant::now();
        assert_eq!(b.raise(1, t0), (IrqOutcome::Gated, None));
        assert_eq!(b.raise(2, t0), (IrqOutcome::Gated, None));
        assert_eq!(b.irqs(), (0, 0, 0));
        // Vector 2 enabled with CLEARPBA: the pending cause is dropped.
        b.w(
            reg(vfint_dyn_ctln1(1)),
            DYN_CTL_INTENA | DYN_CTL_CLEARPBA | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (0, 0, 0));
        // A write that leaves vector 1 off changes nothing; the enabling one fires.
        b.w(reg(vfint_dyn_ctln1(0)), DYN_CTL_ITR_INDX_MASK);
        assert_eq!(b.irqs(), (0, 0, 0));
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (1, 0, 0));
        // A VF reset forgets pending causes.
        b.run(|c, io| c.vf_reset(io, true));
        assert_eq!(b.raise(1, t0), (IrqOutcome::Gated, None));
        b.run(|c, io| c.vf_reset(io, true));
        b.w(
            reg(vfint_dyn_ctln1(0)),
            DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
        );
        assert_eq!(b.irqs(), (1, 0, 0));
    }

    #[test]
    fn vf_reset_clears_moderation_and_the_itr_registers() {
        let mut b = Bench::new(1);
        b.map_rx(0, 1, 0);
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 4000));
        b.w(VFINT_DYN_CTL01, ctl(1, 9));
        let t0 = Instant::now();
        b.raise(1, t0);
        assert_eq!(b.raise(1, at(t0, 1)).0, IrqOutcome::Deferred);
        b.run(|c, io| c.vf_reset(io, true));
        assert_eq!(b.r(reg(vfint_itrn1(0, 0))), 0);
        assert_eq!(b.r(reg(vfint_itr01(1))), 0);
        assert_eq!(b.expire(at(t0, 100_000)), None);
        assert_eq!(
            b.irqs(),
            (1, 0, 0),
            "the held interrupt went with the reset"
        );
        assert_eq!(
            b.raise(1, at(t0, 2)),
            (IrqOutcome::Gated, None),
            "INTENA cleared"
        );
        // Programmed again inside the old window: the cause raised while off fires with the
        // enable, and the moderator has no memory of the interrupt before the reset.
        b.map_rx(0, 1, 0);
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 4000));
        assert_eq!(b.irqs(), (2, 0, 0));
        assert_eq!(b.raise(1, at(t0, 3)), (IrqOutcome::Undelivered, None));
        assert_eq!(b.irqs(), (3, 0, 0));
    }

    #[test]
    fn vector_zero_is_moderated_by_itr01_for_queue_causes_only() {
        let mut b = Bench::new(1);
        // DPDK in poll mode without WB_ON_ITR: RX on vector 0 and its ITR via DYN_CTL01.
        b.map_rx(0, 0, 0);
        b.w(VFINT_DYN_CTL01, ctl(0, 100));
        b.w(VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ);
        let t0 = Instant::now();
        assert_eq!(b.raise(0, t0), (IrqOutcome::Undelivered, None));
        assert_eq!(
            b.raise(0, at(t0, 50)),
            (IrqOutcome::Deferred, Some(at(t0, 200)))
        );
        // The admin-queue cause is not held back.
        b.run(|c, io| c.adminq_cause(io));
        assert_eq!(b.irqs(), (2, 0, 0));
        assert_eq!(b.expire(at(t0, 200)), None);
        assert_eq!(b.irqs(), (3, 0, 1));
        // Vector 0 gated by DYN_CTL01.INTENA.
        b.w(VFINT_DYN_CTL01, DYN_CTL_ITR_INDX_MASK);
        assert_eq!(b.raise(0, at(t0, 10_000)), (IrqOutcome::Gated, None));
    }

    #[test]
    fn expiring_all_fires_every_held_interrupt_before_its_deadline() {
        let mut b = Bench::new(2);
        b.map_rx(0, 1, 0);
        b.map_rx(1, 2, 0);
        b.w(reg(vfint_dyn_ctln1(0)), ctl(0, 4000));
        b.w(reg(vfint_dyn_ctln1(1)), ctl(0, 2000));
        let t0 = Instant::now();
        for v in [1, 2] {
            b.raise(v, t0);
        }
        assert_eq!(b.raise(1, at(t0, 1)).1, Some(at(t0, 8000)));
        assert_eq!(b.raise(2, at(t0, 1)).1, Some(at(t0, 4000)));
        assert_eq!(
            b.expire(at(t0, 2)),
            Some(at(t0, 4000)),
            "the earliest deadline"
        );
        assert_eq!(
            b.run(|c, io| c.expire_moderation(io, at(t0, 2), true)),
            None
        );
        assert_eq!(b.irqs(), (4, 0, 2));
        // Unmapped vectors and vectors beyond the VF's are never moderated nor fired here.
        assert_eq!(b.raise(16, t0), (IrqOutcome::Gated, None));
        assert_eq!(b.raise(u16::MAX, t0), (IrqOutcome::Gated, None));
    }

    #[test]
    fn register_index_helpers() {
        assert_eq!(
            dword_index(VFQF_HKEY_BASE + 48, VFQF_HKEY_BASE, 13),
            Some(12)
        );
        assert_eq!(dword_index(VFQF_HKEY_BASE + 52, VFQF_HKEY_BASE, 13), None);
        assert_eq!(dword_index(VFQF_HKEY_BASE + 2, VFQF_HKEY_BASE, 13), None);
        assert_eq!(dword_index(VFQF_HKEY_BASE - 4, VFQF_HKEY_BASE, 13), None);
        assert_eq!(
            itrn1_index(VFINT_ITRN1_BASE + 64 * 2 + 4 * 15),
            Some((2, 15))
        );
        assert_eq!(itrn1_index(VFINT_ITRN1_BASE + 64 * 3), None);
        assert_eq!(dyn_ctln1_index(VFINT_DYN_CTLN1_BASE + 60), Some(15));
        assert_eq!(dyn_ctln1_index(VFINT_DYN_CTLN1_BASE + 64), None);
        let mut b = [0u8; 8];
        set_dword(&mut b, 1, 0x0403_0201);
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(dword_of(&b, 1), 0x0403_0201);
        assert_eq!(dword_of(&b, 2), 0);
        set_dword(&mut b, 2, 1);
        assert_eq!(b, [0, 0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn aq_regs_decode_len_and_base() {
        let r = AqRegs {
            bal: 0x1000,
            bah: 0x2,
            len: 32 | AQLEN_ENABLE | AQLEN_CRIT,
            head: 0,
            tail: 0,
        };
        assert!(r.enabled());
        assert_eq!(r.entries(), 32);
        assert_eq!(r.base(), 0x2_0000_1000);
        assert_eq!(r.desc(3), Some(0x2_0000_1060));
        let cfg = r.queue_config(true).expect("enabled ring");
        assert_eq!(cfg.size, 32);
        assert_eq!(cfg.irq_vector, Some(0));
        assert!(r
            .queue_config(false)
            .is_some_and(|c| c.irq_vector.is_none()));
        let off = AqRegs { len: 32, ..r };
        assert!(!off.enabled() && off.queue_config(false).is_none());
        let empty = AqRegs {
            len: AQLEN_ENABLE,
            ..r
        };
        assert!(!empty.enabled());
        let wraps = AqRegs {
            bal: 0xFFFF_FFF0,
            bah: 0xFFFF_FFFF,
            ..r
        };
        assert!(wraps.queue_config(false).is_none());
    }
}
