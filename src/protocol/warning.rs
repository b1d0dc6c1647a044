//! Warnings about malformed model output. Each names what went wrong, where (a byte offset
//! in the stream's text), and implies a documented fallback: nothing malformed ever stops
//! decoding or panics.

use serde::Serialize;
use std::fmt;

/// What was malformed. The fallback taken is given per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A trigger with no usable announcement before it. Fallback: no fork; the block is
    /// decoded serially until it closes.
    NoAnnouncements,
    /// An announcement without a label (or with an empty title). Fallback: it does not count.
    BadLabel,
    /// An announcement with no closing tag before the next one or the trigger. Fallback: it
    /// ends there.
    UnclosedAnnouncement,
    /// A label announced twice. Fallback: the later one is dropped.
    DuplicateLabel,
    /// Labels are not 1, 2, 3… (or `L.1`, `L.2`… inside branch `L`). Fallback: used as
    /// written.
    LabelsNotConsecutive,
    /// A nested label not under its branch's label (`1.1` inside branch `2`). Fallback: used
    /// as written.
    LabelOutsideParent,
    /// More branches announced than the cap. Fallback: the first `cap` are kept.
    TooManyBranches,
    /// A trigger outside a block, in a protocol whose blocks have an opener. Fallback: the
    /// block is taken as opened at the last boundary.
    MissingBlockOpen,
    /// A block left open: a new trigger after a join, a branch end inside a nested block, or
    /// the stream's end. Fallback: the block is taken as closed there.
    UnclosedBlock,
    /// A control string that is illegal where it appears (a stray closer, a branch tag in
    /// the trunk…). Fallback: treated as text.
    ForbiddenTag,
    /// A nested block past `max_depth`. Fallback: the nested opener is treated as text.
    NestingTooDeep,
    /// Text after the stream stopped (after its trigger, or after its end marker).
    /// Fallback: ignored by the protocol (it stays in the text).
    TextAfterStop,
    /// A branch ended without its end marker (length limit, cancellation, or the end of an
    /// analysed text). Fallback: the branch is closed there.
    BranchNotClosed,
    /// The number of branches found differs from the number announced (complete texts).
    CountMismatch,
    /// `joined` was called on a stream that had not forked. Fallback: ignored.
    UnexpectedJoin,
}

/// One malformation, at byte offset `at` of the stream's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// What was malformed; each kind documents the fallback taken.
    pub kind: WarningKind,
    /// Byte offset in the stream's text (the watcher's [`Watcher::text`](super::Watcher::text),
    /// or the text given to a parser) where the problem was found.
    pub at: usize,
    /// A readable description, quoting a short excerpt of the text.
    pub message: String,
}

impl Warning {
    pub(crate) fn new(kind: WarningKind, at: usize, message: impl Into<String>) -> Warning {
        Warning { kind, at, message: message.into() }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at byte {}: {}", self.kind, self.at, self.message)
    }
}

/// A short, printable excerpt of model text for messages (at most `max` characters).
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let mut s: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        s.push('…');
    }
    format!("{s:?}")
}
