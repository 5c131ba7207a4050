//! The config parser and validator: any text gives a config or a `ConfigError` that
//! names a line of the file, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::config(data));
