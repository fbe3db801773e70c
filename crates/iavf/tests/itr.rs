//! ITR interrupt moderation over a real vfio-user socket: a driver brings a VF up with its
//! queue vector armed, programs the vector's ITR through `DYN_CTLN1` as Linux's
//! `iavf_buildreg_itr` does, and the test raises the queue interrupt the way the data path
//! does, counting what reaches the vector's eventfd.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{serve, unique_number, Vf};
use emudev_iavf::datapath::{self, Loopback};
use emudev_iavf::device::IrqOutcome;
use emudev_iavf::driver::{DriverConfig, BAR0_REGION};
use emudev_iavf::spec::regs::{
    vfint_dyn_ctln1, vfint_itrn1, DYN_CTL_INTENA, DYN_CTL_INTERVAL_SHIFT, DYN_CTL_ITR_INDX_MASK,
    DYN_CTL_ITR_INDX_SHIFT,
};
use emudev_iavf::{IavfConfig, IavfStats};

/// 4000 × 2 µs = 8 ms.
const LARGE_ITR: u32 = 4000;
/// How long the raises of one round may take for the round to say anything: well inside the
/// 8 ms window, so that none of them can fall after it.
const ROUND_BUDGET: Duration = Duration::from_millis(6);

/// A VF with queue interrupts armed (`DYN_CTLN1(0).INTENA`, queue 0 on vector 1 with RX ITR
/// index 0), and vector 1's eventfd.
fn up() -> (Vf, File) {
    let name = format!("emu_iavf_itr{}", unique_number());
    let cfg = DriverConfig {
        queue_interrupts: true,
        ..DriverConfig::default()
    };
    let (mut vf, _) = serve(
        "itr",
        IavfConfig::new(&name),
        |h| datapath::attach(h, Arc::new(Loopback)),
        &cfg,
        false,
    );
    let fd = vf
        .d()
        .irq_fd(1)
        .expect("vector 1 bound")
        .try_clone_to_owned()
        .expect("dup");
    (vf, File::from(fd))
}

fn write_bar0(vf: &mut Vf, off: Option<u64>, v: u32) {
    let off = off.expect("register");
    vf.d()
        .client_mut()
        .region_write(BAR0_REGION, off, &v.to_le_bytes())
        .expect("BAR0 write");
}

fn read_bar0(vf: &mut Vf, off: Option<u64>) -> u32 {
    let off = off.expect("register");
    let mut b = [0u8; 4];
    vf.d()
        .client_mut()
        .region_read(BAR0_REGION, off, &mut b)
        .expect("BAR0 read");
    u32::from_le_bytes(b)
}

/// `DYN_CTLN1` with INTENA, `ITR_INDX = index` and `INTERVAL = interval`.
fn dyn_ctl(index: u32, interval: u32) -> u32 {
    DYN_CTL_INTENA | (index << DYN_CTL_ITR_INDX_SHIFT) | (interval << DYN_CTL_INTERVAL_SHIFT)
}

/// Interrupts signalled on `fd` since the last look (the eventfd is non-blocking).
fn take(fd: &File) -> u64 {
    let mut b = [0u8; 8];
    let mut r = fd;
    match r.read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        Ok(n) => panic!("short eventfd read of {n} bytes"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// Interrupts signalled on `fd` until `want` arrived or two seconds passed.
fn wait_for(fd: &File, want: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(2);
    let mut got = take(fd);
    while got < want && Instant::now() < end {
        std::thread::sleep(Duration::from_micros(500));
        got += take(fd);
    }
    got
}

/// Waits (two seconds at most) until `cond` holds on the device's counters.
fn stats_until(vf: &Vf, cond: impl Fn(&IavfStats) -> bool) -> IavfStats {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let s = vf.handle.stats();
        if cond(&s) || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn raises_inside_a_large_itr_window_coalesce_into_one_later_interrupt() {
    let (mut vf, fd) = up();
    // Linux's iavf_buildreg_itr(RX, 8000 µs): ITR_INDX 0, INTERVAL in 2 µs units.
    write_bar0(&mut vf, vfint_dyn_ctln1(0), dyn_ctl(0, LARGE_ITR));
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(0, 0)), LARGE_ITR);
    // ITR_INDX = 3 re-arms without touching the interval.
    write_bar0(
        &mut vf,
        vfint_dyn_ctln1(0),
        DYN_CTL_INTENA | DYN_CTL_ITR_INDX_MASK | (123 << DYN_CTL_INTERVAL_SHIFT),
    );
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(0, 0)), LARGE_ITR);
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(1, 0)), 0);

    // A round only counts if its raises took less than most of the window (a loaded machine
    // may stall the test thread); a round that did not is retried, twenty times at most.
    let mut held = vf.handle.stats().irqs_deferred;
    for _ in 0..20 {
        // Nothing held any more, and the last interrupt's window is over.
        let s = stats_until(&vf, |s| s.irqs_deferred >= held);
        assert_eq!(s.irqs_deferred, held, "every held interrupt went out");
        std::thread::sleep(Duration::from_millis(20));
        take(&fd);
        let before = vf.handle.stats();

        let start = Instant::now();
        let outcomes: Vec<IrqOutcome> = (0..5).map(|_| vf.handle.raise_queue_irq(1)).collect();
        let at_once = take(&fd);
        let elapsed = start.elapsed();
        held += outcomes
            .iter()
            .filter(|o| **o == IrqOutcome::Deferred)
            .count() as u64;
        if elapsed >= ROUND_BUDGET {
            eprintln!("round took {elapsed:?}: retrying");
            continue;
        }

        assert_eq!(
            outcomes,
            [
                IrqOutcome::Delivered,
                IrqOutcome::Deferred,
                IrqOutcome::Coalesced,
                IrqOutcome::Coalesced,
                IrqOutcome::Coalesced,
            ]
        );
        assert_eq!(at_once, 1, "one interrupt at once");
        assert_eq!(wait_for(&fd, 1), 1, "the held one arrives later, once");
        let s = vf.handle.stats();
        assert_eq!(s.irqs_raised - before.irqs_raised, 2);
        assert_eq!(s.irqs_coalesced - before.irqs_coalesced, 3);
        assert_eq!(s.irqs_deferred - before.irqs_deferred, 1);
        assert_eq!(s.irqs_undelivered, before.irqs_undelivered);
        // Nothing more follows.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(take(&fd), 0);
        assert_eq!(vf.handle.stats().irqs_raised, s.irqs_raised);
        return;
    }
    panic!("no round of five raises fit in {ROUND_BUDGET:?}");
}

#[test]
fn interval_zero_fires_every_raise() {
    let (mut vf, fd) = up();
    take(&fd);
    let before = vf.handle.stats();
    // The default: the driver programmed no ITR.
    for _ in 0..5 {
        assert_eq!(vf.handle.raise_queue_irq(1), IrqOutcome::Delivered);
    }
    assert_eq!(take(&fd), 5);
    // A large interval, then back to 0, through DYN_CTLN1.
    write_bar0(&mut vf, vfint_dyn_ctln1(0), dyn_ctl(0, LARGE_ITR));
    write_bar0(&mut vf, vfint_dyn_ctln1(0), dyn_ctl(0, 0));
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(0, 0)), 0);
    for _ in 0..5 {
        assert_eq!(vf.handle.raise_queue_irq(1), IrqOutcome::Delivered);
    }
    assert_eq!(take(&fd), 5);
    let s = vf.handle.stats();
    assert_eq!(s.irqs_raised - before.irqs_raised, 10);
    assert_eq!(
        (s.irqs_coalesced, s.irqs_deferred),
        (before.irqs_coalesced, before.irqs_deferred)
    );
    // An interval on an ITR index the vector was not mapped with (TX, 1) moderates nothing.
    write_bar0(&mut vf, vfint_dyn_ctln1(0), dyn_ctl(1, LARGE_ITR));
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(1, 0)), LARGE_ITR);
    for _ in 0..3 {
        assert_eq!(vf.handle.raise_queue_irq(1), IrqOutcome::Delivered);
    }
    assert_eq!(take(&fd), 3);
}

#[test]
fn a_vector_the_driver_did_not_arm_stays_gated_under_an_itr() {
    let (mut vf, fd) = up();
    // ITR set while INTENA is cleared.
    write_bar0(
        &mut vf,
        vfint_dyn_ctln1(0),
        (LARGE_ITR << DYN_CTL_INTERVAL_SHIFT) & !DYN_CTL_INTENA,
    );
    assert_eq!(read_bar0(&mut vf, vfint_itrn1(0, 0)), LARGE_ITR);
    take(&fd);
    let before = vf.handle.stats();
    for _ in 0..3 {
        assert_eq!(vf.handle.raise_queue_irq(1), IrqOutcome::Gated);
    }
    assert_eq!(take(&fd), 0);
    assert_eq!(vf.handle.stats(), before, "a gated raise counts nothing");
    // Armed again: the causes raised while it was off fire once with the enable (the PBA
    // bit), and the next raise goes out at once (gated raises opened no window).
    write_bar0(&mut vf, vfint_dyn_ctln1(0), dyn_ctl(0, LARGE_ITR));
    assert_eq!(wait_for(&fd, 1), 1, "the pending cause, once");
    assert_eq!(vf.handle.raise_queue_irq(1), IrqOutcome::Delivered);
    assert_eq!(take(&fd), 1);
}
