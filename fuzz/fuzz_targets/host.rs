//! The Host/authority parser: what it accepts is a plain host (and port) that reads
//! back the same, and agrees with the lenient lookup form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::host(data));
