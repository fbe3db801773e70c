//! Fuzz target `wire_reply`: arbitrary bytes into the reply decoders of `wire`.
//!
//! Input: byte 0 picks the decoder (`emudev_fuzz::ReplyDecoder::from_selector`, modulo 12:
//! region info, region io fds, DMA read, DMA unmap, device info, IRQ info, region read, device
//! feature, migration data, VERSION, region write, DMA write); the rest is the reply payload
//! without its header. The properties (no panic; every sparse area of a decoded region-info reply
//! lies inside the payload; decoded replies re-encode to equal values and, for fixed layouts, to
//! the same bytes) are in `emudev_fuzz::reply_properties`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run wire_reply` in `fuzz/` (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    emudev_fuzz::check_reply(data);
});
