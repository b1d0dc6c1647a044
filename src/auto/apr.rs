//! APR-style sub-searches: the parent writes child prompts, the children run on their own
//! prompts (sharing nothing with the parent), all in one batch per step, and the parent is
//! given one result line per child before it continues.

use crate::error::{Error, Result};
use crate::protocol::search_state::node_states;
use crate::protocol::{ChildPrompt, SubSearchFormat, Warning, WarningKind};
use crate::session::{BranchSpec, Event, JoinMode, NodeId, Observer, RunLimits, Session, StopReason};

use super::{append_forced, AutoBlock, AutoParams, AutoReport};

/// Generates on the trunk; at every calls block (`format.trigger()`), runs the children and
/// prefills the results block. The session must hold the prompt.
pub fn generate_apr(
    session: &mut Session,
    format: &SubSearchFormat,
    params: &AutoParams,
    observer: &mut dyn Observer,
) -> Result<AutoReport> {
    let mut report = AutoReport::default();
    generate_apr_into(session, format, params, observer, &mut report)?;
    Ok(report)
}

/// [`generate_apr`], filling `report` as it goes (see [`super::generate_auto_into`]).
pub fn generate_apr_into(
    session: &mut Session,
    format: &SubSearchFormat,
    params: &AutoParams,
    observer: &mut dyn Observer,
    report: &mut AutoReport,
) -> Result<()> {
    let mut budget = params.max_tokens;
    if !params.response_prefix.is_empty() {
        append_forced(session, NodeId::TRUNK, &params.response_prefix, observer)?;
    }
    let protocol_stops = vec![format.trigger().to_string()];
    let mut stop = protocol_stops.clone();
    stop.extend(params.stop.iter().filter(|s| !protocol_stops.contains(s)).cloned());
    // A response prefix that ends a calls block itself runs its calls before the model writes.
    let mut prefix_called =
        !params.response_prefix.is_empty() && session.node_text(NodeId::TRUNK).ends_with(format.trigger());
    while budget > 0 || prefix_called {
        if !std::mem::take(&mut prefix_called) {
            let before = session.node_tokens(NodeId::TRUNK).len();
            session
                .resume(NodeId::TRUNK, &RunLimits { max_tokens: budget, stop: stop.clone(), ..Default::default() })?;
            session.run(observer)?;
            budget = budget.saturating_sub(session.node_tokens(NodeId::TRUNK).len() - before);
            if super::ended_by_caller_stop(session, NodeId::TRUNK, &params.stop, &protocol_stops) {
                break;
            }
            // A trigger written as the run's last allowed token ends the run by its budget, but
            // it was written: its calls run all the same.
            let called = matches!(session.stop_reason(NodeId::TRUNK), Some(StopReason::StopString(_)))
                || session.node_text(NodeId::TRUNK).ends_with(format.trigger());
            if !called {
                break;
            }
        }
        let calls = format.parse_calls(&session.node_text(NodeId::TRUNK), session.free_branch_slots());
        for w in calls.warnings {
            if !report.warn("", w, observer) {
                return Err(Error::Cancelled);
            }
        }
        let states = match format.child_prompt {
            ChildPrompt::CountdownState => node_states(&session.node_text(NodeId::TRUNK)),
            ChildPrompt::Written => Default::default(),
        };
        let mut runnable = Vec::with_capacity(calls.calls.len());
        for call in calls.calls {
            let prompt = match format.child_prompt {
                ChildPrompt::Written => call.prompt.clone(),
                ChildPrompt::CountdownState => match states.get(&call.node) {
                    Some(state) => state.prompt(&call.node),
                    None => {
                        let w = Warning::new(
                            WarningKind::BadLabel,
                            call.at,
                            format!(
                                "sub search {} names node {:?}, whose state the trace never gave: not run",
                                call.index, call.node
                            ),
                        );
                        if !report.warn("", w, observer) {
                            return Err(Error::Cancelled);
                        }
                        continue;
                    }
                },
            };
            runnable.push((call, prompt));
        }
        if runnable.is_empty() {
            continue; // nothing to run: the parent goes on serially
        }
        let mut specs = Vec::with_capacity(runnable.len());
        for (_, prompt) in &runnable {
            let prompt = session.model().tokenize(prompt, true)?;
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
        let pairs: Vec<_> = runnable.iter().map(|(c, _)| c).zip(results.iter().map(String::as_str)).collect();
        let block = format.results_block(&pairs);
        session.join(NodeId::TRUNK, JoinMode::Discard, None)?;
        if format.resume_before_calls {
            rewind_to_calls(session, format)?;
        }
        session.append_text(NodeId::TRUNK, &block)?;
        if !observer.on_event(&Event::Join { parent: NodeId::TRUNK, label: "", kept: 0 }) {
            return Err(Error::Cancelled);
        }
        report.blocks.push(AutoBlock {
            parent: String::new(),
            labels: runnable.iter().map(|(c, _)| c.index.to_string()).collect(),
            titles: runnable.into_iter().map(|(_, p)| p).collect(),
            paths,
        });
    }
    Ok(())
}

/// Rewinds the trunk to the text before its last calls block: the tokens wholly before it
/// are kept, and any part of a token that straddled its start is written again as text.
fn rewind_to_calls(session: &mut Session, format: &SubSearchFormat) -> Result<()> {
    let text = session.node_text(NodeId::TRUNK);
    let Some(start) = format.calls_start(&text) else { return Ok(()) };
    let ends = session.node_token_ends(NodeId::TRUNK);
    let keep = ends.iter().take_while(|&&e| e <= start).count();
    let end = keep.checked_sub(1).map_or(0, |k| ends[k]);
    session.rewind(NodeId::TRUNK, keep)?;
    // (A token that splits a character leaves no valid slice: its bytes are dropped.)
    if let Some(rest) = text.get(end..start).filter(|r| !r.is_empty()) {
        session.append_text(NodeId::TRUNK, rest)?;
    }
    Ok(())
}
