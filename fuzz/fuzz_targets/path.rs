//! Path normalisation and routing: a normal form has no empty or dot segment, is its
//! own normal form, and routes like every spelling of it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico::config::Config;
use portico::fuzzing::{Action, Router, normalize_path as normalize};

const SITE: &str = "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"root:1\"]\n[[site.route]]\npath = \"/respond\"\nrespond = { status = 403 }\n[[site.route]]\npath = \"/api/\"\nupstreams = [\"api:1\"]\n[[site.route]]\npath = \"/api/v2/\"\nupstreams = [\"v2:1\"]\n";

fn router() -> &'static Router<String> {
    static ROUTER: OnceLock<Router<String>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = Config::parse(std::path::Path::new("fuzz.toml"), SITE).unwrap();
        Router::new(&config, |upstreams, _| upstreams[0].to_string())
    })
}

fn target(path: &str) -> Option<String> {
    let matched = router().route(Some("a.test"), path, None).ok()?;
    Some(match &matched.route.action {
        Action::Proxy(t) => t.clone(),
        Action::Respond { status, .. } => status.to_string(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(path) else {
        assert!(target(path).is_none(), "an unroutable path was routed: {path:?}");
        return;
    };
    assert!(normal.starts_with('/'), "{normal:?}");
    assert!(
        !normal[1..].split('/').rev().skip(1).any(|s| s.is_empty()),
        "empty segment in {normal:?}"
    );
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "dot segment in {normal:?}"
    );
    assert_eq!(normalize(&normal).unwrap(), normal, "not idempotent");
    assert_eq!(target(path), target(&normal), "{path:?} routes apart from {normal:?}");
});
