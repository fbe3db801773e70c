//! `NativeAsyncClient`: a vfio-user client whose requests never block the JS thread.
//!
//! Every request runs on the libuv thread pool (an `AsyncTask`) and resolves a promise. That
//! is what lets a client talk to a device served *from the same process* by JavaScript
//! handlers: the handler needs the JS thread while the request is in flight, and a
//! synchronous request would hold it (the sync `NativeClient` would wait for its reply
//! timeout, then fail).
//!
//! - **Order.** Requests run one at a time, in the order they were made, even when several
//!   are pending at once (`writeU32` then `readU32` without awaiting the first): each task takes
//!   a ticket on the JS thread and waits for its turn on the worker. The pool takes work in
//!   FIFO order, so an earlier ticket is always already running or done.
//! - **What is cached.** Device and region info are read at connect time and kept outside the
//!   client's lock, so the synchronous getters never wait behind a request.
//! - **Mapped regions.** `mapRegion(index)` maps the region's fd afresh (read-write, shared)
//!   and gives JavaScript one zero-copy `Buffer` per mappable area (see [`crate::raw`]). The
//!   mapping lives as long as the `Buffer`; regions that are not writable are refused, since a
//!   store to a read-only page would kill the process.
//! - **Interrupts.** `enableIrqs` binds eventfds; a poller thread waits on all of them and
//!   reports `(index, vector, count)` through a weak threadsafe function (the `onIrq` callback
//!   given to `connect`), so waiting for interrupts never keeps Node alive by itself.
//! - **Close.** `close()` (on a worker) stops the poller, releases the callback, frees the DMA
//!   memory and disconnects. Requests still pending then reject with `ERR_EMUDEV_CLOSED`.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use emudev_vfio_user::client::{Client, ClientConfig, ClientError};
use napi::bindgen_prelude::{AsyncTask, BigInt, Buffer, FnArgs, Function, ToNapiValue, TypeName};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status, Task};
use napi_derive::napi;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

use crate::client::{
    client_error, DmaBuffer, DmaSlot, JsConnectOptions, JsDeviceInfo, JsIrqInfo, JsRegionDesc,
    MAX_IRQ_VECTORS, MAX_READ_LENGTH,
};
use crate::error::{closed, errno_error_with_message, invalid_arg, ErrorCode, NativeError};
use crate::raw::{ExternalMapping, Mapping};
use crate::{lock, offset_from_js, rejection, u32_from_js, u64_from_bigint};

// ----- request order ------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SeqState {
    issued: u64,
    next: u64,
    /// Tickets given up before their turn came (their task never ran).
    skipped: BTreeSet<u64>,
}

/// Hands out tickets on the JS thread and lets their holders run one at a time, in order.
#[derive(Debug, Default)]
pub struct Sequencer {
    state: Mutex<SeqState>,
    cv: Condvar,
}

impl Sequencer {
    /// The next ticket, as a guard that gives up its turn when dropped.
    pub fn ticket(self: &Arc<Self>) -> Turn {
        let mut s = lock(&self.state);
        let ticket = s.issued;
        s.issued += 1;
        Turn {
            seq: self.clone(),
            ticket,
        }
    }

    fn finish(&self, ticket: u64) {
        let mut s = lock(&self.state);
        if s.next == ticket {
            s.next += 1;
            loop {
                let n = s.next;
                if !s.skipped.remove(&n) {
                    break;
                }
                s.next += 1;
            }
            self.cv.notify_all();
        } else {
            s.skipped.insert(ticket);
        }
    }
}

/// One place in the [`Sequencer`]'s order.
#[derive(Debug)]
pub struct Turn {
    seq: Arc<Sequencer>,
    ticket: u64,
}

impl Turn {
    /// Blocks until every earlier ticket has finished or been given up.
    pub fn wait(&self) {
        let mut s = lock(&self.seq.state);
        while s.next != self.ticket {
            s = self
                .seq
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.seq.finish(self.ticket);
    }
}

// ----- interrupts ---------------------------------------------------------------------------------

/// The `onIrq(index, vector, count)` callback, weak.
pub type IrqTsfn =
    ThreadsafeFunction<(u32, u32, f64), (), FnArgs<(u32, u32, f64)>, Status, false, true, 0>;

/// The eventfds being watched and the poller thread that watches them.
struct IrqWatch {
    fds: Mutex<Vec<(u32, u32, Arc<OwnedFd>)>>,
    wake: OwnedFd,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    tsfn: Mutex<Option<Arc<IrqTsfn>>>,
}

impl std::fmt::Debug for IrqWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqWatch")
            .field("watched", &lock(&self.fds).len())
            .field("stop", &self.stop.load(Ordering::SeqCst))
            .field("callback", &lock(&self.tsfn).is_some())
            .finish()
    }
}

impl IrqWatch {
    fn new(tsfn: Option<IrqTsfn>) -> std::io::Result<Self> {
        Ok(IrqWatch {
            fds: Mutex::new(Vec::new()),
            wake: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            tsfn: Mutex::new(tsfn.map(Arc::new)),
        })
    }

    fn kick(&self) {
        // A failed write leaves a count in the eventfd or the flag set; the poller sees either.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Watches `fds` as vectors `0..` of `index` (replacing what was watched for it), starting
    /// the poller on first use. Without a callback nothing is watched.
    fn register(self: &Arc<Self>, index: u32, fds: Vec<OwnedFd>) -> std::io::Result<()> {
        let Some(tsfn) = lock(&self.tsfn).clone() else {
            return Ok(());
        };
        {
            let mut list = lock(&self.fds);
            list.retain(|(i, _, _)| *i != index);
            for (v, fd) in fds.into_iter().enumerate() {
                list.push((index, v as u32, Arc::new(fd)));
            }
        }
        let mut thread = lock(&self.thread);
        if thread.is_none() && !self.stop.load(Ordering::SeqCst) {
            let me = Arc::clone(self);
            *thread = Some(
                std::thread::Builder::new()
                    .name("emudev-irq-poll".into())
                    .spawn(move || me.poll_loop(&tsfn))?,
            );
        }
        drop(thread);
        self.kick();
        Ok(())
    }

    fn unregister(&self, index: u32) {
        lock(&self.fds).retain(|(i, _, _)| *i != index);
        self.kick();
    }

    fn poll_loop(&self, tsfn: &IrqTsfn) {
        while !self.stop.load(Ordering::SeqCst) {
            let list = lock(&self.fds).clone();
            let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(list.len() + 1);
            pfds.push(PollFd::new(&self.wake, PollFlags::IN));
            for (_, _, fd) in &list {
                pfds.push(PollFd::new(fd.as_ref(), PollFlags::IN));
            }
            match poll(&mut pfds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => return,
            }
            let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
            drop(pfds);
            if ready.first() == Some(&true) {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.wake, &mut b);
            }
            for ((index, vector, fd), hit) in list.iter().zip(ready.iter().skip(1)) {
                if !hit {
                    continue;
                }
                let mut b = [0u8; 8];
                if let Ok(8) = rustix::io::read(fd.as_ref(), &mut b) {
                    // Exact below 2^53; an eventfd counter never gets near that.
                    let count = u64::from_ne_bytes(b) as f64;
                    let _ = tsfn.call_with_return_value(
                        (*index, *vector, count),
                        ThreadsafeFunctionCallMode::NonBlocking,
                        |_, _| Ok(()),
                    );
                }
            }
        }
    }

    /// Stops and joins the poller and releases the callback.
    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        lock(&self.fds).clear();
        let tsfn = lock(&self.tsfn).take();
        drop(tsfn);
    }
}

// ----- the client ---------------------------------------------------------------------------------

/// What a connected client holds; taken out (and closed) by `close()`.
#[derive(Debug)]
pub struct AsyncConnected {
    client: Client,
    dma: Vec<DmaSlot>,
}

/// One mappable area of a region, mapped into this process (`mapRegion`).
#[napi(object, object_from_js = false, js_name = "MappedArea")]
#[derive(Debug)]
pub struct JsMappedArea {
    /// Offset of the area in the region.
    pub offset: f64,
    /// Size in bytes.
    pub size: f64,
    /// The area's bytes, zero-copy: reads see what the device writes, writes reach the device.
    #[napi(ts_type = "Buffer")]
    pub buffer: ExternalMapping,
}

/// A vfio-user client whose requests run on the libuv pool (see the module documentation).
#[napi]
#[derive(Debug)]
pub struct NativeAsyncClient {
    path: String,
    twin_socket: bool,
    info: JsDeviceInfo,
    regions: Vec<JsRegionDesc>,
    closed: Arc<AtomicBool>,
    seq: Arc<Sequencer>,
    state: Arc<Mutex<Option<AsyncConnected>>>,
    irqs: Arc<IrqWatch>,
}

/// One request's work on the connected client.
type RequestFn<T> = Box<dyn FnOnce(&mut AsyncConnected) -> Result<T, NativeError> + Send>;

/// The `onIrq` argument of `connect`.
type OnIrq<'f> = Function<'f, FnArgs<(u32, u32, f64)>, ()>;

/// The work behind one request.
pub struct ClientOp<T> {
    turn: Option<Turn>,
    closed: Arc<AtomicBool>,
    state: Arc<Mutex<Option<AsyncConnected>>>,
    op: Option<RequestFn<T>>,
}

impl<T> std::fmt::Debug for ClientOp<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOp")
            .field("turn", &self.turn)
            .finish_non_exhaustive()
    }
}

impl<T> ClientOp<T> {
    fn run(&mut self) -> Result<T, NativeError> {
        let turn = self.turn.take();
        if let Some(t) = &turn {
            t.wait();
        }
        let op = self
            .op
            .take()
            .ok_or_else(|| invalid_arg("request ran twice"))?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativeAsyncClient"));
        }
        let result = match lock(&self.state).as_mut() {
            Some(c) => op(c),
            None => Err(closed("NativeAsyncClient")),
        };
        drop(turn);
        result
    }
}

impl<T: ToNapiValue + TypeName + Send + 'static> Task for ClientOp<T> {
    type Output = Result<T, NativeError>;
    type JsValue = T;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<T> {
        output.map_err(|e| rejection(env, e))
    }
}

fn err(e: &ClientError) -> NativeError {
    client_error(e)
}

fn read_length(length: f64) -> napi::Result<usize, ErrorCode> {
    let length = offset_from_js(length, "length")?;
    if length > MAX_READ_LENGTH {
        return Err(invalid_arg(format!(
            "length {length} is more than the {MAX_READ_LENGTH} bytes one read may return"
        )));
    }
    // At most 256 MiB: fits.
    Ok(length as usize)
}

impl NativeAsyncClient {
    /// Connects (blocking: call from a worker) and wraps the result.
    fn open(path: &str, config: ClientConfig, tsfn: Option<IrqTsfn>) -> Result<Self, NativeError> {
        let irqs = IrqWatch::new(tsfn).map_err(|e| crate::error::io_error(&e, "eventfd"))?;
        let client = Client::connect_with(path, config).map_err(|e| err(&e))?;
        let i = client.device_info();
        Ok(NativeAsyncClient {
            path: path.to_owned(),
            twin_socket: client.has_twin_socket(),
            info: JsDeviceInfo {
                flags: i.flags,
                num_regions: i.num_regions,
                num_irqs: i.num_irqs,
            },
            regions: client.regions().iter().map(JsRegionDesc::from).collect(),
            closed: Arc::new(AtomicBool::new(false)),
            seq: Arc::new(Sequencer::default()),
            state: Arc::new(Mutex::new(Some(AsyncConnected {
                client,
                dma: Vec::new(),
            }))),
            irqs: Arc::new(irqs),
        })
    }

    /// The work of one request (taking its place in the order now), or `ERR_EMUDEV_CLOSED`
    /// at once after `close()`.
    fn op<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut AsyncConnected) -> Result<T, NativeError> + Send + 'static,
    ) -> napi::Result<ClientOp<T>, ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativeAsyncClient"));
        }
        Ok(ClientOp {
            turn: Some(self.seq.ticket()),
            closed: self.closed.clone(),
            state: self.state.clone(),
            op: Some(Box::new(op)),
        })
    }

    /// [`NativeAsyncClient::op`] as a promise.
    fn request<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut AsyncConnected) -> Result<T, NativeError> + Send + 'static,
    ) -> napi::Result<AsyncTask<ClientOp<T>>, ErrorCode>
    where
        ClientOp<T>: Task,
    {
        self.op(op).map(AsyncTask::new)
    }

    fn close_task(&self) -> CloseAsyncClient {
        self.closed.store(true, Ordering::SeqCst);
        CloseAsyncClient {
            state: self.state.clone(),
            irqs: self.irqs.clone(),
        }
    }
}

/// The work behind `NativeAsyncClient.connect()`.
pub struct ConnectTask {
    path: String,
    config: ClientConfig,
    tsfn: Option<IrqTsfn>,
}

impl std::fmt::Debug for ConnectTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectTask")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Task for ConnectTask {
    type Output = Result<NativeAsyncClient, NativeError>;
    type JsValue = NativeAsyncClient;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(NativeAsyncClient::open(
            &self.path,
            self.config.clone(),
            self.tsfn.take(),
        ))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<NativeAsyncClient> {
        output.map_err(|e| rejection(env, e))
    }
}

#[napi]
impl NativeAsyncClient {
    /// Connects to the vfio-user socket at `path` on a worker thread, negotiates and reads
    /// the device and region info. `onIrq(index, vector, count)` is called for interrupts on
    /// the eventfds `enableIrqs` binds (it never keeps Node alive by itself).
    ///
    /// Rejects with `ERR_VFU_ENOENT` / `ERR_VFU_ECONNREFUSED`, `ERR_VFU_EAGAIN` (no answer in
    /// time), `ERR_EMUDEV_INVALID_ARG` for bad options.
    #[napi(
        ts_args_type = "path: string, options?: ConnectOptions | undefined | null, onIrq?: ((index: number, vector: number, count: number) => void) | undefined | null",
        ts_return_type = "Promise<NativeAsyncClient>"
    )]
    pub fn connect(
        path: String,
        options: Option<JsConnectOptions>,
        on_irq: Option<OnIrq<'_>>,
    ) -> napi::Result<AsyncTask<ConnectTask>, ErrorCode> {
        let config = options.unwrap_or_default().to_config()?;
        let tsfn = match on_irq {
            Some(f) => Some(
                f.build_threadsafe_function::<(u32, u32, f64)>()
                    .weak::<true>()
                    .callee_handled::<false>()
                    .build_callback(|ctx| Ok(FnArgs::from(ctx.value)))
                    .map_err(|e| invalid_arg(format!("onIrq: {e}")))?,
            ),
            None => None,
        };
        Ok(AsyncTask::new(ConnectTask { path, config, tsfn }))
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
    #[napi(ts_return_type = "DeviceInfo")]
    pub fn device_info(&self) -> JsDeviceInfo {
        self.info.clone()
    }

    /// Every region's description, read at connect time.
    #[napi(ts_return_type = "Array<RegionDesc>")]
    pub fn regions(&self) -> Vec<JsRegionDesc> {
        self.regions.clone()
    }

    /// `DEVICE_GET_IRQ_INFO` for `index`.
    #[napi(ts_return_type = "Promise<IrqInfo>")]
    pub fn irq_info(&self, index: f64) -> napi::Result<AsyncTask<ClientOp<JsIrqInfo>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        self.request(move |c| {
            let i = c.client.get_irq_info(index).map_err(|e| err(&e))?;
            Ok(JsIrqInfo {
                flags: i.flags,
                count: i.count,
            })
        })
    }

    /// Reads `length` bytes of region `index` at `offset` (REGION_READ).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn region_read(
        &self,
        index: f64,
        offset: f64,
        length: f64,
    ) -> napi::Result<AsyncTask<ClientOp<Buffer>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let length = read_length(length)?;
        self.request(move |c| {
            let mut buf = vec![0u8; length];
            c.client
                .region_read(index, offset, &mut buf)
                .map_err(|e| err(&e))?;
            Ok(buf.into())
        })
    }

    /// Writes `data` to region `index` at `offset` (REGION_WRITE).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn region_write(
        &self,
        index: f64,
        offset: f64,
        data: Buffer,
    ) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let data = data.to_vec();
        self.request(move |c| {
            c.client
                .region_write(index, offset, &data)
                .map_err(|e| err(&e))
        })
    }

    /// Reads a little-endian u32.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn read_u32(
        &self,
        index: f64,
        offset: f64,
    ) -> napi::Result<AsyncTask<ClientOp<u32>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        self.request(move |c| c.client.read_u32(index, offset).map_err(|e| err(&e)))
    }

    /// Writes a u32 (0 to 2^32 - 1).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_u32(
        &self,
        index: f64,
        offset: f64,
        value: f64,
    ) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let value = u32_from_js(value, "value")?;
        self.request(move |c| {
            c.client
                .write_u32(index, offset, value)
                .map_err(|e| err(&e))
        })
    }

    /// Reads a little-endian u64, as a bigint.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn read_u64(
        &self,
        index: f64,
        offset: f64,
    ) -> napi::Result<AsyncTask<ClientOp<BigInt>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        self.request(move |c| {
            c.client
                .read_u64(index, offset)
                .map(BigInt::from)
                .map_err(|e| err(&e))
        })
    }

    /// Writes a u64 (a bigint from 0n to 2n ** 64n - 1n).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_u64(
        &self,
        index: f64,
        offset: f64,
        value: BigInt,
    ) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let offset = offset_from_js(offset, "offset")?;
        let value = u64_from_bigint(&value, "value")?;
        self.request(move |c| {
            c.client
                .write_u64(index, offset, value)
                .map_err(|e| err(&e))
        })
    }

    /// Maps every mappable area of region `index` into this process and resolves with one
    /// zero-copy `Buffer` per area. Rejects with `ERR_VFU_EINVAL` for a region without an
    /// mmap fd and `ERR_VFU_EACCES` for a read-only one (use `regionRead` there).
    #[napi(ts_return_type = "Promise<Array<MappedArea>>")]
    pub fn map_region(
        &self,
        index: f64,
    ) -> napi::Result<AsyncTask<ClientOp<Vec<JsMappedArea>>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        self.request(move |c| {
            let (desc, fd) = c.client.get_region_info(index).map_err(|e| err(&e))?;
            let Some(fd) = fd.filter(|_| desc.mappable()) else {
                return Err(errno_error_with_message(
                    Errno::INVAL.raw_os_error(),
                    format!("region {index} cannot be mmapped"),
                ));
            };
            if !desc.writable() {
                return Err(errno_error_with_message(
                    Errno::ACCESS.raw_os_error(),
                    format!(
                        "region {index} is read-only; a Buffer over it could not be written safely"
                    ),
                ));
            }
            let mut out = Vec::new();
            for a in desc.mmap_areas() {
                let at = desc.file_offset.checked_add(a.offset).ok_or_else(|| {
                    errno_error_with_message(Errno::INVAL.raw_os_error(), "mmap offset overflows")
                })?;
                let m = Mapping::map_shared(fd.as_fd(), at, a.size).map_err(|e| {
                    crate::error::io_error(
                        &e,
                        &format!("mapping region {index} at {:#x}", a.offset),
                    )
                })?;
                out.push(JsMappedArea {
                    // Region offsets and sizes come from the server; an area over 2^53 bytes
                    // could not be mapped in the first place.
                    offset: a.offset as f64,
                    size: m.len() as f64,
                    buffer: ExternalMapping(Arc::new(m)),
                });
            }
            Ok(out)
        })
    }

    /// Allocates `size` bytes of zeroed shared memory and DMA-maps it for the device at
    /// `iova` (with `shareFd`, the default, the server maps the memory; without, it reaches
    /// it by DMA_READ/DMA_WRITE messages).
    #[napi(ts_return_type = "Promise<DmaBuffer>")]
    pub fn alloc_dma(
        &self,
        iova: BigInt,
        size: f64,
        share_fd: Option<bool>,
    ) -> napi::Result<AsyncTask<ClientOp<DmaBuffer>>, ErrorCode> {
        let iova = u64_from_bigint(&iova, "iova")?;
        let size = offset_from_js(size, "size")?;
        if size == 0 {
            return Err(invalid_arg("size must not be 0"));
        }
        let share_fd = share_fd.unwrap_or(true);
        let flag = self.closed.clone();
        self.request(move |c| {
            let buf = c
                .client
                .alloc_dma(iova, size, share_fd)
                .map_err(|e| err(&e))?;
            Ok(DmaBuffer::register(buf, &mut c.dma, flag))
        })
    }

    /// Creates `count` eventfds, binds them to vectors `0..count` of IRQ `index` (replacing
    /// earlier ones) and watches them: each interrupt calls `onIrq`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn enable_irqs(
        &self,
        index: f64,
        count: f64,
    ) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let count = u32_from_js(count, "count")?;
        if count == 0 || count > MAX_IRQ_VECTORS {
            return Err(invalid_arg(format!(
                "count must be from 1 to {MAX_IRQ_VECTORS}, got {count}"
            )));
        }
        let watch = self.irqs.clone();
        self.request(move |c| {
            let fds = c.client.enable_irqs(index, count).map_err(|e| err(&e))?;
            watch
                .register(index, fds)
                .map_err(|e| crate::error::io_error(&e, "starting the interrupt poller"))
        })
    }

    /// Unbinds every vector of IRQ `index` and stops watching it.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn disable_irqs(&self, index: f64) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let watch = self.irqs.clone();
        self.request(move |c| {
            c.client.disable_irqs(index).map_err(|e| err(&e))?;
            watch.unregister(index);
            Ok(())
        })
    }

    /// Resets the device (`DEVICE_RESET`).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn reset(&self) -> napi::Result<AsyncTask<ClientOp<()>>, ErrorCode> {
        self.request(|c| c.client.reset().map_err(|e| err(&e)))
    }

    /// Disconnects (on a worker): stops the interrupt poller and releases `onIrq`, frees the
    /// DMA memory, closes the socket. Pending requests reject with `ERR_EMUDEV_CLOSED`.
    /// Idempotent: a second call resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseAsyncClient> {
        AsyncTask::new(self.close_task())
    }
}

impl Drop for NativeAsyncClient {
    /// The safety net for a client collected without `close()`.
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            CloseAsyncClient {
                state: self.state.clone(),
                irqs: self.irqs.clone(),
            }
            .run();
        }
    }
}

/// The work behind `NativeAsyncClient.close()`.
#[derive(Debug)]
pub struct CloseAsyncClient {
    state: Arc<Mutex<Option<AsyncConnected>>>,
    irqs: Arc<IrqWatch>,
}

impl CloseAsyncClient {
    fn run(&self) {
        self.irqs.shutdown();
        // The lock is held throughout, so a concurrent close waits for this one.
        let mut state = lock(&self.state);
        if let Some(c) = state.take() {
            for slot in &c.dma {
                lock(slot).take();
            }
            c.client.close();
        }
    }
}

impl Task for CloseAsyncClient {
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
    use std::time::Duration;

    #[test]
    fn turns_run_in_ticket_order_and_skipped_tickets_do_not_block() {
        let seq = Arc::new(Sequencer::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let t0 = seq.ticket();
        let t1 = seq.ticket();
        let t2 = seq.ticket();
        let t3 = seq.ticket();
        // t3 and t1 start waiting before t0 runs; t2 is given up without running.
        let spawn = |t: Turn, n: u64| {
            let order = order.clone();
            std::thread::spawn(move || {
                t.wait();
                lock(&order).push(n);
                drop(t);
            })
        };
        let h3 = spawn(t3, 3);
        let h1 = spawn(t1, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(lock(&order).is_empty(), "nobody runs before ticket 0");
        drop(t2);
        t0.wait();
        lock(&order).push(0);
        drop(t0);
        h1.join().expect("t1");
        h3.join().expect("t3");
        assert_eq!(*lock(&order), [0, 1, 3]);
        // The next ticket runs at once.
        let t4 = seq.ticket();
        t4.wait();
    }

    fn temp_path(name: &str) -> String {
        let dir =
            std::env::temp_dir().join(format!("emudev-node-ac-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("s.sock").to_str().expect("UTF-8").to_owned()
    }

    #[test]
    fn requests_run_in_order_and_reject_after_close() {
        let path = temp_path("order");
        let server = NativeServer::start_edu(&path).expect("server");
        let client =
            NativeAsyncClient::open(&path, ClientConfig::default(), None).expect("connect");
        assert_eq!(client.device_info().num_regions, 9);
        assert_eq!(client.regions()[0].size, 0x10_0000);
        // Two requests made before either runs: they run in the order made.
        let mut w = client
            .op(|c| c.client.write_u32(0, 4, 0x1234_5678).map_err(|e| err(&e)))
            .expect("write task");
        let mut r = client
            .op(|c| c.client.read_u32(0, 4).map_err(|e| err(&e)))
            .expect("read task");
        let reader = std::thread::spawn(move || r.run());
        std::thread::sleep(Duration::from_millis(20));
        assert!(w.run().is_ok());
        let read = reader.join().expect("reader");
        assert_eq!(read.ok(), Some(!0x1234_5678u32));
        // A request made before close, run after it, rejects.
        let mut late = client
            .op(|c| c.client.read_u32(0, 0).map_err(|e| err(&e)))
            .expect("late task");
        client.close_task().run();
        assert_eq!(late.run().err().map(|e| e.status), Some(ErrorCode::Closed));
        assert_eq!(
            client.op(|_| Ok(())).err().map(|e| e.status),
            Some(ErrorCode::Closed)
        );
        let _ = server;
    }
}
