//! The command line's clap types: `Cli` and its subcommands' arguments, the option groups
//! they share (model, sampling), and the parsers of their values. What the arguments become
//! for the library is in `params`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pardec::{Grammar, Selection, WeightFormat};

/// The usage line in lower case, as pardec has always printed it.
const HELP_TEMPLATE: &str = "{before-help}{about-with-newline}\nusage: {usage}\n\n{all-args}{after-help}";

pub(crate) fn version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| format!("{} (library pardec {}, {})", env!("CARGO_PKG_VERSION"), pardec::VERSION, backend()))
}

/// The llama.cpp backend this binary was built with.
fn backend() -> &'static str {
    if cfg!(feature = "cuda") {
        "CUDA build"
    } else if cfg!(feature = "metal") {
        "Metal build"
    } else if cfg!(feature = "vulkan") {
        "Vulkan build"
    } else if cfg!(feature = "dynamic-link") {
        "llama.cpp linked dynamically"
    } else {
        "CPU build"
    }
}

const GPU_BUILD: bool = cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan", feature = "dynamic-link"));

const N_GPU_LAYERS_HELP: &str = if GPU_BUILD {
    "Layers to offload to the GPU and the --rpc servers (default: llama.cpp's choice, all \
     layers with a GPU backend or servers)"
} else {
    "Layers to put on the --rpc servers (default: all). Without --rpc it has no effect in this \
     CPU build (build with --features cuda, metal or vulkan)"
};

#[derive(Parser)]
#[command(
    name = "pardec",
    version = version(),
    propagate_version = true,
    help_template = HELP_TEMPLATE,
    subcommand_required = true,
    about = "Decode independent branches of a model's answer in parallel over a shared KV prefix",
    after_help = "\
The model defaults to $PARDEC_MODEL, else the default model fetched by scripts/fetch-models.sh
(in $PARDEC_MODEL_DIR, else ~/.cache/pardec/models). `pardec COMMAND --help` for each command."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

// RunArgs is much larger than the other commands' arguments; the value is made once per
// process, so its size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    Run(RunArgs),
    Bench(BenchArgs),
    Layout(LayoutArgs),
    Check(CheckArgs),
    Score(ScoreArgs),
    Equiv(EquivArgs),
    Convert(ConvertArgs),
    Merge(MergeArgs),
    RpcServer(RpcServerArgs),
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
pub(crate) struct ModelOpts {
    /// The GGUF model file [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    // Negative numbers are taken as the value, so `-1` is refused by name rather than read as
    // an unknown flag.
    #[arg(long, value_name = "N", help = N_GPU_LAYERS_HELP, allow_negative_numbers = true)]
    pub(crate) n_gpu_layers: Option<u32>,
    /// RPC servers to put the model's layers on, each running `pardec rpc-server`; layers are
    /// split as llama.cpp splits them (needs a build with GGML_RPC=ON)
    #[arg(long, value_name = "HOST:PORT,...", value_parser = parse_rpc_servers)]
    pub(crate) rpc: Option<RpcServers>,
}

/// The servers of `--rpc`.
#[derive(Clone)]
pub(crate) struct RpcServers(Vec<String>);

impl ModelOpts {
    /// The servers of `--rpc`, none without it.
    pub(crate) fn rpc_servers(&self) -> Vec<String> {
        self.rpc.as_ref().map_or_else(Vec::new, |s| s.0.clone())
    }
}

fn parse_rpc_servers(s: &str) -> Result<RpcServers, String> {
    pardec::rpc::parse_servers(s).map(RpcServers).map_err(|e| e.to_string())
}

#[derive(Args, Clone)]
pub(crate) struct SamplingOpts {
    /// Softmax temperature; 0 samples greedily
    #[arg(long, value_name = "T", default_value_t = 0.0, value_parser = finite_f32)]
    pub(crate) temp: f32,
    /// Keep only the K most likely tokens (0: off)
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off)
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = unit_f32)]
    pub(crate) top_p: f32,
    /// Drop tokens below P times the most likely token's probability (0: off)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = unit_f32)]
    pub(crate) min_p: f32,
    /// Seed of every branch's random stream (with its path in the fork tree)
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub(crate) seed: u64,
    /// llama.cpp's repetition penalty over each node's last --penalty-last-n tokens (1: off)
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = finite_f32)]
    pub(crate) repeat_penalty: f32,
    /// Lowers a recent token's logit by F per occurrence (0: off)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    pub(crate) frequency_penalty: f32,
    /// Lowers every recent token's logit by P once (0: off)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    pub(crate) presence_penalty: f32,
    /// Tokens the penalties look back on (0: off, -1: the whole context)
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true)]
    pub(crate) penalty_last_n: i32,
    /// Add BIAS to token ID's logit, as ID=BIAS (-inf bans it); repeatable
    #[arg(long, value_name = "ID=BIAS", value_parser = logit_bias_entry)]
    pub(crate) logit_bias: Vec<(i32, f32)>,
    /// Record each generated token's log-probability and its step's N most likely tokens
    /// (in --stream --json token events, and in the --json result per branch and for the trunk)
    #[arg(long, value_name = "N")]
    pub(crate) logprobs: Option<usize>,
}

/// One `--logit-bias ID=BIAS` entry (the session checks the id against the vocabulary).
fn logit_bias_entry(s: &str) -> Result<(i32, f32), String> {
    let (id, bias) = s.split_once('=').ok_or_else(|| format!("{s:?} is not ID=BIAS"))?;
    let id = id.trim().parse::<i32>().map_err(|_| format!("{id:?} is not a token id"))?;
    let bias = match bias.trim() {
        "-inf" => f32::NEG_INFINITY,
        b => b
            .parse::<f32>()
            .ok()
            .filter(|b| b.is_finite())
            .ok_or_else(|| format!("{b:?} is not a finite bias or -inf"))?,
    };
    Ok((id, bias))
}

const SELECTION_HELP: &str = "Where tokens are chosen: host (full logit rows, exact for any sampler) or device[:K] \
     (llama.cpp keeps each row's K best logits on the backend, default 64: the same tokens for greedy and \
     --top-k <= K) [default: host]";

const LORA_HELP: &str = "Decode with a LoRA adapter of the model, at SCALE (default 1); repeatable";

/// Run a prompt with branches you give (--branch), or let the model fork (--protocol)
///
/// With --branch: the prompt is wrapped in the model's chat template (unless --raw), one branch
/// is forked per --branch (the text is its prefix), all branches decode in parallel, are
/// joined, and the trunk continues after --then (default: a newline) for --max-tokens tokens.
///
/// With --protocol the model decides when to fork: multiverse, aspd, parallel-r1,
/// threadweaver, npr, apr (sub-searches on their own prompts), sot (skeleton-of-thought: the
/// model writes a numbered skeleton of at most --max-tokens tokens, then every point is
/// expanded as a branch of at most --max-branch-tokens), or a protocol JSON file.
///
/// --stream shows the generation as it happens: on a terminal one line per branch, redrawn,
/// with the trunk's text before and after; into a pipe or file one line per event; with
/// --json one JSON object per event (kind, node, branch, text...), then the final JSON object.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    /// The user's message
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub(crate) prompt: String,
    /// A system message, before the prompt in the chat template
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true, conflicts_with = "raw")]
    pub(crate) system: Option<String>,
    /// Decode the prompt as given, without the model's chat template
    #[arg(long)]
    pub(crate) raw: bool,
    /// Fork a branch that starts with TEXT (repeatable: one branch each)
    #[arg(
        long = "branch",
        value_name = "TEXT",
        allow_hyphen_values = true,
        required_unless_present = "protocol",
        conflicts_with = "protocol"
    )]
    pub(crate) branches: Vec<String>,
    /// Text the trunk continues from after the join [default: a newline]
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true, conflicts_with = "protocol")]
    pub(crate) then: Option<String>,
    /// End a branch where it writes STR (repeatable; e.g. a newline: one line per branch)
    #[arg(long = "branch-stop", value_name = "STR", allow_hyphen_values = true, conflicts_with = "protocol")]
    pub(crate) branch_stops: Vec<String>,
    /// Every branch's sampled text follows a grammar: json (one JSON object each), a JSON Schema file (*.json) or a GBNF file whose start rule is root
    #[arg(long, value_name = "json|FILE", value_parser = parse_grammar, conflicts_with = "protocol")]
    pub(crate) branch_grammar: Option<Grammar>,
    /// The trunk's text after the join follows a grammar (as --branch-grammar)
    #[arg(long, value_name = "json|FILE", value_parser = parse_grammar, conflicts_with = "protocol")]
    pub(crate) grammar: Option<Grammar>,
    /// End the trunk's generation where it writes STR (repeatable; not with --protocol sot)
    #[arg(long = "stop", value_name = "STR", allow_hyphen_values = true)]
    pub(crate) stops: Vec<String>,
    /// Tokens the trunk may generate [default: 64; 256 with --protocol; the skeleton's budget, 120, with sot]
    #[arg(long, value_name = "N")]
    pub(crate) max_tokens: Option<usize>,
    /// Tokens each branch may generate [default: 48; 96 with --protocol]
    #[arg(long, value_name = "N")]
    pub(crate) max_branch_tokens: Option<usize>,
    /// Let the model fork: multiverse, aspd, parallel-r1, threadweaver, npr, apr, sot, or a protocol JSON file
    #[arg(long, value_name = "P")]
    pub(crate) protocol: Option<String>,
    /// Text put in the model's mouth at the start of its response (with --protocol)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub(crate) response_prefix: Option<String>,
    #[command(flatten)]
    pub(crate) sampling: SamplingOpts,
    /// KV cells of the context (all branches share them)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub(crate) ctx: u32,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    pub(crate) selection: Option<Selection>,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    pub(crate) lora: Vec<LoraArg>,
    /// Show the generation as it happens (see above)
    #[arg(long)]
    pub(crate) stream: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

/// Benchmark: the same branches decoded serially, in parallel, and with raw llama_decode
///
/// Each row decodes B branches of --tokens tokens each (EOG banned), once one after another
/// and once in one batch per step, best of --reps, next to raw llama_decode calls of the same
/// shapes (the ceiling). With --auto: auto mode with scripted Multiverse blocks versus the same
/// tokens decoded serially. Progress goes to stderr; the table (or --json) to stdout.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    /// Branch counts, comma-separated, each in 1..=255 [default: 1,2,4,8,16; 2,4,8 with --auto]
    #[arg(long, value_name = "LIST", value_parser = parse_branch_list)]
    pub(crate) branches: Option<BranchList>,
    /// Tokens each branch decodes
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive_usize)]
    pub(crate) tokens: usize,
    /// Repetitions of each measurement (the best is kept)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive_usize)]
    pub(crate) reps: usize,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    pub(crate) selection: Option<Selection>,
    #[command(flatten)]
    pub(crate) sampling: SamplingOpts,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    pub(crate) lora: Vec<LoraArg>,
    /// Auto mode with scripted Multiverse blocks versus the same tokens serially
    #[arg(long)]
    pub(crate) auto: bool,
    /// The host cost per step of each sampling feature (penalties, bias, log-probs, stops,
    /// grammar), at B = the largest of --branches [default: 16]
    #[arg(long, conflicts_with = "auto")]
    pub(crate) sampling_costs: bool,
    /// The raw batched-decode ceiling and the perplexity of the model converted to each
    /// format (comma-separated: q4_0, q4_1, q8_0, f16, bf16; converted once, beside the model)
    #[arg(long, value_name = "LIST", value_parser = parse_weight_formats, conflicts_with_all = ["auto", "sampling_costs", "lora"])]
    pub(crate) formats: Option<WeightFormats>,
    /// What the --rpc servers cost per decode step: raw steps of each B with the model here
    /// and on the servers, in one run [--branches default 1,4,16]
    #[arg(long, requires = "rpc", conflicts_with_all = ["auto", "sampling_costs", "formats", "lora", "peer"])]
    pub(crate) rpc_cost: bool,
    /// Compare with another engine on the same model: llama-server (started on 127.0.0.1;
    /// Skeleton-of-Thought points as concurrent requests vs forked over one prefix, and a
    /// serial answer; greedy; --branches default 2,4,8, --tokens per point)
    #[arg(long, value_enum, value_name = "ENGINE", conflicts_with_all = ["auto", "sampling_costs", "formats", "lora"])]
    pub(crate) peer: Option<Peer>,
    /// The llama-server binary for --peer [default: the one scripts/build-llama-server.sh caches]
    #[arg(long, value_name = "PATH", requires = "peer")]
    pub(crate) server: Option<PathBuf>,
    /// Print the results as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

/// The engines `bench --peer` compares pardec with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// llama.cpp's llama-server (scripts/build-llama-server.sh builds it)
    LlamaServer,
}

/// Write the model again in another weight format (llama.cpp's quantizer)
///
/// On a CPU the weight format decides how well a batch of branches shares each read of the
/// weights (`pardec bench --formats` measures it). The file is written beside the model, the
/// format appended to its name (a Q8_0 made from a Q4_1 keeps the Q4_1's rounding), unless
/// --out names it; an existing file is replaced. Prints the path written.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct ConvertArgs {
    /// The GGUF model file [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// The weight format: q4_0, q4_1, q8_0, f16 or bf16
    #[arg(long, value_name = "FORMAT", value_parser = parse_weight_format)]
    pub(crate) to: WeightFormat,
    /// Where to write it [default: beside the model, MODEL-STEM.FORMAT.gguf]
    #[arg(long, value_name = "PATH")]
    pub(crate) out: Option<PathBuf>,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
}

/// Write LoRA adapters into a model's weights
///
/// llama.cpp applies an adapter at run time as extra work in every decode step (a quarter to a
/// third of a step on a small CPU); merged into the weights it costs nothing, and the model
/// computes what the base model computes with the adapters at their scales. Without --to every
/// tensor keeps its type if the adapted matrices have 8 bits or more a weight (f32, f16, bf16,
/// q8_0), and the model is written in q8_0 otherwise: re-quantized to 4 bits, most of an
/// adapter's change rounds away. --to writes the model in that format with llama.cpp's
/// quantizer. An existing file is replaced. Prints the path written.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct MergeArgs {
    /// The GGUF base model [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// A LoRA adapter of the model, merged at SCALE (default 1); repeatable
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, required = true)]
    pub(crate) lora: Vec<LoraArg>,
    /// Where to write the merged model
    #[arg(long, value_name = "PATH")]
    pub(crate) out: PathBuf,
    /// The weight format: q4_0, q4_1, q8_0, f16 or bf16 [default: the model's own, or q8_0]
    #[arg(long, value_name = "FORMAT", value_parser = parse_weight_format)]
    pub(crate) to: Option<WeightFormat>,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
}

/// Serve a model over OpenAI's HTTP API: many conversations decoded in one context, each free to fork
#[derive(Args)]
#[command(
    help_template = HELP_TEMPLATE,
    args_override_self = true,
    after_help = "\
Routes: POST /v1/chat/completions and /v1/completions (OpenAI's shapes, streamed as server-sent
events with \"stream\": true), GET /v1/models, /health, /metrics (Prometheus) and / (a chat
page). A request may name a protocol of its own (\"protocol\": \"none\" or a built-in name);
the answer's `pardec` object tells how it was decoded. Binds 127.0.0.1 unless told otherwise;
with --api-key every API route needs `Authorization: Bearer KEY`. SIGTERM or Ctrl-C lets the
answers in flight finish (for up to --grace seconds, then cancels them) and exits 0."
)]
#[command(mut_arg("top_k", |a| a.default_value("40")))]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    pub(crate) lora: Vec<LoraArg>,
    /// The model forks under this protocol unless a request says otherwise: none; sot (Skeleton-of-Thought: any instruct model writes a skeleton whose points are expanded as branches of --max-branch-tokens); or multiverse, aspd, parallel-r1, threadweaver, npr, titles, ... (a built-in name or a protocol JSON file)
    #[arg(long, value_name = "P", default_value = "none")]
    pub(crate) protocol: String,
    /// Address to listen on
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub(crate) port: u16,
    /// Requests decoded at once; more wait in a queue
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) parallel: usize,
    /// Branches one request may have open at once
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) branches: usize,
    /// Finished conversations kept so that a prompt continuing one decodes only its new text
    /// (0: none) [default: --parallel]. Each keeps its cells, which every step attends over
    #[arg(long, value_name = "N")]
    pub(crate) cache_prompts: Option<usize>,
    /// KV cells of the context, shared by every request and branch
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub(crate) ctx: u32,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
    /// A request without max_tokens may generate this many tokens
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub(crate) max_tokens: usize,
    /// Tokens each branch may generate
    #[arg(long, value_name = "N", default_value_t = 96)]
    pub(crate) max_branch_tokens: usize,
    /// Requests must carry `Authorization: Bearer KEY` (default: $PARDEC_API_KEY if set)
    #[arg(long, value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// Largest request body in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub(crate) max_body: usize,
    /// Seconds the answers in flight get to finish after SIGTERM
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub(crate) grace: u64,
    /// Sampling defaults for requests that do not set them. --top-k is 40 here, as llama-server
    /// has it: sampling over the whole vocabulary sorts it for every token, which costs more
    /// than the decode step on a small model.
    #[command(flatten)]
    pub(crate) sampling: SamplingOpts,
}

/// Serve this machine to pardec clients over llama.cpp's RPC protocol (`--rpc` on their side)
#[derive(Args)]
#[command(
    help_template = HELP_TEMPLATE,
    args_override_self = true,
    after_help = "\
The protocol has no authentication or encryption: bind to 127.0.0.1 (the default) or to a
trusted network only. The server serves one client at a time and runs until stopped. Needs a
build with GGML_RPC=ON (scripts/test-rpc.sh builds one in target/rpc)."
)]
pub(crate) struct RpcServerArgs {
    /// Address to listen on
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (llama.cpp's rpc-server uses 50052 too)
    #[arg(long, value_name = "PORT", default_value_t = 50052)]
    pub(crate) port: u16,
    /// CPU threads for the layers computed on the CPU (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: usize,
    /// Keep the tensors clients send in this folder, so a model's second load is not sent again
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
}

fn parse_weight_format(s: &str) -> Result<WeightFormat, String> {
    WeightFormat::parse(s).ok_or_else(|| {
        let names: Vec<String> = WeightFormat::ALL.iter().map(|f| f.name().to_lowercase()).collect();
        format!("unknown weight format {s:?}: use one of {}", names.join(", "))
    })
}

fn parse_weight_formats(s: &str) -> Result<WeightFormats, String> {
    s.split(',').map(|f| parse_weight_format(f.trim())).collect::<Result<Vec<_>, _>>().map(WeightFormats)
}

/// `--formats`' list (a newtype: clap would read a bare Vec as a repeated flag).
#[derive(Clone)]
pub(crate) struct WeightFormats(pub(crate) Vec<WeightFormat>);

/// Position ids, branch and visible tokens of every token of a tagged text (on stdin)
///
/// As the engine decodes it: visible lists include the token itself; tokens a reprefill join
/// reads again are listed as copies. --rule train: as the protocol's own training code lays
/// it out.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct LayoutArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    /// A stream protocol: multiverse, aspd, parallel-r1, threadweaver, npr, or a protocol JSON file
    #[arg(long, value_name = "P")]
    pub(crate) protocol: String,
    /// Whose layout: the engine's or the protocol's training code's
    #[arg(long, value_enum, default_value_t = RuleArg::Engine)]
    pub(crate) rule: RuleArg,
    /// Print one JSON object (tokens, visible ranges, copies, warnings)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RuleArg {
    Engine,
    Train,
}

/// Structural errors of a tagged text (on stdin), with line numbers
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct CheckArgs {
    /// A stream protocol: multiverse, aspd, parallel-r1, threadweaver, npr, or a protocol JSON file
    #[arg(long, value_name = "P")]
    pub(crate) protocol: String,
}

/// The log-probability of each token of a continuation after a context
///
/// Natural-log probabilities from raw logits; the context is raw text (special tokens parsed,
/// no chat template).
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct ScoreArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    /// The text before (raw, special tokens parsed)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub(crate) context: String,
    /// The text to score
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub(crate) continuation: String,
    /// KV cells of the context
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub(crate) ctx: u32,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    pub(crate) lora: Vec<LoraArg>,
    /// Print one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

/// Check that branches decoded in one batch match branches decoded alone
///
/// Prints the largest logit distance (relative to the largest logit) between branches decoded
/// in one batch and each alone, then the same with branches deliberately leaking into each
/// other; exits 1 unless the first is within --bound and the second beyond it. With
/// --selection device: also that device-selected greedy tokens are the host's.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
pub(crate) struct EquivArgs {
    #[command(flatten)]
    pub(crate) model: ModelOpts,
    /// Branches in the batch (2..=64)
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = equiv_branches)]
    pub(crate) branches: usize,
    /// Tokens each branch decodes
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = positive_usize)]
    pub(crate) tokens: usize,
    /// Largest relative logit distance allowed
    #[arg(long, value_name = "X", default_value_t = 0.15, value_parser = finite_f64)]
    pub(crate) bound: f64,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    pub(crate) selection: Option<Selection>,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    pub(crate) lora: Vec<LoraArg>,
}

/// `json`, the path of a JSON Schema (`*.json`, converted as llama.cpp converts one) or of a
/// GBNF file (read here, so a missing file is a usage error; GBNF is checked by the library
/// when the run starts).
fn parse_grammar(s: &str) -> Result<Grammar, String> {
    if s == "json" {
        return Ok(Grammar::json_object());
    }
    let text = std::fs::read_to_string(s).map_err(|e| format!("grammar file {s}: {e}"))?;
    if s.ends_with(".json") {
        return Grammar::json_schema(&text).map_err(|e| format!("{s}: {e}"));
    }
    Ok(Grammar::gbnf(text))
}

fn finite_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("not a finite number".into()),
    }
}

fn finite_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("not a finite number".into()),
    }
}

fn unit_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("not a number in [0, 1]".into()),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("not a count of at least 1".into()),
    }
}

fn equiv_branches(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (2..=64).contains(&n) => Ok(n),
        _ => Err("not a count in 2..=64".into()),
    }
}

/// `--selection host|device|device:K`.
fn parse_selection(s: &str) -> Result<Selection, String> {
    match s {
        "host" => Ok(Selection::Host),
        "device" => Ok(Selection::Device { candidates: Selection::DEFAULT_CANDIDATES }),
        _ => match s.strip_prefix("device:").map(str::parse::<u32>) {
            Some(Ok(candidates)) if candidates > 0 => Ok(Selection::Device { candidates }),
            _ => Err("not host, device or device:K (K >= 1)".into()),
        },
    }
}

#[derive(Clone)]
pub(crate) struct BranchList(pub(crate) Vec<usize>);

fn parse_branch_list(s: &str) -> Result<BranchList, String> {
    s.split(',')
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if (1..=255).contains(&n) => Ok(n),
            _ => Err(format!("{x:?} is not a count in 1..=255")),
        })
        .collect::<Result<_, _>>()
        .map(BranchList)
}

/// `--lora PATH[:SCALE]`: scale 1 when absent.
#[derive(Clone)]
pub(crate) struct LoraArg {
    pub(crate) path: String,
    pub(crate) scale: f32,
}

fn parse_lora(spec: &str) -> Result<LoraArg, String> {
    match spec.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
            Ok(scale) if scale.is_finite() => Ok(LoraArg { path: path.to_string(), scale }),
            _ => Err(format!("{scale:?} is not a finite scale")),
        },
        _ => Ok(LoraArg { path: spec.to_string(), scale: 1.0 }),
    }
}
