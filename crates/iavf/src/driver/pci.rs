//! Register access over vfio-user: BAR0 dwords (little-endian, as the AVF registers are), batches
//! of register writes (one REGION_WRITE_MULTI when the server agreed to it), and the PCI
//! config-space steps a VMM's VFIO layer performs before the driver runs: memory decoding and
//! bus mastering on, MSI-X enabled.

use emudev_pci::regs::{
    PCI_CAPABILITY_LIST, PCI_CAP_ID_MSIX, PCI_CAP_NEXT_OFF, PCI_COMMAND, PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY, PCI_HEADER_END, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_FLAGS_OFF, PCI_MSIX_FLAGS_QSIZE, PCI_STATUS, PCI_STATUS_CAP_LIST,
};
use emudev_pci::CONFIG_REGION;
use emudev_vfio_user::client::{Client, ClientError};

/// The vfio-user region of BAR0 (`VFIO_PCI_BAR0_REGION_INDEX`).
pub const BAR0_REGION: u32 = 0;
/// The vfio-user IRQ index of MSI-X (`VFIO_PCI_MSIX_IRQ_INDEX`).
pub const MSIX_IRQ_INDEX: u32 = 2;

/// Most capabilities walked before the list is declared broken (a loop).
const MAX_CAPS: usize = 48;

/// Reads the BAR0 register at `offset`.
pub(crate) fn rd32(c: &mut Client, offset: u64) -> Result<u32, ClientError> {
    let mut b = [0u8; 4];
    c.region_read(BAR0_REGION, offset, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Writes the BAR0 register at `offset` and waits for the write's reply.
pub(crate) fn wr32(c: &mut Client, offset: u64, v: u32) -> Result<(), ClientError> {
    c.region_write(BAR0_REGION, offset, &v.to_le_bytes())
}

/// Writes the BAR0 register at `offset` without waiting (a posted write, as a VMM posts MMIO
/// writes). Only for registers whose side effects need no client memory served inline.
pub(crate) fn wr32_posted(c: &mut Client, offset: u64, v: u32) -> Result<(), ClientError> {
    c.region_write_msg(BAR0_REGION, offset, &v.to_le_bytes(), true)
}

/// Writes BAR0 registers in order: one REGION_WRITE_MULTI when the server accepts it,
/// otherwise one REGION_WRITE each.
pub(crate) fn wr32_batch(c: &mut Client, writes: &[(u64, u32)]) -> Result<(), ClientError> {
    if writes.is_empty() {
        return Ok(());
    }
    if writes.len() > 1 && c.server_caps().write_multiple() {
        let bytes: Vec<[u8; 4]> = writes.iter().map(|&(_, v)| v.to_le_bytes()).collect();
        // WRITE_MULTI carries at most 1024 entries per message.
        for (ws, bs) in writes.chunks(1024).zip(bytes.chunks(1024)) {
            let multi: Vec<(u32, u64, &[u8])> = ws
                .iter()
                .zip(bs)
                .map(|(&(off, _), b)| (BAR0_REGION, off, &b[..]))
                .collect();
            c.region_write_multi(&multi)?;
        }
        return Ok(());
    }
    for &(off, v) in writes {
        wr32(c, off, v)?;
    }
    Ok(())
}

fn cfg_read16(c: &mut Client, offset: u16) -> Result<u16, ClientError> {
    let mut b = [0u8; 2];
    c.region_read(CONFIG_REGION, u64::from(offset), &mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn cfg_read8(c: &mut Client, offset: u16) -> Result<u8, ClientError> {
    let mut b = [0u8; 1];
    c.region_read(CONFIG_REGION, u64::from(offset), &mut b)?;
    Ok(b[0])
}

fn cfg_write16(c: &mut Client, offset: u16, v: u16) -> Result<(), ClientError> {
    c.region_write(CONFIG_REGION, u64::from(offset), &v.to_le_bytes())
}

/// The config-space offset of the MSI-X capability, if the list has one.
pub(crate) fn find_msix(c: &mut Client) -> Result<Option<u16>, ClientError> {
    if cfg_read16(c, PCI_STATUS)? & PCI_STATUS_CAP_LIST == 0 {
        return Ok(None);
    }
    let mut at = u16::from(cfg_read8(c, PCI_CAPABILITY_LIST)? & !3);
    for _ in 0..MAX_CAPS {
        if at < PCI_HEADER_END {
            return Ok(None);
        }
        if cfg_read8(c, at)? == PCI_CAP_ID_MSIX {
            return Ok(Some(at));
        }
        at = u16::from(cfg_read8(c, at + PCI_CAP_NEXT_OFF)? & !3);
    }
    Ok(None)
}

/// What [`enable_function`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FunctionSetup {
    /// The command register after the write.
    pub(crate) command: u16,
    /// MSI-X capability offset.
    pub(crate) msix_cap: Option<u16>,
    /// MSI-X table size.
    pub(crate) msix_vectors: u16,
}

/// Memory decoding and bus mastering on (the device DMAs descriptors and buffers only with
/// bus mastering), MSI-X enabled and the function mask cleared.
pub(crate) fn enable_function(c: &mut Client) -> Result<FunctionSetup, ClientError> {
    let cmd = cfg_read16(c, PCI_COMMAND)?;
    let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    if want != cmd {
        cfg_write16(c, PCI_COMMAND, want)?;
    }
    let msix_cap = find_msix(c)?;
    let mut msix_vectors = 0;
    if let Some(cap) = msix_cap {
        let ctl = cfg_read16(c, cap + PCI_MSIX_FLAGS_OFF)?;
        msix_vectors = (ctl & PCI_MSIX_FLAGS_QSIZE) + 1;
        let on = (ctl | PCI_MSIX_FLAGS_ENABLE) & !PCI_MSIX_FLAGS_MASKALL;
        if on != ctl {
            cfg_write16(c, cap + PCI_MSIX_FLAGS_OFF, on)?;
        }
    }
    Ok(FunctionSetup {
        command: want,
        msix_cap,
        msix_vectors,
    })
}
