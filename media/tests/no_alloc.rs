//! The per-frame paths allocate nothing in steady state: after a warm-up,
//! 500 more frames through the jitter buffer, the inbound path (decode,
//! FEC, concealment, VAD), the outbound path (TTS PCM, resample, pacer,
//! encode, a barge-in) and the server's per-call codecs (`CallAudio`:
//! decode with FEC after a loss and concealment of a corrupt packet, then
//! the VAD; encode, in both Opus modes) leave the allocation count where it
//! was.
//!
//! A counting global allocator needs `unsafe impl GlobalAlloc`; this test
//! file alone allows `unsafe_code` for it.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use palaver_media::codec::{
    EncoderConfig, MAX_PACKET_BYTES, OPUS_FRAME_SAMPLES, OpusEncoder, OpusMode,
};
use palaver_media::jitter::{JitterBuffer, JitterConfig, TIMESTAMP_STEP};
use palaver_media::pipeline::{InboundPath, OutboundConfig, OutboundPath};
use palaver_media::rtc::CallAudio;
use palaver_media::vad::{SpeechDetectorConfig, VoiceActivity, WebRtcVad};
use palaver_media::{AudioFrame, FRAME_SAMPLES};

thread_local! {
    // Counted per thread, so the test harness's own threads do not count.
    // `const` init with a `Cell<u64>` needs no lazy setup or destructor, so
    // touching it from inside the allocator cannot recurse into it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; not counting
    // then is fine.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Forwards everything to the system allocator, counting allocations.
struct CountingAllocator;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; counting touches no allocator state.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size
        // layout), which is `System.alloc`'s contract too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with
        // `layout`; the caller upholds the rest of `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout` (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A speech-like 48 kHz signal (harmonics of 150 Hz, syllable-modulated).
fn speech_48k(n: usize) -> i16 {
    let t = n as f32 / 48_000.0;
    let mut v = 0.0;
    for h in 1..=12 {
        v += (2.0 * std::f32::consts::PI * 150.0 * h as f32 * t).sin() / h as f32;
    }
    let syllables = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 4.0 * t).sin();
    (v * syllables * 6000.0) as i16
}

#[test]
fn the_per_frame_paths_allocate_nothing_in_steady_state() {
    const WARM_UP: usize = 100;
    const MEASURED: usize = 500;
    const TOTAL: usize = WARM_UP + MEASURED;

    // Everything the loop needs is made before it: packets from a "peer",
    // TTS audio at 24 kHz, the paths and their buffers.
    let mut peer = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let mut scratch = [0u8; MAX_PACKET_BYTES];
    let packets: Vec<Vec<u8>> = (0..TOTAL)
        .map(|k| {
            let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
            for (i, s) in pcm.iter_mut().enumerate() {
                *s = speech_48k(k * OPUS_FRAME_SAMPLES + i);
            }
            let len = peer.encode(&pcm, &mut scratch).unwrap();
            scratch[..len].to_vec()
        })
        .collect();
    let tts: Vec<i16> = (0..TOTAL * 480).map(|n| speech_48k(n * 2)).collect();
    // The assistant's voice at the pipeline's 16 kHz.
    let voice: Vec<AudioFrame> = (0..TOTAL)
        .map(|k| AudioFrame {
            samples: std::array::from_fn(|i| speech_48k((k * FRAME_SAMPLES + i) * 3)),
        })
        .collect();
    let corrupt = [0b0000_0011u8];

    // The counter sees allocations on this thread.
    let probe = allocations();
    drop(std::hint::black_box(vec![0u8; 64]));
    assert_eq!(allocations(), probe + 1);

    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut inbound = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();
    let mut outbound = OutboundPath::new(24_000, OutboundConfig::default()).unwrap();
    let mut packet_out = [0u8; MAX_PACKET_BYTES];
    let mut call = CallAudio::new(EncoderConfig::default()).unwrap();
    let mut call_celt = CallAudio::new(EncoderConfig {
        mode: OpusMode::LowDelay,
        complexity: 0,
        ..EncoderConfig::default()
    })
    .unwrap();
    let mut call_vad = WebRtcVad::default();

    let mut deferred: Option<usize> = None;
    let mut tts_offset = 0;
    let mut inbound_frames = 0u64;
    let mut outbound_packets = 0u64;
    let mut speech_frames = 0u64;
    let mut call_frames = 0u64;
    let mut call_speech = 0u64;
    let mut call_bytes = 0usize;
    let mut before = 0;
    for k in 0..TOTAL {
        if k == WARM_UP {
            before = allocations();
        }
        let now = k as u64 * 20;

        // Inbound: lose every 17th packet (FEC) and two in a row every 50th
        // (concealment), reorder pairs every 23rd.
        let is_lost = |k: usize| k % 17 == 5 || k % 50 == 10 || k % 50 == 11;
        let lost = is_lost(k);
        let push = |jitter: &mut JitterBuffer, k: usize| {
            jitter.push(k as u16, (k as u32) * TIMESTAMP_STEP, &packets[k], now)
        };
        if k % 23 == 7 && !lost {
            deferred = Some(k);
        } else if !lost {
            push(&mut jitter, k);
        }
        if let Some(late) = deferred.filter(|&d| d < k) {
            push(&mut jitter, late);
            deferred = None;
        }
        while let Some(slot) = jitter.poll(now) {
            let frame = inbound.play(slot).unwrap();
            inbound_frames += 1;
            speech_frames += u64::from(frame.is_speech);
        }

        // Outbound: 20 ms of TTS in odd-sized pieces, one tick, and a
        // barge-in now and then.
        let chunk = &tts[tts_offset..tts_offset + 480];
        tts_offset += 480;
        let (a, b) = chunk.split_at(173);
        let used = outbound.push_pcm(a) + outbound.push_pcm(b);
        assert_eq!(used, 480);
        while let Some(sent) = outbound.poll(now, &mut packet_out).unwrap() {
            assert!(sent.len > 0);
            outbound_packets += 1;
        }
        if k % 97 == 96 {
            outbound.barge_in();
        }
        if k % 97 == 40 {
            outbound.finish_utterance().unwrap();
        }

        // CallAudio, as the server's WebRTC transport drives it: the
        // caller's packets in order, a gap after a loss (FEC), a corrupt
        // one now and then (concealed); one frame of the assistant's voice.
        let previous_lost = k > 0 && is_lost(k - 1);
        if !lost {
            let payload: &[u8] = if k % 61 == 30 { &corrupt } else { &packets[k] };
            call.decode(payload, !previous_lost, |frame| {
                call_frames += 1;
                call_speech += u64::from(call_vad.is_speech(frame));
            })
            .unwrap();
        }
        call_bytes += call.encode(&voice[k]).unwrap().len();
        call_bytes += call_celt.encode(&voice[k]).unwrap().len();
    }
    let after = allocations();

    // The loop really ran the paths.
    assert!(
        inbound_frames >= (TOTAL - 5) as u64,
        "{inbound_frames} inbound frames"
    );
    assert!(
        speech_frames > inbound_frames / 2,
        "VAD heard {speech_frames}"
    );
    assert!(
        outbound_packets >= (TOTAL - 20) as u64,
        "{outbound_packets} packets"
    );
    assert!(
        call_frames >= (TOTAL - 20) as u64,
        "{call_frames} CallAudio frames"
    );
    assert!(
        call_speech > call_frames / 2,
        "VAD heard {call_speech} of CallAudio's"
    );
    assert!(call_bytes > TOTAL * 2 * 40, "{call_bytes} bytes encoded");
    let stats = jitter.stats();
    assert!(stats.recovered > 20 && stats.concealed > 5, "{stats:?}");
    assert_eq!(stats.late, 0, "reordered packets made their slots");
    assert_eq!(
        after - before,
        0,
        "{} allocations over {MEASURED} frames",
        after - before
    );
}
