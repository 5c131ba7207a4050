//! The admin listener (`listen.admin`, optional): what operators and orchestrators ask
//! portico about itself, over plain HTTP/1.1.
//!
//! - `GET /healthz` → 200 `ok` while the process and its runtime answer (liveness);
//! - `GET /readyz` → 200 `ready` once the listeners are bound, the config is loaded and
//!   the stored certificates are in the resolver; 503 before that and while shutting
//!   down (readiness);
//! - `GET /metrics` → the Prometheus text format 0.0.4 of [`crate::metrics`];
//! - `HEAD` works on all three; other methods get 405 with `Allow`, other paths 404.
//!
//! It has its own small connection cap, so a flood on :443 cannot starve the probes and
//! a busy scraper cannot take connections from clients. It stops accepting when shutdown
//! starts, like the other listeners. Bind it to loopback or a private address: it has no
//! authentication (`127.0.0.1:2019` locally, `0.0.0.0:9901` in a pod, as in
//! config/kubernetes).

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;
use crate::config::Config;
use crate::listener::serve_connection;
use crate::metrics::Metrics;
use crate::shutdown::Phase;

/// Admin connections open at once; more wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// The Content-Type of the Prometheus text format.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) struct AdminListener {
    pub listener: TcpListener,
    pub metrics: Arc<Metrics>,
    /// Read per connection for the timeouts, as the other listeners do.
    pub config: Arc<ArcSwap<Config>>,
}

impl AdminListener {
    /// Accepts until shutdown starts; open connections then finish like the others.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<Phase>) {
        let connections = crate::listener::Connections::new(MAX_CONNECTIONS);
        let this = Arc::new(self);
        while let Some((tcp, _, permit)) =
            crate::listener::accept(&this.listener, &connections, &mut shutdown).await
        {
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let limits = this.config.load().limits.clone();
                let handler = {
                    let metrics = this.metrics.clone();
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let response = answer(&req, &metrics);
                        async move { response }
                    }
                };
                serve_connection(tcp, false, &limits, &this.metrics, shutdown, handler).await;
            });
        }
    }
}

/// The answer to one admin request; the body is never read.
pub(crate) fn answer<B>(req: &Request<B>, metrics: &Metrics) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let plain = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, plain, "ok\n".into()),
        "/readyz" if metrics.is_ready() => text(StatusCode::OK, plain, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, plain, "not ready\n".into()),
        "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, metrics.render()),
        _ => text(StatusCode::NOT_FOUND, plain, "not found\n".into()),
    }
}

/// An answer that no cache may keep: probes and metrics are about now.
fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = crate::body::text(status, body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(method: Method, path: &str, metrics: &Metrics) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = answer(&req, metrics);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn paths_methods_and_readiness() {
        let m = Metrics::new();
        assert_eq!(
            call(Method::GET, "/healthz", &m).await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            call(Method::GET, "/readyz", &m).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready(true);
        assert_eq!(call(Method::GET, "/readyz", &m).await.0, StatusCode::OK);
        assert_eq!(call(Method::HEAD, "/readyz", &m).await.0, StatusCode::OK);
        let (status, body) = call(Method::GET, "/metrics?x=1", &m).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("portico_ready 1\n"), "{body}");
        assert_eq!(call(Method::GET, "/", &m).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            call(Method::GET, "/metrics/", &m).await.0,
            StatusCode::NOT_FOUND
        );
        let req = Request::post("/healthz").body(()).unwrap();
        let response = answer(&req, &m);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }
}
