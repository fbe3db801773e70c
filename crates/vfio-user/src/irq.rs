//! The interrupt table: the eventfds a client bound with `DEVICE_SET_IRQS`, and per-vector
//! mask and pending state.
//!
//! The server validates a SET_IRQS message and applies it here; a device raises an interrupt
//! with [`IrqTable::trigger`], from any thread (data-path workers trigger MSI-X vectors
//! concurrently). Triggering takes a shared lock and does no allocation: the mask and pending
//! bits are atomics updated with compare-and-swap, so a trigger racing an unmask is never lost.
//! Binding and unbinding fds takes the exclusive lock.
//!
//! For PCI devices the indexes are [`INTX`], [`MSI`], [`MSIX`], [`ERR`] and [`REQ`].

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustix::io::Errno;

/// Legacy INTx interrupt index.
pub const INTX: u32 = 0;
/// MSI interrupt index.
pub const MSI: u32 = 1;
/// MSI-X interrupt index.
pub const MSIX: u32 = 2;
/// Error-reporting interrupt index.
pub const ERR: u32 = 3;
/// Device-request interrupt index.
pub const REQ: u32 = 4;

/// State bit: the vector is masked.
const MASKED: u8 = 1 << 0;
/// State bit: the vector fired while masked.
const PENDING: u8 = 1 << 1;

/// One interrupt vector.
#[derive(Debug, Default)]
struct Vector {
    /// The eventfd to signal, if the client bound one.
    fd: Option<OwnedFd>,
    /// `MASKED | PENDING` bits.
    state: AtomicU8,
}

/// What [`IrqTable::state`] reports for one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqVectorState {
    /// An eventfd is bound.
    pub has_eventfd: bool,
    /// The vector is masked.
    pub masked: bool,
    /// The vector fired while masked; it is signalled when unmasked.
    pub pending: bool,
}

/// The interrupt eventfds of one device, by IRQ index and vector. `Send + Sync`.
#[derive(Debug)]
pub struct IrqTable {
    /// `indexes[index][vector]`.
    indexes: RwLock<Vec<Vec<Vector>>>,
    /// Signals delivered to an eventfd.
    triggers: AtomicU64,
}

/// Writes 1 to an eventfd. A saturated counter (`EAGAIN`) counts as delivered.
fn signal(fd: &OwnedFd) -> Result<(), Errno> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `start..start + count` as a range into `len` vectors, or `INVAL`.
fn vector_range(len: usize, start: u32, count: usize) -> Result<std::ops::Range<usize>, Errno> {
    let start = usize::try_from(start).map_err(|_| Errno::INVAL)?;
    let end = start.checked_add(count).ok_or(Errno::INVAL)?;
    if end > len {
        return Err(Errno::INVAL);
    }
    Ok(start..end)
}

impl IrqTable {
    /// A table with `counts[index]` vectors for each index, all unbound and unmasked.
    pub fn new(counts: &[u32]) -> Self {
        let indexes = counts
            .iter()
            .map(|&n| (0..n).map(|_| Vector::default()).collect())
            .collect();
        IrqTable {
            indexes: RwLock::new(indexes),
            triggers: AtomicU64::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Vec<Vector>>> {
        self.indexes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Vec<Vector>>> {
        self.indexes.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of IRQ indexes.
    pub fn num_indexes(&self) -> u32 {
        u32::try_from(self.read().len()).unwrap_or(u32::MAX)
    }

    /// Number of vectors of `index`; 0 for an unknown index.
    pub fn count(&self, index: u32) -> u32 {
        let table = self.read();
        let len = usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .map_or(0, Vec::len);
        u32::try_from(len).unwrap_or(u32::MAX)
    }

    /// Binds (`Some`) or unbinds (`None`) eventfds for vectors `start..start + fds.len()` of
    /// `index`. Replaced fds are closed. Unbinding a vector also drops its pending bit; masks
    /// are kept. `Errno::INVAL` if the index or range is out of bounds (nothing changes then).
    pub fn set_eventfds(
        &self,
        index: u32,
        start: u32,
        fds: Vec<Option<OwnedFd>>,
    ) -> Result<(), Errno> {
        let mut old = Vec::with_capacity(fds.len());
        {
            let mut table = self.write();
            let vectors = usize::try_from(index)
                .ok()
                .and_then(|i| table.get_mut(i))
                .ok_or(Errno::INVAL)?;
            let range = vector_range(vectors.len(), start, fds.len())?;
            for (vector, fd) in vectors[range].iter_mut().zip(fds) {
                if fd.is_none() {
                    *vector.state.get_mut() &= !PENDING;
                }
                old.push(std::mem::replace(&mut vector.fd, fd));
            }
        }
        // Close the replaced fds outside the lock.
        drop(old);
        Ok(())
    }

    /// Drops every eventfd of `index` and clears its masks and pending bits (SET_IRQS with
    /// `count = 0`, `DATA_NONE | ACTION_TRIGGER`). An unknown index is ignored.
    pub fn disable(&self, index: u32) {
        let old: Vec<Option<OwnedFd>> = {
            let mut table = self.write();
            match usize::try_from(index).ok().and_then(|i| table.get_mut(i)) {
                Some(vectors) => vectors.iter_mut().map(Self::reset_vector).collect(),
                None => Vec::new(),
            }
        };
        drop(old);
    }

    /// Drops every eventfd and clears all masks and pending bits (client gone, device reset).
    pub fn clear_all(&self) {
        let old: Vec<Option<OwnedFd>> = {
            let mut table = self.write();
            table.iter_mut().flatten().map(Self::reset_vector).collect()
        };
        drop(old);
    }

    fn reset_vector(vector: &mut Vector) -> Option<OwnedFd> {
        *vector.state.get_mut() = 0;
        vector.fd.take()
    }

    /// Masks or unmasks vectors `start..start + count` of `index` (`ACTION_MASK` /
    /// `ACTION_UNMASK`). Unmasking a pending vector signals it now (if an eventfd is still
    /// bound). `Errno::INVAL` if the index or range is out of bounds (nothing changes then).
    pub fn set_masked(
        &self,
        index: u32,
        start: u32,
        count: u32,
        masked: bool,
    ) -> Result<(), Errno> {
        let table = self.read();
        let vectors = usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .ok_or(Errno::INVAL)?;
        let count = usize::try_from(count).map_err(|_| Errno::INVAL)?;
        let range = vector_range(vectors.len(), start, count)?;
        let mut result = Ok(());
        for vector in &vectors[range] {
            if masked {
                vector.state.fetch_or(MASKED, Ordering::AcqRel);
                continue;
            }
            let before = vector
                .state
                .fetch_and(!(MASKED | PENDING), Ordering::AcqRel);
            if before & PENDING != 0 {
                if let Some(fd) = &vector.fd {
                    match signal(fd) {
                        Ok(()) => {
                            self.triggers.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => result = Err(e),
                    }
                }
            }
        }
        result
    }

    /// Signals vector `vector` of `index`: writes 1 to its eventfd.
    ///
    /// `Ok(true)` when signalled; `Ok(false)` when the vector is masked (it is marked pending
    /// and signalled on unmask). `Errno::INVAL` for a bad index or vector, `Errno::NOENT` when no
    /// eventfd is bound, or the error of the eventfd write.
    pub fn trigger(&self, index: u32, vector: u32) -> Result<bool, Errno> {
        let table = self.read();
        let v = usize::try_from(index)
            .ok()
            .and_then(|i| table.get(i))
            .and_then(|vectors| vectors.get(usize::try_from(vector).ok()?))
            .ok_or(Errno::INVAL)?;
        let fd = v.fd.as_ref().ok_or(Errno::NOENT)?;

        // Latch the interrupt while masked. A failed CAS means the state changed under us (an
        // unmask, say): look again, so a concurrent unmask cannot miss this trigger.
        let mut state = v.state.load(Ordering::Acquire);
        while state & MASKED != 0 {
            match v.state.compare_exchange_weak(
                state,
                state | PENDING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(false),
                Err(now) => state = now,
            }
        }

        signal(fd)?;
        self.triggers.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The state of one vector; `None` for a bad index or vector.
    pub fn state(&self, index: u32, vector: u32) -> Option<IrqVectorState> {
        let table = self.read();
        let v = table
            .get(usize::try_from(index).ok()?)?
            .get(usize::try_from(vector).ok()?)?;
        let state = v.state.load(Ordering::Acquire);
        Some(IrqVectorState {
            has_eventfd: v.fd.is_some(),
            masked: state & MASKED != 0,
            pending: state & PENDING != 0,
        })
    }

    /// Total signals delivered to eventfds (including those delivered on unmask).
    pub fn triggers(&self) -> u64 {
        self.triggers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};
    use rustix::pipe::{pipe_with, PipeFlags};
    use std::sync::Arc;
    use std::thread;

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
    }

    /// Binds a dup of `fd` to one vector; the test keeps `fd` to read from.
    fn bind(table: &IrqTable, index: u32, vector: u32, fd: &OwnedFd) {
        let dup = fd.try_clone().expect("dup");
        table
            .set_eventfds(index, vector, vec![Some(dup)])
            .expect("bind");
    }

    /// The eventfd's counter (reading resets it); `None` when nothing is readable.
    fn read_counter(fd: &OwnedFd) -> Option<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => Some(u64::from_ne_bytes(buf)),
            Ok(n) => panic!("short eventfd read of {n} bytes"),
            Err(Errno::AGAIN) => None,
            Err(e) => panic!("eventfd read failed: {e}"),
        }
    }

    /// A nonblocking pipe; its write end stands in for an eventfd so a test can see it closed.
    fn pipe() -> (OwnedFd, OwnedFd) {
        pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).expect("pipe")
    }

    /// Ok(0) from the read end proves every copy of the write end is closed.
    fn write_end_closed(read_end: &OwnedFd) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match rustix::io::read(read_end, &mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    fn pci_table() -> IrqTable {
        IrqTable::new(&[1, 1, 8, 1, 1])
    }

    #[test]
    fn counts_and_indexes() {
        let t = pci_table();
        assert_eq!(t.num_indexes(), 5);
        assert_eq!(t.count(INTX), 1);
        assert_eq!(t.count(MSIX), 8);
        assert_eq!(t.count(5), 0);
        assert_eq!(t.count(u32::MAX), 0);
        assert_eq!(t.state(MSIX, 7), Some(IrqVectorState::default()));
        assert_eq!(t.state(MSIX, 8), None);
        assert_eq!(t.state(9, 0), None);
    }

    #[test]
    fn trigger_signals_the_eventfd() {
        let t = pci_table();
        let e = new_eventfd();
        bind(&t, MSIX, 3, &e);
        assert_eq!(t.state(MSIX, 3).map(|s| s.has_eventfd), Some(true));
        assert_eq!(t.trigger(MSIX, 3), Ok(true));
        assert_eq!(read_counter(&e), Some(1));
        assert_eq!(read_counter(&e), None);
        assert_eq!(t.trigger(MSIX, 3), Ok(true));
        assert_eq!(t.trigger(MSIX, 3), Ok(true));
        assert_eq!(read_counter(&e), Some(2));
        assert_eq!(t.triggers(), 3);
    }

    #[test]
    fn masked_trigger_is_pending_until_unmask() {
        let t = pci_table();
        let e = new_eventfd();
        bind(&t, MSIX, 0, &e);
        t.set_masked(MSIX, 0, 1, true).expect("mask");
        assert_eq!(t.trigger(MSIX, 0), Ok(false));
        assert_eq!(t.trigger(MSIX, 0), Ok(false));
        assert_eq!(read_counter(&e), None);
        assert_eq!(
            t.state(MSIX, 0),
            Some(IrqVectorState {
                has_eventfd: true,
                masked: true,
                pending: true
            })
        );
        assert_eq!(t.triggers(), 0);
        t.set_masked(MSIX, 0, 1, false).expect("unmask");
        // The latched interrupt is delivered once.
        assert_eq!(read_counter(&e), Some(1));
        assert_eq!(
            t.state(MSIX, 0),
            Some(IrqVectorState {
                has_eventfd: true,
                ..Default::default()
            })
        );
        assert_eq!(t.triggers(), 1);
        // Unmasking again does not re-deliver.
        t.set_masked(MSIX, 0, 1, false).expect("unmask again");
        assert_eq!(read_counter(&e), None);
    }

    #[test]
    fn unmask_without_pending_signals_nothing() {
        let t = pci_table();
        let e = new_eventfd();
        bind(&t, MSI, 0, &e);
        t.set_masked(MSI, 0, 1, true).expect("mask");
        t.set_masked(MSI, 0, 1, false).expect("unmask");
        assert_eq!(read_counter(&e), None);
        assert_eq!(t.trigger(MSI, 0), Ok(true));
        assert_eq!(read_counter(&e), Some(1));
    }

    #[test]
    fn mask_range_is_checked() {
        let t = pci_table();
        assert_eq!(t.set_masked(MSIX, 4, 4, true), Ok(()));
        assert_eq!(t.state(MSIX, 3).map(|s| s.masked), Some(false));
        assert_eq!(t.state(MSIX, 7).map(|s| s.masked), Some(true));
        assert_eq!(t.set_masked(MSIX, 5, 4, true), Err(Errno::INVAL));
        assert_eq!(t.set_masked(MSIX, u32::MAX, 2, true), Err(Errno::INVAL));
        assert_eq!(t.set_masked(MSIX, 0, u32::MAX, false), Err(Errno::INVAL));
        assert_eq!(t.set_masked(7, 0, 1, true), Err(Errno::INVAL));
        // A failed call changed nothing.
        assert_eq!(t.state(MSIX, 4).map(|s| s.masked), Some(true));
        assert_eq!(t.set_masked(MSIX, 8, 0, true), Ok(()));
    }

    #[test]
    fn no_eventfd_is_noent_and_bad_vector_is_inval() {
        let t = pci_table();
        assert_eq!(t.trigger(MSIX, 0), Err(Errno::NOENT));
        assert_eq!(t.trigger(MSIX, 8), Err(Errno::INVAL));
        assert_eq!(t.trigger(5, 0), Err(Errno::INVAL));
        assert_eq!(t.trigger(u32::MAX, u32::MAX), Err(Errno::INVAL));
        t.set_masked(MSIX, 0, 1, true).expect("mask");
        assert_eq!(t.trigger(MSIX, 0), Err(Errno::NOENT));
        assert_eq!(t.state(MSIX, 0).map(|s| s.pending), Some(false));
        assert_eq!(t.triggers(), 0);
    }

    #[test]
    fn set_eventfds_range_is_checked() {
        let t = pci_table();
        let e = new_eventfd();
        let fds = |n: usize| {
            (0..n)
                .map(|_| Some(e.try_clone().expect("dup")))
                .collect::<Vec<_>>()
        };
        assert_eq!(t.set_eventfds(MSIX, 6, fds(3)), Err(Errno::INVAL));
        assert_eq!(t.set_eventfds(MSIX, u32::MAX, fds(1)), Err(Errno::INVAL));
        assert_eq!(t.set_eventfds(5, 0, fds(1)), Err(Errno::INVAL));
        assert_eq!(t.state(MSIX, 6).map(|s| s.has_eventfd), Some(false));
        assert_eq!(t.set_eventfds(MSIX, 8, Vec::new()), Ok(()));
        assert_eq!(t.set_eventfds(MSIX, 0, fds(8)), Ok(()));
        for v in 0..8 {
            assert_eq!(t.trigger(MSIX, v), Ok(true));
        }
        assert_eq!(read_counter(&e), Some(8));
    }

    #[test]
    fn rebinding_closes_the_old_fd() {
        let t = pci_table();
        let (r, w) = pipe();
        t.set_eventfds(MSIX, 2, vec![Some(w)]).expect("bind pipe");
        assert_eq!(t.trigger(MSIX, 2), Ok(true));
        let e = new_eventfd();
        bind(&t, MSIX, 2, &e);
        // The pipe got the first signal, and its write end (held only by the table) is closed.
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&r, &mut buf), Ok(8));
        assert_eq!(u64::from_ne_bytes(buf), 1);
        assert!(write_end_closed(&r));
        assert_eq!(t.trigger(MSIX, 2), Ok(true));
        assert_eq!(read_counter(&e), Some(1));
    }

    #[test]
    fn unbinding_closes_the_fd_and_drops_pending() {
        let t = pci_table();
        let (r, w) = pipe();
        t.set_eventfds(MSIX, 1, vec![Some(w)]).expect("bind");
        t.set_masked(MSIX, 1, 1, true).expect("mask");
        assert_eq!(t.trigger(MSIX, 1), Ok(false));
        t.set_eventfds(MSIX, 1, vec![None]).expect("unbind");
        assert!(write_end_closed(&r));
        assert_eq!(
            t.state(MSIX, 1),
            Some(IrqVectorState {
                has_eventfd: false,
                masked: true,
                pending: false
            })
        );
        assert_eq!(t.trigger(MSIX, 1), Err(Errno::NOENT));
    }

    #[test]
    fn disable_drops_one_index() {
        let t = pci_table();
        let (r, w) = pipe();
        let e = new_eventfd();
        t.set_eventfds(MSIX, 0, vec![Some(w), None])
            .expect("bind msix");
        bind(&t, MSI, 0, &e);
        t.set_masked(MSIX, 0, 8, true).expect("mask");
        assert_eq!(t.trigger(MSIX, 0), Ok(false));
        t.disable(MSIX);
        t.disable(42);
        assert!(write_end_closed(&r));
        for v in 0..8 {
            assert_eq!(t.state(MSIX, v), Some(IrqVectorState::default()));
        }
        assert_eq!(t.trigger(MSIX, 0), Err(Errno::NOENT));
        // Other indexes are untouched.
        assert_eq!(t.trigger(MSI, 0), Ok(true));
        assert_eq!(read_counter(&e), Some(1));
    }

    #[test]
    fn clear_all_drops_everything() {
        let t = pci_table();
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        t.set_eventfds(INTX, 0, vec![Some(w1)]).expect("bind intx");
        t.set_eventfds(MSIX, 7, vec![Some(w2)]).expect("bind msix");
        t.set_masked(REQ, 0, 1, true).expect("mask");
        t.clear_all();
        assert!(write_end_closed(&r1));
        assert!(write_end_closed(&r2));
        for index in [INTX, MSI, MSIX, ERR, REQ] {
            for v in 0..t.count(index) {
                assert_eq!(t.state(index, v), Some(IrqVectorState::default()));
            }
        }
        assert_eq!(t.trigger(INTX, 0), Err(Errno::NOENT));
    }

    #[test]
    fn dropping_the_table_closes_its_fds() {
        let t = pci_table();
        let (r, w) = pipe();
        t.set_eventfds(ERR, 0, vec![Some(w)]).expect("bind");
        drop(t);
        assert!(write_end_closed(&r));
    }

    #[test]
    fn saturated_eventfd_counts_as_delivered() {
        let t = pci_table();
        let e = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd");
        // The counter's maximum is 0xffff_ffff_ffff_fffe: fill it so the next +1 would block.
        rustix::io::write(&e, &0xffff_ffff_ffff_fffeu64.to_ne_bytes()).expect("fill");
        bind(&t, MSIX, 0, &e);
        assert_eq!(t.trigger(MSIX, 0), Ok(true));
        assert_eq!(read_counter(&e), Some(0xffff_ffff_ffff_fffe));
    }

    #[test]
    fn write_errors_are_reported() {
        let t = pci_table();
        // A read-only fd where an eventfd should be: the write fails with EBADF.
        let (r, _w) = pipe();
        t.set_eventfds(MSIX, 0, vec![Some(r)]).expect("bind");
        assert_eq!(t.trigger(MSIX, 0), Err(Errno::BADF));
        assert_eq!(t.triggers(), 0);
    }

    #[test]
    fn concurrent_triggers_are_all_counted() {
        let t = Arc::new(pci_table());
        let e = new_eventfd();
        let fds = (0..4).map(|_| Some(e.try_clone().expect("dup"))).collect();
        t.set_eventfds(MSIX, 0, fds).expect("bind");
        let threads: Vec<_> = (0..4u32)
            .map(|v| {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    for _ in 0..1000 {
                        assert_eq!(t.trigger(MSIX, v), Ok(true));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("trigger thread");
        }
        assert_eq!(read_counter(&e), Some(4000));
        assert_eq!(t.triggers(), 4000);
    }

    #[test]
    fn triggers_racing_mask_and_unmask_are_never_lost() {
        // Every trigger is either delivered directly or latched and delivered on unmask.
        let t = Arc::new(pci_table());
        let e = new_eventfd();
        bind(&t, MSIX, 5, &e);
        let trigger_thread = {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                let mut direct = 0u64;
                for _ in 0..2000 {
                    if t.trigger(MSIX, 5).expect("trigger") {
                        direct += 1;
                    }
                }
                direct
            })
        };
        for _ in 0..500 {
            t.set_masked(MSIX, 5, 1, true).expect("mask");
            thread::yield_now();
            t.set_masked(MSIX, 5, 1, false).expect("unmask");
        }
        let direct = trigger_thread.join().expect("trigger thread");
        t.set_masked(MSIX, 5, 1, false).expect("final unmask");
        let delivered = read_counter(&e).unwrap_or(0);
        assert_eq!(delivered, t.triggers());
        assert!(delivered >= direct);
        // Nothing is left latched after the final unmask.
        assert_eq!(t.state(MSIX, 5).map(|s| s.pending), Some(false));
    }
}
