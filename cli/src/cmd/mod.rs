//! The commands, one module each (`bench` with its `--peer` comparison), and what several of
//! them share.

mod bench;
mod check;
mod convert;
mod equiv;
mod layout;
mod merge;
mod rpc_server;
mod run;
mod score;
mod serve;

use pardec::Error;

use crate::error::{CliError, CliResult};

pub(crate) use bench::cmd_bench;
pub(crate) use check::cmd_check;
pub(crate) use convert::cmd_convert;
pub(crate) use equiv::cmd_equiv;
pub(crate) use layout::cmd_layout;
pub(crate) use merge::cmd_merge;
pub(crate) use rpc_server::cmd_rpc_server;
pub(crate) use run::cmd_run;
pub(crate) use score::cmd_score;
pub(crate) use serve::cmd_serve;

/// All of stdin, as UTF-8 text (`layout`, `check`).
fn read_stdin() -> CliResult<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("reading stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|e| CliError::Pardec(Error::InvalidUtf8(format!("stdin: {e}"))))
}
