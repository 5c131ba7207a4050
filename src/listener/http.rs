//! The :80 listener: HTTP-01 answers for the certificate path, and for everything else a
//! 308 to the same URL over https (308 keeps the method and body, unlike 301); except
//! for a site without TLS (an Ingress with `portico.dev/tls: "off"`) and a site with
//! routes for port 80 (a Gateway API listener of protocol HTTP), whose requests go to
//! the proxy as they came, which routes them among the routes port 80 serves.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::proxy_protocol::{self, Prefixed};
use super::{Connections, serve_connection};
use crate::acme::Challenges;
use crate::body::{Body, full, text};
use crate::config::Config;
use crate::metrics::{ConnectionError, Metrics};
use crate::proxy::{ConnInfo, Proxy};
use crate::report::Chain;
use crate::shutdown::Phase;
use crate::uri::host;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub(crate) struct HttpListener {
    pub listener: TcpListener,
    pub config: Arc<ArcSwap<Config>>,
    pub challenges: Arc<Challenges>,
    /// The port of the bound https listener, for redirects.
    pub https_port: u16,
    pub connections: Connections,
    /// Counts connections ended for protocol errors.
    pub metrics: Arc<Metrics>,
    /// For sites served without TLS, and routes for port 80.
    pub proxy: Arc<Proxy>,
}

impl HttpListener {
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<Phase>) {
        let this = Arc::new(self);
        while let Some((mut tcp, peer, permit)) =
            super::accept(&this.listener, &this.connections, &mut shutdown).await
        {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let config = this.config.load_full();
                let limits = config.limits.clone();
                // The client's address matters only to sites without TLS, which are
                // proxied from here.
                let (client, prefix) = if config.listen.proxy_protocol
                    && config.listen.trusts(peer.ip())
                {
                    let read = proxy_protocol::read(&mut tcp);
                    match tokio::time::timeout(limits.header_read_timeout, read).await {
                        Ok(Ok((source, rest))) => (source.unwrap_or(peer), rest),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %Chain(&e), "PROXY header refused");
                            super::protocol_error(&this.metrics, ConnectionError::ProxyProtocol);
                            return;
                        }
                        Err(_) => return,
                    }
                } else {
                    (peer, Vec::new())
                };
                drop(config);
                let conn = Arc::new(ConnInfo {
                    peer: client,
                    proto: "http",
                    cert_hosts: None,
                    tls_version: None,
                    sni: None,
                    log_text: Default::default(),
                });
                let handler = {
                    let this = this.clone();
                    move |req| {
                        let this = this.clone();
                        let conn = conn.clone();
                        async move { this.answer(req, &conn).await }
                    }
                };
                let io = Prefixed::new(tcp, prefix);
                serve_connection(io, false, &limits, &this.metrics, shutdown, handler).await;
            });
        }
    }

    async fn answer(&self, req: hyper::Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        // ACME challenges first: a site's routes never shadow its certificate's.
        if !req.uri().path().starts_with(CHALLENGE_PREFIX)
            && self.proxy.serves_port_80(crate::router::request_host(&req))
        {
            return self.proxy.serve(req, conn).await;
        }
        let config = self.config.load();
        let decision = decide(
            &req,
            |host| config.site_for(host).is_some(),
            self.https_port,
        );
        drop(config);
        match decision {
            Answer::Challenge { host, token } => match self.challenges.find(&token).await {
                Some(key_auth) => {
                    tracing::info!(%host, "answered an HTTP-01 challenge");
                    text(StatusCode::OK, key_auth.to_string())
                }
                None => text(StatusCode::NOT_FOUND, "no such challenge\n"),
            },
            Answer::Redirect(location) => Response::builder()
                .status(StatusCode::PERMANENT_REDIRECT)
                .header(header::LOCATION, location)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full("redirecting to https\n"))
                .unwrap_or_else(|_| text(StatusCode::BAD_REQUEST, "bad request\n")),
            Answer::Refuse(status, message) => text(status, message),
        }
    }
}

/// What port 80 does with a request, decided from its head alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Look the token up (memory, then the store) for a served host.
    Challenge {
        host: String,
        token: String,
    },
    /// 308 to this `https://` URL.
    Redirect(String),
    Refuse(StatusCode, &'static str),
}

/// Decides the answer to a port-80 request. `served` says whether a (normalised) host
/// is one of ours; `https_port` is the bound https listener's port.
pub(crate) fn decide<B>(
    req: &hyper::Request<B>,
    served: impl Fn(&str) -> bool,
    https_port: u16,
) -> Answer {
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Answer::Refuse(StatusCode::BAD_REQUEST, "more than one Host header\n");
    }
    let Some(raw_host) = crate::router::request_host(req) else {
        return Answer::Refuse(StatusCode::BAD_REQUEST, "missing Host header\n");
    };
    // Strictly: this host is written back into a Location header.
    let Ok(authority) = host::parse(raw_host) else {
        return Answer::Refuse(StatusCode::BAD_REQUEST, "malformed Host header\n");
    };
    let ours = served(&authority.host);
    if let Some(token) = req.uri().path().strip_prefix(CHALLENGE_PREFIX) {
        // Only names we serve: the store is not an oracle for anyone's tokens.
        if !ours {
            return Answer::Refuse(StatusCode::NOT_FOUND, "no such challenge\n");
        }
        return Answer::Challenge {
            host: authority.host,
            token: token.to_string(),
        };
    }
    // Only to names we serve: portico is nobody's open redirector.
    if !ours {
        return Answer::Refuse(StatusCode::MISDIRECTED_REQUEST, "no site for this host\n");
    }
    // A client that reached the default http port gets the default https port: behind
    // a load balancer mapping 80 → 8080 and 443 → 8443 (portico in a pod), our own
    // listener port means nothing to it. One that typed a port (a local
    // `localhost:8080`) gets the https listener's port.
    let port = match (authority.port, https_port) {
        (None | Some(80), _) | (_, 443) => String::new(),
        (Some(_), p) => format!(":{p}"),
    };
    // Asterisk-form (`OPTIONS *`) and authority-form targets have no path to keep.
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    Answer::Redirect(format!("https://{}{port}{pq}", authority.url_host()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(host: &str, path: &str) -> Answer {
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(())
            .unwrap();
        decide(&req, |h| h == "a.test" || h == "::1", 8443)
    }

    #[test]
    fn redirects_go_only_to_served_hosts_as_written() {
        assert_eq!(
            answer("A.test:8080", "/x?y=1"),
            Answer::Redirect("https://a.test:8443/x?y=1".into())
        );
        assert_eq!(
            answer("a.test", "/"),
            Answer::Redirect("https://a.test/".into())
        );
        assert_eq!(
            answer("[::1]:80", "/"),
            Answer::Redirect("https://[::1]/".into())
        );
        assert!(matches!(
            answer("other.test", "/"),
            Answer::Refuse(StatusCode::MISDIRECTED_REQUEST, _)
        ));
        for evil in [
            "a.test@evil.example",
            "evil.example/a.test",
            "a.test?x",
            "a.test:80:1",
        ] {
            assert!(
                matches!(
                    answer(evil, "/"),
                    Answer::Refuse(StatusCode::BAD_REQUEST, _)
                ),
                "{evil}"
            );
        }
    }

    #[test]
    fn challenges_only_for_served_hosts() {
        assert_eq!(
            answer("a.test", "/.well-known/acme-challenge/tok"),
            Answer::Challenge {
                host: "a.test".into(),
                token: "tok".into()
            }
        );
        assert!(matches!(
            answer("other.test", "/.well-known/acme-challenge/tok"),
            Answer::Refuse(StatusCode::NOT_FOUND, _)
        ));
    }

    #[test]
    fn a_target_without_a_path_redirects_to_the_root() {
        // Found by fuzz/port80: `OPTIONS *` made `Location: https://a.test*`.
        assert_eq!(
            answer("a.test", "*"),
            Answer::Redirect("https://a.test/".into())
        );
    }

    #[test]
    fn two_host_headers_are_refused() {
        let req = hyper::Request::get("/")
            .header("host", "a.test")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        assert!(matches!(
            decide(&req, |_| true, 443),
            Answer::Refuse(StatusCode::BAD_REQUEST, _)
        ));
    }
}
