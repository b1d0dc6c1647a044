//! A protocol as data: the control strings a model emits to open, announce, fork, end and
//! join a parallel block, with a JSON form and validation.
//!
//! Every control string is matched as plain text, so a protocol works whether its tags are
//! single added tokens or spelled out over several tokens. Where a tag *is* a single token, the
//! driver can also ban it in the states where it is illegal ([`ProtocolSpec::banned_strings`]).

use serde::{Deserialize, Serialize};
use std::fmt;

use super::template;
use crate::layout_rules::{JoinRule, TrainRule};

/// Deepest nesting any protocol may ask for. It bounds recursion when complete texts are
/// analysed, so adversarial input cannot exhaust the stack.
pub const MAX_SUPPORTED_DEPTH: u32 = 32;

/// Most branches one block may ever have: llama.cpp allows 256 sequences, one is the trunk.
pub const MAX_SUPPORTED_BRANCHES: usize = 255;

/// How a parallel block is described to a decoder: tags, fork trigger, branch prefix, end
/// marker, join text, nesting, and what is banned where.
///
/// A block looks like (optional parts in brackets):
/// `[block_open] [plan_open] announcements… trigger (branch_prefix body branch_end)… join_text
/// [… summary_close] [block_close]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSpec {
    /// A short name for messages.
    pub name: String,
    /// Opens a block (`<Parallel>`). `None` when the block starts implicitly (its
    /// announcements appear in serial text and the trigger forks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_open: Option<String>,
    /// Opens the planning section inside a block (`<Goal>`); the trigger closes it. Only
    /// structural checks use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_open: Option<String>,
    /// How the branches are announced before the trigger.
    pub announce: Announce,
    /// The string after which the branches start (`</Goal>`, `<|para|>`).
    pub trigger: String,
    /// The tag each branch starts with (`<Path>`); `branch_prefix` must contain it.
    pub branch_open: String,
    /// Text prefilled at the start of every branch, over `{label}`, `{title}` and `{index}`
    /// (1-based), e.g. `"\n<Path>\n{label}:"`.
    pub branch_prefix: String,
    /// The string that ends a branch (`</Path>`).
    pub branch_end: String,
    /// Text appended to the parent when all branches are joined (`"<Conclusion>\n"`).
    pub join_text: String,
    /// Opens the summary after the branches (`<Conclusion>`); usually the start of `join_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_open: Option<String>,
    /// Closes the summary (`</Conclusion>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_close: Option<String>,
    /// Closes the block (`</Parallel>`). `None`: the block ends at the join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_close: Option<String>,
    /// How many blocks may be open inside each other, counting the outermost: 1 forbids
    /// nesting, 2 lets a branch open one block of its own, …
    #[serde(default = "default_max_depth")]
    pub max_depth: u32,
    /// Most branches per block; more announced ones are dropped with a warning.
    #[serde(default = "default_max_branches")]
    pub max_branches: usize,
    /// The branch prefix as pieces each tokenized on its own (their concatenation must be
    /// `branch_prefix`): ASPD's engine feeds `<|branch|>`, the title, `:` and ` ` as separate
    /// tokens. Empty: the whole prefix is tokenized at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branch_prefix_parts: Vec<String>,
    /// Whether the trigger stays in the forking stream's KV cache. `false`: it is text only,
    /// the branches start at its position and nothing after it sees it (ASPD's `<|para|>`).
    #[serde(default = "default_true")]
    pub trigger_in_cache: bool,
    /// Whether the join decodes the last token of the last branch once more, in the parent's
    /// cache only, before the join text (ASPD's engine does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join_repeats_last: bool,
    /// Text the forking stream writes right after the trigger, before its branches start:
    /// every branch sees it, once, as part of the shared prefix (Multiverse's `\n` after
    /// `</Goal>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fork_text: String,
    /// Tokens a branch still samples and keeps after its end marker (Multiverse keeps the one
    /// after `</Path>`, usually a newline).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_after_end: u32,
    /// Whether a branch that ended without its end marker (end of generation, its token
    /// budget) gets the marker appended before the join.
    #[serde(default = "default_true")]
    pub close_unfinished: bool,
    /// How the parent reads its branches back at the join.
    #[serde(default)]
    pub join_rule: JoinRule,
    /// Whether announced labels are checked: repeats dropped, and labels that do not number
    /// the parent's branches in order (`2.1`, `2.2` inside branch `2`) warned about. Off: every
    /// announcement opens a branch with the label as written.
    #[serde(default = "default_true")]
    pub check_labels: bool,
    /// After this many blocks of the trunk have closed, the trunk stops (Parallel-R1's engine
    /// ends a response after its fourth block). `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blocks: Option<u32>,
    /// The layout the protocol's own training code builds, where it differs from what its
    /// engine runs (`pardec layout --rule train`). `None`: the engine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_rule: Option<TrainRule>,
    /// Whether a stream stops announcing once its announcements fill the fork (`max_branches`,
    /// or fewer free sequence slots) or one repeats an earlier one: the announcement tag is then
    /// banned, so a model that keeps announcing — greedy decoding can repeat one title until its
    /// budget runs out — must write the trigger instead, and the fork drops the repeat. The
    /// announcement tag must be a single token to be banned. Off in the published formats (their
    /// engines do not do this).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fork_at_cap_or_repeat: bool,
    /// What a trigger whose plan cannot be forked as announced does (nothing announced, or
    /// more than `max_branches`).
    #[serde(default)]
    pub on_bad_plan: BadPlan,
    /// What the model may not emit in each phase, exactly. `None`: derived from the tags
    /// ([`ProtocolSpec::derived_bans`], plus the branch end on the trunk and nesting openers at
    /// the depth limit). `Some` with empty lists bans nothing, as the published engines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bans: Option<Bans>,
}

fn default_max_depth() -> u32 {
    1
}

fn default_max_branches() -> usize {
    16
}

fn default_true() -> bool {
    true
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most tokens a branch may keep after its end marker.
pub const MAX_KEEP_AFTER_END: u32 = 16;

/// What happens at a trigger whose announcements cannot be forked as they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadPlan {
    /// Nothing announced: decode the block serially; too many: keep the first `max_branches`.
    #[default]
    Fallback,
    /// The stream ends there (NPR's engine ends the request; a branch ends as a branch).
    EndStream,
}

/// How the branches of a block are announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Announce {
    /// Each branch is announced between `open` and `close` (`<Outline>1: …</Outline>`).
    Tagged {
        /// The tag that opens one announcement (`<Outline>`); not empty, and distinct from
        /// every other control string.
        open: String,
        /// The tag that closes it (`</Outline>`); same constraints.
        close: String,
        /// How the label and title are read from the text between them.
        label: LabelRule,
    },
    /// Nothing is announced: every trigger forks `count` branches (labels `1`, `2`, …).
    Fixed {
        /// Branches per fork: 1 to [`MAX_SUPPORTED_BRANCHES`] (validation refuses others).
        count: usize,
    },
}

/// How a branch's label and title are read from the text of its announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelRule {
    /// The announcement starts with a dotted number and a separator:
    /// `\s*([0-9]+(\.[0-9]+)*)\s*{separator}`; the rest (trimmed) is the title. An
    /// announcement without one does not count.
    Numbered {
        /// What follows the number (`:` in `1: title`); not empty, and neither containing
        /// nor contained in any control string.
        separator: String,
    },
    /// The whole announcement is the title (trimmed unless `verbatim`); labels are the order,
    /// `1`, `2`, ….
    Title {
        /// Titles as written, repeats found by exact comparison (ASPD's engine copies the
        /// title's token ids).
        #[serde(default)]
        verbatim: bool,
    },
}

/// Control strings the model may not emit, per phase of a stream (see [`Phase`]). The
/// watcher warns when one appears anyway and treats it as text.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bans {
    /// Outside any block (the trunk's serial text, or a branch's own body).
    #[serde(default)]
    pub serial: Vec<String>,
    /// Inside a block, before its trigger.
    #[serde(default)]
    pub announcing: Vec<String>,
    /// After a join, before the block closes.
    #[serde(default)]
    pub after_join: Vec<String>,
}

/// Where a stream (the trunk or one branch) is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Ordinary text: the trunk outside blocks, or a branch's body.
    Serial,
    /// Inside a block, before its trigger (the announcements are written here).
    Announcing,
    /// The trigger was seen and a fork reported: the stream waits for its branches.
    Forked,
    /// Joined; the block has not been closed yet (the summary is written here).
    AfterJoin,
    /// A trigger came without usable announcements: the block is decoded serially, with no
    /// bans, until it closes.
    Fallback,
    /// The stream is over (a branch's end marker, or the driver said it ended).
    Ended,
}

/// The state that decides a stream's stop strings and bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamState {
    /// Where the stream is in the protocol.
    pub phase: Phase,
    /// Number of blocks this stream is inside: 0 for the trunk, 1 for a branch of a
    /// top-level block, 2 for a branch of a nested block, …
    pub depth: u32,
}

impl StreamState {
    /// Whether the stream is a branch (`depth > 0`) rather than the trunk.
    pub fn in_branch(&self) -> bool {
        self.depth > 0
    }
}

/// A spec that failed validation; `field` names the offending field (`"announce.open"`,
/// `"bans.serial[1]"`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The offending field's path in the JSON form, as above.
    pub field: String,
    /// What is wrong with it and what is allowed.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// What a control string means; the order is the matching priority of identical strings in
/// a spec that skipped validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    BlockOpen,
    PlanOpen,
    AnnounceOpen,
    AnnounceClose,
    Trigger,
    BranchOpen,
    BranchEnd,
    SummaryOpen,
    SummaryClose,
    BlockClose,
}

impl ProtocolSpec {
    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<ProtocolSpec, SpecError> {
        let spec: ProtocolSpec = serde_json::from_str(json).map_err(|e| {
            // serde names the field in backticks ("missing field `trigger`"); surface it.
            let msg = e.to_string();
            let field = msg.split('`').nth(1).unwrap_or("(json)").to_string();
            err(field, msg)
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The JSON form (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every control string of the protocol (tags, trigger, end marker…). A driver can check
    /// at start-up which of them are single tokens of its model, and so can be banned.
    pub fn tags(&self) -> Vec<&str> {
        self.control_strings().into_iter().map(|(_, _, s)| s).collect()
    }

    /// Every control string with its field name and role, in matching-priority order.
    pub(crate) fn control_strings(&self) -> Vec<(&'static str, Role, &str)> {
        let mut v: Vec<(&'static str, Role, &str)> = Vec::with_capacity(10);
        if let Some(s) = &self.block_open {
            v.push(("block_open", Role::BlockOpen, s));
        }
        if let Some(s) = &self.plan_open {
            v.push(("plan_open", Role::PlanOpen, s));
        }
        if let Announce::Tagged { open, close, .. } = &self.announce {
            v.push(("announce.open", Role::AnnounceOpen, open));
            v.push(("announce.close", Role::AnnounceClose, close));
        }
        v.push(("trigger", Role::Trigger, &self.trigger));
        v.push(("branch_open", Role::BranchOpen, &self.branch_open));
        v.push(("branch_end", Role::BranchEnd, &self.branch_end));
        if let Some(s) = &self.summary_open {
            v.push(("summary_open", Role::SummaryOpen, s));
        }
        if let Some(s) = &self.summary_close {
            v.push(("summary_close", Role::SummaryClose, s));
        }
        if let Some(s) = &self.block_close {
            v.push(("block_close", Role::BlockClose, s));
        }
        v
    }

    /// Checks that the spec can be watched unambiguously.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty"));
        }
        let tags = self.control_strings();
        for (field, _, s) in &tags {
            if s.is_empty() {
                return Err(err(*field, "must not be empty"));
            }
        }
        // Matching is leftmost-first over plain text. The engine stops at the earliest *end*
        // of a stop string; the two agree only if no control string contains another or
        // overlaps it (a suffix of one being a prefix of another).
        for (i, (fa, _, a)) in tags.iter().enumerate() {
            for (fb, _, b) in tags.iter().skip(i + 1) {
                if a == b {
                    return Err(err(*fb, format!("is the same string as `{fa}` ({a:?})")));
                }
                if a.contains(*b) || b.contains(*a) {
                    return Err(err(*fb, format!("{b:?} and `{fa}` {a:?}: one contains the other")));
                }
                if overlaps(a, b) || overlaps(b, a) {
                    return Err(err(*fb, format!("{b:?} and `{fa}` {a:?} overlap (the end of one starts the other)")));
                }
            }
        }
        match &self.announce {
            Announce::Fixed { count } => {
                if *count == 0 || *count > MAX_SUPPORTED_BRANCHES {
                    return Err(err("announce.count", format!("must be between 1 and {MAX_SUPPORTED_BRANCHES}")));
                }
            }
            Announce::Tagged { label: LabelRule::Numbered { separator }, .. } => {
                if separator.is_empty() {
                    return Err(err("announce.label.separator", "must not be empty"));
                }
                // A separator that holds a control string (or is held by one) would make
                // every announcement also a tag: the watcher could never tell them apart.
                if let Some((field, _, tag)) =
                    tags.iter().find(|(_, _, t)| t.contains(separator.as_str()) || separator.contains(*t))
                {
                    return Err(err(
                        "announce.label.separator",
                        format!("{separator:?} and `{field}` {tag:?}: one contains the other"),
                    ));
                }
            }
            Announce::Tagged { .. } => {}
        }
        for name in template::placeholders(&self.branch_prefix) {
            if !matches!(name, "label" | "title" | "index") {
                return Err(err(
                    "branch_prefix",
                    format!("unknown placeholder {{{name}}} (use {{label}}, {{title}} or {{index}})"),
                ));
            }
            if name == "title" && matches!(self.announce, Announce::Fixed { .. }) {
                return Err(err("branch_prefix", "uses {title} but branches are not announced"));
            }
        }
        if !self.branch_prefix_parts.is_empty() && self.branch_prefix_parts.concat() != self.branch_prefix {
            return Err(err("branch_prefix_parts", "must concatenate to branch_prefix"));
        }
        if !self.branch_prefix.contains(&self.branch_open) {
            return Err(err("branch_prefix", format!("must contain the branch tag {:?}", self.branch_open)));
        }
        for (field, role, tag) in &tags {
            if *role != Role::BranchOpen && self.branch_prefix.contains(*tag) {
                return Err(err("branch_prefix", format!("must not contain `{field}` {tag:?}")));
            }
            let join_may_hold = matches!(role, Role::SummaryOpen | Role::SummaryClose | Role::BlockClose);
            if !join_may_hold && self.join_text.contains(*tag) {
                return Err(err("join_text", format!("must not contain `{field}` {tag:?}")));
            }
        }
        if self.max_depth == 0 || self.max_depth > MAX_SUPPORTED_DEPTH {
            return Err(err("max_depth", format!("must be between 1 and {MAX_SUPPORTED_DEPTH}")));
        }
        if self.keep_after_end > MAX_KEEP_AFTER_END {
            return Err(err("keep_after_end", format!("must be at most {MAX_KEEP_AFTER_END}")));
        }
        if self.max_blocks == Some(0) {
            return Err(err("max_blocks", "must be at least 1 (or absent)"));
        }
        for (field, _, tag) in &tags {
            if self.fork_text.contains(*tag) {
                return Err(err("fork_text", format!("must not contain `{field}` {tag:?}")));
            }
        }
        if self.max_branches == 0 || self.max_branches > MAX_SUPPORTED_BRANCHES {
            return Err(err("max_branches", format!("must be between 1 and {MAX_SUPPORTED_BRANCHES}")));
        }
        if let Some(bans) = &self.bans {
            for (list_name, list) in [
                ("bans.serial", &bans.serial),
                ("bans.announcing", &bans.announcing),
                ("bans.after_join", &bans.after_join),
            ] {
                for (i, s) in list.iter().enumerate() {
                    if !tags.iter().any(|(_, _, t)| t == s) {
                        return Err(err(
                            format!("{list_name}[{i}]"),
                            format!("{s:?} is not one of this protocol's control strings"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a branch may open a block of its own.
    pub fn nesting_allowed(&self) -> bool {
        self.effective_max_depth() > 1
    }

    pub(crate) fn effective_max_depth(&self) -> u32 {
        self.max_depth.clamp(1, MAX_SUPPORTED_DEPTH)
    }

    /// Whether a stream at `depth` may open (and fork) a block: the trunk always, a branch
    /// while the new block stays within `max_depth`.
    pub(crate) fn can_open_block(&self, depth: u32) -> bool {
        depth < self.effective_max_depth()
    }

    /// The bans used when `bans` is `None`.
    ///
    /// - serial: branch tags and summary/closing tags (the engine writes branches, the join
    ///   writes the summary opener, and nothing is open to close);
    /// - announcing: the same, plus a nested opener and the branch end (a branch may not
    ///   close while its nested block is being planned);
    /// - after the join: a new block, plan or announcement, branch tags, and the summary
    ///   opener when the join text already holds it.
    ///
    /// [`ProtocolSpec::banned_strings`] adds the branch end on the trunk and the nesting
    /// openers in a branch at the depth limit.
    pub fn derived_bans(&self) -> Bans {
        let opt = |o: &Option<String>| o.iter().cloned().collect::<Vec<_>>();
        let mut serial = vec![self.branch_open.clone()];
        serial.extend(opt(&self.summary_open));
        serial.extend(opt(&self.summary_close));
        serial.extend(opt(&self.block_close));
        let mut announcing = serial.clone();
        announcing.extend(opt(&self.block_open));
        announcing.push(self.branch_end.clone());
        let mut after_join = opt(&self.block_open);
        after_join.extend(opt(&self.plan_open));
        if let Announce::Tagged { open, .. } = &self.announce {
            after_join.push(open.clone());
        }
        after_join.push(self.branch_open.clone());
        after_join.push(self.branch_end.clone());
        // The join text usually opens the summary itself; then a second one is illegal.
        if self.summary_open.as_ref().is_some_and(|o| self.join_text.contains(o.as_str())) {
            after_join.extend(opt(&self.summary_open));
        }
        Bans { serial, announcing, after_join }
    }

    /// Strings that open a nested block; banned in a branch at the depth limit.
    fn nesting_openers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.block_open.iter().chain(self.plan_open.iter()).cloned().collect();
        if let Announce::Tagged { open, .. } = &self.announce {
            v.push(open.clone());
        }
        v.push(self.trigger.clone());
        v
    }

    /// Control strings the model may not emit in `state`. Map the ones that are single
    /// tokens to token ids and ban those; the watcher warns about the others when they appear.
    /// Nothing is banned while forked, ended or in a serial fallback.
    pub fn banned_strings(&self, state: &StreamState) -> Vec<String> {
        let bans = match &self.bans {
            Some(b) => b.clone(),
            None => self.derived_bans(),
        };
        let mut out = match state.phase {
            Phase::Serial => bans.serial,
            Phase::Announcing => bans.announcing,
            Phase::AfterJoin => bans.after_join,
            Phase::Forked | Phase::Ended | Phase::Fallback => return Vec::new(),
        };
        if self.bans.is_some() {
            return out; // explicit bans are the whole list
        }
        if !state.in_branch() {
            out.push(self.branch_end.clone());
        }
        if state.in_branch() && !self.can_open_block(state.depth) {
            out.extend(self.nesting_openers());
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|s| seen.insert(s.clone()));
        out
    }

    /// Whether `role` changes the state of a stream in `state` (and so must stop its run).
    /// This single rule drives both [`ProtocolSpec::stop_strings`] and the watcher.
    pub(crate) fn is_transition(&self, role: Role, state: &StreamState) -> bool {
        use Phase::*;
        let live = matches!(state.phase, Serial | Announcing | AfterJoin | Fallback);
        match role {
            Role::BranchEnd => live && state.in_branch(),
            Role::Trigger => live && self.can_open_block(state.depth),
            Role::BlockOpen => matches!(state.phase, Serial | Fallback) && self.can_open_block(state.depth),
            Role::BlockClose => matches!(state.phase, AfterJoin | Fallback),
            // A stop after each announcement lets the driver recount them (`fork_at_cap_or_repeat`).
            Role::AnnounceClose => {
                self.fork_at_cap_or_repeat
                    && matches!(state.phase, Serial | Announcing)
                    && self.can_open_block(state.depth)
            }
            _ => false,
        }
    }

    /// Stop strings for a run of a stream in `state`: every control string at which the
    /// stream's state changes (a fork, a branch end, a block opening or closing). After a
    /// stop, feed the text to the watcher and restart the run with the new stop strings and
    /// bans; only `Fork` and `BranchEnd` need more than that.
    pub fn stop_strings(&self, state: &StreamState) -> Vec<String> {
        self.control_strings()
            .into_iter()
            .filter(|(_, role, _)| self.is_transition(*role, state))
            .map(|(_, _, s)| s.to_string())
            .collect()
    }

    /// The prefix of branch `index` (0-based; `{index}` renders it 1-based).
    pub fn render_prefix(&self, index: usize, label: &str, title: &str) -> String {
        Self::render_branch_template(&self.branch_prefix, index, label, title)
    }

    /// The prefix of branch `index` as the pieces the engine tokenizes one by one.
    pub fn render_prefix_parts(&self, index: usize, label: &str, title: &str) -> Vec<String> {
        if self.branch_prefix_parts.is_empty() {
            return vec![self.render_prefix(index, label, title)];
        }
        self.branch_prefix_parts.iter().map(|p| Self::render_branch_template(p, index, label, title)).collect()
    }

    fn render_branch_template(t: &str, index: usize, label: &str, title: &str) -> String {
        let number = (index + 1).to_string();
        template::render(t, |name| match name {
            "label" => Some(label),
            "title" => Some(title),
            "index" => Some(number.as_str()),
            _ => None,
        })
    }
}

/// Whether a proper suffix of `a` is a proper prefix of `b`.
fn overlaps(a: &str, b: &str) -> bool {
    (1..a.len().min(b.len()))
        .any(|k| a.is_char_boundary(a.len() - k) && b.is_char_boundary(k) && a[a.len() - k..] == b[..k])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_detection() {
        assert!(overlaps("<a|", "|b>"));
        assert!(!overlaps("<a>", "<b>"));
        assert!(!overlaps("ab", "ab"));
    }

    #[test]
    fn builtins_validate_and_round_trip_through_json() {
        for name in ProtocolSpec::builtin_names() {
            let spec = ProtocolSpec::builtin(name).unwrap();
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = ProtocolSpec::from_json(&spec.to_json()).unwrap();
            assert_eq!(back, spec);
        }
    }

    #[test]
    fn errors_name_the_bad_field() {
        let mut spec = ProtocolSpec::builtin("multiverse").unwrap();
        spec.branch_prefix = "\n<Path>\n{labl}:".into();
        assert_eq!(spec.validate().unwrap_err().field, "branch_prefix");
        let mut spec = ProtocolSpec::builtin("multiverse").unwrap();
        spec.trigger = "</Path>".into();
        assert_eq!(spec.validate().unwrap_err().field, "branch_end");
        let mut spec = ProtocolSpec::builtin("multiverse").unwrap();
        spec.branch_prefix = "{label}:".into();
        assert_eq!(spec.validate().unwrap_err().field, "branch_prefix");
        let mut spec = ProtocolSpec::builtin("multiverse").unwrap();
        spec.bans = Some(Bans { serial: vec!["<Path>".into(), "<nope>".into()], ..Default::default() });
        assert_eq!(spec.validate().unwrap_err().field, "bans.serial[1]");
        let mut spec = ProtocolSpec::builtin("aspd").unwrap();
        spec.max_depth = 0;
        assert_eq!(spec.validate().unwrap_err().field, "max_depth");
        let mut spec = ProtocolSpec::builtin("aspd").unwrap();
        spec.trigger = String::new();
        assert_eq!(spec.validate().unwrap_err().field, "trigger");
        let mut spec = ProtocolSpec::builtin("threadweaver").unwrap();
        spec.announce = Announce::Tagged {
            open: "<Outline>".into(),
            close: "</Outline>".into(),
            label: LabelRule::Numbered { separator: String::new() },
        };
        assert_eq!(spec.validate().unwrap_err().field, "announce.label.separator");
        for separator in ["</Outline>", "<Path>", "Goal"] {
            let spec = ProtocolSpec {
                announce: Announce::Tagged {
                    open: "<Outline>".into(),
                    close: "</Outline>".into(),
                    label: LabelRule::Numbered { separator: separator.into() },
                },
                ..ProtocolSpec::builtin("multiverse").unwrap()
            };
            assert_eq!(spec.validate().unwrap_err().field, "announce.label.separator", "{separator}");
        }
    }

    #[test]
    fn json_errors_name_missing_and_unknown_fields() {
        let e = ProtocolSpec::from_json(r#"{"name":"x"}"#).unwrap_err();
        assert_eq!(e.field, "announce", "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&ProtocolSpec::builtin("aspd").unwrap().to_json()).unwrap();
        v["trigerr"] = serde_json::json!("x");
        let e = ProtocolSpec::from_json(&v.to_string()).unwrap_err();
        assert_eq!(e.field, "trigerr", "{e}");
        let e = ProtocolSpec::from_json("not json").unwrap_err();
        assert_eq!(e.field, "(json)");
    }

    #[test]
    fn stop_strings_and_bans_follow_the_state() {
        // Nesting once, with the derived bans.
        let spec = ProtocolSpec { max_depth: 2, bans: None, ..ProtocolSpec::builtin("multiverse").unwrap() };
        let st = |phase, depth| StreamState { phase, depth };
        assert_eq!(spec.stop_strings(&st(Phase::Serial, 0)), vec!["<Parallel>", "</Goal>"]);
        assert_eq!(spec.stop_strings(&st(Phase::Announcing, 0)), vec!["</Goal>"]);
        assert_eq!(spec.stop_strings(&st(Phase::AfterJoin, 0)), vec!["</Goal>", "</Parallel>"]);
        assert!(spec.stop_strings(&st(Phase::Forked, 0)).is_empty());
        // A branch of the top-level block may nest once (max_depth 2); a nested one may not.
        assert_eq!(spec.stop_strings(&st(Phase::Serial, 1)), vec!["<Parallel>", "</Goal>", "</Path>"]);
        assert_eq!(spec.stop_strings(&st(Phase::Serial, 2)), vec!["</Path>"]);
        let trunk = spec.banned_strings(&st(Phase::Serial, 0));
        assert!(trunk.contains(&"</Path>".to_string()) && trunk.contains(&"<Path>".to_string()));
        let deep = spec.banned_strings(&st(Phase::Serial, 2));
        assert!(deep.contains(&"<Parallel>".to_string()) && !deep.contains(&"</Path>".to_string()));
        let nest_ok = spec.banned_strings(&st(Phase::Serial, 1));
        assert!(!nest_ok.contains(&"<Parallel>".to_string()));
        assert!(spec.banned_strings(&st(Phase::Fallback, 0)).is_empty());
        // The built-ins ban nothing, as their engines.
        let builtin = ProtocolSpec::builtin("multiverse").unwrap();
        assert!(builtin.banned_strings(&st(Phase::Serial, 0)).is_empty());
    }

    #[test]
    fn prefix_rendering() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        assert_eq!(spec.render_prefix(1, "2", "t"), "<Path>\n2:");
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        assert_eq!(spec.render_prefix(0, "1", "Pros"), "<|branch|>Pros: ");
    }
}
