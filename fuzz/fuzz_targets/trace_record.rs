//! Fuzz target `trace_record`: arbitrary bytes into `trace::TraceRecord` (what `--trace`
//! writes for every message, before anything validated it).
//!
//! Input: byte 0 picks side, direction, socket and fd count; the rest is the message. The
//! properties are in `emudev_fuzz::trace::check_trace`, which also runs as plain tests.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run trace_record` in `fuzz/` (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emudev_fuzz::trace::check_trace(data);
});
