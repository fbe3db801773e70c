//! The MSI-X table and pending bit array a function places in a BAR.
//!
//! [`MsixTable`] holds the entries (16 bytes each: address low/high, data, vector control whose
//! bit 0 masks the vector; at power-on every vector is masked), the PBA, and a copy of the
//! capability's enable and function-mask bits ([`MsixTable::sync_control`] after config writes;
//! the [`crate::PciDevice`] adapter does it). [`MsixTable::fire`] from any thread:
//!
//! - MSI-X disabled: [`FireOutcome::Disabled`], nothing recorded;
//! - function mask or the vector masked: the PBA bit is set, [`FireOutcome::Pending`];
//! - otherwise the [`MsiSink`] sends it ([`FireOutcome::Delivered`], or `Pending` if the sink
//!   latched it because the client masked the vector with SET_IRQS).
//!
//! A pending vector goes out (and its PBA bit clears) when it becomes unmasked while MSI-X is
//! enabled: a table write clearing its mask bit, or a config write clearing the function mask
//! or setting enable.
//!
//! ## Who owns the masks
//!
//! QEMU's `vfio-user-pci` emulates the MSI-X table itself: guest accesses to the table never
//! reach the server, QEMU masks and unmasks vectors with SET_IRQS (ACTION_MASK/UNMASK on the
//! MSI-X index, applied to the server's IRQ table), and it forwards only PBA reads. Other
//! clients forward table accesses and leave masking to the device. A table whose entries stay
//! masked from power-on would therefore never fire under QEMU. [`MsixMaskMode`] settles it:
//!
//! - [`MsixMaskMode::Table`]: the entries' mask bits gate delivery (the device emulates the
//!   table for a client that forwards it);
//! - [`MsixMaskMode::IrqTable`]: entry mask bits are stored and read back but do not gate; the
//!   IRQ table's masks (through the sink) are the only per-vector masks;
//! - [`MsixMaskMode::Auto`] (the default): `IrqTable` until the client first writes the table
//!   (since power-on or reset), `Table` from then on. QEMU never writes it, so its SET_IRQS masks
//!   rule; a forwarding client programs the table before it expects interrupts.
//!
//! In every mode the function mask and enable bits from config space apply (QEMU forwards config
//! writes to the server), IRQ-table masks apply (the sink latches), and a PBA read shows the
//! table's own pending bits ORed with the sink's latched ones.

use std::sync::{Mutex, MutexGuard, PoisonError};

use thiserror::Error;

use crate::caps::{MsixCapability, MsixControl};
use crate::config::ConfigSpace;
use crate::irq::{FireError, FireOutcome, MsiMessage, MsiSink};
use crate::regs::{PCI_MSIX_ENTRY_CTRL_MASKBIT, PCI_MSIX_ENTRY_SIZE, PCI_MSIX_ENTRY_VECTOR_CTRL};

/// Which per-vector masks gate delivery (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MsixMaskMode {
    /// `IrqTable` until the first table write since reset, then `Table`.
    #[default]
    Auto,
    /// The table entries' mask bits gate delivery.
    Table,
    /// Only the IRQ table's masks (via the sink) gate delivery.
    IrqTable,
}

/// One MSI-X table entry as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Vector control bit 0.
    pub masked: bool,
}

/// Where an access into a BAR falls relative to the MSI-X structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixRange {
    /// Entirely inside the table, at this offset from its start.
    Table(u64),
    /// Entirely inside the PBA, at this offset from its start.
    Pba(u64),
    /// Partly inside the table or PBA, partly outside.
    Straddles,
}

/// Why a table or PBA access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MsixAccessError {
    /// The access runs outside the structure.
    #[error("MSI-X access of {len} bytes at {offset:#x} is outside the structure")]
    OutOfRange {
        /// Offset inside the structure.
        offset: u64,
        /// Length.
        len: usize,
    },
}

#[derive(Debug)]
struct State {
    /// The table, `16 * vectors` bytes.
    entries: Vec<u8>,
    /// The table's own pending bits.
    pending: Vec<u64>,
    control: MsixControl,
    /// Whether the client wrote the table since power-on or reset.
    table_written: bool,
}

/// The MSI-X table and PBA of one function; `Send + Sync`, share it with workers in an `Arc`.
#[derive(Debug)]
pub struct MsixTable {
    cap: MsixCapability,
    mode: MsixMaskMode,
    state: Mutex<State>,
}

fn entry_masked(entries: &[u8], vector: u16) -> bool {
    let at =
        usize::from(vector) * PCI_MSIX_ENTRY_SIZE as usize + PCI_MSIX_ENTRY_VECTOR_CTRL as usize;
    entries
        .get(at)
        .is_some_and(|b| u32::from(*b) & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0)
}

fn entry(entries: &[u8], vector: u16) -> Option<MsixEntry> {
    let start = usize::from(vector) * PCI_MSIX_ENTRY_SIZE as usize;
    let e = entries.get(start..start + PCI_MSIX_ENTRY_SIZE as usize)?;
    let dword = |i: usize| {
        let mut b = [0u8; 4];
        if let Some(s) = e.get(i..i + 4) {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b)
    };
    Some(MsixEntry {
        address: (u64::from(dword(4)) << 32) | u64::from(dword(0)),
        data: dword(8),
        masked: dword(12) & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0,
    })
}

/// Guest-writable bits of byte `k` of an entry: address, data, and vector control bit 0.
fn entry_wmask(k: usize) -> u8 {
    match k {
        0..=11 => 0xff,
        12 => PCI_MSIX_ENTRY_CTRL_MASKBIT as u8,
        _ => 0,
    }
}

fn bit(bits: &[u64], vector: u16) -> bool {
    bits.get(usize::from(vector) / 64)
        .is_some_and(|w| w & (1 << (vector % 64)) != 0)
}

fn set_bit(bits: &mut [u64], vector: u16, on: bool) {
    if let Some(w) = bits.get_mut(usize::from(vector) / 64) {
        let m = 1u64 << (vector % 64);
        if on {
            *w |= m;
        } else {
            *w &= !m;
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn checked(offset: u64, len: usize, size: u64) -> Result<usize, MsixAccessError> {
    let err = MsixAccessError::OutOfRange { offset, len };
    let end = offset.checked_add(len as u64).ok_or(err)?;
    if end > size {
        return Err(err);
    }
    usize::try_from(offset).map_err(|_| err)
}

impl MsixTable {
    /// A power-on table for `cap` (every vector masked, nothing pending, MSI-X disabled).
    pub fn new(cap: MsixCapability, mode: MsixMaskMode) -> Self {
        let table = MsixTable {
            cap,
            mode,
            state: Mutex::new(State {
                entries: Vec::new(),
                pending: Vec::new(),
                control: MsixControl::default(),
                table_written: false,
            }),
        };
        table.reset();
        table
    }

    /// A table for the MSI-X capability of `config`, if it has one.
    pub fn from_config(config: &ConfigSpace, mode: MsixMaskMode) -> Option<Self> {
        Some(Self::new(config.msix_capability()?, mode))
    }

    /// The capability it was built for.
    pub fn capability(&self) -> MsixCapability {
        self.cap
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.cap.vectors
    }

    /// The configured mask mode.
    pub fn mode(&self) -> MsixMaskMode {
        self.mode
    }

    /// Whether the entries' mask bits gate delivery now.
    pub fn table_masks_apply(&self) -> bool {
        let st = lock(&self.state);
        self.table_authoritative(&st)
    }

    fn table_authoritative(&self, st: &State) -> bool {
        match self.mode {
            MsixMaskMode::Table => true,
            MsixMaskMode::IrqTable => false,
            MsixMaskMode::Auto => st.table_written,
        }
    }

    /// Back to power-on: every vector masked, nothing pending, disabled, `Auto` undecided.
    pub fn reset(&self) {
        let mut st = lock(&self.state);
        let n = usize::from(self.cap.vectors);
        st.entries = vec![0; n * PCI_MSIX_ENTRY_SIZE as usize];
        for v in 0..n {
            if let Some(b) = st
                .entries
                .get_mut(v * PCI_MSIX_ENTRY_SIZE as usize + PCI_MSIX_ENTRY_VECTOR_CTRL as usize)
            {
                *b = PCI_MSIX_ENTRY_CTRL_MASKBIT as u8;
            }
        }
        st.pending = vec![0; n.div_ceil(64)];
        st.control = MsixControl::default();
        st.table_written = false;
    }

    /// Entry `vector`.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        entry(&lock(&self.state).entries, vector)
    }

    /// The table's own pending bit of `vector` (not the sink's).
    pub fn is_pending(&self, vector: u16) -> bool {
        bit(&lock(&self.state).pending, vector)
    }

    /// Whether `vector` is masked here (function mask, or its entry when table masks apply).
    pub fn is_masked(&self, vector: u16) -> bool {
        let st = lock(&self.state);
        self.masked(&st, vector)
    }

    fn masked(&self, st: &State, vector: u16) -> bool {
        st.control.function_masked
            || (self.table_authoritative(st) && entry_masked(&st.entries, vector))
    }

    /// The enable and function-mask bits it works with.
    pub fn control(&self) -> MsixControl {
        lock(&self.state).control
    }

    /// Takes new enable / function-mask bits (from [`ConfigSpace::msix_control`]); vectors
    /// that become deliverable and are pending go out through `sink`. Returns how many.
    pub fn sync_control(&self, control: MsixControl, sink: &mut dyn MsiSink) -> usize {
        let mut st = lock(&self.state);
        st.control = control;
        self.flush(&mut st, sink)
    }

    /// Sends every pending vector that is deliverable now, clearing its PBA bit.
    fn flush(&self, st: &mut State, sink: &mut dyn MsiSink) -> usize {
        if !st.control.enabled || st.control.function_masked {
            return 0;
        }
        let mut n = 0;
        for vector in 0..self.cap.vectors {
            if !bit(&st.pending, vector) || self.masked(st, vector) {
                continue;
            }
            set_bit(&mut st.pending, vector, false);
            let msg = message(&st.entries, vector);
            match sink.send(vector, msg) {
                Ok(_) => n += 1,
                Err(e) => log::debug!("pci: pending MSI-X vector {vector} not delivered: {e}"),
            }
        }
        n
    }

    /// Fires `vector` (see the module documentation for what happens).
    pub fn fire(&self, vector: u16, sink: &mut dyn MsiSink) -> Result<FireOutcome, FireError> {
        if vector >= self.cap.vectors {
            return Err(FireError::BadVector {
                vector,
                vectors: self.cap.vectors,
            });
        }
        let mut st = lock(&self.state);
        if !st.control.enabled {
            return Ok(FireOutcome::Disabled);
        }
        if self.masked(&st, vector) {
            set_bit(&mut st.pending, vector, true);
            return Ok(FireOutcome::Pending);
        }
        match sink.send(vector, message(&st.entries, vector)) {
            Ok(true) => Ok(FireOutcome::Delivered),
            Ok(false) => Ok(FireOutcome::Pending),
            Err(e) => Err(FireError::Delivery(e)),
        }
    }

    /// Which structure a BAR access of `len` bytes at `offset` in BAR `bar` touches, if any.
    pub fn classify(&self, bar: u8, offset: u64, len: usize) -> Option<MsixRange> {
        let end = offset.saturating_add(len as u64);
        let check = |b: u8, r: std::ops::Range<u64>, wrap: fn(u64) -> MsixRange| {
            if b != bar || end <= r.start || offset >= r.end {
                return None;
            }
            if offset >= r.start && end <= r.end {
                Some(wrap(offset - r.start))
            } else {
                Some(MsixRange::Straddles)
            }
        };
        check(self.cap.table_bar, self.cap.table_range(), MsixRange::Table)
            .or_else(|| check(self.cap.pba_bar, self.cap.pba_range(), MsixRange::Pba))
    }

    /// Guest read of the table at `offset` from its start (any size and alignment inside it).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixAccessError> {
        let start = checked(offset, data.len(), self.cap.table_size())?;
        let st = lock(&self.state);
        if let Some(src) = st.entries.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
        Ok(())
    }

    /// Guest write of the table: address and data are RW, vector control bit 0 is RW, the
    /// rest of vector control reads 0. Vectors it unmasks that are pending go out through
    /// `sink`. In `Auto` mode the first write makes the table's masks authoritative.
    pub fn table_write(
        &self,
        offset: u64,
        data: &[u8],
        sink: &mut dyn MsiSink,
    ) -> Result<(), MsixAccessError> {
        let start = checked(offset, data.len(), self.cap.table_size())?;
        let mut st = lock(&self.state);
        st.table_written = true;
        for (k, &v) in data.iter().enumerate() {
            let i = start + k;
            let w = entry_wmask(i % PCI_MSIX_ENTRY_SIZE as usize);
            if let Some(b) = st.entries.get_mut(i) {
                *b = (*b & !w) | (v & w);
            }
        }
        self.flush(&mut st, sink);
        Ok(())
    }

    /// Guest read of the PBA at `offset` from its start: the table's pending bits ORed with the
    /// ones `sink` holds latched.
    pub fn pba_read(
        &self,
        offset: u64,
        data: &mut [u8],
        sink: &dyn MsiSink,
    ) -> Result<(), MsixAccessError> {
        let start = checked(offset, data.len(), self.cap.pba_size())?;
        let st = lock(&self.state);
        let mut words = st.pending.clone();
        drop(st);
        for vector in 0..self.cap.vectors {
            if sink.pending(vector) {
                set_bit(&mut words, vector, true);
            }
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        if let Some(src) = bytes.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
        Ok(())
    }
}

fn message(entries: &[u8], vector: u16) -> MsiMessage {
    entry(entries, vector).map_or_else(MsiMessage::default, |e| MsiMessage {
        address: e.address,
        data: e.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarSpec;
    use crate::caps::MsixSpec;
    use crate::config::{ConfigKind, InterruptPin, PciIds};
    use crate::irq::IrqSink;
    use emudev_vfio_user::irq::{IrqTable, MSIX};
    use emudev_vfio_user::Errno;
    use rustix::event::{eventfd, EventfdFlags};
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    const ENABLED: MsixControl = MsixControl {
        enabled: true,
        function_masked: false,
    };

    fn cap(vectors: u16) -> MsixCapability {
        MsixCapability {
            offset: 0x40,
            vectors,
            table_bar: 2,
            table_offset: 0x1000,
            pba_bar: 2,
            pba_offset: 0x3000,
        }
    }

    /// A sink that records what it sent.
    #[derive(Default)]
    struct Log {
        sent: Vec<(u16, MsiMessage)>,
        latched: Vec<u16>,
        fail: bool,
    }

    impl MsiSink for Log {
        fn send(&mut self, vector: u16, message: MsiMessage) -> Result<bool, Errno> {
            if self.fail {
                return Err(Errno::NOENT);
            }
            self.sent.push((vector, message));
            Ok(true)
        }
        fn pending(&self, vector: u16) -> bool {
            self.latched.contains(&vector)
        }
    }

    fn program(t: &MsixTable, v: u16, addr: u64, data: u32, masked: bool, sink: &mut Log) {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&data.to_le_bytes());
        e[12] = u8::from(masked);
        t.table_write(u64::from(v) * 16, &e, sink).unwrap();
    }

    fn pba(t: &MsixTable, sink: &Log) -> u64 {
        let mut b = [0u8; 8];
        t.pba_read(0, &mut b, sink).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn power_on_entries_are_masked() {
        let t = MsixTable::new(cap(4), MsixMaskMode::Table);
        for v in 0..4 {
            assert_eq!(
                t.entry(v),
                Some(MsixEntry {
                    address: 0,
                    data: 0,
                    masked: true
                })
            );
        }
        assert_eq!(t.entry(4), None);
        let mut b = [0u8; 64];
        t.table_read(0, &mut b).unwrap();
        for v in 0..4 {
            assert_eq!(
                &b[v * 16..v * 16 + 16],
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
            );
        }
    }

    #[test]
    fn table_mode_mask_pending_and_unmask_delivery() {
        let t = MsixTable::new(cap(4), MsixMaskMode::Table);
        let mut sink = Log::default();
        // Disabled: nothing happens, nothing is recorded.
        assert_eq!(t.fire(0, &mut sink), Ok(FireOutcome::Disabled));
        assert!(!t.is_pending(0));
        t.sync_control(ENABLED, &mut sink);
        // Masked at power-on: pending.
        assert_eq!(t.fire(1, &mut sink), Ok(FireOutcome::Pending));
        assert!(t.is_pending(1));
        assert_eq!(pba(&t, &sink), 0b10);
        assert!(sink.sent.is_empty());
        // Programming the entry unmasked delivers the pending message with the new contents.
        program(&t, 1, 0xfee0_1000, 0x41, false, &mut sink);
        assert_eq!(
            sink.sent,
            [(
                1,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x41
                }
            )]
        );
        assert!(!t.is_pending(1));
        assert_eq!(pba(&t, &sink), 0);
        // Unmasked: delivered directly.
        assert_eq!(t.fire(1, &mut sink), Ok(FireOutcome::Delivered));
        assert_eq!(sink.sent.len(), 2);
        // Mask it by writing vector control alone (a dword write at offset 12).
        t.table_write(16 + 12, &1u32.to_le_bytes(), &mut sink)
            .unwrap();
        assert!(t.is_masked(1));
        assert_eq!(t.fire(1, &mut sink), Ok(FireOutcome::Pending));
        assert_eq!(t.fire(1, &mut sink), Ok(FireOutcome::Pending));
        // Unmask with a byte write: one delivery for any number of pending fires.
        t.table_write(16 + 12, &[0], &mut sink).unwrap();
        assert_eq!(sink.sent.len(), 3);
        // Vector 0 is still masked from power-on.
        assert_eq!(t.fire(0, &mut sink), Ok(FireOutcome::Pending));
        assert_eq!(
            t.fire(4, &mut sink),
            Err(FireError::BadVector {
                vector: 4,
                vectors: 4
            })
        );
    }

    #[test]
    fn function_mask_and_enable() {
        let t = MsixTable::new(cap(4), MsixMaskMode::Table);
        let mut sink = Log::default();
        for v in 0..4 {
            program(&t, v, 0xfee0_0000, u32::from(v), false, &mut sink);
        }
        let masked_all = MsixControl {
            enabled: true,
            function_masked: true,
        };
        assert_eq!(t.sync_control(masked_all, &mut sink), 0);
        assert_eq!(t.fire(2, &mut sink), Ok(FireOutcome::Pending));
        assert_eq!(t.fire(3, &mut sink), Ok(FireOutcome::Pending));
        assert!(t.is_masked(0));
        assert_eq!(pba(&t, &sink), 0b1100);
        // Vector 3's own mask stays set when the function mask goes.
        t.table_write(3 * 16 + 12, &[1], &mut sink).unwrap();
        assert_eq!(sink.sent.len(), 0);
        assert_eq!(t.sync_control(ENABLED, &mut sink), 1);
        assert_eq!(sink.sent.last().map(|s| s.0), Some(2));
        assert_eq!(pba(&t, &sink), 0b1000);
        // Disabling keeps pending bits; re-enabling with the vector unmasked sends it.
        t.sync_control(MsixControl::default(), &mut sink);
        t.table_write(3 * 16 + 12, &[0], &mut sink).unwrap();
        assert_eq!(sink.sent.len(), 1);
        assert_eq!(t.sync_control(ENABLED, &mut sink), 1);
        assert_eq!(sink.sent.last().map(|s| s.0), Some(3));
        assert_eq!(pba(&t, &sink), 0);
        assert_eq!(t.control(), ENABLED);
    }

    #[test]
    fn table_bits_and_access_sizes() {
        let t = MsixTable::new(cap(2), MsixMaskMode::Table);
        let mut sink = Log::default();
        t.table_write(0, &[0xff; 32], &mut sink).unwrap();
        let mut b = [0u8; 32];
        t.table_read(0, &mut b).unwrap();
        let want: [u8; 16] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0,
        ];
        assert_eq!(&b[..16], &want);
        assert_eq!(&b[16..], &want);
        // Qword write of the address, unaligned reads of every size.
        t.table_write(16, &0x1_fee0_2000u64.to_le_bytes(), &mut sink)
            .unwrap();
        assert_eq!(t.entry(1).map(|e| e.address), Some(0x1_fee0_2000));
        for len in 1..=8 {
            for off in 0..=(32 - len) {
                let mut part = vec![0u8; len];
                t.table_read(off as u64, &mut part).unwrap();
                let mut whole = [0u8; 32];
                t.table_read(0, &mut whole).unwrap();
                assert_eq!(&part[..], &whole[off..off + len]);
            }
        }
        assert!(t.table_read(30, &mut [0u8; 4]).is_err());
        assert!(t.table_write(32, &[0], &mut sink).is_err());
        assert!(t.table_write(u64::MAX, &[0; 2], &mut sink).is_err());
        assert!(t.pba_read(8, &mut [0u8; 1], &sink).is_err());
        assert!(t.pba_read(4, &mut [0u8; 4], &sink).is_ok());
    }

    #[test]
    fn auto_mode_follows_the_client() {
        // Like QEMU: the table is never written; SET_IRQS masks are the truth.
        let t = MsixTable::new(cap(4), MsixMaskMode::Auto);
        let mut sink = Log::default();
        t.sync_control(ENABLED, &mut sink);
        assert!(!t.table_masks_apply());
        assert_eq!(t.fire(0, &mut sink), Ok(FireOutcome::Delivered));
        // The client latched vector 2 on its side: the PBA shows it.
        sink.latched.push(2);
        assert_eq!(pba(&t, &sink), 0b100);
        // The function mask applies in every mode.
        t.sync_control(
            MsixControl {
                enabled: true,
                function_masked: true,
            },
            &mut sink,
        );
        assert_eq!(t.fire(1, &mut sink), Ok(FireOutcome::Pending));
        assert_eq!(t.sync_control(ENABLED, &mut sink), 1);
        // A forwarding client writes the table: its masks rule from then on.
        program(&t, 0, 0xfee0_0000, 7, false, &mut sink);
        assert!(t.table_masks_apply());
        assert_eq!(t.fire(0, &mut sink), Ok(FireOutcome::Delivered));
        assert_eq!(
            t.fire(1, &mut sink),
            Ok(FireOutcome::Pending),
            "still masked from power-on"
        );
        // Reset goes back to undecided.
        t.reset();
        assert!(!t.table_masks_apply());
        assert_eq!(t.control(), MsixControl::default());
        assert!(!t.is_pending(1));
        // IrqTable mode ignores entry masks even after writes.
        let q = MsixTable::new(cap(4), MsixMaskMode::IrqTable);
        q.sync_control(ENABLED, &mut sink);
        program(&q, 0, 0, 0, true, &mut sink);
        assert_eq!(q.entry(0).map(|e| e.masked), Some(true));
        assert_eq!(q.fire(0, &mut sink), Ok(FireOutcome::Delivered));
        assert_eq!(q.mode(), MsixMaskMode::IrqTable);
    }

    #[test]
    fn delivery_failures_are_reported() {
        let t = MsixTable::new(cap(1), MsixMaskMode::IrqTable);
        let mut sink = Log {
            fail: true,
            ..Log::default()
        };
        t.sync_control(ENABLED, &mut sink);
        assert_eq!(t.fire(0, &mut sink), Err(FireError::Delivery(Errno::NOENT)));
        assert!(!t.is_pending(0));
    }

    #[test]
    fn classify_accesses() {
        let t = MsixTable::new(cap(4), MsixMaskMode::Auto);
        assert_eq!(t.classify(2, 0x1000, 4), Some(MsixRange::Table(0)));
        assert_eq!(t.classify(2, 0x103c, 4), Some(MsixRange::Table(0x3c)));
        assert_eq!(t.classify(2, 0x103c, 8), Some(MsixRange::Straddles));
        assert_eq!(t.classify(2, 0x0ffc, 8), Some(MsixRange::Straddles));
        assert_eq!(t.classify(2, 0x0ffc, 4), None);
        assert_eq!(t.classify(2, 0x1040, 4), None);
        assert_eq!(t.classify(2, 0x3004, 4), Some(MsixRange::Pba(4)));
        assert_eq!(t.classify(2, 0x3008, 4), None);
        assert_eq!(t.classify(0, 0x1000, 4), None);
        assert_eq!(t.classify(2, u64::MAX, 4), None);
    }

    #[test]
    fn through_the_irq_table() {
        let t = MsixTable::new(cap(4), MsixMaskMode::Auto);
        let irqs = IrqTable::new(&[0, 0, 4, 0, 0]);
        let fd: OwnedFd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        let fds = (0..4).map(|_| Some(fd.try_clone().unwrap())).collect();
        irqs.set_eventfds(MSIX, 0, fds).unwrap();
        let mut sink = IrqSink::msix(&irqs);
        t.sync_control(ENABLED, &mut sink);
        assert_eq!(t.fire(3, &mut sink), Ok(FireOutcome::Delivered));
        // QEMU masks with SET_IRQS: the IRQ table latches, the PBA shows it.
        irqs.set_masked(MSIX, 3, 1, true).unwrap();
        assert_eq!(t.fire(3, &mut sink), Ok(FireOutcome::Pending));
        let mut b = [0u8; 8];
        t.pba_read(0, &mut b, &sink).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0b1000);
        irqs.set_masked(MSIX, 3, 1, false).unwrap();
        t.pba_read(0, &mut b, &sink).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0);
        let mut c = [0u8; 8];
        rustix::io::read(&fd, &mut c).unwrap();
        assert_eq!(u64::from_ne_bytes(c), 2);
    }

    #[test]
    fn fires_from_many_threads() {
        let t = Arc::new(MsixTable::new(cap(64), MsixMaskMode::Table));
        let mut init = Log::default();
        t.sync_control(ENABLED, &mut init);
        for v in 0..64 {
            program(&t, v, 0, 0, v % 2 == 1, &mut init);
        }
        let handles: Vec<_> = (0..4u16)
            .map(|k| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut sink = Log::default();
                    for v in (k * 16)..(k * 16 + 16) {
                        t.fire(v, &mut sink).unwrap();
                    }
                    sink.sent.len()
                })
            })
            .collect();
        let delivered: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(delivered, 32);
        let mut sink = Log::default();
        assert_eq!(pba(&t, &sink), 0xaaaa_aaaa_aaaa_aaaa);
        for v in (1..64u16).step_by(2) {
            t.table_write(u64::from(v) * 16 + 12, &[0], &mut sink)
                .unwrap();
        }
        assert_eq!(sink.sent.len(), 32);
        assert_eq!(pba(&t, &sink), 0);
    }

    #[test]
    fn from_config_matches_the_capability() {
        let ids = PciIds {
            vendor_id: 1,
            device_id: 2,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            revision: 0,
            class_code: 0,
        };
        let mut cs = ConfigSpace::new(ConfigKind::Conventional, &ids, InterruptPin::None);
        assert!(MsixTable::from_config(&cs, MsixMaskMode::Auto).is_none());
        cs.add_bar(BarSpec::mem32(2, 0x4000)).unwrap();
        let c = cs
            .add_msix(MsixSpec::new(4, 2, 0x1000, 2, 0x3000), None)
            .unwrap();
        let t = MsixTable::from_config(&cs, MsixMaskMode::Auto).unwrap();
        assert_eq!(t.capability(), c);
        assert_eq!(t.vectors(), 4);
    }
}
