//! virtchnl 1.1, the VF↔PF message protocol carried by the admin queue (DPDK 21.02
//! `virtchnl.h`): op codes, status codes, capability flags, link speeds, every message
//! structure with its wire size, the PF→VF event, and [`VfRequest`], a whole VF→PF message
//! decoded and length-checked by op code as `virtchnl_vc_validate_vf_msg` does.
//!
//! ## Variable-length messages
//!
//! The list messages end in an array. virtchnl 1.1 declares it with one placeholder element
//! (`qpair[1]`, `list[1]`, ...) and DPDK 21.02 and older Linux size the message as
//! `sizeof(struct) + n * sizeof(element)` (one element of slack), or for the RSS key and LUT
//! `sizeof(struct) + n - 1`: that is the **legacy** layout, which the encoders here produce and
//! the size tests pin. Newer Linux declares flexible arrays and sends exactly the head plus `n`
//! elements: the **flexible** layout. Decoders accept exactly one of these two lengths for the
//! count the message declares, and nothing else; the slack element is ignored.

use super::{at_least, exact, DecodeError, Le};

/// `VIRTCHNL_VERSION_MAJOR`.
pub const VERSION_MAJOR: u32 = 1;
/// `VIRTCHNL_VERSION_MINOR` (1.1: the VF sends its capabilities in GET_VF_RESOURCES).
pub const VERSION_MINOR: u32 = 1;
/// `VIRTCHNL_VERSION_MINOR_NO_VF_CAPS` (1.0: GET_VF_RESOURCES has no body).
pub const VERSION_MINOR_NO_VF_CAPS: u32 = 0;

/// `enum virtchnl_ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum VirtchnlOp {
    /// `VIRTCHNL_OP_UNKNOWN`.
    Unknown = 0,
    /// `VIRTCHNL_OP_VERSION` (must always be 1).
    Version = 1,
    /// `VIRTCHNL_OP_RESET_VF` (no reply).
    ResetVf = 2,
    /// `VIRTCHNL_OP_GET_VF_RESOURCES`.
    GetVfResources = 3,
    /// `VIRTCHNL_OP_CONFIG_TX_QUEUE`.
    ConfigTxQueue = 4,
    /// `VIRTCHNL_OP_CONFIG_RX_QUEUE`.
    ConfigRxQueue = 5,
    /// `VIRTCHNL_OP_CONFIG_VSI_QUEUES`.
    ConfigVsiQueues = 6,
    /// `VIRTCHNL_OP_CONFIG_IRQ_MAP`.
    ConfigIrqMap = 7,
    /// `VIRTCHNL_OP_ENABLE_QUEUES`.
    EnableQueues = 8,
    /// `VIRTCHNL_OP_DISABLE_QUEUES`.
    DisableQueues = 9,
    /// `VIRTCHNL_OP_ADD_ETH_ADDR`.
    AddEthAddr = 10,
    /// `VIRTCHNL_OP_DEL_ETH_ADDR`.
    DelEthAddr = 11,
    /// `VIRTCHNL_OP_ADD_VLAN`.
    AddVlan = 12,
    /// `VIRTCHNL_OP_DEL_VLAN`.
    DelVlan = 13,
    /// `VIRTCHNL_OP_CONFIG_PROMISCUOUS_MODE`.
    ConfigPromiscuousMode = 14,
    /// `VIRTCHNL_OP_GET_STATS`.
    GetStats = 15,
    /// `VIRTCHNL_OP_RSVD`.
    Rsvd = 16,
    /// `VIRTCHNL_OP_EVENT` (PF→VF; must always be 17).
    Event = 17,
    /// `VIRTCHNL_OP_CONFIG_RSS_KEY`.
    ConfigRssKey = 23,
    /// `VIRTCHNL_OP_CONFIG_RSS_LUT`.
    ConfigRssLut = 24,
    /// `VIRTCHNL_OP_GET_RSS_HENA_CAPS`.
    GetRssHenaCaps = 25,
    /// `VIRTCHNL_OP_SET_RSS_HENA`.
    SetRssHena = 26,
    /// `VIRTCHNL_OP_ENABLE_VLAN_STRIPPING`.
    EnableVlanStripping = 27,
    /// `VIRTCHNL_OP_DISABLE_VLAN_STRIPPING`.
    DisableVlanStripping = 28,
    /// `VIRTCHNL_OP_REQUEST_QUEUES`.
    RequestQueues = 29,
    /// `VIRTCHNL_OP_ENABLE_CHANNELS`.
    EnableChannels = 30,
    /// `VIRTCHNL_OP_DISABLE_CHANNELS`.
    DisableChannels = 31,
    /// `VIRTCHNL_OP_ADD_CLOUD_FILTER`.
    AddCloudFilter = 32,
    /// `VIRTCHNL_OP_DEL_CLOUD_FILTER`.
    DelCloudFilter = 33,
    /// `VIRTCHNL_OP_DCF_CMD_DESC`.
    DcfCmdDesc = 39,
    /// `VIRTCHNL_OP_DCF_CMD_BUFF`.
    DcfCmdBuff = 40,
    /// `VIRTCHNL_OP_DCF_DISABLE`.
    DcfDisable = 41,
    /// `VIRTCHNL_OP_DCF_GET_VSI_MAP`.
    DcfGetVsiMap = 42,
    /// `VIRTCHNL_OP_DCF_GET_PKG_INFO`.
    DcfGetPkgInfo = 43,
    /// `VIRTCHNL_OP_GET_SUPPORTED_RXDIDS`.
    GetSupportedRxdids = 44,
    /// `VIRTCHNL_OP_ADD_RSS_CFG`.
    AddRssCfg = 45,
    /// `VIRTCHNL_OP_DEL_RSS_CFG`.
    DelRssCfg = 46,
    /// `VIRTCHNL_OP_ADD_FDIR_FILTER`.
    AddFdirFilter = 47,
    /// `VIRTCHNL_OP_DEL_FDIR_FILTER`.
    DelFdirFilter = 48,
    /// `VIRTCHNL_OP_QUERY_FDIR_FILTER`.
    QueryFdirFilter = 49,
}

impl VirtchnlOp {
    /// Every op, in code order.
    pub const ALL: [VirtchnlOp; 40] = [
        VirtchnlOp::Unknown,
        VirtchnlOp::Version,
        VirtchnlOp::ResetVf,
        VirtchnlOp::GetVfResources,
        VirtchnlOp::ConfigTxQueue,
        VirtchnlOp::ConfigRxQueue,
        VirtchnlOp::ConfigVsiQueues,
        VirtchnlOp::ConfigIrqMap,
        VirtchnlOp::EnableQueues,
        VirtchnlOp::DisableQueues,
        VirtchnlOp::AddEthAddr,
        VirtchnlOp::DelEthAddr,
        VirtchnlOp::AddVlan,
        VirtchnlOp::DelVlan,
        VirtchnlOp::ConfigPromiscuousMode,
        VirtchnlOp::GetStats,
        VirtchnlOp::Rsvd,
        VirtchnlOp::Event,
        VirtchnlOp::ConfigRssKey,
        VirtchnlOp::ConfigRssLut,
        VirtchnlOp::GetRssHenaCaps,
        VirtchnlOp::SetRssHena,
        VirtchnlOp::EnableVlanStripping,
        VirtchnlOp::DisableVlanStripping,
        VirtchnlOp::RequestQueues,
        VirtchnlOp::EnableChannels,
        VirtchnlOp::DisableChannels,
        VirtchnlOp::AddCloudFilter,
        VirtchnlOp::DelCloudFilter,
        VirtchnlOp::DcfCmdDesc,
        VirtchnlOp::DcfCmdBuff,
        VirtchnlOp::DcfDisable,
        VirtchnlOp::DcfGetVsiMap,
        VirtchnlOp::DcfGetPkgInfo,
        VirtchnlOp::GetSupportedRxdids,
        VirtchnlOp::AddRssCfg,
        VirtchnlOp::DelRssCfg,
        VirtchnlOp::AddFdirFilter,
        VirtchnlOp::DelFdirFilter,
        VirtchnlOp::QueryFdirFilter,
    ];

    /// The op with code `raw`, if virtchnl 1.1 defines one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|op| *op as u32 == raw)
    }

    /// The op code.
    pub const fn raw(self) -> u32 {
        self as u32
    }
}

/// `enum virtchnl_status_code`, carried in the descriptor's `cookie_low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum VirtchnlStatus {
    /// `VIRTCHNL_STATUS_SUCCESS`.
    Success = 0,
    /// `VIRTCHNL_STATUS_ERR_PARAM`.
    ErrParam = -5,
    /// `VIRTCHNL_STATUS_ERR_NO_MEMORY`.
    ErrNoMemory = -18,
    /// `VIRTCHNL_STATUS_ERR_OPCODE_MISMATCH`.
    ErrOpcodeMismatch = -38,
    /// `VIRTCHNL_STATUS_ERR_CQP_COMPL_ERROR`.
    ErrCqpComplError = -39,
    /// `VIRTCHNL_STATUS_ERR_INVALID_VF_ID`.
    ErrInvalidVfId = -40,
    /// `VIRTCHNL_STATUS_ERR_ADMIN_QUEUE_ERROR`.
    ErrAdminQueueError = -53,
    /// `VIRTCHNL_STATUS_ERR_NOT_SUPPORTED`.
    ErrNotSupported = -64,
}

impl VirtchnlStatus {
    /// Every status.
    pub const ALL: [VirtchnlStatus; 8] = [
        VirtchnlStatus::Success,
        VirtchnlStatus::ErrParam,
        VirtchnlStatus::ErrNoMemory,
        VirtchnlStatus::ErrOpcodeMismatch,
        VirtchnlStatus::ErrCqpComplError,
        VirtchnlStatus::ErrInvalidVfId,
        VirtchnlStatus::ErrAdminQueueError,
        VirtchnlStatus::ErrNotSupported,
    ];

    /// The status with value `raw`, if defined.
    pub fn from_raw(raw: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| *s as i32 == raw)
    }

    /// The status value.
    pub const fn raw(self) -> i32 {
        self as i32
    }

    /// The value as the descriptor's `cookie_low` holds it.
    pub const fn to_cookie(self) -> u32 {
        self as i32 as u32
    }

    /// The status in a descriptor's `cookie_low`, if defined.
    pub fn from_cookie(cookie_low: u32) -> Option<Self> {
        Self::from_raw(cookie_low as i32)
    }
}

/// `vf_cap_flags` bits (`VIRTCHNL_VF_OFFLOAD_*`, `VIRTCHNL_VF_CAP_*`).
pub mod caps {
    /// `VIRTCHNL_VF_OFFLOAD_L2`: base L2 offloads (checksum, TSO for non-tunnelled packets).
    pub const L2: u32 = 0x0000_0001;
    /// `VIRTCHNL_VF_OFFLOAD_IWARP`.
    pub const IWARP: u32 = 0x0000_0002;
    /// `VIRTCHNL_VF_OFFLOAD_RSVD`.
    pub const RSVD: u32 = 0x0000_0004;
    /// `VIRTCHNL_VF_OFFLOAD_RSS_AQ`.
    pub const RSS_AQ: u32 = 0x0000_0008;
    /// `VIRTCHNL_VF_OFFLOAD_RSS_REG`.
    pub const RSS_REG: u32 = 0x0000_0010;
    /// `VIRTCHNL_VF_OFFLOAD_WB_ON_ITR`.
    pub const WB_ON_ITR: u32 = 0x0000_0020;
    /// `VIRTCHNL_VF_OFFLOAD_REQ_QUEUES`.
    pub const REQ_QUEUES: u32 = 0x0000_0040;
    /// `VIRTCHNL_VF_OFFLOAD_CRC`.
    pub const CRC: u32 = 0x0000_0080;
    /// `VIRTCHNL_VF_CAP_ADV_LINK_SPEED` (the same bit as [`CRC`]): link events carry Mbps.
    pub const ADV_LINK_SPEED: u32 = 0x0000_0080;
    /// `VIRTCHNL_VF_OFFLOAD_VLAN`.
    pub const VLAN: u32 = 0x0001_0000;
    /// `VIRTCHNL_VF_OFFLOAD_RX_POLLING`.
    pub const RX_POLLING: u32 = 0x0002_0000;
    /// `VIRTCHNL_VF_OFFLOAD_RSS_PCTYPE_V2`.
    pub const RSS_PCTYPE_V2: u32 = 0x0004_0000;
    /// `VIRTCHNL_VF_OFFLOAD_RSS_PF`.
    pub const RSS_PF: u32 = 0x0008_0000;
    /// `VIRTCHNL_VF_OFFLOAD_ENCAP`.
    pub const ENCAP: u32 = 0x0010_0000;
    /// `VIRTCHNL_VF_OFFLOAD_ENCAP_CSUM`.
    pub const ENCAP_CSUM: u32 = 0x0020_0000;
    /// `VIRTCHNL_VF_OFFLOAD_RX_ENCAP_CSUM`.
    pub const RX_ENCAP_CSUM: u32 = 0x0040_0000;
    /// `VIRTCHNL_VF_OFFLOAD_ADQ`.
    pub const ADQ: u32 = 0x0080_0000;
    /// `VIRTCHNL_VF_OFFLOAD_ADQ_V2`.
    pub const ADQ_V2: u32 = 0x0100_0000;
    /// `VIRTCHNL_VF_OFFLOAD_USO`.
    pub const USO: u32 = 0x0200_0000;
    /// `VIRTCHNL_VF_OFFLOAD_RX_FLEX_DESC`.
    pub const RX_FLEX_DESC: u32 = 0x0400_0000;
    /// `VIRTCHNL_VF_OFFLOAD_ADV_RSS_PF`.
    pub const ADV_RSS_PF: u32 = 0x0800_0000;
    /// `VIRTCHNL_VF_OFFLOAD_FDIR_PF`.
    pub const FDIR_PF: u32 = 0x1000_0000;
    /// `VIRTCHNL_VF_CAP_DCF`.
    pub const DCF: u32 = 0x4000_0000;
    /// `VF_BASE_MODE_OFFLOADS`: L2 | VLAN | RSS_PF.
    pub const BASE_MODE_OFFLOADS: u32 = L2 | VLAN | RSS_PF;
}

/// `enum virtchnl_link_speed` (legacy link events), and conversion to Mbps.
pub mod link_speed {
    /// `VIRTCHNL_LINK_SPEED_UNKNOWN`.
    pub const UNKNOWN: u32 = 0;
    /// `VIRTCHNL_LINK_SPEED_2_5GB`.
    pub const SPEED_2_5GB: u32 = 1 << 0;
    /// `VIRTCHNL_LINK_SPEED_100MB`.
    pub const SPEED_100MB: u32 = 1 << 1;
    /// `VIRTCHNL_LINK_SPEED_1GB`.
    pub const SPEED_1GB: u32 = 1 << 2;
    /// `VIRTCHNL_LINK_SPEED_10GB`.
    pub const SPEED_10GB: u32 = 1 << 3;
    /// `VIRTCHNL_LINK_SPEED_40GB`.
    pub const SPEED_40GB: u32 = 1 << 4;
    /// `VIRTCHNL_LINK_SPEED_20GB`.
    pub const SPEED_20GB: u32 = 1 << 5;
    /// `VIRTCHNL_LINK_SPEED_25GB`.
    pub const SPEED_25GB: u32 = 1 << 6;
    /// `VIRTCHNL_LINK_SPEED_5GB`.
    pub const SPEED_5GB: u32 = 1 << 7;

    /// Mbps of a legacy link speed value (`None` for unknown or not exactly one bit).
    pub const fn to_mbps(speed: u32) -> Option<u32> {
        match speed {
            SPEED_100MB => Some(100),
            SPEED_1GB => Some(1_000),
            SPEED_2_5GB => Some(2_500),
            SPEED_5GB => Some(5_000),
            SPEED_10GB => Some(10_000),
            SPEED_20GB => Some(20_000),
            SPEED_25GB => Some(25_000),
            SPEED_40GB => Some(40_000),
            _ => None,
        }
    }

    /// The legacy value for a speed in Mbps, if there is one.
    pub const fn from_mbps(mbps: u32) -> Option<u32> {
        match mbps {
            100 => Some(SPEED_100MB),
            1_000 => Some(SPEED_1GB),
            2_500 => Some(SPEED_2_5GB),
            5_000 => Some(SPEED_5GB),
            10_000 => Some(SPEED_10GB),
            20_000 => Some(SPEED_20GB),
            25_000 => Some(SPEED_25GB),
            40_000 => Some(SPEED_40GB),
            _ => None,
        }
    }
}

/// `virtchnl_promisc_info.flags` bits.
pub mod promisc {
    /// `FLAG_VF_UNICAST_PROMISC`.
    pub const UNICAST: u16 = 0x1;
    /// `FLAG_VF_MULTICAST_PROMISC`.
    pub const MULTICAST: u16 = 0x2;
}

/// `enum virtchnl_event_codes`.
pub mod event {
    /// `VIRTCHNL_EVENT_UNKNOWN`.
    pub const UNKNOWN: u32 = 0;
    /// `VIRTCHNL_EVENT_LINK_CHANGE`.
    pub const LINK_CHANGE: u32 = 1;
    /// `VIRTCHNL_EVENT_RESET_IMPENDING`.
    pub const RESET_IMPENDING: u32 = 2;
    /// `VIRTCHNL_EVENT_PF_DRIVER_CLOSE`.
    pub const PF_DRIVER_CLOSE: u32 = 3;
    /// `VIRTCHNL_EVENT_DCF_VSI_MAP_UPDATE`.
    pub const DCF_VSI_MAP_UPDATE: u32 = 4;
    /// `PF_EVENT_SEVERITY_INFO`.
    pub const SEVERITY_INFO: i32 = 0;
    /// `PF_EVENT_SEVERITY_ATTENTION`.
    pub const SEVERITY_ATTENTION: i32 = 1;
    /// `PF_EVENT_SEVERITY_ACTION_REQUIRED`.
    pub const SEVERITY_ACTION_REQUIRED: i32 = 2;
    /// `PF_EVENT_SEVERITY_CERTAIN_DOOM`.
    pub const SEVERITY_CERTAIN_DOOM: i32 = 255;
}

/// Packet classifier types (`enum i40e_filter_pctype`): the bit numbers of an RSS hash-enable
/// (`hena`) word.
pub mod pctype {
    /// `NONF_IPV4_UDP_UCAST`.
    pub const NONF_IPV4_UDP_UCAST: u32 = 29;
    /// `NONF_IPV4_UDP_MCAST`.
    pub const NONF_IPV4_UDP_MCAST: u32 = 30;
    /// `NONF_IPV4_UDP`.
    pub const NONF_IPV4_UDP: u32 = 31;
    /// `NONF_IPV4_TCP_SYN_NO_ACK`.
    pub const NONF_IPV4_TCP_SYN_NO_ACK: u32 = 32;
    /// `NONF_IPV4_TCP`.
    pub const NONF_IPV4_TCP: u32 = 33;
    /// `NONF_IPV4_SCTP`.
    pub const NONF_IPV4_SCTP: u32 = 34;
    /// `NONF_IPV4_OTHER`.
    pub const NONF_IPV4_OTHER: u32 = 35;
    /// `FRAG_IPV4`.
    pub const FRAG_IPV4: u32 = 36;
    /// `NONF_IPV6_UDP_UCAST`.
    pub const NONF_IPV6_UDP_UCAST: u32 = 39;
    /// `NONF_IPV6_UDP_MCAST`.
    pub const NONF_IPV6_UDP_MCAST: u32 = 40;
    /// `NONF_IPV6_UDP`.
    pub const NONF_IPV6_UDP: u32 = 41;
    /// `NONF_IPV6_TCP_SYN_NO_ACK`.
    pub const NONF_IPV6_TCP_SYN_NO_ACK: u32 = 42;
    /// `NONF_IPV6_TCP`.
    pub const NONF_IPV6_TCP: u32 = 43;
    /// `NONF_IPV6_SCTP`.
    pub const NONF_IPV6_SCTP: u32 = 44;
    /// `NONF_IPV6_OTHER`.
    pub const NONF_IPV6_OTHER: u32 = 45;
    /// `FRAG_IPV6`.
    pub const FRAG_IPV6: u32 = 46;
    /// `L2_PAYLOAD`.
    pub const L2_PAYLOAD: u32 = 63;

    /// The default hash-enable set (`I40E_DEFAULT_RSS_HENA`): IPv4/IPv6 UDP, TCP, SCTP,
    /// other and fragments, and L2 payload.
    pub const DEFAULT_HENA: u64 = (1 << NONF_IPV4_UDP)
        | (1 << NONF_IPV4_SCTP)
        | (1 << NONF_IPV4_TCP)
        | (1 << NONF_IPV4_OTHER)
        | (1 << FRAG_IPV4)
        | (1 << NONF_IPV6_UDP)
        | (1 << NONF_IPV6_TCP)
        | (1 << NONF_IPV6_SCTP)
        | (1 << NONF_IPV6_OTHER)
        | (1 << FRAG_IPV6)
        | (1 << L2_PAYLOAD);
}

/// `VIRTCHNL_VSI_TYPE_INVALID`.
pub const VSI_TYPE_INVALID: u32 = 0;
/// `VIRTCHNL_VSI_SRIOV`: the LAN VSI type both drivers look for.
pub const VSI_TYPE_SRIOV: u32 = 6;

/// `enum virtchnl_rx_hsplit` value for no header split.
pub const RX_HSPLIT_NO_SPLIT: u32 = 0;

/// Checks a list message's length for `count` elements: `legacy` or `flex` bytes exactly.
fn tail_len(
    what: &'static str,
    buf: &[u8],
    count: usize,
    legacy: usize,
    flex: usize,
) -> Result<(), DecodeError> {
    if buf.len() == legacy || buf.len() == flex {
        Ok(())
    } else {
        Err(DecodeError::TailLength {
            what,
            count,
            legacy,
            flex,
            actual: buf.len(),
        })
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

// ----- VERSION ---------------------------------------------------------------------------------

/// `struct virtchnl_version_info` (8 bytes): request and reply of VERSION.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VersionInfo {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl VersionInfo {
    /// Size on the wire.
    pub const SIZE: usize = 8;
    /// Version 1.1.
    pub const V1_1: VersionInfo = VersionInfo {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
    };

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_version_info", b, Self::SIZE)?;
        let r = Le::new("virtchnl_version_info", b);
        Ok(VersionInfo {
            major: r.u32(0)?,
            minor: r.u32(4)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        put32(&mut v, self.major);
        put32(&mut v, self.minor);
        v
    }
}

// ----- GET_VF_RESOURCES ------------------------------------------------------------------------

/// `struct virtchnl_vsi_resource` (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VsiResource {
    /// VSI id the VF uses in later messages.
    pub vsi_id: u16,
    /// Queue pairs of this VSI.
    pub num_queue_pairs: u16,
    /// `enum virtchnl_vsi_type` ([`VSI_TYPE_SRIOV`]).
    pub vsi_type: u32,
    /// Queue set handle.
    pub qset_handle: u16,
    /// The VF's default MAC address.
    pub default_mac_addr: [u8; 6],
}

impl VsiResource {
    /// Size on the wire.
    pub const SIZE: usize = 16;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_vsi_resource", b, Self::SIZE)?;
        let r = Le::new("virtchnl_vsi_resource", b);
        Ok(VsiResource {
            vsi_id: r.u16(0)?,
            num_queue_pairs: r.u16(2)?,
            vsi_type: r.u32(4)?,
            qset_handle: r.u16(8)?,
            default_mac_addr: r.bytes(10)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        put16(v, self.vsi_id);
        put16(v, self.num_queue_pairs);
        put32(v, self.vsi_type);
        put16(v, self.qset_handle);
        v.extend_from_slice(&self.default_mac_addr);
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_vf_resource`: the reply to GET_VF_RESOURCES. With one VSI it is 36 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VfResource {
    /// Queue pairs granted in total.
    pub num_queue_pairs: u16,
    /// MSI-X vectors the VF may use (admin queue included).
    pub max_vectors: u16,
    /// Largest MTU.
    pub max_mtu: u16,
    /// Granted [`caps`].
    pub vf_cap_flags: u32,
    /// RSS key size in bytes.
    pub rss_key_size: u32,
    /// RSS LUT size in entries.
    pub rss_lut_size: u32,
    /// The VSIs (`num_vsis` is their count).
    pub vsi_res: Vec<VsiResource>,
}

impl VfResource {
    /// Size with one VSI, `sizeof(struct virtchnl_vf_resource)`.
    pub const SIZE: usize = 36;
    /// The fixed head before `vsi_res`.
    pub const HEAD: usize = 20;

    /// Decodes a reply: the head and `num_vsis` VSI entries must be present; bytes after them
    /// are allowed (a PF may size the reply with room for one more VSI), and the reply always
    /// holds at least the one-VSI struct.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "virtchnl_vf_resource";
        at_least(WHAT, b, Self::HEAD)?;
        let r = Le::new(WHAT, b);
        let num_vsis = usize::from(r.u16(0)?);
        at_least(WHAT, b, Self::HEAD + num_vsis * VsiResource::SIZE)?;
        let mut vsi_res = Vec::with_capacity(num_vsis);
        for i in 0..num_vsis {
            let at = Self::HEAD + i * VsiResource::SIZE;
            vsi_res.push(VsiResource::decode(r.slice(at, VsiResource::SIZE)?)?);
        }
        Ok(VfResource {
            num_queue_pairs: r.u16(2)?,
            max_vectors: r.u16(4)?,
            max_mtu: r.u16(6)?,
            vf_cap_flags: r.u32(8)?,
            rss_key_size: r.u32(12)?,
            rss_lut_size: r.u32(16)?,
            vsi_res,
        })
    }

    /// Encodes: the head and the VSIs, at least one slot (zeroed when there is no VSI). At most
    /// `u16::MAX` VSIs are written.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.vsi_res.len().min(usize::from(u16::MAX));
        let mut v = Vec::with_capacity(Self::HEAD + n.max(1) * VsiResource::SIZE);
        put16(&mut v, n as u16);
        put16(&mut v, self.num_queue_pairs);
        put16(&mut v, self.max_vectors);
        put16(&mut v, self.max_mtu);
        put32(&mut v, self.vf_cap_flags);
        put32(&mut v, self.rss_key_size);
        put32(&mut v, self.rss_lut_size);
        for vsi in &self.vsi_res[..n] {
            vsi.put(&mut v);
        }
        if n == 0 {
            v.resize(Self::SIZE, 0);
        }
        v
    }
}

// ----- CONFIG_VSI_QUEUES -------------------------------------------------------------------------

/// `struct virtchnl_txq_info` (24 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TxqInfo {
    /// VSI id.
    pub vsi_id: u16,
    /// Queue index within the VSI.
    pub queue_id: u16,
    /// Ring length in descriptors (0: queue not configured).
    pub ring_len: u16,
    /// Deprecated head write-back enable (must be 0).
    pub headwb_enabled: u16,
    /// Ring base IOVA.
    pub dma_ring_addr: u64,
    /// Deprecated head write-back address.
    pub dma_headwb_addr: u64,
}

impl TxqInfo {
    /// Size on the wire.
    pub const SIZE: usize = 24;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_txq_info", b, Self::SIZE)?;
        let r = Le::new("virtchnl_txq_info", b);
        Ok(TxqInfo {
            vsi_id: r.u16(0)?,
            queue_id: r.u16(2)?,
            ring_len: r.u16(4)?,
            headwb_enabled: r.u16(6)?,
            dma_ring_addr: r.u64(8)?,
            dma_headwb_addr: r.u64(16)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        put16(v, self.vsi_id);
        put16(v, self.queue_id);
        put16(v, self.ring_len);
        put16(v, self.headwb_enabled);
        put64(v, self.dma_ring_addr);
        put64(v, self.dma_headwb_addr);
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_rxq_info` (40 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RxqInfo {
    /// VSI id.
    pub vsi_id: u16,
    /// Queue index within the VSI.
    pub queue_id: u16,
    /// Ring length in descriptors (0: queue not configured).
    pub ring_len: u32,
    /// Header buffer size (header split).
    pub hdr_size: u16,
    /// Header split enable.
    pub splithdr_enabled: u16,
    /// Data buffer size per descriptor.
    pub databuffer_size: u32,
    /// Largest packet the VF accepts.
    pub max_pkt_size: u32,
    /// CRC strip disable.
    pub crc_disable: u8,
    /// RX descriptor id ([`crate::spec::desc::RXDID_LEGACY_1`], ...).
    pub rxdid: u8,
    /// Ring base IOVA.
    pub dma_ring_addr: u64,
    /// `enum virtchnl_rx_hsplit`.
    pub rx_split_pos: u32,
}

impl RxqInfo {
    /// Size on the wire.
    pub const SIZE: usize = 40;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_rxq_info", b, Self::SIZE)?;
        let r = Le::new("virtchnl_rxq_info", b);
        Ok(RxqInfo {
            vsi_id: r.u16(0)?,
            queue_id: r.u16(2)?,
            ring_len: r.u32(4)?,
            hdr_size: r.u16(8)?,
            splithdr_enabled: r.u16(10)?,
            databuffer_size: r.u32(12)?,
            max_pkt_size: r.u32(16)?,
            crc_disable: r.u8(20)?,
            rxdid: r.u8(21)?,
            dma_ring_addr: r.u64(24)?,
            rx_split_pos: r.u32(32)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        put16(v, self.vsi_id);
        put16(v, self.queue_id);
        put32(v, self.ring_len);
        put16(v, self.hdr_size);
        put16(v, self.splithdr_enabled);
        put32(v, self.databuffer_size);
        put32(v, self.max_pkt_size);
        v.push(self.crc_disable);
        v.push(self.rxdid);
        v.extend_from_slice(&[0, 0]);
        put64(v, self.dma_ring_addr);
        put32(v, self.rx_split_pos);
        put32(v, 0);
    }

    /// Encodes (padding zeroed).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_queue_pair_info` (64 bytes): a TX and an RX queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QueuePairInfo {
    /// The TX queue.
    pub txq: TxqInfo,
    /// The RX queue.
    pub rxq: RxqInfo,
}

impl QueuePairInfo {
    /// Size on the wire.
    pub const SIZE: usize = 64;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_queue_pair_info", b, Self::SIZE)?;
        let r = Le::new("virtchnl_queue_pair_info", b);
        Ok(QueuePairInfo {
            txq: TxqInfo::decode(r.slice(0, TxqInfo::SIZE)?)?,
            rxq: RxqInfo::decode(r.slice(TxqInfo::SIZE, RxqInfo::SIZE)?)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        self.txq.put(v);
        self.rxq.put(v);
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_vsi_queue_config_info`: CONFIG_VSI_QUEUES. 72 bytes with its placeholder
/// pair; a message for `n` pairs is `72 + 64 n` (legacy) or `8 + 64 n` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VsiQueueConfigInfo {
    /// VSI id.
    pub vsi_id: u16,
    /// The queue pairs (`num_queue_pairs` is their count, at least 1).
    pub qpair: Vec<QueuePairInfo>,
}

impl VsiQueueConfigInfo {
    /// `sizeof(struct virtchnl_vsi_queue_config_info)`.
    pub const SIZE: usize = 72;
    /// The fixed head before `qpair`.
    pub const HEAD: usize = 8;
    const WHAT: &'static str = "virtchnl_vsi_queue_config_info";

    /// Legacy message length for `n` pairs.
    pub const fn legacy_len(n: usize) -> usize {
        Self::SIZE + n * QueuePairInfo::SIZE
    }

    /// Flexible-array message length for `n` pairs.
    pub const fn flex_len(n: usize) -> usize {
        Self::HEAD + n * QueuePairInfo::SIZE
    }

    /// Decodes a message (legacy or flexible length for its `num_queue_pairs`, which must not
    /// be 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        at_least(Self::WHAT, b, Self::HEAD)?;
        let r = Le::new(Self::WHAT, b);
        let n = usize::from(r.u16(2)?);
        if n == 0 {
            return Err(DecodeError::EmptyList { what: Self::WHAT });
        }
        tail_len(Self::WHAT, b, n, Self::legacy_len(n), Self::flex_len(n))?;
        let mut qpair = Vec::with_capacity(n);
        for i in 0..n {
            let at = Self::HEAD + i * QueuePairInfo::SIZE;
            qpair.push(QueuePairInfo::decode(r.slice(at, QueuePairInfo::SIZE)?)?);
        }
        Ok(VsiQueueConfigInfo {
            vsi_id: r.u16(0)?,
            qpair,
        })
    }

    /// Encodes in the legacy layout (at most `u16::MAX` pairs are written).
    pub fn encode(&self) -> Vec<u8> {
        let n = self.qpair.len().min(usize::from(u16::MAX));
        let mut v = Vec::with_capacity(Self::legacy_len(n));
        put16(&mut v, self.vsi_id);
        put16(&mut v, n as u16);
        put32(&mut v, 0);
        for q in &self.qpair[..n] {
            q.put(&mut v);
        }
        v.resize(Self::legacy_len(n), 0);
        v
    }
}

// ----- CONFIG_IRQ_MAP --------------------------------------------------------------------------

/// `struct virtchnl_vector_map` (12 bytes): which queues raise a vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VectorMap {
    /// VSI id.
    pub vsi_id: u16,
    /// MSI-X vector (0 = admin queue).
    pub vector_id: u16,
    /// Bitmap of RX queues.
    pub rxq_map: u16,
    /// Bitmap of TX queues.
    pub txq_map: u16,
    /// RX ITR index.
    pub rxitr_idx: u16,
    /// TX ITR index.
    pub txitr_idx: u16,
}

impl VectorMap {
    /// Size on the wire.
    pub const SIZE: usize = 12;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_vector_map", b, Self::SIZE)?;
        let r = Le::new("virtchnl_vector_map", b);
        Ok(VectorMap {
            vsi_id: r.u16(0)?,
            vector_id: r.u16(2)?,
            rxq_map: r.u16(4)?,
            txq_map: r.u16(6)?,
            rxitr_idx: r.u16(8)?,
            txitr_idx: r.u16(10)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        for x in [
            self.vsi_id,
            self.vector_id,
            self.rxq_map,
            self.txq_map,
            self.rxitr_idx,
            self.txitr_idx,
        ] {
            put16(v, x);
        }
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_irq_map_info`: CONFIG_IRQ_MAP. 14 bytes with its placeholder; `n` vectors
/// are `14 + 12 n` (legacy) or `2 + 12 n` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IrqMapInfo {
    /// The vector maps (`num_vectors` is their count, at least 1).
    pub vecmap: Vec<VectorMap>,
}

impl IrqMapInfo {
    /// `sizeof(struct virtchnl_irq_map_info)`.
    pub const SIZE: usize = 14;
    /// The fixed head before `vecmap`.
    pub const HEAD: usize = 2;
    const WHAT: &'static str = "virtchnl_irq_map_info";

    /// Legacy message length for `n` vectors.
    pub const fn legacy_len(n: usize) -> usize {
        Self::SIZE + n * VectorMap::SIZE
    }

    /// Flexible-array message length for `n` vectors.
    pub const fn flex_len(n: usize) -> usize {
        Self::HEAD + n * VectorMap::SIZE
    }

    /// Decodes a message (legacy or flexible length; `num_vectors` not 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        at_least(Self::WHAT, b, Self::HEAD)?;
        let r = Le::new(Self::WHAT, b);
        let n = usize::from(r.u16(0)?);
        if n == 0 {
            return Err(DecodeError::EmptyList { what: Self::WHAT });
        }
        tail_len(Self::WHAT, b, n, Self::legacy_len(n), Self::flex_len(n))?;
        let mut vecmap = Vec::with_capacity(n);
        for i in 0..n {
            let at = Self::HEAD + i * VectorMap::SIZE;
            vecmap.push(VectorMap::decode(r.slice(at, VectorMap::SIZE)?)?);
        }
        Ok(IrqMapInfo { vecmap })
    }

    /// Encodes in the legacy layout.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.vecmap.len().min(usize::from(u16::MAX));
        let mut v = Vec::with_capacity(Self::legacy_len(n));
        put16(&mut v, n as u16);
        for m in &self.vecmap[..n] {
            m.put(&mut v);
        }
        v.resize(Self::legacy_len(n), 0);
        v
    }
}

// ----- ENABLE/DISABLE_QUEUES, GET_STATS --------------------------------------------------------

/// `struct virtchnl_queue_select` (12 bytes): queue bitmaps for ENABLE_QUEUES, DISABLE_QUEUES
/// and GET_STATS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QueueSelect {
    /// VSI id.
    pub vsi_id: u16,
    /// Bitmap of RX queues.
    pub rx_queues: u32,
    /// Bitmap of TX queues.
    pub tx_queues: u32,
}

impl QueueSelect {
    /// Size on the wire.
    pub const SIZE: usize = 12;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_queue_select", b, Self::SIZE)?;
        let r = Le::new("virtchnl_queue_select", b);
        Ok(QueueSelect {
            vsi_id: r.u16(0)?,
            rx_queues: r.u32(4)?,
            tx_queues: r.u32(8)?,
        })
    }

    /// Encodes (pad zeroed).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        put16(&mut v, self.vsi_id);
        put16(&mut v, 0);
        put32(&mut v, self.rx_queues);
        put32(&mut v, self.tx_queues);
        v
    }
}

// ----- ADD/DEL_ETH_ADDR ------------------------------------------------------------------------

/// `virtchnl_ether_addr.type` of newer virtchnl: no type given (what 1.1 drivers send).
pub const ETHER_ADDR_LEGACY: u8 = 0;
/// `VIRTCHNL_ETHER_ADDR_PRIMARY`.
pub const ETHER_ADDR_PRIMARY: u8 = 1;
/// `VIRTCHNL_ETHER_ADDR_EXTRA`.
pub const ETHER_ADDR_EXTRA: u8 = 2;

/// `struct virtchnl_ether_addr` (8 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EtherAddr {
    /// The MAC address.
    pub addr: [u8; 6],
    /// Byte 6: `pad[0]` in virtchnl 1.1, `type` ([`ETHER_ADDR_PRIMARY`], ...) in newer virtchnl.
    pub addr_type: u8,
}

impl EtherAddr {
    /// Size on the wire.
    pub const SIZE: usize = 8;

    /// Decodes exactly [`Self::SIZE`] bytes (byte 7 is padding and ignored).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_ether_addr", b, Self::SIZE)?;
        let r = Le::new("virtchnl_ether_addr", b);
        Ok(EtherAddr {
            addr: r.bytes(0)?,
            addr_type: r.u8(6)?,
        })
    }

    fn put(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(&self.addr);
        v.push(self.addr_type);
        v.push(0);
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.put(&mut v);
        v
    }
}

/// `struct virtchnl_ether_addr_list`: ADD/DEL_ETH_ADDR. 12 bytes with its placeholder; `n`
/// addresses are `12 + 8 n` (legacy) or `4 + 8 n` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EtherAddrList {
    /// VSI id.
    pub vsi_id: u16,
    /// The addresses (`num_elements`, at least 1).
    pub list: Vec<EtherAddr>,
}

impl EtherAddrList {
    /// `sizeof(struct virtchnl_ether_addr_list)`.
    pub const SIZE: usize = 12;
    /// The fixed head before `list`.
    pub const HEAD: usize = 4;
    const WHAT: &'static str = "virtchnl_ether_addr_list";

    /// Legacy message length for `n` addresses.
    pub const fn legacy_len(n: usize) -> usize {
        Self::SIZE + n * EtherAddr::SIZE
    }

    /// Flexible-array message length for `n` addresses.
    pub const fn flex_len(n: usize) -> usize {
        Self::HEAD + n * EtherAddr::SIZE
    }

    /// Decodes a message (legacy or flexible length; `num_elements` not 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        at_least(Self::WHAT, b, Self::HEAD)?;
        let r = Le::new(Self::WHAT, b);
        let n = usize::from(r.u16(2)?);
        if n == 0 {
            return Err(DecodeError::EmptyList { what: Self::WHAT });
        }
        tail_len(Self::WHAT, b, n, Self::legacy_len(n), Self::flex_len(n))?;
        let mut list = Vec::with_capacity(n);
        for i in 0..n {
            let at = Self::HEAD + i * EtherAddr::SIZE;
            list.push(EtherAddr::decode(r.slice(at, EtherAddr::SIZE)?)?);
        }
        Ok(EtherAddrList {
            vsi_id: r.u16(0)?,
            list,
        })
    }

    /// Encodes in the legacy layout.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.list.len().min(usize::from(u16::MAX));
        let mut v = Vec::with_capacity(Self::legacy_len(n));
        put16(&mut v, self.vsi_id);
        put16(&mut v, n as u16);
        for a in &self.list[..n] {
            a.put(&mut v);
        }
        v.resize(Self::legacy_len(n), 0);
        v
    }
}

// ----- ADD/DEL_VLAN ----------------------------------------------------------------------------

/// `struct virtchnl_vlan_filter_list`: ADD/DEL_VLAN. 6 bytes with its placeholder; `n` ids are
/// `6 + 2 n` (legacy) or `4 + 2 n` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VlanFilterList {
    /// VSI id.
    pub vsi_id: u16,
    /// The VLAN ids (`num_elements`, at least 1).
    pub vlan_id: Vec<u16>,
}

impl VlanFilterList {
    /// `sizeof(struct virtchnl_vlan_filter_list)`.
    pub const SIZE: usize = 6;
    /// The fixed head before `vlan_id`.
    pub const HEAD: usize = 4;
    const WHAT: &'static str = "virtchnl_vlan_filter_list";

    /// Legacy message length for `n` ids.
    pub const fn legacy_len(n: usize) -> usize {
        Self::SIZE + n * 2
    }

    /// Flexible-array message length for `n` ids.
    pub const fn flex_len(n: usize) -> usize {
        Self::HEAD + n * 2
    }

    /// Decodes a message (legacy or flexible length; `num_elements` not 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        at_least(Self::WHAT, b, Self::HEAD)?;
        let r = Le::new(Self::WHAT, b);
        let n = usize::from(r.u16(2)?);
        if n == 0 {
            return Err(DecodeError::EmptyList { what: Self::WHAT });
        }
        tail_len(Self::WHAT, b, n, Self::legacy_len(n), Self::flex_len(n))?;
        let mut vlan_id = Vec::with_capacity(n);
        for i in 0..n {
            vlan_id.push(r.u16(Self::HEAD + 2 * i)?);
        }
        Ok(VlanFilterList {
            vsi_id: r.u16(0)?,
            vlan_id,
        })
    }

    /// Encodes in the legacy layout.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.vlan_id.len().min(usize::from(u16::MAX));
        let mut v = Vec::with_capacity(Self::legacy_len(n));
        put16(&mut v, self.vsi_id);
        put16(&mut v, n as u16);
        for id in &self.vlan_id[..n] {
            put16(&mut v, *id);
        }
        v.resize(Self::legacy_len(n), 0);
        v
    }
}

// ----- CONFIG_PROMISCUOUS_MODE -----------------------------------------------------------------

/// `struct virtchnl_promisc_info` (4 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PromiscInfo {
    /// VSI id.
    pub vsi_id: u16,
    /// [`promisc`] bits.
    pub flags: u16,
}

impl PromiscInfo {
    /// Size on the wire.
    pub const SIZE: usize = 4;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_promisc_info", b, Self::SIZE)?;
        let r = Le::new("virtchnl_promisc_info", b);
        Ok(PromiscInfo {
            vsi_id: r.u16(0)?,
            flags: r.u16(2)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        put16(&mut v, self.vsi_id);
        put16(&mut v, self.flags);
        v
    }
}

// ----- GET_STATS reply -------------------------------------------------------------------------

/// `struct virtchnl_eth_stats` (96 bytes): the reply to GET_STATS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EthStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Unicast packets received.
    pub rx_unicast: u64,
    /// Multicast packets received.
    pub rx_multicast: u64,
    /// Broadcast packets received.
    pub rx_broadcast: u64,
    /// Received packets dropped.
    pub rx_discards: u64,
    /// Received packets of an unknown protocol.
    pub rx_unknown_protocol: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Unicast packets sent.
    pub tx_unicast: u64,
    /// Multicast packets sent.
    pub tx_multicast: u64,
    /// Broadcast packets sent.
    pub tx_broadcast: u64,
    /// Packets to send that were dropped.
    pub tx_discards: u64,
    /// Send errors.
    pub tx_errors: u64,
}

impl EthStats {
    /// Size on the wire.
    pub const SIZE: usize = 96;

    fn fields(&self) -> [u64; 12] {
        [
            self.rx_bytes,
            self.rx_unicast,
            self.rx_multicast,
            self.rx_broadcast,
            self.rx_discards,
            self.rx_unknown_protocol,
            self.tx_bytes,
            self.tx_unicast,
            self.tx_multicast,
            self.tx_broadcast,
            self.tx_discards,
            self.tx_errors,
        ]
    }

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_eth_stats", b, Self::SIZE)?;
        let r = Le::new("virtchnl_eth_stats", b);
        let f = |i: usize| r.u64(8 * i);
        Ok(EthStats {
            rx_bytes: f(0)?,
            rx_unicast: f(1)?,
            rx_multicast: f(2)?,
            rx_broadcast: f(3)?,
            rx_discards: f(4)?,
            rx_unknown_protocol: f(5)?,
            tx_bytes: f(6)?,
            tx_unicast: f(7)?,
            tx_multicast: f(8)?,
            tx_broadcast: f(9)?,
            tx_discards: f(10)?,
            tx_errors: f(11)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        for x in self.fields() {
            put64(&mut v, x);
        }
        v
    }
}

// ----- RSS -------------------------------------------------------------------------------------

/// `struct virtchnl_rss_key`: CONFIG_RSS_KEY. 6 bytes with its one-byte placeholder; a `k`-byte
/// key is `6 + k - 1` (legacy) or `4 + k` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RssKey {
    /// VSI id.
    pub vsi_id: u16,
    /// The key (`key_len` bytes, at least 1).
    pub key: Vec<u8>,
}

/// `struct virtchnl_rss_lut`: CONFIG_RSS_LUT. 6 bytes with its one-byte placeholder; `k`
/// entries are `6 + k - 1` (legacy) or `4 + k` (flexible) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RssLut {
    /// VSI id.
    pub vsi_id: u16,
    /// The table (`lut_entries` bytes, at least 1).
    pub lut: Vec<u8>,
}

/// Shared decoding of the two byte-array RSS messages: (vsi_id, bytes).
fn decode_rss_bytes(what: &'static str, b: &[u8]) -> Result<(u16, Vec<u8>), DecodeError> {
    const HEAD: usize = 4;
    at_least(what, b, HEAD)?;
    let r = Le::new(what, b);
    let k = usize::from(r.u16(2)?);
    if k == 0 {
        return Err(DecodeError::EmptyList { what });
    }
    tail_len(what, b, k, RssKey::SIZE + k - 1, HEAD + k)?;
    Ok((r.u16(0)?, r.slice(HEAD, k)?.to_vec()))
}

fn encode_rss_bytes(vsi_id: u16, bytes: &[u8]) -> Vec<u8> {
    let k = bytes.len().min(usize::from(u16::MAX));
    let mut v = Vec::with_capacity(RssKey::SIZE + k);
    put16(&mut v, vsi_id);
    put16(&mut v, k as u16);
    v.extend_from_slice(&bytes[..k]);
    // Legacy length: sizeof (6) + k - 1, at least the struct itself.
    v.resize((RssKey::SIZE + k).saturating_sub(1).max(RssKey::SIZE), 0);
    v
}

impl RssKey {
    /// `sizeof(struct virtchnl_rss_key)`.
    pub const SIZE: usize = 6;

    /// Legacy message length for a `k`-byte key (`k` ≥ 1).
    pub const fn legacy_len(k: usize) -> usize {
        Self::SIZE + k - 1
    }

    /// Flexible-array message length for a `k`-byte key.
    pub const fn flex_len(k: usize) -> usize {
        4 + k
    }

    /// Decodes a message (legacy or flexible length; `key_len` not 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let (vsi_id, key) = decode_rss_bytes("virtchnl_rss_key", b)?;
        Ok(RssKey { vsi_id, key })
    }

    /// Encodes in the legacy layout.
    pub fn encode(&self) -> Vec<u8> {
        encode_rss_bytes(self.vsi_id, &self.key)
    }
}

impl RssLut {
    /// `sizeof(struct virtchnl_rss_lut)`.
    pub const SIZE: usize = 6;

    /// Legacy message length for `k` entries (`k` ≥ 1).
    pub const fn legacy_len(k: usize) -> usize {
        Self::SIZE + k - 1
    }

    /// Flexible-array message length for `k` entries.
    pub const fn flex_len(k: usize) -> usize {
        4 + k
    }

    /// Decodes a message (legacy or flexible length; `lut_entries` not 0).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let (vsi_id, lut) = decode_rss_bytes("virtchnl_rss_lut", b)?;
        Ok(RssLut { vsi_id, lut })
    }

    /// Encodes in the legacy layout.
    pub fn encode(&self) -> Vec<u8> {
        encode_rss_bytes(self.vsi_id, &self.lut)
    }
}

/// `struct virtchnl_rss_hena` (8 bytes): SET_RSS_HENA request, GET_RSS_HENA_CAPS reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RssHena {
    /// Bitmap of enabled hash packet types.
    pub hena: u64,
}

impl RssHena {
    /// Size on the wire.
    pub const SIZE: usize = 8;

    /// Decodes exactly [`Self::SIZE`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_rss_hena", b, Self::SIZE)?;
        Ok(RssHena {
            hena: Le::new("virtchnl_rss_hena", b).u64(0)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        self.hena.to_le_bytes().to_vec()
    }
}

// ----- EVENT -----------------------------------------------------------------------------------

/// The `event_data` union of [`PfEvent`], by event code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PfEventData {
    /// `VIRTCHNL_EVENT_LINK_CHANGE`: `link_event` (speed is a [`link_speed`] value) or, when
    /// `ADV_LINK_SPEED` was negotiated, `link_event_adv` (speed in Mbps); same layout.
    LinkChange {
        /// Link speed (legacy enum or Mbps, see above).
        link_speed: u32,
        /// Link up (non-zero) or down.
        link_status: u8,
    },
    /// `VIRTCHNL_EVENT_RESET_IMPENDING`.
    ResetImpending,
    /// `VIRTCHNL_EVENT_PF_DRIVER_CLOSE`.
    PfDriverClose,
    /// `VIRTCHNL_EVENT_DCF_VSI_MAP_UPDATE`.
    DcfVsiMapUpdate {
        /// VF id.
        vf_id: u16,
        /// VSI id.
        vsi_id: u16,
    },
    /// Any other code, with the union's raw 8 bytes.
    Other {
        /// The event code.
        event: u32,
        /// The raw union.
        data: [u8; 8],
    },
}

/// `struct virtchnl_pf_event` (16 bytes): the body of a PF→VF `VIRTCHNL_OP_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PfEvent {
    /// The event and its data.
    pub data: PfEventData,
    /// `PF_EVENT_SEVERITY_*` ([`event`]).
    pub severity: i32,
}

impl PfEvent {
    /// Size on the wire.
    pub const SIZE: usize = 16;

    /// A link-change event with severity INFO.
    pub const fn link_change(link_speed: u32, link_up: bool) -> Self {
        PfEvent {
            data: PfEventData::LinkChange {
                link_speed,
                link_status: link_up as u8,
            },
            severity: event::SEVERITY_INFO,
        }
    }

    /// The event code.
    pub const fn code(&self) -> u32 {
        match self.data {
            PfEventData::LinkChange { .. } => event::LINK_CHANGE,
            PfEventData::ResetImpending => event::RESET_IMPENDING,
            PfEventData::PfDriverClose => event::PF_DRIVER_CLOSE,
            PfEventData::DcfVsiMapUpdate { .. } => event::DCF_VSI_MAP_UPDATE,
            PfEventData::Other { event, .. } => event,
        }
    }

    /// Decodes exactly [`Self::SIZE`] bytes. For the events without data the union's bytes are
    /// ignored.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        exact("virtchnl_pf_event", b, Self::SIZE)?;
        let r = Le::new("virtchnl_pf_event", b);
        let code = r.u32(0)?;
        let data = match code {
            event::LINK_CHANGE => PfEventData::LinkChange {
                link_speed: r.u32(4)?,
                link_status: r.u8(8)?,
            },
            event::RESET_IMPENDING => PfEventData::ResetImpending,
            event::PF_DRIVER_CLOSE => PfEventData::PfDriverClose,
            event::DCF_VSI_MAP_UPDATE => PfEventData::DcfVsiMapUpdate {
                vf_id: r.u16(4)?,
                vsi_id: r.u16(6)?,
            },
            other => PfEventData::Other {
                event: other,
                data: r.bytes(4)?,
            },
        };
        Ok(PfEvent {
            data,
            severity: r.i32(12)?,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        put32(&mut v, self.code());
        let mut u = [0u8; 8];
        match self.data {
            PfEventData::LinkChange {
                link_speed,
                link_status,
            } => {
                u[0..4].copy_from_slice(&link_speed.to_le_bytes());
                u[4] = link_status;
            }
            PfEventData::DcfVsiMapUpdate { vf_id, vsi_id } => {
                u[0..2].copy_from_slice(&vf_id.to_le_bytes());
                u[2..4].copy_from_slice(&vsi_id.to_le_bytes());
            }
            PfEventData::Other { data, .. } => u = data,
            PfEventData::ResetImpending | PfEventData::PfDriverClose => {}
        }
        v.extend_from_slice(&u);
        v.extend_from_slice(&self.severity.to_le_bytes());
        v
    }
}

// ----- whole VF→PF messages --------------------------------------------------------------------

/// A VF→PF message, decoded by op code with the length rules of `virtchnl_vc_validate_vf_msg`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VfRequest {
    /// VERSION (8 bytes).
    Version(VersionInfo),
    /// RESET_VF (no body; no reply).
    ResetVf,
    /// GET_VF_RESOURCES: a 4-byte capability word from a 1.1 VF, nothing from a 1.0 VF.
    GetVfResources {
        /// The requested [`caps`], if sent.
        caps: Option<u32>,
    },
    /// CONFIG_VSI_QUEUES.
    ConfigVsiQueues(VsiQueueConfigInfo),
    /// CONFIG_IRQ_MAP.
    ConfigIrqMap(IrqMapInfo),
    /// ENABLE_QUEUES.
    EnableQueues(QueueSelect),
    /// DISABLE_QUEUES.
    DisableQueues(QueueSelect),
    /// ADD_ETH_ADDR.
    AddEthAddr(EtherAddrList),
    /// DEL_ETH_ADDR.
    DelEthAddr(EtherAddrList),
    /// ADD_VLAN.
    AddVlan(VlanFilterList),
    /// DEL_VLAN.
    DelVlan(VlanFilterList),
    /// CONFIG_PROMISCUOUS_MODE.
    ConfigPromiscuousMode(PromiscInfo),
    /// GET_STATS.
    GetStats(QueueSelect),
    /// CONFIG_RSS_KEY.
    ConfigRssKey(RssKey),
    /// CONFIG_RSS_LUT.
    ConfigRssLut(RssLut),
    /// GET_RSS_HENA_CAPS (no body).
    GetRssHenaCaps,
    /// SET_RSS_HENA.
    SetRssHena(RssHena),
    /// ENABLE_VLAN_STRIPPING (no body).
    EnableVlanStripping,
    /// DISABLE_VLAN_STRIPPING (no body).
    DisableVlanStripping,
    /// Any other op (unknown, PF→VF only, or not modelled here), with its body unchecked.
    Other {
        /// The op code.
        op: u32,
        /// The body.
        msg: Vec<u8>,
    },
}

fn no_body(what: &'static str, b: &[u8]) -> Result<(), DecodeError> {
    exact(what, b, 0)
}

impl VfRequest {
    /// Decodes the message `msg` of op `op`. Ops this module does not model come back as
    /// [`VfRequest::Other`] (a device answers them NOT_SUPPORTED).
    pub fn decode(op: u32, msg: &[u8]) -> Result<Self, DecodeError> {
        use VirtchnlOp as O;
        let Some(known) = VirtchnlOp::from_raw(op) else {
            return Ok(VfRequest::Other {
                op,
                msg: msg.to_vec(),
            });
        };
        Ok(match known {
            O::Version => VfRequest::Version(VersionInfo::decode(msg)?),
            O::ResetVf => {
                no_body("VIRTCHNL_OP_RESET_VF", msg)?;
                VfRequest::ResetVf
            }
            O::GetVfResources => match msg.len() {
                0 => VfRequest::GetVfResources { caps: None },
                _ => {
                    exact("VIRTCHNL_OP_GET_VF_RESOURCES", msg, 4)?;
                    let caps = Le::new("VIRTCHNL_OP_GET_VF_RESOURCES", msg).u32(0)?;
                    VfRequest::GetVfResources { caps: Some(caps) }
                }
            },
            O::ConfigVsiQueues => VfRequest::ConfigVsiQueues(VsiQueueConfigInfo::decode(msg)?),
            O::ConfigIrqMap => VfRequest::ConfigIrqMap(IrqMapInfo::decode(msg)?),
            O::EnableQueues => VfRequest::EnableQueues(QueueSelect::decode(msg)?),
            O::DisableQueues => VfRequest::DisableQueues(QueueSelect::decode(msg)?),
            O::AddEthAddr => VfRequest::AddEthAddr(EtherAddrList::decode(msg)?),
            O::DelEthAddr => VfRequest::DelEthAddr(EtherAddrList::decode(msg)?),
            O::AddVlan => VfRequest::AddVlan(VlanFilterList::decode(msg)?),
            O::DelVlan => VfRequest::DelVlan(VlanFilterList::decode(msg)?),
            O::ConfigPromiscuousMode => VfRequest::ConfigPromiscuousMode(PromiscInfo::decode(msg)?),
            O::GetStats => VfRequest::GetStats(QueueSelect::decode(msg)?),
            O::ConfigRssKey => VfRequest::ConfigRssKey(RssKey::decode(msg)?),
            O::ConfigRssLut => VfRequest::ConfigRssLut(RssLut::decode(msg)?),
            O::GetRssHenaCaps => {
                no_body("VIRTCHNL_OP_GET_RSS_HENA_CAPS", msg)?;
                VfRequest::GetRssHenaCaps
            }
            O::SetRssHena => VfRequest::SetRssHena(RssHena::decode(msg)?),
            O::EnableVlanStripping => {
                no_body("VIRTCHNL_OP_ENABLE_VLAN_STRIPPING", msg)?;
                VfRequest::EnableVlanStripping
            }
            O::DisableVlanStripping => {
                no_body("VIRTCHNL_OP_DISABLE_VLAN_STRIPPING", msg)?;
                VfRequest::DisableVlanStripping
            }
            _ => VfRequest::Other {
                op,
                msg: msg.to_vec(),
            },
        })
    }

    /// The op code.
    pub fn op(&self) -> u32 {
        use VirtchnlOp as O;
        match self {
            VfRequest::Version(_) => O::Version.raw(),
            VfRequest::ResetVf => O::ResetVf.raw(),
            VfRequest::GetVfResources { .. } => O::GetVfResources.raw(),
            VfRequest::ConfigVsiQueues(_) => O::ConfigVsiQueues.raw(),
            VfRequest::ConfigIrqMap(_) => O::ConfigIrqMap.raw(),
            VfRequest::EnableQueues(_) => O::EnableQueues.raw(),
            VfRequest::DisableQueues(_) => O::DisableQueues.raw(),
            VfRequest::AddEthAddr(_) => O::AddEthAddr.raw(),
            VfRequest::DelEthAddr(_) => O::DelEthAddr.raw(),
            VfRequest::AddVlan(_) => O::AddVlan.raw(),
            VfRequest::DelVlan(_) => O::DelVlan.raw(),
            VfRequest::ConfigPromiscuousMode(_) => O::ConfigPromiscuousMode.raw(),
            VfRequest::GetStats(_) => O::GetStats.raw(),
            VfRequest::ConfigRssKey(_) => O::ConfigRssKey.raw(),
            VfRequest::ConfigRssLut(_) => O::ConfigRssLut.raw(),
            VfRequest::GetRssHenaCaps => O::GetRssHenaCaps.raw(),
            VfRequest::SetRssHena(_) => O::SetRssHena.raw(),
            VfRequest::EnableVlanStripping => O::EnableVlanStripping.raw(),
            VfRequest::DisableVlanStripping => O::DisableVlanStripping.raw(),
            VfRequest::Other { op, .. } => *op,
        }
    }

    /// Encodes the body (legacy layouts for lists).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            VfRequest::Version(v) => v.encode(),
            VfRequest::ResetVf
            | VfRequest::GetRssHenaCaps
            | VfRequest::EnableVlanStripping
            | VfRequest::DisableVlanStripping
            | VfRequest::GetVfResources { caps: None } => Vec::new(),
            VfRequest::GetVfResources { caps: Some(c) } => c.to_le_bytes().to_vec(),
            VfRequest::ConfigVsiQueues(m) => m.encode(),
            VfRequest::ConfigIrqMap(m) => m.encode(),
            VfRequest::EnableQueues(m) | VfRequest::DisableQueues(m) | VfRequest::GetStats(m) => {
                m.encode()
            }
            VfRequest::AddEthAddr(m) | VfRequest::DelEthAddr(m) => m.encode(),
            VfRequest::AddVlan(m) | VfRequest::DelVlan(m) => m.encode(),
            VfRequest::ConfigPromiscuousMode(m) => m.encode(),
            VfRequest::ConfigRssKey(m) => m.encode(),
            VfRequest::ConfigRssLut(m) => m.encode(),
            VfRequest::SetRssHena(m) => m.encode(),
            VfRequest::Other { msg, .. } => msg.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp(q: u16) -> QueuePairInfo {
        QueuePairInfo {
            txq: TxqInfo {
                vsi_id: 3,
                queue_id: q,
                ring_len: 512,
                headwb_enabled: 0,
                dma_ring_addr: 0x1000 * u64::from(q) + 0x10_0000,
                dma_headwb_addr: 0,
            },
            rxq: RxqInfo {
                vsi_id: 3,
                queue_id: q,
                ring_len: 1024,
                hdr_size: 0,
                splithdr_enabled: 0,
                databuffer_size: 2048,
                max_pkt_size: 1518,
                crc_disable: 0,
                rxdid: 1,
                dma_ring_addr: 0x2000 * u64::from(q) + 0x20_0000,
                rx_split_pos: 0,
            },
        }
    }

    /// `VIRTCHNL_CHECK_STRUCT_LEN`: every struct's size as virtchnl.h pins it, with the
    /// one-element placeholder arrays of the list structs.
    #[test]
    fn struct_sizes_match_virtchnl_check_struct_len() {
        assert_eq!(VersionInfo::default().encode().len(), 8);
        assert_eq!(VsiResource::default().encode().len(), 16);
        let one_vsi = VfResource {
            vsi_res: vec![VsiResource::default()],
            ..Default::default()
        };
        assert_eq!(one_vsi.encode().len(), 36);
        assert_eq!(VfResource::default().encode().len(), 36);
        assert_eq!(TxqInfo::default().encode().len(), 24);
        assert_eq!(RxqInfo::default().encode().len(), 40);
        assert_eq!(QueuePairInfo::default().encode().len(), 64);
        assert_eq!(VsiQueueConfigInfo::SIZE, 72);
        assert_eq!(VsiQueueConfigInfo::default().encode().len(), 72);
        assert_eq!(VectorMap::default().encode().len(), 12);
        assert_eq!(IrqMapInfo::default().encode().len(), 14);
        assert_eq!(QueueSelect::default().encode().len(), 12);
        assert_eq!(EtherAddr::default().encode().len(), 8);
        assert_eq!(EtherAddrList::default().encode().len(), 12);
        assert_eq!(VlanFilterList::default().encode().len(), 6);
        assert_eq!(PromiscInfo::default().encode().len(), 4);
        assert_eq!(EthStats::default().encode().len(), 96);
        assert_eq!(RssKey::default().encode().len(), 6);
        assert_eq!(RssLut::default().encode().len(), 6);
        assert_eq!(RssHena::default().encode().len(), 8);
        assert_eq!(PfEvent::link_change(0, false).encode().len(), 16);
        // The request-length table of the reference.
        assert_eq!(VsiQueueConfigInfo::legacy_len(3), 72 + 3 * 64);
        assert_eq!(IrqMapInfo::legacy_len(2), 14 + 2 * 12);
        assert_eq!(EtherAddrList::legacy_len(2), 12 + 2 * 8);
        assert_eq!(VlanFilterList::legacy_len(2), 6 + 2 * 2);
        assert_eq!(RssKey::legacy_len(52), 6 + 52 - 1);
        assert_eq!(RssLut::legacy_len(64), 6 + 64 - 1);
    }

    #[test]
    fn field_offsets_are_the_c_layout() {
        let r = RxqInfo {
            vsi_id: 0x0102,
            queue_id: 0x0304,
            ring_len: 0x0506_0708,
            hdr_size: 0x090A,
            splithdr_enabled: 0x0B0C,
            databuffer_size: 0x0D0E_0F10,
            max_pkt_size: 0x1112_1314,
            crc_disable: 0x15,
            rxdid: 0x16,
            dma_ring_addr: 0x1718_191A_1B1C_1D1E,
            rx_split_pos: 0x1F20_2122,
        };
        let b = r.encode();
        assert_eq!(&b[4..8], &0x0506_0708u32.to_le_bytes());
        assert_eq!(b[20], 0x15);
        assert_eq!(b[21], 0x16);
        assert_eq!(&b[22..24], &[0, 0]);
        assert_eq!(&b[24..32], &0x1718_191A_1B1C_1D1Eu64.to_le_bytes());
        assert_eq!(&b[32..36], &0x1F20_2122u32.to_le_bytes());
        assert_eq!(RxqInfo::decode(&b), Ok(r));

        let vsi = VsiResource {
            vsi_id: 1,
            num_queue_pairs: 4,
            vsi_type: VSI_TYPE_SRIOV,
            qset_handle: 9,
            default_mac_addr: [2, 0, 0, 0, 0, 1],
        };
        let b = vsi.encode();
        assert_eq!(&b[4..8], &6u32.to_le_bytes());
        assert_eq!(&b[8..10], &9u16.to_le_bytes());
        assert_eq!(&b[10..16], &[2, 0, 0, 0, 0, 1]);

        let q = QueueSelect {
            vsi_id: 7,
            rx_queues: 0xA,
            tx_queues: 0xB,
        };
        let b = q.encode();
        assert_eq!(&b[2..4], &[0, 0]);
        assert_eq!(&b[4..8], &0xAu32.to_le_bytes());
        assert_eq!(&b[8..12], &0xBu32.to_le_bytes());

        let e = PfEvent::link_change(link_speed::SPEED_10GB, true).encode();
        assert_eq!(&e[0..4], &1u32.to_le_bytes());
        assert_eq!(&e[4..8], &8u32.to_le_bytes());
        assert_eq!(e[8], 1);
        assert_eq!(&e[12..16], &0i32.to_le_bytes());
    }

    #[test]
    fn vsi_queue_config_accepts_both_layouts_and_nothing_else() {
        let m = VsiQueueConfigInfo {
            vsi_id: 3,
            qpair: vec![qp(0), qp(1)],
        };
        let legacy = m.encode();
        assert_eq!(legacy.len(), 72 + 2 * 64);
        assert_eq!(VsiQueueConfigInfo::decode(&legacy), Ok(m.clone()));
        let flex = &legacy[..8 + 2 * 64];
        assert_eq!(VsiQueueConfigInfo::decode(flex), Ok(m.clone()));
        for bad in [8 + 64, 8 + 2 * 64 - 1, 8 + 2 * 64 + 1, 72 + 2 * 64 - 1] {
            assert!(
                matches!(
                    VsiQueueConfigInfo::decode(&legacy[..bad.min(legacy.len())]),
                    Err(DecodeError::TailLength { count: 2, .. })
                ),
                "{bad} bytes"
            );
        }
        let mut longer = legacy.clone();
        longer.push(0);
        assert!(VsiQueueConfigInfo::decode(&longer).is_err());
        let mut zero = legacy.clone();
        zero[2] = 0;
        assert_eq!(
            VsiQueueConfigInfo::decode(&zero),
            Err(DecodeError::EmptyList {
                what: "virtchnl_vsi_queue_config_info"
            })
        );
        assert!(VsiQueueConfigInfo::decode(&legacy[..7]).is_err());
        // A count larger than the bytes present.
        let mut big = legacy.clone();
        big[2..4].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert!(VsiQueueConfigInfo::decode(&big).is_err());
    }

    #[test]
    fn list_messages_round_trip_and_check_their_tails() {
        let irq = IrqMapInfo {
            vecmap: vec![
                VectorMap {
                    vsi_id: 3,
                    vector_id: 1,
                    rxq_map: 1,
                    txq_map: 1,
                    rxitr_idx: 0,
                    txitr_idx: 1,
                },
                VectorMap {
                    vsi_id: 3,
                    vector_id: 0,
                    ..Default::default()
                },
            ],
        };
        let b = irq.encode();
        assert_eq!(b.len(), 14 + 24);
        assert_eq!(IrqMapInfo::decode(&b), Ok(irq.clone()));
        assert_eq!(IrqMapInfo::decode(&b[..2 + 24]), Ok(irq));
        assert!(IrqMapInfo::decode(&b[..2 + 23]).is_err());
        assert!(IrqMapInfo::decode(&[0, 0]).is_err());
        assert!(IrqMapInfo::decode(&[1]).is_err());

        let macs = EtherAddrList {
            vsi_id: 3,
            list: vec![
                EtherAddr {
                    addr: [2, 1, 2, 3, 4, 5],
                    addr_type: 0,
                },
                EtherAddr {
                    addr: [0x33, 0x33, 0, 0, 0, 1],
                    addr_type: ETHER_ADDR_EXTRA,
                },
            ],
        };
        let b = macs.encode();
        assert_eq!(b.len(), 12 + 16);
        assert_eq!(EtherAddrList::decode(&b), Ok(macs.clone()));
        assert_eq!(EtherAddrList::decode(&b[..4 + 16]), Ok(macs));
        assert!(EtherAddrList::decode(&b[..4 + 15]).is_err());
        assert!(EtherAddrList::decode(&[3, 0, 0, 0]).is_err());

        let vlans = VlanFilterList {
            vsi_id: 3,
            vlan_id: vec![10, 4095, 7],
        };
        let b = vlans.encode();
        assert_eq!(b.len(), 6 + 6);
        assert_eq!(VlanFilterList::decode(&b), Ok(vlans.clone()));
        assert_eq!(VlanFilterList::decode(&b[..4 + 6]), Ok(vlans));
        assert!(VlanFilterList::decode(&b[..4 + 5]).is_err());
        assert!(VlanFilterList::decode(&b[..3]).is_err());
    }

    #[test]
    fn rss_key_and_lut_tails() {
        let key = RssKey {
            vsi_id: 3,
            key: (0..52).collect(),
        };
        let b = key.encode();
        assert_eq!(b.len(), 57);
        assert_eq!(RssKey::decode(&b), Ok(key.clone()));
        let mut flex = b.clone();
        flex.pop();
        assert_eq!(RssKey::decode(&flex), Ok(key));
        flex.pop();
        assert!(matches!(
            RssKey::decode(&flex),
            Err(DecodeError::TailLength {
                legacy: 57,
                flex: 56,
                actual: 55,
                ..
            })
        ));
        let lut = RssLut {
            vsi_id: 3,
            lut: vec![0; 64],
        };
        assert_eq!(RssLut::decode(&lut.encode()), Ok(lut));
        assert!(RssLut::decode(&[3, 0, 0, 0, 0, 0]).is_err());
        // One-byte key: legacy and flexible lengths are 6 and 5.
        let one = RssKey {
            vsi_id: 1,
            key: vec![9],
        };
        assert_eq!(one.encode().len(), 6);
        assert_eq!(RssKey::decode(&one.encode()), Ok(one.clone()));
        assert_eq!(RssKey::decode(&one.encode()[..5]), Ok(one));
        assert_eq!(RssKey::default().encode().len(), 6);
    }

    #[test]
    fn vf_resource_round_trips_and_tolerates_slack() {
        let res = VfResource {
            num_queue_pairs: 4,
            max_vectors: 5,
            max_mtu: 1500,
            vf_cap_flags: caps::L2 | caps::RSS_PF,
            rss_key_size: 52,
            rss_lut_size: 64,
            vsi_res: vec![VsiResource {
                vsi_id: 1,
                num_queue_pairs: 4,
                vsi_type: VSI_TYPE_SRIOV,
                qset_handle: 1,
                default_mac_addr: [2, 0, 0, 0, 0, 7],
            }],
        };
        let b = res.encode();
        assert_eq!(VfResource::decode(&b), Ok(res.clone()));
        let mut slack = b.clone();
        slack.extend_from_slice(&[0; 16]);
        assert_eq!(VfResource::decode(&slack), Ok(res));
        assert!(VfResource::decode(&b[..35]).is_err());
        assert!(VfResource::decode(&b[..19]).is_err());
    }

    #[test]
    fn fixed_structs_reject_other_lengths() {
        assert!(VersionInfo::decode(&[0; 7]).is_err());
        assert!(VersionInfo::decode(&[0; 9]).is_err());
        assert!(QueueSelect::decode(&[0; 11]).is_err());
        assert!(PromiscInfo::decode(&[0; 5]).is_err());
        assert!(EthStats::decode(&[0; 95]).is_err());
        assert!(RssHena::decode(&[0; 4]).is_err());
        assert!(PfEvent::decode(&[0; 15]).is_err());
        assert!(TxqInfo::decode(&[0; 23]).is_err());
        assert!(QueuePairInfo::decode(&[0; 65]).is_err());
    }

    #[test]
    fn stats_and_events_round_trip() {
        let s = EthStats {
            rx_bytes: 1,
            rx_unicast: 2,
            rx_multicast: 3,
            rx_broadcast: 4,
            rx_discards: 5,
            rx_unknown_protocol: 6,
            tx_bytes: 7,
            tx_unicast: 8,
            tx_multicast: 9,
            tx_broadcast: 10,
            tx_discards: 11,
            tx_errors: 12,
        };
        let b = s.encode();
        assert_eq!(&b[88..96], &12u64.to_le_bytes());
        assert_eq!(EthStats::decode(&b), Ok(s));
        for ev in [
            PfEvent::link_change(40_000, true),
            PfEvent {
                data: PfEventData::ResetImpending,
                severity: event::SEVERITY_CERTAIN_DOOM,
            },
            PfEvent {
                data: PfEventData::PfDriverClose,
                severity: 0,
            },
            PfEvent {
                data: PfEventData::DcfVsiMapUpdate {
                    vf_id: 2,
                    vsi_id: 5,
                },
                severity: 1,
            },
            PfEvent {
                data: PfEventData::Other {
                    event: 99,
                    data: [1, 2, 3, 4, 5, 6, 7, 8],
                },
                severity: -1,
            },
        ] {
            assert_eq!(PfEvent::decode(&ev.encode()), Ok(ev));
        }
    }

    #[test]
    fn ops_and_statuses_have_the_reference_codes() {
        assert_eq!(VirtchnlOp::Version.raw(), 1);
        assert_eq!(VirtchnlOp::Event.raw(), 17);
        assert_eq!(VirtchnlOp::ConfigRssKey.raw(), 23);
        assert_eq!(VirtchnlOp::QueryFdirFilter.raw(), 49);
        for op in VirtchnlOp::ALL {
            assert_eq!(VirtchnlOp::from_raw(op.raw()), Some(op));
        }
        assert_eq!(VirtchnlOp::from_raw(18), None);
        assert_eq!(VirtchnlOp::from_raw(50), None);
        assert_eq!(VirtchnlStatus::ErrNotSupported.raw(), -64);
        assert_eq!(VirtchnlStatus::ErrParam.to_cookie(), 0xFFFF_FFFB);
        assert_eq!(
            VirtchnlStatus::from_cookie(0xFFFF_FFC0),
            Some(VirtchnlStatus::ErrNotSupported)
        );
        assert_eq!(VirtchnlStatus::from_raw(-1), None);
        assert_eq!(caps::BASE_MODE_OFFLOADS, 0x0009_0001);
        assert_eq!(caps::ADV_LINK_SPEED, caps::CRC);
        assert_eq!(link_speed::to_mbps(link_speed::SPEED_25GB), Some(25_000));
        assert_eq!(link_speed::to_mbps(3), None);
        for m in [100, 1_000, 2_500, 5_000, 10_000, 20_000, 25_000, 40_000] {
            assert_eq!(
                link_speed::from_mbps(m).and_then(link_speed::to_mbps),
                Some(m)
            );
        }
    }

    #[test]
    fn requests_decode_by_op_and_round_trip() {
        let reqs = vec![
            VfRequest::Version(VersionInfo::V1_1),
            VfRequest::ResetVf,
            VfRequest::GetVfResources { caps: None },
            VfRequest::GetVfResources {
                caps: Some(caps::L2 | caps::VLAN),
            },
            VfRequest::ConfigVsiQueues(VsiQueueConfigInfo {
                vsi_id: 3,
                qpair: vec![qp(0)],
            }),
            VfRequest::ConfigIrqMap(IrqMapInfo {
                vecmap: vec![VectorMap::default()],
            }),
            VfRequest::EnableQueues(QueueSelect {
                vsi_id: 3,
                rx_queues: 1,
                tx_queues: 1,
            }),
            VfRequest::DisableQueues(QueueSelect::default()),
            VfRequest::AddEthAddr(EtherAddrList {
                vsi_id: 3,
                list: vec![EtherAddr::default()],
            }),
            VfRequest::DelEthAddr(EtherAddrList {
                vsi_id: 3,
                list: vec![EtherAddr::default()],
            }),
            VfRequest::AddVlan(VlanFilterList {
                vsi_id: 3,
                vlan_id: vec![5],
            }),
            VfRequest::DelVlan(VlanFilterList {
                vsi_id: 3,
                vlan_id: vec![5],
            }),
            VfRequest::ConfigPromiscuousMode(PromiscInfo {
                vsi_id: 3,
                flags: promisc::UNICAST,
            }),
            VfRequest::GetStats(QueueSelect::default()),
            VfRequest::ConfigRssKey(RssKey {
                vsi_id: 3,
                key: vec![1; 52],
            }),
            VfRequest::ConfigRssLut(RssLut {
                vsi_id: 3,
                lut: vec![0; 64],
            }),
            VfRequest::GetRssHenaCaps,
            VfRequest::SetRssHena(RssHena { hena: 0xFF }),
            VfRequest::EnableVlanStripping,
            VfRequest::DisableVlanStripping,
            VfRequest::Other {
                op: 29,
                msg: vec![1, 2],
            },
            VfRequest::Other {
                op: 1000,
                msg: vec![],
            },
        ];
        for r in reqs {
            let b = r.encode();
            assert_eq!(VfRequest::decode(r.op(), &b), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn requests_with_wrong_lengths_are_rejected() {
        assert!(VfRequest::decode(1, &[1, 0, 0, 0, 1, 0, 0]).is_err());
        assert!(VfRequest::decode(2, &[0]).is_err());
        assert!(VfRequest::decode(3, &[0; 3]).is_err());
        assert!(VfRequest::decode(3, &[0; 5]).is_err());
        assert!(VfRequest::decode(8, &[0; 13]).is_err());
        assert!(VfRequest::decode(14, &[0; 3]).is_err());
        assert!(VfRequest::decode(15, &[]).is_err());
        assert!(VfRequest::decode(25, &[0]).is_err());
        assert!(VfRequest::decode(26, &[0; 7]).is_err());
        assert!(VfRequest::decode(27, &[0]).is_err());
        assert!(VfRequest::decode(6, &[]).is_err());
        assert!(VfRequest::decode(7, &[]).is_err());
    }
}
