//! A sans-IO parser for server-sent events (`text/event-stream`), the wire
//! format of streamed chat completions.
//!
//! Bytes go in as they arrive, split anywhere (mid-line, mid-character,
//! between `\r` and `\n`); whole events come out. This module owns the
//! framing only: what an event's data means is the caller's business.

use std::collections::VecDeque;

/// Longest line accepted; a provider streaming an endless line would
/// otherwise grow the buffer without bound.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, when the server named the event type.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why the byte stream is not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SseError {
    /// A line ran past [`MAX_LINE_BYTES`] without a line break.
    #[error("an event-stream line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// A line is not UTF-8.
    #[error("an event-stream line is not valid UTF-8")]
    NotUtf8,
}

/// Turns event-stream bytes into [`SseEvent`]s: [`feed`](Self::feed) what
/// arrived, then drain [`next_event`](Self::next_event).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` opening this one belongs
    /// to the same line break.
    skip_lf: bool,
    /// Data lines of the event being read.
    data: String,
    has_data: bool,
    event: Option<String>,
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&bytes[..end])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line)?;
            // Keep the allocation for the next line.
            self.line = line;
            self.line.clear();
            let crlf_split = bytes[end] == b'\r' && end + 1 == bytes.len();
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            self.skip_lf = crlf_split;
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.extend_line(bytes)
    }

    /// The next complete event, oldest first.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The stream ended. The spec discards an event not closed by a blank
    /// line; we dispatch it instead, because some OpenAI-compatible servers
    /// end with `data: [DONE]\n` and close.
    pub(crate) fn finish(&mut self) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line)?;
        }
        self.dispatch();
        Ok(())
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            // A comment, e.g. `: keep-alive` or OpenRouter's `: PROCESSING`.
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` matter to reconnecting browsers, not to us.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        self.ready.push_back(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for piece in pieces {
            parser.feed(piece).expect("valid stream");
            while let Some(event) = parser.next_event() {
                events.push(event);
            }
        }
        parser.finish().expect("valid stream");
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
        events
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    const STREAM: &str = ": keep-alive\n\ndata: {\"a\":1}\n\ndata: {\"b\":\"é\"}\r\n\r\nevent: ping\ndata: x\rdata: y\r\r\n\ndata: [DONE]\n\n";

    #[test]
    fn whole_stream_gives_each_event_once() {
        let events = parse_in_pieces(&[STREAM.as_bytes()]);
        assert_eq!(
            data(&events),
            ["{\"a\":1}", "{\"b\":\"é\"}", "x\ny", "[DONE]"]
        );
        assert_eq!(events[2].event.as_deref(), Some("ping"));
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let whole = parse_in_pieces(&[bytes]);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse_in_pieces(&[a, b]), whole, "split at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_in_pieces(&pieces), parse_in_pieces(&[bytes]));
    }

    #[test]
    fn comments_and_blank_lines_alone_give_no_event() {
        assert!(parse_in_pieces(&[b": hello\n\n\n\r\n: again\n\n"]).is_empty());
    }

    #[test]
    fn data_without_space_and_field_without_colon_are_read() {
        let events = parse_in_pieces(&[b"data:tight\n\ndata\n\n"]);
        assert_eq!(data(&events), ["tight", ""]);
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_the_end() {
        let events = parse_in_pieces(&[b"data: [DONE]"]);
        assert_eq!(data(&events), ["[DONE]"]);
    }

    #[test]
    fn endless_line_is_rejected() {
        let mut parser = SseParser::new();
        let chunk = vec![b'x'; 64 * 1024];
        let mut outcome = Ok(());
        for _ in 0..=MAX_LINE_BYTES / chunk.len() {
            outcome = parser.feed(&chunk);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(SseError::LineTooLong));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"data: \xff\n"), Err(SseError::NotUtf8));
    }
}
