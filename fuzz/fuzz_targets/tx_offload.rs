//! Fuzz target `tx_offload`: arbitrary offload requests and frames into the iavf TX engine's
//! offloader (`emudev_iavf::datapath::TxOffloader`).
//!
//! Input: 12 bytes of request (CMD, OFFSET, TSO flag, TSO_LEN, MSS), then the frame. The
//! properties (no panic; a refusal emits nothing; checksums change at most their fields; TSO
//! segments carry at most MSS bytes each and reassemble to the payload) are in
//! `emudev_fuzz::offload::offload_properties`, which also runs as plain tests on stable Rust.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run tx_offload` in `fuzz/` (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emudev_fuzz::offload::check_offload(data);
});
