//! `pardec serve`: an OpenAI-compatible HTTP server over [`pardec::conversations`]: many
//! requests decoded in one context, each free to fork under its protocol.
//!
//! Three parts, each in its room: `api` (OpenAI's request and response shapes), `http` (axum's
//! routes, the API key, streams), `engine` (the one thread that owns the session and steps
//! every request), with `metrics` between them.

mod api;
mod engine;
mod http;
mod metrics;

use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use pardec::conversations::{Conversations, ConversationsParams};
use pardec::session::MAX_SEQUENCES;
use pardec::{Error, Session};

use crate::args::ServeArgs;
use crate::error::{usage, CliError, CliResult};
use crate::params::{load_model, stream_spec, SessionArgs};

use api::{Defaults, Protocol};
use engine::Command;
use http::AppState;
use metrics::Metrics;

pub(crate) fn cmd_serve(args: &ServeArgs) -> CliResult<()> {
    if args.sampling.logprobs.is_some() {
        return Err(usage("--logprobs: a request asks for log-probabilities itself (\"logprobs\": true)"));
    }
    if args.parallel == 0 {
        return Err(usage("--parallel must be at least 1"));
    }
    let cached_prompts = args.cache_prompts.unwrap_or(args.parallel);
    let conversation =
        ConversationsParams { max_active: args.parallel, branches_per_request: args.branches, cached_prompts };
    let sequences = conversation.sequences();
    if sequences >= MAX_SEQUENCES as usize {
        return Err(usage(format!(
            "--parallel {} with --branches {} and --cache-prompts {cached_prompts} needs {sequences} sequence ids; llama.cpp has {}",
            args.parallel,
            args.branches,
            MAX_SEQUENCES - 1
        )));
    }
    let protocol = match args.protocol.as_str() {
        "apr" => {
            return Err(usage("--protocol apr: APR's sub-searches are not served (only stream protocols and sot)"))
        }
        "none" => Protocol::Plain,
        "sot" => Protocol::Sot,
        name => Protocol::Stream(Box::new(stream_spec(name)?)),
    };
    let model = load_model(&args.model, true)?;
    let mut params =
        SessionArgs { threads: args.threads, lora: &args.lora, sampling: Some(&args.sampling), selection: None }
            .params(&model)?;
    params.n_ctx = args.ctx;
    params.max_branches = sequences as u32;
    params.n_batch = params.n_batch.max(sequences as u32 + 1);
    let session = Session::new(&model, params)?;
    let n_ctx = session.n_ctx();
    let conversations = Conversations::new(session, conversation)?;
    let api_key = args.api_key.clone().or_else(|| std::env::var("PARDEC_API_KEY").ok()).filter(|k| !k.is_empty());
    let model_name = model.path().file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let defaults = Defaults {
        sampling: args.sampling.params(),
        max_tokens: args.max_tokens,
        max_branch_tokens: args.max_branch_tokens,
        protocol,
        model_name,
        n_ctx: n_ctx as usize,
    };

    // A client that hangs up must not end the server by SIGPIPE (main restores the default for
    // the other commands, which should end quietly on a closed stdout).
    #[cfg(unix)]
    // SAFETY: changing a signal's disposition before the server's threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the async runtime: {e}")))?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind((args.host.as_str(), args.port))).map_err(|e| {
        CliError::Pardec(Error::InvalidArgument(format!("cannot listen on {}:{}: {e}", args.host, args.port)))
    })?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;

    let metrics = Arc::new(Metrics::new(n_ctx));
    let (commands, inbox) = std::sync::mpsc::channel();
    let engine_metrics = metrics.clone();
    let engine = std::thread::Builder::new()
        .name("pardec-decode".into())
        .spawn(move || engine::run(conversations, inbox, engine_metrics))
        .map_err(|e| Error::Internal(format!("starting the decoding thread: {e}")))?;
    let state = Arc::new(AppState { commands: commands.clone(), defaults, model, metrics, api_key });
    let app = http::router(state, args.max_body);
    eprintln!(
        "pardec serve: listening on http://{addr} ({} requests at once, {n_ctx} KV cells, protocol {})",
        args.parallel, args.protocol
    );
    let grace = Duration::from_secs(args.grace);
    let served = runtime
        .block_on(async move { axum::serve(listener, app).with_graceful_shutdown(stop_signal(commands, grace)).await });
    // Drops what still waits (the grace timer, with its command sender): the decoding thread
    // then sees no sender left and ends once it is idle.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = engine.join();
    served.map_err(|e| CliError::Pardec(Error::Internal(format!("serving: {e}"))))?;
    eprintln!("pardec serve: stopped");
    Ok(())
}

/// Resolves at SIGTERM or Ctrl-C. The server then stops accepting and lets the answers in
/// flight finish; after `grace` the decoding thread cancels what is left.
async fn stop_signal(commands: Sender<Command>, grace: Duration) {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("pardec serve: stopping (answers in flight get {} s)", grace.as_secs());
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = commands.send(Command::CancelAll);
    });
}
