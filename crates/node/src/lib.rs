//! Node-API bindings for emudev.
//!
//! This is the only crate that knows napi: a thin conversion layer over the
//! core crates (`emudev-vfio-user`, `emudev-dma`, `emudev-edu`). It converts
//! JavaScript values to core types and back, and holds no device or protocol
//! logic of its own. Errors map to stable `error.code` strings (see
//! [`error`]), so JavaScript branches on `err.code`, never on messages.
//!
//! The generated `index.js` / `index.d.ts` at the npm package root load and
//! describe this addon; the TypeScript in `src/` wraps them.

#![deny(missing_docs)]

use napi_derive::napi;

pub mod error;

use error::{invalid_arg, Errno, ErrorCode};

/// The version of the native addon (the crate version), e.g. `"0.1.0"`.
///
/// The package's tests compare it with `package.json`'s version, which catches
/// a stale `.node` file.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// The symbolic name of a Linux errno as vfio-user replies carry it:
/// `errnoName(22) === "EINVAL"`.
///
/// Throws with `code === "ERR_EMUDEV_INVALID_ARG"` for a number that is not a
/// positive integer or that the addon does not know.
#[napi]
pub fn errno_name(errno: f64) -> napi::Result<&'static str, ErrorCode> {
    let raw = errno_from_js(errno)?;
    Errno::from_raw(raw)
        .map(Errno::name)
        .ok_or_else(|| invalid_arg(format!("unknown errno {raw}")))
}

/// Converts a JS number to a positive `i32` errno without truncating or
/// wrapping.
fn errno_from_js(value: f64) -> napi::Result<i32, ErrorCode> {
    if value.fract() != 0.0 || !(1.0..=f64::from(i32::MAX)).contains(&value) {
        return Err(invalid_arg(format!(
            "errno must be a positive integer, got {value}"
        )));
    }
    // The range check above makes this cast exact.
    Ok(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_version_is_the_crate_version() {
        assert_eq!(native_version(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn errno_name_maps_known_numbers() {
        assert_eq!(errno_name(22.0).ok(), Some("EINVAL"));
        assert_eq!(errno_name(1.0).ok(), Some("EPERM"));
        assert_eq!(errno_name(110.0).ok(), Some("ETIMEDOUT"));
    }

    #[test]
    fn errno_name_rejects_bad_numbers_with_invalid_arg() {
        for bad in [
            0.0,
            -22.0,
            22.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2f64.powi(31),
            9999.0,
        ] {
            let err = errno_name(bad).expect_err("must be rejected");
            assert_eq!(err.status, ErrorCode::InvalidArg, "{bad}");
        }
    }

    #[test]
    fn errno_name_messages_name_the_bad_value() {
        let unknown = errno_name(9999.0).expect_err("unknown errno");
        assert_eq!(unknown.reason, "unknown errno 9999");
        let fractional = errno_name(2.5).expect_err("fractional errno");
        assert_eq!(
            fractional.reason,
            "errno must be a positive integer, got 2.5"
        );
    }
}
