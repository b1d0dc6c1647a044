//! The serial–parallel decoding engine: one llama.cpp context, a trunk and a tree of branches.
//!
//! How branches share work (the README's "How it works"): the context has a *unified* KV
//! cache, where a cell carries a set of sequence ids and a token of sequence `s` attends
//! exactly to the cells carrying `s` at positions ≤ its own. So
//! - **fork** = `seq_cp(parent, child)`: the child's id is added to the prefix cells (zero copy)
//!   and every child starts at the parent's next position;
//! - **parallel step** = one `llama_decode` holding one token per live branch, each under its
//!   own id: a branch sees the prefix and itself, never a sibling;
//! - **join** = `seq_cp(child, parent, fork_pos..)` for each kept branch, then `seq_rm(child)`;
//!   the parent now sees every kept branch and continues at max(branch end) + 1.
//!
//! Every llama.cpp precondition that would abort the process (sequence ids below `n_seq_max`,
//! batches no larger than `n_batch`, logits read only where requested, contiguous positions)
//! is checked here before the call.
//!
//! One mechanism per file, along the data's path: this file holds the types and the session
//! itself (creation, configuration, argument checks); `prefill` the text a caller puts in;
//! `fork` the branches; `step` generation, one batched decode per step; `stop` stop strings;
//! `join` the join rules; `results` what a session holds, read back, and `report` its
//! transcript; `roots` conversations of their own beside the trunk; `tree` the bookkeeping of
//! nodes and blocks; `sampling` token choice; `kv` sequence ids; `text` whole-UTF-8 pieces.

mod fork;
mod grammar;
mod join;
mod kv;
mod logprobs;
mod lora;
mod penalties;
mod prefill;
mod report;
mod results;
mod roots;
mod sampling;
mod score;
mod step;
mod stop;
mod text;
mod tree;

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::backend::backend;
use crate::error::{Error, Result};
pub use crate::layout_rules::JoinRule;
use crate::llama::{Batch, ContextConfig, LlamaContext};
use crate::model::{Model, Token};
use crate::stats::Counters;
pub use grammar::Grammar;
use kv::{SeqPool, TRUNK_SEQ};
pub use logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
use lora::check_adapters;
use penalties::PenaltyWindow;
pub use report::{ItemReport, NodeReport, Transcript};
/// Not part of the API: public only so that `benches/argmax.rs` can time the greedy pick.
#[doc(hidden)]
pub use sampling::argmax;
use sampling::BranchSampler;
pub use sampling::SamplingParams;
use step::selection_threads;
use tree::{Block, Node, NodeState};
pub use tree::{JoinMode, Origin, StopReason};

/// No token chosen ahead for this row (see `Session::preselect`).
const NO_PICK: Token = -1;

/// llama.cpp's hard limit on sequence ids (LLAMA_MAX_SEQ).
pub const MAX_SEQUENCES: u32 = 256;

/// llama-cpp-2 documents that creating contexts from one model concurrently is unsound
/// (llama.cpp may adjust the model while a context is made), so creation is serialised.
static CONTEXT_CREATION: Lazy<Mutex<()>> = Lazy::new(|| Mutex::new(()));

/// Precision of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// Half-precision keys and values: llama.cpp's default, half the memory of `F32`.
    F16,
    /// Exact keys and values: for equivalence tests against a float32 reference.
    F32,
}

/// Where each step's next tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every running node's full logit row is copied to the host, which picks its token:
    /// exact for every sampling setting.
    Host,
    /// llama.cpp reduces each row to its `candidates` highest logits inside the decode graph
    /// (on the GPU with a GPU backend), and only those reach the host, which picks among
    /// them with the same per-branch sampler. The same tokens as `Host` for greedy and for
    /// `top_k ≤ candidates` (up to exact ties); with `top_k` off or larger, sampling is
    /// truncated to the candidates. A run may ban fewer tokens than `candidates`.
    Device {
        /// Logits kept per row: 1 up to the vocabulary size ([`Session::new`] refuses
        /// others); [`Selection::DEFAULT_CANDIDATES`] when the caller has no preference.
        candidates: u32,
    },
}

impl Selection {
    /// The candidate count pardec uses for `Device` when none is given (llama.cpp's own
    /// sampling default is top-k 40).
    pub const DEFAULT_CANDIDATES: u32 = 64;
}

/// How a session's context is made and how it samples.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// KV cells shared by the trunk and all branches.
    pub n_ctx: u32,
    /// Most tokens in one `llama_decode`; larger steps and prefills are split.
    pub n_batch: u32,
    /// Most branches alive at once, all nesting levels together (≤ 255).
    pub max_branches: u32,
    /// Most nesting levels (1: branches cannot fork).
    pub max_depth: u32,
    /// CPU threads (0: all available cores).
    pub n_threads: u32,
    /// Precision of the KV cache (default `F16`; `F32` for exact comparisons, at twice the
    /// memory).
    pub kv_type: KvType,
    /// Flash attention: `None` lets llama.cpp decide, except that an F32 KV cache turns it
    /// off (llama.cpp's flash-attention path rounds K and V to f16, defeating F32).
    pub flash_attn: Option<bool>,
    /// How the trunk and every branch pick tokens (default greedy); each branch draws from
    /// its own random stream, derived from `sampling.seed` and its path in the fork tree.
    /// [`Session::set_sampling`] changes it later.
    pub sampling: SamplingParams,
    /// Where each step's tokens are chosen (default [`Selection::Host`]).
    pub selection: Selection,
    /// LoRA adapters of the session's model, each with its scale (1.0: as trained); see
    /// [`Session::set_adapters`].
    pub adapters: Vec<(Adapter, f32)>,
    /// Log-probabilities of every generated token: `Some(n)` records, per node, each sampled
    /// token's log-probability under the model (the log-softmax of the raw logits, before
    /// bias, penalties or temperature, as llama-cpp-python reports them) and the `n` most
    /// likely tokens of its step (0 to [`MAX_TOP_LOGPROBS`]); see [`Session::node_logprobs`]
    /// and [`Event::Token`]. `None` (the default) costs nothing. Needs host selection.
    pub logprobs: Option<usize>,
    /// Keep the logits of every sampled token (for equivalence tests; costs memory).
    #[doc(hidden)]
    pub record_logits: bool,
    /// Negative control for tests: branch tokens are tagged with every running sibling's id,
    /// so siblings see each other (and so do the roots of [`Session::open_root`]). Never set
    /// this outside a test.
    #[doc(hidden)]
    pub leak_between_siblings: bool,
    /// Negative control for tests: every token a branch generates also enters its running
    /// siblings' penalty windows, so their penalties see each other. Never set this outside a
    /// test.
    #[doc(hidden)]
    pub share_penalty_windows: bool,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_ctx: 4096,
            n_batch: 512,
            max_branches: 16,
            max_depth: 3,
            n_threads: 0,
            kv_type: KvType::F16,
            flash_attn: None,
            sampling: SamplingParams::default(),
            selection: Selection::Host,
            adapters: Vec::new(),
            logprobs: None,
            record_logits: false,
            leak_between_siblings: false,
            share_penalty_windows: false,
        }
    }
}

/// A handle to the trunk or a branch of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) usize);

impl NodeId {
    /// The trunk: the serial part of the response.
    pub const TRUNK: NodeId = NodeId(0);

    /// The node's index in its session: 0 for the trunk, then the branches in the order they
    /// were forked (as in [`NodeReport::node`] and [`Event::Token`]'s `node`). Indices are
    /// never reused within a session, only cleared by [`Session::clear`].
    pub fn index(self) -> usize {
        self.0
    }

    /// The handle of the node with this index (as in [`NodeReport::node`]).
    pub fn from_index(index: usize) -> NodeId {
        NodeId(index)
    }
}

/// Limits of one generation run (serial, or one branch's).
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    /// Most tokens the run samples (a branch prefix and the end-of-generation token are not
    /// counted); the run ends with [`StopReason::MaxTokens`] when reached. 0 samples nothing.
    pub max_tokens: usize,
    /// Stop when any of these appears in the text generated by this run; the run ends with
    /// [`StopReason::StopString`] at the token that completes it, which is kept (in the text
    /// and the KV cache). A stop may begin in text the caller forced right before the run (a
    /// branch prefix, appended text) and end in the run. A stop made only of whitespace
    /// (`"\n"`, `"\n\n"`) matches only once the run has written something other than
    /// whitespace: a point that starts on a new line has not ended. Empty strings never match.
    pub stop: Vec<String>,
    /// [`Session::generate`] returns its text without the stop string that ended the run
    /// (and without what the completing token wrote after it), as llama-cpp-python does; the
    /// session's text and KV cache keep every token either way.
    pub strip_stop: bool,
    /// Never sample an end-of-generation token (benchmarks that need exact token counts).
    pub ban_eog: bool,
    /// Tokens this run may never sample (e.g. a protocol's control tokens in a state where
    /// they are illegal).
    pub banned_tokens: Vec<Token>,
    /// Constrain the run's sampled tokens to this grammar (see [`Grammar`]): compiled when the
    /// run starts, before anything is decoded, so a bad grammar is an error that changes
    /// nothing. Needs host selection.
    pub grammar: Option<Grammar>,
}

impl RunLimits {
    /// A run of at most `max_tokens` sampled tokens, with no stop strings and no bans: the
    /// model may still end it earlier with an end-of-generation token.
    pub fn tokens(max_tokens: usize) -> Self {
        RunLimits { max_tokens, ..Default::default() }
    }

    /// Bytes of `text` (what a run generated) to return: all of it, or with `strip_stop`, the
    /// part before the stop string that ended the run. `lookback` is the forced text right
    /// before the run, where the stop may have begun; `last_piece` bytes of `text` came from
    /// the token that completed it, so the match that fired is the first one ending there (a
    /// last token "\n\n" under the stop "\n" is cut at its first newline).
    pub(crate) fn returned_len(
        &self,
        reason: Option<&StopReason>,
        lookback: &[u8],
        text: &[u8],
        last_piece: usize,
    ) -> usize {
        let (true, Some(StopReason::StopString(stop))) = (self.strip_stop, reason) else {
            return text.len();
        };
        let mut joined = lookback.to_vec();
        joined.extend_from_slice(text);
        let s = stop.as_bytes();
        let piece_from = joined.len().saturating_sub(last_piece);
        let start = (0..=joined.len().saturating_sub(s.len()))
            .find(|&i| i + s.len() > piece_from && joined[i..].starts_with(s));
        start.map_or(text.len(), |i| i.saturating_sub(lookback.len()))
    }
}

/// One branch to open at a fork.
#[derive(Debug, Clone, Default)]
pub struct BranchSpec {
    /// Text the branch starts with (prefilled, not sampled); may be empty.
    pub prefix: String,
    /// Alternatively, token ids to start with (used instead of `prefix` when non-empty).
    pub prefix_tokens: Vec<Token>,
    /// How the branch's generation ends: token budget, stop strings, bans. Stop strings match
    /// only text the branch samples, never its prefix.
    pub limits: RunLimits,
}

impl BranchSpec {
    /// A branch that starts with the text `prefix` (tokenized without BOS; "" starts from the
    /// parent's next-token logits) and then samples at most `max_tokens` tokens, with no stop
    /// strings. A non-empty prefix that tokenizes to nothing makes the fork fail with
    /// [`Error::EmptyBranchPrefix`].
    pub fn new(prefix: impl Into<String>, max_tokens: usize) -> Self {
        BranchSpec { prefix: prefix.into(), prefix_tokens: Vec::new(), limits: RunLimits::tokens(max_tokens) }
    }
}

/// What a running session reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A token was decoded into `node` (`label` "" is the trunk). `text` holds the characters
    /// completed by this token; it may be empty while a character is split over tokens.
    Token {
        /// The node that decoded the token.
        node: NodeId,
        /// The node's label: "" for the trunk, "1", "2", "2.1" ... for branches.
        label: &'a str,
        /// The decoded token id; -1 when the event only flushes the bytes of an incomplete
        /// character left at the end of a run (rendered as U+FFFD).
        token: Token,
        /// The characters this token completed (whole UTF-8).
        text: &'a str,
        /// The token's log-probability and its step's most likely tokens, when the session
        /// records them ([`SessionParams::logprobs`]); `None` otherwise and for flushes.
        logprob: Option<&'a TokenLogprob>,
    },
    /// `node` stopped generating.
    End {
        /// The node that stopped.
        node: NodeId,
        /// The node's label ("" for the trunk).
        label: &'a str,
        /// Why it stopped.
        reason: &'a StopReason,
    },
    /// Auto mode: `parent` (label `label`) forked into branches labelled `branches`.
    Fork {
        /// The node that opened the block.
        parent: NodeId,
        /// The parent's label ("" for the trunk).
        label: &'a str,
        /// The labels of the new branches, in order: engine label paths ("1", "2", "2.1"
        /// ...), as in [`NodeReport::label`]; the model's own announced labels are in
        /// [`AutoBlock::labels`](crate::auto::AutoBlock::labels).
        branches: &'a [String],
    },
    /// Auto mode: the block of `parent` was joined; it continues seeing its branches.
    Join {
        /// The node whose block was joined.
        parent: NodeId,
        /// The parent's label ("" for the trunk).
        label: &'a str,
        /// How many branches the parent kept.
        kept: usize,
    },
    /// Auto mode: malformed model output in stream `label`; the documented fallback was taken.
    Warning {
        /// The stream's label ("" for the trunk).
        label: &'a str,
        /// What was wrong, where, and which fallback was taken.
        message: &'a str,
    },
    /// Auto mode: text put into `node` for the model rather than sampled by it (the response
    /// prefix of [`AutoParams`](crate::auto::AutoParams)), right after it was decoded. Not sent
    /// through the C ABI, which has no event kind for it: there the text is in the result.
    Forced {
        /// The node the text went into.
        node: NodeId,
        /// The node's label ("" for the trunk).
        label: &'a str,
        /// The text.
        text: &'a str,
    },
}

/// Receives events; returning `false` cancels the run (the session stays usable).
pub trait Observer {
    /// Called for every event, on the thread that drives the session, while the session is
    /// borrowed (the event's strings live only for the call). Return `true` to go on; `false`
    /// stops every running node and makes the call fail with
    /// [`Error::Cancelled`], keeping the text decoded so far.
    fn on_event(&mut self, event: &Event<'_>) -> bool;
}

impl<F: FnMut(&Event<'_>) -> bool> Observer for F {
    fn on_event(&mut self, event: &Event<'_>) -> bool {
        self(event)
    }
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn on_event(&mut self, _: &Event<'_>) -> bool {
        true
    }
}

/// Forces tokens instead of sampling: a scripted sampler for tests (make a model write a
/// given structure while it writes the rest itself) and for hosts that constrain output.
pub trait TokenScript: Send {
    /// Called before each sample of the node labelled `label` ("" is the trunk), whose own
    /// text so far is `text`. `Some(token)` is used instead of sampling.
    fn next_token(&mut self, label: &str, text: &str) -> Option<Token>;
}

/// One token to decode, and whose it is.
#[derive(Debug, Clone, Copy)]
struct BatchEntry {
    node: usize,
    token: Token,
    pos: i32,
    logits: bool,
    /// A token of a prompt queued for this step (see `roots.rs`), not a running node's.
    queued_prompt: bool,
}

/// A root's prompt tokens waiting for the next step (see [`Session::open_root_queued`]).
#[derive(Debug)]
struct QueuedPrefill {
    node: usize,
    tokens: Vec<Token>,
}

/// A decoding session: one llama.cpp context holding a trunk and its branches.
///
/// Thread safety: a session is `Send` but not `Sync`; use it from one thread at a time. Many
/// sessions may share one [`Model`] on many threads.
pub struct Session {
    // Field order matters: the context borrows the model and must be dropped first.
    ctx: LlamaContext,
    batch: Batch,
    model: Model,
    params: SessionParams,
    n_ctx: u32,
    n_batch: usize,
    n_seq_max: u32,
    /// Candidates per row with device selection; None: full rows (host selection).
    device_candidates: Option<u32>,
    pool: SeqPool,
    nodes: Vec<Node>,
    blocks: Vec<Block>,
    counters: Counters,
    /// Prompts decoded in the next step's batch, beside the running nodes' tokens.
    queued: Vec<QueuedPrefill>,
    /// Reused per step: no allocation on the hot path.
    entries: Vec<BatchEntry>,
    seq_scratch: Vec<i32>,
    text_scratch: String,
    bytes_scratch: Vec<u8>,
    script: Option<Box<dyn TokenScript>>,
    /// The next token of each row of the current chunk, chosen ahead from full rows (in
    /// parallel for wide steps); `NO_PICK` where the node samples at commit instead.
    picks: Vec<Token>,
    selection_threads: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("n_ctx", &self.n_ctx).field("nodes", &self.nodes.len()).finish()
    }
}

fn kv_cache_type(t: KvType) -> llama_cpp_sys_2::ggml_type {
    match t {
        KvType::F16 => llama_cpp_sys_2::GGML_TYPE_F16,
        KvType::F32 => llama_cpp_sys_2::GGML_TYPE_F32,
    }
}

/// Checks a `Device` selection against the model and the session's test switches.
fn device_candidates(params: &SessionParams, n_vocab: usize) -> Result<Option<u32>> {
    let Selection::Device { candidates } = params.selection else {
        return Ok(None);
    };
    if candidates == 0 || candidates as usize > n_vocab {
        return Err(Error::InvalidArgument(format!(
            "device selection keeps 1..={n_vocab} candidates per row, not {candidates}"
        )));
    }
    host_only_adjustments(&params.sampling)?;
    if params.logprobs.is_some() {
        return Err(Error::InvalidArgument(
            "log-probabilities need the full logit row of every step: use Selection::Host".into(),
        ));
    }
    if params.record_logits || params.leak_between_siblings {
        return Err(Error::InvalidArgument(
            "record_logits and leak_between_siblings read full logit rows: use Selection::Host".into(),
        ));
    }
    Ok(Some(candidates))
}

/// Device selection hands the host candidate sets, which the logit bias and the penalties
/// would re-rank from outside the set: they need full rows.
fn host_only_adjustments(sampling: &SamplingParams) -> Result<()> {
    if sampling.adjustments().any() {
        return Err(Error::InvalidArgument(
            "the logit bias and the repetition penalties change full logit rows: use Selection::Host".into(),
        ));
    }
    Ok(())
}

impl Session {
    /// Creates a session (one llama.cpp context) on a loaded model.
    pub fn new(model: &Model, params: SessionParams) -> Result<Session> {
        if params.n_ctx < 8 {
            return Err(Error::InvalidArgument(format!("n_ctx {} is below 8", params.n_ctx)));
        }
        if params.n_batch == 0 {
            return Err(Error::InvalidArgument("n_batch must be at least 1".into()));
        }
        if params.max_branches == 0 || params.max_branches >= MAX_SEQUENCES {
            return Err(Error::InvalidArgument(format!(
                "max_branches {} must be in 1..={}",
                params.max_branches,
                MAX_SEQUENCES - 1
            )));
        }
        if params.max_depth == 0 {
            return Err(Error::InvalidArgument("max_depth must be at least 1".into()));
        }
        params.sampling.validate_for(model.n_vocab())?;
        if let Some(n) = params.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidArgument(format!(
                "logprobs {n}: at most {MAX_TOP_LOGPROBS} alternatives per token"
            )));
        }
        let n_seq_max = params.max_branches + 1;
        // llama.cpp reserves one output row per sequence within the batch (min(n_ctx, n_batch)
        // rows) and aborts when they do not fit (`output_reserve`).
        if params.n_ctx.min(params.n_batch) < n_seq_max {
            return Err(Error::InvalidArgument(format!(
                "n_ctx ({}) and n_batch ({}) must each be at least max_branches + 1 = {n_seq_max}: \
                 raise them or lower max_branches",
                params.n_ctx, params.n_batch
            )));
        }
        // ggml's thread pool holds at most GGML_MAX_N_THREADS (512) workers.
        if params.n_threads > 512 {
            return Err(Error::InvalidArgument(format!("n_threads {} is above 512 (ggml's limit)", params.n_threads)));
        }
        let threads = if params.n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(512) as i32
        } else {
            params.n_threads as i32
        };
        let flash = match (params.flash_attn, params.kv_type) {
            (Some(true), _) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            (Some(false), _) | (None, KvType::F32) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            (None, KvType::F16) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
        let device_candidates = device_candidates(&params, model.n_vocab())?;
        check_adapters(model, &params.adapters)?;
        let config = ContextConfig {
            n_ctx: params.n_ctx,
            n_batch: params.n_batch,
            n_seq_max,
            n_threads: threads,
            flash_attn: flash,
            kv_type: kv_cache_type(params.kv_type),
            device_top_k: device_candidates,
        };
        backend()?;
        // The context uses the model's llama.cpp handle: `Session` owns a clone of the `Arc`
        // holding that model and declares `ctx` before `model`, so the context goes first.
        // A context of a model on RPC servers allocates its KV cache there: not once one is lost.
        model.check_remote()?;
        let ctx = {
            let _guard = CONTEXT_CREATION.lock();
            let _adapters_stay = model.inner.adapter_lock.read();
            let ctx = LlamaContext::new(&model.inner.llama, &config);
            model.check_remote()?;
            ctx.ok_or_else(|| {
                Error::Context(format!(
                    "llama.cpp refused n_ctx={} n_batch={} n_seq_max={n_seq_max}{} (out of \
                     memory, or sizes it rejects; PARDEC_LLAMA_LOG=1 shows why)",
                    params.n_ctx,
                    params.n_batch,
                    device_candidates.map_or(String::new(), |k| format!(" device top-k={k}")),
                ))
            })?
        };
        let n_ctx = ctx.n_ctx();
        let n_batch = ctx.n_batch() as usize;
        let batch = Batch::new(n_batch, n_seq_max as usize);
        let mut session = Session {
            ctx,
            batch,
            model: model.clone(),
            n_ctx,
            n_batch,
            n_seq_max,
            device_candidates,
            pool: SeqPool::new(n_seq_max),
            nodes: Vec::new(),
            blocks: Vec::new(),
            counters: Counters::default(),
            queued: Vec::new(),
            entries: Vec::with_capacity(n_batch),
            seq_scratch: Vec::with_capacity(n_seq_max as usize),
            text_scratch: String::new(),
            bytes_scratch: Vec::new(),
            script: None,
            picks: Vec::with_capacity(n_batch),
            selection_threads: selection_threads(threads.max(1) as usize)?,
            params,
        };
        session.reset_tree();
        session.apply_adapters();
        Ok(session)
    }

    fn reset_tree(&mut self) {
        self.queued.clear();
        self.nodes.clear();
        self.blocks.clear();
        self.pool = SeqPool::new(self.n_seq_max);
        let trunk = Node::new(
            TRUNK_SEQ,
            BranchSampler::new(&self.params.sampling, &[]),
            PenaltyWindow::new(self.params.sampling.window_capacity(self.n_ctx)),
        );
        self.nodes.push(trunk);
    }

    /// Forgets everything: empties the KV cache, the tree and the statistics.
    pub fn clear(&mut self) {
        self.ctx.clear();
        self.reset_tree();
        self.counters = Counters::default();
    }

    /// The model the session decodes (a cheap handle: clone it to keep the model alive).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The parameters the session was made with; `sampling` and `adapters` as last set by
    /// [`Session::set_sampling`] and [`Session::set_adapters`]. `n_ctx` is as requested:
    /// [`Session::n_ctx`] gives the size llama.cpp allocated.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The context size in cells.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Sequence ids free for new branches.
    pub fn free_branch_slots(&self) -> usize {
        self.pool.free_count()
    }

    /// Installs (or, with `None`, removes) a script that may force tokens instead of sampling.
    pub fn set_script(&mut self, script: Option<Box<dyn TokenScript>>) {
        self.script = script;
    }

    /// Replaces the sampling parameters for branches forked from now on (and the trunk's, if
    /// nothing was generated yet). Every node's penalty window then holds the last
    /// `penalty_last_n` tokens of its text.
    pub fn set_sampling(&mut self, sampling: SamplingParams) -> Result<()> {
        sampling.validate_for(self.model.n_vocab())?;
        if self.device_candidates.is_some() {
            host_only_adjustments(&sampling)?;
        }
        self.params.sampling = sampling;
        let capacity = self.params.sampling.window_capacity(self.n_ctx);
        for idx in 0..self.nodes.len() {
            // Windows are kept only while a penalty is on: rebuild them from the text.
            self.nodes[idx].reset_window(capacity);
            self.refill_window(idx);
        }
        self.nodes[0].set_sampling(&self.params.sampling);
        Ok(())
    }

    fn live_node(&self, node: NodeId) -> Result<usize> {
        match self.nodes.get(node.0) {
            Some(n) if n.is_alive() => Ok(node.0),
            Some(_) => Err(Error::InvalidArgument(format!("node {} was joined", node.0))),
            None => Err(Error::InvalidArgument(format!("no node {}", node.0))),
        }
    }

    fn idle_node(&self, node: NodeId, what: &str) -> Result<usize> {
        let idx = self.live_node(node)?;
        match self.nodes[idx].state() {
            NodeState::Idle if self.queued.iter().any(|q| q.node == idx) => Err(Error::InvalidState(format!(
                "cannot {what} node {:?}: its prompt is queued for the next step",
                self.nodes[idx].label()
            ))),
            NodeState::Idle => Ok(idx),
            NodeState::Waiting => Err(Error::InvalidState(format!(
                "cannot {what} node {:?}: it has an open block (join it first)",
                self.nodes[idx].label()
            ))),
            _ => Err(Error::InvalidState(format!(
                "cannot {what} node {:?} while it is generating",
                self.nodes[idx].label()
            ))),
        }
    }

    fn check_tokens(&self, tokens: &[Token]) -> Result<()> {
        let n_vocab = self.model.n_vocab() as Token;
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary (0..{n_vocab})")));
        }
        Ok(())
    }

    /// With device selection a run must ban fewer tokens than the candidates per row, so
    /// that every row keeps a token it may pick.
    /// Compiles a run's grammar, if it has one, for this session.
    fn run_grammar(&self, limits: &RunLimits) -> Result<Option<grammar::NodeGrammar>> {
        let Some(g) = &limits.grammar else { return Ok(None) };
        if self.device_candidates.is_some() {
            return Err(Error::InvalidArgument(
                "a grammar may reject every token of a reduced candidate set: use Selection::Host".into(),
            ));
        }
        grammar::NodeGrammar::compile(&self.model, g).map(Some)
    }

    fn check_bans(&self, limits: &RunLimits) -> Result<()> {
        let Some(k) = self.device_candidates else {
            return Ok(());
        };
        let eog = if limits.ban_eog { self.model.eog_tokens().len() } else { 0 };
        let banned = limits.banned_tokens.len() + eog;
        if banned >= k as usize {
            return Err(Error::InvalidArgument(format!(
                "a run bans {banned} tokens but device selection keeps only {k} candidates per \
                 row: raise the candidates or use Selection::Host"
            )));
        }
        Ok(())
    }
}
