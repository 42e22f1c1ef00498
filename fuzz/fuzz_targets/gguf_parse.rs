//! Fuzz the GGUF header parser: any bytes must give Ok or an error, never a panic,
//! an out-of-bounds read or a huge allocation. Seed it with the committed corpus:
//!
//!     cargo +nightly fuzz run gguf_parse ../crates/gguf/tests/corpus
//!
//! Copy any crash it finds into crates/gguf/tests/corpus/ (the tests replay them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = gguf::parse(data) {
        // Every tensor the parser accepted must lie inside the buffer.
        for t in &header.tensors {
            let start = header.data_offset + t.offset;
            assert!(start + t.n_bytes <= data.len() as u64);
        }
    }
});
