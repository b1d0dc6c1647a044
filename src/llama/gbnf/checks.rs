//! The checks llama.cpp runs on parsed rules at init (left recursion), and the ones it lacks
//! (rules that can match nothing, and how many parse stacks one step may leave).

use super::{is_end_of_sequence, Parser, Refusal, Res, Ty, MAX_CHECK_STEPS, MAX_REF_DEPTH, MAX_STACKS};

impl<'a> Parser<'a> {
    /// `llama_grammar_detect_left_recursion` run over every rule as init does
    /// (llama-grammar.cpp:1251–1266), walked with an explicit stack in the same order, so
    /// its depth and steps are llama.cpp's.
    pub(super) fn check_left_recursion(&self) -> Res<()> {
        let n = self.rules.len();
        let mut visited = vec![false; n];
        let mut in_progress = vec![false; n];
        let mut may_be_empty = vec![false; n];
        let mut steps: u64 = 0;
        // (rule, next element, recurse_into_nonterminal)
        let mut stack: Vec<(usize, usize, bool)> = Vec::new();
        for start in 0..n {
            if visited[start] {
                continue;
            }
            let enter = |r: usize,
                         stack: &mut Vec<(usize, usize, bool)>,
                         in_progress: &mut Vec<bool>,
                         may_be_empty: &mut Vec<bool>,
                         steps: &mut u64| {
                in_progress[r] = true;
                let rule = &self.rules[r];
                let mut at_rule_start = true;
                for e in rule {
                    *steps += 1;
                    if is_end_of_sequence(*e) {
                        if at_rule_start {
                            may_be_empty[r] = true;
                            break;
                        }
                        at_rule_start = true;
                    } else {
                        at_rule_start = false;
                    }
                }
                stack.push((r, 0, true));
            };
            enter(start, &mut stack, &mut in_progress, &mut may_be_empty, &mut steps);
            while let Some(&(r, i, recurse)) = stack.last() {
                if steps > MAX_CHECK_STEPS {
                    return self.limit(format!(
                        "the grammar is too costly for llama.cpp's left-recursion check (more than {MAX_CHECK_STEPS} \
                         steps: rules whose alternates start with the same rule multiply it)"
                    ));
                }
                let rule = &self.rules[r];
                if i == rule.len() {
                    in_progress[r] = false;
                    visited[r] = true;
                    stack.pop();
                    if let Some(parent) = stack.last_mut() {
                        if !may_be_empty[r] {
                            parent.2 = false;
                        }
                        parent.1 += 1;
                    }
                    continue;
                }
                steps += 1;
                let e = rule[i];
                if e.ty == Ty::RuleRef && recurse {
                    let child = e.value as usize;
                    if child >= n {
                        return Err(Refusal {
                            message: format!("rule #{child} is used but never defined"),
                            limit: false,
                        });
                    }
                    if in_progress[child] {
                        let name = self.name_of(child as u32).unwrap_or_else(|| format!("#{child}"));
                        return Err(Refusal {
                            message: format!(
                                "the grammar is left-recursive at rule '{name}' (llama.cpp does not support left recursion)"
                            ),
                            limit: false,
                        });
                    }
                    if stack.len() >= MAX_REF_DEPTH {
                        return self.limit(format!(
                            "rules begin with rules nested more than {MAX_REF_DEPTH} deep (llama.cpp's check would \
                             exhaust its stack)"
                        ));
                    }
                    enter(child, &mut stack, &mut in_progress, &mut may_be_empty, &mut steps);
                    continue;
                }
                let top = stack.last_mut().expect("the loop holds a frame");
                top.2 = is_end_of_sequence(e);
                top.1 += 1;
            }
        }
        Ok(())
    }

    /// pardec's own checks of what llama.cpp's advance (`llama_grammar_advance_stack`) will
    /// do, beyond its left-recursion check:
    ///
    /// - Left recursion through a rule that can match nothing without having an empty
    ///   alternative (`r ::= x r "a" | "b"`, `x ::= y`, `y ::= "" | "c"`): llama.cpp's check
    ///   only counts rules with an empty alternative as empty (its `rules_may_be_empty`), so
    ///   it accepts these, and its advance then grows a stack until memory runs out.
    /// - How many stacks one advance can produce: the ways a position can expand, summed over
    ///   alternatives (an upper bound: llama.cpp drops duplicates). A rule whose `k`
    ///   alternatives start with the same rule multiplies its count by `k`, so nested such
    ///   rules grow exponentially.
    pub(super) fn check_expansions(&self, root: usize) -> Res<()> {
        let n = self.rules.len();
        let mut memo: Vec<Option<(u64, bool)>> = vec![None; n];
        let mut busy = vec![false; n];
        for r in 0..n {
            self.expansion(r, &mut memo, &mut busy, 0)?;
        }
        let count = |r: usize| memo[r].map_or((0, false), |v| v);
        let (t, empty) = count(root);
        let mut most = t.saturating_add(u64::from(empty));
        for rule in &self.rules {
            // The expansions of every suffix of every alternative, from the back.
            let mut next: (u64, bool) = (0, true);
            for e in rule.iter().rev() {
                let here = match e.ty {
                    Ty::End | Ty::Alt => (0, true),
                    Ty::RuleRef => {
                        let (tr, er) = count(e.value as usize);
                        (tr.saturating_add(if er { next.0 } else { 0 }), er && next.1)
                    }
                    _ => (1, false),
                };
                most = most.max(here.0.saturating_add(u64::from(here.1)));
                next = here;
            }
        }
        if most > MAX_STACKS {
            return self.limit(format!(
                "the grammar is too ambiguous for llama.cpp: one step may leave up to {most} parse stacks (at most \
                 {MAX_STACKS}); alternatives that begin with the same rule multiply them, so factor the common \
                 beginning out"
            ));
        }
        Ok(())
    }

    /// (terminal-topped expansions, whether it can match nothing) of rule `r`, memoised.
    fn expansion(
        &self,
        r: usize,
        memo: &mut Vec<Option<(u64, bool)>>,
        busy: &mut Vec<bool>,
        depth: usize,
    ) -> Res<(u64, bool)> {
        if let Some(v) = memo[r] {
            return Ok(v);
        }
        if busy[r] {
            let name = self.name_of(r as u32).unwrap_or_else(|| format!("#{r}"));
            return self.limit(format!(
                "the grammar is left-recursive at rule '{name}' through rules that can match nothing \
                 (llama.cpp would not notice, and loop)"
            ));
        }
        if depth >= MAX_REF_DEPTH {
            return self.limit(format!("rules begin with rules nested more than {MAX_REF_DEPTH} deep"));
        }
        busy[r] = true;
        let rule = &self.rules[r];
        let (mut total, mut empty) = (0u64, false);
        let mut i = 0;
        loop {
            let mut ended = true;
            while i < rule.len() && !is_end_of_sequence(rule[i]) {
                if rule[i].ty == Ty::RuleRef {
                    let child = rule[i].value as usize;
                    if child >= self.rules.len() {
                        return Err(Refusal {
                            message: format!("rule #{child} is used but never defined"),
                            limit: false,
                        });
                    }
                    let (t, e) = self.expansion(child, memo, busy, depth + 1)?;
                    total = total.saturating_add(t);
                    if !e {
                        ended = false;
                        break;
                    }
                } else {
                    total = total.saturating_add(1);
                    ended = false;
                    break;
                }
                i += 1;
            }
            empty |= ended;
            while i < rule.len() && !is_end_of_sequence(rule[i]) {
                i += 1;
            }
            if i < rule.len() && rule[i].ty == Ty::Alt {
                i += 1;
            } else {
                break;
            }
        }
        busy[r] = false;
        memo[r] = Some((total, empty));
        Ok((total, empty))
    }
}
