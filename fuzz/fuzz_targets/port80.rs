//! The port-80 handler's decision and a Gateway API redirect's Location: a redirect
//! goes only to a served host (or the rule's), as parsed, never to anything a Host
//! header smuggles in.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::port80(data));
