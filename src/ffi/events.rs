//! Streamed events: the C view of the engine's events, and the observer that sends them to a
//! caller's callback.

use std::ffi::{c_char, c_void};
use std::mem::size_of;

use super::boundary::{fill_c_buf, FfiResult};
use super::node::{pardec_node, PARDEC_NODE_TRUNK};
use super::result::{pardec_stop_reason, pardec_top_logprob, stop_reason_code};
use super::status::pardec_status;
use crate::{Event, NodeId, Observer};

/// What a `pardec_event` reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pardec_event_kind {
    /// A token was decoded into `node`: `text` holds the characters it completed (whole UTF-8,
    /// possibly empty while a character is split over tokens). `token` is -1 for the flush of a
    /// node's last incomplete bytes.
    Token = 0,
    /// `node` stopped generating; `stop_reason` says why.
    End = 1,
    /// The call (generate or run) is about to return `status`. The callback's return value is
    /// ignored. Not sent by `pardec_session_step`.
    Done = 2,
    /// Auto mode: `node` (label `label`) forked; `text` lists the new branches' labels,
    /// comma-separated ("1,2,3" or "2.1,2.2").
    Fork = 3,
    /// Auto mode: the block of `node` was joined; `node` continues seeing its branches.
    Join = 4,
    /// Auto mode: malformed model output in the stream `label`; `text` says what and which
    /// fallback was taken (decoding goes on).
    Warning = 5,
}

/// One streamed event. Everything it points to is valid only during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pardec_event {
    /// `sizeof(pardec_event)` as this library knows it: fields beyond a caller's own header
    /// are absent when this is smaller.
    pub struct_size: usize,
    /// What happened: a `pardec_event_kind` value, which says which fields below are set.
    pub kind: pardec_event_kind,
    /// The node the event is about (`PARDEC_NODE_TRUNK` for the trunk and for DONE).
    pub node: pardec_node,
    /// The node's label path, NUL-terminated: "" for the trunk, "1", "2", "2.1" ... for
    /// branches (branch 1 of the fork of branch 2).
    pub label: *const c_char,
    /// TOKEN: the text piece, NUL-terminated; "" for other kinds.
    pub text: *const c_char,
    /// Length of `text` in bytes.
    pub text_len: usize,
    /// TOKEN: the token id (-1 for a flush); -1 otherwise.
    pub token: i32,
    /// END: why the node stopped; NONE otherwise.
    pub stop_reason: pardec_stop_reason,
    /// END with STOP_STRING: the stop string that matched; NULL otherwise.
    pub stop_string: *const c_char,
    /// DONE: the status the call returns; OK otherwise.
    pub status: pardec_status,
    /// TOKEN, when the session records log-probabilities (`pardec_session_params.logprobs` is
    /// 0 or more) and this is not a flush: true, and the three fields below are set. Appended
    /// in 0.5: check `struct_size` before reading them.
    pub has_logprob: bool,
    /// The token's natural-log probability under the model (<= 0).
    pub logprob: f32,
    /// The step's most likely tokens, most likely first (`n_top` entries; NULL when 0).
    pub top: *const pardec_top_logprob,
    /// Entries of `top`.
    pub n_top: usize,
}

/// Receives events on the thread that made the call, before it returns. Return true to go
/// on, false to cancel: the call then returns PARDEC_STATUS_CANCELLED after the events of the
/// current step (which may include a few more TOKEN and END events), and the session stays
/// usable. The callback must not unwind (no C++ exceptions, no longjmp) and must not call
/// functions of the same session (they return PARDEC_STATUS_BUSY).
pub type pardec_callback = Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const pardec_event) -> bool>;

/// Turns Rust events into `pardec_event`s for a C callback. The buffers are reused, so no
/// allocation per token once they have grown.
pub(super) struct CObserver {
    callback: pardec_callback,
    user_data: *mut c_void,
    label: Vec<u8>,
    text: Vec<u8>,
    stop: Vec<u8>,
    top: Vec<pardec_top_logprob>,
}

impl CObserver {
    pub(super) fn new(callback: pardec_callback, user_data: *mut c_void) -> Self {
        CObserver { callback, user_data, label: Vec::new(), text: Vec::new(), stop: Vec::new(), top: Vec::new() }
    }

    fn blank(&mut self, kind: pardec_event_kind) -> pardec_event {
        fill_c_buf(&mut self.label, "");
        fill_c_buf(&mut self.text, "");
        pardec_event {
            struct_size: size_of::<pardec_event>(),
            kind,
            node: PARDEC_NODE_TRUNK,
            label: self.label.as_ptr() as *const c_char,
            text: self.text.as_ptr() as *const c_char,
            text_len: 0,
            token: -1,
            stop_reason: pardec_stop_reason::None,
            stop_string: std::ptr::null(),
            status: pardec_status::Ok,
            has_logprob: false,
            logprob: 0.0,
            top: std::ptr::null(),
            n_top: 0,
        }
    }

    /// An event about `node` with its label and a text (TOKEN, FORK, JOIN, WARNING).
    fn text_event(&mut self, kind: pardec_event_kind, node: NodeId, label: &str, text: &str) -> pardec_event {
        let mut ev = self.blank(kind);
        fill_c_buf(&mut self.label, label);
        fill_c_buf(&mut self.text, text);
        ev.node = node.index() as pardec_node;
        ev.label = self.label.as_ptr() as *const c_char;
        ev.text = self.text.as_ptr() as *const c_char;
        ev.text_len = self.text.len() - 1;
        ev
    }

    /// Sends the final DONE event (its return value means nothing).
    fn done(&mut self, status: pardec_status) {
        if let Some(cb) = self.callback {
            let mut ev = self.blank(pardec_event_kind::Done);
            ev.status = status;
            unsafe { cb(self.user_data, &ev) };
        }
    }
}

impl CObserver {
    /// The C view of `event`, pointing into this observer's buffers (valid until the next
    /// event); None for events the ABI has no kind for.
    pub(super) fn c_event(&mut self, event: &Event<'_>) -> Option<pardec_event> {
        // Exhaustive on purpose: a new event kind needs an ABI decision.
        let ev = match *event {
            Event::Token { node, label, token, text, logprob } => {
                let mut ev = self.text_event(pardec_event_kind::Token, node, label, text);
                ev.token = token;
                if let Some(lp) = logprob {
                    self.top.clear();
                    self.top.extend(lp.top.iter().map(|&(token, logprob)| pardec_top_logprob { token, logprob }));
                    ev.has_logprob = true;
                    ev.logprob = lp.logprob;
                    ev.top = if self.top.is_empty() { std::ptr::null() } else { self.top.as_ptr() };
                    ev.n_top = self.top.len();
                }
                ev
            }
            Event::Fork { parent, label, branches } => {
                self.text_event(pardec_event_kind::Fork, parent, label, &branches.join(","))
            }
            Event::Join { parent, label, .. } => self.text_event(pardec_event_kind::Join, parent, label, ""),
            Event::Warning { label, message } => {
                self.text_event(pardec_event_kind::Warning, NodeId::TRUNK, label, message)
            }
            // No kind for it in the ABI (see the variant's docs): the caller reads the text in
            // the result.
            Event::Forced { .. } => return None,
            Event::End { node, label, reason } => {
                let mut ev = self.blank(pardec_event_kind::End);
                fill_c_buf(&mut self.label, label);
                let (code, stop) = stop_reason_code(Some(reason));
                let stop_string = match stop {
                    Some(s) => {
                        fill_c_buf(&mut self.stop, s);
                        self.stop.as_ptr() as *const c_char
                    }
                    None => std::ptr::null(),
                };
                ev.node = node.index() as pardec_node;
                ev.label = self.label.as_ptr() as *const c_char;
                ev.stop_reason = code;
                ev.stop_string = stop_string;
                ev
            }
        };
        Some(ev)
    }
}

impl Observer for CObserver {
    fn on_event(&mut self, event: &Event<'_>) -> bool {
        let Some(cb) = self.callback else { return true };
        match self.c_event(event) {
            Some(ev) => unsafe { cb(self.user_data, &ev) },
            None => true,
        }
    }
}

/// Runs a streaming operation and sends DONE with its status.
pub(super) fn streaming<R>(
    callback: pardec_callback,
    user_data: *mut c_void,
    op: impl FnOnce(&mut CObserver) -> FfiResult<R>,
) -> FfiResult<R> {
    let mut observer = CObserver::new(callback, user_data);
    let result = op(&mut observer);
    observer.done(match &result {
        Ok(_) => pardec_status::Ok,
        Err(e) => e.status,
    });
    result
}
