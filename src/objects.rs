//! The objects the certificate path keeps in the store, as both its halves write and
//! read them: the names (with the hash rule `h(x)`), the annotations, and the encoding
//! of a certificate. [`crate::certs`] (the scheduler and the local CA) and
//! [`crate::acme`] (accounts, orders, challenge tokens) both import this module; it
//! imports neither. docs/kubernetes.md lists the resulting Secrets.

use std::collections::BTreeMap;
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Site, TlsSource};
use crate::store::{Kind, Object};
use crate::tls::{Loaded, TlsError, load_pem};

/// Why a stored certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object lacks a data key a certificate needs.
    #[error("stored object {kind}/{name} lacks {key}")]
    Incomplete {
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The missing data key.
        key: &'static str,
    },
    /// The chain or key does not parse.
    #[error("stored certificate {name} cannot be loaded")]
    Load {
        /// The object's name.
        name: String,
        /// Why.
        #[source]
        source: TlsError,
    },
}

/// The last ACME error of a site, on its certificate object.
pub const ANNOTATION_LAST_ERROR: &str = "portico.dev/last-error";
/// When the next ACME attempt of a site is due (RFC 3339), on its certificate object.
pub const ANNOTATION_NEXT_ATTEMPT: &str = "portico.dev/next-attempt";
/// When a certificate expires (RFC 3339), on its certificate object.
pub const ANNOTATION_NOT_AFTER: &str = "portico.dev/not-after";
/// When an HTTP-01 token object may be collected (RFC 3339).
pub const ANNOTATION_EXPIRES: &str = "portico.dev/expires";

/// `h(x)`: the first 16 lowercase hex digits of the SHA-256 of `x`.
pub fn short_hash(x: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The store name of a site's certificate: `<first-name>-<h(sorted names)>` (the
/// Kubernetes backend prefixes `portico-tls-`).
pub fn cert_object_name(site: &Site) -> String {
    let first: String = site
        .hosts
        .first()
        .map(|h| h.to_string())
        .unwrap_or_default()
        .to_ascii_lowercase()
        .replace('*', "wildcard")
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            _ => '-',
        })
        .collect();
    let hash = short_hash(&site.names().join(","));
    // "portico-tls-" + first + "-" + 16 hex digits must stay within 253 characters.
    let room = 253 - "portico-tls-".len() - 1 - hash.len();
    let first = first.get(..first.len().min(room)).unwrap_or("");
    format!("{}-{hash}", first.trim_matches(['.', '-']))
}

/// RFC 3339 in whole seconds, as annotations and `portico certs` show times.
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The store object for a certificate, with its annotations (docs/kubernetes.md).
pub(crate) fn cert_object(
    site: &Site,
    chain_pem: &str,
    key_pem: &str,
    not_after: SystemTime,
) -> Object {
    let names = site.names();
    let mut data = BTreeMap::new();
    data.insert("tls.crt".to_string(), chain_pem.as_bytes().to_vec());
    data.insert("tls.key".to_string(), key_pem.as_bytes().to_vec());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "cert-manager.io/common-name".to_string(),
        site.hosts
            .first()
            .map(|h| h.to_string())
            .unwrap_or_default(),
    );
    annotations.insert("cert-manager.io/alt-names".to_string(), names.join(","));
    annotations.insert(ANNOTATION_NOT_AFTER.to_string(), rfc3339(not_after));
    annotations.insert(
        ANNOTATION_SOURCE.to_string(),
        source_name(&site.tls).to_string(),
    );
    Object { data, annotations }
}

/// The `portico.dev/not-after` annotation of a stored certificate, when it parses.
pub(crate) fn annotated_not_after(object: &Object) -> Option<SystemTime> {
    let text = object.annotations.get(ANNOTATION_NOT_AFTER)?;
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Which source wrote a stored certificate: `acme` or `internal`. ACME and the local CA
/// store a site's certificate under the same name, so a site switched from one to the
/// other must not keep serving what the other issued.
pub const ANNOTATION_SOURCE: &str = "portico.dev/source";

fn source_name(tls: &TlsSource) -> &'static str {
    match tls {
        TlsSource::Acme => "acme",
        TlsSource::Internal => "internal",
        TlsSource::Files { .. } => "files",
        TlsSource::Secret(_) => "secret",
        TlsSource::Off => "off",
    }
}

/// The certificate in `site`'s store object: `None` when it holds none yet (only ACME
/// status annotations) or one from another source than the site's; an error when it is
/// incomplete or does not parse. Objects written before the source was recorded count
/// as the site's.
pub(crate) fn stored_certificate(
    site: &Site,
    object: &Object,
) -> Result<Option<Loaded>, ObjectError> {
    if object.get("tls.crt").is_none()
        || object
            .annotations
            .get(ANNOTATION_SOURCE)
            .is_some_and(|source| source != source_name(&site.tls))
    {
        return Ok(None);
    }
    let name = cert_object_name(site);
    let name = name.as_str();
    let chain = data(object, Kind::Certificate, name, "tls.crt")?;
    let key = data(object, Kind::Certificate, name, "tls.key")?;
    load_pem(&format!("certificate/{name}"), chain, key)
        .map(Some)
        .map_err(|source| ObjectError::Load {
            name: name.to_string(),
            source,
        })
}

/// The data under `key` of `obj` (the object `kind/name`), or which key is missing.
pub(crate) fn data<'a>(
    obj: &'a Object,
    kind: Kind,
    name: &str,
    key: &'static str,
) -> Result<&'a [u8], ObjectError> {
    obj.data
        .get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| ObjectError::Incomplete {
            kind: kind.as_str(),
            name: name.to_string(),
            key,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_sha256_prefix() {
        // sha256("") = e3b0c44298fc1c14...
        assert_eq!(short_hash(""), "e3b0c44298fc1c14");
    }
}
