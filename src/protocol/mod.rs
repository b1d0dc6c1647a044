//! Reading a model's output as parallel blocks: a protocol is data ([`ProtocolSpec`]), and
//! everything here is pure text — no model, no engine.
//!
//! - [`ProtocolSpec`]: tags, fork trigger, branch prefix template, end marker, join text,
//!   nesting limit and bans; built-ins by name ([`ProtocolSpec::builtin`]) or JSON.
//! - [`Watcher`]: a streaming state machine per stream (trunk or branch) that tells the
//!   driver when to fork ([`Action::Fork`]), when a branch ended, and what was malformed,
//!   with its stop strings and bans for the next run.
//! - [`layout()`]: position ids and visibility of each piece of a tagged text, as the engine
//!   realizes them; [`check()`]: structural validation of a complete text.
//! - [`SubSearchFormat`] (children on their own prompts) and [`SkeletonFormat`] (skeleton,
//!   then one branch per point).
//!
//! Malformed output never panics or hangs: each case has a fallback and a [`Warning`]
//! (see [`WarningKind`]).
//!
//! Driving a stream-based protocol:
//! 1. `let mut w = Watcher::trunk(&spec)`; run the trunk with `w.stop_strings()` as stop
//!    strings (and the single-token ones of `w.banned_strings()` banned); feed what it
//!    generated to `w.feed`. On a stop that gave no `Fork` (a block opened or closed, or
//!    `NoFork`: a trigger with nothing to fork), run again with the new stop strings and bans.
//! 2. On `Action::Fork(plan)`: drop the trigger from the parent's cache if the spec says
//!    `trigger_in_cache: false`, write its `fork_text` to the parent (then `w.forked()`), and
//!    fork one branch per `plan.branches[i]`, prefilled with its `prefix` (tokenized part by
//!    part where `branch_prefix_parts` says so), each watched by `w.child(&plan.branches[i])`
//!    and run with that watcher's stop strings and bans. A branch's `Fork` is a nested block:
//!    the same steps apply.
//! 3. A branch is done at `Action::BranchEnd`; if it stopped for EOS or its limit, call
//!    `finish(StreamEnd::Eos | Limit)` to get it. Append its end marker if it has none and
//!    `close_unfinished` says so; after a marker, let it sample `keep_after_end` more tokens.
//!    `Action::TrunkEnd` ends the trunk.
//! 4. When every branch of a fork is done (nested blocks joined), join them in the engine under
//!    the spec's `join_rule` (repeating the last branch token if `join_repeats_last`), with
//!    `w.join_text()` as join text, call `w.joined()`, and resume the parent.

mod announce;
mod builtin;
mod check;
mod fork;
mod layout;
mod scan;
pub mod search_state;
mod skeleton;
mod spec;
mod stream;
mod structure;
mod subsearch;
mod template;
mod warning;
mod watcher;

pub use crate::layout_rules::TrainRule;
pub use announce::{parse_announcements, parse_announcements_with_warnings, Announced};
pub use check::{check, StructError};
pub use fork::{BranchPlan, ForkPlan};
pub use layout::{layout, layout_text, layout_with, CopyLayout, Layout, PieceLayout, Rule};
pub use skeleton::{Skeleton, SkeletonFallback, SkeletonFormat};
pub use spec::{
    Announce, BadPlan, Bans, LabelRule, Phase, ProtocolSpec, SpecError, StreamState, MAX_SUPPORTED_BRANCHES,
    MAX_SUPPORTED_DEPTH,
};
pub use stream::{Action, EndCause, StreamEnd};
pub use subsearch::{ChildPrompt, SubSearchCall, SubSearchCalls, SubSearchFormat};
pub use warning::{Warning, WarningKind};
pub use watcher::Watcher;
