//! The `portico` command: parse the CLI, start logging, load the config, build, run until
//! SIGTERM or SIGINT; SIGHUP asks for a config reload. Everything else lives in the
//! library.
//!
//! Exit codes: 0 success, 64 bad config (EX_USAGE), 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use portico::config::Config;
use portico::report::Chain;
use portico::server::{self, Server};
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
}

/// mimalloc: fewer instructions per request than glibc's malloc and a lower, returned
/// peak under connection churn (measured in Cargo.toml's comment, docs/benchmarks.md).
/// Its options come from the environment before `main` runs; the image sets
/// `MIMALLOC_PURGE_DELAY=0` (freed memory goes back at once) and
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` (docs/benchmarks.md has what each saves).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // h2 warns once per connection it ends for too many resets; under a rapid-reset
    // attack that is thousands of lines. portico counts and logs those itself, once a
    // second (`portico_connection_errors_total`), so h2's own are off unless RUST_LOG
    // names h2.
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("h2")) {
        filter = filter.add_directive("h2=error".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only for a terminal: collected logs (kubectl logs, journald,
        // files) should read as plain `key=value` text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = match &cli.command {
        Command::Run { config } | Command::Check { config } | Command::Certs { config } => config,
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", Chain(&e));
            return ExitCode::from(EX_CONFIG);
        }
    };
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
                let server = Server::bind(config).await?;
                tokio::spawn(reload_on_sighup(hangups, server.reloader()));
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

async fn reload_on_sighup(hangups: std::io::Result<Signal>, reloader: portico::reload::Reloader) {
    let Ok(mut hup) = hangups else {
        tracing::warn!("cannot handle SIGHUP; config file changes are still picked up");
        return;
    };
    while hup.recv().await.is_some() {
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
