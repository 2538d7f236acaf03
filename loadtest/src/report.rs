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
            histogram: self.buckets(),
        }
    }

    /// Counts per log-scale bucket (1-2-5 steps, [`BUCKET_EDGES_US`]), from
    /// the first bucket with a count to the last; empty between them.
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut counts = [0u64; BUCKET_EDGES_US.len()];
        for value in self.latency_us.iter_recorded() {
            // The bucket's lowest value: a latency on an edge stays below it.
            let us = self.latency_us.lowest_equivalent(value.value_iterated_to());
            let index = BUCKET_EDGES_US
                .iter()
                .position(|edge| us <= *edge)
                .unwrap_or(BUCKET_EDGES_US.len() - 1);
            counts[index] += value.count_at_value();
        }
        let (Some(first), Some(last)) = (
            counts.iter().position(|n| *n > 0),
            counts.iter().rposition(|n| *n > 0),
        ) else {
            return Vec::new();
        };
        (first..=last)
            .map(|i| Bucket {
                le_ms: BUCKET_EDGES_US[i] as f64 / 1000.0,
                count: counts[i],
            })
            .collect()
    }
}

/// Upper edges of the histogram buckets, in µs: 1, 2, 5 per decade from
/// 1 µs to 100 s (every recorded latency fits: they are capped at 60 s).
pub const BUCKET_EDGES_US: [u64; 25] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

/// One histogram bucket: latencies above the previous bucket's edge, up to
/// and including `le_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
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
    /// Latency counts per log-scale bucket ([`OpStats::buckets`]).
    pub histogram: Vec<Bucket>,
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
    /// What a chat run did beyond latencies (chat and mixed runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatFigures>,
}

/// Counts of a chat run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatFigures {
    pub users: usize,
    pub rooms: usize,
    /// Creating the users and rooms and connecting every socket.
    pub setup_s: f64,
    pub messages_sent: u64,
    pub messages_acked: u64,
    /// Messages sent per second while sending.
    pub messages_per_second: f64,
    /// `message.new` events owed to the other members of each message's room.
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// Owed but not received by the end of the drain.
    pub deliveries_missing: u64,
    /// `message.new` per second over the run, at all users together.
    pub deliveries_per_second: f64,
    /// `message.new` of a user's own message on its own socket.
    pub own_echoes: u64,
    pub typing_sent: u64,
    /// `typing` events received.
    pub typing_events: u64,
    pub presence_sent: u64,
    /// `presence` events received.
    pub presence_events: u64,
    /// The server process (when its pid was given, chat-only runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerResources>,
    /// The cluster's other nodes whose pids were given (`users` divides
    /// each one's memory growth: it is the whole run's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ServerResources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_generator: Option<ServerResources>,
    /// The p99 of each second's deliveries: latency over the run.
    pub delivery_p99_over_time: Vec<LatencyPoint>,
    /// Users' sockets open, once a second.
    pub sockets_over_time: Vec<CountPoint>,
}

/// Counts of a voice run, the providers' configured latency and the
/// server's resources.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VoiceFigures {
    /// `spoken` or `typed`.
    pub input: String,
    /// What spoken callers said, and its length of speech.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utterance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utterance_ms: Option<u64>,
    /// The assistant's end-of-turn silence and barge-in threshold: spoken
    /// turns wait them by design.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_of_turn_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_interruption_ms: Option<u64>,
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
    /// Callers in a call (their session created, not yet hung up), once a
    /// second.
    pub sessions_over_time: Vec<CountPoint>,
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
    pub stt_delay_ms: u64,
    pub ms_per_char: u32,
    pub chat_requests: u64,
    pub speech_requests: u64,
    pub transcription_requests: u64,
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
    /// Its busiest threads by name (100 % = one core): a thread near 100 %
    /// is a limit however idle the other cores are.
    pub busiest_threads: Vec<ThreadCpu>,
    /// How resident memory moved after a warm-up (long runs with
    /// `--warmup-seconds`): the figure a soak is judged by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_growth: Option<RssGrowth>,
}

/// Resident memory after a warm-up against the end of the run: each the
/// median of [`RssGrowth::WINDOW_S`] seconds of samples, so one burst of
/// allocation at either moment does not decide the figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RssGrowth {
    pub warmup_s: f64,
    /// The median over the window that starts when the warm-up ends.
    pub after_warmup_mib: f64,
    /// The median over the run's last window.
    pub end_mib: f64,
    /// (end − after warm-up) / after warm-up × 100.
    pub percent: f64,
}

impl RssGrowth {
    /// Seconds of samples each median is taken over.
    pub const WINDOW_S: f64 = 60.0;
}

impl ServerResources {
    /// The memory growth after `warmup_s` seconds of this run, when the
    /// run is long enough for two separate windows after it.
    pub fn rss_growth_after(&self, warmup_s: f64) -> Option<RssGrowth> {
        let end = self.timeline.last()?.t_s;
        let window = RssGrowth::WINDOW_S;
        if end - window < warmup_s + window {
            return None;
        }
        let median = |from: f64, to: f64| {
            let mut rss: Vec<f64> = self
                .timeline
                .iter()
                .filter(|p| p.t_s >= from && p.t_s < to)
                .map(|p| p.rss_mib)
                .collect();
            rss.sort_by(f64::total_cmp);
            rss.get(rss.len() / 2).copied()
        };
        let after_warmup_mib = median(warmup_s, warmup_s + window)?;
        let end_mib = median(end - window, f64::INFINITY)?;
        Some(RssGrowth {
            warmup_s,
            after_warmup_mib,
            end_mib,
            percent: (end_mib - after_warmup_mib) / after_warmup_mib * 100.0,
        })
    }
}

/// The CPU of a process's threads of one name over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    pub name: String,
    /// Threads of that name at the end of the run.
    pub threads: usize,
    /// CPU time over wall time, all of them together.
    pub mean_cpu_percent: f64,
    /// The busiest sampling interval.
    pub max_cpu_percent: f64,
}

/// One latency sample at a moment of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyPoint {
    /// Seconds into the run.
    pub t_s: f64,
    pub ms: f64,
}

/// How many were at it at a moment of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CountPoint {
    /// Seconds into the run.
    pub t_s: f64,
    pub count: usize,
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
        if let Some(chat) = &self.chat {
            out.push_str(&chat_lines(chat));
        }
        out
    }

    /// A voice report and a chat report of the same time, as one (`mixed`).
    pub fn merge(voice: Report, chat: Report) -> Report {
        let mut operations = voice.operations;
        operations.extend(chat.operations);
        Report {
            scenario: format!("mixed ({} + chat)", voice.scenario),
            concurrency: voice.concurrency + chat.concurrency,
            elapsed_s: voice.elapsed_s.max(chat.elapsed_s),
            operations,
            voice: voice.voice,
            chat: chat.chat,
        }
    }

    fn voice_lines(&self, v: &VoiceFigures) -> String {
        let mut out = self.voice_counts(v);
        out.push_str(&resource_lines(&[
            ("server", &v.server),
            ("load generator", &v.load_generator),
        ]));
        out
    }

    fn voice_counts(&self, v: &VoiceFigures) -> String {
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
        if let Some(utterance) = &v.utterance {
            out.push_str(&format!(
                "spoken turns: {utterance}; the assistant's end_of_turn_ms {}, min_interruption_ms {}\n",
                v.end_of_turn_ms.map_or("?".to_owned(), |ms| ms.to_string()),
                v.min_interruption_ms
                    .map_or("?".to_owned(), |ms| ms.to_string()),
            ));
            if let (Some(stop), Some(min)) = (
                self.operations
                    .get(crate::voice::BARGE_IN_STOP)
                    .filter(|o| o.ok > 0),
                v.min_interruption_ms,
            ) {
                let min = min as f64;
                out.push_str(&format!(
                    "server-added barge-in stop (barge-in-stop − min_interruption_ms): \
                     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms\n",
                    stop.p50_ms - min,
                    stop.p90_ms - min,
                    stop.p99_ms - min,
                ));
            }
        }
        if let Some(p) = &v.providers {
            out.push_str(&format!(
                "fake providers: LLM first byte {} ms (+{} ms/word), TTS first byte {} ms, \
                 STT {} ms, {} ms of speech per character; {} chat + {} speech + {} \
                 transcription requests\n",
                p.llm_delay_ms,
                p.llm_token_gap_ms,
                p.tts_delay_ms,
                p.stt_delay_ms,
                p.ms_per_char,
                p.chat_requests,
                p.speech_requests,
                p.transcription_requests,
            ));
            if let (Some(v2v), Some(end_of_turn)) = (
                self.operations
                    .get(crate::voice::VOICE_TO_VOICE)
                    .filter(|o| o.ok > 0),
                v.end_of_turn_ms,
            ) {
                // The STT request goes out while the end-of-turn silence
                // runs, so its delay only counts beyond that silence.
                let waited = (end_of_turn.max(p.stt_delay_ms + 200)
                    + p.llm_delay_ms
                    + p.tts_delay_ms) as f64;
                out.push_str(&format!(
                    "server-added voice-to-voice (voice-to-voice − end_of_turn_ms − LLM − TTS delays; \
                     it includes the VAD's ~100 ms hangover): \
                     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms\n",
                    v2v.p50_ms - waited,
                    v2v.p90_ms - waited,
                    v2v.p99_ms - waited,
                ));
            }
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
        out
    }
}

/// What a chat run counted.
fn chat_lines(c: &ChatFigures) -> String {
    let mut out = format!(
        "chat: {} users in {} rooms (setup {:.1} s) · {} messages sent ({:.1}/s), {} acked · \
         {}/{} deliveries ({:.1}/s), {} missing · typing {} sent, {} events · presence {} sent, \
         {} events\n",
        c.users,
        c.rooms,
        c.setup_s,
        c.messages_sent,
        c.messages_per_second,
        c.messages_acked,
        c.deliveries,
        c.deliveries_expected,
        c.deliveries_per_second,
        c.deliveries_missing,
        c.typing_sent,
        c.typing_events,
        c.presence_sent,
        c.presence_events,
    );
    out.push_str(&resource_lines(&[("server", &c.server)]));
    for node in &c.nodes {
        out.push_str(&resource_lines(&[("other node", &Some(node.clone()))]));
    }
    out.push_str(&resource_lines(&[("load generator", &c.load_generator)]));
    out
}

fn resource_lines(processes: &[(&str, &Option<ServerResources>)]) -> String {
    let mut out = String::new();
    for (who, s) in processes {
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
            if !s.busiest_threads.is_empty() {
                out.push_str(&format!(
                    "  busiest threads: {}\n",
                    thread_list(&s.busiest_threads)
                ));
            }
            if let Some(g) = &s.rss_growth {
                out.push_str(&format!("  {}\n", growth_line(g)));
            }
        }
    }
    out
}

/// The soak figure in words.
pub fn growth_line(g: &RssGrowth) -> String {
    format!(
        "RSS growth after a {:.0} s warm-up: {:+.1} % ({:.1} → {:.1} MiB, medians of {:.0} s)",
        g.warmup_s,
        g.percent,
        g.after_warmup_mib,
        g.end_mib,
        RssGrowth::WINDOW_S
    )
}

/// Overwrites the terminal's status line on stderr with `line` (`\r` and
/// "erase line").
pub fn show_status(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}");
    let _ = err.flush();
}

/// Failures over all operations.
pub fn failure_count(ops: &BTreeMap<&'static str, OpStats>) -> u64 {
    ops.values()
        .map(|op| op.failures.values().sum::<u64>())
        .sum()
}

/// `[####......]  40 %`: `share` (0 to 1) of 20 cells, for status lines.
pub fn progress_bar(out: &mut String, share: f64) {
    use std::fmt::Write;
    const CELLS: usize = 20;
    let share = share.clamp(0.0, 1.0);
    let filled = (share * CELLS as f64).floor() as usize;
    out.push('[');
    out.extend(std::iter::repeat_n('#', filled));
    out.extend(std::iter::repeat_n('.', CELLS - filled));
    let _ = write!(out, "] {:>3.0} %", share * 100.0);
}

/// `name ×n mean % (max %)`, comma separated, for the table and the page.
pub fn thread_list(threads: &[ThreadCpu]) -> String {
    threads
        .iter()
        .map(|t| {
            let count = if t.threads > 1 {
                format!(" ×{}", t.threads)
            } else {
                String::new()
            };
            format!(
                "{}{count} {:.0} % (max {:.0} %)",
                t.name, t.mean_cpu_percent, t.max_cpu_percent
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_growth_compares_the_minute_after_warm_up_with_the_last() {
        // 10 minutes, a sample a second: 100 MiB during a 2-minute
        // warm-up, then 110 MiB with one 500 MiB spike, 121 MiB at the end.
        let timeline: Vec<ResourcePoint> = (1..=600)
            .map(|t| ResourcePoint {
                t_s: f64::from(t),
                cpu_percent: 50.0,
                rss_mib: match t {
                    ..120 => 100.0,
                    130 => 500.0,
                    540.. => 121.0,
                    _ => 110.0,
                },
            })
            .collect();
        let r = ServerResources {
            timeline,
            ..ServerResources::default()
        };
        let g = r
            .rss_growth_after(120.0)
            .expect("ten minutes hold two windows after the warm-up");
        assert_eq!((g.after_warmup_mib, g.end_mib), (110.0, 121.0));
        assert!((g.percent - 10.0).abs() < 1e-9, "{g:?}");
        assert!(growth_line(&g).contains("+10.0 %"));
        // No room for two windows after the warm-up: no figure.
        assert_eq!(r.rss_growth_after(500.0), None);
        assert_eq!(ServerResources::default().rss_growth_after(0.0), None);
    }

    #[test]
    fn latencies_fall_into_log_scale_buckets_between_the_first_and_last_used() {
        let mut op = OpStats::new();
        assert!(op.buckets().is_empty());
        let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
        // 3 at ≤ 1 ms, none in (1, 2], 2 in (2, 5], 1 in (5, 10]; 10 ms
        // itself is in the (5, 10] bucket.
        for latency in [0.4, 0.9, 1.0, 3.0, 4.5, 10.0] {
            op.record(ms(latency));
        }
        let buckets = op.buckets();
        let got: Vec<(f64, u64)> = buckets.iter().map(|b| (b.le_ms, b.count)).collect();
        assert_eq!(got, vec![(0.5, 1), (1.0, 2), (2.0, 0), (5.0, 2), (10.0, 1)]);
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), op.ok());
        // Recorded latencies are capped at 60 s: the last bucket holds them.
        op.record(Duration::from_secs(3_600));
        assert_eq!(
            op.buckets().last().map(|b| (b.le_ms, b.count)),
            Some((100_000.0, 1))
        );
        assert_eq!(op.summary(ms(1.0)).histogram, op.buckets());
    }
}
