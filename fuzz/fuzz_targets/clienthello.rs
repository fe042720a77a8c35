//! Any bytes as the start of a TLS connection (the proxy's SNI check).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bottle_sidecars::proxy::clienthello::peek(data);
});
