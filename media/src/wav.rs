//! WAV files in and out as mono PCM16, for tests, fixtures and offline TTS
//! output (espeak-ng writes 22,050 Hz WAV).
//!
//! This module owns the conversion from whatever WAV layout a file has
//! (8/16/24/32-bit integer or 32-bit float, any channel count) to mono
//! `i16`, and from a WAV at any rate to 16 kHz [`AudioFrame`]s. It is not
//! on the realtime path: it reads whole files into memory.

use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::frame::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE};
use crate::resample::{ResampleError, StreamResampler};

/// Why a WAV could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file could not be opened or read, or is not a valid WAV.
    #[error("cannot read the WAV")]
    Read(#[source] hound::Error),
    /// The file could not be created or written.
    #[error("cannot write the WAV")]
    Write(#[source] hound::Error),
    /// A sample layout this module does not convert.
    #[error("unsupported WAV samples: {bits}-bit {format}")]
    UnsupportedFormat { bits: u16, format: &'static str },
    /// The file's sample rate cannot be converted to 16 kHz.
    #[error("cannot resample the WAV")]
    Resample(#[from] ResampleError),
}

/// Mono PCM16 audio and its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonoPcm {
    pub sample_rate: u32,
    pub samples: Vec<i16>,
}

impl MonoPcm {
    /// Duration in milliseconds (rounded down).
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(self.sample_rate.max(1))
    }
}

/// Reads a WAV file, mixing channels down to mono.
pub fn read_mono(path: impl AsRef<Path>) -> Result<MonoPcm, WavError> {
    let reader = hound::WavReader::open(path).map_err(WavError::Read)?;
    decode(reader)
}

/// Reads WAV bytes from any reader, mixing channels down to mono.
pub fn read_mono_from(reader: impl Read) -> Result<MonoPcm, WavError> {
    let reader = hound::WavReader::new(reader).map_err(WavError::Read)?;
    decode(reader)
}

fn decode<R: Read>(reader: hound::WavReader<R>) -> Result<MonoPcm, WavError> {
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<i32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let shift = i32::from(bits) - 16;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| if shift >= 0 { v >> shift } else { v << -shift }))
                .collect::<Result<_, _>>()
                .map_err(WavError::Read)?
        }
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i32))
            .collect::<Result<_, _>>()
            .map_err(WavError::Read)?,
        (format, bits) => {
            return Err(WavError::UnsupportedFormat {
                bits,
                format: match format {
                    hound::SampleFormat::Int => "integer",
                    hound::SampleFormat::Float => "float",
                },
            });
        }
    };
    let samples = interleaved
        .chunks(channels)
        .map(|frame| {
            let sum: i64 = frame.iter().map(|&s| i64::from(s)).sum();
            (sum / frame.len() as i64).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
        })
        .collect();
    Ok(MonoPcm {
        sample_rate: spec.sample_rate,
        samples,
    })
}

fn spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Writes mono PCM16 as a 16-bit WAV file.
pub fn write_mono(
    path: impl AsRef<Path>,
    sample_rate: u32,
    samples: &[i16],
) -> Result<(), WavError> {
    let writer = hound::WavWriter::create(path, spec(sample_rate)).map_err(WavError::Write)?;
    encode(writer, samples)
}

/// Writes mono PCM16 as 16-bit WAV bytes into any seekable writer.
pub fn write_mono_to(
    out: impl Write + Seek,
    sample_rate: u32,
    samples: &[i16],
) -> Result<(), WavError> {
    let writer = hound::WavWriter::new(out, spec(sample_rate)).map_err(WavError::Write)?;
    encode(writer, samples)
}

fn encode<W: Write + Seek>(
    mut writer: hound::WavWriter<W>,
    samples: &[i16],
) -> Result<(), WavError> {
    let mut sixteen = writer.get_i16_writer(samples.len() as u32);
    for &s in samples {
        sixteen.write_sample(s);
    }
    sixteen.flush().map_err(WavError::Write)?;
    writer.finalize().map_err(WavError::Write)
}

/// Cuts audio at any rate into 16 kHz frames, resampling when needed; the
/// last frame is padded with silence.
pub fn to_frames_16k(pcm: &MonoPcm) -> Result<Vec<AudioFrame>, WavError> {
    let mut frames = Vec::with_capacity(pcm.samples.len() / FRAME_SAMPLES + 2);
    if pcm.sample_rate == SAMPLE_RATE {
        for chunk in pcm.samples.chunks(FRAME_SAMPLES) {
            let mut frame = AudioFrame::silence();
            frame.samples[..chunk.len()].copy_from_slice(chunk);
            frames.push(frame);
        }
        return Ok(frames);
    }
    let mut resampler = StreamResampler::to_16k(pcm.sample_rate)?;
    let mut keep = |samples: &[i16; FRAME_SAMPLES]| frames.push(AudioFrame { samples: *samples });
    resampler.push(&pcm.samples, usize::MAX, &mut keep);
    resampler.flush(&mut keep);
    Ok(frames)
}

/// Reads a WAV file as 16 kHz frames (see [`to_frames_16k`]).
pub fn read_frames_16k(path: impl AsRef<Path>) -> Result<Vec<AudioFrame>, WavError> {
    to_frames_16k(&read_mono(path)?)
}

/// Writes 16 kHz frames as one WAV file.
pub fn write_frames_16k(path: impl AsRef<Path>, frames: &[AudioFrame]) -> Result<(), WavError> {
    let samples: Vec<i16> = frames.iter().flat_map(|f| f.samples).collect();
    write_mono(path, SAMPLE_RATE, &samples)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Cursor;

    use super::*;
    use crate::resample::tests::sine;

    fn wav_bytes(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<&mut Cursor<Vec<u8>>>),
    ) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
        write(&mut writer);
        writer.finalize().unwrap();
        cursor.into_inner()
    }

    #[test]
    fn mono_pcm16_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("palaver-media-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        let samples = sine(22_050, 440.0, 0.5, 22_050 / 2);
        write_mono(&path, 22_050, &samples).unwrap();
        let back = read_mono(&path).unwrap();
        assert_eq!(back.sample_rate, 22_050);
        assert_eq!(back.samples, samples);
        assert_eq!(back.duration_ms(), 500);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stereo_24_bit_and_float_files_become_mono_pcm16() {
        let stereo24 = wav_bytes(
            hound::WavSpec {
                channels: 2,
                sample_rate: 48_000,
                bits_per_sample: 24,
                sample_format: hound::SampleFormat::Int,
            },
            |w| {
                for _ in 0..10 {
                    w.write_sample(0x40_0000i32).unwrap(); // half scale
                    w.write_sample(0i32).unwrap();
                }
            },
        );
        let pcm = read_mono_from(Cursor::new(stereo24)).unwrap();
        assert_eq!(
            pcm.samples,
            vec![0x2000; 10],
            "(half + 0) / 2 = quarter scale"
        );

        let float = wav_bytes(
            hound::WavSpec {
                channels: 1,
                sample_rate: 16_000,
                bits_per_sample: 32,
                sample_format: hound::SampleFormat::Float,
            },
            |w| {
                for v in [0.5f32, -1.5, 1.0] {
                    w.write_sample(v).unwrap();
                }
            },
        );
        let pcm = read_mono_from(Cursor::new(float)).unwrap();
        assert_eq!(pcm.samples, vec![16384, -32767, 32767]);
    }

    #[test]
    fn a_22050_hz_wav_becomes_16k_frames_of_the_same_duration() {
        let pcm = MonoPcm {
            sample_rate: 22_050,
            samples: sine(22_050, 300.0, 0.5, 22_050), // 1 s
        };
        let mut bytes = Cursor::new(Vec::new());
        write_mono_to(&mut bytes, pcm.sample_rate, &pcm.samples).unwrap();
        let frames =
            to_frames_16k(&read_mono_from(Cursor::new(bytes.into_inner())).unwrap()).unwrap();
        assert!((50..=52).contains(&frames.len()), "{} frames", frames.len());
        // A half-scale sine is -9 dBFS, before and after resampling.
        assert!(
            (frames[25].dbfs() + 9.03).abs() < 0.3,
            "{}",
            frames[25].dbfs()
        );

        let at_16k = MonoPcm {
            sample_rate: 16_000,
            samples: vec![7; 330],
        };
        let frames = to_frames_16k(&at_16k).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].samples[9], 7);
        assert_eq!(frames[1].samples[10], 0);
    }

    #[test]
    fn garbage_is_a_read_error() {
        let err = read_mono_from(Cursor::new(b"not a wav file".to_vec())).unwrap_err();
        assert!(matches!(err, WavError::Read(_)));
    }
}
