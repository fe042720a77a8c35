//! Any bytes as a host<->guest protocol frame body.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bottle_guest::frame::decode_body(data);
});
