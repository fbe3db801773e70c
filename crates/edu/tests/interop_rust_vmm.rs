//! Interop tests against a vfio-user implementation nobody here wrote: the rust-vmm
//! `vfio_user` crate, 0.1.7 from crates.io (cloud-hypervisor's client and server).
//!
//! - Part 1: *their* `vfio_user::Client` drives *our* server serving [`EduDevice`]: negotiation,
//!   region info, BAR0 registers, INTx/MSI through eventfds, fd-backed DMA, reset, disconnect
//!   and a second client.
//! - Part 2: *our* `emudev_vfio_user::client::Client` drives *their* `vfio_user::Server` with a
//!   small scratch device implemented here on their `ServerBackend` trait.
//!
//! Where their side departs from the spec (QEMU `docs/interop/vfio-user.rst`, 0.9.2; summary in
//! `shared/reference/vfio-user-protocol.md`), the test asserts what actually happens and says
//! which rule it departs from, so a new release of the crate that changes the behaviour shows
//! up here. Where *our* side would be at fault, the test asserts the spec's behaviour.
//!
//! Their client has no timeouts and blocks forever on a short reply, so every test of part 1
//! runs inside [`within`]; their server accepts one connection and returns when it closes, so
//! every test of part 2 ends with [`TheirServer::finish`], a bounded join.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use emudev_dma::DmaProt;
use emudev_edu::regs::*;
use emudev_edu::{
    EduDevice, EDU_BAR0_SIZE, EDU_DMA_BUF_ADDR, EDU_ID_REG_VALUE, EDU_MSI_CAP_OFFSET,
};
use emudev_vfio_user::client::{Client, ClientConfig, ClientError};
use emudev_vfio_user::server::{Server, ServerConfig};
use emudev_vfio_user::wire::{self, Command, Header, MessageBuilder, RegionAccess};
use emudev_vfio_user::{Device, Errno};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend, ServerRegion};

const BAR0: u32 = VFIO_PCI_BAR0_REGION_INDEX;
const BAR2: u32 = VFIO_PCI_BAR2_REGION_INDEX;
const CONFIG: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
/// MSI message control, in config space.
const MSI_CTRL: u64 = EDU_MSI_CAP_OFFSET as u64 + 2;
/// MSI message control: the enable bit.
const MSI_ENABLE: u16 = 1;
/// SET_IRQS flags binding eventfds.
const BIND_EVENTFDS: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
/// How long any single wait in these tests may take.
const DEADLINE: Duration = Duration::from_secs(20);

// ----- helpers shared by both parts ------------------------------------------------------------

/// A private directory for one test's socket, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("emudev-interop-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("vfio-user.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on its own thread and waits at most [`DEADLINE`]: their client blocks forever when
/// a reply is shorter than it expects, and a hang must fail the test, not stall the suite.
/// A panic inside `f` fails the test with its own message.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what}: no result within {DEADLINE:?} (a peer is blocked)")
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: the worker ended without a result"),
        },
    }
}

fn new_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

/// The eventfd's counter (and resets it), or `None` when it was not signalled.
fn take_eventfd(fd: &OwnedFd) -> Option<u64> {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        Ok(n) => panic!("short eventfd read of {n} bytes"),
        Err(rustix::io::Errno::AGAIN) => None,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// A memfd of `size` bytes as a `File` (read and written with `pread`/`pwrite` here).
fn memfd(name: &str, size: u64) -> File {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC).expect("memfd_create");
    ftruncate(&fd, size).expect("ftruncate");
    File::from(fd)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ===============================================================================================
// Part 1: their client, our server serving edu
// ===============================================================================================

/// Our server on a private socket serving a fresh edu device.
struct EduServer {
    running: emudev_vfio_user::server::RunningServer<EduDevice>,
    stats: emudev_edu::EduStatsHandle,
    path: PathBuf,
    _dir: TempDir,
}

fn start_edu(tag: &str) -> EduServer {
    let dir = TempDir::new(tag);
    let path = dir.sock();
    let dev = EduDevice::new();
    let stats = dev.stats_handle();
    let server = Server::bind(&path, dev, ServerConfig::default()).expect("bind our server");
    let running = server.spawn().expect("spawn our server");
    EduServer {
        running,
        stats,
        path,
        _dir: dir,
    }
}

impl EduServer {
    fn stop(self) {
        self.running.stop().expect("our server stops cleanly");
    }
}

fn their_connect(path: &Path) -> vfio_user::Client {
    vfio_user::Client::new(path).expect("their client connects to our server")
}

fn their_read_u32(c: &mut vfio_user::Client, region: u32, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, offset, &mut b)
        .expect("their region_read");
    u32::from_le_bytes(b)
}

fn their_write_u32(c: &mut vfio_user::Client, region: u32, offset: u64, v: u32) {
    c.region_write(region, offset, &v.to_le_bytes())
        .expect("their region_write");
}

fn their_write_u64(c: &mut vfio_user::Client, region: u32, offset: u64, v: u64) {
    c.region_write(region, offset, &v.to_le_bytes())
        .expect("their region_write");
}

fn their_read_u16(c: &mut vfio_user::Client, region: u32, offset: u64) -> u16 {
    let mut b = [0u8; 2];
    c.region_read(region, offset, &mut b)
        .expect("their region_read");
    u16::from_le_bytes(b)
}

/// Programs one edu DMA (regs.rs: src 0x80, dst 0x88, count 0x90, cmd 0x98).
fn their_edu_dma(c: &mut vfio_user::Client, src: u64, dst: u64, count: u64, cmd: u64) {
    their_write_u64(c, BAR0, REG_DMA_SRC, src);
    their_write_u64(c, BAR0, REG_DMA_DST, dst);
    their_write_u64(c, BAR0, REG_DMA_COUNT, count);
    their_write_u64(c, BAR0, REG_DMA_CMD, cmd);
}

#[test]
fn their_client_version_proposal_on_the_wire() {
    use emudev_vfio_user::transport::{MessageSocket, RecvLimits};
    use emudev_vfio_user::wire::Version;

    let dir = TempDir::new("their-version");
    let path = dir.sock();
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let client_path = path.clone();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(
            vfio_user::Client::new(&client_path)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    });
    let (stream, _) = listener.accept().expect("their client connects");
    let sock = MessageSocket::new(stream);
    sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let msg = sock
        .recv(RecvLimits {
            max_msg_size: 1 << 16,
            max_fds: 4,
        })
        .expect("recv")
        .expect("a VERSION, not EOF");
    assert!(msg.fds.is_empty());
    let h = Header::decode(&msg.bytes).expect("header");
    assert_eq!(
        (h.command, h.flags),
        (Command::Version as u16, wire::FLAGS_TYPE_COMMAND)
    );
    let v = Version::decode(&msg.bytes[wire::HEADER_SIZE..]).expect("a well-formed VERSION");
    assert_eq!((v.major, v.minor), (0, 1), "their client proposes 0.1");
    let caps = v.caps.expect("their client sends capabilities");
    assert_eq!(caps.max_msg_fds, Some(1));
    assert_eq!(caps.max_data_xfer_size, Some(1 << 20));
    // Only the legacy migration.pgsize, not the spec's pgsizes / max_dma_maps.
    assert_eq!(
        caps.migration.and_then(|m| m.pgsize),
        Some(rustix::param::page_size() as u64)
    );
    assert_eq!(
        (
            caps.pgsizes,
            caps.max_dma_maps,
            caps.twin_socket,
            caps.write_multiple
        ),
        (None, None, None, None)
    );

    // Hang up without answering: their Client::new fails instead of hanging.
    drop(sock);
    let r = rx
        .recv_timeout(DEADLINE)
        .expect("their Client::new returned");
    assert!(r.is_err(), "connected without a VERSION reply");
}

#[test]
fn their_client_reads_edu_regions_and_registers() {
    let srv = start_edu("regions");
    let path = srv.path.clone();
    within("their client on edu", move || {
        let mut c = their_connect(&path);

        // DEVICE_GET_INFO said 9 regions: their client fetched each one's info.
        for i in 0..VFIO_PCI_NUM_REGIONS {
            let r = c
                .region(i)
                .unwrap_or_else(|| panic!("their client has no region {i}"));
            assert_eq!(r.index, i);
            assert!(
                r.file_offset.is_none(),
                "edu offers no mmap fd (region {i})"
            );
            assert!(r.sparse_areas.is_empty());
            match i {
                BAR0 => assert_eq!((r.size, r.flags), (EDU_BAR0_SIZE, RW)),
                CONFIG => assert_eq!((r.size, r.flags), (256, RW)),
                _ => assert_eq!((r.size, r.flags), (0, 0), "region {i} is absent"),
            }
        }
        assert!(
            c.region(VFIO_PCI_NUM_REGIONS).is_none(),
            "a 10th region appeared"
        );

        // Id register, liveness (reads back the complement) and factorial.
        assert_eq!(their_read_u32(&mut c, BAR0, REG_ID), EDU_ID_REG_VALUE);
        for x in [0x1234_5678u32, 0, u32::MAX] {
            their_write_u32(&mut c, BAR0, REG_LIVENESS, x);
            assert_eq!(their_read_u32(&mut c, BAR0, REG_LIVENESS), !x);
        }
        their_write_u32(&mut c, BAR0, REG_FACTORIAL, 5);
        assert_eq!(their_read_u32(&mut c, BAR0, REG_FACTORIAL), 120);
        their_write_u32(&mut c, BAR0, REG_FACTORIAL, 10);
        assert_eq!(their_read_u32(&mut c, BAR0, REG_FACTORIAL), 3_628_800);

        // Config space: vendor 0x1234, device 0x11e8.
        assert_eq!(their_read_u32(&mut c, CONFIG, 0), 0x11e8_1234);

        // Deviation (theirs): `resettable()` computes `flags & RESET != RESET`, the inverse of
        // the VFIO_DEVICE_FLAGS_RESET bit our DEVICE_GET_INFO reply sets. edu advertises RESET,
        // so their client reports "not resettable".
        let flags = EduDevice::new().info().flags;
        assert_eq!(flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
        assert!(
            !c.resettable(),
            "vfio_user 0.1.7 inverts RESET; if this fails they fixed it"
        );

        c.shutdown().expect("their shutdown");
    });
    srv.stop();
}

#[test]
fn their_client_gets_intx_then_msi_through_bound_eventfds() {
    let srv = start_edu("msi");
    let path = srv.path.clone();
    let stats = srv.stats.clone();
    within("their client IRQs on edu", move || {
        let mut c = their_connect(&path);

        let intx_info = c.get_irq_info(VFIO_PCI_INTX_IRQ_INDEX).expect("irq info 0");
        assert_eq!(
            (intx_info.index, intx_info.count),
            (VFIO_PCI_INTX_IRQ_INDEX, 1)
        );
        assert_eq!(
            intx_info.flags,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
        );
        let msi_info = c.get_irq_info(VFIO_PCI_MSI_IRQ_INDEX).expect("irq info 1");
        assert_eq!(
            (msi_info.index, msi_info.count),
            (VFIO_PCI_MSI_IRQ_INDEX, 1)
        );
        assert_eq!(
            msi_info.flags,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE
        );
        assert_eq!(
            c.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
                .expect("irq info 2")
                .count,
            0
        );

        let intx = new_eventfd();
        let msi = new_eventfd();
        c.set_irqs(
            VFIO_PCI_INTX_IRQ_INDEX,
            BIND_EVENTFDS,
            0,
            1,
            &[intx.as_raw_fd()],
        )
        .expect("bind INTx");
        c.set_irqs(
            VFIO_PCI_MSI_IRQ_INDEX,
            BIND_EVENTFDS,
            0,
            1,
            &[msi.as_raw_fd()],
        )
        .expect("bind MSI");

        // MSI not enabled in config space yet: a raise goes out on INTx.
        their_write_u32(&mut c, BAR0, REG_IRQ_RAISE, 0x1);
        assert_eq!(take_eventfd(&intx), Some(1), "INTx fires while MSI is off");
        assert_eq!(take_eventfd(&msi), None);
        their_write_u32(&mut c, BAR0, REG_IRQ_ACK, 0x1);
        assert_eq!(their_read_u32(&mut c, BAR0, REG_IRQ_STATUS), 0);

        // Enable MSI: message control at 0x42, bit 0, written through region 7.
        let ctrl = their_read_u16(&mut c, CONFIG, MSI_CTRL);
        assert_eq!(ctrl & MSI_ENABLE, 0);
        c.region_write(CONFIG, MSI_CTRL, &(ctrl | MSI_ENABLE).to_le_bytes())
            .expect("enable MSI");
        assert_eq!(
            their_read_u16(&mut c, CONFIG, MSI_CTRL) & MSI_ENABLE,
            MSI_ENABLE
        );

        // Every raise is an MSI edge now; INTx stays quiet.
        their_write_u32(&mut c, BAR0, REG_IRQ_RAISE, 0x10);
        assert_eq!(take_eventfd(&msi), Some(1), "MSI eventfd fires");
        assert_eq!(their_read_u32(&mut c, BAR0, REG_IRQ_STATUS), 0x10);
        their_write_u32(&mut c, BAR0, REG_IRQ_RAISE, 0x20);
        assert_eq!(
            take_eventfd(&msi),
            Some(1),
            "a second raise is a second edge"
        );
        assert_eq!(take_eventfd(&intx), None, "no INTx while MSI is on");
        assert_eq!(their_read_u32(&mut c, BAR0, REG_IRQ_STATUS), 0x30);

        c.shutdown().expect("their shutdown");
    });
    let s = stats.snapshot();
    assert_eq!((s.irqs_raised, s.irqs_undelivered), (3, 0));
    srv.stop();
}

#[test]
fn their_client_dma_maps_a_memfd_for_edu_dma() {
    const IOVA: u64 = 0x20_0000;
    const FILE_OFF: u64 = 0x1000;
    const SIZE: u64 = 0x4000;
    let srv = start_edu("dma");
    let path = srv.path.clone();
    let stats = srv.stats.clone();
    within("their client DMA on edu", move || {
        let mut c = their_connect(&path);
        let ram = memfd("their-ram", FILE_OFF + SIZE);
        let data = pattern(256, 7);
        ram.write_all_at(&data, FILE_OFF + 0x100).expect("fill RAM");

        // Their dma_map(offset, address, size, fd) always sends READ|WRITE and the fd.
        c.dma_map(FILE_OFF, IOVA, SIZE, ram.as_raw_fd())
            .expect("their dma_map");

        // RAM (IOVA + 0x100, i.e. file offset 0x1100) -> edu buffer.
        their_edu_dma(&mut c, IOVA + 0x100, EDU_DMA_BUF_ADDR, 256, DMA_CMD_START);
        assert_eq!(
            their_read_u32(&mut c, BAR0, REG_DMA_CMD) as u64 & DMA_CMD_START,
            0,
            "start bit cleared"
        );
        // edu buffer -> RAM at IOVA + 0x2000.
        their_edu_dma(
            &mut c,
            EDU_DMA_BUF_ADDR,
            IOVA + 0x2000,
            256,
            DMA_CMD_START | DMA_CMD_TO_RAM,
        );
        let mut back = vec![0u8; 256];
        ram.read_exact_at(&mut back, FILE_OFF + 0x2000)
            .expect("read RAM");
        assert_eq!(
            back, data,
            "the bytes went RAM -> edu -> RAM through the shared memfd"
        );
        // Nothing was written below the file offset the map started at.
        let mut below = vec![0u8; FILE_OFF as usize];
        ram.read_exact_at(&mut below, 0).expect("read RAM");
        assert!(
            below.iter().all(|&b| b == 0),
            "the map honoured the file offset"
        );

        let s = stats.snapshot();
        assert_eq!((s.dma_transfers, s.dma_errors), (2, 0));

        // After DMA_UNMAP the same transfer copies nothing.
        c.dma_unmap(IOVA, SIZE).expect("their dma_unmap");
        their_edu_dma(
            &mut c,
            EDU_DMA_BUF_ADDR,
            IOVA + 0x3000,
            256,
            DMA_CMD_START | DMA_CMD_TO_RAM,
        );
        ram.read_exact_at(&mut back, FILE_OFF + 0x3000)
            .expect("read RAM");
        assert!(back.iter().all(|&b| b == 0), "no DMA into unmapped memory");
        let s = stats.snapshot();
        assert_eq!((s.dma_transfers, s.dma_errors), (2, 1));

        c.shutdown().expect("their shutdown");
    });
    srv.stop();
}

#[test]
fn their_client_reset_shutdown_and_a_second_client() {
    const IOVA: u64 = 0x10_0000;
    let srv = start_edu("reset");
    let path = srv.path.clone();
    let stats = srv.stats.clone();
    within("their clients on edu, one after another", move || {
        let mut c = their_connect(&path);
        their_write_u32(&mut c, BAR0, REG_LIVENESS, 0xa5a5_0000);
        their_write_u32(&mut c, BAR0, REG_FACTORIAL, 6);
        let ctrl = their_read_u16(&mut c, CONFIG, MSI_CTRL);
        c.region_write(CONFIG, MSI_CTRL, &(ctrl | MSI_ENABLE).to_le_bytes())
            .expect("enable MSI");

        // DEVICE_RESET: registers and config space back to power-on.
        c.reset().expect("their reset");
        assert_eq!(their_read_u32(&mut c, BAR0, REG_FACTORIAL), 0);
        assert_eq!(their_read_u32(&mut c, BAR0, REG_LIVENESS), 0);
        assert_eq!(
            their_read_u16(&mut c, CONFIG, MSI_CTRL) & MSI_ENABLE,
            0,
            "reset disabled MSI"
        );
        assert_eq!(their_read_u32(&mut c, BAR0, REG_ID), EDU_ID_REG_VALUE);

        // State to find again, and a DMA map to lose, across the disconnect.
        their_write_u32(&mut c, BAR0, REG_LIVENESS, 0x0f0f_1234);
        let ram = memfd("their-ram", 0x1000);
        ram.write_all_at(&[0x5a; 16], 0).expect("fill RAM");
        c.dma_map(0, IOVA, 0x1000, ram.as_raw_fd())
            .expect("their dma_map");
        c.shutdown().expect("their shutdown");
        drop(c);

        // A second client of theirs: the server kept serving and kept the device state (spec:
        // "on a client disconnect, the server unmaps all DMA ... and keeps device state").
        let mut c2 = their_connect(&path);
        assert_eq!(their_read_u32(&mut c2, BAR0, REG_ID), EDU_ID_REG_VALUE);
        assert_eq!(their_read_u32(&mut c2, BAR0, REG_LIVENESS), !0x0f0f_1234);
        their_write_u32(&mut c2, BAR0, REG_FACTORIAL, 4);
        assert_eq!(their_read_u32(&mut c2, BAR0, REG_FACTORIAL), 24);
        // The first client's map is gone: a DMA from it fails and leaves the buffer alone.
        their_edu_dma(&mut c2, IOVA, EDU_DMA_BUF_ADDR, 16, DMA_CMD_START);
        assert_eq!(
            stats.snapshot().dma_errors,
            1,
            "the old map was dropped at disconnect"
        );
        c2.shutdown().expect("their second shutdown");
    });
    let snap = srv.running.handle().stats();
    assert!(
        snap.clients >= 2,
        "our server accepted {} clients",
        snap.clients
    );
    srv.stop();
}

// ===============================================================================================
// Part 2: our client, their server with a scratch device
// ===============================================================================================

/// BAR0 of the scratch device: 4 KiB of memory, plus one DMA register.
const T_BAR0_SIZE: u64 = 0x1000;
/// BAR2: 4 KiB backed by a memfd that their server is told about as the mmap fd.
const T_BAR2_SIZE: u64 = 0x1000;
/// Writing an IOVA here makes the device read the u64 at that IOVA from the client's memory
/// (through the DMA_MAP fd) and write it plus one at IOVA + 8.
const T_REG_DMA_INC: u64 = 0xff8;
/// MSI-X vectors of the scratch device.
const T_MSIX_COUNT: u32 = 16;

/// One DMA_MAP the backend received.
#[derive(Debug)]
struct MapCall {
    flags: DmaMapFlags,
    offset: u64,
    address: u64,
    size: u64,
    had_fd: bool,
}

/// One SET_IRQS the backend received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IrqCall {
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    nfds: usize,
}

/// What the scratch device did, shared with the test thread.
#[derive(Default)]
struct Record {
    bar0: Vec<u8>,
    config: Vec<u8>,
    maps: Vec<MapCall>,
    unmaps: Vec<(DmaUnmapFlags, u64, u64)>,
    /// Live DMA windows: IOVA -> (size, file offset, fd if one came).
    windows: BTreeMap<u64, (u64, u64, Option<File>)>,
    irqs: Vec<IrqCall>,
    /// Bound eventfds by (index, vector).
    eventfds: BTreeMap<(u32, u32), File>,
    resets: usize,
    bar2_reads: usize,
    bar2_writes: usize,
}

impl Record {
    /// The window holding `[iova, iova + len)`: its fd and the file offset of `iova`.
    fn window(&self, iova: u64, len: u64) -> io::Result<(&File, u64)> {
        let (start, (size, off, fd)) = self
            .windows
            .range(..=iova)
            .next_back()
            .ok_or_else(|| io::Error::from_raw_os_error(Errno::FAULT.raw_os_error()))?;
        let rel = iova - start;
        let fd = fd
            .as_ref()
            .filter(|_| rel.checked_add(len).is_some_and(|e| e <= *size));
        let fd = fd.ok_or_else(|| io::Error::from_raw_os_error(Errno::FAULT.raw_os_error()))?;
        Ok((fd, off + rel))
    }
}

fn lock(r: &Mutex<Record>) -> MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Our implementation of their `ServerBackend` trait.
struct Scratch {
    rec: Arc<Mutex<Record>>,
    bar2: File,
}

fn bounds(len: usize, offset: u64, count: usize) -> io::Result<std::ops::Range<usize>> {
    let start =
        usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let end = start.checked_add(count).filter(|&e| e <= len);
    end.map(|e| start..e)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

impl ServerBackend for Scratch {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let mut r = lock(&self.rec);
        match region {
            BAR0 => {
                let range = bounds(r.bar0.len(), offset, data.len())?;
                data.copy_from_slice(&r.bar0[range]);
            }
            BAR2 => {
                bounds(T_BAR2_SIZE as usize, offset, data.len())?;
                r.bar2_reads += 1;
                self.bar2.read_exact_at(data, offset)?;
            }
            CONFIG => {
                let range = bounds(r.config.len(), offset, data.len())?;
                data.copy_from_slice(&r.config[range]);
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut r = lock(&self.rec);
        match region {
            BAR0 => {
                let range = bounds(r.bar0.len(), offset, data.len())?;
                r.bar0[range].copy_from_slice(data);
                if offset == T_REG_DMA_INC && data.len() == 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(data);
                    let iova = u64::from_le_bytes(b);
                    let (fd, off) = r.window(iova, 16)?;
                    let mut v = [0u8; 8];
                    fd.read_exact_at(&mut v, off)?;
                    let next = u64::from_le_bytes(v).wrapping_add(1);
                    fd.write_all_at(&next.to_le_bytes(), off + 8)?;
                }
            }
            BAR2 => {
                bounds(T_BAR2_SIZE as usize, offset, data.len())?;
                r.bar2_writes += 1;
                self.bar2.write_all_at(data, offset)?;
            }
            CONFIG => {
                let range = bounds(r.config.len(), offset, data.len())?;
                r.config[range].copy_from_slice(data);
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let mut r = lock(&self.rec);
        r.maps.push(MapCall {
            flags,
            offset,
            address,
            size,
            had_fd: fd.is_some(),
        });
        if r.windows.contains_key(&address) {
            return Err(io::Error::from_raw_os_error(Errno::EXIST.raw_os_error()));
        }
        r.windows.insert(address, (size, offset, fd));
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let mut r = lock(&self.rec);
        r.unmaps.push((flags, address, size));
        // Their flag names: UNMAP_ALL = 1 << 2, GET_DIRTY_PAGE_INFO = 1 << 1.
        if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            r.windows.clear();
            return Ok(());
        }
        if flags.contains(DmaUnmapFlags::GET_DIRTY_PAGE_INFO) {
            // This device tracks no dirty pages.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no dirty page tracking",
            ));
        }
        match r.windows.get(&address) {
            Some((s, _, _)) if *s == size => {
                r.windows.remove(&address);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(Errno::NOENT.raw_os_error())),
        }
    }

    fn reset(&mut self) -> io::Result<()> {
        let mut r = lock(&self.rec);
        r.resets += 1;
        r.bar0.fill(0);
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        let mut r = lock(&self.rec);
        r.irqs.push(IrqCall {
            index,
            flags,
            start,
            count,
            nfds: fds.len(),
        });
        if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            if fds.is_empty() {
                for v in start..start.saturating_add(count) {
                    r.eventfds.remove(&(index, v));
                }
            } else {
                for (i, f) in fds.into_iter().enumerate() {
                    r.eventfds.insert((index, start + i as u32), f);
                }
            }
        } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            r.eventfds.retain(|&(i, _), _| i != index);
        }
        Ok(())
    }
}

/// Their server running the scratch device on its own thread.
struct TheirServer {
    path: PathBuf,
    rec: Arc<Mutex<Record>>,
    /// A second handle on BAR2's memfd, to look at it from the test.
    bar2: File,
    done: mpsc::Receiver<Result<(), String>>,
    join: JoinHandle<()>,
    _dir: TempDir,
}

fn region(index: u32, flags: u32, size: u64) -> ServerRegion {
    ServerRegion {
        region_info: vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

/// Starts their server. BAR2 is offered for mmap (MMAP flag, the memfd as `mmap_fd`); with
/// `bar2_sparse` its first half is also listed as a sparse-mmap area.
fn start_theirs(tag: &str, bar2_sparse: bool) -> TheirServer {
    let dir = TempDir::new(tag);
    let path = dir.sock();
    let bar2 = memfd("their-bar2", T_BAR2_SIZE);
    let mut regions: Vec<ServerRegion> =
        (0..VFIO_PCI_NUM_REGIONS).map(|i| region(i, 0, 0)).collect();
    regions[BAR0 as usize] = region(BAR0, RW, T_BAR0_SIZE);
    regions[CONFIG as usize] = region(CONFIG, RW, 256);
    let mut bar2_region = region(BAR2, RW | VFIO_REGION_INFO_FLAG_MMAP, T_BAR2_SIZE);
    bar2_region.mmap_fd = Some(bar2.as_raw_fd());
    if bar2_sparse {
        bar2_region.sparse_areas = vec![vfio_user::SparseArea {
            area: vfio_region_sparse_mmap_area {
                offset: 0,
                size: T_BAR2_SIZE / 2,
            },
        }];
    }
    regions[BAR2 as usize] = bar2_region;
    let irq = |index, flags, count| vfio_user::IrqInfo {
        index,
        flags,
        count,
    };
    let irqs = vec![
        irq(
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
            1,
        ),
        irq(
            VFIO_PCI_MSI_IRQ_INDEX,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            1,
        ),
        irq(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            T_MSIX_COUNT,
        ),
        irq(3, VFIO_IRQ_INFO_EVENTFD, 1),
        irq(4, VFIO_IRQ_INFO_EVENTFD, 1),
    ];
    assert_eq!(irqs.len() as u32, VFIO_PCI_NUM_IRQS);
    // Server::new binds before returning, so a connect right after cannot race the thread.
    let server = vfio_user::Server::new(&path, true, irqs, regions).expect("their Server::new");
    let rec = Arc::new(Mutex::new(Record {
        bar0: vec![0; T_BAR0_SIZE as usize],
        config: vec![0; 256],
        ..Record::default()
    }));
    let mut backend = Scratch {
        rec: rec.clone(),
        bar2: bar2.try_clone().expect("dup memfd"),
    };
    let (tx, done) = mpsc::channel();
    let join = thread::spawn(move || {
        let r = server.run(&mut backend).map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    TheirServer {
        path,
        rec,
        bar2,
        done,
        join,
        _dir: dir,
    }
}

impl TheirServer {
    fn rec(&self) -> MutexGuard<'_, Record> {
        lock(&self.rec)
    }

    /// Waits (bounded) for their `Server::run` to return, which it does once our client has
    /// closed the one connection it accepts; joins the thread. `Err` if `run` failed or the
    /// thread panicked.
    fn finish(self) -> Result<(), String> {
        let r = match self.done.recv_timeout(DEADLINE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                panic!("their Server::run did not return within {DEADLINE:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err("their server thread ended without a result".into())
            }
        };
        match self.join.join() {
            Ok(()) => r,
            Err(_) => Err("their server thread panicked".into()),
        }
    }
}

fn our_connect(path: &Path) -> Client {
    Client::connect(path).expect("our client connects to their server")
}

/// A header-only command with `command`, sent raw; returns the reply's header.
fn raw_header_only(c: &mut Client, command: u16) -> Header {
    let id = c.next_msg_id();
    let bytes = MessageBuilder::with_flags(id, command, wire::FLAGS_TYPE_COMMAND).finish();
    let reply = c.raw_exchange(&bytes, &[]).expect("raw exchange");
    let h = Header::decode(&reply.bytes).expect("reply header");
    assert_eq!(h.msg_id, id, "their reply echoes the id");
    h
}

#[test]
fn our_client_negotiates_with_their_server() {
    let theirs = start_theirs("negotiate", false);
    // Propose minor 2 and a twin socket: their server answers 0.0 and ignores twin_socket.
    let config = ClientConfig {
        minor: 2,
        twin_socket: true,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&theirs.path, config)
        .expect("our client negotiates with their server");
    assert_eq!(c.server_minor(), 0, "their server always replies 0.0");
    assert!(!c.has_twin_socket());
    let caps = c.server_caps().clone();
    assert_eq!(caps.max_msg_fds(), 1);
    assert_eq!(caps.max_data_xfer_size(), 1 << 20);
    // They send only the legacy migration.pgsize; pgsizes() falls back to it.
    assert_eq!(caps.pgsizes, None);
    assert_eq!(
        caps.migration.and_then(|m| m.pgsize),
        Some(rustix::param::page_size() as u64)
    );
    assert_eq!(caps.pgsizes(), rustix::param::page_size() as u64);
    assert!(!caps.write_multiple());

    let info = c.device_info();
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!(
        (info.num_regions, info.num_irqs),
        (VFIO_PCI_NUM_REGIONS, VFIO_PCI_NUM_IRQS)
    );
    assert_eq!(c.get_device_info().expect("GET_INFO again"), info);
    assert_eq!(c.regions().len(), VFIO_PCI_NUM_REGIONS as usize);
    let r0 = c.region(BAR0).expect("BAR0").clone();
    assert_eq!((r0.size, r0.flags, r0.has_fd), (T_BAR0_SIZE, RW, false));
    assert_eq!(c.region(CONFIG).map(|r| r.size), Some(256));
    for i in [1, 3, 4, 5, 6, 8] {
        assert_eq!(
            c.region(i).map(|r| (r.size, r.flags)),
            Some((0, 0)),
            "region {i}"
        );
    }
    let msix = c.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).expect("IRQ info");
    assert_eq!(
        (msix.flags, msix.count),
        (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, T_MSIX_COUNT)
    );

    // The server did not agree to write_multiple: our client must not send REGION_WRITE_MULTI.
    let err = c
        .region_write_multi(&[(BAR0, 0, &[1, 2, 3, 4])])
        .expect_err("not negotiated");
    assert!(matches!(err, ClientError::Invalid(_)), "{err}");
    assert_eq!(c.read_u32(BAR0, 0).expect("still in step"), 0);

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_client_region_io_with_their_server() {
    let theirs = start_theirs("regions", false);
    let mut c = our_connect(&theirs.path);

    c.write_u32(BAR0, 0x10, 0xdead_beef).expect("write u32");
    assert_eq!(c.read_u32(BAR0, 0x10).expect("read u32"), 0xdead_beef);
    c.write_u64(BAR0, 0x18, 0x0123_4567_89ab_cdef)
        .expect("write u64");
    assert_eq!(
        c.read_u64(BAR0, 0x18).expect("read u64"),
        0x0123_4567_89ab_cdef
    );
    let block = pattern(T_BAR0_SIZE as usize - 0x100, 3);
    c.region_write(BAR0, 0x20, &block).expect("write block");
    let mut back = vec![0u8; block.len()];
    c.region_read(BAR0, 0x20, &mut back).expect("read block");
    assert_eq!(back, block);
    assert_eq!(
        &theirs.rec().bar0[0x20..0x20 + block.len()],
        &block[..],
        "the backend has the bytes"
    );

    // A posted (No_reply) write: their 0.1.7 server honours No_reply, so the next request's
    // reply is the next message and the write landed before it (in-order processing).
    c.region_write_msg(BAR0, 0x40, &0x5555_aaaau32.to_ne_bytes(), true)
        .expect("posted write");
    assert_eq!(
        c.read_u32(BAR0, 0x40).expect("read after posted write"),
        0x5555_aaaa
    );

    // Config space of the backend.
    c.write_u32(CONFIG, 0x3c, 0x0000_010b)
        .expect("config write");
    assert_eq!(c.read_u32(CONFIG, 0x3c).expect("config read"), 0x0000_010b);

    // Out of range: refused by our client before anything is sent.
    assert!(matches!(
        c.read_u32(BAR0, T_BAR0_SIZE - 2),
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(c.write_u32(9, 0, 1), Err(ClientError::Invalid(_))));

    // A region index their server does not have, sent raw: their `InvalidInput` path, the one
    // error they report with a real errno (EINVAL). The payload was fully read: still in step.
    let id = c.next_msg_id();
    let mut b = MessageBuilder::command(id, Command::RegionRead);
    RegionAccess {
        offset: 0,
        region: 20,
        count: 4,
    }
    .encode(&mut b);
    let reply = c.raw_exchange(&b.finish(), &[]).expect("raw REGION_READ");
    let h = Header::decode(&reply.bytes).expect("header");
    assert_eq!((h.msg_id, h.command), (id, Command::RegionRead as u16));
    assert!(h.is_reply() && h.is_error());
    assert_eq!(h.error_no, Errno::INVAL.raw_os_error() as u32);
    assert_eq!(
        reply.bytes.len(),
        wire::HEADER_SIZE,
        "an error reply is header-only"
    );
    assert_eq!(c.read_u32(BAR0, 0x10).expect("still in step"), 0xdead_beef);

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn their_server_sends_no_mmap_fd_for_a_region_without_sparse_areas() {
    let theirs = start_theirs("mmapfd", false);
    let mut c = our_connect(&theirs.path);
    // Spec (DEVICE_GET_REGION_INFO): "With MMAP set, the reply carries the fd as SCM_RIGHTS".
    // Deviation (theirs): 0.1.7 attaches `mmap_fd` only to a reply that carries capability data,
    // i.e. only for regions with sparse areas; a wholly mappable region arrives with MMAP set
    // and no fd. Our client then treats it as not mappable and falls back to messages.
    let r2 = c.region(BAR2).expect("BAR2").clone();
    assert_eq!(
        r2.flags & VFIO_REGION_INFO_FLAG_MMAP,
        VFIO_REGION_INFO_FLAG_MMAP
    );
    assert!(
        !r2.has_fd,
        "their server sent an fd after all: the deviation is fixed"
    );
    assert!(!r2.mappable());
    assert_eq!(
        c.map_region(BAR2).expect("map_region"),
        0,
        "nothing to map without an fd"
    );

    c.write_u32(BAR2, 0x20, 0x1122_3344)
        .expect("BAR2 write by message");
    assert_eq!(
        c.read_u32(BAR2, 0x20).expect("BAR2 read by message"),
        0x1122_3344
    );
    let mut b = [0u8; 4];
    theirs.bar2.read_exact_at(&mut b, 0x20).expect("read memfd");
    assert_eq!(u32::from_ne_bytes(b), 0x1122_3344);
    let r = theirs.rec();
    assert_eq!(
        (r.bar2_writes, r.bar2_reads),
        (1, 1),
        "both went by message"
    );
    drop(r);

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_client_maps_a_sparse_region_of_their_server() {
    let theirs = start_theirs("sparse", true);
    // Their server answers the first DEVICE_GET_REGION_INFO (argsz 32) for BAR2 with
    // argsz = 32 + 16 + 16 = 64, the CAPS flag set and cap_offset = 32, but without the
    // capability bytes and without the fd (see the raw test below). Setting CAPS there is
    // sloppy of them (the kernel's VFIO sets cap_offset 0 when the caps do not fit), but the
    // spec gives the client what it needs: "argsz is the size required for the full reply
    // payload", so a reply whose argsz exceeds what was asked for is retried with that argsz,
    // and its capability chain (which is not in it) is not parsed. QEMU's client and their
    // own client do exactly that. Ours must too: retry, get the sparse area and the fd, map.
    let mut c = our_connect(&theirs.path);
    let r2 = c.region(BAR2).expect("BAR2").clone();
    assert!(r2.has_fd, "the retried reply carries the mmap fd");
    assert_eq!(r2.sparse.len(), 1);
    assert_eq!(
        (r2.sparse[0].offset, r2.sparse[0].size),
        (0, T_BAR2_SIZE / 2)
    );
    assert_eq!(c.map_region(BAR2).expect("map_region"), 1);

    // Inside the sparse area: direct access, the backend never sees it.
    c.write_u32(BAR2, 0x10, 0xcafe_f00d).expect("direct write");
    let mut b = [0u8; 4];
    theirs.bar2.read_exact_at(&mut b, 0x10).expect("read memfd");
    assert_eq!(u32::from_ne_bytes(b), 0xcafe_f00d);
    // Outside it: by message.
    c.write_u32(BAR2, T_BAR2_SIZE / 2 + 8, 7)
        .expect("trapped write");
    assert_eq!(
        theirs.rec().bar2_writes,
        1,
        "only the trapped write reached the backend"
    );

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

/// Reads the u32 at `off` of a payload.
fn payload_u32(p: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[off..off + 4]);
    u32::from_ne_bytes(b)
}

#[test]
fn their_sparse_region_info_replies_on_the_wire() {
    use emudev_vfio_user::transport::{MessageSocket, RecvLimits};
    use emudev_vfio_user::wire::{Capabilities, RegionInfoMsg, Version};

    let theirs = start_theirs("sparse-raw", true);
    let sock = MessageSocket::new(UnixStream::connect(&theirs.path).expect("connect"));
    sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let limits = RecvLimits {
        max_msg_size: 1 << 16,
        max_fds: 4,
    };
    let exchange = |id: u16, cmd: Command, build: &dyn Fn(&mut MessageBuilder)| {
        let mut b = MessageBuilder::command(id, cmd);
        build(&mut b);
        sock.send(&b.finish(), &[]).expect("send");
        let m = sock.recv(limits).expect("recv").expect("a reply, not EOF");
        let h = Header::decode(&m.bytes).expect("header");
        assert_eq!(
            (h.msg_id, h.command, h.is_error()),
            (id, cmd as u16, false),
            "{h:?}"
        );
        (m.bytes[wire::HEADER_SIZE..].to_vec(), m.fds)
    };

    // `{"capabilities":{}}` (every key defaulted) is accepted, unlike `{}` (test below).
    let (p, _) = exchange(0, Command::Version, &|b| {
        Version {
            major: 0,
            minor: 0,
            caps: Some(Capabilities::default()),
        }
        .encode(b)
    });
    assert_eq!(Version::decode(&p).expect("VERSION reply").minor, 0);

    // argsz 32: argsz 64 comes back with CAPS and cap_offset 32 set, but the payload stops at
    // 32 bytes and carries no fd although MMAP is set.
    let (p, fds) = exchange(1, Command::DeviceGetRegionInfo, &|b| {
        RegionInfoMsg::encode_request(BAR2, 32, b)
    });
    assert_eq!(p.len(), 32);
    assert!(fds.is_empty());
    let caps = vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_CAPS;
    assert_eq!(
        payload_u32(&p, 0),
        64,
        "argsz: 32 + 16 (cap header + nr_areas) + 16 (one area)"
    );
    assert_eq!(payload_u32(&p, 4), RW | VFIO_REGION_INFO_FLAG_MMAP | caps);
    assert_eq!(
        payload_u32(&p, 12),
        32,
        "cap_offset points past the payload"
    );

    // argsz 64: the capability and the fd.
    let (p, mut fds) = exchange(2, Command::DeviceGetRegionInfo, &|b| {
        RegionInfoMsg::encode_request(BAR2, 64, b)
    });
    assert_eq!(p.len(), 64);
    assert_eq!(fds.len(), 1);
    let m = RegionInfoMsg::decode_reply(&p).expect("the full reply decodes");
    assert_eq!(
        (m.argsz, m.flags, m.index, m.size),
        (
            64,
            RW | VFIO_REGION_INFO_FLAG_MMAP | caps,
            BAR2,
            T_BAR2_SIZE
        )
    );
    assert_eq!(m.sparse.len(), 1);
    assert_eq!((m.sparse[0].offset, m.sparse[0].size), (0, T_BAR2_SIZE / 2));
    // The fd is BAR2's memfd.
    let fd = File::from(fds.remove(0));
    fd.write_all_at(&[0xab; 4], 0x30)
        .expect("write through the received fd");
    let mut b = [0u8; 4];
    theirs.bar2.read_exact_at(&mut b, 0x30).expect("read memfd");
    assert_eq!(b, [0xab; 4]);

    drop(sock);
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_client_dma_with_their_server() {
    const IOVA: u64 = 0x10_0000;
    const SIZE: u64 = 0x2000;
    let theirs = start_theirs("dma", false);
    let mut c = our_connect(&theirs.path);

    // memfd-backed memory, fd passed: their backend gets dma_map(READ|WRITE, 0, IOVA, SIZE, Some).
    let buf = c.alloc_dma(IOVA, SIZE, true).expect("alloc_dma with fd");
    {
        let r = theirs.rec();
        let m = r.maps.last().expect("a DMA_MAP reached the backend");
        assert_eq!(
            (m.flags, m.offset, m.address, m.size, m.had_fd),
            (DmaMapFlags::READ_WRITE, 0, IOVA, SIZE, true)
        );
    }
    // The device reads and writes our memory through that fd.
    buf.write(0x100, &41u64.to_le_bytes())
        .expect("write our memory");
    c.write_u64(BAR0, T_REG_DMA_INC, IOVA + 0x100)
        .expect("kick the DMA register");
    let mut v = [0u8; 8];
    buf.read(0x108, &mut v).expect("read our memory");
    assert_eq!(u64::from_le_bytes(v), 42, "the device wrote into our memfd");

    // A caller-provided fd with a file offset and read-only protection.
    let other = memfd("our-ram", 0x3000);
    c.dma_map(
        0x20_0000,
        0x1000,
        DmaProt::READ,
        Some((other.as_fd(), 0x1000)),
    )
    .expect("dma_map with offset");
    {
        let r = theirs.rec();
        let m = r.maps.last().expect("map");
        assert_eq!(
            (m.flags, m.offset, m.address, m.size, m.had_fd),
            (DmaMapFlags::READ, 0x1000, 0x20_0000, 0x1000, true)
        );
    }

    // Without an fd: their backend gets `None` (their server cannot send DMA_READ/WRITE, so such
    // memory is unreachable for a device of theirs; nothing to test beyond the map itself).
    let _nofd = c
        .alloc_dma(0x30_0000, 0x1000, false)
        .expect("alloc_dma without fd");
    assert!(!theirs.rec().maps.last().expect("map").had_fd);

    // DMA_UNMAP: flags 0 (kernel value for a plain unmap), echoed in the reply.
    c.dma_unmap(IOVA, SIZE).expect("dma_unmap");
    assert_eq!(
        theirs.rec().unmaps.last().map(|u| (u.0.bits(), u.1, u.2)),
        Some((0, IOVA, SIZE))
    );
    assert!(!theirs.rec().windows.contains_key(&IOVA));
    c.dma_unmap(0x20_0000, 0x1000).expect("dma_unmap 2");
    c.dma_unmap(0x30_0000, 0x1000).expect("dma_unmap 3");
    assert!(theirs.rec().windows.is_empty());

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn their_server_reports_backend_errors_with_errno_zero() {
    let theirs = start_theirs("errno", false);
    let mut c = our_connect(&theirs.path);

    // Unmapping an address that was never mapped: the backend returns ENOENT (as libvfio-user
    // does), but their server replies with error_no 0 for every backend error. The spec allows
    // error_no 0 ("It may be zero even if the Error bit is set"); our client then reports EINVAL,
    // the value libvfio-user also substitutes for 0.
    let err = c
        .dma_unmap(0x40_0000, 0x1000)
        .expect_err("nothing mapped there");
    assert!(
        matches!(
            err,
            ClientError::Server {
                errno: Errno::INVAL,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(theirs.rec().unmaps.len(), 1, "the backend was asked");

    // The same on the wire: Reply|Error, error_no 0, header only.
    let id = c.next_msg_id();
    let mut b = MessageBuilder::command(id, Command::DmaUnmap);
    wire::DmaUnmap {
        argsz: wire::DmaUnmap::SIZE as u32,
        flags: 0,
        address: 0x40_0000,
        size: 0x1000,
    }
    .encode(&mut b);
    let reply = c.raw_exchange(&b.finish(), &[]).expect("raw DMA_UNMAP");
    let h = Header::decode(&reply.bytes).expect("header");
    assert_eq!((h.msg_id, h.command), (id, Command::DmaUnmap as u16));
    assert_eq!(h.flags, wire::FLAGS_TYPE_REPLY | wire::FLAGS_ERROR);
    assert_eq!(h.error_no, 0, "their server drops the backend's ENOENT");
    assert_eq!(reply.bytes.len(), wire::HEADER_SIZE);

    // An unsupported command without payload (DEVICE_FEATURE, header only): error_no 0 too, and
    // as nothing follows the header the connection stays in step.
    let h = raw_header_only(&mut c, Command::DeviceFeature as u16);
    assert_eq!(
        (h.command, h.flags, h.error_no),
        (
            Command::DeviceFeature as u16,
            wire::FLAGS_TYPE_REPLY | wire::FLAGS_ERROR,
            0
        )
    );
    assert_eq!(
        c.get_device_info().expect("still in step").num_regions,
        VFIO_PCI_NUM_REGIONS
    );

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_dma_unmap_all_is_read_by_their_server_as_dirty_page_query() {
    let theirs = start_theirs("unmapall", false);
    let mut c = our_connect(&theirs.path);
    let _a = c.alloc_dma(0x10_0000, 0x1000, true).expect("map a");
    let _b = c.alloc_dma(0x20_0000, 0x1000, true).expect("map b");

    // Our dma_unmap_all sends the kernel/QEMU/libvfio-user value VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
    // with address 0 and size 0. The rust crate numbers its flags differently (UNMAP_ALL = 1 << 2,
    // GET_DIRTY_PAGE_INFO = 1 << 1), so their backend receives a *dirty page query* for [0, 0),
    // which this backend (like any without dirty tracking) refuses: nothing is unmapped.
    assert_eq!(wire::DMA_UNMAP_FLAG_ALL, 1 << 1);
    let err = c
        .dma_unmap_all()
        .expect_err("their backend refused the 'dirty page query'");
    assert!(
        matches!(
            err,
            ClientError::Server {
                errno: Errno::INVAL,
                ..
            }
        ),
        "{err}"
    );
    {
        let r = theirs.rec();
        let (flags, address, size) = *r.unmaps.last().expect("the backend was called");
        assert_eq!(flags.bits(), 1 << 1);
        assert!(flags.contains(DmaUnmapFlags::GET_DIRTY_PAGE_INFO));
        assert!(!flags.contains(DmaUnmapFlags::UNMAP_ALL));
        assert_eq!((address, size), (0, 0));
        assert_eq!(r.windows.len(), 2, "both maps are still there");
    }

    // One by one works, and the connection is still in step.
    c.dma_unmap(0x10_0000, 0x1000).expect("unmap a");
    c.dma_unmap(0x20_0000, 0x1000).expect("unmap b");
    assert!(theirs.rec().windows.is_empty());

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_client_irqs_with_their_server() {
    let theirs = start_theirs("irqs", false);
    let mut c = our_connect(&theirs.path);

    // 16 MSI-X eventfds: their server advertises max_msg_fds 1, so our client sends 16 SET_IRQS
    // of one fd each (as QEMU chunks by max_msg_fds).
    let fds = c
        .enable_irqs(VFIO_PCI_MSIX_IRQ_INDEX, T_MSIX_COUNT)
        .expect("enable MSI-X");
    assert_eq!(fds.len(), T_MSIX_COUNT as usize);
    {
        let r = theirs.rec();
        assert_eq!(r.irqs.len(), T_MSIX_COUNT as usize);
        for (v, call) in r.irqs.iter().enumerate() {
            let want = IrqCall {
                index: VFIO_PCI_MSIX_IRQ_INDEX,
                flags: BIND_EVENTFDS,
                start: v as u32,
                count: 1,
                nfds: 1,
            };
            assert_eq!(*call, want);
        }
        // The device signals vector 5 the way their backends do: write 1 to the eventfd.
        let mut efd = r
            .eventfds
            .get(&(VFIO_PCI_MSIX_IRQ_INDEX, 5))
            .expect("vector 5 bound");
        efd.write_all(&1u64.to_ne_bytes()).expect("signal vector 5");
    }
    for (v, fd) in fds.iter().enumerate() {
        assert_eq!(take_eventfd(fd), (v == 5).then_some(1), "vector {v}");
    }

    // MSI: one eventfd.
    let msi = c
        .enable_irqs(VFIO_PCI_MSI_IRQ_INDEX, 1)
        .expect("enable MSI");
    {
        let r = theirs.rec();
        let mut efd = r
            .eventfds
            .get(&(VFIO_PCI_MSI_IRQ_INDEX, 0))
            .expect("MSI bound");
        efd.write_all(&1u64.to_ne_bytes()).expect("signal MSI");
    }
    assert_eq!(take_eventfd(&msi[0]), Some(1));

    // Unbind (DATA_EVENTFD, no fds) and disable (count 0, DATA_NONE|TRIGGER).
    c.unbind_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, T_MSIX_COUNT)
        .expect("unbind MSI-X");
    c.disable_irqs(VFIO_PCI_MSI_IRQ_INDEX).expect("disable MSI");
    {
        let r = theirs.rec();
        let n = r.irqs.len();
        assert_eq!(
            r.irqs[n - 2],
            IrqCall {
                index: 2,
                flags: BIND_EVENTFDS,
                start: 0,
                count: T_MSIX_COUNT,
                nfds: 0
            }
        );
        assert_eq!(
            r.irqs[n - 1],
            IrqCall {
                index: 1,
                flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                start: 0,
                count: 0,
                nfds: 0
            }
        );
        assert!(
            r.eventfds.is_empty(),
            "{:?}",
            r.eventfds.keys().collect::<Vec<_>>()
        );
    }

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn our_client_reset_with_their_server() {
    let theirs = start_theirs("reset", false);
    let mut c = our_connect(&theirs.path);
    assert_ne!(
        c.device_info().flags & VFIO_DEVICE_FLAGS_RESET,
        0,
        "resettable = true was advertised"
    );
    c.write_u32(BAR0, 0x80, 0xffff_0000).expect("write");
    c.reset().expect("DEVICE_RESET");
    assert_eq!(theirs.rec().resets, 1);
    assert_eq!(c.read_u32(BAR0, 0x80).expect("read after reset"), 0);
    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

/// After a desync, the real reply to our last request is still queued. Sends a posted
/// (No_reply) REGION_WRITE, which their server answers with nothing, and returns the next
/// message's header: the late reply. The socket is then empty, so closing it ends their
/// `Server::run` cleanly (closing a UNIX socket with unread data resets the peer instead).
fn take_late_reply(c: &mut Client) -> Header {
    let id = c.next_msg_id();
    let mut b = MessageBuilder::command(id, Command::RegionWrite).no_reply(true);
    RegionAccess {
        offset: 0,
        region: BAR0,
        count: 4,
    }
    .encode(&mut b);
    b.bytes(&[0; 4]);
    let late = c.raw_exchange(&b.finish(), &[]).expect("the late reply");
    Header::decode(&late.bytes).expect("header")
}

#[test]
fn their_server_rejects_data_bool_and_leaves_its_payload_unread() {
    let theirs = start_theirs("bool", false);
    let mut c = our_connect(&theirs.path);

    // Spec: SET_IRQS with DATA_BOOL carries `count` bytes after the 20-byte fixed part. Their
    // server reads only the fixed part, answers UnsupportedFeature (error_no 0), and leaves the
    // `count` bytes in the socket, where they are read as the next message header. With 16
    // all-false bytes that stray "header" is exactly one all-zero header (command 0), which
    // gets its own unsolicited error reply with msg_id 0: deterministic, unlike a count that is
    // not a multiple of 16, whose stray bytes would merge with our next request.
    let err = c
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            wire::IrqAction::Trigger,
            wire::IrqSetData::Bool(vec![false; 16]),
            0,
            T_MSIX_COUNT,
        )
        .expect_err("their server does not support DATA_BOOL");
    assert!(
        matches!(
            err,
            ClientError::Server {
                errno: Errno::INVAL,
                ..
            }
        ),
        "{err}"
    );
    assert!(theirs.rec().irqs.is_empty(), "the backend never saw it");

    // The stray reply (id 0, command 0) now comes first: our client rejects it as a reply that
    // does not match the request instead of taking it for the answer.
    let err = c.get_device_info().expect_err("the stream is out of step");
    assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
    let late = take_late_reply(&mut c);
    assert_eq!(
        (late.command, late.is_error()),
        (Command::DeviceGetInfo as u16, false),
        "{late:?}"
    );

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn their_server_leaves_unsupported_command_payload_unread() {
    let theirs = start_theirs("iofds", false);
    let mut c = our_connect(&theirs.path);

    // DEVICE_GET_REGION_IO_FDS is a spec command their server does not implement. It rejects
    // it from the header alone (error_no 0) without reading the 16-byte payload, which then
    // reads as a header (msg_id 16 = argsz, command 0) and gets an unsolicited error reply.
    let err = c
        .get_region_io_fds(BAR0)
        .expect_err("unsupported by their server");
    assert!(
        matches!(
            err,
            ClientError::Server {
                errno: Errno::INVAL,
                ..
            }
        ),
        "{err}"
    );
    let err = c.get_device_info().expect_err("the stream is out of step");
    assert!(matches!(err, ClientError::BadReply { .. }), "{err}");
    let late = take_late_reply(&mut c);
    assert_eq!(
        (late.command, late.is_error()),
        (Command::DeviceGetInfo as u16, false),
        "{late:?}"
    );

    c.close();
    assert_eq!(theirs.finish(), Ok(()));
}

/// A VERSION command with `json` (NUL added) or none, sent on a plain stream.
fn raw_version(json: Option<&str>) -> Vec<u8> {
    let mut b = MessageBuilder::command(0, Command::Version);
    b.fixed(4).put_u16(0, 0).put_u16(2, 0);
    if let Some(j) = json {
        b.bytes(j.as_bytes()).bytes(&[0]);
    }
    b.finish()
}

#[test]
fn their_server_refuses_version_json_without_capabilities() {
    let theirs = start_theirs("version-empty", false);
    let mut s = UnixStream::connect(&theirs.path).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // Spec: every capability is optional with a default, so `{}` is a valid VERSION JSON
    // (libvfio-user's test_negotiate accepts it). Their server requires the `capabilities`
    // key and answers with an error reply (error_no 0) instead of a VERSION reply.
    s.write_all(&raw_version(Some("{}"))).expect("send VERSION");
    let mut hb = [0u8; wire::HEADER_SIZE];
    s.read_exact(&mut hb).expect("reply header");
    let h = Header::decode(&hb).expect("header");
    assert_eq!(
        (h.command, h.msg_size, h.error_no),
        (Command::Version as u16, wire::HEADER_SIZE as u32, 0)
    );
    assert_eq!(h.flags, wire::FLAGS_TYPE_REPLY | wire::FLAGS_ERROR);
    drop(s);
    assert_eq!(theirs.finish(), Ok(()));
}

#[test]
fn their_server_panics_on_version_without_json() {
    let theirs = start_theirs("version-none", false);
    let mut s = UnixStream::connect(&theirs.path).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // Spec: the JSON after major/minor is optional. Their server unwraps
    // `CString::from_vec_with_nul` of the (empty) rest and panics: the connection drops
    // without a reply and `Server::run` never returns. (Our client always sends JSON.)
    s.write_all(&raw_version(None)).expect("send VERSION");
    let mut hb = [0u8; wire::HEADER_SIZE];
    let got = s.read(&mut hb).expect("read");
    assert_eq!(got, 0, "EOF instead of a VERSION reply");
    let r = theirs.finish();
    assert_eq!(r, Err("their server thread panicked".to_string()));
}
