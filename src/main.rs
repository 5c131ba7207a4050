//! The `portico` command: parse the CLI, load the config (a file, or the one site of
//! `proxy` / `respond`), start logging in the format it asks for, build, run until
//! SIGTERM or SIGINT; SIGHUP asks for a config reload. `trust` / `untrust` hand the local
//! CA's root to [`portico::trust`]. Everything else lives in the library.
//!
//! Exit codes: 0 success, 64 bad config (EX_USAGE), 1 any other failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use portico::config::{Config, LogFormat, QuickAction, QuickStart, Storage};
use portico::report::Chain;
use portico::server::{self, Server};
use portico::trust::{TrustError, TrustStore};
use tokio::signal::unix::{Signal, SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "An edge proxy with automatic HTTPS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sites of the config file.
    Run {
        #[arg(long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Validate the config file and print the sites and where each certificate comes from.
    Check {
        #[arg(long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// List the stored certificates: names, issuer, not-after, days left, source.
    Certs {
        #[arg(long, default_value = "portico.toml")]
        config: PathBuf,
    },
    /// Serve HTTPS for one host and forward it to one upstream, without a config file.
    Proxy {
        /// The host to serve (local names get the local CA, public ones ACME).
        #[arg(long)]
        from: String,
        /// The upstream: host:port, :port or http://host:port.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        quick: QuickArgs,
    },
    /// Serve HTTPS for one host with a fixed answer, without a config file.
    Respond {
        /// The host to serve (local names get the local CA, public ones ACME).
        #[arg(long)]
        from: String,
        /// The answer's body (status 200, text/plain).
        #[arg(long)]
        body: String,
        #[command(flatten)]
        quick: QuickArgs,
    },
    /// Install the local CA's root into the system trust store.
    Trust {
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Remove the local CA's root from the system trust store.
    Untrust {
        #[command(flatten)]
        ca: CaArgs,
    },
}

/// What `proxy` and `respond` take besides their own flags.
#[derive(Args)]
struct QuickArgs {
    /// The TLS listener (default 127.0.0.1:8443 for local names, 0.0.0.0:443 otherwise).
    #[arg(long)]
    https: Option<String>,
    /// The HTTP listener (default 127.0.0.1:8080 for local names, 0.0.0.0:80 otherwise).
    #[arg(long)]
    http: Option<String>,
    /// The data folder (certificates, the local CA); default ./portico-data.
    #[arg(long)]
    data: Option<String>,
    /// Write an access log line per request to stdout.
    #[arg(long)]
    access_log: bool,
}

/// Where `trust` and `untrust` find the root, and which trust store they change.
#[derive(Args)]
struct CaArgs {
    /// The config whose storage.path holds the CA (default: ./portico.toml if it exists,
    /// else ./portico-data, the default data folder).
    #[arg(long, conflicts_with = "data")]
    config: Option<PathBuf>,
    /// The data folder that holds the CA (ca/root.pem).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Change a trust store laid out like / under this folder instead of the system's.
    #[arg(long)]
    store_root: Option<PathBuf>,
}

/// mimalloc: fewer instructions per request than glibc's malloc and a lower, returned
/// peak under connection churn (measured in Cargo.toml's comment, docs/benchmarks.md).
/// Its options are read before `main` runs: arenas committed as used is a build-time
/// default (.cargo/config.toml). docs/benchmarks.md has what it saves, and why freed
/// memory is not returned at once (`MIMALLOC_PURGE_DELAY=0` costs a quarter more CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Run { config } | Command::Check { config } | Command::Certs { config } => {
            Config::load(config)
        }
        Command::Proxy { from, to, quick } => {
            Config::quick(&quick.start(from, QuickAction::Proxy { to: to.clone() }))
        }
        Command::Respond { from, body, quick } => {
            Config::quick(&quick.start(from, QuickAction::Respond { body: body.clone() }))
        }
        Command::Trust { ca } => return trust(ca, true),
        Command::Untrust { ca } => return trust(ca, false),
    };
    // The config comes first: its `log.format` decides how every line is written.
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", Chain(&e));
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging(config.log.format);
    if let Command::Check { .. } = cli.command {
        print!("{}", config.describe());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Certs { .. } => {
                let (store, _) = server::open_store(&config).await?;
                let table =
                    portico::certs::table(store.as_ref(), &config, SystemTime::now()).await?;
                print!("{table}");
                Ok::<(), Box<dyn std::error::Error>>(())
            }
            _ => {
                // Registered before binding: from here on SIGHUP (whose default action
                // ends the process) only asks for a reload, even during start-up.
                let hangups = signal(SignalKind::hangup());
                let from_file = !config.from_command_line;
                let server = Server::bind(config).await?;
                let reloader = from_file.then(|| server.reloader());
                tokio::spawn(reload_on_sighup(hangups, reloader));
                server.run(shutdown_signal()).await?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Chain(&*e));
            ExitCode::FAILURE
        }
    }
}

impl QuickArgs {
    fn start(&self, from: &str, action: QuickAction) -> QuickStart {
        QuickStart {
            from: from.to_string(),
            action,
            https: self.https.clone(),
            http: self.http.clone(),
            data: self.data.clone(),
            access: self.access_log.then_some(true),
        }
    }
}

/// portico's own log on stderr: `key=value` text, or one JSON object per line
/// (`log.format = "json"`) with the event's fields at the top level.
fn init_logging(format: LogFormat) {
    // h2 warns once per connection it ends for too many resets; under a rapid-reset
    // attack that is thousands of lines. portico counts and logs those itself, once a
    // second (`portico_connection_errors_total`), so h2's own are off unless RUST_LOG
    // names h2.
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("h2")) {
        filter = filter.add_directive("h2=error".parse().expect("a valid directive"));
    }
    // kube's client warns of every watch stream the API server or a load balancer cuts
    // (`eof in poll`), several lines per outage; portico's own cluster watch says once
    // per kind that it reconnects, with the cause.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube")) {
        filter = filter.add_directive("kube_client=error".parse().expect("a valid directive"));
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            // Escape codes only for a terminal: collected logs (kubectl logs, journald,
            // files) should read as plain `key=value` text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// `portico trust` / `portico untrust`.
fn trust(ca: &CaArgs, install: bool) -> ExitCode {
    let root = match ca_root(ca) {
        Ok(root) => root,
        Err(code) => return code,
    };
    let store = match &ca.store_root {
        Some(dir) => TrustStore::under(dir),
        None => TrustStore::system(),
    };
    let result = if install {
        store.trust(&root)
    } else {
        store.untrust(&root)
    };
    match result {
        Ok(done) => {
            let what = match (install, done.changed) {
                (true, true) => "installed as",
                (true, false) => "already installed as",
                (false, true) => "removed:",
                (false, false) => "was not installed:",
            };
            println!(
                "{}: {what} {}; bundle: {}",
                root.display(),
                done.file.display(),
                done.bundle.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ TrustError::Unsupported { .. }) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", Chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The local CA's root file: `--data`, else the config's storage, else the default
/// data folder.
fn ca_root(ca: &CaArgs) -> Result<PathBuf, ExitCode> {
    if let Some(data) = &ca.data {
        return Ok(data.join("ca").join("root.pem"));
    }
    let default = Path::new("portico.toml");
    let file = ca
        .config
        .clone()
        .or_else(|| default.exists().then(|| default.to_path_buf()));
    let Some(file) = file else {
        return Ok(Path::new("portico-data").join("ca").join("root.pem"));
    };
    let config = Config::load(&file).map_err(|e| {
        eprintln!("error: {}", Chain(&e));
        ExitCode::from(EX_CONFIG)
    })?;
    match config.storage {
        Storage::File { path } => Ok(path.join("ca").join("root.pem")),
        Storage::Kubernetes { .. } => {
            eprintln!(
                "error: with the kubernetes backend the local CA is the Secret portico-local-ca; \
                 save its tls.crt to a file and trust that file"
            );
            Err(ExitCode::FAILURE)
        }
    }
}

async fn reload_on_sighup(
    hangups: std::io::Result<Signal>,
    reloader: Option<portico::reload::Reloader>,
) {
    let Ok(mut hup) = hangups else {
        tracing::warn!("cannot handle SIGHUP; config file changes are still picked up");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(reloader) = &reloader else {
            tracing::info!("SIGHUP: no config file to reload (started from the command line)");
            continue;
        };
        tracing::info!(file = %reloader.path().display(), "SIGHUP: reloading the config");
        // The reloader logs the outcome, and the error with file, line and key.
        let _ = reloader.reload_now().await;
    }
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; run until then.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
