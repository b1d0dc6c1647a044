//! The llama-server that `bench --peer` measures against: the binary, the process (started on
//! 127.0.0.1, killed when dropped), a minimal HTTP/1.1 client, and its /completion requests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pardec::{Error, Token};
use serde_json::{json, Value};

use crate::error::{CliError, CliResult};

/// The llama.cpp build scripts/build-llama-server.sh makes.
pub(super) const SERVER_BUILD: &str = "b11434";

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
pub(super) fn server_binary(given: Option<&Path>) -> CliResult<PathBuf> {
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
pub(super) struct Client {
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
    pub(super) fn post_json(&self, path: &str, body: &str) -> Result<Value, String> {
        let (code, body) = self.request("POST", path, body, REQUEST_TIMEOUT)?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if code != 200 {
            let msg = value
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(|e| {
                    e.get("message").and_then(Value::as_str).map(str::to_string).or_else(|| Some(e.to_string()))
                })
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
pub(super) struct Server {
    child: Child,
    pub(super) client: Client,
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
pub(super) struct ServerConfig<'a> {
    pub(super) binary: &'a Path,
    pub(super) model: &'a Path,
    pub(super) ctx: u32,
    pub(super) threads: usize,
    pub(super) parallel: usize,
    pub(super) batch: u32,
}

impl Server {
    pub(super) fn start(c: &ServerConfig) -> CliResult<Server> {
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
        let (ctx, threads, parallel, batch) =
            (c.ctx.to_string(), c.threads.to_string(), c.parallel.to_string(), c.batch.to_string());
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
        let mut server = Server {
            child,
            client: Client { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)) },
            dir,
            slots: c.parallel,
        };
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
    pub(super) fn failure(&mut self, err: String) -> CliError {
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
    pub(super) fn erase_slots(&mut self) -> CliResult<()> {
        for id in 0..self.slots {
            if let Err(e) = self.client.post_json(&format!("/slots/{id}?action=erase"), "{}") {
                return Err(self.failure(e));
            }
        }
        Ok(())
    }

    /// `llama-server --version`'s version line.
    pub(super) fn version(binary: &Path) -> String {
        let out = Command::new(binary).arg("--version").stdin(Stdio::null()).output();
        let Ok(out) = out else { return String::new() };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.lines().find(|l| l.starts_with("version")).unwrap_or("").trim().to_string()
    }
}

/// What one completion request reported.
#[derive(Debug, Clone)]
pub(super) struct Completion {
    /// The generated token ids.
    pub(super) tokens: Vec<Token>,
    /// Prompt tokens the server computed.
    pub(super) prompt_n: u64,
    /// Prompt tokens it found in the slot's cache.
    pub(super) cache_n: u64,
    /// Tokens it generated.
    pub(super) predicted_n: u64,
}

pub(super) fn parse_completion(v: &Value) -> Result<Completion, String> {
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
pub(super) fn completion_body(prompt: &[Token], n_predict: usize) -> String {
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
