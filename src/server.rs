//! Assembly: builds both pipelines from a [`Config`], binds the listeners, runs until a
//! shutdown signal, then drains. `main` and the integration tests drive portico only
//! through this module.
//!
//! Start-up order (docs/certificates.md): bind, serve what the store holds, then obtain what is
//! missing; shutdown order: stop accepting, let in-flight requests finish up to
//! `limits.shutdown_timeout`, return.
//!
//! Reload: [`Server::run`] watches the config file and [`Server::reloader`] reloads it on
//! request (SIGHUP in `main`); [`crate::reload`] says what applies live.
//!
//! Readiness (`/readyz` on the optional admin listener): set in [`Server::run`] just
//! before accepting, i.e. once every listener is bound, the config is loaded and the
//! stored certificates are in the resolver, and with `[kubernetes]` once the cluster's
//! objects are listed and their sites applied; cleared when shutdown starts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::acme::Challenges;
use crate::acme::Tuning;
use crate::admin::AdminListener;
use crate::certs::CertManager;
use crate::cluster::Cluster;
pub use crate::cluster::ClusterError;
use crate::config::{Config, Storage};
pub use crate::listener::ListenError;
use crate::listener::http::HttpListener;
use crate::listener::https::HttpsListener;
use crate::listener::{self, Connections};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::shutdown::Phase;
use crate::store::FileStore;
use crate::store::KubeStore;
use crate::store::{Locker, Store, StoreError};
use crate::tls::{self, CertResolver, TlsError};
use crate::workers::{self, Workers};

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `[kubernetes]` is set and the cluster cannot be reached with the credentials at
    /// hand.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The worker threads could not be started.
    #[error("cannot start the worker threads")]
    Workers {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A store and the locker of the same backend.
pub type Backend = (Arc<dyn Store>, Arc<dyn Locker>);

/// Opens the store and the locker the config names. The Kubernetes backend only loads
/// its credentials here; the first request goes out when the store is first used.
pub async fn open_store(config: &Config) -> Result<Backend, ServerError> {
    match &config.storage {
        Storage::File { path } => {
            let store = Arc::new(FileStore::open(path)?);
            Ok((store.clone(), store))
        }
        Storage::Kubernetes { namespace } => {
            let store = Arc::new(KubeStore::connect(namespace.clone()).await?);
            tracing::info!(
                namespace = store.namespace(),
                "storing in Kubernetes Secrets and Leases"
            );
            Ok((store.clone(), store))
        }
    }
}

/// A bound, loaded server, not yet accepting.
pub struct Server {
    config: Arc<ArcSwap<Config>>,
    https: TcpListener,
    http: TcpListener,
    admin: Option<TcpListener>,
    metrics: Arc<Metrics>,
    resolver: Arc<CertResolver>,
    proxy: Arc<Proxy>,
    challenges: Arc<Challenges>,
    certs: Arc<CertManager>,
    reloader: Reloader,
    cluster: Option<Cluster>,
    locker: Arc<dyn Locker>,
}

impl Server {
    /// Binds the listeners and loads certificates: stored ones first, then missing or
    /// due ones from the local CA, so a fresh `internal` site serves on the first request.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let (store, locker) = open_store(&config).await?;
        Server::bind_with(config, store, locker, Tuning::default()).await
    }

    /// [`Server::bind`] with a given store and ACME timing. Part of the embedding API: a
    /// program that embeds portico passes a [`Store`] and [`Locker`] of its own (a
    /// database, a [`MemoryStore`](crate::store::MemoryStore)) instead of the one
    /// `[storage]` names, and its own ACME [`Tuning`]; portico's tests use it to share
    /// one store between servers and to shorten the back-off.
    pub async fn bind_with(
        config: Config,
        store: Arc<dyn Store>,
        locker: Arc<dyn Locker>,
        tuning: Tuning,
    ) -> Result<Server, ServerError> {
        let cluster = match &config.kubernetes {
            Some(settings) => Some(Cluster::connect(settings).await?),
            None => None,
        };
        let https = listener::bind(config.listen.https)?;
        let http = listener::bind(config.listen.http)?;
        let admin = config.listen.admin.map(listener::bind).transpose()?;
        let metrics = Arc::new(Metrics::new());
        let resolver = Arc::new(CertResolver::with_metrics(metrics.clone()));
        let challenges = Arc::new(Challenges::with_store(store.clone()));
        let certs = Arc::new(CertManager::new(
            store,
            locker.clone(),
            resolver.clone(),
            challenges.clone(),
            metrics.clone(),
            tuning,
        ));
        certs.load_existing(&config).await;
        certs.sync(&config, SystemTime::now()).await;
        let proxy = Arc::new(Proxy::with_metrics(&config, metrics.clone()));
        let config = Arc::new(ArcSwap::from_pointee(config));
        let reloader = Reloader::new(
            config.clone(),
            proxy.clone(),
            certs.clone(),
            metrics.clone(),
        );
        Ok(Server {
            proxy,
            config,
            reloader,
            https,
            http,
            admin,
            metrics,
            resolver,
            challenges,
            certs,
            cluster,
            locker,
        })
    }

    /// The https listener's address (its port when the config said `:0`).
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The port-80 listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address, when `listen.admin` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Every counter and gauge; the ACME manager reports its orders here.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The registry the port-80 listener answers HTTP-01 challenges from.
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// The certificate scheduler, to force a pass (tests, reloads).
    pub fn certs(&self) -> Arc<CertManager> {
        self.certs.clone()
    }

    /// The certificates handshakes are served from.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Reloads the config file on request (SIGHUP, tests); [`Server::run`] also watches
    /// the file with it.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains in-flight
    /// requests for up to `limits.shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let config = self.config.load_full();
        let (https_addr, http_addr) = (self.https_addr(), self.http_addr());
        let https_port = https_addr.port();
        let connections = Connections::new(config.limits.max_connections);
        let (phase, stop_rx) = watch::channel(Phase::Serving);
        let workers = Workers::start(
            self.metrics.worker_connections(workers::count()),
            stop_rx.clone(),
        )
        .map_err(|source| ServerError::Workers { source })?;

        let https = HttpsListener {
            listener: self
                .https
                .into_std()
                .map_err(|source| ServerError::Workers { source })?,
            tls: tls::server_config(self.resolver.clone())?,
            resolver: self.resolver.clone(),
            proxy: self.proxy.clone(),
            config: self.config.clone(),
            connections: connections.clone(),
            metrics: self.metrics.clone(),
        };
        let http = HttpListener {
            listener: self.http,
            config: self.config.clone(),
            challenges: self.challenges.clone(),
            https_port,
            connections: connections.clone(),
            metrics: self.metrics.clone(),
            proxy: self.proxy.clone(),
        };
        let admin_addr = self.admin.as_ref().and_then(|l| l.local_addr().ok());
        let admin = self.admin.map(|listener| AdminListener {
            listener,
            metrics: self.metrics.clone(),
            config: self.config.clone(),
        });
        let admin = admin.map(|a| tokio::spawn(a.run(stop_rx.clone())));
        // Listeners bound, config loaded, stored certificates in the resolver (bind did
        // both): ready, once the cluster's objects (if any) are listed and applied.
        let status_writer = match self.cluster {
            None => {
                self.metrics.set_ready(true);
                None
            }
            Some(cluster) => {
                let (mut synced, writer) = cluster.start(
                    self.reloader.clone(),
                    self.locker.clone(),
                    self.certs.clone(),
                    stop_rx.clone(),
                );
                let metrics = self.metrics.clone();
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    if synced.wait_for(|done| *done).await.is_ok()
                        && *stop.borrow() == Phase::Serving
                    {
                        tracing::info!("cluster: every watched kind listed and applied");
                        metrics.set_ready(true);
                    }
                });
                writer
            }
        };
        https
            .start(&workers, stop_rx.clone())
            .map_err(|source| ServerError::Workers { source })?;
        let accepting = [tokio::spawn(http.run(stop_rx.clone()))];
        let renewing = tokio::spawn(self.certs.clone().run(self.config.clone(), stop_rx.clone()));
        // A config built from the command line has no file to watch.
        let watching = (!config.from_command_line)
            .then(|| tokio::spawn(self.reloader.clone().watch(stop_rx.clone())));
        // The bound addresses, not the configured ones: with port 0 in `[listen]` this
        // line is the only place the ports show.
        tracing::info!(
            sites = config.sites.len(),
            https = %https_addr,
            http = %http_addr,
            admin = %admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            access_log = config.log.access,
            "portico is serving"
        );

        shutdown.await;
        tracing::info!(
            open = connections.open(),
            "shutting down: no new connections, draining in-flight requests"
        );
        self.metrics.set_ready(false);
        let _ = phase.send(Phase::Draining);
        for task in accepting.into_iter().chain(admin) {
            let _ = task.await;
        }
        let _ = renewing.await;
        if let Some(watching) = watching {
            let _ = watching.await;
        }
        if let Some(writer) = status_writer {
            // Releases the status lock, so another replica writes status at once.
            let _ = writer.await;
        }
        // The deadline in force now: a reload may have changed it.
        let shutdown_timeout = self.config.load().limits.shutdown_timeout;
        if tokio::time::timeout(shutdown_timeout, connections.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.open(),
                "shutdown deadline passed; closing the remaining connections"
            );
            let _ = phase.send(Phase::Closed);
            // Each connection drops at its next wake-up; give them that moment.
            let _ = tokio::time::timeout(Duration::from_secs(1), connections.drained()).await;
        }
        let _ = phase.send(Phase::Closed);
        workers.join().await;
        // The last requests' access log lines, so a stop loses none of them.
        self.proxy.flush_access_log(Duration::from_secs(2)).await;
        Ok(())
    }
}
