//! The `pardec` command line, run as a user would: the argument parser, flags, and the
//! streamed output (`--stream`, `--json`, a terminal, a closed pipe). The commands' results
//! are in `cli.rs`.

// The workspace's shared test helpers (model paths) live with the library's tests.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;

use common::models;
use support::{json, pardec, pardec_no_model};

#[test]
fn every_subcommand_has_its_own_help() {
    let commands: &[(&str, &[&str])] = &[
        (
            "run",
            &[
                "--prompt",
                "--branch",
                "--then",
                "--branch-stop",
                "--stop",
                "--system",
                "--raw",
                "--n-gpu-layers",
                "--stream",
                "--protocol",
                "--response-prefix",
                "--lora",
                "--selection",
                "--rpc",
            ],
        ),
        ("bench", &["--branches", "--tokens", "--reps", "--auto", "--json", "--selection", "--n-gpu-layers"]),
        ("layout", &["--protocol", "--rule", "--json"]),
        ("check", &["--protocol"]),
        ("score", &["--context", "--continuation", "--lora"]),
        ("equiv", &["--branches", "--tokens", "--bound", "--selection"]),
        ("rpc-server", &["--host", "--port", "--threads", "--cache"]),
        ("merge", &["--model", "--lora", "--out", "--to", "--threads"]),
    ];
    for (cmd, flags) in commands {
        for how in [vec![*cmd, "--help"], vec![*cmd, "-h"], vec!["help", *cmd]] {
            let out = pardec_no_model(&how);
            assert_eq!(out.status.code(), Some(0), "{how:?}: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("usage: pardec {cmd}")), "{how:?}:\n{text}");
            for flag in *flags {
                assert!(text.contains(flag), "{how:?} does not mention {flag}:\n{text}");
            }
        }
    }
    // The CPU build says that --n-gpu-layers does nothing there.
    #[cfg(not(any(feature = "cuda", feature = "metal", feature = "vulkan", feature = "dynamic-link")))]
    {
        let help = String::from_utf8_lossy(&pardec_no_model(&["run", "--help"]).stdout).to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("no effect in this CPU build"), "{help}");
    }
    let top = pardec_no_model(&["--help"]);
    let text = String::from_utf8_lossy(&top.stdout);
    for (cmd, _) in commands {
        assert!(text.contains(cmd), "pardec --help does not list {cmd}");
    }
}

#[test]
fn version_names_the_library_version() {
    for args in [&["--version"][..], &["-V"], &["run", "--version"]] {
        let out = pardec_no_model(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = format!("pardec {} (library pardec {}, ", env!("CARGO_PKG_VERSION"), pardec::VERSION);
        assert!(text.starts_with(&expected), "{args:?}: {text}");
    }
}

#[test]
fn usage_errors_name_the_bad_value_on_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--prompt", "x", "--branch", "a", "--temp", "warm"], "--temp"),
        (&["run", "--prompt", "x", "--branch", "a", "--top-p", "1.5"], "[0, 1]"),
        (&["run", "--prompt", "x", "--branchh", "a"], "--branch"),
        (&["run", "--prompt", "x", "--system", "s", "--raw", "--branch", "a"], "--raw"),
        (&["run", "--prompt", "x", "--branch", "a", "--protocol", "multiverse"], "--protocol"),
        (&["run", "--prompt", "x", "--branch", "a", "--response-prefix", "y"], "--response-prefix"),
        (&["run", "--prompt", "x", "--protocol", "sot", "--system", "s"], "--system"),
        (&["run", "--prompt", "x", "--protocol", "sot", "--stop", "s"], "--stop"),
        (&["equiv", "--branches", "1"], "2..=64"),
        (&["bench", "--tokens", "0"], "--tokens"),
        (&["layout", "--protocol", "multiverse", "--rule", "both"], "engine, train"),
        (&["run", "--prompt", "x", "--branch", "a", "--n-gpu-layers", "-1"], "--n-gpu-layers"),
        (&["run", "--prompt", "x", "--branch", "a", "--branch-grammar", "/nonexistent.gbnf"], "/nonexistent.gbnf"),
        (&["run", "--prompt", "x", "--protocol", "aspd", "--grammar", "json"], "--protocol"),
    ];
    for (args, names) in cases {
        let out = pardec_no_model(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("pardec: ") && err.contains(names), "{args:?}: {err}");
    }
}

#[test]
fn system_message_goes_into_the_chat_template() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--prompt",
            "Name a fruit.",
            "--branch",
            "1.",
            "--max-branch-tokens",
            "1",
            "--max-tokens",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&pardec(&args))["prompt"].as_str().unwrap().to_string()
    };
    let plain = run(&[]);
    // --n-gpu-layers is accepted everywhere (and does nothing on a CPU build).
    let with_system = run(&["--system", "You are a terse pirate.", "--n-gpu-layers", "99"]);
    assert!(!plain.contains("terse pirate"));
    assert!(with_system.contains("terse pirate"), "{with_system}");
    assert!(with_system.contains("Name a fruit."));
    // In SmolLM2's template the system turn comes first.
    assert!(with_system.find("terse pirate") < with_system.find("Name a fruit."), "{with_system}");
    assert_eq!(run(&["--raw"]), "Name a fruit.");
}

/// A word of `text` (3+ letters, not among the first two words) whose first occurrence is
/// where it stands, so a stop string on it ends the text there.
fn a_stop_word(text: &str) -> (String, usize) {
    let mut at = 0;
    for (i, word) in text.split(' ').enumerate() {
        let w: String = word.chars().take_while(|c| c.is_alphabetic()).collect();
        if i >= 2 && w.len() >= 3 && text.find(&w) == Some(at) {
            return (w, at);
        }
        at += word.len() + 1;
    }
    panic!("no stop word in {text:?}");
}

#[test]
fn stop_ends_the_trunk_where_it_writes_the_string() {
    let base = [
        "run",
        "--prompt",
        "Describe the sea in two sentences.",
        "--branch",
        "It is",
        "--max-branch-tokens",
        "4",
        "--then",
        "\nThe sea",
        "--max-tokens",
        "40",
        "--json",
    ];
    let full = json(&pardec(&base));
    let generated = full["continuation"].as_str().unwrap().strip_prefix("\nThe sea").unwrap().to_string();
    assert_eq!(full["trunk_stop"], serde_json::Value::Null);
    let (word, at) = a_stop_word(&generated);
    let mut args = base.to_vec();
    args.extend(["--stop", "zzzz-never", "--stop", word.as_str()]);
    let stopped = json(&pardec(&args));
    assert_eq!(stopped["trunk_stop"].as_str(), Some(word.as_str()));
    let cut = stopped["continuation"].as_str().unwrap().strip_prefix("\nThe sea").unwrap();
    // Greedy: the same text up to the token that completes the stop string, nothing after it.
    assert!(cut.starts_with(&generated[..at + word.len()]), "{cut:?} vs {generated:?}");
    assert!(cut.len() < generated.len() && cut.len() <= at + word.len() + 12, "{cut:?} went on past {word:?}");

    // Auto mode: the watcher ends the trunk (the library's run is cancelled there).
    let auto = [
        "run",
        "--protocol",
        "multiverse",
        "--prompt",
        "Describe the sea in two sentences.",
        "--max-tokens",
        "40",
        "--json",
    ];
    let full = json(&pardec(&auto));
    let prompt_len = full["prompt"].as_str().unwrap().len();
    let generated = full["text"].as_str().unwrap()[prompt_len..].to_string();
    let (word, at) = a_stop_word(&generated);
    let mut args = auto.to_vec();
    args.extend(["--stop", word.as_str()]);
    let stopped = json(&pardec(&args));
    assert_eq!(stopped["trunk_stop"].as_str(), Some(word.as_str()));
    let cut = &stopped["text"].as_str().unwrap()[prompt_len..];
    assert!(cut.starts_with(&generated[..at + word.len()]), "{cut:?} vs {generated:?}");
    assert!(cut.len() <= at + word.len() + 12, "{cut:?} went on past {word:?}");
}

/// The lines of `--stream --json`: every event, then the result.
fn json_lines(out: &std::process::Output) -> (Vec<serde_json::Value>, serde_json::Value) {
    assert!(out.status.success(), "pardec failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let result = lines.pop().expect("a result line");
    assert!(result.get("kind").is_none() && result["stats"].is_object(), "{result}");
    for ev in &lines {
        assert!(ev["kind"].is_string() && ev["branch"].is_string(), "{ev}");
    }
    (lines, result)
}

fn tokens_of(events: &[serde_json::Value], branch: &str) -> String {
    events
        .iter()
        .filter(|e| e["kind"] == "token" && e["branch"] == branch)
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

#[test]
fn stream_json_gives_one_object_per_event_then_the_result() {
    let (events, result) = json_lines(&pardec(&[
        "run",
        "--prompt",
        "Name two fruits.",
        "--branch",
        "1.",
        "--branch",
        "2.",
        "--max-branch-tokens",
        "6",
        "--then",
        "\nBoth",
        "--max-tokens",
        "5",
        "--stream",
        "--json",
    ]));
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "prompt");
    assert_eq!(events[1]["kind"], "fork");
    assert_eq!(events[1]["branches"], serde_json::json!(["1", "2"]));
    let join = kinds.iter().position(|k| *k == "join").expect("a join event");
    assert_eq!(events[join]["text"], "\nBoth");
    assert_eq!(events.iter().filter(|e| e["kind"] == "end").count(), 3, "two branches and the trunk end");
    // The events spell the result: prefix + tokens per branch, join text + tokens on the trunk.
    for (b, out) in ["1", "2"].iter().zip(result["branches"].as_array().unwrap()) {
        let prefix = events.iter().find(|e| e["kind"] == "prefix" && e["branch"] == *b).unwrap();
        assert_eq!(
            format!("{}{}", prefix["text"].as_str().unwrap(), tokens_of(&events, b)),
            out["text"].as_str().unwrap()
        );
        assert!(
            events[..join].iter().any(|e| e["kind"] == "token" && e["branch"] == *b),
            "branch {b} tokens come before the join"
        );
    }
    assert_eq!(format!("\nBoth{}", tokens_of(&events, "")), result["continuation"].as_str().unwrap());
    assert!(events[join..].iter().all(|e| e["kind"] != "token" || e["branch"] == ""), "only the trunk after the join");

    // Auto mode: the model's fork and the join come as events too.
    let (events, result) = json_lines(&pardec(&[
        "run",
        "--protocol",
        "multiverse",
        "--prompt",
        "Two fruits.",
        "--max-tokens",
        "24",
        "--max-branch-tokens",
        "8",
        "--response-prefix",
        "<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>",
        "--stream",
        "--json",
    ]));
    let fork = events.iter().find(|e| e["kind"] == "fork").expect("a fork event");
    assert_eq!(fork["branches"], serde_json::json!(["1", "2"]));
    assert!(events.iter().any(|e| e["kind"] == "join"));
    assert_eq!(events.iter().find(|e| e["kind"] == "prefix").unwrap()["branch"], "", "the response prefix");
    for b in result["branches"].as_array().unwrap() {
        let label = b["label"].as_str().unwrap();
        let streamed = tokens_of(&events, label);
        assert!(
            !streamed.is_empty() && b["text"].as_str().unwrap().ends_with(&streamed),
            "branch {label}: {streamed:?} vs {b}"
        );
    }
}

/// `--logprobs N`: the --json result carries each node's generated tokens with their
/// log-probabilities (`logprobs` per branch, `trunk_logprobs`), the very objects the
/// `--stream --json` token events carry one by one; without it neither field is there.
#[test]
fn run_json_carries_the_log_probabilities_of_the_stream_events() {
    let run = [
        "run",
        "--prompt",
        "Name two fruits.",
        "--branch",
        "1.",
        "--branch",
        "2.",
        "--max-branch-tokens",
        "5",
        "--then",
        "\nBoth",
        "--max-tokens",
        "4",
    ];
    let with: Vec<&str> = run.iter().copied().chain(["--logprobs", "3", "--json"]).collect();
    let result = json(&pardec(&with));
    let streamed: Vec<&str> = run.iter().copied().chain(["--logprobs", "3", "--stream", "--json"]).collect();
    let (events, streamed_result) = json_lines(&pardec(&streamed));
    let logprobs_of = |label: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "token" && e["branch"] == label && e.get("logprob").is_some())
            .map(|e| e["logprob"].clone())
            .collect()
    };
    let branches = result["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 2);
    for b in branches {
        let label = b["label"].as_str().unwrap();
        let lps = b["logprobs"].as_array().unwrap_or_else(|| panic!("branch {label} has no logprobs: {b}"));
        assert!((1..=5).contains(&lps.len()), "{b}");
        for lp in lps {
            assert!(lp["token"].is_i64() && lp["logprob"].as_f64().is_some_and(|l| l <= 0.0), "{lp}");
            assert_eq!(lp["top"].as_array().map(Vec::len), Some(3), "{lp}");
        }
        assert_eq!(lps, &logprobs_of(label), "branch {label}: the result differs from the stream events");
    }
    let trunk = result["trunk_logprobs"].as_array().expect("trunk_logprobs");
    assert!((1..=4).contains(&trunk.len()), "{trunk:?}");
    assert_eq!(trunk, &logprobs_of(""), "the trunk: the result differs from the stream events");
    assert_eq!(streamed_result["branches"], result["branches"]);
    assert_eq!(streamed_result["trunk_logprobs"], result["trunk_logprobs"]);

    // The negative control: without --logprobs the fields are absent, and the tokens the same.
    let without: Vec<&str> = run.iter().copied().chain(["--json"]).collect();
    let plain = json(&pardec(&without));
    assert!(plain.get("trunk_logprobs").is_none(), "{plain}");
    for b in plain["branches"].as_array().unwrap() {
        assert!(b.get("logprobs").is_none(), "{b}");
    }
    assert_eq!(plain["text"], result["text"]);

    // Auto mode's result carries them too.
    let auto = json(&pardec(&[
        "run",
        "--protocol",
        "multiverse",
        "--prompt",
        "Two fruits.",
        "--max-tokens",
        "24",
        "--max-branch-tokens",
        "8",
        "--response-prefix",
        "<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>",
        "--logprobs",
        "1",
        "--json",
    ]));
    let auto_branches = auto["branches"].as_array().unwrap();
    assert!(!auto_branches.is_empty(), "{auto}");
    for b in auto_branches {
        assert!(b["logprobs"].as_array().is_some_and(|l| !l.is_empty()), "{b}");
    }
    assert!(auto["trunk_logprobs"].as_array().is_some_and(|l| !l.is_empty()), "{auto}");
}

#[test]
fn stream_into_a_pipe_logs_one_line_per_event() {
    let out = pardec(&[
        "run",
        "--prompt",
        "Name two fruits.",
        "--branch",
        "1.",
        "--branch",
        "2.",
        "--max-branch-tokens",
        "4",
        "--then",
        "\nBoth",
        "--max-tokens",
        "3",
        "--stream",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("prompt \""), "{text}");
    assert_eq!(lines[1], "fork trunk -> 1 2");
    assert_eq!(lines[2], "prefix 1 \"1.\"");
    assert_eq!(lines[3], "prefix 2 \"2.\"");
    for prefix in [
        "token 1 \"",
        "token 2 \"",
        "end 1 ",
        "end 2 ",
        "join trunk kept 2 \"\\nBoth\"",
        "token trunk \"",
        "end trunk ",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(prefix)), "no line starts with {prefix:?}:\n{text}");
    }
    // Every event is one line (the text is quoted), then the usual sections.
    let sections = lines.iter().position(|l| *l == "── prompt ──").expect("the sections after the log");
    assert!(
        lines[..sections]
            .iter()
            .all(|l| ["prompt ", "fork ", "prefix ", "token ", "end ", "join "].iter().any(|k| l.starts_with(k))),
        "{text}"
    );
    assert!(!text.contains("[1]"), "no interleaved [label] dumps:\n{text}");
}

/// Runs `pardec` with stdout on a pseudo-terminal of `cols` columns; returns what it wrote.
#[cfg(target_os = "linux")]
fn pardec_on_a_terminal(args: &[&str], cols: u16) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain POSIX calls; every descriptor is checked and owned once.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "open the pty's slave");
        let ws = libc::winsize { ws_row: 40, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        assert_eq!(libc::ioctl(s, libc::TIOCSWINSZ, &ws), 0);
        (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pardec"));
    cmd.args(args)
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .stdout(std::process::Stdio::from(slave))
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the parent's copy of the slave: reads end (EIO) once the child's are closed
    let mut master = master;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let status = child.wait().unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(target_os = "linux")]
#[test]
fn stream_on_a_terminal_redraws_one_line_per_branch() {
    let (status, screen) = pardec_on_a_terminal(
        &[
            "run",
            "--prompt",
            "Name two fruits.",
            "--branch",
            "1.",
            "--branch",
            "2.",
            "--max-branch-tokens",
            "30",
            "--then",
            "\nBoth",
            "--max-tokens",
            "3",
            "--stream",
        ],
        40,
    );
    assert!(status.success(), "{screen}");
    assert!(screen.contains("\x1b[?7l"), "wrapping is off while the branch lines are drawn");
    assert!(screen.contains("\x1b[2A"), "the two branch lines are redrawn in place");
    assert!(screen.contains("[1] \x1b[0m1.") && screen.contains("[2] \x1b[0m2."), "{screen:?}");
    assert!(screen.contains("── continuation ──"));
    // Each drawn branch line fits the 40 columns (its text cut to the tail that fits).
    for line in screen.split("\x1b[2K").filter(|l| l.contains("[1]") || l.contains("[2]")) {
        let line = line.split("\r\n").next().unwrap();
        let visible: String = line
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| if i == 0 { part } else { part.split_once('m').map_or("", |(_, rest)| rest) })
            .collect();
        assert!(visible.chars().count() < 40, "{visible:?} is wider than the terminal");
        assert!(!visible.contains('\n'));
    }
}

/// `pardec` with stdout a pipe whose reader is already gone: every write meets EPIPE.
#[cfg(unix)]
fn pardec_into_a_closed_pipe(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe fills two new descriptors; each is owned (or closed) once.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_run_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let run = ["run", "--prompt", "x", "--branch", "a", "--max-branch-tokens", "2", "--max-tokens", "2"];
    let stream: Vec<&str> = run.iter().copied().chain(["--stream", "--json"]).collect();
    for args in [
        &run[..],
        &stream,
        &["run", "--help"],
        &["--version"],
        &["bench", "--branches", "1", "--tokens", "1", "--reps", "1"],
    ] {
        let out = pardec_into_a_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: status {:?}, stderr {stderr}", out.status);
    }
}

#[test]
fn sot_skeleton_keeps_to_max_tokens() {
    let v = json(&pardec(&[
        "run",
        "--protocol",
        "sot",
        "--prompt",
        "Give three tips for sleeping better.",
        "--max-tokens",
        "6",
        "--max-branch-tokens",
        "3",
        "--json",
    ]));
    let st = &v["stats"];
    let trunk = st["tokens_total"].as_u64().unwrap() - st["tokens_branch"].as_u64().unwrap();
    let points = v["points"].as_array().expect("sot reports its points").len() as u64;
    // The trunk writes the skeleton (and, only if it was unusable, a serial answer of at most
    // --max-branch-tokens per point, three at least). The default skeleton budget was 120.
    let bound = if v["serial_fallback"] == true { 6 + 3 * points.max(3) } else { 6 };
    assert!(trunk <= bound, "the trunk wrote {trunk} tokens (bound {bound}): {v}");
    assert!(trunk >= 1);
    for b in v["branches"].as_array().unwrap() {
        assert!(b["tokens"].as_u64().unwrap() <= 3 + 8, "{b}"); // the point's prefix, then 3 tokens
    }
}

#[test]
fn a_model_without_a_chat_template_runs_raw_with_a_warning() {
    use common::tiny_model::{ByteVocab, TinyConfig, TinyModel};
    let dir = std::env::temp_dir().join(format!("pardec-cli-no-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let vocab = ByteVocab { specials: vec![] };
    TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..TinyConfig::default() })
        .write_gguf_bytes(&path, &vocab)
        .unwrap();
    let model = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            model,
            "--prompt",
            "hi there",
            "--branch",
            "a",
            "--max-branch-tokens",
            "2",
            "--max-tokens",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        pardec(&args)
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("warning") && stderr.contains("no chat template"), "{stderr}");
    assert!(stderr.contains("--raw"), "the warning names the flag that silences it: {stderr}");
    assert_eq!(json(&out)["prompt"], "hi there");
    let with_system = run(&["--system", "Be brief."]);
    assert_eq!(json(&with_system)["prompt"], "Be brief.\n\nhi there");
    let raw = run(&["--raw"]);
    assert_eq!(json(&raw)["prompt"], "hi there");
    assert!(!String::from_utf8_lossy(&raw.stderr).contains("warning"), "{}", String::from_utf8_lossy(&raw.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_prints_a_table_and_progress_on_stderr() {
    let out = pardec(&["bench", "--branches", "1,2", "--tokens", "2", "--reps", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for debug in ["Host", "Device {", "SamplingParams", "{ ", "temperature:"] {
        assert!(!text.contains(debug), "a debug dump ({debug:?}) in:\n{text}");
    }
    assert!(text.contains("selection host") && text.contains("sampling greedy"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(rows.len(), 2, "{text}");
    let header = text.lines().find(|l| l.contains("serial t/s")).expect("a header");
    assert_eq!(header.split_whitespace().next(), Some("B"));
    // stderr is a pipe here: progress comes as plain lines, one per row.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench: B = 1 (1/2)") && err.contains("bench: B = 2 (2/2)"), "{err}");
    assert!(!err.contains('\r'), "no redrawn line outside a terminal: {err:?}");

    let out = pardec(&["equiv", "--branches", "2", "--tokens", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("equiv: 2 branches in one batch vs each alone (1/2)") && err.contains("(2/2)"), "{err}");
}
