//! Voice activity: is there speech in this frame, and when did a stretch of
//! speech start and end.
//!
//! This module owns the per-frame classifier interface ([`VoiceActivity`]),
//! its WebRTC implementation ([`WebRtcVad`], libfvad through `webrtc-vad`),
//! and the [`SpeechDetector`] state machine that turns per-frame decisions
//! into onset and offset events. The detector is sans-IO: the time of each
//! frame is an input, it never reads a clock. Turn-taking policy (when the
//! user has finished their turn, barge-in) belongs to the caller.

use crate::frame::{AudioFrame, FRAME_MS};

/// A per-frame speech classifier. Implementations keep their own state
/// across frames (WebRTC's VAD adapts its noise model; a neural VAD keeps a
/// recurrent state), hence `&mut self`.
pub trait VoiceActivity {
    /// Probability, 0.0 to 1.0, that `frame` holds speech. Classifiers with
    /// only a yes/no answer return 0.0 or 1.0.
    fn speech_probability(&mut self, frame: &AudioFrame) -> f32;

    /// The classifier's decision for `frame`. The default thresholds the
    /// probability at 0.5; a neural VAD with its own tuned threshold
    /// overrides this.
    fn is_speech(&mut self, frame: &AudioFrame) -> bool {
        self.speech_probability(frame) >= 0.5
    }

    /// Forgets everything learnt from earlier frames.
    fn reset(&mut self);
}

/// How eagerly WebRTC's VAD calls a frame speech. Higher modes flag fewer
/// frames as speech (fewer false alarms in noise, more missed speech).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Aggressiveness {
    /// Mode 0: flags the most speech.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2: a good default for conversational audio.
    #[default]
    Aggressive,
    /// Mode 3: flags the least speech; for noisy callers.
    VeryAggressive,
}

impl Aggressiveness {
    fn mode(self) -> webrtc_vad::VadMode {
        match self {
            Self::Quality => webrtc_vad::VadMode::Quality,
            Self::LowBitrate => webrtc_vad::VadMode::LowBitrate,
            Self::Aggressive => webrtc_vad::VadMode::Aggressive,
            Self::VeryAggressive => webrtc_vad::VadMode::VeryAggressive,
        }
    }
}

/// WebRTC's GMM voice activity detector at 16 kHz on 20 ms frames.
pub struct WebRtcVad {
    inner: webrtc_vad::Vad,
    aggressiveness: Aggressiveness,
}

// SAFETY: `webrtc_vad::Vad` holds a raw pointer to a heap-allocated libfvad
// instance, which makes it `!Send` by default. libfvad keeps all state in
// that instance (no globals, no thread-locals: see fvad.c and vad_core.c),
// and `WebRtcVad` owns it exclusively and only touches it through `&mut
// self`, so moving it to another thread is sound. It is deliberately not
// `Sync`. Sessions need `Send` to run their media on any worker thread.
#[allow(unsafe_code)]
unsafe impl Send for WebRtcVad {}

impl std::fmt::Debug for WebRtcVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcVad")
            .field("aggressiveness", &self.aggressiveness)
            .finish()
    }
}

impl Default for WebRtcVad {
    fn default() -> Self {
        Self::new(Aggressiveness::default())
    }
}

impl WebRtcVad {
    pub fn new(aggressiveness: Aggressiveness) -> Self {
        Self {
            inner: webrtc_vad::Vad::new_with_rate_and_mode(
                webrtc_vad::SampleRate::Rate16kHz,
                aggressiveness.mode(),
            ),
            aggressiveness,
        }
    }

    pub fn aggressiveness(&self) -> Aggressiveness {
        self.aggressiveness
    }
}

impl VoiceActivity for WebRtcVad {
    fn speech_probability(&mut self, frame: &AudioFrame) -> f32 {
        if self.is_speech(frame) { 1.0 } else { 0.0 }
    }

    fn is_speech(&mut self, frame: &AudioFrame) -> bool {
        // libfvad only fails on a length other than 10/20/30 ms; a frame is
        // always 20 ms at 16 kHz, so the error arm is unreachable.
        self.inner.is_voice_segment(&frame.samples).unwrap_or(false)
    }

    fn reset(&mut self) {
        // fvad_reset also resets the rate and mode to libfvad's defaults.
        self.inner.reset();
        self.inner
            .set_sample_rate(webrtc_vad::SampleRate::Rate16kHz);
        self.inner.set_mode(self.aggressiveness.mode());
    }
}

/// Timing rules for [`SpeechDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechDetectorConfig {
    /// Unbroken speech needed before onset is reported; shorter bursts
    /// (clicks, a cough, WebRTC VAD's ~80 ms of false alarms when a new
    /// noise floor starts) are ignored.
    pub min_speech_ms: u32,
    /// Silence needed after speech before offset is reported.
    pub silence_ms: u32,
}

impl Default for SpeechDetectorConfig {
    fn default() -> Self {
        Self {
            min_speech_ms: 100,
            silence_ms: 500,
        }
    }
}

/// A change reported by [`SpeechDetector`]. Times are those given to
/// [`SpeechDetector::on_frame`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpeechEvent {
    /// Speech has lasted `min_speech_ms`; it began at `at_ms` (the start of
    /// the first speech frame of the run, earlier than now).
    Started { at_ms: u64 },
    /// Silence has lasted `silence_ms`; speech ended at `at_ms` (the end of
    /// the last speech frame) after `speech_ms` from its start.
    Ended { at_ms: u64, speech_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DetectorState {
    /// No speech; `run_start` is set while a run of speech frames is
    /// building towards onset.
    Silent { run_start: Option<u64> },
    /// In speech since `started`; `last_speech_end` is the end of the most
    /// recent speech frame.
    Speaking { started: u64, last_speech_end: u64 },
}

/// Turns per-frame speech decisions into onset and offset events. Feed it
/// every frame in order, each with the time its audio starts.
#[derive(Debug, Clone)]
pub struct SpeechDetector {
    config: SpeechDetectorConfig,
    state: DetectorState,
}

impl SpeechDetector {
    pub fn new(config: SpeechDetectorConfig) -> Self {
        Self {
            config,
            state: DetectorState::Silent { run_start: None },
        }
    }

    /// Whether speech has started and not yet ended.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, DetectorState::Speaking { .. })
    }

    /// Takes the decision for the frame whose audio starts at `at_ms` (and
    /// lasts [`FRAME_MS`]).
    pub fn on_frame(&mut self, at_ms: u64, is_speech: bool) -> Option<SpeechEvent> {
        let frame_end = at_ms + u64::from(FRAME_MS);
        match self.state {
            DetectorState::Silent { run_start } => {
                if !is_speech {
                    self.state = DetectorState::Silent { run_start: None };
                    return None;
                }
                let start = run_start.unwrap_or(at_ms);
                if frame_end - start >= u64::from(self.config.min_speech_ms) {
                    self.state = DetectorState::Speaking {
                        started: start,
                        last_speech_end: frame_end,
                    };
                    Some(SpeechEvent::Started { at_ms: start })
                } else {
                    self.state = DetectorState::Silent {
                        run_start: Some(start),
                    };
                    None
                }
            }
            DetectorState::Speaking {
                started,
                last_speech_end,
            } => {
                if is_speech {
                    self.state = DetectorState::Speaking {
                        started,
                        last_speech_end: frame_end,
                    };
                    return None;
                }
                if frame_end.saturating_sub(last_speech_end) >= u64::from(self.config.silence_ms) {
                    self.state = DetectorState::Silent { run_start: None };
                    Some(SpeechEvent::Ended {
                        at_ms: last_speech_end,
                        speech_ms: last_speech_end - started,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Back to silence without reporting an offset.
    pub fn reset(&mut self) {
        self.state = DetectorState::Silent { run_start: None };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::{FRAME_SAMPLES, SAMPLE_RATE};

    /// A voiced, speech-like signal: a 140 Hz glottal-ish harmonic series
    /// with a formant-like tilt, amplitude-modulated at a syllable rate of
    /// 4 Hz. `n` counts samples from the start of the stream.
    pub(crate) fn speech_like(n: usize) -> i16 {
        let t = n as f32 / SAMPLE_RATE as f32;
        let f0 = 140.0 + 15.0 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
        let mut v = 0.0;
        for h in 1..=20 {
            let hz = f0 * h as f32;
            // Emphasise the first formant region around 500-800 Hz.
            let formant = 1.0 / (1.0 + ((hz - 650.0) / 400.0).powi(2));
            v += (0.3 / h as f32 + formant) * (2.0 * std::f32::consts::PI * hz * t).sin();
        }
        let syllables = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
        (v * syllables * 2500.0).clamp(-32768.0, 32767.0) as i16
    }

    pub(crate) fn speech_frame(index: usize) -> AudioFrame {
        let mut frame = AudioFrame::silence();
        for (i, s) in frame.samples.iter_mut().enumerate() {
            *s = speech_like(index * FRAME_SAMPLES + i);
        }
        frame
    }

    /// Deterministic low-level white noise (xorshift), `amplitude` of full
    /// scale.
    pub(crate) fn noise_frame(seed: &mut u32, amplitude: f32) -> AudioFrame {
        let mut frame = AudioFrame::silence();
        for s in frame.samples.iter_mut() {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 17;
            *seed ^= *seed << 5;
            let unit = (*seed as f32 / u32::MAX as f32) * 2.0 - 1.0;
            *s = (unit * amplitude * 32767.0) as i16;
        }
        frame
    }

    #[test]
    fn webrtc_vad_hears_the_speech_like_signal_and_not_silence_or_faint_noise() {
        let mut vad = WebRtcVad::new(Aggressiveness::Aggressive);
        let speech = (0..50).filter(|&i| vad.is_speech(&speech_frame(i))).count();
        assert!(speech >= 45, "only {speech}/50 speech frames flagged");

        let mut vad = WebRtcVad::default();
        let silence = AudioFrame::silence();
        assert!((0..50).all(|_| !vad.is_speech(&silence)));
        assert_eq!(vad.speech_probability(&silence), 0.0);
        // Steady noise up to -30 dBFS is not speech once the noise model has
        // adapted; libfvad flags the first ~4 frames of a new noise floor
        // (min_speech_ms in the detector absorbs that blip).
        let mut seed = 7;
        for amplitude in [0.001, 0.03] {
            let mut vad = WebRtcVad::default();
            let warm_up = (0..10)
                .filter(|_| vad.is_speech(&noise_frame(&mut seed, amplitude)))
                .count();
            assert!(warm_up <= 5, "{warm_up}/10 warm-up frames flagged");
            let noisy = (0..100)
                .filter(|_| vad.is_speech(&noise_frame(&mut seed, amplitude)))
                .count();
            assert_eq!(noisy, 0, "steady noise at {amplitude} of full scale");
        }
    }

    #[test]
    fn reset_keeps_the_configured_mode() {
        let mut vad = WebRtcVad::new(Aggressiveness::VeryAggressive);
        vad.reset();
        assert_eq!(vad.aggressiveness(), Aggressiveness::VeryAggressive);
        assert!(vad.is_speech(&speech_frame(3)) || vad.is_speech(&speech_frame(4)));
    }

    #[test]
    fn webrtc_vad_can_move_to_another_thread() {
        let mut vad = WebRtcVad::default();
        let handle = std::thread::spawn(move || vad.is_speech(&AudioFrame::silence()));
        assert!(!handle.join().unwrap());
    }

    fn run(detector: &mut SpeechDetector, pattern: &str, start_ms: u64) -> Vec<SpeechEvent> {
        pattern
            .bytes()
            .enumerate()
            .filter_map(|(i, c)| detector.on_frame(start_ms + 20 * i as u64, c == b'#'))
            .collect()
    }

    #[test]
    fn onset_after_min_speech_and_offset_after_silence() {
        let mut detector = SpeechDetector::new(SpeechDetectorConfig {
            min_speech_ms: 60,
            silence_ms: 100,
        });
        // Frames: 2 speech (too short), 1 silent, then 3 speech -> onset at
        // the start of that run (frame 3, 1000 + 60 ms).
        let events = run(&mut detector, "##.###", 1000);
        assert_eq!(events, vec![SpeechEvent::Started { at_ms: 1060 }]);
        assert!(detector.in_speech());
        // Short pauses inside speech do not end it; 5 silent frames do.
        let events = run(&mut detector, "##..###.....", 1120);
        assert_eq!(
            events,
            vec![SpeechEvent::Ended {
                at_ms: 1120 + 7 * 20,
                speech_ms: 1260 - 1060
            }]
        );
        assert!(!detector.in_speech());
    }

    #[test]
    fn a_gap_in_timestamps_counts_as_silence() {
        let mut detector = SpeechDetector::new(SpeechDetectorConfig {
            min_speech_ms: 20,
            silence_ms: 200,
        });
        assert_eq!(
            detector.on_frame(0, true),
            Some(SpeechEvent::Started { at_ms: 0 })
        );
        // No frames for a while (lost stream), then one silent frame.
        assert_eq!(
            detector.on_frame(500, false),
            Some(SpeechEvent::Ended {
                at_ms: 20,
                speech_ms: 20
            })
        );
        detector.reset();
        assert!(!detector.in_speech());
    }

    #[test]
    fn the_detector_on_the_webrtc_vad_finds_the_speech_burst() {
        let mut vad = WebRtcVad::default();
        let mut detector = SpeechDetector::new(SpeechDetectorConfig::default());
        let mut events = Vec::new();
        for i in 0..150usize {
            // 1 s silence, 1 s speech, 1 s silence.
            let frame = if (50..100).contains(&i) {
                speech_frame(i)
            } else {
                AudioFrame::silence()
            };
            let speech = vad.is_speech(&frame);
            events.extend(detector.on_frame(i as u64 * 20, speech));
        }
        let [
            SpeechEvent::Started { at_ms: start },
            SpeechEvent::Ended { at_ms: end, .. },
        ] = events[..]
        else {
            panic!("expected onset then offset, got {events:?}");
        };
        assert!((1000..=1060).contains(&start), "onset at {start}");
        // libfvad holds "speech" for a few frames after it stops (hangover).
        assert!((1960..=2200).contains(&end), "offset at {end}");
    }
}
