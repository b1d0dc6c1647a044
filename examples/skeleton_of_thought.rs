//! Skeleton-of-Thought on a plain instruction-tuned model (no adapter needed).
//!
//! The model first writes a numbered skeleton of its answer; every point is then expanded as
//! a branch. All branches share one prefix — the request and the skeleton — instead of each
//! re-reading the prompt, and decode in one batch per step. A skeleton with too few usable
//! points is answered serially instead (`serial_fallback`), with a warning saying why.
//!
//! ```sh
//! cargo run --release --example skeleton_of_thought -- ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! PARDEC_MODEL=path/to/model.gguf cargo run --release --example skeleton_of_thought
//! ```

use pardec::auto::sot::{generate_sot, SotParams};
use pardec::protocol::SkeletonFormat;
use pardec::{Model, ModelParams, Session, SessionParams, Silent};

fn main() -> pardec::Result<()> {
    let Some(model_path) = std::env::args().nth(1).or_else(|| std::env::var("PARDEC_MODEL").ok()) else {
        eprintln!("usage: skeleton_of_thought MODEL.gguf   (or set PARDEC_MODEL)");
        eprintln!("  e.g. ~/.cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh)");
        std::process::exit(2);
    };

    let model = Model::load(&model_path, &ModelParams::default())?;
    // generate_sot writes its own prompt (through the model's chat template): the session
    // must be empty. Greedy decoding by default; set `SessionParams::sampling` to sample.
    let mut session = Session::new(&model, SessionParams::default())?;

    // The built-in wording: a request for a numbered skeleton of 3 to 10 short points, then
    // one branch per point, started with "N. **point**:" and ended at a newline. Every field can be changed
    // (or a whole format read from JSON with serde).
    let format = SkeletonFormat::sot();
    let budgets = SotParams {
        skeleton_tokens: 80, // the numbered list of points
        point_tokens: 40,    // each point's expansion
    };

    let started = std::time::Instant::now();
    let answer = generate_sot(&mut session, "How can I sleep better?", &format, &budgets, &mut Silent)?;
    let elapsed = started.elapsed();

    println!("── skeleton ──");
    for (i, point) in answer.points.iter().enumerate() {
        println!("{}. {point}", i + 1);
    }
    println!("── answer{} ──", if answer.serial_fallback { " (written serially)" } else { "" });
    println!("{}", answer.answer);
    for warning in &answer.report.warnings {
        println!("warning ({:?}): {}", warning.kind, warning.message);
    }
    let stats = session.stats();
    println!("── stats ──");
    println!(
        "{} tokens sampled ({} in {} branches) in {} steps: #parallel {:.2}, {:.1} tokens/s, {:.2} s",
        stats.tokens_total,
        stats.tokens_branch,
        stats.branches,
        stats.steps,
        stats.parallel,
        stats.tps,
        elapsed.as_secs_f64()
    );
    Ok(())
}
