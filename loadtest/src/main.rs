use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use palaver_loadtest::rest::{self, RestConfig, RestScenario};

/// Load-test a running Palaver server over the wire.
#[derive(Debug, Parser)]
#[command(name = "palaver-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// REST control plane: create/end sessions or list assistants.
    Rest {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Organization API key (raise the server's limits.requests_per_second
        /// and limits.max_open_sessions_per_org for big runs).
        #[arg(long, env = "PALAVER_API_KEY", hide_env_values = true)]
        api_key: String,
        #[arg(long, value_enum, default_value = "sessions")]
        scenario: RestScenario,
        /// Iterations across all clients.
        #[arg(long, default_value_t = 1000)]
        iterations: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Upper bound on the run, in seconds.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// Use this assistant instead of creating one.
        #[arg(long)]
        assistant_id: Option<i64>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Rest {
        url,
        api_key,
        scenario,
        iterations,
        clients,
        max_seconds,
        assistant_id,
        json,
    } = Cli::parse().command;
    let config = RestConfig {
        base_url: url,
        api_key,
        scenario,
        iterations,
        clients,
        max_duration: Duration::from_secs(max_seconds),
        assistant_id,
    };
    let report = match rest::run(config).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("palaver-loadtest: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("palaver-loadtest: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
