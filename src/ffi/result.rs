//! Result snapshots and statistics.

use std::ffi::{c_char, CString};
use std::mem::size_of;

use super::boundary::{c_string, guard, guard_void, out_arg, write_versioned, FfiError, FfiResult, Versioned};
use super::node::pardec_node;
use super::status::pardec_status;
use crate::{ItemReport, JoinMode, NodeReport, Stats, StopReason, TokenLogprob, Transcript};

/// Why a node stopped generating.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_stop_reason {
    /// It has not stopped (or never generated).
    None = 0,
    /// The model emitted an end-of-generation token.
    Eog = 1,
    /// The run's `max_tokens` was reached.
    MaxTokens = 2,
    /// A stop string appeared.
    StopString = 3,
    /// The KV cache had no room for the next token.
    KvCacheFull = 4,
    /// The callback cancelled.
    Cancelled = 5,
    /// An RPC server holding some of the model's layers was lost.
    ServerLost = 6,
}

/// The C code of a stop reason, and the matched stop string if any.
pub(crate) fn stop_reason_code(reason: Option<&StopReason>) -> (pardec_stop_reason, Option<&str>) {
    match reason {
        None => (pardec_stop_reason::None, None),
        Some(StopReason::Eog) => (pardec_stop_reason::Eog, None),
        Some(StopReason::MaxTokens) => (pardec_stop_reason::MaxTokens, None),
        Some(StopReason::StopString(s)) => (pardec_stop_reason::StopString, Some(s.as_str())),
        Some(StopReason::KvCacheFull) => (pardec_stop_reason::KvCacheFull, None),
        Some(StopReason::Cancelled) => (pardec_stop_reason::Cancelled, None),
        Some(StopReason::ServerLost) => (pardec_stop_reason::ServerLost, None),
    }
}

/// Metrics of a generation, as the parallel-decoding papers define them. "Generated" tokens
/// are sampled ones; prompt, branch prefixes and join text are prefill.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pardec_stats {
    /// Generated tokens, trunk and branches.
    pub tokens_total: u64,
    /// Generated tokens inside branches.
    pub tokens_branch: u64,
    /// Prefilled tokens.
    pub tokens_prefill: u64,
    /// Decode steps on the critical path (a parallel step counts once).
    pub steps: u64,
    /// Parallel blocks opened (forks).
    pub blocks: u64,
    /// Branches opened.
    pub branches: u64,
    /// Wall time of decode steps with no branch token (the trunk alone), in seconds.
    pub serial_seconds: f64,
    /// Wall time of decode steps holding at least one branch token, in seconds.
    pub parallel_seconds: f64,
    /// Wall time of prefilling prompts, branch prefixes and join texts, in seconds.
    pub prefill_seconds: f64,
    /// Generated tokens per second of decoding.
    pub tps: f64,
    /// Branch tokens per second of the parallel phases.
    pub p_tps: f64,
    /// Degree of parallelism: branch tokens / generated tokens.
    pub dp: f64,
    /// Average number of branches per block.
    pub abn: f64,
    /// Generated tokens / decode steps (Multiverse's #parallel).
    pub parallel: f64,
    /// KV cells holding the session's tokens.
    pub kv_cells_used: u64,
    /// KV cells the same tokens would need if every branch copied its prefix.
    pub kv_cells_unshared: u64,
    /// Microseconds per decode step the engine spent outside llama_decode (token selection
    /// and bookkeeping). Appended in 0.2.
    pub host_us_per_step: f64,
    /// Of which choosing the next tokens. Appended in 0.2.
    pub selection_us_per_step: f64,
}

/// `sizeof(pardec_stats)` before `host_us_per_step` was appended.
const STATS_V1_SIZE: usize = std::mem::offset_of!(pardec_stats, host_us_per_step);

impl Versioned for pardec_stats {
    const NAME: &'static str = "pardec_stats";
    const SIZES: &'static [usize] = &[STATS_V1_SIZE, size_of::<pardec_stats>()];
}

impl From<&Stats> for pardec_stats {
    fn from(s: &Stats) -> Self {
        // No `..`: a new Rust metric must be a decision (append it here, or leave it out).
        let Stats {
            tokens_total,
            tokens_branch,
            tokens_prefill,
            steps,
            blocks,
            branches,
            serial_seconds,
            parallel_seconds,
            prefill_seconds,
            tps,
            p_tps,
            dp,
            abn,
            parallel,
            kv_cells_used,
            kv_cells_unshared,
            host_us_per_step,
            selection_us_per_step,
        } = *s;
        pardec_stats {
            tokens_total,
            tokens_branch,
            tokens_prefill,
            steps,
            blocks,
            branches,
            serial_seconds,
            parallel_seconds,
            prefill_seconds,
            tps,
            p_tps,
            dp,
            abn,
            parallel,
            kv_cells_used,
            kv_cells_unshared,
            host_us_per_step,
            selection_us_per_step,
        }
    }
}

/// What happened to a block at its join.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_join_state {
    /// Not joined yet.
    Open = 0,
    /// Joined keeping every branch.
    All = 1,
    /// Joined keeping some branches.
    Keep = 2,
    /// Joined discarding every branch.
    Discard = 3,
}

/// One block (fork) of a result. Pointers are owned by the result.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_block_info {
    /// Label of the node that forked ("" for the trunk).
    pub parent_label: *const c_char,
    /// Branches of the block, kept or not: `pardec_result_branch` takes indices 0 to
    /// n_branches - 1.
    pub n_branches: usize,
    /// KV position where every branch started.
    pub fork_pos: i32,
    /// Whether and how the block was joined.
    pub join_state: pardec_join_state,
}

impl Versioned for pardec_block_info {
    const NAME: &'static str = "pardec_block_info";
    const SIZES: &'static [usize] = &[size_of::<pardec_block_info>()];
}

/// One branch of a result. Pointers are owned by the result.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_branch_info {
    /// Label path: "1", "2", "2.1" ...
    pub label: *const c_char,
    /// The branch's text: its prefix, what it generated, and its own joined blocks flattened.
    pub text: *const c_char,
    /// Tokens the branch decoded itself (prefix and generated; nested blocks excluded).
    pub n_tokens: usize,
    /// Why the branch stopped generating (NONE if it never generated).
    pub stop_reason: pardec_stop_reason,
    /// The stop string that matched, or NULL.
    pub stop_string: *const c_char,
    /// Whether the parent attends to this branch (true while the block is open, and after a
    /// join that kept it).
    pub kept: bool,
    /// The branch's node (as in events; for `pardec_result_logprobs`). Added in 0.5 in what
    /// was padding: the struct's size did not change.
    pub node: pardec_node,
}

impl Versioned for pardec_branch_info {
    const NAME: &'static str = "pardec_branch_info";
    const SIZES: &'static [usize] = &[size_of::<pardec_branch_info>()];
}

/// One of a step's most likely tokens.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct pardec_top_logprob {
    /// The token id.
    pub token: i32,
    /// Its natural-log probability under the model.
    pub logprob: f32,
}

/// A generated token's log-probability (see `pardec_session_params.logprobs`). Pointers are
/// owned by the result.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_token_logprob {
    /// KV position of the token in its node.
    pub pos: i32,
    /// The token the node committed.
    pub token: i32,
    /// Its natural-log probability under the model (<= 0).
    pub logprob: f32,
    /// The step's most likely tokens, most likely first (`n_top` entries; NULL when 0).
    pub top: *const pardec_top_logprob,
    /// Entries of `top`.
    pub n_top: usize,
}

/// One node's log-probabilities inside a result: the entries point into `tops`.
struct NodeLogprobs {
    node: usize,
    entries: Vec<pardec_token_logprob>,
    /// Owns what `entries[i].top` points to (never changed after the snapshot is made).
    _tops: Vec<Vec<pardec_top_logprob>>,
}

impl NodeLogprobs {
    fn new(node: usize, logprobs: &[TokenLogprob]) -> NodeLogprobs {
        let tops: Vec<Vec<pardec_top_logprob>> = logprobs
            .iter()
            .map(|l| l.top.iter().map(|&(token, logprob)| pardec_top_logprob { token, logprob }).collect())
            .collect();
        let entries = logprobs
            .iter()
            .zip(&tops)
            .map(|(l, top)| pardec_token_logprob {
                pos: l.pos,
                token: l.token,
                logprob: l.logprob,
                top: if top.is_empty() { std::ptr::null() } else { top.as_ptr() },
                n_top: top.len(),
            })
            .collect();
        NodeLogprobs { node, entries, _tops: tops }
    }
}

struct ResultBranch {
    node: usize,
    label: CString,
    text: CString,
    n_tokens: usize,
    stop_reason: pardec_stop_reason,
    stop_string: Option<CString>,
    kept: bool,
}

struct ResultBlock {
    parent_label: CString,
    fork_pos: i32,
    join_state: pardec_join_state,
    branches: Vec<ResultBranch>,
}

/// A snapshot of a session's text, blocks and statistics (opaque).
///
/// Thread safety: immutable; may be read from any number of threads at once and freed from
/// any thread (once, after the readers are done). Independent of its session's lifetime.
pub struct pardec_result {
    text: CString,
    blocks: Vec<ResultBlock>,
    stats: pardec_stats,
    /// Nodes with log-probabilities, trunk first, then in the order of `blocks`.
    logprobs: Vec<NodeLogprobs>,
}

// SAFETY: the raw pointers in `logprobs` point into buffers the result itself owns and never
// changes; the result is immutable once made (see its thread-safety note).
unsafe impl Send for pardec_result {}
unsafe impl Sync for pardec_result {}

impl pardec_result {
    pub(crate) fn snapshot(transcript: &Transcript, stats: &Stats) -> pardec_result {
        let mut blocks = Vec::new();
        let mut logprobs = Vec::new();
        collect_blocks(&transcript.trunk, &mut blocks, &mut logprobs);
        if !transcript.trunk.logprobs.is_empty() {
            logprobs.insert(0, NodeLogprobs::new(transcript.trunk.node, &transcript.trunk.logprobs));
        }
        pardec_result { text: c_string(&transcript.text), blocks, stats: pardec_stats::from(stats), logprobs }
    }
}

/// Every block under `node`, depth first in the order they were opened (the order of
/// `Transcript::blocks`): a block comes before the blocks nested in its branches.
fn collect_blocks(node: &NodeReport, out: &mut Vec<ResultBlock>, logprobs: &mut Vec<NodeLogprobs>) {
    for item in &node.items {
        let ItemReport::Block { fork_pos, join, branches, .. } = item else { continue };
        let join_state = match join {
            None => pardec_join_state::Open,
            Some(JoinMode::All) => pardec_join_state::All,
            Some(JoinMode::Keep(_)) => pardec_join_state::Keep,
            Some(JoinMode::Discard) => pardec_join_state::Discard,
        };
        let branches_out = branches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (stop_reason, stop) = stop_reason_code(b.stop_reason.as_ref());
                if !b.logprobs.is_empty() {
                    logprobs.push(NodeLogprobs::new(b.node, &b.logprobs));
                }
                ResultBranch {
                    node: b.node,
                    label: c_string(&b.label),
                    text: c_string(&b.text),
                    n_tokens: b.tokens,
                    stop_reason,
                    stop_string: stop.map(c_string),
                    kept: match join {
                        None | Some(JoinMode::All) => true,
                        Some(JoinMode::Keep(k)) => k.contains(&i),
                        Some(JoinMode::Discard) => false,
                    },
                }
            })
            .collect();
        out.push(ResultBlock {
            parent_label: c_string(&node.label),
            fork_pos: *fork_pos,
            join_state,
            branches: branches_out,
        });
        for b in branches {
            collect_blocks(b, out, logprobs);
        }
    }
}

unsafe fn result_arg<'a>(p: *const pardec_result) -> FfiResult<&'a pardec_result> {
    p.as_ref().ok_or_else(|| FfiError::null("result"))
}

fn block_at(r: &pardec_result, block: usize) -> FfiResult<&ResultBlock> {
    r.blocks.get(block).ok_or_else(|| {
        FfiError::new(pardec_status::OutOfRange, format!("block {block}: the result has {} blocks", r.blocks.len()))
    })
}

/// Releases a result (NULL is ignored). Every pointer read from it becomes invalid.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_free(result: *mut pardec_result) {
    guard_void(|| {
        if !result.is_null() {
            drop(Box::from_raw(result));
        }
    })
}

/// Writes to `*out_text` the full text as the trunk sees it: prompt, generated text, and the
/// branches of every block (kept ones, in order). The string is owned by the result.
///
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_text(
    result: *const pardec_result,
    out_text: *mut *const c_char,
) -> pardec_status {
    guard(|| {
        let r = result_arg(result)?;
        let out = out_arg(out_text, "out_text")?;
        *out = r.text.as_ptr();
        Ok(())
    })
}

/// Writes the number of blocks to `*out_n_blocks`. Blocks are numbered depth first in the
/// order they were opened: a block comes before the blocks nested in its branches.
///
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_n_blocks(
    result: *const pardec_result,
    out_n_blocks: *mut usize,
) -> pardec_status {
    guard(|| {
        let r = result_arg(result)?;
        let out = out_arg(out_n_blocks, "out_n_blocks")?;
        *out = r.blocks.len();
        Ok(())
    })
}

/// Describes block `block`. Pass `sizeof(pardec_block_info)` as `size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, OUT_OF_RANGE.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_block(
    result: *const pardec_result,
    block: usize,
    out_info: *mut pardec_block_info,
    size: usize,
) -> pardec_status {
    guard(|| {
        let b = block_at(result_arg(result)?, block)?;
        let info = pardec_block_info {
            parent_label: b.parent_label.as_ptr(),
            n_branches: b.branches.len(),
            fork_pos: b.fork_pos,
            join_state: b.join_state,
        };
        write_versioned(out_info, &info, size)
    })
}

/// Describes branch `index` (0-based, fork order) of block `block`. Pass
/// `sizeof(pardec_branch_info)` as `size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE, OUT_OF_RANGE.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_branch(
    result: *const pardec_result,
    block: usize,
    index: usize,
    out_info: *mut pardec_branch_info,
    size: usize,
) -> pardec_status {
    guard(|| {
        let b = block_at(result_arg(result)?, block)?;
        let br = b.branches.get(index).ok_or_else(|| {
            FfiError::new(
                pardec_status::OutOfRange,
                format!("branch {index}: block {block} has {} branches", b.branches.len()),
            )
        })?;
        let info = pardec_branch_info {
            label: br.label.as_ptr(),
            text: br.text.as_ptr(),
            n_tokens: br.n_tokens,
            stop_reason: br.stop_reason,
            stop_string: br.stop_string.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            kept: br.kept,
            node: br.node as pardec_node,
        };
        write_versioned(out_info, &info, size)
    })
}

/// Writes the statistics at the time of the snapshot. Pass `sizeof(pardec_stats)` as `size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_stats(
    result: *const pardec_result,
    out_stats: *mut pardec_stats,
    size: usize,
) -> pardec_status {
    guard(|| {
        let r = result_arg(result)?;
        write_versioned(out_stats, &r.stats, size)
    })
}

/// Writes to `*out_entries` the log-probabilities of the tokens `node` generated, in order
/// (owned by the result), and their count to `*out_n`. A node that generated nothing, or a
/// session that records no log-probabilities (`pardec_session_params.logprobs` -1), gives
/// NULL and 0. Nodes are the ids events and `pardec_branch_info.node` carry.
///
/// Errors: NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn pardec_result_logprobs(
    result: *const pardec_result,
    node: pardec_node,
    out_entries: *mut *const pardec_token_logprob,
    out_n: *mut usize,
) -> pardec_status {
    guard(|| {
        let r = result_arg(result)?;
        let entries = out_arg(out_entries, "out_entries")?;
        let n = out_arg(out_n, "out_n")?;
        let found = r.logprobs.iter().find(|l| l.node == node as usize).map(|l| l.entries.as_slice());
        let list = found.unwrap_or(&[]);
        *entries = if list.is_empty() { std::ptr::null() } else { list.as_ptr() };
        *n = list.len();
        Ok(())
    })
}
