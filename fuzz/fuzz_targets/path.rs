//! Path normalisation and routing: a normal form has no empty or dot segment, is its
//! own normal form, and routes like every spelling of it, also among routes with
//! Gateway API conditions, which a second header line or query occurrence that says
//! otherwise never satisfies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::path(data));
