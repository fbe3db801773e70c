//! virtchnl 1.1 handling: one VF→PF message in, a reply (or none) and state changes out.
//!
//! Each handler decodes and validates the whole message before it changes anything, so a
//! refused message leaves the VF as it was; the refusal becomes the reply's status.

use emudev::{AttrValue, QueueConfig, QueueKind};
use emudev_dma::Iova;

use super::core::{Core, EmuOp, Io};
use super::stats::Counters;
use super::{
    queue_ids, L2_OVERHEAD, LINK_SPEED_MBPS, MAX_FRAME_SIZE, MAX_MAC_FILTERS, MIN_FRAME_SIZE,
    RX_BUFFER_RANGE, VSI_ID,
};
use crate::spec::desc::{RING_LEN_ALIGN, RING_LEN_MAX, RX_DESC32_SIZE, TX_DESC_SIZE};
use crate::spec::regs::{RSS_KEY_SIZE, RSS_LUT_SIZE};
use crate::spec::virtchnl::{
    caps, link_speed, pctype, promisc, EtherAddrList, IrqMapInfo, PfEvent, PromiscInfo,
    QueueSelect, RssHena, RssKey, RssLut, VersionInfo, VfRequest, VfResource, VirtchnlOp,
    VirtchnlStatus, VlanFilterList, VsiQueueConfigInfo, VsiResource, VSI_TYPE_SRIOV,
};

/// Capabilities the device implements (and grants when asked).
pub(crate) const IMPLEMENTED_CAPS: u32 =
    caps::L2 | caps::VLAN | caps::RSS_PF | caps::RSS_REG | caps::WB_ON_ITR | caps::ADV_LINK_SPEED;
/// What a 1.0 VF (no capability word) gets, as i40e grants it.
pub(crate) const V1_0_CAPS: u32 = caps::L2 | caps::VLAN | caps::RSS_REG;
/// Hash types GET_RSS_HENA_CAPS reports and SET_RSS_HENA keeps.
pub(crate) const HENA_CAPS: u64 = pctype::DEFAULT_HENA;

/// A refused message: its status and why (for the log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    status: VirtchnlStatus,
    why: &'static str,
}

fn param(why: &'static str) -> Refusal {
    Refusal {
        status: VirtchnlStatus::ErrParam,
        why,
    }
}

fn not_supported(why: &'static str) -> Refusal {
    Refusal {
        status: VirtchnlStatus::ErrNotSupported,
        why,
    }
}

/// What a handled message asks for.
#[derive(Debug, Default)]
struct Done {
    /// Reply body (`None`: no reply at all, RESET_VF).
    reply: Option<Vec<u8>>,
    /// Send LINK_CHANGE after the reply.
    link_event: bool,
}

fn ack() -> Done {
    Done {
        reply: Some(Vec::new()),
        link_event: false,
    }
}

fn reply(body: Vec<u8>) -> Done {
    Done {
        reply: Some(body),
        link_event: false,
    }
}

fn check_vsi(vsi_id: u16) -> Result<(), Refusal> {
    if vsi_id == VSI_ID {
        Ok(())
    } else {
        Err(param("unknown VSI id"))
    }
}

/// Ring length rule: 0 (queue not used) or a multiple of 32 up to 4096.
fn ring_len_ok(len: u32) -> bool {
    len == 0 || (len.is_multiple_of(RING_LEN_ALIGN) && len <= RING_LEN_MAX)
}

impl Core {
    /// Handles one virtchnl message from the VF and queues its reply.
    pub(crate) fn handle_virtchnl(&mut self, io: &mut Io, op: u32, msg: &[u8]) {
        match self.dispatch(io, op, msg) {
            Ok(done) => {
                Counters::bump(&io.counters.vc_ok);
                if let Some(body) = done.reply {
                    self.push_message(io, op, VirtchnlStatus::Success, body);
                }
                if done.link_event {
                    self.send_link_event(io);
                }
            }
            Err(r) => self.refuse(io, op, r.status, r.why),
        }
    }

    /// Answers `op` with an error status (no body), counted.
    pub(crate) fn refuse(&mut self, io: &mut Io, op: u32, status: VirtchnlStatus, why: &str) {
        Counters::bump(&io.counters.vc_errors);
        if status == VirtchnlStatus::ErrNotSupported {
            Counters::bump(&io.counters.vc_not_supported);
        }
        log::debug!("iavf: virtchnl op {op} refused ({status:?}): {why}");
        self.push_message(io, op, status, Vec::new());
    }

    /// Queues a LINK_CHANGE event with the current link state (the format the VF negotiated).
    pub(crate) fn send_link_event(&mut self, io: &mut Io) {
        let speed = if self.vf.caps & caps::ADV_LINK_SPEED != 0 {
            LINK_SPEED_MBPS
        } else {
            link_speed::from_mbps(LINK_SPEED_MBPS).unwrap_or(link_speed::UNKNOWN)
        };
        let ev = PfEvent::link_change(speed, self.link_up);
        Counters::bump(&io.counters.link_events);
        self.vf.link_reported = true;
        self.push_message(
            io,
            VirtchnlOp::Event.raw(),
            VirtchnlStatus::Success,
            ev.encode(),
        );
    }

    /// Whether any queue is enabled.
    pub(crate) fn any_queue_enabled(&self) -> bool {
        self.vf.tx.iter().any(|t| t.enabled) || self.vf.rx.iter().any(|r| r.enabled)
    }

    fn dispatch(&mut self, io: &mut Io, op: u32, msg: &[u8]) -> Result<Done, Refusal> {
        let req = VfRequest::decode(op, msg).map_err(|e| {
            log::debug!("iavf: virtchnl op {op}: {e}");
            param("malformed message")
        })?;
        if let VfRequest::Other { .. } = req {
            return Err(not_supported("op not supported"));
        }
        if self.vf.version.is_none() && !matches!(req, VfRequest::Version(_) | VfRequest::ResetVf) {
            return Err(param("op before VERSION"));
        }
        match req {
            VfRequest::Version(v) => Ok(self.version(v)),
            VfRequest::ResetVf => {
                self.vf_reset(io, true);
                Ok(Done::default())
            }
            VfRequest::GetVfResources { caps } => self.get_vf_resources(caps),
            VfRequest::ConfigVsiQueues(m) => self.config_vsi_queues(&m),
            VfRequest::ConfigIrqMap(m) => self.config_irq_map(io, &m),
            VfRequest::EnableQueues(s) => self.enable_queues(io, &s),
            VfRequest::DisableQueues(s) => self.disable_queues(io, &s),
            VfRequest::AddEthAddr(l) => self.add_eth_addr(&l),
            VfRequest::DelEthAddr(l) => self.del_eth_addr(&l),
            VfRequest::AddVlan(l) => self.vlan_filters(&l, true),
            VfRequest::DelVlan(l) => self.vlan_filters(&l, false),
            VfRequest::ConfigPromiscuousMode(p) => self.promiscuous(&p),
            VfRequest::GetStats(s) => {
                check_vsi(s.vsi_id)?;
                Ok(reply(io.vsi_stats.snapshot().encode()))
            }
            VfRequest::ConfigRssKey(k) => self.rss_key(&k),
            VfRequest::ConfigRssLut(l) => self.rss_lut(&l),
            VfRequest::GetRssHenaCaps => {
                self.need(caps::RSS_PF)?;
                Ok(reply(RssHena { hena: HENA_CAPS }.encode()))
            }
            VfRequest::SetRssHena(h) => {
                self.need(caps::RSS_PF)?;
                self.rss.hena = h.hena & HENA_CAPS;
                Ok(ack())
            }
            VfRequest::EnableVlanStripping | VfRequest::DisableVlanStripping => {
                self.need(caps::VLAN)?;
                self.vf.vlan_strip = matches!(req, VfRequest::EnableVlanStripping);
                Ok(ack())
            }
            VfRequest::Other { .. } => Err(not_supported("op not supported")),
        }
    }

    fn need(&self, cap: u32) -> Result<(), Refusal> {
        if self.vf.caps & cap != 0 {
            Ok(())
        } else {
            Err(not_supported("capability not granted"))
        }
    }

    fn version(&mut self, v: VersionInfo) -> Done {
        self.vf.version = Some(v);
        reply(VersionInfo::V1_1.encode())
    }

    fn get_vf_resources(&mut self, requested: Option<u32>) -> Result<Done, Refusal> {
        let v11 = self.vf.version.is_some_and(|v| v.major > 1 || v.minor >= 1);
        let granted = match (v11, requested) {
            (true, Some(want)) => {
                let mut g = (want & IMPLEMENTED_CAPS) | caps::L2;
                if g & caps::RSS_PF != 0 {
                    // One RSS method, RSS_PF first (as the PF picks it).
                    g &= !caps::RSS_REG;
                }
                g
            }
            (false, None) => V1_0_CAPS,
            (true, None) => return Err(param("a 1.1 VF must send its capabilities")),
            (false, Some(_)) => return Err(param("a 1.0 VF sends no capabilities")),
        };
        self.vf.caps = granted;
        let res = VfResource {
            num_queue_pairs: self.queues,
            max_vectors: self.queues + 1,
            max_mtu: self.mtu + L2_OVERHEAD,
            vf_cap_flags: granted,
            rss_key_size: u32::from(RSS_KEY_SIZE),
            rss_lut_size: u32::from(RSS_LUT_SIZE),
            vsi_res: vec![VsiResource {
                vsi_id: VSI_ID,
                num_queue_pairs: self.queues,
                vsi_type: VSI_TYPE_SRIOV,
                qset_handle: 0,
                default_mac_addr: self.mac,
            }],
        };
        Ok(reply(res.encode()))
    }

    fn config_vsi_queues(&mut self, m: &VsiQueueConfigInfo) -> Result<Done, Refusal> {
        check_vsi(m.vsi_id)?;
        if m.qpair.len() > usize::from(self.queues) {
            return Err(param("more queue pairs than granted"));
        }
        let mut seen = 0u32;
        for qp in &m.qpair {
            let (t, r) = (&qp.txq, &qp.rxq);
            check_vsi(t.vsi_id)?;
            check_vsi(r.vsi_id)?;
            if t.queue_id != r.queue_id {
                return Err(param("TX and RX queue ids differ"));
            }
            let q = t.queue_id;
            if q >= self.queues {
                return Err(param("queue id beyond the granted pairs"));
            }
            if seen & (1 << q) != 0 {
                return Err(param("queue configured twice"));
            }
            seen |= 1 << q;
            let (tx, rx) = (self.vf.tx[usize::from(q)], self.vf.rx[usize::from(q)]);
            if tx.enabled || rx.enabled {
                return Err(param("queue is enabled"));
            }
            if t.headwb_enabled != 0 {
                return Err(param("head write-back is not supported"));
            }
            if !ring_len_ok(u32::from(t.ring_len)) || !ring_len_ok(r.ring_len) {
                return Err(param("ring length not a multiple of 32 up to 4096"));
            }
            if t.ring_len != 0
                && ring_overflows(t.dma_ring_addr, u32::from(t.ring_len), TX_DESC_SIZE)
            {
                return Err(param("TX ring wraps the address space"));
            }
            if r.ring_len != 0 {
                if ring_overflows(r.dma_ring_addr, r.ring_len, RX_DESC32_SIZE) {
                    return Err(param("RX ring wraps the address space"));
                }
                if !RX_BUFFER_RANGE.contains(&r.databuffer_size) {
                    return Err(param("RX buffer size out of range"));
                }
                if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&r.max_pkt_size) {
                    return Err(param("max packet size out of range"));
                }
                if r.splithdr_enabled != 0 {
                    return Err(param("header split is not supported"));
                }
            }
        }
        for qp in &m.qpair {
            let q = usize::from(qp.txq.queue_id);
            let (t, r) = (&qp.txq, &qp.rxq);
            let tx = &mut self.vf.tx[q];
            tx.ring = t.dma_ring_addr;
            tx.len = t.ring_len;
            let rx = &mut self.vf.rx[q];
            rx.ring = r.dma_ring_addr;
            rx.len = r.ring_len;
            rx.databuffer_size = r.databuffer_size;
            rx.max_pkt_size = r.max_pkt_size;
            rx.rxdid = r.rxdid;
            rx.crc_disable = r.crc_disable != 0;
        }
        Ok(ack())
    }

    fn queue_mask(&self) -> u32 {
        // queues <= 16
        (1u32 << self.queues) - 1
    }

    fn config_irq_map(&mut self, io: &mut Io, m: &IrqMapInfo) -> Result<Done, Refusal> {
        let mask = self.queue_mask();
        for v in &m.vecmap {
            check_vsi(v.vsi_id)?;
            if v.vector_id > self.queues {
                return Err(param("vector beyond max_vectors"));
            }
            if u32::from(v.rxq_map) & !mask != 0 || u32::from(v.txq_map) & !mask != 0 {
                return Err(param("queue map names a queue beyond the granted pairs"));
            }
            if v.rxitr_idx > 3 || v.txitr_idx > 3 {
                return Err(param("ITR index beyond 3"));
            }
        }
        for v in &m.vecmap {
            for q in 0..self.queues {
                let i = usize::from(q);
                if v.rxq_map & (1 << q) != 0 {
                    self.vf.rx[i].vector = Some(v.vector_id);
                    self.vf.rx[i].itr_idx = v.rxitr_idx;
                }
                if v.txq_map & (1 << q) != 0 {
                    self.vf.tx[i].vector = Some(v.vector_id);
                    self.vf.tx[i].itr_idx = v.txitr_idx;
                }
            }
        }
        // Enabled queues take their new vector.
        for q in 0..self.queues {
            if self.vf.tx[usize::from(q)].enabled {
                io.ops
                    .push(EmuOp::Configure(queue_ids::tx(q), self.tx_config(q)));
            }
            if self.vf.rx[usize::from(q)].enabled {
                io.ops
                    .push(EmuOp::Configure(queue_ids::rx(q), self.rx_config(q)));
            }
        }
        Ok(ack())
    }

    pub(crate) fn tx_config(&self, q: u16) -> QueueConfig {
        let t = self.vf.tx[usize::from(q)];
        let c = QueueConfig::new(
            QueueKind::Tx,
            Iova(t.ring),
            u32::from(t.len),
            TX_DESC_SIZE as u32,
            queue_ids::tx_doorbell(q),
        );
        match t.vector {
            Some(v) => c.with_irq(u32::from(v)),
            None => c,
        }
    }

    pub(crate) fn rx_config(&self, q: u16) -> QueueConfig {
        let r = self.vf.rx[usize::from(q)];
        let c = QueueConfig::new(
            QueueKind::Rx,
            Iova(r.ring),
            r.len,
            RX_DESC32_SIZE as u32,
            queue_ids::rx_doorbell(q),
        );
        match r.vector {
            Some(v) => c.with_irq(u32::from(v)),
            None => c,
        }
    }

    fn check_select(&self, s: &QueueSelect) -> Result<(), Refusal> {
        check_vsi(s.vsi_id)?;
        if s.rx_queues == 0 && s.tx_queues == 0 {
            return Err(param("no queue selected"));
        }
        let mask = self.queue_mask();
        if s.rx_queues & !mask != 0 || s.tx_queues & !mask != 0 {
            return Err(param("queue id beyond the granted pairs"));
        }
        Ok(())
    }

    fn enable_queues(&mut self, io: &mut Io, s: &QueueSelect) -> Result<Done, Refusal> {
        self.check_select(s)?;
        for q in 0..self.queues {
            let i = usize::from(q);
            if (s.tx_queues & (1 << q) != 0 && self.vf.tx[i].len == 0)
                || (s.rx_queues & (1 << q) != 0 && self.vf.rx[i].len == 0)
            {
                return Err(param("queue is not configured"));
            }
        }
        for q in 0..self.queues {
            let i = usize::from(q);
            if s.tx_queues & (1 << q) != 0 && !self.vf.tx[i].enabled {
                self.vf.tx[i].enabled = true;
                if let Some(p) = self.vf.parked.get_mut(i) {
                    p[0] = None;
                }
                io.ops
                    .push(EmuOp::Configure(queue_ids::tx(q), self.tx_config(q)));
            }
            if s.rx_queues & (1 << q) != 0 && !self.vf.rx[i].enabled {
                self.vf.rx[i].enabled = true;
                if let Some(p) = self.vf.parked.get_mut(i) {
                    p[1] = None;
                }
                io.ops
                    .push(EmuOp::Configure(queue_ids::rx(q), self.rx_config(q)));
            }
        }
        let mut done = ack();
        done.link_event = !self.vf.link_reported;
        Ok(done)
    }

    fn disable_queues(&mut self, io: &mut Io, s: &QueueSelect) -> Result<Done, Refusal> {
        self.check_select(s)?;
        for q in 0..self.queues {
            let i = usize::from(q);
            if s.tx_queues & (1 << q) != 0 && self.vf.tx[i].enabled {
                self.vf.tx[i].enabled = false;
                io.ops.push(EmuOp::Clear(queue_ids::tx(q)));
            }
            if s.rx_queues & (1 << q) != 0 && self.vf.rx[i].enabled {
                self.vf.rx[i].enabled = false;
                io.ops.push(EmuOp::Clear(queue_ids::rx(q)));
            }
        }
        if !self.any_queue_enabled() {
            self.vf.link_reported = false;
        }
        Ok(ack())
    }

    fn add_eth_addr(&mut self, l: &EtherAddrList) -> Result<Done, Refusal> {
        check_vsi(l.vsi_id)?;
        let mut new = self.vf.macs.clone();
        for a in &l.list {
            if a.addr == [0; 6] || a.addr == [0xFF; 6] {
                return Err(param("zero or broadcast MAC"));
            }
            new.insert(a.addr);
        }
        if new.len() > MAX_MAC_FILTERS {
            return Err(Refusal {
                status: VirtchnlStatus::ErrNoMemory,
                why: "too many MAC filters",
            });
        }
        self.vf.macs = new;
        Ok(ack())
    }

    fn del_eth_addr(&mut self, l: &EtherAddrList) -> Result<Done, Refusal> {
        check_vsi(l.vsi_id)?;
        for a in &l.list {
            // The default MAC stays (a PF-assigned address).
            if a.addr != self.mac {
                self.vf.macs.remove(&a.addr);
            }
        }
        Ok(ack())
    }

    fn vlan_filters(&mut self, l: &VlanFilterList, add: bool) -> Result<Done, Refusal> {
        self.need(caps::VLAN)?;
        check_vsi(l.vsi_id)?;
        if l.vlan_id.iter().any(|&v| v > 4095) {
            return Err(param("VLAN id above 4095"));
        }
        for &v in &l.vlan_id {
            if add {
                self.vf.vlans.insert(v);
            } else {
                self.vf.vlans.remove(&v);
            }
        }
        Ok(ack())
    }

    fn promiscuous(&mut self, p: &PromiscInfo) -> Result<Done, Refusal> {
        check_vsi(p.vsi_id)?;
        if p.flags & !(promisc::UNICAST | promisc::MULTICAST) != 0 {
            return Err(param("unknown promiscuous flags"));
        }
        self.vf.promisc = p.flags;
        Ok(ack())
    }

    fn rss_key(&mut self, k: &RssKey) -> Result<Done, Refusal> {
        self.need(caps::RSS_PF)?;
        check_vsi(k.vsi_id)?;
        if k.key.len() != usize::from(RSS_KEY_SIZE) {
            return Err(param("RSS key length is not rss_key_size"));
        }
        self.rss.key.copy_from_slice(&k.key);
        Ok(ack())
    }

    fn rss_lut(&mut self, l: &RssLut) -> Result<Done, Refusal> {
        self.need(caps::RSS_PF)?;
        check_vsi(l.vsi_id)?;
        if l.lut.len() != usize::from(RSS_LUT_SIZE) {
            return Err(param("RSS LUT size is not rss_lut_size"));
        }
        if l.lut.iter().any(|&e| u16::from(e) >= self.queues) {
            return Err(param("RSS LUT entry beyond the granted queues"));
        }
        self.rss.lut.copy_from_slice(&l.lut);
        Ok(ack())
    }

    /// The link state changed (from the application): record it and tell a running VF.
    pub(crate) fn set_link(&mut self, io: &mut Io, up: bool) {
        if self.link_up == up {
            return;
        }
        self.link_up = up;
        io.ops.push(EmuOp::Attr("link_up", AttrValue::Bool(up)));
        if self.vf.version.is_some() && self.any_queue_enabled() {
            self.send_link_event(io);
            self.deliver_arq(io);
        }
    }
}

fn ring_overflows(base: u64, len: u32, desc: usize) -> bool {
    base.checked_add(u64::from(len) * desc as u64).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_length_rule() {
        for ok in [0, 32, 64, 512, 4096] {
            assert!(ring_len_ok(ok), "{ok}");
        }
        for bad in [1, 31, 33, 100, 4095, 4097, 4128, u32::MAX] {
            assert!(!ring_len_ok(bad), "{bad}");
        }
    }

    #[test]
    fn overflow_rule() {
        assert!(!ring_overflows(0x1000, 4096, 32));
        assert!(ring_overflows(u64::MAX - 16, 1, 32));
        assert!(!ring_overflows(u64::MAX - 32, 1, 32));
    }

    #[test]
    fn implemented_caps_cover_the_required_ones() {
        for c in [caps::L2, caps::RSS_PF, caps::WB_ON_ITR, caps::VLAN] {
            assert_ne!(IMPLEMENTED_CAPS & c, 0);
        }
        assert_eq!(IMPLEMENTED_CAPS & caps::RX_FLEX_DESC, 0);
    }
}
