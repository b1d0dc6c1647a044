//! The state machine of one stream (the trunk or one branch) over its text. It never owns
//! the text: the streaming `Watcher` feeds it a growing buffer, the complete-text
//! analyses (`layout`, `check`) a finished one, so inference and analysis
//! take exactly the same decisions.

use serde::Serialize;

use super::fork::{plan_fork, ForkPlan, Parent, Planned};
use super::scan::{Found, TagSet};
use super::spec::{Phase, ProtocolSpec, Role, StreamState};
use super::warning::{Warning, WarningKind};

/// Why a stream ended without its end marker (what the driver saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// The model emitted end-of-generation. An accepted way to end a branch.
    Eos,
    /// The run reached its token limit.
    Limit,
    /// The run was cancelled.
    Cancelled,
    /// A complete text ended here (analysis of a finished text).
    Truncated,
}

/// How a branch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// Its end marker.
    Marker,
    /// The stream ended otherwise.
    Stream(StreamEnd),
    /// The protocol ends it: a plan it will not fork ([`super::BadPlan::EndStream`]), or the
    /// trunk's last allowed block closed (`max_blocks`).
    Protocol,
}

/// What the driver should do (or may like to know), in text order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A block opener was seen at `start..end`; `depth` is the new block's depth.
    /// Informational: the stream's stop strings and bans changed.
    BlockOpened {
        /// Byte offset of the opener's first byte.
        start: usize,
        /// Byte offset just past the opener.
        end: usize,
        /// Depth of the new block: 1 for a block the trunk opens, 2 for one inside a branch
        /// of a top-level block, …
        depth: u32,
    },
    /// Fork now, one branch per plan entry; then stop this stream until its branches are
    /// joined.
    Fork(ForkPlan),
    /// The trigger at `start..end` was seen, but nothing can be forked (the warning before
    /// says why): resume this stream serially.
    NoFork {
        /// Byte offset of the trigger's first byte.
        start: usize,
        /// Byte offset just past the trigger.
        end: usize,
    },
    /// This branch is over (`at`: end of its marker, or of its text).
    BranchEnd {
        /// Byte offset where the branch ends: past its end marker, or where its text stopped.
        at: usize,
        /// What ended it.
        cause: EndCause,
    },
    /// The trunk is over by the protocol's rule ([`EndCause::Protocol`]) at `at`: stop
    /// generating.
    TrunkEnd {
        /// Byte offset where the trunk's text ends.
        at: usize,
    },
    /// The block was closed at `start..end`. Informational.
    BlockClosed {
        /// Byte offset of the closer's first byte.
        start: usize,
        /// Byte offset just past the closer.
        end: usize,
        /// Depth of the block that closed (as in `BlockOpened`).
        depth: u32,
    },
    /// Something was malformed; the documented fallback was taken.
    Warning(Warning),
}

/// The state of one stream; positions are byte offsets in the stream's text.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub phase: Phase,
    pub depth: u32,
    /// The label this branch was announced with ("" for the trunk).
    pub label: String,
    /// The branch's path in the tree ("" for the trunk).
    pub path: String,
    /// Next byte to scan.
    pub cursor: usize,
    /// Where the announcements of the next block may start.
    segment_start: usize,
    /// Whether text after a stop was already reported (once per stop).
    warned_overhang: bool,
    /// Most branches a fork may open.
    pub cap: usize,
    /// After a join, the first summary opener is the join's own (appended by the driver, or
    /// written in an analysed text), not a second summary.
    summary_expected: bool,
    /// Blocks this stream has closed (for `max_blocks`).
    blocks_closed: u32,
    /// Reading a complete text the engine wrote (not watching a live stream): where the
    /// protocol joins unfinished branches as they stand, the join's summary opener at a
    /// branch's own level means the branch was cut there (end of generation or its budget;
    /// Multiverse transcripts hold `…\boxed{294}\).<Conclusion>\n`).
    pub analysis: bool,
}

impl Machine {
    pub(crate) fn new(depth: u32, label: String, path: String, start: usize, cap: usize) -> Machine {
        Machine {
            phase: Phase::Serial,
            depth,
            label,
            path,
            cursor: start,
            segment_start: start,
            warned_overhang: false,
            cap,
            summary_expected: false,
            blocks_closed: 0,
            analysis: false,
        }
    }

    pub(crate) fn state(&self) -> StreamState {
        StreamState { phase: self.phase, depth: self.depth }
    }

    /// The part of the stream's `text` where the next fork's announcements are.
    pub(crate) fn announcing_text<'t>(&self, text: &'t str) -> &'t str {
        text.get(self.segment_start..).unwrap_or("")
    }

    /// Scans `text` from the cursor. Returns after a fork or a branch end (the caller decides
    /// what the following text is), or when the text is used up. With `complete = false`, a
    /// possible control string at the end of `text` is left for the next call.
    pub(crate) fn advance(
        &mut self,
        spec: &ProtocolSpec,
        tags: &TagSet,
        text: &str,
        complete: bool,
        out: &mut Vec<Action>,
    ) {
        while matches!(self.phase, Phase::Serial | Phase::Announcing | Phase::AfterJoin | Phase::Fallback) {
            match tags.find(text, self.cursor, complete) {
                Found::Nothing => {
                    self.cursor = text.len();
                    return;
                }
                Found::Pending(at) => {
                    self.cursor = at;
                    return;
                }
                Found::Tag { role, start, end } => {
                    self.cursor = end;
                    self.on_tag(spec, role, start, end, text, out);
                }
            }
        }
    }

    /// Text that arrives after a fork (before the join) or after the branch ended: it stays in
    /// the text but means nothing to the protocol. Reported once if it is not whitespace.
    pub(crate) fn skip_overhang(&mut self, text: &str, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Forked | Phase::Ended) || self.cursor >= text.len() {
            return;
        }
        if !self.warned_overhang {
            if let Some((i, _)) = text[self.cursor..].char_indices().find(|(_, c)| !c.is_whitespace()) {
                self.warned_overhang = true;
                let what = if self.phase == Phase::Forked { "its trigger" } else { "its end marker" };
                out.push(Action::Warning(Warning::new(
                    WarningKind::TextAfterStop,
                    self.cursor + i,
                    format!("text after {what}: ignored by the protocol"),
                )));
            }
        }
        self.cursor = text.len();
    }

    fn warn(out: &mut Vec<Action>, kind: WarningKind, at: usize, message: String) {
        out.push(Action::Warning(Warning::new(kind, at, message)));
    }

    fn on_tag(&mut self, spec: &ProtocolSpec, role: Role, start: usize, end: usize, text: &str, out: &mut Vec<Action>) {
        let state = self.state();
        let tag = &text[start..end];
        // (A branch tag cannot tell a cut from a tag the model wrote: real transcripts hold both.)
        let cut_here = role == Role::SummaryOpen && spec.join_text.starts_with(tag);
        if self.analysis && cut_here && state.in_branch() && state.phase == Phase::Serial && !spec.close_unfinished {
            self.phase = Phase::Ended;
            out.push(Action::BranchEnd { at: start, cause: EndCause::Stream(StreamEnd::Eos) });
            return;
        }
        if spec.is_transition(role, &state) {
            match role {
                Role::Trigger => {
                    match self.phase {
                        Phase::Serial if spec.block_open.is_some() => Self::warn(
                            out,
                            WarningKind::MissingBlockOpen,
                            start,
                            format!("{tag:?} outside a block: taking the block as opened here"),
                        ),
                        Phase::AfterJoin => Self::warn(
                            out,
                            WarningKind::UnclosedBlock,
                            start,
                            format!("{tag:?} before the previous block was closed: closing it here"),
                        ),
                        _ => {}
                    }
                    self.fork(spec, start, end, text, out);
                }
                Role::BranchEnd => {
                    if self.phase != Phase::Serial {
                        Self::warn(
                            out,
                            WarningKind::UnclosedBlock,
                            start,
                            format!("{tag:?} inside an unfinished nested block: the block ends with the branch"),
                        );
                    }
                    self.phase = Phase::Ended;
                    out.push(Action::BranchEnd { at: end, cause: EndCause::Marker });
                }
                Role::BlockOpen => {
                    self.phase = Phase::Announcing;
                    self.segment_start = end;
                    out.push(Action::BlockOpened { start, end, depth: self.depth + 1 });
                }
                Role::BlockClose => {
                    self.phase = Phase::Serial;
                    self.segment_start = end;
                    self.blocks_closed += 1;
                    out.push(Action::BlockClosed { start, end, depth: self.depth + 1 });
                    if self.depth == 0 && spec.max_blocks.is_some_and(|m| self.blocks_closed >= m) {
                        self.end_by_protocol(end, out);
                    }
                }
                _ => {}
            }
            return;
        }
        if role == Role::SummaryOpen && self.phase == Phase::AfterJoin && self.summary_expected {
            self.summary_expected = false;
            return;
        }
        let too_deep = state.in_branch()
            && !spec.can_open_block(state.depth)
            && matches!(role, Role::BlockOpen | Role::PlanOpen | Role::AnnounceOpen | Role::Trigger);
        let banned = spec.banned_strings(&state).iter().any(|b| b == tag);
        // Too deep a block (its opener or trigger) is reported whether or not it is banned:
        // the engine reads it as text.
        let nesting = too_deep && (banned || matches!(role, Role::BlockOpen | Role::Trigger));
        if nesting || banned {
            if nesting {
                Self::warn(
                    out,
                    WarningKind::NestingTooDeep,
                    start,
                    format!("{tag:?} would nest deeper than {} block(s): treated as text", spec.effective_max_depth()),
                );
            } else {
                Self::warn(
                    out,
                    WarningKind::ForbiddenTag,
                    start,
                    format!("{tag:?} is not allowed {}: treated as text", describe(&state)),
                );
            }
        }
    }

    fn fork(&mut self, spec: &ProtocolSpec, start: usize, end: usize, text: &str, out: &mut Vec<Action>) {
        let seg_start = self.segment_start.min(start);
        let parent = Parent { label: self.label.clone(), path: self.path.clone(), depth: self.depth };
        let (plan, warnings) = plan_fork(spec, &text[seg_start..start], seg_start, &parent, self.cap, (start, end));
        out.extend(warnings.into_iter().map(Action::Warning));
        match plan {
            Planned::Fork(plan) => {
                self.phase = Phase::Forked;
                self.warned_overhang = false;
                out.push(Action::Fork(plan));
            }
            Planned::End => self.end_by_protocol(end, out),
            Planned::Serial => {
                // Decode the block serially; if it can be closed, wait for its closer with no bans.
                self.phase = if spec.block_open.is_some() && spec.block_close.is_some() {
                    Phase::Fallback
                } else {
                    Phase::Serial
                };
                self.segment_start = end;
                out.push(Action::NoFork { start, end });
            }
        }
    }

    /// The protocol ends this stream at `at`: a branch ends, the trunk stops.
    fn end_by_protocol(&mut self, at: usize, out: &mut Vec<Action>) {
        self.phase = Phase::Ended;
        if self.depth > 0 {
            out.push(Action::BranchEnd { at, cause: EndCause::Protocol });
        } else {
            out.push(Action::TrunkEnd { at });
        }
    }

    /// The branches of the open fork were joined; the stream goes on at `at`.
    pub(crate) fn join(&mut self, spec: &ProtocolSpec, at: usize) {
        self.phase = if spec.block_close.is_some() { Phase::AfterJoin } else { Phase::Serial };
        self.cursor = at;
        self.segment_start = at;
        self.warned_overhang = false;
        self.summary_expected = true;
    }

    /// The stream is over: settles a pending tail as text, then ends it.
    pub(crate) fn finish(
        &mut self,
        spec: &ProtocolSpec,
        tags: &TagSet,
        text: &str,
        end: StreamEnd,
        out: &mut Vec<Action>,
    ) {
        self.advance(spec, tags, text, true, out);
        self.skip_overhang(text, out);
        let at = text.len();
        match self.phase {
            Phase::Ended => return,
            Phase::Forked => Self::warn(
                out,
                WarningKind::UnclosedBlock,
                at,
                "the stream ended while its branches were still open".into(),
            ),
            Phase::Announcing | Phase::AfterJoin | Phase::Fallback => Self::warn(
                out,
                WarningKind::UnclosedBlock,
                at,
                format!("the stream ended ({end:?}) inside a block: no fork, the block is left open"),
            ),
            Phase::Serial => {}
        }
        if self.depth > 0 {
            if end != StreamEnd::Eos {
                Self::warn(
                    out,
                    WarningKind::BranchNotClosed,
                    at,
                    format!("branch {} ended ({end:?}) without {:?}: closed here", self.path, spec.branch_end),
                );
            }
            out.push(Action::BranchEnd { at, cause: EndCause::Stream(end) });
        }
        self.phase = Phase::Ended;
    }
}

fn describe(state: &StreamState) -> &'static str {
    match (state.phase, state.in_branch()) {
        (Phase::Serial, false) => "in the trunk outside a block",
        (Phase::Serial, true) => "in a branch",
        (Phase::Announcing, _) => "before the trigger",
        (Phase::AfterJoin, _) => "after the join",
        _ => "here",
    }
}
