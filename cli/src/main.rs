//! `pardec`: run and benchmark parallel branch decoding from the command line.
//!
//! Arguments are parsed by clap; every subcommand has its own `--help`. Errors go to stderr as
//! one line, with exit code 1 (2 for usage errors). Results go to stdout; progress of long work
//! goes to stderr (one updating line on a terminal, plain lines otherwise). A closed stdout
//! (`pardec run ... | head -c 10`) ends the process by SIGPIPE, quietly, as it ends cat.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use pardec::auto::apr::generate_apr_into;
use pardec::auto::sot::{generate_sot, SotParams};
use pardec::auto::{generate_auto_into, AutoParams, AutoReport};
use pardec::bench::{self, BenchParams};
use pardec::protocol::{check, layout_with, ProtocolSpec, Rule, SkeletonFormat, SubSearchFormat};
use pardec::{
    Adapter, BranchSpec, Error, Event, Grammar, JoinMode, Model, ModelParams, NodeId, Observer, RunLimits, SamplingParams,
    Selection, Session, SessionParams, Stats, StopReason, WeightFormat,
};
use serde::Serialize;

// ───────────────────────────── stdout and progress ─────────────────────────────

/// Everything the commands print goes through here: a write error ends the process — quietly,
/// by SIGPIPE, when the reader went away — instead of panicking as `println!` does.
mod out {
    use std::fmt;
    use std::io::{self, Write};

    pub fn write(args: fmt::Arguments<'_>) {
        crate::progress::clear();
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout.write_fmt(args) {
            fail(e)
        }
    }

    pub fn flush() {
        if let Err(e) = io::stdout().lock().flush() {
            fail(e)
        }
    }

    /// Ends the process after a failed write to stdout.
    pub fn fail(e: io::Error) -> ! {
        if e.kind() == io::ErrorKind::BrokenPipe {
            broken_pipe()
        }
        let _ = writeln!(io::stderr(), "pardec: writing to stdout: {e}");
        std::process::exit(1)
    }

    /// The reader of stdout is gone (EPIPE: SIGPIPE was ignored after all): end as the signal
    /// would have ended the process, the conventional status of `cmd | head`.
    pub fn broken_pipe() -> ! {
        crate::progress::clear();
        #[cfg(unix)]
        // SAFETY: restoring a signal's default disposition and raising it; nothing is shared.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + 13)
    }
}

macro_rules! outln {
    () => { out::write(format_args!("\n")) };
    ($($t:tt)*) => { out::write(format_args!("{}\n", format_args!($($t)*))) };
}

macro_rules! outp {
    ($($t:tt)*) => { out::write(format_args!($($t)*)) };
}

/// The size of the terminal behind `fd` (columns, rows), if it is one.
fn term_size(fd: i32) -> Option<(usize, usize)> {
    #[cfg(unix)]
    // SAFETY: TIOCGWINSZ fills a winsize; a failure leaves it zeroed and returns -1.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col as usize, (ws.ws_row as usize).max(1)));
        }
    }
    let _ = fd;
    None
}

fn columns(fd: i32) -> usize {
    term_size(fd)
        .map(|(c, _)| c)
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
        .unwrap_or(80)
        .max(20)
}

/// Progress of long work on stderr: one line redrawn in place on a terminal, plain
/// `pardec: ...` lines otherwise (phases only; token counts are for terminals).
mod progress {
    use std::io::{IsTerminal, Write};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    struct State {
        shown: bool,
        last: Option<Instant>,
    }

    static STATE: Mutex<State> = Mutex::new(State { shown: false, last: None });

    pub fn stderr_is_tty() -> bool {
        static TTY: OnceLock<bool> = OnceLock::new();
        *TTY.get_or_init(|| std::io::stderr().is_terminal())
    }

    fn draw(state: &mut State, msg: &str) {
        let width = crate::columns(2);
        let msg: String = msg.chars().take(width - 1).collect();
        let _ = write!(std::io::stderr(), "\r\x1b[2K{msg}");
        state.shown = true;
        state.last = Some(Instant::now());
    }

    /// A step of long work (loading, one benchmark row): shown in both modes.
    pub fn phase(msg: &str) {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if stderr_is_tty() {
            draw(&mut state, msg);
        } else {
            let _ = writeln!(std::io::stderr(), "pardec: {msg}");
        }
    }

    /// A frequent update (tokens so far): terminals only, at most ten a second.
    pub fn tick(msg: impl FnOnce() -> String) {
        if !stderr_is_tty() {
            return;
        }
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        draw(&mut state, &msg());
    }

    /// Removes the progress line (before output or an error message).
    pub fn clear() {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            state.shown = false;
            state.last = None;
        }
    }
}

fn warn(msg: &str) {
    progress::clear();
    eprintln!("pardec: warning: {msg}");
}

mod peer;

// ───────────────────────────── arguments ─────────────────────────────

/// The usage line in lower case, as pardec has always printed it.
const HELP_TEMPLATE: &str = "{before-help}{about-with-newline}\nusage: {usage}\n\n{all-args}{after-help}";

fn version() -> &'static str {
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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Bench(BenchArgs),
    Layout(LayoutArgs),
    Check(CheckArgs),
    Score(ScoreArgs),
    Equiv(EquivArgs),
    Convert(ConvertArgs),
    Merge(MergeArgs),
    RpcServer(RpcServerArgs),
}

#[derive(Args, Clone)]
struct ModelOpts {
    /// The GGUF model file [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    // Negative numbers are taken as the value, so `-1` is refused by name rather than read as
    // an unknown flag.
    #[arg(long, value_name = "N", help = N_GPU_LAYERS_HELP, allow_negative_numbers = true)]
    n_gpu_layers: Option<u32>,
    /// RPC servers to put the model's layers on, each running `pardec rpc-server`; layers are
    /// split as llama.cpp splits them (needs a build with GGML_RPC=ON)
    #[arg(long, value_name = "HOST:PORT,...", value_parser = parse_rpc_servers)]
    rpc: Option<RpcServers>,
}

/// The servers of `--rpc`.
#[derive(Clone)]
struct RpcServers(Vec<String>);

impl ModelOpts {
    /// The servers of `--rpc`, none without it.
    fn rpc_servers(&self) -> Vec<String> {
        self.rpc.as_ref().map_or_else(Vec::new, |s| s.0.clone())
    }
}

fn parse_rpc_servers(s: &str) -> Result<RpcServers, String> {
    pardec::rpc::parse_servers(s).map(RpcServers).map_err(|e| e.to_string())
}

#[derive(Args, Clone)]
struct SamplingOpts {
    /// Softmax temperature; 0 samples greedily
    #[arg(long, value_name = "T", default_value_t = 0.0, value_parser = finite_f32)]
    temp: f32,
    /// Keep only the K most likely tokens (0: off)
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off)
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = unit_f32)]
    top_p: f32,
    /// Drop tokens below P times the most likely token's probability (0: off)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = unit_f32)]
    min_p: f32,
    /// Seed of every branch's random stream (with its path in the fork tree)
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// llama.cpp's repetition penalty over each node's last --penalty-last-n tokens (1: off)
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = finite_f32)]
    repeat_penalty: f32,
    /// Lowers a recent token's logit by F per occurrence (0: off)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Lowers every recent token's logit by P once (0: off)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Tokens the penalties look back on (0: off, -1: the whole context)
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true)]
    penalty_last_n: i32,
    /// Add BIAS to token ID's logit, as ID=BIAS (-inf bans it); repeatable
    #[arg(long, value_name = "ID=BIAS", value_parser = logit_bias_entry)]
    logit_bias: Vec<(i32, f32)>,
    /// Record each generated token's log-probability and its step's N most likely tokens
    /// (in --stream json token events and the --json transcript)
    #[arg(long, value_name = "N")]
    logprobs: Option<usize>,
}

impl SamplingOpts {
    fn params(&self) -> SamplingParams {
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

/// One `--logit-bias ID=BIAS` entry (the session checks the id against the vocabulary).
fn logit_bias_entry(s: &str) -> Result<(i32, f32), String> {
    let (id, bias) = s.split_once('=').ok_or_else(|| format!("{s:?} is not ID=BIAS"))?;
    let id = id.trim().parse::<i32>().map_err(|_| format!("{id:?} is not a token id"))?;
    let bias = match bias.trim() {
        "-inf" => f32::NEG_INFINITY,
        b => b.parse::<f32>().ok().filter(|b| b.is_finite()).ok_or_else(|| format!("{b:?} is not a finite bias or -inf"))?,
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
struct RunArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// The user's message
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    prompt: String,
    /// A system message, before the prompt in the chat template
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true, conflicts_with = "raw")]
    system: Option<String>,
    /// Decode the prompt as given, without the model's chat template
    #[arg(long)]
    raw: bool,
    /// Fork a branch that starts with TEXT (repeatable: one branch each)
    #[arg(
        long = "branch",
        value_name = "TEXT",
        allow_hyphen_values = true,
        required_unless_present = "protocol",
        conflicts_with = "protocol"
    )]
    branches: Vec<String>,
    /// Text the trunk continues from after the join [default: a newline]
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true, conflicts_with = "protocol")]
    then: Option<String>,
    /// End a branch where it writes STR (repeatable; e.g. a newline: one line per branch)
    #[arg(long = "branch-stop", value_name = "STR", allow_hyphen_values = true, conflicts_with = "protocol")]
    branch_stops: Vec<String>,
    /// Every branch's sampled text follows a grammar: json (one JSON object each), a JSON Schema file (*.json) or a GBNF file whose start rule is root
    #[arg(long, value_name = "json|FILE", value_parser = parse_grammar, conflicts_with = "protocol")]
    branch_grammar: Option<Grammar>,
    /// The trunk's text after the join follows a grammar (as --branch-grammar)
    #[arg(long, value_name = "json|FILE", value_parser = parse_grammar, conflicts_with = "protocol")]
    grammar: Option<Grammar>,
    /// End the trunk's generation where it writes STR (repeatable; not with --protocol sot)
    #[arg(long = "stop", value_name = "STR", allow_hyphen_values = true)]
    stops: Vec<String>,
    /// Tokens the trunk may generate [default: 64; 256 with --protocol; the skeleton's budget, 120, with sot]
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Tokens each branch may generate [default: 48; 96 with --protocol]
    #[arg(long, value_name = "N")]
    max_branch_tokens: Option<usize>,
    /// Let the model fork: multiverse, aspd, parallel-r1, threadweaver, npr, apr, sot, or a protocol JSON file
    #[arg(long, value_name = "P")]
    protocol: Option<String>,
    /// Text put in the model's mouth at the start of its response (with --protocol)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    response_prefix: Option<String>,
    #[command(flatten)]
    sampling: SamplingOpts,
    /// KV cells of the context (all branches share them)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    ctx: u32,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    selection: Option<Selection>,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    lora: Vec<LoraArg>,
    /// Show the generation as it happens (see above)
    #[arg(long)]
    stream: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

/// Benchmark: the same branches decoded serially, in parallel, and with raw llama_decode
///
/// Each row decodes B branches of --tokens tokens each (EOG banned), once one after another
/// and once in one batch per step, best of --reps, next to raw llama_decode calls of the same
/// shapes (the ceiling). With --auto: auto mode with scripted Multiverse blocks versus the same
/// tokens decoded serially. Progress goes to stderr; the table (or --json) to stdout.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Branch counts, comma-separated, each in 1..=255 [default: 1,2,4,8,16; 2,4,8 with --auto]
    #[arg(long, value_name = "LIST", value_parser = parse_branch_list)]
    branches: Option<BranchList>,
    /// Tokens each branch decodes
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive_usize)]
    tokens: usize,
    /// Repetitions of each measurement (the best is kept)
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive_usize)]
    reps: usize,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    selection: Option<Selection>,
    #[command(flatten)]
    sampling: SamplingOpts,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    lora: Vec<LoraArg>,
    /// Auto mode with scripted Multiverse blocks versus the same tokens serially
    #[arg(long)]
    auto: bool,
    /// The host cost per step of each sampling feature (penalties, bias, log-probs, stops,
    /// grammar), at B = the largest of --branches [default: 16]
    #[arg(long, conflicts_with = "auto")]
    sampling_costs: bool,
    /// The raw batched-decode ceiling and the perplexity of the model converted to each
    /// format (comma-separated: q4_0, q4_1, q8_0, f16, bf16; converted once, beside the model)
    #[arg(long, value_name = "LIST", value_parser = parse_weight_formats, conflicts_with_all = ["auto", "sampling_costs", "lora"])]
    formats: Option<WeightFormats>,
    /// What the --rpc servers cost per decode step: raw steps of each B with the model here
    /// and on the servers, in one run [--branches default 1,4,16]
    #[arg(long, requires = "rpc", conflicts_with_all = ["auto", "sampling_costs", "formats", "lora", "peer"])]
    rpc_cost: bool,
    /// Compare with another engine on the same model: llama-server (started on 127.0.0.1;
    /// Skeleton-of-Thought points as concurrent requests vs forked over one prefix, and a
    /// serial answer; greedy; --branches default 2,4,8, --tokens per point)
    #[arg(long, value_enum, value_name = "ENGINE", conflicts_with_all = ["auto", "sampling_costs", "formats", "lora"])]
    peer: Option<peer::Peer>,
    /// The llama-server binary for --peer [default: the one scripts/build-llama-server.sh caches]
    #[arg(long, value_name = "PATH", requires = "peer")]
    server: Option<PathBuf>,
    /// Print the results as one JSON object
    #[arg(long)]
    json: bool,
}

/// Write the model again in another weight format (llama.cpp's quantizer)
///
/// On a CPU the weight format decides how well a batch of branches shares each read of the
/// weights (`pardec bench --formats` measures it). The file is written beside the model, the
/// format appended to its name (a Q8_0 made from a Q4_1 keeps the Q4_1's rounding), unless
/// --out names it; an existing file is replaced. Prints the path written.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct ConvertArgs {
    /// The GGUF model file [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// The weight format: q4_0, q4_1, q8_0, f16 or bf16
    #[arg(long, value_name = "FORMAT", value_parser = parse_weight_format)]
    to: WeightFormat,
    /// Where to write it [default: beside the model, MODEL-STEM.FORMAT.gguf]
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
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
struct MergeArgs {
    /// The GGUF base model [default: $PARDEC_MODEL, else the default model]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// A LoRA adapter of the model, merged at SCALE (default 1); repeatable
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, required = true)]
    lora: Vec<LoraArg>,
    /// Where to write the merged model
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// The weight format: q4_0, q4_1, q8_0, f16 or bf16 [default: the model's own, or q8_0]
    #[arg(long, value_name = "FORMAT", value_parser = parse_weight_format)]
    to: Option<WeightFormat>,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
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
struct RpcServerArgs {
    /// Address to listen on
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (llama.cpp's rpc-server uses 50052 too)
    #[arg(long, value_name = "PORT", default_value_t = 50052)]
    port: u16,
    /// CPU threads for the layers computed on the CPU (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Keep the tensors clients send in this folder, so a model's second load is not sent again
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
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
struct WeightFormats(Vec<WeightFormat>);

/// Position ids, branch and visible tokens of every token of a tagged text (on stdin)
///
/// As the engine decodes it: visible lists include the token itself; tokens a reprefill join
/// reads again are listed as copies. --rule train: as the protocol's own training code lays
/// it out.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct LayoutArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// A stream protocol: multiverse, aspd, parallel-r1, threadweaver, npr, or a protocol JSON file
    #[arg(long, value_name = "P")]
    protocol: String,
    /// Whose layout: the engine's or the protocol's training code's
    #[arg(long, value_enum, default_value_t = RuleArg::Engine)]
    rule: RuleArg,
    /// Print one JSON object (tokens, visible ranges, copies, warnings)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuleArg {
    Engine,
    Train,
}

/// Structural errors of a tagged text (on stdin), with line numbers
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct CheckArgs {
    /// A stream protocol: multiverse, aspd, parallel-r1, threadweaver, npr, or a protocol JSON file
    #[arg(long, value_name = "P")]
    protocol: String,
}

/// The log-probability of each token of a continuation after a context
///
/// Natural-log probabilities from raw logits; the context is raw text (special tokens parsed,
/// no chat template).
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// The text before (raw, special tokens parsed)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    context: String,
    /// The text to score
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    continuation: String,
    /// KV cells of the context
    #[arg(long, value_name = "N", default_value_t = 4096)]
    ctx: u32,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    lora: Vec<LoraArg>,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// Check that branches decoded in one batch match branches decoded alone
///
/// Prints the largest logit distance (relative to the largest logit) between branches decoded
/// in one batch and each alone, then the same with branches deliberately leaking into each
/// other; exits 1 unless the first is within --bound and the second beyond it. With
/// --selection device: also that device-selected greedy tokens are the host's.
#[derive(Args)]
#[command(help_template = HELP_TEMPLATE, args_override_self = true)]
struct EquivArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Branches in the batch (2..=64)
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = equiv_branches)]
    branches: usize,
    /// Tokens each branch decodes
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = positive_usize)]
    tokens: usize,
    /// Largest relative logit distance allowed
    #[arg(long, value_name = "X", default_value_t = 0.15, value_parser = finite_f64)]
    bound: f64,
    /// CPU threads (0: all cores)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: u32,
    #[arg(long, value_name = "host|device[:K]", value_parser = parse_selection, help = SELECTION_HELP)]
    selection: Option<Selection>,
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = parse_lora, help = LORA_HELP)]
    lora: Vec<LoraArg>,
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
struct BranchList(Vec<usize>);

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
struct LoraArg {
    path: String,
    scale: f32,
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

// ───────────────────────────── errors ─────────────────────────────

/// A usage error (exit code 2) or a pardec error (exit code 1).
enum CliError {
    Usage(String),
    Pardec(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Pardec(e)
    }
}

type CliResult<T> = Result<T, CliError>;

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn internal(e: impl std::fmt::Display) -> CliError {
    CliError::Pardec(Error::Internal(e.to_string()))
}

/// A clap error as one line: its message and tips, without the usage block.
fn one_line(e: &clap::Error) -> String {
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

// ───────────────────────────── shared helpers ─────────────────────────────

fn default_model_path() -> PathBuf {
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
fn load_model(opts: &ModelOpts, announce: bool) -> CliResult<Model> {
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
    let params = ModelParams {
        n_gpu_layers: opts.n_gpu_layers,
        rpc_servers: opts.rpc_servers(),
    };
    let model = Model::load(&path, &params);
    progress::clear();
    Ok(model?)
}

/// Every `--lora`, loaded for `model`.
fn adapters(loras: &[LoraArg], model: &Model) -> CliResult<Vec<(Adapter, f32)>> {
    loras.iter().map(|l| Ok((Adapter::load(model, &l.path)?, l.scale))).collect()
}

/// The prompt as decoded: in the model's chat template (with the system message) unless
/// `raw`; a model without a usable template is run raw, with a warning.
fn chat_prompt(model: &Model, prompt: &str, system: Option<&str>, raw: bool) -> CliResult<String> {
    if raw || !model.has_text_vocab() {
        return Ok(prompt.to_string());
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = system {
        messages.push(("system", system));
    }
    messages.push(("user", prompt));
    match model.apply_chat_template(&messages) {
        Ok(text) => Ok(text),
        Err(Error::UnsupportedModel(why)) => {
            warn(&format!("{why}: the prompt is decoded as raw text (--raw does so without this warning)"));
            Ok(match system {
                Some(system) => format!("{system}\n\n{prompt}"),
                None => prompt.to_string(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn to_json<T: Serialize>(value: &T, pretty: bool) -> CliResult<String> {
    if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) }.map_err(internal)
}

/// A string quoted as JSON (escapes control characters, quotes).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn reason_text(reason: &StopReason) -> String {
    match reason {
        StopReason::Eog => "end of generation".into(),
        StopReason::MaxTokens => "token limit".into(),
        StopReason::StopString(s) => format!("stop string {}", quoted(s)),
        StopReason::KvCacheFull => "KV cache full".into(),
        StopReason::Cancelled => "cancelled".into(),
        StopReason::ServerLost => "RPC server lost".into(),
    }
}

fn who(label: &str) -> &str {
    if label.is_empty() {
        "trunk"
    } else {
        label
    }
}

// ───────────────────────────── streaming ─────────────────────────────

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamMode {
    /// No stream: the observer only counts tokens (progress) and watches trunk stops.
    Off,
    /// stdout is a terminal: one line per branch, redrawn.
    Live,
    /// One line per event.
    Log,
    /// One JSON object per event.
    Json,
}

/// One line of `--stream --json`: `kind` (prompt, prefix, token, end, fork, join, warning),
/// `node` (0: the trunk), `branch` (the label path, "" for the trunk), and what the kind has.
#[derive(Serialize)]
struct JsonEvent<'a> {
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<usize>,
    branch: &'a str,
    /// The token's id (absent for text completed at a node's end, from split bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<pardec::Token>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    branches: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    /// The token's log-probability and its step's most likely tokens (`--logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    logprob: Option<&'a pardec::TokenLogprob>,
}

impl<'a> JsonEvent<'a> {
    fn new(kind: &'a str, branch: &'a str) -> Self {
        JsonEvent {
            kind,
            node: None,
            branch,
            token: None,
            text: None,
            reason: None,
            branches: None,
            kept: None,
            message: None,
            logprob: None,
        }
    }
}

/// The observer of a run: streams events in the chosen mode, counts tokens for the progress
/// line, and ends the trunk at a `--stop` string in auto modes (by cancelling the run).
struct Watch {
    mode: StreamMode,
    live: Live,
    progress: bool,
    tokens: usize,
    branch_tokens: usize,
}

impl Watch {
    fn new(stream: bool, json: bool) -> Watch {
        let stdout_tty = std::io::stdout().is_terminal();
        let mode = match (stream, json) {
            (false, _) => StreamMode::Off,
            (true, true) => StreamMode::Json,
            (true, false) if stdout_tty => StreamMode::Live,
            (true, false) => StreamMode::Log,
        };
        let progress = progress::stderr_is_tty() && (mode == StreamMode::Off || !stdout_tty);
        Watch {
            mode,
            live: Live::new(),
            progress,
            tokens: 0,
            branch_tokens: 0,
        }
    }

    fn json_event(&self, event: JsonEvent<'_>) {
        match serde_json::to_string(&event) {
            Ok(line) => outln!("{line}"),
            Err(e) => warn(&format!("an event could not be written as JSON: {e}")),
        }
    }

    /// The text the trunk starts from (the prompt as decoded).
    fn prompt(&mut self, text: &str) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent { node: Some(0), text: Some(text), ..JsonEvent::new("prompt", "") }),
            StreamMode::Log => outln!("prompt {}", quoted(text)),
            StreamMode::Live => self.live.prompt(text),
        }
    }

    /// Text written into a node, not sampled (a branch prefix, a response prefix).
    fn prefix(&mut self, node: NodeId, label: &str, text: &str) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent { node: Some(node.index()), text: Some(text), ..JsonEvent::new("prefix", label) }),
            StreamMode::Log => outln!("prefix {} {}", who(label), quoted(text)),
            StreamMode::Live => self.live.text(label, text),
        }
    }

    fn fork(&mut self, parent: NodeId, label: &str, branches: &[String]) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent {
                node: Some(parent.index()),
                branches: Some(branches),
                ..JsonEvent::new("fork", label)
            }),
            StreamMode::Log => outln!("fork {} -> {}", who(label), branches.join(" ")),
            StreamMode::Live => self.live.fork(label, branches),
        }
    }

    /// A join; `text`: the join text, where the caller knows it.
    fn join(&mut self, parent: NodeId, label: &str, kept: usize, text: Option<&str>) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent {
                node: Some(parent.index()),
                kept: Some(kept),
                text,
                ..JsonEvent::new("join", label)
            }),
            StreamMode::Log => match text {
                Some(t) => outln!("join {} kept {kept} {}", who(label), quoted(t)),
                None => outln!("join {} kept {kept}", who(label)),
            },
            StreamMode::Live => self.live.join(label, text),
        }
    }

    /// The stream is over (the result follows).
    fn finish(&mut self) {
        progress::clear();
        if self.mode == StreamMode::Live {
            self.live.finish();
        }
        out::flush();
    }
}

impl Observer for Watch {
    fn on_event(&mut self, ev: &Event<'_>) -> bool {
        match ev {
            Event::Token { node, label, token, text, logprob } => {
                self.tokens += 1;
                if !label.is_empty() {
                    self.branch_tokens += 1;
                }
                match self.mode {
                    StreamMode::Off => {}
                    StreamMode::Json => self.json_event(JsonEvent {
                        node: Some(node.index()),
                        token: (*token >= 0).then_some(*token),
                        text: Some(text),
                        logprob: *logprob,
                        ..JsonEvent::new("token", label)
                    }),
                    StreamMode::Log if text.is_empty() => {}
                    StreamMode::Log => outln!("token {} {}", who(label), quoted(text)),
                    StreamMode::Live => self.live.text(label, text),
                }
                if self.progress {
                    let (n, b) = (self.tokens, self.branch_tokens);
                    progress::tick(|| format!("generating: {n} tokens ({b} in branches)"));
                }
            }
            Event::End { node, label, reason } => match self.mode {
                StreamMode::Off => {}
                StreamMode::Json => self.json_event(JsonEvent {
                    node: Some(node.index()),
                    reason: Some(reason),
                    ..JsonEvent::new("end", label)
                }),
                StreamMode::Log => outln!("end {} {}", who(label), reason_text(reason)),
                StreamMode::Live => self.live.end(label),
            },
            Event::Fork { parent, label, branches } => self.fork(*parent, label, branches),
            Event::Join { parent, label, kept } => self.join(*parent, label, *kept, None),
            Event::Warning { label, message } => match self.mode {
                StreamMode::Off => {}
                StreamMode::Json => self.json_event(JsonEvent { message: Some(message), ..JsonEvent::new("warning", label) }),
                StreamMode::Log => outln!("warning {} {}", who(label), quoted(message)),
                StreamMode::Live => self.live.note(&format!("warning in {}: {message}", who(label))),
            },
        }
        true
    }
}

/// The terminal view of `--stream`: the trunk's text as it comes, and while branches run one
/// line per branch (`[label] text`, the tail that fits), redrawn in place; a finished
/// branch's line is dimmed. A joined block stays on screen and the trunk goes on below it.
struct Live {
    lines: Vec<LiveLine>,
    /// Lines of the region on screen (the cursor is on the line below them).
    drawn: usize,
    last_draw: Option<Instant>,
    /// The cursor is at the start of a line (outside the region).
    at_line_start: bool,
}

struct LiveLine {
    label: String,
    text: String,
    done: bool,
}

impl Live {
    fn new() -> Live {
        Live { lines: Vec::new(), drawn: 0, last_draw: None, at_line_start: true }
    }

    fn prompt(&mut self, text: &str) {
        outp!("\x1b[2m{}\x1b[0m", clean_inline(text));
        self.at_line_start = text.ends_with('\n');
        if !self.at_line_start {
            outln!();
            self.at_line_start = true;
        }
        out::flush();
    }

    /// Text of a node: inline for the trunk, into its line for a branch.
    fn text(&mut self, label: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        if label.is_empty() {
            if !self.lines.is_empty() {
                self.freeze();
            }
            outp!("{}", clean_inline(text));
            self.at_line_start = text.ends_with('\n');
            out::flush();
            return;
        }
        match self.lines.iter_mut().find(|l| l.label == label) {
            Some(line) => line.text.push_str(text),
            None => self.lines.push(LiveLine { label: label.to_string(), text: text.to_string(), done: false }),
        }
        self.draw(false);
    }

    fn fork(&mut self, parent: &str, branches: &[String]) {
        if self.lines.is_empty() && !self.at_line_start {
            outln!();
            self.at_line_start = true;
        }
        // Children go after their parent's line and the lines already below it.
        let nested = |l: &LiveLine| !parent.is_empty() && (l.label == parent || l.label.starts_with(&format!("{parent}.")));
        let at = self.lines.iter().rposition(nested).map_or(self.lines.len(), |i| i + 1);
        let new = branches
            .iter()
            .filter(|b| !self.lines.iter().any(|l| &l.label == *b))
            .map(|b| LiveLine { label: b.clone(), text: String::new(), done: false })
            .collect::<Vec<_>>();
        self.lines.splice(at..at, new);
        self.draw(true);
    }

    fn end(&mut self, label: &str) {
        if let Some(line) = self.lines.iter_mut().find(|l| l.label == label) {
            line.done = true;
            self.draw(true);
        }
    }

    fn join(&mut self, label: &str, text: Option<&str>) {
        if label.is_empty() {
            self.freeze();
            // The block's lines end in a line break already.
            if let Some(t) = text.map(|t| t.strip_prefix('\n').unwrap_or(t)) {
                self.text("", t);
            }
        } else {
            self.draw(true);
        }
    }

    /// A message above the region (which is redrawn below it).
    fn note(&mut self, msg: &str) {
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        } else if !self.at_line_start {
            s.push('\n');
        }
        s.push_str(&format!("\r\x1b[2K\x1b[33m{}\x1b[0m\n", clean_line(msg)));
        outp!("{s}");
        self.at_line_start = true;
        self.drawn = 0;
        self.draw(true);
    }

    /// Draws the region's final state and leaves it on screen.
    fn freeze(&mut self) {
        self.draw(true);
        self.lines.clear();
        self.drawn = 0;
        self.at_line_start = true;
    }

    /// Ends the view with a blank line (the result follows).
    fn finish(&mut self) {
        if !self.lines.is_empty() {
            self.freeze();
        }
        if !self.at_line_start {
            outln!();
        }
        outln!();
        self.at_line_start = true;
    }

    fn draw(&mut self, force: bool) {
        if self.lines.is_empty() {
            return;
        }
        if !force && self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 40) {
            return;
        }
        let (width, rows) = term_size(1).unwrap_or((columns(1), 24));
        // A region taller than the screen could not be redrawn in place: the rest is counted.
        let room = rows.saturating_sub(2).max(1);
        let shown = if self.lines.len() > room { room.saturating_sub(1).max(1) } else { self.lines.len() };
        let mut s = String::from("\x1b[?7l"); // no wrapping while drawing
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for line in &self.lines[..shown] {
            s.push_str("\r\x1b[2K");
            s.push_str(&render_line(line, width));
            s.push('\n');
        }
        let mut drawn = shown;
        if shown < self.lines.len() {
            let running = self.lines[shown..].iter().filter(|l| !l.done).count();
            s.push_str(&format!("\r\x1b[2K… {} more branches ({running} running)\n", self.lines.len() - shown));
            drawn += 1;
        }
        s.push_str("\x1b[?7h");
        outp!("{s}");
        out::flush();
        self.drawn = drawn;
        self.last_draw = Some(Instant::now());
    }
}

/// `[label] text`, the text's tail cut to the width, on one line.
fn render_line(line: &LiveLine, width: usize) -> String {
    let head = format!("[{}] ", line.label);
    let body = clean_line(&line.text);
    let room = width.saturating_sub(head.chars().count() + 1).max(1);
    let n = body.chars().count();
    let body = if n > room {
        let tail: String = body.chars().skip(n - room + 1).collect();
        format!("…{tail}")
    } else {
        body
    };
    if line.done {
        format!("\x1b[2m{head}{body}\x1b[0m")
    } else {
        format!("\x1b[1m{head}\x1b[0m{body}")
    }
}

/// Text for one line: newlines shown as ⏎, other control characters dropped.
fn clean_line(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' => Some('⏎'),
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Text for the terminal as is, without control characters but newlines and tabs (a model's
/// escape sequences must not drive the terminal).
fn clean_inline(text: &str) -> String {
    text.chars().filter(|&c| c == '\n' || c == '\t' || !c.is_control()).collect()
}

// ───────────────────────────── run ─────────────────────────────

#[derive(Serialize)]
struct BranchOut {
    label: String,
    prefix: String,
    text: String,
    tokens: usize,
    stop_reason: Option<StopReason>,
}

#[derive(Serialize)]
struct RunOut {
    text: String,
    prompt: String,
    branches: Vec<BranchOut>,
    continuation: String,
    /// The `--stop` string that ended the trunk, if one did.
    trunk_stop: Option<String>,
    stats: Stats,
}

fn cmd_run(a: &RunArgs) -> CliResult<()> {
    if let Some(protocol) = &a.protocol {
        return cmd_run_auto(a, protocol);
    }
    if a.response_prefix.is_some() {
        return Err(usage("--response-prefix needs --protocol: with --branch, the branches are the response"));
    }
    let max_tokens = a.max_tokens.unwrap_or(64);
    let branch_tokens = a.max_branch_tokens.unwrap_or(48);
    let then = a.then.clone().unwrap_or_else(|| "\n".to_string());

    let model = load_model(&a.model, false)?;
    let params = SessionParams {
        n_ctx: a.ctx,
        n_threads: a.threads,
        max_branches: (a.branches.len() as u32).clamp(1, pardec::session::MAX_SEQUENCES - 1),
        sampling: a.sampling.params(),
        selection: a.selection.unwrap_or(Selection::Host),
        adapters: adapters(&a.lora, &model)?,
        logprobs: a.sampling.logprobs,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    let prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
    // The trunk's stops are the library's own (RunLimits), so the watcher has none.
    let mut watch = Watch::new(a.stream, a.json);
    watch.prompt(&prompt_text);
    session.prompt(&prompt_text)?;
    // Stop strings end a branch early (e.g. a newline: one list item per branch).
    let specs: Vec<BranchSpec> = a
        .branches
        .iter()
        .map(|b| BranchSpec {
            prefix: b.clone(),
            limits: RunLimits {
                max_tokens: branch_tokens,
                stop: a.branch_stops.clone(),
                grammar: a.branch_grammar.clone(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let ids = session.fork(NodeId::TRUNK, &specs)?;
    let labels: Vec<String> = ids.iter().map(|&id| session.label(id).unwrap_or("").to_string()).collect();
    watch.fork(NodeId::TRUNK, "", &labels);
    for ((&id, label), prefix) in ids.iter().zip(&labels).zip(&a.branches) {
        watch.prefix(id, label, prefix);
    }
    session.run(&mut watch)?;
    session.join(NodeId::TRUNK, JoinMode::All, Some(&then))?;
    watch.join(NodeId::TRUNK, "", ids.len(), Some(&then));
    let limits = RunLimits { max_tokens, stop: a.stops.clone(), grammar: a.grammar.clone(), ..Default::default() };
    let continuation = session.generate(&limits, &mut watch)?;
    watch.finish();

    let transcript = session.transcript();
    let block = transcript.top_level_branches(0).unwrap_or(&[]);
    let trunk_stop = match session.stop_reason(NodeId::TRUNK) {
        Some(StopReason::StopString(s)) => Some(s.clone()),
        _ => None,
    };
    let out = RunOut {
        text: transcript.text.clone(),
        prompt: prompt_text,
        branches: block
            .iter()
            .zip(&a.branches)
            .map(|(b, prefix)| BranchOut {
                label: b.label.clone(),
                prefix: prefix.clone(),
                text: b.text.clone(),
                tokens: b.tokens,
                stop_reason: b.stop_reason.clone(),
            })
            .collect(),
        continuation: format!("{then}{continuation}"),
        trunk_stop,
        stats: session.stats(),
    };
    if a.json {
        // After a stream of JSON lines the result is one more line.
        outln!("{}", to_json(&out, !a.stream)?);
    } else {
        print_run(&out);
    }
    Ok(())
}

/// A protocol by built-in name, or a JSON file describing one.
enum ProtocolChoice {
    Stream(Box<ProtocolSpec>),
    Apr,
    Sot,
}

fn protocol_choice(name: &str) -> CliResult<ProtocolChoice> {
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
        let json = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("protocol file {name}: {e}")))?;
        let spec = ProtocolSpec::from_json(&json)
            .map_err(|e| Error::InvalidArgument(format!("protocol file {name}: {e}")))?;
        return Ok(ProtocolChoice::Stream(Box::new(spec)));
    }
    Err(usage(format!(
        "unknown protocol {name:?}: use one of {}, apr, sot, or a JSON file",
        ProtocolSpec::builtin_names().join(", ")
    )))
}

fn stream_spec(name: &str) -> CliResult<ProtocolSpec> {
    match protocol_choice(name)? {
        ProtocolChoice::Stream(spec) => Ok(*spec),
        _ => Err(usage(format!("{name} has no tagged text layout: use a stream protocol"))),
    }
}

#[derive(Serialize)]
struct AutoOut {
    text: String,
    /// Skeleton-of-Thought: the points with their expansions, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
    /// Skeleton-of-Thought: the skeleton's points.
    #[serde(skip_serializing_if = "Option::is_none")]
    points: Option<Vec<String>>,
    /// Skeleton-of-Thought: the skeleton was unusable and the answer was written serially.
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_fallback: Option<bool>,
    prompt: String,
    branches: Vec<BranchOut>,
    blocks: Vec<pardec::auto::AutoBlock>,
    warnings: Vec<pardec::auto::AutoWarning>,
    /// The `--stop` string that ended the trunk, if one did.
    trunk_stop: Option<String>,
    stats: Stats,
}

fn cmd_run_auto(a: &RunArgs, protocol: &str) -> CliResult<()> {
    let choice = protocol_choice(protocol)?;
    if let ProtocolChoice::Sot = choice {
        let unusable = [
            (a.raw, "--raw"),
            (a.system.is_some(), "--system"),
            (!a.stops.is_empty(), "--stop"),
            (a.response_prefix.is_some(), "--response-prefix"),
        ];
        if let Some((_, flag)) = unusable.iter().find(|(set, _)| *set) {
            return Err(usage(format!(
                "{flag} does not apply to --protocol sot: it writes its own prompt in the chat template, \
                 and the skeleton ends by its format"
            )));
        }
    }
    let model = load_model(&a.model, false)?;
    let params = SessionParams {
        n_ctx: a.ctx,
        n_threads: a.threads,
        max_branches: 16,
        sampling: a.sampling.params(),
        selection: a.selection.unwrap_or(Selection::Host),
        adapters: adapters(&a.lora, &model)?,
        logprobs: a.sampling.logprobs,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    let auto = AutoParams {
        max_tokens: a.max_tokens.unwrap_or(256),
        max_branch_tokens: a.max_branch_tokens.unwrap_or(96),
        response_prefix: a.response_prefix.clone().unwrap_or_default(),
        stop: a.stops.clone(),
        ..Default::default()
    };
    let mut watch = Watch::new(a.stream, a.json);
    let mut answer = None;
    let mut sot_points = None;
    let mut fallback = None;
    let mut report = AutoReport::default();
    let prompt_text;
    let outcome = match choice {
        ProtocolChoice::Sot => {
            // generate_sot wraps its request in the chat template itself, raw where there is none.
            let format = SkeletonFormat::sot();
            let request = format.request_prompt(&a.prompt);
            prompt_text = if model.has_text_vocab() {
                match model.apply_chat_template(&[("user", &request)]) {
                    Ok(t) => t,
                    Err(e) => {
                        warn(&format!("{e}: the skeleton request is decoded as raw text"));
                        request
                    }
                }
            } else {
                request
            };
            watch.prompt(&prompt_text);
            // --max-tokens is the skeleton's budget (the trunk's part); points get --max-branch-tokens.
            let sot = SotParams { skeleton_tokens: a.max_tokens.unwrap_or(120), point_tokens: auto.max_branch_tokens };
            match generate_sot(&mut session, &a.prompt, &format, &sot, &mut watch) {
                Ok(result) => {
                    answer = Some(result.answer);
                    sot_points = Some(result.points);
                    fallback = Some(result.serial_fallback);
                    report = result.report;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ProtocolChoice::Apr => {
            prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
            watch.prompt(&prompt_text);
            session.prompt(&prompt_text)?;
            if !auto.response_prefix.is_empty() {
                watch.prefix(NodeId::TRUNK, "", &auto.response_prefix);
            }
            generate_apr_into(&mut session, &SubSearchFormat::apr(), &auto, &mut watch, &mut report)
        }
        ProtocolChoice::Stream(spec) => {
            prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
            watch.prompt(&prompt_text);
            session.prompt(&prompt_text)?;
            if !auto.response_prefix.is_empty() {
                watch.prefix(NodeId::TRUNK, "", &auto.response_prefix);
            }
            generate_auto_into(&mut session, &spec, &auto, &mut watch, &mut report)
        }
    };
    watch.finish();
    // A generation that stopped midway prints what it wrote before the error is reported.
    if let Err(e) = &outcome {
        if !matches!(e, Error::KvCacheFull | Error::Cancelled | Error::Decode(_) | Error::Rpc(_)) {
            return outcome.map_err(Into::into);
        }
    }
    let t = session.transcript();
    let branches = t
        .blocks()
        .iter()
        .flat_map(|b| match b {
            pardec::ItemReport::Block { branches, .. } => branches.clone(),
            _ => Vec::new(),
        })
        .map(|b| BranchOut { label: b.label.clone(), prefix: String::new(), text: b.text, tokens: b.tokens, stop_reason: b.stop_reason })
        .collect();
    let out = AutoOut {
        text: t.text.clone(),
        answer,
        points: sot_points,
        serial_fallback: fallback,
        prompt: prompt_text,
        branches,
        blocks: report.blocks,
        warnings: report.warnings,
        trunk_stop: match session.stop_reason(NodeId::TRUNK) {
            Some(StopReason::StopString(s)) => Some(s.clone()),
            _ => None,
        },
        stats: session.stats(),
    };
    if a.json {
        outln!("{}", to_json(&out, !a.stream)?);
        return outcome.map_err(Into::into);
    }
    outln!("── text ──\n{}", out.text.trim_end());
    if let Some(answer) = &out.answer {
        outln!("── answer ──\n{answer}");
    }
    for b in &out.blocks {
        outln!("── block in {}: branches {} ──", who(&b.parent), b.paths.join(", "));
    }
    for w in &out.warnings {
        outln!("── warning in {} at byte {}: {}", who(&w.stream), w.at, w.message);
    }
    if let Some(stop) = &out.trunk_stop {
        outln!("── the trunk ended at --stop {} ──", quoted(stop));
    }
    print_stats(&out.stats);
    outcome.map_err(Into::into)
}

fn print_run(out: &RunOut) {
    outln!("── prompt ──\n{}", out.prompt.trim_end());
    for b in &out.branches {
        outln!("── branch {} ({} tokens) ──\n{}", b.label, b.tokens, b.text.trim());
    }
    outln!("── continuation ──\n{}", out.continuation.trim());
    if let Some(stop) = &out.trunk_stop {
        outln!("── the trunk ended at --stop {} ──", quoted(stop));
    }
    print_stats(&out.stats);
}

fn print_stats(s: &Stats) {
    outln!("── stats ──");
    outln!(
        "tokens {} (branches {}), steps {}, #parallel {:.2}, DP {:.2}, ABN {:.1}",
        s.tokens_total, s.tokens_branch, s.steps, s.parallel, s.dp, s.abn
    );
    outln!(
        "TPS {:.1}, P-TPS {:.1} (serial {:.2}s, parallel {:.2}s, prefill {:.2}s)",
        s.tps, s.p_tps, s.serial_seconds, s.parallel_seconds, s.prefill_seconds
    );
    outln!("KV cells {} shared vs {} with a prefix copy per branch", s.kv_cells_used, s.kv_cells_unshared);
}

// ───────────────────────────── layout, check ─────────────────────────────

fn read_stdin() -> CliResult<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("reading stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|e| CliError::Pardec(Error::InvalidUtf8(format!("stdin: {e}"))))
}

fn cmd_layout(a: &LayoutArgs) -> CliResult<()> {
    let spec = stream_spec(&a.protocol)?;
    let rule = match a.rule {
        RuleArg::Engine => Rule::Engine,
        RuleArg::Train => Rule::Train,
    };
    let text = read_stdin()?;
    let model = load_model(&a.model, false)?;
    let tokens = model.tokenize(&text, false)?;
    let pieces: Vec<Vec<u8>> = tokens
        .iter()
        .map(|&t| {
            let mut b = Vec::new();
            model.token_bytes(t, &mut b);
            b
        })
        .collect();
    let lay = layout_with(&spec, &pieces, rule);
    let text_of = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    if a.json {
        let spelled = pieces.iter().flatten().copied().eq(text.bytes());
        if let Err(e) = write_layout_json(&tokens, &pieces, &lay, spelled) {
            out::fail(e);
        }
        return Ok(());
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let write_all = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>| -> std::io::Result<()> {
        for (i, (p, l)) in pieces.iter().zip(&lay.pieces).enumerate() {
            writeln!(out, "{i:>5} pos {:>5} {:<8} {:?}", l.pos, l.branch.as_deref().unwrap_or("-"), text_of(p))?;
        }
        for c in &lay.copies {
            writeln!(out, "copy of {:>5} pos {:>5}", c.of, c.layout.pos)?;
        }
        out.flush()
    };
    if let Err(e) = write_all(&mut out) {
        out::fail(e);
    }
    drop(out);
    for w in &lay.warnings {
        warn(&w.to_string());
    }
    Ok(())
}

/// The layout as one JSON object, written token by token (memory stays linear in the text):
/// `tokens` (id, start: byte offset in the tokens' text, prev: the entry whose logits predict
/// it, text, pos, branch), `visible` (per token, then per copy: sorted `[start, end)` index
/// ranges, the token itself included), `copies` (tokens read a second time: `of`, `pos`,
/// `branch`, `prev`; index `tokens.len() + k` in `visible`), `warnings`. `spelled` is false when
/// the tokens' text differs from the input (offsets then refer to the tokens' text).
fn write_layout_json(
    ids: &[pardec::Token],
    pieces: &[Vec<u8>],
    lay: &pardec::protocol::Layout,
    spelled: bool,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Tok<'a> {
        id: pardec::Token,
        start: usize,
        prev: Option<usize>,
        text: String,
        pos: u32,
        branch: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Copy<'a> {
        of: usize,
        pos: u32,
        branch: Option<&'a str>,
        prev: Option<usize>,
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.write_all(b"{\"tokens\":[")?;
    let mut start = 0;
    for (i, (p, l)) in pieces.iter().zip(&lay.pieces).enumerate() {
        let t = Tok {
            id: ids[i],
            start,
            prev: l.predecessor(i),
            text: String::from_utf8_lossy(p).into_owned(),
            pos: l.pos,
            branch: l.branch.as_deref(),
        };
        start += p.len();
        write!(out, "{}{}", if i > 0 { "," } else { "" }, json(&t)?)?;
    }
    out.write_all(b"],\"visible\":[")?;
    for (i, l) in lay.pieces.iter().chain(lay.copies.iter().map(|c| &c.layout)).enumerate() {
        let ranges: Vec<[usize; 2]> = l.visible.iter().map(|r| [r.start, r.end]).collect();
        write!(out, "{}{}", if i > 0 { "," } else { "" }, json(&ranges)?)?;
    }
    out.write_all(b"],\"copies\":[")?;
    for (i, c) in lay.copies.iter().enumerate() {
        let copy = Copy {
            of: c.of,
            pos: c.layout.pos,
            branch: c.layout.branch.as_deref(),
            prev: c.layout.predecessor(pieces.len() + i),
        };
        write!(out, "{}{}", if i > 0 { "," } else { "" }, json(&copy)?)?;
    }
    let mut warnings: Vec<String> = lay.warnings.iter().map(|w| w.to_string()).collect();
    if !spelled {
        warnings.push("the tokens do not spell the input text exactly: `start` offsets are in the tokens' text".into());
    }
    writeln!(out, "],\"warnings\":{}}}", json(&warnings)?)?;
    out.flush()
}

fn json<T: Serialize>(value: &T) -> std::io::Result<String> {
    serde_json::to_string(value).map_err(std::io::Error::other)
}

fn cmd_check(a: &CheckArgs) -> CliResult<()> {
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

// ───────────────────────────── bench ─────────────────────────────

fn selection_text(s: &Selection) -> String {
    match s {
        Selection::Host => "host".into(),
        Selection::Device { candidates } => format!("device ({candidates} candidates)"),
    }
}

fn sampling_text(s: &SamplingParams) -> String {
    if s.temperature <= 0.0 {
        return "greedy".into();
    }
    let mut parts = vec![format!("temperature {}", s.temperature)];
    if s.top_k > 0 {
        parts.push(format!("top-k {}", s.top_k));
    }
    if s.top_p < 1.0 {
        parts.push(format!("top-p {}", s.top_p));
    }
    if s.min_p > 0.0 {
        parts.push(format!("min-p {}", s.min_p));
    }
    parts.push(format!("seed {}", s.seed));
    parts.join(", ")
}

/// Rows under right-aligned headers, each column as wide as its widest cell.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{}{c}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(headers.to_vec()));
    for r in rows {
        outln!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn cmd_bench(a: &BenchArgs) -> CliResult<()> {
    if let Some(engine) = a.peer {
        return peer::bench(a, engine);
    }
    let mut p = BenchParams::default();
    if let Some(list) = &a.branches {
        p.branches = list.0.clone();
    } else if a.auto {
        p.branches = vec![2, 4, 8];
    }
    p.tokens = a.tokens;
    p.reps = a.reps;
    p.session.n_threads = a.threads;
    p.session.selection = a.selection.unwrap_or(Selection::Host);
    p.session.sampling = a.sampling.params();
    if a.rpc_cost {
        if a.branches.is_none() {
            p.branches = vec![1, 4, 16];
        }
        return bench_rpc_cost(&a.model, &p, a.json);
    }
    let model = load_model(&a.model, true)?;
    p.session.adapters = adapters(&a.lora, &model)?;
    // One row at a time, for the progress line; every row's session is the size the whole
    // list needs, as when the library runs them all.
    let max_b = p.branches.iter().copied().max().unwrap_or(1) as u32;
    p.session.max_branches = p.session.max_branches.max(max_b);
    let started = Instant::now();
    let n = p.branches.len();
    let row_params = |i: usize, b: usize| {
        progress::phase(&format!(
            "bench{}: B = {b} ({}/{n}), {} tokens per branch, best of {}",
            if a.auto { " --auto" } else { "" },
            i + 1,
            p.tokens,
            p.reps
        ));
        BenchParams { branches: vec![b], ..p.clone() }
    };
    let threads = if p.session.n_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        p.session.n_threads as usize
    };
    if a.sampling_costs {
        return bench_sampling_costs(&model, &p, threads, a.json);
    }
    if let Some(formats) = &a.formats {
        return bench_formats(model.path(), &formats.0, &p, threads, a.json);
    }
    if a.auto {
        let mut rows = Vec::new();
        for (i, &b) in p.branches.iter().enumerate() {
            rows.extend(bench::auto_vs_serial(&model, &row_params(i, b))?);
        }
        progress::phase(&format!("bench --auto: done in {:.1} s", started.elapsed().as_secs_f64()));
        progress::clear();
        if a.json {
            let out = serde_json::json!({ "model": model.path().display().to_string(), "results": rows });
            outln!("{}", to_json(&out, true)?);
            return Ok(());
        }
        outln!(
            "model {} · auto mode (scripted Multiverse blocks) vs the same tokens serially · {} tokens per branch · {threads} threads",
            model.path().display(),
            p.tokens
        );
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.branches.to_string(),
                    r.response_tokens.to_string(),
                    format!("{:.2}", r.auto_seconds),
                    format!("{:.2}", r.serial_seconds),
                    format!("{:.2}×", r.speedup),
                    format!("{:.2}×", r.ideal),
                    format!("{:.2}", r.vs_ideal),
                ]
            })
            .collect();
        print_table(&["B", "tokens", "auto s", "serial s", "speedup", "ideal", "vs ideal"], &table);
        return Ok(());
    }
    let mut rows = Vec::new();
    for (i, &b) in p.branches.iter().enumerate() {
        rows.extend(bench::run(&model, &row_params(i, b))?);
    }
    progress::phase(&format!("bench: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: String,
            threads: usize,
            results: &'a [bench::BenchRow],
        }
        let out = Out { model: model.path().display().to_string(), threads, results: &rows };
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · {} tokens per branch · best of {} · selection {} · sampling {} · {threads} threads",
        model.path().display(),
        p.tokens,
        p.reps,
        selection_text(&p.session.selection),
        sampling_text(&p.session.sampling)
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.branches.to_string(),
                format!("{:.1}", r.serial_tps),
                format!("{:.1}", r.parallel_tps),
                format!("{:.1}", r.raw_tps),
                format!("{:.2}×", r.speedup),
                format!("{:.2}×", r.raw_speedup),
                format!("{:.2}", r.speedup_vs_ceiling),
                format!("{:.2}", r.engine_vs_raw),
                format!("{:.0}", r.host_us_per_step),
                format!("{:.0}", r.selection_us_per_step),
                format!("{}/{}", r.kv_cells_shared, r.kv_cells_unshared),
            ]
        })
        .collect();
    print_table(
        &[
            "B", "serial t/s", "engine t/s", "raw t/s", "speedup", "ceiling", "vs ceil", "engine/raw", "host µs",
            "select µs", "KV shared/unsh.",
        ],
        &table,
    );
    outln!("t/s: tokens per second · speedup: the engine's over the same branches one after another · ceiling: that");
    outln!("speedup for raw llama_decode · vs ceil: speedup / ceiling · host µs: per step outside llama_decode, select µs:");
    outln!("of it choosing tokens · KV: cells used with the prefix shared / with a prefix copy per branch");
    Ok(())
}

/// `pardec bench --sampling-costs`.
fn bench_sampling_costs(model: &Model, p: &BenchParams, threads: usize, json: bool) -> CliResult<()> {
    let b = p.branches.iter().copied().max().unwrap_or(16);
    progress::phase(&format!(
        "bench --sampling-costs: B = {b}, {} tokens per branch, 6 features, best of {}",
        p.tokens, p.reps
    ));
    let started = Instant::now();
    let rows = bench::sampling_costs(model, p)?;
    progress::phase(&format!("bench --sampling-costs: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if json {
        let out = serde_json::json!({ "model": model.path().display().to_string(), "threads": threads, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · B = {b} · {} tokens per branch · best of {} · sampling {} · {threads} threads",
        model.path().display(),
        p.tokens,
        p.reps,
        sampling_text(&p.session.sampling)
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.feature.clone(),
                r.tokens.to_string(),
                format!("{:.0}", r.host_us_per_step),
                format!("{:.0}", r.selection_us_per_step),
                format!("{:.1}", r.host_us_per_token),
                format!("{:+.1}", r.extra_us_per_token),
                format!("{:.1}", r.step_ms),
            ]
        })
        .collect();
    print_table(&["feature", "tokens", "host µs/step", "select µs", "host µs/token", "extra µs/token", "step ms"], &table);
    outln!("host: per parallel step outside llama_decode, select: of it choosing tokens · extra: host µs per token");
    outln!("over the first row's · step ms: wall time per step, llama_decode included");
    Ok(())
}

/// `pardec bench --formats`.
fn bench_formats(path: &std::path::Path, formats: &[WeightFormat], p: &BenchParams, threads: usize, json: bool) -> CliResult<()> {
    let started = Instant::now();
    let rows = bench::format_ceilings(path, formats, p, |msg| progress::phase(&format!("bench --formats: {msg}")))?;
    progress::phase(&format!("bench --formats: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if json {
        let out = serde_json::json!({ "model": path.display().to_string(), "threads": threads, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · raw llama_decode steps of B lanes · {} steps · best of {} · {threads} threads",
        path.display(),
        p.tokens,
        p.reps
    );
    let mut head = vec!["format".to_string(), "MiB".into(), "perplexity".into()];
    head.extend(p.branches.iter().map(|b| format!("B={b}")));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![
                format!("{}{}", r.format, if r.original { " (given)" } else { "" }),
                format!("{:.0}", r.file_mib),
                format!("{:.3}", r.perplexity),
            ];
            line.extend(r.tps.iter().zip(&r.ceiling).map(|(tps, c)| format!("{tps:.0} t/s {c:.2}×")));
            line
        })
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print_table(&head, &table);
    outln!("B=N: raw tokens per second with N lanes per step, and the ceiling (N × one-lane step time / N-lane");
    outln!("step time) · perplexity: on a fixed English passage (lower is better)");
    Ok(())
}

fn bench_rpc_cost(opts: &ModelOpts, p: &BenchParams, json: bool) -> CliResult<()> {
    let path = opts.model.clone().unwrap_or_else(default_model_path);
    let servers = opts.rpc_servers();
    progress::phase(&format!("bench --rpc-cost: {} here, then on {}", path.display(), servers.join(",")));
    let rows = bench::rpc_step_costs(&path, &servers, p)?;
    progress::clear();
    if json {
        let out = serde_json::json!({ "model": path.display().to_string(), "servers": servers, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · raw llama_decode steps of B lanes, here and with the layers on {} · {} steps · best of {}",
        path.display(),
        servers.join(","),
        p.tokens,
        p.reps
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.branches.to_string(),
                format!("{:.2}", r.local_ms),
                format!("{:.2}", r.rpc_ms),
                format!("{:+.2}", r.added_ms),
                format!("{:.2}×", r.ratio),
            ]
        })
        .collect();
    print_table(&["B", "here ms", "RPC ms", "added ms", "ratio"], &table);
    Ok(())
}

// ───────────────────────────── convert ─────────────────────────────

fn cmd_convert(a: &ConvertArgs) -> CliResult<()> {
    let input = a.model.clone().unwrap_or_else(default_model_path);
    let out = a.out.clone().unwrap_or_else(|| pardec::converted_path(&input, a.to));
    progress::phase(&format!("writing {} as {}", out.display(), a.to));
    pardec::convert(&input, &out, a.to, a.threads)?;
    progress::clear();
    outln!("{}", out.display());
    Ok(())
}

fn cmd_merge(a: &MergeArgs) -> CliResult<()> {
    let base = a.model.clone().unwrap_or_else(default_model_path);
    let adapters: Vec<(PathBuf, f32)> = a.lora.iter().map(|l| (PathBuf::from(&l.path), l.scale)).collect();
    progress::phase(&format!("writing {} with the adapters merged", a.out.display()));
    let summary = pardec::merge(&base, &adapters, &a.out, a.to, a.threads)?;
    for t in &summary.ignored {
        warn(&format!("left out {t}: llama.cpp ignores an adapter's norm vectors too"));
    }
    match (a.to, summary.format) {
        (None, Some(f)) => warn(&format!("wrote {f}: the model's adapted matrices have fewer than 8 bits a weight")),
        (Some(f @ (WeightFormat::Q4_0 | WeightFormat::Q4_1)), _) => {
            warn(&format!("re-quantized to {f}, most of an adapter's change rounds away (q8_0 keeps it)"))
        }
        _ => {}
    }
    progress::clear();
    eprintln!("pardec: merged {} matrices and {} token rows", summary.matrices, summary.rows);
    outln!("{}", a.out.display());
    Ok(())
}

fn cmd_rpc_server(a: &RpcServerArgs) -> CliResult<()> {
    // A client that goes away mid-answer must not end the server: writes then fail with
    // EPIPE, and ggml-rpc drops that client and accepts the next.
    #[cfg(unix)]
    // SAFETY: setting the disposition of a signal, before the server's threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let endpoint = format!("{}:{}", a.host, a.port);
    out::flush();
    match pardec::rpc::serve(&endpoint, threads, a.cache.as_deref())? {}
}

// ───────────────────────────── equiv, score ─────────────────────────────

fn cmd_equiv(a: &EquivArgs) -> CliResult<()> {
    let model = load_model(&a.model, true)?;
    let params = SessionParams {
        n_ctx: 4096,
        n_threads: a.threads,
        adapters: adapters(&a.lora, &model)?,
        ..Default::default()
    };
    let device = match a.selection {
        Some(Selection::Device { candidates }) => Some(candidates),
        _ => None,
    };
    let phases = if device.is_some() { 3 } else { 2 };
    let (branches, tokens, bound) = (a.branches, a.tokens, a.bound);
    progress::phase(&format!("equiv: {branches} branches in one batch vs each alone (1/{phases})"));
    let noise = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, false)?;
    progress::phase(&format!("equiv: the same with a sibling leak (2/{phases})"));
    let leak = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, true)?;
    progress::clear();
    outln!("batch vs alone: {noise:.6}   with a sibling leak: {leak:.6}   bound: {bound}");
    if noise > bound || leak <= bound {
        return Err(CliError::Pardec(Error::Internal(format!(
            "equivalence check failed: noise {noise:.4} must be ≤ {bound} < leak {leak:.4}"
        ))));
    }
    outln!("ok: batched branches match branches decoded alone, and a leak is detectable");
    if let Some(candidates) = device {
        progress::phase(&format!("equiv: device selection ({candidates} candidates) vs host (3/3)"));
        let (agree, total) = pardec::equivalence::device_vs_host(&model, &params, branches, tokens, candidates)?;
        progress::clear();
        outln!("device selection ({candidates} candidates) vs host, greedy: {agree}/{total} tokens identical");
        if agree != total {
            return Err(CliError::Pardec(Error::Internal(
                "device selection chose other tokens than host selection".into(),
            )));
        }
        outln!("ok: device selection picks the host's tokens");
    }
    Ok(())
}

/// `score`: the log-probability of each token of a continuation after a context.
fn cmd_score(a: &ScoreArgs) -> CliResult<()> {
    let model = load_model(&a.model, false)?;
    let params = SessionParams {
        n_ctx: a.ctx,
        n_threads: a.threads,
        max_branches: 1,
        adapters: adapters(&a.lora, &model)?,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    session.prompt(&a.context)?;
    let ids = model.tokenize(&a.continuation, false)?;
    let logprobs = session.score_tokens(NodeId::TRUNK, &ids)?;
    let total: f64 = logprobs.iter().map(|&l| l as f64).sum();
    if a.json {
        let tokens: Vec<_> = ids
            .iter()
            .zip(&logprobs)
            .map(|(id, lp)| serde_json::json!({ "id": id, "logprob": lp }))
            .collect();
        outln!("{}", serde_json::json!({ "tokens": tokens, "total": total }));
        return Ok(());
    }
    for (id, lp) in ids.iter().zip(&logprobs) {
        let mut piece = Vec::new();
        model.token_bytes(*id, &mut piece);
        outln!("{id:>7} {lp:>10.4} {:?}", String::from_utf8_lossy(&piece));
    }
    outln!("total {total:.4} over {} tokens", ids.len());
    Ok(())
}

// ───────────────────────────── main ─────────────────────────────

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
    };
    let result = match &cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Layout(a) => cmd_layout(a),
        Command::Check(a) => cmd_check(a),
        Command::Score(a) => cmd_score(a),
        Command::Equiv(a) => cmd_equiv(a),
        Command::Convert(a) => cmd_convert(a),
        Command::Merge(a) => cmd_merge(a),
        Command::RpcServer(a) => cmd_rpc_server(a),
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
