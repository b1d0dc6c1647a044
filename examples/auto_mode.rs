//! Auto mode: the model decides when to fork.
//!
//! The session decodes with the shipped LoRA adapter (adapters/multiverse-smollm2-135m.gguf,
//! trained for SmolLM2-135M-Instruct), which teaches the model to answer a list question with
//! a Multiverse block: `<Parallel>`, a `<Goal>` of numbered `<Outline>`s, then one `<Path>` per
//! outline and a `<Conclusion>`. [`pardec::auto::generate_auto`] watches what the model writes
//! under the built-in `multiverse` protocol, forks at `</Goal>` (the paths decode in one batch
//! per step), joins when every path has closed, and lets the model conclude. The example
//! streams the fork/join events, then prints the text, the report and the statistics.
//!
//! ```sh
//! cargo run --release --example auto_mode -- ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! PARDEC_MODEL=path/to/model.gguf cargo run --release --example auto_mode [-- MODEL ADAPTER]
//! ```
//!
//! The adapter is argv[2] or `$PARDEC_ADAPTER`, else the one in this checkout's `adapters/`.

use pardec::auto::{generate_auto, AutoParams};
use pardec::protocol::ProtocolSpec;
use pardec::{Adapter, Event, Model, ModelParams, SamplingParams, Session, SessionParams};

/// Tokens the trunk may sample in all (outline and conclusion; the paths not counted).
const TRUNK_TOKENS: usize = 200;
/// Tokens each path may sample.
const PATH_TOKENS: usize = 60;

fn main() -> pardec::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(model_path) = args.next().or_else(|| std::env::var("PARDEC_MODEL").ok()) else {
        eprintln!("usage: auto_mode MODEL.gguf [ADAPTER.gguf]   (or set PARDEC_MODEL, PARDEC_ADAPTER)");
        eprintln!("  MODEL: SmolLM2-135M-Instruct Q4_1, e.g. ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        eprintln!("  ADAPTER: default adapters/multiverse-smollm2-135m.gguf of this checkout");
        std::process::exit(2);
    };
    let adapter_path = args
        .next()
        .or_else(|| std::env::var("PARDEC_ADAPTER").ok())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/adapters/multiverse-smollm2-135m.gguf").to_string());

    let model = Model::load(&model_path, &ModelParams::default())?;
    // An adapter is loaded for one model and fails with a clear error on another
    // (`Error::AdapterMismatch`); scale 1.0 applies it as trained.
    let adapter = Adapter::load(&model, &adapter_path)?;
    let params = SessionParams {
        adapters: vec![(adapter, 1.0)],
        // Sampled, as in scripts/demo.sh: each path draws from its own random stream, derived
        // from the seed and its place in the fork tree, so a seed gives the same answer however
        // the paths are batched.
        sampling: SamplingParams { temperature: 0.7, top_p: 0.95, seed: 1, ..Default::default() },
        ..Default::default()
    };
    let mut session = Session::new(&model, params)?;

    let question = "Give me 4 tips for keeping a small apartment tidy.";
    session.prompt(&model.apply_chat_template(&[("user", question)])?)?;

    // Every built-in protocol by name: ProtocolSpec::builtin_names(). A protocol can also be
    // read from JSON (ProtocolSpec::from_json).
    let spec = ProtocolSpec::builtin("multiverse").expect("multiverse is a built-in protocol");
    let auto = AutoParams { max_tokens: TRUNK_TOKENS, max_branch_tokens: PATH_TOKENS, ..Default::default() };

    // An observer sees every event as it happens; returning false would cancel the run.
    let mut observer = |event: &Event<'_>| {
        match event {
            Event::Fork { label, branches, .. } => eprintln!("[fork in {label:?} → paths {}]", branches.join(", ")),
            Event::Join { label, kept, .. } => eprintln!("[join of {kept} paths into {label:?}]"),
            Event::Warning { label, message } => eprintln!("[warning in {label:?}: {message}]"),
            Event::Token { .. } | Event::End { .. } | Event::Forced { .. } => {}
        }
        true
    };
    let started = std::time::Instant::now();
    // Malformed output never stops decoding: it becomes a warning in the report. (To keep the
    // report of a run that fails midway, e.g. on a full KV cache, use generate_auto_into.)
    let report = generate_auto(&mut session, &spec, &auto, &mut observer)?;
    let elapsed = started.elapsed();

    println!("── response ──");
    let transcript = session.transcript();
    let response = transcript.text.rsplit("<|im_start|>assistant\n").next().unwrap_or(&transcript.text);
    println!("{}", response.trim());
    println!("── report ──");
    if report.blocks.is_empty() {
        println!("the model answered serially (no block opened)");
    }
    for block in &report.blocks {
        println!("block in {:?}: {} paths", block.parent, block.paths.len());
        for (label, title) in block.labels.iter().zip(&block.titles) {
            println!("  {label}: {title}");
        }
    }
    for warning in &report.warnings {
        println!("warning in {:?} at byte {} ({:?}): {}", warning.stream, warning.at, warning.kind, warning.message);
    }
    let stats = session.stats();
    println!("── stats ──");
    println!(
        "{} tokens sampled ({} in paths) in {} steps: DP {:.2}, ABN {:.1}, #parallel {:.2}, {:.1} tokens/s, {:.2} s",
        stats.tokens_total,
        stats.tokens_branch,
        stats.steps,
        stats.dp,
        stats.abn,
        stats.parallel,
        stats.tps,
        elapsed.as_secs_f64()
    );
    Ok(())
}
