//! The fork tree: nodes (the trunk and every branch), blocks (one fork and its join), and what
//! each node wrote. This is bookkeeping only; llama.cpp is driven from the other files of
//! `session/`, and `report.rs` reads the tree back for the caller.

use serde::Serialize;

use super::grammar::NodeGrammar;
use super::logprobs::TokenLogprob;
use super::penalties::{Adjustments, PenaltyWindow};
use super::sampling::{BranchSampler, SamplingParams, SavedScores, Scores};
use super::stop::stop_string_hit;
use super::text::Utf8Stream;
use super::RunLimits;
use crate::layout_rules::JoinRule;
use crate::model::{Model, Token};

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

/// One node of the tree: the trunk or a branch. Its fields are private to this file, so that
/// every change of its state goes through the methods below, each of which keeps the fields
/// that move together (position and cells, text and penalty window, state and stop reason,
/// scores and why they are missing) consistent.
#[derive(Debug)]
pub(crate) struct Node {
    seq: i32,
    parent: Option<usize>,
    /// Block ordinal and branch index at every level; seeds the random stream.
    path: Vec<u32>,
    /// Human label path, "" for the trunk, "2" or "2.1" for branches.
    label: String,
    depth: u32,
    /// Position of this node's next token.
    next_pos: i32,
    /// KV cells carrying this node's sequence id (everything it can attend to).
    cells: u64,
    cells_at_fork: u64,
    blocks_opened: u32,
    items: Vec<Item>,
    state: NodeState,
    stop_reason: Option<StopReason>,
    /// Limit and stop strings of the current run.
    limit: usize,
    generated_in_run: usize,
    stops: Vec<String>,
    /// The end of the text the caller forced right before this run: a stop string may start
    /// there and end in the run (a response prefix ending `<End Calling Sub`).
    stop_lookback: Vec<u8>,
    /// Tokens this run may not sample.
    banned: Vec<Token>,
    sampler: BranchSampler,
    /// The tokens the repetition penalties look back on (see `penalties.rs`).
    window: PenaltyWindow,
    /// The grammar of the node's current (or last) run, with its state (see `grammar.rs`).
    grammar: Option<NodeGrammar>,
    /// Next-token scores after this node's last decoded token, kept when it stops so it can
    /// resume or fork. Empty when stale (after a join that kept branches).
    saved: SavedScores,
    /// Why `saved` is empty, for the error that asks for appended text.
    no_scores_because: &'static str,
    /// Bytes of the pending token, rendered at sampling time.
    pending_bytes: Vec<u8>,
    /// Log-probabilities of the pending token (when the session records them).
    pending_logprob: Option<TokenLogprob>,
    /// Log-probabilities of the node's generated tokens, in order (`SessionParams::logprobs`).
    logprobs: Vec<TokenLogprob>,
    /// Log-probabilities recorded for this node alone, with this many alternatives, where the
    /// session records none (a root whose request asked for them).
    logprobs_top: Option<usize>,
    utf8: Utf8Stream,
    open_block: Option<usize>,
    /// False once joined or discarded: its sequence id went back to the pool.
    alive: bool,
    /// Logits used for every sampled token (tests only, see `SessionParams::record_logits`).
    logit_trace: Vec<Vec<f32>>,
}

impl Node {
    pub(crate) fn new(seq: i32, sampler: BranchSampler, window: PenaltyWindow) -> Node {
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
            window,
            saved: SavedScores::default(),
            no_scores_because: "it has decoded nothing yet",
            pending_bytes: Vec::new(),
            pending_logprob: None,
            grammar: None,
            logprobs: Vec::new(),
            logprobs_top: None,
            utf8: Utf8Stream::default(),
            open_block: None,
            alive: true,
            logit_trace: Vec::new(),
        }
    }

    /// Branch `index` of the block `parent` (node `parent_idx`) is opening, under sequence id
    /// `seq`. A `shared` branch starts where its parent is, on its cells, and looks back on its
    /// penalty window; a detached one starts at position 0 with an empty window of
    /// `window_capacity`.
    pub(super) fn branch(
        parent: &Node,
        parent_idx: usize,
        seq: i32,
        index: usize,
        sampling: &SamplingParams,
        shared: bool,
        window_capacity: usize,
    ) -> Node {
        // The parent counts the block once the fork has succeeded, so its ordinal is the
        // number opened so far.
        let mut path = parent.path.clone();
        path.extend([parent.blocks_opened, index as u32]);
        let label =
            if parent.label.is_empty() { format!("{}", index + 1) } else { format!("{}.{}", parent.label, index + 1) };
        // The branch looks back on what it sees: its parent's window (when it shares the
        // parent's cells), then itself.
        let window = if shared { parent.window.clone() } else { PenaltyWindow::new(window_capacity) };
        let mut child = Node::new(seq, BranchSampler::new(sampling, &path), window);
        child.parent = Some(parent_idx);
        child.path = path;
        child.label = label;
        child.depth = parent.depth + 1;
        if shared {
            child.next_pos = parent.next_pos;
            child.cells = parent.cells;
            child.cells_at_fork = parent.cells;
        }
        child
    }

    pub(super) fn seq(&self) -> i32 {
        self.seq
    }

    pub(super) fn parent(&self) -> Option<usize> {
        self.parent
    }

    pub(super) fn label(&self) -> &str {
        &self.label
    }

    /// 0 for the trunk, 1 for its branches, and so on.
    pub(super) fn depth(&self) -> u32 {
        self.depth
    }

    pub(super) fn next_pos(&self) -> i32 {
        self.next_pos
    }

    /// Every cell this node can attend to.
    pub(super) fn cells(&self) -> u64 {
        self.cells
    }

    /// The cells this node added after its fork (all of them for the trunk and detached
    /// branches): what it holds that no other node shares.
    pub(super) fn own_cells(&self) -> u64 {
        self.cells - self.cells_at_fork
    }

    pub(super) fn items(&self) -> &[Item] {
        &self.items
    }

    pub(super) fn state(&self) -> &NodeState {
        &self.state
    }

    pub(super) fn stop_reason(&self) -> Option<&StopReason> {
        self.stop_reason.as_ref()
    }

    pub(super) fn stop_lookback(&self) -> &[u8] {
        &self.stop_lookback
    }

    pub(super) fn grammar(&self) -> Option<&NodeGrammar> {
        self.grammar.as_ref()
    }

    pub(super) fn saved(&self) -> &SavedScores {
        &self.saved
    }

    pub(super) fn no_scores_because(&self) -> &'static str {
        self.no_scores_because
    }

    pub(super) fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    pub(super) fn logit_trace(&self) -> &[Vec<f32>] {
        &self.logit_trace
    }

    pub(super) fn open_block(&self) -> Option<usize> {
        self.open_block
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive
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

    /// Running and not finishing: committing its pending token samples another.
    pub(super) fn keeps_running(&self) -> bool {
        matches!(self.state, NodeState::Running { .. })
    }

    /// Why the run ends once the pending token is decoded, when it is the run's last.
    pub(super) fn finishing_reason(&self) -> Option<StopReason> {
        match &self.state {
            NodeState::Finishing { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }

    /// The grammar the next run (or, for a branch, its first run) samples under.
    pub(super) fn set_grammar(&mut self, grammar: Option<NodeGrammar>) {
        self.grammar = grammar;
    }

    /// A branch forked without a prefix samples its first token from its parent's scores.
    pub(super) fn inherit_scores(&mut self, parent: &Node) {
        self.saved = parent.saved.clone();
        self.no_scores_because = parent.no_scores_because;
    }

    /// A new sampler for new parameters, on the node's own random stream.
    /// The parameters the node samples with.
    pub(super) fn sampling(&self) -> &SamplingParams {
        self.sampler.params()
    }

    pub(super) fn set_sampling(&mut self, sampling: &SamplingParams) {
        self.sampler = BranchSampler::new(sampling, &self.path);
    }

    /// Alternatives per token this node records log-probabilities with, itself (see
    /// `logprobs_top`); the session's setting comes first.
    pub(super) fn logprobs_top(&self) -> Option<usize> {
        self.logprobs_top
    }

    pub(super) fn set_logprobs_top(&mut self, top: Option<usize>) {
        self.logprobs_top = top;
    }

    /// An empty penalty window of `capacity` tokens (the caller refills it from the text).
    pub(super) fn reset_window(&mut self, capacity: usize) {
        self.window = PenaltyWindow::new(capacity);
    }

    /// Refills the penalty window from the text the node sees (after tokens were taken back).
    pub(super) fn refill_window(&mut self, seen: &[Token]) {
        self.window.refill(seen);
    }

    /// Test-only leak (`SessionParams::share_penalty_windows`): a sibling's token enters this
    /// node's penalty window.
    pub(super) fn leak_sibling_token(&mut self, token: Token) {
        self.window.push(token);
    }

    /// Sets up a run under `limits` (`eog` the model's end-of-generation tokens, banned when the
    /// limits ask) and opens its text item. Returns false when the run is over before it
    /// starts (a limit of 0 tokens); otherwise the caller samples its first token.
    pub(super) fn start_run(&mut self, limits: &RunLimits, eog: &[Token]) -> bool {
        self.limit = limits.max_tokens;
        self.stops = limits.stop.clone();
        self.banned = limits.banned_tokens.clone();
        if limits.ban_eog {
            self.banned.extend_from_slice(eog);
        }
        // Sorted once per run: every sample looks tokens up in it (`is_banned` in sampling/sampler.rs).
        self.banned.sort_unstable();
        self.banned.dedup();
        self.generated_in_run = 0;
        self.stop_reason = None;
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        self.stop_lookback = match self.items.last() {
            Some(Item::Text { origin: Origin::Forced, bytes, .. }) => {
                bytes[bytes.len() - longest.saturating_sub(1).min(bytes.len())..].to_vec()
            }
            _ => Vec::new(),
        };
        // A fresh run starts a fresh text item so stop strings only match its own text.
        self.items.push(Item::Text {
            origin: Origin::Generated,
            pos0: self.next_pos,
            tokens: Vec::new(),
            bytes: Vec::new(),
        });
        if limits.max_tokens == 0 {
            self.state = NodeState::Idle;
            self.stop_reason = Some(StopReason::MaxTokens);
            return false;
        }
        true
    }

    /// Lends out the saved scores, so that the node can sample from them while they are
    /// borrowed; `restore_saved` puts them back.
    pub(super) fn take_saved(&mut self) -> SavedScores {
        std::mem::take(&mut self.saved)
    }

    pub(super) fn restore_saved(&mut self, saved: SavedScores) {
        self.saved = saved;
    }

    /// Keeps the scores after the node's last decoded token, for a later resume or fork.
    pub(super) fn save_scores(&mut self, scores: Scores<'_>) {
        self.saved.store(scores);
    }

    /// Test-only trace (`SessionParams::record_logits`) of a row a token is sampled from.
    pub(super) fn record_logits(&mut self, row: &[f32]) {
        self.logit_trace.push(row.to_vec());
    }

    /// The next token under the run's grammar (`None`: the grammar admits nothing more), or
    /// from the adjusted scores without one.
    pub(super) fn choose_token(&mut self, scores: Scores<'_>, adjustments: &Adjustments<'_>) -> Option<Token> {
        match self.grammar.as_mut() {
            Some(g) => g.sample(&mut self.sampler, scores, &self.banned, adjustments, &self.window),
            None => Some(self.sampler.sample_adjusted(scores, &self.banned, adjustments, &self.window)),
        }
    }

    /// The next token from a full row as it is, chosen before the step's tokens are committed:
    /// only for nodes without a grammar, in sessions without logit adjustments.
    pub(super) fn preselect(&mut self, row: &[f32]) -> Token {
        self.sampler.sample_sorted(Scores::Full(row), &self.banned)
    }

    /// The sampled token is an end of generation (or a grammar admits nothing more): the run
    /// ends without decoding it.
    pub(super) fn stop_at_eog(&mut self) {
        self.pending_logprob = None;
        self.state = NodeState::Idle;
        self.stop_reason = Some(StopReason::Eog);
    }

    /// Makes `token` the pending token: its bytes are rendered now, so that a stop string it
    /// completes ends the run with it (`Finishing`), as does the run's token limit.
    pub(super) fn queue(&mut self, token: Token, logprob: Option<TokenLogprob>, model: &Model) {
        self.pending_logprob = logprob;
        self.pending_bytes.clear();
        model.token_bytes(token, &mut self.pending_bytes);
        self.generated_in_run += 1;
        let reason = if self.generated_in_run >= self.limit {
            Some(StopReason::MaxTokens)
        } else {
            stop_string_hit(&self.stop_lookback, self.tail_bytes(), &self.pending_bytes, &self.stops)
        };
        self.state = match reason {
            Some(reason) => NodeState::Finishing { pending: token, reason },
            None => NodeState::Running { pending: token },
        };
    }

    /// Commits the decoded pending `token` to the node's text; `text` receives the whole
    /// UTF-8 characters it completes.
    pub(super) fn commit_pending(&mut self, token: Token, text: &mut String) {
        let bytes = std::mem::take(&mut self.pending_bytes);
        let pos = self.next_pos;
        self.push_token(Origin::Generated, token, &bytes);
        if self.grammar.as_mut().is_some_and(|g| !g.accept(token)) {
            // Only a scripted token can be one the grammar rejects: it overrides the grammar.
            self.grammar = None;
        }
        if let Some(mut lp) = self.pending_logprob.take() {
            lp.pos = pos;
            self.logprobs.push(lp);
        }
        text.clear();
        self.utf8.push(&bytes, text);
        self.pending_bytes = bytes;
    }

    /// `text` receives what the UTF-8 stream still holds at the end of a run.
    pub(super) fn flush_text(&mut self, text: &mut String) {
        text.clear();
        self.utf8.finish(text);
    }

    /// Ends the run: the node is idle and remembers why.
    pub(super) fn stop(&mut self, reason: StopReason) {
        self.state = NodeState::Idle;
        self.stop_reason = Some(reason);
    }

    /// Ends the run with its pending token never decoded.
    pub(super) fn stop_undecoded(&mut self, reason: StopReason) {
        // The scores after its last decoded token were consumed by sampling the dropped
        // token; the node needs appended text before it generates again.
        self.saved.clear();
        self.pending_logprob = None;
        self.no_scores_because = match reason {
            StopReason::KvCacheFull => "the KV cache filled: the token it had sampled was never decoded",
            StopReason::ServerLost => "an RPC server was lost: the token it had sampled was never decoded",
            _ => "its run was stopped (cancelled, or a failed decode): the token it had sampled was never decoded",
        };
        self.stop(reason);
    }

    /// Appends a decoded token to the last text item of `origin`, opening one if needed.
    pub(crate) fn push_token(&mut self, origin: Origin, token: Token, bytes: &[u8]) {
        let pos = self.next_pos;
        match self.items.last_mut() {
            Some(Item::Text { origin: o, tokens, bytes: b, .. }) if *o == origin => {
                tokens.push(token);
                b.extend_from_slice(bytes);
            }
            _ => self.items.push(Item::Text { origin, pos0: pos, tokens: vec![token], bytes: bytes.to_vec() }),
        }
        self.next_pos += 1;
        self.cells += 1;
        self.window.push(token);
    }

    /// A token decoded into the node's cells but not its text (a join's re-read).
    pub(super) fn push_unrecorded(&mut self) {
        self.next_pos += 1;
        self.cells += 1;
    }

    /// Forgets the cells of the node's last `n` tokens (they stay in its text). Returns the
    /// first position freed, which the caller removes from the cache.
    pub(super) fn uncache_tail(&mut self, n: usize) -> i32 {
        let from = self.next_pos - n as i32;
        self.next_pos = from;
        self.cells -= n as u64;
        self.saved.clear();
        self.no_scores_because = "its last tokens were taken out of the cache";
        from
    }

    /// Forgets the node's text from item `first_item` on, but the first `kept_in_item`
    /// tokens of that item, `removed` tokens (and their cells) in all; blocks in that tail
    /// stay. Returns the first position freed, which the caller removes from the cache
    /// before it refills the penalty window.
    pub(super) fn rewind(&mut self, first_item: usize, kept_in_item: usize, removed: u64, model: &Model) -> i32 {
        let Item::Text { pos0, .. } = &self.items[first_item] else { unreachable!("cut is a text item") };
        let from = *pos0 + kept_in_item as i32;
        let mut items = std::mem::take(&mut self.items);
        let tail = items.split_off(first_item);
        for (k, item) in tail.into_iter().enumerate() {
            match item {
                Item::Text { origin, pos0, mut tokens, mut bytes } if k == 0 && kept_in_item > 0 => {
                    truncate_text(&mut tokens, &mut bytes, kept_in_item, model);
                    items.push(Item::Text { origin, pos0, tokens, bytes });
                }
                Item::Text { .. } => {}
                block @ Item::Block(_) => items.push(block),
            }
        }
        self.items = items;
        self.next_pos = from;
        self.cells -= removed;
        self.logprobs.retain(|l| l.pos < from);
        self.saved.clear();
        self.no_scores_because = "it was rewound";
        from
    }

    /// Forgets tokens committed at positions ≥ `pos0` by a prefill that failed part-way (in
    /// its text too when the prefill `recorded` them). Returns whether its text changed, so
    /// that the caller refills its penalty window.
    pub(super) fn roll_back(&mut self, pos0: i32, recorded: bool, model: &Model) -> bool {
        let drop = (self.next_pos - pos0).max(0) as u64;
        if drop == 0 {
            return false;
        }
        if !recorded {
            self.next_pos = pos0;
            self.cells -= drop;
            return false;
        }
        if let Some(Item::Text { origin: Origin::Forced, pos0: item_pos, tokens, bytes }) = self.items.last_mut() {
            truncate_text(tokens, bytes, (pos0 - *item_pos).max(0) as usize, model);
            if tokens.is_empty() {
                self.items.pop();
            }
        }
        self.next_pos = pos0;
        self.cells -= drop;
        true
    }

    /// The node forked block `block`: it waits for the block's join.
    pub(super) fn wait_on_block(&mut self, block: usize) {
        self.blocks_opened += 1;
        self.open_block = Some(block);
        self.state = NodeState::Waiting;
        self.items.push(Item::Block(block));
    }

    /// The node's open block was joined: it sees the kept branches' tokens `seen` (in its
    /// penalty window), continues at `next_pos` and holds `gained` more cells. Its saved
    /// scores predate the branches, so they go when any branch was kept (`kept_any`).
    pub(super) fn close_block(&mut self, seen: &[Token], next_pos: i32, gained: u64, kept_any: bool) {
        self.window.extend(seen);
        self.open_block = None;
        self.state = NodeState::Idle;
        self.next_pos = next_pos;
        self.cells += gained;
        if kept_any {
            self.saved.clear(); // they predate the branches
            self.no_scores_because = "a join kept branches, and no token has seen them yet";
        }
    }

    /// The branch was joined (kept or discarded): its sequence id went back to the pool.
    pub(super) fn mark_joined(&mut self) {
        self.alive = false;
        self.saved = SavedScores::default();
    }

    /// The node's conversation was closed: its sequence id went back to the pool and what it
    /// wrote is no longer needed, so its memory goes too (a server closes many).
    pub(super) fn release(&mut self) {
        self.mark_joined();
        self.state = NodeState::Idle;
        self.items = Vec::new();
        self.logprobs = Vec::new();
        self.logit_trace = Vec::new();
        self.window = PenaltyWindow::new(0);
        self.grammar = None;
        self.pending_bytes = Vec::new();
    }

    /// The node's cells from its last one on moved `shift` positions on (a same-seq join's
    /// filler): so does its next position.
    pub(super) fn shift_next_pos(&mut self, shift: i32) {
        self.next_pos += shift;
    }

    /// `n` of the node's cells were removed from the cache, its positions unchanged (a
    /// same-seq join's filler).
    pub(super) fn drop_cells(&mut self, n: u64) {
        self.cells -= n;
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

/// Keeps the first `keep` tokens of a text item's `tokens` and renders its `bytes` again from
/// them (a token's bytes depend only on the token).
fn truncate_text(tokens: &mut Vec<Token>, bytes: &mut Vec<u8>, keep: usize, model: &Model) {
    tokens.truncate(keep);
    bytes.clear();
    for &t in tokens.iter() {
        model.token_bytes(t, bytes);
    }
}

/// Whether branch `i` of `block` is part of its parent's text (kept, or not yet joined).
pub(super) fn is_kept(block: &Block, i: usize) -> bool {
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
