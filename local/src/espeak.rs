//! espeak-ng, run as a program: IPA phonemes for the Piper voice, and its
//! own formant voice as the fallback when Piper cannot load.
//!
//! A subprocess per call rather than FFI to libespeak-ng: the library keeps
//! one global, non-reentrant state per process and has crashed on odd input
//! before; a child process isolates both (a crash or a hang costs one
//! sentence, never the server), needs no `unsafe` and no build-time
//! headers, and is killed after [`TIMEOUT`]. The cost is a fork/exec per
//! sentence (about 15 ms here, small next to Piper's inference).
//!
//! This module owns the command lines and parsing their output; it knows
//! nothing of sentences or models. Text goes in on stdin, never as an
//! argument, so text that starts with `-` is spoken, not parsed as options.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The program, found on `PATH`.
pub const PROGRAM: &str = "espeak-ng";

/// The longest one call may take before the child is killed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// espeak-ng's default speaking rate, in words per minute.
const DEFAULT_WPM: f32 = 175.0;

/// Why an espeak-ng call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspeakError {
    /// The program is not installed (or not on `PATH`).
    #[error("{PROGRAM} is not installed: {message}; run scripts/setup-deps.sh run")]
    NotInstalled { message: String },
    /// It ran but failed.
    #[error("{PROGRAM} failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    /// It did not finish within [`TIMEOUT`] and was killed.
    #[error("{PROGRAM} did not finish within {} s and was stopped", TIMEOUT.as_secs())]
    TimedOut,
    /// Its output was not what this module expects.
    #[error("{PROGRAM} wrote unexpected output: {message}")]
    BadOutput { message: String },
}

/// Checks that espeak-ng runs and knows `voice` (e.g. `en-us`).
pub fn check(voice: &str) -> Result<(), EspeakError> {
    let clauses = phonemize(voice, "ok")?;
    if clauses.is_empty() {
        return Err(EspeakError::BadOutput {
            message: format!("no phonemes for a test word with voice `{voice}`"),
        });
    }
    Ok(())
}

/// The IPA phonemes of `text`, one string per clause as espeak-ng splits
/// it (at commas, full stops, …; the punctuation itself is not in the
/// output). Words within a clause are separated by spaces.
pub fn phonemize(voice: &str, text: &str) -> Result<Vec<String>, EspeakError> {
    let out = run(&["-q", "--ipa", "-v", voice], text)?;
    let text = String::from_utf8(out).map_err(|err| EspeakError::BadOutput {
        message: format!("phonemes are not UTF-8: {err}"),
    })?;
    Ok(text
        .lines()
        .map(|line| strip_language_switches(line.trim()))
        .filter(|line| !line.is_empty())
        .collect())
}

/// espeak-ng's own voice for `text`: mono PCM16 and its sample rate.
/// `speed` scales the default rate (1.0 normal).
pub fn synthesize(voice: &str, text: &str, speed: f32) -> Result<(Vec<i16>, u32), EspeakError> {
    let wpm = (DEFAULT_WPM * speed).round().clamp(80.0, 450.0) as u32;
    let out = run(&["--stdout", "-v", voice, "-s", &wpm.to_string()], text)?;
    parse_wav(&out)
}

/// espeak-ng marks words it reads in another language as `(fr)…(en)`;
/// the marks are not phonemes.
fn strip_language_switches(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('(') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(')') {
            Some(close)
                if close > 0
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                rest = &after[close + 1..];
            }
            _ => {
                out.push('(');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs espeak-ng with `args`, `input` on stdin; its stdout.
fn run(args: &[&str], input: &str) -> Result<Vec<u8>, EspeakError> {
    let mut child = Command::new(PROGRAM)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| EspeakError::NotInstalled {
            message: err.to_string(),
        })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(EspeakError::BadOutput {
            message: "no pipes to the child".into(),
        });
    };
    // Read both pipes off this thread so neither can fill up and block the
    // child, and so a hung child can be killed after the timeout.
    let (done_tx, done_rx) = mpsc::channel();
    let stdout_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let result = stdout.read_to_end(&mut out).map(|_| out);
        let _ = done_tx.send(());
        result
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    // Text is one sentence, far below a pipe's buffer, but even a long one
    // cannot deadlock: stdout is drained by the reader above.
    let write = stdin
        .write_all(input.as_bytes())
        .and_then(|()| stdin.write_all(b"\n"));
    drop(stdin);
    let finished = done_rx.recv_timeout(TIMEOUT).is_ok();
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait();
    let out = stdout_reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    if !finished {
        return Err(EspeakError::TimedOut);
    }
    let status = status.map_err(|err| EspeakError::Failed {
        status: "unknown".into(),
        stderr: err.to_string(),
    })?;
    if !status.success() {
        return Err(EspeakError::Failed {
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    if let Err(err) = write {
        return Err(EspeakError::Failed {
            status: status.to_string(),
            stderr: format!("writing the text failed: {err}"),
        });
    }
    match out {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(err)) => Err(EspeakError::BadOutput {
            message: err.to_string(),
        }),
        Err(_) => Err(EspeakError::BadOutput {
            message: "the reader thread panicked".into(),
        }),
    }
}

/// Parses the WAV espeak-ng writes to stdout. It streams, so the RIFF and
/// `data` sizes are placeholders (0x7ffff000): the samples are whatever
/// follows the `data` header. A general WAV reader rejects that as
/// truncated, hence this small one.
fn parse_wav(bytes: &[u8]) -> Result<(Vec<i16>, u32), EspeakError> {
    let bad = |message: &str| EspeakError::BadOutput {
        message: format!("WAV: {message}"),
    };
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    let mut pos = 12;
    let mut format: Option<(u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err(bad("short fmt chunk"));
            }
            let field = |at: usize| u16::from_le_bytes([bytes[body + at], bytes[body + at + 1]]);
            let rate = u32::from_le_bytes([
                bytes[body + 4],
                bytes[body + 5],
                bytes[body + 6],
                bytes[body + 7],
            ]);
            format = Some((field(2), rate, field(14)));
        } else if id == b"data" {
            let Some((channels, rate, bits)) = format else {
                return Err(bad("data before fmt"));
            };
            if channels != 1 || bits != 16 {
                return Err(bad(&format!("{channels} channels of {bits}-bit samples")));
            }
            let end = body.saturating_add(size).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                .collect();
            return Ok((samples, rate));
        }
        pos = body.saturating_add(size + (size & 1));
    }
    Err(bad("no data chunk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(data_size: u32, samples: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&data_size.wrapping_add(36).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&22_050u32.to_le_bytes());
        out.extend_from_slice(&44_100u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_size.to_le_bytes());
        for s in samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    #[test]
    fn a_streamed_wav_with_placeholder_sizes_parses() {
        let bytes = wav(0x7fff_f000, &[1, -2, 300]);
        assert_eq!(parse_wav(&bytes), Ok((vec![1, -2, 300], 22_050)));
    }

    #[test]
    fn an_exact_wav_parses_and_garbage_does_not() {
        assert_eq!(parse_wav(&wav(4, &[5, 6])), Ok((vec![5, 6], 22_050)));
        assert!(parse_wav(b"not a wav at all").is_err());
        assert!(parse_wav(&wav(4, &[5, 6])[..30]).is_err());
    }

    #[test]
    fn language_switch_marks_are_removed_and_other_parentheses_kept() {
        assert_eq!(strip_language_switches("lə (fr)kafe(en) ɪz"), "lə kafe ɪz");
        assert_eq!(strip_language_switches("a (b c) d"), "a (b c) d");
        assert_eq!(strip_language_switches("(unclosed"), "(unclosed");
    }

    #[test]
    fn espeak_phonemizes_clauses_and_speaks() {
        let clauses = phonemize("en-us", "Well, hello world. -v is text").expect("espeak-ng runs");
        assert_eq!(clauses.len(), 3, "{clauses:?}");
        assert!(clauses[1].contains("wˈɜːld"), "{clauses:?}");
        let (samples, rate) = synthesize("en-us", "Hello world.", 1.0).expect("espeak-ng speaks");
        assert_eq!(rate, 22_050);
        assert!(
            samples.len() > rate as usize / 2,
            "{} samples",
            samples.len()
        );
        assert!(samples.iter().any(|s| s.unsigned_abs() > 1000));
    }
}
