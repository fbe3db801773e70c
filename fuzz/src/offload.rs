//! Properties of the iavf TX offloads (`emudev_iavf::datapath::TxOffloader`) that the
//! `tx_offload` target checks, with tests that run them on stable Rust.
//!
//! Input of [`check_offload`]: bytes 0-1 the data descriptor's CMD (little-endian), 2-5 its
//! OFFSET, byte 6 whether a TSO context descriptor came first (bit 0), 7-9 TSO_LEN (18 bits),
//! 10-11 MSS (14 bits); the rest is the gathered frame, as a guest could make it. Properties:
//!
//! - applying never panics, whatever the request and the frame;
//! - a refused request emits nothing; an accepted one emits as many frames as it says;
//! - without TSO exactly one frame comes out, as long as the input, and only the checksum
//!   fields may differ from it (the IPv4 header checksum and the L4 checksum or SCTP CRC32c: at
//!   most 6 bytes);
//! - with TSO every segment starts with the packet's headers' length of header bytes, carries at
//!   most MSS payload bytes, and the payloads in order are the packet's payload.
//!
//! A violated property panics with the input in hex.

use emudev_iavf::datapath::{TsoRequest, TxOffload, TxOffloader};

use crate::hex;

/// Fuzz entry for `tx_offload`. Panics on a violated property.
pub fn check_offload(data: &[u8]) {
    if let Err(e) = offload_properties(data) {
        panic!("{e}\ninput: {}", hex(data));
    }
}

/// The request and the frame an input stands for.
fn parse(data: &[u8]) -> Option<(TxOffload, &[u8])> {
    let head = data.get(..12)?;
    let cmd = u16::from_le_bytes([head[0], head[1]]);
    let offset = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) & 0x3_FFFF;
    let tso = (head[6] & 1 != 0).then(|| TsoRequest {
        len: u32::from_le_bytes([head[7], head[8], head[9], 0]) & 0x3_FFFF,
        mss: u16::from_le_bytes([head[10], head[11]]) & 0x3FFF,
    });
    Some((TxOffload::new(cmd, offset, tso), &data[12..]))
}

/// The properties; `Err` names the first one violated.
pub fn offload_properties(data: &[u8]) -> Result<(), String> {
    let Some((req, input)) = parse(data) else {
        return Ok(());
    };
    let mut frame = input.to_vec();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut offloader = TxOffloader::new();
    let result = offloader.apply(&mut frame, &req, &mut |f| out.push(f.to_vec()));
    let n = match result {
        Err(e) => {
            if !out.is_empty() {
                return Err(format!("refused ({e}) but {} frame(s) went out", out.len()));
            }
            return Ok(());
        }
        Ok(n) => n,
    };
    if n != out.len() {
        return Err(format!("said {n} frame(s), emitted {}", out.len()));
    }
    match req.tso {
        None => {
            let [f] = out.as_slice() else {
                return Err(format!("{} frames without TSO", out.len()));
            };
            if f.len() != input.len() {
                return Err(format!("length {} became {}", input.len(), f.len()));
            }
            // The IPv4 header checksum (2 bytes) and a TCP/UDP (2) or SCTP CRC32c (4) field.
            let changed = f.iter().zip(input).filter(|(a, b)| a != b).count();
            if changed > 6 {
                return Err(format!("{changed} bytes changed; only two checksum fields may"));
            }
        }
        Some(tso) => {
            let hdr = req.header_len();
            let payload = input.get(hdr..).ok_or("TSO accepted a frame shorter than its headers")?;
            let mut joined = Vec::with_capacity(payload.len());
            for (i, s) in out.iter().enumerate() {
                let body = s.get(hdr..).ok_or(format!("segment {i} shorter than the headers"))?;
                if body.is_empty() || body.len() > usize::from(tso.mss) {
                    return Err(format!("segment {i}: {} payload bytes, MSS {}", body.len(), tso.mss));
                }
                joined.extend_from_slice(body);
            }
            if joined != payload {
                return Err("the segments' payloads are not the packet's".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP frame with `body`, and the OFFSET for it.
    fn frame(proto: u8, body: &[u8]) -> (Vec<u8>, u32) {
        let l4 = if proto == 6 { 20 } else { 8 };
        let mut f = vec![0u8; 14 + 20 + l4];
        f[12] = 0x08;
        f[14] = 0x45;
        let total = (20 + l4 + body.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = proto;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        if proto == 6 {
            f[46] = 5 << 4;
        } else {
            f[38..40].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
        }
        f.extend_from_slice(body);
        let offset = 7 | (5 << 7) | ((l4 as u32 / 4) << 14);
        (f, offset)
    }

    fn input(cmd: u16, offset: u32, tso: Option<(u32, u16)>, f: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&cmd.to_le_bytes());
        d.extend_from_slice(&offset.to_le_bytes());
        let (on, len, mss) = tso.map_or((0, 0, 0), |(l, m)| (1, l, m));
        d.push(on);
        d.extend_from_slice(&len.to_le_bytes()[..3]);
        d.extend_from_slice(&mss.to_le_bytes());
        d.extend_from_slice(f);
        d
    }

    const V4_UDP: u16 = 0x60 | 0x300;
    const V4_TCP: u16 = 0x60 | 0x100;
    const V4_SCTP: u16 = 0x60 | 0x200;

    #[test]
    fn checksummed_and_segmented_inputs_hold() {
        let (u, off) = frame(17, &[7u8; 100]);
        offload_properties(&input(V4_UDP, off, None, &u)).expect("udp");
        // SCTP: the CRC32c is 4 bytes, next to the IPv4 header checksum (the fuzzer found the
        // first version of this property counting 4 bytes in all).
        let mut sc = u.clone();
        sc[23] = 132;
        offload_properties(&input(V4_SCTP, off | (1 << 14), None, &sc)).expect("sctp");
        let body: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let (t, off) = frame(6, &body);
        offload_properties(&input(V4_TCP, off, Some((3000, 1000)), &t)).expect("tso");
        offload_properties(&input(V4_TCP, off, Some((3000, 7)), &t)).expect("tiny mss");
    }

    #[test]
    fn refusals_and_garbage_hold() {
        let (t, off) = frame(6, &[1u8; 50]);
        // TSO length that does not match, MSS 0, UDP TSO, offsets past the frame.
        offload_properties(&input(V4_TCP, off, Some((49, 10)), &t)).expect("len");
        offload_properties(&input(V4_TCP, off, Some((50, 0)), &t)).expect("mss 0");
        offload_properties(&input(V4_UDP, off, Some((50, 10)), &t)).expect("udp tso");
        offload_properties(&input(V4_TCP, 0x3_FFFF, None, &t)).expect("offsets");
        offload_properties(&[]).expect("empty");
        // A deterministic sweep of requests over a few frames.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            let mut d = input(
                u16::from_le_bytes([b[0], b[1] & 0x03]),
                u32::from_le_bytes([b[2], b[3], b[4] & 0x3, 0]),
                (b[5] & 1 != 0).then_some((u32::from(b[6]) * 8, u16::from(b[7] & 0x3F))),
                &t,
            );
            let cut = usize::from(b[4]) % (d.len() + 1);
            d.truncate(cut.max(12));
            offload_properties(&d).unwrap_or_else(|e| panic!("{e}: {}", hex(&d)));
        }
    }
}
