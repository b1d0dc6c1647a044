//! What a session holds, read back: the transcript, the statistics, and each node's tokens,
//! text, position and state.

use crate::model::Token;
use crate::stats::{Counters, Stats};

use super::logprobs::TokenLogprob;
use super::report::{report, Transcript};
use super::tree::{Item, Node, Origin, StopReason};
use super::{NodeId, Session};

impl Session {
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
        let trunk = self.nodes[0].cells();
        let branches: u64 = self.nodes[1..].iter().filter(|n| n.is_alive()).map(|n| n.own_cells()).sum();
        trunk + branches
    }

    /// How many nodes the session has opened (the trunk, roots and branches, closed ones
    /// too): every [`NodeId`] handed out so far has an index below it.
    pub fn nodes_opened(&self) -> usize {
        self.nodes.len()
    }

    /// The node's label path ("" for the trunk).
    pub fn label(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(node.0).map(|n| n.label())
    }

    /// The position the node's next token will take.
    pub fn next_pos(&self, node: NodeId) -> Option<i32> {
        self.nodes.get(node.0).map(|n| n.next_pos())
    }

    /// Tokens the node decoded itself, in order (nested blocks excluded).
    pub fn node_tokens(&self, node: NodeId) -> Vec<Token> {
        self.nodes
            .get(node.0)
            .map(|n| {
                n.items()
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

    /// Where each of the node's own tokens ends, as a byte offset in its text (nested blocks
    /// excluded): token `i` covers bytes `ends[i - 1]..ends[i]`. Lets a caller map text
    /// offsets to token counts.
    pub fn node_token_ends(&self, node: NodeId) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut bytes = Vec::new();
        let mut end = 0;
        for t in self.node_tokens(node) {
            bytes.clear();
            self.model.token_bytes(t, &mut bytes);
            end += bytes.len();
            ends.push(end);
        }
        ends
    }

    /// Whether the node is generating (has a token waiting for the next step).
    pub fn is_running(&self, node: NodeId) -> bool {
        self.nodes.get(node.0).is_some_and(|n| n.is_alive() && n.is_decoding())
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
        self.nodes.get(node.0).and_then(|n| n.stop_reason())
    }

    /// Log-probabilities of the tokens the node generated, in order: empty unless the session
    /// records them ([`SessionParams::logprobs`](super::SessionParams::logprobs)). Forced text (prompt, prefixes, join text)
    /// has none.
    pub fn node_logprobs(&self, node: NodeId) -> &[TokenLogprob] {
        self.nodes.get(node.0).map_or(&[], |n| n.logprobs())
    }

    /// Logits of every token the node sampled (requires `record_logits`).
    #[doc(hidden)]
    pub fn logit_trace(&self, node: NodeId) -> &[Vec<f32>] {
        self.nodes.get(node.0).map_or(&[], |n| n.logit_trace())
    }

    /// Text generated on a node by items at or after `first_item`.
    pub(super) fn generated_text_from(&self, idx: usize, first_item: usize) -> String {
        String::from_utf8_lossy(&self.generated_bytes_from(idx, first_item)).into_owned()
    }

    /// The bytes behind [`Session::generated_text_from`].
    pub(super) fn generated_bytes_from(&self, idx: usize, first_item: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for item in self.nodes[idx].items().iter().skip(first_item) {
            if let Item::Text { origin: Origin::Generated, bytes: b, .. } = item {
                bytes.extend_from_slice(b);
            }
        }
        bytes
    }
}
