//! What an upstream sends back (`proxy::h1codec`): a response head and a chunked body
//! read the same whole or in pieces, never more body than bytes; and the request head
//! portico writes reads back as one request, framed only as it was told.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::upstream(data));
