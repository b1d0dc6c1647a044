//! Turning announcements into a fork: which branches to open and the text each starts with.

use serde::Serialize;

use super::announce::{parse_announcements_with_warnings, Announced};
use super::spec::{Announce, BadPlan, LabelRule, ProtocolSpec};
use super::warning::{excerpt, Warning, WarningKind};

/// One branch to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchPlan {
    /// The label the model announced (`2.1`), or the 1-based order where labels are not
    /// announced. Used in the prefix and to check nested labels.
    pub label: String,
    /// The announced title (empty when there is none).
    pub title: String,
    /// Text to prefill at the start of the branch ([`ProtocolSpec::branch_prefix`] rendered).
    pub prefix: String,
    /// The branch's place in the tree, `2`, `2.1`: its index among its siblings (1-based)
    /// under its parent's path. This is the engine's label for the branch.
    pub path: String,
    /// How many blocks the branch is inside (1 for a branch of a top-level block).
    pub depth: u32,
}

/// A fork the driver should make now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForkPlan {
    /// Byte offset of the trigger's first byte in the forking stream's text.
    pub trigger_start: usize,
    /// Byte offset just past the trigger (exclusive). The branches start after it; text the
    /// stream holds past it (same token) stays in the parent.
    pub trigger_end: usize,
    /// Depth of the new block (1 = opened by the trunk).
    pub depth: u32,
    /// Usable announcements (labelled, not repeated) before the cap.
    pub announced: usize,
    /// The branches to open, in order: at most the watcher's branch cap, never empty (a
    /// trigger with nothing to fork gives [`Action::NoFork`](super::Action::NoFork) instead).
    pub branches: Vec<BranchPlan>,
}

/// Who forks: the stream's label, path and depth.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parent {
    pub label: String,
    pub path: String,
    pub depth: u32,
}

fn child_path(parent: &str, i: usize) -> String {
    if parent.is_empty() {
        (i + 1).to_string()
    } else {
        format!("{parent}.{}", i + 1)
    }
}

/// What a trigger leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Planned {
    Fork(ForkPlan),
    /// Nothing to fork: the block is decoded serially.
    Serial,
    /// The protocol ends the stream here ([`BadPlan::EndStream`]).
    End,
}

/// Plans the fork for a trigger at `trigger` (absolute range) whose block text is `segment`,
/// starting at absolute offset `offset`. Every fallback comes with a warning.
pub(crate) fn plan_fork(
    spec: &ProtocolSpec,
    segment: &str,
    offset: usize,
    parent: &Parent,
    cap: usize,
    trigger: (usize, usize),
) -> (Planned, Vec<Warning>) {
    let (plan, mut warnings) = plan_branches(spec, segment, offset, parent, cap, trigger);
    match plan {
        Some(plan) if plan.announced <= spec.max_branches || spec.on_bad_plan == BadPlan::Fallback => {
            (Planned::Fork(plan), warnings)
        }
        None if spec.on_bad_plan == BadPlan::Fallback || cap == 0 => (Planned::Serial, warnings),
        _ => {
            warnings.push(Warning::new(
                WarningKind::TooManyBranches,
                trigger.0,
                format!("{} accepts 1 to {} announced branches: the stream ends here", spec.name, spec.max_branches),
            ));
            (Planned::End, warnings)
        }
    }
}

fn plan_branches(
    spec: &ProtocolSpec,
    segment: &str,
    offset: usize,
    parent: &Parent,
    cap: usize,
    trigger: (usize, usize),
) -> (Option<ForkPlan>, Vec<Warning>) {
    let mut warnings = Vec::new();
    let depth = parent.depth + 1;
    let mut chosen: Vec<Announced> = match &spec.announce {
        Announce::Fixed { count } => (0..*count)
            .map(|i| Announced { label: (i + 1).to_string(), title: String::new(), start: trigger.0, end: trigger.0 })
            .collect(),
        Announce::Tagged { label: rule, .. } => {
            let (mut found, w) = parse_announcements_with_warnings(spec, segment);
            warnings.extend(w.into_iter().map(|mut w| {
                w.at += offset;
                w
            }));
            for a in &mut found {
                a.start += offset;
                a.end += offset;
            }
            let numbered = matches!(rule, LabelRule::Numbered { .. });
            let exact = matches!(rule, LabelRule::Title { verbatim: true });
            if spec.check_labels {
                dedupe(&mut found, numbered, exact, &mut warnings);
                if numbered {
                    check_numbering(&found, &parent.label, &mut warnings);
                }
            } else if !numbered {
                for (i, a) in found.iter_mut().enumerate() {
                    a.label = (i + 1).to_string();
                }
            }
            found
        }
    };
    let announced = chosen.len();
    if chosen.is_empty() {
        warnings.push(Warning::new(
            WarningKind::NoAnnouncements,
            trigger.0,
            format!("{:?} with nothing announced before it: decoding the block serially", spec.trigger),
        ));
        return (None, warnings);
    }
    if cap == 0 {
        warnings.push(Warning::new(
            WarningKind::TooManyBranches,
            trigger.0,
            "no branch may be opened (cap 0): decoding the block serially",
        ));
        return (None, warnings);
    }
    if chosen.len() > cap {
        warnings.push(Warning::new(
            WarningKind::TooManyBranches,
            chosen[cap].start,
            format!("{} branches announced, keeping the first {cap}", chosen.len()),
        ));
        chosen.truncate(cap);
    }
    let branches = chosen
        .into_iter()
        .enumerate()
        .map(|(i, a)| BranchPlan {
            prefix: spec.render_prefix(i, &a.label, &a.title),
            path: child_path(&parent.path, i),
            depth,
            label: a.label,
            title: a.title,
        })
        .collect();
    let plan = ForkPlan { trigger_start: trigger.0, trigger_end: trigger.1, depth, announced, branches };
    (Some(plan), warnings)
}

/// What makes two announcements the same: the label (numbered), else the title, compared as
/// written when `exact`, else case- and space-insensitively.
fn announcement_key(a: &Announced, by_label: bool, exact: bool) -> String {
    match (by_label, exact) {
        (true, _) => a.label.clone(),
        (false, true) => a.title.clone(),
        (false, false) => normalize(&a.title),
    }
}

/// Whether an announcement in `found` repeats an earlier one, as the fork would drop it (so
/// never for a spec that takes labels as written).
pub(crate) fn repeats_an_announcement(spec: &ProtocolSpec, found: &[Announced]) -> bool {
    let Announce::Tagged { label: rule, .. } = &spec.announce else {
        return false;
    };
    if !spec.check_labels {
        return false;
    }
    let numbered = matches!(rule, LabelRule::Numbered { .. });
    let exact = matches!(rule, LabelRule::Title { verbatim: true });
    let mut seen = std::collections::HashSet::new();
    !found.iter().all(|a| seen.insert(announcement_key(a, numbered, exact)))
}

/// Drops announcements that repeat an earlier one ([`announcement_key`]), renumbering
/// title-rule labels so they stay 1, 2, 3….
fn dedupe(found: &mut Vec<Announced>, by_label: bool, exact: bool, warnings: &mut Vec<Warning>) {
    let mut seen = std::collections::HashSet::new();
    found.retain(|a| {
        let fresh = seen.insert(announcement_key(a, by_label, exact));
        if !fresh {
            warnings.push(Warning::new(
                WarningKind::DuplicateLabel,
                a.start,
                format!(
                    "{} announced twice: dropping the repeat",
                    excerpt(if by_label { &a.label } else { &a.title }, 40)
                ),
            ));
        }
        fresh
    });
    if !by_label {
        for (i, a) in found.iter_mut().enumerate() {
            a.label = (i + 1).to_string();
        }
    }
}

/// Lowercase with whitespace runs collapsed: what makes two titles "the same".
pub(crate) fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Warns (once per kind) when labels are not `P.1, P.2, …` under parent label `P`.
fn check_numbering(found: &[Announced], parent_label: &str, warnings: &mut Vec<Warning>) {
    let under = if parent_label.is_empty() { String::new() } else { format!("{parent_label}.") };
    let mut outside_warned = false;
    let mut gap_warned = false;
    for (i, a) in found.iter().enumerate() {
        let expected = format!("{under}{}", i + 1);
        if a.label == expected {
            continue;
        }
        if !under.is_empty() && !a.label.starts_with(&under) {
            if !outside_warned {
                outside_warned = true;
                warnings.push(Warning::new(
                    WarningKind::LabelOutsideParent,
                    a.start,
                    format!("label {:?} inside branch {parent_label:?}: expected {expected:?}", a.label),
                ));
            }
        } else if !gap_warned {
            gap_warned = true;
            warnings.push(Warning::new(
                WarningKind::LabelsNotConsecutive,
                a.start,
                format!("label {:?} where {expected:?} was expected", a.label),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: &ProtocolSpec, text: &str, parent: &Parent, cap: usize) -> (Option<ForkPlan>, Vec<Warning>) {
        plan_branches(spec, text, 0, parent, cap, (text.len(), text.len()))
    }

    #[test]
    fn duplicates_gaps_and_cap() {
        let spec = ProtocolSpec { check_labels: true, ..ProtocolSpec::builtin("multiverse").unwrap() };
        let text = "<Outline>1: a</Outline><Outline>1: again</Outline><Outline>3: c</Outline><Outline>4: d</Outline>";
        let (p, w) = plan(&spec, text, &Parent::default(), 2);
        let p = p.unwrap();
        assert_eq!(p.announced, 3);
        assert_eq!(p.branches.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(), vec!["1", "3"]);
        assert_eq!(p.branches[1].path, "2");
        let kinds: Vec<_> = w.iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds,
            vec![WarningKind::DuplicateLabel, WarningKind::LabelsNotConsecutive, WarningKind::TooManyBranches]
        );
    }

    #[test]
    fn nested_labels_are_checked_against_the_parent() {
        let spec = ProtocolSpec { check_labels: true, ..ProtocolSpec::builtin("multiverse").unwrap() };
        let parent = Parent { label: "2".into(), path: "2".into(), depth: 1 };
        let (p, w) = plan(&spec, "<Outline>2.1: a</Outline><Outline>2.2: b</Outline>", &parent, 8);
        assert!(w.is_empty());
        let p = p.unwrap();
        assert_eq!(p.depth, 2);
        assert_eq!(p.branches[1].path, "2.2");
        assert_eq!(p.branches[1].prefix, "<Path>\n2.2:");
        let (_, w) = plan(&spec, "<Outline>1: a</Outline><Outline>2: b</Outline>", &parent, 8);
        assert_eq!(w[0].kind, WarningKind::LabelOutsideParent);
        // Multiverse's engine takes every label as written, repeats included.
        let free = ProtocolSpec::builtin("multiverse").unwrap();
        let (p, w) = plan(&free, "<Outline>1: a</Outline><Outline>1: b</Outline>", &parent, 8);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.unwrap().branches.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(), vec!["1", "1"]);
    }

    #[test]
    fn nothing_announced_or_no_room_means_no_fork() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let (p, w) = plan(&spec, "just text", &Parent::default(), 8);
        assert!(p.is_none());
        assert_eq!(w[0].kind, WarningKind::NoAnnouncements);
        let (p, w) = plan(&spec, "<Outline>1: a</Outline>", &Parent::default(), 0);
        assert!(p.is_none());
        assert_eq!(w[0].kind, WarningKind::TooManyBranches);
    }

    #[test]
    fn fixed_count_and_titles() {
        let spec = ProtocolSpec::builtin("parallel-r1").unwrap();
        let (p, _) = plan(&spec, "", &Parent::default(), 8);
        assert_eq!(p.unwrap().branches.len(), 2);
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        let (p, w) =
            plan(&spec, "<|title|>A<|/title|><|title|> a <|/title|><|title|>B<|/title|>", &Parent::default(), 8);
        let p = p.unwrap();
        // Titles as written: " a " is not "A".
        assert_eq!(
            p.branches.iter().map(|b| (b.label.as_str(), b.prefix.as_str())).collect::<Vec<_>>(),
            vec![("1", "<|branch|>A: "), ("2", "<|branch|> a : "), ("3", "<|branch|>B: ")]
        );
        assert!(w.is_empty(), "{w:?}");
        let (_, w) = plan(&spec, "<|title|>A<|/title|><|title|>A<|/title|>", &Parent::default(), 8);
        assert_eq!(w[0].kind, WarningKind::DuplicateLabel);
    }
}
