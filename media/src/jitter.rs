//! The inbound jitter buffer: RTP Opus packets in, arriving out of order and
//! with jittery timing; one decision per 20 ms playout slot out.
//!
//! This module owns the reordering store (bounded, preallocated packet
//! slots), sequence-number and timestamp unwrapping, and the playout
//! schedule. It is sans-IO: arrival and poll times are inputs. It does not
//! decode: for each slot it tells the caller to decode a packet, to recover
//! a lost one from the next packet's in-band FEC, or to conceal.
//!
//! How it plays out:
//! - The first packet starts the schedule: its slot plays `target_delay_ms`
//!   after it arrived, then one slot per 20 ms (960 timestamp units at
//!   48 kHz). Slots are keyed by RTP timestamp, packets by sequence number.
//! - A packet arriving after its slot has played, or been given up for a
//!   later packet, is too late and dropped.
//! - A missing packet with a later one already here is lost: recover it by
//!   FEC when the very next packet is here, otherwise conceal. A missing
//!   packet with nothing later yet is an underrun (or a DTX pause): conceal
//!   the slot, but keep waiting for that sequence number. When it comes,
//!   it plays at its timestamp's slot if that is still ahead (a sender that
//!   paused and advanced its timestamps, as RFC 3550 asks); if it is behind
//!   (the packet was later than the target delay, or the sender's
//!   timestamps did not advance), the schedule restarts on it.
//! - A packet too far from the schedule, ahead or behind (by `capacity`
//!   packets or slots), means the stream restarted: the buffer
//!   resynchronises on it.
//! - When more than `max_delay_ms` of audio is buffered (a sender whose
//!   clock runs fast), the oldest slot is skipped to bring latency back.
//! - While nothing arrives the buffer keeps concealing, one slot per 20 ms,
//!   so downstream time (VAD silence) keeps moving; [`JitterBuffer::reset`]
//!   it when the stream ends.

use crate::codec::MAX_PACKET_BYTES;
use crate::frame::FRAME_MS;

/// RTP timestamp units in one 20 ms Opus frame (48 kHz clock).
pub const TIMESTAMP_STEP: u32 = 960;
const TS_PER_MS: i64 = 48;

/// Delay and size settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// How long after its arrival the first packet plays; packets up to
    /// this much later than the first one's pace still make their slot.
    pub target_delay_ms: u32,
    /// Buffered audio beyond this is skipped to bring latency back down.
    pub max_delay_ms: u32,
    /// Packets the buffer can hold (each slot is one 20 ms packet).
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            target_delay_ms: 60,
            max_delay_ms: 200,
            capacity: 64,
        }
    }
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arrival {
    /// Stored for its slot.
    Buffered,
    /// Stored, after throwing away the schedule: the packet was so far from
    /// it (a jump in sequence number or timestamp) that the stream must have
    /// restarted.
    Resynced,
    /// Its slot has already played; dropped.
    Late,
    /// The same sequence number is already stored; dropped.
    Duplicate,
    /// Empty, or longer than an Opus packet can be; dropped.
    Invalid,
}

/// What to do for the slot due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Playout<'a> {
    /// Decode this packet.
    Packet(&'a [u8]),
    /// This slot's packet was lost and the next one is here: decode its
    /// in-band FEC for this slot. The next packet comes out as a `Packet`
    /// at its own slot.
    Recover { next: &'a [u8] },
    /// Nothing to decode for this slot: conceal (PLC).
    Conceal,
}

/// Counters since the buffer was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets stored ([`Arrival::Buffered`] or [`Arrival::Resynced`]).
    pub buffered: u64,
    /// Slots played from their own packet.
    pub played: u64,
    /// Slots recovered from the next packet's FEC.
    pub recovered: u64,
    /// Slots concealed (lost, underrun or DTX pause).
    pub concealed: u64,
    /// Sequence numbers given up as lost.
    pub lost: u64,
    /// Packets dropped for arriving after their slot.
    pub late: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped as empty or oversized.
    pub invalid: u64,
    /// Times the schedule was restarted.
    pub resyncs: u64,
    /// Slots skipped to bring latency back under `max_delay_ms`.
    pub skipped_for_latency: u64,
}

/// A slot decision, by packet slot index, before borrowing the payload.
enum Decision {
    Play(usize),
    Recover(usize),
    Conceal,
}

#[derive(Debug, Clone, Copy, Default)]
struct SlotMeta {
    occupied: bool,
    seq: i64,
    ts: i64,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next sequence number expected to play.
    seq: i64,
    /// The timestamp of the slot due next.
    ts: i64,
    /// When the slot due next plays.
    play_at_ms: u64,
}

/// A bounded, reordering jitter buffer for 20 ms Opus packets.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<SlotMeta>,
    /// `capacity` packets of up to [`MAX_PACKET_BYTES`], back to back.
    payloads: Vec<u8>,
    cursor: Option<Cursor>,
    highest_seq: i64,
    highest_ts: i64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer with at least one slot (a zero capacity is raised to one).
    pub fn new(config: JitterConfig) -> Self {
        let capacity = config.capacity.max(1);
        Self {
            config: JitterConfig { capacity, ..config },
            slots: vec![SlotMeta::default(); capacity],
            payloads: vec![0; capacity * MAX_PACKET_BYTES],
            cursor: None,
            highest_seq: 0,
            highest_ts: 0,
            stats: JitterStats::default(),
        }
    }

    /// Takes a packet that arrived at `now_ms`.
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8], now_ms: u64) -> Arrival {
        if payload.is_empty() || payload.len() > MAX_PACKET_BYTES {
            self.stats.invalid += 1;
            return Arrival::Invalid;
        }
        let Some(cursor) = self.cursor else {
            self.restart(seq, timestamp, now_ms);
            self.store(i64::from(seq), i64::from(timestamp), payload);
            return Arrival::Buffered;
        };
        let seq_ext =
            self.highest_seq + i64::from(seq.wrapping_sub(self.highest_seq as u16) as i16);
        let ts_ext =
            self.highest_ts + i64::from(timestamp.wrapping_sub(self.highest_ts as u32) as i32);
        // Within `capacity` packets either side of the schedule a packet is
        // early or late; beyond that, in either direction, the stream must
        // have restarted (a backward jump would otherwise read as "late"
        // for ever).
        let capacity = self.config.capacity as i64;
        let (seq_offset, ts_offset) = (seq_ext - cursor.seq, ts_ext - cursor.ts);
        if seq_offset.abs() >= capacity || ts_offset.abs() >= capacity * i64::from(TIMESTAMP_STEP) {
            self.stats.resyncs += 1;
            self.restart(seq, timestamp, now_ms);
            self.store(i64::from(seq), i64::from(timestamp), payload);
            return Arrival::Resynced;
        }
        if seq_offset == 0 && ts_offset < 0 && cursor.seq > self.highest_seq {
            // The packet the buffer ran dry waiting for, now behind the
            // schedule: it was later than the target delay allows, or the
            // sender paused without advancing its timestamps. Dropping it
            // would drop every packet after it too; start the schedule
            // afresh on it instead, which restores the target delay.
            self.stats.resyncs += 1;
            self.restart(seq, timestamp, now_ms);
            self.store(i64::from(seq), i64::from(timestamp), payload);
            return Arrival::Resynced;
        }
        if seq_offset < 0 || ts_offset < 0 {
            self.stats.late += 1;
            return Arrival::Late;
        }
        let slot = &self.slots[self.index(seq_ext)];
        if slot.occupied && slot.seq == seq_ext {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.store(seq_ext, ts_ext, payload);
        Arrival::Buffered
    }

    /// When the next slot is due; `None` before the first packet.
    pub fn next_poll_ms(&self) -> Option<u64> {
        self.cursor.map(|c| c.play_at_ms)
    }

    /// The decision for the slot due at `now_ms`, or `None` if no slot is
    /// due. After a late poll several slots may be due: call until `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Playout<'_>> {
        let mut cursor = self.cursor?;
        if now_ms < cursor.play_at_ms {
            return None;
        }
        let step = i64::from(TIMESTAMP_STEP);
        self.drop_stale(&mut cursor);
        self.limit_latency(&mut cursor);

        let head = self.index(cursor.seq);
        let decision = if self.holds(head, cursor.seq) {
            if self.slots[head].ts < cursor.ts + step {
                // Due now. A sender's timestamps may drift off the 960 grid:
                // follow the packet.
                cursor.ts = self.slots[head].ts;
                cursor.seq += 1;
                self.slots[head].occupied = false;
                self.stats.played += 1;
                Decision::Play(head)
            } else {
                // The sender skipped time (DTX): fill the gap.
                self.stats.concealed += 1;
                Decision::Conceal
            }
        } else if cursor.seq < self.highest_seq {
            // Lost: something later is already here.
            self.stats.lost += 1;
            let next = self.index(cursor.seq + 1);
            let recoverable = self.holds(next, cursor.seq + 1)
                && (cursor.ts + step..cursor.ts + 2 * step).contains(&self.slots[next].ts);
            cursor.seq += 1;
            if recoverable {
                self.stats.recovered += 1;
                Decision::Recover(next)
            } else {
                self.stats.concealed += 1;
                Decision::Conceal
            }
        } else {
            // Not here yet: underrun or DTX pause. Keep waiting for it.
            self.stats.concealed += 1;
            Decision::Conceal
        };
        cursor.ts += step;
        cursor.play_at_ms += u64::from(FRAME_MS);
        self.cursor = Some(cursor);
        // The played slot is marked free, but its bytes stay put until a
        // later push, which the borrow on `self` rules out meanwhile.
        Some(match decision {
            Decision::Play(i) => Playout::Packet(self.payload(i)),
            Decision::Recover(i) => Playout::Recover {
                next: self.payload(i),
            },
            Decision::Conceal => Playout::Conceal,
        })
    }

    /// Forgets every packet and the schedule (the next packet restarts it).
    pub fn reset(&mut self) {
        self.cursor = None;
        self.slots.iter_mut().for_each(|s| s.occupied = false);
    }

    /// Packets stored and not yet played.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.occupied).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    pub fn config(&self) -> JitterConfig {
        self.config
    }

    /// Drops packets whose slot has passed and gives up on missing ones
    /// whose slot has passed (judged from the packet after them).
    fn drop_stale(&mut self, cursor: &mut Cursor) {
        let step = i64::from(TIMESTAMP_STEP);
        while cursor.seq <= self.highest_seq {
            let head = self.index(cursor.seq);
            if self.holds(head, cursor.seq) {
                if self.slots[head].ts >= cursor.ts {
                    return;
                }
                self.slots[head].occupied = false;
                self.stats.late += 1;
            } else {
                match self.next_stored_after(cursor.seq) {
                    Some((seq, ts)) if ts - (seq - cursor.seq) * step < cursor.ts => {
                        self.stats.lost += 1;
                    }
                    _ => return,
                }
            }
            cursor.seq += 1;
        }
    }

    /// Skips the oldest slots while more than `max_delay_ms` is buffered.
    fn limit_latency(&mut self, cursor: &mut Cursor) {
        let step = i64::from(TIMESTAMP_STEP);
        let max_ts = i64::from(self.config.max_delay_ms) * TS_PER_MS;
        while self.highest_ts + step - cursor.ts > max_ts && cursor.seq <= self.highest_seq {
            let head = self.index(cursor.seq);
            if self.holds(head, cursor.seq) {
                if self.slots[head].ts >= cursor.ts + step {
                    // A DTX gap at the head: skip time, not the packet.
                    cursor.ts += step;
                    self.stats.skipped_for_latency += 1;
                    continue;
                }
                self.slots[head].occupied = false;
            } else {
                self.stats.lost += 1;
            }
            cursor.seq += 1;
            cursor.ts += step;
            self.stats.skipped_for_latency += 1;
        }
    }

    fn next_stored_after(&self, seq: i64) -> Option<(i64, i64)> {
        (seq + 1..=self.highest_seq).find_map(|s| {
            let i = self.index(s);
            self.holds(i, s).then(|| (s, self.slots[i].ts))
        })
    }

    fn restart(&mut self, seq: u16, timestamp: u32, now_ms: u64) {
        self.reset();
        self.highest_seq = i64::from(seq);
        self.highest_ts = i64::from(timestamp);
        self.cursor = Some(Cursor {
            seq: i64::from(seq),
            ts: i64::from(timestamp),
            play_at_ms: now_ms + u64::from(self.config.target_delay_ms),
        });
    }

    fn store(&mut self, seq: i64, ts: i64, payload: &[u8]) {
        let i = self.index(seq);
        self.slots[i] = SlotMeta {
            occupied: true,
            seq,
            ts,
            len: payload.len(),
        };
        let start = i * MAX_PACKET_BYTES;
        self.payloads[start..start + payload.len()].copy_from_slice(payload);
        self.highest_seq = self.highest_seq.max(seq);
        self.highest_ts = self.highest_ts.max(ts);
        self.stats.buffered += 1;
    }

    fn index(&self, seq: i64) -> usize {
        seq.rem_euclid(self.config.capacity as i64) as usize
    }

    fn holds(&self, index: usize, seq: i64) -> bool {
        self.slots[index].occupied && self.slots[index].seq == seq
    }

    fn payload(&self, index: usize) -> &[u8] {
        let start = index * MAX_PACKET_BYTES;
        &self.payloads[start..start + self.slots[index].len]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What a poll decided, with packets named by their first byte.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Out {
        Play(u8),
        Fec(u8),
        Plc,
    }

    fn take(p: Playout<'_>) -> Out {
        match p {
            Playout::Packet(b) => Out::Play(b[0]),
            Playout::Recover { next } => Out::Fec(next[0]),
            Playout::Conceal => Out::Plc,
        }
    }

    fn buffer(target_delay_ms: u32) -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            target_delay_ms,
            max_delay_ms: 400,
            capacity: 16,
        })
    }

    /// Polls every millisecond in `from..to`, collecting (time, decision).
    fn drain(jb: &mut JitterBuffer, from: u64, to: u64) -> Vec<(u64, Out)> {
        let mut out = Vec::new();
        for now in from..to {
            while let Some(p) = jb.poll(now) {
                out.push((now, take(p)));
            }
        }
        out
    }

    /// Packet `k` of a stream: seq and timestamp from a base, named k.
    fn push_k(jb: &mut JitterBuffer, seq0: u16, ts0: u32, k: u16, now: u64) -> Arrival {
        jb.push(
            seq0.wrapping_add(k),
            ts0.wrapping_add(u32::from(k) * TIMESTAMP_STEP),
            &[k as u8, 0xAB],
            now,
        )
    }

    #[test]
    fn in_order_packets_play_after_the_target_delay_one_per_slot() {
        let mut jb = buffer(60);
        for k in 0..5 {
            assert_eq!(
                push_k(&mut jb, 100, 5000, k, u64::from(k) * 20),
                Arrival::Buffered
            );
        }
        assert_eq!(jb.next_poll_ms(), Some(60));
        let out = drain(&mut jb, 0, 150);
        assert_eq!(
            out,
            vec![
                (60, Out::Play(0)),
                (80, Out::Play(1)),
                (100, Out::Play(2)),
                (120, Out::Play(3)),
                (140, Out::Play(4)),
            ]
        );
        assert!(jb.is_empty());
        assert_eq!(jb.stats().played, 5);
    }

    #[test]
    fn reordered_packets_come_out_in_sequence() {
        let mut jb = buffer(60);
        for (k, at) in [(0, 0), (2, 21), (1, 30), (4, 61), (3, 62), (5, 100)] {
            push_k(&mut jb, 7, 0, k, at);
        }
        let played: Vec<Out> = drain(&mut jb, 0, 200).into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            played,
            (0..6).map(Out::Play).chain([Out::Plc]).collect::<Vec<_>>()
        );
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn a_lost_packet_is_recovered_from_the_next_or_concealed() {
        let mut jb = buffer(40);
        // 2 is lost (3 follows: FEC); 5 and 6 are lost (7 is two ahead of
        // 5: conceal 5, recover 6 from 7).
        for k in [0u16, 1, 3, 4, 7, 8] {
            push_k(&mut jb, 0, 0, k, u64::from(k) * 20);
        }
        let out: Vec<Out> = drain(&mut jb, 0, 220).into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            out,
            vec![
                Out::Play(0),
                Out::Play(1),
                Out::Fec(3),
                Out::Play(3),
                Out::Play(4),
                Out::Plc,
                Out::Fec(7),
                Out::Play(7),
                Out::Play(8),
            ]
        );
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.recovered, stats.concealed), (3, 2, 1));
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap_around() {
        let mut jb = buffer(40);
        let seq0 = u16::MAX - 2;
        let ts0 = u32::MAX - TIMESTAMP_STEP; // wraps between packets 1 and 2
        // Delivered out of order across the wrap.
        for (k, at) in [(0, 0), (1, 20), (3, 40), (2, 45), (4, 80), (5, 100)] {
            assert_eq!(
                push_k(&mut jb, seq0, ts0, k, at),
                Arrival::Buffered,
                "packet {k}"
            );
        }
        let out: Vec<Out> = drain(&mut jb, 0, 160).into_iter().map(|(_, o)| o).collect();
        assert_eq!(out, (0..6).map(Out::Play).collect::<Vec<_>>());
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn a_packet_given_up_for_a_later_one_is_dropped_as_late() {
        let mut jb = buffer(40);
        for k in [0, 1, 3] {
            push_k(&mut jb, 0, 0, k, u64::from(k) * 20);
        }
        let mut out = drain(&mut jb, 0, 81);
        assert_eq!(
            out.last(),
            Some(&(80, Out::Fec(3))),
            "slot 2 rebuilt from 3"
        );
        assert_eq!(push_k(&mut jb, 0, 0, 2, 85), Arrival::Late);
        push_k(&mut jb, 0, 0, 4, 86);
        out.extend(drain(&mut jb, 81, 130));
        let out: Vec<Out> = out.into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            out,
            vec![
                Out::Play(0),
                Out::Play(1),
                Out::Fec(3),
                Out::Play(3),
                Out::Play(4)
            ]
        );
        assert_eq!(jb.stats().late, 1);
        // Far older packets are late too, not "far ahead".
        assert_eq!(push_k(&mut jb, 0, 0, 1, 130), Arrival::Late);
    }

    #[test]
    fn the_packet_an_underrun_waited_for_restarts_the_schedule_if_behind_it() {
        let mut jb = buffer(40);
        push_k(&mut jb, 0, 0, 0, 0);
        push_k(&mut jb, 0, 0, 1, 20);
        // Packet 2 is 25 ms later than the 40 ms target allows.
        let out = drain(&mut jb, 0, 101);
        assert_eq!(out[2..], [(80, Out::Plc), (100, Out::Plc)]);
        assert_eq!(push_k(&mut jb, 0, 0, 2, 105), Arrival::Resynced);
        push_k(&mut jb, 0, 0, 3, 110);
        // The target delay is back: 2 plays 40 ms after it arrived.
        assert_eq!(
            drain(&mut jb, 101, 170),
            vec![(145, Out::Play(2)), (165, Out::Play(3))]
        );
        // A sender that paused 300 ms without advancing its timestamps is
        // heard again rather than dropped as late for ever.
        let out = drain(&mut jb, 170, 500);
        assert!(out.iter().all(|&(_, o)| o == Out::Plc));
        assert_eq!(push_k(&mut jb, 0, 0, 4, 500), Arrival::Resynced);
        assert_eq!(push_k(&mut jb, 0, 0, 5, 520), Arrival::Buffered);
        assert_eq!(
            drain(&mut jb, 500, 570),
            vec![(540, Out::Play(4)), (560, Out::Play(5))]
        );
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn duplicates_and_invalid_payloads_are_dropped() {
        let mut jb = buffer(40);
        assert_eq!(push_k(&mut jb, 0, 0, 0, 0), Arrival::Buffered);
        assert_eq!(push_k(&mut jb, 0, 0, 0, 1), Arrival::Duplicate);
        assert_eq!(jb.push(1, 960, &[], 2), Arrival::Invalid);
        assert_eq!(
            jb.push(1, 960, &[0; MAX_PACKET_BYTES + 1], 2),
            Arrival::Invalid
        );
        let stats = jb.stats();
        assert_eq!((stats.duplicates, stats.invalid, jb.len()), (1, 2, 1));
    }

    #[test]
    fn a_jump_beyond_the_capacity_resynchronises_on_the_new_stream() {
        let mut jb = buffer(40);
        push_k(&mut jb, 0, 0, 0, 0);
        push_k(&mut jb, 0, 0, 1, 20);
        assert_eq!(jb.push(30_000, 123_456, &[9], 30), Arrival::Resynced);
        assert_eq!(jb.len(), 1, "the old stream's packets are gone");
        assert_eq!(jb.next_poll_ms(), Some(70));
        assert_eq!(jb.push(30_001, 123_456 + 960, &[10], 50), Arrival::Buffered);
        let out: Vec<Out> = drain(&mut jb, 0, 100).into_iter().map(|(_, o)| o).collect();
        assert_eq!(out, vec![Out::Play(9), Out::Play(10)]);
        assert_eq!(jb.stats().resyncs, 1);
        // A restart that jumps backwards is a restart too, not "late".
        assert_eq!(jb.push(100, 500, &[11], 120), Arrival::Resynced);
        assert_eq!(jb.push(101, 500 + 960, &[12], 125), Arrival::Buffered);
        let out: Vec<Out> = drain(&mut jb, 100, 200)
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(out, vec![Out::Play(11), Out::Play(12)]);
        // The store never holds more than its capacity.
        for k in 2..100u16 {
            push_k(&mut jb, 30_000, 123_456, k, 100);
            assert!(jb.len() <= 16);
        }
    }

    #[test]
    fn a_dtx_pause_is_concealed_and_the_resumed_stream_plays_on_time() {
        let mut jb = buffer(40);
        push_k(&mut jb, 0, 0, 0, 0);
        push_k(&mut jb, 0, 0, 1, 20);
        // The sender stops for 100 ms (DTX): seq 2 resumes at timestamp
        // slot 7, arriving at 130, in time for its slot at 180.
        let mut out = drain(&mut jb, 0, 130);
        assert_eq!(jb.push(2, 7 * TIMESTAMP_STEP, &[2], 130), Arrival::Buffered);
        assert_eq!(jb.push(3, 8 * TIMESTAMP_STEP, &[3], 150), Arrival::Buffered);
        out.extend(drain(&mut jb, 130, 220));
        assert_eq!(
            out,
            vec![
                (40, Out::Play(0)),
                (60, Out::Play(1)),
                (80, Out::Plc),
                (100, Out::Plc),
                (120, Out::Plc),
                (140, Out::Plc),
                (160, Out::Plc),
                (180, Out::Play(2)),
                (200, Out::Play(3)),
            ]
        );
        assert_eq!(jb.stats().lost, 0, "a pause is not a loss");
    }

    #[test]
    fn a_fast_sender_is_held_to_the_maximum_delay() {
        let mut jb = JitterBuffer::new(JitterConfig {
            target_delay_ms: 40,
            max_delay_ms: 100,
            capacity: 32,
        });
        // Packets arrive at 10 ms intervals: twice real time.
        let mut skipped_at_most = 0;
        for k in 0..60u16 {
            let now = u64::from(k) * 10;
            push_k(&mut jb, 0, 0, k, now);
            while jb.poll(now).is_some() {}
            let buffered_ms = jb.len() as u64 * 20;
            skipped_at_most = skipped_at_most.max(buffered_ms);
        }
        assert!(
            skipped_at_most <= 120,
            "buffered up to {skipped_at_most} ms"
        );
        assert!(jb.stats().skipped_for_latency > 0);
        assert_eq!(jb.stats().resyncs, 0);
    }

    #[test]
    fn nothing_plays_before_the_first_packet_and_reset_starts_over() {
        let mut jb = buffer(60);
        assert_eq!(jb.next_poll_ms(), None);
        assert!(jb.poll(1000).is_none());
        push_k(&mut jb, 0, 0, 0, 1000);
        jb.reset();
        assert!(jb.poll(2000).is_none());
        push_k(&mut jb, 50, 0, 0, 2000);
        assert_eq!(jb.poll(2060).map(take), Some(Out::Play(0)));
    }
}
