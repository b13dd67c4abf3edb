//! The HTTP API in the shape OpenAI clients expect, plus the diffusion settings as extra fields.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get, routing::post};
use dllm_cache::pipeline::{CacheChoice, Completion, GenerateOptions};
use dllm_cache::sampler::CommitRule;
use dllm_cache::{ChatMessage, DllmCacheConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::engine::{Engine, Job, JobEvent, Refused};
use crate::metrics::Metrics;

/// Everything a handler needs.
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// The model's name in responses and `/v1/models`.
    pub model_name: String,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(engine: Engine, metrics: Arc<Metrics>, model_name: String) -> Self {
        Self {
            engine,
            metrics,
            model_name,
            next_id: AtomicU64::new(1),
        }
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }});
        (self.status, Json(body)).into_response()
    }
}

impl From<dllm_cache::Error> for ApiError {
    fn from(e: dllm_cache::Error) -> Self {
        use dllm_cache::Error as E;
        let param = match &e {
            E::InvalidArgument { name, .. } => Some(*name),
            _ => None,
        };
        match e {
            E::InvalidArgument { .. }
            | E::SequenceTooLong { .. }
            | E::TokenOutOfRange { .. }
            | E::Tokenizer(_) => ApiError::invalid(e.to_string(), param),
            other => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                message: other.to_string(),
                param: None,
            },
        }
    }
}

/// The fields both endpoints take besides the prompt or messages. Unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Accepted and ignored: this server serves one model.
    #[serde(default)]
    model: Option<String>,
    /// The generation length in tokens (the response is cut at EOS / end of turn).
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    /// Only 1 is supported.
    #[serde(default)]
    n: Option<usize>,
    /// Accepted and ignored, as OpenAI does for analytics.
    #[serde(default)]
    user: Option<String>,
    // Diffusion settings (documented extras, defaults from the model folder).
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    block_length: Option<usize>,
    /// `schedule`, `threshold:TAU` or `factor:F`.
    #[serde(default)]
    decode: Option<String>,
    /// `none`, `dllm`, `prefix` or `dual`.
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    kp: Option<usize>,
    #[serde(default)]
    kr: Option<usize>,
    #[serde(default)]
    rho: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessageIn {
    role: String,
    content: String,
    /// Accepted and ignored.
    #[serde(default)]
    name: Option<String>,
}

/// Parses a JSON body into its main field `key` (the prompt or the messages) and the
/// settings, as an OpenAI-style 400 when it does not fit (unknown fields included).
fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes, key: &str) -> Result<(T, Settings), ApiError> {
    let bad = |e: String| ApiError::invalid(format!("invalid body: {e}"), None);
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let main = fields
        .remove(key)
        .ok_or_else(|| ApiError::invalid(format!("missing field `{key}`"), Some(key)))?;
    let main = T::deserialize(main)
        .map_err(|e| ApiError::invalid(format!("invalid `{key}`: {e}"), Some(key)))?;
    let settings = Settings::deserialize(Value::Object(fields)).map_err(|e| bad(e.to_string()))?;
    Ok((main, settings))
}

/// The generation options of a request: the model folder's defaults, then its fields.
fn options_of(state: &AppState, s: &Settings) -> Result<GenerateOptions, ApiError> {
    let _ = (&s.model, &s.user);
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
    }
    let mut o = state.engine.pipeline().default_options().clone();
    if let Some(n) = s.max_tokens {
        o = o.with_max_new_tokens(n);
    }
    if let Some(t) = s.temperature {
        o = o.with_temperature(t);
    }
    if s.top_p.is_some() {
        o = o.with_top_p(s.top_p);
    }
    if let Some(seed) = s.seed {
        o = o.with_seed(seed);
    }
    if s.steps.is_some() {
        o = o.with_steps(s.steps);
    }
    if s.block_length.is_some() {
        o = o.with_block_length(s.block_length);
    }
    if let Some(d) = &s.decode {
        let rule: CommitRule = d
            .parse()
            .map_err(|e: dllm_cache::Error| ApiError::invalid(e.to_string(), Some("decode")))?;
        o = o.with_commit(rule);
    }
    let dllm_fields = s.kp.is_some() || s.kr.is_some() || s.rho.is_some();
    let policy = s.policy.as_deref().unwrap_or(match &o.cache {
        CacheChoice::None => "none",
        CacheChoice::Prefix => "prefix",
        CacheChoice::Dual => "dual",
        _ => "dllm",
    });
    let cache = match policy {
        "dllm" => {
            let base = match &o.cache {
                CacheChoice::Dllm(c) => c.clone(),
                _ => DllmCacheConfig::new(),
            };
            let (kp, kr, rho) = (
                s.kp.unwrap_or(base.prompt_interval),
                s.kr.unwrap_or(base.response_interval),
                s.rho.unwrap_or(base.refresh_ratio),
            );
            CacheChoice::Dllm(
                base.with_prompt_interval(kp)
                    .with_response_interval(kr)
                    .with_refresh_ratio(rho),
            )
        }
        _ if dllm_fields => {
            return Err(ApiError::invalid(
                "kp, kr and rho apply to policy `dllm` only",
                Some("policy"),
            ));
        }
        "none" => CacheChoice::None,
        "prefix" => CacheChoice::Prefix,
        "dual" => CacheChoice::Dual,
        other => {
            return Err(ApiError::invalid(
                format!("unknown policy `{other}` (none, dllm, prefix, dual)"),
                Some("policy"),
            ));
        }
    };
    Ok(o.with_cache(cache))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Queues a generation; the receiver gets its deltas and then its completion.
fn enqueue(
    state: &AppState,
    prompt: Vec<u32>,
    options: GenerateOptions,
) -> Result<UnboundedReceiver<JobEvent>, ApiError> {
    state
        .engine
        .pipeline()
        .validate_options(&options, prompt.len())?;
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt,
        options,
        deadline: Instant::now() + state.engine.config().timeout,
        events: tx,
    };
    match state.engine.submit(job) {
        Ok(()) => {
            state.metrics.count_request();
            Ok(rx)
        }
        Err(Refused::QueueFull) => {
            state.metrics.count_rejected();
            Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "rate_limit_error",
                message: "the queue is full; retry later".into(),
                param: None,
            })
        }
        Err(Refused::Closed) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the server is shutting down".into(),
            param: None,
        }),
    }
}

/// Waits for a job's completion, dropping its deltas.
async fn finish(mut rx: UnboundedReceiver<JobEvent>) -> Result<Completion, ApiError> {
    while let Some(event) = rx.recv().await {
        match event {
            JobEvent::Delta(_) => {}
            JobEvent::Done(c) => return Ok(*c),
            JobEvent::Failed(message) => {
                let timed_out = message.contains("timed out");
                return Err(ApiError {
                    status: if timed_out {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    },
                    kind: "server_error",
                    message,
                    param: None,
                });
            }
        }
    }
    Err(ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message: "the generation ended without a result".into(),
        param: None,
    })
}

/// `stop` when the response ended at EOS / end of turn, else `length`.
fn finish_reason(c: &Completion) -> &'static str {
    if c.tokens.len() < c.stats.generated_positions {
        "stop"
    } else {
        "length"
    }
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.stats.prompt_tokens,
        "completion_tokens": c.stats.completion_tokens,
        "total_tokens": c.stats.prompt_tokens + c.stats.completion_tokens,
    })
}

/// The diffusion figures of a completion (an extra field beside OpenAI's).
fn dllm_stats(c: &Completion) -> Value {
    json!({
        "steps": c.stats.steps,
        "forwards": c.stats.forwards,
        "batch_size": c.stats.batch_size,
        "flops": c.stats.flops.total(),
        "flops_saved": c.stats.flops_saved,
        "seconds": c.stats.wall_time.as_secs_f64(),
    })
}

/// Which endpoint a stream serves.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Chat,
}

/// Server-sent events for a job: a chunk whenever the committed text grows, a last chunk with
/// the finish reason, then `data: [DONE]`.
fn stream(rx: UnboundedReceiver<JobEvent>, kind: Kind, id: String, model: String) -> Response {
    let created = unix_now();
    let chunk = move |delta: Option<&str>, finish: Option<&str>| -> Value {
        match kind {
            Kind::Text => json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": delta.unwrap_or(""), "index": 0, "logprobs": null,
                             "finish_reason": finish}],
            }),
            Kind::Chat => {
                let delta = match delta {
                    Some(d) => json!({"content": d}),
                    None => json!({}),
                };
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                })
            }
        }
    };
    // A task turns the job's events into SSE events; the response streams those. When the
    // client goes away the response (and so `events`) is dropped, the task's sends fail, it
    // ends and drops the job's receiver: the worker sees that and stops the row.
    let (out, events) = unbounded_channel::<Result<Event, Infallible>>();
    tokio::spawn(async move {
        let mut rx = rx;
        let send = |value: String| out.send(Ok(Event::default().data(value))).is_ok();
        if let Kind::Chat = kind {
            let mut c = chunk(None, None);
            c["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            if !send(c.to_string()) {
                return;
            }
        }
        while let Some(event) = rx.recv().await {
            let alive = match event {
                JobEvent::Delta(text) => send(chunk(Some(&text), None).to_string()),
                JobEvent::Done(c) => {
                    send(chunk(None, Some(finish_reason(&c))).to_string());
                    send("[DONE]".into());
                    return;
                }
                JobEvent::Failed(message) => {
                    let error = json!({"error": {"message": message, "type": "server_error"}});
                    let _ = out.send(Ok(Event::default().event("error").data(error.to_string())));
                    send("[DONE]".into());
                    return;
                }
            };
            if !alive {
                return;
            }
        }
    });
    Sse::new(UnboundedReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn next_id(state: &AppState, prefix: &str) -> String {
    format!("{prefix}-{}", state.next_id.fetch_add(1, Ordering::Relaxed))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (prompt, settings): (String, Settings) = parse(&body, "prompt")?;
    let options = options_of(&state, &settings)?;
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let ids = state.engine.pipeline().tokenizer().encode(&prompt, true)?;
    let rx = enqueue(&state, ids, options)?;
    let id = next_id(&state, "cmpl");
    if settings.stream {
        return Ok(stream(rx, Kind::Text, id, state.model_name.clone()));
    }
    let c = finish(rx).await?;
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": unix_now(), "model": state.model_name,
        "choices": [{"text": c.text, "index": 0, "logprobs": null,
                     "finish_reason": finish_reason(&c)}],
        "usage": usage(&c),
        "dllm": dllm_stats(&c),
    }))
    .into_response())
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (messages_in, settings): (Vec<ChatMessageIn>, Settings) = parse(&body, "messages")?;
    let options = options_of(&state, &settings)?;
    if messages_in.is_empty() {
        return Err(ApiError::invalid("no messages", Some("messages")));
    }
    let messages: Vec<ChatMessage> = messages_in
        .iter()
        .map(|m| {
            let _ = &m.name;
            ChatMessage::new(m.role.clone(), m.content.clone())
        })
        .collect();
    let tokenizer = state.engine.pipeline().tokenizer();
    let text = tokenizer.apply_chat_template(&messages, true)?;
    let ids = tokenizer.encode(&text, false)?;
    let rx = enqueue(&state, ids, options)?;
    let id = next_id(&state, "chatcmpl");
    if settings.stream {
        return Ok(stream(rx, Kind::Chat, id, state.model_name.clone()));
    }
    let c = finish(rx).await?;
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": unix_now(), "model": state.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": finish_reason(&c)}],
        "usage": usage(&c),
        "dllm": dllm_stats(&c),
    }))
    .into_response())
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": 0, "owned_by": "dllm-cache",
    }]}))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
