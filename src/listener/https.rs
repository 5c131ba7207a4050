//! The :443 listener: accept, TLS handshake (bounded by `limits.handshake_timeout`),
//! then HTTP/2 or HTTP/1.1 by ALPN, each request handed to the proxy with what the
//! handshake decided (peer, and the hosts the served certificate covers).

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::workers::Workers;
use super::{Connections, Phase, serve_connection};
use crate::config::Config;
use crate::metrics::{HandshakeFailure, Metrics};
use crate::proxy::{ConnInfo, Proxy};
use crate::tls::CertResolver;
use crate::uri::host::normalize as normalize_host;

pub struct HttpsListener {
    /// Non-blocking; each worker accepts on a clone of it.
    pub listener: std::net::TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub resolver: Arc<CertResolver>,
    pub proxy: Arc<Proxy>,
    /// Read per connection, so a reload's new limits apply to new connections.
    pub config: Arc<ArcSwap<Config>>,
    pub connections: Connections,
    /// Counts handshake failures by reason.
    pub metrics: Arc<Metrics>,
}

impl HttpsListener {
    /// Starts an accept loop on every worker. Each accepts until shutdown begins; its
    /// connections then drain on their own.
    pub fn start(self, workers: &Workers, shutdown: watch::Receiver<Phase>) -> std::io::Result<()> {
        let this = Arc::new(self);
        for index in 0..workers.count() {
            let listener = this.listener.try_clone()?;
            let (this, shutdown) = (this.clone(), shutdown.clone());
            workers.spawn_on(
                index,
                Box::new(move || {
                    Box::pin(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => this.accept(listener, shutdown).await,
                            Err(e) => tracing::error!(error = %e, "a worker cannot accept"),
                        }
                    })
                }),
            );
        }
        Ok(())
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<Phase>) {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let this = self;
        while let Some((tcp, peer, permit)) =
            super::accept(&listener, &this.connections, &mut shutdown).await
        {
            let this = this.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let limits = this.config.load().limits.clone();
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        this.metrics.handshake_failed(HandshakeFailure::of(&e));
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        this.metrics.handshake_failed(HandshakeFailure::Timeout);
                        return;
                    }
                };
                let (_, session) = tls.get_ref();
                if session.alpn_protocol() == Some(crate::tls::resolver::ACME_TLS_ALPN) {
                    // TLS-ALPN-01 validation ends with the handshake (RFC 8737).
                    return;
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                let sni = session.server_name().map(normalize_host);
                let cert_hosts = this
                    .resolver
                    .snapshot()
                    .lookup(sni.as_deref())
                    .map(|c| c.hosts.clone());
                let conn = Arc::new(ConnInfo {
                    peer,
                    proto: "https",
                    // A reload may have removed the site since the handshake: then the
                    // cover is empty and every request gets 421 rather than a guess.
                    cert_hosts: Some(cert_hosts.unwrap_or_else(|| Arc::from(Vec::new()))),
                });
                let proxy = this.proxy.clone();
                let handler = move |req| {
                    let proxy = proxy.clone();
                    let conn = conn.clone();
                    async move { proxy.serve(req, &conn).await }
                };
                serve_connection(TokioIo::new(tls), h2, &limits, shutdown, handler).await;
            });
        }
    }
}
