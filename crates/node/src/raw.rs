//! The only `unsafe` code of the binding: a shared mapping of a region fd that the peer
//! (a vfio-user server) hands out, and its exposure to JavaScript as an external `Buffer`.
//!
//! Why this exists: `NativeAsyncClient.mapRegion()` gives JavaScript the bytes of a mmappable
//! BAR without copying. napi-rs's own `BufferSlice::from_external` builds a `&mut [u8]` over
//! the memory it is given, which would be a Rust reference into memory another process
//! changes at any time; here the pointer only ever goes to `napi_create_external_buffer` as a
//! raw pointer, and Rust reads or writes the mapping by `ptr::copy_nonoverlapping` only.
//!
//! Rules the code relies on:
//!
//! - A [`Mapping`] is created only after checking that the file is at least as large as the
//!   mapped range (so no page of it is beyond the end of the file at map time), and only
//!   read-write: a JavaScript `Buffer` can always be written, and a store to a read-only page
//!   would kill the process with SIGSEGV.
//! - The mapping lives as long as the last `Arc<Mapping>`: the external buffer's finalizer
//!   owns one, so the memory stays mapped for as long as JavaScript can reach the `Buffer`,
//!   whatever happens to the client.
//! - Residual hazard (the same as for the server's DMA table): a peer that truncates the file
//!   after we mapped it makes accesses to the cut pages fault with SIGBUS.

use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use napi::bindgen_prelude::{ToNapiValue, TypeName};
use napi::{sys, Status, ValueType};
use rustix::mm::{MapFlags, ProtFlags};

/// A `MAP_SHARED`, read-write mapping of `len` bytes of a file.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes through
// raw-pointer copies bounded by `len`, which are as valid from any thread as from the one that
// created it.
unsafe impl Send for Mapping {}
// SAFETY: no method takes `&mut self` or hands out references into the memory; concurrent
// copies through `&Mapping` are byte copies of shared memory (the peer writes it concurrently
// anyway).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (page-aligned), read-write and shared.
    ///
    /// Fails with `InvalidInput` for a zero length, an unaligned offset or a range past the end
    /// of the file.
    pub fn map_shared(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<Self> {
        let page = rustix::param::page_size() as u64;
        let size = usize::try_from(len).map_err(|_| invalid("length does not fit in memory"))?;
        if len == 0 || !offset.is_multiple_of(page) {
            return Err(invalid("empty or unaligned mapping"));
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| invalid("range wraps"))?;
        let stat = rustix::fs::fstat(fd)?;
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        if end > file_size {
            return Err(invalid("range extends past the end of the file"));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint, no MAP_FIXED), so
        // no existing Rust object is affected; the fd, offset and length were checked above and
        // the kernel validates them again. The result is owned by the returned value and
        // unmapped exactly once, in `Drop`.
        let base = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }?;
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { base, len: size })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: empty mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping.
    #[cfg(test)]
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= self.len` (checked), so the source range is inside the
        // live mapping; `buf` is a distinct Rust allocation, so the ranges do not overlap. The
        // copy goes through raw pointers only: no reference into the shared memory is formed.
        unsafe {
            ptr::copy_nonoverlapping(
                self.base.as_ptr().cast::<u8>().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    #[cfg(test)]
    fn write_at(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: as in `read_at`, with the roles of source and destination swapped; the
        // mapping is writable (always mapped read-write).
        unsafe {
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.base.as_ptr().cast::<u8>().add(offset),
                data.len(),
            );
        }
        Ok(())
    }

    #[cfg(test)]
    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(invalid("access outside the mapping")),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this value created and still owns; nothing
        // else unmaps it, and no pointer into it survives: the only other user, an external
        // buffer, holds an `Arc` to this value, so it is gone before we get here.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.len) };
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

/// A [`Mapping`] on its way to JavaScript: converts to a `Buffer` over the mapped bytes
/// (zero-copy), whose finalizer keeps the mapping alive.
#[derive(Debug, Clone)]
pub struct ExternalMapping(pub Arc<Mapping>);

impl TypeName for ExternalMapping {
    fn type_name() -> &'static str {
        "Buffer"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

/// Finalizer of an external buffer: drops the `Arc<Mapping>` boxed into the hint.
unsafe extern "C" fn release_mapping(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    if hint.is_null() {
        return;
    }
    // SAFETY: `hint` is the pointer `Box::into_raw` produced in `to_napi_value` for this buffer,
    // and Node calls the finalizer once per buffer, so the box is reclaimed exactly once.
    drop(unsafe { Box::from_raw(hint.cast::<Arc<Mapping>>()) });
}

impl ToNapiValue for ExternalMapping {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let data = val.0.base.as_ptr();
        let len = val.0.len;
        let hint = Box::into_raw(Box::new(val.0));
        let mut result = ptr::null_mut();
        // SAFETY: `env` is the live environment napi-rs passes to a conversion on the JS
        // thread. `data`/`len` describe a live mapping that `hint` (an owned `Arc`) keeps alive
        // until `release_mapping` runs. The pointer is handed over raw: no Rust reference into
        // the mapping is created.
        let status = unsafe {
            sys::napi_create_external_buffer(
                env,
                len,
                data,
                Some(release_mapping),
                hint.cast(),
                &mut result,
            )
        };
        if status != sys::Status::napi_ok {
            // The buffer was not created, so the finalizer will never run: reclaim the hint.
            // SAFETY: `hint` came from `Box::into_raw` above and was not handed to Node.
            drop(unsafe { Box::from_raw(hint) });
            let reason = if status == sys::Status::napi_no_external_buffers_allowed {
                "this runtime does not allow external buffers; use regionRead/regionWrite"
            } else {
                "creating an external buffer over the mapping failed"
            };
            return Err(napi::Error::new(Status::from(status), reason.to_owned()));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use std::os::fd::AsFd;

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = memfd_create("emudev-node-raw", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&fd, len).expect("ftruncate");
        fd
    }

    #[test]
    fn two_mappings_of_one_file_share_bytes() {
        let page = rustix::param::page_size() as u64;
        let fd = memfd(2 * page);
        let a = Mapping::map_shared(fd.as_fd(), 0, 2 * page).expect("map a");
        let b = Mapping::map_shared(fd.as_fd(), page, page).expect("map b");
        a.write_at(page as usize + 8, b"shared").expect("write");
        let mut out = [0u8; 6];
        b.read_at(8, &mut out).expect("read");
        assert_eq!(&out, b"shared");
        assert_eq!(b.len(), page as usize);
    }

    #[test]
    fn accesses_outside_the_mapping_are_refused() {
        let page = rustix::param::page_size() as u64;
        let fd = memfd(page);
        let m = Mapping::map_shared(fd.as_fd(), 0, page).expect("map");
        let mut out = [0u8; 8];
        assert!(m.read_at(page as usize - 4, &mut out).is_err());
        assert!(m.write_at(usize::MAX, &out).is_err());
        assert!(m.read_at(page as usize - 8, &mut out).is_ok());
    }

    #[test]
    fn bad_ranges_are_not_mapped() {
        let page = rustix::param::page_size() as u64;
        let fd = memfd(page);
        let err = |r: io::Result<Mapping>| r.expect_err("must fail").kind();
        assert_eq!(
            err(Mapping::map_shared(fd.as_fd(), 0, 0)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            err(Mapping::map_shared(fd.as_fd(), 1, page)),
            io::ErrorKind::InvalidInput
        );
        // Past the end of the file: would SIGBUS on access, so it is refused up front.
        assert_eq!(
            err(Mapping::map_shared(fd.as_fd(), 0, 2 * page)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            err(Mapping::map_shared(fd.as_fd(), u64::MAX - page + 1, page)),
            io::ErrorKind::InvalidInput
        );
    }
}
