//! The `palaver` command line: serve, migrate, and admin tasks that need no
//! running server.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::api_keys::issue_key;
use crate::api::users::create_user_in;
use crate::config::{Secret, Settings};
use crate::db::Db;
use crate::ids::OrgId;
use crate::model::Role;
use crate::{server, store, telemetry};

#[derive(Debug, Parser)]
#[command(name = "palaver", version, about = "Realtime voice session server")]
pub struct Cli {
    /// TOML settings file; `PALAVER_*` environment variables override it.
    #[arg(long, global = true, env = "PALAVER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and serve the API (default 127.0.0.1:8080, SQLite).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Administration without a running server.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an organization; prints its id.
    CreateOrg { name: String },
    /// Create an API key for an organization; prints the key once.
    CreateKey {
        #[arg(long)]
        org: i64,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Create a user; the password is read from the first line of stdin.
    CreateUser {
        #[arg(long)]
        org: i64,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "admin")]
        role: Role,
        #[arg(long)]
        name: Option<String>,
    },
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        Role::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// Runs the parsed command; the error text is what the operator sees.
pub async fn run(cli: Cli) -> Result<(), String> {
    let settings = Settings::load(cli.config.as_deref(), std::env::vars())
        .map_err(|e| format!("configuration: {e}"))?;
    telemetry::init_logging(&settings.log);
    match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let db = open(&settings).await?;
            db.close();
            Ok(())
        }
        Command::Admin(admin) => run_admin(settings, admin).await,
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    tracing::info!(
        bind = %settings.server.bind,
        storage = if settings.uses_postgres() { "postgres" } else { "sqlite" },
        redis = settings.redis.url.is_some(),
        "starting palaver {}",
        env!("CARGO_PKG_VERSION")
    );
    // The embedded engines load in the background while the server starts
    // (a second or two); /readyz says `loading` until they are in.
    if settings.providers.preload_local {
        crate::providers::local::preload();
    } else {
        tracing::info!(
            "not preloading the local engines (providers.preload_local = false): \
             the first session that uses one loads it"
        );
    }
    let state = server::prepare(settings).await.map_err(|e| e.to_string())?;
    let running = server::start(state).map_err(|e| e.to_string())?;
    tracing::info!(addr = %running.addr, "listening");
    running
        .serve_until_signal()
        .await
        .map_err(|e| format!("server: {e}"))
}

async fn open(settings: &Settings) -> Result<Db, String> {
    let db_settings = settings.database.clone();
    tokio::task::spawn_blocking(move || {
        let db = Db::connect(&db_settings)?;
        let applied = db.migrate()?;
        tracing::info!(backend = ?db.backend(), applied, "migrations applied");
        Ok::<_, crate::db::StoreError>(db)
    })
    .await
    .map_err(|e| format!("storage task failed: {e}"))?
    .map_err(|e| format!("storage: {e}"))
}

async fn run_admin(settings: Settings, command: AdminCommand) -> Result<(), String> {
    let db = open(&settings).await?;
    let result = match command {
        AdminCommand::CreateOrg { name } => {
            let name = name.trim().to_owned();
            if name.is_empty() {
                return Err("the organization name must not be empty".into());
            }
            let org = db
                .run(move |c| store::orgs::create(c, &name))
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created organization {} ({})", org.id, org.name);
            println!("{}", org.id);
            Ok(())
        }
        AdminCommand::CreateKey { org, name } => {
            let created = issue_key(&db, OrgId(org), name, None)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "created API key {} ({}) for organization {org}; it is shown only now:",
                created.info.id, created.info.prefix
            );
            println!("{}", created.key);
            Ok(())
        }
        AdminCommand::CreateUser {
            org,
            email,
            role,
            name,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            let password = Secret::new(password.trim_end_matches(['\r', '\n']));
            let exists = db.run(move |c| store::orgs::get(c, OrgId(org))).await;
            if exists.is_err() {
                return Err(format!("no organization with id {org}"));
            }
            let user = create_user_in(&db, OrgId(org), &email, name, password, role)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "created user {} <{}> as {} in organization {org}",
                user.id, user.email, user.role
            );
            println!("{}", user.id);
            Ok(())
        }
    };
    db.close();
    result
}
