//! `pardec check`: the structural errors of a tagged text, with line numbers.

use pardec::protocol::check;
use pardec::Error;

use super::read_stdin;
use crate::args::CheckArgs;
use crate::error::{CliError, CliResult};
use crate::params::stream_spec;

pub(crate) fn cmd_check(a: &CheckArgs) -> CliResult<()> {
    let spec = stream_spec(&a.protocol)?;
    let text = read_stdin()?;
    let errors = check(&text, &spec);
    if errors.is_empty() {
        outln!("ok: well-formed {} text", spec.name);
        return Ok(());
    }
    for e in &errors {
        outln!("line {}: {}", e.line, e.message);
    }
    Err(CliError::Pardec(Error::InvalidArgument(format!(
        "{} structural error(s) in the {} text",
        errors.len(),
        spec.name
    ))))
}
