//! One session's two audio paths, assembled from the codec, resampler,
//! VAD and pacer, each owning its buffers so that a frame through either
//! path allocates nothing.
//!
//! - [`InboundPath`]: an Opus packet (or a loss) -> a 16 kHz [`AudioFrame`]
//!   (libopus decodes straight to 16 kHz) -> the VAD's decision and the
//!   speech detector's events.
//! - [`OutboundPath`]: TTS PCM at its own rate -> 48 kHz 20 ms frames -> the
//!   pacer -> one Opus packet per 20 ms tick.
//!
//! This module does not own the jitter buffer (the caller maps its
//! [`Playout`] onto [`InboundPath::play`]), RTP, or any clock: times are
//! arguments, as everywhere in this crate.
//!
//! The pacer queues 48 kHz PCM, not encoded packets, and encodes at send
//! time: the encoder's history then always matches what the peer heard
//! (after a barge-in the next utterance is not predicted from audio that was
//! dropped), frames dropped by barge-in cost no encoding, and fixed-size
//! frames fit a ring allocated once. The price is memory: 1.9 KB per queued
//! frame rather than ~80 bytes, about 290 KB for the default 3 s queue.

use crate::codec::{
    AudioBandwidth, CodecError, EncoderConfig, OPUS_FRAME_SAMPLES, OpusDecoder, OpusEncoder,
    Pcm48Frame, WIDEBAND_FRAME_SAMPLES,
};
use crate::frame::{AudioFrame, FRAME_MS};
use crate::jitter::Playout;
use crate::pacer::{Pacer, PacerConfig, PacerError, PacerStats};
use crate::resample::{ResampleError, StreamResampler};
use crate::vad::{SpeechDetector, SpeechDetectorConfig, SpeechEvent, VoiceActivity, WebRtcVad};

/// Why a path could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The Opus encoder or decoder could not be set up.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The resampler could not be set up for the requested rate.
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// Where an inbound frame's audio came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameOrigin {
    /// Decoded from its own packet.
    Decoded,
    /// Rebuilt from the next packet's in-band FEC.
    Recovered,
    /// Synthesised by packet-loss concealment.
    Concealed,
}

/// One inbound frame and what the VAD made of it.
#[derive(Debug, Clone, Copy)]
pub struct InboundFrame<'a> {
    /// The 16 kHz audio, for speech recognition.
    pub frame: &'a AudioFrame,
    pub origin: FrameOrigin,
    /// The VAD's decision for this frame.
    pub is_speech: bool,
    /// Stream time of the frame's start: 20 ms per frame since the path was
    /// made (or reset). Lost packets count, because they are concealed.
    pub at_ms: u64,
    /// Speech onset or offset, as of this frame.
    pub event: Option<SpeechEvent>,
}

/// A session's inbound audio: Opus packets to 16 kHz frames with VAD.
#[derive(Debug)]
pub struct InboundPath<V = WebRtcVad> {
    decoder: OpusDecoder<WIDEBAND_FRAME_SAMPLES>,
    vad: V,
    detector: SpeechDetector,
    frame: AudioFrame,
    frames: u64,
}

impl InboundPath<WebRtcVad> {
    /// An inbound path on WebRTC's VAD with its default aggressiveness.
    pub fn with_webrtc_vad(detector: SpeechDetectorConfig) -> Result<Self, PipelineError> {
        Self::new(WebRtcVad::default(), detector)
    }
}

impl<V: VoiceActivity> InboundPath<V> {
    pub fn new(vad: V, detector: SpeechDetectorConfig) -> Result<Self, PipelineError> {
        Ok(Self {
            decoder: OpusDecoder::at_16k()?,
            vad,
            detector: SpeechDetector::new(detector),
            frame: AudioFrame::silence(),
            frames: 0,
        })
    }

    /// Decodes a packet. On error nothing has advanced: the caller should
    /// [`conceal`](Self::conceal) that slot instead.
    pub fn decode(&mut self, packet: &[u8]) -> Result<InboundFrame<'_>, CodecError> {
        self.decoder.decode(packet, &mut self.frame.samples)?;
        Ok(self.finish(FrameOrigin::Decoded))
    }

    /// Recovers a lost packet from the FEC in `next` (the packet after it).
    pub fn recover(&mut self, next: &[u8]) -> Result<InboundFrame<'_>, CodecError> {
        self.decoder.recover(next, &mut self.frame.samples)?;
        Ok(self.finish(FrameOrigin::Recovered))
    }

    /// Conceals a lost packet.
    pub fn conceal(&mut self) -> Result<InboundFrame<'_>, CodecError> {
        self.decoder.conceal(&mut self.frame.samples)?;
        Ok(self.finish(FrameOrigin::Concealed))
    }

    /// Does what the jitter buffer decided for a slot. A packet that fails
    /// to decode is concealed instead, so every slot yields a frame.
    pub fn play(&mut self, playout: Playout<'_>) -> Result<InboundFrame<'_>, CodecError> {
        let pcm = &mut self.frame.samples;
        let origin = match playout {
            Playout::Packet(packet) => match self.decoder.decode(packet, pcm) {
                Ok(()) => FrameOrigin::Decoded,
                Err(_) => {
                    self.decoder.conceal(pcm)?;
                    FrameOrigin::Concealed
                }
            },
            Playout::Recover { next } => {
                self.decoder.recover(next, pcm)?;
                FrameOrigin::Recovered
            }
            Playout::Conceal => {
                self.decoder.conceal(pcm)?;
                FrameOrigin::Concealed
            }
        };
        Ok(self.finish(origin))
    }

    /// Starts over: decoder, VAD and detector history, stream time.
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.decoder.reset()?;
        self.vad.reset();
        self.detector.reset();
        self.frames = 0;
        Ok(())
    }

    /// The VAD, e.g. to read a neural model's state.
    pub fn vad(&self) -> &V {
        &self.vad
    }

    fn finish(&mut self, origin: FrameOrigin) -> InboundFrame<'_> {
        let is_speech = self.vad.is_speech(&self.frame);
        let at_ms = self.frames * u64::from(FRAME_MS);
        self.frames += 1;
        let event = self.detector.on_frame(at_ms, is_speech);
        InboundFrame {
            frame: &self.frame,
            origin,
            is_speech,
            at_ms,
            event,
        }
    }
}

/// Settings for [`OutboundPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboundConfig {
    pub encoder: EncoderConfig,
    pub pacer: PacerConfig,
}

/// A packet [`OutboundPath::poll`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentPacket {
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
    /// Packets sent so far including this one (1, 2, 3, ...): the RTP
    /// sequence number's offset.
    pub sequence: u64,
    /// The packet's media time in ms, from the pacer's schedule
    /// ([`Paced::due_ms`](crate::pacer::Paced::due_ms)): the RTP timestamp
    /// is a base plus `media_ms * 48`, so that pauses between utterances
    /// show as timestamp gaps (RFC 3550).
    pub media_ms: u64,
}

/// A session's outbound audio: TTS PCM to paced Opus packets.
#[derive(Debug)]
pub struct OutboundPath {
    resampler: StreamResampler<OPUS_FRAME_SAMPLES>,
    encoder: OpusEncoder,
    /// The configured cap, before narrowing to the input rate.
    max_bandwidth: AudioBandwidth,
    pacer: Pacer<Pcm48Frame>,
}

impl OutboundPath {
    /// An outbound path for TTS audio at `input_rate` Hz.
    /// The encoder's band is capped to what `input_rate` can hold (and to
    /// `config.encoder.max_bandwidth`).
    pub fn new(input_rate: u32, config: OutboundConfig) -> Result<Self, PipelineError> {
        let resampler = StreamResampler::to_48k(input_rate)?;
        let encoder = OpusEncoder::new(EncoderConfig {
            max_bandwidth: config
                .encoder
                .max_bandwidth
                .min(AudioBandwidth::for_sample_rate(input_rate)),
            ..config.encoder
        })?;
        Ok(Self {
            resampler,
            encoder,
            max_bandwidth: config.encoder.max_bandwidth,
            pacer: Pacer::new(config.pacer),
        })
    }

    /// The rate [`push_pcm`](Self::push_pcm) expects.
    pub fn input_rate(&self) -> u32 {
        self.resampler.input_rate()
    }

    /// Switches to TTS audio at another rate (a different voice). Audio not
    /// yet turned into whole frames is dropped; call
    /// [`finish_utterance`](Self::finish_utterance) first to keep it. This
    /// allocates a new filter: do it between utterances, not per frame.
    pub fn set_input_rate(&mut self, rate: u32) -> Result<(), PipelineError> {
        if rate != self.resampler.input_rate() {
            self.resampler = StreamResampler::to_48k(rate)?;
            self.encoder.set_max_bandwidth(
                self.max_bandwidth
                    .min(AudioBandwidth::for_sample_rate(rate)),
            )?;
        }
        Ok(())
    }

    /// Queues TTS audio as 48 kHz frames for sending. Takes as much of `pcm`
    /// as the queue has room for and returns how many samples that was; the
    /// caller offers the rest again after the pacer has sent some.
    pub fn push_pcm(&mut self, pcm: &[i16]) -> usize {
        let pacer = &mut self.pacer;
        self.resampler.push(pcm, pacer.free_slots(), |frame| {
            let queued = pacer.push(*frame);
            // `push` stops at `free_slots`, so the queue cannot be full.
            debug_assert!(queued.is_ok());
        })
    }

    /// Ends an utterance: the audio still inside the resampler (the last
    /// partial frame and the filter's delay) is queued, padded with silence.
    /// Refused, with nothing queued, when the queue lacks the room; try
    /// again after some frames have gone out.
    pub fn finish_utterance(&mut self) -> Result<usize, PacerError> {
        let capacity = self.pacer.queued() + self.pacer.free_slots();
        if self.resampler.flush_frames() > self.pacer.free_slots() {
            return Err(PacerError::QueueFull { capacity });
        }
        let pacer = &mut self.pacer;
        Ok(self.resampler.flush(|frame| {
            let queued = pacer.push(*frame);
            debug_assert!(queued.is_ok());
        }))
    }

    /// If a frame is due at `now_ms`, encodes it into `packet` and says how
    /// long the packet is. Call again until `Ok(None)` (after a late poll
    /// the pacer may release a couple of frames to catch up).
    pub fn poll(
        &mut self,
        now_ms: u64,
        packet: &mut [u8],
    ) -> Result<Option<SentPacket>, CodecError> {
        let Some(paced) = self.pacer.poll(now_ms) else {
            return Ok(None);
        };
        let len = self.encoder.encode(&paced.frame, packet)?;
        Ok(Some(SentPacket {
            len,
            sequence: self.pacer.stats().sent,
            media_ms: paced.due_ms,
        }))
    }

    /// When [`poll`](Self::poll) next has work; `None` while nothing is
    /// queued.
    pub fn next_poll_ms(&self) -> Option<u64> {
        self.pacer.next_poll_ms()
    }

    /// Barge-in: drops everything not yet sent, queued frames and the
    /// resampler's partial frame, so the next tick sends nothing. Returns
    /// the number of queued frames dropped; [`stats`](Self::stats) says how
    /// much went out.
    pub fn barge_in(&mut self) -> usize {
        self.resampler.reset();
        self.pacer.clear()
    }

    /// Milliseconds of audio queued and not yet sent.
    pub fn queued_ms(&self) -> u64 {
        self.pacer.queued() as u64 * u64::from(FRAME_MS)
    }

    pub fn stats(&self) -> PacerStats {
        self.pacer.stats()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::MAX_PACKET_BYTES;
    use crate::jitter::{JitterBuffer, JitterConfig, TIMESTAMP_STEP};
    use crate::resample::tests::sine;
    use crate::vad::tests::speech_like;

    /// 48 kHz speech-like audio: the 16 kHz signal, sample-and-held 3x is
    /// too crude (images), so synthesise at 16 kHz and upsample properly.
    fn speech_48k(frames: usize) -> Vec<Pcm48Frame> {
        let mut up = crate::resample::Upsampler16To48::upsample_16k_to_48k().unwrap();
        (0..frames)
            .map(|i| {
                let mut low = [0i16; 320];
                for (j, s) in low.iter_mut().enumerate() {
                    *s = speech_like(i * 320 + j);
                }
                let mut high = [0i16; OPUS_FRAME_SAMPLES];
                up.process(&low, &mut high);
                high
            })
            .collect()
    }

    fn encode_all(frames: &[Pcm48Frame]) -> Vec<Vec<u8>> {
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

    #[test]
    fn a_session_can_run_its_media_on_any_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<InboundPath>();
        assert_send::<OutboundPath>();
        assert_send::<JitterBuffer>();
    }

    #[test]
    fn inbound_hears_speech_between_silences_through_opus() {
        let silence = [[0i16; OPUS_FRAME_SAMPLES]; 1];
        let mut frames: Vec<Pcm48Frame> = Vec::new();
        frames.extend(silence.iter().cycle().take(25));
        frames.extend(speech_48k(50));
        frames.extend(silence.iter().cycle().take(50));
        let packets = encode_all(&frames);

        let mut inbound = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();
        let mut events = Vec::new();
        for p in &packets {
            let out = inbound.decode(p).unwrap();
            assert_eq!(out.origin, FrameOrigin::Decoded);
            events.extend(out.event);
        }
        let [
            SpeechEvent::Started { at_ms: start },
            SpeechEvent::Ended { at_ms: end, .. },
        ] = events[..]
        else {
            panic!("expected onset then offset, got {events:?}");
        };
        assert!((480..=600).contains(&start), "onset at {start} ms");
        assert!((1480..=1650).contains(&end), "offset at {end} ms");
    }

    #[test]
    fn inbound_follows_the_jitter_buffer_through_loss() {
        let packets = encode_all(&speech_48k(20));
        let mut jitter = JitterBuffer::new(JitterConfig::default());
        let mut inbound = InboundPath::with_webrtc_vad(SpeechDetectorConfig::default()).unwrap();
        let mut origins = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            if k == 5 || k == 9 || k == 10 {
                continue; // lost on the way
            }
            let now = k as u64 * 20;
            jitter.push(k as u16, k as u32 * TIMESTAMP_STEP, p, now);
            while let Some(slot) = jitter.poll(now) {
                let out = inbound.play(slot).unwrap();
                assert!(
                    out.frame.dbfs() > -40.0,
                    "frame at {} ms is quiet",
                    out.at_ms
                );
                origins.push(out.origin);
            }
        }
        use FrameOrigin::{Concealed as C, Decoded as D, Recovered as R};
        assert_eq!(
            origins,
            vec![D, D, D, D, D, R, D, D, D, C, R, D, D, D, D, D, D]
        );
        // A corrupt packet is concealed rather than failing the slot.
        let out = inbound.play(Playout::Packet(&[0b0000_0011])).unwrap();
        assert_eq!(out.origin, FrameOrigin::Concealed);
        assert!(inbound.decode(&[0b0000_0011]).is_err());
        inbound.reset().unwrap();
        assert_eq!(inbound.conceal().unwrap().at_ms, 0);
    }

    #[test]
    fn outbound_paces_tts_audio_and_barge_in_stops_it_at_the_next_tick() {
        let mut outbound = OutboundPath::new(24_000, OutboundConfig::default()).unwrap();
        let tts = sine(24_000, 220.0, 0.3, 24_000); // 1 s
        assert_eq!(outbound.push_pcm(&tts), tts.len());
        assert_eq!(outbound.queued_ms(), 1000);
        assert_eq!(outbound.finish_utterance(), Ok(1));

        let mut packet = [0u8; MAX_PACKET_BYTES];
        let mut decoder = OpusDecoder::new().unwrap();
        let mut pcm = [0i16; OPUS_FRAME_SAMPLES];
        let mut sent = 0;
        for now in 0..200u64 {
            while let Some(p) = outbound.poll(now, &mut packet).unwrap() {
                assert!(p.len > 0);
                decoder.decode(&packet[..p.len], &mut pcm).unwrap();
                sent += 1;
                assert_eq!(p.sequence, sent);
                assert_eq!(p.media_ms, (sent - 1) * 20);
            }
        }
        assert_eq!(sent, 10, "one packet per 20 ms over 200 ms");
        // The user talks over it.
        assert_eq!(outbound.barge_in(), 41);
        assert_eq!(outbound.poll(200, &mut packet).unwrap(), None);
        assert_eq!(outbound.next_poll_ms(), None);
        assert_eq!(outbound.stats().sent_ms(), 200);
        assert_eq!(outbound.stats().dropped, 41);
    }

    #[test]
    fn outbound_takes_only_what_fits_and_switches_rates() {
        let mut outbound = OutboundPath::new(
            22_050,
            OutboundConfig {
                pacer: PacerConfig {
                    capacity: 5,
                    max_catch_up: 2,
                },
                ..OutboundConfig::default()
            },
        )
        .unwrap();
        let tts = sine(22_050, 220.0, 0.3, 22_050); // 1 s = 50 frames
        let used = outbound.push_pcm(&tts);
        assert!(used < tts.len());
        assert_eq!(outbound.queued_ms(), 100);
        assert_eq!(
            outbound.finish_utterance(),
            Err(PacerError::QueueFull { capacity: 5 })
        );
        let mut packet = [0u8; MAX_PACKET_BYTES];
        assert!(outbound.poll(0, &mut packet).unwrap().is_some());
        assert_eq!(outbound.push_pcm(&tts[used..used + 441]), 441);
        assert_eq!(outbound.queued_ms(), 100);

        assert_eq!(outbound.input_rate(), 22_050);
        outbound.set_input_rate(16_000).unwrap();
        assert_eq!(outbound.input_rate(), 16_000);
        assert!(outbound.set_input_rate(0).is_err());
    }
}
