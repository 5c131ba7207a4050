//! The Ingress builder: any objects the API server could send give servable sites (a
//! host, a route from `/`, an upstream per proxy route) and never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::ingress(data));
