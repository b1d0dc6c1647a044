//! `pardec`: run and benchmark parallel branch decoding from the command line.
//!
//! Arguments are parsed by clap; every subcommand has its own `--help`. Errors go to stderr as
//! one line, with exit code 1 (2 for usage errors). Results go to stdout; progress of long work
//! goes to stderr (one updating line on a terminal, plain lines otherwise). A closed stdout
//! (`pardec run ... | head -c 10`) ends the process by SIGPIPE, quietly, as it ends cat.
//!
//! This file parses, dispatches and sets the exit code. The rest: `args` (the clap types),
//! `params` (arguments into the library's parameters: model, sampling, session, auto mode),
//! `cmd` (one module per command), `view` (the stream of `run --stream`, the live terminal
//! view), `output` (stdout, progress, tables, JSON) and `error`.

#[macro_use]
mod output;
mod args;
mod cmd;
mod error;
mod params;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{version, Cli, Command};
use error::{one_line, CliError};
use output::{out, progress};

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`pardec run ... | head -c1`) would
    // fail with EPIPE; a command-line tool should end quietly there, by the signal, as cat and
    // grep do. (Writes handle EPIPE the same way, should the signal be ignored after all.)
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                // Bare `pardec`: the help, on stderr, as a usage error.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                // `pardec run --version` too: clap would name it "pardec-run".
                ErrorKind::DisplayVersion => {
                    out::write(format_args!("pardec {}\n", version()));
                    out::flush();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelp => {
                    if let Err(err) = e.print() {
                        out::fail(err);
                    }
                    out::flush();
                    ExitCode::SUCCESS
                }
                _ => {
                    // `pardec run --bad`: point at the command's own help.
                    let sub = std::env::args()
                        .nth(1)
                        .filter(|a| Cli::command().get_subcommands().any(|s| s.get_name() == a))
                        .map(|a| format!(" {a}"))
                        .unwrap_or_default();
                    eprintln!("pardec: {} (see pardec{sub} --help)", one_line(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    let name = match &cli.command {
        Command::Run(_) => "run",
        Command::Bench(_) => "bench",
        Command::Layout(_) => "layout",
        Command::Check(_) => "check",
        Command::Score(_) => "score",
        Command::Equiv(_) => "equiv",
        Command::Convert(_) => "convert",
        Command::Merge(_) => "merge",
        Command::RpcServer(_) => "rpc-server",
        Command::Serve(_) => "serve",
    };
    let result = match &cli.command {
        Command::Run(a) => cmd::cmd_run(a),
        Command::Bench(a) => cmd::cmd_bench(a),
        Command::Layout(a) => cmd::cmd_layout(a),
        Command::Check(a) => cmd::cmd_check(a),
        Command::Score(a) => cmd::cmd_score(a),
        Command::Equiv(a) => cmd::cmd_equiv(a),
        Command::Convert(a) => cmd::cmd_convert(a),
        Command::Merge(a) => cmd::cmd_merge(a),
        Command::RpcServer(a) => cmd::cmd_rpc_server(a),
        Command::Serve(a) => cmd::cmd_serve(a),
    };
    out::flush();
    progress::clear();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("pardec: {msg} (see pardec {name} --help)");
            ExitCode::from(2)
        }
        Err(CliError::Pardec(e)) => {
            eprintln!("pardec: {e}");
            ExitCode::from(1)
        }
    }
}
