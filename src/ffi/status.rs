//! Status codes: what every fallible C function returns.

use crate::error::Error;

/// The result of a fallible pardec call. `PARDEC_STATUS_OK` (0) is success; everything else
/// is an error, described by `pardec_status_str()` and, in detail, by `pardec_last_error()`.
///
/// The numeric values are part of the ABI and never change; new codes are only appended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// An argument is out of range or inconsistent (zero or huge counts, unknown enum value,
    /// unknown node, ...).
    InvalidArgument = 3,
    /// A struct's size (`struct_size` field or size argument) is not one this library knows:
    /// the header and the library do not match.
    StructSize = 4,
    /// An index past the end (block or branch of a result).
    OutOfRange = 5,
    /// The session is in use: a call from inside one of its own callbacks, or from a second
    /// thread at the same time.
    Busy = 6,
    /// llama.cpp's backend could not start.
    Backend = 7,
    /// The model or adapter file does not exist or cannot be read.
    ModelNotFound = 8,
    /// The file is not a GGUF file.
    NotGguf = 9,
    /// llama.cpp could not load the model (unknown architecture, corrupt file, ...).
    ModelLoad = 10,
    /// The model loads but cannot be forked and joined (recurrent or hybrid architecture), or
    /// lacks what the call needs (e.g. a chat template).
    UnsupportedModel = 11,
    /// llama.cpp could not create a context with these session parameters.
    Context = 12,
    /// The prompt tokenizes to no tokens.
    EmptyPrompt = 13,
    /// The prompt does not fit into the context.
    PromptTooLong = 14,
    /// A non-empty branch prefix tokenizes to no tokens.
    EmptyBranchPrefix = 15,
    /// More branches than free sequence slots (raise `max_branches`).
    TooManyBranches = 16,
    /// Forking deeper than `max_depth`.
    DepthLimit = 17,
    /// The call is not valid in the session's state (e.g. join with no open block, generate
    /// while a block is open).
    InvalidState = 18,
    /// The KV cache is full; what was generated so far is kept.
    KvCacheFull = 19,
    /// The callback returned false. The session stays usable.
    Cancelled = 20,
    /// llama_decode failed (see `pardec_last_error()` for its code).
    Decode = 21,
    /// A bug in pardec.
    Internal = 22,
    /// pardec panicked; the panic was caught. A session that panicked refuses further calls
    /// with this status (free it).
    Panic = 23,
    /// The GGUF file is not a LoRA adapter (or a malformed one).
    NotAdapter = 24,
    /// The LoRA adapter was made for another model (architecture, tensor names or shapes).
    AdapterMismatch = 25,
    /// An RPC server cannot be reached or was lost mid-generation (the text so far is kept),
    /// or this build has no RPC backend.
    Rpc = 26,
}

impl From<&Error> for pardec_status {
    fn from(e: &Error) -> Self {
        // Exhaustive on purpose: a new error variant needs its own status (an ABI decision).
        match e {
            Error::Backend(_) => pardec_status::Backend,
            Error::ModelNotFound(_) => pardec_status::ModelNotFound,
            Error::NotGguf(_) => pardec_status::NotGguf,
            Error::ModelLoad(_) => pardec_status::ModelLoad,
            Error::UnsupportedModel(_) => pardec_status::UnsupportedModel,
            Error::Context(_) => pardec_status::Context,
            Error::InvalidArgument(_) => pardec_status::InvalidArgument,
            Error::InvalidUtf8(_) => pardec_status::InvalidUtf8,
            Error::EmptyPrompt => pardec_status::EmptyPrompt,
            Error::PromptTooLong { .. } => pardec_status::PromptTooLong,
            Error::EmptyBranchPrefix { .. } => pardec_status::EmptyBranchPrefix,
            Error::TooManyBranches { .. } => pardec_status::TooManyBranches,
            Error::DepthLimit { .. } => pardec_status::DepthLimit,
            Error::InvalidState(_) => pardec_status::InvalidState,
            Error::KvCacheFull => pardec_status::KvCacheFull,
            Error::Cancelled => pardec_status::Cancelled,
            Error::Decode(_) => pardec_status::Decode,
            Error::Internal(_) => pardec_status::Internal,
            Error::NotAdapter(_) => pardec_status::NotAdapter,
            Error::AdapterMismatch(_) => pardec_status::AdapterMismatch,
            Error::Rpc(_) => pardec_status::Rpc,
        }
    }
}

/// Every status with its name and description, indexed by value (checked by a unit test).
pub(crate) const STATUS_TABLE: &[(pardec_status, &str, &std::ffi::CStr)] = &[
    (pardec_status::Ok, "OK", c"success"),
    (pardec_status::NullArgument, "NULL_ARGUMENT", c"a required pointer argument was NULL"),
    (pardec_status::InvalidUtf8, "INVALID_UTF8", c"a string is not valid UTF-8"),
    (pardec_status::InvalidArgument, "INVALID_ARGUMENT", c"an argument is out of range or inconsistent"),
    (pardec_status::StructSize, "STRUCT_SIZE", c"unknown struct size: the header and the library do not match"),
    (pardec_status::OutOfRange, "OUT_OF_RANGE", c"index out of range"),
    (pardec_status::Busy, "BUSY", c"the session is in use (re-entrant call from a callback, or another thread)"),
    (pardec_status::Backend, "BACKEND", c"llama.cpp's backend could not start"),
    (pardec_status::ModelNotFound, "MODEL_NOT_FOUND", c"the model or adapter file does not exist or cannot be read"),
    (pardec_status::NotGguf, "NOT_GGUF", c"the file is not a GGUF file"),
    (pardec_status::ModelLoad, "MODEL_LOAD", c"llama.cpp could not load the model"),
    (pardec_status::UnsupportedModel, "UNSUPPORTED_MODEL", c"the model cannot be used this way"),
    (pardec_status::Context, "CONTEXT", c"llama.cpp could not create a context with these parameters"),
    (pardec_status::EmptyPrompt, "EMPTY_PROMPT", c"the prompt is empty"),
    (pardec_status::PromptTooLong, "PROMPT_TOO_LONG", c"the prompt does not fit into the context"),
    (pardec_status::EmptyBranchPrefix, "EMPTY_BRANCH_PREFIX", c"a branch prefix tokenizes to no tokens"),
    (pardec_status::TooManyBranches, "TOO_MANY_BRANCHES", c"more branches than free sequence slots"),
    (pardec_status::DepthLimit, "DEPTH_LIMIT", c"forking deeper than the session's max_depth"),
    (pardec_status::InvalidState, "INVALID_STATE", c"the call is not valid in the session's current state"),
    (pardec_status::KvCacheFull, "KV_CACHE_FULL", c"the KV cache is full"),
    (pardec_status::Cancelled, "CANCELLED", c"cancelled by the callback"),
    (pardec_status::Decode, "DECODE", c"llama_decode failed"),
    (pardec_status::Internal, "INTERNAL", c"internal error in pardec"),
    (pardec_status::Panic, "PANIC", c"pardec panicked (caught at the C boundary)"),
    (pardec_status::NotAdapter, "NOT_ADAPTER", c"the file is not a LoRA adapter"),
    (pardec_status::AdapterMismatch, "ADAPTER_MISMATCH", c"the LoRA adapter was made for another model"),
    (pardec_status::Rpc, "RPC", c"an RPC server cannot be reached or was lost, or this build has no RPC backend"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_value() {
        for (i, (status, _, _)) in STATUS_TABLE.iter().enumerate() {
            assert_eq!(*status as usize, i);
        }
    }
}
