//! [`EmuDev`]: one emulated device's object model and its operations.
//!
//! An `EmuDev` is a cheap, cloneable, `Send + Sync` handle. The device logic keeps one (to
//! configure queues from its control plane), the application keeps one (lifecycle,
//! attributes, providers), and the vfio-user adapter keeps one (to turn transport callbacks
//! into events). Operations come in the groups of the emudev seed:
//!
//! | group | operations |
//! |---|---|
//! | lifecycle | [`configure`](EmuDev::configure), [`start`](EmuDev::start), [`stop`](EmuDev::stop), [`close`](EmuDev::close) |
//! | notify | [`subscribe_event`](EmuDev::subscribe_event), [`unsubscribe_event`](EmuDev::unsubscribe_event) |
//! | region | [`region_map`](EmuDev::region_map), [`get_attr`](EmuDev::get_attr), [`set_attr`](EmuDev::set_attr) |
//! | queue | [`get_queue_info`](EmuDev::get_queue_info), [`get_irq_info`](EmuDev::get_irq_info), [`get_db_info`](EmuDev::get_db_info) |
//! | DMA | [`get_mem_table`](EmuDev::get_mem_table) |
//! | control plane | [`configure_queue`](EmuDev::configure_queue), [`clear_queue`](EmuDev::clear_queue), [`configure_doorbell`](EmuDev::configure_doorbell), [`update_attr`](EmuDev::update_attr) |
//! | provider | [`attach_provider`](EmuDev::attach_provider), [`detach_provider`](EmuDev::detach_provider) |
//!
//! The lifecycle is a state machine; anything else is a [`LifecycleError::IllegalTransition`]:
//!
//! ```text
//!   Created ──configure──▶ Configured ──start──▶ Started ──stop──▶ Stopped
//!                            ▲   │configure         ▲                │ │
//!                            │   ▼                  └──────start─────┘ │
//!                            └──────────────configure──────────────────┘
//!   close: from any state but Closed ──▶ Closed (a started device is stopped first)
//! ```
//!
//! Order of effects for every operation: the state changes, then the attached provider is
//! brought in line (queues made ready or stopped), then the events are emitted. So a
//! subscriber that hears `QueueConfigured` finds the provider already servicing the queue.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, ThreadId};

use emudev_dma::DmaTable;
use emudev_vfio_user::irq::MSIX;
use emudev_vfio_user::{DeviceContext, Errno, IoEventFd, RegionInfo};

use crate::attr::{AttrSpec, AttrStore, AttrValue};
use crate::doorbell::{value_of, Doorbell, DoorbellId, DoorbellInfo, DoorbellKind, DoorbellMem};
use crate::error::{
    AttrError, BuildError, DoorbellError, IrqError, LifecycleError, MemTableError, NotifyError,
    ProviderError, QueueError, RegionError,
};
use crate::event::{EmuEvent, EventSink, Notifier, SubscriptionId};
use crate::provider::{
    ControlPlaneTable, DataPathProvider, DeviceView, MemTableView, ProviderKind,
};
use crate::queue::{IovaRange, QueueConfig, QueueId, QueueInfo, QueuePath};
use crate::region::{Region, RegionMapping};

/// Lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DevState {
    /// Built, never configured.
    Created,
    /// Configured, not running.
    Configured,
    /// Running: queues are serviced.
    Started,
    /// Stopped after running; can be started again or reconfigured.
    Stopped,
    /// Closed for good.
    Closed,
}

impl fmt::Display for DevState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DevState::Created => "created",
            DevState::Configured => "configured",
            DevState::Started => "started",
            DevState::Stopped => "stopped",
            DevState::Closed => "closed",
        })
    }
}

/// A lifecycle operation (for [`LifecycleError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LifecycleOp {
    /// `configure`.
    Configure,
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `close`.
    Close,
}

impl fmt::Display for LifecycleOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LifecycleOp::Configure => "configure",
            LifecycleOp::Start => "start",
            LifecycleOp::Stop => "stop",
            LifecycleOp::Close => "close",
        })
    }
}

/// What `configure` sets: how many queue slots are enabled and initial attribute values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuDevConf {
    /// Queue slots `0..queues` may be configured (1..=max_queues).
    pub queues: u32,
    /// Attribute values to set (read-only ones included), applied all or nothing.
    pub attrs: Vec<(String, AttrValue)>,
}

impl EmuDevConf {
    /// `queues` slots, no attribute changes.
    pub fn new(queues: u32) -> Self {
        EmuDevConf {
            queues,
            attrs: Vec::new(),
        }
    }

    /// Adds an attribute value.
    pub fn with_attr(mut self, name: &str, value: AttrValue) -> Self {
        self.attrs.push((name.to_string(), value));
        self
    }
}

/// What `get_dev_info` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuDevInfo {
    /// Device name ("emu_iavf0").
    pub name: String,
    /// Device type ("iavf").
    pub dev_type: String,
    /// Most queue slots.
    pub max_queues: u32,
    /// The vfio IRQ index queue interrupt vectors belong to (MSI-X by default).
    pub irq_index: u32,
}

/// What `get_irq_info` reports for one vector of the queue IRQ index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqVectorInfo {
    /// vfio IRQ index.
    pub index: u32,
    /// Vector.
    pub vector: u32,
    /// The client bound an eventfd to it.
    pub bound: bool,
    /// Masked.
    pub masked: bool,
    /// Fired while masked; delivered on unmask.
    pub pending: bool,
}

/// Builds an [`EmuDev`]: the fixed layout (regions), initial doorbells and attributes.
#[derive(Debug)]
pub struct EmuDevBuilder {
    name: String,
    dev_type: String,
    max_queues: u32,
    irq_index: u32,
    regions: Vec<Region>,
    doorbells: Vec<(DoorbellId, Doorbell)>,
    attrs: Vec<(String, AttrSpec)>,
}

impl EmuDevBuilder {
    /// Most queue slots (default 1).
    pub fn max_queues(mut self, n: u32) -> Self {
        self.max_queues = n;
        self
    }

    /// The vfio IRQ index of queue interrupts (default MSI-X).
    pub fn irq_index(mut self, index: u32) -> Self {
        self.irq_index = index;
        self
    }

    /// Adds a region.
    pub fn region(mut self, region: Region) -> Self {
        self.regions.push(region);
        self
    }

    /// Adds a doorbell.
    pub fn doorbell(mut self, id: DoorbellId, db: Doorbell) -> Self {
        self.doorbells.push((id, db));
        self
    }

    /// Declares an attribute.
    pub fn attr(mut self, name: &str, spec: AttrSpec) -> Self {
        self.attrs.push((name.to_string(), spec));
        self
    }

    /// Checks the layout and creates the device (state `Created`).
    pub fn build(self) -> Result<EmuDev, BuildError> {
        if self.max_queues == 0 {
            return Err(BuildError::NoQueues);
        }
        let mut regions: Vec<Region> = Vec::with_capacity(self.regions.len());
        for r in self.regions {
            r.validate()?;
            if regions.iter().any(|o| o.index == r.index) {
                return Err(BuildError::DuplicateRegionIndex(r.index));
            }
            if regions.iter().any(|o| o.name == r.name) {
                return Err(BuildError::DuplicateRegionName(r.name));
            }
            regions.push(r);
        }
        regions.sort_by_key(|r| r.index);
        let mut attrs = AttrStore::default();
        for (name, spec) in self.attrs {
            attrs.declare(&name, spec)?;
        }
        let mut core = Core {
            state: DevState::Created,
            queue_count: 0,
            queues: BTreeMap::new(),
            doorbells: BTreeMap::new(),
        };
        for (id, db) in self.doorbells {
            check_doorbell(&regions, &core, id, &db)
                .map_err(|source| BuildError::Doorbell { id, source })?;
            core.doorbells.insert(id, db);
        }
        let inner = Inner {
            info: EmuDevInfo {
                name: self.name,
                dev_type: self.dev_type,
                max_queues: self.max_queues,
                irq_index: self.irq_index,
            },
            regions: regions
                .into_iter()
                .map(|region| RegionSlot {
                    region,
                    mapping: Mutex::new(None),
                })
                .collect(),
            core: Mutex::new(core),
            attrs: Mutex::new(attrs),
            closed: AtomicBool::new(false),
            ctx: RwLock::new(None),
            notifier: Notifier::default(),
            provider: Mutex::new(None),
            provider_kind: Mutex::new(None),
            provider_thread: Mutex::new(None),
        };
        Ok(EmuDev {
            inner: Arc::new(inner),
        })
    }
}

#[derive(Debug)]
struct RegionSlot {
    region: Region,
    /// The device-side mapping, made on the first `region_map` and shared afterwards.
    mapping: Mutex<Option<RegionMapping>>,
}

#[derive(Debug)]
struct Core {
    state: DevState,
    /// Queue slots enabled by `configure`.
    queue_count: u32,
    queues: BTreeMap<QueueId, QueueInfo>,
    doorbells: BTreeMap<DoorbellId, Doorbell>,
}

impl Core {
    fn queue_of(&self, db: DoorbellId) -> Option<QueueId> {
        self.queues
            .values()
            .find(|q| q.doorbell == db)
            .map(|q| q.id)
    }
}

struct Attached {
    provider: Box<dyn DataPathProvider>,
    /// The queues the provider was last told are ready, as it was told.
    told: BTreeMap<QueueId, QueueInfo>,
}

/// The shared state behind [`EmuDev`] handles.
///
/// Lock order: `provider` → `core` → `attrs`; `ctx`, `provider_kind`, `provider_thread`,
/// region mappings and the notifier are leaves. No lock is held while a subscriber runs; only
/// `provider` is held while the provider runs.
pub(crate) struct Inner {
    info: EmuDevInfo,
    regions: Vec<RegionSlot>,
    core: Mutex<Core>,
    attrs: Mutex<AttrStore>,
    closed: AtomicBool,
    ctx: RwLock<Option<DeviceContext>>,
    notifier: Notifier,
    provider: Mutex<Option<Attached>>,
    provider_kind: Mutex<Option<ProviderKind>>,
    /// The thread running a provider callback right now, if any.
    provider_thread: Mutex<Option<ThreadId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the current thread as inside a provider callback while alive.
struct ProviderCall<'a>(&'a Mutex<Option<ThreadId>>);

impl<'a> ProviderCall<'a> {
    fn enter(slot: &'a Mutex<Option<ThreadId>>) -> Self {
        *lock(slot) = Some(thread::current().id());
        ProviderCall(slot)
    }
}

impl Drop for ProviderCall<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

/// Runs a provider callback; a panic is logged and reported as `false`.
fn guarded(what: &str, f: impl FnOnce()) -> bool {
    let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
    if !ok {
        log::error!("data-path provider panicked in {what}");
    }
    ok
}

/// Checks a doorbell declaration against the layout and the other doorbells.
fn check_doorbell(
    regions: &[Region],
    core: &Core,
    id: DoorbellId,
    db: &Doorbell,
) -> Result<(), DoorbellError> {
    if !matches!(db.width, 1 | 2 | 4 | 8) {
        return Err(DoorbellError::BadWidth(db.width));
    }
    let region = regions
        .iter()
        .find(|r| r.index == db.region)
        .ok_or(DoorbellError::UnknownRegion(db.region))?;
    if !db.offset.is_multiple_of(u64::from(db.width)) {
        return Err(DoorbellError::Misaligned {
            offset: db.offset,
            width: db.width,
        });
    }
    let end = db.end().filter(|&e| e <= region.size);
    let Some(end) = end else {
        return Err(DoorbellError::OutOfRegion {
            region: db.region,
            offset: db.offset,
            size: region.size,
        });
    };
    if !region.writable {
        return Err(DoorbellError::ReadOnlyRegion(db.region));
    }
    let width = u64::from(db.width);
    match db.kind {
        DoorbellKind::Mem | DoorbellKind::MemKick { .. }
            if !region.is_mmapped(db.offset, width) =>
        {
            return Err(DoorbellError::NotMmapped)
        }
        DoorbellKind::Trapped | DoorbellKind::EventFd { .. }
            if region.touches_mmap(db.offset, width) =>
        {
            return Err(DoorbellError::Mmapped(db.kind.name()));
        }
        _ => {}
    }
    for (other_id, other) in &core.doorbells {
        let other_end = other.offset.saturating_add(u64::from(other.width));
        if *other_id != id
            && other.region == db.region
            && db.offset < other_end
            && other.offset < end
        {
            return Err(DoorbellError::Overlaps(*other_id));
        }
    }
    if let Some(q) = core.queue_of(id) {
        return Err(DoorbellError::InUse(q));
    }
    Ok(())
}

/// An emulated device: a cloneable handle to its shared state.
#[derive(Clone)]
pub struct EmuDev {
    inner: Arc<Inner>,
}

impl fmt::Debug for EmuDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmuDev")
            .field("name", &self.inner.info.name)
            .field("state", &self.state())
            .finish()
    }
}

impl EmuDev {
    /// Starts building device `name` of type `dev_type`.
    pub fn builder(name: &str, dev_type: &str) -> EmuDevBuilder {
        EmuDevBuilder {
            name: name.to_string(),
            dev_type: dev_type.to_string(),
            max_queues: 1,
            irq_index: MSIX,
            regions: Vec::new(),
            doorbells: Vec::new(),
            attrs: Vec::new(),
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        EmuDev { inner }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.inner.core)
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn emit(&self, events: impl IntoIterator<Item = EmuEvent>) {
        self.inner.notifier.emit(events);
    }

    // ----- info --------------------------------------------------------------------------------

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// `get_dev_info`.
    pub fn get_dev_info(&self) -> EmuDevInfo {
        self.inner.info.clone()
    }

    /// The lifecycle state.
    pub fn state(&self) -> DevState {
        self.core().state
    }

    // ----- lifecycle ---------------------------------------------------------------------------

    /// `configure`: Created, Configured or Stopped → Configured. Enables queue slots
    /// `0..conf.queues` (queues beyond are cleared) and sets the given attributes, all or
    /// nothing.
    pub fn configure(&self, conf: EmuDevConf) -> Result<(), LifecycleError> {
        let mut events = Vec::new();
        {
            let mut core = self.core();
            if !matches!(
                core.state,
                DevState::Created | DevState::Configured | DevState::Stopped
            ) {
                return Err(LifecycleError::IllegalTransition {
                    op: LifecycleOp::Configure,
                    state: core.state,
                });
            }
            if conf.queues == 0 {
                return Err(LifecycleError::NoQueues);
            }
            if conf.queues > self.inner.info.max_queues {
                return Err(LifecycleError::TooManyQueues {
                    requested: conf.queues,
                    max: self.inner.info.max_queues,
                });
            }
            let mut attrs = lock(&self.inner.attrs);
            for (name, value) in &conf.attrs {
                attrs.check(name, value, true)?;
            }
            for (name, value) in conf.attrs {
                if attrs.set(&name, value, true)? {
                    events.push(EmuEvent::AttrChanged { name });
                }
            }
            let gone: Vec<QueueId> = core
                .queues
                .range(QueueId(conf.queues)..)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                core.queues.remove(&id);
                events.push(EmuEvent::QueueCleared { queue: id });
            }
            core.queue_count = conf.queues;
            core.state = DevState::Configured;
        }
        events.push(EmuEvent::Configured);
        self.sync_provider();
        self.emit(events);
        Ok(())
    }

    fn transition(
        &self,
        op: LifecycleOp,
        from: &[DevState],
        to: DevState,
    ) -> Result<(), LifecycleError> {
        {
            let mut core = self.core();
            if !from.contains(&core.state) {
                return Err(LifecycleError::IllegalTransition {
                    op,
                    state: core.state,
                });
            }
            core.state = to;
        }
        self.sync_provider();
        Ok(())
    }

    /// `start`: Configured or Stopped → Started. Configured queues become ready.
    pub fn start(&self) -> Result<(), LifecycleError> {
        self.transition(
            LifecycleOp::Start,
            &[DevState::Configured, DevState::Stopped],
            DevState::Started,
        )?;
        self.emit([EmuEvent::Started]);
        Ok(())
    }

    /// `stop`: Started → Stopped. The provider stops every queue.
    pub fn stop(&self) -> Result<(), LifecycleError> {
        self.transition(LifecycleOp::Stop, &[DevState::Started], DevState::Stopped)?;
        self.emit([EmuEvent::Stopped]);
        Ok(())
    }

    /// `close`: any state but Closed → Closed. Stops a started device, detaches the provider,
    /// and delivers `Closed` as the last event; most operations fail afterwards.
    pub fn close(&self) -> Result<(), LifecycleError> {
        if self.in_provider_callback() {
            // Detaching needs the provider lock this thread holds.
            return Err(LifecycleError::IllegalTransition {
                op: LifecycleOp::Close,
                state: self.state(),
            });
        }
        let was_started = {
            let mut core = self.core();
            if core.state == DevState::Closed {
                return Err(LifecycleError::IllegalTransition {
                    op: LifecycleOp::Close,
                    state: DevState::Closed,
                });
            }
            let was = core.state == DevState::Started;
            core.state = DevState::Closed;
            self.inner.closed.store(true, Ordering::SeqCst);
            was
        };
        let detached = self.take_provider().is_some();
        let mut events = Vec::new();
        if was_started {
            events.push(EmuEvent::Stopped);
        }
        if detached {
            events.push(EmuEvent::ProviderDetached);
        }
        events.push(EmuEvent::Closed);
        self.emit(events);
        Ok(())
    }

    // ----- notify ------------------------------------------------------------------------------

    /// `subscribe_event`: `sink` gets every later event (see the `event` module doc for the rules).
    pub fn subscribe_event(&self, sink: EventSink) -> Result<SubscriptionId, NotifyError> {
        if self.is_closed() {
            return Err(NotifyError::Closed);
        }
        self.inner
            .notifier
            .subscribe(sink)
            .ok_or(NotifyError::Closed)
    }

    /// Subscribes a new channel and returns its receiver.
    pub fn subscribe_channel(&self) -> Result<(SubscriptionId, Receiver<EmuEvent>), NotifyError> {
        let (tx, rx) = channel();
        Ok((self.subscribe_event(EventSink::Channel(tx))?, rx))
    }

    /// `unsubscribe_event`. An event being delivered on another thread at this moment may
    /// still reach the sink; none emitted afterwards does.
    pub fn unsubscribe_event(&self, id: SubscriptionId) -> Result<(), NotifyError> {
        if self.inner.notifier.unsubscribe(id) {
            Ok(())
        } else {
            Err(NotifyError::UnknownSubscription(id))
        }
    }

    // ----- regions and attributes --------------------------------------------------------------

    /// The layout, sorted by index.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.inner.regions.iter().map(|s| &s.region)
    }

    /// Region `index` of the layout.
    pub fn region(&self, index: u32) -> Option<&Region> {
        self.regions().find(|r| r.index == index)
    }

    /// `region_map`: maps the mmappable areas of region `name` into this process (once; later
    /// calls share the mapping) and returns where they are.
    pub fn region_map(&self, name: &str) -> Result<RegionMapping, RegionError> {
        if self.is_closed() {
            return Err(RegionError::Closed);
        }
        let slot = self
            .inner
            .regions
            .iter()
            .find(|s| s.region.name == name)
            .ok_or_else(|| RegionError::Unknown(name.to_string()))?;
        let Some((_, file_offset)) = slot.region.backing() else {
            return Err(RegionError::NotMappable(name.to_string()));
        };
        let mut cached = lock(&slot.mapping);
        if let Some(m) = cached.as_ref() {
            return Ok(m.clone());
        }
        let areas = slot.region.map().map_err(|source| RegionError::Map {
            name: name.to_string(),
            source,
        })?;
        let m = RegionMapping {
            index: slot.region.index,
            name: name.to_string(),
            size: slot.region.size,
            file_offset,
            areas,
        };
        *cached = Some(m.clone());
        Ok(m)
    }

    /// Region `index` as `DEVICE_GET_REGION_INFO` reports it; `None` if not in the layout.
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.region(index).map(Region::to_region_info)
    }

    /// The ioeventfds of region `index` (its eventfd doorbells) for `DEVICE_GET_REGION_IO_FDS`;
    /// `None` when there are none.
    pub fn region_io_fds(&self, index: u32) -> Option<Vec<IoEventFd>> {
        let core = self.core();
        let fds: Vec<IoEventFd> = core
            .doorbells
            .values()
            .filter(|d| d.region == index)
            .filter_map(|d| match &d.kind {
                DoorbellKind::EventFd { fd, datamatch } => Some(IoEventFd {
                    offset: d.offset,
                    size: u64::from(d.width),
                    fd: fd.clone(),
                    flags: u32::from(datamatch.is_some()),
                    datamatch: datamatch.unwrap_or(0),
                }),
                DoorbellKind::MemKick { fd } => Some(IoEventFd {
                    offset: d.offset,
                    size: u64::from(d.width),
                    fd: fd.clone(),
                    flags: 0,
                    datamatch: 0,
                }),
                _ => None,
            })
            .collect();
        (!fds.is_empty()).then_some(fds)
    }

    /// `get_attr`.
    pub fn get_attr(&self, name: &str) -> Result<AttrValue, AttrError> {
        if self.is_closed() {
            return Err(AttrError::Closed);
        }
        lock(&self.inner.attrs).get(name)
    }

    /// `set_attr` (application side): refuses read-only attributes. Emits `AttrChanged` when
    /// the value changes.
    pub fn set_attr(&self, name: &str, value: AttrValue) -> Result<(), AttrError> {
        self.set_attr_as(name, value, false)
    }

    /// Device side: like `set_attr`, but read-only attributes may change too.
    pub fn update_attr(&self, name: &str, value: AttrValue) -> Result<(), AttrError> {
        self.set_attr_as(name, value, true)
    }

    fn set_attr_as(&self, name: &str, value: AttrValue, privileged: bool) -> Result<(), AttrError> {
        if self.is_closed() {
            return Err(AttrError::Closed);
        }
        let changed = lock(&self.inner.attrs).set(name, value, privileged)?;
        if changed {
            self.emit([EmuEvent::AttrChanged {
                name: name.to_string(),
            }]);
        }
        Ok(())
    }

    /// Every attribute and its value, by name.
    pub fn attrs(&self) -> Vec<(String, AttrValue)> {
        lock(&self.inner.attrs).all()
    }

    // ----- doorbells ---------------------------------------------------------------------------

    /// Declares or changes doorbell `id` (not while a configured queue uses it).
    pub fn configure_doorbell(&self, id: DoorbellId, db: Doorbell) -> Result<(), DoorbellError> {
        if self.is_closed() {
            return Err(DoorbellError::Closed);
        }
        {
            let mut core = self.core();
            let regions: Vec<Region> = self.regions().cloned().collect();
            check_doorbell(&regions, &core, id, &db)?;
            core.doorbells.insert(id, db);
        }
        self.emit([EmuEvent::DoorbellConfigured { doorbell: id }]);
        Ok(())
    }

    /// Every doorbell id.
    pub fn doorbells(&self) -> Vec<DoorbellId> {
        self.core().doorbells.keys().copied().collect()
    }

    /// `get_db_info`: where the doorbell is, how it is noticed, which queue uses it, and for a
    /// mem doorbell the word to poll.
    pub fn get_db_info(&self, id: DoorbellId) -> Result<DoorbellInfo, DoorbellError> {
        if self.is_closed() {
            return Err(DoorbellError::Closed);
        }
        let (db, queue) = {
            let core = self.core();
            let db = core
                .doorbells
                .get(&id)
                .cloned()
                .ok_or(DoorbellError::Unknown(id))?;
            (db, core.queue_of(id))
        };
        let mem = match db.kind {
            DoorbellKind::Mem | DoorbellKind::MemKick { .. } => {
                let region = self
                    .region(db.region)
                    .ok_or(DoorbellError::UnknownRegion(db.region))?;
                let mapping = self.region_map(&region.name).map_err(DoorbellError::Map)?;
                // Checked at declaration: the word lies inside one mmappable area.
                let (mem, offset) = mapping
                    .area_at(db.offset, u64::from(db.width))
                    .ok_or(DoorbellError::NotMmapped)?;
                Some(DoorbellMem::new(mem.clone(), offset, db.width))
            }
            _ => None,
        };
        Ok(DoorbellInfo {
            id,
            region: db.region,
            offset: db.offset,
            width: db.width,
            kind: db.kind,
            queue,
            mem,
        })
    }

    // ----- queues ------------------------------------------------------------------------------

    /// The device's control plane sets up queue `id` (allowed once the device is configured).
    /// Reconfiguring a queue replaces it (`QueueCleared` then `QueueConfigured`; identical
    /// settings change nothing). The ring is not required to be mapped yet.
    pub fn configure_queue(
        &self,
        id: QueueId,
        config: QueueConfig,
    ) -> Result<QueueInfo, QueueError> {
        let info = QueueInfo::new(id, config);
        let irq_count = self
            .context()
            .map(|c| c.irqs.count(self.inner.info.irq_index));
        let events = {
            let mut core = self.core();
            match core.state {
                DevState::Closed => return Err(QueueError::Closed),
                DevState::Created => return Err(QueueError::WrongState(DevState::Created)),
                _ => {}
            }
            if id.0 >= core.queue_count {
                return Err(QueueError::NoSuchQueue {
                    queue: id,
                    count: core.queue_count,
                });
            }
            if info.size == 0 || info.entry_size == 0 {
                return Err(QueueError::EmptyRing);
            }
            let bytes = u64::from(info.size) * u64::from(info.entry_size);
            if info.base.checked_add(bytes).is_none() {
                return Err(QueueError::RingOverflow {
                    base: info.base,
                    size: info.size,
                    entry_size: info.entry_size,
                });
            }
            if !core.doorbells.contains_key(&info.doorbell) {
                return Err(QueueError::UnknownDoorbell(info.doorbell));
            }
            if let Some(other) = core.queue_of(info.doorbell).filter(|&q| q != id) {
                return Err(QueueError::DoorbellInUse {
                    doorbell: info.doorbell,
                    queue: other,
                });
            }
            if let (Some(vector), Some(count)) = (info.irq_vector, irq_count) {
                if vector >= count {
                    return Err(QueueError::NoSuchVector { vector, count });
                }
            }
            match core.queues.insert(id, info.clone()) {
                Some(old) if old == info => Vec::new(),
                Some(_) => vec![
                    EmuEvent::QueueCleared { queue: id },
                    EmuEvent::QueueConfigured { queue: id },
                ],
                None => vec![EmuEvent::QueueConfigured { queue: id }],
            }
        };
        self.sync_provider();
        self.emit(events);
        Ok(info)
    }

    /// Removes queue `id`'s configuration (the provider stops it first).
    pub fn clear_queue(&self, id: QueueId) -> Result<(), QueueError> {
        {
            let mut core = self.core();
            if core.state == DevState::Closed {
                return Err(QueueError::Closed);
            }
            core.queues
                .remove(&id)
                .ok_or(QueueError::NotConfigured(id))?;
        }
        self.sync_provider();
        self.emit([EmuEvent::QueueCleared { queue: id }]);
        Ok(())
    }

    /// `get_queue_info`.
    pub fn get_queue_info(&self, id: QueueId) -> Result<QueueInfo, QueueError> {
        let core = self.core();
        if core.state == DevState::Closed {
            return Err(QueueError::Closed);
        }
        core.queues
            .get(&id)
            .cloned()
            .ok_or(QueueError::NotConfigured(id))
    }

    /// Every configured queue, by id.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.core().queues.values().cloned().collect()
    }

    /// The rings of the configured control-path queues.
    pub(crate) fn control_ranges(&self) -> Vec<IovaRange> {
        self.core()
            .queues
            .values()
            .filter(|q| q.path == QueuePath::Control)
            .map(QueueInfo::ring)
            .collect()
    }

    // ----- interrupts --------------------------------------------------------------------------

    /// `get_irq_info`: the client's setup of `vector` of the queue IRQ index.
    pub fn get_irq_info(&self, vector: u32) -> Result<IrqVectorInfo, IrqError> {
        let ctx = self.context().ok_or(IrqError::NoContext)?;
        let index = self.inner.info.irq_index;
        let s = ctx
            .irqs
            .state(index, vector)
            .ok_or(IrqError::NoSuchVector { index, vector })?;
        Ok(IrqVectorInfo {
            index,
            vector,
            bound: s.has_eventfd,
            masked: s.masked,
            pending: s.pending,
        })
    }

    /// Raises `vector` of the queue IRQ index: `Ok(true)` signalled, `Ok(false)` masked (left
    /// pending). Callable from any thread.
    pub fn trigger_irq(&self, vector: u32) -> Result<bool, IrqError> {
        let ctx = self.context().ok_or(IrqError::NoContext)?;
        let index = self.inner.info.irq_index;
        ctx.irqs
            .trigger(index, vector)
            .map_err(|errno| match errno {
                Errno::INVAL => IrqError::NoSuchVector { index, vector },
                Errno::NOENT => IrqError::NotBound { index, vector },
                errno => IrqError::Signal {
                    index,
                    vector,
                    errno,
                },
            })
    }

    // ----- DMA ---------------------------------------------------------------------------------

    /// Binds the transport's DMA and IRQ tables (the vfio-user adapter does this; an
    /// application can do it early with `Server::context()`).
    pub fn bind_context(&self, ctx: DeviceContext) {
        let mut slot = self
            .inner
            .ctx
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let same = slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.dma, &ctx.dma) && Arc::ptr_eq(&c.irqs, &ctx.irqs));
        if !same {
            *slot = Some(ctx);
        }
    }

    /// The bound DMA and IRQ tables, if any.
    pub fn context(&self) -> Option<DeviceContext> {
        self.inner
            .ctx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `get_mem_table`: the whole DMA table.
    pub fn get_mem_table(&self) -> Result<Arc<DmaTable>, MemTableError> {
        if self.is_closed() {
            return Err(MemTableError::Closed);
        }
        self.context()
            .map(|c| c.dma)
            .ok_or(MemTableError::NoContext)
    }

    // ----- providers ---------------------------------------------------------------------------

    fn in_provider_callback(&self) -> bool {
        *lock(&self.inner.provider_thread) == Some(thread::current().id())
    }

    /// The kind of the attached provider, if any.
    pub fn provider_kind(&self) -> Option<ProviderKind> {
        *lock(&self.inner.provider_kind)
    }

    /// Attaches a data-path provider. It gets a [`DeviceView`] whose memory view depends on its
    /// kind, then `queue_ready` for every queue already ready.
    pub fn attach_provider(
        &self,
        mut provider: Box<dyn DataPathProvider>,
    ) -> Result<(), ProviderError> {
        if self.in_provider_callback() {
            return Err(ProviderError::Reentrant);
        }
        let dma = self.context().ok_or(ProviderError::NoContext)?.dma;
        let kind = provider.kind();
        let weak = Arc::downgrade(&self.inner);
        let mem = match kind {
            ProviderKind::Software => MemTableView::Full(dma),
            ProviderKind::Hardware => {
                MemTableView::ControlPlane(ControlPlaneTable::new(dma, weak.clone()))
            }
        };
        let view = DeviceView::new(weak, self.inner.info.name.clone(), kind, mem);
        {
            let mut slot = lock(&self.inner.provider);
            // Checked under the provider lock: `close` sets the flag before taking it.
            if self.is_closed() {
                return Err(ProviderError::Closed);
            }
            if slot.is_some() {
                return Err(ProviderError::AlreadyAttached(
                    self.provider_kind().unwrap_or(kind),
                ));
            }
            let mut result = Err(ProviderError::Rejected(
                "the provider panicked in attach".into(),
            ));
            {
                let _call = ProviderCall::enter(&self.inner.provider_thread);
                guarded("attach", || result = provider.attach(view));
            }
            result?;
            *slot = Some(Attached {
                provider,
                told: BTreeMap::new(),
            });
            *lock(&self.inner.provider_kind) = Some(kind);
        }
        self.sync_provider();
        self.emit([EmuEvent::ProviderAttached { kind }]);
        Ok(())
    }

    /// Detaches the provider (stopping its ready queues first) and hands it back.
    pub fn detach_provider(&self) -> Result<Box<dyn DataPathProvider>, ProviderError> {
        if self.in_provider_callback() {
            return Err(ProviderError::Reentrant);
        }
        let provider = self.take_provider().ok_or(ProviderError::NotAttached)?;
        self.emit([EmuEvent::ProviderDetached]);
        Ok(provider)
    }

    fn take_provider(&self) -> Option<Box<dyn DataPathProvider>> {
        let mut slot = lock(&self.inner.provider);
        let mut attached = slot.take()?;
        *lock(&self.inner.provider_kind) = None;
        let _call = ProviderCall::enter(&self.inner.provider_thread);
        for q in attached.told.values() {
            guarded("queue_stopped", || attached.provider.queue_stopped(q));
        }
        guarded("detach", || attached.provider.detach());
        Some(attached.provider)
    }

    /// Brings the provider in line with the state: the queues it services are exactly the
    /// configured ones while started (none otherwise). Idempotent; a call from inside a
    /// provider callback is skipped, and the outer call's loop catches up.
    fn sync_provider(&self) {
        if self.in_provider_callback() {
            return;
        }
        let mut slot = lock(&self.inner.provider);
        let Some(attached) = slot.as_mut() else {
            return;
        };
        let _call = ProviderCall::enter(&self.inner.provider_thread);
        loop {
            let want: BTreeMap<QueueId, QueueInfo> = {
                let core = self.core();
                if core.state == DevState::Started {
                    core.queues.clone()
                } else {
                    BTreeMap::new()
                }
            };
            let stops: Vec<QueueInfo> = attached
                .told
                .values()
                .filter(|q| want.get(&q.id) != Some(*q))
                .cloned()
                .collect();
            let readies: Vec<QueueInfo> = want
                .values()
                .filter(|q| attached.told.get(&q.id) != Some(*q))
                .cloned()
                .collect();
            if stops.is_empty() && readies.is_empty() {
                return;
            }
            for q in stops {
                attached.told.remove(&q.id);
                guarded("queue_stopped", || attached.provider.queue_stopped(&q));
            }
            for q in readies {
                attached.told.insert(q.id, q.clone());
                guarded("queue_ready", || attached.provider.queue_ready(&q));
            }
        }
    }

    // ----- hooks for the transport adapter -----------------------------------------------------

    /// Emits a transport event (client, DMA, IRQ).
    pub(crate) fn transport_event(&self, ev: EmuEvent) {
        self.emit([ev]);
    }

    /// The client reset the device: every queue is cleared (the provider stops them), then
    /// `DeviceReset` and one `QueueCleared` per queue are emitted.
    pub(crate) fn device_reset(&self) {
        let cleared: Vec<QueueId> = {
            let mut core = self.core();
            let ids = core.queues.keys().copied().collect();
            core.queues.clear();
            ids
        };
        self.sync_provider();
        let mut events = vec![EmuEvent::DeviceReset];
        events.extend(
            cleared
                .into_iter()
                .map(|queue| EmuEvent::QueueCleared { queue }),
        );
        self.emit(events);
    }

    /// A REGION_WRITE reached the device: if it hit a trapped doorbell of a queue the provider
    /// services, tell the provider.
    pub(crate) fn region_written(&self, region: u32, offset: u64, data: &[u8]) {
        let queue = {
            let core = self.core();
            let hit = core.doorbells.iter().find(|(_, d)| {
                d.region == region && d.offset == offset && matches!(d.kind, DoorbellKind::Trapped)
            });
            match hit.and_then(|(id, _)| core.queue_of(*id)) {
                Some(q) => q,
                None => return,
            }
        };
        if self.in_provider_callback() {
            return;
        }
        let mut slot = lock(&self.inner.provider);
        let Some(attached) = slot.as_mut() else {
            return;
        };
        let Some(q) = attached.told.get(&queue) else {
            return;
        };
        let value = value_of(data);
        let _call = ProviderCall::enter(&self.inner.provider_thread);
        guarded("doorbell_rung", || {
            attached.provider.doorbell_rung(q, value)
        });
    }

    /// Number of subscribers (diagnostics).
    pub fn subscriber_count(&self) -> usize {
        self.inner.notifier.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::memfd_backing;
    use crate::test_device::{self, Call, Recorder, AQ_DOORBELL, DQ_DOORBELL, EV_DOORBELL};
    use emudev_dma::{DmaMapRequest, DmaProt, Iova, SharedMemory};
    use emudev_vfio_user::irq::IrqTable;
    use emudev_vfio_user::SparseArea;
    use std::sync::atomic::AtomicUsize;

    /// A device with a bound context: 4 MSI-X vectors and an empty DMA table.
    fn bound_dev() -> (EmuDev, DeviceContext) {
        let dev = test_device::emu("toy0");
        let ctx = DeviceContext {
            dma: Arc::new(DmaTable::default()),
            irqs: Arc::new(IrqTable::new(&[1, 1, 4, 1, 1])),
        };
        dev.bind_context(ctx.clone());
        (dev, ctx)
    }

    /// Maps `len` bytes of fresh memfd memory at `iova` in `dma`; returns the "client" mapping.
    fn map_memory(dma: &DmaTable, iova: u64, len: u64) -> SharedMemory {
        let (mem, fd) = SharedMemory::memfd("client", len).expect("memfd");
        dma.map(DmaMapRequest {
            iova: Iova(iova),
            size: len,
            prot: DmaProt::RW,
            file_offset: 0,
            fd: Some(fd),
        })
        .expect("dma map");
        mem
    }

    fn aq(base: u64) -> QueueConfig {
        QueueConfig::new(crate::QueueKind::Admin, Iova(base), 16, 32, AQ_DOORBELL).with_irq(0)
    }

    fn dq(base: u64) -> QueueConfig {
        QueueConfig::new(crate::QueueKind::Tx, Iova(base), 64, 16, DQ_DOORBELL).with_irq(1)
    }

    fn drain(rx: &Receiver<EmuEvent>) -> Vec<EmuEvent> {
        rx.try_iter().collect()
    }

    #[test]
    fn lifecycle_transitions_and_illegal_ones() {
        let dev = test_device::emu("toy0");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        assert_eq!(dev.state(), DevState::Created);
        let illegal = |r: Result<(), LifecycleError>, op, state| match r {
            Err(LifecycleError::IllegalTransition { op: o, state: s }) => {
                assert_eq!((o, s), (op, state))
            }
            other => panic!("expected illegal {op} in {state}, got {other:?}"),
        };
        illegal(dev.start(), LifecycleOp::Start, DevState::Created);
        illegal(dev.stop(), LifecycleOp::Stop, DevState::Created);
        assert!(matches!(
            dev.configure(EmuDevConf::new(0)),
            Err(LifecycleError::NoQueues)
        ));
        assert!(matches!(
            dev.configure(EmuDevConf::new(5)),
            Err(LifecycleError::TooManyQueues {
                requested: 5,
                max: 4
            })
        ));
        assert_eq!(dev.state(), DevState::Created);
        dev.configure(EmuDevConf::new(2)).expect("configure");
        dev.configure(EmuDevConf::new(4)).expect("reconfigure");
        illegal(dev.stop(), LifecycleOp::Stop, DevState::Configured);
        dev.start().expect("start");
        illegal(dev.start(), LifecycleOp::Start, DevState::Started);
        illegal(
            dev.configure(EmuDevConf::new(1)),
            LifecycleOp::Configure,
            DevState::Started,
        );
        dev.stop().expect("stop");
        illegal(dev.stop(), LifecycleOp::Stop, DevState::Stopped);
        dev.start().expect("restart");
        dev.stop().expect("stop");
        dev.configure(EmuDevConf::new(1))
            .expect("configure when stopped");
        dev.start().expect("start");
        dev.close().expect("close started");
        assert_eq!(dev.state(), DevState::Closed);
        illegal(dev.close(), LifecycleOp::Close, DevState::Closed);
        illegal(dev.start(), LifecycleOp::Start, DevState::Closed);
        illegal(
            dev.configure(EmuDevConf::new(1)),
            LifecycleOp::Configure,
            DevState::Closed,
        );
        use EmuEvent::*;
        assert_eq!(
            drain(&rx),
            vec![
                Configured, Configured, Started, Stopped, Started, Stopped, Configured, Started,
                Stopped, Closed
            ]
        );
        assert_eq!(dev.subscriber_count(), 0);
        assert!(matches!(dev.subscribe_channel(), Err(NotifyError::Closed)));
        assert!(matches!(dev.get_attr("mtu"), Err(AttrError::Closed)));
        assert!(matches!(dev.region_map("bar2"), Err(RegionError::Closed)));
        assert!(matches!(
            dev.get_db_info(DQ_DOORBELL),
            Err(DoorbellError::Closed)
        ));
        assert_eq!(dev.get_queue_info(QueueId(0)), Err(QueueError::Closed));
        assert_eq!(dev.get_mem_table().err(), Some(MemTableError::Closed));
        assert!(matches!(
            dev.configure_doorbell(DoorbellId(9), Doorbell::trapped(0, 0x100)),
            Err(DoorbellError::Closed)
        ));
    }

    #[test]
    fn close_from_created_emits_only_closed() {
        let dev = test_device::emu("toy0");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        dev.close().expect("close");
        assert_eq!(drain(&rx), vec![EmuEvent::Closed]);
    }

    #[test]
    fn configure_sets_attrs_all_or_nothing() {
        let dev = test_device::emu("toy0");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        let bad = EmuDevConf::new(1)
            .with_attr("mtu", AttrValue::U64(9000))
            .with_attr("link_up", AttrValue::U64(1));
        assert!(matches!(
            dev.configure(bad),
            Err(LifecycleError::Attr(AttrError::TypeMismatch { .. }))
        ));
        assert_eq!(dev.get_attr("mtu"), Ok(AttrValue::U64(1500)));
        assert_eq!(dev.state(), DevState::Created);
        // Read-only attributes may be set by configuration.
        let good = EmuDevConf::new(1)
            .with_attr("mtu", AttrValue::U64(9000))
            .with_attr("mac", AttrValue::Bytes(vec![2, 0, 0, 0, 0, 7]))
            .with_attr("link_up", AttrValue::Bool(false));
        dev.configure(good).expect("configure");
        assert_eq!(
            dev.get_attr("mac"),
            Ok(AttrValue::Bytes(vec![2, 0, 0, 0, 0, 7]))
        );
        // link_up kept its value: no event for it.
        assert_eq!(
            drain(&rx),
            vec![
                EmuEvent::AttrChanged { name: "mtu".into() },
                EmuEvent::AttrChanged { name: "mac".into() },
                EmuEvent::Configured
            ]
        );
    }

    #[test]
    fn attrs_get_set_and_events() {
        let dev = test_device::emu("toy0");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        assert_eq!(dev.get_attr("link_up"), Ok(AttrValue::Bool(false)));
        dev.set_attr("link_up", AttrValue::Bool(true)).expect("set");
        dev.set_attr("link_up", AttrValue::Bool(true))
            .expect("same value");
        assert_eq!(dev.get_attr("link_up"), Ok(AttrValue::Bool(true)));
        assert_eq!(
            dev.set_attr("mac", AttrValue::Bytes(vec![0; 6])),
            Err(AttrError::ReadOnly("mac".into()))
        );
        assert!(matches!(
            dev.set_attr("mtu", AttrValue::U64(20)),
            Err(AttrError::Rejected { .. })
        ));
        assert_eq!(
            dev.set_attr("nope", AttrValue::Bool(true)),
            Err(AttrError::Unknown("nope".into()))
        );
        assert_eq!(dev.get_attr("nope"), Err(AttrError::Unknown("nope".into())));
        dev.update_attr("mac", AttrValue::Bytes(vec![2, 1, 1, 1, 1, 1]))
            .expect("device update");
        assert!(matches!(
            dev.update_attr("mac", AttrValue::Bytes(vec![1])),
            Err(AttrError::Rejected { .. })
        ));
        assert_eq!(
            drain(&rx),
            vec![
                EmuEvent::AttrChanged {
                    name: "link_up".into()
                },
                EmuEvent::AttrChanged { name: "mac".into() }
            ]
        );
        let names: Vec<String> = dev.attrs().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["link_up", "mac", "mtu"]);
    }

    #[test]
    fn queue_configuration_is_validated() {
        let (dev, _ctx) = bound_dev();
        assert_eq!(
            dev.configure_queue(QueueId(0), aq(0x1000)),
            Err(QueueError::WrongState(DevState::Created))
        );
        dev.configure(EmuDevConf::new(2)).expect("configure");
        assert_eq!(
            dev.configure_queue(QueueId(2), aq(0x1000)),
            Err(QueueError::NoSuchQueue {
                queue: QueueId(2),
                count: 2
            })
        );
        let mut empty = aq(0x1000);
        empty.size = 0;
        assert_eq!(
            dev.configure_queue(QueueId(0), empty),
            Err(QueueError::EmptyRing)
        );
        let mut zero_entry = aq(0x1000);
        zero_entry.entry_size = 0;
        assert_eq!(
            dev.configure_queue(QueueId(0), zero_entry),
            Err(QueueError::EmptyRing)
        );
        assert!(matches!(
            dev.configure_queue(QueueId(0), aq(u64::MAX - 16)),
            Err(QueueError::RingOverflow { .. })
        ));
        let mut no_db = aq(0x1000);
        no_db.doorbell = DoorbellId(42);
        assert_eq!(
            dev.configure_queue(QueueId(0), no_db),
            Err(QueueError::UnknownDoorbell(DoorbellId(42)))
        );
        assert_eq!(
            dev.configure_queue(QueueId(0), aq(0x1000).with_irq(4)),
            Err(QueueError::NoSuchVector {
                vector: 4,
                count: 4
            })
        );
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        assert_eq!(
            dev.configure_queue(QueueId(1), aq(0x2000)),
            Err(QueueError::DoorbellInUse {
                doorbell: AQ_DOORBELL,
                queue: QueueId(0)
            })
        );
        assert_eq!(
            dev.get_queue_info(QueueId(1)),
            Err(QueueError::NotConfigured(QueueId(1)))
        );
        assert_eq!(
            dev.clear_queue(QueueId(1)),
            Err(QueueError::NotConfigured(QueueId(1)))
        );
        let q = dev.get_queue_info(QueueId(0)).expect("info");
        assert_eq!(
            (q.base, q.size, q.entry_size, q.doorbell, q.irq_vector),
            (Iova(0x1000), 16, 32, AQ_DOORBELL, Some(0))
        );
        assert_eq!(q.path, QueuePath::Control);
        // A doorbell in use cannot change.
        assert!(matches!(
            dev.configure_doorbell(AQ_DOORBELL, Doorbell::trapped(0, 0x14)),
            Err(DoorbellError::InUse(QueueId(0)))
        ));
        // Shrinking the queue count clears queues beyond it.
        dev.configure_queue(QueueId(1), dq(0x8000)).expect("dq");
        assert_eq!(dev.queues().len(), 2);
        dev.configure(EmuDevConf::new(1)).expect("configure");
        let left: Vec<QueueId> = dev.queues().into_iter().map(|q| q.id).collect();
        assert_eq!(left, vec![QueueId(0)]);
    }

    #[test]
    fn queue_events_in_order() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        dev.configure_queue(QueueId(0), aq(0x1000))
            .expect("same again");
        dev.configure_queue(QueueId(0), aq(0x3000)).expect("moved");
        dev.configure_queue(QueueId(1), dq(0x8000)).expect("dq");
        dev.clear_queue(QueueId(1)).expect("clear");
        dev.device_reset();
        use EmuEvent::*;
        assert_eq!(
            drain(&rx),
            vec![
                QueueConfigured { queue: QueueId(0) },
                QueueCleared { queue: QueueId(0) },
                QueueConfigured { queue: QueueId(0) },
                QueueConfigured { queue: QueueId(1) },
                QueueCleared { queue: QueueId(1) },
                DeviceReset,
                QueueCleared { queue: QueueId(0) },
            ]
        );
        assert!(dev.queues().is_empty());
    }

    #[test]
    fn unsubscribe_stops_delivery() {
        let dev = test_device::emu("toy0");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let id = dev
            .subscribe_event(EventSink::callback(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            }))
            .expect("subscribe");
        dev.set_attr("link_up", AttrValue::Bool(true)).expect("set");
        dev.unsubscribe_event(id).expect("unsubscribe");
        assert_eq!(
            dev.unsubscribe_event(id),
            Err(NotifyError::UnknownSubscription(id))
        );
        dev.set_attr("link_up", AttrValue::Bool(false))
            .expect("set");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn subscribers_may_call_back_into_the_device() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        let d = dev.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        dev.subscribe_event(EventSink::callback(move |e| {
            s.lock().expect("lock").push(e.clone());
            if let EmuEvent::QueueConfigured { queue } = e {
                // Reading state and emitting more events from a callback must not deadlock.
                let info = d.get_queue_info(*queue).expect("queue info");
                d.update_attr("link_up", AttrValue::Bool(info.size > 0))
                    .expect("attr");
            }
        }))
        .expect("subscribe");
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                EmuEvent::QueueConfigured { queue: QueueId(0) },
                EmuEvent::AttrChanged {
                    name: "link_up".into()
                }
            ]
        );
    }

    #[test]
    fn doorbells_of_each_kind() {
        let (dev, _ctx) = bound_dev();
        // Trapped: no memory to poll.
        let t = dev.get_db_info(AQ_DOORBELL).expect("aq db");
        assert!(matches!(t.kind, DoorbellKind::Trapped));
        assert!(t.mem.is_none());
        assert_eq!(
            (t.region, t.offset, t.width, t.queue),
            (0, test_device::AQ_TAIL, 4, None)
        );
        // EventFd: offered through GET_REGION_IO_FDS.
        let e = dev.get_db_info(EV_DOORBELL).expect("ev db");
        assert!(matches!(e.kind, DoorbellKind::EventFd { .. }));
        let fds = dev.region_io_fds(2).expect("io fds");
        assert_eq!(fds.len(), 1);
        assert_eq!(
            (fds[0].offset, fds[0].size, fds[0].flags),
            (test_device::EV_OFFSET, 4, 0)
        );
        assert!(dev.region_io_fds(0).is_none());
        assert!(dev.region_io_fds(9).is_none());
        // Mem: the "client" writes the page through its own mapping of the same memfd.
        let region = dev.region(2).expect("bar2").clone();
        let (fd, file_offset) = region.backing().expect("backing");
        let client =
            SharedMemory::map(&**fd, file_offset, 0x1000, DmaProt::RW).expect("client map");
        let m = dev.get_db_info(DQ_DOORBELL).expect("dq db");
        let mem = m.mem.expect("mem doorbell");
        assert_eq!(mem.read().expect("read"), 0);
        client
            .store_u32(
                test_device::DQ_TAIL,
                0x2a,
                std::sync::atomic::Ordering::Release,
            )
            .expect("store");
        assert_eq!(mem.read().expect("read"), 0x2a);
        // The same mapping backs region_map.
        let rm = dev.region_map("bar2").expect("map");
        assert!(Arc::ptr_eq(&rm.areas[0].mem, mem.memory()));
        assert_eq!(
            dev.get_db_info(DoorbellId(77)).err().map(|e| e.to_string()),
            Some("no doorbell 77".into())
        );
        assert!(matches!(
            dev.region_map("bar0"),
            Err(RegionError::NotMappable(_))
        ));
        assert!(matches!(
            dev.region_map("bar9"),
            Err(RegionError::Unknown(_))
        ));
    }

    #[test]
    fn doorbell_declarations_are_checked() {
        let (dev, _ctx) = bound_dev();
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        let err = |db: Doorbell| {
            dev.configure_doorbell(DoorbellId(10), db)
                .expect_err("should fail")
        };
        assert!(matches!(
            err(Doorbell::trapped(0, 0x100).with_width(3)),
            DoorbellError::BadWidth(3)
        ));
        assert!(matches!(
            err(Doorbell::trapped(5, 0x100)),
            DoorbellError::UnknownRegion(5)
        ));
        assert!(matches!(
            err(Doorbell::trapped(0, 0x102)),
            DoorbellError::Misaligned { .. }
        ));
        assert!(matches!(
            err(Doorbell::trapped(0, 0x1000)),
            DoorbellError::OutOfRegion { .. }
        ));
        assert!(matches!(
            err(Doorbell::trapped(0, u64::MAX - 3)),
            DoorbellError::OutOfRegion { .. }
        ));
        assert!(matches!(
            err(Doorbell::trapped(0, test_device::AQ_TAIL)),
            DoorbellError::Overlaps(AQ_DOORBELL)
        ));
        assert!(matches!(
            err(Doorbell::trapped(2, 0x8)),
            DoorbellError::Mmapped("trapped")
        ));
        let (_, efd) = SharedMemory::memfd("efd", 4096).expect("memfd");
        assert!(matches!(
            err(Doorbell::eventfd(2, 0x0, Arc::new(efd))),
            DoorbellError::Mmapped("eventfd")
        ));
        assert!(matches!(
            err(Doorbell::mem(0, 0x100)),
            DoorbellError::NotMmapped
        ));
        assert!(matches!(
            err(Doorbell::mem(2, 0x1004)),
            DoorbellError::NotMmapped
        ));
        assert!(matches!(
            err(Doorbell::trapped(6, 0x0)),
            DoorbellError::ReadOnlyRegion(6)
        ));
        assert!(drain(&rx).is_empty());
        dev.configure_doorbell(DoorbellId(10), Doorbell::mem(2, 0x8))
            .expect("mem db");
        dev.configure_doorbell(DoorbellId(10), Doorbell::mem(2, 0x10))
            .expect("moved");
        assert_eq!(
            drain(&rx),
            vec![
                EmuEvent::DoorbellConfigured {
                    doorbell: DoorbellId(10)
                },
                EmuEvent::DoorbellConfigured {
                    doorbell: DoorbellId(10)
                }
            ]
        );
        assert_eq!(dev.doorbells().len(), 4);
    }

    #[test]
    fn a_mem_kick_doorbell_is_both_a_page_word_and_an_io_fd() {
        let (dev, _ctx) = bound_dev();
        let kick = Arc::new(
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"),
        );
        // Like Mem it must be on the mmapped page.
        assert!(matches!(
            dev.configure_doorbell(DoorbellId(11), Doorbell::mem_kick(2, 0x1004, kick.clone())),
            Err(DoorbellError::NotMmapped)
        ));
        dev.configure_doorbell(DoorbellId(11), Doorbell::mem_kick(2, 0x8, kick.clone()))
            .expect("mem+kick");
        let info = dev.get_db_info(DoorbellId(11)).expect("info");
        assert_eq!(info.kind.name(), "mem+kick");
        assert!(info.kind.on_page());
        assert!(Arc::ptr_eq(info.kind.eventfd().expect("fd"), &kick));
        // The value comes from the page...
        let mem = info.mem.expect("a page word");
        mem.write(7).expect("store");
        assert_eq!(mem.read().expect("load"), 7);
        // ...and the fd goes out as a plain ioeventfd at the register, next to the EventFd one.
        let mut fds = dev.region_io_fds(2).expect("io fds");
        fds.sort_by_key(|f| f.offset);
        let got: Vec<(u64, u64, u32, u64)> = fds
            .iter()
            .map(|f| (f.offset, f.size, f.flags, f.datamatch))
            .collect();
        assert_eq!(got, vec![(0x8, 4, 0, 0), (test_device::EV_OFFSET, 4, 0, 0)]);
        assert!(Arc::ptr_eq(&fds[0].fd, &kick));
        // The other kinds say what they are.
        let t = dev.get_db_info(AQ_DOORBELL).expect("aq");
        assert!(!t.kind.on_page() && t.kind.eventfd().is_none());
        let m = dev.get_db_info(DQ_DOORBELL).expect("dq");
        assert!(m.kind.on_page() && m.kind.eventfd().is_none());
    }

    #[test]
    fn builder_refuses_bad_layouts() {
        let fd = memfd_backing("b", 0x2000).expect("memfd");
        let b = || EmuDev::builder("x", "toy");
        assert!(matches!(
            b().max_queues(0).build(),
            Err(BuildError::NoQueues)
        ));
        assert!(matches!(
            b().region(Region::trapped(0, "bar0", 0x10))
                .region(Region::trapped(0, "bar1", 0x10))
                .build(),
            Err(BuildError::DuplicateRegionIndex(0))
        ));
        assert!(matches!(
            b().region(Region::trapped(0, "bar", 0x10))
                .region(Region::trapped(1, "bar", 0x10))
                .build(),
            Err(BuildError::DuplicateRegionName(_))
        ));
        assert!(matches!(
            b().region(Region::sparse(
                2,
                "bar2",
                0x2000,
                fd.clone(),
                0,
                vec![SparseArea {
                    offset: 0x3000,
                    size: 0x1000
                }]
            ))
            .build(),
            Err(BuildError::BadMmapArea { .. })
        ));
        assert!(matches!(
            b().region(Region::trapped(0, "bar0", 0x10))
                .doorbell(DoorbellId(0), Doorbell::mem(0, 0))
                .build(),
            Err(BuildError::Doorbell {
                id: DoorbellId(0),
                source: DoorbellError::NotMmapped
            })
        ));
        assert!(matches!(
            b().region(Region::trapped(0, "bar0", 0x10))
                .doorbell(DoorbellId(0), Doorbell::trapped(0, 0))
                .doorbell(DoorbellId(1), Doorbell::trapped(0, 0).with_width(2))
                .build(),
            Err(BuildError::Doorbell {
                id: DoorbellId(1),
                source: DoorbellError::Overlaps(DoorbellId(0))
            })
        ));
        assert!(matches!(
            b().attr("a", AttrSpec::read_only(AttrValue::Bool(true)))
                .attr("a", AttrSpec::read_only(AttrValue::Bool(true)))
                .build(),
            Err(BuildError::DuplicateAttr(_))
        ));
        let ok = b()
            .max_queues(3)
            .irq_index(1)
            .region(Region::mmap(4, "bar4", 0x2000, fd, 0))
            .region(Region::trapped(0, "bar0", 0x10))
            .build()
            .expect("build");
        let info = ok.get_dev_info();
        assert_eq!(
            (
                info.name.as_str(),
                info.dev_type.as_str(),
                info.max_queues,
                info.irq_index
            ),
            ("x", "toy", 3, 1)
        );
        let idx: Vec<u32> = ok.regions().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 4]);
        assert!(ok.region_info(4).expect("info").mmap.is_some());
        assert!(ok.region_info(1).is_none());
        assert_eq!(ok.region_map("bar4").expect("map").areas.len(), 1);
        assert!(format!("{ok:?}").contains("Created"));
    }

    #[test]
    fn irq_info_reflects_the_irq_table() {
        let dev = test_device::emu("toy0");
        assert_eq!(dev.get_irq_info(0), Err(IrqError::NoContext));
        assert_eq!(dev.trigger_irq(0), Err(IrqError::NoContext));
        assert_eq!(dev.get_mem_table().err(), Some(MemTableError::NoContext));
        let ctx = DeviceContext {
            dma: Arc::new(DmaTable::default()),
            irqs: Arc::new(IrqTable::new(&[1, 1, 4, 1, 1])),
        };
        dev.bind_context(ctx.clone());
        assert!(Arc::ptr_eq(&dev.get_mem_table().expect("table"), &ctx.dma));
        let unbound = dev.get_irq_info(1).expect("info");
        assert_eq!(
            unbound,
            IrqVectorInfo {
                index: MSIX,
                vector: 1,
                bound: false,
                masked: false,
                pending: false
            }
        );
        assert_eq!(
            dev.trigger_irq(1),
            Err(IrqError::NotBound {
                index: MSIX,
                vector: 1
            })
        );
        assert_eq!(
            dev.get_irq_info(4),
            Err(IrqError::NoSuchVector {
                index: MSIX,
                vector: 4
            })
        );
        assert_eq!(
            dev.trigger_irq(4),
            Err(IrqError::NoSuchVector {
                index: MSIX,
                vector: 4
            })
        );
        let efd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .expect("eventfd");
        ctx.irqs
            .set_eventfds(MSIX, 1, vec![Some(efd.try_clone().expect("dup"))])
            .expect("bind");
        assert!(dev.get_irq_info(1).expect("info").bound);
        assert_eq!(dev.trigger_irq(1), Ok(true));
        let mut b = [0u8; 8];
        assert_eq!(rustix::io::read(&efd, &mut b), Ok(8));
        assert_eq!(u64::from_ne_bytes(b), 1);
        ctx.irqs.set_masked(MSIX, 1, 1, true).expect("mask");
        assert_eq!(dev.trigger_irq(1), Ok(false));
        let s = dev.get_irq_info(1).expect("info");
        assert!(s.masked && s.pending && s.bound);
        // A read-only fd makes the signal fail with the OS error.
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        ctx.irqs.set_eventfds(MSIX, 2, vec![Some(r)]).expect("bind");
        assert!(matches!(
            dev.trigger_irq(2),
            Err(IrqError::Signal { vector: 2, .. })
        ));
        // Rebinding the same context is a no-op; another one replaces it.
        dev.bind_context(ctx.clone());
        assert!(dev.get_irq_info(1).expect("info").bound);
        dev.bind_context(DeviceContext {
            dma: Arc::new(DmaTable::default()),
            irqs: Arc::new(IrqTable::new(&[1, 1, 4])),
        });
        assert!(!dev.get_irq_info(1).expect("info").bound);
    }

    #[test]
    fn provider_sees_queues_only_while_started() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        let rec = Recorder::new(ProviderKind::Software);
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        assert_eq!(dev.provider_kind(), Some(ProviderKind::Software));
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        assert_eq!(
            rec.calls(),
            vec![Call::Attached(ProviderKind::Software, true)]
        );
        dev.start().expect("start");
        dev.configure_queue(QueueId(1), dq(0x8000)).expect("dq");
        dev.configure_queue(QueueId(1), dq(0x9000))
            .expect("dq moved");
        dev.stop().expect("stop");
        dev.start().expect("start again");
        dev.clear_queue(QueueId(0)).expect("clear aq");
        assert_eq!(
            rec.ready_info(QueueId(1)).map(|q| q.base),
            Some(Iova(0x9000))
        );
        let p = dev.detach_provider().expect("detach");
        assert_eq!(p.kind(), ProviderKind::Software);
        assert_eq!(dev.provider_kind(), None);
        assert!(matches!(
            dev.detach_provider(),
            Err(ProviderError::NotAttached)
        ));
        use Call::*;
        assert_eq!(
            rec.calls(),
            vec![
                Attached(ProviderKind::Software, true),
                Ready(QueueId(0)),
                Ready(QueueId(1)),
                Stopped(QueueId(1)),
                Ready(QueueId(1)),
                Stopped(QueueId(0)),
                Stopped(QueueId(1)),
                Ready(QueueId(0)),
                Ready(QueueId(1)),
                Stopped(QueueId(0)),
                Stopped(QueueId(1)),
                Detached,
            ]
        );
        assert!(rec.ready_set().is_empty());
        assert!(rec.notes().is_empty(), "{:?}", rec.notes());
        let events = drain(&rx);
        assert_eq!(
            events.first(),
            Some(&EmuEvent::ProviderAttached {
                kind: ProviderKind::Software
            })
        );
        assert_eq!(events.last(), Some(&EmuEvent::ProviderDetached));
    }

    #[test]
    fn attach_errors() {
        let dev = test_device::emu("toy0");
        assert!(matches!(
            dev.attach_provider(Box::new(Recorder::new(ProviderKind::Software))),
            Err(ProviderError::NoContext)
        ));
        let ctx = DeviceContext {
            dma: Arc::new(DmaTable::default()),
            irqs: Arc::new(IrqTable::new(&[1, 1, 4])),
        };
        dev.bind_context(ctx);
        let refusing = Recorder::new(ProviderKind::Hardware).refusing();
        assert_eq!(
            dev.attach_provider(Box::new(refusing)),
            Err(ProviderError::Rejected("no thanks".into()))
        );
        assert_eq!(dev.provider_kind(), None);
        dev.attach_provider(Box::new(Recorder::new(ProviderKind::Hardware)))
            .expect("attach");
        assert_eq!(
            dev.attach_provider(Box::new(Recorder::new(ProviderKind::Software))),
            Err(ProviderError::AlreadyAttached(ProviderKind::Hardware))
        );
        dev.close().expect("close");
        assert_eq!(dev.provider_kind(), None);
        assert_eq!(
            dev.attach_provider(Box::new(Recorder::new(ProviderKind::Software))),
            Err(ProviderError::Closed)
        );
    }

    #[test]
    fn close_stops_and_detaches_the_provider() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(1)).expect("configure");
        dev.start().expect("start");
        let rec = Recorder::new(ProviderKind::Software);
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        let (_, rx) = dev.subscribe_channel().expect("subscribe");
        dev.close().expect("close");
        assert_eq!(
            rec.calls(),
            vec![
                Call::Attached(ProviderKind::Software, true),
                Call::Ready(QueueId(0)),
                Call::Stopped(QueueId(0)),
                Call::Detached
            ]
        );
        assert_eq!(
            drain(&rx),
            vec![
                EmuEvent::Stopped,
                EmuEvent::ProviderDetached,
                EmuEvent::Closed
            ]
        );
    }

    #[test]
    fn software_provider_sees_the_whole_table() {
        let (dev, ctx) = bound_dev();
        let client = map_memory(&ctx.dma, 0x10_0000, 0x4000);
        client.write_at(0x3000, b"data ring").expect("write");
        dev.configure(EmuDevConf::new(2)).expect("configure");
        let rec = Recorder::new(ProviderKind::Software);
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        let view = rec.view().expect("view");
        assert_eq!(view.kind(), ProviderKind::Software);
        assert!(view.mem_table().is_full());
        let mut b = [0u8; 9];
        view.mem_table()
            .read(Iova(0x10_3000), &mut b)
            .expect("read anywhere");
        assert_eq!(&b, b"data ring");
        view.mem_table()
            .write(Iova(0x10_0000), b"x")
            .expect("write anywhere");
        let w = view
            .mem_table()
            .window(Iova(0x10_0000), 0x4000, DmaProt::RW)
            .expect("window");
        assert_eq!(w.len(), 0x4000);
        // Access is still checked against the table.
        assert!(view.mem_table().read(Iova(0x20_0000), &mut b).is_err());
        assert_eq!(view.name(), "toy0");
        assert!(format!("{view:?}").contains("Full"));
    }

    #[test]
    fn hardware_provider_sees_only_control_rings() {
        let (dev, ctx) = bound_dev();
        let client = map_memory(&ctx.dma, 0x10_0000, 0x4000);
        client.write_at(0, b"admin ring").expect("write");
        client.write_at(0x2000, b"data ring").expect("write");
        dev.configure(EmuDevConf::new(2)).expect("configure");
        dev.start().expect("start");
        let rec = Recorder::new(ProviderKind::Hardware);
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        let view = rec.view().expect("view");
        let MemTableView::ControlPlane(cp) = view.mem_table() else {
            panic!("hardware got the full table")
        };
        assert!(cp.ranges().is_empty());
        let mut b = [0u8; 10];
        assert!(matches!(
            cp.read(Iova(0x10_0000), &mut b),
            Err(crate::ControlAccessError::OutsideControlPlane { .. })
        ));
        dev.configure_queue(QueueId(0), aq(0x10_0000)).expect("aq");
        dev.configure_queue(QueueId(1), dq(0x10_2000)).expect("dq");
        // The hardware provider still learns about both queues (to program the hardware)...
        assert_eq!(
            rec.ready_info(QueueId(1)).map(|q| q.path),
            Some(QueuePath::Data)
        );
        // ...but reaches only the admin ring (16 x 32 bytes).
        assert_eq!(cp.ranges(), vec![IovaRange::new(Iova(0x10_0000), 512)]);
        view.mem_table()
            .read(Iova(0x10_0000), &mut b)
            .expect("read admin ring");
        assert_eq!(&b, b"admin ring");
        view.mem_table()
            .write(Iova(0x10_01f0), &[1; 16])
            .expect("write end of ring");
        assert!(view.mem_table().write(Iova(0x10_01f8), &[1; 16]).is_err());
        assert!(view.mem_table().read(Iova(0x10_2000), &mut b[..9]).is_err());
        assert!(view
            .mem_table()
            .window(Iova(0x10_2000), 16, DmaProt::READ)
            .is_err());
        assert!(view
            .mem_table()
            .window(Iova(0x10_0000), 512, DmaProt::READ)
            .is_ok());
        // A cleared control queue's ring becomes unreachable at once.
        dev.clear_queue(QueueId(0)).expect("clear");
        assert!(cp.read(Iova(0x10_0000), &mut b).is_err());
        assert!(!cp.allows(Iova(0x10_0000), 1));
        // Mapped but outside: a control ring that is not mapped fails in the DMA layer.
        dev.configure_queue(QueueId(0), aq(0x50_0000))
            .expect("aq elsewhere");
        assert!(matches!(
            cp.read(Iova(0x50_0000), &mut b),
            Err(crate::ControlAccessError::Dma(_))
        ));
        // Once the device is gone, nothing is reachable.
        let cp = cp.clone();
        drop(view);
        drop(rec);
        dev.close().expect("close");
        drop(dev);
        assert!(cp.ranges().is_empty());
    }

    #[test]
    fn trapped_doorbells_reach_the_provider() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        let rec = Recorder::new(ProviderKind::Software);
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        // Not started: the queue is not ready, so nothing is forwarded.
        dev.region_written(0, test_device::AQ_TAIL, &5u32.to_le_bytes());
        dev.start().expect("start");
        dev.region_written(0, test_device::AQ_TAIL, &7u32.to_le_bytes());
        // Other offsets and regions are not doorbells.
        dev.region_written(0, test_device::AQ_TAIL + 4, &1u32.to_le_bytes());
        dev.region_written(2, test_device::DQ_TAIL, &1u32.to_le_bytes());
        assert_eq!(
            rec.calls(),
            vec![
                Call::Attached(ProviderKind::Software, true),
                Call::Ready(QueueId(0)),
                Call::Doorbell(QueueId(0), 7)
            ]
        );
    }

    #[test]
    fn providers_may_call_back_into_the_device() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        dev.start().expect("start");
        // On ready, this provider reads its queue and doorbell info and raises an attribute;
        // attaching or detaching from a callback is refused instead of deadlocking.
        let rec = Recorder::new(ProviderKind::Software).meddling(dev.clone());
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        dev.configure_queue(QueueId(0), aq(0x1000)).expect("aq");
        assert_eq!(dev.get_attr("link_up"), Ok(AttrValue::Bool(true)));
        let notes = rec.notes();
        assert!(
            notes.contains(&"attach: Reentrant".to_string()),
            "{notes:?}"
        );
        assert!(
            notes.contains(&"detach: Reentrant".to_string()),
            "{notes:?}"
        );
        assert!(notes.contains(&"close refused".to_string()), "{notes:?}");
        assert!(
            notes.contains(&"db queue: Some(QueueId(0))".to_string()),
            "{notes:?}"
        );
        assert_eq!(dev.state(), DevState::Started);
    }

    #[test]
    fn a_panicking_provider_does_not_poison_the_device() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(2)).expect("configure");
        dev.start().expect("start");
        dev.attach_provider(Box::new(Recorder::new(ProviderKind::Software).panicking()))
            .expect("attach");
        dev.configure_queue(QueueId(0), aq(0x1000))
            .expect("aq survives a provider panic");
        assert!(dev.get_queue_info(QueueId(0)).is_ok());
        dev.detach_provider().expect("detach");
        assert_eq!(
            dev.attach_provider(Box::new(
                Recorder::new(ProviderKind::Software).panicking_on_attach()
            )),
            Err(ProviderError::Rejected(
                "the provider panicked in attach".into()
            ))
        );
    }

    #[test]
    fn concurrent_ops_keep_the_provider_consistent() {
        let (dev, _ctx) = bound_dev();
        dev.configure(EmuDevConf::new(4)).expect("configure");
        dev.start().expect("start");
        let rec = Recorder::new(ProviderKind::Software);
        dev.attach_provider(Box::new(rec.clone())).expect("attach");
        dev.configure_doorbell(DoorbellId(20), Doorbell::trapped(0, 0x200))
            .expect("db");
        dev.configure_doorbell(DoorbellId(21), Doorbell::trapped(0, 0x204))
            .expect("db");
        let threads: Vec<_> = (0..2u32)
            .map(|t| {
                let dev = dev.clone();
                thread::spawn(move || {
                    let q = QueueId(2 + t);
                    let db = DoorbellId(20 + t);
                    for i in 0..200u64 {
                        let cfg = QueueConfig::new(
                            crate::QueueKind::Rx,
                            Iova(0x1_0000 * (i + 1)),
                            8,
                            16,
                            db,
                        );
                        dev.configure_queue(q, cfg).expect("configure");
                        if i % 3 == 0 {
                            dev.clear_queue(q).expect("clear");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        // The provider's view converged to the final state.
        let ready = rec.ready_set();
        let want: Vec<QueueInfo> = dev.queues();
        assert_eq!(ready, want);
    }
}
