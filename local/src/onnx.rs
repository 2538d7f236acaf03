//! The process's one ONNX Runtime: the shared library from `models/`
//! loaded once (`ort`'s `load-dynamic`, never a download) and one
//! [`Environment`] that every ONNX engine (the Piper voice, later the Silero
//! VAD) builds its sessions from.
//!
//! It owns loading the library and the session options the engines share
//! (no spinning worker threads); it knows nothing of any model.

use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;

use crate::models::{ModelError, ModelsDir};

/// The environment, once built. A `Mutex<Option<…>>` rather than a
/// `OnceLock` so a failed load (library missing) can be retried after
/// `scripts/fetch-models.sh` has run.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process's ONNX Runtime environment, loading the library from
/// `models` on the first call. Later calls return the same environment
/// whatever `models` says: a process can hold only one ONNX Runtime.
pub fn environment(models: &ModelsDir) -> Result<Environment, ModelError> {
    const ENGINE: &str = "onnxruntime";
    let mut slot = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = slot.as_ref() {
        return Ok(environment.clone());
    }
    let library = ModelsDir::require(ENGINE, models.onnxruntime())?;
    // `ort` resolves a relative path against the executable's directory
    // first; the models directory is relative to the working directory.
    let library = std::fs::canonicalize(&library).unwrap_or(library);
    let invalid = |message: String| ModelError::Invalid {
        engine: ENGINE,
        path: library.clone(),
        message,
    };
    let environment = ort::init_from(&library)
        .map_err(|err| invalid(err.to_string()))?
        .with_name("palaver")
        .with_telemetry(false)
        .build()
        .map_err(|err| invalid(err.to_string()))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    *slot = Some(environment.clone());
    Ok(environment)
}

/// A CPU session for the model at `path`, using `threads` threads inside
/// each run. The threads sleep between runs instead of spinning: the server
/// shares the cores with the sessions' own work.
pub fn cpu_session(
    environment: &Environment,
    engine: &'static str,
    path: &std::path::Path,
    threads: usize,
) -> Result<Session, ModelError> {
    let invalid = |message: String| ModelError::Invalid {
        engine,
        path: path.to_path_buf(),
        message,
    };
    let option = |err: ort::Error<_>| invalid(err.to_string());
    Session::builder(environment)
        .map_err(|err| invalid(err.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(option)?
        .with_inter_threads(1)
        .map_err(option)?
        .with_intra_op_spinning(false)
        .map_err(option)?
        .with_inter_op_spinning(false)
        .map_err(option)?
        .commit_from_file(path)
        .map_err(|err| invalid(err.to_string()))
}
