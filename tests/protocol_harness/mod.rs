//! A pure-text stand-in for the engine driver, shared by the protocol tests: every stream
//! generates its script one character per token, runs with the watcher's stop strings, forks
//! on `Fork`, joins when the branches are done. It also checks, at every character, that the
//! watcher changes state exactly where the engine would have stopped on a stop string.

#![allow(dead_code)]

use pardec::protocol::{Action, BranchPlan, ProtocolSpec, StreamEnd, Watcher};

pub struct Replay {
    /// The response as the engine's transcript would show it: each stream's text with its
    /// branches inserted where it forked.
    pub transcript: String,
    /// Every action, with the path of the stream that reported it ("" = trunk).
    pub actions: Vec<(String, Action)>,
    /// Places where the watcher and a stop-string engine disagreed (should stay empty).
    pub stop_mismatches: Vec<String>,
}

impl Replay {
    pub fn warnings(&self) -> Vec<(String, pardec::protocol::Warning)> {
        self.actions
            .iter()
            .filter_map(|(p, a)| if let Action::Warning(w) = a { Some((p.clone(), w.clone())) } else { None })
            .collect()
    }

    pub fn forks(&self) -> Vec<(String, pardec::protocol::ForkPlan)> {
        self.actions
            .iter()
            .filter_map(|(p, a)| if let Action::Fork(f) = a { Some((p.clone(), f.clone())) } else { None })
            .collect()
    }
}

/// Runs the trunk `trunk` and each branch's script (`branch(plan)`: what the branch
/// generates after its prefix; a missing end marker means the branch ends with EOS).
pub fn replay(spec: &ProtocolSpec, trunk: &str, branch: &dyn Fn(&BranchPlan) -> String, cap: Option<usize>) -> Replay {
    let mut r = Replay { transcript: String::new(), actions: Vec::new(), stop_mismatches: Vec::new() };
    let mut w = Watcher::trunk(spec);
    if let Some(c) = cap {
        w.set_branch_cap(c);
    }
    let text = run_stream(&mut w, trunk, branch, &mut r);
    r.transcript = text;
    r
}

fn is_state_change(a: &Action) -> bool {
    matches!(
        a,
        Action::Fork(_)
            | Action::NoFork { .. }
            | Action::BranchEnd { .. }
            | Action::TrunkEnd { .. }
            | Action::BlockOpened { .. }
            | Action::BlockClosed { .. }
    )
}

fn run_stream(w: &mut Watcher, script: &str, branch: &dyn Fn(&BranchPlan) -> String, r: &mut Replay) -> String {
    let path = w.path().to_string();
    let mut out = w.text().to_string();
    let mut run_text = String::new();
    let mut ended = false;
    for c in script.chars() {
        let stops = w.stop_strings();
        let mut buf = [0u8; 4];
        let piece: &str = c.encode_utf8(&mut buf);
        run_text.push_str(piece);
        out.push_str(piece);
        let actions = w.feed(piece);
        let engine_stop = stops.iter().any(|s| run_text.ends_with(s.as_str()));
        let changed = actions.iter().any(is_state_change);
        if engine_stop != changed {
            r.stop_mismatches.push(format!(
                "stream {path:?} at byte {}: engine stop {engine_stop}, watcher change {changed} (stops {stops:?}, actions {actions:?})",
                w.text().len()
            ));
        }
        if engine_stop {
            run_text.clear();
        }
        let mut fork = None;
        for a in actions {
            if let Action::Fork(plan) = &a {
                fork = Some(plan.clone());
            }
            if matches!(a, Action::BranchEnd { .. }) {
                ended = true;
            }
            r.actions.push((path.clone(), a));
        }
        if let Some(plan) = fork {
            // The fork text is the parent's, written before its branches.
            if !w.spec().fork_text.is_empty() {
                out.push_str(&w.spec().fork_text.clone());
                w.forked();
            }
            for b in &plan.branches {
                let mut child = w.child(b);
                let script = branch(b);
                out.push_str(&run_stream(&mut child, &script, branch, r));
            }
            out.push_str(w.join_text());
            for a in w.joined() {
                r.actions.push((path.clone(), a));
            }
        }
        if ended {
            return out;
        }
    }
    for a in w.finish(StreamEnd::Eos) {
        r.actions.push((path.clone(), a));
    }
    out
}

/// Feeds `text` cut at `cuts` (byte offsets, any order; non-boundaries are moved to the next
/// character boundary) and returns every action.
pub fn feed_split(w: &mut Watcher, text: &str, cuts: &[usize]) -> Vec<Action> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            let mut c = c.min(text.len());
            while !text.is_char_boundary(c) {
                c += 1;
            }
            c
        })
        .collect();
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.extend(w.feed(&text[last..p]));
        last = p;
    }
    out
}
