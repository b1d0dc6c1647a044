//! Spawned sub-searches: the parent writes a block of child prompts, each child runs on its
//! own prompt (no shared prefix), and the parent is given one result line per child.
//!
//! Reading the calls is tolerant: the calls block's opener or closer may be missing, child
//! headers may be renumbered or repeated, prompts may be empty; each is a warning.

use serde::{Deserialize, Serialize};

use super::template::{self, Part};
use super::warning::{excerpt, Warning, WarningKind};

/// The strings of a sub-search protocol. Templates use `{index}` and `{level}` (numbers) and,
/// in `result_line`, `{result}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubSearchFormat {
    /// Opens the parent's calls block (`<Calling Sub Searches>`); it may be missing in the
    /// model's text (a warning).
    pub call_open: String,
    /// Header of one child prompt, e.g. `<Start Sub Search {index} at level {level}>`.
    pub call_item: String,
    /// An optional footer after a child prompt; the prompt ends there when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_item_end: Option<String>,
    /// Ends the calls; use it as the parent's stop string.
    pub call_close: String,
    /// Opens the results block given back to the parent (`<Sub Searches>`), on a line of its
    /// own.
    pub results_open: String,
    /// One child's line in the results block, over `{index}`, `{level}` and `{result}` (used
    /// when `success_marker` is `None`).
    pub result_line: String,
    /// Closes the results block (`<End Sub Searches>`), followed by a line break.
    pub results_close: String,
    /// Marks a call's node: the node id is the rest of the call's first line after it
    /// (`Moving to Node #` → `0,1`), `{node}` in the result templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_marker: Option<String>,
    /// What a child is prompted with.
    #[serde(default)]
    pub child_prompt: ChildPrompt,
    /// A child succeeded when its text holds this at least twice; its result is what follows
    /// the second-to-last one (past its line break), trimmed (APR's `Goal Reached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_marker: Option<String>,
    /// A successful child's entry (with `success_marker`), over `{index}`, `{level}`, `{node}`,
    /// `{result}`; written as it is, line breaks included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_found: Option<String>,
    /// A failed child's entry (with `success_marker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_none: Option<String>,
    /// The parent resumes from the text before its calls block (the calls are dropped from its
    /// text and cache) rather than after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume_before_calls: bool,
    /// Children are numbered by call order from 0, at level 1, whatever the calls say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renumber: bool,
}

/// How a child's prompt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChildPrompt {
    /// The text the parent wrote after the call's header.
    #[default]
    Written,
    /// The state of the call's node, rebuilt from the parent's search trace
    /// ([`super::search_state`]): `Moving to Node #id\nCurrent State: …, Operations: […]`.
    CountdownState,
}

/// One child to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubSearchCall {
    /// The number written in the header.
    pub index: u32,
    /// The level written in the header (1 when the header has none, or with `renumber`).
    pub level: u32,
    /// The child's own prompt (trimmed).
    pub prompt: String,
    /// The call's node id (with `node_marker`; empty otherwise).
    pub node: String,
    /// Byte offset of the header in the parsed text.
    pub at: usize,
}

/// The calls found, and what was wrong with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubSearchCalls {
    /// The children to run, in call order, at most the `cap` asked for; repeated headers
    /// and empty prompts are left out.
    pub calls: Vec<SubSearchCall>,
    /// What was wrong with the calls block (a missing opener or closer, empty or repeated
    /// calls, calls past the cap, numbers out of order, no call at all), at byte offsets in the
    /// parsed text.
    pub warnings: Vec<Warning>,
}

impl SubSearchFormat {
    /// The parent's stop string.
    pub fn trigger(&self) -> &str {
        &self.call_close
    }

    /// Reads the child prompts of the last calls block in `text` (the parent's text up to and
    /// including the trigger). At most `cap` calls are kept.
    pub fn parse_calls(&self, text: &str, cap: usize) -> SubSearchCalls {
        let mut warnings = Vec::new();
        let close = (!self.call_close.is_empty()).then(|| text.rfind(&self.call_close)).flatten();
        let region_end = close.unwrap_or_else(|| {
            warnings.push(Warning::new(
                WarningKind::UnclosedBlock,
                text.len(),
                format!("no {:?}: reading calls up to the end of the text", self.call_close),
            ));
            text.len()
        });
        let open = (!self.call_open.is_empty()).then(|| text[..region_end].rfind(&self.call_open)).flatten();
        let region_start = match open {
            Some(o) => o + self.call_open.len(),
            None => {
                warnings.push(Warning::new(
                    WarningKind::MissingBlockOpen,
                    0,
                    format!("no {:?} before the calls: reading from the start", self.call_open),
                ));
                0
            }
        };
        let item = template::parts(&self.call_item);
        let item_end = self.call_item_end.as_deref().map(template::parts);
        let headers = find_all(&item, text, region_start, region_end);
        let mut calls: Vec<SubSearchCall> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, &(at, header_end, ref values)) in headers.iter().enumerate() {
            let next = headers.get(k + 1).map_or(region_end, |h| h.0);
            let mut body_end = next;
            if let Some(end_parts) = &item_end {
                if let Some(&(footer, _, _)) = find_all(end_parts, text, header_end, next).first() {
                    body_end = footer;
                }
            }
            let prompt = text[header_end..body_end].trim().to_string();
            let index = values.first().copied().unwrap_or(k as u32);
            let level = values.get(1).copied().unwrap_or(1);
            if prompt.is_empty() {
                warnings.push(Warning::new(
                    WarningKind::BadLabel,
                    at,
                    format!("sub search {index} has an empty prompt"),
                ));
                continue;
            }
            if !seen.insert(index) {
                warnings.push(Warning::new(
                    WarningKind::DuplicateLabel,
                    at,
                    format!("sub search {index} called twice: dropping {}", excerpt(&prompt, 30)),
                ));
                continue;
            }
            if calls.len() == cap {
                warnings.push(Warning::new(
                    WarningKind::TooManyBranches,
                    at,
                    format!("more than {cap} sub searches: keeping the first {cap}"),
                ));
                break;
            }
            let node = self
                .node_marker
                .as_deref()
                .and_then(|m| prompt.split_once(m))
                .map(|(_, rest)| rest.lines().next().unwrap_or("").trim().to_string())
                .unwrap_or_default();
            calls.push(SubSearchCall { index, level, prompt, node, at });
        }
        if self.renumber {
            for (i, c) in calls.iter_mut().enumerate() {
                c.index = i as u32;
                c.level = 1;
            }
        }
        if calls.windows(2).any(|w| w[1].index != w[0].index + 1) {
            let at = calls.windows(2).find(|w| w[1].index != w[0].index + 1).map_or(0, |w| w[1].at);
            warnings.push(Warning::new(
                WarningKind::LabelsNotConsecutive,
                at,
                "sub search numbers are not consecutive",
            ));
        }
        if calls.is_empty() {
            warnings.push(Warning::new(
                WarningKind::NoAnnouncements,
                region_start,
                "no sub search called: continue the parent serially",
            ));
        }
        SubSearchCalls { calls, warnings }
    }

    /// Where the calls block of `text` starts (its last `call_open`), for
    /// `resume_before_calls`.
    pub fn calls_start(&self, text: &str) -> Option<usize> {
        (!self.call_open.is_empty()).then(|| text.rfind(&self.call_open)).flatten()
    }

    /// A child's result under `success_marker`: `None` when it did not succeed.
    pub fn child_result<'t>(&self, child_text: &'t str) -> Option<&'t str> {
        let marker = self.success_marker.as_deref().filter(|m| !m.is_empty())?;
        let hits: Vec<usize> = child_text.match_indices(marker).map(|(i, _)| i).collect();
        if hits.len() < 2 {
            return None;
        }
        let rest = child_text[hits[hits.len() - 2]..].trim();
        let after = &rest[marker.len().min(rest.len())..];
        // Past the marker's line break (APR drops `Goal Reached` and the character after it).
        let mut chars = after.chars();
        chars.next();
        Some(chars.as_str())
    }

    /// The block given back to the parent: one entry per child, in call order. With
    /// `success_marker`, each child's `result_found` or `result_none` entry as written;
    /// otherwise one `result_line` per child, its result's line breaks made spaces.
    pub fn results_block(&self, results: &[(&SubSearchCall, &str)]) -> String {
        let mut out = String::new();
        out.push_str(&self.results_open);
        out.push('\n');
        if let (Some(_), Some(found), Some(none)) = (&self.success_marker, &self.result_found, &self.result_none) {
            for (call, text) in results {
                let (index, level) = (call.index.to_string(), call.level.to_string());
                let result = self.child_result(text);
                let t = if result.is_some() { found } else { none };
                out.push_str(&template::render(t, |n| match n {
                    "index" => Some(index.as_str()),
                    "level" => Some(level.as_str()),
                    "node" => Some(call.node.as_str()),
                    "result" => Some(result.unwrap_or("")),
                    _ => None,
                }));
            }
            out.push_str(&self.results_close);
            out.push('\n');
            return out;
        }
        for (call, result) in results {
            let one_line = result.split_whitespace().collect::<Vec<_>>().join(" ");
            let index = call.index.to_string();
            let level = call.level.to_string();
            out.push_str(&template::render(&self.result_line, |n| match n {
                "index" => Some(index.as_str()),
                "level" => Some(level.as_str()),
                "result" => Some(one_line.as_str()),
                _ => None,
            }));
            out.push('\n');
        }
        out.push_str(&self.results_close);
        out.push('\n');
        out
    }
}

/// Every instance of a numeric template in `text[from..to]`: (start, end, slot values).
fn find_all(parts: &[Part<'_>], text: &str, from: usize, to: usize) -> Vec<(usize, usize, Vec<u32>)> {
    let anchor = match parts.first() {
        Some(Part::Literal(l)) if !l.is_empty() => *l,
        _ => return Vec::new(), // a template must start with literal text to be findable
    };
    let mut out = Vec::new();
    let mut i = from;
    while let Some(p) = text.get(i..to).and_then(|t| t.find(anchor)) {
        let start = i + p;
        match template::match_numeric(parts, &text[start..to]) {
            Some((values, len)) => {
                out.push((start, start + len, values));
                i = start + len;
            }
            None => i = start + anchor.len(),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generic reader: written prompts with footers, numbers as written, one-line results.
    fn written() -> SubSearchFormat {
        SubSearchFormat {
            call_item_end: Some("<End Sub Search {index} at level {level}>".into()),
            child_prompt: ChildPrompt::Written,
            success_marker: None,
            resume_before_calls: false,
            renumber: false,
            ..SubSearchFormat::apr()
        }
    }

    #[test]
    fn apr_calls_and_results_block() {
        // The layout of APR's traces (src/data/search.py) and result entries (eval_apr.py).
        let f = SubSearchFormat::apr();
        let text = "Generated Node #0,1: 24:[4, 3] Operation: 9/3=3\n<Calling Sub Searches>\n\
            <Start Sub Search 0 at level 1> Moving to Node #0,0\n<Start Sub Search 1 at level 1> Moving to Node #0,1\n\
            <End Calling Sub Searches>";
        let c = f.parse_calls(text, 8);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.calls.iter().map(|c| (c.index, c.node.as_str())).collect::<Vec<_>>(),
            vec![(0, "0,0"), (1, "0,1")]
        );
        assert_eq!(f.calls_start(text), text.find("<Calling Sub Searches>"));
        let found = "Moving to Node #0,1\n...\n4*6=24\nGoal Reached\n'9/3=3', '4*6=24'\nGoal Reached\n\
            Moving to Node #0,1\n9/3=3, 4*6=24";
        let block = f.results_block(&[(&c.calls[0], "no luck"), (&c.calls[1], found)]);
        assert_eq!(
            block,
            "<Sub Searches>\n<No Solution in Sub Search 0 at level 1 at Node #0,0>\n\
            <Goal Reached in Sub Search 1 at level 1 at Node #0,1>\n'9/3=3', '4*6=24'\nGoal Reached\n\
            Moving to Node #0,1\n9/3=3, 4*6=24\n<End Sub Searches>\n"
        );
        // One `Goal Reached` is not a success.
        assert_eq!(f.child_result("x\nGoal Reached\ny"), None);
    }

    #[test]
    fn calls_and_results() {
        let f = written();
        let text = "Thinking.\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moves: 3+4\n\
            <End Sub Search 0 at level 1>\n<Start Sub Search 1 at level 1>Moves: 5*2\n<End Calling Sub Searches>";
        let c = f.parse_calls(text, 8);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.calls.iter().map(|c| (c.index, c.level, c.prompt.as_str())).collect::<Vec<_>>(),
            vec![(0, 1, "Moves: 3+4"), (1, 1, "Moves: 5*2")]
        );
        let block = f.results_block(&[(&c.calls[0], "no\nsolution"), (&c.calls[1], "found 10")]);
        assert_eq!(
            block,
            "<Sub Searches>\nSub search 0 at level 1 returned: no solution\n\
            Sub search 1 at level 1 returned: found 10\n<End Sub Searches>\n"
        );
    }

    #[test]
    fn malformed_calls_warn() {
        let f = written();
        let c = f.parse_calls("<Start Sub Search 0 at level 1>a<Start Sub Search 0 at level 1>b<Start Sub Search 5 at level 1>c<Start Sub Search 6 at level 1>", 8);
        let kinds: Vec<_> = c.warnings.iter().map(|w| w.kind).collect();
        assert_eq!(c.calls.len(), 2);
        assert!(kinds.contains(&WarningKind::UnclosedBlock));
        assert!(kinds.contains(&WarningKind::MissingBlockOpen));
        assert!(kinds.contains(&WarningKind::DuplicateLabel));
        assert!(kinds.contains(&WarningKind::BadLabel));
        assert!(kinds.contains(&WarningKind::LabelsNotConsecutive));
        let c = f.parse_calls("<Calling Sub Searches>nothing<End Calling Sub Searches>", 8);
        assert!(c.calls.is_empty());
        assert_eq!(c.warnings.last().unwrap().kind, WarningKind::NoAnnouncements);
    }

    #[test]
    fn cap_is_applied() {
        let f = written();
        let text: String = (0..100).map(|i| format!("<Start Sub Search {i} at level 1>p{i}\n")).collect();
        let c = f.parse_calls(&format!("<Calling Sub Searches>{text}<End Calling Sub Searches>"), 4);
        assert_eq!(c.calls.len(), 4);
        assert_eq!(c.warnings.last().unwrap().kind, WarningKind::TooManyBranches);
    }
}
