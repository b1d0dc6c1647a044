//! llama.cpp's grammar sampler (GBNF), driven so that nothing it does can abort the process.
//!
//! A [`Grammar`] is one `llama_sampler_init_grammar` sampler: the compiled rules plus the
//! pushdown state of one branch. Each branch holds its own; a branch forking from a parent
//! starts from [`Grammar::try_clone`] of the parent's.
//!
//! What llama.cpp does on each path, and how this module keeps it from aborting (file:line
//! of the vendored llama.cpp, `src/llama-grammar.cpp` unless named):
//!
//! - Parse errors throw inside `llama_grammar_parser::parse` and are caught there (694–723):
//!   it prints the reason and the whole grammar to stderr with `fprintf` (not through the log
//!   callback, so `PARDEC_LLAMA_LOG` cannot silence it) and init returns NULL (1228). An
//!   unknown root (1234) and left recursion (1262) log through LLAMA_LOG_ERROR and return
//!   NULL. The reason never reaches the caller, so [`gbnf::check`] ports the parser and its
//!   checks and refuses, with the reason, every grammar llama.cpp would refuse, before
//!   llama.cpp sees it. It also refuses what llama.cpp would hang, overflow its stack or run
//!   out of memory on: `{m,n}` with n < m (llama.cpp's `n_opt = max - min`, 513, wraps and
//!   generates ~2^64 rules), groups nested deeper than [`gbnf::MAX_NESTING`] (the parser
//!   recurses per level), chains of leftmost rule references deeper than
//!   [`gbnf::MAX_REF_DEPTH`] and left-recursion checks longer than [`gbnf::MAX_CHECK_STEPS`]
//!   (`llama_grammar_detect_left_recursion`, 963, recurses without memoising: a rule whose
//!   alternates start with the same rule is re-walked once per alternate, exponentially), and
//!   grammars whose repetitions expand to more than [`gbnf::MAX_ELEMENTS`] elements. Two
//!   hazards llama.cpp's own checks miss are refused too: left recursion through a rule that
//!   can match nothing without having an empty alternative (its `rules_may_be_empty`, 983, only
//!   sees empty alternatives; `llama_grammar_advance_stack`, 860, then grows a stack until
//!   memory runs out), and grammars where one step can leave more than [`gbnf::MAX_STACKS`]
//!   parse stacks (alternatives starting with the same rule multiply them; llama.cpp
//!   deduplicates them with a linear search: 2^14 stacks took 1.4 s to compile, 2^18 half an
//!   hour).
//! - An empty grammar string makes a sampler that constrains nothing (llama-sampler.cpp:2779):
//!   refused here.
//! - Accepting a token the grammar rejects throws (1527) after replacing the state by an empty
//!   stack set (1523); the next apply then stops the process on `GGML_ASSERT(!stacks.empty())`
//!   (948). Accepting an end-of-generation token while the grammar is not in an accepting
//!   state is `GGML_ABORT` (1455). [`Grammar::accept`] therefore checks the token with a
//!   one-candidate apply first and refuses it; a throw from llama.cpp anyway marks the grammar
//!   broken, and a broken grammar refuses every further call.
//! - A token id outside the vocabulary throws `std::out_of_range` from the piece cache
//!   (llama-vocab.cpp:3836): ids are checked here first.
//! - A vocabulary without a tokenizer (type "none") has no piece cache, so every apply would
//!   throw, and tokenizing a `<token>` literal on it is `GGML_ABORT` (llama-vocab.cpp:3703):
//!   such models are refused at compile.
//!
//! Every llama.cpp call goes through the catching wrappers of src/shim/llama_shim.cpp.

// Used by the session once its half of the grammar work lands.
#![allow(dead_code)]

use std::ffi::{c_char, CString};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

/// The catching wrappers of src/shim/llama_shim.cpp (see `crate::llama`'s `shim` module):
/// each returns 0, or i32::MIN when llama.cpp threw (its message in `last_message`).
mod shim {
    use super::sys;
    use std::ffi::{c_char, CStr};

    extern "C" {
        fn pardec_shim_last_message() -> *const c_char;
        pub(super) fn pardec_shim_tokenize(
            vocab: *const sys::llama_vocab,
            text: *const c_char,
            text_len: i32,
            tokens: *mut sys::llama_token,
            n_tokens_max: i32,
            add_special: bool,
            parse_special: bool,
            out: *mut i32,
        ) -> i32;
        pub(super) fn pardec_shim_grammar_init(
            vocab: *const sys::llama_vocab,
            grammar: *const c_char,
            root: *const c_char,
            out: *mut *mut sys::llama_sampler,
        ) -> i32;
        pub(super) fn pardec_shim_sampler_apply(
            smpl: *mut sys::llama_sampler,
            cur_p: *mut sys::llama_token_data_array,
        ) -> i32;
        pub(super) fn pardec_shim_sampler_accept(smpl: *mut sys::llama_sampler, token: sys::llama_token) -> i32;
        pub(super) fn pardec_shim_sampler_clone(
            smpl: *const sys::llama_sampler,
            out: *mut *mut sys::llama_sampler,
        ) -> i32;
        pub(super) fn pardec_shim_sampler_free(smpl: *mut sys::llama_sampler) -> i32;
    }

    /// The message of the exception the last failed wrapper on this thread caught.
    pub(super) fn last_message() -> String {
        // SAFETY: a NUL-terminated thread-local buffer of the shim's, always initialised.
        unsafe { CStr::from_ptr(pardec_shim_last_message()) }.to_string_lossy().into_owned()
    }
}

/// A GBNF grammar whose root is exactly one JSON object (RFC 8259): strings with every escape,
/// numbers, `true`/`false`/`null`, nested arrays and objects. Between two tokens it allows at
/// most one whitespace run: a single space, or a newline followed by up to 40 spaces or tabs,
/// so a model cannot pad forever; nothing before the `{` or after the closing `}`.
pub(crate) const JSON_OBJECT_GBNF: &str = r#"# One JSON object (RFC 8259), with bounded whitespace between tokens.
root   ::= object
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ws ":" ws value ws
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" char* "\""
char   ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex hex hex hex )
hex    ::= [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= ( " " | "\n" [ \t]{0,40} )?
"#;

/// The longest grammar text accepted, in bytes.
pub(crate) const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// One branch's grammar: llama.cpp's compiled rules and pushdown state.
///
/// It holds the vocabulary pointer it was compiled with (llama.cpp's sampler reads token
/// pieces from it on every call), so the model must outlive it and every clone of it; pardec's
/// session owns an `Arc` of the model for as long as its branches live.
pub(crate) struct Grammar {
    ptr: NonNull<sys::llama_sampler>,
    vocab: *const sys::llama_vocab,
    n_vocab: i32,
    /// An end-of-generation token, to ask whether the grammar is in an accepting state.
    eog: Option<i32>,
    /// The candidate array `mask` hands to llama.cpp, kept between calls.
    candidates: Vec<sys::llama_token_data>,
    /// Set when llama.cpp threw while changing the state: the state may then be one that
    /// stops the process on the next apply, so every later call is refused with this.
    broken: Option<String>,
}

// SAFETY: the sampler and its grammar state are heap objects owned by this value alone (a
// clone is a deep copy: llama_grammar_clone_impl copies the rules and repoints the stacks);
// llama.cpp keeps no thread-local or thread-affine state for them. The vocabulary they point
// to is only read (piece cache, EOG set), which the model allows from any thread
// (`LlamaModel` is Sync). Not Sync: every call needs `&mut self`.
unsafe impl Send for Grammar {}

impl Drop for Grammar {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_sampler_init_grammar or llama_sampler_clone and
        // is freed once. Freeing only runs destructors; a (theoretical) throw is caught.
        unsafe { shim::pardec_shim_sampler_free(self.ptr.as_ptr()) };
    }
}

impl Grammar {
    /// Compiles GBNF text with the given root rule. Err(message): empty text, NUL bytes, a
    /// parse error, an undefined rule, an unknown root, left recursion, a grammar past this
    /// module's limits (see the module documentation), or a model without a text vocabulary.
    ///
    /// # Safety
    ///
    /// `vocab` is the vocabulary of a live model (`LlamaModel::vocab()`), and that model
    /// outlives the returned grammar and every clone of it.
    pub(crate) unsafe fn compile(vocab: *const sys::llama_vocab, gbnf: &str, root: &str) -> Result<Grammar, String> {
        if vocab.is_null() {
            return Err("no vocabulary to compile the grammar against".into());
        }
        // SAFETY: a live vocabulary (the caller's guarantee); read-only queries.
        let (vocab_type, n_vocab) = unsafe { (sys::llama_vocab_type(vocab), sys::llama_vocab_n_tokens(vocab)) };
        if vocab_type == sys::LLAMA_VOCAB_TYPE_NONE || n_vocab <= 0 {
            return Err("the model has no text vocabulary, and a grammar constrains text".into());
        }
        if gbnf.len() > MAX_GRAMMAR_BYTES {
            return Err(format!("the grammar is {} bytes long, more than the {MAX_GRAMMAR_BYTES} accepted", gbnf.len()));
        }
        if gbnf.contains('\0') {
            return Err("the grammar contains a NUL byte".into());
        }
        if root.is_empty() || root.contains('\0') {
            return Err(format!("{root:?} cannot name a root rule"));
        }
        let mut token_id = |text: &[u8]| token_of(vocab, text);
        gbnf::check(gbnf, root, &mut token_id).map_err(|r| r.message)?;

        let text = CString::new(gbnf).map_err(|_| "the grammar contains a NUL byte".to_string())?;
        let c_root = CString::new(root).map_err(|_| "the root name contains a NUL byte".to_string())?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a live vocabulary and two NUL-terminated strings that outlive the call
        // (llama.cpp copies them).
        if unsafe { shim::pardec_shim_grammar_init(vocab, text.as_ptr(), c_root.as_ptr(), &mut ptr) } != 0 {
            return Err(format!("llama.cpp failed while compiling the grammar: {}", shim::last_message()));
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            "llama.cpp refused the grammar (its reason goes to its log: set PARDEC_LLAMA_LOG=1 to see it)".to_string()
        })?;
        Ok(Grammar { ptr, vocab, n_vocab, eog: find_eog(vocab, n_vocab), candidates: Vec::new(), broken: None })
    }

    /// The vocabulary size the grammar was compiled against (the length `mask` expects).
    pub(crate) fn n_vocab(&self) -> usize {
        self.n_vocab as usize
    }

    fn usable(&self) -> Result<(), String> {
        match &self.broken {
            Some(why) => Err(format!("the grammar's state was lost earlier ({why})")),
            None => Ok(()),
        }
    }

    fn in_vocab(&self, token: i32) -> Result<(), String> {
        if token < 0 || token >= self.n_vocab {
            return Err(format!("token {token} is outside the vocabulary (0..{})", self.n_vocab));
        }
        Ok(())
    }

    /// Runs the grammar over `self.candidates` (llama.cpp sets the rejected ones to -inf).
    fn apply_candidates(&mut self) -> Result<(), String> {
        let mut array = sys::llama_token_data_array {
            data: self.candidates.as_mut_ptr(),
            size: self.candidates.len(),
            selected: -1,
            sorted: false,
        };
        // SAFETY: a live sampler; `data` holds `size` initialised entries with ids inside the
        // vocabulary (every caller checks), valid across the call. Apply reads the state only,
        // so a throw leaves it as it was.
        if unsafe { shim::pardec_shim_sampler_apply(self.ptr.as_ptr(), &mut array) } != 0 {
            return Err(format!("llama.cpp failed while applying the grammar: {}", shim::last_message()));
        }
        Ok(())
    }

    /// Whether the grammar in its current state accepts `token` next (a one-candidate apply,
    /// as llama.cpp's `common_sampler_sample` does). An end-of-generation token is accepted
    /// exactly when the grammar is in an accepting state; a token whose piece is empty (or
    /// starts with a NUL byte) never is. Err: the id is outside the vocabulary, or the state
    /// was lost.
    pub(crate) fn allows(&mut self, token: i32) -> Result<bool, String> {
        self.usable()?;
        self.in_vocab(token)?;
        let mut one = sys::llama_token_data { id: token, logit: 0.0, p: 0.0 };
        let mut array = sys::llama_token_data_array { data: &mut one, size: 1, selected: -1, sorted: false };
        // SAFETY: a live sampler and a one-entry array with an id inside the vocabulary,
        // valid across the call; apply does not change the state.
        if unsafe { shim::pardec_shim_sampler_apply(self.ptr.as_ptr(), &mut array) } != 0 {
            return Err(format!("llama.cpp failed while applying the grammar: {}", shim::last_message()));
        }
        Ok(one.logit != f32::NEG_INFINITY)
    }

    /// Sets every logit the grammar rejects to -inf in a full row (index = token id; the row
    /// holds `n_vocab()` logits). Logits already -inf are left as they are (and not shown to
    /// llama.cpp, which saves its per-candidate work on rows already narrowed).
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.usable()?;
        if logits.len() != self.n_vocab() {
            return Err(format!("a row of {} logits for a vocabulary of {}", logits.len(), self.n_vocab));
        }
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != f32::NEG_INFINITY)
                .map(|(id, &logit)| sys::llama_token_data { id: id as i32, logit, p: 0.0 }),
        );
        self.apply_candidates()?;
        for c in &self.candidates {
            if c.logit == f32::NEG_INFINITY {
                logits[c.id as usize] = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Sets to -inf each `logits[i]` whose token `ids[i]` the grammar rejects (a reduced
    /// candidate list, e.g. the device's top-k). Err: different lengths, an id outside the
    /// vocabulary, or the state was lost.
    pub(crate) fn mask_candidates(&mut self, ids: &[i32], logits: &mut [f32]) -> Result<(), String> {
        self.usable()?;
        if ids.len() != logits.len() {
            return Err(format!("{} candidate ids for {} logits", ids.len(), logits.len()));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t < 0 || t >= self.n_vocab) {
            return Err(format!("token {bad} is outside the vocabulary (0..{})", self.n_vocab));
        }
        self.candidates.clear();
        self.candidates
            .extend(ids.iter().zip(logits.iter()).map(|(&id, &logit)| sys::llama_token_data { id, logit, p: 0.0 }));
        self.apply_candidates()?;
        for (c, l) in self.candidates.iter().zip(logits.iter_mut()) {
            if c.logit == f32::NEG_INFINITY {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the state by `token`. A token the grammar does not allow here (see `allows`)
    /// is refused with Err and the state is unchanged: llama.cpp would throw and lose the
    /// state, or abort for an end-of-generation token outside an accepting state. Accepting an
    /// end-of-generation token in an accepting state leaves the state as it is.
    pub(crate) fn accept(&mut self, token: i32) -> Result<(), String> {
        if !self.allows(token)? {
            return Err(format!("the grammar does not allow token {token} here"));
        }
        // SAFETY: a live sampler and a token inside the vocabulary that the grammar allows
        // (checked above), so llama.cpp neither aborts nor empties the state.
        if unsafe { shim::pardec_shim_sampler_accept(self.ptr.as_ptr(), token) } != 0 {
            let why = shim::last_message();
            self.broken = Some(why.clone());
            return Err(format!("llama.cpp failed while advancing the grammar: {why}"));
        }
        Ok(())
    }

    /// Whether generation may end here: the grammar is in an accepting state (llama.cpp's
    /// `allow_eog`: one of its stacks is empty). Asked with a one-candidate apply of one of the
    /// vocabulary's end-of-generation tokens; Err when the vocabulary has none (then nothing can
    /// end a generation but its budget) or the state was lost.
    ///
    /// When the grammar is complete (nothing may follow, as after the closing `}` of
    /// [`JSON_OBJECT_GBNF`]), `mask` leaves only the end-of-generation tokens.
    pub(crate) fn may_end(&mut self) -> Result<bool, String> {
        match self.eog {
            Some(eog) => self.allows(eog),
            None => Err("the vocabulary has no end-of-generation token".into()),
        }
    }

    /// A deep copy of the rules and the state (llama_sampler_clone), for a branch forking
    /// from a parent: advancing one leaves the other unchanged.
    pub(crate) fn try_clone(&self) -> Result<Grammar, String> {
        self.usable()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a live sampler; the clone is a new heap object owned by the result.
        if unsafe { shim::pardec_shim_sampler_clone(self.ptr.as_ptr(), &mut ptr) } != 0 {
            return Err(format!("llama.cpp failed while copying the grammar: {}", shim::last_message()));
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| "llama.cpp returned no copy of the grammar".to_string())?;
        Ok(Grammar {
            ptr,
            vocab: self.vocab,
            n_vocab: self.n_vocab,
            eog: self.eog,
            candidates: Vec::new(),
            broken: None,
        })
    }
}

/// The one token `text` (a GBNF `<...>` literal, brackets included) stands for, as llama.cpp's
/// parser finds it (`parse_token`: tokenize with special tokens parsed, exactly one token).
fn token_of(vocab: *const sys::llama_vocab, text: &[u8]) -> Result<u32, String> {
    let shown = String::from_utf8_lossy(text);
    let len = i32::try_from(text.len()).map_err(|_| format!("token literal {shown} is too long"))?;
    let mut tokens = [0 as sys::llama_token; 2];
    let mut n = 0;
    // SAFETY: a live vocabulary with a tokenizer (checked by `compile`), `text` readable for
    // `len` bytes, `tokens` writable for 2 ids.
    let status = unsafe {
        shim::pardec_shim_tokenize(vocab, text.as_ptr().cast::<c_char>(), len, tokens.as_mut_ptr(), 2, false, true, &mut n)
    };
    if status != 0 {
        return Err(format!("token literal {shown}: the tokenizer failed: {}", shim::last_message()));
    }
    if n != 1 {
        return Err(format!("invalid token {shown}: it is not exactly one token of this model"));
    }
    Ok(tokens[0] as u32)
}

/// An end-of-generation token of the vocabulary: EOS, EOT, or the first one found.
fn find_eog(vocab: *const sys::llama_vocab, n_vocab: i32) -> Option<i32> {
    // SAFETY: read-only queries on a live vocabulary, with ids inside it.
    unsafe {
        for t in [sys::llama_vocab_eos(vocab), sys::llama_vocab_eot(vocab)] {
            if t >= 0 && t < n_vocab && sys::llama_vocab_is_eog(vocab, t) {
                return Some(t);
            }
        }
        (0..n_vocab).find(|&t| sys::llama_vocab_is_eog(vocab, t))
    }
}

/// A port of llama.cpp's GBNF parser (`llama_grammar_parser`, llama-grammar.cpp:120–723) and
/// of the checks its grammar init runs (1226–1266), so that a grammar llama.cpp would refuse
/// is refused here with the reason, and one it would choke on never reaches it. It mirrors
/// the C++ byte for byte (same symbol numbering, same rules), and counts what it builds.
pub(crate) mod gbnf {
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
        /// of this module's limits, not for being invalid.
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

        fn parse_space(&self, mut pos: usize, newline_ok: bool) -> usize {
            loop {
                let c = self.at(pos);
                if c == b'#' {
                    while self.at(pos) != 0 && self.at(pos) != b'\r' && self.at(pos) != b'\n' {
                        pos += 1;
                    }
                } else if c == b' ' || c == b'\t' || (newline_ok && (c == b'\r' || c == b'\n')) {
                    pos += 1;
                } else {
                    return pos;
                }
            }
        }

        fn parse_name(&self, src: usize) -> Res<usize> {
            let mut pos = src;
            while is_word_char(self.at(pos)) {
                pos += 1;
            }
            if pos == src {
                return self.refuse(src, "expecting a rule name");
            }
            Ok(pos)
        }

        fn parse_int(&self, src: usize) -> Res<usize> {
            let mut pos = src;
            while is_digit(self.at(pos)) {
                pos += 1;
            }
            if pos == src {
                return self.refuse(src, "expecting an integer");
            }
            Ok(pos)
        }

        /// std::stoull of a run of digits: out of range past u64.
        fn parse_u64(&self, src: usize, end: usize) -> Res<u64> {
            let mut v: u64 = 0;
            for &d in &self.s[src..end] {
                v = match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))) {
                    Some(v) => v,
                    None => return self.refuse(src, "number out of range"),
                };
            }
            Ok(v)
        }

        fn parse_hex(&self, src: usize, size: usize) -> Res<(u32, usize)> {
            let end = src + size;
            let mut pos = src;
            let mut value: u32 = 0;
            while pos < end && self.at(pos) != 0 {
                let c = self.at(pos);
                let digit = match c {
                    b'a'..=b'f' => c - b'a' + 10,
                    b'A'..=b'F' => c - b'A' + 10,
                    b'0'..=b'9' => c - b'0',
                    _ => break,
                };
                value = (value << 4).wrapping_add(u32::from(digit));
                pos += 1;
            }
            if pos != end {
                return self.refuse(src, &format!("expecting {size} hex digits"));
            }
            Ok((value, pos))
        }

        /// One UTF-8 sequence (llama.cpp's lenient `decode_utf8(const char *)`).
        fn decode_utf8(&self, src: usize) -> (u32, usize) {
            const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
            let first = self.at(src);
            let len = LOOKUP[usize::from(first >> 4)];
            let mask = (1u32 << (8 - len)) - 1;
            let mut value = u32::from(first) & mask;
            let end = src + len;
            let mut pos = src + 1;
            while pos < end && self.at(pos) != 0 {
                value = (value << 6).wrapping_add(u32::from(self.at(pos) & 0x3F));
                pos += 1;
            }
            (value, pos)
        }

        fn parse_char(&self, src: usize) -> Res<(u32, usize)> {
            if self.at(src) == b'\\' {
                return match self.at(src + 1) {
                    b'x' => self.parse_hex(src + 2, 2),
                    b'u' => self.parse_hex(src + 2, 4),
                    b'U' => self.parse_hex(src + 2, 8),
                    b't' => Ok((u32::from(b'\t'), src + 2)),
                    b'r' => Ok((u32::from(b'\r'), src + 2)),
                    b'n' => Ok((u32::from(b'\n'), src + 2)),
                    c @ (b'\\' | b'"' | b'[' | b']' | b'-') => Ok((u32::from(c), src + 2)),
                    _ => self.refuse(src, "unknown escape"),
                };
            }
            if self.at(src) != 0 {
                return Ok(self.decode_utf8(src));
            }
            self.refuse(src, "unexpected end of input")
        }

        fn parse_token(&mut self, src: usize) -> Res<(u32, usize)> {
            let mut pos = src;
            if self.at(pos) != b'<' {
                return self.refuse(pos, "expecting '<'");
            }
            pos += 1;
            if self.at(pos) == b'[' {
                pos += 1;
                let int_end = self.parse_int(pos)?;
                let id = self.parse_u64(pos, int_end)?;
                let Ok(id) = u32::try_from(id) else {
                    return self.refuse(pos, "token id too big");
                };
                pos = int_end;
                if self.at(pos) != b']' {
                    return self.refuse(pos, "expecting ']'");
                }
                pos += 1;
                if self.at(pos) != b'>' {
                    return self.refuse(pos, "expecting '>'");
                }
                return Ok((id, pos + 1));
            }
            while self.at(pos) != 0 && self.at(pos) != b'>' {
                pos += 1;
            }
            if self.at(pos) != b'>' {
                return self.refuse(pos, "expecting '>'");
            }
            pos += 1;
            let s = self.s;
            match (self.token_id)(&s[src..pos]) {
                Ok(id) => Ok((id, pos)),
                Err(why) => self.refuse(src, &why),
            }
        }

        /// llama.cpp's `handle_repetitions` (llama-grammar.cpp:442–532), with its wrap-around
        /// on `{m,n}`, n < m, refused first.
        #[allow(clippy::too_many_arguments)]
        fn repeat(
            &mut self,
            pos: usize,
            rule: &mut Vec<Elem>,
            last_sym_start: usize,
            n_prev_rules: &mut u64,
            rule_name: &[u8],
            min: u64,
            max: u64,
        ) -> Res<()> {
            let no_max = max == u64::MAX;
            if last_sym_start == rule.len() {
                return self.refuse(pos, "expecting an item before */+/?/{");
            }
            if !no_max && max < min {
                // llama.cpp's `max - min` would wrap and generate rules until memory runs out.
                let message = self.located(pos, &format!("repetition {{{min},{max}}} has its maximum below its minimum"));
                return Err(Refusal { message, limit: true });
            }
            let prev: Vec<Elem> = rule[last_sym_start..].to_vec();
            let total_rules = if !no_max && max > 0 {
                max
            } else if min > 0 {
                min
            } else {
                1
            };
            if n_prev_rules.saturating_mul(total_rules) > MAX_REPETITION {
                return self.refuse(
                    pos,
                    "the repetition, times the rules it repeats, exceeds llama.cpp's limit of 2000",
                );
            }
            let n_opt = if no_max { 1 } else { max - min };
            let copies = min.saturating_sub(1).saturating_mul(prev.len() as u64);
            let optional = n_opt.saturating_mul(prev.len() as u64 + 3);
            self.grow(copies.saturating_add(optional))?;
            if min == 0 {
                rule.truncate(last_sym_start);
            } else {
                for _ in 1..min {
                    rule.extend_from_slice(&prev);
                }
            }
            let mut last_rec_rule_id = 0;
            let mut rec_rule = prev.clone();
            for i in 0..n_opt {
                rec_rule.truncate(prev.len());
                let rec_rule_id = self.generate_symbol_id(rule_name);
                if i > 0 || no_max {
                    rec_rule.push(el(Ty::RuleRef, if no_max { rec_rule_id } else { last_rec_rule_id }));
                }
                rec_rule.push(el(Ty::Alt, 0));
                rec_rule.push(el(Ty::End, 0));
                self.add_rule(rec_rule_id, rec_rule.clone());
                last_rec_rule_id = rec_rule_id;
            }
            if n_opt > 0 {
                rule.push(el(Ty::RuleRef, last_rec_rule_id));
            }
            *n_prev_rules = n_prev_rules.saturating_mul(total_rules);
            Ok(())
        }

        fn parse_sequence(
            &mut self,
            src: usize,
            rule_name: &[u8],
            rule: &mut Vec<Elem>,
            is_nested: bool,
            depth: usize,
        ) -> Res<usize> {
            let mut last_sym_start = rule.len();
            let mut pos = src;
            let mut n_prev_rules: u64 = 1;
            while self.at(pos) != 0 {
                let c = self.at(pos);
                if c == b'"' {
                    pos += 1;
                    last_sym_start = rule.len();
                    n_prev_rules = 1;
                    while self.at(pos) != b'"' {
                        if self.at(pos) == 0 {
                            return self.refuse(pos, "unexpected end of input (an unterminated string)");
                        }
                        let (ch, next) = self.parse_char(pos)?;
                        pos = next;
                        self.push(rule, el(Ty::Char, ch))?;
                    }
                    pos = self.parse_space(pos + 1, is_nested);
                } else if c == b'[' {
                    pos += 1;
                    let mut start_type = Ty::Char;
                    if self.at(pos) == b'^' {
                        pos += 1;
                        start_type = Ty::CharNot;
                    }
                    last_sym_start = rule.len();
                    n_prev_rules = 1;
                    while self.at(pos) != b']' {
                        if self.at(pos) == 0 {
                            return self.refuse(pos, "unexpected end of input (an unterminated [...])");
                        }
                        let (ch, next) = self.parse_char(pos)?;
                        pos = next;
                        let ty = if last_sym_start < rule.len() { Ty::CharAlt } else { start_type };
                        self.push(rule, el(ty, ch))?;
                        if self.at(pos) == b'-' && self.at(pos + 1) != b']' {
                            if self.at(pos + 1) == 0 {
                                return self.refuse(pos + 1, "unexpected end of input (an unterminated [...])");
                            }
                            let (end_ch, next) = self.parse_char(pos + 1)?;
                            pos = next;
                            self.push(rule, el(Ty::CharRngUpper, end_ch))?;
                        }
                    }
                    pos = self.parse_space(pos + 1, is_nested);
                } else if c == b'<' || c == b'!' {
                    let mut ty = Ty::Token;
                    if c == b'!' {
                        ty = Ty::TokenNot;
                        pos += 1;
                    }
                    let (id, token_end) = self.parse_token(pos)?;
                    last_sym_start = rule.len();
                    n_prev_rules = 1;
                    self.push(rule, el(ty, id))?;
                    pos = self.parse_space(token_end, is_nested);
                } else if is_word_char(c) {
                    let name_end = self.parse_name(pos)?;
                    let name = self.s[pos..name_end].to_vec();
                    let ref_rule_id = self.get_symbol_id(&name);
                    pos = self.parse_space(name_end, is_nested);
                    last_sym_start = rule.len();
                    n_prev_rules = 1;
                    self.push(rule, el(Ty::RuleRef, ref_rule_id))?;
                } else if c == b'(' {
                    if depth >= MAX_NESTING {
                        let message = self.located(pos, &format!("groups nested deeper than {MAX_NESTING}"));
                        return Err(Refusal { message, limit: true });
                    }
                    pos = self.parse_space(pos + 1, true);
                    let n_rules_before = self.symbols.len() as u32;
                    let sub_rule_id = self.generate_symbol_id(rule_name);
                    pos = self.parse_alternates(pos, rule_name, sub_rule_id, true, depth + 1)?;
                    n_prev_rules = u64::from((self.symbols.len() as u32).wrapping_sub(n_rules_before).max(1));
                    last_sym_start = rule.len();
                    self.push(rule, el(Ty::RuleRef, sub_rule_id))?;
                    if self.at(pos) != b')' {
                        return self.refuse(pos, "expecting ')'");
                    }
                    pos = self.parse_space(pos + 1, is_nested);
                } else if c == b'.' {
                    last_sym_start = rule.len();
                    n_prev_rules = 1;
                    self.push(rule, el(Ty::CharAny, 0))?;
                    pos = self.parse_space(pos + 1, is_nested);
                } else if c == b'*' || c == b'+' || c == b'?' {
                    let at = pos;
                    pos = self.parse_space(pos + 1, is_nested);
                    let (min, max) = match c {
                        b'*' => (0, u64::MAX),
                        b'+' => (1, u64::MAX),
                        _ => (0, 1),
                    };
                    self.repeat(at, rule, last_sym_start, &mut n_prev_rules, rule_name, min, max)?;
                } else if c == b'{' {
                    let at = pos;
                    pos = self.parse_space(pos + 1, is_nested);
                    if !is_digit(self.at(pos)) {
                        return self.refuse(pos, "expecting an integer");
                    }
                    let int_end = self.parse_int(pos)?;
                    let min = self.parse_u64(pos, int_end)?;
                    pos = self.parse_space(int_end, is_nested);
                    let mut max = u64::MAX;
                    if self.at(pos) == b'}' {
                        max = min;
                        pos = self.parse_space(pos + 1, is_nested);
                    } else if self.at(pos) == b',' {
                        pos = self.parse_space(pos + 1, is_nested);
                        if is_digit(self.at(pos)) {
                            let int_end = self.parse_int(pos)?;
                            max = self.parse_u64(pos, int_end)?;
                            pos = self.parse_space(int_end, is_nested);
                        }
                        if self.at(pos) != b'}' {
                            return self.refuse(pos, "expecting '}'");
                        }
                        pos = self.parse_space(pos + 1, is_nested);
                    } else {
                        return self.refuse(pos, "expecting ','");
                    }
                    if min > MAX_REPETITION {
                        return self.refuse(at, "more than 2000 repetitions (llama.cpp's limit)");
                    }
                    if max != u64::MAX && max > MAX_REPETITION {
                        max = u64::MAX;
                    }
                    self.repeat(at, rule, last_sym_start, &mut n_prev_rules, rule_name, min, max)?;
                } else {
                    break;
                }
            }
            Ok(pos)
        }

        fn parse_alternates(
            &mut self,
            src: usize,
            rule_name: &[u8],
            rule_id: u32,
            is_nested: bool,
            depth: usize,
        ) -> Res<usize> {
            let mut rule = Vec::new();
            let mut pos = self.parse_sequence(src, rule_name, &mut rule, is_nested, depth)?;
            while self.at(pos) == b'|' {
                self.push(&mut rule, el(Ty::Alt, 0))?;
                pos = self.parse_space(pos + 1, true);
                pos = self.parse_sequence(pos, rule_name, &mut rule, is_nested, depth)?;
            }
            self.push(&mut rule, el(Ty::End, 0))?;
            self.add_rule(rule_id, rule);
            Ok(pos)
        }

        fn parse_rule(&mut self, src: usize) -> Res<usize> {
            let name_end = self.parse_name(src)?;
            let mut pos = self.parse_space(name_end, false);
            let name = self.s[src..name_end].to_vec();
            let rule_id = self.get_symbol_id(&name);
            if !(self.at(pos) == b':' && self.at(pos + 1) == b':' && self.at(pos + 2) == b'=') {
                return self.refuse(pos, "expecting ::=");
            }
            pos = self.parse_space(pos + 3, true);
            pos = self.parse_alternates(pos, &name, rule_id, false, 0)?;
            if self.at(pos) == b'\r' {
                pos += if self.at(pos + 1) == b'\n' { 2 } else { 1 };
            } else if self.at(pos) == b'\n' {
                pos += 1;
            } else if self.at(pos) != 0 {
                return self.refuse(pos, "expecting a newline or the end");
            }
            Ok(self.parse_space(pos, true))
        }

        /// `llama_grammar_parser::parse`, its validation included.
        fn parse(&mut self) -> Res<()> {
            let mut pos = self.parse_space(0, true);
            while self.at(pos) != 0 {
                pos = self.parse_rule(pos)?;
            }
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.is_empty() {
                    let name = self.name_of(i as u32).unwrap_or_else(|| format!("#{i}"));
                    return Err(Refusal { message: format!("rule '{name}' is used but never defined"), limit: false });
                }
                for e in rule {
                    if e.ty == Ty::RuleRef
                        && (e.value as usize >= self.rules.len() || self.rules[e.value as usize].is_empty())
                    {
                        let name = self.name_of(e.value).unwrap_or_else(|| format!("#{}", e.value));
                        return Err(Refusal { message: format!("rule '{name}' is used but never defined"), limit: false });
                    }
                }
            }
            Ok(())
        }

        /// `llama_grammar_detect_left_recursion` run over every rule as init does
        /// (llama-grammar.cpp:1251–1266), walked with an explicit stack in the same order, so
        /// its depth and steps are llama.cpp's.
        fn check_left_recursion(&self) -> Res<()> {
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
                            return Err(Refusal { message: format!("rule #{child} is used but never defined"), limit: false });
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
        fn check_expansions(&self, root: usize) -> Res<()> {
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
                            return Err(Refusal { message: format!("rule #{child} is used but never defined"), limit: false });
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
}

#[cfg(test)]
mod tests {
    use super::gbnf::{self, Refusal};
    use super::*;
    use std::path::PathBuf;

    extern "C" {
        fn pardec_shim_model_load(
            path: *const c_char,
            params: *const sys::llama_model_params,
            out: *mut *mut sys::llama_model,
        ) -> i32;
    }

    fn no_tokens(text: &[u8]) -> Result<u32, String> {
        Err(format!("no vocabulary for {}", String::from_utf8_lossy(text)))
    }

    fn check(text: &str, root: &str) -> Result<(), Refusal> {
        gbnf::check(text, root, &mut no_tokens)
    }

    #[test]
    fn port_accepts_and_refuses_without_a_model() {
        check(JSON_OBJECT_GBNF, "root").expect("the JSON grammar is valid");
        check("root ::= \"a\" [b-d]* ( x | \"y\"{2,3} )\nx ::= [^\\n] .\n", "root").unwrap();
        for (text, root, needle) in [
            ("", "root", "empty"),
            ("   \n# only a comment\n", "root", "no rules"),
            ("root ::= foo", "root", "'foo'"),
            ("root ::= \"a", "root", "unterminated"),
            ("root ::= root \"a\"", "root", "left-recursive"),
            ("root ::= a\na ::= b? root\nb ::= \"x\"", "root", "left-recursive"),
            ("root ::= \"a\"", "start", "no rule named 'start'"),
            ("root ::= \"a\"{5,2}", "root", "maximum below"),
            ("root ::= \"a\"{2001}", "root", "2000"),
            ("root ::= ( \"a\"", "root", "expecting ')'"),
            ("root := \"a\"", "root", "::="),
            ("root ::= \"\\q\"", "root", "escape"),
            ("root ::= *", "root", "item before"),
            ("root ::= \"a\" ]", "root", "newline"),
            ("root ::= <[99999999999999999999999]>", "root", "out of range"),
            ("root ::= <abc>", "root", "no vocabulary"),
        ] {
            let err = check(text, root).expect_err(text);
            assert!(err.message.contains(needle), "{text:?}: {:?} lacks {needle:?}", err.message);
        }
        // Limits: nesting, expansion, llama.cpp's exponential left-recursion walk.
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(check(&deep, "root").unwrap_err().limit);
        let big = format!("root ::= \"{}\"{{2000}}", "a".repeat(200));
        assert!(check(&big, "root").unwrap_err().limit);
        let mut doubling = String::from("root ::= a0\n");
        for i in 0..40 {
            doubling += &format!("a{i} ::= a{} \"x\" | a{} \"y\"\n", i + 1, i + 1);
        }
        doubling += "a40 ::= \"z\"\n";
        let started = std::time::Instant::now();
        assert!(check(&doubling, "root").unwrap_err().limit);
        assert!(started.elapsed().as_secs() < 10);
        // 14 levels pass llama.cpp's check but leave 2^14 stacks (1.4 s to compile there).
        let mut doubling = String::from("root ::= a0\n");
        for i in 0..14 {
            doubling += &format!("a{i} ::= a{} \"x\" | a{} \"y\"\n", i + 1, i + 1);
        }
        doubling += "a14 ::= \"z\"\n";
        let err = check(&doubling, "root").unwrap_err();
        assert!(err.limit && err.message.contains("16384 parse stacks"), "{}", err.message);
        // Left recursion through a rule that can match nothing but has no empty alternative
        // (llama.cpp accepts it, then its advance grows a stack until memory runs out).
        let err = check("r ::= x r \"a\" | \"b\"\nx ::= y\ny ::= \"\" | \"c\"", "r").unwrap_err();
        assert!(err.limit && err.message.contains("left-recursive"), "{}", err.message);
        // Enumerations are fine.
        let names: Vec<String> = (0..500).map(|i| format!("\"v{i}\"")).collect();
        check(&format!("root ::= {}", names.join(" | ")), "root").unwrap();
    }

    /// The test model, loaded through the shim (the crate's `LlamaModel` keeps its
    /// vocabulary private); None, with a message, when the file is missing.
    struct TestModel {
        ptr: *mut sys::llama_model,
        vocab: *const sys::llama_vocab,
    }

    impl Drop for TestModel {
        fn drop(&mut self) {
            // SAFETY: loaded once below, every grammar on it dropped before.
            unsafe { sys::llama_model_free(self.ptr) }
        }
    }

    impl TestModel {
        fn load() -> Option<TestModel> {
            let path = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/pardec/models/SmolLM2-135M-Instruct.Q4_1.gguf");
            if !path.exists() {
                eprintln!("skipped: {} is missing (scripts/fetch-models.sh fetches it)", path.display());
                return None;
            }
            crate::backend::backend().expect("llama.cpp backend");
            let c_path = CString::new(path.to_str().unwrap()).unwrap();
            let mut ptr = std::ptr::null_mut();
            // SAFETY: plain parameters and a NUL-terminated path that outlives the call.
            unsafe {
                let mut params = sys::llama_model_default_params();
                params.n_gpu_layers = 0;
                assert_eq!(pardec_shim_model_load(c_path.as_ptr(), &params, &mut ptr), 0);
                assert!(!ptr.is_null(), "the test model loads");
                Some(TestModel { ptr, vocab: sys::llama_model_get_vocab(ptr) })
            }
        }

        fn compile(&self, text: &str, root: &str) -> Result<Grammar, String> {
            // SAFETY: a live vocabulary; every grammar is dropped before the model.
            unsafe { Grammar::compile(self.vocab, text, root) }
        }

        fn tokenize(&self, text: &str) -> Vec<i32> {
            let mut tokens = vec![0; text.len() + 4];
            let mut n = 0;
            // SAFETY: text readable, tokens writable for their lengths.
            let status = unsafe {
                shim::pardec_shim_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    text.len() as i32,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    false,
                    false,
                    &mut n,
                )
            };
            assert!(status == 0 && n >= 0);
            tokens.truncate(n as usize);
            tokens
        }

        fn one_token(&self, text: &str) -> i32 {
            let t = self.tokenize(text);
            assert_eq!(t.len(), 1, "{text:?} is one token");
            t[0]
        }

        fn eog(&self) -> i32 {
            // SAFETY: read-only query.
            let eos = unsafe { sys::llama_vocab_eos(self.vocab) };
            assert!(eos >= 0);
            eos
        }

        /// Whether llama.cpp itself compiles it (no pre-check): non-NULL sampler.
        fn llama_cpp_accepts(&self, text: &str, root: &str) -> bool {
            let text = CString::new(text).unwrap();
            let root = CString::new(root).unwrap();
            let mut ptr = std::ptr::null_mut();
            // SAFETY: live vocabulary, NUL-terminated strings.
            assert_eq!(unsafe { shim::pardec_shim_grammar_init(self.vocab, text.as_ptr(), root.as_ptr(), &mut ptr) }, 0);
            if ptr.is_null() {
                return false;
            }
            // SAFETY: freed once.
            unsafe { shim::pardec_shim_sampler_free(ptr) };
            true
        }
    }

    #[test]
    fn json_object_grammar_on_the_real_model() {
        let Some(model) = TestModel::load() else { return };
        let mut g = model.compile(JSON_OBJECT_GBNF, "root").expect("compiles");
        let n_vocab = g.n_vocab();
        let eog = model.eog();
        let open = model.one_token("{");
        let letter = model.one_token("a");
        assert!(g.allows(open).unwrap());
        assert!(!g.allows(letter).unwrap());
        assert!(!g.allows(eog).unwrap(), "nothing generated yet: may not end");
        assert!(!g.may_end().unwrap());
        // EOG outside an accepting state: llama.cpp would GGML_ABORT; refused, state kept.
        assert!(g.accept(eog).is_err());
        assert!(g.accept(letter).is_err());
        assert!(g.allows(open).unwrap(), "refusals leave the state unchanged");
        assert!(g.allows(-1).is_err() && g.allows(n_vocab as i32).is_err());

        // A full row: finite exactly where `allows` says yes.
        let mut row = vec![0.0f32; n_vocab];
        g.mask(&mut row).unwrap();
        let allowed: Vec<i32> = (0..n_vocab as i32).filter(|&t| row[t as usize].is_finite()).collect();
        assert!(allowed.contains(&open) && !allowed.contains(&letter) && !allowed.contains(&eog));
        for t in 0..n_vocab as i32 {
            assert_eq!(g.allows(t).unwrap(), row[t as usize].is_finite(), "token {t}");
        }
        println!("{} of {n_vocab} tokens may start the object", allowed.len());
        assert!(g.mask(&mut row[..10]).is_err());

        let text = "{\"a\": 1}";
        for (k, &t) in model.tokenize(text).iter().enumerate() {
            assert!(g.allows(t).unwrap(), "token {k} ({t}) of {text:?}");
            assert!(!g.may_end().unwrap());
            g.accept(t).unwrap();
        }
        assert!(g.may_end().unwrap() && g.allows(eog).unwrap());
        // Complete: only end-of-generation tokens remain.
        let mut row = vec![1.5f32; n_vocab];
        g.mask(&mut row).unwrap();
        for (t, l) in row.iter().enumerate() {
            assert_eq!(l.is_finite(), model_is_eog(&model, t as i32), "token {t}");
        }
        g.accept(eog).expect("EOG in an accepting state");
        assert!(g.may_end().unwrap());

        // A clone is independent: after `{`, the parent closes the object while the clone
        // opens a key.
        let close = model.one_token("}");
        let quote = model.one_token("\"");
        let mut parent = model.compile(JSON_OBJECT_GBNF, "root").unwrap();
        parent.accept(open).unwrap();
        let mut child = parent.try_clone().unwrap();
        child.accept(quote).unwrap();
        assert!(child.allows(letter).unwrap(), "key text");
        assert!(!parent.allows(letter).unwrap(), "a key starts with a quote");
        parent.accept(close).unwrap();
        assert!(parent.may_end().unwrap());
        assert!(!child.may_end().unwrap());
        let mut grandchild = child.try_clone().unwrap();
        grandchild.accept(letter).unwrap();
        child.accept(quote).unwrap();
        assert!(grandchild.allows(letter).unwrap(), "still inside the key");
        assert!(!child.allows(letter).unwrap(), "after the (empty) key");
        assert!(child.allows(model.one_token(":")).unwrap(), "after the key");
        drop(parent);
        assert!(child.allows(close).is_ok(), "a clone outlives its parent");

        // mask_candidates on a reduced list.
        let mut g2 = model.compile(JSON_OBJECT_GBNF, "root").unwrap();
        let ids = [letter, open, eog];
        let mut logits = [3.0, 2.0, 1.0];
        g2.mask_candidates(&ids, &mut logits).unwrap();
        assert_eq!(logits, [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY]);
        assert!(g2.mask_candidates(&[n_vocab as i32], &mut [0.0]).is_err());
    }

    fn model_is_eog(model: &TestModel, t: i32) -> bool {
        // SAFETY: id inside the vocabulary.
        unsafe { sys::llama_vocab_is_eog(model.vocab, t) }
    }

    #[test]
    fn bad_grammars_are_errors_and_agree_with_llama_cpp() {
        let Some(model) = TestModel::load() else { return };
        for (text, root) in [
            ("root ::= foo", "root"),
            ("root ::= \"a", "root"),
            ("root ::= root \"a\"", "root"),
            ("", "root"),
            ("root ::= \"a\"", "nope"),
            ("   ", "root"),
            ("root ::= <notonetoken>", "root"),
        ] {
            let err = model.compile(text, root).err().unwrap_or_else(|| panic!("{text:?} compiled"));
            println!("{text:?} (root {root}): {err}");
            assert!(!err.is_empty());
        }
        assert!(model.compile("root ::= \"a\"", "").is_err());
        assert!(model.compile("root ::= \"a\0\"", "root").is_err());

        // The port decides as llama.cpp does, on grammars llama.cpp can be shown safely
        // (llama.cpp prints its parse errors to stderr: expected noise here).
        let corpus = [
            JSON_OBJECT_GBNF,
            "root ::= \"a\"",
            "root ::= [a-z]+ \"!\"?",
            "root ::= x\nx ::= \"y\" | \"z\" x",
            "root ::= ( \"a\" | [b-c] )* \".\"{1,3}",
            "root ::= <[5]> !<[6]> .",
            "root ::= <|im_end|>",
            "root ::= \"\\u00e9\" [\\x41-\\x5A] \"\\U0001F600\"",
            "root ::= \"é\" [^ä-ö]",
            "root ::= (\n  \"a\"\n  | \"b\"\n)",
            "root ::= a\na ::= \"x\"\na ::= \"y\"",
            "root ::= \"a\"{0,0} \"b\"{3} \"c\"{2,} \"d\"{,2}",
            "root ::= [] \"a\"",
            "root ::= \"\"",
            "root ::= ( )",
            "root ::= foo",
            "root ::= \"a",
            "root ::= root \"a\"",
            "root ::= a \"x\"\na ::= \"\" | root",
            "root ::= [a-",
            "root ::= \"\\x4\"",
            "root ::= <notonetoken>",
            "root ::= \"a\" )",
            "root ::= \"a\"{}",
            "root ::= \"a\"{2001}",
            "root ::= (\"a\"{100}){100}",
            "root ::= \"a\" | | \"b\"",
            "root::=\"a\"\r\nb ::= \"c\"",
            "root ::= [\\]]",
            "1 ::= \"a\"\nroot ::= 1",
            "root ::= x_1\nx ::= (\"a\")",
        ];
        for text in corpus {
            let mut token_id = |t: &[u8]| token_of(model.vocab, t);
            let port = gbnf::check(text, "root", &mut token_id);
            if let Err(r) = &port {
                if r.limit {
                    continue;
                }
            }
            if text.is_empty() {
                continue;
            }
            let ours = port.is_ok();
            assert_eq!(ours, model.llama_cpp_accepts(text, "root"), "{text:?}: port says {port:?}");
        }
        // llama.cpp's own refusals (NULL, no abort) for an unknown root and left recursion.
        assert!(!model.llama_cpp_accepts("root ::= \"a\"", "nope"));
        assert!(!model.llama_cpp_accepts("root ::= root \"a\"", "root"));
    }

    /// llama.cpp prints each of the ~350 parse errors it meets here, with its grammar, to
    /// stderr: that noise in the test log is expected.
    #[test]
    fn port_agrees_with_llama_cpp_on_random_grammars() {
        let Some(model) = TestModel::load() else { return };
        // Deterministic xorshift over GBNF's pieces: mostly broken grammars, some valid.
        const PIECES: [&str; 30] = [
            "root", " ::= ", "a", "b", " ", "\n", "\"x\"", "\"", "[a-c]", "[^x]", "[", "]", "(", ")", "|", "*", "+",
            "?", "{2}", "{1,3}", "{0,}", "{", "}", ",", ".", "\\", "-", "::=", "\"\\n\"", "#c\n",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..400 {
            let mut text = String::from(if next() % 4 == 0 { "" } else { "root ::= " });
            for _ in 0..(next() % 12) {
                text += PIECES[(next() % PIECES.len() as u64) as usize];
            }
            let mut token_id = |t: &[u8]| token_of(model.vocab, t);
            let port = gbnf::check(&text, "root", &mut token_id);
            if matches!(&port, Err(r) if r.limit) || text.is_empty() {
                continue;
            }
            let llama = model.llama_cpp_accepts(&text, "root");
            assert_eq!(port.is_ok(), llama, "{text:?}: port says {port:?}");
            if llama {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        println!("random grammars: {valid} valid, {invalid} invalid, all decided alike");
        assert!(valid > 10 && invalid > 10);
    }
}
