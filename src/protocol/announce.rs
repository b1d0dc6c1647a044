//! Reading the branches a model announced before a trigger (`<Outline>1: …</Outline>`,
//! `<|title|>…<|/title|>`). Linear in the text, whatever it holds.

use serde::Serialize;

use super::spec::{Announce, LabelRule, ProtocolSpec};
use super::warning::{excerpt, Warning, WarningKind};

/// One announced branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announced {
    /// `2`, `2.1` (numbered rule), or the 1-based order (title rule).
    pub label: String,
    /// The rest of the announcement, trimmed.
    pub title: String,
    /// Byte offset in the parsed text where the announcement's opening tag starts.
    pub start: usize,
    /// Byte offset just past its closing tag (exclusive; where an unclosed announcement was
    /// cut: the next opening tag, or the end of the text).
    pub end: usize,
}

/// The announcements in `text` (the text of a block before its trigger), in order, as written:
/// duplicates and gaps are kept (a fork drops repeats and caps the count).
/// Empty for protocols that do not announce branches.
pub fn parse_announcements(spec: &ProtocolSpec, text: &str) -> Vec<Announced> {
    parse_announcements_with_warnings(spec, text).0
}

/// [`parse_announcements`], with warnings for announcements that were skipped or unclosed
/// (positions relative to `text`).
pub fn parse_announcements_with_warnings(spec: &ProtocolSpec, text: &str) -> (Vec<Announced>, Vec<Warning>) {
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    let Announce::Tagged { open, close, label } = &spec.announce else {
        return (found, warnings);
    };
    if open.is_empty() || close.is_empty() {
        return (found, warnings);
    }
    // Each search resumes where the previous one left off, and the last close found is
    // remembered while it lies ahead, so thousands of unclosed announcements stay linear.
    let mut cursor = 0;
    let mut next_open = find_from(text, open, 0);
    let mut next_close: Option<usize> = None;
    let mut close_exhausted = false;
    while let Some(start) = next_open {
        let body_start = start + open.len();
        next_open = find_from(text, open, body_start);
        if !close_exhausted && next_close.map_or(true, |c| c < body_start) {
            next_close = find_from(text, close, body_start);
            close_exhausted = next_close.is_none();
        }
        let (body_end, end) = match next_close {
            Some(c) if c >= body_start && next_open.map_or(true, |n| c < n) => (c, c + close.len()),
            _ => {
                let stop = next_open.unwrap_or(text.len());
                warnings.push(Warning::new(
                    WarningKind::UnclosedAnnouncement,
                    start,
                    format!("announcement {} has no {close:?}", excerpt(&text[start..stop], 40)),
                ));
                (stop, stop)
            }
        };
        let body = &text[body_start..body_end];
        match label {
            LabelRule::Numbered { separator } => match numbered_label(body, separator) {
                Some((l, rest)) => {
                    found.push(Announced { label: l.to_string(), title: rest.trim().to_string(), start, end })
                }
                None => warnings.push(Warning::new(
                    WarningKind::BadLabel,
                    start,
                    format!("announcement {} does not start with a number and {separator:?}", excerpt(body, 40)),
                )),
            },
            LabelRule::Title { verbatim } => {
                let title = if *verbatim { body } else { body.trim() };
                if title.is_empty() {
                    warnings.push(Warning::new(WarningKind::BadLabel, start, "announcement with an empty title"));
                } else {
                    found.push(Announced {
                        label: (found.len() + 1).to_string(),
                        title: title.to_string(),
                        start,
                        end,
                    });
                }
            }
        }
        cursor = cursor.max(end);
        if next_open.is_some_and(|n| n < cursor) {
            next_open = find_from(text, open, cursor);
        }
    }
    (found, warnings)
}

fn find_from(text: &str, pat: &str, from: usize) -> Option<usize> {
    text.get(from..)?.find(pat).map(|i| i + from)
}

/// `\s*([0-9]+(\.[0-9]+)*)\s*{separator}` at the start of `body`: the label and what follows
/// the separator.
pub(crate) fn numbered_label<'a>(body: &'a str, separator: &str) -> Option<(&'a str, &'a str)> {
    let start = body.len() - body.trim_start().len();
    let b = body.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = start;
    let n = digits(i);
    if n == 0 {
        return None;
    }
    i += n;
    while i < b.len() && b[i] == b'.' {
        let n = digits(i + 1);
        if n == 0 {
            break;
        }
        i += 1 + n;
    }
    let label = &body[start..i];
    let after = &body[i..];
    let after = after.trim_start();
    after.strip_prefix(separator).map(|rest| (label, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_labels_follow_the_regex() {
        assert_eq!(numbered_label(" 2.1 : go", ":"), Some(("2.1", " go")));
        assert_eq!(numbered_label("\n3:x", ":"), Some(("3", "x")));
        assert_eq!(numbered_label("1.:x", ":"), None);
        assert_eq!(numbered_label("a1:x", ":"), None);
        assert_eq!(numbered_label("12", ":"), None);
    }

    #[test]
    fn multiverse_outlines() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let text = "<Goal>Plan.<Outline>1: add</Outline>\n<Outline> 2 : sub </Outline><Outline>x</Outline></Goal>";
        let (a, w) = parse_announcements_with_warnings(&spec, text);
        assert_eq!(
            a.iter().map(|a| (a.label.as_str(), a.title.as_str())).collect::<Vec<_>>(),
            vec![("1", "add"), ("2", "sub")]
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, WarningKind::BadLabel);
    }

    #[test]
    fn unclosed_announcements_end_at_the_next_one() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let text = "<Outline>1: a<Outline>2: b</Outline><Outline>3: c";
        let (a, w) = parse_announcements_with_warnings(&spec, text);
        assert_eq!(a.iter().map(|a| a.title.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(w.iter().filter(|w| w.kind == WarningKind::UnclosedAnnouncement).count(), 2);
        assert_eq!(w[0].at, 0);
    }

    #[test]
    fn titles() {
        let mut spec = ProtocolSpec::builtin("aspd").unwrap();
        let text = "Intro. <|title|>Pros<|/title|><|title|> <|/title|><|title|>Cons<|/title|>";
        // ASPD's engine takes a title as written, a lone space included.
        let (a, _) = parse_announcements_with_warnings(&spec, text);
        assert_eq!(a.iter().map(|a| a.title.as_str()).collect::<Vec<_>>(), vec!["Pros", " ", "Cons"]);
        spec.announce = Announce::Tagged {
            open: "<|title|>".into(),
            close: "<|/title|>".into(),
            label: LabelRule::Title { verbatim: false },
        };
        let (a, w) = parse_announcements_with_warnings(&spec, text);
        assert_eq!(
            a.iter().map(|a| (a.label.as_str(), a.title.as_str())).collect::<Vec<_>>(),
            vec![("1", "Pros"), ("2", "Cons")]
        );
        assert_eq!(w[0].kind, WarningKind::BadLabel);
    }

    #[test]
    fn thousands_of_unclosed_announcements_are_linear() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let text = "<Outline>1: x ".repeat(20_000);
        let t = std::time::Instant::now();
        let (a, _) = parse_announcements_with_warnings(&spec, &text);
        assert_eq!(a.len(), 20_000);
        assert!(t.elapsed().as_secs() < 5);
    }
}
