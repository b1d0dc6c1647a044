//! OpenAI's request and response shapes: a request body into a pardec request (every field
//! checked, with the field named in the error), and the bodies and stream chunks back.
//!
//! Fields OpenAI defines that pardec does not implement are refused when set to anything but
//! their neutral value (`n` > 1 with `stream`), never silently ignored; fields pardec does not
//! know (`user`, `metadata`, ...) are ignored, as OpenAI-compatible servers do.

use pardec::auto::sot::SotParams;
use pardec::auto::AutoParams;
use pardec::conversations::{Mode, Request};
use pardec::protocol::{ProtocolSpec, SkeletonFormat};
use pardec::{Error, Grammar, Model, RunLimits, SamplingParams};
use serde_json::{json, Map, Value};

use super::engine::Finished;

/// What a server answers requests with when they do not say.
pub(crate) struct Defaults {
    pub(crate) sampling: SamplingParams,
    pub(crate) max_tokens: usize,
    pub(crate) max_branch_tokens: usize,
    /// The server's protocol.
    pub(crate) protocol: Protocol,
    pub(crate) model_name: String,
    pub(crate) n_ctx: usize,
}

/// How an answer is decoded.
#[derive(Debug, Clone)]
pub(crate) enum Protocol {
    /// Serially, as the model answers plainly.
    Plain,
    /// Under a stream protocol: the model forks by itself (boxed: a spec is large).
    Stream(Box<ProtocolSpec>),
    /// Skeleton-of-Thought: a skeleton of points, each expanded as a branch.
    Sot,
}

impl Protocol {
    /// A protocol by name: `none`, `sot` or a built-in stream protocol.
    pub(crate) fn by_name(name: &str) -> Option<Protocol> {
        match name {
            "none" => Some(Protocol::Plain),
            "sot" => Some(Protocol::Sot),
            _ => ProtocolSpec::builtin(name).map(|spec| Protocol::Stream(Box::new(spec))),
        }
    }
}

/// A 4xx or 5xx answer: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param), code: None }
    }

    pub(crate) fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: Some(code) }
    }

    /// A library error met while taking a request in.
    pub(crate) fn from_pardec(e: Error) -> ApiError {
        match e {
            Error::PromptTooLong { .. } => {
                ApiError::new(400, "invalid_request_error", "context_length_exceeded", e.to_string())
            }
            Error::EmptyPrompt => ApiError::invalid("messages", e.to_string()),
            Error::InvalidArgument(_) | Error::InvalidUtf8(_) | Error::UnsupportedModel(_) => {
                ApiError::new(400, "invalid_request_error", "invalid_value", e.to_string())
            }
            _ => ApiError::new(500, "server_error", "internal_error", e.to_string()),
        }
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

/// A request, checked and ready for the decoding thread.
pub(crate) struct Parsed {
    pub(crate) request: Request,
    /// Answers wanted (`n`): as many requests, the seed of answer i being the request's + i.
    pub(crate) choices: usize,
    pub(crate) stops: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) model: String,
}

/// Reads a request body of `endpoint` (tokenizing its prompt, which takes a while for long
/// ones: call it off the async threads).
pub(crate) fn parse(endpoint: Endpoint, body: &[u8], d: &Defaults, model: &Model) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, "invalid_request_error", "invalid_json", format!("the body is not JSON: {e}"))
    })?;
    let Value::Object(o) = value else {
        return Err(ApiError::new(400, "invalid_request_error", "invalid_json", "the body must be a JSON object"));
    };
    let protocol = match o.get("protocol") {
        None | Some(Value::Null) => d.protocol.clone(),
        Some(Value::String(s)) => Protocol::by_name(s).ok_or_else(|| {
            ApiError::invalid(
                "protocol",
                format!("unknown protocol {s:?}: none, sot, {}", ProtocolSpec::builtin_names().join(", ")),
            )
        })?,
        Some(_) => return Err(ApiError::invalid("protocol", "protocol must be a string")),
    };
    let prompt_text = match (&protocol, endpoint) {
        (Protocol::Sot, _) => sot_prompt(&o, endpoint, model)?,
        (_, Endpoint::Chat) => chat_prompt(&o, model)?,
        (_, Endpoint::Completion) => completion_prompt(&o)?,
    };
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("stream_options", "stream_options must be an object")),
    };
    let n = opt_uint(&o, "n")?.unwrap_or(1);
    if !(1..=MAX_CHOICES as u64).contains(&n) {
        return Err(ApiError::invalid("n", format!("n must be 1 to {MAX_CHOICES}, not {n}")));
    }
    if n > 1 && stream {
        return Err(ApiError::invalid("n", "n > 1 is answered whole: send \"stream\": false (or n: 1)"));
    }
    let logprobs = logprobs(endpoint, &o)?;
    let max_tokens = match (opt_uint(&o, "max_completion_tokens")?, opt_uint(&o, "max_tokens")?) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => d.max_tokens as u64,
    };
    if max_tokens == 0 || max_tokens > d.n_ctx as u64 {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens must be 1 to the context's {} cells, not {max_tokens}", d.n_ctx),
        ));
    }
    let max_tokens = max_tokens as usize;
    let stops = stop_strings(&o)?;
    // llama-server's extension: decode exactly max_tokens (benchmarks).
    let ignore_eos = opt_bool(&o, "ignore_eos")?.unwrap_or(false);
    let sampling = sampling(&o, &d.sampling)?;
    let grammar = response_format(&o)?;
    let forks = !matches!(protocol, Protocol::Plain);
    let mode = match protocol {
        _ if forks && grammar.is_some() => {
            return Err(ApiError::invalid(
                "response_format",
                "response_format applies to plain answers only: send \"protocol\": \"none\"",
            ))
        }
        _ if forks && logprobs.is_some() => {
            return Err(ApiError::invalid(
                "logprobs",
                "log-probabilities apply to plain answers only (a forked answer's text holds its branches): send \"protocol\": \"none\"",
            ))
        }
        _ if forks && ignore_eos => {
            return Err(ApiError::invalid(
                "ignore_eos",
                "ignore_eos applies to plain answers only: send \"protocol\": \"none\"",
            ))
        }
        Protocol::Sot if !stops.is_empty() => {
            return Err(ApiError::invalid("stop", "a skeleton-of-thought answer takes no stop strings"))
        }
        Protocol::Sot => Mode::Sot {
            format: Box::new(SkeletonFormat::sot()),
            params: SotParams::for_answer(max_tokens, d.max_branch_tokens),
        },
        Protocol::Stream(spec) => Mode::Auto {
            spec,
            params: AutoParams {
                max_tokens,
                max_branch_tokens: d.max_branch_tokens,
                stop: stops.clone(),
                ..Default::default()
            },
        },
        Protocol::Plain => {
            Mode::Plain(RunLimits {
                max_tokens,
                stop: stops.clone(),
                strip_stop: true,
                ban_eog: ignore_eos,
                grammar,
                ..Default::default()
            })
        }
    };
    let prompt = model.tokenize(&prompt_text, true).map_err(ApiError::from_pardec)?;
    if prompt.is_empty() {
        return Err(ApiError::from_pardec(Error::EmptyPrompt));
    }
    let model_name = match o.get("model") {
        Some(Value::String(s)) => s.clone(),
        _ => d.model_name.clone(),
    };
    Ok(Parsed {
        request: Request { prompt, sampling, mode, logprobs },
        choices: n as usize,
        stops,
        stream,
        include_usage,
        model: model_name,
    })
}

/// Most answers one request may ask for (`n`): each decodes as a request of its own.
const MAX_CHOICES: usize = 8;

/// Most alternatives per token a request may ask for (OpenAI's limit for `top_logprobs`).
const MAX_TOP_LOGPROBS: u64 = 20;

/// The log-probabilities asked for, as alternatives per token: chat's `logprobs` (bool) with
/// `top_logprobs`, or the completions endpoint's `logprobs` (a count).
fn logprobs(endpoint: Endpoint, o: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let top = match endpoint {
        Endpoint::Chat => {
            let asked = opt_bool(o, "logprobs")?.unwrap_or(false);
            match (asked, opt_uint(o, "top_logprobs")?) {
                (false, Some(_)) => {
                    return Err(ApiError::invalid("top_logprobs", "top_logprobs needs \"logprobs\": true"))
                }
                (false, None) => return Ok(None),
                (true, top) => top.unwrap_or(0),
            }
        }
        Endpoint::Completion => match opt_uint(o, "logprobs")? {
            None => return Ok(None),
            Some(n) => n,
        },
    };
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("at most {MAX_TOP_LOGPROBS} alternatives per token, not {top}"),
        ));
    }
    Ok(Some(top as usize))
}

/// The chat's messages through the model's template.
fn chat_prompt(o: &Map<String, Value>, model: &Model) -> Result<String, ApiError> {
    let Some(messages) = o.get("messages") else {
        return Err(ApiError::invalid("messages", "messages is missing"));
    };
    let Value::Array(list) = messages else {
        return Err(ApiError::invalid("messages", "messages must be an array"));
    };
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    let mut pairs = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("messages", format!("messages[{i}].role must be a string")))?;
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None if role == "assistant" => String::new(),
            // Content parts: only text is understood.
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("messages[{i}].content: only text parts are understood"),
                            ))
                        }
                    }
                }
                text
            }
            _ => return Err(ApiError::invalid("messages", format!("messages[{i}].content must be a string"))),
        };
        pairs.push((role.to_string(), content));
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
    model.apply_chat_template(&refs).map_err(ApiError::from_pardec)
}

/// Skeleton-of-Thought's prompt: its request for the question (a chat's one user message,
/// or a completion's prompt) in the model's chat template, and its primer. SoT answers one
/// question: a chat with other turns is refused rather than answered without them.
fn sot_prompt(o: &Map<String, Value>, endpoint: Endpoint, model: &Model) -> Result<String, ApiError> {
    let question = match endpoint {
        Endpoint::Completion => completion_prompt(o)?,
        Endpoint::Chat => {
            let messages = o.get("messages").and_then(Value::as_array);
            match messages.map(Vec::as_slice) {
                Some([m]) if m.get("role").and_then(Value::as_str) == Some("user") => {
                    m.get("content").and_then(Value::as_str).unwrap_or_default().to_string()
                }
                _ => {
                    return Err(ApiError::invalid(
                        "messages",
                        "skeleton-of-thought answers one question: send one user message with text content",
                    ))
                }
            }
        }
    };
    pardec::auto::sot::sot_request_text(model, &question, &SkeletonFormat::sot()).map_err(ApiError::from_pardec)
}

/// The completion's prompt: a string, or an array holding one.
fn completion_prompt(o: &Map<String, Value>) -> Result<String, ApiError> {
    match o.get("prompt") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].as_str().is_some_and(|s| !s.is_empty()) => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(ApiError::invalid("prompt", "prompt: one non-empty string per request")),
        None => Err(ApiError::invalid("prompt", "prompt is missing")),
        _ => Err(ApiError::invalid("prompt", "prompt must be a non-empty string")),
    }
}

fn stop_strings(o: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    const MAX_STOPS: usize = 16;
    let stops = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid("stop", "stop must hold strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop strings")));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

fn sampling(o: &Map<String, Value>, defaults: &SamplingParams) -> Result<SamplingParams, ApiError> {
    let mut p = defaults.clone();
    if let Some(t) = opt_f32(o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid("temperature", format!("temperature must be 0 to 2, not {t}")));
        }
        p.temperature = t;
    }
    if let Some(t) = opt_f32(o, "top_p")? {
        if !(0.0..=1.0).contains(&t) || t == 0.0 {
            return Err(ApiError::invalid("top_p", format!("top_p must be above 0 and at most 1, not {t}")));
        }
        p.top_p = t;
    }
    if let Some(t) = opt_f32(o, "min_p")? {
        if !(0.0..=1.0).contains(&t) {
            return Err(ApiError::invalid("min_p", format!("min_p must be 0 to 1, not {t}")));
        }
        p.min_p = t;
    }
    if let Some(k) = opt_uint(o, "top_k")? {
        p.top_k = k as usize;
    }
    if let Some(seed) = o.get("seed").filter(|v| !v.is_null()) {
        p.seed = seed
            .as_i64()
            .map(|s| s as u64)
            .or_else(|| seed.as_u64())
            .ok_or_else(|| ApiError::invalid("seed", "seed must be an integer"))?;
    }
    Ok(p)
}

/// `response_format`: `text`, `json_object`, or `json_schema` with its schema.
fn response_format(o: &Map<String, Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(rf) = o.get("response_format").filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = rf.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::json_object())),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| ApiError::invalid("response_format", "json_schema needs json_schema.schema"))?;
            Grammar::json_schema(&schema.to_string())
                .map(Some)
                .map_err(|e| ApiError::invalid("response_format", e.to_string()))
        }
        _ => Err(ApiError::invalid("response_format", "response_format.type must be text, json_object or json_schema")),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

fn opt_uint(o: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(key, format!("{key} must be a non-negative integer, not {v}"))),
    }
}

fn opt_f32(o: &Map<String, Value>, key: &'static str) -> Result<Option<f32>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| ApiError::invalid(key, format!("{key} must be a number")))
        }
    }
}

/// The `pardec` extension of a finished answer: how it was decoded.
fn pardec_stats(f: &Finished) -> Value {
    json!({
        "steps": f.steps,
        "tokens_per_step": if f.steps > 0 { f.completion_tokens as f64 / f.steps as f64 } else { 0.0 },
        "blocks": f.blocks,
        "warnings": f.warnings,
        "prompt_tokens_reused": f.reused_tokens,
        "queued_ms": f.queued_ms,
        "decode_ms": f.decode_ms,
    })
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.reused_tokens},
    })
}

/// Identity of one response: its id, creation time, model and shape.
pub(crate) struct Reply {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) endpoint: Endpoint,
}

impl Reply {
    /// The whole answer (not streamed): one choice per finished request (`n`). The prompt is
    /// counted once; `pardec` holds the first answer's statistics, and every answer's under
    /// `choices` when there are several.
    pub(crate) fn complete(&self, answers: &[Finished]) -> Value {
        let choices: Vec<Value> = answers
            .iter()
            .enumerate()
            .map(|(index, f)| {
                let logprobs = self.logprobs(f);
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": f.text},
                        "logprobs": logprobs,
                        "finish_reason": f.finish_reason,
                    }),
                    Endpoint::Completion => {
                        json!({"index": index, "text": f.text, "logprobs": logprobs, "finish_reason": f.finish_reason})
                    }
                }
            })
            .collect();
        let first = &answers[0];
        let mut total = usage(first);
        let completion: usize = answers.iter().map(|f| f.completion_tokens).sum();
        total["completion_tokens"] = completion.into();
        total["total_tokens"] = (first.prompt_tokens + completion).into();
        let mut stats = pardec_stats(first);
        if answers.len() > 1 {
            stats["choices"] = answers.iter().map(pardec_stats).collect();
        }
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": total,
            "pardec": stats,
        })
    }

    /// A stream chunk carrying `delta` (chat) or `text` (completion).
    pub(crate) fn chunk(&self, content: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(c) = content {
                    delta.insert("content".into(), c.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The chunk that ends the answer: its finish reason, every token's log-probabilities
    /// when asked for (the content chunks carry text settled across tokens, so the entries
    /// come together here), and pardec's statistics.
    pub(crate) fn last_chunk(&self, f: &Finished) -> Value {
        let mut c = self.chunk(None, false, Some(f.finish_reason));
        c["choices"][0]["logprobs"] = self.logprobs(f);
        c["pardec"] = pardec_stats(f);
        c
    }

    /// The answer's log-probabilities in the endpoint's shape (null when not asked for):
    /// chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`, or the legacy
    /// completions' `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
    fn logprobs(&self, f: &Finished) -> Value {
        let Some(tokens) = &f.logprobs else { return Value::Null };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.endpoint {
            Endpoint::Chat => {
                let entry =
                    |bytes: &[u8], logprob: f32| json!({"token": text(bytes), "logprob": logprob, "bytes": bytes});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = entry(&t.bytes, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|(b, l)| entry(b, *l)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Endpoint::Completion => {
                // Character offsets into the completion's text (no prompt: nothing is echoed).
                let mut offset = 0;
                let offsets: Vec<usize> = tokens
                    .iter()
                    .map(|t| {
                        let at = offset;
                        offset += text(&t.bytes).chars().count();
                        at
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|t| text(&t.bytes)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens
                        .iter()
                        .map(|t| t.top.iter().map(|(b, l)| (text(b), json!(l))).collect::<Map<_, _>>())
                        .collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }

    /// OpenAI's usage chunk (`stream_options.include_usage`): no choices.
    pub(crate) fn usage_chunk(&self, f: &Finished) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [], "usage": usage(f)})
    }

    /// A branch event, as an extension chunk OpenAI clients pass over (no choices).
    pub(crate) fn event_chunk(&self, event: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [], "pardec": event})
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }
}
