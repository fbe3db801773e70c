//! The emulated AVF virtual function (`emu_iavf`): what an unmodified iavf driver (DPDK
//! `net_iavf`, Linux `iavf`) finds behind a vfio-user socket.
//!
//! ## Shape
//!
//! - **PCI** (on `emudev-pci`): 8086:1889, class 0x020000, PCI Express config space with a PCI
//!   Express endpoint capability and MSI-X; BAR0 is 64 KiB of trapped registers (64-bit,
//!   prefetchable), BAR3 16 KiB holds the MSI-X table (offset 0) and PBA (0x2000), Intel's
//!   convention. MSI-X has `1 + queues` vectors: vector 0 is the admin queue ("misc"), vector
//!   `n` is queue vector `n - 1`. No INTx (VFs have none).
//! - **emudev object model** ([`IavfDevice::emu`]): region "bar0"; doorbells for the ATQ and
//!   ARQ tails and every TX/RX tail (all trapped for now); queues configured at run time (the
//!   admin queues when the driver enables them, TX/RX rings while they are enabled: see
//!   [`queue_ids`]); attributes "mac", "mtu", "num_queue_pairs" (read-only) and "link_up"
//!   (read-write: changing it sends a LINK_CHANGE event to a running driver). The emudev device
//!   is configured and started at creation.
//!
//! ## Behaviour (the checklist of the reference, section 7)
//!
//! - `VFGEN_RSTAT` reads VFACTIVE at power-on. A VF reset (`VIRTCHNL_OP_RESET_VF`, vfio-user
//!   DEVICE_RESET, or the client going away — what VFIO's function reset does when a VM's device
//!   is released) stops every queue, clears the MAC filters but the default MAC, the VLAN
//!   filters, promiscuous mode, the IRQ map, RSS state and the admin-queue registers (so ARQLEN's
//!   enable bit reads 0, which Linux takes as "reset detected"), drops undelivered ARQ messages,
//!   and ends with RSTAT at VFACTIVE (Linux's reset task waits for exactly that). A reset the VF
//!   or the VMM asked for keeps the negotiated virtchnl version (Linux goes straight to
//!   GET_VF_RESOURCES afterwards); a client disconnect forgets it. Otherwise the enable bits read
//!   back as the driver wrote them. The admin-queue opcode 0x0003 (queue shutdown, which Linux
//!   sends before a reset) completes successfully.
//! - Admin queue: an `ATQT` write processes descriptors `[ATQH, ATQT)` through the DMA table,
//!   writes `DD|CMP` (+`ERR` and a `retval` on an AQ-level fault) and advances `ATQH`. Replies
//!   and events go to the ARQ entries the driver posted (`ARQH != ARQT`), opcode 0x0802, op in
//!   `cookie_high`, status in `cookie_low`; with no entry free they wait (up to 128, then ARQLEN
//!   OVFL is set and new ones are dropped) and go out when the driver posts more. Delivering
//!   raises `ICR01.ADMINQ` and fires MSI-X vector 0 only while `ICR0_ENA1.ADMINQ` and
//!   `DYN_CTL01.INTENA` are set; a cause raised while they are not fires when they next are.
//!   `ICR01` and `ICR0_ENA1` clear on read (as Linux's interrupt handler expects).
//! - DMA (descriptors, buffers) happens only while the command register's bus-master bit is set;
//!   work that arrives without it waits until it is set. A descriptor ring the device cannot
//!   read sets the queue's CRIT bit (ATQLEN/ARQLEN) and stops there (`ATQH` does not move);
//!   a buffer it cannot read completes the descriptor with `ERR` and `retval` BAD_ADDR and the
//!   op is answered ERR_ADMIN_QUEUE_ERROR.
//! - virtchnl 1.1: VERSION, RESET_VF, GET_VF_RESOURCES, CONFIG_VSI_QUEUES, CONFIG_IRQ_MAP,
//!   ENABLE/DISABLE_QUEUES, ADD/DEL_ETH_ADDR, ADD/DEL_VLAN, ENABLE/DISABLE_VLAN_STRIPPING,
//!   CONFIG_PROMISCUOUS_MODE, GET_STATS, CONFIG_RSS_KEY/LUT, GET_RSS_HENA_CAPS, SET_RSS_HENA; and
//!   the PF→VF LINK_CHANGE event after the first ENABLE_QUEUES (again after all queues were
//!   disabled, and whenever "link_up" changes while queues are enabled). Every message is decoded
//!   by [`crate::spec::virtchnl::VfRequest`] (exact lengths, variable tails) and validated whole
//!   before anything changes. Ops before VERSION (RESET_VF excepted) get ERR_PARAM, unknown and
//!   unmodelled ops NOT_SUPPORTED, ops of a capability not granted NOT_SUPPORTED.
//! - Granted capabilities: the requested subset of L2, VLAN, RSS_PF (or else RSS_REG), WB_ON_ITR
//!   and ADV_LINK_SPEED; L2 always. A 1.0 VF gets L2 | VLAN | RSS_REG.

mod core;
mod itr;
mod pci;
mod stats;
mod vc;

#[cfg(test)]
mod tests;

use thiserror::Error;

pub use self::itr::{itr_interval, ITR_INTERVAL_MAX, ITR_UNIT};
pub(crate) use self::pci::WeakIavfHandle;
pub use self::pci::{CreateIavfError, IavfDevice, IavfHandle, IrqOutcome};
pub use self::stats::{IavfStats, VsiStats};

use crate::spec::regs::{MAX_QUEUE_PAIRS, MAX_VECTORS};
use crate::spec::virtchnl::VersionInfo;

/// PCI vendor id (Intel).
pub const IAVF_VENDOR_ID: u16 = 0x8086;
/// PCI device id of the Adaptive Virtual Function.
pub const IAVF_DEVICE_ID: u16 = 0x1889;
/// Class code: Ethernet controller.
pub const IAVF_CLASS_CODE: u32 = 0x02_0000;
/// PCI subsystem vendor id.
pub const IAVF_SUBSYSTEM_VENDOR_ID: u16 = 0x8086;
/// PCI subsystem id.
pub const IAVF_SUBSYSTEM_ID: u16 = 0x0000;
/// PCI revision id.
pub const IAVF_REVISION: u8 = 0x01;
/// BAR0 size: the register map.
pub const BAR0_SIZE: u64 = crate::spec::regs::BAR0_MIN_SIZE;
/// The BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 3;
/// Its size.
pub const MSIX_BAR_SIZE: u64 = 0x4000;
/// Offset of the MSI-X table in [`MSIX_BAR`].
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Offset of the MSI-X PBA in [`MSIX_BAR`].
pub const MSIX_PBA_OFFSET: u32 = 0x2000;
/// The VSI id the device hands out in GET_VF_RESOURCES and expects in later messages.
pub const VSI_ID: u16 = 1;
/// Link speed reported in LINK_CHANGE events, in Mbps.
pub const LINK_SPEED_MBPS: u32 = 10_000;
/// Most MAC filters (default MAC included).
pub const MAX_MAC_FILTERS: usize = 64;
/// What the drivers add to an MTU to get the frame size: Ethernet header 14, two VLAN tags 8,
/// FCS 4 (Linux's `LIBETH_RX_LL_LEN`). GET_VF_RESOURCES reports `max_mtu` as a frame size —
/// `mtu + L2_OVERHEAD` — because Linux sets `netdev->max_mtu = max_mtu - LIBETH_RX_LL_LEN` and
/// sends `max_pkt_size = max_mtu`.
pub const L2_OVERHEAD: u16 = 26;
/// Smallest and largest MTU (the largest frame, 9728, less [`L2_OVERHEAD`]).
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=9702;
/// Largest frame a VF may ask for (`max_pkt_size`).
pub const MAX_FRAME_SIZE: u32 = 9728;
/// Smallest and largest RX data buffer.
pub const RX_BUFFER_RANGE: std::ops::RangeInclusive<u32> = 1024..=(16 * 1024 - 128);
/// Smallest `max_pkt_size`.
pub const MIN_FRAME_SIZE: u32 = 64;
/// Most messages that wait for ARQ buffers.
pub const ARQ_PENDING_MAX: usize = 128;

/// Queue and doorbell numbers in the emudev object model. Doorbell `n` belongs to queue `n`.
pub mod queue_ids {
    use emudev::{DoorbellId, QueueId};

    /// The admin transmit queue (driver → device), rung through `ATQT`.
    pub const ATQ: QueueId = QueueId(0);
    /// The admin receive queue (device → driver), its buffers posted through `ARQT`.
    pub const ARQ: QueueId = QueueId(1);
    /// `ATQT`.
    pub const ATQ_DOORBELL: DoorbellId = DoorbellId(0);
    /// `ARQT`.
    pub const ARQ_DOORBELL: DoorbellId = DoorbellId(1);

    /// TX queue `q`: `2 + 2q`.
    pub const fn tx(q: u16) -> QueueId {
        QueueId(2 + 2 * q as u32)
    }

    /// RX queue `q`: `3 + 2q`.
    pub const fn rx(q: u16) -> QueueId {
        QueueId(3 + 2 * q as u32)
    }

    /// `QTX_TAIL(q)`.
    pub const fn tx_doorbell(q: u16) -> DoorbellId {
        DoorbellId(tx(q).0)
    }

    /// `QRX_TAIL(q)`.
    pub const fn rx_doorbell(q: u16) -> DoorbellId {
        DoorbellId(rx(q).0)
    }

    /// Queue slots for `queues` pairs.
    pub const fn slots(queues: u16) -> u32 {
        2 + 2 * queues as u32
    }
}

/// How to build an emulated VF: the `--vdev 'emu_iavf0,sock=...,queues=N,mac=...,mtu=...'`
/// arguments (the socket is the server's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IavfConfig {
    /// Instance name ("emu_iavf0"); also the emudev device name.
    pub name: String,
    /// Queue pairs, 1..=16.
    pub queues: u16,
    /// Default MAC address (unicast, not zero). [`IavfConfig::new`] derives a locally
    /// administered one from the name.
    pub mac: [u8; 6],
    /// MTU ([`MTU_RANGE`]); GET_VF_RESOURCES reports the frame size `mtu + L2_OVERHEAD` as
    /// `max_mtu`.
    pub mtu: u16,
    /// Put `QTX_TAIL`/`QRX_TAIL` on mmappable doorbell pages (BAR0 0x0000-0x0fff and
    /// 0x2000-0x2fff, sparse-mmap areas of the region) instead of trapping them. A client that
    /// mmaps them writes tails with plain stores that a polling data path reads
    /// ([`crate::datapath::attach_polled`]); trapped writes from clients that do not mmap
    /// still land in the same words. Off by default.
    pub doorbell_pages: bool,
    /// With the doorbell pages: one eventfd per queue pair, offered for both its tails by
    /// `GET_REGION_IO_FDS` (emudev's mem+kick doorbells). A client that maps the pages and
    /// signals the eventfd after each tail store lets an idle data-path worker sleep until
    /// it is kicked instead of polling; a client that does not signal is polled as before.
    /// Off by default; turning it on turns on `doorbell_pages`.
    pub doorbell_kicks: bool,
}

/// Why an [`IavfConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IavfConfigError {
    /// The name is empty.
    #[error("the device name is empty")]
    EmptyName,
    /// Queue pairs outside 1..=16.
    #[error("queues={0}: must be 1..=16")]
    Queues(u16),
    /// A multicast or all-zero MAC.
    #[error("mac={0}: must be a unicast, non-zero address")]
    Mac(String),
    /// A MAC that does not parse.
    #[error("mac={0:?}: expected six hex bytes separated by ':'")]
    MacSyntax(String),
    /// MTU outside [`MTU_RANGE`].
    #[error("mtu={0}: must be 68..=9702")]
    Mtu(u16),
    /// A numeric argument that does not parse.
    #[error("{key}={value:?}: not a number")]
    Number {
        /// The argument.
        key: String,
        /// Its value.
        value: String,
    },
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC derived from `name` (FNV-1a of the name, first octet
/// `x2`), stable across runs.
pub fn derived_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [(b[0] & 0xFC) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

impl IavfConfig {
    /// Defaults for instance `name`: one queue pair, a MAC derived from the name, MTU 1500.
    pub fn new(name: &str) -> Self {
        IavfConfig {
            name: name.to_string(),
            queues: 1,
            mac: derived_mac(name),
            mtu: 1500,
            doorbell_pages: false,
            doorbell_kicks: false,
        }
    }

    /// With the queue tails on mmappable doorbell pages ([`IavfConfig::doorbell_pages`]).
    pub fn with_doorbell_pages(mut self, on: bool) -> Self {
        self.doorbell_pages = on;
        self.doorbell_kicks &= on;
        self
    }

    /// With the tails on doorbell pages and kick eventfds for them
    /// ([`IavfConfig::doorbell_kicks`]).
    pub fn with_doorbell_kicks(mut self, on: bool) -> Self {
        self.doorbell_kicks = on;
        self.doorbell_pages |= on;
        self
    }

    /// With `queues` pairs.
    pub fn with_queues(mut self, queues: u16) -> Self {
        self.queues = queues;
        self
    }

    /// With default MAC `mac`.
    pub fn with_mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = mac;
        self
    }

    /// With MTU `mtu`.
    pub fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (also `-` separated).
    pub fn parse_mac(s: &str) -> Result<[u8; 6], IavfConfigError> {
        let bad = || IavfConfigError::MacSyntax(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (m, p) in mac.iter_mut().zip(parts) {
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(mac)
    }

    /// Applies one `--vdev` argument: `queues=N`, `mac=aa:bb:cc:dd:ee:ff`, `mtu=N`. Returns
    /// `Ok(false)` for a key that is not the device's (`sock=`, say). Ranges are checked by
    /// [`IavfConfig::validate`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, IavfConfigError> {
        let number = || {
            value.parse::<u16>().map_err(|_| IavfConfigError::Number {
                key: key.to_string(),
                value: value.to_string(),
            })
        };
        match key {
            "queues" => self.queues = number()?,
            "mtu" => self.mtu = number()?,
            "mac" => self.mac = Self::parse_mac(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), IavfConfigError> {
        if self.name.is_empty() {
            return Err(IavfConfigError::EmptyName);
        }
        if self.queues == 0 || self.queues > MAX_QUEUE_PAIRS {
            return Err(IavfConfigError::Queues(self.queues));
        }
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(IavfConfigError::Mac(format_mac(&self.mac)));
        }
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(IavfConfigError::Mtu(self.mtu));
        }
        Ok(())
    }

    /// MSI-X vectors: one for the admin queue plus one per queue pair.
    pub fn vectors(&self) -> u16 {
        self.queues.saturating_add(1).min(MAX_VECTORS)
    }
}

/// A TX queue as the VF configured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxQueueState {
    /// Ring base IOVA.
    pub ring: u64,
    /// Ring length in descriptors (0: not configured).
    pub len: u16,
    /// Enabled by ENABLE_QUEUES.
    pub enabled: bool,
    /// MSI-X vector from CONFIG_IRQ_MAP.
    pub vector: Option<u16>,
    /// ITR index from CONFIG_IRQ_MAP.
    pub itr_idx: u16,
}

/// An RX queue as the VF configured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxQueueState {
    /// Ring base IOVA.
    pub ring: u64,
    /// Ring length in descriptors (0: not configured).
    pub len: u32,
    /// Data buffer size per descriptor.
    pub databuffer_size: u32,
    /// Largest frame.
    pub max_pkt_size: u32,
    /// Requested descriptor id (recorded; the device always writes legacy 32-byte descriptors,
    /// as flexible descriptors are never granted).
    pub rxdid: u8,
    /// CRC strip disabled.
    pub crc_disable: bool,
    /// Enabled by ENABLE_QUEUES.
    pub enabled: bool,
    /// MSI-X vector from CONFIG_IRQ_MAP.
    pub vector: Option<u16>,
    /// ITR index from CONFIG_IRQ_MAP.
    pub itr_idx: u16,
}

/// The VF's state at one moment (for applications, tests, and the data path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IavfSnapshot {
    /// `VFGEN_RSTAT`.
    pub rstat: crate::spec::regs::VfrState,
    /// The VF's version from VERSION, if negotiated since the last reset.
    pub version: Option<VersionInfo>,
    /// Granted capabilities (0 before GET_VF_RESOURCES).
    pub caps: u32,
    /// TX queues `0..queues`.
    pub tx: Vec<TxQueueState>,
    /// RX queues `0..queues`.
    pub rx: Vec<RxQueueState>,
    /// MAC filters (the default MAC included), sorted.
    pub macs: Vec<[u8; 6]>,
    /// VLAN filters, sorted.
    pub vlans: Vec<u16>,
    /// `promisc` flags.
    pub promisc: u16,
    /// VLAN stripping enabled.
    pub vlan_strip: bool,
    /// RSS key (52 bytes).
    pub rss_key: Vec<u8>,
    /// RSS lookup table (64 entries).
    pub rss_lut: Vec<u8>,
    /// RSS hash enable.
    pub hena: u64,
    /// Link state reported to the VF.
    pub link_up: bool,
    /// Messages waiting for ARQ buffers.
    pub arq_pending: usize,
    /// `ATQLEN` and `ARQLEN` as they read.
    pub atq_len: u32,
    /// See `atq_len`.
    pub arq_len: u32,
    /// `ATQH`, `ARQH`.
    pub atq_head: u32,
    /// See `atq_head`.
    pub arq_head: u32,
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derived_macs_are_local_unicast() {
        let c = IavfConfig::new("emu_iavf0");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.queues, c.mtu), (1, 1500));
        assert_eq!(c.mac[0] & 0x03, 0x02);
        assert_eq!(c.mac, derived_mac("emu_iavf0"));
        assert_ne!(derived_mac("emu_iavf0"), derived_mac("emu_iavf1"));
        assert_eq!(c.vectors(), 2);
        assert_eq!(c.clone().with_queues(16).vectors(), 17);
    }

    #[test]
    fn validation_refuses_each_bad_field() {
        let c = IavfConfig::new("x");
        assert_eq!(
            c.clone().with_queues(0).validate(),
            Err(IavfConfigError::Queues(0))
        );
        assert_eq!(
            c.clone().with_queues(17).validate(),
            Err(IavfConfigError::Queues(17))
        );
        assert!(c.clone().with_queues(16).validate().is_ok());
        assert!(matches!(
            c.clone().with_mac([1, 0, 0, 0, 0, 1]).validate(),
            Err(IavfConfigError::Mac(_))
        ));
        assert!(c.clone().with_mac([0; 6]).validate().is_err());
        assert_eq!(
            c.clone().with_mtu(67).validate(),
            Err(IavfConfigError::Mtu(67))
        );
        assert!(c.clone().with_mtu(9703).validate().is_err());
        assert!(c.clone().with_mtu(9702).validate().is_ok());
        let mut e = c.clone();
        e.name.clear();
        assert_eq!(e.validate(), Err(IavfConfigError::EmptyName));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            IavfConfig::parse_mac("02:00:5e:10:00:01"),
            Ok([2, 0, 0x5e, 0x10, 0, 1])
        );
        assert_eq!(
            IavfConfig::parse_mac("02-00-5E-10-0-1"),
            Ok([2, 0, 0x5e, 0x10, 0, 1])
        );
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "02:00:5e:10:00:zz",
            "002:0:0:0:0:1",
            "02::00:00:00:01",
        ] {
            assert!(IavfConfig::parse_mac(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }

    #[test]
    fn vdev_arguments() {
        let mut c = IavfConfig::new("emu_iavf0");
        assert_eq!(c.set("queues", "4"), Ok(true));
        assert_eq!(c.set("mtu", "9000"), Ok(true));
        assert_eq!(c.set("mac", "02:11:22:33:44:55"), Ok(true));
        assert_eq!(c.set("sock", "/tmp/sock1"), Ok(false));
        assert_eq!(
            (c.queues, c.mtu, c.mac),
            (4, 9000, [2, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        assert!(matches!(
            c.set("queues", "many"),
            Err(IavfConfigError::Number { .. })
        ));
        assert!(c.set("mtu", "70000").is_err());
        assert!(c.set("mac", "nope").is_err());
        assert_eq!(c.set("queues", "0"), Ok(true));
        assert_eq!(c.validate(), Err(IavfConfigError::Queues(0)));
    }

    #[test]
    fn queue_ids_do_not_collide() {
        let mut seen = std::collections::BTreeSet::new();
        assert!(seen.insert(queue_ids::ATQ.0));
        assert!(seen.insert(queue_ids::ARQ.0));
        for q in 0..16 {
            assert!(seen.insert(queue_ids::tx(q).0));
            assert!(seen.insert(queue_ids::rx(q).0));
        }
        assert_eq!(seen.len() as u32, queue_ids::slots(16));
        assert_eq!(queue_ids::rx(15).0, queue_ids::slots(16) - 1);
    }
}
