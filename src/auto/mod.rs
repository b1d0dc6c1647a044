//! Auto mode: the model decides when to fork.
//!
//! A driver runs a [`Session`] under a protocol: every stream (the trunk and each branch)
//! has a [`Watcher`] that reads what the stream wrote. Streams run with the watcher's stop
//! strings, so each run ends exactly where the protocol's state may change; the driver then
//! feeds the run's text to the watcher and does what it says — fork (branches decode in one
//! batch per step with everything else still running), end a branch, join a finished block
//! with the protocol's join text, or carry on serially after a malformed block.
//!
//! - [`generate_auto`]: stream protocols (Multiverse, ASPD, Parallel-R1, ThreadWeaver, NPR,
//!   or any [`ProtocolSpec`]).
//! - [`apr::generate_apr`]: sub-searches on their own prompts.
//! - [`sot::generate_sot`]: Skeleton-of-Thought for plain instruction-tuned models.
//!
//! Malformed output never stops decoding: each case takes the watcher's documented fallback
//! and is reported as an [`AutoWarning`] (and an [`Event::Warning`]).

pub mod apr;
pub mod sot;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Token;
use crate::protocol::{Action, EndCause, ProtocolSpec, StreamEnd, Warning, WarningKind, Watcher};
use crate::session::{BranchSpec, Event, JoinMode, NodeId, Observer, RunLimits, Session, StopReason};

/// Budgets of an automatic generation.
#[derive(Debug, Clone)]
pub struct AutoParams {
    /// Tokens the trunk may generate in all (branches not counted).
    pub max_tokens: usize,
    /// Tokens each branch may generate in all.
    pub max_branch_tokens: usize,
    /// Text put in the model's mouth at the start of the response: decoded as if the model
    /// had written it, and watched like generated text (it may open a block itself).
    pub response_prefix: String,
    /// Branches never sample end-of-generation: they end at their end marker or budget
    /// (benchmarks that need every branch to write its full budget).
    pub branches_ban_eog: bool,
    /// The answer ends when one of these appears in text the trunk writes itself (outside
    /// the branches), with [`StopReason::StopString`] as the trunk's stop reason; the rules
    /// of [`RunLimits::stop`] apply (whitespace-only stops wait for content). A string that is
    /// also one of the protocol's own markers stays the protocol's.
    pub stop: Vec<String>,
    /// Branches this answer may have open at once, all nesting levels together; blocks are cut
    /// to it with a warning, as they are to the session's free sequence ids. A server sharing
    /// one session between answers gives each its own share, so that what one answer forks
    /// never depends on what runs beside it. Default: no limit but the session's.
    pub max_open_branches: usize,
}

impl Default for AutoParams {
    fn default() -> Self {
        AutoParams {
            max_tokens: 512,
            max_branch_tokens: 256,
            response_prefix: String::new(),
            branches_ban_eog: false,
            stop: Vec::new(),
            max_open_branches: usize::MAX,
        }
    }
}

/// Whether the last run of `root` ended at one of the caller's stop strings rather than at one
/// of the protocol's (`protocol_stops`).
pub(crate) fn ended_by_caller_stop(
    session: &Session,
    root: NodeId,
    caller_stops: &[String],
    protocol_stops: &[String],
) -> bool {
    matches!(session.stop_reason(root), Some(StopReason::StopString(s))
        if caller_stops.contains(s) && !protocol_stops.contains(s))
}

/// A block the model opened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoBlock {
    /// Label path of the stream that forked ("" for the trunk).
    pub parent: String,
    /// The label the model announced for each branch opened (`2.1`), or its 1-based order
    /// where the protocol announces titles only.
    pub labels: Vec<String>,
    /// The announced title of each branch (the outline text; empty where none).
    pub titles: Vec<String>,
    /// The engine's label paths of the branches ("2", "2.1", ...).
    pub paths: Vec<String>,
}

/// Malformed output and the fallback taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoWarning {
    /// Label path of the stream ("" for the trunk).
    pub stream: String,
    /// What was malformed (each kind documents the fallback taken).
    pub kind: WarningKind,
    /// Byte offset in that stream's own text.
    pub at: usize,
    /// A readable description, with an excerpt of the offending text.
    pub message: String,
}

/// What an automatic generation did, besides the text (see [`Session::transcript`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AutoReport {
    /// Every block that was forked, in the order the model opened them (nested ones too).
    pub blocks: Vec<AutoBlock>,
    /// Every malformation met, in the order they were found; empty for well-formed output.
    pub warnings: Vec<AutoWarning>,
}

impl AutoReport {
    pub(crate) fn warn(&mut self, stream: &str, w: Warning, observer: &mut dyn Observer) -> bool {
        let ok = observer.on_event(&Event::Warning { label: stream, message: &w.message });
        self.warnings.push(AutoWarning { stream: stream.to_string(), kind: w.kind, at: w.at, message: w.message });
        ok
    }
}

/// One watched stream.
struct Stream {
    watcher: Watcher,
    /// Tokens left for this stream.
    budget: usize,
    /// Byte length of the node's text when its current run started.
    run_from: usize,
    /// Tokens the node had when its current run started.
    tokens_from: usize,
    state: StreamState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Running,
    /// Forked; waits for its branches.
    Waiting,
    /// A branch past its end marker, sampling the tokens the protocol keeps after it.
    Keeping,
    Done,
}

/// Single-token control strings become banned token ids; multi-token ones cannot be banned
/// by id (a plain-text tag spread over tokens) and are left to the watcher's fallbacks.
struct Bans {
    cache: HashMap<String, Option<Token>>,
}

impl Bans {
    fn tokens(&mut self, session: &Session, strings: &[String]) -> Vec<Token> {
        let model = session.model();
        strings
            .iter()
            .filter_map(|s| {
                *self.cache.entry(s.clone()).or_insert_with(|| match model.tokenize(s, false) {
                    Ok(t) if t.len() == 1 => Some(t[0]),
                    _ => None,
                })
            })
            .collect()
    }
}

/// One automatic generation in progress, rooted at the trunk or at a conversation's root
/// ([`Session::open_root`]): what [`generate_auto`] keeps between two steps of the session.
/// A caller that steps the session itself — many conversations in one context, each under
/// its own protocol — keeps one per conversation: [`AutoRun::start`], then after every
/// [`Session::step`] [`AutoRun::after_step`], until it says the answer is over.
pub struct AutoRun {
    root: NodeId,
    streams: BTreeMap<NodeId, Stream>,
    /// Open blocks: parent → its branches.
    blocks: BTreeMap<NodeId, Vec<NodeId>>,
    report: AutoReport,
    bans: Bans,
    branch_budget: usize,
    branches_ban_eog: bool,
    /// The caller's stop strings for the root (`AutoParams::stop`).
    root_stops: Vec<String>,
    /// `AutoParams::max_open_branches`.
    max_open_branches: usize,
}

/// An [`AutoRun`] at work: the run with the session and observer it acts on.
struct Driver<'s, 'o, 'r> {
    session: &'s mut Session,
    observer: &'o mut dyn Observer,
    run: &'r mut AutoRun,
}

/// Generates on the trunk under a stream protocol until the trunk ends (EOG, or its budget).
/// The session must hold the prompt (and nothing running). Branch counts are capped by the
/// session's free sequence ids and nesting by its `max_depth`, with warnings.
pub fn generate_auto(
    session: &mut Session,
    spec: &ProtocolSpec,
    params: &AutoParams,
    observer: &mut dyn Observer,
) -> Result<AutoReport> {
    let mut report = AutoReport::default();
    generate_auto_into(session, spec, params, observer, &mut report)?;
    Ok(report)
}

/// [`generate_auto`], filling `report` as it goes: when the call fails midway (a full KV
/// cache, a cancel, a failed decode) the report still describes every block and warning
/// before the failure, and the text so far is in the session.
pub fn generate_auto_into(
    session: &mut Session,
    spec: &ProtocolSpec,
    params: &AutoParams,
    observer: &mut dyn Observer,
    report: &mut AutoReport,
) -> Result<()> {
    let mut run = AutoRun::new(NodeId::TRUNK, spec, params, session)?;
    let mut result = run.begin(session, observer, &params.response_prefix);
    while result.is_ok() {
        match run.after_step(session, observer) {
            Ok(true) => break,
            Ok(false) => result = session.step(observer).map(|_| ()),
            Err(e) => result = Err(e),
        }
    }
    *report = std::mem::take(&mut run.report);
    result
}

impl AutoRun {
    /// Starts generating on `root` (the trunk, or a root of [`Session::open_root`]) under a
    /// stream protocol: `root` must be idle, holding its prompt. The session's limits win:
    /// deeper nesting is read as text, extra branches are cut (with warnings).
    pub fn start(
        session: &mut Session,
        root: NodeId,
        spec: &ProtocolSpec,
        params: &AutoParams,
        observer: &mut dyn Observer,
    ) -> Result<AutoRun> {
        let mut run = AutoRun::new(root, spec, params, session)?;
        run.begin(session, observer, &params.response_prefix)?;
        Ok(run)
    }

    fn new(root: NodeId, spec: &ProtocolSpec, params: &AutoParams, session: &Session) -> Result<AutoRun> {
        spec.validate().map_err(|e| Error::InvalidArgument(format!("protocol: {e}")))?;
        if session.root_of(root) != Some(root) {
            return Err(Error::InvalidArgument(format!("node {} is not a root", root.index())));
        }
        let mut spec = spec.clone();
        spec.max_depth = spec.max_depth.min(session.params().max_depth);
        let mut run = AutoRun {
            root,
            streams: BTreeMap::new(),
            blocks: BTreeMap::new(),
            report: AutoReport::default(),
            bans: Bans { cache: HashMap::new() },
            branch_budget: params.max_branch_tokens,
            branches_ban_eog: params.branches_ban_eog,
            root_stops: params.stop.clone(),
            max_open_branches: params.max_open_branches,
        };
        let root_text = session.node_text(root).len();
        let root_tokens = session.node_tokens(root).len();
        run.streams.insert(
            root,
            Stream {
                watcher: Watcher::trunk(&spec),
                budget: params.max_tokens,
                run_from: root_text,
                tokens_from: root_tokens,
                state: StreamState::Running,
            },
        );
        Ok(run)
    }

    /// Puts the response prefix in (watched like generated text) or starts the root's run.
    fn begin(&mut self, session: &mut Session, observer: &mut dyn Observer, response_prefix: &str) -> Result<()> {
        let root = self.root;
        let mut driver = Driver { session, observer, run: self };
        if response_prefix.is_empty() {
            return driver.start_run(root);
        }
        append_forced(driver.session, root, response_prefix, driver.observer)?;
        let actions = driver.feed(root, response_prefix);
        driver.act(root, actions, false)
    }

    /// Reads what the streams wrote in the last step and acts on it: forks, ends of branches,
    /// joins of finished blocks, the next runs. Returns true once the answer is over (the
    /// root's stream is done); the root is then idle and its text the whole answer.
    pub fn after_step(&mut self, session: &mut Session, observer: &mut dyn Observer) -> Result<bool> {
        Driver { session, observer, run: self }.after_step()
    }

    /// The node this run generates on.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// The blocks and warnings so far.
    pub fn report(&self) -> &AutoReport {
        &self.report
    }

    /// The report, once the run is over (or abandoned).
    pub fn into_report(self) -> AutoReport {
        self.report
    }
}

/// Decodes `text` into `node` as forced text and tells the observer ([`Event::Forced`]);
/// Err(Cancelled) when the observer says stop.
pub(crate) fn append_forced(
    session: &mut Session,
    node: NodeId,
    text: &str,
    observer: &mut dyn Observer,
) -> Result<()> {
    session.append_text(node, text)?;
    let label = session.label(node).unwrap_or("");
    if !observer.on_event(&Event::Forced { node, label, text }) {
        return Err(Error::Cancelled);
    }
    Ok(())
}

impl Driver<'_, '_, '_> {
    fn add_stream(&mut self, node: NodeId, watcher: Watcher, budget: usize) {
        let run_from = self.session.node_text(node).len();
        let tokens_from = self.session.node_tokens(node).len();
        self.run.streams.insert(node, Stream { watcher, budget, run_from, tokens_from, state: StreamState::Running });
    }

    fn limits(&mut self, node: NodeId) -> RunLimits {
        let stream = &self.run.streams[&node];
        let mut stop = stream.watcher.stop_strings();
        if node == self.run.root {
            stop.extend(self.run.root_stops.iter().filter(|s| !stop.contains(s)).cloned().collect::<Vec<_>>());
        }
        let banned = stream.watcher.banned_strings();
        let budget = stream.budget;
        let ban_eog = self.run.branches_ban_eog && node != self.run.root;
        let banned_tokens = self.run.bans.tokens(self.session, &banned);
        RunLimits { max_tokens: budget, stop, ban_eog, banned_tokens, ..Default::default() }
    }

    /// (Re)starts a stream's generation from where it is; a spent budget ends it instead.
    fn start_run(&mut self, node: NodeId) -> Result<()> {
        if self.run.streams[&node].budget == 0 {
            let actions = self.finish(node, StreamEnd::Limit);
            return self.act(node, actions, true);
        }
        let limits = self.limits(node);
        let text_len = self.session.node_text(node).len();
        let tokens = self.session.node_tokens(node).len();
        let stream = self.run.streams.get_mut(&node).expect("stream");
        stream.run_from = text_len;
        stream.tokens_from = tokens;
        stream.state = StreamState::Running;
        self.session.resume(node, &limits)
    }

    fn feed(&mut self, node: NodeId, text: &str) -> Vec<Action> {
        // Every stream but the root is an open branch of this answer.
        let own_share = self.run.max_open_branches.saturating_sub(self.run.streams.len() - 1);
        let cap = self.session.free_branch_slots().min(own_share);
        let stream = self.run.streams.get_mut(&node).expect("stream");
        stream.watcher.set_branch_cap(cap.min(stream.watcher.spec().max_branches));
        stream.watcher.feed(text)
    }

    fn finish(&mut self, node: NodeId, end: StreamEnd) -> Vec<Action> {
        self.run.streams.get_mut(&node).expect("stream").watcher.finish(end)
    }

    /// Acts on every stream whose run ended, and on what that ends in turn (a fork whose
    /// branches stop at once, a join), until every stream runs, waits, or is done. Returns
    /// whether the root is done.
    fn after_step(&mut self) -> Result<bool> {
        loop {
            let stopped: Vec<NodeId> = self
                .run
                .streams
                .iter()
                .filter(|(n, s)| s.state == StreamState::Running && !self.session.is_running(**n))
                .map(|(n, _)| *n)
                .collect();
            for node in &stopped {
                self.on_stopped(*node)?;
            }
            let mut kept_done = false;
            for (n, stream) in self.run.streams.iter_mut() {
                if stream.state == StreamState::Keeping && !self.session.is_running(*n) {
                    stream.state = StreamState::Done;
                    kept_done = true;
                }
            }
            let open_blocks = self.run.blocks.len();
            self.join_finished_blocks()?;
            if self.run.streams[&self.run.root].state == StreamState::Done {
                return Ok(true);
            }
            if stopped.is_empty() && !kept_done && open_blocks == self.run.blocks.len() {
                break;
            }
        }
        if !self.run.streams.keys().any(|n| self.session.is_running(*n)) {
            // Every stream waits on something that cannot come: a driver bug, reported
            // rather than looped on.
            return Err(Error::Internal("auto mode stalled with no stream running".into()));
        }
        Ok(false)
    }

    /// A stream's run ended: read what it wrote and act on it.
    fn on_stopped(&mut self, node: NodeId) -> Result<()> {
        let text = self.session.node_text(node);
        let tokens = self.session.node_tokens(node).len();
        let (mut from, used) = {
            let s = &self.run.streams[&node];
            (s.run_from.min(text.len()), tokens.saturating_sub(s.tokens_from))
        };
        // A run that ended inside a split character saw it as U+FFFD; once completed, the
        // character may be longer, so step back to a boundary rather than slice inside it.
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let caller_stop = node == self.run.root
            && ended_by_caller_stop(
                self.session,
                node,
                &self.run.root_stops,
                &self.run.streams[&node].watcher.stop_strings(),
            );
        let stream = self.run.streams.get_mut(&node).expect("stream");
        stream.budget = stream.budget.saturating_sub(used);
        let mut actions = self.feed(node, &text[from..]);
        if caller_stop {
            // The answer is over: whatever the same text opened is not started.
            actions.retain(|a| !matches!(a, Action::Fork(_) | Action::BranchEnd { .. }));
            actions.extend(self.finish(node, StreamEnd::Eos));
            return self.act(node, actions, true);
        }
        // A stop string means "look at the text"; anything else ends the stream.
        let end = match self.session.stop_reason(node) {
            Some(StopReason::StopString(_)) => None,
            Some(StopReason::Eog) => Some(StreamEnd::Eos),
            Some(StopReason::MaxTokens) => Some(StreamEnd::Limit),
            Some(StopReason::Cancelled) => Some(StreamEnd::Cancelled),
            Some(StopReason::KvCacheFull | StopReason::ServerLost) | None => Some(StreamEnd::Truncated),
        };
        let decided = actions.iter().any(|a| matches!(a, Action::Fork(_) | Action::BranchEnd { .. }));
        if let (false, Some(end)) = (decided, end) {
            actions.extend(self.finish(node, end));
        }
        self.act(node, actions, end.is_some())
    }

    /// Carries out a watcher's actions for `node`: report warnings, then fork, end the
    /// branch, end the stream (`stream_over`), or run on with the new stop strings.
    fn act(&mut self, node: NodeId, actions: Vec<Action>, stream_over: bool) -> Result<()> {
        let label = self.session.label(node).unwrap_or("").to_string();
        let mut next = None;
        for action in actions {
            match action {
                Action::Warning(w) => {
                    if !self.run.report.warn(&label, w, self.observer) {
                        return Err(Error::Cancelled);
                    }
                }
                Action::Fork(plan) => next = Some(Next::Fork(plan)),
                Action::BranchEnd { cause, .. } => next = Some(Next::End(cause)),
                Action::TrunkEnd { .. } => next = Some(Next::Stop),
                // Informational: the next run's stop strings and bans reflect them.
                Action::NoFork { .. } | Action::BlockOpened { .. } | Action::BlockClosed { .. } => {}
            }
        }
        match next {
            Some(Next::Fork(plan)) => self.fork(node, &label, plan),
            Some(Next::End(cause)) => self.end_branch(node, cause),
            Some(Next::Stop) => {
                self.run.streams.get_mut(&node).expect("stream").state = StreamState::Done;
                Ok(())
            }
            None if stream_over => {
                self.run.streams.get_mut(&node).expect("stream").state = StreamState::Done;
                Ok(())
            }
            None => self.start_run(node),
        }
    }

    /// How many of the node's last tokens lie wholly within its last `bytes` bytes (the
    /// trigger's own tokens; one that starts before it belongs to the text before, as in
    /// `protocol::layout`).
    fn tokens_within_tail(&self, node: NodeId, bytes: usize) -> usize {
        let ends = self.session.node_token_ends(node);
        let from = ends.last().map_or(0, |&total| total.saturating_sub(bytes));
        // Token i starts where token i - 1 ends.
        let starts = std::iter::once(0).chain(ends.iter().copied());
        starts.take(ends.len()).filter(|&s| s >= from).count()
    }

    /// A branch is over: closes it in the text where the protocol says so, lets it keep the
    /// tokens the protocol keeps after its end marker, and marks it done (or keeping).
    fn end_branch(&mut self, node: NodeId, cause: EndCause) -> Result<()> {
        let spec = self.run.streams[&node].watcher.spec();
        let (close, keep) = (spec.close_unfinished, spec.keep_after_end as usize);
        let end = spec.branch_end.clone();
        let unclosed = matches!(cause, EndCause::Stream(StreamEnd::Eos | StreamEnd::Limit | StreamEnd::Cancelled));
        if close && unclosed && node != self.run.root {
            // The engine writes the end marker itself (in place of the end of generation).
            self.session.append_text(node, &end)?;
        }
        let stream = self.run.streams.get_mut(&node).expect("stream");
        if cause == EndCause::Marker && keep > 0 {
            // The marker's stop leaves the node idle with fresh logits: sample on, unwatched.
            stream.state = StreamState::Keeping;
            return self.session.resume(node, &RunLimits { max_tokens: keep, ..Default::default() });
        }
        stream.state = StreamState::Done;
        Ok(())
    }

    fn fork(&mut self, node: NodeId, label: &str, plan: crate::protocol::ForkPlan) -> Result<()> {
        let spec = self.run.streams[&node].watcher.spec().clone();
        if !spec.trigger_in_cache {
            let n = self.tokens_within_tail(node, spec.trigger.len());
            if n > 0 {
                self.session.uncache_tail(node, n)?;
            }
        }
        let fork_text = spec.fork_text.clone();
        if !fork_text.is_empty() {
            self.session.append_text(node, &fork_text)?;
            self.run.streams.get_mut(&node).expect("stream").watcher.forked();
        }
        let parent_watcher = self.run.streams[&node].watcher.clone();
        let children: Vec<Watcher> = plan.branches.iter().map(|b| parent_watcher.child(b)).collect();
        let mut specs = Vec::with_capacity(children.len());
        for (i, (b, w)) in plan.branches.iter().zip(&children).enumerate() {
            let banned = w.banned_strings();
            // Each part of the prefix is tokenized on its own, as the engine feeds it.
            let mut prefix_tokens = Vec::new();
            if !spec.branch_prefix_parts.is_empty() {
                for part in spec.render_prefix_parts(i, &b.label, &b.title) {
                    prefix_tokens.extend(self.session.model().tokenize(&part, false)?);
                }
            }
            specs.push(BranchSpec {
                prefix: b.prefix.clone(),
                prefix_tokens,
                limits: RunLimits {
                    max_tokens: self.run.branch_budget,
                    stop: w.stop_strings(),
                    ban_eog: self.run.branches_ban_eog,
                    banned_tokens: self.run.bans.tokens(self.session, &banned),
                    ..Default::default()
                },
            });
        }
        let ids = self.session.fork(node, &specs)?;
        let labels: Vec<String> = plan.branches.iter().map(|b| b.label.clone()).collect();
        let titles: Vec<String> = plan.branches.iter().map(|b| b.title.clone()).collect();
        let paths: Vec<String> = ids.iter().map(|&id| self.session.label(id).unwrap_or("").to_string()).collect();
        if !self.observer.on_event(&Event::Fork { parent: node, label, branches: &paths }) {
            return Err(Error::Cancelled);
        }
        self.run.report.blocks.push(AutoBlock { parent: label.to_string(), labels, titles, paths });
        self.run.streams.get_mut(&node).expect("stream").state = StreamState::Waiting;
        for (&id, w) in ids.iter().zip(children) {
            self.add_stream(id, w, self.run.branch_budget);
            // Forks sample each branch's first token right away; an immediate stop (EOG,
            // a zero budget) is picked up by the next pass of `drive`.
            let prefix_len = self.session.node_text(id).len();
            let stream = self.run.streams.get_mut(&id).expect("stream");
            stream.run_from = prefix_len;
            stream.tokens_from = self.session.node_tokens(id).len();
        }
        self.run.blocks.insert(node, ids);
        Ok(())
    }

    /// Joins every open block whose branches are all done, innermost first, and resumes
    /// its parent after the protocol's join text.
    fn join_finished_blocks(&mut self) -> Result<()> {
        loop {
            let ready = self.run.blocks.iter().rev().find_map(|(parent, kids)| {
                kids.iter().all(|k| self.run.streams[k].state == StreamState::Done).then_some(*parent)
            });
            let Some(parent) = ready else { return Ok(()) };
            let kids = self.run.blocks.remove(&parent).expect("block");
            let kept = kids.len();
            let join_text = self.run.streams[&parent].watcher.join_text().to_string();
            let join_text = if join_text.is_empty() { "\n".to_string() } else { join_text };
            let spec = self.run.streams[&parent].watcher.spec();
            let (rule, repeat) = (spec.join_rule, spec.join_repeats_last);
            let tokens = self.session.model().tokenize(&join_text, false)?;
            self.session.join_full(parent, JoinMode::All, rule, &tokens, repeat)?;
            for k in kids {
                self.run.streams.remove(&k);
            }
            let label = self.session.label(parent).unwrap_or("").to_string();
            if !self.observer.on_event(&Event::Join { parent, label: &label, kept }) {
                return Err(Error::Cancelled);
            }
            let actions = self.run.streams.get_mut(&parent).expect("stream").watcher.joined();
            self.run.streams.get_mut(&parent).expect("stream").state = StreamState::Running;
            for a in actions {
                if let Action::Warning(w) = a {
                    if !self.run.report.warn(&label, w, self.observer) {
                        return Err(Error::Cancelled);
                    }
                }
            }
            self.start_run(parent)?;
        }
    }
}

enum Next {
    Fork(crate::protocol::ForkPlan),
    End(EndCause),
    Stop,
}
