//! The decoding thread: owns the session (which is not `Sync`) and steps every request in it.
//!
//! HTTP handlers talk to it through a channel of [`Command`]s; each request gets an unbounded
//! channel of [`Note`]s back. A handler that goes away (the client hung up) drops its
//! receiver: the thread sees the closed channel before its next step and cancels the request,
//! freeing its cells and sequence ids at once. The thread never blocks on a client.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use pardec::conversations::{Conversations, Outcome, Request, RequestId, Sink};
use pardec::{Error, Event, Model, StopReason, TokenLogprob};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;

/// What a handler asks of the decoding thread.
pub(crate) enum Command {
    /// Queue a request; the reply says whether it was taken, and notes follow on `notes`.
    Submit(Box<Submission>),
    /// Cancel every request now (shutdown after the grace period).
    CancelAll,
}

/// A request for the decoding thread, with its way back.
pub(crate) struct Submission {
    pub(crate) request: Request,
    /// Its stop strings (a stream holds back what may be the start of one).
    pub(crate) stops: Vec<String>,
    /// Whether the client reads the answer as it settles; otherwise only `Done` is sent, so
    /// that no handler wakes per step (on a small machine every wake takes a core from the
    /// decode's threads).
    pub(crate) stream: bool,
    /// Where its notes go.
    pub(crate) notes: mpsc::UnboundedSender<Note>,
    /// Whether it was taken.
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
}

/// What the decoding thread tells a request's handler.
#[derive(Debug)]
pub(crate) enum Note {
    /// More of the answer, settled: it never changes after this.
    Content(String),
    /// A branch wrote `text` (the stream's extension; the content has it at its join).
    Branch { label: String, text: String },
    /// `label` forked into `branches`.
    Fork { label: String, branches: Vec<String> },
    /// `label`'s block was joined, keeping `kept` branches.
    Join { label: String, kept: usize },
    /// Malformed model output and the fallback taken.
    Warning { label: String, message: String },
    /// The request is over; the last note.
    Done(Box<Finished>),
}

/// A finished request, as the HTTP layer reports it.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) text: String,
    pub(crate) finish_reason: &'static str,
    pub(crate) error: Option<Error>,
    pub(crate) prompt_tokens: usize,
    pub(crate) reused_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) steps: usize,
    pub(crate) blocks: usize,
    pub(crate) warnings: usize,
    pub(crate) queued_ms: f64,
    pub(crate) decode_ms: f64,
    /// The answer's tokens with their log-probabilities, when the request asked for them.
    pub(crate) logprobs: Option<Vec<TokenChoice>>,
}

/// One sampled token of an answer that asked for log-probabilities.
#[derive(Debug)]
pub(crate) struct TokenChoice {
    /// The token's bytes (a character may be split over tokens).
    pub(crate) bytes: Vec<u8>,
    pub(crate) logprob: f32,
    /// The step's most likely tokens, most likely first: bytes and log-probability.
    pub(crate) top: Vec<(Vec<u8>, f32)>,
}

impl TokenChoice {
    fn new(lp: &TokenLogprob, model: &Model) -> TokenChoice {
        let bytes = |t| {
            let mut b = Vec::new();
            model.token_bytes(t, &mut b);
            b
        };
        TokenChoice {
            bytes: bytes(lp.token),
            logprob: lp.logprob,
            top: lp.top.iter().map(|&(t, l)| (bytes(t), l)).collect(),
        }
    }
}

impl Finished {
    /// `model` renders the tokens of `logprobs` when they were asked for.
    fn from_outcome(o: Outcome, model: &Model, logprobs: bool) -> Finished {
        let length = matches!(o.stop_reason, Some(StopReason::MaxTokens | StopReason::KvCacheFull));
        Finished {
            finish_reason: if length { "length" } else { "stop" },
            prompt_tokens: o.prompt_tokens,
            reused_tokens: o.reused_tokens,
            completion_tokens: o.generated_tokens,
            steps: o.steps,
            blocks: o.report.as_ref().map_or(0, |r| r.blocks.len()),
            warnings: o.report.as_ref().map_or(0, |r| r.warnings.len()),
            queued_ms: o.queued.as_secs_f64() * 1e3,
            decode_ms: o.decoding.as_secs_f64() * 1e3,
            logprobs: logprobs.then(|| o.logprobs.iter().map(|lp| TokenChoice::new(lp, model)).collect()),
            text: o.text,
            error: o.error,
        }
    }
}

/// A request's channel and how much of its answer went out.
struct Client {
    notes: mpsc::UnboundedSender<Note>,
    stream: bool,
    /// Bytes of the answer sent as content.
    sent: usize,
    /// Bytes held back at the end of the settled text: a stop string may begin there.
    hold: usize,
    /// Whether it asked for log-probabilities.
    logprobs: bool,
}

/// Sends the library's per-request events to their clients.
struct Fanout<'a> {
    clients: &'a mut HashMap<RequestId, Client>,
    /// Renders tokens for log-probabilities.
    model: &'a Model,
    metrics: &'a Metrics,
    /// Tokens sampled in this step, all requests and branches.
    sampled: u64,
}

impl Sink for Fanout<'_> {
    fn event(&mut self, id: RequestId, event: &Event<'_>) {
        match event {
            Event::Fork { .. } => self.metrics.forks.inc(),
            Event::Token { token, .. } if *token >= 0 => self.sampled += 1,
            _ => {}
        }
        let Some(client) = self.clients.get(&id).filter(|c| c.stream) else { return };
        let note = match *event {
            Event::Token { label, text, .. } if !label.is_empty() && !text.is_empty() => {
                Note::Branch { label: label.to_string(), text: text.to_string() }
            }
            Event::Fork { label, branches, .. } => Note::Fork { label: label.to_string(), branches: branches.to_vec() },
            Event::Join { label, kept, .. } => Note::Join { label: label.to_string(), kept },
            Event::Warning { label, message } => {
                Note::Warning { label: label.to_string(), message: message.to_string() }
            }
            _ => return,
        };
        // A closed channel is a client that hung up: cancelled before the next step.
        let _ = client.notes.send(note);
    }

    fn finished(&mut self, id: RequestId, outcome: Outcome) {
        let Some(client) = self.clients.remove(&id) else { return };
        self.metrics.finished(&outcome);
        let finished = Finished::from_outcome(outcome, self.model, client.logprobs);
        // What the stream has not sent yet: the final text is the settled text with any stop
        // string cut off, so it extends what was sent.
        if let Some(rest) = finished.text.get(client.sent..).filter(|r| client.stream && !r.is_empty()) {
            let _ = client.notes.send(Note::Content(rest.to_string()));
        }
        let _ = client.notes.send(Note::Done(Box::new(finished)));
    }
}

/// Runs until every command sender is gone and nothing is left to decode.
pub(crate) fn run(mut conversations: Conversations, commands: Receiver<Command>, metrics: Arc<Metrics>) {
    let mut clients: HashMap<RequestId, Client> = HashMap::new();
    let model = conversations.session().model().clone();
    let mut open = true;
    loop {
        // Idle: wait for work (waking now and then to publish the load).
        if conversations.is_idle() {
            if !open {
                return;
            }
            match commands.recv_timeout(Duration::from_millis(500)) {
                Ok(c) => take(c, &mut conversations, &mut clients, &metrics),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => take(c, &mut conversations, &mut clients, &metrics),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let gone: Vec<RequestId> = clients.iter().filter(|(_, c)| c.notes.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            conversations.cancel(id);
            clients.remove(&id);
            metrics.hung_up.inc();
        }
        let mut fanout = Fanout { clients: &mut clients, model: &model, metrics: &metrics, sampled: 0 };
        if let Err(e) = conversations.step(&mut fanout) {
            // Every running request has finished with the error; the server goes on.
            eprintln!("pardec serve: a decode step failed: {e}");
        }
        let sampled = fanout.sampled;
        metrics.stepped(sampled, conversations.load());
        send_settled(&conversations, &mut clients);
    }
}

/// Queues a submitted request (or refuses it) and registers its client.
fn take(
    command: Command,
    conversations: &mut Conversations,
    clients: &mut HashMap<RequestId, Client>,
    metrics: &Metrics,
) {
    match command {
        Command::Submit(submission) => {
            let Submission { request, stops, stream, notes, reply } = *submission;
            let logprobs = request.logprobs.is_some();
            match conversations.submit(request) {
                Ok(id) => {
                    let hold = stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
                    clients.insert(id, Client { notes, stream, sent: 0, hold, logprobs });
                    metrics.requests.inc();
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    metrics.refused.inc();
                    let _ = reply.send(Err(e));
                }
            }
        }
        Command::CancelAll => {
            let model = conversations.session().model().clone();
            for (id, client) in clients.drain() {
                conversations.cancel(id);
                let cancelled = Outcome { error: Some(Error::Cancelled), ..Default::default() };
                let _ = client.notes.send(Note::Done(Box::new(Finished::from_outcome(cancelled, &model, false))));
            }
        }
    }
}

/// Sends each decoding request the part of its answer that settled since the last step,
/// up to a whole character and short of the bytes where a stop string may be starting.
fn send_settled(conversations: &Conversations, clients: &mut HashMap<RequestId, Client>) {
    for (&id, client) in clients.iter_mut().filter(|(_, c)| c.stream) {
        let Some(settled) = conversations.settled_answer(id) else { continue };
        let upto = settled.len().saturating_sub(client.hold);
        if upto <= client.sent {
            continue;
        }
        let fresh = &settled[client.sent..upto];
        let (text, consumed) = match std::str::from_utf8(fresh) {
            Ok(s) => (s.to_string(), fresh.len()),
            // A character still being completed waits for its last byte.
            Err(e) if e.error_len().is_none() => {
                (String::from_utf8_lossy(&fresh[..e.valid_up_to()]).into_owned(), e.valid_up_to())
            }
            // Bytes that are no UTF-8 at all (raw byte tokens) go out replaced, as the final
            // text has them.
            Err(_) => (String::from_utf8_lossy(fresh).into_owned(), fresh.len()),
        };
        if text.is_empty() {
            continue;
        }
        client.sent += consumed;
        let _ = client.notes.send(Note::Content(text));
    }
}
