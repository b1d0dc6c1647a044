//! Parameter structs passed from C, their defaults, and their conversion to the Rust types.
//!
//! Every input struct starts with `size_t struct_size`, set by its `_default` function: the
//! struct can then grow (fields are only ever appended) without breaking callers built against
//! an older header. Enum-valued fields are plain integers, because a C caller can put any value
//! in them and an out-of-range Rust enum would be undefined behaviour; they are checked here.

use std::ffi::c_char;
use std::mem::size_of;

use super::boundary::{
    array_arg, c_string, guard, opt_str_arg, out_arg, read_versioned, str_arg, write_versioned, FfiError, FfiResult,
    Versioned,
};
use super::status::pardec_status;
use crate::{Grammar, KvType, ModelParams, RunLimits, SamplingParams, Selection, SessionParams};

/// Most stop strings in one `pardec_run_limits`.
pub const PARDEC_MAX_STOP_STRINGS: usize = 64;
/// Most banned token ids in one `pardec_run_limits`.
pub const PARDEC_MAX_BANNED_TOKENS: usize = 1 << 20;

/// How to load a model. Get defaults from `pardec_model_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_model_params {
    /// `sizeof(pardec_model_params)` of the header the caller was built with.
    pub struct_size: usize,
    /// Layers to offload to the GPU; -1: llama.cpp's default (all layers when a GPU backend
    /// is compiled in, or RPC servers are named). Ignored by CPU builds without servers.
    pub n_gpu_layers: i32,
    /// RPC servers to put the layers on, `"host:port,host:port"` (NULL or empty: none). Needs
    /// a build with the RPC backend; an unreachable server fails the load with RPC.
    pub rpc_servers: *const c_char,
}

/// `sizeof(pardec_model_params)` before `rpc_servers` was appended (0.1 to 0.5).
const MODEL_PARAMS_V1_SIZE: usize = std::mem::offset_of!(pardec_model_params, rpc_servers);

impl Versioned for pardec_model_params {
    const NAME: &'static str = "pardec_model_params";
    const SIZES: &'static [usize] = &[MODEL_PARAMS_V1_SIZE, size_of::<pardec_model_params>()];
}

impl Default for pardec_model_params {
    fn default() -> Self {
        let rust = ModelParams::default();
        pardec_model_params {
            struct_size: size_of::<Self>(),
            n_gpu_layers: rust.n_gpu_layers.map_or(-1, |n| n.min(i32::MAX as u32) as i32),
            rpc_servers: std::ptr::null(),
        }
    }
}

impl pardec_model_params {
    /// # Safety
    /// `rpc_servers` is NULL or a NUL-terminated string.
    pub(crate) unsafe fn to_rust(self) -> FfiResult<ModelParams> {
        let n_gpu_layers = match self.n_gpu_layers {
            -1 => None,
            n if n >= 0 => Some(n as u32),
            n => return Err(FfiError::invalid(format!("n_gpu_layers {n}: use -1 for the default or a count >= 0"))),
        };
        let rpc_servers = match opt_str_arg(self.rpc_servers, "rpc_servers")? {
            None | Some("") => Vec::new(),
            Some(list) => crate::rpc::parse_servers(list)?,
        };
        Ok(ModelParams { n_gpu_layers, rpc_servers })
    }
}

/// KV cache precision (the `kv_type` field of `pardec_session_params`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_kv_type {
    /// Half-precision keys and values: the default, half the memory of F32.
    F16 = 0,
    /// Exact keys and values (for equivalence tests).
    F32 = 1,
}

/// How a session picks tokens. `temperature <= 0` (or below 1e-20) is greedy (argmax), fully
/// deterministic.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_sampling_params {
    /// Softmax temperature; must be finite. 0 (the default) or below is greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: u32,
    /// Keep the smallest set whose probability reaches p (1.0: off).
    pub top_p: f32,
    /// Drop tokens below min_p times the top probability (0.0: off).
    pub min_p: f32,
    /// Seed of the random streams; each branch derives its own from this and its path in the
    /// fork tree, so results do not depend on batching or thread timing.
    pub seed: u64,
}

impl pardec_sampling_params {
    /// `base` with these sampling choices (temperature, top-k/p, min-p, seed); the rest of
    /// `base` (penalties, biases) stays.
    pub(crate) fn over(&self, base: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
            ..base
        }
    }
}

/// A `logprobs` field: -1 records none, n >= 0 that many alternatives per token (the engine
/// checks the upper bound).
pub(crate) fn logprobs_arg(n: i32) -> FfiResult<Option<usize>> {
    match n {
        -1 => Ok(None),
        n if n >= 0 => Ok(Some(n as usize)),
        n => Err(FfiError::invalid(format!("logprobs {n}: use -1 (off) or a count >= 0"))),
    }
}

/// How a session's context is made. Get defaults from `pardec_session_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_session_params {
    /// `sizeof(pardec_session_params)` of the header the caller was built with.
    pub struct_size: usize,
    /// KV cells shared by the trunk and all branches.
    pub n_ctx: u32,
    /// Most tokens per llama_decode call (larger steps are split).
    pub n_batch: u32,
    /// Most branches alive at once, all nesting levels together (1..=255).
    pub max_branches: u32,
    /// Most nesting levels (1: branches cannot fork).
    pub max_depth: u32,
    /// CPU threads for this session (0: all cores).
    pub n_threads: u32,
    /// A `pardec_kv_type` value.
    pub kv_type: u32,
    /// Flash attention: -1 lets llama.cpp decide, 0 off, 1 on.
    pub flash_attn: i32,
    /// How the trunk and every branch pick tokens (default greedy), for the session's whole
    /// life; each branch draws from its own random stream, derived from `sampling.seed`.
    pub sampling: pardec_sampling_params,
    /// Where tokens are chosen: 0 on the host from full logit rows (exact for every sampler);
    /// n > 0 on the backend (GPU), which hands the host each row's n best candidates — the
    /// same tokens for greedy and top_k <= n. Appended in 0.2; older callers get 0.
    pub device_candidates: u32,
    /// llama.cpp's repetition penalty (1.0: off; > 0) over each node's penalty window: a
    /// windowed token's logit is divided by it when positive, multiplied when not. The window
    /// is the last `penalty_last_n` tokens the node sees (a branch: its parent's at the fork,
    /// then its own; never a sibling's). Appended in 0.5, as are the fields below.
    pub repeat_penalty: f32,
    /// Subtracted from a windowed token's logit per occurrence (0: off).
    pub frequency_penalty: f32,
    /// Subtracted once from every windowed token's logit (0: off).
    pub presence_penalty: f32,
    /// Penalty window length: 0 turns penalties off, -1 is the whole context (default 64).
    pub penalty_last_n: i32,
    /// Biases added to logits before anything else (-INFINITY bans a token); may be NULL
    /// when `n_logit_bias` is 0. Read during `pardec_session_new` only. Penalties and biases
    /// need host selection (`device_candidates` 0).
    pub logit_bias: *const pardec_logit_bias,
    /// Entries of `logit_bias` (at most PARDEC_MAX_LOGIT_BIASES).
    pub n_logit_bias: usize,
    /// Log-probabilities: -1 (the default) records none; n in 0..=PARDEC_MAX_TOP_LOGPROBS
    /// records every generated token's log-probability under the model (log-softmax of the
    /// raw logits) and its step's n most likely tokens, in TOKEN events and in results
    /// (`pardec_result_logprobs`). Needs host selection. Appended in 0.5 (after the biases).
    pub logprobs: i32,
}

/// Most alternatives per token `pardec_session_params.logprobs` may ask for.
pub const PARDEC_MAX_TOP_LOGPROBS: usize = 100;
// A literal above so cbindgen writes the #define; the library's own limit must be the same.
const _: () = assert!(PARDEC_MAX_TOP_LOGPROBS == crate::MAX_TOP_LOGPROBS);

/// One entry of `pardec_session_params.logit_bias`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_logit_bias {
    /// A token id of the model's vocabulary.
    pub token: i32,
    /// Added to its logit: finite, or -INFINITY to ban it.
    pub bias: f32,
}

/// Most entries in `pardec_session_params.logit_bias`.
pub const PARDEC_MAX_LOGIT_BIASES: usize = 1 << 20;

/// `sizeof(pardec_session_params)` before `device_candidates` was appended.
const SESSION_PARAMS_V1_SIZE: usize = std::mem::offset_of!(pardec_session_params, device_candidates);
/// `sizeof(pardec_session_params)` before the penalties were appended (0.2 to 0.4).
const SESSION_PARAMS_V2_SIZE: usize = std::mem::offset_of!(pardec_session_params, repeat_penalty);
/// `sizeof(pardec_session_params)` before `logprobs` was appended (0.5 with penalties only;
/// the padding after `n_logit_bias` is none, so the offset is the old size).
const SESSION_PARAMS_V3_SIZE: usize = std::mem::offset_of!(pardec_session_params, logprobs);

impl Versioned for pardec_session_params {
    const NAME: &'static str = "pardec_session_params";
    const SIZES: &'static [usize] =
        &[SESSION_PARAMS_V1_SIZE, SESSION_PARAMS_V2_SIZE, SESSION_PARAMS_V3_SIZE, size_of::<pardec_session_params>()];
}

impl Default for pardec_session_params {
    fn default() -> Self {
        let SessionParams {
            n_ctx,
            n_batch,
            max_branches,
            max_depth,
            n_threads,
            kv_type,
            flash_attn,
            sampling,
            selection,
            ..
        } = SessionParams::default();
        pardec_session_params {
            struct_size: size_of::<Self>(),
            n_ctx,
            n_batch,
            max_branches,
            max_depth,
            n_threads,
            kv_type: match kv_type {
                KvType::F16 => pardec_kv_type::F16 as u32,
                KvType::F32 => pardec_kv_type::F32 as u32,
            },
            flash_attn: match flash_attn {
                None => -1,
                Some(false) => 0,
                Some(true) => 1,
            },
            sampling: pardec_sampling_params {
                temperature: sampling.temperature,
                top_k: sampling.top_k.min(u32::MAX as usize) as u32,
                top_p: sampling.top_p,
                min_p: sampling.min_p,
                seed: sampling.seed,
            },
            device_candidates: match selection {
                Selection::Host => 0,
                Selection::Device { candidates } => candidates,
            },
            repeat_penalty: sampling.repeat_penalty,
            frequency_penalty: sampling.frequency_penalty,
            presence_penalty: sampling.presence_penalty,
            penalty_last_n: sampling.penalty_last_n,
            logit_bias: std::ptr::null(),
            n_logit_bias: 0,
            logprobs: -1,
        }
    }
}

impl pardec_session_params {
    /// # Safety
    /// `logit_bias` is NULL or points to `n_logit_bias` entries (when within the limit).
    pub(crate) unsafe fn to_rust(self) -> FfiResult<SessionParams> {
        let biases = array_arg(self.logit_bias, self.n_logit_bias, PARDEC_MAX_LOGIT_BIASES, "logit_bias")?;
        let kv_type = match self.kv_type {
            x if x == pardec_kv_type::F16 as u32 => KvType::F16,
            x if x == pardec_kv_type::F32 as u32 => KvType::F32,
            x => return Err(FfiError::invalid(format!("kv_type {x} is not a pardec_kv_type"))),
        };
        let flash_attn = match self.flash_attn {
            -1 => None,
            0 => Some(false),
            1 => Some(true),
            x => return Err(FfiError::invalid(format!("flash_attn {x}: use -1, 0 or 1"))),
        };
        let logprobs = logprobs_arg(self.logprobs)?;
        Ok(SessionParams {
            n_ctx: self.n_ctx,
            n_batch: self.n_batch,
            max_branches: self.max_branches,
            max_depth: self.max_depth,
            n_threads: self.n_threads,
            kv_type,
            flash_attn,
            sampling: self.sampling.over(SamplingParams {
                repeat_penalty: self.repeat_penalty,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                penalty_last_n: self.penalty_last_n,
                logit_bias: biases.iter().map(|b| (b.token, b.bias)).collect(),
                ..SamplingParams::default()
            }),
            selection: match self.device_candidates {
                0 => Selection::Host,
                candidates => Selection::Device { candidates },
            },
            logprobs,
            ..SessionParams::default()
        })
    }
}

/// Limits of one generation run: the trunk's (`pardec_session_generate`) or each branch's
/// (`pardec_session_fork`). Get defaults from `pardec_run_limits_default()`. The arrays are
/// only read during the call they are passed to.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_run_limits {
    /// `sizeof(pardec_run_limits)` of the header the caller was built with.
    pub struct_size: usize,
    /// Most tokens to sample (default 256).
    pub max_tokens: u32,
    /// Stop when any of these UTF-8 strings appears in the run's text (the token completing
    /// it is kept). `n_stop` entries, none NULL; may be NULL when `n_stop` is 0. A stop may
    /// begin in text forced right before the run (a branch prefix) and end in it. A stop of
    /// whitespace only ("\n") matches only once the run has written something else than
    /// whitespace (a point starting on a new line has not ended); "" never matches.
    pub stop: *const *const c_char,
    /// Number of stop strings (at most PARDEC_MAX_STOP_STRINGS).
    pub n_stop: usize,
    /// Never sample an end-of-generation token.
    pub ban_eog: bool,
    /// Token ids never to sample; may be NULL when `n_banned_tokens` is 0.
    pub banned_tokens: *const i32,
    /// Number of banned tokens (at most PARDEC_MAX_BANNED_TOKENS).
    pub n_banned_tokens: usize,
    /// `pardec_session_generate` returns its text without the stop string that ended the run
    /// (the session keeps every token). Appended in 0.5; older callers get false.
    pub strip_stop: bool,
    /// GBNF grammar (llama.cpp's format) the run's sampled tokens must follow, or NULL;
    /// `pardec_grammar_json_object()` gives one for a single JSON object. A branch forked
    /// with NULL continues a copy of its parent's grammar state, if the parent's run had one.
    /// Needs host selection. Appended in 0.5, as is `grammar_root`.
    pub grammar: *const c_char,
    /// The grammar's start rule; NULL means "root".
    pub grammar_root: *const c_char,
}

/// `sizeof(pardec_run_limits)` before `strip_stop` was appended.
const RUN_LIMITS_V1_SIZE: usize = std::mem::offset_of!(pardec_run_limits, strip_stop);

impl Versioned for pardec_run_limits {
    const NAME: &'static str = "pardec_run_limits";
    const SIZES: &'static [usize] = &[RUN_LIMITS_V1_SIZE, size_of::<pardec_run_limits>()];
}

/// The default token budget of a run. (Rust's `RunLimits::default()` has 0, which generates
/// nothing: a C caller who only sets the stop strings should still get text.)
const DEFAULT_MAX_TOKENS: u32 = 256;

impl Default for pardec_run_limits {
    fn default() -> Self {
        pardec_run_limits {
            struct_size: size_of::<Self>(),
            max_tokens: DEFAULT_MAX_TOKENS,
            stop: std::ptr::null(),
            n_stop: 0,
            ban_eog: false,
            banned_tokens: std::ptr::null(),
            n_banned_tokens: 0,
            strip_stop: false,
            grammar: std::ptr::null(),
            grammar_root: std::ptr::null(),
        }
    }
}

/// Reads `n` UTF-8 stop strings (at most PARDEC_MAX_STOP_STRINGS; `p` may be NULL when `n`
/// is 0).
///
/// # Safety
/// `p` is NULL or points to `n` pointers, each NULL or a NUL-terminated string.
pub(crate) unsafe fn stop_strings_arg(p: *const *const c_char, n: usize, what: &str) -> FfiResult<Vec<String>> {
    let stops = array_arg(p, n, PARDEC_MAX_STOP_STRINGS, what)?;
    stops.iter().enumerate().map(|(i, &s)| str_arg(s, &format!("{what}[{i}]")).map(str::to_owned)).collect()
}

/// Reads optional run limits (NULL: the defaults) into the Rust type.
///
/// # Safety
/// `p` is NULL or a valid `pardec_run_limits` whose arrays hold their counts.
pub(crate) unsafe fn run_limits_arg(p: *const pardec_run_limits) -> FfiResult<RunLimits> {
    let limits =
        if p.is_null() { pardec_run_limits::default() } else { read_versioned(p, pardec_run_limits::default())? };
    let stop = stop_strings_arg(limits.stop, limits.n_stop, "run_limits.stop")?;
    let banned =
        array_arg(limits.banned_tokens, limits.n_banned_tokens, PARDEC_MAX_BANNED_TOKENS, "run_limits.banned_tokens")?;
    Ok(RunLimits {
        max_tokens: limits.max_tokens as usize,
        stop,
        ban_eog: limits.ban_eog,
        banned_tokens: banned.to_vec(),
        strip_stop: limits.strip_stop,
        grammar: match opt_str_arg(limits.grammar, "run_limits.grammar")? {
            None => None,
            Some(gbnf) => Some(Grammar {
                gbnf: gbnf.to_owned(),
                root: opt_str_arg(limits.grammar_root, "run_limits.grammar_root")?.unwrap_or("root").to_owned(),
            }),
        },
    })
}

/// Fills `out` with the default model parameters. Pass `sizeof(pardec_model_params)` as
/// `struct_size`; it is stored in `out->struct_size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_model_params_default(
    out: *mut pardec_model_params,
    struct_size: usize,
) -> pardec_status {
    guard(|| {
        let value = pardec_model_params { struct_size, ..Default::default() };
        write_versioned(out, &value, struct_size)
    })
}

/// Fills `out` with the default session parameters (4096-cell context, greedy sampling, ...).
/// Pass `sizeof(pardec_session_params)` as `struct_size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_session_params_default(
    out: *mut pardec_session_params,
    struct_size: usize,
) -> pardec_status {
    guard(|| {
        let value = pardec_session_params { struct_size, ..Default::default() };
        write_versioned(out, &value, struct_size)
    })
}

/// Fills `out` with the default run limits (256 tokens, no stop strings, nothing banned).
/// Pass `sizeof(pardec_run_limits)` as `struct_size`.
///
/// Errors: NULL_ARGUMENT, STRUCT_SIZE.
#[no_mangle]
pub unsafe extern "C" fn pardec_run_limits_default(out: *mut pardec_run_limits, struct_size: usize) -> pardec_status {
    guard(|| {
        let value = pardec_run_limits { struct_size, ..Default::default() };
        write_versioned(out, &value, struct_size)
    })
}

/// A GBNF grammar for exactly one JSON object (RFC 8259, bounded whitespace), for
/// `pardec_run_limits.grammar`. A static string: do not free it.
#[no_mangle]
pub extern "C" fn pardec_grammar_json_object() -> *const c_char {
    static JSON: once_cell::sync::Lazy<std::ffi::CString> =
        once_cell::sync::Lazy::new(|| std::ffi::CString::new(crate::Grammar::json_object().gbnf).unwrap_or_default());
    JSON.as_ptr()
}

/// Converts a JSON Schema (its JSON text) into a GBNF grammar for `pardec_run_limits.grammar`,
/// as llama.cpp converts one (its `json_schema_to_grammar`, which llama-server applies to a
/// `json_schema`). `*out_gbnf` receives a new string to release with `pardec_string_free`.
///
/// Errors: NULL_ARGUMENT, INVALID_UTF8, INVALID_ARGUMENT (not JSON, or a schema llama.cpp
/// cannot convert; `pardec_last_error()` says which), INVALID_STATE (a libpardec built
/// without the `json-schema` feature).
///
/// # Safety
/// `schema` is NULL or a NUL-terminated string; `out_gbnf` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pardec_grammar_from_json_schema(
    schema: *const c_char,
    out_gbnf: *mut *mut c_char,
) -> pardec_status {
    guard(|| {
        let schema = str_arg(schema, "schema")?;
        let out = out_arg(out_gbnf, "out_gbnf")?;
        let gbnf = json_schema_gbnf(schema)?;
        *out = c_string(&gbnf).into_raw();
        Ok(())
    })
}

#[cfg(feature = "json-schema")]
fn json_schema_gbnf(schema: &str) -> FfiResult<String> {
    Ok(Grammar::json_schema(schema)?.gbnf)
}

#[cfg(not(feature = "json-schema"))]
fn json_schema_gbnf(_schema: &str) -> FfiResult<String> {
    Err(FfiError::new(pardec_status::InvalidState, "this libpardec was built without the json-schema feature".into()))
}
