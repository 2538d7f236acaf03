use clap::Parser;

fn main() -> std::process::ExitCode {
    one_thread_per_local_engine();
    actix_web::rt::System::new().block_on(async {
        let cli = palaver::cli::Cli::parse();
        match palaver::cli::run(cli).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("palaver: {message}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// candle's CPU kernels (the local language model and speech recognition)
/// share one pool of spinning threads, one per core by default: beside the
/// server's own threads they fight each other, and decoding measured 5-20x
/// slower on a busy 2-core machine than with one thread each. candle reads
/// the count only from `CANDLE_NUM_THREADS`; an operator's own value wins.
fn one_thread_per_local_engine() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the first statement of `main`, before the runtime or any
        // other thread exists, so nothing can read the environment
        // concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    }
}
