//! Skeleton first, then every point expanded in parallel: the request wording, a tolerant
//! reader of the numbered skeleton, each point's branch prefix, and the final assembly.

use serde::{Deserialize, Serialize};

use super::fork::normalize;
use super::template;
use super::warning::{excerpt, Warning, WarningKind};

/// The wording and limits of a skeleton protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkeletonFormat {
    /// The skeleton request, over `{question}`.
    pub request: String,
    /// Text the response is started with (e.g. `1.`), so the model goes straight into the
    /// list. Pass `primer + response` to [`SkeletonFormat::parse`].
    pub primer: String,
    /// Fewer usable points than this: do not expand in parallel.
    pub min_points: usize,
    /// More points than this are cut.
    pub max_points: usize,
    /// Appended after the skeleton, before forking one branch per point.
    pub expand_instruction: String,
    /// A point's branch prefix, over `{index}` (1-based) and `{point}`.
    pub point_prefix: String,
    /// A point's expansion ends here (its stop string).
    pub point_end: String,
}

/// A usable skeleton.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skeleton {
    /// The points in order, markers and `**bold**` stripped, repeats dropped; at least
    /// one and `min_points`, at most `max_points`.
    pub points: Vec<String>,
    /// What was odd in the skeleton (repeats, a cut list, a restart of the numbering), at byte
    /// offsets in the parsed text.
    pub warnings: Vec<Warning>,
}

/// Too few points to expand in parallel: answer serially instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkeletonFallback {
    /// The usable points that were found: fewer than `min_points`, possibly none.
    pub points: Vec<String>,
    /// What was odd in the skeleton, as in [`Skeleton::warnings`].
    pub warnings: Vec<Warning>,
    /// Why the skeleton cannot be expanded in parallel, for messages.
    pub reason: String,
}

impl SkeletonFormat {
    /// The skeleton request for `question`.
    pub fn request_prompt(&self, question: &str) -> String {
        template::render(&self.request, |n| (n == "question").then_some(question))
    }

    /// Reads a numbered skeleton. Accepts `1.`, `1)`, `1:`, `(1)`, `-`, `*`, `•` markers;
    /// ignores unmarked lines; strips `**bold**`; drops repeated points; stops where the
    /// numbering starts over (the model went on to answer); cuts to `max_points`.
    pub fn parse(&self, text: &str) -> Result<Skeleton, SkeletonFallback> {
        let mut points: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut last_number: Option<u64> = None;
        let mut offset = 0;
        let mut cut_at = None;
        for line in text.split_inclusive('\n') {
            let at = offset;
            offset += line.len();
            let Some((number, point)) = split_marker(line.trim()) else { continue };
            if let (Some(n), Some(prev)) = (number, last_number) {
                if n <= prev {
                    warnings.push(Warning::new(
                        WarningKind::LabelsNotConsecutive,
                        at,
                        format!("numbering starts over at {n}: the skeleton ends before it"),
                    ));
                    break;
                }
            }
            if number.is_some() {
                last_number = number;
            }
            let point = clean(point);
            if point.is_empty() {
                continue;
            }
            if !seen.insert(normalize(&point)) {
                warnings.push(Warning::new(
                    WarningKind::DuplicateLabel,
                    at,
                    format!("point {} repeated: dropped", excerpt(&point, 40)),
                ));
                continue;
            }
            if points.len() == self.max_points {
                cut_at.get_or_insert(at);
                continue;
            }
            points.push(point);
        }
        if let Some(at) = cut_at {
            warnings.push(Warning::new(
                WarningKind::TooManyBranches,
                at,
                format!("more than {} points: keeping the first {}", self.max_points, self.max_points),
            ));
        }
        if points.len() < self.min_points.max(1) {
            let reason =
                format!("{} usable point(s), fewer than {}: answer serially", points.len(), self.min_points.max(1));
            warnings.push(Warning::new(WarningKind::NoAnnouncements, 0, reason.clone()));
            return Err(SkeletonFallback { points, warnings, reason });
        }
        Ok(Skeleton { points, warnings })
    }

    /// The prefix of the branch expanding point `index` (0-based).
    pub fn point_prefix(&self, index: usize, point: &str) -> String {
        let number = (index + 1).to_string();
        template::render(&self.point_prefix, |n| match n {
            "index" => Some(number.as_str()),
            "point" => Some(point),
            _ => None,
        })
    }

    /// The answer: each point's prefix followed by its expansion (what its branch generated
    /// after the prefix, trailing space and the end marker removed), one per line, in order.
    /// A point without an expansion keeps just its prefix.
    pub fn assemble(&self, points: &[String], expansions: &[String]) -> String {
        let mut out = String::new();
        for (i, point) in points.iter().enumerate() {
            let mut line = self.point_prefix(i, point);
            let body = expansions.get(i).map(String::as_str).unwrap_or("");
            // Leading blank lines are not the end of the point (the engine does not stop on
            // a whitespace-only end marker before the expansion has started either).
            let body = body.trim_start();
            let body =
                if self.point_end.is_empty() { body } else { body.split(self.point_end.as_str()).next().unwrap_or("") };
            if !body.is_empty() {
                line.push(' ');
            }
            line.push_str(body.trim_end());
            if i > 0 {
                out.push('\n');
            }
            out.push_str(line.trim_end());
        }
        out
    }
}

/// Splits a list marker off a trimmed line: `(number if numbered, rest)`.
fn split_marker(line: &str) -> Option<(Option<u64>, &str)> {
    for bullet in ["- ", "* ", "• ", "+ "] {
        if let Some(rest) = line.strip_prefix(bullet) {
            return Some((None, rest));
        }
    }
    let (inner, paren) = match line.strip_prefix('(') {
        Some(rest) => (rest, true),
        None => (line, false),
    };
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 6 {
        return None;
    }
    let number = inner[..digits].parse().ok();
    let rest = &inner[digits..];
    let rest = if paren {
        rest.strip_prefix(')')?
    } else {
        rest.strip_prefix('.').or_else(|| rest.strip_prefix(')')).or_else(|| rest.strip_prefix(':'))?
    };
    // "1.5 kg of flour" is not a list item: a marker is followed by a space or the end.
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    Some((number, rest))
}

/// A point's text: trimmed, without surrounding bold/italic marks or a trailing colon.
fn clean(point: &str) -> String {
    let mut p = point.trim();
    for mark in ["**", "__", "*", "_"] {
        if p.len() >= 2 * mark.len() && p.starts_with(mark) && p.ends_with(mark) {
            p = p[mark.len()..p.len() - mark.len()].trim();
        }
    }
    p.trim_end_matches(':').trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_reading() {
        let f = SkeletonFormat::sot();
        let s = f
            .parse("1. Warm up\nHere is more:\n2) **Stretch**\n- Run\n3: Cool down:\n(4) warm UP\n1.5 kg\n5. Rest")
            .unwrap();
        assert_eq!(s.points, vec!["Warm up", "Stretch", "Run", "Cool down", "Rest"]);
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.warnings[0].kind, WarningKind::DuplicateLabel);
    }

    #[test]
    fn numbering_restart_ends_the_skeleton() {
        let f = SkeletonFormat::sot();
        let s = f.parse("1. A\n2. B\n\n1. A is first.\n2. B is second.").unwrap();
        assert_eq!(s.points, vec!["A", "B"]);
        assert_eq!(s.warnings[0].kind, WarningKind::LabelsNotConsecutive);
    }

    #[test]
    fn too_many_and_too_few() {
        let f = SkeletonFormat::sot();
        let text: String = (1..=14).map(|i| format!("{i}. point {i}\n")).collect();
        let s = f.parse(&text).unwrap();
        assert_eq!(s.points.len(), 10);
        assert_eq!(s.warnings.last().unwrap().kind, WarningKind::TooManyBranches);
        let fb = f.parse("1. only one\nand text").unwrap_err();
        assert_eq!(fb.points, vec!["only one"]);
        assert!(f.parse("").is_err());
    }

    #[test]
    fn prefixes_and_assembly() {
        let f = SkeletonFormat::sot();
        assert!(f.request_prompt("Why sleep?").contains("Question: Why sleep?"));
        let points = vec!["Memory".to_string(), "Mood".to_string()];
        assert_eq!(f.point_prefix(1, "Mood"), "2. **Mood**:");
        let out =
            f.assemble(&points, &[" sleep consolidates memory. \n".into(), "\n\nit steadies mood.\nextra".into()]);
        assert_eq!(out, "1. **Memory**: sleep consolidates memory.\n2. **Mood**: it steadies mood.");
    }
}
