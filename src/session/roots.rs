//! Conversations of their own in one context: *roots* beside the trunk.
//!
//! A root is a top-level node like the trunk — its own sequence id, positions from 0, a prompt
//! of its own — that shares no cell with the trunk or any other root. Each step decodes every
//! running node of every root in the same batch, so many conversations advance together
//! (continuous batching: a root opens between two steps and closes when its caller is done);
//! each may fork, its branches sharing its cells and drawing from its own sampler. A root
//! kept after its answer can be reopened on a longer prompt that starts with its text: only
//! the new tokens are decoded (a chat turn pays for its new text alone).

use crate::error::{Error, Result};
use crate::model::Token;

use super::penalties::PenaltyWindow;
use super::report::{report, settled_bytes, Transcript};
use super::sampling::{BranchSampler, SamplingParams};
use super::tree::{Item, Node};
use super::{NodeId, QueuedPrefill, Selection, Session, StopReason, MAX_TOP_LOGPROBS};

/// When a root's prompt is decoded.
#[derive(Debug, Clone, Copy)]
enum Prefill {
    /// Here, in a decode of its own.
    Now,
    /// In the next step's batch.
    NextStep,
}

impl Session {
    /// Opens a conversation: a new root holding `tokens` as its prompt (decoded here, with
    /// the model's start token only if the caller put it in), sampling with `sampling` — its
    /// temperature, top-k/p, min-p and seed; the repetition penalties and the logit bias stay
    /// the session's. Generate on it with [`Session::resume`] and [`Session::step`]; fork it
    /// like the trunk. Fails with [`Error::TooManyBranches`] when no sequence id is free and
    /// [`Error::PromptTooLong`] when the KV cache cannot hold the prompt; nothing changes then.
    pub fn open_root(&mut self, tokens: &[Token], sampling: &SamplingParams) -> Result<NodeId> {
        self.open_root_with(tokens, sampling, Prefill::Now)
    }

    /// [`Session::open_root`], with the prompt decoded in the next [`Session::step`]'s batch,
    /// beside the tokens of the nodes running then, instead of in a decode of its own (as
    /// llama-server mixes prompts into its batches: the weights are read once for both). The
    /// root can generate after that step ([`Session::is_prefilling`] says when); closing it
    /// before drops its prompt. If the step fails, the root is left without the prompt (and
    /// cannot generate): close it.
    pub fn open_root_queued(&mut self, tokens: &[Token], sampling: &SamplingParams) -> Result<NodeId> {
        self.open_root_with(tokens, sampling, Prefill::NextStep)
    }

    fn open_root_with(&mut self, tokens: &[Token], sampling: &SamplingParams, when: Prefill) -> Result<NodeId> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        self.check_tokens(tokens)?;
        self.check_room(tokens.len())?;
        let sampling = self.root_sampling(sampling)?;
        let seq = self.pool.take(1)?[0];
        let window = PenaltyWindow::new(sampling.window_capacity(self.n_ctx));
        let idx = self.nodes.len();
        self.nodes.push(Node::new(seq, BranchSampler::new(&sampling, &[]), window));
        if let Err(e) = self.prefill_root(idx, tokens, when) {
            self.ctx.seq_rm(seq, -1);
            self.pool.give_back(seq);
            self.nodes.truncate(idx);
            return Err(e);
        }
        Ok(NodeId(idx))
    }

    /// Decodes `tokens` into root `idx` now, or queues them for the next step.
    fn prefill_root(&mut self, idx: usize, tokens: &[Token], when: Prefill) -> Result<()> {
        match when {
            Prefill::Now => self.append_tokens(NodeId(idx), tokens),
            Prefill::NextStep => {
                self.queued.push(QueuedPrefill { node: idx, tokens: tokens.to_vec() });
                Ok(())
            }
        }
    }

    /// Whether `node`'s prompt is queued for the next step ([`Session::open_root_queued`]).
    pub fn is_prefilling(&self, node: NodeId) -> bool {
        self.queued.iter().any(|q| q.node == node.0)
    }

    /// How many tokens of `tokens` an idle root already holds at its start, in text before
    /// any block: what [`Session::reopen_root`] would keep. 0 for anything but an idle root
    /// without branches.
    pub fn reusable_prefix(&self, root: NodeId, tokens: &[Token]) -> usize {
        let Ok(idx) = self.root_index(root) else { return 0 };
        let node = &self.nodes[idx];
        if node.is_decoding() || node.items().iter().any(|i| matches!(i, Item::Block(_))) {
            return 0;
        }
        let held = node.items().iter().flat_map(|i| match i {
            Item::Text { tokens, .. } => tokens.as_slice(),
            Item::Block(_) => &[],
        });
        held.zip(tokens).take_while(|(a, b)| a == b).count()
    }

    /// Starts a root over on a new prompt: keeps the tokens it shares with `tokens` (at most
    /// all but the last, whose logits the next run needs), forgets the rest from its text and
    /// cells, decodes the new tail and samples from now on with `sampling`. Returns how many
    /// tokens were reused. Only a root without branches can be reopened.
    pub fn reopen_root(&mut self, root: NodeId, tokens: &[Token], sampling: &SamplingParams) -> Result<usize> {
        self.reopen_root_with(root, tokens, sampling, Prefill::Now)
    }

    /// [`Session::reopen_root`], with the new tokens decoded in the next step's batch (as
    /// [`Session::open_root_queued`]).
    pub fn reopen_root_queued(&mut self, root: NodeId, tokens: &[Token], sampling: &SamplingParams) -> Result<usize> {
        self.reopen_root_with(root, tokens, sampling, Prefill::NextStep)
    }

    fn reopen_root_with(
        &mut self,
        root: NodeId,
        tokens: &[Token],
        sampling: &SamplingParams,
        when: Prefill,
    ) -> Result<usize> {
        let idx = self.root_index(root)?;
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        self.check_tokens(tokens)?;
        if self.nodes[idx].items().iter().any(|i| matches!(i, Item::Block(_))) {
            return Err(Error::InvalidState("a root that forked cannot be reopened: close it".into()));
        }
        let keep = self.reusable_prefix(root, tokens).min(tokens.len() - 1);
        let held = self.nodes[idx].cells() as usize;
        if self.kv_cells_used() as usize - held + tokens.len() > self.n_ctx as usize {
            return Err(Error::PromptTooLong {
                tokens: self.kv_cells_used() as usize - held + tokens.len(),
                n_ctx: self.n_ctx as usize,
            });
        }
        let sampling = self.root_sampling(sampling)?;
        self.rewind(root, keep)?;
        self.nodes[idx].set_sampling(&sampling);
        self.nodes[idx].reset_window(sampling.window_capacity(self.n_ctx));
        self.refill_window(idx);
        self.prefill_root(idx, &tokens[keep..], when)?;
        Ok(keep)
    }

    /// Records the log-probability of every token `root` samples from now on, with its
    /// step's `top` most likely tokens (as
    /// [`SessionParams::logprobs`](super::SessionParams::logprobs) does for a whole session;
    /// [`Session::node_logprobs`] reads them); `None` stops recording. Its branches record
    /// none. Needs host selection.
    pub fn set_root_logprobs(&mut self, root: NodeId, top: Option<usize>) -> Result<()> {
        let idx = self.root_index(root)?;
        if let Some(n) = top {
            if n > MAX_TOP_LOGPROBS {
                return Err(Error::InvalidArgument(format!(
                    "logprobs {n}: at most {MAX_TOP_LOGPROBS} alternatives per token"
                )));
            }
            if !matches!(self.params.selection, Selection::Host) {
                return Err(Error::InvalidArgument(
                    "log-probabilities need the full logit row of every step: use Selection::Host".into(),
                ));
            }
        }
        self.nodes[idx].set_logprobs_top(top);
        Ok(())
    }

    /// Closes a conversation: stops whatever of it still runs (its pending tokens are never
    /// decoded, and no event is sent), removes the cells of the root and of every branch under
    /// it, and returns their sequence ids. The root's handle is invalid afterwards.
    pub fn close_root(&mut self, root: NodeId) -> Result<()> {
        let idx = self.root_index(root)?;
        self.queued.retain(|q| q.node != idx);
        for i in idx..self.nodes.len() {
            if !self.nodes[i].is_alive() || self.root_of_index(i) != idx {
                continue;
            }
            if self.nodes[i].is_decoding() {
                self.nodes[i].stop_undecoded(StopReason::Cancelled);
            }
            let seq = self.nodes[i].seq();
            self.ctx.seq_rm(seq, -1);
            self.pool.give_back(seq);
            self.nodes[i].release();
        }
        Ok(())
    }

    /// KV cells a conversation holds: its root's and every live branch's own.
    pub fn root_cells(&self, root: NodeId) -> Result<u64> {
        let idx = self.root_index(root)?;
        let branches: u64 = (idx + 1..self.nodes.len())
            .filter(|&i| self.nodes[i].is_alive() && self.root_of_index(i) == idx)
            .map(|i| self.nodes[i].own_cells())
            .sum();
        Ok(self.nodes[idx].cells() + branches)
    }

    /// The root (or the trunk) a node belongs to.
    pub fn root_of(&self, node: NodeId) -> Option<NodeId> {
        (node.0 < self.nodes.len()).then(|| NodeId(self.root_of_index(node.0)))
    }

    /// The structure and text of one conversation: [`Session::transcript`] for a root.
    pub fn root_transcript(&self, root: NodeId) -> Result<Transcript> {
        let idx = self.root_index(root)?;
        let (trunk, flat) = report(&self.nodes, &self.blocks, idx);
        Ok(Transcript { text: String::from_utf8_lossy(&flat).into_owned(), trunk })
    }

    /// The flattened text of a conversation (prompt included) as far as it is settled: up
    /// to its first block still open, whose branches are growing. What a stream can send.
    pub fn root_settled_bytes(&self, root: NodeId) -> Result<Vec<u8>> {
        let idx = self.root_index(root)?;
        let mut out = Vec::new();
        settled_bytes(&self.nodes, &self.blocks, idx, &mut out);
        Ok(out)
    }

    /// The sampling parameters of a new root's tree: the caller's, with the session's
    /// penalties and bias (which every node shares, see [`Session::set_sampling`]).
    fn root_sampling(&self, sampling: &SamplingParams) -> Result<SamplingParams> {
        let session = &self.params.sampling;
        let sampling = SamplingParams {
            repeat_penalty: session.repeat_penalty,
            frequency_penalty: session.frequency_penalty,
            presence_penalty: session.presence_penalty,
            penalty_last_n: session.penalty_last_n,
            logit_bias: session.logit_bias.clone(),
            ..sampling.clone()
        };
        sampling.validate_for(self.model.n_vocab())?;
        Ok(sampling)
    }

    /// Refuses `n` more tokens when the KV cache cannot hold them.
    fn check_room(&self, n: usize) -> Result<()> {
        let queued: usize = self.queued.iter().map(|q| q.tokens.len()).sum();
        let need = self.kv_cells_used() as usize + queued + n;
        if need > self.n_ctx as usize {
            return Err(Error::PromptTooLong { tokens: need, n_ctx: self.n_ctx as usize });
        }
        Ok(())
    }

    /// The index of a live root (not the trunk).
    fn root_index(&self, root: NodeId) -> Result<usize> {
        let idx = self.live_node(root)?;
        if idx == 0 || self.nodes[idx].parent().is_some() {
            return Err(Error::InvalidArgument(format!("node {idx} is not a root opened by open_root")));
        }
        Ok(idx)
    }

    pub(super) fn root_of_index(&self, mut idx: usize) -> usize {
        while let Some(p) = self.nodes[idx].parent() {
            idx = p;
        }
        idx
    }

    /// The sampling parameters a branch forked from node `idx` starts from: its root's, or
    /// the session's under the trunk.
    pub(super) fn tree_sampling(&self, idx: usize) -> SamplingParams {
        match self.root_of_index(idx) {
            0 => self.params.sampling.clone(),
            root => self.nodes[root].sampling().clone(),
        }
    }
}
