//! [`OpenAiChat`]: the [`LanguageModel`] port over any OpenAI-compatible
//! `POST /chat/completions` with `"stream": true`.
//!
//! The reply arrives as server-sent events, one `data: {chunk}` per delta,
//! ending with `data: [DONE]`. Dropping the returned stream drops the HTTP
//! response, which closes the connection and stops generation.

use futures_util::stream;
use palaver_actors::conversation::{ChatMessage, ChatRole};
use palaver_actors::ports::{BoxStream, LanguageModel, LlmRequest, ProviderError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::http_api::{BodyReader, HttpApi, error_message};
use super::openai_api::{OpenAiApi, PROVIDER, protocol};
use super::sse::SseParser;

/// The OpenAI chat completions API (or a compatible server) as a
/// [`LanguageModel`].
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    api: HttpApi,
}

impl OpenAiChat {
    pub fn new(api: OpenAiApi) -> Self {
        Self {
            api: api.into_http(),
        }
    }
}

impl LanguageModel for OpenAiChat {
    fn stream_reply(&self, request: LlmRequest) -> BoxStream<Result<String, ProviderError>> {
        let state = ReplyState::Connecting {
            api: self.api.clone(),
            body: ChatCompletionRequest::from(&request),
        };
        Box::pin(stream::unfold(state, next_delta))
    }
}

/// Where one streamed reply is.
enum ReplyState {
    Connecting {
        api: HttpApi,
        body: ChatCompletionRequest,
    },
    Streaming(ReplyReader),
    Finished,
}

async fn next_delta(mut state: ReplyState) -> Option<(Result<String, ProviderError>, ReplyState)> {
    loop {
        state = match state {
            ReplyState::Connecting { api, body } => {
                let started = Instant::now();
                let sent = api
                    .send(started, api.timeouts().first_byte, || {
                        api.post("/chat/completions").json(&body)
                    })
                    .await;
                match sent {
                    Ok(sent) => ReplyState::Streaming(ReplyReader {
                        body: api.stream_body(sent, started),
                        parser: SseParser::new(),
                        finish_seen: false,
                        ended: false,
                    }),
                    Err(err) => return Some((Err(err), ReplyState::Finished)),
                }
            }
            ReplyState::Streaming(mut reader) => {
                return match reader.next_delta().await {
                    Ok(Some(text)) => Some((Ok(text), ReplyState::Streaming(reader))),
                    Ok(None) => None,
                    Err(err) => Some((Err(err), ReplyState::Finished)),
                };
            }
            ReplyState::Finished => return None,
        }
    }
}

/// Reads deltas out of the event stream of one reply.
struct ReplyReader {
    body: BodyReader,
    parser: SseParser,
    /// A choice reported its `finish_reason`: the reply is complete even if
    /// the server closes without `[DONE]`.
    finish_seen: bool,
    /// The body ended; only buffered events remain.
    ended: bool,
}

impl ReplyReader {
    /// The next non-empty text delta, `None` when the reply is complete.
    async fn next_delta(&mut self) -> Result<Option<String>, ProviderError> {
        loop {
            while let Some(event) = self.parser.next_event() {
                match decode_chunk(&event.data)? {
                    Chunk::Delta { text, finished } => {
                        self.finish_seen |= finished;
                        if !text.is_empty() {
                            return Ok(Some(text));
                        }
                    }
                    Chunk::Done => return Ok(None),
                }
            }
            if self.ended {
                return if self.finish_seen {
                    Ok(None)
                } else {
                    Err(protocol("the stream ended before the reply was complete"))
                };
            }
            match self.body.next_chunk().await? {
                Some(bytes) => self
                    .parser
                    .feed(&bytes)
                    .map_err(|e| protocol(e.to_string()))?,
                None => {
                    self.ended = true;
                    self.parser.finish().map_err(|e| protocol(e.to_string()))?;
                }
            }
        }
    }
}

/// What one `data:` event of the stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Text to append (possibly empty: role-only and usage chunks), and
    /// whether the choice is finished.
    Delta { text: String, finished: bool },
    /// `[DONE]`: the reply is complete.
    Done,
}

fn decode_chunk(data: &str) -> Result<Chunk, ProviderError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let value: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| protocol(format!("a stream chunk is not JSON ({e})")))?;
    if value.get("error").is_some_and(|error| !error.is_null()) {
        // An error after a 200 head: the provider failed mid-reply.
        let message = error_message(&value).unwrap_or_else(|| "unknown error".to_owned());
        let status = value
            .pointer("/error/code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..600).contains(code))
            .unwrap_or(200);
        return Err(ProviderError::Status {
            provider: PROVIDER,
            status,
            message,
        });
    }
    let chunk: ChatCompletionChunk = serde_json::from_value(value)
        .map_err(|e| protocol(format!("a stream chunk does not fit the protocol ({e})")))?;
    // We ask for one choice; usage-only chunks have none.
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(Chunk::Delta {
            text: String::new(),
            finished: false,
        });
    };
    Ok(Chunk::Delta {
        text: choice.delta.and_then(|d| d.content).unwrap_or_default(),
        finished: choice.finish_reason.is_some(),
    })
}

#[derive(Debug, Serialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Vec<WireMessage>,
    temperature: f64,
    /// Left out when zero: the provider's own limit applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    stream: bool,
}

#[derive(Debug, Serialize)]
struct WireMessage {
    role: &'static str,
    content: String,
}

impl From<&LlmRequest> for ChatCompletionRequest {
    fn from(request: &LlmRequest) -> Self {
        Self {
            model: request.model.clone(),
            messages: request.messages.iter().map(WireMessage::from).collect(),
            temperature: request.temperature,
            max_tokens: (request.max_tokens > 0).then_some(request.max_tokens),
            stream: true,
        }
    }
}

impl From<&ChatMessage> for WireMessage {
    fn from(message: &ChatMessage) -> Self {
        Self {
            role: match message.role {
                ChatRole::System => "system",
                ChatRole::User => "user",
                ChatRole::Assistant => "assistant",
            },
            content: message.content.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatCompletionChunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(text: &str, finished: bool) -> Chunk {
        Chunk::Delta {
            text: text.to_owned(),
            finished,
        }
    }

    #[test]
    fn content_deltas_are_read() {
        let data = r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
        assert_eq!(decode_chunk(data), Ok(delta("Hel", false)));
    }

    #[test]
    fn role_usage_and_finish_chunks_carry_no_text() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(decode_chunk(role), Ok(delta("", false)));
        let null_content = r#"{"choices":[{"index":0,"delta":{"content":null}}]}"#;
        assert_eq!(decode_chunk(null_content), Ok(delta("", false)));
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(decode_chunk(finish), Ok(delta("", true)));
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3}}"#;
        assert_eq!(decode_chunk(usage), Ok(delta("", false)));
    }

    #[test]
    fn done_ends_the_reply() {
        assert_eq!(decode_chunk("[DONE]"), Ok(Chunk::Done));
    }

    #[test]
    fn an_error_object_becomes_a_status_error() {
        let err = decode_chunk(r#"{"error":{"message":"model overloaded","type":"server_error"}}"#);
        assert_eq!(
            err,
            Err(ProviderError::Status {
                provider: PROVIDER,
                status: 200,
                message: "model overloaded".to_owned(),
            })
        );
        let coded = decode_chunk(r#"{"error":{"message":"too long","code":400}}"#);
        assert!(matches!(
            coded,
            Err(ProviderError::Status { status: 400, .. })
        ));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert_eq!(
            decode_chunk("{not json").map_err(|e| e.code()),
            Err("provider_protocol")
        );
        assert_eq!(
            decode_chunk(r#"{"choices":"many"}"#).map_err(|e| e.code()),
            Err("provider_protocol")
        );
    }

    #[test]
    fn the_request_names_roles_and_leaves_out_a_zero_limit() {
        let request = LlmRequest {
            model: "gpt-4o-mini".to_owned(),
            messages: vec![
                ChatMessage {
                    role: ChatRole::System,
                    content: "Be brief.".to_owned(),
                },
                ChatMessage {
                    role: ChatRole::User,
                    content: "Hi".to_owned(),
                },
                ChatMessage {
                    role: ChatRole::Assistant,
                    content: "Hello".to_owned(),
                },
            ],
            temperature: 0.5,
            max_tokens: 0,
        };
        let body = serde_json::to_value(ChatCompletionRequest::from(&request)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ],
                "temperature": 0.5,
                "stream": true,
            })
        );
    }
}
