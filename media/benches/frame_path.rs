//! Per-session, per-frame cost of the media paths: one 20 ms frame through
//! each stage, and through the paths end to end.
//!
//! `cargo bench -p palaver-media --bench frame_path -- --warm-up-time 1 --measurement-time 5`
//!
//! - `frame_path/call_audio/*` is what the server runs per session and
//!   20 ms frame over WebRTC: [`CallAudio`] decoding a caller's packet to a
//!   16 kHz frame, the VAD on it, and [`CallAudio`] encoding a 16 kHz frame
//!   of the assistant's voice, with the 16 kHz codec states, in each
//!   [`OpusMode`] at a few complexities. `voip_c5` is the server's default
//!   (`rtc.opus_complexity` 5, [`EncoderConfig::default`]'s mode).
//! - `frame_path/call_audio_48k/c{5,0}` is the same work the way `CallAudio`
//!   did it before: 48 kHz codec states with our resamplers (decode 48 kHz,
//!   48 -> 16 kHz, VAD, 16 -> 48 kHz, fullband encode), for comparison.
//! - `frame_path/session_tick` runs [`InboundPath`] and [`OutboundPath`]
//!   with the jitter buffer and pacer (24 kHz TTS, superwideband).
//! - `stage/*` times each step alone; `stage/opus_encode_16k/{voip,lowdelay}_c*`
//!   is the 16 kHz encoder in each mode at every complexity.
//!
//! The caller's packets are what a browser sends by default: 48 kHz
//! fullband Opus at 32 kbit/s with FEC (our 48 kHz encoder at complexity 5).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palaver_media::codec::{
    AudioBandwidth, EncoderConfig, MAX_PACKET_BYTES, OPUS_FRAME_SAMPLES, OpusDecoder, OpusEncoder,
    OpusMode, Pcm48Frame,
};
use palaver_media::jitter::{JitterBuffer, JitterConfig, TIMESTAMP_STEP};
use palaver_media::pipeline::{InboundPath, OutboundConfig, OutboundPath};
use palaver_media::resample::{Downsampler48To16, StreamResampler, Upsampler16To48};
use palaver_media::rtc::CallAudio;
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

fn frames_16k() -> Vec<AudioFrame> {
    (0..FRAMES)
        .map(|k| AudioFrame {
            samples: std::array::from_fn(|i| speech(16_000.0, k * FRAME_SAMPLES + i)),
        })
        .collect()
}

/// A caller's packets: 48 kHz fullband at the default settings.
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

fn at_complexity(complexity: u8) -> EncoderConfig {
    EncoderConfig {
        complexity,
        ..EncoderConfig::default()
    }
}

fn low_delay(complexity: u8) -> EncoderConfig {
    EncoderConfig {
        mode: OpusMode::LowDelay,
        complexity,
        ..EncoderConfig::default()
    }
}

fn stages(c: &mut Criterion) {
    let frames = pcm48_frames();
    let speech16 = frames_16k();
    let packets = packets(&frames);
    let mut group = c.benchmark_group("stage");
    let mut k = 0;

    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = [0i16; OPUS_FRAME_SAMPLES];
    group.bench_function("opus_decode_20ms/to_48k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            decoder.decode(black_box(&packets[k]), &mut out).unwrap();
        })
    });
    let mut decoder = OpusDecoder::at_16k().unwrap();
    let mut frame = AudioFrame::silence();
    group.bench_function("opus_decode_20ms/to_16k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            decoder
                .decode(black_box(&packets[k]), &mut frame.samples)
                .unwrap();
        })
    });

    // What a caller that was asked for 16 kHz audio (`maxplaybackrate`)
    // would send: SILK wideband.
    let mut silk = OpusEncoder::wideband(EncoderConfig::default()).unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let silk_packets: Vec<Vec<u8>> = speech16
        .iter()
        .map(|f| {
            let n = silk.encode(&f.samples, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect();
    group.bench_function("opus_decode_20ms/silk_wb_to_16k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            decoder
                .decode(black_box(&silk_packets[k]), &mut frame.samples)
                .unwrap();
        })
    });

    let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
    group.bench_function("resample_48k_to_16k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            down.process(black_box(&frames[k]), &mut frame.samples);
        })
    });
    let mut up = Upsampler16To48::upsample_16k_to_48k().unwrap();
    let mut pcm48 = [0i16; OPUS_FRAME_SAMPLES];
    group.bench_function("resample_16k_to_48k", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            up.process(black_box(&speech16[k].samples), &mut pcm48);
        })
    });

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
        ("opus_encode_48k/fullband_c5", EncoderConfig::default()),
        ("opus_encode_48k/fullband_c0", at_complexity(0)),
        ("opus_encode_48k/swb_c5", swb(5)),
        ("opus_encode_48k/swb_c0", swb(0)),
        (
            "opus_encode_48k/wb_c5",
            EncoderConfig {
                max_bandwidth: AudioBandwidth::Wideband,
                ..EncoderConfig::default()
            },
        ),
    ] {
        let mut encoder = OpusEncoder::new(config).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % FRAMES;
                encoder.encode(black_box(&frames[k]), &mut packet).unwrap()
            })
        });
    }
    for (mode, config) in (0..=10)
        .map(|c| ("voip", at_complexity(c)))
        .chain((0..=10).map(|c| ("lowdelay", low_delay(c))))
    {
        let mut encoder = OpusEncoder::wideband(config).unwrap();
        let name = format!("opus_encode_16k/{mode}_c{}", config.complexity);
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % FRAMES;
                encoder
                    .encode(black_box(&speech16[k].samples), &mut packet)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn full_path(c: &mut Criterion) {
    let frames = pcm48_frames();
    let speech16 = frames_16k();
    let packets = packets(&frames);
    let tts: Vec<i16> = (0..FRAMES * 480).map(|n| speech(24_000.0, n)).collect();
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let mut k: u64 = 0;

    // What the server runs per session and frame: the caller's packet to a
    // 16 kHz frame, the VAD on it, and a 16 kHz frame of the assistant's
    // voice to a packet.
    for (mode, config) in [
        ("voip", at_complexity(5)),
        ("voip", at_complexity(0)),
        ("lowdelay", low_delay(5)),
        ("lowdelay", low_delay(0)),
    ] {
        let mut call = CallAudio::new(config).unwrap();
        let mut vad = WebRtcVad::default();
        let name = format!("frame_path/call_audio/{mode}_c{}", config.complexity);
        c.bench_function(&name, |b| {
            b.iter(|| {
                let i = (k % FRAMES as u64) as usize;
                call.decode(black_box(&packets[i]), true, |frame| {
                    black_box(vad.is_speech(frame));
                })
                .unwrap();
                black_box(call.encode(black_box(&speech16[i])).unwrap().len());
                k += 1;
            })
        });
    }

    // The same work as `CallAudio` did it before: 48 kHz codec states and
    // our resamplers on either side.
    for complexity in [5, 0] {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
        let mut vad = WebRtcVad::default();
        let mut up = Upsampler16To48::upsample_16k_to_48k().unwrap();
        let mut encoder = OpusEncoder::new(at_complexity(complexity)).unwrap();
        let mut pcm_in = [0i16; OPUS_FRAME_SAMPLES];
        let mut pcm_out = [0i16; OPUS_FRAME_SAMPLES];
        let mut frame = AudioFrame::silence();
        c.bench_function(&format!("frame_path/call_audio_48k/c{complexity}"), |b| {
            b.iter(|| {
                let i = (k % FRAMES as u64) as usize;
                decoder.decode(black_box(&packets[i]), &mut pcm_in).unwrap();
                down.process(&pcm_in, &mut frame.samples);
                black_box(vad.is_speech(&frame));
                up.process(black_box(&speech16[i].samples), &mut pcm_out);
                black_box(encoder.encode(&pcm_out, &mut packet).unwrap());
                k += 1;
            })
        });
    }

    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut inbound = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();
    let mut outbound = OutboundPath::new(24_000, OutboundConfig::default()).unwrap();

    // One call is one 20 ms tick of one session: a packet in, through the
    // jitter buffer, decoded to 16 kHz and classified; 20 ms of 24 kHz TTS
    // in, resampled to 48 kHz, paced out and encoded.
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
}

criterion_group!(benches, stages, full_path);
criterion_main!(benches);
