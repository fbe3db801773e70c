//! A PCI function built on `emudev-pci`, served by the real vfio-user server and driven by the
//! real client over a socket: region and IRQ info as the client sees them, BAR sizing and a
//! capability walk through region 7, an mmapped BAR shared with the device, and MSI-X fired
//! from a worker thread with the client masking through SET_IRQS as QEMU does.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use emudev_pci::regs::*;
use emudev_pci::{
    BarMemory, BarSpec, ConfigKind, ConfigSpace, FireOutcome, InterruptPin, IrqSink, MsixMaskMode,
    MsixSpec, MsixTable, PciDevice, PciFunction, PciIds, PcieSpec, PmSpec, CONFIG_REGION,
};
use emudev_vfio_user::client::Client;
use emudev_vfio_user::irq::MSIX;
use emudev_vfio_user::server::{RunningServer, Server, ServerConfig};
use emudev_vfio_user::wire::{IrqAction, IrqSetData};
use emudev_vfio_user::{DeviceContext, Errno};

const IDS: PciIds = PciIds {
    vendor_id: 0x1de5,
    device_id: 0x0001,
    subsystem_vendor_id: 0x1de5,
    subsystem_id: 0x0001,
    revision: 1,
    class_code: 0x05_00_00,
};

fn page() -> u64 {
    rustix::param::page_size() as u64
}

/// BAR0: 64-bit, 16 KiB of trapped registers. BAR2: 4 pages of shared memory with the MSI-X
/// table in page 2 and the PBA in page 3.
struct Scratch {
    config: ConfigSpace,
    msix: Arc<MsixTable>,
    mem: BarMemory,
    regs: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        let mut config = ConfigSpace::new(ConfigKind::Express, &IDS, InterruptPin::IntA);
        config.add_bar(BarSpec::mem64(0, 0x4000)).expect("BAR0");
        config.add_bar(BarSpec::mem32(2, 4 * page())).expect("BAR2");
        config.add_pm(PmSpec::default(), None).expect("PM");
        let spec = MsixSpec::new(4, 2, 2 * page() as u32, 2, 3 * page() as u32);
        let cap = config.add_msix(spec, None).expect("MSI-X");
        config.add_pcie(PcieSpec::default(), None).expect("PCIe");
        Scratch {
            config,
            msix: Arc::new(MsixTable::new(cap, MsixMaskMode::Auto)),
            mem: BarMemory::new("scratch-bar2", 4 * page(), &[]).expect("BAR2 memory"),
            regs: vec![0; 0x4000],
        }
    }
}

impl PciFunction for Scratch {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(
        &mut self,
        _: &DeviceContext,
        _: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        let at = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
        data.copy_from_slice(self.regs.get(at..at + data.len()).ok_or(Errno::INVAL)?);
        Ok(())
    }
    fn bar_write(
        &mut self,
        _: &DeviceContext,
        _: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let at = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
        self.regs
            .get_mut(at..at + data.len())
            .ok_or(Errno::INVAL)?
            .copy_from_slice(data);
        Ok(())
    }
    fn msix_table(&self) -> Option<&MsixTable> {
        Some(&self.msix)
    }
    fn bar_memory(&self, bar: u8) -> Option<&BarMemory> {
        (bar == 2).then_some(&self.mem)
    }
}

struct Served {
    running: RunningServer<PciDevice<Scratch>>,
    msix: Arc<MsixTable>,
    path: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.running.handle().stop();
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap_or(&self.path));
    }
}

fn serve(tag: &str) -> Served {
    let dir = std::env::temp_dir().join(format!("emudev-pci-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("s.sock");
    let f = Scratch::new();
    let msix = Arc::clone(&f.msix);
    let dev = PciDevice::new(f);
    dev.validate().expect("consistent layout");
    let server = Server::bind(&path, dev, ServerConfig::default()).expect("bind");
    Served {
        running: server.spawn().expect("spawn"),
        msix,
        path,
    }
}

fn fired(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(_) => u64::from_ne_bytes(b),
        Err(_) => 0,
    }
}

#[test]
fn the_client_sees_the_layout() {
    let s = serve("layout");
    let mut c = Client::connect(&s.path).expect("connect");
    let info = c.device_info();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let size = |c: &Client, i| c.region(i).map(|r| r.size);
    assert_eq!(size(&c, 0), Some(0x4000));
    assert_eq!(size(&c, 1), Some(0));
    assert_eq!(size(&c, 2), Some(4 * page()));
    assert_eq!(size(&c, 7), Some(4096));
    let bar2 = c.region(2).expect("BAR2").clone();
    assert!(bar2.mappable());
    assert_eq!(bar2.mmap_areas().len(), 1);
    assert_eq!(
        (bar2.mmap_areas()[0].offset, bar2.mmap_areas()[0].size),
        (0, 2 * page())
    );
    assert!(!c.region(0).expect("BAR0").mappable());
    let msix = c.get_irq_info(MSIX).expect("MSI-X info");
    assert_eq!(msix.count, 4);
    assert_eq!(c.get_irq_info(0).expect("INTx info").count, 1);
    assert_eq!(c.get_irq_info(1).expect("MSI info").count, 0);

    // BAR sizing of the 64-bit BAR0 through region 7.
    c.write_u32(CONFIG_REGION, 0x10, u32::MAX).expect("size lo");
    c.write_u32(CONFIG_REGION, 0x14, u32::MAX).expect("size hi");
    assert_eq!(c.read_u32(CONFIG_REGION, 0x10).expect("lo"), 0xffff_c004);
    assert_eq!(c.read_u32(CONFIG_REGION, 0x14).expect("hi"), u32::MAX);

    // Walk the capability list as a guest would.
    let status = c.read_u32(CONFIG_REGION, 4).expect("status") >> 16;
    assert_ne!(status as u16 & PCI_STATUS_CAP_LIST, 0);
    let mut ptr = c.read_u32(CONFIG_REGION, 0x34).expect("cap ptr") & 0xfc;
    let mut ids = Vec::new();
    while ptr != 0 && ids.len() < 48 {
        let hdr = c
            .read_u32(CONFIG_REGION, u64::from(ptr))
            .expect("cap header");
        ids.push(hdr as u8);
        ptr = (hdr >> 8) & 0xfc;
    }
    assert_eq!(ids, [PCI_CAP_ID_PM, PCI_CAP_ID_MSIX, PCI_CAP_ID_EXP]);
    assert_eq!(c.read_u32(CONFIG_REGION, 0x100).expect("ext header"), 0);

    // Trapped BAR0 registers.
    c.write_u64(0, 0x20, 0x1122_3344_5566_7788)
        .expect("BAR0 write");
    assert_eq!(
        c.read_u64(0, 0x20).expect("BAR0 read"),
        0x1122_3344_5566_7788
    );
}

#[test]
fn mmapped_bar_memory_is_shared_with_the_device() {
    let s = serve("mmap");
    let mut c = Client::connect(&s.path).expect("connect");
    assert_eq!(c.map_region(2).expect("map BAR2"), 1);
    // A store on the client's mapping is what the device reads.
    c.region_write(2, 0x40, b"doorbell").expect("mapped write");
    let dev = s.running.device();
    let mut b = [0u8; 8];
    dev.lock()
        .expect("device lock")
        .function()
        .mem
        .memory()
        .read_at(0x40, &mut b)
        .expect("device read");
    assert_eq!(&b, b"doorbell");
    // The same bytes by message (the adapter serves them from the memory too).
    let mut m = [0u8; 8];
    c.region_read_msg(2, 0x40, &mut m).expect("message read");
    assert_eq!(&m, b"doorbell");
    c.region_write_msg(2, 0x1000, b"by-msg", false)
        .expect("message write");
    let mut back = [0u8; 6];
    c.region_read(2, 0x1000, &mut back).expect("mapped read");
    assert_eq!(&back, b"by-msg");
}

#[test]
fn msix_from_a_worker_with_qemu_style_masking() {
    let s = serve("msix");
    let mut c = Client::connect(&s.path).expect("connect");
    let fds = c.enable_irqs(MSIX, 4).expect("bind MSI-X eventfds");
    let ctx = s.running.context();
    let fire = |v: u16| {
        let msix = Arc::clone(&s.msix);
        let irqs = Arc::clone(&ctx.irqs);
        std::thread::spawn(move || msix.fire(v, &mut IrqSink::msix(&irqs)))
            .join()
            .expect("worker")
    };
    // MSI-X not enabled yet.
    assert_eq!(fire(0), Ok(FireOutcome::Disabled));
    // The guest enables MSI-X (QEMU forwards the config write); the table is never written.
    let ctrl = u64::from(s.msix.capability().control_offset());
    c.region_write(CONFIG_REGION, ctrl, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes())
        .expect("enable MSI-X");
    assert_eq!(fire(1), Ok(FireOutcome::Delivered));
    assert_eq!(fired(&fds[1]), 1);
    // QEMU masks vector 3 with SET_IRQS; a fire is latched and the PBA (forwarded) shows it.
    c.set_irqs(MSIX, IrqAction::Mask, IrqSetData::None, 3, 1)
        .expect("mask");
    assert_eq!(fire(3), Ok(FireOutcome::Pending));
    assert_eq!(fired(&fds[3]), 0);
    let pba_at = 3 * page();
    assert_eq!(c.read_u64(2, pba_at).expect("PBA"), 1 << 3);
    c.set_irqs(MSIX, IrqAction::Unmask, IrqSetData::None, 3, 1)
        .expect("unmask");
    assert_eq!(fired(&fds[3]), 1);
    assert_eq!(c.read_u64(2, pba_at).expect("PBA"), 0);
    // The function mask, set and cleared through config space.
    c.region_write(
        CONFIG_REGION,
        ctrl,
        &(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL).to_le_bytes(),
    )
    .expect("function mask");
    assert_eq!(fire(2), Ok(FireOutcome::Pending));
    assert_eq!(c.read_u64(2, pba_at).expect("PBA"), 1 << 2);
    c.region_write(CONFIG_REGION, ctrl, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes())
        .expect("function unmask");
    assert_eq!(fired(&fds[2]), 1);
    // DEVICE_RESET: MSI-X off again.
    c.reset().expect("reset");
    assert_eq!(fire(1), Ok(FireOutcome::Disabled));
}
