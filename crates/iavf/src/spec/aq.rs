//! The admin queue (AQ): the 32-byte descriptor (`struct iavf_aq_desc`), its flag bits, the
//! opcodes a VF and PF exchange, the AQ return codes and the queue sizes the drivers use.
//!
//! A virtchnl message rides on a descriptor with opcode [`OPC_SEND_MSG_TO_PF`] (VF→PF, on the
//! ATQ) or [`OPC_SEND_MSG_TO_VF`] (PF→VF, on the ARQ); the virtchnl op goes in `cookie_high` and
//! the virtchnl status in `cookie_low`; the message body is in the buffer at
//! `addr_high:addr_low`, `datalen` bytes.

use super::{exact, DecodeError, Le};

/// Size of a descriptor.
pub const DESC_SIZE: usize = 32;
/// `IAVF_ADMINQ_DESC_ALIGNMENT`: ring base alignment drivers use.
pub const DESC_ALIGNMENT: u64 = 4096;
/// `IAVF_AQ_LEN`: ring entries both drivers use.
pub const DEFAULT_AQ_LEN: u16 = 32;
/// `IAVF_AQ_BUF_SZ` / `IAVF_MAX_AQ_BUF_SIZE`: buffer size both drivers use, and the largest
/// message the emulated device accepts.
pub const AQ_BUF_SIZE: usize = 4096;
/// `IAVF_AQ_LARGE_BUF`: buffers above this size carry [`FLAG_LB`].
pub const AQ_LARGE_BUF: usize = 512;

/// Descriptor done.
pub const FLAG_DD: u16 = 0x1;
/// Completed.
pub const FLAG_CMP: u16 = 0x2;
/// Error.
pub const FLAG_ERR: u16 = 0x4;
/// VF error.
pub const FLAG_VFE: u16 = 0x8;
/// Large buffer (> [`AQ_LARGE_BUF`]).
pub const FLAG_LB: u16 = 0x200;
/// The buffer is read by the receiver (set on commands that carry data).
pub const FLAG_RD: u16 = 0x400;
/// VF command.
pub const FLAG_VFC: u16 = 0x800;
/// A buffer is attached.
pub const FLAG_BUF: u16 = 0x1000;
/// Silent: no interrupt on completion.
pub const FLAG_SI: u16 = 0x2000;
/// Interrupt on error.
pub const FLAG_EI: u16 = 0x4000;
/// Flush on error.
pub const FLAG_FE: u16 = 0x8000;

/// `iavf_aqc_opc_queue_shutdown`: the VF is about to shut its admin queue down (Linux sends it,
/// synchronous and without a buffer, at the start of every reset it asks for).
pub const OPC_QUEUE_SHUTDOWN: u16 = 0x0003;
/// `iavf_aqc_opc_send_msg_to_pf`: a virtchnl message from the VF.
pub const OPC_SEND_MSG_TO_PF: u16 = 0x0801;
/// `iavf_aqc_opc_send_msg_to_vf`: a virtchnl message (reply or event) to the VF.
pub const OPC_SEND_MSG_TO_VF: u16 = 0x0802;
/// `iavf_aqc_opc_send_msg_to_peer`.
pub const OPC_SEND_MSG_TO_PEER: u16 = 0x0803;

/// AQ return codes (`enum iavf_admin_queue_err`), written to `retval`.
pub mod rc {
    /// Success.
    pub const OK: u16 = 0;
    /// Operation not permitted.
    pub const EPERM: u16 = 1;
    /// No such element.
    pub const ENOENT: u16 = 2;
    /// Bad opcode.
    pub const ESRCH: u16 = 3;
    /// Operation interrupted.
    pub const EINTR: u16 = 4;
    /// I/O error.
    pub const EIO: u16 = 5;
    /// No such resource.
    pub const ENXIO: u16 = 6;
    /// Argument list too long.
    pub const E2BIG: u16 = 7;
    /// Try again.
    pub const EAGAIN: u16 = 8;
    /// Out of memory.
    pub const ENOMEM: u16 = 9;
    /// Permission denied.
    pub const EACCES: u16 = 10;
    /// Bad address.
    pub const EFAULT: u16 = 11;
    /// Device or resource busy.
    pub const EBUSY: u16 = 12;
    /// Object already exists.
    pub const EEXIST: u16 = 13;
    /// Invalid argument.
    pub const EINVAL: u16 = 14;
    /// Not a typewriter.
    pub const ENOTTY: u16 = 15;
    /// No space left.
    pub const ENOSPC: u16 = 16;
    /// Function not implemented.
    pub const ENOSYS: u16 = 17;
    /// Parameter out of range.
    pub const ERANGE: u16 = 18;
    /// Command flushed because of an earlier error.
    pub const EFLUSHED: u16 = 19;
    /// Descriptor contains a bad buffer address.
    pub const BAD_ADDR: u16 = 20;
    /// Operation not allowed in the current mode.
    pub const EMODE: u16 = 21;
    /// File too big.
    pub const EFBIG: u16 = 22;
}

/// `struct iavf_aq_desc` (32 bytes, little-endian), with the `external` parameter view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AqDesc {
    /// Offset 0: `FLAG_*` bits.
    pub flags: u16,
    /// Offset 2: `OPC_*`.
    pub opcode: u16,
    /// Offset 4: buffer length (bytes of message, or of buffer space on a posted ARQ entry).
    pub datalen: u16,
    /// Offset 6: AQ return code ([`rc`]).
    pub retval: u16,
    /// Offset 8: the virtchnl op.
    pub cookie_high: u32,
    /// Offset 12: the virtchnl status (an `i32` stored as `u32`).
    pub cookie_low: u32,
    /// Offset 16.
    pub param0: u32,
    /// Offset 20.
    pub param1: u32,
    /// Offset 24: buffer address, high 32 bits.
    pub addr_high: u32,
    /// Offset 28: buffer address, low 32 bits.
    pub addr_low: u32,
}

impl AqDesc {
    /// Size on the wire.
    pub const SIZE: usize = DESC_SIZE;

    /// Decodes a descriptor from exactly 32 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("iavf_aq_desc", b, Self::SIZE)?;
        let r = Le::new("iavf_aq_desc", b);
        Ok(AqDesc {
            flags: r.u16(0)?,
            opcode: r.u16(2)?,
            datalen: r.u16(4)?,
            retval: r.u16(6)?,
            cookie_high: r.u32(8)?,
            cookie_low: r.u32(12)?,
            param0: r.u32(16)?,
            param1: r.u32(20)?,
            addr_high: r.u32(24)?,
            addr_low: r.u32(28)?,
        })
    }

    /// Decodes a descriptor from its 32-byte array (cannot fail).
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        AqDesc {
            flags: u16_at(0),
            opcode: u16_at(2),
            datalen: u16_at(4),
            retval: u16_at(6),
            cookie_high: u32_at(8),
            cookie_low: u32_at(12),
            param0: u32_at(16),
            param1: u32_at(20),
            addr_high: u32_at(24),
            addr_low: u32_at(28),
        }
    }

    /// Encodes the descriptor.
    pub fn encode(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..2].copy_from_slice(&self.flags.to_le_bytes());
        b[2..4].copy_from_slice(&self.opcode.to_le_bytes());
        b[4..6].copy_from_slice(&self.datalen.to_le_bytes());
        b[6..8].copy_from_slice(&self.retval.to_le_bytes());
        b[8..12].copy_from_slice(&self.cookie_high.to_le_bytes());
        b[12..16].copy_from_slice(&self.cookie_low.to_le_bytes());
        b[16..20].copy_from_slice(&self.param0.to_le_bytes());
        b[20..24].copy_from_slice(&self.param1.to_le_bytes());
        b[24..28].copy_from_slice(&self.addr_high.to_le_bytes());
        b[28..32].copy_from_slice(&self.addr_low.to_le_bytes());
        b
    }

    /// The buffer address (`addr_high:addr_low`).
    pub const fn buffer_addr(&self) -> u64 {
        ((self.addr_high as u64) << 32) | self.addr_low as u64
    }

    /// Sets `addr_high:addr_low`.
    pub fn set_buffer_addr(&mut self, addr: u64) {
        self.addr_high = (addr >> 32) as u32;
        self.addr_low = addr as u32;
    }

    /// The virtchnl op in `cookie_high`.
    pub const fn v_opcode(&self) -> u32 {
        self.cookie_high
    }

    /// The virtchnl status in `cookie_low`.
    pub const fn v_retval(&self) -> i32 {
        self.cookie_low as i32
    }

    /// Whether `flags` has all of `bits`.
    pub const fn has(&self, bits: u16) -> bool {
        self.flags & bits == bits
    }

    /// A VF→PF virtchnl command as `iavf_aq_send_msg_to_pf` builds it: opcode 0x0801, `SI`,
    /// the op in `cookie_high`, status 0; with a message, `BUF | RD` (+ `LB` above 512 bytes),
    /// `datalen` and the buffer address.
    pub fn send_to_pf(v_op: u32, msg_len: u16, buffer: u64) -> Self {
        let mut d = AqDesc {
            flags: FLAG_SI,
            opcode: OPC_SEND_MSG_TO_PF,
            cookie_high: v_op,
            ..Default::default()
        };
        if msg_len > 0 {
            d.flags |= FLAG_BUF | FLAG_RD;
            if usize::from(msg_len) > AQ_LARGE_BUF {
                d.flags |= FLAG_LB;
            }
            d.datalen = msg_len;
            d.set_buffer_addr(buffer);
        }
        d
    }

    /// An ARQ entry as `iavf_alloc_arq_bufs` posts it: `BUF` (+ `LB` above 512 bytes), the
    /// buffer size in `datalen` and the buffer address.
    pub fn posted_receive(buf_len: u16, buffer: u64) -> Self {
        let mut d = AqDesc {
            flags: FLAG_BUF,
            datalen: buf_len,
            ..Default::default()
        };
        if usize::from(buf_len) > AQ_LARGE_BUF {
            d.flags |= FLAG_LB;
        }
        d.set_buffer_addr(buffer);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_iavf_aq_desc() {
        let d = AqDesc {
            flags: 0x0102,
            opcode: 0x0304,
            datalen: 0x0506,
            retval: 0x0708,
            cookie_high: 0x0C0B_0A09,
            cookie_low: 0x100F_0E0D,
            param0: 0x1413_1211,
            param1: 0x1817_1615,
            addr_high: 0x1C1B_1A19,
            addr_low: 0x201F_1E1D,
        };
        let b = d.encode();
        let want: Vec<u8> = [
            0x02u8, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E,
            0x0F, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C,
            0x1D, 0x1E, 0x1F, 0x20,
        ]
        .to_vec();
        assert_eq!(b.to_vec(), want);
        assert_eq!(AqDesc::decode(&b), Ok(d));
        assert_eq!(AqDesc::from_bytes(&b), d);
        assert_eq!(d.buffer_addr(), 0x1C1B_1A19_201F_1E1D);
    }

    #[test]
    fn decode_rejects_other_lengths() {
        assert!(AqDesc::decode(&[0u8; 31]).is_err());
        assert!(AqDesc::decode(&[0u8; 33]).is_err());
        assert!(AqDesc::decode(&[]).is_err());
    }

    #[test]
    fn flags_have_the_reference_values() {
        let all = [
            FLAG_DD, FLAG_CMP, FLAG_ERR, FLAG_VFE, FLAG_LB, FLAG_RD, FLAG_VFC, FLAG_BUF, FLAG_SI,
            FLAG_EI, FLAG_FE,
        ];
        let bits = [0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15];
        for (f, b) in all.iter().zip(bits) {
            assert_eq!(*f, 1u16 << b);
        }
        assert_eq!(rc::EINVAL, 14);
        assert_eq!(rc::EFBIG, 22);
    }

    #[test]
    fn send_and_post_builders_follow_the_driver_code() {
        let d = AqDesc::send_to_pf(6, 600, 0x1_2345_6000);
        assert_eq!(d.opcode, OPC_SEND_MSG_TO_PF);
        assert!(d.has(FLAG_SI | FLAG_BUF | FLAG_RD | FLAG_LB));
        assert_eq!(d.datalen, 600);
        assert_eq!((d.addr_high, d.addr_low), (1, 0x2345_6000));
        assert_eq!(d.v_opcode(), 6);
        let e = AqDesc::send_to_pf(2, 0, 0x5000);
        assert_eq!(e.flags, FLAG_SI);
        assert_eq!(e.buffer_addr(), 0);
        let p = AqDesc::posted_receive(4096, 0x8000);
        assert_eq!(p.flags, FLAG_BUF | FLAG_LB);
        assert_eq!(p.datalen, 4096);
        assert_eq!(AqDesc::posted_receive(512, 0).flags, FLAG_BUF);
        let s = AqDesc {
            cookie_low: (-64i32) as u32,
            ..Default::default()
        };
        assert_eq!(s.v_retval(), -64);
    }
}
