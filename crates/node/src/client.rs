//! `NativeClient` and `DmaBuffer`: the VMM's side of a vfio-user socket.
//!
//! Requests are synchronous on the JS thread: each is one round trip over a
//! UNIX socket to a server in another thread or process, bounded by the
//! client's reply timeout (`timeoutMs`, default 5 s). Only the two operations
//! that can wait for long run on a libuv worker: `waitIrq()` (polls an
//! interrupt eventfd) and `close()` (joins the twin-socket thread).
//!
//! `close()` also wakes every pending `waitIrq()`, which rejects with
//! `ERR_EMUDEV_CLOSED`, and frees the client's DMA memory: a `DmaBuffer`
//! outliving its client throws `ERR_EMUDEV_CLOSED` as well.
//!
//! Errors from the vfio-user client carry `ERR_VFU_<ERRNO>`: the errno of the
//! server's error reply, of the failed socket operation (`ERR_VFU_ENOENT` or
//! `ERR_VFU_ECONNREFUSED` on connect, `ERR_VFU_EAGAIN` when a reply timed
//! out), `ERR_VFU_EINVAL` for a request refused before it was sent (bad
//! region index, access past the end), `ERR_VFU_EPROTO` for a malformed reply.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emudev_vfio_user::client::{
    Client, ClientConfig, ClientError, DmaBuffer as CoreDmaBuffer, RegionDesc,
};
use napi::bindgen_prelude::{AsyncTask, BigInt, Buffer};
use napi::{Env, Task};
use napi_derive::napi;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::error::{closed, errno_error_with_message, invalid_arg, ErrorCode, NativeError};
use crate::{lock, offset_from_js, rejection, u32_from_js, u64_from_bigint};

/// Largest single `regionRead`/`DmaBuffer.read` (256 MiB); larger reads are
/// refused before anything is allocated.
pub const MAX_READ_LENGTH: u64 = 256 << 20;

/// Most interrupt vectors one `enableIrqs` binds (the MSI-X maximum).
pub const MAX_IRQ_VECTORS: u32 = 2048;

/// Longest reply timeout `connect` accepts (one hour).
pub const MAX_TIMEOUT_MS: f64 = 3_600_000.0;

/// The error for a failed client operation: `ERR_VFU_<errno>`, the client's
/// own message.
pub(crate) fn client_error(e: &ClientError) -> NativeError {
    errno_error_with_message(e.errno().raw_os_error(), e.to_string())
}

/// The error for a failed syscall on an eventfd.
fn os_error(e: Errno, context: &str) -> NativeError {
    errno_error_with_message(e.raw_os_error(), format!("{context}: {e}"))
}

/// Options of `NativeClient.connect`.
#[napi(object, js_name = "ConnectOptions")]
#[derive(Debug, Clone, Default)]
pub struct JsConnectOptions {
    /// Ask for a twin socket for server-to-client DMA messages (default false).
    pub twin_socket: Option<bool>,
    /// How long to wait for any reply, in milliseconds (default 5000, 1 to 3600000).
    pub timeout_ms: Option<f64>,
}

impl JsConnectOptions {
    pub(crate) fn to_config(&self) -> napi::Result<ClientConfig, ErrorCode> {
        let mut config = ClientConfig::default();
        if let Some(twin) = self.twin_socket {
            config.twin_socket = twin;
        }
        if let Some(ms) = self.timeout_ms {
            if ms.fract() != 0.0 || !(1.0..=MAX_TIMEOUT_MS).contains(&ms) {
                return Err(invalid_arg(format!(
                    "timeoutMs must be an integer from 1 to {MAX_TIMEOUT_MS}, got {ms}"
                )));
            }
            // The range check above makes this cast exact.
            config.timeout = Duration::from_millis(ms as u64);
        }
        Ok(config)
    }
}

/// What `deviceInfo()` returns (`DEVICE_GET_INFO`).
#[napi(object, object_from_js = false, js_name = "DeviceInfo")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsDeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*` (RESET = 1, PCI = 2).
    pub flags: u32,
    /// Number of regions (9 for a PCI device).
    pub num_regions: u32,
    /// Number of IRQ indexes (5 for a PCI device).
    pub num_irqs: u32,
}

/// One sparse-mmap area of a region, relative to the region's start.
#[napi(object, object_from_js = false, js_name = "SparseArea")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsSparseArea {
    /// Offset inside the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What `regions()` returns for each region (`DEVICE_GET_REGION_INFO`).
///
/// `size` and the sparse areas are `bigint`: a server may report any 64-bit
/// size. Offsets passed to `regionRead`/`regionWrite` are `number`s.
#[napi(object, object_from_js = false, js_name = "RegionDesc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsRegionDesc {
    /// Region index (BAR0-5 = 0-5, ROM = 6, config space = 7, VGA = 8).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*` (READ = 1, WRITE = 2, MMAP = 4, CAPS = 8).
    pub flags: u32,
    /// Size in bytes; 0 for an absent region.
    pub size: u64,
    /// Whether the region can be read.
    pub readable: bool,
    /// Whether the region can be written.
    pub writable: bool,
    /// Whether the region can be mmapped (the server sent an fd).
    pub mappable: bool,
    /// The mmappable areas, as the server listed them (empty: none listed).
    pub sparse_areas: Vec<JsSparseArea>,
}

impl From<&RegionDesc> for JsRegionDesc {
    fn from(r: &RegionDesc) -> Self {
        JsRegionDesc {
            index: r.index,
            flags: r.flags,
            size: r.size,
            readable: r.readable(),
            writable: r.writable(),
            mappable: r.mappable(),
            sparse_areas: r
                .sparse
                .iter()
                .map(|a| JsSparseArea {
                    offset: a.offset,
                    size: a.size,
                })
                .collect(),
        }
    }
}

/// What `irqInfo()` returns (`DEVICE_GET_IRQ_INFO`).
#[napi(object, object_from_js = false, js_name = "IrqInfo")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsIrqInfo {
    /// `VFIO_IRQ_INFO_*` (EVENTFD = 1, MASKABLE = 2, AUTOMASKED = 4, NORESIZE = 8).
    pub flags: u32,
    /// Number of vectors (0: the index is not supported).
    pub count: u32,
}

/// A DMA buffer's memory, shared between the JS object and the client so
/// that closing the client frees it.
pub(crate) type DmaSlot = Arc<Mutex<Option<CoreDmaBuffer>>>;

/// What a connected client holds; taken out (and closed) by `close()`.
#[derive(Debug)]
struct Connected {
    client: Client,
    /// The eventfds bound by `enableIrqs`, by IRQ index, one per vector.
    irqs: HashMap<u32, Vec<Arc<OwnedFd>>>,
    /// The memory of every live `DmaBuffer`.
    dma: Vec<DmaSlot>,
}

/// A vfio-user client connected to one device.
#[napi]
#[derive(Debug)]
pub struct NativeClient {
    path: String,
    twin_socket: bool,
    closed: Arc<AtomicBool>,
    /// Written once by `close()`: wakes every pending `waitIrq`.
    wake: Arc<OwnedFd>,
    state: Arc<Mutex<Option<Connected>>>,
}

impl NativeClient {
    /// Connects to `path` with `config`.
    pub fn open(path: &str, config: ClientConfig) -> napi::Result<Self, ErrorCode> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| os_error(e, "eventfd"))?;
        let client = Client::connect_with(path, config).map_err(|e| client_error(&e))?;
        Ok(NativeClient {
            path: path.to_owned(),
            twin_socket: client.has_twin_socket(),
            closed: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(wake),
            state: Arc::new(Mutex::new(Some(Connected {
                client,
                irqs: HashMap::new(),
                dma: Vec::new(),
            }))),
        })
    }

    /// Runs `f` on the connected client, or fails with `ERR_EMUDEV_CLOSED`.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connected) -> napi::Result<T, ErrorCode>,
    ) -> napi::Result<T, ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativeClient"));
        }
        match lock(&self.state).as_mut() {
            Some(c) => f(c),
            None => Err(closed("NativeClient")),
        }
    }

    /// Marks the client closed, wakes pending waits, and returns the work
    /// that disconnects it.
    fn close_task(&self) -> CloseClient {
        self.closed.store(true, Ordering::SeqCst);
        // A failed write leaves the closed flag set; waiters then time out.
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        CloseClient {
            state: self.state.clone(),
        }
    }

    /// The wait behind `waitIrq`, or the error it rejects with at once.
    fn wait_setup(&self, index: f64, vector: f64, timeout_ms: f64) -> Result<IrqWait, NativeError> {
        let index = u32_from_js(index, "index")?;
        let vector = u32_from_js(vector, "vector")?;
        let timeout = Duration::from_millis(u64::from(u32_from_js(timeout_ms, "timeoutMs")?));
        let fd = self.with(|c| {
            c.irqs
                .get(&index)
                .and_then(|fds| fds.get(vector as usize))
                .cloned()
                .ok_or_else(|| {
                    invalid_arg(format!(
                        "IRQ {index} vector {vector} has no eventfd (call enableIrqs first)"
                    ))
                })
        })?;
        Ok(IrqWait {
            irq: fd,
            wake: self.wake.clone(),
            timeout,
            what: format!("IRQ {index} vector {vector}"),
        })
    }
}

#[napi]
impl NativeClient {
    /// Connects to the vfio-user socket at `path`, negotiates, and reads the
    /// device and region info.
    ///
    /// Throws `ERR_VFU_ENOENT` (no socket) or `ERR_VFU_ECONNREFUSED` (nobody
    /// listening), `ERR_VFU_EAGAIN` when the server does not answer in time,
    /// `ERR_EMUDEV_INVALID_ARG` for bad options.
    #[napi(factory)]
    pub fn connect(
        path: String,
        options: Option<JsConnectOptions>,
    ) -> napi::Result<Self, ErrorCode> {
        let config = options.unwrap_or_default().to_config()?;
        Self::open(&path, config)
    }

    /// The socket path.
    #[napi(getter)]
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// Whether a twin socket was negotiated.
    #[napi(getter)]
    pub fn twin_socket(&self) -> bool {
        self.twin_socket
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The device info read at connect time.
    #[napi]
    pub fn device_info(&self) -> napi::Result<JsDeviceInfo, ErrorCode> {
        self.with(|c| {
            let i = c.client.device_info();
            Ok(JsDeviceInfo {
                flags: i.flags,
                num_regions: i.num_regions,
                num_irqs: i.num_irqs,
            })
        })
    }

    /// Every region's description, read at connect time.
    #[napi]
    pub fn regions(&self) -> napi::Result<Vec<JsRegionDesc>, ErrorCode> {
        self.with(|c| Ok(c.client.regions().iter().map(JsRegionDesc::from).collect()))
    }

    /// Asks the server about IRQ `index`.
    #[napi]
    pub fn irq_info(&self, index: f64) -> napi::Result<JsIrqInfo, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        self.with(|c| {
            let i = c.client.get_irq_info(index).map_err(|e| client_error(&e))?;
            Ok(JsIrqInfo {
                flags: i.flags,
                count: i.count,
            })
        })
    }

    /// Reads `length` bytes of region `index` at `offset`.
    #[napi]
    pub fn region_read(
        &self,
        index: f64,
        offset: f64,
        length: f64,
    ) -> napi::Result<Buffer, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let length = offset_from_js(length, "length")?;
        if length > MAX_READ_LENGTH {
            return Err(invalid_arg(format!(
                "length {length} is more than the {MAX_READ_LENGTH} bytes one read may return"
            )));
        }
        self.with(|c| {
            let mut buf = vec![0u8; length as usize];
            c.client
                .region_read(index, offset, &mut buf)
                .map_err(|e| client_error(&e))?;
            Ok(buf.into())
        })
    }

    /// Writes `data` to region `index` at `offset`.
    #[napi]
    pub fn region_write(
        &self,
        index: f64,
        offset: f64,
        data: Buffer,
    ) -> napi::Result<(), ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        self.with(|c| {
            c.client
                .region_write(index, offset, &data)
                .map_err(|e| client_error(&e))
        })
    }

    /// Reads a little-endian u32 from region `index` at `offset`.
    #[napi]
    pub fn read_u32(&self, index: f64, offset: f64) -> napi::Result<u32, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        self.with(|c| {
            c.client
                .read_u32(index, offset)
                .map_err(|e| client_error(&e))
        })
    }

    /// Writes a u32 (0 to 2^32 - 1) to region `index` at `offset`.
    #[napi]
    pub fn write_u32(&self, index: f64, offset: f64, value: f64) -> napi::Result<(), ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let value = u32_from_js(value, "value")?;
        self.with(|c| {
            c.client
                .write_u32(index, offset, value)
                .map_err(|e| client_error(&e))
        })
    }

    /// Reads a u64 from region `index` at `offset`, as a bigint.
    #[napi]
    pub fn read_u64(&self, index: f64, offset: f64) -> napi::Result<u64, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        self.with(|c| {
            c.client
                .read_u64(index, offset)
                .map_err(|e| client_error(&e))
        })
    }

    /// Writes a u64 (a bigint from 0n to 2n ** 64n - 1n) to region `index` at `offset`.
    #[napi]
    pub fn write_u64(&self, index: f64, offset: f64, value: BigInt) -> napi::Result<(), ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let value = u64_from_bigint(&value, "value")?;
        self.with(|c| {
            c.client
                .write_u64(index, offset, value)
                .map_err(|e| client_error(&e))
        })
    }

    /// Allocates `size` bytes of zeroed memory and DMA-maps it for the device at
    /// `iova`. With `shareFd` (the default) the server maps the memory itself;
    /// without it, it reaches the memory by DMA_READ/DMA_WRITE messages.
    #[napi]
    pub fn alloc_dma(
        &self,
        iova: BigInt,
        size: f64,
        share_fd: Option<bool>,
    ) -> napi::Result<DmaBuffer, ErrorCode> {
        let iova = u64_from_bigint(&iova, "iova")?;
        let size = offset_from_js(size, "size")?;
        if size == 0 {
            return Err(invalid_arg("size must not be 0"));
        }
        let share_fd = share_fd.unwrap_or(true);
        let closed = self.closed.clone();
        self.with(|c| {
            let buf = c
                .client
                .alloc_dma(iova, size, share_fd)
                .map_err(|e| client_error(&e))?;
            // Buffers whose JS object is gone are no one else's to keep.
            c.dma.retain(|slot| Arc::strong_count(slot) > 1);
            let slot: DmaSlot = Arc::new(Mutex::new(Some(buf)));
            c.dma.push(slot.clone());
            Ok(DmaBuffer {
                iova,
                size,
                fd_shared: share_fd,
                closed,
                slot,
            })
        })
    }

    /// Creates `count` eventfds and binds them to vectors `0..count` of IRQ
    /// `index`, replacing the ones an earlier call bound; `waitIrq` waits on them.
    #[napi]
    pub fn enable_irqs(&self, index: f64, count: f64) -> napi::Result<(), ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let count = u32_from_js(count, "count")?;
        if count == 0 || count > MAX_IRQ_VECTORS {
            return Err(invalid_arg(format!(
                "count must be from 1 to {MAX_IRQ_VECTORS}, got {count}"
            )));
        }
        self.with(|c| {
            let fds = c
                .client
                .enable_irqs(index, count)
                .map_err(|e| client_error(&e))?;
            c.irqs
                .insert(index, fds.into_iter().map(Arc::new).collect());
            Ok(())
        })
    }

    /// Waits (on a worker thread) until vector `vector` of IRQ `index` fires,
    /// and resolves with the eventfd counter: how many interrupts arrived since
    /// the last wait. Rejects with `ERR_EMUDEV_TIMEOUT` after `timeoutMs`,
    /// `ERR_EMUDEV_CLOSED` if the client is (or gets) closed, and
    /// `ERR_EMUDEV_INVALID_ARG` when `enableIrqs` bound no eventfd there.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn wait_irq(&self, index: f64, vector: f64, timeout_ms: f64) -> AsyncTask<WaitIrq> {
        AsyncTask::new(WaitIrq {
            wait: Some(self.wait_setup(index, vector, timeout_ms)),
        })
    }

    /// Resets the device (`DEVICE_RESET`).
    #[napi]
    pub fn reset(&self) -> napi::Result<(), ErrorCode> {
        self.with(|c| c.client.reset().map_err(|e| client_error(&e)))
    }

    /// Disconnects (on a worker thread): the server drops this client's DMA
    /// maps and interrupts, the client's DMA memory and eventfds are freed and
    /// pending `waitIrq` calls reject with `ERR_EMUDEV_CLOSED`. Idempotent: a
    /// second call resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseClient> {
        AsyncTask::new(self.close_task())
    }
}

/// Client memory mapped for the device's DMA (`NativeClient.allocDma`).
#[napi]
#[derive(Debug)]
pub struct DmaBuffer {
    iova: u64,
    size: u64,
    fd_shared: bool,
    closed: Arc<AtomicBool>,
    slot: DmaSlot,
}

impl DmaBuffer {
    /// A buffer over `buf`, registered in `slots` so that closing its client frees it;
    /// `closed` is the client's flag.
    pub(crate) fn register(
        buf: CoreDmaBuffer,
        slots: &mut Vec<DmaSlot>,
        closed: Arc<AtomicBool>,
    ) -> DmaBuffer {
        let (iova, size, fd_shared) = (buf.iova(), buf.len(), buf.fd_shared());
        // Buffers whose JS object is gone are no one else's to keep.
        slots.retain(|slot| Arc::strong_count(slot) > 1);
        let slot: DmaSlot = Arc::new(Mutex::new(Some(buf)));
        slots.push(slot.clone());
        DmaBuffer {
            iova,
            size,
            fd_shared,
            closed,
            slot,
        }
    }

    /// Runs `f` on the live buffer, or fails with `ERR_EMUDEV_CLOSED`.
    fn with<T>(
        &self,
        f: impl FnOnce(&CoreDmaBuffer) -> napi::Result<T, ErrorCode>,
    ) -> napi::Result<T, ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("DmaBuffer (its NativeClient)"));
        }
        match lock(&self.slot).as_ref() {
            Some(b) => f(b),
            None => Err(closed("DmaBuffer (its NativeClient)")),
        }
    }

    /// Checks that `[offset, offset + len)` is inside the buffer.
    fn check_range(&self, offset: u64, len: u64) -> napi::Result<(), ErrorCode> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(invalid_arg(format!(
                "range {offset:#x}+{len:#x} is outside the {:#x}-byte DMA buffer",
                self.size
            ))),
        }
    }
}

#[napi]
impl DmaBuffer {
    /// The first IOVA the device sees this memory at.
    #[napi(getter)]
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Size in bytes.
    #[napi(getter)]
    pub fn size(&self) -> f64 {
        // Sizes come from a JS number (at most 2^53 - 1): exact.
        self.size as f64
    }

    /// Whether the memory's fd was passed to the server.
    #[napi(getter)]
    pub fn fd_shared(&self) -> bool {
        self.fd_shared
    }

    /// Copies `length` bytes out of the buffer at `offset`.
    #[napi]
    pub fn read(&self, offset: f64, length: f64) -> napi::Result<Buffer, ErrorCode> {
        let offset = offset_from_js(offset, "offset")?;
        let length = offset_from_js(length, "length")?;
        self.check_range(offset, length)?;
        if length > MAX_READ_LENGTH {
            return Err(invalid_arg(format!(
                "length {length} is more than the {MAX_READ_LENGTH} bytes one read may return"
            )));
        }
        self.with(|b| {
            let mut out = vec![0u8; length as usize];
            b.read(offset, &mut out)
                .map_err(|e| invalid_arg(format!("DMA buffer read: {e}")))?;
            Ok(out.into())
        })
    }

    /// Copies `data` into the buffer at `offset`.
    #[napi]
    pub fn write(&self, offset: f64, data: Buffer) -> napi::Result<(), ErrorCode> {
        let offset = offset_from_js(offset, "offset")?;
        self.check_range(offset, data.len() as u64)?;
        self.with(|b| {
            b.write(offset, &data)
                .map_err(|e| invalid_arg(format!("DMA buffer write: {e}")))
        })
    }
}

/// One wait for an interrupt eventfd.
#[derive(Debug)]
struct IrqWait {
    irq: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    timeout: Duration,
    what: String,
}

impl IrqWait {
    /// Polls until the eventfd has a count (and reads it), the client closes,
    /// or the time is up.
    fn run(&self) -> Result<u64, NativeError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(remaining.subsec_nanos()),
            };
            let mut fds = [
                PollFd::new(&*self.irq, PollFlags::IN),
                PollFd::new(&*self.wake, PollFlags::IN),
            ];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(os_error(e, "waitIrq: poll")),
            }
            if !fds[1].revents().is_empty() {
                return Err(closed("NativeClient"));
            }
            if !fds[0].revents().is_empty() {
                let mut count = [0u8; 8];
                match rustix::io::read(&*self.irq, &mut count) {
                    Ok(8) => return Ok(u64::from_ne_bytes(count)),
                    // Another wait on the same vector took the count first.
                    Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                    Ok(n) => {
                        return Err(errno_error_with_message(
                            Errno::IO.raw_os_error(),
                            format!("waitIrq: short eventfd read ({n} bytes)"),
                        ))
                    }
                    Err(e) => return Err(os_error(e, "waitIrq: read")),
                }
            }
            if Instant::now() >= deadline {
                return Err(napi::Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "no interrupt on {} within {} ms",
                        self.what,
                        self.timeout.as_millis()
                    ),
                ));
            }
        }
    }
}

/// The work behind `NativeClient.waitIrq()`.
#[derive(Debug)]
pub struct WaitIrq {
    /// The wait, or why the promise rejects at once; taken by `compute`.
    wait: Option<Result<IrqWait, NativeError>>,
}

impl Task for WaitIrq {
    type Output = Result<f64, NativeError>;
    type JsValue = f64;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(match self.wait.take() {
            // Counts above 2^53 lose precision; an eventfd never gets near that.
            Some(Ok(wait)) => wait.run().map(|n| n as f64),
            Some(Err(e)) => Err(e),
            None => Err(invalid_arg("waitIrq ran twice")),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<f64> {
        output.map_err(|e| rejection(env, e))
    }
}

/// The work behind `NativeClient.close()`.
#[derive(Debug)]
pub struct CloseClient {
    state: Arc<Mutex<Option<Connected>>>,
}

impl CloseClient {
    /// Disconnects if still connected. The lock is held throughout, so a
    /// concurrent close waits for this one.
    fn run(&self) {
        let mut state = lock(&self.state);
        if let Some(c) = state.take() {
            for slot in &c.dma {
                lock(slot).take();
            }
            drop(c.irqs);
            c.client.close();
        }
    }
}

impl Task for CloseClient {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.run();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::NativeServer;
    use emudev_edu::regs::{REG_ID, REG_IRQ_ACK, REG_IRQ_RAISE, REG_IRQ_STATUS};
    use std::path::PathBuf;

    struct Fixture {
        server: NativeServer,
        client: NativeClient,
    }

    impl Fixture {
        fn new(name: &str, config: ClientConfig) -> Self {
            let dir =
                std::env::temp_dir().join(format!("emudev-node-c-{}-{name}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let path: PathBuf = dir.join("s.sock");
            let path = path.to_str().expect("UTF-8 temp path").to_owned();
            let server = NativeServer::start_edu(&path).expect("server");
            let client = NativeClient::open(&path, config).expect("client");
            Fixture { server, client }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.client.close_task().run();
        }
    }

    #[test]
    fn reads_the_id_register_and_describes_the_device() {
        let f = Fixture::new("id", ClientConfig::default());
        assert_eq!(
            f.client.read_u32(0.0, REG_ID as f64).ok(),
            Some(0x0100_00ed)
        );
        let info = f.client.device_info().expect("info");
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        let regions = f.client.regions().expect("regions");
        assert_eq!(regions.len(), 9);
        assert_eq!(regions[0].size, 0x10_0000);
        assert!(regions[0].readable && regions[0].writable);
        assert_eq!(regions[7].size, 256);
        assert_eq!(f.client.irq_info(1.0).expect("irq info").count, 1);
    }

    #[test]
    fn client_errors_carry_errno_codes() {
        let f = Fixture::new("errs", ClientConfig::default());
        let past_end = f
            .client
            .read_u32(0.0, 0x10_0000 as f64)
            .expect_err("past the end");
        assert_eq!(past_end.status.as_str(), "ERR_VFU_EINVAL");
        let no_region = f
            .client
            .region_read(42.0, 0.0, 4.0)
            .err()
            .expect("no region 42");
        assert_eq!(no_region.status.as_str(), "ERR_VFU_EINVAL");
        let bad = f.client.read_u32(0.0, -4.0).expect_err("negative offset");
        assert_eq!(bad.status, ErrorCode::InvalidArg);
        let huge = f
            .client
            .region_read(0.0, 0.0, 1e12)
            .err()
            .expect("huge read");
        assert_eq!(huge.status, ErrorCode::InvalidArg);
    }

    #[test]
    fn connect_to_a_missing_socket_is_enoent() {
        let err = NativeClient::open("/nonexistent-emudev/x.sock", ClientConfig::default())
            .expect_err("missing socket");
        assert_eq!(err.status.as_str(), "ERR_VFU_ENOENT");
        assert!(
            err.reason.contains("/nonexistent-emudev/x.sock"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn connect_options_are_checked() {
        let opts = |timeout_ms| JsConnectOptions {
            twin_socket: None,
            timeout_ms,
        };
        assert!(opts(Some(0.0)).to_config().is_err());
        assert!(opts(Some(1.5)).to_config().is_err());
        assert!(opts(Some(MAX_TIMEOUT_MS + 1.0)).to_config().is_err());
        let c = opts(Some(250.0)).to_config().expect("valid");
        assert_eq!(c.timeout, Duration::from_millis(250));
        let twin = JsConnectOptions {
            twin_socket: Some(true),
            timeout_ms: None,
        }
        .to_config();
        assert!(twin.expect("valid").twin_socket);
    }

    #[test]
    fn dma_buffer_round_trips_and_checks_ranges() {
        let f = Fixture::new("dma", ClientConfig::default());
        let bigint = |v: u64| BigInt {
            sign_bit: false,
            words: vec![v],
        };
        let buf = f
            .client
            .alloc_dma(bigint(0x10_0000), 4096.0, None)
            .expect("alloc");
        assert_eq!(buf.iova(), 0x10_0000);
        assert!(buf.fd_shared());
        buf.check_range(0, 4096).expect("whole buffer");
        assert_eq!(
            buf.check_range(4090, 7).expect_err("past the end").status,
            ErrorCode::InvalidArg
        );
        assert!(buf.check_range(u64::MAX, 2).is_err());
        let overlap = f
            .client
            .alloc_dma(bigint(0x10_0800), 4096.0, None)
            .expect_err("overlap");
        assert_eq!(overlap.status.as_str(), "ERR_VFU_EINVAL");
        let zero = f
            .client
            .alloc_dma(bigint(0x20_0000), 0.0, None)
            .expect_err("size 0");
        assert_eq!(zero.status, ErrorCode::InvalidArg);
        f.client.close_task().run();
        assert_eq!(
            buf.with(|_| Ok(())).expect_err("closed").status,
            ErrorCode::Closed
        );
        assert!(lock(&buf.slot).is_none(), "close frees the memory");
    }

    /// Programs an edu DMA of `count` bytes and starts it.
    fn edu_dma(c: &NativeClient, src: u64, dst: u64, count: u64, to_ram: bool) {
        use emudev_edu::regs::*;
        let big = |v: u64| BigInt {
            sign_bit: false,
            words: vec![v],
        };
        c.write_u64(0.0, REG_DMA_SRC as f64, big(src)).expect("src");
        c.write_u64(0.0, REG_DMA_DST as f64, big(dst)).expect("dst");
        c.write_u64(0.0, REG_DMA_COUNT as f64, big(count))
            .expect("count");
        let cmd = DMA_CMD_START | if to_ram { DMA_CMD_TO_RAM } else { 0 };
        c.write_u64(0.0, REG_DMA_CMD as f64, big(cmd)).expect("cmd");
    }

    #[test]
    fn edu_dma_round_trips_with_and_without_a_shared_fd() {
        let f = Fixture::new("edudma", ClientConfig::default());
        for (iova, share_fd) in [(0x10_0000u64, true), (0x20_0000, false)] {
            let buf = f
                .client
                .alloc_dma(
                    BigInt {
                        sign_bit: false,
                        words: vec![iova],
                    },
                    8192.0,
                    Some(share_fd),
                )
                .expect("alloc");
            let pattern: Vec<u8> = (0..4096u32)
                .map(|i| (i * 7 + u32::from(share_fd)) as u8)
                .collect();
            buf.with(|b| {
                b.write(0, &pattern).expect("fill");
                Ok(())
            })
            .expect("live buffer");
            edu_dma(&f.client, iova, 0x4_0000, 4096, false);
            edu_dma(&f.client, 0x4_0000, iova + 4096, 4096, true);
            let back = buf
                .with(|b| {
                    let mut out = vec![0u8; 4096];
                    b.read(4096, &mut out).expect("read back");
                    Ok(out)
                })
                .expect("live buffer");
            assert_eq!(back, pattern, "share_fd={share_fd}");
        }
        let stats = f.server.edu_stats().expect("edu stats");
        assert_eq!((stats.dma_transfers, stats.dma_errors), (4.0, 0.0));
        assert!(
            f.server.stats().expect("stats").dma_requests >= 2.0,
            "fd-less DMA goes by message"
        );
    }

    #[test]
    fn msi_reaches_the_waiting_eventfd() {
        let f = Fixture::new("irq", ClientConfig::default());
        f.client.enable_irqs(1.0, 1.0).expect("bind MSI");
        // Enable MSI in config space (flags at cap + 2).
        let flags_at = f64::from(emudev_edu::EDU_MSI_CAP_OFFSET) + 2.0;
        let mut flags = f
            .client
            .region_read(7.0, flags_at, 2.0)
            .expect("read flags")
            .to_vec();
        flags[0] |= 1;
        f.client
            .region_write(7.0, flags_at, flags.into())
            .expect("enable MSI");
        f.client
            .write_u32(0.0, REG_IRQ_RAISE as f64, 1.0)
            .expect("raise");
        let wait = f.client.wait_setup(1.0, 0.0, 2000.0).expect("wait setup");
        assert_eq!(wait.run().expect("interrupt"), 1);
        assert_eq!(f.client.read_u32(0.0, REG_IRQ_STATUS as f64).ok(), Some(1));
        f.client
            .write_u32(0.0, REG_IRQ_ACK as f64, 1.0)
            .expect("ack");
        assert_eq!(f.client.read_u32(0.0, REG_IRQ_STATUS as f64).ok(), Some(0));
        assert!(f.server.stats().expect("stats").connected);
    }

    #[test]
    fn wait_times_out_and_close_wakes_waiters() {
        let f = Fixture::new("wait", ClientConfig::default());
        f.client.enable_irqs(1.0, 1.0).expect("bind MSI");
        let wait = f.client.wait_setup(1.0, 0.0, 30.0).expect("setup");
        let started = Instant::now();
        let err = wait.run().expect_err("no interrupt");
        assert_eq!(err.status, ErrorCode::Timeout);
        assert!(started.elapsed() >= Duration::from_millis(30));

        let not_bound = f
            .client
            .wait_setup(1.0, 1.0, 10.0)
            .expect_err("vector 1 not bound");
        assert_eq!(not_bound.status, ErrorCode::InvalidArg);

        let long = f.client.wait_setup(1.0, 0.0, 60_000.0).expect("setup");
        let waiter = std::thread::spawn(move || long.run());
        std::thread::sleep(Duration::from_millis(20));
        f.client.close_task().run();
        let woke = waiter.join().expect("waiter thread").expect_err("closed");
        assert_eq!(woke.status, ErrorCode::Closed);
    }

    #[test]
    fn methods_after_close_throw_closed() {
        let f = Fixture::new("closed", ClientConfig::default());
        f.client.close_task().run();
        f.client.close_task().run();
        assert!(f.client.closed());
        assert_eq!(
            f.client.read_u32(0.0, 0.0).expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            f.client.regions().expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            f.client.reset().expect_err("closed").status,
            ErrorCode::Closed
        );
        let wait = f.client.wait_setup(1.0, 0.0, 10.0).expect_err("closed");
        assert_eq!(wait.status, ErrorCode::Closed);
    }

    #[test]
    fn twin_socket_can_be_negotiated() {
        let config = ClientConfig {
            twin_socket: true,
            ..ClientConfig::default()
        };
        let f = Fixture::new("twin", config);
        assert!(f.client.twin_socket);
        assert_eq!(f.client.read_u32(0.0, 0.0).ok(), Some(0x0100_00ed));
    }
}
