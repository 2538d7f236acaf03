//! The pipeline's unit of audio: 20 ms of 16 kHz mono signed 16-bit PCM.
//! A frame is a fixed-size array, so passing one around never allocates.

/// Samples per second inside the pipeline (speech models want 16 kHz).
pub const SAMPLE_RATE: u32 = 16_000;
/// Duration of one frame.
pub const FRAME_MS: u32 = 20;
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE * FRAME_MS / 1000) as usize;

/// dBFS reported for digital silence (log of zero is not a number).
pub const SILENCE_DBFS: f32 = -96.0;

/// One 20 ms frame of 16 kHz mono PCM16.
#[derive(Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub samples: [i16; FRAME_SAMPLES],
}

impl std::fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioFrame")
            .field("dbfs", &self.dbfs())
            .finish()
    }
}

impl Default for AudioFrame {
    fn default() -> Self {
        Self::silence()
    }
}

/// Why bytes could not become a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is exactly 640 bytes of little-endian PCM16.
    #[error("an audio frame is {expected} bytes (20 ms of 16 kHz mono PCM16), got {got}")]
    WrongLength { expected: usize, got: usize },
}

impl AudioFrame {
    pub const BYTES: usize = FRAME_SAMPLES * 2;

    pub fn silence() -> Self {
        Self {
            samples: [0; FRAME_SAMPLES],
        }
    }

    /// Reads little-endian PCM16 (the WebSocket wire format).
    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() != Self::BYTES {
            return Err(FrameError::WrongLength {
                expected: Self::BYTES,
                got: bytes.len(),
            });
        }
        let mut frame = Self::silence();
        for (sample, pair) in frame.samples.iter_mut().zip(bytes.chunks_exact(2)) {
            *sample = i16::from_le_bytes([pair[0], pair[1]]);
        }
        Ok(frame)
    }

    /// Writes little-endian PCM16 into `out` (exactly [`Self::BYTES`] long).
    pub fn write_le_bytes(&self, out: &mut [u8; Self::BYTES]) {
        for (pair, sample) in out.chunks_exact_mut(2).zip(self.samples.iter()) {
            pair.copy_from_slice(&sample.to_le_bytes());
        }
    }

    /// Root mean square, 0.0 to 1.0 of full scale.
    pub fn rms(&self) -> f32 {
        let sum: f64 = self
            .samples
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum();
        ((sum / FRAME_SAMPLES as f64).sqrt() / 32768.0) as f32
    }

    /// Level in dBFS (0 is a full-scale square wave; silence is
    /// [`SILENCE_DBFS`]).
    pub fn dbfs(&self) -> f32 {
        let rms = self.rms();
        if rms <= 0.0 {
            SILENCE_DBFS
        } else {
            (20.0 * rms.log10()).max(SILENCE_DBFS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amplitude: f32, hz: f32) -> AudioFrame {
        let mut frame = AudioFrame::silence();
        for (i, s) in frame.samples.iter_mut().enumerate() {
            let t = i as f32 / SAMPLE_RATE as f32;
            *s = (amplitude * 32767.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16;
        }
        frame
    }

    #[test]
    fn a_frame_is_320_samples_and_640_bytes() {
        assert_eq!(FRAME_SAMPLES, 320);
        assert_eq!(AudioFrame::BYTES, 640);
    }

    #[test]
    fn bytes_round_trip_and_wrong_sizes_are_refused() {
        let frame = sine(0.5, 440.0);
        let mut bytes = [0u8; AudioFrame::BYTES];
        frame.write_le_bytes(&mut bytes);
        assert_eq!(AudioFrame::from_le_bytes(&bytes), Ok(frame));
        assert_eq!(
            AudioFrame::from_le_bytes(&bytes[..639]),
            Err(FrameError::WrongLength {
                expected: 640,
                got: 639
            })
        );
    }

    #[test]
    fn levels_match_the_textbook_values() {
        assert_eq!(AudioFrame::silence().dbfs(), SILENCE_DBFS);
        // A full-scale sine has RMS 1/sqrt(2): -3.01 dBFS; half scale -9.03.
        assert!((sine(1.0, 500.0).dbfs() + 3.01).abs() < 0.05);
        assert!((sine(0.5, 500.0).dbfs() + 9.03).abs() < 0.05);
    }
}
