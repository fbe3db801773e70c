//! The vfio-user server: accepts clients on a socket path and serves one [`Device`].
//!
//! One client at a time (the protocol has one client per socket); when it leaves, its DMA maps
//! and IRQ eventfds are dropped, the device keeps its state, and the next client is accepted.
//! Every request is decoded and checked by [`crate::wire`] and against what the device reports
//! (region sizes, IRQ counts, negotiated limits) before the device sees it. A malformed message
//! gets an error reply with an errno and the connection goes on; only a message whose framing
//! cannot be trusted (a `msg_size` above the limit) or a client that breaks negotiation ends it.
//!
//! The server can also *send* DMA_READ/DMA_WRITE to the client for DMA maps that came without
//! an fd: on the twin socket when the client negotiated one, otherwise on the main socket,
//! interleaved with the client's requests as the spec allows.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use emudev_dma::{DmaLimits, DmaMapRequest, DmaProt, DmaTable, Iova, RemoteDma};
use rustix::event::{poll, EventfdFlags, PollFd, PollFlags};
use vfio_bindings::bindings::vfio;

use crate::device::{Device, DeviceContext, Errno, IrqInfo};
use crate::irq::IrqTable;
use crate::trace::{Channel, Direction, Side, TraceSwitch, Tracer};
use crate::transport::{MessageSocket, RawMessage, RecvError, RecvLimits, HEADER_SIZE};
use crate::wire::{
    self, Capabilities, Command, DecodeError, DeviceFeatureMsg, DeviceInfoMsg, DmaAccess, DmaUnmap,
    Header, IoFdEntry, IrqAction, IrqInfoMsg, IrqSetData, MessageBuilder, MigData, MigrationCap,
    RegionAccess, RegionInfoMsg, RegionIoFdsMsg, Request, SetIrqs, SparseMmapArea, TwinSocketCap,
    Version, WriteMulti,
};

/// The protocol minor version this server speaks; the reply carries `min(client, this)`.
pub const SERVER_MINOR: u16 = 2;

/// Limits and options a server negotiates with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest REGION/DMA READ/WRITE count we accept (and advertise).
    pub max_data_xfer_size: u64,
    /// Most fds we accept in one message (advertised as `max_msg_fds`).
    pub max_msg_fds: u32,
    /// Most DMA maps at once.
    pub max_dma_maps: u32,
    /// DMA page sizes (4 KiB).
    pub pgsizes: u64,
    /// Offer a twin socket to clients that support one.
    pub twin_socket: bool,
    /// Accept REGION_WRITE_MULTI from clients that offer it.
    pub write_multiple: bool,
    /// How long a server→client DMA request waits for its reply.
    pub dma_timeout: Duration,
    /// Message tracing: a switch to share (keep a clone to turn tracing on and off while the
    /// server runs); `None` gives the server its own switch, off, reachable with
    /// [`ServerHandle::trace`].
    pub trace: Option<Arc<TraceSwitch>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_data_xfer_size: wire::DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: 8,
            max_dma_maps: wire::DEFAULT_MAX_DMA_MAPS,
            pgsizes: wire::DEFAULT_PGSIZES,
            twin_socket: true,
            write_multiple: true,
            dma_timeout: Duration::from_secs(5),
            trace: None,
        }
    }
}

impl ServerConfig {
    fn recv_limits(&self) -> RecvLimits {
        // The largest legal message: REGION_WRITE of max_data_xfer_size, or a full WRITE_MULTI.
        let data = self.max_data_xfer_size as usize + HEADER_SIZE + RegionAccess::SIZE;
        let multi = HEADER_SIZE + 8 + WriteMulti::MAX_ENTRIES as usize * WriteMulti::ENTRY;
        RecvLimits {
            max_msg_size: data.max(multi),
            max_fds: self.max_msg_fds as usize,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerBindError {
    /// Something that is not a socket is at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A live server already listens on the path.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// bind/listen/chmod failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The stop eventfd could not be created.
    #[error("cannot create the stop eventfd: {0}")]
    StopFd(#[source] io::Error),
}

/// Counters a server keeps (read with [`ServerHandle::stats`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Clients accepted.
    pub clients: AtomicU64,
    /// Messages received.
    pub messages: AtomicU64,
    /// Requests answered with an error (or dropped, for NO_REPLY ones).
    pub errors: AtomicU64,
    /// Server→client DMA requests sent.
    pub dma_requests: AtomicU64,
}

/// A snapshot of [`ServerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStatsSnapshot {
    /// Clients accepted.
    pub clients: u64,
    /// Messages received.
    pub messages: u64,
    /// Error replies.
    pub errors: u64,
    /// Server→client DMA requests.
    pub dma_requests: u64,
    /// Is a client connected now?
    pub connected: bool,
}

struct Shared {
    stop_fd: OwnedFd,
    stopping: AtomicBool,
    current: Mutex<Option<MessageSocket>>,
    stats: ServerStats,
    trace: Arc<TraceSwitch>,
}

/// Stops a running server from another thread and reads its counters.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("stopping", &self.shared.stopping)
            .finish()
    }
}

impl ServerHandle {
    /// Asks the server to stop: wakes `accept`, and disconnects the current client.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // A failed eventfd write leaves the flag set, which the loop also checks.
        let _ = rustix::io::write(&self.shared.stop_fd, &1u64.to_ne_bytes());
        if let Some(s) = lock(&self.shared.current).as_ref() {
            let _ = s.shutdown();
        }
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStatsSnapshot {
        let s = &self.shared.stats;
        ServerStatsSnapshot {
            clients: s.clients.load(Ordering::Relaxed),
            messages: s.messages.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            dma_requests: s.dma_requests.load(Ordering::Relaxed),
            connected: lock(&self.shared.current).is_some(),
        }
    }

    /// The server's trace switch (every message of every client, both directions).
    pub fn trace(&self) -> Arc<TraceSwitch> {
        self.shared.trace.clone()
    }

    /// Starts (`Some`) or stops (`None`) tracing on the running server; returns the previous
    /// tracer, flushed.
    pub fn set_tracer(&self, tracer: Option<Arc<dyn Tracer>>) -> Option<Arc<dyn Tracer>> {
        self.shared.trace.set(tracer)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A vfio-user server for one device.
pub struct Server<D: Device> {
    listener: UnixListener,
    path: PathBuf,
    device: Arc<Mutex<D>>,
    ctx: DeviceContext,
    config: ServerConfig,
    shared: Arc<Shared>,
}

impl<D: Device> std::fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

impl<D: Device + 'static> Server<D> {
    /// Listens on `path` (mode 0600). A stale socket (nobody listening) is removed; a live one,
    /// or anything that is not a socket, is left alone and reported.
    pub fn bind(
        path: impl AsRef<Path>,
        device: D,
        config: ServerConfig,
    ) -> Result<Self, ServerBindError> {
        let path = path.as_ref().to_path_buf();
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_socket() => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(ServerBindError::InUse(path));
                }
                fs::remove_file(&path).map_err(|source| ServerBindError::Listen {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(_) => return Err(ServerBindError::NotASocket(path)),
            Err(_) => {}
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServerBindError::Listen {
            path: path.clone(),
            source,
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            ServerBindError::Listen {
                path: path.clone(),
                source,
            }
        })?;
        let stop_fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| ServerBindError::StopFd(e.into()))?;

        let info = device.info();
        let counts: Vec<u32> = (0..info.num_irqs)
            .map(|i| device.irq_info(i).map_or(0, |q| q.count))
            .collect();
        let dma = DmaTable::new(DmaLimits {
            max_maps: config.max_dma_maps as usize,
            page_size: config.pgsizes & config.pgsizes.wrapping_neg(),
            ..DmaLimits::default()
        });
        let ctx = DeviceContext {
            dma: Arc::new(dma),
            irqs: Arc::new(IrqTable::new(&counts)),
        };
        let trace = config.trace.clone().unwrap_or_default();
        Ok(Server {
            listener,
            path,
            device: Arc::new(Mutex::new(device)),
            ctx,
            config,
            shared: Arc::new(Shared {
                stop_fd,
                stopping: AtomicBool::new(false),
                current: Mutex::new(None),
                stats: ServerStats::default(),
                trace,
            }),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device (locked per message by the server).
    pub fn device(&self) -> Arc<Mutex<D>> {
        self.device.clone()
    }

    /// The device's DMA and IRQ handles.
    pub fn context(&self) -> DeviceContext {
        self.ctx.clone()
    }

    /// A handle to stop the server and read its counters.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves clients one after another until [`ServerHandle::stop`].
    pub fn run(&self) -> io::Result<()> {
        while let Some(stream) = self.accept()? {
            self.serve_client(stream);
        }
        Ok(())
    }

    /// Runs the server on its own thread.
    pub fn spawn(self) -> io::Result<RunningServer<D>> {
        let handle = self.handle();
        let device = self.device.clone();
        let ctx = self.ctx.clone();
        let join = thread::Builder::new()
            .name("vfio-user-server".into())
            .spawn(move || self.run())?;
        Ok(RunningServer {
            handle,
            device,
            ctx,
            join: Some(join),
        })
    }

    /// Waits for the next client; `None` once stopped.
    fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(&self.listener, PollFlags::IN),
                PollFd::new(&self.shared.stop_fd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if !fds[1].revents().is_empty() {
                return Ok(None);
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match self.listener.accept() {
                Ok((s, _)) => return Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves one connected client until it leaves (or the server stops).
    pub fn serve_client(&self, stream: UnixStream) {
        let sock = MessageSocket::new(stream);
        match sock.try_clone() {
            Ok(c) => *lock(&self.shared.current) = Some(c),
            Err(e) => {
                log::warn!("cannot track client socket: {e}");
                return;
            }
        }
        if self.shared.stopping.load(Ordering::SeqCst) {
            let _ = sock.shutdown();
        }
        self.shared.stats.clients.fetch_add(1, Ordering::Relaxed);
        let mut session = match Session::new(self, sock) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("client setup failed: {e}");
                *lock(&self.shared.current) = None;
                return;
            }
        };
        session.run();
        session.teardown();
        *lock(&self.shared.current) = None;
    }
}

impl<D: Device> Drop for Server<D> {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A server running on its own thread; [`RunningServer::stop`] joins it.
pub struct RunningServer<D: Device> {
    handle: ServerHandle,
    device: Arc<Mutex<D>>,
    ctx: DeviceContext,
    join: Option<JoinHandle<io::Result<()>>>,
}

impl<D: Device> std::fmt::Debug for RunningServer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("handle", &self.handle)
            .finish()
    }
}

impl<D: Device> RunningServer<D> {
    /// The stop/stats handle.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }
    /// The device.
    pub fn device(&self) -> Arc<Mutex<D>> {
        self.device.clone()
    }
    /// The device's DMA and IRQ handles.
    pub fn context(&self) -> DeviceContext {
        self.ctx.clone()
    }
    /// Stops the server, waits for its thread and removes the socket.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }
    fn stop_inner(&mut self) -> io::Result<()> {
        self.handle.stop();
        match self.join.take() {
            Some(j) => j
                .join()
                .map_err(|_| io::Error::other("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl<D: Device> Drop for RunningServer<D> {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

// ----- server → client DMA -----------------------------------------------------------------------

/// Sends DMA_READ/DMA_WRITE to the client and waits for the replies.
struct Outbound {
    main: MessageSocket,
    main_send: Mutex<()>,
    twin: Option<Mutex<MessageSocket>>,
    next_id: AtomicU16,
    /// Replies to server→client requests that arrived on the main socket, by msg_id.
    replies: Mutex<HashMap<u16, Option<RawMessage>>>,
    replies_cv: Condvar,
    /// Client requests read while the server thread itself waited for a DMA reply.
    backlog: Mutex<VecDeque<RawMessage>>,
    server_thread: ThreadId,
    closed: AtomicBool,
    max_xfer: u64,
    limits: RecvLimits,
    timeout: Duration,
    stats: Arc<Shared>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("twin", &self.twin.is_some())
            .field("max_xfer", &self.max_xfer)
            .finish()
    }
}

impl Outbound {
    fn send_main(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let _g = lock(&self.main_send);
        self.main.send(bytes, fds)
    }

    /// One request/reply exchange; returns the reply's payload.
    fn exchange(
        &self,
        cmd: Command,
        build: impl FnOnce(&mut MessageBuilder),
    ) -> io::Result<Vec<u8>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        self.stats
            .stats
            .dma_requests
            .fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut b = MessageBuilder::command(id, cmd);
        build(&mut b);
        let msg = b.finish();
        let trace = &self.stats.trace;
        let channel = if self.twin.is_some() {
            Channel::Twin
        } else {
            Channel::Main
        };
        trace.message(Side::Server, Direction::Send, channel, &msg, 0);
        let reply = if let Some(twin) = &self.twin {
            let s = lock(twin);
            s.send(&msg, &[])?;
            loop {
                let r = s.recv(self.limits);
                trace.received(Side::Server, Channel::Twin, &r);
                let r = r
                    .map_err(recv_to_io)?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                let h = Header::decode(&r.bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if h.is_reply() && h.msg_id == id {
                    break r;
                }
                log::warn!("twin socket: unexpected message {h:?} while waiting for {id}");
            }
        } else if thread::current().id() == self.server_thread {
            self.send_main(&msg, &[])?;
            self.pump_until(id)?
        } else {
            lock(&self.replies).insert(id, None);
            if let Err(e) = self.send_main(&msg, &[]) {
                lock(&self.replies).remove(&id);
                return Err(e);
            }
            let mut map = lock(&self.replies);
            let deadline = std::time::Instant::now() + self.timeout;
            loop {
                if let Some(Some(_)) = map.get(&id) {
                    break map
                        .remove(&id)
                        .flatten()
                        .ok_or_else(|| io::Error::other("reply vanished"))?;
                }
                if self.closed.load(Ordering::SeqCst) {
                    map.remove(&id);
                    return Err(io::Error::from(io::ErrorKind::NotConnected));
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    map.remove(&id);
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
                map = self
                    .replies_cv
                    .wait_timeout(map, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let h = Header::decode(&reply.bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if h.command != cmd as u16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply for another command",
            ));
        }
        if h.is_error() {
            let e = if h.error_no == 0 || h.error_no > 4096 {
                Errno::INVAL.raw_os_error()
            } else {
                h.error_no as i32
            };
            return Err(io::Error::from_raw_os_error(e));
        }
        let mut bytes = reply.bytes;
        bytes.drain(..HEADER_SIZE);
        Ok(bytes)
    }

    /// On the server thread without a twin socket: read the main socket until the reply with
    /// `id` comes, keeping client requests for later.
    fn pump_until(&self, id: u16) -> io::Result<RawMessage> {
        self.main.set_read_timeout(Some(self.timeout))?;
        let result = loop {
            let r = self.main.recv(self.limits);
            self.stats.trace.received(Side::Server, Channel::Main, &r);
            let r = match r {
                Ok(Some(r)) => r,
                Ok(None) => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Err(e) => break Err(recv_to_io(e)),
            };
            match Header::decode(&r.bytes) {
                Ok(h) if h.is_reply() && h.msg_id == id => break Ok(r),
                Ok(h) if h.is_reply() => {
                    log::warn!("unexpected reply id {} while waiting for {id}", h.msg_id)
                }
                _ => lock(&self.backlog).push_back(r),
            }
        };
        self.main.set_read_timeout(None)?;
        result
    }

    /// Routes a reply read by the server loop to the thread waiting for it.
    fn deliver(&self, msg: RawMessage, id: u16) -> bool {
        let mut map = lock(&self.replies);
        match map.get_mut(&id) {
            Some(slot @ None) => {
                *slot = Some(msg);
                self.replies_cv.notify_all();
                true
            }
            _ => false,
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = lock(&self.replies);
        self.replies_cv.notify_all();
    }
}

fn recv_to_io(e: RecvError) -> io::Error {
    match e {
        RecvError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl RemoteDma for Outbound {
    fn dma_read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_xfer as usize);
            let addr = iova
                .raw()
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let p = self.exchange(Command::DmaRead, |b| {
                DmaAccess {
                    address: addr,
                    count: n as u64,
                }
                .encode(b)
            })?;
            let (h, data) = DmaAccess::decode_read_reply(&p)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if h.address != addr || data.len() != n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "DMA_READ reply does not match the request",
                ));
            }
            buf[done..done + n].copy_from_slice(data);
            done += n;
        }
        Ok(())
    }

    fn dma_write(&self, iova: Iova, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(self.max_xfer as usize);
            let addr = iova
                .raw()
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let chunk = &data[done..done + n];
            let p = self.exchange(Command::DmaWrite, |b| {
                DmaAccess {
                    address: addr,
                    count: n as u64,
                }
                .encode(b);
                b.bytes(chunk);
            })?;
            DmaAccess::decode_write_reply(&p)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            done += n;
        }
        Ok(())
    }
}

// ----- one client session ------------------------------------------------------------------------

/// What VERSION settled.
#[derive(Debug, Clone)]
struct Negotiated {
    client: Capabilities,
    /// (flags, size) of each region, read once at negotiation: region accesses are checked
    /// against it without calling into the device.
    regions: Vec<Option<(u32, u64)>>,
}

/// The outcome of one request: a reply (payload and fds), or an errno.
enum Outcome {
    Reply(MessageBuilder, Vec<Arc<OwnedFd>>, Vec<OwnedFd>),
    Error(Errno),
    /// Reply, then close the connection (e.g. a VERSION we cannot accept).
    ErrorAndClose(Errno),
}

struct Session<'s, D: Device> {
    server: &'s Server<D>,
    sock: MessageSocket,
    negotiated: Option<Negotiated>,
    out: Option<Arc<Outbound>>,
    limits: RecvLimits,
}

impl<'s, D: Device + 'static> Session<'s, D> {
    fn new(server: &'s Server<D>, sock: MessageSocket) -> io::Result<Self> {
        Ok(Session {
            server,
            sock,
            negotiated: None,
            out: None,
            limits: server.config.recv_limits(),
        })
    }

    fn stats(&self) -> &ServerStats {
        &self.server.shared.stats
    }

    fn next_message(&mut self) -> Option<Result<RawMessage, RecvError>> {
        if let Some(out) = &self.out {
            if let Some(m) = lock(&out.backlog).pop_front() {
                return Some(Ok(m));
            }
        }
        // No poll here: `ServerHandle::stop` shuts the socket down, which ends a blocked recv.
        if self.server.shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let r = self.sock.recv(self.limits);
        self.server
            .shared
            .trace
            .received(Side::Server, Channel::Main, &r);
        r.transpose()
    }

    fn run(&mut self) {
        while let Some(next) = self.next_message() {
            let msg = match next {
                Ok(m) => m,
                Err(RecvError::Truncated { got, expected }) => {
                    log::info!("client left mid-message ({got} of {expected} bytes)");
                    return;
                }
                Err(RecvError::TooSmall { header, .. }) => {
                    self.stats().messages.fetch_add(1, Ordering::Relaxed);
                    self.reply_error_raw(&header, Errno::INVAL);
                    continue;
                }
                Err(RecvError::TooLarge { header, size, .. }) => {
                    self.stats().messages.fetch_add(1, Ordering::Relaxed);
                    log::warn!("message of {size} bytes exceeds the limit; closing the connection");
                    self.reply_error_raw(&header, Errno::INVAL);
                    return;
                }
                Err(RecvError::TooManyFds { bytes }) => {
                    self.stats().messages.fetch_add(1, Ordering::Relaxed);
                    self.reply_error_raw(&bytes, Errno::INVAL);
                    continue;
                }
                Err(RecvError::Io(e)) => {
                    log::info!("client connection error: {e}");
                    return;
                }
            };
            self.stats().messages.fetch_add(1, Ordering::Relaxed);
            if !self.handle(msg) {
                return;
            }
        }
    }

    /// An error reply built from raw header bytes (of a message we could not fully decode).
    fn reply_error_raw(&self, header: &[u8], errno: Errno) {
        self.stats().errors.fetch_add(1, Ordering::Relaxed);
        let Ok(h) = Header::decode(header) else {
            return;
        };
        if h.is_reply() {
            return;
        }
        if h.no_reply() {
            return;
        }
        self.send(&wire::error_reply(h.msg_id, h.command, errno), &[]);
    }

    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        self.server.shared.trace.message(
            Side::Server,
            Direction::Send,
            Channel::Main,
            bytes,
            fds.len(),
        );
        let r = match &self.out {
            Some(out) => out.send_main(bytes, fds),
            None => self.sock.send(bytes, fds),
        };
        if let Err(e) = r {
            log::info!("reply not sent: {e}");
        }
    }

    /// Handles one message; false ends the connection.
    fn handle(&mut self, msg: RawMessage) -> bool {
        let Ok(h) = Header::decode(&msg.bytes) else {
            return true;
        };
        if h.is_reply() {
            // A reply to one of our DMA requests (when another thread waits), else unsolicited.
            if let Some(out) = &self.out {
                if out.deliver(msg, h.msg_id) {
                    return true;
                }
            }
            log::warn!("unsolicited reply id {} command {}", h.msg_id, h.command);
            self.stats().errors.fetch_add(1, Ordering::Relaxed);
            // A Reply-type message sent as a command gets EINVAL (libvfio-user does the same).
            self.send(&wire::error_reply(h.msg_id, h.command, Errno::INVAL), &[]);
            return true;
        }
        let nfds = msg.fds.len();
        let outcome = match wire::decode_request(&msg.bytes, nfds) {
            Err(e) => {
                log::debug!("bad request id {} cmd {}: {e}", h.msg_id, h.command);
                Outcome::Error(e.errno())
            }
            Ok((_, req)) => self.dispatch(&h, req, msg.fds),
        };
        match outcome {
            Outcome::Reply(b, shared_fds, owned_fds) => {
                if !h.no_reply() {
                    let bytes = b.finish();
                    let mut fds: Vec<BorrowedFd<'_>> =
                        shared_fds.iter().map(|f| f.as_fd()).collect();
                    fds.extend(owned_fds.iter().map(|f| f.as_fd()));
                    self.send(&bytes, &fds);
                }
                true
            }
            Outcome::Error(errno) => {
                self.stats().errors.fetch_add(1, Ordering::Relaxed);
                if !h.no_reply() {
                    self.send(&wire::error_reply(h.msg_id, h.command, errno), &[]);
                }
                true
            }
            Outcome::ErrorAndClose(errno) => {
                self.stats().errors.fetch_add(1, Ordering::Relaxed);
                if !h.no_reply() {
                    self.send(&wire::error_reply(h.msg_id, h.command, errno), &[]);
                }
                false
            }
        }
    }

    fn dispatch(&mut self, h: &Header, req: Request<'_>, fds: Vec<OwnedFd>) -> Outcome {
        let Some(neg) = &self.negotiated else {
            return match req {
                Request::Version(v) => self.version(h, v),
                _ => Outcome::Error(Errno::INVAL),
            };
        };
        let max_xfer = self.server.config.max_data_xfer_size;
        let write_multiple = self.server.config.write_multiple && neg.client.write_multiple();
        let reply = || MessageBuilder::reply(h.msg_id, h.command);
        let ok = |b: MessageBuilder| Outcome::Reply(b, Vec::new(), Vec::new());
        let ctx = &self.server.ctx;
        let mut dev = lock(&self.server.device);
        let info = dev.info();
        match req {
            Request::Version(_) => Outcome::Error(Errno::INVAL),
            Request::DmaMap(m) => {
                let Some(prot) = DmaProt::from_bits(m.flags) else {
                    return Outcome::Error(Errno::INVAL);
                };
                let fd = fds.into_iter().next();
                let req = DmaMapRequest {
                    iova: Iova(m.address),
                    size: m.size,
                    prot,
                    file_offset: m.offset,
                    fd,
                };
                match ctx.dma.map(req) {
                    Ok(info) => {
                        dev.dma_mapped(ctx, &info);
                        ok(reply())
                    }
                    Err(e) => Outcome::Error(Errno::from_raw_os_error(e.errno())),
                }
            }
            Request::DmaUnmap(u) => {
                if u.flags & wire::DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
                    // Dirty tracking is not enabled on any map.
                    return Outcome::Error(Errno::INVAL);
                }
                if u.flags & wire::DMA_UNMAP_FLAG_ALL != 0 {
                    for m in ctx.dma.unmap_all() {
                        dev.dma_unmapped(ctx, &m);
                    }
                } else {
                    match ctx.dma.unmap(Iova(u.address), u.size) {
                        Ok(m) => dev.dma_unmapped(ctx, &m),
                        Err(e) => return Outcome::Error(Errno::from_raw_os_error(e.errno())),
                    }
                }
                let mut b = reply();
                DmaUnmap {
                    argsz: DmaUnmap::SIZE as u32,
                    ..u
                }
                .encode(&mut b);
                ok(b)
            }
            Request::DeviceGetInfo(_) => {
                let mut b = reply();
                DeviceInfoMsg {
                    argsz: DeviceInfoMsg::SIZE as u32,
                    flags: info.flags,
                    num_regions: info.num_regions,
                    num_irqs: info.num_irqs,
                }
                .encode(&mut b);
                ok(b)
            }
            Request::GetRegionInfo(r) => {
                if r.index >= info.num_regions {
                    return Outcome::Error(Errno::INVAL);
                }
                let Some(ri) = dev.region_info(r.index) else {
                    return Outcome::Error(Errno::INVAL);
                };
                let mut msg = RegionInfoMsg {
                    index: r.index,
                    flags: ri.flags,
                    size: ri.size,
                    ..Default::default()
                };
                let mut fds = Vec::new();
                // A client that cannot receive an fd gets the region as trapped-only.
                let can_take_fd = neg.client.max_msg_fds() >= 1;
                if let Some(mm) = ri.mmap.as_ref().filter(|_| ri.size > 0 && can_take_fd) {
                    msg.flags |= vfio::VFIO_REGION_INFO_FLAG_MMAP;
                    msg.offset = mm.file_offset;
                    msg.sparse = mm
                        .sparse
                        .iter()
                        .map(|a| SparseMmapArea {
                            offset: a.offset,
                            size: a.size,
                        })
                        .collect();
                    if msg.sparse.is_empty() || r.argsz as usize >= msg.full_size() {
                        fds.push(mm.fd.clone());
                    }
                }
                let mut b = reply();
                msg.encode_reply(r.argsz, &mut b);
                Outcome::Reply(b, fds, Vec::new())
            }
            Request::GetRegionIoFds(r) => {
                if r.index >= info.num_regions {
                    return Outcome::Error(Errno::INVAL);
                }
                let Some(list) = dev.region_io_fds(r.index).filter(|l| !l.is_empty()) else {
                    return Outcome::Error(Errno::INVAL);
                };
                // An fd behind several entries (one eventfd for a queue pair's two doorbells,
                // say) is sent once and the entries share its fd_index.
                let mut fds: Vec<Arc<OwnedFd>> = Vec::new();
                let index_of: Vec<u32> = list
                    .iter()
                    .map(|e| {
                        let i = fds
                            .iter()
                            .position(|f| Arc::ptr_eq(f, &e.fd))
                            .unwrap_or_else(|| {
                                fds.push(e.fd.clone());
                                fds.len() - 1
                            });
                        i as u32
                    })
                    .collect();
                if fds.len() > neg.client.max_msg_fds() as usize {
                    return Outcome::Error(Errno::INVAL);
                }
                let msg = RegionIoFdsMsg {
                    index: r.index,
                    entries: list
                        .iter()
                        .zip(&index_of)
                        .map(|(e, &fd_index)| IoFdEntry {
                            offset: e.offset,
                            size: e.size,
                            fd_index,
                            kind: wire::IO_FD_TYPE_IOEVENTFD,
                            flags: e.flags,
                            datamatch: e.datamatch,
                        })
                        .collect(),
                    ..Default::default()
                };
                let mut b = reply();
                let with = msg.encode_reply(r.argsz, &mut b);
                let fds = if with { fds } else { Vec::new() };
                Outcome::Reply(b, fds, Vec::new())
            }
            Request::GetIrqInfo(q) => {
                if q.index >= info.num_irqs {
                    return Outcome::Error(Errno::INVAL);
                }
                let Some(ii) = dev.irq_info(q.index) else {
                    return Outcome::Error(Errno::INVAL);
                };
                let mut b = reply();
                IrqInfoMsg {
                    argsz: IrqInfoMsg::SIZE as u32,
                    flags: ii.flags,
                    index: q.index,
                    count: ii.count,
                }
                .encode(&mut b);
                ok(b)
            }
            Request::SetIrqs(s) => {
                if s.index >= info.num_irqs {
                    return Outcome::Error(Errno::INVAL);
                }
                let ii = dev
                    .irq_info(s.index)
                    .unwrap_or(IrqInfo { flags: 0, count: 0 });
                match set_irqs(&ctx.irqs, s.index, ii, &s, fds) {
                    Ok(()) => {
                        dev.irqs_changed(ctx, s.index);
                        ok(reply())
                    }
                    Err(e) => Outcome::Error(e),
                }
            }
            Request::RegionRead(a) => {
                if let Err(e) =
                    check_access(&neg.regions, a, max_xfer, vfio::VFIO_REGION_INFO_FLAG_READ)
                {
                    return Outcome::Error(e);
                }
                let mut b = reply();
                a.encode(&mut b);
                let start = b.buf().len();
                b.buf().resize(start + a.count as usize, 0);
                if a.count > 0 {
                    if let Err(e) = dev.region_read(ctx, a.region, a.offset, &mut b.buf()[start..])
                    {
                        return Outcome::Error(e);
                    }
                }
                ok(b)
            }
            Request::RegionWrite(a, data) => {
                if let Err(e) =
                    check_access(&neg.regions, a, max_xfer, vfio::VFIO_REGION_INFO_FLAG_WRITE)
                {
                    return Outcome::Error(e);
                }
                if a.count > 0 {
                    if let Err(e) = dev.region_write(ctx, a.region, a.offset, data) {
                        return Outcome::Error(e);
                    }
                }
                let mut b = reply();
                a.encode(&mut b);
                ok(b)
            }
            Request::DeviceReset => match dev.reset(ctx) {
                Ok(()) => ok(reply()),
                Err(e) => Outcome::Error(e),
            },
            Request::RegionWriteMulti(w) => {
                if !write_multiple {
                    return Outcome::Error(Errno::INVAL);
                }
                for e in &w.entries {
                    let a = RegionAccess {
                        offset: e.offset,
                        region: e.region,
                        count: e.count,
                    };
                    if let Err(err) =
                        check_access(&neg.regions, a, max_xfer, vfio::VFIO_REGION_INFO_FLAG_WRITE)
                    {
                        return Outcome::Error(err);
                    }
                }
                for e in &w.entries {
                    if let Err(err) =
                        dev.region_write(ctx, e.region, e.offset, &e.data[..e.count as usize])
                    {
                        return Outcome::Error(err);
                    }
                }
                let mut b = reply();
                b.fixed(8).put_u64(0, w.entries.len() as u64);
                ok(b)
            }
            Request::DeviceFeature(f) => match dev.device_feature(ctx, f.flags, &f.data) {
                Ok(data) => {
                    let argsz = (DeviceFeatureMsg::FIXED + data.len()) as u32;
                    if data.len() > max_xfer as usize
                        || (f.argsz < argsz && f.flags & vfio::VFIO_DEVICE_FEATURE_GET != 0)
                    {
                        return Outcome::Error(Errno::INVAL);
                    }
                    let mut b = reply();
                    DeviceFeatureMsg {
                        argsz,
                        flags: f.flags,
                        data,
                    }
                    .encode(&mut b);
                    ok(b)
                }
                Err(e) => Outcome::Error(e),
            },
            Request::MigDataRead(m) => {
                if m.size as u64 > max_xfer {
                    return Outcome::Error(Errno::INVAL);
                }
                match dev.mig_data_read(ctx, m.size) {
                    Ok(data) if data.len() <= m.size as usize => {
                        let mut b = reply();
                        MigData {
                            argsz: (MigData::FIXED + data.len()) as u32,
                            size: data.len() as u32,
                            data,
                        }
                        .encode(&mut b);
                        ok(b)
                    }
                    Ok(_) => Outcome::Error(Errno::INVAL),
                    Err(e) => Outcome::Error(e),
                }
            }
            Request::MigDataWrite(m) => match dev.mig_data_write(ctx, &m.data) {
                Ok(()) => ok(reply()),
                Err(e) => Outcome::Error(e),
            },
        }
    }

    fn version(&mut self, h: &Header, v: Version) -> Outcome {
        if v.major != 0 {
            return Outcome::ErrorAndClose(Errno::INVAL);
        }
        let client = v.caps.unwrap_or_default();
        let cfg = &self.server.config;
        let twin = cfg.twin_socket && client.twin_socket() && client.max_msg_fds() >= 1;
        let mut caps = Capabilities {
            max_msg_fds: Some(cfg.max_msg_fds),
            max_data_xfer_size: Some(cfg.max_data_xfer_size),
            max_dma_maps: Some(cfg.max_dma_maps),
            pgsizes: Some(cfg.pgsizes),
            twin_socket: None,
            write_multiple: (cfg.write_multiple && client.write_multiple()).then_some(true),
            migration: client.migration.map(|_| MigrationCap {
                pgsize: Some(cfg.pgsizes),
                max_bitmap_size: None,
            }),
        };
        let mut owned = Vec::new();
        let mut twin_sock = None;
        if twin {
            match MessageSocket::pair() {
                Ok((ours, theirs)) => {
                    // A DMA request on the twin socket waits at most `dma_timeout` for its reply.
                    if let Err(e) = ours.set_read_timeout(Some(cfg.dma_timeout)) {
                        log::warn!("twin socket timeout: {e}");
                    }
                    caps.twin_socket = Some(TwinSocketCap {
                        supported: true,
                        fd_index: Some(0),
                    });
                    owned.push(OwnedFd::from(theirs));
                    twin_sock = Some(ours);
                }
                Err(e) => log::warn!("no twin socket: {e}"),
            }
        }
        let main = match self.sock.try_clone() {
            Ok(s) => s,
            Err(_) => return Outcome::ErrorAndClose(Errno::NOMEM),
        };
        let out = Arc::new(Outbound {
            main,
            main_send: Mutex::new(()),
            twin: twin_sock.map(Mutex::new),
            next_id: AtomicU16::new(0x8000),
            replies: Mutex::new(HashMap::new()),
            replies_cv: Condvar::new(),
            backlog: Mutex::new(VecDeque::new()),
            server_thread: thread::current().id(),
            closed: AtomicBool::new(false),
            max_xfer: client
                .max_data_xfer_size()
                .clamp(1, cfg.max_data_xfer_size.max(4096)),
            limits: self.limits,
            timeout: cfg.dma_timeout,
            stats: self.server.shared.clone(),
        });
        self.server
            .ctx
            .dma
            .set_remote(Some(out.clone() as Arc<dyn RemoteDma>));
        self.out = Some(out);
        let regions = {
            let dev = lock(&self.server.device);
            (0..dev.info().num_regions.min(1024))
                .map(|i| dev.region_info(i).map(|r| (r.flags, r.size)))
                .collect()
        };
        self.negotiated = Some(Negotiated { client, regions });
        let mut b = MessageBuilder::reply(h.msg_id, h.command);
        Version {
            major: 0,
            minor: v.minor.min(SERVER_MINOR),
            caps: Some(caps),
        }
        .encode(&mut b);
        lock(&self.server.device).client_connected(&self.server.ctx);
        Outcome::Reply(b, Vec::new(), owned)
    }

    /// The client left: drop its DMA maps and eventfds, keep the device's state.
    fn teardown(&mut self) {
        if let Some(out) = self.out.take() {
            out.close();
        }
        let ctx = &self.server.ctx;
        ctx.dma.set_remote(None);
        let mut dev = lock(&self.server.device);
        for m in ctx.dma.unmap_all() {
            dev.dma_unmapped(ctx, &m);
        }
        ctx.irqs.clear_all();
        if self.negotiated.is_some() {
            dev.client_disconnected(ctx);
        }
    }
}

/// Checks a region access against the device's region table and the transfer limit.
fn check_access(
    regions: &[Option<(u32, u64)>],
    a: RegionAccess,
    max_xfer: u64,
    need: u32,
) -> Result<(), Errno> {
    if a.count as u64 > max_xfer {
        return Err(Errno::INVAL);
    }
    let (flags, size) = regions
        .get(a.region as usize)
        .copied()
        .flatten()
        .ok_or(Errno::INVAL)?;
    let end = a.offset.checked_add(a.count as u64).ok_or(Errno::INVAL)?;
    if end > size || flags & need == 0 {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// Applies a checked SET_IRQS to the IRQ table.
fn set_irqs(
    irqs: &IrqTable,
    index: u32,
    ii: IrqInfo,
    s: &SetIrqs,
    fds: Vec<OwnedFd>,
) -> Result<(), Errno> {
    let is_err_or_req =
        index == vfio::VFIO_PCI_ERR_IRQ_INDEX || index == vfio::VFIO_PCI_REQ_IRQ_INDEX;
    if is_err_or_req && (s.action != IrqAction::Trigger || s.count > 1) {
        return Err(Errno::INVAL);
    }
    if s.count == 0 {
        if s.start != 0 || s.action != IrqAction::Trigger || s.data != IrqSetData::None {
            return Err(Errno::INVAL);
        }
        irqs.disable(index);
        return Ok(());
    }
    let end = s.start.checked_add(s.count).ok_or(Errno::INVAL)?;
    if s.start >= ii.count || end > ii.count {
        return Err(Errno::INVAL);
    }
    match (&s.action, &s.data) {
        (IrqAction::Trigger, IrqSetData::Eventfd) => {
            let v: Vec<Option<OwnedFd>> = if fds.is_empty() {
                (0..s.count).map(|_| None).collect()
            } else {
                fds.into_iter().map(Some).collect()
            };
            irqs.set_eventfds(index, s.start, v)
        }
        (IrqAction::Trigger, IrqSetData::None) => {
            for v in s.start..end {
                ignore_noent(irqs.trigger(index, v))?;
            }
            Ok(())
        }
        (IrqAction::Trigger, IrqSetData::Bool(b)) => {
            for (i, &on) in b.iter().enumerate() {
                if on {
                    ignore_noent(irqs.trigger(index, s.start + i as u32))?;
                }
            }
            Ok(())
        }
        (IrqAction::Mask | IrqAction::Unmask, IrqSetData::None) => {
            if ii.flags & vfio::VFIO_IRQ_INFO_MASKABLE == 0 {
                return Err(Errno::INVAL);
            }
            irqs.set_masked(index, s.start, s.count, s.action == IrqAction::Mask)
        }
        (IrqAction::Mask | IrqAction::Unmask, IrqSetData::Bool(b)) => {
            if ii.flags & vfio::VFIO_IRQ_INFO_MASKABLE == 0 {
                return Err(Errno::INVAL);
            }
            for (i, &on) in b.iter().enumerate() {
                if on {
                    irqs.set_masked(index, s.start + i as u32, 1, s.action == IrqAction::Mask)?;
                }
            }
            Ok(())
        }
        // Unmask/mask through an eventfd (KVM resamplefd) is not supported.
        (IrqAction::Mask | IrqAction::Unmask, IrqSetData::Eventfd) => Err(Errno::INVAL),
    }
}

/// A trigger with no eventfd bound signals nobody; that is not an error for SET_IRQS.
fn ignore_noent(r: Result<bool, Errno>) -> Result<(), Errno> {
    match r {
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

impl From<DecodeError> for Errno {
    fn from(e: DecodeError) -> Self {
        e.errno()
    }
}
