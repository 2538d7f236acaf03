//! A client of `GET /v1/rooms/ws` for tests: connect with a user's token,
//! send JSON, read events (answering pings), wait for one of a kind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

pub type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// A connected client and the events it has read so far.
pub struct Client {
    pub socket: Socket,
    pub seen: Vec<Value>,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> Client {
        let (_, socket) = awc::Client::new()
            .ws(format!("ws://{addr}/v1/rooms/ws?token={token}"))
            .connect()
            .await
            .expect("websocket connects");
        let mut client = Client {
            socket,
            seen: Vec::new(),
        };
        client.expect("connected", |_| true).await;
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    /// The next event, or `None` when nothing arrives within `wait` (or the
    /// socket closed).
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(wait, self.socket.next())
                .await
                .ok()??;
            match frame {
                Ok(Frame::Text(bytes)) => {
                    let event: Value = serde_json::from_slice(&bytes).unwrap();
                    self.seen.push(event.clone());
                    return Some(event);
                }
                Ok(Frame::Ping(bytes)) => {
                    let _ = self.socket.send(Message::Pong(bytes)).await;
                }
                Ok(Frame::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until an event of `kind` that `matches` (20 s at most).
    pub async fn expect(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) if event["type"] == kind && matches(&event) => return event,
                Some(_) => {}
                None => panic!("no matching `{kind}` within 20 s; saw {:?}", self.seen),
            }
        }
    }

    /// Reads for `wait` and returns everything that arrived.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return got;
            }
            match self.next(left).await {
                Some(event) => got.push(event),
                None => return got,
            }
        }
    }
}
