//! Sample-rate conversion between the WebRTC side (48 kHz), the pipeline
//! (16 kHz) and what text-to-speech engines emit (16, 22.05, 24 kHz).
//!
//! This module owns the resampler states and their buffers, all allocated
//! when a resampler is built: converting a frame never allocates. It does
//! not know about codecs, frames in flight or timing.
//!
//! - [`FrameResampler`]: exactly one fixed-size frame in, one out, per call
//!   (48 kHz 960 samples <-> 16 kHz 320 samples for 20 ms).
//! - [`StreamResampler`]: chunks of any length in, fixed-size frames out
//!   (TTS audio to 48 kHz 20 ms frames; a WAV file to 16 kHz frames), with a
//!   [`flush`](StreamResampler::flush) for the end of a stream.
//!
//! Both use rubato 0.16's `FftFixedInOut`: a windowed-sinc anti-alias filter
//! applied by FFT overlap-add, for exact rational ratios (3:1, 1:3, 1:2 and
//! 147:320). We pin 0.16 rather than 5.x because its classic
//! `process_into_buffer(&[Vec<f32>], &mut [Vec<f32>])` writes into
//! preallocated buffers without allocating (checked in its source and by
//! `tests/no_alloc.rs`), while 5.x moved to `audioadapter` buffers for no
//! gain here. The FFT block is 5 ms of input: the filter then spans 5 ms,
//! giving 2.5 ms of delay and a passband to about 0.83 of the lower Nyquist
//! (6.6 kHz at 16 kHz, ample for speech recognition). A longer block would
//! widen the passband a little and add latency to every turn.

use rubato::{FftFixedInOut, Resampler};

/// Input duration of one FFT block (see the module doc for the trade-off).
const BLOCK_MS: u32 = 5;

/// Why a resampler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    /// A sample rate is zero.
    #[error("sample rates must be above zero (got {from} Hz -> {to} Hz)")]
    ZeroRate { from: u32, to: u32 },
    /// The frame sizes do not describe the same duration at the two rates,
    /// or the input frame cannot be split into whole FFT blocks.
    #[error("{input} samples at {from} Hz do not convert to exactly {output} samples at {to} Hz")]
    FrameMismatch {
        from: u32,
        to: u32,
        input: usize,
        output: usize,
    },
    /// rubato refused the configuration.
    #[error("resampler construction failed: {0}")]
    Construction(String),
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32768.0
}

fn to_i16(sample: f32) -> i16 {
    // Float-to-int `as` saturates; round to the nearest step first.
    (sample * 32768.0).round() as i16
}

/// Feeds i16 samples into fixed FFT blocks and hands each resampled block
/// on as f32. Where both rates are equal it copies instead.
struct BlockResampler {
    fft: Option<FftFixedInOut<f32>>,
    block_in: usize,
    block_out: usize,
    input: [Vec<f32>; 1],
    filled: usize,
    output: [Vec<f32>; 1],
}

impl BlockResampler {
    /// `block_in` must be a whole number of the ratio's input unit.
    fn new(from: u32, to: u32, block_in: usize) -> Result<Self, ResampleError> {
        let g = gcd(u64::from(from), u64::from(to));
        let unit_in = (u64::from(from) / g) as usize;
        let block_out = block_in / unit_in * (u64::from(to) / g) as usize;
        let fft = if from == to {
            None
        } else {
            let fft = FftFixedInOut::<f32>::new(from as usize, to as usize, block_in, 1)
                .map_err(|e| ResampleError::Construction(e.to_string()))?;
            if fft.input_frames_next() != block_in || fft.output_frames_next() != block_out {
                return Err(ResampleError::Construction(format!(
                    "rubato chose blocks of {} -> {}, expected {block_in} -> {block_out}",
                    fft.input_frames_next(),
                    fft.output_frames_next()
                )));
            }
            Some(fft)
        };
        Ok(Self {
            fft,
            block_in,
            block_out,
            input: [vec![0.0; block_in]],
            filled: 0,
            output: [vec![0.0; block_out]],
        })
    }

    /// The smallest whole multiple of the ratio's input unit that lasts at
    /// least [`BLOCK_MS`].
    fn default_block_in(from: u32, to: u32) -> usize {
        let g = gcd(u64::from(from), u64::from(to));
        let unit_in = (u64::from(from) / g) as usize;
        let target = (from * BLOCK_MS / 1000) as usize;
        target.div_ceil(unit_in).max(1) * unit_in
    }

    /// Samples still needed to complete the current block.
    fn room(&self) -> usize {
        self.block_in - self.filled
    }

    /// Takes up to [`Self::room`] samples; returns the resampled block if
    /// it completed.
    fn feed(&mut self, samples: &[i16]) -> Option<&[f32]> {
        debug_assert!(samples.len() <= self.room());
        for (dst, &src) in self.input[0][self.filled..].iter_mut().zip(samples) {
            *dst = to_f32(src);
        }
        self.filled += samples.len();
        self.finish_block()
    }

    /// Takes `count` zeros (at most [`Self::room`]).
    fn feed_silence(&mut self, count: usize) -> Option<&[f32]> {
        let end = self.filled + count;
        self.input[0][self.filled..end].fill(0.0);
        self.filled = end;
        self.finish_block()
    }

    fn finish_block(&mut self) -> Option<&[f32]> {
        if self.filled < self.block_in {
            return None;
        }
        self.filled = 0;
        match &mut self.fft {
            None => self.output[0].copy_from_slice(&self.input[0]),
            Some(fft) => {
                let result = fft.process_into_buffer(&self.input, &mut self.output, None);
                // Only buffer-size errors are possible, and the buffers are
                // sized from the resampler itself at construction.
                debug_assert!(result.is_ok(), "rubato: {result:?}");
                if result.is_err() {
                    self.output[0].fill(0.0);
                }
            }
        }
        Some(&self.output[0])
    }

    fn reset(&mut self) {
        self.filled = 0;
        if let Some(fft) = &mut self.fft {
            fft.reset();
        }
    }

    /// Delay the filter adds, in output samples.
    fn delay(&self) -> usize {
        self.fft.as_ref().map_or(0, |f| f.output_delay())
    }
}

/// Converts one fixed-size frame per call: `IN` samples at `from` Hz to
/// `OUT` samples at `to` Hz, the same duration.
pub struct FrameResampler<const IN: usize, const OUT: usize> {
    blocks: BlockResampler,
}

impl<const IN: usize, const OUT: usize> std::fmt::Debug for FrameResampler<IN, OUT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameResampler")
            .field("in", &IN)
            .field("out", &OUT)
            .field("block_in", &self.blocks.block_in)
            .finish()
    }
}

/// 20 ms at 48 kHz (decoded Opus) to 20 ms at 16 kHz (an [`AudioFrame`]).
///
/// [`AudioFrame`]: crate::AudioFrame
pub type Downsampler48To16 = FrameResampler<960, 320>;
/// 20 ms at 16 kHz to 20 ms at 48 kHz.
pub type Upsampler16To48 = FrameResampler<320, 960>;

impl FrameResampler<960, 320> {
    /// 48 kHz -> 16 kHz for 20 ms frames.
    pub fn downsample_48k_to_16k() -> Result<Self, ResampleError> {
        Self::new(48_000, 16_000)
    }
}

impl FrameResampler<320, 960> {
    /// 16 kHz -> 48 kHz for 20 ms frames.
    pub fn upsample_16k_to_48k() -> Result<Self, ResampleError> {
        Self::new(16_000, 48_000)
    }
}

impl<const IN: usize, const OUT: usize> FrameResampler<IN, OUT> {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        if from == 0 || to == 0 {
            return Err(ResampleError::ZeroRate { from, to });
        }
        let mismatch = ResampleError::FrameMismatch {
            from,
            to,
            input: IN,
            output: OUT,
        };
        if IN as u64 * u64::from(to) != OUT as u64 * u64::from(from) {
            return Err(mismatch);
        }
        // Split the frame into whole blocks of about BLOCK_MS, so that every
        // call consumes exactly one frame and emits exactly one.
        let g = gcd(u64::from(from), u64::from(to));
        let unit_in = (u64::from(from) / g) as usize;
        let wanted = BlockResampler::default_block_in(from, to);
        let blocks_per_frame = (1..=IN)
            .filter(|&n| IN.is_multiple_of(n) && (IN / n).is_multiple_of(unit_in))
            .min_by_key(|n| (IN / n).abs_diff(wanted))
            .ok_or(mismatch)?;
        Ok(Self {
            blocks: BlockResampler::new(from, to, IN / blocks_per_frame)?,
        })
    }

    /// Converts `input` into `output`.
    pub fn process(&mut self, input: &[i16; IN], output: &mut [i16; OUT]) {
        let mut written = 0;
        for chunk in input.chunks(self.blocks.block_in) {
            if let Some(block) = self.blocks.feed(chunk) {
                for (dst, &src) in output[written..].iter_mut().zip(block) {
                    *dst = to_i16(src);
                }
                written += block.len();
            }
        }
        debug_assert_eq!(written, OUT);
    }

    /// Forgets the filter history (for a new, unrelated stream).
    pub fn reset(&mut self) {
        self.blocks.reset();
    }

    /// Delay the filter adds, in output samples.
    pub fn delay_samples(&self) -> usize {
        self.blocks.delay()
    }
}

/// Converts a stream that arrives in chunks of any length into fixed frames
/// of `OUT` samples at the output rate, buffering what does not yet fill a
/// frame.
pub struct StreamResampler<const OUT: usize> {
    blocks: BlockResampler,
    from: u32,
    to: u32,
    frame: [i16; OUT],
    frame_filled: usize,
    /// Real samples went in since the last flush or reset, so the filter
    /// may still hold some of them.
    unflushed: bool,
}

impl<const OUT: usize> std::fmt::Debug for StreamResampler<OUT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("out", &OUT)
            .field("buffered_in", &self.blocks.filled)
            .field("buffered_out", &self.frame_filled)
            .finish()
    }
}

impl StreamResampler<960> {
    /// Any rate (TTS output) to 20 ms frames at 48 kHz.
    pub fn to_48k(from: u32) -> Result<Self, ResampleError> {
        Self::new(from, 48_000)
    }
}

impl StreamResampler<{ crate::FRAME_SAMPLES }> {
    /// Any rate to 20 ms frames at 16 kHz (the pipeline's rate).
    pub fn to_16k(from: u32) -> Result<Self, ResampleError> {
        Self::new(from, crate::SAMPLE_RATE)
    }
}

impl<const OUT: usize> StreamResampler<OUT> {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        if from == 0 || to == 0 {
            return Err(ResampleError::ZeroRate { from, to });
        }
        Ok(Self {
            blocks: BlockResampler::new(from, to, BlockResampler::default_block_in(from, to))?,
            from,
            to,
            frame: [0; OUT],
            frame_filled: 0,
            unflushed: false,
        })
    }

    /// Input rate in Hz.
    pub fn input_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Feeds `input`, handing each completed frame to `emit`, but never more
    /// than `max_frames` of them: input that would complete a frame beyond
    /// that is left unconsumed. Returns how many samples of `input` were
    /// taken; the caller offers the rest again once it has room.
    pub fn push(
        &mut self,
        input: &[i16],
        max_frames: usize,
        mut emit: impl FnMut(&[i16; OUT]),
    ) -> usize {
        let mut consumed = 0;
        let mut emitted = 0;
        while consumed < input.len() {
            let take = self.blocks.room().min(input.len() - consumed);
            if take == self.blocks.room() {
                let frames = (self.frame_filled + self.blocks.block_out) / OUT;
                if frames > max_frames - emitted {
                    break;
                }
            }
            let block = self.blocks.feed(&input[consumed..consumed + take]);
            consumed += take;
            self.unflushed = true;
            if let Some(block) = block {
                emitted += Self::collect(&mut self.frame, &mut self.frame_filled, block, &mut emit);
            }
        }
        consumed
    }

    /// How many frames [`push`](Self::push) would emit for `samples` more
    /// input, with no frame limit.
    pub fn frames_for(&self, samples: usize) -> usize {
        let blocks = (self.blocks.filled + samples) / self.blocks.block_in;
        (self.frame_filled + blocks * self.blocks.block_out) / OUT
    }

    /// How many frames [`flush`](Self::flush) will emit now.
    pub fn flush_frames(&self) -> usize {
        if !self.unflushed {
            return 0;
        }
        let tail_blocks = if self.blocks.filled == 0 { 1 } else { 2 };
        (self.frame_filled + tail_blocks * self.blocks.block_out).div_ceil(OUT)
    }

    /// Ends the stream: pushes silence through the filter so that the last
    /// real samples come out, then pads the final frame with silence and
    /// emits it. Returns the number of frames emitted (see
    /// [`flush_frames`](Self::flush_frames)); afterwards nothing is buffered.
    pub fn flush(&mut self, mut emit: impl FnMut(&[i16; OUT])) -> usize {
        if !self.unflushed {
            return 0;
        }
        self.unflushed = false;
        let mut emitted = 0;
        // Complete the partial block, then one block more: the filter delay
        // is half a block, so that carries every real sample out.
        let tail_blocks = if self.blocks.filled == 0 { 1 } else { 2 };
        for _ in 0..tail_blocks {
            let room = self.blocks.room();
            if let Some(block) = self.blocks.feed_silence(room) {
                emitted += Self::collect(&mut self.frame, &mut self.frame_filled, block, &mut emit);
            }
        }
        if self.frame_filled > 0 {
            self.frame[self.frame_filled..].fill(0);
            self.frame_filled = 0;
            emit(&self.frame);
            emitted += 1;
        }
        // The next stream starts from a clean filter.
        self.blocks.reset();
        emitted
    }

    /// Drops everything buffered and the filter history (barge-in: what was
    /// queued for the old utterance must not leak into the next).
    pub fn reset(&mut self) {
        self.blocks.reset();
        self.frame_filled = 0;
        self.unflushed = false;
    }

    /// Delay the filter adds, in output samples.
    pub fn delay_samples(&self) -> usize {
        self.blocks.delay()
    }

    fn collect(
        frame: &mut [i16; OUT],
        filled: &mut usize,
        block: &[f32],
        emit: &mut impl FnMut(&[i16; OUT]),
    ) -> usize {
        let mut emitted = 0;
        let mut rest = block;
        while !rest.is_empty() {
            let take = (OUT - *filled).min(rest.len());
            for (dst, &src) in frame[*filled..*filled + take].iter_mut().zip(rest) {
                *dst = to_i16(src);
            }
            *filled += take;
            rest = &rest[take..];
            if *filled == OUT {
                emit(frame);
                *filled = 0;
                emitted += 1;
            }
        }
        emitted
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn sine(rate: u32, hz: f32, amplitude: f32, len: usize) -> Vec<i16> {
        (0..len)
            .map(|i| {
                let t = i as f32 / rate as f32;
                (amplitude * 32767.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len().max(1) as f64).sqrt()
    }

    /// Level of `hz` in `samples` (a single-bin DFT), as an amplitude.
    fn tone_level(samples: &[i16], rate: u32, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in samples.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate);
            re += f64::from(s) * phase.cos();
            im += f64::from(s) * phase.sin();
        }
        2.0 * (re * re + im * im).sqrt() / samples.len() as f64
    }

    fn downsample(signal: &[i16]) -> Vec<i16> {
        let mut down = Downsampler48To16::downsample_48k_to_16k().unwrap();
        let mut out = Vec::new();
        for chunk in signal.chunks_exact(960) {
            let mut frame = [0i16; 320];
            down.process(chunk.try_into().unwrap(), &mut frame);
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn downsampling_keeps_speech_band_tones_and_removes_what_would_alias() {
        let kept = downsample(&sine(48_000, 1000.0, 0.5, 960 * 20));
        // Skip the first frame (filter start-up), measure the rest.
        let level = tone_level(&kept[320..], 16_000, 1000.0) / (0.5 * 32767.0);
        assert!((level - 1.0).abs() < 0.02, "1 kHz gain {level}");

        // 12 kHz is above the 8 kHz Nyquist: it would fold to 4 kHz.
        let folded = downsample(&sine(48_000, 12_000.0, 0.5, 960 * 20));
        let alias = tone_level(&folded[320..], 16_000, 4000.0) / (0.5 * 32767.0);
        assert!(
            alias < 0.01,
            "12 kHz leaks as {alias} at 4 kHz (want < -40 dB)"
        );
    }

    #[test]
    fn upsampling_16k_to_48k_keeps_the_tone() {
        let input = sine(16_000, 440.0, 0.5, 320 * 20);
        let mut up = Upsampler16To48::upsample_16k_to_48k().unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks_exact(320) {
            let mut frame = [0i16; 960];
            up.process(chunk.try_into().unwrap(), &mut frame);
            out.extend_from_slice(&frame);
        }
        let level = tone_level(&out[960..], 48_000, 440.0) / (0.5 * 32767.0);
        assert!((level - 1.0).abs() < 0.02, "440 Hz gain {level}");
        assert_eq!(up.delay_samples(), 120, "2.5 ms at 48 kHz");
    }

    #[test]
    fn frame_sizes_must_match_the_rates() {
        assert_eq!(
            FrameResampler::<960, 300>::new(48_000, 16_000).unwrap_err(),
            ResampleError::FrameMismatch {
                from: 48_000,
                to: 16_000,
                input: 960,
                output: 300
            }
        );
        assert_eq!(
            StreamResampler::<960>::new(0, 48_000).unwrap_err(),
            ResampleError::ZeroRate {
                from: 0,
                to: 48_000
            }
        );
    }

    #[test]
    fn tts_rates_become_48k_frames_whatever_the_chunking() {
        for rate in [16_000u32, 22_050, 24_000, 48_000] {
            let seconds = 1;
            let input = sine(rate, 300.0, 0.4, rate as usize * seconds);
            let mut resampler = StreamResampler::to_48k(rate).unwrap();
            let mut out: Vec<i16> = Vec::new();
            // Odd chunk sizes, as a TTS engine might deliver.
            let mut rest = &input[..];
            let mut sizes = [1usize, 7, 333, 1024, 50].iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).min(rest.len());
                let used = resampler.push(&rest[..n], usize::MAX, |f| out.extend_from_slice(f));
                assert_eq!(used, n);
                rest = &rest[n..];
            }
            let expected_flush = resampler.flush_frames();
            assert_eq!(
                resampler.flush(|f| out.extend_from_slice(f)),
                expected_flush
            );
            assert_eq!(out.len() % 960, 0);
            // One second in: 50 frames plus at most the flushed tail.
            let frames = out.len() / 960;
            assert!(
                (50..=52).contains(&frames),
                "{rate} Hz gave {frames} frames"
            );
            let level = tone_level(&out[960..48_000 - 960], 48_000, 300.0) / (0.4 * 32767.0);
            assert!((level - 1.0).abs() < 0.03, "{rate} Hz: 300 Hz gain {level}");
        }
    }

    #[test]
    fn push_stops_before_the_frame_limit_and_the_rest_can_follow() {
        let input = sine(24_000, 200.0, 0.3, 4800); // 200 ms: 10 frames.
        let mut resampler = StreamResampler::to_48k(24_000).unwrap();
        assert_eq!(resampler.frames_for(input.len()), 10);
        let mut frames = 0;
        let used = resampler.push(&input, 3, |_| frames += 1);
        assert_eq!(frames, 3);
        assert!(used < input.len());
        assert_eq!(resampler.frames_for(input.len() - used), 7);
        let used2 = resampler.push(&input[used..], usize::MAX, |_| frames += 1);
        assert_eq!(used + used2, input.len());
        assert_eq!(frames, 10);
        assert_eq!(resampler.flush_frames(), 1, "the delayed tail");
        resampler.reset();
        assert_eq!(resampler.flush_frames(), 0);
        assert_eq!(resampler.flush(|_| frames += 1), 0);
    }

    #[test]
    fn silence_stays_silent() {
        let out = downsample(&vec![0; 960 * 3]);
        assert_eq!(rms(&out), 0.0);
    }
}
