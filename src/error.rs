//! pardec's error type: one variant per situation a caller can act on.

use std::fmt;

/// A pardec error. Every variant maps to one C status code (`ffi::Status`).
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// llama.cpp's backend could not start.
    Backend(String),
    /// The model or adapter file does not exist or cannot be read.
    ModelNotFound(String),
    /// The file exists but is not a GGUF file (bad magic).
    NotGguf(String),
    /// llama.cpp could not load the GGUF (unknown architecture, corrupt tensors, ...).
    ModelLoad(String),
    /// The model loads but pardec cannot fork on it (recurrent or hybrid state cannot be joined).
    UnsupportedModel(String),
    /// llama.cpp could not create a context with the requested parameters.
    Context(String),
    /// A caller argument is out of range or inconsistent.
    InvalidArgument(String),
    /// Text that must be UTF-8 is not.
    InvalidUtf8(String),
    /// A prompt with no tokens.
    EmptyPrompt,
    /// The prompt does not fit into the context.
    PromptTooLong {
        /// Cells the session would hold with the prompt: those already used plus the prompt's
        /// tokens (a lower bound, from its byte length, when it was refused untokenized).
        tokens: usize,
        /// The session's context size in cells.
        n_ctx: usize,
    },
    /// A branch prefix that tokenizes to nothing.
    EmptyBranchPrefix {
        /// Index of the branch in the fork's list of specs (0-based).
        branch: usize,
    },
    /// More branches requested than free sequence ids.
    TooManyBranches {
        /// Branches the fork asked for.
        requested: usize,
        /// Sequence ids free at that moment (see `Session::free_branch_slots`).
        free: usize,
    },
    /// Forking deeper than the session's nesting limit.
    DepthLimit {
        /// The session's `max_depth`: nesting levels a fork may reach.
        limit: usize,
    },
    /// The operation is not valid in the session's current state (e.g. join with no open block).
    InvalidState(String),
    /// The KV cache has no free cell for the next step; what was generated so far is kept.
    KvCacheFull,
    /// The caller's callback asked to stop.
    Cancelled,
    /// llama_decode failed for another reason (its return code).
    Decode(i32),
    /// A bug in pardec (a caught panic, a broken invariant).
    Internal(String),
    /// A GGUF file that is not a LoRA adapter (`general.type`/`adapter.type`), or a malformed one.
    NotAdapter(String),
    /// A LoRA adapter made for another model: another architecture, a tensor the model lacks,
    /// or a shape that does not fit.
    AdapterMismatch(String),
    /// An RPC server (`ModelParams::rpc_servers`) cannot be reached or was lost, or this build
    /// has no RPC backend. Lost mid-generation, the text so far is kept.
    Rpc(String),
}

/// The result of every fallible pardec call: `Ok`, or an [`Error`] saying what went wrong.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Backend(m) => write!(f, "backend: {m}"),
            Error::ModelNotFound(m) => write!(f, "model not found: {m}"),
            Error::NotGguf(m) => write!(f, "not a GGUF file: {m}"),
            Error::ModelLoad(m) => write!(f, "model failed to load: {m}"),
            Error::UnsupportedModel(m) => write!(f, "unsupported model: {m}"),
            Error::Context(m) => write!(f, "context creation failed: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::InvalidUtf8(m) => write!(f, "invalid UTF-8: {m}"),
            Error::EmptyPrompt => write!(f, "the prompt is empty (it tokenizes to no tokens)"),
            Error::PromptTooLong { tokens, n_ctx } => {
                write!(f, "the prompt needs at least {tokens} cells but the context holds only {n_ctx}")
            }
            Error::EmptyBranchPrefix { branch } => {
                write!(f, "the prefix of branch {branch} tokenizes to no tokens")
            }
            Error::TooManyBranches { requested, free } => write!(
                f,
                "{requested} branches requested but only {free} sequence ids are free \
                 (raise max_branches in the session params)"
            ),
            Error::DepthLimit { limit } => {
                write!(f, "nesting deeper than the session's limit of {limit} levels")
            }
            Error::InvalidState(m) => write!(f, "invalid state: {m}"),
            Error::KvCacheFull => write!(
                f,
                "the KV cache is full: generation stopped, the text so far is kept \
                 (raise n_ctx, or join/discard branches to free cells)"
            ),
            Error::Cancelled => write!(f, "cancelled by the caller"),
            Error::Decode(code) => write!(f, "llama_decode failed with code {code}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
            Error::NotAdapter(m) => write!(f, "not a LoRA adapter: {m}"),
            Error::AdapterMismatch(m) => write!(f, "adapter does not fit the model: {m}"),
            Error::Rpc(m) => write!(f, "RPC: {m}"),
        }
    }
}

impl Error {
    /// Whether a generation that failed with this error had begun and kept what it wrote: the
    /// KV cache filled, the caller cancelled, a decode failed or an RPC server was lost. The
    /// session's transcript then holds the partial output, and a report of what the
    /// generation did is still worth giving. Every other error is raised before anything is
    /// generated.
    pub fn keeps_partial_output(&self) -> bool {
        matches!(self, Error::KvCacheFull | Error::Cancelled | Error::Decode(_) | Error::Rpc(_))
    }
}

impl std::error::Error for Error {}
