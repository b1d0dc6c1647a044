//! The rules a parallel block's positions and visibility follow: how the engine joins a block
//! ([`JoinRule`]) and how a protocol's own training code lays one out ([`TrainRule`]).
//!
//! A leaf both layers name: the engine (`session`) realises a join rule, the pure-text protocol
//! layer names the rules a protocol uses and lays text out by them (`protocol::layout`).

use serde::{Deserialize, Serialize};

/// How the parent continues after a join that keeps branches (see `session/join.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinRule {
    /// Kept branches' own cells; continue at max(branch end) + 1.
    #[default]
    SameMax,
    /// Kept branches' own cells; continue at fork position + Σ branch lengths.
    SameSeq,
    /// Re-read the kept branches as one serial text; continue after it.
    Reprefill,
}

impl JoinRule {
    /// The rule's name as the CLI and protocol JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            JoinRule::SameMax => "same-max",
            JoinRule::SameSeq => "same-seq",
            JoinRule::Reprefill => "reprefill",
        }
    }

    /// Parses [`JoinRule::name`].
    pub fn from_name(name: &str) -> Option<JoinRule> {
        [JoinRule::SameMax, JoinRule::SameSeq, JoinRule::Reprefill].into_iter().find(|r| r.name() == name)
    }
}

/// A training code's layout of a parallel block, where it differs from the engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainRule {
    /// Every branch starts at the position of the fork text's first piece (they share it);
    /// pieces after a branch's end marker and before the next branch are the parent's,
    /// visible to later branches; the parent continues at max(end marker) + 1 and sees all
    /// (Multiverse's and NPR's `train/utils.py`).
    SharedStart,
    /// Branches isolated from one shared start, the parent continues at max(branch end) + 1
    /// (Parallel-R1's SFT dataset).
    SameMax,
    /// Branches isolated, the parent continues at fork position + Σ branch lengths.
    SameSeq,
    /// The whole text as one serial sequence, plus an isolated copy of every branch after
    /// the first at the positions the engine gives it (ThreadWeaver's prefix tree).
    SerialWithCopies,
}
