//! The streaming watcher: fed the text of one stream piece by piece, it says when to fork,
//! when the branch ended, and what was malformed. Pure text; no model.

use std::sync::Arc;

use super::announce::parse_announcements;
use super::fork::{repeats_an_announcement, BranchPlan};
use super::scan::TagSet;
use super::spec::{Announce, Phase, ProtocolSpec, StreamState};
use super::stream::{Action, Machine, StreamEnd};
use super::warning::{Warning, WarningKind};

/// Watches one stream: the trunk, or one branch.
///
/// Positions in [`Action`]s are byte offsets in [`Watcher::text`]: everything this stream
/// holds, in order — a branch's prefix, its generated pieces, join texts — but never the
/// text of its branches, which have their own watchers.
///
/// Pieces may split a control string anywhere, or hold one and more text: the actions are the
/// same however the text is split (a possible control string at the end of the text waits
/// for the next piece or [`Watcher::finish`]).
#[derive(Debug, Clone)]
pub struct Watcher {
    spec: Arc<ProtocolSpec>,
    tags: Arc<TagSet>,
    machine: Machine,
    text: String,
}

impl Watcher {
    /// A watcher for the trunk (the text generated after the prompt).
    pub fn trunk(spec: &ProtocolSpec) -> Watcher {
        let spec = Arc::new(spec.clone());
        let tags = Arc::new(TagSet::new(&spec));
        let cap = spec.max_branches;
        Watcher { spec, tags, machine: Machine::new(0, String::new(), String::new(), 0, cap), text: String::new() }
    }

    /// A watcher for a branch planned by a fork. Its text starts with the branch's prefix,
    /// which is already consumed: feed only what the branch generates.
    pub fn branch(spec: &ProtocolSpec, branch: &BranchPlan) -> Watcher {
        Watcher::trunk(spec).child(branch)
    }

    /// A watcher for one branch of a fork this watcher reported (shares the spec and the cap).
    pub fn child(&self, branch: &BranchPlan) -> Watcher {
        let start = branch.prefix.len();
        Watcher {
            spec: Arc::clone(&self.spec),
            tags: Arc::clone(&self.tags),
            machine: Machine::new(branch.depth, branch.label.clone(), branch.path.clone(), start, self.machine.cap),
            text: branch.prefix.clone(),
        }
    }

    /// Limits the branches of the next forks (e.g. to the engine's free sequence slots).
    /// More announced ones are dropped with a warning; 0 makes every fork fall back to serial.
    pub fn set_branch_cap(&mut self, cap: usize) {
        self.machine.cap = cap;
    }

    /// [`Watcher::set_branch_cap`] as a builder: this watcher with the cap set.
    pub fn with_branch_cap(mut self, cap: usize) -> Watcher {
        self.set_branch_cap(cap);
        self
    }

    /// Adds text the stream produced and returns what it means. Feed everything the stream
    /// holds after its start, in order: generated text and text the driver forced into it
    /// (but not a branch's prefix, already counted, nor the join text: see `joined`). The
    /// same text fed as one piece or many gives the same actions, so a driver may also
    /// feed a whole run's text after it stopped.
    pub fn feed(&mut self, piece: &str) -> Vec<Action> {
        self.text.push_str(piece);
        let mut out = Vec::new();
        self.machine.advance(&self.spec, &self.tags, &self.text, false, &mut out);
        self.machine.skip_overhang(&self.text, &mut out);
        out
    }

    /// Call after a fork when the protocol has a `fork_text`, once the driver has written it
    /// to this stream: it becomes part of the stream, before its branches.
    pub fn forked(&mut self) {
        self.text.push_str(&self.spec.fork_text);
        self.machine.cursor = self.text.len();
    }

    /// The text to append to this stream when its branches are joined.
    pub fn join_text(&self) -> &str {
        &self.spec.join_text
    }

    /// Call after joining this stream's branches and appending [`Watcher::join_text`] to it:
    /// the join text becomes part of the stream (it may close the block).
    pub fn joined(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.machine.phase != super::Phase::Forked {
            out.push(Action::Warning(Warning::new(
                WarningKind::UnexpectedJoin,
                self.text.len(),
                "joined without an open fork: ignored",
            )));
            return out;
        }
        let at = self.text.len();
        self.text.push_str(&self.spec.join_text);
        self.machine.join(&self.spec, at);
        self.machine.advance(&self.spec, &self.tags, &self.text, false, &mut out);
        out
    }

    /// The stream stopped for a reason other than a stop string (EOS, its token limit,
    /// cancellation). A branch gets its `BranchEnd`; a block left open is reported. Do not
    /// call it after a stop string: the fed text already holds the decision.
    pub fn finish(&mut self, end: StreamEnd) -> Vec<Action> {
        let mut out = Vec::new();
        self.machine.finish(&self.spec, &self.tags, &self.text, end, &mut out);
        out
    }

    /// Where the stream is now (phase and depth): what decides its stop strings and bans.
    pub fn state(&self) -> StreamState {
        self.machine.state()
    }

    /// Stop strings for this stream's next run (see [`ProtocolSpec::stop_strings`]).
    pub fn stop_strings(&self) -> Vec<String> {
        self.spec.stop_strings(&self.state())
    }

    /// Control strings to ban in this stream's next run (see
    /// [`ProtocolSpec::banned_strings`]).
    pub fn banned_strings(&self) -> Vec<String> {
        let mut banned = self.spec.banned_strings(&self.state());
        if self.announcing_is_over() {
            if let Announce::Tagged { open, .. } = &self.spec.announce {
                banned.push(open.clone());
            }
        }
        banned
    }

    /// Whether the protocol stops announcing (`fork_at_cap_or_repeat`) and this stream's
    /// announcements since its last block already fill the next fork, or the last one repeats
    /// an earlier one (a model in a loop: the fork drops the repeat).
    fn announcing_is_over(&self) -> bool {
        let state = self.state();
        let cap = self.machine.cap.min(self.spec.max_branches);
        if !(self.spec.fork_at_cap_or_repeat
            && cap > 0
            && matches!(state.phase, Phase::Serial | Phase::Announcing)
            && self.spec.can_open_block(state.depth))
        {
            return false;
        }
        let found = parse_announcements(&self.spec, self.machine.announcing_text(&self.text));
        found.len() >= cap || repeats_an_announcement(&self.spec, &found)
    }

    /// The stream's text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The protocol being watched (a copy of the spec the trunk's watcher was made with,
    /// shared by its branches' watchers).
    pub fn spec(&self) -> &ProtocolSpec {
        &self.spec
    }

    /// This branch's path (`2.1`; empty for the trunk).
    pub fn path(&self) -> &str {
        &self.machine.path
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EndCause, Phase};
    use super::*;

    fn forks(actions: &[Action]) -> Vec<&super::super::ForkPlan> {
        actions.iter().filter_map(|a| if let Action::Fork(p) = a { Some(p) } else { None }).collect()
    }

    fn warnings(actions: &[Action]) -> Vec<WarningKind> {
        actions.iter().filter_map(|a| if let Action::Warning(w) = a { Some(w.kind) } else { None }).collect()
    }

    #[test]
    fn fork_at_cap_or_repeat_bans_the_announcement_tag_once_the_fork_is_full() {
        let spec = ProtocolSpec::builtin("titles").unwrap();
        let open = "<issue_start>".to_string();
        let two_titles = ["Two tips:\n\n<issue_start>Sleep<issue_comment>", "<issue_start>Eat<issue_comment>"];
        let mut w = Watcher::trunk(&spec).with_branch_cap(2);
        w.feed(two_titles[0]);
        assert!(w.stop_strings().contains(&"<issue_comment>".to_string()), "a stop after each title");
        assert!(!w.banned_strings().contains(&open));
        w.feed(two_titles[1]);
        assert!(w.banned_strings().contains(&open), "two titles fill a fork of two");
        // The next block may announce again.
        let f = w.feed("<issue_closed>");
        assert_eq!(forks(&f).len(), 1);
        w.joined();
        assert_eq!(w.state().phase, Phase::Serial);
        assert!(!w.banned_strings().contains(&open));
        // Negative control: without fork_at_cap_or_repeat neither the stop nor the ban.
        let off = ProtocolSpec { fork_at_cap_or_repeat: false, ..spec };
        let mut w = Watcher::trunk(&off).with_branch_cap(2);
        w.feed(two_titles[0]);
        w.feed(two_titles[1]);
        assert!(!w.banned_strings().contains(&open));
        assert!(!w.stop_strings().contains(&"<issue_comment>".to_string()));
    }

    #[test]
    fn a_repeated_title_ends_the_announcing() {
        let spec = ProtocolSpec::builtin("titles").unwrap();
        let open = "<issue_start>".to_string();
        let mut w = Watcher::trunk(&spec).with_branch_cap(8);
        w.feed("Tips:\n\n<issue_start>Use a desk<issue_comment><issue_start>Use a lamp<issue_comment>");
        assert!(!w.banned_strings().contains(&open), "two different titles, room for six more");
        // The same title again, but for case and spacing: the fork would drop it as a repeat.
        w.feed("<issue_start>use  a desk<issue_comment>");
        assert!(w.banned_strings().contains(&open), "a repeat: the model is looping");
        let f = w.feed("<issue_closed>");
        assert_eq!(forks(&f)[0].branches.len(), 2, "the repeat is dropped");
        assert_eq!(warnings(&f), [WarningKind::DuplicateLabel]);
        // Negative control: without the rule the repeat bans nothing.
        let off = ProtocolSpec { fork_at_cap_or_repeat: false, ..spec };
        let mut w = Watcher::trunk(&off).with_branch_cap(8);
        w.feed("Tips:\n\n<issue_start>Use a desk<issue_comment><issue_start>Use a desk<issue_comment>");
        assert!(!w.banned_strings().contains(&open));
    }

    #[test]
    fn trunk_forks_at_the_trigger() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let mut w = Watcher::trunk(&spec);
        let mut all = w.feed("Let us split.<Para");
        assert!(all.is_empty());
        assert_eq!(w.stop_strings(), vec!["<Parallel>", "</Goal>"]);
        all.extend(w.feed("llel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Go"));
        assert_eq!(w.state().phase, Phase::Announcing);
        all.extend(w.feed("al>"));
        let f = forks(&all);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].trigger_end, w.text().len());
        assert_eq!(f[0].branches.len(), 2);
        assert_eq!(w.state().phase, Phase::Forked);
        assert!(w.stop_strings().is_empty());
        let join = w.joined();
        assert!(join.is_empty());
        assert_eq!(w.state().phase, Phase::AfterJoin);
        assert!(w.text().ends_with("</Goal><Conclusion>\n"));
        let a = w.feed("So both.</Conclusion></Parallel>");
        assert!(matches!(a.last(), Some(Action::BlockClosed { .. })));
        assert_eq!(w.state().phase, Phase::Serial);
        assert!(w.finish(StreamEnd::Eos).is_empty());
    }

    #[test]
    fn branch_ends_at_its_marker_and_reports_trailing_text() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let mut t = Watcher::trunk(&spec);
        let a = t.feed("<Parallel><Goal><Outline>1: a</Outline></Goal>");
        let plan = forks(&a)[0].clone();
        let mut b = t.child(&plan.branches[0]);
        assert_eq!(b.text(), "<Path>\n1:");
        let a = b.feed(" done</Path> oops");
        assert_eq!(a[0], Action::BranchEnd { at: "<Path>\n1: done</Path>".len(), cause: EndCause::Marker });
        assert_eq!(warnings(&a), vec![WarningKind::TextAfterStop]);
        assert!(b.finish(StreamEnd::Eos).is_empty());
    }

    #[test]
    fn branch_limit_closes_with_a_warning() {
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        let mut t = Watcher::trunk(&spec);
        let a = t.feed("Sure. <|title|>A<|/title|><|title|>B<|/title|><|para|>");
        let plan = forks(&a)[0].clone();
        let mut b = t.child(&plan.branches[1]);
        assert!(b.feed("long text").is_empty());
        let a = b.finish(StreamEnd::Limit);
        assert_eq!(warnings(&a), vec![WarningKind::BranchNotClosed]);
        assert!(matches!(a.last(), Some(Action::BranchEnd { cause: EndCause::Stream(StreamEnd::Limit), .. })));
        // EOS is an accepted end: no warning.
        let mut c = t.child(&plan.branches[0]);
        let a = c.finish(StreamEnd::Eos);
        assert_eq!(a.len(), 1);
        // The ASPD join text closes the block at once.
        let a = t.joined();
        assert!(matches!(a[0], Action::BlockClosed { .. }));
        assert_eq!(t.state().phase, Phase::Serial);
    }

    #[test]
    fn unexpected_join_is_ignored() {
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        let mut t = Watcher::trunk(&spec);
        assert_eq!(warnings(&t.joined()), vec![WarningKind::UnexpectedJoin]);
        assert_eq!(t.text(), "");
    }
}
