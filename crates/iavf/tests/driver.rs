//! The iavf client driver against the emulated VF over a real vfio-user socket: bring-up with 1
//! and 16 queue pairs, RESET_VF and a second bring-up, link events, stats, runtime operations,
//! clients that leave mid-sequence, and PF refusals surfacing as typed errors.

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use emudev_iavf::driver::{
    BringUpStep, DriverConfig, DriverError, DriverEvent, DriverState, EnableMode, IavfDriver,
    WaitOp, BAR0_REGION, DEFAULT_CAPS,
};
use emudev_iavf::spec::regs::{qrx_tail, VfrState, AQLEN_ENABLE};
use emudev_iavf::spec::virtchnl::{caps, promisc, VirtchnlOp, VirtchnlStatus};
use emudev_iavf::{IavfConfig, IavfDevice, IavfHandle};
use emudev_vfio_user::client::{Client, ClientConfig};
use emudev_vfio_user::server::{RunningServer, ServerConfig};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A served emulated VF; the socket directory goes away with it.
struct Vf {
    path: PathBuf,
    dir: PathBuf,
    handle: IavfHandle,
    mac: [u8; 6],
    server: Option<RunningServer<IavfDevice>>,
}

impl Drop for Vf {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(queues: u16) -> Vf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("iavf-drv-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("vf.sock");
    let cfg = IavfConfig::new(&format!("emu_iavf{n}")).with_queues(queues);
    let mac = cfg.mac;
    let dev = IavfDevice::new(cfg).expect("device");
    let handle = dev.handle();
    let server = dev
        .serve(&path, ServerConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    Vf {
        path,
        dir,
        handle,
        mac,
        server: Some(server),
    }
}

fn connect(vf: &Vf) -> IavfDriver {
    IavfDriver::connect(&vf.path).expect("connect")
}

fn steps_of(d: &IavfDriver) -> Vec<BringUpStep> {
    d.steps().iter().map(|s| s.step).collect()
}

const FULL_SEQUENCE: [BringUpStep; 14] = [
    BringUpStep::DeviceReset,
    BringUpStep::PciEnable,
    BringUpStep::ResetDone,
    BringUpStep::AdminQueue,
    BringUpStep::Version,
    BringUpStep::GetVfResources,
    BringUpStep::Interrupts,
    BringUpStep::VlanStripping,
    BringUpStep::Rss,
    BringUpStep::ConfigVsiQueues,
    BringUpStep::ConfigIrqMap,
    BringUpStep::AddEthAddr,
    BringUpStep::EnableQueues,
    BringUpStep::LinkUp,
];

/// Checks the device's view of a driver brought up with `pairs` pairs.
fn assert_running(vf: &Vf, d: &IavfDriver, pairs: u16) {
    let s = vf.handle.snapshot();
    assert_eq!(s.rstat, VfrState::VfActive);
    assert_eq!(s.version.map(|v| (v.major, v.minor)), Some((1, 1)));
    assert_eq!(s.caps, d.caps());
    assert_ne!(s.atq_len & AQLEN_ENABLE, 0);
    assert_ne!(s.arq_len & AQLEN_ENABLE, 0);
    assert_eq!(d.queue_pairs().len(), usize::from(pairs));
    for p in d.queue_pairs() {
        let q = usize::from(p.id());
        let (tx, rx) = (s.tx[q], s.rx[q]);
        assert!(tx.enabled && rx.enabled, "queue {q} enabled");
        assert_eq!(tx.ring, p.tx_ring().iova);
        assert_eq!(rx.ring, p.rx_ring().iova);
        assert_eq!(u32::from(tx.len), u32::from(p.ring_len()));
        assert_eq!(rx.len, u32::from(p.ring_len()));
        assert_eq!(rx.databuffer_size, p.buffer_size());
        assert_eq!(tx.vector, Some(p.vector()));
        assert_eq!(rx.vector, Some(p.vector()));
        assert!(p.vector() >= 1);
        assert_eq!(p.memory().iova() + p.rx_ring().offset, p.rx_ring().iova);
    }
    assert!(s.macs.contains(&vf.mac));
    let st = vf.handle.stats();
    assert_eq!(st.vc_errors, 0, "{st:?}");
    assert_eq!(st.aq_errors, 0, "{st:?}");
    assert_eq!(st.bad_accesses, 0, "{st:?}");
    assert_eq!(st.arq_dropped, 0, "{st:?}");
}

#[test]
fn brings_one_queue_pair_to_link_up() {
    let vf = serve(1);
    let mut d = connect(&vf);
    assert_eq!(d.state(), DriverState::Down);
    let mut seen = Vec::new();
    let link = d
        .bring_up_with(&DriverConfig::default(), |r| {
            seen.push(r.step);
            ControlFlow::Continue(())
        })
        .expect("bring-up");
    assert!(link.up);
    assert_eq!(link.speed_mbps, Some(10_000));
    assert_eq!(link.mac, vf.mac);
    assert_eq!(d.mac(), Some(vf.mac));
    assert_eq!(d.link(), Some(link));
    assert_eq!(d.state(), DriverState::Running);
    assert_eq!(seen, FULL_SEQUENCE.to_vec());
    assert_eq!(steps_of(&d), FULL_SEQUENCE.to_vec());
    assert!(d.steps().iter().all(|s| !s.detail.is_empty()));
    // The PF granted what was asked and it implements.
    assert_eq!(d.caps(), DEFAULT_CAPS);
    let n = d.negotiated().expect("negotiated");
    assert_eq!(n.vsi.num_queue_pairs, 1);
    assert_eq!(n.resources.max_vectors, 2);
    assert_running(&vf, &d, 1);
    let s = vf.handle.snapshot();
    assert!(!s.vlan_strip, "DPDK disables stripping unless asked");
    assert_eq!(s.rss_lut, vec![0; 64]);
    assert!(s.rss_key.iter().all(|&b| b != 0), "the key was programmed");
    // The link event went out, and the ARQ interrupt reached the vector-0 eventfd.
    let st = vf.handle.stats();
    assert_eq!(st.link_events, 1);
    assert_eq!(
        st.irqs_undelivered, 0,
        "no interrupt before its eventfd was bound"
    );
    let fd = d
        .irq_fd(0)
        .expect("vector 0")
        .try_clone_to_owned()
        .expect("dup");
    let mut count = [0u8; 8];
    let _ = File::from(fd).read(&mut count);
    assert!(u64::from_ne_bytes(count) >= 1, "vector 0 fired");
    assert!(d.irq_fd(1).is_some());
    assert!(d.irq_fd(2).is_none());
    assert_eq!(d.stray_messages(), 0);
    d.close().expect("close");
}

#[test]
fn brings_sixteen_queue_pairs_to_link_up() {
    let vf = serve(16);
    for mode in [EnableMode::PerQueue, EnableMode::AllAtOnce] {
        let mut d = connect(&vf);
        let cfg = DriverConfig {
            enable_mode: mode,
            ..DriverConfig::with_queue_pairs(16)
        };
        let link = d.bring_up(&cfg).expect("bring-up");
        assert!(link.up);
        assert_running(&vf, &d, 16);
        let vectors: Vec<u16> = d.queue_pairs().iter().map(|p| p.vector()).collect();
        assert_eq!(vectors, (1..=16).collect::<Vec<u16>>());
        let s = vf.handle.snapshot();
        // The LUT spreads over the 16 queues.
        assert_eq!(
            &s.rss_lut[..18],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1]
        );
        // Distinct rings.
        let mut rings: Vec<u64> =
            s.tx.iter()
                .map(|t| t.ring)
                .chain(s.rx.iter().map(|r| r.ring))
                .collect();
        rings.sort_unstable();
        rings.dedup();
        assert_eq!(rings.len(), 32);
        // The RX tails were posted before the queues were enabled.
        let mut c = d.into_client();
        let tail = c
            .read_u32(BAR0_REGION, qrx_tail(15).expect("q15"))
            .expect("read");
        assert_eq!(tail, 511);
        c.close();
    }
}

#[test]
fn reset_vf_then_brings_up_again() {
    let vf = serve(4);
    let mut d = connect(&vf);
    let cfg = DriverConfig::with_queue_pairs(4);
    d.bring_up(&cfg).expect("first bring-up");
    d.add_eth_addr(&[[0x02, 0, 0, 0, 0, 0x42]])
        .expect("add mac");
    assert_eq!(vf.handle.snapshot().macs.len(), 2);
    let resets = vf.handle.stats().vf_resets;
    let first_rings: Vec<u64> = d.queue_pairs().iter().map(|p| p.tx_ring().iova).collect();

    let link = d.reset_vf().expect("reset and bring-up");
    assert!(link.up);
    assert_eq!(vf.handle.stats().vf_resets, resets + 1);
    let steps = steps_of(&d);
    assert_eq!(steps[0], BringUpStep::ResetVf);
    assert_eq!(
        steps[1],
        BringUpStep::ResetDone,
        "no DEVICE_RESET, no PCI re-enable"
    );
    assert_eq!(steps.last(), Some(&BringUpStep::LinkUp));
    assert_running(&vf, &d, 4);
    // The reset cleared the extra MAC filter; the memory was reused.
    assert_eq!(vf.handle.snapshot().macs, vec![vf.mac]);
    let rings: Vec<u64> = d.queue_pairs().iter().map(|p| p.tx_ring().iova).collect();
    assert_eq!(rings, first_rings);

    // A bring-up of a live VF without DEVICE_RESET goes through RESET_VF as well.
    let cfg2 = DriverConfig {
        device_reset: false,
        ..DriverConfig::with_queue_pairs(2)
    };
    d.bring_up(&cfg2).expect("third bring-up");
    assert_eq!(steps_of(&d)[0], BringUpStep::ResetVf);
    assert_eq!(vf.handle.stats().vf_resets, resets + 2);
    assert_running(&vf, &d, 2);
    assert!(!vf.handle.snapshot().tx[2].enabled);
    d.close().expect("close");
}

#[test]
fn link_events_arrive() {
    let vf = serve(2);
    let mut d = connect(&vf);
    d.bring_up(&DriverConfig::with_queue_pairs(2))
        .expect("bring-up");
    let evs = d.take_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(matches!(evs[0], DriverEvent::Link(l) if l.up));
    assert!(d.poll_events().expect("poll").is_empty());

    vf.handle.set_link(false);
    let evs = d.poll_events().expect("poll");
    assert_eq!(evs.len(), 1, "{evs:?}");
    let DriverEvent::Link(down) = evs[0] else {
        panic!("{evs:?}")
    };
    assert!(!down.up);
    assert_eq!(down.speed_mbps, Some(10_000));
    assert_eq!(d.link().map(|l| l.up), Some(false));

    vf.handle.set_link(true);
    let evs = d.poll_events().expect("poll");
    assert!(matches!(evs.as_slice(), [DriverEvent::Link(l)] if l.up));

    // All queues off and on again: the PF reports the link again.
    d.disable_queues().expect("disable");
    assert_eq!(d.state(), DriverState::Ready);
    assert!(vf.handle.snapshot().tx.iter().all(|t| !t.enabled));
    d.enable_queues().expect("enable");
    assert_eq!(d.state(), DriverState::Running);
    let evs = d.poll_events().expect("poll");
    assert!(
        matches!(evs.as_slice(), [DriverEvent::Link(l)] if l.up),
        "{evs:?}"
    );

    // Legacy speeds when ADV_LINK_SPEED is not asked for.
    drop(d);
    let mut d2 = connect(&vf);
    let cfg = DriverConfig {
        caps: DEFAULT_CAPS & !caps::ADV_LINK_SPEED,
        ..Default::default()
    };
    let link = d2.bring_up(&cfg).expect("bring-up");
    assert_eq!(link.speed_mbps, Some(10_000), "legacy enum decoded");
    assert_eq!(d2.caps() & caps::ADV_LINK_SPEED, 0);
}

#[test]
fn stats_read_back() {
    let vf = serve(1);
    let mut d = connect(&vf);
    assert!(matches!(
        d.get_stats(),
        Err(DriverError::NotReady {
            what: "get_stats",
            ..
        })
    ));
    d.bring_up(&DriverConfig::default()).expect("bring-up");
    assert_eq!(d.get_stats().expect("stats"), Default::default());
    let v = vf.handle.vsi_stats();
    v.rx_bytes.fetch_add(1234, Ordering::Relaxed);
    v.rx_unicast.fetch_add(7, Ordering::Relaxed);
    v.tx_bytes.fetch_add(99, Ordering::Relaxed);
    v.tx_errors.fetch_add(3, Ordering::Relaxed);
    let s = d.get_stats().expect("stats");
    assert_eq!(
        (s.rx_bytes, s.rx_unicast, s.tx_bytes, s.tx_errors),
        (1234, 7, 99, 3)
    );
    assert_eq!(s.rx_multicast, 0);
}

#[test]
fn runtime_operations_reach_the_device() {
    let vf = serve(4);
    let mut d = connect(&vf);
    let cfg = DriverConfig {
        vlan_strip: true,
        ..DriverConfig::with_queue_pairs(4)
    };
    d.bring_up(&cfg).expect("bring-up");
    assert!(vf.handle.snapshot().vlan_strip);
    let extra = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    d.add_eth_addr(&[extra]).expect("add");
    assert!(vf.handle.snapshot().macs.contains(&extra));
    d.del_eth_addr(&[extra]).expect("del");
    assert!(!vf.handle.snapshot().macs.contains(&extra));
    d.add_vlan(&[10, 20]).expect("vlan");
    assert_eq!(vf.handle.snapshot().vlans, vec![10, 20]);
    d.del_vlan(&[10]).expect("vlan");
    assert_eq!(vf.handle.snapshot().vlans, vec![20]);
    d.config_promisc(true, false).expect("promisc");
    assert_eq!(vf.handle.snapshot().promisc, promisc::UNICAST);
    d.config_promisc(true, true).expect("promisc");
    assert_eq!(
        vf.handle.snapshot().promisc,
        promisc::UNICAST | promisc::MULTICAST
    );
    let key: Vec<u8> = (1..=52).collect();
    d.config_rss_key(&key).expect("key");
    assert_eq!(vf.handle.snapshot().rss_key, key);
    let lut: Vec<u8> = (0..64).map(|i| (i % 2) as u8).collect();
    d.config_rss_lut(&lut).expect("lut");
    assert_eq!(vf.handle.snapshot().rss_lut, lut);
    let hena = d.get_rss_hena_caps().expect("hena caps");
    assert_ne!(hena, 0);
    d.set_rss_hena(hena & 0xFFFF_FFFF).expect("hena");
    assert_eq!(vf.handle.snapshot().hena, hena & 0xFFFF_FFFF);

    // Shut down: queues off, admin queues off, then a fresh bring-up on the same connection.
    d.shutdown().expect("shutdown");
    assert_eq!(d.state(), DriverState::Down);
    let s = vf.handle.snapshot();
    assert!(s.tx.iter().all(|t| !t.enabled) && s.rx.iter().all(|r| !r.enabled));
    assert_eq!(s.atq_len & AQLEN_ENABLE, 0);
    assert_eq!(s.arq_len & AQLEN_ENABLE, 0);
    assert!(d.queue_pairs().is_empty());
    assert!(matches!(d.reset_vf(), Err(DriverError::NotReady { .. })));
    d.bring_up(&DriverConfig::with_queue_pairs(4))
        .expect("bring-up after shutdown");
    assert_running(&vf, &d, 4);
}

#[test]
fn message_dma_and_twin_socket_work_too() {
    let vf = serve(2);
    // Memory without its fd: the device reaches it with DMA_READ/DMA_WRITE on the main socket.
    let mut d = connect(&vf);
    let cfg = DriverConfig {
        share_fd: false,
        ..DriverConfig::with_queue_pairs(2)
    };
    assert!(d.bring_up(&cfg).expect("bring-up").up);
    assert_running(&vf, &d, 2);
    assert!(d.client_mut().served_inline() > 0);
    assert!(d.get_stats().is_ok());
    d.close().expect("close");
    // Same over a twin socket.
    let client = Client::connect_with(
        &vf.path,
        ClientConfig {
            twin_socket: true,
            ..Default::default()
        },
    )
    .expect("connect");
    assert!(client.has_twin_socket());
    let mut d = IavfDriver::new(client);
    assert!(d.bring_up(&cfg).expect("bring-up").up);
    assert_running(&vf, &d, 2);
}

#[test]
fn a_client_leaving_mid_sequence_does_not_hurt_the_next() {
    let vf = serve(2);
    let cfg = DriverConfig::with_queue_pairs(2);
    for stop_after in FULL_SEQUENCE {
        let mut d = connect(&vf);
        let r = d.bring_up_with(&cfg, |r| {
            if r.step == stop_after {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match r {
            Err(DriverError::Aborted { after }) => assert_eq!(after, stop_after),
            other => panic!("{stop_after:?}: {other:?}"),
        }
        assert_eq!(steps_of(&d).last(), Some(&stop_after));
        // Gone without a goodbye.
        drop(d);
        let mut next = connect(&vf);
        assert!(
            next.bring_up(&cfg).expect("next client").up,
            "after {stop_after:?}"
        );
        assert_running(&vf, &next, 2);
        drop(next);
    }
    // A client that leaves with a command executed and its reply unread: the last command
    // (an ENABLE_QUEUES) is run again by moving ATQH back one slot, then the client vanishes.
    let mut d = connect(&vf);
    d.bring_up(&cfg).expect("bring-up");
    let mut c = d.into_client();
    let (atqh, atqt) = (
        emudev_iavf::spec::regs::VF_ATQH1,
        emudev_iavf::spec::regs::VF_ATQT1,
    );
    let t = c.read_u32(BAR0_REGION, atqt).expect("ATQT");
    let delivered = vf.handle.stats().arq_delivered;
    c.write_u32(BAR0_REGION, atqh, (t + 31) % 32).expect("ATQH");
    c.write_u32(BAR0_REGION, atqt, t).expect("ring");
    assert_eq!(
        vf.handle.stats().arq_delivered,
        delivered + 1,
        "a reply waits on the ARQ"
    );
    drop(c);
    let mut next = connect(&vf);
    assert!(next.bring_up(&cfg).expect("after a dangling command").up);
    assert_running(&vf, &next, 2);
}

#[test]
fn pf_refusals_are_typed_errors() {
    // 17 queue pairs from a VF that has 16.
    let vf = serve(16);
    let mut d = connect(&vf);
    match d.bring_up(&DriverConfig::with_queue_pairs(17)) {
        Err(DriverError::Status { op, status }) => {
            assert_eq!(op, VirtchnlOp::ConfigVsiQueues);
            assert_eq!(status, VirtchnlStatus::ErrParam);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.state(),
        DriverState::Ready,
        "negotiated, no queue configured"
    );
    assert_eq!(steps_of(&d).last(), Some(&BringUpStep::Rss));
    // The device counted it and is fine: the same driver brings up 16.
    assert_eq!(vf.handle.stats().vc_errors, 1);
    assert!(
        d.bring_up(&DriverConfig::with_queue_pairs(16))
            .expect("16")
            .up
    );

    drop(d);
    let vf = serve(1);
    let mut d = connect(&vf);
    let bad_rings = [
        DriverConfig {
            ring_len: 100,
            ..Default::default()
        },
        DriverConfig {
            ring_len: 8192,
            ..Default::default()
        },
        DriverConfig::with_queue_pairs(2),
        DriverConfig {
            rx_buffer_size: 512,
            ..Default::default()
        },
    ];
    for cfg in bad_rings {
        let e = d.bring_up(&cfg).expect_err("refused");
        assert!(
            matches!(
                e,
                DriverError::Status {
                    op: VirtchnlOp::ConfigVsiQueues,
                    status: VirtchnlStatus::ErrParam
                }
            ),
            "{cfg:?}: {e:?}"
        );
    }
    d.bring_up(&DriverConfig::default()).expect("bring-up");
    for (e, op) in [
        (
            d.add_vlan(&[5000]).expect_err("vlan id"),
            VirtchnlOp::AddVlan,
        ),
        (
            d.add_eth_addr(&[[0xFF; 6]]).expect_err("broadcast"),
            VirtchnlOp::AddEthAddr,
        ),
        (
            d.config_rss_key(&[1; 40]).expect_err("key size"),
            VirtchnlOp::ConfigRssKey,
        ),
        (
            d.config_rss_lut(&[1; 64]).expect_err("queue 1 of 1"),
            VirtchnlOp::ConfigRssLut,
        ),
    ] {
        assert!(
            matches!(e, DriverError::Status { op: o, status: VirtchnlStatus::ErrParam } if o == op),
            "{op:?}: {e:?}"
        );
    }
    // Nothing changed, the port still works.
    assert!(d.get_stats().is_ok());
    assert!(vf.handle.snapshot().vlans.is_empty());

    // A capability not granted is refused before anything is sent.
    drop(d);
    let mut d = connect(&vf);
    let cfg = DriverConfig {
        caps: caps::L2,
        ..Default::default()
    };
    d.bring_up(&cfg).expect("bring-up with L2 only");
    assert_eq!(d.caps(), caps::L2);
    assert!(!steps_of(&d).contains(&BringUpStep::Rss));
    assert!(!steps_of(&d).contains(&BringUpStep::VlanStripping));
    let before = vf.handle.stats().aq_commands;
    assert!(matches!(
        d.add_vlan(&[1]),
        Err(DriverError::NotGranted {
            op: VirtchnlOp::AddVlan,
            cap: caps::VLAN
        })
    ));
    assert!(matches!(
        d.config_rss_lut(&[0; 64]),
        Err(DriverError::NotGranted { .. })
    ));
    assert_eq!(vf.handle.stats().aq_commands, before);
    assert!(matches!(
        d.add_eth_addr(&[]),
        Err(DriverError::InvalidConfig(_))
    ));

    // Local validation.
    assert!(matches!(
        d.bring_up(&DriverConfig::with_queue_pairs(0)),
        Err(DriverError::InvalidConfig(_))
    ));
}

#[test]
fn a_stalled_admin_queue_times_out() {
    let vf = serve(1);
    let mut d = connect(&vf);
    let cfg = DriverConfig {
        op_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    d.bring_up(&cfg).expect("bring-up");
    // Bus mastering off: the device leaves the ATQ alone.
    let c = d.client_mut();
    let mut cmd = [0u8; 2];
    c.region_read(emudev_pci::CONFIG_REGION, 4, &mut cmd)
        .expect("command");
    let off = u16::from_le_bytes(cmd) & !emudev_pci::regs::PCI_COMMAND_MASTER;
    c.region_write(emudev_pci::CONFIG_REGION, 4, &off.to_le_bytes())
        .expect("command");
    match d.get_stats() {
        Err(DriverError::Timeout { op, waited }) => {
            assert_eq!(op, WaitOp::Completion(VirtchnlOp::GetStats));
            assert!(waited >= Duration::from_millis(50));
        }
        other => panic!("{other:?}"),
    }
    // A new bring-up (DEVICE_RESET, bus mastering on again) recovers.
    assert!(d.bring_up(&cfg).expect("recovered").up);
    assert!(d.get_stats().is_ok());
}

#[test]
fn an_unknown_socket_is_a_transport_error() {
    let e = IavfDriver::connect("/nonexistent/iavf.sock").expect_err("no socket");
    assert!(matches!(e, DriverError::Transport(_)));
}
