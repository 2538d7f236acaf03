//! [`OpenAiTranscription`]: the [`SpeechRecognizer`] port over an
//! OpenAI-compatible `POST /audio/transcriptions`, one request per utterance.
//!
//! A recognition is a task that owns the audio receiver: it buffers frames
//! until [`SttInput::EndOfUtterance`], then uploads the utterance as a WAV
//! and yields one final [`Transcript`]. The next utterance is buffered while
//! the previous one is being transcribed; transcripts come out in utterance
//! order.
//!
//! - An utterance is capped at [`MAX_UTTERANCE_MS`]; past that the *oldest*
//!   audio is dropped (with a warning), so a caller who talks for minutes,
//!   or a VAD that never hears the end, still gets the latest words heard.
//! - An end of utterance with no audio yields an empty final at once.
//! - A failed transcription yields an `Err` for that utterance; the
//!   recognition goes on with the next one.
//! - Audio after the last end of utterance is discarded when the sender is
//!   dropped; pending transcriptions are still delivered.
//! - Dropping the transcript stream ends the task and abandons any request
//!   in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream;
use palaver_actors::media::SAMPLE_RATE;
use palaver_actors::ports::{
    ProviderError, Recognition, SpeechRecognizer, SttInput, SttOptions, Transcript,
};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http_api::HttpApi;
use super::openai_api::{OpenAiApi, PROVIDER, protocol};

/// The longest utterance kept; older audio is dropped past it.
pub const MAX_UTTERANCE_MS: u32 = 60_000;

/// Frames queued towards the task (one second): bounded, as media must be.
const AUDIO_QUEUE_FRAMES: usize = 50;

/// Transcripts waiting for the session to read them.
const TRANSCRIPT_QUEUE: usize = 8;

/// Largest transcription response read.
const RESPONSE_LIMIT: usize = 1024 * 1024;

/// Capacity kept between utterances, so one long utterance does not pin
/// its buffer for the rest of the session.
const KEPT_CAPACITY_SAMPLES: usize = 10 * SAMPLE_RATE as usize;

/// OpenAI's transcription API (or a compatible server) as a
/// [`SpeechRecognizer`].
#[derive(Debug, Clone)]
pub struct OpenAiTranscription {
    api: HttpApi,
    /// Used when [`SttOptions::model`] is empty.
    default_model: String,
}

impl OpenAiTranscription {
    pub fn new(api: OpenAiApi, default_model: impl Into<String>) -> Self {
        Self {
            api: api.into_http(),
            default_model: default_model.into(),
        }
    }
}

impl SpeechRecognizer for OpenAiTranscription {
    /// Spawns the recognition task on the current Tokio runtime; outside
    /// one, the transcript stream yields a single
    /// [`ProviderError::Unavailable`].
    fn start(&self, options: SttOptions) -> Recognition {
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE_FRAMES);
        let (transcript_tx, transcript_rx) = mpsc::channel(TRANSCRIPT_QUEUE);
        let job = TranscriptionJob {
            api: self.api.clone(),
            model: if options.model.is_empty() {
                self.default_model.clone()
            } else {
                options.model
            },
            language: options.language,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run_recognition(job, audio_rx, transcript_tx));
            }
            Err(_) => {
                let err = ProviderError::Unavailable {
                    provider: PROVIDER,
                    message: "speech recognition started outside a Tokio runtime".to_owned(),
                };
                // The channel is empty and has room for this one item.
                let _ = transcript_tx.try_send(Err(err));
            }
        }
        let transcripts = stream::unfold(transcript_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Recognition {
            audio: audio_tx,
            transcripts: Box::pin(transcripts),
        }
    }
}

type Transcription = Pin<Box<dyn Future<Output = Result<Transcript, ProviderError>> + Send>>;

/// The task that owns one recognition's audio receiver.
async fn run_recognition(
    job: TranscriptionJob,
    mut audio: mpsc::Receiver<SttInput>,
    transcripts: mpsc::Sender<Result<Transcript, ProviderError>>,
) {
    let mut utterance = UtteranceBuffer::new(max_utterance_samples());
    // Finished utterances waiting for the one in flight; `None` had no audio.
    let mut waiting: VecDeque<Option<Vec<u8>>> = VecDeque::new();
    let mut in_flight: Option<Transcription> = None;
    let mut audio_open = true;
    loop {
        if in_flight.is_none() {
            in_flight = waiting.pop_front().map(|wav| -> Transcription {
                match wav {
                    Some(wav) => Box::pin(job.clone().transcribe(wav)),
                    None => Box::pin(std::future::ready(Ok(Transcript {
                        text: String::new(),
                        is_final: true,
                    }))),
                }
            });
        }
        if !audio_open && in_flight.is_none() {
            return;
        }
        let in_flight_result = async {
            match in_flight.as_mut() {
                Some(transcription) => transcription.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = transcripts.closed() => return,
            result = in_flight_result => {
                in_flight = None;
                if transcripts.send(result).await.is_err() {
                    return;
                }
            }
            input = audio.recv(), if audio_open => match input {
                Some(SttInput::Audio(frame)) => utterance.push(&frame.samples),
                Some(SttInput::EndOfUtterance) => waiting.push_back(utterance.take_wav()),
                None => audio_open = false,
            },
        }
    }
}

fn max_utterance_samples() -> usize {
    (u64::from(MAX_UTTERANCE_MS) * u64::from(SAMPLE_RATE) / 1000) as usize
}

/// What every request of one recognition shares.
#[derive(Debug, Clone)]
struct TranscriptionJob {
    api: HttpApi,
    model: String,
    language: String,
}

impl TranscriptionJob {
    async fn transcribe(self, wav: Vec<u8>) -> Result<Transcript, ProviderError> {
        let started = Instant::now();
        let wav_len = wav.len() as u64;
        // Shared, so a retry re-sends the same bytes without copying them.
        let wav = Bytes::from(wav);
        let build = || {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
            let file = reqwest::multipart::Part::stream_with_length(wav.clone(), wav_len)
                .file_name("utterance.wav")
                .headers(headers);
            let mut form = reqwest::multipart::Form::new()
                .part("file", file)
                .text("model", self.model.clone())
                .text("response_format", "json");
            if !self.language.is_empty() {
                form = form.text("language", self.language.clone());
            }
            self.api.post("/audio/transcriptions").multipart(form)
        };
        // The answer comes only once the whole utterance is transcribed, so
        // only the request timeout bounds the wait for its head.
        let sent = self
            .api
            .send(started, self.api.timeouts().request, build)
            .await?;
        let body = self
            .api
            .read_body(sent.response, started, RESPONSE_LIMIT)
            .await?;
        let answer: TranscriptionResponse = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("the transcription is not the expected JSON ({e})")))?;
        Ok(Transcript {
            text: answer.text.trim().to_owned(),
            is_final: true,
        })
    }
}

#[derive(Debug, Deserialize)]
struct TranscriptionResponse {
    text: String,
}

/// The samples of the utterance being spoken, the newest `max_samples` of
/// them.
#[derive(Debug)]
pub(crate) struct UtteranceBuffer {
    samples: VecDeque<i16>,
    max_samples: usize,
    /// Audio was dropped from this utterance (warned once per utterance).
    overflowed: bool,
}

impl UtteranceBuffer {
    pub(crate) fn new(max_samples: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            max_samples,
            overflowed: false,
        }
    }

    pub(crate) fn push(&mut self, samples: &[i16]) {
        let samples = &samples[samples.len().saturating_sub(self.max_samples)..];
        let excess = (self.samples.len() + samples.len()).saturating_sub(self.max_samples);
        if excess > 0 {
            if !self.overflowed {
                self.overflowed = true;
                tracing::warn!(
                    max_ms = MAX_UTTERANCE_MS,
                    "utterance longer than the transcription cap; dropping its oldest audio"
                );
            }
            self.samples.drain(..excess);
        }
        self.samples.extend(samples);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The utterance as a WAV file (`None` when it holds no audio), leaving
    /// the buffer empty for the next one.
    pub(crate) fn take_wav(&mut self) -> Option<Vec<u8>> {
        self.overflowed = false;
        if self.samples.is_empty() {
            return None;
        }
        let (first, second) = self.samples.as_slices();
        let wav = wav_pcm16_mono(SAMPLE_RATE, &[first, second]);
        self.samples.clear();
        self.samples.shrink_to(KEPT_CAPACITY_SAMPLES);
        Some(wav)
    }
}

/// A canonical 44-byte-header WAV of mono PCM16 at `sample_rate`, from the
/// samples of `parts` in order.
pub(crate) fn wav_pcm16_mono(sample_rate: u32, parts: &[&[i16]]) -> Vec<u8> {
    const HEADER_BYTES: usize = 44;
    const CHANNELS: u16 = 1;
    const BITS_PER_SAMPLE: u16 = 16;
    const BLOCK_ALIGN: u16 = CHANNELS * BITS_PER_SAMPLE / 8;
    let samples: usize = parts.iter().map(|part| part.len()).sum();
    let data_bytes = samples * usize::from(BLOCK_ALIGN);
    // 60 s at 16 kHz is far below the 4 GiB a RIFF size can say.
    let data_len = u32::try_from(data_bytes).unwrap_or(u32::MAX);
    let mut wav = Vec::with_capacity(HEADER_BYTES + data_bytes);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVE");
    wav.extend_from_slice(b"fmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&CHANNELS.to_le_bytes());
    wav.extend_from_slice(&sample_rate.to_le_bytes());
    wav.extend_from_slice(&(sample_rate * u32::from(BLOCK_ALIGN)).to_le_bytes()); // byte rate
    wav.extend_from_slice(&BLOCK_ALIGN.to_le_bytes());
    wav.extend_from_slice(&BITS_PER_SAMPLE.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for part in parts {
        for sample in *part {
            wav.extend_from_slice(&sample.to_le_bytes());
        }
    }
    wav
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([bytes[at], bytes[at + 1]])
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    #[test]
    fn wav_header_describes_mono_pcm16() {
        let wav = wav_pcm16_mono(16_000, &[&[1, -2], &[3]]);
        assert_eq!(wav.len(), 44 + 6);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32_at(&wav, 4), 36 + 6);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&wav, 16), 16);
        assert_eq!(u16_at(&wav, 20), 1);
        assert_eq!(u16_at(&wav, 22), 1);
        assert_eq!(u32_at(&wav, 24), 16_000);
        assert_eq!(u32_at(&wav, 28), 32_000);
        assert_eq!(u16_at(&wav, 32), 2);
        assert_eq!(u16_at(&wav, 34), 16);
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32_at(&wav, 40), 6);
        assert_eq!(&wav[44..], &[1, 0, 0xfe, 0xff, 3, 0]);
    }

    #[test]
    fn a_long_utterance_keeps_its_newest_audio() {
        let mut buffer = UtteranceBuffer::new(5);
        buffer.push(&[1, 2, 3]);
        buffer.push(&[4, 5, 6]);
        assert_eq!(buffer.len(), 5);
        buffer.push(&[7, 8, 9, 10, 11, 12, 13]);
        let wav = buffer.take_wav().expect("audio");
        let samples: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect();
        assert_eq!(samples, [9, 10, 11, 12, 13]);
        assert_eq!(buffer.len(), 0);
        assert_eq!(buffer.take_wav(), None);
    }

    #[test]
    fn the_cap_is_sixty_seconds_of_16_khz() {
        assert_eq!(max_utterance_samples(), 960_000);
    }
}
