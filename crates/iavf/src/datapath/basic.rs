//! The stateless back-ends, after testpmd's forwarding modes seen from the device side:
//!
//! - [`Loopback`]: what queue q sends comes back on queue q's RX.
//! - [`MacSwap`]: the same, with the destination and source MAC addresses swapped.
//! - [`Sink`] (`rxonly`): what the client sends is counted and dropped.
//! - [`Generator`] (`txonly`): RX is filled with copies of one template frame (by default a
//!   UDP/IPv4 frame from 198.18.0.1 to 198.19.0.1) as fast as RX descriptors are posted; what
//!   the client sends is dropped, as with `Sink`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

use super::{Backend, BackendQueue, RxSink, MAX_TX_FRAME};
use crate::device::MAX_FRAME_SIZE;

/// The `loopback` back-end: what a queue sends comes back on the same queue's RX.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loopback;

struct LoopbackQueue;

impl BackendQueue for LoopbackQueue {
    fn transmit(&mut self, frame: &[u8], local_rx: &mut dyn RxSink) -> bool {
        // A frame RX cannot take is counted there (an RX drop), not here.
        local_rx.deliver(frame);
        true
    }
}

impl Backend for Loopback {
    fn name(&self) -> &'static str {
        "loopback"
    }

    fn queue(&self, _queue: u16, _queues: u16) -> Box<dyn BackendQueue> {
        Box::new(LoopbackQueue)
    }
}

/// The `macswap` back-end: loopback with the destination and source MAC addresses swapped
/// (testpmd's `macswap` forwarding, on the device side). Frames shorter than the two
/// addresses come back unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct MacSwap;

struct MacSwapQueue {
    /// The frame being turned around (capacity [`MAX_TX_FRAME`], allocated once).
    scratch: Vec<u8>,
}

impl BackendQueue for MacSwapQueue {
    fn transmit(&mut self, frame: &[u8], local_rx: &mut dyn RxSink) -> bool {
        self.scratch.clear();
        self.scratch.extend_from_slice(frame);
        swap_macs(&mut self.scratch);
        local_rx.deliver(&self.scratch);
        true
    }
}

/// Swaps bytes 0..6 (destination) with 6..12 (source), when the frame has both.
fn swap_macs(frame: &mut [u8]) {
    if let Some(addrs) = frame.get_mut(..12) {
        let (dst, src) = addrs.split_at_mut(6);
        dst.swap_with_slice(src);
    }
}

impl Backend for MacSwap {
    fn name(&self) -> &'static str {
        "macswap"
    }

    fn queue(&self, _queue: u16, _queues: u16) -> Box<dyn BackendQueue> {
        Box::new(MacSwapQueue {
            scratch: Vec::with_capacity(MAX_TX_FRAME),
        })
    }
}

/// Packets and bytes a back-end consumed.
#[derive(Debug, Default)]
struct Consumed {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Consumed {
    fn add(&self, frame: &[u8]) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
}

/// The `rxonly` back-end: every frame the client sends is counted and dropped. Keep an
/// `Arc<Sink>` to read the counts.
#[derive(Debug, Clone, Default)]
pub struct Sink {
    consumed: Arc<Consumed>,
}

struct SinkQueue {
    consumed: Arc<Consumed>,
}

impl BackendQueue for SinkQueue {
    fn transmit(&mut self, frame: &[u8], _local_rx: &mut dyn RxSink) -> bool {
        self.consumed.add(frame);
        true
    }
}

impl Sink {
    /// A sink with zero counts.
    pub fn new() -> Self {
        Sink::default()
    }

    /// Frames consumed so far, over every queue.
    pub fn packets(&self) -> u64 {
        self.consumed.packets.load(Ordering::Relaxed)
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.consumed.bytes.load(Ordering::Relaxed)
    }
}

impl Backend for Sink {
    fn name(&self) -> &'static str {
        "rxonly"
    }

    fn queue(&self, _queue: u16, _queues: u16) -> Box<dyn BackendQueue> {
        Box::new(SinkQueue {
            consumed: self.consumed.clone(),
        })
    }
}

/// Smallest generated frame: Ethernet, IPv4 and UDP headers.
pub const GENERATOR_MIN_LEN: usize = 14 + 20 + 8;
/// Default generated frame length (testpmd's `txonly` default).
pub const GENERATOR_DEFAULT_LEN: usize = 64;

/// Why a [`Generator`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CreateGeneratorError {
    /// The frame length is outside what the device can receive.
    #[error("frame length {len}: must be {min}..={max} bytes")]
    Length {
        /// The length asked for.
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
}

/// The `txonly` back-end: fills every queue's RX with copies of a template frame, as fast as
/// RX descriptors are posted, up to an optional total; frames the client sends are counted and
/// dropped.
#[derive(Debug, Clone)]
pub struct Generator {
    template: Arc<[u8]>,
    /// Frames still to generate over every queue (`u64::MAX`: no limit).
    left: Arc<AtomicU64>,
    generated: Arc<AtomicU64>,
    consumed: Arc<Consumed>,
}

impl Generator {
    /// Generates copies of `template` (1..=9728 bytes).
    pub fn new(template: &[u8]) -> Result<Self, CreateGeneratorError> {
        let max = MAX_FRAME_SIZE as usize;
        if template.is_empty() || template.len() > max {
            return Err(CreateGeneratorError::Length {
                len: template.len(),
                min: 1,
                max,
            });
        }
        Ok(Generator {
            template: Arc::from(template),
            left: Arc::new(AtomicU64::new(u64::MAX)),
            generated: Arc::new(AtomicU64::new(0)),
            consumed: Arc::new(Consumed::default()),
        })
    }

    /// Generates a `len`-byte UDP/IPv4 frame (42..=9728 bytes): 02:00:00:00:00:02 to
    /// 02:00:00:00:00:01, 198.18.0.1:9 to 198.19.0.1:9 ([`crate::spec::frame::udp_frame`]).
    pub fn udp(len: usize) -> Result<Self, CreateGeneratorError> {
        Self::new(&udp_frame(len)?)
    }

    /// Stops after `total` frames over every queue.
    pub fn with_limit(self, total: u64) -> Self {
        self.left.store(total, Ordering::Relaxed);
        self
    }

    /// The frame generated.
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    /// Frames delivered into RX so far.
    pub fn generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// Frames the client sent (dropped).
    pub fn consumed(&self) -> u64 {
        self.consumed.packets.load(Ordering::Relaxed)
    }
}

/// Builds the [`Generator::udp`] frame.
pub fn udp_frame(len: usize) -> Result<Vec<u8>, CreateGeneratorError> {
    let max = MAX_FRAME_SIZE as usize;
    if !(GENERATOR_MIN_LEN..=max).contains(&len) {
        return Err(CreateGeneratorError::Length {
            len,
            min: GENERATOR_MIN_LEN,
            max,
        });
    }
    Ok(crate::spec::frame::udp_frame(
        len,
        [0x02, 0, 0, 0, 0, 0x02],
        [0x02, 0, 0, 0, 0, 0x01],
    ))
}

struct GeneratorQueue {
    gen: Generator,
}

impl GeneratorQueue {
    /// Takes one frame from the limit; false when it is used up.
    fn take(&self) -> bool {
        self.gen
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| match l {
                u64::MAX => Some(l),
                0 => None,
                n => Some(n - 1),
            })
            .is_ok()
    }
}

impl BackendQueue for GeneratorQueue {
    fn transmit(&mut self, frame: &[u8], _local_rx: &mut dyn RxSink) -> bool {
        self.gen.consumed.add(frame);
        true
    }

    fn receive(&mut self, rx: &mut dyn RxSink, budget: usize) -> usize {
        let t = &*self.gen.template;
        let mut n = 0;
        while n < budget && rx.fits(t.len()) && self.take() {
            rx.deliver(t);
            n += 1;
        }
        if n > 0 {
            self.gen.generated.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn rx_pending(&self) -> bool {
        self.gen.left.load(Ordering::Relaxed) != 0
    }
}

impl Backend for Generator {
    fn name(&self) -> &'static str {
        "txonly"
    }

    fn queue(&self, _queue: u16, _queues: u16) -> Box<dyn BackendQueue> {
        Box::new(GeneratorQueue { gen: self.clone() })
    }

    fn originates(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::VecSink;
    use super::*;

    #[test]
    fn loopback_delivers_unchanged_and_macswap_swaps_the_addresses() {
        let frame: Vec<u8> = (0..60u8).collect();
        let mut rx = VecSink::new(8);
        assert!(Loopback.queue(0, 1).transmit(&frame, &mut rx));
        let mut q = MacSwap.queue(0, 1);
        assert!(q.transmit(&frame, &mut rx));
        assert!(q.transmit(&frame[..11], &mut rx), "too short: unchanged");
        assert_eq!(rx.frames[0], frame);
        let mut want = frame.clone();
        want[..6].copy_from_slice(&frame[6..12]);
        want[6..12].copy_from_slice(&frame[..6]);
        assert_eq!(rx.frames[1], want);
        assert_eq!(rx.frames[2], frame[..11].to_vec());
        assert!(!Loopback.originates() && !MacSwap.originates());
        assert_eq!((Loopback.name(), MacSwap.name()), ("loopback", "macswap"));
    }

    #[test]
    fn a_full_rx_is_counted_there_and_the_queue_still_reports_the_frame_taken() {
        let mut rx = VecSink::new(0);
        assert!(MacSwap.queue(0, 1).transmit(&[1; 20], &mut rx));
        assert_eq!((rx.frames.len(), rx.refused), (0, 1));
    }

    #[test]
    fn sink_counts_and_drops_over_every_queue() {
        let sink = Sink::new();
        let mut rx = VecSink::new(8);
        let mut q0 = sink.queue(0, 2);
        let mut q1 = sink.queue(1, 2);
        assert!(q0.transmit(&[0; 60], &mut rx));
        assert!(q1.transmit(&[0; 100], &mut rx));
        assert_eq!((sink.packets(), sink.bytes()), (2, 160));
        assert!(rx.frames.is_empty());
        assert_eq!(q0.receive(&mut rx, 32), 0);
        assert!(!q0.rx_pending() && !sink.originates());
    }

    #[test]
    fn the_udp_template_is_a_valid_ipv4_frame_of_the_length_asked() {
        let f = udp_frame(64).expect("frame");
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[26..30], &[198, 18, 0, 1]);
        assert_eq!(&f[30..34], &[198, 19, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50, "IP total length");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30, "UDP length");
        // A header with its checksum in place sums to 0xFFFF (checksums to zero).
        assert_eq!(crate::spec::frame::ipv4_checksum(&f[14..34]), 0);
        assert_eq!(udp_frame(1500).expect("1500").len(), 1500);
        assert!(udp_frame(41).is_err());
        assert_eq!(
            udp_frame(9729),
            Err(CreateGeneratorError::Length {
                len: 9729,
                min: 42,
                max: 9728
            })
        );
        assert!(Generator::new(&[]).is_err());
    }

    #[test]
    fn generator_fills_what_rx_takes_and_stops_at_its_limit() {
        let gen = Generator::udp(64).expect("gen").with_limit(10);
        assert!(gen.originates());
        let mut q = gen.queue(0, 1);
        let mut rx = VecSink::new(4);
        assert!(q.rx_pending());
        assert_eq!(q.receive(&mut rx, 32), 4, "as many as RX has room for");
        assert_eq!(rx.refused, 0, "it asked before delivering");
        rx.room = 100;
        assert_eq!(q.receive(&mut rx, 3), 3, "budget");
        assert_eq!(q.receive(&mut rx, 32), 3, "the limit");
        assert!(!q.rx_pending());
        assert_eq!(q.receive(&mut rx, 32), 0);
        assert_eq!(gen.generated(), 10);
        assert!(rx.frames.iter().all(|f| f.as_slice() == gen.template()));
        assert!(q.transmit(&[0; 60], &mut rx));
        assert_eq!((gen.consumed(), rx.frames.len()), (1, 10));
    }
}
