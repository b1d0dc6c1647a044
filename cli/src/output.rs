//! What the commands print and how: stdout through `out` (a closed pipe ends the process
//! quietly, by SIGPIPE), the `outln!`/`outp!` macros, the progress line on stderr, warnings,
//! the terminal's size, tables, and the JSON helpers.

use serde::Serialize;

use crate::error::{internal, CliResult};

/// Everything the commands print goes through here: a write error ends the process — quietly,
/// by SIGPIPE, when the reader went away — instead of panicking as `println!` does.
pub(crate) mod out {
    use std::fmt;
    use std::io::{self, Write};

    pub fn write(args: fmt::Arguments<'_>) {
        super::progress::clear();
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout.write_fmt(args) {
            fail(e)
        }
    }

    pub fn flush() {
        if let Err(e) = io::stdout().lock().flush() {
            fail(e)
        }
    }

    /// Ends the process after a failed write to stdout.
    pub fn fail(e: io::Error) -> ! {
        if e.kind() == io::ErrorKind::BrokenPipe {
            broken_pipe()
        }
        let _ = writeln!(io::stderr(), "pardec: writing to stdout: {e}");
        std::process::exit(1)
    }

    /// The reader of stdout is gone (EPIPE: SIGPIPE was ignored after all): end as the signal
    /// would have ended the process, the conventional status of `cmd | head`.
    pub fn broken_pipe() -> ! {
        super::progress::clear();
        #[cfg(unix)]
        // SAFETY: restoring a signal's default disposition and raising it; nothing is shared.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + 13)
    }
}

macro_rules! outln {
    () => { $crate::output::out::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

macro_rules! outp {
    ($($t:tt)*) => { $crate::output::out::write(format_args!($($t)*)) };
}

/// The size of the terminal behind `fd` (columns, rows), if it is one.
pub(crate) fn term_size(fd: i32) -> Option<(usize, usize)> {
    #[cfg(unix)]
    // SAFETY: TIOCGWINSZ fills a winsize; a failure leaves it zeroed and returns -1.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col as usize, (ws.ws_row as usize).max(1)));
        }
    }
    let _ = fd;
    None
}

pub(crate) fn columns(fd: i32) -> usize {
    term_size(fd)
        .map(|(c, _)| c)
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
        .unwrap_or(80)
        .max(20)
}

/// Progress of long work on stderr: one line redrawn in place on a terminal, plain
/// `pardec: ...` lines otherwise (phases only; token counts are for terminals).
pub(crate) mod progress {
    use std::io::{IsTerminal, Write};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    struct State {
        shown: bool,
        last: Option<Instant>,
    }

    static STATE: Mutex<State> = Mutex::new(State { shown: false, last: None });

    pub fn stderr_is_tty() -> bool {
        static TTY: OnceLock<bool> = OnceLock::new();
        *TTY.get_or_init(|| std::io::stderr().is_terminal())
    }

    fn draw(state: &mut State, msg: &str) {
        let width = super::columns(2);
        let msg: String = msg.chars().take(width - 1).collect();
        let _ = write!(std::io::stderr(), "\r\x1b[2K{msg}");
        state.shown = true;
        state.last = Some(Instant::now());
    }

    /// A step of long work (loading, one benchmark row): shown in both modes.
    pub fn phase(msg: &str) {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if stderr_is_tty() {
            draw(&mut state, msg);
        } else {
            let _ = writeln!(std::io::stderr(), "pardec: {msg}");
        }
    }

    /// A frequent update (tokens so far): terminals only, at most ten a second.
    pub fn tick(msg: impl FnOnce() -> String) {
        if !stderr_is_tty() {
            return;
        }
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        draw(&mut state, &msg());
    }

    /// Removes the progress line (before output or an error message).
    pub fn clear() {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if state.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            state.shown = false;
            state.last = None;
        }
    }
}

pub(crate) fn warn(msg: &str) {
    progress::clear();
    eprintln!("pardec: warning: {msg}");
}

/// `value` as JSON text (pretty or on one line) for a command's result: a failure is an
/// internal error of the command (exit code 1).
pub(crate) fn to_json<T: Serialize>(value: &T, pretty: bool) -> CliResult<String> {
    if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) }.map_err(internal)
}

/// A string quoted as JSON (escapes control characters, quotes).
pub(crate) fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// `value` as JSON on one line, as `to_json(value, false)`, but failing with an `io::Error`:
/// for writers that stream JSON piece by piece into an `io::Write` (`write_layout_json`), where
/// a failure ends the command as a failed write to stdout does (`out::fail`).
pub(crate) fn to_json_io<T: Serialize>(value: &T) -> std::io::Result<String> {
    serde_json::to_string(value).map_err(std::io::Error::other)
}

/// Rows under right-aligned headers, each column as wide as its widest cell.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{}{c}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(headers.to_vec()));
    for r in rows {
        outln!("{}", line(r.iter().map(String::as_str).collect()));
    }
}
