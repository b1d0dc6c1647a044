//! `pardec bench --peer llama-server`: its argument errors, and the whole run against a fake
//! llama-server (a small Python HTTP server answering /health, /slots and /completion with
//! made-up numbers), so that starting, talking to and stopping the server are tested without
//! the real binary.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::models;
use support::pardec;

fn one_line_error(out: &std::process::Output, code: i32, args: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line: {err}");
    assert!(err.starts_with("pardec: "), "{args:?}: {err}");
    err
}

#[test]
fn argument_errors_are_one_line() {
    let args = ["bench", "--peer", "llama-server", "--server", "/nonexistent/llama-server"];
    let err = one_line_error(&pardec(&args), 1, &args);
    assert!(err.contains("/nonexistent/llama-server") && err.contains("build-llama-server.sh"), "{err}");

    let args = ["bench", "--peer", "foo"];
    let err = one_line_error(&pardec(&args), 2, &args);
    assert!(err.contains("llama-server"), "the error should name the possible values: {err}");

    for args in [
        &["bench", "--server", "/bin/true"][..],
        &["bench", "--peer", "llama-server", "--auto"][..],
        &["bench", "--peer", "llama-server", "--temp", "0.7", "--server", "/bin/true"][..],
    ] {
        one_line_error(&pardec(args), 2, args);
    }

    // Without --server, the cached build is looked for where the build script puts it.
    let cache = tempdir("no-server");
    let out = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(["bench", "--peer", "llama-server"])
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .expect("run pardec");
    let err = one_line_error(&out, 1, &["bench", "--peer", "llama-server"]);
    let expected = cache.join("pardec/llama-server-b11434/llama-server");
    assert!(err.contains(&expected.display().to_string()) && err.contains("scripts/build-llama-server.sh"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

/// A fake llama-server: `--version`, then /health (503 twice, then 200), POST
/// /slots/N?action=erase and POST /completion, answering `n_predict` tokens with llama-server's
/// fields. It writes its pid and its arguments to files beside it. With `die_after` it exits
/// in the middle of the given /completion request.
const FAKE_SERVER: &str = r#"#!/usr/bin/env python3
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

here = os.path.dirname(os.path.abspath(__file__))
if "--version" in sys.argv:
    print("version: 1 (fake)", file=sys.stderr)
    sys.exit(0)
with open(os.path.join(here, "pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(here, "args"), "w") as f:
    json.dump(sys.argv[1:], f)
port = int(sys.argv[sys.argv.index("--port") + 1])
die_after = int(os.environ.get("FAKE_DIE_AFTER", "0"))
lock = threading.Lock()
state = {"health": 0, "completions": 0}

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            with lock:
                state["health"] += 1
                n = state["health"]
            if n <= 2:
                self.send(503, {"error": {"code": 503, "message": "Loading model"}})
            else:
                self.send(200, {"status": "ok"})
        else:
            self.send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        if self.path.startswith("/slots/") and self.path.endswith("action=erase"):
            self.send(200, {"id_slot": int(self.path.split("/")[2].split("?")[0]), "n_erased": 0})
        elif self.path == "/completion":
            with lock:
                state["completions"] += 1
                k = state["completions"]
            if die_after and k >= die_after:
                print("fake: dying on request", k, file=sys.stderr, flush=True)
                os._exit(3)
            assert req["ignore_eos"] is True and req["cache_prompt"] is True and req["samplers"] == ["top_k"]
            prompt, predict = req["prompt"], req["n_predict"]
            self.send(200, {
                "content": " x" * predict,
                "tokens": [1] * predict,
                "stop": True,
                "tokens_predicted": predict,
                "tokens_evaluated": len(prompt),
                "timings": {"cache_n": 0, "prompt_n": len(prompt), "predicted_n": predict,
                            "prompt_ms": 1.0, "predicted_ms": 1.0},
            })
        else:
            self.send(404, {"error": {"message": "not found"}})

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pardec-peer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn fake_server(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("llama-server");
    std::fs::write(&path, FAKE_SERVER).expect("write the fake server");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn gone(pid: i32) -> bool {
    // Signal 0: only checks the process exists (a zombie would still count: pardec waits).
    unsafe { libc::kill(pid, 0) != 0 }
}

fn fake_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("pid")).expect("the fake server wrote its pid").trim().parse().expect("a pid")
}

#[test]
fn runs_against_a_fake_server_and_stops_it() {
    let dir = tempdir("fake");
    let server = fake_server(&dir);
    let server_arg = server.display().to_string();
    let args = [
        "bench",
        "--peer",
        "llama-server",
        "--server",
        &server_arg,
        "--branches",
        "2,3",
        "--tokens",
        "4",
        "--reps",
        "1",
        "--threads",
        "1",
        "--json",
    ];
    let out = pardec(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["server_version"], "version: 1 (fake)");
    assert_eq!(v["parallel"], 3);
    let questions = v["questions"].as_array().unwrap().len() as u64;
    let rows = v["results"].as_array().unwrap();
    let kinds: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["kind"].as_str().unwrap(), r["branches"].as_u64().unwrap())).collect();
    assert_eq!(kinds, [("sot", 2), ("sot", 3), ("serial", 1)]);
    for r in rows {
        let b = r["branches"].as_u64().unwrap();
        let tokens = r["tokens"].as_u64().unwrap();
        let (p, s) = (&r["pardec"], &r["server"]);
        // Both sides generate exactly the budget.
        assert_eq!(p["generated_tokens"].as_u64(), Some(questions * b * tokens), "{r}");
        assert_eq!(s["generated_tokens"], p["generated_tokens"], "{r}");
        // The server computed every request's whole prompt; pardec the shared prefix once.
        let (pp, sp) = (p["prefill_tokens"].as_u64().unwrap(), s["prefill_tokens"].as_u64().unwrap());
        if b > 1 {
            assert!(sp > pp, "{r}");
        } else {
            assert_eq!(sp, pp, "the serial prompt is the same tokens on both sides: {r}");
        }
        assert_eq!(s["kv_cells"].as_u64(), Some(sp + s["generated_tokens"].as_u64().unwrap()));
        for key in ["wall", "prefill", "kv_cells", "tps"] {
            assert!(r["ratios"][key].as_f64().is_some_and(|x| x > 0.0), "ratios.{key}: {r}");
        }
        assert_eq!(r["compared"].as_u64(), Some(questions * b));
    }
    // The server got the same context, threads and slots, and is gone.
    let sargs: Vec<String> = serde_json::from_str(&std::fs::read_to_string(dir.join("args")).unwrap()).unwrap();
    let after = |flag: &str| sargs.iter().position(|a| a == flag).map(|i| sargs[i + 1].clone());
    assert_eq!(after("--parallel").as_deref(), Some("3"));
    assert_eq!(after("-t").as_deref(), Some("1"));
    assert_eq!(after("-c"), Some(v["ctx"].to_string()));
    assert_eq!(after("--host").as_deref(), Some("127.0.0.1"));
    assert!(gone(fake_pid(&dir)), "pardec left the server running");

    // The text table names both sides and every row.
    let args = [
        "bench",
        "--peer",
        "llama-server",
        "--server",
        &server_arg,
        "--branches",
        "2",
        "--tokens",
        "2",
        "--reps",
        "1",
        "--threads",
        "1",
    ];
    let out = pardec(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["SoT B=2", "serial", "pardec / llama-server", "wall s", "prefill", "KV cells"] {
        assert!(text.contains(needle), "missing {needle:?}:\n{text}");
    }
    assert!(gone(fake_pid(&dir)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_dies_mid_run_is_a_clear_error() {
    let dir = tempdir("dies");
    let server = fake_server(&dir);
    let server_arg = server.display().to_string();
    let args = [
        "bench",
        "--peer",
        "llama-server",
        "--server",
        &server_arg,
        "--branches",
        "2",
        "--tokens",
        "2",
        "--reps",
        "1",
        "--threads",
        "1",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .env("FAKE_DIE_AFTER", "2")
        .output()
        .expect("run pardec");
    // Progress lines come first (stderr is not a terminal); the error is the last line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("pardec: ")), "{stderr}");
    let err = stderr.trim_end().lines().last().unwrap_or("");
    assert!(err.contains("llama-server exited") && err.contains("during the run"), "{err}");
    assert!(err.contains("fake: dying on request 2"), "the error should quote the server's log: {err}");
    assert!(gone(fake_pid(&dir)));
    let _ = std::fs::remove_dir_all(&dir);
}
