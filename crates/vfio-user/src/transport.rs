//! Whole vfio-user messages, and the fds that travel with them, over an `AF_UNIX` stream socket.
//!
//! A message is a 16-byte header (`msg_id` u16, `command` u16, `msg_size` u32 counting the whole
//! message, `flags` u32, `error_no` u32; native endian) followed by `msg_size - 16` payload
//! bytes. File descriptors travel as `SCM_RIGHTS` attached to the message's *first byte*:
//!
//! - [`MessageSocket::send`] hands the whole message to one `sendmsg` with the fds attached; only
//!   if the kernel accepts part of it does it follow up with plain sends (without fds).
//! - [`MessageSocket::recv`] reads the header with `recvmsg` (possibly in pieces) and keeps the fds
//!   that came with those reads; the payload is read with `recvmsg` too, but fds arriving there
//!   are closed and the message is reported as [`RecvError::TooManyFds`].
//!
//! Reads are bounded by the message's own size, so the kernel never hands us bytes (or fds) of
//! the next message. Every error that leaves the stream in sync says so; the others mean the
//! connection should be closed.
//!
//! The socket is expected to be blocking. One thread at a time should send, and one at a time
//! should receive: the kernel may interleave two large concurrent sends.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Size of the vfio-user message header.
pub const HEADER_SIZE: usize = 16;

/// Most fds the Linux kernel passes in one `sendmsg` (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Control-buffer size that holds the largest `SCM_RIGHTS` the kernel can deliver in one read,
/// so an over-limit fd count is seen and counted rather than truncated.
const CMSG_SPACE_MAX: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD));

fn header_u16(bytes: &[u8], at: usize) -> u16 {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => u16::from_ne_bytes([a, b]),
        _ => 0,
    }
}

fn header_u32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_ne_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// One whole received message and the fds that were attached to it.
#[derive(Debug)]
pub struct RawMessage {
    /// The whole message, header included (`bytes.len()` equals the header's `msg_size`).
    pub bytes: Vec<u8>,
    /// The fds received with the message's header, in the order sent.
    pub fds: Vec<OwnedFd>,
}

impl RawMessage {
    /// The header's `msg_id`.
    pub fn msg_id(&self) -> u16 {
        header_u16(&self.bytes, 0)
    }

    /// The header's `command`.
    pub fn command(&self) -> u16 {
        header_u16(&self.bytes, 2)
    }

    /// The header's `flags` (type, no-reply and error bits).
    pub fn flags(&self) -> u32 {
        header_u32(&self.bytes, 8)
    }
}

/// What [`MessageSocket::recv`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct RecvLimits {
    /// Largest `msg_size` (header included) that is read; larger ones give
    /// [`RecvError::TooLarge`] before any payload byte is read or buffer allocated.
    pub max_msg_size: usize,
    /// Most fds accepted with one message; more give [`RecvError::TooManyFds`].
    pub max_fds: usize,
}

/// Receiving a message failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The socket failed (including a read timeout). The stream may be out of sync.
    #[error("receiving a message: {0}")]
    Io(#[from] io::Error),
    /// EOF after part of a message (the peer vanished mid-message).
    #[error("connection closed mid-message: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes of the message read before EOF.
        got: usize,
        /// Bytes expected: the header size while reading the header, else `msg_size`.
        expected: usize,
    },
    /// `msg_size` is below the header size. The 16 header bytes were consumed (and nothing
    /// else), so the stream is still in sync: reply EINVAL with the header's `msg_id` and go on.
    #[error("message size in header is smaller than the {HEADER_SIZE}-byte header")]
    TooSmall {
        /// The header as received.
        header: [u8; HEADER_SIZE],
        /// Fds that came with the header.
        fds: Vec<OwnedFd>,
    },
    /// `msg_size` exceeds [`RecvLimits::max_msg_size`]. The payload was not read, so the stream
    /// is out of sync: reply EINVAL and close.
    #[error("message size {size} exceeds the limit")]
    TooLarge {
        /// The header as received.
        header: [u8; HEADER_SIZE],
        /// `msg_size` from the header.
        size: usize,
        /// Fds that came with the header.
        fds: Vec<OwnedFd>,
    },
    /// More fds than [`RecvLimits::max_fds`], fds attached past the header, or control data
    /// truncated by the kernel. The message was read fully (the stream is in sync) and is
    /// returned; every fd received with it has been closed.
    #[error("message carried more fds than allowed, or fds in the wrong place")]
    TooManyFds {
        /// The whole message, header included.
        bytes: Vec<u8>,
    },
}

/// The result of one bounded `recvmsg`.
struct ReadChunk {
    /// Bytes read; 0 means EOF.
    len: usize,
    /// The kernel dropped control data (`MSG_CTRUNC`).
    ctrunc: bool,
}

/// A vfio-user message stream: whole messages with their fds, over a connected `AF_UNIX`
/// `SOCK_STREAM` socket.
#[derive(Debug)]
pub struct MessageSocket {
    stream: UnixStream,
}

impl MessageSocket {
    /// Wraps a connected stream socket.
    pub fn new(stream: UnixStream) -> Self {
        MessageSocket { stream }
    }

    /// A connected pair (`socketpair`, close-on-exec), e.g. for the twin socket.
    pub fn pair() -> io::Result<(MessageSocket, MessageSocket)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((
            MessageSocket::new(UnixStream::from(a)),
            MessageSocket::new(UnixStream::from(b)),
        ))
    }

    /// Wraps an fd that must be an `AF_UNIX` stream socket (e.g. a twin socket received over
    /// `SCM_RIGHTS`); anything else gives [`io::ErrorKind::InvalidInput`].
    pub fn from_owned_fd(fd: OwnedFd) -> io::Result<Self> {
        let kind = match rustix::net::sockopt::socket_type(&fd) {
            Ok(kind) => kind,
            Err(Errno::NOTSOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "fd is not a socket",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let domain = rustix::net::sockopt::socket_domain(&fd)?;
        if kind != SocketType::STREAM || domain != AddressFamily::UNIX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not an AF_UNIX stream socket",
            ));
        }
        Ok(MessageSocket::new(UnixStream::from(fd)))
    }

    /// The socket's fd (for polling).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Another handle on the same socket (close-on-exec dup).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(MessageSocket::new(self.stream.try_clone()?))
    }

    /// Shuts down both directions: the peer sees EOF, and a thread blocked in
    /// [`recv`](Self::recv) on this socket wakes up with `Ok(None)`.
    pub fn shutdown(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Both)
    }

    /// Sets (or clears, with `None`) the receive timeout; a zero duration is rejected.
    ///
    /// A timeout before a message's first byte gives [`RecvError::Io`] with kind `WouldBlock`
    /// and leaves the stream in sync; a timeout mid-message leaves it out of sync.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Sends one whole message (header included) with `fds` attached to its first byte.
    ///
    /// Uses `MSG_NOSIGNAL` (a closed peer gives `EPIPE`, not `SIGPIPE`) and retries `EINTR`.
    /// Fds need at least one byte to ride on, and at most 253 can go in one message.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if bytes.is_empty() {
            if fds.is_empty() {
                return Ok(());
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fds cannot be sent without message bytes",
            ));
        }
        if fds.len() > SCM_MAX_FD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds for one message",
            ));
        }

        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE_MAX];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fds do not fit in the control buffer",
            ));
        }

        let iov = [IoSlice::new(bytes)];
        let mut sent = loop {
            match rustix::net::sendmsg(&self.stream, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };

        // The kernel took only part of the message (a signal, or a send timeout): the fds went
        // with the first part; the rest follows as plain bytes.
        while let Some(rest) = bytes.get(sent..).filter(|rest| !rest.is_empty()) {
            match rustix::net::send(&self.stream, rest, SendFlags::NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one whole message and the fds attached to it.
    ///
    /// `Ok(None)` is an orderly EOF before the first byte of a message. See [`RecvError`] for
    /// which failures leave the stream in sync.
    pub fn recv(&self, limits: RecvLimits) -> Result<Option<RawMessage>, RecvError> {
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE_MAX];
        let mut fds: Vec<OwnedFd> = Vec::new();
        // Control data was lost or fds came where they must not: the message is reported as
        // TooManyFds once it is read.
        let mut bad_fds = false;

        let mut header = [0u8; HEADER_SIZE];
        let mut got = 0;
        while got < HEADER_SIZE {
            let chunk = self.read_chunk(&mut header[got..], &mut space, Some(&mut fds))?;
            if chunk.len == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(RecvError::Truncated {
                    got,
                    expected: HEADER_SIZE,
                });
            }
            bad_fds |= chunk.ctrunc;
            got += chunk.len;
        }

        let size = header_u32(&header, 4) as usize;
        if size < HEADER_SIZE {
            return Err(RecvError::TooSmall { header, fds });
        }
        if size > limits.max_msg_size {
            return Err(RecvError::TooLarge { header, size, fds });
        }
        bad_fds |= fds.len() > limits.max_fds;

        let mut bytes = vec![0u8; size];
        bytes[..HEADER_SIZE].copy_from_slice(&header);
        let mut got = HEADER_SIZE;
        while got < size {
            let chunk = self.read_chunk(&mut bytes[got..], &mut space, None)?;
            if chunk.len == 0 {
                return Err(RecvError::Truncated {
                    got,
                    expected: size,
                });
            }
            bad_fds |= chunk.ctrunc;
            got += chunk.len;
        }

        if bad_fds {
            drop(fds);
            return Err(RecvError::TooManyFds { bytes });
        }
        Ok(Some(RawMessage { bytes, fds }))
    }

    /// One `recvmsg` into `buf` (retrying `EINTR`). Received fds are appended to `keep` when
    /// given; otherwise they are closed and reported as `ctrunc`, like lost control data.
    fn read_chunk(
        &self,
        buf: &mut [u8],
        space: &mut [MaybeUninit<u8>],
        mut keep: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<ReadChunk> {
        let mut control = RecvAncillaryBuffer::new(space);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut ctrunc = msg.flags.contains(ReturnFlags::CTRUNC);
        for cmsg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = cmsg {
                match keep.as_deref_mut() {
                    Some(keep) => keep.extend(received),
                    None => {
                        // Iterating closes each fd as it is dropped.
                        for fd in received {
                            drop(fd);
                            ctrunc = true;
                        }
                    }
                }
            }
        }
        Ok(ReadChunk {
            len: msg.bytes,
            ctrunc,
        })
    }
}

impl From<MessageSocket> for OwnedFd {
    fn from(s: MessageSocket) -> OwnedFd {
        OwnedFd::from(s.stream)
    }
}

impl AsFd for MessageSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};
    use rustix::fs::{memfd_create, MemfdFlags};
    use rustix::pipe::{pipe_with, PipeFlags};
    use std::io::Write;
    use std::thread;

    const LIMITS: RecvLimits = RecvLimits {
        max_msg_size: 1 << 21,
        max_fds: 4,
    };

    fn message(msg_id: u16, command: u16, payload: &[u8]) -> Vec<u8> {
        let size = u32::try_from(HEADER_SIZE + payload.len()).expect("test message size");
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&msg_id.to_ne_bytes());
        bytes.extend_from_slice(&command.to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        bytes.extend_from_slice(&0x1234_5678u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn header_with_size(msg_id: u16, size: u32) -> Vec<u8> {
        let mut bytes = message(msg_id, 1, &[]);
        bytes[4..8].copy_from_slice(&size.to_ne_bytes());
        bytes
    }

    /// A `UnixStream` pair: `raw` to write arbitrary bytes, `sock` under test.
    fn raw_pair() -> (UnixStream, MessageSocket) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (a, MessageSocket::new(b))
    }

    fn open_fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("read /proc/self/fd")
            .count()
    }

    fn eventfd_value(fd: BorrowedFd<'_>) -> Option<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => Some(u64::from_ne_bytes(buf)),
            _ => None,
        }
    }

    fn new_eventfd() -> OwnedFd {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
    }

    /// Ok(0) from reading the pipe's read end proves every write end is closed.
    fn pipe_write_ends_closed(read_end: &OwnedFd) -> bool {
        let mut buf = [0u8; 8];
        matches!(rustix::io::read(read_end, &mut buf), Ok(0))
    }

    #[test]
    fn empty_payload_round_trip() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let bytes = message(7, 3, &[]);
        a.send(&bytes, &[]).expect("send");
        let msg = b.recv(LIMITS).expect("recv").expect("a message");
        assert_eq!(msg.bytes, bytes);
        assert!(msg.fds.is_empty());
        assert_eq!(msg.msg_id(), 7);
        assert_eq!(msg.command(), 3);
        assert_eq!(msg.flags(), 0x1234_5678);
    }

    #[test]
    fn one_mib_payload_round_trip_with_fd() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let payload: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
        let bytes = message(9, 5, &payload);
        let efd = new_eventfd();
        let expected = bytes.clone();
        let writer = thread::spawn(move || {
            a.send(&bytes, &[efd.as_fd()]).expect("send");
            (a, efd)
        });
        let msg = b.recv(LIMITS).expect("recv").expect("a message");
        let (_a, efd) = writer.join().expect("writer thread");
        assert_eq!(msg.bytes.len(), expected.len());
        assert!(msg.bytes == expected, "payload differs");
        assert_eq!(msg.fds.len(), 1);
        rustix::io::write(&msg.fds[0], &5u64.to_ne_bytes()).expect("write received eventfd");
        assert_eq!(eventfd_value(efd.as_fd()), Some(5));
    }

    #[test]
    fn fds_arrive_with_their_message_back_to_back() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let memfd = memfd_create("transport-test", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::io::write(&memfd, b"memfd contents").expect("write memfd");
        let e1 = new_eventfd();
        let e2 = new_eventfd();

        a.send(&message(1, 2, &[0xaa; 24]), &[memfd.as_fd()])
            .expect("send 1");
        a.send(&message(2, 2, &[]), &[]).expect("send 2");
        a.send(&message(3, 8, &[0xbb; 4]), &[e1.as_fd(), e2.as_fd()])
            .expect("send 3");

        let m1 = b.recv(LIMITS).expect("recv 1").expect("message 1");
        let m2 = b.recv(LIMITS).expect("recv 2").expect("message 2");
        let m3 = b.recv(LIMITS).expect("recv 3").expect("message 3");
        assert_eq!((m1.msg_id(), m1.bytes.len(), m1.fds.len()), (1, 40, 1));
        assert_eq!((m2.msg_id(), m2.bytes.len(), m2.fds.len()), (2, 16, 0));
        assert_eq!((m3.msg_id(), m3.bytes.len(), m3.fds.len()), (3, 20, 2));

        let mut buf = [0u8; 14];
        rustix::io::pread(&m1.fds[0], &mut buf, 0).expect("pread received memfd");
        assert_eq!(&buf, b"memfd contents");

        // The fds of message 3 are in order.
        rustix::io::write(&m3.fds[0], &1u64.to_ne_bytes()).expect("write fd 0");
        rustix::io::write(&m3.fds[1], &2u64.to_ne_bytes()).expect("write fd 1");
        assert_eq!(eventfd_value(e1.as_fd()), Some(1));
        assert_eq!(eventfd_value(e2.as_fd()), Some(2));
    }

    #[test]
    fn header_split_across_writes() {
        let (raw, sock) = raw_pair();
        let bytes = message(0x4242, 6, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let expected = bytes.clone();
        let e1 = new_eventfd();
        let e2 = new_eventfd();
        let (s1, s2) = (e1.try_clone().expect("dup"), e2.try_clone().expect("dup"));
        let writer = thread::spawn(move || {
            // Fds ride on the first two pieces of the header; both are collected, in order.
            let raw = MessageSocket::new(raw);
            raw.send(&bytes[..3], &[s1.as_fd()]).expect("piece 1");
            thread::sleep(Duration::from_millis(20));
            raw.send(&bytes[3..11], &[s2.as_fd()]).expect("piece 2");
            for piece in [&bytes[11..17], &bytes[17..]] {
                thread::sleep(Duration::from_millis(20));
                raw.send(piece, &[]).expect("piece");
            }
            raw
        });
        let msg = sock.recv(LIMITS).expect("recv").expect("a message");
        let _raw = writer.join().expect("writer thread");
        assert_eq!(msg.bytes, expected);
        assert_eq!(msg.msg_id(), 0x4242);
        assert_eq!(msg.fds.len(), 2);
        rustix::io::write(&msg.fds[0], &1u64.to_ne_bytes()).expect("write fd 0");
        rustix::io::write(&msg.fds[1], &2u64.to_ne_bytes()).expect("write fd 1");
        assert_eq!(eventfd_value(e1.as_fd()), Some(1));
        assert_eq!(eventfd_value(e2.as_fd()), Some(2));
    }

    #[test]
    fn eof_before_a_message_is_none() {
        let (raw, sock) = raw_pair();
        drop(raw);
        assert!(matches!(sock.recv(LIMITS), Ok(None)));
    }

    #[test]
    fn shutdown_gives_peer_eof() {
        let (a, b) = MessageSocket::pair().expect("pair");
        a.shutdown().expect("shutdown");
        assert!(matches!(b.recv(LIMITS), Ok(None)));
        assert!(a.send(&message(1, 1, &[]), &[]).is_err());
    }

    #[test]
    fn shutdown_wakes_a_blocked_receiver() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let b = std::sync::Arc::new(b);
        let reader = {
            let b = std::sync::Arc::clone(&b);
            thread::spawn(move || matches!(b.recv(LIMITS), Ok(None)))
        };
        thread::sleep(Duration::from_millis(50));
        b.shutdown().expect("shutdown");
        assert!(reader.join().expect("reader thread"));
        drop(a);
    }

    #[test]
    fn eof_mid_header_is_truncated() {
        let (mut raw, sock) = raw_pair();
        raw.write_all(&message(1, 1, &[])[..5]).expect("write");
        drop(raw);
        match sock.recv(LIMITS) {
            Err(RecvError::Truncated {
                got: 5,
                expected: HEADER_SIZE,
            }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn eof_mid_payload_is_truncated() {
        let (mut raw, sock) = raw_pair();
        let bytes = message(1, 1, &[0u8; 100]);
        raw.write_all(&bytes[..50]).expect("write");
        drop(raw);
        match sock.recv(LIMITS) {
            Err(RecvError::Truncated {
                got: 50,
                expected: 116,
            }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn too_small_keeps_the_stream_in_sync() {
        let (mut raw, sock) = raw_pair();
        raw.write_all(&header_with_size(77, 15))
            .expect("write bad header");
        raw.write_all(&message(78, 4, &[9; 8]))
            .expect("write good message");
        match sock.recv(LIMITS) {
            Err(RecvError::TooSmall { header, fds }) => {
                assert_eq!(u16::from_ne_bytes([header[0], header[1]]), 77);
                assert!(fds.is_empty());
            }
            other => panic!("expected TooSmall, got {other:?}"),
        }
        let msg = sock.recv(LIMITS).expect("recv").expect("next message");
        assert_eq!(msg.msg_id(), 78);
        assert_eq!(&msg.bytes[HEADER_SIZE..], &[9; 8]);
    }

    #[test]
    fn too_small_returns_its_fds() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let efd = new_eventfd();
        a.send(&header_with_size(5, 0), &[efd.as_fd()])
            .expect("send");
        match b.recv(LIMITS) {
            Err(RecvError::TooSmall { fds, .. }) => assert_eq!(fds.len(), 1),
            other => panic!("expected TooSmall, got {other:?}"),
        }
    }

    #[test]
    fn too_large_is_rejected_before_reading_the_payload() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let limits = RecvLimits {
            max_msg_size: 64,
            max_fds: 1,
        };
        // Exactly at the limit is fine.
        a.send(&message(1, 1, &[0; 48]), &[]).expect("send");
        assert_eq!(
            b.recv(limits).expect("recv").expect("message").bytes.len(),
            64
        );
        // One over is not.
        a.send(&message(2, 1, &[0; 49]), &[]).expect("send");
        match b.recv(limits) {
            Err(RecvError::TooLarge { header, size, fds }) => {
                assert_eq!(size, 65);
                assert_eq!(u16::from_ne_bytes([header[0], header[1]]), 2);
                assert!(fds.is_empty());
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // A huge claimed size is refused without allocating it.
        let (mut raw, sock) = raw_pair();
        raw.write_all(&header_with_size(3, u32::MAX))
            .expect("write");
        assert!(matches!(
            sock.recv(limits),
            Err(RecvError::TooLarge { size, .. }) if size == u32::MAX as usize
        ));
    }

    #[test]
    fn too_many_fds_closes_them_and_keeps_the_stream_in_sync() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let limits = RecvLimits {
            max_msg_size: 4096,
            max_fds: 2,
        };
        let (pipe_r, pipe_w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).expect("pipe");
        let e = new_eventfd();
        let bytes = message(10, 8, &[1; 12]);
        a.send(&bytes, &[pipe_w.as_fd(), e.as_fd(), e.as_fd()])
            .expect("send 3 fds");
        a.send(&message(11, 8, &[2; 4]), &[e.as_fd()])
            .expect("send next");
        drop(pipe_w);

        match b.recv(limits) {
            Err(RecvError::TooManyFds { bytes: got }) => assert_eq!(got, bytes),
            other => panic!("expected TooManyFds, got {other:?}"),
        }
        // The received copy of the pipe's write end was closed, so the read end sees EOF.
        assert!(pipe_write_ends_closed(&pipe_r));

        let next = b.recv(limits).expect("recv").expect("next message");
        assert_eq!(next.msg_id(), 11);
        assert_eq!(next.fds.len(), 1);
    }

    #[test]
    fn max_fds_exactly_is_accepted() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let limits = RecvLimits {
            max_msg_size: 4096,
            max_fds: 2,
        };
        let e = new_eventfd();
        a.send(&message(1, 1, &[]), &[e.as_fd(), e.as_fd()])
            .expect("send");
        assert_eq!(b.recv(limits).expect("recv").expect("message").fds.len(), 2);
        let limits = RecvLimits {
            max_msg_size: 4096,
            max_fds: 0,
        };
        a.send(&message(2, 1, &[]), &[e.as_fd()]).expect("send");
        assert!(matches!(b.recv(limits), Err(RecvError::TooManyFds { .. })));
    }

    #[test]
    fn fds_attached_to_the_payload_are_refused() {
        // A misbehaving sender: header first, then payload bytes carrying an fd.
        let (a, b) = MessageSocket::pair().expect("pair");
        let (pipe_r, pipe_w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).expect("pipe");
        let bytes = message(20, 1, &[3; 8]);
        a.send(&bytes[..HEADER_SIZE], &[]).expect("send header");
        a.send(&bytes[HEADER_SIZE..], &[pipe_w.as_fd()])
            .expect("send payload with fd");
        a.send(&message(21, 1, &[]), &[]).expect("send next");
        drop(pipe_w);
        match b.recv(LIMITS) {
            Err(RecvError::TooManyFds { bytes: got }) => assert_eq!(got, bytes),
            other => panic!("expected TooManyFds, got {other:?}"),
        }
        assert!(pipe_write_ends_closed(&pipe_r));
        assert_eq!(b.recv(LIMITS).expect("recv").expect("next").msg_id(), 21);
    }

    #[test]
    fn no_fd_leak_over_many_messages() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let e = new_eventfd();
        let m = memfd_create("leak-test", MemfdFlags::CLOEXEC).expect("memfd");
        let bytes = message(1, 2, &[0; 32]);
        let before = open_fd_count();
        for i in 0..1000u64 {
            a.send(&bytes, &[e.as_fd(), m.as_fd()]).expect("send");
            let msg = b.recv(LIMITS).expect("recv").expect("message");
            assert_eq!(msg.fds.len(), 2);
            if i % 100 == 0 {
                rustix::io::write(&msg.fds[0], &1u64.to_ne_bytes()).expect("write");
            }
            // Over-limit messages must not leak either.
            a.send(&bytes, &[e.as_fd(); 5]).expect("send 5");
            assert!(matches!(b.recv(LIMITS), Err(RecvError::TooManyFds { .. })));
        }
        let after = open_fd_count();
        // Tests running in parallel open a few fds of their own; a leak here would be >= 1000.
        assert!(
            after < before + 100,
            "fd count went from {before} to {after}"
        );
        assert_eq!(eventfd_value(e.as_fd()), Some(10));
    }

    #[test]
    fn from_owned_fd_checks_the_kind() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let (twin_local, twin_remote) = MessageSocket::pair().expect("twin pair");
        // Pass one end of the twin pair over the first socket, as the VERSION reply does.
        a.send(&message(1, 1, &[]), &[twin_remote.as_fd()])
            .expect("send twin");
        drop(twin_remote);
        let mut msg = b.recv(LIMITS).expect("recv").expect("message");
        let fd = msg.fds.pop().expect("one fd");
        let twin = MessageSocket::from_owned_fd(fd).expect("a socket");
        twin.send(&message(5, 9, &[1, 2]), &[])
            .expect("send over twin");
        let got = twin_local.recv(LIMITS).expect("recv").expect("message");
        assert_eq!((got.msg_id(), got.command()), (5, 9));

        let err = MessageSocket::from_owned_fd(new_eventfd()).expect_err("eventfd");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let dgram = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("dgram socket");
        let err = MessageSocket::from_owned_fd(dgram).expect_err("datagram socket");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn read_timeout_before_a_message() {
        let (a, b) = MessageSocket::pair().expect("pair");
        b.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        match b.recv(LIMITS) {
            Err(RecvError::Io(e)) => assert!(matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )),
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Still in sync afterwards.
        a.send(&message(4, 4, &[]), &[]).expect("send");
        assert_eq!(b.recv(LIMITS).expect("recv").expect("message").msg_id(), 4);
    }

    #[test]
    fn try_clone_shares_the_stream() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let a2 = a.try_clone().expect("clone");
        a2.send(&message(6, 6, &[]), &[]).expect("send via clone");
        assert_eq!(b.recv(LIMITS).expect("recv").expect("message").msg_id(), 6);
        assert_eq!(
            rustix::net::sockopt::socket_type(a2.as_fd()).expect("type"),
            SocketType::STREAM
        );
    }

    #[test]
    fn send_rejects_fds_without_bytes_and_reports_a_closed_peer() {
        let (a, b) = MessageSocket::pair().expect("pair");
        let e = new_eventfd();
        let err = a.send(&[], &[e.as_fd()]).expect_err("fds without bytes");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        a.send(&[], &[]).expect("empty send is a no-op");
        let too_many = vec![e.as_fd(); SCM_MAX_FD + 1];
        assert!(a.send(&message(1, 1, &[]), &too_many).is_err());
        drop(b);
        let err = a.send(&message(1, 1, &[]), &[]).expect_err("peer closed");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn raw_message_accessors_do_not_panic_on_short_bytes() {
        let msg = RawMessage {
            bytes: vec![1, 2, 3],
            fds: Vec::new(),
        };
        assert_eq!(msg.msg_id(), u16::from_ne_bytes([1, 2]));
        assert_eq!(msg.command(), 0);
        assert_eq!(msg.flags(), 0);
    }
}
