//! The client-side iavf VF driver (`iavf_client`): brings an AVF virtual function behind a
//! vfio-user socket to link-up, in the message order of DPDK's `net_iavf` PMD (21.02), and then
//! answers control-plane requests (stats, filters, RSS, queue enable/disable, reset, shutdown).
//!
//! ## Bring-up ([`IavfDriver::bring_up`])
//!
//! What the VMM's VFIO layer does, then `iavf_dev_init`, `iavf_dev_configure` and
//! `iavf_dev_start`:
//!
//! 1. [`BringUpStep::DeviceReset`]: vfio-user DEVICE_RESET (as DPDK's VFIO layer resets a device
//!    it opens; [`DriverConfig::device_reset`]).
//! 2. [`BringUpStep::PciEnable`]: memory decoding and bus mastering on, MSI-X enabled.
//! 3. [`BringUpStep::ResetDone`]: poll `VFGEN_RSTAT` for COMPLETED or VFACTIVE
//!    ([`DriverConfig::reset_wait_attempts`] × [`DriverConfig::reset_wait_interval`], 50 × 20 ms).
//! 4. [`BringUpStep::AdminQueue`]: ATQ and ARQ rings and buffers in DMA memory, every ARQ entry
//!    posted; `ATQH/ATQT/ATQLEN(ENABLE)/ATQBAL/ATQBAH`, `ATQBAL` read back, the same for the
//!    ARQ and `ARQT = len - 1`.
//! 5. [`BringUpStep::Version`]: VERSION 1.1 (the reply must be exactly 1.1, as DPDK requires).
//! 6. [`BringUpStep::GetVfResources`]: the requested capabilities ([`DriverConfig::caps`]); the
//!    reply must list an SR-IOV VSI, whose default MAC becomes the port's MAC.
//! 7. [`BringUpStep::Interrupts`]: MSI-X eventfds for vector 0 (admin queue) and the queue
//!    vectors; `ICR0_ENA1 = ADMINQ`, `DYN_CTL01 = INTENA | CLEARPBA | ITR_INDX` (DPDK
//!    `iavf_enable_irq0`).
//! 8. [`BringUpStep::VlanStripping`] (VLAN granted) and [`BringUpStep::Rss`] (RSS_PF granted:
//!    key and LUT, or a zero LUT without RSS), as `iavf_dev_configure` does.
//! 9. [`BringUpStep::ConfigVsiQueues`]: TX/RX rings allocated in DMA memory, the RX ring filled
//!    with buffer addresses, one CONFIG_VSI_QUEUES for every pair.
//! 10. [`BringUpStep::ConfigIrqMap`]: queue `q` on vector `1 + q % queue_vectors`, then vector 0.
//! 11. [`BringUpStep::AddEthAddr`]: the default MAC.
//! 12. [`BringUpStep::EnableQueues`]: RX tails at `ring_len - 1`, TX tails at 0, then
//!     ENABLE_QUEUES — one queue per message, TX queues first ([`EnableMode::PerQueue`], DPDK's
//!     `iavf_start_queues`) or all at once ([`EnableMode::AllAtOnce`], Linux).
//! 13. [`BringUpStep::LinkUp`]: wait (bounded) for the PF's `VIRTCHNL_EVENT_LINK_CHANGE`.
//!
//! Every step is reported with its duration ([`StepRecord`]) to the callback of
//! [`IavfDriver::bring_up_with`], which may stop the sequence, and kept in
//! [`IavfDriver::steps`].
//!
//! ## Admin-queue messaging
//!
//! One command at a time: the message goes into the ATQ slot's buffer, the descriptor is built
//! as `iavf_aq_send_msg_to_pf` builds it (opcode 0x0801, `SI`, `BUF|RD` (+`LB`) with a body, the
//! op in `cookie_high`), `ATQT` is written, and the driver polls the descriptor for `DD` (an
//! `ERR` completion becomes [`ProtocolError::AtqError`]). Replies come back on the ARQ (opcode
//! 0x0802, op in `cookie_high`, status in `cookie_low`); they are matched to the command by op.
//! Events arriving in between are handled (link state, [`DriverEvent`]) and replies to other ops
//! are counted and dropped. While nothing has arrived the driver checks the vector-0 eventfd and
//! sleeps with a growing back-off, up to [`DriverConfig::op_timeout`]. A non-success status is
//! [`DriverError::Status`].
//!
//! The driver checks only what it needs to build its messages; the PF's rules (ring lengths,
//! queue counts, ids) are the PF's to enforce, so a refusal surfaces as a typed status error.

mod adminq;
mod datapath;
mod error;
mod fwd;
mod pci;
mod queues;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use emudev_vfio_user::client::{Client, DmaBuffer};

pub use self::datapath::Seg;
pub use self::error::{DriverError, ProtocolError, WaitOp};
pub use self::fwd::{
    ipv4_checksum, udp_frame, FwdConfig, FwdCounters, FwdMode, FwdStats, ParseFwdModeError,
    FWD_IDLE_PAUSE, MAX_BURST,
};
pub use self::pci::{BAR0_REGION, MSIX_IRQ_INDEX};
pub use self::queues::{Area, QueuePair, RX_ITR_INDEX, TX_ITR_INDEX};

use self::adminq::{AqLayout, ArqMessage};
use self::queues::{PairPlan, QueueLayout};
use crate::spec::aq;
use crate::spec::regs::{
    qrx_tail, qtx_tail, vfint_dyn_ctln1, VfrState, AQLEN_CRIT, AQLEN_ENABLE, AQLEN_OVFL, AQLEN_VFE,
    DYN_CTLN1_WB_ON_ITR, DYN_CTL_CLEARPBA, DYN_CTL_INTENA, DYN_CTL_ITR_INDX_MASK, ICR0_ENA1_ADMINQ,
    VFGEN_RSTAT, VFINT_DYN_CTL01, VFINT_ICR0_ENA1, VF_ARQBAH1, VF_ARQBAL1, VF_ARQH1, VF_ARQLEN1,
    VF_ARQT1, VF_ATQBAH1, VF_ATQBAL1, VF_ATQH1, VF_ATQLEN1, VF_ATQT1,
};
use crate::spec::virtchnl::{
    caps, link_speed, promisc, EthStats, EtherAddr, EtherAddrList, PfEvent, PfEventData,
    PromiscInfo, QueueSelect, RssHena, RssKey, RssLut, VersionInfo, VfResource, VirtchnlOp,
    VirtchnlStatus, VlanFilterList, VsiResource, ETHER_ADDR_EXTRA, ETHER_ADDR_PRIMARY,
    VSI_TYPE_SRIOV,
};

/// Capabilities requested by default: base mode (L2, VLAN, RSS_PF), WB_ON_ITR and link speeds
/// in Mbps.
pub const DEFAULT_CAPS: u32 =
    caps::L2 | caps::RSS_PF | caps::WB_ON_ITR | caps::VLAN | caps::ADV_LINK_SPEED;
/// First IOVA of the driver's DMA memory by default.
pub const DEFAULT_IOVA_BASE: u64 = 0x1000_0000;
/// Ethernet header, CRC and two VLAN tags (Linux's `LIBETH_RX_LL_LEN`): the frame size of an MTU.
pub const ETH_OVERHEAD: u32 = 14 + 8 + 4;
/// Events kept for [`IavfDriver::take_events`] before the oldest are dropped.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// Longest sleep between two looks at the admin queue.
const MAX_BACKOFF: Duration = Duration::from_millis(1);
/// First sleep.
const MIN_BACKOFF: Duration = Duration::from_micros(10);
/// Page size of DMA allocations.
const PAGE: u64 = 4096;

/// How ENABLE_QUEUES is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnableMode {
    /// One message per queue, every TX queue then every RX queue (DPDK `iavf_start_queues`).
    PerQueue,
    /// One message for every queue (Linux `iavf_enable_queues`).
    AllAtOnce,
}

/// What to bring up and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Queue pairs to configure (sent as asked: the PF refuses more than it granted).
    pub queue_pairs: u16,
    /// Descriptors per TX and RX ring (the PF wants a multiple of 32 up to 4096).
    pub ring_len: u16,
    /// RX data buffer size (also the TX buffer size of [`QueuePair::tx_buffers`]).
    pub rx_buffer_size: u32,
    /// Largest frame; `None`: the PF's `max_mtu` (a frame size), or 1500 + [`ETH_OVERHEAD`] if
    /// the PF reports none.
    pub max_pkt_size: Option<u32>,
    /// Capabilities requested in GET_VF_RESOURCES.
    pub caps: u32,
    /// Admin-queue entries per ring (2..=1023).
    pub aq_len: u16,
    /// Admin-queue buffer size (64..=4096).
    pub aq_buf_size: u16,
    /// `VFGEN_RSTAT` polls before giving up.
    pub reset_wait_attempts: u32,
    /// Time between two polls.
    pub reset_wait_interval: Duration,
    /// Bound for one command (its completion and its reply).
    pub op_timeout: Duration,
    /// Bound for the LINK_CHANGE event after ENABLE_QUEUES.
    pub link_timeout: Duration,
    /// How queues are enabled.
    pub enable_mode: EnableMode,
    /// With RSS_PF granted: program the key and a LUT spreading over the queues (`true`), or
    /// only an all-zero LUT (`false`), as DPDK does in and out of RSS mode.
    pub rss: bool,
    /// The RSS key (`None`: a fixed built-in key of the PF's `rss_key_size`).
    pub rss_key: Option<Vec<u8>>,
    /// With VLAN granted: enable VLAN stripping (else it is disabled, as DPDK does).
    pub vlan_strip: bool,
    /// Arm the queue vectors (`DYN_CTLN1.INTENA`); otherwise poll mode (with WB_ON_ITR granted,
    /// `DYN_CTLN1 = ITR_INDX | WB_ON_ITR` as DPDK writes it).
    pub queue_interrupts: bool,
    /// Start with a vfio-user DEVICE_RESET.
    pub device_reset: bool,
    /// Pass the DMA memory's fd to the server (else it reaches the memory by DMA messages).
    pub share_fd: bool,
    /// Lowest IOVA used for DMA memory.
    pub iova_base: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            queue_pairs: 1,
            ring_len: 512,
            rx_buffer_size: 2048,
            max_pkt_size: None,
            caps: DEFAULT_CAPS,
            aq_len: aq::DEFAULT_AQ_LEN,
            aq_buf_size: aq::AQ_BUF_SIZE as u16,
            reset_wait_attempts: 50,
            reset_wait_interval: Duration::from_millis(20),
            op_timeout: Duration::from_secs(2),
            link_timeout: Duration::from_secs(2),
            enable_mode: EnableMode::PerQueue,
            rss: true,
            rss_key: None,
            vlan_strip: false,
            queue_interrupts: false,
            device_reset: true,
            share_fd: true,
            iova_base: DEFAULT_IOVA_BASE,
        }
    }
}

impl DriverConfig {
    /// The defaults with `n` queue pairs.
    pub fn with_queue_pairs(n: u16) -> Self {
        DriverConfig {
            queue_pairs: n,
            ..Default::default()
        }
    }

    /// Checks what the driver needs to build its messages.
    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |s: String| Err(DriverError::InvalidConfig(s));
        if self.queue_pairs == 0 || self.queue_pairs > 32 {
            return bad(format!(
                "queue_pairs={}: must be 1..=32 (the queue bitmaps are 32 bits)",
                self.queue_pairs
            ));
        }
        if self.ring_len == 0 {
            return bad("ring_len=0".into());
        }
        if self.rx_buffer_size == 0 || self.rx_buffer_size > 1 << 20 {
            return bad(format!(
                "rx_buffer_size={}: must be 1..=1 MiB",
                self.rx_buffer_size
            ));
        }
        if !(2..=1023).contains(&self.aq_len) {
            return bad(format!("aq_len={}: must be 2..=1023", self.aq_len));
        }
        if !(64..=aq::AQ_BUF_SIZE as u16).contains(&self.aq_buf_size) {
            return bad(format!(
                "aq_buf_size={}: must be 64..=4096",
                self.aq_buf_size
            ));
        }
        if self.reset_wait_attempts == 0 {
            return bad("reset_wait_attempts=0".into());
        }
        if !self.iova_base.is_multiple_of(PAGE) {
            return bad(format!(
                "iova_base={:#x}: must be 4 KiB aligned",
                self.iova_base
            ));
        }
        Ok(())
    }
}

/// The link as the PF last reported it, and the port's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkInfo {
    /// Link up.
    pub up: bool,
    /// Speed in Mbps, if the PF reported a known one.
    pub speed_mbps: Option<u32>,
    /// The VSI's default MAC.
    pub mac: [u8; 6],
}

/// A bring-up step (see the module documentation for the order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BringUpStep {
    /// VIRTCHNL_OP_RESET_VF sent and the reset seen starting ([`IavfDriver::reset_vf`]).
    ResetVf,
    /// vfio-user DEVICE_RESET.
    DeviceReset,
    /// Bus mastering and MSI-X enabled in config space.
    PciEnable,
    /// `VFGEN_RSTAT` reads COMPLETED or VFACTIVE.
    ResetDone,
    /// Admin queue set up.
    AdminQueue,
    /// VERSION.
    Version,
    /// GET_VF_RESOURCES.
    GetVfResources,
    /// MSI-X eventfds bound and vector 0 enabled.
    Interrupts,
    /// ENABLE/DISABLE_VLAN_STRIPPING.
    VlanStripping,
    /// CONFIG_RSS_KEY / CONFIG_RSS_LUT.
    Rss,
    /// CONFIG_VSI_QUEUES.
    ConfigVsiQueues,
    /// CONFIG_IRQ_MAP.
    ConfigIrqMap,
    /// ADD_ETH_ADDR.
    AddEthAddr,
    /// ENABLE_QUEUES.
    EnableQueues,
    /// LINK_CHANGE received.
    LinkUp,
}

impl BringUpStep {
    /// A short name for printing.
    pub fn name(self) -> &'static str {
        match self {
            BringUpStep::ResetVf => "VIRTCHNL_OP_RESET_VF",
            BringUpStep::DeviceReset => "DEVICE_RESET",
            BringUpStep::PciEnable => "PCI enable",
            BringUpStep::ResetDone => "reset done",
            BringUpStep::AdminQueue => "admin queue",
            BringUpStep::Version => "VIRTCHNL_OP_VERSION",
            BringUpStep::GetVfResources => "VIRTCHNL_OP_GET_VF_RESOURCES",
            BringUpStep::Interrupts => "MSI-X",
            BringUpStep::VlanStripping => "VLAN stripping",
            BringUpStep::Rss => "RSS",
            BringUpStep::ConfigVsiQueues => "VIRTCHNL_OP_CONFIG_VSI_QUEUES",
            BringUpStep::ConfigIrqMap => "VIRTCHNL_OP_CONFIG_IRQ_MAP",
            BringUpStep::AddEthAddr => "VIRTCHNL_OP_ADD_ETH_ADDR",
            BringUpStep::EnableQueues => "VIRTCHNL_OP_ENABLE_QUEUES",
            BringUpStep::LinkUp => "link",
        }
    }
}

/// One step done: which, how long it took, and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The step.
    pub step: BringUpStep,
    /// Its duration.
    pub duration: Duration,
    /// A one-line description of the outcome.
    pub detail: String,
}

/// Something the PF told the driver on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverEvent {
    /// LINK_CHANGE.
    Link(LinkInfo),
    /// RESET_IMPENDING: the PF is about to reset the VF.
    ResetImpending,
    /// PF_DRIVER_CLOSE.
    PfDriverClose,
    /// Any other event code.
    Other {
        /// The code.
        code: u32,
    },
}

/// Where the driver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverState {
    /// No admin queue (new, shut down, or reset).
    Down,
    /// Admin queue up and resources negotiated; no queue enabled.
    Ready,
    /// Queues enabled.
    Running,
}

impl DriverState {
    fn name(self) -> &'static str {
        match self {
            DriverState::Down => "down",
            DriverState::Ready => "ready",
            DriverState::Running => "running",
        }
    }
}

/// What VERSION and GET_VF_RESOURCES established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The PF's version.
    pub version: VersionInfo,
    /// The whole GET_VF_RESOURCES reply.
    pub resources: VfResource,
    /// The LAN VSI in it.
    pub vsi: VsiResource,
}

/// The admin queue the driver runs.
#[derive(Debug)]
struct AdminQueue {
    mem: DmaBuffer,
    layout: AqLayout,
    /// Next ATQ slot to use.
    ntu: u16,
    /// Next ARQ slot to look at.
    ntc: u16,
    /// The last ARQ slot taken and not yet handed back with `ARQT`.
    to_post: Option<u16>,
    /// `ARQT` may be written without waiting for the write's reply.
    post_tail: bool,
}

/// The queue memory block and its layout.
#[derive(Debug)]
struct QueueMemory {
    layout: QueueLayout,
    mem: DmaBuffer,
}

/// Takes bring-up steps to the caller's callback and keeps them.
struct Recorder<'a> {
    steps: Vec<StepRecord>,
    on_step: &'a mut dyn FnMut(&StepRecord) -> ControlFlow<()>,
}

impl Recorder<'_> {
    fn done(
        &mut self,
        step: BringUpStep,
        started: Instant,
        detail: String,
    ) -> Result<(), DriverError> {
        let r = StepRecord {
            step,
            duration: started.elapsed(),
            detail,
        };
        log::debug!(
            "iavf_client: {} ({:?}): {}",
            step.name(),
            r.duration,
            r.detail
        );
        let flow = (self.on_step)(&r);
        self.steps.push(r);
        match flow {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(DriverError::Aborted { after: step }),
        }
    }
}

/// Sleeps between looks at the admin queue, returning early on a vector-0 interrupt.
struct Backoff {
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { delay: MIN_BACKOFF }
    }

    fn wait(&mut self, irq: Option<&File>) {
        if let Some(f) = irq {
            if drain_eventfd(f) {
                return;
            }
        }
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }
}

/// Reads an eventfd's counter (non-blocking); whether it had been signalled.
fn drain_eventfd(f: &File) -> bool {
    let mut b = [0u8; 8];
    let mut r: &File = f;
    matches!(r.read(&mut b), Ok(8))
}

fn page_align(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// The fixed RSS key used when none is configured: `n` non-zero bytes.
fn default_rss_key(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(0x3B).wrapping_add(0x6D) | 1)
        .collect()
}

/// The LUT spreading over `queues` queues.
fn rss_lut(n: usize, queues: u16) -> Vec<u8> {
    (0..n)
        .map(|i| (i % usize::from(queues.max(1))) as u8)
        .collect()
}

/// An iavf VF driver over one vfio-user connection.
#[derive(Debug)]
pub struct IavfDriver {
    client: Client,
    state: DriverState,
    cfg: Option<DriverConfig>,
    next_iova: u64,
    msix_vectors: Option<u16>,
    aq: Option<AdminQueue>,
    queue_mem: Option<QueueMemory>,
    pairs: Vec<QueuePair>,
    negotiated: Option<Negotiated>,
    link: Option<LinkInfo>,
    link_changes: u64,
    events: VecDeque<DriverEvent>,
    irqs: Vec<File>,
    enabled_rx: u32,
    enabled_tx: u32,
    steps: Vec<StepRecord>,
    stray: u64,
    /// Kick eventfds by tail register offset ([`IavfDriver::enable_kicks`]).
    kicks: Vec<(u64, std::os::fd::OwnedFd)>,
}

impl IavfDriver {
    /// A driver over a connected client (nothing is sent yet).
    pub fn new(client: Client) -> Self {
        IavfDriver {
            client,
            state: DriverState::Down,
            cfg: None,
            next_iova: 0,
            msix_vectors: None,
            aq: None,
            queue_mem: None,
            pairs: Vec::new(),
            negotiated: None,
            link: None,
            link_changes: 0,
            events: VecDeque::new(),
            irqs: Vec::new(),
            enabled_rx: 0,
            enabled_tx: 0,
            steps: Vec::new(),
            stray: 0,
            kicks: Vec::new(),
        }
    }

    /// Connects to the vfio-user socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, DriverError> {
        Ok(Self::new(Client::connect(path)?))
    }

    // ----- accessors ---------------------------------------------------------------------------

    /// Where the driver is.
    pub fn state(&self) -> DriverState {
        self.state
    }

    /// The link as last reported (`None` before the first LINK_CHANGE since bring-up).
    pub fn link(&self) -> Option<LinkInfo> {
        self.link
    }

    /// The port's MAC (the VSI's default MAC), once negotiated.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.negotiated.as_ref().map(|n| n.vsi.default_mac_addr)
    }

    /// What VERSION and GET_VF_RESOURCES established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The capabilities the PF granted (0 before GET_VF_RESOURCES).
    pub fn caps(&self) -> u32 {
        self.negotiated
            .as_ref()
            .map_or(0, |n| n.resources.vf_cap_flags)
    }

    /// The configured queue pairs.
    pub fn queue_pairs(&self) -> &[QueuePair] {
        &self.pairs
    }

    /// The steps of the last bring-up (or reset), in order.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps
    }

    /// The configuration of the last bring-up.
    pub fn config(&self) -> Option<&DriverConfig> {
        self.cfg.as_ref()
    }

    /// The eventfd of MSI-X `vector` (0: admin queue), once bound.
    pub fn irq_fd(&self, vector: u16) -> Option<BorrowedFd<'_>> {
        self.irqs.get(usize::from(vector)).map(|f| f.as_fd())
    }

    /// ARQ messages that answered nothing the driver was waiting for (late or unexpected
    /// replies, other opcodes).
    pub fn stray_messages(&self) -> u64 {
        self.stray
    }

    /// The vfio-user client (for the data path: tails, DMA memory).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the client back without shutting anything down.
    pub fn into_client(self) -> Client {
        self.client
    }

    // ----- bring-up ----------------------------------------------------------------------------

    /// Brings the VF from whatever state to link-up with `cfg` and returns the link.
    pub fn bring_up(&mut self, cfg: &DriverConfig) -> Result<LinkInfo, DriverError> {
        self.bring_up_with(cfg, |_| ControlFlow::Continue(()))
    }

    /// [`IavfDriver::bring_up`], reporting each step to `on_step` as it completes; returning
    /// `Break` stops there with [`DriverError::Aborted`].
    pub fn bring_up_with(
        &mut self,
        cfg: &DriverConfig,
        mut on_step: impl FnMut(&StepRecord) -> ControlFlow<()>,
    ) -> Result<LinkInfo, DriverError> {
        cfg.validate()?;
        self.cfg = Some(cfg.clone());
        let mut rec = Recorder {
            steps: Vec::new(),
            on_step: &mut on_step,
        };
        let r = self.bring_up_inner(cfg, cfg.device_reset, &mut rec);
        self.steps = rec.steps;
        r
    }

    /// VIRTCHNL_OP_RESET_VF, then waits for the reset and brings the VF up again with the last
    /// configuration.
    pub fn reset_vf(&mut self) -> Result<LinkInfo, DriverError> {
        self.reset_vf_with(|_| ControlFlow::Continue(()))
    }

    /// [`IavfDriver::reset_vf`] with a step callback.
    pub fn reset_vf_with(
        &mut self,
        mut on_step: impl FnMut(&StepRecord) -> ControlFlow<()>,
    ) -> Result<LinkInfo, DriverError> {
        let cfg = self.cfg.clone().ok_or(DriverError::NotReady {
            what: "reset_vf",
            state: "never brought up",
        })?;
        if self.aq.is_none() || self.state == DriverState::Down {
            return Err(self.not_ready("reset_vf"));
        }
        let mut rec = Recorder {
            steps: Vec::new(),
            on_step: &mut on_step,
        };
        let r = self
            .request_reset(&cfg, &mut rec)
            .and_then(|()| self.bring_up_inner(&cfg, false, &mut rec));
        self.steps = rec.steps;
        r
    }

    fn bring_up_inner(
        &mut self,
        cfg: &DriverConfig,
        device_reset: bool,
        rec: &mut Recorder<'_>,
    ) -> Result<LinkInfo, DriverError> {
        if !device_reset && self.state != DriverState::Down {
            // The VF is live: start from a reset, as Linux re-initialises.
            self.request_reset(cfg, rec)?;
        }
        self.forget_vf_state();
        self.next_iova = self.next_iova.max(cfg.iova_base);

        if device_reset {
            let t = Instant::now();
            self.client.reset()?;
            self.msix_vectors = None;
            rec.done(BringUpStep::DeviceReset, t, "vfio-user DEVICE_RESET".into())?;
        }
        if self.msix_vectors.is_none() {
            let t = Instant::now();
            let f = pci::enable_function(&mut self.client)?;
            if f.msix_cap.is_none() {
                return Err(ProtocolError::NoMsix.into());
            }
            self.msix_vectors = Some(f.msix_vectors);
            rec.done(
                BringUpStep::PciEnable,
                t,
                format!(
                    "command {:#06x} (memory, bus master), MSI-X enabled with {} vectors",
                    f.command, f.msix_vectors
                ),
            )?;
        }

        let t = Instant::now();
        let (state, polls) = self.wait_reset_done(cfg)?;
        rec.done(
            BringUpStep::ResetDone,
            t,
            format!("VFGEN_RSTAT {state:?} after {polls} read(s)"),
        )?;

        let t = Instant::now();
        self.init_admin_queue(cfg)?;
        let detail = match &self.aq {
            Some(a) => format!(
                "ATQ/ARQ {} entries, {}-byte buffers, rings at {:#x}/{:#x}",
                a.layout.len,
                a.layout.buf_size,
                a.mem.iova() + a.layout.atq_ring(),
                a.mem.iova() + a.layout.arq_ring()
            ),
            None => String::new(),
        };
        rec.done(BringUpStep::AdminQueue, t, detail)?;

        let t = Instant::now();
        let body = self.execute(VirtchnlOp::Version, &VersionInfo::V1_1.encode())?;
        let version = VersionInfo::decode(&body).map_err(|source| ProtocolError::BadReply {
            op: VirtchnlOp::Version,
            source,
        })?;
        if version != VersionInfo::V1_1 {
            return Err(ProtocolError::Version {
                major: version.major,
                minor: version.minor,
            }
            .into());
        }
        rec.done(
            BringUpStep::Version,
            t,
            format!("virtchnl {}.{}", version.major, version.minor),
        )?;

        let t = Instant::now();
        let body = self.execute(VirtchnlOp::GetVfResources, &cfg.caps.to_le_bytes())?;
        let resources = VfResource::decode(&body).map_err(|source| ProtocolError::BadReply {
            op: VirtchnlOp::GetVfResources,
            source,
        })?;
        let vsi = *resources
            .vsi_res
            .iter()
            .find(|v| v.vsi_type == VSI_TYPE_SRIOV)
            .ok_or(ProtocolError::NoLanVsi)?;
        let detail = format!(
            "caps {:#010x} (asked {:#010x}), {} queue pairs, {} vectors, max MTU {}, VSI {}, MAC {}",
            resources.vf_cap_flags,
            cfg.caps,
            vsi.num_queue_pairs,
            resources.max_vectors,
            resources.max_mtu,
            vsi.vsi_id,
            crate::device::format_mac(&vsi.default_mac_addr)
        );
        self.negotiated = Some(Negotiated {
            version,
            resources,
            vsi,
        });
        self.state = DriverState::Ready;
        rec.done(BringUpStep::GetVfResources, t, detail)?;

        let t = Instant::now();
        let queue_vectors = self.setup_interrupts(cfg)?;
        rec.done(
            BringUpStep::Interrupts,
            t,
            format!(
                "{} MSI-X vectors: 0 = admin queue, 1..={queue_vectors} = queues",
                1 + queue_vectors
            ),
        )?;

        let granted = self.caps();
        if granted & caps::VLAN != 0 {
            let t = Instant::now();
            let op = if cfg.vlan_strip {
                VirtchnlOp::EnableVlanStripping
            } else {
                VirtchnlOp::DisableVlanStripping
            };
            self.execute(op, &[])?;
            rec.done(BringUpStep::VlanStripping, t, format!("{op:?}"))?;
        }
        if granted & caps::RSS_PF != 0 {
            let t = Instant::now();
            let detail = self.configure_rss(cfg)?;
            rec.done(BringUpStep::Rss, t, detail)?;
        }

        let t = Instant::now();
        let (plans, max_pkt) = self.prepare_queues(cfg, queue_vectors)?;
        let vsi_id = vsi.vsi_id;
        let msg = queues::vsi_queue_config(vsi_id, &plans, max_pkt);
        self.execute(VirtchnlOp::ConfigVsiQueues, &msg.encode())?;
        self.adopt_pairs(&plans)?;
        rec.done(
            BringUpStep::ConfigVsiQueues,
            t,
            format!(
                "{} pair(s), {} descriptors, {}-byte buffers, max frame {max_pkt}",
                plans.len(),
                cfg.ring_len,
                cfg.rx_buffer_size
            ),
        )?;

        let t = Instant::now();
        let map = queues::irq_map(vsi_id, &plans, queue_vectors);
        self.execute(VirtchnlOp::ConfigIrqMap, &map.encode())?;
        rec.done(
            BringUpStep::ConfigIrqMap,
            t,
            format!("{} vector map(s)", map.vecmap.len()),
        )?;

        let t = Instant::now();
        self.eth_addrs(
            VirtchnlOp::AddEthAddr,
            &[vsi.default_mac_addr],
            ETHER_ADDR_PRIMARY,
        )?;
        rec.done(
            BringUpStep::AddEthAddr,
            t,
            crate::device::format_mac(&vsi.default_mac_addr),
        )?;

        let t = Instant::now();
        let link_before = self.link_changes;
        self.write_tails(cfg, queue_vectors)?;
        let sent = self.enable_all(cfg)?;
        rec.done(
            BringUpStep::EnableQueues,
            t,
            format!("{} queue(s) in {sent} message(s)", 2 * self.pairs.len()),
        )?;

        let t = Instant::now();
        let link = self.wait_link(cfg, link_before)?;
        let detail = match (link.up, link.speed_mbps) {
            (true, Some(s)) => format!("up, {s} Mbps"),
            (true, None) => "up, speed unknown".to_string(),
            (false, _) => "down".to_string(),
        };
        rec.done(BringUpStep::LinkUp, t, detail)?;
        Ok(link)
    }

    /// Drops what the VF forgot in a reset.
    fn forget_vf_state(&mut self) {
        self.state = DriverState::Down;
        self.pairs.clear();
        self.negotiated = None;
        self.link = None;
        self.enabled_rx = 0;
        self.enabled_tx = 0;
    }

    /// RESET_VF, then waits for `ARQLEN.ENABLE` to clear (the reset started, as Linux's reset
    /// task waits for it). The reset's end is [`IavfDriver::wait_reset_done`]'s.
    fn request_reset(
        &mut self,
        cfg: &DriverConfig,
        rec: &mut Recorder<'_>,
    ) -> Result<(), DriverError> {
        let t = Instant::now();
        // RESET_VF has no reply and the PF may clear the rings before completing the
        // descriptor: send it and move on, as both drivers do.
        self.send(VirtchnlOp::ResetVf, &[])?;
        let mut polls = 0u32;
        loop {
            polls += 1;
            if pci::rd32(&mut self.client, VF_ARQLEN1)? & AQLEN_ENABLE == 0 {
                break;
            }
            if polls >= cfg.reset_wait_attempts {
                return Err(DriverError::Timeout {
                    op: WaitOp::ResetStart,
                    waited: t.elapsed(),
                });
            }
            std::thread::sleep(cfg.reset_wait_interval);
        }
        self.forget_vf_state();
        if let Some(a) = self.aq.as_mut() {
            a.to_post = None;
        }
        rec.done(
            BringUpStep::ResetVf,
            t,
            format!("reset started after {polls} ARQLEN read(s)"),
        )
    }

    /// Polls `VFGEN_RSTAT` for COMPLETED or VFACTIVE (`iavf_check_vf_reset_done`).
    fn wait_reset_done(&mut self, cfg: &DriverConfig) -> Result<(VfrState, u32), DriverError> {
        let t = Instant::now();
        for i in 1..=cfg.reset_wait_attempts {
            let v = pci::rd32(&mut self.client, VFGEN_RSTAT)?;
            if let Some(s) = VfrState::from_rstat(v).filter(|s| s.is_reset_done()) {
                return Ok((s, i));
            }
            if i < cfg.reset_wait_attempts {
                std::thread::sleep(cfg.reset_wait_interval);
            }
        }
        Err(DriverError::Timeout {
            op: WaitOp::ResetDone,
            waited: t.elapsed(),
        })
    }

    /// Allocates `size` bytes of DMA memory at the next free IOVA (a guard page between blocks).
    fn alloc(&mut self, size: u64, share_fd: bool) -> Result<DmaBuffer, DriverError> {
        let size = page_align(size.max(1));
        let iova = self.next_iova;
        let buf = self.client.alloc_dma(iova, size, share_fd)?;
        self.next_iova = iova + size + PAGE;
        Ok(buf)
    }

    /// Sets up both admin queues (`iavf_init_adminq`): memory reused when the shape is the same.
    fn init_admin_queue(&mut self, cfg: &DriverConfig) -> Result<(), DriverError> {
        let layout = AqLayout::new(cfg.aq_len, cfg.aq_buf_size);
        let reuse = self
            .aq
            .as_ref()
            .is_some_and(|a| a.layout == layout && a.mem.fd_shared() == cfg.share_fd);
        if !reuse {
            if let Some(old) = self.aq.take() {
                self.client.dma_unmap(old.mem.iova(), old.mem.len())?;
            }
            let mem = self.alloc(layout.total, cfg.share_fd)?;
            self.aq = Some(AdminQueue {
                mem,
                layout,
                ntu: 0,
                ntc: 0,
                to_post: None,
                post_tail: cfg.share_fd,
            });
        }
        let Some(a) = self.aq.as_mut() else {
            return Err(self.not_ready("init_admin_queue"));
        };
        a.ntu = 0;
        a.ntc = 0;
        a.to_post = None;
        a.post_tail = cfg.share_fd;
        let iova = a.mem.iova();
        adminq::init_rings(a.mem.memory(), &a.layout, iova)?;
        let atq = iova + a.layout.atq_ring();
        let arq = iova + a.layout.arq_ring();
        let len = u32::from(a.layout.len);
        pci::wr32_batch(
            &mut self.client,
            &[
                (VF_ATQH1, 0),
                (VF_ATQT1, 0),
                (VF_ATQLEN1, len | AQLEN_ENABLE),
                (VF_ATQBAL1, atq as u32),
                (VF_ATQBAH1, (atq >> 32) as u32),
            ],
        )?;
        let read = pci::rd32(&mut self.client, VF_ATQBAL1)?;
        if read != atq as u32 {
            return Err(ProtocolError::AtqBaseReadBack {
                written: atq as u32,
                read,
            }
            .into());
        }
        pci::wr32_batch(
            &mut self.client,
            &[
                (VF_ARQH1, 0),
                (VF_ARQT1, 0),
                (VF_ARQLEN1, len | AQLEN_ENABLE),
                (VF_ARQBAL1, arq as u32),
                (VF_ARQBAH1, (arq >> 32) as u32),
                (VF_ARQT1, len - 1),
            ],
        )?;
        Ok(())
    }

    /// Binds the MSI-X eventfds and enables vector 0; returns the number of queue vectors.
    fn setup_interrupts(&mut self, cfg: &DriverConfig) -> Result<u16, DriverError> {
        let max_vectors = self
            .negotiated
            .as_ref()
            .map_or(1, |n| n.resources.max_vectors);
        let table = self.msix_vectors.unwrap_or(1);
        let queue_vectors = cfg
            .queue_pairs
            .min(max_vectors.saturating_sub(1))
            .min(table.saturating_sub(1));
        let fds = self
            .client
            .enable_irqs(MSIX_IRQ_INDEX, 1 + u32::from(queue_vectors))?;
        self.irqs = fds.into_iter().map(File::from).collect();
        if let Some(f) = self.irqs.first() {
            drain_eventfd(f);
        }
        pci::wr32_batch(
            &mut self.client,
            &[
                (VFINT_ICR0_ENA1, ICR0_ENA1_ADMINQ),
                (
                    VFINT_DYN_CTL01,
                    DYN_CTL_INTENA | DYN_CTL_CLEARPBA | DYN_CTL_ITR_INDX_MASK,
                ),
            ],
        )?;
        Ok(queue_vectors)
    }

    /// The RSS part of `iavf_dev_configure`.
    fn configure_rss(&mut self, cfg: &DriverConfig) -> Result<String, DriverError> {
        let (key_size, lut_size, granted_pairs) = match &self.negotiated {
            Some(n) => (
                n.resources.rss_key_size as usize,
                n.resources.rss_lut_size as usize,
                n.vsi.num_queue_pairs,
            ),
            None => return Err(self.not_ready("configure_rss")),
        };
        if !cfg.rss {
            self.config_rss_lut(&vec![0; lut_size])?;
            return Ok(format!("RSS off: {lut_size}-entry LUT of zeros"));
        }
        let key = cfg
            .rss_key
            .clone()
            .unwrap_or_else(|| default_rss_key(key_size));
        if !key.is_empty() {
            self.config_rss_key(&key)?;
        }
        // Only queues that exist (and that the PF granted) go in the LUT.
        let spread = cfg.queue_pairs.min(granted_pairs).max(1);
        self.config_rss_lut(&rss_lut(lut_size, spread))?;
        Ok(format!(
            "{}-byte key, {lut_size}-entry LUT over {spread} queue(s)",
            key.len()
        ))
    }

    /// Allocates (or reuses) the queue memory and fills the rings; returns the pairs' plans and
    /// the `max_pkt_size`.
    fn prepare_queues(
        &mut self,
        cfg: &DriverConfig,
        queue_vectors: u16,
    ) -> Result<(Vec<PairPlan>, u32), DriverError> {
        let layout = QueueLayout::new(cfg.queue_pairs, cfg.ring_len, cfg.rx_buffer_size);
        let reuse = self
            .queue_mem
            .as_ref()
            .is_some_and(|q| q.layout == layout && q.mem.fd_shared() == cfg.share_fd);
        if !reuse {
            if let Some(old) = self.queue_mem.take() {
                self.client.dma_unmap(old.mem.iova(), old.mem.len())?;
            }
            let mem = self.alloc(layout.total(), cfg.share_fd)?;
            self.queue_mem = Some(QueueMemory { layout, mem });
        }
        let Some(qm) = self.queue_mem.as_ref() else {
            return Err(self.not_ready("prepare_queues"));
        };
        let iova = qm.mem.iova();
        let mut plans = Vec::with_capacity(usize::from(cfg.queue_pairs));
        for q in 0..cfg.queue_pairs {
            queues::init_rings(qm.mem.memory(), &qm.layout, iova, q)?;
            let vector = if queue_vectors == 0 {
                0
            } else {
                queues::vector_of(q, queue_vectors)
            };
            let tails = qtx_tail(q).zip(qrx_tail(q));
            plans.push(qm.layout.plan(iova, q, vector, tails));
        }
        let max_mtu = self
            .negotiated
            .as_ref()
            .map_or(0, |n| u32::from(n.resources.max_mtu));
        // The PF's `max_mtu` is already a frame size (Linux sends it as `max_pkt_size`).
        let max_pkt = cfg.max_pkt_size.unwrap_or(if max_mtu == 0 {
            1500 + ETH_OVERHEAD
        } else {
            max_mtu
        });
        Ok((plans, max_pkt))
    }

    /// The pairs the PF accepted become the driver's [`QueuePair`]s.
    fn adopt_pairs(&mut self, plans: &[PairPlan]) -> Result<(), DriverError> {
        let Some(qm) = self.queue_mem.as_ref() else {
            return Err(self.not_ready("adopt_pairs"));
        };
        let mut pairs = Vec::with_capacity(plans.len());
        for p in plans {
            let (tx_tail, rx_tail) = p.tails.ok_or(ProtocolError::NoTailRegister(p.id))?;
            pairs.push(QueuePair {
                plan: *p,
                memory: qm.mem.clone(),
                tx_tail,
                rx_tail,
                ring: queues::RingState::new(p.ring_len),
            });
        }
        self.pairs = pairs;
        Ok(())
    }

    /// RX tails at `ring_len - 1`, TX tails at 0, and the queue vectors' `DYN_CTLN1`.
    fn write_tails(&mut self, cfg: &DriverConfig, queue_vectors: u16) -> Result<(), DriverError> {
        let mut writes = Vec::with_capacity(2 * self.pairs.len() + usize::from(queue_vectors));
        for p in &self.pairs {
            writes.push((p.rx_tail_register(), p.initial_rx_tail()));
            writes.push((p.tx_tail_register(), 0));
        }
        let ctl = if cfg.queue_interrupts {
            Some(DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK)
        } else if self.caps() & caps::WB_ON_ITR != 0 {
            Some(DYN_CTL_ITR_INDX_MASK | DYN_CTLN1_WB_ON_ITR)
        } else {
            None
        };
        if let Some(ctl) = ctl {
            for n in 0..queue_vectors {
                if let Some(off) = vfint_dyn_ctln1(n) {
                    writes.push((off, ctl));
                }
            }
        }
        pci::wr32_batch(&mut self.client, &writes)?;
        Ok(())
    }

    /// ENABLE_QUEUES for every configured pair; returns the number of messages.
    fn enable_all(&mut self, cfg: &DriverConfig) -> Result<usize, DriverError> {
        let all = self.pairs_mask();
        let sent = match cfg.enable_mode {
            EnableMode::AllAtOnce => {
                self.select(VirtchnlOp::EnableQueues, all, all)?;
                1
            }
            EnableMode::PerQueue => {
                let ids: Vec<u16> = self.pairs.iter().map(QueuePair::id).collect();
                for &q in &ids {
                    self.select(VirtchnlOp::EnableQueues, 0, 1 << q)?;
                }
                for &q in &ids {
                    self.select(VirtchnlOp::EnableQueues, 1 << q, 0)?;
                }
                2 * ids.len()
            }
        };
        Ok(sent)
    }

    fn pairs_mask(&self) -> u32 {
        self.pairs.iter().fold(0u32, |m, p| {
            m | 1u32.checked_shl(u32::from(p.id())).unwrap_or(0)
        })
    }

    /// Waits for a LINK_CHANGE that arrived after `before` link events.
    fn wait_link(&mut self, cfg: &DriverConfig, before: u64) -> Result<LinkInfo, DriverError> {
        let t = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if self.link_changes == before {
                self.poll_arq(None)?;
            }
            if self.link_changes != before {
                if let Some(l) = self.link {
                    return Ok(l);
                }
            }
            if t.elapsed() >= cfg.link_timeout {
                return Err(self.timeout(WaitOp::LinkChange, t));
            }
            backoff.wait(self.irqs.first());
        }
    }

    // ----- admin-queue messaging ---------------------------------------------------------------

    fn not_ready(&self, what: &'static str) -> DriverError {
        DriverError::NotReady {
            what,
            state: self.state.name(),
        }
    }

    fn op_timeout(&self) -> Duration {
        self.cfg
            .as_ref()
            .map_or(Duration::from_secs(2), |c| c.op_timeout)
    }

    /// A timeout, or the admin-queue fault that explains it.
    fn timeout(&mut self, op: WaitOp, since: Instant) -> DriverError {
        let waited = since.elapsed();
        let bits = AQLEN_VFE | AQLEN_OVFL | AQLEN_CRIT;
        let regs = pci::rd32(&mut self.client, VF_ATQLEN1)
            .and_then(|a| Ok((a, pci::rd32(&mut self.client, VF_ARQLEN1)?)));
        match regs {
            Ok((atq_len, arq_len)) if (atq_len | arq_len) & bits != 0 => {
                ProtocolError::AdminQueueFault { atq_len, arq_len }.into()
            }
            _ => DriverError::Timeout { op, waited },
        }
    }

    /// Places a command on the ATQ and rings `ATQT`; returns its slot.
    fn send(&mut self, op: VirtchnlOp, msg: &[u8]) -> Result<u16, DriverError> {
        let Some(a) = self.aq.as_mut() else {
            return Err(self.not_ready("send"));
        };
        let max = usize::from(a.layout.buf_size);
        if msg.len() > max {
            return Err(DriverError::MessageTooLarge {
                op,
                len: msg.len(),
                max,
            });
        }
        let slot = a.ntu;
        adminq::put_command(a.mem.memory(), &a.layout, a.mem.iova(), slot, op.raw(), msg)?;
        a.ntu = a.layout.next(slot);
        let tail = u32::from(a.ntu);
        pci::wr32(&mut self.client, VF_ATQT1, tail)?;
        Ok(slot)
    }

    /// Sends `op` and returns the body of the PF's successful reply.
    fn execute(&mut self, op: VirtchnlOp, msg: &[u8]) -> Result<Vec<u8>, DriverError> {
        let t = Instant::now();
        let deadline = self.op_timeout();
        let slot = self.send(op, msg)?;
        let mut backoff = Backoff::new();
        loop {
            let done = match self.aq.as_ref() {
                Some(a) => adminq::command_done(a.mem.memory(), &a.layout, slot)?,
                None => return Err(self.not_ready("execute")),
            };
            if let Some(d) = done {
                if d.flags & aq::FLAG_ERR != 0 {
                    // The PF may still have answered it: take that answer off the ARQ.
                    let _ = self.poll_arq(Some(op));
                    return Err(ProtocolError::AtqError {
                        op,
                        retval: d.retval,
                    }
                    .into());
                }
                break;
            }
            if t.elapsed() >= deadline {
                return Err(self.timeout(WaitOp::Completion(op), t));
            }
            backoff.wait(self.irqs.first());
        }
        let mut backoff = Backoff::new();
        loop {
            if let Some(m) = self.poll_arq(Some(op))? {
                return reply_body(op, m);
            }
            if t.elapsed() >= deadline {
                return Err(self.timeout(WaitOp::Reply(op), t));
            }
            backoff.wait(self.irqs.first());
        }
    }

    /// Takes ARQ messages until one answers `want` (returned); events are handled on the way,
    /// anything else is counted and dropped. The slots taken go back to the PF.
    fn poll_arq(&mut self, want: Option<VirtchnlOp>) -> Result<Option<ArqMessage>, DriverError> {
        let mut found = None;
        loop {
            let Some(a) = self.aq.as_mut() else {
                return Err(self.not_ready("poll_arq"));
            };
            let slot = a.ntc;
            let Some(m) = adminq::take_message(a.mem.memory(), &a.layout, a.mem.iova(), slot)?
            else {
                break;
            };
            a.to_post = Some(slot);
            a.ntc = a.layout.next(slot);
            if m.opcode == aq::OPC_SEND_MSG_TO_VF && m.op == VirtchnlOp::Event.raw() {
                self.handle_event(&m);
            } else if m.opcode == aq::OPC_SEND_MSG_TO_VF && want.is_some_and(|w| w.raw() == m.op) {
                found = Some(m);
                break;
            } else {
                self.stray += 1;
                log::debug!(
                    "iavf_client: dropped ARQ message opcode {:#06x} op {} status {} (waiting for {want:?})",
                    m.opcode,
                    m.op,
                    m.status
                );
            }
        }
        self.post_arq()?;
        Ok(found)
    }

    /// Hands the ARQ slots taken back to the PF (`ARQT`).
    fn post_arq(&mut self) -> Result<(), DriverError> {
        let Some(a) = self.aq.as_mut() else {
            return Ok(());
        };
        let Some(slot) = a.to_post.take() else {
            return Ok(());
        };
        if a.post_tail {
            pci::wr32_posted(&mut self.client, VF_ARQT1, u32::from(slot))?;
        } else {
            pci::wr32(&mut self.client, VF_ARQT1, u32::from(slot))?;
        }
        Ok(())
    }

    fn handle_event(&mut self, m: &ArqMessage) {
        let ev = match PfEvent::decode(&m.body) {
            Ok(e) => e,
            Err(e) => {
                self.stray += 1;
                log::debug!("iavf_client: undecodable PF event: {e}");
                return;
            }
        };
        let out = match ev.data {
            PfEventData::LinkChange {
                link_speed: speed,
                link_status,
            } => {
                let speed_mbps = if self.caps() & caps::ADV_LINK_SPEED != 0 {
                    (speed != 0).then_some(speed)
                } else {
                    link_speed::to_mbps(speed)
                };
                let li = LinkInfo {
                    up: link_status != 0,
                    speed_mbps,
                    mac: self.mac().unwrap_or_default(),
                };
                self.link = Some(li);
                self.link_changes += 1;
                DriverEvent::Link(li)
            }
            PfEventData::ResetImpending => DriverEvent::ResetImpending,
            PfEventData::PfDriverClose => DriverEvent::PfDriverClose,
            PfEventData::DcfVsiMapUpdate { .. } | PfEventData::Other { .. } => {
                DriverEvent::Other { code: ev.code() }
            }
        };
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(out);
    }

    /// Looks at the ARQ now (events) and returns every event since the last call.
    pub fn poll_events(&mut self) -> Result<Vec<DriverEvent>, DriverError> {
        if let Some(f) = self.irqs.first() {
            drain_eventfd(f);
        }
        if self.aq.is_some() && self.state != DriverState::Down {
            self.poll_arq(None)?;
        }
        Ok(self.take_events())
    }

    /// Returns the events handled so far (without looking at the ARQ).
    pub fn take_events(&mut self) -> Vec<DriverEvent> {
        self.events.drain(..).collect()
    }

    // ----- runtime operations ------------------------------------------------------------------

    fn vsi_id(&self, what: &'static str) -> Result<u16, DriverError> {
        match (&self.negotiated, self.state) {
            (Some(n), DriverState::Ready | DriverState::Running) => Ok(n.vsi.vsi_id),
            _ => Err(self.not_ready(what)),
        }
    }

    fn need(&self, op: VirtchnlOp, cap: u32) -> Result<(), DriverError> {
        if self.caps() & cap != 0 {
            Ok(())
        } else {
            Err(DriverError::NotGranted { op, cap })
        }
    }

    /// GET_STATS: the VSI's Ethernet counters.
    pub fn get_stats(&mut self) -> Result<EthStats, DriverError> {
        let vsi_id = self.vsi_id("get_stats")?;
        let sel = QueueSelect {
            vsi_id,
            rx_queues: 0,
            tx_queues: 0,
        };
        let body = self.execute(VirtchnlOp::GetStats, &sel.encode())?;
        EthStats::decode(&body).map_err(|source| {
            ProtocolError::BadReply {
                op: VirtchnlOp::GetStats,
                source,
            }
            .into()
        })
    }

    fn eth_addrs(
        &mut self,
        op: VirtchnlOp,
        macs: &[[u8; 6]],
        addr_type: u8,
    ) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("eth_addr")?;
        if macs.is_empty() {
            return Err(DriverError::InvalidConfig(format!(
                "{op:?} with no address"
            )));
        }
        let list = EtherAddrList {
            vsi_id,
            list: macs
                .iter()
                .map(|&addr| EtherAddr { addr, addr_type })
                .collect(),
        };
        self.execute(op, &list.encode()).map(|_| ())
    }

    /// ADD_ETH_ADDR: MAC filters for `macs`.
    pub fn add_eth_addr(&mut self, macs: &[[u8; 6]]) -> Result<(), DriverError> {
        self.eth_addrs(VirtchnlOp::AddEthAddr, macs, ETHER_ADDR_EXTRA)
    }

    /// DEL_ETH_ADDR: removes the MAC filters of `macs`.
    pub fn del_eth_addr(&mut self, macs: &[[u8; 6]]) -> Result<(), DriverError> {
        self.eth_addrs(VirtchnlOp::DelEthAddr, macs, ETHER_ADDR_EXTRA)
    }

    fn vlans(&mut self, op: VirtchnlOp, ids: &[u16]) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("vlan")?;
        self.need(op, caps::VLAN)?;
        if ids.is_empty() {
            return Err(DriverError::InvalidConfig(format!(
                "{op:?} with no VLAN id"
            )));
        }
        let list = VlanFilterList {
            vsi_id,
            vlan_id: ids.to_vec(),
        };
        self.execute(op, &list.encode()).map(|_| ())
    }

    /// ADD_VLAN: VLAN filters (needs the VLAN capability).
    pub fn add_vlan(&mut self, ids: &[u16]) -> Result<(), DriverError> {
        self.vlans(VirtchnlOp::AddVlan, ids)
    }

    /// DEL_VLAN.
    pub fn del_vlan(&mut self, ids: &[u16]) -> Result<(), DriverError> {
        self.vlans(VirtchnlOp::DelVlan, ids)
    }

    /// CONFIG_PROMISCUOUS_MODE.
    pub fn config_promisc(&mut self, unicast: bool, multicast: bool) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("config_promisc")?;
        let mut flags = 0;
        if unicast {
            flags |= promisc::UNICAST;
        }
        if multicast {
            flags |= promisc::MULTICAST;
        }
        let p = PromiscInfo { vsi_id, flags };
        self.execute(VirtchnlOp::ConfigPromiscuousMode, &p.encode())
            .map(|_| ())
    }

    /// CONFIG_RSS_KEY (needs RSS_PF; the PF wants `rss_key_size` bytes).
    pub fn config_rss_key(&mut self, key: &[u8]) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("config_rss_key")?;
        self.need(VirtchnlOp::ConfigRssKey, caps::RSS_PF)?;
        let m = RssKey {
            vsi_id,
            key: key.to_vec(),
        };
        self.execute(VirtchnlOp::ConfigRssKey, &m.encode())
            .map(|_| ())
    }

    /// CONFIG_RSS_LUT (needs RSS_PF; the PF wants `rss_lut_size` entries).
    pub fn config_rss_lut(&mut self, lut: &[u8]) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("config_rss_lut")?;
        self.need(VirtchnlOp::ConfigRssLut, caps::RSS_PF)?;
        let m = RssLut {
            vsi_id,
            lut: lut.to_vec(),
        };
        self.execute(VirtchnlOp::ConfigRssLut, &m.encode())
            .map(|_| ())
    }

    /// GET_RSS_HENA_CAPS: the hash types the PF supports.
    pub fn get_rss_hena_caps(&mut self) -> Result<u64, DriverError> {
        self.vsi_id("get_rss_hena_caps")?;
        self.need(VirtchnlOp::GetRssHenaCaps, caps::RSS_PF)?;
        let body = self.execute(VirtchnlOp::GetRssHenaCaps, &[])?;
        RssHena::decode(&body).map(|h| h.hena).map_err(|source| {
            ProtocolError::BadReply {
                op: VirtchnlOp::GetRssHenaCaps,
                source,
            }
            .into()
        })
    }

    /// SET_RSS_HENA.
    pub fn set_rss_hena(&mut self, hena: u64) -> Result<(), DriverError> {
        self.vsi_id("set_rss_hena")?;
        self.need(VirtchnlOp::SetRssHena, caps::RSS_PF)?;
        self.execute(VirtchnlOp::SetRssHena, &RssHena { hena }.encode())
            .map(|_| ())
    }

    /// ENABLE_QUEUES / DISABLE_QUEUES with bitmaps; tracks what is enabled.
    fn select(&mut self, op: VirtchnlOp, rx: u32, tx: u32) -> Result<(), DriverError> {
        let vsi_id = self.vsi_id("queue select")?;
        let sel = QueueSelect {
            vsi_id,
            rx_queues: rx,
            tx_queues: tx,
        };
        self.execute(op, &sel.encode())?;
        if op == VirtchnlOp::EnableQueues {
            self.enabled_rx |= rx;
            self.enabled_tx |= tx;
        } else {
            self.enabled_rx &= !rx;
            self.enabled_tx &= !tx;
        }
        self.state = if self.enabled_rx | self.enabled_tx != 0 {
            DriverState::Running
        } else {
            DriverState::Ready
        };
        Ok(())
    }

    /// ENABLE_QUEUES for every configured pair, as at bring-up (the PF sends LINK_CHANGE again
    /// after all queues were disabled: see [`IavfDriver::poll_events`]).
    pub fn enable_queues(&mut self) -> Result<(), DriverError> {
        let cfg = self
            .cfg
            .clone()
            .ok_or_else(|| self.not_ready("enable_queues"))?;
        if self.pairs.is_empty() {
            return Err(self.not_ready("enable_queues"));
        }
        self.enable_all(&cfg).map(|_| ())
    }

    /// DISABLE_QUEUES for every enabled queue.
    pub fn disable_queues(&mut self) -> Result<(), DriverError> {
        let (rx, tx) = (self.enabled_rx, self.enabled_tx);
        if rx | tx == 0 {
            self.vsi_id("disable_queues")?;
            return Ok(());
        }
        self.select(VirtchnlOp::DisableQueues, rx, tx)
    }

    /// Stops the port (`iavf_dev_stop` + `iavf_dev_close`): DISABLE_QUEUES, DEL_ETH_ADDR of the
    /// default MAC, vector 0 disabled, both admin queues shut down, MSI-X unbound, DMA memory
    /// unmapped. Every step is attempted; the first failure is returned.
    pub fn shutdown(&mut self) -> Result<(), DriverError> {
        let mut first: Option<DriverError> = None;
        let mut keep = |r: Result<(), DriverError>| {
            if let Err(e) = r {
                log::debug!("iavf_client: shutdown: {e}");
                first.get_or_insert(e);
            }
        };
        if matches!(self.state, DriverState::Ready | DriverState::Running) {
            keep(self.disable_queues());
            if let Some(mac) = self.mac() {
                keep(self.eth_addrs(VirtchnlOp::DelEthAddr, &[mac], ETHER_ADDR_PRIMARY));
            }
        }
        if self.aq.is_some() {
            keep(
                pci::wr32_batch(
                    &mut self.client,
                    &[
                        (VFINT_ICR0_ENA1, 0),
                        (VFINT_DYN_CTL01, DYN_CTL_ITR_INDX_MASK),
                        (VF_ATQH1, 0),
                        (VF_ATQT1, 0),
                        (VF_ATQLEN1, 0),
                        (VF_ATQBAL1, 0),
                        (VF_ATQBAH1, 0),
                        (VF_ARQH1, 0),
                        (VF_ARQT1, 0),
                        (VF_ARQLEN1, 0),
                        (VF_ARQBAL1, 0),
                        (VF_ARQBAH1, 0),
                    ],
                )
                .map_err(DriverError::from),
            );
        }
        if !self.irqs.is_empty() {
            keep(
                self.client
                    .disable_irqs(MSIX_IRQ_INDEX)
                    .map_err(DriverError::from),
            );
            self.irqs.clear();
        }
        if let Some(a) = self.aq.take() {
            keep(
                self.client
                    .dma_unmap(a.mem.iova(), a.mem.len())
                    .map_err(DriverError::from),
            );
        }
        if let Some(q) = self.queue_mem.take() {
            keep(
                self.client
                    .dma_unmap(q.mem.iova(), q.mem.len())
                    .map_err(DriverError::from),
            );
        }
        self.forget_vf_state();
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`IavfDriver::shutdown`], then closes the connection (which the PF also treats as a VF
    /// reset).
    pub fn close(mut self) -> Result<(), DriverError> {
        let r = self.shutdown();
        self.client.close();
        r
    }
}

/// The body of a reply, or the error its descriptor or status carries.
fn reply_body(op: VirtchnlOp, m: ArqMessage) -> Result<Vec<u8>, DriverError> {
    if m.flags & aq::FLAG_ERR != 0 {
        return Err(ProtocolError::ArqError {
            op,
            retval: m.retval,
        }
        .into());
    }
    match VirtchnlStatus::from_raw(m.status) {
        Some(VirtchnlStatus::Success) => Ok(m.body),
        Some(status) => Err(DriverError::Status { op, status }),
        None => Err(ProtocolError::UnknownStatus { op, raw: m.status }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(flags: u16, status: i32, body: &[u8]) -> ArqMessage {
        ArqMessage {
            opcode: aq::OPC_SEND_MSG_TO_VF,
            op: VirtchnlOp::GetStats.raw(),
            status,
            flags,
            retval: aq::rc::EFBIG,
            body: body.to_vec(),
        }
    }

    #[test]
    fn replies_become_bodies_or_typed_errors() {
        let op = VirtchnlOp::GetStats;
        assert_eq!(
            reply_body(op, msg(aq::FLAG_DD, 0, &[1, 2])).ok(),
            Some(vec![1, 2])
        );
        assert!(matches!(
            reply_body(op, msg(aq::FLAG_DD, -5, &[])),
            Err(DriverError::Status {
                op: VirtchnlOp::GetStats,
                status: VirtchnlStatus::ErrParam
            })
        ));
        assert!(matches!(
            reply_body(op, msg(aq::FLAG_DD, -64, &[])),
            Err(DriverError::Status {
                status: VirtchnlStatus::ErrNotSupported,
                ..
            })
        ));
        assert!(matches!(
            reply_body(op, msg(aq::FLAG_DD, -7, &[])),
            Err(DriverError::Protocol(ProtocolError::UnknownStatus {
                raw: -7,
                ..
            }))
        ));
        assert!(matches!(
            reply_body(op, msg(aq::FLAG_DD | aq::FLAG_ERR, 0, &[])),
            Err(DriverError::Protocol(ProtocolError::ArqError {
                retval: aq::rc::EFBIG,
                ..
            }))
        ));
    }

    #[test]
    fn config_validation_refuses_what_cannot_be_encoded() {
        assert!(DriverConfig::default().validate().is_ok());
        assert!(
            DriverConfig::with_queue_pairs(17).validate().is_ok(),
            "the PF decides"
        );
        let bad = [
            DriverConfig::with_queue_pairs(0),
            DriverConfig::with_queue_pairs(33),
            DriverConfig {
                ring_len: 0,
                ..Default::default()
            },
            DriverConfig {
                rx_buffer_size: 0,
                ..Default::default()
            },
            DriverConfig {
                aq_len: 1,
                ..Default::default()
            },
            DriverConfig {
                aq_len: 1024,
                ..Default::default()
            },
            DriverConfig {
                aq_buf_size: 4097,
                ..Default::default()
            },
            DriverConfig {
                aq_buf_size: 32,
                ..Default::default()
            },
            DriverConfig {
                reset_wait_attempts: 0,
                ..Default::default()
            },
            DriverConfig {
                iova_base: 0x1234,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(DriverError::InvalidConfig(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn defaults_follow_the_drivers() {
        let c = DriverConfig::default();
        assert_eq!((c.aq_len, c.aq_buf_size), (32, 4096));
        assert_eq!(
            (c.reset_wait_attempts, c.reset_wait_interval),
            (50, Duration::from_millis(20))
        );
        assert_eq!((c.ring_len, c.rx_buffer_size), (512, 2048));
        for cap in [caps::L2, caps::RSS_PF, caps::WB_ON_ITR, caps::VLAN] {
            assert_ne!(c.caps & cap, 0);
        }
        assert_eq!(c.caps & caps::RX_FLEX_DESC, 0, "legacy descriptors only");
    }

    #[test]
    fn rss_helpers() {
        let k = default_rss_key(52);
        assert_eq!(k.len(), 52);
        assert!(k.iter().all(|&b| b != 0));
        assert_eq!(rss_lut(6, 4), vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(rss_lut(3, 0), vec![0, 0, 0]);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_an_eventfd_cuts_it_short() {
        let mut b = Backoff::new();
        for _ in 0..12 {
            b.wait(None);
        }
        assert_eq!(b.delay, MAX_BACKOFF);
        // A signalled eventfd: no sleep, and the counter is consumed.
        let (mem, fd) = emudev_dma::SharedMemory::memfd("not-an-eventfd", 4096).expect("memfd");
        drop(mem);
        let f = File::from(fd);
        // A memfd of zeros reads 8 bytes, like a signalled eventfd; a fresh backoff stays short.
        let mut b = Backoff::new();
        b.wait(Some(&f));
        assert_eq!(b.delay, MIN_BACKOFF);
    }

    #[test]
    fn the_driver_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<IavfDriver>();
        send::<QueuePair>();
        send::<DriverError>();
    }

    #[test]
    fn step_names_are_distinct() {
        let all = [
            BringUpStep::ResetVf,
            BringUpStep::DeviceReset,
            BringUpStep::PciEnable,
            BringUpStep::ResetDone,
            BringUpStep::AdminQueue,
            BringUpStep::Version,
            BringUpStep::GetVfResources,
            BringUpStep::Interrupts,
            BringUpStep::VlanStripping,
            BringUpStep::Rss,
            BringUpStep::ConfigVsiQueues,
            BringUpStep::ConfigIrqMap,
            BringUpStep::AddEthAddr,
            BringUpStep::EnableQueues,
            BringUpStep::LinkUp,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), all.len());
    }
}
