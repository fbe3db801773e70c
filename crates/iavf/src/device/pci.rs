//! The VF as a PCI function ([`IavfFunction`] on `emudev-pci`), the [`IavfDevice`] the
//! vfio-user server drives (the function behind `PciDevice`, behind emudev's
//! `VfioUserAdapter`), and [`IavfHandle`], the thread-safe handle applications and the data
//! path use.
//!
//! Locks: the server holds its lock on the device for each message; the VF's state is behind
//! its own mutex (`Shared::core`), so a handle can reach it from any thread. Changes to the
//! emudev object model are queued under that mutex and applied after it is released, by
//! whichever thread is not already applying them (emudev runs subscribers synchronously, and a
//! subscriber may call back into the handle).
//!
//! Deferred queue interrupts (ITR moderation, `itr.rs`) are fired by the device's timer thread
//! through the same core path as [`IavfHandle::raise_queue_irq`]; the timer is armed after the
//! core lock is released and calls back without its own lock held, so neither lock is ever
//! taken under the other.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use emudev::{
    memfd_backing, AttrSpec, AttrValue, BuildError, Doorbell, EmuDev, EmuDevConf, EmuEvent,
    EventSink, LifecycleError, NotifyError, QueueError, Region, RegionError, SubscriptionId,
    VfioUserAdapter, PAGE_SIZE,
};
use emudev_pci::{
    default_config_write, default_reset, AddBarError, AddCapabilityError, BarSpec, ConfigKind,
    ConfigSpace, InterruptPin, MsixMaskMode, MsixSpec, MsixTable, PciDevice, PciFunction, PciIds,
    PcieSpec, ValidateLayoutError,
};
use emudev_vfio_user::server::{Server, ServerBindError, ServerConfig};
use emudev_vfio_user::{DeviceContext, Errno, SparseArea};
use rustix::event::{eventfd, EventfdFlags};
use thiserror::Error;

use super::core::{Core, EmuOp, Io};
use super::itr::ItrTimer;
use super::stats::{Counters, IavfStats, VsiStats};
use super::{
    format_mac, queue_ids, IavfConfig, IavfConfigError, IavfSnapshot, BAR0_SIZE, IAVF_CLASS_CODE,
    IAVF_DEVICE_ID, IAVF_REVISION, IAVF_SUBSYSTEM_ID, IAVF_SUBSYSTEM_VENDOR_ID, IAVF_VENDOR_ID,
    MSIX_BAR, MSIX_BAR_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
};
use crate::spec::regs::{qrx_tail, qtx_tail, QRX_TAIL1_BASE, QTX_TAIL1_BASE, VF_ARQT1, VF_ATQT1};

/// Why [`IavfDevice::new`] failed.
#[derive(Debug, Error)]
pub enum CreateIavfError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] IavfConfigError),
    /// A BAR could not be defined (a bug).
    #[error("BAR layout: {0}")]
    Bar(#[from] AddBarError),
    /// A capability could not be added (a bug).
    #[error("capability layout: {0}")]
    Capability(#[from] AddCapabilityError),
    /// The PCI layout is inconsistent (a bug).
    #[error("PCI layout: {0}")]
    Layout(#[from] ValidateLayoutError),
    /// The emudev object model refused the layout (a bug).
    #[error("emudev layout: {0}")]
    Emu(#[from] BuildError),
    /// The emudev device could not be configured or started.
    #[error("emudev lifecycle: {0}")]
    Lifecycle(#[from] LifecycleError),
    /// The device could not subscribe to its own events.
    #[error("emudev events: {0}")]
    Subscribe(#[from] NotifyError),
    /// The memory behind the doorbell pages (or a kick eventfd) could not be created.
    #[error("doorbell pages: {0}")]
    DoorbellPages(std::io::Error),
    /// The doorbell pages could not be mapped (a bug).
    #[error("doorbell pages: {0}")]
    MapDoorbellPages(#[from] RegionError),
}

/// The backing file of the doorbell pages covers BAR0 up to the end of the RX tail page.
const DOORBELL_PAGES_END: u64 = QRX_TAIL1_BASE + PAGE_SIZE;

/// What raising a queue interrupt did ([`IavfHandle::raise_queue_irq`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqOutcome {
    /// Signalled.
    Delivered,
    /// Masked (MSI-X table or client mask): left pending, goes out on unmask.
    Pending,
    /// Not raised: the driver has the vector's `DYN_CTL*.INTENA` clear.
    Gated,
    /// Raised but it reached nobody (MSI-X disabled, no eventfd, no client, bad vector).
    Undelivered,
    /// Held by ITR moderation: the vector fired less than its interval ago; it is now pending
    /// and fires once when the interval has passed (if still enabled then).
    Deferred,
    /// Folded into the interrupt already pending on the vector (ITR moderation).
    Coalesced,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct OpQueue {
    ops: VecDeque<EmuOp>,
    draining: bool,
}

/// State shared by the function and its handles.
pub(crate) struct Shared {
    emu: EmuDev,
    msix: MsixTable,
    counters: Counters,
    vsi_stats: VsiStats,
    bus_master: AtomicBool,
    core: Mutex<Core>,
    opq: Mutex<OpQueue>,
    /// Fires deferred queue interrupts; its thread starts on the first deferral and is joined
    /// when this is dropped.
    itr_timer: ItrTimer,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("emu", &self.emu)
            .field("bus_master", &self.bus_master)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Runs `f` on the core with the given transport context, then applies the emudev changes
    /// it asked for.
    fn with_core<R>(
        &self,
        ctx: Option<&DeviceContext>,
        f: impl FnOnce(&mut Core, &mut Io) -> R,
    ) -> R {
        let r = {
            let mut core = lock(&self.core);
            let mut io = Io {
                ctx,
                msix: &self.msix,
                counters: &self.counters,
                vsi_stats: &self.vsi_stats,
                bus_master: self.bus_master.load(Ordering::SeqCst),
                ops: Vec::new(),
            };
            let r = f(&mut core, &mut io);
            // Queued while the core is locked, so they apply in the order the core made them.
            if !io.ops.is_empty() {
                lock(&self.opq).ops.extend(io.ops);
            }
            r
        };
        self.drain();
        r
    }

    /// Applies queued emudev changes unless another call up the stack (or another thread) is.
    fn drain(&self) {
        {
            let mut q = lock(&self.opq);
            if q.draining || q.ops.is_empty() {
                return;
            }
            q.draining = true;
        }
        loop {
            let op = {
                let mut q = lock(&self.opq);
                match q.ops.pop_front() {
                    Some(op) => op,
                    None => {
                        q.draining = false;
                        return;
                    }
                }
            };
            self.apply(op);
        }
    }

    fn apply(&self, op: EmuOp) {
        let result = match op {
            EmuOp::Configure(id, cfg) => self
                .emu
                .configure_queue(id, cfg)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            EmuOp::Clear(id) => match self.emu.clear_queue(id) {
                Ok(()) | Err(QueueError::NotConfigured(_)) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            EmuOp::Attr(name, value) => {
                self.emu.update_attr(name, value).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            Counters::bump(&self.counters.emu_errors);
            log::warn!("iavf {}: emudev refused an update: {e}", self.emu.name());
        }
    }

    fn mmio_read(&self, ctx: &DeviceContext, offset: u64, data: &mut [u8]) {
        Counters::bump(&self.counters.mmio_reads);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            Counters::bump(&self.counters.bad_accesses);
            log::debug!("iavf: bad {}-byte BAR0 read at {offset:#x}", data.len());
            data.fill(0xFF);
            return;
        }
        let v = self.with_core(Some(ctx), |c, _| c.reg_read(offset));
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn mmio_write(&self, ctx: &DeviceContext, offset: u64, data: &[u8]) {
        Counters::bump(&self.counters.mmio_writes);
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            Counters::bump(&self.counters.bad_accesses);
            log::debug!("iavf: bad {}-byte BAR0 write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            Counters::bump(&self.counters.bad_accesses);
            return;
        }
        let v = u32::from_le_bytes(bytes);
        self.with_core(Some(ctx), |c, io| c.reg_write(io, offset, v));
    }

    /// Fires the deferred queue interrupts due at `now`; returns the next deadline (the ITR
    /// timer's callback).
    fn expire_itr(&self, now: Instant) -> Option<Instant> {
        let ctx = self.emu.context();
        self.with_core(ctx.as_ref(), |c, io| c.expire_moderation(io, now, false))
    }

    /// Has the ITR timer wake up by `deadline`. Called without the core lock. Should the timer
    /// thread not start, nothing is held back: what is pending fires now.
    fn schedule_itr(&self, deadline: Instant) {
        if let Err(e) = self.itr_timer.schedule(deadline) {
            log::warn!("iavf {}: {e}; firing held interrupts now", self.emu.name());
            let ctx = self.emu.context();
            self.with_core(ctx.as_ref(), |c, io| {
                c.expire_moderation(io, Instant::now(), true)
            });
        }
    }

    /// "link_up" changed in the object model (the application set it).
    fn link_attr_changed(&self) {
        let Ok(AttrValue::Bool(up)) = self.emu.get_attr("link_up") else {
            return;
        };
        let ctx = self.emu.context();
        self.with_core(ctx.as_ref(), |c, io| c.set_link(io, up));
    }
}

/// The PCI function: config space and BAR handlers over the shared state.
#[derive(Debug)]
pub(crate) struct IavfFunction {
    config: ConfigSpace,
    shared: Arc<Shared>,
}

impl IavfFunction {
    /// Mirrors the bus-master bit; turning it on runs the DMA that waited for it.
    fn sync_bus_master(&self, ctx: &DeviceContext) {
        let on = self.config.bus_master();
        let was = self.shared.bus_master.swap(on, Ordering::SeqCst);
        if on && !was {
            self.shared.with_core(Some(ctx), |c, io| c.dma_enabled(io));
        }
    }
}

impl PciFunction for IavfFunction {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match bar {
            0 => self.shared.mmio_read(ctx, offset, data),
            // BAR3 outside the MSI-X table and PBA.
            _ => data.fill(0),
        }
        Ok(())
    }

    fn bar_write(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        if bar == 0 {
            self.shared.mmio_write(ctx, offset, data);
        }
        Ok(())
    }

    fn msix_table(&self) -> Option<&MsixTable> {
        Some(&self.shared.msix)
    }

    fn config_write(&mut self, ctx: &DeviceContext, offset: u64, data: &[u8]) -> Result<(), Errno> {
        default_config_write(self, ctx, offset, data)?;
        self.sync_bus_master(ctx);
        Ok(())
    }

    /// DEVICE_RESET: a function-level reset (config space, MSI-X) and a VF reset.
    fn reset(&mut self, ctx: &DeviceContext) -> Result<(), Errno> {
        default_reset(self);
        self.shared.bus_master.store(false, Ordering::SeqCst);
        self.shared
            .with_core(Some(ctx), |c, io| c.vf_reset(io, true));
        Ok(())
    }

    /// The client left: its memory is gone, so the VF is reset as VFIO resets a released
    /// function (config space is kept for a reconnecting client; the next driver re-initialises).
    fn client_disconnected(&mut self, ctx: &DeviceContext) {
        self.shared
            .with_core(Some(ctx), |c, io| c.vf_reset(io, false));
    }
}

/// A thread-safe handle on a running VF: counters, state, link, and queue interrupts for the
/// data path. Clone it freely.
#[derive(Debug, Clone)]
pub struct IavfHandle {
    shared: Arc<Shared>,
}

impl IavfHandle {
    /// The device's counters now.
    pub fn stats(&self) -> IavfStats {
        self.shared.counters.snapshot()
    }

    /// The VSI's Ethernet counters (the data path adds to them; GET_STATS reports them).
    pub fn vsi_stats(&self) -> &VsiStats {
        &self.shared.vsi_stats
    }

    /// The VF's state now.
    pub fn snapshot(&self) -> IavfSnapshot {
        lock(&self.shared.core).snapshot()
    }

    /// The emudev object model.
    pub fn emu(&self) -> &EmuDev {
        &self.shared.emu
    }

    /// `QTX_TAIL1(q)` and `QRX_TAIL1(q)` as the driver last wrote them (`None` beyond the 16
    /// queues of a VF). A data path taking over a queue reads the RX tail posted before
    /// ENABLE_QUEUES here.
    pub fn queue_tails(&self, q: u16) -> Option<(u32, u32)> {
        lock(&self.shared.core).tails(q)
    }

    /// Records where a data path left queue pair `q`'s TX (`tx`) or RX ring head when it
    /// stopped servicing it, so that the next data path continues there (see
    /// [`IavfHandle::take_queue_head`]). ENABLE_QUEUES and VF resets forget it.
    pub fn park_queue_head(&self, q: u16, tx: bool, head: u32) {
        if let Some(p) = lock(&self.shared.core).vf.parked.get_mut(usize::from(q)) {
            p[usize::from(!tx)] = Some(head);
        }
    }

    /// The ring head parked for queue pair `q`'s TX or RX queue, taken (`None`: start at 0).
    pub fn take_queue_head(&self, q: u16, tx: bool) -> Option<u32> {
        lock(&self.shared.core)
            .vf
            .parked
            .get_mut(usize::from(q))
            .and_then(|p| p[usize::from(!tx)].take())
    }

    /// A handle that does not keep the device alive (for the data path, which the device's
    /// object model owns).
    pub(crate) fn downgrade(&self) -> WeakIavfHandle {
        WeakIavfHandle(Arc::downgrade(&self.shared))
    }

    /// The MSI-X table.
    pub fn msix(&self) -> &MsixTable {
        &self.shared.msix
    }

    /// Sets the link state; a VF with enabled queues gets a LINK_CHANGE event. (Setting the
    /// "link_up" attribute does the same.)
    pub fn set_link(&self, up: bool) {
        let ctx = self.shared.emu.context();
        self.shared
            .with_core(ctx.as_ref(), |c, io| c.set_link(io, up));
    }

    /// Raises queue interrupt `vector` (as CONFIG_IRQ_MAP assigned it) if the driver enabled
    /// it: `DYN_CTLN1(vector - 1).INTENA`, or `DYN_CTL01.INTENA` for vector 0 (else
    /// [`IrqOutcome::Gated`]). For the data path.
    ///
    /// The vector's ITR interval moderates it (see the `itr` module): with an interval of 0 —
    /// the default until the driver programs one — it fires at once; otherwise, within the
    /// interval after the vector last fired, the raise is held ([`IrqOutcome::Deferred`]) or
    /// folded into the one already held ([`IrqOutcome::Coalesced`]), and the held interrupt
    /// fires once, from the device's timer thread, when the interval has passed (dropped if the
    /// vector is no longer enabled then).
    pub fn raise_queue_irq(&self, vector: u16) -> IrqOutcome {
        let ctx = self.shared.emu.context();
        let now = Instant::now();
        let (outcome, deadline) = self
            .shared
            .with_core(ctx.as_ref(), |c, io| c.raise_queue_irq(io, vector, now));
        if let Some(d) = deadline {
            self.shared.schedule_itr(d);
        }
        outcome
    }
}

/// An [`IavfHandle`] that does not keep the device alive.
#[derive(Debug, Clone)]
pub(crate) struct WeakIavfHandle(Weak<Shared>);

impl WeakIavfHandle {
    /// The handle, while the device lives.
    pub(crate) fn upgrade(&self) -> Option<IavfHandle> {
        self.0.upgrade().map(|shared| IavfHandle { shared })
    }
}

/// The emulated AVF VF, ready to hand to a vfio-user server.
pub struct IavfDevice {
    adapter: VfioUserAdapter<PciDevice<IavfFunction>>,
    config: IavfConfig,
    handle: IavfHandle,
    subscription: Option<SubscriptionId>,
}

impl fmt::Debug for IavfDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IavfDevice")
            .field("config", &self.config)
            .field("emu", self.handle.emu())
            .finish_non_exhaustive()
    }
}

pub(super) fn pci_config(cfg: &IavfConfig) -> Result<ConfigSpace, CreateIavfError> {
    let ids = PciIds {
        vendor_id: IAVF_VENDOR_ID,
        device_id: IAVF_DEVICE_ID,
        subsystem_vendor_id: IAVF_SUBSYSTEM_VENDOR_ID,
        subsystem_id: IAVF_SUBSYSTEM_ID,
        revision: IAVF_REVISION,
        class_code: IAVF_CLASS_CODE,
    };
    let mut config = ConfigSpace::new(ConfigKind::Express, &ids, InterruptPin::None);
    config.add_bar(BarSpec::mem64(0, BAR0_SIZE).prefetchable())?;
    config.add_bar(BarSpec::mem64(MSIX_BAR, MSIX_BAR_SIZE).prefetchable())?;
    config.add_pcie(PcieSpec::default(), None)?;
    config.add_msix(
        MsixSpec::new(
            cfg.vectors(),
            MSIX_BAR,
            MSIX_TABLE_OFFSET,
            MSIX_BAR,
            MSIX_PBA_OFFSET,
        ),
        None,
    )?;
    Ok(config)
}

fn emu_model(cfg: &IavfConfig) -> Result<EmuDev, CreateIavfError> {
    let bar0 = if cfg.doorbell_pages {
        let fd = memfd_backing(&format!("{}-bar0", cfg.name), DOORBELL_PAGES_END)
            .map_err(CreateIavfError::DoorbellPages)?;
        let area = |offset| SparseArea {
            offset,
            size: PAGE_SIZE,
        };
        Region::sparse(
            0,
            "bar0",
            BAR0_SIZE,
            fd,
            0,
            vec![area(QTX_TAIL1_BASE), area(QRX_TAIL1_BASE)],
        )
    } else {
        Region::trapped(0, "bar0", BAR0_SIZE)
    };
    let tail_db = |off, kick: &Option<Arc<OwnedFd>>| match kick {
        Some(fd) => Doorbell::mem_kick(0, off, fd.clone()),
        None if cfg.doorbell_pages => Doorbell::mem(0, off),
        None => Doorbell::trapped(0, off),
    };
    let mut b = EmuDev::builder(&cfg.name, "iavf")
        .max_queues(queue_ids::slots(crate::spec::regs::MAX_QUEUE_PAIRS))
        .region(bar0)
        .doorbell(
            queue_ids::ATQ_DOORBELL,
            Doorbell::trapped(0, VF_ATQT1).with_width(4),
        )
        .doorbell(
            queue_ids::ARQ_DOORBELL,
            Doorbell::trapped(0, VF_ARQT1).with_width(4),
        );
    for q in 0..cfg.queues {
        // q < 16: both registers exist.
        if let (Some(tx), Some(rx)) = (qtx_tail(q), qrx_tail(q)) {
            // One kick eventfd for the pair's two tails (the worker serves the pair as one).
            let kick = if cfg.doorbell_kicks {
                let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                    .map_err(|e| CreateIavfError::DoorbellPages(e.into()))?;
                Some(Arc::new(fd))
            } else {
                None
            };
            b = b
                .doorbell(queue_ids::tx_doorbell(q), tail_db(tx, &kick).with_width(4))
                .doorbell(queue_ids::rx_doorbell(q), tail_db(rx, &kick).with_width(4));
        }
    }
    let emu = b
        .attr(
            "mac",
            AttrSpec::read_only(AttrValue::Bytes(cfg.mac.to_vec())).with_check(|v| {
                match v.as_bytes() {
                    Some(b) if b.len() == 6 => Ok(()),
                    _ => Err("a MAC address is 6 bytes".to_string()),
                }
            }),
        )
        .attr(
            "mtu",
            AttrSpec::read_only(AttrValue::U64(u64::from(cfg.mtu))),
        )
        .attr(
            "num_queue_pairs",
            AttrSpec::read_only(AttrValue::U64(u64::from(cfg.queues))),
        )
        .attr("link_up", AttrSpec::read_write(AttrValue::Bool(true)))
        .build()?;
    emu.configure(EmuDevConf::new(queue_ids::slots(cfg.queues)))?;
    emu.start()?;
    Ok(emu)
}

impl IavfDevice {
    /// A VF in its power-on state (RSTAT VFACTIVE, link up), its emudev model configured and
    /// started.
    pub fn new(config: IavfConfig) -> Result<Self, CreateIavfError> {
        config.validate()?;
        let pci = pci_config(&config)?;
        let cap = pci
            .msix_capability()
            .ok_or(CreateIavfError::Layout(ValidateLayoutError::MsixMismatch))?;
        let emu = emu_model(&config)?;
        let mut core = Core::new(config.queues, config.mac, config.mtu);
        if config.doorbell_pages {
            core.set_tail_page(emu.region_map("bar0")?);
        }
        let shared = Arc::new_cyclic(|me: &Weak<Shared>| {
            let me = me.clone();
            Shared {
                emu: emu.clone(),
                msix: MsixTable::new(cap, MsixMaskMode::Auto),
                counters: Counters::default(),
                vsi_stats: VsiStats::default(),
                bus_master: AtomicBool::new(false),
                core: Mutex::new(core),
                opq: Mutex::new(OpQueue::default()),
                // The timer reaches the device weakly: it must not keep it alive.
                itr_timer: ItrTimer::new(move |now| me.upgrade()?.expire_itr(now)),
            }
        });
        let weak = Arc::downgrade(&shared);
        let subscription = emu.subscribe_event(EventSink::callback(move |ev| {
            if let EmuEvent::AttrChanged { name } = ev {
                if name == "link_up" {
                    if let Some(s) = weak.upgrade() {
                        s.link_attr_changed();
                    }
                }
            }
        }))?;
        let pci = PciDevice::new(IavfFunction {
            config: pci,
            shared: shared.clone(),
        });
        pci.validate()?;
        log::debug!(
            "iavf {}: {} queue pairs, mac {}, mtu {}",
            config.name,
            config.queues,
            format_mac(&config.mac),
            config.mtu
        );
        Ok(IavfDevice {
            adapter: VfioUserAdapter::new(emu, pci),
            config,
            handle: IavfHandle { shared },
            subscription: Some(subscription),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &IavfConfig {
        &self.config
    }

    /// A handle for other threads.
    pub fn handle(&self) -> IavfHandle {
        self.handle.clone()
    }

    /// The emudev object model.
    pub fn emu(&self) -> &EmuDev {
        self.adapter.emu()
    }

    /// The PCI config space now.
    pub fn pci_config(&self) -> &ConfigSpace {
        &self.adapter.inner().function().config
    }

    /// The device's counters now.
    pub fn stats(&self) -> IavfStats {
        self.handle.stats()
    }

    /// The VF's state now.
    pub fn snapshot(&self) -> IavfSnapshot {
        self.handle.snapshot()
    }

    /// Binds a vfio-user server for this device on `path` and binds the server's DMA and IRQ
    /// tables to the object model right away.
    pub fn serve(
        self,
        path: impl AsRef<Path>,
        config: ServerConfig,
    ) -> Result<Server<IavfDevice>, ServerBindError> {
        let emu = self.emu().clone();
        let server = Server::bind(path, self, config)?;
        emu.bind_context(server.context());
        Ok(server)
    }
}

impl Drop for IavfDevice {
    fn drop(&mut self) {
        if let Some(id) = self.subscription.take() {
            // A closed device has no subscriptions left to remove.
            let _ = self.adapter.emu().unsubscribe_event(id);
        }
    }
}

emudev_vfio_user::delegate_device!(IavfDevice => adapter);
