//! The answers the HTTP/1 layer gives before any handler runs, in the API's
//! error shape.
//!
//! actix-http answers a request it cannot parse (a bad `Content-Length`,
//! `Content-Length` with `Transfer-Encoding`, a malformed request line), a
//! head that is too large or has too many headers, or a head that does not
//! arrive in time, by writing a bodiless `400`, `431` or `408` and closing
//! the connection; no middleware or handler sees the request. [`JsonErrors`]
//! wraps each accepted connection and rewrites exactly those answers, on
//! their way out, into `{"error": {"code", "message"}}` with
//! `Content-Type: application/json`. Everything else passes through
//! untouched: the API itself never sends these statuses without a body, and
//! once a connection is upgraded (a WebSocket) nothing is looked at.
//!
//! Owns no state beyond the connection it wraps; must not touch requests.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose bodiless low-level error answers are rewritten.
#[derive(Debug)]
pub struct JsonErrors<T> {
    inner: T,
    /// Rewritten bytes not yet written to `inner`.
    pending: Vec<u8>,
    written: usize,
    /// The connection switched protocols: pass everything through.
    upgraded: bool,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
            upgraded: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// The code and message of each status the HTTP/1 layer answers by itself.
fn explain(status: u16) -> Option<(&'static str, &'static str)> {
    Some(match status {
        400 => (
            "malformed_request",
            "the request is not valid HTTP/1.1: a malformed request line or header, an invalid \
             Content-Length, or Content-Length together with Transfer-Encoding",
        ),
        408 => (
            "request_timeout",
            "the request line and headers did not arrive in time",
        ),
        431 => (
            "headers_too_large",
            "the request line and headers are too large, or there are too many headers",
        ),
        505 => (
            "http_version_not_supported",
            "only HTTP/1.0 and HTTP/1.1 are served",
        ),
        _ => return None,
    })
}

/// A bodiless error answer of the HTTP/1 layer at the end of a write.
#[derive(Debug)]
struct ErrorHead {
    /// Where the head starts in the write.
    start: usize,
    status: u16,
    /// Its headers, less `content-length` and `content-type`.
    headers: Vec<(String, Vec<u8>)>,
}

/// If `buf` ends with a complete, bodiless response head of a status that
/// [`explain`] knows, that head; the API's own responses always have a
/// body, so such a head can only come from the HTTP/1 layer.
fn bodiless_error_head(buf: &[u8]) -> Option<ErrorHead> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let starts = buf
        .windows(7)
        .enumerate()
        .rev()
        .filter(|(_, w)| *w == b"HTTP/1.")
        .map(|(at, _)| at);
    for start in starts {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(&buf[start..]) else {
            continue;
        };
        if start + len != buf.len() {
            continue;
        }
        let status = response.code?;
        explain(status)?;
        let bodiless = response
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() == b"0");
        if !bodiless {
            return None;
        }
        let kept = response
            .headers
            .iter()
            .filter(|h| {
                !h.name.eq_ignore_ascii_case("content-length")
                    && !h.name.eq_ignore_ascii_case("content-type")
            })
            .map(|h| (h.name.to_owned(), h.value.to_owned()))
            .collect();
        return Some(ErrorHead {
            start,
            status,
            headers: kept,
        });
    }
    None
}

/// `buf` with its trailing low-level error head given a JSON body.
fn rewrite(buf: &[u8], head: &ErrorHead) -> Vec<u8> {
    let ErrorHead {
        start,
        status,
        headers,
    } = head;
    let (start, status) = (*start, *status);
    let (code, message) = explain(status).unwrap_or(("bad_request", "bad request"));
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let reason = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = Vec::with_capacity(start + 256 + body.len());
    out.extend_from_slice(&buf[..start]);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    ::metrics::counter!("palaver_http_malformed_requests_total", "status" => status.to_string())
        .increment(1);
    out
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what a rewrite left; ready once nothing is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if !this.upgraded {
            if buf.starts_with(b"HTTP/1.1 101 ") {
                this.upgraded = true;
            } else if let Some(head) = bodiless_error_head(buf) {
                this.pending = rewrite(buf, &head);
                // The bytes are ours now; a pending write finishes on flush.
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ACTIX_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\r\n";

    fn body_of(response: &[u8]) -> serde_json::Value {
        let at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        serde_json::from_slice(&response[at + 4..]).unwrap()
    }

    #[test]
    fn a_bodiless_400_gets_the_json_error_shape() {
        let head = bodiless_error_head(ACTIX_400).unwrap();
        assert_eq!((head.start, head.status), (0, 400));
        let out = rewrite(ACTIX_400, &head);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.contains("content-type: application/json\r\n"),
            "{text}"
        );
        assert_eq!(body_of(&out)["error"]["code"], "malformed_request");
        let declared: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body_of(&out).to_string().len());
    }

    #[test]
    fn an_earlier_response_in_the_same_write_is_kept_as_it_is() {
        let earlier = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let mut buf = earlier.to_vec();
        buf.extend_from_slice(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
        );
        let head = bodiless_error_head(&buf).unwrap();
        assert_eq!((head.start, head.status), (earlier.len(), 431));
        let out = rewrite(&buf, &head);
        assert!(out.starts_with(earlier));
        assert_eq!(
            body_of(&out[earlier.len()..])["error"]["code"],
            "headers_too_large"
        );
    }

    #[test]
    fn the_apis_own_answers_pass_through() {
        for response in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ] {
            assert!(bodiless_error_head(response).is_none());
        }
    }
}
