//! What a session holds, as the caller reads it back: the transcript of the tree, every node
//! with its text pieces and blocks, nested branches included.

use serde::Serialize;

use super::logprobs::TokenLogprob;
use super::tree::{is_kept, Block, Item, JoinMode, Node, Origin, StopReason};
use crate::layout_rules::JoinRule;
use crate::model::Token;

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

/// The flattened text of node `idx` up to its first block that is still open: what no later
/// step can change (a growing branch would otherwise shift what follows it).
pub(crate) fn settled_bytes(nodes: &[Node], blocks: &[Block], idx: usize, out: &mut Vec<u8>) {
    for item in nodes[idx].items() {
        match item {
            Item::Text { bytes, .. } => out.extend_from_slice(bytes),
            Item::Block(b) if blocks[*b].join.is_none() => return,
            Item::Block(b) => {
                let block = &blocks[*b];
                for (i, &c) in block.children.iter().enumerate() {
                    if is_kept(block, i) {
                        settled_bytes(nodes, blocks, c, out);
                    }
                }
            }
        }
    }
}

pub(crate) fn report(nodes: &[Node], blocks: &[Block], idx: usize) -> (NodeReport, Vec<u8>) {
    let node = &nodes[idx];
    let mut flat = Vec::new();
    let mut items = Vec::new();
    let mut tokens = 0;
    for item in node.items() {
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
            label: node.label().to_owned(),
            tokens,
            text,
            stop_reason: node.stop_reason().cloned(),
            items,
            logprobs: node.logprobs().to_vec(),
        },
        flat,
    )
}
