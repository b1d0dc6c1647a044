//! `pardec equiv`: branches decoded in one batch against branches decoded alone, with a leak
//! as the control; with `--selection device`, device-selected tokens against the host's.

use pardec::{Error, Selection, SessionParams};

use crate::args::EquivArgs;
use crate::error::{CliError, CliResult};
use crate::output::progress;
use crate::params::{load_model, SessionArgs};

pub(crate) fn cmd_equiv(a: &EquivArgs) -> CliResult<()> {
    let model = load_model(&a.model, true)?;
    // The session selects on the host and samples greedily: --selection device is the third
    // check's, against it.
    let session = SessionArgs { threads: a.threads, lora: &a.lora, sampling: None, selection: None };
    let params = SessionParams { n_ctx: 4096, ..session.params(&model)? };
    let device = match a.selection {
        Some(Selection::Device { candidates }) => Some(candidates),
        _ => None,
    };
    let phases = if device.is_some() { 3 } else { 2 };
    let (branches, tokens, bound) = (a.branches, a.tokens, a.bound);
    progress::phase(&format!("equiv: {branches} branches in one batch vs each alone (1/{phases})"));
    let noise = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, false)?;
    progress::phase(&format!("equiv: the same with a sibling leak (2/{phases})"));
    let leak = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, true)?;
    progress::clear();
    outln!("batch vs alone: {noise:.6}   with a sibling leak: {leak:.6}   bound: {bound}");
    if noise > bound || leak <= bound {
        return Err(CliError::Pardec(Error::Internal(format!(
            "equivalence check failed: noise {noise:.4} must be ≤ {bound} < leak {leak:.4}"
        ))));
    }
    outln!("ok: batched branches match branches decoded alone, and a leak is detectable");
    if let Some(candidates) = device {
        progress::phase(&format!("equiv: device selection ({candidates} candidates) vs host (3/3)"));
        let (agree, total) = pardec::equivalence::device_vs_host(&model, &params, branches, tokens, candidates)?;
        progress::clear();
        outln!("device selection ({candidates} candidates) vs host, greedy: {agree}/{total} tokens identical");
        if agree != total {
            return Err(CliError::Pardec(Error::Internal(
                "device selection chose other tokens than host selection".into(),
            )));
        }
        outln!("ok: device selection picks the host's tokens");
    }
    Ok(())
}
