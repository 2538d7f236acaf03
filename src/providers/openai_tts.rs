//! [`OpenAiSpeech`]: the [`SpeechSynthesizer`] port over an OpenAI-compatible
//! `POST /audio/speech` with `"response_format": "pcm"`, which streams raw
//! 24 kHz mono signed 16-bit little-endian samples as they are generated.
//!
//! Each body piece becomes one [`TtsAudio`] as soon as it arrives; a sample
//! split between two pieces is carried over. Dropping the stream closes the
//! connection.

use futures_util::stream;
use palaver_actors::ports::{BoxStream, ProviderError, SpeechSynthesizer, TtsAudio, TtsRequest};
use serde::Serialize;
use tokio::time::Instant;

use super::http_api::{BodyReader, HttpApi};
use super::openai_api::OpenAiApi;

/// The rate of OpenAI's `pcm` response format.
pub const OPENAI_PCM_SAMPLE_RATE: u32 = 24_000;

/// OpenAI's speech API (or a compatible server) as a [`SpeechSynthesizer`].
#[derive(Debug, Clone)]
pub struct OpenAiSpeech {
    api: HttpApi,
    /// e.g. `tts-1`; [`TtsRequest`] names only the voice.
    model: String,
}

impl OpenAiSpeech {
    pub fn new(api: OpenAiApi, model: impl Into<String>) -> Self {
        Self {
            api: api.into_http(),
            model: model.into(),
        }
    }
}

impl SpeechSynthesizer for OpenAiSpeech {
    /// `request.settings` may hold `speed` (a number, 0.25 to 4.0 at
    /// OpenAI); other keys are ignored.
    fn synthesize(&self, request: TtsRequest) -> BoxStream<Result<TtsAudio, ProviderError>> {
        let body = SpeechRequest {
            model: self.model.clone(),
            speed: request
                .settings
                .get("speed")
                .and_then(serde_json::Value::as_f64),
            input: request.text,
            voice: request.voice_id,
            response_format: "pcm",
        };
        let state = SpeechState::Connecting {
            api: self.api.clone(),
            body,
        };
        Box::pin(stream::unfold(state, next_audio))
    }
}

enum SpeechState {
    Connecting { api: HttpApi, body: SpeechRequest },
    Streaming { body: BodyReader, pcm: PcmAssembler },
    Finished,
}

async fn next_audio(
    mut state: SpeechState,
) -> Option<(Result<TtsAudio, ProviderError>, SpeechState)> {
    loop {
        state = match state {
            SpeechState::Connecting { api, body } => {
                let started = Instant::now();
                let sent = api
                    .send(started, api.timeouts().first_byte, || {
                        api.post("/audio/speech").json(&body)
                    })
                    .await;
                match sent {
                    Ok(sent) => SpeechState::Streaming {
                        body: api.stream_body(sent, started),
                        pcm: PcmAssembler::default(),
                    },
                    Err(err) => return Some((Err(err), SpeechState::Finished)),
                }
            }
            SpeechState::Streaming { mut body, mut pcm } => match body.next_chunk().await {
                Ok(Some(bytes)) => {
                    let samples = pcm.push(&bytes);
                    let state = SpeechState::Streaming { body, pcm };
                    if samples.is_empty() {
                        // A lone byte: wait for its other half.
                        state
                    } else {
                        let audio = TtsAudio {
                            samples,
                            sample_rate: OPENAI_PCM_SAMPLE_RATE,
                            words: None,
                        };
                        return Some((Ok(audio), state));
                    }
                }
                Ok(None) => {
                    if pcm.has_carry() {
                        // Half a sample cannot be played; the audio before
                        // it is fine, so end normally.
                        tracing::warn!("speech ended with an odd byte; dropped it");
                    }
                    return None;
                }
                Err(err) => return Some((Err(err), SpeechState::Finished)),
            },
            SpeechState::Finished => return None,
        }
    }
}

/// Turns little-endian PCM16 bytes, split anywhere, into samples.
#[derive(Debug, Default)]
pub(crate) struct PcmAssembler {
    /// The first byte of a sample whose second byte has not arrived.
    carry: Option<u8>,
}

impl PcmAssembler {
    /// The whole samples that `bytes` completes.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) -> Vec<i16> {
        let mut samples = Vec::with_capacity(bytes.len().div_ceil(2));
        if let (Some(low), Some((&high, rest))) = (self.carry, bytes.split_first()) {
            samples.push(i16::from_le_bytes([low, high]));
            self.carry = None;
            bytes = rest;
        }
        let pairs = bytes.chunks_exact(2);
        if let [odd] = pairs.remainder() {
            self.carry = Some(*odd);
        }
        samples.extend(pairs.map(|pair| i16::from_le_bytes([pair[0], pair[1]])));
        samples
    }

    pub(crate) fn has_carry(&self) -> bool {
        self.carry.is_some()
    }
}

#[derive(Debug, Serialize)]
struct SpeechRequest {
    model: String,
    input: String,
    voice: String,
    response_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_split_anywhere_are_reassembled() {
        let samples: Vec<i16> = (0..101).map(|i| (i * 331 - 16_000) as i16).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        for piece in [1, 2, 3, 5, 7, 64, 201, 202] {
            let mut pcm = PcmAssembler::default();
            let mut out = Vec::new();
            for chunk in bytes.chunks(piece) {
                out.extend(pcm.push(chunk));
            }
            assert_eq!(out, samples, "pieces of {piece}");
            assert!(!pcm.has_carry());
        }
    }

    #[test]
    fn an_empty_piece_keeps_the_carry() {
        let mut pcm = PcmAssembler::default();
        assert!(pcm.push(&[0x34]).is_empty());
        assert!(pcm.push(&[]).is_empty());
        assert_eq!(pcm.push(&[0x12]), vec![0x1234]);
    }
}
