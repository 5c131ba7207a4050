//! Challenge tokens in flight, read by the port-80 listener. The ACME order inserts a
//! token before telling the CA it is ready and removes it when the order is done; the
//! listener answers `/.well-known/acme-challenge/TOKEN` only for tokens held here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// token → key authorization.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, Arc<str>>>,
}

impl Challenges {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.write()
            .insert(token.to_string(), Arc::from(key_authorization));
    }

    pub fn remove(&self, token: &str) {
        self.write().remove(token);
    }

    pub fn get(&self, token: &str) -> Option<Arc<str>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<str>>> {
        // Every edit is a single insert or remove, so a poisoned map is still whole.
        self.tokens.write().unwrap_or_else(|p| p.into_inner())
    }
}
