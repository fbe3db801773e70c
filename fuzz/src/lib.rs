//! # emudev-fuzz
//!
//! The properties that the fuzz targets check over [`emudev_vfio_user::wire`]. They live here,
//! not in `fuzz_targets/`, so each target is one call and the same checks also run as ordinary
//! tests (`cargo test` in `fuzz/`, stable Rust) over the seed corpus of [`seeds`].
//!
//! - [`check_request`] (target `wire_decode`): the first input byte picks how many fds came with
//!   the message (0..=3), the rest is the message. Decoding must not panic; a message that
//!   decodes has `msg_size` equal to its length, a command header, fds only where the command
//!   takes them, and re-encoding the decoded value with [`MessageBuilder`] and decoding again
//!   gives the same value (and, for fixed layouts, the same bytes).
//! - [`check_reply`] (target `wire_reply`): the first input byte picks one of the reply decoders
//!   ([`ReplyDecoder`]), the rest is the reply payload. Decoding must not panic; a region-info
//!   reply that decodes has every sparse area inside the payload, and every decoded reply
//!   re-encodes to an equal value.
//!
//! A failed property panics with a message that names it and shows the input in hex: that is
//! what libFuzzer records as a crash. [`request_properties`] and [`reply_properties`] return the
//! same verdict as a `Result` instead.

#![forbid(unsafe_code)]

pub mod offload;
pub mod seeds;
pub mod trace;
pub mod virtchnl;

use emudev_vfio_user::wire::{
    self, Command, DeviceFeatureMsg, DeviceInfoMsg, DmaAccess, DmaUnmap, Header, IrqInfoMsg,
    IrqSetData, MessageBuilder, MigData, RegionAccess, RegionInfoMsg, RegionIoFdsMsg, Request,
    SparseMmapArea, Version, HEADER_SIZE, IO_FD_ENTRY_SIZE,
};

/// `VFIO_REGION_INFO_FLAG_CAPS` (linux/vfio.h), written out so the oracle does not share the
/// decoder's constants.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP` (linux/vfio.h).
pub const CAP_SPARSE_MMAP: u16 = 1;
/// Where the first sparse area can start at the earliest: after the 32-byte `vfio_region_info`
/// and the 16-byte sparse capability head.
pub const FIRST_AREA_MIN: usize = 32 + 16;

/// Returns `Err(message)` from the enclosing function when the condition is false.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Lower-case hex of `b`, for crash messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

/// The payload (header stripped) of a reply that `encode` appends.
fn reply_payload(command: Command, encode: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut b = MessageBuilder::reply(0, command as u16);
    encode(&mut b);
    let mut m = b.finish();
    m.drain(..HEADER_SIZE);
    m
}

// ----- requests -----------------------------------------------------------------------------

/// Fuzz entry for `wire_decode`: byte 0 picks nfds (`% 4`), the rest is the message.
/// Panics when a property of [`request_properties`] fails.
pub fn check_request(data: &[u8]) {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let nfds = usize::from(sel % 4);
    if let Err(why) = request_properties(msg, nfds) {
        panic!(
            "wire_decode property violated: {why}\n  nfds: {nfds}\n  message: {}",
            hex(msg)
        );
    }
}

/// The command a decoded request must have come from.
pub fn command_of(req: &Request<'_>) -> Command {
    match req {
        Request::Version(_) => Command::Version,
        Request::DmaMap(_) => Command::DmaMap,
        Request::DmaUnmap(_) => Command::DmaUnmap,
        Request::DeviceGetInfo(_) => Command::DeviceGetInfo,
        Request::GetRegionInfo(_) => Command::DeviceGetRegionInfo,
        Request::GetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
        Request::GetIrqInfo(_) => Command::DeviceGetIrqInfo,
        Request::SetIrqs(_) => Command::DeviceSetIrqs,
        Request::RegionRead(_) => Command::RegionRead,
        Request::RegionWrite(..) => Command::RegionWrite,
        Request::DeviceReset => Command::DeviceReset,
        Request::RegionWriteMulti(_) => Command::RegionWriteMulti,
        Request::DeviceFeature(_) => Command::DeviceFeature,
        Request::MigDataRead(_) => Command::MigDataRead,
        Request::MigDataWrite(_) => Command::MigDataWrite,
    }
}

/// Whether a request may arrive with `nfds` fds: DMA_MAP with at most one, DMA_UNMAP with any
/// (the SPDK client attaches one), SET_IRQS with DATA_EVENTFD and exactly `count`; nothing else.
pub fn fds_allowed(req: &Request<'_>, nfds: usize) -> bool {
    match req {
        _ if nfds == 0 => true,
        Request::DmaMap(_) => nfds <= 1,
        Request::DmaUnmap(_) => true,
        Request::SetIrqs(s) => s.data == IrqSetData::Eventfd && u64::from(s.count) == nfds as u64,
        _ => false,
    }
}

/// Re-encodes a decoded request with the same header fields (`error_no` becomes 0: the builder
/// never sets it on a command).
pub fn encode_request(h: &Header, req: &Request<'_>) -> Vec<u8> {
    let mut b = MessageBuilder::with_flags(h.msg_id, h.command, h.flags);
    match req {
        Request::Version(v) => v.encode(&mut b),
        Request::DmaMap(m) => m.encode(&mut b),
        Request::DmaUnmap(m) => m.encode(&mut b),
        Request::DeviceGetInfo(m) => m.encode(&mut b),
        Request::GetRegionInfo(m) => RegionInfoMsg::encode_request(m.index, m.argsz, &mut b),
        Request::GetRegionIoFds(m) => RegionIoFdsMsg::encode_request(m.index, m.argsz, &mut b),
        Request::GetIrqInfo(m) => m.encode(&mut b),
        Request::SetIrqs(m) => m.encode(&mut b),
        Request::RegionRead(a) => a.encode(&mut b),
        Request::RegionWrite(a, data) => {
            a.encode(&mut b);
            b.bytes(data);
        }
        Request::DeviceReset => {}
        Request::RegionWriteMulti(w) => w.encode(&mut b),
        Request::DeviceFeature(f) => f.encode(&mut b),
        Request::MigDataRead(m) | Request::MigDataWrite(m) => m.encode(&mut b),
    }
    b.finish()
}

/// Whether re-encoding `req` must give back the original bytes (header `error_no` aside):
/// true for every fixed layout. Not for VERSION (the JSON is re-serialised), GET_REGION_INFO
/// (the request's fields other than argsz and index are ignored) and SET_IRQS with BOOL data
/// bytes other than 0 and 1 (any non-zero byte is `true`).
pub fn encodes_canonically(req: &Request<'_>, msg: &[u8]) -> bool {
    match req {
        Request::Version(_) | Request::GetRegionInfo(_) => false,
        Request::SetIrqs(s) if matches!(s.data, IrqSetData::Bool(_)) => msg
            .get(HEADER_SIZE + wire::SetIrqs::FIXED..)
            .is_some_and(|d| d.iter().all(|&x| x <= 1)),
        _ => true,
    }
}

/// `re` equals `orig` except that `error_no` (header bytes 12..16) is 0 in `re`.
pub fn same_bytes_but_error_no(orig: &[u8], re: &[u8]) -> Result<(), String> {
    ensure!(
        orig.len() == re.len(),
        "re-encoded length {} != original {}",
        re.len(),
        orig.len()
    );
    ensure!(
        re.len() >= HEADER_SIZE,
        "re-encoded message shorter than a header"
    );
    ensure!(
        orig[..12] == re[..12],
        "re-encoded header bytes 0..12 differ: {}",
        hex(&re[..12])
    );
    ensure!(
        re[12..16] == [0; 4],
        "re-encoded error_no is not 0: {}",
        hex(&re[12..16])
    );
    if let Some(i) = (HEADER_SIZE..re.len()).find(|&i| orig[i] != re[i]) {
        return Err(format!(
            "re-encoded payload differs first at byte {i}: {}",
            hex(re)
        ));
    }
    Ok(())
}

/// The `wire_decode` properties for one message and fd count; `Err` names the first that fails.
/// A message that does not decode passes (rejecting is allowed; panicking is not).
pub fn request_properties(msg: &[u8], nfds: usize) -> Result<(), String> {
    let Ok((h, req)) = wire::decode_request(msg, nfds) else {
        return Ok(());
    };
    ensure!(
        h.msg_size as usize == msg.len(),
        "msg_size {} != input length {}",
        h.msg_size,
        msg.len()
    );
    ensure!(
        Header::decode(msg) == Ok(h),
        "returned header differs from the header bytes"
    );
    ensure!(
        h.is_command() && !h.is_error(),
        "accepted non-command flags {:#x}",
        h.flags
    );
    let cmd = command_of(&req);
    ensure!(
        h.cmd() == Some(cmd),
        "command {} decoded as {}",
        h.command,
        cmd.name()
    );
    ensure!(
        fds_allowed(&req, nfds),
        "{} accepted with {nfds} fds",
        cmd.name()
    );
    if let Request::RegionWrite(a, data) = &req {
        ensure!(
            *data == &msg[HEADER_SIZE + RegionAccess::SIZE..],
            "REGION_WRITE data is not the payload tail"
        );
        ensure!(
            a.count as usize == data.len(),
            "REGION_WRITE count {} != data length {}",
            a.count,
            data.len()
        );
    }

    let re = encode_request(&h, &req);
    let (h2, req2) = wire::decode_request(&re, nfds).map_err(|e| {
        format!(
            "re-encoded {} does not decode: {e}; bytes {}",
            cmd.name(),
            hex(&re)
        )
    })?;
    ensure!(
        (h2.msg_id, h2.command, h2.flags, h2.error_no) == (h.msg_id, h.command, h.flags, 0),
        "re-encoded header {h2:?} != decoded {h:?}"
    );
    ensure!(
        h2.msg_size as usize == re.len(),
        "re-encoded msg_size {} != length {}",
        h2.msg_size,
        re.len()
    );
    ensure!(
        req2 == req,
        "round trip changed the request: {req:?} became {req2:?}"
    );
    if encodes_canonically(&req, msg) {
        same_bytes_but_error_no(msg, &re)?;
    }
    // Encoding is a fixed point after one round: encode(decode(encode(x))) == encode(x).
    let re2 = encode_request(&h2, &req2);
    ensure!(
        re2 == re,
        "second re-encoding differs: {} vs {}",
        hex(&re2),
        hex(&re)
    );
    Ok(())
}

// ----- replies ------------------------------------------------------------------------------

/// The reply decoders `wire_reply` drives, in selector order (byte 0 of the input, modulo 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyDecoder {
    /// [`RegionInfoMsg::decode_reply`].
    RegionInfo,
    /// [`RegionIoFdsMsg::decode_reply`].
    RegionIoFds,
    /// [`DmaAccess::decode_read_reply`].
    DmaRead,
    /// [`DmaUnmap::decode_reply`].
    DmaUnmap,
    /// [`DeviceInfoMsg::decode_reply`].
    DeviceInfo,
    /// [`IrqInfoMsg::decode_reply`].
    IrqInfo,
    /// [`RegionAccess::decode_read_reply`].
    RegionRead,
    /// [`DeviceFeatureMsg::decode_reply`].
    DeviceFeature,
    /// [`MigData::decode_with_data`].
    MigData,
    /// [`Version::decode`].
    Version,
    /// [`RegionAccess::decode_write_reply`].
    RegionWrite,
    /// [`DmaAccess::decode_write_reply`].
    DmaWrite,
}

impl ReplyDecoder {
    /// Every decoder, indexed by selector.
    pub const ALL: [ReplyDecoder; 12] = [
        ReplyDecoder::RegionInfo,
        ReplyDecoder::RegionIoFds,
        ReplyDecoder::DmaRead,
        ReplyDecoder::DmaUnmap,
        ReplyDecoder::DeviceInfo,
        ReplyDecoder::IrqInfo,
        ReplyDecoder::RegionRead,
        ReplyDecoder::DeviceFeature,
        ReplyDecoder::MigData,
        ReplyDecoder::Version,
        ReplyDecoder::RegionWrite,
        ReplyDecoder::DmaWrite,
    ];

    /// The decoder an input's first byte picks.
    pub fn from_selector(b: u8) -> ReplyDecoder {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }

    /// The first byte that picks this decoder.
    pub fn selector(self) -> u8 {
        // ALL has 12 entries and lists every variant, so the position exists and fits a u8.
        Self::ALL
            .iter()
            .position(|&d| d == self)
            .map_or(0, |i| i as u8)
    }
}

/// Fuzz entry for `wire_reply`: byte 0 picks the decoder, the rest is the reply payload.
/// Panics when a property of [`reply_properties`] fails.
pub fn check_reply(data: &[u8]) {
    let Some((&sel, p)) = data.split_first() else {
        return;
    };
    let which = ReplyDecoder::from_selector(sel);
    if let Err(why) = reply_properties(which, p) {
        panic!(
            "wire_reply property violated ({which:?}): {why}\n  payload: {}",
            hex(p)
        );
    }
}

/// Whether `areas` were read from inside `p`: some run of `p` starting at or after
/// [`FIRST_AREA_MIN`] holds them back to back (offset, size; host order), right after a
/// sparse-mmap capability head (id [`CAP_SPARSE_MMAP`] at -16, `nr_areas` = their count at -8).
pub fn sparse_areas_in_payload(p: &[u8], areas: &[SparseMmapArea]) -> bool {
    if areas.is_empty() {
        return true;
    }
    let want: Vec<u8> = areas
        .iter()
        .flat_map(|a| {
            a.offset
                .to_ne_bytes()
                .into_iter()
                .chain(a.size.to_ne_bytes())
        })
        .collect();
    let Some(last) = p.len().checked_sub(want.len()) else {
        return false;
    };
    let nr = u32::try_from(areas.len()).ok();
    (FIRST_AREA_MIN..=last).any(|s| {
        p[s..s + want.len()] == want[..]
            && u16_at(p, s - 16) == Some(CAP_SPARSE_MMAP)
            && u32_at(p, s - 8) == nr
    })
}

/// The `wire_reply` properties for one decoder and payload; `Err` names the first that fails.
/// A payload that does not decode passes.
pub fn reply_properties(which: ReplyDecoder, p: &[u8]) -> Result<(), String> {
    match which {
        ReplyDecoder::RegionInfo => region_info_reply(p),
        ReplyDecoder::RegionIoFds => region_io_fds_reply(p),
        ReplyDecoder::DmaRead => {
            let Ok((a, data)) = DmaAccess::decode_read_reply(p) else {
                return Ok(());
            };
            ensure!(
                data == &p[DmaAccess::SIZE..],
                "DMA_READ data is not the payload tail"
            );
            ensure!(
                a.count == data.len() as u64,
                "DMA_READ count {} != data length {}",
                a.count,
                data.len()
            );
            ensure!(
                Some(a.address) == u64_at(p, 0),
                "DMA_READ address is not bytes 0..8"
            );
            let re = reply_payload(Command::DmaRead, |b| {
                a.encode(b);
                b.bytes(data);
            });
            ensure!(re == p, "DMA_READ reply re-encodes to {}", hex(&re));
            Ok(())
        }
        ReplyDecoder::DmaWrite => {
            let Ok(a) = DmaAccess::decode_write_reply(p) else {
                return Ok(());
            };
            match a {
                None => ensure!(
                    p.is_empty(),
                    "DMA_WRITE reply of {} bytes decoded as empty",
                    p.len()
                ),
                Some(a) => {
                    let re = reply_payload(Command::DmaWrite, |b| a.encode(b));
                    ensure!(re == p, "DMA_WRITE reply re-encodes to {}", hex(&re));
                }
            }
            Ok(())
        }
        ReplyDecoder::DmaUnmap => {
            let Ok(m) = DmaUnmap::decode_reply(p) else {
                return Ok(());
            };
            ensure!(
                m.argsz as usize >= DmaUnmap::SIZE,
                "DMA_UNMAP reply argsz {} accepted",
                m.argsz
            );
            let re = reply_payload(Command::DmaUnmap, |b| m.encode(b));
            ensure!(
                re[..] == p[..DmaUnmap::SIZE],
                "DMA_UNMAP reply re-encodes to {}",
                hex(&re)
            );
            ensure!(
                DmaUnmap::decode_reply(&re) == Ok(m),
                "DMA_UNMAP reply round trip changed it"
            );
            Ok(())
        }
        ReplyDecoder::DeviceInfo => {
            let Ok(m) = DeviceInfoMsg::decode_reply(p) else {
                return Ok(());
            };
            let re = reply_payload(Command::DeviceGetInfo, |b| m.encode(b));
            ensure!(
                re[..] == p[..DeviceInfoMsg::SIZE],
                "DEVICE_GET_INFO reply re-encodes to {}",
                hex(&re)
            );
            Ok(())
        }
        ReplyDecoder::IrqInfo => {
            let Ok(m) = IrqInfoMsg::decode_reply(p) else {
                return Ok(());
            };
            let re = reply_payload(Command::DeviceGetIrqInfo, |b| m.encode(b));
            ensure!(
                re[..] == p[..IrqInfoMsg::SIZE],
                "DEVICE_GET_IRQ_INFO reply re-encodes to {}",
                hex(&re)
            );
            Ok(())
        }
        ReplyDecoder::RegionRead => {
            let Ok((a, data)) = RegionAccess::decode_read_reply(p) else {
                return Ok(());
            };
            ensure!(
                data == &p[RegionAccess::SIZE..],
                "REGION_READ data is not the payload tail"
            );
            ensure!(
                a.count as usize == data.len(),
                "REGION_READ count {} != data length {}",
                a.count,
                data.len()
            );
            let re = reply_payload(Command::RegionRead, |b| {
                a.encode(b);
                b.bytes(data);
            });
            ensure!(re == p, "REGION_READ reply re-encodes to {}", hex(&re));
            Ok(())
        }
        ReplyDecoder::RegionWrite => {
            let Ok(a) = RegionAccess::decode_write_reply(p) else {
                return Ok(());
            };
            let re = reply_payload(Command::RegionWrite, |b| a.encode(b));
            ensure!(re == p, "REGION_WRITE reply re-encodes to {}", hex(&re));
            Ok(())
        }
        ReplyDecoder::DeviceFeature => {
            let Ok(m) = DeviceFeatureMsg::decode_reply(p) else {
                return Ok(());
            };
            ensure!(
                m.data[..] == p[DeviceFeatureMsg::FIXED..],
                "DEVICE_FEATURE data is not the payload tail"
            );
            // The encoder fills in argsz when it is 0, so only a non-zero argsz round-trips bytes.
            if m.argsz != 0 {
                let re = reply_payload(Command::DeviceFeature, |b| m.encode(b));
                ensure!(re == p, "DEVICE_FEATURE reply re-encodes to {}", hex(&re));
            }
            Ok(())
        }
        ReplyDecoder::MigData => {
            let Ok(m) = MigData::decode_with_data(p) else {
                return Ok(());
            };
            ensure!(
                m.data.len() == m.size as usize,
                "MIG_DATA size {} != data length {}",
                m.size,
                m.data.len()
            );
            ensure!(
                m.argsz as usize >= MigData::FIXED,
                "MIG_DATA argsz {} accepted",
                m.argsz
            );
            let re = reply_payload(Command::MigDataRead, |b| m.encode(b));
            ensure!(re == p, "MIG_DATA re-encodes to {}", hex(&re));
            Ok(())
        }
        ReplyDecoder::Version => {
            let Ok(v) = Version::decode(p) else {
                return Ok(());
            };
            ensure!(
                p.len() > Version::FIXED || v.caps.is_none(),
                "capabilities without JSON"
            );
            let re = reply_payload(Command::Version, |b| v.encode(b));
            let back = Version::decode(&re)
                .map_err(|e| format!("re-encoded VERSION does not decode: {e}"))?;
            ensure!(back == v, "VERSION round trip changed {v:?} into {back:?}");
            let re2 = reply_payload(Command::Version, |b| back.encode(b));
            ensure!(re2 == re, "second VERSION encoding differs");
            Ok(())
        }
    }
}

fn region_info_reply(p: &[u8]) -> Result<(), String> {
    let Ok(m) = RegionInfoMsg::decode_reply(p) else {
        return Ok(());
    };
    let fields = (
        u32_at(p, 0),
        u32_at(p, 4),
        u32_at(p, 8),
        u32_at(p, 12),
        u64_at(p, 16),
        u64_at(p, 24),
    );
    let want = (
        Some(m.argsz),
        Some(m.flags),
        Some(m.index),
        Some(m.cap_offset),
        Some(m.size),
        Some(m.offset),
    );
    ensure!(
        fields == want,
        "region info fields {want:?} are not the payload's {fields:?}"
    );
    ensure!(
        m.flags & REGION_INFO_FLAG_CAPS != 0 || m.sparse.is_empty(),
        "sparse areas decoded without the CAPS flag"
    );
    ensure!(
        sparse_areas_in_payload(p, &m.sparse),
        "{} sparse areas not found inside the {}-byte payload: {:?}",
        m.sparse.len(),
        p.len(),
        m.sparse
    );
    let re = reply_payload(Command::DeviceGetRegionInfo, |b| {
        m.encode_reply(u32::MAX, b)
    });
    ensure!(
        re.len() == m.full_size(),
        "encoded reply is {} bytes, full_size {}",
        re.len(),
        m.full_size()
    );
    let back = RegionInfoMsg::decode_reply(&re)
        .map_err(|e| format!("re-encoded region info does not decode: {e}"))?;
    ensure!(
        (back.index, back.size, back.offset, &back.sparse)
            == (m.index, m.size, m.offset, &m.sparse),
        "region info round trip changed {m:?} into {back:?}"
    );
    ensure!(
        back.flags & !REGION_INFO_FLAG_CAPS == m.flags & !REGION_INFO_FLAG_CAPS,
        "region info round trip changed flags {:#x} into {:#x}",
        m.flags,
        back.flags
    );
    let (caps, has_areas) = (
        back.flags & REGION_INFO_FLAG_CAPS != 0,
        !m.sparse.is_empty(),
    );
    ensure!(
        caps == has_areas,
        "re-encoded CAPS flag is {caps} with sparse areas {has_areas}"
    );
    ensure!(
        back.argsz as usize == m.full_size(),
        "re-encoded argsz {} != full_size",
        back.argsz
    );
    Ok(())
}

fn region_io_fds_reply(p: &[u8]) -> Result<(), String> {
    let Ok(m) = RegionIoFdsMsg::decode_reply(p) else {
        return Ok(());
    };
    let fields = (u32_at(p, 0), u32_at(p, 4), u32_at(p, 8), u32_at(p, 12));
    ensure!(
        fields == (Some(m.argsz), Some(m.flags), Some(m.index), Some(m.count)),
        "io fds head is not the payload's {fields:?}"
    );
    let body = p.len() - RegionIoFdsMsg::FIXED;
    if body == 0 {
        ensure!(
            m.entries.is_empty(),
            "io fd entries decoded from an empty body"
        );
    } else {
        let n = m.entries.len();
        ensure!(
            n as u64 == u64::from(m.count),
            "{n} io fd entries for count {}",
            m.count
        );
        ensure!(
            n > 0 && body.is_multiple_of(n) && body / n >= IO_FD_ENTRY_SIZE,
            "{n} entries in a {body}-byte body"
        );
        let stride = body / n;
        for (i, e) in m.entries.iter().enumerate() {
            let at = RegionIoFdsMsg::FIXED + i * stride;
            ensure!(
                Some(e.offset) == u64_at(p, at),
                "entry {i} offset is not at byte {at}"
            );
            ensure!(
                Some(e.datamatch) == u64_at(p, at + stride - 8),
                "entry {i} datamatch is not its last 8 bytes"
            );
        }
    }
    let re = reply_payload(Command::DeviceGetRegionIoFds, |b| {
        m.encode_reply(u32::MAX, b);
    });
    let back = RegionIoFdsMsg::decode_reply(&re)
        .map_err(|e| format!("re-encoded io fds do not decode: {e}"))?;
    ensure!(
        back.index == m.index && back.entries == m.entries,
        "io fds round trip changed {m:?} into {back:?}"
    );
    ensure!(
        back.count as usize == m.entries.len(),
        "re-encoded count {} != entries",
        back.count
    );
    ensure!(
        back.argsz as usize == m.full_size(),
        "re-encoded argsz {} != full_size",
        back.argsz
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_vfio_user::wire::{DecodeError, DmaMap, IrqAction, SetIrqs};

    /// Every command a client may send; the seed corpus must cover each.
    const CLIENT_COMMANDS: [Command; 15] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    #[test]
    fn every_request_seed_decodes_and_holds_the_properties() {
        let mut seen = Vec::new();
        for s in seeds::requests() {
            let (h, req) = wire::decode_request(&s.message, s.nfds)
                .unwrap_or_else(|e| panic!("seed {} does not decode: {e}", s.name));
            assert_eq!(h.msg_size as usize, s.message.len(), "{}", s.name);
            seen.push(command_of(&req));
            request_properties(&s.message, s.nfds)
                .unwrap_or_else(|e| panic!("seed {}: {e}", s.name));
            check_request(&s.fuzz_input());
        }
        for c in CLIENT_COMMANDS {
            assert!(seen.contains(&c), "no seed for {}", c.name());
        }
    }

    #[test]
    fn request_truncations_never_panic_and_raw_ones_are_rejected() {
        for s in seeds::requests() {
            for n in 0..s.message.len() {
                let cut = &s.message[..n];
                // The header still claims the full size: always a framing error.
                let err = wire::decode_request(cut, s.nfds).err();
                let framing = matches!(
                    err,
                    Some(DecodeError::ShortHeader(_) | DecodeError::SizeMismatch { .. })
                );
                assert!(framing, "{} cut to {n}: {err:?}", s.name);
                check_request(&[[s.nfds as u8].as_slice(), cut].concat());
                // With msg_size fixed up the payload decoders see the short payload.
                if let Some(fixed) = seeds::with_msg_size(cut) {
                    request_properties(&fixed, s.nfds)
                        .unwrap_or_else(|e| panic!("{} cut to {n}: {e}", s.name));
                }
            }
        }
    }

    #[test]
    fn single_bit_flips_of_request_seeds_hold_the_properties() {
        // A deterministic mini-fuzz that runs on stable in CI: every bit of every seed.
        let mut decoded = 0usize;
        for s in seeds::requests() {
            for i in 0..s.message.len() * 8 {
                let mut m = s.message.clone();
                m[i / 8] ^= 1 << (i % 8);
                for nfds in 0..4 {
                    request_properties(&m, nfds)
                        .unwrap_or_else(|e| panic!("{} bit {i} nfds {nfds}: {e}", s.name));
                    decoded += usize::from(wire::decode_request(&m, nfds).is_ok());
                }
            }
        }
        assert!(
            decoded > 1000,
            "bit flips should leave many messages valid, got {decoded}"
        );
    }

    #[test]
    fn every_reply_seed_decodes_and_holds_the_properties() {
        let mut seen = Vec::new();
        for s in seeds::replies() {
            reply_properties(s.decoder, &s.payload)
                .unwrap_or_else(|e| panic!("seed {}: {e}", s.name));
            check_reply(&s.fuzz_input());
            assert!(
                seeds::decodes(s.decoder, &s.payload),
                "reply seed {} does not decode",
                s.name
            );
            seen.push(s.decoder);
        }
        for d in ReplyDecoder::ALL {
            assert!(seen.contains(&d), "no reply seed for {d:?}");
        }
        // The region info seeds include sparse areas, so the in-payload check had work to do.
        let sparse = seeds::replies()
            .into_iter()
            .filter(|s| s.decoder == ReplyDecoder::RegionInfo)
            .filter_map(|s| RegionInfoMsg::decode_reply(&s.payload).ok())
            .any(|m| m.sparse.len() >= 2);
        assert!(sparse, "no region info seed with sparse areas");
    }

    #[test]
    fn reply_truncations_and_bit_flips_hold_the_properties() {
        for s in seeds::replies() {
            for n in 0..s.payload.len() {
                let cut = &s.payload[..n];
                for d in ReplyDecoder::ALL {
                    reply_properties(d, cut)
                        .unwrap_or_else(|e| panic!("{} cut to {n} as {d:?}: {e}", s.name));
                }
            }
            for i in 0..s.payload.len() * 8 {
                let mut p = s.payload.clone();
                p[i / 8] ^= 1 << (i % 8);
                reply_properties(s.decoder, &p)
                    .unwrap_or_else(|e| panic!("{} bit {i}: {e}", s.name));
            }
        }
    }

    #[test]
    fn truncated_fixed_replies_are_rejected() {
        for (d, min) in [
            (ReplyDecoder::RegionInfo, 32),
            (ReplyDecoder::RegionIoFds, 16),
            (ReplyDecoder::DmaRead, 16),
            (ReplyDecoder::DmaUnmap, 24),
            (ReplyDecoder::DeviceInfo, 16),
            (ReplyDecoder::IrqInfo, 16),
            (ReplyDecoder::RegionRead, 16),
            (ReplyDecoder::DeviceFeature, 8),
            (ReplyDecoder::MigData, 8),
            (ReplyDecoder::Version, 4),
        ] {
            for n in 0..min {
                assert!(
                    !seeds::decodes(d, &vec![0u8; n]),
                    "{d:?} accepted {n} bytes"
                );
            }
        }
    }

    #[test]
    fn selector_maps_every_byte_to_a_decoder_and_back() {
        for d in ReplyDecoder::ALL {
            assert_eq!(ReplyDecoder::from_selector(d.selector()), d);
            assert_eq!(
                ReplyDecoder::from_selector(d.selector() + 12),
                d,
                "selector wraps modulo 12"
            );
        }
        assert_eq!(
            ReplyDecoder::from_selector(255),
            ReplyDecoder::ALL[255 % 12]
        );
    }

    #[test]
    fn empty_inputs_are_ignored() {
        check_request(&[]);
        check_reply(&[]);
        check_request(&[3]);
        check_reply(&[0]);
    }

    fn sparse_reply(areas: &[SparseMmapArea]) -> Vec<u8> {
        let info = RegionInfoMsg {
            index: 2,
            size: 0x8000,
            sparse: areas.to_vec(),
            ..Default::default()
        };
        reply_payload(Command::DeviceGetRegionInfo, |b| {
            info.encode_reply(u32::MAX, b)
        })
    }

    #[test]
    fn sparse_check_finds_areas_where_the_encoder_put_them() {
        let areas = [
            SparseMmapArea {
                offset: 0x2000,
                size: 0x1000,
            },
            SparseMmapArea {
                offset: 0x4000,
                size: 0x2000,
            },
        ];
        let p = sparse_reply(&areas);
        assert!(sparse_areas_in_payload(&p, &areas));
        assert!(sparse_areas_in_payload(&p, &areas[..0]));
        assert_eq!(
            RegionInfoMsg::decode_reply(&p).map(|m| m.sparse),
            Ok(areas.to_vec())
        );
    }

    #[test]
    fn sparse_check_rejects_areas_not_in_the_payload() {
        let areas = [
            SparseMmapArea {
                offset: 0x2000,
                size: 0x1000,
            },
            SparseMmapArea {
                offset: 0x4000,
                size: 0x2000,
            },
        ];
        let p = sparse_reply(&areas);
        // An area whose bytes are nowhere in the payload.
        assert!(!sparse_areas_in_payload(
            &p,
            &[SparseMmapArea {
                offset: 0x9000,
                size: 1
            }]
        ));
        // The right bytes, but a count that disagrees with nr_areas.
        assert!(!sparse_areas_in_payload(&p, &areas[..1]));
        // Cut off the last area: the pair is no longer inside.
        assert!(!sparse_areas_in_payload(&p[..p.len() - 1], &areas));
        // The same bytes inside the fixed 48-byte head do not count.
        let mut head_only = vec![0u8; 48];
        head_only[..16].copy_from_slice(&p[48..64]);
        assert!(!sparse_areas_in_payload(&head_only, &areas[..1]));
        // A payload shorter than the areas.
        assert!(!sparse_areas_in_payload(&[0u8; 8], &areas));
    }

    #[test]
    fn region_info_reply_property_catches_a_lying_decode_result() {
        // The property's oracle, fed the right payload, agrees; a CAPS-less reply has no areas.
        let areas = [SparseMmapArea {
            offset: 0,
            size: 0x1000,
        }];
        let p = sparse_reply(&areas);
        assert_eq!(reply_properties(ReplyDecoder::RegionInfo, &p), Ok(()));
        let mut no_caps = p.clone();
        let flags = u32_at(&p, 4).unwrap_or(0) & !REGION_INFO_FLAG_CAPS;
        no_caps[4..8].copy_from_slice(&flags.to_ne_bytes());
        assert_eq!(
            RegionInfoMsg::decode_reply(&no_caps).map(|m| m.sparse.len()),
            Ok(0)
        );
        assert_eq!(reply_properties(ReplyDecoder::RegionInfo, &no_caps), Ok(()));
    }

    #[test]
    fn byte_comparison_flags_every_difference() {
        let mut b = MessageBuilder::command(9, Command::DmaMap);
        DmaMap {
            argsz: 32,
            flags: 3,
            offset: 0,
            address: 0x1000,
            size: 0x1000,
        }
        .encode(&mut b);
        let m = b.finish();
        assert_eq!(same_bytes_but_error_no(&m, &m), Ok(()));
        let mut with_errno = m.clone();
        with_errno[12] = 5;
        assert_eq!(
            same_bytes_but_error_no(&with_errno, &m),
            Ok(()),
            "error_no in the original is ignored"
        );
        assert!(
            same_bytes_but_error_no(&m, &with_errno).is_err(),
            "error_no in the re-encoding is not"
        );
        let mut payload = m.clone();
        payload[40] ^= 1;
        assert!(same_bytes_but_error_no(&m, &payload)
            .unwrap_err()
            .contains("byte 40"));
        let mut id = m.clone();
        id[0] ^= 1;
        assert!(same_bytes_but_error_no(&m, &id).is_err());
        assert!(same_bytes_but_error_no(&m, &m[..m.len() - 1]).is_err());
    }

    #[test]
    fn fd_policy_matches_the_spec() {
        let map = Request::DmaMap(DmaMap::default());
        assert!(fds_allowed(&map, 0) && fds_allowed(&map, 1) && !fds_allowed(&map, 2));
        assert!(fds_allowed(&Request::DmaUnmap(DmaUnmap::default()), 3));
        assert!(!fds_allowed(&Request::DeviceReset, 1));
        assert!(!fds_allowed(&Request::Version(Version::default()), 1));
        let set = |data, count| {
            Request::SetIrqs(SetIrqs {
                argsz: 20,
                action: IrqAction::Trigger,
                data,
                index: 0,
                start: 0,
                count,
            })
        };
        assert!(fds_allowed(&set(IrqSetData::Eventfd, 2), 2));
        assert!(!fds_allowed(&set(IrqSetData::Eventfd, 2), 1));
        assert!(!fds_allowed(&set(IrqSetData::None, 1), 1));
        // The decoder agrees: fds on a command that takes none are refused.
        let reset = MessageBuilder::command(1, Command::DeviceReset).finish();
        assert!(wire::decode_request(&reset, 0).is_ok());
        assert!(wire::decode_request(&reset, 1).is_err());
    }

    #[test]
    fn canonical_encoding_excludes_only_the_lossy_requests() {
        let none = Request::SetIrqs(SetIrqs {
            argsz: 20,
            action: IrqAction::Mask,
            data: IrqSetData::None,
            index: 0,
            start: 0,
            count: 1,
        });
        assert!(encodes_canonically(&none, &[]));
        assert!(!encodes_canonically(
            &Request::Version(Version::default()),
            &[]
        ));
        assert!(!encodes_canonically(
            &Request::GetRegionInfo(RegionInfoMsg::default()),
            &[]
        ));
        let bools = Request::SetIrqs(SetIrqs {
            argsz: 22,
            action: IrqAction::Mask,
            data: IrqSetData::Bool(vec![true, false]),
            index: 0,
            start: 0,
            count: 2,
        });
        let mut msg = vec![0u8; HEADER_SIZE + SetIrqs::FIXED];
        msg.extend_from_slice(&[1, 0]);
        assert!(encodes_canonically(&bools, &msg));
        let last = msg.len() - 1;
        msg[last] = 7;
        assert!(
            !encodes_canonically(&bools, &msg),
            "a BOOL byte of 7 re-encodes as 1"
        );
        // And the full property accepts such a message: values equal, bytes not required to be.
        let mut b = MessageBuilder::command(1, Command::DeviceSetIrqs);
        b.bytes(&msg[HEADER_SIZE..]);
        let mut m = b.finish();
        m[HEADER_SIZE..HEADER_SIZE + 4].copy_from_slice(&22u32.to_ne_bytes());
        m[HEADER_SIZE + 4..HEADER_SIZE + 8].copy_from_slice(&(2u32 | 8).to_ne_bytes()); // BOOL | MASK
        m[HEADER_SIZE + 16..HEADER_SIZE + 20].copy_from_slice(&2u32.to_ne_bytes());
        assert!(wire::decode_request(&m, 0).is_ok());
        assert_eq!(request_properties(&m, 0), Ok(()));
    }
}
