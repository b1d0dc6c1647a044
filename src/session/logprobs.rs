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

/// ln Σ exp(l), shifted by the maximum so no term overflows; NaN logits are skipped.
///
/// The terms are summed in f32 by chunks of 64 (a relative error below 1e-5 per chunk) and the
/// chunks in f64, with a branch-free exp the compiler vectorises: libm's exp, one call per
/// logit, cost 0.4 ms per 49k-token row (6 ms a step at B = 16, `pardec bench
/// --sampling-costs`).
fn log_sum_exp(row: &[f32]) -> f64 {
    let (max, has_nan) = max_and_nan(row);
    if max == f32::NEG_INFINITY {
        return f64::INFINITY; // nothing possible: every log-probability is -inf
    }
    if has_nan || max == f32::INFINITY {
        // Degenerate rows (+inf - +inf is NaN) keep the plain f64 sum, NaN terms skipped.
        let sum: f64 = row.iter().filter(|l| !l.is_nan()).map(|&l| (f64::from(l) - f64::from(max)).exp()).sum();
        return f64::from(max) + sum.ln();
    }
    let mut total = 0f64;
    for chunk in row.chunks(64) {
        let mut lanes = [0f32; 8];
        let mut eights = chunk.chunks_exact(8);
        for c in &mut eights {
            for (lane, &l) in lanes.iter_mut().zip(c) {
                *lane += exp_nonpositive(l - max);
            }
        }
        let rest: f32 = eights.remainder().iter().map(|&l| exp_nonpositive(l - max)).sum();
        total += f64::from(lanes.iter().sum::<f32>() + rest);
    }
    f64::from(max) + total.ln()
}

/// The largest logit that is not NaN (-inf for none), and whether the row holds a NaN: one
/// pass in eight lanes, which a comparison ignoring NaN lets the compiler vectorise.
fn max_and_nan(row: &[f32]) -> (f32, bool) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut nan = [false; 8];
    let mut eights = row.chunks_exact(8);
    for c in &mut eights {
        for ((m, n), &l) in lanes.iter_mut().zip(&mut nan).zip(c) {
            *m = if l > *m { l } else { *m };
            *n |= l.is_nan();
        }
    }
    let mut max = lanes.into_iter().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    let mut has_nan = nan.contains(&true);
    for &l in eights.remainder() {
        max = if l > max { l } else { max };
        has_nan |= l.is_nan();
    }
    (max, has_nan)
}

/// e^x for x ≤ 0, to about 2e-7 relative, without branches or calls: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its Taylor series to r⁶ (error r⁷/7! < 1.2e-7), 2^n built in the
/// exponent bits. Below -87 (e^-87 ≈ 1.6e-38, the smallest normal f32) it returns e^-87,
/// which no sum of a vocabulary's terms can notice.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cody and Waite), so n·LN2_HI is exact for the n that occur here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in -126..=0: the low bits of `shifted` hold it in two's complement.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((n_bits + 127) as u32) << 23)
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
pub(super) fn most_likely(row: &[f32], n: usize) -> Vec<Token> {
    if n == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Kept> = BinaryHeap::with_capacity(n + 1);
    // Once the heap is full, the logit a token must beat: a later id with an equal logit
    // loses the tie, so only a strictly greater one enters (and NaN never compares greater).
    let mut bar = f32::NEG_INFINITY;
    for (i, &l) in row.iter().enumerate() {
        if heap.len() == n && l.partial_cmp(&bar) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        if l.is_nan() {
            continue;
        }
        heap.push(Kept(l, i as Token));
        if heap.len() > n {
            heap.pop();
        }
        if heap.len() == n {
            bar = heap.peek().map_or(f32::NEG_INFINITY, |worst| worst.0);
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
        let total: f64 =
            row.iter().enumerate().map(|(t, _)| f64::from(token_logprob(&row, t as Token, 0).logprob).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to {total}");
        assert_eq!(token_logprob(&row, 4, 0).logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn the_vectorised_sum_matches_f64_on_vocabulary_sized_rows() {
        // A deterministic spread of logits like a model's: a few high, most far below.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for (len, spread) in [(49_152usize, 30.0f32), (262_144, 45.0), (37, 5.0), (100_003, 200.0)] {
            let row: Vec<f32> = (0..len).map(|_| spread * (next() - 0.8)).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want = f64::from(max) + row.iter().map(|&l| (f64::from(l) - f64::from(max)).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&row);
            assert!((got - want).abs() < 1e-5, "{len} logits: {got} vs {want}");
        }
        for x in [0.0f32, -1e-6, -0.3465, -0.3466, -1.0, -10.5, -50.0, -86.9] {
            let (got, want) = (f64::from(exp_nonpositive(x)), f64::from(x).exp());
            assert!((got / want - 1.0).abs() < 5e-7, "e^{x}: {got} vs {want}");
        }
        assert!(exp_nonpositive(-1000.0) <= 2e-38 && exp_nonpositive(f32::NEG_INFINITY) <= 2e-38);
    }

    #[test]
    fn top_n_larger_than_the_row_lists_every_token_and_nan_never() {
        let row = [0.5f32, f32::NAN, -1.0];
        let lp = token_logprob(&row, 0, 10);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!(lp.top.iter().all(|t| t.1 <= 0.0));
    }
}
