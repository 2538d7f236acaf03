//! What spoken callers say, and the microphone that plays it in real time.
//!
//! An [`Utterance`] is 16 kHz speech cut into 20 ms frames: read from a WAV
//! file at any rate, mono or stereo (resampled by `palaver-media`), or, when
//! none is given, a synthetic voiced signal generated in-process. Either way
//! it is trimmed to the frames WebRTC's VAD (the classifier the server runs
//! on every caller frame) calls speech, less the quiet frames at either end
//! (the VAD keeps saying "speech" for ~100 ms after speech stops, its
//! hangover), so "the caller's speech ends" means the last frame of audible
//! speech was sent; a file in which the VAD hears nothing is refused. The
//! server's VAD hangover after that frame is part of what a turn waits.
//!
//! A [`Mic`] is the caller's microphone as a plain state machine: asked for
//! one frame every 20 ms, it answers silence, or the next frame of the
//! utterance once told to speak, and names the frames that start and end the
//! speech. It owns no clock and no socket; the scenario paces it and stamps
//! the events with the time the frame went out.

use std::path::Path;

use palaver_media::AudioFrame;
use palaver_media::frame::{FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
use palaver_media::vad::{VoiceActivity, WebRtcVad};

/// Length of the synthetic utterance: long enough to cut into a reply
/// (the server decides a barge-in 300 ms after onset by default), short
/// enough for quick turns.
pub const SYNTHETIC_SPEECH_MS: u32 = 1_200;

/// A frame quieter than this share of the loudest frame's RMS (-30 dB) is
/// not speech at either end of an utterance.
const QUIET_SHARE: f32 = 0.03;

/// Speech, 16 kHz, from its first to its last frame the VAD calls speech.
#[derive(Debug, Clone)]
pub struct Utterance {
    frames: Vec<AudioFrame>,
    /// Where it came from, for the report.
    source: String,
}

/// Why an utterance could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UtteranceError {
    #[error("cannot read the utterance {path}: {source}")]
    Wav {
        path: String,
        #[source]
        source: palaver_media::wav::WavError,
    },
    #[error("the utterance {0} holds no speech that WebRTC's VAD hears")]
    NoSpeech(String),
}

impl Utterance {
    /// The default: [`SYNTHETIC_SPEECH_MS`] of a synthetic voiced signal.
    pub fn synthetic() -> Self {
        let frames = (0..(SYNTHETIC_SPEECH_MS / FRAME_MS) as usize)
            .map(synthetic_frame)
            .collect();
        Self {
            frames,
            source: format!("synthetic voiced signal, {SYNTHETIC_SPEECH_MS} ms"),
        }
    }

    /// Reads a WAV file (any rate, any channel count) and trims it to its
    /// speech.
    pub fn from_wav(path: &Path) -> Result<Self, UtteranceError> {
        let name = path.display().to_string();
        let frames =
            palaver_media::wav::read_frames_16k(path).map_err(|source| UtteranceError::Wav {
                path: name.clone(),
                source,
            })?;
        Self::from_frames(frames, name)
    }

    /// `frames` trimmed to the first and last the VAD calls speech.
    pub fn from_frames(
        frames: Vec<AudioFrame>,
        source: impl Into<String>,
    ) -> Result<Self, UtteranceError> {
        let source = source.into();
        let mut vad = WebRtcVad::default();
        let speech: Vec<bool> = frames.iter().map(|f| vad.is_speech(f)).collect();
        let (Some(first), Some(last)) = (
            speech.iter().position(|s| *s),
            speech.iter().rposition(|s| *s),
        ) else {
            return Err(UtteranceError::NoSpeech(source));
        };
        let speech = &frames[first..=last];
        // The VAD's hangover (and a quiet lead-in): frames far below the
        // loudest are not speech anyone hears.
        let loudest = speech.iter().map(AudioFrame::rms).fold(0.0, f32::max);
        let audible = |f: &AudioFrame| f.rms() >= loudest * QUIET_SHARE;
        let start = speech.iter().position(audible).unwrap_or(0);
        let end = speech.iter().rposition(audible).unwrap_or(speech.len() - 1);
        let frames = speech[start..=end].to_vec();
        let ms = frames.len() as u32 * FRAME_MS;
        Ok(Self {
            frames,
            source: format!("{source}, {ms} ms of speech"),
        })
    }

    pub fn frames(&self) -> &[AudioFrame] {
        &self.frames
    }

    /// Speech length in ms.
    pub fn duration_ms(&self) -> u64 {
        self.frames.len() as u64 * u64::from(FRAME_MS)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// One sample of a voiced, speech-like signal: a glottal-like harmonic
/// series on a wavering 140 Hz pitch, weighted towards a first formant
/// around 650 Hz, modulated at a syllable rate of 4 Hz. WebRTC's VAD takes
/// it for speech (a pure tone it does not). `n` counts samples from the
/// start.
fn synthetic_sample(n: usize) -> i16 {
    use std::f32::consts::TAU;
    let t = n as f32 / SAMPLE_RATE as f32;
    let f0 = 140.0 + 15.0 * (TAU * 3.0 * t).sin();
    let mut v = 0.0;
    for h in 1..=20 {
        let hz = f0 * h as f32;
        let formant = 1.0 / (1.0 + ((hz - 650.0) / 400.0).powi(2));
        v += (0.3 / h as f32 + formant) * (TAU * hz * t).sin();
    }
    let syllables = 0.6 + 0.4 * (TAU * 4.0 * t).sin();
    (v * syllables * 2500.0).clamp(-32768.0, 32767.0) as i16
}

fn synthetic_frame(index: usize) -> AudioFrame {
    let mut frame = AudioFrame::silence();
    for (i, s) in frame.samples.iter_mut().enumerate() {
        *s = synthetic_sample(index * FRAME_SAMPLES + i);
    }
    frame
}

/// What the microphone sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicFrame {
    Silence,
    /// Frame `n` of the utterance.
    Speech(usize),
}

/// What a frame means for the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicEvent {
    /// The first frame of the utterance: the caller starts speaking.
    Onset,
    /// The last frame of the utterance: the caller's speech ends once it
    /// is sent.
    End,
    /// A one-frame utterance: both at once.
    OnsetAndEnd,
}

/// The caller's microphone: silence, or the utterance once told to speak.
#[derive(Debug, Clone)]
pub struct Mic {
    speech_frames: usize,
    /// The next frame of the utterance, while speaking.
    position: Option<usize>,
}

impl Mic {
    pub fn new(utterance: &Utterance) -> Self {
        Self {
            speech_frames: utterance.frames.len(),
            position: None,
        }
    }

    /// Starts the utterance over at the next frame (ignored while speaking).
    pub fn speak(&mut self) {
        if self.position.is_none() {
            self.position = Some(0);
        }
    }

    pub fn speaking(&self) -> bool {
        self.position.is_some()
    }

    /// The frame for the next 20 ms, and what it means.
    pub fn next_frame(&mut self) -> (MicFrame, Option<MicEvent>) {
        let Some(n) = self.position else {
            return (MicFrame::Silence, None);
        };
        let last = n + 1 >= self.speech_frames;
        self.position = (!last).then_some(n + 1);
        let event = match (n == 0, last) {
            (true, true) => Some(MicEvent::OnsetAndEnd),
            (true, false) => Some(MicEvent::Onset),
            (false, true) => Some(MicEvent::End),
            (false, false) => None,
        };
        (MicFrame::Speech(n), event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use palaver_media::vad::{SpeechDetector, SpeechDetectorConfig, SpeechEvent};

    /// The server's VAD stage: WebRTC's VAD (its default mode) and a
    /// detector with the session's timings (onset after 100 ms of speech,
    /// offset after 200 ms of silence).
    fn server_hears(frames: &[AudioFrame]) -> Vec<SpeechEvent> {
        let mut vad = WebRtcVad::default();
        let mut detector = SpeechDetector::new(SpeechDetectorConfig {
            min_speech_ms: 100,
            silence_ms: 200,
        });
        frames
            .iter()
            .enumerate()
            .filter_map(|(i, f)| detector.on_frame(i as u64 * 20, vad.is_speech(f)))
            .collect()
    }

    #[test]
    fn the_servers_vad_hears_the_synthetic_utterance_as_one_stretch_of_speech() {
        let utterance = Utterance::synthetic();
        assert_eq!(utterance.duration_ms(), u64::from(SYNTHETIC_SPEECH_MS));
        // Half a second of silence, the utterance, a second of silence.
        let mut call = vec![AudioFrame::silence(); 25];
        call.extend_from_slice(utterance.frames());
        call.extend(vec![AudioFrame::silence(); 50]);
        let events = server_hears(&call);
        let [
            SpeechEvent::Started { at_ms: start },
            SpeechEvent::Ended { at_ms: end, .. },
        ] = events[..]
        else {
            panic!("one onset and one offset expected, got {events:?}");
        };
        // Onset at the first speech frame, offset at the end of the last
        // plus libfvad's hangover (it holds "speech" for a few frames).
        assert!((500..=540).contains(&start), "onset at {start} ms");
        let last_end = 500 + u64::from(SYNTHETIC_SPEECH_MS);
        assert!(
            (last_end - 60..=last_end + 160).contains(&end),
            "offset at {end} ms, speech ends at {last_end} ms"
        );
        // The VAD trims nothing of it.
        let trimmed = Utterance::from_frames(utterance.frames().to_vec(), "again").unwrap();
        assert!(trimmed.frames().len() + 2 >= utterance.frames().len());
    }

    #[test]
    fn a_wav_at_another_rate_in_stereo_is_resampled_and_trimmed_to_its_speech() {
        let dir = std::env::temp_dir().join(format!("palaver-utterance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stereo-48k.wav");
        // 0.4 s silence, the synthetic speech upsampled to 48 kHz (each
        // sample three times), 0.4 s silence; both channels the same.
        let speech: Vec<i16> = Utterance::synthetic()
            .frames()
            .iter()
            .flat_map(|f| f.samples)
            .flat_map(|s| [s, s, s])
            .collect();
        let mut mono = vec![0i16; 19_200];
        mono.extend(&speech);
        mono.extend(vec![0i16; 19_200]);
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for s in &mono {
            writer.write_sample(*s).unwrap();
            writer.write_sample(*s).unwrap();
        }
        writer.finalize().unwrap();

        let utterance = Utterance::from_wav(&path).unwrap();
        let ms = utterance.duration_ms();
        // The speech and the resampler's delay (a frame), not the VAD's
        // hangover after it.
        assert!(
            (1_160..=1_240).contains(&ms),
            "{ms} ms of speech kept: {}",
            utterance.source()
        );
        assert!(utterance.source().contains("stereo-48k.wav"));

        // Silence alone is refused, naming the file.
        let silent = dir.join("silent.wav");
        palaver_media::wav::write_mono(&silent, 16_000, &[0; 16_000]).unwrap();
        let err = Utterance::from_wav(&silent).unwrap_err();
        assert!(matches!(err, UtteranceError::NoSpeech(_)), "{err}");
        assert!(err.to_string().contains("silent.wav"), "{err}");
        let err = Utterance::from_wav(&dir.join("missing.wav")).unwrap_err();
        assert!(err.to_string().contains("missing.wav"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_mic_is_silent_until_told_then_plays_the_utterance_once() {
        let mut mic = Mic {
            speech_frames: 3,
            position: None,
        };
        assert_eq!(mic.next_frame(), (MicFrame::Silence, None));
        mic.speak();
        assert!(mic.speaking());
        assert_eq!(
            mic.next_frame(),
            (MicFrame::Speech(0), Some(MicEvent::Onset))
        );
        mic.speak(); // already speaking: no restart
        assert_eq!(mic.next_frame(), (MicFrame::Speech(1), None));
        assert_eq!(mic.next_frame(), (MicFrame::Speech(2), Some(MicEvent::End)));
        assert!(!mic.speaking());
        assert_eq!(mic.next_frame(), (MicFrame::Silence, None));
        let mut short = Mic {
            speech_frames: 1,
            position: None,
        };
        short.speak();
        assert_eq!(
            short.next_frame(),
            (MicFrame::Speech(0), Some(MicEvent::OnsetAndEnd))
        );
    }
}
