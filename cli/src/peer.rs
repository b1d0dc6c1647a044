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

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pardec::auto::sot::SotParams;
use pardec::protocol::SkeletonFormat;
use pardec::{BranchSpec, Error, Model, NodeId, RunLimits, SamplingParams, Selection, Session, SessionParams, Silent, Token};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{out, print_table, progress, to_json, usage, BenchArgs, CliError, CliResult};

/// The engines `bench --peer` compares pardec with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// llama.cpp's llama-server (scripts/build-llama-server.sh builds it)
    LlamaServer,
}

/// The llama.cpp build scripts/build-llama-server.sh makes.
const SERVER_BUILD: &str = "b11434";

/// The questions every row answers (the first one also warms each side up).
const QUESTIONS: [&str; 3] = [
    "How can I sleep better?",
    "What should I know before adopting a dog?",
    "How do I prepare for a job interview?",
];

/// Branch counts when --branches is not given.
const DEFAULT_BRANCHES: [usize; 3] = [2, 4, 8];

/// Tokens of the serial answer per token of a point's budget.
const SERIAL_FACTOR: usize = 4;

/// How long llama-server may take to load the model and answer /health.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Where scripts/build-llama-server.sh installs the server.
fn default_server_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("pardec").join(format!("llama-server-{SERVER_BUILD}")).join("llama-server")
}

fn backend(msg: impl Into<String>) -> CliError {
    CliError::Pardec(Error::Backend(msg.into()))
}

/// The server binary: `--server PATH`, else the cached build.
fn server_binary(given: Option<&Path>) -> CliResult<PathBuf> {
    match given {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(CliError::Pardec(Error::InvalidArgument(format!(
            "--server {}: no such file (build it with scripts/build-llama-server.sh)",
            path.display()
        )))),
        None => {
            let path = default_server_path();
            if path.is_file() {
                Ok(path)
            } else {
                Err(CliError::Pardec(Error::InvalidArgument(format!(
                    "no llama-server at {}: run scripts/build-llama-server.sh, or pass --server PATH",
                    path.display()
                ))))
            }
        }
    }
}

// ───────────────────────────── HTTP/1.1 client ─────────────────────────────

/// A minimal HTTP/1.1 client for one local server: one connection per request
/// (`Connection: close`), JSON bodies.
#[derive(Clone, Copy, Debug)]
struct Client {
    addr: SocketAddr,
}

impl Client {
    /// Sends one request; returns the status code and the body.
    fn request(&self, method: &str, path: &str, body: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        let what = format!("{method} {path}");
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .map_err(|e| format!("{what}: cannot connect to {}: {e}", self.addr))?;
        let setup = stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true));
        setup.map_err(|e| format!("{what}: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .map_err(|e| format!("{what}: sending the request: {e}"))?;
        let mut raw = Vec::new();
        if let Err(e) = stream.read_to_end(&mut raw) {
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
                format!("{what}: no answer within {} s", timeout.as_secs())
            } else {
                format!("{what}: reading the answer: {e}")
            });
        }
        parse_response(&raw).map_err(|e| format!("{what}: {e}"))
    }

    /// POSTs a JSON body and parses a 200 answer's JSON; other codes are errors with the
    /// server's message.
    fn post_json(&self, path: &str, body: &str) -> Result<Value, String> {
        let (code, body) = self.request("POST", path, body, REQUEST_TIMEOUT)?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if code != 200 {
            let msg = value
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_string).or_else(|| Some(e.to_string())))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(format!("POST {path}: HTTP {code}: {msg}"));
        }
        value.ok_or_else(|| format!("POST {path}: the answer is not JSON"))
    }
}

/// Splits a complete HTTP/1.x response into its status code and body (Content-Length,
/// chunked, or everything up to the end of the connection).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    if raw.is_empty() {
        return Err("the server closed the connection without an answer".into());
    }
    let end = find(raw, b"\r\n\r\n").ok_or("the answer ended inside its header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the answer's header is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(format!("not an HTTP/1.x answer: {:?}", status.chars().take(60).collect::<String>()));
    }
    let code = parts.next().and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| format!("bad status line {status:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(format!("the answer ended after {} of its {n} bytes", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok((code, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The body of a chunked transfer encoding.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("a chunked answer ended inside a chunk size")?;
        let line = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size".to_string())?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("a chunked answer ended inside a chunk".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ───────────────────────────── the server process ─────────────────────────────

/// A running llama-server, killed (and its folder removed) when dropped: on success, on an
/// error and on a panic. On Linux it also dies with pardec (PR_SET_PDEATHSIG).
struct Server {
    child: Child,
    client: Client,
    dir: PathBuf,
    slots: usize,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How llama-server is started: the same model, context, threads and batch size as pardec's
/// session.
struct ServerConfig<'a> {
    binary: &'a Path,
    model: &'a Path,
    ctx: u32,
    threads: usize,
    parallel: usize,
    batch: u32,
}

impl Server {
    fn start(c: &ServerConfig) -> CliResult<Server> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| backend(format!("no free port on 127.0.0.1: {e}")))?
            .port();
        let dir = std::env::temp_dir().join(format!("pardec-peer-{}-{port}", std::process::id()));
        let slots_dir = dir.join("slots");
        std::fs::create_dir_all(&slots_dir).map_err(|e| backend(format!("creating {}: {e}", slots_dir.display())))?;
        let log = std::fs::File::create(dir.join("server.log"))
            .map_err(|e| backend(format!("creating {}: {e}", dir.join("server.log").display())))?;
        let log_err = log.try_clone().map_err(|e| backend(format!("server log: {e}")))?;
        let mut cmd = Command::new(c.binary);
        cmd.arg("-m").arg(c.model);
        let (ctx, threads, parallel, batch) = (c.ctx.to_string(), c.threads.to_string(), c.parallel.to_string(), c.batch.to_string());
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &ctx, "-t", &threads, "-tb", &threads, "--parallel", &parallel])
            .args(["-b", &batch, "-ub", &batch, "-ngl", "0", "-fa", "auto", "--fit", "off"])
            .args(["--cache-ram", "0", "--no-webui"])
            .arg("--slot-save-path")
            .arg(&slots_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches nothing of the parent's state; it
            // runs in the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    Ok(())
                });
            }
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(backend(format!("cannot start {}: {e}", c.binary.display())));
            }
        };
        let mut server = Server { child, client: Client { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)) }, dir, slots: c.parallel };
        server.wait_ready()?;
        Ok(server)
    }

    /// Waits until GET /health answers 200 (the model is loaded).
    fn wait_ready(&mut self) -> CliResult<()> {
        let started = Instant::now();
        loop {
            if let Some(msg) = self.exited() {
                return Err(backend(format!("llama-server {msg} before it was ready{}", self.log_tail())));
            }
            if let Ok((200, _)) = self.client.request("GET", "/health", "", Duration::from_secs(5)) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(backend(format!(
                    "llama-server did not answer /health within {} s{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// "exited with ..." when the process has ended.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("exited ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for ({e})")),
        }
    }

    /// The end of the server's log, for error messages (one line).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = lines[lines.len().saturating_sub(2)..].join(" | ");
        let tail: String = tail.chars().take(300).collect();
        format!("; its log ends: {tail}")
    }

    /// An error of a request, told apart from the server having died.
    fn failure(&mut self, err: String) -> CliError {
        // A dying server may close connections a moment before it is reaped.
        for _ in 0..20 {
            if let Some(msg) = self.exited() {
                return backend(format!("llama-server {msg} during the run ({err}){}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        backend(format!("llama-server: {err}"))
    }

    /// Empties every slot, so that no request finds its prefix cached from an earlier one.
    fn erase_slots(&mut self) -> CliResult<()> {
        for id in 0..self.slots {
            if let Err(e) = self.client.post_json(&format!("/slots/{id}?action=erase"), "{}") {
                return Err(self.failure(e));
            }
        }
        Ok(())
    }

    /// `llama-server --version`'s version line.
    fn version(binary: &Path) -> String {
        let out = Command::new(binary).arg("--version").stdin(Stdio::null()).output();
        let Ok(out) = out else { return String::new() };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.lines().find(|l| l.starts_with("version")).unwrap_or("").trim().to_string()
    }
}

/// What one completion request reported.
#[derive(Debug, Clone)]
struct Completion {
    /// The generated token ids.
    tokens: Vec<Token>,
    /// Prompt tokens the server computed.
    prompt_n: u64,
    /// Prompt tokens it found in the slot's cache.
    cache_n: u64,
    /// Tokens it generated.
    predicted_n: u64,
}

fn parse_completion(v: &Value) -> Result<Completion, String> {
    let t = v.get("timings").ok_or("the answer has no timings")?;
    let num = |k: &str| t.get(k).and_then(Value::as_u64).ok_or_else(|| format!("the answer has no timings.{k}"));
    let tokens = match v.get("tokens").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .map(|x| x.as_i64().and_then(|i| Token::try_from(i).ok()).ok_or("a generated token is not a token id"))
            .collect::<Result<Vec<Token>, _>>()?,
        None => Vec::new(),
    };
    Ok(Completion { tokens, prompt_n: num("prompt_n")?, cache_n: num("cache_n")?, predicted_n: num("predicted_n")? })
}

/// One /completion request body: greedy (top-k 1), EOG banned, exactly `n_predict` tokens.
fn completion_body(prompt: &[Token], n_predict: usize) -> String {
    json!({
        "prompt": prompt,
        "n_predict": n_predict,
        "temperature": 0.0,
        "top_k": 1,
        "samplers": ["top_k"],
        "ignore_eos": true,
        "cache_prompt": true,
        "return_tokens": true,
        "stream": false,
    })
    .to_string()
}

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
fn prepare(s: &mut Session, model: &Model, fmt: &SkeletonFormat, text: &'static str, max_b: usize) -> CliResult<Question> {
    s.clear();
    let request = fmt.request_prompt(text);
    let prompt = model.apply_chat_template(&[("user", &request)]).unwrap_or(request);
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
        let handles: Vec<_> = bodies.iter().map(|body| scope.spawn(move || client.post_json("/completion", body))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a request thread panicked".to_string())))
            .collect()
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
    p.zip(s).ok_or_else(|| crate::internal("no measurement"))
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
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
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
    let threads = if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads as usize };
    let selection = a.selection.unwrap_or(Selection::Host);
    let model = crate::load_model(&a.model, true)?;
    if !model.has_text_vocab() {
        return Err(CliError::Pardec(Error::UnsupportedModel(
            "--peer needs a model with a tokenizer (it writes a skeleton in words)".into(),
        )));
    }
    let started = Instant::now();
    let batch = SessionParams::default().n_batch;
    let base = SessionParams {
        n_ctx: 4096,
        n_batch: batch,
        max_branches: (max_b as u32).max(1),
        n_threads: a.threads,
        selection,
        sampling: SamplingParams::greedy(),
        ..Default::default()
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
    let mut server = Server::start(&ServerConfig {
        binary: &binary,
        model: model.path(),
        ctx,
        threads,
        parallel: max_b,
        batch,
    })?;

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
    report(a, &model, &binary, &version, &questions, &rows, Setup { ctx, threads, parallel: max_b, tokens, serial_tokens })
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
    print_table(
        &["row", "tokens", "wall s", "×", "prefill", "×", "KV cells", "×", "t/s", "×", "same"],
        &table,
    );
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
