//! The self-contained HTML report of a run (`--html`): parameters, the
//! percentile table, a percentile chart and a latency histogram (counts per
//! log-scale bucket) per operation, and the server's and
//! the load generator's CPU and memory over time, as inline SVG. No script,
//! no style sheet or font from elsewhere: the file is the whole report.

use std::fmt::Write;

use crate::report::{
    Bucket, CountPoint, LatencyPoint, OpSummary, Report, ResourcePoint, ServerResources,
};

/// The report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let title = format!(
        "palaver-loadtest {} · {} clients · {:.1} s",
        report.scenario, report.concurrency, report.elapsed_s
    );
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    summary(&mut out, report);
    operations(&mut out, report);
    let latency = |points: &[LatencyPoint]| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.t_s, p.ms)).collect()
    };
    let count = |points: &[CountPoint]| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.t_s, p.count as f64)).collect()
    };
    let mut timelines = Vec::new();
    if let Some(voice) = &report.voice {
        timelines.extend([
            (
                "First audio over the run",
                "first audio ms",
                latency(&voice.first_audio_over_time),
                Mark::Dots,
            ),
            (
                "Sessions over the run",
                "callers in a call",
                count(&voice.sessions_over_time),
                Mark::Line,
            ),
        ]);
    }
    if let Some(chat) = &report.chat {
        timelines.extend([
            (
                "Chat delivery over the run",
                "delivery p99 ms per second",
                latency(&chat.delivery_p99_over_time),
                Mark::Line,
            ),
            (
                "Chat sockets over the run",
                "sockets open",
                count(&chat.sockets_over_time),
                Mark::Line,
            ),
        ]);
    }
    for (title, label, points, mark) in timelines {
        if !points.is_empty() {
            let _ = writeln!(out, "<h2>{title}</h2>");
            chart(&mut out, label, &points, mark);
        }
    }
    let processes = match (&report.voice, &report.chat) {
        (Some(voice), _) => Some((&voice.server, &voice.load_generator)),
        (None, Some(chat)) => Some((&chat.server, &chat.load_generator)),
        (None, None) => None,
    };
    if let Some((server, load_generator)) = processes {
        if let Some(r) = server {
            resources_section(&mut out, "Server", r);
        }
        for node in report.chat.iter().flat_map(|c| &c.nodes) {
            resources_section(&mut out, "Other node", node);
        }
        if let Some(r) = load_generator {
            resources_section(&mut out, "Load generator", r);
        }
    }
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}\
td:first-child,th:first-child{text-align:left}.bad{color:#b00020}\
svg{display:block;margin:6px 0}text{font:11px system-ui,sans-serif;fill:#333}";

fn summary(out: &mut String, report: &Report) {
    if let Some(c) = &report.chat {
        let _ = writeln!(
            out,
            "<p>chat: {} users in {} rooms · {} messages sent ({:.1}/s), {} acked · {}/{} deliveries \
             ({:.1}/s), <span class=\"{}\">{} missing</span> · typing {} sent, {} events · presence {} sent, \
             {} events</p>",
            c.users,
            c.rooms,
            c.messages_sent,
            c.messages_per_second,
            c.messages_acked,
            c.deliveries,
            c.deliveries_expected,
            c.deliveries_per_second,
            if c.deliveries_missing > 0 { "bad" } else { "" },
            c.deliveries_missing,
            c.typing_sent,
            c.typing_events,
            c.presence_sent,
            c.presence_events,
        );
    }
    let Some(v) = &report.voice else {
        return;
    };
    let _ = writeln!(
        out,
        "<p>{} callers ({} turns, {} cutting in, {} not started) · turns {}/{} completed, {} not run · \
         barge-ins {} sent, {} interrupted · {} audio frames · failures <span class=\"{}\">{}</span></p>",
        v.callers,
        escape(&v.input),
        v.barge_in_callers,
        v.callers_not_started,
        v.turns_completed,
        v.turns_planned,
        v.turns_not_run,
        v.barge_ins_sent,
        v.barge_ins_observed,
        v.audio_frames,
        if report.failed() > 0 { "bad" } else { "" },
        report.failed()
    );
    if let Some(utterance) = &v.utterance {
        let _ = writeln!(
            out,
            "<p>spoken turns: {}; the assistant's end_of_turn_ms {}, min_interruption_ms {}</p>",
            escape(utterance),
            v.end_of_turn_ms.map_or("?".to_owned(), |ms| ms.to_string()),
            v.min_interruption_ms
                .map_or("?".to_owned(), |ms| ms.to_string()),
        );
    }
    if let Some(p) = &v.providers {
        let _ = writeln!(
            out,
            "<p>fake providers: STT {} ms, LLM first byte {} ms, TTS first byte {} ms; {} transcription, \
             {} chat and {} speech requests</p>",
            p.stt_delay_ms,
            p.llm_delay_ms,
            p.tts_delay_ms,
            p.transcription_requests,
            p.chat_requests,
            p.speech_requests
        );
    }
}

fn operations(out: &mut String, report: &Report) {
    out.push_str(
        "<h2>Operations</h2>\n<table><tr><th>operation</th><th>ok</th><th>failed</th>\
         <th>per s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>p50 · p90 · p99 · max</th>\
         <th>histogram (ms, log-scale buckets)</th></tr>\n",
    );
    for (name, op) in &report.operations {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{:.1}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>",
            escape(name),
            op.ok,
            if op.failed > 0 { "bad" } else { "" },
            op.failed,
            op.per_second,
            op.p50_ms,
            op.p90_ms,
            op.p99_ms,
            op.max_ms
        );
        percentile_bars(out, op);
        out.push_str("</td><td>");
        histogram(out, name, &op.histogram);
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");
    let failures: Vec<(&String, &String, u64)> = report
        .operations
        .iter()
        .flat_map(|(name, op)| op.failures.iter().map(move |(why, n)| (name, why, *n)))
        .collect();
    if !failures.is_empty() {
        out.push_str(
            "<h2>Failures</h2>\n<table><tr><th>operation</th><th>reason</th><th>count</th></tr>\n",
        );
        for (name, why, n) in failures {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td style=\"text-align:left\">{}</td><td>{n}</td></tr>",
                escape(name),
                escape(why)
            );
        }
        out.push_str("</table>\n");
    }
}

/// Four bars (p50, p90, p99, max) scaled to the operation's max.
fn percentile_bars(out: &mut String, op: &OpSummary) {
    const W: f64 = 220.0;
    let max = op.max_ms.max(1e-9);
    out.push_str("<svg width=\"230\" height=\"34\" role=\"img\">");
    for (i, (value, color)) in [
        (op.p50_ms, "#2a7ab0"),
        (op.p90_ms, "#4a9a5a"),
        (op.p99_ms, "#d08a20"),
        (op.max_ms, "#b04040"),
    ]
    .into_iter()
    .enumerate()
    {
        let width = (value / max * W).clamp(0.0, W);
        let _ = write!(
            out,
            "<rect x=\"0\" y=\"{}\" width=\"{width:.1}\" height=\"7\" fill=\"{color}\"><title>{value:.2} ms</title></rect>",
            i * 8 + 1
        );
    }
    out.push_str("</svg>");
}

/// A bucket edge, short: `0.05 ms`, `2 ms`, `500 ms`, `1 s`, `20 s`.
fn edge_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// One bar per bucket (equal widths: the buckets are log-scale), heights
/// proportional to the counts, the edges of the first and last bucket
/// under them; each bar's title gives its range and count.
fn histogram(out: &mut String, op: &str, buckets: &[Bucket]) {
    const H: f64 = 40.0;
    const BAR: f64 = 12.0;
    if buckets.is_empty() {
        return;
    }
    let top = buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    let width = (buckets.len() as f64 * BAR).max(80.0);
    let _ = write!(
        out,
        "<svg width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"{} latency histogram\">",
        H + 14.0,
        escape(op)
    );
    let mut lower = None;
    for (i, bucket) in buckets.iter().enumerate() {
        let height = if bucket.count == 0 {
            0.0
        } else {
            (bucket.count as f64 / top * H).max(1.0)
        };
        let range = match lower {
            None => format!("≤ {}", edge_label(bucket.le_ms)),
            Some(low) => format!("{}–{}", edge_label(low), edge_label(bucket.le_ms)),
        };
        let _ = write!(
            out,
            "<rect class=\"bucket\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#2a7ab0\">\
             <title>{range}: {}</title></rect>",
            i as f64 * BAR,
            H - height,
            BAR - 2.0,
            bucket.count
        );
        lower = Some(bucket.le_ms);
    }
    let first = buckets.first().map_or(0.0, |b| b.le_ms);
    let last = buckets.last().map_or(0.0, |b| b.le_ms);
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{y}\">≤{}</text><text x=\"{}\" y=\"{y}\" text-anchor=\"end\">{}</text></svg>",
        edge_label(first),
        width,
        edge_label(last),
        y = H + 12.0
    );
}

fn resources_section(out: &mut String, name: &str, r: &ServerResources) {
    let _ = write!(
        out,
        "<h2>{} (pid {})</h2>\n<p>RSS {:.1} → {:.1} MiB ({:.0} KiB per caller) · CPU mean {:.0} %, busiest second {:.0} % \
         (200 % = two cores)</p>\n",
        escape(name),
        r.pid,
        r.baseline_rss_mib,
        r.peak_rss_mib,
        r.rss_per_caller_kib,
        r.mean_cpu_percent,
        r.max_cpu_percent
    );
    if !r.busiest_threads.is_empty() {
        let _ = writeln!(
            out,
            "<p>Busiest threads (100 % = one core): {}</p>",
            escape(&crate::report::thread_list(&r.busiest_threads))
        );
    }
    if let Some(g) = &r.rss_growth {
        let _ = writeln!(out, "<p>{}</p>", escape(&crate::report::growth_line(g)));
    }
    let series = |value: fn(&ResourcePoint) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|p| (p.t_s, value(p))).collect()
    };
    chart(out, "CPU %", &series(|p| p.cpu_percent), Mark::Line);
    chart(out, "RSS MiB", &series(|p| p.rss_mib), Mark::Line);
}

/// How a chart draws its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Line,
    Dots,
}

/// (seconds, value) points over time, axes labelled with the extremes.
fn chart(out: &mut String, label: &str, points: &[(f64, f64)], mark: Mark) {
    const W: f64 = 640.0;
    const H: f64 = 140.0;
    const LEFT: f64 = 50.0;
    const BOTTOM: f64 = 20.0;
    if points.is_empty() {
        return;
    }
    let t_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let v_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - 10.0);
    let y = |v: f64| 10.0 + (1.0 - v / v_max) * (H - BOTTOM - 10.0);
    let _ = write!(
        out,
        "<svg width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{} over time\">\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"14\">{v_max:.0}</text><text x=\"4\" y=\"{b}\">0</text>\
         <text x=\"{LEFT}\" y=\"{tl}\">0 s</text><text x=\"{tr}\" y=\"{tl}\">{t_max:.0} s</text>\
         <text x=\"{mid}\" y=\"{tl}\">{}</text>",
        escape(label),
        escape(label),
        b = H - BOTTOM,
        r = W - 10.0,
        tl = H - 4.0,
        tr = W - 40.0,
        mid = W / 2.0 - 20.0,
    );
    match mark {
        Mark::Line => {
            out.push_str(
                "<polyline fill=\"none\" stroke=\"#2a7ab0\" stroke-width=\"1.5\" points=\"",
            );
            for &(t, v) in points {
                let _ = write!(out, "{:.1},{:.1} ", x(t), y(v));
            }
            out.push_str("\"/>");
        }
        Mark::Dots => {
            for &(t, v) in points {
                let _ = write!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#d08a20\"/>",
                    x(t),
                    y(v)
                );
            }
        }
    }
    out.push_str("</svg>\n");
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::VoiceFigures;

    fn op(p50: f64, failed: u64, failures: &[(&str, u64)]) -> OpSummary {
        let mut stats = crate::report::OpStats::new();
        for ms in [p50, p50 * 2.0, p50 * 3.0, p50 * 4.0] {
            stats.record(std::time::Duration::from_secs_f64(ms / 1000.0));
        }
        OpSummary {
            histogram: stats.buckets(),
            ok: 10,
            failed,
            per_second: 2.0,
            p50_ms: p50,
            p90_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
            failures: failures
                .iter()
                .map(|(w, n)| ((*w).to_owned(), *n))
                .collect(),
        }
    }

    #[test]
    fn a_voice_report_is_one_self_contained_page_with_its_charts() {
        let timeline = vec![
            ResourcePoint {
                t_s: 1.0,
                cpu_percent: 40.0,
                rss_mib: 30.0,
            },
            ResourcePoint {
                t_s: 2.0,
                cpu_percent: 80.0,
                rss_mib: 35.0,
            },
        ];
        let report = Report {
            scenario: "voice-rtc".into(),
            concurrency: 3,
            elapsed_s: 12.5,
            operations: BTreeMap::from([
                ("first-audio".to_owned(), op(5.0, 0, &[])),
                (
                    "rtc-connect".to_owned(),
                    op(450.0, 1, &[("timed out <ICE>", 1)]),
                ),
            ]),
            voice: Some(VoiceFigures {
                callers: 3,
                turns_planned: 9,
                turns_completed: 8,
                first_audio_over_time: vec![
                    LatencyPoint { t_s: 1.5, ms: 6.0 },
                    LatencyPoint { t_s: 7.0, ms: 9.5 },
                ],
                sessions_over_time: vec![
                    CountPoint { t_s: 1.0, count: 2 },
                    CountPoint { t_s: 2.0, count: 3 },
                ],
                server: Some(ServerResources {
                    pid: 42,
                    samples: 3,
                    timeline,
                    busiest_threads: vec![crate::report::ThreadCpu {
                        name: "palaver-rtc".into(),
                        threads: 1,
                        mean_cpu_percent: 97.0,
                        max_cpu_percent: 100.0,
                    }],
                    ..ServerResources::default()
                }),
                ..VoiceFigures::default()
            }),
            chat: None,
        };
        let html = render(&report);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.ends_with("</html>\n"));
        assert!(html.contains("<td>first-audio</td>"));
        assert!(html.contains("<td>rtc-connect</td>"));
        // Every operation has its percentile bars and its histogram; the
        // server its CPU and RSS.
        assert_eq!(html.matches("<svg width=\"230\"").count(), 2);
        assert!(html.contains("aria-label=\"first-audio latency histogram\""));
        assert!(html.contains("aria-label=\"rtc-connect latency histogram\""));
        assert!(html.contains("aria-label=\"CPU % over time\""));
        assert!(html.contains("aria-label=\"RSS MiB over time\""));
        assert!(html.contains("polyline"));
        assert!(html.contains("aria-label=\"first audio ms over time\""));
        assert_eq!(html.matches("<circle").count(), 2);
        assert!(html.contains("aria-label=\"callers in a call over time\""));
        assert!(html.contains("Busiest threads (100 % = one core): palaver-rtc 97 % (max 100 %)"));
        // Reasons are escaped, and nothing is fetched from elsewhere.
        assert!(html.contains("<title>5 ms–10 ms: 1</title>"), "{html}");
        assert!(html.contains("timed out &lt;ICE&gt;"));
        assert!(!html.contains("<ICE>"));
        for external in ["http://", "https://", "src=", "<script", "<link"] {
            assert!(!html.contains(external), "{external}");
        }
    }

    #[test]
    fn a_histogram_draws_a_bar_per_bucket_scaled_to_the_fullest() {
        let buckets = [
            Bucket {
                le_ms: 0.5,
                count: 4,
            },
            Bucket {
                le_ms: 1.0,
                count: 0,
            },
            Bucket {
                le_ms: 2.0,
                count: 1,
            },
            Bucket {
                le_ms: 5_000.0,
                count: 2,
            },
        ];
        let mut out = String::new();
        histogram(&mut out, "turn <x>", &buckets);
        assert_eq!(out.matches("class=\"bucket\"").count(), 4);
        assert!(out.contains("aria-label=\"turn &lt;x&gt; latency histogram\""));
        // The fullest bar is the chart's height; the others in proportion;
        // an empty bucket has no height.
        assert!(out.contains("height=\"40.0\" fill"), "{out}");
        assert!(out.contains("height=\"10.0\" fill"), "{out}");
        assert!(out.contains("height=\"20.0\" fill"), "{out}");
        assert!(out.contains("height=\"0.0\" fill"), "{out}");
        for title in [
            "<title>≤ 0.5 ms: 4</title>",
            "<title>0.5 ms–1 ms: 0</title>",
            "<title>2 ms–5 s: 2</title>",
        ] {
            assert!(out.contains(title), "{title} in {out}");
        }
        assert!(
            out.contains(">≤0.5 ms</text>") && out.contains(">5 s</text>"),
            "{out}"
        );
        let mut none = String::new();
        histogram(&mut none, "x", &[]);
        assert!(none.is_empty());
    }
}
