//! Test fixtures: a toy NIC-like device and a recording data-path provider.
//!
//! The toy NIC has an admin queue and a data queue. BAR0 (trapped, 4 KiB) holds the admin
//! queue registers; its tail is a trapped doorbell. BAR2 (8 KiB, sparse) has an mmapped first
//! page whose first word is the data queue's tail (a mem doorbell), and a trapped second page
//! with an ioeventfd doorbell. A read-only ROM (region 6) and a trapped config space (region 7,
//! answered by the device itself, not the layout) complete it.
//!
//! Control plane: writing `AQ_LEN` / `DQ_LEN` with bit 31 set configures queue 0 (admin, 32-byte
//! entries, vector 0) / queue 1 (TX, 16-byte entries, vector 1) from the base registers;
//! writing it with bit 31 clear clears the queue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use emudev_dma::Iova;
use emudev_vfio_user::irq::{INTX, MSI, MSIX};
use emudev_vfio_user::{Device, DeviceContext, DeviceInfo, Errno, IrqInfo, RegionInfo, SparseArea};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::{
    AttrSpec, AttrValue, DataPathProvider, DeviceView, Doorbell, DoorbellId, EmuDev, ProviderError,
    ProviderKind, QueueConfig, QueueError, QueueId, QueueInfo, QueueKind, Region,
};

pub const BAR0: u32 = 0;
pub const BAR2: u32 = 2;
pub const ROM: u32 = 6;
pub const CONFIG: u32 = 7;
pub const BAR0_SIZE: u64 = 0x1000;
pub const BAR2_SIZE: u64 = 0x2000;

pub const AQ_BASE_LO: u64 = 0x00;
pub const AQ_BASE_HI: u64 = 0x04;
pub const AQ_LEN: u64 = 0x08;
pub const AQ_TAIL: u64 = 0x10;
pub const DQ_BASE_LO: u64 = 0x20;
pub const DQ_BASE_HI: u64 = 0x24;
pub const DQ_LEN: u64 = 0x28;
/// In BAR2's mmapped page.
pub const DQ_TAIL: u64 = 0x0;
/// In BAR2's trapped page.
pub const EV_OFFSET: u64 = 0x1000;
pub const LEN_ENABLE: u32 = 1 << 31;

pub const AQ_DOORBELL: DoorbellId = DoorbellId(0);
pub const DQ_DOORBELL: DoorbellId = DoorbellId(1);
pub const EV_DOORBELL: DoorbellId = DoorbellId(2);

fn new_eventfd() -> Arc<std::os::fd::OwnedFd> {
    let fd = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .expect("eventfd");
    Arc::new(fd)
}

/// The toy NIC's emudev object model.
pub fn emu(name: &str) -> EmuDev {
    let bar2 = crate::region::memfd_backing("toy-bar2", BAR2_SIZE).expect("memfd");
    let mac_ok = |v: &AttrValue| {
        if v.as_bytes().is_some_and(|b| b.len() == 6) {
            Ok(())
        } else {
            Err("a MAC address is 6 bytes".to_string())
        }
    };
    EmuDev::builder(name, "toynic")
        .max_queues(4)
        .region(Region::trapped(BAR0, "bar0", BAR0_SIZE))
        .region(Region::sparse(
            BAR2,
            "bar2",
            BAR2_SIZE,
            bar2,
            0,
            vec![SparseArea {
                offset: 0,
                size: 0x1000,
            }],
        ))
        .region(Region::trapped(ROM, "rom", 0x100).read_only())
        .doorbell(AQ_DOORBELL, Doorbell::trapped(BAR0, AQ_TAIL))
        .doorbell(DQ_DOORBELL, Doorbell::mem(BAR2, DQ_TAIL))
        .doorbell(
            EV_DOORBELL,
            Doorbell::eventfd(BAR2, EV_OFFSET, new_eventfd()),
        )
        .attr(
            "mac",
            AttrSpec::read_only(AttrValue::Bytes(vec![2, 0, 0, 0, 0, 1])).with_check(mac_ok),
        )
        .attr(
            "mtu",
            AttrSpec::read_write(AttrValue::U64(1500)).with_check(|v| match v.as_u64() {
                Some(68..=9710) => Ok(()),
                _ => Err("mtu must be 68..=9710".to_string()),
            }),
        )
        .attr("link_up", AttrSpec::read_write(AttrValue::Bool(false)))
        .build()
        .expect("toy layout")
}

/// What the toy NIC saw, shared with the test.
#[derive(Debug, Default)]
pub struct NicLog {
    pub aq_tails: Vec<u32>,
    pub resets: u32,
}

/// The toy NIC's device logic (wrapped by `VfioUserAdapter`).
#[derive(Debug)]
pub struct ToyNic {
    emu: EmuDev,
    regs: Vec<u32>,
    pub log: Arc<Mutex<NicLog>>,
}

impl ToyNic {
    pub fn new(emu: EmuDev) -> Self {
        ToyNic {
            emu,
            regs: vec![0; (BAR0_SIZE / 4) as usize],
            log: Arc::default(),
        }
    }

    fn reg(&self, off: u64) -> u32 {
        self.regs[(off / 4) as usize]
    }

    fn queue_reg_written(&mut self, q: QueueId, lo: u64, hi: u64, len: u64) -> Result<(), Errno> {
        let v = self.reg(len);
        if v & LEN_ENABLE == 0 {
            return match self.emu.clear_queue(q) {
                Ok(()) | Err(QueueError::NotConfigured(_)) => Ok(()),
                Err(_) => Err(Errno::INVAL),
            };
        }
        let base = Iova((u64::from(self.reg(hi)) << 32) | u64::from(self.reg(lo)));
        let entries = v & 0x3ff;
        let cfg = if q == QueueId(0) {
            QueueConfig::new(QueueKind::Admin, base, entries, 32, AQ_DOORBELL).with_irq(0)
        } else {
            QueueConfig::new(QueueKind::Tx, base, entries, 16, DQ_DOORBELL).with_irq(1)
        };
        self.emu
            .configure_queue(q, cfg)
            .map(|_| ())
            .map_err(|_| Errno::INVAL)
    }
}

impl Device for ToyNic {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            CONFIG => Some(RegionInfo {
                flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                size: 256,
                mmap: None,
            }),
            i if i < 9 => Some(RegionInfo::absent()),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            INTX => Some(IrqInfo {
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                count: 1,
            }),
            MSI => Some(IrqInfo {
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                count: 1,
            }),
            MSIX => Some(IrqInfo {
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_NORESIZE,
                count: 4,
            }),
            i if i < 5 => Some(IrqInfo { flags: 0, count: 0 }),
            _ => None,
        }
    }

    fn region_read(
        &mut self,
        _ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match index {
            BAR0 if data.len() == 4 && offset.is_multiple_of(4) => {
                data.copy_from_slice(&self.reg(offset).to_le_bytes());
                Ok(())
            }
            BAR2 | ROM | CONFIG => {
                data.fill(0);
                Ok(())
            }
            _ => Err(Errno::INVAL),
        }
    }

    fn region_write(
        &mut self,
        _ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        match index {
            BAR0 => {
                let bytes: [u8; 4] = data.try_into().map_err(|_| Errno::INVAL)?;
                if !offset.is_multiple_of(4) {
                    return Err(Errno::INVAL);
                }
                let v = u32::from_le_bytes(bytes);
                self.regs[(offset / 4) as usize] = v;
                match offset {
                    AQ_LEN => self.queue_reg_written(QueueId(0), AQ_BASE_LO, AQ_BASE_HI, AQ_LEN),
                    DQ_LEN => self.queue_reg_written(QueueId(1), DQ_BASE_LO, DQ_BASE_HI, DQ_LEN),
                    AQ_TAIL => {
                        self.log.lock().expect("log").aq_tails.push(v);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            BAR2 | CONFIG => Ok(()),
            _ => Err(Errno::INVAL),
        }
    }

    fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
        self.regs.fill(0);
        self.log.lock().expect("log").resets += 1;
        Ok(())
    }
}

/// One thing a [`Recorder`] was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Attached with (kind, whether the memory view is the full table).
    Attached(ProviderKind, bool),
    Ready(QueueId),
    Stopped(QueueId),
    Doorbell(QueueId, u64),
    Detached,
}

#[derive(Debug, Default)]
struct RecState {
    calls: Vec<Call>,
    view: Option<DeviceView>,
    ready: BTreeMap<QueueId, QueueInfo>,
    /// Protocol violations and observations.
    notes: Vec<String>,
}

#[derive(Clone, Debug)]
enum Mode {
    Normal,
    Refusing,
    Meddling(EmuDev),
    Panicking,
    PanickingOnAttach,
}

/// A data-path provider test double that records what it is told.
#[derive(Clone, Debug)]
pub struct Recorder {
    kind: ProviderKind,
    mode: Mode,
    state: Arc<Mutex<RecState>>,
}

impl Recorder {
    pub fn new(kind: ProviderKind) -> Self {
        Recorder {
            kind,
            mode: Mode::Normal,
            state: Arc::default(),
        }
    }

    /// Refuses to attach.
    pub fn refusing(mut self) -> Self {
        self.mode = Mode::Refusing;
        self
    }

    /// Calls back into `dev` from `queue_ready`.
    pub fn meddling(mut self, dev: EmuDev) -> Self {
        self.mode = Mode::Meddling(dev);
        self
    }

    /// Panics in `queue_ready`.
    pub fn panicking(mut self) -> Self {
        self.mode = Mode::Panicking;
        self
    }

    /// Panics in `attach`.
    pub fn panicking_on_attach(mut self) -> Self {
        self.mode = Mode::PanickingOnAttach;
        self
    }

    fn st(&self) -> std::sync::MutexGuard<'_, RecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    pub fn view(&self) -> Option<DeviceView> {
        self.st().view.clone()
    }

    pub fn notes(&self) -> Vec<String> {
        self.st().notes.clone()
    }

    /// The queues it services now.
    pub fn ready_set(&self) -> Vec<QueueInfo> {
        self.st().ready.values().cloned().collect()
    }

    pub fn ready_info(&self, q: QueueId) -> Option<QueueInfo> {
        self.st().ready.get(&q).cloned()
    }
}

impl DataPathProvider for Recorder {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn attach(&mut self, dev: DeviceView) -> Result<(), ProviderError> {
        match self.mode {
            Mode::Refusing => return Err(ProviderError::Rejected("no thanks".into())),
            Mode::PanickingOnAttach => panic!("provider bug in attach"),
            _ => {}
        }
        let mut st = self.st();
        st.calls
            .push(Call::Attached(dev.kind(), dev.mem_table().is_full()));
        st.view = Some(dev);
        Ok(())
    }

    fn queue_ready(&mut self, q: &QueueInfo) {
        {
            let mut st = self.st();
            st.calls.push(Call::Ready(q.id));
            if st.ready.insert(q.id, q.clone()).is_some() {
                st.notes.push(format!("{} made ready twice", q.id));
            }
        }
        match &self.mode {
            Mode::Panicking => panic!("provider bug in queue_ready"),
            Mode::Meddling(dev) => {
                let mut notes = Vec::new();
                let other = Box::new(Recorder::new(ProviderKind::Software));
                if let Err(e) = dev.attach_provider(other) {
                    notes.push(format!("attach: {e:?}"));
                }
                if let Err(e) = dev.detach_provider() {
                    notes.push(format!("detach: {e:?}"));
                }
                if dev.close().is_err() {
                    notes.push("close refused".to_string());
                }
                let view = self.view().expect("view");
                let db = view.get_db_info(q.doorbell).map(|d| d.queue);
                notes.push(format!("db queue: {:?}", db.ok().flatten()));
                dev.update_attr("link_up", AttrValue::Bool(true))
                    .expect("attr from provider");
                // Reconfiguring from inside a callback is deferred, not deadlocked.
                dev.configure_queue(
                    q.id,
                    QueueConfig::new(q.kind.clone(), q.base, q.size, q.entry_size, q.doorbell),
                )
                .expect("reconfigure from provider");
                self.st().notes.extend(notes);
            }
            _ => {}
        }
    }

    fn queue_stopped(&mut self, q: &QueueInfo) {
        let mut st = self.st();
        st.calls.push(Call::Stopped(q.id));
        if st.ready.remove(&q.id).as_ref() != Some(q) {
            st.notes
                .push(format!("{} stopped without matching ready", q.id));
        }
    }

    fn doorbell_rung(&mut self, q: &QueueInfo, value: u64) {
        self.st().calls.push(Call::Doorbell(q.id, value));
    }

    fn detach(&mut self) {
        let mut st = self.st();
        st.calls.push(Call::Detached);
        st.view = None;
    }
}
