//! Packet-buffer access for one burst: a few [`DmaWindow`]s over whole mappings, looked up on
//! the first buffer that falls in each and reused for the rest of the burst. Dropped at the end
//! of the burst, so an unmap is honoured from the next burst on.

use emudev_dma::{DmaProt, DmaTable, DmaWindow, Iova};

/// Windows kept per burst (drivers keep their buffers in one or a few mappings).
const SLOTS: usize = 4;

/// Why a buffer access failed: the range is not inside one mapping granting the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferFault;

/// The windows of one burst.
pub(crate) struct BufCache<'t> {
    table: &'t DmaTable,
    access: DmaProt,
    slots: [Option<DmaWindow>; SLOTS],
    next: usize,
    /// The slot that served the last access (checked first: buffers of one burst are
    /// usually in one mapping).
    last: usize,
}

impl<'t> BufCache<'t> {
    pub(crate) fn new(table: &'t DmaTable, access: DmaProt) -> Self {
        BufCache {
            table,
            access,
            slots: Default::default(),
            next: 0,
            last: 0,
        }
    }

    /// The window holding `[iova, iova + len)` and the offset of `iova` in it.
    fn window(&mut self, iova: u64, len: u64) -> Result<(&DmaWindow, u64), BufferFault> {
        let end = iova.checked_add(len).ok_or(BufferFault)?;
        let covers = |w: &DmaWindow| iova >= w.iova().0 && end <= w.iova().0 + w.len();
        let hit = if self.slots[self.last].as_ref().is_some_and(covers) {
            Some(self.last)
        } else {
            self.slots
                .iter()
                .position(|s| s.as_ref().is_some_and(covers))
        };
        let i = match hit {
            Some(i) => i,
            None => {
                let info = self.table.find(Iova(iova)).ok_or(BufferFault)?;
                if end > info.end() {
                    return Err(BufferFault);
                }
                let w = self
                    .table
                    .window(info.iova, info.size, self.access)
                    .map_err(|_| BufferFault)?;
                let i = self.next;
                self.next = (self.next + 1) % SLOTS;
                self.slots[i] = Some(w);
                i
            }
        };
        self.last = i;
        match &self.slots[i] {
            Some(w) => Ok((w, iova - w.iova().0)),
            None => Err(BufferFault),
        }
    }

    /// Copies client memory at `iova` into `buf`.
    pub(crate) fn read(&mut self, iova: u64, buf: &mut [u8]) -> Result<(), BufferFault> {
        let (w, off) = self.window(iova, buf.len() as u64)?;
        w.read_at(off, buf).map_err(|_| BufferFault)
    }

    /// Copies `data` into client memory at `iova`.
    pub(crate) fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), BufferFault> {
        let (w, off) = self.window(iova, data.len() as u64)?;
        w.write_at(off, data).map_err(|_| BufferFault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_dma::{DmaLimits, DmaMapRequest, SharedMemory};

    fn table() -> (DmaTable, SharedMemory) {
        let t = DmaTable::new(DmaLimits::default());
        let (mem, fd) = SharedMemory::memfd("bufcache", 0x2000).expect("memfd");
        t.map(DmaMapRequest {
            iova: Iova(0x10000),
            size: 0x2000,
            prot: DmaProt::RW,
            file_offset: 0,
            fd: Some(fd),
        })
        .expect("map");
        (t, mem)
    }

    #[test]
    fn reads_and_writes_inside_a_mapping_and_refuses_outside() {
        let (t, mem) = table();
        let mut c = BufCache::new(&t, DmaProt::RW);
        c.write(0x10010, b"abc").expect("write");
        c.write(0x11ffe, b"yz").expect("write at the end");
        let mut b = [0u8; 3];
        mem.read_at(0x10, &mut b).expect("read back");
        assert_eq!(&b, b"abc");
        c.read(0x10010, &mut b).expect("read");
        assert_eq!(&b, b"abc");
        assert_eq!(c.write(0x11fff, b"yz"), Err(BufferFault));
        assert_eq!(c.write(0x9000, b"x"), Err(BufferFault));
        assert_eq!(c.read(u64::MAX, &mut b), Err(BufferFault));
        // One window served every hit.
        assert_eq!(c.slots.iter().filter(|s| s.is_some()).count(), 1);
    }

    #[test]
    fn rights_are_enforced() {
        let (t, _mem) = table();
        let mut c = BufCache::new(&t, DmaProt::READ);
        let mut b = [0u8; 4];
        c.read(0x10000, &mut b).expect("read");
        assert_eq!(c.write(0x10000, &b), Err(BufferFault));
    }
}
