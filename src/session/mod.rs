//! The serial–parallel decoding engine: one llama.cpp context, a trunk and a tree of branches.
//!
//! How branches share work (DESIGN.md §2): the context has a *unified* KV cache, where a cell
//! carries a set of sequence ids and a token of sequence `s` attends exactly to the cells
//! carrying `s` at positions ≤ its own. So
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

mod join;
mod kv;
pub mod sampling;
mod text;
mod tree;

use std::time::Instant;

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::backend::backend;
use crate::error::{Error, Result};
use crate::llama::{Batch, ContextConfig, LlamaContext, Sampled};
use crate::model::{Model, Token};
use crate::stats::{Counters, Stats};
use kv::{SeqPool, TRUNK_SEQ};
use sampling::{BranchSampler, SamplingParams, Scores};
use tree::{report, Block, Item, Node, NodeState};
pub use join::JoinRule;
pub use tree::{ItemReport, JoinMode, NodeReport, Origin, StopReason, Transcript};

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
    Device { candidates: u32 },
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
    pub kv_type: KvType,
    /// Flash attention: `None` lets llama.cpp decide, except that an F32 KV cache turns it
    /// off (llama.cpp's flash-attention path rounds K and V to f16, defeating F32).
    pub flash_attn: Option<bool>,
    pub sampling: SamplingParams,
    pub selection: Selection,
    /// Keep the logits of every sampled token (for equivalence tests; costs memory).
    #[doc(hidden)]
    pub record_logits: bool,
    /// Negative control for tests: branch tokens are tagged with every running sibling's id,
    /// so siblings see each other. Never set this outside a test.
    #[doc(hidden)]
    pub leak_between_siblings: bool,
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
            record_logits: false,
            leak_between_siblings: false,
        }
    }
}

/// A handle to the trunk or a branch of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) usize);

impl NodeId {
    /// The trunk: the serial part of the response.
    pub const TRUNK: NodeId = NodeId(0);

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
    pub max_tokens: usize,
    /// Stop when any of these appears in the text generated by this run.
    pub stop: Vec<String>,
    /// Never sample an end-of-generation token (benchmarks that need exact token counts).
    pub ban_eog: bool,
    /// Tokens this run may never sample (e.g. a protocol's control tokens in a state where
    /// they are illegal).
    pub banned_tokens: Vec<Token>,
}

impl RunLimits {
    pub fn tokens(max_tokens: usize) -> Self {
        RunLimits { max_tokens, ..Default::default() }
    }
}

/// One branch to open at a fork.
#[derive(Debug, Clone, Default)]
pub struct BranchSpec {
    /// Text the branch starts with (prefilled, not sampled); may be empty.
    pub prefix: String,
    /// Alternatively, token ids to start with (used instead of `prefix` when non-empty).
    pub prefix_tokens: Vec<Token>,
    pub limits: RunLimits,
}

impl BranchSpec {
    pub fn new(prefix: impl Into<String>, max_tokens: usize) -> Self {
        BranchSpec {
            prefix: prefix.into(),
            prefix_tokens: Vec::new(),
            limits: RunLimits::tokens(max_tokens),
        }
    }
}

/// What a running session reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A token was decoded into `node` (`label` "" is the trunk). `text` holds the characters
    /// completed by this token; it may be empty while a character is split over tokens.
    Token { node: NodeId, label: &'a str, token: Token, text: &'a str },
    /// `node` stopped generating.
    End { node: NodeId, label: &'a str, reason: &'a StopReason },
    /// Auto mode: `parent` (label `label`) forked into branches labelled `branches`.
    Fork { parent: NodeId, label: &'a str, branches: &'a [String] },
    /// Auto mode: the block of `parent` was joined; it continues seeing its branches.
    Join { parent: NodeId, label: &'a str, kept: usize },
    /// Auto mode: malformed model output in stream `label`; the documented fallback was taken.
    Warning { label: &'a str, message: &'a str },
}

/// Receives events; returning `false` cancels the run (the session stays usable).
pub trait Observer {
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
    /// Reused per step: no allocation on the hot path.
    entries: Vec<BatchEntry>,
    seq_scratch: Vec<i32>,
    text_scratch: String,
    script: Option<Box<dyn TokenScript>>,
    /// The next token of each row of the current chunk, chosen ahead from full rows (in
    /// parallel for wide steps); `NO_PICK` where the node samples at commit instead.
    picks: Vec<Token>,
    selection_threads: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("n_ctx", &self.n_ctx)
            .field("nodes", &self.nodes.len())
            .finish()
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
    if params.record_logits || params.leak_between_siblings {
        return Err(Error::InvalidArgument(
            "record_logits and leak_between_siblings read full logit rows: use Selection::Host".into(),
        ));
    }
    Ok(Some(candidates))
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
        params.sampling.validate()?;
        let n_seq_max = params.max_branches + 1;
        let threads = if params.n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as i32
        } else {
            params.n_threads.min(1024) as i32
        };
        let flash = match (params.flash_attn, params.kv_type) {
            (Some(true), _) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            (Some(false), _) | (None, KvType::F32) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            (None, KvType::F16) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
        let device_candidates = device_candidates(&params, model.n_vocab())?;
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
        let ctx = {
            let _guard = CONTEXT_CREATION.lock();
            LlamaContext::new(&model.inner.llama, &config).ok_or_else(|| {
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
            entries: Vec::with_capacity(n_batch),
            seq_scratch: Vec::with_capacity(n_seq_max as usize),
            text_scratch: String::new(),
            script: None,
            picks: Vec::with_capacity(n_batch),
            selection_threads: selection_threads(threads.max(1) as usize)?,
            params,
        };
        session.reset_tree();
        Ok(session)
    }

    fn reset_tree(&mut self) {
        self.nodes.clear();
        self.blocks.clear();
        self.pool = SeqPool::new(self.n_seq_max);
        self.nodes.push(Node::new(TRUNK_SEQ, BranchSampler::new(&self.params.sampling, &[])));
    }

    /// Forgets everything: empties the KV cache, the tree and the statistics.
    pub fn clear(&mut self) {
        self.ctx.clear();
        self.reset_tree();
        self.counters = Counters::default();
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

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
    /// nothing was generated yet).
    pub fn set_sampling(&mut self, sampling: SamplingParams) -> Result<()> {
        sampling.validate()?;
        self.params.sampling = sampling;
        let trunk = &mut self.nodes[0];
        trunk.sampler = BranchSampler::new(&self.params.sampling, &trunk.path);
        Ok(())
    }

    // ----- prompt and forced text -------------------------------------------------------

    /// Appends text to the trunk (the model's special tokens in it are parsed). The first
    /// text of a session gets the model's start token if its metadata asks for one.
    pub fn prompt(&mut self, text: &str) -> Result<()> {
        if text.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let add_bos = self.nodes[0].next_pos == 0;
        let tokens = self.model.tokenize(text, add_bos)?;
        self.prompt_tokens(&tokens)
    }

    /// [`Session::prompt`] for bytes from outside Rust: rejects invalid UTF-8.
    pub fn prompt_bytes(&mut self, text: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(text).map_err(|e| {
            Error::InvalidUtf8(format!("prompt byte {} starts an invalid sequence", e.valid_up_to()))
        })?;
        self.prompt(text)
    }

    /// Appends token ids to the trunk.
    pub fn prompt_tokens(&mut self, tokens: &[Token]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let have = self.kv_cells_used() as usize;
        if have + tokens.len() > self.n_ctx as usize {
            return Err(Error::PromptTooLong { tokens: have + tokens.len(), n_ctx: self.n_ctx as usize });
        }
        self.append_tokens(NodeId::TRUNK, tokens)
    }

    /// Appends text to an idle node (the trunk or a stopped branch): it is decoded as if the
    /// model had written it, and the node can then generate or fork from there.
    pub fn append_text(&mut self, node: NodeId, text: &str) -> Result<()> {
        let tokens = self.model.tokenize(text, false)?;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(format!("text {text:?} tokenizes to no tokens")));
        }
        self.append_tokens(node, &tokens)
    }

    /// Forgets everything the node decoded after its first `keep` own tokens (prompt and
    /// forced text included), from its text and its cells: APR's parent resumes from the text
    /// before its calls block. Blocks of detached branches after that point stay in its
    /// history (they hold none of its cells); a block that shared its cells cannot be rewound
    /// over. The node then needs text appended before it generates.
    pub fn rewind(&mut self, node: NodeId, keep: usize) -> Result<()> {
        let idx = self.idle_node(node, "rewind")?;
        let mut seen = 0usize;
        let mut cut: Option<(usize, usize)> = None; // (item, tokens kept in it)
        for (i, item) in self.nodes[idx].items.iter().enumerate() {
            match item {
                Item::Text { tokens, .. } => {
                    if cut.is_none() && seen + tokens.len() > keep {
                        cut = Some((i, keep - seen));
                    }
                    seen += tokens.len();
                }
                Item::Block(b) if cut.is_some() && !self.blocks[*b].detached => {
                    return Err(Error::InvalidState("cannot rewind over a block whose branches were merged".into()));
                }
                Item::Block(_) => {}
            }
        }
        let Some((first_item, kept_in_item)) = cut else {
            return if keep <= seen {
                Ok(()) // nothing after `keep`
            } else {
                Err(Error::InvalidArgument(format!("the node holds {seen} tokens, cannot keep {keep}")))
            };
        };
        let removed = (seen - keep) as u64;
        let node_ref = &mut self.nodes[idx];
        let Item::Text { pos0, .. } = &node_ref.items[first_item] else { unreachable!("cut is a text item") };
        let from = *pos0 + kept_in_item as i32;
        let mut items = std::mem::take(&mut node_ref.items);
        let tail = items.split_off(first_item);
        for (k, item) in tail.into_iter().enumerate() {
            match item {
                Item::Text { origin, pos0, mut tokens, .. } if k == 0 && kept_in_item > 0 => {
                    tokens.truncate(kept_in_item);
                    let mut bytes = Vec::new();
                    for &t in &tokens {
                        self.model.token_bytes(t, &mut bytes);
                    }
                    items.push(Item::Text { origin, pos0, tokens, bytes });
                }
                Item::Text { .. } => {}
                block @ Item::Block(_) => items.push(block),
            }
        }
        let node_ref = &mut self.nodes[idx];
        node_ref.items = items;
        node_ref.next_pos = from;
        node_ref.cells -= removed;
        node_ref.saved.clear();
        let seq = node_ref.seq;
        self.ctx.seq_rm(seq, from);
        Ok(())
    }

    /// Removes the node's last `n` tokens from the KV cache, keeping them in its text: the
    /// node's next token takes the first one's position, and nothing after sees them (ASPD's
    /// engine never decodes the `<|para|>` it forks on). The node then has no next-token
    /// logits: fork it with prefixes, or append text.
    pub fn uncache_tail(&mut self, node: NodeId, n: usize) -> Result<()> {
        let idx = self.idle_node(node, "uncache")?;
        // Only tokens of the node's latest text, after its last block, so no branch's cells
        // are touched.
        let mut last_item_tokens = 0;
        for item in self.nodes[idx].items.iter().rev() {
            match item {
                Item::Text { tokens, .. } if tokens.is_empty() => continue,
                Item::Text { tokens, .. } => last_item_tokens = tokens.len(),
                Item::Block(_) => {}
            }
            break;
        }
        if n == 0 || n > last_item_tokens {
            return Err(Error::InvalidArgument(format!(
                "can uncache 1 to {last_item_tokens} tokens of the node's latest text, not {n}"
            )));
        }
        let node_ref = &mut self.nodes[idx];
        let from = node_ref.next_pos - n as i32;
        let seq = node_ref.seq;
        node_ref.next_pos = from;
        node_ref.cells -= n as u64;
        node_ref.saved.clear();
        self.ctx.seq_rm(seq, from);
        Ok(())
    }

    /// Appends token ids to an idle node.
    pub fn append_tokens(&mut self, node: NodeId, tokens: &[Token]) -> Result<()> {
        let idx = self.idle_node(node, "append to")?;
        self.check_tokens(tokens)?;
        let start = Instant::now();
        self.prefill(&[(idx, tokens)])?;
        self.counters.prefill_time += start.elapsed();
        Ok(())
    }

    // ----- serial generation ------------------------------------------------------------

    /// Generates on the trunk until EOG, a stop string, or `limits.max_tokens`. Returns the
    /// text generated by this call.
    pub fn generate(&mut self, limits: &RunLimits, observer: &mut dyn Observer) -> Result<String> {
        // `resume` opens a new generated item at this index.
        let first_item = self.nodes[0].items.len();
        self.resume(NodeId::TRUNK, limits)?;
        self.run(observer)?;
        Ok(self.generated_text_from(0, first_item))
    }

    /// Starts (or restarts) generation on an idle node; [`Session::run`] then advances it
    /// together with every other running node.
    pub fn resume(&mut self, node: NodeId, limits: &RunLimits) -> Result<()> {
        let idx = self.idle_node(node, "generate on")?;
        self.check_bans(limits)?;
        if self.nodes[idx].saved.is_empty() {
            return Err(Error::InvalidState(format!(
                "node {:?} has no next-token logits (after a join that kept branches, append \
                 text before generating)",
                self.nodes[idx].label
            )));
        }
        self.start_node(idx, limits);
        Ok(())
    }

    /// Runs every running node to its end: one batched decode per step.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<()> {
        while self.step(observer)? {}
        Ok(())
    }

    // ----- fork and join ----------------------------------------------------------------

    /// Forks an idle node into branches that share its KV cells. Every branch starts at the
    /// parent's next position; its prefix (if any) is prefilled for all branches in one batch,
    /// and its first token is sampled. Call [`Session::run`] to decode them.
    pub fn fork(&mut self, parent: NodeId, specs: &[BranchSpec]) -> Result<Vec<NodeId>> {
        self.fork_impl(parent, specs, true)
    }

    /// Opens a block of *detached* branches: each runs from its own prefix alone (its own
    /// prompt, starting at position 0) and sees nothing of the parent — APR's sub-searches.
    /// They still decode in one batch per step with everything else. Such a block can only be
    /// joined with [`JoinMode::Discard`]; the parent receives their results as text.
    pub fn fork_detached(&mut self, parent: NodeId, specs: &[BranchSpec]) -> Result<Vec<NodeId>> {
        if specs.iter().any(|s| s.prefix.is_empty() && s.prefix_tokens.is_empty()) {
            return Err(Error::InvalidArgument("a detached branch needs its own prompt as prefix".into()));
        }
        self.fork_impl(parent, specs, false)
    }

    fn fork_impl(&mut self, parent: NodeId, specs: &[BranchSpec], shared: bool) -> Result<Vec<NodeId>> {
        let p = self.idle_node(parent, "fork")?;
        if specs.is_empty() {
            return Err(Error::InvalidArgument("a fork needs at least one branch".into()));
        }
        let depth = self.nodes[p].depth + 1;
        if depth > self.params.max_depth {
            return Err(Error::DepthLimit { limit: self.params.max_depth as usize });
        }
        let mut prefixes = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let tokens = if !spec.prefix_tokens.is_empty() {
                self.check_tokens(&spec.prefix_tokens)?;
                spec.prefix_tokens.clone()
            } else if spec.prefix.is_empty() {
                Vec::new()
            } else {
                let t = self.model.tokenize(&spec.prefix, false)?;
                if t.is_empty() {
                    return Err(Error::EmptyBranchPrefix { branch: i });
                }
                t
            };
            prefixes.push(tokens);
        }
        for spec in specs {
            self.check_bans(&spec.limits)?;
        }
        if prefixes.iter().any(Vec::is_empty) && self.nodes[p].saved.is_empty() {
            return Err(Error::InvalidState(
                "a branch without prefix needs the parent's next-token logits: append text to \
                 the parent first"
                    .into(),
            ));
        }
        let seqs = self.pool.take(specs.len())?;

        let block_idx = self.blocks.len();
        let block_ordinal = self.nodes[p].blocks_opened;
        let first_child = self.nodes.len();
        for (i, &seq) in seqs.iter().enumerate() {
            if shared {
                // Zero copy: the child's id is added to every cell the parent can see.
                self.ctx.seq_cp(self.nodes[p].seq, seq, -1);
            }
            let parent = &self.nodes[p];
            let mut path = parent.path.clone();
            path.extend([block_ordinal, i as u32]);
            let label = if parent.label.is_empty() {
                format!("{}", i + 1)
            } else {
                format!("{}.{}", parent.label, i + 1)
            };
            let mut child = Node::new(seq, BranchSampler::new(&self.params.sampling, &path));
            child.parent = Some(p);
            child.path = path;
            child.label = label;
            child.depth = depth;
            if shared {
                child.next_pos = parent.next_pos;
                child.cells = parent.cells;
                child.cells_at_fork = parent.cells;
            }
            if prefixes[i].is_empty() {
                child.saved = parent.saved.clone();
            }
            self.nodes.push(child);
        }
        let children: Vec<usize> = (first_child..first_child + specs.len()).collect();

        let work: Vec<(usize, &[Token])> = children
            .iter()
            .zip(&prefixes)
            .filter(|(_, t)| !t.is_empty())
            .map(|(&c, t)| (c, t.as_slice()))
            .collect();
        let start = Instant::now();
        if let Err(e) = self.prefill(&work) {
            // Undo the fork: the children's ids leave the prefix cells and return to the pool.
            for &c in &children {
                let seq = self.nodes[c].seq;
                self.ctx.seq_rm(seq, -1);
                self.pool.give_back(seq);
            }
            self.nodes.truncate(first_child);
            return Err(e);
        }
        self.counters.prefill_time += start.elapsed();

        let prefix_cells = if shared { self.nodes[p].cells } else { 0 };
        self.blocks.push(Block {
            children: children.clone(),
            fork_pos: if shared { self.nodes[p].next_pos } else { 0 },
            prefix_cells,
            detached: !shared,
            join: None,
            rule: JoinRule::SameMax,
            reread: 0,
        });
        let parent = &mut self.nodes[p];
        parent.blocks_opened += 1;
        parent.open_block = Some(block_idx);
        parent.state = NodeState::Waiting;
        parent.items.push(Item::Block(block_idx));
        self.counters.blocks += 1;
        self.counters.branches += specs.len() as u64;
        self.counters.prefix_copies_avoided += (specs.len() as u64 - 1) * prefix_cells;

        for (&c, spec) in children.iter().zip(specs) {
            self.start_node(c, &spec.limits);
        }
        Ok(children.into_iter().map(NodeId).collect())
    }

    // ----- results ----------------------------------------------------------------------

    /// The structure and text of the session so far.
    pub fn transcript(&self) -> Transcript {
        let (trunk, flat) = report(&self.nodes, &self.blocks, 0);
        Transcript { text: String::from_utf8_lossy(&flat).into_owned(), trunk }
    }

    /// Metrics since the session was created or last cleared.
    pub fn stats(&self) -> Stats {
        self.counters.to_stats(self.kv_cells_used())
    }

    /// Resets the metrics (not the KV cache).
    pub fn reset_stats(&mut self) {
        self.counters = Counters::default();
    }

    /// KV cells holding this session's tokens.
    pub fn kv_cells_used(&self) -> u64 {
        let trunk = self.nodes[0].cells;
        let branches: u64 = self.nodes[1..]
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.cells - n.cells_at_fork)
            .sum();
        trunk + branches
    }

    /// The node's label path ("" for the trunk).
    pub fn label(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(node.0).map(|n| n.label.as_str())
    }

    /// The position the node's next token will take.
    pub fn next_pos(&self, node: NodeId) -> Option<i32> {
        self.nodes.get(node.0).map(|n| n.next_pos)
    }

    /// Tokens the node decoded itself, in order (nested blocks excluded).
    pub fn node_tokens(&self, node: NodeId) -> Vec<Token> {
        self.nodes
            .get(node.0)
            .map(|n| {
                n.items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Text { tokens, .. } => Some(tokens.as_slice()),
                        Item::Block(_) => None,
                    })
                    .flatten()
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the node is generating (has a token waiting for the next step).
    pub fn is_running(&self, node: NodeId) -> bool {
        self.nodes.get(node.0).is_some_and(|n| n.alive && n.is_decoding())
    }

    /// The node's own text (nested blocks excluded), as decoded so far.
    pub fn node_text(&self, node: NodeId) -> String {
        self.nodes.get(node.0).map(Node::own_text).unwrap_or_default()
    }

    /// The text the node generated (sampled), excluding forced text and nested blocks.
    pub fn node_generated_text(&self, node: NodeId) -> String {
        if node.0 >= self.nodes.len() {
            return String::new();
        }
        self.generated_text_from(node.0, 0)
    }

    /// Why the node last stopped.
    pub fn stop_reason(&self, node: NodeId) -> Option<&StopReason> {
        self.nodes.get(node.0).and_then(|n| n.stop_reason.as_ref())
    }

    /// Logits of every token the node sampled (requires `record_logits`).
    #[doc(hidden)]
    pub fn logit_trace(&self, node: NodeId) -> &[Vec<f32>] {
        self.nodes.get(node.0).map_or(&[], |n| n.logit_trace.as_slice())
    }

    /// Benchmark baseline: decodes `steps` tokens for each of `nodes` in one batch per step
    /// with plain `llama_decode` calls — no sampling, no bookkeeping — then removes those
    /// cells again, leaving the session as it was. Returns the decode time.
    #[doc(hidden)]
    pub fn raw_decode_steps(&mut self, nodes: &[NodeId], steps: usize) -> Result<std::time::Duration> {
        let mut lanes = Vec::with_capacity(nodes.len());
        for &n in nodes {
            let idx = self.idle_node(n, "raw-decode")?;
            let node = &self.nodes[idx];
            lanes.push((node.seq, node.next_pos));
        }
        if lanes.len() > self.n_batch {
            return Err(Error::InvalidArgument("more lanes than n_batch".into()));
        }
        let started = Instant::now();
        let mut result = Ok(());
        'steps: for k in 0..steps as i32 {
            self.batch.clear();
            for &(seq, pos) in &lanes {
                if !self.batch.add(1, pos + k, &[seq], true) {
                    result = Err(Error::Internal("batch add: the batch is full".into()));
                    break 'steps;
                }
            }
            if let Err(e) = decode_status(&mut self.ctx, &self.batch) {
                result = Err(e);
                break;
            }
        }
        let elapsed = started.elapsed();
        for &(seq, pos) in &lanes {
            self.ctx.seq_rm(seq, pos);
        }
        result.map(|()| elapsed)
    }

    // ----- internals --------------------------------------------------------------------

    fn live_node(&self, node: NodeId) -> Result<usize> {
        match self.nodes.get(node.0) {
            Some(n) if n.alive => Ok(node.0),
            Some(_) => Err(Error::InvalidArgument(format!("node {} was joined", node.0))),
            None => Err(Error::InvalidArgument(format!("no node {}", node.0))),
        }
    }

    fn idle_node(&self, node: NodeId, what: &str) -> Result<usize> {
        let idx = self.live_node(node)?;
        match self.nodes[idx].state {
            NodeState::Idle => Ok(idx),
            NodeState::Waiting => Err(Error::InvalidState(format!(
                "cannot {what} node {:?}: it has an open block (join it first)",
                self.nodes[idx].label
            ))),
            _ => Err(Error::InvalidState(format!(
                "cannot {what} node {:?} while it is generating",
                self.nodes[idx].label
            ))),
        }
    }

    fn check_tokens(&self, tokens: &[Token]) -> Result<()> {
        let n_vocab = self.model.n_vocab() as Token;
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (0..{n_vocab})"
            )));
        }
        Ok(())
    }

    /// With device selection a run must ban fewer tokens than the candidates per row, so
    /// that every row keeps a token it may pick.
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

    /// Text generated on a node by items at or after `first_item`.
    fn generated_text_from(&self, idx: usize, first_item: usize) -> String {
        let mut bytes = Vec::new();
        for item in self.nodes[idx].items.iter().skip(first_item) {
            if let Item::Text { origin: Origin::Generated, bytes: b, .. } = item {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Starts a node generating from its saved logits.
    fn start_node(&mut self, idx: usize, limits: &RunLimits) {
        let node = &mut self.nodes[idx];
        node.limit = limits.max_tokens;
        node.stops = limits.stop.clone();
        node.banned = limits.banned_tokens.clone();
        if limits.ban_eog {
            node.banned.extend_from_slice(self.model.eog_tokens());
        }
        node.generated_in_run = 0;
        node.stop_reason = None;
        let longest = node.stops.iter().map(String::len).max().unwrap_or(0);
        node.stop_lookback = match node.items.last() {
            Some(Item::Text { origin: Origin::Forced, bytes, .. }) => {
                bytes[bytes.len() - longest.saturating_sub(1).min(bytes.len())..].to_vec()
            }
            _ => Vec::new(),
        };
        // A fresh run starts a fresh text item so stop strings only match its own text.
        node.items.push(Item::Text {
            origin: Origin::Generated,
            pos0: node.next_pos,
            tokens: Vec::new(),
            bytes: Vec::new(),
        });
        if limits.max_tokens == 0 {
            node.state = NodeState::Idle;
            node.stop_reason = Some(StopReason::MaxTokens);
            return;
        }
        let saved = std::mem::take(&mut node.saved);
        let forced = scripted_token(&mut self.script, node);
        sample_next(node, &self.model, self.params.record_logits, saved.view(), forced, None);
        node.saved = saved;
    }

    /// One parallel step: decodes the pending token of every running node in one batch
    /// (split only beyond `n_batch`), commits them, and samples each node's next token.
    /// Returns false when nothing was running. Drivers that react to a node's end while
    /// others keep running (protocols) call this instead of [`Session::run`].
    pub fn step(&mut self, observer: &mut dyn Observer) -> Result<bool> {
        self.entries.clear();
        let mut parallel = false;
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(token) = n.pending() {
                parallel |= n.depth > 0;
                self.entries.push(BatchEntry { node: i, token, pos: n.next_pos, logits: true });
            }
        }
        if self.entries.is_empty() {
            return Ok(false);
        }
        let started = Instant::now();
        let mut cancelled = false;
        let mut failure = None;
        let entries = std::mem::take(&mut self.entries);
        let mut device_time = std::time::Duration::ZERO;
        for chunk in entries.chunks(self.n_batch) {
            let t = Instant::now();
            if let Err(e) = self.decode_chunk(chunk) {
                failure = Some(e);
                break;
            }
            // Wait for the backend here, so that what follows is pure host time.
            self.ctx.synchronize();
            device_time += t.elapsed();
            let choosing = Instant::now();
            self.preselect(chunk);
            self.counters.selection_time += choosing.elapsed();
            // Every decoded row is committed even after one fails (its token is committed
            // before its scores are read), so each node's text stays what its KV cells hold.
            for (row, entry) in chunk.iter().enumerate() {
                match self.commit_step_token(entry, row as i32, observer) {
                    Ok(true) => {}
                    Ok(false) => cancelled = true,
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_some() {
                break;
            }
        }
        self.entries = entries;
        self.counters.steps += 1;
        let elapsed = started.elapsed();
        self.counters.host_time += elapsed.saturating_sub(device_time);
        if parallel {
            self.counters.parallel_time += elapsed;
            self.counters.parallel_steps += 1;
        } else {
            self.counters.serial_time += elapsed;
        }
        if let Some(e) = failure {
            let reason = if e == Error::KvCacheFull { StopReason::KvCacheFull } else { StopReason::Cancelled };
            self.stop_all(reason, observer);
            return Err(e);
        }
        if cancelled {
            self.stop_all(StopReason::Cancelled, observer);
            return Err(Error::Cancelled);
        }
        Ok(true)
    }

    /// Chooses the next token of every running node in this chunk from its full row before
    /// committing, split over threads when the step is wide: B rows of a 128k–262k
    /// vocabulary cost as much as a GPU decode step when scanned one after another on one
    /// core. Each node draws from its own sampler and random stream, so which thread runs it
    /// changes nothing.
    fn preselect(&mut self, chunk: &[BatchEntry]) {
        /// Below this many logits per step, threads cost more than they save.
        const PARALLEL_MIN_FLOATS: usize = 1 << 20;
        self.picks.clear();
        self.picks.resize(chunk.len(), NO_PICK);
        if self.script.is_some() || self.device_candidates.is_some() {
            // A script may force any token, and candidate sets are tiny: sample at commit.
            return;
        }
        let Session { ctx, nodes, picks, selection_threads, .. } = self;
        // `step` lists its entries in node order, so one walk pairs every row with its node.
        let mut rows = chunk.iter().enumerate().peekable();
        let mut work: Vec<(usize, &mut Node, &[f32])> = Vec::with_capacity(chunk.len());
        for (i, node) in nodes.iter_mut().enumerate() {
            let Some((row, _)) = rows.next_if(|(_, e)| e.node == i) else {
                continue;
            };
            if let (NodeState::Running { .. }, Some(logits)) = (&node.state, ctx.logits(row as i32)) {
                work.push((row, node, logits));
            }
        }
        debug_assert!(rows.next().is_none(), "step entries out of node order");
        let pick = |(row, node, logits): &mut (usize, &mut Node, &[f32])| {
            let token = node.sampler.sample(Scores::Full(logits), &node.banned);
            (*row, token)
        };
        let floats: usize = work.iter().map(|(_, _, l)| l.len()).sum();
        let threads = (*selection_threads).min(work.len()).min(8);
        if threads <= 1 || floats < PARALLEL_MIN_FLOATS {
            for w in &mut work {
                let (row, token) = pick(w);
                picks[row] = token;
            }
            return;
        }
        let per = work.len().div_ceil(threads);
        let results: Vec<Vec<(usize, Token)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks_mut(per)
                .map(|part| scope.spawn(move || part.iter_mut().map(pick).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for (row, token) in results.into_iter().flatten() {
            picks[row] = token;
        }
    }

    /// Commits one decoded step token and samples the node's next one. Returns the
    /// observer's verdict (false: cancel).
    fn commit_step_token(&mut self, entry: &BatchEntry, row: i32, observer: &mut dyn Observer) -> Result<bool> {
        let idx = entry.node;
        let finishing = match &self.nodes[idx].state {
            NodeState::Finishing { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let is_branch = self.nodes[idx].depth > 0;
        {
            let node = &mut self.nodes[idx];
            let bytes = std::mem::take(&mut node.pending_bytes);
            node.push_token(Origin::Generated, entry.token, &bytes);
            self.text_scratch.clear();
            node.utf8.push(&bytes, &mut self.text_scratch);
            node.pending_bytes = bytes;
        }
        if is_branch {
            self.counters.branch_tokens += 1;
        } else {
            self.counters.trunk_tokens += 1;
        }
        let mut keep_going = observer.on_event(&Event::Token {
            node: NodeId(idx),
            label: &self.nodes[idx].label,
            token: entry.token,
            text: &self.text_scratch,
        });
        let scores = row_scores(&self.ctx, self.device_candidates.is_some(), row)?;
        match finishing {
            Some(reason) => {
                let node = &mut self.nodes[idx];
                node.saved.store(scores);
                node.state = NodeState::Idle;
                node.stop_reason = Some(reason);
                keep_going &= self.emit_end(idx, observer);
            }
            None => {
                let node = &mut self.nodes[idx];
                let forced = scripted_token(&mut self.script, node);
                let pick = self.picks.get(row as usize).copied().filter(|&p| p != NO_PICK);
                let choosing = Instant::now();
                sample_next(node, &self.model, self.params.record_logits, scores, forced, pick);
                self.counters.selection_time += choosing.elapsed();
                if matches!(node.stop_reason, Some(StopReason::Eog)) {
                    // Kept so the node can be resumed (or forked) after the EOG.
                    node.saved.store(scores);
                    keep_going &= self.emit_end(idx, observer);
                }
            }
        }
        Ok(keep_going)
    }

    fn emit_end(&mut self, idx: usize, observer: &mut dyn Observer) -> bool {
        let node = &mut self.nodes[idx];
        self.text_scratch.clear();
        node.utf8.finish(&mut self.text_scratch);
        let mut ok = true;
        if !self.text_scratch.is_empty() {
            ok &= observer.on_event(&Event::Token {
                node: NodeId(idx),
                label: &node.label,
                token: -1,
                text: &self.text_scratch,
            });
        }
        let reason = node.stop_reason.clone().unwrap_or(StopReason::Cancelled);
        ok & observer.on_event(&Event::End { node: NodeId(idx), label: &node.label, reason: &reason })
    }

    /// Stops every decoding node, dropping its pending (never decoded) token, so the text of
    /// each node stays exactly what its KV cells hold.
    fn stop_all(&mut self, reason: StopReason, observer: &mut dyn Observer) {
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].is_decoding() {
                let node = &mut self.nodes[idx];
                node.state = NodeState::Idle;
                node.stop_reason = Some(reason.clone());
                // The scores after its last decoded token were consumed by sampling the
                // dropped token; the node needs appended text before it generates again.
                node.saved.clear();
                let _ = self.emit_end(idx, observer);
            }
        }
    }

    /// Decodes one chunk (≤ n_batch tokens) of step entries.
    fn decode_chunk(&mut self, chunk: &[BatchEntry]) -> Result<()> {
        self.batch.clear();
        for entry in chunk {
            self.seq_scratch.clear();
            self.seq_scratch.push(self.nodes[entry.node].seq);
            if self.params.leak_between_siblings && self.nodes[entry.node].depth > 0 {
                self.add_running_siblings(entry.node);
            }
            if !self.batch.add(entry.token, entry.pos, &self.seq_scratch, entry.logits) {
                return Err(Error::Internal("batch add: the batch is full".into()));
            }
        }
        decode_status(&mut self.ctx, &self.batch)
    }

    /// Test-only leak: tag the token with every running sibling's sequence id too.
    fn add_running_siblings(&mut self, idx: usize) {
        let parent = self.nodes[idx].parent;
        for (j, n) in self.nodes.iter().enumerate() {
            if j != idx && n.alive && n.parent == parent && n.is_decoding() {
                self.seq_scratch.push(n.seq);
            }
        }
    }

    /// Prefills forced tokens into several nodes at once (one batch, split beyond n_batch).
    /// Each node gets logits for its last token, saved for its next sample. On failure every
    /// node's cells written here are removed again.
    fn prefill(&mut self, work: &[(usize, &[Token])]) -> Result<()> {
        self.prefill_into(work, true)
    }

    /// Decodes tokens into one node's cells without adding them to its text: a join's re-read
    /// of text the transcript already holds. Its next-token logits are saved as usual.
    fn prefill_unrecorded(&mut self, idx: usize, tokens: &[Token]) -> Result<()> {
        self.prefill_into(&[(idx, tokens)], false)
    }

    fn prefill_into(&mut self, work: &[(usize, &[Token])], record: bool) -> Result<()> {
        let mut entries = Vec::new();
        for &(idx, tokens) in work {
            let pos0 = self.nodes[idx].next_pos;
            for (i, &t) in tokens.iter().enumerate() {
                entries.push(BatchEntry {
                    node: idx,
                    token: t,
                    pos: pos0 + i as i32,
                    logits: i + 1 == tokens.len(),
                });
            }
        }
        let starts: Vec<(usize, i32)> = work.iter().map(|&(i, _)| (i, self.nodes[i].next_pos)).collect();
        let mut bytes = Vec::new();
        for chunk in entries.chunks(self.n_batch) {
            if let Err(e) = self.decode_chunk(chunk) {
                for &(idx, pos0) in &starts {
                    let seq = self.nodes[idx].seq;
                    self.ctx.seq_rm(seq, pos0);
                    self.rollback_node(idx, pos0, record);
                }
                return Err(e);
            }
            for (row, entry) in chunk.iter().enumerate() {
                bytes.clear();
                self.model.token_bytes(entry.token, &mut bytes);
                let node = &mut self.nodes[entry.node];
                if record {
                    node.push_token(Origin::Forced, entry.token, &bytes);
                } else {
                    node.next_pos += 1;
                    node.cells += 1;
                }
                if entry.logits {
                    let scores = row_scores(&self.ctx, self.device_candidates.is_some(), row as i32)?;
                    self.nodes[entry.node].saved.store(scores);
                }
            }
            self.counters.prefill_tokens += chunk.len() as u64;
        }
        Ok(())
    }

    /// Forgets tokens committed at positions ≥ pos0 by a prefill that failed part-way.
    fn rollback_node(&mut self, idx: usize, pos0: i32, recorded: bool) {
        let node = &mut self.nodes[idx];
        let drop = (node.next_pos - pos0).max(0) as u64;
        if drop == 0 {
            return;
        }
        if !recorded {
            node.next_pos = pos0;
            node.cells -= drop;
            return;
        }
        if let Some(Item::Text { origin: Origin::Forced, pos0: item_pos, tokens, bytes }) = node.items.last_mut() {
            let keep = (pos0 - *item_pos).max(0) as usize;
            tokens.truncate(keep);
            // Recompute the bytes of the kept tokens.
            let kept: Vec<Token> = tokens.clone();
            bytes.clear();
            for t in kept {
                self.model.token_bytes(t, bytes);
            }
            if tokens.is_empty() {
                node.items.pop();
            }
        }
        node.next_pos = pos0;
        node.cells -= drop;
    }
}

/// Samples a node's next token from `logits` and sets its state: EOG stops it (the EOG is
/// not decoded), the run's last token becomes `Finishing`, anything else `Running`.
fn sample_next(
    node: &mut Node,
    model: &Model,
    record_logits: bool,
    scores: Scores<'_>,
    forced: Option<Token>,
    preselected: Option<Token>,
) {
    if let (true, Scores::Full(row)) = (record_logits, scores) {
        node.logit_trace.push(row.to_vec());
    }
    let token = match (forced, preselected) {
        (Some(t), _) if t >= 0 && (t as usize) < model.n_vocab() => t,
        (_, Some(t)) => t,
        _ => node.sampler.sample(scores, &node.banned),
    };
    if model.is_eog(token) {
        node.state = NodeState::Idle;
        node.stop_reason = Some(StopReason::Eog);
        return;
    }
    node.pending_bytes.clear();
    model.token_bytes(token, &mut node.pending_bytes);
    node.generated_in_run += 1;
    let reason = if node.generated_in_run >= node.limit {
        Some(StopReason::MaxTokens)
    } else {
        stop_string_hit(&node.stop_lookback, node.tail_bytes(), &node.pending_bytes, &node.stops)
    };
    node.state = match reason {
        Some(reason) => NodeState::Finishing { pending: token, reason },
        None => NodeState::Running { pending: token },
    };
}

/// Threads for greedy selection. With a GPU backend the CPU cores are idle while the device
/// decodes, so selection spreads over them; on CPU-only builds llama.cpp's own worker threads
/// are still spinning after a decode and extra threads only contend with them (measured here
/// on 2 cores: slower), so selection stays on the calling thread. `PARDEC_SELECT_THREADS`
/// overrides the choice.
fn selection_threads(decode_threads: usize) -> Result<usize> {
    if let Some(n) = std::env::var("PARDEC_SELECT_THREADS").ok().and_then(|v| v.parse().ok()) {
        return Ok(n);
    }
    Ok(if backend()?.supports_gpu_offload() { decode_threads } else { 1 })
}

/// Asks the session's script, if any, for the node's next token.
fn scripted_token(script: &mut Option<Box<dyn TokenScript>>, node: &Node) -> Option<Token> {
    let script = script.as_mut()?;
    script.next_token(&node.label, &node.own_text())
}

/// Calls llama_decode and maps its status. Code 1 (no KV slot) leaves the memory unchanged.
fn decode_status(ctx: &mut LlamaContext, batch: &Batch) -> Result<()> {
    if batch.len() == 0 {
        return Err(Error::Decode(-1));
    }
    match ctx.decode(batch) {
        0 => Ok(()),
        1 => Err(Error::KvCacheFull),
        code => Err(Error::Decode(code)),
    }
}

/// The next-token scores of batch row `row`, as the context's selection mode delivers them.
/// Where llama.cpp could not run the device reduction it falls back by itself (a full row in
/// the sampling buffers, or the raw rows when it did not attach the chains): both are used as
/// full rows, so device selection degrades to host selection instead of failing. Only rows
/// decoded with logits requested are read; a missing row is a bug, reported as one.
fn row_scores(ctx: &LlamaContext, device: bool, row: i32) -> Result<Scores<'_>> {
    let scores = if device {
        match ctx.sampled(row) {
            Sampled::Candidates(ids, logits) => Some(Scores::Candidates { ids, logits }),
            Sampled::FullRow(logits) => Some(Scores::Full(logits)),
            Sampled::Nothing => ctx.logits(row).map(Scores::Full),
        }
    } else {
        ctx.logits(row).map(Scores::Full)
    };
    scores.ok_or_else(|| Error::Internal(format!("llama.cpp returned no scores for batch row {row}")))
}

/// Whether appending `piece` to `text` completes one of `stops` (only matches that end inside
/// the new piece count, so a stop string is reported once, at the token that completes it).
///
/// A stop string made only of whitespace (say "\n") does not match while the run has written
/// nothing but whitespace: a point or paragraph that starts on a new line has not ended.
/// Whether `piece` completes a stop string over the run's `text` (and, before it, the forced
/// `lookback`). A whitespace-only stop fires only once the run wrote something else.
fn stop_string_hit(lookback: &[u8], text: &[u8], piece: &[u8], stops: &[String]) -> Option<StopReason> {
    for stop in stops {
        let s = stop.as_bytes();
        if s.is_empty() {
            continue;
        }
        if s.iter().all(u8::is_ascii_whitespace)
            && !text.iter().chain(piece).any(|b| !b.is_ascii_whitespace())
        {
            continue;
        }
        let keep = (s.len() - 1).min(text.len());
        let from_lookback = (s.len() - 1 - keep).min(lookback.len());
        let mut window = Vec::with_capacity(s.len() - 1 + piece.len());
        window.extend_from_slice(&lookback[lookback.len() - from_lookback..]);
        window.extend_from_slice(&text[text.len() - keep..]);
        window.extend_from_slice(piece);
        if window.windows(s.len()).any(|w| w == s) {
            return Some(StopReason::StopString(stop.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_match_across_token_boundaries_once() {
        let stops = vec!["</Path>".to_string()];
        assert_eq!(
            stop_string_hit(b"", b"abc</Pa", b"th> more", &stops),
            Some(StopReason::StopString("</Path>".into()))
        );
        assert_eq!(stop_string_hit(b"", b"</Path> x", b"y", &stops), None);
        assert_eq!(stop_string_hit(b"", b"", b"</Path>", &stops), Some(StopReason::StopString("</Path>".into())));
        // A stop begun in forced text before the run; one wholly inside it does not fire.
        assert_eq!(stop_string_hit(b"x</Pa", b"", b"th>", &stops), Some(StopReason::StopString("</Path>".into())));
        assert_eq!(stop_string_hit(b"</Path>", b"", b"x", &stops), None);
        assert_eq!(stop_string_hit(b"", b"abc", b"def", &[String::new()]), None);
        // Whitespace-only stops wait for content.
        let nl = vec!["\n".to_string()];
        assert_eq!(stop_string_hit(b"", b" ", b"\n", &nl), None);
        assert_eq!(stop_string_hit(b"", b" x", b"\n", &nl), Some(StopReason::StopString("\n".into())));
    }
}
