//! Fuzz target `virtchnl`: arbitrary bytes into the virtchnl codec of `emudev_iavf::spec`.
//!
//! Input: byte 0 is the virtchnl op code, the rest the message body. The properties (no panic;
//! a decoded request keeps its op, re-encodes to bytes that decode to the same request and has a
//! length its op allows; the reply and descriptor decoders never panic and round-trip) are in
//! `emudev_fuzz::virtchnl::virtchnl_properties`, which also runs as plain tests on stable Rust.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run virtchnl` in `fuzz/` (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emudev_fuzz::virtchnl::check_virtchnl(data);
});
