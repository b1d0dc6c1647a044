//! Models on llama.cpp's RPC backend: `pardec rpc-server` (this crate's binary, built from the
//! vendored llama.cpp) runs on 127.0.0.1 and the library puts the default model's layers on
//! it. Through it, fork/join generation gives the local run's greedy tokens and the
//! batch-vs-alone check holds (with its leak control); a server that is down, or killed in the
//! middle of a generation, is Error::Rpc with the text so far kept, and the process lives on.
//!
//! The backend is compiled in only by a build with GGML_RPC=ON (scripts/test-rpc.sh, which
//! sets PARDEC_EXPECT_RPC=1). In the ordinary build these tests check the other side of that
//! rule: naming a server is the specific "no RPC backend" error.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::models;
use pardec::equivalence::batch_vs_alone;
use pardec::{
    BranchSpec, Error, Event, JoinMode, Model, ModelParams, NodeId, RunLimits, Session, SessionParams, Silent,
    StopReason,
};

/// Same bound as tests/real_models.rs: SmolLM2 batched vs alone is bitwise equal locally, a
/// leak between siblings moves the logits by about 0.46 of the largest.
const NOISE_BOUND: f64 = 0.15;

const PROMPT: &str = "<|im_start|>user\nName three rivers and one fact about each.<|im_end|>\n<|im_start|>assistant\n";

/// `pardec rpc-server` on a free loopback port, killed when dropped.
struct RpcServer {
    child: Child,
    endpoint: String,
}

impl RpcServer {
    fn start() -> RpcServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_pardec"))
            .args(["rpc-server", "--port", &port.to_string(), "--threads", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pardec rpc-server");
        let mut server = RpcServer { child, endpoint: format!("127.0.0.1:{port}") };
        let started = Instant::now();
        // Connecting and closing at once costs the server nothing: it drops a client that
        // sends no handshake and accepts the next.
        while TcpStream::connect(&server.endpoint).is_err() {
            assert!(server.child.try_wait().unwrap().is_none(), "pardec rpc-server exited at start");
            assert!(started.elapsed() < Duration::from_secs(30), "pardec rpc-server did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this build has the backend; a build that should have it (PARDEC_EXPECT_RPC=1)
/// and does not fails here, so the RPC run cannot pass by testing nothing.
fn rpc_built() -> bool {
    let expected = std::env::var("PARDEC_EXPECT_RPC").is_ok_and(|v| v == "1");
    let built = pardec::rpc::available();
    assert!(
        built || !expected,
        "PARDEC_EXPECT_RPC=1 but this build has no RPC backend (was llama.cpp built with GGML_RPC=ON?)"
    );
    if !built {
        // The other side of the rule: servers named in a build without the backend.
        assert_load_refused(&["127.0.0.1:1"], "GGML_RPC=ON", "a build without RPC");
    }
    built
}

fn load(servers: &[&str]) -> pardec::Result<Model> {
    let params = ModelParams { rpc_servers: servers.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    Model::load(models::model_path(models::DEFAULT_MODEL_FILE), &params)
}

/// Loading over `servers` is Error::Rpc saying `why`; `case` names the situation.
fn assert_load_refused(servers: &[&str], why: &str, case: &str) {
    match load(servers) {
        Err(Error::Rpc(m)) => assert!(m.contains(why), "{case}: {m}"),
        other => panic!("{case}: the model loaded ({:?})", other.map(|_| ())),
    }
}

fn params() -> SessionParams {
    SessionParams { n_ctx: 2048, n_threads: 2, ..Default::default() }
}

/// A fork of three branches, joined, then the trunk goes on: the token ids of the trunk and
/// of each branch.
fn fork_join_tokens(model: &Model) -> Vec<Vec<pardec::Token>> {
    let mut s = Session::new(model, params()).unwrap();
    s.prompt(PROMPT).unwrap();
    let specs: Vec<BranchSpec> = ["1.", "2.", "3."]
        .iter()
        .map(|p| BranchSpec {
            prefix: p.to_string(),
            limits: RunLimits { max_tokens: 12, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let branches = s.fork(NodeId::TRUNK, &specs).unwrap();
    s.run(&mut Silent).unwrap();
    s.join(NodeId::TRUNK, JoinMode::All, Some("\n")).unwrap();
    s.generate(&RunLimits { max_tokens: 12, ..Default::default() }, &mut Silent).unwrap();
    std::iter::once(NodeId::TRUNK).chain(branches).map(|n| s.node_tokens(n)).collect()
}

#[test]
fn through_an_rpc_server_the_tokens_and_the_equivalence_check_are_the_local_ones() {
    if !rpc_built() {
        return;
    }
    let server = RpcServer::start();
    let remote = load(&[&server.endpoint]).expect("load over RPC");
    assert_eq!(remote.rpc_servers(), vec![server.endpoint.clone()]);
    let local = load(&[]).unwrap();
    let (here, there) = (fork_join_tokens(&local), fork_join_tokens(&remote));
    let generated: usize = here.iter().map(Vec::len).sum();
    assert!(generated > 60, "the generation is too short to compare: {generated} tokens");
    assert_eq!(here, there, "greedy tokens differ between the local run and the run over RPC");

    let noise = batch_vs_alone(&remote, &params(), 4, 12, false).unwrap();
    let leak = batch_vs_alone(&remote, &params(), 4, 12, true).unwrap();
    println!("over RPC: batch vs alone {noise:.4}, with sibling leak {leak:.4} (bound {NOISE_BOUND})");
    assert!(noise <= NOISE_BOUND, "batched branches drift {noise:.4} from alone over RPC");
    assert!(leak > NOISE_BOUND, "a leak ({leak:.4}) is indistinguishable from noise over RPC");
}

#[test]
fn a_server_that_is_down_is_a_specific_error() {
    if !rpc_built() {
        return;
    }
    // A port nobody listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_load_refused(&[&format!("127.0.0.1:{port}")], "cannot connect", "a server that is down");
    // Something listening that never answers the handshake (a busy server looks the same).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = silent.local_addr().unwrap().to_string();
    assert_load_refused(&[&endpoint], "did not answer the handshake", "a server that never greets");
}

#[test]
fn a_server_lost_mid_generation_is_an_error_and_the_text_so_far_is_kept() {
    if !rpc_built() {
        return;
    }
    let mut server = RpcServer::start();
    let model = load(&[&server.endpoint]).expect("load over RPC");
    let mut s = Session::new(&model, params()).unwrap();
    s.prompt(PROMPT).unwrap();
    let specs: Vec<BranchSpec> = ["1.", "2."]
        .iter()
        .map(|p| BranchSpec {
            prefix: p.to_string(),
            limits: RunLimits { max_tokens: 200, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let branches = s.fork(NodeId::TRUNK, &specs).unwrap();
    let mut seen = 0;
    let mut kill_at_token_10 = |e: &Event<'_>| {
        if let Event::Token { .. } = e {
            seen += 1;
            if seen == 10 {
                server.kill();
            }
        }
        true
    };
    match s.run(&mut kill_at_token_10) {
        Err(Error::Rpc(m)) => assert!(m.contains("lost"), "{m}"),
        other => panic!("a generation over a killed server ended with {other:?}"),
    }
    // The tokens decoded before the loss are kept, and each branch says why it stopped.
    let kept: usize = branches.iter().map(|&b| s.node_tokens(b).len()).sum();
    assert!(kept >= 10, "only {kept} branch tokens kept");
    for &b in &branches {
        assert_eq!(s.stop_reason(b), Some(&StopReason::ServerLost));
    }
    assert!(s.transcript().text.contains("1."), "the transcript lost the branches");
    // Nothing more is decoded on the made-up answers of a server that is gone: the join's
    // text is not prefilled.
    match s.join(NodeId::TRUNK, JoinMode::All, Some("\n")) {
        Err(Error::Rpc(_)) => {}
        other => panic!("decoded the join text after the server was lost: {other:?}"),
    }
    drop(s);
    drop(model);
    // With the model freed, a new load tries the server again and finds it down.
    assert_load_refused(&[&server.endpoint], "cannot connect", "a server that was killed");
}

#[test]
fn a_hung_server_is_lost_after_pardec_rpc_timeout_s() {
    if !rpc_built() {
        return;
    }
    let server = RpcServer::start();
    let mut run = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(["run", "--rpc", &server.endpoint, "--prompt", "Write a long story about a cat.", "--stream"])
        .args(["--branch", "Once", "--branch", "In", "--max-tokens", "2000"])
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .env("PARDEC_RPC_TIMEOUT_S", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Into a pipe, --stream writes a line per event: once tokens flow, the server hangs.
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    for _ in 0..10 {
        lines.next().expect("the run ended before streaming 10 events").unwrap();
    }
    // SAFETY: signalling the child this test started; a stopped process keeps its sockets
    // open and its kernel acknowledges them, as a hung server does.
    assert_eq!(unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let rest = std::thread::spawn(move || lines.count());
    let out = run.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    rest.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 3 s"), "{err}");
    assert!(waited < Duration::from_secs(60), "the loss took {waited:?} to be reported");
}

#[test]
fn the_command_line_runs_over_rpc_and_refuses_bad_server_lists() {
    let out = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(["run", "--rpc", "127.0.0.1", "--prompt", "x", "--branch", "a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no port"), "{err}");
    if !rpc_built() {
        return;
    }
    let server = RpcServer::start();
    let run = |rpc: Option<&str>| {
        let mut args = vec![
            "run",
            "--prompt",
            "Name two colours.",
            "--branch",
            "1.",
            "--branch",
            "2.",
            "--max-tokens",
            "8",
            "--json",
        ];
        if let Some(rpc) = rpc {
            args.extend(["--rpc", rpc]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_pardec"))
            .args(&args)
            .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["text"].as_str().unwrap().to_string()
    };
    assert_eq!(run(None), run(Some(&server.endpoint)));
}
