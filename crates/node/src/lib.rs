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
//!
//! - [`server::NativeServer`] serves an `edu` device on a vfio-user socket
//!   from its own thread.
//! - [`device::NativePciDevice`] serves a PCI device whose BAR handlers are
//!   JavaScript, through one dispatcher callback ([`dispatch`] has the
//!   protocol between the server thread and the JS thread).
//! - [`client::NativeClient`] is a synchronous vfio-user client, with
//!   [`client::DmaBuffer`] for the memory it maps for the device;
//!   [`async_client::NativeAsyncClient`] is the same on the libuv pool, with
//!   zero-copy mapped regions ([`raw`], the crate's only `unsafe`) and
//!   interrupts reported through a callback.
//! - [`server::NativeServer`] also serves an emulated iavf VF
//!   (`NativeServer.listenIavf`), and [`iavf_port::NativeIavfPort`] is the
//!   iavf client driver: bring-up, link events, stats and reset, all off the
//!   JS thread.
//!
//! Lifetime rules for JavaScript: every class has an explicit async
//! `close()` that stops its threads and frees its resources off the JS thread;
//! after it, methods throw `ERR_EMUDEV_CLOSED`. The threadsafe functions
//! (a device's dispatcher, a client's interrupt callback, an iavf port's event
//! callback) are weak and are
//! released by `close()`; nothing here holds a libuv handle, so an idle object
//! never keeps Node alive; only a pending promise (`close()`, `waitIrq()`, a
//! request) does, for as long as its bounded work runs. (The TypeScript
//! `PciDevice` keeps Node alive while it listens, on purpose, with a timer of
//! its own.)
//!
//! Numbers: offsets, lengths and counts are JS `number`s, checked to be
//! integers in range (at most 2^53 - 1 for offsets); 64-bit quantities that
//! may exceed that (IOVAs, region sizes, 64-bit register values) are `bigint`.

#![deny(missing_docs)]

use std::sync::{Mutex, MutexGuard, PoisonError};

use napi::bindgen_prelude::BigInt;
use napi::{Env, JsError};
use napi_derive::napi;

pub mod async_client;
pub mod client;
mod datapath;
pub mod device;
pub mod dispatch;
pub mod error;
pub mod iavf_port;
pub mod raw;
pub mod server;
mod trace;

use error::{invalid_arg, Errno, ErrorCode, NativeError};

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

/// Register offsets and constants of the `edu` device, as `eduLayout()` returns them.
///
/// BAR0 is region 0 and PCI config space is region 7 (the VFIO PCI indexes);
/// MSI is IRQ index 1, INTx index 0.
#[napi(object, object_from_js = false, js_name = "EduLayout")]
#[derive(Debug, Clone, PartialEq)]
pub struct JsEduLayout {
    /// Value of the identification register (0x010000ed: version 1.0, 0xed).
    pub id_value: u32,
    /// Size of BAR0 in bytes.
    pub bar0_size: u32,
    /// Offset of the MSI capability in config space.
    pub msi_cap_offset: u32,
    /// EDU-side address of the DMA buffer.
    pub dma_buf_addr: u32,
    /// Size of the DMA buffer in bytes.
    pub dma_buf_size: u32,
    /// RO identification register.
    pub reg_id: u32,
    /// RW liveness register (reads return the NOT of the last write).
    pub reg_liveness: u32,
    /// RW factorial register.
    pub reg_factorial: u32,
    /// RW status register.
    pub reg_status: u32,
    /// RO interrupt status.
    pub reg_irq_status: u32,
    /// WO interrupt raise.
    pub reg_irq_raise: u32,
    /// WO interrupt acknowledge.
    pub reg_irq_ack: u32,
    /// DMA source address (64-bit).
    pub reg_dma_src: u32,
    /// DMA destination address (64-bit).
    pub reg_dma_dst: u32,
    /// DMA byte count (64-bit).
    pub reg_dma_count: u32,
    /// DMA command (64-bit).
    pub reg_dma_cmd: u32,
    /// DMA command bit: start.
    pub dma_cmd_start: u32,
    /// DMA command bit: EDU buffer to RAM (clear: RAM to EDU buffer).
    pub dma_cmd_to_ram: u32,
    /// DMA command bit: raise an interrupt when done.
    pub dma_cmd_irq: u32,
}

/// The `edu` device's register map and constants, so JavaScript need not
/// repeat them.
#[napi]
pub fn edu_layout() -> JsEduLayout {
    use emudev_edu::regs;
    // Every value fits in 32 bits (BAR0 is 1 MiB); the casts are exact.
    JsEduLayout {
        id_value: emudev_edu::EDU_ID_REG_VALUE,
        bar0_size: emudev_edu::EDU_BAR0_SIZE as u32,
        msi_cap_offset: u32::from(emudev_edu::EDU_MSI_CAP_OFFSET),
        dma_buf_addr: emudev_edu::EDU_DMA_BUF_ADDR as u32,
        dma_buf_size: emudev_edu::EDU_DMA_BUF_SIZE as u32,
        reg_id: regs::REG_ID as u32,
        reg_liveness: regs::REG_LIVENESS as u32,
        reg_factorial: regs::REG_FACTORIAL as u32,
        reg_status: regs::REG_STATUS as u32,
        reg_irq_status: regs::REG_IRQ_STATUS as u32,
        reg_irq_raise: regs::REG_IRQ_RAISE as u32,
        reg_irq_ack: regs::REG_IRQ_ACK as u32,
        reg_dma_src: regs::REG_DMA_SRC as u32,
        reg_dma_dst: regs::REG_DMA_DST as u32,
        reg_dma_count: regs::REG_DMA_COUNT as u32,
        reg_dma_cmd: regs::REG_DMA_CMD as u32,
        dma_cmd_start: regs::DMA_CMD_START as u32,
        dma_cmd_to_ram: regs::DMA_CMD_TO_RAM as u32,
        dma_cmd_irq: regs::DMA_CMD_IRQ as u32,
    }
}

/// The largest integer a JS `number` holds exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Converts a JS number to an integer in `0..=max` without truncating or
/// wrapping; `what` names the argument in the error.
fn integer_from_js(value: f64, max: f64, what: &str) -> napi::Result<u64, ErrorCode> {
    if value.fract() != 0.0 || !(0.0..=max).contains(&value) {
        return Err(invalid_arg(format!(
            "{what} must be an integer from 0 to {max}, got {value}"
        )));
    }
    // The range check above makes this cast exact.
    Ok(value as u64)
}

/// A byte offset from JS: an integer from 0 to 2^53 - 1.
pub(crate) fn offset_from_js(value: f64, what: &str) -> napi::Result<u64, ErrorCode> {
    integer_from_js(value, MAX_SAFE_INTEGER, what)
}

/// A 32-bit unsigned value from JS (an index, a count, a register value).
pub(crate) fn u32_from_js(value: f64, what: &str) -> napi::Result<u32, ErrorCode> {
    let v = integer_from_js(value, f64::from(u32::MAX), what)?;
    u32::try_from(v).map_err(|_| invalid_arg(format!("{what} does not fit in 32 bits")))
}

/// A 64-bit unsigned value from a JS bigint, rejecting negative or wider ones.
pub(crate) fn u64_from_bigint(value: &BigInt, what: &str) -> napi::Result<u64, ErrorCode> {
    match value.get_u64() {
        (false, v, true) => Ok(v),
        _ => Err(invalid_arg(format!(
            "{what} must be a bigint from 0n to 2n ** 64n - 1n"
        ))),
    }
}

/// Locks `m`, taking the data of a poisoned lock as it is.
///
/// A poisoned lock means a thread panicked while holding it. Every value
/// guarded here stays consistent across a panic at any point (an `Option`
/// that is either taken or not, a list that is pushed to whole), so going on
/// is sound, and it keeps a panic from ever turning into a second one on the
/// JS thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turns a coded error into a value an `AsyncTask` can reject its promise
/// with, keeping `error.code`.
///
/// `Task::resolve` can only fail with a plain `napi::Error`, whose `code`
/// would be a napi status name; building the JS error object here and
/// handing it over by reference keeps our stable code.
pub(crate) fn rejection(env: Env, e: NativeError) -> napi::Error {
    napi::Error::from(JsError::from(e).into_unknown(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_accept_integers_up_to_2_pow_53_minus_1() {
        assert_eq!(offset_from_js(0.0, "offset").ok(), Some(0));
        assert_eq!(offset_from_js(4096.0, "offset").ok(), Some(4096));
        assert_eq!(
            offset_from_js(MAX_SAFE_INTEGER, "offset").ok(),
            Some((1u64 << 53) - 1)
        );
    }

    #[test]
    fn offsets_reject_negative_fractional_and_huge_values() {
        for bad in [
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            -0.5,
            MAX_SAFE_INTEGER + 1.0,
            1e300,
        ] {
            let err = offset_from_js(bad, "offset").expect_err("must be rejected");
            assert_eq!(err.status, ErrorCode::InvalidArg, "{bad}");
            assert!(err.reason.starts_with("offset must be"), "{}", err.reason);
        }
    }

    #[test]
    fn u32_values_cover_the_full_range_and_no_more() {
        assert_eq!(u32_from_js(f64::from(u32::MAX), "v").ok(), Some(u32::MAX));
        assert_eq!(u32_from_js(0.0, "v").ok(), Some(0));
        for bad in [-1.0, 4_294_967_296.0, 1.5, f64::NAN] {
            assert!(u32_from_js(bad, "v").is_err(), "{bad}");
        }
    }

    #[test]
    fn bigints_must_be_non_negative_and_fit_in_64_bits() {
        let ok = BigInt {
            sign_bit: false,
            words: vec![0x10_0000],
        };
        assert_eq!(u64_from_bigint(&ok, "iova").ok(), Some(0x10_0000));
        let max = BigInt {
            sign_bit: false,
            words: vec![u64::MAX],
        };
        assert_eq!(u64_from_bigint(&max, "iova").ok(), Some(u64::MAX));
        let negative = BigInt {
            sign_bit: true,
            words: vec![1],
        };
        let wide = BigInt {
            sign_bit: false,
            words: vec![0, 1],
        };
        for bad in [negative, wide] {
            let err = u64_from_bigint(&bad, "iova").expect_err("must be rejected");
            assert_eq!(err.status, ErrorCode::InvalidArg);
        }
    }

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let joined = std::thread::spawn(move || {
            let _guard = m2.lock();
            panic!("poison the lock on purpose");
        })
        .join();
        assert!(joined.is_err());
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 5);
    }

    #[test]
    fn edu_layout_matches_the_device_crate() {
        let l = edu_layout();
        assert_eq!(l.id_value, 0x0100_00ed);
        assert_eq!(l.msi_cap_offset, 0x40);
        assert_eq!(l.dma_buf_addr, 0x4_0000);
        assert_eq!(l.dma_buf_size, 4096);
        assert_eq!(l.reg_irq_raise, 0x60);
        assert_eq!(l.reg_irq_ack, 0x64);
        assert_eq!(l.reg_dma_cmd, 0x98);
        assert_eq!(l.bar0_size, 0x10_0000);
    }

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
