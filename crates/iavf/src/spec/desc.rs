//! Data-path descriptors (DPDK 21.02 `iavf_type.h`): the 16-byte TX data and context
//! descriptors, and the legacy RX descriptors (32-byte, which both drivers use unless flexible
//! descriptors are negotiated, and 16-byte), in their read (driver-posted) and write-back
//! (device-written) forms. All fields little-endian.

use super::{exact, DecodeError, Le};

/// Size of a TX descriptor (data or context).
pub const TX_DESC_SIZE: usize = 16;
/// Size of a legacy 32-byte RX descriptor.
pub const RX_DESC32_SIZE: usize = 32;
/// Size of a legacy 16-byte RX descriptor.
pub const RX_DESC16_SIZE: usize = 16;

/// Ring lengths must be a multiple of this (`IAVF_ALIGN_RING_DESC`).
pub const RING_LEN_ALIGN: u32 = 32;
/// Smallest ring drivers use (`IAVF_MIN_RING_DESC`).
pub const RING_LEN_MIN_DRIVER: u32 = 64;
/// Largest ring (`IAVF_MAX_RING_DESC`).
pub const RING_LEN_MAX: u32 = 4096;
/// Ring base alignment drivers use (`IAVF_RING_BASE_ALIGN`).
pub const RING_BASE_ALIGN: u64 = 128;

/// `IAVF_RXDID_LEGACY_0` (16-byte legacy).
pub const RXDID_LEGACY_0: u8 = 0;
/// `IAVF_RXDID_LEGACY_1` (32-byte legacy).
pub const RXDID_LEGACY_1: u8 = 1;
/// `IAVF_RXDID_FLEX_NIC`.
pub const RXDID_FLEX_NIC: u8 = 2;
/// `IAVF_RXDID_FLEX_NIC_2`.
pub const RXDID_FLEX_NIC_2: u8 = 6;
/// `IAVF_RXDID_COMMS_OVS_1`.
pub const RXDID_COMMS_OVS_1: u8 = 22;
/// `IAVF_RXDID_COMMS_OVS_2`.
pub const RXDID_COMMS_OVS_2: u8 = 23;

// ----- TX --------------------------------------------------------------------------------------

/// `IAVF_TXD_QW1_DTYPE` shift.
pub const TXD_QW1_DTYPE_SHIFT: u32 = 0;
/// `IAVF_TXD_QW1_DTYPE` mask (before shifting).
pub const TXD_QW1_DTYPE_MASK: u64 = 0xF;
/// `IAVF_TXD_QW1_CMD` shift.
pub const TXD_QW1_CMD_SHIFT: u32 = 4;
/// `IAVF_TXD_QW1_CMD` mask (before shifting).
pub const TXD_QW1_CMD_MASK: u64 = 0x3FF;
/// `IAVF_TXD_QW1_OFFSET` shift.
pub const TXD_QW1_OFFSET_SHIFT: u32 = 16;
/// `IAVF_TXD_QW1_OFFSET` mask (before shifting).
pub const TXD_QW1_OFFSET_MASK: u64 = 0x3FFFF;
/// `IAVF_TXD_QW1_TX_BUF_SZ` shift.
pub const TXD_QW1_TX_BUF_SZ_SHIFT: u32 = 34;
/// `IAVF_TXD_QW1_TX_BUF_SZ` mask (before shifting, 14 bits).
pub const TXD_QW1_TX_BUF_SZ_MASK: u64 = 0x3FFF;
/// `IAVF_TXD_QW1_L2TAG1` shift.
pub const TXD_QW1_L2TAG1_SHIFT: u32 = 48;
/// `IAVF_TXD_QW1_L2TAG1` mask (before shifting).
pub const TXD_QW1_L2TAG1_MASK: u64 = 0xFFFF;

/// TX descriptor types (`IAVF_TX_DESC_DTYPE_*`).
pub mod dtype {
    /// Data.
    pub const DATA: u8 = 0x0;
    /// Context (also NOP).
    pub const CONTEXT: u8 = 0x1;
    /// FCoE context.
    pub const FCOE_CTX: u8 = 0x2;
    /// Filter programming.
    pub const FILTER_PROG: u8 = 0x8;
    /// DDP context.
    pub const DDP_CTX: u8 = 0x9;
    /// Flex data.
    pub const FLEX_DATA: u8 = 0xB;
    /// Flex context 1.
    pub const FLEX_CTX_1: u8 = 0xC;
    /// Flex context 2.
    pub const FLEX_CTX_2: u8 = 0xD;
    /// Written back by the device when the descriptor is done.
    pub const DESC_DONE: u8 = 0xF;
}

/// TX data descriptor command bits (`IAVF_TX_DESC_CMD_*`, in the CMD field).
pub mod tx_cmd {
    /// End of packet.
    pub const EOP: u16 = 0x0001;
    /// Report status: write DESC_DONE back.
    pub const RS: u16 = 0x0002;
    /// Insert CRC.
    pub const ICRC: u16 = 0x0004;
    /// Insert L2 tag 1 (VLAN) from the descriptor.
    pub const IL2TAG1: u16 = 0x0008;
    /// Dummy.
    pub const DUMMY: u16 = 0x0010;
    /// Not IP.
    pub const IIPT_NONIP: u16 = 0x0000;
    /// IPv6.
    pub const IIPT_IPV6: u16 = 0x0020;
    /// IPv4 without checksum insertion.
    pub const IIPT_IPV4: u16 = 0x0040;
    /// IPv4 with checksum insertion.
    pub const IIPT_IPV4_CSUM: u16 = 0x0060;
    /// FCoE.
    pub const FCOET: u16 = 0x0080;
    /// L4 type unknown.
    pub const L4T_EOFT_UNK: u16 = 0x0000;
    /// TCP checksum.
    pub const L4T_EOFT_TCP: u16 = 0x0100;
    /// SCTP checksum.
    pub const L4T_EOFT_SCTP: u16 = 0x0200;
    /// UDP checksum.
    pub const L4T_EOFT_UDP: u16 = 0x0300;
    /// The IIPT field (IP type and IPv4 header checksum insertion): `IIPT_*`.
    pub const IIPT_MASK: u16 = 0x0060;
    /// The L4T field (L4 type whose checksum to insert): `L4T_EOFT_*`.
    pub const L4T_MASK: u16 = 0x0300;
}

/// Offsets in the OFFSET field: MACLEN (2-byte words), IPLEN and L4LEN (4-byte words).
pub mod tx_offset {
    /// MACLEN shift.
    pub const MACLEN_SHIFT: u32 = 0;
    /// MACLEN mask (before shifting, 7 bits).
    pub const MACLEN_MASK: u32 = 0x7F;
    /// IPLEN shift.
    pub const IPLEN_SHIFT: u32 = 7;
    /// IPLEN mask (before shifting, 7 bits).
    pub const IPLEN_MASK: u32 = 0x7F;
    /// L4LEN shift.
    pub const L4LEN_SHIFT: u32 = 14;
    /// L4LEN mask (before shifting, 4 bits).
    pub const L4LEN_MASK: u32 = 0xF;
    /// Largest MACLEN in bytes (127 two-byte words).
    pub const MACLEN_MAX_BYTES: usize = 2 * MACLEN_MASK as usize;
    /// Largest IPLEN in bytes (127 four-byte words).
    pub const IPLEN_MAX_BYTES: usize = 4 * IPLEN_MASK as usize;
    /// Largest L4LEN in bytes (15 four-byte words).
    pub const L4LEN_MAX_BYTES: usize = 4 * L4LEN_MASK as usize;

    /// MACLEN of an OFFSET field, in bytes (the L2 header length: where the IP header starts).
    pub const fn maclen(offset: u32) -> usize {
        2 * ((offset >> MACLEN_SHIFT) & MACLEN_MASK) as usize
    }

    /// IPLEN of an OFFSET field, in bytes (the IP header length, IPv6 extension headers
    /// included).
    pub const fn iplen(offset: u32) -> usize {
        4 * ((offset >> IPLEN_SHIFT) & IPLEN_MASK) as usize
    }

    /// L4LEN of an OFFSET field, in bytes (the L4 header length).
    pub const fn l4len(offset: u32) -> usize {
        4 * ((offset >> L4LEN_SHIFT) & L4LEN_MASK) as usize
    }

    /// An OFFSET field from lengths in bytes, as a driver computes it (`maclen >> 1`,
    /// `iplen >> 2`, `l4len >> 2`; bits beyond each field are dropped).
    pub const fn encode(maclen: usize, iplen: usize, l4len: usize) -> u32 {
        ((((maclen >> 1) as u32) & MACLEN_MASK) << MACLEN_SHIFT)
            | ((((iplen >> 2) as u32) & IPLEN_MASK) << IPLEN_SHIFT)
            | ((((l4len >> 2) as u32) & L4LEN_MASK) << L4LEN_SHIFT)
    }
}

/// TX context descriptor fields.
pub mod tx_ctx {
    /// CMD shift in `type_cmd_tso_mss`.
    pub const CMD_SHIFT: u32 = 4;
    /// CMD mask (before shifting, 16 bits).
    pub const CMD_MASK: u64 = 0xFFFF;
    /// CMD: TCP segmentation offload.
    pub const CMD_TSO: u16 = 0x01;
    /// CMD: timestamp sync.
    pub const CMD_TSYN: u16 = 0x02;
    /// CMD: insert L2 tag 2.
    pub const CMD_IL2TAG2: u16 = 0x04;
    /// TSO_LEN shift.
    pub const TSO_LEN_SHIFT: u32 = 30;
    /// TSO_LEN mask (before shifting, 18 bits).
    pub const TSO_LEN_MASK: u64 = 0x3FFFF;
    /// MSS shift.
    pub const MSS_SHIFT: u32 = 50;
    /// MSS mask (before shifting, 14 bits).
    pub const MSS_MASK: u64 = 0x3FFF;
    /// Largest TSO_LEN (18 bits: 256 KiB - 1 of payload).
    pub const TSO_LEN_MAX: usize = TSO_LEN_MASK as usize;
}

/// `struct iavf_tx_desc` (16 bytes): a data descriptor, or any descriptor's raw qwords.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxDesc {
    /// Buffer IOVA.
    pub buffer_addr: u64,
    /// DTYPE | CMD | OFFSET | BUF_SZ | L2TAG1.
    pub cmd_type_offset_bsz: u64,
}

impl TxDesc {
    /// Size on the wire.
    pub const SIZE: usize = TX_DESC_SIZE;

    /// A data descriptor.
    pub fn data(buffer_addr: u64, buf_size: u16, cmd: u16, offset: u32, l2tag1: u16) -> Self {
        let q = (u64::from(dtype::DATA) & TXD_QW1_DTYPE_MASK)
            | ((u64::from(cmd) & TXD_QW1_CMD_MASK) << TXD_QW1_CMD_SHIFT)
            | ((u64::from(offset) & TXD_QW1_OFFSET_MASK) << TXD_QW1_OFFSET_SHIFT)
            | ((u64::from(buf_size) & TXD_QW1_TX_BUF_SZ_MASK) << TXD_QW1_TX_BUF_SZ_SHIFT)
            | ((u64::from(l2tag1) & TXD_QW1_L2TAG1_MASK) << TXD_QW1_L2TAG1_SHIFT);
        TxDesc {
            buffer_addr,
            cmd_type_offset_bsz: q,
        }
    }

    /// Descriptor type.
    pub const fn dtype(&self) -> u8 {
        (self.cmd_type_offset_bsz & TXD_QW1_DTYPE_MASK) as u8
    }

    /// CMD field ([`tx_cmd`]).
    pub const fn cmd(&self) -> u16 {
        ((self.cmd_type_offset_bsz >> TXD_QW1_CMD_SHIFT) & TXD_QW1_CMD_MASK) as u16
    }

    /// OFFSET field ([`tx_offset`]).
    pub const fn offset(&self) -> u32 {
        ((self.cmd_type_offset_bsz >> TXD_QW1_OFFSET_SHIFT) & TXD_QW1_OFFSET_MASK) as u32
    }

    /// Buffer size in bytes.
    pub const fn buf_size(&self) -> u16 {
        ((self.cmd_type_offset_bsz >> TXD_QW1_TX_BUF_SZ_SHIFT) & TXD_QW1_TX_BUF_SZ_MASK) as u16
    }

    /// L2 tag 1.
    pub const fn l2tag1(&self) -> u16 {
        ((self.cmd_type_offset_bsz >> TXD_QW1_L2TAG1_SHIFT) & TXD_QW1_L2TAG1_MASK) as u16
    }

    /// Whether the device has written DESC_DONE.
    pub const fn is_done(&self) -> bool {
        self.dtype() == dtype::DESC_DONE
    }

    /// The write-back: qword1 with DTYPE set to DESC_DONE.
    pub const fn done_qword1(&self) -> u64 {
        (self.cmd_type_offset_bsz & !TXD_QW1_DTYPE_MASK) | dtype::DESC_DONE as u64
    }

    /// Decodes exactly 16 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("iavf_tx_desc", b, Self::SIZE)?;
        let r = Le::new("iavf_tx_desc", b);
        Ok(TxDesc {
            buffer_addr: r.u64(0)?,
            cmd_type_offset_bsz: r.u64(8)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> [u8; TX_DESC_SIZE] {
        let mut b = [0u8; TX_DESC_SIZE];
        b[..8].copy_from_slice(&self.buffer_addr.to_le_bytes());
        b[8..].copy_from_slice(&self.cmd_type_offset_bsz.to_le_bytes());
        b
    }
}

/// `struct iavf_tx_context_desc` (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxContextDesc {
    /// Tunnelling parameters.
    pub tunneling_params: u32,
    /// L2 tag 2.
    pub l2tag2: u16,
    /// DTYPE (1) | CMD | TSO_LEN | MSS.
    pub type_cmd_tso_mss: u64,
}

impl TxContextDesc {
    /// Size on the wire.
    pub const SIZE: usize = TX_DESC_SIZE;

    /// A context descriptor.
    pub fn new(cmd: u16, tso_len: u32, mss: u16, l2tag2: u16) -> Self {
        let q = u64::from(dtype::CONTEXT)
            | ((u64::from(cmd) & tx_ctx::CMD_MASK) << tx_ctx::CMD_SHIFT)
            | ((u64::from(tso_len) & tx_ctx::TSO_LEN_MASK) << tx_ctx::TSO_LEN_SHIFT)
            | ((u64::from(mss) & tx_ctx::MSS_MASK) << tx_ctx::MSS_SHIFT);
        TxContextDesc {
            tunneling_params: 0,
            l2tag2,
            type_cmd_tso_mss: q,
        }
    }

    /// Descriptor type (1 for a context descriptor).
    pub const fn dtype(&self) -> u8 {
        (self.type_cmd_tso_mss & TXD_QW1_DTYPE_MASK) as u8
    }

    /// CMD field.
    pub const fn cmd(&self) -> u16 {
        ((self.type_cmd_tso_mss >> tx_ctx::CMD_SHIFT) & tx_ctx::CMD_MASK) as u16
    }

    /// TSO payload length.
    pub const fn tso_len(&self) -> u32 {
        ((self.type_cmd_tso_mss >> tx_ctx::TSO_LEN_SHIFT) & tx_ctx::TSO_LEN_MASK) as u32
    }

    /// Maximum segment size.
    pub const fn mss(&self) -> u16 {
        ((self.type_cmd_tso_mss >> tx_ctx::MSS_SHIFT) & tx_ctx::MSS_MASK) as u16
    }

    /// Whether CMD asks for TCP segmentation.
    pub const fn is_tso(&self) -> bool {
        self.cmd() & tx_ctx::CMD_TSO != 0
    }

    /// Reads a descriptor taken from the ring as raw qwords ([`TxDesc`]) as a context
    /// descriptor: qword0 holds `tunneling_params` and `l2tag2`, qword1 `type_cmd_tso_mss`.
    pub const fn from_raw(d: &TxDesc) -> Self {
        TxContextDesc {
            tunneling_params: d.buffer_addr as u32,
            l2tag2: (d.buffer_addr >> 32) as u16,
            type_cmd_tso_mss: d.cmd_type_offset_bsz,
        }
    }

    /// As raw qwords, to post it on a TX ring (reserved bytes zero).
    pub const fn to_raw(&self) -> TxDesc {
        TxDesc {
            buffer_addr: (self.tunneling_params as u64) | ((self.l2tag2 as u64) << 32),
            cmd_type_offset_bsz: self.type_cmd_tso_mss,
        }
    }

    /// Decodes exactly 16 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("iavf_tx_context_desc", b, Self::SIZE)?;
        let r = Le::new("iavf_tx_context_desc", b);
        Ok(TxContextDesc {
            tunneling_params: r.u32(0)?,
            l2tag2: r.u16(4)?,
            type_cmd_tso_mss: r.u64(8)?,
        })
    }

    /// Encodes (reserved bytes zeroed).
    pub fn encode(&self) -> [u8; TX_DESC_SIZE] {
        let mut b = [0u8; TX_DESC_SIZE];
        b[..4].copy_from_slice(&self.tunneling_params.to_le_bytes());
        b[4..6].copy_from_slice(&self.l2tag2.to_le_bytes());
        b[8..].copy_from_slice(&self.type_cmd_tso_mss.to_le_bytes());
        b
    }
}

// ----- RX --------------------------------------------------------------------------------------

/// RX write-back qword1 status bits (`IAVF_RX_DESC_STATUS_*`, bit numbers 0-18).
pub mod rx_status {
    /// Descriptor done.
    pub const DD: u64 = 1 << 0;
    /// End of frame.
    pub const EOF: u64 = 1 << 1;
    /// L2 tag 1 present in `qword0.l2tag1`.
    pub const L2TAG1P: u64 = 1 << 2;
    /// L3/L4 checksums checked.
    pub const L3L4P: u64 = 1 << 3;
    /// CRC present.
    pub const CRCP: u64 = 1 << 4;
    /// TSYNINDX shift (2 bits).
    pub const TSYNINDX_SHIFT: u32 = 5;
    /// Timestamp valid.
    pub const TSYNVALID: u64 = 1 << 7;
    /// External UDP checksum zero.
    pub const EXT_UDP_0: u64 = 1 << 8;
    /// UMBCAST shift (2 bits).
    pub const UMBCAST_SHIFT: u32 = 9;
    /// Flow director match.
    pub const FLM: u64 = 1 << 11;
    /// FLTSTAT shift (2 bits).
    pub const FLTSTAT_SHIFT: u32 = 12;
    /// FLTSTAT value: `hi_dword` holds the RSS hash.
    pub const FLTSTAT_RSS_HASH: u64 = 3 << FLTSTAT_SHIFT;
    /// Loopback.
    pub const LPBK: u64 = 1 << 14;
    /// IPv6 extension headers.
    pub const IPV6EXADD: u64 = 1 << 15;
    /// Internal UDP checksum zero.
    pub const INT_UDP_0: u64 = 1 << 18;
    /// Mask of the 19 status bits.
    pub const MASK: u64 = (1 << 19) - 1;
}

/// RX write-back qword1 error bits (`IAVF_RX_DESC_ERROR_*`).
pub mod rx_error {
    /// Shift of the error field in qword1.
    pub const SHIFT: u32 = 19;
    /// Mask of the error field (before shifting).
    pub const MASK: u64 = 0xFF;
    /// Receive error.
    pub const RXE: u8 = 1 << 0;
    /// Recipe error.
    pub const RECIPE: u8 = 1 << 1;
    /// Header buffer overflow.
    pub const HBO: u8 = 1 << 2;
    /// IP checksum error.
    pub const IPE: u8 = 1 << 3;
    /// L4 checksum error.
    pub const L4E: u8 = 1 << 4;
    /// Outer IP checksum error.
    pub const EIPE: u8 = 1 << 5;
    /// Oversize.
    pub const OVERSIZE: u8 = 1 << 6;
    /// Parser error.
    pub const PPRS: u8 = 1 << 7;
}

/// `IAVF_RXD_QW1_PTYPE` shift.
pub const RXD_QW1_PTYPE_SHIFT: u32 = 30;
/// `IAVF_RXD_QW1_PTYPE` mask (before shifting).
pub const RXD_QW1_PTYPE_MASK: u64 = 0xFF;
/// `IAVF_RXD_QW1_LENGTH_PBUF` shift.
pub const RXD_QW1_LENGTH_PBUF_SHIFT: u32 = 38;
/// `IAVF_RXD_QW1_LENGTH_PBUF` mask (before shifting, 14 bits).
pub const RXD_QW1_LENGTH_PBUF_MASK: u64 = 0x3FFF;
/// `IAVF_RXD_QW1_LENGTH_HBUF` shift.
pub const RXD_QW1_LENGTH_HBUF_SHIFT: u32 = 52;
/// `IAVF_RXD_QW1_LENGTH_HBUF` mask (before shifting, 11 bits).
pub const RXD_QW1_LENGTH_HBUF_MASK: u64 = 0x7FF;
/// `IAVF_RXD_QW1_LENGTH_SPH` bit.
pub const RXD_QW1_LENGTH_SPH_SHIFT: u32 = 63;

/// Builds an RX write-back qword1.
pub const fn rx_qword1(status: u64, error: u8, ptype: u8, pkt_len: u16) -> u64 {
    (status & rx_status::MASK)
        | ((error as u64 & rx_error::MASK) << rx_error::SHIFT)
        | ((ptype as u64 & RXD_QW1_PTYPE_MASK) << RXD_QW1_PTYPE_SHIFT)
        | ((pkt_len as u64 & RXD_QW1_LENGTH_PBUF_MASK) << RXD_QW1_LENGTH_PBUF_SHIFT)
}

/// The read format of an RX descriptor, as the driver posts it (the first 16 bytes of a 32-byte
/// descriptor, or all of a 16-byte one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RxDescRead {
    /// Packet buffer IOVA.
    pub pkt_addr: u64,
    /// Header buffer IOVA (0: no header split).
    pub hdr_addr: u64,
}

impl RxDescRead {
    /// Decodes a 16- or 32-byte descriptor's read format.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != RX_DESC16_SIZE && b.len() != RX_DESC32_SIZE {
            return Err(DecodeError::Length {
                what: "iavf_rx_desc (read)",
                expected: RX_DESC32_SIZE,
                actual: b.len(),
            });
        }
        let r = Le::new("iavf_rx_desc (read)", b);
        Ok(RxDescRead {
            pkt_addr: r.u64(0)?,
            hdr_addr: r.u64(8)?,
        })
    }

    /// Encodes as a 32-byte descriptor (reserved qwords zero).
    pub fn encode32(&self) -> [u8; RX_DESC32_SIZE] {
        let mut b = [0u8; RX_DESC32_SIZE];
        b[..8].copy_from_slice(&self.pkt_addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.hdr_addr.to_le_bytes());
        b
    }

    /// Encodes as a 16-byte descriptor.
    pub fn encode16(&self) -> [u8; RX_DESC16_SIZE] {
        let mut b = [0u8; RX_DESC16_SIZE];
        b[..8].copy_from_slice(&self.pkt_addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.hdr_addr.to_le_bytes());
        b
    }
}

/// The write-back format of a legacy 32-byte RX descriptor (`union iavf_32byte_rx_desc.wb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RxDescWb {
    /// qword0 bytes 0-1: mirroring status / FCoE context id.
    pub mirroring_status: u16,
    /// qword0 bytes 2-3: L2 tag 1 (valid with [`rx_status::L2TAG1P`]).
    pub l2tag1: u16,
    /// qword0 bytes 4-7: RSS hash / FCoE parameter / flow director id.
    pub rss: u32,
    /// qword1: status, error, ptype, lengths ([`rx_qword1`]).
    pub status_error_len: u64,
    /// qword2 bytes 0-1: extended status.
    pub ext_status: u16,
    /// qword2 bytes 4-5.
    pub l2tag2_1: u16,
    /// qword2 bytes 6-7.
    pub l2tag2_2: u16,
    /// qword3 bytes 0-3: flex bytes low / PE status.
    pub flex_bytes_lo: u32,
    /// qword3 bytes 4-7: flex bytes high / flow director id.
    pub flex_bytes_hi: u32,
}

impl RxDescWb {
    /// Size on the wire.
    pub const SIZE: usize = RX_DESC32_SIZE;

    /// Status bits.
    pub const fn status(&self) -> u64 {
        self.status_error_len & rx_status::MASK
    }

    /// Error bits.
    pub const fn error(&self) -> u8 {
        ((self.status_error_len >> rx_error::SHIFT) & rx_error::MASK) as u8
    }

    /// Packet type.
    pub const fn ptype(&self) -> u8 {
        ((self.status_error_len >> RXD_QW1_PTYPE_SHIFT) & RXD_QW1_PTYPE_MASK) as u8
    }

    /// Packet buffer length.
    pub const fn pkt_len(&self) -> u16 {
        ((self.status_error_len >> RXD_QW1_LENGTH_PBUF_SHIFT) & RXD_QW1_LENGTH_PBUF_MASK) as u16
    }

    /// Descriptor done.
    pub const fn dd(&self) -> bool {
        self.status_error_len & rx_status::DD != 0
    }

    /// End of frame.
    pub const fn eof(&self) -> bool {
        self.status_error_len & rx_status::EOF != 0
    }

    /// Decodes a 32-byte write-back (or the first 16 bytes of one: qwords 2-3 read as 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != RX_DESC16_SIZE && b.len() != RX_DESC32_SIZE {
            return Err(DecodeError::Length {
                what: "iavf_rx_desc (write-back)",
                expected: RX_DESC32_SIZE,
                actual: b.len(),
            });
        }
        let r = Le::new("iavf_rx_desc (write-back)", b);
        let mut d = RxDescWb {
            mirroring_status: r.u16(0)?,
            l2tag1: r.u16(2)?,
            rss: r.u32(4)?,
            status_error_len: r.u64(8)?,
            ..Default::default()
        };
        if b.len() == RX_DESC32_SIZE {
            d.ext_status = r.u16(16)?;
            d.l2tag2_1 = r.u16(20)?;
            d.l2tag2_2 = r.u16(22)?;
            d.flex_bytes_lo = r.u32(24)?;
            d.flex_bytes_hi = r.u32(28)?;
        }
        Ok(d)
    }

    /// Encodes the 32-byte write-back. A device stores qword1 (bytes 8-15, with DD) last.
    pub fn encode32(&self) -> [u8; RX_DESC32_SIZE] {
        let mut b = [0u8; RX_DESC32_SIZE];
        b[0..2].copy_from_slice(&self.mirroring_status.to_le_bytes());
        b[2..4].copy_from_slice(&self.l2tag1.to_le_bytes());
        b[4..8].copy_from_slice(&self.rss.to_le_bytes());
        b[8..16].copy_from_slice(&self.status_error_len.to_le_bytes());
        b[16..18].copy_from_slice(&self.ext_status.to_le_bytes());
        b[20..22].copy_from_slice(&self.l2tag2_1.to_le_bytes());
        b[22..24].copy_from_slice(&self.l2tag2_2.to_le_bytes());
        b[24..28].copy_from_slice(&self.flex_bytes_lo.to_le_bytes());
        b[28..32].copy_from_slice(&self.flex_bytes_hi.to_le_bytes());
        b
    }

    /// Encodes the 16-byte write-back (qwords 0-1).
    pub fn encode16(&self) -> [u8; RX_DESC16_SIZE] {
        let mut b = [0u8; RX_DESC16_SIZE];
        b.copy_from_slice(&self.encode32()[..RX_DESC16_SIZE]);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_data_descriptor_fields() {
        let cmd = tx_cmd::EOP | tx_cmd::RS | tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_TCP;
        let off = (14 >> 1) | ((20 >> 2) << tx_offset::IPLEN_SHIFT);
        let d = TxDesc::data(0xDEAD_B000, 1514, cmd, off, 100);
        assert_eq!(d.dtype(), dtype::DATA);
        assert_eq!(d.cmd(), cmd);
        assert_eq!(d.offset(), off);
        assert_eq!(d.buf_size(), 1514);
        assert_eq!(d.l2tag1(), 100);
        assert_eq!(
            d.cmd_type_offset_bsz,
            (u64::from(cmd) << 4) | (u64::from(off) << 16) | (1514u64 << 34) | (100u64 << 48)
        );
        assert!(!d.is_done());
        let done = TxDesc {
            cmd_type_offset_bsz: d.done_qword1(),
            ..d
        };
        assert!(done.is_done());
        assert_eq!(done.buf_size(), 1514);
        let b = d.encode();
        assert_eq!(&b[..8], &0xDEAD_B000u64.to_le_bytes());
        assert_eq!(TxDesc::decode(&b), Ok(d));
        assert!(TxDesc::decode(&b[..15]).is_err());
        // Oversized buffer sizes are masked to 14 bits, not spilled into L2TAG1.
        assert_eq!(TxDesc::data(0, u16::MAX, 0, 0, 0).l2tag1(), 0);
    }

    #[test]
    fn tx_context_descriptor_fields() {
        let c = TxContextDesc::new(tx_ctx::CMD_TSO, 0x2_0000, 1460, 7);
        assert_eq!(c.dtype(), dtype::CONTEXT);
        assert_eq!(c.cmd(), tx_ctx::CMD_TSO);
        assert_eq!(c.tso_len(), 0x2_0000);
        assert_eq!(c.mss(), 1460);
        let b = c.encode();
        assert_eq!(&b[4..6], &7u16.to_le_bytes());
        assert_eq!(TxContextDesc::decode(&b), Ok(c));
        assert!(c.is_tso());
        assert!(!TxContextDesc::new(tx_ctx::CMD_TSYN, 0, 0, 0).is_tso());
        // Raw qwords: the same bytes as the encoding, both ways.
        let raw = c.to_raw();
        assert_eq!(raw.encode(), b);
        assert_eq!(TxContextDesc::from_raw(&raw), c);
        assert_eq!(raw.dtype(), dtype::CONTEXT);
        let full = TxContextDesc::new(tx_ctx::CMD_TSO, u32::MAX, u16::MAX, 0);
        assert_eq!(full.tso_len() as usize, tx_ctx::TSO_LEN_MAX);
        assert_eq!(full.mss(), 0x3FFF);
    }

    #[test]
    fn tx_offset_fields_in_bytes() {
        let off = tx_offset::encode(14, 20, 32);
        assert_eq!(off, 7 | (5 << 7) | (8 << 14));
        assert_eq!(tx_offset::maclen(off), 14);
        assert_eq!(tx_offset::iplen(off), 20);
        assert_eq!(tx_offset::l4len(off), 32);
        let max = tx_offset::encode(usize::MAX, usize::MAX, usize::MAX);
        assert_eq!(u64::from(max), TXD_QW1_OFFSET_MASK);
        assert_eq!(tx_offset::maclen(max), tx_offset::MACLEN_MAX_BYTES);
        assert_eq!(tx_offset::iplen(max), tx_offset::IPLEN_MAX_BYTES);
        assert_eq!(tx_offset::l4len(max), tx_offset::L4LEN_MAX_BYTES);
        assert_eq!(
            (
                tx_offset::maclen(0),
                tx_offset::iplen(0),
                tx_offset::l4len(0)
            ),
            (0, 0, 0)
        );
        let d = TxDesc::data(0, 60, tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_UDP, off, 0);
        assert_eq!(d.cmd() & tx_cmd::IIPT_MASK, tx_cmd::IIPT_IPV4_CSUM);
        assert_eq!(d.cmd() & tx_cmd::L4T_MASK, tx_cmd::L4T_EOFT_UDP);
        assert_eq!(tx_offset::iplen(d.offset()), 20);
    }

    #[test]
    fn rx_write_back_fields() {
        let q1 = rx_qword1(
            rx_status::DD | rx_status::EOF | rx_status::FLTSTAT_RSS_HASH,
            rx_error::IPE,
            24,
            60,
        );
        let wb = RxDescWb {
            rss: 0x1234_5678,
            status_error_len: q1,
            ..Default::default()
        };
        assert!(wb.dd() && wb.eof());
        assert_eq!(wb.pkt_len(), 60);
        assert_eq!(wb.ptype(), 24);
        assert_eq!(wb.error(), rx_error::IPE);
        assert_eq!(wb.status() >> rx_status::FLTSTAT_SHIFT & 3, 3);
        assert_eq!(q1 >> 38 & 0x3FFF, 60);
        let b = wb.encode32();
        assert_eq!(RxDescWb::decode(&b), Ok(wb));
        assert_eq!(RxDescWb::decode(&wb.encode16()), Ok(wb));
        assert!(RxDescWb::decode(&b[..20]).is_err());
    }

    #[test]
    fn rx_read_format() {
        let r = RxDescRead {
            pkt_addr: 0x1000,
            hdr_addr: 0,
        };
        assert_eq!(RxDescRead::decode(&r.encode32()), Ok(r));
        assert_eq!(RxDescRead::decode(&r.encode16()), Ok(r));
        assert!(RxDescRead::decode(&[0; 24]).is_err());
        assert_eq!(&r.encode32()[16..], &[0u8; 16]);
    }
}
