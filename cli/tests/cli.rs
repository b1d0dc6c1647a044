//! The `pardec` command line, run as a user would: the commands and their results. The
//! argument parser, flags and streamed output are in `flags_and_streams.rs`.

// The workspace's shared test helpers (model paths) live with the library's tests.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;

use common::models;
use support::{json, pardec, pardec_no_model};

#[test]
fn run_json_reports_text_branches_and_stats() {
    let out = pardec(&[
        "run",
        "--prompt",
        "Name three fruits.",
        "--branch",
        "1. Apple:",
        "--branch",
        "2. Pear:",
        "--branch",
        "3. Plum:",
        "--max-branch-tokens",
        "12",
        "--max-tokens",
        "8",
        "--then",
        "\nAll",
        "--json",
    ]);
    let v = json(&out);
    let text = v["text"].as_str().unwrap();
    let branches = v["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 3);
    for (b, prefix) in branches.iter().zip(["1. Apple:", "2. Pear:", "3. Plum:"]) {
        let t = b["text"].as_str().unwrap();
        assert!(t.starts_with(prefix), "branch text {t:?}");
        assert!(text.contains(t), "flattened text lacks a branch");
    }
    let st = &v["stats"];
    for key in ["tokens_total", "tokens_branch", "steps", "tps", "p_tps", "dp", "abn", "parallel"] {
        assert!(st[key].is_number(), "stats.{key} missing");
    }
    assert_eq!(st["abn"].as_f64(), Some(3.0));
    assert!(st["parallel"].as_f64().unwrap() > 1.0, "three branches must give #parallel > 1");
    assert!(st["tokens_branch"].as_u64().unwrap() <= 36);
}

#[test]
fn run_prints_readable_sections() {
    let out = pardec(&[
        "run",
        "--prompt",
        "Two colours.",
        "--branch",
        "1.",
        "--branch",
        "2.",
        "--max-branch-tokens",
        "6",
        "--max-tokens",
        "4",
    ]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for section in ["── prompt ──", "── branch 1", "── branch 2", "── continuation ──", "── stats ──", "#parallel"]
    {
        assert!(s.contains(section), "missing {section:?} in:\n{s}");
    }
}

#[test]
fn bench_json_has_the_documented_fields() {
    let v = json(&pardec(&["bench", "--branches", "1,2", "--tokens", "4", "--reps", "1", "--json"]));
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, b) in rows.iter().zip([1u64, 2]) {
        assert_eq!(row["branches"].as_u64(), Some(b));
        for key in [
            "serial_tps",
            "parallel_tps",
            "raw_tps",
            "speedup",
            "engine_vs_raw",
            "kv_cells_shared",
            "kv_cells_unshared",
        ] {
            assert!(row[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive");
        }
    }
    assert_eq!(rows[0]["selection"], "host");
    // Sharing the prefix saves one prefix copy at B = 2.
    assert!(rows[1]["kv_cells_shared"].as_u64() < rows[1]["kv_cells_unshared"].as_u64());
    assert_eq!(rows[0]["kv_cells_shared"], rows[0]["kv_cells_unshared"]);
}

#[test]
fn bench_sampling_costs_measures_every_feature_at_the_largest_b() {
    let v =
        json(&pardec(&["bench", "--sampling-costs", "--branches", "1,3", "--tokens", "4", "--reps", "1", "--json"]));
    let rows = v["results"].as_array().unwrap();
    let features: Vec<&str> = rows.iter().map(|r| r["feature"].as_str().unwrap()).collect();
    assert_eq!(features.len(), 6, "{features:?}");
    for (prefix, row) in ["none", "penalties", "logit bias", "log-probs", "stop strings", "grammar"].iter().zip(rows) {
        assert!(row["feature"].as_str().unwrap().starts_with(prefix), "{row}");
        assert_eq!(row["branches"], 3, "{row}");
        // Every branch sampled tokens (a grammar may end one early, never before its first).
        assert!(row["tokens"].as_u64().is_some_and(|t| (3..=12).contains(&t)), "{row}");
        assert!(row["host_us_per_token"].as_f64().is_some_and(|x| x > 0.0), "{row}");
    }
    assert_eq!(rows[0]["extra_us_per_token"], 0.0);
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let cases: &[(&[&str], i32)] = &[
        (&["run", "--prompt", "x"], 2),
        (&["run", "--prompt", "x", "--branch", "a", "--max-tokens", "lots"], 2),
        (&["frobnicate"], 2),
        (&["bench", "--branches", "0"], 2),
        (&["bench", "--selection", "gpu"], 2),
        (&["bench", "--selection", "device:0"], 2),
        (&["run", "--prompt", "x", "--branch", "a", "--selection", "device:999999999"], 1),
        (&["run", "--model", "/nonexistent.gguf", "--prompt", "x", "--branch", "a"], 1),
        (&["run", "--model", "Cargo.toml", "--prompt", "x", "--branch", "a"], 1),
        // A grammar file that is not GBNF: the library's error, before anything is decoded.
        (&["run", "--prompt", "x", "--branch", "a", "--branch-grammar", "Cargo.toml"], 1),
    ];
    for (args, code) in cases {
        let out = pardec(args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line: {err}");
        assert!(err.starts_with("pardec: "));
    }
}

const MULTIVERSE: &str = "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n<Outline>2: B</Outline>\n</Goal>\n<Path>\n1: x y</Path>\n<Path>\n2: z</Path>\n<Conclusion>\nok\n</Conclusion>\n</Parallel>\n";

/// `pardec` on the default model with its standard streams piped, `stdin` written and closed.
fn spawn_with_stdin(args: &[&str], stdin: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child
}

fn pardec_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    spawn_with_stdin(args, stdin).wait_with_output().unwrap()
}

#[test]
fn layout_json_gives_shared_branch_positions_and_sibling_invisibility() {
    let v = json(&pardec_stdin(&["layout", "--protocol", "multiverse", "--json"], MULTIVERSE));
    let tokens = v["tokens"].as_array().unwrap();
    let visible = v["visible"].as_array().unwrap();
    assert_eq!(tokens.len(), visible.len());
    let first = |b: &str| tokens.iter().position(|t| t["branch"] == b).unwrap();
    let (b1, b2) = (first("1"), first("2"));
    assert_eq!(tokens[b1]["pos"], tokens[b2]["pos"], "branches start at one position");
    // Visibility comes as sorted [start, end) ranges, the token itself included.
    let sees = |i: usize, j: usize| {
        visible[i].as_array().unwrap().iter().any(|r| {
            let (a, b) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
            (a..b).contains(&(j as u64))
        })
    };
    assert!((0..tokens.len()).all(|i| sees(i, i)), "every token sees itself");
    assert!(!sees(b2, b1), "branch 2 must not see branch 1");
    assert!(sees(b2, 0), "branches see the prefix");
    let last = tokens.len() - 1;
    assert!(sees(last, b1) && sees(last, b2), "after the join the trunk sees both branches");
    assert!(tokens[last]["branch"].is_null());

    // Training labels: ids, byte offsets that spell the text, and the predicting entry.
    let mut offset = 0;
    for t in tokens {
        assert!(t["id"].as_i64().is_some(), "{t}");
        assert_eq!(t["start"].as_u64(), Some(offset), "{t}");
        offset += t["text"].as_str().unwrap().len() as u64;
    }
    assert_eq!(offset as usize, MULTIVERSE.len(), "the tokens spell the text");
    let prev = |i: usize| tokens[i]["prev"].as_u64().map(|p| p as usize);
    assert_eq!(prev(0), None);
    assert_eq!(prev(b1), Some(b1 - 1), "branch 1 follows the fork point");
    assert_eq!(prev(b2), Some(b1 - 1), "branch 2 is predicted from the fork point too, not from branch 1's end");
    assert_eq!(prev(b2 + 1), Some(b2));
    assert!(v["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn check_names_structural_errors_with_lines() {
    let ok = pardec_stdin(&["check", "--protocol", "multiverse"], MULTIVERSE);
    assert!(ok.status.success());
    let bad = pardec_stdin(
        &["check", "--protocol", "multiverse"],
        "<Parallel>\n<Goal>\n<Outline>1: A</Outline>\n</Goal>\n<Path>\n1: x</Path>\n<Path>\n2: y</Path>\n</Parallel>",
    );
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.lines().any(|l| l.starts_with("line ")), "{out}");
}

#[test]
fn run_with_a_protocol_reports_blocks_and_warnings() {
    // SmolLM2 was not trained on any protocol: with a response prefix that opens a block,
    // the fork still happens; the JSON carries blocks[] and warnings[].
    let v = json(&pardec(&[
        "run",
        "--protocol",
        "multiverse",
        "--prompt",
        "Two fruits.",
        "--max-tokens",
        "24",
        "--max-branch-tokens",
        "12",
        "--response-prefix",
        "<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>",
        "--json",
    ]));
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0]["labels"], serde_json::json!(["1", "2"]));
    assert!(v["warnings"].is_array());
    assert_eq!(v["stats"]["branches"].as_u64(), Some(2));
    assert!(v["text"].as_str().unwrap().contains("<Path>\n2:"));
}

#[test]
fn branch_stop_strings_end_each_branch_at_its_line() {
    let v = json(&pardec(&[
        "run",
        "--prompt",
        "Name two fruits, one line each.",
        "--branch",
        "1.",
        "--branch",
        "2.",
        "--max-branch-tokens",
        "40",
        "--branch-stop",
        "\n",
        "--max-tokens",
        "4",
        "--json",
    ]));
    for b in v["branches"].as_array().unwrap() {
        let text = b["text"].as_str().unwrap();
        assert_eq!(b["stop_reason"], serde_json::json!({"stop_string": "\n"}), "{b}");
        // The line break is the branch's last token: nothing follows it.
        assert!(text.ends_with('\n') && text.trim_end().lines().count() == 1, "{text:?}");
    }
}

#[test]
fn branch_grammar_json_makes_every_finished_branch_one_json_object() {
    let v = json(&pardec(&[
        "run",
        "--prompt",
        "Describe a cat as a JSON object.",
        "--branch",
        "Cat:",
        "--branch",
        "Dog:",
        "--branch-grammar",
        "json",
        "--max-branch-tokens",
        "160",
        "--temp",
        "0.8",
        "--seed",
        "2",
        "--max-tokens",
        "2",
        "--json",
    ]));
    for (b, prefix) in v["branches"].as_array().unwrap().iter().zip(["Cat:", "Dog:"]) {
        // The grammar constrains the sampled text, after the branch's prefix.
        let text = b["text"].as_str().unwrap().strip_prefix(prefix).expect("the text starts with the prefix");
        if b["stop_reason"] == "eog" {
            let parsed: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(parsed.is_object(), "{text:?}");
        } else {
            assert!(text.starts_with('{'), "{text:?}");
        }
    }
}

#[test]
fn a_json_schema_file_is_a_grammar_and_a_bad_one_a_usage_error() {
    let dir = std::env::temp_dir().join(format!("pardec-cli-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("pet.json"), dir.join("bad.json"));
    std::fs::write(
        &good,
        r#"{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false}"#,
    )
    .unwrap();
    std::fs::write(&bad, "{\"type\": ").unwrap();
    let v = json(&pardec(&[
        "run",
        "--prompt",
        "Describe a pet as JSON.",
        "--branch",
        "Pet:",
        "--branch-grammar",
        good.to_str().unwrap(),
        "--max-branch-tokens",
        "96",
        "--temp",
        "0.8",
        "--seed",
        "4",
        "--max-tokens",
        "2",
        "--json",
    ]));
    let b = &v["branches"][0];
    let text = b["text"].as_str().unwrap().strip_prefix("Pet:").expect("the prefix");
    if b["stop_reason"] == "eog" {
        let pet: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(pet["name"].is_string() && pet["age"].is_i64() && pet.as_object().unwrap().len() == 2, "{text:?}");
    } else {
        assert!(text.starts_with('{'), "{text:?}");
    }
    let out = pardec_no_model(&["run", "--prompt", "x", "--branch", "a", "--branch-grammar", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not valid JSON") && err.trim_end().lines().count() == 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_with_device_selection_reports_it_and_equiv_checks_it() {
    let v = json(&pardec(&[
        "bench",
        "--branches",
        "2",
        "--tokens",
        "4",
        "--reps",
        "1",
        "--selection",
        "device:16",
        "--json",
    ]));
    let row = &v["results"][0];
    assert_eq!(row["selection"]["device"]["candidates"].as_u64(), Some(16));
    assert!(row["raw_tps"].as_f64().is_some_and(|x| x > 0.0));
    let out = pardec(&["equiv", "--branches", "2", "--tokens", "4", "--selection", "device"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok: device selection picks the host's tokens"), "{text}");
}

#[test]
fn selection_spread_over_threads_picks_the_same_tokens() {
    // gemma's 262k-wide rows at B = 4 cross the threshold for choosing tokens on several
    // threads (PARDEC_SELECT_THREADS forces it on a CPU build): greedy and sampled output
    // must not depend on it, since each branch draws from its own stream.
    let gemma = models::model_path(models::GEMMA_MODEL_FILE);
    let run = |threads: &str, temp: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pardec"))
            .args(["run", "--prompt", "Four facts about the sea", "--max-branch-tokens", "12", "--max-tokens", "4"])
            .args(["--branch", "1.", "--branch", "2.", "--branch", "3.", "--branch", "4."])
            .args(["--temp", temp, "--top-k", "40", "--seed", "5", "--threads", "2", "--json"])
            .arg("--model")
            .arg(&gemma)
            .env("PARDEC_SELECT_THREADS", threads)
            .output()
            .expect("run pardec");
        json(&out)["text"].as_str().expect("text").to_string()
    };
    for temp in ["0", "0.9"] {
        let one = run("1", temp);
        assert!(!one.is_empty());
        assert_eq!(one, run("4", temp), "temperature {temp}: threads changed the output");
    }
}

#[test]
fn help_after_a_command_prints_the_usage() {
    for cmd in ["run", "layout", "score"] {
        let out = pardec(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage:"));
    }
}

#[test]
fn score_prints_log_probabilities_and_lora_errors_are_specific() {
    let v = json(&pardec(&["score", "--context", "The capital of France is", "--continuation", " Paris", "--json"]));
    let tokens = v["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty());
    let sum: f64 = tokens.iter().map(|t| t["logprob"].as_f64().unwrap()).sum();
    assert!(sum < 0.0 && (sum - v["total"].as_f64().unwrap()).abs() < 1e-6);

    let missing = pardec(&["score", "--lora", "/nonexistent/a.gguf", "--context", "a", "--continuation", "b"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("adapter /nonexistent/a.gguf"));
    let bad_scale = pardec(&["score", "--lora", "a.gguf:nan", "--context", "a", "--continuation", "b"]);
    assert_eq!(bad_scale.status.code(), Some(2), "a scale that is not finite is a usage error");
}

/// A reader that goes away (`pardec ... | head -c1`) ends the command by SIGPIPE, quietly, as
/// it ends cat or grep; Rust's default (SIGPIPE ignored) made the print panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::io::Read;
    // Megabytes of JSON: far more than a pipe buffers, so the writes meet the closed end.
    let mut child =
        spawn_with_stdin(&["layout", "--protocol", "multiverse", "--json"], &"one two three four ".repeat(4000));
    let mut first = [0u8; 1];
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "status {:?}, stderr {stderr}", out.status);
    }
}
