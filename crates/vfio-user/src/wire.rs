//! The vfio-user wire format, sans I/O.
//!
//! Bytes in, typed messages out, and back. Nothing here touches a socket or an fd: fds travel
//! beside the bytes (see [`crate::transport`]) and the code that decodes a message is told how
//! many arrived. Every length, count and flag is checked before use; a bad message becomes a
//! [`DecodeError`] whose [`DecodeError::errno`] is what the peer gets in the error reply.
//!
//! Layouts follow the spec (QEMU `docs/interop/vfio-user.rst`, 0.9.2). Where a payload is a
//! `linux/vfio.h` structure, field offsets come from `vfio-bindings` through `offset_of!`, so the
//! kernel's definition is the single source; the unit tests pin every offset to the spec's
//! numbers. All integers are in host byte order, as the spec says.

use std::mem::{offset_of, size_of};

use serde::{Deserialize, Serialize};
use vfio_bindings::bindings::vfio;

use crate::device::Errno;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Header flag bits 0-3: the message type.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Message type: a command.
pub const FLAGS_TYPE_COMMAND: u32 = 0x0;
/// Message type: a reply.
pub const FLAGS_TYPE_REPLY: u32 = 0x1;
/// The sender wants no reply.
pub const FLAGS_NO_REPLY: u32 = 0x10;
/// The reply reports an error in `error_no`.
pub const FLAGS_ERROR: u32 = 0x20;

/// Default `max_msg_fds` when the peer says nothing.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default `max_data_xfer_size` when the peer says nothing.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// Default `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default `pgsizes` (4 KiB only).
pub const DEFAULT_PGSIZES: u64 = 4096;
/// The most fds one message may carry that we accept in negotiation (libvfio-user's bound).
pub const MAX_MSG_FDS_LIMIT: u32 = 1024;

/// DMA_MAP flag: the device may read.
pub const DMA_MAP_FLAG_READ: u32 = vfio::VFIO_DMA_MAP_FLAG_READ;
/// DMA_MAP flag: the device may write.
pub const DMA_MAP_FLAG_WRITE: u32 = vfio::VFIO_DMA_MAP_FLAG_WRITE;
/// DMA_UNMAP flag (kernel value): return a dirty bitmap.
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = vfio::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
/// DMA_UNMAP flag (kernel value): unmap everything; address and size must be 0.
pub const DMA_UNMAP_FLAG_ALL: u32 = vfio::VFIO_DMA_UNMAP_FLAG_ALL;

/// GET_REGION_IO_FDS sub-region type: a plain ioeventfd.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// GET_REGION_IO_FDS sub-region type: an ioregionfd (never merged into KVM; decoded only).
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;
/// Size of one GET_REGION_IO_FDS sub-region entry in the spec.
pub const IO_FD_ENTRY_SIZE: usize = 40;

/// Migration device states (DEVICE_FEATURE MIG_DEVICE_STATE).
pub mod mig_state {
    use super::vfio;
    /// ERROR.
    pub const ERROR: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR;
    /// STOP.
    pub const STOP: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP;
    /// RUNNING.
    pub const RUNNING: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING;
    /// STOP_COPY.
    pub const STOP_COPY: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY;
    /// RESUMING.
    pub const RESUMING: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING;
    /// RUNNING_P2P.
    pub const RUNNING_P2P: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P;
    /// PRE_COPY.
    pub const PRE_COPY: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY;
    /// PRE_COPY_P2P.
    pub const PRE_COPY_P2P: u32 = vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

/// The vfio-user commands, numbered as in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// 1: version and capability negotiation.
    Version = 1,
    /// 2: add a DMA mapping.
    DmaMap = 2,
    /// 3: remove a DMA mapping.
    DmaUnmap = 3,
    /// 4: device flags and counts.
    DeviceGetInfo = 4,
    /// 5: one region's info (and mmap fd).
    DeviceGetRegionInfo = 5,
    /// 6: a region's ioeventfds.
    DeviceGetRegionIoFds = 6,
    /// 7: one IRQ index's info.
    DeviceGetIrqInfo = 7,
    /// 8: set IRQ eventfds, masks or trigger.
    DeviceSetIrqs = 8,
    /// 9: read from a region.
    RegionRead = 9,
    /// 10: write to a region.
    RegionWrite = 10,
    /// 11: server reads client memory.
    DmaRead = 11,
    /// 12: server writes client memory.
    DmaWrite = 12,
    /// 13: reset the device.
    DeviceReset = 13,
    /// 14: removed from the spec (legacy DIRTY_PAGES); decoded as a number only.
    DirtyPages = 14,
    /// 15: several small region writes in one message.
    RegionWriteMulti = 15,
    /// 16: VFIO device features (migration, DMA logging).
    DeviceFeature = 16,
    /// 17: read migration data.
    MigDataRead = 17,
    /// 18: write migration data.
    MigDataWrite = 18,
}

impl Command {
    /// The command for a wire number, if it is one.
    pub fn from_u16(v: u16) -> Option<Command> {
        use Command::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }

    /// The spec's name, e.g. `VFIO_USER_REGION_READ`.
    pub fn name(self) -> &'static str {
        use Command::*;
        match self {
            Version => "VFIO_USER_VERSION",
            DmaMap => "VFIO_USER_DMA_MAP",
            DmaUnmap => "VFIO_USER_DMA_UNMAP",
            DeviceGetInfo => "VFIO_USER_DEVICE_GET_INFO",
            DeviceGetRegionInfo => "VFIO_USER_DEVICE_GET_REGION_INFO",
            DeviceGetRegionIoFds => "VFIO_USER_DEVICE_GET_REGION_IO_FDS",
            DeviceGetIrqInfo => "VFIO_USER_DEVICE_GET_IRQ_INFO",
            DeviceSetIrqs => "VFIO_USER_DEVICE_SET_IRQS",
            RegionRead => "VFIO_USER_REGION_READ",
            RegionWrite => "VFIO_USER_REGION_WRITE",
            DmaRead => "VFIO_USER_DMA_READ",
            DmaWrite => "VFIO_USER_DMA_WRITE",
            DeviceReset => "VFIO_USER_DEVICE_RESET",
            DirtyPages => "VFIO_USER_DIRTY_PAGES",
            RegionWriteMulti => "VFIO_USER_REGION_WRITE_MULTI",
            DeviceFeature => "VFIO_USER_DEVICE_FEATURE",
            MigDataRead => "VFIO_USER_MIG_DATA_READ",
            MigDataWrite => "VFIO_USER_MIG_DATA_WRITE",
        }
    }
}

/// Why a message could not be decoded. Every variant maps to the errno of the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than 16 header bytes.
    #[error("message shorter than the 16-byte header ({0} bytes)")]
    ShortHeader(usize),
    /// `msg_size` disagrees with the bytes that make up the message.
    #[error("msg_size {msg_size} does not match the {actual} bytes received")]
    SizeMismatch {
        /// What the header says.
        msg_size: u32,
        /// What there is.
        actual: usize,
    },
    /// A command number outside 1-18 (or the removed 14).
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// A payload too short or too long for its command's layout.
    #[error("{what}: payload of {got} bytes, expected {expected}")]
    PayloadSize {
        /// The message or part being decoded.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// What the layout needs (a description, e.g. "16" or ">= 20").
        expected: &'static str,
    },
    /// `argsz` smaller than the fixed structure, or otherwise unusable.
    #[error("{what}: argsz {argsz} is invalid")]
    Argsz {
        /// The message being decoded.
        what: &'static str,
        /// The value received.
        argsz: u32,
    },
    /// Flags with unknown or contradictory bits.
    #[error("{what}: invalid flags {flags:#x}")]
    Flags {
        /// The message being decoded.
        what: &'static str,
        /// The value received.
        flags: u32,
    },
    /// A field that must be zero (or some fixed value) is not.
    #[error("{what}: invalid field {field} = {value:#x}")]
    Field {
        /// The message being decoded.
        what: &'static str,
        /// The field's name.
        field: &'static str,
        /// The value received.
        value: u64,
    },
    /// The VERSION JSON is missing its NUL, is not UTF-8 or does not parse as the spec's schema.
    #[error("version capabilities: {0}")]
    Json(String),
    /// A count of entries or bytes larger than the message holds or than a limit allows.
    #[error("{what}: count {count} out of range")]
    Count {
        /// The message being decoded.
        what: &'static str,
        /// The value received.
        count: u64,
    },
}

impl DecodeError {
    /// The errno sent back for this error (EINVAL for every malformed message, as the spec and
    /// libvfio-user do).
    pub fn errno(&self) -> Errno {
        Errno::INVAL
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

// ----- little helpers over byte slices (host endianness) ------------------------------------

fn rd_u16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_ne_bytes(a)
}

fn rd_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn need(what: &'static str, p: &[u8], len: usize, expected: &'static str) -> Result<()> {
    if p.len() < len {
        return Err(DecodeError::PayloadSize {
            what,
            got: p.len(),
            expected,
        });
    }
    Ok(())
}

fn exact(what: &'static str, p: &[u8], len: usize, expected: &'static str) -> Result<()> {
    if p.len() != len {
        return Err(DecodeError::PayloadSize {
            what,
            got: p.len(),
            expected,
        });
    }
    Ok(())
}

/// Appends fields to a message buffer at fixed offsets of a structure.
///
/// `Payload` starts as `len` zero bytes; `put_*` write at an offset inside them. This mirrors how
/// the layouts are specified (offset, width), so each encoder reads like the spec's table.
#[derive(Debug)]
pub struct Payload<'a> {
    buf: &'a mut Vec<u8>,
    base: usize,
}

impl<'a> Payload<'a> {
    /// Reserves `len` zeroed bytes at the end of `buf`.
    pub fn reserve(buf: &'a mut Vec<u8>, len: usize) -> Self {
        let base = buf.len();
        buf.resize(base + len, 0);
        Payload { buf, base }
    }
    /// Writes a u16 at `off` of the reserved structure.
    pub fn put_u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.buf[self.base + off..self.base + off + 2].copy_from_slice(&v.to_ne_bytes());
        self
    }
    /// Writes a u32 at `off` of the reserved structure.
    pub fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.buf[self.base + off..self.base + off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    /// Writes a u64 at `off` of the reserved structure.
    pub fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.buf[self.base + off..self.base + off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

// ----- header ---------------------------------------------------------------------------------

/// The 16-byte message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// Sender-chosen id, echoed in the reply.
    pub msg_id: u16,
    /// Command number (also set in replies).
    pub command: u16,
    /// Size of the whole message, header included.
    pub msg_size: u32,
    /// Type, NO_REPLY and ERROR bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error_no: u32,
}

impl Header {
    /// Offset of `msg_id`.
    pub const OFF_MSG_ID: usize = 0;
    /// Offset of `command`.
    pub const OFF_COMMAND: usize = 2;
    /// Offset of `msg_size`.
    pub const OFF_MSG_SIZE: usize = 4;
    /// Offset of `flags`.
    pub const OFF_FLAGS: usize = 8;
    /// Offset of `error_no`.
    pub const OFF_ERROR_NO: usize = 12;

    /// Reads a header from the first 16 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            return Err(DecodeError::ShortHeader(b.len()));
        }
        Ok(Header {
            msg_id: rd_u16(b, Self::OFF_MSG_ID),
            command: rd_u16(b, Self::OFF_COMMAND),
            msg_size: rd_u32(b, Self::OFF_MSG_SIZE),
            flags: rd_u32(b, Self::OFF_FLAGS),
            error_no: rd_u32(b, Self::OFF_ERROR_NO),
        })
    }

    /// Writes the header into `out[0..16]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.msg_id.to_ne_bytes());
        out[2..4].copy_from_slice(&self.command.to_ne_bytes());
        out[4..8].copy_from_slice(&self.msg_size.to_ne_bytes());
        out[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        out[12..16].copy_from_slice(&self.error_no.to_ne_bytes());
    }

    /// The message type bits.
    pub fn msg_type(&self) -> u32 {
        self.flags & FLAGS_TYPE_MASK
    }
    /// Is this a command?
    pub fn is_command(&self) -> bool {
        self.msg_type() == FLAGS_TYPE_COMMAND
    }
    /// Is this a reply?
    pub fn is_reply(&self) -> bool {
        self.msg_type() == FLAGS_TYPE_REPLY
    }
    /// Did the sender ask for no reply?
    pub fn no_reply(&self) -> bool {
        self.flags & FLAGS_NO_REPLY != 0
    }
    /// Is this an error reply?
    pub fn is_error(&self) -> bool {
        self.flags & FLAGS_ERROR != 0
    }
    /// The command, if the number is known.
    pub fn cmd(&self) -> Option<Command> {
        Command::from_u16(self.command)
    }
}

/// Builds one message: a header followed by a payload, `msg_size` filled in by [`Self::finish`].
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    header: Header,
}

impl MessageBuilder {
    /// A command message.
    pub fn command(msg_id: u16, command: Command) -> Self {
        Self::with_flags(msg_id, command as u16, FLAGS_TYPE_COMMAND)
    }

    /// A reply to a message with `msg_id` and `command`.
    pub fn reply(msg_id: u16, command: u16) -> Self {
        Self::with_flags(msg_id, command, FLAGS_TYPE_REPLY)
    }

    /// A message with explicit flags.
    pub fn with_flags(msg_id: u16, command: u16, flags: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.resize(HEADER_SIZE, 0);
        MessageBuilder {
            buf,
            header: Header {
                msg_id,
                command,
                msg_size: 0,
                flags,
                error_no: 0,
            },
        }
    }

    /// Sets NO_REPLY (commands only).
    pub fn no_reply(mut self, yes: bool) -> Self {
        if yes {
            self.header.flags |= FLAGS_NO_REPLY;
        } else {
            self.header.flags &= !FLAGS_NO_REPLY;
        }
        self
    }

    /// The payload buffer (header bytes come first; append after them).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Reserves a fixed structure of `len` bytes at the end of the payload.
    pub fn fixed(&mut self, len: usize) -> Payload<'_> {
        Payload::reserve(&mut self.buf, len)
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self
    }

    /// Fills in `msg_size` and returns the message bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header.msg_size = self.buf.len() as u32;
        let h = self.header;
        h.encode(&mut self.buf[..HEADER_SIZE]);
        self.buf
    }
}

/// An error reply: header only, Reply type, ERROR set, `error_no` = errno.
pub fn error_reply(msg_id: u16, command: u16, errno: Errno) -> Vec<u8> {
    let mut b = MessageBuilder::with_flags(msg_id, command, FLAGS_TYPE_REPLY | FLAGS_ERROR);
    b.header.error_no = errno.raw_os_error() as u32;
    b.finish()
}

/// An empty successful reply (header only).
pub fn empty_reply(msg_id: u16, command: u16) -> Vec<u8> {
    MessageBuilder::reply(msg_id, command).finish()
}

// ----- VERSION ----------------------------------------------------------------------------------

/// `twin_socket` capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TwinSocketCap {
    /// The sender supports (client) or set up (server) a twin socket.
    pub supported: bool,
    /// Index of the twin socket fd in the reply's fds (reply only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd_index: Option<u32>,
}

/// The legacy `migration` capability object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MigrationCap {
    /// Dirty page tracking granularity.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pgsize: Option<u64>,
    /// QEMU's addition: the largest dirty bitmap.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_bitmap_size: Option<u64>,
}

/// The capabilities object of the VERSION JSON. Absent keys take the spec's defaults; unknown
/// keys are ignored (QEMU only warns about them); a key of the wrong type is an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capabilities {
    /// Most fds the sender can receive in one message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_msg_fds: Option<u32>,
    /// Largest data transfer in REGION/DMA READ/WRITE.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_data_xfer_size: Option<u64>,
    /// Most DMA windows valid at once.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_dma_maps: Option<u32>,
    /// Supported DMA page sizes, OR'ed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pgsizes: Option<u64>,
    /// Twin socket support.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub twin_socket: Option<TwinSocketCap>,
    /// REGION_WRITE_MULTI allowed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub write_multiple: Option<bool>,
    /// Legacy migration object.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migration: Option<MigrationCap>,
}

#[derive(Serialize, Deserialize, Default)]
struct CapsJson {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    capabilities: Option<Capabilities>,
}

impl Capabilities {
    /// Effective `max_msg_fds`.
    pub fn max_msg_fds(&self) -> u32 {
        self.max_msg_fds.unwrap_or(DEFAULT_MAX_MSG_FDS)
    }
    /// Effective `max_data_xfer_size`.
    pub fn max_data_xfer_size(&self) -> u64 {
        self.max_data_xfer_size
            .unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE)
    }
    /// Effective `max_dma_maps`.
    pub fn max_dma_maps(&self) -> u32 {
        self.max_dma_maps.unwrap_or(DEFAULT_MAX_DMA_MAPS)
    }
    /// Effective `pgsizes` (the spec key, else the legacy `migration.pgsize`, else 4 KiB).
    pub fn pgsizes(&self) -> u64 {
        self.pgsizes
            .or(self.migration.and_then(|m| m.pgsize))
            .unwrap_or(DEFAULT_PGSIZES)
    }
    /// Did the peer offer (or set up) a twin socket?
    pub fn twin_socket(&self) -> bool {
        self.twin_socket.is_some_and(|t| t.supported)
    }
    /// Is REGION_WRITE_MULTI allowed?
    pub fn write_multiple(&self) -> bool {
        self.write_multiple.unwrap_or(false)
    }

    /// Checks value ranges the types alone do not.
    fn validate(&self) -> Result<()> {
        if let Some(n) = self.max_msg_fds {
            if n > MAX_MSG_FDS_LIMIT {
                return Err(DecodeError::Json(format!(
                    "max_msg_fds {n} exceeds {MAX_MSG_FDS_LIMIT}"
                )));
            }
        }
        if self.max_data_xfer_size == Some(0) {
            return Err(DecodeError::Json("max_data_xfer_size 0".into()));
        }
        let pg_ok = |p: u64| p != 0 && p.is_multiple_of(4096);
        if let Some(p) = self.pgsizes {
            if !pg_ok(p) {
                return Err(DecodeError::Json(format!(
                    "pgsizes {p:#x} is not a multiple of 4096"
                )));
            }
        }
        if let Some(p) = self.migration.and_then(|m| m.pgsize) {
            if !pg_ok(p) {
                return Err(DecodeError::Json(format!(
                    "migration.pgsize {p} is not a multiple of 4096"
                )));
            }
        }
        Ok(())
    }
}

/// Serde's derived struct deserializers also accept a JSON array (fields by position); the
/// spec's capability values are objects, so the shape is checked on the raw value first.
fn check_json_shape(v: &serde_json::Value) -> Result<()> {
    let obj = |v: &serde_json::Value, what: &str| -> Result<()> {
        if v.is_object() {
            Ok(())
        } else {
            Err(DecodeError::Json(format!("{what} is not an object")))
        }
    };
    obj(v, "the VERSION JSON")?;
    if let Some(caps) = v.get("capabilities") {
        obj(caps, "capabilities")?;
        for key in ["migration", "twin_socket"] {
            if let Some(inner) = caps.get(key) {
                obj(inner, key)?;
            }
        }
    }
    Ok(())
}

/// A VERSION message (request or reply: the same layout).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Version {
    /// Major version (0).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The capabilities; `None` when no JSON was sent or it had no `capabilities` key.
    pub caps: Option<Capabilities>,
}

impl Version {
    /// Fixed part: major, minor.
    pub const FIXED: usize = 4;

    /// Decodes the payload: major, minor, then optional NUL-terminated UTF-8 JSON.
    pub fn decode(p: &[u8]) -> Result<Version> {
        need("VERSION", p, Self::FIXED, ">= 4")?;
        let major = rd_u16(p, 0);
        let minor = rd_u16(p, 2);
        let json = &p[Self::FIXED..];
        let caps = if json.is_empty() {
            None
        } else {
            let Some((&0, body)) = json.split_last() else {
                return Err(DecodeError::Json("JSON is not NUL-terminated".into()));
            };
            if body.contains(&0) {
                return Err(DecodeError::Json("NUL inside the JSON".into()));
            }
            let text = std::str::from_utf8(body)
                .map_err(|_| DecodeError::Json("JSON is not UTF-8".into()))?;
            if text.trim().is_empty() {
                None
            } else {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
                check_json_shape(&value)?;
                let parsed: CapsJson =
                    serde_json::from_value(value).map_err(|e| DecodeError::Json(e.to_string()))?;
                if let Some(c) = &parsed.capabilities {
                    c.validate()?;
                }
                parsed.capabilities
            }
        };
        Ok(Version { major, minor, caps })
    }

    /// Appends the payload (JSON always present and NUL-terminated).
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::FIXED)
            .put_u16(0, self.major)
            .put_u16(2, self.minor);
        let json = serde_json::to_string(&CapsJson {
            capabilities: self.caps.clone(),
        })
        .unwrap_or_else(|_| String::from("{}"));
        b.bytes(json.as_bytes()).bytes(&[0]);
    }
}

// ----- DMA_MAP / DMA_UNMAP ---------------------------------------------------------------------

/// DMA_MAP request (the `vfio_iommu_type1_dma_map` layout, `vaddr` read as the file offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DmaMap {
    /// argsz (32).
    pub argsz: u32,
    /// READ / WRITE bits.
    pub flags: u32,
    /// File offset into the fd (0 without an fd).
    pub offset: u64,
    /// IOVA.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

impl DmaMap {
    /// Size of the structure (32).
    pub const SIZE: usize = size_of::<vfio::vfio_iommu_type1_dma_map>();
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_iommu_type1_dma_map, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_iommu_type1_dma_map, flags);
    const OFF_OFFSET: usize = offset_of!(vfio::vfio_iommu_type1_dma_map, vaddr);
    const OFF_ADDRESS: usize = offset_of!(vfio::vfio_iommu_type1_dma_map, iova);
    const OFF_SIZE: usize = offset_of!(vfio::vfio_iommu_type1_dma_map, size);

    /// Decodes and checks the request.
    pub fn decode(p: &[u8]) -> Result<DmaMap> {
        exact("DMA_MAP", p, Self::SIZE, "32")?;
        let m = DmaMap {
            argsz: rd_u32(p, Self::OFF_ARGSZ),
            flags: rd_u32(p, Self::OFF_FLAGS),
            offset: rd_u64(p, Self::OFF_OFFSET),
            address: rd_u64(p, Self::OFF_ADDRESS),
            size: rd_u64(p, Self::OFF_SIZE),
        };
        if (m.argsz as usize) < Self::SIZE {
            return Err(DecodeError::Argsz {
                what: "DMA_MAP",
                argsz: m.argsz,
            });
        }
        if m.flags & !(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE) != 0 {
            return Err(DecodeError::Flags {
                what: "DMA_MAP",
                flags: m.flags,
            });
        }
        Ok(m)
    }

    /// Appends the request payload.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, self.argsz)
            .put_u32(Self::OFF_FLAGS, self.flags)
            .put_u64(Self::OFF_OFFSET, self.offset)
            .put_u64(Self::OFF_ADDRESS, self.address)
            .put_u64(Self::OFF_SIZE, self.size);
    }
}

/// DMA_UNMAP request and reply (`vfio_iommu_type1_dma_unmap` without the bitmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DmaUnmap {
    /// argsz: the largest reply the client accepts.
    pub argsz: u32,
    /// Kernel flag values: GET_DIRTY_BITMAP = 1, ALL = 2.
    pub flags: u32,
    /// IOVA.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

impl DmaUnmap {
    /// Size of the structure (24).
    pub const SIZE: usize = size_of::<vfio::vfio_iommu_type1_dma_unmap>();
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_iommu_type1_dma_unmap, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_iommu_type1_dma_unmap, flags);
    const OFF_ADDRESS: usize = offset_of!(vfio::vfio_iommu_type1_dma_unmap, iova);
    const OFF_SIZE: usize = offset_of!(vfio::vfio_iommu_type1_dma_unmap, size);

    /// Decodes and checks the request. The dirty bitmap flag is accepted here (it is a valid
    /// flag); the server refuses it when it is not tracking dirty pages.
    pub fn decode(p: &[u8]) -> Result<DmaUnmap> {
        exact("DMA_UNMAP", p, Self::SIZE, "24")?;
        Self::decode_unchecked(p)
    }

    /// Decodes a reply (a reply may carry a bitmap after the structure).
    pub fn decode_reply(p: &[u8]) -> Result<DmaUnmap> {
        need("DMA_UNMAP reply", p, Self::SIZE, ">= 24")?;
        Self::decode_unchecked(p)
    }

    fn decode_unchecked(p: &[u8]) -> Result<DmaUnmap> {
        let m = DmaUnmap {
            argsz: rd_u32(p, Self::OFF_ARGSZ),
            flags: rd_u32(p, Self::OFF_FLAGS),
            address: rd_u64(p, Self::OFF_ADDRESS),
            size: rd_u64(p, Self::OFF_SIZE),
        };
        if (m.argsz as usize) < Self::SIZE {
            return Err(DecodeError::Argsz {
                what: "DMA_UNMAP",
                argsz: m.argsz,
            });
        }
        if m.flags & !(DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) != 0
            || m.flags == DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        {
            return Err(DecodeError::Flags {
                what: "DMA_UNMAP",
                flags: m.flags,
            });
        }
        if m.flags & DMA_UNMAP_FLAG_ALL != 0 && (m.address != 0 || m.size != 0) {
            return Err(DecodeError::Field {
                what: "DMA_UNMAP",
                field: "address/size with ALL",
                value: m.address | m.size,
            });
        }
        Ok(m)
    }

    /// Appends the payload.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, self.argsz)
            .put_u32(Self::OFF_FLAGS, self.flags)
            .put_u64(Self::OFF_ADDRESS, self.address)
            .put_u64(Self::OFF_SIZE, self.size);
    }
}

// ----- DEVICE_GET_INFO ---------------------------------------------------------------------------

/// DEVICE_GET_INFO request and reply: the first 16 bytes of `vfio_device_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceInfoMsg {
    /// argsz.
    pub argsz: u32,
    /// VFIO_DEVICE_FLAGS_*.
    pub flags: u32,
    /// Region count.
    pub num_regions: u32,
    /// IRQ index count.
    pub num_irqs: u32,
}

impl DeviceInfoMsg {
    /// Size on the wire (16): `vfio_device_info` up to, not including, `cap_offset`.
    pub const SIZE: usize = offset_of!(vfio::vfio_device_info, cap_offset);
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_device_info, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_device_info, flags);
    const OFF_NUM_REGIONS: usize = offset_of!(vfio::vfio_device_info, num_regions);
    const OFF_NUM_IRQS: usize = offset_of!(vfio::vfio_device_info, num_irqs);

    /// Decodes a request: argsz >= 16; the other fields are ignored (clients send zeros).
    pub fn decode_request(p: &[u8]) -> Result<DeviceInfoMsg> {
        exact("DEVICE_GET_INFO", p, Self::SIZE, "16")?;
        let m = Self::decode_unchecked(p);
        if (m.argsz as usize) < Self::SIZE {
            return Err(DecodeError::Argsz {
                what: "DEVICE_GET_INFO",
                argsz: m.argsz,
            });
        }
        Ok(m)
    }

    /// Decodes a reply.
    pub fn decode_reply(p: &[u8]) -> Result<DeviceInfoMsg> {
        need("DEVICE_GET_INFO reply", p, Self::SIZE, ">= 16")?;
        Ok(Self::decode_unchecked(p))
    }

    fn decode_unchecked(p: &[u8]) -> DeviceInfoMsg {
        DeviceInfoMsg {
            argsz: rd_u32(p, Self::OFF_ARGSZ),
            flags: rd_u32(p, Self::OFF_FLAGS),
            num_regions: rd_u32(p, Self::OFF_NUM_REGIONS),
            num_irqs: rd_u32(p, Self::OFF_NUM_IRQS),
        }
    }

    /// Appends the payload.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, self.argsz)
            .put_u32(Self::OFF_FLAGS, self.flags)
            .put_u32(Self::OFF_NUM_REGIONS, self.num_regions)
            .put_u32(Self::OFF_NUM_IRQS, self.num_irqs);
    }
}

// ----- DEVICE_GET_REGION_INFO --------------------------------------------------------------------

/// One sparse-mmap area on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SparseMmapArea {
    /// Offset in the region.
    pub offset: u64,
    /// Size.
    pub size: u64,
}

/// DEVICE_GET_REGION_INFO (`struct vfio_region_info`, 32 bytes) plus the sparse-mmap capability.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegionInfoMsg {
    /// argsz: in a request, the largest reply accepted; in a reply, the full size needed.
    pub argsz: u32,
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of the structure (0 = none).
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset (base for sparse areas).
    pub offset: u64,
    /// Sparse-mmap areas (a reply with the SPARSE_MMAP capability).
    pub sparse: Vec<SparseMmapArea>,
}

impl RegionInfoMsg {
    /// Size of `vfio_region_info` (32).
    pub const SIZE: usize = size_of::<vfio::vfio_region_info>();
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_region_info, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_region_info, flags);
    const OFF_INDEX: usize = offset_of!(vfio::vfio_region_info, index);
    const OFF_CAP_OFFSET: usize = offset_of!(vfio::vfio_region_info, cap_offset);
    const OFF_SIZE: usize = offset_of!(vfio::vfio_region_info, size);
    const OFF_OFFSET: usize = offset_of!(vfio::vfio_region_info, offset);
    /// Size of the sparse capability before its areas (16).
    pub const SPARSE_CAP_FIXED: usize = offset_of!(vfio::vfio_region_info_cap_sparse_mmap, areas);
    const OFF_CAP_ID: usize = offset_of!(vfio::vfio_info_cap_header, id);
    const OFF_CAP_VERSION: usize = offset_of!(vfio::vfio_info_cap_header, version);
    const OFF_CAP_NEXT: usize = offset_of!(vfio::vfio_info_cap_header, next);
    const OFF_NR_AREAS: usize = offset_of!(vfio::vfio_region_info_cap_sparse_mmap, nr_areas);
    /// Size of one area (16).
    pub const AREA_SIZE: usize = size_of::<vfio::vfio_region_sparse_mmap_area>();

    /// Decodes a request: only argsz and index matter; argsz must cover the structure.
    pub fn decode_request(p: &[u8]) -> Result<RegionInfoMsg> {
        exact("DEVICE_GET_REGION_INFO", p, Self::SIZE, "32")?;
        let argsz = rd_u32(p, Self::OFF_ARGSZ);
        if (argsz as usize) < Self::SIZE {
            return Err(DecodeError::Argsz {
                what: "DEVICE_GET_REGION_INFO",
                argsz,
            });
        }
        Ok(RegionInfoMsg {
            argsz,
            index: rd_u32(p, Self::OFF_INDEX),
            ..Default::default()
        })
    }

    /// The reply's full size with its capabilities.
    pub fn full_size(&self) -> usize {
        if self.sparse.is_empty() {
            Self::SIZE
        } else {
            Self::SIZE + Self::SPARSE_CAP_FIXED + self.sparse.len() * Self::AREA_SIZE
        }
    }

    /// Appends a reply for a client that accepts `client_argsz` bytes: `argsz` is always the
    /// full size; the capability (and the CAPS flag) only when it fits.
    pub fn encode_reply(&self, client_argsz: u32, b: &mut MessageBuilder) {
        let full = self.full_size();
        let with_caps = !self.sparse.is_empty() && client_argsz as usize >= full;
        let mut flags = self.flags & !vfio::VFIO_REGION_INFO_FLAG_CAPS;
        if with_caps {
            flags |= vfio::VFIO_REGION_INFO_FLAG_CAPS;
        }
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, full as u32)
            .put_u32(Self::OFF_FLAGS, flags)
            .put_u32(Self::OFF_INDEX, self.index)
            .put_u32(
                Self::OFF_CAP_OFFSET,
                if with_caps { Self::SIZE as u32 } else { 0 },
            )
            .put_u64(Self::OFF_SIZE, self.size)
            .put_u64(Self::OFF_OFFSET, self.offset);
        if with_caps {
            b.fixed(Self::SPARSE_CAP_FIXED)
                .put_u16(
                    Self::OFF_CAP_ID,
                    vfio::VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16,
                )
                .put_u16(Self::OFF_CAP_VERSION, 1)
                .put_u32(Self::OFF_CAP_NEXT, 0)
                .put_u32(Self::OFF_NR_AREAS, self.sparse.len() as u32);
            for a in &self.sparse {
                b.fixed(Self::AREA_SIZE)
                    .put_u64(0, a.offset)
                    .put_u64(8, a.size);
            }
        }
    }

    /// Appends a request.
    pub fn encode_request(index: u32, argsz: u32, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, argsz)
            .put_u32(Self::OFF_INDEX, index);
    }

    /// Decodes a reply, following the capability chain (bounded by the payload) and collecting
    /// sparse areas; unknown capabilities are skipped.
    pub fn decode_reply(p: &[u8]) -> Result<RegionInfoMsg> {
        need("DEVICE_GET_REGION_INFO reply", p, Self::SIZE, ">= 32")?;
        let mut m = RegionInfoMsg {
            argsz: rd_u32(p, Self::OFF_ARGSZ),
            flags: rd_u32(p, Self::OFF_FLAGS),
            index: rd_u32(p, Self::OFF_INDEX),
            cap_offset: rd_u32(p, Self::OFF_CAP_OFFSET),
            size: rd_u64(p, Self::OFF_SIZE),
            offset: rd_u64(p, Self::OFF_OFFSET),
            sparse: Vec::new(),
        };
        // A reply whose argsz is larger than what came is a request to ask again with that
        // argsz (some servers still set CAPS and cap_offset then); its capabilities are not here.
        if m.flags & vfio::VFIO_REGION_INFO_FLAG_CAPS == 0 || m.argsz as usize > p.len() {
            return Ok(m);
        }
        let mut off = m.cap_offset as usize;
        let mut hops = 0;
        while off != 0 {
            hops += 1;
            if hops > 16 || off < Self::SIZE || off.checked_add(8).is_none_or(|e| e > p.len()) {
                return Err(DecodeError::Field {
                    what: "region info cap",
                    field: "next",
                    value: off as u64,
                });
            }
            let id = rd_u16(p, off + Self::OFF_CAP_ID) as u32;
            let next = rd_u32(p, off + Self::OFF_CAP_NEXT) as usize;
            if id == vfio::VFIO_REGION_INFO_CAP_SPARSE_MMAP {
                need(
                    "sparse mmap cap",
                    &p[off..],
                    Self::SPARSE_CAP_FIXED,
                    ">= 16",
                )?;
                let nr = rd_u32(p, off + Self::OFF_NR_AREAS) as usize;
                let start = off + Self::SPARSE_CAP_FIXED;
                let end = nr
                    .checked_mul(Self::AREA_SIZE)
                    .and_then(|n| n.checked_add(start))
                    .filter(|&e| e <= p.len())
                    .ok_or(DecodeError::Count {
                        what: "sparse mmap areas",
                        count: nr as u64,
                    })?;
                m.sparse = p[start..end]
                    .chunks_exact(Self::AREA_SIZE)
                    .map(|c| SparseMmapArea {
                        offset: rd_u64(c, 0),
                        size: rd_u64(c, 8),
                    })
                    .collect();
            }
            off = next;
        }
        Ok(m)
    }
}

// ----- DEVICE_GET_REGION_IO_FDS ------------------------------------------------------------------

/// One sub-region entry of a GET_REGION_IO_FDS reply (spec layout, 40 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoFdEntry {
    /// Offset in the region.
    pub offset: u64,
    /// Access size.
    pub size: u64,
    /// Index into the reply's fds.
    pub fd_index: u32,
    /// IOEVENTFD (0) or IOREGIONFD (1).
    pub kind: u32,
    /// KVM_IOEVENTFD_FLAG_* bits.
    pub flags: u32,
    /// datamatch (ioeventfd) or user_data (ioregionfd).
    pub datamatch: u64,
}

/// GET_REGION_IO_FDS request and reply header (16 bytes) plus the entries of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegionIoFdsMsg {
    /// argsz.
    pub argsz: u32,
    /// flags (must be 0).
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Entry count (0 in a request).
    pub count: u32,
    /// Entries (reply).
    pub entries: Vec<IoFdEntry>,
}

impl RegionIoFdsMsg {
    /// Size of the fixed part (16).
    pub const FIXED: usize = 16;

    /// Decodes a request: flags and count must be 0, argsz must cover the fixed part.
    pub fn decode_request(p: &[u8]) -> Result<RegionIoFdsMsg> {
        exact("DEVICE_GET_REGION_IO_FDS", p, Self::FIXED, "16")?;
        let m = RegionIoFdsMsg {
            argsz: rd_u32(p, 0),
            flags: rd_u32(p, 4),
            index: rd_u32(p, 8),
            count: rd_u32(p, 12),
            entries: Vec::new(),
        };
        if (m.argsz as usize) < Self::FIXED {
            return Err(DecodeError::Argsz {
                what: "DEVICE_GET_REGION_IO_FDS",
                argsz: m.argsz,
            });
        }
        if m.flags != 0 {
            return Err(DecodeError::Flags {
                what: "DEVICE_GET_REGION_IO_FDS",
                flags: m.flags,
            });
        }
        if m.count != 0 {
            return Err(DecodeError::Field {
                what: "DEVICE_GET_REGION_IO_FDS",
                field: "count",
                value: m.count as u64,
            });
        }
        Ok(m)
    }

    /// Appends a request.
    pub fn encode_request(index: u32, argsz: u32, b: &mut MessageBuilder) {
        b.fixed(Self::FIXED).put_u32(0, argsz).put_u32(8, index);
    }

    /// The full reply size with all entries.
    pub fn full_size(&self) -> usize {
        Self::FIXED + self.entries.len() * IO_FD_ENTRY_SIZE
    }

    /// Appends a reply: entries only when the client's argsz holds them all (else argsz alone
    /// tells the client how much to ask for). Returns whether entries (and so fds) were included.
    pub fn encode_reply(&self, client_argsz: u32, b: &mut MessageBuilder) -> bool {
        let full = self.full_size();
        let with = client_argsz as usize >= full;
        b.fixed(Self::FIXED)
            .put_u32(0, full as u32)
            .put_u32(4, 0)
            .put_u32(8, self.index)
            .put_u32(12, self.entries.len() as u32);
        if with {
            for e in &self.entries {
                b.fixed(IO_FD_ENTRY_SIZE)
                    .put_u64(0, e.offset)
                    .put_u64(8, e.size)
                    .put_u32(16, e.fd_index)
                    .put_u32(20, e.kind)
                    .put_u32(24, e.flags)
                    .put_u64(32, e.datamatch);
            }
        }
        with
    }

    /// Decodes a reply; entries are present when the payload holds them.
    pub fn decode_reply(p: &[u8]) -> Result<RegionIoFdsMsg> {
        need("DEVICE_GET_REGION_IO_FDS reply", p, Self::FIXED, ">= 16")?;
        let mut m = RegionIoFdsMsg {
            argsz: rd_u32(p, 0),
            flags: rd_u32(p, 4),
            index: rd_u32(p, 8),
            count: rd_u32(p, 12),
            entries: Vec::new(),
        };
        let body = &p[Self::FIXED..];
        if !body.is_empty() {
            let n = m.count as usize;
            if n == 0 || !body.len().is_multiple_of(n) || body.len() / n < IO_FD_ENTRY_SIZE {
                return Err(DecodeError::Count {
                    what: "io fd entries",
                    count: m.count as u64,
                });
            }
            let stride = body.len() / n;
            m.entries = body
                .chunks_exact(stride)
                .map(|c| IoFdEntry {
                    offset: rd_u64(c, 0),
                    size: rd_u64(c, 8),
                    fd_index: rd_u32(c, 16),
                    kind: rd_u32(c, 20),
                    flags: rd_u32(c, 24),
                    datamatch: rd_u64(c, stride - 8),
                })
                .collect();
        }
        Ok(m)
    }
}

// ----- DEVICE_GET_IRQ_INFO ----------------------------------------------------------------------

/// DEVICE_GET_IRQ_INFO request and reply (`struct vfio_irq_info`, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqInfoMsg {
    /// argsz.
    pub argsz: u32,
    /// VFIO_IRQ_INFO_*.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Vector count.
    pub count: u32,
}

impl IrqInfoMsg {
    /// Size (16).
    pub const SIZE: usize = size_of::<vfio::vfio_irq_info>();
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_irq_info, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_irq_info, flags);
    const OFF_INDEX: usize = offset_of!(vfio::vfio_irq_info, index);
    const OFF_COUNT: usize = offset_of!(vfio::vfio_irq_info, count);

    /// Decodes a request.
    pub fn decode_request(p: &[u8]) -> Result<IrqInfoMsg> {
        exact("DEVICE_GET_IRQ_INFO", p, Self::SIZE, "16")?;
        let m = Self::decode_unchecked(p);
        if (m.argsz as usize) < Self::SIZE {
            return Err(DecodeError::Argsz {
                what: "DEVICE_GET_IRQ_INFO",
                argsz: m.argsz,
            });
        }
        Ok(m)
    }

    /// Decodes a reply.
    pub fn decode_reply(p: &[u8]) -> Result<IrqInfoMsg> {
        need("DEVICE_GET_IRQ_INFO reply", p, Self::SIZE, ">= 16")?;
        Ok(Self::decode_unchecked(p))
    }

    fn decode_unchecked(p: &[u8]) -> IrqInfoMsg {
        IrqInfoMsg {
            argsz: rd_u32(p, Self::OFF_ARGSZ),
            flags: rd_u32(p, Self::OFF_FLAGS),
            index: rd_u32(p, Self::OFF_INDEX),
            count: rd_u32(p, Self::OFF_COUNT),
        }
    }

    /// Appends the payload.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u32(Self::OFF_ARGSZ, self.argsz)
            .put_u32(Self::OFF_FLAGS, self.flags)
            .put_u32(Self::OFF_INDEX, self.index)
            .put_u32(Self::OFF_COUNT, self.count);
    }
}

// ----- DEVICE_SET_IRQS --------------------------------------------------------------------------

/// What a SET_IRQS carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqSetData {
    /// DATA_NONE.
    None,
    /// DATA_BOOL: one flag per vector.
    Bool(Vec<bool>),
    /// DATA_EVENTFD: `count` fds travel beside the message (none = de-assign).
    Eventfd,
}

/// The action of a SET_IRQS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// ACTION_MASK.
    Mask,
    /// ACTION_UNMASK.
    Unmask,
    /// ACTION_TRIGGER.
    Trigger,
}

/// DEVICE_SET_IRQS (`struct vfio_irq_set`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetIrqs {
    /// argsz (whole request, data included).
    pub argsz: u32,
    /// Action.
    pub action: IrqAction,
    /// Data type and data.
    pub data: IrqSetData,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Vector count.
    pub count: u32,
}

impl SetIrqs {
    /// Size of the fixed part (20).
    pub const FIXED: usize = offset_of!(vfio::vfio_irq_set, data);
    const OFF_ARGSZ: usize = offset_of!(vfio::vfio_irq_set, argsz);
    const OFF_FLAGS: usize = offset_of!(vfio::vfio_irq_set, flags);
    const OFF_INDEX: usize = offset_of!(vfio::vfio_irq_set, index);
    const OFF_START: usize = offset_of!(vfio::vfio_irq_set, start);
    const OFF_COUNT: usize = offset_of!(vfio::vfio_irq_set, count);

    /// Decodes the request; `nfds` is how many fds came with it. Checks that exactly one data
    /// type and one action are set, that BOOL data matches `count`, and that fds come only with
    /// DATA_EVENTFD and then number 0 (de-assign) or `count`.
    pub fn decode(p: &[u8], nfds: usize) -> Result<SetIrqs> {
        need("DEVICE_SET_IRQS", p, Self::FIXED, ">= 20")?;
        let argsz = rd_u32(p, Self::OFF_ARGSZ);
        let flags = rd_u32(p, Self::OFF_FLAGS);
        let index = rd_u32(p, Self::OFF_INDEX);
        let start = rd_u32(p, Self::OFF_START);
        let count = rd_u32(p, Self::OFF_COUNT);
        const WHAT: &str = "DEVICE_SET_IRQS";
        if (argsz as usize) < Self::FIXED {
            return Err(DecodeError::Argsz { what: WHAT, argsz });
        }
        let known = vfio::VFIO_IRQ_SET_DATA_TYPE_MASK | vfio::VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if flags & !known != 0 {
            return Err(DecodeError::Flags { what: WHAT, flags });
        }
        let action = match flags & vfio::VFIO_IRQ_SET_ACTION_TYPE_MASK {
            vfio::VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            vfio::VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            vfio::VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return Err(DecodeError::Flags { what: WHAT, flags }),
        };
        let body = &p[Self::FIXED..];
        let data = match flags & vfio::VFIO_IRQ_SET_DATA_TYPE_MASK {
            vfio::VFIO_IRQ_SET_DATA_NONE => {
                if !body.is_empty() {
                    return Err(DecodeError::PayloadSize {
                        what: WHAT,
                        got: p.len(),
                        expected: "20 for DATA_NONE",
                    });
                }
                IrqSetData::None
            }
            vfio::VFIO_IRQ_SET_DATA_BOOL => {
                if body.len() != count as usize {
                    return Err(DecodeError::PayloadSize {
                        what: WHAT,
                        got: p.len(),
                        expected: "20 + count for DATA_BOOL",
                    });
                }
                IrqSetData::Bool(body.iter().map(|&b| b != 0).collect())
            }
            vfio::VFIO_IRQ_SET_DATA_EVENTFD => {
                if !body.is_empty() {
                    return Err(DecodeError::PayloadSize {
                        what: WHAT,
                        got: p.len(),
                        expected: "20 for DATA_EVENTFD",
                    });
                }
                if nfds != 0 && nfds != count as usize {
                    return Err(DecodeError::Count {
                        what: "DEVICE_SET_IRQS fds",
                        count: nfds as u64,
                    });
                }
                IrqSetData::Eventfd
            }
            _ => return Err(DecodeError::Flags { what: WHAT, flags }),
        };
        if nfds != 0 && data != IrqSetData::Eventfd {
            return Err(DecodeError::Count {
                what: "DEVICE_SET_IRQS fds without DATA_EVENTFD",
                count: nfds as u64,
            });
        }
        if argsz as usize != p.len() {
            return Err(DecodeError::Argsz { what: WHAT, argsz });
        }
        Ok(SetIrqs {
            argsz,
            action,
            data,
            index,
            start,
            count,
        })
    }

    /// The flags word for this request.
    pub fn flags(&self) -> u32 {
        let a = match self.action {
            IrqAction::Mask => vfio::VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => vfio::VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => vfio::VFIO_IRQ_SET_ACTION_TRIGGER,
        };
        let d = match self.data {
            IrqSetData::None => vfio::VFIO_IRQ_SET_DATA_NONE,
            IrqSetData::Bool(_) => vfio::VFIO_IRQ_SET_DATA_BOOL,
            IrqSetData::Eventfd => vfio::VFIO_IRQ_SET_DATA_EVENTFD,
        };
        a | d
    }

    /// Appends the request (argsz computed).
    pub fn encode(&self, b: &mut MessageBuilder) {
        let extra = match &self.data {
            IrqSetData::Bool(v) => v.len(),
            _ => 0,
        };
        b.fixed(Self::FIXED)
            .put_u32(Self::OFF_ARGSZ, (Self::FIXED + extra) as u32)
            .put_u32(Self::OFF_FLAGS, self.flags())
            .put_u32(Self::OFF_INDEX, self.index)
            .put_u32(Self::OFF_START, self.start)
            .put_u32(Self::OFF_COUNT, self.count);
        if let IrqSetData::Bool(v) = &self.data {
            for &x in v {
                b.bytes(&[x as u8]);
            }
        }
    }
}

// ----- REGION_READ / REGION_WRITE ---------------------------------------------------------------

/// The 16-byte head of REGION_READ/WRITE requests and replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}

impl RegionAccess {
    /// Size (16).
    pub const SIZE: usize = 16;

    fn decode_head(p: &[u8]) -> RegionAccess {
        RegionAccess {
            offset: rd_u64(p, 0),
            region: rd_u32(p, 8),
            count: rd_u32(p, 12),
        }
    }

    /// Decodes a REGION_READ request (exactly 16 bytes).
    pub fn decode_read(p: &[u8]) -> Result<RegionAccess> {
        exact("REGION_READ", p, Self::SIZE, "16")?;
        Ok(Self::decode_head(p))
    }

    /// Decodes a REGION_WRITE request: the head and exactly `count` bytes of data.
    pub fn decode_write(p: &[u8]) -> Result<(RegionAccess, &[u8])> {
        need("REGION_WRITE", p, Self::SIZE, ">= 16")?;
        let h = Self::decode_head(p);
        let data = &p[Self::SIZE..];
        if data.len() != h.count as usize {
            return Err(DecodeError::PayloadSize {
                what: "REGION_WRITE",
                got: p.len(),
                expected: "16 + count",
            });
        }
        Ok((h, data))
    }

    /// Decodes a REGION_READ reply: the head and `count` bytes.
    pub fn decode_read_reply(p: &[u8]) -> Result<(RegionAccess, &[u8])> {
        need("REGION_READ reply", p, Self::SIZE, ">= 16")?;
        let h = Self::decode_head(p);
        let data = &p[Self::SIZE..];
        if data.len() != h.count as usize {
            return Err(DecodeError::PayloadSize {
                what: "REGION_READ reply",
                got: p.len(),
                expected: "16 + count",
            });
        }
        Ok((h, data))
    }

    /// Decodes a REGION_WRITE reply (the head only).
    pub fn decode_write_reply(p: &[u8]) -> Result<RegionAccess> {
        exact("REGION_WRITE reply", p, Self::SIZE, "16")?;
        Ok(Self::decode_head(p))
    }

    /// Appends the head.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u64(0, self.offset)
            .put_u32(8, self.region)
            .put_u32(12, self.count);
    }
}

// ----- DMA_READ / DMA_WRITE (server → client) ---------------------------------------------------

/// The 16-byte head of DMA_READ/WRITE: address and a u64 count, as in the spec and libvfio-user.
/// (QEMU's `protocol.h` has a u32 count with data at offset 12; QEMU shares memory by fd in
/// practice, so this path does not meet it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DmaAccess {
    /// IOVA.
    pub address: u64,
    /// Byte count.
    pub count: u64,
}

impl DmaAccess {
    /// Size (16).
    pub const SIZE: usize = 16;

    fn head(p: &[u8]) -> DmaAccess {
        DmaAccess {
            address: rd_u64(p, 0),
            count: rd_u64(p, 8),
        }
    }

    /// Decodes a DMA_READ request.
    pub fn decode_read(p: &[u8]) -> Result<DmaAccess> {
        exact("DMA_READ", p, Self::SIZE, "16")?;
        Ok(Self::head(p))
    }

    /// Decodes a DMA_WRITE request: head plus `count` bytes.
    pub fn decode_write(p: &[u8]) -> Result<(DmaAccess, &[u8])> {
        need("DMA_WRITE", p, Self::SIZE, ">= 16")?;
        let h = Self::head(p);
        let data = &p[Self::SIZE..];
        if data.len() as u64 != h.count {
            return Err(DecodeError::PayloadSize {
                what: "DMA_WRITE",
                got: p.len(),
                expected: "16 + count",
            });
        }
        Ok((h, data))
    }

    /// Decodes a DMA_READ reply: head plus `count` bytes.
    pub fn decode_read_reply(p: &[u8]) -> Result<(DmaAccess, &[u8])> {
        need("DMA_READ reply", p, Self::SIZE, ">= 16")?;
        let h = Self::head(p);
        let data = &p[Self::SIZE..];
        if data.len() as u64 != h.count {
            return Err(DecodeError::PayloadSize {
                what: "DMA_READ reply",
                got: p.len(),
                expected: "16 + count",
            });
        }
        Ok((h, data))
    }

    /// Decodes a DMA_WRITE reply: the 16-byte head, or nothing (QEMU sends a bare header).
    pub fn decode_write_reply(p: &[u8]) -> Result<Option<DmaAccess>> {
        match p.len() {
            0 => Ok(None),
            Self::SIZE => Ok(Some(Self::head(p))),
            _ => Err(DecodeError::PayloadSize {
                what: "DMA_WRITE reply",
                got: p.len(),
                expected: "0 or 16",
            }),
        }
    }

    /// Appends the head.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::SIZE)
            .put_u64(0, self.address)
            .put_u64(8, self.count);
    }
}

// ----- REGION_WRITE_MULTI -----------------------------------------------------------------------

/// One REGION_WRITE_MULTI entry (24 bytes; up to 8 data bytes inline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WriteMultiEntry {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes used of `data` (1..=8).
    pub count: u32,
    /// The data, first `count` bytes valid.
    pub data: [u8; 8],
}

/// REGION_WRITE_MULTI request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WriteMulti {
    /// The writes, in order.
    pub entries: Vec<WriteMultiEntry>,
}

impl WriteMulti {
    /// Size of one entry.
    pub const ENTRY: usize = 24;
    /// Most entries accepted in one message (QEMU sends at most 200).
    pub const MAX_ENTRIES: u64 = 1024;

    /// Decodes the request: wr_cnt then exactly wr_cnt entries, each count 1..=8.
    pub fn decode(p: &[u8]) -> Result<WriteMulti> {
        need("REGION_WRITE_MULTI", p, 8, ">= 8")?;
        let n = rd_u64(p, 0);
        if n == 0 || n > Self::MAX_ENTRIES || (p.len() - 8) as u64 != n * Self::ENTRY as u64 {
            return Err(DecodeError::Count {
                what: "REGION_WRITE_MULTI",
                count: n,
            });
        }
        let mut entries = Vec::with_capacity(n as usize);
        for c in p[8..].chunks_exact(Self::ENTRY) {
            let count = rd_u32(c, 12);
            if count == 0 || count > 8 {
                return Err(DecodeError::Count {
                    what: "REGION_WRITE_MULTI entry",
                    count: count as u64,
                });
            }
            let mut data = [0u8; 8];
            data.copy_from_slice(&c[16..24]);
            entries.push(WriteMultiEntry {
                offset: rd_u64(c, 0),
                region: rd_u32(c, 8),
                count,
                data,
            });
        }
        Ok(WriteMulti { entries })
    }

    /// Appends the request.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(8).put_u64(0, self.entries.len() as u64);
        for e in &self.entries {
            b.fixed(Self::ENTRY)
                .put_u64(0, e.offset)
                .put_u32(8, e.region)
                .put_u32(12, e.count);
            let n = b.buf.len();
            b.buf[n - 8..].copy_from_slice(&e.data);
        }
    }
}

// ----- DEVICE_FEATURE ---------------------------------------------------------------------------

/// DEVICE_FEATURE request and reply (`struct vfio_device_feature` plus data).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeviceFeatureMsg {
    /// argsz.
    pub argsz: u32,
    /// Feature index (bits 0-15) and GET/SET/PROBE.
    pub flags: u32,
    /// Feature data.
    pub data: Vec<u8>,
}

impl DeviceFeatureMsg {
    /// Size of the fixed part (8).
    pub const FIXED: usize = offset_of!(vfio::vfio_device_feature, data);

    /// Decodes a request: argsz >= 8 and exactly one of GET/SET/PROBE, or PROBE with GET or SET.
    pub fn decode(p: &[u8]) -> Result<DeviceFeatureMsg> {
        need("DEVICE_FEATURE", p, Self::FIXED, ">= 8")?;
        let argsz = rd_u32(p, 0);
        let flags = rd_u32(p, 4);
        if (argsz as usize) < Self::FIXED {
            return Err(DecodeError::Argsz {
                what: "DEVICE_FEATURE",
                argsz,
            });
        }
        let ops = flags
            & (vfio::VFIO_DEVICE_FEATURE_GET
                | vfio::VFIO_DEVICE_FEATURE_SET
                | vfio::VFIO_DEVICE_FEATURE_PROBE);
        let known = vfio::VFIO_DEVICE_FEATURE_MASK | ops;
        let get_and_set = vfio::VFIO_DEVICE_FEATURE_GET | vfio::VFIO_DEVICE_FEATURE_SET;
        if flags & !known != 0 || ops == 0 || ops & get_and_set == get_and_set {
            return Err(DecodeError::Flags {
                what: "DEVICE_FEATURE",
                flags,
            });
        }
        Ok(DeviceFeatureMsg {
            argsz,
            flags,
            data: p[Self::FIXED..].to_vec(),
        })
    }

    /// Decodes a reply.
    pub fn decode_reply(p: &[u8]) -> Result<DeviceFeatureMsg> {
        need("DEVICE_FEATURE reply", p, Self::FIXED, ">= 8")?;
        Ok(DeviceFeatureMsg {
            argsz: rd_u32(p, 0),
            flags: rd_u32(p, 4),
            data: p[Self::FIXED..].to_vec(),
        })
    }

    /// The feature index.
    pub fn feature(&self) -> u32 {
        self.flags & vfio::VFIO_DEVICE_FEATURE_MASK
    }

    /// Appends the message (argsz = 8 + data unless set).
    pub fn encode(&self, b: &mut MessageBuilder) {
        let argsz = if self.argsz == 0 {
            (Self::FIXED + self.data.len()) as u32
        } else {
            self.argsz
        };
        b.fixed(Self::FIXED)
            .put_u32(0, argsz)
            .put_u32(4, self.flags);
        b.bytes(&self.data);
    }
}

// ----- MIG_DATA_READ / MIG_DATA_WRITE -----------------------------------------------------------

/// MIG_DATA_READ/WRITE: {argsz u32, size u32} then data.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MigData {
    /// argsz.
    pub argsz: u32,
    /// Data size (request: wanted, reply/write: present).
    pub size: u32,
    /// Data (write request and read reply).
    pub data: Vec<u8>,
}

impl MigData {
    /// Fixed part (8).
    pub const FIXED: usize = 8;

    /// Decodes a MIG_DATA_READ request.
    pub fn decode_read(p: &[u8]) -> Result<MigData> {
        exact("MIG_DATA_READ", p, Self::FIXED, "8")?;
        let m = MigData {
            argsz: rd_u32(p, 0),
            size: rd_u32(p, 4),
            data: Vec::new(),
        };
        if (m.argsz as usize) < Self::FIXED {
            return Err(DecodeError::Argsz {
                what: "MIG_DATA_READ",
                argsz: m.argsz,
            });
        }
        Ok(m)
    }

    /// Decodes a MIG_DATA_WRITE request or a MIG_DATA_READ reply: `size` bytes follow.
    pub fn decode_with_data(p: &[u8]) -> Result<MigData> {
        need("MIG_DATA", p, Self::FIXED, ">= 8")?;
        let m = MigData {
            argsz: rd_u32(p, 0),
            size: rd_u32(p, 4),
            data: p[Self::FIXED..].to_vec(),
        };
        if m.data.len() != m.size as usize {
            return Err(DecodeError::PayloadSize {
                what: "MIG_DATA",
                got: p.len(),
                expected: "8 + size",
            });
        }
        if (m.argsz as usize) < Self::FIXED {
            return Err(DecodeError::Argsz {
                what: "MIG_DATA",
                argsz: m.argsz,
            });
        }
        Ok(m)
    }

    /// Appends the message.
    pub fn encode(&self, b: &mut MessageBuilder) {
        b.fixed(Self::FIXED)
            .put_u32(0, self.argsz)
            .put_u32(4, self.size);
        b.bytes(&self.data);
    }
}

// ----- requests as one enum ---------------------------------------------------------------------

/// A decoded client→server command. Borrowed data points into the message bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// VERSION.
    Version(Version),
    /// DMA_MAP.
    DmaMap(DmaMap),
    /// DMA_UNMAP.
    DmaUnmap(DmaUnmap),
    /// DEVICE_GET_INFO.
    DeviceGetInfo(DeviceInfoMsg),
    /// DEVICE_GET_REGION_INFO.
    GetRegionInfo(RegionInfoMsg),
    /// DEVICE_GET_REGION_IO_FDS.
    GetRegionIoFds(RegionIoFdsMsg),
    /// DEVICE_GET_IRQ_INFO.
    GetIrqInfo(IrqInfoMsg),
    /// DEVICE_SET_IRQS.
    SetIrqs(SetIrqs),
    /// REGION_READ.
    RegionRead(RegionAccess),
    /// REGION_WRITE with its data.
    RegionWrite(RegionAccess, &'a [u8]),
    /// DEVICE_RESET.
    DeviceReset,
    /// REGION_WRITE_MULTI.
    RegionWriteMulti(WriteMulti),
    /// DEVICE_FEATURE.
    DeviceFeature(DeviceFeatureMsg),
    /// MIG_DATA_READ.
    MigDataRead(MigData),
    /// MIG_DATA_WRITE.
    MigDataWrite(MigData),
}

/// Decodes a client→server command message (`msg` is the whole message, header included).
/// `nfds` is the number of fds that came with it. Checks the header first: type Command,
/// `msg_size` equal to the bytes present, a known command that a client may send.
pub fn decode_request(msg: &[u8], nfds: usize) -> Result<(Header, Request<'_>)> {
    let h = Header::decode(msg)?;
    if h.msg_size as usize != msg.len() {
        return Err(DecodeError::SizeMismatch {
            msg_size: h.msg_size,
            actual: msg.len(),
        });
    }
    if !h.is_command() || h.is_error() {
        return Err(DecodeError::Flags {
            what: "header",
            flags: h.flags,
        });
    }
    let p = &msg[HEADER_SIZE..];
    let fds_ok = |allowed: bool| -> Result<()> {
        if nfds > 0 && !allowed {
            Err(DecodeError::Count {
                what: "fds on a command that takes none",
                count: nfds as u64,
            })
        } else {
            Ok(())
        }
    };
    use Command as C;
    let cmd = h.cmd().ok_or(DecodeError::UnknownCommand(h.command))?;
    let req = match cmd {
        C::Version => {
            fds_ok(false)?;
            Request::Version(Version::decode(p)?)
        }
        C::DmaMap => {
            if nfds > 1 {
                return Err(DecodeError::Count {
                    what: "DMA_MAP fds",
                    count: nfds as u64,
                });
            }
            Request::DmaMap(DmaMap::decode(p)?)
        }
        C::DmaUnmap => Request::DmaUnmap(DmaUnmap::decode(p)?),
        C::DeviceGetInfo => {
            fds_ok(false)?;
            Request::DeviceGetInfo(DeviceInfoMsg::decode_request(p)?)
        }
        C::DeviceGetRegionInfo => {
            fds_ok(false)?;
            Request::GetRegionInfo(RegionInfoMsg::decode_request(p)?)
        }
        C::DeviceGetRegionIoFds => {
            fds_ok(false)?;
            Request::GetRegionIoFds(RegionIoFdsMsg::decode_request(p)?)
        }
        C::DeviceGetIrqInfo => {
            fds_ok(false)?;
            Request::GetIrqInfo(IrqInfoMsg::decode_request(p)?)
        }
        C::DeviceSetIrqs => Request::SetIrqs(SetIrqs::decode(p, nfds)?),
        C::RegionRead => {
            fds_ok(false)?;
            Request::RegionRead(RegionAccess::decode_read(p)?)
        }
        C::RegionWrite => {
            fds_ok(false)?;
            let (h, d) = RegionAccess::decode_write(p)?;
            Request::RegionWrite(h, d)
        }
        C::DeviceReset => {
            fds_ok(false)?;
            exact("DEVICE_RESET", p, 0, "0")?;
            Request::DeviceReset
        }
        C::RegionWriteMulti => {
            fds_ok(false)?;
            Request::RegionWriteMulti(WriteMulti::decode(p)?)
        }
        C::DeviceFeature => {
            fds_ok(false)?;
            Request::DeviceFeature(DeviceFeatureMsg::decode(p)?)
        }
        C::MigDataRead => {
            fds_ok(false)?;
            Request::MigDataRead(MigData::decode_read(p)?)
        }
        C::MigDataWrite => {
            fds_ok(false)?;
            Request::MigDataWrite(MigData::decode_with_data(p)?)
        }
        // Server→client commands and the removed DIRTY_PAGES are not client requests.
        C::DmaRead | C::DmaWrite | C::DirtyPages => {
            return Err(DecodeError::UnknownCommand(h.command))
        }
    };
    Ok((h, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(cmd: Command, payload: &[u8]) -> Vec<u8> {
        let mut b = MessageBuilder::command(7, cmd);
        b.bytes(payload);
        b.finish()
    }

    fn u32s(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn header_layout_matches_spec() {
        let h = Header {
            msg_id: 0x1122,
            command: 9,
            msg_size: 0x20,
            flags: FLAGS_TYPE_REPLY | FLAGS_ERROR,
            error_no: 22,
        };
        let mut b = [0u8; 16];
        h.encode(&mut b);
        assert_eq!(&b[0..2], &0x1122u16.to_ne_bytes());
        assert_eq!(&b[2..4], &9u16.to_ne_bytes());
        assert_eq!(&b[4..8], &0x20u32.to_ne_bytes());
        assert_eq!(&b[8..12], &0x21u32.to_ne_bytes());
        assert_eq!(&b[12..16], &22u32.to_ne_bytes());
        assert_eq!(Header::decode(&b).unwrap(), h);
        assert_eq!(FLAGS_NO_REPLY, 0x10);
        assert_eq!(FLAGS_ERROR, 0x20);
        assert!(matches!(
            Header::decode(&b[..15]),
            Err(DecodeError::ShortHeader(15))
        ));
    }

    #[test]
    fn command_numbers_match_spec() {
        let expect = [
            (1, "VFIO_USER_VERSION"),
            (2, "VFIO_USER_DMA_MAP"),
            (3, "VFIO_USER_DMA_UNMAP"),
            (4, "VFIO_USER_DEVICE_GET_INFO"),
            (5, "VFIO_USER_DEVICE_GET_REGION_INFO"),
            (6, "VFIO_USER_DEVICE_GET_REGION_IO_FDS"),
            (7, "VFIO_USER_DEVICE_GET_IRQ_INFO"),
            (8, "VFIO_USER_DEVICE_SET_IRQS"),
            (9, "VFIO_USER_REGION_READ"),
            (10, "VFIO_USER_REGION_WRITE"),
            (11, "VFIO_USER_DMA_READ"),
            (12, "VFIO_USER_DMA_WRITE"),
            (13, "VFIO_USER_DEVICE_RESET"),
            (14, "VFIO_USER_DIRTY_PAGES"),
            (15, "VFIO_USER_REGION_WRITE_MULTI"),
            (16, "VFIO_USER_DEVICE_FEATURE"),
            (17, "VFIO_USER_MIG_DATA_READ"),
            (18, "VFIO_USER_MIG_DATA_WRITE"),
        ];
        for (n, name) in expect {
            let c = Command::from_u16(n).unwrap();
            assert_eq!(c as u16, n);
            assert_eq!(c.name(), name);
        }
        assert_eq!(Command::from_u16(0), None);
        assert_eq!(Command::from_u16(19), None);
    }

    #[test]
    fn struct_sizes_and_offsets_match_spec() {
        assert_eq!(DmaMap::SIZE, 32);
        assert_eq!(
            (
                DmaMap::OFF_ARGSZ,
                DmaMap::OFF_FLAGS,
                DmaMap::OFF_OFFSET,
                DmaMap::OFF_ADDRESS,
                DmaMap::OFF_SIZE
            ),
            (0, 4, 8, 16, 24)
        );
        assert_eq!(DmaUnmap::SIZE, 24);
        assert_eq!(
            (
                DmaUnmap::OFF_ARGSZ,
                DmaUnmap::OFF_FLAGS,
                DmaUnmap::OFF_ADDRESS,
                DmaUnmap::OFF_SIZE
            ),
            (0, 4, 8, 16)
        );
        assert_eq!(DeviceInfoMsg::SIZE, 16);
        assert_eq!(
            (
                DeviceInfoMsg::OFF_FLAGS,
                DeviceInfoMsg::OFF_NUM_REGIONS,
                DeviceInfoMsg::OFF_NUM_IRQS
            ),
            (4, 8, 12)
        );
        assert_eq!(RegionInfoMsg::SIZE, 32);
        assert_eq!(
            (
                RegionInfoMsg::OFF_FLAGS,
                RegionInfoMsg::OFF_INDEX,
                RegionInfoMsg::OFF_CAP_OFFSET,
                RegionInfoMsg::OFF_SIZE,
                RegionInfoMsg::OFF_OFFSET
            ),
            (4, 8, 12, 16, 24)
        );
        assert_eq!(RegionInfoMsg::SPARSE_CAP_FIXED, 16);
        assert_eq!(
            (
                RegionInfoMsg::OFF_CAP_ID,
                RegionInfoMsg::OFF_CAP_VERSION,
                RegionInfoMsg::OFF_CAP_NEXT,
                RegionInfoMsg::OFF_NR_AREAS
            ),
            (0, 2, 4, 8)
        );
        assert_eq!(RegionInfoMsg::AREA_SIZE, 16);
        assert_eq!(IrqInfoMsg::SIZE, 16);
        assert_eq!(
            (
                IrqInfoMsg::OFF_FLAGS,
                IrqInfoMsg::OFF_INDEX,
                IrqInfoMsg::OFF_COUNT
            ),
            (4, 8, 12)
        );
        assert_eq!(SetIrqs::FIXED, 20);
        assert_eq!(
            (
                SetIrqs::OFF_FLAGS,
                SetIrqs::OFF_INDEX,
                SetIrqs::OFF_START,
                SetIrqs::OFF_COUNT
            ),
            (4, 8, 12, 16)
        );
        assert_eq!(DeviceFeatureMsg::FIXED, 8);
        assert_eq!(IO_FD_ENTRY_SIZE, 40);
    }

    #[test]
    fn flag_values_match_spec() {
        assert_eq!(DMA_MAP_FLAG_READ, 1);
        assert_eq!(DMA_MAP_FLAG_WRITE, 2);
        assert_eq!(DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 1);
        assert_eq!(DMA_UNMAP_FLAG_ALL, 2);
        assert_eq!(vfio::VFIO_IRQ_SET_DATA_NONE, 1);
        assert_eq!(vfio::VFIO_IRQ_SET_DATA_BOOL, 2);
        assert_eq!(vfio::VFIO_IRQ_SET_DATA_EVENTFD, 4);
        assert_eq!(vfio::VFIO_IRQ_SET_ACTION_MASK, 8);
        assert_eq!(vfio::VFIO_IRQ_SET_ACTION_UNMASK, 16);
        assert_eq!(vfio::VFIO_IRQ_SET_ACTION_TRIGGER, 32);
        assert_eq!(vfio::VFIO_DEVICE_FEATURE_GET, 1 << 16);
        assert_eq!(vfio::VFIO_DEVICE_FEATURE_SET, 1 << 17);
        assert_eq!(vfio::VFIO_DEVICE_FEATURE_PROBE, 1 << 18);
        assert_eq!(
            (
                mig_state::ERROR,
                mig_state::STOP,
                mig_state::RUNNING,
                mig_state::STOP_COPY
            ),
            (0, 1, 2, 3)
        );
        assert_eq!(
            (
                mig_state::RESUMING,
                mig_state::RUNNING_P2P,
                mig_state::PRE_COPY,
                mig_state::PRE_COPY_P2P
            ),
            (4, 5, 6, 7)
        );
    }

    #[test]
    fn version_round_trip_and_defaults() {
        let v = Version {
            major: 0,
            minor: 0,
            caps: Some(Capabilities {
                max_msg_fds: Some(16),
                max_data_xfer_size: Some(1 << 20),
                pgsizes: Some(4096),
                max_dma_maps: Some(65535),
                twin_socket: Some(TwinSocketCap {
                    supported: true,
                    fd_index: Some(0),
                }),
                write_multiple: Some(true),
                migration: Some(MigrationCap {
                    pgsize: Some(4096),
                    max_bitmap_size: Some(256 << 20),
                }),
            }),
        };
        let mut b = MessageBuilder::command(1, Command::Version);
        v.encode(&mut b);
        let m = b.finish();
        assert_eq!(*m.last().unwrap(), 0, "JSON is NUL-terminated");
        let (h, r) = decode_request(&m, 0).unwrap();
        assert_eq!(h.msg_size as usize, m.len());
        assert_eq!(r, Request::Version(v));

        // No JSON and `{}` are valid and mean defaults.
        for payload in [vec![0u8, 0, 0, 0], [&[0u8, 0, 0, 0][..], b"{}\0"].concat()] {
            let m_ = msg(Command::Version, &payload);
            let (_, r) = decode_request(&m_, 0).unwrap();
            let Request::Version(v) = r else { panic!() };
            let c = v.caps.unwrap_or_default();
            assert_eq!(c.max_msg_fds(), 1);
            assert_eq!(c.max_data_xfer_size(), 1 << 20);
            assert_eq!(c.max_dma_maps(), 65535);
            assert_eq!(c.pgsizes(), 4096);
            assert!(!c.twin_socket());
        }
        // QEMU's exact JSON, including the legacy migration object.
        let qemu = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
        let payload = [&[0u8, 0, 0, 0][..], qemu, b"\0"].concat();
        let m_ = msg(Command::Version, &payload);
        let (_, Request::Version(v)) = decode_request(&m_, 0).unwrap() else {
            panic!()
        };
        let c = v.caps.unwrap();
        assert_eq!(c.max_msg_fds(), 16);
        assert!(c.write_multiple());
        assert_eq!(c.migration.unwrap().max_bitmap_size, Some(268435456));
        // Unknown keys are ignored.
        let payload = [
            &[0u8, 0, 0, 0][..],
            br#"{"capabilities":{"frobnicate":1}}"#,
            b"\0",
        ]
        .concat();
        assert!(decode_request(&msg(Command::Version, &payload), 0).is_ok());
    }

    #[test]
    fn version_bad_inputs() {
        let bad: &[&[u8]] = &[
            b"{}",  // no NUL
            b"{\0", // broken JSON
            b"\"\0",
            b"{\"capabilities\":5}\0", // not an object
            b"{\"capabilities\":{\"max_msg_fds\":\"foo\"}}\0",
            b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
            b"{\"capabilities\":{\"max_msg_fds\":1025}}\0",
            b"{\"capabilities\":{\"migration\":1}}\0",
            b"{\"capabilities\":{\"migration\":{\"pgsize\":\"foo\"}}}\0",
            b"{\"capabilities\":{\"migration\":{\"pgsize\":4095}}}\0",
            b"{\"capabilities\":{\"pgsizes\":4095}}\0",
            b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0",
            b"{\"capabilities\":{\"twin_socket\":true}}\0",
            b"{\"capabilities\":[8]}\0", // arrays are not objects
            b"{\"capabilities\":{\"migration\":[]}}\0",
            b"{\"capabilities\":{\"twin_socket\":[true]}}\0",
            b"[]\0",
            b"{}\0{}\0", // NUL inside
            b"\xff\0",   // not UTF-8
        ];
        for json in bad {
            let payload = [&[0u8, 0, 0, 0][..], json].concat();
            let m_ = msg(Command::Version, &payload);
            let e = decode_request(&m_, 0).unwrap_err();
            assert_eq!(e.errno(), Errno::INVAL, "{json:?}");
        }
        // header-only VERSION
        assert!(decode_request(&msg(Command::Version, &[]), 0).is_err());
        // fds on VERSION
        assert!(decode_request(&msg(Command::Version, &[0, 0, 0, 0]), 1).is_err());
    }

    #[test]
    fn dma_map_and_unmap() {
        let m = DmaMap {
            argsz: 32,
            flags: 3,
            offset: 0x1000,
            address: 0x10_0000,
            size: 0x2000,
        };
        let mut b = MessageBuilder::command(2, Command::DmaMap);
        m.encode(&mut b);
        let bytes = b.finish();
        assert_eq!(bytes.len(), 16 + 32);
        assert_eq!(&bytes[16 + 16..16 + 24], &0x10_0000u64.to_ne_bytes());
        assert_eq!(decode_request(&bytes, 1).unwrap().1, Request::DmaMap(m));
        assert!(decode_request(&bytes, 2).is_err(), "two fds");
        let bad_flags = DmaMap { flags: 4, ..m };
        let mut b = MessageBuilder::command(2, Command::DmaMap);
        bad_flags.encode(&mut b);
        assert!(matches!(
            decode_request(&b.finish(), 0),
            Err(DecodeError::Flags { .. })
        ));
        let small = DmaMap { argsz: 8, ..m };
        let mut b = MessageBuilder::command(2, Command::DmaMap);
        small.encode(&mut b);
        assert!(matches!(
            decode_request(&b.finish(), 0),
            Err(DecodeError::Argsz { .. })
        ));
        assert!(
            decode_request(&msg(Command::DmaMap, &[0; 24]), 0).is_err(),
            "short payload"
        );

        let u = DmaUnmap {
            argsz: 24,
            flags: 0,
            address: 0x10_0000,
            size: 0x2000,
        };
        let mut b = MessageBuilder::command(3, Command::DmaUnmap);
        u.encode(&mut b);
        assert_eq!(
            decode_request(&b.finish(), 0).unwrap().1,
            Request::DmaUnmap(u)
        );
        let all = DmaUnmap {
            argsz: 24,
            flags: DMA_UNMAP_FLAG_ALL,
            address: 0,
            size: 0,
        };
        let mut b = MessageBuilder::command(3, Command::DmaUnmap);
        all.encode(&mut b);
        assert!(decode_request(&b.finish(), 0).is_ok());
        for bad in [
            DmaUnmap {
                flags: DMA_UNMAP_FLAG_ALL,
                address: 0x1000,
                ..all
            },
            DmaUnmap { flags: 4, ..u },
            DmaUnmap {
                flags: 3,
                address: 0,
                size: 0,
                ..u
            },
            DmaUnmap { argsz: 8, ..u },
        ] {
            let mut b = MessageBuilder::command(3, Command::DmaUnmap);
            bad.encode(&mut b);
            assert!(decode_request(&b.finish(), 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_info_request_and_reply() {
        // argsz 32 (the rust-vmm client's value) is fine; the reply says 16.
        let m_ = msg(Command::DeviceGetInfo, &u32s(&[32, 0, 0, 0]));
        let (_, r) = decode_request(&m_, 0).unwrap();
        assert_eq!(
            r,
            Request::DeviceGetInfo(DeviceInfoMsg {
                argsz: 32,
                ..Default::default()
            })
        );
        assert!(
            decode_request(&msg(Command::DeviceGetInfo, &u32s(&[8, 0, 0, 0])), 0).is_err(),
            "argsz 8"
        );
        assert!(
            decode_request(&msg(Command::DeviceGetInfo, &u32s(&[16, 0])), 0).is_err(),
            "8-byte payload"
        );
        let mut b = MessageBuilder::reply(1, 4);
        DeviceInfoMsg {
            argsz: 16,
            flags: 3,
            num_regions: 9,
            num_irqs: 5,
        }
        .encode(&mut b);
        let m = b.finish();
        assert_eq!(&m[16..], &u32s(&[16, 3, 9, 5])[..]);
        assert_eq!(DeviceInfoMsg::decode_reply(&m[16..]).unwrap().num_irqs, 5);
    }

    #[test]
    fn region_info_with_sparse_caps_matches_libvfio_user_example() {
        // BAR2: size 0x8000, offset 0x8000, areas {0x2000,0x1000} and {0x4000,0x2000}.
        let info = RegionInfoMsg {
            flags: vfio::VFIO_REGION_INFO_FLAG_READ
                | vfio::VFIO_REGION_INFO_FLAG_WRITE
                | vfio::VFIO_REGION_INFO_FLAG_MMAP,
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
        assert_eq!(info.full_size(), 80);
        let mut b = MessageBuilder::reply(1, 5);
        info.encode_reply(80, &mut b);
        let m = b.finish();
        let p = &m[16..];
        assert_eq!(p.len(), 80);
        assert_eq!(rd_u32(p, 0), 80);
        assert_eq!(rd_u32(p, 4), 0xf, "R|W|MMAP|CAPS");
        assert_eq!(rd_u32(p, 12), 32, "cap_offset");
        assert_eq!(rd_u16(p, 32), 1, "SPARSE_MMAP id");
        assert_eq!(rd_u16(p, 34), 1, "version");
        assert_eq!(rd_u32(p, 36), 0, "next");
        assert_eq!(rd_u32(p, 40), 2, "nr_areas");
        assert_eq!(
            (rd_u64(p, 48), rd_u64(p, 56), rd_u64(p, 64), rd_u64(p, 72)),
            (0x2000, 0x1000, 0x4000, 0x2000)
        );
        let back = RegionInfoMsg::decode_reply(p).unwrap();
        assert_eq!(back.sparse, info.sparse);
        // A client that only accepts 32 bytes gets argsz 80, no CAPS, cap_offset 0.
        let mut b = MessageBuilder::reply(1, 5);
        info.encode_reply(32, &mut b);
        let m = b.finish();
        let p = &m[16..];
        assert_eq!(p.len(), 32);
        assert_eq!(rd_u32(p, 0), 80);
        assert_eq!(rd_u32(p, 4), 0x7);
        assert_eq!(rd_u32(p, 12), 0);
        // Request checks.
        assert!(decode_request(
            &msg(
                Command::DeviceGetRegionInfo,
                &[&u32s(&[8, 0, 0, 0])[..], &[0; 16]].concat()
            ),
            0
        )
        .is_err());
        assert!(decode_request(&msg(Command::DeviceGetRegionInfo, &u32s(&[32, 0, 0])), 0).is_err());
        // A reply whose cap chain points outside the payload is rejected.
        let mut bad = p.to_vec();
        bad[0..4].copy_from_slice(&32u32.to_ne_bytes());
        bad[4..8].copy_from_slice(&0xfu32.to_ne_bytes());
        bad[12..16].copy_from_slice(&200u32.to_ne_bytes());
        assert!(RegionInfoMsg::decode_reply(&bad).is_err());
        // A short reply (argsz 80 > 32 bytes) that still claims CAPS at 32, as the rust-vmm
        // server sends: not an error, no areas; the client asks again with argsz 80.
        let mut short = p.to_vec();
        short[4..8].copy_from_slice(&0xfu32.to_ne_bytes());
        short[12..16].copy_from_slice(&32u32.to_ne_bytes());
        let m = RegionInfoMsg::decode_reply(&short).unwrap();
        assert_eq!((m.argsz, m.sparse.len()), (80, 0));
    }

    #[test]
    fn region_io_fds() {
        let m_ = msg(Command::DeviceGetRegionIoFds, &u32s(&[16, 0, 0, 0]));
        let (_, r) = decode_request(&m_, 0).unwrap();
        assert!(matches!(
            r,
            Request::GetRegionIoFds(RegionIoFdsMsg { index: 0, .. })
        ));
        for bad in [[16, 1, 0, 0], [16, 0, 0, 1], [8, 0, 0, 0]] {
            assert!(
                decode_request(&msg(Command::DeviceGetRegionIoFds, &u32s(&bad)), 0).is_err(),
                "{bad:?}"
            );
        }
        let reply = RegionIoFdsMsg {
            index: 0,
            entries: vec![IoFdEntry {
                offset: 0x1000,
                size: 4,
                fd_index: 0,
                kind: 0,
                flags: 1,
                datamatch: 7,
            }],
            ..Default::default()
        };
        let mut b = MessageBuilder::reply(1, 6);
        assert!(reply.encode_reply(1000, &mut b));
        let m = b.finish();
        assert_eq!(m.len(), 16 + 16 + 40);
        let back = RegionIoFdsMsg::decode_reply(&m[16..]).unwrap();
        assert_eq!(back.entries, reply.entries);
        assert_eq!(back.argsz, 56);
        let mut b = MessageBuilder::reply(1, 6);
        assert!(!reply.encode_reply(16, &mut b), "small argsz: argsz only");
        assert_eq!(b.finish().len(), 32);
    }

    #[test]
    fn irq_info_and_set_irqs() {
        assert!(decode_request(&msg(Command::DeviceGetIrqInfo, &u32s(&[16, 0, 2, 0])), 0).is_ok());
        assert!(decode_request(&msg(Command::DeviceGetIrqInfo, &u32s(&[8, 0, 2, 0])), 0).is_err());
        assert!(decode_request(&msg(Command::DeviceGetIrqInfo, &u32s(&[16, 0])), 0).is_err());

        let trig_fd = vfio::VFIO_IRQ_SET_DATA_EVENTFD | vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
        let m_ = msg(Command::DeviceSetIrqs, &u32s(&[20, trig_fd, 2, 0, 3]));
        let (_, r) = decode_request(&m_, 3).unwrap();
        let Request::SetIrqs(s) = r else { panic!() };
        assert_eq!(
            (s.action, s.data.clone(), s.index, s.start, s.count),
            (IrqAction::Trigger, IrqSetData::Eventfd, 2, 0, 3)
        );
        assert_eq!(s.flags(), trig_fd);
        // De-assign: no fds.
        assert!(decode_request(
            &msg(Command::DeviceSetIrqs, &u32s(&[20, trig_fd, 2, 0, 3])),
            0
        )
        .is_ok());
        // Bool data.
        let bool_trig = vfio::VFIO_IRQ_SET_DATA_BOOL | vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
        let p = [&u32s(&[22, bool_trig, 1, 0, 2])[..], &[1, 0]].concat();
        let m_ = msg(Command::DeviceSetIrqs, &p);
        let (_, Request::SetIrqs(s)) = decode_request(&m_, 0).unwrap() else {
            panic!()
        };
        assert_eq!(s.data, IrqSetData::Bool(vec![true, false]));
        let mut b = MessageBuilder::command(1, Command::DeviceSetIrqs);
        s.encode(&mut b);
        assert_eq!(&b.finish()[16..], &p[..]);

        let bad: Vec<(Vec<u8>, usize)> = vec![
            ([&u32s(&[21, bool_trig, 1, 0, 2])[..], &[1]].concat(), 0), // bool len != count
            (
                u32s(&[20, trig_fd | vfio::VFIO_IRQ_SET_ACTION_MASK, 2, 0, 1]),
                1,
            ), // two actions
            (
                u32s(&[20, trig_fd | vfio::VFIO_IRQ_SET_DATA_BOOL, 2, 0, 1]),
                1,
            ), // two data types
            (u32s(&[20, vfio::VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, 1]), 0), // no data type
            (u32s(&[20, vfio::VFIO_IRQ_SET_DATA_NONE, 2, 0, 1]), 0),    // no action
            (u32s(&[20, trig_fd | 0x100, 2, 0, 1]), 0),                 // unknown bit
            (u32s(&[20, trig_fd, 2, 0, 3]), 2),                         // fd count != count
            (
                u32s(&[
                    20,
                    vfio::VFIO_IRQ_SET_DATA_NONE | vfio::VFIO_IRQ_SET_ACTION_TRIGGER,
                    2,
                    0,
                    1,
                ]),
                1,
            ), // fds without EVENTFD
            (u32s(&[8, trig_fd, 2, 0, 1]), 1),                          // argsz
            (u32s(&[20, trig_fd, 2, 0]), 0),                            // short
        ];
        for (p, nfds) in bad {
            assert!(
                decode_request(&msg(Command::DeviceSetIrqs, &p), nfds).is_err(),
                "{p:?} {nfds}"
            );
        }
    }

    #[test]
    fn region_read_write() {
        let mut b = MessageBuilder::command(9, Command::RegionRead);
        RegionAccess {
            offset: 0x10,
            region: 0,
            count: 4,
        }
        .encode(&mut b);
        let m = b.finish();
        assert_eq!(m.len(), 32);
        assert_eq!(&m[16..24], &0x10u64.to_ne_bytes());
        assert_eq!(&m[24..28], &0u32.to_ne_bytes());
        assert_eq!(&m[28..32], &4u32.to_ne_bytes());
        assert!(matches!(
            decode_request(&m, 0).unwrap().1,
            Request::RegionRead(RegionAccess { count: 4, .. })
        ));
        let mut b = MessageBuilder::command(10, Command::RegionWrite);
        RegionAccess {
            offset: 0x4,
            region: 0,
            count: 4,
        }
        .encode(&mut b);
        b.bytes(&[1, 2, 3, 4]);
        let m = b.finish();
        let (_, r) = decode_request(&m, 0).unwrap();
        assert_eq!(
            r,
            Request::RegionWrite(
                RegionAccess {
                    offset: 4,
                    region: 0,
                    count: 4
                },
                &[1, 2, 3, 4]
            )
        );
        // Write data length != count; an 8-byte write payload; a read with data.
        let mut bad = m.clone();
        bad[28..32].copy_from_slice(&5u32.to_ne_bytes());
        assert!(decode_request(&bad, 0).is_err());
        assert!(decode_request(&msg(Command::RegionWrite, &[0; 8]), 0).is_err());
        assert!(decode_request(&msg(Command::RegionRead, &[0; 20]), 0).is_err());
        // Replies.
        let mut b = MessageBuilder::reply(9, 9);
        RegionAccess {
            offset: 0x10,
            region: 0,
            count: 2,
        }
        .encode(&mut b);
        b.bytes(&[9, 8]);
        let r = b.finish();
        assert_eq!(
            RegionAccess::decode_read_reply(&r[16..]).unwrap().1,
            &[9, 8]
        );
        assert!(RegionAccess::decode_read_reply(&r[16..r.len() - 1]).is_err());
    }

    #[test]
    fn dma_read_write_layout() {
        let mut b = MessageBuilder::command(1, Command::DmaWrite);
        DmaAccess {
            address: 0x2000,
            count: 3,
        }
        .encode(&mut b);
        b.bytes(&[1, 2, 3]);
        let m = b.finish();
        assert_eq!(&m[16..24], &0x2000u64.to_ne_bytes());
        assert_eq!(&m[24..32], &3u64.to_ne_bytes());
        assert_eq!(&m[32..], &[1, 2, 3]);
        let (h, d) = DmaAccess::decode_write(&m[16..]).unwrap();
        assert_eq!((h.count, d), (3, &[1u8, 2, 3][..]));
        assert!(DmaAccess::decode_write(&m[16..m.len() - 1]).is_err());
        assert_eq!(DmaAccess::decode_write_reply(&[]).unwrap(), None);
        assert!(DmaAccess::decode_write_reply(&[0; 12]).is_err());
        // Server→client commands are not client requests.
        assert!(matches!(
            decode_request(&m, 0),
            Err(DecodeError::UnknownCommand(12))
        ));
    }

    #[test]
    fn write_multi() {
        let w = WriteMulti {
            entries: vec![
                WriteMultiEntry {
                    offset: 0x10,
                    region: 0,
                    count: 4,
                    data: [1, 2, 3, 4, 0, 0, 0, 0],
                },
                WriteMultiEntry {
                    offset: 0x20,
                    region: 2,
                    count: 8,
                    data: [8; 8],
                },
            ],
        };
        let mut b = MessageBuilder::command(1, Command::RegionWriteMulti);
        w.encode(&mut b);
        let m = b.finish();
        assert_eq!(m.len(), 16 + 8 + 48);
        assert_eq!(&m[16..24], &2u64.to_ne_bytes());
        assert_eq!(&m[24 + 24 + 16..24 + 24 + 24], &[8; 8]);
        assert_eq!(
            decode_request(&m, 0).unwrap().1,
            Request::RegionWriteMulti(w)
        );
        let mut bad = m.clone();
        bad[16..24].copy_from_slice(&3u64.to_ne_bytes());
        assert!(
            decode_request(&bad, 0).is_err(),
            "count larger than entries"
        );
        let mut bad = m.clone();
        bad[24 + 12..24 + 16].copy_from_slice(&9u32.to_ne_bytes());
        assert!(decode_request(&bad, 0).is_err(), "entry count 9");
        assert!(decode_request(&msg(Command::RegionWriteMulti, &0u64.to_ne_bytes()), 0).is_err());
    }

    #[test]
    fn device_feature_and_migration_data() {
        let probe = vfio::VFIO_DEVICE_FEATURE_PROBE
            | vfio::VFIO_DEVICE_FEATURE_GET
            | vfio::VFIO_DEVICE_FEATURE_MIGRATION;
        let m_ = msg(Command::DeviceFeature, &u32s(&[16, probe, 0, 0]));
        let (_, r) = decode_request(&m_, 0).unwrap();
        let Request::DeviceFeature(f) = r else {
            panic!()
        };
        assert_eq!(f.feature(), vfio::VFIO_DEVICE_FEATURE_MIGRATION);
        assert_eq!(f.data.len(), 8);
        for bad in [
            u32s(&[16, vfio::VFIO_DEVICE_FEATURE_MIGRATION]), // no op
            u32s(&[
                16,
                vfio::VFIO_DEVICE_FEATURE_GET | vfio::VFIO_DEVICE_FEATURE_SET | 1,
            ]), // get+set
            u32s(&[4, vfio::VFIO_DEVICE_FEATURE_GET | 1]),    // argsz
            u32s(&[16, 1 << 20 | vfio::VFIO_DEVICE_FEATURE_GET]), // unknown bit
            u32s(&[16]),                                      // short
        ] {
            assert!(
                decode_request(&msg(Command::DeviceFeature, &bad), 0).is_err(),
                "{bad:?}"
            );
        }
        let m_ = msg(Command::MigDataRead, &u32s(&[8, 4096]));
        let (_, r) = decode_request(&m_, 0).unwrap();
        assert!(matches!(
            r,
            Request::MigDataRead(MigData { size: 4096, .. })
        ));
        let p = [&u32s(&[8, 3])[..], &[1, 2, 3]].concat();
        assert!(matches!(
            decode_request(&msg(Command::MigDataWrite, &p), 0)
                .unwrap()
                .1,
            Request::MigDataWrite(MigData { size: 3, .. })
        ));
        assert!(decode_request(&msg(Command::MigDataWrite, &p[..10]), 0).is_err());
        assert!(decode_request(&msg(Command::MigDataRead, &u32s(&[8])), 0).is_err());
    }

    #[test]
    fn framing_errors() {
        // Reply sent as a command.
        let mut b = MessageBuilder::reply(1, Command::DeviceGetInfo as u16);
        b.bytes(&u32s(&[16, 0, 0, 0]));
        assert!(decode_request(&b.finish(), 0).is_err());
        // Unknown commands.
        for c in [0u16, 14, 19, 0xffff] {
            let mut m = msg(Command::DeviceReset, &[]);
            m[2..4].copy_from_slice(&c.to_ne_bytes());
            assert!(
                matches!(decode_request(&m, 0), Err(DecodeError::UnknownCommand(_))),
                "{c}"
            );
        }
        // msg_size disagreeing with the bytes.
        let mut m = msg(Command::DeviceReset, &[]);
        m[4..8].copy_from_slice(&20u32.to_ne_bytes());
        assert!(matches!(
            decode_request(&m, 0),
            Err(DecodeError::SizeMismatch { .. })
        ));
        // RESET with a payload; fds on a command that takes none.
        assert!(decode_request(&msg(Command::DeviceReset, &[0]), 0).is_err());
        assert!(decode_request(&msg(Command::DeviceReset, &[]), 1).is_err());
        // Error replies carry only the header.
        let e = error_reply(5, 9, Errno::INVAL);
        let h = Header::decode(&e).unwrap();
        assert_eq!(
            (h.msg_id, h.command, h.msg_size, h.error_no),
            (5, 9, 16, 22)
        );
        assert!(h.is_reply() && h.is_error());
    }
}
