//! `NativeIavfPort`: the client-side iavf VF driver (`iavf_client`) for JavaScript.
//!
//! It wraps one [`IavfDriver`] over one vfio-user connection. The driver's work always runs
//! off the JS thread:
//!
//! - **Requests** (`start`, `reset`, `stats`, `close`) are `AsyncTask`s on the libuv pool.
//!   They run one at a time in the order they were made (a [`Sequencer`] ticket each), so a
//!   `stats()` made while `start()` is pending runs after the bring-up.
//! - **Events.** The driver handles the PF's events while it waits for replies, and a watcher
//!   thread looks at the admin receive queue when the vector-0 (admin queue) eventfd fires,
//!   and every [`WATCH_INTERVAL`] in case an interrupt was consumed by a request. Each event
//!   (link change, reset impending, ...) and each bring-up step goes to JavaScript through
//!   one **weak** threadsafe function, the `onEvent` callback given to `connect`, so a port
//!   never keeps Node alive by itself.
//! - **Getters** (`link`, `mac`, `state`) read a small cache that every request and the
//!   watcher refresh; they never wait for the driver.
//! - **Close.** `close()` (on a worker) marks the port closed (a bring-up in progress stops at
//!   its next step), stops and joins the watcher, shuts the VF down (queues disabled, admin
//!   queue off, DMA unmapped), disconnects and releases `onEvent`. It always resolves: a
//!   connection that is already gone has nothing left to shut down. Requests made after it
//!   reject with `ERR_EMUDEV_CLOSED`.
//!
//! Driver errors keep stable codes ([`driver_error`]): `ERR_EMUDEV_TIMEOUT`,
//! `ERR_EMUDEV_IAVF_REFUSED` (the PF answered with an error status or did not grant the
//! capability), `ERR_EMUDEV_IAVF_PROTOCOL` (the PF answered something unusable),
//! `ERR_EMUDEV_NOT_READY`, `ERR_EMUDEV_INVALID_ARG`, `ERR_VFU_<ERRNO>` for the transport.

use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emudev_iavf::device::format_mac;
use emudev_iavf::driver::{
    DriverConfig, DriverError, DriverEvent, DriverState, EnableMode, FwdConfig, FwdCounters,
    FwdMode, FwdStats, IavfDriver, LinkInfo, StepRecord, MAX_BURST,
};
use emudev_iavf::spec::virtchnl::EthStats;
use emudev_vfio_user::client::{Client, ClientConfig};
use emudev_vfio_user::trace::TraceSwitch;
use napi::bindgen_prelude::{AsyncTask, Buffer, Function, ToNapiValue, TypeName};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status, Task};
use napi_derive::napi;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

use crate::async_client::{Sequencer, Turn};
use crate::client::client_error;
use crate::error::{closed, errno_error_with_message, invalid_arg, ErrorCode, NativeError};
use crate::{lock, rejection};

/// How often the watcher looks at the admin receive queue without an interrupt.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Most queue pairs a port asks for (the driver's queue bitmaps are 32 bits; the PF refuses
/// more than it granted).
pub const MAX_PORT_QUEUES: u16 = 32;
/// Longest `opTimeoutMs` / `linkTimeoutMs`.
pub const MAX_PORT_TIMEOUT_MS: f64 = 600_000.0;

const WHAT: &str = "NativeIavfPort";

// ----- JS shapes ----------------------------------------------------------------------------------

/// Options of `NativeIavfPort.connect`: how `start()` brings the port up.
#[napi(object, object_to_js = false, js_name = "IavfPortOptions")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsIavfPortOptions {
    /// Queue pairs to configure (default 1; the PF refuses more than it granted).
    pub queues: Option<f64>,
    /// Descriptors per TX and RX ring (default 512; the PF wants a multiple of 32 up to 4096).
    pub ring_len: Option<f64>,
    /// Bound for one admin-queue command, in milliseconds (default 2000).
    pub op_timeout_ms: Option<f64>,
    /// Bound for the link event after ENABLE_QUEUES, in milliseconds (default 2000).
    pub link_timeout_ms: Option<f64>,
    /// `'per-queue'` (DPDK, the default) or `'all-at-once'` (Linux) ENABLE_QUEUES.
    #[napi(ts_type = "'per-queue' | 'all-at-once'")]
    pub enable_mode: Option<String>,
    /// Start with a vfio-user DEVICE_RESET (default true).
    pub device_reset: Option<bool>,
    /// Share the DMA memory's fd with the server (default true).
    pub share_fd: Option<bool>,
    /// Append every vfio-user message of this connection, decoded, as JSON lines to this file
    /// (`--trace FILE`).
    pub trace: Option<String>,
    /// mmap the VF's doorbell pages when it offers them, so that tail writes are stores
    /// instead of messages, and signal its kick eventfds after each store when it offers those
    /// too (`doorbells=kick`). Default true; a VF without pages keeps trapped tails.
    pub map_doorbells: Option<bool>,
}

fn integer_option(key: &str, value: f64, lo: f64, hi: f64) -> Result<f64, NativeError> {
    if value.fract() != 0.0 || !(lo..=hi).contains(&value) {
        return Err(invalid_arg(format!(
            "{key} must be an integer from {lo} to {hi}, got {value}"
        )));
    }
    Ok(value)
}

impl JsIavfPortOptions {
    /// The driver configuration, or `ERR_EMUDEV_INVALID_ARG` naming the bad option.
    pub(crate) fn to_config(&self) -> Result<DriverConfig, NativeError> {
        let mut c = DriverConfig::default();
        if let Some(q) = self.queues {
            // In range: exact.
            c.queue_pairs = integer_option("queues", q, 1.0, f64::from(MAX_PORT_QUEUES))? as u16;
        }
        if let Some(n) = self.ring_len {
            c.ring_len = integer_option("ringLen", n, 1.0, f64::from(u16::MAX))? as u16;
        }
        if let Some(ms) = self.op_timeout_ms {
            let ms = integer_option("opTimeoutMs", ms, 1.0, MAX_PORT_TIMEOUT_MS)?;
            c.op_timeout = Duration::from_millis(ms as u64);
        }
        if let Some(ms) = self.link_timeout_ms {
            let ms = integer_option("linkTimeoutMs", ms, 1.0, MAX_PORT_TIMEOUT_MS)?;
            c.link_timeout = Duration::from_millis(ms as u64);
        }
        if let Some(mode) = &self.enable_mode {
            c.enable_mode = match mode.as_str() {
                "per-queue" => EnableMode::PerQueue,
                "all-at-once" => EnableMode::AllAtOnce,
                other => {
                    return Err(invalid_arg(format!(
                        "enableMode must be 'per-queue' or 'all-at-once', got '{other}'"
                    )))
                }
            };
        }
        if let Some(b) = self.device_reset {
            c.device_reset = b;
        }
        if let Some(b) = self.share_fd {
            c.share_fd = b;
        }
        c.validate()
            .map_err(|e| invalid_arg(format!("port options: {e}")))?;
        Ok(c)
    }
}

/// The link as the PF last reported it.
#[napi(object, object_from_js = false, js_name = "IavfLink")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfLink {
    /// Link up.
    pub up: bool,
    /// Speed in Mbps, when the PF reported a known one.
    pub speed_mbps: Option<u32>,
}

impl From<LinkInfo> for JsIavfLink {
    fn from(l: LinkInfo) -> Self {
        JsIavfLink {
            up: l.up,
            speed_mbps: l.speed_mbps,
        }
    }
}

/// One bring-up step done.
#[napi(object, object_from_js = false, js_name = "IavfStep")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfStep {
    /// The step (`"VIRTCHNL_OP_VERSION"`, `"admin queue"`, `"link"`, ...).
    pub step: String,
    /// How long it took, in microseconds.
    pub micros: f64,
    /// What it found, one line.
    pub detail: String,
}

impl From<&StepRecord> for JsIavfStep {
    fn from(r: &StepRecord) -> Self {
        JsIavfStep {
            step: r.step.name().to_owned(),
            // Microseconds of a bounded step: far below 2^53.
            micros: r.duration.as_micros() as f64,
            detail: r.detail.clone(),
        }
    }
}

/// What `start()` and `reset()` resolve with.
#[napi(object, object_from_js = false, js_name = "IavfStartResult")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfStartResult {
    /// Which start/reset this was (1 for the first); `'step'` events carry the same number.
    pub run: u32,
    /// The link after bring-up.
    pub link: JsIavfLink,
    /// The port's MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Every step, in order.
    pub steps: Vec<JsIavfStep>,
}

/// The VSI's Ethernet counters (GET_STATS) and the driver's own.
#[napi(object, object_from_js = false, js_name = "IavfPortStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsIavfPortStats {
    /// Bytes received.
    pub rx_bytes: f64,
    /// Unicast packets received.
    pub rx_unicast: f64,
    /// Multicast packets received.
    pub rx_multicast: f64,
    /// Broadcast packets received.
    pub rx_broadcast: f64,
    /// Received packets dropped.
    pub rx_discards: f64,
    /// Received packets of an unknown protocol.
    pub rx_unknown_protocol: f64,
    /// Bytes sent.
    pub tx_bytes: f64,
    /// Unicast packets sent.
    pub tx_unicast: f64,
    /// Multicast packets sent.
    pub tx_multicast: f64,
    /// Broadcast packets sent.
    pub tx_broadcast: f64,
    /// Packets to send that were dropped.
    pub tx_discards: f64,
    /// Send errors.
    pub tx_errors: f64,
    /// Admin-queue messages that answered nothing the driver waited for.
    pub stray_messages: f64,
}

impl JsIavfPortStats {
    fn new(s: &EthStats, stray: u64) -> Self {
        // Counters are exact up to 2^53.
        JsIavfPortStats {
            rx_bytes: s.rx_bytes as f64,
            rx_unicast: s.rx_unicast as f64,
            rx_multicast: s.rx_multicast as f64,
            rx_broadcast: s.rx_broadcast as f64,
            rx_discards: s.rx_discards as f64,
            rx_unknown_protocol: s.rx_unknown_protocol as f64,
            tx_bytes: s.tx_bytes as f64,
            tx_unicast: s.tx_unicast as f64,
            tx_multicast: s.tx_multicast as f64,
            tx_broadcast: s.tx_broadcast as f64,
            tx_discards: s.tx_discards as f64,
            tx_errors: s.tx_errors as f64,
            stray_messages: stray as f64,
        }
    }
}

/// Options of `NativeIavfPort.forward`: a testpmd forwarding engine on every queue pair.
#[napi(object, object_to_js = false, js_name = "IavfForwardOptions")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsIavfForwardOptions {
    /// `'io'` (default), `'macswap'`, `'rxonly'` or `'txonly'`.
    #[napi(ts_type = "'io' | 'macswap' | 'rxonly' | 'txonly'")]
    pub mode: Option<String>,
    /// Stop after this many milliseconds (default: only `stopForward()` or `close()` stop it).
    pub duration_ms: Option<f64>,
    /// Packets per burst, 1 to 64 (default 32).
    pub burst: Option<f64>,
    /// Bursts of the generated frame sent per queue before forwarding (testpmd `tx_first`;
    /// default 0).
    pub tx_first: Option<f64>,
    /// Length of the generated UDP/IPv4 frame (198.18.0.1 -> 198.19.0.1), 60 to the buffer
    /// size (default 64).
    pub frame_len: Option<f64>,
}

/// Counters of `forward()`.
#[napi(object, object_from_js = false, js_name = "IavfForwardStats")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsIavfForwardStats {
    /// Packets received.
    pub rx_packets: f64,
    /// Their bytes.
    pub rx_bytes: f64,
    /// Packets sent.
    pub tx_packets: f64,
    /// Their bytes.
    pub tx_bytes: f64,
    /// Packets dropped because the TX ring was full.
    pub tx_dropped: f64,
    /// Seconds the engine ran (the last call's; 0 from `forwardStats()`).
    pub seconds: f64,
}

impl JsIavfForwardStats {
    fn new(s: &FwdStats, seconds: f64) -> Self {
        JsIavfForwardStats {
            rx_packets: s.rx_packets as f64,
            rx_bytes: s.rx_bytes as f64,
            tx_packets: s.tx_packets as f64,
            tx_bytes: s.tx_bytes as f64,
            tx_dropped: s.tx_dropped as f64,
            seconds,
        }
    }
}

impl JsIavfForwardOptions {
    fn to_config(&self) -> Result<FwdConfig, NativeError> {
        let mut c = FwdConfig::default();
        if let Some(m) = &self.mode {
            c.mode = m
                .parse::<FwdMode>()
                .map_err(|e| invalid_arg(e.to_string()))?;
        }
        if let Some(ms) = self.duration_ms {
            let ms = integer_option("durationMs", ms, 0.0, 86_400_000.0)?;
            c.deadline = Some(Instant::now() + Duration::from_millis(ms as u64));
        }
        if let Some(b) = self.burst {
            c.burst = integer_option("burst", b, 1.0, MAX_BURST as f64)? as usize;
        }
        if let Some(n) = self.tx_first {
            c.tx_first = integer_option("txFirst", n, 0.0, 1024.0)? as usize;
        }
        if let Some(n) = self.frame_len {
            c.frame_len = integer_option("frameLen", n, 60.0, 16_384.0)? as usize;
        }
        Ok(c)
    }
}

/// Something the port reports to `onEvent`, tagged by `type`:
///
/// - `'link'`: `up`, `speedMbps`, `mac` (a LINK_CHANGE from the PF);
/// - `'step'`: `run`, `step`, `micros`, `detail` (a bring-up step of start or reset `run`);
/// - `'reset-impending'`, `'pf-close'`: the PF's RESET_IMPENDING / PF_DRIVER_CLOSE;
/// - `'event'`: `code` (any other PF event);
/// - `'error'`: `detail` (the watcher could not read the admin queue; it stops until the next
///   `start()` or `reset()`).
#[napi(object, object_from_js = false, js_name = "IavfPortEvent")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsIavfPortEvent {
    /// The event's kind.
    #[napi(
        js_name = "type",
        ts_type = "'link' | 'step' | 'reset-impending' | 'pf-close' | 'event' | 'error'"
    )]
    pub kind: String,
    /// `'link'`: link up.
    pub up: Option<bool>,
    /// `'link'`: speed in Mbps, if known.
    pub speed_mbps: Option<u32>,
    /// `'link'`: the port's MAC.
    pub mac: Option<String>,
    /// `'event'`: the PF event code.
    pub code: Option<u32>,
    /// `'step'`: which start/reset (1 for the first).
    pub run: Option<u32>,
    /// `'step'`: the step's name.
    pub step: Option<String>,
    /// `'step'`: its duration in microseconds.
    pub micros: Option<f64>,
    /// `'step'`: its outcome; `'error'`: the message.
    pub detail: Option<String>,
}

impl JsIavfPortEvent {
    fn from_driver(ev: &DriverEvent) -> Self {
        match *ev {
            DriverEvent::Link(l) => JsIavfPortEvent {
                kind: "link".into(),
                up: Some(l.up),
                speed_mbps: l.speed_mbps,
                mac: Some(format_mac(&l.mac)),
                ..Default::default()
            },
            DriverEvent::ResetImpending => JsIavfPortEvent {
                kind: "reset-impending".into(),
                ..Default::default()
            },
            DriverEvent::PfDriverClose => JsIavfPortEvent {
                kind: "pf-close".into(),
                ..Default::default()
            },
            DriverEvent::Other { code } => JsIavfPortEvent {
                kind: "event".into(),
                code: Some(code),
                ..Default::default()
            },
        }
    }

    fn step(run: u32, r: &StepRecord) -> Self {
        let s = JsIavfStep::from(r);
        JsIavfPortEvent {
            kind: "step".into(),
            run: Some(run),
            step: Some(s.step),
            micros: Some(s.micros),
            detail: Some(s.detail),
            ..Default::default()
        }
    }

    fn error(detail: String) -> Self {
        JsIavfPortEvent {
            kind: "error".into(),
            detail: Some(detail),
            ..Default::default()
        }
    }
}

// ----- errors -------------------------------------------------------------------------------------

/// The JS error for a driver failure, with a stable code (see the module documentation).
pub fn driver_error(e: &DriverError) -> NativeError {
    let msg = e.to_string();
    match e {
        DriverError::Timeout { .. } => napi::Error::new(ErrorCode::Timeout, msg),
        DriverError::Status { .. } | DriverError::NotGranted { .. } => {
            napi::Error::new(ErrorCode::IavfRefused, msg)
        }
        DriverError::Transport(ce) => client_error(ce),
        DriverError::Protocol(_) => napi::Error::new(ErrorCode::IavfProtocol, msg),
        DriverError::Memory(_) => errno_error_with_message(Errno::IO.raw_os_error(), msg),
        DriverError::InvalidConfig(_) | DriverError::MessageTooLarge { .. } => invalid_arg(msg),
        DriverError::NotReady { .. } => napi::Error::new(ErrorCode::NotReady, msg),
        DriverError::Aborted { after } => napi::Error::new(
            ErrorCode::Closed,
            format!("{WHAT} was closed during bring-up (after {})", after.name()),
        ),
    }
}

/// A queue argument: 0 by default, and a u16.
fn port_queue(q: Option<u32>) -> Result<u16, NativeError> {
    u16::try_from(q.unwrap_or(0))
        .map_err(|_| invalid_arg(format!("queue {} does not exist", q.unwrap_or(0))))
}

/// `DriverState` as JavaScript sees it.
fn state_name(s: DriverState) -> &'static str {
    match s {
        DriverState::Down => "down",
        DriverState::Ready => "ready",
        DriverState::Running => "running",
    }
}

// ----- shared state -------------------------------------------------------------------------------

/// The `onEvent(event)` callback, weak.
pub type EventTsfn =
    ThreadsafeFunction<JsIavfPortEvent, (), JsIavfPortEvent, Status, false, true, 0>;

/// What the getters read.
#[derive(Debug, Clone, Default)]
struct Cache {
    link: Option<LinkInfo>,
    mac: Option<[u8; 6]>,
    state: Option<DriverState>,
}

/// The watcher thread's inputs.
#[derive(Debug)]
struct Watch {
    /// A duplicate of the vector-0 eventfd of the current bring-up.
    irq: Mutex<Option<OwnedFd>>,
    /// Wakes the watcher (a new fd, or stop).
    wake: OwnedFd,
    stop: AtomicBool,
    /// Set after a failed look; cleared by the next bring-up.
    failed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watch {
    fn kick(&self) {
        // A failed write leaves a count in the eventfd or the flag set; the watcher sees either.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Stops and joins the watcher.
    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        lock(&self.irq).take();
    }
}

/// Everything the port's tasks and its watcher share.
struct Shared {
    closed: AtomicBool,
    driver: Mutex<Option<IavfDriver>>,
    seq: Arc<Sequencer>,
    cache: Mutex<Cache>,
    events: Mutex<Option<Arc<EventTsfn>>>,
    watch: Watch,
    runs: AtomicU32,
    /// Tells a running `forward()` to stop (set by `stopForward()` and `close()`).
    fwd_stop: AtomicBool,
    /// The counters of the running or last `forward()`.
    fwd: Mutex<Option<Arc<FwdCounters>>>,
    /// The doorbell pages were mapped (once per connection).
    doorbells_mapped: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .field("cache", &*lock(&self.cache))
            .field("callback", &lock(&self.events).is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn emit(&self, ev: JsIavfPortEvent) {
        let tsfn = lock(&self.events).clone();
        if let Some(t) = tsfn {
            // Weak and unbounded: NonBlocking never waits; a failure means JS is going away.
            let _ = t.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// Refreshes the cache from the driver and forwards the events it has handled. Called with
    /// the driver locked, so events go out in the order the driver saw them.
    fn sync(&self, d: &mut IavfDriver) {
        {
            let mut c = lock(&self.cache);
            c.link = d.link();
            c.mac = d.mac();
            c.state = Some(d.state());
        }
        for ev in d.take_events() {
            self.emit(JsIavfPortEvent::from_driver(&ev));
        }
    }

    /// Points the watcher at the driver's current vector-0 eventfd.
    fn rewatch(&self, d: &IavfDriver) {
        let fd = d
            .irq_fd(0)
            .and_then(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).ok());
        *lock(&self.watch.irq) = fd;
        self.watch.failed.store(false, Ordering::SeqCst);
        self.watch.kick();
    }

    /// One look at the admin receive queue (the watcher's work).
    fn pump(&self) {
        if self.closed.load(Ordering::SeqCst) || self.watch.failed.load(Ordering::SeqCst) {
            return;
        }
        let mut guard = lock(&self.driver);
        let Some(d) = guard.as_mut() else { return };
        if d.state() == DriverState::Down {
            return;
        }
        match d.poll_events() {
            Ok(evs) => {
                // poll_events returned them already; push them back through sync's order.
                for ev in &evs {
                    self.emit(JsIavfPortEvent::from_driver(ev));
                }
                let mut c = lock(&self.cache);
                c.link = d.link();
                c.state = Some(d.state());
            }
            Err(e) => {
                self.watch.failed.store(true, Ordering::SeqCst);
                lock(&self.watch.irq).take();
                self.emit(JsIavfPortEvent::error(format!("admin queue: {e}")));
            }
        }
    }

    fn watch_loop(&self) {
        while !self.watch.stop.load(Ordering::SeqCst) {
            let irq = lock(&self.watch.irq)
                .as_ref()
                .and_then(|fd| fd.try_clone().ok());
            let mut fds = vec![PollFd::new(&self.watch.wake, PollFlags::IN)];
            if let Some(fd) = &irq {
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: WATCH_INTERVAL.as_nanos() as _,
            };
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => std::thread::sleep(WATCH_INTERVAL),
            }
            let woken = fds.first().is_some_and(|p| !p.revents().is_empty());
            drop(fds);
            if woken {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.watch.wake, &mut b);
            }
            if self.watch.stop.load(Ordering::SeqCst) {
                break;
            }
            // The interrupt, the interval, or a new fd: look at the queue either way.
            self.pump();
        }
    }

    /// The work of `close()`: see the module documentation. The driver lock is held while
    /// shutting down, so a concurrent close waits for this one.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.fwd_stop.store(true, Ordering::SeqCst);
        self.watch.shutdown();
        let driver = lock(&self.driver).take();
        if let Some(d) = driver {
            // A connection that is gone has nothing left to shut down; closing it is enough.
            let _ = d.close();
        }
        {
            let mut c = lock(&self.cache);
            c.state = Some(DriverState::Down);
        }
        let tsfn = lock(&self.events).take();
        drop(tsfn);
    }
}

// ----- the class ----------------------------------------------------------------------------------

/// The iavf client driver on one vfio-user connection (see the module documentation).
#[napi]
#[derive(Debug)]
pub struct NativeIavfPort {
    path: String,
    config: DriverConfig,
    map_doorbells: bool,
    shared: Arc<Shared>,
}

/// The `onEvent` argument of `connect`.
type OnEvent<'f> = Function<'f, JsIavfPortEvent, ()>;

impl NativeIavfPort {
    /// Connects (blocking: call from a worker) and starts the watcher.
    fn open(
        path: &str,
        config: DriverConfig,
        trace: Option<String>,
        map_doorbells: bool,
        tsfn: Option<EventTsfn>,
    ) -> Result<Self, NativeError> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| errno_error_with_message(e.raw_os_error(), format!("eventfd: {e}")))?;
        let driver = match trace {
            Some(t) => {
                let tracer = crate::trace::append(&t, "iavf_client")?;
                let config = ClientConfig {
                    trace: Some(Arc::new(TraceSwitch::with_tracer(tracer))),
                    ..ClientConfig::default()
                };
                let client = Client::connect_with(path, config)
                    .map_err(|e| driver_error(&DriverError::Transport(e)))?;
                IavfDriver::new(client)
            }
            None => IavfDriver::connect(path).map_err(|e| driver_error(&e))?,
        };
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            driver: Mutex::new(Some(driver)),
            seq: Arc::new(Sequencer::default()),
            cache: Mutex::new(Cache {
                state: Some(DriverState::Down),
                ..Cache::default()
            }),
            events: Mutex::new(tsfn.map(Arc::new)),
            watch: Watch {
                irq: Mutex::new(None),
                wake,
                stop: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                thread: Mutex::new(None),
            },
            runs: AtomicU32::new(0),
            fwd_stop: AtomicBool::new(false),
            fwd: Mutex::new(None),
            doorbells_mapped: AtomicBool::new(false),
        });
        let me = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("emudev-iavf-watch".into())
            .spawn(move || me.watch_loop());
        match thread {
            Ok(t) => *lock(&shared.watch.thread) = Some(t),
            Err(e) => {
                shared.close();
                return Err(crate::error::io_error(
                    &e,
                    "cannot start the watcher thread",
                ));
            }
        }
        Ok(NativeIavfPort {
            path: path.to_owned(),
            config,
            map_doorbells,
            shared,
        })
    }

    /// One request's work (taking its place in the order now), or `ERR_EMUDEV_CLOSED` at once
    /// after `close()`.
    fn op<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Shared, &mut IavfDriver) -> Result<T, NativeError> + Send + 'static,
    ) -> napi::Result<PortOp<T>, ErrorCode> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(closed(WHAT));
        }
        Ok(PortOp {
            turn: Some(self.shared.seq.ticket()),
            shared: self.shared.clone(),
            op: Some(Box::new(op)),
        })
    }

    /// A bring-up (`reset == false`) or a VF reset, reporting each step as an event.
    fn bring_up(&self, reset: bool) -> napi::Result<PortOp<JsIavfStartResult>, ErrorCode> {
        let cfg = self.config.clone();
        let map = self.map_doorbells;
        self.op(move |shared, d| {
            if map && !shared.doorbells_mapped.swap(true, Ordering::SeqCst) {
                // Offered or not, the tails keep working: trapped when nothing was mapped.
                if d.map_doorbells().map_err(|e| driver_error(&e))? {
                    // Kick eventfds, when the VF has them (none: plain stores).
                    d.enable_kicks().map_err(|e| driver_error(&e))?;
                }
            }
            let run = shared.runs.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            let on_step = |r: &StepRecord| {
                shared.emit(JsIavfPortEvent::step(run, r));
                if shared.closed.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let result = if reset {
                d.reset_vf_with(on_step)
            } else {
                d.bring_up_with(&cfg, on_step)
            };
            shared.rewatch(d);
            let link = result.map_err(|e| driver_error(&e))?;
            Ok(JsIavfStartResult {
                run,
                link: link.into(),
                mac: format_mac(&link.mac),
                steps: d.steps().iter().map(JsIavfStep::from).collect(),
            })
        })
    }

    fn close_task(&self) -> ClosePort {
        self.shared.closed.store(true, Ordering::SeqCst);
        ClosePort {
            shared: self.shared.clone(),
        }
    }
}

/// One request's work on the driver.
type PortFn<T> = Box<dyn FnOnce(&Shared, &mut IavfDriver) -> Result<T, NativeError> + Send>;

/// The work behind one request.
pub struct PortOp<T> {
    turn: Option<Turn>,
    shared: Arc<Shared>,
    op: Option<PortFn<T>>,
}

impl<T> std::fmt::Debug for PortOp<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortOp")
            .field("turn", &self.turn)
            .finish_non_exhaustive()
    }
}

impl<T> PortOp<T> {
    fn run(&mut self) -> Result<T, NativeError> {
        let turn = self.turn.take();
        if let Some(t) = &turn {
            t.wait();
        }
        let op = self
            .op
            .take()
            .ok_or_else(|| invalid_arg("request ran twice"))?;
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(closed(WHAT));
        }
        let mut guard = lock(&self.shared.driver);
        let result = match guard.as_mut() {
            Some(d) => {
                let r = op(&self.shared, d);
                self.shared.sync(d);
                r
            }
            None => Err(closed(WHAT)),
        };
        drop(guard);
        drop(turn);
        result
    }
}

impl<T: ToNapiValue + TypeName + Send + 'static> Task for PortOp<T> {
    type Output = Result<T, NativeError>;
    type JsValue = T;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<T> {
        output.map_err(|e| rejection(env, e))
    }
}

/// The work behind `NativeIavfPort.connect()`.
pub struct ConnectPort {
    path: String,
    config: DriverConfig,
    trace: Option<String>,
    map_doorbells: bool,
    tsfn: Option<EventTsfn>,
}

impl std::fmt::Debug for ConnectPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPort")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Task for ConnectPort {
    type Output = Result<NativeIavfPort, NativeError>;
    type JsValue = NativeIavfPort;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(NativeIavfPort::open(
            &self.path,
            self.config.clone(),
            self.trace.take(),
            self.map_doorbells,
            self.tsfn.take(),
        ))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<NativeIavfPort> {
        output.map_err(|e| rejection(env, e))
    }
}

#[napi]
impl NativeIavfPort {
    /// Connects to the vfio-user socket at `path` on a worker thread (nothing is sent to the
    /// VF until `start()`). `onEvent(event)` receives link changes, bring-up steps and other
    /// PF events; it never keeps Node alive by itself and is released by `close()`.
    ///
    /// Throws `ERR_EMUDEV_INVALID_ARG` for bad options; rejects with `ERR_VFU_ENOENT` /
    /// `ERR_VFU_ECONNREFUSED` when nobody serves `path`.
    #[napi(
        ts_args_type = "path: string, options?: IavfPortOptions | undefined | null, onEvent?: ((event: IavfPortEvent) => void) | undefined | null",
        ts_return_type = "Promise<NativeIavfPort>"
    )]
    pub fn connect(
        path: String,
        options: Option<JsIavfPortOptions>,
        on_event: Option<OnEvent<'_>>,
    ) -> napi::Result<AsyncTask<ConnectPort>, ErrorCode> {
        let options = options.unwrap_or_default();
        let config = options.to_config()?;
        let trace = options.trace.clone();
        let map_doorbells = options.map_doorbells.unwrap_or(true);
        let tsfn = match on_event {
            Some(f) => Some(
                f.build_threadsafe_function::<JsIavfPortEvent>()
                    .weak::<true>()
                    .callee_handled::<false>()
                    .build_callback(|ctx| Ok(ctx.value))
                    .map_err(|e| invalid_arg(format!("onEvent: {e}")))?,
            ),
            None => None,
        };
        Ok(AsyncTask::new(ConnectPort {
            path,
            config,
            trace,
            map_doorbells,
            tsfn,
        }))
    }

    /// The socket path.
    #[napi(getter)]
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The queue pairs `start()` configures.
    #[napi(getter)]
    pub fn queues(&self) -> u32 {
        u32::from(self.config.queue_pairs)
    }

    /// The link as last reported, or `null` before the first link event.
    #[napi(getter)]
    pub fn link(&self) -> Option<JsIavfLink> {
        lock(&self.shared.cache).link.map(JsIavfLink::from)
    }

    /// The port's MAC (`aa:bb:cc:dd:ee:ff`), or `null` before GET_VF_RESOURCES.
    #[napi(getter)]
    pub fn mac(&self) -> Option<String> {
        lock(&self.shared.cache).mac.as_ref().map(format_mac)
    }

    /// `'down'` (not started, reset or closed), `'ready'` (negotiated) or `'running'`
    /// (queues enabled).
    #[napi(getter, ts_return_type = "'down' | 'ready' | 'running'")]
    pub fn state(&self) -> &'static str {
        state_name(lock(&self.shared.cache).state.unwrap_or(DriverState::Down))
    }

    /// Brings the VF up to link-up (reset, admin queue, VERSION, GET_VF_RESOURCES, queues,
    /// IRQ map, MAC, ENABLE_QUEUES, link event), reporting each step as a `'step'` event.
    /// Rejects with `ERR_EMUDEV_TIMEOUT`, `ERR_EMUDEV_IAVF_REFUSED` (with the op and status in
    /// the message), `ERR_EMUDEV_IAVF_PROTOCOL`, `ERR_VFU_<ERRNO>`, or `ERR_EMUDEV_CLOSED` when
    /// closed meanwhile.
    #[napi(ts_return_type = "Promise<IavfStartResult>")]
    pub fn start(&self) -> napi::Result<AsyncTask<PortOp<JsIavfStartResult>>, ErrorCode> {
        self.bring_up(false).map(AsyncTask::new)
    }

    /// VIRTCHNL_OP_RESET_VF, then the bring-up again with the same options. Rejects with
    /// `ERR_EMUDEV_NOT_READY` before `start()`.
    #[napi(ts_return_type = "Promise<IavfStartResult>")]
    pub fn reset(&self) -> napi::Result<AsyncTask<PortOp<JsIavfStartResult>>, ErrorCode> {
        self.bring_up(true).map(AsyncTask::new)
    }

    /// Queues `frames` on TX queue `queue` (default 0), copied into the port's DMA buffers,
    /// and rings the doorbell once. Resolves with how many were queued: fewer than given when
    /// the ring is full (send the rest later). Rejects with `ERR_EMUDEV_NOT_READY` before
    /// `start()`, `ERR_EMUDEV_INVALID_ARG` for an empty frame or an unknown queue.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn send(
        &self,
        frames: Vec<Buffer>,
        queue: Option<u32>,
    ) -> napi::Result<AsyncTask<PortOp<u32>>, ErrorCode> {
        let queue = port_queue(queue)?;
        if frames.iter().any(|f| f.is_empty()) {
            return Err(invalid_arg("send: empty frame"));
        }
        // Copied here, on the JS thread: the worker never reads JS memory.
        let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        self.op(move |_, d| {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let n = d.tx_burst(queue, &refs).map_err(|e| driver_error(&e))?;
            // n <= frames.len(), which came from a JS array.
            Ok(n as u32)
        })
        .map(AsyncTask::new)
    }

    /// Takes up to `max` (default 32, at most 1024) received frames from RX queue `queue`
    /// (default 0). With `timeoutMs` > 0 it waits up to that long for the first frame
    /// (polling, on a worker); resolves with an empty array if none came.
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn receive(
        &self,
        queue: Option<u32>,
        max: Option<u32>,
        timeout_ms: Option<u32>,
    ) -> napi::Result<AsyncTask<PortOp<Vec<Buffer>>>, ErrorCode> {
        let queue = port_queue(queue)?;
        let max = max.unwrap_or(32).clamp(1, 1024) as usize;
        let wait = Duration::from_millis(u64::from(timeout_ms.unwrap_or(0).min(60_000)));
        self.op(move |shared, d| {
            let end = Instant::now() + wait;
            let mut out = Vec::new();
            let mut nap = Duration::from_micros(50);
            loop {
                d.rx_burst(queue, &mut out, max)
                    .map_err(|e| driver_error(&e))?;
                if !out.is_empty() || Instant::now() >= end || shared.closed.load(Ordering::SeqCst)
                {
                    break;
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(2));
            }
            Ok(out.into_iter().map(Buffer::from).collect())
        })
        .map(AsyncTask::new)
    }

    /// Runs a testpmd forwarding engine (`io`, `macswap`, `rxonly`, `txonly`) on every queue
    /// pair, on a worker, until `durationMs` passes, `stopForward()` or `close()`; resolves
    /// with the counters. The port's other requests wait until it ends; `forwardStats()`
    /// reads the counters meanwhile.
    #[napi(ts_return_type = "Promise<IavfForwardStats>")]
    pub fn forward(
        &self,
        options: Option<JsIavfForwardOptions>,
    ) -> napi::Result<AsyncTask<PortOp<JsIavfForwardStats>>, ErrorCode> {
        let options = options.unwrap_or_default();
        // Validated now; the deadline is set again when the engine starts.
        options.to_config()?;
        let counters = Arc::new(FwdCounters::default());
        *lock(&self.shared.fwd) = Some(counters.clone());
        self.shared.fwd_stop.store(false, Ordering::SeqCst);
        self.op(move |shared, d| {
            let cfg = options.to_config()?;
            let t0 = Instant::now();
            let s = d
                .forward(&cfg, &counters, &shared.fwd_stop)
                .map_err(|e| driver_error(&e))?;
            Ok(JsIavfForwardStats::new(&s, t0.elapsed().as_secs_f64()))
        })
        .map(AsyncTask::new)
    }

    /// Tells a running `forward()` to stop (it resolves right after).
    #[napi]
    pub fn stop_forward(&self) {
        self.shared.fwd_stop.store(true, Ordering::SeqCst);
    }

    /// The counters of the running (or last) `forward()`, or `null` before the first.
    #[napi]
    pub fn forward_stats(&self) -> Option<JsIavfForwardStats> {
        lock(&self.shared.fwd)
            .as_ref()
            .map(|c| JsIavfForwardStats::new(&c.snapshot(), 0.0))
    }

    /// GET_STATS: the VSI's counters. Rejects with `ERR_EMUDEV_NOT_READY` before `start()`.
    #[napi(ts_return_type = "Promise<IavfPortStats>")]
    pub fn stats(&self) -> napi::Result<AsyncTask<PortOp<JsIavfPortStats>>, ErrorCode> {
        self.op(|_, d| {
            let s = d.get_stats().map_err(|e| driver_error(&e))?;
            Ok(JsIavfPortStats::new(&s, d.stray_messages()))
        })
        .map(AsyncTask::new)
    }

    /// Shuts the VF down and disconnects (on a worker), releasing `onEvent`. Always resolves;
    /// idempotent: a second call resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<ClosePort> {
        AsyncTask::new(self.close_task())
    }
}

impl Drop for NativeIavfPort {
    /// The safety net for a port collected without `close()`: stops the watcher (without
    /// waiting for it) and releases the callback; the driver goes with the last request.
    fn drop(&mut self) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.shared.fwd_stop.store(true, Ordering::SeqCst);
            self.shared.watch.stop.store(true, Ordering::SeqCst);
            self.shared.watch.kick();
            let tsfn = lock(&self.shared.events).take();
            drop(tsfn);
            if let Ok(mut d) = self.shared.driver.try_lock() {
                d.take();
            }
        }
    }
}

/// The work behind `NativeIavfPort.close()`.
#[derive(Debug)]
pub struct ClosePort {
    shared: Arc<Shared>,
}

impl ClosePort {
    /// Closes the port now (blocking: call from a worker).
    fn run(&self) {
        self.shared.close();
    }
}

impl Task for ClosePort {
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
    use emudev_iavf::driver::WaitOp;
    use emudev_iavf::IavfConfig;
    use std::time::Instant;

    fn temp_path(name: &str) -> String {
        let dir =
            std::env::temp_dir().join(format!("emudev-node-iavf-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("s.sock").to_str().expect("UTF-8").to_owned()
    }

    fn serve(name: &str, queues: u16) -> (String, NativeServer) {
        let path = temp_path(name);
        let cfg = IavfConfig::new("emu_iavf0")
            .with_queues(queues)
            .with_mac([0x02, 0, 0, 0x12, 0x34, 0x56]);
        let server = NativeServer::start_iavf(&path, cfg, None).expect("server");
        (path, server)
    }

    fn port(path: &str, options: JsIavfPortOptions) -> NativeIavfPort {
        let cfg = options.to_config().expect("options");
        NativeIavfPort::open(path, cfg, None, true, None).expect("connect")
    }

    fn opts(queues: u16) -> JsIavfPortOptions {
        JsIavfPortOptions {
            queues: Some(f64::from(queues)),
            ring_len: Some(64.0),
            ..Default::default()
        }
    }

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn brings_up_one_and_sixteen_queue_pairs() {
        for queues in [1u16, 16] {
            let (path, server) = serve(&format!("up{queues}"), queues);
            let p = port(&path, opts(queues));
            assert_eq!(p.state(), "down");
            assert_eq!(p.link(), None);
            assert_eq!(p.queues(), u32::from(queues));
            let r = p.bring_up(false).expect("task").run().expect("bring-up");
            assert!(r.link.up);
            assert_eq!(r.link.speed_mbps, Some(10_000));
            assert_eq!(r.mac, "02:00:00:12:34:56");
            assert_eq!(
                r.steps.first().map(|s| s.step.as_str()),
                Some("DEVICE_RESET")
            );
            assert_eq!(r.steps.last().map(|s| s.step.as_str()), Some("link"));
            assert!(r
                .steps
                .iter()
                .any(|s| s.step == "VIRTCHNL_OP_CONFIG_VSI_QUEUES"
                    && s.detail.contains(&queues.to_string())));
            // The getters read the cache the request refreshed.
            assert_eq!(p.state(), "running");
            assert_eq!(p.mac().as_deref(), Some("02:00:00:12:34:56"));
            assert_eq!(p.link().map(|l| l.up), Some(true));
            let stats = p
                .op(|_, d| d.get_stats().map_err(|e| driver_error(&e)))
                .expect("task")
                .run()
                .expect("stats");
            assert_eq!(stats.rx_bytes, 0);
            let dev = server.iavf_stats().expect("device stats");
            assert!(dev.vc_ok >= 8.0, "{dev:?}");
            assert!(dev.link_events >= 1.0);
            p.close_task().run();
            p.close_task().run();
            assert!(p.closed());
            assert_eq!(p.state(), "down");
            server.close_task().run().expect("server close");
        }
    }

    #[test]
    fn link_changes_reach_the_cache_through_the_watcher() {
        let (path, server) = serve("link", 1);
        let p = port(&path, opts(1));
        p.bring_up(false).expect("task").run().expect("bring-up");
        server.set_link(false).expect("link down");
        assert!(
            wait_for(|| p.link().map(|l| l.up) == Some(false)),
            "link down seen"
        );
        server.set_link(true).expect("link up");
        assert!(
            wait_for(|| p.link().map(|l| l.up) == Some(true)),
            "link up seen"
        );
        p.close_task().run();
        server.close_task().run().expect("server close");
    }

    #[test]
    fn reset_brings_the_port_up_again() {
        let (path, server) = serve("reset", 2);
        let p = port(&path, opts(2));
        let err = p
            .bring_up(true)
            .expect("task")
            .run()
            .expect_err("reset before start");
        assert_eq!(err.status, ErrorCode::NotReady);
        let first = p.bring_up(false).expect("task").run().expect("bring-up");
        let r = p.bring_up(true).expect("task").run().expect("reset");
        assert_eq!(r.run, first.run + 1);
        assert_eq!(
            r.steps.first().map(|s| s.step.as_str()),
            Some("VIRTCHNL_OP_RESET_VF")
        );
        assert!(r.link.up);
        assert!(server.iavf_stats().expect("stats").vf_resets >= 1.0);
        p.close_task().run();
        server.close_task().run().expect("server close");
    }

    #[test]
    fn stats_before_start_is_not_ready_and_requests_after_close_are_closed() {
        let (path, server) = serve("notready", 1);
        let p = port(&path, opts(1));
        let err = p
            .op(|_, d| d.get_stats().map_err(|e| driver_error(&e)))
            .expect("task")
            .run()
            .expect_err("not started");
        assert_eq!(err.status, ErrorCode::NotReady);
        // A request made before close, run after it, rejects.
        let mut late = p.bring_up(false).expect("task");
        p.close_task().run();
        assert_eq!(late.run().err().map(|e| e.status), Some(ErrorCode::Closed));
        assert_eq!(
            p.bring_up(false).err().map(|e| e.status),
            Some(ErrorCode::Closed)
        );
        server.close_task().run().expect("server close");
    }

    #[test]
    fn refusals_keep_their_code_and_the_device_keeps_working() {
        let (path, server) = serve("refuse", 1);
        // 33 descriptors: not a multiple of 32.
        let bad = port(
            &path,
            JsIavfPortOptions {
                ring_len: Some(33.0),
                ..Default::default()
            },
        );
        let err = bad
            .bring_up(false)
            .expect("task")
            .run()
            .expect_err("refused");
        assert_eq!(err.status, ErrorCode::IavfRefused, "{}", err.reason);
        assert!(err.reason.contains("ConfigVsiQueues"), "{}", err.reason);
        bad.close_task().run();
        // More queues than granted.
        let greedy = port(&path, opts(2));
        let err = greedy
            .bring_up(false)
            .expect("task")
            .run()
            .expect_err("refused");
        assert_eq!(err.status, ErrorCode::IavfRefused, "{}", err.reason);
        greedy.close_task().run();
        let good = port(&path, opts(1));
        good.bring_up(false).expect("task").run().expect("bring-up");
        good.close_task().run();
        server.close_task().run().expect("server close");
    }

    #[test]
    fn connecting_to_nothing_fails_with_the_errno() {
        let err = NativeIavfPort::open(
            "/nonexistent-emudev-dir/iavf.sock",
            DriverConfig::default(),
            None,
            true,
            None,
        )
        .expect_err("no socket");
        assert_eq!(err.status.as_str(), "ERR_VFU_ENOENT");
    }

    #[test]
    fn options_are_checked_and_name_the_key() {
        let c = JsIavfPortOptions::default().to_config().expect("defaults");
        assert_eq!(c, DriverConfig::default());
        let c = JsIavfPortOptions {
            queues: Some(16.0),
            ring_len: Some(1024.0),
            op_timeout_ms: Some(50.0),
            link_timeout_ms: Some(75.0),
            enable_mode: Some("all-at-once".into()),
            device_reset: Some(false),
            share_fd: Some(false),
            trace: None,
            map_doorbells: None,
        }
        .to_config()
        .expect("all options");
        assert_eq!((c.queue_pairs, c.ring_len), (16, 1024));
        assert_eq!(c.op_timeout, Duration::from_millis(50));
        assert_eq!(c.link_timeout, Duration::from_millis(75));
        assert_eq!(c.enable_mode, EnableMode::AllAtOnce);
        assert!(!c.device_reset && !c.share_fd);
        let bad = [
            (
                JsIavfPortOptions {
                    queues: Some(0.0),
                    ..Default::default()
                },
                "queues",
            ),
            (
                JsIavfPortOptions {
                    queues: Some(33.0),
                    ..Default::default()
                },
                "queues",
            ),
            (
                JsIavfPortOptions {
                    queues: Some(1.5),
                    ..Default::default()
                },
                "queues",
            ),
            (
                JsIavfPortOptions {
                    ring_len: Some(0.0),
                    ..Default::default()
                },
                "ringLen",
            ),
            (
                JsIavfPortOptions {
                    ring_len: Some(65536.0),
                    ..Default::default()
                },
                "ringLen",
            ),
            (
                JsIavfPortOptions {
                    op_timeout_ms: Some(0.0),
                    ..Default::default()
                },
                "opTimeoutMs",
            ),
            (
                JsIavfPortOptions {
                    link_timeout_ms: Some(f64::NAN),
                    ..Default::default()
                },
                "linkTimeoutMs",
            ),
            (
                JsIavfPortOptions {
                    enable_mode: Some("some".into()),
                    ..Default::default()
                },
                "enableMode",
            ),
        ];
        for (o, key) in bad {
            let err = o.to_config().expect_err("must be refused");
            assert_eq!(err.status, ErrorCode::InvalidArg);
            assert!(err.reason.starts_with(key), "{}", err.reason);
        }
    }

    #[test]
    fn driver_errors_map_to_stable_codes() {
        let t = DriverError::Timeout {
            op: WaitOp::LinkChange,
            waited: Duration::from_millis(3),
        };
        assert_eq!(driver_error(&t).status, ErrorCode::Timeout);
        let nr = DriverError::NotReady {
            what: "get_stats",
            state: "down",
        };
        assert_eq!(driver_error(&nr).status, ErrorCode::NotReady);
        let cfg = DriverError::InvalidConfig("x".into());
        assert_eq!(driver_error(&cfg).status, ErrorCode::InvalidArg);
        let ab = DriverError::Aborted {
            after: emudev_iavf::driver::BringUpStep::Version,
        };
        let e = driver_error(&ab);
        assert_eq!(e.status, ErrorCode::Closed);
        assert!(e.reason.contains("VIRTCHNL_OP_VERSION"), "{}", e.reason);
    }

    #[test]
    fn events_take_their_js_shape() {
        let l = JsIavfPortEvent::from_driver(&DriverEvent::Link(LinkInfo {
            up: true,
            speed_mbps: Some(25_000),
            mac: [2, 0, 0, 0, 0, 1],
        }));
        assert_eq!(l.kind, "link");
        assert_eq!((l.up, l.speed_mbps), (Some(true), Some(25_000)));
        assert_eq!(l.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(
            JsIavfPortEvent::from_driver(&DriverEvent::ResetImpending).kind,
            "reset-impending"
        );
        assert_eq!(
            JsIavfPortEvent::from_driver(&DriverEvent::PfDriverClose).kind,
            "pf-close"
        );
        let o = JsIavfPortEvent::from_driver(&DriverEvent::Other { code: 9 });
        assert_eq!((o.kind.as_str(), o.code), ("event", Some(9)));
    }
}
