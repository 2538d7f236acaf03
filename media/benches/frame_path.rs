//! Per-session, per-frame cost of the media paths: one 20 ms frame through
//! each stage, and through both paths end to end.
//!
//! `cargo bench -p palaver-media --bench frame_path -- --warm-up-time 1 --measurement-time 5`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palaver_media::codec::{
    AudioBandwidth, EncoderConfig, MAX_PACKET_BYTES, OPUS_FRAME_SAMPLES, OpusDecoder, OpusEncoder,
    Pcm48Frame,
};
use palaver_media::jitter::{JitterBuffer, JitterConfig, TIMESTAMP_STEP};
use palaver_media::pipeline::{InboundPath, OutboundConfig, OutboundPath};
use palaver_media::resample::{Downsampler48To16, StreamResampler};
use palaver_media::vad::{SpeechDetectorConfig, VoiceActivity, WebRtcVad};
use palaver_media::{AudioFrame, FRAME_SAMPLES};

/// Speech-like audio: harmonics of 150 Hz, modulated at a syllable rate.
fn speech(rate: f32, n: usize) -> i16 {
    let t = n as f32 / rate;
    let mut v = 0.0;
    for h in 1..=12 {
        v += (2.0 * std::f32::consts::PI * 150.0 * h as f32 * t).sin() / h as f32;
    }
    let syllables = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
    (v * syllables * 6000.0) as i16
}

const FRAMES: usize = 250; // 5 s of audio, cycled

fn pcm48_frames() -> Vec<Pcm48Frame> {
    (0..FRAMES)
        .map(|k| std::array::from_fn(|i| speech(48_000.0, k * OPUS_FRAME_SAMPLES + i)))
        .collect()
}

fn packets(frames: &[Pcm48Frame]) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    frames
        .iter()
        .map(|f| {
            let n = encoder.encode(f, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

/// What the outbound path uses for 24 kHz TTS, at a given complexity.
fn swb(complexity: u8) -> EncoderConfig {
    EncoderConfig {
        complexity,
        max_bandwidth: AudioBandwidth::Superwideband,
        ..EncoderConfig::default()
    }
}

fn stages(c: &mut Criterion) {
    let frames = pcm48_frames();
    let packets = packets(&frames);
    let mut group = c.benchmark_group("stage");

    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = [0i16; OPUS_FRAME_SAMPLES];
    let mut k = 0;
    group.bench_function("opus_decode_20ms", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            decoder.decode(black_box(&packets[k]), &mut out).unwrap();
        })
    });

    let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
    let mut frame = AudioFrame::silence();
    group.bench_function("resample_48k_to_16k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            down.process(black_box(&frames[k]), &mut frame.samples);
        })
    });

    let speech16: Vec<AudioFrame> = (0..FRAMES)
        .map(|k| AudioFrame {
            samples: std::array::from_fn(|i| speech(16_000.0, k * FRAME_SAMPLES + i)),
        })
        .collect();
    let mut vad = WebRtcVad::default();
    group.bench_function("webrtc_vad", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            black_box(vad.is_speech(black_box(&speech16[k])))
        })
    });

    let tts: Vec<i16> = (0..FRAMES * 480).map(|n| speech(24_000.0, n)).collect();
    let mut up = StreamResampler::to_48k(24_000).unwrap();
    group.bench_function("resample_24k_to_48k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            up.push(black_box(&tts[k * 480..(k + 1) * 480]), usize::MAX, |f| {
                black_box(f);
            })
        })
    });

    let mut packet = [0u8; MAX_PACKET_BYTES];
    for (name, config) in [
        ("opus_encode_20ms/fullband_c5", EncoderConfig::default()),
        ("opus_encode_20ms/swb_c5", swb(5)),
        ("opus_encode_20ms/swb_c0", swb(0)),
    ] {
        let mut encoder = OpusEncoder::new(config).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % FRAMES;
                encoder.encode(black_box(&frames[k]), &mut packet).unwrap()
            })
        });
    }
    group.finish();
}

fn full_path(c: &mut Criterion) {
    let frames = pcm48_frames();
    let packets = packets(&frames);
    let tts: Vec<i16> = (0..FRAMES * 480).map(|n| speech(24_000.0, n)).collect();

    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut inbound = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();
    let mut outbound = OutboundPath::new(24_000, OutboundConfig::default()).unwrap();
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let mut k: u64 = 0;

    // One call is one 20 ms tick of one session: a packet in, through the
    // jitter buffer, decoded, resampled to 16 kHz and classified; 20 ms of
    // 24 kHz TTS in, resampled to 48 kHz, paced out and encoded.
    c.bench_function("frame_path/session_tick", |b| {
        b.iter(|| {
            let now = k * 20;
            let i = (k % FRAMES as u64) as usize;
            jitter.push(k as u16, k as u32 * TIMESTAMP_STEP, &packets[i], now);
            while let Some(slot) = jitter.poll(now) {
                black_box(inbound.play(slot).unwrap().is_speech);
            }
            outbound.push_pcm(&tts[i * 480..(i + 1) * 480]);
            while let Some(sent) = outbound.poll(now, &mut packet).unwrap() {
                black_box(sent.len);
            }
            k += 1;
        })
    });

    // Decode + resample + VAD + encode alone, without the jitter buffer and
    // pacer bookkeeping, at the default complexity and at the cheapest.
    for (name, complexity) in [
        ("frame_path/decode_resample_vad_encode/c5", 5),
        ("frame_path/decode_resample_vad_encode/c0", 0),
    ] {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
        let mut vad = WebRtcVad::default();
        let mut encoder = OpusEncoder::new(swb(complexity)).unwrap();
        let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
        let mut frame = AudioFrame::silence();
        c.bench_function(name, |b| {
            b.iter(|| {
                let i = (k % FRAMES as u64) as usize;
                decoder.decode(&packets[i], &mut pcm).unwrap();
                down.process(&pcm, &mut frame.samples);
                black_box(vad.is_speech(&frame));
                black_box(encoder.encode(&frames[i], &mut packet).unwrap());
                k += 1;
            })
        });
    }
}

criterion_group!(benches, stages, full_path);
criterion_main!(benches);
