//! A port of llama.cpp's GBNF parser (`llama_grammar_parser`), run before llama.cpp sees a grammar,
//! so that every grammar it would refuse, hang or overflow on is refused here, with the reason.
//! `parse` holds the parse functions, `checks` the checks on the parsed rules (llama.cpp's
//! left-recursion check, and the ones it lacks).

mod checks;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

/// Deepest nesting of parenthesised groups (llama.cpp recurses twice per level, ~440
/// bytes of stack).
pub(crate) const MAX_NESTING: usize = 64;
/// Most grammar elements the parse may build, repetitions expanded (a bound on llama.cpp's
/// memory and on the cost of its clone, which scans every element per stack entry).
pub(crate) const MAX_ELEMENTS: usize = 200_000;
/// Deepest chain of leftmost rule references (llama.cpp's left-recursion check recurses
/// once per link, 128 bytes of stack: at most 512 KiB).
pub(crate) const MAX_REF_DEPTH: usize = 4096;
/// Most element visits of the left-recursion check (llama.cpp's walk is exponential on
/// rules whose alternates start with the same rule).
pub(crate) const MAX_CHECK_STEPS: u64 = 20_000_000;
/// Most parse stacks one step may leave (llama.cpp keeps one per way the grammar can go
/// on, deduplicates them with a linear search, and runs every candidate token through each:
/// 2^14 of them took 1.4 s to compile, 2^18 half an hour).
pub(crate) const MAX_STACKS: u64 = 4096;
/// llama.cpp's MAX_REPETITION_THRESHOLD.
const MAX_REPETITION: u64 = 2000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    End,
    Alt,
    RuleRef,
    Char,
    CharNot,
    CharRngUpper,
    CharAlt,
    CharAny,
    Token,
    TokenNot,
}

#[derive(Clone, Copy, Debug)]
struct Elem {
    ty: Ty,
    value: u32,
}

const fn el(ty: Ty, value: u32) -> Elem {
    Elem { ty, value }
}

/// Why a grammar is refused.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) message: String,
    /// True when llama.cpp itself might have accepted it (or hung on it): refused for one
    /// of this module's limits, not for being invalid. Only the tests that compare the port
    /// with llama.cpp read it (a limit refusal is where the two may disagree).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) limit: bool,
}

type Res<T> = Result<T, Refusal>;

/// Checks `text` as llama.cpp would compile it with root `root`. `token_id` resolves a
/// `<...>` token literal (brackets included) to its one token, or says why not.
pub(crate) fn check(text: &str, root: &str, token_id: &mut dyn FnMut(&[u8]) -> Result<u32, String>) -> Res<()> {
    if text.is_empty() {
        return Err(Refusal { message: "the grammar is empty".into(), limit: false });
    }
    let mut p = Parser { s: text.as_bytes(), symbols: BTreeMap::new(), rules: Vec::new(), built: 0, token_id };
    p.parse()?;
    if p.rules.is_empty() {
        return Err(Refusal { message: "the grammar defines no rules".into(), limit: false });
    }
    if !p.symbols.contains_key(root.as_bytes()) {
        return Err(Refusal { message: format!("the grammar has no rule named '{root}'"), limit: false });
    }
    p.check_left_recursion()?;
    p.check_expansions(p.symbols[root.as_bytes()] as usize)
}

struct Parser<'a> {
    s: &'a [u8],
    /// llama.cpp's `symbol_ids` (a std::map: the same order as a BTreeMap of bytes).
    symbols: BTreeMap<Vec<u8>, u32>,
    rules: Vec<Vec<Elem>>,
    /// Elements pushed so far (never decreases: a bound on what llama.cpp allocates).
    built: usize,
    token_id: &'a mut dyn FnMut(&[u8]) -> Result<u32, String>,
}

fn is_digit(c: u8) -> bool {
    c.is_ascii_digit()
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'-' || is_digit(c)
}

fn is_end_of_sequence(e: Elem) -> bool {
    matches!(e.ty, Ty::End | Ty::Alt)
}

impl<'a> Parser<'a> {
    /// The byte at `pos`, or 0 past the end (the C++ reads the NUL terminator).
    fn at(&self, pos: usize) -> u8 {
        self.s.get(pos).copied().unwrap_or(0)
    }

    fn refuse<T>(&self, pos: usize, what: &str) -> Res<T> {
        Err(Refusal { message: self.located(pos, what), limit: false })
    }

    /// "grammar line L, column C: what (at "...")".
    fn located(&self, pos: usize, what: &str) -> String {
        let pos = pos.min(self.s.len());
        let before = &self.s[..pos];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&self.s[line_start..pos]).chars().count() + 1;
        let near: String = String::from_utf8_lossy(&self.s[pos..]).chars().take(24).collect();
        if near.is_empty() {
            format!("grammar line {line}, column {column}: {what} (at the end)")
        } else {
            format!("grammar line {line}, column {column}: {what} (at {near:?})")
        }
    }

    fn limit<T>(&self, message: String) -> Res<T> {
        Err(Refusal { message, limit: true })
    }

    fn push(&mut self, rule: &mut Vec<Elem>, e: Elem) -> Res<()> {
        self.grow(1)?;
        rule.push(e);
        Ok(())
    }

    fn grow(&mut self, n: u64) -> Res<()> {
        let total = (self.built as u64).saturating_add(n);
        if total > MAX_ELEMENTS as u64 {
            return self.limit(format!(
                "the grammar expands to more than {MAX_ELEMENTS} elements (repetitions are expanded): make it smaller"
            ));
        }
        self.built = total as usize;
        Ok(())
    }

    fn get_symbol_id(&mut self, name: &[u8]) -> u32 {
        let next = self.symbols.len() as u32;
        *self.symbols.entry(name.to_vec()).or_insert(next)
    }

    fn generate_symbol_id(&mut self, base: &[u8]) -> u32 {
        let next = self.symbols.len() as u32;
        let mut name = base.to_vec();
        name.push(b'_');
        name.extend_from_slice(next.to_string().as_bytes());
        self.symbols.insert(name, next);
        next
    }

    fn add_rule(&mut self, id: u32, rule: Vec<Elem>) {
        let id = id as usize;
        if self.rules.len() <= id {
            self.rules.resize(id + 1, Vec::new());
        }
        self.rules[id] = rule;
    }

    fn name_of(&self, id: u32) -> Option<String> {
        self.symbols.iter().find(|(_, &v)| v == id).map(|(k, _)| String::from_utf8_lossy(k).into_owned())
    }
}
