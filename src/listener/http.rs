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
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .map(normalize_host)
            .filter(|h| !h.is_empty());
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
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
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
