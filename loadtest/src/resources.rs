//! Samples another process's CPU time and resident memory from `/proc`
//! (Linux) once per interval on a thread of its own, so a run can report
//! what the server spent, and which of its threads spent it (a thread at
//! 100 % of one core is a limit however idle the other cores are). It only
//! reads `/proc/<pid>/stat`, `/proc/<pid>/status` and
//! `/proc/<pid>/task/*/stat`; it never signals the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::report::{ResourcePoint, ServerResources, ThreadCpu};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): part of the
/// kernel's ABI, 100 on every architecture Palaver is built for.
const USER_HZ: f64 = 100.0;
/// Thread names reported, busiest first.
const BUSIEST_THREADS: usize = 6;

/// CPU ticks of each thread (by id) with its name, at one moment.
type ThreadTicks = HashMap<u32, (String, u64)>;

/// Per thread name: CPU ticks over the run (summed interval by interval, so
/// a thread that exits keeps what it spent until its last sample), the most
/// threads of that name seen at once, and the busiest interval's share of
/// one core.
#[derive(Debug, Default)]
struct ThreadLoad {
    previous: ThreadTicks,
    previous_at: Option<Instant>,
    ticks: BTreeMap<String, u64>,
    counts: BTreeMap<String, usize>,
    max_percent: BTreeMap<String, f64>,
}

impl ThreadLoad {
    fn observe(&mut self, at: Instant, now: ThreadTicks) {
        if let Some(before) = self.previous_at {
            let wall = at.duration_since(before).as_secs_f64();
            let (ticks, counts) = by_name(&self.previous, &now);
            for (name, count) in counts {
                let most = self.counts.entry(name).or_default();
                *most = (*most).max(count);
            }
            for (name, ticks) in ticks {
                *self.ticks.entry(name.clone()).or_default() += ticks;
                if wall > 0.0 {
                    let percent = ticks as f64 / USER_HZ / wall * 100.0;
                    let max = self.max_percent.entry(name).or_default();
                    *max = max.max(percent);
                }
            }
        }
        self.previous = now;
        self.previous_at = Some(at);
    }

    /// The busiest thread names over `wall` seconds.
    fn busiest(&self, wall: f64) -> Vec<ThreadCpu> {
        if wall <= 0.0 {
            return Vec::new();
        }
        let mut threads: Vec<ThreadCpu> = self
            .ticks
            .iter()
            .map(|(name, &ticks)| (name.clone(), ticks))
            .map(|(name, ticks)| ThreadCpu {
                threads: self.counts.get(&name).copied().unwrap_or(1),
                mean_cpu_percent: ticks as f64 / USER_HZ / wall * 100.0,
                max_cpu_percent: self.max_percent.get(&name).copied().unwrap_or(0.0),
                name,
            })
            .collect();
        threads.sort_by(|a, b| b.mean_cpu_percent.total_cmp(&a.mean_cpu_percent));
        threads.truncate(BUSIEST_THREADS);
        threads
    }
}

/// Ticks spent between `before` and `after` by thread name (threads of one
/// name, like a pool's workers, add up; one born in between counts from 0),
/// and how many threads bear each name.
fn by_name(
    before: &ThreadTicks,
    after: &ThreadTicks,
) -> (BTreeMap<String, u64>, BTreeMap<String, usize>) {
    let mut ticks = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for (tid, (name, now)) in after {
        // A thread born in between, or an id reused under another name,
        // counts from 0.
        let then = before
            .get(tid)
            .filter(|(old, _)| old == name)
            .map_or(0, |(_, t)| *t);
        *ticks.entry(name.clone()).or_default() += now.saturating_sub(then);
        *counts.entry(name.clone()).or_default() += 1;
    }
    (ticks, counts)
}

/// Every thread's name and CPU ticks (threads that exit meanwhile are
/// skipped).
fn thread_ticks(pid: u32) -> ThreadTicks {
    let mut threads = ThreadTicks::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let (Some(name), Some(ticks)) = (thread_name(&stat), cpu_ticks(&stat)) {
            threads.insert(tid, (name.to_owned(), ticks));
        }
    }
    threads
}

/// The command name of a `stat` line: between the first `(` and the last `)`.
fn thread_name(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

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
    thread: JoinHandle<(Vec<Sample>, ThreadLoad)>,
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
                let mut threads = ThreadLoad::default();
                threads.observe(first.at, thread_ticks(pid));
                let mut samples = vec![first];
                // A disconnected or signalled channel ends the sampling.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match sample(pid) {
                        Ok(s) => {
                            threads.observe(s.at, thread_ticks(pid));
                            samples.push(s);
                        }
                        // The process exited: what was sampled stands.
                        Err(_) => break,
                    }
                }
                if let Ok(last) = sample(pid) {
                    threads.observe(last.at, thread_ticks(pid));
                    samples.push(last);
                }
                (samples, threads)
            })?;
        Ok(Self { pid, stop, thread })
    }

    /// Stops sampling and summarizes; `callers` divides the memory growth.
    pub fn finish(self, callers: usize) -> ServerResources {
        let _ = self.stop.send(());
        let (samples, threads) = self.thread.join().unwrap_or_default();
        let mut summary = summarize(self.pid, &samples, callers);
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            summary.busiest_threads =
                threads.busiest(last.at.duration_since(first.at).as_secs_f64());
        }
        summary
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
        busiest_threads: Vec::new(),
        rss_growth: None,
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
    fn thread_cpu_adds_up_by_name_busiest_first() {
        let now = Instant::now();
        let at = |ms| now + Duration::from_millis(ms);
        let ticks = |list: &[(u32, &str, u64)]| -> ThreadTicks {
            list.iter()
                .map(|&(tid, name, t)| (tid, (name.to_owned(), t)))
                .collect()
        };
        let mut load = ThreadLoad::default();
        load.observe(
            at(0),
            ticks(&[(1, "palaver-rtc", 1_000), (2, "worker", 10)]),
        );
        load.observe(
            at(1_000),
            ticks(&[
                (1, "palaver-rtc", 1_095),
                (2, "worker", 30),
                (3, "worker", 20),
            ]),
        );
        // Thread 2 exited; thread 3 goes on.
        load.observe(
            at(2_000),
            ticks(&[(1, "palaver-rtc", 1_190), (3, "worker", 50)]),
        );
        let busiest = load.busiest(2.0);
        let rows: Vec<(&str, usize, f64, f64)> = busiest
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.threads,
                    t.mean_cpu_percent.round(),
                    t.max_cpu_percent.round(),
                )
            })
            .collect();
        // The driver: 190 ticks in 2 s, 95 % each second. The workers:
        // thread 2's 20 ticks before it exited and thread 3's 50 (born after
        // the first sample) over 2 s, 40 of them in the first second; two
        // of them at once at most.
        assert_eq!(
            rows,
            [("palaver-rtc", 1, 95.0, 95.0), ("worker", 2, 35.0, 40.0)]
        );
        assert_eq!(
            thread_name("12 (actix-rt|system:0) S 1"),
            Some("actix-rt|system:0")
        );
    }

    #[test]
    fn this_process_names_its_threads() {
        let threads = thread_ticks(std::process::id());
        assert!(!threads.is_empty());
        assert!(
            threads.values().all(|(name, _)| !name.is_empty()),
            "{threads:?}"
        );
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
