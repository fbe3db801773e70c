//! Helpers shared by the unit tests: memfds standing in for client memory and a fake client
//! answering DMA_READ/DMA_WRITE from a `Vec`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use crate::{DmaMapRequest, DmaProt, Iova, RemoteDma};

/// A memfd of `len` bytes (zero-filled), like the one a client shares its RAM through.
pub(crate) fn memfd(len: u64) -> OwnedFd {
    let fd = memfd_create("emudev-dma-test", MemfdFlags::CLOEXEC).expect("memfd_create");
    ftruncate(&fd, len).expect("ftruncate");
    fd
}

/// A second descriptor for the same file (the client keeps its own).
pub(crate) fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup")
}

/// Reads the file behind `fd` directly (the client's view of the memory).
pub(crate) fn file_read(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf[..], offset).expect("pread");
    assert_eq!(n, len);
    buf
}

/// Writes the file behind `fd` directly (the client changing its memory).
pub(crate) fn file_write(fd: &OwnedFd, offset: u64, data: &[u8]) {
    let n = rustix::io::pwrite(fd, data, offset).expect("pwrite");
    assert_eq!(n, data.len());
}

/// An fd-backed map request.
pub(crate) fn fd_req(
    iova: u64,
    size: u64,
    prot: DmaProt,
    file_offset: u64,
    fd: OwnedFd,
) -> DmaMapRequest {
    DmaMapRequest {
        iova: Iova(iova),
        size,
        prot,
        file_offset,
        fd: Some(fd),
    }
}

/// An fd-less map request.
pub(crate) fn remote_req(iova: u64, size: u64, prot: DmaProt) -> DmaMapRequest {
    DmaMapRequest {
        iova: Iova(iova),
        size,
        prot,
        file_offset: 0,
        fd: None,
    }
}

/// A fake client: `mem` holds client memory starting at IOVA `base`.
#[derive(Debug)]
pub(crate) struct FakeRemote {
    pub(crate) base: u64,
    pub(crate) mem: Mutex<Vec<u8>>,
    pub(crate) calls: AtomicUsize,
    pub(crate) fail: bool,
}

impl FakeRemote {
    pub(crate) fn new(base: u64, len: usize) -> Self {
        FakeRemote {
            base,
            mem: Mutex::new(vec![0; len]),
            calls: AtomicUsize::new(0),
            fail: false,
        }
    }

    fn range(&self, iova: Iova, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = iova
            .raw()
            .checked_sub(self.base)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(14))?;
        Ok(start..start + len)
    }
}

impl RemoteDma for FakeRemote {
    fn dma_read(&self, iova: Iova, buf: &mut [u8]) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let r = self.range(iova, buf.len())?;
        let mem = self.mem.lock().expect("lock");
        let src = mem.get(r).ok_or_else(|| io::Error::from_raw_os_error(14))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn dma_write(&self, iova: Iova, data: &[u8]) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let r = self.range(iova, data.len())?;
        let mut mem = self.mem.lock().expect("lock");
        let dst = mem
            .get_mut(r)
            .ok_or_else(|| io::Error::from_raw_os_error(14))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}
