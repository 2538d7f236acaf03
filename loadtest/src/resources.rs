//! Samples another process's CPU time and resident memory from `/proc`
//! (Linux) once per interval on a thread of its own, so a run can report
//! what the server spent. It only reads `/proc/<pid>/stat` and
//! `/proc/<pid>/status`; it never signals the process.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::report::{ResourcePoint, ServerResources};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): part of the
/// kernel's ABI, 100 on every architecture Palaver is built for.
const USER_HZ: f64 = 100.0;

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Instant,
    /// User + system CPU time, in clock ticks.
    cpu_ticks: u64,
    rss_kib: u64,
}

/// A sampler running until [`ProcessSampler::finish`].
#[derive(Debug)]
pub struct ProcessSampler {
    pid: u32,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<Sample>>,
}

impl ProcessSampler {
    /// Takes a first sample now (failing if the process cannot be read),
    /// then one per `interval`.
    pub fn start(pid: u32, interval: Duration) -> std::io::Result<Self> {
        let first = sample(pid)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("proc-sampler".into())
            .spawn(move || {
                let mut samples = vec![first];
                // A disconnected or signalled channel ends the sampling.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match sample(pid) {
                        Ok(s) => samples.push(s),
                        // The process exited: what was sampled stands.
                        Err(_) => break,
                    }
                }
                if let Ok(last) = sample(pid) {
                    samples.push(last);
                }
                samples
            })?;
        Ok(Self { pid, stop, thread })
    }

    /// Stops sampling and summarizes; `callers` divides the memory growth.
    pub fn finish(self, callers: usize) -> ServerResources {
        let _ = self.stop.send(());
        let samples = self.thread.join().unwrap_or_default();
        summarize(self.pid, &samples, callers)
    }
}

fn sample(pid: u32) -> std::io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let at = Instant::now();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let cpu_ticks = cpu_ticks(&stat).ok_or_else(|| bad("unreadable /proc/<pid>/stat"))?;
    let rss_kib = rss_kib(&status).ok_or_else(|| bad("no VmRSS in /proc/<pid>/status"))?;
    Ok(Sample {
        at,
        cpu_ticks,
        rss_kib,
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid … cmajflt (4–12), utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from `/proc/<pid>/status`.
fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn summarize(pid: u32, samples: &[Sample], callers: usize) -> ServerResources {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return ServerResources {
            pid,
            ..ServerResources::default()
        };
    };
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let cpu_percent = |a: &Sample, b: &Sample| {
        let wall = b.at.duration_since(a.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / USER_HZ / wall * 100.0
    };
    let max_cpu = samples
        .windows(2)
        .map(|w| cpu_percent(&w[0], &w[1]))
        .fold(0.0, f64::max);
    let timeline = samples
        .windows(2)
        .map(|w| ResourcePoint {
            t_s: w[1].at.duration_since(first.at).as_secs_f64(),
            cpu_percent: cpu_percent(&w[0], &w[1]),
            rss_mib: mib(w[1].rss_kib),
        })
        .collect();
    ServerResources {
        pid,
        samples: samples.len(),
        timeline,
        baseline_rss_mib: mib(first.rss_kib),
        peak_rss_mib: mib(peak),
        rss_per_caller_kib: peak.saturating_sub(first.rss_kib) as f64 / callers.max(1) as f64,
        mean_cpu_percent: cpu_percent(first, last),
        max_cpu_percent: max_cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (palaver (a) b) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 37 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(187));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_comes_from_vmrss() {
        let status = "Name:\tpalaver\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(rss_kib(status), Some(40_960));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sampler = ProcessSampler::start(std::process::id(), Duration::from_millis(10));
        let Ok(sampler) = sampler else {
            panic!("cannot read /proc for this process: {sampler:?}");
        };
        // Burn a little CPU and memory so there is something to see.
        let mut v: Vec<u64> = Vec::new();
        for i in 0..2_000_000u64 {
            v.push(i.wrapping_mul(2_654_435_761));
        }
        std::thread::sleep(Duration::from_millis(50));
        let figures = sampler.finish(4);
        assert!(v.len() == 2_000_000);
        assert!(figures.samples >= 2, "{figures:?}");
        assert!(figures.peak_rss_mib >= figures.baseline_rss_mib && figures.peak_rss_mib > 0.0);
        assert!(figures.mean_cpu_percent >= 0.0);
    }

    #[test]
    fn growth_is_shared_among_callers() {
        let now = Instant::now();
        let at = |ms| now + Duration::from_millis(ms);
        let samples = [
            Sample {
                at: at(0),
                cpu_ticks: 100,
                rss_kib: 10_240,
            },
            Sample {
                at: at(1000),
                cpu_ticks: 150,
                rss_kib: 20_480,
            },
            Sample {
                at: at(2000),
                cpu_ticks: 170,
                rss_kib: 15_360,
            },
        ];
        let r = summarize(7, &samples, 10);
        assert_eq!(r.samples, 3);
        assert!((r.peak_rss_mib - 20.0).abs() < 1e-9);
        assert!((r.rss_per_caller_kib - 1024.0).abs() < 1e-9);
        assert!((r.mean_cpu_percent - 35.0).abs() < 1e-6);
        assert!((r.max_cpu_percent - 50.0).abs() < 1e-6);
        let points: Vec<(f64, f64, f64)> = r
            .timeline
            .iter()
            .map(|p| (p.t_s, p.cpu_percent.round(), p.rss_mib))
            .collect();
        assert_eq!(points, [(1.0, 50.0, 20.0), (2.0, 20.0, 15.0)]);
    }
}
