//! The capture tap: while a capture runs, every frame an attached data path handles (taken
//! from the client's TX rings, and written into its RX rings) is appended to a pcap file.
//! Started and stopped at run time through [`super::DatapathStats::capture_start`] /
//! [`super::DatapathStats::capture_stop`]. When no capture runs the data path pays one relaxed
//! atomic load per burst.
//!
//! Classic pcap has no direction field: TX and RX frames are interleaved in the order the data
//! path handled them (with loopback each frame appears twice, TX then RX).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use thiserror::Error;

use super::pcap::{CreatePcapError, PcapWriter};
use super::{lock, RxSink};

/// Why a capture could not start.
#[derive(Debug, Error)]
pub enum CaptureStartError {
    /// A capture is already running (into the file named).
    #[error("a capture is already running into {0}")]
    AlreadyRunning(PathBuf),
    /// The file could not be created.
    #[error(transparent)]
    Create(#[from] CreatePcapError),
}

/// Why a capture could not stop cleanly.
#[derive(Debug, Error)]
pub enum CaptureStopError {
    /// No capture was running.
    #[error("no capture is running")]
    NotRunning,
    /// The file could not be written out (the records before the failure are in it).
    #[error("capture into {path}: {source}")]
    Flush {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The tap of one attached data path.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    active: AtomicBool,
    file: Mutex<Option<PcapWriter>>,
    /// Most frames to write (0: no limit); the tap goes quiet once they are written.
    limit: AtomicU64,
}

impl Capture {
    /// Whether a capture runs (one relaxed load: the fast path's only cost).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts writing into `path`: every frame (`limit` 0) or the first `limit`.
    pub(crate) fn start(&self, path: &Path, limit: u64) -> Result<(), CaptureStartError> {
        let mut g = lock(&self.file);
        if let Some(w) = g.as_ref() {
            return Err(CaptureStartError::AlreadyRunning(w.path().to_path_buf()));
        }
        *g = Some(PcapWriter::create(path)?);
        self.limit.store(limit, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops and flushes; returns the frames written.
    pub(crate) fn stop(&self) -> Result<u64, CaptureStopError> {
        let mut g = lock(&self.file);
        self.active.store(false, Ordering::Relaxed);
        let mut w = g.take().ok_or(CaptureStopError::NotRunning)?;
        w.flush().map_err(|source| CaptureStopError::Flush {
            path: w.path().to_path_buf(),
            source,
        })?;
        Ok(w.frames())
    }

    /// Appends one frame if a capture runs.
    pub(crate) fn record(&self, frame: &[u8]) {
        if let Some(w) = lock(&self.file).as_mut() {
            let limit = self.limit.load(Ordering::Relaxed);
            if limit != 0 && w.frames() >= limit {
                self.active.store(false, Ordering::Relaxed);
                return;
            }
            w.write(frame);
            if limit != 0 && w.frames() >= limit {
                // The rest of the run pays one load again; the file stays open until stop.
                self.active.store(false, Ordering::Relaxed);
                let _ = w.flush();
            }
        }
    }

    /// Frames written by the running capture, if one runs.
    pub(crate) fn frames(&self) -> Option<u64> {
        lock(&self.file).as_ref().map(PcapWriter::frames)
    }
}

/// An RX sink that records what it delivers.
pub(crate) struct TapSink<'a> {
    pub(crate) inner: &'a mut dyn RxSink,
    pub(crate) capture: &'a Capture,
}

impl RxSink for TapSink<'_> {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let ok = self.inner.deliver(frame);
        if ok {
            self.capture.record(frame);
        }
        ok
    }

    fn fits(&self, len: usize) -> bool {
        self.inner.fits(len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::VecSink;
    use super::*;

    #[test]
    fn start_record_stop_and_the_errors_around_them() {
        let dir = std::env::temp_dir().join(format!("iavf-cap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cap.pcap");
        let c = Capture::default();
        assert!(!c.active());
        assert!(matches!(c.stop(), Err(CaptureStopError::NotRunning)));
        c.record(b"not running: ignored");
        c.start(&path, 0).expect("start");
        assert!(c.active());
        assert!(matches!(
            c.start(&path, 0),
            Err(CaptureStartError::AlreadyRunning(p)) if p == path
        ));
        let mut rx = VecSink::new(1);
        {
            let mut tap = TapSink {
                inner: &mut rx,
                capture: &c,
            };
            assert!(tap.fits(10));
            assert!(tap.deliver(b"delivered"));
            assert!(!tap.fits(10));
            assert!(!tap.deliver(b"refused: not recorded"));
        }
        c.record(b"tx frame");
        assert_eq!(c.frames(), Some(2));
        assert_eq!(c.stop().expect("stop"), 2);
        assert!(!c.active());
        assert_eq!(c.frames(), None);
        let frames = super::super::pcap::read_pcap(&path).expect("read");
        assert_eq!(frames, vec![b"delivered".to_vec(), b"tx frame".to_vec()]);
        assert!(matches!(
            c.start(&dir.join("no/such/dir.pcap"), 0),
            Err(CaptureStartError::Create(_))
        ));
        assert!(!c.active());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_limited_capture_keeps_the_first_frames_only() {
        let dir = std::env::temp_dir().join(format!("iavf-cap-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("first.pcap");
        let c = Capture::default();
        c.start(&path, 3).expect("start");
        for i in 0..10u8 {
            if c.active() {
                c.record(&[i; 60]);
            }
        }
        assert!(!c.active(), "quiet after the limit");
        assert_eq!(c.stop().expect("stop"), 3);
        let frames = super::super::read_pcap(&path).expect("read");
        assert_eq!(frames, vec![vec![0u8; 60], vec![1u8; 60], vec![2u8; 60]]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
