//! `pardec layout`: position ids, branch and visible tokens of every token of a tagged text,
//! as a table or as one JSON object written token by token.

use std::io::Write;

use pardec::protocol::{layout_with, Rule};
use serde::Serialize;

use super::read_stdin;
use crate::args::{LayoutArgs, RuleArg};
use crate::error::CliResult;
use crate::output::{out, to_json_io, warn};
use crate::params::{load_model, stream_spec};

pub(crate) fn cmd_layout(a: &LayoutArgs) -> CliResult<()> {
    let spec = stream_spec(&a.protocol)?;
    let rule = match a.rule {
        RuleArg::Engine => Rule::Engine,
        RuleArg::Train => Rule::Train,
    };
    let text = read_stdin()?;
    let model = load_model(&a.model, false)?;
    let tokens = model.tokenize(&text, false)?;
    let pieces: Vec<Vec<u8>> = tokens
        .iter()
        .map(|&t| {
            let mut b = Vec::new();
            model.token_bytes(t, &mut b);
            b
        })
        .collect();
    let lay = layout_with(&spec, &pieces, rule);
    let text_of = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    if a.json {
        let spelled = pieces.iter().flatten().copied().eq(text.bytes());
        if let Err(e) = write_layout_json(&tokens, &pieces, &lay, spelled) {
            out::fail(e);
        }
        return Ok(());
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let write_all = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>| -> std::io::Result<()> {
        for (i, (p, l)) in pieces.iter().zip(&lay.pieces).enumerate() {
            writeln!(out, "{i:>5} pos {:>5} {:<8} {:?}", l.pos, l.branch.as_deref().unwrap_or("-"), text_of(p))?;
        }
        for c in &lay.copies {
            writeln!(out, "copy of {:>5} pos {:>5}", c.of, c.layout.pos)?;
        }
        out.flush()
    };
    if let Err(e) = write_all(&mut out) {
        out::fail(e);
    }
    drop(out);
    for w in &lay.warnings {
        warn(&w.to_string());
    }
    Ok(())
}

/// The layout as one JSON object, written token by token (memory stays linear in the text):
/// `tokens` (id, start: byte offset in the tokens' text, prev: the entry whose logits predict
/// it, text, pos, branch), `visible` (per token, then per copy: sorted `[start, end)` index
/// ranges, the token itself included), `copies` (tokens read a second time: `of`, `pos`,
/// `branch`, `prev`; index `tokens.len() + k` in `visible`), `warnings`. `spelled` is false when
/// the tokens' text differs from the input (offsets then refer to the tokens' text).
fn write_layout_json(
    ids: &[pardec::Token],
    pieces: &[Vec<u8>],
    lay: &pardec::protocol::Layout,
    spelled: bool,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Tok<'a> {
        id: pardec::Token,
        start: usize,
        prev: Option<usize>,
        text: String,
        pos: u32,
        branch: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Copy<'a> {
        of: usize,
        pos: u32,
        branch: Option<&'a str>,
        prev: Option<usize>,
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.write_all(b"{\"tokens\":[")?;
    let mut start = 0;
    for (i, (p, l)) in pieces.iter().zip(&lay.pieces).enumerate() {
        let t = Tok {
            id: ids[i],
            start,
            prev: l.predecessor(i),
            text: String::from_utf8_lossy(p).into_owned(),
            pos: l.pos,
            branch: l.branch.as_deref(),
        };
        start += p.len();
        write!(out, "{}{}", if i > 0 { "," } else { "" }, to_json_io(&t)?)?;
    }
    out.write_all(b"],\"visible\":[")?;
    for (i, l) in lay.pieces.iter().chain(lay.copies.iter().map(|c| &c.layout)).enumerate() {
        let ranges: Vec<[usize; 2]> = l.visible.iter().map(|r| [r.start, r.end]).collect();
        write!(out, "{}{}", if i > 0 { "," } else { "" }, to_json_io(&ranges)?)?;
    }
    out.write_all(b"],\"copies\":[")?;
    for (i, c) in lay.copies.iter().enumerate() {
        let copy = Copy {
            of: c.of,
            pos: c.layout.pos,
            branch: c.layout.branch.as_deref(),
            prev: c.layout.predecessor(pieces.len() + i),
        };
        write!(out, "{}{}", if i > 0 { "," } else { "" }, to_json_io(&copy)?)?;
    }
    let mut warnings: Vec<String> = lay.warnings.iter().map(|w| w.to_string()).collect();
    if !spelled {
        warnings.push("the tokens do not spell the input text exactly: `start` offsets are in the tokens' text".into());
    }
    writeln!(out, "],\"warnings\":{}}}", to_json_io(&warnings)?)?;
    out.flush()
}
