//! Scoring forced text: how likely the model found each token of a continuation, read off the
//! same decode that puts the continuation into the node's cells. A data pipeline uses it to
//! compare one text under two contexts (a branch that sees only the prefix and its own title,
//! against the serial text that sees every item before it) with the engine itself.

use crate::error::{Error, Result};
use crate::model::Token;

use super::sampling::Scores;
use super::{NodeId, Session};

impl Session {
    /// Appends `tokens` to an idle node, as [`Session::append_tokens`] does, and returns the
    /// natural-log probability the model gave each of them after everything the node sees
    /// before it: raw logits, untouched by the session's sampling parameters.
    ///
    /// The first token is scored with the node's saved next-token logits, so the node must
    /// have some (after a prompt, appended text or a stop); scoring needs full logit rows, so
    /// it is refused under device selection. On an error nothing is appended.
    pub fn score_tokens(&mut self, node: NodeId, tokens: &[Token]) -> Result<Vec<f32>> {
        let idx = self.idle_node(node, "score text on")?;
        self.check_tokens(tokens)?;
        if self.device_candidates.is_some() {
            return Err(Error::InvalidArgument("scoring reads full logit rows: use Selection::Host".into()));
        }
        let Some(&first) = tokens.first() else {
            return Err(Error::InvalidArgument("nothing to score: no tokens".into()));
        };
        let saved = self.nodes[idx].saved();
        if saved.is_empty() {
            return Err(Error::InvalidState(
                "the node has no next-token logits to score the first token with (prompt or \
                 append text first)"
                    .into(),
            ));
        }
        let mut logprobs = Vec::with_capacity(tokens.len());
        logprobs.push(log_probability(&saved.view(), first)?);
        let start = std::time::Instant::now();
        self.prefill_into(&[(idx, tokens)], true, Some(&mut logprobs))?;
        self.counters.prefill_time += start.elapsed();
        Ok(logprobs)
    }

    /// [`Session::score_tokens`] on text, tokenized on its own (no start token; special tokens
    /// parsed). A text that tokenizes differently when joined to what precedes it is scored as
    /// these tokens, which is what the node then holds.
    pub fn score_text(&mut self, node: NodeId, text: &str) -> Result<Vec<f32>> {
        let tokens = self.model.tokenize(text, false)?;
        self.score_tokens(node, &tokens)
    }
}

/// `ln softmax(row)[token]`, in f64 so that long rows do not lose the tail.
pub(super) fn log_probability(row: &Scores<'_>, token: Token) -> Result<f32> {
    let Scores::Full(logits) = row else {
        return Err(Error::Internal("scoring met a candidate row".into()));
    };
    let Some(&own) = usize::try_from(token).ok().and_then(|t| logits.get(t)) else {
        return Err(Error::Internal(format!("token {token} has no logit in a row of {}", logits.len())));
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    Ok((own as f64 - max - sum.ln()) as f32)
}
