//! Many requests in one context: continuous batching over the roots of a [`Session`].
//!
//! Each request is a conversation of its own ([`Session::open_root_queued`]). Every call of
//! [`Conversations::step`] admits what waits and fits, decodes one token of every running
//! node of every request in one batch — with the prompts of the requests just admitted in
//! the same batch — then lets each request act on what it wrote (a protocol forks and joins;
//! a plain answer ends; a request whose prompt was decoded begins) and hands finished ones
//! back. A request leaves at the step it ends; the next one joins at the following step.
//!
//! Budgets, so that no request ever takes what another needs mid-answer:
//! - **KV cells**: a request is admitted only when the cells it may fill (prompt, answer
//!   budget, and its branches' budgets) fit beside what the admitted ones may fill; one that
//!   could never fit is refused at [`Conversations::submit`] with [`Error::PromptTooLong`].
//! - **Sequence ids**: at most `max_active` requests run, each with at most
//!   `branches_per_request` branches open at once.
//!
//! Prompt reuse: a plain request's root stays in the cache when it ends; a later request
//! whose prompt starts with its tokens reopens it and decodes only the rest (a chat turn pays
//! for its new text). Cached roots are evicted least recently used when a request needs their
//! cells or ids. A root that forked is closed at its end, not cached.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::auto::sot::{SotParams, SotRun};
use crate::auto::{AutoParams, AutoReport, AutoRun};
use crate::error::{Error, Result};
use crate::model::Token;
use crate::protocol::{ProtocolSpec, SkeletonFormat};
use crate::session::{
    Event, NodeId, Observer, RunLimits, SamplingParams, Session, StopReason, TokenLogprob, MAX_TOP_LOGPROBS,
};

/// Forced tokens reserved per branch (its prefix, its share of the join text).
const PER_BRANCH_FORCED: usize = 32;

/// A request's handle, unique within its [`Conversations`].
pub type RequestId = u64;

/// How a request decodes.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Serially, as the model answers plainly: `limits` as for [`Session::generate`]
    /// (`strip_stop` applies to the outcome's text).
    Plain(RunLimits),
    /// Under a stream protocol: the model forks where it marks independent parts.
    Auto {
        /// The protocol (boxed: a spec is large beside plain limits).
        spec: Box<ProtocolSpec>,
        /// Its budgets and stops.
        params: AutoParams,
    },
    /// Skeleton-of-Thought: the model writes a skeleton of points, which are expanded as
    /// branches ([`SotRun`]). The prompt must be the format's request for the question
    /// ([`crate::auto::sot::sot_prompt`]) followed by its primer; the outcome's text is the
    /// assembled answer.
    Sot {
        /// The skeleton format (boxed, as a spec).
        format: Box<SkeletonFormat>,
        /// Its budgets.
        params: SotParams,
    },
}

/// A request's protocol run, stepped with the others.
enum Run {
    Auto(AutoRun),
    Sot(SotRun),
}

impl Run {
    fn after_step(&mut self, session: &mut Session, observer: &mut dyn Observer) -> Result<bool> {
        match self {
            Run::Auto(run) => run.after_step(session, observer),
            Run::Sot(run) => run.after_step(session, observer),
        }
    }
}

/// One request: a prompt (already rendered and tokenized, start token included where the
/// model wants one), how to sample and how to decode.
#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt's tokens.
    pub prompt: Vec<Token>,
    /// Temperature, top-k/p, min-p and seed of this request (penalties and bias are the
    /// session's).
    pub sampling: SamplingParams,
    /// Plain or under a protocol.
    pub mode: Mode,
    /// Plain requests: record each answer token's log-probability with its step's this many
    /// most likely tokens (0 to [`crate::MAX_TOP_LOGPROBS`]) into [`Outcome::logprobs`].
    pub logprobs: Option<usize>,
}

/// What a finished request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The answer: what was decoded after the prompt (branches flattened into it under a
    /// protocol, tags included), without the stop string when the plain limits strip it.
    pub text: String,
    /// Why the answer ended (the root's last stop; None for a Skeleton-of-Thought answer
    /// assembled from its expansions).
    pub stop_reason: Option<StopReason>,
    /// Set when decoding failed part-way: `text` holds what was decoded before.
    pub error: Option<Error>,
    /// Tokens in the prompt, and how many of them came from the cache.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from an earlier request's cells.
    pub reused_tokens: usize,
    /// Tokens the model sampled for this request, branches included.
    pub generated_tokens: usize,
    /// Steps in which this request decoded at least one token (its critical path).
    pub steps: usize,
    /// Under a protocol: the blocks and warnings.
    pub report: Option<AutoReport>,
    /// From submission to admission.
    pub queued: Duration,
    /// From admission to the end.
    pub decoding: Duration,
    /// When the request asked for them: the answer's tokens with their log-probabilities, up
    /// to the end of `text` (a stripped stop string's tokens are left out).
    pub logprobs: Vec<TokenLogprob>,
}

/// Receives what requests do, per request.
pub trait Sink {
    /// An event of request `id` (as [`Observer`] receives them for one session; labels are
    /// relative to the request: "" is its own trunk).
    fn event(&mut self, id: RequestId, event: &Event<'_>);
    /// Request `id` is over; nothing more comes for it.
    fn finished(&mut self, id: RequestId, outcome: Outcome);
}

/// Sizes of a [`Conversations`].
#[derive(Debug, Clone)]
pub struct ConversationsParams {
    /// Requests decoding at once; more wait in the queue.
    pub max_active: usize,
    /// Branches one request may have open at once (its protocol's blocks are cut to it).
    pub branches_per_request: usize,
    /// Finished plain answers kept for prompt reuse (each holds a sequence id and its cells;
    /// 0: none).
    pub cached_prompts: usize,
}

impl Default for ConversationsParams {
    fn default() -> Self {
        ConversationsParams { max_active: 4, branches_per_request: 4, cached_prompts: 4 }
    }
}

impl ConversationsParams {
    /// Sequence ids the session needs beside the trunk: one root and its branches per active
    /// request, and one per cached prompt (its `max_branches` must be at least this).
    pub fn sequences(&self) -> usize {
        self.max_active * (1 + self.branches_per_request) + self.cached_prompts
    }
}

/// Counts of a [`Conversations`] right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests decoding.
    pub active: usize,
    /// Requests waiting for room.
    pub queued: usize,
    /// Roots kept for prompt reuse.
    pub cached: usize,
    /// KV cells in use (cached roots included).
    pub kv_cells: u64,
    /// KV cells the active requests may fill.
    pub kv_reserved: u64,
}

struct Active {
    root: NodeId,
    /// How it decodes, until its run begins (its prompt is queued for the next step).
    starting: Option<Mode>,
    run: Option<Run>,
    limits: Option<RunLimits>,
    reserve: usize,
    prompt_tokens: usize,
    reused_tokens: usize,
    /// Bytes of the root's flattened text before the answer.
    answer_from: usize,
    generated: usize,
    steps: usize,
    stepped: bool,
    queued: Duration,
    admitted: Instant,
}

/// Requests decoding together in one session; see the module's documentation.
pub struct Conversations {
    session: Session,
    params: ConversationsParams,
    queue: VecDeque<(RequestId, Request, Instant)>,
    active: BTreeMap<RequestId, Active>,
    /// Idle roots kept for reuse, least recently used first, with their cells.
    cache: VecDeque<(NodeId, usize)>,
    /// The request each node index belongs to (None: the trunk, cached or closed roots).
    owner: Vec<Option<RequestId>>,
    next_id: RequestId,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations").field("load", &self.load()).finish()
    }
}

impl Conversations {
    /// Serves requests on `session` (fresh: nothing in its trunk). Its `max_branches` must
    /// cover [`ConversationsParams::sequences`].
    pub fn new(session: Session, params: ConversationsParams) -> Result<Conversations> {
        if params.max_active == 0 {
            return Err(Error::InvalidArgument("max_active must be at least 1".into()));
        }
        let have = session.params().max_branches as usize;
        if have < params.sequences() {
            return Err(Error::InvalidArgument(format!(
                "{} requests with {} branches each and {} cached prompts need {} sequence ids; the session has max_branches {have}",
                params.max_active,
                params.branches_per_request,
                params.cached_prompts,
                params.sequences()
            )));
        }
        Ok(Conversations {
            session,
            params,
            queue: VecDeque::new(),
            active: BTreeMap::new(),
            cache: VecDeque::new(),
            owner: Vec::new(),
            next_id: 1,
        })
    }

    /// The session underneath (its model, statistics, cells).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// What runs, waits and is cached now.
    pub fn load(&self) -> Load {
        Load {
            active: self.active.len(),
            queued: self.queue.len(),
            cached: self.cache.len(),
            kv_cells: self.session.kv_cells_used(),
            kv_reserved: self.active.values().map(|a| a.reserve as u64).sum(),
        }
    }

    /// The answer of a decoding request as far as it is settled (see
    /// [`Session::root_settled_bytes`]): what a stream can send without taking anything back
    /// (nothing of a Skeleton-of-Thought answer, which is assembled at its end).
    /// Raw bytes: the last character may be incomplete. None for a request not decoding.
    pub fn settled_answer(&self, id: RequestId) -> Option<Vec<u8>> {
        let active = self.active.get(&id)?;
        // Skeleton-of-Thought's answer is assembled at its end: nothing of it settles before.
        if active.starting.is_some() || matches!(active.run, Some(Run::Sot(_))) {
            return Some(Vec::new());
        }
        let bytes = self.session.root_settled_bytes(active.root).ok()?;
        Some(bytes.get(active.answer_from..).unwrap_or_default().to_vec())
    }

    /// Whether nothing runs or waits.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.queue.is_empty()
    }

    /// Queues a request; it starts at a coming step, when there is room. Refused at once when
    /// it could never fit the context, or its parameters are wrong.
    pub fn submit(&mut self, request: Request) -> Result<RequestId> {
        if request.prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        request.sampling.validate_for(self.session.model().n_vocab())?;
        if let Mode::Auto { spec, .. } = &request.mode {
            spec.validate().map_err(|e| Error::InvalidArgument(format!("protocol: {e}")))?;
        }
        if !matches!(request.mode, Mode::Plain(_)) && request.logprobs.is_some() {
            return Err(Error::InvalidArgument("logprobs: for plain requests only".into()));
        }
        if let Some(n) = request.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidArgument(format!("logprobs {n}: at most {MAX_TOP_LOGPROBS} alternatives")));
        }
        let need = self.reserve(&request);
        let n_ctx = self.session.n_ctx() as usize;
        if need > n_ctx {
            return Err(Error::PromptTooLong { tokens: need, n_ctx });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, request, Instant::now()));
        Ok(id)
    }

    /// Drops a request, queued or decoding, at once: its cells and ids are freed and nothing
    /// more is reported for it. Returns whether it was there.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(at) = self.queue.iter().position(|(q, ..)| *q == id) {
            self.queue.remove(at);
            return true;
        }
        let Some(active) = self.active.remove(&id) else { return false };
        self.forget_owner(id);
        // The root is live (it was admitted and not yet finished): closing cannot fail.
        let _ = self.session.close_root(active.root);
        true
    }

    /// One step: admits the waiting requests that fit, decodes one token of every running
    /// node of every request, lets each act on it, and reports the finished ones. Returns
    /// false when nothing runs or waits (the call did nothing).
    ///
    /// A request that fails on its own (a protocol run that cannot go on) finishes with its
    /// error; one that fails in the shared decode (a lost RPC server, a decode error) takes
    /// every running request with it, each finishing with the error, and the call returns it.
    pub fn step(&mut self, sink: &mut dyn Sink) -> Result<bool> {
        if self.is_idle() {
            self.forget_history();
            return Ok(false);
        }
        self.admit(sink);
        if self.active.is_empty() {
            return Ok(!self.queue.is_empty());
        }
        for a in self.active.values_mut() {
            a.stepped = false;
        }
        let mut router = Router { owner: &self.owner, active: &mut self.active, sink };
        let decoded = self.session.step(&mut router);
        if let Err(e) = decoded {
            let ids: Vec<RequestId> = self.active.keys().copied().collect();
            for id in ids {
                self.finish(id, Some(e.clone()), sink);
            }
            return Err(e);
        }
        for a in self.active.values_mut() {
            a.steps += a.stepped as usize;
        }
        let ids: Vec<RequestId> = self.active.keys().copied().collect();
        for id in ids {
            // A request whose prompt this step decoded begins now; it acts from the next.
            if self.active.get(&id).is_some_and(|a| a.starting.is_some()) {
                self.begin(id, sink);
                continue;
            }
            match self.after_step(id, sink) {
                Ok(false) if self.over_budget(id) => self.finish_cut(id, sink),
                Ok(false) => {}
                Ok(true) => self.finish(id, None, sink),
                Err(e) => self.finish(id, Some(e), sink),
            }
        }
        Ok(true)
    }

    /// Whether request `id` may pass its reservation in the next step: each step adds a token
    /// per running node and a fork or join some forced tokens per branch. (A protocol answer
    /// that opens block after block can outgrow what was reserved for it; it is cut there,
    /// rather than fill the cache under the other requests.)
    fn over_budget(&self, id: RequestId) -> bool {
        let Some(a) = self.active.get(&id) else { return false };
        let next_step = (1 + self.params.branches_per_request) * (1 + PER_BRANCH_FORCED);
        self.session.root_cells(a.root).unwrap_or(0) as usize + next_step > a.reserve
    }

    /// The session keeps a record of every node it ever opened (closed ones hold only their
    /// bookkeeping) and walks it each step; once it is long and nothing runs, it is cleared
    /// and the cached prompts with it.
    fn forget_history(&mut self) {
        const LONG_HISTORY: usize = 4096;
        if self.session.nodes_opened() > LONG_HISTORY {
            self.session.clear();
            self.cache.clear();
            self.owner.clear();
        }
    }

    /// Cells a request may fill: its prompt, its answer, and under a protocol the budgets of
    /// the branches it may have open, with room for tags and join texts.
    fn reserve(&self, request: &Request) -> usize {
        let answer = match &request.mode {
            Mode::Plain(limits) => limits.max_tokens,
            Mode::Auto { spec, params } => {
                let branches = spec.max_branches.min(self.params.branches_per_request);
                params.max_tokens + branches * (params.max_branch_tokens + PER_BRANCH_FORCED) + PER_BRANCH_FORCED
            }
            // The skeleton, the expansion instruction, then the points as branches — or, for
            // an unusable skeleton, a serial answer of a few points' length.
            Mode::Sot { params, .. } => {
                let branches = self.params.branches_per_request;
                let expanded = branches * (params.point_tokens + PER_BRANCH_FORCED);
                params.skeleton_tokens + 2 * PER_BRANCH_FORCED + expanded.max(params.point_tokens * branches.max(3))
            }
        };
        request.prompt.len() + answer + (1 + self.params.branches_per_request) * (1 + PER_BRANCH_FORCED)
    }

    /// Starts the waiting requests that fit, oldest first; a request that does not fit yet
    /// keeps its place and the ones behind it wait too (no overtaking: no starvation).
    fn admit(&mut self, sink: &mut dyn Sink) {
        while self.active.len() < self.params.max_active {
            let Some((id, request, submitted)) = self.queue.pop_front() else { return };
            let need = self.reserve(&request);
            if !self.make_room(need, &request.prompt) {
                self.queue.push_front((id, request, submitted));
                return;
            }
            if let Err(e) = self.start(id, request, need, submitted) {
                sink.finished(id, failed_outcome(e, submitted));
            }
        }
    }

    /// Evicts cached roots, least recently used first (sparing the one this prompt would
    /// reuse best), until `need` cells and a root's and its branches' ids are free beside
    /// what the active requests may fill. False when even an empty cache leaves too little.
    fn make_room(&mut self, need: usize, prompt: &[Token]) -> bool {
        let n_ctx = self.session.n_ctx() as usize;
        let reserved: usize = self.active.values().map(|a| a.reserve).sum();
        let ids_needed = 1 + self.params.branches_per_request;
        let keep = self.best_cached(prompt).map(|(root, _)| root);
        loop {
            let cached: usize = self.cache.iter().map(|(_, cells)| cells).sum();
            let active_cells = (self.session.kv_cells_used() as usize).saturating_sub(cached);
            // Active requests may still grow to their reservations.
            let committed = reserved.max(active_cells) + cached;
            if committed + need <= n_ctx && self.session.free_branch_slots() >= ids_needed {
                return true;
            }
            // The root this prompt would reuse goes last.
            let victim = self.cache.iter().position(|(root, _)| Some(*root) != keep);
            let Some(at) = victim.or(if self.cache.is_empty() { None } else { Some(0) }) else { return false };
            let (root, _) = self.cache.remove(at).expect("victim");
            let _ = self.session.close_root(root);
        }
    }

    /// The cached root that holds the longest start of `prompt`, with that length.
    fn best_cached(&self, prompt: &[Token]) -> Option<(NodeId, usize)> {
        self.cache
            .iter()
            .map(|&(root, _)| (root, self.session.reusable_prefix(root, prompt)))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(_, n)| n)
    }

    /// Admits request `id`: opens its root (or reopens the cached one its prompt starts
    /// with), its prompt queued for the next step's batch. Its run begins after that step
    /// ([`Conversations::begin`]).
    fn start(&mut self, id: RequestId, request: Request, reserve: usize, submitted: Instant) -> Result<()> {
        let (queued, admitted) = (submitted.elapsed(), Instant::now());
        let first = self.session.nodes_opened();
        let (root, reused) = match self.best_cached(&request.prompt) {
            Some((root, _)) => {
                self.cache.retain(|(r, _)| *r != root);
                match self.session.reopen_root_queued(root, &request.prompt, &request.sampling) {
                    Ok(reused) => (root, reused),
                    Err(e) => {
                        let _ = self.session.close_root(root);
                        return Err(e);
                    }
                }
            }
            None => (self.session.open_root_queued(&request.prompt, &request.sampling)?, 0),
        };
        // A reopened root is older than the nodes opened now.
        self.own(first, id);
        self.owner[root.index()] = Some(id);
        // Also for a reopened root, which may have recorded them for its last request.
        if let Err(e) = self.session.set_root_logprobs(root, request.logprobs) {
            self.forget_owner(id);
            let _ = self.session.close_root(root);
            return Err(e);
        }
        // The root's text is its prompt's tokens' bytes; the answer follows.
        let mut bytes = Vec::new();
        for &t in &request.prompt {
            self.session.model().token_bytes(t, &mut bytes);
        }
        let active = Active {
            root,
            starting: Some(request.mode),
            run: None,
            limits: None,
            reserve,
            prompt_tokens: request.prompt.len(),
            reused_tokens: reused,
            answer_from: bytes.len(),
            generated: 0,
            steps: 0,
            stepped: false,
            queued,
            admitted,
        };
        self.active.insert(id, active);
        Ok(())
    }

    /// Begins request `id`'s run once its prompt is decoded: a plain answer or a protocol run
    /// samples its first token (decoded in the next step). False when it could not begin (it
    /// is then finished with the error).
    fn begin(&mut self, id: RequestId, sink: &mut dyn Sink) -> bool {
        let Some(active) = self.active.get_mut(&id) else { return false };
        let Some(mode) = active.starting.take() else { return true };
        let root = active.root;
        let started = match mode {
            Mode::Plain(limits) => {
                let r = self.session.resume(root, &limits);
                active.limits = Some(limits);
                r
            }
            Mode::Auto { spec, mut params } => {
                params.max_open_branches = params.max_open_branches.min(self.params.branches_per_request);
                let mut one = OneRequest { id, sink, generated: 0 };
                let before = self.session.nodes_opened();
                let r = AutoRun::start(&mut self.session, root, &spec, &params, &mut one);
                active.generated += one.generated;
                let run = r.map(|run| active.run = Some(Run::Auto(run)));
                self.own(before, id);
                run
            }
            Mode::Sot { format, params } => {
                let r = SotRun::start(&mut self.session, root, &format, &params, self.params.branches_per_request);
                r.map(|run| active.run = Some(Run::Sot(run)))
            }
        };
        match started {
            Ok(()) => true,
            Err(e) => {
                self.finish(id, Some(e), sink);
                false
            }
        }
    }

    /// Marks the nodes opened from index `from` on as request `id`'s.
    fn own(&mut self, from: usize, id: RequestId) {
        let n = self.session.nodes_opened();
        self.owner.resize(n, None);
        for slot in &mut self.owner[from..n] {
            if slot.is_none() {
                *slot = Some(id);
            }
        }
    }

    fn forget_owner(&mut self, id: RequestId) {
        for slot in &mut self.owner {
            if *slot == Some(id) {
                *slot = None;
            }
        }
    }

    /// Lets request `id` act on its last step. True when it is over.
    fn after_step(&mut self, id: RequestId, sink: &mut dyn Sink) -> Result<bool> {
        let active = self.active.get_mut(&id).expect("active request");
        let Some(run) = active.run.as_mut() else {
            return Ok(!self.session.is_running(active.root));
        };
        let before = self.session.nodes_opened();
        let mut one = OneRequest { id, sink, generated: 0 };
        let done = run.after_step(&mut self.session, &mut one);
        active.generated += one.generated;
        self.own(before, id);
        done
    }

    /// Ends request `id` where it stands, as if its budget had run out.
    fn finish_cut(&mut self, id: RequestId, sink: &mut dyn Sink) {
        self.finish_as(id, None, Some(StopReason::MaxTokens), sink);
    }

    /// Ends request `id`: reports its outcome, then caches its root (a plain answer) or
    /// closes it.
    fn finish(&mut self, id: RequestId, error: Option<Error>, sink: &mut dyn Sink) {
        self.finish_as(id, error, None, sink);
    }

    /// The log-probabilities a root recorded for its answer (the tokens after its
    /// `prompt_tokens`), those starting within the answer's first `text_len` bytes.
    fn answer_logprobs(&self, root: NodeId, prompt_tokens: usize, text_len: usize) -> Vec<TokenLogprob> {
        let mut at = 0;
        let mut piece = Vec::new();
        let mut kept = Vec::new();
        for lp in self.session.node_logprobs(root).iter().filter(|l| l.pos as usize >= prompt_tokens) {
            if at >= text_len {
                break;
            }
            piece.clear();
            self.session.model().token_bytes(lp.token, &mut piece);
            at += piece.len();
            kept.push(lp.clone());
        }
        kept
    }

    /// Bytes of a root's last token (where a stop string that ended it was completed).
    fn piece_len(&self, last: Option<&Token>) -> usize {
        let mut bytes = Vec::new();
        if let Some(&t) = last {
            self.session.model().token_bytes(t, &mut bytes);
        }
        bytes.len()
    }

    /// [`Conversations::finish`], with the stop reason given (else the root's own).
    fn finish_as(&mut self, id: RequestId, error: Option<Error>, reason: Option<StopReason>, sink: &mut dyn Sink) {
        let Some(active) = self.active.remove(&id) else { return };
        self.forget_owner(id);
        let root = active.root;
        let flat = self.session.root_transcript(root).map(|t| t.text).unwrap_or_default();
        let cut = reason.is_some();
        let stop_reason = match &active.run {
            // Its root stopped at the skeleton's end; the answer is the joined expansions.
            Some(Run::Sot(run)) if reason.is_none() && !run.answer().serial_fallback => None,
            _ => reason.or_else(|| self.session.stop_reason(root).cloned()),
        };
        let tokens = self.session.node_tokens(root);
        let mut text = match &active.run {
            // Skeleton-of-Thought's answer is its points with their expansions, assembled.
            Some(Run::Sot(run)) => run.answer().answer.clone(),
            _ => flat.get(active.answer_from..).unwrap_or("").to_string(),
        };
        if let Some(limits) = &active.limits {
            let keep = limits.returned_len(stop_reason.as_ref(), &[], text.as_bytes(), self.piece_len(tokens.last()));
            text.truncate(floor_char_boundary(&text, keep));
        }
        let logprobs = self.answer_logprobs(root, active.prompt_tokens, text.len());
        let outcome = Outcome {
            text,
            stop_reason,
            error,
            prompt_tokens: active.prompt_tokens,
            reused_tokens: active.reused_tokens,
            generated_tokens: active.generated,
            steps: active.steps,
            report: match active.run {
                Some(Run::Auto(run)) => Some(run.into_report()),
                Some(Run::Sot(run)) => Some(run.into_answer().report),
                None => None,
            },
            queued: active.queued,
            decoding: active.admitted.elapsed(),
            logprobs,
        };
        // Only a root that never forked can be reopened (`reusable_prefix` is 0 otherwise).
        let cacheable = self.params.cached_prompts > 0
            && !cut
            && outcome.error.is_none()
            && self.session.reusable_prefix(root, &tokens) > 0;
        sink.finished(id, outcome);
        if !cacheable {
            let _ = self.session.close_root(root);
            return;
        }
        self.cache.push_back((root, tokens.len()));
        // The cache keeps only the sequence ids no active request may need, so that a
        // request's forks never depend on what was cached beside it.
        while self.cache.len() > self.params.cached_prompts {
            let (old, _) = self.cache.pop_front().expect("over capacity");
            let _ = self.session.close_root(old);
        }
    }
}

/// Routes the shared step's events to the request each node belongs to, counting the tokens
/// each request sampled and whether it decoded in this step.
struct Router<'a> {
    owner: &'a [Option<RequestId>],
    active: &'a mut BTreeMap<RequestId, Active>,
    sink: &'a mut dyn Sink,
}

impl Observer for Router<'_> {
    fn on_event(&mut self, event: &Event<'_>) -> bool {
        let node = match event {
            Event::Token { node, .. } | Event::End { node, .. } | Event::Forced { node, .. } => *node,
            Event::Fork { parent, .. } | Event::Join { parent, .. } => *parent,
            Event::Warning { .. } => return true,
        };
        let Some(Some(id)) = self.owner.get(node.index()) else { return true };
        if let (Event::Token { token, .. }, Some(a)) = (event, self.active.get_mut(id)) {
            if *token >= 0 {
                a.generated += 1;
                a.stepped = true;
            }
        }
        self.sink.event(*id, event);
        // One request's reader going away is handled by `cancel`, never by stopping the
        // step, which would stop every request.
        true
    }
}

/// The events of one request's own actions (a fork, a join, a warning, forced text).
struct OneRequest<'a> {
    id: RequestId,
    sink: &'a mut dyn Sink,
    generated: usize,
}

impl Observer for OneRequest<'_> {
    fn on_event(&mut self, event: &Event<'_>) -> bool {
        if let Event::Token { token, .. } = event {
            self.generated += (*token >= 0) as usize;
        }
        self.sink.event(self.id, event);
        true
    }
}

fn failed_outcome(error: Error, submitted: Instant) -> Outcome {
    Outcome { error: Some(error), queued: submitted.elapsed(), ..Default::default() }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}
