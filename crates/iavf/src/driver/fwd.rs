//! The client's forwarding loop, after DPDK testpmd's engines: [`IavfDriver::forward`] polls
//! every queue pair in turn until told to stop.
//!
//! - [`FwdMode::Io`]: what arrives on queue q goes back out on queue q, untouched. Zero copy:
//!   the received segments are posted on TX as they are ([`IavfDriver::rx_burst_segs`],
//!   [`IavfDriver::tx_burst_segs`]); segments the TX ring has no room for are freed and counted
//!   as `tx_dropped`, as testpmd does without `--tx-retry`.
//! - [`FwdMode::MacSwap`]: as io, with the destination and source MAC addresses swapped in
//!   place (12 bytes read and written per packet).
//! - [`FwdMode::RxOnly`]: received packets are counted and freed.
//! - [`FwdMode::TxOnly`]: a template frame ([`udp_frame`] unless given) is written into free
//!   pool buffers and sent, burst after burst; whatever arrives is freed.
//!
//! `tx_first` bursts of the template are sent before the loop starts (testpmd's `start tx_first
//! N`), which is how io and macswap get packets to forward when the device loops them back.
//! Counters ([`FwdCounters`]) are atomics added once per burst, readable from any thread while
//! the loop runs. The loop busy-polls; it ends when `stop` is set or the deadline passes (the
//! clock is read every [`CLOCK_EVERY`] rounds).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::datapath::Seg;
use super::{DriverError, IavfDriver};
use crate::spec::frame;

/// Rounds between two reads of the clock.
pub const CLOCK_EVERY: u32 = 64;

/// Most packets per burst.
pub const MAX_BURST: usize = 64;

/// A forwarding engine (testpmd `set fwd <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdMode {
    /// Back out the queue it came in on, untouched.
    Io,
    /// Back out with the MAC addresses swapped.
    MacSwap,
    /// Receive and count.
    RxOnly,
    /// Send generated frames.
    TxOnly,
}

impl FwdMode {
    /// Every mode, by name.
    pub const ALL: [FwdMode; 4] = [
        FwdMode::Io,
        FwdMode::MacSwap,
        FwdMode::RxOnly,
        FwdMode::TxOnly,
    ];

    /// Its testpmd name.
    pub fn name(self) -> &'static str {
        match self {
            FwdMode::Io => "io",
            FwdMode::MacSwap => "macswap",
            FwdMode::RxOnly => "rxonly",
            FwdMode::TxOnly => "txonly",
        }
    }
}

/// A forwarding mode name that is not one of [`FwdMode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown forwarding mode '{0}' (io, macswap, rxonly, txonly)")]
pub struct ParseFwdModeError(pub String);

impl std::str::FromStr for FwdMode {
    type Err = ParseFwdModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FwdMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseFwdModeError(s.to_owned()))
    }
}

/// How [`IavfDriver::forward`] runs.
#[derive(Debug, Clone)]
pub struct FwdConfig {
    /// The engine.
    pub mode: FwdMode,
    /// Packets per burst, 1..=[`MAX_BURST`].
    pub burst: usize,
    /// Bursts of the template sent before forwarding starts (testpmd `tx_first`), per queue.
    pub tx_first: usize,
    /// The frame txonly and `tx_first` send; `None`: [`udp_frame`] of `frame_len` bytes from
    /// the port's MAC.
    pub template: Option<Vec<u8>>,
    /// Length of the default template, 60..=the buffer size.
    pub frame_len: usize,
    /// Stop when this instant passes.
    pub deadline: Option<Instant>,
    /// CPU pause hints (`spin_loop`) after a round in which no queue received anything
    /// (0: poll flat out). Polling an RX descriptor the device has not written yet pulls its
    /// cache line away from the device, which then waits to take it back for the write; backing
    /// off briefly lets the device fill a run of descriptors undisturbed. Measured here
    /// (BENCHMARKS.md): 1024 (some tens of microseconds) forwards 10-30 % more than 0 at 64 and
    /// 1500 bytes.
    pub idle_pause: u32,
}

/// [`FwdConfig::idle_pause`]'s default.
pub const FWD_IDLE_PAUSE: u32 = 1024;

impl Default for FwdConfig {
    fn default() -> Self {
        FwdConfig {
            mode: FwdMode::Io,
            burst: 32,
            tx_first: 0,
            template: None,
            frame_len: 64,
            deadline: None,
            idle_pause: FWD_IDLE_PAUSE,
        }
    }
}

/// Forwarding counters, updated once per burst, readable while the loop runs.
#[derive(Debug, Default)]
pub struct FwdCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
}

/// [`FwdCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FwdStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Packets queued for transmission.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Packets freed because the TX ring was full.
    pub tx_dropped: u64,
}

impl FwdCounters {
    /// The counters now.
    pub fn snapshot(&self) -> FwdStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FwdStats {
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            tx_dropped: l(&self.tx_dropped),
        }
    }

    fn add(&self, b: &Burst) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.rx_packets, b.rx_packets);
        add(&self.rx_bytes, b.rx_bytes);
        add(&self.tx_packets, b.tx_packets);
        add(&self.tx_bytes, b.tx_bytes);
        add(&self.tx_dropped, b.tx_dropped);
    }
}

/// One burst's counts.
#[derive(Debug, Default)]
struct Burst {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    tx_dropped: u64,
}

impl Burst {
    fn is_empty(&self) -> bool {
        self.rx_packets == 0 && self.tx_packets == 0 && self.tx_dropped == 0
    }
}

/// A UDP/IPv4 frame of `len` bytes, at least 60 (the Ethernet minimum without FCS), from
/// `src` to `dst`: 198.18.0.1:9 → 198.19.0.1:9 ([`crate::spec::frame::udp_frame`]).
pub fn udp_frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    frame::udp_frame(len.max(60), src, dst)
}

pub use crate::spec::frame::ipv4_checksum;

/// Per-queue scratch of the loop (allocated once).
struct Scratch {
    segs: Vec<Seg>,
    swap: [u8; 12],
}

impl IavfDriver {
    /// Runs the forwarding engine `cfg.mode` on every queue pair until `stop` is set or the
    /// deadline passes; returns the counters' final values (also in `counters`).
    pub fn forward(
        &mut self,
        cfg: &FwdConfig,
        counters: &FwdCounters,
        stop: &AtomicBool,
    ) -> Result<FwdStats, DriverError> {
        let burst = cfg.burst.clamp(1, MAX_BURST);
        let queues: Vec<u16> = self.queue_pairs().iter().map(|p| p.id()).collect();
        if queues.is_empty() {
            return Err(self.not_ready("forward"));
        }
        let buf_size = self.queue_pairs()[0].buffer_size() as usize;
        let src = self.mac().unwrap_or([0x02, 0, 0, 0, 0, 1]);
        let template = match &cfg.template {
            Some(t) => t.clone(),
            None => udp_frame(cfg.frame_len, src, [0x02, 0, 0, 0, 0, 2]),
        };
        if template.is_empty() || template.len() > buf_size {
            return Err(DriverError::InvalidConfig(format!(
                "forward: frame of {} bytes (1..={buf_size})",
                template.len()
            )));
        }
        let mut scratch = Scratch {
            segs: Vec::with_capacity(MAX_BURST * 4),
            swap: [0; 12],
        };
        for &q in &queues {
            for _ in 0..cfg.tx_first {
                let b = self.send_template(q, &template, burst)?;
                counters.add(&b);
            }
        }
        let mut rounds: u32 = 0;
        loop {
            let mut any = false;
            for &q in &queues {
                let b = match cfg.mode {
                    FwdMode::Io => self.fwd_io(q, burst, false, &mut scratch)?,
                    FwdMode::MacSwap => self.fwd_io(q, burst, true, &mut scratch)?,
                    FwdMode::RxOnly => self.fwd_rx_only(q, burst, &mut scratch)?,
                    FwdMode::TxOnly => {
                        let mut b = self.fwd_rx_only(q, burst, &mut scratch)?;
                        let t = self.send_template(q, &template, burst)?;
                        b.tx_packets = t.tx_packets;
                        b.tx_bytes = t.tx_bytes;
                        b
                    }
                };
                if !b.is_empty() {
                    any = true;
                    counters.add(&b);
                }
            }
            if !any {
                for _ in 0..cfg.idle_pause {
                    std::hint::spin_loop();
                }
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(CLOCK_EVERY) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if cfg.deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
        Ok(counters.snapshot())
    }

    /// io / macswap on queue `q`: receive a burst, send the same buffers back.
    fn fwd_io(
        &mut self,
        q: u16,
        burst: usize,
        swap: bool,
        s: &mut Scratch,
    ) -> Result<Burst, DriverError> {
        s.segs.clear();
        let got = self.rx_burst_segs(q, &mut s.segs, burst)?;
        if got == 0 {
            return Ok(Burst::default());
        }
        let mut b = Burst {
            rx_packets: got as u64,
            ..Burst::default()
        };
        let mut first = true;
        for seg in &s.segs {
            b.rx_bytes += u64::from(seg.len);
            if swap && first && seg.len >= 12 {
                self.read_buf(q, seg.buf, 0, &mut s.swap)?;
                let (dst, src) = s.swap.split_at_mut(6);
                dst.swap_with_slice(src);
                self.write_buf(q, seg.buf, 0, &s.swap)?;
            }
            first = seg.eop;
        }
        let used = self.tx_burst_segs(q, &s.segs)?;
        let (sent, rest) = s.segs.split_at(used);
        b.tx_packets = sent.iter().filter(|x| x.eop).count() as u64;
        b.tx_bytes = sent.iter().map(|x| u64::from(x.len)).sum();
        if !rest.is_empty() {
            b.tx_dropped = rest.iter().filter(|x| x.eop).count() as u64;
            self.free_segs(q, rest)?;
        }
        Ok(b)
    }

    /// rxonly on queue `q`: receive a burst and free it.
    fn fwd_rx_only(&mut self, q: u16, burst: usize, s: &mut Scratch) -> Result<Burst, DriverError> {
        s.segs.clear();
        let got = self.rx_burst_segs(q, &mut s.segs, burst)?;
        if got == 0 {
            return Ok(Burst::default());
        }
        let b = Burst {
            rx_packets: got as u64,
            rx_bytes: s.segs.iter().map(|x| u64::from(x.len)).sum(),
            ..Burst::default()
        };
        self.free_segs(q, &s.segs)?;
        Ok(b)
    }

    /// Up to `burst` copies of `frame` (one buffer each) queued on `q`.
    fn send_template(&mut self, q: u16, frame: &[u8], burst: usize) -> Result<Burst, DriverError> {
        let mut segs = [Seg {
            buf: 0,
            len: 0,
            eop: true,
        }; MAX_BURST];
        let mut n = 0;
        // frame.len() <= buffer size (checked by `forward`), which fits u16.
        let len = frame.len() as u16;
        while n < burst {
            let Some(buf) = self.alloc_buf(q)? else {
                break;
            };
            self.write_buf(q, buf, 0, frame)?;
            segs[n] = Seg {
                buf,
                len,
                eop: true,
            };
            n += 1;
        }
        let used = self.tx_burst_segs(q, &segs[..n])?;
        if used < n {
            self.free_segs(q, &segs[used..n])?;
        }
        Ok(Burst {
            tx_packets: used as u64,
            tx_bytes: used as u64 * u64::from(len),
            tx_dropped: (n - used) as u64,
            ..Burst::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_their_testpmd_names_and_nothing_else() {
        for m in FwdMode::ALL {
            assert_eq!(m.name().parse::<FwdMode>(), Ok(m));
        }
        assert_eq!(
            "mac".parse::<FwdMode>(),
            Err(ParseFwdModeError("mac".into()))
        );
        assert!("IO".parse::<FwdMode>().is_err());
    }

    #[test]
    fn the_engines_frame_is_padded_to_the_ethernet_minimum() {
        let f = udp_frame(10, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
        assert_eq!(udp_frame(64, [0; 6], [0; 6]).len(), 64);
    }
}
