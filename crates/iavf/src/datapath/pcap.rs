//! pcap files: a writer for the classic libpcap format (shared by the `pcap` back-end and the
//! capture tap), a reader of whole files for replay, and the `pcap` back-end itself.
//!
//! The writer puts out the 24-byte global header (magic `0xa1b2c3d4` in native byte order,
//! version 2.4, snaplen 65535, LINKTYPE_ETHERNET) and a 16-byte record header (seconds,
//! microseconds, captured and original length) before each frame, through a buffer that is
//! flushed on [`PcapWriter::flush`], when its owner is dropped, and at most a second after
//! a write, so a reader sees complete records then.
//!
//! The `pcap` back-end ([`PcapBackend`]):
//! - `pcap:<file>` ([`PcapBackend::create`]): every frame the client sends is appended to
//!   `<file>` and dropped (nothing comes back).
//! - `pcap-replay:<file>` ([`PcapBackend::replay`]): the frames of `<file>` are delivered into
//!   RX, each once, as fast as the client posts RX descriptors; with several queues, frame i
//!   goes to queue `i % queues`. What the client sends is dropped.
//! - Both at once through [`PcapBackend::with_replay`] (the API only).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::{lock, Backend, BackendQueue, RxSink};
use crate::device::MAX_FRAME_SIZE;

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The snap length written in the global header (frames are never truncated: the data path
/// handles at most 16 KiB).
pub const PCAP_SNAPLEN: u32 = 65_535;
/// The classic, microsecond-resolution magic number.
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;

/// The global header, native byte order.
pub fn pcap_global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&PCAP_MAGIC.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone 0, sigfigs 0.
    h[16..20].copy_from_slice(&PCAP_SNAPLEN.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    h
}

/// A record header for a `len`-byte frame captured at `ts` (native byte order).
pub fn pcap_record_header(ts: SystemTime, len: usize) -> [u8; 16] {
    let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&secs.to_ne_bytes());
    h[4..8].copy_from_slice(&d.subsec_micros().to_ne_bytes());
    h[8..12].copy_from_slice(&len.min(PCAP_SNAPLEN).to_ne_bytes());
    h[12..16].copy_from_slice(&len.to_ne_bytes());
    h
}

/// Why a pcap file could not be opened for writing.
#[derive(Debug, Error)]
#[error("cannot create pcap file {path}: {source}")]
pub struct CreatePcapError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// A classic pcap file being written. Not shared: callers wrap it in a mutex.
#[derive(Debug)]
pub struct PcapWriter {
    path: PathBuf,
    out: BufWriter<File>,
    frames: u64,
    last_flush: Instant,
    /// The first write error, after which nothing more is written.
    failed: Option<std::io::ErrorKind>,
}

impl PcapWriter {
    /// Creates (truncates) `path` and writes the global header.
    pub fn create(path: &Path) -> Result<Self, CreatePcapError> {
        let err = |source| CreatePcapError {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(err)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(&pcap_global_header()).map_err(err)?;
        out.flush().map_err(err)?;
        Ok(PcapWriter {
            path: path.to_path_buf(),
            out,
            frames: 0,
            last_flush: Instant::now(),
            failed: None,
        })
    }

    /// Appends one record stamped now. After a write error nothing more is written (the
    /// error is logged once and [`PcapWriter::flush`] reports it).
    pub fn write(&mut self, frame: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let keep = frame.len().min(PCAP_SNAPLEN as usize);
        let r = self
            .out
            .write_all(&pcap_record_header(SystemTime::now(), frame.len()))
            .and_then(|()| self.out.write_all(&frame[..keep]));
        if let Err(e) = r {
            log::warn!("pcap {}: write failed: {e}", self.path.display());
            self.failed = Some(e.kind());
            return;
        }
        self.frames += 1;
        if self.last_flush.elapsed().as_secs() >= 1 {
            let _ = self.flush();
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(kind) = self.failed {
            return Err(std::io::Error::new(kind, "an earlier pcap write failed"));
        }
        self.last_flush = Instant::now();
        self.out.flush()
    }

    /// Records written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Why a pcap file could not be read for replay.
#[derive(Debug, Error)]
pub enum ReadPcapError {
    /// The file does not open.
    #[error("cannot open pcap file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a pcap file, or a record is damaged.
    #[error("{path}: not a valid pcap file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The link type is not Ethernet.
    #[error("{path}: link type {linktype} is not Ethernet (1)")]
    LinkType {
        /// The file.
        path: PathBuf,
        /// The link type in the header.
        linktype: u32,
    },
    /// A frame is empty, truncated by the capture, or too long for the device.
    #[error("{path}: frame {index} ({len} of {orig_len} bytes) cannot be replayed (1..=9728 whole bytes)")]
    Frame {
        /// The file.
        path: PathBuf,
        /// The frame's position, from 0.
        index: usize,
        /// Captured bytes.
        len: usize,
        /// Original length.
        orig_len: u32,
    },
}

/// Reads every frame of a pcap file (classic format, either byte order, micro- or
/// nanosecond timestamps, Ethernet link type).
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>, ReadPcapError> {
    let file = File::open(path).map_err(|source| ReadPcapError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |e: pcap_file::PcapError| ReadPcapError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut reader = pcap_file::pcap::PcapReader::new(BufReader::new(file)).map_err(format)?;
    let linktype = u32::from(reader.header().datalink);
    if linktype != LINKTYPE_ETHERNET {
        return Err(ReadPcapError::LinkType {
            path: path.to_path_buf(),
            linktype,
        });
    }
    let mut frames = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.map_err(format)?;
        let len = p.data.len();
        if len == 0 || len > MAX_FRAME_SIZE as usize || u32::try_from(len) != Ok(p.orig_len) {
            return Err(ReadPcapError::Frame {
                path: path.to_path_buf(),
                index: frames.len(),
                len,
                orig_len: p.orig_len,
            });
        }
        frames.push(p.data.into_owned());
    }
    Ok(frames)
}

/// Frames to replay and how far each queue got.
#[derive(Debug)]
struct Replay {
    frames: Vec<Vec<u8>>,
    delivered: AtomicU64,
}

/// The `pcap` back-end: see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct PcapBackend {
    out: Option<Arc<Mutex<PcapWriter>>>,
    replay: Option<Arc<Replay>>,
    consumed: Arc<AtomicU64>,
    /// Queues open, so the writer is flushed when the last one goes (detach).
    open: Arc<AtomicUsize>,
}

/// Why a [`PcapBackend`] could not be made.
#[derive(Debug, Error)]
pub enum OpenPcapBackendError {
    /// The output file.
    #[error(transparent)]
    Create(#[from] CreatePcapError),
    /// The replay file.
    #[error(transparent)]
    Read(#[from] ReadPcapError),
}

impl PcapBackend {
    /// Writes every frame the client sends to `path` (created or truncated).
    pub fn create(path: impl AsRef<Path>) -> Result<Self, OpenPcapBackendError> {
        let w = PcapWriter::create(path.as_ref())?;
        Ok(PcapBackend {
            out: Some(Arc::new(Mutex::new(w))),
            ..PcapBackend::default()
        })
    }

    /// Replays the frames of `path` into RX (read whole now); drops what the client sends.
    pub fn replay(path: impl AsRef<Path>) -> Result<Self, OpenPcapBackendError> {
        PcapBackend::default().with_replay(path)
    }

    /// Also replays the frames of `path` into RX.
    pub fn with_replay(mut self, path: impl AsRef<Path>) -> Result<Self, OpenPcapBackendError> {
        let frames = read_pcap(path.as_ref())?;
        self.replay = Some(Arc::new(Replay {
            frames,
            delivered: AtomicU64::new(0),
        }));
        Ok(self)
    }

    /// Writes out what is buffered for the output file.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.out {
            Some(w) => lock(w).flush(),
            None => Ok(()),
        }
    }

    /// Frames written to the output file.
    pub fn written(&self) -> u64 {
        self.out.as_ref().map_or(0, |w| lock(w).frames())
    }

    /// Frames the client sent (written or not).
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// Frames of the replay file delivered into RX.
    pub fn replayed(&self) -> u64 {
        self.replay
            .as_ref()
            .map_or(0, |r| r.delivered.load(Ordering::Relaxed))
    }

    /// Frames in the replay file.
    pub fn replay_len(&self) -> usize {
        self.replay.as_ref().map_or(0, |r| r.frames.len())
    }
}

struct PcapQueue {
    backend: PcapBackend,
    /// Next replay frame for this queue (steps by the queue count).
    cursor: usize,
    step: usize,
}

impl BackendQueue for PcapQueue {
    fn transmit(&mut self, frame: &[u8], _local_rx: &mut dyn RxSink) -> bool {
        self.backend.consumed.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = &self.backend.out {
            lock(w).write(frame);
        }
        true
    }

    fn receive(&mut self, rx: &mut dyn RxSink, budget: usize) -> usize {
        let Some(r) = &self.backend.replay else {
            return 0;
        };
        let mut n = 0;
        while n < budget {
            let Some(f) = r.frames.get(self.cursor) else {
                break;
            };
            if !rx.fits(f.len()) {
                break;
            }
            rx.deliver(f);
            self.cursor += self.step;
            n += 1;
        }
        if n > 0 {
            r.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn rx_pending(&self) -> bool {
        self.backend
            .replay
            .as_ref()
            .is_some_and(|r| self.cursor < r.frames.len())
    }
}

impl Drop for PcapQueue {
    fn drop(&mut self) {
        if self.backend.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Err(e) = self.backend.flush() {
                log::warn!("pcap: flush on detach failed: {e}");
            }
        }
    }
}

impl Backend for PcapBackend {
    fn name(&self) -> &'static str {
        if self.replay.is_some() {
            "pcap-replay"
        } else {
            "pcap"
        }
    }

    fn queue(&self, queue: u16, queues: u16) -> Box<dyn BackendQueue> {
        self.open.fetch_add(1, Ordering::AcqRel);
        Box::new(PcapQueue {
            backend: self.clone(),
            cursor: usize::from(queue),
            step: usize::from(queues).max(1),
        })
    }

    fn originates(&self) -> bool {
        self.replay.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::VecSink;
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iavf-pcap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    /// Reads a file back with the `pcap-file` parser: (header, frames).
    fn parse(path: &Path) -> (pcap_file::pcap::PcapHeader, Vec<(u32, Vec<u8>)>) {
        let f = File::open(path).expect("open");
        let mut r = pcap_file::pcap::PcapReader::new(f).expect("header");
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.expect("record");
            out.push((p.orig_len, p.data.into_owned()));
        }
        (r.header(), out)
    }

    #[test]
    fn written_frames_parse_back_identical_with_an_ethernet_microsecond_header() {
        let path = temp("out.pcap");
        let be = PcapBackend::create(&path).expect("create");
        assert!(!be.originates());
        assert_eq!(be.name(), "pcap");
        let frames: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                (0..60 + usize::from(i) * 300)
                    .map(|b| b as u8 ^ i)
                    .collect()
            })
            .collect();
        let mut q = be.queue(0, 1);
        let mut rx = VecSink::new(8);
        for f in &frames {
            assert!(q.transmit(f, &mut rx));
        }
        assert!(rx.frames.is_empty());
        assert_eq!(q.receive(&mut rx, 8), 0);
        be.flush().expect("flush");
        let (h, got) = parse(&path);
        assert_eq!(u32::from(h.datalink), LINKTYPE_ETHERNET);
        assert_eq!(h.ts_resolution, pcap_file::TsResolution::MicroSecond);
        assert_eq!((h.version_major, h.version_minor), (2, 4));
        let want: Vec<(u32, Vec<u8>)> =
            frames.iter().map(|f| (f.len() as u32, f.clone())).collect();
        assert_eq!(got, want);
        assert_eq!((be.written(), be.consumed()), (5, 5));
        // Dropping the last queue flushes too.
        assert!(q.transmit(b"last frame", &mut rx));
        drop(q);
        assert_eq!(parse(&path).1.len(), 6);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_written_file_replays_into_rx_split_over_queues() {
        let path = temp("replay.pcap");
        {
            let mut w = PcapWriter::create(&path).expect("create");
            for i in 0..7u8 {
                w.write(&[i; 64]);
            }
        }
        let be = PcapBackend::replay(&path).expect("replay");
        assert!(be.originates());
        assert_eq!((be.name(), be.replay_len()), ("pcap-replay", 7));
        let mut q0 = be.queue(0, 2);
        let mut q1 = be.queue(1, 2);
        let mut r0 = VecSink::new(2);
        let mut r1 = VecSink::new(10);
        assert_eq!(q0.receive(&mut r0, 32), 2, "room for two");
        assert!(q0.rx_pending());
        r0.room = 10;
        assert_eq!(q0.receive(&mut r0, 32), 2);
        assert!(!q0.rx_pending());
        assert_eq!(q1.receive(&mut r1, 32), 3);
        let firsts = |r: &VecSink| r.frames.iter().map(|f| f[0]).collect::<Vec<u8>>();
        assert_eq!(firsts(&r0), vec![0, 2, 4, 6]);
        assert_eq!(firsts(&r1), vec![1, 3, 5]);
        assert_eq!(be.replayed(), 7);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_replay_files_are_refused_with_the_reason() {
        let missing = temp("missing.pcap");
        assert!(matches!(
            PcapBackend::replay(&missing),
            Err(OpenPcapBackendError::Read(ReadPcapError::Open { .. }))
        ));
        let junk = temp("junk.pcap");
        std::fs::write(&junk, b"this is not a pcap file at all....").expect("write");
        assert!(matches!(
            read_pcap(&junk),
            Err(ReadPcapError::Format { .. })
        ));
        // A valid header with another link type (101, raw IP).
        let mut h = pcap_global_header();
        h[20..24].copy_from_slice(&101u32.to_ne_bytes());
        std::fs::write(&junk, h).expect("write");
        assert!(matches!(
            read_pcap(&junk),
            Err(ReadPcapError::LinkType { linktype: 101, .. })
        ));
        // A truncated capture (incl_len < orig_len).
        let mut bytes = pcap_global_header().to_vec();
        let mut rec = pcap_record_header(SystemTime::now(), 100);
        rec[8..12].copy_from_slice(&10u32.to_ne_bytes());
        bytes.extend_from_slice(&rec);
        bytes.extend_from_slice(&[0; 10]);
        std::fs::write(&junk, &bytes).expect("write");
        let e = read_pcap(&junk).expect_err("truncated");
        assert!(e.to_string().contains("frame 0 (10 of 100 bytes)"), "{e}");
        let _ = std::fs::remove_file(&junk);
        assert!(PcapBackend::create(temp("no/such/dir/x.pcap")).is_err());
    }

    #[test]
    fn record_headers_carry_microseconds_and_lengths() {
        let ts = UNIX_EPOCH + std::time::Duration::from_micros(1_234_567_890);
        let h = pcap_record_header(ts, 70_000);
        let u = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        assert_eq!((u(0), u(4)), (1234, 567_890));
        assert_eq!(
            (u(8), u(12)),
            (PCAP_SNAPLEN, 70_000),
            "captured part capped at the snaplen"
        );
    }
}
