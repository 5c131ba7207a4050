//! The header rewrite of a forwarded request: whatever a client sends, no hop-by-hop
//! header survives, and an untrusted client's forwarding headers are replaced.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::headers(data));
