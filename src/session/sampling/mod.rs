//! Per-branch token selection.
//!
//! Each branch owns its sampler and its random stream. The stream is seeded from the session
//! seed and the branch's *path* in the fork tree (block ordinal and branch index at every
//! level), never from the order in which branches happen to be decoded, so a branch's output
//! is the same whether it runs in a batch with siblings, alone, or after them.
//!
//! One concept per file: `params` what the caller asks for, `random` the per-branch streams,
//! `argmax` the vectorised greedy pick, `sampler` a branch's selection over a row of scores.

mod argmax;
mod params;
mod random;
mod sampler;

pub use argmax::argmax;
pub use params::SamplingParams;
pub(crate) use sampler::{BranchSampler, SavedScores, Scores};
