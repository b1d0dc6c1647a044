//! A branch's sampler: greedy or stochastic selection over a full logit row or a candidate
//! set, with bans, logit adjustments and the branch's random stream.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::argmax::{argmax, lanes_max};
use super::params::SamplingParams;
use super::random::{branch_seed, SplitMix64};
use crate::model::Token;
use crate::session::penalties::{Adjustments, PenaltyWindow};

/// Whether `t` is in `banned`, a sorted list (the session sorts each run's bans once, so a
/// ban list as long as the vocabulary costs a binary search per logit, not a scan).
fn is_banned(banned: &[Token], t: Token) -> bool {
    !banned.is_empty() && banned.binary_search(&t).is_ok()
}

/// One output row's next-token scores: the full logit row (host selection), or the
/// candidates the backend kept for it (device selection; unordered).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scores<'a> {
    Full(&'a [f32]),
    Candidates { ids: &'a [Token], logits: &'a [f32] },
}

/// Scores kept for a node's next sample: after a prefill, at a stop (for a later resume),
/// and copied into branches forked without a prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct SavedScores {
    logits: Vec<f32>,
    /// Empty: `logits` is a full row. Otherwise `logits[i]` belongs to token `ids[i]`.
    ids: Vec<Token>,
}

impl SavedScores {
    pub(crate) fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.logits.clear();
        self.ids.clear();
    }

    pub(crate) fn store(&mut self, scores: Scores<'_>) {
        self.clear();
        match scores {
            Scores::Full(row) => self.logits.extend_from_slice(row),
            Scores::Candidates { ids, logits } => {
                self.ids.extend_from_slice(ids);
                self.logits.extend_from_slice(logits);
            }
        }
    }

    pub(crate) fn view(&self) -> Scores<'_> {
        if self.ids.is_empty() {
            Scores::Full(&self.logits)
        } else {
            Scores::Candidates { ids: &self.ids, logits: &self.logits }
        }
    }
}

/// A candidate ranked as `draw` orders them: higher scaled logit first, then lower token id.
/// Only finite logits are ranked (so the order is total; -0.0 and 0.0 tie, as in `draw`).
#[derive(Debug, Clone, Copy)]
struct Ranked(f32, u32);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by_logit = self.0.partial_cmp(&other.0).unwrap_or(std::cmp::Ordering::Equal);
        by_logit.then(other.1.cmp(&self.1))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A branch's sampler: parameters, random stream and reusable scratch space.
#[derive(Debug, Clone)]
pub(crate) struct BranchSampler {
    params: SamplingParams,
    rng: SplitMix64,
    scratch: Vec<(f32, u32)>,
    /// A copy of the logit row with the bias and penalties applied (reused every step).
    adjusted: Vec<f32>,
    /// A copy of the logit row with the tokens a grammar rejects masked (reused).
    masked: Vec<f32>,
    /// The k best candidates of a full row while it is scanned (worst on top).
    best_k: BinaryHeap<Reverse<Ranked>>,
}

impl BranchSampler {
    pub(crate) fn new(params: &SamplingParams, path: &[u32]) -> Self {
        BranchSampler {
            params: params.clone(),
            rng: SplitMix64(branch_seed(params.seed, path)),
            scratch: Vec::new(),
            adjusted: Vec::new(),
            masked: Vec::new(),
            best_k: BinaryHeap::new(),
        }
    }

    /// The parameters this sampler draws with.
    pub(crate) fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// [`BranchSampler::sample_sorted`] for a ban list in any order (tests pass literal ones).
    #[cfg(test)]
    pub(crate) fn sample(&mut self, scores: Scores<'_>, banned: &[Token]) -> Token {
        let mut sorted = banned.to_vec();
        sorted.sort_unstable();
        self.sample_sorted(scores, &sorted)
    }

    /// The buffer for a grammar-masked row (handed back with `give_masked_row`).
    pub(crate) fn take_masked_row(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.masked)
    }

    pub(crate) fn give_masked_row(&mut self, row: Vec<f32>) {
        self.masked = row;
    }

    /// [`BranchSampler::sample_sorted`] after the logit bias and the penalties over `window`
    /// (on a copy of the row: llama.cpp's rows are read-only). Candidate sets are used as they
    /// are: the session refuses adjustments with device selection.
    pub(crate) fn sample_adjusted(
        &mut self,
        scores: Scores<'_>,
        banned: &[Token],
        adjustments: &Adjustments<'_>,
        window: &PenaltyWindow,
    ) -> Token {
        match scores {
            Scores::Full(row) if adjustments.any() => {
                let mut adjusted = std::mem::take(&mut self.adjusted);
                adjusted.clear();
                adjusted.extend_from_slice(row);
                adjustments.apply(&mut adjusted, window);
                let token = self.sample_sorted(Scores::Full(&adjusted), banned);
                self.adjusted = adjusted;
                token
            }
            _ => self.sample_sorted(scores, banned),
        }
    }

    /// How many of a row's best tokens this sampler can ever pick: 1 when greedy, `top_k`
    /// when sampling is truncated to it, `None` when any finite logit may be drawn.
    pub(crate) fn reach(&self) -> Option<usize> {
        match (self.params.is_greedy(), self.params.top_k) {
            (true, _) => Some(1),
            (false, 0) => None,
            (false, k) => Some(k),
        }
    }

    /// Picks the next token. `banned` tokens, a sorted list (the session sorts each run's once),
    /// are never chosen while another is possible.
    ///
    /// Full rows and candidate sets go through the same selection, so a candidate set that
    /// holds the row's top `top_k` logits gives the very token the full row gives (up to
    /// exact ties at its edge); with `top_k` off or larger, sampling is truncated to the set.
    pub(crate) fn sample_sorted(&mut self, scores: Scores<'_>, banned: &[Token]) -> Token {
        match scores {
            Scores::Full(logits) if self.params.is_greedy() => {
                let best = argmax(logits) as Token;
                if !is_banned(banned, best) {
                    return best;
                }
                greedy_with_bans(logits, banned)
            }
            Scores::Candidates { ids, logits } if self.params.is_greedy() => best_candidate(ids, logits, banned),
            Scores::Full(logits) if self.params.top_k > 0 && self.params.top_k < logits.len() => {
                self.top_k_of_row(logits, banned);
                if self.scratch.is_empty() {
                    return argmax(logits) as Token;
                }
                self.draw()
            }
            Scores::Full(logits) => {
                let inv_t = 1.0 / self.params.temperature;
                self.scratch.clear();
                self.scratch.extend(
                    logits
                        .iter()
                        .enumerate()
                        .filter(|(i, v)| v.is_finite() && !is_banned(banned, *i as Token))
                        .map(|(i, &v)| (v * inv_t, i as u32)),
                );
                if self.scratch.is_empty() {
                    return argmax(logits) as Token;
                }
                self.draw()
            }
            Scores::Candidates { ids, logits } => {
                let inv_t = 1.0 / self.params.temperature;
                self.scratch.clear();
                self.scratch.extend(
                    ids.iter()
                        .zip(logits)
                        .filter(|(t, v)| v.is_finite() && **t >= 0 && !is_banned(banned, **t))
                        .map(|(&t, &v)| (v * inv_t, t as u32)),
                );
                if self.scratch.is_empty() {
                    return best_candidate(ids, logits, banned);
                }
                self.draw()
            }
        }
    }

    /// Fills `scratch` with the row's `top_k` best scaled logits (bans and non-finite values
    /// skipped) in one pass. Once k are kept, a chunk of 64 values whose maximum cannot beat
    /// the worst kept one is skipped after a vectorisable max, so the pass costs about an
    /// argmax instead of building and partially sorting the whole row (`pardec bench --temp
    /// 0.8 --top-k 40` shows the host time per step). Same set, same order rule as `draw`.
    fn top_k_of_row(&mut self, logits: &[f32], banned: &[Token]) {
        const CHUNK: usize = 64;
        let k = self.params.top_k;
        let inv_t = 1.0 / self.params.temperature;
        let heap = &mut self.best_k;
        heap.clear();
        for (c, chunk) in logits.chunks(CHUNK).enumerate() {
            if heap.len() == k {
                let max = lanes_max(chunk);
                // Strictly below the worst kept value: nothing here can enter, not even by
                // a tie on the logit won by a lower id.
                if matches!(heap.peek(), Some(Reverse(worst)) if max * inv_t < worst.0) {
                    continue;
                }
            }
            for (j, &v) in chunk.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let i = c * CHUNK + j;
                let cand = Ranked(v * inv_t, i as u32);
                if heap.len() == k && !matches!(heap.peek(), Some(Reverse(worst)) if cand > *worst) {
                    continue;
                }
                if is_banned(banned, i as Token) {
                    continue;
                }
                if heap.len() == k {
                    heap.pop();
                }
                heap.push(Reverse(cand));
            }
        }
        self.scratch.clear();
        self.scratch.extend(heap.drain().map(|Reverse(Ranked(s, i))| (s, i)));
    }

    /// Top-k, softmax, min-p, top-p and one draw over the scaled candidates in `scratch`
    /// (non-empty), ordered by logit then token id so the result does not depend on the
    /// order the candidates came in.
    fn draw(&mut self) -> Token {
        let p = &self.params;
        let cand = &mut self.scratch;
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| {
            b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1))
        };
        // Top-k first: it bounds the sort below to k elements.
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit_desc);
        // Softmax in place (probabilities replace scaled logits).
        let max = cand[0].0;
        let mut sum = 0.0f64;
        for c in cand.iter_mut() {
            c.0 = (c.0 - max).exp();
            sum += f64::from(c.0);
        }
        let top_prob = f64::from(cand[0].0) / sum;
        let mut keep = cand.len();
        if p.min_p > 0.0 {
            let floor = f64::from(p.min_p) * top_prob;
            keep = cand.iter().take_while(|c| f64::from(c.0) / sum >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, c) in cand.iter().take(keep).enumerate() {
                acc += f64::from(c.0) / sum;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept_sum: f64 = cand[..keep].iter().map(|c| f64::from(c.0)).sum();
        let mut r = self.rng.next_f64() * kept_sum;
        for c in &cand[..keep] {
            r -= f64::from(c.0);
            if r < 0.0 {
                return c.1 as Token;
            }
        }
        cand[keep - 1].1 as Token
    }
}

fn greedy_with_bans(logits: &[f32], banned: &[Token]) -> Token {
    let mut best: Option<usize> = None;
    for (i, &v) in logits.iter().enumerate() {
        if is_banned(banned, i as Token) {
            continue;
        }
        if best.map_or(true, |b| v > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as Token
}

/// The highest-scoring candidate that is not banned (lowest id on ties, as a full-row argmax
/// would pick); the first candidate when every one is banned or not a number (the session
/// keeps bans fewer than the candidates, so that cannot happen with finite logits).
fn best_candidate(ids: &[Token], logits: &[f32], banned: &[Token]) -> Token {
    let mut best: Option<(f32, Token)> = None;
    for (&t, &v) in ids.iter().zip(logits) {
        if is_banned(banned, t) || v.is_nan() {
            continue;
        }
        if best.map_or(true, |(bv, bt)| v > bv || (v == bv && t < bt)) {
            best = Some((v, t));
        }
    }
    best.map_or_else(|| ids.first().copied().unwrap_or(0), |(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanishing_temperature_is_greedy() {
        // 1/T overflowed to infinity and the scaled row became NaN: the least likely token won.
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32 * 0.01).collect();
        let best = argmax(&logits) as Token;
        for t in [1e-38f32, f32::MIN_POSITIVE, 1e-30, 1e-21] {
            let params = SamplingParams { temperature: t, seed: 3, ..Default::default() };
            assert!(params.is_greedy());
            let mut s = BranchSampler::new(&params, &[0]);
            assert_eq!(s.sample(Scores::Full(&logits), &[]), best, "temperature {t:e}");
        }
        assert!(!SamplingParams { temperature: 1e-3, ..Default::default() }.is_greedy());
    }

    #[test]
    fn a_ban_list_as_long_as_the_vocabulary_leaves_the_one_allowed_token() {
        // Sorted, as session runs pass them (an unsorted list is sorted by the sampler).
        let logits: Vec<f32> = (0..50_000).map(|i| (i % 97) as f32).collect();
        let mut banned: Vec<Token> = (0..50_000).filter(|&t| t != 12_345).collect();
        banned.extend(0..1000); // repeats, as a caller might pass
        banned.sort_unstable();
        banned.dedup();
        for params in
            [SamplingParams::greedy(), SamplingParams { temperature: 0.8, top_k: 40, seed: 1, ..Default::default() }]
        {
            let mut s = BranchSampler::new(&params, &[0]);
            assert_eq!(s.sample(Scores::Full(&logits), &banned), 12_345, "{params:?}");
        }
        assert!(is_banned(&banned, 0) && !is_banned(&banned, 12_345) && !is_banned(&[], 3));
    }

    #[test]
    fn stochastic_sampling_respects_top_k_and_bans() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32 * 0.1).collect();
        let params = SamplingParams { temperature: 1.0, top_k: 3, seed: 9, ..Default::default() };
        let mut s = BranchSampler::new(&params, &[0]);
        for _ in 0..200 {
            let t = s.sample(Scores::Full(&logits), &[99]);
            assert!((96..=98).contains(&t), "token {t} outside the top 3 after the ban");
        }
        let mut g = BranchSampler::new(&SamplingParams::greedy(), &[]);
        assert_eq!(g.sample(Scores::Full(&logits), &[99, 98]), 97);
    }

    /// A row's best `k` logits, shuffled (the backend gives them in no order).
    fn top_candidates(logits: &[f32], k: usize, shuffle_seed: u64) -> (Vec<Token>, Vec<f32>) {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
        idx.truncate(k);
        let mut rng = SplitMix64(shuffle_seed);
        for i in (1..idx.len()).rev() {
            idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        (idx.iter().map(|&i| i as Token).collect(), idx.iter().map(|&i| logits[i]).collect())
    }

    #[test]
    fn candidate_sets_pick_what_full_rows_pick() {
        let mut rng = SplitMix64(11);
        for round in 0..200u64 {
            let logits: Vec<f32> = (0..500).map(|_| (rng.next_f64() * 12.0 - 6.0) as f32).collect();
            let (ids, vals) = top_candidates(&logits, 64, round);
            let cand = Scores::Candidates { ids: &ids, logits: &vals };
            let banned = [argmax(&logits) as Token];
            let greedy = SamplingParams::greedy();
            let sampled = SamplingParams {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.01,
                seed: round,
                ..Default::default()
            };
            for (params, bans) in
                [(&greedy, &[][..]), (&greedy, &banned[..]), (&sampled, &[][..]), (&sampled, &banned[..])]
            {
                let mut full = BranchSampler::new(params, &[1, 2]);
                let mut sparse = BranchSampler::new(params, &[1, 2]);
                for _ in 0..5 {
                    assert_eq!(
                        full.sample(Scores::Full(&logits), bans),
                        sparse.sample(cand, bans),
                        "round {round}, {params:?}, bans {bans:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn candidate_ties_resolve_to_the_lowest_id_and_bans_hold() {
        let ids = [9, 4, 7, 2];
        let logits = [1.0, 3.0, 3.0, f32::NAN];
        assert_eq!(best_candidate(&ids, &logits, &[]), 4);
        assert_eq!(best_candidate(&ids, &logits, &[4]), 7);
        assert_eq!(best_candidate(&ids, &logits, &[4, 7]), 9);
        assert_eq!(best_candidate(&ids, &logits, &[4, 7, 9]), 9, "all banned or NaN: the first candidate");
        let saved = {
            let mut s = SavedScores::default();
            s.store(Scores::Candidates { ids: &ids, logits: &logits });
            s
        };
        assert!(matches!(saved.view(), Scores::Candidates { ids: [9, 4, 7, 2], .. }));
    }

    #[test]
    fn one_pass_top_k_draws_what_the_full_sort_draws() {
        // Quantised logits make many exact ties, at the top-k edge too.
        let mut rng = SplitMix64(5);
        for round in 0..300u64 {
            let logits: Vec<f32> =
                (0..2000).map(|i| if i % 97 == 5 { f32::NAN } else { (rng.next_u64() % 40) as f32 * 0.25 }).collect();
            let banned = [(rng.next_u64() % 2000) as Token, (rng.next_u64() % 2000) as Token];
            let params = SamplingParams {
                temperature: 0.7,
                top_k: 1 + (round as usize % 60),
                top_p: 0.9,
                min_p: 0.0,
                seed: round,
                ..Default::default()
            };
            let mut fast = BranchSampler::new(&params, &[3]);
            let mut reference = BranchSampler::new(&params, &[3]);
            for _ in 0..4 {
                let a = fast.sample(Scores::Full(&logits), &banned);
                // The reference: every candidate built, then `draw`'s select_nth and sort.
                let inv_t = 1.0 / params.temperature;
                reference.scratch.clear();
                reference.scratch.extend(
                    logits
                        .iter()
                        .enumerate()
                        .filter(|(i, v)| v.is_finite() && !banned.contains(&(*i as Token)))
                        .map(|(i, &v)| (v * inv_t, i as u32)),
                );
                let b = reference.draw();
                assert_eq!(a, b, "round {round}, top_k {}", params.top_k);
            }
        }
    }
}
