//! The tree of a complete tagged text, found with the same state machine the watcher runs
//! at inference. The text between a trigger and the first branch tag, and between branches,
//! belongs to the following branch (it is part of the branch prefix at inference); the text
//! after the last branch belongs to the parent after the join.

use super::fork::ForkPlan;
use super::scan::TagSet;
use super::spec::{Phase, ProtocolSpec};
use super::stream::{Action, EndCause, Machine, StreamEnd};
use super::warning::{Warning, WarningKind};

/// One stream (the trunk or a branch) of a complete text.
#[derive(Debug, Clone)]
pub(crate) struct StreamTree {
    /// Where it ends (a branch: after its end marker).
    pub end: usize,
    pub blocks: Vec<BlockTree>,
    pub ended_by_marker: bool,
}

/// One forked block.
#[derive(Debug, Clone)]
pub(crate) struct BlockTree {
    /// The explicit opener, if one was seen.
    pub opened: Option<(usize, usize)>,
    pub plan: ForkPlan,
    /// End of the fork text (the trigger's end where the protocol has none).
    pub fork_end: usize,
    pub branches: Vec<BranchTree>,
    /// Where the parent goes on (after the last branch).
    pub resume: usize,
    /// The closer, if one was seen before the next block.
    pub closed: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub(crate) struct BranchTree {
    /// Start of the branch tag.
    pub tag_start: usize,
    /// End of the branch tag.
    pub open_end: usize,
    /// The branch's path, `2.1`.
    pub path: String,
    pub stream: StreamTree,
}

/// Parses a complete text (the trunk's) into its tree, with every warning.
pub(crate) fn parse(spec: &ProtocolSpec, text: &str) -> (StreamTree, Vec<Warning>) {
    let tags = TagSet::new(spec);
    let mut warnings = Vec::new();
    let mut machine = Machine::new(0, String::new(), String::new(), 0, usize::MAX);
    machine.analysis = true;
    let tree = parse_stream(spec, &tags, text, machine, &mut warnings);
    warnings.sort_by_key(|w| w.at);
    (tree, warnings)
}

fn parse_stream(
    spec: &ProtocolSpec,
    tags: &TagSet,
    text: &str,
    mut m: Machine,
    warnings: &mut Vec<Warning>,
) -> StreamTree {
    let mut tree = StreamTree { end: text.len(), blocks: Vec::new(), ended_by_marker: false };
    let mut actions = Vec::new();
    let mut last_open: Option<(usize, usize)> = None;
    let mut open_block: Option<usize> = None; // index in tree.blocks still waiting for its closer
    loop {
        m.advance(spec, tags, text, true, &mut actions);
        if m.cursor >= text.len() && !matches!(m.phase, Phase::Forked | Phase::Ended) {
            m.finish(spec, tags, text, StreamEnd::Truncated, &mut actions);
        }
        let mut fork = None;
        for action in actions.drain(..) {
            match action {
                Action::Warning(w) => warnings.push(w),
                Action::BlockOpened { start, end, .. } => {
                    last_open = Some((start, end));
                    open_block = None;
                }
                Action::BlockClosed { start, end, .. } => {
                    if let Some(b) = open_block.take() {
                        tree.blocks[b].closed = Some((start, end));
                    }
                    last_open = None;
                }
                Action::Fork(plan) => fork = Some(plan),
                Action::NoFork { .. } => {}
                Action::BranchEnd { at, cause } => {
                    tree.end = at;
                    tree.ended_by_marker = cause == EndCause::Marker;
                }
                Action::TrunkEnd { at } => tree.end = at,
            }
        }
        if let Some(plan) = fork {
            let block = parse_branches(spec, tags, text, &m, plan, last_open.take(), warnings);
            m.join(spec, block.resume);
            tree.blocks.push(block);
            open_block = Some(tree.blocks.len() - 1);
            continue;
        }
        if m.phase == Phase::Ended {
            return tree;
        }
    }
}

fn parse_branches(
    spec: &ProtocolSpec,
    tags: &TagSet,
    text: &str,
    parent: &Machine,
    plan: ForkPlan,
    opened: Option<(usize, usize)>,
    warnings: &mut Vec<Warning>,
) -> BlockTree {
    let mut branches: Vec<BranchTree> = Vec::new();
    // The fork text, where the text holds it, is the parent's: the branches start after it.
    let fork_end = if text[plan.trigger_end..].starts_with(spec.fork_text.as_str()) {
        plan.trigger_end + spec.fork_text.len()
    } else {
        plan.trigger_end
    };
    let mut cursor = fork_end;
    loop {
        let rest = &text[cursor..];
        let mut tag_at = cursor + (rest.len() - rest.trim_start().len());
        // After a branch that keeps tokens past its end marker, those may be any text
        // (`</Path>6<Path>` in Multiverse transcripts).
        if !branches.is_empty() && spec.keep_after_end > 0 && !text[tag_at..].starts_with(spec.branch_open.as_str()) {
            if let Some(i) = kept_then_tag(rest, &spec.branch_open) {
                tag_at = cursor + i;
            }
        }
        if !text[tag_at..].starts_with(spec.branch_open.as_str()) || spec.branch_open.is_empty() {
            break;
        }
        let open_end = tag_at + spec.branch_open.len();
        let i = branches.len();
        let path = if parent.path.is_empty() { (i + 1).to_string() } else { format!("{}.{}", parent.path, i + 1) };
        let label = plan.branches.get(i).map_or_else(|| path.clone(), |b| b.label.clone());
        let mut machine = Machine::new(plan.depth, label, path.clone(), open_end, usize::MAX);
        machine.analysis = true;
        let stream = parse_stream(spec, tags, text, machine, warnings);
        cursor = stream.end;
        let closed = stream.ended_by_marker;
        branches.push(BranchTree { tag_start: tag_at, open_end, path, stream });
        if !closed {
            break;
        }
    }
    // A fixed count is the engine's choice, not the model's: a text may hold any number.
    let announced = matches!(spec.announce, super::spec::Announce::Tagged { .. });
    if announced && branches.len() != plan.branches.len() {
        warnings.push(Warning::new(
            WarningKind::CountMismatch,
            plan.trigger_end,
            format!("{} branch(es) announced, {} found", plan.branches.len(), branches.len()),
        ));
    }
    BlockTree { opened, plan, fork_end, branches, resume: cursor, closed: None }
}

/// How far past a branch's end marker the text it keeps may reach (the kept tokens, usually
/// one newline, at most a few bytes).
pub(crate) const MOST_KEPT_BYTES: usize = 16;

/// Where `tag` starts in `rest` after a short kept text holding no other tag opener.
fn kept_then_tag(rest: &str, tag: &str) -> Option<usize> {
    let i = rest.find(tag)?;
    (i <= MOST_KEPT_BYTES && !rest[..i].contains('<')).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_multiverse_tree() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let text = "Hi <Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>\n<Path>\n1: x</Path>\n<Path>\n2: \
            <Parallel><Goal><Outline>2.1: c</Outline></Goal>\n<Path>\n2.1: y</Path><Conclusion>\nz</Conclusion></Parallel></Path>\
            <Conclusion>\nw</Conclusion></Parallel> bye";
        let (tree, warnings) = parse(&spec, text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(tree.blocks.len(), 1);
        let b = &tree.blocks[0];
        assert_eq!(b.branches.len(), 2);
        assert!(b.closed.is_some());
        assert_eq!(b.branches[1].stream.blocks[0].branches[0].path, "2.1");
        assert_eq!(&text[b.resume..b.resume + 12], "<Conclusion>");
    }
}
