//! The config parser and validator: any text gives a config or a `ConfigError` that
//! names a line of the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(std::path::Path::new("fuzz.toml"), text) {
        Ok(config) => {
            assert!(!config.sites.is_empty());
            let _ = config.describe();
        }
        Err(ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. }) => {
            assert!(line >= 1 && line <= text.lines().count() + 1, "line {line}");
        }
        Err(ConfigError::Read { .. }) => unreachable!("nothing is read from disk"),
    }
});
