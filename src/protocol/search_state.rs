//! Child prompts rebuilt from a search trace: the state of the node a sub-search is sent to,
//! read back from the lines the parent wrote (APR's Countdown traces).
//!
//! A trace names nodes `#0`, `#0,1`, `#0,1,2` (a child's id is its parent's plus `,k`) and
//! writes their states in two kinds of lines:
//!
//! ```text
//! Moving to Node #0,1
//! Current State: 24:[4, 3], Operations: ['9/3=3']
//! Generated Node #0,1,0: 24:[12] Operation: 4*3=12
//! ```
//!
//! A `Moving to Node` line followed by a `Current State` line gives a node's full state (a
//! later pair for the same node wins); a `Generated Node` line gives the target and numbers of
//! a node not known otherwise, whose operations are its parent's plus the one on the line. The
//! child's prompt is then `Moving to Node #id\nCurrent State: T:[a, b], Operations: [...]`,
//! numbers joined by `", "` and operations as a Python list of strings, no final newline.

use std::collections::HashMap;

/// One search node's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The number to reach (`T` in `Current State: T:[a, b]`).
    pub target: i64,
    /// The numbers still available at this node, in the order the trace lists them.
    pub nums: Vec<i64>,
    /// The operations that led here from the root, in order, as written (`'9/3=3'` without
    /// its quotes).
    pub operations: Vec<String>,
}

impl NodeState {
    /// The child prompt for node `id` in this state.
    pub fn prompt(&self, id: &str) -> String {
        let nums: Vec<String> = self.nums.iter().map(i64::to_string).collect();
        let ops: Vec<String> = self.operations.iter().map(|o| python_str(o)).collect();
        format!(
            "Moving to Node #{id}\nCurrent State: {}:[{}], Operations: [{}]",
            self.target,
            nums.join(", "),
            ops.join(", ")
        )
    }
}

const MOVING: &str = "Moving to Node #";
const CURRENT: &str = "Current State:";
const GENERATED: &str = "Generated Node";

/// Every node state the trace holds, by node id.
pub fn node_states(trace: &str) -> HashMap<String, NodeState> {
    let lines: Vec<&str> = trace.lines().collect();
    let mut known: HashMap<String, NodeState> = HashMap::new();
    for pair in lines.windows(2) {
        let (Some(id), Some(state)) = (pair[0].split_once(MOVING), pair[1].split_once(CURRENT)) else { continue };
        if let Some(s) = parse_current(state.1) {
            known.insert(id.1.trim().to_string(), s);
        }
    }
    for line in lines.iter().filter(|l| l.contains(GENERATED)) {
        let Some((head, rest)) = line.split_once(':') else { continue };
        let Some((_, id)) = head.split_once('#') else { continue };
        let id = id.trim();
        if known.contains_key(id) {
            continue;
        }
        let Some((state, op)) = rest.split_once("Operation:") else { continue };
        let Some((target, nums)) = state.trim().split_once(':') else { continue };
        let (Ok(target), Some(nums)) = (target.trim().parse::<i64>(), parse_nums(nums)) else { continue };
        let Some(parent) = id.rsplit_once(',').and_then(|(p, _)| known.get(p)) else { continue };
        let mut operations = parent.operations.clone();
        operations.push(op.trim().to_string());
        known.insert(id.to_string(), NodeState { target, nums, operations });
    }
    known
}

/// `24:[4, 9, 3], Operations: ['9-3=6']` (what follows `Current State:`).
fn parse_current(s: &str) -> Option<NodeState> {
    let (state, ops) = s.split_once("Operations:")?;
    let (target, nums) = state.trim().trim_end_matches(',').split_once(':')?;
    Some(NodeState {
        target: target.trim().parse().ok()?,
        nums: parse_nums(nums)?,
        operations: parse_str_list(ops.trim())?,
    })
}

/// `[4, 9, 3]`.
fn parse_nums(s: &str) -> Option<Vec<i64>> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|n| n.trim().parse().ok()).collect()
}

/// A Python list of plain strings, `['9-3=6', "a'b"]`.
fn parse_str_list(s: &str) -> Option<Vec<String>> {
    let mut inner = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    let mut out = Vec::new();
    while !inner.is_empty() {
        let quote = inner.chars().next()?;
        if quote != '\'' && quote != '"' {
            return None;
        }
        let end = inner[1..].find(quote)? + 1;
        out.push(inner[1..end].to_string());
        inner = inner[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// A string as Python's `repr` writes it (plain operations need no escapes).
fn python_str(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n\
        Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n\
        Generated Node #0,1: 24:[4, 3] Operation: 9/3=3\nMoving to Node #0,1\n\
        Current State: 24:[4, 3], Operations: ['9/3=3']\nGenerated Node #0,1,0: 24:[12] Operation: 4*3=12\n";

    #[test]
    fn states_from_both_kinds_of_line() {
        let s = node_states(TRACE);
        assert_eq!(s["0,0"].prompt("0,0"), "Moving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['9-3=6']");
        assert_eq!(
            s["0,1,0"].prompt("0,1,0"),
            "Moving to Node #0,1,0\nCurrent State: 24:[12], Operations: ['9/3=3', '4*3=12']"
        );
        assert_eq!(s["0"].prompt("0"), "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []");
        assert!(!s.contains_key("0,2"));
    }

    #[test]
    fn garbage_is_skipped() {
        let s = node_states("Moving to Node #x\nCurrent State: nope\nGenerated Node #9,9: 1:[a] Operation: ?\n");
        assert!(s.is_empty());
        assert_eq!(parse_str_list("['a', \"b'c\"]"), Some(vec!["a".to_string(), "b'c".to_string()]));
        assert_eq!(python_str("b'c"), "\"b'c\"");
    }
}
