//! Any bytes as git-gate's first pkt-line (length, then request).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = bottle_sidecars::gitgate::pktline::parse_len(&data[..4]);
    }
    let _ = bottle_sidecars::gitgate::pktline::parse_request(data);
});
