//! `pardec merge`: LoRA adapters written into a model's weights.

use std::path::PathBuf;

use pardec::WeightFormat;

use crate::args::MergeArgs;
use crate::error::CliResult;
use crate::output::{progress, warn};
use crate::params::default_model_path;

pub(crate) fn cmd_merge(a: &MergeArgs) -> CliResult<()> {
    let base = a.model.clone().unwrap_or_else(default_model_path);
    let adapters: Vec<(PathBuf, f32)> = a.lora.iter().map(|l| (PathBuf::from(&l.path), l.scale)).collect();
    progress::phase(&format!("writing {} with the adapters merged", a.out.display()));
    let summary = pardec::merge(&base, &adapters, &a.out, a.to, a.threads)?;
    for t in &summary.ignored {
        warn(&format!("left out {t}: llama.cpp ignores an adapter's norm vectors too"));
    }
    match (a.to, summary.format) {
        (None, Some(f)) => warn(&format!("wrote {f}: the model's adapted matrices have fewer than 8 bits a weight")),
        (Some(f @ (WeightFormat::Q4_0 | WeightFormat::Q4_1)), _) => {
            warn(&format!("re-quantized to {f}, most of an adapter's change rounds away (q8_0 keeps it)"))
        }
        _ => {}
    }
    progress::clear();
    eprintln!("pardec: merged {} matrices and {} token rows", summary.matrices, summary.rows);
    outln!("{}", a.out.display());
    Ok(())
}
