//! `--trace FILE` for JavaScript: a [`Tracer`] that appends each vfio-user message, decoded as
//! one JSON object per line (see `emudev_vfio_user::trace`), to a file, labelled with the
//! device or port it belongs to (`"device": "emu_iavf0"`).
//!
//! The file is opened in append mode and each line goes out in one `write`, so several servers
//! and clients of one process can trace into the same file without splitting each other's
//! lines. A write that fails is counted and the tracer goes quiet: tracing never stops serving.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use emudev_vfio_user::trace::{TraceRecord, Tracer};

use crate::error::{io_error, NativeError};
use crate::lock;

/// A JSON-lines trace file, appended to.
#[derive(Debug)]
pub(crate) struct FileTracer {
    label: String,
    file: Mutex<File>,
    failed: AtomicBool,
    lines: AtomicU64,
}

impl FileTracer {
    /// Opens (creating, never truncating) `path` for appending.
    pub(crate) fn open(path: &str, label: &str) -> Result<Arc<FileTracer>, NativeError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_error(&e, &format!("trace file {path}")))?;
        Ok(Arc::new(FileTracer {
            label: label.to_owned(),
            file: Mutex::new(file),
            failed: AtomicBool::new(false),
            lines: AtomicU64::new(0),
        }))
    }

    /// Lines written so far.
    #[cfg(test)]
    pub(crate) fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }
}

impl Tracer for FileTracer {
    fn record(&self, rec: &TraceRecord) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        let mut v = rec.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("device".into(), self.label.clone().into());
        }
        let mut line = v.to_string();
        line.push('\n');
        if lock(&self.file).write_all(line.as_bytes()).is_err() {
            self.failed.store(true, Ordering::Relaxed);
        } else {
            self.lines.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emudev_vfio_user::trace::{Channel, Direction, Side};

    #[test]
    fn lines_are_appended_labelled_and_parse() {
        let path =
            std::env::temp_dir().join(format!("emudev-node-trace-{}.jsonl", std::process::id()));
        let p = path.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&path);
        let a = FileTracer::open(&p, "emu_iavf0").expect("open");
        let b = FileTracer::open(&p, "emu_edu0").expect("open again");
        // A 16-byte header: id 7, command 1 (VERSION), size 16, flags 0.
        let mut msg = [0u8; 16];
        msg[0..2].copy_from_slice(&7u16.to_le_bytes());
        msg[2..4].copy_from_slice(&1u16.to_le_bytes());
        msg[4..8].copy_from_slice(&16u32.to_le_bytes());
        a.record(&TraceRecord::new(
            Side::Server,
            Direction::Recv,
            Channel::Main,
            &msg,
            0,
        ));
        b.record(&TraceRecord::new(
            Side::Client,
            Direction::Send,
            Channel::Main,
            &msg,
            0,
        ));
        assert_eq!((a.lines(), b.lines()), (1, 1));
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["device"], "emu_iavf0");
        assert_eq!(lines[1]["device"], "emu_edu0");
        assert_eq!(lines[0]["id"], 7);
        assert_eq!(lines[0]["side"], "server");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        assert!(FileTracer::open("/nonexistent-dir-emudev/x.jsonl", "x").is_err());
    }
}
