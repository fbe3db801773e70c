//! Interrupt delivery: where MSI and MSI-X messages go ([`MsiSink`]), what firing a vector did
//! ([`FireOutcome`]), MSI with per-vector masking, and INTx level semantics.
//!
//! Over vfio-user an interrupt is a write to an eventfd the client bound with SET_IRQS, so the
//! usual sink is [`IrqSink`] over the server's [`IrqTable`] (INTx = index 0, MSI = 1, MSI-X = 2).
//! The table has its own per-vector masks and pending bits, set by SET_IRQS MASK/UNMASK; the
//! sink reports a trigger the table latched as "not delivered now" (`Ok(false)`), and its
//! pending bits show through the PBA. Tests and devices with their own delivery use a closure.
//!
//! INTx is a level: [`ConfigSpace::set_intx`] records it in the status register's interrupt bit
//! and signals the eventfd on a rising edge when the guest has not disabled INTx (command bit 10)
//! and neither MSI nor MSI-X is enabled (the PCI spec forbids INTx then).

use emudev_vfio_user::irq::{IrqTable, INTX, MSI, MSIX};
use emudev_vfio_user::Errno;
use thiserror::Error;

use crate::config::{ConfigSpace, InterruptPin};

/// The message an MSI or MSI-X vector would write (informational over vfio-user, where the
/// client maps eventfds to vectors itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where MSI and MSI-X vectors are delivered.
///
/// Sinks are called with the MSI-X table's lock held: a sink must not call back into the table.
pub trait MsiSink {
    /// Sends `vector` now. `Ok(true)`: delivered; `Ok(false)`: the sink latched it (masked on
    /// its side) and will deliver it when it unmasks; `Err`: it could not be delivered.
    fn send(&mut self, vector: u16, message: MsiMessage) -> Result<bool, Errno>;

    /// Whether the sink holds `vector` latched (shown in the PBA).
    fn pending(&self, _vector: u16) -> bool {
        false
    }
}

/// A sink that triggers one index of the server's [`IrqTable`].
#[derive(Debug, Clone, Copy)]
pub struct IrqSink<'a> {
    irqs: &'a IrqTable,
    index: u32,
}

impl<'a> IrqSink<'a> {
    /// Vectors of IRQ index `index`.
    pub fn new(irqs: &'a IrqTable, index: u32) -> Self {
        IrqSink { irqs, index }
    }

    /// The MSI index.
    pub fn msi(irqs: &'a IrqTable) -> Self {
        Self::new(irqs, MSI)
    }

    /// The MSI-X index.
    pub fn msix(irqs: &'a IrqTable) -> Self {
        Self::new(irqs, MSIX)
    }
}

impl MsiSink for IrqSink<'_> {
    fn send(&mut self, vector: u16, _message: MsiMessage) -> Result<bool, Errno> {
        self.irqs.trigger(self.index, u32::from(vector))
    }

    fn pending(&self, vector: u16) -> bool {
        self.irqs
            .state(self.index, u32::from(vector))
            .is_some_and(|s| s.pending)
    }
}

impl<F> MsiSink for F
where
    F: FnMut(u16, MsiMessage) -> Result<bool, Errno>,
{
    fn send(&mut self, vector: u16, message: MsiMessage) -> Result<bool, Errno> {
        self(vector, message)
    }
}

/// What firing an MSI or MSI-X vector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// The sink delivered it.
    Delivered,
    /// The vector is masked (here or in the sink): it is pending and goes out on unmask.
    Pending,
    /// MSI / MSI-X is not enabled: nothing was sent or recorded.
    Disabled,
}

/// Why firing a vector failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FireError {
    /// The function has no such capability.
    #[error("the function has no such interrupt capability")]
    NoCapability,
    /// The vector is not one the guest enabled.
    #[error("vector {vector} is out of range ({vectors} vectors)")]
    BadVector {
        /// The vector fired.
        vector: u16,
        /// Vectors available.
        vectors: u16,
    },
    /// The sink failed (`NOENT`: no eventfd bound).
    #[error("delivering the interrupt failed: {0}")]
    Delivery(Errno),
}

fn sent(result: Result<bool, Errno>) -> Result<FireOutcome, FireError> {
    match result {
        Ok(true) => Ok(FireOutcome::Delivered),
        Ok(false) => Ok(FireOutcome::Pending),
        Err(e) => Err(FireError::Delivery(e)),
    }
}

/// What [`ConfigSpace::set_intx`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxOutcome {
    /// Rising edge, signalled.
    Signalled,
    /// Rising edge, latched by the IRQ table (the client masked INTx).
    Latched,
    /// Rising edge not signalled: no pin, INTx disabled, or MSI/MSI-X enabled.
    Suppressed,
    /// The level did not change.
    Unchanged,
    /// Falling edge (nothing to signal over vfio-user).
    Lowered,
}

impl ConfigSpace {
    /// Fires MSI vector `vector`: `Disabled` if MSI is off, `Pending` (pending bit set) if the
    /// vector is masked, else sent to `sink`. The message data carries the vector in its low
    /// bits.
    pub fn fire_msi(
        &mut self,
        vector: u8,
        sink: &mut dyn MsiSink,
    ) -> Result<FireOutcome, FireError> {
        let st = self.msi_state().ok_or(FireError::NoCapability)?;
        if !st.enabled {
            return Ok(FireOutcome::Disabled);
        }
        if vector >= st.vectors {
            return Err(FireError::BadVector {
                vector: u16::from(vector),
                vectors: u16::from(st.vectors),
            });
        }
        if st.mask & (1 << vector) != 0 {
            self.set_msi_pending(vector, true);
            return Ok(FireOutcome::Pending);
        }
        sent(sink.send(
            u16::from(vector),
            msi_message(st.address, st.data, st.vectors, vector),
        ))
    }

    /// Sends every MSI vector that is pending and no longer masked (after the guest cleared
    /// mask bits), clearing its pending bit. Returns how many were sent; failures are logged.
    pub fn deliver_pending_msi(&mut self, sink: &mut dyn MsiSink) -> usize {
        let Some(st) = self.msi_state().filter(|s| s.enabled) else {
            return 0;
        };
        let mut n = 0;
        for vector in 0..st.vectors {
            let bit = 1u32 << vector;
            if st.pending & bit == 0 || st.mask & bit != 0 {
                continue;
            }
            self.set_msi_pending(vector, false);
            let msg = msi_message(st.address, st.data, st.vectors, vector);
            match sink.send(u16::from(vector), msg) {
                Ok(_) => n += 1,
                Err(e) => log::debug!("pci: pending MSI vector {vector} not delivered: {e}"),
            }
        }
        n
    }

    /// Whether an asserted INTx level would reach the client now: a pin, the level up (status
    /// bit 3), INTx not disabled, MSI and MSI-X off.
    pub fn intx_deliverable(&self) -> bool {
        self.interrupt_status()
            && self.interrupt_pin() != InterruptPin::None
            && !self.intx_disabled()
            && !self.msi_enabled()
            && !self.msix_enabled()
    }

    /// Sets the INTx level: the status interrupt bit follows it, and a rising edge is signalled
    /// through `irqs` (INTx index) when [`ConfigSpace::intx_deliverable`]. Errors are the IRQ
    /// table's (`NOENT`: no eventfd bound).
    pub fn set_intx(&mut self, irqs: &IrqTable, level: bool) -> Result<IntxOutcome, Errno> {
        let was = self.interrupt_status();
        self.set_interrupt_status(level);
        match (was, level) {
            (true, true) | (false, false) => Ok(IntxOutcome::Unchanged),
            (true, false) => Ok(IntxOutcome::Lowered),
            (false, true) => self.signal_intx(irqs),
        }
    }

    /// Signals INTx again if the level is still up and deliverable (for a client that unmasked
    /// the automasked line while the device still asserts it, or after INTx was re-enabled).
    pub fn reassert_intx(&self, irqs: &IrqTable) -> Result<IntxOutcome, Errno> {
        if !self.interrupt_status() {
            return Ok(IntxOutcome::Unchanged);
        }
        self.signal_intx(irqs)
    }

    fn signal_intx(&self, irqs: &IrqTable) -> Result<IntxOutcome, Errno> {
        if !self.intx_deliverable() {
            return Ok(IntxOutcome::Suppressed);
        }
        Ok(if irqs.trigger(INTX, 0)? {
            IntxOutcome::Signalled
        } else {
            IntxOutcome::Latched
        })
    }
}

/// The MSI message of `vector` with `vectors` enabled: the vector replaces the low data bits.
fn msi_message(address: u64, data: u16, vectors: u8, vector: u8) -> MsiMessage {
    let low = u32::from(vectors).saturating_sub(1);
    MsiMessage {
        address,
        data: (u32::from(data) & !low) | u32::from(vector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::MsiSpec;
    use crate::config::{ConfigKind, PciIds};
    use crate::regs::*;
    use rustix::event::{eventfd, EventfdFlags};
    use std::os::fd::OwnedFd;

    const IDS: PciIds = PciIds {
        vendor_id: 0x1b36,
        device_id: 0x0005,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        revision: 0,
        class_code: 0xff_00_00,
    };

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()
    }

    fn fired(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(_) => u64::from_ne_bytes(b),
            Err(_) => 0,
        }
    }

    fn table_with_intx() -> (IrqTable, OwnedFd) {
        let irqs = IrqTable::new(&[1, 8, 8, 1, 1]);
        let fd = new_eventfd();
        irqs.set_eventfds(INTX, 0, vec![Some(fd.try_clone().unwrap())])
            .unwrap();
        (irqs, fd)
    }

    fn recorder(
        log: &mut Vec<(u16, MsiMessage)>,
    ) -> impl FnMut(u16, MsiMessage) -> Result<bool, Errno> + '_ {
        move |v, m| {
            log.push((v, m));
            Ok(true)
        }
    }

    #[test]
    fn msi_fire_mask_and_pending() {
        let mut cs = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::None);
        let cap = cs.add_msi(MsiSpec::new(8).with_masking(), None).unwrap();
        let mut log = Vec::new();
        assert_eq!(
            cs.fire_msi(0, &mut recorder(&mut log)),
            Ok(FireOutcome::Disabled)
        );
        // Enable with 4 of 8 vectors, data 0x4a07.
        cs.write(u64::from(cap.control_offset()), &[0x21, 0])
            .unwrap();
        cs.write(u64::from(cap.offset + 4), &0xfee0_0000u32.to_le_bytes())
            .unwrap();
        cs.write(u64::from(cap.data_offset()), &0x4a07u16.to_le_bytes())
            .unwrap();
        assert_eq!(
            cs.fire_msi(3, &mut recorder(&mut log)),
            Ok(FireOutcome::Delivered)
        );
        assert_eq!(
            cs.fire_msi(4, &mut recorder(&mut log)),
            Err(FireError::BadVector {
                vector: 4,
                vectors: 4
            })
        );
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, 3);
        assert_eq!(
            log[0].1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x4a07
            }
        );
        // Mask vectors 1 and 2: firing them sets pending bits instead.
        let mask = u64::from(cap.mask_offset().unwrap());
        cs.write(mask, &0x6u32.to_le_bytes()).unwrap();
        assert_eq!(
            cs.fire_msi(1, &mut recorder(&mut log)),
            Ok(FireOutcome::Pending)
        );
        assert_eq!(
            cs.fire_msi(2, &mut recorder(&mut log)),
            Ok(FireOutcome::Pending)
        );
        assert_eq!(cs.msi_state().unwrap().pending, 0x6);
        assert_eq!(log.len(), 1);
        // Nothing to deliver while still masked.
        assert_eq!(cs.deliver_pending_msi(&mut recorder(&mut log)), 0);
        // Unmask vector 2: it goes out, vector 1 stays pending.
        cs.write(mask, &0x2u32.to_le_bytes()).unwrap();
        assert_eq!(cs.deliver_pending_msi(&mut recorder(&mut log)), 1);
        assert_eq!(log.last().map(|e| (e.0, e.1.data)), Some((2, 0x4a06)));
        assert_eq!(cs.msi_state().unwrap().pending, 0x2);
        // Disabled: pending bits stay until MSI is back on and the vector unmasked.
        cs.write(u64::from(cap.control_offset()), &[0x20, 0])
            .unwrap();
        cs.write(mask, &[0; 4]).unwrap();
        assert_eq!(cs.deliver_pending_msi(&mut recorder(&mut log)), 0);
        cs.write(u64::from(cap.control_offset()), &[0x21, 0])
            .unwrap();
        assert_eq!(cs.deliver_pending_msi(&mut recorder(&mut log)), 1);
        assert_eq!(cs.msi_state().unwrap().pending, 0);
        let mut none = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::None);
        assert_eq!(
            none.fire_msi(0, &mut recorder(&mut log)),
            Err(FireError::NoCapability)
        );
    }

    #[test]
    fn msi_through_the_irq_table() {
        let mut cs = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::None);
        let cap = cs.add_msi(MsiSpec::new(1), None).unwrap();
        cs.write(u64::from(cap.control_offset()), &[1, 0]).unwrap();
        let irqs = IrqTable::new(&[0, 1, 0, 0, 0]);
        let mut sink = IrqSink::msi(&irqs);
        assert_eq!(
            cs.fire_msi(0, &mut sink),
            Err(FireError::Delivery(Errno::NOENT))
        );
        let fd = new_eventfd();
        irqs.set_eventfds(MSI, 0, vec![Some(fd.try_clone().unwrap())])
            .unwrap();
        assert_eq!(cs.fire_msi(0, &mut sink), Ok(FireOutcome::Delivered));
        assert_eq!(fired(&fd), 1);
        // Masked by the client (SET_IRQS): latched in the table, reported pending.
        irqs.set_masked(MSI, 0, 1, true).unwrap();
        assert_eq!(cs.fire_msi(0, &mut sink), Ok(FireOutcome::Pending));
        assert!(sink.pending(0));
        assert_eq!(fired(&fd), 0);
        irqs.set_masked(MSI, 0, 1, false).unwrap();
        assert_eq!(fired(&fd), 1);
        assert!(!sink.pending(0));
    }

    #[test]
    fn intx_level_semantics() {
        let mut cs = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::IntA);
        let (irqs, fd) = table_with_intx();
        assert_eq!(cs.set_intx(&irqs, true), Ok(IntxOutcome::Signalled));
        assert!(cs.interrupt_status());
        assert_eq!(fired(&fd), 1);
        // Still high: no new edge.
        assert_eq!(cs.set_intx(&irqs, true), Ok(IntxOutcome::Unchanged));
        assert_eq!(fired(&fd), 0);
        // Re-assert for a client that unmasked while the line is up.
        assert_eq!(cs.reassert_intx(&irqs), Ok(IntxOutcome::Signalled));
        assert_eq!(fired(&fd), 1);
        assert_eq!(cs.set_intx(&irqs, false), Ok(IntxOutcome::Lowered));
        assert!(!cs.interrupt_status());
        assert_eq!(cs.reassert_intx(&irqs), Ok(IntxOutcome::Unchanged));
        assert_eq!(fired(&fd), 0);
        // Disabled: the status bit still follows the level, nothing is signalled.
        cs.write(
            u64::from(PCI_COMMAND),
            &PCI_COMMAND_INTX_DISABLE.to_le_bytes(),
        )
        .unwrap();
        assert_eq!(cs.set_intx(&irqs, true), Ok(IntxOutcome::Suppressed));
        assert!(cs.interrupt_status());
        assert!(!cs.intx_deliverable());
        assert_eq!(fired(&fd), 0);
        cs.write(u64::from(PCI_COMMAND), &[0, 0]).unwrap();
        assert!(cs.intx_deliverable());
        assert_eq!(cs.reassert_intx(&irqs), Ok(IntxOutcome::Signalled));
        assert_eq!(fired(&fd), 1);
        // Masked by the client: latched in the IRQ table.
        cs.set_intx(&irqs, false).unwrap();
        irqs.set_masked(INTX, 0, 1, true).unwrap();
        assert_eq!(cs.set_intx(&irqs, true), Ok(IntxOutcome::Latched));
        // No eventfd: the error comes back, the level is still recorded.
        cs.set_intx(&irqs, false).unwrap();
        irqs.set_eventfds(INTX, 0, vec![None]).unwrap();
        assert_eq!(cs.set_intx(&irqs, true), Err(Errno::NOENT));
        assert!(cs.interrupt_status());
    }

    #[test]
    fn intx_suppressed_without_pin_or_with_msi() {
        let (irqs, fd) = table_with_intx();
        let mut nopin = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::None);
        assert_eq!(nopin.set_intx(&irqs, true), Ok(IntxOutcome::Suppressed));
        let mut cs = ConfigSpace::new(ConfigKind::Conventional, &IDS, InterruptPin::IntA);
        let cap = cs.add_msi(MsiSpec::new(1), None).unwrap();
        cs.write(u64::from(cap.control_offset()), &[1, 0]).unwrap();
        assert_eq!(cs.set_intx(&irqs, true), Ok(IntxOutcome::Suppressed));
        assert_eq!(fired(&fd), 0);
    }
}
