//! Does batching branches change what a branch computes? A self-check any model can run.
//!
//! The same branches are decoded in one batch and each alone; their logit rows are compared
//! while their token histories agree (greedy paths may part at near-ties on quantized models).
//! With `leak`, branch tokens are tagged with every running sibling's sequence id — the bug
//! this engine must never have — so the distance it produces shows what a leak looks like
//! next to the batch-shape noise of the backend. `device_vs_host` checks that tokens chosen on
//! the backend (device selection) are the ones the host picks from full rows.

use crate::bench::prompt;
use crate::error::Result;
use crate::model::{Model, Token};
use crate::session::{BranchSpec, NodeId, RunLimits, Selection, Session, SessionParams, Silent};

const PROMPT: &str = "Here are four animals and one fact about each of them.\n";

/// Branch openings of equal token length (leaking ties sibling positions together, which
/// llama.cpp only accepts while the coupled sequences stay in step).
fn specs(model: &Model, n: usize, tokens: usize) -> Result<Vec<BranchSpec>> {
    let limits = RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() };
    (0..n)
        .map(|i| {
            let prefix_tokens: Vec<Token> = if model.has_text_vocab() {
                model.tokenize(&format!("\n{}.", i + 1), false)?
            } else {
                vec![10 + i as Token, 3]
            };
            Ok(BranchSpec { prefix_tokens, limits: limits.clone(), ..Default::default() })
        })
        .collect()
}

/// Relative distance of two logit rows: max |a − b| / max |b|.
pub fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
    diff / scale.max(1e-12)
}

/// Largest relative distance between `branches` branches decoded in one batch and the same
/// branches decoded alone, over rows whose histories agree. `params` sets the context
/// (its `record_logits` and `leak_between_siblings` are overridden).
pub fn batch_vs_alone(
    model: &Model,
    params: &SessionParams,
    branches: usize,
    tokens: usize,
    leak: bool,
) -> Result<f64> {
    let mut p = params.clone();
    p.record_logits = true;
    p.max_branches = p.max_branches.max(branches as u32);
    let mut batched = Session::new(model, SessionParams { leak_between_siblings: leak, ..p.clone() })?;
    prompt(&mut batched, model, PROMPT)?;
    let all = specs(model, branches, tokens)?;
    let ids = batched.fork(NodeId::TRUNK, &all)?;
    batched.run(&mut Silent)?;
    let mut worst = 0f64;
    for (i, spec) in all.into_iter().enumerate() {
        let mut alone = Session::new(model, SessionParams { leak_between_siblings: false, ..p.clone() })?;
        prompt(&mut alone, model, PROMPT)?;
        let id = alone.fork(NodeId::TRUNK, &[spec])?[0];
        alone.run(&mut Silent)?;
        let (tb, ta) = (batched.node_tokens(ids[i]), alone.node_tokens(id));
        let (lb, la) = (batched.logit_trace(ids[i]), alone.logit_trace(id));
        let prefix_len = tb.len() - lb.len();
        for k in 0..lb.len().min(la.len()) {
            // Row k follows token prefix_len + k − 1: compare only while histories agree.
            if tb[..prefix_len + k] != ta[..prefix_len + k] {
                break;
            }
            worst = worst.max(relative_distance(&lb[k], &la[k]));
        }
    }
    Ok(worst)
}

/// Greedy tokens of `branches` branches decoded in one batch, under `selection`.
fn block_tokens(
    model: &Model,
    params: &SessionParams,
    branches: usize,
    tokens: usize,
    selection: Selection,
) -> Result<Vec<Vec<Token>>> {
    let mut p = params.clone();
    p.max_branches = p.max_branches.max(branches as u32);
    p.sampling = crate::SamplingParams::greedy();
    p.selection = selection;
    let mut s = Session::new(model, p)?;
    prompt(&mut s, model, PROMPT)?;
    let ids = s.fork(NodeId::TRUNK, &specs(model, branches, tokens)?)?;
    s.run(&mut Silent)?;
    Ok(ids.iter().map(|&id| s.node_tokens(id)).collect())
}

/// Device selection against host selection: the same greedy block decoded both ways.
/// Returns (tokens that agree before each branch's first difference, tokens compared).
pub fn device_vs_host(
    model: &Model,
    params: &SessionParams,
    branches: usize,
    tokens: usize,
    candidates: u32,
) -> Result<(usize, usize)> {
    let host = block_tokens(model, params, branches, tokens, Selection::Host)?;
    let device = block_tokens(model, params, branches, tokens, Selection::Device { candidates })?;
    let mut agree = 0;
    let mut total = 0;
    for (h, d) in host.iter().zip(&device) {
        total += h.len().max(d.len());
        agree += h.iter().zip(d).take_while(|(a, b)| a == b).count();
    }
    Ok((agree, total))
}
