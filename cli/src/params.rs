//! From arguments to what the library takes: the model (`--model`, `--n-gpu-layers`, `--rpc`)
//! and its adapters (`--lora`), sampling, the one constructor of every command's
//! `SessionParams` (`SessionArgs`), auto mode's parameters, and protocols by name or file.

use std::path::PathBuf;

use pardec::auto::sot::SotParams;
use pardec::auto::AutoParams;
use pardec::protocol::ProtocolSpec;
use pardec::{Adapter, Error, Model, ModelParams, SamplingParams, Selection, SessionParams};

use crate::args::{LoraArg, ModelOpts, RunArgs, SamplingOpts};
use crate::error::{usage, CliError, CliResult};
use crate::output::progress;

pub(crate) fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PARDEC_MODEL") {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("PARDEC_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("pardec").join("models")
    });
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Loads the model; `announce`: say so on stderr in both progress modes (long commands).
pub(crate) fn load_model(opts: &ModelOpts, announce: bool) -> CliResult<Model> {
    let path = opts.model.clone().unwrap_or_else(default_model_path);
    if opts.model.is_none() && !path.exists() {
        return Err(CliError::Pardec(Error::ModelNotFound(format!(
            "{} (run scripts/fetch-models.sh, or pass --model / set PARDEC_MODEL)",
            path.display()
        ))));
    }
    let msg = format!("loading {}", path.display());
    if announce {
        progress::phase(&msg);
    } else {
        progress::tick(|| msg);
    }
    let params = ModelParams { n_gpu_layers: opts.n_gpu_layers, rpc_servers: opts.rpc_servers() };
    let model = Model::load(&path, &params);
    progress::clear();
    Ok(model?)
}

/// Every `--lora`, loaded for `model`.
pub(crate) fn adapters(loras: &[LoraArg], model: &Model) -> CliResult<Vec<(Adapter, f32)>> {
    loras.iter().map(|l| Ok((Adapter::load(model, &l.path)?, l.scale))).collect()
}

impl SamplingOpts {
    pub(crate) fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.penalty_last_n,
            logit_bias: self.logit_bias.clone(),
        }
    }
}

/// The session options a command reads from its arguments. `SessionArgs::params` is where the
/// commands' `SessionParams` are made (run, run --protocol, score, equiv, bench --peer): an
/// option the command does not have is `None` (or no adapters) and gets the library's default,
/// and what else differs between commands (context size, branch count; peer's batch and greedy
/// sampling) each call site sets explicitly over it. `bench` is the exception: it sets its
/// options on the library's own bench session (`BenchParams::session`), which `--rpc-cost`
/// needs before any model is loaded.
pub(crate) struct SessionArgs<'a> {
    /// `--threads` (0: all cores).
    pub(crate) threads: u32,
    /// `--lora`, loaded for the model.
    pub(crate) lora: &'a [LoraArg],
    /// The sampling options and `--logprobs`; `None`: greedy, no log-probabilities.
    pub(crate) sampling: Option<&'a SamplingOpts>,
    /// `--selection`; `None`: host.
    pub(crate) selection: Option<Selection>,
}

impl SessionArgs<'_> {
    /// The session's parameters for `model` (which the adapters are loaded for).
    pub(crate) fn params(&self, model: &Model) -> CliResult<SessionParams> {
        Ok(SessionParams {
            n_threads: self.threads,
            sampling: self.sampling.map_or_else(SamplingParams::default, SamplingOpts::params),
            selection: self.selection.unwrap_or(Selection::Host),
            adapters: adapters(self.lora, model)?,
            logprobs: self.sampling.and_then(|s| s.logprobs),
            ..Default::default()
        })
    }
}

impl RunArgs {
    /// `pardec run`'s session options: every one of them (with branches and with --protocol).
    pub(crate) fn session_args(&self) -> SessionArgs<'_> {
        SessionArgs {
            threads: self.threads,
            lora: &self.lora,
            sampling: Some(&self.sampling),
            selection: self.selection,
        }
    }

    /// Auto mode's budgets, response prefix and trunk stops (`run --protocol`).
    pub(crate) fn auto_params(&self) -> AutoParams {
        AutoParams {
            max_tokens: self.max_tokens.unwrap_or(256),
            max_branch_tokens: self.max_branch_tokens.unwrap_or(96),
            response_prefix: self.response_prefix.clone().unwrap_or_default(),
            stop: self.stops.clone(),
            ..Default::default()
        }
    }

    /// Skeleton-of-Thought's budgets (`run --protocol sot`): --max-tokens is the skeleton's
    /// budget (the trunk's part); points get --max-branch-tokens, as `auto` has it.
    pub(crate) fn sot_params(&self, auto: &AutoParams) -> SotParams {
        SotParams { skeleton_tokens: self.max_tokens.unwrap_or(120), point_tokens: auto.max_branch_tokens }
    }
}

/// A protocol by built-in name, or a JSON file describing one.
pub(crate) enum ProtocolChoice {
    Stream(Box<ProtocolSpec>),
    Apr,
    Sot,
}

pub(crate) fn protocol_choice(name: &str) -> CliResult<ProtocolChoice> {
    match name {
        "apr" => return Ok(ProtocolChoice::Apr),
        "sot" => return Ok(ProtocolChoice::Sot),
        _ => {}
    }
    if let Some(spec) = ProtocolSpec::builtin(name) {
        return Ok(ProtocolChoice::Stream(Box::new(spec)));
    }
    let path = std::path::Path::new(name);
    if path.is_file() {
        let json =
            std::fs::read_to_string(path).map_err(|e| Error::InvalidArgument(format!("protocol file {name}: {e}")))?;
        let spec =
            ProtocolSpec::from_json(&json).map_err(|e| Error::InvalidArgument(format!("protocol file {name}: {e}")))?;
        return Ok(ProtocolChoice::Stream(Box::new(spec)));
    }
    Err(usage(format!(
        "unknown protocol {name:?}: use one of {}, apr, sot, or a JSON file",
        ProtocolSpec::builtin_names().join(", ")
    )))
}

pub(crate) fn stream_spec(name: &str) -> CliResult<ProtocolSpec> {
    match protocol_choice(name)? {
        ProtocolChoice::Stream(spec) => Ok(*spec),
        _ => Err(usage(format!("{name} has no tagged text layout: use a stream protocol"))),
    }
}
