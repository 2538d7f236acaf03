//! [`ElevenLabsSpeech`]: the [`SpeechSynthesizer`] port over ElevenLabs'
//! `POST /text-to-speech/{voice_id}/stream/with-timestamps` with
//! `output_format=pcm_24000`.
//!
//! The answer is a stream of JSON objects, one a line:
//! `{"audio_base64": "…", "alignment": {"characters": […],
//! "character_start_times_seconds": […], "character_end_times_seconds": […]}}`.
//! Each line becomes one [`TtsAudio`] as soon as it is complete: its audio
//! decoded to 24 kHz PCM16 (a sample split between two lines is carried
//! over) and its alignment turned into [`WordTiming`]s.
//!
//! ElevenLabs times every character from the start of the whole request;
//! a [`TtsAudio`] times its words from its own first sample, so the audio
//! already emitted is subtracted, counted as the session counts it (the sum
//! of [`TtsAudio::duration_ms`] of the earlier pieces). A word is complete
//! at the whitespace after it, at the last character of the text, or at
//! the end of the stream; a word whose letters span two lines comes out
//! with the later piece.
//!
//! The HTTP side (timeouts, the single retry before any byte, error
//! mapping) is `http_api`'s. Dropping the stream closes the
//! connection.

use base64::Engine as _;
use futures_util::stream;
use palaver_actors::conversation::WordTiming;
use palaver_actors::ports::{BoxStream, ProviderError, SpeechSynthesizer, TtsAudio, TtsRequest};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::http_api::{BodyReader, HttpApi, KeyHeader, ProviderEndpoint, Timeouts, error_message};
use super::openai_tts::PcmAssembler;
use crate::config::ProviderSettings;

/// The `provider` of every error this adapter reports.
pub(crate) const PROVIDER: &str = "elevenlabs";

/// ElevenLabs' own host, where a key is mandatory.
const ELEVENLABS_HOST: &str = "api.elevenlabs.io";

/// The rate of the `pcm_24000` output format.
pub const ELEVENLABS_PCM_SAMPLE_RATE: u32 = 24_000;

/// The output format asked for: raw mono PCM16 at 24 kHz.
const OUTPUT_FORMAT: &str = "pcm_24000";

/// The keys of [`TtsRequest::settings`] passed on as ElevenLabs'
/// `voice_settings`.
const VOICE_SETTINGS: &[&str] = &[
    "stability",
    "similarity_boost",
    "style",
    "use_speaker_boost",
    "speed",
];

/// Longest line accepted. A line carries one piece of audio, base64-encoded
/// (about 64 KiB a second); a provider streaming an endless line would
/// otherwise grow the buffer without bound.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// ElevenLabs' streaming speech API as a [`SpeechSynthesizer`].
#[derive(Debug, Clone)]
pub struct ElevenLabsSpeech {
    api: HttpApi,
    /// e.g. `eleven_flash_v2_5`; [`TtsRequest`] names only the voice.
    model: String,
}

impl ElevenLabsSpeech {
    /// Checks the settings and builds the HTTP client. Fails with
    /// [`ProviderError::Unavailable`] when the base URL is not a URL, or is
    /// ElevenLabs' own and no key is set.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let endpoint = ProviderEndpoint {
            provider: PROVIDER,
            url_setting: "providers.elevenlabs_base_url",
            url: &settings.elevenlabs_base_url,
            api_key: settings.elevenlabs_api_key.as_ref(),
            own_host: ELEVENLABS_HOST,
            key_hint: "ELEVENLABS_API_KEY or providers.elevenlabs_api_key",
        };
        let api = HttpApi::new(
            endpoint,
            KeyHeader::Named("xi-api-key"),
            Timeouts::from_settings(settings),
        )?;
        Ok(Self {
            api,
            model: settings.elevenlabs_model.clone(),
        })
    }
}

impl SpeechSynthesizer for ElevenLabsSpeech {
    /// `request.settings` may hold ElevenLabs' voice settings
    /// (`stability`, `similarity_boost`, `style`, `use_speaker_boost`,
    /// `speed`); other keys are ignored.
    fn synthesize(&self, request: TtsRequest) -> BoxStream<Result<TtsAudio, ProviderError>> {
        let path = format!(
            "/text-to-speech/{}/stream/with-timestamps?output_format={OUTPUT_FORMAT}",
            path_segment(&request.voice_id)
        );
        let pieces = PieceDecoder::for_text(&request.text);
        let body = SpeechRequest {
            voice_settings: voice_settings(&request.settings),
            text: request.text,
            model_id: self.model.clone(),
        };
        let state = SpeechState::Connecting {
            api: self.api.clone(),
            path,
            body,
            pieces,
        };
        Box::pin(stream::unfold(state, next_audio))
    }
}

enum SpeechState {
    Connecting {
        api: HttpApi,
        path: String,
        body: SpeechRequest,
        pieces: PieceDecoder,
    },
    Streaming(SpeechReader),
    Finished,
}

async fn next_audio(
    mut state: SpeechState,
) -> Option<(Result<TtsAudio, ProviderError>, SpeechState)> {
    loop {
        state = match state {
            SpeechState::Connecting {
                api,
                path,
                body,
                pieces,
            } => {
                let started = Instant::now();
                let sent = api
                    .send(started, api.timeouts().first_byte, || {
                        api.post(&path).json(&body)
                    })
                    .await;
                match sent {
                    Ok(sent) => SpeechState::Streaming(SpeechReader {
                        body: api.stream_body(sent, started),
                        lines: LineSplitter::default(),
                        pieces,
                        ended: false,
                        done: false,
                    }),
                    Err(err) => return Some((Err(err), SpeechState::Finished)),
                }
            }
            SpeechState::Streaming(mut reader) => {
                return match reader.next_piece().await {
                    Ok(Some(audio)) => Some((Ok(audio), SpeechState::Streaming(reader))),
                    Ok(None) => None,
                    Err(err) => Some((Err(err), SpeechState::Finished)),
                };
            }
            SpeechState::Finished => return None,
        }
    }
}

/// One synthesis being read: body pieces in, [`TtsAudio`] out.
struct SpeechReader {
    body: BodyReader,
    lines: LineSplitter,
    pieces: PieceDecoder,
    /// The body ended; what is left in `lines` is all there is.
    ended: bool,
    /// The last piece has been given.
    done: bool,
}

impl SpeechReader {
    async fn next_piece(&mut self) -> Result<Option<TtsAudio>, ProviderError> {
        loop {
            let line = if self.ended {
                self.lines.finish()
            } else {
                self.lines.next_line().map_err(protocol)?
            };
            if let Some(line) = line {
                if let Some(audio) = self.pieces.on_line(&line)? {
                    return Ok(Some(audio));
                }
                continue;
            }
            if self.ended {
                if self.done {
                    return Ok(None);
                }
                self.done = true;
                return Ok(self.pieces.finish());
            }
            match self.body.next_chunk().await? {
                Some(bytes) => self.lines.push(&bytes),
                None => self.ended = true,
            }
        }
    }
}

/// Splits a byte stream, cut anywhere, into lines (without their `\n` or
/// `\r\n`).
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for a line break.
    searched: usize,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole line, `None` until its line break has arrived.
    pub(crate) fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Some(at) = self.buffer[self.searched..]
            .iter()
            .position(|&b| b == b'\n')
        else {
            self.searched = self.buffer.len();
            if self.buffer.len() > MAX_LINE_BYTES {
                return Err(format!("a line is longer than {MAX_LINE_BYTES} bytes"));
            }
            return Ok(None);
        };
        let end = self.searched + at;
        let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.searched = 0;
        Ok(Some(line))
    }

    /// What is left once the stream ended: a last line without a line
    /// break (or the next of several whole lines).
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        if self.buffer.contains(&b'\n') {
            return self.next_line().ok().flatten();
        }
        self.searched = 0;
        (!self.buffer.is_empty()).then(|| std::mem::take(&mut self.buffer))
    }
}

/// Turns the stream's lines into [`TtsAudio`] pieces: the sans-IO half of
/// the adapter.
#[derive(Debug, Default)]
pub(crate) struct PieceDecoder {
    pcm: PcmAssembler,
    words: WordAligner,
    /// The sum of [`TtsAudio::duration_ms`] of the pieces emitted so far.
    emitted_ms: u64,
}

impl PieceDecoder {
    /// A decoder for the speech of `text`.
    pub(crate) fn for_text(text: &str) -> Self {
        Self {
            words: WordAligner::for_text(text),
            ..Self::default()
        }
    }

    /// The piece one line makes, `None` when it carries neither audio nor a
    /// finished word (a blank line, an odd byte, a word still being
    /// spoken).
    pub(crate) fn on_line(&mut self, line: &[u8]) -> Result<Option<TtsAudio>, ProviderError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| protocol(format!("a stream line is not JSON ({e})")))?;
        if value.get("audio_base64").is_none()
            && let Some(message) = error_message(&value)
        {
            // An error after a 200 head: the provider failed mid-synthesis.
            return Err(ProviderError::Status {
                provider: PROVIDER,
                status: 200,
                message,
            });
        }
        let line: StreamLine = serde_json::from_value(value)
            .map_err(|e| protocol(format!("a stream line does not fit the protocol ({e})")))?;
        let samples = match line.audio_base64.as_deref() {
            Some(encoded) if !encoded.is_empty() => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| protocol(format!("audio_base64 is not base64 ({e})")))?;
                self.pcm.push(&bytes)
            }
            _ => Vec::new(),
        };
        let ended = match &line.alignment {
            Some(alignment) => self.words.push(alignment)?,
            None => Vec::new(),
        };
        Ok(self.piece(samples, ended))
    }

    /// The last piece once the stream ended: the word still open, if any.
    pub(crate) fn finish(&mut self) -> Option<TtsAudio> {
        if self.pcm.has_carry() {
            // Half a sample cannot be played; the audio before it is fine,
            // so end normally.
            tracing::warn!(
                provider = PROVIDER,
                "speech ended with an odd byte; dropped it"
            );
        }
        let last = self.words.finish().into_iter().collect();
        self.piece(Vec::new(), last)
    }

    fn piece(&mut self, samples: Vec<i16>, ended: Vec<EndedWord>) -> Option<TtsAudio> {
        if samples.is_empty() && ended.is_empty() {
            return None;
        }
        let words = ended
            .into_iter()
            .map(|word| WordTiming {
                word: word.text,
                end_ms: u32::try_from(word.end_ms.saturating_sub(self.emitted_ms))
                    .unwrap_or(u32::MAX),
            })
            .collect();
        let audio = TtsAudio {
            samples,
            sample_rate: ELEVENLABS_PCM_SAMPLE_RATE,
            // Always `Some`, even empty: this provider times its words, so
            // the session must go by them rather than by proportion.
            words: Some(words),
        };
        self.emitted_ms += u64::from(audio.duration_ms());
        Some(audio)
    }
}

/// A word whose last character has been timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndedWord {
    pub text: String,
    /// From the start of the whole request's audio.
    pub end_ms: u64,
}

/// Groups timed characters into words, across lines.
#[derive(Debug, Default)]
pub(crate) struct WordAligner {
    /// The characters of the word being spoken.
    word: String,
    /// The end of its last character so far, from the start of the request.
    word_end_ms: u64,
    /// Characters aligned so far.
    characters_seen: usize,
    /// Characters of the text up to its last non-whitespace one (0 when not
    /// known): once that many are aligned, the last word is complete.
    text_characters: usize,
}

impl WordAligner {
    /// An aligner for the speech of `text`.
    pub(crate) fn for_text(text: &str) -> Self {
        Self {
            text_characters: text.trim_end().chars().count(),
            ..Self::default()
        }
    }

    /// The words that `alignment` finishes (those followed by whitespace).
    pub(crate) fn push(&mut self, alignment: &Alignment) -> Result<Vec<EndedWord>, ProviderError> {
        let count = alignment.characters.len();
        if alignment.character_start_times_seconds.len() != count
            || alignment.character_end_times_seconds.len() != count
        {
            return Err(protocol(format!(
                "the alignment has {count} characters but {} start and {} end times",
                alignment.character_start_times_seconds.len(),
                alignment.character_end_times_seconds.len()
            )));
        }
        let mut ended = Vec::new();
        for (character, &end_s) in alignment
            .characters
            .iter()
            .zip(&alignment.character_end_times_seconds)
        {
            if character.chars().all(char::is_whitespace) {
                ended.extend(self.take_word());
            } else {
                self.word.push_str(character);
                self.word_end_ms = seconds_to_ms(end_s);
            }
        }
        self.characters_seen += count;
        if self.text_characters > 0 && self.characters_seen >= self.text_characters {
            // The text's last word: no whitespace will follow to end it.
            ended.extend(self.take_word());
        }
        Ok(ended)
    }

    /// The last word, once no more characters will come.
    pub(crate) fn finish(&mut self) -> Option<EndedWord> {
        self.take_word()
    }

    fn take_word(&mut self) -> Option<EndedWord> {
        (!self.word.is_empty()).then(|| EndedWord {
            text: std::mem::take(&mut self.word),
            end_ms: self.word_end_ms,
        })
    }
}

fn seconds_to_ms(seconds: f64) -> u64 {
    // `as` saturates: negative and NaN become 0.
    (seconds * 1000.0).round() as u64
}

/// `value` as one URL path segment: a voice id is alphanumeric, but one
/// from a client must not be able to change the path.
fn path_segment(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The voice settings of `settings` that ElevenLabs knows, `None` when it
/// has none.
fn voice_settings(
    settings: &serde_json::Value,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let chosen: serde_json::Map<String, serde_json::Value> = VOICE_SETTINGS
        .iter()
        .filter_map(|&key| {
            let value = settings.get(key).filter(|value| !value.is_null())?;
            Some((key.to_owned(), value.clone()))
        })
        .collect();
    (!chosen.is_empty()).then_some(chosen)
}

fn protocol(message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol {
        provider: PROVIDER,
        message: message.into(),
    }
}

#[derive(Debug, Serialize)]
struct SpeechRequest {
    text: String,
    model_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    voice_settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One line of the stream.
#[derive(Debug, Deserialize)]
struct StreamLine {
    #[serde(default)]
    audio_base64: Option<String>,
    /// Of the text as sent (ElevenLabs also sends a
    /// `normalized_alignment`, of the text as spoken, which is ignored).
    #[serde(default)]
    alignment: Option<Alignment>,
}

/// The timing of each character of a line's audio.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Alignment {
    pub characters: Vec<String>,
    pub character_start_times_seconds: Vec<f64>,
    pub character_end_times_seconds: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An alignment of `text`, character `i` spoken from `starts[i]` for
    /// 50 ms.
    fn alignment(text: &str, first_start_s: f64) -> Alignment {
        let characters: Vec<String> = text.chars().map(String::from).collect();
        let starts: Vec<f64> = (0..characters.len())
            .map(|i| first_start_s + 0.05 * i as f64)
            .collect();
        let ends = starts.iter().map(|s| s + 0.05).collect();
        Alignment {
            characters,
            character_start_times_seconds: starts,
            character_end_times_seconds: ends,
        }
    }

    fn ended(text: &str, end_ms: u64) -> EndedWord {
        EndedWord {
            text: text.to_owned(),
            end_ms,
        }
    }

    #[test]
    fn characters_become_words_ending_at_their_last_character() {
        let mut words = WordAligner::default();

        let first = words.push(&alignment("Hi, you", 0.0)).expect("aligned");

        // "Hi," ends with the comma: the third character, 0.10–0.15 s.
        assert_eq!(first, vec![ended("Hi,", 150)]);
        assert_eq!(words.finish(), Some(ended("you", 350)));
        assert_eq!(words.finish(), None);
    }

    #[test]
    fn a_word_split_between_lines_ends_with_the_later_one() {
        let mut words = WordAligner::default();

        let first = words.push(&alignment("Good mor", 0.0)).expect("aligned");
        let second = words.push(&alignment("ning  all", 0.4)).expect("aligned");

        assert_eq!(first, vec![ended("Good", 200)]);
        assert_eq!(second, vec![ended("morning", 600)]);
        assert_eq!(words.finish(), Some(ended("all", 850)));
    }

    #[test]
    fn the_last_word_of_the_text_ends_with_its_last_character() {
        let mut words = WordAligner::for_text("Good morning. \n");

        let first = words.push(&alignment("Good mor", 0.0)).expect("aligned");
        let second = words.push(&alignment("ning.", 0.4)).expect("aligned");

        assert_eq!(first, vec![ended("Good", 200)]);
        assert_eq!(second, vec![ended("morning.", 650)]);
        assert_eq!(words.finish(), None);
    }

    #[test]
    fn mismatched_alignment_arrays_are_a_protocol_error() {
        let mut broken = alignment("abc", 0.0);
        broken.character_end_times_seconds.pop();

        let err = WordAligner::default().push(&broken).expect_err("mismatch");

        assert_eq!(err.code(), "provider_protocol");
    }

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        let stream = b"{\"a\":1}\n\r\n{\"b\":\"x\\ny\"}\r\n{\"c\":3}";
        for piece in 1..stream.len() {
            let mut splitter = LineSplitter::default();
            let mut lines = Vec::new();
            for chunk in stream.chunks(piece) {
                splitter.push(chunk);
                while let Some(line) = splitter.next_line().expect("short lines") {
                    lines.push(line);
                }
            }
            while let Some(line) = splitter.finish() {
                lines.push(line);
            }
            let expected: Vec<&[u8]> = vec![b"{\"a\":1}", b"", b"{\"b\":\"x\\ny\"}", b"{\"c\":3}"];
            assert_eq!(lines, expected, "pieces of {piece}");
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut splitter = LineSplitter::default();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut refused = false;
        for _ in 0..10 {
            splitter.push(&chunk);
            if splitter.next_line().is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    fn line(samples: &[i16], alignment: Option<&Alignment>) -> Vec<u8> {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let alignment = alignment.map(|a| {
            json!({
                "characters": a.characters,
                "character_start_times_seconds": a.character_start_times_seconds,
                "character_end_times_seconds": a.character_end_times_seconds,
            })
        });
        json!({
            "audio_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "alignment": alignment,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn word_times_are_relative_to_their_own_piece() {
        let mut pieces = PieceDecoder::default();
        // 300 ms of audio, then 300 ms more.
        let first_audio = vec![7i16; 7_200];
        let second_audio = vec![-7i16; 7_200];

        let first = pieces
            .on_line(&line(&first_audio, Some(&alignment("One two", 0.0))))
            .expect("decoded")
            .expect("a piece");
        let second = pieces
            .on_line(&line(&second_audio, Some(&alignment(" three", 0.3))))
            .expect("decoded")
            .expect("a piece");
        let last = pieces.finish().expect("the open word");

        assert_eq!(first.samples, first_audio);
        assert_eq!(first.duration_ms(), 300);
        let timing = |word: &str, end_ms| WordTiming {
            word: word.to_owned(),
            end_ms,
        };
        assert_eq!(first.words, Some(vec![timing("One", 150)]));
        // "two" ended at 350 ms, in the first piece's time: the space that
        // ends it came with the second piece, which started at 300 ms.
        assert_eq!(second.words, Some(vec![timing("two", 50)]));
        assert!(last.samples.is_empty());
        // "three" ended 600 ms into the request, when all 600 ms were out:
        // with no text to tell, only the end of the stream ends it.
        assert_eq!(last.words, Some(vec![timing("three", 0)]));
    }

    #[test]
    fn a_line_without_alignment_still_reports_timed_words() {
        let mut pieces = PieceDecoder::default();

        let piece = pieces
            .on_line(&line(&[1, 2, 3], None))
            .expect("decoded")
            .expect("a piece");

        assert_eq!(piece.samples, vec![1, 2, 3]);
        assert_eq!(piece.words, Some(Vec::new()));
        assert_eq!(pieces.finish(), None);
    }

    #[test]
    fn an_error_line_and_bad_base64_are_reported() {
        let mut pieces = PieceDecoder::default();

        let error =
            pieces.on_line(br#"{"detail":{"status":"quota_exceeded","message":"Quota exceeded"}}"#);
        let garbage = pieces.on_line(br#"{"audio_base64":"***"}"#);

        assert_eq!(
            error,
            Err(ProviderError::Status {
                provider: PROVIDER,
                status: 200,
                message: "Quota exceeded".to_owned(),
            })
        );
        assert!(matches!(garbage, Err(ProviderError::Protocol { .. })));
    }

    #[test]
    fn only_elevenlabs_voice_settings_are_sent() {
        let settings = json!({"speed": 1.1, "stability": 0.4, "voice": "x", "style": null});

        let chosen = voice_settings(&settings).expect("some");

        assert_eq!(
            serde_json::Value::Object(chosen),
            json!({"speed": 1.1, "stability": 0.4})
        );
        assert_eq!(voice_settings(&json!({"pitch": 2})), None);
        assert_eq!(voice_settings(&serde_json::Value::Null), None);
    }

    #[test]
    fn voice_ids_cannot_change_the_path() {
        assert_eq!(path_segment("21m00Tcm4TlvDq8ikWAM"), "21m00Tcm4TlvDq8ikWAM");
        assert_eq!(path_segment("../admin?x"), "..%2Fadmin%3Fx");
    }
}
