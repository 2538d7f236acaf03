//! The `voice-ws` scenario: callers holding voice sessions over the server's
//! WebSocket transport and typing their turns, timed at the transport.
//!
//! What a run does and measures is the shared voice scenario ([`voice`]);
//! this module is its WebSocket [`Transport`]: join `ws_url?token=…`, send
//! `user-message` / `end-session` as text frames and the caller's microphone
//! as binary frames (20 ms of 16 kHz PCM16, 640 bytes, one every 20 ms),
//! read events (text frames) and audio (binary frames of 20 ms, 16 kHz
//! PCM16), each stamped when it was read off the socket.
//!
//! [`run`] must be awaited inside an actix System (`actix_rt::System`,
//! `#[actix_web::test]`): awc's client is not `Send` and runs on the
//! System's thread, with all the callers.
//!
//! [`voice`]: crate::voice

use std::time::Instant;

use awc::ws::{Frame, Message};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use palaver_media::AudioFrame;
use serde_json::Value;

use crate::report::Report;
use crate::rest::RunError;
use crate::utterance::{MicFrame, Utterance};
use crate::voice::{self, Incoming, Transport};

pub use crate::voice::{
    AssistantShape, BARGE_IN_STOP, CREATE_SESSION, END_OF_TURN, END_SESSION, ERROR_EVENTS,
    FIRST_AUDIO, FIRST_TEXT, FRAME_JITTER, HANG_UP, INTERRUPTED_EVENT, SERVER_V2V, SETUP,
    TRANSPORT_OVERHEAD, TURN, TurnInput, VOICE_TO_VOICE, VoiceConfig,
};

/// Connect → `session.started`.
pub const WS_CONNECT: &str = "ws-connect";

/// The server's audio frames: 20 ms of 16 kHz mono PCM16.
const FRAME_BYTES: usize = 640;
/// Largest frame a caller accepts from the server.
const MAX_FRAME_BYTES: usize = 256 * 1024;

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// The utterance and silence as binary frames, shared by every caller.
pub(crate) struct PcmAudio {
    speech: Vec<Bytes>,
    silence: Bytes,
}

fn pcm_bytes(frame: &AudioFrame) -> Bytes {
    let mut bytes = [0u8; AudioFrame::BYTES];
    frame.write_le_bytes(&mut bytes);
    Bytes::copy_from_slice(&bytes)
}

/// A caller's WebSocket.
pub(crate) struct WsLine {
    socket: Socket,
}

impl Transport for WsLine {
    type Setup = ();
    const SCENARIO: &'static str = "voice-ws";
    const CONNECT: &'static str = WS_CONNECT;

    async fn connect(_: &(), session: &Value, until: Instant) -> Result<Self, String> {
        let (Some(ws_url), Some(token)) = (session["ws_url"].as_str(), session["token"].as_str())
        else {
            return Err("no ws_url in the session".to_owned());
        };
        let client = crate::ws_client::client(until.saturating_duration_since(Instant::now()));
        let connecting = client
            .ws(format!("{ws_url}?token={token}"))
            .max_frame_size(MAX_FRAME_BYTES)
            .connect();
        match tokio::time::timeout_at(until.into(), connecting).await {
            Err(_) => Err("timeout".to_owned()),
            Ok(Err(awc::error::WsClientError::InvalidResponseStatus(status))) => {
                Err(format!("status {}", status.as_u16()))
            }
            Ok(Err(err)) => Err(format!("connect: {err}")),
            Ok(Ok((_, socket))) => Ok(Self { socket }),
        }
    }

    async fn send(&mut self, message: &Value) -> Result<Instant, String> {
        let at = Instant::now();
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .map_err(|err| format!("send failed: {err}"))?;
        Ok(at)
    }

    type Audio = PcmAudio;

    fn prepare_audio(utterance: &Utterance) -> Result<PcmAudio, String> {
        Ok(PcmAudio {
            speech: utterance.frames().iter().map(pcm_bytes).collect(),
            silence: pcm_bytes(&AudioFrame::silence()),
        })
    }

    async fn send_audio(&mut self, audio: &PcmAudio, frame: MicFrame) -> Result<Instant, String> {
        let bytes = match frame {
            MicFrame::Silence => &audio.silence,
            MicFrame::Speech(n) => audio.speech.get(n).unwrap_or(&audio.silence),
        };
        let at = Instant::now();
        // Bytes are shared: no copy per caller and frame.
        self.socket
            .send(Message::Binary(bytes.clone()))
            .await
            .map_err(|err| format!("sending audio failed: {err}"))?;
        Ok(at)
    }

    /// The next audio frame or event; answers pings on the way.
    async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            let frame = match self.socket.next().await {
                None => return Err("connection closed".into()),
                Some(Err(err)) => return Err(format!("protocol error: {err}")),
                Some(Ok(frame)) => frame,
            };
            let at = Instant::now();
            match frame {
                Frame::Binary(bytes) if bytes.len() == FRAME_BYTES => {
                    return Ok(Incoming::Audio(at));
                }
                Frame::Binary(bytes) => {
                    return Err(format!(
                        "audio frame of {} bytes, not {FRAME_BYTES}",
                        bytes.len()
                    ));
                }
                Frame::Text(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map(|event| Incoming::Event(at, event))
                        .map_err(|_| "an event that is not JSON".into());
                }
                Frame::Ping(bytes) => {
                    let _ = self.socket.send(Message::Pong(bytes)).await;
                }
                Frame::Pong(_) => {}
                Frame::Close(reason) => {
                    let code = reason.map_or("no code".to_owned(), |r| format!("{:?}", r.code));
                    return Err(format!("closed by the server ({code})"));
                }
                Frame::Continuation(_) => return Err("a fragmented frame".into()),
            }
        }
    }

    async fn hang_up(mut self, _: &()) -> Result<(), String> {
        let _ = self.socket.send(Message::Close(None)).await;
        Ok(())
    }
}

/// Runs the scenario over WebSocket and returns its report. Await it inside
/// an actix System: the callers are tasks on the current thread.
pub async fn run(config: VoiceConfig) -> Result<Report, RunError> {
    voice::run::<WsLine>(config, ()).await
}
