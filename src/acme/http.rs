//! The HTTP client every ACME request goes through.
//!
//! - Trust: the system's roots (the platform verifier, as instant-acme's own default
//!   client uses), plus `acme.ca_root` when set: an *extra* root for the directory's own
//!   HTTPS (Pebble, a private CA), never a replacement for the system's. aws-lc-rs is the
//!   only crypto provider, like everywhere else in portico.
//! - `Retry-After`: instant-acme turns an error response into [`instant_acme::Error::Api`]
//!   and drops its headers, so a CA's "come back in two hours" would be lost. This client
//!   notes the `Retry-After` of every error response in a slot local to the task that
//!   made the request ([`scoped`]); converting the error into an [`AcmeError`] picks it
//!   up ([`last_retry_after`]). One manager task per site and one slot per task keep
//!   concurrent sites, which share one account and so one client, apart.
//! - Every `Retry-After` the CA sends is capped at [`MAX_RETRY_AFTER`] before
//!   instant-acme sees it: a bad header can neither stall a site for years nor overflow
//!   instant-acme's own `SystemTime` arithmetic.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::AcmeError;

/// The longest wait portico accepts from a CA's `Retry-After`.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

tokio::task_local! {
    /// The `Retry-After` of the last response in this task, if it was an error.
    static CA_RETRY_AFTER: Slot;
}

#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<SystemTime>>>);

impl Slot {
    fn set(&self, value: Option<SystemTime>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn get(&self) -> Option<SystemTime> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `work` with its own `Retry-After` slot: ACME errors raised inside it carry the
/// `Retry-After` of the error response that caused them.
pub(super) async fn scoped<F: Future>(work: F) -> F::Output {
    CA_RETRY_AFTER.scope(Slot::default(), work).await
}

/// When the CA's last response in this task (inside [`scoped`]) asked to come back, if it
/// was an error response with a `Retry-After`.
pub(super) fn last_retry_after() -> Option<SystemTime> {
    CA_RETRY_AFTER.try_with(Slot::get).ok().flatten()
}

/// The client for `Account::builder_with_http`: system roots plus `ca_root`.
pub(super) fn client(ca_root: Option<&Path>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let provider = crate::tls::provider();
    let verifier = match ca_root {
        Some(path) => rustls_platform_verifier::Verifier::new_with_extra_roots(
            read_roots(path)?,
            provider.clone(),
        ),
        None => rustls_platform_verifier::Verifier::new(provider.clone()),
    }
    .map_err(AcmeError::TlsClient)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(AcmeError::TlsClient)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // Every ACME step is a small request waiting on its answer: with Nagle on, each one
    // sat ~40 ms behind the CA's delayed ACK (more than half of the time to certificate).
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Box::new(Recording {
        inner: Client::builder(TokioExecutor::new()).build(connector),
    }))
}

/// Every certificate in the PEM file at `path`; at least one.
fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| AcmeError::CaRoot {
            path: path.to_path_buf(),
            source,
        })?;
    if roots.is_empty() {
        return Err(AcmeError::CaRootEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

struct Recording {
    inner: Client<Https, BodyWrapper<Bytes>>,
}

impl HttpClient for Recording {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> BoxFuture<'static, Result<BytesResponse, instant_acme::Error>> {
        // Taken now, in the caller's task: the response may be awaited anywhere.
        let slot = CA_RETRY_AFTER.try_with(Slot::clone).ok();
        if let Some(slot) = &slot {
            slot.set(None);
        }
        let response = self.inner.request(req);
        Box::pin(async move {
            let mut response = response
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let now = SystemTime::now();
            let at = cap_retry_after(response.headers_mut(), now);
            let status = response.status();
            if let Some(slot) = slot
                && (status.is_client_error() || status.is_server_error())
            {
                slot.set(at);
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// Reads the `Retry-After` of `headers` and rewrites it as at most [`MAX_RETRY_AFTER`]
/// seconds from `now`; returns the (capped) time. A header that does not parse is left
/// alone (instant-acme ignores it too).
fn cap_retry_after(headers: &mut HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    let at = parse_retry_after(value, now)?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    headers.insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
    Some(now + wait)
}

/// `Retry-After` (RFC 9110 10.2.3): delay-seconds or an HTTP-date, as a time no later
/// than `now` + [`MAX_RETRY_AFTER`]. A date in the past means now.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    let at = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time".
        let secs = u64::from_str(value).unwrap_or(u64::MAX);
        now + Duration::from_secs(secs).min(MAX_RETRY_AFTER)
    } else {
        SystemTime::from(httpdate::HttpDate::from_str(value).ok()?)
    };
    Some(at.clamp(now, now + MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = at(784_111_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 7200 ", now),
            Some(now + Duration::from_secs(7200))
        );
        assert_eq!(parse_retry_after("0", now), Some(now));
        // IMF-fixdate, and the two obsolete forms RFC 9110 still requires readers to take.
        let date = at(784_111_777);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(date)
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(date)
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", now),
            Some(date)
        );
    }

    #[test]
    fn retry_after_in_the_past_means_now_and_far_future_is_capped() {
        let now = at(784_200_000);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(now)
        );
        let cap = Some(now + MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after("31536000", now), cap);
        assert_eq!(parse_retry_after("99999999999999999999999", now), cap);
        assert_eq!(parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT", now), cap);
    }

    #[test]
    fn retry_after_that_is_not_a_delay_or_date_is_ignored() {
        let now = at(784_111_000);
        for bad in ["", "-5", "1.5", "soon", "120s", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn the_header_is_rewritten_capped_for_instant_acme() {
        let now = at(784_111_000);
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(
            cap_retry_after(&mut headers, now),
            Some(now + MAX_RETRY_AFTER)
        );
        assert_eq!(headers[RETRY_AFTER], "86400");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("nonsense"));
        assert_eq!(cap_retry_after(&mut headers, now), None);
        assert_eq!(headers[RETRY_AFTER], "nonsense");
    }

    #[tokio::test]
    async fn the_slot_belongs_to_its_scope() {
        assert_eq!(last_retry_after(), None, "outside any scope");
        let t = at(5);
        let (a, b) = tokio::join!(
            scoped(async {
                CA_RETRY_AFTER.with(|s| s.set(Some(t)));
                tokio::task::yield_now().await;
                last_retry_after()
            }),
            scoped(async {
                tokio::task::yield_now().await;
                last_retry_after()
            }),
        );
        assert_eq!((a, b), (Some(t), None));
    }

    #[test]
    fn an_unreadable_ca_root_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-root.pem");
        let err = client(Some(&missing))
            .err()
            .expect("a missing file is an error");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = client(Some(&garbage))
            .err()
            .expect("no certificate is an error");
        assert!(
            err.to_string().contains(&garbage.display().to_string()),
            "{err}"
        );
    }
}
