//! Joining a block: the parent takes its finished branches back and continues after them.
//!
//! Which branches are kept is a [`JoinMode`]; how the parent then reads them is a
//! [`JoinRule`]. The published engines differ exactly here, so each rule is one mechanism:
//!
//! - **same-max** (Multiverse, NPR): the parent's id is added to every kept branch's own cells
//!   (`seq_cp(branch, parent, fork_pos..)`, zero copy) and it continues at max(branch end) + 1.
//! - **same-seq** (ASPD's engine): the same cells, but the parent continues at
//!   fork_pos + Σ branch lengths, the position the text would have if the branches had been
//!   written one after another. llama.cpp decodes a sequence's next token only at its largest
//!   position + 1, so the join text's first token is first decoded at max + 1 as a filler,
//!   whose cell is moved (`seq_add`, a RoPE shift of its keys) to the sequential position − 1;
//!   the token is then decoded for real at the sequential position and the filler removed.
//!   Every token sits exactly where ASPD puts it; the join token's own forward saw one extra
//!   cell (the filler: a copy of itself, one position back), so it and what attends to it are
//!   close to, not equal to, an exact forward (measured in `tests/join_rules.rs`: on the tiny
//!   float32 model, 0.12 of the largest logit at the join token, 0.02 after it, where moving
//!   the join token's cell without re-decoding it gave 1.0 and 0.014).
//! - **reprefill** (ThreadWeaver, Parallel-R1 rollouts): the branches are read again as one
//!   serial text. The first kept branch already sits where a serial read puts it and saw what
//!   a serial read sees, so its cells are kept; every later kept branch's tokens are decoded
//!   again in the parent, after the previous ones, at sequential positions. Those re-read
//!   tokens are not new text: the transcript shows each branch once.

use std::time::Instant;

use super::tree::{flat_tokens, JoinMode};
use super::{NodeId, Session};
use crate::error::{Error, Result};
use crate::layout_rules::JoinRule;
use crate::model::Token;

impl Session {
    /// Joins the open block of `parent` under [`JoinRule::SameMax`]. Its branches must all
    /// have stopped.
    ///
    /// With [`JoinMode::All`] or `Keep`, the parent sees the kept branches and continues at
    /// max(kept branch end) + 1; it needs text (`join_text`, or a later append) before it can
    /// generate, since no token has yet attended to all branches. With `Discard`, the parent
    /// continues exactly where it forked.
    pub fn join(&mut self, parent: NodeId, mode: JoinMode, join_text: Option<&str>) -> Result<()> {
        self.join_with(parent, mode, JoinRule::SameMax, join_text)
    }

    /// Joins the open block of `parent` under `rule`, then decodes `join_text` in the parent.
    /// [`JoinRule::SameSeq`] needs a join text (its first token is the one moved to the
    /// sequential position) and a model whose cells can be moved (RoPE).
    pub fn join_with(&mut self, parent: NodeId, mode: JoinMode, rule: JoinRule, join_text: Option<&str>) -> Result<()> {
        let join_tokens = match join_text {
            Some(t) if !t.is_empty() => self.model.tokenize(t, false)?,
            _ => Vec::new(),
        };
        self.join_with_tokens(parent, mode, rule, &join_tokens)
    }

    /// [`Session::join_with`] with the join text as token ids.
    pub fn join_with_tokens(
        &mut self,
        parent: NodeId,
        mode: JoinMode,
        rule: JoinRule,
        join_tokens: &[Token],
    ) -> Result<()> {
        self.join_full(parent, mode, rule, join_tokens, false)
    }

    /// The join with every option. `repeat_last`: before the join text, decode the last token
    /// of the last kept branch once more in the parent, in its cells only (not its text):
    /// ASPD's engine does, as transformers' `generate` re-feeds the tail of the merged text.
    pub fn join_full(
        &mut self,
        parent: NodeId,
        mode: JoinMode,
        rule: JoinRule,
        join_tokens: &[Token],
        repeat_last: bool,
    ) -> Result<()> {
        self.check_tokens(join_tokens)?;
        let p = self.live_node(parent)?;
        let b = self.nodes[p].open_block().ok_or_else(|| {
            Error::InvalidState(format!("node {:?} has no open block to join", self.nodes[p].label()))
        })?;
        let children = self.blocks[b].children.clone();
        if self.blocks[b].detached && mode != JoinMode::Discard {
            return Err(Error::InvalidArgument(
                "detached branches cannot be merged (their positions restart at 0): join them \
                 with Discard and pass their results on as text"
                    .into(),
            ));
        }
        for &c in &children {
            let child = &self.nodes[c];
            if child.is_decoding() || child.open_block().is_some() {
                return Err(Error::InvalidState(format!(
                    "branch {} is still {}: run it to its end (or join its own block) first",
                    child.label(),
                    if child.is_decoding() { "running" } else { "waiting on a nested block" }
                )));
            }
        }
        let kept = kept_indices(&mode, children.len())?;
        if rule == JoinRule::SameSeq && !kept.is_empty() {
            if join_tokens.is_empty() {
                return Err(Error::InvalidArgument(
                    "a same-seq join needs a join text: its first token is what moves to the \
                     sequential position"
                        .into(),
                ));
            }
            if !self.ctx.can_shift() {
                return Err(Error::UnsupportedModel(
                    "a same-seq join moves a KV cell, and this model's cache cannot be shifted".into(),
                ));
            }
        }
        let fork_pos = self.blocks[b].fork_pos;
        let kept_nodes: Vec<usize> = kept.iter().map(|&i| children[i]).collect();
        // Sequential length of each kept branch (its prefix and nested blocks included).
        let lengths: Vec<i32> = kept_nodes.iter().map(|&c| self.nodes[c].next_pos() - fork_pos).collect();
        // Branches a re-read decodes again: every kept one after the first, flattened.
        let mut reread: Vec<Token> = Vec::new();
        if rule == JoinRule::Reprefill {
            for &c in kept_nodes.iter().skip(1) {
                flat_tokens(&self.nodes, &self.blocks, c, &mut reread);
            }
        }
        let repeated: Option<Token> = if repeat_last {
            let mut last = Vec::new();
            if let Some(&c) = kept_nodes.last() {
                flat_tokens(&self.nodes, &self.blocks, c, &mut last);
            }
            last.last().copied()
        } else {
            None
        };
        let merged: &[usize] = match rule {
            JoinRule::SameMax | JoinRule::SameSeq => &kept_nodes,
            JoinRule::Reprefill => &kept_nodes[..kept_nodes.len().min(1)],
        };
        // What the parent decodes after the merge must fit before anything changes: a join
        // that closed the block and then found the cache full left the session half joined.
        let decoded_after = reread.len()
            + usize::from(repeated.is_some())
            + join_tokens.len()
            + usize::from(rule == JoinRule::SameSeq && !join_tokens.is_empty());
        let released: u64 = children.iter().filter(|c| !merged.contains(c)).map(|&c| self.nodes[c].own_cells()).sum();
        let in_use = self.kv_cells_used() - released;
        if in_use + decoded_after as u64 > u64::from(self.n_ctx) {
            return Err(Error::KvCacheFull);
        }
        let parent_seq = self.nodes[p].seq();
        let mut new_next = self.nodes[p].next_pos();
        let mut gained = 0;
        for &c in merged {
            let child = &self.nodes[c];
            let (seq, next, own) = (child.seq(), child.next_pos(), child.own_cells());
            // The parent's id joins the branch's own cells (positions ≥ fork_pos).
            self.ctx.seq_cp(seq, parent_seq, fork_pos);
            new_next = new_next.max(next);
            gained += own;
        }
        for &c in &children {
            let seq = self.nodes[c].seq();
            if !self.ctx.seq_rm(seq, -1) {
                return Err(Error::Internal(format!("llama.cpp refused to remove sequence {seq}")));
            }
            self.pool.give_back(seq);
            self.nodes[c].mark_joined();
        }
        let prefix_cells = self.blocks[b].prefix_cells;
        let unshared_drop = (children.len() - kept.len().max(1)) as u64 * prefix_cells;
        self.counters.prefix_copies_avoided -= unshared_drop;
        self.blocks[b].join = Some(mode);
        self.blocks[b].rule = rule;
        self.blocks[b].reread = reread.len();
        // The parent now sees the kept branches, in order: so do its penalties.
        let mut seen = Vec::new();
        for &c in &kept_nodes {
            flat_tokens(&self.nodes, &self.blocks, c, &mut seen);
        }
        self.nodes[p].close_block(&seen, new_next, gained, !kept.is_empty());
        let start = Instant::now();
        if !reread.is_empty() {
            self.prefill_unrecorded(p, &reread)?;
        }
        let sequential = fork_pos + lengths.iter().sum::<i32>();
        if !join_tokens.is_empty() {
            let shift = sequential - new_next;
            if rule == JoinRule::SameSeq && shift > 0 {
                self.join_at_sequential(p, join_tokens, repeated, sequential)?;
            } else {
                if let Some(t) = repeated {
                    self.prefill_unrecorded(p, &[t])?;
                }
                self.prefill(&[(p, join_tokens)])?;
            }
        }
        self.counters.prefill_time += start.elapsed();
        Ok(())
    }

    /// Decodes the join text at `sequential`, past the branches' largest position + 1 (the
    /// only position llama.cpp accepts next). The first token (the repeated one, if any) is
    /// decoded once at max + 1 as a filler, moved to `sequential - 1`, then decoded again at
    /// `sequential`, where it sees every cell at its true distance, plus the filler; the filler
    /// is then removed.
    pub(super) fn join_at_sequential(
        &mut self,
        p: usize,
        join_tokens: &[Token],
        repeated: Option<Token>,
        sequential: i32,
    ) -> Result<()> {
        let first = repeated.unwrap_or(join_tokens[0]);
        self.prefill_unrecorded(p, &[first])?;
        let seq = self.nodes[p].seq();
        let filler = self.nodes[p].next_pos() - 1;
        let shift = sequential - 1 - filler;
        if shift > 0 {
            self.ctx.seq_add(seq, filler, filler + 1, shift);
            self.nodes[p].shift_next_pos(shift);
        }
        if let Some(t) = repeated {
            self.prefill_unrecorded(p, &[t])?;
        }
        self.prefill(&[(p, join_tokens)])?;
        self.ctx.seq_rm_range(seq, sequential - 1, sequential);
        self.nodes[p].drop_cells(1);
        Ok(())
    }
}

/// Indices of the kept branches, sorted, checked against the block's size.
fn kept_indices(mode: &JoinMode, n: usize) -> Result<Vec<usize>> {
    Ok(match mode {
        JoinMode::All => (0..n).collect(),
        JoinMode::Discard => Vec::new(),
        JoinMode::Keep(k) => {
            let mut sorted = k.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != k.len() || sorted.iter().any(|&i| i >= n) {
                return Err(Error::InvalidArgument(format!("keep indices {k:?} must be distinct and below {n}")));
            }
            sorted
        }
    })
}
