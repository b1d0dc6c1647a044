//! Prompt and forced text: what the caller puts into a node (the prompt, appended text, a
//! branch prefix, a join text) is decoded in batches of at most `n_batch` tokens, every node's
//! tokens at its own next positions, and recorded in its text — or, for a join's re-read, only
//! in its cells. Also the two ways back: `rewind` (forget a node's tail) and `uncache_tail`
//! (keep the text, drop the cells).

use std::time::Instant;

use crate::error::{Error, Result};
use crate::model::Token;

use super::score::log_probability;
use super::step::row_scores;
use super::tree::Item;
use super::{BatchEntry, NodeId, Origin, Session};

impl Session {
    /// Appends text to the trunk (the model's special tokens in it are parsed). The first
    /// text of a session gets the model's start token if its metadata asks for one.
    pub fn prompt(&mut self, text: &str) -> Result<()> {
        if text.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        // A text that cannot fit is refused before tokenizing it (200 MB took a minute and
        // gigabytes): every token covers at most max_token_bytes of it.
        let have = self.kv_cells_used() as usize;
        let at_least = text.len().div_ceil(self.model.max_token_bytes());
        if have + at_least > self.n_ctx as usize {
            return Err(Error::PromptTooLong { tokens: have + at_least, n_ctx: self.n_ctx as usize });
        }
        let add_bos = self.nodes[0].next_pos() == 0;
        let tokens = self.model.tokenize(text, add_bos)?;
        self.prompt_tokens(&tokens)
    }

    /// [`Session::prompt`] for bytes from outside Rust: rejects invalid UTF-8.
    pub fn prompt_bytes(&mut self, text: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(text)
            .map_err(|e| Error::InvalidUtf8(format!("prompt byte {} starts an invalid sequence", e.valid_up_to())))?;
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
        for (i, item) in self.nodes[idx].items().iter().enumerate() {
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
        let from = node_ref.rewind(first_item, kept_in_item, removed, &self.model);
        let seq = node_ref.seq();
        self.ctx.seq_rm(seq, from);
        self.refill_window(idx);
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
        for item in self.nodes[idx].items().iter().rev() {
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
        let seq = node_ref.seq();
        let from = node_ref.uncache_tail(n);
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

    /// Prefills forced tokens into several nodes at once (one batch, split beyond n_batch).
    /// Each node gets logits for its last token, saved for its next sample. On failure every
    /// node's cells written here are removed again.
    pub(super) fn prefill(&mut self, work: &[(usize, &[Token])]) -> Result<()> {
        self.prefill_into(work, true, None)
    }

    /// Decodes tokens into one node's cells without adding them to its text: a join's re-read
    /// of text the transcript already holds. Its next-token logits are saved as usual.
    pub(super) fn prefill_unrecorded(&mut self, idx: usize, tokens: &[Token]) -> Result<()> {
        self.prefill_into(&[(idx, tokens)], false, None)
    }

    /// The prefill itself. With `scores`, every row's logits are read and the log-probability
    /// of the token that follows in the same node is pushed (see `score.rs`).
    pub(super) fn prefill_into(
        &mut self,
        work: &[(usize, &[Token])],
        record: bool,
        mut scores: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let mut entries = Vec::new();
        for &(idx, tokens) in work {
            let pos0 = self.nodes[idx].next_pos();
            for (i, &t) in tokens.iter().enumerate() {
                entries.push(BatchEntry {
                    node: idx,
                    token: t,
                    pos: pos0 + i as i32,
                    logits: scores.is_some() || i + 1 == tokens.len(),
                    queued_prompt: false,
                });
            }
        }
        let starts: Vec<(usize, i32)> = work.iter().map(|&(i, _)| (i, self.nodes[i].next_pos())).collect();
        let mut bytes = Vec::new();
        for (chunk_index, chunk) in entries.chunks(self.n_batch).enumerate() {
            if let Err(e) = self.decode_chunk(chunk) {
                for &(idx, pos0) in &starts {
                    let seq = self.nodes[idx].seq();
                    self.ctx.seq_rm(seq, pos0);
                    self.rollback_node(idx, pos0, record);
                }
                return Err(e);
            }
            for (row, entry) in chunk.iter().enumerate() {
                let node = &mut self.nodes[entry.node];
                if record {
                    bytes.clear();
                    self.model.token_bytes(entry.token, &mut bytes);
                    node.push_token(Origin::Forced, entry.token, &bytes);
                } else {
                    node.push_unrecorded();
                }
                let next = entries.get(chunk_index * self.n_batch + row + 1).filter(|n| n.node == entry.node);
                if let (Some(sink), Some(next)) = (scores.as_deref_mut(), next) {
                    let row = row_scores(&self.ctx, self.device_candidates.is_some(), row as i32)?;
                    sink.push(log_probability(&row, next.token)?);
                }
                if entry.logits && next.is_none() {
                    let scores = row_scores(&self.ctx, self.device_candidates.is_some(), row as i32)?;
                    self.nodes[entry.node].save_scores(scores);
                }
            }
            self.counters.prefill_tokens += chunk.len() as u64;
        }
        Ok(())
    }

    /// Forgets tokens committed at positions ≥ pos0 by a prefill that failed part-way.
    pub(super) fn rollback_node(&mut self, idx: usize, pos0: i32, recorded: bool) {
        if self.nodes[idx].roll_back(pos0, recorded, &self.model) {
            self.refill_window(idx);
        }
    }

    /// Rebuilds a node's penalty window from the text it sees (after tokens were taken back).
    pub(super) fn refill_window(&mut self, idx: usize) {
        let mut seen = Vec::new();
        super::tree::seen_tokens(&self.nodes, &self.blocks, idx, &mut seen);
        self.nodes[idx].refill_window(&seen);
    }
}
