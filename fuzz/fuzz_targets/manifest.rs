//! Any text as a manifest: a list of problems or a manifest, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bottle::manifest::parse("fuzz.toml", text);
    }
});
