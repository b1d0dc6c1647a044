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

impl SotParams {
    /// The budgets of an answer allowed `max_tokens` (a request's): the skeleton takes up to
    /// that, at most the default's 120; each point `point_tokens`.
    pub fn for_answer(max_tokens: usize, point_tokens: usize) -> SotParams {
        SotParams { skeleton_tokens: SotParams::default().skeleton_tokens.min(max_tokens), point_tokens }
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

/// The whole text a conversation's root starts from for a Skeleton-of-Thought answer
/// ([`crate::conversations::Mode::Sot`]): [`sot_prompt`] and the format's primer.
/// [`Error::EmptyPrompt`] for a blank question.
pub fn sot_request_text(model: &Model, question: &str, format: &SkeletonFormat) -> Result<String> {
    if question.trim().is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let (prompt, _template_error) = sot_prompt(model, question, format);
    Ok(prompt + &format.primer)
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
    let (prompt, _template_error) = sot_prompt(session.model(), question, format);
    session.prompt(&prompt)?;
    if !format.primer.is_empty() {
        session.append_text(NodeId::TRUNK, &format.primer)?;
    }
    let mut run = SotRun::start(session, NodeId::TRUNK, format, params, usize::MAX)?;
    loop {
        let stepped = session.step(observer)?;
        let phase = run.phase;
        if run.after_step(session, observer)? {
            return Ok(run.into_answer());
        }
        if !stepped && run.phase == phase {
            return Err(Error::Internal("skeleton-of-thought stalled: nothing runs and the answer is not done".into()));
        }
    }
}

/// Where a Skeleton-of-Thought answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The node writes the skeleton.
    Skeleton,
    /// The points are expanded as branches.
    Expanding,
    /// The skeleton was unusable: the node writes the answer serially.
    Serial,
    Done,
}

/// One Skeleton-of-Thought answer on a node (the trunk, or a conversation's root) whose text
/// holds the request ([`sot_prompt`]) and the format's primer, advanced by its caller: after
/// every [`Session::step`], [`SotRun::after_step`] moves it on — the skeleton parsed, its
/// points forked as branches, the branches joined.
#[derive(Debug)]
pub struct SotRun {
    node: NodeId,
    format: SkeletonFormat,
    params: SotParams,
    /// Most points expanded at once (the caller's share of sequence ids).
    max_branches: usize,
    phase: Phase,
    /// Bytes of the node's generated text that are the skeleton (the serial answer follows).
    skeleton_len: usize,
    branches: Vec<NodeId>,
    answer: SotAnswer,
}

impl SotRun {
    /// Starts the skeleton on `node` (idle, its text holding the request and the primer).
    pub fn start(
        session: &mut Session,
        node: NodeId,
        format: &SkeletonFormat,
        params: &SotParams,
        max_branches: usize,
    ) -> Result<SotRun> {
        session.resume(node, &RunLimits::tokens(params.skeleton_tokens))?;
        Ok(SotRun {
            node,
            format: format.clone(),
            params: params.clone(),
            max_branches,
            phase: Phase::Skeleton,
            skeleton_len: 0,
            branches: Vec::new(),
            answer: SotAnswer {
                points: Vec::new(),
                answer: String::new(),
                serial_fallback: false,
                report: AutoReport::default(),
            },
        })
    }

    /// Acts on the last step; true once the answer is complete.
    pub fn after_step(&mut self, session: &mut Session, observer: &mut dyn Observer) -> Result<bool> {
        match self.phase {
            Phase::Skeleton if !session.is_running(self.node) => self.expand(session, observer),
            Phase::Expanding if self.branches.iter().all(|&b| !session.is_running(b)) => self.join(session, observer),
            Phase::Serial if !session.is_running(self.node) => {
                let text = session.node_generated_text(self.node);
                self.answer.answer = text.get(self.skeleton_len..).unwrap_or("").trim().to_string();
                self.phase = Phase::Done;
                Ok(true)
            }
            Phase::Done => Ok(true),
            _ => Ok(false),
        }
    }

    /// The skeleton is written: parse it, then fork its points (or fall back to a serial answer).
    fn expand(&mut self, session: &mut Session, observer: &mut dyn Observer) -> Result<bool> {
        let skeleton = session.node_generated_text(self.node);
        self.skeleton_len = skeleton.len();
        let format = &self.format;
        let (points, warnings, fallback) = match format.parse(&format!("{}{}", format.primer, skeleton)) {
            Ok(s) => (s.points, s.warnings, false),
            Err(f) => (f.points, f.warnings, true),
        };
        for w in warnings {
            if !self.answer.report.warn("", w, observer) {
                return Err(Error::Cancelled);
            }
        }
        session.append_text(self.node, &format.expand_instruction)?;
        if fallback {
            let limit = self.params.point_tokens * points.len().max(3);
            session.resume(self.node, &RunLimits::tokens(limit))?;
            self.answer.points = points;
            self.answer.serial_fallback = true;
            self.phase = Phase::Serial;
            return Ok(false);
        }
        let stop = if format.point_end.is_empty() { Vec::new() } else { vec![format.point_end.clone()] };
        let mut specs: Vec<BranchSpec> = points
            .iter()
            .enumerate()
            .map(|(i, p)| BranchSpec {
                prefix: format.point_prefix(i, p),
                limits: RunLimits { max_tokens: self.params.point_tokens, stop: stop.clone(), ..Default::default() },
                ..Default::default()
            })
            .collect();
        // More points than free sequence ids: expand the first ones, say so.
        let free = session.free_branch_slots().min(self.max_branches);
        if specs.len() > free {
            let w = crate::protocol::Warning {
                kind: crate::protocol::WarningKind::TooManyBranches,
                at: 0,
                message: format!("{} points but {free} free branch slots: expanding the first {free}", specs.len()),
            };
            if !self.answer.report.warn("", w, observer) {
                return Err(Error::Cancelled);
            }
            specs.truncate(free);
        }
        self.answer.points = points.into_iter().take(specs.len()).collect();
        self.branches = session.fork(self.node, &specs)?;
        let paths: Vec<String> = self.branches.iter().map(|&id| session.label(id).unwrap_or("").to_string()).collect();
        let label = session.label(self.node).unwrap_or("").to_string();
        if !observer.on_event(&Event::Fork { parent: self.node, label: &label, branches: &paths }) {
            return Err(Error::Cancelled);
        }
        let labels = (1..=paths.len()).map(|i| i.to_string()).collect();
        self.answer.report.blocks.push(AutoBlock { parent: label, labels, titles: self.answer.points.clone(), paths });
        self.phase = Phase::Expanding;
        Ok(false)
    }

    /// Every point is expanded: join them and assemble the answer.
    fn join(&mut self, session: &mut Session, observer: &mut dyn Observer) -> Result<bool> {
        let expansions: Vec<String> = self.branches.iter().map(|&id| session.node_generated_text(id)).collect();
        session.join(self.node, JoinMode::All, Some("\n"))?;
        let label = session.label(self.node).unwrap_or("").to_string();
        if !observer.on_event(&Event::Join { parent: self.node, label: &label, kept: self.branches.len() }) {
            return Err(Error::Cancelled);
        }
        self.answer.answer = self.format.assemble(&self.answer.points, &expansions);
        self.phase = Phase::Done;
        Ok(true)
    }

    /// The answer so far: complete once [`SotRun::after_step`] said so.
    pub fn answer(&self) -> &SotAnswer {
        &self.answer
    }

    /// The answer, taken.
    pub fn into_answer(self) -> SotAnswer {
        self.answer
    }
}
