//! Finding control strings in text that may still be growing.
//!
//! The scan is leftmost-first. While the text may grow, a position whose remaining bytes are
//! a proper prefix of some control string is *pending*: nothing at or after it is decided
//! until more text arrives (or the text is declared complete). Every decision therefore
//! depends only on the text itself, never on how it was split into pieces.

use super::spec::{ProtocolSpec, Role};

/// The control strings of one protocol, ready to scan for.
#[derive(Debug, Clone)]
pub(crate) struct TagSet {
    tags: Vec<(Role, String)>,
    /// Bytes some control string starts with, to skip ordinary text quickly.
    starts: [bool; 256],
}

/// The outcome of one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Control string `role` occupies `start..end`.
    Tag { role: Role, start: usize, end: usize },
    /// The text from here on could still become a control string.
    Pending(usize),
    /// No control string starts in the scanned range.
    Nothing,
}

impl TagSet {
    pub(crate) fn new(spec: &ProtocolSpec) -> TagSet {
        let mut tags = Vec::new();
        let mut starts = [false; 256];
        for (_, role, s) in spec.control_strings() {
            // An empty string would match everywhere without advancing: never scan for it.
            if let Some(&b) = s.as_bytes().first() {
                starts[b as usize] = true;
                tags.push((role, s.to_string()));
            }
        }
        TagSet { tags, starts }
    }

    /// Finds the first control string at or after `from`. With `complete`, the text will
    /// not grow, so nothing is pending.
    pub(crate) fn find(&self, text: &str, from: usize, complete: bool) -> Found {
        let b = text.as_bytes();
        let mut i = from;
        while i < b.len() {
            if self.starts[b[i] as usize] {
                let rest = &b[i..];
                let mut best: Option<(Role, usize)> = None;
                let mut pending = false;
                for (role, tag) in &self.tags {
                    let t = tag.as_bytes();
                    if rest.len() >= t.len() {
                        // Longest wins; a validated spec never has two candidates here.
                        if rest.starts_with(t) && best.map_or(true, |(_, len)| t.len() > len) {
                            best = Some((*role, t.len()));
                        }
                    } else if !complete && t.starts_with(rest) {
                        pending = true;
                    }
                }
                if pending {
                    return Found::Pending(i);
                }
                if let Some((role, len)) = best {
                    return Found::Tag { role, start: i, end: i + len };
                }
            }
            i += 1;
        }
        Found::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tags_and_holds_partial_ones() {
        let spec = ProtocolSpec::builtin("multiverse").unwrap();
        let set = TagSet::new(&spec);
        assert_eq!(set.find("ab<Path>c", 0, false), Found::Tag { role: Role::BranchOpen, start: 2, end: 8 });
        assert_eq!(set.find("ab</Pa", 0, false), Found::Pending(2));
        assert_eq!(set.find("ab</Pa", 0, true), Found::Nothing);
        assert_eq!(set.find("a < b", 0, false), Found::Nothing);
        // "<" at the very end could start a tag.
        assert_eq!(set.find("a <", 0, false), Found::Pending(2));
        assert_eq!(set.find("é<Goal>", 0, false), Found::Tag { role: Role::PlanOpen, start: 2, end: 8 });
    }
}
