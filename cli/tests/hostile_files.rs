//! A fixed-seed mutation run over hostile files, each case in a child process (the `pardec`
//! command line) so that an abort or a crash is seen as a signal instead of ending the suite:
//! GGUF files (cuts, every metadata value set to edge values or removed or retyped, tokenizer
//! arrays, tensor infos, random byte flips in the header) and protocol JSON specs. Every case
//! must end with an exit status, 0 or an error, within its time limit.

// The workspace's shared test helpers (the tiny GGUF writer) live with the library's tests.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tiny_model::{ByteVocab, GgufValue as V, TinyConfig, TinyModel};

/// A small deterministic generator (xorshift64*): the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Outcome {
    case: String,
    code: Option<i32>,
    stderr: String,
}

/// Runs the CLI on one case, with a time limit; `None` code: ended by a signal or hung.
fn run(case: &str, args: &[&str], stdin: &str) -> Outcome {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pardec");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            return Outcome { case: case.to_string(), code: status.code(), stderr };
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome { case: case.to_string(), code: None, stderr: "hung for 60 s".into() };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn score_args(model: &Path) -> Vec<String> {
    ["score", "--model", &model.display().to_string(), "--context", "ab<eos>", "--continuation", "cd"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn check_all(outcomes: Vec<Outcome>, at_least: usize) {
    assert!(outcomes.len() >= at_least, "only {} cases ran", outcomes.len());
    let crashed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.code.is_none() || o.stderr.contains("panicked"))
        .map(|o| {
            format!(
                "{}: {:?} {}",
                o.case,
                o.code,
                o.stderr
                    .lines()
                    .filter(|l| l.contains("GGML_ASSERT") || l.contains("error") || l.contains("panicked"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            )
        })
        .collect();
    let refused = outcomes.iter().filter(|o| o.code == Some(1)).count();
    eprintln!(
        "{} cases: {} ran, {} refused with an error, {} crashed",
        outcomes.len(),
        outcomes.len() - refused - crashed.len(),
        refused,
        crashed.len()
    );
    assert!(crashed.is_empty(), "cases that crashed, panicked or hung:\n{}", crashed.join("\n"));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pardec-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mutated_gguf_files_never_crash_the_process() {
    let dir = temp_dir("gguf-mutations");
    let vocab = ByteVocab { specials: vec![] };
    let tiny = TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..TinyConfig::default() });
    let good = dir.join("good.gguf");
    tiny.write_gguf_bytes(&good, &vocab).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_end = bytes.windows(17).position(|w| w == b"token_embd.weight").unwrap() + 200;
    let mut outcomes = vec![run("unmodified", &score_args(&good).iter().map(String::as_str).collect::<Vec<_>>(), "")];
    assert_eq!(outcomes[0].code, Some(0), "the unmodified model must work: {}", outcomes[0].stderr);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let path = dir.join("case.gguf");
    let try_file = |case: String, outcomes: &mut Vec<Outcome>| {
        let args = score_args(&path);
        outcomes.push(run(&case, &args.iter().map(String::as_str).collect::<Vec<_>>(), ""));
    };

    // Every metadata value: edge values of its type, removed, or given another type.
    let mut keys: Vec<String> = Vec::new();
    tiny.write_gguf_edited(&path, Some(&vocab), |kvs| keys = kvs.iter().map(|(k, _)| k.to_string()).collect()).unwrap();
    for key in &keys {
        let edits: Vec<(String, Option<V>)> = vec![
            ("removed".into(), None),
            ("0".into(), Some(V::U32(0))),
            ("1".into(), Some(V::U32(1))),
            ("u32::MAX".into(), Some(V::U32(u32::MAX))),
            ("NaN".into(), Some(V::F32(f32::NAN))),
            ("-1.0".into(), Some(V::F32(-1.0))),
            ("inf".into(), Some(V::F32(f32::INFINITY))),
            ("a string".into(), Some(V::Str("zzz".into()))),
            ("an empty list".into(), Some(V::Strs(Vec::new()))),
        ];
        for (what, value) in edits {
            tiny.write_gguf_edited(&path, Some(&vocab), |kvs| {
                let at = kvs.iter().position(|(k, _)| k == key).unwrap();
                match value {
                    None => {
                        kvs.remove(at);
                    }
                    Some(v) => kvs[at].1 = v,
                }
            })
            .unwrap();
            try_file(format!("{key} {what}"), &mut outcomes);
        }
    }
    // Tokenizer arrays: shorter than the vocabulary, out-of-range ids, duplicates.
    type Edit<'a> = dyn Fn(&mut Vec<(&str, V)>) + 'a;
    let token_edits: Vec<(&str, Box<Edit<'_>>)> = vec![
        (
            "half the tokens",
            Box::new(|kvs| {
                for (k, v) in kvs.iter_mut() {
                    if let (&mut "tokenizer.ggml.tokens", V::Strs(t)) = (k, v) {
                        t.truncate(t.len() / 2);
                    }
                }
            }),
        ),
        (
            "token types short",
            Box::new(|kvs| {
                for (k, v) in kvs.iter_mut() {
                    if let (&mut "tokenizer.ggml.token_type", V::I32s(t)) = (k, v) {
                        t.truncate(3);
                    }
                }
            }),
        ),
        (
            "token type 99",
            Box::new(|kvs| {
                for (k, v) in kvs.iter_mut() {
                    if let (&mut "tokenizer.ggml.token_type", V::I32s(t)) = (k, v) {
                        t.iter_mut().for_each(|x| *x = 99);
                    }
                }
            }),
        ),
        (
            "merges of nonsense",
            Box::new(|kvs| {
                for (k, v) in kvs.iter_mut() {
                    if let (&mut "tokenizer.ggml.merges", V::Strs(m)) = (k, v) {
                        *m = vec!["a".into(), "b c d".into(), "".into()];
                    }
                }
            }),
        ),
        (
            "eos past the vocabulary",
            Box::new(|kvs| {
                kvs.retain(|(k, _)| *k != "tokenizer.ggml.eos_token_id");
                kvs.push(("tokenizer.ggml.eos_token_id", V::U32(1 << 20)));
            }),
        ),
        (
            "SentencePiece type",
            Box::new(|kvs| {
                kvs.retain(|(k, _)| *k != "tokenizer.ggml.model");
                kvs.push(("tokenizer.ggml.model", V::Str("llama".into())));
            }),
        ),
        (
            "WordPiece type",
            Box::new(|kvs| {
                kvs.retain(|(k, _)| *k != "tokenizer.ggml.model");
                kvs.push(("tokenizer.ggml.model", V::Str("bert".into())));
            }),
        ),
        (
            "T5 type",
            Box::new(|kvs| {
                kvs.retain(|(k, _)| *k != "tokenizer.ggml.model");
                kvs.push(("tokenizer.ggml.model", V::Str("t5".into())));
            }),
        ),
    ];
    for (what, edit) in &token_edits {
        tiny.write_gguf_edited(&path, Some(&vocab), |kvs| edit(kvs)).unwrap();
        try_file(what.to_string(), &mut outcomes);
    }
    // Cuts anywhere in the file, and random byte flips in the header (metadata and tensor
    // infos: dimensions, types, offsets).
    for i in 0..100 {
        let len = if i < 50 { rng.below(header_end) } else { rng.below(bytes.len()) };
        std::fs::write(&path, &bytes[..len]).unwrap();
        try_file(format!("cut at {len}"), &mut outcomes);
    }
    for _ in 0..500 {
        let mut b = bytes.clone();
        let flips = 1 + rng.below(3);
        let mut at = Vec::new();
        for _ in 0..flips {
            let i = 8 + rng.below(header_end - 8);
            b[i] ^= 1 << rng.below(8);
            at.push(i);
        }
        std::fs::write(&path, &b).unwrap();
        try_file(format!("bits flipped at {at:?}"), &mut outcomes);
    }
    std::fs::remove_dir_all(&dir).ok();
    check_all(outcomes, 300);
}

#[test]
fn mutated_protocol_specs_never_crash_the_process() {
    let dir = temp_dir("spec-mutations");
    let spec = dir.join("spec.json");
    // The built-in's JSON form is the seed of every mutation; layout runs on the tiny model.
    let base = pardec::protocol::ProtocolSpec::builtin("multiverse").unwrap().to_json();
    let vocab = ByteVocab { specials: vec![] };
    let model = dir.join("tiny.gguf");
    TinyModel::random(TinyConfig { n_vocab: vocab.n_vocab(), ..TinyConfig::default() })
        .write_gguf_bytes(&model, &vocab)
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&base).unwrap();
    let fields: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    let text = "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n</Goal>\n<Path>\n1: x</Path>\n<Conclusion>\ny</Conclusion>\n</Parallel>";
    let replacements = [
        serde_json::json!(null),
        serde_json::json!(""),
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1e18),
        serde_json::json!(u64::MAX),
        serde_json::json!("<Path>"),
        serde_json::json!({"kind": "fixed", "count": 1e18}),
        serde_json::json!([1, 2, 3]),
        serde_json::json!("\u{0}"),
    ];
    let mut outcomes = Vec::new();
    for field in &fields {
        for r in &replacements {
            let mut v = value.clone();
            v[field.as_str()] = r.clone();
            std::fs::write(&spec, v.to_string()).unwrap();
            for cmd in ["check", "layout"] {
                let mut args = vec![cmd, "--protocol", spec.to_str().unwrap()];
                if cmd == "layout" {
                    args.extend(["--model", model.to_str().unwrap()]);
                }
                outcomes.push(run(&format!("{cmd}: {field} = {r}"), &args, text));
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    check_all(outcomes, 200);
}
