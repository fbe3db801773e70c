//! `NativeServer`: an `edu` device served over vfio-user from its own thread.
//!
//! `NativeServer.listenEdu(path)` binds the socket and starts the server
//! thread before it returns, so a client can connect as soon as it has the
//! object. `close()` stops the thread and joins it on a libuv worker (an
//! [`AsyncTask`]), never on the JS thread; when it resolves the socket file is
//! gone and every client mapping has been dropped. The server thread is a
//! plain OS thread: it does not keep Node's event loop alive.
//!
//! A `NativeServer` collected without `close()` still stops its server: the
//! finalizer stops and joins the thread (briefly, on the JS thread). `close()`
//! is the documented way; the finalizer is only a safety net.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use emudev_edu::{EduDevice, EduStatsHandle};
use emudev_vfio_user::server::{
    RunningServer, Server, ServerBindError, ServerConfig, ServerHandle, ServerStatsSnapshot,
};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;

use crate::error::{closed, io_error, ErrorCode, NativeError};
use crate::{lock, rejection};

/// The device name `NativeServer.device` reports for an edu server.
pub const EDU_DEVICE_NAME: &str = "emu_edu";

/// A server's counters (`NativeServer.stats()`); counts are exact up to 2^53.
#[napi(object, object_from_js = false, js_name = "ServerStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsServerStats {
    /// Clients accepted so far.
    pub clients: f64,
    /// Messages received.
    pub messages: f64,
    /// Requests answered with an error.
    pub errors: f64,
    /// Server-to-client DMA requests sent.
    pub dma_requests: f64,
    /// Whether a client is connected now.
    pub connected: bool,
}

impl From<ServerStatsSnapshot> for JsServerStats {
    fn from(s: ServerStatsSnapshot) -> Self {
        JsServerStats {
            clients: s.clients as f64,
            messages: s.messages as f64,
            errors: s.errors as f64,
            dma_requests: s.dma_requests as f64,
            connected: s.connected,
        }
    }
}

/// The edu device's counters (`NativeServer.eduStats()`).
#[napi(object, object_from_js = false, js_name = "EduStats")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsEduStats {
    /// BAR0 reads.
    pub mmio_reads: f64,
    /// BAR0 writes.
    pub mmio_writes: f64,
    /// DMA transfers that completed.
    pub dma_transfers: f64,
    /// DMA transfers that ended without copying.
    pub dma_errors: f64,
    /// Interrupts the device tried to signal.
    pub irqs_raised: f64,
    /// Of those, the ones nobody received.
    pub irqs_undelivered: f64,
    /// BAR0 accesses of a wrong size or alignment.
    pub bad_accesses: f64,
}

impl From<emudev_edu::EduStats> for JsEduStats {
    fn from(s: emudev_edu::EduStats) -> Self {
        JsEduStats {
            mmio_reads: s.mmio_reads as f64,
            mmio_writes: s.mmio_writes as f64,
            dma_transfers: s.dma_transfers as f64,
            dma_errors: s.dma_errors as f64,
            irqs_raised: s.irqs_raised as f64,
            irqs_undelivered: s.irqs_undelivered as f64,
            bad_accesses: s.bad_accesses as f64,
        }
    }
}

/// What a live server holds; taken out (and stopped) by `close()`.
#[derive(Debug)]
struct Running {
    server: RunningServer<EduDevice>,
    handle: ServerHandle,
    edu: EduStatsHandle,
}

/// The error for a failed bind, with the stable codes JavaScript branches on.
pub(crate) fn bind_error(e: &ServerBindError) -> NativeError {
    match e {
        ServerBindError::InUse(_) => napi::Error::new(ErrorCode::SocketInUse, e.to_string()),
        ServerBindError::NotASocket(_) => napi::Error::new(ErrorCode::NotASocket, e.to_string()),
        ServerBindError::Listen { source, .. } | ServerBindError::StopFd(source) => {
            let mut err = io_error(source, "listen");
            err.reason = e.to_string();
            err
        }
    }
}

/// An `edu` device served over vfio-user on a UNIX socket.
///
/// One client at a time; a client that leaves loses its DMA maps and
/// interrupts, the device keeps its state for the next one.
#[napi]
#[derive(Debug)]
pub struct NativeServer {
    path: String,
    closed: AtomicBool,
    state: Arc<Mutex<Option<Running>>>,
}

impl NativeServer {
    /// Binds `path` and starts serving a fresh edu device on its own thread.
    pub fn start_edu(path: &str) -> napi::Result<Self, ErrorCode> {
        let device = EduDevice::new();
        let edu = device.stats_handle();
        let server = Server::bind(PathBuf::from(path), device, ServerConfig::default())
            .map_err(|e| bind_error(&e))?;
        let handle = server.handle();
        // On a spawn failure the server is dropped, which removes the socket.
        let server = server
            .spawn()
            .map_err(|e| io_error(&e, "cannot start the server thread"))?;
        Ok(NativeServer {
            path: path.to_owned(),
            closed: AtomicBool::new(false),
            state: Arc::new(Mutex::new(Some(Running {
                server,
                handle,
                edu,
            }))),
        })
    }

    /// Runs `f` on the live server, or fails with `ERR_EMUDEV_CLOSED`.
    fn with_running<T>(&self, f: impl FnOnce(&Running) -> T) -> napi::Result<T, ErrorCode> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed("NativeServer"));
        }
        lock(&self.state)
            .as_ref()
            .map(f)
            .ok_or_else(|| closed("NativeServer"))
    }

    /// The work of `close()`, for callers that are already off the JS thread.
    fn close_task(&self) -> CloseServer {
        self.closed.store(true, Ordering::SeqCst);
        CloseServer {
            state: self.state.clone(),
        }
    }
}

#[napi]
impl NativeServer {
    /// Serves a new edu device on the UNIX socket at `path` (mode 0600).
    ///
    /// A stale socket file (nobody listening) is replaced. Throws
    /// `ERR_EMUDEV_SOCKET_IN_USE` when a live server listens there,
    /// `ERR_EMUDEV_NOT_A_SOCKET` when something else is at the path, and
    /// `ERR_VFU_<ERRNO>` for other OS errors (`ERR_VFU_ENOENT` for a missing
    /// directory, `ERR_VFU_EACCES`, `ERR_VFU_EINVAL` for a path too long).
    #[napi(factory)]
    pub fn listen_edu(path: String) -> napi::Result<Self, ErrorCode> {
        Self::start_edu(&path)
    }

    /// The socket path.
    #[napi(getter)]
    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// The device served: `"emu_edu"`.
    #[napi(getter, ts_return_type = "'emu_edu'")]
    pub fn device(&self) -> &'static str {
        EDU_DEVICE_NAME
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The server's counters now. Throws `ERR_EMUDEV_CLOSED` after `close()`.
    #[napi]
    pub fn stats(&self) -> napi::Result<JsServerStats, ErrorCode> {
        self.with_running(|r| r.handle.stats().into())
    }

    /// The edu device's counters now. Throws `ERR_EMUDEV_CLOSED` after `close()`.
    #[napi]
    pub fn edu_stats(&self) -> napi::Result<JsEduStats, ErrorCode> {
        self.with_running(|r| r.edu.snapshot().into())
    }

    /// Stops the server: disconnects the client, joins the server thread (on
    /// a worker thread) and removes the socket file. Idempotent: a second call
    /// resolves once the first one has finished.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseServer> {
        AsyncTask::new(self.close_task())
    }
}

/// The work behind `NativeServer.close()`.
#[derive(Debug)]
pub struct CloseServer {
    state: Arc<Mutex<Option<Running>>>,
}

impl CloseServer {
    /// Stops and joins the server if it still runs. The lock is held while
    /// joining, so a concurrent close waits for this one instead of resolving
    /// early.
    fn run(&self) -> Result<(), NativeError> {
        let mut state = lock(&self.state);
        match state.take() {
            Some(running) => running
                .server
                .stop()
                .map_err(|e: io::Error| io_error(&e, "stopping the server")),
            None => Ok(()),
        }
    }
}

impl Task for CloseServer {
    type Output = Result<(), NativeError>;
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<()> {
        output.map_err(|e| rejection(env, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emudev-node-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join("s.sock")
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().expect("temp paths are UTF-8")
    }

    #[test]
    fn serves_stats_and_closes_idempotently() {
        let p = temp_socket("serve");
        let server = NativeServer::start_edu(path_str(&p)).expect("bind");
        assert!(p.exists());
        assert_eq!(server.device(), "emu_edu");
        assert_eq!(server.path(), path_str(&p));
        let stats = server.stats().expect("stats");
        assert_eq!(stats.clients, 0.0);
        assert!(!stats.connected);
        assert_eq!(server.edu_stats().expect("edu stats").mmio_reads, 0.0);

        let task = server.close_task();
        assert!(server.closed());
        task.run().expect("first close");
        assert!(!p.exists(), "close removes the socket");
        server.close_task().run().expect("second close is a no-op");
        assert_eq!(
            server.stats().expect_err("closed").status,
            ErrorCode::Closed
        );
        assert_eq!(
            server.edu_stats().expect_err("closed").status,
            ErrorCode::Closed
        );
    }

    #[test]
    fn a_live_socket_is_in_use() {
        let p = temp_socket("inuse");
        let first = NativeServer::start_edu(path_str(&p)).expect("bind");
        let err = NativeServer::start_edu(path_str(&p)).expect_err("second bind");
        assert_eq!(err.status, ErrorCode::SocketInUse);
        assert!(err.reason.contains("in use"), "{}", err.reason);
        first.close_task().run().expect("close");
        // Once the first server is gone the path is free again.
        let again = NativeServer::start_edu(path_str(&p)).expect("rebind");
        again.close_task().run().expect("close");
    }

    #[test]
    fn a_regular_file_is_not_a_socket() {
        let p = temp_socket("file");
        std::fs::write(&p, b"x").expect("write");
        let err = NativeServer::start_edu(path_str(&p)).expect_err("bind on a file");
        assert_eq!(err.status, ErrorCode::NotASocket);
        assert!(p.exists(), "the file is left alone");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn os_errors_map_to_errno_codes() {
        let missing = "/nonexistent-emudev-dir/s.sock";
        let err = NativeServer::start_edu(missing).expect_err("no such directory");
        assert_eq!(err.status.as_str(), "ERR_VFU_ENOENT");
        let long = format!("/tmp/{}", "a".repeat(200));
        let err = NativeServer::start_edu(&long).expect_err("path too long");
        assert!(
            err.status.as_str().starts_with("ERR_VFU_E"),
            "{}",
            err.status
        );
    }

    #[test]
    fn close_disconnects_a_connected_client() {
        let p = temp_socket("client");
        let server = NativeServer::start_edu(path_str(&p)).expect("bind");
        let _stream = UnixStream::connect(&p).expect("connect");
        server
            .close_task()
            .run()
            .expect("close with a client attached");
        assert!(!p.exists());
    }
}
