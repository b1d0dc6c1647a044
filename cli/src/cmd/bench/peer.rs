//! `pardec bench --peer llama-server`: pardec against llama.cpp's own server, in one run.
//!
//! The Skeleton-of-Thought paper's code expands the points of a skeleton as parallel API
//! requests. Against llama-server (`--parallel N` slots, continuous batching) every request
//! carries the shared prefix — the question, the skeleton, the expansion instruction — and
//! every slot computes it; pardec prefills that prefix once and forks the points over it.
//!
//! Both sides get exactly the same tokens: the skeleton is written once per question, by
//! pardec (greedy, the wording and budget of `generate_sot`), and the prompts go to the server
//! as token ids — pardec's own, chat template included — so tokenization cannot differ.
//! Decoding is greedy on both sides (llama-server: top-k 1), end-of-generation is banned on
//! both (llama-server: `ignore_eos`) and there are no stop strings, so every point decodes
//! exactly the same budget of tokens on both sides and both do the same work.
//!
//! Each question is new to both sides: pardec starts from an empty session, and the server's
//! slots are erased before each measured request set (its RAM prompt cache is off), so the
//! server's prompt cache cannot carry a prefix over from a warm-up or an earlier row. Within a
//! request set it works as a user would see it (`cache_prompt` on).

use std::path::Path;
use std::time::Instant;

use pardec::auto::sot::{sot_prompt, SotParams};
use pardec::protocol::SkeletonFormat;
use pardec::{BranchSpec, Error, Model, NodeId, RunLimits, SamplingParams, Session, SessionParams, Silent, Token};
use serde::Serialize;
use serde_json::{json, Value};

use super::llama_server::{completion_body, parse_completion, server_binary, Server, ServerConfig, SERVER_BUILD};
use crate::args::{BenchArgs, Peer};
use crate::error::{internal, usage, CliError, CliResult};
use crate::output::{print_table, progress, to_json};
use crate::params::{load_model, SessionArgs};

/// The questions every row answers (the first one also warms each side up).
const QUESTIONS: [&str; 3] =
    ["How can I sleep better?", "What should I know before adopting a dog?", "How do I prepare for a job interview?"];

/// Branch counts when --branches is not given.
const DEFAULT_BRANCHES: [usize; 3] = [2, 4, 8];

/// Tokens of the serial answer per token of a point's budget.
const SERIAL_FACTOR: usize = 4;

// ───────────────────────────── measurements ─────────────────────────────

/// One side's measurement of one answer (or, summed, of a row).
#[derive(Debug, Clone, Default, Serialize)]
struct Side {
    /// Wall time to the complete answer (prefill included), seconds.
    wall_s: f64,
    /// Prompt tokens computed (pardec: prompt and branch prefixes, once; server: the sum of
    /// timings.prompt_n over the requests).
    prefill_tokens: u64,
    /// KV cells holding the answer at its end (pardec: cells in use, the prefix once;
    /// server: the sum over requests of cache_n + prompt_n + predicted_n, each slot holding
    /// its prompt and what it generated).
    kv_cells: u64,
    /// Tokens generated.
    generated_tokens: u64,
    /// generated_tokens / wall_s.
    tps: f64,
}

impl Side {
    /// pardec's side of an answer: a session's statistics after `wall_s` seconds, of which
    /// `generated_tokens` count (branch tokens for SoT, every token for a serial answer).
    fn from_stats(st: &pardec::Stats, wall_s: f64, generated_tokens: u64) -> Side {
        Side {
            wall_s,
            prefill_tokens: st.tokens_prefill,
            kv_cells: st.kv_cells_used,
            generated_tokens,
            tps: generated_tokens as f64 / wall_s.max(1e-9),
        }
    }

    fn add(&mut self, other: &Side) {
        self.wall_s += other.wall_s;
        self.prefill_tokens += other.prefill_tokens;
        self.kv_cells += other.kv_cells;
        self.generated_tokens += other.generated_tokens;
        self.tps = self.generated_tokens as f64 / self.wall_s.max(1e-9);
    }
}

/// A side's run: its numbers and the tokens each branch (or the serial answer) generated.
struct Run {
    side: Side,
    tokens: Vec<Vec<Token>>,
}

/// A question made ready for both sides.
struct Question {
    text: &'static str,
    /// The skeleton's points, as parsed.
    points: Vec<String>,
    /// The shared prefix: the chat-templated skeleton request, the primer, the skeleton and
    /// the expansion instruction, as pardec's session holds them.
    prefix: Vec<Token>,
    /// The branch prefix of every point slot up to the largest B (points reused in order
    /// when the skeleton has fewer).
    point_prefixes: Vec<Vec<Token>>,
    /// The plain (serial) answer's prompt: the question in the chat template.
    serial_prompt: Vec<Token>,
}

/// Writes the question's skeleton as `generate_sot` does (same request, primer, budget and
/// parser) and collects the token sequences both sides will be given.
fn prepare(
    s: &mut Session,
    model: &Model,
    fmt: &SkeletonFormat,
    text: &'static str,
    max_b: usize,
) -> CliResult<Question> {
    s.clear();
    let (prompt, _template_error) = sot_prompt(model, text, fmt);
    s.prompt(&prompt)?;
    if !fmt.primer.is_empty() {
        s.append_text(NodeId::TRUNK, &fmt.primer)?;
    }
    let skeleton = s.generate(&RunLimits::tokens(SotParams::default().skeleton_tokens), &mut Silent)?;
    let points = match fmt.parse(&format!("{}{}", fmt.primer, skeleton)) {
        Ok(sk) => sk.points,
        Err(fallback) => fallback.points,
    };
    if points.is_empty() {
        return Err(CliError::Pardec(Error::InvalidState(format!(
            "the model wrote no usable skeleton for {text:?}: {skeleton:?}"
        ))));
    }
    s.append_text(NodeId::TRUNK, &fmt.expand_instruction)?;
    let prefix = s.node_tokens(NodeId::TRUNK);
    let mut point_prefixes = Vec::with_capacity(max_b);
    for i in 0..max_b {
        let p = fmt.point_prefix(i, &points[i % points.len()]);
        let ids = model.tokenize(&p, false)?;
        if ids.is_empty() {
            return Err(CliError::Pardec(Error::EmptyBranchPrefix { branch: i }));
        }
        point_prefixes.push(ids);
    }
    s.clear();
    let plain = model.apply_chat_template(&[("user", text)]).unwrap_or_else(|_| text.to_string());
    s.prompt(&plain)?;
    let serial_prompt = s.node_tokens(NodeId::TRUNK);
    s.clear();
    Ok(Question { text, points, prefix, point_prefixes, serial_prompt })
}

/// pardec's SoT expansion: the prefix prefilled once, B branches forked over it, decoded in
/// one batch per step.
fn pardec_sot(s: &mut Session, q: &Question, b: usize, tokens: usize) -> CliResult<Run> {
    s.clear();
    let specs: Vec<BranchSpec> = q.point_prefixes[..b]
        .iter()
        .map(|p| BranchSpec {
            prefix_tokens: p.clone(),
            limits: RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    s.prompt_tokens(&q.prefix)?;
    let ids = s.fork(NodeId::TRUNK, &specs)?;
    s.run(&mut Silent)?;
    let wall = started.elapsed().as_secs_f64();
    let st = s.stats();
    let generated = ids
        .iter()
        .zip(&specs)
        .map(|(&id, spec)| s.node_tokens(id).get(spec.prefix_tokens.len()..).unwrap_or(&[]).to_vec())
        .collect();
    let side = Side::from_stats(&st, wall, st.tokens_branch);
    s.clear();
    Ok(Run { side, tokens: generated })
}

/// pardec's serial mode: the prompt, then one token per step.
fn pardec_serial(s: &mut Session, prompt: &[Token], tokens: usize) -> CliResult<Run> {
    s.clear();
    let started = Instant::now();
    s.prompt_tokens(prompt)?;
    s.generate(&RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() }, &mut Silent)?;
    let wall = started.elapsed().as_secs_f64();
    let st = s.stats();
    let generated = s.node_tokens(NodeId::TRUNK).get(prompt.len()..).unwrap_or(&[]).to_vec();
    let side = Side::from_stats(&st, wall, st.tokens_total);
    s.clear();
    Ok(Run { side, tokens: vec![generated] })
}

/// Sends the prompts as concurrent /completion requests, one thread each, and waits for all
/// of them: the slots start empty.
fn server_requests(server: &mut Server, prompts: &[Vec<Token>], tokens: usize) -> CliResult<Run> {
    server.erase_slots()?;
    let bodies: Vec<String> = prompts.iter().map(|p| completion_body(p, tokens)).collect();
    let client = server.client;
    let started = Instant::now();
    let answers: Vec<Result<Value, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            bodies.iter().map(|body| scope.spawn(move || client.post_json("/completion", body))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a request thread panicked".to_string()))).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut side = Side { wall_s: wall, ..Default::default() };
    let mut generated = Vec::with_capacity(answers.len());
    for answer in answers {
        let c = match answer.and_then(|v| parse_completion(&v)) {
            Ok(c) => c,
            Err(e) => return Err(server.failure(e)),
        };
        side.prefill_tokens += c.prompt_n;
        side.kv_cells += c.cache_n + c.prompt_n + c.predicted_n;
        side.generated_tokens += c.predicted_n;
        generated.push(c.tokens);
    }
    side.tps = side.generated_tokens as f64 / wall.max(1e-9);
    Ok(Run { side, tokens: generated })
}

/// The fastest of `reps` runs of each side, the two sides taking turns (so that a change in
/// the machine's speed during the run touches both alike).
fn best_pair(
    reps: usize,
    mut pardec: impl FnMut() -> CliResult<Run>,
    mut server: impl FnMut() -> CliResult<Run>,
) -> CliResult<(Run, Run)> {
    let faster = |best: Option<Run>, run: Run| match best {
        Some(b) if b.side.wall_s <= run.side.wall_s => Some(b),
        _ => Some(run),
    };
    let (mut p, mut s) = (None, None);
    for _ in 0..reps.max(1) {
        p = faster(p, pardec()?);
        s = faster(s, server()?);
    }
    p.zip(s).ok_or_else(|| internal("no measurement"))
}

/// pardec / server, each as "> 1: pardec ahead".
#[derive(Debug, Clone, Serialize)]
struct Ratios {
    /// server wall time / pardec wall time.
    wall: f64,
    /// server prefill tokens / pardec prefill tokens.
    prefill: f64,
    /// server KV cells / pardec KV cells.
    kv_cells: f64,
    /// pardec TPS / server TPS.
    tps: f64,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// One line of the comparison: totals over the questions.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// "sot" (B points expanded in parallel) or "serial" (one plain answer).
    kind: &'static str,
    /// B: points expanded per answer (1 for the serial row).
    branches: usize,
    /// Answers measured (one per question).
    answers: usize,
    /// Tokens generated per point (per answer in the serial row).
    tokens: usize,
    pardec: Side,
    server: Side,
    ratios: Ratios,
    /// Branches (or serial answers) whose tokens were identical on both sides.
    identical: usize,
    /// Branches (or serial answers) compared.
    compared: usize,
}

fn row(kind: &'static str, branches: usize, tokens: usize, pairs: &[(Run, Run)]) -> Row {
    let (mut p, mut s) = (Side::default(), Side::default());
    let (mut identical, mut compared) = (0, 0);
    for (pr, sr) in pairs {
        p.add(&pr.side);
        s.add(&sr.side);
        for (a, b) in pr.tokens.iter().zip(&sr.tokens) {
            compared += 1;
            identical += usize::from(a == b);
        }
    }
    let ratios = Ratios {
        wall: ratio(s.wall_s, p.wall_s),
        prefill: ratio(s.prefill_tokens as f64, p.prefill_tokens as f64),
        kv_cells: ratio(s.kv_cells as f64, p.kv_cells as f64),
        tps: ratio(p.tps, s.tps),
    };
    Row { kind, branches, answers: pairs.len(), tokens, pardec: p, server: s, ratios, identical, compared }
}

/// The CPU's name, from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `pardec bench --peer llama-server`.
pub(crate) fn bench(a: &BenchArgs, peer: Peer) -> CliResult<()> {
    let Peer::LlamaServer = peer;
    let binary = server_binary(a.server.as_deref())?;
    if a.sampling.params() != SamplingParams::default() || a.sampling.logprobs.is_some() {
        return Err(usage(
            "--peer compares greedy decoding on both sides: it takes no sampling options (--temp, --top-k, \
             --top-p, --min-p, --seed, the penalties, --logit-bias, --logprobs)",
        ));
    }
    let branches: Vec<usize> = a.branches.as_ref().map_or(DEFAULT_BRANCHES.to_vec(), |l| l.0.clone());
    let max_b = branches.iter().copied().max().unwrap_or(1);
    let tokens = a.tokens;
    let serial_tokens = tokens * SERIAL_FACTOR;
    let threads =
        if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads as usize };
    let model = load_model(&a.model, true)?;
    if !model.has_text_vocab() {
        return Err(CliError::Pardec(Error::UnsupportedModel(
            "--peer needs a model with a tokenizer (it writes a skeleton in words)".into(),
        )));
    }
    let started = Instant::now();
    let batch = SessionParams::default().n_batch;
    // No adapters (--peer takes no --lora) and greedy sampling, as the server decodes.
    let session = SessionArgs { threads: a.threads, lora: &[], sampling: None, selection: a.selection };
    let base = SessionParams {
        n_ctx: 4096,
        n_batch: batch,
        max_branches: (max_b as u32).max(1),
        sampling: SamplingParams::greedy(),
        ..session.params(&model)?
    };
    // The skeletons, once per question, by pardec.
    let fmt = SkeletonFormat::sot();
    let mut s = Session::new(&model, base.clone())?;
    let mut questions = Vec::new();
    for (i, &q) in QUESTIONS.iter().enumerate() {
        progress::phase(&format!("bench --peer: skeleton {}/{} (pardec)", i + 1, QUESTIONS.len()));
        questions.push(prepare(&mut s, &model, &fmt, q, max_b)?);
    }
    drop(s);
    // One context size for both, large enough that each of the server's slots (a share of
    // it) holds the longest request.
    let longest = questions
        .iter()
        .flat_map(|q| {
            let sot = q.prefix.len() + q.point_prefixes.iter().map(Vec::len).max().unwrap_or(0) + tokens;
            [sot, q.serial_prompt.len() + serial_tokens]
        })
        .max()
        .unwrap_or(0)
        + 8;
    let ctx = (longest * max_b).next_multiple_of(256).max(4096) as u32;
    let mut s = Session::new(&model, SessionParams { n_ctx: ctx, ..base })?;
    progress::phase(&format!("bench --peer: starting {}", binary.display()));
    let version = Server::version(&binary);
    let mut server =
        Server::start(&ServerConfig { binary: &binary, model: model.path(), ctx, threads, parallel: max_b, batch })?;

    let mut rows = Vec::new();
    for &b in &branches {
        progress::phase(&format!("bench --peer: SoT B = {b}: warm-up"));
        pardec_sot(&mut s, &questions[0], b, tokens)?;
        server_requests(&mut server, &sot_prompts(&questions[0], b), tokens)?;
        let mut pairs = Vec::new();
        for (i, q) in questions.iter().enumerate() {
            progress::phase(&format!("bench --peer: SoT B = {b}: question {}/{}", i + 1, questions.len()));
            let prompts = sot_prompts(q, b);
            pairs.push(best_pair(
                a.reps,
                || pardec_sot(&mut s, q, b, tokens),
                || server_requests(&mut server, &prompts, tokens),
            )?);
        }
        rows.push(row("sot", b, tokens, &pairs));
    }
    progress::phase("bench --peer: serial answers: warm-up");
    pardec_serial(&mut s, &questions[0].serial_prompt, serial_tokens)?;
    server_requests(&mut server, std::slice::from_ref(&questions[0].serial_prompt), serial_tokens)?;
    let mut pairs = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        progress::phase(&format!("bench --peer: serial answers: question {}/{}", i + 1, questions.len()));
        let prompts = std::slice::from_ref(&q.serial_prompt);
        pairs.push(best_pair(
            a.reps,
            || pardec_serial(&mut s, &q.serial_prompt, serial_tokens),
            || server_requests(&mut server, prompts, serial_tokens),
        )?);
    }
    rows.push(row("serial", 1, serial_tokens, &pairs));
    drop(server);
    progress::phase(&format!("bench --peer: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    report(
        a,
        &model,
        &binary,
        &version,
        &questions,
        &rows,
        Setup { ctx, threads, parallel: max_b, tokens, serial_tokens },
    )
}

/// Every point's full prompt for the server: the shared prefix and the point's prefix.
fn sot_prompts(q: &Question, b: usize) -> Vec<Vec<Token>> {
    q.point_prefixes[..b]
        .iter()
        .map(|p| {
            let mut prompt = q.prefix.clone();
            prompt.extend_from_slice(p);
            prompt
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Setup {
    ctx: u32,
    threads: usize,
    parallel: usize,
    tokens: usize,
    serial_tokens: usize,
}

fn report(
    a: &BenchArgs,
    model: &Model,
    binary: &Path,
    version: &str,
    questions: &[Question],
    rows: &[Row],
    setup: Setup,
) -> CliResult<()> {
    let cpu = cpu_name();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if a.json {
        let qs: Vec<Value> = questions.iter().map(|q| json!({ "question": q.text, "points": q.points })).collect();
        let out = json!({
            "model": model.path().display().to_string(),
            "peer": "llama-server",
            "server": binary.display().to_string(),
            "server_version": version,
            "cpu": cpu,
            "cores": cores,
            "threads": setup.threads,
            "ctx": setup.ctx,
            "parallel": setup.parallel,
            "tokens_per_point": setup.tokens,
            "serial_tokens": setup.serial_tokens,
            "reps": a.reps,
            "questions": qs,
            "results": rows,
        });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · llama-server {} ({}) · {} threads · -c {} · --parallel {} · {} questions · best of {}",
        model.path().display(),
        SERVER_BUILD,
        if version.is_empty() { binary.display().to_string() } else { version.to_string() },
        setup.threads,
        setup.ctx,
        setup.parallel,
        questions.len(),
        a.reps
    );
    outln!(
        "greedy, EOG banned, {} tokens per point, {} per serial answer · machine: {}{} cores",
        setup.tokens,
        setup.serial_tokens,
        if cpu.is_empty() { String::new() } else { format!("{cpu}, ") },
        cores
    );
    for (i, q) in questions.iter().enumerate() {
        let reused = setup.parallel.saturating_sub(q.points.len());
        outln!(
            "question {}: {:?} · {} points{}",
            i + 1,
            q.text,
            q.points.len(),
            if reused > 0 { format!(" (at B > {} points repeat in order)", q.points.len()) } else { String::new() }
        );
    }
    let pair = |p: String, s: String| format!("{p} / {s}");
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.kind == "sot" { format!("SoT B={}", r.branches) } else { "serial".to_string() },
                pair(r.pardec.generated_tokens.to_string(), r.server.generated_tokens.to_string()),
                pair(format!("{:.2}", r.pardec.wall_s), format!("{:.2}", r.server.wall_s)),
                format!("{:.2}", r.ratios.wall),
                pair(r.pardec.prefill_tokens.to_string(), r.server.prefill_tokens.to_string()),
                format!("{:.2}", r.ratios.prefill),
                pair(r.pardec.kv_cells.to_string(), r.server.kv_cells.to_string()),
                format!("{:.2}", r.ratios.kv_cells),
                pair(format!("{:.1}", r.pardec.tps), format!("{:.1}", r.server.tps)),
                format!("{:.2}", r.ratios.tps),
                format!("{}/{}", r.identical, r.compared),
            ]
        })
        .collect();
    print_table(&["row", "tokens", "wall s", "×", "prefill", "×", "KV cells", "×", "t/s", "×", "same"], &table);
    outln!("each cell: pardec / llama-server, totals over the questions · ×: the ratio, > 1 where pardec is ahead");
    outln!("wall s: to the complete answer, prefill included (SoT: the expansion of the given skeleton) · prefill:");
    outln!("prompt tokens computed (server: Σ timings.prompt_n) · KV cells: holding the answers at their end (server:");
    outln!("Σ cache_n + prompt_n + predicted_n, each slot its own prompt) · t/s: tokens / wall s · same: branches");
    outln!("(answers) with identical tokens on both sides");
    let behind: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == "serial" || r.branches >= 4)
        .flat_map(|r| {
            let name = if r.kind == "sot" { format!("SoT B={}", r.branches) } else { "serial".into() };
            let mut lost = Vec::new();
            if r.ratios.wall < 1.0 {
                lost.push(format!("{name} wall time"));
            }
            if r.kind == "sot" && r.ratios.prefill < 1.0 {
                lost.push(format!("{name} prefill"));
            }
            if r.kind == "sot" && r.ratios.kv_cells < 1.0 {
                lost.push(format!("{name} KV cells"));
            }
            lost
        })
        .collect();
    if behind.is_empty() {
        outln!("pardec is ahead (or level) on every row at B ≥ 4 and in serial wall time");
    } else {
        outln!("llama-server is ahead on: {}", behind.join(", "));
    }
    Ok(())
}
