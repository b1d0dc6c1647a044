//! Structural validation of a complete tagged text (training data, or a finished response).
//!
//! Besides every warning the watcher would raise at inference (stray closers, forbidden or
//! too-deep tags, duplicate or out-of-order labels, unclosed blocks and branches), a block
//! must: start with its plan right after its opener; have at least one branch; have as many
//! branches as announcements, each starting with the prefix its announcement implies (labels
//! match); and, where the protocol has a summary, have exactly one, right after the last
//! branch, and nothing but whitespace between its end and the block's closer.

use serde::Serialize;
use std::fmt;

use super::spec::{Announce, ProtocolSpec};
use super::structure::{parse, BlockTree, StreamTree, MOST_KEPT_BYTES};

/// A structural problem at a (1-based) line of the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StructError {
    /// The 1-based line of the text where the problem starts.
    pub line: usize,
    /// What is wrong, naming the tag or label involved.
    pub message: String,
}

impl fmt::Display for StructError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every structural problem of `text` under `spec`, in text order. Empty: well formed.
pub fn check(text: &str, spec: &ProtocolSpec) -> Vec<StructError> {
    let (tree, warnings) = parse(spec, text);
    let mut found: Vec<(usize, String)> = warnings.into_iter().map(|w| (w.at, w.message)).collect();
    check_stream(spec, text, &tree, &mut found);
    found.sort_by_key(|(at, _)| *at);
    let newlines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
    found
        .into_iter()
        .map(|(at, message)| StructError { line: newlines.partition_point(|&n| n < at) + 1, message })
        .collect()
}

fn check_stream(spec: &ProtocolSpec, text: &str, tree: &StreamTree, out: &mut Vec<(usize, String)>) {
    for block in &tree.blocks {
        check_block(spec, text, block, out);
        for b in &block.branches {
            check_stream(spec, text, &b.stream, out);
        }
    }
}

fn check_block(spec: &ProtocolSpec, text: &str, block: &BlockTree, out: &mut Vec<(usize, String)>) {
    let plan = &block.plan;
    if let (Some(plan_open), Some((_, open_end))) = (&spec.plan_open, block.opened) {
        let inside = &text[open_end..plan.trigger_start];
        if !inside.trim_start().starts_with(plan_open.as_str()) {
            out.push((open_end, format!("the block must start with {plan_open:?}")));
        }
        let count = inside.matches(plan_open.as_str()).count();
        if count > 1 {
            out.push((open_end, format!("{count} {plan_open:?} sections in one block (one expected)")));
        }
    }
    if block.branches.is_empty() {
        out.push((
            plan.trigger_end,
            format!("no {:?} after {:?}: a block needs at least one branch", spec.branch_open, spec.trigger),
        ));
    }
    if matches!(spec.announce, Announce::Tagged { .. }) {
        for (b, announced) in block.branches.iter().zip(&plan.branches) {
            if !starts_with_ignoring_space(&text[b.tag_start..b.stream.end], &announced.prefix) {
                let written: String =
                    text[b.open_end..b.stream.end].trim_start().chars().take_while(|&c| c != '\n').take(30).collect();
                out.push((
                    b.open_end,
                    format!(
                        "branch {} starts {written:?} but its announcement implies {:?}",
                        b.path,
                        announced.prefix.trim()
                    ),
                ));
            }
        }
    }
    let Some(summary_open) = &spec.summary_open else { return };
    let after_end = block.closed.map_or(text.len(), |c| c.0);
    let after = &text[block.resume.min(after_end)..after_end];
    // What the join writes up to the summary's opener (`</Parallel>\n<Summary>`).
    let expected = match spec.join_text.find(summary_open.as_str()) {
        Some(i) => &spec.join_text[..i + summary_open.len()],
        None => summary_open.as_str(),
    };
    if !follows(after, expected.trim_start(), spec.keep_after_end) {
        out.push((block.resume, format!("the last branch must be followed by {:?}", expected.trim())));
    }
    let count = after.matches(summary_open.as_str()).count();
    if count > 1 {
        out.push((block.resume, format!("{count} {summary_open:?} in one block (one expected)")));
    }
    if let (Some(summary_close), Some((close_start, _))) = (&spec.summary_close, block.closed) {
        match after.rfind(summary_close.as_str()) {
            None => out.push((close_start, format!("{summary_close:?} missing before the block's end"))),
            Some(i) if !after[i + summary_close.len()..].trim().is_empty() => out.push((
                block.resume + i,
                format!("text after {summary_close:?}: the summary must be the last part of the block"),
            )),
            Some(_) => {}
        }
    }
}

/// Whether `after` (the text after a block's last branch) starts with `expected`, past
/// whitespace and, where the branch keeps tokens after its end marker, past a short kept text
/// (it can be any token: Multiverse transcripts hold `</Path>6<Path>`).
fn follows(after: &str, expected: &str, keep: u32) -> bool {
    after.trim_start().starts_with(expected) || (keep > 0 && after.find(expected).is_some_and(|i| i <= MOST_KEPT_BYTES))
}

/// Whether `text` starts with `prefix`, comparing only non-whitespace characters.
fn starts_with_ignoring_space(text: &str, prefix: &str) -> bool {
    let mut t = text.chars().filter(|c| !c.is_whitespace());
    prefix.chars().filter(|c| !c.is_whitespace()).all(|p| t.next() == Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_insensitive_prefix() {
        assert!(starts_with_ignoring_space("\n<Path>\n 2: x", "\n<Path>\n2:"));
        assert!(!starts_with_ignoring_space("<Path>3:", "<Path>2:"));
        assert!(!starts_with_ignoring_space("<Pa", "<Path>"));
    }
}
