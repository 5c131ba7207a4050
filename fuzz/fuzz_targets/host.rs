//! The Host/authority parser: what it accepts is a plain host (and port) that reads
//! back the same, and agrees with the lenient lookup form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{normalize_host as normalize, parse_host as parse};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = normalize(raw);
    let Ok(authority) = parse(raw) else {
        return;
    };
    assert_eq!(authority.host, lookup, "{raw:?}");
    assert!(
        authority
            .url_host()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)),
        "{raw:?}"
    );
    let again = match authority.port {
        Some(p) => format!("{}:{p}", authority.url_host()),
        None => authority.url_host(),
    };
    assert_eq!(parse(&again), Ok(authority), "{raw:?} -> {again:?}");
});
