//! The PROXY protocol parser: any bytes give an answer, a header never claims more
//! bytes than were read, and a header is found only once all of it has arrived.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::proxy_protocol(data));
