//! The PROXY protocol parser: any bytes give an answer, a header never claims more
//! bytes than were read, and a header is found only once all of it has arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{Parsed, parse_proxy_header as parse};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse(data) else {
        return;
    };
    if let Parsed::Header { len, .. } = parsed {
        assert!(len <= data.len());
        for cut in 1..len {
            assert!(
                matches!(parse(&data[..cut]), Ok(Parsed::Incomplete)),
                "a header found in {cut} of its {len} bytes"
            );
        }
        assert_eq!(parse(&data[..len]).ok(), Some(parsed));
    }
});
