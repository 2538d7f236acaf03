use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use palaver_loadtest::chat::{self, ChatConfig};
use palaver_loadtest::fake_providers::{self, DEFAULT_REPLY, FakeProvidersConfig};
use palaver_loadtest::report::Report;
use palaver_loadtest::rest::{self, RestConfig, RestScenario, RunError};
use palaver_loadtest::scenario::ScenarioFile;
use palaver_loadtest::voice::{AssistantShape, TurnInput};
use palaver_loadtest::voice_rtc::{self, RtcOptions};
use palaver_loadtest::voice_ws::{self, VoiceConfig};

/// Load-test a running Palaver server over the wire.
#[derive(Debug, Parser)]
#[command(name = "palaver-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// REST control plane: create/end sessions or list assistants.
    Rest {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Organization API key (raise the server's limits.requests_per_second
        /// and limits.max_open_sessions_per_org for big runs).
        #[arg(long, env = "PALAVER_API_KEY", hide_env_values = true)]
        api_key: String,
        #[arg(long, value_enum, default_value = "sessions")]
        scenario: RestScenario,
        /// Iterations across all clients.
        #[arg(long, default_value_t = 1000)]
        iterations: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Upper bound on the run, in seconds.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// Use this assistant instead of creating one.
        #[arg(long)]
        assistant_id: Option<i64>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the report as a self-contained HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Voice sessions over WebSocket: callers speak (or type) turns, some cut
    /// in; voice-to-voice, first text, turn, barge-in stop and frame jitter
    /// are timed at the transport.
    VoiceWs(VoiceArgs),
    /// Voice sessions over WebRTC (webrtc-rs callers, Opus both ways, events
    /// on the `events` data channel): the voice-ws scenario and figures, plus
    /// RTP counts (missing, out of order).
    VoiceRtc {
        #[command(flatten)]
        voice: VoiceArgs,
        /// Decode the server's Opus (CPU on the load generator; timing does
        /// not need it; decode errors are counted when on).
        #[arg(long)]
        decode_audio: bool,
        /// Received packets a caller holds unread before dropping new ones.
        #[arg(long, default_value_t = 500)]
        audio_queue: usize,
    },
    /// Chat: users in group rooms on the live rooms WebSocket send messages
    /// at a steady rate, with typing and presence churn; send → ack and send
    /// → delivery at every other member are timed.
    Chat(ChatArgs),
    /// A scenario from a TOML file: `[voice]` (the voice-ws / voice-rtc
    /// flags, and `transport = "ws" | "rtc"`), `[chat]` (the chat flags), or
    /// both at once (mixed).
    Run {
        /// The scenario file.
        #[arg(long)]
        scenario: PathBuf,
        /// Organization API key (never in the file).
        #[arg(long, env = "PALAVER_API_KEY", hide_env_values = true)]
        api_key: String,
        /// Server base URL, over the file's `url`.
        #[arg(long)]
        url: Option<String>,
        /// Over the file's `server_pid`.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Over the file's `providers_url`.
        #[arg(long)]
        providers_url: Option<String>,
        /// Over the file's `json`.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Over the file's `html`.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// An OpenAI-compatible fake (chat SSE, speech PCM, transcriptions) on
    /// loopback; prints its base URL, serves until SIGINT/SIGTERM.
    FakeProviders {
        /// Loopback address to listen on (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Delay before a chat completion's first byte.
        #[arg(long, default_value_t = 0)]
        llm_delay_ms: u64,
        /// Delay between two streamed words.
        #[arg(long, default_value_t = 0)]
        llm_token_gap_ms: u64,
        /// Delay before synthesized speech's first byte.
        #[arg(long, default_value_t = 0)]
        tts_delay_ms: u64,
        /// Delay before a transcription answers.
        #[arg(long, default_value_t = 0)]
        stt_delay_ms: u64,
        /// What the model answers, every time.
        #[arg(long, default_value = DEFAULT_REPLY)]
        reply: String,
        /// What the recognizer hears, every time.
        #[arg(long, default_value = "Do you have a room tonight?")]
        transcript: String,
        /// Milliseconds of speech per character.
        #[arg(long, default_value_t = 60)]
        ms_per_char: u32,
        /// HTTP worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

/// What the chat scenario takes.
#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Organization API key: creates the users and rooms (raise the
    /// server's limits.requests_per_second for big runs).
    #[arg(long, env = "PALAVER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Users, each with one socket.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Group rooms; user i is in room i % rooms.
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Messages per second over all users.
    #[arg(long, default_value_t = 20.0)]
    messages_per_second: f64,
    /// Messages over all users (0: bounded by time only).
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// Nobody sends after this many seconds.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// Share of messages announced with `typing` first.
    #[arg(long, default_value_t = 0.5)]
    typing_share: f64,
    /// Presence changes (away, then online) per user per minute.
    #[arg(long, default_value_t = 2.0)]
    presence_per_minute: f64,
    /// After sending stops, how long deliveries may still take, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Characters of text per message.
    #[arg(long, default_value_t = 60)]
    message_chars: usize,
    /// Sample this process (the server) for CPU and RSS once a second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also sample this process, another node of the cluster (repeat the
    /// flag for more).
    #[arg(long = "node-pid")]
    node_pids: Vec<u32>,
    /// Connect the users' sockets to these nodes of a cluster, round robin
    /// (repeat the flag; setup still goes through --url): deliveries cross
    /// nodes. Default: --url.
    #[arg(long = "socket-url")]
    socket_urls: Vec<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page here.
    #[arg(long)]
    html: Option<PathBuf>,
}

impl ChatArgs {
    fn into_config(self) -> (ChatConfig, Outputs) {
        let config = ChatConfig {
            base_url: self.url,
            api_key: self.api_key,
            users: self.users,
            rooms: self.rooms,
            messages_per_second: self.messages_per_second,
            messages: self.messages,
            max_duration: Duration::from_secs(self.max_seconds),
            typing_share: self.typing_share,
            presence_per_minute: self.presence_per_minute,
            drain: Duration::from_secs(self.drain_seconds),
            message_chars: self.message_chars,
            server_pid: self.server_pid,
            node_pids: self.node_pids,
            socket_urls: self.socket_urls,
        };
        (
            config,
            Outputs {
                json: self.json,
                html: self.html,
            },
        )
    }
}

/// What both voice scenarios take.
#[derive(Debug, clap::Args)]
struct VoiceArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Organization API key (raise the server's limits for big runs).
    #[arg(long, env = "PALAVER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Use this assistant; one with the openai STT, LLM and TTS is created
    /// when absent.
    #[arg(long)]
    assistant_id: Option<i64>,
    /// Spoken turns (the utterance as real-time paced audio: PCM over the
    /// WebSocket, Opus over WebRTC) or typed ones.
    #[arg(long, value_enum, default_value = "spoken")]
    input: TurnInput,
    /// What spoken callers say: a WAV file (any rate, mono or stereo),
    /// trimmed to what the VAD hears as speech. Default: 1.2 s of a
    /// synthetic voiced signal.
    #[arg(long)]
    utterance: Option<PathBuf>,
    /// Pause before each turn, in ms (spoken callers send silence).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 10)]
    callers: usize,
    /// Replies each caller hears to the end.
    #[arg(long, default_value_t = 3)]
    turns: u32,
    /// Share of callers (0 to 1) that cut into every reply.
    #[arg(long, default_value_t = 0.3)]
    barge_in_share: f64,
    /// Audio frames (20 ms each) heard before cutting in.
    #[arg(long, default_value_t = 10)]
    barge_in_after_frames: usize,
    /// Callers started per second (0: all at once).
    #[arg(long, default_value_t = 20.0)]
    ramp_per_second: f64,
    /// No caller or turn starts after this many seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// A caller hearing nothing this long while waiting has failed.
    #[arg(long, default_value_t = 30)]
    idle_timeout_seconds: u64,
    /// What callers type (typed turns).
    #[arg(long, default_value = "Do you have a room tonight?")]
    message: String,
    /// What barge-in callers type to cut in (typed turns).
    #[arg(long, default_value = "Sorry, how much is it?")]
    interruption: String,
    /// Sample this process (the server) for CPU and RSS once a second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The fake providers' base URL, to report their configured latency.
    #[arg(long)]
    providers_url: Option<String>,
    /// What the assistant the run creates says first (not with
    /// --assistant-id); callers hear it out before their first turn, and
    /// `setup` (offer or WebSocket upgrade → its first audio) is timed.
    #[arg(long)]
    first_message: Option<String>,
    /// The created assistant's end-of-turn silence (server default 500).
    #[arg(long)]
    end_of_turn_ms: Option<u32>,
    /// The created assistant's speech needed to cut in (server default 300).
    #[arg(long)]
    min_interruption_ms: Option<u32>,
    /// Each caller calls again (a new session) after hanging up, until
    /// --max-seconds: the same number of calls at once for the whole run,
    /// as in a soak.
    #[arg(long)]
    repeat_calls: bool,
    /// Report the server's RSS growth from this many seconds into the run
    /// to its end (the medians of a minute of samples at each end).
    #[arg(long)]
    warmup_seconds: Option<u64>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report as a self-contained HTML page (tables, and
    /// inline SVG charts of the percentiles and of CPU and memory over
    /// time) here.
    #[arg(long)]
    html: Option<PathBuf>,
}

impl VoiceArgs {
    /// The scenario's settings, and where to write the reports.
    fn into_config(self) -> (VoiceConfig, Outputs) {
        let config = VoiceConfig {
            base_url: self.url,
            api_key: self.api_key,
            assistant_id: self.assistant_id,
            callers: self.callers,
            turns: self.turns,
            input: self.input,
            utterance: self.utterance,
            pause_between_turns: Duration::from_millis(self.pause_ms),
            barge_in_share: self.barge_in_share,
            barge_in_after_frames: self.barge_in_after_frames,
            ramp_per_second: self.ramp_per_second,
            max_duration: Duration::from_secs(self.max_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            message: self.message,
            interruption: self.interruption,
            server_pid: self.server_pid,
            fake_providers_url: self.providers_url,
            assistant: AssistantShape {
                first_message: self.first_message,
                end_of_turn_ms: self.end_of_turn_ms,
                min_interruption_ms: self.min_interruption_ms,
            },
            repeat_calls: self.repeat_calls,
            warmup: self.warmup_seconds.map(Duration::from_secs),
        };
        (
            config,
            Outputs {
                json: self.json,
                html: self.html,
            },
        )
    }
}

/// Where the report goes besides the terminal.
#[derive(Debug, Default)]
struct Outputs {
    json: Option<PathBuf>,
    html: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Rest {
            url,
            api_key,
            scenario,
            iterations,
            clients,
            max_seconds,
            assistant_id,
            json,
            html,
        } => {
            let config = RestConfig {
                base_url: url,
                api_key,
                scenario,
                iterations,
                clients,
                max_duration: Duration::from_secs(max_seconds),
                assistant_id,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("palaver-loadtest: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            finish(runtime.block_on(rest::run(config)), Outputs { json, html })
        }
        Command::VoiceWs(voice) => {
            let (config, outputs) = voice.into_config();
            // awc's WebSocket client runs on an actix System (one thread).
            let result = actix_rt::System::new().block_on(voice_ws::run(config));
            finish(result, outputs)
        }
        Command::VoiceRtc {
            voice,
            decode_audio,
            audio_queue,
        } => {
            let (config, outputs) = voice.into_config();
            let options = RtcOptions {
                decode_audio,
                audio_queue,
            };
            // One thread for everything, callers and their webrtc-rs stacks
            // alike, as voice-ws does: at 100 callers it is a third of a
            // core. (With the callers on a LocalSet in a multi-threaded
            // runtime, runs of 50+ callers sometimes stopped making progress.)
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("palaver-loadtest: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let local = tokio::task::LocalSet::new();
            let result = runtime.block_on(local.run_until(voice_rtc::run(config, options)));
            finish(result, outputs)
        }
        Command::Chat(args) => {
            let (config, outputs) = args.into_config();
            let result = actix_rt::System::new().block_on(chat::run(config));
            finish(result, outputs)
        }
        Command::Run {
            scenario,
            api_key,
            url,
            server_pid,
            providers_url,
            json,
            html,
        } => {
            let mut file = match ScenarioFile::read(&scenario) {
                Ok(file) => file,
                Err(err) => {
                    eprintln!("palaver-loadtest: {err}");
                    return ExitCode::FAILURE;
                }
            };
            file.url = url.or(file.url);
            file.server_pid = server_pid.or(file.server_pid);
            file.providers_url = providers_url.or(file.providers_url);
            file.json = json.or(file.json);
            file.html = html.or(file.html);
            let scenario = file.into_scenario(&api_key);
            let outputs = Outputs {
                json: scenario.json.clone(),
                html: scenario.html.clone(),
            };
            // Everything on one actix System: awc (voice-ws, chat) needs
            // it, and webrtc-rs runs on its Tokio runtime as on any.
            let result =
                actix_rt::System::new().block_on(palaver_loadtest::scenario::run(scenario));
            finish(result, outputs)
        }
        Command::FakeProviders {
            bind,
            llm_delay_ms,
            llm_token_gap_ms,
            tts_delay_ms,
            stt_delay_ms,
            reply,
            transcript,
            ms_per_char,
            workers,
        } => {
            let config = FakeProvidersConfig {
                llm_delay: Duration::from_millis(llm_delay_ms),
                llm_token_gap: Duration::from_millis(llm_token_gap_ms),
                tts_delay: Duration::from_millis(tts_delay_ms),
                stt_delay: Duration::from_millis(stt_delay_ms),
                reply,
                transcript,
                ms_per_char,
                workers,
            };
            let served = actix_rt::System::new().block_on(async move {
                let fake =
                    fake_providers::start_for_cli(bind, config).map_err(|err| err.to_string())?;
                // Scripts read the base URL from the first line.
                println!("{}", fake.base_url);
                let _ = std::io::stdout().flush();
                fake.serve_until_signalled()
                    .await
                    .map_err(|err| err.to_string())
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("palaver-loadtest: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints the report, writes its JSON; fails when any operation failed.
fn finish(result: Result<Report, RunError>, outputs: Outputs) -> ExitCode {
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("palaver-loadtest: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    let files = [
        (
            outputs.json,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ),
        (outputs.html, palaver_loadtest::html::render(&report)),
    ];
    for (path, text) in files {
        let Some(path) = path else { continue };
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("palaver-loadtest: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
