//! Latency histograms per operation and the final report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies and failures of one kind of request.
#[derive(Debug)]
pub struct OpStats {
    latency_us: Histogram<u64>,
    /// Failures by reason (`status 429`, `connect: …`).
    pub failures: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self::new()
    }
}

impl OpStats {
    pub fn new() -> Self {
        // 1 µs to 60 s at 3 significant digits: bounded, no growth per sample.
        #[allow(clippy::expect_used)]
        let latency_us = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self {
            latency_us,
            failures: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.latency_us.record(us);
    }

    pub fn fail(&mut self, reason: String) {
        *self.failures.entry(reason).or_default() += 1;
    }

    pub fn merge(&mut self, other: &OpStats) {
        let _ = self.latency_us.add(&other.latency_us);
        for (reason, n) in &other.failures {
            *self.failures.entry(reason.clone()).or_default() += n;
        }
    }

    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn summary(&self, elapsed: Duration) -> OpSummary {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        OpSummary {
            ok: self.ok(),
            failed: self.failures.values().sum(),
            per_second: self.ok() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: self.latency_us.max() as f64 / 1000.0,
            failures: self.failures.clone(),
        }
    }
}

/// What one operation did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failures: BTreeMap<String, u64>,
}

/// The result of a run, printed as a table and written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub concurrency: usize,
    pub elapsed_s: f64,
    pub operations: BTreeMap<String, OpSummary>,
    /// What a voice run did beyond latencies; absent for REST runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceFigures>,
}

/// Counts of a voice run, the providers' configured latency and the
/// server's resources.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VoiceFigures {
    pub callers: usize,
    /// Callers that cut into every reply they got.
    pub barge_in_callers: usize,
    /// Callers not started because `max_duration` had passed.
    pub callers_not_started: usize,
    pub turns_planned: u64,
    pub turns_completed: u64,
    /// Turns never started: the caller gave up after a failure, or time ran out.
    pub turns_not_run: u64,
    pub barge_ins_sent: u64,
    /// `assistant.interrupted` events that answered a barge-in.
    pub barge_ins_observed: u64,
    pub audio_frames: u64,
    /// Audio frames that arrived after their reply's `assistant.done`, before
    /// the next reply's first text (the server sends text before audio, so
    /// they cannot be the next reply's).
    pub late_frames_after_done: u64,
    /// Audio frames of a cut reply that arrived after its
    /// `assistant.interrupted`.
    pub late_frames_after_interrupted: u64,
    pub turns_with_late_audio: u64,
    /// The fake providers' settings and the requests they answered during
    /// the run (when their URL was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<ProviderFigures>,
    /// The server process (when its pid was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerResources>,
    /// The load generator's own process (its CPU is what the callers'
    /// transport stack cost; `rss_per_caller_kib` is per caller too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_generator: Option<ServerResources>,
    /// What the WebRTC callers counted (WebRTC runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtc: Option<RtcFigures>,
    /// Every reply's first audio, by when it came: latency over the run.
    pub first_audio_over_time: Vec<LatencyPoint>,
}

/// RTP and data channel counts of a WebRTC run, summed over callers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RtcFigures {
    /// Packets of the server's audio received, and their Opus payload bytes.
    pub packets_received: u64,
    pub payload_bytes_received: u64,
    /// Packets missing from the sequence numbers: lost on the way, or never
    /// sent (the server numbers every packet it sends).
    pub packets_missing: u64,
    /// Packets that arrived after a later one, or twice.
    pub packets_out_of_order: u64,
    /// Packets received but let go by a caller that did not read them in
    /// time (the load generator's fault, not the server's).
    pub packets_dropped_by_callers: u64,
    /// Whether callers decoded the audio (`--decode-audio`).
    pub decoded: bool,
    pub frames_decoded: u64,
    pub decode_errors: u64,
    /// JSON messages received on the `events` data channel.
    pub events_received: u64,
    /// Data channel messages that were not JSON.
    pub invalid_events: u64,
}

/// The fake providers' configured latency, to read the server's own share
/// off the client-side figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProviderFigures {
    pub llm_delay_ms: u64,
    pub llm_token_gap_ms: u64,
    pub tts_delay_ms: u64,
    pub ms_per_char: u32,
    pub chat_requests: u64,
    pub speech_requests: u64,
}

/// CPU and memory of the server process over a run, sampled once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerResources {
    pub pid: u32,
    pub samples: usize,
    /// Resident memory at the start of the run.
    pub baseline_rss_mib: f64,
    pub peak_rss_mib: f64,
    /// (peak − baseline) / callers.
    pub rss_per_caller_kib: f64,
    /// CPU time over wall time, all threads (200 % = two cores busy).
    pub mean_cpu_percent: f64,
    /// The busiest sampling interval.
    pub max_cpu_percent: f64,
    /// One point per sampling interval, for charts.
    pub timeline: Vec<ResourcePoint>,
}

/// One latency sample at a moment of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyPoint {
    /// Seconds into the run.
    pub t_s: f64,
    pub ms: f64,
}

/// The process over one sampling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ResourcePoint {
    /// Seconds from the first sample to the end of the interval.
    pub t_s: f64,
    /// CPU over the interval (200 % = two cores busy).
    pub cpu_percent: f64,
    /// Resident memory at the end of the interval.
    pub rss_mib: f64,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.operations.values().map(|o| o.failed).sum()
    }

    /// A terminal table, one line per operation.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} · {} clients · {:.1} s\n{:<18} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
            self.scenario,
            self.concurrency,
            self.elapsed_s,
            "operation",
            "ok",
            "failed",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        for (name, op) in &self.operations {
            out.push_str(&format!(
                "{:<18} {:>8} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                name, op.ok, op.failed, op.per_second, op.p50_ms, op.p90_ms, op.p99_ms, op.max_ms
            ));
            for (reason, n) in &op.failures {
                out.push_str(&format!("    {n} × {reason}\n"));
            }
        }
        if let Some(voice) = &self.voice {
            out.push_str(&self.voice_lines(voice));
        }
        out
    }

    fn voice_lines(&self, v: &VoiceFigures) -> String {
        let mut out = format!(
            "callers {} ({} barging in, {} not started) · turns {}/{} completed, {} not run · \
             barge-ins {} sent, {} interrupted · {} audio frames ({:.1} s)\n",
            v.callers,
            v.barge_in_callers,
            v.callers_not_started,
            v.turns_completed,
            v.turns_planned,
            v.turns_not_run,
            v.barge_ins_sent,
            v.barge_ins_observed,
            v.audio_frames,
            v.audio_frames as f64 * 0.02,
        );
        if v.late_frames_after_done + v.late_frames_after_interrupted > 0 {
            out.push_str(&format!(
                "late audio: {} frames after their reply's assistant.done and {} after its \
                 assistant.interrupted, in {} turns (not counted as the next reply's first audio)\n",
                v.late_frames_after_done, v.late_frames_after_interrupted, v.turns_with_late_audio,
            ));
        }
        if let Some(p) = &v.providers {
            out.push_str(&format!(
                "fake providers: LLM first byte {} ms (+{} ms/word), TTS first byte {} ms, \
                 {} ms of speech per character; {} chat + {} speech requests\n",
                p.llm_delay_ms,
                p.llm_token_gap_ms,
                p.tts_delay_ms,
                p.ms_per_char,
                p.chat_requests,
                p.speech_requests,
            ));
            if let Some(first_audio) = self
                .operations
                .get(crate::voice::FIRST_AUDIO)
                .filter(|o| o.ok > 0)
            {
                let providers = (p.llm_delay_ms + p.tts_delay_ms) as f64;
                out.push_str(&format!(
                    "server-added first audio (first-audio − LLM − TTS delays): \
                     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms\n",
                    first_audio.p50_ms - providers,
                    first_audio.p90_ms - providers,
                    first_audio.p99_ms - providers,
                ));
            }
        }
        if let Some(r) = &v.rtc {
            out.push_str(&format!(
                "rtp: {} packets ({} KiB of Opus) received, {} missing from the sequence, \
                 {} out of order, {} dropped unread by the callers; {} events on the data \
                 channel ({} not JSON)",
                r.packets_received,
                r.payload_bytes_received / 1024,
                r.packets_missing,
                r.packets_out_of_order,
                r.packets_dropped_by_callers,
                r.events_received,
                r.invalid_events,
            ));
            if r.decoded {
                out.push_str(&format!(
                    "; {} frames decoded, {} decode errors",
                    r.frames_decoded, r.decode_errors
                ));
            }
            out.push('\n');
        }
        for (who, s) in [("server", &v.server), ("load generator", &v.load_generator)] {
            if let Some(s) = s {
                out.push_str(&format!(
                    "{who} pid {}: RSS peak {:.1} MiB (start {:.1} MiB, +{:.0} KiB per caller), \
                     CPU mean {:.0} % (busiest second {:.0} %) over {} samples\n",
                    s.pid,
                    s.peak_rss_mib,
                    s.baseline_rss_mib,
                    s.rss_per_caller_kib,
                    s.mean_cpu_percent,
                    s.max_cpu_percent,
                    s.samples,
                ));
            }
        }
        out
    }
}
