//! `NativePciDevice`: a PCI device whose BAR handlers are JavaScript, served over vfio-user.
//!
//! The device is an `emudev-pci` [`PciFunction`] ([`JsFunction`]) behind the [`PciDevice`]
//! adapter: config space (with its RO/RW/RW1C bits, BAR sizing and the PM, MSI, MSI-X and PCI
//! Express capabilities), the MSI-X table and PBA, and mmappable BAR memory are native; the
//! trapped BAR accesses, reset, and (optionally) config writes go to ONE JavaScript dispatcher
//! through a weak threadsafe function (see [`crate::dispatch`] for the protocol, the waiting,
//! and how JavaScript reaches the device while the server thread waits for it).
//!
//! Threads and locks:
//!
//! - `listen(path)` binds the socket on the JS thread and starts the server on its own thread.
//!   The server thread locks the device for each message and, for a trapped access, waits
//!   (bounded, `handlerTimeoutMs`) for the JavaScript handler's value.
//! - JavaScript asks the device for things from the JS thread. What needs no lock (the IRQ
//!   table, the MSI-X table, BAR memory, DMA to fd-backed maps) runs at once. What needs the
//!   device (config space, MSI, INTx) runs as a job: on the waiting server thread when a
//!   handler is being called, else under the device lock, which the JS thread only ever
//!   try-locks, so it never blocks behind a server thread that waits for JavaScript.
//! - `close()` runs on a libuv worker: it ends a pending handler wait, stops and joins the
//!   server thread (which removes the socket file), and releases the threadsafe function.
//!   The JS thread stays free meanwhile, so a handler the server thread waits for can run.
//!
//! Cost: each trapped access wakes the JS thread once (the threadsafe function) and the
//! server thread polls briefly for the answer before sleeping (see [`crate::dispatch`]).
//! Events wake the JS thread too, so only those JavaScript listens to are sent
//! (`setEventMask`, kept up to date by the TypeScript wrapper).
//!
//! Keep-alive: the threadsafe function is weak, and the server thread is a plain thread, so
//! nothing here keeps Node alive. The TypeScript `PciDevice` keeps the process alive while it
//! listens (like a `net.Server`) with a timer of its own, until `close()` or `unref()`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use emudev_dma::{DmaMapInfo, DmaTable, Iova};
use emudev_pci::{
    default_config_write, default_irq_info, default_reset, BarKind, BarMemory, BarSpec, ConfigKind,
    ConfigSpace, FireError, FireOutcome, InterruptPin, IntxOutcome, IrqSink, MsiSpec, MsixMaskMode,
    MsixSpec, MsixTable, PciDevice, PciFunction, PciIds, PcieSpec, PmSpec,
};
use emudev_vfio_user::irq::{IrqTable, ERR, REQ};
use emudev_vfio_user::server::{RunningServer, Server, ServerConfig, ServerHandle};
use emudev_vfio_user::{Device, DeviceContext, DeviceInfo, Errno, IoEventFd, IrqInfo, RegionInfo};
use napi::bindgen_prelude::{AsyncTask, BigInt, Buffer, Either, Function};
use napi::threadsafe_function::ThreadsafeCallContext;
use napi::{Env, Task};
use napi_derive::napi;

use crate::dispatch::{
    dispatch_args, op, Bridge, Call, CtxTask, DispatchArgs, DmaMapEvent, HandlerError, InvokerSlot,
    JsReturn, TsfnInvoker,
};
use crate::error::{closed, errno_error, invalid_arg, io_error, ErrorCode, NativeError};
use crate::server::bind_error;
use crate::{lock, offset_from_js, rejection, u32_from_js, u64_from_bigint, MAX_SAFE_INTEGER};

/// Default bound on a wait for a JavaScript handler.
pub const DEFAULT_HANDLER_TIMEOUT_MS: f64 = 5000.0;

/// Longest handler timeout a spec may ask for (one minute).
pub const MAX_HANDLER_TIMEOUT_MS: f64 = 60_000.0;

/// Largest single `dmaRead`/`configRead`/`barRead` (16 MiB).
pub const MAX_COPY_LENGTH: u64 = 16 << 20;

/// How long a JavaScript call that needs the device lock may wait for it.
const JOB_WAIT: Duration = Duration::from_secs(10);

// ----- the spec ---------------------------------------------------------------------------------

/// PCI identity of a device.
#[napi(object, object_to_js = false, js_name = "NativePciIds")]
#[derive(Debug, Clone)]
pub struct JsPciIds {
    /// Vendor id (16 bits).
    pub vendor_id: u32,
    /// Device id (16 bits).
    pub device_id: u32,
    /// Subsystem vendor id (16 bits, default 0).
    pub subsystem_vendor_id: Option<u32>,
    /// Subsystem id (16 bits, default 0).
    pub subsystem_id: Option<u32>,
    /// 24-bit class code: base class, sub-class, prog-if (default 0xff0000, "unassigned").
    pub class_code: Option<u32>,
    /// Revision id (8 bits, default 0).
    pub revision: Option<u32>,
}

/// One BAR.
#[napi(object, object_to_js = false, js_name = "NativeBarSpec")]
#[derive(Debug)]
pub struct JsBarSpec {
    /// First BAR slot (0-5; 0-4 for a 64-bit BAR).
    pub index: u32,
    /// Size in bytes: a power of two (memory: at least 16; I/O: 4 to 256).
    #[napi(ts_type = "number | bigint")]
    pub size: Either<f64, BigInt>,
    /// Address space (default `'mem32'`).
    #[napi(ts_type = "'mem32' | 'mem64' | 'io'")]
    pub kind: Option<String>,
    /// Prefetchable memory (default false).
    pub prefetchable: Option<bool>,
    /// Back the BAR with shared memory the client may mmap (default false: every access
    /// is trapped to the handlers). The size must be a multiple of the page size.
    pub mmap: Option<bool>,
}

/// An MSI capability.
#[napi(object, object_to_js = false, js_name = "NativeMsiSpec")]
#[derive(Debug, Clone)]
pub struct JsMsiSpec {
    /// Vectors: 1, 2, 4, 8, 16 or 32.
    pub vectors: u32,
    /// Per-vector masking (default false).
    pub per_vector_mask: Option<bool>,
    /// 64-bit message address (default true).
    pub address64: Option<bool>,
    /// Config space offset (default: the next free one from 0x40).
    pub offset: Option<u32>,
}

/// An MSI-X capability with its table and PBA.
#[napi(object, object_to_js = false, js_name = "NativeMsixSpec")]
#[derive(Debug, Clone)]
pub struct JsMsixSpec {
    /// Table size: 1-2048.
    pub vectors: u32,
    /// BAR holding the table.
    pub table_bar: u32,
    /// Offset of the table in it (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u32,
    /// Offset of the PBA in it (8-byte aligned).
    pub pba_offset: u32,
    /// Config space offset (default: the next free one).
    pub offset: Option<u32>,
}

/// Interrupts.
#[napi(object, object_to_js = false, js_name = "NativeIrqSpec")]
#[derive(Debug, Clone)]
pub struct JsIrqSpec {
    /// INTx pin (default `'a'`; `'none'`: no INTx).
    #[napi(ts_type = "'a' | 'b' | 'c' | 'd' | 'none'")]
    pub intx: Option<String>,
    /// MSI capability (default none).
    pub msi: Option<JsMsiSpec>,
    /// MSI-X capability (default none).
    pub msix: Option<JsMsixSpec>,
    /// Offer the ERR interrupt index (default true).
    pub err: Option<bool>,
    /// Offer the REQ interrupt index (default true).
    pub req: Option<bool>,
}

/// Everything `new NativePciDevice(spec, dispatch)` needs besides the dispatcher.
#[napi(object, object_to_js = false, js_name = "NativeDeviceSpec")]
#[derive(Debug)]
pub struct JsDeviceSpec {
    /// A name for messages and memfds (default `"pci"`).
    pub name: Option<String>,
    /// PCI identity.
    pub ids: JsPciIds,
    /// Config space: 256 bytes (`'conventional'`, the default) or 4096 with a PCI Express
    /// capability (`'express'`).
    #[napi(ts_type = "'conventional' | 'express'")]
    pub config: Option<String>,
    /// BARs.
    pub bars: Vec<JsBarSpec>,
    /// Interrupts (default: INTA only).
    pub irqs: Option<JsIrqSpec>,
    /// Add a PCI power management capability (default false).
    pub pm: Option<bool>,
    /// Call the dispatcher for `DEVICE_RESET` (after config space and MSI-X are reset).
    pub handles_reset: Option<bool>,
    /// Call the dispatcher for config space writes instead of applying them (it applies them
    /// with `configWrite`).
    pub handles_config_write: Option<bool>,
    /// Bound on each wait for a handler, in ms (default 5000, 1 to 60000).
    pub handler_timeout_ms: Option<f64>,
}

fn u16_field(v: u32, what: &str) -> napi::Result<u16, ErrorCode> {
    u16::try_from(v).map_err(|_| invalid_arg(format!("{what} must fit in 16 bits, got {v:#x}")))
}

fn u8_field(v: u32, what: &str) -> napi::Result<u8, ErrorCode> {
    u8::try_from(v).map_err(|_| invalid_arg(format!("{what} must fit in 8 bits, got {v:#x}")))
}

fn bar_size(size: &Either<f64, BigInt>, what: &str) -> napi::Result<u64, ErrorCode> {
    match size {
        Either::A(n) => offset_from_js(*n, what),
        Either::B(b) => u64_from_bigint(b, what),
    }
}

/// The parts of a device built from its spec.
struct Built {
    name: String,
    config: ConfigSpace,
    msix: Option<Arc<MsixTable>>,
    memory: Vec<Option<Arc<BarMemory>>>,
    err_irq: bool,
    req_irq: bool,
    handles_reset: bool,
    handles_config_write: bool,
    timeout: Duration,
}

fn build(spec: &JsDeviceSpec) -> napi::Result<Built, ErrorCode> {
    let name = spec.name.clone().unwrap_or_else(|| "pci".to_owned());
    let i = &spec.ids;
    let class_code = i.class_code.unwrap_or(0xff_0000);
    if class_code > 0xff_ffff {
        return Err(invalid_arg(format!(
            "ids.classCode must fit in 24 bits, got {class_code:#x}"
        )));
    }
    let ids = PciIds {
        vendor_id: u16_field(i.vendor_id, "ids.vendorId")?,
        device_id: u16_field(i.device_id, "ids.deviceId")?,
        subsystem_vendor_id: u16_field(
            i.subsystem_vendor_id.unwrap_or(0),
            "ids.subsystemVendorId",
        )?,
        subsystem_id: u16_field(i.subsystem_id.unwrap_or(0), "ids.subsystemId")?,
        revision: u8_field(i.revision.unwrap_or(0), "ids.revision")?,
        class_code,
    };
    let kind = match spec.config.as_deref() {
        None | Some("conventional") => ConfigKind::Conventional,
        Some("express") => ConfigKind::Express,
        Some(other) => {
            return Err(invalid_arg(format!(
                "config must be 'conventional' or 'express', got '{other}'"
            )))
        }
    };
    let irqs = spec.irqs.clone().unwrap_or(JsIrqSpec {
        intx: None,
        msi: None,
        msix: None,
        err: None,
        req: None,
    });
    let pin = match irqs.intx.as_deref() {
        None | Some("a") => InterruptPin::IntA,
        Some("b") => InterruptPin::IntB,
        Some("c") => InterruptPin::IntC,
        Some("d") => InterruptPin::IntD,
        Some("none") => InterruptPin::None,
        Some(other) => {
            return Err(invalid_arg(format!(
                "irqs.intx must be 'a', 'b', 'c', 'd' or 'none', got '{other}'"
            )))
        }
    };
    let mut config = ConfigSpace::new(kind, &ids, pin);
    let mut memory: Vec<Option<Arc<BarMemory>>> = (0..6).map(|_| None).collect();
    for (n, b) in spec.bars.iter().enumerate() {
        let what = format!("bars[{n}]");
        let index = u8_field(b.index, &format!("{what}.index"))?;
        let size = bar_size(&b.size, &format!("{what}.size"))?;
        let mut bar = match b.kind.as_deref() {
            None | Some("mem32") => BarSpec::mem32(index, size),
            Some("mem64") => BarSpec::mem64(index, size),
            Some("io") => BarSpec::io(index, size),
            Some(other) => {
                return Err(invalid_arg(format!(
                    "{what}.kind must be 'mem32', 'mem64' or 'io', got '{other}'"
                )))
            }
        };
        if b.prefetchable == Some(true) {
            bar = bar.prefetchable();
        }
        config
            .add_bar(bar)
            .map_err(|e| invalid_arg(format!("{what}: {e}")))?;
        if b.mmap == Some(true) {
            if bar.kind == BarKind::Io {
                return Err(invalid_arg(format!("{what}: an I/O BAR cannot be mmapped")));
            }
            let mem = BarMemory::new(&format!("{name}-bar{index}"), size, &[])
                .map_err(|e| invalid_arg(format!("{what}: {e}")))?;
            if let Some(slot) = memory.get_mut(usize::from(index)) {
                *slot = Some(Arc::new(mem));
            }
        }
    }
    if spec.pm == Some(true) {
        config
            .add_pm(PmSpec::default(), None)
            .map_err(|e| invalid_arg(format!("pm: {e}")))?;
    }
    let cap_offset = |o: Option<u32>, what: &str| -> napi::Result<Option<u16>, ErrorCode> {
        o.map(|v| u16_field(v, what)).transpose()
    };
    if let Some(m) = &irqs.msi {
        let vectors = u8_field(m.vectors, "irqs.msi.vectors")?;
        let mut s = MsiSpec::new(vectors);
        if m.per_vector_mask == Some(true) {
            s = s.with_masking();
        }
        if m.address64 == Some(false) {
            s = s.address_32();
        }
        config
            .add_msi(s, cap_offset(m.offset, "irqs.msi.offset")?)
            .map_err(|e| invalid_arg(format!("irqs.msi: {e}")))?;
    }
    let mut msix = None;
    if let Some(m) = &irqs.msix {
        let s = MsixSpec::new(
            u16_field(m.vectors, "irqs.msix.vectors")?,
            u8_field(m.table_bar, "irqs.msix.tableBar")?,
            m.table_offset,
            u8_field(m.pba_bar, "irqs.msix.pbaBar")?,
            m.pba_offset,
        );
        let cap = config
            .add_msix(s, cap_offset(m.offset, "irqs.msix.offset")?)
            .map_err(|e| invalid_arg(format!("irqs.msix: {e}")))?;
        msix = Some(Arc::new(MsixTable::new(cap, MsixMaskMode::Auto)));
    }
    if kind == ConfigKind::Express {
        config
            .add_pcie(PcieSpec::default(), None)
            .map_err(|e| invalid_arg(format!("PCI Express capability: {e}")))?;
    }
    let timeout_ms = spec
        .handler_timeout_ms
        .unwrap_or(DEFAULT_HANDLER_TIMEOUT_MS);
    if timeout_ms.fract() != 0.0 || !(1.0..=MAX_HANDLER_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid_arg(format!(
            "handlerTimeoutMs must be an integer from 1 to {MAX_HANDLER_TIMEOUT_MS}, got {timeout_ms}"
        )));
    }
    Ok(Built {
        name,
        config,
        msix,
        memory,
        err_irq: irqs.err != Some(false),
        req_irq: irqs.req != Some(false),
        handles_reset: spec.handles_reset == Some(true),
        handles_config_write: spec.handles_config_write == Some(true),
        // Exact: an integer from 1 to 60000.
        timeout: Duration::from_millis(timeout_ms as u64),
    })
}

// ----- the PCI function ---------------------------------------------------------------------------

/// The PCI function whose BAR handlers are JavaScript.
#[derive(Debug)]
pub struct JsFunction {
    config: ConfigSpace,
    msix: Option<Arc<MsixTable>>,
    memory: Vec<Option<Arc<BarMemory>>>,
    invoker: Arc<InvokerSlot<JsFunction>>,
    bridge: Arc<Bridge<JsFunction>>,
    err_irq: bool,
    req_irq: bool,
    handles_reset: bool,
    handles_config_write: bool,
    timeout: Duration,
    /// Which events JavaScript listens to (bit `1 << op`); see `setEventMask`.
    events: Arc<AtomicU32>,
}

/// Every event and the reset call, as an event mask.
pub const ALL_EVENTS: u32 = (1 << op::RESET)
    | (1 << op::CONNECTED)
    | (1 << op::DISCONNECTED)
    | (1 << op::DMA_MAPPED)
    | (1 << op::DMA_UNMAPPED)
    | (1 << op::IRQS_CHANGED);

impl JsFunction {
    fn wants(&self, op: u32) -> bool {
        self.events.load(Ordering::Relaxed) & (1 << op) != 0
    }

    /// A synchronous call into JavaScript; any failure is an `EIO` for the client (and, unless
    /// JavaScript already saw it, a `handlerError` event).
    fn sync(&mut self, ctx: &DeviceContext, call: Call) -> Result<Vec<u8>, Errno> {
        let (op, offset, size) = match &call {
            Call::Read { offset, size, .. } => (op::READ, *offset, *size),
            Call::Write { offset, data, .. } => (op::WRITE, *offset, data.len() as u32),
            Call::ConfigWrite { offset, data } => (op::CONFIG_WRITE, *offset, data.len() as u32),
            other => (other.op(), 0, 0),
        };
        let Some(invoker) = self.invoker.get() else {
            return Err(Errno::IO);
        };
        let bridge = Arc::clone(&self.bridge);
        let timeout = self.timeout;
        bridge
            .call_sync(self, ctx, timeout, |done| invoker.invoke(call, Some(done)))
            .map_err(|e| {
                // A throw was seen (and reported) by JavaScript itself; a closing device has
                // nobody to tell.
                if !matches!(e, HandlerError::Threw(_) | HandlerError::Closed) {
                    self.event(Call::HandlerError {
                        op,
                        offset,
                        size,
                        reason: e.to_string(),
                    });
                }
                Errno::IO
            })
    }

    /// An event for JavaScript (not waited for), unless nobody listens to it. Handler errors
    /// always go out.
    fn event(&self, call: Call) {
        let op = call.op();
        if op != op::HANDLER_ERROR && !self.wants(op) {
            return;
        }
        if let Some(invoker) = self.invoker.get() {
            let _ = invoker.invoke(call, None);
        }
    }

    /// The PCI model's config write without the INTx follow-up: RO/RW/RW1C bits, MSI-X
    /// enable and function mask (sending vectors they unmask), pending MSI vectors the write
    /// unmasked. A device that handles config writes owns INTx re-signalling.
    fn apply_config_write(
        &mut self,
        ctx: &DeviceContext,
        offset: u64,
        data: &[u8],
    ) -> Result<(), emudev_pci::ConfigAccessError> {
        self.config.write(offset, data)?;
        if let (Some(table), Some(control)) = (self.msix.as_deref(), self.config.msix_control()) {
            table.sync_control(control, &mut IrqSink::msix(&ctx.irqs));
        }
        self.config
            .deliver_pending_msi(&mut IrqSink::msi(&ctx.irqs));
        Ok(())
    }
}

fn map_event(m: &DmaMapInfo) -> DmaMapEvent {
    DmaMapEvent {
        iova: m.iova.0,
        size: m.size,
        prot: m.prot.bits(),
        file_offset: m.file_offset,
    }
}

/// Offsets JavaScript receives as numbers must be exact.
fn js_offset(offset: u64) -> Result<u64, Errno> {
    if offset as f64 > MAX_SAFE_INTEGER {
        return Err(Errno::INVAL);
    }
    Ok(offset)
}

impl PciFunction for JsFunction {
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
        let size = u32::try_from(data.len()).map_err(|_| Errno::INVAL)?;
        let offset = js_offset(offset)?;
        let bytes = self.sync(ctx, Call::Read { bar, offset, size })?;
        if bytes.len() != data.len() {
            self.event(Call::HandlerError {
                op: op::READ,
                offset,
                size,
                reason: format!("{} bytes for a {size}-byte read", bytes.len()),
            });
            return Err(Errno::IO);
        }
        data.copy_from_slice(&bytes);
        Ok(())
    }

    fn bar_write(
        &mut self,
        ctx: &DeviceContext,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let offset = js_offset(offset)?;
        self.sync(
            ctx,
            Call::Write {
                bar,
                offset,
                data: data.to_vec(),
            },
        )
        .map(|_| ())
    }

    fn msix_table(&self) -> Option<&MsixTable> {
        self.msix.as_deref()
    }

    fn bar_memory(&self, bar: u8) -> Option<&BarMemory> {
        self.memory.get(usize::from(bar))?.as_deref()
    }

    fn config_write(&mut self, ctx: &DeviceContext, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if !self.handles_config_write {
            return default_config_write(self, ctx, offset, data);
        }
        // Bounds first, so JavaScript only sees writes the PCI model would take.
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::INVAL)?;
        if end > self.config.size() as u64 {
            return Err(Errno::INVAL);
        }
        self.sync(
            ctx,
            Call::ConfigWrite {
                offset,
                data: data.to_vec(),
            },
        )
        .map(|_| ())
    }

    fn reset(&mut self, ctx: &DeviceContext) -> Result<(), Errno> {
        default_reset(self);
        if self.handles_reset || self.wants(op::RESET) {
            self.sync(ctx, Call::Reset)?;
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            ERR if !self.err_irq => Some(IrqInfo { flags: 0, count: 0 }),
            REQ if !self.req_irq => Some(IrqInfo { flags: 0, count: 0 }),
            i => default_irq_info(&self.config, i),
        }
    }

    fn client_connected(&mut self, _ctx: &DeviceContext) {
        self.event(Call::Connected);
    }

    fn client_disconnected(&mut self, _ctx: &DeviceContext) {
        self.event(Call::Disconnected);
    }

    fn dma_mapped(&mut self, _ctx: &DeviceContext, map: &DmaMapInfo) {
        self.event(Call::DmaMapped(map_event(map)));
    }

    fn dma_unmapped(&mut self, _ctx: &DeviceContext, map: &DmaMapInfo) {
        self.event(Call::DmaUnmapped(map_event(map)));
    }

    fn irqs_changed(&mut self, _ctx: &DeviceContext, index: u32) {
        self.event(Call::IrqsChanged(index));
    }
}

/// The device as the server holds it: the adapter behind a lock that JavaScript shares.
#[derive(Debug, Clone)]
pub struct SharedDevice(Arc<Mutex<PciDevice<JsFunction>>>);

impl Device for SharedDevice {
    fn info(&self) -> DeviceInfo {
        lock(&self.0).info()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        lock(&self.0).region_info(index)
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        lock(&self.0).irq_info(index)
    }

    fn region_read(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), Errno> {
        lock(&self.0).region_read(ctx, index, offset, data)
    }

    fn region_write(
        &mut self,
        ctx: &DeviceContext,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        lock(&self.0).region_write(ctx, index, offset, data)
    }

    fn reset(&mut self, ctx: &DeviceContext) -> Result<(), Errno> {
        lock(&self.0).reset(ctx)
    }

    fn region_io_fds(&self, index: u32) -> Option<Vec<IoEventFd>> {
        lock(&self.0).region_io_fds(index)
    }

    fn client_connected(&mut self, ctx: &DeviceContext) {
        lock(&self.0).client_connected(ctx);
    }

    fn client_disconnected(&mut self, ctx: &DeviceContext) {
        lock(&self.0).client_disconnected(ctx);
    }

    fn dma_mapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        lock(&self.0).dma_mapped(ctx, map);
    }

    fn dma_unmapped(&mut self, ctx: &DeviceContext, map: &DmaMapInfo) {
        lock(&self.0).dma_unmapped(ctx, map);
    }

    fn irqs_changed(&mut self, ctx: &DeviceContext, index: u32) {
        lock(&self.0).irqs_changed(ctx, index);
    }
}

// ----- the JavaScript class -----------------------------------------------------------------------

/// Counters of a `NativePciDevice` (exact up to 2^53).
#[napi(object, object_from_js = false, js_name = "PciDeviceStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsPciDeviceStats {
    /// Clients accepted so far.
    pub clients: f64,
    /// Messages received.
    pub messages: f64,
    /// Requests answered with an error.
    pub errors: f64,
    /// Server-to-client DMA requests sent.
    pub dma_requests: f64,
    /// Whether a client is connected now.
    pub connected: bool,
    /// Synchronous handler calls made.
    pub handler_calls: f64,
    /// Of those, the ones that failed (threw, returned a bad value, timed out...).
    pub handler_errors: f64,
    /// Of those, the ones that timed out.
    pub handler_timeouts: f64,
    /// Device operations JavaScript ran on the server thread while a handler was called.
    pub routed_jobs: f64,
}

/// One vector of the IRQ table (`irqState`).
#[napi(object, object_from_js = false, js_name = "IrqVectorState")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsIrqVectorState {
    /// The client bound an eventfd.
    pub has_eventfd: bool,
    /// The client masked the vector.
    pub masked: bool,
    /// It fired while masked; it is signalled when unmasked.
    pub pending: bool,
}

/// What the guest programmed into the command register and interrupt capabilities.
#[napi(object, object_from_js = false, js_name = "PciState")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsPciState {
    /// Command register.
    pub command: u32,
    /// Status register.
    pub status: u32,
    /// Command: bus master enable.
    pub bus_master: bool,
    /// Command: INTx disable.
    pub intx_disabled: bool,
    /// Status: the INTx line is asserted.
    pub interrupt_status: bool,
    /// MSI enable.
    pub msi_enabled: bool,
    /// MSI-X enable.
    pub msix_enabled: bool,
}

/// One entry of the DMA table (`dmaMappings`).
#[napi(object, object_from_js = false, js_name = "DmaMapping")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsDmaMapping {
    /// First IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// Rights (READ = 1, WRITE = 2).
    pub prot: u32,
    /// Whether the client passed an fd (else the memory is reached by DMA_READ/DMA_WRITE).
    pub fd_backed: bool,
}

#[derive(Debug)]
enum Listen {
    Idle,
    Listening {
        path: String,
        running: RunningServer<SharedDevice>,
        handle: ServerHandle,
    },
    Closed,
}

/// A PCI device whose BAR handlers are JavaScript (see `PciDevice` in the TypeScript API,
/// which wraps this class).
#[napi]
#[derive(Debug)]
pub struct NativePciDevice {
    name: String,
    device: Arc<Mutex<PciDevice<JsFunction>>>,
    bridge: Arc<Bridge<JsFunction>>,
    invoker: Arc<InvokerSlot<JsFunction>>,
    msix: Option<Arc<MsixTable>>,
    memory: Vec<Option<Arc<BarMemory>>>,
    /// The DMA and IRQ tables JavaScript uses: a standalone pair until `listen`, then the
    /// server's.
    ctx: Arc<Mutex<DeviceContext>>,
    closed: Arc<AtomicBool>,
    state: Arc<Mutex<Listen>>,
    /// Held for the whole of a `close()`, so a second one waits for the first.
    close_lock: Arc<Mutex<()>>,
    /// The event mask the function reads.
    events: Arc<AtomicU32>,
}

/// The outcome of an interrupt request, as JavaScript sees it.
fn fire_outcome(r: Result<FireOutcome, FireError>) -> napi::Result<&'static str, ErrorCode> {
    match r {
        Ok(FireOutcome::Delivered) => Ok("delivered"),
        Ok(FireOutcome::Pending) => Ok("pending"),
        Ok(FireOutcome::Disabled) => Ok("disabled"),
        Err(FireError::Delivery(Errno::NOENT)) => Ok("unbound"),
        Err(FireError::Delivery(e)) => Err(errno_error(e.raw_os_error(), "interrupt delivery")),
        Err(e @ (FireError::NoCapability | FireError::BadVector { .. })) => {
            Err(invalid_arg(e.to_string()))
        }
    }
}

/// Whether a DMA range touches a map without an fd (reached by DMA_READ/DMA_WRITE messages,
/// which only the server thread can exchange while it is busy with a handler).
fn needs_messages(dma: &DmaTable, iova: u64, len: u64) -> bool {
    let Some(end) = iova.checked_add(len) else {
        return false;
    };
    let mut cur = iova;
    while cur < end {
        match dma.find(Iova(cur)) {
            Some(m) if m.host.is_some() => cur = m.end(),
            Some(_) => return true,
            // A hole: the access fails wherever it runs.
            None => return false,
        }
    }
    false
}

impl NativePciDevice {
    /// Builds the device around `invoker` (the dispatcher, or a test double).
    pub fn with_invoker(
        spec: &JsDeviceSpec,
        make_invoker: impl FnOnce() -> napi::Result<
            Arc<dyn crate::dispatch::Invoke<JsFunction>>,
            ErrorCode,
        >,
    ) -> napi::Result<Self, ErrorCode> {
        let built = build(spec)?;
        let invoker = Arc::new(InvokerSlot::new(make_invoker()?));
        let bridge = Arc::new(Bridge::default());
        let events = Arc::new(AtomicU32::new(ALL_EVENTS));
        let function = JsFunction {
            config: built.config,
            msix: built.msix.clone(),
            memory: built.memory.clone(),
            invoker: invoker.clone(),
            bridge: bridge.clone(),
            err_irq: built.err_irq,
            req_irq: built.req_irq,
            handles_reset: built.handles_reset,
            handles_config_write: built.handles_config_write,
            timeout: built.timeout,
            events: events.clone(),
        };
        let pci = PciDevice::new(function);
        pci.validate()
            .map_err(|e| invalid_arg(format!("inconsistent device layout: {e}")))?;
        let counts: Vec<u32> = (0..pci.info().num_irqs)
            .map(|i| pci.irq_info(i).map_or(0, |q| q.count))
            .collect();
        let ctx = DeviceContext {
            dma: Arc::new(DmaTable::new(emudev_dma::DmaLimits::default())),
            irqs: Arc::new(IrqTable::new(&counts)),
        };
        Ok(NativePciDevice {
            name: built.name,
            device: Arc::new(Mutex::new(pci)),
            bridge,
            invoker,
            msix: built.msix,
            memory: built.memory,
            ctx: Arc::new(Mutex::new(ctx)),
            closed: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(Listen::Idle)),
            close_lock: Arc::new(Mutex::new(())),
            events,
        })
    }

    fn check_open(&self) -> napi::Result<(), ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativePciDevice"));
        }
        Ok(())
    }

    fn context(&self) -> napi::Result<DeviceContext, ErrorCode> {
        self.check_open()?;
        Ok(lock(&self.ctx).clone())
    }

    /// Binds `path` and starts the server thread.
    pub fn start(&self, path: &str) -> napi::Result<(), ErrorCode> {
        self.check_open()?;
        let mut state = lock(&self.state);
        match &*state {
            Listen::Idle => {}
            Listen::Listening { path: p, .. } => {
                return Err(invalid_arg(format!("{} already listens on {p}", self.name)))
            }
            Listen::Closed => return Err(closed("NativePciDevice")),
        }
        let server = Server::bind(
            path,
            SharedDevice(self.device.clone()),
            ServerConfig::default(),
        )
        .map_err(|e| bind_error(&e))?;
        let ctx = server.context();
        let handle = server.handle();
        // On a spawn failure the server is dropped, which removes the socket.
        let running = server
            .spawn()
            .map_err(|e| io_error(&e, "cannot start the server thread"))?;
        *lock(&self.ctx) = ctx;
        *state = Listen::Listening {
            path: path.to_owned(),
            running,
            handle,
        };
        Ok(())
    }

    /// Runs `f` with the device: on the server thread if it is waiting for a handler, else
    /// here under the device lock (try-locked: see the module documentation).
    pub fn with_function<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut JsFunction, &DeviceContext) -> R + Send + 'static,
    ) -> napi::Result<R, ErrorCode> {
        let ctx = self.context()?;
        let (tx, rx) = mpsc::sync_channel(1);
        let mut job: crate::dispatch::Job<JsFunction> = Box::new(move |t, c| {
            let _ = tx.send(f(t, c));
        });
        let deadline = Instant::now() + JOB_WAIT;
        loop {
            job = match self.bridge.try_route(job) {
                Ok(()) => break,
                Err(job) => job,
            };
            match self.device.try_lock() {
                Ok(mut dev) => {
                    job(dev.function_mut(), &ctx);
                    break;
                }
                Err(TryLockError::Poisoned(p)) => {
                    job(p.into_inner().function_mut(), &ctx);
                    break;
                }
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(napi::Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "{}: the device stayed busy for {} s",
                                self.name,
                                JOB_WAIT.as_secs()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()) + JOB_WAIT)
            .map_err(|_| {
                napi::Error::new(
                    ErrorCode::Timeout,
                    format!("{}: the device operation did not complete", self.name),
                )
            })
    }

    /// Runs `f` with the DMA/IRQ context: on the waiting server thread when the access needs
    /// DMA messages and a handler call is in progress, else right here.
    fn with_context<R: Send + 'static>(
        &self,
        on_server: bool,
        f: impl FnOnce(&DeviceContext) -> R + Send + 'static,
    ) -> napi::Result<R, ErrorCode> {
        let ctx = self.context()?;
        if !on_server {
            return Ok(f(&ctx));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let task: CtxTask = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        match self.bridge.try_route_task(task) {
            Ok(()) => rx.recv_timeout(JOB_WAIT).map_err(|_| {
                napi::Error::new(
                    ErrorCode::Timeout,
                    format!("{}: the DMA did not complete", self.name),
                )
            }),
            Err(task) => {
                task(&ctx);
                rx.recv()
                    .map_err(|_| invalid_arg("the DMA task did not run"))
            }
        }
    }

    /// The work of `close()`.
    fn close_task(&self) -> ClosePciDevice {
        self.closed.store(true, Ordering::SeqCst);
        self.bridge.close();
        ClosePciDevice {
            state: self.state.clone(),
            close_lock: self.close_lock.clone(),
            invoker: self.invoker.clone(),
        }
    }

    fn bar_memory(&self, bar: u32) -> napi::Result<&Arc<BarMemory>, ErrorCode> {
        usize::try_from(bar)
            .ok()
            .and_then(|b| self.memory.get(b))
            .and_then(Option::as_ref)
            .ok_or_else(|| invalid_arg(format!("BAR{bar} has no shared memory (spec mmap: true)")))
    }
}

fn copy_length(length: f64) -> napi::Result<usize, ErrorCode> {
    let length = offset_from_js(length, "length")?;
    if length > MAX_COPY_LENGTH {
        return Err(invalid_arg(format!(
            "length {length} is more than the {MAX_COPY_LENGTH} bytes one copy may move"
        )));
    }
    // At most 16 MiB: fits.
    Ok(length as usize)
}

#[napi]
impl NativePciDevice {
    /// Builds the device from `spec`; `dispatch` receives every handler call as
    /// `(op, a, b, c, value, data)` (see `src/device.ts`, which provides it).
    ///
    /// Throws `ERR_EMUDEV_INVALID_ARG` with a message naming the bad part of the spec.
    #[napi(constructor)]
    pub fn new(
        spec: JsDeviceSpec,
        #[napi(
            ts_arg_type = "(op: number, a: number, b: number, c: number, value: number | bigint | null, data: Buffer | null) => number | bigint | Buffer | undefined | null"
        )]
        dispatch: Function<'_, DispatchArgs, JsReturn>,
    ) -> napi::Result<Self, ErrorCode> {
        Self::with_invoker(&spec, || {
            let tsfn = dispatch
                .build_threadsafe_function::<Call>()
                .weak::<true>()
                .callee_handled::<false>()
                .build_callback(|ctx: ThreadsafeCallContext<Call>| Ok(dispatch_args(ctx.value)))
                .map_err(|e| invalid_arg(format!("dispatch: {e}")))?;
            Ok(Arc::new(TsfnInvoker::new(tsfn)))
        })
    }

    /// The name from the spec.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The socket path while listening, else null.
    #[napi(getter)]
    pub fn path(&self) -> Option<String> {
        match &*lock(&self.state) {
            Listen::Listening { path, .. } => Some(path.clone()),
            Listen::Idle | Listen::Closed => None,
        }
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Serves the device on the UNIX socket at `path` (mode 0600), from a thread of its own.
    ///
    /// Throws `ERR_EMUDEV_SOCKET_IN_USE`, `ERR_EMUDEV_NOT_A_SOCKET` or `ERR_VFU_<ERRNO>` as
    /// `NativeServer.listenEdu` does, `ERR_EMUDEV_INVALID_ARG` when already listening and
    /// `ERR_EMUDEV_CLOSED` after `close()`.
    #[napi]
    pub fn listen(&self, path: String) -> napi::Result<(), ErrorCode> {
        self.start(&path)
    }

    /// Chooses which events the dispatcher receives: bit `1 << op` for `reset` (2),
    /// `connected` (4), `disconnected` (5), `dmaMapped` (6), `dmaUnmapped` (7) and
    /// `irqsChanged` (8); all are on until the first call. An event nobody listens to then
    /// costs no wake-up of the JavaScript thread. Handler errors are always delivered, and
    /// `reset` always reaches a device built with `handlesReset`.
    #[napi]
    pub fn set_event_mask(&self, mask: u32) {
        self.events.store(mask & ALL_EVENTS, Ordering::Relaxed);
    }

    /// Server and handler counters.
    #[napi]
    pub fn stats(&self) -> napi::Result<JsPciDeviceStats, ErrorCode> {
        self.check_open()?;
        let server = match &*lock(&self.state) {
            Listen::Listening { handle, .. } => handle.stats(),
            Listen::Idle | Listen::Closed => Default::default(),
        };
        let s = self.bridge.stats();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        Ok(JsPciDeviceStats {
            clients: server.clients as f64,
            messages: server.messages as f64,
            errors: server.errors as f64,
            dma_requests: server.dma_requests as f64,
            connected: server.connected,
            handler_calls: n(&s.calls),
            handler_errors: n(&s.errors),
            handler_timeouts: n(&s.timeouts),
            routed_jobs: n(&s.jobs),
        })
    }

    /// Signals vector `vector` of IRQ `index` (INTx 0, MSI 1, MSI-X 2, ERR 3, REQ 4) through
    /// the IRQ table: `'delivered'` (eventfd written), `'latched'` (the client masked it; sent
    /// on unmask) or `'unbound'` (no eventfd). It does not look at config space: see `fireMsi`,
    /// `fireMsix` and `setIntx` for the capability-aware ways. Throws `ERR_EMUDEV_INVALID_ARG`
    /// for an index or vector the device does not have.
    #[napi(ts_return_type = "'delivered' | 'latched' | 'unbound'")]
    pub fn irq(&self, index: f64, vector: f64) -> napi::Result<&'static str, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let vector = u32_from_js(vector, "vector")?;
        match self.context()?.irqs.trigger(index, vector) {
            Ok(true) => Ok("delivered"),
            Ok(false) => Ok("latched"),
            Err(Errno::NOENT) => Ok("unbound"),
            Err(Errno::INVAL) => Err(invalid_arg(format!(
                "{} has no IRQ {index} vector {vector}",
                self.name
            ))),
            Err(e) => Err(errno_error(e.raw_os_error(), "interrupt delivery")),
        }
    }

    /// The IRQ table's view of one vector, or null for one the device does not have.
    #[napi]
    pub fn irq_state(
        &self,
        index: f64,
        vector: f64,
    ) -> napi::Result<Option<JsIrqVectorState>, ErrorCode> {
        let index = u32_from_js(index, "index")?;
        let vector = u32_from_js(vector, "vector")?;
        Ok(self
            .context()?
            .irqs
            .state(index, vector)
            .map(|s| JsIrqVectorState {
                has_eventfd: s.has_eventfd,
                masked: s.masked,
                pending: s.pending,
            }))
    }

    /// Fires MSI vector `vector` through the MSI capability: `'disabled'` if the guest has not
    /// enabled MSI, `'pending'` if the vector is masked, else `'delivered'` / `'unbound'`.
    #[napi(ts_return_type = "'delivered' | 'pending' | 'disabled' | 'unbound'")]
    pub fn fire_msi(&self, vector: f64) -> napi::Result<&'static str, ErrorCode> {
        let vector = u32_from_js(vector, "vector")?;
        let vector =
            u8::try_from(vector).map_err(|_| invalid_arg("MSI vector must be below 32"))?;
        let r = self
            .with_function(move |f, ctx| f.config.fire_msi(vector, &mut IrqSink::msi(&ctx.irqs)))?;
        fire_outcome(r)
    }

    /// Fires MSI-X vector `vector` through the MSI-X table (enable, function mask, entry
    /// masks, pending bits): `'delivered'`, `'pending'`, `'disabled'` or `'unbound'`.
    #[napi(ts_return_type = "'delivered' | 'pending' | 'disabled' | 'unbound'")]
    pub fn fire_msix(&self, vector: f64) -> napi::Result<&'static str, ErrorCode> {
        let vector = u32_from_js(vector, "vector")?;
        let vector =
            u16::try_from(vector).map_err(|_| invalid_arg("MSI-X vector must be below 2048"))?;
        let table = self
            .msix
            .as_ref()
            .ok_or_else(|| invalid_arg(format!("{} has no MSI-X capability", self.name)))?;
        let ctx = self.context()?;
        fire_outcome(table.fire(vector, &mut IrqSink::msix(&ctx.irqs)))
    }

    /// Sets the INTx level: the status register's interrupt bit follows it, and a rising edge
    /// is signalled when the guest allows INTx (not disabled, MSI and MSI-X off).
    #[napi(
        ts_return_type = "'signalled' | 'latched' | 'suppressed' | 'unchanged' | 'lowered' | 'unbound'"
    )]
    pub fn set_intx(&self, level: bool) -> napi::Result<&'static str, ErrorCode> {
        let r = self.with_function(move |f, ctx| f.config.set_intx(&ctx.irqs, level))?;
        match r {
            Ok(IntxOutcome::Signalled) => Ok("signalled"),
            Ok(IntxOutcome::Latched) => Ok("latched"),
            Ok(IntxOutcome::Suppressed) => Ok("suppressed"),
            Ok(IntxOutcome::Unchanged) => Ok("unchanged"),
            Ok(IntxOutcome::Lowered) => Ok("lowered"),
            Err(Errno::NOENT) => Ok("unbound"),
            Err(e) => Err(errno_error(e.raw_os_error(), "INTx delivery")),
        }
    }

    /// Sets only the status register's interrupt bit (for devices that signal INTx with `irq`
    /// and keep the bit in step themselves).
    #[napi]
    pub fn set_interrupt_status(&self, asserted: bool) -> napi::Result<(), ErrorCode> {
        self.with_function(move |f, _| f.config.set_interrupt_status(asserted))
    }

    /// The command register and interrupt enables, as the guest programmed them.
    #[napi]
    pub fn pci_state(&self) -> napi::Result<JsPciState, ErrorCode> {
        self.with_function(|f, _| {
            let c = &f.config;
            JsPciState {
                command: u32::from(c.command()),
                status: u32::from(c.status()),
                bus_master: c.bus_master(),
                intx_disabled: c.intx_disabled(),
                interrupt_status: c.interrupt_status(),
                msi_enabled: c.msi_enabled(),
                msix_enabled: c.msix_enabled(),
            }
        })
    }

    /// Reads `length` bytes of config space at `offset`.
    #[napi]
    pub fn config_read(&self, offset: f64, length: f64) -> napi::Result<Buffer, ErrorCode> {
        let offset = offset_from_js(offset, "offset")?;
        let length = copy_length(length)?;
        self.with_function(move |f, _| {
            let mut out = vec![0u8; length];
            f.config.read(offset, &mut out).map(|()| out)
        })?
        .map(Buffer::from)
        .map_err(|e| invalid_arg(format!("config read: {e}")))
    }

    /// Writes config space as a guest write would, minus the INTx follow-up: RO/RW/RW1C bits,
    /// BAR sizing, MSI-X enable and function mask, pending MSI vectors the write unmasked. A
    /// device with a `configWrite` handler calls this to apply the write.
    #[napi]
    pub fn config_write(&self, offset: f64, data: Buffer) -> napi::Result<(), ErrorCode> {
        let offset = offset_from_js(offset, "offset")?;
        let data = data.to_vec();
        self.with_function(move |f, ctx| f.apply_config_write(ctx, offset, &data))?
            .map_err(|e| invalid_arg(format!("config write: {e}")))
    }

    /// Reads `length` bytes of client memory at `iova` through the DMA table.
    ///
    /// Throws `ERR_VFU_EFAULT` for memory the client has not mapped, `ERR_VFU_EACCES` for a
    /// map that does not allow reading.
    #[napi]
    pub fn dma_read(&self, iova: BigInt, length: f64) -> napi::Result<Buffer, ErrorCode> {
        let iova = u64_from_bigint(&iova, "iova")?;
        let length = copy_length(length)?;
        let ctx = self.context()?;
        let on_server = self.bridge.is_waiting() && needs_messages(&ctx.dma, iova, length as u64);
        let r = self.with_context(on_server, move |c| {
            let mut out = vec![0u8; length];
            c.dma.read(Iova(iova), &mut out).map(|()| out)
        })?;
        r.map(Buffer::from).map_err(|e| {
            errno_error(
                e.errno(),
                &format!("DMA read of {length} bytes at {iova:#x}"),
            )
        })
    }

    /// Writes `data` to client memory at `iova` through the DMA table.
    #[napi]
    pub fn dma_write(&self, iova: BigInt, data: Buffer) -> napi::Result<(), ErrorCode> {
        let iova = u64_from_bigint(&iova, "iova")?;
        let data = data.to_vec();
        let len = data.len();
        let ctx = self.context()?;
        let on_server = self.bridge.is_waiting() && needs_messages(&ctx.dma, iova, len as u64);
        self.with_context(on_server, move |c| c.dma.write(Iova(iova), &data))?
            .map_err(|e| errno_error(e.errno(), &format!("DMA write of {len} bytes at {iova:#x}")))
    }

    /// The client's DMA maps now.
    #[napi]
    pub fn dma_mappings(&self) -> napi::Result<Vec<JsDmaMapping>, ErrorCode> {
        Ok(self
            .context()?
            .dma
            .mappings()
            .iter()
            .map(|m| JsDmaMapping {
                iova: m.iova.0,
                size: m.size,
                prot: m.prot.bits(),
                fd_backed: m.host.is_some(),
            })
            .collect())
    }

    /// Reads `length` bytes of a BAR's shared memory (`mmap: true` in the spec) at `offset`.
    #[napi]
    pub fn bar_read(&self, bar: f64, offset: f64, length: f64) -> napi::Result<Buffer, ErrorCode> {
        let bar = u32_from_js(bar, "bar")?;
        let offset = offset_from_js(offset, "offset")?;
        let length = copy_length(length)?;
        self.check_open()?;
        let mem = self.bar_memory(bar)?;
        let mut out = vec![0u8; length];
        mem.memory()
            .read_at(offset, &mut out)
            .map_err(|e| invalid_arg(format!("BAR{bar} memory read: {e}")))?;
        Ok(out.into())
    }

    /// Writes `data` into a BAR's shared memory at `offset` (the client sees it at once
    /// through its mapping).
    #[napi]
    pub fn bar_write(&self, bar: f64, offset: f64, data: Buffer) -> napi::Result<(), ErrorCode> {
        let bar = u32_from_js(bar, "bar")?;
        let offset = offset_from_js(offset, "offset")?;
        self.check_open()?;
        self.bar_memory(bar)?
            .memory()
            .write_at(offset, &data)
            .map_err(|e| invalid_arg(format!("BAR{bar} memory write: {e}")))
    }

    /// Stops serving (on a worker thread): ends a pending handler wait, disconnects the
    /// client, joins the server thread, removes the socket file and releases the dispatcher.
    /// Idempotent: a second call resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<ClosePciDevice> {
        AsyncTask::new(self.close_task())
    }
}

impl Drop for NativePciDevice {
    /// The safety net for a device collected without `close()` (normally only at process
    /// exit: the TypeScript wrapper keeps a listening device reachable). The pending handler
    /// wait is ended first, so the join cannot wait for this (JS) thread.
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.bridge.close();
            let _ = ClosePciDevice {
                state: self.state.clone(),
                close_lock: self.close_lock.clone(),
                invoker: self.invoker.clone(),
            }
            .run();
        }
    }
}

/// The work behind `NativePciDevice.close()`.
#[derive(Debug)]
pub struct ClosePciDevice {
    state: Arc<Mutex<Listen>>,
    close_lock: Arc<Mutex<()>>,
    invoker: Arc<InvokerSlot<JsFunction>>,
}

impl ClosePciDevice {
    fn run(&self) -> Result<(), NativeError> {
        let _one_at_a_time = lock(&self.close_lock);
        // Out of the state lock before joining: JavaScript reads the state (path, stats) and
        // must never wait for the server thread.
        let taken = std::mem::replace(&mut *lock(&self.state), Listen::Closed);
        let result = match taken {
            Listen::Listening { running, .. } => running
                .stop()
                .map_err(|e| io_error(&e, "stopping the server")),
            Listen::Idle | Listen::Closed => Ok(()),
        };
        self.invoker.release();
        result
    }
}

impl Task for ClosePciDevice {
    type Output = Result<(), NativeError>;
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<()> {
        output.map_err(|e| rejection(env, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{DoneSender, Invoke, Outcome};
    use emudev_vfio_user::client::{Client, ClientConfig};
    use std::path::PathBuf;
    use std::sync::mpsc::Sender;
    use std::thread;

    /// What the fake JS thread does with each call.
    type Handler = dyn Fn(&NativePciDevice, &Call) -> Outcome + Send + Sync;

    /// A stand-in for the JS thread: a thread that runs `handler` for each call, with the
    /// device at hand like a JavaScript handler has it.
    struct FakeJs {
        tx: Mutex<Sender<(Call, Option<DoneSender<JsFunction>>)>>,
    }

    impl Invoke<JsFunction> for FakeJs {
        fn invoke(
            &self,
            call: Call,
            done: Option<DoneSender<JsFunction>>,
        ) -> Result<(), HandlerError> {
            lock(&self.tx)
                .send((call, done))
                .map_err(|_| HandlerError::Undelivered("fake JS thread gone".into()))
        }
    }

    struct Rig {
        dev: Arc<NativePciDevice>,
        events: Arc<Mutex<Vec<Call>>>,
        path: PathBuf,
        js: Option<thread::JoinHandle<()>>,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = self.dev.close_task().run();
            if let Some(j) = self.js.take() {
                let _ = j.join();
            }
        }
    }

    fn spec(handles_config_write: bool) -> JsDeviceSpec {
        JsDeviceSpec {
            name: Some("test".into()),
            ids: JsPciIds {
                vendor_id: 0x1234,
                device_id: 0x11e8,
                subsystem_vendor_id: Some(0x1af4),
                subsystem_id: Some(0x1100),
                class_code: Some(0x00ff00),
                revision: Some(0x10),
            },
            config: None,
            bars: vec![
                JsBarSpec {
                    index: 0,
                    size: Either::A(0x1000 as f64),
                    kind: None,
                    prefetchable: None,
                    mmap: None,
                },
                JsBarSpec {
                    index: 2,
                    size: Either::A(rustix::param::page_size() as f64),
                    kind: Some("mem64".into()),
                    prefetchable: Some(true),
                    mmap: Some(true),
                },
            ],
            irqs: Some(JsIrqSpec {
                intx: Some("a".into()),
                msi: Some(JsMsiSpec {
                    vectors: 1,
                    per_vector_mask: None,
                    address64: None,
                    offset: Some(0x40),
                }),
                msix: None,
                err: Some(false),
                req: None,
            }),
            pm: None,
            handles_reset: Some(true),
            handles_config_write: Some(handles_config_write),
            handler_timeout_ms: Some(300.0),
        }
    }

    fn rig(name: &str, spec: JsDeviceSpec, handler: Arc<Handler>) -> Rig {
        let (tx, rx) = mpsc::channel::<(Call, Option<DoneSender<JsFunction>>)>();
        let fake: Arc<dyn Invoke<JsFunction>> = Arc::new(FakeJs { tx: Mutex::new(tx) });
        let dev = Arc::new(NativePciDevice::with_invoker(&spec, || Ok(fake)).expect("device"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (dev2, ev2) = (dev.clone(), events.clone());
        // The fake JS thread holds the device weakly in spirit: it stops when the device's
        // invoker is released (the channel closes).
        let js = thread::spawn(move || {
            for (call, done) in rx {
                match done {
                    Some(d) => d.send(handler(&dev2, &call)),
                    None => lock(&ev2).push(call),
                }
            }
        });
        let dir =
            std::env::temp_dir().join(format!("emudev-node-dev-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("d.sock");
        dev.start(path.to_str().expect("UTF-8 path"))
            .expect("listen");
        Rig {
            dev,
            events,
            path,
            js: Some(js),
        }
    }

    fn connect(path: &std::path::Path) -> Client {
        Client::connect_with(
            path,
            ClientConfig {
                timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            },
        )
        .expect("connect")
    }

    /// Register file of the fake device: BAR0 offset 0 reads 0xfeedc0de; offset 4 stores.
    fn regs_handler(store: Arc<Mutex<u32>>) -> Arc<Handler> {
        Arc::new(move |dev, call| match call {
            Call::Read {
                offset: 0, size: 4, ..
            } => Ok(0xfeed_c0deu32.to_le_bytes().to_vec()),
            Call::Read {
                offset: 4, size: 4, ..
            } => Ok(lock(&store).to_le_bytes().to_vec()),
            // A read that needs the device lock while the server thread waits.
            Call::Read {
                offset: 8, size: 4, ..
            } => {
                let st = dev
                    .pci_state()
                    .map_err(|e| HandlerError::Threw(e.reason.clone()))?;
                Ok(st.command.to_le_bytes().to_vec())
            }
            Call::Read { offset: 12, .. } => Err(HandlerError::Threw("boom".into())),
            Call::Read { offset: 16, .. } => Err(HandlerError::BadValue("undefined".into())),
            Call::Read { offset: 20, .. } => {
                thread::sleep(Duration::from_millis(400));
                Ok(vec![0; 4])
            }
            Call::Write {
                offset: 4, data, ..
            } => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                *lock(&store) = u32::from_le_bytes(b);
                Ok(Vec::new())
            }
            Call::ConfigWrite { offset, data } => {
                let st = dev.config_write(*offset as f64, data.clone().into());
                st.map_err(|e| HandlerError::Threw(e.reason.clone()))?;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        })
    }

    #[test]
    fn handlers_answer_reads_and_writes_through_a_real_socket() {
        let store = Arc::new(Mutex::new(0));
        let r = rig("rw", spec(false), regs_handler(store.clone()));
        let mut c = connect(&r.path);
        assert_eq!(c.read_u32(0, 0).expect("read id"), 0xfeed_c0de);
        c.write_u32(0, 4, 0x1234_5678).expect("write");
        assert_eq!(*lock(&store), 0x1234_5678);
        assert_eq!(c.read_u32(0, 4).expect("read back"), 0x1234_5678);
        // The handler asks for config state while the server thread waits for it.
        c.write_u32(7, 4, 0x0006)
            .expect("command: memory + bus master");
        assert_eq!(c.read_u32(0, 8).expect("read via a routed job"), 6);
        assert!(r.dev.stats().expect("stats").routed_jobs >= 1.0);
        // Config space: the PCI model's, with the ids and the MSI capability at 0x40.
        assert_eq!(c.read_u32(7, 0).expect("ids"), 0x11e8_1234);
        let mut cap = [0u8; 2];
        c.region_read(7, 0x40, &mut cap).expect("cap");
        assert_eq!(cap[0], 0x05, "MSI capability id");
        // IRQ info: ERR absent as asked, REQ present.
        assert_eq!(c.get_irq_info(3).expect("err").count, 0);
        assert_eq!(c.get_irq_info(4).expect("req").count, 1);
        assert_eq!(c.get_irq_info(1).expect("msi").count, 1);
        c.close();
    }

    #[test]
    fn throws_bad_values_and_timeouts_are_eio_and_the_device_keeps_serving() {
        let r = rig("errs", spec(false), regs_handler(Arc::new(Mutex::new(0))));
        let mut c = connect(&r.path);
        for offset in [12u64, 16, 20] {
            let err = c.read_u32(0, offset).expect_err("handler failure");
            assert_eq!(err.errno(), Errno::IO, "offset {offset}");
            assert_eq!(c.read_u32(0, 0).expect("still serving"), 0xfeed_c0de);
        }
        let s = r.dev.stats().expect("stats");
        assert_eq!(s.handler_errors, 3.0);
        assert_eq!(s.handler_timeouts, 1.0);
        c.close();
        // The failures that JavaScript did not see itself were reported as events.
        thread::sleep(Duration::from_millis(700));
        let events = lock(&r.events);
        let reported: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Call::HandlerError {
                    op: op::READ,
                    offset,
                    ..
                } => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(reported, [16, 20]);
        assert!(events.contains(&Call::Connected));
        assert!(events.contains(&Call::Disconnected));
    }

    #[test]
    fn config_writes_can_go_through_the_handler_and_reset_reaches_it() {
        let r = rig("cfg", spec(true), regs_handler(Arc::new(Mutex::new(0))));
        let mut c = connect(&r.path);
        // Enable MSI through the handler, which applies it with configWrite (a routed job).
        let mut flags = [0u8; 2];
        c.region_read(7, 0x42, &mut flags).expect("msi flags");
        c.region_write(7, 0x42, &[flags[0] | 1, flags[1]])
            .expect("enable MSI");
        assert!(r.dev.pci_state().expect("state").msi_enabled);
        // Out of range: refused before JavaScript.
        assert!(c.region_write(7, 0xfe, &[0; 4]).is_err());
        c.reset().expect("reset");
        assert!(
            !r.dev.pci_state().expect("state").msi_enabled,
            "reset clears MSI enable"
        );
        c.close();
        thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn irqs_bar_memory_and_dma_from_the_js_side() {
        let r = rig("irq", spec(false), regs_handler(Arc::new(Mutex::new(0))));
        // Before a client binds anything: unbound.
        assert_eq!(r.dev.irq(0.0, 0.0).ok(), Some("unbound"));
        assert_eq!(
            r.dev.irq(9.0, 0.0).expect_err("no such index").status,
            ErrorCode::InvalidArg
        );
        let mut c = connect(&r.path);
        let fds = c.enable_irqs(1, 1).expect("bind MSI");
        assert_eq!(r.dev.irq(1.0, 0.0).ok(), Some("delivered"));
        let mut count = [0u8; 8];
        rustix::io::read(&fds[0], &mut count).expect("eventfd");
        assert_eq!(u64::from_ne_bytes(count), 1);
        assert_eq!(
            r.dev.irq_state(1.0, 0.0).expect("state"),
            Some(JsIrqVectorState {
                has_eventfd: true,
                masked: false,
                pending: false
            })
        );
        // MSI through the capability: disabled until the guest enables it.
        assert_eq!(r.dev.fire_msi(0.0).ok(), Some("disabled"));
        // BAR2 shared memory: written here, read by the client (trapped read of memory).
        r.dev
            .bar_write(2.0, 0x20 as f64, vec![9u8, 8, 7].into())
            .expect("bar write");
        let mut got = [0u8; 3];
        c.region_read(2, 0x20, &mut got).expect("client read");
        assert_eq!(got, [9, 8, 7]);
        assert_eq!(
            r.dev
                .bar_read(0.0, 0.0, 4.0)
                .err()
                .expect("BAR0 is trapped")
                .status,
            ErrorCode::InvalidArg
        );
        // DMA: fd-backed client memory.
        let buf = c.alloc_dma(0x10_0000, 0x1000, true).expect("alloc");
        let iova = BigInt::from(0x10_0010u64);
        r.dev
            .dma_write(iova.clone(), vec![0xaa; 16].into())
            .expect("dma write");
        let mut back = [0u8; 16];
        buf.read(0x10, &mut back).expect("client sees it");
        assert_eq!(back, [0xaa; 16]);
        assert_eq!(
            r.dev.dma_read(iova, 16.0).expect("dma read").to_vec(),
            vec![0xaa; 16]
        );
        let unmapped = r
            .dev
            .dma_read(BigInt::from(0x9000_0000u64), 4.0)
            .err()
            .expect("unmapped");
        assert_eq!(unmapped.status.as_str(), "ERR_VFU_EFAULT");
        assert_eq!(r.dev.dma_mappings().expect("maps").len(), 1);
        c.close();
    }

    #[test]
    fn events_nobody_listens_to_are_not_sent() {
        let r = rig("mask", spec(false), regs_handler(Arc::new(Mutex::new(0))));
        r.dev.set_event_mask(1 << op::DISCONNECTED);
        let mut c = connect(&r.path);
        let _buf = c.alloc_dma(0x10_0000, 0x1000, true).expect("alloc");
        assert_eq!(c.read_u32(0, 0).expect("read"), 0xfeed_c0de);
        c.close();
        thread::sleep(Duration::from_millis(100));
        let events = lock(&r.events).clone();
        assert_eq!(events, [Call::Disconnected], "only the event asked for");
        // Reset still reaches a device that handles it, whatever the mask.
        r.dev.set_event_mask(0);
        let mut c = connect(&r.path);
        c.reset().expect("reset");
        c.close();
    }

    #[test]
    fn close_with_a_client_attached_and_calls_after_close() {
        let r = rig("close", spec(false), regs_handler(Arc::new(Mutex::new(0))));
        let mut c = connect(&r.path);
        assert_eq!(c.read_u32(0, 0).expect("read"), 0xfeed_c0de);
        r.dev.close_task().run().expect("close");
        assert!(!r.path.exists(), "socket removed");
        assert!(c.read_u32(0, 0).is_err(), "the client was disconnected");
        assert_eq!(
            r.dev.irq(1.0, 0.0).expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            r.dev.start("/tmp/x.sock").expect_err("closed").status,
            ErrorCode::Closed
        );
        r.dev.close_task().run().expect("second close");
    }

    #[test]
    fn bad_specs_are_rejected_with_the_part_named() {
        type Mutate = Box<dyn Fn(&mut JsDeviceSpec)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|s| s.ids.vendor_id = 0x1_0000), "ids.vendorId"),
            (
                Box::new(|s| s.ids.class_code = Some(0x100_0000)),
                "ids.classCode",
            ),
            (Box::new(|s| s.bars[0].size = Either::A(3000.0)), "bars[0]"),
            (
                Box::new(|s| s.bars[0].kind = Some("mem16".into())),
                "bars[0].kind",
            ),
            (Box::new(|s| s.bars[1].index = 5), "bars[1]"),
            (
                Box::new(|s| {
                    s.bars[0].size = Either::A(256.0);
                    s.bars[0].mmap = Some(true);
                }),
                "bars[0]",
            ),
            (Box::new(|s| s.config = Some("pcie".into())), "config"),
            (
                Box::new(|s| s.handler_timeout_ms = Some(0.0)),
                "handlerTimeoutMs",
            ),
            (
                Box::new(|s| {
                    if let Some(i) = s.irqs.as_mut() {
                        i.intx = Some("e".into());
                    }
                }),
                "irqs.intx",
            ),
            (
                Box::new(|s| {
                    if let Some(m) = s.irqs.as_mut().and_then(|i| i.msi.as_mut()) {
                        m.vectors = 3;
                    }
                }),
                "irqs.msi",
            ),
        ];
        for (mutate, part) in cases {
            let mut s = spec(false);
            mutate(&mut s);
            let err = build(&s)
                .err()
                .unwrap_or_else(|| panic!("{part}: must be rejected"));
            assert_eq!(err.status, ErrorCode::InvalidArg);
            assert!(err.reason.contains(part), "{part}: {}", err.reason);
        }
        assert!(build(&spec(false)).is_ok());
    }
}
