//! The paced sender: outbound audio leaves at exactly one 20 ms frame per
//! 20 ms tick, and barge-in can drop everything not yet sent.
//!
//! This module owns the outbound frame queue and its clock arithmetic. It is
//! sans-IO: the caller passes the current time to [`Pacer::poll`] and asks
//! [`Pacer::next_poll_ms`] when to call again; nothing here sleeps or reads
//! a clock. What a frame *is* is the caller's choice (`Pacer<F>`); the
//! outbound path queues 48 kHz PCM and encodes at send time (see
//! `pipeline::OutboundPath` for why).
//!
//! Timing rules:
//! - Frames are due every [`FRAME_MS`] from the first frame of a run; a poll
//!   before the due time returns nothing.
//! - When the caller polls late (a stall), frames that fell behind go out
//!   back to back, but only up to [`PacerConfig::max_catch_up`] frames: the
//!   rest of the delay is absorbed by moving the schedule later, so the
//!   peer's jitter buffer never sees a burst longer than that.
//! - When the queue runs dry (the last queued frame went out, or barge-in
//!   cleared it), the run ends: the next frame pushed starts a new run and
//!   goes out at the next poll, without waiting for the old run's next tick
//!   (its media time, [`Paced::due_ms`], still continues the old run's when
//!   that tick is ahead). That is the next reply's first frame, or TTS that
//!   fell behind; holding it to the old 20 ms grid added up to a frame of
//!   latency (a second turn's first audio waited ~15 ms over WebRTC), and
//!   releasing it puts at most one frame less than 20 ms after the previous
//!   one, well inside any receiver's jitter buffer.

use std::collections::VecDeque;

use crate::frame::FRAME_MS;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacerError {
    /// The queue holds `capacity` frames already; wait for it to drain
    /// ([`Pacer::free_slots`]) before pushing more.
    #[error("pacer queue is full ({capacity} frames)")]
    QueueFull { capacity: usize },
}

/// Queue size and stall tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerConfig {
    /// Frames the queue can hold (each is 20 ms of audio).
    pub capacity: usize,
    /// Frames that may go out back to back to catch up after a late poll.
    pub max_catch_up: u32,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            // 3 s of audio: more than one TTS sentence in flight.
            capacity: 150,
            // 40 ms of extra burst fits inside any receiver's jitter buffer.
            max_catch_up: 2,
        }
    }
}

/// Counters since the pacer was made. `sent` frames of [`FRAME_MS`] each
/// are exactly the audio that went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacerStats {
    /// Frames handed out by [`Pacer::poll`].
    pub sent: u64,
    /// Frames dropped by [`Pacer::clear`] before they were sent.
    pub dropped: u64,
    /// Due ticks that found the queue empty during a run.
    pub underruns: u64,
    /// Times a late poll pushed the schedule back (beyond the catch-up
    /// bound), and by how many milliseconds in all.
    pub slips: u64,
    pub slipped_ms: u64,
}

impl PacerStats {
    /// Milliseconds of audio sent.
    pub fn sent_ms(&self) -> u64 {
        self.sent * u64::from(FRAME_MS)
    }
}

/// A frame the pacer released, with its place on the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paced<F> {
    pub frame: F,
    /// The tick the frame was due at. Frames of one run are exactly 20 ms
    /// apart, even when a late poll releases two together; across a pause
    /// or a slip it jumps by the time nothing was sent. This is the frame's
    /// media time: an RTP timestamp is a base plus `due_ms * 48` at 48 kHz.
    /// The first frame after the queue ran dry leaves at once, so its
    /// `due_ms` can be up to one frame later than the poll that released it.
    pub due_ms: u64,
}

/// A bounded queue of outbound frames released one per 20 ms tick.
#[derive(Debug)]
pub struct Pacer<F> {
    config: PacerConfig,
    queue: VecDeque<F>,
    /// When the next frame is due; `None` between runs.
    next_due_ms: Option<u64>,
    /// The queue ran dry since the last frame went out: the run is over,
    /// whatever `next_due_ms` says.
    drained: bool,
    stats: PacerStats,
}

impl<F> Pacer<F> {
    pub fn new(config: PacerConfig) -> Self {
        Self {
            config,
            // Allocated once: VecDeque never reallocates below its capacity.
            queue: VecDeque::with_capacity(config.capacity),
            next_due_ms: None,
            drained: false,
            stats: PacerStats::default(),
        }
    }

    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: F) -> Result<(), PacerError> {
        if self.queue.len() >= self.config.capacity {
            return Err(PacerError::QueueFull {
                capacity: self.config.capacity,
            });
        }
        self.queue.push_back(frame);
        Ok(())
    }

    /// Returns the frame to send now, if one is due. Call again until it
    /// returns `None`: after a late poll up to `max_catch_up` more may be
    /// due at once.
    pub fn poll(&mut self, now_ms: u64) -> Option<Paced<F>> {
        let frame_ms = u64::from(FRAME_MS);
        let due = match self.next_due_ms {
            // A new run starts now.
            None => now_ms,
            // The queue ran dry and new audio came: it leaves now, up to
            // one frame early, and keeps the media time continuous.
            Some(due) if self.drained && !self.queue.is_empty() => {
                self.stats.underruns += 1;
                self.drained = false;
                due.max(now_ms)
            }
            Some(due) if now_ms < due => return None,
            Some(due) => {
                let lag_limit = u64::from(self.config.max_catch_up) * frame_ms;
                let lag = now_ms - due;
                if lag > lag_limit {
                    // Too far behind: move the schedule instead of bursting.
                    self.stats.slips += 1;
                    self.stats.slipped_ms += lag - lag_limit;
                    now_ms - lag_limit
                } else {
                    due
                }
            }
        };
        match self.queue.pop_front() {
            Some(frame) => {
                self.next_due_ms = Some(due + frame_ms);
                self.drained = self.queue.is_empty();
                self.stats.sent += 1;
                Some(Paced { frame, due_ms: due })
            }
            None => {
                if self.next_due_ms.is_some() {
                    self.stats.underruns += 1;
                }
                self.next_due_ms = None;
                self.drained = false;
                None
            }
        }
    }

    /// When [`poll`](Self::poll) next has something to do: `None` while the
    /// queue is empty (push, then poll), otherwise the due time (which may
    /// be in the past: poll now).
    pub fn next_poll_ms(&self) -> Option<u64> {
        if self.queue.is_empty() {
            return None;
        }
        match self.next_due_ms {
            // A new run: due now (the last frame's due time is past).
            Some(due) if self.drained => Some(due.saturating_sub(u64::from(FRAME_MS))),
            Some(due) => Some(due),
            None => Some(0),
        }
    }

    /// Barge-in: drops every queued frame and returns how many. The next
    /// poll sends nothing until new frames are pushed.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        self.stats.dropped += dropped as u64;
        // The answer to the interruption starts a new run at once.
        self.drained = self.next_due_ms.is_some();
        dropped
    }

    /// Frames waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Frames that can still be pushed.
    pub fn free_slots(&self) -> usize {
        self.config.capacity - self.queue.len()
    }

    pub fn stats(&self) -> PacerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pacer(capacity: usize, max_catch_up: u32) -> Pacer<u32> {
        Pacer::new(PacerConfig {
            capacity,
            max_catch_up,
        })
    }

    fn frame(paced: Option<Paced<u32>>) -> Option<u32> {
        paced.map(|p| p.frame)
    }

    /// Polls every millisecond from `from` to `to` (exclusive), draining
    /// each poll, and returns (time, frame) for every frame sent.
    fn drive(p: &mut Pacer<u32>, from: u64, to: u64) -> Vec<(u64, u32)> {
        let mut sent = Vec::new();
        for now in from..to {
            while let Some(paced) = p.poll(now) {
                assert!(paced.due_ms <= now);
                sent.push((now, paced.frame));
            }
        }
        sent
    }

    #[test]
    fn one_frame_per_tick_however_often_it_is_polled() {
        let mut p = pacer(10, 2);
        for f in 0..5 {
            p.push(f).unwrap();
        }
        let sent = drive(&mut p, 1000, 1200);
        assert_eq!(
            sent,
            vec![(1000, 0), (1020, 1), (1040, 2), (1060, 3), (1080, 4)]
        );
        assert_eq!(p.stats().sent, 5);
        assert_eq!(p.stats().sent_ms(), 100);
        assert_eq!(p.stats().underruns, 1, "the tick at 1100 found nothing");
        assert_eq!(p.next_poll_ms(), None);
    }

    #[test]
    fn a_full_queue_is_refused_with_its_capacity() {
        let mut p = pacer(2, 2);
        p.push(1).unwrap();
        p.push(2).unwrap();
        assert_eq!(p.free_slots(), 0);
        assert_eq!(p.push(3), Err(PacerError::QueueFull { capacity: 2 }));
        assert_eq!(p.queued(), 2);
        assert_eq!(frame(p.poll(0)), Some(1));
        assert_eq!(p.free_slots(), 1);
        p.push(3).unwrap();
    }

    #[test]
    fn barge_in_stops_audio_from_the_next_tick_and_counts_what_went_out() {
        let mut p = pacer(100, 2);
        for f in 0..50 {
            p.push(f).unwrap();
        }
        let sent = drive(&mut p, 0, 70); // ticks 0, 20, 40, 60
        assert_eq!(sent.len(), 4);
        assert_eq!(p.clear(), 46);
        assert_eq!(frame(p.poll(80)), None);
        assert_eq!(drive(&mut p, 80, 200), vec![]);
        let stats = p.stats();
        assert_eq!((stats.sent, stats.dropped), (4, 46));
        assert_eq!(stats.sent_ms(), 80);
        // A new utterance starts straight away.
        p.push(100).unwrap();
        assert_eq!(frame(p.poll(205)), Some(100));
        assert_eq!(frame(p.poll(224)), None);
        assert_eq!(p.next_poll_ms(), None);
        // The queue ran dry: more audio is a new run, due now.
        p.push(101).unwrap();
        assert_eq!(p.next_poll_ms(), Some(205));
        assert_eq!(frame(p.poll(224)), Some(101));
        assert_eq!(p.next_poll_ms(), None);
    }

    #[test]
    fn a_stall_catches_up_at_most_the_bound_then_keeps_the_pace() {
        let mut p = pacer(100, 2);
        for f in 0..20 {
            p.push(f).unwrap();
        }
        assert_eq!(frame(p.poll(0)), Some(0));
        // The caller stalls for 200 ms: 10 ticks missed.
        let burst: Vec<Paced<u32>> = std::iter::from_fn(|| p.poll(200)).collect();
        let frames: Vec<u32> = burst.iter().map(|b| b.frame).collect();
        assert_eq!(frames, vec![1, 2, 3], "the due frame plus 2 to catch up");
        // Media time jumps by the slip, then runs 20 ms apart.
        let due: Vec<u64> = burst.iter().map(|b| b.due_ms).collect();
        assert_eq!(due, vec![160, 180, 200]);
        assert_eq!(p.stats().slips, 1);
        assert_eq!(p.stats().slipped_ms, 200 - 20 - 40);
        // Then one every 20 ms again, on the new schedule.
        assert_eq!(drive(&mut p, 201, 260), vec![(220, 4), (240, 5)]);
    }

    #[test]
    fn a_late_poll_inside_the_bound_keeps_the_original_schedule() {
        let mut p = pacer(100, 2);
        for f in 0..10 {
            p.push(f).unwrap();
        }
        assert_eq!(frame(p.poll(0)), Some(0));
        // 25 ms late for the tick at 20: the frames due at 20 and at 40
        // both go out now, and the schedule stays on 20 ms multiples.
        assert_eq!(frame(p.poll(45)), Some(1));
        assert_eq!(frame(p.poll(45)), Some(2));
        assert_eq!(frame(p.poll(45)), None);
        assert_eq!(frame(p.poll(60)), Some(3));
        assert_eq!(p.stats().slips, 0);
    }

    #[test]
    fn an_underrun_ends_the_run_and_new_audio_starts_without_a_burst() {
        let mut p = pacer(100, 2);
        p.push(0).unwrap();
        assert_eq!(frame(p.poll(0)), Some(0));
        assert_eq!(frame(p.poll(20)), None, "underrun");
        // Audio arrives much later: no catch-up for the idle time.
        for f in 1..5 {
            p.push(f).unwrap();
        }
        assert_eq!(p.next_poll_ms(), Some(0), "due now");
        let burst: Vec<u32> = std::iter::from_fn(|| frame(p.poll(1000))).collect();
        assert_eq!(burst, vec![1]);
        assert_eq!(p.stats().slips, 0);
        assert_eq!(p.stats().underruns, 1);
        assert_eq!(p.next_poll_ms(), Some(1020));
    }

    #[test]
    fn audio_pushed_after_the_queue_ran_dry_goes_out_at_once() {
        let mut p = pacer(100, 2);
        p.push(0).unwrap();
        assert_eq!(frame(p.poll(0)), Some(0));
        // The next reply's first frame, 5 ms later: not held to the old
        // run's tick at 20.
        p.push(1).unwrap();
        p.push(2).unwrap();
        assert_eq!(p.next_poll_ms(), Some(0), "due now");
        let sent = p.poll(5).unwrap();
        // Out at 5, its media time continuing the run's.
        assert_eq!((sent.frame, sent.due_ms), (1, 20));
        assert_eq!(frame(p.poll(5)), None, "then the pace again");
        assert_eq!(frame(p.poll(39)), None);
        assert_eq!(frame(p.poll(40)), Some(2));
        assert_eq!(p.stats().underruns, 1);
    }

    #[test]
    fn after_barge_in_the_answer_starts_at_once() {
        let mut p = pacer(100, 2);
        for f in 0..5 {
            p.push(f).unwrap();
        }
        assert_eq!(frame(p.poll(0)), Some(0));
        assert_eq!(p.clear(), 4);
        assert_eq!(frame(p.poll(3)), None, "nothing queued");
        p.push(10).unwrap();
        p.push(11).unwrap();
        assert_eq!(frame(p.poll(4)), Some(10));
        assert_eq!(frame(p.poll(39)), None);
        assert_eq!(frame(p.poll(40)), Some(11));
    }

    #[test]
    fn a_frame_pushed_while_the_run_still_has_frames_keeps_the_pace() {
        let mut p = pacer(100, 2);
        p.push(0).unwrap();
        p.push(1).unwrap();
        assert_eq!(frame(p.poll(0)), Some(0));
        p.push(2).unwrap();
        assert_eq!(frame(p.poll(5)), None);
        assert_eq!(frame(p.poll(20)), Some(1));
        assert_eq!(frame(p.poll(25)), None);
        assert_eq!(frame(p.poll(40)), Some(2));
    }
}
