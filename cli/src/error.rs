//! The command line's errors: a usage error (exit code 2) or a pardec error (exit code 1), and
//! clap's errors as one line.

use pardec::Error;

/// A usage error (exit code 2) or a pardec error (exit code 1).
pub(crate) enum CliError {
    Usage(String),
    Pardec(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Pardec(e)
    }
}

pub(crate) type CliResult<T> = Result<T, CliError>;

pub(crate) fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> CliError {
    CliError::Pardec(Error::Internal(e.to_string()))
}

/// A clap error as one line: its message and tips, without the usage block.
pub(crate) fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for para in text.split("\n\n") {
        let para = para.trim();
        if para.is_empty() || para.starts_with("Usage:") || para.starts_with("For more information") {
            continue;
        }
        let para = para.strip_prefix("error: ").unwrap_or(para);
        let line: Vec<&str> = para.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        parts.push(line.join(" "));
    }
    parts.join("; ")
}
