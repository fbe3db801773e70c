//! The Intel AVF interface, defined once for both sides: the emulated device ([`crate::device`])
//! and the client-side driver use these definitions and nothing else.
//!
//! - [`regs`]: BAR0 register offsets and bit fields (VF view), the `VFGEN_RSTAT` states.
//! - [`aq`]: the 32-byte admin-queue descriptor, its flags, opcodes and return codes.
//! - [`virtchnl`]: virtchnl 1.1 op codes, status codes, capability flags, link speeds, every
//!   message structure with its exact wire size, the PF→VF event, and [`virtchnl::VfRequest`],
//!   the length-checked decoding of a whole VF→PF message by op code.
//! - [`desc`]: the TX and RX data-path descriptor layouts.
//!
//! Everything on the wire is little-endian (the AVF structures are `__le*`), so encoders and
//! decoders use explicit `to_le_bytes`/`from_le_bytes`. Every decoder checks the length of what
//! it is given, including variable-length tails, and returns a [`DecodeError`]; none panics.
//!
//! Sizes and values follow DPDK 21.02's `drivers/common/iavf` headers and Linux `iavf` (see the
//! project's `iavf-device.md` reference, sections 2 to 5).

pub mod aq;
pub mod desc;
pub mod frame;
pub mod regs;
pub mod virtchnl;

use thiserror::Error;

/// Why a byte slice could not be decoded as an AVF structure or virtchnl message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A fixed-size structure of the wrong length.
    #[error("{what}: {actual} bytes, expected {expected}")]
    Length {
        /// The structure.
        what: &'static str,
        /// Its size.
        expected: usize,
        /// The bytes given.
        actual: usize,
    },
    /// Fewer bytes than the fixed head of a variable-length structure.
    #[error("{what}: {actual} bytes, at least {min} needed")]
    TooShort {
        /// The structure.
        what: &'static str,
        /// The smallest valid size.
        min: usize,
        /// The bytes given.
        actual: usize,
    },
    /// A variable-length structure whose length does not match its element count, in either
    /// the legacy layout (with the one-element placeholder array, as DPDK 21.02 and older Linux
    /// send it) or the flexible-array layout (newer Linux).
    #[error(
        "{what}: {actual} bytes for {count} elements, expected {legacy} (legacy layout) \
         or {flex} (flexible-array layout)"
    )]
    TailLength {
        /// The structure.
        what: &'static str,
        /// The element count the message declares.
        count: usize,
        /// The length in the legacy layout.
        legacy: usize,
        /// The length in the flexible-array layout.
        flex: usize,
        /// The bytes given.
        actual: usize,
    },
    /// A list whose element count is zero where virtchnl requires at least one.
    #[error("{what}: the element count is zero")]
    EmptyList {
        /// The structure.
        what: &'static str,
    },
}

/// Little-endian reads at fixed offsets of a slice whose length the caller checked; a read past
/// the end still returns an error instead of panicking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Le<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Le<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Le { what, buf }
    }

    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> Result<[u8; N], DecodeError> {
        let end = off.checked_add(N).ok_or(DecodeError::TooShort {
            what: self.what,
            min: usize::MAX,
            actual: self.buf.len(),
        })?;
        let s = self.buf.get(off..end).ok_or(DecodeError::TooShort {
            what: self.what,
            min: end,
            actual: self.buf.len(),
        })?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&self, off: usize) -> Result<u8, DecodeError> {
        Ok(self.bytes::<1>(off)?[0])
    }

    pub(crate) fn u16(&self, off: usize) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes(off)?))
    }

    pub(crate) fn u32(&self, off: usize) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(off)?))
    }

    pub(crate) fn i32(&self, off: usize) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.bytes(off)?))
    }

    pub(crate) fn u64(&self, off: usize) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(off)?))
    }

    pub(crate) fn slice(&self, off: usize, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = off.checked_add(len).ok_or(DecodeError::TooShort {
            what: self.what,
            min: usize::MAX,
            actual: self.buf.len(),
        })?;
        self.buf.get(off..end).ok_or(DecodeError::TooShort {
            what: self.what,
            min: end,
            actual: self.buf.len(),
        })
    }
}

/// Checks that `buf` is exactly `expected` bytes.
pub(crate) fn exact(what: &'static str, buf: &[u8], expected: usize) -> Result<(), DecodeError> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::Length {
            what,
            expected,
            actual: buf.len(),
        })
    }
}

/// Checks that `buf` holds at least `min` bytes.
pub(crate) fn at_least(what: &'static str, buf: &[u8], min: usize) -> Result<(), DecodeError> {
    if buf.len() >= min {
        Ok(())
    } else {
        Err(DecodeError::TooShort {
            what,
            min,
            actual: buf.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_reads_are_little_endian_and_bounded() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let r = Le::new("t", &b);
        assert_eq!(r.u16(0), Ok(0x0201));
        assert_eq!(r.u32(1), Ok(0x0504_0302));
        assert_eq!(r.u64(1), Ok(0x0908_0706_0504_0302));
        assert_eq!(r.i32(0), Ok(0x0403_0201));
        assert_eq!(r.u8(8), Ok(9));
        assert!(matches!(
            r.u64(2),
            Err(DecodeError::TooShort { min: 10, .. })
        ));
        assert!(r.u8(9).is_err());
        assert!(r.slice(usize::MAX, 2).is_err());
        assert_eq!(r.slice(7, 2), Ok(&b[7..9]));
    }

    #[test]
    fn exact_and_at_least_report_the_sizes() {
        assert_eq!(exact("x", &[0; 4], 4), Ok(()));
        assert_eq!(
            exact("x", &[0; 5], 4),
            Err(DecodeError::Length {
                what: "x",
                expected: 4,
                actual: 5
            })
        );
        assert_eq!(at_least("x", &[0; 5], 4), Ok(()));
        assert!(at_least("x", &[0; 3], 4).is_err());
    }
}
