//! How native failures become JavaScript errors.
//!
//! Every error this addon throws carries a stable, documented `error.code`
//! string so that JavaScript can branch on it without parsing messages:
//!
//! | code                     | meaning                                                    |
//! |--------------------------|------------------------------------------------------------|
//! | `ERR_VFU_<NAME>`         | a vfio-user operation failed with errno `<NAME>` (`ERR_VFU_EINVAL`) |
//! | `ERR_VFU_UNKNOWN`        | a vfio-user operation failed with an errno not in [`ERRNO_TABLE`] |
//! | `ERR_EMUDEV_INVALID_ARG` | an argument passed from JavaScript was rejected            |
//! | `ERR_EMUDEV_SOCKET_IN_USE` | a live server already listens on the socket path         |
//! | `ERR_EMUDEV_NOT_A_SOCKET` | something that is not a socket is at the socket path      |
//! | `ERR_EMUDEV_CLOSED`      | the object was closed (`close()` was called)               |
//! | `ERR_EMUDEV_TIMEOUT`     | a wait (`waitIrq`, an iavf command or link event) ran out of time |
//! | `ERR_EMUDEV_NOT_READY`   | an operation needs a state the object is not in (iavf `stats()` before `start()`) |
//! | `ERR_EMUDEV_IAVF_REFUSED` | the iavf PF answered a virtchnl op with an error status, or did not grant its capability |
//! | `ERR_EMUDEV_IAVF_PROTOCOL` | the iavf PF answered something unusable               |
//!
//! OS errors (a failed `bind`, `connect`, thread spawn) use the `ERR_VFU_<NAME>`
//! codes too: the errno is the same vocabulary whether it came from the kernel
//! or from a vfio-user reply.
//!
//! The mechanism is napi's `Error<S: AsRef<str>>`: the status `S` becomes
//! `error.code` and the reason becomes `error.message`. [`ErrorCode`] is our
//! `S`. Core crates stay napi-free; they report errno values and this module
//! turns them into [`NativeError`]s.
//!
//! A fallible `#[napi]` export returns `napi::Result<T, ErrorCode>`, spelled
//! with a path ending in `Result`: napi-derive recognises fallible exports by
//! that name, so a local alias such as `type MyResult<T>` does not compile.
//!
//! Errno numbers are Linux's (the generic table shared by x86_64 and aarch64),
//! which is what the vfio-user protocol carries in a reply's error field.

use std::fmt;
use std::io;

/// A napi error whose JS `error.code` is one of this module's stable codes.
pub type NativeError = napi::Error<ErrorCode>;

/// Prefix of the codes for errno-carrying failures.
pub const VFU_CODE_PREFIX: &str = "ERR_VFU_";

/// The stable `error.code` of an error thrown by the addon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A vfio-user operation failed with a known errno: `ERR_VFU_<NAME>`.
    Errno(Errno),
    /// A vfio-user operation failed with an errno missing from [`ERRNO_TABLE`].
    UnknownErrno,
    /// An argument passed from JavaScript was rejected.
    InvalidArg,
    /// A live server already listens on the socket path.
    SocketInUse,
    /// Something that is not a socket is at the socket path.
    NotASocket,
    /// The object was closed.
    Closed,
    /// A wait ran out of time.
    Timeout,
    /// The operation needs a state the object is not in.
    NotReady,
    /// The iavf PF refused a virtchnl op (error status, capability not granted).
    IavfRefused,
    /// The iavf PF answered something unusable.
    IavfProtocol,
    /// The resource is taken (a data path already attached, a pair peer already paired).
    Busy,
}

impl ErrorCode {
    /// The code string exactly as JavaScript sees it in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Errno(errno) => errno.code(),
            Self::UnknownErrno => "ERR_VFU_UNKNOWN",
            Self::InvalidArg => "ERR_EMUDEV_INVALID_ARG",
            Self::SocketInUse => "ERR_EMUDEV_SOCKET_IN_USE",
            Self::NotASocket => "ERR_EMUDEV_NOT_A_SOCKET",
            Self::Closed => "ERR_EMUDEV_CLOSED",
            Self::Timeout => "ERR_EMUDEV_TIMEOUT",
            Self::NotReady => "ERR_EMUDEV_NOT_READY",
            Self::IavfRefused => "ERR_EMUDEV_IAVF_REFUSED",
            Self::IavfProtocol => "ERR_EMUDEV_IAVF_PROTOCOL",
            Self::Busy => "ERR_EMUDEV_BUSY",
        }
    }
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Linux errno value with its symbolic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno {
    number: i32,
    name: &'static str,
    code: &'static str,
}

impl Errno {
    /// Looks up a positive errno number; `None` if it is not in [`ERRNO_TABLE`].
    pub fn from_raw(number: i32) -> Option<Self> {
        ERRNO_TABLE.iter().copied().find(|e| e.number == number)
    }

    /// The errno number (`22` for `EINVAL`).
    pub fn number(self) -> i32 {
        self.number
    }

    /// The symbolic name (`"EINVAL"`).
    pub fn name(self) -> &'static str {
        self.name
    }

    /// The JS error code (`"ERR_VFU_EINVAL"`).
    pub fn code(self) -> &'static str {
        self.code
    }
}

macro_rules! errno_table {
    ($($number:literal => $name:ident,)*) => {
        /// The errno values the addon names, in ascending order.
        pub const ERRNO_TABLE: &[Errno] = &[
            $(Errno {
                number: $number,
                name: stringify!($name),
                code: concat!("ERR_VFU_", stringify!($name)),
            },)*
        ];
    };
}

// Linux asm-generic numbering (x86_64 and aarch64 agree). Aliases such as
// EWOULDBLOCK (= EAGAIN) and ENOTSUP (= EOPNOTSUPP) map to the canonical name.
errno_table! {
    1 => EPERM,
    2 => ENOENT,
    3 => ESRCH,
    4 => EINTR,
    5 => EIO,
    6 => ENXIO,
    7 => E2BIG,
    8 => ENOEXEC,
    9 => EBADF,
    10 => ECHILD,
    11 => EAGAIN,
    12 => ENOMEM,
    13 => EACCES,
    14 => EFAULT,
    16 => EBUSY,
    17 => EEXIST,
    18 => EXDEV,
    19 => ENODEV,
    20 => ENOTDIR,
    21 => EISDIR,
    22 => EINVAL,
    23 => ENFILE,
    24 => EMFILE,
    25 => ENOTTY,
    26 => ETXTBSY,
    27 => EFBIG,
    28 => ENOSPC,
    29 => ESPIPE,
    30 => EROFS,
    31 => EMLINK,
    32 => EPIPE,
    33 => EDOM,
    34 => ERANGE,
    35 => EDEADLK,
    36 => ENAMETOOLONG,
    37 => ENOLCK,
    38 => ENOSYS,
    39 => ENOTEMPTY,
    40 => ELOOP,
    42 => ENOMSG,
    61 => ENODATA,
    62 => ETIME,
    71 => EPROTO,
    74 => EBADMSG,
    75 => EOVERFLOW,
    84 => EILSEQ,
    88 => ENOTSOCK,
    90 => EMSGSIZE,
    91 => EPROTOTYPE,
    92 => ENOPROTOOPT,
    93 => EPROTONOSUPPORT,
    95 => EOPNOTSUPP,
    97 => EAFNOSUPPORT,
    98 => EADDRINUSE,
    99 => EADDRNOTAVAIL,
    100 => ENETDOWN,
    101 => ENETUNREACH,
    103 => ECONNABORTED,
    104 => ECONNRESET,
    105 => ENOBUFS,
    106 => EISCONN,
    107 => ENOTCONN,
    108 => ESHUTDOWN,
    110 => ETIMEDOUT,
    111 => ECONNREFUSED,
    113 => EHOSTUNREACH,
    114 => EALREADY,
    115 => EINPROGRESS,
    116 => ESTALE,
    125 => ECANCELED,
}

/// The error for a vfio-user operation that failed with `errno`.
///
/// `context` names the operation (`"DMA map"`); the message reads
/// `"DMA map: EINVAL (errno 22)"` and `error.code` is `ERR_VFU_EINVAL`, or
/// `ERR_VFU_UNKNOWN` for an errno outside [`ERRNO_TABLE`].
pub fn errno_error(errno: i32, context: &str) -> NativeError {
    match Errno::from_raw(errno) {
        Some(known) => napi::Error::new(
            ErrorCode::Errno(known),
            format!("{context}: {} (errno {errno})", known.name()),
        ),
        None => napi::Error::new(ErrorCode::UnknownErrno, format!("{context}: errno {errno}")),
    }
}

/// An error whose code names `errno` and whose message is `message` as is.
///
/// For failures that already describe themselves (a `ClientError`, an
/// `io::Error`): the code is `ERR_VFU_<NAME>` (or `ERR_VFU_UNKNOWN`) and the
/// message is not decorated further.
pub fn errno_error_with_message(errno: i32, message: impl Into<String>) -> NativeError {
    let code = Errno::from_raw(errno).map_or(ErrorCode::UnknownErrno, ErrorCode::Errno);
    napi::Error::new(code, message.into())
}

/// The errno an `io::Error` stands for: its OS error when it has one, else the
/// errno closest to its kind (`EIO` when nothing fits).
pub fn io_errno(e: &io::Error) -> i32 {
    if let Some(raw) = e.raw_os_error() {
        return raw;
    }
    match e.kind() {
        io::ErrorKind::NotFound => 2,
        io::ErrorKind::PermissionDenied => 13,
        io::ErrorKind::WouldBlock => 11,
        io::ErrorKind::AlreadyExists => 17,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => 22,
        io::ErrorKind::BrokenPipe => 32,
        io::ErrorKind::AddrInUse => 98,
        io::ErrorKind::ConnectionReset => 104,
        io::ErrorKind::NotConnected => 107,
        io::ErrorKind::TimedOut => 110,
        io::ErrorKind::ConnectionRefused => 111,
        _ => 5,
    }
}

/// The error for an OS-level failure: `"{context}: {e}"` with the errno's code.
pub fn io_error(e: &io::Error, context: &str) -> NativeError {
    errno_error_with_message(io_errno(e), format!("{context}: {e}"))
}

/// The error for an argument from JavaScript that the addon rejects.
pub fn invalid_arg(reason: impl Into<String>) -> NativeError {
    napi::Error::new(ErrorCode::InvalidArg, reason.into())
}

/// The error for a method called after `close()`; `what` names the object.
pub fn closed(what: &str) -> NativeError {
    napi::Error::new(ErrorCode::Closed, format!("{what} is closed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::ErrorKind;

    #[test]
    fn codes_are_the_documented_strings() {
        assert_eq!(ErrorCode::InvalidArg.as_str(), "ERR_EMUDEV_INVALID_ARG");
        assert_eq!(ErrorCode::UnknownErrno.as_str(), "ERR_VFU_UNKNOWN");
        let einval = Errno::from_raw(22).expect("EINVAL is in the table");
        assert_eq!(ErrorCode::Errno(einval).as_str(), "ERR_VFU_EINVAL");
        assert_eq!(ErrorCode::Errno(einval).to_string(), "ERR_VFU_EINVAL");
    }

    #[test]
    fn every_errno_code_is_prefix_plus_name() {
        for e in ERRNO_TABLE {
            assert_eq!(e.code(), format!("{VFU_CODE_PREFIX}{}", e.name()));
            assert!(e.name().starts_with('E'), "{}", e.name());
        }
    }

    #[test]
    fn table_is_sorted_and_has_no_duplicates() {
        let mut names = HashSet::new();
        for pair in ERRNO_TABLE.windows(2) {
            assert!(pair[0].number() < pair[1].number(), "{:?}", pair);
        }
        for e in ERRNO_TABLE {
            assert!(names.insert(e.name()), "duplicate {}", e.name());
        }
    }

    #[test]
    fn numbers_agree_with_std_error_kinds() {
        // std decodes raw OS errors with the platform's own errno values,
        // so this cross-checks the hand-written numbers.
        let expected = [
            ("EPERM", ErrorKind::PermissionDenied),
            ("ENOENT", ErrorKind::NotFound),
            ("EINTR", ErrorKind::Interrupted),
            ("E2BIG", ErrorKind::ArgumentListTooLong),
            ("EAGAIN", ErrorKind::WouldBlock),
            ("ENOMEM", ErrorKind::OutOfMemory),
            ("EACCES", ErrorKind::PermissionDenied),
            ("EBUSY", ErrorKind::ResourceBusy),
            ("EEXIST", ErrorKind::AlreadyExists),
            ("EXDEV", ErrorKind::CrossesDevices),
            ("ENOTDIR", ErrorKind::NotADirectory),
            ("EISDIR", ErrorKind::IsADirectory),
            ("EINVAL", ErrorKind::InvalidInput),
            ("ETXTBSY", ErrorKind::ExecutableFileBusy),
            ("EFBIG", ErrorKind::FileTooLarge),
            ("ENOSPC", ErrorKind::StorageFull),
            ("ESPIPE", ErrorKind::NotSeekable),
            ("EROFS", ErrorKind::ReadOnlyFilesystem),
            ("EMLINK", ErrorKind::TooManyLinks),
            ("EPIPE", ErrorKind::BrokenPipe),
            ("EDEADLK", ErrorKind::Deadlock),
            ("ENAMETOOLONG", ErrorKind::InvalidFilename),
            ("ENOSYS", ErrorKind::Unsupported),
            ("ENOTEMPTY", ErrorKind::DirectoryNotEmpty),
            ("EADDRINUSE", ErrorKind::AddrInUse),
            ("EADDRNOTAVAIL", ErrorKind::AddrNotAvailable),
            ("ENETDOWN", ErrorKind::NetworkDown),
            ("ENETUNREACH", ErrorKind::NetworkUnreachable),
            ("ECONNABORTED", ErrorKind::ConnectionAborted),
            ("ECONNRESET", ErrorKind::ConnectionReset),
            ("ENOTCONN", ErrorKind::NotConnected),
            ("ETIMEDOUT", ErrorKind::TimedOut),
            ("ECONNREFUSED", ErrorKind::ConnectionRefused),
            ("EHOSTUNREACH", ErrorKind::HostUnreachable),
            ("ESTALE", ErrorKind::StaleNetworkFileHandle),
        ];
        for (name, kind) in expected {
            let e = ERRNO_TABLE
                .iter()
                .find(|e| e.name() == name)
                .unwrap_or_else(|| panic!("{name} missing from the table"));
            assert_eq!(
                std::io::Error::from_raw_os_error(e.number()).kind(),
                kind,
                "{name} = {}",
                e.number()
            );
        }
    }

    #[test]
    fn errno_error_names_the_errno() {
        let err = errno_error(22, "DMA map");
        assert_eq!(err.status.as_str(), "ERR_VFU_EINVAL");
        assert_eq!(err.reason, "DMA map: EINVAL (errno 22)");
    }

    #[test]
    fn errno_error_with_unknown_errno_uses_the_unknown_code() {
        for raw in [0, -22, 9999, i32::MAX, i32::MIN] {
            let err = errno_error(raw, "region read");
            assert_eq!(err.status.as_str(), "ERR_VFU_UNKNOWN");
            assert_eq!(err.reason, format!("region read: errno {raw}"));
        }
    }

    #[test]
    fn from_raw_rejects_gaps_and_non_positive_numbers() {
        // 15 (ENOTBLK) and 41 (an unused slot) are deliberately absent.
        for raw in [0, -1, 15, 41, 126, i32::MIN] {
            assert_eq!(Errno::from_raw(raw), None, "{raw}");
        }
    }

    #[test]
    fn domain_codes_are_the_documented_strings() {
        assert_eq!(ErrorCode::SocketInUse.as_str(), "ERR_EMUDEV_SOCKET_IN_USE");
        assert_eq!(ErrorCode::NotASocket.as_str(), "ERR_EMUDEV_NOT_A_SOCKET");
        assert_eq!(ErrorCode::Closed.as_str(), "ERR_EMUDEV_CLOSED");
        assert_eq!(ErrorCode::Timeout.as_str(), "ERR_EMUDEV_TIMEOUT");
        assert_eq!(ErrorCode::NotReady.as_str(), "ERR_EMUDEV_NOT_READY");
        assert_eq!(ErrorCode::IavfRefused.as_str(), "ERR_EMUDEV_IAVF_REFUSED");
        assert_eq!(ErrorCode::IavfProtocol.as_str(), "ERR_EMUDEV_IAVF_PROTOCOL");
        let err = closed("NativeClient");
        assert_eq!(err.status, ErrorCode::Closed);
        assert_eq!(err.reason, "NativeClient is closed");
    }

    #[test]
    fn errno_error_with_message_keeps_the_message() {
        let err = errno_error_with_message(2, "cannot connect to /x: gone");
        assert_eq!(err.status.as_str(), "ERR_VFU_ENOENT");
        assert_eq!(err.reason, "cannot connect to /x: gone");
        let unknown = errno_error_with_message(4095, "odd");
        assert_eq!(unknown.status, ErrorCode::UnknownErrno);
        assert_eq!(unknown.reason, "odd");
    }

    #[test]
    fn io_errors_use_the_os_errno_or_the_kind() {
        let os = io::Error::from_raw_os_error(13);
        assert_eq!(io_errno(&os), 13);
        let err = io_error(&os, "bind");
        assert_eq!(err.status.as_str(), "ERR_VFU_EACCES");
        assert!(err.reason.starts_with("bind: "), "{}", err.reason);
        // Errors without an OS code map by kind; the fallback is EIO.
        assert_eq!(io_errno(&io::Error::from(io::ErrorKind::InvalidInput)), 22);
        assert_eq!(io_errno(&io::Error::from(io::ErrorKind::TimedOut)), 110);
        assert_eq!(io_errno(&io::Error::other("strange")), 5);
        assert_eq!(
            io_error(&io::Error::other("strange"), "x").status.as_str(),
            "ERR_VFU_EIO"
        );
    }

    #[test]
    fn invalid_arg_keeps_the_reason() {
        let err = invalid_arg("queues must be 1-16");
        assert_eq!(err.status, ErrorCode::InvalidArg);
        assert_eq!(err.reason, "queues must be 1-16");
    }
}
