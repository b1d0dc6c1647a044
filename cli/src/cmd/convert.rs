//! `pardec convert`: the model written again in another weight format.

use crate::args::ConvertArgs;
use crate::error::CliResult;
use crate::output::progress;
use crate::params::default_model_path;

pub(crate) fn cmd_convert(a: &ConvertArgs) -> CliResult<()> {
    let input = a.model.clone().unwrap_or_else(default_model_path);
    let out = a.out.clone().unwrap_or_else(|| pardec::converted_path(&input, a.to));
    progress::phase(&format!("writing {} as {}", out.display(), a.to));
    pardec::convert(&input, &out, a.to, a.threads)?;
    progress::clear();
    outln!("{}", out.display());
    Ok(())
}
