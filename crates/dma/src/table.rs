//! The DMA table: the client's DMA mappings keyed by IOVA, and copy access to them.
//!
//! Mappings live in a `RwLock<BTreeMap<start, Arc<Mapping>>>`. A lookup takes the read lock,
//! clones the `Arc` of the mapping that holds the address and drops the lock before any byte is
//! copied or any DMA_READ/DMA_WRITE goes to the client, so the lock is never held across I/O
//! and an unmap can never free memory that is being accessed: the mmap goes away when the last
//! `Arc` (table entry, in-flight access or [`DmaWindow`]) is dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustix::fs::{fstat, FileType};

use crate::error::{DmaAccessError, DmaMapError, DmaUnmapError};
use crate::raw::{HostRegion, RawAccessError};
use crate::types::{DmaLimits, DmaMapInfo, DmaMapRequest, DmaProt, HostAddr, Iova};
use crate::window::DmaWindow;

/// Access to fd-less mappings goes through this (the server implements it by sending
/// DMA_READ/DMA_WRITE to the client, splitting at `max_data_xfer_size` as needed).
pub trait RemoteDma: Send + Sync + fmt::Debug {
    /// Reads `buf.len()` bytes of client memory at `iova` (DMA_READ).
    fn dma_read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` into client memory at `iova` (DMA_WRITE).
    fn dma_write(&self, iova: Iova, data: &[u8]) -> io::Result<()>;
}

/// One DMA mapping. Its range never wraps (`iova + size` fits in a `u64`).
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) iova: u64,
    pub(crate) size: u64,
    pub(crate) prot: DmaProt,
    pub(crate) file_offset: u64,
    /// The mmap for an fd-backed mapping; `None` for an fd-less one.
    pub(crate) host: Option<HostRegion>,
}

impl Mapping {
    /// One past the last IOVA (cannot overflow: checked when the mapping was made).
    pub(crate) fn end(&self) -> u64 {
        self.iova + self.size
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.iova && addr - self.iova < self.size
    }

    fn info(&self) -> DmaMapInfo {
        DmaMapInfo {
            iova: Iova(self.iova),
            size: self.size,
            prot: self.prot,
            file_offset: self.file_offset,
            host: self.host.as_ref().map(|h| HostAddr::new(h.base_addr())),
        }
    }
}

type MapTree = BTreeMap<u64, Arc<Mapping>>;

/// The mapping of `tree` holding `addr`, if any.
fn find(tree: &MapTree, addr: u64) -> Option<&Arc<Mapping>> {
    tree.range(..=addr)
        .next_back()
        .map(|(_, m)| m)
        .filter(|m| m.contains(addr))
}

/// The first existing mapping that intersects `[start, end)`, if any.
fn first_overlap(tree: &MapTree, start: u64, end: u64) -> Option<&Arc<Mapping>> {
    // Mappings are disjoint, so ordering by start also orders them by end: the last mapping that
    // starts before `end` is the one reaching furthest, and it overlaps iff it ends after `start`.
    tree.range((Bound::Unbounded, Bound::Excluded(end)))
        .next_back()
        .map(|(_, m)| m)
        .filter(|m| m.end() > start)
}

/// The DMA/IOMMU table of one vfio-user connection. Send + Sync; share it behind an `Arc`.
#[derive(Debug)]
pub struct DmaTable {
    limits: DmaLimits,
    maps: RwLock<MapTree>,
    remote: RwLock<Option<Arc<dyn RemoteDma>>>,
}

impl Default for DmaTable {
    fn default() -> Self {
        DmaTable::new(DmaLimits::default())
    }
}

impl DmaTable {
    /// An empty table enforcing `limits`.
    pub fn new(limits: DmaLimits) -> Self {
        DmaTable {
            limits,
            maps: RwLock::new(BTreeMap::new()),
            remote: RwLock::new(None),
        }
    }

    /// The limits this table enforces.
    pub fn limits(&self) -> &DmaLimits {
        &self.limits
    }

    /// Installs (or removes) the channel used for fd-less mappings.
    pub fn set_remote(&self, remote: Option<Arc<dyn RemoteDma>>) {
        *self.remote.write().unwrap_or_else(PoisonError::into_inner) = remote;
    }

    /// Whether a [`RemoteDma`] is installed.
    pub fn has_remote(&self) -> bool {
        self.remote
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn read_maps(&self) -> RwLockReadGuard<'_, MapTree> {
        // No code panics while holding the lock; a poisoned tree is still consistent.
        self.maps.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_maps(&self) -> RwLockWriteGuard<'_, MapTree> {
        self.maps.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the limits and that `[start, end)` is free in `tree`.
    fn check_room(&self, tree: &MapTree, start: u64, end: u64) -> Result<(), DmaMapError> {
        if tree.len() >= self.limits.max_maps {
            return Err(DmaMapError::TooMany {
                limit: self.limits.max_maps,
            });
        }
        if let Some(m) = first_overlap(tree, start, end) {
            return Err(DmaMapError::Overlaps {
                iova: Iova(m.iova),
                size: m.size,
            });
        }
        Ok(())
    }

    /// Adds a mapping (DMA_MAP). With an fd the memory is mmapped shared (read-only unless
    /// WRITE is granted) and the fd is closed; without one it is reached through [`RemoteDma`].
    pub fn map(&self, req: DmaMapRequest) -> Result<DmaMapInfo, DmaMapError> {
        let DmaMapRequest {
            iova,
            size,
            prot,
            file_offset,
            fd,
        } = req;
        if !prot.contains(DmaProt::READ) && !prot.contains(DmaProt::WRITE) {
            return Err(DmaMapError::BadProt);
        }
        if size == 0 {
            return Err(DmaMapError::ZeroSize);
        }
        let page = self.limits.page_size;
        if page > 1 && (iova.0 % page != 0 || size % page != 0 || file_offset % page != 0) {
            return Err(DmaMapError::Misaligned {
                iova,
                size,
                file_offset,
            });
        }
        let end = iova.0.checked_add(size).ok_or(DmaMapError::Wraps)?;
        if size > self.limits.max_map_size {
            return Err(DmaMapError::TooLarge { size });
        }
        // Refuse early, before paying for an mmap; checked again under the write lock.
        self.check_room(&self.read_maps(), iova.0, end)?;

        let host = match fd {
            Some(fd) => Some(map_fd(fd, file_offset, size, prot)?),
            None => None,
        };
        let mapping = Arc::new(Mapping {
            iova: iova.0,
            size,
            prot,
            file_offset,
            host,
        });
        let info = mapping.info();
        {
            let mut tree = self.write_maps();
            if let Err(e) = self.check_room(&tree, iova.0, end) {
                drop(tree);
                // Unmaps the fresh mmap outside the lock.
                drop(mapping);
                return Err(e);
            }
            tree.insert(iova.0, mapping);
        }
        log::debug!(
            "dma map {iova}+{size:#x} {prot} offset {file_offset:#x} host {:?}",
            info.host.map(HostAddr::raw)
        );
        Ok(info)
    }

    /// Removes the mapping that starts at `iova` and has exactly `size` bytes (DMA_UNMAP).
    /// Memory still used by a [`DmaWindow`] or an in-flight access stays mapped until that ends.
    pub fn unmap(&self, iova: Iova, size: u64) -> Result<DmaMapInfo, DmaUnmapError> {
        let removed = {
            let mut tree = self.write_maps();
            match tree.get(&iova.0) {
                Some(m) if m.size == size => tree.remove(&iova.0),
                _ => None,
            }
        };
        let mapping = removed.ok_or(DmaUnmapError::NotFound { iova, size })?;
        log::debug!("dma unmap {iova}+{size:#x}");
        Ok(mapping.info())
    }

    /// Removes every mapping (DMA_UNMAP with the ALL flag, reset, disconnect); returns them sorted.
    pub fn unmap_all(&self) -> Vec<DmaMapInfo> {
        let tree = std::mem::take(&mut *self.write_maps());
        if !tree.is_empty() {
            log::debug!("dma unmap all ({} mappings)", tree.len());
        }
        tree.values().map(|m| m.info()).collect()
    }

    /// The memory table: every mapping, sorted by IOVA.
    pub fn mappings(&self) -> Vec<DmaMapInfo> {
        self.read_maps().values().map(|m| m.info()).collect()
    }

    /// The mapping that holds `iova`, if any.
    pub fn find(&self, iova: Iova) -> Option<DmaMapInfo> {
        find(&self.read_maps(), iova.0).map(|m| m.info())
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.read_maps().len()
    }

    /// Whether there is no mapping.
    pub fn is_empty(&self) -> bool {
        self.read_maps().is_empty()
    }

    /// The mapping holding `addr`, cloned out of the table (the lock is released on return).
    fn lookup(&self, addr: u64) -> Option<Arc<Mapping>> {
        find(&self.read_maps(), addr).cloned()
    }

    /// Checks, under one read lock, that `[start, end)` is fully mapped and grants `need`.
    fn check_span(&self, start: u64, end: u64, need: DmaProt) -> Result<(), SpanError> {
        let tree = self.read_maps();
        let mut cur = start;
        while cur < end {
            let m = find(&tree, cur).ok_or(SpanError::Hole)?;
            if !m.prot.contains(need) {
                return Err(SpanError::Forbidden(cur));
            }
            cur = m.end();
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes of client memory at `iova` into `buf`. The range may span
    /// several adjacent mappings; fd-less parts are read through the [`RemoteDma`].
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaAccessError> {
        self.access(iova, buf.len(), DmaProt::READ, |m, at, start, n| {
            read_chunk(self, m, at, &mut buf[start..start + n])
        })
    }

    /// Copies `data` into client memory at `iova`. The range may span several adjacent
    /// mappings; fd-less parts are written through the [`RemoteDma`].
    pub fn write(&self, iova: Iova, data: &[u8]) -> Result<(), DmaAccessError> {
        self.access(iova, data.len(), DmaProt::WRITE, |m, at, start, n| {
            write_chunk(self, m, at, &data[start..start + n])
        })
    }

    /// Walks `[iova, iova + len)` mapping by mapping, calling `chunk(mapping, addr, buf_offset,
    /// n)` for each piece. A single-mapping access takes one lookup and allocates nothing.
    fn access(
        &self,
        iova: Iova,
        len: usize,
        need: DmaProt,
        mut chunk: impl FnMut(&Mapping, u64, usize, usize) -> Result<(), DmaAccessError>,
    ) -> Result<(), DmaAccessError> {
        if len == 0 {
            return Ok(());
        }
        let len64 = len as u64;
        let unmapped = DmaAccessError::Unmapped { iova, len: len64 };
        let Some(end) = iova.0.checked_add(len64) else {
            return Err(unmapped);
        };
        let Some(mut m) = self.lookup(iova.0) else {
            return Err(unmapped);
        };
        if end <= m.end() {
            return chunk(&m, iova.0, 0, len);
        }
        // Spanning access: validate the whole range first so that a hole or a forbidden part
        // is reported before any byte moves (a racing unmap can still cut it short).
        match self.check_span(m.end(), end, need) {
            Ok(()) => {}
            Err(SpanError::Hole) => return Err(unmapped),
            Err(SpanError::Forbidden(at)) => {
                return Err(DmaAccessError::Forbidden { iova: Iova(at) })
            }
        }
        let mut cur = iova.0;
        loop {
            let piece_end = end.min(m.end());
            let start = (cur - iova.0) as usize;
            let n = (piece_end - cur) as usize;
            chunk(&m, cur, start, n)?;
            if piece_end == end {
                return Ok(());
            }
            cur = piece_end;
            m = match self.lookup(cur) {
                Some(next) => next,
                None => {
                    return Err(DmaAccessError::Unmapped { iova, len: len64 });
                }
            };
        }
    }

    /// Reads a native-endian `u32` at `iova` (plain copy, not atomic).
    pub fn read_u32(&self, iova: Iova) -> Result<u32, DmaAccessError> {
        let mut b = [0u8; 4];
        self.read(iova, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Reads a native-endian `u64` at `iova` (plain copy, not atomic).
    pub fn read_u64(&self, iova: Iova) -> Result<u64, DmaAccessError> {
        let mut b = [0u8; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Writes a native-endian `u32` at `iova` (plain copy, not atomic).
    pub fn write_u32(&self, iova: Iova, value: u32) -> Result<(), DmaAccessError> {
        self.write(iova, &value.to_ne_bytes())
    }

    /// Writes a native-endian `u64` at `iova` (plain copy, not atomic).
    pub fn write_u64(&self, iova: Iova, value: u64) -> Result<(), DmaAccessError> {
        self.write(iova, &value.to_ne_bytes())
    }

    /// A bounds-checked window over `[iova, iova + len)`, which must lie inside one fd-backed
    /// mapping granting `access`, for repeated access (data path): checked once here.
    pub fn window(
        &self,
        iova: Iova,
        len: u64,
        access: DmaProt,
    ) -> Result<DmaWindow, DmaAccessError> {
        let unmapped = DmaAccessError::Unmapped { iova, len };
        let end = iova
            .0
            .checked_add(len)
            .ok_or(DmaAccessError::Unmapped { iova, len })?;
        let m = self.lookup(iova.0).ok_or(unmapped)?;
        if end > m.end() {
            return Err(match self.check_span(m.end(), end, DmaProt::NONE) {
                Ok(()) => DmaAccessError::SpansMappings { iova, len },
                Err(_) => DmaAccessError::Unmapped { iova, len },
            });
        }
        if !m.prot.contains(access) {
            return Err(DmaAccessError::Forbidden { iova });
        }
        if m.host.is_none() {
            return Err(DmaAccessError::NotMmapped { iova });
        }
        let offset = iova.0 - m.iova;
        Ok(DmaWindow::new(m, iova, offset, len, access))
    }

    fn remote(&self) -> Option<Arc<dyn RemoteDma>> {
        self.remote
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Why a span check failed.
enum SpanError {
    Hole,
    Forbidden(u64),
}

/// Translates a refusal of the raw layer for an access at `at`.
pub(crate) fn raw_to_access(e: RawAccessError, at: u64, len: u64, offset: u64) -> DmaAccessError {
    match e {
        RawAccessError::OutOfRange => DmaAccessError::Unmapped {
            iova: Iova(at),
            len,
        },
        RawAccessError::ReadOnly | RawAccessError::Unsupported => {
            DmaAccessError::Forbidden { iova: Iova(at) }
        }
        RawAccessError::Misaligned => DmaAccessError::Misaligned { offset },
    }
}

fn read_chunk(
    table: &DmaTable,
    m: &Mapping,
    at: u64,
    buf: &mut [u8],
) -> Result<(), DmaAccessError> {
    if !m.prot.contains(DmaProt::READ) {
        return Err(DmaAccessError::Forbidden { iova: Iova(at) });
    }
    match &m.host {
        Some(h) => h
            .copy_out(at - m.iova, buf)
            .map_err(|e| raw_to_access(e, at, buf.len() as u64, at - m.iova)),
        None => {
            let remote = table
                .remote()
                .ok_or(DmaAccessError::NoRemote { iova: Iova(at) })?;
            remote
                .dma_read(Iova(at), buf)
                .map_err(DmaAccessError::Remote)
        }
    }
}

fn write_chunk(table: &DmaTable, m: &Mapping, at: u64, data: &[u8]) -> Result<(), DmaAccessError> {
    if !m.prot.contains(DmaProt::WRITE) {
        return Err(DmaAccessError::Forbidden { iova: Iova(at) });
    }
    match &m.host {
        Some(h) => h
            .copy_in(at - m.iova, data)
            .map_err(|e| raw_to_access(e, at, data.len() as u64, at - m.iova)),
        None => {
            let remote = table
                .remote()
                .ok_or(DmaAccessError::NoRemote { iova: Iova(at) })?;
            remote
                .dma_write(Iova(at), data)
                .map_err(DmaAccessError::Remote)
        }
    }
}

/// mmaps an fd-backed mapping after checking it does not run past the end of a regular file.
fn map_fd(
    fd: OwnedFd,
    file_offset: u64,
    size: u64,
    prot: DmaProt,
) -> Result<HostRegion, DmaMapError> {
    let invalid = |msg: String| DmaMapError::Mmap(io::Error::new(io::ErrorKind::InvalidInput, msg));
    let len = usize::try_from(size).map_err(|_| {
        invalid(format!(
            "mapping of {size:#x} bytes does not fit the address space"
        ))
    })?;
    let st = fstat(&fd).map_err(|e| DmaMapError::Mmap(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size > 0 {
        // Touching pages past the end of the file would raise SIGBUS.
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        let fits = file_offset
            .checked_add(size)
            .is_some_and(|end| end <= file_size);
        if !fits {
            return Err(invalid(format!(
                "mapping {file_offset:#x}+{size:#x} runs past the end of the file ({file_size:#x} bytes)"
            )));
        }
    }
    HostRegion::map_shared(&fd, file_offset, len, prot.contains(DmaProt::WRITE))
        .map_err(DmaMapError::Mmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{dup, fd_req, file_read, file_write, memfd, remote_req, FakeRemote};
    use rustix::fs::{open, Mode, OFlags};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PG: u64 = 4096;

    fn table() -> DmaTable {
        DmaTable::new(DmaLimits::default())
    }

    #[test]
    fn table_and_window_are_send_sync() {
        fn check<T: Send + Sync + fmt::Debug>() {}
        check::<DmaTable>();
        check::<DmaWindow>();
        check::<Arc<DmaTable>>();
    }

    #[test]
    fn map_read_write_round_trip_is_shared_with_the_file() {
        let t = table();
        let fd = memfd(4 * PG);
        let info = t
            .map(fd_req(0x10000, 2 * PG, DmaProt::RW, PG, dup(&fd)))
            .expect("map");
        assert_eq!(info.iova, Iova(0x10000));
        assert_eq!(info.size, 2 * PG);
        assert_eq!(info.prot, DmaProt::RW);
        assert_eq!(info.file_offset, PG);
        assert!(info.host.is_some_and(|h| h.raw() != 0));
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());

        // The client writes its memory; the device sees it at iova = 0x10000 + (off - PG).
        file_write(&fd, PG + 0x10, b"hello dma");
        let mut buf = [0u8; 9];
        t.read(Iova(0x10010), &mut buf).expect("read");
        assert_eq!(&buf, b"hello dma");

        // The device writes; the client sees it in the file.
        t.write(Iova(0x10000 + 2 * PG - 4), &[9, 8, 7, 6])
            .expect("write");
        assert_eq!(file_read(&fd, 3 * PG - 4, 4), vec![9, 8, 7, 6]);
        // Nothing leaked into the page before the mapping.
        assert_eq!(file_read(&fd, PG - 4, 4), vec![0; 4]);

        t.write_u32(Iova(0x10100), 0xdead_beef).expect("write_u32");
        assert_eq!(t.read_u32(Iova(0x10100)).expect("read_u32"), 0xdead_beef);
        assert_eq!(
            file_read(&fd, PG + 0x100, 4),
            0xdead_beef_u32.to_ne_bytes().to_vec()
        );
        t.write_u64(Iova(0x10200), 0x0123_4567_89ab_cdef)
            .expect("write_u64");
        assert_eq!(
            t.read_u64(Iova(0x10200)).expect("read_u64"),
            0x0123_4567_89ab_cdef
        );
        assert_eq!(t.find(Iova(0x11fff)), Some(info.clone()));
        assert_eq!(t.find(Iova(0x12000)), None);
        assert_eq!(t.mappings(), vec![info]);
    }

    #[test]
    fn two_mappings_of_one_file_share_memory() {
        let t = table();
        let fd = memfd(PG);
        t.map(fd_req(0, PG, DmaProt::RW, 0, dup(&fd)))
            .expect("map a");
        t.map(fd_req(0x100000, PG, DmaProt::READ, 0, dup(&fd)))
            .expect("map b");
        t.write(Iova(0x80), b"alias").expect("write via a");
        let mut buf = [0u8; 5];
        t.read(Iova(0x100080), &mut buf).expect("read via b");
        assert_eq!(&buf, b"alias");
    }

    #[test]
    fn access_spans_adjacent_mappings() {
        let t = table();
        let a = memfd(PG);
        let b = memfd(PG);
        t.map(fd_req(0x1000, PG, DmaProt::RW, 0, dup(&a)))
            .expect("map a");
        t.map(fd_req(0x2000, PG, DmaProt::RW, 0, dup(&b)))
            .expect("map b");
        let data: Vec<u8> = (0..16).collect();
        t.write(Iova(0x2000 - 8), &data).expect("spanning write");
        assert_eq!(file_read(&a, PG - 8, 8), data[..8].to_vec());
        assert_eq!(file_read(&b, 0, 8), data[8..].to_vec());
        let mut back = [0u8; 16];
        t.read(Iova(0x2000 - 8), &mut back).expect("spanning read");
        assert_eq!(back.to_vec(), data);
        // The whole of both mappings in one read.
        let mut all = vec![0u8; 2 * PG as usize];
        t.read(Iova(0x1000), &mut all).expect("read both");
        assert_eq!(&all[PG as usize - 8..PG as usize + 8], &data[..]);
        // One byte past the second mapping: nothing is copied, the whole access is refused.
        let mut over = vec![0u8; 2 * PG as usize + 1];
        let e = t.read(Iova(0x1000), &mut over).expect_err("past the end");
        assert!(
            matches!(e, DmaAccessError::Unmapped { iova: Iova(0x1000), len } if len == 2 * PG + 1)
        );
    }

    #[test]
    fn access_with_a_hole_between_mappings_fails_before_copying() {
        let t = table();
        let a = memfd(PG);
        let b = memfd(PG);
        t.map(fd_req(0x1000, PG, DmaProt::RW, 0, dup(&a)))
            .expect("map a");
        t.map(fd_req(0x3000, PG, DmaProt::RW, 0, dup(&b)))
            .expect("map b");
        let data = vec![0xaau8; 2 * PG as usize + 16];
        let e = t.write(Iova(0x2000 - 8), &data).expect_err("hole");
        assert!(matches!(e, DmaAccessError::Unmapped { .. }));
        assert_eq!(e.errno(), 14);
        assert_eq!(
            file_read(&a, PG - 8, 8),
            vec![0; 8],
            "no partial write before the hole"
        );
    }

    #[test]
    fn fd_less_mapping_goes_through_remote() {
        let t = table();
        t.map(remote_req(0x40000, 2 * PG, DmaProt::RW))
            .expect("map fd-less");
        assert_eq!(t.mappings()[0].host, None);

        // Without a remote: NoRemote, for reads and writes.
        let mut buf = [0u8; 4];
        let e = t.read(Iova(0x40010), &mut buf).expect_err("no remote");
        assert!(matches!(
            e,
            DmaAccessError::NoRemote {
                iova: Iova(0x40010)
            }
        ));
        assert_eq!(e.errno(), 14);
        assert!(matches!(
            t.write(Iova(0x40010), &buf),
            Err(DmaAccessError::NoRemote { .. })
        ));
        assert!(!t.has_remote());

        let remote = Arc::new(FakeRemote::new(0x40000, 2 * PG as usize));
        t.set_remote(Some(remote.clone()));
        assert!(t.has_remote());
        t.write(Iova(0x40010), &[1, 2, 3, 4]).expect("remote write");
        assert_eq!(&remote.mem.lock().expect("lock")[0x10..0x14], &[1, 2, 3, 4]);
        remote.mem.lock().expect("lock")[0x20] = 0x5a;
        assert_eq!(
            t.read_u32(Iova(0x40020)).expect("remote read"),
            u32::from_ne_bytes([0x5a, 0, 0, 0])
        );
        assert_eq!(remote.calls.load(Ordering::SeqCst), 2);

        // No window over memory we cannot point at.
        assert!(matches!(
            t.window(Iova(0x40000), 16, DmaProt::READ),
            Err(DmaAccessError::NotMmapped { .. })
        ));

        t.set_remote(None);
        assert!(matches!(
            t.read(Iova(0x40010), &mut buf),
            Err(DmaAccessError::NoRemote { .. })
        ));
    }

    #[test]
    fn remote_failure_is_reported_as_eio() {
        let t = table();
        t.map(remote_req(0, PG, DmaProt::RW)).expect("map");
        let mut remote = FakeRemote::new(0, PG as usize);
        remote.fail = true;
        t.set_remote(Some(Arc::new(remote)));
        let e = t.read_u64(Iova(8)).expect_err("remote fails");
        assert!(matches!(e, DmaAccessError::Remote(_)));
        assert_eq!(e.errno(), 5);
    }

    #[test]
    fn access_spans_fd_backed_and_fd_less_mappings() {
        let t = table();
        let fd = memfd(PG);
        t.map(fd_req(0, PG, DmaProt::RW, 0, dup(&fd)))
            .expect("map fd");
        t.map(remote_req(PG, PG, DmaProt::RW)).expect("map fd-less");
        let remote = Arc::new(FakeRemote::new(PG, PG as usize));
        t.set_remote(Some(remote.clone()));
        t.write(Iova(PG - 2), &[1, 2, 3, 4]).expect("write");
        assert_eq!(file_read(&fd, PG - 2, 2), vec![1, 2]);
        assert_eq!(&remote.mem.lock().expect("lock")[..2], &[3, 4]);
        let mut back = [0u8; 4];
        t.read(Iova(PG - 2), &mut back).expect("read");
        assert_eq!(back, [1, 2, 3, 4]);
    }

    #[test]
    fn map_rejects_bad_requests() {
        let t = table();
        let fd = memfd(4 * PG);
        let e = t
            .map(fd_req(0, 0, DmaProt::RW, 0, dup(&fd)))
            .expect_err("zero");
        assert!(matches!(e, DmaMapError::ZeroSize));
        assert_eq!(e.errno(), 22);

        let e = t
            .map(remote_req(0, PG, DmaProt::NONE))
            .expect_err("no prot");
        assert!(matches!(e, DmaMapError::BadProt));
        assert_eq!(e.errno(), 22);

        for (iova, size, off) in [(0x800, PG, 0), (0, PG + 1, 0), (0, PG, 0x200)] {
            let e = t
                .map(fd_req(iova, size, DmaProt::RW, off, dup(&fd)))
                .expect_err("misaligned");
            assert!(
                matches!(e, DmaMapError::Misaligned { iova: i, size: s, file_offset: o } if i == Iova(iova) && s == size && o == off),
                "{e:?}"
            );
            assert_eq!(e.errno(), 22);
        }

        let e = t
            .map(remote_req(u64::MAX - PG + 1, 2 * PG, DmaProt::RW))
            .expect_err("wraps");
        assert!(matches!(e, DmaMapError::Wraps));
        assert_eq!(e.errno(), 22);
        assert!(t.is_empty(), "nothing was added by failed requests");
    }

    #[test]
    fn page_size_zero_disables_alignment_check() {
        let t = DmaTable::new(DmaLimits {
            page_size: 0,
            ..DmaLimits::default()
        });
        t.map(remote_req(0x801, 3, DmaProt::READ))
            .expect("unaligned allowed");
        assert_eq!(t.find(Iova(0x803)).map(|i| i.size), Some(3));
        assert_eq!(t.find(Iova(0x804)), None);
    }

    #[test]
    fn map_rejects_every_kind_of_overlap() {
        let t = table();
        t.map(remote_req(0x10000, 0x4000, DmaProt::RW))
            .expect("base map");
        let cases = [
            ("identical", 0x10000, 0x4000),
            ("inside", 0x11000, 0x1000),
            ("straddling start", 0xf000, 0x2000),
            ("straddling end", 0x13000, 0x2000),
            ("covering", 0x8000, 0x10000),
            ("same start, shorter", 0x10000, 0x1000),
            ("same end, longer", 0xc000, 0x8000),
        ];
        for (what, iova, size) in cases {
            let e = t.map(remote_req(iova, size, DmaProt::RW)).expect_err(what);
            assert!(
                matches!(
                    e,
                    DmaMapError::Overlaps {
                        iova: Iova(0x10000),
                        size: 0x4000
                    }
                ),
                "{what}: {e:?}"
            );
            assert_eq!(e.errno(), 17, "{what}");
        }
        // Adjacent on both sides is fine.
        t.map(remote_req(0xf000, 0x1000, DmaProt::RW))
            .expect("adjacent below");
        t.map(remote_req(0x14000, 0x1000, DmaProt::RW))
            .expect("adjacent above");
        // Overlap detection must also find a mapping that is not the nearest by start.
        let e = t
            .map(remote_req(0x13000, 0x3000, DmaProt::RW))
            .expect_err("covers two");
        assert!(matches!(e, DmaMapError::Overlaps { .. }));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn map_enforces_count_and_size_limits() {
        let t = DmaTable::new(DmaLimits {
            max_maps: 2,
            page_size: PG,
            max_map_size: 4 * PG,
        });
        assert_eq!(t.limits().max_maps, 2);
        let e = t
            .map(remote_req(0, 8 * PG, DmaProt::RW))
            .expect_err("too large");
        assert!(matches!(e, DmaMapError::TooLarge { size } if size == 8 * PG));
        assert_eq!(e.errno(), 28);
        t.map(remote_req(0, 4 * PG, DmaProt::RW))
            .expect("max size is allowed");
        t.map(remote_req(8 * PG, PG, DmaProt::RW)).expect("second");
        let e = t
            .map(remote_req(16 * PG, PG, DmaProt::RW))
            .expect_err("third");
        assert!(matches!(e, DmaMapError::TooMany { limit: 2 }));
        assert_eq!(e.errno(), 22);
        t.unmap(Iova(8 * PG), PG).expect("unmap");
        t.map(remote_req(16 * PG, PG, DmaProt::RW))
            .expect("room again");
    }

    #[test]
    fn map_refuses_ranges_past_the_end_of_the_file() {
        let t = table();
        let fd = memfd(2 * PG);
        let e = t
            .map(fd_req(0, 2 * PG, DmaProt::RW, PG, dup(&fd)))
            .expect_err("past eof");
        assert!(matches!(e, DmaMapError::Mmap(_)));
        assert_eq!(e.errno(), 22);
        let e = t
            .map(fd_req(0, PG, DmaProt::RW, u64::MAX - PG + 1, dup(&fd)))
            .expect_err("offset overflow");
        assert!(matches!(e, DmaMapError::Mmap(_)));
        t.map(fd_req(0, PG, DmaProt::RW, PG, dup(&fd)))
            .expect("last page fits");
    }

    #[test]
    fn map_reports_the_mmap_errno() {
        let t = table();
        let fd = memfd(PG);
        // A read-only descriptor cannot be mapped writable: the kernel says EACCES.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let ro = open(
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open ro");
        let e = t
            .map(fd_req(0, PG, DmaProt::RW, 0, dup(&ro)))
            .expect_err("rw on ro fd");
        assert!(matches!(e, DmaMapError::Mmap(_)));
        assert_eq!(e.errno(), 13);
        // But read-only is fine.
        t.map(fd_req(0, PG, DmaProt::READ, 0, ro)).expect("ro map");
    }

    #[test]
    fn unmap_must_match_exactly() {
        let t = table();
        t.map(remote_req(0x10000, 0x4000, DmaProt::RW))
            .expect("map");
        for (iova, size) in [
            (0x20000, 0x1000),
            (0x10000, 0x1000),
            (0x11000, 0x3000),
            (0x10000, 0x8000),
            (0x10000, 0),
        ] {
            let e = t.unmap(Iova(iova), size).expect_err("not exact");
            assert!(
                matches!(e, DmaUnmapError::NotFound { iova: i, size: s } if i == Iova(iova) && s == size)
            );
            assert_eq!(e.errno(), 2);
        }
        assert_eq!(t.len(), 1);
        let info = t.unmap(Iova(0x10000), 0x4000).expect("exact");
        assert_eq!((info.iova, info.size), (Iova(0x10000), 0x4000));
        assert!(t.is_empty());
        assert!(matches!(
            t.unmap(Iova(0x10000), 0x4000),
            Err(DmaUnmapError::NotFound { .. })
        ));
        // The range is free again.
        t.map(remote_req(0x10000, 0x1000, DmaProt::RW))
            .expect("remap");
    }

    #[test]
    fn unmap_all_returns_everything_sorted() {
        let t = table();
        assert!(t.unmap_all().is_empty());
        let fd = memfd(PG);
        t.map(remote_req(0x30000, PG, DmaProt::READ)).expect("c");
        t.map(fd_req(0x10000, PG, DmaProt::RW, 0, dup(&fd)))
            .expect("a");
        t.map(remote_req(0x20000, PG, DmaProt::WRITE)).expect("b");
        let listed: Vec<u64> = t.mappings().iter().map(|m| m.iova.raw()).collect();
        assert_eq!(listed, vec![0x10000, 0x20000, 0x30000]);
        let all = t.unmap_all();
        let iovas: Vec<u64> = all.iter().map(|m| m.iova.raw()).collect();
        assert_eq!(iovas, vec![0x10000, 0x20000, 0x30000]);
        assert!(all[0].host.is_some() && all[1].host.is_none());
        assert!(t.is_empty());
        assert!(matches!(
            t.read_u32(Iova(0x10000)),
            Err(DmaAccessError::Unmapped { .. })
        ));
    }

    #[test]
    fn access_at_the_edges_of_a_mapping() {
        let t = table();
        let fd = memfd(PG);
        t.map(fd_req(0x5000, PG, DmaProt::RW, 0, dup(&fd)))
            .expect("map");
        t.write(Iova(0x5fff), &[0x77]).expect("last byte");
        let mut one = [0u8; 1];
        t.read(Iova(0x5fff), &mut one).expect("last byte");
        assert_eq!(one, [0x77]);
        t.read(Iova(0x5000), &mut one).expect("first byte");
        let e = t.read(Iova(0x6000), &mut one).expect_err("one past");
        assert!(matches!(
            e,
            DmaAccessError::Unmapped {
                iova: Iova(0x6000),
                len: 1
            }
        ));
        assert!(matches!(
            t.read(Iova(0x4fff), &mut one),
            Err(DmaAccessError::Unmapped { .. })
        ));
        let mut two = [0u8; 2];
        assert!(matches!(
            t.read(Iova(0x5fff), &mut two),
            Err(DmaAccessError::Unmapped { .. })
        ));
        assert!(matches!(
            t.write(Iova(0x4fff), &two),
            Err(DmaAccessError::Unmapped { .. })
        ));
        assert_eq!(
            file_read(&fd, 0, 1),
            vec![0],
            "refused write left memory alone"
        );
        // Zero-length accesses touch nothing and always succeed.
        t.read(Iova(0x9000_0000), &mut []).expect("empty read");
        t.write(Iova(u64::MAX), &[]).expect("empty write");
        // Ranges that wrap the address space are unmapped.
        assert!(matches!(
            t.read(Iova(u64::MAX), &mut two),
            Err(DmaAccessError::Unmapped { .. })
        ));
    }

    #[test]
    fn access_rights_are_enforced() {
        let t = table();
        let ro = memfd(PG);
        let wo = memfd(PG);
        file_write(&ro, 0, &[1, 2, 3, 4]);
        t.map(fd_req(0x1000, PG, DmaProt::READ, 0, dup(&ro)))
            .expect("ro");
        t.map(fd_req(0x2000, PG, DmaProt::WRITE, 0, dup(&wo)))
            .expect("wo");

        let e = t.write(Iova(0x1000), &[9]).expect_err("write to read-only");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x1000) }
        ));
        assert_eq!(e.errno(), 13);
        assert_eq!(file_read(&ro, 0, 4), vec![1, 2, 3, 4]);
        assert_eq!(
            t.read_u32(Iova(0x1000)).expect("read ro"),
            u32::from_ne_bytes([1, 2, 3, 4])
        );

        t.write(Iova(0x2000), &[5]).expect("write wo");
        assert_eq!(file_read(&wo, 0, 1), vec![5]);
        let e = t.read_u32(Iova(0x2000)).expect_err("read write-only");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x2000) }
        ));

        // Spanning ro -> wo: a write is refused before the writable part changes.
        let e = t.write(Iova(0x1ffe), &[7; 4]).expect_err("span write");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x1ffe) }
        ));
        let e = t.read(Iova(0x1ffe), &mut [0; 4]).expect_err("span read");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x2000) }
        ));
        // Now wo -> rw: the second part is refused up front, the first stays untouched.
        let rw = memfd(PG);
        t.map(fd_req(0x3000, PG, DmaProt::READ, 0, dup(&rw)))
            .expect("ro 2");
        let e = t
            .write(Iova(0x2ffe), &[7; 4])
            .expect_err("span write into ro");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x3000) }
        ));
        assert_eq!(file_read(&wo, PG - 2, 2), vec![0, 0], "no partial write");
    }

    #[test]
    fn window_validation() {
        let t = table();
        let a = memfd(PG);
        let b = memfd(PG);
        t.map(fd_req(0x1000, PG, DmaProt::READ, 0, dup(&a)))
            .expect("a");
        t.map(fd_req(0x2000, PG, DmaProt::RW, 0, dup(&b)))
            .expect("b");

        let w = t
            .window(Iova(0x1000), PG, DmaProt::READ)
            .expect("whole mapping");
        assert_eq!((w.iova(), w.len(), w.is_empty()), (Iova(0x1000), PG, false));
        let w = t
            .window(Iova(0x1fff), 0, DmaProt::READ)
            .expect("empty window");
        assert!(w.is_empty());

        let e = t
            .window(Iova(0x1000), PG, DmaProt::RW)
            .expect_err("write on ro");
        assert!(matches!(
            e,
            DmaAccessError::Forbidden { iova: Iova(0x1000) }
        ));
        let e = t
            .window(Iova(0x1800), PG, DmaProt::READ)
            .expect_err("spans");
        assert!(
            matches!(e, DmaAccessError::SpansMappings { iova: Iova(0x1800), len } if len == PG)
        );
        assert_eq!(e.errno(), 14);
        let e = t
            .window(Iova(0x2800), PG, DmaProt::READ)
            .expect_err("past the end");
        assert!(matches!(
            e,
            DmaAccessError::Unmapped {
                iova: Iova(0x2800),
                ..
            }
        ));
        let e = t
            .window(Iova(0x3000), 1, DmaProt::READ)
            .expect_err("unmapped");
        assert!(matches!(e, DmaAccessError::Unmapped { .. }));
        let e = t
            .window(Iova(0x2000), u64::MAX, DmaProt::READ)
            .expect_err("wraps");
        assert!(matches!(e, DmaAccessError::Unmapped { .. }));
    }

    #[test]
    fn concurrent_reads_while_mapping_and_unmapping() {
        let t = Arc::new(table());
        let stable = memfd(PG);
        file_write(&stable, 0, &0x5151_5151_5151_5151u64.to_ne_bytes());
        t.map(fd_req(0, PG, DmaProt::READ, 0, dup(&stable)))
            .expect("stable map");
        let churn = memfd(PG);
        let stop = Arc::new(AtomicBool::new(false));

        let reader = {
            let t = Arc::clone(&t);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut reads = 0u32;
                let mut churn_hits = 0u32;
                while !stop.load(Ordering::Relaxed) || reads < 1000 {
                    assert_eq!(
                        t.read_u64(Iova(0)).expect("stable read"),
                        0x5151_5151_5151_5151
                    );
                    // The churning range is either there (zero-filled) or cleanly unmapped.
                    match t.read_u64(Iova(0x100000)) {
                        Ok(v) => {
                            assert_eq!(v, 0);
                            churn_hits += 1;
                        }
                        Err(DmaAccessError::Unmapped { .. }) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                    if let Ok(w) = t.window(Iova(0x100000), 8, DmaProt::READ) {
                        assert_eq!(w.load_u64(0, Ordering::Acquire).expect("window load"), 0);
                    }
                    reads += 1;
                    if reads >= 200_000 {
                        break;
                    }
                }
                (reads, churn_hits)
            })
        };
        for i in 0..2000u64 {
            // Alternate between the address the reader probes and one it does not.
            let iova = if i % 2 == 0 { 0x100000 } else { 0x180000 };
            t.map(fd_req(iova, PG, DmaProt::READ, 0, dup(&churn)))
                .expect("churn map");
            t.map(remote_req(0x200000, PG, DmaProt::RW))
                .expect("churn fd-less");
            t.unmap(Iova(0x200000), PG).expect("unmap fd-less");
            t.unmap(Iova(iova), PG).expect("churn unmap");
        }
        stop.store(true, Ordering::Relaxed);
        let (reads, _hits) = reader.join().expect("reader thread");
        assert!(reads >= 1000);
        assert_eq!(t.len(), 1);
    }
}
