//! `pardec run`: a prompt with the branches given (`--branch`), or with the model forking by
//! a protocol (`--protocol`, auto mode), streamed through `view::Watch` and printed as text or
//! one JSON object.

use pardec::auto::apr::generate_apr_into;
use pardec::auto::sot::{generate_sot, sot_prompt};
use pardec::auto::{generate_auto_into, AutoReport};
use pardec::protocol::{SkeletonFormat, SubSearchFormat};
use pardec::{
    BranchSpec, Error, JoinMode, Model, NodeId, RunLimits, Session, SessionParams, Stats, StopReason, TokenLogprob,
};
use serde::Serialize;

use crate::args::RunArgs;
use crate::error::{usage, CliResult};
use crate::output::{quoted, to_json, warn};
use crate::params::{load_model, protocol_choice, ProtocolChoice};
use crate::view::{who, Watch};

/// The prompt as decoded: in the model's chat template (with the system message) unless
/// `raw`; a model without a usable template is run raw, with a warning.
fn chat_prompt(model: &Model, prompt: &str, system: Option<&str>, raw: bool) -> CliResult<String> {
    if raw || !model.has_text_vocab() {
        return Ok(prompt.to_string());
    }
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = system {
        messages.push(("system", system));
    }
    messages.push(("user", prompt));
    match model.apply_chat_template(&messages) {
        Ok(text) => Ok(text),
        Err(Error::UnsupportedModel(why)) => {
            warn(&format!("{why}: the prompt is decoded as raw text (--raw does so without this warning)"));
            Ok(match system {
                Some(system) => format!("{system}\n\n{prompt}"),
                None => prompt.to_string(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
struct BranchOut {
    label: String,
    prefix: String,
    text: String,
    tokens: usize,
    stop_reason: Option<StopReason>,
    /// `--logprobs`: each token the branch generated, with its log-probability and its step's
    /// most likely tokens, in order (the `logprob` of its `--stream --json` token event).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logprobs: Vec<TokenLogprob>,
}

#[derive(Serialize)]
struct RunOut {
    text: String,
    prompt: String,
    branches: Vec<BranchOut>,
    continuation: String,
    /// The `--stop` string that ended the trunk, if one did.
    trunk_stop: Option<String>,
    /// `--logprobs`: the trunk's generated tokens, as `BranchOut::logprobs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trunk_logprobs: Vec<TokenLogprob>,
    stats: Stats,
}

pub(crate) fn cmd_run(a: &RunArgs) -> CliResult<()> {
    if let Some(protocol) = &a.protocol {
        return cmd_run_auto(a, protocol);
    }
    if a.response_prefix.is_some() {
        return Err(usage("--response-prefix needs --protocol: with --branch, the branches are the response"));
    }
    let max_tokens = a.max_tokens.unwrap_or(64);
    let branch_tokens = a.max_branch_tokens.unwrap_or(48);
    let then = a.then.clone().unwrap_or_else(|| "\n".to_string());

    let model = load_model(&a.model, false)?;
    let params = SessionParams {
        n_ctx: a.ctx,
        max_branches: (a.branches.len() as u32).clamp(1, pardec::session::MAX_SEQUENCES - 1),
        ..a.session_args().params(&model)?
    };
    let mut session = Session::new(&model, params)?;
    let prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
    // The trunk's stops are the library's own (RunLimits), so the watcher has none.
    let mut watch = Watch::new(a.stream, a.json);
    watch.prompt(&prompt_text);
    session.prompt(&prompt_text)?;
    // Stop strings end a branch early (e.g. a newline: one list item per branch).
    let specs: Vec<BranchSpec> = a
        .branches
        .iter()
        .map(|b| BranchSpec {
            prefix: b.clone(),
            limits: RunLimits {
                max_tokens: branch_tokens,
                stop: a.branch_stops.clone(),
                grammar: a.branch_grammar.clone(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let ids = session.fork(NodeId::TRUNK, &specs)?;
    let labels: Vec<String> = ids.iter().map(|&id| session.label(id).unwrap_or("").to_string()).collect();
    watch.fork(NodeId::TRUNK, "", &labels);
    for ((&id, label), prefix) in ids.iter().zip(&labels).zip(&a.branches) {
        watch.prefix(id, label, prefix);
    }
    session.run(&mut watch)?;
    session.join(NodeId::TRUNK, JoinMode::All, Some(&then))?;
    watch.join(NodeId::TRUNK, "", ids.len(), Some(&then));
    let limits = RunLimits { max_tokens, stop: a.stops.clone(), grammar: a.grammar.clone(), ..Default::default() };
    let continuation = session.generate(&limits, &mut watch)?;
    watch.finish();

    let transcript = session.transcript();
    let block = transcript.top_level_branches(0).unwrap_or(&[]);
    let trunk_stop = match session.stop_reason(NodeId::TRUNK) {
        Some(StopReason::StopString(s)) => Some(s.clone()),
        _ => None,
    };
    let out = RunOut {
        text: transcript.text.clone(),
        prompt: prompt_text,
        branches: block
            .iter()
            .zip(&a.branches)
            .map(|(b, prefix)| BranchOut {
                label: b.label.clone(),
                prefix: prefix.clone(),
                text: b.text.clone(),
                tokens: b.tokens,
                stop_reason: b.stop_reason.clone(),
                logprobs: b.logprobs.clone(),
            })
            .collect(),
        continuation: format!("{then}{continuation}"),
        trunk_stop,
        trunk_logprobs: transcript.trunk.logprobs.clone(),
        stats: session.stats(),
    };
    if a.json {
        // After a stream of JSON lines the result is one more line.
        outln!("{}", to_json(&out, !a.stream)?);
    } else {
        print_run(&out);
    }
    Ok(())
}

#[derive(Serialize)]
struct AutoOut {
    text: String,
    /// Skeleton-of-Thought: the points with their expansions, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
    /// Skeleton-of-Thought: the skeleton's points.
    #[serde(skip_serializing_if = "Option::is_none")]
    points: Option<Vec<String>>,
    /// Skeleton-of-Thought: the skeleton was unusable and the answer was written serially.
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_fallback: Option<bool>,
    prompt: String,
    branches: Vec<BranchOut>,
    blocks: Vec<pardec::auto::AutoBlock>,
    warnings: Vec<pardec::auto::AutoWarning>,
    /// The `--stop` string that ended the trunk, if one did.
    trunk_stop: Option<String>,
    /// `--logprobs`: the trunk's generated tokens, as `BranchOut::logprobs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trunk_logprobs: Vec<TokenLogprob>,
    stats: Stats,
}

fn cmd_run_auto(a: &RunArgs, protocol: &str) -> CliResult<()> {
    let choice = protocol_choice(protocol)?;
    if let ProtocolChoice::Sot = choice {
        let unusable = [
            (a.raw, "--raw"),
            (a.system.is_some(), "--system"),
            (!a.stops.is_empty(), "--stop"),
            (a.response_prefix.is_some(), "--response-prefix"),
        ];
        if let Some((_, flag)) = unusable.iter().find(|(set, _)| *set) {
            return Err(usage(format!(
                "{flag} does not apply to --protocol sot: it writes its own prompt in the chat template, \
                 and the skeleton ends by its format"
            )));
        }
    }
    let model = load_model(&a.model, false)?;
    let params = SessionParams { n_ctx: a.ctx, max_branches: 16, ..a.session_args().params(&model)? };
    let mut session = Session::new(&model, params)?;
    let auto = a.auto_params();
    let mut watch = Watch::new(a.stream, a.json);
    let mut answer = None;
    let mut sot_points = None;
    let mut fallback = None;
    let mut report = AutoReport::default();
    let prompt_text;
    let outcome = match choice {
        ProtocolChoice::Sot => {
            // generate_sot writes its own prompt: shown here as it will decode it.
            let format = SkeletonFormat::sot();
            let template_error;
            (prompt_text, template_error) = sot_prompt(&model, &a.prompt, &format);
            if let Some(e) = template_error {
                warn(&format!("{e}: the skeleton request is decoded as raw text"));
            }
            watch.prompt(&prompt_text);
            // --max-tokens is the skeleton's budget (the trunk's part); points get --max-branch-tokens.
            let sot = a.sot_params(&auto);
            match generate_sot(&mut session, &a.prompt, &format, &sot, &mut watch) {
                Ok(result) => {
                    answer = Some(result.answer);
                    sot_points = Some(result.points);
                    fallback = Some(result.serial_fallback);
                    report = result.report;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ProtocolChoice::Apr => {
            prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
            watch.prompt(&prompt_text);
            session.prompt(&prompt_text)?;
            generate_apr_into(&mut session, &SubSearchFormat::apr(), &auto, &mut watch, &mut report)
        }
        ProtocolChoice::Stream(spec) => {
            prompt_text = chat_prompt(&model, &a.prompt, a.system.as_deref(), a.raw)?;
            watch.prompt(&prompt_text);
            session.prompt(&prompt_text)?;
            generate_auto_into(&mut session, &spec, &auto, &mut watch, &mut report)
        }
    };
    watch.finish();
    // A generation that stopped midway prints what it wrote before the error is reported.
    if let Err(e) = &outcome {
        if !e.keeps_partial_output() {
            return outcome.map_err(Into::into);
        }
    }
    let t = session.transcript();
    let branches = t
        .blocks()
        .iter()
        .flat_map(|b| match b {
            pardec::ItemReport::Block { branches, .. } => branches.clone(),
            _ => Vec::new(),
        })
        .map(|b| BranchOut {
            label: b.label.clone(),
            prefix: String::new(),
            text: b.text,
            tokens: b.tokens,
            stop_reason: b.stop_reason,
            logprobs: b.logprobs,
        })
        .collect();
    let out = AutoOut {
        text: t.text.clone(),
        answer,
        points: sot_points,
        serial_fallback: fallback,
        prompt: prompt_text,
        branches,
        blocks: report.blocks,
        warnings: report.warnings,
        trunk_stop: match session.stop_reason(NodeId::TRUNK) {
            Some(StopReason::StopString(s)) => Some(s.clone()),
            _ => None,
        },
        trunk_logprobs: t.trunk.logprobs.clone(),
        stats: session.stats(),
    };
    if a.json {
        outln!("{}", to_json(&out, !a.stream)?);
        return outcome.map_err(Into::into);
    }
    outln!("── text ──\n{}", out.text.trim_end());
    if let Some(answer) = &out.answer {
        outln!("── answer ──\n{answer}");
    }
    for b in &out.blocks {
        outln!("── block in {}: branches {} ──", who(&b.parent), b.paths.join(", "));
    }
    for w in &out.warnings {
        outln!("── warning in {} at byte {}: {}", who(&w.stream), w.at, w.message);
    }
    if let Some(stop) = &out.trunk_stop {
        outln!("── the trunk ended at --stop {} ──", quoted(stop));
    }
    print_stats(&out.stats);
    outcome.map_err(Into::into)
}

fn print_run(out: &RunOut) {
    outln!("── prompt ──\n{}", out.prompt.trim_end());
    for b in &out.branches {
        outln!("── branch {} ({} tokens) ──\n{}", b.label, b.tokens, b.text.trim());
    }
    outln!("── continuation ──\n{}", out.continuation.trim());
    if let Some(stop) = &out.trunk_stop {
        outln!("── the trunk ended at --stop {} ──", quoted(stop));
    }
    print_stats(&out.stats);
}

fn print_stats(s: &Stats) {
    outln!("── stats ──");
    outln!(
        "tokens {} (branches {}), steps {}, #parallel {:.2}, DP {:.2}, ABN {:.1}",
        s.tokens_total,
        s.tokens_branch,
        s.steps,
        s.parallel,
        s.dp,
        s.abn
    );
    outln!(
        "TPS {:.1}, P-TPS {:.1} (serial {:.2}s, parallel {:.2}s, prefill {:.2}s)",
        s.tps,
        s.p_tps,
        s.serial_seconds,
        s.parallel_seconds,
        s.prefill_seconds
    );
    outln!("KV cells {} shared vs {} with a prefix copy per branch", s.kv_cells_used, s.kv_cells_unshared);
}
