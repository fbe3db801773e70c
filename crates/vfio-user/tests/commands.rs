//! Our client against our server over a real UNIX socket, one test per vfio-user command (and
//! the connection life cycle around them). Every test checks an effect on the other side: the
//! device's state and event counters, the bytes in client memory, eventfd counters.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    read_eventfd, start, Events, TestDevice, BAR0_SIZE, BAR2_SIZE, DOORBELL, REG_DMA_DONE,
    REG_DMA_ERRORS, REG_DMA_IOVA, REG_DMA_LEN, REG_IRQ,
};
use emudev_dma::{DmaProt, Iova};
use emudev_vfio_user::client::{Client, ClientConfig, ClientError, DmaBuffer};
use emudev_vfio_user::server::{RunningServer, Server, ServerBindError, ServerConfig};
use emudev_vfio_user::wire::{self, IrqAction, IrqSetData};
use emudev_vfio_user::Errno;
use vfio_bindings::bindings::vfio;

/// Bound for every wait in this file.
const WAIT: Duration = Duration::from_secs(5);

/// Polls `cond` until it holds or [`WAIT`] passes; returns whether it held.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The errno of a server error reply, panicking (test failure) on any other outcome.
fn server_errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Errno {
    match r {
        Err(ClientError::Server { errno, .. }) => errno,
        other => panic!("expected an error reply from the server, got {other:?}"),
    }
}

fn connect(path: &std::path::Path) -> Client {
    Client::connect(path).expect("connect")
}

fn connect_twin(path: &std::path::Path) -> Client {
    let c = Client::connect_with(
        path,
        ClientConfig {
            twin_socket: true,
            ..ClientConfig::default()
        },
    )
    .expect("connect");
    assert!(c.has_twin_socket());
    c
}

/// A byte pattern that differs at every position of a small window (and is never 0xff, so +1
/// does not wrap).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + seed as usize) % 251) as u8)
        .collect()
}

/// Makes the test device copy `len` bytes from `iova` to `iova + 0x1000`, each plus one.
fn device_dma(c: &mut Client, iova: u64, len: u64) -> Result<(), ClientError> {
    c.write_u64(0, REG_DMA_IOVA, iova)?;
    c.write_u64(0, REG_DMA_LEN, len)
}

/// Checks that `buf[0x1000..0x1000 + len]` holds `src[i] + 1`.
fn assert_copied_plus_one(buf: &DmaBuffer, src: &[u8]) {
    let mut out = vec![0u8; src.len()];
    buf.read(0x1000, &mut out).unwrap();
    let expect: Vec<u8> = src.iter().map(|b| b.wrapping_add(1)).collect();
    assert!(
        out == expect,
        "device DMA result differs from the source + 1"
    );
}

fn mapped_iovas(events: &Events) -> Vec<(u64, u64, bool)> {
    events
        .mapped
        .lock()
        .unwrap()
        .iter()
        .map(|m| (m.iova.0, m.size, m.host.is_some()))
        .collect()
}

fn unmapped_iovas(events: &Events) -> Vec<(u64, u64)> {
    events
        .unmapped
        .lock()
        .unwrap()
        .iter()
        .map(|m| (m.iova.0, m.size))
        .collect()
}

fn all_eventfds(fds: &[OwnedFd]) -> Vec<u64> {
    fds.iter().map(read_eventfd).collect()
}

fn stop(server: RunningServer<TestDevice>) {
    server.stop().expect("server stops");
}

// ----- VERSION ------------------------------------------------------------------------------------

#[test]
fn version_negotiates_caps_with_client_defaults() {
    let (server, path, events) = start("version", ServerConfig::default());
    let c = connect(&path);
    assert_eq!(
        c.server_minor(),
        0,
        "the client proposes 0.0: the reply carries min(0, 2)"
    );
    let caps = c.server_caps();
    assert_eq!(caps.max_msg_fds, Some(8));
    assert_eq!(caps.max_data_xfer_size, Some(1 << 20));
    assert_eq!(caps.pgsizes, Some(4096));
    assert_eq!(caps.max_dma_maps, Some(wire::DEFAULT_MAX_DMA_MAPS));
    assert_eq!(
        caps.write_multiple,
        Some(true),
        "both sides offer write_multiple"
    );
    assert!(
        !caps.twin_socket(),
        "no twin socket when the client did not ask"
    );
    assert!(!c.has_twin_socket());
    assert!(
        caps.migration.is_some(),
        "the client sent a migration object, the server answers one"
    );
    assert!(wait_for(|| events.connected.load(Ordering::SeqCst) == 1));
    c.close();
    stop(server);
}

#[test]
fn version_with_twin_socket_sets_it_up() {
    let (server, path, _events) = start("version-twin", ServerConfig::default());
    let mut c = connect_twin(&path);
    let t = c
        .server_caps()
        .twin_socket
        .expect("twin_socket capability in the reply");
    assert!(t.supported);
    assert_eq!(t.fd_index, Some(0));
    assert!(c.server_caps().write_multiple());
    // The main socket still works with the twin in place.
    c.write_u32(0, 0x10, 0xabcd).unwrap();
    assert_eq!(c.read_u32(0, 0x10).unwrap(), 0xabcd);
    c.close();
    stop(server);

    // A server configured without twin sockets does not set one up even when asked.
    let (server, path, _events) = start(
        "version-notwin",
        ServerConfig {
            twin_socket: false,
            ..ServerConfig::default()
        },
    );
    let c = Client::connect_with(
        &path,
        ClientConfig {
            twin_socket: true,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    assert!(!c.has_twin_socket());
    assert!(!c.server_caps().twin_socket());
    c.close();
    stop(server);
}

#[test]
fn version_minor_is_the_minimum_of_both() {
    let (server, path, _events) = start("version-minor", ServerConfig::default());
    for (proposed, expect) in [(0u16, 0u16), (1, 1), (2, 2), (7, 2)] {
        let c = Client::connect_with(
            &path,
            ClientConfig {
                minor: proposed,
                ..ClientConfig::default()
            },
        )
        .unwrap();
        assert_eq!(c.server_minor(), expect, "client proposed 0.{proposed}");
        c.close();
    }
    stop(server);
}

#[test]
fn version_write_multiple_needs_both_sides() {
    let (server, path, _events) = start("version-wm", ServerConfig::default());
    let mut c = Client::connect_with(
        &path,
        ClientConfig {
            write_multiple: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    assert!(!c.server_caps().write_multiple());
    assert!(matches!(
        c.region_write_multi(&[(0, 0x10, &[1])]),
        Err(ClientError::Invalid(_))
    ));
    c.close();
    stop(server);

    let (server, path, _events) = start(
        "version-wm-srv",
        ServerConfig {
            write_multiple: false,
            ..ServerConfig::default()
        },
    );
    let c = connect(&path);
    assert!(!c.server_caps().write_multiple());
    c.close();
    stop(server);
}

// ----- DMA_MAP / DMA_UNMAP --------------------------------------------------------------------------

#[test]
fn dma_map_with_fd_then_device_dma_copies() {
    let (server, path, events) = start("dma-fd", ServerConfig::default());
    let mut c = connect(&path);
    let iova = 0x10_0000;
    let buf = c.alloc_dma(iova, 0x4000, true).unwrap();
    assert!(buf.fd_shared());
    assert_eq!(
        mapped_iovas(&events),
        vec![(iova, 0x4000, true)],
        "the device saw an fd-backed (mmapped) map"
    );
    let m = server
        .context()
        .dma
        .find(Iova(iova))
        .expect("map in the server's table");
    assert_eq!(m.prot, DmaProt::RW);

    let src = pattern(0x800, 3);
    buf.write(0, &src).unwrap();
    device_dma(&mut c, iova, src.len() as u64).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 0);
    assert_copied_plus_one(&buf, &src);
    assert_eq!(c.served_inline(), 0, "fd-backed DMA needs no messages");
    assert_eq!(server.handle().stats().dma_requests, 0);

    // The device writes are visible to the client through shared memory as they happen.
    buf.write(0, &[0x41; 16]).unwrap();
    device_dma(&mut c, iova, 16).unwrap();
    let mut out = [0u8; 16];
    buf.read(0x1000, &mut out).unwrap();
    assert_eq!(out, [0x42; 16]);
    c.close();
    stop(server);
}

#[test]
fn dma_unmap_stops_device_dma() {
    let (server, path, events) = start("dma-unmap", ServerConfig::default());
    let mut c = connect(&path);
    let iova = 0x20_0000;
    let buf = c.alloc_dma(iova, 0x2000, true).unwrap();
    buf.write(0, &[7; 64]).unwrap();
    device_dma(&mut c, iova, 64).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);

    c.dma_unmap(iova, 0x2000).unwrap();
    assert_eq!(
        unmapped_iovas(&events),
        vec![(iova, 0x2000)],
        "the device saw the unmap"
    );
    assert!(server.context().dma.is_empty());

    device_dma(&mut c, iova, 64).unwrap();
    assert_eq!(
        c.read_u64(0, REG_DMA_DONE).unwrap(),
        1,
        "no DMA completes after unmap"
    );
    assert_eq!(
        c.read_u64(0, REG_DMA_ERRORS).unwrap(),
        1,
        "the device's DMA failed"
    );

    // Unmapping again, or a range that was never mapped: ENOENT.
    assert_eq!(server_errno(c.dma_unmap(iova, 0x2000)), Errno::NOENT);
    assert_eq!(server_errno(c.dma_unmap(0x90_0000, 0x1000)), Errno::NOENT);
    assert_eq!(unmapped_iovas(&events).len(), 1);
    c.close();
    stop(server);
}

#[test]
fn dma_unmap_all_removes_every_map() {
    let (server, path, events) = start("dma-unmap-all", ServerConfig::default());
    let mut c = connect(&path);
    let _a = c.alloc_dma(0x10_0000, 0x2000, true).unwrap();
    let _b = c.alloc_dma(0x20_0000, 0x1000, false).unwrap();
    let _d = c.alloc_dma(0x30_0000, 0x3000, true).unwrap();
    assert_eq!(server.context().dma.len(), 3);
    c.dma_unmap_all().unwrap();
    assert!(server.context().dma.is_empty());
    let mut gone = unmapped_iovas(&events);
    gone.sort_unstable();
    assert_eq!(
        gone,
        vec![
            (0x10_0000, 0x2000),
            (0x20_0000, 0x1000),
            (0x30_0000, 0x3000)
        ]
    );
    device_dma(&mut c, 0x10_0000, 16).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 1);
    // The IOVA space is free again.
    let again = c.alloc_dma(0x10_0000, 0x2000, true).unwrap();
    again.write(0, &[1, 2, 3]).unwrap();
    device_dma(&mut c, 0x10_0000, 3).unwrap();
    assert_copied_plus_one(&again, &[1, 2, 3]);
    c.close();
    stop(server);
}

#[test]
fn dma_map_rejects_bad_requests() {
    let (server, path, events) = start("dma-bad", ServerConfig::default());
    let mut c = connect(&path);
    // Misaligned IOVA and size, zero size, no access rights.
    assert_eq!(
        server_errno(c.dma_map(0x10_0800, 0x1000, DmaProt::RW, None)),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.dma_map(0x10_0000, 0x800, DmaProt::RW, None)),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.dma_map(0x10_0000, 0, DmaProt::RW, None)),
        Errno::INVAL
    );
    // Overlap with an existing map.
    c.dma_map(0x10_0000, 0x2000, DmaProt::RW, None).unwrap();
    assert_eq!(
        server_errno(c.dma_map(0x10_1000, 0x2000, DmaProt::RW, None)),
        Errno::EXIST
    );
    assert_eq!(server.context().dma.len(), 1);
    assert_eq!(mapped_iovas(&events), vec![(0x10_0000, 0x2000, false)]);
    // The client refuses to allocate over memory it already handed out.
    c.alloc_dma(0x40_0000, 0x2000, true).unwrap();
    assert!(matches!(
        c.alloc_dma(0x40_1000, 0x1000, true),
        Err(ClientError::Invalid(_))
    ));
    c.close();
    stop(server);
}

#[test]
fn dma_map_without_fd_is_served_inline_on_the_main_socket() {
    let (server, path, events) = start("dma-nofd", ServerConfig::default());
    let mut c = connect(&path);
    let iova = 0x50_0000;
    let buf = c.alloc_dma(iova, 0x4000, false).unwrap();
    assert!(!buf.fd_shared());
    assert_eq!(
        mapped_iovas(&events),
        vec![(iova, 0x4000, false)],
        "the device saw a message-only map"
    );

    let src = pattern(0x1800, 11);
    buf.write(0, &src).unwrap();
    device_dma(&mut c, iova, src.len() as u64).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 0);
    assert_copied_plus_one(&buf, &src);
    assert_eq!(
        c.served_inline(),
        2,
        "one DMA_READ and one DMA_WRITE served while waiting"
    );
    assert_eq!(server.handle().stats().dma_requests, 2);

    // A device access outside client memory fails with an error from the client.
    c.dma_unmap(iova, 0x4000).unwrap();
    device_dma(&mut c, iova, 16).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 1);
    c.close();
    stop(server);
}

#[test]
fn dma_map_without_fd_is_served_on_the_twin_socket() {
    let (server, path, _events) = start("dma-twin", ServerConfig::default());
    let mut c = connect_twin(&path);
    let iova = 0x60_0000;
    let buf = c.alloc_dma(iova, 0x3000, false).unwrap();
    let src = pattern(0x2000, 5);
    buf.write(0, &src).unwrap();
    device_dma(&mut c, iova, src.len() as u64).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_copied_plus_one(&buf, &src);
    assert_eq!(
        c.served_inline(),
        0,
        "the twin thread served the DMA, not the main socket"
    );
    assert_eq!(server.handle().stats().dma_requests, 2);
    c.close();
    stop(server);
}

#[test]
fn dma_without_fd_of_2mib_is_chunked_by_max_data_xfer_size() {
    const LEN: u64 = 2 << 20;
    let src = pattern(LEN as usize, 9);

    // Default 1 MiB transfers: 2 DMA_READ + 2 DMA_WRITE, inline.
    let (server, path, _events) = start("dma-2m", ServerConfig::default());
    let mut c = connect(&path);
    let buf = c.alloc_dma(0x100_0000, LEN + 0x1000, false).unwrap();
    buf.write(0, &src).unwrap();
    device_dma(&mut c, 0x100_0000, LEN).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 0);
    assert_copied_plus_one(&buf, &src);
    assert_eq!(c.served_inline(), 4);
    assert_eq!(server.handle().stats().dma_requests, 4);
    c.close();
    stop(server);

    // A client that takes 256 KiB at most: 8 + 8 messages, on the twin socket.
    let (server, path, _events) = start("dma-2m-small", ServerConfig::default());
    let cfg = ClientConfig {
        max_data_xfer_size: 256 << 10,
        twin_socket: true,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&path, cfg).unwrap();
    assert!(c.has_twin_socket());
    let buf = c.alloc_dma(0x100_0000, LEN + 0x1000, false).unwrap();
    buf.write(0, &src).unwrap();
    device_dma(&mut c, 0x100_0000, LEN).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 0);
    assert_copied_plus_one(&buf, &src);
    assert_eq!(c.served_inline(), 0);
    assert_eq!(server.handle().stats().dma_requests, 16);
    c.close();
    stop(server);
}

// ----- DEVICE_GET_INFO ------------------------------------------------------------------------------

#[test]
fn device_get_info_reports_flags_regions_irqs() {
    let (server, path, _events) = start("info", ServerConfig::default());
    let mut c = connect(&path);
    let info = c.get_device_info().unwrap();
    assert_eq!(
        info.flags,
        vfio::VFIO_DEVICE_FLAGS_PCI | vfio::VFIO_DEVICE_FLAGS_RESET
    );
    assert_eq!(info.num_regions, 9);
    assert_eq!(info.num_irqs, 5);
    assert_eq!(
        c.device_info(),
        info,
        "the info read at connect time is the same"
    );
    assert_eq!(c.regions().len(), 9);
    c.close();
    stop(server);
}

// ----- DEVICE_GET_REGION_INFO -----------------------------------------------------------------------

#[test]
fn get_region_info_reports_each_region() {
    let (server, path, _events) = start("region-info", ServerConfig::default());
    let mut c = connect(&path);
    let rw = vfio::VFIO_REGION_INFO_FLAG_READ | vfio::VFIO_REGION_INFO_FLAG_WRITE;

    let (bar0, fd) = c.get_region_info(0).unwrap();
    assert_eq!(bar0.flags, rw, "BAR0 is trapped: no MMAP flag");
    assert_eq!(bar0.size, BAR0_SIZE);
    assert!(fd.is_none() && !bar0.has_fd && !bar0.mappable());
    assert!(bar0.sparse.is_empty());

    let (bar2, fd) = c.get_region_info(2).unwrap();
    assert_eq!(bar2.flags & rw, rw);
    assert_ne!(bar2.flags & vfio::VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_ne!(
        bar2.flags & vfio::VFIO_REGION_INFO_FLAG_CAPS,
        0,
        "the sparse areas travel as a capability"
    );
    assert_eq!(bar2.size, BAR2_SIZE);
    assert!(fd.is_some() && bar2.has_fd && bar2.mappable());
    let areas: Vec<(u64, u64)> = bar2.sparse.iter().map(|a| (a.offset, a.size)).collect();
    assert_eq!(areas, vec![(0x2000, 0x1000), (0x4000, 0x2000)]);

    for absent in [1, 3, 4, 5, 6, 8] {
        let (r, fd) = c.get_region_info(absent).unwrap();
        assert_eq!(r.size, 0, "region {absent} is absent");
        assert_eq!(r.flags, 0);
        assert!(fd.is_none());
    }

    let (cfg, fd) = c
        .get_region_info(vfio::VFIO_PCI_CONFIG_REGION_INDEX)
        .unwrap();
    assert_eq!(cfg.size, 256);
    assert_eq!(cfg.flags, rw);
    assert!(fd.is_none());
    assert_eq!(
        c.read_u32(7, 0).unwrap(),
        0x1000_1af4,
        "vendor and device id"
    );

    // The descriptions read at connect time agree.
    assert_eq!(c.region(2).unwrap().sparse, bar2.sparse);
    assert_eq!(
        server_errno(c.get_region_info(9)),
        Errno::INVAL,
        "no region 9"
    );
    c.close();
    stop(server);
}

#[test]
fn map_region_sparse_areas_share_memory_with_messages() {
    let (server, path, _events) = start("region-mmap", ServerConfig::default());
    let mut c = connect(&path);
    assert_eq!(c.map_region(0).unwrap(), 0, "BAR0 cannot be mapped");
    assert_eq!(c.map_region(2).unwrap(), 2);
    let handle = server.handle();

    // Written through the mapping (no message), seen by REGION_READ and by the device.
    let before = handle.stats().messages;
    c.region_write(2, 0x2000, b"through the mapping").unwrap();
    c.write_u64(2, 0x5ff8, 0x0123_4567_89ab_cdef).unwrap();
    assert_eq!(
        handle.stats().messages,
        before,
        "accesses inside sparse areas go direct"
    );
    let mut out = [0u8; 19];
    c.region_read_msg(2, 0x2000, &mut out).unwrap();
    assert_eq!(&out, b"through the mapping");
    let mut dev = [0u8; 8];
    server
        .device()
        .lock()
        .unwrap()
        .bar2
        .read_at(0x5ff8, &mut dev)
        .unwrap();
    assert_eq!(u64::from_ne_bytes(dev), 0x0123_4567_89ab_cdef);

    // Written by REGION_WRITE, seen through the mapping.
    c.region_write_msg(2, 0x4100, b"by message", false).unwrap();
    let mut out = [0u8; 10];
    let before = handle.stats().messages;
    c.region_read(2, 0x4100, &mut out).unwrap();
    assert_eq!(handle.stats().messages, before);
    assert_eq!(&out, b"by message");

    // Outside the sparse areas (and straddling one) accesses go by message and still work.
    for (off, len) in [(0x0u64, 64usize), (0x3000, 8), (0x2ff0, 32), (0x7ff8, 8)] {
        let data = pattern(len, off as u8);
        let before = handle.stats().messages;
        c.region_write(2, off, &data).unwrap();
        let mut back = vec![0u8; len];
        c.region_read(2, off, &mut back).unwrap();
        assert_eq!(
            handle.stats().messages,
            before + 2,
            "{off:#x}+{len} is not inside one area"
        );
        assert_eq!(back, data);
    }
    c.close();
    stop(server);
}

// ----- DEVICE_GET_REGION_IO_FDS ---------------------------------------------------------------------

#[test]
fn get_region_io_fds_returns_a_working_doorbell() {
    let (server, path, _events) = start("io-fds", ServerConfig::default());
    let mut c = connect(&path);
    let list = c.get_region_io_fds(0).unwrap();
    assert_eq!(list.len(), 1);
    let (entry, fd) = &list[0];
    assert_eq!(entry.offset, DOORBELL);
    assert_eq!(entry.size, 4);
    assert_eq!(entry.kind, wire::IO_FD_TYPE_IOEVENTFD);
    assert_eq!(entry.flags, 0);
    assert_eq!(entry.fd_index, 0);

    let device = server.device();
    assert_eq!(read_eventfd(&device.lock().unwrap().doorbell), 0);
    rustix::io::write(fd, &3u64.to_ne_bytes()).unwrap();
    assert_eq!(
        read_eventfd(&device.lock().unwrap().doorbell),
        3,
        "the received fd is the device's eventfd"
    );

    assert_eq!(
        server_errno(c.get_region_io_fds(2)),
        Errno::INVAL,
        "BAR2 has no io fds"
    );
    assert_eq!(
        server_errno(c.get_region_io_fds(1)),
        Errno::INVAL,
        "absent region"
    );
    assert_eq!(
        server_errno(c.get_region_io_fds(9)),
        Errno::INVAL,
        "no such region"
    );
    c.close();
    stop(server);
}

// ----- DEVICE_GET_IRQ_INFO --------------------------------------------------------------------------

#[test]
fn get_irq_info_for_every_index() {
    let (server, path, _events) = start("irq-info", ServerConfig::default());
    let mut c = connect(&path);
    let ev = vfio::VFIO_IRQ_INFO_EVENTFD;
    let expect = [
        (
            vfio::VFIO_PCI_INTX_IRQ_INDEX,
            ev | vfio::VFIO_IRQ_INFO_MASKABLE | vfio::VFIO_IRQ_INFO_AUTOMASKED,
            1,
        ),
        (
            vfio::VFIO_PCI_MSI_IRQ_INDEX,
            ev | vfio::VFIO_IRQ_INFO_NORESIZE,
            1,
        ),
        (
            vfio::VFIO_PCI_MSIX_IRQ_INDEX,
            ev | vfio::VFIO_IRQ_INFO_MASKABLE,
            4,
        ),
        (vfio::VFIO_PCI_ERR_IRQ_INDEX, ev, 1),
        (vfio::VFIO_PCI_REQ_IRQ_INDEX, ev, 1),
    ];
    for (index, flags, count) in expect {
        let i = c.get_irq_info(index).unwrap();
        assert_eq!((i.flags, i.count), (flags, count), "IRQ index {index}");
    }
    assert_eq!(server_errno(c.get_irq_info(5)), Errno::INVAL);
    assert_eq!(server_errno(c.get_irq_info(u32::MAX)), Errno::INVAL);
    c.close();
    stop(server);
}

// ----- DEVICE_SET_IRQS ------------------------------------------------------------------------------

const MSIX: u32 = vfio::VFIO_PCI_MSIX_IRQ_INDEX;

#[test]
fn set_irqs_msix_eventfds_fire_per_vector() {
    let (server, path, events) = start("irq-msix", ServerConfig::default());
    let mut c = connect(&path);
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    assert_eq!(fds.len(), 4);
    assert!(
        events.irq_changes.load(Ordering::SeqCst) >= 1,
        "the device heard about the change"
    );
    let irqs = server.context().irqs;
    for v in 0..4 {
        assert!(irqs.state(MSIX, v).unwrap().has_eventfd);
    }
    for v in 0..4u32 {
        c.write_u32(0, REG_IRQ, v).unwrap();
        let mut expect = vec![0u64; 4];
        expect[v as usize] = 1;
        assert_eq!(all_eventfds(&fds), expect, "device triggered vector {v}");
    }
    // A vector the device does not have.
    assert_eq!(server_errno(c.write_u32(0, REG_IRQ, 4)), Errno::INVAL);
    assert_eq!(all_eventfds(&fds), vec![0; 4]);
    c.close();
    stop(server);
}

#[test]
fn set_irqs_mask_unmask_delivers_pending() {
    let (server, path, _events) = start("irq-mask", ServerConfig::default());
    let mut c = connect(&path);
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    let irqs = server.context().irqs;

    c.set_irqs(MSIX, IrqAction::Mask, IrqSetData::None, 1, 1)
        .unwrap();
    assert!(irqs.state(MSIX, 1).unwrap().masked);
    c.write_u32(0, REG_IRQ, 1).unwrap();
    assert_eq!(read_eventfd(&fds[1]), 0, "masked: not signalled");
    assert!(irqs.state(MSIX, 1).unwrap().pending);
    // Other vectors are not affected by the mask.
    c.write_u32(0, REG_IRQ, 2).unwrap();
    assert_eq!(all_eventfds(&fds), vec![0, 0, 1, 0]);

    c.set_irqs(MSIX, IrqAction::Unmask, IrqSetData::None, 1, 1)
        .unwrap();
    assert_eq!(
        read_eventfd(&fds[1]),
        1,
        "the pending interrupt is delivered on unmask"
    );
    let st = irqs.state(MSIX, 1).unwrap();
    assert!(!st.masked && !st.pending);
    c.write_u32(0, REG_IRQ, 1).unwrap();
    assert_eq!(read_eventfd(&fds[1]), 1);

    // Mask with DATA_BOOL selects vectors.
    c.set_irqs(
        MSIX,
        IrqAction::Mask,
        IrqSetData::Bool(vec![true, false, true]),
        0,
        3,
    )
    .unwrap();
    let masked: Vec<bool> = (0..4)
        .map(|v| irqs.state(MSIX, v).unwrap().masked)
        .collect();
    assert_eq!(masked, vec![true, false, true, false]);

    // Masking needs a maskable index (MSI is not) and a range inside the index.
    assert_eq!(
        server_errno(c.set_irqs(
            vfio::VFIO_PCI_MSI_IRQ_INDEX,
            IrqAction::Mask,
            IrqSetData::None,
            0,
            1
        )),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.set_irqs(MSIX, IrqAction::Mask, IrqSetData::None, 3, 2)),
        Errno::INVAL
    );
    c.close();
    stop(server);
}

#[test]
fn set_irqs_bool_trigger_fires_selected_vectors() {
    let (server, path, _events) = start("irq-bool", ServerConfig::default());
    let mut c = connect(&path);
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    c.set_irqs(
        MSIX,
        IrqAction::Trigger,
        IrqSetData::Bool(vec![true, false, true]),
        0,
        3,
    )
    .unwrap();
    assert_eq!(all_eventfds(&fds), vec![1, 0, 1, 0]);
    c.set_irqs(MSIX, IrqAction::Trigger, IrqSetData::Bool(vec![true]), 3, 1)
        .unwrap();
    assert_eq!(all_eventfds(&fds), vec![0, 0, 0, 1]);
    // DATA_NONE trigger fires the whole range.
    c.set_irqs(MSIX, IrqAction::Trigger, IrqSetData::None, 1, 2)
        .unwrap();
    assert_eq!(all_eventfds(&fds), vec![0, 1, 1, 0]);
    // Out of range.
    assert_eq!(
        server_errno(c.set_irqs(
            MSIX,
            IrqAction::Trigger,
            IrqSetData::Bool(vec![true; 2]),
            3,
            2
        )),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.set_irqs(5, IrqAction::Trigger, IrqSetData::None, 0, 1)),
        Errno::INVAL
    );
    assert_eq!(all_eventfds(&fds), vec![0; 4]);
    c.close();
    stop(server);
}

#[test]
fn set_irqs_disable_then_device_trigger_fails_noent() {
    let (server, path, _events) = start("irq-disable", ServerConfig::default());
    let mut c = connect(&path);
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    c.write_u32(0, REG_IRQ, 0).unwrap();
    assert_eq!(read_eventfd(&fds[0]), 1);
    c.set_irqs(MSIX, IrqAction::Mask, IrqSetData::None, 2, 1)
        .unwrap();

    c.disable_irqs(MSIX).unwrap();
    let irqs = server.context().irqs;
    for v in 0..4 {
        let st = irqs.state(MSIX, v).unwrap();
        assert!(!st.has_eventfd && !st.masked, "vector {v} fully reset");
    }
    assert_eq!(server_errno(c.write_u32(0, REG_IRQ, 0)), Errno::NOENT);
    assert_eq!(all_eventfds(&fds), vec![0; 4]);
    // A client-side trigger with nothing bound is not an error.
    c.set_irqs(MSIX, IrqAction::Trigger, IrqSetData::None, 0, 4)
        .unwrap();

    // count 0 must come with DATA_NONE and start 0.
    assert_eq!(
        server_errno(c.set_irqs(MSIX, IrqAction::Trigger, IrqSetData::None, 1, 0)),
        Errno::INVAL
    );

    // Enabling again works.
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    c.write_u32(0, REG_IRQ, 3).unwrap();
    assert_eq!(all_eventfds(&fds), vec![0, 0, 0, 1]);
    c.close();
    stop(server);
}

#[test]
fn set_irqs_unbind_one_vector() {
    let (server, path, _events) = start("irq-unbind", ServerConfig::default());
    let mut c = connect(&path);
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    c.unbind_irqs(MSIX, 1, 1).unwrap();
    let irqs = server.context().irqs;
    let bound: Vec<bool> = (0..4)
        .map(|v| irqs.state(MSIX, v).unwrap().has_eventfd)
        .collect();
    assert_eq!(bound, vec![true, false, true, true]);
    assert_eq!(server_errno(c.write_u32(0, REG_IRQ, 1)), Errno::NOENT);
    c.write_u32(0, REG_IRQ, 0).unwrap();
    c.write_u32(0, REG_IRQ, 2).unwrap();
    assert_eq!(all_eventfds(&fds), vec![1, 0, 1, 0]);

    // Rebinding one vector to a new eventfd replaces the old one.
    let fresh = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .unwrap();
    c.set_irq_eventfds(MSIX, 1, &[fresh.as_fd()]).unwrap();
    c.write_u32(0, REG_IRQ, 1).unwrap();
    assert_eq!(read_eventfd(&fresh), 1);
    assert_eq!(read_eventfd(&fds[1]), 0);
    c.close();
    stop(server);
}

#[test]
fn set_irqs_err_and_req_index_trigger() {
    let (server, path, _events) = start("irq-err", ServerConfig::default());
    let mut c = connect(&path);
    for index in [vfio::VFIO_PCI_ERR_IRQ_INDEX, vfio::VFIO_PCI_REQ_IRQ_INDEX] {
        let fds = c.enable_irqs(index, 1).unwrap();
        c.set_irqs(index, IrqAction::Trigger, IrqSetData::None, 0, 1)
            .unwrap();
        assert_eq!(read_eventfd(&fds[0]), 1, "index {index}");
        // The device side can signal it too.
        assert!(server.context().irqs.trigger(index, 0).unwrap());
        assert_eq!(read_eventfd(&fds[0]), 1);
        // ERR/REQ take only TRIGGER.
        assert_eq!(
            server_errno(c.set_irqs(index, IrqAction::Mask, IrqSetData::None, 0, 1)),
            Errno::INVAL
        );
    }
    c.close();
    stop(server);
}

// ----- REGION_READ / REGION_WRITE -------------------------------------------------------------------

#[test]
fn region_read_write_of_every_size() {
    let (server, path, _events) = start("region-rw", ServerConfig::default());
    let mut c = connect(&path);
    for (off, len) in [(0x10u64, 1usize), (0x20, 2), (0x30, 4), (0x40, 8)] {
        let data = pattern(len, len as u8 + 1);
        c.region_write_msg(0, off, &data, false).unwrap();
        let mut back = vec![0u8; len];
        c.region_read_msg(0, off, &mut back).unwrap();
        assert_eq!(back, data, "{len}-byte access");
        assert_eq!(
            &server.device().lock().unwrap().bar0[off as usize..off as usize + len],
            &data[..]
        );
    }
    // A 4096-byte access covers all of BAR0 (the register side effects need 8/4-byte writes).
    let page = pattern(4096, 77);
    c.region_write_msg(0, 0, &page, false).unwrap();
    let mut back = vec![0u8; 4096];
    c.region_read_msg(0, 0, &mut back).unwrap();
    assert_eq!(back, page);
    assert_eq!(server.device().lock().unwrap().bar0, page);
    c.close();
    stop(server);
}

#[test]
fn region_read_and_write_of_count_zero() {
    let (server, path, _events) = start("region-zero", ServerConfig::default());
    let mut c = connect(&path);
    let before = server.handle().stats();
    c.region_read_msg(0, 0x10, &mut []).unwrap();
    c.region_write_msg(0, 0x10, &[], false).unwrap();
    // Zero bytes at the very end of the region are in bounds.
    c.region_read_msg(0, BAR0_SIZE, &mut []).unwrap();
    let after = server.handle().stats();
    assert_eq!(after.messages, before.messages + 3);
    assert_eq!(after.errors, before.errors);
    c.close();
    stop(server);
}

#[test]
fn region_bar2_32k_in_one_message() {
    let (server, path, _events) = start("region-32k", ServerConfig::default());
    let mut c = connect(&path);
    let data = pattern(BAR2_SIZE as usize, 21);
    let before = server.handle().stats().messages;
    c.region_write_msg(2, 0, &data, false).unwrap();
    let mut back = vec![0u8; BAR2_SIZE as usize];
    c.region_read_msg(2, 0, &mut back).unwrap();
    assert_eq!(
        server.handle().stats().messages,
        before + 2,
        "one message each way"
    );
    assert!(back == data);
    let mut dev = vec![0u8; BAR2_SIZE as usize];
    server
        .device()
        .lock()
        .unwrap()
        .bar2
        .read_at(0, &mut dev)
        .unwrap();
    assert!(dev == data, "the device's memory holds the write");
    c.close();
    stop(server);
}

#[test]
fn region_access_is_chunked_by_the_servers_max_data_xfer_size() {
    let (server, path, _events) = start(
        "region-chunk",
        ServerConfig {
            max_data_xfer_size: 4096,
            ..ServerConfig::default()
        },
    );
    let mut c = connect(&path);
    assert_eq!(c.server_caps().max_data_xfer_size(), 4096);
    let data = pattern(BAR2_SIZE as usize, 33);
    let before = server.handle().stats();
    c.region_write_msg(2, 0, &data, false).unwrap();
    let mut back = vec![0u8; BAR2_SIZE as usize];
    c.region_read_msg(2, 0, &mut back).unwrap();
    let after = server.handle().stats();
    assert_eq!(
        after.messages,
        before.messages + 16,
        "8 writes and 8 reads of 4 KiB"
    );
    assert_eq!(after.errors, before.errors);
    assert!(back == data);
    c.close();
    stop(server);
}

#[test]
fn region_access_out_of_bounds_is_refused() {
    let (server, path, _events) = start(
        "region-oob",
        ServerConfig {
            max_data_xfer_size: 4096,
            ..ServerConfig::default()
        },
    );
    let mut c = connect(&path);
    // The client checks before sending...
    assert!(matches!(
        c.read_u64(0, BAR0_SIZE - 4),
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(c.write_u32(1, 0, 1), Err(ClientError::Invalid(_))));
    // ...and the server checks what arrives anyway.
    let mut b = [0u8; 8];
    assert_eq!(
        server_errno(c.region_read_msg(0, BAR0_SIZE - 4, &mut b)),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.region_write_msg(0, u64::MAX - 3, &b, false)),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.region_read_msg(1, 0, &mut b)),
        Errno::INVAL,
        "absent region"
    );
    assert_eq!(
        server_errno(c.region_read_msg(9, 0, &mut b)),
        Errno::INVAL,
        "no region 9"
    );
    // The connection goes on.
    c.write_u32(0, 0x10, 5).unwrap();
    assert_eq!(c.read_u32(0, 0x10).unwrap(), 5);
    c.close();
    stop(server);
}

#[test]
fn posted_writes_are_applied_in_order_before_a_read() {
    let (server, path, _events) = start("region-posted", ServerConfig::default());
    let mut c = connect(&path);
    for i in 0..100u64 {
        c.region_write_msg(0, 0x40 + (i % 4) * 8, &i.to_ne_bytes(), true)
            .unwrap();
    }
    // The last write to each of the four registers wins; the read's reply is the next message.
    for r in 0..4u64 {
        assert_eq!(c.read_u64(0, 0x40 + r * 8).unwrap(), 96 + r);
    }
    // A posted write whose side effect is a DMA (fd-less) interleaves correctly too.
    let buf = c.alloc_dma(0x70_0000, 0x2000, false).unwrap();
    buf.write(0, &[9; 32]).unwrap();
    c.region_write_msg(0, REG_DMA_IOVA, &0x70_0000u64.to_ne_bytes(), true)
        .unwrap();
    c.region_write_msg(0, REG_DMA_LEN, &32u64.to_ne_bytes(), true)
        .unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_copied_plus_one(&buf, &[9; 32]);
    // A posted write that fails gets no reply and does not disturb the next request.
    let before = server.handle().stats().errors;
    c.region_write_msg(0, BAR0_SIZE, &[1], true).unwrap();
    assert_eq!(c.read_u64(0, 0x40).unwrap(), 96);
    assert_eq!(server.handle().stats().errors, before + 1);
    c.close();
    stop(server);
}

// ----- DEVICE_RESET ---------------------------------------------------------------------------------

#[test]
fn device_reset_zeroes_bar0() {
    let (server, path, events) = start("reset", ServerConfig::default());
    let mut c = connect(&path);
    c.write_u64(0, 0x10, u64::MAX).unwrap();
    c.write_u32(0, 0xffc, 0x55aa).unwrap();
    assert_eq!(events.resets.load(Ordering::SeqCst), 0);
    c.reset().unwrap();
    assert_eq!(events.resets.load(Ordering::SeqCst), 1);
    assert_eq!(c.read_u64(0, 0x10).unwrap(), 0);
    assert_eq!(c.read_u32(0, 0xffc).unwrap(), 0);
    assert!(server.device().lock().unwrap().bar0.iter().all(|&b| b == 0));
    c.reset().unwrap();
    assert_eq!(events.resets.load(Ordering::SeqCst), 2);
    c.close();
    stop(server);
}

// ----- REGION_WRITE_MULTI ---------------------------------------------------------------------------

#[test]
fn region_write_multi_applies_every_entry() {
    let (server, path, _events) = start("write-multi", ServerConfig::default());
    let mut c = connect(&path);
    let before = server.handle().stats().messages;
    c.region_write_multi(&[
        (0, 0x20, &0xdead_beefu32.to_ne_bytes()),
        (0, 0x28, &0x1122_3344_5566_7788u64.to_ne_bytes()),
        (0, 0x31, &[0xab]),
    ])
    .unwrap();
    assert_eq!(
        server.handle().stats().messages,
        before + 1,
        "one message for all three"
    );
    assert_eq!(c.read_u32(0, 0x20).unwrap(), 0xdead_beef);
    assert_eq!(c.read_u64(0, 0x28).unwrap(), 0x1122_3344_5566_7788);
    let mut b = [0u8; 3];
    c.region_read(0, 0x30, &mut b).unwrap();
    assert_eq!(b, [0, 0xab, 0], "a 1-byte entry writes exactly one byte");

    // An entry's side effects happen as for REGION_WRITE (REG_IRQ fires a vector).
    let fds = c.enable_irqs(MSIX, 4).unwrap();
    c.region_write_multi(&[(0, 0x40, &[1; 8]), (0, REG_IRQ, &2u32.to_ne_bytes())])
        .unwrap();
    assert_eq!(all_eventfds(&fds), vec![0, 0, 1, 0]);

    // One bad entry refuses the whole message before any write.
    let bad = c.region_write_multi(&[(0, 0x50, &[7; 8]), (0, BAR0_SIZE - 2, &[1; 4])]);
    assert_eq!(server_errno(bad), Errno::INVAL);
    assert_eq!(c.read_u64(0, 0x50).unwrap(), 0);
    // Entry sizes are 1..=8.
    assert!(matches!(
        c.region_write_multi(&[(0, 0, &[0; 9])]),
        Err(ClientError::Invalid(_))
    ));
    c.close();
    stop(server);
}

// ----- DEVICE_FEATURE -------------------------------------------------------------------------------

#[test]
fn device_feature_migration() {
    let (server, path, _events) = start("feature", ServerConfig::default());
    let mut c = connect(&path);
    let probe = vfio::VFIO_DEVICE_FEATURE_PROBE;
    let get = vfio::VFIO_DEVICE_FEATURE_GET;
    let set = vfio::VFIO_DEVICE_FEATURE_SET;
    let mig = vfio::VFIO_DEVICE_FEATURE_MIGRATION;
    let state = vfio::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;

    let (flags, data) = c.device_feature(probe | get | mig, &[]).unwrap();
    assert_eq!(flags, probe | get | mig);
    assert!(data.is_empty());

    let (_, data) = c.device_feature(get | mig, &[]).unwrap();
    assert_eq!(
        data,
        u64::from(vfio::VFIO_MIGRATION_STOP_COPY)
            .to_ne_bytes()
            .to_vec()
    );

    let (_, data) = c.device_feature(get | state, &[]).unwrap();
    assert_eq!(data[..4], wire::mig_state::RUNNING.to_ne_bytes());

    let mut req = wire::mig_state::STOP.to_ne_bytes().to_vec();
    req.extend_from_slice(&(-1i32).to_ne_bytes());
    c.device_feature(set | state, &req).unwrap();
    assert_eq!(
        server.device().lock().unwrap().mig_state,
        wire::mig_state::STOP
    );
    let (_, data) = c.device_feature(get | state, &[]).unwrap();
    assert_eq!(data.len(), 8);
    assert_eq!(data[..4], wire::mig_state::STOP.to_ne_bytes());

    // The device refuses: SET of MIGRATION, an invalid state; unknown feature: NOTSUP.
    assert_eq!(
        server_errno(c.device_feature(set | mig, &[0; 8])),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.device_feature(set | state, &99u32.to_ne_bytes())),
        Errno::INVAL
    );
    assert_eq!(
        server_errno(c.device_feature(get | 0x3ff, &[])),
        Errno::NOTSUP
    );
    assert_eq!(
        server_errno(c.device_feature(probe | 0x3ff, &[])),
        Errno::NOTSUP
    );
    // Bad flags (GET and SET together, or none of GET/SET/PROBE) never reach the device.
    assert_eq!(
        server_errno(c.device_feature(get | set | state, &[0; 8])),
        Errno::INVAL
    );
    assert_eq!(server_errno(c.device_feature(state, &[])), Errno::INVAL);
    assert_eq!(
        server.device().lock().unwrap().mig_state,
        wire::mig_state::STOP
    );
    c.close();
    stop(server);
}

// ----- MIG_DATA_READ / MIG_DATA_WRITE ---------------------------------------------------------------

#[test]
fn mig_data_read_write_round_trip() {
    let (server, path, _events) = start("mig-data", ServerConfig::default());
    let mut c = connect(&path);
    assert_eq!(c.mig_data_read(9).unwrap(), b"migration");
    assert_eq!(
        c.mig_data_read(1000).unwrap(),
        b"-state-blob",
        "a short read ends the stream"
    );
    assert_eq!(c.mig_data_read(16).unwrap(), b"");

    let blob = pattern(3000, 1);
    c.mig_data_write(&blob[..1000]).unwrap();
    c.mig_data_write(&blob[1000..]).unwrap();
    assert_eq!(server.device().lock().unwrap().mig, blob);
    let mut back = Vec::new();
    for _ in 0..10 {
        let part = c.mig_data_read(512).unwrap();
        assert!(part.len() <= 512);
        if part.is_empty() {
            break;
        }
        back.extend_from_slice(&part);
    }
    assert_eq!(back, blob);

    // More than max_data_xfer_size at once is refused.
    assert_eq!(
        server_errno(c.mig_data_read((2 << 20) as u32)),
        Errno::INVAL
    );
    c.close();
    stop(server);
}

// ----- connection life cycle ------------------------------------------------------------------------

#[test]
fn second_client_after_disconnect_sees_device_state() {
    let (server, path, events) = start("two-clients", ServerConfig::default());
    let ctx = server.context();
    let mut a = connect(&path);
    a.write_u64(0, 0x10, 0xfeed_f00d).unwrap();
    a.map_region(2).unwrap();
    a.write_u32(2, 0x2000, 0x1234).unwrap();
    let _fd_map = a.alloc_dma(0x10_0000, 0x2000, true).unwrap();
    let _msg_map = a.alloc_dma(0x20_0000, 0x1000, false).unwrap();
    let _irqs = a.enable_irqs(MSIX, 4).unwrap();
    assert_eq!(ctx.dma.len(), 2);
    assert!(ctx.dma.has_remote());
    a.close();

    assert!(
        wait_for(|| events.disconnected.load(Ordering::SeqCst) == 1),
        "the device heard the client leave"
    );
    let mut gone = unmapped_iovas(&events);
    gone.sort_unstable();
    assert_eq!(
        gone,
        vec![(0x10_0000, 0x2000), (0x20_0000, 0x1000)],
        "the client's maps were removed"
    );
    assert!(ctx.dma.is_empty());
    assert!(!ctx.dma.has_remote());
    for v in 0..4 {
        assert!(
            !ctx.irqs.state(MSIX, v).unwrap().has_eventfd,
            "IRQ fd {v} dropped"
        );
    }
    assert_eq!(events.resets.load(Ordering::SeqCst), 0);

    let mut b = connect(&path);
    assert!(wait_for(|| events.connected.load(Ordering::SeqCst) == 2));
    assert_eq!(
        b.read_u64(0, 0x10).unwrap(),
        0xfeed_f00d,
        "device state survives the client"
    );
    assert_eq!(b.read_u32(2, 0x2000).unwrap(), 0x1234);
    // The new client starts without maps or IRQs and can set up its own.
    device_dma(&mut b, 0x10_0000, 8).unwrap();
    assert_eq!(b.read_u64(0, REG_DMA_ERRORS).unwrap(), 1);
    assert_eq!(server_errno(b.write_u32(0, REG_IRQ, 0)), Errno::NOENT);
    let buf = b.alloc_dma(0x10_0000, 0x2000, true).unwrap();
    buf.write(0, &[4; 8]).unwrap();
    device_dma(&mut b, 0x10_0000, 8).unwrap();
    assert_copied_plus_one(&buf, &[4; 8]);
    b.close();
    assert!(wait_for(|| events.disconnected.load(Ordering::SeqCst) == 2));
    assert_eq!(server.handle().stats().clients, 2);
    stop(server);
}

#[test]
fn second_client_waits_while_the_first_is_connected() {
    let (server, path, events) = start("waiting-client", ServerConfig::default());
    let mut a = connect(&path);
    a.write_u32(0, 0x10, 77).unwrap();

    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    let waiter = std::thread::spawn(move || {
        let r = Client::connect(&p).and_then(|mut b| {
            let v = b.read_u32(0, 0x10)?;
            b.close();
            Ok(v)
        });
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });

    // While the first client is connected, the second one is not served.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "second client served too early"
    );
    assert_eq!(events.connected.load(Ordering::SeqCst), 1);
    a.write_u32(0, 0x10, 78).unwrap();
    assert_eq!(
        a.read_u32(0, 0x10).unwrap(),
        78,
        "the first client is still served"
    );
    a.close();

    let got = rx
        .recv_timeout(WAIT)
        .expect("the second client is served after the first leaves");
    assert_eq!(got, Ok(78));
    waiter.join().unwrap();
    assert_eq!(events.connected.load(Ordering::SeqCst), 2);
    stop(server);
}

#[test]
fn server_stats_count_messages_and_errors() {
    let (server, path, _events) = start("stats", ServerConfig::default());
    let handle = server.handle();
    assert_eq!(handle.stats(), Default::default());
    let mut c = connect(&path);
    let s0 = handle.stats();
    assert_eq!(s0.clients, 1);
    assert!(s0.connected);
    // VERSION + DEVICE_GET_INFO + 9 region infos (BAR2 takes a second try for its caps).
    assert_eq!(s0.messages, 12);
    assert_eq!(s0.errors, 0);

    c.read_u32(0, 0).unwrap();
    c.get_device_info().unwrap();
    let _ = c.get_irq_info(5).unwrap_err();
    let _ = c.region_read_msg(3, 0, &mut [0; 4]).unwrap_err();
    let s1 = handle.stats();
    assert_eq!(s1.messages, s0.messages + 4);
    assert_eq!(s1.errors, s0.errors + 2);
    assert_eq!(s1.dma_requests, 0);

    let buf = c.alloc_dma(0x10_0000, 0x2000, false).unwrap();
    buf.write(0, &[1; 4]).unwrap();
    device_dma(&mut c, 0x10_0000, 4).unwrap();
    let s2 = handle.stats();
    assert_eq!(
        s2.messages,
        s1.messages + 3,
        "DMA_MAP and two REGION_WRITEs (replies to DMA are not counted as requests)"
    );
    assert_eq!(s2.dma_requests, 2);

    c.close();
    assert!(wait_for(|| !handle.stats().connected));
    assert_eq!(handle.stats().clients, 1);
    stop(server);
}

#[test]
fn socket_file_mode_and_bind_conflicts() {
    let (server, path, _events) = start("bind", ServerConfig::default());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A live server's path is not taken over.
    match Server::bind(&path, TestDevice::new(), ServerConfig::default()) {
        Err(ServerBindError::InUse(p)) => assert_eq!(p, path),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(path.exists());
    let mut c = connect(&path);
    c.write_u32(0, 0x10, 9).unwrap();
    assert_eq!(
        c.read_u32(0, 0x10).unwrap(),
        9,
        "the first server still serves its path"
    );
    c.close();
    stop(server);
    assert!(!path.exists(), "stopping removes the socket file");

    // A stale socket (nobody listening) is replaced.
    let stale = common::sock_path("stale");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let dev = TestDevice::new();
    let events = dev.events.clone();
    let server = Server::bind(&stale, dev, ServerConfig::default())
        .expect("stale socket replaced")
        .spawn()
        .unwrap();
    assert_eq!(
        std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = connect(&stale);
    c.write_u32(0, 0x10, 10).unwrap();
    assert_eq!(c.read_u32(0, 0x10).unwrap(), 10);
    c.close();
    assert!(wait_for(|| events.disconnected.load(Ordering::SeqCst) == 1));
    stop(server);

    // Something that is not a socket is left alone.
    let file = common::sock_path("plain");
    std::fs::write(&file, b"keep me").unwrap();
    match Server::bind(&file, TestDevice::new(), ServerConfig::default()) {
        Err(ServerBindError::NotASocket(p)) => assert_eq!(p, file),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

// ----- DMA details: file offsets, access rights, spanning, device threads ---------------------------

#[test]
fn dma_map_honours_file_offset_and_access_rights() {
    let (server, path, _events) = start("dma-offset", ServerConfig::default());
    let mut c = connect(&path);
    // A memfd mapped from file offset 0x1000: IOVA 0x10_0000 is byte 0x1000 of the file.
    let (mem, fd) = emudev_dma::SharedMemory::memfd("offset-test", 0x4000).unwrap();
    c.dma_map(0x10_0000, 0x3000, DmaProt::RW, Some((fd.as_fd(), 0x1000)))
        .unwrap();
    mem.write_at(0x1000, &[0x10, 0x20, 0x30]).unwrap();
    mem.write_at(0, &[0xee; 3]).unwrap();
    device_dma(&mut c, 0x10_0000, 3).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    let mut out = [0u8; 3];
    mem.read_at(0x2000, &mut out).unwrap();
    assert_eq!(
        out,
        [0x11, 0x21, 0x31],
        "the device wrote at file offset 0x1000 + 0x1000"
    );

    // A read-only map: the device may read it but its write back fails.
    let (ro, ro_fd) = emudev_dma::SharedMemory::memfd("ro-test", 0x2000).unwrap();
    c.dma_map(0x20_0000, 0x2000, DmaProt::READ, Some((ro_fd.as_fd(), 0)))
        .unwrap();
    ro.write_at(0, &[5; 8]).unwrap();
    device_dma(&mut c, 0x20_0000, 8).unwrap();
    assert_eq!(
        c.read_u64(0, REG_DMA_ERRORS).unwrap(),
        1,
        "write to a read-only map refused"
    );
    let mut out = [0u8; 8];
    ro.read_at(0x1000, &mut out).unwrap();
    assert_eq!(out, [0; 8]);
    let mut readable = [0u8; 8];
    server
        .context()
        .dma
        .read(Iova(0x20_0000), &mut readable)
        .unwrap();
    assert_eq!(readable, [5; 8]);
    c.close();
    stop(server);
}

#[test]
fn dma_spanning_an_fd_map_and_an_fd_less_map() {
    let (server, path, _events) = start("dma-span", ServerConfig::default());
    let mut c = connect(&path);
    let a = c.alloc_dma(0x10_0000, 0x1000, true).unwrap();
    let b = c.alloc_dma(0x10_1000, 0x2000, false).unwrap();
    let src = pattern(0x1000, 17);
    a.write(0x800, &src[..0x800]).unwrap();
    b.write(0, &src[0x800..]).unwrap();
    // Reads 0x10_0800..0x10_1800 (half each), writes 0x10_1800..0x10_2800 (all fd-less).
    device_dma(&mut c, 0x10_0800, 0x1000).unwrap();
    assert_eq!(c.read_u64(0, REG_DMA_DONE).unwrap(), 1);
    assert_eq!(c.read_u64(0, REG_DMA_ERRORS).unwrap(), 0);
    let mut out = vec![0u8; 0x1000];
    b.read(0x800, &mut out).unwrap();
    let expect: Vec<u8> = src.iter().map(|x| x + 1).collect();
    assert!(out == expect);
    assert_eq!(
        c.served_inline(),
        2,
        "only the fd-less half went by message"
    );
    c.close();
    stop(server);
}

#[test]
fn dma_map_failure_leaves_client_memory_free() {
    let (server, path, _events) = start("dma-fail", ServerConfig::default());
    let mut c = connect(&path);
    assert_eq!(
        server_errno(c.alloc_dma(0x80_0800, 0x1000, false)),
        Errno::INVAL
    );
    // The failed allocation was forgotten: the same IOVA range can be used.
    let buf = c.alloc_dma(0x80_0000, 0x2000, false).unwrap();
    buf.write(0, &[1, 2]).unwrap();
    device_dma(&mut c, 0x80_0000, 2).unwrap();
    assert_copied_plus_one(&buf, &[1, 2]);
    c.close();
    stop(server);
}

#[test]
fn device_thread_dma_over_the_twin_socket_needs_no_client_request() {
    let (server, path, _events) = start("dma-thread-twin", ServerConfig::default());
    let mut c = connect_twin(&path);
    let buf = c.alloc_dma(0x10_0000, 0x2000, false).unwrap();
    buf.write(0x10, b"client memory").unwrap();
    let ctx = server.context();
    // Another thread than the server's, while the client sends nothing.
    let worker = std::thread::spawn(move || {
        let mut got = [0u8; 13];
        ctx.dma
            .read(Iova(0x10_0010), &mut got)
            .map(|()| got)
            .map_err(|e| e.to_string())?;
        ctx.dma
            .write(Iova(0x10_1000), b"device wrote")
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(got)
    });
    let got = worker.join().unwrap().expect("worker DMA");
    assert_eq!(&got, b"client memory");
    let mut out = [0u8; 12];
    buf.read(0x1000, &mut out).unwrap();
    assert_eq!(&out, b"device wrote");
    assert_eq!(c.served_inline(), 0);
    c.close();
    stop(server);
}

#[test]
fn device_thread_dma_over_the_main_socket_is_served_while_the_client_waits() {
    let (server, path, _events) = start("dma-thread-main", ServerConfig::default());
    let mut c = connect(&path);
    let buf = c.alloc_dma(0x10_0000, 0x2000, false).unwrap();
    buf.write(0, &[0x5a; 64]).unwrap();
    let ctx = server.context();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut got = [0u8; 64];
        let r = ctx
            .dma
            .read(Iova(0x10_0000), &mut got)
            .and_then(|()| ctx.dma.write(Iova(0x10_1000), &[0xa5; 64]));
        let _ = tx.send(r.map(|()| got).map_err(|e| e.to_string()));
    });
    // The client serves server→client requests only while it waits for a reply: keep asking.
    let deadline = Instant::now() + WAIT;
    let result = loop {
        c.read_u32(0, 0).unwrap();
        if let Ok(r) = rx.try_recv() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's DMA was never served"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    worker.join().unwrap();
    assert_eq!(result.expect("worker DMA"), [0x5a; 64]);
    let mut out = [0u8; 64];
    buf.read(0x1000, &mut out).unwrap();
    assert_eq!(out, [0xa5; 64]);
    assert_eq!(c.served_inline(), 2);
    c.close();
    stop(server);
}

/// A hand-rolled client that negotiates a twin socket and then never answers on it: the
/// server's DMA must give up after `dma_timeout`, as it does on the main socket.
#[test]
fn twin_socket_dma_times_out_when_the_client_does_not_answer() {
    use emudev_vfio_user::transport::{MessageSocket, RecvLimits};
    use emudev_vfio_user::wire::{
        Capabilities, Command, DmaMap, Header, MessageBuilder, RegionAccess, TwinSocketCap, Version,
    };

    let cfg = ServerConfig {
        dma_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (server, path, _events) = start("twin-timeout", cfg);
    let sock = MessageSocket::new(std::os::unix::net::UnixStream::connect(&path).unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let limits = RecvLimits {
        max_msg_size: 1 << 21,
        max_fds: 8,
    };
    let exchange = |id: u16, cmd: Command, build: &dyn Fn(&mut MessageBuilder)| {
        let mut b = MessageBuilder::command(id, cmd);
        build(&mut b);
        sock.send(&b.finish(), &[]).map_err(|e| e.to_string())?;
        let m = sock.recv(limits).map_err(|e| e.to_string())?.ok_or("EOF")?;
        let h = Header::decode(&m.bytes).map_err(|e| e.to_string())?;
        Ok::<_, String>((h, m.fds))
    };

    let caps = Capabilities {
        twin_socket: Some(TwinSocketCap {
            supported: true,
            fd_index: None,
        }),
        ..Capabilities::default()
    };
    let (h, mut fds) = exchange(0, Command::Version, &|b| {
        Version {
            major: 0,
            minor: 0,
            caps: Some(caps.clone()),
        }
        .encode(b)
    })
    .unwrap();
    assert!(!h.is_error());
    assert_eq!(fds.len(), 1, "the twin socket came with the reply");
    let twin = fds.remove(0);
    let (h, _) = exchange(1, Command::DmaMap, &|b| {
        DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags: DmaProt::RW.bits(),
            offset: 0,
            address: 0x10_0000,
            size: 0x2000,
        }
        .encode(b)
    })
    .unwrap();
    assert!(!h.is_error());
    let write = |id: u16, reg: u64, v: u64| {
        exchange(id, Command::RegionWrite, &|b| {
            RegionAccess {
                offset: reg,
                region: 0,
                count: 8,
            }
            .encode(b);
            b.bytes(&v.to_ne_bytes());
        })
    };
    write(2, REG_DMA_IOVA, 0x10_0000).unwrap();
    // The device's DMA goes to the twin socket, which nobody reads.
    let started = Instant::now();
    let r = write(3, REG_DMA_LEN, 8);
    let waited = started.elapsed();
    // Release the server whatever happened, so the test ends.
    drop(twin);
    let (h, _) = r.expect(
        "the REGION_WRITE is answered once the DMA times out (server stuck on the twin socket)",
    );
    assert!(!h.is_error());
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    let device = server.device();
    let errors = u64::from_ne_bytes(
        device.lock().unwrap().bar0[REG_DMA_ERRORS as usize..][..8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(errors, 1, "the DMA failed");
    drop(sock);
    stop(server);
}

#[test]
fn server_stop_disconnects_the_client() {
    let (server, path, events) = start("stop", ServerConfig::default());
    let mut c = connect(&path);
    let _buf = c.alloc_dma(0x10_0000, 0x1000, true).unwrap();
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        let _ = tx.send(server.stop().map_err(|e| e.to_string()));
    });
    rx.recv_timeout(WAIT)
        .expect("stop returns while a client is connected")
        .unwrap();
    stopper.join().unwrap();
    assert_eq!(events.disconnected.load(Ordering::SeqCst), 1);
    assert_eq!(unmapped_iovas(&events), vec![(0x10_0000, 0x1000)]);
    assert!(!path.exists());
    assert!(matches!(
        c.read_u32(0, 0),
        Err(ClientError::Transport { .. })
    ));
}

/// The server must not send more fds than the client said it can take (`max_msg_fds`): it
/// already refuses GET_REGION_IO_FDS then; a region's mmap fd must be left out likewise.
#[test]
fn client_taking_no_fds_still_gets_region_info() {
    let (server, path, _events) = start("no-fds", ServerConfig::default());
    let r = Client::connect_with(
        &path,
        ClientConfig {
            max_msg_fds: 0,
            ..ClientConfig::default()
        },
    );
    let mut c =
        r.expect("a client with max_msg_fds 0 can connect (server sent an fd it cannot take)");
    let bar2 = c.region(2).unwrap().clone();
    assert!(!bar2.has_fd && !bar2.mappable());
    assert_eq!(bar2.size, BAR2_SIZE);
    assert_eq!(c.map_region(2).unwrap(), 0);
    c.write_u32(2, 0x2000, 0x77).unwrap();
    assert_eq!(c.read_u32(2, 0x2000).unwrap(), 0x77);
    assert_eq!(server_errno(c.get_region_io_fds(0)), Errno::INVAL);
    c.close();
    stop(server);
}
