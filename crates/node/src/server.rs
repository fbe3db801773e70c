//! `NativeServer`: a native device (`edu` or `emu_iavf`) served over
//! vfio-user from its own thread.
//!
//! `NativeServer.listenEdu(path)` and `NativeServer.listenIavf(path, options)`
//! bind the socket and start the server thread before they return, so a client can connect as soon as it has the
//! object. `close()` stops the thread and joins it on a libuv worker (an
//! [`AsyncTask`]), never on the JS thread; when it resolves the socket file is
//! gone and every client mapping has been dropped. The server thread is a
//! plain OS thread: it does not keep Node's event loop alive.
//!
//! A `NativeServer` collected without `close()` still stops its server: the
//! finalizer stops and joins the thread (briefly, on the JS thread). `close()`
//! is the documented way; the finalizer is only a safety net.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use emudev_edu::{EduDevice, EduStatsHandle};
use emudev_iavf::device::MTU_RANGE;
use emudev_iavf::spec::regs::MAX_QUEUE_PAIRS;
use emudev_iavf::{IavfConfig, IavfConfigError, IavfDevice, IavfHandle};
use emudev_vfio_user::server::{
    RunningServer, Server, ServerBindError, ServerConfig, ServerHandle, ServerStatsSnapshot,
};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;

use crate::error::{
    closed, errno_error_with_message, invalid_arg, io_error, ErrorCode, NativeError,
};
use crate::{lock, rejection};

/// The device name `NativeServer.device` reports for an edu server.
pub const EDU_DEVICE_NAME: &str = "emu_edu";
/// The device name `NativeServer.device` reports for an iavf server.
pub const IAVF_DEVICE_NAME: &str = "emu_iavf";

/// A server's counters (`NativeServer.stats()`); counts are exact up to 2^53.
#[napi(object, object_from_js = false, js_name = "ServerStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsServerStats {
    /// Clients accepted so far.
    pub clients: f64,
    /// Messages received.
    pub messages: f64,
    /// Requests answered with an error.
    pub errors: f64,
    /// Server-to-client DMA requests sent.
    pub dma_requests: f64,
    /// Whether a client is connected now.
    pub connected: bool,
}

impl From<ServerStatsSnapshot> for JsServerStats {
    fn from(s: ServerStatsSnapshot) -> Self {
        JsServerStats {
            clients: s.clients as f64,
            messages: s.messages as f64,
            errors: s.errors as f64,
            dma_requests: s.dma_requests as f64,
            connected: s.connected,
        }
    }
}

/// The edu device's counters (`NativeServer.eduStats()`).
#[napi(object, object_from_js = false, js_name = "EduStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsEduStats {
    /// BAR0 reads.
    pub mmio_reads: f64,
    /// BAR0 writes.
    pub mmio_writes: f64,
    /// DMA transfers that completed.
    pub dma_transfers: f64,
    /// DMA transfers that ended without copying.
    pub dma_errors: f64,
    /// Interrupts the device tried to signal.
    pub irqs_raised: f64,
    /// Of those, the ones nobody received.
    pub irqs_undelivered: f64,
    /// BAR0 accesses of a wrong size or alignment.
    pub bad_accesses: f64,
}

impl From<emudev_edu::EduStats> for JsEduStats {
    fn from(s: emudev_edu::EduStats) -> Self {
        JsEduStats {
            mmio_reads: s.mmio_reads as f64,
            mmio_writes: s.mmio_writes as f64,
            dma_transfers: s.dma_transfers as f64,
            dma_errors: s.dma_errors as f64,
            irqs_raised: s.irqs_raised as f64,
            irqs_undelivered: s.irqs_undelivered as f64,
            bad_accesses: s.bad_accesses as f64,
        }
    }
}

/// The emulated iavf VF's counters (`NativeServer.iavfStats()`).
#[napi(object, object_from_js = false, js_name = "IavfStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfStats {
    /// BAR0 reads.
    pub mmio_reads: f64,
    /// BAR0 writes.
    pub mmio_writes: f64,
    /// BAR0 accesses of a size or alignment other than one aligned dword.
    pub bad_accesses: f64,
    /// Admin transmit queue descriptors completed.
    pub aq_commands: f64,
    /// Admin-queue faults (ring or buffer outside mapped memory, bad opcode, ...).
    pub aq_errors: f64,
    /// virtchnl messages handled with status SUCCESS.
    pub vc_ok: f64,
    /// virtchnl messages refused with an error status.
    pub vc_errors: f64,
    /// Of `vcErrors`, those refused as NOT_SUPPORTED.
    pub vc_not_supported: f64,
    /// Messages written to the admin receive queue (replies and events).
    pub arq_delivered: f64,
    /// Messages dropped because too many waited for ARQ buffers.
    pub arq_dropped: f64,
    /// VF resets (RESET_VF, DEVICE_RESET, client disconnect).
    pub vf_resets: f64,
    /// LINK_CHANGE events queued.
    pub link_events: f64,
    /// Interrupts the device tried to signal.
    pub irqs_raised: f64,
    /// Of those, the ones that reached no eventfd.
    pub irqs_undelivered: f64,
    /// Queue interrupts folded into one already held by ITR moderation.
    pub irqs_coalesced: f64,
    /// Queue interrupts held by ITR moderation and fired when the window ended (also in
    /// `irqsRaised`).
    pub irqs_deferred: f64,
    /// Updates the emudev object model refused (a device bug if non-zero).
    pub emu_errors: f64,
}

impl From<emudev_iavf::IavfStats> for JsIavfStats {
    fn from(s: emudev_iavf::IavfStats) -> Self {
        JsIavfStats {
            mmio_reads: s.mmio_reads as f64,
            mmio_writes: s.mmio_writes as f64,
            bad_accesses: s.bad_accesses as f64,
            aq_commands: s.aq_commands as f64,
            aq_errors: s.aq_errors as f64,
            vc_ok: s.vc_ok as f64,
            vc_errors: s.vc_errors as f64,
            vc_not_supported: s.vc_not_supported as f64,
            arq_delivered: s.arq_delivered as f64,
            arq_dropped: s.arq_dropped as f64,
            vf_resets: s.vf_resets as f64,
            link_events: s.link_events as f64,
            irqs_raised: s.irqs_raised as f64,
            irqs_undelivered: s.irqs_undelivered as f64,
            irqs_coalesced: s.irqs_coalesced as f64,
            irqs_deferred: s.irqs_deferred as f64,
            emu_errors: s.emu_errors as f64,
        }
    }
}

/// The emulated iavf VF's state (`NativeServer.iavfState()`).
#[napi(object, object_from_js = false, js_name = "IavfState")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfState {
    /// The link state reported to the VF (`setLink`).
    pub link_up: bool,
    /// Queue pairs configured.
    pub queue_pairs: u32,
    /// TX queues the VF has enabled.
    pub tx_enabled: u32,
    /// RX queues the VF has enabled.
    pub rx_enabled: u32,
    /// The virtchnl version the VF negotiated (`"1.1"`); absent before VERSION.
    pub version: Option<String>,
    /// Granted capability flags (0 before GET_VF_RESOURCES).
    pub caps: u32,
    /// MAC filters (the default MAC included), `aa:bb:cc:dd:ee:ff`.
    pub macs: Vec<String>,
}

impl From<emudev_iavf::IavfSnapshot> for JsIavfState {
    fn from(s: emudev_iavf::IavfSnapshot) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        JsIavfState {
            link_up: s.link_up,
            queue_pairs: count(s.tx.len()),
            tx_enabled: count(s.tx.iter().filter(|q| q.enabled).count()),
            rx_enabled: count(s.rx.iter().filter(|q| q.enabled).count()),
            version: s.version.map(|v| format!("{}.{}", v.major, v.minor)),
            caps: s.caps,
            macs: s.macs.iter().map(emudev_iavf::device::format_mac).collect(),
        }
    }
}

/// Options of `NativeServer.listenIavf`; absent fields take the device's
/// defaults (instance name `emu_iavf0`, one queue pair, a MAC derived from
/// the name, MTU 1500).
#[napi(object, object_to_js = false, js_name = "IavfServerOptions")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsIavfServerOptions {
    /// Instance name (`emu_iavf0`); also seeds the default MAC.
    pub name: Option<String>,
    /// Queue pairs, 1 to 16.
    pub queues: Option<f64>,
    /// Default MAC address, `aa:bb:cc:dd:ee:ff` (unicast, not zero).
    pub mac: Option<String>,
    /// MTU, 68 to 9702.
    pub mtu: Option<f64>,
    /// Offer the TX/RX tail registers as mmappable doorbell pages (BAR0 pages 0x0000 and
    /// 0x2000); trapped tail writes keep working for clients that do not map them.
    pub doorbell_pages: Option<bool>,
    /// Doorbell pages plus one kick eventfd per queue pair, offered by GET_REGION_IO_FDS: a
    /// client that signals it after each tail store lets the idle data-path worker sleep until
    /// kicked (`IavfPort` does so when it maps the pages). Implies `doorbellPages`.
    pub doorbell_kicks: Option<bool>,
    /// Attach the software data path with this back-end (`loopback`, `macswap`, `rxonly`,
    /// `txonly[:LEN]`, `pair:<peer>`, `pcap:<file>`, `pcap-replay:<file>`, `channel`).
    pub backend: Option<String>,
}

/// The default instance name of `listenIavf`.
pub const DEFAULT_IAVF_NAME: &str = "emu_iavf0";

/// Builds (and validates) the device configuration from JS options, through
/// [`IavfConfig::set`] and [`IavfConfig::validate`] so that JS options and
/// `--vdev` arguments parse alike. Messages name the key
/// (`listenIavf: queues=17: must be an integer 1..=16`).
pub(crate) fn iavf_config(options: &JsIavfServerOptions) -> Result<IavfConfig, NativeError> {
    let name = options.name.as_deref().unwrap_or(DEFAULT_IAVF_NAME);
    let mut config = IavfConfig::new(name);
    if let Some(q) = options.queues {
        let q = number_option("queues", q, 1..=MAX_QUEUE_PAIRS)?;
        config.set("queues", &q.to_string()).map_err(config_error)?;
    }
    if let Some(mtu) = options.mtu {
        let mtu = number_option("mtu", mtu, MTU_RANGE)?;
        config.set("mtu", &mtu.to_string()).map_err(config_error)?;
    }
    if let Some(mac) = &options.mac {
        config.set("mac", mac).map_err(config_error)?;
    }
    if let Some(on) = options.doorbell_pages {
        config = config.with_doorbell_pages(on);
    }
    if options.doorbell_kicks == Some(true) {
        if options.doorbell_pages == Some(false) {
            return Err(invalid_arg(
                "listenIavf: doorbellKicks needs the doorbell pages (doorbellPages: false given)",
            ));
        }
        config = config.with_doorbell_kicks(true);
    }
    config.validate().map_err(config_error)?;
    Ok(config)
}

/// A numeric option in `range`, with a message naming the key and the range.
fn number_option(
    key: &str,
    value: f64,
    range: std::ops::RangeInclusive<u16>,
) -> Result<u16, NativeError> {
    let (lo, hi) = (f64::from(*range.start()), f64::from(*range.end()));
    if value.fract() != 0.0 || !(lo..=hi).contains(&value) {
        return Err(invalid_arg(format!(
            "listenIavf: {key}={value}: must be an integer {}..={}",
            range.start(),
            range.end()
        )));
    }
    // The range check above makes this cast exact.
    Ok(value as u16)
}

/// The error for a refused configuration, as `ERR_EMUDEV_INVALID_ARG`.
fn config_error(e: IavfConfigError) -> NativeError {
    match e {
        // Worded here from the range itself, so the message always matches it.
        IavfConfigError::Mtu(v) => invalid_arg(format!(
            "listenIavf: mtu={v}: must be an integer {}..={}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )),
        other => invalid_arg(format!("listenIavf: {other}")),
    }
}

/// The device behind a live server, with what reaches it from other threads.
#[derive(Debug)]
pub(crate) enum Served {
    /// An `edu` device.
    Edu {
        server: RunningServer<EduDevice>,
        edu: EduStatsHandle,
    },
    /// An emulated iavf VF.
    Iavf {
        server: RunningServer<IavfDevice>,
        iavf: IavfHandle,
        /// Its instance name (`emu_iavf0`): what `pair:<peer>` back-ends name.
        name: String,
        /// The software data path, while one is attached.
        datapath: Mutex<Option<crate::datapath::Attached>>,
    },
}

impl Served {
    fn stop(self) -> io::Result<()> {
        match self {
            Served::Edu { server, .. } => server.stop(),
            Served::Iavf {
                server,
                iavf,
                name,
                datapath,
            } => {
                crate::datapath::detach_on_close(&iavf, &name, &datapath);
                server.stop()
            }
        }
    }
}

/// What a live server holds; taken out (and stopped) by `close()`.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) served: Served,
    handle: ServerHandle,
}

/// The error for a failed bind, with the stable codes JavaScript branches on.
pub(crate) fn bind_error(e: &ServerBindError) -> NativeError {
    match e {
        ServerBindError::InUse(_) => napi::Error::new(ErrorCode::SocketInUse, e.to_string()),
        ServerBindError::NotASocket(_) => napi::Error::new(ErrorCode::NotASocket, e.to_string()),
        ServerBindError::Listen { source, .. } | ServerBindError::StopFd(source) => {
            let mut err = io_error(source, "listen");
            err.reason = e.to_string();
            err
        }
    }
}

/// An `edu` device served over vfio-user on a UNIX socket.
///
/// One client at a time; a client that leaves loses its DMA maps and
/// interrupts, the device keeps its state for the next one.
#[napi]
#[derive(Debug)]
pub struct NativeServer {
    path: String,
    device: &'static str,
    closed: AtomicBool,
    state: Arc<Mutex<Option<Running>>>,
}

impl NativeServer {
    /// Binds `path` and starts serving a fresh edu device on its own thread.
    pub fn start_edu(path: &str) -> napi::Result<Self, ErrorCode> {
        let device = EduDevice::new();
        let edu = device.stats_handle();
        let server = Server::bind(PathBuf::from(path), device, ServerConfig::default())
            .map_err(|e| bind_error(&e))?;
        let handle = server.handle();
        // On a spawn failure the server is dropped, which removes the socket.
        let server = server
            .spawn()
            .map_err(|e| io_error(&e, "cannot start the server thread"))?;
        Ok(Self::running(
            path,
            EDU_DEVICE_NAME,
            Running {
                served: Served::Edu { server, edu },
                handle,
            },
        ))
    }

    /// Binds `path` and starts serving a fresh iavf VF built from `config`
    /// (validated here again) on its own thread.
    pub fn start_iavf(
        path: &str,
        config: IavfConfig,
        backend: Option<&str>,
    ) -> napi::Result<Self, ErrorCode> {
        let name = config.name.clone();
        let device = IavfDevice::new(config).map_err(|e| match e {
            emudev_iavf::CreateIavfError::Config(c) => config_error(c),
            // Only a device bug gets here; EIO says "not your argument".
            other => errno_error_with_message(5, format!("cannot build the iavf device: {other}")),
        })?;
        let iavf = device.handle();
        let server = device
            .serve(PathBuf::from(path), ServerConfig::default())
            .map_err(|e| bind_error(&e))?;
        let handle = server.handle();
        // Attached before the thread starts; on failure the server is dropped (socket removed).
        let datapath = match backend {
            Some(spec) => Some(crate::datapath::attach(&iavf, &name, spec)?),
            None => None,
        };
        let server = server.spawn().map_err(|e| {
            if datapath.is_some() {
                crate::datapath::release(&name);
            }
            io_error(&e, "cannot start the server thread")
        })?;
        Ok(Self::running(
            path,
            IAVF_DEVICE_NAME,
            Running {
                served: Served::Iavf {
                    server,
                    iavf,
                    name,
                    datapath: Mutex::new(datapath),
                },
                handle,
            },
        ))
    }

    fn running(path: &str, device: &'static str, running: Running) -> Self {
        NativeServer {
            path: path.to_owned(),
            device,
            closed: AtomicBool::new(false),
            state: Arc::new(Mutex::new(Some(running))),
        }
    }

    /// Runs `f` on the live server, or fails with `ERR_EMUDEV_CLOSED`.
    pub(crate) fn with_running<T>(
        &self,
        f: impl FnOnce(&Running) -> T,
    ) -> napi::Result<T, ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativeServer"));
        }
        lock(&self.state)
            .as_ref()
            .map(f)
            .ok_or_else(|| closed("NativeServer"))
    }

    /// The error for a device-specific method called on the other device.
    pub(crate) fn wrong_device(&self, method: &str, wanted: &str) -> NativeError {
        invalid_arg(format!(
            "{method}() is for {wanted} servers; this one serves {}",
            self.device
        ))
    }

    /// The work of `close()`, for callers that are already off the JS thread.
    pub(crate) fn close_task(&self) -> CloseServer {
        self.closed.store(true, Ordering::SeqCst);
        CloseServer {
            state: self.state.clone(),
        }
    }
}

#[napi]
impl NativeServer {
    /// Serves a new edu device on the UNIX socket at `path` (mode 0600).
    ///
    /// A stale socket file (nobody listening) is replaced. Throws
    /// `ERR_EMUDEV_SOCKET_IN_USE` when a live server listens there,
    /// `ERR_EMUDEV_NOT_A_SOCKET` when something else is at the path, and
    /// `ERR_VFU_<ERRNO>` for other OS errors (`ERR_VFU_ENOENT` for a missing
    /// directory, `ERR_VFU_EACCES`, `ERR_VFU_EINVAL` for a path too long).
    #[napi(factory)]
    pub fn listen_edu(path: String) -> napi::Result<Self, ErrorCode> {
        Self::start_edu(&path)
    }

    /// Serves a new emulated iavf VF (`emu_iavf`) on the UNIX socket at
    /// `path`, configured by `options` (the `--vdev` keys `queues`, `mac`,
    /// `mtu`, and the instance `name`).
    ///
    /// Throws `ERR_EMUDEV_INVALID_ARG` naming the key for a bad option
    /// (`queues=17: must be 1..=16`), and the same socket errors as
    /// `listenEdu`.
    #[napi(factory)]
    pub fn listen_iavf(
        path: String,
        options: Option<JsIavfServerOptions>,
    ) -> napi::Result<Self, ErrorCode> {
        let options = options.unwrap_or_default();
        let config = iavf_config(&options)?;
        Self::start_iavf(&path, config, options.backend.as_deref())
    }

    /// The socket path.
    #[napi(getter)]
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// The device served: `"emu_edu"` or `"emu_iavf"`.
    #[napi(getter, ts_return_type = "'emu_edu' | 'emu_iavf'")]
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The server's counters now. Throws `ERR_EMUDEV_CLOSED` after `close()`.
    #[napi]
    pub fn stats(&self) -> napi::Result<JsServerStats, ErrorCode> {
        self.with_running(|r| r.handle.stats().into())
    }

    /// The edu device's counters now. Throws `ERR_EMUDEV_CLOSED` after
    /// `close()` and `ERR_EMUDEV_INVALID_ARG` on an iavf server.
    #[napi]
    pub fn edu_stats(&self) -> napi::Result<JsEduStats, ErrorCode> {
        self.with_running(|r| match &r.served {
            Served::Edu { edu, .. } => Ok(edu.snapshot().into()),
            Served::Iavf { .. } => Err(self.wrong_device("eduStats", EDU_DEVICE_NAME)),
        })?
    }

    /// The iavf device's counters now. Throws `ERR_EMUDEV_CLOSED` after
    /// `close()` and `ERR_EMUDEV_INVALID_ARG` on an edu server.
    #[napi]
    pub fn iavf_stats(&self) -> napi::Result<JsIavfStats, ErrorCode> {
        self.with_running(|r| match &r.served {
            Served::Iavf { iavf, .. } => Ok(iavf.stats().into()),
            Served::Edu { .. } => Err(self.wrong_device("iavfStats", IAVF_DEVICE_NAME)),
        })?
    }

    /// The iavf VF's state now (link, enabled queues, negotiated version).
    /// Throws `ERR_EMUDEV_CLOSED` after `close()` and `ERR_EMUDEV_INVALID_ARG`
    /// on an edu server.
    #[napi]
    pub fn iavf_state(&self) -> napi::Result<JsIavfState, ErrorCode> {
        self.with_running(|r| match &r.served {
            Served::Iavf { iavf, .. } => Ok(iavf.snapshot().into()),
            Served::Edu { .. } => Err(self.wrong_device("iavfState", IAVF_DEVICE_NAME)),
        })?
    }

    /// Sets the iavf VF's link state; a driver with enabled queues gets a
    /// LINK_CHANGE event. Throws `ERR_EMUDEV_CLOSED` after `close()` and
    /// `ERR_EMUDEV_INVALID_ARG` on an edu server.
    #[napi]
    pub fn set_link(&self, up: bool) -> napi::Result<(), ErrorCode> {
        self.with_running(|r| match &r.served {
            Served::Iavf { iavf, .. } => {
                iavf.set_link(up);
                Ok(())
            }
            Served::Edu { .. } => Err(self.wrong_device("setLink", IAVF_DEVICE_NAME)),
        })?
    }

    /// Starts writing every vfio-user message this server sends and receives, decoded, as
    /// JSON lines appended to `path` (labelled `"device": label`, default the device name);
    /// replaces a trace already running. Throws `ERR_VFU_<ERRNO>` when the file cannot be
    /// opened, `ERR_EMUDEV_CLOSED` after `close()`.
    #[napi]
    pub fn trace_start(&self, path: String, label: Option<String>) -> napi::Result<(), ErrorCode> {
        let label = label.unwrap_or_else(|| self.device.to_owned());
        let tracer = crate::trace::append(&path, &label)?;
        self.with_running(|r| {
            r.handle.set_tracer(Some(tracer));
        })
    }

    /// Stops tracing (nothing happens if no trace runs).
    #[napi]
    pub fn trace_stop(&self) -> napi::Result<(), ErrorCode> {
        self.with_running(|r| {
            r.handle.set_tracer(None);
        })
    }

    /// Stops the server: disconnects the client, joins the server thread (on
    /// a worker thread) and removes the socket file. Idempotent: a second call
    /// resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseServer> {
        AsyncTask::new(self.close_task())
    }
}

/// The work behind `NativeServer.close()`.
#[derive(Debug)]
pub struct CloseServer {
    state: Arc<Mutex<Option<Running>>>,
}

impl CloseServer {
    /// Stops and joins the server if it still runs. The lock is held while
    /// joining, so a concurrent close waits for this one instead of resolving
    /// early.
    pub(crate) fn run(&self) -> Result<(), NativeError> {
        let mut state = lock(&self.state);
        match state.take() {
            Some(running) => running
                .served
                .stop()
                .map_err(|e: io::Error| io_error(&e, "stopping the server")),
            None => Ok(()),
        }
    }
}

impl Task for CloseServer {
    type Output = Result<(), NativeError>;
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<()> {
        output.map_err(|e| rejection(env, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emudev-node-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("s.sock")
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().expect("temp paths are UTF-8")
    }

    #[test]
    fn serves_stats_and_closes_idempotently() {
        let p = temp_socket("serve");
        let server = NativeServer::start_edu(path_str(&p)).expect("bind");
        assert!(p.exists());
        assert_eq!(server.device(), "emu_edu");
        assert_eq!(server.path(), path_str(&p));
        let stats = server.stats().expect("stats");
        assert_eq!(stats.clients, 0.0);
        assert!(!stats.connected);
        assert_eq!(server.edu_stats().expect("edu stats").mmio_reads, 0.0);

        let task = server.close_task();
        assert!(server.closed());
        task.run().expect("first close");
        assert!(!p.exists(), "close removes the socket");
        server.close_task().run().expect("second close is a no-op");
        assert_eq!(
            server.stats().expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            server.edu_stats().expect_err("closed").status,
            ErrorCode::Closed
        );
    }

    #[test]
    fn a_live_socket_is_in_use() {
        let p = temp_socket("inuse");
        let first = NativeServer::start_edu(path_str(&p)).expect("bind");
        let err = NativeServer::start_edu(path_str(&p)).expect_err("second bind");
        assert_eq!(err.status, ErrorCode::SocketInUse);
        assert!(err.reason.contains("in use"), "{}", err.reason);
        first.close_task().run().expect("close");
        // Once the first server is gone the path is free again.
        let again = NativeServer::start_edu(path_str(&p)).expect("rebind");
        again.close_task().run().expect("close");
    }

    #[test]
    fn a_regular_file_is_not_a_socket() {
        let p = temp_socket("file");
        std::fs::write(&p, b"x").expect("write");
        let err = NativeServer::start_edu(path_str(&p)).expect_err("bind on a file");
        assert_eq!(err.status, ErrorCode::NotASocket);
        assert!(p.exists(), "the file is left alone");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn os_errors_map_to_errno_codes() {
        let missing = "/nonexistent-emudev-dir/s.sock";
        let err = NativeServer::start_edu(missing).expect_err("no such directory");
        assert_eq!(err.status.as_str(), "ERR_VFU_ENOENT");
        let long = format!("/tmp/{}", "a".repeat(200));
        let err = NativeServer::start_edu(&long).expect_err("path too long");
        assert!(
            err.status.as_str().starts_with("ERR_VFU_E"),
            "{}",
            err.status
        );
    }

    #[test]
    fn serves_an_iavf_vf_with_its_own_stats_and_link() {
        let p = temp_socket("iavf");
        let opts = JsIavfServerOptions {
            queues: Some(4.0),
            mac: Some("02:00:00:aa:bb:01".into()),
            mtu: Some(9000.0),
            ..Default::default()
        };
        let server =
            NativeServer::start_iavf(path_str(&p), iavf_config(&opts).expect("config"), None)
                .expect("bind");
        assert_eq!(server.device(), "emu_iavf");
        let s = server.iavf_stats().expect("iavf stats");
        assert_eq!((s.mmio_reads, s.vf_resets, s.link_events), (0.0, 0.0, 0.0));
        let err = server.edu_stats().expect_err("not an edu server");
        assert_eq!(err.status, ErrorCode::InvalidArg);
        assert!(err.reason.contains("eduStats"), "{}", err.reason);
        let st = server.iavf_state().expect("state");
        assert!(st.link_up);
        assert_eq!((st.queue_pairs, st.tx_enabled, st.version), (4, 0, None));
        assert_eq!(st.macs, vec!["02:00:00:aa:bb:01".to_string()]);
        server.set_link(false).expect("set link");
        assert!(!server.iavf_state().expect("state").link_up);
        server.set_link(true).expect("set link");
        server.close_task().run().expect("close");
        assert!(!p.exists());
        assert_eq!(
            server.iavf_stats().expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            server.set_link(true).expect_err("closed").status,
            ErrorCode::Closed
        );
    }

    #[test]
    fn edu_servers_refuse_iavf_methods() {
        let p = temp_socket("edu-iavf");
        let server = NativeServer::start_edu(path_str(&p)).expect("bind");
        for err in [
            server.iavf_stats().map(|_| ()).expect_err("iavfStats"),
            server.iavf_state().map(|_| ()).expect_err("iavfState"),
            server.set_link(true).expect_err("setLink"),
        ] {
            assert_eq!(err.status, ErrorCode::InvalidArg);
            assert!(err.reason.contains("emu_iavf servers"), "{}", err.reason);
        }
        server.close_task().run().expect("close");
    }

    #[test]
    fn iavf_options_default_and_apply() {
        let c = iavf_config(&JsIavfServerOptions::default()).expect("defaults");
        assert_eq!(c, IavfConfig::new("emu_iavf0"));
        let c = iavf_config(&JsIavfServerOptions {
            name: Some("emu_iavf3".into()),
            queues: Some(16.0),
            mac: Some("02:11:22:33:44:55".into()),
            mtu: Some(9702.0),
            doorbell_pages: Some(true),
            doorbell_kicks: None,
            backend: None,
        })
        .expect("all options");
        assert_eq!(c.name, "emu_iavf3");
        assert_eq!((c.queues, c.mtu), (16, 9702));
        assert_eq!(c.mac, [2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert!(c.doorbell_pages && !c.doorbell_kicks);
        let kicks = |pages| {
            iavf_config(&JsIavfServerOptions {
                doorbell_pages: pages,
                doorbell_kicks: Some(true),
                ..Default::default()
            })
        };
        let c = kicks(None).expect("kicks");
        assert!(
            c.doorbell_pages && c.doorbell_kicks,
            "kicks bring the pages"
        );
        assert!(kicks(Some(true)).expect("both").doorbell_kicks);
        let e = kicks(Some(false)).expect_err("kicks without pages");
        assert!(e.reason.contains("doorbellKicks"), "{}", e.reason);
    }

    #[test]
    fn bad_iavf_options_are_invalid_args_naming_the_key() {
        let cases: [(JsIavfServerOptions, &str); 9] = [
            (
                JsIavfServerOptions {
                    queues: Some(0.0),
                    ..Default::default()
                },
                "queues=0",
            ),
            (
                JsIavfServerOptions {
                    queues: Some(17.0),
                    ..Default::default()
                },
                "queues=17",
            ),
            (
                JsIavfServerOptions {
                    queues: Some(1.5),
                    ..Default::default()
                },
                "queues=1.5",
            ),
            (
                JsIavfServerOptions {
                    queues: Some(f64::NAN),
                    ..Default::default()
                },
                "queues=NaN",
            ),
            (
                JsIavfServerOptions {
                    mtu: Some(67.0),
                    ..Default::default()
                },
                "mtu=67",
            ),
            (
                JsIavfServerOptions {
                    mtu: Some(9703.0),
                    ..Default::default()
                },
                "mtu=9703: must be an integer 68..=9702",
            ),
            (
                JsIavfServerOptions {
                    mac: Some("zz".into()),
                    ..Default::default()
                },
                "mac=\"zz\"",
            ),
            (
                JsIavfServerOptions {
                    mac: Some("01:00:00:00:00:01".into()),
                    ..Default::default()
                },
                "mac=01:00:00:00:00:01",
            ),
            (
                JsIavfServerOptions {
                    name: Some(String::new()),
                    ..Default::default()
                },
                "name is empty",
            ),
        ];
        for (opts, needle) in cases {
            let err = iavf_config(&opts).expect_err("must be refused");
            assert_eq!(err.status, ErrorCode::InvalidArg, "{opts:?}");
            assert!(err.reason.starts_with("listenIavf: "), "{}", err.reason);
            assert!(err.reason.contains(needle), "{} lacks {needle}", err.reason);
        }
    }

    #[test]
    fn an_iavf_server_on_a_live_socket_is_in_use() {
        let p = temp_socket("iavf-inuse");
        let first = NativeServer::start_edu(path_str(&p)).expect("bind");
        let err = NativeServer::start_iavf(path_str(&p), IavfConfig::new("emu_iavf0"), None)
            .expect_err("second bind");
        assert_eq!(err.status, ErrorCode::SocketInUse);
        first.close_task().run().expect("close");
    }

    #[test]
    fn close_disconnects_a_connected_client() {
        let p = temp_socket("client");
        let server = NativeServer::start_edu(path_str(&p)).expect("bind");
        let _stream = UnixStream::connect(&p).expect("connect");
        server
            .close_task()
            .run()
            .expect("close with a client attached");
        assert!(!p.exists());
    }
}
