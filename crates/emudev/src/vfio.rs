//! The bridge to vfio-user: [`VfioUserAdapter`] wraps any device logic written against
//! [`emudev_vfio_user::Device`] and serves it with the emudev object model attached.
//!
//! - Region layout: `DEVICE_GET_REGION_INFO` and `DEVICE_GET_REGION_IO_FDS` are answered from
//!   the [`EmuDev`]'s layout for the regions it declares (its eventfd doorbells become the
//!   ioeventfds); other indexes (config space, say) go to the wrapped device.
//! - Everything else goes to the wrapped device, which keeps working with region offsets.
//! - Transport callbacks become events, after the wrapped device has handled them:
//!   `client_connected` → `ClientConnected`, `client_disconnected` → `ClientDisconnected`,
//!   `dma_mapped`/`dma_unmapped` → `DmaMapped`/`DmaUnmapped`, `irqs_changed` →
//!   `IrqConfigChanged`, a successful `reset` → every queue cleared, then `DeviceReset`.
//! - The server's [`DeviceContext`] (DMA table and IRQ table) is bound to the `EmuDev` on the
//!   first callback, so `get_mem_table`, `get_irq_info` and providers work;
//!   [`bind_server`] binds it as soon as the server exists.
//! - A REGION_WRITE that hits a trapped doorbell of a ready queue is passed on to the attached
//!   provider (`doorbell_rung`) after the wrapped device has handled it.
//!
//! The server calls all of this with its lock on the adapter held: event subscribers must not
//! lock `Server::device()` (emudev's own operations are fine).

use std::fmt;
use std::path::Path;

use emudev_dma::DmaMapInfo;
use emudev_vfio_user::server::{Server, ServerBindError, ServerConfig};
use emudev_vfio_user::{Device, DeviceContext, DeviceInfo, Errno, IoEventFd, IrqInfo, RegionInfo};

use crate::device::EmuDev;
use crate::event::EmuEvent;

/// Serves device logic `D` over vfio-user with an [`EmuDev`] attached.
pub struct VfioUserAdapter<D> {
    emu: EmuDev,
    inner: D,
}

impl<D> fmt::Debug for VfioUserAdapter<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioUserAdapter")
            .field("emu", &self.emu)
            .finish_non_exhaustive()
    }
}

impl<D: Device> VfioUserAdapter<D> {
    /// Wraps `inner`; `emu` is the device's object model (the device logic usually holds a
    /// clone of it too).
    pub fn new(emu: EmuDev, inner: D) -> Self {
        VfioUserAdapter { emu, inner }
    }

    /// The object model.
    pub fn emu(&self) -> &EmuDev {
        &self.emu
    }

    /// The wrapped device logic.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device logic, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Unwraps the device logic.
    pub fn into_inner(self) -> D {
        self.inner
    }

    fn bind(&self, ctx: &DeviceContext) {
        self.emu.bind_context(ctx.clone());
    }
}

impl<D: Device> Device for VfioUserAdapter<D> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.emu
            .region_info(index)
            .or_else(|| self.inner.region_info(index))
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }

    fn region_read(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        self.inner.region_read(ctx, index, offset, data)
    }

    fn region_write(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        self.inner.region_write(ctx, index, offset, data)?;
        self.emu.region_written(index, offset, data);
        Ok(())
    }

    fn reset(&mut self, ctx: &DeviceContext) -> Result<(), Errno> {
        self.bind(ctx);
        self.inner.reset(ctx)?;
        self.emu.device_reset();
        Ok(())
    }

    fn region_io_fds(&self, index: u32) -> Option<Vec<IoEventFd>> {
        if self.emu.region(index).is_some() {
            self.emu.region_io_fds(index)
        } else {
            self.inner.region_io_fds(index)
        }
    }

    fn client_connected(&mut self, ctx: &DeviceContext) {
        self.bind(ctx);
        self.inner.client_connected(ctx);
        self.emu.transport_event(EmuEvent::ClientConnected);
    }

    fn client_disconnected(&mut self, ctx: &DeviceContext) {
        self.inner.client_disconnected(ctx);
        self.emu.transport_event(EmuEvent::ClientDisconnected);
    }

    fn dma_mapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        self.bind(ctx);
        self.inner.dma_mapped(ctx, map);
        self.emu.transport_event(EmuEvent::DmaMapped(map.clone()));
    }

    fn dma_unmapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        self.inner.dma_unmapped(ctx, map);
        self.emu.transport_event(EmuEvent::DmaUnmapped(map.clone()));
    }

    fn irqs_changed(&mut self, ctx: &DeviceContext, index: u32) {
        self.bind(ctx);
        self.inner.irqs_changed(ctx, index);
        self.emu
            .transport_event(EmuEvent::IrqConfigChanged { index });
    }

    fn device_feature(
        &mut self,
        ctx: &DeviceContext,
        flags: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        self.inner.device_feature(ctx, flags, data)
    }

    fn mig_data_read(&mut self, ctx: &DeviceContext, size: u32) -> Result<Vec<u8>, Errno> {
        self.inner.mig_data_read(ctx, size)
    }

    fn mig_data_write(&mut self, ctx: &DeviceContext, data: &[u8]) -> Result<(), Errno> {
        self.inner.mig_data_write(ctx, data)
    }
}

/// Binds a vfio-user server for `adapter` on `path` and binds the server's DMA and IRQ tables
/// to its [`EmuDev`] right away (so providers can attach before any client connects).
pub fn bind_server<D: Device + 'static>(
    path: impl AsRef<Path>,
    adapter: VfioUserAdapter<D>,
    config: ServerConfig,
) -> Result<Server<VfioUserAdapter<D>>, ServerBindError> {
    let emu = adapter.emu.clone();
    let server = Server::bind(path, adapter, config)?;
    emu.bind_context(server.context());
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device::{
        self, Call, Recorder, ToyNic, AQ_LEN, AQ_TAIL, BAR0, BAR2, DQ_DOORBELL, DQ_TAIL,
    };
    use crate::{EmuDevConf, ProviderKind, QueueId, QueuePath};
    use emudev_dma::Iova;
    use emudev_vfio_user::client::Client;
    use emudev_vfio_user::irq::MSIX;
    use std::os::fd::AsFd;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;
    use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;

    fn sock_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("emudev-{tag}-{}.sock", std::process::id()))
    }

    fn next(rx: &Receiver<EmuEvent>) -> EmuEvent {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("an event within 5 s")
    }

    fn eventfd_count(fd: impl AsFd) -> Option<u64> {
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(8) => Some(u64::from_ne_bytes(b)),
            _ => None,
        }
    }

    #[test]
    fn adapter_forwards_and_emits_without_a_socket() {
        use emudev_dma::{DmaProt, DmaTable};
        use emudev_vfio_user::irq::IrqTable;
        use std::sync::Arc;
        let emu = test_device::emu("toy-a");
        let mut a = VfioUserAdapter::new(emu.clone(), ToyNic::new(emu.clone()));
        let (_, rx) = emu.subscribe_channel().expect("subscribe");
        // Layout regions come from the EmuDev, the rest from the device.
        assert_eq!(
            a.region_info(BAR2)
                .expect("bar2")
                .mmap
                .expect("mmap")
                .sparse
                .len(),
            1
        );
        assert_eq!(a.region_info(7).expect("config").size, 256);
        assert_eq!(a.region_info(3).expect("absent").size, 0);
        assert!(a.region_info(9).is_none());
        assert!(a.region_io_fds(BAR2).is_some());
        assert!(a.region_io_fds(BAR0).is_none());
        assert!(a.region_io_fds(7).is_none());
        let ctx = DeviceContext {
            dma: Arc::new(DmaTable::default()),
            irqs: Arc::new(IrqTable::new(&[1, 1, 4, 0, 0])),
        };
        assert!(emu.context().is_none());
        a.client_connected(&ctx);
        assert!(emu.context().is_some());
        let map = DmaMapInfo {
            iova: Iova(0x1000),
            size: 0x1000,
            prot: DmaProt::RW,
            file_offset: 0,
            host: None,
        };
        a.dma_mapped(&ctx, &map);
        a.irqs_changed(&ctx, MSIX);
        a.dma_unmapped(&ctx, &map);
        a.reset(&ctx).expect("reset");
        a.client_disconnected(&ctx);
        assert_eq!(a.inner().log.lock().expect("log").resets, 1);
        // A write the device refuses is not forwarded and raises nothing.
        assert_eq!(a.region_write(&ctx, BAR0, 0x2, &[0; 4]), Err(Errno::INVAL));
        assert_eq!(a.device_feature(&ctx, 0, &[]), Err(Errno::NOTSUP));
        assert_eq!(a.mig_data_read(&ctx, 4), Err(Errno::INVAL));
        assert_eq!(a.mig_data_write(&ctx, &[1]), Err(Errno::INVAL));
        let events: Vec<EmuEvent> = rx.try_iter().collect();
        assert_eq!(
            events,
            vec![
                EmuEvent::ClientConnected,
                EmuEvent::DmaMapped(map.clone()),
                EmuEvent::IrqConfigChanged { index: MSIX },
                EmuEvent::DmaUnmapped(map),
                EmuEvent::DeviceReset,
                EmuEvent::ClientDisconnected,
            ]
        );
        assert!(format!("{a:?}").contains("toy-a"));
        let nic = a.into_inner();
        assert!(nic.log.lock().expect("log").aq_tails.is_empty());
    }

    #[test]
    fn end_to_end_over_a_socket() {
        let path = sock_path("e2e");
        let emu = test_device::emu("toy-e2e");
        let nic = ToyNic::new(emu.clone());
        let nic_log = nic.log.clone();
        let server = bind_server(
            &path,
            VfioUserAdapter::new(emu.clone(), nic),
            ServerConfig::default(),
        )
        .expect("bind");
        // The context is bound before any client, so a provider can attach now.
        emu.configure(EmuDevConf::new(2)).expect("configure");
        emu.start().expect("start");
        let rec = Recorder::new(ProviderKind::Software);
        emu.attach_provider(Box::new(rec.clone())).expect("attach");
        let (_, rx) = emu.subscribe_channel().expect("subscribe");
        let running = server.spawn().expect("spawn");

        let mut client = Client::connect(&path).expect("connect");
        assert_eq!(next(&rx), EmuEvent::ClientConnected);
        // The client sees the layout: BAR2 sparse-mmappable, BAR0 trapped.
        let bar2 = client.region(BAR2).expect("bar2").clone();
        assert!(bar2.flags & VFIO_REGION_INFO_FLAG_MMAP != 0);
        assert_eq!(bar2.sparse.len(), 1);
        assert!(client.region(BAR0).expect("bar0").flags & VFIO_REGION_INFO_FLAG_MMAP == 0);

        // DMA memory: DmaMapped, and the memory table has it.
        let mem = client
            .alloc_dma(0x10_0000, 0x4000, true)
            .expect("alloc dma");
        match next(&rx) {
            EmuEvent::DmaMapped(m) => assert_eq!((m.iova, m.size), (Iova(0x10_0000), 0x4000)),
            other => panic!("expected DmaMapped, got {other:?}"),
        }
        assert_eq!(emu.get_mem_table().expect("table").len(), 1);

        // The driver sets up the admin queue through trapped registers.
        client
            .write_u32(BAR0, test_device::AQ_BASE_LO, 0x10_0000)
            .expect("aq base");
        client
            .write_u32(BAR0, AQ_LEN, test_device::LEN_ENABLE | 16)
            .expect("aq len");
        assert_eq!(next(&rx), EmuEvent::QueueConfigured { queue: QueueId(0) });
        let aq = emu.get_queue_info(QueueId(0)).expect("aq info");
        assert_eq!(
            (aq.base, aq.size, aq.path),
            (Iova(0x10_0000), 16, QueuePath::Control)
        );
        // A bad ring (no entries) is refused back to the client.
        assert!(client
            .write_u32(BAR0, test_device::DQ_LEN, test_device::LEN_ENABLE)
            .is_err());
        client
            .write_u32(BAR0, test_device::DQ_BASE_LO, 0x10_2000)
            .expect("dq base");
        client
            .write_u32(BAR0, test_device::DQ_LEN, test_device::LEN_ENABLE | 64)
            .expect("dq len");
        assert_eq!(next(&rx), EmuEvent::QueueConfigured { queue: QueueId(1) });

        // The software provider reads what the driver put in its ring.
        mem.write(0x2000, b"tx descriptor")
            .expect("client writes its ring");
        let view = rec.view().expect("view");
        let mut b = [0u8; 13];
        view.mem_table()
            .read(Iova(0x10_2000), &mut b)
            .expect("provider reads the ring");
        assert_eq!(&b, b"tx descriptor");

        // Trapped doorbell: the device sees the write, then the provider.
        client.write_u32(BAR0, AQ_TAIL, 3).expect("aq tail");
        assert_eq!(nic_log.lock().expect("log").aq_tails, vec![3]);
        assert!(rec.calls().contains(&Call::Doorbell(QueueId(0), 3)));

        // Mem doorbell: the client stores straight into its mapping of BAR2; the provider
        // polls the same memfd through region_map's SharedMemory. No message is involved.
        assert_eq!(client.map_region(BAR2).expect("map bar2"), 1);
        let before = running.handle().stats().messages;
        client.write_u32(BAR2, DQ_TAIL, 42).expect("dq tail");
        assert_eq!(running.handle().stats().messages, before);
        let db = view.get_db_info(DQ_DOORBELL).expect("db info");
        assert_eq!(db.queue, Some(QueueId(1)));
        assert_eq!(db.mem.expect("mem").read().expect("poll"), 42);

        // EventFd doorbell: GET_REGION_IO_FDS hands out our eventfd.
        let fds = client.get_region_io_fds(BAR2).expect("io fds");
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].0.offset, test_device::EV_OFFSET);
        rustix::io::write(&fds[0].1, &1u64.to_ne_bytes()).expect("client signals");
        let ev = emu.get_db_info(test_device::EV_DOORBELL).expect("ev db");
        let crate::DoorbellKind::EventFd { fd, .. } = ev.kind else {
            panic!("not an eventfd doorbell")
        };
        assert_eq!(eventfd_count(&*fd), Some(1));

        // IRQs: binding shows in get_irq_info; trigger_irq reaches the client's eventfd.
        assert!(!emu.get_irq_info(1).expect("irq").bound);
        let irq_fds = client.enable_irqs(MSIX, 4).expect("irqs");
        assert_eq!(next(&rx), EmuEvent::IrqConfigChanged { index: MSIX });
        assert!(emu.get_irq_info(1).expect("irq").bound);
        assert_eq!(view.trigger_irq(1), Ok(true));
        assert_eq!(eventfd_count(&irq_fds[1]), Some(1));
        assert_eq!(eventfd_count(&irq_fds[0]), None);

        // Attributes work while serving.
        emu.set_attr("link_up", crate::AttrValue::Bool(true))
            .expect("link up");
        assert_eq!(
            next(&rx),
            EmuEvent::AttrChanged {
                name: "link_up".into()
            }
        );

        // Reset clears the queues; the provider stops them.
        client.reset().expect("reset");
        assert_eq!(next(&rx), EmuEvent::DeviceReset);
        let mut cleared = vec![next(&rx), next(&rx)];
        cleared.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            cleared,
            vec![
                EmuEvent::QueueCleared { queue: QueueId(0) },
                EmuEvent::QueueCleared { queue: QueueId(1) }
            ]
        );
        assert!(rec.ready_set().is_empty());
        assert_eq!(nic_log.lock().expect("log").resets, 1);

        // Disconnect: the maps are dropped (DmaUnmapped), then ClientDisconnected.
        client.close();
        match next(&rx) {
            EmuEvent::DmaUnmapped(m) => assert_eq!(m.iova, Iova(0x10_0000)),
            other => panic!("expected DmaUnmapped, got {other:?}"),
        }
        assert_eq!(next(&rx), EmuEvent::ClientDisconnected);
        assert!(emu.get_mem_table().expect("table").is_empty());
        assert!(!emu.get_irq_info(1).expect("irq").bound);

        running.stop().expect("stop server");
        emu.close().expect("close");
        assert!(rec.notes().is_empty(), "{:?}", rec.notes());
    }
}
