//! The DMA/IOMMU table of a vfio-user server.
//!
//! The client announces its memory with DMA_MAP requests. A request that carries a file
//! descriptor is mmapped shared into this process; one without is reachable only by sending
//! DMA_READ/DMA_WRITE messages back to the client, through the [`RemoteDma`] the server installs.
//! Devices then read and write client memory by [`Iova`] through the [`DmaTable`]:
//!
//! - [`DmaTable::read`]/[`DmaTable::write`] copy bytes, possibly across several adjacent
//!   mappings, fd-backed or not;
//! - [`DmaTable::window`] checks a range once and returns a [`DmaWindow`] for repeated copies
//!   and naturally aligned atomic loads/stores (descriptor rings, the data path).
//!
//! IOVAs ([`Iova`]) and host addresses ([`HostAddr`]) are distinct types; host addresses are
//! only reported, never accepted. No Rust reference into client memory is ever formed: all raw
//! memory access is in the private `raw` module. An unmap removes the entry from the table; the
//! memory itself stays mapped until the last in-flight access or window using it is dropped.
//!
//! The table is `Send + Sync`; share it behind an `Arc` between the server thread and device
//! workers. Lookups take a read lock only long enough to clone an `Arc` out of a `BTreeMap`.
//!
//! Known hazard: a client that shrinks a mapped file after DMA_MAP makes later accesses to the
//! cut-off pages raise SIGBUS, as with any shared file mapping; DMA_MAP only checks the file
//! size at map time.

mod error;
mod raw;
mod shared;
mod table;
mod types;
mod window;

#[cfg(test)]
mod test_util;

pub use error::{DmaAccessError, DmaMapError, DmaUnmapError};
pub use shared::SharedMemory;
pub use table::{DmaTable, RemoteDma};
pub use types::{DmaLimits, DmaMapInfo, DmaMapRequest, DmaProt, HostAddr, Iova};
pub use window::DmaWindow;
