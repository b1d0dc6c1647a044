//! What the caller asks of token selection, and the checks and derived settings the session
//! takes from it.

use serde::{Deserialize, Serialize};

use crate::model::Token;
use crate::session::penalties::Adjustments;

/// How a branch picks its next token. `temperature <= 0` means greedy (argmax).
///
/// The logit bias and the penalties change the logits before any of the rest (llama.cpp's
/// semantics, see [`SamplingParams::repeat_penalty`]); they need host selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; must be finite. 0 (the default) or below samples greedily.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0: off).
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0.0: off).
    pub min_p: f32,
    /// Seed of every branch's random stream (mixed with the branch's path in the fork tree):
    /// the same seed gives the same text whatever the batching. Unused when greedy.
    pub seed: u64,
    /// llama.cpp's repetition penalty (1.0: off; > 0): the logit of every token in the node's
    /// penalty window is divided by it when positive and multiplied by it when not.
    ///
    /// The window is the last `penalty_last_n` tokens of the text the node sees: prompt,
    /// appended and sampled text; a branch starts from its parent's window at the fork and
    /// adds only its own tokens (a sibling's never enter it); a join appends the kept
    /// branches' tokens, in order, to the parent's.
    pub repeat_penalty: f32,
    /// Subtracted from a windowed token's logit once per occurrence (0.0: off; finite).
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of every token in the window (0.0: off; finite).
    pub presence_penalty: f32,
    /// Tokens in the penalty window: 0 turns the penalties off, -1 means the whole context.
    pub penalty_last_n: i32,
    /// Added to a token's logit before anything else; `f32::NEG_INFINITY` bans it. Token ids
    /// must be in the vocabulary; a bias must not be NaN or +inf.
    pub logit_bias: Vec<(Token, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Argmax decoding: temperature 0, no truncation (the same as `default()`).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Greedy: a temperature of 0 or below, or one below `GREEDY_BELOW` (1e-20), whose 1/T would
    /// overflow the scaled logits (the limit of sampling as T → 0 is the argmax anyway).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let ok = self.temperature.is_finite()
            && self.top_p.is_finite()
            && (0.0..=1.0).contains(&self.top_p)
            && self.min_p.is_finite()
            && (0.0..=1.0).contains(&self.min_p);
        if !ok {
            return Err(crate::Error::InvalidArgument(format!(
                "sampling parameters out of range: temperature {}, top_p {}, min_p {} \
                 (temperature finite, top_p and min_p in [0, 1])",
                self.temperature, self.top_p, self.min_p
            )));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "repeat_penalty {} must be finite and above 0 (1.0 is off)",
                self.repeat_penalty
            )));
        }
        if !(self.frequency_penalty.is_finite() && self.presence_penalty.is_finite()) {
            return Err(crate::Error::InvalidArgument(format!(
                "frequency_penalty {} and presence_penalty {} must be finite",
                self.frequency_penalty, self.presence_penalty
            )));
        }
        if self.penalty_last_n < -1 {
            return Err(crate::Error::InvalidArgument(format!(
                "penalty_last_n {}: use -1 (whole context), 0 (off) or a count",
                self.penalty_last_n
            )));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
            return Err(crate::Error::InvalidArgument(format!(
                "logit bias {b} for token {t}: use a finite bias, or -inf to ban the token"
            )));
        }
        Ok(())
    }

    /// Also checks what depends on the model: logit-bias ids inside the vocabulary.
    pub(crate) fn validate_for(&self, n_vocab: usize) -> crate::Result<()> {
        self.validate()?;
        if let Some((t, _)) = self.logit_bias.iter().find(|(t, _)| *t < 0 || *t as usize >= n_vocab) {
            return Err(crate::Error::InvalidArgument(format!(
                "logit bias for token {t}: outside the vocabulary (0..{n_vocab})"
            )));
        }
        Ok(())
    }

    /// The logit adjustments these parameters ask for.
    pub(crate) fn adjustments(&self) -> Adjustments<'_> {
        let window = self.penalty_last_n != 0;
        Adjustments {
            repeat: if window { self.repeat_penalty } else { 1.0 },
            frequency: if window { self.frequency_penalty } else { 0.0 },
            presence: if window { self.presence_penalty } else { 0.0 },
            bias: &self.logit_bias,
        }
    }

    /// Tokens the penalty window keeps in a context of `n_ctx` cells: none while no penalty is
    /// on, so the default costs nothing per token (`Session::set_sampling` rebuilds windows
    /// from the text when penalties are turned on).
    pub(crate) fn window_capacity(&self, n_ctx: u32) -> usize {
        if !self.adjustments().penalises() {
            return 0;
        }
        match self.penalty_last_n {
            -1 => n_ctx as usize,
            n => n.max(0) as usize,
        }
    }
}

/// Temperatures below this sample greedily: 1/T past 1e20 would overflow logits beyond 3e18.
const GREEDY_BELOW: f32 = 1e-20;
