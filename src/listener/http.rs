//! The :80 listener: HTTP-01 answers for the certificate path, and for everything else a
//! 308 to the same URL over https (308 keeps the method and body, unlike 301).

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Connections, Phase, serve_connection};
use crate::acme::challenges::Challenges;
use crate::config::{Config, normalize_host};
use crate::proxy::Body;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub struct HttpListener {
    pub listener: TcpListener,
    pub config: Arc<ArcSwap<Config>>,
    pub challenges: Arc<Challenges>,
    /// The port of the bound https listener, for redirects.
    pub https_port: u16,
    pub connections: Connections,
}

impl HttpListener {
    pub async fn run(self, mut shutdown: watch::Receiver<Phase>) {
        let this = Arc::new(self);
        while let Some((tcp, _, permit)) =
            super::accept(&this.listener, &this.connections, &mut shutdown).await
        {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let limits = this.config.load().limits.clone();
                let handler = {
                    let this = this.clone();
                    move |req| {
                        let this = this.clone();
                        async move { this.answer(req).await }
                    }
                };
                serve_connection(TokioIo::new(tcp), false, &limits, shutdown, handler).await;
            });
        }
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> Response<Body> {
        let raw_host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let host = raw_host.map(normalize_host).filter(|h| !h.is_empty());
        let Some(host) = host else {
            return text(StatusCode::BAD_REQUEST, "missing Host header\n");
        };
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            // Only names we serve: the store is not an oracle for anyone's tokens.
            if self.config.load().site_for(&host).is_none() {
                return text(StatusCode::NOT_FOUND, "no such challenge\n");
            }
            return match self.challenges.find(token).await {
                Some(key_auth) => {
                    tracing::info!(%host, "answered an HTTP-01 challenge");
                    text(StatusCode::OK, &key_auth)
                }
                _ => text(StatusCode::NOT_FOUND, "no such challenge\n"),
            };
        }
        // A client that reached the default http port gets the default https port: behind
        // a load balancer mapping 80 → 8080 and 443 → 8443 (portico in a pod), our own
        // listener port means nothing to it. One that typed a port (a local
        // `localhost:8080`) gets the https listener's port.
        let port = match (explicit_port(raw_host.unwrap_or("")), self.https_port) {
            (None | Some(80), _) | (_, 443) => String::new(),
            (Some(_), p) => format!(":{p}"),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("https://{host}{port}{pq}");
        Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full("redirecting to https\n"))
            .unwrap_or_else(|_| text(StatusCode::BAD_REQUEST, "bad request\n"))
    }
}

/// The port written in a Host header (`name:port`, `[v6]:port`), if any.
fn explicit_port(host: &str) -> Option<u16> {
    let after = match host.rfind(']') {
        Some(i) => &host[i + 1..],
        None if host.matches(':').count() == 1 => &host[host.find(':')?..],
        None => return None,
    };
    after.strip_prefix(':')?.parse().ok()
}

fn full(body: &str) -> Body {
    Full::new(Bytes::copy_from_slice(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
