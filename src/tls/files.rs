//! `tls = "files"`: certificates the operator manages (a PEM chain and a PEM key), read
//! at start and read again when either file changes. A change that does not parse, or a
//! key that does not fit, is logged and the previous certificate keeps serving.

use std::path::Path;
use std::time::SystemTime;

use super::{Loaded, TlsError, load_pem};

/// What decides "the files changed": modification time and length of both files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp([(Option<SystemTime>, u64); 2]);

pub(crate) fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    };
    Stamp([one(cert), one(key)])
}

pub(crate) fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let chain = read(cert)?;
    let key_pem = read(key)?;
    load_pem(
        &format!("{} + {}", cert.display(), key.display()),
        &chain,
        &key_pem,
    )
}
