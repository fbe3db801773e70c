//! The vfio-user client: the VMM's side of the socket.
//!
//! [`Client::connect`] negotiates the version and capabilities, then reads the device info and
//! every region's info. From there the client can mmap mappable (sparse) regions, read and
//! write regions (directly through a mapping when the range is mapped, by message otherwise),
//! bind eventfds to IRQs, allocate memfd-backed memory and DMA-map it for the device (with or
//! without passing the fd), and reset the device.
//!
//! The server may send DMA_READ/DMA_WRITE at any time for memory mapped without an fd. They are
//! served from the client's own copy of that memory: inline while the client waits for a reply
//! on the main socket, and by a background thread on the twin socket when one was negotiated.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use emudev_dma::{DmaAccessError, DmaProt, SharedMemory};
use rustix::event::{eventfd, EventfdFlags};
use vfio_bindings::bindings::vfio;

use crate::device::{DeviceInfo, Errno, IrqInfo, SparseArea};
use crate::trace::{Channel, Direction, Side, TraceSwitch, Tracer};
use crate::transport::{MessageSocket, RawMessage, RecvError, RecvLimits, HEADER_SIZE};
use crate::wire::{
    self, Capabilities, Command, DecodeError, DeviceFeatureMsg, DeviceInfoMsg, DmaAccess, DmaMap,
    DmaUnmap, Header, IoFdEntry, IrqAction, IrqInfoMsg, IrqSetData, MessageBuilder, MigData,
    MigrationCap, RegionAccess, RegionInfoMsg, RegionIoFdsMsg, SetIrqs, TwinSocketCap, Version,
    WriteMulti, WriteMultiEntry,
};

/// What a client offers in negotiation.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Most fds we accept in one message.
    pub max_msg_fds: u32,
    /// Largest DMA_READ/WRITE we accept from the server.
    pub max_data_xfer_size: u64,
    /// Ask for a twin socket for server→client DMA messages.
    pub twin_socket: bool,
    /// Offer REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// How long to wait for any reply.
    pub timeout: Duration,
    /// Minor version proposed.
    pub minor: u16,
    /// Message tracing from the first message (VERSION) on: a switch to share; `None` gives
    /// the client its own switch, off ([`Client::set_tracer`] turns it on later).
    pub trace: Option<Arc<TraceSwitch>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_msg_fds: 16,
            max_data_xfer_size: wire::DEFAULT_MAX_DATA_XFER_SIZE,
            twin_socket: false,
            write_multiple: true,
            timeout: Duration::from_secs(5),
            minor: 0,
            trace: None,
        }
    }
}

/// What went wrong in a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed, or the server closed the connection.
    #[error("{cmd}: transport: {source}")]
    Transport {
        /// The command in flight.
        cmd: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The server answered with an error reply.
    #[error("{cmd}: server replied {errno}")]
    Server {
        /// The command.
        cmd: &'static str,
        /// The errno of the reply.
        errno: Errno,
    },
    /// The reply did not decode or did not match the request.
    #[error("{cmd}: bad reply: {reason}")]
    BadReply {
        /// The command.
        cmd: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The server's VERSION reply is not acceptable.
    #[error("version negotiation failed: {0}")]
    Negotiation(String),
    /// The request is invalid before it is sent (bad index, out-of-range access, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Client memory could not be allocated or accessed.
    #[error("memory: {0}")]
    Memory(String),
}

impl ClientError {
    /// The errno this error corresponds to, for errno-style callers.
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Server { errno, .. } => *errno,
            ClientError::Connect { source, .. } | ClientError::Transport { source, .. } => source
                .raw_os_error()
                .map(Errno::from_raw_os_error)
                .unwrap_or(Errno::IO),
            ClientError::BadReply { .. } | ClientError::Negotiation(_) => Errno::PROTO,
            ClientError::Invalid(_) => Errno::INVAL,
            ClientError::Memory(_) => Errno::NOMEM,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

fn bad(cmd: Command, e: DecodeError) -> ClientError {
    ClientError::BadReply {
        cmd: cmd.name(),
        reason: e.to_string(),
    }
}

/// What the client knows about one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDesc {
    /// Region index.
    pub index: u32,
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// mmap offset in the region's fd.
    pub file_offset: u64,
    /// Sparse areas (empty with MMAP set = the whole region is mappable).
    pub sparse: Vec<SparseArea>,
    /// Whether the server sent an fd for mmap.
    pub has_fd: bool,
}

impl RegionDesc {
    /// Readable?
    pub fn readable(&self) -> bool {
        self.flags & vfio::VFIO_REGION_INFO_FLAG_READ != 0
    }
    /// Writable?
    pub fn writable(&self) -> bool {
        self.flags & vfio::VFIO_REGION_INFO_FLAG_WRITE != 0
    }
    /// Mappable?
    pub fn mappable(&self) -> bool {
        self.flags & vfio::VFIO_REGION_INFO_FLAG_MMAP != 0 && self.has_fd
    }
    /// The mappable areas (the whole region when no sparse areas are listed).
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if !self.mappable() {
            Vec::new()
        } else if self.sparse.is_empty() {
            vec![SparseArea {
                offset: 0,
                size: self.size,
            }]
        } else {
            self.sparse.clone()
        }
    }
}

/// One mmapped area of a region.
#[derive(Debug)]
struct MappedArea {
    offset: u64,
    size: u64,
    mem: SharedMemory,
}

/// A block of client memory made available to the device for DMA.
#[derive(Debug, Clone)]
pub struct DmaBuffer {
    iova: u64,
    mem: Arc<SharedMemory>,
    shared_fd: bool,
}

impl DmaBuffer {
    /// First IOVA.
    pub fn iova(&self) -> u64 {
        self.iova
    }
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.mem.len()
    }
    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }
    /// Whether the fd was passed to the server (else it reaches this memory by message).
    pub fn fd_shared(&self) -> bool {
        self.shared_fd
    }
    /// The memory itself (copies and atomics at offsets).
    pub fn memory(&self) -> &SharedMemory {
        &self.mem
    }
    /// Copies out bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DmaAccessError> {
        self.mem.read_at(offset, buf)
    }
    /// Copies bytes in at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), DmaAccessError> {
        self.mem.write_at(offset, data)
    }
}

/// Client memory by IOVA, used to serve the server's DMA_READ/DMA_WRITE.
#[derive(Debug, Default)]
struct ClientMemory {
    bufs: Mutex<BTreeMap<u64, Arc<SharedMemory>>>,
}

impl ClientMemory {
    fn find(&self, addr: u64, len: u64) -> Option<(Arc<SharedMemory>, u64)> {
        let bufs = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
        let (&start, mem) = bufs.range(..=addr).next_back()?;
        let off = addr - start;
        (off.checked_add(len)? <= mem.len()).then(|| (mem.clone(), off))
    }

    /// Serves one server→client command; returns the reply bytes.
    fn serve(&self, h: &Header, payload: &[u8], max_xfer: u64) -> Vec<u8> {
        let cmd = h.cmd();
        let result = match cmd {
            Some(Command::DmaRead) => DmaAccess::decode_read(payload)
                .map_err(|e| e.errno())
                .and_then(|a| {
                    if a.count > max_xfer {
                        return Err(Errno::INVAL);
                    }
                    let (mem, off) = self.find(a.address, a.count).ok_or(Errno::FAULT)?;
                    let mut b = MessageBuilder::reply(h.msg_id, h.command);
                    a.encode(&mut b);
                    let start = b.buf().len();
                    b.buf().resize(start + a.count as usize, 0);
                    mem.read_at(off, &mut b.buf()[start..])
                        .map_err(|_| Errno::FAULT)?;
                    Ok(b.finish())
                }),
            Some(Command::DmaWrite) => DmaAccess::decode_write(payload)
                .map_err(|e| e.errno())
                .and_then(|(a, data)| {
                    if a.count > max_xfer {
                        return Err(Errno::INVAL);
                    }
                    let (mem, off) = self.find(a.address, a.count).ok_or(Errno::FAULT)?;
                    mem.write_at(off, data).map_err(|_| Errno::FAULT)?;
                    let mut b = MessageBuilder::reply(h.msg_id, h.command);
                    a.encode(&mut b);
                    Ok(b.finish())
                }),
            _ => Err(Errno::NOSYS),
        };
        result.unwrap_or_else(|e| wire::error_reply(h.msg_id, h.command, e))
    }
}

/// A connected vfio-user client.
#[derive(Debug)]
pub struct Client {
    sock: MessageSocket,
    next_id: u16,
    config: ClientConfig,
    server_minor: u16,
    server_caps: Capabilities,
    info: DeviceInfo,
    regions: Vec<RegionDesc>,
    region_fds: BTreeMap<u32, OwnedFd>,
    mapped: BTreeMap<u32, Vec<MappedArea>>,
    memory: Arc<ClientMemory>,
    twin: Option<TwinServer>,
    limits: RecvLimits,
    /// Server→client commands served inline on the main socket.
    served_inline: u64,
    /// Message tracing (shared with the twin-socket thread).
    trace: Arc<TraceSwitch>,
}

#[derive(Debug)]
struct TwinServer {
    stop: Arc<AtomicBool>,
    sock: MessageSocket,
    join: Option<JoinHandle<()>>,
}

impl Drop for TwinServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Client {
    /// Connects to `path` with the default configuration.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Self::connect_with(path, ClientConfig::default())
    }

    /// Connects, negotiates, and reads the device and region info.
    pub fn connect_with(path: impl AsRef<Path>, config: ClientConfig) -> Result<Client> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_stream(stream, config)
    }

    /// Same as [`Client::connect_with`] over an already connected stream.
    pub fn from_stream(stream: UnixStream, config: ClientConfig) -> Result<Client> {
        let sock = MessageSocket::new(stream);
        sock.set_read_timeout(Some(config.timeout))
            .map_err(|source| ClientError::Transport {
                cmd: "connect",
                source,
            })?;
        let limits = RecvLimits {
            max_msg_size: (config.max_data_xfer_size as usize + 4096).max(1 << 16),
            max_fds: config.max_msg_fds as usize,
        };
        let trace = config.trace.clone().unwrap_or_default();
        let mut c = Client {
            sock,
            next_id: 0,
            config,
            server_minor: 0,
            server_caps: Capabilities::default(),
            info: DeviceInfo {
                flags: 0,
                num_regions: 0,
                num_irqs: 0,
            },
            regions: Vec::new(),
            region_fds: BTreeMap::new(),
            mapped: BTreeMap::new(),
            memory: Arc::new(ClientMemory::default()),
            twin: None,
            limits,
            served_inline: 0,
            trace,
        };
        c.negotiate()?;
        c.info = c.get_device_info()?;
        for i in 0..c.info.num_regions.min(256) {
            let (desc, fd) = c.get_region_info(i)?;
            if let Some(fd) = fd {
                c.region_fds.insert(i, fd);
            }
            c.regions.push(desc);
        }
        Ok(c)
    }

    fn negotiate(&mut self) -> Result<()> {
        let caps = Capabilities {
            max_msg_fds: Some(self.config.max_msg_fds),
            max_data_xfer_size: Some(self.config.max_data_xfer_size),
            max_dma_maps: Some(wire::DEFAULT_MAX_DMA_MAPS),
            pgsizes: Some(wire::DEFAULT_PGSIZES),
            twin_socket: self.config.twin_socket.then_some(TwinSocketCap {
                supported: true,
                fd_index: None,
            }),
            write_multiple: self.config.write_multiple.then_some(true),
            migration: Some(MigrationCap {
                pgsize: Some(wire::DEFAULT_PGSIZES),
                max_bitmap_size: None,
            }),
        };
        let minor = self.config.minor;
        let (p, mut fds) = self.request(Command::Version, &[], |b| {
            Version {
                major: 0,
                minor,
                caps: Some(caps),
            }
            .encode(b)
        })?;
        let v = Version::decode(&p).map_err(|e| ClientError::Negotiation(e.to_string()))?;
        if v.major != 0 || v.minor > minor {
            return Err(ClientError::Negotiation(format!(
                "server replied version {}.{} to 0.{minor}",
                v.major, v.minor
            )));
        }
        let server = v.caps.unwrap_or_default();
        if server.max_msg_fds() > wire::MAX_MSG_FDS_LIMIT {
            return Err(ClientError::Negotiation("max_msg_fds out of range".into()));
        }
        self.server_minor = v.minor;
        if let Some(t) = server.twin_socket.filter(|t| t.supported) {
            if !self.config.twin_socket {
                return Err(ClientError::Negotiation(
                    "twin socket set up though not offered".into(),
                ));
            }
            let idx = t
                .fd_index
                .ok_or_else(|| ClientError::Negotiation("twin socket without fd_index".into()))?
                as usize;
            if idx >= fds.len() {
                return Err(ClientError::Negotiation(
                    "twin socket fd_index without an fd".into(),
                ));
            }
            let fd = fds.swap_remove(idx);
            let sock = MessageSocket::from_owned_fd(fd)
                .map_err(|e| ClientError::Negotiation(format!("twin socket: {e}")))?;
            self.twin = Some(self.spawn_twin(sock, server.max_data_xfer_size())?);
        }
        self.server_caps = server;
        Ok(())
    }

    fn spawn_twin(&self, sock: MessageSocket, _server_xfer: u64) -> Result<TwinServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let memory = self.memory.clone();
        let reader = sock.try_clone().map_err(|source| ClientError::Transport {
            cmd: "twin socket",
            source,
        })?;
        let limits = self.limits;
        let max_xfer = self.config.max_data_xfer_size;
        let stop2 = stop.clone();
        let trace = self.trace.clone();
        let join = std::thread::Builder::new()
            .name("vfio-user-twin".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    let msg = reader.recv(limits);
                    trace.received(Side::Client, Channel::Twin, &msg);
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) | Err(_) => break,
                    };
                    let Ok(h) = Header::decode(&msg.bytes) else {
                        break;
                    };
                    if !h.is_command() {
                        continue;
                    }
                    let reply = memory.serve(&h, &msg.bytes[HEADER_SIZE..], max_xfer);
                    trace.message(Side::Client, Direction::Send, Channel::Twin, &reply, 0);
                    if reader.send(&reply, &[]).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| ClientError::Transport {
                cmd: "twin socket",
                source,
            })?;
        Ok(TwinServer {
            stop,
            sock,
            join: Some(join),
        })
    }

    /// Sends a command and waits for its reply, serving server→client DMA commands meanwhile.
    /// Returns the reply payload and fds.
    fn request(
        &mut self,
        cmd: Command,
        fds: &[BorrowedFd<'_>],
        build: impl FnOnce(&mut MessageBuilder),
    ) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut b = MessageBuilder::command(id, cmd);
        build(&mut b);
        let bytes = b.finish();
        self.trace.message(
            Side::Client,
            Direction::Send,
            Channel::Main,
            &bytes,
            fds.len(),
        );
        self.sock
            .send(&bytes, fds)
            .map_err(|source| ClientError::Transport {
                cmd: cmd.name(),
                source,
            })?;
        let reply = self.wait_reply(id, cmd.name())?;
        let h = Header::decode(&reply.bytes).map_err(|e| bad(cmd, e))?;
        if h.command != cmd as u16 {
            return Err(ClientError::BadReply {
                cmd: cmd.name(),
                reason: format!("reply for command {}", h.command),
            });
        }
        if h.is_error() {
            let errno = if h.error_no == 0 || h.error_no > 4096 {
                Errno::INVAL
            } else {
                Errno::from_raw_os_error(h.error_no as i32)
            };
            return Err(ClientError::Server {
                cmd: cmd.name(),
                errno,
            });
        }
        let mut p = reply.bytes;
        p.drain(..HEADER_SIZE);
        Ok((p, reply.fds))
    }

    fn wait_reply(&mut self, id: u16, cmd: &'static str) -> Result<RawMessage> {
        loop {
            let msg = self.sock.recv(self.limits);
            self.trace.received(Side::Client, Channel::Main, &msg);
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(ClientError::Transport {
                        cmd,
                        source: io::Error::from(io::ErrorKind::UnexpectedEof),
                    });
                }
                Err(RecvError::Io(source)) => return Err(ClientError::Transport { cmd, source }),
                Err(e) => {
                    return Err(ClientError::BadReply {
                        cmd,
                        reason: e.to_string(),
                    })
                }
            };
            let h = Header::decode(&msg.bytes).map_err(|e| ClientError::BadReply {
                cmd,
                reason: e.to_string(),
            })?;
            if h.is_command() {
                // The server wants client memory (no twin socket): serve it and keep waiting.
                let reply = if msg.fds.is_empty() {
                    self.memory.serve(
                        &h,
                        &msg.bytes[HEADER_SIZE..],
                        self.config.max_data_xfer_size,
                    )
                } else {
                    wire::error_reply(h.msg_id, h.command, Errno::INVAL)
                };
                self.served_inline += 1;
                self.trace
                    .message(Side::Client, Direction::Send, Channel::Main, &reply, 0);
                self.sock
                    .send(&reply, &[])
                    .map_err(|source| ClientError::Transport { cmd, source })?;
                continue;
            }
            if h.msg_id != id {
                return Err(ClientError::BadReply {
                    cmd,
                    reason: format!("reply id {} while waiting for {id}", h.msg_id),
                });
            }
            return Ok(msg);
        }
    }

    // ----- info ---------------------------------------------------------------------------------

    /// The server's capabilities from VERSION.
    pub fn server_caps(&self) -> &Capabilities {
        &self.server_caps
    }

    /// The minor version the server replied with.
    pub fn server_minor(&self) -> u16 {
        self.server_minor
    }

    /// Device info read at connect time.
    pub fn device_info(&self) -> DeviceInfo {
        self.info
    }

    /// Region descriptions read at connect time.
    pub fn regions(&self) -> &[RegionDesc] {
        &self.regions
    }

    /// One region's description.
    pub fn region(&self, index: u32) -> Option<&RegionDesc> {
        self.regions.get(index as usize)
    }

    /// Whether a twin socket is in use.
    pub fn has_twin_socket(&self) -> bool {
        self.twin.is_some()
    }

    /// How many server→client DMA commands were served on the main socket.
    pub fn served_inline(&self) -> u64 {
        self.served_inline
    }

    /// DEVICE_GET_INFO.
    pub fn get_device_info(&mut self) -> Result<DeviceInfo> {
        let (p, _) = self.request(Command::DeviceGetInfo, &[], |b| {
            DeviceInfoMsg {
                argsz: DeviceInfoMsg::SIZE as u32,
                ..Default::default()
            }
            .encode(b)
        })?;
        let m = DeviceInfoMsg::decode_reply(&p).map_err(|e| bad(Command::DeviceGetInfo, e))?;
        Ok(DeviceInfo {
            flags: m.flags,
            num_regions: m.num_regions,
            num_irqs: m.num_irqs,
        })
    }

    /// DEVICE_GET_REGION_INFO, retrying once with the argsz the server asks for.
    pub fn get_region_info(&mut self, index: u32) -> Result<(RegionDesc, Option<OwnedFd>)> {
        let mut argsz = RegionInfoMsg::SIZE as u32;
        for _ in 0..2 {
            let (p, mut fds) = self.request(Command::DeviceGetRegionInfo, &[], |b| {
                RegionInfoMsg::encode_request(index, argsz, b)
            })?;
            let m = RegionInfoMsg::decode_reply(&p)
                .map_err(|e| bad(Command::DeviceGetRegionInfo, e))?;
            if m.index != index {
                return Err(ClientError::BadReply {
                    cmd: Command::DeviceGetRegionInfo.name(),
                    reason: "index mismatch".into(),
                });
            }
            if m.argsz > argsz && m.argsz as usize <= 1 << 16 {
                argsz = m.argsz;
                continue;
            }
            let fd = if fds.is_empty() {
                None
            } else {
                Some(fds.swap_remove(0))
            };
            let desc = RegionDesc {
                index,
                flags: m.flags,
                size: m.size,
                file_offset: m.offset,
                sparse: m
                    .sparse
                    .iter()
                    .map(|a| SparseArea {
                        offset: a.offset,
                        size: a.size,
                    })
                    .collect(),
                has_fd: fd.is_some(),
            };
            return Ok((desc, fd));
        }
        Err(ClientError::BadReply {
            cmd: Command::DeviceGetRegionInfo.name(),
            reason: "argsz keeps growing".into(),
        })
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn get_irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let (p, _) = self.request(Command::DeviceGetIrqInfo, &[], |b| {
            IrqInfoMsg {
                argsz: IrqInfoMsg::SIZE as u32,
                index,
                ..Default::default()
            }
            .encode(b)
        })?;
        let m = IrqInfoMsg::decode_reply(&p).map_err(|e| bad(Command::DeviceGetIrqInfo, e))?;
        Ok(IrqInfo {
            flags: m.flags,
            count: m.count,
        })
    }

    /// DEVICE_GET_REGION_IO_FDS: the region's ioeventfds with their fds.
    pub fn get_region_io_fds(&mut self, index: u32) -> Result<Vec<(IoFdEntry, OwnedFd)>> {
        let mut argsz = RegionIoFdsMsg::FIXED as u32;
        for _ in 0..2 {
            let (p, fds) = self.request(Command::DeviceGetRegionIoFds, &[], |b| {
                RegionIoFdsMsg::encode_request(index, argsz, b)
            })?;
            let m = RegionIoFdsMsg::decode_reply(&p)
                .map_err(|e| bad(Command::DeviceGetRegionIoFds, e))?;
            if m.entries.is_empty() && m.count > 0 && m.argsz > argsz {
                argsz = m.argsz;
                continue;
            }
            let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
            let mut out = Vec::new();
            for e in m.entries {
                let fd = slots
                    .get(e.fd_index as usize)
                    .and_then(|s| s.as_ref())
                    .ok_or_else(|| ClientError::BadReply {
                        cmd: Command::DeviceGetRegionIoFds.name(),
                        reason: "fd_index without an fd".into(),
                    })?
                    .try_clone()
                    .map_err(|e| ClientError::Memory(e.to_string()))?;
                out.push((e, fd));
            }
            slots.clear();
            return Ok(out);
        }
        Err(ClientError::BadReply {
            cmd: Command::DeviceGetRegionIoFds.name(),
            reason: "argsz keeps growing".into(),
        })
    }

    // ----- regions ------------------------------------------------------------------------------

    fn check_access(&self, index: u32, offset: u64, len: usize, write: bool) -> Result<()> {
        let r = self
            .region(index)
            .ok_or_else(|| ClientError::Invalid(format!("no region {index}")))?;
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| ClientError::Invalid("offset overflows".into()))?;
        if end > r.size {
            return Err(ClientError::Invalid(format!(
                "access {offset:#x}+{len} past the end of region {index} ({:#x})",
                r.size
            )));
        }
        if (write && !r.writable()) || (!write && !r.readable()) {
            return Err(ClientError::Invalid(format!(
                "region {index} does not allow this access"
            )));
        }
        Ok(())
    }

    /// mmaps every mappable area of region `index`; later reads/writes inside them go direct.
    /// Returns the number of areas mapped (0 if the region is not mappable).
    pub fn map_region(&mut self, index: u32) -> Result<usize> {
        let r = self
            .region(index)
            .cloned()
            .ok_or_else(|| ClientError::Invalid(format!("no region {index}")))?;
        let Some(fd) = self.region_fds.get(&index) else {
            return Ok(0);
        };
        let prot = if r.writable() {
            DmaProt::RW
        } else {
            DmaProt::READ
        };
        let mut areas = Vec::new();
        for a in r.mmap_areas() {
            let end = a.offset.checked_add(a.size).filter(|&e| e <= r.size);
            if end.is_none() || a.size == 0 {
                return Err(ClientError::BadReply {
                    cmd: Command::DeviceGetRegionInfo.name(),
                    reason: "sparse area outside the region".into(),
                });
            }
            let off = r
                .file_offset
                .checked_add(a.offset)
                .ok_or_else(|| ClientError::Invalid("mmap offset overflows".into()))?;
            let mem = SharedMemory::map(fd, off, a.size, prot)
                .map_err(|e| ClientError::Memory(format!("mmap region {index}: {e}")))?;
            areas.push(MappedArea {
                offset: a.offset,
                size: a.size,
                mem,
            });
        }
        let n = areas.len();
        self.mapped.insert(index, areas);
        Ok(n)
    }

    /// Whether `[offset, offset+len)` of region `index` is inside a mapped area.
    fn mapped_area(&self, index: u32, offset: u64, len: usize) -> Option<(&SharedMemory, u64)> {
        self.mapped.get(&index)?.iter().find_map(|a| {
            let end = offset.checked_add(len as u64)?;
            (offset >= a.offset && end <= a.offset + a.size).then(|| (&a.mem, offset - a.offset))
        })
    }

    /// Reads region `index` at `offset`: directly if mapped, else REGION_READ (chunked).
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_access(index, offset, buf.len(), false)?;
        if let Some((mem, off)) = self.mapped_area(index, offset, buf.len()) {
            return mem
                .read_at(off, buf)
                .map_err(|e| ClientError::Memory(e.to_string()));
        }
        self.region_read_msg(index, offset, buf)
    }

    /// Reads by REGION_READ messages only (chunked by the server's max_data_xfer_size).
    pub fn region_read_msg(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let chunk = self.server_caps.max_data_xfer_size().max(1) as usize;
        if buf.is_empty() {
            return self.region_read_one(index, offset, &mut []);
        }
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            self.region_read_one(index, offset + done as u64, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn region_read_one(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let count = buf.len() as u32;
        let (p, _) = self.request(Command::RegionRead, &[], |b| {
            RegionAccess {
                offset,
                region: index,
                count,
            }
            .encode(b)
        })?;
        let (h, data) =
            RegionAccess::decode_read_reply(&p).map_err(|e| bad(Command::RegionRead, e))?;
        if h.region != index || h.offset != offset || data.len() != buf.len() {
            return Err(ClientError::BadReply {
                cmd: Command::RegionRead.name(),
                reason: "reply does not match the request".into(),
            });
        }
        buf.copy_from_slice(data);
        Ok(())
    }

    /// Writes region `index` at `offset`: directly if mapped, else REGION_WRITE (chunked).
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.check_access(index, offset, data.len(), true)?;
        if let Some((mem, off)) = self.mapped_area(index, offset, data.len()) {
            return mem
                .write_at(off, data)
                .map_err(|e| ClientError::Memory(e.to_string()));
        }
        self.region_write_msg(index, offset, data, false)
    }

    /// Writes by REGION_WRITE messages; `posted` sets NO_REPLY (as QEMU posts MMIO writes).
    pub fn region_write_msg(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
        posted: bool,
    ) -> Result<()> {
        let chunk = self.server_caps.max_data_xfer_size().max(1) as usize;
        let mut done = 0;
        loop {
            let n = (data.len() - done).min(chunk);
            let part = &data[done..done + n];
            let off = offset + done as u64;
            if posted {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                let mut b = MessageBuilder::command(id, Command::RegionWrite).no_reply(true);
                RegionAccess {
                    offset: off,
                    region: index,
                    count: n as u32,
                }
                .encode(&mut b);
                b.bytes(part);
                let bytes = b.finish();
                self.trace
                    .message(Side::Client, Direction::Send, Channel::Main, &bytes, 0);
                self.sock
                    .send(&bytes, &[])
                    .map_err(|source| ClientError::Transport {
                        cmd: Command::RegionWrite.name(),
                        source,
                    })?;
            } else {
                let (p, _) = self.request(Command::RegionWrite, &[], |b| {
                    RegionAccess {
                        offset: off,
                        region: index,
                        count: n as u32,
                    }
                    .encode(b);
                    b.bytes(part);
                })?;
                let h = RegionAccess::decode_write_reply(&p)
                    .map_err(|e| bad(Command::RegionWrite, e))?;
                if h.count as usize != n {
                    return Err(ClientError::BadReply {
                        cmd: Command::RegionWrite.name(),
                        reason: "short write".into(),
                    });
                }
            }
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    /// REGION_WRITE_MULTI (the server must have agreed to `write_multiple`).
    pub fn region_write_multi(&mut self, writes: &[(u32, u64, &[u8])]) -> Result<()> {
        if !self.server_caps.write_multiple() {
            return Err(ClientError::Invalid(
                "server did not agree to write_multiple".into(),
            ));
        }
        let mut entries = Vec::with_capacity(writes.len());
        for &(region, offset, data) in writes {
            if data.is_empty() || data.len() > 8 {
                return Err(ClientError::Invalid(
                    "each write_multi entry is 1..=8 bytes".into(),
                ));
            }
            let mut d = [0u8; 8];
            d[..data.len()].copy_from_slice(data);
            entries.push(WriteMultiEntry {
                offset,
                region,
                count: data.len() as u32,
                data: d,
            });
        }
        let w = WriteMulti { entries };
        let (p, _) = self.request(Command::RegionWriteMulti, &[], |b| w.encode(b))?;
        if p.len() != 8 || p[..8] != (writes.len() as u64).to_ne_bytes() {
            return Err(ClientError::BadReply {
                cmd: Command::RegionWriteMulti.name(),
                reason: "bad wr_cnt".into(),
            });
        }
        Ok(())
    }

    /// Reads a u32 from region `index`.
    pub fn read_u32(&mut self, index: u32, offset: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.region_read(index, offset, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Writes a u32 to region `index`.
    pub fn write_u32(&mut self, index: u32, offset: u64, v: u32) -> Result<()> {
        self.region_write(index, offset, &v.to_ne_bytes())
    }

    /// Reads a u64 from region `index`.
    pub fn read_u64(&mut self, index: u32, offset: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.region_read(index, offset, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Writes a u64 to region `index`.
    pub fn write_u64(&mut self, index: u32, offset: u64, v: u64) -> Result<()> {
        self.region_write(index, offset, &v.to_ne_bytes())
    }

    // ----- IRQs ---------------------------------------------------------------------------------

    /// SET_IRQS with DATA_EVENTFD|TRIGGER: binds `fds` to vectors `start..`; an empty slice with
    /// `count` unbinds.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        if fds.len() > self.server_caps.max_msg_fds() as usize {
            // Send in chunks the server can receive, as QEMU does.
            let chunk = self.server_caps.max_msg_fds().max(1) as usize;
            for (i, part) in fds.chunks(chunk).enumerate() {
                self.set_irq_eventfds(index, start + (i * chunk) as u32, part)?;
            }
            return Ok(());
        }
        let s = SetIrqs {
            argsz: 0,
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index,
            start,
            count: fds.len() as u32,
        };
        self.request(Command::DeviceSetIrqs, fds, |b| s.encode(b))
            .map(|_| ())
    }

    /// Creates `count` eventfds, binds them to vectors `0..count` of `index`, and returns them.
    pub fn enable_irqs(&mut self, index: u32, count: u32) -> Result<Vec<OwnedFd>> {
        let fds: Vec<OwnedFd> = (0..count)
            .map(|_| {
                eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                    .map_err(|e| ClientError::Memory(format!("eventfd: {e}")))
            })
            .collect::<Result<_>>()?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        self.set_irq_eventfds(index, 0, &borrowed)?;
        Ok(fds)
    }

    /// Unbinds `count` vectors from `start` (DATA_EVENTFD with no fds).
    pub fn unbind_irqs(&mut self, index: u32, start: u32, count: u32) -> Result<()> {
        self.set_irqs(index, IrqAction::Trigger, IrqSetData::Eventfd, start, count)
    }

    /// Disables every vector of `index` (count 0, DATA_NONE|TRIGGER).
    pub fn disable_irqs(&mut self, index: u32) -> Result<()> {
        self.set_irqs(index, IrqAction::Trigger, IrqSetData::None, 0, 0)
    }

    /// Any SET_IRQS without fds (mask, unmask, trigger with NONE or BOOL data).
    pub fn set_irqs(
        &mut self,
        index: u32,
        action: IrqAction,
        data: IrqSetData,
        start: u32,
        count: u32,
    ) -> Result<()> {
        let s = SetIrqs {
            argsz: 0,
            action,
            data,
            index,
            start,
            count,
        };
        self.request(Command::DeviceSetIrqs, &[], |b| s.encode(b))
            .map(|_| ())
    }

    // ----- DMA ----------------------------------------------------------------------------------

    /// DMA_MAP of caller-provided memory: `fd` (mmapped by the server) or none (message DMA).
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        prot: DmaProt,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<()> {
        let (fds, offset): (Vec<BorrowedFd<'_>>, u64) = match fd {
            Some((f, off)) => (vec![f], off),
            None => (Vec::new(), 0),
        };
        let m = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags: prot.bits(),
            offset,
            address: iova,
            size,
        };
        self.request(Command::DmaMap, &fds, |b| m.encode(b))
            .map(|_| ())
    }

    /// Allocates `size` bytes of memfd-backed memory and DMA-maps it at `iova`; with
    /// `share_fd` false the fd stays here and the server reaches the memory by DMA_READ/WRITE.
    pub fn alloc_dma(&mut self, iova: u64, size: u64, share_fd: bool) -> Result<DmaBuffer> {
        let (mem, fd) = SharedMemory::memfd("emudev-dma", size)
            .map_err(|e| ClientError::Memory(format!("memfd of {size} bytes: {e}")))?;
        let mem = Arc::new(mem);
        {
            let mut bufs = self.memory.bufs.lock().unwrap_or_else(|p| p.into_inner());
            let overlaps = bufs
                .range(..iova.saturating_add(size))
                .next_back()
                .is_some_and(|(&s, m)| s + m.len() > iova);
            if overlaps {
                return Err(ClientError::Invalid(format!(
                    "IOVA {iova:#x}+{size:#x} overlaps client memory"
                )));
            }
            bufs.insert(iova, mem.clone());
        }
        let r = if share_fd {
            self.dma_map(iova, size, DmaProt::RW, Some((fd.as_fd(), 0)))
        } else {
            self.dma_map(iova, size, DmaProt::RW, None)
        };
        if let Err(e) = r {
            self.memory
                .bufs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&iova);
            return Err(e);
        }
        Ok(DmaBuffer {
            iova,
            mem,
            shared_fd: share_fd,
        })
    }

    /// DMA_UNMAP of one mapping (exact iova and size).
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: 0,
            address: iova,
            size,
        };
        let (p, _) = self.request(Command::DmaUnmap, &[], |b| u.encode(b))?;
        let r = DmaUnmap::decode_reply(&p).map_err(|e| bad(Command::DmaUnmap, e))?;
        if r.address != iova || r.size != size {
            return Err(ClientError::BadReply {
                cmd: Command::DmaUnmap.name(),
                reason: "reply does not echo the request".into(),
            });
        }
        let mut bufs = self.memory.bufs.lock().unwrap_or_else(|p| p.into_inner());
        if bufs.get(&iova).is_some_and(|m| m.len() == size) {
            bufs.remove(&iova);
        }
        Ok(())
    }

    /// DMA_UNMAP with the ALL flag.
    pub fn dma_unmap_all(&mut self) -> Result<()> {
        let u = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: wire::DMA_UNMAP_FLAG_ALL,
            address: 0,
            size: 0,
        };
        self.request(Command::DmaUnmap, &[], |b| u.encode(b))?;
        self.memory
            .bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    // ----- the rest -----------------------------------------------------------------------------

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<()> {
        self.request(Command::DeviceReset, &[], |_| {}).map(|_| ())
    }

    /// DEVICE_FEATURE: returns the reply's flags and data.
    pub fn device_feature(&mut self, flags: u32, data: &[u8]) -> Result<(u32, Vec<u8>)> {
        let m = DeviceFeatureMsg {
            argsz: (DeviceFeatureMsg::FIXED + data.len().max(64)) as u32,
            flags,
            data: data.to_vec(),
        };
        let (p, _) = self.request(Command::DeviceFeature, &[], |b| m.encode(b))?;
        let r = DeviceFeatureMsg::decode_reply(&p).map_err(|e| bad(Command::DeviceFeature, e))?;
        Ok((r.flags, r.data))
    }

    /// MIG_DATA_READ of up to `size` bytes.
    pub fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>> {
        let (p, _) = self.request(Command::MigDataRead, &[], |b| {
            MigData {
                argsz: MigData::FIXED as u32 + size,
                size,
                data: Vec::new(),
            }
            .encode(b)
        })?;
        Ok(MigData::decode_with_data(&p)
            .map_err(|e| bad(Command::MigDataRead, e))?
            .data)
    }

    /// MIG_DATA_WRITE.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<()> {
        let m = MigData {
            argsz: (MigData::FIXED + data.len()) as u32,
            size: data.len() as u32,
            data: data.to_vec(),
        };
        self.request(Command::MigDataWrite, &[], |b| m.encode(b))
            .map(|_| ())
    }

    /// Sends raw bytes (a whole message, possibly malformed) and returns the next message the
    /// server sends back. For conformance tests of servers.
    pub fn raw_exchange(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<RawMessage> {
        self.trace.message(
            Side::Client,
            Direction::Send,
            Channel::Main,
            bytes,
            fds.len(),
        );
        self.sock
            .send(bytes, fds)
            .map_err(|source| ClientError::Transport { cmd: "raw", source })?;
        let r = self.sock.recv(self.limits);
        self.trace.received(Side::Client, Channel::Main, &r);
        match r {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ClientError::Transport {
                cmd: "raw",
                source: io::Error::from(io::ErrorKind::UnexpectedEof),
            }),
            Err(RecvError::Io(source)) => Err(ClientError::Transport { cmd: "raw", source }),
            Err(e) => Err(ClientError::BadReply {
                cmd: "raw",
                reason: e.to_string(),
            }),
        }
    }

    /// Starts (`Some`) or stops (`None`) tracing this client's messages, main and twin socket;
    /// returns the previous tracer, flushed.
    pub fn set_tracer(&self, tracer: Option<Arc<dyn Tracer>>) -> Option<Arc<dyn Tracer>> {
        self.trace.set(tracer)
    }

    /// The client's trace switch.
    pub fn trace(&self) -> Arc<TraceSwitch> {
        self.trace.clone()
    }

    /// A fresh message id (for raw messages).
    pub fn next_msg_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Closes the connection (the server frees this client's DMA maps and IRQ fds).
    pub fn close(mut self) {
        self.twin.take();
        let _ = self.sock.shutdown();
    }
}
