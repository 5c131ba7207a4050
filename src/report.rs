//! How an error is written where people read it: the log and the command line.
//!
//! portico's errors follow hyper's rule: an error's `Display` says only its own
//! message, and the error that caused it is reached through `source()`. [`Chain`] is
//! the one place that walks that chain, joining the messages with `": "`, so no text is
//! written twice and no cause is lost. A leaf: every module logs through it.

use std::error::Error;
use std::fmt;

/// Writes an error and each of its causes: `cannot open the store: get Secret x failed:
/// 503 Service Unavailable`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Some errors of other crates also write their cause into their own message
        // (kube's `HyperError: {0}`); a cause already written is not written again.
        let mut written = self.0.to_string();
        f.write_str(&written)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !written.contains(&text) {
                write!(f, ": {text}")?;
                written.push_str(&text);
            }
            cause = e.source();
        }
        Ok(())
    }
}

/// [`Chain`] as a string.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    Chain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("repeats: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        let e = Outer(std::io::Error::other(Repeats(std::io::Error::other(
            "deep",
        ))));
        assert_eq!(chain(&e), "outer: repeats: deep");
    }
}
