//! `pardec bench`: the engine against serial decoding and raw llama_decode (one row per B),
//! `--auto`, `--sampling-costs`, `--formats`, `--rpc-cost`, and `--peer` (in `peer`, with the
//! llama-server it starts in `llama_server`).

mod llama_server;
mod peer;

use std::time::Instant;

use pardec::bench::{self, BenchParams};
use pardec::{Model, SamplingParams, Selection, WeightFormat};
use serde::Serialize;

use crate::args::{BenchArgs, ModelOpts};
use crate::error::CliResult;
use crate::output::{print_table, progress, to_json};
use crate::params::{adapters, default_model_path, load_model};

fn selection_text(s: &Selection) -> String {
    match s {
        Selection::Host => "host".into(),
        Selection::Device { candidates } => format!("device ({candidates} candidates)"),
    }
}

fn sampling_text(s: &SamplingParams) -> String {
    if s.temperature <= 0.0 {
        return "greedy".into();
    }
    let mut parts = vec![format!("temperature {}", s.temperature)];
    if s.top_k > 0 {
        parts.push(format!("top-k {}", s.top_k));
    }
    if s.top_p < 1.0 {
        parts.push(format!("top-p {}", s.top_p));
    }
    if s.min_p > 0.0 {
        parts.push(format!("min-p {}", s.min_p));
    }
    parts.push(format!("seed {}", s.seed));
    parts.join(", ")
}

pub(crate) fn cmd_bench(a: &BenchArgs) -> CliResult<()> {
    if let Some(engine) = a.peer {
        return peer::bench(a, engine);
    }
    let mut p = BenchParams::default();
    if let Some(list) = &a.branches {
        p.branches = list.0.clone();
    } else if a.auto {
        p.branches = vec![2, 4, 8];
    }
    p.tokens = a.tokens;
    p.reps = a.reps;
    p.session.n_threads = a.threads;
    p.session.selection = a.selection.unwrap_or(Selection::Host);
    p.session.sampling = a.sampling.params();
    if a.rpc_cost {
        if a.branches.is_none() {
            p.branches = vec![1, 4, 16];
        }
        return bench_rpc_cost(&a.model, &p, a.json);
    }
    let model = load_model(&a.model, true)?;
    p.session.adapters = adapters(&a.lora, &model)?;
    // One row at a time, for the progress line; every row's session is the size the whole
    // list needs, as when the library runs them all.
    let max_b = p.branches.iter().copied().max().unwrap_or(1) as u32;
    p.session.max_branches = p.session.max_branches.max(max_b);
    let started = Instant::now();
    let n = p.branches.len();
    let row_params = |i: usize, b: usize| {
        progress::phase(&format!(
            "bench{}: B = {b} ({}/{n}), {} tokens per branch, best of {}",
            if a.auto { " --auto" } else { "" },
            i + 1,
            p.tokens,
            p.reps
        ));
        BenchParams { branches: vec![b], ..p.clone() }
    };
    let threads = if p.session.n_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        p.session.n_threads as usize
    };
    if a.sampling_costs {
        return bench_sampling_costs(&model, &p, threads, a.json);
    }
    if let Some(formats) = &a.formats {
        return bench_formats(model.path(), &formats.0, &p, threads, a.json);
    }
    if a.auto {
        let mut rows = Vec::new();
        for (i, &b) in p.branches.iter().enumerate() {
            rows.extend(bench::auto_vs_serial(&model, &row_params(i, b))?);
        }
        progress::phase(&format!("bench --auto: done in {:.1} s", started.elapsed().as_secs_f64()));
        progress::clear();
        if a.json {
            let out = serde_json::json!({ "model": model.path().display().to_string(), "results": rows });
            outln!("{}", to_json(&out, true)?);
            return Ok(());
        }
        outln!(
            "model {} · auto mode (scripted Multiverse blocks) vs the same tokens serially · {} tokens per branch · {threads} threads",
            model.path().display(),
            p.tokens
        );
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.branches.to_string(),
                    r.response_tokens.to_string(),
                    format!("{:.2}", r.auto_seconds),
                    format!("{:.2}", r.serial_seconds),
                    format!("{:.2}×", r.speedup),
                    format!("{:.2}×", r.ideal),
                    format!("{:.2}", r.vs_ideal),
                ]
            })
            .collect();
        print_table(&["B", "tokens", "auto s", "serial s", "speedup", "ideal", "vs ideal"], &table);
        return Ok(());
    }
    let mut rows = Vec::new();
    for (i, &b) in p.branches.iter().enumerate() {
        rows.extend(bench::run(&model, &row_params(i, b))?);
    }
    progress::phase(&format!("bench: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: String,
            threads: usize,
            results: &'a [bench::BenchRow],
        }
        let out = Out { model: model.path().display().to_string(), threads, results: &rows };
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · {} tokens per branch · best of {} · selection {} · sampling {} · {threads} threads",
        model.path().display(),
        p.tokens,
        p.reps,
        selection_text(&p.session.selection),
        sampling_text(&p.session.sampling)
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.branches.to_string(),
                format!("{:.1}", r.serial_tps),
                format!("{:.1}", r.parallel_tps),
                format!("{:.1}", r.raw_tps),
                format!("{:.2}×", r.speedup),
                format!("{:.2}×", r.raw_speedup),
                format!("{:.2}", r.speedup_vs_ceiling),
                format!("{:.2}", r.engine_vs_raw),
                format!("{:.0}", r.host_us_per_step),
                format!("{:.0}", r.selection_us_per_step),
                format!("{}/{}", r.kv_cells_shared, r.kv_cells_unshared),
            ]
        })
        .collect();
    print_table(
        &[
            "B",
            "serial t/s",
            "engine t/s",
            "raw t/s",
            "speedup",
            "ceiling",
            "vs ceil",
            "engine/raw",
            "host µs",
            "select µs",
            "KV shared/unsh.",
        ],
        &table,
    );
    outln!("t/s: tokens per second · speedup: the engine's over the same branches one after another · ceiling: that");
    outln!("speedup for raw llama_decode · vs ceil: speedup / ceiling · host µs: per step outside llama_decode, select µs:");
    outln!("of it choosing tokens · KV: cells used with the prefix shared / with a prefix copy per branch");
    Ok(())
}

/// `pardec bench --sampling-costs`.
fn bench_sampling_costs(model: &Model, p: &BenchParams, threads: usize, json: bool) -> CliResult<()> {
    let b = p.branches.iter().copied().max().unwrap_or(16);
    progress::phase(&format!(
        "bench --sampling-costs: B = {b}, {} tokens per branch, 6 features, best of {}",
        p.tokens, p.reps
    ));
    let started = Instant::now();
    let rows = bench::sampling_costs(model, p)?;
    progress::phase(&format!("bench --sampling-costs: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if json {
        let out =
            serde_json::json!({ "model": model.path().display().to_string(), "threads": threads, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · B = {b} · {} tokens per branch · best of {} · sampling {} · {threads} threads",
        model.path().display(),
        p.tokens,
        p.reps,
        sampling_text(&p.session.sampling)
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.feature.clone(),
                r.tokens.to_string(),
                format!("{:.0}", r.host_us_per_step),
                format!("{:.0}", r.selection_us_per_step),
                format!("{:.1}", r.host_us_per_token),
                format!("{:+.1}", r.extra_us_per_token),
                format!("{:.1}", r.step_ms),
            ]
        })
        .collect();
    print_table(
        &["feature", "tokens", "host µs/step", "select µs", "host µs/token", "extra µs/token", "step ms"],
        &table,
    );
    outln!("host: per parallel step outside llama_decode, select: of it choosing tokens · extra: host µs per token");
    outln!("over the first row's · step ms: wall time per step, llama_decode included");
    Ok(())
}

/// `pardec bench --formats`.
fn bench_formats(
    path: &std::path::Path,
    formats: &[WeightFormat],
    p: &BenchParams,
    threads: usize,
    json: bool,
) -> CliResult<()> {
    let started = Instant::now();
    let rows = bench::format_ceilings(path, formats, p, |msg| progress::phase(&format!("bench --formats: {msg}")))?;
    progress::phase(&format!("bench --formats: done in {:.1} s", started.elapsed().as_secs_f64()));
    progress::clear();
    if json {
        let out = serde_json::json!({ "model": path.display().to_string(), "threads": threads, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · raw llama_decode steps of B lanes · {} steps · best of {} · {threads} threads",
        path.display(),
        p.tokens,
        p.reps
    );
    let mut head = vec!["format".to_string(), "MiB".into(), "perplexity".into()];
    head.extend(p.branches.iter().map(|b| format!("B={b}")));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![
                format!("{}{}", r.format, if r.original { " (given)" } else { "" }),
                format!("{:.0}", r.file_mib),
                format!("{:.3}", r.perplexity),
            ];
            line.extend(r.tps.iter().zip(&r.ceiling).map(|(tps, c)| format!("{tps:.0} t/s {c:.2}×")));
            line
        })
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print_table(&head, &table);
    outln!("B=N: raw tokens per second with N lanes per step, and the ceiling (N × one-lane step time / N-lane");
    outln!("step time) · perplexity: on a fixed English passage (lower is better)");
    Ok(())
}

fn bench_rpc_cost(opts: &ModelOpts, p: &BenchParams, json: bool) -> CliResult<()> {
    let path = opts.model.clone().unwrap_or_else(default_model_path);
    let servers = opts.rpc_servers();
    progress::phase(&format!("bench --rpc-cost: {} here, then on {}", path.display(), servers.join(",")));
    let rows = bench::rpc_step_costs(&path, &servers, p)?;
    progress::clear();
    if json {
        let out = serde_json::json!({ "model": path.display().to_string(), "servers": servers, "results": rows });
        outln!("{}", to_json(&out, true)?);
        return Ok(());
    }
    outln!(
        "model {} · raw llama_decode steps of B lanes, here and with the layers on {} · {} steps · best of {}",
        path.display(),
        servers.join(","),
        p.tokens,
        p.reps
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.branches.to_string(),
                format!("{:.2}", r.local_ms),
                format!("{:.2}", r.rpc_ms),
                format!("{:+.2}", r.added_ms),
                format!("{:.2}×", r.ratio),
            ]
        })
        .collect();
    print_table(&["B", "here ms", "RPC ms", "added ms", "ratio"], &table);
    Ok(())
}
