//! Test helpers shared by the data path's unit tests: an RX sink that keeps what it is given,
//! and a DMA table over one memfd.

use emudev_dma::{DmaLimits, DmaMapRequest, DmaProt, DmaTable, Iova, SharedMemory};

use super::RxSink;

/// A DMA table with one read-write mapping of a new `size`-byte memfd at IOVA `base`, and the
/// test's own mapping of that memory.
pub(crate) fn memfd_table(name: &str, base: u64, size: u64) -> (DmaTable, SharedMemory) {
    let t = DmaTable::new(DmaLimits::default());
    let (mem, fd) = SharedMemory::memfd(name, size).expect("memfd");
    t.map(DmaMapRequest {
        iova: Iova(base),
        size,
        prot: DmaProt::RW,
        file_offset: 0,
        fd: Some(fd),
    })
    .expect("map");
    (t, mem)
}

/// An RX queue with room for `room` more frames; what it refuses is counted.
#[derive(Debug, Default)]
pub(crate) struct VecSink {
    pub(crate) frames: Vec<Vec<u8>>,
    pub(crate) room: usize,
    pub(crate) refused: usize,
}

impl VecSink {
    pub(crate) fn new(room: usize) -> Self {
        VecSink {
            frames: Vec::new(),
            room,
            refused: 0,
        }
    }
}

impl RxSink for VecSink {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        if self.room == 0 {
            self.refused += 1;
            return false;
        }
        self.room -= 1;
        self.frames.push(frame.to_vec());
        true
    }

    fn fits(&self, _len: usize) -> bool {
        self.room > 0
    }
}
