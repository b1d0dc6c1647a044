//! Reading a session's transcript back as the token sequence the engine decoded.

use pardec::{ItemReport, Model, NodeReport, Token, Transcript};

/// Every (token, position) in the order of the flattened text.
pub fn flatten(report: &NodeReport, out: &mut Vec<(Token, i32)>) {
    for item in &report.items {
        match item {
            ItemReport::Text { first_pos, tokens, .. } => {
                out.extend(tokens.iter().enumerate().map(|(i, &t)| (t, first_pos + i as i32)))
            }
            ItemReport::Block { branches, .. } => branches.iter().for_each(|b| flatten(b, out)),
        }
    }
}

/// The response part of the transcript (after the prompt), as (piece bytes, engine position
/// counted from the response's start).
pub fn response_pieces(model: &Model, t: &Transcript, prompt_tokens: usize) -> (Vec<Vec<u8>>, Vec<i32>) {
    let mut all = Vec::new();
    flatten(&t.trunk, &mut all);
    let mut pieces = Vec::new();
    let mut pos = Vec::new();
    for &(tok, p) in &all[prompt_tokens..] {
        let mut b = Vec::new();
        model.token_bytes(tok, &mut b);
        pieces.push(b);
        pos.push(p - prompt_tokens as i32);
    }
    (pieces, pos)
}
