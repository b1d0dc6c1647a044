//! The live terminal view of `run --stream` (stdout a terminal): the trunk's text inline, one
//! redrawn line per running branch, and the cleaning of a model's text for the terminal.

use std::time::Instant;

use crate::output::{columns, out, term_size};

/// The terminal view of `--stream`: the trunk's text as it comes, and while branches run one
/// line per branch (`[label] text`, the tail that fits), redrawn in place; a finished
/// branch's line is dimmed. A joined block stays on screen and the trunk goes on below it.
pub(super) struct Live {
    lines: Vec<LiveLine>,
    /// Lines of the region on screen (the cursor is on the line below them).
    drawn: usize,
    last_draw: Option<Instant>,
    /// The cursor is at the start of a line (outside the region).
    at_line_start: bool,
}

struct LiveLine {
    label: String,
    text: String,
    done: bool,
}

impl Live {
    pub(super) fn new() -> Live {
        Live { lines: Vec::new(), drawn: 0, last_draw: None, at_line_start: true }
    }

    pub(super) fn prompt(&mut self, text: &str) {
        outp!("\x1b[2m{}\x1b[0m", clean_inline(text));
        self.at_line_start = text.ends_with('\n');
        if !self.at_line_start {
            outln!();
            self.at_line_start = true;
        }
        out::flush();
    }

    /// Text of a node: inline for the trunk, into its line for a branch.
    pub(super) fn text(&mut self, label: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        if label.is_empty() {
            if !self.lines.is_empty() {
                self.freeze();
            }
            outp!("{}", clean_inline(text));
            self.at_line_start = text.ends_with('\n');
            out::flush();
            return;
        }
        match self.lines.iter_mut().find(|l| l.label == label) {
            Some(line) => line.text.push_str(text),
            None => self.lines.push(LiveLine { label: label.to_string(), text: text.to_string(), done: false }),
        }
        self.draw(false);
    }

    pub(super) fn fork(&mut self, parent: &str, branches: &[String]) {
        if self.lines.is_empty() && !self.at_line_start {
            outln!();
            self.at_line_start = true;
        }
        // Children go after their parent's line and the lines already below it.
        let nested =
            |l: &LiveLine| !parent.is_empty() && (l.label == parent || l.label.starts_with(&format!("{parent}.")));
        let at = self.lines.iter().rposition(nested).map_or(self.lines.len(), |i| i + 1);
        let new = branches
            .iter()
            .filter(|b| !self.lines.iter().any(|l| &l.label == *b))
            .map(|b| LiveLine { label: b.clone(), text: String::new(), done: false })
            .collect::<Vec<_>>();
        self.lines.splice(at..at, new);
        self.draw(true);
    }

    pub(super) fn end(&mut self, label: &str) {
        if let Some(line) = self.lines.iter_mut().find(|l| l.label == label) {
            line.done = true;
            self.draw(true);
        }
    }

    pub(super) fn join(&mut self, label: &str, text: Option<&str>) {
        if label.is_empty() {
            self.freeze();
            // The block's lines end in a line break already.
            if let Some(t) = text.map(|t| t.strip_prefix('\n').unwrap_or(t)) {
                self.text("", t);
            }
        } else {
            self.draw(true);
        }
    }

    /// A message above the region (which is redrawn below it).
    pub(super) fn note(&mut self, msg: &str) {
        let mut s = String::new();
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        } else if !self.at_line_start {
            s.push('\n');
        }
        s.push_str(&format!("\r\x1b[2K\x1b[33m{}\x1b[0m\n", clean_line(msg)));
        outp!("{s}");
        self.at_line_start = true;
        self.drawn = 0;
        self.draw(true);
    }

    /// Draws the region's final state and leaves it on screen.
    fn freeze(&mut self) {
        self.draw(true);
        self.lines.clear();
        self.drawn = 0;
        self.at_line_start = true;
    }

    /// Ends the view with a blank line (the result follows).
    pub(super) fn finish(&mut self) {
        if !self.lines.is_empty() {
            self.freeze();
        }
        if !self.at_line_start {
            outln!();
        }
        outln!();
        self.at_line_start = true;
    }

    fn draw(&mut self, force: bool) {
        if self.lines.is_empty() {
            return;
        }
        if !force && self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 40) {
            return;
        }
        let (width, rows) = term_size(1).unwrap_or((columns(1), 24));
        // A region taller than the screen could not be redrawn in place: the rest is counted.
        let room = rows.saturating_sub(2).max(1);
        let shown = if self.lines.len() > room { room.saturating_sub(1).max(1) } else { self.lines.len() };
        let mut s = String::from("\x1b[?7l"); // no wrapping while drawing
        if self.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for line in &self.lines[..shown] {
            s.push_str("\r\x1b[2K");
            s.push_str(&render_line(line, width));
            s.push('\n');
        }
        let mut drawn = shown;
        if shown < self.lines.len() {
            let running = self.lines[shown..].iter().filter(|l| !l.done).count();
            s.push_str(&format!("\r\x1b[2K… {} more branches ({running} running)\n", self.lines.len() - shown));
            drawn += 1;
        }
        s.push_str("\x1b[?7h");
        outp!("{s}");
        out::flush();
        self.drawn = drawn;
        self.last_draw = Some(Instant::now());
    }
}

/// `[label] text`, the text's tail cut to the width, on one line.
fn render_line(line: &LiveLine, width: usize) -> String {
    let head = format!("[{}] ", line.label);
    let body = clean_line(&line.text);
    let room = width.saturating_sub(head.chars().count() + 1).max(1);
    let n = body.chars().count();
    let body = if n > room {
        let tail: String = body.chars().skip(n - room + 1).collect();
        format!("…{tail}")
    } else {
        body
    };
    if line.done {
        format!("\x1b[2m{head}{body}\x1b[0m")
    } else {
        format!("\x1b[1m{head}\x1b[0m{body}")
    }
}

/// Text for one line: newlines shown as ⏎, other control characters dropped.
fn clean_line(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' => Some('⏎'),
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Text for the terminal as is, without control characters but newlines and tabs (a model's
/// escape sequences must not drive the terminal).
fn clean_inline(text: &str) -> String {
    text.chars().filter(|&c| c == '\n' || c == '\t' || !c.is_control()).collect()
}
