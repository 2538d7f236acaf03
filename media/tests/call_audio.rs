//! Quality of [`CallAudio`]'s 16 kHz codec path against the 48 kHz path it
//! replaced (16 -> 48 kHz resampler, fullband Opus, 48 kHz decoder, 48 ->
//! 16 kHz resampler), on real synthesised speech: espeak-ng says a phrase,
//! each path codes it, and the decoded audio is compared with what went in
//! after aligning the codec delay.
//!
//! Two measures, both over the frames with speech in them: segmental SNR
//! (how closely the waveform survives) and log-spectral distance over
//! 0-6.5 kHz (how closely the spectrum does; 6.5 kHz is where the old
//! path's resampler stopped passing audio, so neither path is judged on a
//! band the other lacks). Neither is a perceptual score; `BENCHMARKS.md`
//! has PESQ figures from a one-off run.
//!
//! These tests need `espeak-ng` (installed by `make test`); without it they
//! fail and say so, rather than pass having checked nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use palaver_media::codec::{
    EncoderConfig, MAX_PACKET_BYTES, OPUS_FRAME_SAMPLES, OpusDecoder, OpusEncoder, OpusMode,
};
use palaver_media::resample::{Downsampler48To16, Upsampler16To48};
use palaver_media::rtc::CallAudio;
use palaver_media::vad::{SpeechDetector, SpeechDetectorConfig, SpeechEvent, WebRtcVad};
use palaver_media::{AudioFrame, FRAME_SAMPLES, VoiceActivity, wav};

const PHRASE: &str = "Hello, I would like to book a table for two tomorrow evening. \
                      Could you tell me what time the kitchen closes?";
/// Silence before and after the phrase, in frames.
const PAD_FRAMES: usize = 25;

/// The phrase as 16 kHz frames, with half a second of silence either side.
fn phrase_frames() -> Vec<AudioFrame> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phrase.wav");
    espeak(&path);
    let pcm = wav::read_mono(&path).unwrap();
    let speech = wav::to_frames_16k(&pcm).unwrap();
    let pad = std::iter::repeat_n(AudioFrame::silence(), PAD_FRAMES);
    pad.clone().chain(speech).chain(pad).collect()
}

fn espeak(path: &Path) {
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(path)
        .arg(PHRASE)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "espeak-ng could not be run ({e}): install it (apt-get install espeak-ng; \
                 `make test` does) to run the codec quality tests"
            )
        });
    assert!(status.success(), "espeak-ng failed: {status}");
}

fn samples(frames: &[AudioFrame]) -> Vec<i16> {
    frames.iter().flat_map(|f| f.samples).collect()
}

/// The lag (in samples, 0..max_lag) at which `decoded` best matches
/// `reference`: the codec path's delay. Two seconds from the middle of the
/// phrase are enough to find it.
fn delay(reference: &[i16], decoded: &[i16], max_lag: usize) -> usize {
    let n = reference.len().min(decoded.len()) - max_lag;
    let window = (n / 2)..(n / 2 + 32_000).min(n);
    (0..max_lag)
        .max_by_key(|&lag| {
            let dot: i64 = reference[window.clone()]
                .iter()
                .zip(&decoded[window.start + lag..window.end + lag])
                .map(|(&a, &b)| i64::from(a) * i64::from(b))
                .sum();
            dot
        })
        .unwrap()
}

/// How closely a path's output matches its input.
#[derive(Debug, Clone, Copy)]
struct Quality {
    delay_ms: f64,
    /// Mean over speech frames of each frame's SNR (clamped to -10..35 dB).
    seg_snr_db: f64,
    /// Mean over speech frames of the RMS difference of the two log power
    /// spectra over 0-6.5 kHz, with a floor 60 dB under the frame's peak.
    lsd_db: f64,
}

fn quality(reference: &[i16], decoded: &[i16]) -> Quality {
    let lag = delay(reference, decoded, 400);
    let decoded = &decoded[lag..];
    let n = reference.len().min(decoded.len());
    let dft = Dft::new(FRAME_SAMPLES);
    let (mut snr_sum, mut lsd_sum, mut count) = (0.0, 0.0, 0);
    for (a, b) in reference[..n]
        .chunks_exact(FRAME_SAMPLES)
        .zip(decoded[..n].chunks_exact(FRAME_SAMPLES))
    {
        let energy: f64 = a.iter().map(|&s| f64::from(s).powi(2)).sum();
        if (energy / FRAME_SAMPLES as f64).sqrt() < 300.0 {
            continue; // not speech
        }
        let noise: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        snr_sum += (10.0 * (energy / noise.max(1e-9)).log10()).clamp(-10.0, 35.0);
        let (pa, pb) = (dft.log_power(a), dft.log_power(b));
        let floor = pa.iter().copied().fold(f64::MIN, f64::max) - 60.0;
        let sq: f64 = pa
            .iter()
            .zip(&pb)
            .map(|(&x, &y)| (x.max(floor) - y.max(floor)).powi(2))
            .sum();
        lsd_sum += (sq / pa.len() as f64).sqrt();
        count += 1;
    }
    assert!(count > 50, "only {count} speech frames");
    Quality {
        delay_ms: lag as f64 / 16.0,
        seg_snr_db: snr_sum / f64::from(count),
        lsd_db: lsd_sum / f64::from(count),
    }
}

/// A plain DFT of Hann-windowed frames, bins 0..=6.5 kHz (50 Hz apart).
struct Dft {
    window: Vec<f64>,
    cos: Vec<f64>,
    sin: Vec<f64>,
    bins: usize,
}

impl Dft {
    fn new(n: usize) -> Self {
        let angle = |i: usize| 2.0 * std::f64::consts::PI * i as f64 / n as f64;
        Self {
            window: (0..n).map(|i| 0.5 - 0.5 * angle(i).cos()).collect(),
            cos: (0..n).map(|i| angle(i).cos()).collect(),
            sin: (0..n).map(|i| angle(i).sin()).collect(),
            bins: 6_500 / 50 + 1,
        }
    }

    fn log_power(&self, frame: &[i16]) -> Vec<f64> {
        let n = frame.len();
        (0..self.bins)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, &s) in frame.iter().enumerate() {
                    let x = f64::from(s) * self.window[i];
                    re += x * self.cos[k * i % n];
                    im -= x * self.sin[k * i % n];
                }
                10.0 * (re * re + im * im + 1e-9).log10()
            })
            .collect()
    }
}

fn config(mode: OpusMode, complexity: u8) -> EncoderConfig {
    EncoderConfig {
        mode,
        complexity,
        ..EncoderConfig::default()
    }
}

/// The assistant's voice through `CallAudio`, decoded at 16 kHz.
fn through_call_audio(frames: &[AudioFrame], encoder: EncoderConfig) -> Vec<i16> {
    let mut call = CallAudio::new(encoder).unwrap();
    let mut listener = OpusDecoder::at_16k().unwrap();
    let mut out = vec![0i16; frames.len() * FRAME_SAMPLES];
    for (frame, pcm) in frames.iter().zip(out.chunks_exact_mut(FRAME_SAMPLES)) {
        let packet = call.encode(frame).unwrap();
        listener.decode(packet, pcm.try_into().unwrap()).unwrap();
    }
    out
}

/// The same through the 48 kHz path `CallAudio` used before.
fn through_48k_path(frames: &[AudioFrame], encoder: EncoderConfig) -> Vec<i16> {
    let mut up = Upsampler16To48::upsample_16k_to_48k().unwrap();
    let mut encoder = OpusEncoder::new(encoder).unwrap();
    let mut listener = OpusDecoder::at_16k().unwrap();
    let mut pcm48 = [0i16; OPUS_FRAME_SAMPLES];
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let mut out = vec![0i16; frames.len() * FRAME_SAMPLES];
    for (frame, pcm) in frames.iter().zip(out.chunks_exact_mut(FRAME_SAMPLES)) {
        up.process(&frame.samples, &mut pcm48);
        let len = encoder.encode(&pcm48, &mut packet).unwrap();
        listener
            .decode(&packet[..len], pcm.try_into().unwrap())
            .unwrap();
    }
    out
}

#[test]
fn the_assistants_voice_codes_at_least_as_well_as_through_the_48k_path() {
    let frames = phrase_frames();
    let source = samples(&frames);
    let old = quality(
        &source,
        &through_48k_path(&frames, EncoderConfig::default()),
    );
    let silk = quality(
        &source,
        &through_call_audio(&frames, EncoderConfig::default()),
    );
    let celt = quality(
        &source,
        &through_call_audio(&frames, config(OpusMode::LowDelay, 0)),
    );
    eprintln!("48 kHz path, complexity 5: {old:?}");
    eprintln!("CallAudio, VOIP (SILK), complexity 5: {silk:?}");
    eprintln!("CallAudio, low delay (CELT), complexity 0: {celt:?}");

    // SILK at its own rate: the waveform and the spectrum at least as
    // close as before (measured: +0.6 dB SNR, -0.3 dB LSD), with less delay.
    assert!(
        silk.seg_snr_db >= old.seg_snr_db - 0.5,
        "{silk:?} against {old:?}"
    );
    assert!(silk.lsd_db <= old.lsd_db + 0.3, "{silk:?} against {old:?}");
    assert!(silk.delay_ms < old.delay_ms, "{silk:?} against {old:?}");
    // CELT codes the waveform itself: far closer (measured +7 dB), and the
    // spectrum about as close; 2.5 ms of delay.
    assert!(
        celt.seg_snr_db >= old.seg_snr_db + 3.0,
        "{celt:?} against {old:?}"
    );
    assert!(celt.lsd_db <= old.lsd_db + 0.5, "{celt:?} against {old:?}");
    assert!(celt.delay_ms <= 3.0, "{celt:?}");
}

#[test]
fn the_callers_voice_decodes_as_well_at_16k_and_the_vad_finds_the_phrase() {
    let frames = phrase_frames();
    let source = samples(&frames);
    // The caller sends what a browser does: 48 kHz fullband Opus.
    let mut up = Upsampler16To48::upsample_16k_to_48k().unwrap();
    let mut caller = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let mut pcm48 = [0i16; OPUS_FRAME_SAMPLES];
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|frame| {
            up.process(&frame.samples, &mut pcm48);
            let len = caller.encode(&pcm48, &mut packet).unwrap();
            packet[..len].to_vec()
        })
        .collect();

    let mut decoder = OpusDecoder::new().unwrap();
    let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
    let mut old = Vec::with_capacity(source.len());
    let mut frame = AudioFrame::silence();
    for p in &packets {
        decoder.decode(p, &mut pcm48).unwrap();
        down.process(&pcm48, &mut frame.samples);
        old.extend_from_slice(&frame.samples);
    }

    let mut call = CallAudio::new(EncoderConfig::default()).unwrap();
    let mut vad = WebRtcVad::default();
    let mut detector = SpeechDetector::new(SpeechDetectorConfig::default());
    let mut new = Vec::with_capacity(source.len());
    let mut events = Vec::new();
    for p in &packets {
        call.decode(p, true, |frame| {
            new.extend_from_slice(&frame.samples);
            let at_ms = (new.len() / FRAME_SAMPLES - 1) as u64 * 20;
            events.extend(detector.on_frame(at_ms, vad.is_speech(frame)));
        })
        .unwrap();
    }
    let (old, new) = (quality(&source, &old), quality(&source, &new));
    eprintln!("caller's packets decoded at 48 kHz and resampled: {old:?}");
    eprintln!("caller's packets decoded by CallAudio at 16 kHz: {new:?}");
    assert!(
        new.seg_snr_db >= old.seg_snr_db - 1.0,
        "{new:?} against {old:?}"
    );
    assert!(new.lsd_db <= old.lsd_db + 0.3, "{new:?} against {old:?}");
    assert!(new.delay_ms < old.delay_ms, "{new:?} against {old:?}");

    // The detector finds the phrase where it was said: as close as on the
    // WAV itself (`tests/real_speech.rs`); libfvad's hangover keeps
    // "speech" a little past the last sound.
    let (audible_start, audible_end) = audible_span(&source);
    match (events.first(), events.last()) {
        (
            Some(&SpeechEvent::Started { at_ms: start }),
            Some(&SpeechEvent::Ended { at_ms: end, .. }),
        ) => {
            assert!(
                start + 60 >= audible_start && start <= audible_start + 100,
                "onset at {start} ms, audible from {audible_start} ms"
            );
            assert!(
                end + 100 >= audible_end && end <= audible_end + 300,
                "offset at {end} ms, audible to {audible_end} ms"
            );
        }
        _ => panic!("expected speech to start and end, got {events:?}"),
    }
}

/// Start and end (ms) of the audible part of 16 kHz `pcm`: 10 ms windows
/// above -40 dBFS.
fn audible_span(pcm: &[i16]) -> (u64, u64) {
    let loud: Vec<usize> = pcm
        .chunks(160)
        .enumerate()
        .filter(|(_, w)| {
            let energy: f64 = w.iter().map(|&s| f64::from(s).powi(2)).sum();
            (energy / w.len() as f64).sqrt() > 32768.0 * 0.01
        })
        .map(|(i, _)| i)
        .collect();
    (
        *loud.first().unwrap() as u64 * 10,
        (*loud.last().unwrap() as u64 + 1) * 10,
    )
}
