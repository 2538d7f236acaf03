//! Where the model files are: `models/` as `scripts/fetch-models.sh` lays it
//! out, one directory per engine.

use std::path::{Path, PathBuf};

/// Why an engine could not load. Its message names the file and says what
/// to do (an operator reads it in `/readyz` and the log).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{engine}: {path} is missing; run scripts/fetch-models.sh")]
    Missing { engine: &'static str, path: PathBuf },
    #[error("{engine}: cannot read {path}: {message}")]
    Invalid {
        engine: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A program the engine runs (espeak-ng) is missing or failed; the
    /// message says how to install it.
    #[error("{engine}: needs {program}: {message}")]
    Program {
        engine: &'static str,
        program: &'static str,
        message: String,
    },
}

/// The models directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelsDir {
    root: PathBuf,
}

impl ModelsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `PALAVER_MODELS_DIR`, else `models/` under the current directory.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("PALAVER_MODELS_DIR")
                .map_or_else(|| PathBuf::from("models"), PathBuf::from),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whisper tiny.en, CTranslate2 layout: `model.bin`, `config.json`,
    /// `tokenizer.json`, `vocabulary.txt`.
    pub fn whisper(&self) -> PathBuf {
        self.root.join("whisper-tiny-en")
    }

    /// `SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub fn smollm2(&self) -> PathBuf {
        self.root
            .join("smollm2")
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// Piper's en_US-joe-medium: the `.onnx` (its `.onnx.json` beside it).
    pub fn piper_voice(&self) -> PathBuf {
        self.root.join("piper-joe").join("en_US-joe-medium.onnx")
    }

    /// Silero VAD, the if-less opset-18 ONNX file.
    pub fn silero_vad(&self) -> PathBuf {
        self.root
            .join("silero-vad")
            .join("silero_vad_op18_ifless.onnx")
    }

    /// The ONNX Runtime shared library (loaded at run time by `ort`).
    pub fn onnxruntime(&self) -> PathBuf {
        self.root
            .join("onnxruntime")
            .join("libonnxruntime.so.1.31.1")
    }

    /// `path` if it exists, else [`ModelError::Missing`].
    pub fn require(engine: &'static str, path: PathBuf) -> Result<PathBuf, ModelError> {
        if path.exists() {
            Ok(path)
        } else {
            Err(ModelError::Missing { engine, path })
        }
    }
}
