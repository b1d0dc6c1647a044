//! Skeleton-of-Thought for plain instruction-tuned models: ask for a numbered skeleton, then
//! expand every point as a branch. All branches share one prefix — the request and the
//! skeleton — instead of each re-reading the prompt, and decode in one batch per step.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::protocol::SkeletonFormat;
use crate::session::{BranchSpec, Event, JoinMode, NodeId, Observer, RunLimits, Session};

use super::{AutoBlock, AutoReport};

/// Budgets of a Skeleton-of-Thought answer.
#[derive(Debug, Clone)]
pub struct SotParams {
    /// Tokens the model may write for the skeleton (default 120).
    pub skeleton_tokens: usize,
    /// Tokens per point expansion (and for the serial fallback answer, per point expected).
    pub point_tokens: usize,
}

impl Default for SotParams {
    fn default() -> Self {
        SotParams { skeleton_tokens: 120, point_tokens: 64 }
    }
}

/// The answer and how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct SotAnswer {
    /// The skeleton's points, in order, as parsed (only those expanded, when the session had
    /// fewer free branch slots than points).
    pub points: Vec<String>,
    /// The points with their expansions, in order.
    pub answer: String,
    /// True when the skeleton was unusable and the answer was written serially.
    pub serial_fallback: bool,
    /// The one block of point expansions (none after a serial fallback) and the warnings
    /// about the skeleton.
    pub report: AutoReport,
}

/// The prompt [`generate_sot`] decodes for `question`: the format's request in the model's
/// chat template, or the bare request where the model has no text vocabulary. Where the
/// template fails, the bare request too, with the template's error beside it for a caller
/// that reports it (`generate_sot` goes on without).
pub fn sot_prompt(model: &Model, question: &str, format: &SkeletonFormat) -> (String, Option<Error>) {
    let request = format.request_prompt(question);
    if !model.has_text_vocab() {
        return (request, None);
    }
    match model.apply_chat_template(&[("user", &request)]) {
        Ok(prompt) => (prompt, None),
        Err(e) => (request, Some(e)),
    }
}

/// Answers `question` with a skeleton and parallel point expansions. The session must be
/// empty; the model's chat template wraps the request when it has one.
pub fn generate_sot(
    session: &mut Session,
    question: &str,
    format: &SkeletonFormat,
    params: &SotParams,
    observer: &mut dyn Observer,
) -> Result<SotAnswer> {
    if session.next_pos(NodeId::TRUNK) != Some(0) {
        return Err(Error::InvalidState(
            "skeleton-of-thought writes its own prompt: start from an empty (or cleared) session".into(),
        ));
    }
    if question.trim().is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let mut report = AutoReport::default();
    let (prompt, _template_error) = sot_prompt(session.model(), question, format);
    session.prompt(&prompt)?;
    if !format.primer.is_empty() {
        session.append_text(NodeId::TRUNK, &format.primer)?;
    }
    let skeleton = session.generate(&RunLimits::tokens(params.skeleton_tokens), observer)?;
    let parsed = format.parse(&format!("{}{}", format.primer, skeleton));
    let (points, warnings, fallback) = match parsed {
        Ok(s) => (s.points, s.warnings, false),
        Err(f) => (f.points, f.warnings, true),
    };
    for w in warnings {
        if !report.warn("", w, observer) {
            return Err(Error::Cancelled);
        }
    }
    session.append_text(NodeId::TRUNK, &format.expand_instruction)?;
    if fallback {
        let limit = params.point_tokens * points.len().max(3);
        let answer = session.generate(&RunLimits::tokens(limit), observer)?;
        return Ok(SotAnswer { points, answer: answer.trim().to_string(), serial_fallback: true, report });
    }
    let stop = if format.point_end.is_empty() { Vec::new() } else { vec![format.point_end.clone()] };
    let specs: Vec<BranchSpec> = points
        .iter()
        .enumerate()
        .map(|(i, p)| BranchSpec {
            prefix: format.point_prefix(i, p),
            limits: RunLimits { max_tokens: params.point_tokens, stop: stop.clone(), ..Default::default() },
            ..Default::default()
        })
        .collect();
    // More points than free sequence ids: expand the first ones, say so.
    let free = session.free_branch_slots();
    let specs = if specs.len() > free {
        let w = crate::protocol::Warning {
            kind: crate::protocol::WarningKind::TooManyBranches,
            at: 0,
            message: format!("{} points but {free} free branch slots: expanding the first {free}", specs.len()),
        };
        if !report.warn("", w, observer) {
            return Err(Error::Cancelled);
        }
        specs[..free].to_vec()
    } else {
        specs
    };
    let points: Vec<String> = points.into_iter().take(specs.len()).collect();
    let ids = session.fork(NodeId::TRUNK, &specs)?;
    let paths: Vec<String> = ids.iter().map(|&id| session.label(id).unwrap_or("").to_string()).collect();
    if !observer.on_event(&Event::Fork { parent: NodeId::TRUNK, label: "", branches: &paths }) {
        return Err(Error::Cancelled);
    }
    session.run(observer)?;
    let expansions: Vec<String> = ids.iter().map(|&id| session.node_generated_text(id)).collect();
    session.join(NodeId::TRUNK, JoinMode::All, Some("\n"))?;
    if !observer.on_event(&Event::Join { parent: NodeId::TRUNK, label: "", kept: ids.len() }) {
        return Err(Error::Cancelled);
    }
    let labels = (1..=points.len()).map(|i| i.to_string()).collect();
    report.blocks.push(AutoBlock { parent: String::new(), labels, titles: points.clone(), paths });
    let answer = format.assemble(&points, &expansions);
    Ok(SotAnswer { points, answer, serial_fallback: false, report })
}
