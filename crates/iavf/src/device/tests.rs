//! Device tests: a small admin-queue "test driver" over a real DMA table (memfd) and a real IRQ
//! table (eventfds), and one end-to-end run over a vfio-user socket.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use emudev::{AttrValue, QueueKind};
use emudev_dma::{DmaLimits, DmaMapRequest, DmaProt, DmaTable, Iova};
use emudev_pci::regs::{
    PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_MSIX_FLAGS_ENABLE,
};
use emudev_vfio_user::irq::{IrqTable, MSIX};
use emudev_vfio_user::{Device, DeviceContext, Errno};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use super::*;
use crate::spec::aq::{self, rc, AqDesc};
use crate::spec::regs::*;
use crate::spec::virtchnl::*;

const BAR0: u32 = 0;
const CFG: u32 = 7;

/// Client memory: 1 MiB at this IOVA.
const RAM: u64 = 0x10_0000;
const RAM_SIZE: u64 = 0x10_0000;
const ATQ_RING: u64 = RAM;
const ARQ_RING: u64 = RAM + 0x1000;
const ATQ_BUFS: u64 = RAM + 0x2_0000;
const ARQ_BUFS: u64 = RAM + 0x4_0000;
const TX_RINGS: u64 = RAM + 0x6_0000;
const RX_RINGS: u64 = RAM + 0x8_0000;
const AQ_LEN: u32 = 32;
const BUF: u64 = 4096;
/// Far outside any mapping.
const UNMAPPED: u64 = 0x7_0000_0000;

fn new_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

/// How many times the eventfd fired since the last look.
fn fired(fd: &OwnedFd) -> u64 {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        Ok(n) => panic!("short eventfd read of {n} bytes"),
        Err(Errno::AGAIN) => 0,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// The device, client memory, MSI-X eventfds, and the test driver's ring positions.
struct Rig {
    dev: IavfDevice,
    ctx: DeviceContext,
    msix: Vec<OwnedFd>,
    atq_ntu: u32,
    arq_ntc: u32,
    _ram: OwnedFd,
}

fn rig(queues: u16) -> Rig {
    let dev =
        IavfDevice::new(IavfConfig::new("emu_iavf_test").with_queues(queues)).expect("device");
    let ram = memfd_create("iavf-test-ram", MemfdFlags::CLOEXEC).expect("memfd");
    ftruncate(&ram, RAM_SIZE).expect("ftruncate");
    let dma = DmaTable::new(DmaLimits::default());
    dma.map(DmaMapRequest {
        iova: Iova(RAM),
        size: RAM_SIZE,
        prot: DmaProt::RW,
        file_offset: 0,
        fd: Some(ram.try_clone().expect("dup")),
    })
    .expect("map");
    let counts: Vec<u32> = (0..5)
        .map(|i| dev.irq_info(i).map_or(0, |x| x.count))
        .collect();
    assert_eq!(counts[MSIX as usize], u32::from(queues) + 1);
    let irqs = IrqTable::new(&counts);
    let msix: Vec<OwnedFd> = (0..=queues).map(|_| new_eventfd()).collect();
    irqs.set_eventfds(
        MSIX,
        0,
        msix.iter()
            .map(|f| Some(f.try_clone().expect("dup")))
            .collect(),
    )
    .expect("bind eventfds");
    let ctx = DeviceContext {
        dma: Arc::new(dma),
        irqs: Arc::new(irqs),
    };
    let mut r = Rig {
        dev,
        ctx,
        msix,
        atq_ntu: 0,
        arq_ntc: 0,
        _ram: ram,
    };
    let ctx = r.ctx.clone();
    r.dev.client_connected(&ctx);
    r
}

impl Rig {
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(&self.ctx, BAR0, off, &mut b)
            .expect("BAR0 read");
        u32::from_le_bytes(b)
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.dev
            .region_write(&self.ctx, BAR0, off, &v.to_le_bytes())
            .expect("BAR0 write");
    }

    fn cfg_w16(&mut self, off: u64, v: u16) {
        self.dev
            .region_write(&self.ctx, CFG, off, &v.to_le_bytes())
            .expect("config write");
    }

    fn cfg_r(&mut self, off: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(&self.ctx, CFG, off, &mut b[..len])
            .expect("config read");
        u32::from_le_bytes(b)
    }

    fn mem_w(&self, iova: u64, data: &[u8]) {
        self.ctx
            .dma
            .write(Iova(iova), data)
            .expect("test memory write");
    }

    fn mem_r(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.ctx
            .dma
            .read(Iova(iova), &mut b)
            .expect("test memory read");
        b
    }

    fn desc(&self, iova: u64) -> AqDesc {
        AqDesc::decode(&self.mem_r(iova, 32)).expect("descriptor")
    }

    fn stats(&self) -> IavfStats {
        self.dev.stats()
    }

    fn snap(&self) -> IavfSnapshot {
        self.dev.snapshot()
    }

    /// Memory and bus mastering on, MSI-X enabled.
    fn enable_pci(&mut self) {
        self.cfg_w16(
            u64::from(PCI_COMMAND),
            PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        );
        let ctrl = self
            .dev
            .pci_config()
            .msix_capability()
            .expect("MSI-X")
            .control_offset();
        self.cfg_w16(u64::from(ctrl), PCI_MSIX_FLAGS_ENABLE);
    }

    /// The vector-0 enable sequence of DPDK's `iavf_enable_irq0`.
    fn enable_irq0(&mut self) {
        self.w32(VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ);
        self.w32(
            VFINT_DYN_CTL01,
            DYN_CTL_INTENA | DYN_CTL_CLEARPBA | DYN_CTL_ITR_INDX_MASK,
        );
    }

    /// Admin-queue init as `iavf_init_adminq` does it, ARQ entries pre-posted.
    fn aq_init(&mut self) {
        self.atq_ntu = 0;
        self.arq_ntc = 0;
        self.mem_w(ATQ_RING, &[0u8; 32 * AQ_LEN as usize]);
        for i in 0..AQ_LEN {
            let d = AqDesc::posted_receive(BUF as u16, ARQ_BUFS + u64::from(i) * BUF);
            self.mem_w(ARQ_RING + u64::from(i) * 32, &d.encode());
        }
        self.w32(VF_ATQH1, 0);
        self.w32(VF_ATQT1, 0);
        self.w32(VF_ATQLEN1, AQ_LEN | AQLEN_ENABLE);
        self.w32(VF_ATQBAL1, ATQ_RING as u32);
        self.w32(VF_ATQBAH1, (ATQ_RING >> 32) as u32);
        assert_eq!(self.r32(VF_ATQBAL1), ATQ_RING as u32);
        self.w32(VF_ARQH1, 0);
        self.w32(VF_ARQT1, 0);
        self.w32(VF_ARQLEN1, AQ_LEN | AQLEN_ENABLE);
        self.w32(VF_ARQBAL1, ARQ_RING as u32);
        self.w32(VF_ARQBAH1, (ARQ_RING >> 32) as u32);
        self.w32(VF_ARQT1, AQ_LEN - 1);
    }

    /// Sends one message on the ATQ; returns the written-back descriptor.
    fn send(&mut self, op: u32, body: &[u8]) -> AqDesc {
        let slot = self.atq_ntu;
        let buf = ATQ_BUFS + u64::from(slot) * BUF;
        let len = u16::try_from(body.len()).expect("test message size");
        if !body.is_empty() {
            self.mem_w(buf, body);
        }
        let d = AqDesc::send_to_pf(op, len, buf);
        let at = ATQ_RING + u64::from(slot) * 32;
        self.mem_w(at, &d.encode());
        self.atq_ntu = (slot + 1) % AQ_LEN;
        self.w32(VF_ATQT1, self.atq_ntu);
        self.desc(at)
    }

    /// Takes the next ARQ message, if any, and re-posts its entry.
    fn recv(&mut self) -> Option<(AqDesc, Vec<u8>)> {
        let head = self.r32(VF_ARQH1) & 0x3FF;
        if head == self.arq_ntc {
            return None;
        }
        let at = ARQ_RING + u64::from(self.arq_ntc) * 32;
        let d = self.desc(at);
        let buf = ARQ_BUFS + u64::from(self.arq_ntc) * BUF;
        let body = self.mem_r(buf, usize::from(d.datalen).min(BUF as usize));
        self.mem_w(at, &AqDesc::posted_receive(BUF as u16, buf).encode());
        self.w32(VF_ARQT1, self.arq_ntc);
        self.arq_ntc = (self.arq_ntc + 1) % AQ_LEN;
        Some((d, body))
    }

    /// Sends `op` and returns the reply's status and body (the reply must be next).
    fn call(&mut self, op: VirtchnlOp, body: &[u8]) -> (i32, Vec<u8>) {
        self.call_raw(op.raw(), body)
    }

    fn call_raw(&mut self, op: u32, body: &[u8]) -> (i32, Vec<u8>) {
        let done = self.send(op, body);
        assert!(
            done.has(aq::FLAG_DD | aq::FLAG_CMP),
            "ATQ write-back: {done:?}"
        );
        let (d, b) = self.recv().unwrap_or_else(|| panic!("no reply to op {op}"));
        assert_eq!(d.opcode, aq::OPC_SEND_MSG_TO_VF);
        assert_eq!(d.cookie_high, op, "reply op");
        assert!(d.has(aq::FLAG_DD | aq::FLAG_CMP));
        (d.v_retval(), b)
    }

    fn ok(&mut self, op: VirtchnlOp, body: &[u8]) -> Vec<u8> {
        let (st, b) = self.call(op, body);
        assert_eq!(st, 0, "{op:?} failed with {st}");
        b
    }

    /// Expects `op` to be refused with `status`, counted once.
    fn refused(&mut self, op: VirtchnlOp, body: &[u8], status: VirtchnlStatus) {
        let before = self.stats().vc_errors;
        let (st, b) = self.call(op, body);
        assert_eq!(st, status.raw(), "{op:?} should be refused with {status:?}");
        assert!(b.is_empty());
        assert_eq!(
            self.stats().vc_errors,
            before + 1,
            "{op:?} refusal not counted"
        );
    }

    fn version_and_resources(&mut self, caps_wanted: u32) -> VfResource {
        let v = self.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
        assert_eq!(VersionInfo::decode(&v), Ok(VersionInfo::V1_1));
        let r = self.ok(VirtchnlOp::GetVfResources, &caps_wanted.to_le_bytes());
        VfResource::decode(&r).expect("vf_resource")
    }

    fn qpair(q: u16, ring_len: u16) -> QueuePairInfo {
        QueuePairInfo {
            txq: TxqInfo {
                vsi_id: VSI_ID,
                queue_id: q,
                ring_len,
                headwb_enabled: 0,
                dma_ring_addr: TX_RINGS + u64::from(q) * 0x2000,
                dma_headwb_addr: 0,
            },
            rxq: RxqInfo {
                vsi_id: VSI_ID,
                queue_id: q,
                ring_len: u32::from(ring_len),
                hdr_size: 0,
                splithdr_enabled: 0,
                databuffer_size: 2048,
                max_pkt_size: 1518,
                crc_disable: 0,
                rxdid: crate::spec::desc::RXDID_LEGACY_1,
                dma_ring_addr: RX_RINGS + u64::from(q) * 0x4000,
                rx_split_pos: 0,
            },
        }
    }

    fn vsi_queues(n: u16) -> VsiQueueConfigInfo {
        VsiQueueConfigInfo {
            vsi_id: VSI_ID,
            qpair: (0..n).map(|q| Self::qpair(q, 256)).collect(),
        }
    }

    /// The whole DPDK-order bring-up with `n` pairs; returns the resources.
    fn bring_up(&mut self, n: u16) -> VfResource {
        self.enable_pci();
        assert!(VfrState::from_rstat(self.r32(VFGEN_RSTAT)).is_some_and(VfrState::is_reset_done));
        self.aq_init();
        self.enable_irq0();
        let res = self.version_and_resources(
            caps::BASE_MODE_OFFLOADS
                | caps::WB_ON_ITR
                | caps::RX_POLLING
                | caps::ADV_LINK_SPEED
                | caps::RX_FLEX_DESC
                | caps::FDIR_PF
                | caps::ADV_RSS_PF,
        );
        self.ok(VirtchnlOp::ConfigVsiQueues, &Self::vsi_queues(n).encode());
        let mask = ((1u32 << n) - 1) as u16;
        let map = IrqMapInfo {
            vecmap: vec![
                VectorMap {
                    vsi_id: VSI_ID,
                    vector_id: 1,
                    rxq_map: mask,
                    txq_map: 0,
                    rxitr_idx: 0,
                    txitr_idx: 0,
                },
                VectorMap {
                    vsi_id: VSI_ID,
                    vector_id: 0,
                    rxq_map: 0,
                    txq_map: mask,
                    rxitr_idx: 0,
                    txitr_idx: 0,
                },
            ],
        };
        self.ok(VirtchnlOp::ConfigIrqMap, &map.encode());
        let mac = EtherAddrList {
            vsi_id: VSI_ID,
            list: vec![EtherAddr {
                addr: res.vsi_res[0].default_mac_addr,
                addr_type: 0,
            }],
        };
        self.ok(VirtchnlOp::AddEthAddr, &mac.encode());
        for q in 0..n {
            self.w32(qrx_tail(q).expect("tail"), 255);
            self.w32(qtx_tail(q).expect("tail"), 0);
        }
        fired(&self.msix[0]);
        let sel = QueueSelect {
            vsi_id: VSI_ID,
            rx_queues: u32::from(mask),
            tx_queues: u32::from(mask),
        };
        self.ok(VirtchnlOp::EnableQueues, &sel.encode());
        self.expect_link_event(true);
        res
    }

    fn expect_link_event(&mut self, up: bool) {
        let (d, b) = self.recv().expect("a LINK_CHANGE event");
        assert_eq!(d.cookie_high, VirtchnlOp::Event.raw());
        assert_eq!(d.v_retval(), 0);
        let ev = PfEvent::decode(&b).expect("pf event");
        match ev.data {
            PfEventData::LinkChange {
                link_speed,
                link_status,
            } => {
                assert_eq!(link_status != 0, up);
                if self.snap().caps & caps::ADV_LINK_SPEED != 0 {
                    assert_eq!(link_speed, LINK_SPEED_MBPS, "ADV_LINK_SPEED: Mbps");
                } else {
                    assert_eq!(link_speed, link_speed::SPEED_10GB, "legacy speed enum");
                }
            }
            other => panic!("not a link event: {other:?}"),
        }
    }

    /// The device still answers: GET_STATS works.
    fn still_works(&mut self) {
        let s = self.ok(
            VirtchnlOp::GetStats,
            &QueueSelect {
                vsi_id: VSI_ID,
                ..Default::default()
            }
            .encode(),
        );
        assert_eq!(s.len(), EthStats::SIZE);
    }
}

// ----- identity and registers ---------------------------------------------------------------

#[test]
fn pci_identity_bars_and_msix_layout() {
    let mut r = rig(4);
    assert_eq!(r.cfg_r(0, 2), 0x8086);
    assert_eq!(r.cfg_r(2, 2), 0x1889);
    assert_eq!(r.cfg_r(9, 3), 0x02_0000);
    assert_eq!(r.cfg_r(0x3D, 1), 0, "no INTx pin");
    let cfg = r.dev.pci_config();
    assert_eq!(cfg.size(), 4096, "PCI Express config space");
    assert!(cfg.pcie_capability().is_some());
    let cap = cfg.msix_capability().expect("MSI-X");
    assert_eq!(cap.vectors, 5);
    assert_eq!((cap.table_bar, cap.table_offset), (3, 0));
    assert_eq!((cap.pba_bar, cap.pba_offset), (3, 0x2000));
    let bar0 = r.dev.region_info(0).expect("BAR0");
    assert!(bar0.size >= 0x1_0000);
    assert!(bar0.mmap.is_none(), "BAR0 is trapped for now");
    assert_eq!(r.dev.region_info(3).expect("BAR3").size, MSIX_BAR_SIZE);
    assert_eq!(r.dev.irq_info(MSIX).expect("MSI-X info").count, 5);
    assert_eq!(r.dev.irq_info(0).expect("INTx info").count, 0);
    assert_eq!(
        VfrState::from_rstat(r.r32(VFGEN_RSTAT)),
        Some(VfrState::VfActive),
        "VFACTIVE at probe"
    );
}

#[test]
fn config_is_validated_and_attributes_declared() {
    assert!(matches!(
        IavfDevice::new(IavfConfig::new("x").with_queues(17)),
        Err(CreateIavfError::Config(IavfConfigError::Queues(17)))
    ));
    let d = IavfDevice::new(
        IavfConfig::new("emu_iavf3")
            .with_queues(3)
            .with_mac([2, 0, 0, 0, 0, 9])
            .with_mtu(9000),
    )
    .expect("device");
    let emu = d.emu();
    assert_eq!(emu.state(), emudev::DevState::Started);
    assert_eq!(emu.name(), "emu_iavf3");
    assert_eq!(
        emu.get_attr("mac"),
        Ok(AttrValue::Bytes(vec![2, 0, 0, 0, 0, 9]))
    );
    assert_eq!(emu.get_attr("mtu"), Ok(AttrValue::U64(9000)));
    assert_eq!(emu.get_attr("num_queue_pairs"), Ok(AttrValue::U64(3)));
    assert_eq!(emu.get_attr("link_up"), Ok(AttrValue::Bool(true)));
    assert!(
        emu.set_attr("mac", AttrValue::Bytes(vec![2; 6])).is_err(),
        "mac is read-only"
    );
    // ATQT, ARQT and 3 + 3 tails.
    assert_eq!(emu.doorbells().len(), 8);
}

#[test]
fn register_file_reads_back_and_bad_accesses_are_counted() {
    let mut r = rig(2);
    r.w32(vfint_itrn1(1, 1).expect("reg"), 0x1_2345);
    assert_eq!(
        r.r32(vfint_itrn1(1, 1).expect("reg")),
        0x345,
        "ITR interval is 12 bits"
    );
    r.w32(VFQF_HENA_BASE, 0xAAAA_5555);
    r.w32(VFQF_HENA_BASE + 4, 0x1234);
    assert_eq!(r.snap().hena, 0x1234_AAAA_5555);
    r.w32(vfqf_hkey(12).expect("reg"), 0x0403_0201);
    assert_eq!(&r.snap().rss_key[48..52], &[1, 2, 3, 4]);
    r.w32(vfqf_hlut(0).expect("reg"), 0x0101_0001);
    assert_eq!(r.r32(vfqf_hlut(0).expect("reg")), 0x0101_0001);
    r.w32(VFGEN_RSTAT, 0);
    assert_eq!(
        r.r32(VFGEN_RSTAT),
        VfrState::VfActive as u32,
        "RSTAT is read-only"
    );
    r.w32(
        vfint_dyn_ctln1(0).expect("reg"),
        DYN_CTL_INTENA | DYN_CTL_CLEARPBA,
    );
    assert_eq!(
        r.r32(vfint_dyn_ctln1(0).expect("reg")),
        DYN_CTL_INTENA,
        "actions read 0"
    );
    assert_eq!(r.r32(0xF000), 0, "holes read 0");
    let before = r.stats().bad_accesses;
    let mut two = [0u8; 2];
    r.dev
        .region_read(&r.ctx, BAR0, VF_ATQLEN1, &mut two)
        .expect("read");
    assert_eq!(two, [0xFF, 0xFF]);
    r.dev
        .region_write(&r.ctx, BAR0, VF_ATQLEN1 + 1, &[1, 2, 3, 4])
        .expect("write");
    assert_eq!(r.stats().bad_accesses, before + 2);
    assert_eq!(r.r32(VF_ATQLEN1), 0, "a misaligned write changes nothing");
}

// ----- bring-up -----------------------------------------------------------------------------

fn bring_up_with(n: u16) {
    let mut r = rig(n);
    let res = r.bring_up(n);
    assert_eq!(res.num_queue_pairs, n);
    assert_eq!(res.max_vectors, n + 1);
    // A frame size: MTU 1500 + 26 (Linux derives netdev->max_mtu = max_mtu - 26).
    assert_eq!(res.max_mtu, 1526);
    assert_eq!((res.rss_key_size, res.rss_lut_size), (52, 64));
    for c in [
        caps::L2,
        caps::RSS_PF,
        caps::WB_ON_ITR,
        caps::VLAN,
        caps::ADV_LINK_SPEED,
    ] {
        assert_ne!(res.vf_cap_flags & c, 0, "cap {c:#x} granted");
    }
    for c in [
        caps::RX_FLEX_DESC,
        caps::FDIR_PF,
        caps::ADV_RSS_PF,
        caps::RX_POLLING,
    ] {
        assert_eq!(res.vf_cap_flags & c, 0, "cap {c:#x} not implemented");
    }
    assert_eq!(res.vsi_res.len(), 1);
    let vsi = res.vsi_res[0];
    assert_eq!(
        (vsi.vsi_id, vsi.num_queue_pairs, vsi.vsi_type),
        (VSI_ID, n, 6)
    );
    assert_eq!(vsi.default_mac_addr, r.dev.config().mac);
    // The ARQ interrupt went out on vector 0 (replies and the link event).
    assert!(fired(&r.msix[0]) >= 1, "MSI-X vector 0 signalled");
    // Queues are in the object model with their rings, doorbells and vectors.
    let emu = r.dev.emu().clone();
    for q in 0..n {
        let tx = emu.get_queue_info(queue_ids::tx(q)).expect("TX queue");
        assert_eq!(tx.kind, QueueKind::Tx);
        assert_eq!(tx.base, Iova(TX_RINGS + u64::from(q) * 0x2000));
        assert_eq!((tx.size, tx.entry_size), (256, 16));
        assert_eq!(tx.doorbell, queue_ids::tx_doorbell(q));
        assert_eq!(tx.irq_vector, Some(0));
        let rx = emu.get_queue_info(queue_ids::rx(q)).expect("RX queue");
        assert_eq!(rx.kind, QueueKind::Rx);
        assert_eq!((rx.size, rx.entry_size), (256, 32));
        assert_eq!(rx.irq_vector, Some(1));
    }
    let atq = emu.get_queue_info(queue_ids::ATQ).expect("ATQ");
    assert_eq!(
        (atq.base, atq.size, atq.kind),
        (Iova(ATQ_RING), 32, QueueKind::Admin)
    );
    assert_eq!(
        emu.get_queue_info(queue_ids::ARQ).expect("ARQ").irq_vector,
        Some(0)
    );
    let s = r.snap();
    assert!(s
        .rx
        .iter()
        .all(|q| q.enabled && q.vector == Some(1) && q.databuffer_size == 2048));
    assert!(s.tx.iter().all(|q| q.enabled && q.len == 256));
    assert_eq!(s.macs, vec![r.dev.config().mac]);
    assert_eq!(r.r32(qrx_tail(0).expect("tail")), 255);
    let st = r.stats();
    assert_eq!(st.vc_errors, 0);
    assert_eq!(st.aq_errors, 0);
    assert_eq!(st.link_events, 1);
    assert_eq!(st.emu_errors, 0);
    r.still_works();
}

#[test]
fn bring_up_one_queue_pair() {
    bring_up_with(1);
}

#[test]
fn bring_up_sixteen_queue_pairs() {
    bring_up_with(16);
}

#[test]
fn get_stats_reports_the_vsi_counters() {
    let mut r = rig(1);
    r.bring_up(1);
    let sel = QueueSelect {
        vsi_id: VSI_ID,
        ..Default::default()
    };
    let s = EthStats::decode(&r.ok(VirtchnlOp::GetStats, &sel.encode())).expect("stats");
    assert_eq!(s, EthStats::default(), "zero until a data path exists");
    let h = r.dev.handle();
    h.vsi_stats()
        .rx_bytes
        .fetch_add(1500, std::sync::atomic::Ordering::Relaxed);
    h.vsi_stats()
        .tx_unicast
        .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    let s = EthStats::decode(&r.ok(VirtchnlOp::GetStats, &sel.encode())).expect("stats");
    assert_eq!((s.rx_bytes, s.tx_unicast, s.tx_bytes), (1500, 3, 0));
}

#[test]
fn reset_vf_then_a_second_bring_up() {
    let mut r = rig(2);
    r.bring_up(2);
    r.ok(
        VirtchnlOp::AddVlan,
        &VlanFilterList {
            vsi_id: VSI_ID,
            vlan_id: vec![100],
        }
        .encode(),
    );
    let delivered = r.stats().arq_delivered;
    let done = r.send(VirtchnlOp::ResetVf.raw(), &[]);
    assert!(
        done.has(aq::FLAG_DD),
        "the RESET_VF descriptor is completed"
    );
    assert_eq!(r.stats().arq_delivered, delivered, "RESET_VF has no reply");
    assert_eq!(r.snap().arq_pending, 0);
    // Linux's "reset detected": ARQLEN enable reads 0; RSTAT says VFACTIVE, which Linux's
    // reset task waits for (COMPLETED would leave it waiting forever).
    assert_eq!(r.r32(VF_ARQLEN1) & AQLEN_ENABLE, 0);
    assert_eq!(r.r32(VF_ATQLEN1), 0);
    assert_eq!(
        VfrState::from_rstat(r.r32(VFGEN_RSTAT)),
        Some(VfrState::VfActive)
    );
    let s = r.snap();
    assert!(s
        .tx
        .iter()
        .chain(s.tx.iter())
        .all(|q| !q.enabled && q.len == 0));
    assert!(s.rx.iter().all(|q| !q.enabled && q.vector.is_none()));
    assert_eq!(s.macs, vec![r.dev.config().mac], "default MAC kept");
    assert!(s.vlans.is_empty());
    assert!(s.version.is_some(), "RESET_VF keeps the negotiated version");
    assert!(
        r.dev.emu().queues().is_empty(),
        "every emudev queue cleared"
    );
    assert_eq!(r.stats().vf_resets, 1);
    // Second bring-up.
    r.bring_up(2);
    assert_eq!(
        VfrState::from_rstat(r.r32(VFGEN_RSTAT)),
        Some(VfrState::VfActive)
    );
    assert_eq!(r.stats().link_events, 2);
    assert_eq!(r.stats().vc_errors, 0);
    r.still_works();
}

#[test]
fn device_reset_and_disconnect_reset_the_vf() {
    let mut r = rig(1);
    r.bring_up(1);
    let ctx = r.ctx.clone();
    r.dev.reset(&ctx).expect("DEVICE_RESET");
    assert_eq!(r.r32(VF_ARQLEN1), 0);
    assert_eq!(
        r.cfg_r(u64::from(PCI_COMMAND), 2),
        0,
        "function reset clears the command register"
    );
    assert!(r.dev.emu().queues().is_empty());
    r.bring_up(1);
    r.dev.client_disconnected(&ctx);
    assert_eq!(r.stats().vf_resets, 2);
    assert_eq!(r.snap().version, None);
    assert!(r.dev.emu().queues().is_empty());
    // A new driver starts from scratch.
    r.bring_up(1);
    r.still_works();
}

/// What the in-tree Linux iavf driver does on a reset it asks for (MTU change, TX timeout):
/// the queue-shutdown AQ command, RESET_VF, wait for ARQLEN enable to clear, wait for RSTAT ==
/// VFACTIVE, re-enable the admin queue, then GET_VF_RESOURCES without a new VERSION.
#[test]
fn linux_style_reset_keeps_version_and_ends_vfactive() {
    let mut r = rig(1);
    r.bring_up(1);
    let errors = r.stats().aq_errors;
    // iavf_shutdown_adminq: opcode 0x0003, no buffer; Linux ignores the result but waits for DD.
    let slot = r.atq_ntu;
    let at = ATQ_RING + u64::from(slot) * 32;
    let mut d = AqDesc::send_to_pf(0, 0, 0);
    d.opcode = aq::OPC_QUEUE_SHUTDOWN;
    d.flags = aq::FLAG_SI;
    r.mem_w(at, &d.encode());
    r.atq_ntu = (slot + 1) % AQ_LEN;
    let t = r.atq_ntu;
    r.w32(VF_ATQT1, t);
    let done = r.desc(at);
    assert!(done.has(aq::FLAG_DD | aq::FLAG_CMP), "{done:?}");
    assert!(
        !done.has(aq::FLAG_ERR),
        "queue shutdown is not an error: {done:?}"
    );
    assert_eq!(
        r.stats().aq_errors,
        errors,
        "queue shutdown is not counted as an AQ error"
    );
    r.send(VirtchnlOp::ResetVf.raw(), &[]);
    assert_eq!(r.r32(VF_ARQLEN1) & AQLEN_ENABLE, 0);
    assert_eq!(
        VfrState::from_rstat(r.r32(VFGEN_RSTAT)),
        Some(VfrState::VfActive)
    );
    r.aq_init();
    // No VERSION this time.
    let res = r.ok(
        VirtchnlOp::GetVfResources,
        &(caps::L2 | caps::RSS_PF).to_le_bytes(),
    );
    assert!(!res.is_empty());
    assert_eq!(r.stats().vc_errors, 0);
}

// ----- interrupts and the ARQ ---------------------------------------------------------------

#[test]
fn arq_interrupt_is_gated_by_icr0_ena1_and_dyn_ctl01() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    fired(&r.msix[0]);
    // Gate closed: a reply arrives, no interrupt.
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    assert_eq!(fired(&r.msix[0]), 0);
    assert_ne!(r.r32(VFINT_ICR01) & ICR01_ADMINQ, 0, "cause latched");
    assert_eq!(r.r32(VFINT_ICR01), 0, "ICR01 clears on read");
    // Half open: still nothing.
    r.w32(VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ);
    assert_eq!(fired(&r.msix[0]), 0);
    // Fully open: the cause raised while closed fires now, once.
    r.w32(VFINT_DYN_CTL01, DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK);
    assert_eq!(fired(&r.msix[0]), 1);
    r.w32(VFINT_DYN_CTL01, DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK);
    assert_eq!(fired(&r.msix[0]), 0, "no interrupt storm on re-arm");
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    assert_eq!(fired(&r.msix[0]), 1);
    // Linux's handler reads ICR0_ENA1, which clears it: gated again.
    assert_eq!(r.r32(VFINT_ICR0_ENA1), ICR0_ENA1_ADMINQ);
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    assert_eq!(fired(&r.msix[0]), 0);
    r.w32(VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ);
    assert_eq!(fired(&r.msix[0]), 1);
    // DPDK's iavf_disable_irq0.
    r.w32(VFINT_ICR0_ENA1, 0);
    r.w32(VFINT_DYN_CTL01, DYN_CTL_ITR_INDX_MASK);
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    assert_eq!(fired(&r.msix[0]), 0);
    // Software trigger.
    r.w32(VFINT_DYN_CTL01, DYN_CTL_INTENA | DYN_CTL_SWINT_TRIG);
    assert!(fired(&r.msix[0]) >= 1);
}

#[test]
fn msix_disabled_means_undelivered_not_a_crash() {
    let mut r = rig(1);
    r.cfg_w16(
        u64::from(PCI_COMMAND),
        PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
    );
    r.aq_init();
    r.enable_irq0();
    let before = r.stats().irqs_undelivered;
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    assert_eq!(fired(&r.msix[0]), 0);
    assert_eq!(r.stats().irqs_undelivered, before + 1);
}

#[test]
fn replies_wait_for_posted_arq_buffers() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    // Pretend the driver has consumed every entry but not re-posted: ARQT == ARQH.
    r.w32(VF_ARQT1, 0);
    r.send(VirtchnlOp::Version.raw(), &VersionInfo::V1_1.encode());
    r.send(VirtchnlOp::Version.raw(), &VersionInfo::V1_1.encode());
    assert_eq!(r.snap().arq_pending, 2);
    assert!(r.recv().is_none());
    // Post one entry: one reply goes out.
    r.w32(VF_ARQT1, 1);
    assert_eq!(r.snap().arq_pending, 1);
    let (d, b) = r.recv().expect("first reply");
    assert_eq!((d.cookie_high, b.len()), (1, 8));
    // recv() re-posted entry 0 by writing ARQT = 0: the second reply fits.
    assert_eq!(r.snap().arq_pending, 0);
    assert!(r.recv().is_some());
}

#[test]
fn arq_overflow_sets_ovfl_and_drops() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.w32(VF_ARQT1, 0);
    for _ in 0..(ARQ_PENDING_MAX / (AQ_LEN as usize - 1) + 1) {
        for _ in 0..AQ_LEN - 1 {
            r.send(VirtchnlOp::Version.raw(), &VersionInfo::V1_1.encode());
        }
    }
    assert_eq!(r.snap().arq_pending, ARQ_PENDING_MAX);
    assert!(r.stats().arq_dropped > 0);
    assert_ne!(r.r32(VF_ARQLEN1) & AQLEN_OVFL, 0);
    assert_ne!(
        r.r32(VF_ARQLEN1) & AQLEN_ENABLE,
        0,
        "enable kept as written"
    );
}

#[test]
fn no_dma_without_bus_mastering() {
    let mut r = rig(1);
    r.aq_init();
    let at = ATQ_RING;
    r.mem_w(ATQ_BUFS, &VersionInfo::V1_1.encode());
    r.mem_w(at, &AqDesc::send_to_pf(1, 8, ATQ_BUFS).encode());
    r.w32(VF_ATQT1, 1);
    assert_eq!(r.r32(VF_ATQH1), 0, "nothing processed");
    assert!(!r.desc(at).has(aq::FLAG_DD));
    assert!(r.stats().aq_errors >= 1);
    // Bus mastering on: the waiting work runs.
    r.cfg_w16(
        u64::from(PCI_COMMAND),
        PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
    );
    assert_eq!(r.r32(VF_ATQH1), 1);
    assert!(r.desc(at).has(aq::FLAG_DD | aq::FLAG_CMP));
    r.atq_ntu = 1;
    let (d, _) = r.recv().expect("VERSION reply");
    assert_eq!(d.cookie_high, 1);
}

#[test]
fn link_attribute_changes_send_events() {
    let mut r = rig(1);
    r.bring_up(1);
    fired(&r.msix[0]);
    r.dev
        .emu()
        .set_attr("link_up", AttrValue::Bool(false))
        .expect("set");
    r.expect_link_event(false);
    assert!(fired(&r.msix[0]) >= 1);
    assert!(!r.snap().link_up);
    r.dev.handle().set_link(true);
    r.expect_link_event(true);
    assert_eq!(r.dev.emu().get_attr("link_up"), Ok(AttrValue::Bool(true)));
    r.dev.handle().set_link(true);
    assert!(r.recv().is_none(), "no event without a change");
    // After DISABLE_QUEUES of everything, the next ENABLE_QUEUES reports the link again.
    let sel = QueueSelect {
        vsi_id: VSI_ID,
        rx_queues: 1,
        tx_queues: 1,
    };
    r.ok(VirtchnlOp::DisableQueues, &sel.encode());
    assert!(
        r.dev.emu().get_queue_info(queue_ids::tx(0)).is_err(),
        "stopped"
    );
    r.ok(VirtchnlOp::EnableQueues, &sel.encode());
    r.expect_link_event(true);
    assert_eq!(r.stats().link_events, 4);
}

#[test]
fn queue_irqs_follow_dyn_ctln1() {
    let mut r = rig(2);
    r.bring_up(2);
    let h = r.dev.handle();
    assert_eq!(h.raise_queue_irq(1), IrqOutcome::Gated);
    assert_eq!(fired(&r.msix[1]), 0);
    r.w32(
        vfint_dyn_ctln1(0).expect("reg"),
        DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK,
    );
    assert_eq!(
        fired(&r.msix[1]),
        1,
        "the cause raised while off fires on enable"
    );
    assert_eq!(h.raise_queue_irq(1), IrqOutcome::Delivered);
    assert_eq!(fired(&r.msix[1]), 1);
    assert_eq!(h.raise_queue_irq(2), IrqOutcome::Gated);
    assert_eq!(h.raise_queue_irq(9), IrqOutcome::Gated);
}

#[test]
fn itr_is_programmed_through_dyn_ctl_writes_on_bar0() {
    let mut r = rig(2);
    r.bring_up(2);
    let h = r.dev.handle();
    let ctln1 = |n| vfint_dyn_ctln1(n).expect("reg");
    let itrn1 = |i, n| vfint_itrn1(i, n).expect("reg");
    let itr = |index: u32, interval: u32| {
        DYN_CTL_INTENA | (index << DYN_CTL_ITR_INDX_SHIFT) | (interval << DYN_CTL_INTERVAL_SHIFT)
    };
    r.w32(ctln1(1), itr(2, 0x123));
    assert_eq!(r.r32(itrn1(2, 1)), 0x123);
    assert_eq!(
        r.r32(ctln1(1)),
        itr(2, 0x123),
        "DYN_CTLN1 reads back as written"
    );
    r.w32(ctln1(1), itr(3, 0x456));
    assert_eq!(r.r32(itrn1(2, 1)), 0x123, "ITR_INDX 3 updates nothing");
    r.w32(VFINT_DYN_CTL01, itr(1, 9));
    assert_eq!(r.r32(vfint_itr01(1).expect("reg")), 9);
    // Vector 1 carries the RX queues (ITR index 0): nothing programmed there, so every raise
    // fires, while an interval on another index changes nothing.
    r.w32(ctln1(0), itr(1, 0xFFF));
    r.w32(ctln1(0), itr(3, 0));
    fired(&r.msix[1]);
    for _ in 0..4 {
        assert_eq!(h.raise_queue_irq(1), IrqOutcome::Delivered);
    }
    assert_eq!(fired(&r.msix[1]), 4);
    let s = r.stats();
    assert_eq!((s.irqs_coalesced, s.irqs_deferred), (0, 0));
    assert_eq!(r.r32(itrn1(1, 0)), 0xFFF);
    // A VF reset forgets every interval.
    r.send(VirtchnlOp::ResetVf.raw(), &[]);
    assert_eq!(r.r32(itrn1(1, 0)), 0);
    assert_eq!(r.r32(itrn1(2, 1)), 0);
    assert_eq!(r.r32(vfint_itr01(1).expect("reg")), 0);
}

#[test]
fn dropping_the_device_with_a_held_interrupt_stops_its_timer() {
    let mut r = rig(1);
    r.bring_up(1);
    // The largest interval (8.19 ms) on the RX ITR index of vector 1.
    r.w32(
        vfint_dyn_ctln1(0).expect("reg"),
        DYN_CTL_INTENA | DYN_CTL_INTERVAL_MASK,
    );
    let h = r.dev.handle();
    let weak = h.downgrade();
    // The first raise fires; one of the next is held (unless the machine stalls for the
    // whole window each time), which starts the timer thread.
    let held = (0..10).any(|_| h.raise_queue_irq(1) == IrqOutcome::Deferred);
    assert!(held, "a raise right after an interrupt is held");
    drop(h);
    let (tx, rx) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(r);
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(2))
        .expect("the device is dropped, its timer joined");
    dropper.join().expect("dropper");
    assert!(
        weak.upgrade().is_none(),
        "nothing keeps the device alive, its timer thread included"
    );
}

#[test]
fn subscribers_may_call_back_into_the_device() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut r = rig(1);
    let h = r.dev.handle();
    let seen = Arc::new(AtomicUsize::new(0));
    let (h2, seen2) = (h.clone(), seen.clone());
    r.dev
        .emu()
        .subscribe_event(emudev::EventSink::callback(move |ev| {
            if let emudev::EmuEvent::QueueConfigured { queue } = ev {
                // Reentrant calls from a subscriber: state, interrupts, link.
                let _ = h2.snapshot();
                let _ = h2.raise_queue_irq(1);
                if *queue == queue_ids::rx(0) {
                    h2.set_link(false);
                }
                seen2.fetch_add(1, Ordering::SeqCst);
            }
        }))
        .expect("subscribe");
    r.bring_up(1);
    // ATQ, ARQ (several times while their registers are written), TX 0, RX 0.
    assert!(seen.load(Ordering::SeqCst) >= 4);
    assert!(!r.snap().link_up);
    assert_eq!(r.dev.emu().get_attr("link_up"), Ok(AttrValue::Bool(false)));
    r.expect_link_event(false);
    r.still_works();
}

// ----- filters, RSS -------------------------------------------------------------------------

#[test]
fn filters_promiscuous_and_rss() {
    let mut r = rig(4);
    r.bring_up(4);
    let extra = [0x02, 0xAA, 0, 0, 0, 1];
    let mcast = [0x01, 0x00, 0x5E, 0, 0, 1];
    let list = |addrs: &[[u8; 6]]| EtherAddrList {
        vsi_id: VSI_ID,
        list: addrs
            .iter()
            .map(|&addr| EtherAddr { addr, addr_type: 0 })
            .collect(),
    };
    r.ok(VirtchnlOp::AddEthAddr, &list(&[extra, mcast]).encode());
    assert_eq!(r.snap().macs.len(), 3);
    r.ok(
        VirtchnlOp::DelEthAddr,
        &list(&[extra, r.dev.config().mac]).encode(),
    );
    assert_eq!(r.snap().macs.len(), 2, "the default MAC stays");
    r.ok(
        VirtchnlOp::ConfigPromiscuousMode,
        &PromiscInfo {
            vsi_id: VSI_ID,
            flags: promisc::UNICAST | promisc::MULTICAST,
        }
        .encode(),
    );
    assert_eq!(r.snap().promisc, 3);
    r.ok(
        VirtchnlOp::AddVlan,
        &VlanFilterList {
            vsi_id: VSI_ID,
            vlan_id: vec![5, 4095],
        }
        .encode(),
    );
    r.ok(
        VirtchnlOp::DelVlan,
        &VlanFilterList {
            vsi_id: VSI_ID,
            vlan_id: vec![5],
        }
        .encode(),
    );
    assert_eq!(r.snap().vlans, vec![4095]);
    r.ok(VirtchnlOp::EnableVlanStripping, &[]);
    assert!(r.snap().vlan_strip);
    let key: Vec<u8> = (0..52).collect();
    r.ok(
        VirtchnlOp::ConfigRssKey,
        &RssKey {
            vsi_id: VSI_ID,
            key: key.clone(),
        }
        .encode(),
    );
    let lut: Vec<u8> = (0..64).map(|i| (i % 4) as u8).collect();
    r.ok(
        VirtchnlOp::ConfigRssLut,
        &RssLut {
            vsi_id: VSI_ID,
            lut: lut.clone(),
        }
        .encode(),
    );
    let caps = RssHena::decode(&r.ok(VirtchnlOp::GetRssHenaCaps, &[])).expect("hena caps");
    assert_eq!(caps.hena, pctype::DEFAULT_HENA);
    r.ok(
        VirtchnlOp::SetRssHena,
        &RssHena {
            hena: (1 << pctype::NONF_IPV4_TCP) | (1 << 2),
        }
        .encode(),
    );
    let s = r.snap();
    assert_eq!((s.rss_key, s.rss_lut), (key, lut));
    assert_eq!(
        s.hena,
        1 << pctype::NONF_IPV4_TCP,
        "unsupported hash types dropped"
    );
    // The key shows through the VFQF_HKEY registers.
    assert_eq!(r.r32(vfqf_hkey(0).expect("reg")), 0x0302_0100);
    assert_eq!(r.stats().vc_errors, 0);
}

#[test]
fn capabilities_not_granted_are_not_supported() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    let res = r.version_and_resources(caps::L2);
    assert_eq!(res.vf_cap_flags, caps::L2);
    let before = r.stats().vc_not_supported;
    r.refused(
        VirtchnlOp::AddVlan,
        &VlanFilterList {
            vsi_id: VSI_ID,
            vlan_id: vec![1],
        }
        .encode(),
        VirtchnlStatus::ErrNotSupported,
    );
    r.refused(
        VirtchnlOp::GetRssHenaCaps,
        &[],
        VirtchnlStatus::ErrNotSupported,
    );
    assert_eq!(r.stats().vc_not_supported, before + 2);
    // A 1.0 VF: no capability word, base grant.
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.ok(
        VirtchnlOp::Version,
        &VersionInfo { major: 1, minor: 0 }.encode(),
    );
    r.refused(
        VirtchnlOp::GetVfResources,
        &caps::L2.to_le_bytes(),
        VirtchnlStatus::ErrParam,
    );
    let res = VfResource::decode(&r.ok(VirtchnlOp::GetVfResources, &[])).expect("resources");
    assert_eq!(res.vf_cap_flags, caps::L2 | caps::VLAN | caps::RSS_REG);
}

// ----- negative cases -----------------------------------------------------------------------

#[test]
fn ops_before_version_are_refused() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.refused(
        VirtchnlOp::GetVfResources,
        &caps::L2.to_le_bytes(),
        VirtchnlStatus::ErrParam,
    );
    r.refused(
        VirtchnlOp::ConfigVsiQueues,
        &Rig::vsi_queues(1).encode(),
        VirtchnlStatus::ErrParam,
    );
    r.refused(
        VirtchnlOp::GetStats,
        &QueueSelect::default().encode(),
        VirtchnlStatus::ErrParam,
    );
    assert!(r.snap().tx[0].len == 0, "nothing configured");
    r.version_and_resources(caps::L2);
    r.still_works();
}

#[test]
fn unknown_and_unmodelled_ops_are_not_supported() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.version_and_resources(caps::L2);
    for op in [0u32, 4, 5, 16, 18, 29, 44, 1000, u32::MAX] {
        let before = r.stats();
        let (st, _) = r.call_raw(op, &[1, 2, 3]);
        assert_eq!(st, VirtchnlStatus::ErrNotSupported.raw(), "op {op}");
        let after = r.stats();
        assert_eq!(after.vc_not_supported, before.vc_not_supported + 1);
    }
    r.still_works();
}

#[test]
fn truncated_and_oversized_messages_are_refused_and_change_nothing() {
    let mut r = rig(2);
    r.enable_pci();
    r.aq_init();
    r.refused(
        VirtchnlOp::Version,
        &[1, 0, 0, 0, 1, 0, 0],
        VirtchnlStatus::ErrParam,
    );
    r.refused(
        VirtchnlOp::Version,
        &[1, 0, 0, 0, 1, 0, 0, 0, 0],
        VirtchnlStatus::ErrParam,
    );
    assert_eq!(r.snap().version, None, "a bad VERSION negotiates nothing");
    r.version_and_resources(caps::BASE_MODE_OFFLOADS);
    let good = Rig::vsi_queues(2).encode();
    for bad in [&good[..good.len() - 1], &good[..8 + 64], &good[..7]] {
        r.refused(VirtchnlOp::ConfigVsiQueues, bad, VirtchnlStatus::ErrParam);
    }
    let mut long = good.clone();
    long.push(0);
    r.refused(VirtchnlOp::ConfigVsiQueues, &long, VirtchnlStatus::ErrParam);
    let mut zero = good.clone();
    zero[2] = 0;
    zero[3] = 0;
    r.refused(VirtchnlOp::ConfigVsiQueues, &zero, VirtchnlStatus::ErrParam);
    // A count that claims more than the bytes present.
    let mut lying = good.clone();
    lying[2] = 200;
    r.refused(
        VirtchnlOp::ConfigVsiQueues,
        &lying,
        VirtchnlStatus::ErrParam,
    );
    assert!(r.snap().tx.iter().all(|q| q.len == 0), "nothing configured");
    let sel = QueueSelect {
        vsi_id: VSI_ID,
        rx_queues: 1,
        tx_queues: 1,
    }
    .encode();
    r.refused(
        VirtchnlOp::EnableQueues,
        &sel[..11],
        VirtchnlStatus::ErrParam,
    );
    r.refused(
        VirtchnlOp::EnableQueues,
        &[sel.as_slice(), &[0]].concat(),
        VirtchnlStatus::ErrParam,
    );
    let irq = IrqMapInfo {
        vecmap: vec![VectorMap {
            vsi_id: VSI_ID,
            vector_id: 1,
            rxq_map: 1,
            ..Default::default()
        }],
    }
    .encode();
    r.refused(
        VirtchnlOp::ConfigIrqMap,
        &irq[..irq.len() - 3],
        VirtchnlStatus::ErrParam,
    );
    let key = RssKey {
        vsi_id: VSI_ID,
        key: vec![7; 52],
    }
    .encode();
    r.refused(
        VirtchnlOp::ConfigRssKey,
        &key[..50],
        VirtchnlStatus::ErrParam,
    );
    r.refused(VirtchnlOp::ResetVf, &[0], VirtchnlStatus::ErrParam);
    assert_ne!(
        r.r32(VF_ARQLEN1) & AQLEN_ENABLE,
        0,
        "a bad RESET_VF resets nothing"
    );
    r.refused(
        VirtchnlOp::GetRssHenaCaps,
        &[0; 8],
        VirtchnlStatus::ErrParam,
    );
    // The flexible-array layout of newer Linux is accepted.
    r.ok(VirtchnlOp::ConfigVsiQueues, &good[..8 + 2 * 64]);
    assert!(r.snap().tx.iter().all(|q| q.len == 256));
    r.still_works();
}

#[test]
fn queue_ids_vsi_ids_and_ring_lengths_are_range_checked() {
    let mut r = rig(2);
    r.enable_pci();
    r.aq_init();
    r.version_and_resources(caps::BASE_MODE_OFFLOADS);
    let param = VirtchnlStatus::ErrParam;
    let mut m = Rig::vsi_queues(2);
    m.qpair[1].txq.queue_id = 2;
    m.qpair[1].rxq.queue_id = 2;
    r.refused(VirtchnlOp::ConfigVsiQueues, &m.encode(), param);
    let m3 = VsiQueueConfigInfo {
        vsi_id: VSI_ID,
        qpair: (0..3).map(|q| Rig::qpair(q % 2, 64)).collect(),
    };
    r.refused(VirtchnlOp::ConfigVsiQueues, &m3.encode(), param);
    let mut wrong_vsi = Rig::vsi_queues(1);
    wrong_vsi.vsi_id = VSI_ID + 1;
    r.refused(VirtchnlOp::ConfigVsiQueues, &wrong_vsi.encode(), param);
    let mut wrong_q_vsi = Rig::vsi_queues(1);
    wrong_q_vsi.qpair[0].rxq.vsi_id = 9;
    r.refused(VirtchnlOp::ConfigVsiQueues, &wrong_q_vsi.encode(), param);
    for len in [100u16, 33, 4096 + 32] {
        let m = VsiQueueConfigInfo {
            vsi_id: VSI_ID,
            qpair: vec![Rig::qpair(0, len)],
        };
        r.refused(VirtchnlOp::ConfigVsiQueues, &m.encode(), param);
    }
    let mut big_rx = Rig::vsi_queues(1);
    big_rx.qpair[0].rxq.ring_len = 8192;
    r.refused(VirtchnlOp::ConfigVsiQueues, &big_rx.encode(), param);
    let mut small_buf = Rig::vsi_queues(1);
    small_buf.qpair[0].rxq.databuffer_size = 512;
    r.refused(VirtchnlOp::ConfigVsiQueues, &small_buf.encode(), param);
    let mut jumbo = Rig::vsi_queues(1);
    jumbo.qpair[0].rxq.max_pkt_size = 9729;
    r.refused(VirtchnlOp::ConfigVsiQueues, &jumbo.encode(), param);
    let mut mismatch = Rig::vsi_queues(2);
    mismatch.qpair[0].rxq.queue_id = 1;
    r.refused(VirtchnlOp::ConfigVsiQueues, &mismatch.encode(), param);
    let mut wraps = Rig::vsi_queues(1);
    wraps.qpair[0].txq.dma_ring_addr = u64::MAX - 100;
    r.refused(VirtchnlOp::ConfigVsiQueues, &wraps.encode(), param);
    assert!(
        r.snap().tx.iter().all(|q| q.len == 0),
        "every refusal changed nothing"
    );
    // 4096 and 32 are fine; so is a pair with an unused (0-length) TX ring.
    let mut edge = Rig::vsi_queues(2);
    edge.qpair[0].txq.ring_len = 4096;
    edge.qpair[0].rxq.ring_len = 32;
    edge.qpair[1].txq.ring_len = 0;
    r.ok(VirtchnlOp::ConfigVsiQueues, &edge.encode());
    let sel = |vsi_id, rx, tx| {
        QueueSelect {
            vsi_id,
            rx_queues: rx,
            tx_queues: tx,
        }
        .encode()
    };
    r.refused(VirtchnlOp::EnableQueues, &sel(VSI_ID, 0b100, 0), param);
    r.refused(VirtchnlOp::EnableQueues, &sel(VSI_ID, 0, 0), param);
    r.refused(VirtchnlOp::EnableQueues, &sel(VSI_ID + 1, 1, 1), param);
    r.refused(VirtchnlOp::EnableQueues, &sel(VSI_ID, 0, 0b10), param);
    r.refused(VirtchnlOp::DisableQueues, &sel(VSI_ID, 0, 1 << 31), param);
    r.refused(VirtchnlOp::GetStats, &sel(VSI_ID + 1, 0, 0), param);
    assert!(
        r.dev.emu().get_queue_info(queue_ids::tx(0)).is_err(),
        "nothing enabled"
    );
    let vm = |vector_id, rxq_map| IrqMapInfo {
        vecmap: vec![VectorMap {
            vsi_id: VSI_ID,
            vector_id,
            rxq_map,
            ..Default::default()
        }],
    };
    r.refused(VirtchnlOp::ConfigIrqMap, &vm(3, 1).encode(), param);
    r.refused(VirtchnlOp::ConfigIrqMap, &vm(1, 0b100).encode(), param);
    let mut bad_vsi = vm(1, 1);
    bad_vsi.vecmap[0].vsi_id = 0;
    r.refused(VirtchnlOp::ConfigIrqMap, &bad_vsi.encode(), param);
    let mac = |vsi_id, addr| {
        EtherAddrList {
            vsi_id,
            list: vec![EtherAddr { addr, addr_type: 0 }],
        }
        .encode()
    };
    r.refused(
        VirtchnlOp::AddEthAddr,
        &mac(VSI_ID + 1, [2, 0, 0, 0, 0, 5]),
        param,
    );
    r.refused(VirtchnlOp::AddEthAddr, &mac(VSI_ID, [0; 6]), param);
    r.refused(VirtchnlOp::AddEthAddr, &mac(VSI_ID, [0xFF; 6]), param);
    r.refused(
        VirtchnlOp::AddVlan,
        &VlanFilterList {
            vsi_id: VSI_ID,
            vlan_id: vec![1, 4096],
        }
        .encode(),
        param,
    );
    assert!(r.snap().vlans.is_empty(), "all or nothing");
    r.refused(
        VirtchnlOp::ConfigPromiscuousMode,
        &PromiscInfo {
            vsi_id: VSI_ID,
            flags: 4,
        }
        .encode(),
        param,
    );
    r.refused(
        VirtchnlOp::ConfigRssKey,
        &RssKey {
            vsi_id: VSI_ID,
            key: vec![1; 40],
        }
        .encode(),
        param,
    );
    r.refused(
        VirtchnlOp::ConfigRssLut,
        &RssLut {
            vsi_id: VSI_ID,
            lut: vec![2; 64],
        }
        .encode(),
        param,
    );
    // Enabled queues cannot be reconfigured under the data path.
    r.ok(VirtchnlOp::EnableQueues, &sel(VSI_ID, 0b11, 0b01));
    r.expect_link_event(true);
    r.refused(
        VirtchnlOp::ConfigVsiQueues,
        &Rig::vsi_queues(2).encode(),
        param,
    );
    assert_eq!(r.stats().emu_errors, 0);
    r.still_works();
}

#[test]
fn too_many_mac_filters_is_no_memory() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.version_and_resources(caps::L2);
    let many = EtherAddrList {
        vsi_id: VSI_ID,
        list: (0..MAX_MAC_FILTERS as u8)
            .map(|i| EtherAddr {
                addr: [2, 0, 0, 0, 1, i],
                addr_type: 0,
            })
            .collect(),
    };
    r.refused(
        VirtchnlOp::AddEthAddr,
        &many.encode(),
        VirtchnlStatus::ErrNoMemory,
    );
    assert_eq!(r.snap().macs.len(), 1);
}

#[test]
fn admin_queue_base_outside_mapped_memory() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    // Move the ATQ somewhere unmapped.
    r.w32(VF_ATQBAL1, UNMAPPED as u32);
    r.w32(VF_ATQBAH1, (UNMAPPED >> 32) as u32);
    let before = r.stats().aq_errors;
    r.w32(VF_ATQT1, 1);
    assert_eq!(r.r32(VF_ATQH1), 0, "head does not move");
    assert_ne!(r.r32(VF_ATQLEN1) & AQLEN_CRIT, 0, "ATQ critical error");
    assert_eq!(r.stats().aq_errors, before + 1);
    // Linux clears the error bits by writing ATQLEN back; the ring comes back.
    r.w32(VF_ATQLEN1, AQ_LEN | AQLEN_ENABLE);
    r.w32(VF_ATQT1, 0);
    r.w32(VF_ATQBAL1, ATQ_RING as u32);
    r.w32(VF_ATQBAH1, 0);
    // ARQ outside mapped memory: the reply waits, CRIT is set.
    r.w32(VF_ARQBAL1, UNMAPPED as u32);
    r.w32(VF_ARQBAH1, (UNMAPPED >> 32) as u32);
    r.atq_ntu = 0;
    r.send(VirtchnlOp::Version.raw(), &VersionInfo::V1_1.encode());
    assert_eq!(r.snap().arq_pending, 1);
    assert_ne!(r.r32(VF_ARQLEN1) & AQLEN_CRIT, 0);
    // Back to good memory: the reply is delivered.
    r.w32(VF_ARQLEN1, AQ_LEN | AQLEN_ENABLE);
    r.w32(VF_ARQBAL1, ARQ_RING as u32);
    r.w32(VF_ARQBAH1, 0);
    let (d, _) = r.recv().expect("reply after the fix");
    assert_eq!(d.cookie_high, 1);
    r.version_and_resources(caps::L2);
    r.still_works();
}

#[test]
fn buffers_outside_mapped_memory_and_bad_descriptors() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.version_and_resources(caps::L2);
    // A message buffer that is not mapped.
    let before = r.stats();
    let slot = r.atq_ntu;
    let at = ATQ_RING + u64::from(slot) * 32;
    r.mem_w(at, &AqDesc::send_to_pf(15, 12, UNMAPPED).encode());
    r.atq_ntu = (slot + 1) % AQ_LEN;
    r.w32(VF_ATQT1, r.atq_ntu);
    let done = r.desc(at);
    assert!(done.has(aq::FLAG_DD | aq::FLAG_CMP | aq::FLAG_ERR));
    assert_eq!(done.retval, rc::BAD_ADDR);
    let (d, _) = r.recv().expect("error reply");
    assert_eq!(d.v_retval(), VirtchnlStatus::ErrAdminQueueError.raw());
    assert_eq!(r.stats().aq_errors, before.aq_errors + 1);
    // A wrong AQ opcode.
    let slot = r.atq_ntu;
    let at = ATQ_RING + u64::from(slot) * 32;
    let mut d = AqDesc::send_to_pf(1, 0, 0);
    d.opcode = 0x0123;
    r.mem_w(at, &d.encode());
    r.atq_ntu = (slot + 1) % AQ_LEN;
    r.w32(VF_ATQT1, r.atq_ntu);
    let done = r.desc(at);
    assert!(done.has(aq::FLAG_ERR));
    assert_eq!(done.retval, rc::ESRCH);
    assert!(r.recv().is_none(), "not a virtchnl message: no reply");
    // datalen above 4096.
    let slot = r.atq_ntu;
    let at = ATQ_RING + u64::from(slot) * 32;
    r.mem_w(at, &AqDesc::send_to_pf(6, 5000, ATQ_BUFS).encode());
    r.atq_ntu = (slot + 1) % AQ_LEN;
    r.w32(VF_ATQT1, r.atq_ntu);
    assert!(r.desc(at).has(aq::FLAG_ERR));
    let (d, _) = r.recv().expect("error reply");
    assert_eq!(d.v_retval(), VirtchnlStatus::ErrParam.raw());
    // A tail beyond the ring.
    let errs = r.stats().aq_errors;
    r.w32(VF_ATQT1, 40);
    assert_eq!(r.stats().aq_errors, errs + 1);
    assert_ne!(r.r32(VF_ATQLEN1) & AQLEN_VFE, 0);
    r.w32(VF_ATQLEN1, AQ_LEN | AQLEN_ENABLE);
    r.w32(VF_ATQT1, r.atq_ntu);
    r.still_works();
    assert!(r.stats().aq_errors >= before.aq_errors + 4);
}

#[test]
fn a_small_arq_buffer_gets_err() {
    let mut r = rig(1);
    r.enable_pci();
    r.aq_init();
    r.ok(VirtchnlOp::Version, &VersionInfo::V1_1.encode());
    // Re-post the next ARQ entry with a 16-byte buffer: GET_VF_RESOURCES (36 bytes) is cut.
    let slot = r.arq_ntc;
    r.mem_w(
        ARQ_RING + u64::from(slot) * 32,
        &AqDesc::posted_receive(16, ARQ_BUFS + u64::from(slot) * BUF).encode(),
    );
    r.send(VirtchnlOp::GetVfResources.raw(), &caps::L2.to_le_bytes());
    let (d, b) = r.recv().expect("reply");
    assert!(d.has(aq::FLAG_ERR));
    assert_eq!((d.retval, b.len()), (rc::EFBIG, 16));
}

// ----- end to end over a socket -----------------------------------------------------------------

#[test]
fn end_to_end_reset_polling_and_version_over_a_socket() {
    use emudev_vfio_user::client::Client;
    use emudev_vfio_user::server::ServerConfig;

    let path = std::env::temp_dir().join(format!("emudev-iavf-e2e-{}.sock", std::process::id()));
    let dev = IavfDevice::new(IavfConfig::new("emu_iavf_e2e").with_queues(2)).expect("device");
    let handle = dev.handle();
    let running = dev
        .serve(&path, ServerConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    let mut c = Client::connect(&path).expect("connect");
    assert_eq!(c.read_u32(CFG, 0).expect("ids"), 0x1889_8086);
    // Reset-done polling, as iavf_check_vf_reset_done does.
    let mut done = false;
    for _ in 0..50 {
        let v = c.read_u32(BAR0, VFGEN_RSTAT).expect("RSTAT");
        if VfrState::from_rstat(v).is_some_and(VfrState::is_reset_done) {
            done = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(done, "reset done");
    let irqs = c.enable_irqs(MSIX, 3).expect("MSI-X eventfds");
    c.region_write(
        CFG,
        u64::from(PCI_COMMAND),
        &(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER).to_le_bytes(),
    )
    .expect("command");
    let msix_ctrl = u64::from(handle.msix().capability().control_offset());
    c.region_write(CFG, msix_ctrl, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes())
        .expect("MSI-X enable");
    let mem = c.alloc_dma(RAM, 0x4_0000, true).expect("DMA memory");
    // Rings at +0 (ATQ) and +0x1000 (ARQ); buffers at +0x2000 (ATQ) and +0x3000.. (ARQ).
    for i in 0..4u64 {
        let d = AqDesc::posted_receive(BUF as u16, RAM + 0x3000 + i * BUF);
        mem.write(0x1000 + i * 32, &d.encode()).expect("post");
    }
    for (off, v) in [
        (VF_ATQH1, 0),
        (VF_ATQT1, 0),
        (VF_ATQLEN1, 4 | AQLEN_ENABLE),
        (VF_ATQBAL1, RAM as u32),
        (VF_ATQBAH1, 0),
        (VF_ARQH1, 0),
        (VF_ARQT1, 0),
        (VF_ARQLEN1, 4 | AQLEN_ENABLE),
        (VF_ARQBAL1, (RAM + 0x1000) as u32),
        (VF_ARQBAH1, 0),
        (VF_ARQT1, 3),
        (VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ),
        (VFINT_DYN_CTL01, DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK),
    ] {
        c.write_u32(BAR0, off, v).expect("register");
    }
    mem.write(0x2000, &VersionInfo::V1_1.encode())
        .expect("message");
    mem.write(0, &AqDesc::send_to_pf(1, 8, RAM + 0x2000).encode())
        .expect("descriptor");
    c.write_u32(BAR0, VF_ATQT1, 1).expect("ATQT");
    // Completion by ATQH, the reply by ARQH, as the drivers poll them.
    assert_eq!(c.read_u32(BAR0, VF_ATQH1).expect("ATQH"), 1);
    let mut raw = [0u8; 32];
    mem.read(0, &mut raw).expect("ATQ desc");
    assert!(AqDesc::from_bytes(&raw).has(aq::FLAG_DD | aq::FLAG_CMP));
    assert_eq!(c.read_u32(BAR0, VF_ARQH1).expect("ARQH") & 0x3FF, 1);
    mem.read(0x1000, &mut raw).expect("ARQ desc");
    let reply = AqDesc::from_bytes(&raw);
    assert_eq!(
        (
            reply.opcode,
            reply.cookie_high,
            reply.v_retval(),
            reply.datalen
        ),
        (aq::OPC_SEND_MSG_TO_VF, 1, 0, 8)
    );
    let mut body = [0u8; 8];
    mem.read(0x3000, &mut body).expect("reply body");
    assert_eq!(VersionInfo::decode(&body), Ok(VersionInfo::V1_1));
    assert_eq!(fired(&irqs[0]), 1, "the ARQ interrupt reached the client");
    assert_eq!(handle.stats().vc_ok, 1);
    // The client leaves mid-sequence: the VF is reset for the next one.
    c.close();
    let mut reset = false;
    for _ in 0..500 {
        if handle.stats().vf_resets == 1 {
            reset = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(reset, "disconnect resets the VF");
    let mut c2 = Client::connect(&path).expect("second client");
    let v = c2.read_u32(BAR0, VFGEN_RSTAT).expect("RSTAT");
    assert!(VfrState::from_rstat(v).is_some_and(VfrState::is_reset_done));
    assert_eq!(c2.read_u32(BAR0, VF_ARQLEN1).expect("ARQLEN"), 0);
    c2.close();
    running.stop().expect("stop");
}
