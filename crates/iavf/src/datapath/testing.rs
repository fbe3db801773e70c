//! Test helpers shared by the back-end unit tests: an RX sink that keeps what it is given.

use super::RxSink;

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
