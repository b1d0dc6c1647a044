//! Training layouts: for each piece (token) of a tagged text, its position id, the branch it
//! belongs to and the pieces it may attend to — exactly what the engine realizes at
//! inference:
//!
//! - every branch of a block starts at the position right after the parent's last piece
//!   before the fork (its prefix starts there);
//! - a branch sees the parent's pieces before the fork and its own, never a sibling's;
//! - after the join the parent continues at max(branch end) + 1 and sees every branch
//!   ("Same-Max").
//!
//! A piece belongs to the stream holding its first byte, so a piece that straddles a
//! boundary (`</Goal>\n` when the branch prefix starts with `\n`) stays with the earlier stream.

use serde::Serialize;
use std::ops::Range;

use super::spec::ProtocolSpec;
use super::structure::{parse, StreamTree};
use super::warning::Warning;

/// Where one piece sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PieceLayout {
    /// Position id.
    pub pos: u32,
    /// The branch's path (`2.1`), `None` for the trunk.
    pub branch: Option<String>,
    /// Pieces it may attend to, itself included, as sorted disjoint index ranges.
    pub visible: Vec<Range<usize>>,
}

impl PieceLayout {
    /// Whether this piece may attend to piece `j`.
    pub fn sees(&self, j: usize) -> bool {
        let k = self.visible.partition_point(|r| r.end <= j);
        self.visible.get(k).is_some_and(|r| r.start <= j)
    }
}

/// The layout of a whole text, with the warnings its structure raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub pieces: Vec<PieceLayout>,
    pub warnings: Vec<Warning>,
}

/// Lays out pre-tokenized pieces (their concatenation is the tagged text). Pieces are bytes,
/// so a token that holds part of a character can be passed as it is; bytes that are not valid
/// UTF-8 overall are read as `?`, which keeps every offset.
pub fn layout<P: AsRef<[u8]>>(spec: &ProtocolSpec, pieces: &[P]) -> Layout {
    let mut bytes = Vec::new();
    let mut starts = Vec::with_capacity(pieces.len());
    for p in pieces {
        starts.push(bytes.len());
        bytes.extend_from_slice(p.as_ref());
    }
    let text = utf8_keeping_offsets(bytes);
    let (tree, warnings) = parse(spec, &text);
    let mut w = Walker { starts: &starts, next: 0, out: Vec::with_capacity(pieces.len()) };
    let mut pos = 0u32;
    let mut vis = Vec::new();
    w.stream(&tree, None, &mut pos, &mut vis);
    // Pieces past the tree (only possible if the tree ended early) stay on the trunk.
    w.take_until(usize::MAX, None, &mut pos, &mut vis);
    Layout { pieces: w.out, warnings }
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

struct Walker<'a> {
    starts: &'a [usize],
    next: usize,
    out: Vec<PieceLayout>,
}

impl Walker<'_> {
    /// Gives the stream every remaining piece that starts before byte `limit`.
    fn take_until(&mut self, limit: usize, branch: Option<&str>, pos: &mut u32, vis: &mut Vec<Range<usize>>) {
        while self.next < self.starts.len() && self.starts[self.next] < limit {
            let i = self.next;
            push_index(vis, i);
            self.out.push(PieceLayout {
                pos: *pos,
                branch: branch.map(str::to_string),
                visible: vis.clone(),
            });
            *pos = pos.saturating_add(1);
            self.next += 1;
        }
    }

    fn stream(
        &mut self,
        tree: &StreamTree,
        branch: Option<&str>,
        pos: &mut u32,
        vis: &mut Vec<Range<usize>>,
    ) {
        for block in &tree.blocks {
            self.take_until(block.plan.trigger_end, branch, pos, vis);
            let fork_pos = *pos;
            let mut end_pos = fork_pos;
            let mut union = vis.clone();
            for b in &block.branches {
                let mut bpos = fork_pos;
                let mut bvis = vis.clone();
                self.stream(&b.stream, Some(&b.path), &mut bpos, &mut bvis);
                end_pos = end_pos.max(bpos);
                union = merge(&union, &bvis);
            }
            *pos = end_pos;
            *vis = union;
        }
        self.take_until(tree.end, branch, pos, vis);
    }
}

fn push_index(vis: &mut Vec<Range<usize>>, i: usize) {
    match vis.last_mut() {
        Some(r) if r.end == i => r.end = i + 1,
        _ => vis.push(i..i + 1),
    }
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
        assert_eq!(pos, vec![0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8]);
        let br: Vec<Option<&str>> = l.pieces.iter().map(|p| p.branch.as_deref()).collect();
        assert_eq!(br[4..9], [Some("1"), Some("1"), Some("2"), Some("2"), Some("2")]);
        assert_eq!(br[9], None);
        assert_eq!(l.pieces[7].visible, vec![0..4, 6..8]);
        assert!(!l.pieces[7].sees(5) && l.pieces[7].sees(3) && l.pieces[7].sees(6));
        assert_eq!(l.pieces[10].visible, vec![0..11]);
    }

    #[test]
    fn byte_pieces_may_split_characters() {
        let spec = ProtocolSpec::builtin("aspd").unwrap();
        let e = "é".as_bytes();
        let pieces: Vec<&[u8]> = vec![
            b"a",
            &e[..1],
            &e[1..],
            b"<|title|>A<|/title|><|para|>",
            b"<|branch|>A: x<|/branch|>",
            &[0xFF],
            b"z",
        ];
        let l = layout(&spec, &pieces);
        assert_eq!(l.pieces.len(), 7);
        assert_eq!(l.pieces[4].branch.as_deref(), Some("1"));
        assert_eq!(l.pieces[5].pos, 5);
        assert_eq!(utf8_keeping_offsets(vec![b'a', 0xE2, 0x82]), "a??");
    }

    #[test]
    fn range_union() {
        assert_eq!(merge(&[0..2, 5..6], &[0..2, 2..4, 8..9]), vec![0..4, 5..6, 8..9]);
    }
}
