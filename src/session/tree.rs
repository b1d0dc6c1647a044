//! The fork tree: nodes (the trunk and every branch), blocks (one fork and its join), and what
//! each node wrote. This is bookkeeping only; llama.cpp is driven from the other files of
//! `session/`.

use serde::Serialize;

use super::grammar::NodeGrammar;
use super::logprobs::TokenLogprob;
use super::penalties::PenaltyWindow;
use super::sampling::{BranchSampler, SavedScores};
use crate::layout_rules::JoinRule;
use super::text::Utf8Stream;
use crate::model::Token;

/// Why a node stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model emitted an end-of-generation token (not added to the KV cache).
    Eog,
    /// The token limit of the run was reached.
    MaxTokens,
    /// A stop string appeared (the token completing it is kept).
    StopString(String),
    /// The KV cache had no room for the next token.
    KvCacheFull,
    /// The caller cancelled.
    Cancelled,
    /// An RPC server holding some of the model's layers was lost (`Error::Rpc`).
    ServerLost,
}

/// Where a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The prompt, or text the caller put in (branch prefixes, join text).
    Forced,
    /// Sampled by the model.
    Generated,
}

/// What happened to a block's branches at the join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinMode {
    /// Keep every branch: the parent sees them all and continues at max(branch end) + 1.
    All,
    /// Keep the branches at these indices, discard the others.
    Keep(Vec<usize>),
    /// Drop every branch: the parent continues as if they had never existed.
    Discard,
}

#[derive(Debug, Clone)]
pub(crate) enum Item {
    Text { origin: Origin, pos0: i32, tokens: Vec<Token>, bytes: Vec<u8> },
    Block(usize),
}

#[derive(Debug, Clone)]
pub(crate) enum NodeState {
    /// Not generating; may be extended, forked, or resumed.
    Idle,
    /// Generating; `pending` was sampled and goes into the next step's batch.
    Running { pending: Token },
    /// `pending` is the last token of this run: decode it, then stop with `reason`.
    Finishing { pending: Token, reason: StopReason },
    /// Has an open block; waits for its join.
    Waiting,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub seq: i32,
    pub parent: Option<usize>,
    /// Block ordinal and branch index at every level; seeds the random stream.
    pub path: Vec<u32>,
    /// Human label path, "" for the trunk, "2" or "2.1" for branches.
    pub label: String,
    pub depth: u32,
    /// Position of this node's next token.
    pub next_pos: i32,
    /// KV cells carrying this node's sequence id (everything it can attend to).
    pub cells: u64,
    pub cells_at_fork: u64,
    pub blocks_opened: u32,
    pub items: Vec<Item>,
    pub state: NodeState,
    pub stop_reason: Option<StopReason>,
    /// Limit and stop strings of the current run.
    pub limit: usize,
    pub generated_in_run: usize,
    pub stops: Vec<String>,
    /// The end of the text the caller forced right before this run: a stop string may start
    /// there and end in the run (a response prefix ending `<End Calling Sub`).
    pub stop_lookback: Vec<u8>,
    /// Tokens this run may not sample.
    pub banned: Vec<Token>,
    pub sampler: BranchSampler,
    /// The tokens the repetition penalties look back on (see `penalties.rs`).
    pub window: PenaltyWindow,
    /// The grammar of the node's current (or last) run, with its state (see `grammar.rs`).
    pub grammar: Option<NodeGrammar>,
    /// Next-token scores after this node's last decoded token, kept when it stops so it can
    /// resume or fork. Empty when stale (after a join that kept branches).
    pub saved: SavedScores,
    /// Why `saved` is empty, for the error that asks for appended text.
    pub no_scores_because: &'static str,
    /// Bytes of the pending token, rendered at sampling time.
    pub pending_bytes: Vec<u8>,
    /// Log-probabilities of the pending token (when the session records them).
    pub pending_logprob: Option<TokenLogprob>,
    /// Log-probabilities of the node's generated tokens, in order (`SessionParams::logprobs`).
    pub logprobs: Vec<TokenLogprob>,
    pub utf8: Utf8Stream,
    pub open_block: Option<usize>,
    /// False once joined or discarded: its sequence id went back to the pool.
    pub alive: bool,
    /// Logits used for every sampled token (tests only, see `SessionParams::record_logits`).
    pub logit_trace: Vec<Vec<f32>>,
}

impl Node {
    pub(crate) fn new(seq: i32, sampler: BranchSampler) -> Node {
        Node {
            seq,
            parent: None,
            path: Vec::new(),
            label: String::new(),
            depth: 0,
            next_pos: 0,
            cells: 0,
            cells_at_fork: 0,
            blocks_opened: 0,
            items: Vec::new(),
            state: NodeState::Idle,
            stop_reason: None,
            limit: 0,
            generated_in_run: 0,
            stops: Vec::new(),
            stop_lookback: Vec::new(),
            banned: Vec::new(),
            sampler,
            window: PenaltyWindow::default(),
            saved: SavedScores::default(),
            no_scores_because: "it has decoded nothing yet",
            pending_bytes: Vec::new(),
            pending_logprob: None,
            grammar: None,
            logprobs: Vec::new(),
            utf8: Utf8Stream::default(),
            open_block: None,
            alive: true,
            logit_trace: Vec::new(),
        }
    }

    pub(crate) fn is_decoding(&self) -> bool {
        matches!(self.state, NodeState::Running { .. } | NodeState::Finishing { .. })
    }

    pub(crate) fn pending(&self) -> Option<Token> {
        match self.state {
            NodeState::Running { pending } | NodeState::Finishing { pending, .. } => Some(pending),
            _ => None,
        }
    }

    /// Appends a decoded token to the last text item of `origin`, opening one if needed.
    pub(crate) fn push_token(&mut self, origin: Origin, token: Token, bytes: &[u8]) {
        let pos = self.next_pos;
        match self.items.last_mut() {
            Some(Item::Text { origin: o, tokens, bytes: b, .. }) if *o == origin => {
                tokens.push(token);
                b.extend_from_slice(bytes);
            }
            _ => self.items.push(Item::Text {
                origin,
                pos0: pos,
                tokens: vec![token],
                bytes: bytes.to_vec(),
            }),
        }
        self.next_pos += 1;
        self.cells += 1;
        self.window.push(token);
    }

    /// The node's own text, nested blocks excluded (invalid UTF-8 replaced).
    pub(crate) fn own_text(&self) -> String {
        let mut bytes = Vec::new();
        for item in &self.items {
            if let Item::Text { bytes: b, .. } = item {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Bytes of the current trailing text item (where stop strings are searched).
    pub(crate) fn tail_bytes(&self) -> &[u8] {
        match self.items.last() {
            Some(Item::Text { bytes, .. }) => bytes,
            _ => &[],
        }
    }
}

#[derive(Debug)]
pub(crate) struct Block {
    pub children: Vec<usize>,
    /// Position of every branch's first token.
    pub fork_pos: i32,
    /// Cells the parent could see at the fork: the prefix every branch shares.
    pub prefix_cells: u64,
    /// Branches that run from their own prompts and share nothing with the parent.
    pub detached: bool,
    pub join: Option<JoinMode>,
    /// How the parent read the kept branches back (meaningful once joined).
    pub rule: JoinRule,
    /// Tokens the parent decoded again at the join (a re-read).
    pub reread: usize,
}

/// One branch (or the trunk) as reported in a [`Transcript`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node's handle in its session (index 0 is the trunk).
    pub node: usize,
    /// "" for the trunk, "1", "2", "2.1" ... for branches.
    pub label: String,
    /// Every token this node decoded, own text only (nested blocks excluded).
    pub tokens: usize,
    /// The node's text with nested blocks flattened in (as in the KV cache).
    pub text: String,
    /// Why the node's last run ended; `None` while it has never generated (or is running).
    pub stop_reason: Option<StopReason>,
    /// The node's history in order: text pieces (prompt, forced text, generated runs) and
    /// the blocks it forked, each with its branches.
    pub items: Vec<ItemReport>,
    /// Log-probabilities of the node's generated tokens, when the session records them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// A piece of a node's history.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ItemReport {
    /// Consecutive tokens of one origin, in the node's own sequence.
    Text {
        /// Whether the caller put this text in or the model sampled it.
        origin: Origin,
        /// KV position of the first token (positions then follow one per token).
        first_pos: i32,
        /// The token ids, in order.
        tokens: Vec<Token>,
        /// Their text (bytes that are not valid UTF-8 replaced by U+FFFD).
        text: String,
    },
    /// A fork of this node and its branches.
    Block {
        /// Position of every branch's first token (the parent's next position at the fork);
        /// 0 for a detached block, whose branches run on prompts of their own.
        fork_pos: i32,
        /// What the join did with the branches; `None` while the block is open.
        join: Option<JoinMode>,
        /// How the parent read the kept branches back.
        rule: JoinRule,
        /// Tokens of kept branches the parent decoded again (a [`JoinRule::Reprefill`] join).
        reread_tokens: usize,
        /// Every branch of the block in fork order, kept or not.
        branches: Vec<NodeReport>,
    },
}

/// The structure and text of everything a session holds.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    /// The flattened text exactly as the trunk sees it in the KV cache: kept branches in order,
    /// discarded ones left out; an open block shows all its branches.
    pub text: String,
    /// The trunk's report: its items hold every block and, through them, every branch.
    pub trunk: NodeReport,
}

impl Transcript {
    /// Every block in the trunk, depth first, in order.
    pub fn blocks(&self) -> Vec<&ItemReport> {
        fn walk<'a>(n: &'a NodeReport, out: &mut Vec<&'a ItemReport>) {
            for item in &n.items {
                if let ItemReport::Block { branches, .. } = item {
                    out.push(item);
                    for b in branches {
                        walk(b, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.trunk, &mut out);
        out
    }

    /// The branches of the trunk's `i`-th block (not counting nested ones).
    pub fn top_level_branches(&self, i: usize) -> Option<&[NodeReport]> {
        self.trunk
            .items
            .iter()
            .filter_map(|it| match it {
                ItemReport::Block { branches, .. } => Some(branches.as_slice()),
                _ => None,
            })
            .nth(i)
    }
}

/// Whether branch `i` of `block` is part of its parent's text (kept, or not yet joined).
fn is_kept(block: &Block, i: usize) -> bool {
    match &block.join {
        None | Some(JoinMode::All) => true,
        Some(JoinMode::Keep(k)) => k.contains(&i),
        Some(JoinMode::Discard) => false,
    }
}

/// The tokens of node `idx` in text order, kept branches of its blocks flattened in: the
/// node's part of the transcript, as token ids.
pub(crate) fn flat_tokens(nodes: &[Node], blocks: &[Block], idx: usize, out: &mut Vec<Token>) {
    flat_items(nodes, blocks, &nodes[idx].items, out);
}

/// The tokens of `items` in text order, kept branches of their blocks flattened in.
fn flat_items(nodes: &[Node], blocks: &[Block], items: &[Item], out: &mut Vec<Token>) {
    for item in items {
        match item {
            Item::Text { tokens, .. } => out.extend_from_slice(tokens),
            Item::Block(b) => {
                let block = &blocks[*b];
                for (i, &c) in block.children.iter().enumerate() {
                    if is_kept(block, i) {
                        flat_tokens(nodes, blocks, c, out);
                    }
                }
            }
        }
    }
}

/// The text a node sees, as tokens in order: for a branch of a shared block, what its parent
/// saw up to the fork, then its own (kept nested branches flattened in). Rebuilds a penalty
/// window.
pub(crate) fn seen_tokens(nodes: &[Node], blocks: &[Block], idx: usize, out: &mut Vec<Token>) {
    seen_tokens_upto(nodes, blocks, idx, nodes[idx].items.len(), out);
}

/// `seen_tokens` of node `idx` with only its first `end` items.
fn seen_tokens_upto(nodes: &[Node], blocks: &[Block], idx: usize, end: usize, out: &mut Vec<Token>) {
    if let Some(p) = nodes[idx].parent {
        let fork_item = nodes[p].items.iter().position(
            |item| matches!(item, Item::Block(b) if !blocks[*b].detached && blocks[*b].children.contains(&idx)),
        );
        if let Some(fork_item) = fork_item {
            seen_tokens_upto(nodes, blocks, p, fork_item, out);
        }
    }
    flat_items(nodes, blocks, &nodes[idx].items[..end], out);
}

pub(crate) fn report(nodes: &[Node], blocks: &[Block], idx: usize) -> (NodeReport, Vec<u8>) {
    let node = &nodes[idx];
    let mut flat = Vec::new();
    let mut items = Vec::new();
    let mut tokens = 0;
    for item in &node.items {
        match item {
            Item::Text { origin, pos0, tokens: t, bytes } => {
                tokens += t.len();
                flat.extend_from_slice(bytes);
                items.push(ItemReport::Text {
                    origin: *origin,
                    first_pos: *pos0,
                    tokens: t.clone(),
                    text: String::from_utf8_lossy(bytes).into_owned(),
                });
            }
            Item::Block(b) => {
                let block = &blocks[*b];
                let mut branches = Vec::new();
                for (i, &c) in block.children.iter().enumerate() {
                    let (r, bytes) = report(nodes, blocks, c);
                    if is_kept(block, i) {
                        flat.extend_from_slice(&bytes);
                    }
                    branches.push(r);
                }
                items.push(ItemReport::Block {
                    fork_pos: block.fork_pos,
                    join: block.join.clone(),
                    rule: block.rule,
                    reread_tokens: block.reread,
                    branches,
                });
            }
        }
    }
    let text = String::from_utf8_lossy(&flat).into_owned();
    (
        NodeReport {
            node: idx,
            label: node.label.clone(),
            tokens,
            text,
            stop_reason: node.stop_reason.clone(),
            items,
            logprobs: node.logprobs.clone(),
        },
        flat,
    )
}
