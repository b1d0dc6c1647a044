//! Logit adjustments made before a token is chosen: the logit bias and llama.cpp's repetition,
//! frequency and presence penalties, over a window of the tokens each node has seen.
//!
//! The semantics are llama.cpp's `llama_sampler_init_logit_bias` and
//! `llama_sampler_init_penalties`, applied in that order (as `common_sampler` chains them):
//! a bias is added to its token's logit; then every token seen `c > 0` times in the window has
//! its logit divided by `repeat_penalty` when positive (multiplied when not), and lowered by
//! `c × frequency_penalty + presence_penalty`.
//!
//! The window holds the last `penalty_last_n` tokens of the node's text as it sees it: the
//! prompt and appended text, what it sampled, and, for a branch, its parent's window at the
//! fork followed by its own tokens. A join appends the kept branches' tokens, in order, to the
//! parent's window. Siblings never enter each other's windows.

use std::collections::{HashMap, VecDeque};

use crate::model::Token;

/// The last tokens a node has seen and how often each occurs among them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PenaltyWindow {
    recent: VecDeque<Token>,
    counts: HashMap<Token, u32>,
    capacity: usize,
}

impl PenaltyWindow {
    /// An empty window keeping the last `capacity` tokens (0 keeps none).
    pub(crate) fn new(capacity: usize) -> Self {
        PenaltyWindow { recent: VecDeque::new(), counts: HashMap::new(), capacity }
    }

    pub(crate) fn push(&mut self, token: Token) {
        if self.capacity == 0 {
            return;
        }
        if self.recent.len() == self.capacity {
            if let Some(old) = self.recent.pop_front() {
                self.forget(old);
            }
        }
        self.recent.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    pub(crate) fn extend(&mut self, tokens: &[Token]) {
        let skip = tokens.len().saturating_sub(self.capacity);
        for &t in &tokens[skip..] {
            self.push(t);
        }
    }

    /// Empties the window and fills it from `tokens`, oldest first (after a rewind).
    pub(crate) fn refill(&mut self, tokens: &[Token]) {
        self.recent.clear();
        self.counts.clear();
        self.extend(tokens);
    }

    fn forget(&mut self, token: Token) {
        if let Some(c) = self.counts.get_mut(&token) {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&token);
            }
        }
    }

    /// Each distinct token in the window with its count (tests read it).
    #[cfg(test)]
    pub(crate) fn count(&self, token: Token) -> u32 {
        self.counts.get(&token).copied().unwrap_or(0)
    }
}

/// The adjustment settings of a session (from `SamplingParams`), checked once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Adjustments<'a> {
    pub repeat: f32,
    pub frequency: f32,
    pub presence: f32,
    pub bias: &'a [(Token, f32)],
}

impl Adjustments<'_> {
    /// Whether a penalty is on (the window matters).
    pub(crate) fn penalises(&self) -> bool {
        self.repeat != 1.0 || self.frequency != 0.0 || self.presence != 0.0
    }

    /// Whether applying them changes anything at all (so a row can be used as it is).
    pub(crate) fn any(&self) -> bool {
        self.penalises() || !self.bias.is_empty()
    }

    /// Applies the bias, then the penalties for `window`, to a full logit row in place.
    pub(crate) fn apply(&self, row: &mut [f32], window: &PenaltyWindow) {
        for &(t, b) in self.bias {
            if let Some(v) = row.get_mut(t as usize) {
                *v += b;
            }
        }
        if !self.penalises() {
            return;
        }
        for (&t, &count) in &window.counts {
            let Some(v) = row.get_mut(t as usize) else { continue };
            // llama.cpp divides a positive logit and multiplies a negative one, so the
            // penalty always makes the token less likely.
            if *v <= 0.0 {
                *v *= self.repeat;
            } else {
                *v /= self.repeat;
            }
            *v -= count as f32 * self.frequency + self.presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_tokens_and_their_counts() {
        let mut w = PenaltyWindow::new(3);
        w.extend(&[5, 6, 5, 7]);
        // The first 5 fell out: 6, 5, 7 remain.
        assert_eq!(w.count(5), 1);
        assert_eq!(w.count(6), 1);
        w.push(8);
        assert_eq!(w.count(6), 0);
        let mut one = PenaltyWindow::new(1);
        one.extend(&[5, 7, 8]);
        assert_eq!((one.count(5), one.count(7), one.count(8)), (0, 0, 1));
        one.refill(&[1, 1, 1]);
        assert_eq!((one.count(1), one.count(8)), (1, 0));
        let mut off = PenaltyWindow::new(0);
        off.push(3);
        assert_eq!(off.count(3), 0);
    }

    #[test]
    fn penalties_follow_llama_cpp() {
        let mut w = PenaltyWindow::new(8);
        w.extend(&[0, 1, 1]);
        let adj =
            Adjustments { repeat: 2.0, frequency: 0.5, presence: 0.25, bias: &[(3, 1.5), (2, f32::NEG_INFINITY)] };
        let mut row = [4.0, -1.0, 1.0, 0.0];
        adj.apply(&mut row, &w);
        // token 0: 4 / 2 - (1 × 0.5 + 0.25); token 1: -1 × 2 - (2 × 0.5 + 0.25).
        assert_eq!(row, [1.25, -3.25, f32::NEG_INFINITY, 1.5]);
        assert!(adj.any());
        let none = Adjustments { repeat: 1.0, frequency: 0.0, presence: 0.0, bias: &[] };
        assert!(!none.any());
    }
}
