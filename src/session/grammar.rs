//! Grammar-constrained generation: a run (the trunk's, or each branch's) whose sampled
//! tokens must follow a GBNF grammar, with llama.cpp's grammar sampler holding each node's
//! state. The rule is llama.cpp's `common_sampler`: the token the sampler picks is checked
//! alone first, and only when the grammar rejects it is the whole row masked and drawn again.

use super::penalties::{Adjustments, PenaltyWindow};
use super::sampling::{BranchSampler, Scores};
use crate::llama::{GrammarSampler, JSON_OBJECT_GBNF};
use crate::model::{Model, Token};
use crate::{Error, Result};

/// A GBNF grammar (llama.cpp's format) that the tokens a run samples must follow.
///
/// It constrains sampled text only: a branch prefix, appended text and scripted tokens are not
/// read by it. A branch forked with no grammar of its own, from a parent whose last run had
/// one, continues a copy of the parent's grammar state (its siblings' tokens never enter it).
/// When the grammar admits no further token but end-of-generation (a complete JSON object,
/// say), the run ends as if the model had emitted it ([`StopReason::Eog`](super::StopReason)),
/// even when end-of-generation is banned. Grammars need host selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grammar {
    /// The rules, in GBNF.
    pub gbnf: String,
    /// The rule the text must match ("root" by convention).
    pub root: String,
}

impl Grammar {
    /// A grammar from GBNF text whose start rule is `root`.
    pub fn gbnf(text: impl Into<String>) -> Self {
        Grammar { gbnf: text.into(), root: "root".into() }
    }

    /// Exactly one JSON object (RFC 8259), with at most one space or one newline and
    /// indentation between its tokens, so a model cannot pad it forever.
    pub fn json_object() -> Self {
        Grammar::gbnf(JSON_OBJECT_GBNF)
    }

    /// The JSON values a JSON Schema describes, as llama.cpp converts a schema
    /// (`json_schema_to_grammar` of its `common` library, the rule llama-server applies to a
    /// `json_schema` or `response_format`). `schema` is the schema's JSON text. Errors: text
    /// that is not JSON (with serde_json's reason and place), or a schema llama.cpp cannot
    /// convert (an unsupported keyword or a `$ref` it cannot resolve), as InvalidArgument.
    /// Needs the `json-schema` feature (on by default).
    #[cfg(feature = "json-schema")]
    pub fn json_schema(schema: &str) -> Result<Self> {
        // serde_json names the place of a syntax error, which llama.cpp's status does not, and
        // refuses nesting deeper than 128 levels, which keeps llama.cpp's recursive parser and
        // converter far from the end of a thread's stack.
        serde_json::from_str::<serde_json::Value>(schema)
            .map_err(|e| Error::InvalidArgument(format!("JSON schema: not valid JSON: {e}")))?;
        let gbnf = llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
            Error::InvalidArgument(format!(
                "JSON schema: llama.cpp's json_schema_to_grammar could not convert it \
                 (an unsupported keyword or an unresolvable $ref?): {e}"
            ))
        })?;
        Ok(Grammar::gbnf(gbnf))
    }
}

/// One node's grammar state. Holds the model so the vocabulary llama.cpp's sampler reads
/// outlives it (fields drop in order: the state first).
pub(crate) struct NodeGrammar {
    state: GrammarSampler,
    _model: Model,
}

impl std::fmt::Debug for NodeGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeGrammar")
    }
}

impl NodeGrammar {
    /// Compiles `grammar` for `model`; a bad grammar is InvalidArgument with llama.cpp's rule.
    pub(crate) fn compile(model: &Model, grammar: &Grammar) -> Result<NodeGrammar> {
        // SAFETY: the vocabulary of a live model, which the returned value keeps alive.
        let state = unsafe { GrammarSampler::compile(model.inner.llama.vocab(), &grammar.gbnf, &grammar.root) }
            .map_err(|why| Error::InvalidArgument(format!("grammar: {why}")))?;
        Ok(NodeGrammar { state, _model: model.clone() })
    }

    /// A copy of the state for a branch forking from this node.
    pub(crate) fn fork(&self) -> Result<NodeGrammar> {
        let state = self.state.try_clone().map_err(|why| Error::Internal(format!("grammar fork: {why}")))?;
        Ok(NodeGrammar { state, _model: self._model.clone() })
    }

    /// Advances the state by a committed token; false when the grammar does not allow it (a
    /// scripted token), which leaves the state as it was.
    pub(crate) fn accept(&mut self, token: Token) -> bool {
        self.state.accept(token).is_ok()
    }

    /// Picks the next token from a full row: the sampler's own choice when the grammar allows
    /// it, else a new draw from the row with every rejected token masked. `None`: the grammar
    /// admits no token here (or its state was lost), and the run ends.
    pub(crate) fn sample(
        &mut self,
        sampler: &mut BranchSampler,
        scores: Scores<'_>,
        banned: &[Token],
        adjustments: &Adjustments<'_>,
        window: &PenaltyWindow,
    ) -> Option<Token> {
        let first = sampler.sample_adjusted(scores, banned, adjustments, window);
        if self.state.allows(first).ok()? {
            return Some(first);
        }
        let Scores::Full(row) = scores else {
            return None; // the session refuses grammars with device selection
        };
        if !adjustments.any() {
            if let Some(token) = self.sample_from_shortlist(sampler, row, banned) {
                return Some(token);
            }
        }
        let mut masked = sampler.take_masked_row();
        masked.clear();
        masked.extend_from_slice(row);
        let token = match self.state.mask(&mut masked) {
            Ok(()) => Some(sampler.sample_adjusted(Scores::Full(&masked), banned, adjustments, window)),
            Err(_) => None,
        };
        sampler.give_masked_row(masked);
        // Every token rejected (a banned EOG excepted): the sampler's pick is then no better.
        token.filter(|&t| self.state.allows(t).unwrap_or(false))
    }

    /// The pick under the grammar without masking the whole row, for a sampler that only ever
    /// chooses among a row's `k` best tokens (greedy: 1; top-k: k): the grammar checks the
    /// row's `SHORTLIST` highest logits (ties: lower id first, banned tokens left out), and if
    /// at least `k` of them are allowed, those are the masked row's `k` best — any token
    /// outside the list has a lower logit, or an equal one and a higher id — so drawing from
    /// them gives the token the masked row gives. `None`: fewer allowed (or no truncation),
    /// and the row must be masked. llama.cpp's check costs about the same per candidate, so 64
    /// candidates instead of a 49k–262k row save 6–200 ms (`pardec bench --sampling-costs`).
    fn sample_from_shortlist(&mut self, sampler: &mut BranchSampler, row: &[f32], banned: &[Token]) -> Option<Token> {
        const SHORTLIST: usize = 64;
        let k = sampler.reach().filter(|&k| k <= SHORTLIST)?;
        let ids: Vec<Token> = super::logprobs::most_likely(row, SHORTLIST + banned.len())
            .into_iter()
            .filter(|t| banned.binary_search(t).is_err() && row[*t as usize] != f32::NEG_INFINITY)
            .take(SHORTLIST)
            .collect();
        let mut logits: Vec<f32> = ids.iter().map(|&t| row[t as usize]).collect();
        self.state.mask_candidates(&ids, &mut logits).ok()?;
        let (allowed, allowed_logits): (Vec<Token>, Vec<f32>) =
            ids.iter().zip(&logits).filter(|(_, l)| **l != f32::NEG_INFINITY).map(|(&t, &l)| (t, l)).unzip();
        if allowed.len() < k {
            return None;
        }
        Some(sampler.sample_sorted(Scores::Candidates { ids: &allowed, logits: &allowed_logits }, banned))
    }
}
