use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = palaver::cli::Cli::parse();
    match palaver::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("palaver: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
