//! The software data path of an iavf `NativeServer` for JavaScript: attach and detach a
//! back-end (`--vdev ...,backend=` or `attachBackend(spec)`), per-queue counters with a
//! clearable baseline, pcap capture, and the `channel` back-end's frames (the TypeScript
//! back-end: what the client sends comes out of `channelReceive`, what `channelSend` gets
//! goes into the client's RX).
//!
//! `pair:<peer>` back-ends of every server in the process meet in one [`PairRegistry`]; a
//! device's side is released when its data path is detached or its server closes.

use std::sync::{Mutex, OnceLock};

use emudev_iavf::datapath::{
    self, AttachDatapathError, BackendControl, BackendSpec, BuildBackendError, ConnectPairError,
    DatapathStats, PairRegistry, QueueStats,
};
use emudev_iavf::IavfHandle;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use crate::error::{invalid_arg, ErrorCode, NativeError};
use crate::lock;
use crate::server::{NativeServer, Served, IAVF_DEVICE_NAME};

/// The process's pair cables.
fn pairs() -> &'static PairRegistry {
    static PAIRS: OnceLock<PairRegistry> = OnceLock::new();
    PAIRS.get_or_init(PairRegistry::new)
}

/// An attached data path.
#[derive(Debug)]
pub(crate) struct Attached {
    spec: String,
    stats: DatapathStats,
    control: BackendControl,
    /// Counters at the last `clearDatapathStats()`, per queue.
    baseline: Vec<QueueStats>,
}

/// Attaches the data path with back-end `spec` to the device `name` behind `iavf`.
pub(crate) fn attach(iavf: &IavfHandle, name: &str, spec: &str) -> Result<Attached, NativeError> {
    let parsed: BackendSpec = spec
        .parse()
        .map_err(|e| invalid_arg(format!("backend={spec}: {e}")))?;
    let built = parsed.build(name, pairs()).map_err(|e| match e {
        BuildBackendError::Pair(
            p @ (ConnectPairError::AlreadyPaired { .. } | ConnectPairError::PeerTaken { .. }),
        ) => napi::Error::new(ErrorCode::Busy, format!("backend={spec}: {p}")),
        other => invalid_arg(format!("backend={spec}: {other}")),
    })?;
    let stats = datapath::attach(iavf, built.backend).map_err(|e| {
        if matches!(parsed, BackendSpec::Pair { .. }) {
            pairs().release(name);
        }
        match e {
            AttachDatapathError::Provider(p) => {
                napi::Error::new(ErrorCode::Busy, format!("{name}: {p}"))
            }
        }
    })?;
    Ok(Attached {
        spec: spec.to_owned(),
        stats,
        control: built.control,
        baseline: Vec::new(),
    })
}

/// Forgets `name`'s pair cable (after a failed start).
pub(crate) fn release(name: &str) {
    pairs().release(name);
}

/// Detaches the data path (if any) of a server that is closing.
pub(crate) fn detach_on_close(iavf: &IavfHandle, name: &str, slot: &Mutex<Option<Attached>>) {
    if let Some(a) = lock(slot).take() {
        let _ = detach(iavf, name, a);
    }
}

/// Takes `a` off the device: its capture stopped, the provider detached, its pair cable (if
/// any) released whatever the detach said.
fn detach(iavf: &IavfHandle, name: &str, a: Attached) -> Result<(), String> {
    let _ = a.stats.capture_stop();
    let detached = iavf
        .emu()
        .detach_provider()
        .map(drop)
        .map_err(|e| e.to_string());
    if matches!(a.control, BackendControl::Pair(_)) {
        pairs().release(name);
    }
    detached
}

/// One queue pair's data-path counters.
#[napi(object, object_from_js = false, js_name = "DatapathQueueStats")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsQueueStats {
    /// Packets the client sent through the device.
    pub tx_packets: f64,
    /// Their bytes.
    pub tx_bytes: f64,
    /// TX packets dropped for a fault (bad descriptor or buffer, frame too long) or because
    /// the back-end could not take them.
    pub tx_errors: f64,
    /// Packets the device wrote into the client's RX ring.
    pub rx_packets: f64,
    /// Their bytes.
    pub rx_bytes: f64,
    /// RX packets dropped for a fault.
    pub rx_errors: f64,
    /// RX packets dropped because the client had posted no descriptor.
    pub rx_drops: f64,
    /// Of `txPackets`, those sent with checksum or TSO offloads applied (each TSO segment
    /// counts).
    pub tx_offloaded: f64,
    /// TSO packets the device cut into segments.
    pub tx_tso: f64,
}

impl JsQueueStats {
    fn since(now: &QueueStats, base: Option<&QueueStats>) -> Self {
        let b = base.copied().unwrap_or_default();
        let d = |n: u64, o: u64| n.saturating_sub(o) as f64;
        JsQueueStats {
            tx_packets: d(now.tx_packets, b.tx_packets),
            tx_bytes: d(now.tx_bytes, b.tx_bytes),
            tx_errors: d(now.tx_errors, b.tx_errors),
            rx_packets: d(now.rx_packets, b.rx_packets),
            rx_bytes: d(now.rx_bytes, b.rx_bytes),
            rx_errors: d(now.rx_errors, b.rx_errors),
            rx_drops: d(now.rx_drops, b.rx_drops),
            tx_offloaded: d(now.tx_offloaded, b.tx_offloaded),
            tx_tso: d(now.tx_tso, b.tx_tso),
        }
    }
}

/// `datapathStats()`: the back-end and each queue pair's counters.
#[napi(object, object_from_js = false, js_name = "DatapathStats")]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsDatapathStats {
    /// The attached back-end's spec (`loopback`, `pair:emu_iavf1`, ...).
    pub backend: String,
    /// Per queue pair, since attach or the last `clearDatapathStats()`.
    pub queues: Vec<JsQueueStats>,
    /// Frames written by the running capture, or `null` when none runs.
    pub capture_frames: Option<f64>,
    /// The polling worker's idle sleeps and how many of them a client's kick ended (zeros for
    /// an inline data path).
    pub worker: JsWorkerStats,
}

/// A polled data path's worker: idle sleeps, and the sleeps a client's kick ended.
#[napi(object)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JsWorkerStats {
    /// Idle sleeps since attach.
    pub sleeps: f64,
    /// Of those, ended by a kick (doorbells=kick and a client that signals).
    pub kicks: f64,
}

impl NativeServer {
    /// Runs `f` on the iavf server's data-path slot.
    fn with_datapath<T>(
        &self,
        method: &str,
        f: impl FnOnce(&IavfHandle, &str, &mut Option<Attached>) -> Result<T, NativeError>,
    ) -> napi::Result<T, ErrorCode> {
        self.with_running(|r| match &r.served {
            Served::Iavf {
                iavf,
                name,
                datapath,
                ..
            } => f(iavf, name, &mut lock(datapath)),
            Served::Edu { .. } => Err(self.wrong_device(method, IAVF_DEVICE_NAME)),
        })?
    }
}

/// The error for a data-path method called with nothing attached.
fn not_attached(name: &str) -> NativeError {
    napi::Error::new(
        ErrorCode::NotReady,
        format!("{name}: no data path attached (attachBackend first)"),
    )
}

#[napi]
impl NativeServer {
    /// Attaches the software data path with back-end `spec` (`loopback`, `macswap`, `rxonly`,
    /// `txonly[:LEN]`, `pair:<peer>`, `pcap:<file>`, `pcap-replay:<file>`, `channel`).
    /// Throws `ERR_EMUDEV_INVALID_ARG` for a bad spec or file, `ERR_EMUDEV_BUSY` when a data
    /// path is already attached or the pair peer is taken.
    #[napi]
    pub fn attach_backend(&self, spec: String) -> napi::Result<(), ErrorCode> {
        self.with_datapath("attachBackend", |iavf, name, slot| {
            if let Some(a) = slot.as_ref() {
                return Err(napi::Error::new(
                    ErrorCode::Busy,
                    format!("{name}: backend {} is already attached", a.spec),
                ));
            }
            *slot = Some(attach(iavf, name, &spec)?);
            Ok(())
        })
    }

    /// Detaches the data path (stopping its capture); the client's queues stay configured
    /// and simply stop moving. Throws `ERR_EMUDEV_NOT_READY` when none is attached.
    #[napi]
    pub fn detach_backend(&self) -> napi::Result<(), ErrorCode> {
        self.with_datapath("detachBackend", |iavf, name, slot| {
            let a = slot.take().ok_or_else(|| not_attached(name))?;
            detach(iavf, name, a).map_err(|e| invalid_arg(format!("{name}: {e}")))
        })
    }

    /// The attached back-end's spec, or `null`.
    #[napi]
    pub fn backend(&self) -> napi::Result<Option<String>, ErrorCode> {
        self.with_datapath("backend", |_, _, slot| {
            Ok(slot.as_ref().map(|a| a.spec.clone()))
        })
    }

    /// The data path's counters per queue pair. Throws `ERR_EMUDEV_NOT_READY` when none is
    /// attached.
    #[napi]
    pub fn datapath_stats(&self) -> napi::Result<JsDatapathStats, ErrorCode> {
        self.with_datapath("datapathStats", |_, name, slot| {
            let a = slot.as_ref().ok_or_else(|| not_attached(name))?;
            let queues = a
                .stats
                .queues()
                .iter()
                .enumerate()
                .map(|(q, s)| JsQueueStats::since(s, a.baseline.get(q)))
                .collect();
            Ok(JsDatapathStats {
                backend: a.spec.clone(),
                queues,
                capture_frames: a.stats.capture_frames().map(|n| n as f64),
                worker: {
                    let w = a.stats.worker();
                    JsWorkerStats {
                        sleeps: w.sleeps as f64,
                        kicks: w.kicks as f64,
                    }
                },
            })
        })
    }

    /// Zeroes what `datapathStats()` reports (the device's GET_STATS counters are not
    /// touched: the driver owns those).
    #[napi]
    pub fn clear_datapath_stats(&self) -> napi::Result<(), ErrorCode> {
        self.with_datapath("clearDatapathStats", |_, name, slot| {
            let a = slot.as_mut().ok_or_else(|| not_attached(name))?;
            a.baseline = a.stats.queues();
            Ok(())
        })
    }

    /// Starts writing every frame the data path moves (the client's TX and what goes into its
    /// RX) to a pcap file at `path`, or only the first `maxFrames`. Throws `ERR_EMUDEV_NOT_READY` without a data path,
    /// `ERR_EMUDEV_BUSY` when a capture runs, `ERR_EMUDEV_INVALID_ARG` when the file cannot
    /// be created.
    #[napi]
    pub fn capture_start(
        &self,
        path: String,
        max_frames: Option<u32>,
    ) -> napi::Result<(), ErrorCode> {
        self.with_datapath("captureStart", |_, name, slot| {
            let a = slot.as_ref().ok_or_else(|| not_attached(name))?;
            let started = match max_frames {
                Some(n) if n > 0 => a.stats.capture_start_first(&path, u64::from(n)),
                _ => a.stats.capture_start(&path),
            };
            started.map_err(|e| match e {
                datapath::CaptureStartError::AlreadyRunning(_) => {
                    napi::Error::new(ErrorCode::Busy, format!("{name}: {e}"))
                }
                other => invalid_arg(format!("{name}: capture {path}: {other}")),
            })
        })
    }

    /// Stops the capture and flushes the file; returns the frames written. Throws
    /// `ERR_EMUDEV_NOT_READY` when no capture runs.
    #[napi]
    pub fn capture_stop(&self) -> napi::Result<f64, ErrorCode> {
        self.with_datapath("captureStop", |_, name, slot| {
            let a = slot.as_ref().ok_or_else(|| not_attached(name))?;
            a.stats
                .capture_stop()
                .map(|n| n as f64)
                .map_err(|e| match e {
                    datapath::CaptureStopError::NotRunning => {
                        napi::Error::new(ErrorCode::NotReady, format!("{name}: {e}"))
                    }
                    other => invalid_arg(format!("{name}: {other}")),
                })
        })
    }

    /// `channel` back-end: queues `frames` for the client's RX queue `queue` (default 0).
    /// Returns how many were taken (the rest did not fit). Throws `ERR_EMUDEV_NOT_READY` when
    /// the back-end is not `channel`.
    #[napi]
    pub fn channel_send(
        &self,
        frames: Vec<Buffer>,
        queue: Option<u32>,
    ) -> napi::Result<u32, ErrorCode> {
        let queue = u16::try_from(queue.unwrap_or(0))
            .map_err(|_| invalid_arg("channelSend: queue out of range"))?;
        if frames.iter().any(|f| f.is_empty()) {
            return Err(invalid_arg("channelSend: empty frame"));
        }
        self.with_datapath("channelSend", |_, name, slot| {
            let port = channel_of(name, slot)?;
            let mut n = 0u32;
            for f in &frames {
                match port.send(queue, f) {
                    Ok(()) => n += 1,
                    Err(datapath::ChannelSendError::Full { .. }) => break,
                    Err(e) => return Err(invalid_arg(format!("{name}: {e}"))),
                }
            }
            Ok(n)
        })
    }

    /// `channel` back-end: up to `max` (default 32) frames the client sent on queue `queue`
    /// (default: any queue), oldest first; an empty array when there are none.
    #[napi]
    pub fn channel_receive(
        &self,
        queue: Option<u32>,
        max: Option<u32>,
    ) -> napi::Result<Vec<Buffer>, ErrorCode> {
        let max = max.unwrap_or(32).clamp(1, 4096) as usize;
        let queue = match queue {
            Some(q) => Some(
                u16::try_from(q).map_err(|_| invalid_arg("channelReceive: queue out of range"))?,
            ),
            None => None,
        };
        self.with_datapath("channelReceive", |_, name, slot| {
            let port = channel_of(name, slot)?;
            let mut out = Vec::new();
            while out.len() < max {
                let f = match queue {
                    Some(q) => port.recv(q),
                    None => port.recv_any().map(|(_, f)| f),
                };
                match f {
                    Some(f) => out.push(Buffer::from(f)),
                    None => break,
                }
            }
            Ok(out)
        })
    }
}

/// The application side of a `channel` back-end.
fn channel_of<'a>(
    name: &str,
    slot: &'a mut Option<Attached>,
) -> Result<&'a datapath::ChannelPort, NativeError> {
    match slot.as_ref().map(|a| &a.control) {
        Some(BackendControl::Channel(p)) => Ok(p),
        Some(_) => Err(napi::Error::new(
            ErrorCode::NotReady,
            format!("{name}: the attached back-end is not 'channel'"),
        )),
        None => Err(not_attached(name)),
    }
}
