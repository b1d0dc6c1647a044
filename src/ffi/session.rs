//! Session handles: prompt, generate, fork, run, join.

use super::boundary::{
    array_arg, c_string, guard, guard_void, opt_str_arg, out_arg, read_versioned, set_last_error, str_arg,
    write_versioned, Exclusive, FfiError, FfiResult,
};
use super::events::{pardec_callback, streaming, CObserver};
use super::model::{model_arg, pardec_model};
use super::node::{node_id, node_out, pardec_node};
use super::params::{pardec_run_limits, pardec_session_params, run_limits_arg, stop_strings_arg};
use super::result::{pardec_result, pardec_stats};
use super::status::pardec_status;
use crate::session::MAX_SEQUENCES;
use crate::{BranchSpec, JoinMode, JoinRule, Session};
use std::ffi::{c_char, c_void};

/// Most branches in one fork (llama.cpp's sequence limit, minus the trunk).
pub const PARDEC_MAX_FORK_BRANCHES: usize = 255;
// A literal above so that cbindgen can write it; tied to the engine's limit here.
const _: () = assert!(PARDEC_MAX_FORK_BRANCHES == MAX_SEQUENCES as usize - 1);

/// A decoding session (opaque): one llama.cpp context holding a trunk and its branches.
///
/// Thread safety: a session may move between threads but must be used by one thread at a
/// time. A call made while the session is inside another call (from one of its callbacks, or
/// from a second thread) returns PARDEC_STATUS_BUSY instead of corrupting it; freeing it while
/// another thread uses it is undefined behaviour. Many sessions on many threads may share one
/// model.
pub struct pardec_session {
    inner: Exclusive<Session>,
}

/// Runs `f` with exclusive access to the session behind `p`.
///
/// # Safety
/// `p` is NULL or a live handle from `pardec_session_new`.
pub(crate) unsafe fn with_session<R>(
    p: *const pardec_session,
    f: impl FnOnce(&mut Session) -> FfiResult<R>,
) -> FfiResult<R> {
    p.as_ref().ok_or_else(|| FfiError::null("session"))?.inner.with(f)
}

// ----- lifecycle --------------------------------------------------------------------------

/// Creates a session on a model. `params` may be NULL for the defaults. On success
/// `*out_session` holds a new handle, to be released with `pardec_session_free`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, INVALID_ARGUMENT (parameters out of range), CONTEXT.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_new(
    model: *const pardec_model,
    params: *const pardec_session_params,
    out_session: *mut *mut pardec_session,
) -> pardec_status {
    guard(|| {
        let model = model_arg(model)?;
        let out = out_arg(out_session, "out_session")?;
        let params = if params.is_null() {
            pardec_session_params::default()
        } else {
            read_versioned(params, pardec_session_params::default())?
        };
        // SAFETY: the header documents `logit_bias` as `n_logit_bias` readable entries.
        let session = Session::new(&model.model, params.to_rust()?)?;
        let handle = pardec_session { inner: Exclusive::new(session, "session") };
        *out = Box::into_raw(Box::new(handle));
        Ok(())
    })
}

/// Releases a session and its llama.cpp context (NULL is ignored). Results taken from it stay
/// valid. Calling it from inside the session's own callback does nothing (the session is in
/// use; `pardec_last_error()` says so).
#[no_mangle]
pub unsafe extern "C" fn pardec_session_free(session: *mut pardec_session) {
    guard_void(|| {
        if session.is_null() {
            return;
        }
        if (*session).inner.is_locked() {
            set_last_error("pardec_session_free: the session is in use; not freed");
            return;
        }
        drop(Box::from_raw(session));
    })
}

/// Forgets everything: empties the KV cache, the fork tree and the statistics. Node ids
/// start again from the trunk.
///
/// Errors: NULL_ARGUMENT, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_clear(session: *mut pardec_session) -> pardec_status {
    guard(|| {
        with_session(session, |s| {
            s.clear();
            Ok(())
        })
    })
}

/// Resets the statistics (not the KV cache).
///
/// Errors: NULL_ARGUMENT, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_reset_stats(session: *mut pardec_session) -> pardec_status {
    guard(|| {
        with_session(session, |s| {
            s.reset_stats();
            Ok(())
        })
    })
}

// ----- text in ----------------------------------------------------------------------------

/// Appends UTF-8 text to the trunk (special tokens written in it, like `<|im_start|>`, are
/// parsed as such). The session's first text gets the model's start token if the model asks
/// for one.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, BUSY, EMPTY_PROMPT, PROMPT_TOO_LONG, INVALID_STATE,
/// KV_CACHE_FULL, DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_prompt(session: *mut pardec_session, text: *const c_char) -> pardec_status {
    guard(|| {
        let text = str_arg(text, "text")?;
        with_session(session, |s| Ok(s.prompt(text)?))
    })
}

/// Appends UTF-8 text to an idle node (the trunk, or a branch that stopped), decoded as if the
/// model had written it; the node can then generate or fork from there.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, BUSY, INVALID_ARGUMENT (unknown node, text with no
/// tokens), INVALID_STATE (node running or waiting on a block), KV_CACHE_FULL, DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_append(
    session: *mut pardec_session,
    node: pardec_node,
    text: *const c_char,
) -> pardec_status {
    guard(|| {
        let text = str_arg(text, "text")?;
        with_session(session, |s| Ok(s.append_text(node_id(node), text)?))
    })
}

/// Appends UTF-8 text to an idle node, as `pardec_session_append` does, and writes to
/// `out_logprobs[0..n]` the natural-log probability the model gave each of its `n` tokens
/// after everything the node sees before it (raw logits: the sampling parameters do not
/// apply); `*out_n` receives `n`. The text is tokenized on its own (special tokens parsed). A
/// capacity of `strlen(text)` always suffices: every token covers at least one byte.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, BUSY, INVALID_ARGUMENT (unknown node, text with no
/// tokens, more tokens than `capacity`, a session with device selection), INVALID_STATE (node
/// running or waiting on a block, or without next-token logits: prompt it first),
/// KV_CACHE_FULL, DECODE. On an error nothing is appended.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_score(
    session: *mut pardec_session,
    node: pardec_node,
    text: *const c_char,
    out_logprobs: *mut f32,
    capacity: usize,
    out_n: *mut usize,
) -> pardec_status {
    guard(|| {
        let text = str_arg(text, "text")?;
        let out_n = out_arg(out_n, "out_n")?;
        let out_logprobs = out_arg(out_logprobs, "out_logprobs")?;
        with_session(session, |s| {
            let tokens = s.model().tokenize(text, false)?;
            if tokens.len() > capacity {
                return Err(FfiError::invalid(format!(
                    "the text has {} tokens but out_logprobs holds {capacity}",
                    tokens.len()
                )));
            }
            let logprobs = s.score_tokens(node_id(node), &tokens)?;
            std::ptr::copy_nonoverlapping(logprobs.as_ptr(), out_logprobs, logprobs.len());
            *out_n = logprobs.len();
            Ok(())
        })
    })
}

// ----- generation -------------------------------------------------------------------------

/// Generates on the trunk until an end-of-generation token, a stop string or
/// `limits->max_tokens` (`limits` may be NULL for the defaults). Events go to `callback`
/// (may be NULL) on this thread, then DONE. On success, if `out_text` is not NULL, it
/// receives the text generated by this call, to release with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, STRUCT_SIZE, INVALID_ARGUMENT, BUSY, INVALID_STATE (a
/// block is open; or the trunk has no next-token logits — after a join that kept branches, a
/// cancel, a full cache, a rewind — the message says which: append text first), CANCELLED and
/// KV_CACHE_FULL (the text so far is kept; the token sampled last was never decoded, so append
/// text before generating again, or free cells with `pardec_session_clear`), DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_generate(
    session: *mut pardec_session,
    limits: *const pardec_run_limits,
    callback: pardec_callback,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let limits = run_limits_arg(limits)?;
        let text = with_session(session, |s| streaming(callback, user_data, |obs| Ok(s.generate(&limits, obs)?)))?;
        if !out_text.is_null() {
            *out_text = c_string(&text).into_raw();
        }
        Ok(())
    })
}

/// Forks the idle node `parent` into `n_branches` branches that share its KV cells. Branch i
/// starts with the UTF-8 text `prefixes[i]` (prefilled, not sampled; "" lets the model start
/// it). `limits` (may be NULL for the defaults) applies to every branch. On success, if
/// `out_nodes` is not NULL, it receives the `n_branches` new node ids. Branch labels are
/// "1".."n" under the trunk and `"<parent label>.i"` under a branch. Call `pardec_session_run`
/// to decode them.
///
/// Errors: NULL_ARGUMENT (session, prefixes or one of them), INVALID_UTF8, STRUCT_SIZE,
/// INVALID_ARGUMENT (0 or more than PARDEC_MAX_FORK_BRANCHES branches, unknown node), BUSY,
/// EMPTY_BRANCH_PREFIX, TOO_MANY_BRANCHES (more than the free slots of `max_branches`),
/// DEPTH_LIMIT, INVALID_STATE (parent running or already forked), KV_CACHE_FULL, DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_fork(
    session: *mut pardec_session,
    parent: pardec_node,
    prefixes: *const *const c_char,
    n_branches: usize,
    limits: *const pardec_run_limits,
    out_nodes: *mut pardec_node,
) -> pardec_status {
    guard(|| {
        if n_branches == 0 {
            return Err(FfiError::invalid("a fork needs at least one branch"));
        }
        let prefixes = array_arg(prefixes, n_branches, PARDEC_MAX_FORK_BRANCHES, "prefixes")?;
        let limits = run_limits_arg(limits)?;
        let specs = prefixes
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                Ok(BranchSpec {
                    prefix: str_arg(p, &format!("prefixes[{i}]"))?.to_owned(),
                    prefix_tokens: Vec::new(),
                    limits: limits.clone(),
                })
            })
            .collect::<FfiResult<Vec<_>>>()?;
        let nodes = with_session(session, |s| Ok(s.fork(node_id(parent), &specs)?))?;
        let nodes = nodes.into_iter().map(node_out).collect::<FfiResult<Vec<_>>>()?;
        if !out_nodes.is_null() {
            std::ptr::copy_nonoverlapping(nodes.as_ptr(), out_nodes, nodes.len());
        }
        Ok(())
    })
}

/// Runs every running node (normally the branches of a fork) to its end, decoding all of them
/// in one batch per step. Events go to `callback` (may be NULL) on this thread, then DONE.
///
/// Errors: NULL_ARGUMENT, BUSY, CANCELLED (the branches stop where they are, with stop reason
/// CANCELLED; they can be joined), KV_CACHE_FULL (likewise, stop reason KV_CACHE_FULL: join
/// them, discarding some to free their cells), DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_run(
    session: *mut pardec_session,
    callback: pardec_callback,
    user_data: *mut c_void,
) -> pardec_status {
    guard(|| with_session(session, |s| streaming(callback, user_data, |obs| Ok(s.run(obs)?))))
}

/// Starts (or restarts) generation on an idle node without decoding anything yet:
/// `pardec_session_step` or `pardec_session_run` then advance it. With a step loop a caller can
/// interleave its own work (a UI, an event loop) with decoding. `limits` may be NULL.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, INVALID_UTF8, INVALID_ARGUMENT, BUSY, INVALID_STATE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_resume(
    session: *mut pardec_session,
    node: pardec_node,
    limits: *const pardec_run_limits,
) -> pardec_status {
    guard(|| {
        let limits = run_limits_arg(limits)?;
        with_session(session, |s| Ok(s.resume(node_id(node), &limits)?))
    })
}

/// Decodes one step: the pending token of every running node, in one batch. Events go to
/// `callback` (may be NULL; no DONE event). On success `*out_running` (if not NULL) is true when
/// something was decoded, false when nothing was running.
///
/// Errors: NULL_ARGUMENT, BUSY, CANCELLED, KV_CACHE_FULL, DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_step(
    session: *mut pardec_session,
    callback: pardec_callback,
    user_data: *mut c_void,
    out_running: *mut bool,
) -> pardec_status {
    guard(|| {
        let running = with_session(session, |s| {
            let mut observer = CObserver::new(callback, user_data);
            Ok(s.step(&mut observer)?)
        })?;
        if !out_running.is_null() {
            *out_running = running;
        }
        Ok(())
    })
}

/// How `pardec_session_join` treats a block's branches.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_join_mode {
    /// Keep every branch: the parent attends to all of them.
    All = 0,
    /// Keep the branches listed in `keep`, discard the others.
    Keep = 1,
    /// Drop every branch: the parent continues as if they never existed.
    Discard = 2,
}

/// Joins the open block of `parent` once all its branches have stopped. `mode` is a
/// `pardec_join_mode`; with KEEP, `keep` lists `n_keep` distinct branch indices (0-based, in
/// fork order); with ALL and DISCARD, `n_keep` must be 0. If `join_text` is not NULL or empty,
/// it is appended to the parent afterwards: after a join that kept branches the parent needs
/// such text (or `pardec_session_append`) before it can generate, since no token has yet
/// attended to every branch.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, INVALID_ARGUMENT (unknown mode, bad indices, unknown
/// node), BUSY, INVALID_STATE (no open block, a branch still running), KV_CACHE_FULL (the join
/// text does not fit: nothing changed, the block is still open — join with DISCARD or KEEP
/// fewer branches, or without text), DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_join(
    session: *mut pardec_session,
    parent: pardec_node,
    mode: u32,
    keep: *const usize,
    n_keep: usize,
    join_text: *const c_char,
) -> pardec_status {
    pardec_session_join_rule(session, parent, mode, keep, n_keep, pardec_join_rule::SameMax as u32, join_text)
}

/// How the parent reads its kept branches back at a join (see the README's fidelity table).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_join_rule {
    /// The branches' own cells; the parent continues at max(branch end) + 1 (Multiverse, NPR).
    SameMax = 0,
    /// The branches' own cells; the parent continues at fork position + the sum of the branch
    /// lengths (ASPD). Needs a join text.
    SameSeq = 1,
    /// The kept branches are read again as one serial text (ThreadWeaver, Parallel-R1).
    Reprefill = 2,
}

/// `pardec_session_join` under a `pardec_join_rule` (added in 0.3; `pardec_session_join` is
/// this with SAME_MAX).
///
/// Errors: those of `pardec_session_join`; INVALID_ARGUMENT also for an unknown rule or a
/// SAME_SEQ join without join text; UNSUPPORTED_MODEL for SAME_SEQ on a model whose cache
/// cannot be shifted.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_join_rule(
    session: *mut pardec_session,
    parent: pardec_node,
    mode: u32,
    keep: *const usize,
    n_keep: usize,
    rule: u32,
    join_text: *const c_char,
) -> pardec_status {
    guard(|| {
        let rule = match rule {
            r if r == pardec_join_rule::SameMax as u32 => JoinRule::SameMax,
            r if r == pardec_join_rule::SameSeq as u32 => JoinRule::SameSeq,
            r if r == pardec_join_rule::Reprefill as u32 => JoinRule::Reprefill,
            r => return Err(FfiError::invalid(format!("join rule {r} is not a pardec_join_rule"))),
        };
        let mode = match mode {
            m if m == pardec_join_mode::All as u32 || m == pardec_join_mode::Discard as u32 => {
                if n_keep != 0 {
                    return Err(FfiError::invalid("n_keep must be 0 unless mode is PARDEC_JOIN_MODE_KEEP"));
                }
                if m == pardec_join_mode::All as u32 {
                    JoinMode::All
                } else {
                    JoinMode::Discard
                }
            }
            m if m == pardec_join_mode::Keep as u32 => {
                JoinMode::Keep(array_arg(keep, n_keep, PARDEC_MAX_FORK_BRANCHES, "keep")?.to_vec())
            }
            m => return Err(FfiError::invalid(format!("join mode {m} is not a pardec_join_mode"))),
        };
        let join_text = opt_str_arg(join_text, "join_text")?;
        with_session(session, |s| Ok(s.join_with(node_id(parent), mode, rule, join_text)?))
    })
}

/// Auto mode: generates on the trunk while the model decides when to fork, under a protocol:
/// `protocol` is a built-in name (`multiverse`, `aspd`, `parallel-r1`, `threadweaver`, `npr`,
/// `apr`) or a protocol description in JSON (text starting with `{`). The session must hold
/// the prompt. `max_tokens` bounds the trunk, `max_branch_tokens` each branch;
/// `response_prefix` (may be NULL) is put in the model's mouth and watched like generated text.
/// Tokens stream through `callback` as in `pardec_session_generate`, with FORK, JOIN and
/// WARNING events as the model opens and closes blocks. If `out_report_json` is not NULL it
/// receives a JSON object `{"blocks": [{"parent", "labels", "titles", "paths"}], "warnings":
/// [{"stream", "kind", "at", "message"}]}` (free it with `pardec_string_free`): malformed
/// model output never fails the call, it is reported there. The report is written on success
/// and also when the generation stops midway (KV_CACHE_FULL, CANCELLED, DECODE): it then
/// describes what was done before, and the text so far is in the session
/// (`pardec_session_result`); on any other error it is not written.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, INVALID_ARGUMENT (unknown protocol, invalid JSON
/// description), BUSY, INVALID_STATE (no prompt, or a node still running), KV_CACHE_FULL,
/// CANCELLED (the session stays usable), DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_generate_auto(
    session: *mut pardec_session,
    protocol: *const c_char,
    max_tokens: usize,
    max_branch_tokens: usize,
    response_prefix: *const c_char,
    callback: pardec_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> pardec_status {
    pardec_session_generate_auto_stop(
        session,
        protocol,
        max_tokens,
        max_branch_tokens,
        response_prefix,
        std::ptr::null(),
        0,
        callback,
        user_data,
        out_report_json,
    )
}

/// `pardec_session_generate_auto` with stop strings for the answer: it ends when one of the
/// `n_stop` strings in `stop` (may be NULL when `n_stop` is 0; at most
/// PARDEC_MAX_STOP_STRINGS) appears in text the trunk writes itself, outside the branches,
/// with the rules of `pardec_run_limits.stop`. A string that is also one of the protocol's own
/// markers stays the protocol's. The trunk's stop reason is then STOP_STRING.
///
/// Errors: as `pardec_session_generate_auto`.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_generate_auto_stop(
    session: *mut pardec_session,
    protocol: *const c_char,
    max_tokens: usize,
    max_branch_tokens: usize,
    response_prefix: *const c_char,
    stop: *const *const c_char,
    n_stop: usize,
    callback: pardec_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let protocol = str_arg(protocol, "protocol")?;
        let prefix = opt_str_arg(response_prefix, "response_prefix")?.unwrap_or("");
        let params = crate::auto::AutoParams {
            max_tokens,
            max_branch_tokens,
            response_prefix: prefix.to_string(),
            stop: stop_strings_arg(stop, n_stop, "stop")?,
            ..Default::default()
        };
        let spec = if protocol == "apr" { None } else { Some(protocol_spec_arg(protocol)?) };
        let mut report = crate::auto::AutoReport::default();
        let outcome = with_session(session, |s| {
            streaming(callback, user_data, |obs| {
                match &spec {
                    None => crate::auto::apr::generate_apr_into(
                        s,
                        &crate::protocol::SubSearchFormat::apr(),
                        &params,
                        obs,
                        &mut report,
                    )?,
                    Some(spec) => crate::auto::generate_auto_into(s, spec, &params, obs, &mut report)?,
                }
                Ok(())
            })
        });
        // A generation that failed midway still says what it did before the failure.
        match &outcome {
            Err(e) if !e.kept_partial_output => {}
            _ => write_json(out_report_json, &report)?,
        }
        outcome
    })
}

/// A stream protocol given by name (a built-in) or as a JSON description (text starting with
/// `{`).
pub(super) fn protocol_spec_arg(protocol: &str) -> FfiResult<crate::protocol::ProtocolSpec> {
    let spec = if protocol.trim_start().starts_with('{') {
        crate::protocol::ProtocolSpec::from_json(protocol)
            .map_err(|e| crate::Error::InvalidArgument(format!("protocol JSON: {e}")))?
    } else {
        crate::protocol::ProtocolSpec::builtin(protocol)
            .ok_or_else(|| crate::Error::InvalidArgument(format!("unknown protocol {protocol:?}")))?
    };
    Ok(spec)
}

/// Skeleton-of-Thought for plain instruct models: the model first writes a numbered skeleton
/// of short points for `question` (its chat template wraps the request), then every point is
/// expanded in parallel as a branch, and the expansions are joined. The session must be empty
/// (new or cleared). `skeleton_tokens` bounds the skeleton and `point_tokens` each expansion
/// (0: 120 and 64). Tokens stream through `callback` as in `pardec_session_generate`, with a
/// FORK and a JOIN event around the expansions and WARNING events for a malformed skeleton
/// (with no usable skeleton the answer is written serially). On success, if `out_answer_json`
/// is not NULL it receives `{"points": [...], "answer": "...", "serial_fallback": bool,
/// "report": {"blocks": [...], "warnings": [...]}}` (free it with `pardec_string_free`).
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, EMPTY_PROMPT (blank question), BUSY, INVALID_STATE
/// (the session is not empty), KV_CACHE_FULL, CANCELLED (the session stays usable), DECODE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_generate_sot(
    session: *mut pardec_session,
    question: *const c_char,
    skeleton_tokens: usize,
    point_tokens: usize,
    callback: pardec_callback,
    user_data: *mut c_void,
    out_answer_json: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let question = str_arg(question, "question")?;
        let defaults = crate::auto::sot::SotParams::default();
        let params = crate::auto::sot::SotParams {
            skeleton_tokens: if skeleton_tokens == 0 { defaults.skeleton_tokens } else { skeleton_tokens },
            point_tokens: if point_tokens == 0 { defaults.point_tokens } else { point_tokens },
        };
        let format = crate::protocol::SkeletonFormat::sot();
        let answer = with_session(session, |s| {
            streaming(callback, user_data, |obs| {
                Ok(crate::auto::sot::generate_sot(s, question, &format, &params, obs)?)
            })
        })?;
        write_json(out_answer_json, &answer)
    })
}

/// Stores `value` as a new JSON string in `*out` (to free with `pardec_string_free`); a NULL
/// `out` means the caller does not want it.
///
/// # Safety
/// `out` is NULL or writable.
pub(super) unsafe fn write_json(out: *mut *mut c_char, value: &impl serde::Serialize) -> FfiResult<()> {
    if !out.is_null() {
        let json = serde_json::to_string(value).map_err(|e| FfiError::from(crate::Error::Internal(e.to_string())))?;
        *out = c_string(&json).into_raw();
    }
    Ok(())
}

// ----- results ----------------------------------------------------------------------------

/// Takes a snapshot of everything the session holds: the flattened text, every block's
/// branches, and the statistics. `*out_result` receives a new handle, to release with
/// `pardec_result_free`; it does not change when the session goes on.
///
/// Errors: NULL_ARGUMENT, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_result(
    session: *const pardec_session,
    out_result: *mut *mut pardec_result,
) -> pardec_status {
    guard(|| {
        let out = out_arg(out_result, "out_result")?;
        let result = with_session(session, |s| Ok(pardec_result::snapshot(&s.transcript(), &s.stats())))?;
        *out = Box::into_raw(Box::new(result));
        Ok(())
    })
}

/// Writes the session's statistics since creation, `pardec_session_clear` or
/// `pardec_session_reset_stats`. Pass `sizeof(pardec_stats)` as `size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, BUSY.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_stats(
    session: *const pardec_session,
    out_stats: *mut pardec_stats,
    size: usize,
) -> pardec_status {
    guard(|| {
        let stats = with_session(session, |s| Ok(pardec_stats::from(&s.stats())))?;
        write_versioned(out_stats, &stats, size)
    })
}
