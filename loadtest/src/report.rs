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
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.operations.values().map(|o| o.failed).sum()
    }

    /// A terminal table, one line per operation.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} · {} clients · {:.1} s\n{:<16} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
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
                "{:<16} {:>8} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                name, op.ok, op.failed, op.per_second, op.p50_ms, op.p90_ms, op.p99_ms, op.max_ms
            ));
            for (reason, n) in &op.failures {
                out.push_str(&format!("    {n} × {reason}\n"));
            }
        }
        out
    }
}
