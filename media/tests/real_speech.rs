//! Voice activity on real synthesised speech: espeak-ng says a phrase into
//! a 22,050 Hz WAV, and the VAD must find where it starts and ends, both
//! from the file directly and after the whole media loop (TTS rate -> 48 kHz
//! -> Opus -> jitter buffer -> decode -> 16 kHz -> VAD).
//!
//! These tests need `espeak-ng` (installed by `make test`); without it they
//! fail and say so, rather than pass having checked nothing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use palaver_media::codec::MAX_PACKET_BYTES;
use palaver_media::jitter::{JitterBuffer, JitterConfig};
use palaver_media::pipeline::{InboundPath, OutboundConfig, OutboundPath};
use palaver_media::vad::{SpeechDetector, SpeechDetectorConfig, SpeechEvent, WebRtcVad};
use palaver_media::wav::{self, MonoPcm};
use palaver_media::{AudioFrame, VoiceActivity};

const PHRASE: &str = "Hello, I would like to book a table for two tomorrow evening.";
const LEAD_MS: u64 = 1000;

fn espeak(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("phrase.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "espeak-ng could not be run ({e}): install it (apt-get install espeak-ng; \
                 `make test` does) to run the real-speech VAD tests"
            )
        });
    assert!(status.success(), "espeak-ng failed: {status}");
    path
}

/// Start and end (ms) of the audible part of `pcm`: 10 ms windows above
/// -40 dBFS.
fn audible_span(pcm: &MonoPcm) -> (u64, u64) {
    let window = pcm.sample_rate as usize / 100;
    let loud: Vec<usize> = pcm
        .samples
        .chunks(window)
        .enumerate()
        .filter(|(_, w)| {
            let energy: f64 = w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            (energy / w.len() as f64).sqrt() > 32768.0 * 0.01
        })
        .map(|(i, _)| i)
        .collect();
    (
        *loud.first().unwrap() as u64 * 10,
        (*loud.last().unwrap() as u64 + 1) * 10,
    )
}

/// The first onset and the last offset, checking they alternate.
fn outer_span(events: &[SpeechEvent]) -> (u64, u64) {
    for pair in events.windows(2) {
        let alternates = matches!(
            pair,
            [SpeechEvent::Started { .. }, SpeechEvent::Ended { .. }]
                | [SpeechEvent::Ended { .. }, SpeechEvent::Started { .. }]
        );
        assert!(alternates, "events out of order: {events:?}");
    }
    match (events.first(), events.last()) {
        (
            Some(SpeechEvent::Started { at_ms: start }),
            Some(SpeechEvent::Ended { at_ms: end, .. }),
        ) => (*start, *end),
        _ => panic!("expected speech to start and end, got {events:?}"),
    }
}

fn assert_near(what: &str, got: u64, expected: u64, early_ms: u64, late_ms: u64) {
    assert!(
        got + early_ms >= expected && got <= expected + late_ms,
        "{what} at {got} ms, expected {expected} ms (-{early_ms}/+{late_ms})"
    );
}

#[test]
fn the_vad_finds_a_spoken_phrase_in_an_espeak_wav() {
    let dir = tempfile::tempdir().unwrap();
    let pcm = wav::read_mono(espeak(dir.path(), PHRASE)).unwrap();
    assert_eq!(pcm.sample_rate, 22_050, "espeak-ng's native rate");
    let (audible_start, audible_end) = audible_span(&pcm);

    let speech = wav::to_frames_16k(&pcm).unwrap();
    let lead = LEAD_MS as usize / 20;
    let frames = std::iter::repeat_n(AudioFrame::silence(), lead)
        .chain(speech)
        .chain(std::iter::repeat_n(AudioFrame::silence(), 50));

    let mut vad = WebRtcVad::default();
    let mut detector = SpeechDetector::new(SpeechDetectorConfig::default());
    let events: Vec<SpeechEvent> = frames
        .enumerate()
        .filter_map(|(i, frame)| detector.on_frame(i as u64 * 20, vad.is_speech(&frame)))
        .collect();
    let (start, end) = outer_span(&events);
    assert_near("onset", start, LEAD_MS + audible_start, 60, 100);
    // libfvad's hangover keeps "speech" a little past the last sound.
    assert_near("offset", end, LEAD_MS + audible_end, 100, 300);
}

#[test]
fn a_phrase_sent_through_the_whole_media_loop_is_heard_where_it_was_said() {
    let dir = tempfile::tempdir().unwrap();
    let pcm = wav::read_mono(espeak(dir.path(), PHRASE)).unwrap();
    let (audible_start, audible_end) = audible_span(&pcm);

    // The far end speaks: TTS-rate audio after a second of silence.
    let mut tts = vec![0i16; pcm.sample_rate as usize * LEAD_MS as usize / 1000];
    tts.extend_from_slice(&pcm.samples);
    tts.extend(std::iter::repeat_n(0, pcm.sample_rate as usize));
    let mut sender = OutboundPath::new(pcm.sample_rate, OutboundConfig::default()).unwrap();
    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut receiver = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();

    let mut packet = [0u8; MAX_PACKET_BYTES];
    let mut offered = 0;
    let mut finished = false;
    let mut events = Vec::new();
    for now in 0..20_000u64 {
        // The sender feeds its pacer as room frees up.
        if offered < tts.len() {
            offered += sender.push_pcm(&tts[offered..]);
        } else if !finished {
            finished = sender.finish_utterance().is_ok();
        }
        while let Some(sent) = sender.poll(now, &mut packet).unwrap() {
            // RTP numbering as the WebRTC endpoint will do it.
            let seq = sent.sequence as u16;
            let timestamp = (sent.media_ms * 48) as u32;
            // Lose one packet in 30 on the way.
            if sent.sequence % 30 != 0 {
                jitter.push(seq, timestamp, &packet[..sent.len], now);
            }
        }
        while let Some(slot) = jitter.poll(now) {
            events.extend(receiver.play(slot).unwrap().event);
        }
        if finished && sender.next_poll_ms().is_none() && now > 1000 && jitter.is_empty() {
            break;
        }
    }
    assert!(finished, "the utterance never drained");
    // Stream time on the receiver starts with the first packet, which is
    // the first frame the sender sent: same origin as the TTS audio, plus
    // the resampler's few milliseconds of delay.
    let (start, end) = outer_span(&events);
    assert_near("onset", start, LEAD_MS + audible_start, 60, 120);
    assert_near("offset", end, LEAD_MS + audible_end, 100, 320);
}
