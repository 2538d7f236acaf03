//! Whisper's input features: the 80-bin log-mel spectrogram of 16 kHz audio
//! (400-sample Hann window, 160-sample hop, Slaney mel filters), computed
//! exactly as `whisper/audio.py` does for audio zero-padded to the window.
//!
//! The DFT is a matrix product with a precomputed cos/sin basis (n_fft 400
//! is not a power of two, and a matmul on the frames is faster than a
//! scalar FFT here). Only frames that overlap the audio are transformed:
//! the rest are the padding's known value.

use candle_core::{Device, Tensor};

/// Audio sample rate the model was trained on.
pub const SAMPLE_RATE: usize = 16_000;
/// STFT window length.
pub const N_FFT: usize = 400;
/// STFT hop: one mel frame per 10 ms.
pub const HOP: usize = 160;
/// Mel bins.
pub const N_MELS: usize = 80;
/// Frequency bins of a real `N_FFT`-point DFT.
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// `log10` of the clamp floor: the value of a silent (all-zero) frame.
const LOG_FLOOR: f32 = -10.0;

/// Slaney-style mel filters (librosa's `filters.mel` with `htk=False`,
/// `norm="slaney"`, `fmin=0`, `fmax=sr/2`), row-major `[n_mels][n_fft/2+1]`.
pub fn slaney_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    let fmax = sample_rate as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| i as f64 * fmax / (n_freqs - 1) as f64)
        .collect();
    let max_mel = hz_to_mel(fmax);
    let mel_freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (left, center, right) = (mel_freqs[m], mel_freqs[m + 1], mel_freqs[m + 2]);
        // Slaney normalization: each filter has unit area in Hz.
        let enorm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - left) / (center - left);
            let upper = (right - f) / (right - center);
            let w = lower.min(upper).max(0.0);
            weights[m * n_freqs + k] = (w * enorm) as f32;
        }
    }
    weights
}

/// Hz to mel on the Slaney scale: linear below 1 kHz, logarithmic above.
pub fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / log_step
    } else {
        hz / f_sp
    }
}

/// The inverse of [`hz_to_mel`].
pub fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (log_step * (mel - min_log_mel)).exp()
    } else {
        mel * f_sp
    }
}

/// Computes log-mel features; built once and shared.
#[derive(Debug)]
pub struct LogMel {
    /// Periodic Hann window (torch's `hann_window(400)`).
    window: Vec<f32>,
    /// `[N_FFT, 2 * N_FREQS]`: cos columns, then sin columns.
    dft_basis: Tensor,
    /// `[N_FREQS, N_MELS]`: the filters, transposed for the product.
    filters_t: Tensor,
}

impl LogMel {
    pub fn new() -> candle_core::Result<Self> {
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let mut basis = vec![0f32; N_FFT * 2 * N_FREQS];
        for n in 0..N_FFT {
            for k in 0..N_FREQS {
                // (n * k) mod N_FFT keeps the angle small and exact.
                let angle = 2.0 * std::f64::consts::PI * ((n * k) % N_FFT) as f64 / N_FFT as f64;
                basis[n * 2 * N_FREQS + k] = angle.cos() as f32;
                basis[n * 2 * N_FREQS + N_FREQS + k] = angle.sin() as f32;
            }
        }
        let dft_basis = Tensor::from_vec(basis, (N_FFT, 2 * N_FREQS), &Device::Cpu)?;
        let filters = slaney_filters(SAMPLE_RATE, N_FFT, N_MELS);
        let filters_t = Tensor::from_vec(filters, (N_MELS, N_FREQS), &Device::Cpu)?
            .t()?
            .contiguous()?;
        Ok(Self {
            window,
            dft_basis,
            filters_t,
        })
    }

    /// The features of `pcm` (16 kHz, roughly -1..1) followed by silence,
    /// `[N_MELS, n_frames]`, normalized as Whisper expects: `log10`,
    /// floored at (max - 8), then `(x + 4) / 4`. Frame `i` is centred on
    /// sample `i * HOP`, with reflection before the first sample.
    pub fn compute(&self, pcm: &[f32], n_frames: usize) -> candle_core::Result<Tensor> {
        let log_mel = self.log10_mel(pcm, n_frames)?;
        let max = log_mel.iter().copied().fold(LOG_FLOOR, f32::max);
        let floor = max - 8.0;
        // Transposed to [mel][frame] while normalizing.
        let mut features = vec![0f32; N_MELS * n_frames];
        for (frame, row) in log_mel.chunks_exact(N_MELS).enumerate() {
            for (mel, &value) in row.iter().enumerate() {
                features[mel * n_frames + frame] = (value.max(floor) + 4.0) / 4.0;
            }
        }
        Tensor::from_vec(features, (N_MELS, n_frames), &Device::Cpu)
    }

    /// `log10(max(mel power, 1e-10))`, row-major `[frame][mel]`.
    fn log10_mel(&self, pcm: &[f32], n_frames: usize) -> candle_core::Result<Vec<f32>> {
        let half = N_FFT / 2;
        // Frames whose window reaches into the audio; later ones are silent.
        let audio_frames = pcm.len().div_ceil(HOP).saturating_add(2).min(n_frames);
        let mut out = vec![LOG_FLOOR; n_frames * N_MELS];
        if audio_frames == 0 || pcm.is_empty() {
            return Ok(out);
        }
        let sample = |i: isize| -> f32 {
            // Reflect (without repeating the edge) before the start, as
            // torch.stft(center=True, pad_mode="reflect") does; after the end
            // the padded signal is zeros.
            let i = if i < 0 { -i } else { i } as usize;
            pcm.get(i).copied().unwrap_or(0.0)
        };
        let mut frames = vec![0f32; audio_frames * N_FFT];
        for (f, frame) in frames.chunks_exact_mut(N_FFT).enumerate() {
            let start = (f * HOP) as isize - half as isize;
            for (n, value) in frame.iter_mut().enumerate() {
                *value = sample(start + n as isize) * self.window[n];
            }
        }
        let frames = Tensor::from_vec(frames, (audio_frames, N_FFT), &Device::Cpu)?;
        let spectrum = frames.matmul(&self.dft_basis)?;
        let re = spectrum.narrow(1, 0, N_FREQS)?;
        let im = spectrum.narrow(1, N_FREQS, N_FREQS)?;
        let power = (re.sqr()? + im.sqr()?)?;
        let mel = power.matmul(&self.filters_t)?;
        let mel = mel.flatten_all()?.to_vec1::<f32>()?;
        for (slot, value) in out.iter_mut().zip(mel) {
            *slot = value.max(1e-10).log10();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_have_the_expected_shape_and_area() {
        let filters = slaney_filters(SAMPLE_RATE, N_FFT, N_MELS);
        assert_eq!(filters.len(), N_MELS * N_FREQS);
        assert!(filters.iter().all(|w| *w >= 0.0));
        let bin_hz = SAMPLE_RATE as f32 / N_FFT as f32;
        for (m, row) in filters.chunks_exact(N_FREQS).enumerate() {
            // Slaney normalization: unit area (sum × bin width), within the
            // error of sampling a narrow triangle on 40 Hz bins.
            let area = row.iter().sum::<f32>() * bin_hz;
            assert!((0.5..1.5).contains(&area), "filter {m} has area {area}");
        }
        // The first filter spans 0..74.5 Hz, peaking at 37.2 Hz; bin 1 (40 Hz)
        // is on its falling edge: 2 / 74.5 × (74.5 - 40) / 37.2 ≈ 0.02486.
        assert!((filters[1] - 0.02486).abs() < 1e-3, "{}", filters[1]);
        // Centres rise monotonically.
        let peaks: Vec<usize> = filters
            .chunks_exact(N_FREQS)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (k, &w)| if w > best.1 { (k, w) } else { best },
                    )
                    .0
            })
            .collect();
        assert!(peaks.windows(2).all(|p| p[0] <= p[1]), "{peaks:?}");
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 300.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn a_pure_tone_lands_in_its_mel_bin() {
        let mel = LogMel::new().expect("basis");
        let hz = 1000.0f64;
        let pcm: Vec<f32> = (0..SAMPLE_RATE)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / SAMPLE_RATE as f64).sin())
                    as f32
            })
            .collect();
        let features = mel.compute(&pcm, 200).expect("features");
        assert_eq!(features.dims(), &[N_MELS, 200]);
        let frame_50: Vec<f32> = features
            .narrow(1, 50, 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("frame");
        let loudest = frame_50
            .iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |best, (m, &v)| if v > best.1 { (m, v) } else { best },
            )
            .0;
        // The mel bin whose centre is nearest to 1 kHz.
        let filters = slaney_filters(SAMPLE_RATE, N_FFT, N_MELS);
        let max_mel = hz_to_mel(8000.0);
        let nearest = (0..N_MELS)
            .min_by(|&a, &b| {
                let centre = |m: usize| mel_to_hz(max_mel * (m + 1) as f64 / (N_MELS + 1) as f64);
                (centre(a) - hz).abs().total_cmp(&(centre(b) - hz).abs())
            })
            .expect("bins");
        assert!(
            loudest.abs_diff(nearest) <= 1,
            "loudest {loudest}, expected {nearest}"
        );
        assert!(filters[nearest * N_FREQS + 25] > 0.0, "1 kHz is bin 25");
        // Past the audio, frames are the floor: (max - 8 + 4) / 4.
        let silent = features
            .narrow(1, 199, 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("frame");
        let max = frame_50.iter().copied().fold(f32::MIN, f32::max);
        assert!(silent.iter().all(|v| (v - (max - 2.0)).abs() < 0.05));
    }
}
