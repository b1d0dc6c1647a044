//! Fork: branches that share their parent's cells (`seq_cp`, zero copy) and start at its next
//! position, or detached branches on prompts of their own; every branch prefix is prefilled in
//! one batch and each branch's first token sampled.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::layout_rules::JoinRule;
use crate::model::Token;

use super::tree::{Block, Node};
use super::{BranchSpec, NodeId, Session};

impl Session {
    /// Forks an idle node into branches that share its KV cells. Every branch starts at the
    /// parent's next position; its prefix (if any) is prefilled for all branches in one batch,
    /// and its first token is sampled. Call [`Session::run`] to decode them.
    pub fn fork(&mut self, parent: NodeId, specs: &[BranchSpec]) -> Result<Vec<NodeId>> {
        self.fork_impl(parent, specs, true)
    }

    /// Opens a block of *detached* branches: each runs from its own prefix alone (its own
    /// prompt, starting at position 0) and sees nothing of the parent — APR's sub-searches.
    /// They still decode in one batch per step with everything else. Such a block can only be
    /// joined with [`JoinMode::Discard`](super::JoinMode::Discard); the parent receives their results as text.
    pub fn fork_detached(&mut self, parent: NodeId, specs: &[BranchSpec]) -> Result<Vec<NodeId>> {
        if specs.iter().any(|s| s.prefix.is_empty() && s.prefix_tokens.is_empty()) {
            return Err(Error::InvalidArgument("a detached branch needs its own prompt as prefix".into()));
        }
        self.fork_impl(parent, specs, false)
    }

    pub(super) fn fork_impl(&mut self, parent: NodeId, specs: &[BranchSpec], shared: bool) -> Result<Vec<NodeId>> {
        let p = self.idle_node(parent, "fork")?;
        if specs.is_empty() {
            return Err(Error::InvalidArgument("a fork needs at least one branch".into()));
        }
        let depth = self.nodes[p].depth() + 1;
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
        let mut grammars = Vec::with_capacity(specs.len());
        for spec in specs {
            self.check_bans(&spec.limits)?;
            // A branch without a grammar of its own continues its parent's, when it sees it.
            grammars.push(match (self.run_grammar(&spec.limits)?, self.nodes[p].grammar()) {
                (Some(own), _) => Some(own),
                (None, Some(parent)) if shared => Some(parent.fork()?),
                (None, _) => None,
            });
        }
        if prefixes.iter().any(Vec::is_empty) && self.nodes[p].saved().is_empty() {
            return Err(Error::InvalidState(
                "a branch without prefix needs the parent's next-token logits: append text to \
                 the parent first"
                    .into(),
            ));
        }
        let seqs = self.pool.take(specs.len())?;

        let block_idx = self.blocks.len();
        let first_child = self.nodes.len();
        // Branches of a root draw as their root does; the trunk's as the session says.
        let sampling = self.tree_sampling(p);
        let window_capacity = sampling.window_capacity(self.n_ctx);
        for (i, &seq) in seqs.iter().enumerate() {
            if shared {
                // Zero copy: the child's id is added to every cell the parent can see.
                self.ctx.seq_cp(self.nodes[p].seq(), seq, -1);
            }
            let parent = &self.nodes[p];
            let mut child = Node::branch(parent, p, seq, i, &sampling, shared, window_capacity);
            child.set_grammar(grammars[i].take());
            if prefixes[i].is_empty() {
                child.inherit_scores(parent);
            }
            self.nodes.push(child);
        }
        let children: Vec<usize> = (first_child..first_child + specs.len()).collect();

        let work: Vec<(usize, &[Token])> =
            children.iter().zip(&prefixes).filter(|(_, t)| !t.is_empty()).map(|(&c, t)| (c, t.as_slice())).collect();
        let start = Instant::now();
        if let Err(e) = self.prefill(&work) {
            // Undo the fork: the children's ids leave the prefix cells and return to the pool.
            for &c in &children {
                let seq = self.nodes[c].seq();
                self.ctx.seq_rm(seq, -1);
                self.pool.give_back(seq);
            }
            self.nodes.truncate(first_child);
            return Err(e);
        }
        self.counters.prefill_time += start.elapsed();

        let prefix_cells = if shared { self.nodes[p].cells() } else { 0 };
        self.blocks.push(Block {
            children: children.clone(),
            fork_pos: if shared { self.nodes[p].next_pos() } else { 0 },
            prefix_cells,
            detached: !shared,
            join: None,
            rule: JoinRule::SameMax,
            reread: 0,
        });
        self.nodes[p].wait_on_block(block_idx);
        self.counters.blocks += 1;
        self.counters.branches += specs.len() as u64;
        self.counters.prefix_copies_avoided += (specs.len() as u64 - 1) * prefix_cells;

        for (&c, spec) in children.iter().zip(specs) {
            self.start_node(c, &spec.limits);
        }
        Ok(children.into_iter().map(NodeId).collect())
    }
}
