//! Explicit fork: the host decides where the answer splits.
//!
//! The prompt goes through the model's chat template; the trunk then forks into three branches,
//! each started with its own prefix ("1. Posture:" ...). The branches share the prompt's KV
//! cells and are decoded together, one `llama_decode` per step. They are joined, the trunk
//! writes a conclusion while attending to all three, and the transcript and statistics are
//! printed.
//!
//! ```sh
//! cargo run --release --example explicit_fork -- ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! PARDEC_MODEL=path/to/model.gguf cargo run --release --example explicit_fork
//! ```

use pardec::{BranchSpec, JoinMode, Model, ModelParams, NodeId, RunLimits, Session, SessionParams, Silent};

/// Tokens each branch may sample (its prefix is not counted).
const BRANCH_TOKENS: usize = 40;
/// Tokens the trunk may sample after the join.
const CONCLUSION_TOKENS: usize = 40;

fn main() -> pardec::Result<()> {
    let Some(model_path) = std::env::args().nth(1).or_else(|| std::env::var("PARDEC_MODEL").ok()) else {
        eprintln!("usage: explicit_fork MODEL.gguf   (or set PARDEC_MODEL)");
        eprintln!("  e.g. ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh)");
        std::process::exit(2);
    };

    // A model is loaded once and shared (it is an `Arc`); a session is one llama.cpp context.
    let model = Model::load(&model_path, &ModelParams::default())?;
    let mut session = Session::new(&model, SessionParams::default())?;

    // The question, wrapped in the model's own chat template (ends with the assistant's turn
    // opened). A model without a template gets the plain text.
    let question = "Give three tips for staying healthy while working at a desk. One sentence each.";
    let prompt = model.apply_chat_template(&[("user", question)]).unwrap_or_else(|_| question.to_string());
    session.prompt(&prompt)?;

    // Three branches, each with its own prefix (prefilled, not sampled) and budget; a newline
    // ends a branch, so each writes one list item.
    let specs: Vec<BranchSpec> = ["1. Posture:", "2. Movement:", "3. Eyes:"]
        .into_iter()
        .map(|prefix| {
            let mut spec = BranchSpec::new(prefix, BRANCH_TOKENS);
            spec.limits.stop.push("\n".to_string());
            spec
        })
        .collect();
    let started = std::time::Instant::now();
    session.fork(NodeId::TRUNK, &specs)?;
    // Decodes every branch to its end, all of them in one batch per step. `Silent` ignores the
    // events; any `FnMut(&Event) -> bool` can stream them instead (see auto_mode.rs).
    session.run(&mut Silent)?;

    // Keep every branch: the trunk continues after the longest one and sees them all. The
    // join text is prefilled, then the trunk generates the conclusion.
    session.join(NodeId::TRUNK, JoinMode::All, Some("\n\nIn summary,"))?;
    session.generate(&RunLimits::tokens(CONCLUSION_TOKENS), &mut Silent)?;
    let elapsed = started.elapsed();

    let transcript = session.transcript();
    println!("── transcript (as the trunk sees it) ──");
    // The flattened text starts with the prompt; print only what follows it.
    println!("{}", transcript.text.strip_prefix(&prompt).unwrap_or(&transcript.text).trim());
    println!("── branches ──");
    for branch in transcript.top_level_branches(0).unwrap_or(&[]) {
        println!("[{}] {} tokens, stopped by {:?}", branch.label, branch.tokens, branch.stop_reason);
    }
    let stats = session.stats();
    println!("── stats ──");
    println!(
        "{} tokens sampled ({} in branches) in {} steps: DP {:.2}, #parallel {:.2}, {:.1} tokens/s",
        stats.tokens_total, stats.tokens_branch, stats.steps, stats.dp, stats.parallel, stats.tps
    );
    println!(
        "KV cells: {} used, {} if each branch had its own copy of the prompt; {:.2} s from fork to end",
        stats.kv_cells_used,
        stats.kv_cells_unshared,
        elapsed.as_secs_f64()
    );
    Ok(())
}
