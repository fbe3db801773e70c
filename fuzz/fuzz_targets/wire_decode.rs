//! Fuzz target `wire_decode`: arbitrary bytes into `wire::decode_request`.
//!
//! Input: byte 0 picks how many fds came with the message (`% 4`, so 0..=3); the rest is the
//! whole message, header included. The properties (no panic; a decoded message has `msg_size`
//! equal to its length, a command header and fds only where its command takes them; re-encoding
//! the decoded request with `MessageBuilder` and decoding again gives the same request) are in
//! `emudev_fuzz::request_properties`, which also runs as plain tests on stable Rust.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode` in `fuzz/` (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emudev_fuzz::check_request(data);
});
