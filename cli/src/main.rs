//! `pardec`: run and benchmark parallel branch decoding from the command line.
//!
//! Errors go to stderr as one line, with exit code 1 (2 for usage errors).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pardec::bench::{self, BenchParams};
use pardec::{
    Adapter, BranchSpec, Error, Event, JoinMode, Model, ModelParams, NodeId, RunLimits, SamplingParams,
    Selection, Session, SessionParams, Silent, Stats,
};
use pardec::auto::apr::generate_apr_into;
use pardec::auto::sot::{generate_sot, SotParams};
use pardec::auto::{generate_auto_into, AutoParams, AutoReport};
use pardec::protocol::{check, layout_with, ProtocolSpec, Rule, SkeletonFormat, SubSearchFormat};
use serde::Serialize;

const USAGE: &str = "\
usage:
  pardec run   [--model PATH] --prompt TEXT --branch TEXT [--branch TEXT ...] [--then TEXT]
               [--max-tokens N] [--max-branch-tokens N] [--temp T] [--top-k K] [--top-p P]
               [--min-p P] [--seed S] [--ctx N] [--threads N] [--branch-stop TEXT ...] [--raw]
               [--selection host|device[:K]] [--stream] [--json]
  pardec bench [--model PATH] [--branches 1,2,4,8] [--tokens N] [--reps N] [--threads N] [--json]
               [--selection host|device[:K]] [sampling options: greedy by default]
               [--auto]   (auto mode with scripted Multiverse blocks vs the same tokens serially)
  pardec run   [--model PATH] --prompt TEXT --protocol P [--response-prefix TEXT]
               [--max-tokens N] [--max-branch-tokens N] [sampling options] [--json]
  pardec layout [--model PATH] --protocol P [--rule engine|train] [--json]   (tagged text on stdin)
  pardec check  --protocol P                             (tagged text on stdin)
  pardec score [--model PATH] --context TEXT --continuation TEXT [--json]
  pardec equiv [--model PATH] [--branches N] [--tokens N] [--bound X] [--threads N]
               [--selection device[:K]]   (also: device-selected greedy tokens == host's)

The model defaults to $PARDEC_MODEL, else the default model fetched by scripts/fetch-models.sh.
run: the prompt is wrapped in the model's chat template unless --raw; one branch is forked per
--branch (the text is its prefix), all branches decode in parallel, are joined, and the trunk
continues after --then (default: a newline) for --max-tokens tokens.
--protocol: the model decides when to fork: multiverse, aspd, parallel-r1, threadweaver, npr,
apr (sub-searches on their own prompts), sot (skeleton-of-thought), or a protocol JSON file.
layout: position ids, branch and visible tokens of every token of a tagged training text, as
the engine decodes it (visible lists include the token itself; tokens a reprefill join reads
again are listed as copies); --rule train: as the protocol's own training code lays it out.
check: structural errors.
score: the natural-log probability of each token of the continuation after the context (raw
text, special tokens parsed, no chat template), from raw logits.
--lora PATH[:SCALE] (run, bench, equiv, score; repeatable): decode with a LoRA adapter of the
model, at SCALE (default 1).
equiv: decodes branches in one batch and each alone and prints the largest logit distance
(relative to the largest logit), then the same with branches deliberately leaking into each
other; exits 1 unless the first is within --bound (default 0.15) and the second beyond it.
--selection: where tokens are chosen. host (default): full logit rows, exact for any sampler.
device[:K]: llama.cpp keeps each row's K best logits on the backend (default K 64) and only
those reach the host: the same tokens for greedy and --top-k <= K, far less to copy and scan.";

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

/// Command-line arguments as (flag, value) pairs; flags without values get "".
struct Args {
    pairs: Vec<(String, String)>,
}

const SWITCHES: &[&str] = &["--json", "--raw", "--stream", "--auto"];

impl Args {
    fn parse(raw: &[String]) -> CliResult<Args> {
        let mut pairs = Vec::new();
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                return Err(usage(format!("unexpected argument {flag:?}")));
            }
            if SWITCHES.contains(&flag.as_str()) {
                pairs.push((flag.clone(), String::new()));
                continue;
            }
            let value = it.next().ok_or_else(|| usage(format!("{flag} needs a value")))?;
            pairs.push((flag.clone(), value.clone()));
        }
        Ok(Args { pairs })
    }

    fn check_known(&self, known: &[&str]) -> CliResult<()> {
        for (flag, _) in &self.pairs {
            if !known.contains(&flag.as_str()) {
                return Err(usage(format!("unknown option {flag}")));
            }
        }
        Ok(())
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(f, _)| f == flag).map(|(_, v)| v.as_str())
    }

    fn all(&self, flag: &str) -> Vec<String> {
        self.pairs.iter().filter(|(f, _)| f == flag).map(|(_, v)| v.clone()).collect()
    }

    fn has(&self, flag: &str) -> bool {
        self.pairs.iter().any(|(f, _)| f == flag)
    }

    fn num<T: std::str::FromStr>(&self, flag: &str, default: T) -> CliResult<T> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| usage(format!("{flag}: {v:?} is not a valid number"))),
        }
    }
}

/// `--selection host|device|device:K`.
fn selection(args: &Args) -> CliResult<Selection> {
    match args.get("--selection") {
        None | Some("host") => Ok(Selection::Host),
        Some("device") => Ok(Selection::Device { candidates: Selection::DEFAULT_CANDIDATES }),
        Some(v) => match v.strip_prefix("device:").map(str::parse::<u32>) {
            Some(Ok(candidates)) if candidates > 0 => Ok(Selection::Device { candidates }),
            _ => Err(usage(format!("--selection: {v:?} is not host, device or device:K (K >= 1)"))),
        },
    }
}

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

fn load_model(args: &Args) -> CliResult<Model> {
    let path = args.get("--model").map(PathBuf::from).unwrap_or_else(default_model_path);
    if args.get("--model").is_none() && !path.exists() {
        return Err(CliError::Pardec(Error::ModelNotFound(format!(
            "{} (run scripts/fetch-models.sh, or pass --model / set PARDEC_MODEL)",
            path.display()
        ))));
    }
    Ok(Model::load(&path, &ModelParams::default())?)
}

/// Every `--lora PATH[:SCALE]` (scale 1 when absent), loaded for `model`.
fn adapters(args: &Args, model: &Model) -> CliResult<Vec<(Adapter, f32)>> {
    args.all("--lora")
        .iter()
        .map(|spec| {
            let (path, scale) = match spec.rsplit_once(':') {
                Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
                    Ok(scale) if scale.is_finite() => (path, scale),
                    _ => return Err(usage(format!("--lora {spec:?}: {scale:?} is not a finite scale"))),
                },
                _ => (spec.as_str(), 1.0),
            };
            Ok((Adapter::load(model, path)?, scale))
        })
        .collect()
}

fn sampling(args: &Args) -> CliResult<SamplingParams> {
    Ok(SamplingParams {
        temperature: args.num("--temp", 0.0)?,
        top_k: args.num("--top-k", 0)?,
        top_p: args.num("--top-p", 1.0)?,
        min_p: args.num("--min-p", 0.0)?,
        seed: args.num("--seed", 0)?,
    })
}

#[derive(Serialize)]
struct BranchOut {
    label: String,
    prefix: String,
    text: String,
    tokens: usize,
    stop_reason: Option<pardec::StopReason>,
}

#[derive(Serialize)]
struct RunOut {
    text: String,
    prompt: String,
    branches: Vec<BranchOut>,
    continuation: String,
    stats: Stats,
}

fn cmd_run(args: &Args) -> CliResult<()> {
    args.check_known(&[
        "--model", "--prompt", "--branch", "--then", "--max-tokens", "--max-branch-tokens",
        "--temp", "--top-k", "--top-p", "--min-p", "--seed", "--ctx", "--threads", "--raw",
        "--stream", "--json", "--protocol", "--response-prefix", "--branch-stop", "--selection",
        "--lora",
    ])?;
    let prompt = args.get("--prompt").ok_or_else(|| usage("run needs --prompt TEXT"))?;
    if let Some(protocol) = args.get("--protocol") {
        if args.has("--branch") || args.has("--then") {
            return Err(usage("--protocol lets the model fork: drop --branch/--then"));
        }
        return cmd_run_auto(args, prompt, protocol);
    }
    let branches = args.all("--branch");
    if branches.is_empty() {
        return Err(usage("run needs at least one --branch TEXT"));
    }
    let max_tokens: usize = args.num("--max-tokens", 64)?;
    let branch_tokens: usize = args.num("--max-branch-tokens", 48)?;
    let then = args.get("--then").unwrap_or("\n").to_string();
    let json = args.has("--json");
    let stream = args.has("--stream") && !json;

    let model = load_model(args)?;
    let params = SessionParams {
        n_ctx: args.num("--ctx", 4096)?,
        n_threads: args.num("--threads", 0)?,
        max_branches: (branches.len() as u32).clamp(1, pardec::session::MAX_SEQUENCES - 1),
        sampling: sampling(args)?,
        selection: selection(args)?,
        adapters: adapters(args, &model)?,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    let prompt_text = if args.has("--raw") || !model.has_text_vocab() {
        prompt.to_string()
    } else {
        model.apply_chat_template(&[("user", prompt)]).unwrap_or_else(|_| prompt.to_string())
    };
    session.prompt(&prompt_text)?;
    // Stop strings end a branch early (e.g. a newline: one list item per branch).
    let branch_stops = args.all("--branch-stop");
    let specs: Vec<BranchSpec> = branches
        .iter()
        .map(|b| BranchSpec {
            prefix: b.clone(),
            limits: RunLimits { max_tokens: branch_tokens, stop: branch_stops.clone(), ..Default::default() },
            ..Default::default()
        })
        .collect();
    let mut printer = |ev: &Event<'_>| {
        if let Event::Token { label, text, .. } = ev {
            if label.is_empty() {
                print!("{text}");
            } else {
                print!("[{label}]{text}");
            }
        }
        true
    };
    let observer: &mut dyn pardec::Observer = if stream { &mut printer } else { &mut Silent };
    session.fork(NodeId::TRUNK, &specs)?;
    session.run(observer)?;
    session.join(NodeId::TRUNK, JoinMode::All, Some(&then))?;
    let continuation = session.generate(&RunLimits::tokens(max_tokens), observer)?;
    if stream {
        println!();
    }

    let transcript = session.transcript();
    let block = transcript.top_level_branches(0).unwrap_or(&[]);
    let out = RunOut {
        text: transcript.text.clone(),
        prompt: prompt_text,
        branches: block
            .iter()
            .zip(&branches)
            .map(|(b, prefix)| BranchOut {
                label: b.label.clone(),
                prefix: prefix.clone(),
                text: b.text.clone(),
                tokens: b.tokens,
                stop_reason: b.stop_reason.clone(),
            })
            .collect(),
        continuation: format!("{then}{continuation}"),
        stats: session.stats(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(e.to_string()))?);
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

fn stream_spec(args: &Args) -> CliResult<ProtocolSpec> {
    let name = args.get("--protocol").ok_or_else(|| usage("needs --protocol P"))?;
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
    prompt: String,
    branches: Vec<BranchOut>,
    blocks: Vec<pardec::auto::AutoBlock>,
    warnings: Vec<pardec::auto::AutoWarning>,
    stats: Stats,
}

fn cmd_run_auto(args: &Args, prompt: &str, protocol: &str) -> CliResult<()> {
    let choice = protocol_choice(protocol)?;
    let model = load_model(args)?;
    let params = SessionParams {
        n_ctx: args.num("--ctx", 4096)?,
        n_threads: args.num("--threads", 0)?,
        max_branches: 16,
        sampling: sampling(args)?,
        selection: selection(args)?,
        adapters: adapters(args, &model)?,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    let auto = AutoParams {
        max_tokens: args.num("--max-tokens", 256)?,
        max_branch_tokens: args.num("--max-branch-tokens", 96)?,
        response_prefix: args.get("--response-prefix").unwrap_or("").to_string(),
        ..Default::default()
    };
    let json = args.has("--json");
    let mut printer = |ev: &Event<'_>| {
        match ev {
            Event::Token { label: "", text, .. } => print!("{text}"),
            Event::Token { label, text, .. } => print!("[{label}]{text}"),
            Event::Fork { branches, .. } => print!("\n[fork → {}]\n", branches.join(", ")),
            Event::Join { label, .. } => print!("\n[join into {:?}]\n", label),
            Event::Warning { label, message } => eprint!("\n[warning in {label:?}: {message}]\n"),
            Event::End { .. } => {}
        }
        true
    };
    let observer: &mut dyn pardec::Observer = if args.has("--stream") && !json { &mut printer } else { &mut Silent };
    let prompt_text = if args.has("--raw") || !model.has_text_vocab() {
        prompt.to_string()
    } else {
        model.apply_chat_template(&[("user", prompt)]).unwrap_or_else(|_| prompt.to_string())
    };
    let mut answer = None;
    let mut report = AutoReport::default();
    let outcome = match choice {
        ProtocolChoice::Sot => {
            let sot = SotParams { skeleton_tokens: 120, point_tokens: auto.max_branch_tokens };
            let result = generate_sot(&mut session, prompt, &SkeletonFormat::sot(), &sot, observer)?;
            answer = Some(result.answer);
            report = result.report;
            Ok(())
        }
        ProtocolChoice::Apr => {
            session.prompt(&prompt_text)?;
            generate_apr_into(&mut session, &SubSearchFormat::apr(), &auto, observer, &mut report)
        }
        ProtocolChoice::Stream(spec) => {
            session.prompt(&prompt_text)?;
            generate_auto_into(&mut session, &spec, &auto, observer, &mut report)
        }
    };
    // A generation that stopped midway prints what it wrote before the error is reported.
    if let Err(e) = &outcome {
        if !matches!(e, Error::KvCacheFull | Error::Cancelled | Error::Decode(_)) {
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
        prompt: prompt_text,
        branches,
        blocks: report.blocks,
        warnings: report.warnings,
        stats: session.stats(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(e.to_string()))?);
        return outcome.map_err(Into::into);
    }
    println!("── text ──\n{}", out.text.trim_end());
    if let Some(answer) = &out.answer {
        println!("── answer ──\n{answer}");
    }
    for b in &out.blocks {
        println!("── block in {:?}: branches {} ──", b.parent, b.paths.join(", "));
    }
    for w in &out.warnings {
        println!("── warning in {:?} at byte {}: {}", w.stream, w.at, w.message);
    }
    print_stats(&out.stats);
    outcome.map_err(Into::into)
}

fn read_stdin() -> CliResult<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("reading stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|e| CliError::Pardec(Error::InvalidUtf8(format!("stdin: {e}"))))
}

fn cmd_layout(args: &Args) -> CliResult<()> {
    args.check_known(&["--model", "--protocol", "--json", "--rule"])?;
    let spec = stream_spec(args)?;
    let rule = match args.get("--rule") {
        None | Some("engine") => Rule::Engine,
        Some("train") => Rule::Train,
        Some(other) => return Err(usage(format!("--rule {other:?}: use engine or train"))),
    };
    let text = read_stdin()?;
    let model = load_model(args)?;
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
    if args.has("--json") {
        let spelled = pieces.iter().flatten().copied().eq(text.bytes());
        return write_layout_json(&tokens, &pieces, &lay, spelled).map_err(|e| Error::Internal(format!("writing the layout: {e}")).into());
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, (p, l)) in pieces.iter().zip(&lay.pieces).enumerate() {
        let line = format!("{i:>5} pos {:>5} {:<8} {:?}", l.pos, l.branch.as_deref().unwrap_or("-"), text_of(p));
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed (`| head`): nothing more to say
        }
    }
    for c in &lay.copies {
        let _ = writeln!(out, "copy of {:>5} pos {:>5}", c.of, c.layout.pos);
    }
    drop(out);
    for w in &lay.warnings {
        eprintln!("warning: {w}");
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

fn cmd_check(args: &Args) -> CliResult<()> {
    args.check_known(&["--protocol"])?;
    let spec = stream_spec(args)?;
    let text = read_stdin()?;
    let errors = check(&text, &spec);
    if errors.is_empty() {
        println!("ok: well-formed {} text", spec.name);
        return Ok(());
    }
    for e in &errors {
        println!("line {}: {}", e.line, e.message);
    }
    Err(CliError::Pardec(Error::InvalidArgument(format!(
        "{} structural error(s) in the {} text",
        errors.len(),
        spec.name
    ))))
}

fn print_run(out: &RunOut) {
    println!("── prompt ──\n{}", out.prompt.trim_end());
    for b in &out.branches {
        println!("── branch {} ({} tokens) ──\n{}", b.label, b.tokens, b.text.trim());
    }
    println!("── continuation ──\n{}", out.continuation.trim());
    print_stats(&out.stats);
}

fn print_stats(s: &Stats) {
    println!("── stats ──");
    println!(
        "tokens {} (branches {}), steps {}, #parallel {:.2}, DP {:.2}, ABN {:.1}",
        s.tokens_total, s.tokens_branch, s.steps, s.parallel, s.dp, s.abn
    );
    println!(
        "TPS {:.1}, P-TPS {:.1} (serial {:.2}s, parallel {:.2}s, prefill {:.2}s)",
        s.tps, s.p_tps, s.serial_seconds, s.parallel_seconds, s.prefill_seconds
    );
    println!(
        "KV cells {} shared vs {} with a prefix copy per branch",
        s.kv_cells_used, s.kv_cells_unshared
    );
}

fn cmd_bench(args: &Args) -> CliResult<()> {
    args.check_known(&[
        "--model", "--branches", "--tokens", "--reps", "--threads", "--json", "--auto", "--selection",
        "--temp", "--top-k", "--top-p", "--min-p", "--seed", "--lora",
    ])?;
    let mut p = BenchParams::default();
    if let Some(list) = args.get("--branches") {
        p.branches = list
            .split(',')
            .map(|x| match x.trim().parse::<usize>() {
                Ok(n) if (1..=255).contains(&n) => Ok(n),
                _ => Err(usage(format!("--branches: {x:?} is not a count in 1..=255"))),
            })
            .collect::<CliResult<_>>()?;
    }
    p.tokens = args.num("--tokens", p.tokens)?;
    if p.tokens == 0 {
        return Err(usage("--tokens must be at least 1"));
    }
    p.reps = args.num("--reps", p.reps)?;
    p.session.n_threads = args.num("--threads", 0)?;
    p.session.selection = selection(args)?;
    p.session.sampling = sampling(args)?;
    let model = load_model(args)?;
    p.session.adapters = adapters(args, &model)?;
    if args.has("--auto") {
        return cmd_bench_auto(args, &model, &p);
    }
    let rows = bench::run(&model, &p)?;
    if args.has("--json") {
        #[derive(Serialize)]
        struct Out<'a> {
            model: String,
            threads: usize,
            results: &'a [bench::BenchRow],
        }
        let threads = if p.session.n_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            p.session.n_threads as usize
        };
        let out = Out { model: model.path().display().to_string(), threads, results: &rows };
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!(
        "model {} · {} tokens per branch · best of {} · selection {:?} · sampling {:?}",
        model.path().display(),
        p.tokens,
        p.reps,
        p.session.selection,
        p.session.sampling
    );
    println!(
        "{:>3} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>8} {:>9} {:>16}",
        "B", "serial t/s", "engine t/s", "raw t/s", "speedup", "ceiling", "vs ceil", "engine/raw",
        "host µs", "select µs", "KV shared/unsh."
    );
    for r in &rows {
        println!(
            "{:>3} {:>10.1} {:>10.1} {:>10.1} {:>7.2}× {:>7.2}× {:>8.2} {:>10.2} {:>8.0} {:>9.0} {:>16}",
            r.branches, r.serial_tps, r.parallel_tps, r.raw_tps, r.speedup, r.raw_speedup,
            r.speedup_vs_ceiling, r.engine_vs_raw, r.host_us_per_step, r.selection_us_per_step,
            format!("{}/{}", r.kv_cells_shared, r.kv_cells_unshared)
        );
    }
    Ok(())
}

/// `bench --auto`: auto mode with scripted Multiverse blocks vs the same tokens decoded serially.
fn cmd_bench_auto(args: &Args, model: &Model, p: &BenchParams) -> CliResult<()> {
    let mut p = p.clone();
    if args.get("--branches").is_none() {
        p.branches = vec![2, 4, 8];
    }
    let rows = bench::auto_vs_serial(model, &p)?;
    if args.has("--json") {
        let out = serde_json::json!({ "model": model.path().display().to_string(), "results": rows });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!("{:>3} {:>7} {:>9} {:>9} {:>8} {:>7} {:>8}", "B", "tokens", "auto s", "serial s", "speedup", "ideal", "vs ideal");
    for r in &rows {
        println!(
            "{:>3} {:>7} {:>9.2} {:>9.2} {:>7.2}× {:>6.2}× {:>8.2}",
            r.branches, r.response_tokens, r.auto_seconds, r.serial_seconds, r.speedup, r.ideal, r.vs_ideal
        );
    }
    Ok(())
}

fn cmd_equiv(args: &Args) -> CliResult<()> {
    args.check_known(&["--model", "--branches", "--tokens", "--bound", "--threads", "--selection", "--lora"])?;
    let branches: usize = args.num("--branches", 4)?;
    let tokens: usize = args.num("--tokens", 12)?;
    let bound: f64 = args.num("--bound", 0.15)?;
    if !(2..=64).contains(&branches) || tokens == 0 {
        return Err(usage("equiv needs --branches in 2..=64 and --tokens ≥ 1"));
    }
    let model = load_model(args)?;
    let params = SessionParams {
        n_ctx: 4096,
        n_threads: args.num("--threads", 0)?,
        adapters: adapters(args, &model)?,
        ..Default::default()
    };
    let noise = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, false)?;
    let leak = pardec::equivalence::batch_vs_alone(&model, &params, branches, tokens, true)?;
    println!("batch vs alone: {noise:.6}   with a sibling leak: {leak:.6}   bound: {bound}");
    if noise > bound || leak <= bound {
        return Err(CliError::Pardec(Error::Internal(format!(
            "equivalence check failed: noise {noise:.4} must be ≤ {bound} < leak {leak:.4}"
        ))));
    }
    println!("ok: batched branches match branches decoded alone, and a leak is detectable");
    if let Selection::Device { candidates } = selection(args)? {
        let (agree, total) = pardec::equivalence::device_vs_host(&model, &params, branches, tokens, candidates)?;
        println!("device selection ({candidates} candidates) vs host, greedy: {agree}/{total} tokens identical");
        if agree != total {
            return Err(CliError::Pardec(Error::Internal(
                "device selection chose other tokens than host selection".into(),
            )));
        }
        println!("ok: device selection picks the host's tokens");
    }
    Ok(())
}

/// `score`: the log-probability of each token of a continuation after a context.
fn cmd_score(args: &Args) -> CliResult<()> {
    args.check_known(&["--model", "--lora", "--context", "--continuation", "--ctx", "--threads", "--json"])?;
    let context = args.get("--context").ok_or_else(|| usage("score needs --context TEXT"))?;
    let continuation = args.get("--continuation").ok_or_else(|| usage("score needs --continuation TEXT"))?;
    let model = load_model(args)?;
    let params = SessionParams {
        n_ctx: args.num("--ctx", 4096)?,
        n_threads: args.num("--threads", 0)?,
        max_branches: 1,
        adapters: adapters(args, &model)?,
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;
    session.prompt(context)?;
    let ids = model.tokenize(continuation, false)?;
    let logprobs = session.score_tokens(NodeId::TRUNK, &ids)?;
    let total: f64 = logprobs.iter().map(|&l| l as f64).sum();
    if args.has("--json") {
        let tokens: Vec<_> = ids
            .iter()
            .zip(&logprobs)
            .map(|(id, lp)| serde_json::json!({ "id": id, "logprob": lp }))
            .collect();
        println!("{}", serde_json::json!({ "tokens": tokens, "total": total }));
        return Ok(());
    }
    for (id, lp) in ids.iter().zip(&logprobs) {
        let mut piece = Vec::new();
        model.token_bytes(*id, &mut piece);
        println!("{id:>7} {lp:>10.4} {:?}", String::from_utf8_lossy(&piece));
    }
    println!("total {total:.4} over {} tokens", ids.len());
    Ok(())
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`pardec run ... | head -c1`)
    // panicked; a command-line tool should end quietly there, as cat and grep do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `pardec run --help` asks for help; it is not a flag missing its value.
    let wants_help = argv.iter().skip(1).any(|a| a == "--help" || a == "-h");
    let result = match argv.first().map(String::as_str) {
        Some(_) if wants_help => {
            println!("{USAGE}");
            Ok(())
        }
        Some("run") => Args::parse(&argv[1..]).and_then(|a| cmd_run(&a)),
        Some("bench") => Args::parse(&argv[1..]).and_then(|a| cmd_bench(&a)),
        Some("equiv") => Args::parse(&argv[1..]).and_then(|a| cmd_equiv(&a)),
        Some("layout") => Args::parse(&argv[1..]).and_then(|a| cmd_layout(&a)),
        Some("check") => Args::parse(&argv[1..]).and_then(|a| cmd_check(&a)),
        Some("score") => Args::parse(&argv[1..]).and_then(|a| cmd_score(&a)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(usage(format!("unknown command {other:?}"))),
        None => Err(usage("no command given")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("pardec: {msg} (see pardec --help)");
            ExitCode::from(2)
        }
        Err(CliError::Pardec(e)) => {
            eprintln!("pardec: {e}");
            ExitCode::from(1)
        }
    }
}
