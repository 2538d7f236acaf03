//! Opus at the WebRTC edge: mono, 20 ms per packet, both ways, at 48 kHz
//! or straight at the pipeline's 16 kHz.
//!
//! This module owns the libopus encoder and decoder states (through the
//! `opus` crate, which links the system libopus) and the one error type for
//! codec failures. It decodes into and encodes from caller-provided buffers,
//! so a call never allocates. It knows nothing of RTP, timing or sample-rate
//! conversion: the jitter buffer decides *what* to decode (a packet, a
//! concealment, an FEC recovery).
//!
//! The codec states are generic over the PCM frame they read and write:
//! [`OpusDecoder::new`] and [`OpusEncoder::new`] work on 48 kHz
//! [`Pcm48Frame`]s; [`OpusDecoder::at_16k`] and [`OpusEncoder::wideband`]
//! on 16 kHz frames, the rate of everything inside the pipeline. An Opus
//! packet does not depend on the rate it was encoded from or is decoded to
//! (RTP carries Opus on a 48 kHz clock whatever the audio band), so the
//! 16 kHz states interoperate with any peer. At 16 kHz libopus codes
//! speech with SILK at its native wideband rate and the decoder writes
//! 16 kHz directly: no 16 <-> 48 kHz resampling on our side, and no coding
//! of a band the audio does not have. Speed and quality of the two are in
//! `BENCHMARKS.md` (media section) and `tests/call_audio.rs`.

use opus::{Application, Bitrate, Channels};

/// Opus's native rate, the RTP clock rate of every Opus stream, and the
/// rate of the 48 kHz codec states.
pub const OPUS_SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms Opus frame at 48 kHz mono.
pub const OPUS_FRAME_SAMPLES: usize = 960;
/// Largest Opus packet for one frame (RFC 6716 §3.4, R1).
pub const MAX_PACKET_BYTES: usize = 1275;

/// Samples in one 20 ms frame at 16 kHz mono (an [`AudioFrame`]'s).
///
/// [`AudioFrame`]: crate::AudioFrame
pub const WIDEBAND_FRAME_SAMPLES: usize = crate::FRAME_SAMPLES;

/// One 20 ms frame of 48 kHz mono PCM16, what the 48 kHz codec reads and
/// writes.
pub type Pcm48Frame = [i16; OPUS_FRAME_SAMPLES];
/// One 20 ms frame of 16 kHz mono PCM16, what the wideband codec reads and
/// writes (the samples of an [`AudioFrame`](crate::AudioFrame)).
pub type Pcm16Frame = [i16; WIDEBAND_FRAME_SAMPLES];

/// The PCM rate of a codec state whose 20 ms frame holds `samples`.
const fn rate_for(samples: usize) -> u32 {
    (samples * 1000 / crate::FRAME_MS as usize) as u32
}

/// The libopus error behind a [`CodecError`], kept opaque so the `opus`
/// crate's types are not part of this crate's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibopusError {
    function: &'static str,
    code: opus::ErrorCode,
}

impl From<opus::Error> for LibopusError {
    fn from(e: opus::Error) -> Self {
        Self {
            function: e.function(),
            code: e.code(),
        }
    }
}

impl std::fmt::Display for LibopusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.function, self.code.description())
    }
}

impl std::error::Error for LibopusError {}

/// Why the codec could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// libopus refused to create a state or to apply a setting; `what` names
    /// the step (e.g. `"set_bitrate"`).
    #[error("opus setup failed at {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: LibopusError,
    },
    /// The packet could not be decoded (corrupt or truncated).
    #[error("opus packet could not be decoded")]
    Decode(#[source] LibopusError),
    /// libopus failed to encode the frame.
    #[error("opus frame could not be encoded")]
    Encode(#[source] LibopusError),
    /// `decode` was given an empty packet; a lost packet goes through
    /// `conceal` or `recover` instead.
    #[error("empty opus packet (use conceal for a lost packet)")]
    EmptyPacket,
    /// The packet holds a duration other than 20 ms; the pipeline is built
    /// on 20 ms frames (WebRTC's default `ptime`).
    #[error(
        "opus packet holds {samples} samples at 48 kHz; only 20 ms ({OPUS_FRAME_SAMPLES}) packets are supported"
    )]
    UnsupportedDuration { samples: usize },
    /// The configured bitrate is outside what Opus accepts (6–510 kbit/s).
    #[error("opus bitrate {bps} bit/s is outside 6000..=510000")]
    InvalidBitrate { bps: i32 },
    /// The configured complexity is outside 0..=10.
    #[error("opus complexity {0} is outside 0..=10")]
    InvalidComplexity(u8),
    /// The configured expected packet loss is over 100 %.
    #[error("expected packet loss {0} % is over 100")]
    InvalidPacketLoss(u8),
    /// The output buffer for an encoded packet is empty.
    #[error("the packet buffer is empty")]
    EmptyPacketBuffer,
}

fn setup(what: &'static str) -> impl FnOnce(opus::Error) -> CodecError {
    move |e| CodecError::Setup {
        what,
        source: LibopusError::from(e),
    }
}

/// Decodes 20 ms Opus packets to mono PCM16, with packet-loss concealment
/// and in-band FEC recovery. `SAMPLES` is the output frame: 960 (48 kHz,
/// [`new`](Self::new)) or 320 (16 kHz, [`at_16k`](Self::at_16k)).
#[derive(Debug)]
pub struct OpusDecoder<const SAMPLES: usize = OPUS_FRAME_SAMPLES> {
    inner: opus::Decoder,
}

impl OpusDecoder<OPUS_FRAME_SAMPLES> {
    /// A decoder to 48 kHz.
    pub fn new() -> Result<Self, CodecError> {
        Self::create()
    }
}

impl OpusDecoder<WIDEBAND_FRAME_SAMPLES> {
    /// A decoder to 16 kHz, the pipeline's rate. libopus decodes SILK at its
    /// own wideband rate and drops CELT's bands above 8 kHz before its
    /// inverse transform, so this is both cheaper than decoding to 48 kHz
    /// and resampling, and free of a resampler's delay. Any Opus packet
    /// decodes, whatever band it was coded with.
    pub fn at_16k() -> Result<Self, CodecError> {
        Self::create()
    }
}

impl<const SAMPLES: usize> OpusDecoder<SAMPLES> {
    /// The rate of the PCM this decoder writes.
    pub const SAMPLE_RATE: u32 = rate_for(SAMPLES);

    fn create() -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(Self::SAMPLE_RATE, Channels::Mono)
            .map_err(setup("decoder_create"))?;
        Ok(Self { inner })
    }

    /// Decodes one packet into `out`. A packet that is not exactly 20 ms is
    /// refused before libopus sees it, so `out` never overflows.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16; SAMPLES]) -> Result<(), CodecError> {
        if packet.is_empty() {
            // libopus would read an empty packet as a loss; losses go
            // through `conceal` so that the caller's intent is explicit.
            return Err(CodecError::EmptyPacket);
        }
        let samples = opus::packet::get_nb_samples(packet, OPUS_SAMPLE_RATE)
            .map_err(|e| CodecError::Decode(LibopusError::from(e)))?;
        if samples != OPUS_FRAME_SAMPLES {
            return Err(CodecError::UnsupportedDuration { samples });
        }
        self.run(packet, out, false)
    }

    /// Packet-loss concealment: synthesises 20 ms continuing what came
    /// before, for a packet that never arrived.
    pub fn conceal(&mut self, out: &mut [i16; SAMPLES]) -> Result<(), CodecError> {
        self.run(&[], out, false)
    }

    /// Recovers a lost packet from the in-band FEC carried by the packet that
    /// follows it (`next`). `next` must then be decoded normally as well:
    /// this call only yields the audio of the lost one. Where `next` carries
    /// no FEC, libopus falls back to concealment.
    pub fn recover(&mut self, next: &[u8], out: &mut [i16; SAMPLES]) -> Result<(), CodecError> {
        if next.is_empty() {
            return self.conceal(out);
        }
        // The output length tells libopus how much audio was lost: one frame.
        self.run(next, out, true)
    }

    /// Forgets all history (as after a stream restart).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state().map_err(setup("decoder_reset"))
    }

    fn run(
        &mut self,
        packet: &[u8],
        out: &mut [i16; SAMPLES],
        fec: bool,
    ) -> Result<(), CodecError> {
        let samples = self
            .inner
            .decode(packet, out, fec)
            .map_err(|e| CodecError::Decode(LibopusError::from(e)))?;
        if samples != SAMPLES {
            // Cannot happen for a 20 ms packet into a 20 ms buffer; never
            // hand on a frame that is part stale.
            return Err(CodecError::UnsupportedDuration {
                samples: samples * OPUS_FRAME_SAMPLES / SAMPLES,
            });
        }
        Ok(())
    }
}

/// The widest audio band the encoder may code. Capping it to what the
/// source can hold (TTS at 24 kHz has nothing above 12 kHz) keeps libopus
/// from choosing a wider mode, and spending bits, on bands that are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AudioBandwidth {
    /// Up to 4 kHz (8 kHz sources).
    Narrowband,
    /// Up to 6 kHz (12 kHz sources).
    Mediumband,
    /// Up to 8 kHz (16 kHz sources).
    Wideband,
    /// Up to 12 kHz (22.05 and 24 kHz sources).
    Superwideband,
    /// Up to 20 kHz.
    Fullband,
}

impl AudioBandwidth {
    /// The narrowest band that holds everything a source sampled at `rate`
    /// Hz can contain.
    pub fn for_sample_rate(rate: u32) -> Self {
        match rate {
            0..=8_000 => Self::Narrowband,
            8_001..=12_000 => Self::Mediumband,
            12_001..=16_000 => Self::Wideband,
            16_001..=24_000 => Self::Superwideband,
            _ => Self::Fullband,
        }
    }

    fn to_opus(self) -> opus::Bandwidth {
        match self {
            Self::Narrowband => opus::Bandwidth::Narrowband,
            Self::Mediumband => opus::Bandwidth::Mediumband,
            Self::Wideband => opus::Bandwidth::Wideband,
            Self::Superwideband => opus::Bandwidth::Superwideband,
            Self::Fullband => opus::Bandwidth::Fullband,
        }
    }
}

/// Which of Opus's two codecs the encoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OpusMode {
    /// libopus's VOIP application: SILK for speech (hybrid with CELT for
    /// the band above 8 kHz), with in-band FEC when
    /// [`EncoderConfig::expected_loss_percent`] is above zero, so a lost
    /// packet is rebuilt from the next one. Robust to loss; SILK costs
    /// several times CELT's CPU.
    #[default]
    Voip,
    /// CELT only (libopus's restricted-low-delay application): a fraction
    /// of SILK's CPU and 4 ms less algorithmic delay, but CELT carries no
    /// in-band FEC, so a lost packet can only be concealed, which sounds
    /// much worse than FEC at a few percent of loss (`BENCHMARKS.md`).
    LowDelay,
}

/// Encoder settings for outbound speech.
///
/// CPU per 20 ms frame on the 2-core development VM (shared AMD EPYC), 32
/// kbit/s, `benches/frame_path.rs`: [`OpusMode::Voip`] (SILK, FEC on) about
/// 57 µs at complexity 0, 168 µs at 5 and 400 µs at 10 at 16 kHz, and
/// 69 / 180 µs at complexity 0 / 5 fullband at 48 kHz;
/// [`OpusMode::LowDelay`] (CELT) at 16 kHz about 21 µs at complexity 0 and
/// 60 µs at 5 and at 10. The encoder dominates a session's per-frame cost;
/// `BENCHMARKS.md` (media) weighs CPU against quality, with and without
/// packet loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Target bitrate in bit/s; 24–32 kbit/s is transparent for speech.
    pub bitrate_bps: i32,
    /// libopus complexity 0..=10: CPU against quality.
    pub complexity: u8,
    /// Packet loss the encoder should protect against, in percent. In-band
    /// FEC is only emitted when this is above zero, and only in
    /// [`OpusMode::Voip`].
    pub expected_loss_percent: u8,
    /// The widest band to code (see [`AudioBandwidth`]).
    pub max_bandwidth: AudioBandwidth,
    /// SILK with FEC, or CELT only.
    pub mode: OpusMode,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate_bps: 32_000,
            // The usual VoIP middle ground (mobile WebRTC uses 5 too);
            // 0 roughly halves the cost for audibly rougher speech.
            complexity: 5,
            expected_loss_percent: 10,
            max_bandwidth: AudioBandwidth::Fullband,
            mode: OpusMode::Voip,
        }
    }
}

/// Encodes 20 ms of mono PCM16 into one Opus packet, with SILK and in-band
/// FEC or with CELT only ([`OpusMode`]). `SAMPLES` is the input frame: 960 (48 kHz,
/// [`new`](Self::new)) or 320 (16 kHz, [`wideband`](Self::wideband)).
#[derive(Debug)]
pub struct OpusEncoder<const SAMPLES: usize = OPUS_FRAME_SAMPLES> {
    inner: opus::Encoder,
}

impl OpusEncoder<OPUS_FRAME_SAMPLES> {
    /// An encoder of 48 kHz audio.
    pub fn new(config: EncoderConfig) -> Result<Self, CodecError> {
        Self::create(config)
    }
}

impl OpusEncoder<WIDEBAND_FRAME_SAMPLES> {
    /// An encoder of 16 kHz audio, the pipeline's rate: the band is capped
    /// at [`AudioBandwidth::Wideband`] (all a 16 kHz source holds), which
    /// SILK codes at its native rate. The packets are ordinary Opus on the
    /// 48 kHz RTP clock; any decoder plays them.
    pub fn wideband(config: EncoderConfig) -> Result<Self, CodecError> {
        Self::create(config)
    }
}

impl<const SAMPLES: usize> OpusEncoder<SAMPLES> {
    /// The rate of the PCM this encoder reads.
    pub const SAMPLE_RATE: u32 = rate_for(SAMPLES);

    fn create(config: EncoderConfig) -> Result<Self, CodecError> {
        if !(6_000..=510_000).contains(&config.bitrate_bps) {
            return Err(CodecError::InvalidBitrate {
                bps: config.bitrate_bps,
            });
        }
        if config.complexity > 10 {
            return Err(CodecError::InvalidComplexity(config.complexity));
        }
        if config.expected_loss_percent > 100 {
            return Err(CodecError::InvalidPacketLoss(config.expected_loss_percent));
        }
        let application = match config.mode {
            OpusMode::Voip => Application::Voip,
            OpusMode::LowDelay => Application::LowDelay,
        };
        let mut inner = opus::Encoder::new(Self::SAMPLE_RATE, Channels::Mono, application)
            .map_err(setup("encoder_create"))?;
        inner
            .set_bitrate(Bitrate::Bits(config.bitrate_bps))
            .map_err(setup("set_bitrate"))?;
        inner
            .set_complexity(i32::from(config.complexity))
            .map_err(setup("set_complexity"))?;
        inner
            .set_inband_fec(true)
            .map_err(setup("set_inband_fec"))?;
        inner
            .set_packet_loss_perc(i32::from(config.expected_loss_percent))
            .map_err(setup("set_packet_loss_perc"))?;
        let mut encoder = Self { inner };
        encoder.set_max_bandwidth(config.max_bandwidth)?;
        Ok(encoder)
    }

    /// Caps the coded audio band (e.g. when the TTS voice changes rate), to
    /// no more than the encoder's own rate can hold.
    pub fn set_max_bandwidth(&mut self, bandwidth: AudioBandwidth) -> Result<(), CodecError> {
        let bandwidth = bandwidth.min(AudioBandwidth::for_sample_rate(Self::SAMPLE_RATE));
        self.inner
            .set_max_bandwidth(bandwidth.to_opus())
            .map_err(setup("set_max_bandwidth"))
    }

    /// Encodes one frame into `packet` and returns the packet's length. At
    /// most [`MAX_PACKET_BYTES`] of `packet` are used; a shorter buffer caps
    /// the packet size (libopus lowers quality to fit).
    pub fn encode(&mut self, pcm: &[i16; SAMPLES], packet: &mut [u8]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::EmptyPacketBuffer);
        }
        let end = packet.len().min(MAX_PACKET_BYTES);
        self.inner
            .encode(pcm, &mut packet[..end])
            .map_err(|e| CodecError::Encode(LibopusError::from(e)))
    }

    /// Forgets all history (as at the start of a new stream).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state().map_err(setup("encoder_reset"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tone(hz: f32, amplitude: f32, frame_index: usize) -> Pcm48Frame {
        tone_at(hz, amplitude, frame_index)
    }

    /// A 20 ms frame of a sine at the rate `N` samples per frame implies.
    fn tone_at<const N: usize>(hz: f32, amplitude: f32, frame_index: usize) -> [i16; N] {
        let rate = rate_for(N) as f32;
        std::array::from_fn(|i| {
            let t = (frame_index * N + i) as f32 / rate;
            (amplitude * 32767.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
        })
    }

    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let dot = |x: &[i16], y: &[i16]| -> f64 {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum()
        };
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1.0)
    }

    /// The TOC byte's configuration: 9 is SILK wideband 20 ms, 23 CELT
    /// wideband 20 ms (RFC 6716 §3.1).
    fn toc_config(packet: &[u8]) -> u8 {
        packet[0] >> 3
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len() as f64).sqrt()
    }

    fn encode_tone(frames: usize) -> Vec<Vec<u8>> {
        let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        (0..frames)
            .map(|i| {
                let len = encoder.encode(&tone(440.0, 0.3, i), &mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn a_tone_survives_a_round_trip_at_about_its_level() {
        let packets = encode_tone(25);
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [0i16; OPUS_FRAME_SAMPLES];
        for p in &packets {
            assert!(
                p.len() < 200,
                "32 kbit/s is 80 bytes a packet, got {}",
                p.len()
            );
            decoder.decode(p, &mut out).unwrap();
        }
        let expected = rms(&tone(440.0, 0.3, 0));
        let got = rms(&out);
        assert!(
            (got / expected - 1.0).abs() < 0.2,
            "rms {got:.0} against {expected:.0}"
        );
    }

    #[test]
    fn concealment_and_fec_fill_a_lost_frame_with_audio() {
        let packets = encode_tone(30);
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [0i16; OPUS_FRAME_SAMPLES];
        for p in &packets[..20] {
            decoder.decode(p, &mut out).unwrap();
        }
        // Packet 20 is lost, 21 is here: recover 20 from 21's FEC.
        decoder.recover(&packets[21], &mut out).unwrap();
        assert!(rms(&out) > 1000.0, "FEC gave near silence");
        decoder.decode(&packets[21], &mut out).unwrap();
        // Packet 22 is lost with nothing after it yet: conceal.
        decoder.conceal(&mut out).unwrap();
        assert!(rms(&out) > 1000.0, "PLC gave near silence");
        decoder.decode(&packets[23], &mut out).unwrap();
    }

    #[test]
    fn bad_packets_and_settings_are_refused_with_their_reason() {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [0i16; OPUS_FRAME_SAMPLES];
        assert_eq!(decoder.decode(&[], &mut out), Err(CodecError::EmptyPacket));
        assert!(matches!(
            decoder.decode(&[0b0000_0011], &mut out),
            Err(CodecError::Decode(_))
        ));
        // TOC config 3 is SILK narrowband 60 ms: not a 20 ms packet.
        assert_eq!(
            decoder.decode(&[3 << 3, 0, 0], &mut out),
            Err(CodecError::UnsupportedDuration { samples: 2880 })
        );
        let bad = |config| OpusEncoder::new(config).unwrap_err();
        let base = EncoderConfig::default();
        assert_eq!(
            bad(EncoderConfig {
                bitrate_bps: 100,
                ..base
            }),
            CodecError::InvalidBitrate { bps: 100 }
        );
        assert_eq!(
            bad(EncoderConfig {
                complexity: 11,
                ..base
            }),
            CodecError::InvalidComplexity(11)
        );
        let mut encoder = OpusEncoder::new(base).unwrap();
        assert_eq!(
            encoder.encode(&[0; OPUS_FRAME_SAMPLES], &mut []),
            Err(CodecError::EmptyPacketBuffer)
        );
        assert!(!CodecError::EmptyPacketBuffer.to_string().is_empty());
    }

    #[test]
    fn the_band_follows_the_source_rate() {
        use AudioBandwidth::*;
        let bands: Vec<_> = [8_000, 16_000, 22_050, 24_000, 48_000]
            .map(AudioBandwidth::for_sample_rate)
            .into();
        assert_eq!(
            bands,
            [Narrowband, Wideband, Superwideband, Superwideband, Fullband]
        );
        let mut encoder = OpusEncoder::new(EncoderConfig {
            max_bandwidth: Wideband,
            ..EncoderConfig::default()
        })
        .unwrap();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let mut len = 0;
        for i in 0..10 {
            len = encoder.encode(&tone(440.0, 0.3, i), &mut buf).unwrap();
        }
        assert_eq!(
            opus::packet::get_bandwidth(&buf[..len]).unwrap(),
            opus::Bandwidth::Wideband
        );
    }

    #[test]
    fn the_16k_encoder_codes_wideband_silk_or_celt_that_any_decoder_plays() {
        for (mode, config) in [(OpusMode::Voip, 9), (OpusMode::LowDelay, 23)] {
            // The default's fullband cap is narrowed to what 16 kHz holds.
            let mut encoder = OpusEncoder::wideband(EncoderConfig {
                mode,
                ..EncoderConfig::default()
            })
            .unwrap();
            let mut at_16k = OpusDecoder::at_16k().unwrap();
            let mut at_48k = OpusDecoder::new().unwrap();
            let mut out16 = [0i16; WIDEBAND_FRAME_SAMPLES];
            let mut out48 = [0i16; OPUS_FRAME_SAMPLES];
            let mut buf = [0u8; MAX_PACKET_BYTES];
            for i in 0..25 {
                let pcm: Pcm16Frame = tone_at(440.0, 0.3, i);
                let len = encoder.encode(&pcm, &mut buf).unwrap();
                let packet = &buf[..len];
                assert_eq!(toc_config(packet), config, "{mode:?} frame {i}");
                assert_eq!(
                    opus::packet::get_bandwidth(packet).unwrap(),
                    opus::Bandwidth::Wideband
                );
                at_16k.decode(packet, &mut out16).unwrap();
                at_48k.decode(packet, &mut out48).unwrap();
            }
            let expected = rms(&tone_at::<WIDEBAND_FRAME_SAMPLES>(440.0, 0.3, 0));
            for got in [rms(&out16), rms(&out48)] {
                assert!(
                    (got / expected - 1.0).abs() < 0.2,
                    "{mode:?}: rms {got:.0} against {expected:.0}"
                );
            }
        }
        assert_eq!(OpusEncoder::<WIDEBAND_FRAME_SAMPLES>::SAMPLE_RATE, 16_000);
        assert_eq!(OpusDecoder::<OPUS_FRAME_SAMPLES>::SAMPLE_RATE, 48_000);
    }

    /// Frames of a tone that jumps from 440 to 660 Hz at frame 20, coded by
    /// `encode`; frame 20 is then lost. Returns how well FEC recovery and
    /// concealment at 16 kHz match what a decoder that got every packet
    /// made of frame 20 (correlation).
    fn recovery_and_concealment(mut encode: impl FnMut(usize, f32) -> Vec<u8>) -> (f64, f64) {
        let packets: Vec<Vec<u8>> = (0..30)
            .map(|i| encode(i, if i < 20 { 440.0 } else { 660.0 }))
            .collect();
        let mut out = [0i16; WIDEBAND_FRAME_SAMPLES];
        let mut truth = [0i16; WIDEBAND_FRAME_SAMPLES];
        let mut reference = OpusDecoder::at_16k().unwrap();
        for p in &packets[..=20] {
            reference.decode(p, &mut truth).unwrap();
        }
        let mut recovering = OpusDecoder::at_16k().unwrap();
        let mut concealing = OpusDecoder::at_16k().unwrap();
        for p in &packets[..20] {
            recovering.decode(p, &mut out).unwrap();
            concealing.decode(p, &mut out).unwrap();
        }
        recovering.recover(&packets[21], &mut out).unwrap();
        let fec = correlation(&out, &truth);
        concealing.conceal(&mut out).unwrap();
        let plc = correlation(&out, &truth);
        (fec, plc)
    }

    #[test]
    fn a_16k_decoder_recovers_a_lost_frame_from_the_next_packets_fec() {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        // A browser's packets: 48 kHz fullband (hybrid) with FEC.
        let mut browser = OpusEncoder::new(EncoderConfig::default()).unwrap();
        let (fec, plc) = recovery_and_concealment(|i, hz| {
            let len = browser.encode(&tone(hz, 0.3, i), &mut buf).unwrap();
            buf[..len].to_vec()
        });
        assert!(
            fec > 0.8 && plc < 0.5,
            "fullband: fec {fec:.2}, plc {plc:.2}"
        );
        // Ours at 16 kHz, SILK with FEC.
        let mut silk = OpusEncoder::wideband(EncoderConfig::default()).unwrap();
        let (fec, plc) = recovery_and_concealment(|i, hz| {
            let len = silk.encode(&tone_at(hz, 0.3, i), &mut buf).unwrap();
            buf[..len].to_vec()
        });
        assert!(fec > 0.8 && plc < 0.5, "SILK: fec {fec:.2}, plc {plc:.2}");
        // CELT carries no FEC: "recovery" is concealment.
        let mut celt = OpusEncoder::wideband(EncoderConfig {
            mode: OpusMode::LowDelay,
            ..EncoderConfig::default()
        })
        .unwrap();
        let (fec, plc) = recovery_and_concealment(|i, hz| {
            let len = celt.encode(&tone_at(hz, 0.3, i), &mut buf).unwrap();
            buf[..len].to_vec()
        });
        assert!(fec < 0.5 && plc < 0.5, "CELT: fec {fec:.2}, plc {plc:.2}");
    }
}
