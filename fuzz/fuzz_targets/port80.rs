//! The port-80 handler's decision: a redirect goes only to a served host, as parsed,
//! never to anything a Host header smuggles in.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::port80(data));
