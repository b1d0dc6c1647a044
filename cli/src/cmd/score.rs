//! `pardec score`: the log-probability of each token of a continuation after a context.

use pardec::{NodeId, Session, SessionParams};

use crate::args::ScoreArgs;
use crate::error::CliResult;
use crate::params::{load_model, SessionArgs};

/// `score`: the log-probability of each token of a continuation after a context.
pub(crate) fn cmd_score(a: &ScoreArgs) -> CliResult<()> {
    let model = load_model(&a.model, false)?;
    let session = SessionArgs { threads: a.threads, lora: &a.lora, sampling: None, selection: None };
    let params = SessionParams { n_ctx: a.ctx, max_branches: 1, ..session.params(&model)? };
    let mut session = Session::new(&model, params)?;
    session.prompt(&a.context)?;
    let ids = model.tokenize(&a.continuation, false)?;
    let logprobs = session.score_tokens(NodeId::TRUNK, &ids)?;
    let total: f64 = logprobs.iter().map(|&l| l as f64).sum();
    if a.json {
        let tokens: Vec<_> =
            ids.iter().zip(&logprobs).map(|(id, lp)| serde_json::json!({ "id": id, "logprob": lp })).collect();
        outln!("{}", serde_json::json!({ "tokens": tokens, "total": total }));
        return Ok(());
    }
    for (id, lp) in ids.iter().zip(&logprobs) {
        let mut piece = Vec::new();
        model.token_bytes(*id, &mut piece);
        outln!("{id:>7} {lp:>10.4} {:?}", String::from_utf8_lossy(&piece));
    }
    outln!("total {total:.4} over {} tokens", ids.len());
    Ok(())
}
