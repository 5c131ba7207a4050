//! The port-80 handler's decision: a redirect goes only to a served host, as parsed,
//! never to anything a Host header smuggles in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{Answer, decide};

fuzz_target!(|data: &[u8]| {
    // `host \n path-and-query`
    let mut parts = data.splitn(2, |&b| b == b'\n');
    let host = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or(b"/");
    let Ok(mut req) = http::Request::get("/").body(()) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    *req.uri_mut() = uri;
    if let Ok(value) = http::HeaderValue::from_bytes(host) {
        req.headers_mut().insert(http::header::HOST, value);
    }
    match decide(&req, |h| h == "a.test" || h == "::1", 8443) {
        Answer::Redirect(location) => {
            let uri: http::Uri = location.parse().expect("a Location we wrote parses");
            assert_eq!(uri.scheme_str(), Some("https"));
            let host = uri.host().unwrap_or_default();
            assert!(host == "a.test" || host == "[::1]", "redirect to {location:?}");
            let authority = uri.authority().unwrap().as_str();
            assert!(!authority.contains('@'), "{location:?}");
        }
        Answer::Challenge { host, .. } => assert!(host == "a.test" || host == "::1"),
        Answer::Refuse(status, _) => assert!(status.is_client_error()),
    }
});
