//! The HTTP side: axum routes, the API key, errors as OpenAI's JSON, and streams as
//! server-sent events. Handlers never decode; they hand requests to the decoding thread and
//! relay its notes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pardec::{Error, Model};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{self, ApiError, Defaults, Endpoint, Parsed, Reply};
use super::engine::{Command, Finished, Note, Submission};
use super::metrics::Metrics;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) commands: Sender<Command>,
    pub(crate) defaults: Defaults,
    pub(crate) model: Model,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) api_key: Option<String>,
}

type Shared = Arc<AppState>;

/// The routes, the API key check and the body limit.
pub(crate) fn router(state: Shared, body_limit: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &e.body())
}

/// With `--api-key`, everything but the page and the health check needs `Authorization:
/// Bearer KEY`.
async fn authorize(State(state): State<Shared>, request: HttpRequest, next: Next) -> Response {
    let Some(key) = &state.api_key else { return next.run(request).await };
    if matches!(request.uri().path(), "/" | "/health") {
        return next.run(request).await;
    }
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let ok =
        given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()));
    if !ok {
        return error_response(&ApiError::new(
            401,
            "authentication_error",
            "invalid_api_key",
            "a valid API key is needed: Authorization: Bearer KEY",
        ));
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("page.html")).into_response()
}

async fn health() -> Response {
    json_response(200, &json!({"status": "ok"}))
}

async fn models(State(state): State<Shared>) -> Response {
    json_response(
        200,
        &json!({"object": "list", "data": [{"id": state.defaults.model_name, "object": "model", "created": 0, "owned_by": "pardec"}]}),
    )
}

async fn metrics(State(state): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn not_found(request: HttpRequest) -> Response {
    error_response(&ApiError::new(
        404,
        "invalid_request_error",
        "unknown_url",
        format!("no route {} {}", request.method(), request.uri().path()),
    ))
}

async fn method_not_allowed(request: HttpRequest) -> Response {
    error_response(&ApiError::new(
        405,
        "invalid_request_error",
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    ))
}

async fn chat(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    serve_request(state, Endpoint::Chat, body).await
}

async fn completion(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    serve_request(state, Endpoint::Completion, body).await
}

/// Checks, queues and answers one request, whole or streamed.
async fn serve_request(state: Shared, endpoint: Endpoint, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            state.metrics.rejected.inc();
            let status = rejection.status().as_u16();
            let code = if status == 413 { "body_too_large" } else { "invalid_body" };
            return error_response(&ApiError::new(status, "invalid_request_error", code, rejection.body_text()));
        }
    };
    let shared = state.clone();
    let parsed =
        tokio::task::spawn_blocking(move || api::parse(endpoint, &body, &shared.defaults, &shared.model)).await;
    let parsed = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            state.metrics.rejected.inc();
            return error_response(&e);
        }
        Err(e) => return error_response(&ApiError::new(500, "server_error", "internal_error", e.to_string())),
    };
    let Parsed { request, choices, stops, stream, include_usage, model } = parsed;
    // One request per answer wanted (`n`), each on its own random stream.
    let mut answers = Vec::with_capacity(choices);
    for i in 0..choices {
        let mut request = request.clone();
        request.sampling.seed = request.sampling.seed.wrapping_add(i as u64);
        match submit(&state, request, stops.clone(), stream).await {
            Ok(notes) => answers.push(notes),
            // The ones already queued are cancelled as their receivers drop with `answers`.
            Err(e) => return error_response(&e),
        }
    }
    let reply = Reply { id: response_id(endpoint), created: unix_now(), model, endpoint };
    if stream {
        let notes = answers.pop().expect("one answer when streamed");
        return stream_response(reply, notes, include_usage);
    }
    whole_response(reply, answers).await
}

/// Queues one request on the decoding thread; its notes come on the returned receiver.
async fn submit(
    state: &Shared,
    request: pardec::conversations::Request,
    stops: Vec<String>,
    stream: bool,
) -> Result<mpsc::UnboundedReceiver<Note>, ApiError> {
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let (reply_tx, reply) = oneshot::channel();
    let stopping = || ApiError::new(503, "server_error", "shutting_down", "the server is shutting down");
    let submission = Submission { request, stops, stream, notes: notes_tx, reply: reply_tx };
    if state.commands.send(Command::Submit(Box::new(submission))).is_err() {
        return Err(stopping());
    }
    match reply.await {
        Ok(Ok(())) => Ok(notes),
        Ok(Err(e)) => Err(ApiError::from_pardec(e)),
        Err(_) => Err(stopping()),
    }
}

/// Waits for every answer's end (the only note a request that is not streamed gets) and
/// answers at once. A client that hangs up drops this future and with it the notes'
/// receivers: the decoding thread cancels the requests.
async fn whole_response(reply: Reply, answers: Vec<mpsc::UnboundedReceiver<Note>>) -> Response {
    let mut finished = Vec::with_capacity(answers.len());
    for mut notes in answers {
        let done = loop {
            match notes.recv().await {
                Some(Note::Done(f)) => break Some(f),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(f) = done else {
            return error_response(&ApiError::new(500, "server_error", "internal_error", "the decoding thread ended"));
        };
        if let Some(e) = failure(&f) {
            return error_response(&e);
        }
        finished.push(*f);
    }
    json_response(200, &reply.complete(&finished))
}

/// A finished request's error as an HTTP error, unless it kept an answer worth sending.
fn failure(f: &Finished) -> Option<ApiError> {
    match &f.error {
        None => None,
        Some(Error::Cancelled) => {
            Some(ApiError::new(503, "server_error", "shutting_down", "cancelled: the server is shutting down"))
        }
        Some(e) => Some(ApiError::new(500, "server_error", "decode_failed", e.to_string())),
    }
}

/// Relays notes as server-sent events: a role chunk, content deltas, branch events (an
/// extension: chunks with no choices and a `pardec` object), the finish chunk, the usage chunk
/// when asked, and `[DONE]`.
fn stream_response(reply: Reply, mut notes: mpsc::UnboundedReceiver<Note>, include_usage: bool) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |value: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(SseEvent::default().data(value.to_string()))).await.is_ok() }
        };
        if reply.endpoint == Endpoint::Chat && !send(reply.chunk(None, true, None)).await {
            return;
        }
        while let Some(note) = notes.recv().await {
            let value = match note {
                Note::Content(text) => reply.chunk(Some(&text), false, None),
                Note::Branch { label, text } => {
                    reply.event_chunk(json!({"event": "token", "branch": label, "text": text}))
                }
                Note::Fork { label, branches } => {
                    reply.event_chunk(json!({"event": "fork", "parent": label, "branches": branches}))
                }
                Note::Join { label, kept } => {
                    reply.event_chunk(json!({"event": "join", "parent": label, "kept": kept}))
                }
                Note::Warning { label, message } => {
                    reply.event_chunk(json!({"event": "warning", "stream": label, "message": message}))
                }
                Note::Done(f) => {
                    if let Some(e) = failure(&f) {
                        send(e.body()).await;
                    } else {
                        if !send(reply.last_chunk(&f)).await {
                            return;
                        }
                        if include_usage {
                            send(reply.usage_chunk(&f)).await;
                        }
                    }
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
            };
            // The client hung up: dropping `notes` tells the decoding thread.
            if !send(value).await {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response()
}

fn response_id(endpoint: Endpoint) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:x}{n:06x}", unix_now())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
