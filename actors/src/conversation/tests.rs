//! The conversation driven with simulated time: every test is a script of
//! timestamped inputs and the outputs they must produce.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const LONG_REPLY: &str = "one two three four five six seven eight nine ten.";

fn config() -> ConversationConfig {
    ConversationConfig {
        system_prompt: "You are terse.".into(),
        idle_timeout_ms: 60_000,
        ..ConversationConfig::default()
    }
}

fn drain(c: &mut Conversation) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn events(outputs: &[Output]) -> Vec<&Event> {
    outputs
        .iter()
        .filter_map(|o| {
            if let Output::Event(e) = o {
                Some(e)
            } else {
                None
            }
        })
        .collect()
}

fn stored(outputs: &[Output]) -> Vec<&StoredMessage> {
    outputs
        .iter()
        .filter_map(|o| {
            if let Output::Store(m) = o {
                Some(m)
            } else {
                None
            }
        })
        .collect()
}

fn synthesized(outputs: &[Output]) -> Vec<(ChunkId, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Synthesize { chunk, text } => Some((*chunk, text.clone())),
            _ => None,
        })
        .collect()
}

fn started_turn(outputs: &[Output]) -> Option<(TurnId, Vec<ChatMessage>)> {
    outputs.iter().find_map(|o| match o {
        Output::StartLlm { turn, messages } => Some((*turn, messages.clone())),
        _ => None,
    })
}

/// The caller says `text` from `start` for `speak_ms`; the final transcript
/// arrives `stt_ms` after speech ends. Returns the outputs up to and
/// including the end of turn.
fn caller_says(
    c: &mut Conversation,
    start: Millis,
    speak_ms: Millis,
    text: &str,
    stt_ms: Millis,
) -> Vec<Output> {
    c.handle_input(start, Input::SpeechStarted);
    c.handle_input(
        start + speak_ms / 2,
        Input::Transcript {
            text: text.split(' ').next().unwrap().into(),
            is_final: false,
        },
    );
    c.handle_input(start + speak_ms, Input::SpeechEnded);
    c.handle_input(
        start + speak_ms + stt_ms,
        Input::Transcript {
            text: text.into(),
            is_final: true,
        },
    );
    let mut out = drain(c);
    if let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
        out.extend(drain(c));
    }
    out
}

/// Speaks a whole chunk: `audio_ms` of TTS audio, all of it sent.
fn speak_chunk(
    c: &mut Conversation,
    now: &mut Millis,
    chunk: ChunkId,
    audio_ms: u32,
) -> Vec<Output> {
    c.handle_input(
        *now,
        Input::TtsAudio {
            chunk,
            audio_ms,
            words: None,
        },
    );
    c.handle_input(*now, Input::TtsDone { chunk });
    let mut out = drain(c);
    for _ in 0..audio_ms / 20 {
        *now += 20;
        c.handle_input(*now, Input::AudioSent { audio_ms: 20 });
        out.extend(drain(c));
    }
    out
}

#[test]
fn the_first_message_is_spoken_without_the_language_model() {
    let mut c = Conversation::new(ConversationConfig {
        first_message: Some("Hello! How can I help?".into()),
        ..config()
    });
    let out = drain(&mut c);
    assert!(started_turn(&out).is_none());
    let chunks = synthesized(&out);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].1, "Hello! How can I help?");
    let mut now = 100;
    let out = speak_chunk(&mut c, &mut now, chunks[0].0, 1_000);
    let ev = events(&out);
    assert!(ev.contains(&&Event::AssistantSpeaking));
    assert!(ev.contains(&&Event::AssistantDone {
        text: "Hello! How can I help?".into()
    }));
    let msgs = stored(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (
            msgs[0].role,
            msgs[0].interrupted,
            msgs[0].heard_text.clone()
        ),
        (ChatRole::Assistant, false, None)
    );
    assert_eq!(c.phase(), Phase::Listening);
    assert_eq!(
        c.history().last().unwrap().content,
        "Hello! How can I help?"
    );
}

#[test]
fn waiting_for_media_synthesizes_the_greeting_at_once_and_starts_idle_time_on_connect() {
    // Synthesis starts with the session (its latency overlaps the caller's
    // handshake); the session holds the audio until the media is up.
    let mut c = Conversation::new(ConversationConfig {
        first_message: Some("Hello! How can I help?".into()),
        wait_for_media: true,
        ..config()
    });
    let chunks = synthesized(&drain(&mut c));
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].1, "Hello! How can I help?");

    // The caller's idle time runs from the media coming up, greeting or not.
    let mut quiet = Conversation::new(ConversationConfig {
        wait_for_media: true,
        idle_timeout_ms: 1_000,
        ..config()
    });
    quiet.handle_input(900, Input::AudioSent { audio_ms: 0 });
    quiet.handle_input(950, Input::MediaConnected);
    quiet.handle_input(1_800, Input::AudioSent { audio_ms: 0 });
    assert_ne!(quiet.phase(), Phase::Ended, "{:?}", drain(&mut quiet));
    // A second connect (an ICE restart) changes nothing.
    quiet.handle_input(1_900, Input::MediaConnected);
    quiet.handle_input(2_000, Input::AudioSent { audio_ms: 0 });
    assert_eq!(quiet.phase(), Phase::Ended);
}

#[test]
fn the_turn_ends_after_end_of_turn_silence_and_a_final_transcript() {
    let mut c = Conversation::new(config());
    c.handle_input(1_000, Input::SpeechStarted);
    c.handle_input(
        1_400,
        Input::Transcript {
            text: "what time".into(),
            is_final: false,
        },
    );
    c.handle_input(2_000, Input::SpeechEnded);
    c.handle_input(
        2_150,
        Input::Transcript {
            text: "What time is it?".into(),
            is_final: true,
        },
    );
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::TranscriptPartial {
        text: "what time".into()
    }));
    assert!(
        started_turn(&out).is_none(),
        "not before end_of_turn_ms of silence"
    );
    assert_eq!(c.poll_timeout(), Some(2_500));
    c.handle_timeout(2_499);
    assert!(started_turn(&drain(&mut c)).is_none());
    c.handle_timeout(2_500);
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::TranscriptFinal {
        text: "What time is it?".into()
    }));
    let user = stored(&out);
    assert_eq!(
        (user[0].role, user[0].content.as_str()),
        (ChatRole::User, "What time is it?")
    );
    let (_, history) = started_turn(&out).expect("LLM started");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].role, ChatRole::System);
    assert_eq!(history[1].content, "What time is it?");
    assert_eq!(c.phase(), Phase::Thinking);
}

#[test]
fn a_late_final_transcript_ends_the_turn_when_it_arrives() {
    let mut c = Conversation::new(config());
    c.handle_input(0, Input::SpeechStarted);
    c.handle_input(800, Input::SpeechEnded);
    c.handle_timeout(1_300);
    assert!(started_turn(&drain(&mut c)).is_none(), "no transcript yet");
    c.handle_input(
        1_700,
        Input::Transcript {
            text: "Hi".into(),
            is_final: true,
        },
    );
    assert!(started_turn(&drain(&mut c)).is_some());
}

#[test]
fn resuming_speech_before_the_end_of_turn_keeps_one_utterance() {
    let mut c = Conversation::new(config());
    c.handle_input(0, Input::SpeechStarted);
    c.handle_input(500, Input::SpeechEnded);
    c.handle_input(
        600,
        Input::Transcript {
            text: "I would like".into(),
            is_final: true,
        },
    );
    c.handle_input(800, Input::SpeechStarted);
    c.handle_timeout(1_000);
    assert!(
        started_turn(&drain(&mut c)).is_none(),
        "the caller is speaking again"
    );
    c.handle_input(1_500, Input::SpeechEnded);
    c.handle_input(
        1_600,
        Input::Transcript {
            text: "a room".into(),
            is_final: true,
        },
    );
    c.handle_timeout(2_000);
    let (_, history) = started_turn(&drain(&mut c)).expect("one turn");
    assert_eq!(history.last().unwrap().content, "I would like a room");
}

#[test]
fn noise_with_an_empty_transcript_is_not_a_turn() {
    let mut c = Conversation::new(config());
    let out = caller_says(&mut c, 0, 300, " ", 50);
    assert!(started_turn(&out).is_none());
    assert!(stored(&out).is_empty());
    assert_eq!(c.phase(), Phase::Listening);
}

#[test]
fn replies_stream_sentence_by_sentence_and_report_latencies() {
    let mut c = Conversation::new(config());
    let out = caller_says(&mut c, 0, 1_000, "Hello", 100);
    let (turn, _) = started_turn(&out).unwrap();
    // Speech ended at 1000; turn ends at 1500.
    c.handle_input(
        1_700,
        Input::LlmToken {
            turn,
            text: "Hi there".into(),
        },
    );
    assert!(
        synthesized(&drain(&mut c)).is_empty(),
        "no sentence end yet"
    );
    c.handle_input(
        1_720,
        Input::LlmToken {
            turn,
            text: ". How can".into(),
        },
    );
    let out = drain(&mut c);
    assert_eq!(
        synthesized(&out)
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>(),
        ["Hi there."]
    );
    let first_chunk = synthesized(&out)[0].0;
    c.handle_input(
        1_740,
        Input::LlmToken {
            turn,
            text: " I help?".into(),
        },
    );
    c.handle_input(1_760, Input::LlmDone { turn });
    let out = drain(&mut c);
    let second = synthesized(&out);
    assert_eq!(
        second.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["How can I help?"]
    );
    // The first chunk plays while the second is synthesised.
    c.handle_input(
        1_900,
        Input::TtsAudio {
            chunk: first_chunk,
            audio_ms: 600,
            words: None,
        },
    );
    c.handle_input(1_920, Input::AudioSent { audio_ms: 20 });
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::AssistantSpeaking));
    assert_eq!(c.phase(), Phase::Speaking);
    c.handle_input(1_930, Input::TtsDone { chunk: first_chunk });
    let mut now = 1_920;
    for _ in 0..29 {
        now += 20;
        c.handle_input(now, Input::AudioSent { audio_ms: 20 });
    }
    let out = speak_chunk(&mut c, &mut now, second[0].0, 800);
    let metrics = events(&out)
        .into_iter()
        .find_map(|e| {
            if let Event::TurnMetrics {
                latency,
                interrupted: false,
            } = e
            {
                Some(*latency)
            } else {
                None
            }
        })
        .expect("turn metrics");
    assert_eq!(
        metrics,
        TurnLatency {
            transcript_ms: Some(100),
            first_token_ms: Some(700),
            first_audio_ms: Some(900),
            voice_to_voice_ms: Some(920),
        }
    );
    let reply = stored(&out)
        .into_iter()
        .find(|m| m.role == ChatRole::Assistant)
        .unwrap();
    assert_eq!(reply.content, "Hi there. How can I help?");
    assert!(!reply.interrupted);
    assert_eq!(reply.latency, metrics);
    assert_eq!(c.phase(), Phase::Listening);
}

/// A reply of `LONG_REPLY` whose 2000 ms of audio are playing; `sent_ms`
/// of it already went out. Returns the turn.
fn playing_reply(c: &mut Conversation, sent_ms: u32) -> TurnId {
    let out = caller_says(c, 0, 1_000, "Count to ten", 100);
    let (turn, _) = started_turn(&out).unwrap();
    c.handle_input(
        1_600,
        Input::LlmToken {
            turn,
            text: LONG_REPLY.into(),
        },
    );
    let chunk = synthesized(&drain(c)).first().map(|(id, _)| *id);
    // "ten." ends the text but no whitespace follows yet: flushed on done.
    c.handle_input(1_610, Input::LlmDone { turn });
    let chunk = chunk
        .or_else(|| synthesized(&drain(c)).first().map(|(id, _)| *id))
        .unwrap();
    c.handle_input(
        1_700,
        Input::TtsAudio {
            chunk,
            audio_ms: 2_000,
            words: None,
        },
    );
    c.handle_input(1_700, Input::TtsDone { chunk });
    let mut now = 1_700;
    for _ in 0..sent_ms / 20 {
        now += 20;
        c.handle_input(now, Input::AudioSent { audio_ms: 20 });
    }
    drain(c);
    turn
}

#[test]
fn barge_in_stops_audio_and_stores_exactly_what_was_heard() {
    let mut c = Conversation::new(config());
    playing_reply(&mut c, 1_000);
    // Half of the audio went out at t=2700.
    c.handle_input(2_700, Input::SpeechStarted);
    assert!(
        drain(&mut c)
            .iter()
            .all(|o| !matches!(o, Output::ClearAudio)),
        "not before min_interruption_ms"
    );
    assert_eq!(c.poll_timeout(), Some(3_000));
    c.handle_timeout(3_000);
    let out = drain(&mut c);
    assert!(out.contains(&Output::ClearAudio));
    assert!(out.contains(&Output::CancelTts));
    let heard = events(&out)
        .into_iter()
        .find_map(|e| {
            if let Event::AssistantInterrupted { heard_text } = e {
                Some(heard_text.clone())
            } else {
                None
            }
        })
        .expect("interrupted event");
    assert_eq!(heard, "one two three four five");
    assert!(
        LONG_REPLY.starts_with(&heard) && heard.len() < LONG_REPLY.len(),
        "a strict prefix"
    );
    assert!(events(&out).contains(&&Event::BargeIn {
        onset_to_decision_ms: 300
    }));
    let msg = stored(&out)[0];
    assert!(msg.interrupted);
    assert_eq!(msg.content, LONG_REPLY);
    assert_eq!(msg.heard_text.as_deref(), Some("one two three four five"));
    assert_eq!(c.phase(), Phase::UserSpeaking);
    // The cut reply still reports the stages it reached, marked interrupted,
    // after the interruption itself.
    let kinds: Vec<_> = events(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::AssistantInterrupted { .. } => Some("interrupted"),
            Event::TurnMetrics { .. } => Some("metrics"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["interrupted", "metrics"]);
    let (latency, interrupted) = events(&out)
        .into_iter()
        .find_map(|e| match e {
            Event::TurnMetrics {
                latency,
                interrupted,
            } => Some((*latency, *interrupted)),
            _ => None,
        })
        .expect("turn metrics for the interrupted reply");
    assert!(interrupted);
    assert_eq!(latency, msg.latency);
    assert!(latency.first_audio_ms.is_some() && latency.voice_to_voice_ms.is_some());

    // The caller's interruption becomes the next turn, and the model sees
    // only what was heard.
    c.handle_input(3_400, Input::SpeechEnded);
    c.handle_input(
        3_500,
        Input::Transcript {
            text: "Stop, that's enough".into(),
            is_final: true,
        },
    );
    c.handle_timeout(3_900);
    let (_, history) = started_turn(&drain(&mut c)).expect("next turn");
    let assistant: Vec<_> = history
        .iter()
        .filter(|m| m.role == ChatRole::Assistant)
        .collect();
    assert_eq!(assistant.len(), 1);
    assert_eq!(assistant[0].content, "one two three four five");
    assert_eq!(history.last().unwrap().content, "Stop, that's enough");
}

#[test]
fn late_audio_sent_after_barge_in_changes_nothing() {
    let mut c = Conversation::new(config());
    playing_reply(&mut c, 400);
    c.handle_input(2_100, Input::SpeechStarted);
    c.handle_timeout(2_400);
    drain(&mut c);
    c.handle_input(2_420, Input::AudioSent { audio_ms: 20 });
    assert!(stored(&drain(&mut c)).is_empty());
}

#[test]
fn a_cough_shorter_than_the_threshold_does_not_interrupt() {
    let mut c = Conversation::new(config());
    playing_reply(&mut c, 200);
    c.handle_input(1_950, Input::SpeechStarted);
    c.handle_input(2_100, Input::SpeechEnded);
    c.handle_timeout(2_300);
    let out = drain(&mut c);
    assert!(!out.contains(&Output::ClearAudio), "{out:?}");
    assert_eq!(c.phase(), Phase::Speaking);
    // The reply plays to the end and is stored whole.
    let mut now = 2_300;
    let mut out = Vec::new();
    for _ in 0..90 {
        now += 20;
        c.handle_input(now, Input::AudioSent { audio_ms: 20 });
        out.extend(drain(&mut c));
    }
    let msg = stored(&out)[0];
    assert!(!msg.interrupted);
    assert_eq!(msg.heard_text, None);
}

#[test]
fn a_word_minimum_waits_for_the_transcript() {
    let mut c = Conversation::new(ConversationConfig {
        min_interruption_words: 2,
        ..config()
    });
    playing_reply(&mut c, 400);
    c.handle_input(2_100, Input::SpeechStarted);
    c.handle_input(
        2_300,
        Input::Transcript {
            text: "mm".into(),
            is_final: false,
        },
    );
    c.handle_timeout(2_400);
    assert!(
        !drain(&mut c).contains(&Output::ClearAudio),
        "one word is not enough"
    );
    assert!(
        c.poll_timeout().is_some_and(|t| t > 2_400),
        "no busy timer while waiting for words"
    );
    c.handle_input(
        2_500,
        Input::Transcript {
            text: "wait stop".into(),
            is_final: false,
        },
    );
    let out = drain(&mut c);
    assert!(out.contains(&Output::ClearAudio));
    assert!(events(&out).contains(&&Event::BargeIn {
        onset_to_decision_ms: 400
    }));
}

#[test]
fn interruptions_can_be_turned_off() {
    let mut c = Conversation::new(ConversationConfig {
        interruptions_enabled: false,
        ..config()
    });
    playing_reply(&mut c, 400);
    c.handle_input(2_100, Input::SpeechStarted);
    c.handle_timeout(3_000);
    assert!(!drain(&mut c).contains(&Output::ClearAudio));
    assert_eq!(c.phase(), Phase::Speaking);
}

#[test]
fn a_non_interruptible_first_message_plays_through_speech() {
    let mut c = Conversation::new(ConversationConfig {
        first_message: Some("Welcome to the hotel.".into()),
        first_message_interruptible: false,
        ..config()
    });
    let chunk = synthesized(&drain(&mut c))[0].0;
    c.handle_input(
        10,
        Input::TtsAudio {
            chunk,
            audio_ms: 1_000,
            words: None,
        },
    );
    c.handle_input(10, Input::TtsDone { chunk });
    c.handle_input(30, Input::AudioSent { audio_ms: 20 });
    c.handle_input(100, Input::SpeechStarted);
    c.handle_timeout(1_000);
    assert!(!drain(&mut c).contains(&Output::ClearAudio));
}

#[test]
fn word_timings_from_the_tts_decide_heard_text() {
    let mut c = Conversation::new(ConversationConfig {
        first_message: Some("Good morning dear caller".into()),
        ..config()
    });
    let chunk = synthesized(&drain(&mut c))[0].0;
    let words = ["Good", "morning", "dear", "caller"]
        .iter()
        .zip([300, 800, 1_100, 1_700])
        .map(|(w, end)| WordTiming {
            word: (*w).into(),
            end_ms: end,
        })
        .collect();
    c.handle_input(
        0,
        Input::TtsAudio {
            chunk,
            audio_ms: 1_800,
            words: Some(words),
        },
    );
    let mut now = 0;
    for _ in 0..45 {
        now += 20;
        c.handle_input(now, Input::AudioSent { audio_ms: 20 });
    }
    drain(&mut c);
    c.handle_input(now, Input::SpeechStarted);
    c.handle_timeout(now + 300);
    let out = drain(&mut c);
    assert_eq!(
        stored(&out)[0].heard_text.as_deref(),
        Some("Good morning"),
        "900 ms heard: two words end by then"
    );
}

#[test]
fn a_failed_language_model_apologises_and_the_session_goes_on() {
    let mut c = Conversation::new(config());
    let (turn, _) = started_turn(&caller_says(&mut c, 0, 500, "Hello", 50)).unwrap();
    c.handle_input(
        1_200,
        Input::LlmFailed {
            turn,
            message: "timed out after 10 s".into(),
        },
    );
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::Error {
        code: "llm_failed",
        message: "timed out after 10 s".into()
    }));
    let chunks = synthesized(&out);
    assert_eq!(
        chunks.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        [config().apology.as_str()]
    );
    let mut now = 1_300;
    let out = speak_chunk(&mut c, &mut now, chunks[0].0, 1_000);
    assert_eq!(stored(&out)[0].content, config().apology);
    assert_eq!(c.phase(), Phase::Listening);
    // The next turn works.
    assert!(started_turn(&caller_says(&mut c, 5_000, 500, "Again", 50)).is_some());
}

#[test]
fn a_failed_tts_chunk_keeps_what_was_heard_and_moves_on() {
    let mut c = Conversation::new(config());
    let (turn, _) = started_turn(&caller_says(&mut c, 0, 500, "Hi", 50)).unwrap();
    c.handle_input(
        1_100,
        Input::LlmToken {
            turn,
            text: "First part. Second part.".into(),
        },
    );
    c.handle_input(1_110, Input::LlmDone { turn });
    let chunks = synthesized(&drain(&mut c));
    assert_eq!(chunks.len(), 2);
    let mut now = 1_200;
    speak_chunk(&mut c, &mut now, chunks[0].0, 400);
    c.handle_input(
        now,
        Input::TtsFailed {
            chunk: chunks[1].0,
            message: "HTTP 500".into(),
        },
    );
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::Error {
        code: "tts_failed",
        message: "HTTP 500".into()
    }));
    let msg = stored(&out)[0];
    assert_eq!(msg.content, "First part. Second part.");
    assert_eq!(msg.heard_text.as_deref(), Some("First part."));
    assert_eq!(c.phase(), Phase::Listening);
}

#[test]
fn typed_turns_need_no_audio_and_tokens_of_cancelled_turns_are_ignored() {
    let mut c = Conversation::new(config());
    c.handle_input(
        100,
        Input::UserText {
            text: "What is 2+2?".into(),
        },
    );
    let (first, _) = started_turn(&drain(&mut c)).unwrap();
    c.handle_input(
        200,
        Input::UserText {
            text: "Actually, 3+3?".into(),
        },
    );
    let out = drain(&mut c);
    assert!(out.contains(&Output::CancelLlm { turn: first }));
    let (second, history) = started_turn(&out).unwrap();
    assert_ne!(first, second);
    assert_eq!(history.last().unwrap().content, "Actually, 3+3?");
    c.handle_input(
        250,
        Input::LlmToken {
            turn: first,
            text: "4. ".into(),
        },
    );
    assert!(
        synthesized(&drain(&mut c)).is_empty(),
        "stale tokens are dropped"
    );
}

#[test]
fn idle_and_max_duration_end_the_session_with_a_reason() {
    let mut c = Conversation::new(ConversationConfig {
        idle_timeout_ms: 10_000,
        ..config()
    });
    assert_eq!(c.poll_timeout(), Some(10_000));
    c.handle_timeout(10_000);
    let out = drain(&mut c);
    assert!(out.contains(&Output::End {
        reason: EndReason::IdleTimeout
    }));
    assert_eq!(c.phase(), Phase::Ended);
    assert_eq!(c.poll_timeout(), None);

    let mut c = Conversation::new(ConversationConfig {
        max_duration_ms: 5_000,
        ..config()
    });
    playing_reply(&mut c, 200);
    c.handle_timeout(5_000);
    let out = drain(&mut c);
    assert!(out.contains(&Output::ClearAudio));
    let msg = stored(&out)[0];
    assert!(
        msg.interrupted,
        "a reply cut by the end of the session is stored as heard"
    );
    assert_eq!(
        out.last(),
        Some(&Output::End {
            reason: EndReason::MaxDuration
        })
    );
}

#[test]
fn sentences_are_cut_at_punctuation_followed_by_space_or_at_the_length_limit() {
    assert_eq!(sentence_cut("Hello there. How", 200), Some(12));
    assert_eq!(
        sentence_cut("Hello there.", 200),
        None,
        "the next token may continue it (e.g. 3.5)"
    );
    assert_eq!(sentence_cut("Pi is 3.14 exactly", 200), None);
    assert_eq!(sentence_cut("Wait! ", 200), Some(5));
    assert_eq!(sentence_cut("a b c d e f", 5), Some(9));
    assert_eq!(sentence_cut(". leading", 200), None, "no empty chunk");
}

#[test]
fn proportional_heard_text_counts_only_whole_words() {
    let words: Vec<_> = proportional_words("alpha beta gamma", 500, 1_000).collect();
    // 16 characters, 8 spoken: "alpha" (5) fits, "beta" ends at 10.
    assert_eq!(words, ["alpha"]);
    assert_eq!(proportional_words("alpha beta", 1_000, 1_000).count(), 2);
    assert_eq!(proportional_words("alpha", 0, 1_000).count(), 0);
}

#[test]
fn text_only_sessions_deliver_replies_as_generated() {
    let mut c = Conversation::new(ConversationConfig {
        speak: false,
        first_message: Some("Hi, type away.".into()),
        ..config()
    });
    let out = drain(&mut c);
    assert!(synthesized(&out).is_empty(), "nothing is synthesised");
    assert!(events(&out).contains(&&Event::AssistantDone {
        text: "Hi, type away.".into()
    }));
    assert_eq!(c.phase(), Phase::Listening);
    c.handle_input(
        1_000,
        Input::UserText {
            text: "Hello".into(),
        },
    );
    let (turn, _) = started_turn(&drain(&mut c)).unwrap();
    c.handle_input(
        1_100,
        Input::LlmToken {
            turn,
            text: "Hello! Nice ".into(),
        },
    );
    c.handle_input(
        1_120,
        Input::LlmToken {
            turn,
            text: "to meet you.".into(),
        },
    );
    c.handle_input(1_130, Input::LlmDone { turn });
    let out = drain(&mut c);
    assert!(synthesized(&out).is_empty());
    let msg = stored(&out)[0];
    assert_eq!(msg.content, "Hello! Nice to meet you.");
    assert_eq!(msg.heard_text, None, "everything generated was delivered");
    assert_eq!(
        c.history().last().unwrap().content,
        "Hello! Nice to meet you."
    );
}

#[test]
fn the_history_a_turn_carries_stays_within_its_token_budget() {
    let mut c = Conversation::new(ConversationConfig {
        history_token_budget: 200,
        ..config()
    });
    // Five thousand typed turns, each cancelling the last, as a flooding
    // client sends them: every request carries a bounded history.
    let mut longest = 0;
    for i in 0..5_000u64 {
        c.handle_input(
            100 + i,
            Input::UserText {
                text: format!("message number {i} with some padding words"),
            },
        );
        let (_, messages) = started_turn(&drain(&mut c)).unwrap();
        longest = longest.max(messages.len());
        assert_eq!(messages[0].role, ChatRole::System, "the prompt stays first");
        assert_eq!(
            messages.last().unwrap().content,
            format!("message number {i} with some padding words"),
            "the newest message is always there"
        );
        let tokens: usize = messages.iter().map(estimated_tokens).sum();
        assert!(tokens <= 200, "turn {i}: {tokens} tokens");
    }
    assert!(longest > 2, "older messages are kept while they fit");
    assert!(longest < 30, "{longest} messages");
}

#[test]
fn one_message_over_the_budget_is_kept_alone_with_the_prompt() {
    let mut c = Conversation::new(ConversationConfig {
        history_token_budget: 50,
        ..config()
    });
    for text in ["short one", &"long ".repeat(100)] {
        c.handle_input(100, Input::UserText { text: text.into() });
    }
    let roles: Vec<ChatRole> = c.history().iter().map(|m| m.role).collect();
    assert_eq!(roles, [ChatRole::System, ChatRole::User]);
    assert!(c.history()[1].content.starts_with("long"));
}

#[test]
fn a_goodbye_cuts_the_reply_short_is_heard_whole_then_ends_the_session() {
    let mut c = Conversation::new(config());
    playing_reply(&mut c, 400);
    let now = 2_500;
    c.handle_input(
        now,
        Input::Goodbye {
            text: "We are closing now. Goodbye.".into(),
            reason: EndReason::ServerShutdown,
        },
    );
    let out = drain(&mut c);
    assert!(out.contains(&Output::ClearAudio));
    let cut = stored(&out)[0];
    assert!(cut.interrupted, "{cut:?}");
    assert_eq!(cut.heard_text.as_deref(), Some("one two"));
    let said = synthesized(&out);
    assert_eq!(said.len(), 1);
    assert_eq!(said[0].1, "We are closing now. Goodbye.");
    assert!(!out.iter().any(|o| matches!(o, Output::End { .. })));

    // The caller talks over it: no barge-in, no turn; a typed message is
    // kept but not answered.
    c.handle_input(now + 100, Input::SpeechStarted);
    c.handle_input(
        now + 150,
        Input::UserText {
            text: "wait!".into(),
        },
    );
    let out = drain(&mut c);
    assert!(started_turn(&out).is_none());
    assert_eq!(stored(&out)[0].content, "wait!");
    assert!(!out.contains(&Output::ClearAudio));

    let chunk = said[0].0;
    c.handle_input(
        now + 200,
        Input::TtsAudio {
            chunk,
            audio_ms: 1_000,
            words: None,
        },
    );
    c.handle_input(now + 200, Input::TtsDone { chunk });
    let mut t = now + 200;
    for _ in 0..50 {
        t += 20;
        c.handle_input(t, Input::AudioSent { audio_ms: 20 });
    }
    let out = drain(&mut c);
    let goodbye = stored(&out)[0];
    assert_eq!(goodbye.content, "We are closing now. Goodbye.");
    assert!(!goodbye.interrupted && goodbye.heard_text.is_none());
    assert!(out.contains(&Output::End {
        reason: EndReason::ServerShutdown
    }));
    assert_eq!(c.phase(), Phase::Ended);
}

#[test]
fn a_goodbye_that_is_never_heard_ends_the_session_at_its_deadline() {
    let mut c = Conversation::new(config());
    c.handle_input(
        1_000,
        Input::Goodbye {
            text: "Goodbye.".into(),
            reason: EndReason::ServerShutdown,
        },
    );
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(1_000 + FAREWELL_MAX_MS));
    c.handle_timeout(1_000 + FAREWELL_MAX_MS);
    let out = drain(&mut c);
    assert!(out.contains(&Output::End {
        reason: EndReason::ServerShutdown
    }));
}

#[test]
fn a_text_only_session_gets_its_goodbye_as_text_and_ends_at_once() {
    let mut c = Conversation::new(ConversationConfig {
        speak: false,
        ..config()
    });
    c.handle_input(
        500,
        Input::Goodbye {
            text: "Goodbye.".into(),
            reason: EndReason::ServerShutdown,
        },
    );
    let out = drain(&mut c);
    assert!(events(&out).contains(&&Event::AssistantDone {
        text: "Goodbye.".into()
    }));
    assert!(out.contains(&Output::End {
        reason: EndReason::ServerShutdown
    }));
}

#[test]
fn a_dropped_caller_has_the_grace_period_to_rejoin_and_hears_the_rest() {
    let mut c = Conversation::new(ConversationConfig {
        reconnect_grace_ms: 5_000,
        ..config()
    });
    playing_reply(&mut c, 400);
    c.handle_input(2_200, Input::TransportLost);
    assert!(
        c.awaiting_media(),
        "no audio plays while the caller is gone"
    );
    assert_eq!(c.poll_timeout(), Some(7_200));
    let out = drain(&mut c);
    assert!(
        !out.contains(&Output::ClearAudio),
        "the unheard rest stays queued"
    );
    assert!(stored(&out).is_empty());

    // Back in time: the deadline is gone, the audio plays on.
    c.handle_input(6_000, Input::TransportRestored);
    c.handle_input(6_050, Input::MediaConnected);
    assert!(!c.awaiting_media());
    c.handle_timeout(7_200);
    assert_ne!(c.phase(), Phase::Ended);
    let mut now = 6_050;
    for _ in 0..80 {
        now += 20;
        c.handle_input(now, Input::AudioSent { audio_ms: 20 });
    }
    let out = drain(&mut c);
    let reply = stored(&out)[0];
    assert!(
        !reply.interrupted && reply.heard_text.is_none(),
        "{reply:?}"
    );
    assert_eq!(reply.content, LONG_REPLY);
}

#[test]
fn a_caller_who_does_not_come_back_ends_the_session_as_connection_lost() {
    let mut c = Conversation::new(ConversationConfig {
        reconnect_grace_ms: 5_000,
        ..config()
    });
    playing_reply(&mut c, 400);
    c.handle_input(2_200, Input::TransportLost);
    drain(&mut c);
    c.handle_timeout(7_200);
    let out = drain(&mut c);
    assert!(out.contains(&Output::End {
        reason: EndReason::ConnectionLost
    }));
    let cut = stored(&out)[0];
    assert_eq!(cut.heard_text.as_deref(), Some("one two"));

    let mut c = Conversation::new(ConversationConfig {
        reconnect_grace_ms: 0,
        ..config()
    });
    c.handle_input(100, Input::TransportLost);
    assert!(drain(&mut c).contains(&Output::End {
        reason: EndReason::Hangup
    }));
}
