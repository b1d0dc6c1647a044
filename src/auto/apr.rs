//! APR-style sub-searches: the parent writes child prompts, the children run on their own
//! prompts (sharing nothing with the parent), all in one batch per step, and the parent is
//! given one result line per child before it continues.

use crate::error::{Error, Result};
use crate::protocol::SubSearchFormat;
use crate::session::{BranchSpec, Event, JoinMode, NodeId, Observer, RunLimits, Session, StopReason};

use super::{AutoBlock, AutoParams, AutoReport};

/// Generates on the trunk; at every calls block (`format.trigger()`), runs the children and
/// prefills the results block. The session must hold the prompt.
pub fn generate_apr(
    session: &mut Session,
    format: &SubSearchFormat,
    params: &AutoParams,
    observer: &mut dyn Observer,
) -> Result<AutoReport> {
    let mut report = AutoReport::default();
    let mut budget = params.max_tokens;
    if !params.response_prefix.is_empty() {
        session.append_text(NodeId::TRUNK, &params.response_prefix)?;
    }
    let stop = vec![format.trigger().to_string()];
    while budget > 0 {
        let before = session.node_tokens(NodeId::TRUNK).len();
        session.resume(NodeId::TRUNK, &RunLimits { max_tokens: budget, stop: stop.clone(), ..Default::default() })?;
        session.run(observer)?;
        budget = budget.saturating_sub(session.node_tokens(NodeId::TRUNK).len() - before);
        if !matches!(session.stop_reason(NodeId::TRUNK), Some(StopReason::StopString(_))) {
            break;
        }
        let calls = format.parse_calls(&session.node_text(NodeId::TRUNK), session.free_branch_slots());
        for w in calls.warnings {
            if !report.warn("", w, observer) {
                return Err(Error::Cancelled);
            }
        }
        if calls.calls.is_empty() {
            continue; // nothing to run: the parent goes on serially
        }
        let mut specs = Vec::with_capacity(calls.calls.len());
        for call in &calls.calls {
            let prompt = session.model().tokenize(&call.prompt, true)?;
            // An empty child prompt still needs a token to start from.
            let prompt = if prompt.is_empty() { session.model().tokenize("\n", true)? } else { prompt };
            specs.push(BranchSpec {
                prefix_tokens: prompt,
                limits: RunLimits::tokens(params.max_branch_tokens),
                ..Default::default()
            });
        }
        let ids = session.fork_detached(NodeId::TRUNK, &specs)?;
        let paths: Vec<String> = ids.iter().map(|&id| session.label(id).unwrap_or("").to_string()).collect();
        if !observer.on_event(&Event::Fork { parent: NodeId::TRUNK, label: "", branches: &paths }) {
            return Err(Error::Cancelled);
        }
        session.run(observer)?;
        let results: Vec<String> = ids.iter().map(|&id| session.node_generated_text(id).trim().to_string()).collect();
        let pairs: Vec<_> = calls.calls.iter().zip(results.iter().map(String::as_str)).collect();
        let block = format.results_block(&pairs);
        session.join(NodeId::TRUNK, JoinMode::Discard, None)?;
        session.append_text(NodeId::TRUNK, &block)?;
        if !observer.on_event(&Event::Join { parent: NodeId::TRUNK, label: "", kept: 0 }) {
            return Err(Error::Cancelled);
        }
        report.blocks.push(AutoBlock {
            parent: String::new(),
            labels: calls.calls.iter().map(|c| c.index.to_string()).collect(),
            titles: calls.calls.iter().map(|c| c.prompt.clone()).collect(),
            paths,
        });
    }
    Ok(report)
}
