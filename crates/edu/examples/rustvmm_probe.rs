//! `rustvmm_probe <socket>`: connects to a vfio-user server with the rust-vmm `vfio_user`
//! crate's client (a client nobody here wrote) and prints what it sees, one fact per line:
//!
//! ```text
//! regions 9
//! region 0 size 0x100000 flags 0x3 mmap no
//! ...
//! irq 0 count 1 flags 0x7
//! ...
//! bar0[0x0] 0x010000ed
//! ```
//!
//! The package's ava tests run it against a device written in TypeScript. Their client has
//! no timeouts, so whoever runs this bounds it. Exit status: 0 when every step worked, 1 on
//! the first failure (reported on stderr), 2 for bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// PCI devices have 5 IRQ indexes (INTx, MSI, MSI-X, ERR, REQ).
const PCI_NUM_IRQS: u32 = 5;

fn probe(path: &Path) -> Result<(), String> {
    let mut client = vfio_user::Client::new(path).map_err(|e| format!("connect: {e}"))?;
    let regions: Vec<u32> = (0..).take_while(|&i| client.region(i).is_some()).collect();
    println!("regions {}", regions.len());
    for i in regions {
        if let Some(r) = client.region(i) {
            let mmap = if r.file_offset.is_some() { "yes" } else { "no" };
            println!(
                "region {i} size {:#x} flags {:#x} mmap {mmap}",
                r.size, r.flags
            );
        }
    }
    for index in 0..PCI_NUM_IRQS {
        let info = client
            .get_irq_info(index)
            .map_err(|e| format!("irq info {index}: {e}"))?;
        println!("irq {index} count {} flags {:#x}", info.count, info.flags);
    }
    let mut word = [0u8; 4];
    client
        .region_read(0, 0, &mut word)
        .map_err(|e| format!("BAR0 read: {e}"))?;
    println!("bar0[0x0] {:#010x}", u32::from_le_bytes(word));
    client.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: rustvmm_probe <socket>");
        return ExitCode::from(2);
    };
    match probe(&PathBuf::from(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rustvmm_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
