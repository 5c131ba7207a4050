//! Path normalisation and routing: a normal form has no empty or dot segment, is its
//! own normal form, and routes like every spelling of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::path(data));
