//! The :443 listener: accept, a PROXY header from trusted load balancers (when
//! `listen.proxy_protocol` is on), the TLS handshake (both bounded by
//! `limits.handshake_timeout`), then HTTP/2 or HTTP/1.1 by ALPN, each request handed to
//! the proxy with what the handshake decided (the client's address, and the hosts the
//! served certificate covers).
//!
//! The ClientHello is read before a rustls config is chosen ([`LazyConfigAcceptor`]):
//! a client that sends no SNI (clients never do for an IP address) is served the
//! certificate of the site whose hosts include the address it connected to; the
//! resolver alone cannot see that address.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::proxy_protocol::{self, Prefixed};
use super::{Connections, serve_connection};
use crate::config::{Config, HostPattern};
use crate::metrics::{ConnectionError, HandshakeFailure, Metrics, Seat};
use crate::proxy::{ConnInfo, Proxy};
use crate::report::Chain;
use crate::shutdown::Phase;
use crate::tls::CertResolver;
use crate::uri::host::normalize as normalize_host;
use crate::workers::{self, Dispatch, Workers};

pub(crate) struct HttpsListener {
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
    pub(crate) fn start(
        self,
        workers: &Workers,
        shutdown: watch::Receiver<Phase>,
    ) -> std::io::Result<()> {
        let this = Arc::new(self);
        let dispatch = workers.dispatch();
        for index in 0..dispatch.count() {
            let listener = this.listener.try_clone()?;
            let (this, shutdown, to) = (this.clone(), shutdown.clone(), dispatch.clone());
            dispatch.spawn_on(index, move || async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => this.accept(index, listener, to, shutdown).await,
                    Err(e) => tracing::error!(error = %Chain(&e), "a worker cannot accept"),
                }
            });
        }
        Ok(())
    }

    /// Worker `me`'s accept loop: serves each connection here, or hands it to a worker
    /// serving fewer ([`workers::place`]).
    async fn accept(
        self: Arc<Self>,
        me: usize,
        listener: TcpListener,
        dispatch: Dispatch,
        mut shutdown: watch::Receiver<Phase>,
    ) {
        let load = dispatch.load().clone();
        while let Some((tcp, peer, permit)) =
            super::accept(&listener, &self.connections, &mut shutdown).await
        {
            let worker = workers::place(&load, me);
            let held = (permit, load.seat(worker));
            let (this, shutdown) = (self.clone(), shutdown.clone());
            if worker == me {
                tokio::spawn(this.serve(tcp, peer, held, shutdown));
                continue;
            }
            // Off this worker's reactor, onto the other's.
            let tcp = match tcp.into_std() {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(%peer, error = %Chain(&e), "a connection could not be handed to another worker");
                    continue;
                }
            };
            dispatch.spawn_on(worker, move || async move {
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => this.serve(tcp, peer, held, shutdown).await,
                    Err(e) => tracing::debug!(%peer, error = %Chain(&e), "a handed-over connection could not be registered"),
                }
            });
        }
    }

    /// One connection, from the handshake to its close; `held` (its permit and its seat
    /// on the worker) goes with it.
    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        held: (OwnedSemaphorePermit, Seat),
        shutdown: watch::Receiver<Phase>,
    ) {
        let _held = held;
        let config = self.config.load_full();
        let limits = config.limits.clone();
        // Boxed, as is the serving below: inline, both made this task's future ~8.5 KiB,
        // copied whole each time tokio moved it (spawning, storing it in the task, its
        // output; a hand-over to another worker too), ~70k instructions per connection.
        let handshake = Box::pin(self.handshake(tcp, peer, &config));
        let (tls, peer, cert_hosts) =
            match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                Ok(Some(done)) => done,
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    self.metrics.handshake_failed(HandshakeFailure::Timeout);
                    return;
                }
            };
        drop(config);
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() == Some(crate::tls::resolver::ACME_TLS_ALPN) {
            // TLS-ALPN-01 validation ends with the handshake (RFC 8737).
            return;
        }
        let h2 = session.alpn_protocol() == Some(b"h2");
        let tls_version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        };
        let conn = Arc::new(ConnInfo {
            peer,
            proto: "https",
            // A reload may have removed the site since the handshake: then the cover is
            // empty and every request gets 421 rather than a guess.
            cert_hosts: Some(cert_hosts.unwrap_or_else(|| Arc::from(Vec::new()))),
            tls_version,
            sni: session.server_name().map(Arc::from),
            log_text: Default::default(),
        });
        let proxy = self.proxy.clone();
        let handler = move |req| {
            let proxy = proxy.clone();
            let conn = conn.clone();
            async move { proxy.serve(req, &conn).await }
        };
        Box::pin(serve_connection(
            tls,
            h2,
            &limits,
            &self.metrics,
            shutdown,
            handler,
        ))
        .await;
    }

    /// The PROXY header (from trusted peers, when on), then the TLS handshake. Returns
    /// the stream, the client's address and the hosts of the certificate served; `None`
    /// when the connection failed (counted and logged here).
    async fn handshake(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        config: &Config,
    ) -> Option<(
        TlsStream<Prefixed<TcpStream>>,
        SocketAddr,
        Option<Arc<[HostPattern]>>,
    )> {
        let local = tcp.local_addr().ok();
        let (client, prefix) = if config.listen.proxy_protocol && config.listen.trusts(peer.ip()) {
            match proxy_protocol::read(&mut tcp).await {
                Ok((source, rest)) => (source.unwrap_or(peer), rest),
                Err(e) => {
                    tracing::debug!(%peer, error = %Chain(&e), "PROXY header refused");
                    super::protocol_error(&self.metrics, ConnectionError::ProxyProtocol);
                    return None;
                }
            }
        } else {
            (peer, Vec::new())
        };
        let acceptor = LazyConfigAcceptor::new(Acceptor::default(), Prefixed::new(tcp, prefix));
        let start = match acceptor.await {
            Ok(start) => start,
            Err(e) => {
                tracing::debug!(peer = %client, error = %Chain(&e), "TLS handshake failed");
                self.metrics.handshake_failed(HandshakeFailure::of(&e));
                return None;
            }
        };
        let snapshot = self.resolver.snapshot();
        let sni = start.client_hello().server_name().map(normalize_host);
        // Clients send no SNI for an IP address: the site is the one that has the
        // address the client connected to (docs/requests.md), else the only site.
        let (tls_config, served) = match (&sni, local) {
            (None, Some(local)) => match snapshot.lookup_by_address(local.ip()) {
                Some(cert) => (
                    crate::tls::fixed_config(&self.tls, cert.key.clone()),
                    Some(cert.clone()),
                ),
                None => (self.tls.clone(), None),
            },
            _ => (self.tls.clone(), snapshot.lookup(sni.as_deref()).cloned()),
        };
        match start.into_stream(tls_config).await {
            Ok(tls) => Some((tls, client, served.map(|c| c.hosts.clone()))),
            Err(e) => {
                tracing::debug!(peer = %client, error = %Chain(&e), "TLS handshake failed");
                self.metrics.handshake_failed(HandshakeFailure::of(&e));
                None
            }
        }
    }
}
