//! How the vfio-user server thread calls a device written in JavaScript, and how JavaScript
//! calls back into the device while the server thread waits for it.
//!
//! # Calls into JavaScript
//!
//! Every callback of a JavaScript device goes through ONE JavaScript dispatcher function,
//! held as a weak `ThreadsafeFunction` ([`TsfnInvoker`]). The server thread describes the
//! callback as a [`Call`] and queues it; two kinds exist:
//!
//! - **synchronous** calls (`read`, `write`, `reset`, `configWrite`): the protocol's reply
//!   depends on them, so the server thread waits in [`Bridge::call_sync`] until the JavaScript
//!   return value comes back through a [`DoneSender`] (converted on the JS thread: a `read`
//!   must return a number, bigint or Buffer of the access size, see [`read_value_bytes`]). A
//!   throw, a wrong value, a dropped call or no answer within the timeout becomes a
//!   [`HandlerError`], which the device turns into an `EIO` reply; the device keeps serving.
//! - **events** (`connected`, `dmaMapped`, ...): queued without waiting.
//!
//! The wait first polls the channel for [`SPIN`] (a handler usually answers within a few
//! microseconds of being woken), then sleeps on it: that saves a futex sleep and wake-up per
//! call on the way back, which is a large part of a trapped access's cost.
//! `EMUDEV_HANDLER_SPIN_US` overrides the polling time (0 turns it off).
//!
//! # Calls from JavaScript while the server thread waits
//!
//! While the server thread waits for a synchronous call it holds the device's lock, so a
//! JavaScript handler that asks the device for something needing that lock (config space, MSI)
//! must not block on it. Instead it hands a *job* to the waiting server thread
//! ([`Bridge::try_route`]); the wait loop runs jobs as they come, with the device and its
//! context, until the handler's value arrives. The same route carries DMA to client memory
//! that is reached by DMA_READ/DMA_WRITE messages: only the server thread can pump its socket
//! for the replies.
//!
//! Nothing here knows napi except [`TsfnInvoker`]; the rest is tested with a plain thread
//! playing the JavaScript side.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emudev_vfio_user::DeviceContext;
use napi::bindgen_prelude::{BigInt, Buffer, Either, Either5, FnArgs, Null, Undefined};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::lock;

/// Operation codes as the JavaScript dispatcher receives them (first argument).
pub mod op {
    /// `read(bar, offset, size)`: sync, returns the value.
    pub const READ: u32 = 0;
    /// `write(bar, offset, size, value, data)`: sync.
    pub const WRITE: u32 = 1;
    /// `reset()`: sync.
    pub const RESET: u32 = 2;
    /// `configWrite(offset, data)`: sync.
    pub const CONFIG_WRITE: u32 = 3;
    /// A client connected (event).
    pub const CONNECTED: u32 = 4;
    /// The client went away (event).
    pub const DISCONNECTED: u32 = 5;
    /// A DMA map was added (event; data: iova, size, file offset as 3 LE u64; a: prot).
    pub const DMA_MAPPED: u32 = 6;
    /// A DMA map was removed (event; as `DMA_MAPPED`).
    pub const DMA_UNMAPPED: u32 = 7;
    /// SET_IRQS changed an index (event; a: index).
    pub const IRQS_CHANGED: u32 = 8;
    /// A synchronous call failed (event; a: the failed op, b: offset, c: size, data: reason).
    pub const HANDLER_ERROR: u32 = 9;
}

/// One callback into the JavaScript device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// BAR read of `size` bytes.
    Read {
        /// BAR slot.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// Bytes.
        size: u32,
    },
    /// BAR write.
    Write {
        /// BAR slot.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// `DEVICE_RESET` (after the PCI model reset config space and MSI-X).
    Reset,
    /// A config space write the device handles itself.
    ConfigWrite {
        /// Offset in config space.
        offset: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// A client connected.
    Connected,
    /// The client left.
    Disconnected,
    /// A DMA map was added.
    DmaMapped(DmaMapEvent),
    /// A DMA map was removed.
    DmaUnmapped(DmaMapEvent),
    /// SET_IRQS changed `index`.
    IrqsChanged(u32),
    /// A synchronous call failed; reported to JavaScript after the fact.
    HandlerError {
        /// The op that failed.
        op: u32,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u32,
        /// What went wrong.
        reason: String,
    },
}

/// A DMA map as events report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapEvent {
    /// First IOVA.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// `DMA_MAP` protection bits (READ = 1, WRITE = 2).
    pub prot: u32,
    /// Offset in the client's file.
    pub file_offset: u64,
}

impl Call {
    /// The op code JavaScript sees.
    pub fn op(&self) -> u32 {
        match self {
            Call::Read { .. } => op::READ,
            Call::Write { .. } => op::WRITE,
            Call::Reset => op::RESET,
            Call::ConfigWrite { .. } => op::CONFIG_WRITE,
            Call::Connected => op::CONNECTED,
            Call::Disconnected => op::DISCONNECTED,
            Call::DmaMapped(_) => op::DMA_MAPPED,
            Call::DmaUnmapped(_) => op::DMA_UNMAPPED,
            Call::IrqsChanged(_) => op::IRQS_CHANGED,
            Call::HandlerError { .. } => op::HANDLER_ERROR,
        }
    }

    /// The access size a `read` must return (`None` for other calls).
    pub fn read_size(&self) -> Option<usize> {
        match self {
            Call::Read { size, .. } => Some(*size as usize),
            _ => None,
        }
    }
}

/// Why a synchronous call into JavaScript produced no usable result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The handler threw.
    #[error("the handler threw: {0}")]
    Threw(String),
    /// The handler returned something unusable.
    #[error("the handler returned {0}")]
    BadValue(String),
    /// No answer within the timeout (the JS thread is blocked or busy).
    #[error("no answer from the handler within {0} ms")]
    Timeout(u128),
    /// The device is closing or closed.
    #[error("the device is closed")]
    Closed,
    /// The call could not be queued, or was dropped unanswered (environment shutting down).
    #[error("the call could not be delivered to JavaScript ({0})")]
    Undelivered(String),
}

/// The result of a synchronous call: the bytes of a `read`, empty for the others.
pub type Outcome = Result<Vec<u8>, HandlerError>;

/// Work for the server thread on behalf of JavaScript, with the device (`T`) and its context.
pub type Job<T> = Box<dyn FnOnce(&mut T, &DeviceContext) + Send>;

/// Work for the server thread that needs only the DMA/IRQ context (DMA by message).
pub type CtxTask = Box<dyn FnOnce(&DeviceContext) + Send>;

enum Msg<T> {
    Done(Outcome),
    Job(Job<T>),
    Task(CtxTask),
    Abort,
}

/// Carries the outcome of one synchronous call back to the waiting server thread. Dropped
/// without [`DoneSender::send`] (a call napi discarded), it reports
/// [`HandlerError::Undelivered`], so the wait ends at once instead of timing out.
pub struct DoneSender<T> {
    tx: Option<Sender<Msg<T>>>,
}

impl<T> fmt::Debug for DoneSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneSender")
            .field("pending", &self.tx.is_some())
            .finish()
    }
}

impl<T> DoneSender<T> {
    /// Delivers `outcome` (ignored if the server thread stopped waiting).
    pub fn send(mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Done(outcome));
        }
    }
}

impl<T> Drop for DoneSender<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Done(Err(HandlerError::Undelivered(
                "dropped unanswered".into(),
            ))));
        }
    }
}

/// How long the server thread polls for a handler's answer before it goes to sleep on the
/// channel. A JavaScript handler usually answers within a few microseconds of being woken;
/// polling for that long saves the futex sleep and wake-up on the way back (a few microseconds
/// per call). The bound keeps a slow handler from costing more than this much CPU.
pub const SPIN: Duration = Duration::from_micros(40);

/// The polling time: [`SPIN`], or `EMUDEV_HANDLER_SPIN_US` microseconds (0 turns polling off).
fn spin() -> Duration {
    static SPIN_TIME: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN_TIME.get_or_init(|| {
        std::env::var("EMUDEV_HANDLER_SPIN_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(SPIN, |us| Duration::from_micros(us.min(10_000)))
    })
}

/// The next message: polled for up to [`spin`], then waited for until `deadline`.
fn next_message<T>(rx: &Receiver<Msg<T>>, deadline: Instant) -> Result<Msg<T>, RecvTimeoutError> {
    let spin_until = Instant::now() + spin();
    loop {
        match rx.try_recv() {
            Ok(m) => return Ok(m),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= spin_until || now >= deadline {
            return rx.recv_timeout(deadline.saturating_duration_since(now));
        }
        std::hint::spin_loop();
    }
}

/// Counters of the calls into JavaScript (exact up to 2^53 when read from JS).
#[derive(Debug, Default)]
pub struct CallStats {
    /// Synchronous calls made.
    pub calls: AtomicU64,
    /// Of those, the ones that failed (threw, bad value, undelivered, closed).
    pub errors: AtomicU64,
    /// Of those, the ones that timed out.
    pub timeouts: AtomicU64,
    /// Jobs the server thread ran for JavaScript while waiting.
    pub jobs: AtomicU64,
}

/// The meeting point of the server thread (waiting for JavaScript) and the JS thread (asking
/// the device for something while the server thread waits). See the module documentation.
pub struct Bridge<T> {
    waiting: Mutex<Option<Sender<Msg<T>>>>,
    closing: AtomicBool,
    stats: CallStats,
}

impl<T> fmt::Debug for Bridge<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("waiting", &lock(&self.waiting).is_some())
            .field("closing", &self.closing.load(Ordering::SeqCst))
            .finish()
    }
}

impl<T> Default for Bridge<T> {
    fn default() -> Self {
        Bridge {
            waiting: Mutex::new(None),
            closing: AtomicBool::new(false),
            stats: CallStats::default(),
        }
    }
}

/// Clears the waiting slot when a synchronous call ends, however it ends.
struct ClearWaiting<'a, T>(&'a Mutex<Option<Sender<Msg<T>>>>);

impl<T> Drop for ClearWaiting<'_, T> {
    fn drop(&mut self) {
        lock(self.0).take();
    }
}

impl<T> Bridge<T> {
    /// The counters.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// Whether a synchronous call is waiting for JavaScript now.
    pub fn is_waiting(&self) -> bool {
        lock(&self.waiting).is_some()
    }

    /// Whether [`Bridge::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Refuses new synchronous calls and ends the one waiting now (it fails with
    /// [`HandlerError::Closed`]), so a server thread stuck on JavaScript can be joined.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(tx) = lock(&self.waiting).as_ref() {
            let _ = tx.send(Msg::Abort);
        }
    }

    /// Runs one synchronous call: `start` queues it for JavaScript with the [`DoneSender`]
    /// that must carry its outcome; then this thread waits up to `timeout` for the outcome,
    /// running the jobs JavaScript sends meanwhile on `target`.
    pub fn call_sync(
        &self,
        target: &mut T,
        ctx: &DeviceContext,
        timeout: Duration,
        start: impl FnOnce(DoneSender<T>) -> Result<(), HandlerError>,
    ) -> Outcome {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.wait_for(target, ctx, timeout, start);
        if let Err(e) = &result {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            if matches!(e, HandlerError::Timeout(_)) {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn wait_for(
        &self,
        target: &mut T,
        ctx: &DeviceContext,
        timeout: Duration,
        start: impl FnOnce(DoneSender<T>) -> Result<(), HandlerError>,
    ) -> Outcome {
        if self.is_closing() {
            return Err(HandlerError::Closed);
        }
        let (tx, rx) = mpsc::channel();
        *lock(&self.waiting) = Some(tx.clone());
        let _clear = ClearWaiting(&self.waiting);
        // Checked again after publishing the slot: `close` sets the flag, then looks at the
        // slot, so either it sees the slot (and aborts us) or we see the flag.
        if self.is_closing() {
            return Err(HandlerError::Closed);
        }
        start(DoneSender { tx: Some(tx) })?;
        let deadline = Instant::now() + timeout;
        loop {
            match next_message(&rx, deadline) {
                Ok(Msg::Done(outcome)) => return outcome,
                Ok(Msg::Job(job)) => {
                    self.stats.jobs.fetch_add(1, Ordering::Relaxed);
                    job(target, ctx);
                }
                Ok(Msg::Task(task)) => {
                    self.stats.jobs.fetch_add(1, Ordering::Relaxed);
                    task(ctx);
                }
                Ok(Msg::Abort) => return Err(HandlerError::Closed),
                // The slot holds a sender, so the channel cannot disconnect while we wait.
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(HandlerError::Timeout(timeout.as_millis()))
                }
            }
        }
    }

    /// Hands `job` to the server thread if a synchronous call is waiting; gives it back
    /// otherwise (the caller then runs it itself, under the device lock).
    pub fn try_route(&self, job: Job<T>) -> Result<(), Job<T>> {
        let slot = lock(&self.waiting);
        match slot.as_ref() {
            Some(tx) => match tx.send(Msg::Job(job)) {
                Ok(()) => Ok(()),
                Err(mpsc::SendError(Msg::Job(job))) => Err(job),
                // A send error gives back the message sent, which was a job.
                Err(mpsc::SendError(_)) => Ok(()),
            },
            None => Err(job),
        }
    }

    /// [`Bridge::try_route`] for work that needs only the context.
    pub fn try_route_task(&self, task: CtxTask) -> Result<(), CtxTask> {
        let slot = lock(&self.waiting);
        match slot.as_ref() {
            Some(tx) => match tx.send(Msg::Task(task)) {
                Ok(()) => Ok(()),
                Err(mpsc::SendError(Msg::Task(task))) => Err(task),
                // A send error gives back the message sent, which was a task.
                Err(mpsc::SendError(_)) => Ok(()),
            },
            None => Err(task),
        }
    }
}

// ----- values coming back from JavaScript --------------------------------------------------------

/// What the dispatcher may return: number, bigint, Buffer (or Uint8Array), undefined, null.
pub type JsReturn = Either5<f64, BigInt, Buffer, Undefined, Null>;

/// The value a `read` handler returned, as the `size` little-endian bytes of the reply.
///
/// - a number: an integer that fits in `size` bytes, unsigned (`0 ..= 2^(8 size) - 1`) or as
///   two's complement (`-2^(8 size - 1) ..`, so `~x` works); at most 2^53 - 1 in magnitude;
///   only for sizes up to 8;
/// - a bigint: the same rule without the 2^53 limit, sizes up to 8;
/// - a Buffer / Uint8Array: exactly `size` bytes, any size.
pub fn read_value_bytes(value: JsReturn, size: usize) -> Result<Vec<u8>, HandlerError> {
    let bad = |what: String| Err(HandlerError::BadValue(what));
    match value {
        Either5::A(n) => {
            if size == 0 || size > 8 {
                return bad(format!("a number for a {size}-byte read (return a Buffer)"));
            }
            let bits = 8 * size as u32;
            let max_safe = 9_007_199_254_740_991.0;
            let max = if bits >= 53 {
                max_safe
            } else {
                ((1u64 << bits) - 1) as f64
            };
            let min = if bits >= 54 {
                -max_safe
            } else {
                -((1u64 << (bits - 1)) as f64)
            };
            if n.fract() != 0.0 || !(min..=max).contains(&n) {
                return bad(format!(
                    "{n}, which is not an integer that fits in {size} bytes"
                ));
            }
            // Exact: an integer of magnitude below 2^53.
            Ok((n as i64).to_le_bytes()[..size].to_vec())
        }
        Either5::B(b) => {
            if size == 0 || size > 8 {
                return bad(format!("a bigint for a {size}-byte read (return a Buffer)"));
            }
            let magnitude = b.words.first().copied().unwrap_or(0);
            let lossless = b.words.iter().skip(1).all(|w| *w == 0);
            let negative = b.sign_bit && magnitude != 0;
            let bits = 8 * size as u32;
            let fits = lossless
                && if negative {
                    magnitude <= 1u64 << (bits - 1)
                } else {
                    bits == 64 || magnitude < 1u64 << bits
                };
            if !fits {
                return bad(format!("a bigint that does not fit in {size} bytes"));
            }
            let v = if negative {
                magnitude.wrapping_neg()
            } else {
                magnitude
            };
            Ok(v.to_le_bytes()[..size].to_vec())
        }
        Either5::C(buf) => {
            if buf.len() != size {
                return bad(format!(
                    "a {}-byte Buffer for a {size}-byte read",
                    buf.len()
                ));
            }
            Ok(buf.to_vec())
        }
        Either5::D(()) => bad("undefined".into()),
        Either5::E(_) => bad("null".into()),
    }
}

/// A written value as JavaScript sees it: a number for 1, 2 and 4 bytes, a bigint for 8,
/// nothing for other sizes (the handler then uses the bytes).
pub fn write_value(data: &[u8]) -> Option<Either<u32, BigInt>> {
    match data.len() {
        1 | 2 | 4 => {
            let mut b = [0u8; 4];
            b[..data.len()].copy_from_slice(data);
            Some(Either::A(u32::from_le_bytes(b)))
        }
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(data);
            Some(Either::B(BigInt::from(u64::from_le_bytes(b))))
        }
        _ => None,
    }
}

// ----- delivery through a ThreadsafeFunction ------------------------------------------------------

/// The arguments of the JavaScript dispatcher: `(op, a, b, c, value, data)`.
pub type DispatchArgs = FnArgs<(
    u32,
    u32,
    f64,
    u32,
    Option<Either<u32, BigInt>>,
    Option<Buffer>,
)>;

/// The dispatcher as a weak threadsafe function (it never keeps Node alive by itself).
pub type DispatchTsfn = ThreadsafeFunction<Call, JsReturn, DispatchArgs, Status, false, true, 0>;

/// `call` as dispatcher arguments (runs on the JS thread, inside the threadsafe function).
pub fn dispatch_args(call: Call) -> DispatchArgs {
    let op = call.op();
    let bytes = |v: &[u64]| {
        Some(Buffer::from(
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        ))
    };
    // Offsets above 2^53 are never sent: the device refuses such accesses before calling.
    let args = match call {
        Call::Read { bar, offset, size } => (op, u32::from(bar), offset as f64, size, None, None),
        Call::Write { bar, offset, data } => {
            let size = data.len() as u32;
            let value = write_value(&data);
            let data = if value.is_some() {
                None
            } else {
                Some(Buffer::from(data))
            };
            (op, u32::from(bar), offset as f64, size, value, data)
        }
        Call::ConfigWrite { offset, data } => (
            op,
            0,
            offset as f64,
            data.len() as u32,
            None,
            Some(Buffer::from(data)),
        ),
        Call::Reset | Call::Connected | Call::Disconnected => (op, 0, 0.0, 0, None, None),
        Call::DmaMapped(m) | Call::DmaUnmapped(m) => (
            op,
            m.prot,
            0.0,
            0,
            None,
            bytes(&[m.iova, m.size, m.file_offset]),
        ),
        Call::IrqsChanged(index) => (op, index, 0.0, 0, None, None),
        Call::HandlerError {
            op: failed,
            offset,
            size,
            reason,
        } => (
            op,
            failed,
            offset as f64,
            size,
            None,
            Some(Buffer::from(reason.into_bytes())),
        ),
    };
    FnArgs::from(args)
}

/// Queues calls for JavaScript. The device talks to this trait so that tests can stand in
/// for the JS thread.
pub trait Invoke<T>: Send + Sync {
    /// Queues `call`; for a synchronous call, `done` must eventually receive the outcome (or
    /// be dropped). Fails when the call cannot be queued.
    fn invoke(&self, call: Call, done: Option<DoneSender<T>>) -> Result<(), HandlerError>;
}

/// [`Invoke`] through the dispatcher's threadsafe function.
pub struct TsfnInvoker {
    tsfn: DispatchTsfn,
}

impl fmt::Debug for TsfnInvoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsfnInvoker").finish_non_exhaustive()
    }
}

impl TsfnInvoker {
    /// Wraps a dispatcher threadsafe function.
    pub fn new(tsfn: DispatchTsfn) -> Self {
        TsfnInvoker { tsfn }
    }
}

impl<T: 'static> Invoke<T> for TsfnInvoker {
    fn invoke(&self, call: Call, done: Option<DoneSender<T>>) -> Result<(), HandlerError> {
        let size = call.read_size();
        // Always with a return-value callback: napi then catches a throw and hands it to us
        // (a plain call would make it an uncaught exception).
        let status = self.tsfn.call_with_return_value(
            call,
            ThreadsafeFunctionCallMode::NonBlocking,
            move |ret, _env| {
                if let Some(done) = done {
                    let outcome = match ret {
                        Err(e) if e.status == Status::PendingException => {
                            Err(HandlerError::Threw(e.reason.clone()))
                        }
                        // Only a read's value matters: other calls may return anything.
                        Err(_) if size.is_none() => Ok(Vec::new()),
                        Err(e) => Err(HandlerError::BadValue(format!(
                            "a value of an unexpected type ({})",
                            e.reason
                        ))),
                        Ok(v) => match size {
                            Some(n) => read_value_bytes(v, n),
                            None => Ok(Vec::new()),
                        },
                    };
                    done.send(outcome);
                }
                Ok(())
            },
        );
        if status == Status::Ok {
            Ok(())
        } else {
            Err(HandlerError::Undelivered(status.as_ref().to_owned()))
        }
    }
}

/// The invoker of a device, released by `close()`.
pub struct InvokerSlot<T> {
    inner: Mutex<Option<Arc<dyn Invoke<T>>>>,
}

impl<T> fmt::Debug for InvokerSlot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvokerSlot")
            .field("live", &lock(&self.inner).is_some())
            .finish()
    }
}

impl<T> InvokerSlot<T> {
    /// A slot holding `invoker`.
    pub fn new(invoker: Arc<dyn Invoke<T>>) -> Self {
        InvokerSlot {
            inner: Mutex::new(Some(invoker)),
        }
    }

    /// The invoker, unless released.
    pub fn get(&self) -> Option<Arc<dyn Invoke<T>>> {
        lock(&self.inner).clone()
    }

    /// Drops the slot's reference (the threadsafe function is released once in-flight calls
    /// let go of theirs).
    pub fn release(&self) {
        let taken = lock(&self.inner).take();
        drop(taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_dma::{DmaLimits, DmaTable};
    use emudev_vfio_user::irq::IrqTable;
    use std::thread;

    fn ctx() -> DeviceContext {
        DeviceContext {
            dma: Arc::new(DmaTable::new(DmaLimits::default())),
            irqs: Arc::new(IrqTable::new(&[1])),
        }
    }

    fn num(v: f64, size: usize) -> Result<Vec<u8>, HandlerError> {
        read_value_bytes(Either5::A(v), size)
    }

    #[test]
    fn numbers_become_little_endian_bytes_of_the_access_size() {
        assert_eq!(num(0x0100_00ed as f64, 4), Ok(vec![0xed, 0, 0, 1]));
        assert_eq!(num(255.0, 1), Ok(vec![0xff]));
        assert_eq!(num(0xbeef as f64, 2), Ok(vec![0xef, 0xbe]));
        // Two's complement: `~0x12345678` in JS is negative.
        assert_eq!(
            num(-0x1234_5679 as f64, 4),
            Ok(vec![0x87, 0xa9, 0xcb, 0xed])
        );
        assert_eq!(num(-1.0, 8), Ok(vec![0xff; 8]));
        assert_eq!(
            num(9_007_199_254_740_991.0, 8),
            Ok(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0])
        );
    }

    #[test]
    fn numbers_that_do_not_fit_are_bad_values() {
        for (v, size) in [
            (256.0, 1),
            (-129.0, 1),
            (4_294_967_296.0, 4),
            (1.5, 4),
            (f64::NAN, 4),
            (f64::INFINITY, 8),
            (9_007_199_254_740_992.0, 8),
            (1.0, 16),
            (1.0, 0),
        ] {
            assert!(
                matches!(num(v, size), Err(HandlerError::BadValue(_))),
                "{v} in {size}"
            );
        }
    }

    #[test]
    fn bigints_and_buffers_are_checked_against_the_size() {
        let big = |sign_bit, words: Vec<u64>| Either5::B(BigInt { sign_bit, words });
        assert_eq!(
            read_value_bytes(big(false, vec![u64::MAX]), 8),
            Ok(vec![0xff; 8])
        );
        assert_eq!(
            read_value_bytes(big(true, vec![1]), 2),
            Ok(vec![0xff, 0xff])
        );
        assert_eq!(
            read_value_bytes(big(false, vec![0xffff]), 2),
            Ok(vec![0xff, 0xff])
        );
        assert!(read_value_bytes(big(false, vec![0x1_0000]), 2).is_err());
        assert!(read_value_bytes(big(true, vec![0x8001]), 2).is_err());
        assert!(read_value_bytes(big(false, vec![0, 1]), 8).is_err());
        assert!(read_value_bytes(big(false, vec![1]), 12).is_err());
        assert!(read_value_bytes(Either5::D(()), 4).is_err());
        assert!(read_value_bytes(Either5::E(Null), 4).is_err());
    }

    #[test]
    fn written_values_are_numbers_or_bigints_by_size() {
        assert!(matches!(
            write_value(&[1, 2, 3, 4]),
            Some(Either::A(0x0403_0201))
        ));
        assert!(matches!(write_value(&[7]), Some(Either::A(7))));
        match write_value(&[1, 0, 0, 0, 0, 0, 0, 0x80]) {
            Some(Either::B(b)) => assert_eq!(b.get_u64(), (false, 0x8000_0000_0000_0001, true)),
            other => panic!("expected a bigint, got {other:?}"),
        }
        assert!(write_value(&[1, 2, 3]).is_none());
        assert!(write_value(&[0; 16]).is_none());
    }

    /// A stand-in for the JS thread: runs each queued call through `handler`, which may route
    /// jobs back through the bridge like a JavaScript handler would.
    struct FakeJs {
        tx: Mutex<Sender<(Call, Option<DoneSender<u32>>)>>,
    }

    impl Invoke<u32> for FakeJs {
        fn invoke(&self, call: Call, done: Option<DoneSender<u32>>) -> Result<(), HandlerError> {
            lock(&self.tx)
                .send((call, done))
                .map_err(|_| HandlerError::Undelivered("fake JS thread gone".into()))
        }
    }

    fn fake_js(
        bridge: Arc<Bridge<u32>>,
        handler: impl Fn(&Bridge<u32>, Call) -> Outcome + Send + 'static,
    ) -> (Arc<FakeJs>, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<(Call, Option<DoneSender<u32>>)>();
        let join = thread::spawn(move || {
            for (call, done) in rx {
                let out = handler(&bridge, call);
                if let Some(d) = done {
                    d.send(out);
                }
            }
        });
        (Arc::new(FakeJs { tx: Mutex::new(tx) }), join)
    }

    #[test]
    fn a_sync_call_waits_for_the_value_and_runs_routed_jobs() {
        let bridge = Arc::new(Bridge::<u32>::default());
        let (js, join) = fake_js(bridge.clone(), |b, call| {
            // Inside the "handler": ask the device (the u32) for something, twice.
            for _ in 0..2 {
                let (rtx, rrx) = mpsc::channel();
                let job: Job<u32> = Box::new(move |t, _| {
                    *t += 1;
                    let _ = rtx.send(*t);
                });
                assert!(b.try_route(job).is_ok(), "the server thread is waiting");
                rrx.recv().expect("job ran");
            }
            Ok(vec![call.op() as u8])
        });
        let mut device = 40u32;
        let c = ctx();
        let out = bridge.call_sync(&mut device, &c, Duration::from_secs(5), |done| {
            js.invoke(Call::Reset, Some(done))
        });
        assert_eq!(out, Ok(vec![op::RESET as u8]));
        assert_eq!(device, 42, "both jobs ran on the waiting thread");
        assert!(!bridge.is_waiting());
        assert_eq!(bridge.stats().jobs.load(Ordering::Relaxed), 2);
        // No call waits now: a job is handed back.
        let back = bridge.try_route(Box::new(|t: &mut u32, _| *t = 0));
        assert!(back.is_err());
        drop(js);
        join.join().expect("fake JS thread");
    }

    #[test]
    fn errors_timeouts_and_dropped_calls_end_the_wait() {
        let bridge = Arc::new(Bridge::<u32>::default());
        let c = ctx();
        let mut t = 0u32;
        // The handler "throws".
        let (js, join) = fake_js(bridge.clone(), |_, _| {
            Err(HandlerError::Threw("boom".into()))
        });
        let out = bridge.call_sync(&mut t, &c, Duration::from_secs(5), |d| {
            js.invoke(Call::Reset, Some(d))
        });
        assert_eq!(out, Err(HandlerError::Threw("boom".into())));
        drop(js);
        join.join().expect("fake JS thread");
        // Nobody answers: the wait times out.
        let started = Instant::now();
        let keep: Mutex<Option<DoneSender<u32>>> = Mutex::new(None);
        let out = bridge.call_sync(&mut t, &c, Duration::from_millis(50), |d| {
            *lock(&keep) = Some(d);
            Ok(())
        });
        assert_eq!(out, Err(HandlerError::Timeout(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A late answer goes nowhere (the channel is gone) and does not panic.
        if let Some(d) = lock(&keep).take() {
            d.send(Ok(vec![1]));
        }
        // The call is dropped unanswered: the wait ends at once.
        let out = bridge.call_sync(&mut t, &c, Duration::from_secs(30), |d| {
            drop(d);
            Ok(())
        });
        assert!(matches!(out, Err(HandlerError::Undelivered(_))));
        // Queueing fails.
        let out = bridge.call_sync(&mut t, &c, Duration::from_secs(30), |_| {
            Err(HandlerError::Undelivered("queue full".into()))
        });
        assert!(matches!(out, Err(HandlerError::Undelivered(_))));
        let s = bridge.stats();
        assert_eq!(s.calls.load(Ordering::Relaxed), 4);
        assert_eq!(s.errors.load(Ordering::Relaxed), 4);
        assert_eq!(s.timeouts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn close_aborts_the_waiting_call_and_refuses_new_ones() {
        let bridge = Arc::new(Bridge::<u32>::default());
        let b2 = bridge.clone();
        let closer = thread::spawn(move || {
            while !b2.is_waiting() {
                thread::sleep(Duration::from_millis(1));
            }
            b2.close();
        });
        let c = ctx();
        let mut t = 0u32;
        let keep: Mutex<Option<DoneSender<u32>>> = Mutex::new(None);
        let started = Instant::now();
        let out = bridge.call_sync(&mut t, &c, Duration::from_secs(30), |d| {
            *lock(&keep) = Some(d);
            Ok(())
        });
        assert_eq!(out, Err(HandlerError::Closed));
        assert!(started.elapsed() < Duration::from_secs(10));
        closer.join().expect("closer");
        let out = bridge.call_sync(&mut t, &c, Duration::from_secs(30), |_| {
            panic!("not started")
        });
        assert_eq!(out, Err(HandlerError::Closed));
    }

    #[test]
    fn dispatch_args_carry_each_call() {
        let a = dispatch_args(Call::Read {
            bar: 2,
            offset: 0x10,
            size: 4,
        })
        .data;
        assert_eq!((a.0, a.1, a.2, a.3), (op::READ, 2, 16.0, 4));
        assert!(a.4.is_none() && a.5.is_none());
        let w = dispatch_args(Call::Write {
            bar: 0,
            offset: 4,
            data: vec![1, 0, 0, 0],
        })
        .data;
        assert!(matches!(w.4, Some(Either::A(1))));
        assert!(w.5.is_none(), "scalar writes carry no Buffer");
        let w3 = dispatch_args(Call::Write {
            bar: 0,
            offset: 4,
            data: vec![1, 2, 3],
        })
        .data;
        assert_eq!(w3.3, 3);
        assert_eq!(w3.5.as_deref(), Some(&[1u8, 2, 3][..]));
        let m = dispatch_args(Call::DmaMapped(DmaMapEvent {
            iova: 0x1000,
            size: 0x2000,
            prot: 3,
            file_offset: 0,
        }))
        .data;
        assert_eq!((m.0, m.1), (op::DMA_MAPPED, 3));
        let bytes = m.5.expect("payload").to_vec();
        assert_eq!(bytes.len(), 24);
        assert_eq!(
            u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            0x2000
        );
        let e = dispatch_args(Call::HandlerError {
            op: op::READ,
            offset: 8,
            size: 4,
            reason: "x".into(),
        })
        .data;
        assert_eq!((e.0, e.1, e.2, e.3), (op::HANDLER_ERROR, op::READ, 8.0, 4));
    }
}
