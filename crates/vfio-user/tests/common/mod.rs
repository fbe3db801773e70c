//! A test device exercising every part of the server: a trapped BAR0, a sparse-mmapped BAR2
//! backed by a memfd, an ioeventfd on BAR0, INTx/MSI/MSI-X/ERR/REQ IRQs, DEVICE_FEATURE
//! migration probing and migration data, and a DMA helper register that makes the device
//! copy client memory (to exercise fd-backed and message-based DMA).
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use emudev_dma::{DmaMapInfo, DmaProt, Iova, SharedMemory};
use emudev_vfio_user::server::{RunningServer, Server, ServerConfig};
use emudev_vfio_user::{
    Device, DeviceContext, DeviceInfo, Errno, IoEventFd, IrqInfo, RegionInfo, RegionMmap,
    SparseArea,
};
use vfio_bindings::bindings::vfio;

pub const BAR0_SIZE: u64 = 0x1000;
pub const BAR2_SIZE: u64 = 0x8000;
/// BAR0 register: write an IOVA here, then a length to `DMA_LEN`; the device reads that many
/// bytes from client memory, adds 1 to each byte, and writes them back to `iova + 0x1000`.
pub const REG_DMA_IOVA: u64 = 0x100;
pub const REG_DMA_LEN: u64 = 0x108;
/// BAR0 register: reading it returns the number of completed DMA jobs; failed jobs are
/// counted at `REG_DMA_ERRORS`.
pub const REG_DMA_DONE: u64 = 0x110;
pub const REG_DMA_ERRORS: u64 = 0x118;
/// BAR0 register: writing v triggers MSI-X vector v.
pub const REG_IRQ: u64 = 0x200;
/// The ioeventfd doorbell offset in BAR0.
pub const DOORBELL: u64 = 0x400;

#[derive(Debug, Default)]
pub struct Events {
    pub connected: AtomicU64,
    pub disconnected: AtomicU64,
    pub resets: AtomicU64,
    pub mapped: Mutex<Vec<DmaMapInfo>>,
    pub unmapped: Mutex<Vec<DmaMapInfo>>,
    pub irq_changes: AtomicU64,
}

#[derive(Debug)]
pub struct TestDevice {
    pub bar0: Vec<u8>,
    pub bar2_fd: Arc<OwnedFd>,
    pub bar2: SharedMemory,
    pub doorbell: Arc<OwnedFd>,
    pub events: Arc<Events>,
    pub mig: Vec<u8>,
    pub mig_state: u32,
}

impl TestDevice {
    pub fn new() -> Self {
        let (bar2, fd) = SharedMemory::memfd("test-bar2", BAR2_SIZE).unwrap();
        let doorbell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap();
        TestDevice {
            bar0: vec![0; BAR0_SIZE as usize],
            bar2_fd: Arc::new(fd),
            bar2,
            doorbell: Arc::new(doorbell),
            events: Arc::new(Events::default()),
            mig: b"migration-state-blob".to_vec(),
            mig_state: vfio::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
        }
    }

    fn reg(&self, off: u64) -> u64 {
        let o = off as usize;
        u64::from_ne_bytes(self.bar0[o..o + 8].try_into().unwrap())
    }

    fn set_reg(&mut self, off: u64, v: u64) {
        let o = off as usize;
        self.bar0[o..o + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn run_dma(&mut self, ctx: &DeviceContext) {
        let iova = self.reg(REG_DMA_IOVA);
        let len = self.reg(REG_DMA_LEN) as usize;
        let mut buf = vec![0u8; len.min(1 << 22)];
        let ok = ctx.dma.read(Iova(iova), &mut buf).is_ok() && {
            for b in buf.iter_mut() {
                *b = b.wrapping_add(1);
            }
            ctx.dma.write(Iova(iova + 0x1000), &buf).is_ok()
        };
        let which = if ok { REG_DMA_DONE } else { REG_DMA_ERRORS };
        let n = self.reg(which) + 1;
        self.set_reg(which, n);
    }
}

impl Device for TestDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: vfio::VFIO_DEVICE_FLAGS_PCI | vfio::VFIO_DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = vfio::VFIO_REGION_INFO_FLAG_READ | vfio::VFIO_REGION_INFO_FLAG_WRITE;
        Some(match index {
            0 => RegionInfo {
                flags: rw,
                size: BAR0_SIZE,
                mmap: None,
            },
            2 => RegionInfo {
                flags: rw,
                size: BAR2_SIZE,
                mmap: Some(RegionMmap {
                    fd: self.bar2_fd.clone(),
                    file_offset: 0,
                    sparse: vec![
                        SparseArea {
                            offset: 0x2000,
                            size: 0x1000,
                        },
                        SparseArea {
                            offset: 0x4000,
                            size: 0x2000,
                        },
                    ],
                }),
            },
            7 => RegionInfo {
                flags: rw,
                size: 256,
                mmap: None,
            },
            1 | 3..=6 | 8 => RegionInfo::absent(),
            _ => return None,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let ev = vfio::VFIO_IRQ_INFO_EVENTFD;
        Some(match index {
            0 => IrqInfo {
                flags: ev | vfio::VFIO_IRQ_INFO_MASKABLE | vfio::VFIO_IRQ_INFO_AUTOMASKED,
                count: 1,
            },
            1 => IrqInfo {
                flags: ev | vfio::VFIO_IRQ_INFO_NORESIZE,
                count: 1,
            },
            2 => IrqInfo {
                flags: ev | vfio::VFIO_IRQ_INFO_MASKABLE,
                count: 4,
            },
            3 | 4 => IrqInfo {
                flags: ev,
                count: 1,
            },
            _ => return None,
        })
    }

    fn region_read(
        &mut self,
        _ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        match index {
            0 => {
                let o = offset as usize;
                data.copy_from_slice(&self.bar0[o..o + data.len()]);
                Ok(())
            }
            2 => self.bar2.read_at(offset, data).map_err(|_| Errno::FAULT),
            7 => {
                // Vendor 0x1af4, device 0x1000 at the top, zeros elsewhere.
                let mut cfg = [0u8; 256];
                cfg[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
                cfg[2..4].copy_from_slice(&0x1000u16.to_le_bytes());
                let o = offset as usize;
                data.copy_from_slice(&cfg[o..o + data.len()]);
                Ok(())
            }
            _ => Err(Errno::INVAL),
        }
    }

    fn region_write(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        match index {
            0 => {
                let o = offset as usize;
                self.bar0[o..o + data.len()].copy_from_slice(data);
                if offset == REG_DMA_LEN && data.len() == 8 {
                    self.run_dma(ctx);
                }
                if offset == REG_IRQ && data.len() == 4 {
                    let v = u32::from_ne_bytes(data.try_into().unwrap());
                    ctx.irqs.trigger(2, v)?;
                }
                Ok(())
            }
            2 => self.bar2.write_at(offset, data).map_err(|_| Errno::FAULT),
            7 => Ok(()),
            _ => Err(Errno::INVAL),
        }
    }

    fn reset(&mut self, _ctx: &DeviceContext) -> Result<(), Errno> {
        self.bar0.fill(0);
        self.events.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn region_io_fds(&self, index: u32) -> Option<Vec<IoEventFd>> {
        (index == 0).then(|| {
            vec![IoEventFd {
                offset: DOORBELL,
                size: 4,
                fd: self.doorbell.clone(),
                flags: 0,
                datamatch: 0,
            }]
        })
    }

    fn client_connected(&mut self, _ctx: &DeviceContext) {
        self.events.connected.fetch_add(1, Ordering::SeqCst);
    }

    fn client_disconnected(&mut self, _ctx: &DeviceContext) {
        self.events.disconnected.fetch_add(1, Ordering::SeqCst);
    }

    fn dma_mapped(&mut self, _ctx: &DeviceContext, map: &DmaMapInfo) {
        self.events.mapped.lock().unwrap().push(map.clone());
    }

    fn dma_unmapped(&mut self, _ctx: &DeviceContext, map: &DmaMapInfo) {
        self.events.unmapped.lock().unwrap().push(map.clone());
    }

    fn irqs_changed(&mut self, _ctx: &DeviceContext, _index: u32) {
        self.events.irq_changes.fetch_add(1, Ordering::SeqCst);
    }

    fn device_feature(
        &mut self,
        _ctx: &DeviceContext,
        flags: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let feature = flags & vfio::VFIO_DEVICE_FEATURE_MASK;
        let probe = flags & vfio::VFIO_DEVICE_FEATURE_PROBE != 0;
        match feature {
            vfio::VFIO_DEVICE_FEATURE_MIGRATION => {
                if flags & vfio::VFIO_DEVICE_FEATURE_SET != 0 {
                    return Err(Errno::INVAL);
                }
                if probe {
                    return Ok(Vec::new());
                }
                Ok(u64::from(vfio::VFIO_MIGRATION_STOP_COPY)
                    .to_ne_bytes()
                    .to_vec())
            }
            vfio::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                if probe {
                    return Ok(Vec::new());
                }
                if flags & vfio::VFIO_DEVICE_FEATURE_SET != 0 {
                    let state =
                        u32::from_ne_bytes(data.get(..4).ok_or(Errno::INVAL)?.try_into().unwrap());
                    if state > 7 {
                        return Err(Errno::INVAL);
                    }
                    self.mig_state = state;
                }
                let mut out = self.mig_state.to_ne_bytes().to_vec();
                out.extend_from_slice(&(-1i32).to_ne_bytes());
                Ok(out)
            }
            _ => Err(Errno::NOTSUP),
        }
    }

    fn mig_data_read(&mut self, _ctx: &DeviceContext, size: u32) -> Result<Vec<u8>, Errno> {
        let n = (size as usize).min(self.mig.len());
        Ok(self.mig.drain(..n).collect())
    }

    fn mig_data_write(&mut self, _ctx: &DeviceContext, data: &[u8]) -> Result<(), Errno> {
        self.mig.extend_from_slice(data);
        Ok(())
    }
}

/// A unique socket path in a fresh temp dir.
pub fn sock_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "emudev-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.sock"))
}

/// Starts a test device server; returns it with the path and the device's event counters.
pub fn start(
    name: &str,
    config: ServerConfig,
) -> (RunningServer<TestDevice>, PathBuf, Arc<Events>) {
    let path = sock_path(name);
    let dev = TestDevice::new();
    let events = dev.events.clone();
    let server = Server::bind(&path, dev, config).unwrap().spawn().unwrap();
    (server, path, events)
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads an eventfd without blocking: its counter, or 0.
pub fn read_eventfd(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// Keeps `DmaProt` in scope for tests that build maps by hand.
pub const RW: DmaProt = DmaProt::RW;
