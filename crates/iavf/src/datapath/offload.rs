//! TX offloads applied in software: what a Linux iavf guest asks the NIC to do to a packet
//! (it always enables TX checksum offload and TSO), done on the TX engine's own gathered copy
//! of the packet before the copy goes to the back-end.
//!
//! The request ([`TxOffload`]) comes from the packet's first data descriptor (CMD: IIPT and
//! L4T; OFFSET: MACLEN, IPLEN, L4LEN) and, for TSO, from a context descriptor placed before the
//! packet's data descriptors ([`TsoRequest`]: CMD_TSO, TSO_LEN, MSS). The lengths in OFFSET
//! locate the headers: nothing is parsed beyond what is needed to check that they fit the frame
//! and agree with the IP version. L4T, not the IP protocol field, names the L4 protocol. IIPT
//! alone (IPv4 or IPv6, no L4T, no TSO) only describes the packet: nothing is done.
//!
//! Applied ([`TxOffloader::apply`]):
//! - IIPT_IPV4_CSUM: the IPv4 header checksum over IPLEN bytes at MACLEN.
//! - L4T TCP / UDP: the full L4 checksum over the pseudo-header (IPv4 or IPv6 addresses, the
//!   protocol L4T names, the L4 length) and the L4 bytes with the checksum field zeroed, so it
//!   does not matter what the driver seeded there (Linux leaves the pseudo-header sum). A UDP
//!   checksum computing to 0 is sent as 0xFFFF. The L4 bytes end where the IP length field
//!   says (IPv4 total length, IPv6 payload length; trailing padding is left out); a field of 0
//!   means "to the end of the frame". L4LEN is not needed for this and not checked.
//! - L4T SCTP: the CRC32c over the SCTP packet with the checksum field zeroed, stored
//!   little-endian (RFC 3309); it is a table-driven byte loop, cheap enough to do.
//! - TSO (TCP only): L4LEN must be the TCP header length (its data offset), the payload after
//!   MACLEN + IPLEN + L4LEN bytes of headers exactly TSO_LEN bytes (not 0), and MSS non-zero;
//!   the super-frame's IP length fields are ignored (Linux zeroes them). Each segment of up
//!   to MSS bytes gets a copy of the headers with the IPv4 total length, ID + segment index
//!   and header checksum (always recomputed: the length changed), or the IPv6 payload length;
//!   the TCP sequence number advanced by the segment's offset; FIN and PSH only on the last
//!   segment, CWR only on the first; and the TCP checksum as above. Segments are built one at
//!   a time in one scratch buffer that keeps its capacity (no allocation per segment in
//!   steady state).
//!
//! A request that cannot be applied (headers beyond the frame, an IPLEN that disagrees with
//! the IPv4 IHL or is shorter than an IPv6 header, an IP version other than IIPT says, an L4
//! header too short for its type, L4 or TSO on a packet not marked IP, TSO_LEN not matching
//! the payload, MSS 0, TSO of anything but TCP, UDP segmentation included) is refused with an
//! [`OffloadError`] before anything is written or emitted: the engine drops the packet and
//! counts a TX error.
//!
//! Not applied: tunnels (the context descriptor's tunnelling parameters, outer checksums),
//! IPsec, timestamps (TSYN), L2 tag insertion, checksums of IPv6 packets whose routing header
//! changes the final destination (the header's destination address is used). Not reported: the
//! RX side writes no checksum status (L3L4P), so a guest verifies what it receives itself.

use thiserror::Error;

use crate::spec::desc::{tx_cmd, tx_ctx, tx_offset, TxContextDesc};

/// Largest header run OFFSET can describe: MACLEN + IPLEN + L4LEN at their maxima.
pub const MAX_TX_HEADERS: usize =
    tx_offset::MACLEN_MAX_BYTES + tx_offset::IPLEN_MAX_BYTES + tx_offset::L4LEN_MAX_BYTES;

/// Largest TSO packet: a TSO_LEN of 256 KiB - 1 behind the largest headers.
pub const MAX_TSO_FRAME: usize = tx_ctx::TSO_LEN_MAX + MAX_TX_HEADERS;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER_MIN: usize = 20;
const UDP_HEADER: usize = 8;
const SCTP_HEADER: usize = 12;
/// Offsets of the checksum fields in their headers.
const IPV4_CSUM_AT: usize = 10;
const TCP_CSUM_AT: usize = 16;
const UDP_CSUM_AT: usize = 6;
const SCTP_CSUM_AT: usize = 8;
/// TCP flags byte and the flags TSO rewrites.
const TCP_FLAGS_AT: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A TSO request from a context descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsoRequest {
    /// TSO_LEN: payload bytes after the headers.
    pub len: u32,
    /// MSS: payload bytes per segment.
    pub mss: u16,
}

impl TsoRequest {
    /// The request of a context descriptor, if its CMD has TSO.
    pub const fn from_context(c: &TxContextDesc) -> Option<Self> {
        if c.is_tso() {
            Some(TsoRequest {
                len: c.tso_len(),
                mss: c.mss(),
            })
        } else {
            None
        }
    }
}

/// What one packet asks for: the CMD and OFFSET of its first data descriptor and the TSO
/// request of the context descriptor before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// CMD of the first data descriptor ([`tx_cmd`]: IIPT and L4T are the bits used).
    pub cmd: u16,
    /// OFFSET of the first data descriptor ([`tx_offset`]).
    pub offset: u32,
    /// TSO, from a context descriptor.
    pub tso: Option<TsoRequest>,
}

impl TxOffload {
    /// A request.
    pub const fn new(cmd: u16, offset: u32, tso: Option<TsoRequest>) -> Self {
        TxOffload { cmd, offset, tso }
    }

    /// Whether there is anything to do: IPv4 header checksum, an L4 checksum, or TSO (IIPT
    /// alone only describes the packet).
    #[inline]
    pub const fn is_active(&self) -> bool {
        self.cmd & tx_cmd::IIPT_MASK == tx_cmd::IIPT_IPV4_CSUM
            || self.cmd & tx_cmd::L4T_MASK != 0
            || self.tso.is_some()
    }

    /// MACLEN + IPLEN + L4LEN in bytes (at most [`MAX_TX_HEADERS`]).
    pub const fn header_len(&self) -> usize {
        tx_offset::maclen(self.offset)
            + tx_offset::iplen(self.offset)
            + tx_offset::l4len(self.offset)
    }

    /// How long the packet should be: headers + TSO_LEN with TSO (at most
    /// [`MAX_TSO_FRAME`]), else `None`.
    pub const fn tso_frame_len(&self) -> Option<usize> {
        match self.tso {
            Some(t) => Some(self.header_len() + t.len as usize),
            None => None,
        }
    }
}

/// Why an offload request was refused (the packet is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OffloadError {
    /// An L4 checksum or TSO on a packet whose IIPT says it is not IP.
    #[error("L4 checksum or TSO asked for a packet not marked IP")]
    NotIp,
    /// The headers OFFSET describes run past the frame.
    #[error("headers end at byte {end}, the frame has {len}")]
    Truncated {
        /// Where the headers end.
        end: usize,
        /// Frame length.
        len: usize,
    },
    /// The IP header's version is not the one IIPT names.
    #[error("IP version {found} where IIPT says {expected}")]
    IpVersion {
        /// The version IIPT names.
        expected: u8,
        /// The version in the header.
        found: u8,
    },
    /// IPLEN disagrees with the IP header (IPv4: not IHL * 4; IPv6: under 40 bytes).
    #[error("IPLEN {iplen} does not fit the IPv{version} header")]
    IpHeaderLength {
        /// IP version (from IIPT).
        version: u8,
        /// IPLEN in bytes.
        iplen: usize,
    },
    /// The IP length field puts the end of the packet before its L4 header or past the frame.
    #[error("the IP length field puts the packet's end at byte {end}, the frame has {len}")]
    IpLength {
        /// Where the IP packet ends by its length field.
        end: usize,
        /// Frame length.
        len: usize,
    },
    /// The L4 header is too short for its type (or, with TSO, L4LEN is not the TCP data
    /// offset).
    #[error("L4 header of {len} bytes is not a valid header of its type")]
    L4Header {
        /// The L4 length found.
        len: usize,
    },
    /// TSO_LEN is not the payload length (or is 0).
    #[error("TSO_LEN {tso_len}, but {payload} payload bytes follow the headers")]
    TsoLength {
        /// TSO_LEN.
        tso_len: u32,
        /// Payload bytes in the frame.
        payload: usize,
    },
    /// TSO with MSS 0.
    #[error("TSO with MSS 0")]
    TsoMss,
    /// TSO of something other than TCP (UDP segmentation is not offered).
    #[error("TSO of a packet whose L4T is {l4t:#x}, not TCP")]
    TsoNotTcp {
        /// The L4T bits of CMD.
        l4t: u16,
    },
}

/// Applies offload requests; holds the scratch buffer TSO segments are built in.
#[derive(Default)]
pub struct TxOffloader {
    scratch: Vec<u8>,
}

impl std::fmt::Debug for TxOffloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxOffloader")
            .field("scratch_capacity", &self.scratch.capacity())
            .finish()
    }
}

impl TxOffloader {
    /// An offloader; its scratch buffer is allocated by the first TSO packet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `req` to `frame` (the engine's copy, changed in place for checksums) and hands
    /// the result to `emit`: the frame itself, or each TSO segment in order. Returns the number
    /// of frames emitted; on error nothing was emitted.
    pub fn apply(
        &mut self,
        frame: &mut [u8],
        req: &TxOffload,
        emit: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, OffloadError> {
        match req.tso {
            Some(tso) => self.segment(frame, req, tso, emit),
            None => {
                apply_checksums(frame, req)?;
                emit(frame);
                Ok(1)
            }
        }
    }

    /// Splits a TSO packet into segments of up to MSS payload bytes, each emitted on its own.
    fn segment(
        &mut self,
        frame: &[u8],
        req: &TxOffload,
        tso: TsoRequest,
        emit: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, OffloadError> {
        let ip = ip_layout(frame, req)?;
        let l4t = req.cmd & tx_cmd::L4T_MASK;
        if l4t != tx_cmd::L4T_EOFT_TCP {
            return Err(OffloadError::TsoNotTcp { l4t });
        }
        if tso.mss == 0 {
            return Err(OffloadError::TsoMss);
        }
        let l4len = tx_offset::l4len(req.offset);
        let hdr = ip.l4 + l4len;
        if hdr > frame.len() {
            return Err(OffloadError::Truncated {
                end: hdr,
                len: frame.len(),
            });
        }
        // The TCP data offset (header length in 4-byte words) must be what L4LEN says.
        let doff = frame.get(ip.l4 + 12).map_or(0, |b| usize::from(b >> 4) * 4);
        if l4len < TCP_HEADER_MIN || doff != l4len {
            return Err(OffloadError::L4Header { len: l4len });
        }
        let (Some(headers), Some(body)) = (frame.get(..hdr), frame.get(hdr..)) else {
            return Err(OffloadError::Truncated {
                end: hdr,
                len: frame.len(),
            });
        };
        if body.is_empty() || body.len() != tso.len as usize {
            return Err(OffloadError::TsoLength {
                tso_len: tso.len,
                payload: body.len(),
            });
        }
        // Validated: every read and write below is inside the headers.
        let mss = usize::from(tso.mss);
        let ip_id = be16(frame, ip.l3 + 4);
        let seq = be32(frame, ip.l4 + 4);
        let flags = frame.get(ip.l4 + TCP_FLAGS_AT).copied().unwrap_or(0);
        let segments = body.len().div_ceil(mss);
        let iplen = ip.l4 - ip.l3;
        let mut offset = 0u32;
        for (i, chunk) in body.chunks(mss).enumerate() {
            let s = &mut self.scratch;
            s.clear();
            s.extend_from_slice(headers);
            s.extend_from_slice(chunk);
            // At most 508 + 60 + 16383 bytes: fits 16 bits.
            let l4_bytes = l4len + chunk.len();
            if ip.v6 {
                let payload = iplen - IPV6_HEADER + l4_bytes;
                put16(s, ip.l3 + 4, u16::try_from(payload).unwrap_or(u16::MAX));
            } else {
                put16(
                    s,
                    ip.l3 + 2,
                    u16::try_from(iplen + l4_bytes).unwrap_or(u16::MAX),
                );
                // The ID is a 16-bit counter: the index (below 2^18) wraps with it.
                put16(s, ip.l3 + 4, ip_id.wrapping_add(i as u16));
                ipv4_header_checksum(s, ip.l3, ip.l4);
            }
            put32(s, ip.l4 + 4, seq.wrapping_add(offset));
            let mut f = flags;
            if i > 0 {
                f &= !TCP_CWR;
            }
            if i + 1 < segments {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if let Some(b) = s.get_mut(ip.l4 + TCP_FLAGS_AT) {
                *b = f;
            }
            let end = s.len();
            inet_l4_checksum(s, &ip, end, IPPROTO_TCP, TCP_CSUM_AT);
            emit(s);
            // A chunk is at most MSS (14 bits).
            offset = offset.wrapping_add(u32::try_from(chunk.len()).unwrap_or(0));
        }
        Ok(segments)
    }
}

/// Where the IP header is: `frame[l3..l4]`, IPv4 or IPv6.
#[derive(Debug, Clone, Copy)]
struct IpLayout {
    l3: usize,
    l4: usize,
    v6: bool,
}

/// Checks the IP header OFFSET and IIPT describe: inside the frame, of the IIPT's version,
/// IPLEN equal to the IPv4 IHL or at least an IPv6 header.
fn ip_layout(frame: &[u8], req: &TxOffload) -> Result<IpLayout, OffloadError> {
    let (v6, version, min) = match req.cmd & tx_cmd::IIPT_MASK {
        tx_cmd::IIPT_IPV6 => (true, 6, IPV6_HEADER),
        tx_cmd::IIPT_IPV4 | tx_cmd::IIPT_IPV4_CSUM => (false, 4, IPV4_HEADER_MIN),
        _ => return Err(OffloadError::NotIp),
    };
    let l3 = tx_offset::maclen(req.offset);
    let iplen = tx_offset::iplen(req.offset);
    let l4 = l3 + iplen;
    if iplen < min {
        return Err(OffloadError::IpHeaderLength { version, iplen });
    }
    let Some(&first) = frame.get(l3).filter(|_| l4 <= frame.len()) else {
        return Err(OffloadError::Truncated {
            end: l4,
            len: frame.len(),
        });
    };
    if first >> 4 != version {
        return Err(OffloadError::IpVersion {
            expected: version,
            found: first >> 4,
        });
    }
    if !v6 && usize::from(first & 0xF) * 4 != iplen {
        return Err(OffloadError::IpHeaderLength { version, iplen });
    }
    Ok(IpLayout { l3, l4, v6 })
}

/// Where the L4 bytes end by the IP length field (0: the end of the frame).
fn l4_end(frame: &[u8], ip: &IpLayout) -> Result<usize, OffloadError> {
    let (field, base) = if ip.v6 {
        (be16(frame, ip.l3 + 4), ip.l3 + IPV6_HEADER)
    } else {
        (be16(frame, ip.l3 + 2), ip.l3)
    };
    if field == 0 {
        return Ok(frame.len());
    }
    let end = base + usize::from(field);
    if end < ip.l4 || end > frame.len() {
        return Err(OffloadError::IpLength {
            end,
            len: frame.len(),
        });
    }
    Ok(end)
}

/// The checksums `req` asks for (no TSO), written into `frame` in place; on error the frame is
/// unchanged.
pub fn apply_checksums(frame: &mut [u8], req: &TxOffload) -> Result<(), OffloadError> {
    let l4t = req.cmd & tx_cmd::L4T_MASK;
    let ip_csum = req.cmd & tx_cmd::IIPT_MASK == tx_cmd::IIPT_IPV4_CSUM;
    if !ip_csum && l4t == 0 {
        return Ok(());
    }
    let ip = ip_layout(frame, req)?;
    // Validate the L4 part before writing anything.
    let l4 = match l4t {
        0 => None,
        _ => {
            let end = l4_end(frame, &ip)?;
            let (min, field) = match l4t {
                tx_cmd::L4T_EOFT_TCP => (TCP_HEADER_MIN, TCP_CSUM_AT),
                tx_cmd::L4T_EOFT_UDP => (UDP_HEADER, UDP_CSUM_AT),
                _ => (SCTP_HEADER, SCTP_CSUM_AT),
            };
            if end - ip.l4 < min {
                return Err(OffloadError::L4Header { len: end - ip.l4 });
            }
            Some((end, field))
        }
    };
    if ip_csum {
        ipv4_header_checksum(frame, ip.l3, ip.l4);
    }
    if let Some((end, field)) = l4 {
        match l4t {
            tx_cmd::L4T_EOFT_TCP => inet_l4_checksum(frame, &ip, end, IPPROTO_TCP, field),
            tx_cmd::L4T_EOFT_UDP => inet_l4_checksum(frame, &ip, end, IPPROTO_UDP, field),
            _ => sctp_checksum(frame, ip.l4, end),
        }
    }
    Ok(())
}

/// Writes the IPv4 header checksum of `frame[l3..l4]`.
fn ipv4_header_checksum(frame: &mut [u8], l3: usize, l4: usize) {
    put16(frame, l3 + IPV4_CSUM_AT, 0);
    let sum = frame.get(l3..l4).map_or(0, ones_sum);
    put16(frame, l3 + IPV4_CSUM_AT, !fold(sum));
}

/// Writes the TCP or UDP checksum of `frame[ip.l4..end]` (checksum field at `field` in the L4
/// header) over the pseudo-header of `proto` and the L4 length.
fn inet_l4_checksum(frame: &mut [u8], ip: &IpLayout, end: usize, proto: u8, field: usize) {
    let at = ip.l4 + field;
    put16(frame, at, 0);
    let addrs = if ip.v6 {
        frame.get(ip.l3 + 8..ip.l3 + IPV6_HEADER)
    } else {
        frame.get(ip.l3 + 12..ip.l3 + IPV4_HEADER_MIN)
    };
    let len = end.saturating_sub(ip.l4);
    // The length counts as one 16-bit word for IPv4 and two for IPv6: the fold makes adding
    // it whole the same thing.
    let mut sum = addrs.map_or(0, ones_sum) + u64::from(proto) + len as u64;
    sum += frame.get(ip.l4..end).map_or(0, ones_sum);
    let mut csum = !fold(sum);
    if proto == IPPROTO_UDP && csum == 0 {
        csum = 0xFFFF;
    }
    put16(frame, at, csum);
}

/// Writes the SCTP CRC32c of `frame[l4..end]` (little-endian, field zeroed while computed).
fn sctp_checksum(frame: &mut [u8], l4: usize, end: usize) {
    let at = l4 + SCTP_CSUM_AT;
    if let Some(f) = frame.get_mut(at..at + 4) {
        f.fill(0);
    }
    let crc = frame.get(l4..end).map_or(0, crc32c);
    if let Some(f) = frame.get_mut(at..at + 4) {
        f.copy_from_slice(&crc.to_le_bytes());
    }
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte padded
/// with zero), not yet folded: 32-bit words added into 64 bits, which [`fold`] reduces to the
/// same 16-bit sum (2^16 is 1 modulo 0xFFFF).
fn ones_sum(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        if let &[a, b, c, d] = w {
            sum += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    sum + match *words.remainder() {
        [a] => u64::from(a) << 8,
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c] => u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        _ => 0,
    }
}

/// Folds a [`ones_sum`] to 16 bits with end-around carry.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), one entry per byte value.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// The CRC32c of `data` (initial value and final XOR all ones), as SCTP and iSCSI use it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        // The index is masked to a byte.
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The big-endian 16-bit value at `at` (0 beyond the slice).
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// The big-endian 32-bit value at `at` (0 beyond the slice).
fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

/// Stores `v` big-endian at `at` (callers checked the range; nothing is written beyond it).
fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(f) = b.get_mut(at..at + 2) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

/// Stores `v` big-endian at `at` (callers checked the range; nothing is written beyond it).
fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(f) = b.get_mut(at..at + 4) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

/// Test frames and an independent checksum verifier, shared by the engine tests.
#[cfg(test)]
pub(crate) mod test_frames {
    use super::TxOffload;
    use crate::spec::desc::tx_offset;

    // ----- an independent verifier -------------------------------------------------------

    /// The Internet checksum the plain way: 16-bit words one at a time, carry folded back
    /// after every addition. 0 over data that includes a correct checksum field.
    pub(crate) fn internet_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hi = u32::from(bytes[i]);
            let lo = if i + 1 < bytes.len() {
                u32::from(bytes[i + 1])
            } else {
                0
            };
            sum += (hi << 8) | lo;
            if sum > 0xFFFF {
                sum = (sum & 0xFFFF) + 1;
            }
            i += 2;
        }
        !(sum as u16)
    }

    /// The pseudo-header bytes of RFC 793/768 (IPv4) or RFC 8200 (IPv6), spelled out.
    pub(crate) fn pseudo_header(f: &[u8], l3: usize, v6: bool, proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        if v6 {
            p.extend_from_slice(&f[l3 + 8..l3 + 40]);
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            p.extend_from_slice(&f[l3 + 12..l3 + 20]);
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        p
    }

    /// Whether the L4 checksum of `f[l4..end]` verifies.
    pub(crate) fn l4_ok(f: &[u8], l3: usize, l4: usize, end: usize, v6: bool, proto: u8) -> bool {
        let mut all = pseudo_header(f, l3, v6, proto, end - l4);
        all.extend_from_slice(&f[l4..end]);
        internet_checksum(&all) == 0
    }

    /// CRC32c bit by bit.
    pub(crate) fn crc32c_bitwise(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                let mask = (c & 1).wrapping_neg();
                c = (c >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
        !c
    }

    // ----- test frames ---------------------------------------------------------------------

    pub(crate) const MAC: usize = 14;

    pub(crate) fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// Ethernet + IPv4 (20 bytes, ID 0x1234, DF) + `l4`; the header checksum is garbage.
    pub(crate) fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = eth(0x0800);
        let tot = (20 + l4.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0xBA, 0xD0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(l4);
        f
    }

    /// Ethernet + IPv6 (40 bytes, plus `ext` extension header bytes, which must start with the
    /// next header) + `l4`.
    pub(crate) fn ipv6(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut f = eth(0x86DD);
        let plen = (ext.len() + l4.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0, 0, 2,
        ]);
        f.extend_from_slice(ext);
        f.extend_from_slice(l4);
        f
    }

    /// A TCP header with 12 bytes of options (NOP, NOP, timestamps: 32 bytes) and a payload.
    pub(crate) fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0x9c, 0x40, 0x00, 0x50];
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        t.extend_from_slice(&[8 << 4, flags, 0xFF, 0xFF, 0xDE, 0xAD, 0, 0]);
        t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t.extend_from_slice(payload);
        t
    }

    pub(crate) fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0x30, 0x39, 0x00, 0x35];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0xDE, 0xAD]);
        u.extend_from_slice(payload);
        u
    }

    pub(crate) fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    /// Seeds the L4 checksum field with the pseudo-header sum, as Linux leaves it for
    /// CHECKSUM_PARTIAL (`~csum_*_magic(saddr, daddr, len, proto, 0)`).
    pub(crate) fn seed_partial(f: &mut [u8], l3: usize, l4: usize, v6: bool, proto: u8, at: usize) {
        let len = f.len() - l4;
        let p = pseudo_header(f, l3, v6, proto, len);
        let partial = !internet_checksum(&p);
        f[l4 + at..l4 + at + 2].copy_from_slice(&partial.to_be_bytes());
    }

    /// A request with OFFSET from lengths in bytes.
    pub(crate) fn req(cmd: u16, mac: usize, ip: usize, l4: usize) -> TxOffload {
        TxOffload::new(cmd, tx_offset::encode(mac, ip, l4), None)
    }
}

#[cfg(test)]
mod tests {
    use super::test_frames::*;
    use super::*;

    fn apply(f: &mut [u8], r: &TxOffload) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = Vec::new();
        let n = TxOffloader::new().apply(f, r, &mut |s| out.push(s.to_vec()))?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    const V4_UDP: u16 = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_UDP;
    const V4_TCP: u16 = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_TCP;
    const V6_UDP: u16 = tx_cmd::IIPT_IPV6 | tx_cmd::L4T_EOFT_UDP;
    const V6_TCP: u16 = tx_cmd::IIPT_IPV6 | tx_cmd::L4T_EOFT_TCP;

    // ----- checksums -----------------------------------------------------------------------

    #[test]
    fn the_verifier_and_the_engine_agree_on_known_values() {
        // The classic example IPv4 header (checksum 0xB861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xB861);
        assert_eq!(!fold(ones_sum(&h)), 0xB861);
        // Odd lengths and every remainder size.
        for n in 0..40 {
            let d = payload(n, 0xF3);
            assert_eq!(!fold(ones_sum(&d)), internet_checksum(&d), "{n} bytes");
        }
        // RFC 3720 B.4 / RFC 3309 CRC32c vectors.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(&payload(1000, 3)), crc32c_bitwise(&payload(1000, 3)));
    }

    #[test]
    fn ipv4_udp_partial_checksum_is_completed() {
        let mut f = ipv4(17, &udp(&payload(100, 1)));
        seed_partial(&mut f, MAC, 34, false, 17, 6);
        let before = f.clone();
        assert!(!l4_ok(&f, MAC, 34, f.len(), false, 17));
        assert_ne!(internet_checksum(&f[MAC..34]), 0);
        let r = req(V4_UDP | tx_cmd::EOP, 14, 20, 8);
        assert!(r.is_active());
        let out = apply(&mut f, &r).expect("applied");
        assert_eq!(out, vec![f.clone()]);
        assert_eq!(internet_checksum(&f[MAC..34]), 0, "IPv4 header checksum");
        assert!(l4_ok(&f, MAC, 34, f.len(), false, 17), "UDP checksum");
        // Only the two checksum fields changed.
        let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != before[i]).collect();
        assert!(
            changed.iter().all(|&i| matches!(i, 24 | 25 | 40 | 41)),
            "{changed:?}"
        );
    }

    #[test]
    fn ipv4_tcp_checksum_is_right_whatever_was_seeded() {
        for seed in [0u16, 0xDEAD, 0xFFFF] {
            let mut f = ipv4(6, &tcp(1000, 0x18, &payload(333, 2)));
            f[34 + 16..34 + 18].copy_from_slice(&seed.to_be_bytes());
            apply(&mut f, &req(V4_TCP, 14, 20, 32)).expect("applied");
            assert!(l4_ok(&f, MAC, 34, f.len(), false, 6), "seed {seed:#x}");
            assert_eq!(internet_checksum(&f[MAC..34]), 0);
        }
        // IIPT_IPV4 (no header checksum asked for): the header is left alone.
        let mut f = ipv4(6, &tcp(1, 0x10, &payload(20, 3)));
        apply(
            &mut f,
            &req(tx_cmd::IIPT_IPV4 | tx_cmd::L4T_EOFT_TCP, 14, 20, 32),
        )
        .expect("applied");
        assert_eq!(&f[24..26], &[0xBA, 0xD0]);
        assert!(l4_ok(&f, MAC, 34, f.len(), false, 6));
    }

    #[test]
    fn ipv6_tcp_and_udp_checksums() {
        let mut t = ipv6(6, &[], &tcp(7, 0x18, &payload(501, 4)));
        seed_partial(&mut t, MAC, 54, true, 6, 16);
        apply(&mut t, &req(V6_TCP, 14, 40, 32)).expect("tcp");
        assert!(l4_ok(&t, MAC, 54, t.len(), true, 6));
        let mut u = ipv6(17, &[], &udp(&payload(64, 5)));
        seed_partial(&mut u, MAC, 54, true, 17, 6);
        apply(&mut u, &req(V6_UDP, 14, 40, 8)).expect("udp");
        assert!(l4_ok(&u, MAC, 54, u.len(), true, 17));
        // A hop-by-hop header (8 bytes, next header UDP): IPLEN 48, L4T names the protocol.
        let ext = [17, 0, 1, 4, 0, 0, 0, 0];
        let mut e = ipv6(0, &ext, &udp(&payload(31, 6)));
        apply(&mut e, &req(V6_UDP, 14, 48, 8)).expect("ext");
        assert!(l4_ok(&e, MAC, 62, e.len(), true, 17));
        // And with a VLAN tag in the frame (MACLEN 18).
        let mut v = ipv6(17, &[], &udp(&payload(10, 7)));
        v.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        apply(&mut v, &req(V6_UDP, 18, 40, 8)).expect("vlan");
        assert!(l4_ok(&v, 18, 58, v.len(), true, 17));
    }

    #[test]
    fn udp_checksum_zero_is_sent_as_all_ones_and_tcp_keeps_zero() {
        for proto in [17u8, 6] {
            let l4 = if proto == 17 {
                udp(&[0; 10])
            } else {
                tcp(5, 0x10, &[0; 10])
            };
            let mut f = ipv4(proto, &l4);
            let at = if proto == 17 { 6 } else { 16 };
            // Choose the last payload word so that the sum with the field zeroed is 0xFFFF,
            // i.e. the computed checksum is 0.
            let n = f.len();
            f[34 + at..34 + at + 2].fill(0);
            f[n - 2..].fill(0);
            let mut all = pseudo_header(&f, MAC, false, proto, n - 34);
            all.extend_from_slice(&f[34..]);
            let sum = !internet_checksum(&all);
            f[n - 2..].copy_from_slice(&(0xFFFF - sum).to_be_bytes());
            let cmd = tx_cmd::IIPT_IPV4
                | if proto == 17 {
                    tx_cmd::L4T_EOFT_UDP
                } else {
                    tx_cmd::L4T_EOFT_TCP
                };
            let l4len = if proto == 17 { 8 } else { 32 };
            apply(&mut f, &req(cmd, 14, 20, l4len)).expect("applied");
            let got = u16::from_be_bytes([f[34 + at], f[35 + at]]);
            assert_eq!(got, if proto == 17 { 0xFFFF } else { 0 }, "proto {proto}");
            assert!(l4_ok(&f, MAC, 34, n, false, proto));
        }
    }

    #[test]
    fn trailing_padding_is_outside_the_l4_checksum() {
        let mut f = ipv4(17, &udp(&[1, 2, 3, 4]));
        f.resize(60, 0xEE);
        apply(&mut f, &req(V4_UDP, 14, 20, 8)).expect("applied");
        // The IP packet is 32 bytes: UDP covers 12 of them.
        assert!(l4_ok(&f, MAC, 34, 46, false, 17));
        assert_eq!(&f[46..], &[0xEE; 14]);
    }

    #[test]
    fn ipv4_header_checksum_alone_and_iipt_alone() {
        let mut f = ipv4(1, &payload(30, 8));
        let l4 = f[34..].to_vec();
        apply(&mut f, &req(tx_cmd::IIPT_IPV4_CSUM, 14, 20, 0)).expect("applied");
        assert_eq!(internet_checksum(&f[MAC..34]), 0);
        assert_eq!(&f[34..], &l4[..]);
        // IIPT_IPV4 or IPV6 alone asks for nothing: not active, nothing touched even with
        // nonsense offsets.
        for cmd in [
            tx_cmd::IIPT_IPV4,
            tx_cmd::IIPT_IPV6,
            tx_cmd::EOP | tx_cmd::RS,
        ] {
            let r = TxOffload::new(cmd, 0x3FFFF, None);
            assert!(!r.is_active());
            let mut g = ipv4(1, &payload(30, 8));
            let before = g.clone();
            assert_eq!(apply(&mut g, &r), Ok(vec![before.clone()]));
            assert_eq!(g, before);
        }
    }

    #[test]
    fn sctp_crc32c_is_inserted_little_endian() {
        // Common header (ports, verification tag, checksum) and a DATA-ish chunk.
        let mut s = vec![0x13, 0x88, 0x13, 0x89, 1, 2, 3, 4, 0xAA, 0xBB, 0xCC, 0xDD];
        s.extend_from_slice(&payload(48, 9));
        let mut f = ipv4(132, &s);
        apply(
            &mut f,
            &req(tx_cmd::IIPT_IPV4 | tx_cmd::L4T_EOFT_SCTP, 14, 20, 12),
        )
        .expect("applied");
        let mut zeroed = f[34..].to_vec();
        zeroed[8..12].fill(0);
        assert_eq!(&f[42..46], &crc32c_bitwise(&zeroed).to_le_bytes());
        assert_eq!(&f[46..], &s[12..]);
    }

    #[test]
    fn bad_requests_are_refused_and_leave_the_frame_alone() {
        let good = ipv4(17, &udp(&payload(20, 1)));
        let v6 = ipv6(17, &[], &udp(&payload(20, 1)));
        let cases: Vec<(Vec<u8>, TxOffload, OffloadError)> = vec![
            // MACLEN past the frame.
            (
                good.clone(),
                req(V4_UDP, 254, 20, 8),
                OffloadError::Truncated { end: 274, len: 62 },
            ),
            // IPLEN too short, 0, and not IHL * 4.
            (
                good.clone(),
                req(V4_UDP, 14, 16, 8),
                OffloadError::IpHeaderLength {
                    version: 4,
                    iplen: 16,
                },
            ),
            (
                good.clone(),
                req(V4_UDP, 14, 0, 8),
                OffloadError::IpHeaderLength {
                    version: 4,
                    iplen: 0,
                },
            ),
            (
                good.clone(),
                req(V4_UDP, 14, 24, 8),
                OffloadError::IpHeaderLength {
                    version: 4,
                    iplen: 24,
                },
            ),
            (
                v6.clone(),
                req(V6_UDP, 14, 36, 8),
                OffloadError::IpHeaderLength {
                    version: 6,
                    iplen: 36,
                },
            ),
            // The wrong IP version for IIPT, both ways.
            (
                good.clone(),
                req(V6_UDP, 14, 40, 8),
                OffloadError::IpVersion {
                    expected: 6,
                    found: 4,
                },
            ),
            (
                v6.clone(),
                req(V4_UDP, 14, 20, 8),
                OffloadError::IpVersion {
                    expected: 4,
                    found: 6,
                },
            ),
            // L4 checksum on a packet not marked IP.
            (
                good.clone(),
                req(tx_cmd::L4T_EOFT_TCP, 14, 20, 20),
                OffloadError::NotIp,
            ),
            // IPLEN running past a frame that is only headers.
            (
                good[..30].to_vec(),
                req(V4_UDP, 14, 20, 8),
                OffloadError::Truncated { end: 34, len: 30 },
            ),
        ];
        for (i, (mut f, r, want)) in cases.into_iter().enumerate() {
            let before = f.clone();
            assert_eq!(apply(&mut f, &r), Err(want), "case {i}");
            assert_eq!(f, before, "case {i}: unchanged");
        }
        // The IPv4 total length beyond the frame, and before the L4 header.
        let mut long = good.clone();
        long[16..18].copy_from_slice(&100u16.to_be_bytes());
        let before = long.clone();
        assert_eq!(
            apply(&mut long, &req(V4_UDP, 14, 20, 8)),
            Err(OffloadError::IpLength { end: 114, len: 62 })
        );
        assert_eq!(long, before);
        let mut short = good.clone();
        short[16..18].copy_from_slice(&10u16.to_be_bytes());
        assert!(matches!(
            apply(&mut short, &req(V4_UDP, 14, 20, 8)),
            Err(OffloadError::IpLength { .. })
        ));
        // An IPv6 payload length beyond the frame.
        let mut v = v6.clone();
        v[18..20].copy_from_slice(&500u16.to_be_bytes());
        assert!(matches!(
            apply(&mut v, &req(V6_TCP, 14, 40, 20)),
            Err(OffloadError::IpLength { .. })
        ));
        // An L4 part too short for a TCP header (a UDP-sized packet said to be TCP).
        let mut t = good.clone();
        assert_eq!(
            apply(&mut t, &req(V4_TCP, 14, 20, 20)),
            Ok(vec![t.clone()]),
            "28 bytes hold a TCP header"
        );
        let mut tiny = ipv4(6, &[0u8; 12]);
        let before = tiny.clone();
        assert_eq!(
            apply(&mut tiny, &req(V4_TCP, 14, 20, 20)),
            Err(OffloadError::L4Header { len: 12 })
        );
        assert_eq!(tiny, before, "not even the IP checksum was written");
        // Every OFFSET against a short frame: refused or applied, never a panic.
        for off in (0..=0x3FFFFu32).step_by(97) {
            for cmd in [V4_TCP, V6_UDP, tx_cmd::IIPT_IPV4 | tx_cmd::L4T_EOFT_SCTP] {
                let mut f = good[..40].to_vec();
                let _ =
                    TxOffloader::new().apply(&mut f, &TxOffload::new(cmd, off, None), &mut |_| {});
            }
        }
    }

    // ----- TSO -----------------------------------------------------------------------------

    fn tso(len: u32, mss: u16) -> Option<TsoRequest> {
        TsoRequest::from_context(&TxContextDesc::new(tx_ctx::CMD_TSO, len, mss, 0))
    }

    /// A TSO super-frame as Linux hands it to iavf: IPv4 total length and header checksum
    /// zeroed, the TCP checksum seeded with the pseudo-header sum without the length. The
    /// sequence number wraps within the third 1448-byte segment.
    fn tso_v4(body: &[u8], flags: u8) -> Vec<u8> {
        let mut f = ipv4(6, &tcp(0xFFFF_FA00, flags, body));
        f[16..18].fill(0);
        f[24..26].fill(0);
        let partial = !internet_checksum(&pseudo_header(&f, MAC, false, 6, 0));
        f[50..52].copy_from_slice(&partial.to_be_bytes());
        f
    }

    #[test]
    fn tso_ipv4_splits_4000_bytes_at_mss_1448_into_three_segments() {
        let body = payload(4000, 11);
        let flags = 0x80 | 0x10 | 0x08 | 0x01; // CWR ACK PSH FIN
        let mut f = tso_v4(&body, flags);
        let r = TxOffload::new(V4_TCP, tx_offset::encode(14, 20, 32), tso(4000, 1448));
        assert!(r.is_active());
        assert_eq!(r.tso_frame_len(), Some(f.len()));
        let segs = apply(&mut f, &r).expect("segmented");
        assert_eq!(segs.len(), 3);
        let sizes = [1448usize, 1448, 1104];
        let want_flags = [0x80 | 0x10, 0x10, 0x10 | 0x08 | 0x01];
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.len(), 66 + sizes[i], "segment {i} length");
            assert_eq!(&s[..14], &f[..14], "Ethernet header copied");
            let tot = u16::from_be_bytes([s[16], s[17]]);
            assert_eq!(usize::from(tot), 20 + 32 + sizes[i]);
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                0x1234 + i as u16,
                "IP ID"
            );
            assert_eq!(
                internet_checksum(&s[MAC..34]),
                0,
                "IPv4 header checksum {i}"
            );
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(
                seq,
                0xFFFF_FA00u32.wrapping_add(1448 * i as u32),
                "sequence {i}"
            );
            assert_eq!(s[34 + 13], want_flags[i], "flags {i}");
            assert!(l4_ok(s, MAC, 34, s.len(), false, 6), "TCP checksum {i}");
            // Ports, ack, window and options as the super-frame had them.
            assert_eq!(&s[34..38], &f[34..38]);
            assert_eq!(&s[42..46], &f[42..46]);
            assert_eq!(&s[48..50], &f[48..50]);
            assert_eq!(&s[54..66], &f[54..66]);
            joined.extend_from_slice(&s[66..]);
        }
        assert_eq!(joined, body, "the payload reassembles");
    }

    #[test]
    fn tso_ipv6_and_exact_multiples_and_a_single_segment() {
        let body = payload(3000, 12);
        let mut f = ipv6(6, &[], &tcp(77, 0x18, &body));
        f[18..20].fill(0);
        let r = TxOffload::new(V6_TCP, tx_offset::encode(14, 40, 32), tso(3000, 1000));
        let segs = apply(&mut f, &r).expect("segmented");
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.len(), 14 + 40 + 32 + 1000);
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                1032,
                "payload length {i}"
            );
            let seq = u32::from_be_bytes([s[58], s[59], s[60], s[61]]);
            assert_eq!(seq, 77 + 1000 * i as u32);
            assert_eq!(s[54 + 13], if i == 2 { 0x18 } else { 0x10 });
            assert!(l4_ok(s, MAC, 54, s.len(), true, 6), "TCP checksum {i}");
            assert_eq!(&s[86..], &body[1000 * i..1000 * (i + 1)]);
        }
        // Less than one MSS: one segment, keeping FIN/PSH and CWR.
        let mut one = tso_v4(&payload(500, 13), 0x80 | 0x18 | 0x01);
        let r = TxOffload::new(V4_TCP, tx_offset::encode(14, 20, 32), tso(500, 1448));
        let segs = apply(&mut one, &r).expect("one");
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0][34 + 13], 0x80 | 0x18 | 0x01);
        assert!(l4_ok(&segs[0], MAC, 34, segs[0].len(), false, 6));
        assert_eq!(internet_checksum(&segs[0][MAC..34]), 0);
    }

    #[test]
    fn tso_reuses_its_scratch_buffer() {
        let body = payload(9000, 14);
        let mut off = TxOffloader::new();
        let r = TxOffload::new(V4_TCP, tx_offset::encode(14, 20, 32), tso(9000, 1448));
        let mut n = 0;
        let mut f = tso_v4(&body, 0x10);
        off.apply(&mut f, &r, &mut |_| n += 1).expect("first");
        let (ptr, cap) = (off.scratch.as_ptr(), off.scratch.capacity());
        assert!(cap >= 66 + 1448);
        for _ in 0..3 {
            let mut f = tso_v4(&body, 0x10);
            off.apply(&mut f, &r, &mut |_| n += 1).expect("again");
        }
        assert_eq!(n, 4 * 7);
        assert_eq!((off.scratch.as_ptr(), off.scratch.capacity()), (ptr, cap));
    }

    #[test]
    fn bad_tso_requests_emit_nothing() {
        let body = payload(4000, 15);
        let f = tso_v4(&body, 0x10);
        let off = tx_offset::encode(14, 20, 32);
        let cases = [
            (
                TxOffload::new(V4_TCP, off, tso(3999, 1448)),
                OffloadError::TsoLength {
                    tso_len: 3999,
                    payload: 4000,
                },
            ),
            (
                TxOffload::new(V4_TCP, off, tso(4001, 1448)),
                OffloadError::TsoLength {
                    tso_len: 4001,
                    payload: 4000,
                },
            ),
            (
                TxOffload::new(V4_TCP, off, tso(4000, 0)),
                OffloadError::TsoMss,
            ),
            (
                TxOffload::new(V4_UDP, tx_offset::encode(14, 20, 8), tso(4024, 1448)),
                OffloadError::TsoNotTcp {
                    l4t: tx_cmd::L4T_EOFT_UDP,
                },
            ),
            (
                TxOffload::new(tx_cmd::IIPT_IPV4, off, tso(4000, 1448)),
                OffloadError::TsoNotTcp { l4t: 0 },
            ),
            (
                TxOffload::new(tx_cmd::L4T_EOFT_TCP, off, tso(4000, 1448)),
                OffloadError::NotIp,
            ),
            // L4LEN not the TCP data offset (the header has options: 32 bytes).
            (
                TxOffload::new(V4_TCP, tx_offset::encode(14, 20, 20), tso(4012, 1448)),
                OffloadError::L4Header { len: 20 },
            ),
        ];
        for (i, (r, want)) in cases.into_iter().enumerate() {
            let mut g = f.clone();
            let mut n = 0;
            let got = TxOffloader::new().apply(&mut g, &r, &mut |_| n += 1);
            assert_eq!(got, Err(want), "case {i}");
            assert_eq!(n, 0, "case {i}: nothing emitted");
        }
        // Headers beyond a short frame: MACLEN, and L4LEN.
        let short = tso_v4(&payload(10, 16), 0x10);
        for (mac, l4len, end) in [(254, 32, 274), (14, 60, 94)] {
            let r = TxOffload::new(V4_TCP, tx_offset::encode(mac, 20, l4len), tso(10, 1448));
            let mut g = short.clone();
            assert_eq!(
                apply(&mut g, &r),
                Err(OffloadError::Truncated { end, len: 76 })
            );
        }
        // No payload at all.
        let mut hdr_only = tso_v4(&[], 0x10);
        let r = TxOffload::new(V4_TCP, off, tso(0, 1448));
        assert_eq!(
            apply(&mut hdr_only, &r),
            Err(OffloadError::TsoLength {
                tso_len: 0,
                payload: 0
            })
        );
    }

    #[test]
    fn tso_requests_come_only_from_tso_context_descriptors() {
        assert_eq!(
            tso(3000, 1000),
            Some(TsoRequest {
                len: 3000,
                mss: 1000
            })
        );
        let plain = TxContextDesc::new(tx_ctx::CMD_IL2TAG2, 3000, 1000, 5);
        assert_eq!(TsoRequest::from_context(&plain), None);
        let r = TxOffload::new(0, tx_offset::encode(14, 20, 32), tso(100, 10));
        assert_eq!(r.header_len(), 66);
        assert_eq!(r.tso_frame_len(), Some(166));
        assert_eq!(TxOffload::new(0, 0x3FFFF, None).tso_frame_len(), None);
        let max = TxOffload::new(0, 0x3FFFF, tso(u32::MAX, 1));
        assert_eq!(max.tso_frame_len(), Some(MAX_TSO_FRAME));
        assert_eq!(MAX_TX_HEADERS, 254 + 508 + 60);
    }
}
