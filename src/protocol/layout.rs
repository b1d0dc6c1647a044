//! Training layouts: for each piece (token) of a tagged text, its position id, the branch it
//! belongs to and the pieces it may attend to.
//!
//! [`Rule::Engine`] (the default) is exactly what pardec realises at inference under the
//! protocol's [`JoinRule`]:
//!
//! - the parent's pieces up to the trigger and its fork text come first; every branch of the
//!   block starts at the position after them, sees them and its own pieces, never a
//!   sibling's; a branch keeps the `keep_after_end` pieces after its end marker;
//! - same-max: the parent continues at max(branch end) + 1 and sees every branch;
//! - same-seq: the same, but it continues at fork position + Σ branch lengths;
//! - reprefill: the parent re-reads every branch after the first as serial text. Those
//!   re-read pieces are [`Layout::copies`] (index `pieces.len() + k`), at sequential positions,
//!   each seeing what a serial read sees; the parent's later pieces see the first branch and
//!   the copies, not the isolated originals.
//!
//! [`Rule::Train`] is the protocol's [`TrainRule`], the layout its own training code builds
//! (which differs from its engine by a position or two, see the README).
//!
//! A piece belongs to the stream holding its first byte, so a piece that straddles a
//! boundary stays with the earlier stream.

use serde::Serialize;
use std::ops::Range;

use super::spec::ProtocolSpec;
use super::structure::{parse, BlockTree, StreamTree};
use super::warning::Warning;
use crate::layout_rules::{JoinRule, TrainRule};

/// Which layout to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// What pardec's engine realises at inference.
    #[default]
    Engine,
    /// What the protocol's own training code builds ([`ProtocolSpec::train_rule`]).
    Train,
}

/// Where one piece sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PieceLayout {
    /// Position id.
    pub pos: u32,
    /// The branch's path (`2.1`), `None` for the trunk.
    pub branch: Option<String>,
    /// Pieces (and copies) it may attend to, itself included, as sorted disjoint index ranges.
    pub visible: Vec<Range<usize>>,
}

impl PieceLayout {
    /// Whether this piece may attend to piece `j`.
    pub fn sees(&self, j: usize) -> bool {
        let k = self.visible.partition_point(|r| r.end <= j);
        self.visible.get(k).is_some_and(|r| r.start <= j)
    }

    /// The entry whose logits predict this one, `index` being this entry's own index: the
    /// last entry it sees other than itself (in a branch's first token, the fork point rather
    /// than the previous sibling's end, which it does not see). `None` for the first token.
    /// Training reads its labels from this instead of shifting by one in file order.
    pub fn predecessor(&self, index: usize) -> Option<usize> {
        self.visible.iter().rev().find_map(|r| {
            let last = r.end.checked_sub(1)?;
            if last != index {
                return Some(last);
            }
            (last > r.start).then(|| last - 1)
        })
    }
}

/// A piece read a second time: it has index `pieces.len() + k` in visibility ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyLayout {
    /// The piece it repeats.
    pub of: usize,
    /// Where the copy sits: its own position and visibility (its branch as the original's).
    #[serde(flatten)]
    pub layout: PieceLayout,
}

/// The layout of a whole text, with the warnings its structure raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// One entry per input piece, in order: `pieces[i]` places the caller's piece `i`.
    pub pieces: Vec<PieceLayout>,
    /// Pieces read again (a reprefill join, or a training rule with copies).
    pub copies: Vec<CopyLayout>,
    /// What the text's structure got wrong (as the watcher would report it at inference),
    /// at byte offsets in the concatenated text; the layout follows each one's fallback.
    pub warnings: Vec<Warning>,
}

/// Lays out pre-tokenized pieces (their concatenation is the tagged text) as the engine
/// realises them. Pieces are bytes, so a token that holds part of a character can be passed as
/// it is; bytes that are not valid UTF-8 overall are read as `?`, which keeps every offset.
pub fn layout<P: AsRef<[u8]>>(spec: &ProtocolSpec, pieces: &[P]) -> Layout {
    layout_with(spec, pieces, Rule::Engine)
}

/// Lays out pre-tokenized pieces under `rule`. A protocol without a training rule of its own
/// is laid out as its engine runs it.
pub fn layout_with<P: AsRef<[u8]>>(spec: &ProtocolSpec, pieces: &[P], rule: Rule) -> Layout {
    let mut bytes = Vec::new();
    let mut starts = Vec::with_capacity(pieces.len());
    for p in pieces {
        starts.push(bytes.len());
        bytes.extend_from_slice(p.as_ref());
    }
    let text = utf8_keeping_offsets(bytes);
    let (tree, warnings) = parse(spec, &text);
    let block_rule = match (rule, spec.train_rule) {
        (Rule::Train, Some(t)) => BlockRule::Train(t),
        _ => BlockRule::Engine(spec.join_rule),
    };
    let mut w = Walker {
        text: &text,
        join_text: &spec.join_text,
        starts: &starts,
        next: 0,
        out: Vec::with_capacity(pieces.len()),
        copies: Vec::new(),
        rule: block_rule,
        keep_after_end: spec.keep_after_end as usize,
        // What the engine alone does to its cache: training code sees the text as written.
        trigger_in_cache: spec.trigger_in_cache || rule == Rule::Train,
        repeat_last: spec.join_repeats_last && rule == Rule::Engine,
    };
    let mut pos = 0u32;
    let mut vis = Vec::new();
    w.stream(&tree, None, &mut pos, &mut vis);
    // Pieces past the tree (only possible if the tree ended early) stay on the trunk.
    w.take_until(usize::MAX, None, &mut pos, &mut vis);
    Layout { pieces: w.out, copies: w.copies, warnings }
}

/// Lays out a text with one piece per character.
pub fn layout_text(spec: &ProtocolSpec, text: &str) -> Layout {
    let mut buf = [0u8; 4];
    let chars: Vec<String> = text.chars().map(|c| c.encode_utf8(&mut buf).to_string()).collect();
    layout(spec, &chars)
}

/// The bytes as text, each byte of an invalid sequence replaced by `?` (same length).
fn utf8_keeping_offsets(mut bytes: Vec<u8>) -> String {
    let mut from = 0;
    loop {
        match std::str::from_utf8(&bytes[from..]) {
            Ok(_) => break,
            Err(e) => {
                let bad_start = from + e.valid_up_to();
                let bad_len = e.error_len().unwrap_or(bytes.len() - bad_start);
                bytes[bad_start..bad_start + bad_len].fill(b'?');
                from = bad_start + bad_len;
            }
        }
    }
    String::from_utf8(bytes).unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
enum BlockRule {
    Engine(JoinRule),
    Train(TrainRule),
}

/// One branch as laid out: its pieces, where it ended, what it saw.
struct Laid {
    pieces: Range<usize>,
    /// Position after its last piece.
    end: u32,
    /// Position after its end marker (before the pieces kept after it).
    marker_end: u32,
    visible: Vec<Range<usize>>,
}

struct Walker<'a> {
    text: &'a str,
    join_text: &'a str,
    starts: &'a [usize],
    next: usize,
    out: Vec<PieceLayout>,
    copies: Vec<CopyLayout>,
    rule: BlockRule,
    keep_after_end: usize,
    trigger_in_cache: bool,
    repeat_last: bool,
}

impl Walker<'_> {
    fn push(&mut self, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        let i = self.next;
        push_index(vis, i);
        self.out.push(PieceLayout { pos: *pos, branch: branch.map(str::to_string), visible: vis.clone() });
        *pos = pos.saturating_add(1);
        self.next += 1;
    }

    /// Gives the stream every remaining piece that starts before byte `limit`.
    fn take_until(&mut self, limit: usize, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        while self.next < self.starts.len() && self.starts[self.next] < limit {
            self.push(branch, pos, vis);
        }
    }

    /// Gives the stream up to `n` more pieces kept after an end marker, ending before byte
    /// `limit` and before the join text (a text may lack the kept token the engine samples).
    fn take_n(&mut self, n: usize, limit: usize, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        for _ in 0..n {
            let Some(&start) = self.starts.get(self.next) else { return };
            if start >= limit || self.text.get(start..).is_some_and(|t| t.starts_with(self.join_text)) {
                return;
            }
            self.push(branch, pos, vis);
        }
    }

    fn stream(&mut self, tree: &StreamTree, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        for block in &tree.blocks {
            self.block(block, branch, pos, vis);
        }
        self.take_until(tree.end, branch, pos, vis);
    }

    fn block(&mut self, block: &BlockTree, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        self.take_until(block.plan.trigger_start, branch, pos, vis);
        let (before_trigger, first_trigger_piece) = (*pos, self.next);
        self.take_until(block.plan.trigger_end, branch, pos, vis);
        if matches!(self.rule, BlockRule::Train(TrainRule::SharedStart)) {
            return self.block_shared_start(block, branch, pos, vis);
        }
        if !self.trigger_in_cache {
            // The trigger is text only: the branches take its position and never see it.
            *pos = before_trigger;
            *vis = subtract(vis, first_trigger_piece..self.next);
        }
        self.take_until(block.fork_end, branch, pos, vis);
        let fork_pos = *pos;
        let mut laid: Vec<Laid> = Vec::with_capacity(block.branches.len());
        for (k, b) in block.branches.iter().enumerate() {
            let mut bpos = fork_pos;
            let mut bvis = vis.clone();
            let first = self.next;
            self.stream(&b.stream, Some(&b.path), &mut bpos, &mut bvis);
            let marker_end = bpos;
            if b.stream.ended_by_marker {
                // The tokens the engine keeps after the end marker are the branch's own.
                let limit = block.branches.get(k + 1).map_or(usize::MAX, |n| n.tag_start);
                self.take_n(self.keep_after_end, limit, Some(&b.path), &mut bpos, &mut bvis);
            }
            laid.push(Laid { pieces: first..self.next, end: bpos, marker_end, visible: bvis });
        }
        self.rejoin(&laid, fork_pos, pos, vis);
    }

    /// Multiverse's and NPR's training layout: branches start where the fork text starts; the
    /// pieces between a branch's end marker and the next branch (and the kept ones after the
    /// last) are the parent's, at the position after that marker, seen by what follows.
    fn block_shared_start(
        &mut self,
        block: &BlockTree,
        branch: Option<&str>,
        pos: &mut u32,
        vis: &mut Vec<Range<usize>>,
    ) {
        let fork_pos = *pos;
        let mut fork_text_pos = *pos;
        self.take_until(block.fork_end, branch, &mut fork_text_pos, vis);
        let mut laid: Vec<Laid> = Vec::with_capacity(block.branches.len());
        for b in &block.branches {
            let mut sep_pos = laid.last().map_or(fork_pos, |l: &Laid| l.marker_end);
            self.take_until(b.tag_start, branch, &mut sep_pos, vis);
            let mut bpos = fork_pos;
            let mut bvis = vis.clone();
            let first = self.next;
            self.stream(&b.stream, Some(&b.path), &mut bpos, &mut bvis);
            laid.push(Laid { pieces: first..self.next, end: bpos, marker_end: bpos, visible: bvis });
        }
        if let Some(last) = laid.last() {
            let mut sep_pos = last.marker_end;
            if block.branches.last().is_some_and(|b| b.stream.ended_by_marker) {
                self.take_n(self.keep_after_end, usize::MAX, branch, &mut sep_pos, vis);
            }
        }
        *pos = fork_pos.max(fork_text_pos);
        self.rejoin(&laid, fork_pos, pos, vis);
    }

    /// The parent's position and visibility after the block, per rule.
    fn rejoin(&mut self, laid: &[Laid], fork_pos: u32, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        let union = |base: &[Range<usize>]| laid.iter().fold(base.to_vec(), |acc, l| merge(&acc, &l.visible));
        let sum = |f: &dyn Fn(&Laid) -> u32| fork_pos + laid.iter().map(|l| f(l) - fork_pos).sum::<u32>();
        let max = |f: &dyn Fn(&Laid) -> u32| laid.iter().map(f).max().unwrap_or(fork_pos);
        match self.rule {
            BlockRule::Engine(JoinRule::SameMax) | BlockRule::Train(TrainRule::SameMax) => {
                *pos = (*pos).max(max(&|l| l.end));
                *vis = union(vis);
            }
            BlockRule::Engine(JoinRule::SameSeq) | BlockRule::Train(TrainRule::SameSeq) => {
                *pos = sum(&|l| l.end);
                *vis = union(vis);
                if self.repeat_last {
                    // The last branch's last token, decoded again in the parent's cache.
                    if let Some(last) = laid.last().and_then(|l| l.pieces.clone().last()) {
                        self.copy(last, None, pos, vis);
                    }
                }
            }
            BlockRule::Train(TrainRule::SharedStart) => {
                *pos = (*pos).max(max(&|l| l.marker_end));
                *vis = union(vis);
            }
            BlockRule::Engine(JoinRule::Reprefill) => {
                let Some((first, rest)) = laid.split_first() else { return };
                *pos = first.end;
                *vis = first.visible.clone();
                for l in rest {
                    for of in l.pieces.clone() {
                        self.copy(of, None, pos, vis);
                    }
                }
            }
            BlockRule::Train(TrainRule::SerialWithCopies) => self.serial_with_copies(laid, fork_pos, pos, vis),
        }
    }

    /// Appends a copy of piece `of` seeing `vis` and itself, at `pos`.
    fn copy(&mut self, of: usize, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        let index = self.starts.len() + self.copies.len();
        push_index(vis, index);
        let layout = PieceLayout { pos: *pos, branch: branch.map(str::to_string), visible: vis.clone() };
        self.copies.push(CopyLayout { of, layout });
        *pos += 1;
    }

    /// ThreadWeaver's training layout: the block is re-laid serially (every branch sees the
    /// ones before it), and every branch after the first gets an isolated copy at the
    /// positions the engine decoded it at.
    fn serial_with_copies(&mut self, laid: &[Laid], fork_pos: u32, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        let mut serial_pos = fork_pos;
        let mut serial_vis = vis.clone();
        for l in laid {
            for i in l.pieces.clone() {
                push_index(&mut serial_vis, i);
                let piece = &mut self.out[i];
                piece.pos = serial_pos;
                piece.visible = serial_vis.clone();
                serial_pos += 1;
            }
        }
        for l in laid.iter().skip(1) {
            let mut cpos = fork_pos;
            let mut cvis = vis.clone();
            for i in l.pieces.clone() {
                let branch = self.out[i].branch.clone();
                self.copy(i, branch.as_deref(), &mut cpos, &mut cvis);
            }
        }
        *pos = serial_pos;
        *vis = serial_vis;
    }
}

/// Adds index `i` to a sorted disjoint range list (copies have indices past every piece, so
/// a piece after a copy lands before it).
fn push_index(vis: &mut Vec<Range<usize>>, i: usize) {
    match vis.last_mut() {
        Some(r) if r.end == i => r.end = i + 1,
        Some(r) if r.end < i => vis.push(i..i + 1),
        None => vis.push(i..i + 1),
        Some(_) => *vis = merge(vis, std::slice::from_ref(&(i..i + 1))),
    }
}

/// A sorted disjoint range list without the indices in `cut`.
fn subtract(list: &[Range<usize>], cut: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(list.len() + 1);
    for r in list {
        if r.start < cut.start {
            out.push(r.start..r.end.min(cut.start));
        }
        if r.end > cut.end {
            out.push(r.start.max(cut.end)..r.end);
        }
    }
    out.retain(|r| r.start < r.end);
    out
}

/// Union of two sorted disjoint range lists.
fn merge(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut all: Vec<Range<usize>> = a.iter().chain(b).cloned().collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_visibility_of_one_block() {
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        // pieces: trunk 0..4, branch 1: 4..6, branch 2: 6..9, trunk after join 9..
        let pieces = [
            "Hi",
            "<|title|>A<|/title|>",
            "<|title|>B<|/title|>",
            "<|para|>",
            "<|branch|>A: ",
            "x<|/branch|>",
            "<|branch|>B: ",
            "y",
            "z<|/branch|>",
            "<|/para|>\n",
            "end",
        ];
        let l = layout(&spec, &pieces);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let pos: Vec<u32> = l.pieces.iter().map(|p| p.pos).collect();
        // ASPD's engine: `<|para|>` is text only, the branches take its position 3; the last
        // branch's last token is decoded again at 3 + 2 + 3 (a copy), the join text after it.
        assert_eq!(pos, vec![0, 1, 2, 3, 3, 4, 3, 4, 5, 9, 10]);
        assert_eq!(l.copies.iter().map(|c| (c.of, c.layout.pos)).collect::<Vec<_>>(), vec![(8, 8)]);
        let br: Vec<Option<&str>> = l.pieces.iter().map(|p| p.branch.as_deref()).collect();
        assert_eq!(br[4..9], [Some("1"), Some("1"), Some("2"), Some("2"), Some("2")]);
        assert_eq!(br[9], None);
        assert_eq!(l.pieces[7].visible, vec![0..3, 6..8]);
        assert!(!l.pieces[7].sees(5) && !l.pieces[7].sees(3) && l.pieces[7].sees(2) && l.pieces[7].sees(6));
        assert_eq!(l.pieces[10].visible, vec![0..3, 4..12]);
    }

    #[test]
    fn byte_pieces_may_split_characters() {
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        let e = "é".as_bytes();
        let pieces: Vec<&[u8]> =
            vec![b"a", &e[..1], &e[1..], b"<|title|>A<|/title|><|para|>", b"<|branch|>A: x<|/branch|>", &[0xFF], b"z"];
        let l = layout(&spec, &pieces);
        assert_eq!(l.pieces.len(), 7);
        assert_eq!(l.pieces[4].branch.as_deref(), Some("1"));
        // The branch (one piece at 4) and the repeated token at 5 come before it.
        assert_eq!(l.pieces[5].pos, 6);
        assert_eq!(utf8_keeping_offsets(vec![b'a', 0xE2, 0x82]), "a??");
    }

    #[test]
    fn range_union() {
        assert_eq!(merge(&[0..2, 5..6], &[0..2, 2..4, 8..9]), vec![0..4, 5..6, 8..9]);
    }
}
