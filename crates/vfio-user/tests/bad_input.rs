//! Bad-input conformance suite for the vfio-user server.
//!
//! Every case sends a raw message (built with [`MessageBuilder`], or raw bytes for malformed
//! headers) over a real `AF_UNIX` stream to a running server with the shared test device
//! (`common`), and checks two things:
//!
//! 1. the answer is an error reply: Reply type, ERROR flag, header only, `msg_id` and `command`
//!    echoed, and the expected errno (EINVAL unless the spec or libvfio-user's checklist says
//!    otherwise: ENOENT for an unmap of something never mapped, EEXIST for an overlapping map,
//!    ENOSPC for a map above the size limit);
//! 2. the connection still serves a valid request afterwards (a REGION_READ of BAR0), except
//!    where the server must close (a `msg_size` above the limit, a VERSION with major != 0):
//!    there the error reply is followed by EOF and a new client is served.
//!
//! The tables collect every failing case before failing, so one run lists all deviations.
//! Resource checks (fd counts, DMA and IRQ tables after disconnects) run with the other tests
//! of this file held off, since `/proc/self/fd` counts the whole process.

mod common;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use emudev_dma::Iova;
use emudev_vfio_user::client::{Client, ClientConfig};
use emudev_vfio_user::server::{RunningServer, ServerConfig};
use emudev_vfio_user::transport::{MessageSocket, RawMessage, RecvError, RecvLimits};
use emudev_vfio_user::wire::{self, Command, Header, MessageBuilder};
use emudev_vfio_user::Errno;
use rustix::event::{eventfd, EventfdFlags};
use vfio_bindings::bindings::vfio;

use common::{Events, TestDevice};

/// Every blocking wait in this file is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What the test side accepts from the server.
const LIMITS: RecvLimits = RecvLimits {
    max_msg_size: 4 << 20,
    max_fds: 16,
};
/// The server's default `max_data_xfer_size`.
const MAX_XFER: u32 = 1 << 20;
/// The server's largest accepted message: a REGION_WRITE of `MAX_XFER` bytes.
const MAX_MSG: u32 = MAX_XFER + 16 + 16;

const EINVAL: Errno = Errno::INVAL;
const ENOENT: Errno = Errno::NOENT;
const EEXIST: Errno = Errno::EXIST;
const ENOSPC: Errno = Errno::NOSPC;

// Commands as wire numbers (raw messages may carry any u16).
const VERSION: u16 = Command::Version as u16;
const DMA_MAP: u16 = Command::DmaMap as u16;
const DMA_UNMAP: u16 = Command::DmaUnmap as u16;
const GET_INFO: u16 = Command::DeviceGetInfo as u16;
const REGION_INFO: u16 = Command::DeviceGetRegionInfo as u16;
const IO_FDS: u16 = Command::DeviceGetRegionIoFds as u16;
const IRQ_INFO: u16 = Command::DeviceGetIrqInfo as u16;
const SET_IRQS: u16 = Command::DeviceSetIrqs as u16;
const REGION_READ: u16 = Command::RegionRead as u16;
const REGION_WRITE: u16 = Command::RegionWrite as u16;
const RESET: u16 = Command::DeviceReset as u16;
const WRITE_MULTI: u16 = Command::RegionWriteMulti as u16;
const FEATURE: u16 = Command::DeviceFeature as u16;
const MIG_READ: u16 = Command::MigDataRead as u16;
const MIG_WRITE: u16 = Command::MigDataWrite as u16;

// SET_IRQS flags.
const NONE: u32 = vfio::VFIO_IRQ_SET_DATA_NONE;
const BOOL: u32 = vfio::VFIO_IRQ_SET_DATA_BOOL;
const EVENTFD: u32 = vfio::VFIO_IRQ_SET_DATA_EVENTFD;
const MASK: u32 = vfio::VFIO_IRQ_SET_ACTION_MASK;
const UNMASK: u32 = vfio::VFIO_IRQ_SET_ACTION_UNMASK;
const TRIGGER: u32 = vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
const MSIX: u32 = emudev_vfio_user::irq::MSIX;
const ERR: u32 = emudev_vfio_user::irq::ERR;
const REQ: u32 = emudev_vfio_user::irq::REQ;

/// The DMA map every DMA table case starts from (no fd: reached by message).
const MAP_IOVA: u64 = 0x10_0000;
const MAP_SIZE: u64 = 0x4000;

// ----- serialisation --------------------------------------------------------------------------

/// Tests that count this process's fds run alone; every other test holds a shared guard.
static SERIAL: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERIAL.write().unwrap_or_else(|p| p.into_inner())
}

/// Polls `cond` until it holds or `TIMEOUT` passes; `what` describes the last state seen.
fn wait_for(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match cond() {
            Ok(()) => return,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {state}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

// ----- message builders -----------------------------------------------------------------------

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A whole message with explicit header flags.
fn message(id: u16, cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = MessageBuilder::with_flags(id, cmd, flags);
    b.bytes(payload);
    b.finish()
}

/// A header with an arbitrary `msg_size` (which may disagree with what follows).
fn header(id: u16, cmd: u16, msg_size: u32, flags: u32) -> Vec<u8> {
    let mut out = vec![0u8; wire::HEADER_SIZE];
    Header {
        msg_id: id,
        command: cmd,
        msg_size,
        flags,
        error_no: 0,
    }
    .encode(&mut out);
    out
}

/// VERSION payload: major, minor, then `json` exactly as given (NUL included or not).
fn version(major: u16, minor: u16, json: &[u8]) -> Vec<u8> {
    cat(&[&major.to_ne_bytes(), &minor.to_ne_bytes(), json])
}

/// VERSION payload with a NUL-terminated JSON text.
fn version_json(json: &str) -> Vec<u8> {
    version(0, 0, &cat(&[json.as_bytes(), &[0]]))
}

/// REGION_READ/WRITE head.
fn access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    cat(&[
        &offset.to_ne_bytes(),
        &region.to_ne_bytes(),
        &count.to_ne_bytes(),
    ])
}

fn dma_map(argsz: u32, flags: u32, offset: u64, iova: u64, size: u64) -> Vec<u8> {
    cat(&[
        &argsz.to_ne_bytes(),
        &flags.to_ne_bytes(),
        &offset.to_ne_bytes(),
        &iova.to_ne_bytes(),
        &size.to_ne_bytes(),
    ])
}

fn dma_unmap(argsz: u32, flags: u32, iova: u64, size: u64) -> Vec<u8> {
    cat(&[
        &argsz.to_ne_bytes(),
        &flags.to_ne_bytes(),
        &iova.to_ne_bytes(),
        &size.to_ne_bytes(),
    ])
}

const RW: u32 = wire::DMA_MAP_FLAG_READ | wire::DMA_MAP_FLAG_WRITE;

/// SET_IRQS with argsz = the payload size.
fn set_irqs(flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    set_irqs_argsz((20 + data.len()) as u32, flags, index, start, count, data)
}

fn set_irqs_argsz(
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: &[u8],
) -> Vec<u8> {
    cat(&[&u32s(&[argsz, flags, index, start, count]), data])
}

/// One REGION_WRITE_MULTI entry.
fn multi_entry(offset: u64, region: u32, count: u32, data: [u8; 8]) -> Vec<u8> {
    cat(&[
        &offset.to_ne_bytes(),
        &region.to_ne_bytes(),
        &count.to_ne_bytes(),
        &data,
    ])
}

fn write_multi(wr_cnt: u64, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut p = wr_cnt.to_ne_bytes().to_vec();
    for e in entries {
        p.extend_from_slice(e);
    }
    p
}

// ----- fds ------------------------------------------------------------------------------------

/// Fds a case attaches to its message.
#[derive(Clone, Copy, Debug)]
enum Fds {
    None,
    /// n eventfds.
    Eventfds(usize),
    /// n memfds of the given size.
    Memfds(usize, u64),
}

fn new_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

fn new_memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("bad-input", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    fd
}

impl Fds {
    fn make(self) -> Vec<OwnedFd> {
        match self {
            Fds::None => Vec::new(),
            Fds::Eventfds(n) => (0..n).map(|_| new_eventfd()).collect(),
            Fds::Memfds(n, size) => (0..n).map(|_| new_memfd(size)).collect(),
        }
    }
}

fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

// ----- a raw connection -----------------------------------------------------------------------

/// A client socket that sends whatever bytes it is given, with 5 s timeouts.
struct Raw {
    sock: MessageSocket,
    next_id: u16,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect to the server");
        s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        Raw {
            sock: MessageSocket::new(s),
            next_id: 0x4000,
        }
    }

    /// Connects and negotiates with the given VERSION payload.
    fn negotiated_with(path: &Path, payload: &[u8]) -> Raw {
        let mut r = Raw::connect(path);
        r.negotiate(payload);
        r
    }

    /// Connects and negotiates with `{}`.
    fn negotiated(path: &Path) -> Raw {
        Self::negotiated_with(path, &version_json("{}"))
    }

    fn negotiate(&mut self, payload: &[u8]) {
        if let Err(e) = self.try_negotiate(payload) {
            panic!("VERSION refused: {e}");
        }
    }

    fn try_negotiate(&mut self, payload: &[u8]) -> Result<(), String> {
        let id = self.id();
        self.send(&message(id, VERSION, 0, payload), &[]);
        check_ok(&self.try_recv()?, id, VERSION)
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        self.sock.send(bytes, fds).expect("send to the server");
    }

    /// The next message from the server, or why there is none.
    fn try_recv(&self) -> Result<RawMessage, String> {
        match self.sock.recv(LIMITS) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the server closed the connection".into()),
            Err(RecvError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(format!("no message from the server within {TIMEOUT:?}"))
            }
            Err(e) => Err(format!("receive failed: {e}")),
        }
    }

    fn recv(&self) -> RawMessage {
        self.try_recv().unwrap_or_else(|e| panic!("{e}"))
    }

    fn exchange(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> RawMessage {
        self.send(bytes, fds);
        self.recv()
    }

    /// The server closed the connection: EOF, or ECONNRESET when it left unread bytes behind.
    fn expect_closed(&self) -> Result<(), String> {
        match self.sock.recv(LIMITS) {
            Ok(None) => Ok(()),
            Err(RecvError::Io(e)) if e.raw_os_error() == Some(Errno::CONNRESET.raw_os_error()) => {
                Ok(())
            }
            Ok(Some(m)) => Err(format!(
                "expected the connection to close, got a message {:?}",
                Header::decode(&m.bytes)
            )),
            Err(e) => Err(format!("expected the connection to close, got {e}")),
        }
    }

    /// A REGION_READ of BAR0 succeeds (the connection still serves requests).
    fn check_serving(&mut self) -> Result<(), String> {
        let id = self.id();
        self.send(&message(id, REGION_READ, 0, &access(0, 0, 8)), &[]);
        let reply = self.try_recv()?;
        check_ok(&reply, id, REGION_READ)?;
        if reply.bytes.len() != 16 + 16 + 8 || reply.bytes[16..32] != access(0, 0, 8)[..] {
            return Err(format!(
                "REGION_READ reply malformed: {} bytes",
                reply.bytes.len()
            ));
        }
        Ok(())
    }

    fn assert_serving(&mut self) {
        if let Err(e) = self.check_serving() {
            panic!("the connection no longer serves requests: {e}");
        }
    }

    /// Reads `count` bytes of region `index` at `offset` (must succeed).
    fn read(&mut self, index: u32, offset: u64, count: u32) -> Vec<u8> {
        let id = self.id();
        let reply = self.exchange(
            &message(id, REGION_READ, 0, &access(offset, index, count)),
            &[],
        );
        if let Err(e) = check_ok(&reply, id, REGION_READ) {
            panic!("REGION_READ {index}@{offset:#x}: {e}");
        }
        reply.bytes[32..].to_vec()
    }

    /// Sends a request that must succeed; returns the reply.
    fn ok(&mut self, cmd: u16, payload: &[u8], fds: &[BorrowedFd<'_>]) -> RawMessage {
        let id = self.id();
        let reply = self.exchange(&message(id, cmd, 0, payload), fds);
        if let Err(e) = check_ok(&reply, id, cmd) {
            panic!("command {cmd}: {e}");
        }
        reply
    }
}

/// A successful reply to `id`/`cmd`.
fn check_ok(reply: &RawMessage, id: u16, cmd: u16) -> Result<(), String> {
    let h = Header::decode(&reply.bytes).map_err(|e| e.to_string())?;
    if h.msg_id != id || h.command != cmd {
        return Err(format!(
            "reply to id {} command {}, expected id {id} command {cmd}",
            h.msg_id, h.command
        ));
    }
    if !h.is_reply() || h.is_error() {
        return Err(format!(
            "expected a successful reply, got flags {:#x} errno {}",
            h.flags, h.error_no
        ));
    }
    Ok(())
}

/// An error reply to `id`/`cmd` with `errno`: Reply type, ERROR flag, header only, no fds.
fn check_error(reply: &RawMessage, id: u16, cmd: u16, errno: Errno) -> Result<(), String> {
    let h = Header::decode(&reply.bytes).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    if h.msg_id != id {
        problems.push(format!("msg_id {} (sent {id})", h.msg_id));
    }
    if h.command != cmd {
        problems.push(format!("command {} (sent {cmd})", h.command));
    }
    if h.msg_type() != wire::FLAGS_TYPE_REPLY {
        problems.push(format!("type {:#x}, not Reply", h.msg_type()));
    }
    if !h.is_error() {
        problems.push(format!(
            "no ERROR flag (flags {:#x}): the request was accepted",
            h.flags
        ));
    } else if h.error_no != errno.raw_os_error() as u32 {
        problems.push(format!(
            "errno {} ({}), expected {} ({errno})",
            h.error_no,
            Errno::from_raw_os_error(h.error_no as i32),
            errno.raw_os_error()
        ));
    }
    if h.is_error()
        && (reply.bytes.len() != wire::HEADER_SIZE || h.msg_size as usize != wire::HEADER_SIZE)
    {
        problems.push(format!(
            "error reply of {} bytes (msg_size {}), not header-only",
            reply.bytes.len(),
            h.msg_size
        ));
    }
    if !reply.fds.is_empty() {
        problems.push(format!("{} fds attached to the reply", reply.fds.len()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ----- the table runner -----------------------------------------------------------------------

/// One bad request and the errno it must get.
#[derive(Debug)]
struct Case {
    name: String,
    cmd: u16,
    flags: u32,
    payload: Vec<u8>,
    fds: Fds,
    errno: Errno,
}

fn case(name: impl Into<String>, cmd: u16, payload: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        cmd,
        flags: wire::FLAGS_TYPE_COMMAND,
        payload,
        fds: Fds::None,
        errno: EINVAL,
    }
}

impl Case {
    fn errno(mut self, errno: Errno) -> Self {
        self.errno = errno;
        self
    }
    fn fds(mut self, fds: Fds) -> Self {
        self.fds = fds;
        self
    }
    fn flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
}

/// Runs every case on `r`: each must get its error reply, then `after` must pass (normally:
/// the connection still serves a REGION_READ). Fails once, listing every deviation.
fn run_table(
    r: &mut Raw,
    table: &str,
    cases: Vec<Case>,
    mut after: impl FnMut(&mut Raw) -> Result<(), String>,
) {
    let total = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let id = r.id();
        let bytes = message(id, c.cmd, c.flags, &c.payload);
        let fds = c.fds.make();
        r.send(&bytes, &borrow(&fds));
        drop(fds);
        let reply = match r.try_recv() {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: {e}", c.name));
                panic!(
                    "{table}: connection lost; failures so far:\n  {}",
                    failures.join("\n  ")
                );
            }
        };
        let verdict = check_error(&reply, id, c.cmd, c.errno);
        println!(
            "{table}: {:<60} -> {} {}",
            c.name,
            c.errno,
            if verdict.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", c.name));
        }
        if let Err(e) = after(r) {
            failures.push(format!("{}: afterwards: {e}", c.name));
            panic!(
                "{table}: connection broken; failures so far:\n  {}",
                failures.join("\n  ")
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{table}: {} of {total} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Like [`run_table`], but each case on a new connection (for cases that would change the
/// connection's state if wrongly accepted, such as a VERSION): a wrong answer to one case then
/// cannot hide the next.
fn run_fresh(
    path: &Path,
    table: &str,
    cases: Vec<Case>,
    mut after: impl FnMut(&mut Raw) -> Result<(), String>,
) {
    let total = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let mut r = Raw::connect(path);
        let id = r.id();
        let fds = c.fds.make();
        r.send(&message(id, c.cmd, c.flags, &c.payload), &borrow(&fds));
        drop(fds);
        let verdict = r
            .try_recv()
            .and_then(|reply| check_error(&reply, id, c.cmd, c.errno));
        println!(
            "{table}: {:<60} -> {} {}",
            c.name,
            c.errno,
            if verdict.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", c.name));
        } else if let Err(e) = after(&mut r) {
            failures.push(format!("{}: afterwards: {e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{table}: {} of {total} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

fn serving(r: &mut Raw) -> Result<(), String> {
    r.check_serving()
}

fn start(
    name: &str,
) -> (
    RunningServer<TestDevice>,
    std::path::PathBuf,
    std::sync::Arc<Events>,
) {
    common::start(name, ServerConfig::default())
}

// ----- before negotiation ---------------------------------------------------------------------

#[test]
fn first_message_must_be_version() {
    let _g = shared();
    let (server, path, events) = start("first-msg");
    let mut r = Raw::connect(&path);
    let cases = vec![
        case(
            "DEVICE_GET_INFO before VERSION",
            GET_INFO,
            u32s(&[16, 0, 0, 0]),
        ),
        case("REGION_READ before VERSION", REGION_READ, access(0, 0, 4)),
        case(
            "REGION_WRITE before VERSION",
            REGION_WRITE,
            cat(&[&access(0x40, 0, 4), &[1, 2, 3, 4]]),
        ),
        case("DEVICE_RESET before VERSION", RESET, Vec::new()),
        case(
            "DMA_MAP with a memfd before VERSION",
            DMA_MAP,
            dma_map(32, RW, 0, MAP_IOVA, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x1000)),
        case(
            "SET_IRQS eventfd before VERSION",
            SET_IRQS,
            set_irqs(EVENTFD | TRIGGER, MSIX, 0, 1, &[]),
        )
        .fds(Fds::Eventfds(1)),
        case("unknown command 19 before VERSION", 19, Vec::new()),
        case("msg_size 16 VERSION (header only)", VERSION, Vec::new()),
    ];
    // Before negotiation only the reply itself (id and command echoed) shows the stream is in sync.
    run_table(&mut r, "pre-negotiation", cases, |_| Ok(()));
    assert_eq!(
        server.context().dma.len(),
        0,
        "a DMA_MAP before VERSION was applied"
    );
    assert!(
        !server.context().irqs.state(MSIX, 0).unwrap().has_eventfd,
        "a SET_IRQS before VERSION was applied"
    );
    assert_eq!(
        server.device().lock().unwrap().bar0[0x40..0x44],
        [0; 4],
        "a REGION_WRITE before VERSION was applied"
    );
    assert_eq!(
        events.connected.load(Ordering::SeqCst),
        0,
        "client_connected ran without a VERSION"
    );
    // A VERSION without JSON is still accepted on the same connection, then requests are served.
    r.negotiate(&version(0, 0, &[]));
    r.assert_serving();
    assert_eq!(events.connected.load(Ordering::SeqCst), 1);
}

#[test]
fn version_payload_errors_keep_the_connection() {
    let _g = shared();
    let (_server, path, _events) = start("version-json");
    let j = |name: &str, json: &str| {
        case(
            format!("VERSION {name}: {json}"),
            VERSION,
            version_json(json),
        )
    };
    let cases = vec![
        case("VERSION 2-byte payload", VERSION, vec![0, 0]),
        j("malformed", "{"),
        j("malformed", "\""),
        case(
            "VERSION JSON without the NUL",
            VERSION,
            version(0, 0, b"{}"),
        ),
        case(
            "VERSION caps JSON without the NUL",
            VERSION,
            version(0, 0, br#"{"capabilities":{}}"#),
        ),
        case(
            "VERSION NUL inside the JSON",
            VERSION,
            version(0, 0, b"{}\0{}\0"),
        ),
        case(
            "VERSION JSON not UTF-8",
            VERSION,
            version(0, 0, b"{\"\xff\xfe\":1}\0"),
        ),
        j("trailing garbage", "{} x"),
        j("capabilities not an object", r#"{"capabilities":1}"#),
        j("capabilities not an object", r#"{"capabilities":"x"}"#),
        j("capabilities not an object", r#"{"capabilities":true}"#),
        j("capabilities not an object", r#"{"capabilities":[]}"#),
        j("capabilities not an object", r#"{"capabilities":[8]}"#),
        j("max_msg_fds", r#"{"capabilities":{"max_msg_fds":"foo"}}"#),
        j("max_msg_fds", r#"{"capabilities":{"max_msg_fds":-1}}"#),
        j("max_msg_fds", r#"{"capabilities":{"max_msg_fds":1025}}"#),
        j("max_msg_fds", r#"{"capabilities":{"max_msg_fds":1.5}}"#),
        j(
            "max_msg_fds",
            r#"{"capabilities":{"max_msg_fds":4294967296}}"#,
        ),
        j(
            "max_data_xfer_size",
            r#"{"capabilities":{"max_data_xfer_size":0}}"#,
        ),
        j(
            "max_data_xfer_size",
            r#"{"capabilities":{"max_data_xfer_size":-1}}"#,
        ),
        j(
            "max_data_xfer_size",
            r#"{"capabilities":{"max_data_xfer_size":"big"}}"#,
        ),
        j("max_dma_maps", r#"{"capabilities":{"max_dma_maps":-1}}"#),
        j("pgsizes", r#"{"capabilities":{"pgsizes":4095}}"#),
        j("pgsizes", r#"{"capabilities":{"pgsizes":0}}"#),
        j(
            "migration not an object",
            r#"{"capabilities":{"migration":1}}"#,
        ),
        j(
            "migration not an object",
            r#"{"capabilities":{"migration":"x"}}"#,
        ),
        j(
            "migration not an object",
            r#"{"capabilities":{"migration":[]}}"#,
        ),
        j(
            "migration.pgsize",
            r#"{"capabilities":{"migration":{"pgsize":"foo"}}}"#,
        ),
        j(
            "migration.pgsize",
            r#"{"capabilities":{"migration":{"pgsize":4095}}}"#,
        ),
        j(
            "migration.pgsize",
            r#"{"capabilities":{"migration":{"pgsize":0}}}"#,
        ),
        j(
            "twin_socket not an object",
            r#"{"capabilities":{"twin_socket":1}}"#,
        ),
        j(
            "twin_socket not an object",
            r#"{"capabilities":{"twin_socket":[true]}}"#,
        ),
        j(
            "twin_socket.supported",
            r#"{"capabilities":{"twin_socket":{"supported":"yes"}}}"#,
        ),
        j(
            "write_multiple",
            r#"{"capabilities":{"write_multiple":"yes"}}"#,
        ),
        j("write_multiple", r#"{"capabilities":{"write_multiple":1}}"#),
        case("VERSION with an fd attached", VERSION, version_json("{}")).fds(Fds::Eventfds(1)),
    ];
    // After each refusal a good VERSION is accepted on the same connection, which then serves.
    run_fresh(&path, "version", cases, |r| {
        r.try_negotiate(&version_json(r#"{"capabilities":{"max_msg_fds":8}}"#))?;
        r.check_serving()
    });
}

#[test]
fn version_with_major_not_zero_closes_the_connection() {
    let _g = shared();
    let (server, path, events) = start("version-major");
    for major in [1u16, 999, 0xffff] {
        let mut r = Raw::connect(&path);
        let id = r.id();
        let reply = r.exchange(&message(id, VERSION, 0, &version(major, 0, b"{}\0")), &[]);
        if let Err(e) = check_error(&reply, id, VERSION, EINVAL) {
            panic!("major {major}: {e}");
        }
        if let Err(e) = r.expect_closed() {
            panic!("major {major}: {e}");
        }
        // A new client is served.
        let mut next = Raw::negotiated(&path);
        next.assert_serving();
    }
    assert_eq!(
        events.connected.load(Ordering::SeqCst),
        3,
        "only the three good clients negotiated"
    );
    assert_eq!(server.handle().stats().clients, 6);
}

// ----- framing --------------------------------------------------------------------------------

#[test]
fn header_and_command_errors() {
    let _g = shared();
    let (_server, path, _events) = start("header");
    let mut r = Raw::negotiated(&path);
    let mut cases = Vec::new();
    for cmd in [0u16, 11, 12, 14, 19, 0x7fff, 0xffff] {
        cases.push(case(
            format!("unknown command {cmd}, header only"),
            cmd,
            Vec::new(),
        ));
        cases.push(case(
            format!("unknown command {cmd}, 16-byte payload"),
            cmd,
            access(0, 0, 4),
        ));
    }
    for cmd in [
        VERSION,
        DMA_MAP,
        DMA_UNMAP,
        GET_INFO,
        REGION_INFO,
        IO_FDS,
        IRQ_INFO,
        SET_IRQS,
        REGION_READ,
        REGION_WRITE,
        WRITE_MULTI,
        FEATURE,
        MIG_READ,
        MIG_WRITE,
    ] {
        cases.push(case(
            format!("msg_size 16 (no payload) for command {cmd}"),
            cmd,
            Vec::new(),
        ));
    }
    cases.extend([
        case(
            "Reply-type DEVICE_GET_INFO sent as a command",
            GET_INFO,
            u32s(&[16, 0, 0, 0]),
        )
        .flags(wire::FLAGS_TYPE_REPLY),
        case(
            "Reply-type REGION_READ sent as a command",
            REGION_READ,
            access(0, 0, 4),
        )
        .flags(wire::FLAGS_TYPE_REPLY),
        case(
            "command with the ERROR flag",
            GET_INFO,
            u32s(&[16, 0, 0, 0]),
        )
        .flags(wire::FLAGS_ERROR),
        case("message type 2", GET_INFO, u32s(&[16, 0, 0, 0])).flags(0x2),
        case("message type 0xf", GET_INFO, u32s(&[16, 0, 0, 0])).flags(0xf),
        case("VERSION a second time", VERSION, version_json("{}")),
        case("DEVICE_RESET with a payload", RESET, vec![0; 4]),
        case("DEVICE_RESET with an fd", RESET, Vec::new()).fds(Fds::Eventfds(1)),
        case("REGION_READ with an fd", REGION_READ, access(0, 0, 4)).fds(Fds::Eventfds(1)),
        case("DEVICE_GET_INFO with an fd", GET_INFO, u32s(&[16, 0, 0, 0]))
            .fds(Fds::Memfds(1, 0x1000)),
        case(
            "more fds than max_msg_fds (9 > 8)",
            SET_IRQS,
            set_irqs(EVENTFD | TRIGGER, MSIX, 0, 9, &[]),
        )
        .fds(Fds::Eventfds(9)),
    ]);
    run_table(&mut r, "header", cases, serving);
}

#[test]
fn msg_size_below_the_header_is_answered_and_the_stream_continues() {
    let _g = shared();
    let (_server, path, _events) = start("msg-size-small");
    let mut r = Raw::negotiated(&path);
    let mut failures = Vec::new();
    for size in [0u32, 1, 8, 15] {
        for cmd in [GET_INFO, REGION_READ, 19] {
            let id = r.id();
            let reply = r.exchange(&header(id, cmd, size, 0), &[]);
            if let Err(e) = check_error(&reply, id, cmd, EINVAL) {
                failures.push(format!("msg_size {size} command {cmd}: {e}"));
            }
            r.assert_serving();
        }
    }
    // Pipelined: the 16 header bytes are consumed and the next message starts right after them.
    let bad = r.id();
    let good = r.id();
    let bytes = cat(&[
        &header(bad, GET_INFO, 15, 0),
        &message(good, REGION_READ, 0, &access(0, 0, 4)),
    ]);
    r.send(&bytes, &[]);
    if let Err(e) = check_error(&r.recv(), bad, GET_INFO, EINVAL) {
        failures.push(format!("pipelined msg_size 15: {e}"));
    }
    if let Err(e) = check_ok(&r.recv(), good, REGION_READ) {
        failures.push(format!("read after a pipelined msg_size 15: {e}"));
    }
    // With fds attached to the short header: still an error reply, fds dropped.
    let id = r.id();
    let fds = Fds::Eventfds(2).make();
    let reply = r.exchange(&header(id, SET_IRQS, 15, 0), &borrow(&fds));
    if let Err(e) = check_error(&reply, id, SET_IRQS, EINVAL) {
        failures.push(format!("msg_size 15 with fds: {e}"));
    }
    r.assert_serving();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn msg_size_above_the_limit_closes_the_connection() {
    let _g = shared();
    let (server, path, events) = start("msg-size-large");
    for (size, trailing) in [
        (MAX_MSG + 1, 0usize),
        (2 << 20, 4096),
        (0x7fff_ffff, 0),
        (u32::MAX, 0),
    ] {
        let mut r = Raw::negotiated(&path);
        let memfd = new_memfd(0x4000);
        r.ok(
            DMA_MAP,
            &dma_map(32, RW, 0, MAP_IOVA, 0x4000),
            &[memfd.as_fd()],
        );
        assert_eq!(server.context().dma.len(), 1);
        let unmapped_before = events.unmapped.lock().unwrap().len();
        let id = r.id();
        let bytes = cat(&[&header(id, REGION_WRITE, size, 0), &vec![0xa5; trailing]]);
        let reply = r.exchange(&bytes, &[]);
        if let Err(e) = check_error(&reply, id, REGION_WRITE, EINVAL) {
            panic!("msg_size {size:#x}: {e}");
        }
        if let Err(e) = r.expect_closed() {
            panic!("msg_size {size:#x}: {e}");
        }
        let ctx = server.context();
        wait_for("the DMA table to empty", || match ctx.dma.len() {
            0 => Ok(()),
            n => Err(format!("{n} maps")),
        });
        assert_eq!(
            events.unmapped.lock().unwrap().len(),
            unmapped_before + 1,
            "dma_unmapped not reported"
        );
        let mut next = Raw::negotiated(&path);
        next.assert_serving();
    }
    // A message exactly at the limit (REGION_WRITE of max_data_xfer_size bytes) is read whole:
    // its range error leaves the stream in sync.
    let mut r = Raw::negotiated(&path);
    let id = r.id();
    let msg = message(
        id,
        REGION_WRITE,
        0,
        &cat(&[&access(0, 0, MAX_XFER), &vec![0x5a; MAX_XFER as usize]]),
    );
    assert_eq!(msg.len(), MAX_MSG as usize);
    let reply = r.exchange(&msg, &[]);
    if let Err(e) = check_error(&reply, id, REGION_WRITE, EINVAL) {
        panic!("REGION_WRITE of 1 MiB to the 4 KiB BAR0: {e}");
    }
    r.assert_serving();
}

#[test]
fn truncated_message_then_close_frees_the_client_state() {
    let _g = shared();
    let (server, path, events) = start("truncated");
    let ctx = server.context();
    // Mid-payload, mid-header, and right after a complete header.
    for (what, claimed, sent) in [
        ("mid-payload", 64u32, 26usize),
        ("mid-header", 64, 8),
        ("after the header", 0x1000, 16),
    ] {
        let mut r = Raw::negotiated(&path);
        let memfd = new_memfd(0x4000);
        r.ok(
            DMA_MAP,
            &dma_map(32, RW, 0, MAP_IOVA, 0x4000),
            &[memfd.as_fd()],
        );
        r.ok(DMA_MAP, &dma_map(32, RW, 0, 0x20_0000, 0x2000), &[]);
        let efds = Fds::Eventfds(2).make();
        r.ok(
            SET_IRQS,
            &set_irqs(EVENTFD | TRIGGER, MSIX, 0, 2, &[]),
            &borrow(&efds),
        );
        assert_eq!(ctx.dma.len(), 2);
        assert!(ctx.irqs.state(MSIX, 1).unwrap().has_eventfd);
        let unmapped_before = events.unmapped.lock().unwrap().len();
        let disconnected_before = events.disconnected.load(Ordering::SeqCst);

        let id = r.id();
        let mut bytes = header(id, REGION_WRITE, claimed, 0);
        bytes.resize(sent.max(16), 0x11);
        bytes.truncate(sent);
        r.send(&bytes, &[]);
        drop(r);

        wait_for(&format!("{what}: the DMA table to empty"), || {
            match ctx.dma.len() {
                0 => Ok(()),
                n => Err(format!("{n} maps")),
            }
        });
        wait_for(&format!("{what}: client_disconnected"), || {
            let n = events.disconnected.load(Ordering::SeqCst);
            if n == disconnected_before + 1 {
                Ok(())
            } else {
                Err(format!("{n} disconnects"))
            }
        });
        let unmapped: Vec<u64> = events.unmapped.lock().unwrap()[unmapped_before..]
            .iter()
            .map(|m| m.iova.0)
            .collect();
        assert_eq!(
            unmapped,
            vec![MAP_IOVA, 0x20_0000],
            "{what}: dma_unmapped events"
        );
        for v in 0..2 {
            assert!(
                !ctx.irqs.state(MSIX, v).unwrap().has_eventfd,
                "{what}: MSI-X {v} still has the client's eventfd"
            );
        }
        let mut next = Raw::negotiated(&path);
        next.assert_serving();
        assert!(ctx.dma.find(Iova(MAP_IOVA)).is_none());
    }
}

// ----- per-command tables ---------------------------------------------------------------------

#[test]
fn info_request_errors() {
    let _g = shared();
    let (_server, path, _events) = start("info");
    let mut r = Raw::negotiated(&path);
    let cases = vec![
        // DEVICE_GET_INFO
        case("DEVICE_GET_INFO 8-byte payload", GET_INFO, u32s(&[16, 0])),
        case(
            "DEVICE_GET_INFO 15-byte payload",
            GET_INFO,
            vec![16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        case("DEVICE_GET_INFO argsz 8", GET_INFO, u32s(&[8, 0, 0, 0])),
        case("DEVICE_GET_INFO argsz 0", GET_INFO, u32s(&[0, 0, 0, 0])),
        // DEVICE_GET_REGION_INFO
        case(
            "REGION_INFO short payload (16 bytes)",
            REGION_INFO,
            u32s(&[32, 0, 0, 0]),
        ),
        case(
            "REGION_INFO short payload (31 bytes)",
            REGION_INFO,
            cat(&[&u32s(&[32, 0, 0, 0, 0, 0, 0]), &[0, 0, 0]]),
        ),
        case(
            "REGION_INFO argsz 8",
            REGION_INFO,
            u32s(&[8, 0, 0, 0, 0, 0, 0, 0]),
        ),
        case(
            "REGION_INFO argsz 31",
            REGION_INFO,
            u32s(&[31, 0, 0, 0, 0, 0, 0, 0]),
        ),
        case(
            "REGION_INFO index 9",
            REGION_INFO,
            u32s(&[32, 0, 9, 0, 0, 0, 0, 0]),
        ),
        case(
            "REGION_INFO index 100",
            REGION_INFO,
            u32s(&[32, 0, 100, 0, 0, 0, 0, 0]),
        ),
        case(
            "REGION_INFO index u32::MAX",
            REGION_INFO,
            u32s(&[32, 0, u32::MAX, 0, 0, 0, 0, 0]),
        ),
        // DEVICE_GET_REGION_IO_FDS
        case("REGION_IO_FDS flags 1", IO_FDS, u32s(&[16, 1, 0, 0])),
        case(
            "REGION_IO_FDS flags 0x80000000",
            IO_FDS,
            u32s(&[16, 0x8000_0000, 0, 0]),
        ),
        case("REGION_IO_FDS count 1", IO_FDS, u32s(&[16, 0, 0, 1])),
        case("REGION_IO_FDS argsz 8", IO_FDS, u32s(&[8, 0, 0, 0])),
        case(
            "REGION_IO_FDS short payload (8 bytes)",
            IO_FDS,
            u32s(&[16, 0]),
        ),
        case(
            "REGION_IO_FDS region 2 (no io fds)",
            IO_FDS,
            u32s(&[16, 0, 2, 0]),
        ),
        case(
            "REGION_IO_FDS region 7 (no io fds)",
            IO_FDS,
            u32s(&[16, 0, 7, 0]),
        ),
        case("REGION_IO_FDS region 9", IO_FDS, u32s(&[16, 0, 9, 0])),
        case("REGION_IO_FDS region 100", IO_FDS, u32s(&[16, 0, 100, 0])),
        // DEVICE_GET_IRQ_INFO
        case("IRQ_INFO argsz 8", IRQ_INFO, u32s(&[8, 0, 2, 0])),
        case("IRQ_INFO argsz 0", IRQ_INFO, u32s(&[0, 0, 2, 0])),
        case("IRQ_INFO short payload (8 bytes)", IRQ_INFO, u32s(&[16, 0])),
        case(
            "IRQ_INFO short payload (12 bytes)",
            IRQ_INFO,
            u32s(&[16, 0, 2]),
        ),
        case("IRQ_INFO index 5", IRQ_INFO, u32s(&[16, 0, 5, 0])),
        case("IRQ_INFO index 100", IRQ_INFO, u32s(&[16, 0, 100, 0])),
        case(
            "IRQ_INFO index u32::MAX",
            IRQ_INFO,
            u32s(&[16, 0, u32::MAX, 0]),
        ),
    ];
    run_table(&mut r, "info", cases, serving);
}

#[test]
fn region_access_errors() {
    let _g = shared();
    let (_server, path, _events) = start("region");
    let mut r = Raw::negotiated(&path);
    let big = MAX_XFER + 8;
    let w = |offset: u64, region: u32, count: u32, data: &[u8]| {
        cat(&[&access(offset, region, count), data])
    };
    let cases = vec![
        // REGION_READ
        case("READ region 9", REGION_READ, access(0, 9, 4)),
        case("READ region 100", REGION_READ, access(0, 100, 4)),
        case("READ region u32::MAX", REGION_READ, access(0, u32::MAX, 4)),
        case(
            "READ absent region 1 (size 0)",
            REGION_READ,
            access(0, 1, 4),
        ),
        case(
            "READ BAR0 past the end (0xffc + 8)",
            REGION_READ,
            access(0xffc, 0, 8),
        ),
        case(
            "READ BAR0 at its size (0x1000 + 1)",
            REGION_READ,
            access(0x1000, 0, 1),
        ),
        case(
            "READ BAR0 far past the end",
            REGION_READ,
            access(0x2000, 0, 4),
        ),
        case(
            "READ config past the end (0xfc + 8)",
            REGION_READ,
            access(0xfc, 7, 8),
        ),
        case(
            "READ BAR2 past the end (0x7ffc + 8)",
            REGION_READ,
            access(0x7ffc, 2, 8),
        ),
        case(
            "READ at offset u64::MAX",
            REGION_READ,
            access(u64::MAX, 0, 1),
        ),
        case(
            "READ at offset u64::MAX, count 4",
            REGION_READ,
            access(u64::MAX, 0, 4),
        ),
        case(
            "READ wrapping (u64::MAX-3 + 8)",
            REGION_READ,
            access(u64::MAX - 3, 0, 8),
        ),
        case("READ count 1 MiB + 8", REGION_READ, access(0, 0, big)),
        case(
            "READ count 1 MiB from the 4 KiB BAR0",
            REGION_READ,
            access(0, 0, MAX_XFER),
        ),
        case("READ count u32::MAX", REGION_READ, access(0, 0, u32::MAX)),
        case(
            "READ short payload (8 bytes)",
            REGION_READ,
            0u64.to_ne_bytes().to_vec(),
        ),
        case(
            "READ with data (20 bytes)",
            REGION_READ,
            w(0, 0, 4, &[1, 2, 3, 4]),
        ),
        // REGION_WRITE
        case("WRITE region 9", REGION_WRITE, w(0, 9, 4, &[1; 4])),
        case("WRITE region 100", REGION_WRITE, w(0, 100, 4, &[1; 4])),
        case(
            "WRITE absent region 1 (size 0)",
            REGION_WRITE,
            w(0, 1, 4, &[1; 4]),
        ),
        case(
            "WRITE BAR0 past the end (0xffc + 8)",
            REGION_WRITE,
            w(0xffc, 0, 8, &[1; 8]),
        ),
        case(
            "WRITE BAR0 at its size (0x1000 + 1)",
            REGION_WRITE,
            w(0x1000, 0, 1, &[1]),
        ),
        case(
            "WRITE config past the end (0xfc + 8)",
            REGION_WRITE,
            w(0xfc, 7, 8, &[1; 8]),
        ),
        case(
            "WRITE BAR2 past the end (0x7ffc + 8)",
            REGION_WRITE,
            w(0x7ffc, 2, 8, &[1; 8]),
        ),
        case(
            "WRITE at offset u64::MAX",
            REGION_WRITE,
            w(u64::MAX, 0, 1, &[1]),
        ),
        case(
            "WRITE wrapping (u64::MAX-3 + 8)",
            REGION_WRITE,
            w(u64::MAX - 3, 0, 8, &[1; 8]),
        ),
        case(
            "WRITE count 1 MiB + 8 with 8 data bytes",
            REGION_WRITE,
            w(0x40, 0, big, &[1; 8]),
        ),
        case(
            "WRITE data shorter than count (4 vs 3)",
            REGION_WRITE,
            w(0x40, 0, 4, &[1; 3]),
        ),
        case(
            "WRITE data longer than count (4 vs 5)",
            REGION_WRITE,
            w(0x40, 0, 4, &[1; 5]),
        ),
        case(
            "WRITE count 0 with 4 data bytes",
            REGION_WRITE,
            w(0x40, 0, 0, &[1; 4]),
        ),
        case(
            "WRITE 8-byte payload",
            REGION_WRITE,
            0x40u64.to_ne_bytes().to_vec(),
        ),
        case(
            "WRITE 12-byte payload",
            REGION_WRITE,
            access(0x40, 0, 4)[..12].to_vec(),
        ),
    ];
    run_table(&mut r, "region", cases, serving);
    // None of the refused writes touched BAR0 (it starts zeroed).
    let bar0 = r.read(0, 0, 0x1000);
    let dirty: Vec<usize> = bar0
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != 0)
        .map(|(i, _)| i)
        .collect();
    assert!(
        dirty.is_empty(),
        "refused REGION_WRITEs changed BAR0 at {dirty:x?}"
    );
}

/// Maps the fd-less window every DMA case starts from.
fn with_base_map(r: &mut Raw) {
    r.ok(DMA_MAP, &dma_map(32, RW, 0, MAP_IOVA, MAP_SIZE), &[]);
}

#[test]
fn dma_map_errors() {
    let _g = shared();
    let (server, path, _events) = start("dma-map");
    let mut r = Raw::negotiated(&path);
    with_base_map(&mut r);
    let m = |flags: u32, offset: u64, iova: u64, size: u64| dma_map(32, flags, offset, iova, size);
    let cases = vec![
        case("MAP size 0", DMA_MAP, m(RW, 0, 0x20_0000, 0)),
        case("MAP size 0 with a memfd", DMA_MAP, m(RW, 0, 0x20_0000, 0))
            .fds(Fds::Memfds(1, 0x1000)),
        case("MAP misaligned iova", DMA_MAP, m(RW, 0, 0x20_0001, 0x1000)),
        case(
            "MAP misaligned iova (0x800)",
            DMA_MAP,
            m(RW, 0, 0x20_0800, 0x1000),
        ),
        case("MAP misaligned size", DMA_MAP, m(RW, 0, 0x20_0000, 0x1001)),
        case(
            "MAP misaligned file offset (memfd)",
            DMA_MAP,
            m(RW, 0x800, 0x20_0000, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x2000)),
        case(
            "MAP iova + size wraps",
            DMA_MAP,
            m(RW, 0, 0xffff_ffff_ffff_f000, 0x2000),
        ),
        case(
            "MAP larger than the memfd",
            DMA_MAP,
            m(RW, 0, 0x20_0000, 0x2000),
        )
        .fds(Fds::Memfds(1, 0x1000)),
        case("MAP size above 8 TiB", DMA_MAP, m(RW, 0, 1 << 50, 1 << 44)).errno(ENOSPC),
        case(
            "MAP flags bit 2 (unknown here)",
            DMA_MAP,
            m(RW | 1 << 2, 0, 0x20_0000, 0x1000),
        ),
        case(
            "MAP flags bit 8",
            DMA_MAP,
            m(RW | 1 << 8, 0, 0x20_0000, 0x1000),
        ),
        case(
            "MAP flags bit 31",
            DMA_MAP,
            m(1 << 31 | 1, 0, 0x20_0000, 0x1000),
        ),
        case("MAP with two fds", DMA_MAP, m(RW, 0, 0x20_0000, 0x1000)).fds(Fds::Memfds(2, 0x1000)),
        case("MAP argsz 8", DMA_MAP, dma_map(8, RW, 0, 0x20_0000, 0x1000)),
        case("MAP argsz 0", DMA_MAP, dma_map(0, RW, 0, 0x20_0000, 0x1000)),
        case(
            "MAP short payload (24 bytes)",
            DMA_MAP,
            dma_map(32, RW, 0, 0x20_0000, 0x1000)[..24].to_vec(),
        ),
        case(
            "MAP long payload (40 bytes)",
            DMA_MAP,
            cat(&[&m(RW, 0, 0x20_0000, 0x1000), &[0; 8]]),
        ),
        case(
            "MAP the same range again",
            DMA_MAP,
            m(RW, 0, MAP_IOVA, MAP_SIZE),
        )
        .errno(EEXIST),
        case(
            "MAP overlapping the head",
            DMA_MAP,
            m(RW, 0, MAP_IOVA - 0x2000, 0x4000),
        )
        .errno(EEXIST),
        case(
            "MAP overlapping the tail",
            DMA_MAP,
            m(RW, 0, MAP_IOVA + MAP_SIZE - 0x1000, 0x2000),
        )
        .errno(EEXIST),
        case(
            "MAP inside an existing map",
            DMA_MAP,
            m(RW, 0, MAP_IOVA + 0x1000, 0x1000),
        )
        .errno(EEXIST),
        case(
            "MAP covering an existing map",
            DMA_MAP,
            m(RW, 0, MAP_IOVA - 0x10000, 0x20000),
        )
        .errno(EEXIST),
        case(
            "MAP overlapping, with a memfd",
            DMA_MAP,
            m(RW, 0, MAP_IOVA, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x1000))
        .errno(EEXIST),
    ];
    run_table(&mut r, "dma-map", cases, serving);
    let maps = server.context().dma.mappings();
    assert_eq!(
        maps.len(),
        1,
        "refused DMA_MAPs changed the table: {maps:?}"
    );
    assert_eq!((maps[0].iova.0, maps[0].size), (MAP_IOVA, MAP_SIZE));
}

#[test]
fn dma_unmap_errors() {
    let _g = shared();
    let (server, path, _events) = start("dma-unmap");
    let mut r = Raw::negotiated(&path);
    with_base_map(&mut r);
    let u = |flags: u32, iova: u64, size: u64| dma_unmap(24, flags, iova, size);
    let all = wire::DMA_UNMAP_FLAG_ALL;
    let dirty = wire::DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    let cases = vec![
        case("UNMAP never mapped", DMA_UNMAP, u(0, 0x90_0000, 0x1000)).errno(ENOENT),
        case(
            "UNMAP partial range (head)",
            DMA_UNMAP,
            u(0, MAP_IOVA, 0x1000),
        )
        .errno(ENOENT),
        case(
            "UNMAP partial range (middle)",
            DMA_UNMAP,
            u(0, MAP_IOVA + 0x1000, 0x1000),
        )
        .errno(ENOENT),
        case(
            "UNMAP larger than the map",
            DMA_UNMAP,
            u(0, MAP_IOVA, MAP_SIZE * 2),
        )
        .errno(ENOENT),
        case(
            "UNMAP ALL with address != 0",
            DMA_UNMAP,
            u(all, MAP_IOVA, 0),
        ),
        case("UNMAP ALL with size != 0", DMA_UNMAP, u(all, 0, MAP_SIZE)),
        case(
            "UNMAP GET_DIRTY_BITMAP while not tracking",
            DMA_UNMAP,
            u(dirty, MAP_IOVA, MAP_SIZE),
        ),
        case(
            "UNMAP ALL | GET_DIRTY_BITMAP",
            DMA_UNMAP,
            u(all | dirty, 0, 0),
        ),
        case(
            "UNMAP flags bit 2",
            DMA_UNMAP,
            u(1 << 2, MAP_IOVA, MAP_SIZE),
        ),
        case(
            "UNMAP flags bit 31",
            DMA_UNMAP,
            u(1 << 31, MAP_IOVA, MAP_SIZE),
        ),
        case(
            "UNMAP argsz 8",
            DMA_UNMAP,
            dma_unmap(8, 0, MAP_IOVA, MAP_SIZE),
        ),
        case(
            "UNMAP short payload (16 bytes)",
            DMA_UNMAP,
            u(0, MAP_IOVA, MAP_SIZE)[..16].to_vec(),
        ),
    ];
    run_table(&mut r, "dma-unmap", cases, serving);
    let maps = server.context().dma.mappings();
    assert_eq!(
        maps.len(),
        1,
        "refused DMA_UNMAPs changed the table: {maps:?}"
    );
}

/// DMA_UNMAP takes no fds (spec: only DMA_MAP, SET_IRQS carry fds), like every other command
/// that takes none; the mapping must stay.
#[test]
fn dma_unmap_with_an_fd_is_tolerated_and_the_fd_closed() {
    // SPDK's host client attaches an fd to DMA_UNMAP (protocol reference §6). emudev accepts
    // the unmap for interoperability and closes the fd it did not ask for.
    let _g = exclusive();
    let (server, path, _events) = start("dma-unmap-fd");
    let mut r = Raw::negotiated(&path);
    with_base_map(&mut r);
    let before = common::fd_count();
    let fds = Fds::Eventfds(1).make();
    r.ok(
        DMA_UNMAP,
        &dma_unmap(24, 0, MAP_IOVA, MAP_SIZE),
        &borrow(&fds),
    );
    drop(fds);
    assert_eq!(server.context().dma.len(), 0, "the mapping was removed");
    wait_for("the attached fd is closed by the server", || {
        let now = common::fd_count();
        if now <= before {
            Ok(())
        } else {
            Err(format!("{now} fds open, {before} before"))
        }
    });
    r.assert_serving();
}

#[test]
fn set_irqs_errors() {
    let _g = shared();
    let (server, path, _events) = start("set-irqs");
    let mut r = Raw::negotiated(&path);
    let s = set_irqs;
    let cases = vec![
        case(
            "BOOL data shorter than count",
            SET_IRQS,
            s(BOOL | TRIGGER, MSIX, 0, 2, &[1]),
        ),
        case(
            "BOOL data longer than count",
            SET_IRQS,
            s(BOOL | TRIGGER, MSIX, 0, 1, &[1, 1]),
        ),
        case(
            "two actions (TRIGGER|MASK)",
            SET_IRQS,
            s(NONE | TRIGGER | MASK, MSIX, 0, 1, &[]),
        ),
        case(
            "two actions with an eventfd",
            SET_IRQS,
            s(EVENTFD | TRIGGER | UNMASK, MSIX, 0, 1, &[]),
        )
        .fds(Fds::Eventfds(1)),
        case(
            "two data types (NONE|BOOL)",
            SET_IRQS,
            s(NONE | BOOL | TRIGGER, MSIX, 0, 1, &[1]),
        ),
        case(
            "two data types (BOOL|EVENTFD)",
            SET_IRQS,
            s(BOOL | EVENTFD | TRIGGER, MSIX, 0, 1, &[1]),
        )
        .fds(Fds::Eventfds(1)),
        case("no data type", SET_IRQS, s(TRIGGER, MSIX, 0, 1, &[])),
        case("no action", SET_IRQS, s(NONE, MSIX, 0, 1, &[])),
        case("flags 0", SET_IRQS, s(0, MSIX, 0, 1, &[])),
        case(
            "unknown flag bit 6",
            SET_IRQS,
            s(NONE | TRIGGER | 1 << 6, MSIX, 0, 1, &[]),
        ),
        case("index 5", SET_IRQS, s(NONE | TRIGGER, 5, 0, 1, &[])),
        case("index 100", SET_IRQS, s(NONE | TRIGGER, 100, 0, 1, &[])),
        case(
            "index u32::MAX",
            SET_IRQS,
            s(NONE | TRIGGER, u32::MAX, 0, 1, &[]),
        ),
        case(
            "start >= count (MSI-X 4 of 4)",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 4, 1, &[]),
        ),
        case(
            "start >= count (INTx 1 of 1)",
            SET_IRQS,
            s(NONE | TRIGGER, 0, 1, 1, &[]),
        ),
        case(
            "start + count > count (2 + 3 of 4)",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 2, 3, &[]),
        ),
        case(
            "count > count (0 + 5 of 4)",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 0, 5, &[]),
        ),
        case(
            "eventfds past the end (3 + 2 of 4)",
            SET_IRQS,
            s(EVENTFD | TRIGGER, MSIX, 3, 2, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "start + count overflows u32",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 1, u32::MAX, &[]),
        ),
        case(
            "ERR index with MASK",
            SET_IRQS,
            s(NONE | MASK, ERR, 0, 1, &[]),
        ),
        case(
            "ERR index with UNMASK",
            SET_IRQS,
            s(NONE | UNMASK, ERR, 0, 1, &[]),
        ),
        case(
            "REQ index with MASK",
            SET_IRQS,
            s(NONE | MASK, REQ, 0, 1, &[]),
        ),
        case(
            "ERR index with count 2",
            SET_IRQS,
            s(NONE | TRIGGER, ERR, 0, 2, &[]),
        ),
        case(
            "REQ index with count 2 eventfds",
            SET_IRQS,
            s(EVENTFD | TRIGGER, REQ, 0, 2, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "count 0 with start != 0",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 1, 0, &[]),
        ),
        case(
            "count 0 with EVENTFD",
            SET_IRQS,
            s(EVENTFD | TRIGGER, MSIX, 0, 0, &[]),
        ),
        case(
            "count 0 with BOOL",
            SET_IRQS,
            s(BOOL | TRIGGER, MSIX, 0, 0, &[]),
        ),
        case(
            "count 0 with MASK",
            SET_IRQS,
            s(NONE | MASK, MSIX, 0, 0, &[]),
        ),
        case(
            "fds without DATA_EVENTFD (NONE)",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 0, 1, &[]),
        )
        .fds(Fds::Eventfds(1)),
        case(
            "fds without DATA_EVENTFD (BOOL)",
            SET_IRQS,
            s(BOOL | TRIGGER, MSIX, 0, 1, &[1]),
        )
        .fds(Fds::Eventfds(1)),
        case(
            "fd count != count (2 for 3)",
            SET_IRQS,
            s(EVENTFD | TRIGGER, MSIX, 0, 3, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "fd count != count (2 for 1)",
            SET_IRQS,
            s(EVENTFD | TRIGGER, MSIX, 0, 1, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "argsz larger than the message",
            SET_IRQS,
            set_irqs_argsz(24, NONE | TRIGGER, MSIX, 0, 1, &[]),
        ),
        case(
            "argsz 8",
            SET_IRQS,
            set_irqs_argsz(8, NONE | TRIGGER, MSIX, 0, 1, &[]),
        ),
        case(
            "argsz 0",
            SET_IRQS,
            set_irqs_argsz(0, NONE | TRIGGER, MSIX, 0, 1, &[]),
        ),
        case(
            "short payload (16 bytes)",
            SET_IRQS,
            u32s(&[20, NONE | TRIGGER, MSIX, 0]),
        ),
        case(
            "DATA_NONE with trailing data",
            SET_IRQS,
            s(NONE | TRIGGER, MSIX, 0, 1, &[0; 4]),
        ),
        case(
            "DATA_EVENTFD with inline data",
            SET_IRQS,
            s(EVENTFD | TRIGGER, MSIX, 0, 1, &[0; 4]),
        )
        .fds(Fds::Eventfds(1)),
        case(
            "MASK on the non-maskable MSI index",
            SET_IRQS,
            s(NONE | MASK, 1, 0, 1, &[]),
        ),
        case(
            "MASK through an eventfd (resample)",
            SET_IRQS,
            s(EVENTFD | MASK, 0, 0, 1, &[]),
        )
        .fds(Fds::Eventfds(1)),
    ];
    run_table(&mut r, "set-irqs", cases, serving);
    let irqs = server.context().irqs;
    for (index, count) in [(0u32, 1u32), (1, 1), (MSIX, 4), (ERR, 1), (REQ, 1)] {
        for v in 0..count {
            let st = irqs.state(index, v).unwrap();
            assert!(
                !st.has_eventfd && !st.masked,
                "refused SET_IRQS changed IRQ {index}.{v}: {st:?}"
            );
        }
    }
    assert_eq!(irqs.triggers(), 0);
}

#[test]
fn feature_and_migration_errors() {
    let _g = shared();
    let (_server, path, _events) = start("feature");
    let mut r = Raw::negotiated(&path);
    let get = vfio::VFIO_DEVICE_FEATURE_GET;
    let set = vfio::VFIO_DEVICE_FEATURE_SET;
    let mig = vfio::VFIO_DEVICE_FEATURE_MIGRATION;
    let cases = vec![
        case("FEATURE short payload (4 bytes)", FEATURE, u32s(&[8])),
        case("FEATURE argsz 4", FEATURE, u32s(&[4, get | mig])),
        case("FEATURE argsz 0", FEATURE, u32s(&[0, get | mig, 0, 0])),
        case(
            "FEATURE no GET/SET/PROBE bit",
            FEATURE,
            u32s(&[16, mig, 0, 0]),
        ),
        case(
            "FEATURE GET and SET together",
            FEATURE,
            u32s(&[16, get | set | mig, 0, 0]),
        ),
        case(
            "FEATURE unknown flag bit 20",
            FEATURE,
            u32s(&[16, 1 << 20 | get | mig, 0, 0]),
        ),
        case(
            "FEATURE GET with argsz below the reply (8 < 16)",
            FEATURE,
            u32s(&[8, get | mig]),
        ),
        case(
            "MIG_DATA_READ short payload (4 bytes)",
            MIG_READ,
            u32s(&[8]),
        ),
        case(
            "MIG_DATA_READ long payload (12 bytes)",
            MIG_READ,
            u32s(&[8, 4, 0]),
        ),
        case("MIG_DATA_READ argsz 4", MIG_READ, u32s(&[4, 4])),
        case(
            "MIG_DATA_READ size above max_data_xfer_size",
            MIG_READ,
            u32s(&[8 + MAX_XFER + 1, MAX_XFER + 1]),
        ),
        case(
            "MIG_DATA_WRITE short payload (4 bytes)",
            MIG_WRITE,
            u32s(&[8]),
        ),
        case(
            "MIG_DATA_WRITE size 8 with 4 data bytes",
            MIG_WRITE,
            u32s(&[16, 8, 0]),
        ),
        case(
            "MIG_DATA_WRITE size 2 with 4 data bytes",
            MIG_WRITE,
            u32s(&[12, 2, 0]),
        ),
        case("MIG_DATA_WRITE argsz 4", MIG_WRITE, u32s(&[4, 4, 0])),
    ];
    run_table(&mut r, "feature", cases, serving);
}

// ----- REGION_WRITE_MULTI ---------------------------------------------------------------------

fn one_multi_write() -> Vec<u8> {
    write_multi(1, &[multi_entry(0x40, 0, 4, [0x11; 8])])
}

#[test]
fn write_multi_refused_when_the_client_did_not_offer_it() {
    let _g = shared();
    let (_server, path, _events) = start("multi-off");
    // Through the library client, configured without write_multiple.
    let config = ClientConfig {
        write_multiple: false,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&path, config).expect("connect");
    assert!(
        !c.server_caps().write_multiple(),
        "the server agreed to write_multiple nobody offered"
    );
    let id = c.next_msg_id();
    let reply = c
        .raw_exchange(&message(id, WRITE_MULTI, 0, &one_multi_write()), &[])
        .expect("raw exchange");
    if let Err(e) = check_error(&reply, id, WRITE_MULTI, EINVAL) {
        panic!("WRITE_MULTI without write_multiple: {e}");
    }
    assert_eq!(
        c.read_u32(0, 0x40).expect("read after WRITE_MULTI"),
        0,
        "the refused WRITE_MULTI was applied"
    );
    c.close();
    // And on a raw connection that negotiated no capabilities at all.
    let mut r = Raw::negotiated_with(&path, &version(0, 0, &[]));
    let cases = vec![case(
        "WRITE_MULTI without write_multiple (no JSON)",
        WRITE_MULTI,
        one_multi_write(),
    )];
    run_table(&mut r, "multi-off", cases, serving);
    drop(r);
    let mut r = Raw::negotiated_with(
        &path,
        &version_json(r#"{"capabilities":{"write_multiple":false}}"#),
    );
    let cases = vec![case(
        "WRITE_MULTI with write_multiple false",
        WRITE_MULTI,
        one_multi_write(),
    )];
    run_table(&mut r, "multi-off", cases, serving);
    assert_eq!(r.read(0, 0x40, 4), [0; 4]);
}

#[test]
fn write_multi_errors_apply_nothing() {
    let _g = shared();
    let (_server, path, _events) = start("multi-on");
    let mut r = Raw::negotiated_with(
        &path,
        &version_json(r#"{"capabilities":{"write_multiple":true}}"#),
    );
    let good = multi_entry(0x40, 0, 8, [0x11; 8]);
    let cases = vec![
        case("MULTI wr_cnt 0", WRITE_MULTI, write_multi(0, &[])),
        case(
            "MULTI short payload (4 bytes)",
            WRITE_MULTI,
            vec![1, 0, 0, 0],
        ),
        case(
            "MULTI wr_cnt 2 with one entry",
            WRITE_MULTI,
            write_multi(2, std::slice::from_ref(&good)),
        ),
        case(
            "MULTI wr_cnt 1 with two entries",
            WRITE_MULTI,
            write_multi(1, &[good.clone(), good.clone()]),
        ),
        case(
            "MULTI wr_cnt u64::MAX",
            WRITE_MULTI,
            write_multi(u64::MAX, std::slice::from_ref(&good)),
        ),
        case(
            "MULTI truncated entry",
            WRITE_MULTI,
            write_multi(1, &[good[..20].to_vec()]),
        ),
        case(
            "MULTI entry count 0",
            WRITE_MULTI,
            write_multi(1, &[multi_entry(0x40, 0, 0, [0x11; 8])]),
        ),
        case(
            "MULTI entry count 9",
            WRITE_MULTI,
            write_multi(1, &[multi_entry(0x40, 0, 9, [0x11; 8])]),
        ),
        case(
            "MULTI good entry then region 9",
            WRITE_MULTI,
            write_multi(2, &[good.clone(), multi_entry(0, 9, 4, [1; 8])]),
        ),
        case(
            "MULTI good entry then past the end",
            WRITE_MULTI,
            write_multi(2, &[good.clone(), multi_entry(0xffc, 0, 8, [1; 8])]),
        ),
        case(
            "MULTI good entry then offset u64::MAX",
            WRITE_MULTI,
            write_multi(2, &[good.clone(), multi_entry(u64::MAX, 0, 1, [1; 8])]),
        ),
        case(
            "MULTI good entry then absent region 1",
            WRITE_MULTI,
            write_multi(2, &[good.clone(), multi_entry(0, 1, 4, [1; 8])]),
        ),
    ];
    run_table(&mut r, "multi-on", cases, serving);
    assert_eq!(
        r.read(0, 0x40, 8),
        [0; 8],
        "a refused WRITE_MULTI applied some of its entries"
    );
    // Control: the same good entry alone is accepted and applied.
    let reply = r.ok(WRITE_MULTI, &write_multi(1, &[good]), &[]);
    assert_eq!(reply.bytes[16..], 1u64.to_ne_bytes());
    assert_eq!(r.read(0, 0x40, 8), [0x11; 8]);
}

// ----- NO_REPLY -------------------------------------------------------------------------------

#[test]
fn bad_no_reply_requests_get_no_reply() {
    let _g = shared();
    let (_server, path, _events) = start("no-reply");
    let mut r = Raw::negotiated(&path);
    let nr = wire::FLAGS_NO_REPLY;
    let bad: Vec<Vec<u8>> = vec![
        message(r.id(), REGION_WRITE, nr, &cat(&[&access(0, 9, 4), &[1; 4]])),
        message(
            r.id(),
            REGION_WRITE,
            nr,
            &cat(&[&access(0xffc, 0, 8), &[1; 8]]),
        ),
        message(
            r.id(),
            REGION_WRITE,
            nr,
            &cat(&[&access(0x40, 0, 4), &[1; 3]]),
        ),
        message(r.id(), 19, nr, &[]),
        message(
            r.id(),
            SET_IRQS,
            nr,
            &set_irqs(NONE | TRIGGER, 5, 0, 1, &[]),
        ),
        message(r.id(), DMA_UNMAP, nr, &dma_unmap(24, 0, 0x90_0000, 0x1000)),
        header(r.id(), GET_INFO, 15, nr),
    ];
    for (i, m) in bad.iter().enumerate() {
        // Every other one carries an fd, which must not provoke a reply either.
        let fds = if i % 2 == 0 {
            Vec::new()
        } else {
            vec![new_eventfd()]
        };
        r.send(m, &borrow(&fds));
    }
    // A good posted write, then a read: the first message back is the read's reply, and it
    // sees the posted write (requests are handled in order).
    let mut b = MessageBuilder::command(r.id(), Command::RegionWrite).no_reply(true);
    b.bytes(&cat(&[&access(0x80, 0, 4), &[9, 8, 7, 6]]));
    r.send(&b.finish(), &[]);
    let id = r.id();
    r.send(&message(id, REGION_READ, 0, &access(0x80, 0, 4)), &[]);
    let reply = r.recv();
    let h = Header::decode(&reply.bytes).unwrap();
    assert_eq!(
        (h.msg_id, h.command),
        (id, REGION_READ),
        "a NO_REPLY request was answered: {h:?}"
    );
    check_ok(&reply, id, REGION_READ).unwrap();
    assert_eq!(reply.bytes[32..], [9, 8, 7, 6]);
    assert_eq!(r.read(0, 0, 4), [0; 4]);
}

// ----- resources ------------------------------------------------------------------------------

/// How many fds the count may exceed its baseline by (the test harness's own threads and
/// read_dir's fd are in it; a leak per request or per client shows as tens or hundreds).
const FD_MARGIN: usize = 4;

fn wait_fds_back_to(base: usize, what: &str) {
    wait_for(what, || {
        let n = common::fd_count();
        if n <= base + FD_MARGIN {
            Ok(())
        } else {
            Err(format!("{n} fds open, baseline {base}"))
        }
    });
}

#[test]
fn two_hundred_connect_disconnect_cycles() {
    let _g = exclusive();
    let (server, path, events) = start("cycles");
    let ctx = server.context();
    let base = common::fd_count();
    for i in 0..200u64 {
        let mut c = Client::connect(&path).unwrap_or_else(|e| panic!("cycle {i}: connect: {e}"));
        let buf = c
            .alloc_dma(MAP_IOVA, 0x4000, true)
            .unwrap_or_else(|e| panic!("cycle {i}: DMA map: {e}"));
        let irq_fds = c
            .enable_irqs(MSIX, 4)
            .unwrap_or_else(|e| panic!("cycle {i}: MSI-X eventfds: {e}"));
        assert_eq!(ctx.dma.len(), 1);
        assert!(ctx.irqs.state(MSIX, 3).unwrap().has_eventfd);
        c.close();
        drop((buf, irq_fds));
        wait_for(
            &format!("cycle {i}: DMA table empty and client gone"),
            || {
                let (maps, connected) = (ctx.dma.len(), server.handle().stats().connected);
                let irq = (0..4).any(|v| ctx.irqs.state(MSIX, v).unwrap().has_eventfd);
                if maps == 0 && !connected && !irq {
                    Ok(())
                } else {
                    Err(format!(
                        "{maps} maps, connected {connected}, eventfds bound {irq}"
                    ))
                }
            },
        );
        assert_eq!(
            events.unmapped.lock().unwrap().len() as u64,
            i + 1,
            "cycle {i}: dma_unmapped count"
        );
    }
    assert_eq!(events.connected.load(Ordering::SeqCst), 200);
    assert_eq!(events.disconnected.load(Ordering::SeqCst), 200);
    wait_fds_back_to(base, "fd count after 200 clients");
    let mut r = Raw::negotiated(&path);
    r.assert_serving();
}

#[test]
fn fds_of_rejected_requests_are_closed() {
    let _g = exclusive();
    let (server, path, _events) = start("fd-leak");
    let base = common::fd_count();
    let mut r = Raw::negotiated(&path);
    with_base_map(&mut r);
    r.assert_serving();
    let connected = common::fd_count();
    let rejected: Vec<Case> = vec![
        case(
            "DMA_MAP bad flag with a memfd",
            DMA_MAP,
            dma_map(32, RW | 1 << 8, 0, 0x20_0000, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x1000)),
        case(
            "DMA_MAP two memfds",
            DMA_MAP,
            dma_map(32, RW, 0, 0x20_0000, 0x1000),
        )
        .fds(Fds::Memfds(2, 0x1000)),
        case(
            "DMA_MAP overlapping with a memfd",
            DMA_MAP,
            dma_map(32, RW, 0, MAP_IOVA, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x1000))
        .errno(EEXIST),
        case(
            "DMA_MAP misaligned with a memfd",
            DMA_MAP,
            dma_map(32, RW, 0, 0x20_0800, 0x1000),
        )
        .fds(Fds::Memfds(1, 0x1000)),
        case(
            "DMA_MAP larger than its memfd",
            DMA_MAP,
            dma_map(32, RW, 0, 0x20_0000, 0x2000),
        )
        .fds(Fds::Memfds(1, 0x1000)),
        case(
            "SET_IRQS fd count != count",
            SET_IRQS,
            set_irqs(EVENTFD | TRIGGER, MSIX, 0, 3, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "SET_IRQS past the end with eventfds",
            SET_IRQS,
            set_irqs(EVENTFD | TRIGGER, MSIX, 3, 2, &[]),
        )
        .fds(Fds::Eventfds(2)),
        case(
            "SET_IRQS 9 fds (> max_msg_fds)",
            SET_IRQS,
            set_irqs(EVENTFD | TRIGGER, MSIX, 0, 9, &[]),
        )
        .fds(Fds::Eventfds(9)),
        case("REGION_READ with an fd", REGION_READ, access(0, 0, 4)).fds(Fds::Eventfds(1)),
        case("unknown command with an fd", 19, Vec::new()).fds(Fds::Eventfds(1)),
        case(
            "Reply-type message with an fd",
            GET_INFO,
            u32s(&[16, 0, 0, 0]),
        )
        .flags(wire::FLAGS_TYPE_REPLY)
        .fds(Fds::Memfds(1, 0x1000)),
    ];
    // Each case 20 times: a leak of one fd per request shows as 20 or more.
    let mut cases = Vec::new();
    for _ in 0..20 {
        for c in &rejected {
            cases.push(Case {
                name: c.name.clone(),
                cmd: c.cmd,
                flags: c.flags,
                payload: c.payload.clone(),
                fds: c.fds,
                errno: c.errno,
            });
        }
    }
    run_table(&mut r, "fd-leak", cases, serving);
    // msg_size below the header, with fds on it.
    for _ in 0..20 {
        let id = r.id();
        let fds = Fds::Memfds(2, 0x1000).make();
        let reply = r.exchange(&header(id, DMA_MAP, 8, 0), &borrow(&fds));
        check_error(&reply, id, DMA_MAP, EINVAL).unwrap();
    }
    r.assert_serving();
    wait_fds_back_to(connected, "fd count after rejected requests");
    drop(r);
    wait_fds_back_to(base, "fd count after the client left");
    let mut r = Raw::connect(&path);
    for _ in 0..20 {
        let id = r.id();
        let fds = Fds::Memfds(1, 0x1000).make();
        let reply = r.exchange(
            &message(id, DMA_MAP, 0, &dma_map(32, RW, 0, MAP_IOVA, 0x1000)),
            &borrow(&fds),
        );
        check_error(&reply, id, DMA_MAP, EINVAL).unwrap();
    }
    r.negotiate(&version_json("{}"));
    r.assert_serving();
    assert_eq!(server.context().dma.len(), 0);
    drop(r);
    wait_fds_back_to(base, "fd count after pre-negotiation DMA_MAPs with fds");
}

#[test]
fn clients_that_vanish_are_cleaned_up() {
    let _g = exclusive();
    let (server, path, events) = start("vanish");
    let ctx = server.context();
    let base = common::fd_count();
    type Vanish = fn(&mut Raw);
    let ways: [(&str, Vanish); 5] = [
        ("mid-header", |r| {
            r.send(&header(r.next_id, REGION_READ, 32, 0)[..8], &[])
        }),
        ("mid-header with fds", |r| {
            let fds = Fds::Memfds(2, 0x1000).make();
            r.send(&header(r.next_id, DMA_MAP, 48, 0)[..10], &borrow(&fds));
        }),
        ("mid-payload with an fd", |r| {
            let fds = Fds::Memfds(1, 0x1000).make();
            let m = message(
                r.next_id,
                DMA_MAP,
                0,
                &dma_map(32, RW, 0, 0x30_0000, 0x1000),
            );
            r.send(&m[..30], &borrow(&fds));
        }),
        ("after a request, before its reply", |r| {
            r.send(
                &message(r.next_id, REGION_READ, 0, &access(0, 0, 0x1000)),
                &[],
            )
        }),
        ("16 KiB write cut short", |r| {
            let m = message(
                r.next_id,
                REGION_WRITE,
                0,
                &cat(&[&access(0, 2, 0x4000), &vec![7; 0x4000]]),
            );
            r.send(&m[..0x3000], &[]);
        }),
    ];
    for (i, (what, vanish)) in ways.iter().enumerate() {
        let mut r = Raw::negotiated(&path);
        let memfd = new_memfd(0x4000);
        r.ok(
            DMA_MAP,
            &dma_map(32, RW, 0, MAP_IOVA, 0x4000),
            &[memfd.as_fd()],
        );
        drop(memfd);
        let efds = Fds::Eventfds(4).make();
        r.ok(
            SET_IRQS,
            &set_irqs(EVENTFD | TRIGGER, MSIX, 0, 4, &[]),
            &borrow(&efds),
        );
        drop(efds);
        vanish(&mut r);
        drop(r);
        wait_for(&format!("{what}: client state freed"), || {
            let (maps, connected) = (ctx.dma.len(), server.handle().stats().connected);
            let irq = (0..4).any(|v| ctx.irqs.state(MSIX, v).unwrap().has_eventfd);
            if maps == 0 && !connected && !irq {
                Ok(())
            } else {
                Err(format!(
                    "{maps} maps, connected {connected}, eventfds bound {irq}"
                ))
            }
        });
        wait_for(&format!("{what}: client_disconnected"), || {
            // Each round has the vanishing client and the client that checks the server after it.
            let n = events.disconnected.load(Ordering::SeqCst);
            if n == 2 * i as u64 + 1 {
                Ok(())
            } else {
                Err(format!("{n} disconnects"))
            }
        });
        wait_fds_back_to(base, &format!("{what}: fd count"));
        let mut next = Raw::negotiated(&path);
        next.assert_serving();
        drop(next);
        wait_for(&format!("{what}: the checking client leaves"), || {
            if server.handle().stats().connected {
                Err("still connected".into())
            } else {
                Ok(())
            }
        });
    }
}

/// The closing paths honour NO_REPLY too: the server closes without answering.
#[test]
fn no_reply_is_honoured_when_the_server_closes() {
    let _g = shared();
    let (_server, path, _events) = start("no-reply-close");
    let nr = wire::FLAGS_NO_REPLY;
    let mut failures = Vec::new();
    let r = Raw::negotiated(&path);
    r.send(&header(r.next_id, REGION_WRITE, MAX_MSG + 1, nr), &[]);
    if let Err(e) = r.expect_closed() {
        failures.push(format!("msg_size above the limit with NO_REPLY: {e}"));
    }
    drop(r);
    let r = Raw::connect(&path);
    r.send(
        &message(r.next_id, VERSION, nr, &version(1, 0, b"{}\0")),
        &[],
    );
    if let Err(e) = r.expect_closed() {
        failures.push(format!("VERSION major 1 with NO_REPLY: {e}"));
    }
    drop(r);
    Raw::negotiated(&path).assert_serving();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Limits taken from the server's configuration rather than the defaults.
#[test]
fn configured_limits_are_enforced() {
    let _g = shared();
    let config = ServerConfig {
        max_data_xfer_size: 4096,
        max_dma_maps: 4,
        ..ServerConfig::default()
    };
    let (server, path, _events) = common::start("limits", config);
    let mut r = Raw::negotiated(&path);
    for i in 0..4 {
        r.ok(
            DMA_MAP,
            &dma_map(32, RW, 0, MAP_IOVA + i * 0x1000, 0x1000),
            &[],
        );
    }
    let cases = vec![
        case(
            "MAP beyond max_dma_maps (5 > 4)",
            DMA_MAP,
            dma_map(32, RW, 0, 0x80_0000, 0x1000),
        ),
        case(
            "READ count above max_data_xfer_size (4097 > 4096)",
            REGION_READ,
            access(0, 2, 4097),
        ),
        case(
            "WRITE count above max_data_xfer_size (4097 > 4096)",
            REGION_WRITE,
            cat(&[&access(0, 2, 4097), &[3; 4097]]),
        ),
        case(
            "MIG_DATA_READ size above max_data_xfer_size",
            MIG_READ,
            u32s(&[8 + 4097, 4097]),
        ),
    ];
    run_table(&mut r, "limits", cases, serving);
    assert_eq!(server.context().dma.len(), 4);
    assert_eq!(
        r.read(2, 0, 8),
        [0; 8],
        "a refused REGION_WRITE reached BAR2"
    );
    // Controls: exactly the limit is fine, and a freed slot can be used again.
    assert_eq!(r.read(2, 0, 4096).len(), 4096);
    r.ok(DMA_UNMAP, &dma_unmap(24, 0, MAP_IOVA, 0x1000), &[]);
    r.ok(DMA_MAP, &dma_map(32, RW, 0, 0x80_0000, 0x1000), &[]);
    // This server's message limit is its largest legal message, a full WRITE_MULTI (16 + 8 +
    // 1024 * 24 bytes); above it, error and close.
    let limit = 16 + 8 + 1024 * 24;
    let id = r.id();
    let reply = r.exchange(&header(id, REGION_WRITE, limit + 1, 0), &[]);
    check_error(&reply, id, REGION_WRITE, EINVAL).unwrap();
    r.expect_closed().unwrap();
    drop(r);
    Raw::negotiated(&path).assert_serving();
}
