//! The stream of a run (`run --stream`): `Watch`, the observer every run decodes with, shows
//! events as JSON lines, as a log or in the live terminal view (`live`), and counts tokens for
//! the progress line.

mod live;

use std::io::IsTerminal;

use pardec::{Event, NodeId, Observer, StopReason};
use serde::Serialize;

use crate::output::{out, progress, quoted, warn};
use live::Live;

fn reason_text(reason: &StopReason) -> String {
    match reason {
        StopReason::Eog => "end of generation".into(),
        StopReason::MaxTokens => "token limit".into(),
        StopReason::StopString(s) => format!("stop string {}", quoted(s)),
        StopReason::KvCacheFull => "KV cache full".into(),
        StopReason::Cancelled => "cancelled".into(),
        StopReason::ServerLost => "RPC server lost".into(),
    }
}

pub(crate) fn who(label: &str) -> &str {
    if label.is_empty() {
        "trunk"
    } else {
        label
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamMode {
    /// No stream: the observer only counts tokens (progress).
    Off,
    /// stdout is a terminal: one line per branch, redrawn.
    Live,
    /// One line per event.
    Log,
    /// One JSON object per event.
    Json,
}

/// One line of `--stream --json`: `kind` (prompt, prefix, token, end, fork, join, warning),
/// `node` (0: the trunk), `branch` (the label path, "" for the trunk), and what the kind has.
#[derive(Serialize)]
struct JsonEvent<'a> {
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<usize>,
    branch: &'a str,
    /// The token's id (absent for text completed at a node's end, from split bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<pardec::Token>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a StopReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    branches: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    /// The token's log-probability and its step's most likely tokens (`--logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    logprob: Option<&'a pardec::TokenLogprob>,
}

impl<'a> JsonEvent<'a> {
    fn new(kind: &'a str, branch: &'a str) -> Self {
        JsonEvent {
            kind,
            node: None,
            branch,
            token: None,
            text: None,
            reason: None,
            branches: None,
            kept: None,
            message: None,
            logprob: None,
        }
    }
}

/// The observer of a run: streams events in the chosen mode and counts tokens for the progress
/// line. It never ends a run: trunk `--stop` strings are the library's own (`RunLimits::stop`,
/// `AutoParams::stop`), and the trunk's stop reason says which one ended it.
pub(crate) struct Watch {
    mode: StreamMode,
    live: Live,
    progress: bool,
    tokens: usize,
    branch_tokens: usize,
}

impl Watch {
    pub(crate) fn new(stream: bool, json: bool) -> Watch {
        let stdout_tty = std::io::stdout().is_terminal();
        let mode = match (stream, json) {
            (false, _) => StreamMode::Off,
            (true, true) => StreamMode::Json,
            (true, false) if stdout_tty => StreamMode::Live,
            (true, false) => StreamMode::Log,
        };
        let progress = progress::stderr_is_tty() && (mode == StreamMode::Off || !stdout_tty);
        Watch { mode, live: Live::new(), progress, tokens: 0, branch_tokens: 0 }
    }

    fn json_event(&self, event: JsonEvent<'_>) {
        match serde_json::to_string(&event) {
            Ok(line) => outln!("{line}"),
            Err(e) => warn(&format!("an event could not be written as JSON: {e}")),
        }
    }

    /// The text the trunk starts from (the prompt as decoded).
    pub(crate) fn prompt(&mut self, text: &str) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => {
                self.json_event(JsonEvent { node: Some(0), text: Some(text), ..JsonEvent::new("prompt", "") })
            }
            StreamMode::Log => outln!("prompt {}", quoted(text)),
            StreamMode::Live => self.live.prompt(text),
        }
    }

    /// Text written into a node, not sampled (a branch prefix, a response prefix).
    pub(crate) fn prefix(&mut self, node: NodeId, label: &str, text: &str) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent {
                node: Some(node.index()),
                text: Some(text),
                ..JsonEvent::new("prefix", label)
            }),
            StreamMode::Log => outln!("prefix {} {}", who(label), quoted(text)),
            StreamMode::Live => self.live.text(label, text),
        }
    }

    pub(crate) fn fork(&mut self, parent: NodeId, label: &str, branches: &[String]) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent {
                node: Some(parent.index()),
                branches: Some(branches),
                ..JsonEvent::new("fork", label)
            }),
            StreamMode::Log => outln!("fork {} -> {}", who(label), branches.join(" ")),
            StreamMode::Live => self.live.fork(label, branches),
        }
    }

    /// A join; `text`: the join text, where the caller knows it.
    pub(crate) fn join(&mut self, parent: NodeId, label: &str, kept: usize, text: Option<&str>) {
        match self.mode {
            StreamMode::Off => {}
            StreamMode::Json => self.json_event(JsonEvent {
                node: Some(parent.index()),
                kept: Some(kept),
                text,
                ..JsonEvent::new("join", label)
            }),
            StreamMode::Log => match text {
                Some(t) => outln!("join {} kept {kept} {}", who(label), quoted(t)),
                None => outln!("join {} kept {kept}", who(label)),
            },
            StreamMode::Live => self.live.join(label, text),
        }
    }

    /// The stream is over (the result follows).
    pub(crate) fn finish(&mut self) {
        progress::clear();
        if self.mode == StreamMode::Live {
            self.live.finish();
        }
        out::flush();
    }
}

impl Observer for Watch {
    fn on_event(&mut self, ev: &Event<'_>) -> bool {
        match ev {
            Event::Token { node, label, token, text, logprob } => {
                self.tokens += 1;
                if !label.is_empty() {
                    self.branch_tokens += 1;
                }
                match self.mode {
                    StreamMode::Off => {}
                    StreamMode::Json => self.json_event(JsonEvent {
                        node: Some(node.index()),
                        token: (*token >= 0).then_some(*token),
                        text: Some(text),
                        logprob: *logprob,
                        ..JsonEvent::new("token", label)
                    }),
                    StreamMode::Log if text.is_empty() => {}
                    StreamMode::Log => outln!("token {} {}", who(label), quoted(text)),
                    StreamMode::Live => self.live.text(label, text),
                }
                if self.progress {
                    let (n, b) = (self.tokens, self.branch_tokens);
                    progress::tick(|| format!("generating: {n} tokens ({b} in branches)"));
                }
            }
            Event::End { node, label, reason } => match self.mode {
                StreamMode::Off => {}
                StreamMode::Json => self.json_event(JsonEvent {
                    node: Some(node.index()),
                    reason: Some(reason),
                    ..JsonEvent::new("end", label)
                }),
                StreamMode::Log => outln!("end {} {}", who(label), reason_text(reason)),
                StreamMode::Live => self.live.end(label),
            },
            Event::Forced { node, label, text } => self.prefix(*node, label, text),
            Event::Fork { parent, label, branches } => self.fork(*parent, label, branches),
            Event::Join { parent, label, kept } => self.join(*parent, label, *kept, None),
            Event::Warning { label, message } => match self.mode {
                StreamMode::Off => {}
                StreamMode::Json => {
                    self.json_event(JsonEvent { message: Some(message), ..JsonEvent::new("warning", label) })
                }
                StreamMode::Log => outln!("warning {} {}", who(label), quoted(message)),
                StreamMode::Live => self.live.note(&format!("warning in {}: {message}", who(label))),
            },
        }
        true
    }
}
