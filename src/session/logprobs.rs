//! Log-probabilities of sampled tokens: the model's own distribution at each step (the
//! log-softmax of the raw logit row, before bias, penalties, temperature or truncation, as
//! llama-cpp-python reports them), for the chosen token and the most likely alternatives.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;

use crate::model::Token;

/// Most alternatives per token [`SessionParams::logprobs`](super::SessionParams::logprobs)
/// may ask for (each costs a heap entry per logit scanned; OpenAI's API allows 20).
pub const MAX_TOP_LOGPROBS: usize = 100;

/// One generated token with its log-probability and the step's most likely tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// KV position of the token in its node.
    pub pos: i32,
    /// The token the node committed.
    pub token: Token,
    /// Its natural-log probability under the model (≤ 0; -inf if its logit was -inf).
    pub logprob: f32,
    /// The `n` most likely tokens of the step with their log-probabilities, most likely first
    /// (ties: lower id first); `n` is the session's `logprobs` setting.
    pub top: Vec<(Token, f32)>,
}

/// Log-probabilities of `token` and the `top_n` most likely tokens of `row` (indexed by id).
/// `pos` is filled in when the token is committed.
pub(crate) fn token_logprob(row: &[f32], token: Token, top_n: usize) -> TokenLogprob {
    let lse = log_sum_exp(row);
    let at = |t: Token| row.get(t as usize).map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - lse) as f32);
    let top = most_likely(row, top_n).into_iter().map(|t| (t, at(t))).collect();
    TokenLogprob { pos: -1, token, logprob: at(token), top }
}

/// ln Σ exp(l), in f64 and shifted by the maximum so no term overflows; NaN logits are skipped.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::INFINITY; // nothing possible: every log-probability is -inf
    }
    let max = f64::from(max);
    let sum: f64 = row.iter().filter(|l| !l.is_nan()).map(|&l| (f64::from(l) - max).exp()).sum();
    max + sum.ln()
}

/// A heap entry ordered so the heap's top is the *least* likely kept token (evicted first).
#[derive(PartialEq)]
struct Kept(f32, Token);

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        // Greater = worse: lower logit, then (on ties) the higher id.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// The ids of the `n` largest finite-or-infinite (not NaN) logits, largest first, lower id
/// first on ties: one pass with a heap of `n`, no copy of the row.
fn most_likely(row: &[f32], n: usize) -> Vec<Token> {
    if n == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Kept> = BinaryHeap::with_capacity(n + 1);
    for (i, &l) in row.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        let entry = Kept(l, i as Token);
        if heap.len() < n {
            heap.push(entry);
        } else if heap.peek().is_some_and(|worst| entry < *worst) {
            heap.pop();
            heap.push(entry);
        }
    }
    heap.into_sorted_vec().into_iter().map(|Kept(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_are_a_normalised_log_softmax() {
        let row = [1.0f32, 3.0, 2.0, 3.0, f32::NEG_INFINITY];
        let lp = token_logprob(&row, 2, 3);
        let z: f64 = row.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(lp.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        // Ties keep the lower id first; the -inf token is last possible and never beats these.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f64 = row.iter().enumerate().map(|(t, _)| f64::from(token_logprob(&row, t as Token, 0).logprob).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to {total}");
        assert_eq!(token_logprob(&row, 4, 0).logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn top_n_larger_than_the_row_lists_every_token_and_nan_never() {
        let row = [0.5f32, f32::NAN, -1.0];
        let lp = token_logprob(&row, 0, 10);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!(lp.top.iter().all(|t| t.1 <= 0.0));
    }
}
