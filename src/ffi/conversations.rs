//! Conversations handles: many requests decoding together in one context
//! ([`crate::conversations::Conversations`]), for C callers that serve several users.

use super::boundary::{
    c_string, check_size, guard, guard_void, opt_str_arg, out_arg, read_versioned, set_last_error, str_arg,
    write_versioned, Exclusive, FfiError, FfiResult, Versioned,
};
use super::events::{pardec_event, CObserver};
use super::model::{model_arg, pardec_model};
use super::params::{logprobs_arg, pardec_sampling_params, pardec_session_params, stop_strings_arg};
use super::result::{pardec_stop_reason, stop_reason_code};
use super::session::{protocol_spec_arg, write_json};
use super::status::pardec_status;
use crate::auto::sot::{sot_request_text, SotParams};
use crate::auto::AutoParams;
use crate::conversations::{Conversations, ConversationsParams, Mode, Outcome, Request, RequestId, Sink};
use crate::protocol::SkeletonFormat;
use crate::session::MAX_SEQUENCES;
use crate::{Event, RunLimits, Session};
use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::mem::size_of;

/// Sizes of a `pardec_conversations`. Get defaults from `pardec_conversations_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_conversations_params {
    /// `sizeof(pardec_conversations_params)` of the header the caller was built with.
    pub struct_size: usize,
    /// Requests decoding at once (default 4); more wait in a queue, in order.
    pub max_active: u32,
    /// Branches one request may have open at once (default 4).
    pub branches_per_request: u32,
    /// Finished plain answers kept so that a later prompt starting with one decodes only the
    /// rest (default 4; 0: none). Each holds a sequence id and its KV cells, least recently
    /// used evicted first.
    pub cached_prompts: u32,
}

impl Versioned for pardec_conversations_params {
    const NAME: &'static str = "pardec_conversations_params";
    const SIZES: &'static [usize] = &[size_of::<pardec_conversations_params>()];
}

impl Default for pardec_conversations_params {
    fn default() -> Self {
        let d = ConversationsParams::default();
        pardec_conversations_params {
            struct_size: size_of::<Self>(),
            max_active: d.max_active as u32,
            branches_per_request: d.branches_per_request as u32,
            cached_prompts: d.cached_prompts as u32,
        }
    }
}

impl pardec_conversations_params {
    fn to_rust(self) -> ConversationsParams {
        ConversationsParams {
            max_active: self.max_active as usize,
            branches_per_request: self.branches_per_request as usize,
            cached_prompts: self.cached_prompts as usize,
        }
    }
}

/// How one request decodes. Get defaults from `pardec_request_params_default()`. The strings
/// are only read during `pardec_conversations_submit`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_request_params {
    /// `sizeof(pardec_request_params)` of the header the caller was built with.
    pub struct_size: usize,
    /// How this request picks tokens (default greedy); its branches derive their random
    /// streams from its seed. Penalties and biases are the session's.
    pub sampling: pardec_sampling_params,
    /// NULL (the default) or "none": the model answers plainly. "sot": Skeleton-of-Thought
    /// for any instruct model — the prompt is then the question alone (pardec writes the
    /// request in the chat template), the model writes a skeleton of at most `max_tokens`
    /// (up to 120), and each point is expanded as a branch of `max_branch_tokens`; the
    /// outcome's text is the assembled answer. Otherwise a stream protocol under which the
    /// model forks by itself: a built-in name (`multiverse`, `aspd`, `parallel-r1`,
    /// `threadweaver`, `npr`, `titles`...) or a description in JSON.
    pub protocol: *const c_char,
    /// Most tokens of the answer (default 256; under a protocol, the trunk's, branches apart).
    pub max_tokens: u32,
    /// Under a protocol: most tokens of each branch (default 256).
    pub max_branch_tokens: u32,
    /// The answer ends when one of these UTF-8 strings appears in it (under a protocol: in
    /// the text the trunk writes itself); `n_stop` entries, may be NULL when `n_stop` is 0.
    pub stop: *const *const c_char,
    /// Number of stop strings (at most PARDEC_MAX_STOP_STRINGS).
    pub n_stop: usize,
    /// A plain answer's text leaves out the stop string that ended it (default true, as
    /// OpenAI's API does).
    pub strip_stop: bool,
    /// A plain answer never samples an end-of-generation token: it runs to `max_tokens`
    /// (benchmarks).
    pub ban_eog: bool,
    /// Plain answers: -1 (the default) records no log-probabilities; n in
    /// 0..=PARDEC_MAX_TOP_LOGPROBS records each answer token's and its step's n most likely
    /// tokens, in the outcome's report ("logprobs"). Needs host selection.
    pub logprobs: i32,
}

impl Versioned for pardec_request_params {
    const NAME: &'static str = "pardec_request_params";
    const SIZES: &'static [usize] = &[size_of::<pardec_request_params>()];
}

impl Default for pardec_request_params {
    fn default() -> Self {
        pardec_request_params {
            struct_size: size_of::<Self>(),
            sampling: pardec_session_params::default().sampling,
            protocol: std::ptr::null(),
            max_tokens: 256,
            max_branch_tokens: AutoParams::default().max_branch_tokens as u32,
            stop: std::ptr::null(),
            n_stop: 0,
            strip_stop: true,
            ban_eog: false,
            logprobs: -1,
        }
    }
}

impl pardec_request_params {
    /// # Safety
    /// The strings are NULL or NUL-terminated; `stop` holds `n_stop` pointers.
    unsafe fn mode(&self) -> FfiResult<Mode> {
        let stop = stop_strings_arg(self.stop, self.n_stop, "request_params.stop")?;
        let max_tokens = self.max_tokens as usize;
        match opt_str_arg(self.protocol, "request_params.protocol")? {
            None | Some("none") => Ok(Mode::Plain(RunLimits {
                max_tokens,
                stop,
                strip_stop: self.strip_stop,
                ban_eog: self.ban_eog,
                ..Default::default()
            })),
            Some("apr") => Err(FfiError::invalid(
                "protocol \"apr\": conversations do not decode APR's sub-searches (use a pardec_session)",
            )),
            Some("sot") => Ok(Mode::Sot {
                format: Box::new(SkeletonFormat::sot()),
                params: SotParams::for_answer(max_tokens, self.max_branch_tokens as usize),
            }),
            Some(protocol) => Ok(Mode::Auto {
                spec: Box::new(protocol_spec_arg(protocol)?),
                params: AutoParams {
                    max_tokens,
                    max_branch_tokens: self.max_branch_tokens as usize,
                    stop,
                    ..Default::default()
                },
            }),
        }
    }
}

/// How a finished request went: filled by `pardec_conversations_next_outcome`. Pass
/// `sizeof(pardec_outcome_info)` as its size.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_outcome_info {
    /// The request, as `pardec_conversations_submit` numbered it.
    pub request: u64,
    /// OK, or the error that ended it part-way (the text holds what was decoded before; the
    /// report's "error" says more).
    pub status: pardec_status,
    /// Why the answer ended.
    pub stop_reason: pardec_stop_reason,
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Of them, reused from an earlier request's cells (not decoded again).
    pub reused_tokens: u64,
    /// Tokens the model sampled for this request, branches included.
    pub generated_tokens: u64,
    /// Steps in which the request decoded at least one token (its critical path).
    pub steps: u64,
    /// Parallel blocks the model opened in the answer.
    pub blocks: u64,
    /// Seconds from submission to admission.
    pub queued_seconds: f64,
    /// Seconds from admission to the end.
    pub decoding_seconds: f64,
}

impl Versioned for pardec_outcome_info {
    const NAME: &'static str = "pardec_outcome_info";
    const SIZES: &'static [usize] = &[size_of::<pardec_outcome_info>()];
}

/// What a conversations handle holds: the engine and the outcomes not yet taken.
struct State {
    conversations: Conversations,
    finished: VecDeque<(RequestId, Outcome)>,
}

/// Many requests decoding together in one llama.cpp context (opaque): each is a conversation
/// of its own, with its own sampling, limits and protocol; every step decodes one token of
/// every running request and of each of its branches in one batch. A request is admitted
/// when the KV cells it may fill fit beside the running ones (it waits otherwise, in order),
/// so none ever takes what another needs mid-answer.
///
/// Thread safety: as `pardec_session` — used by one thread at a time; a call while another
/// is inside it (from its callback, or another thread) returns PARDEC_STATUS_BUSY. A server
/// keeps one decoding thread that submits, steps and cancels.
pub struct pardec_conversations {
    inner: Exclusive<State>,
}

/// Runs `f` with exclusive access to the state behind `p`.
///
/// # Safety
/// `p` is NULL or a live handle from `pardec_conversations_new`.
unsafe fn with_conversations<R>(
    p: *const pardec_conversations,
    f: impl FnOnce(&mut State) -> FfiResult<R>,
) -> FfiResult<R> {
    p.as_ref().ok_or_else(|| FfiError::null("conversations"))?.inner.with(f)
}

/// Receives a request's events during `pardec_conversations_step`, on the calling thread.
/// `request` is the id `pardec_conversations_submit` gave; the event's labels and nodes are
/// the request's own ("" is its answer; "1", "2" its branches). Return true to go on, false to
/// cancel that request after this step (its cells and ids are freed; no outcome is reported
/// for it unless it ended in the same step). The callback must not unwind and must not call
/// functions of the same handle (they return PARDEC_STATUS_BUSY).
pub type pardec_request_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, request: u64, event: *const pardec_event) -> bool>;

/// Sends events to the caller's callback and keeps the outcomes for the caller to take.
struct CSink<'a> {
    callback: pardec_request_callback,
    user_data: *mut c_void,
    events: CObserver,
    finished: &'a mut VecDeque<(RequestId, Outcome)>,
    cancel: Vec<RequestId>,
}

impl Sink for CSink<'_> {
    fn event(&mut self, id: RequestId, event: &Event<'_>) {
        let Some(cb) = self.callback else { return };
        let Some(ev) = self.events.c_event(event) else { return };
        if !unsafe { cb(self.user_data, id, &ev) } && !self.cancel.contains(&id) {
            self.cancel.push(id);
        }
    }

    fn finished(&mut self, id: RequestId, outcome: Outcome) {
        self.finished.push_back((id, outcome));
    }
}

/// Fills `out` with the default conversations parameters. Pass
/// `sizeof(pardec_conversations_params)` as `struct_size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_params_default(
    out: *mut pardec_conversations_params,
    struct_size: usize,
) -> pardec_status {
    guard(|| {
        let value = pardec_conversations_params { struct_size, ..Default::default() };
        write_versioned(out, &value, struct_size)
    })
}

/// Fills `out` with the default request parameters (plain, greedy, 256 tokens). Pass
/// `sizeof(pardec_request_params)` as `struct_size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_request_params_default(
    out: *mut pardec_request_params,
    struct_size: usize,
) -> pardec_status {
    guard(|| {
        let value = pardec_request_params { struct_size, ..Default::default() };
        write_versioned(out, &value, struct_size)
    })
}

/// Creates conversations on a model, in a context of their own. `session_params` (NULL: the
/// defaults) sizes the context: its `max_branches` must cover every request's sequence ids —
/// `max_active * (1 + branches_per_request) + cached_prompts` (with NULL it is set so); its
/// threads, penalties and biases apply to every request, its sampling to none (each request
/// brings its own). `params` may be NULL for the defaults. `*out` receives a new handle, to release with
/// `pardec_conversations_free`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, INVALID_ARGUMENT (sizes out of range, too few
/// sequence ids), CONTEXT.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_new(
    model: *const pardec_model,
    session_params: *const pardec_session_params,
    params: *const pardec_conversations_params,
    out: *mut *mut pardec_conversations,
) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        let out = out_arg(out, "out")?;
        let params = if params.is_null() {
            pardec_conversations_params::default()
        } else {
            read_versioned(params, pardec_conversations_params::default())?
        };
        let params = params.to_rust();
        let sequences = params.sequences();
        if sequences >= MAX_SEQUENCES as usize {
            return Err(FfiError::invalid(format!(
                "{sequences} sequence ids needed (max_active * (1 + branches_per_request) + cached_prompts); llama.cpp has {}",
                MAX_SEQUENCES - 1
            )));
        }
        let mut session_params = if session_params.is_null() {
            let mut p = pardec_session_params::default().to_rust()?;
            p.max_branches = sequences as u32;
            p
        } else {
            read_versioned(session_params, pardec_session_params::default())?.to_rust()?
        };
        // Every running node takes a row of a step's batch.
        session_params.n_batch = session_params.n_batch.max(sequences as u32 + 1);
        let session = Session::new(&model.model, session_params)?;
        let conversations = Conversations::new(session, params)?;
        let state = State { conversations, finished: VecDeque::new() };
        *out = Box::into_raw(Box::new(pardec_conversations { inner: Exclusive::new(state, "conversations") }));
        Ok(())
    })
}

/// Releases conversations, their context and every request in them (NULL is ignored). Doing
/// so from inside their own callback does nothing (`pardec_last_error()` says so).
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_free(conversations: *mut pardec_conversations) {
    guard_void(|| {
        if conversations.is_null() {
            return;
        }
        if (*conversations).inner.is_locked() {
            set_last_error("pardec_conversations_free: the conversations are in use; not freed");
            return;
        }
        drop(Box::from_raw(conversations));
    })
}

/// Queues a request: `prompt` is the whole text the model continues (a chat rendered with
/// `pardec_model_apply_chat_template`; special tokens in it are parsed as such; the model's
/// start token is added if it wants one). It starts at a coming `pardec_conversations_step`,
/// when there is room. `params` may be NULL (plain, greedy, 256 tokens). `*out_request`
/// receives its id (never 0).
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, STRUCT_SIZE, INVALID_ARGUMENT (an unknown protocol,
/// sampling out of range), EMPTY_PROMPT, PROMPT_TOO_LONG (it could never fit the context with
/// its budgets), BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_submit(
    conversations: *mut pardec_conversations,
    prompt: *const c_char,
    params: *const pardec_request_params,
    out_request: *mut u64,
) -> pardec_status {
    guard(|| {
        let prompt = str_arg(prompt, "prompt")?;
        let out = out_arg(out_request, "out_request")?;
        let params = if params.is_null() {
            pardec_request_params::default()
        } else {
            read_versioned(params, pardec_request_params::default())?
        };
        let mode = params.mode()?;
        let logprobs = logprobs_arg(params.logprobs)?;
        let id = with_conversations(conversations, |state| {
            let session = state.conversations.session();
            let tokens = match &mode {
                Mode::Sot { format, .. } => {
                    session.model().tokenize(&sot_request_text(session.model(), prompt, format)?, true)?
                }
                _ => session.model().tokenize(prompt, true)?,
            };
            // The request's sampling over the session's penalties and biases.
            let sampling = params.sampling.over(session.params().sampling.clone());
            Ok(state.conversations.submit(Request { prompt: tokens, sampling, mode, logprobs })?)
        })?;
        *out = id;
        Ok(())
    })
}

/// Drops a request, queued or decoding, at once: its cells and ids are freed and no outcome
/// is reported for it. `*out_found` (may be NULL) says whether it was there (false for one
/// that finished: its outcome stays to be taken).
///
/// Errors: NULL_ARGUMENT, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_cancel(
    conversations: *mut pardec_conversations,
    request: u64,
    out_found: *mut bool,
) -> pardec_status {
    guard(|| {
        let found = with_conversations(conversations, |state| Ok(state.conversations.cancel(request)))?;
        if !out_found.is_null() {
            *out_found = found;
        }
        Ok(())
    })
}

/// One step: admits the waiting requests that fit, decodes one token of every running answer
/// and branch in one batch, and lets each request fork, join or end. Events stream through
/// `callback` (may be NULL) with their request's id; finished requests are kept for
/// `pardec_conversations_next_outcome`. `*out_busy` (may be NULL) is false when nothing runs
/// or waits any more (the call did nothing).
///
/// A decode failure of the shared batch (DECODE, a lost RPC server) ends every running
/// request with that error (their outcomes hold the text so far) and is returned; queued
/// requests stay queued.
///
/// Errors: NULL_ARGUMENT, BUSY, DECODE, RPC.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_step(
    conversations: *mut pardec_conversations,
    callback: pardec_request_callback,
    user_data: *mut c_void,
    out_busy: *mut bool,
) -> pardec_status {
    guard(|| {
        let busy = with_conversations(conversations, |state| {
            let mut sink = CSink {
                callback,
                user_data,
                events: CObserver::new(None, std::ptr::null_mut()),
                finished: &mut state.finished,
                cancel: Vec::new(),
            };
            let stepped = state.conversations.step(&mut sink);
            for id in std::mem::take(&mut sink.cancel) {
                state.conversations.cancel(id);
            }
            Ok(stepped?)
        })?;
        if !out_busy.is_null() {
            *out_busy = busy;
        }
        Ok(())
    })
}

/// Takes the oldest outcome not yet taken. `*out_found` says whether there was one; only then
/// are the other out-params written: `out_info` (may be NULL; pass
/// `sizeof(pardec_outcome_info)` as `info_size`), `*out_text` (may be NULL) the answer, and
/// `*out_report_json` (may be NULL) `{"error": null | "...", "blocks": [...], "warnings":
/// [...], "logprobs": [{"pos", "token", "logprob", "top": [[token, logprob], ...]}]}` (blocks
/// and warnings as in `pardec_session_generate_auto`, empty for a plain answer; logprobs when
/// the request asked for them, up to the end of its text). Both strings are new: free them with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_conversations_next_outcome(
    conversations: *mut pardec_conversations,
    out_found: *mut bool,
    out_info: *mut pardec_outcome_info,
    info_size: usize,
    out_text: *mut *mut c_char,
    out_report_json: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let found = out_arg(out_found, "out_found")?;
        if !out_info.is_null() {
            // Refuse a wrong size before the outcome is taken out of the queue.
            check_size::<pardec_outcome_info>(info_size)?;
        }
        let Some((id, outcome)) = with_conversations(conversations, |state| Ok(state.finished.pop_front()))? else {
            *found = false;
            return Ok(());
        };
        if !out_info.is_null() {
            write_versioned(out_info, &outcome_info(id, &outcome), info_size)?;
        }
        let report = outcome.report.unwrap_or_default();
        write_json(
            out_report_json,
            &serde_json::json!({
                "error": outcome.error.as_ref().map(|e| e.to_string()),
                "blocks": report.blocks,
                "warnings": report.warnings,
                "logprobs": outcome.logprobs,
            }),
        )?;
        if !out_text.is_null() {
            *out_text = c_string(&outcome.text).into_raw();
        }
        *found = true;
        Ok(())
    })
}

fn outcome_info(id: RequestId, o: &Outcome) -> pardec_outcome_info {
    pardec_outcome_info {
        request: id,
        status: o.error.as_ref().map_or(pardec_status::Ok, pardec_status::from),
        stop_reason: stop_reason_code(o.stop_reason.as_ref()).0,
        prompt_tokens: o.prompt_tokens as u64,
        reused_tokens: o.reused_tokens as u64,
        generated_tokens: o.generated_tokens as u64,
        steps: o.steps as u64,
        blocks: o.report.as_ref().map_or(0, |r| r.blocks.len() as u64),
        queued_seconds: o.queued.as_secs_f64(),
        decoding_seconds: o.decoding.as_secs_f64(),
    }
}
