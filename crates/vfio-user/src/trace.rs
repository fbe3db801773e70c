//! Message tracing: every vfio-user message a server or client sends or receives, decoded.
//!
//! A [`TraceSwitch`] sits in the server (shared by its session and its server→client DMA
//! path) and in the client (shared with the twin-socket thread). While it holds no tracer, a
//! message costs one atomic load; with a [`Tracer`] installed, each message becomes a
//! [`TraceRecord`] — time, side, direction, socket, header fields, size, fd count and the
//! payload's fields as the command defines them — handed to the tracer. The tracer can be
//! replaced or removed at any time, from any thread, while messages flow.
//!
//! Payloads are decoded with the checked decoders of [`crate::wire`]. Bulk data (region or DMA
//! bytes, migration data) is never copied into a record, only its length. A payload that does
//! not decode is still recorded, with an `error` field and the first bytes in hex; decoding a
//! record never panics, whatever the bytes.
//!
//! [`JsonLinesTracer`] writes one JSON object per line (`--trace FILE`); [`TraceBuffer`] keeps
//! records in memory; any `Fn(&TraceRecord) + Send + Sync` is a tracer too. A tracer must not
//! panic: it runs on the thread that moves the message.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::transport::{RawMessage, RecvError};
use crate::wire::{
    Command, DeviceFeatureMsg, DeviceInfoMsg, DmaAccess, DmaMap, DmaUnmap, Header, IrqAction,
    IrqInfoMsg, IrqSetData, MigData, RegionAccess, RegionInfoMsg, RegionIoFdsMsg, SetIrqs, Version,
    WriteMulti, FLAGS_TYPE_COMMAND, FLAGS_TYPE_REPLY, HEADER_SIZE,
};

/// Payload bytes shown in hex when a payload does not decode.
pub const HEAD_BYTES: usize = 32;
/// SET_IRQS with DATA_BOOL lists its flags when `count` is at most this.
pub const MAX_LISTED_BOOLS: usize = 64;
/// Undecodable VERSION JSON text is kept up to this many bytes.
pub const MAX_JSON_TEXT: usize = 512;

// ----- what a record is about ------------------------------------------------------------------

/// Which end of the connection recorded the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The device-emulation process.
    Server,
    /// The VMM side.
    Client,
}

impl Side {
    /// `"server"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// Whether the recording side sent or received the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the peer.
    Recv,
    /// Sent to the peer.
    Send,
}

impl Direction {
    /// `"recv"` or `"send"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Recv => "recv",
            Direction::Send => "send",
        }
    }
}

/// The socket a message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The connection the client opened.
    Main,
    /// The twin socket negotiated for server→client DMA messages.
    Twin,
}

impl Channel {
    /// `"main"` or `"twin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Main => "main",
            Channel::Twin => "twin",
        }
    }
}

// ----- the record ------------------------------------------------------------------------------

/// One traced message.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// When it was recorded (just before a send, just after a receive).
    pub time: SystemTime,
    /// Who recorded it.
    pub side: Side,
    /// Sent or received.
    pub direction: Direction,
    /// Which socket.
    pub channel: Channel,
    /// The header, when at least 16 bytes were there.
    pub header: Option<Header>,
    /// Bytes of the message as sent or received, header included.
    pub size: usize,
    /// fds that travelled with it.
    pub nfds: usize,
    /// The payload's decoded fields (empty for an error reply or an empty payload).
    pub payload: Map<String, Value>,
    /// Why the message (or its payload) did not decode, or why the transport refused it.
    pub error: Option<String>,
}

impl TraceRecord {
    /// Decodes a whole message (`bytes`, header included) that came or went with `nfds` fds.
    /// Never fails: what does not decode ends up in [`TraceRecord::error`].
    pub fn new(
        side: Side,
        direction: Direction,
        channel: Channel,
        bytes: &[u8],
        nfds: usize,
    ) -> TraceRecord {
        let mut rec = TraceRecord {
            time: SystemTime::now(),
            side,
            direction,
            channel,
            header: None,
            size: bytes.len(),
            nfds,
            payload: Map::new(),
            error: None,
        };
        let h = match Header::decode(bytes) {
            Ok(h) => h,
            Err(e) => {
                rec.error = Some(e.to_string());
                return rec;
            }
        };
        rec.header = Some(h);
        if h.msg_size as usize != bytes.len() {
            rec.error = Some(format!(
                "msg_size {} does not match the {} bytes of the message",
                h.msg_size,
                bytes.len()
            ));
            return rec;
        }
        let mut fields = Fields::default();
        decode_payload(&h, &bytes[HEADER_SIZE..], nfds, &mut fields);
        rec.payload = fields.map;
        rec.error = fields.error;
        rec
    }

    /// Adds a transport error (e.g. "more fds than allowed") to the record, keeping any
    /// decoding error after it.
    pub fn with_error(mut self, error: impl Into<String>) -> TraceRecord {
        let e = error.into();
        self.error = Some(match self.error.take() {
            Some(prev) => format!("{e}; {prev}"),
            None => e,
        });
        self
    }

    /// The header's `msg_id`.
    pub fn msg_id(&self) -> Option<u16> {
        self.header.map(|h| h.msg_id)
    }

    /// The header's command number.
    pub fn command(&self) -> Option<u16> {
        self.header.map(|h| h.command)
    }

    /// The command's name without the `VFIO_USER_` prefix (`"DMA_MAP"`), or `"UNKNOWN"`.
    pub fn command_name(&self) -> Option<&'static str> {
        self.header.map(|h| command_name(h.command))
    }

    /// Is this a reply (type bits 1)?
    pub fn is_reply(&self) -> bool {
        self.header.is_some_and(|h| h.is_reply())
    }

    /// Is the Error flag set?
    pub fn is_error_reply(&self) -> bool {
        self.header.is_some_and(|h| h.is_error())
    }

    /// The errno of an error reply.
    pub fn errno(&self) -> Option<u32> {
        self.header.filter(|h| h.is_error()).map(|h| h.error_no)
    }

    /// The record as one JSON object:
    ///
    /// `time` (seconds since the Unix epoch), `side`, `direction`, `socket`, `id`, `cmd`,
    /// `cmd_num`, `type` (`"command"`, `"reply"` or the raw type number), `flags`, `reply`,
    /// `no_reply`, `error_reply`, `errno` (error replies only), `size`, `msg_size` (only when
    /// it differs from `size`), `nfds`, `payload` (an object) and `error` (only when there was
    /// one). `id`, `cmd`, `cmd_num`, `type` and `flags` are `null` without a header.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        let secs = self
            .time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        o.insert("time".into(), Value::from(secs));
        o.insert("side".into(), Value::from(self.side.as_str()));
        o.insert("direction".into(), Value::from(self.direction.as_str()));
        o.insert("socket".into(), Value::from(self.channel.as_str()));
        match self.header {
            Some(h) => {
                o.insert("id".into(), Value::from(h.msg_id));
                o.insert("cmd".into(), Value::from(command_name(h.command)));
                o.insert("cmd_num".into(), Value::from(h.command));
                let ty = match h.msg_type() {
                    FLAGS_TYPE_COMMAND => Value::from("command"),
                    FLAGS_TYPE_REPLY => Value::from("reply"),
                    other => Value::from(other),
                };
                o.insert("type".into(), ty);
                o.insert("flags".into(), Value::from(h.flags));
                o.insert("reply".into(), Value::from(h.is_reply()));
                o.insert("no_reply".into(), Value::from(h.no_reply()));
                o.insert("error_reply".into(), Value::from(h.is_error()));
                if h.is_error() {
                    o.insert("errno".into(), Value::from(h.error_no));
                }
            }
            None => {
                for k in ["id", "cmd", "cmd_num", "type", "flags"] {
                    o.insert(k.into(), Value::Null);
                }
                o.insert("reply".into(), Value::from(false));
                o.insert("no_reply".into(), Value::from(false));
                o.insert("error_reply".into(), Value::from(false));
            }
        }
        o.insert("size".into(), Value::from(self.size));
        if let Some(h) = self.header.filter(|h| h.msg_size as usize != self.size) {
            o.insert("msg_size".into(), Value::from(h.msg_size));
        }
        o.insert("nfds".into(), Value::from(self.nfds));
        o.insert("payload".into(), Value::Object(self.payload.clone()));
        if let Some(e) = &self.error {
            o.insert("error".into(), Value::from(e.as_str()));
        }
        Value::Object(o)
    }
}

/// A command number's spec name without the `VFIO_USER_` prefix, or `"UNKNOWN"`.
pub fn command_name(command: u16) -> &'static str {
    match Command::from_u16(command) {
        Some(c) => {
            let n = c.name();
            n.strip_prefix("VFIO_USER_").unwrap_or(n)
        }
        None => "UNKNOWN",
    }
}

// ----- payload decoding --------------------------------------------------------------------------

/// Fields being collected for one payload, and the first error met.
#[derive(Default)]
struct Fields {
    map: Map<String, Value>,
    error: Option<String>,
}

impl Fields {
    fn put(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.map.insert(key.into(), v.into());
        self
    }

    /// Records why `p` did not decode, with its first bytes in hex.
    fn fail(&mut self, error: impl fmt::Display, p: &[u8]) {
        if self.error.is_none() {
            self.error = Some(error.to_string());
        }
        self.put("len", p.len());
        self.put("head", hex(&p[..p.len().min(HEAD_BYTES)]));
    }
}

fn hex(b: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Decodes one payload by its header's type and command.
fn decode_payload(h: &Header, p: &[u8], nfds: usize, f: &mut Fields) {
    if h.is_error() {
        // An error reply carries only the header; note stray bytes without judging them.
        if !p.is_empty() {
            f.put("len", p.len());
        }
        return;
    }
    let Some(cmd) = h.cmd() else {
        f.fail(format!("unknown command {}", h.command), p);
        return;
    };
    match h.msg_type() {
        FLAGS_TYPE_COMMAND => decode_command(cmd, p, nfds, f),
        FLAGS_TYPE_REPLY => decode_reply(cmd, p, f),
        other => f.fail(format!("unknown message type {other}"), p),
    }
}

fn decode_command(cmd: Command, p: &[u8], nfds: usize, f: &mut Fields) {
    use Command as C;
    match cmd {
        C::Version => version(p, f),
        C::DmaMap => match DmaMap::decode(p) {
            Ok(m) => dma_map(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DmaUnmap => match DmaUnmap::decode(p) {
            Ok(m) => dma_unmap(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetInfo => match DeviceInfoMsg::decode_request(p) {
            Ok(m) => device_info(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetRegionInfo => match RegionInfoMsg::decode_request(p) {
            Ok(m) => {
                f.put("argsz", m.argsz).put("index", m.index);
            }
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetRegionIoFds => match RegionIoFdsMsg::decode_request(p) {
            Ok(m) => io_fds(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetIrqInfo => match IrqInfoMsg::decode_request(p) {
            Ok(m) => irq_info(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceSetIrqs => match SetIrqs::decode(p, nfds) {
            Ok(s) => set_irqs(&s, f),
            Err(e) => f.fail(e, p),
        },
        C::RegionRead => match RegionAccess::decode_read(p) {
            Ok(a) => region_access(&a, None, f),
            Err(e) => f.fail(e, p),
        },
        C::RegionWrite => match RegionAccess::decode_write(p) {
            Ok((a, data)) => region_access(&a, Some(data.len()), f),
            Err(e) => f.fail(e, p),
        },
        C::DmaRead => match DmaAccess::decode_read(p) {
            Ok(a) => dma_access(&a, None, f),
            Err(e) => f.fail(e, p),
        },
        C::DmaWrite => match DmaAccess::decode_write(p) {
            Ok((a, data)) => dma_access(&a, Some(data.len()), f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceReset => empty(p, f),
        C::DirtyPages => f.fail("DIRTY_PAGES was removed from the spec; not decoded", p),
        C::RegionWriteMulti => match WriteMulti::decode(p) {
            Ok(w) => {
                let entries: Vec<Value> = w
                    .entries
                    .iter()
                    .map(|e| {
                        let mut m = Map::new();
                        m.insert("offset".into(), e.offset.into());
                        m.insert("region".into(), e.region.into());
                        m.insert("count".into(), e.count.into());
                        Value::Object(m)
                    })
                    .collect();
                f.put("wr_cnt", w.entries.len()).put("entries", entries);
            }
            Err(e) => f.fail(e, p),
        },
        C::DeviceFeature => match DeviceFeatureMsg::decode(p) {
            Ok(m) => device_feature(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::MigDataRead => match MigData::decode_read(p) {
            Ok(m) => {
                f.put("argsz", m.argsz).put("size", m.size);
            }
            Err(e) => f.fail(e, p),
        },
        C::MigDataWrite => mig_data_with_data(p, f),
    }
}

fn decode_reply(cmd: Command, p: &[u8], f: &mut Fields) {
    use Command as C;
    match cmd {
        C::Version => version(p, f),
        C::DmaMap | C::DeviceSetIrqs | C::DeviceReset | C::MigDataWrite => empty(p, f),
        C::DmaUnmap => match DmaUnmap::decode_reply(p) {
            Ok(m) => {
                dma_unmap(&m, f);
                if p.len() > DmaUnmap::SIZE {
                    f.put("bitmap_len", p.len() - DmaUnmap::SIZE);
                }
            }
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetInfo => match DeviceInfoMsg::decode_reply(p) {
            Ok(m) => device_info(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetRegionInfo => match RegionInfoMsg::decode_reply(p) {
            Ok(m) => {
                let sparse: Vec<Value> = m
                    .sparse
                    .iter()
                    .map(|a| {
                        let mut o = Map::new();
                        o.insert("offset".into(), a.offset.into());
                        o.insert("size".into(), a.size.into());
                        Value::Object(o)
                    })
                    .collect();
                f.put("argsz", m.argsz)
                    .put("flags", m.flags)
                    .put("index", m.index)
                    .put("cap_offset", m.cap_offset)
                    .put("size", m.size)
                    .put("offset", m.offset)
                    .put("sparse", sparse);
            }
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetRegionIoFds => match RegionIoFdsMsg::decode_reply(p) {
            Ok(m) => io_fds(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::DeviceGetIrqInfo => match IrqInfoMsg::decode_reply(p) {
            Ok(m) => irq_info(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::RegionRead => match RegionAccess::decode_read_reply(p) {
            Ok((a, data)) => region_access(&a, Some(data.len()), f),
            Err(e) => f.fail(e, p),
        },
        C::RegionWrite => match RegionAccess::decode_write_reply(p) {
            Ok(a) => region_access(&a, None, f),
            Err(e) => f.fail(e, p),
        },
        C::DmaRead => match DmaAccess::decode_read_reply(p) {
            Ok((a, data)) => dma_access(&a, Some(data.len()), f),
            Err(e) => f.fail(e, p),
        },
        C::DmaWrite => match DmaAccess::decode_write_reply(p) {
            Ok(Some(a)) => dma_access(&a, None, f),
            Ok(None) => {}
            Err(e) => f.fail(e, p),
        },
        C::DirtyPages => f.fail("DIRTY_PAGES was removed from the spec; not decoded", p),
        C::RegionWriteMulti => match <[u8; 8]>::try_from(p) {
            Ok(b) => {
                f.put("wr_cnt", u64::from_ne_bytes(b));
            }
            Err(_) => f.fail(
                format!(
                    "REGION_WRITE_MULTI reply: payload of {} bytes, expected 8",
                    p.len()
                ),
                p,
            ),
        },
        C::DeviceFeature => match DeviceFeatureMsg::decode_reply(p) {
            Ok(m) => device_feature(&m, f),
            Err(e) => f.fail(e, p),
        },
        C::MigDataRead => mig_data_with_data(p, f),
    }
}

fn empty(p: &[u8], f: &mut Fields) {
    if !p.is_empty() {
        f.fail(format!("expected no payload, got {} bytes", p.len()), p);
    }
}

/// VERSION (request and reply): major, minor, and the JSON as an object. The JSON is parsed
/// here as any JSON (unknown keys kept); the checked decoder then reports what it refuses.
fn version(p: &[u8], f: &mut Fields) {
    let (Some(major), Some(minor)) = (p.get(0..2), p.get(2..4)) else {
        f.fail(
            format!("VERSION: payload of {} bytes, expected >= 4", p.len()),
            p,
        );
        return;
    };
    let mut two = [0u8; 2];
    two.copy_from_slice(major);
    f.put("major", u16::from_ne_bytes(two));
    two.copy_from_slice(minor);
    f.put("minor", u16::from_ne_bytes(two));
    let json = &p[Version::FIXED..];
    if !json.is_empty() {
        let body = json.strip_suffix(&[0]).unwrap_or(json);
        match std::str::from_utf8(body)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
        {
            Some(doc) => {
                let only_caps = doc
                    .as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("capabilities"));
                if let Some(caps) = doc.get("capabilities") {
                    f.put("capabilities", caps.clone());
                }
                if !only_caps {
                    f.put("json", doc);
                }
            }
            None => {
                let cut = &body[..body.len().min(MAX_JSON_TEXT)];
                f.put("json_text", String::from_utf8_lossy(cut).into_owned());
            }
        }
    }
    if let Err(e) = Version::decode(p) {
        f.error = Some(e.to_string());
    }
}

fn dma_map(m: &DmaMap, f: &mut Fields) {
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("offset", m.offset)
        .put("address", m.address)
        .put("size", m.size);
}

fn dma_unmap(m: &DmaUnmap, f: &mut Fields) {
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("address", m.address)
        .put("size", m.size);
}

fn device_info(m: &DeviceInfoMsg, f: &mut Fields) {
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("num_regions", m.num_regions)
        .put("num_irqs", m.num_irqs);
}

fn io_fds(m: &RegionIoFdsMsg, f: &mut Fields) {
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("index", m.index)
        .put("count", m.count);
    if !m.entries.is_empty() {
        let entries: Vec<Value> = m
            .entries
            .iter()
            .map(|e| {
                let mut o = Map::new();
                o.insert("offset".into(), e.offset.into());
                o.insert("size".into(), e.size.into());
                o.insert("fd_index".into(), e.fd_index.into());
                o.insert("type".into(), e.kind.into());
                o.insert("flags".into(), e.flags.into());
                o.insert("datamatch".into(), e.datamatch.into());
                Value::Object(o)
            })
            .collect();
        f.put("entries", entries);
    }
}

fn irq_info(m: &IrqInfoMsg, f: &mut Fields) {
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("index", m.index)
        .put("count", m.count);
}

fn set_irqs(s: &SetIrqs, f: &mut Fields) {
    let action = match s.action {
        IrqAction::Mask => "mask",
        IrqAction::Unmask => "unmask",
        IrqAction::Trigger => "trigger",
    };
    let data = match &s.data {
        IrqSetData::None => "none",
        IrqSetData::Bool(_) => "bool",
        IrqSetData::Eventfd => "eventfd",
    };
    f.put("argsz", s.argsz)
        .put("flags", s.flags())
        .put("index", s.index)
        .put("start", s.start)
        .put("count", s.count)
        .put("action", action)
        .put("data", data);
    if let IrqSetData::Bool(b) = &s.data {
        if b.len() <= MAX_LISTED_BOOLS {
            f.put("bools", b.clone());
        }
    }
}

fn region_access(a: &RegionAccess, data_len: Option<usize>, f: &mut Fields) {
    f.put("offset", a.offset)
        .put("region", a.region)
        .put("count", a.count);
    if let Some(n) = data_len {
        f.put("data_len", n);
    }
}

fn dma_access(a: &DmaAccess, data_len: Option<usize>, f: &mut Fields) {
    f.put("address", a.address).put("count", a.count);
    if let Some(n) = data_len {
        f.put("data_len", n);
    }
}

fn device_feature(m: &DeviceFeatureMsg, f: &mut Fields) {
    use vfio_bindings::bindings::vfio;
    f.put("argsz", m.argsz)
        .put("flags", m.flags)
        .put("feature", m.feature())
        .put("get", m.flags & vfio::VFIO_DEVICE_FEATURE_GET != 0)
        .put("set", m.flags & vfio::VFIO_DEVICE_FEATURE_SET != 0)
        .put("probe", m.flags & vfio::VFIO_DEVICE_FEATURE_PROBE != 0)
        .put("data_len", m.data.len());
}

fn mig_data_with_data(p: &[u8], f: &mut Fields) {
    match MigData::decode_with_data(p) {
        Ok(m) => {
            f.put("argsz", m.argsz)
                .put("size", m.size)
                .put("data_len", m.data.len());
        }
        Err(e) => f.fail(e, p),
    }
}

// ----- tracers -----------------------------------------------------------------------------------

/// Receives trace records. Called on the thread that moved the message, so it should be quick
/// and must not panic.
pub trait Tracer: Send + Sync {
    /// Takes one record.
    fn record(&self, rec: &TraceRecord);

    /// Pushes out anything buffered (called when the tracer is switched off or replaced).
    fn flush(&self) {}
}

impl<F> Tracer for F
where
    F: Fn(&TraceRecord) + Send + Sync,
{
    fn record(&self, rec: &TraceRecord) {
        self(rec)
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creating a trace file failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceCreateError {
    /// The file could not be created (or truncated) for writing.
    #[error("cannot create trace file {path}: {source}")]
    Open {
        /// The path asked for.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Writes each record as one line of JSON ([`TraceRecord::to_json`]).
///
/// Output is buffered; [`JsonLinesTracer::create`] flushes after every line (a `tail -f`
/// follows the trace live), [`JsonLinesTracer::create_buffered`] only on
/// [`Tracer::flush`], on switching off and on drop. The first write error is logged, and the
/// tracer stops writing from then on (counting the records it drops): tracing never makes a
/// server or client fail.
pub struct JsonLinesTracer {
    out: Mutex<Box<dyn Write + Send>>,
    flush_each_line: bool,
    label: String,
    /// Fields added to every line ([`JsonLinesTracer::with_field`]).
    fields: Vec<(String, String)>,
    failed: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl fmt::Debug for JsonLinesTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesTracer")
            .field("label", &self.label)
            .field("flush_each_line", &self.flush_each_line)
            .field("failed", &self.failed)
            .field("written", &self.written)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl JsonLinesTracer {
    /// Creates (or truncates) `path`, flushing after every line.
    pub fn create(path: impl AsRef<Path>) -> Result<JsonLinesTracer, TraceCreateError> {
        Self::open(path.as_ref(), true)
    }

    /// Creates (or truncates) `path`, flushing only on [`Tracer::flush`] and drop.
    pub fn create_buffered(path: impl AsRef<Path>) -> Result<JsonLinesTracer, TraceCreateError> {
        Self::open(path.as_ref(), false)
    }

    /// Opens `path` for appending (creating it), flushing after every line. Each line goes out
    /// in one write on a file opened `O_APPEND`, so several tracers of one process (a server
    /// per device, a client) can share a file without splitting each other's lines.
    pub fn append(path: impl AsRef<Path>) -> Result<JsonLinesTracer, TraceCreateError> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TraceCreateError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut t = Self::from_writer(file, true);
        t.label = path.display().to_string();
        Ok(t)
    }

    /// Adds `"key": value` to every line (`"device": "emu_iavf0"`, to tell the writers of a
    /// shared file apart).
    pub fn with_field(mut self, key: &str, value: &str) -> JsonLinesTracer {
        self.fields.push((key.to_owned(), value.to_owned()));
        self
    }

    fn open(path: &Path, flush_each_line: bool) -> Result<JsonLinesTracer, TraceCreateError> {
        let file = File::create(path).map_err(|source| TraceCreateError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut t = Self::from_writer(file, flush_each_line);
        t.label = path.display().to_string();
        Ok(t)
    }

    /// Writes to any writer (stderr, a pipe, a test buffer).
    pub fn from_writer(
        writer: impl Write + Send + 'static,
        flush_each_line: bool,
    ) -> JsonLinesTracer {
        JsonLinesTracer {
            out: Mutex::new(Box::new(BufWriter::new(writer))),
            flush_each_line,
            label: String::from("writer"),
            fields: Vec::new(),
            failed: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines written so far.
    pub fn lines_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records dropped after a write error.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Has a write failed (and the tracer stopped writing)?
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn give_up(&self, e: &io::Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            log::warn!("trace output {}: {e}; tracing to it stops", self.label);
        }
    }
}

impl Tracer for JsonLinesTracer {
    fn record(&self, rec: &TraceRecord) {
        let mut v = rec.to_json();
        if let Some(o) = v.as_object_mut() {
            for (k, val) in &self.fields {
                o.insert(k.clone(), Value::String(val.clone()));
            }
        }
        let mut line = v.to_string();
        line.push('\n');
        let mut out = lock(&self.out);
        if self.failed.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let r = out.write_all(line.as_bytes()).and_then(|()| {
            if self.flush_each_line {
                out.flush()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.give_up(&e);
            }
        }
    }

    fn flush(&self) {
        let mut out = lock(&self.out);
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = out.flush() {
            self.give_up(&e);
        }
    }
}

impl Drop for JsonLinesTracer {
    fn drop(&mut self) {
        Tracer::flush(self);
    }
}

/// Keeps records in memory, up to a limit (older ones are kept, newer ones counted and
/// dropped).
#[derive(Debug)]
pub struct TraceBuffer {
    records: Mutex<Vec<TraceRecord>>,
    limit: usize,
    dropped: AtomicU64,
}

impl TraceBuffer {
    /// A buffer that keeps at most `limit` records.
    pub fn new(limit: usize) -> TraceBuffer {
        TraceBuffer {
            records: Mutex::new(Vec::new()),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// A copy of the records kept so far.
    pub fn records(&self) -> Vec<TraceRecord> {
        lock(&self.records).clone()
    }

    /// Takes the records kept so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<TraceRecord> {
        std::mem::take(&mut *lock(&self.records))
    }

    /// Records that did not fit.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Tracer for TraceBuffer {
    fn record(&self, rec: &TraceRecord) {
        let mut v = lock(&self.records);
        if v.len() < self.limit {
            v.push(rec.clone());
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ----- the switch --------------------------------------------------------------------------------

/// Where a server or client looks up its tracer for each message; replaceable while running.
///
/// Off (no tracer), a message costs one atomic load. On, each message takes a short lock to
/// clone the tracer's `Arc`, then decodes and records outside the lock.
pub struct TraceSwitch {
    on: AtomicBool,
    tracer: Mutex<Option<Arc<dyn Tracer>>>,
}

impl Default for TraceSwitch {
    fn default() -> Self {
        TraceSwitch::new()
    }
}

impl fmt::Debug for TraceSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceSwitch")
            .field("on", &self.is_on())
            .finish()
    }
}

impl TraceSwitch {
    /// A switch with no tracer (off).
    pub fn new() -> TraceSwitch {
        TraceSwitch {
            on: AtomicBool::new(false),
            tracer: Mutex::new(None),
        }
    }

    /// A switch that starts with `tracer` on.
    pub fn with_tracer(tracer: Arc<dyn Tracer>) -> TraceSwitch {
        TraceSwitch {
            on: AtomicBool::new(true),
            tracer: Mutex::new(Some(tracer)),
        }
    }

    /// Installs `tracer` (`None` switches tracing off) and returns the previous one, flushed.
    /// Messages already being recorded on other threads may still reach the previous tracer;
    /// none that start after this returns do.
    pub fn set(&self, tracer: Option<Arc<dyn Tracer>>) -> Option<Arc<dyn Tracer>> {
        let old = {
            let mut slot = lock(&self.tracer);
            self.on.store(tracer.is_some(), Ordering::Release);
            std::mem::replace(&mut *slot, tracer)
        };
        if let Some(t) = &old {
            t.flush();
        }
        old
    }

    /// Is a tracer installed?
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The current tracer (`None` when off, after one atomic load).
    #[inline]
    pub fn tracer(&self) -> Option<Arc<dyn Tracer>> {
        if !self.is_on() {
            return None;
        }
        lock(&self.tracer).clone()
    }

    /// Flushes the current tracer, if any.
    pub fn flush(&self) {
        if let Some(t) = self.tracer() {
            t.flush();
        }
    }

    /// Records one message (whole, header included) if tracing is on.
    #[inline]
    pub fn message(
        &self,
        side: Side,
        direction: Direction,
        channel: Channel,
        bytes: &[u8],
        nfds: usize,
    ) {
        if let Some(t) = self.tracer() {
            t.record(&TraceRecord::new(side, direction, channel, bytes, nfds));
        }
    }

    /// Records what a [`crate::transport::MessageSocket::recv`] returned, if tracing is on: a
    /// message, or a message the transport refused (too small, too large, too many fds) with
    /// the transport's error. EOF and socket errors are not messages and are not recorded.
    #[inline]
    pub fn received(
        &self,
        side: Side,
        channel: Channel,
        result: &Result<Option<RawMessage>, RecvError>,
    ) {
        if let Some(t) = self.tracer() {
            if let Some(rec) = received_record(side, channel, result) {
                t.record(&rec);
            }
        }
    }
}

fn received_record(
    side: Side,
    channel: Channel,
    result: &Result<Option<RawMessage>, RecvError>,
) -> Option<TraceRecord> {
    let d = Direction::Recv;
    match result {
        Ok(Some(m)) => Some(TraceRecord::new(side, d, channel, &m.bytes, m.fds.len())),
        Ok(None) | Err(RecvError::Io(_)) | Err(RecvError::Truncated { .. }) => None,
        Err(e @ RecvError::TooSmall { header, fds }) => {
            Some(TraceRecord::new(side, d, channel, header, fds.len()).with_error(e.to_string()))
        }
        Err(e @ RecvError::TooLarge { header, fds, .. }) => {
            Some(TraceRecord::new(side, d, channel, header, fds.len()).with_error(e.to_string()))
        }
        Err(e @ RecvError::TooManyFds { bytes }) => {
            Some(TraceRecord::new(side, d, channel, bytes, 0).with_error(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        self, Capabilities, IoFdEntry, MessageBuilder, SparseMmapArea, TwinSocketCap,
        WriteMultiEntry, FLAGS_ERROR, FLAGS_NO_REPLY,
    };
    use crate::Errno;
    use vfio_bindings::bindings::vfio;

    fn cmd_msg(id: u16, cmd: Command, build: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let mut b = MessageBuilder::command(id, cmd);
        build(&mut b);
        b.finish()
    }

    fn reply_msg(id: u16, cmd: Command, build: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let mut b = MessageBuilder::reply(id, cmd as u16);
        build(&mut b);
        b.finish()
    }

    fn rec(bytes: &[u8], nfds: usize) -> TraceRecord {
        TraceRecord::new(Side::Server, Direction::Recv, Channel::Main, bytes, nfds)
    }

    /// The record as JSON, with its payload object.
    fn json(r: &TraceRecord) -> (Value, Map<String, Value>) {
        let v = r.to_json();
        let p = v["payload"]
            .as_object()
            .cloned()
            .expect("payload is an object");
        (v, p)
    }

    #[test]
    fn header_fields_are_in_the_json() {
        let bytes = cmd_msg(0x1234, Command::DeviceReset, |_| {});
        let r = TraceRecord::new(Side::Client, Direction::Send, Channel::Twin, &bytes, 0);
        let (v, p) = json(&r);
        assert_eq!(v["side"], "client");
        assert_eq!(v["direction"], "send");
        assert_eq!(v["socket"], "twin");
        assert_eq!(v["id"], 0x1234);
        assert_eq!(v["cmd"], "DEVICE_RESET");
        assert_eq!(v["cmd_num"], 13);
        assert_eq!(v["type"], "command");
        assert_eq!(v["reply"], false);
        assert_eq!(v["no_reply"], false);
        assert_eq!(v["error_reply"], false);
        assert_eq!(v["size"], 16);
        assert_eq!(v["nfds"], 0);
        assert!(v.get("errno").is_none());
        assert!(v.get("error").is_none());
        assert!(v.get("msg_size").is_none());
        assert!(p.is_empty());
        let t = v["time"].as_f64().expect("time is a number");
        assert!(t > 1.0e9, "time {t} is seconds since the epoch");
        assert_eq!(r.command_name(), Some("DEVICE_RESET"));
        assert_eq!(r.msg_id(), Some(0x1234));
    }

    #[test]
    fn error_reply_records_errno() {
        let bytes = wire::error_reply(9, Command::RegionRead as u16, Errno::INVAL);
        let r = rec(&bytes, 0);
        assert!(r.is_reply() && r.is_error_reply());
        assert_eq!(r.errno(), Some(22));
        let (v, p) = json(&r);
        assert_eq!(v["errno"], 22);
        assert_eq!(v["error_reply"], true);
        assert_eq!(v["reply"], true);
        assert_eq!(v["type"], "reply");
        assert_eq!(v["cmd"], "REGION_READ");
        assert!(p.is_empty());
        assert!(v.get("error").is_none());
    }

    #[test]
    fn no_reply_flag_is_shown() {
        let mut b = MessageBuilder::command(3, Command::RegionWrite).no_reply(true);
        RegionAccess {
            offset: 8,
            region: 0,
            count: 4,
        }
        .encode(&mut b);
        b.bytes(&[1, 2, 3, 4]);
        let r = rec(&b.finish(), 0);
        let (v, p) = json(&r);
        assert_eq!(v["no_reply"], true);
        assert_eq!(v["flags"], FLAGS_NO_REPLY);
        assert_eq!(p["data_len"], 4);
    }

    #[test]
    fn version_request_and_reply() {
        let caps = Capabilities {
            max_msg_fds: Some(8),
            twin_socket: Some(TwinSocketCap {
                supported: true,
                fd_index: None,
            }),
            ..Default::default()
        };
        let bytes = cmd_msg(0, Command::Version, |b| {
            Version {
                major: 0,
                minor: 2,
                caps: Some(caps),
            }
            .encode(b)
        });
        let (v, p) = json(&rec(&bytes, 0));
        assert_eq!(v["cmd"], "VERSION");
        assert_eq!(p["major"], 0);
        assert_eq!(p["minor"], 2);
        assert_eq!(p["capabilities"]["max_msg_fds"], 8);
        assert_eq!(p["capabilities"]["twin_socket"]["supported"], true);
        assert!(
            p.get("json").is_none(),
            "a plain capabilities document is not repeated"
        );
        assert!(v.get("error").is_none());

        let reply = reply_msg(0, Command::Version, |b| {
            Version {
                major: 0,
                minor: 1,
                caps: None,
            }
            .encode(b)
        });
        let (v, p) = json(&rec(&reply, 1));
        assert_eq!(v["reply"], true);
        assert_eq!(v["nfds"], 1);
        assert_eq!(p["minor"], 1);
        // `caps: None` encodes as `{}`: no capabilities key, so the document is shown.
        assert!(p.get("capabilities").is_none());
        assert_eq!(p["json"], serde_json::json!({}));
    }

    #[test]
    fn version_without_json_and_with_extra_keys() {
        let bare = cmd_msg(1, Command::Version, |b| {
            b.fixed(4).put_u16(0, 0).put_u16(2, 0);
        });
        let (v, p) = json(&rec(&bare, 0));
        assert_eq!(p["major"], 0);
        assert!(p.get("capabilities").is_none() && p.get("json").is_none());
        assert!(v.get("error").is_none());

        let doc = br#"{"capabilities":{"max_msg_fds":4},"vendor":"x"}"#;
        let extra = cmd_msg(1, Command::Version, |b| {
            b.fixed(4);
            b.bytes(doc).bytes(&[0]);
        });
        let (_, p) = json(&rec(&extra, 0));
        assert_eq!(p["capabilities"]["max_msg_fds"], 4);
        assert_eq!(p["json"]["vendor"], "x");
    }

    #[test]
    fn version_bad_json_is_recorded_with_error() {
        let bad = cmd_msg(1, Command::Version, |b| {
            b.fixed(4).put_u16(2, 3);
            b.bytes(b"{not json").bytes(&[0]);
        });
        let r = rec(&bad, 0);
        let (v, p) = json(&r);
        assert_eq!(p["minor"], 3);
        assert_eq!(p["json_text"], "{not json");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("version capabilities")),
            "{v}"
        );

        let no_nul = cmd_msg(1, Command::Version, |b| {
            b.fixed(4);
            b.bytes(b"{}");
        });
        let (v, p) = json(&rec(&no_nul, 0));
        assert_eq!(p["json"], serde_json::json!({}));
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("NUL")),
            "{v}"
        );

        let short = cmd_msg(1, Command::Version, |b| {
            b.bytes(&[0, 0, 1]);
        });
        let (v, p) = json(&rec(&short, 0));
        assert!(p.get("major").is_none());
        assert_eq!(p["len"], 3);
        assert!(v["error"].is_string());
    }

    #[test]
    fn dma_map_fields() {
        let m = DmaMap {
            argsz: 32,
            flags: 3,
            offset: 0x1000,
            address: 0x10_0000,
            size: 0x2000,
        };
        let (v, p) = json(&rec(&cmd_msg(4, Command::DmaMap, |b| m.encode(b)), 1));
        assert_eq!(v["cmd"], "DMA_MAP");
        assert_eq!(v["nfds"], 1);
        assert_eq!(p["argsz"], 32);
        assert_eq!(p["flags"], 3);
        assert_eq!(p["offset"], 0x1000);
        assert_eq!(p["address"], 0x10_0000);
        assert_eq!(p["size"], 0x2000);
        // A u64 beyond 2^53 stays exact in the JSON text.
        let big = DmaMap {
            address: u64::MAX - 0xfff,
            ..m
        };
        let (_, p) = json(&rec(&cmd_msg(4, Command::DmaMap, |b| big.encode(b)), 0));
        assert_eq!(p["address"].as_u64(), Some(u64::MAX - 0xfff));
        // The reply has no payload.
        let (v, p) = json(&rec(&wire::empty_reply(4, Command::DmaMap as u16), 0));
        assert!(p.is_empty() && v.get("error").is_none());
    }

    #[test]
    fn dma_map_bad_flags_traced_with_error_and_head() {
        let m = DmaMap {
            argsz: 32,
            flags: 0x80,
            offset: 0,
            address: 0,
            size: 0x1000,
        };
        let r = rec(&cmd_msg(4, Command::DmaMap, |b| m.encode(b)), 0);
        let (v, p) = json(&r);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("flags")),
            "{v}"
        );
        assert_eq!(p["len"], 32);
        assert_eq!(p["head"].as_str().map(str::len), Some(64));
        assert!(p.get("address").is_none());
    }

    #[test]
    fn dma_unmap_request_and_reply() {
        let u = DmaUnmap {
            argsz: 24,
            flags: 0,
            address: 0x4000,
            size: 0x1000,
        };
        let (_, p) = json(&rec(&cmd_msg(5, Command::DmaUnmap, |b| u.encode(b)), 0));
        assert_eq!(
            (
                p["argsz"].as_u64(),
                p["address"].as_u64(),
                p["size"].as_u64()
            ),
            (Some(24), Some(0x4000), Some(0x1000))
        );
        let (_, p) = json(&rec(&reply_msg(5, Command::DmaUnmap, |b| u.encode(b)), 0));
        assert_eq!(p["address"], 0x4000);
        assert!(p.get("bitmap_len").is_none());
        let (v, _) = json(&rec(
            &cmd_msg(5, Command::DmaUnmap, |b| {
                b.bytes(&[0; 23]);
            }),
            0,
        ));
        assert!(v["error"].is_string());
    }

    #[test]
    fn device_info_request_and_reply() {
        let req = DeviceInfoMsg {
            argsz: 16,
            ..Default::default()
        };
        let (_, p) = json(&rec(
            &cmd_msg(6, Command::DeviceGetInfo, |b| req.encode(b)),
            0,
        ));
        assert_eq!(p["argsz"], 16);
        let rep = DeviceInfoMsg {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        };
        let (_, p) = json(&rec(
            &reply_msg(6, Command::DeviceGetInfo, |b| rep.encode(b)),
            0,
        ));
        assert_eq!(
            (
                p["flags"].as_u64(),
                p["num_regions"].as_u64(),
                p["num_irqs"].as_u64()
            ),
            (Some(3), Some(9), Some(5))
        );
        let (v, _) = json(&rec(
            &reply_msg(6, Command::DeviceGetInfo, |b| {
                b.bytes(&[0; 8]);
            }),
            0,
        ));
        assert!(v["error"].is_string());
    }

    #[test]
    fn region_info_request_and_reply_with_sparse_areas() {
        let (_, p) = json(&rec(
            &cmd_msg(7, Command::DeviceGetRegionInfo, |b| {
                RegionInfoMsg::encode_request(2, 80, b)
            }),
            0,
        ));
        assert_eq!(
            (p["argsz"].as_u64(), p["index"].as_u64()),
            (Some(80), Some(2))
        );
        let m = RegionInfoMsg {
            flags: vfio::VFIO_REGION_INFO_FLAG_READ | vfio::VFIO_REGION_INFO_FLAG_MMAP,
            index: 2,
            size: 0x8000,
            offset: 0x8000,
            sparse: vec![
                SparseMmapArea {
                    offset: 0x2000,
                    size: 0x1000,
                },
                SparseMmapArea {
                    offset: 0x4000,
                    size: 0x2000,
                },
            ],
            ..Default::default()
        };
        let (v, p) = json(&rec(
            &reply_msg(7, Command::DeviceGetRegionInfo, |b| m.encode_reply(80, b)),
            1,
        ));
        assert_eq!(v["nfds"], 1);
        assert_eq!(p["argsz"], 80);
        assert_eq!(p["cap_offset"], 32);
        assert_eq!(p["size"], 0x8000);
        assert_eq!(p["offset"], 0x8000);
        assert_eq!(p["sparse"][1]["offset"], 0x4000);
        assert_eq!(p["sparse"][1]["size"], 0x2000);
        assert_eq!(p["sparse"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn region_io_fds_request_and_reply() {
        let (_, p) = json(&rec(
            &cmd_msg(8, Command::DeviceGetRegionIoFds, |b| {
                RegionIoFdsMsg::encode_request(0, 56, b)
            }),
            0,
        ));
        assert_eq!(
            (p["index"].as_u64(), p["count"].as_u64()),
            (Some(0), Some(0))
        );
        let m = RegionIoFdsMsg {
            index: 0,
            entries: vec![IoFdEntry {
                offset: 0x400,
                size: 4,
                fd_index: 0,
                kind: 0,
                flags: 1,
                datamatch: 7,
            }],
            ..Default::default()
        };
        let (_, p) = json(&rec(
            &reply_msg(8, Command::DeviceGetRegionIoFds, |b| {
                m.encode_reply(56, b);
            }),
            1,
        ));
        assert_eq!(p["count"], 1);
        assert_eq!(p["entries"][0]["offset"], 0x400);
        assert_eq!(p["entries"][0]["datamatch"], 7);
        assert_eq!(p["entries"][0]["flags"], 1);
        // A request with count set is refused by the decoder.
        let bad = cmd_msg(8, Command::DeviceGetRegionIoFds, |b| {
            b.fixed(16).put_u32(0, 16).put_u32(12, 1);
        });
        let (v, _) = json(&rec(&bad, 0));
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("count")),
            "{v}"
        );
    }

    #[test]
    fn irq_info_request_and_reply() {
        let q = IrqInfoMsg {
            argsz: 16,
            flags: 0,
            index: 2,
            count: 0,
        };
        let (_, p) = json(&rec(
            &cmd_msg(9, Command::DeviceGetIrqInfo, |b| q.encode(b)),
            0,
        ));
        assert_eq!(p["index"], 2);
        let r = IrqInfoMsg {
            argsz: 16,
            flags: 3,
            index: 2,
            count: 4,
        };
        let (_, p) = json(&rec(
            &reply_msg(9, Command::DeviceGetIrqInfo, |b| r.encode(b)),
            0,
        ));
        assert_eq!(
            (p["flags"].as_u64(), p["count"].as_u64()),
            (Some(3), Some(4))
        );
    }

    #[test]
    fn set_irqs_fields() {
        let s = SetIrqs {
            argsz: 0,
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 1,
            count: 2,
        };
        let (v, p) = json(&rec(
            &cmd_msg(10, Command::DeviceSetIrqs, |b| s.encode(b)),
            2,
        ));
        assert_eq!(v["nfds"], 2);
        assert_eq!(p["index"], 2);
        assert_eq!(p["start"], 1);
        assert_eq!(p["count"], 2);
        assert_eq!(p["argsz"], 20);
        assert_eq!(
            p["flags"],
            vfio::VFIO_IRQ_SET_ACTION_TRIGGER | vfio::VFIO_IRQ_SET_DATA_EVENTFD
        );
        assert_eq!(p["action"], "trigger");
        assert_eq!(p["data"], "eventfd");

        let s = SetIrqs {
            argsz: 0,
            action: IrqAction::Mask,
            data: IrqSetData::Bool(vec![true, false]),
            index: 0,
            start: 0,
            count: 2,
        };
        let (_, p) = json(&rec(
            &cmd_msg(10, Command::DeviceSetIrqs, |b| s.encode(b)),
            0,
        ));
        assert_eq!(p["action"], "mask");
        assert_eq!(p["bools"], serde_json::json!([true, false]));

        // Two fds for a count of three: the decoder refuses, the record says why.
        let s = SetIrqs {
            argsz: 0,
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count: 3,
        };
        let (v, p) = json(&rec(
            &cmd_msg(10, Command::DeviceSetIrqs, |b| s.encode(b)),
            2,
        ));
        assert!(v["error"].is_string());
        assert!(p.get("action").is_none());
    }

    #[test]
    fn region_read_write_show_lengths_not_data() {
        let a = RegionAccess {
            offset: 0x10,
            region: 0,
            count: 8,
        };
        let (_, p) = json(&rec(&cmd_msg(11, Command::RegionRead, |b| a.encode(b)), 0));
        assert_eq!(
            (
                p["offset"].as_u64(),
                p["region"].as_u64(),
                p["count"].as_u64()
            ),
            (Some(0x10), Some(0), Some(8))
        );
        assert!(p.get("data_len").is_none());

        let secret = [0xa5u8; 8];
        let reply = reply_msg(11, Command::RegionRead, |b| {
            a.encode(b);
            b.bytes(&secret);
        });
        let r = rec(&reply, 0);
        let (v, p) = json(&r);
        assert_eq!(p["data_len"], 8);
        assert!(
            !v.to_string().contains("a5a5"),
            "data bytes must not be traced: {v}"
        );

        let write = cmd_msg(12, Command::RegionWrite, |b| {
            a.encode(b);
            b.bytes(&secret);
        });
        let (_, p) = json(&rec(&write, 0));
        assert_eq!(p["data_len"], 8);
        let (_, p) = json(&rec(
            &reply_msg(12, Command::RegionWrite, |b| a.encode(b)),
            0,
        ));
        assert_eq!(p["count"], 8);

        // count says 8, only 4 bytes follow.
        let short = cmd_msg(12, Command::RegionWrite, |b| {
            a.encode(b);
            b.bytes(&[1, 2, 3, 4]);
        });
        let (v, p) = json(&rec(&short, 0));
        assert!(v["error"].is_string());
        assert_eq!(p["len"], 20);
    }

    #[test]
    fn dma_read_write_fields() {
        let a = DmaAccess {
            address: 0x20_0000,
            count: 16,
        };
        let (v, p) = json(&rec(&cmd_msg(0x8000, Command::DmaRead, |b| a.encode(b)), 0));
        assert_eq!(v["cmd"], "DMA_READ");
        assert_eq!(
            (p["address"].as_u64(), p["count"].as_u64()),
            (Some(0x20_0000), Some(16))
        );
        let (_, p) = json(&rec(
            &reply_msg(0x8000, Command::DmaRead, |b| {
                a.encode(b);
                b.bytes(&[0; 16]);
            }),
            0,
        ));
        assert_eq!(p["data_len"], 16);
        let (_, p) = json(&rec(
            &cmd_msg(0x8001, Command::DmaWrite, |b| {
                a.encode(b);
                b.bytes(&[0; 16]);
            }),
            0,
        ));
        assert_eq!(p["data_len"], 16);
        let (_, p) = json(&rec(
            &reply_msg(0x8001, Command::DmaWrite, |b| a.encode(b)),
            0,
        ));
        assert_eq!(p["address"], 0x20_0000);
        let (v, p) = json(&rec(
            &wire::empty_reply(0x8001, Command::DmaWrite as u16),
            0,
        ));
        assert!(p.is_empty() && v.get("error").is_none());
    }

    #[test]
    fn write_multi_feature_and_migration() {
        let w = WriteMulti {
            entries: vec![
                WriteMultiEntry {
                    offset: 0,
                    region: 0,
                    count: 4,
                    data: [0; 8],
                },
                WriteMultiEntry {
                    offset: 8,
                    region: 2,
                    count: 8,
                    data: [0; 8],
                },
            ],
        };
        let (_, p) = json(&rec(
            &cmd_msg(13, Command::RegionWriteMulti, |b| w.encode(b)),
            0,
        ));
        assert_eq!(p["wr_cnt"], 2);
        assert_eq!(p["entries"][1]["region"], 2);
        assert_eq!(p["entries"][1]["count"], 8);
        let (_, p) = json(&rec(
            &reply_msg(13, Command::RegionWriteMulti, |b| {
                b.fixed(8).put_u64(0, 2);
            }),
            0,
        ));
        assert_eq!(p["wr_cnt"], 2);
        let (v, _) = json(&rec(
            &reply_msg(13, Command::RegionWriteMulti, |b| {
                b.bytes(&[0; 4]);
            }),
            0,
        ));
        assert!(v["error"].is_string());

        let flags = vfio::VFIO_DEVICE_FEATURE_GET | vfio::VFIO_DEVICE_FEATURE_MIGRATION;
        let m = DeviceFeatureMsg {
            argsz: 16,
            flags,
            data: vec![0; 8],
        };
        let (_, p) = json(&rec(
            &cmd_msg(14, Command::DeviceFeature, |b| m.encode(b)),
            0,
        ));
        assert_eq!(p["feature"], vfio::VFIO_DEVICE_FEATURE_MIGRATION);
        assert_eq!(
            (p["get"].as_bool(), p["set"].as_bool(), p["probe"].as_bool()),
            (Some(true), Some(false), Some(false))
        );
        assert_eq!(p["data_len"], 8);

        let (_, p) = json(&rec(
            &cmd_msg(15, Command::MigDataRead, |b| {
                b.fixed(8).put_u32(0, 72).put_u32(4, 64);
            }),
            0,
        ));
        assert_eq!(
            (p["argsz"].as_u64(), p["size"].as_u64()),
            (Some(72), Some(64))
        );
        let md = MigData {
            argsz: 11,
            size: 3,
            data: vec![1, 2, 3],
        };
        let (_, p) = json(&rec(
            &reply_msg(15, Command::MigDataRead, |b| md.encode(b)),
            0,
        ));
        assert_eq!(p["data_len"], 3);
        let (_, p) = json(&rec(
            &cmd_msg(16, Command::MigDataWrite, |b| md.encode(b)),
            0,
        ));
        assert_eq!(p["size"], 3);
    }

    #[test]
    fn unknown_and_removed_commands() {
        let mut b = MessageBuilder::with_flags(1, 19, 0);
        b.bytes(&[1, 2]);
        let r = rec(&b.finish(), 0);
        let (v, p) = json(&r);
        assert_eq!(v["cmd"], "UNKNOWN");
        assert_eq!(v["cmd_num"], 19);
        assert!(v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown command 19")));
        assert_eq!(p["head"], "0102");

        let r = rec(&cmd_msg(1, Command::DirtyPages, |_| {}), 0);
        assert!(r.error.is_some());
        assert_eq!(r.command_name(), Some("DIRTY_PAGES"));

        let mut b = MessageBuilder::with_flags(1, Command::DeviceReset as u16, 5);
        b.bytes(&[0]);
        let (v, _) = json(&rec(&b.finish(), 0));
        assert_eq!(v["type"], 5);
        assert!(v["error"].as_str().is_some_and(|e| e.contains("type")));
    }

    #[test]
    fn short_and_mismatched_messages_do_not_panic() {
        for n in 0..HEADER_SIZE {
            let r = rec(&vec![0xff; n], 0);
            assert!(r.header.is_none());
            assert!(r.error.is_some());
            let v = r.to_json();
            assert_eq!(v["size"], n);
            assert!(v["id"].is_null() && v["cmd"].is_null());
        }
        let mut bytes = cmd_msg(2, Command::RegionRead, |b| {
            RegionAccess::default().encode(b)
        });
        bytes.extend_from_slice(&[0; 4]);
        let (v, p) = json(&rec(&bytes, 0));
        assert_eq!(v["size"], 36);
        assert_eq!(v["msg_size"], 32);
        assert!(v["error"].as_str().is_some_and(|e| e.contains("msg_size")));
        assert!(p.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator over every command number, both types, any sizes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..4000u32 {
            let len = (next() % 96) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 3 == 0 && len >= 4 {
                payload[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
            }
            let cmd = (i % 21) as u16;
            let flags = [
                0,
                FLAGS_TYPE_REPLY,
                FLAGS_TYPE_REPLY | FLAGS_ERROR,
                FLAGS_NO_REPLY,
                7,
            ][(i % 5) as usize];
            let mut b = MessageBuilder::with_flags(i as u16, cmd, flags);
            b.bytes(&payload);
            let r = rec(&b.finish(), (next() % 3) as usize);
            let line = r.to_json().to_string();
            assert!(serde_json::from_str::<Value>(&line).is_ok());
        }
    }

    #[test]
    fn transport_refusals_become_records() {
        let mut header = [0u8; HEADER_SIZE];
        Header {
            msg_id: 5,
            command: 9,
            msg_size: 8,
            flags: 0,
            error_no: 0,
        }
        .encode(&mut header);
        let r = received_record(
            Side::Server,
            Channel::Main,
            &Err(RecvError::TooSmall {
                header,
                fds: Vec::new(),
            }),
        )
        .expect("a record");
        assert_eq!(r.msg_id(), Some(5));
        assert!(r.error.as_deref().is_some_and(|e| e.contains("smaller")));

        let bytes = cmd_msg(6, Command::RegionRead, |b| {
            RegionAccess {
                offset: 0,
                region: 0,
                count: 4,
            }
            .encode(b)
        });
        let r = received_record(
            Side::Server,
            Channel::Main,
            &Err(RecvError::TooManyFds { bytes }),
        )
        .expect("a record");
        assert_eq!(r.payload["count"], 4, "the payload is still decoded");
        assert!(r.error.as_deref().is_some_and(|e| e.contains("fds")));

        assert!(received_record(Side::Server, Channel::Main, &Ok(None)).is_none());
        let io = Err(RecvError::Io(io::Error::from(io::ErrorKind::TimedOut)));
        assert!(received_record(Side::Client, Channel::Twin, &io).is_none());
    }

    #[test]
    fn switch_off_on_and_replace() {
        let sw = TraceSwitch::new();
        assert!(!sw.is_on());
        assert!(sw.tracer().is_none());
        let msg = cmd_msg(1, Command::DeviceReset, |_| {});
        sw.message(Side::Server, Direction::Recv, Channel::Main, &msg, 0);

        let a = Arc::new(TraceBuffer::new(100));
        let b = Arc::new(TraceBuffer::new(100));
        assert!(sw.set(Some(a.clone())).is_none());
        assert!(sw.is_on());
        sw.message(Side::Server, Direction::Recv, Channel::Main, &msg, 0);
        let old = sw.set(Some(b.clone()));
        assert!(old.is_some());
        sw.message(Side::Server, Direction::Send, Channel::Main, &msg, 0);
        sw.message(Side::Server, Direction::Send, Channel::Main, &msg, 0);
        assert!(sw.set(None).is_some());
        assert!(!sw.is_on());
        sw.message(Side::Server, Direction::Send, Channel::Main, &msg, 0);
        assert_eq!(a.records().len(), 1);
        assert_eq!(b.records().len(), 2);
        assert_eq!(b.records()[0].direction, Direction::Send);
        assert_eq!(format!("{sw:?}"), "TraceSwitch { on: false }");
    }

    #[test]
    fn closures_are_tracers() {
        let seen = Arc::new(AtomicU64::new(0));
        let s2 = seen.clone();
        let sw = TraceSwitch::with_tracer(Arc::new(move |r: &TraceRecord| {
            if r.command() == Some(Command::DeviceReset as u16) {
                s2.fetch_add(1, Ordering::Relaxed);
            }
        }));
        sw.message(
            Side::Client,
            Direction::Send,
            Channel::Main,
            &cmd_msg(1, Command::DeviceReset, |_| {}),
            0,
        );
        sw.message(
            Side::Client,
            Direction::Send,
            Channel::Main,
            &cmd_msg(2, Command::RegionRead, |_| {}),
            0,
        );
        assert_eq!(seen.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn buffer_limit_counts_drops() {
        let buf = TraceBuffer::new(2);
        let r = rec(&cmd_msg(1, Command::DeviceReset, |_| {}), 0);
        for _ in 0..5 {
            buf.record(&r);
        }
        assert_eq!(buf.records().len(), 2);
        assert_eq!(buf.dropped(), 3);
        assert_eq!(buf.take().len(), 2);
        assert!(buf.records().is_empty());
    }

    /// A writer that shares its bytes with the test, and can be made to fail.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        fail: Arc<AtomicBool>,
        flushes: Arc<AtomicU64>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(io::Error::other("disk full"));
            }
            lock(&self.bytes).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            if self.fail.load(Ordering::Relaxed) {
                return Err(io::Error::other("disk full"));
            }
            Ok(())
        }
    }

    #[test]
    fn json_lines_one_object_per_line() {
        let sink = Sink::default();
        let t = JsonLinesTracer::from_writer(sink.clone(), true);
        let r1 = rec(&cmd_msg(1, Command::DeviceReset, |_| {}), 0);
        let r2 = rec(
            &wire::error_reply(1, Command::DeviceReset as u16, Errno::NOTSUP),
            0,
        );
        t.record(&r1);
        t.record(&r2);
        assert_eq!(t.lines_written(), 2);
        let text = String::from_utf8(lock(&sink.bytes).clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: Value = serde_json::from_str(lines[1]).expect("json");
        assert_eq!(v["errno"], Errno::NOTSUP.raw_os_error());
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn appending_tracers_share_a_file_with_labelled_whole_lines() {
        let path =
            std::env::temp_dir().join(format!("vfu-trace-append-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "{\"kept\":true}\n").expect("an earlier line");
        let a = JsonLinesTracer::append(&path)
            .expect("a")
            .with_field("device", "emu_iavf0");
        let b = JsonLinesTracer::append(&path)
            .expect("b")
            .with_field("device", "iavf_client");
        a.record(&rec(&cmd_msg(7, Command::DeviceReset, |_| {}), 0));
        b.record(&rec(&cmd_msg(8, Command::DeviceReset, |_| {}), 0));
        a.record(&rec(&cmd_msg(9, Command::DeviceReset, |_| {}), 0));
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 4, "appended, not truncated: {text}");
        assert_eq!(lines[0]["kept"], true);
        let ids: Vec<(u64, &str)> = lines[1..]
            .iter()
            .map(|v| {
                (
                    v["id"].as_u64().expect("id"),
                    v["device"].as_str().expect("device"),
                )
            })
            .collect();
        assert_eq!(
            ids,
            vec![(7, "emu_iavf0"), (8, "iavf_client"), (9, "emu_iavf0")]
        );
        assert!(JsonLinesTracer::append("/nonexistent-dir-vfu/x.jsonl").is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn buffered_json_lines_flush_on_flush_and_drop() {
        let sink = Sink::default();
        let t = JsonLinesTracer::from_writer(sink.clone(), false);
        t.record(&rec(&cmd_msg(1, Command::DeviceReset, |_| {}), 0));
        assert!(lock(&sink.bytes).is_empty(), "buffered until flushed");
        Tracer::flush(&t);
        assert_eq!(lock(&sink.bytes).iter().filter(|&&c| c == b'\n').count(), 1);
        t.record(&rec(&cmd_msg(2, Command::DeviceReset, |_| {}), 0));
        drop(t);
        assert_eq!(lock(&sink.bytes).iter().filter(|&&c| c == b'\n').count(), 2);
    }

    #[test]
    fn switching_off_flushes_the_old_tracer() {
        let sink = Sink::default();
        let sw =
            TraceSwitch::with_tracer(Arc::new(JsonLinesTracer::from_writer(sink.clone(), false)));
        sw.message(
            Side::Server,
            Direction::Recv,
            Channel::Main,
            &cmd_msg(1, Command::DeviceReset, |_| {}),
            0,
        );
        assert!(lock(&sink.bytes).is_empty());
        sw.set(None);
        assert_eq!(lock(&sink.bytes).iter().filter(|&&c| c == b'\n').count(), 1);
    }

    #[test]
    fn write_errors_stop_the_tracer_quietly() {
        let sink = Sink::default();
        let t = JsonLinesTracer::from_writer(sink.clone(), true);
        let r = rec(&cmd_msg(1, Command::DeviceReset, |_| {}), 0);
        t.record(&r);
        sink.fail.store(true, Ordering::Relaxed);
        t.record(&r);
        assert!(t.has_failed());
        let flushes = sink.flushes.load(Ordering::Relaxed);
        sink.fail.store(false, Ordering::Relaxed);
        t.record(&r);
        Tracer::flush(&t);
        assert_eq!(t.lines_written(), 1);
        assert_eq!(t.dropped(), 2);
        assert_eq!(
            sink.flushes.load(Ordering::Relaxed),
            flushes,
            "no I/O after the failure"
        );
        assert_eq!(lock(&sink.bytes).iter().filter(|&&c| c == b'\n').count(), 1);
    }

    #[test]
    fn create_reports_the_path() {
        let dir = std::env::temp_dir().join(format!("emudev-trace-unit-{}", std::process::id()));
        let missing = dir.join("no-such-dir").join("t.jsonl");
        match JsonLinesTracer::create(&missing) {
            Err(TraceCreateError::Open { path, .. }) => assert_eq!(path, missing),
            Ok(_) => panic!("created a file in a missing directory"),
        }
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.jsonl");
        {
            let t = JsonLinesTracer::create(&path).expect("create");
            t.record(&rec(&cmd_msg(1, Command::DeviceReset, |_| {}), 0));
            let text = std::fs::read_to_string(&path).expect("read");
            assert_eq!(text.lines().count(), 1, "flushed per line before drop");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
