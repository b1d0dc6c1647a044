//! llama.cpp's grammar sampler (GBNF), driven so that nothing it does can abort the process.
//!
//! A [`GrammarSampler`] is one `llama_sampler_init_grammar` sampler: the compiled rules plus the
//! pushdown state of one branch. Each branch holds its own; a branch forking from a parent
//! starts from [`GrammarSampler::try_clone`] of the parent's.
//!
//! What llama.cpp does on each path, and how this module keeps it from aborting (file:line
//! of the llama.cpp that llama-cpp-sys-2 0.1.161 vendors, the version Cargo.toml pins;
//! `src/llama-grammar.cpp` unless named; the same holds for the line numbers in `gbnf`):
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
//!   state is `GGML_ABORT` (1455). [`GrammarSampler::accept`] therefore checks the token with a
//!   one-candidate apply first and refuses it; a throw from llama.cpp anyway marks the grammar
//!   broken, and a broken grammar refuses every further call.
//! - A token id outside the vocabulary throws `std::out_of_range` from the piece cache
//!   (llama-vocab.cpp:3836): ids are checked here first.
//! - A vocabulary without a tokenizer (type "none") has no piece cache, so every apply would
//!   throw, and tokenizing a `<token>` literal on it is `GGML_ABORT` (llama-vocab.cpp:3703):
//!   such models are refused at compile.
//!
//! Every llama.cpp call goes through the catching wrappers of src/shim/llama_shim.cpp.

use std::ffi::{c_char, CString};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::gbnf;
use super::shim;

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
pub(crate) struct GrammarSampler {
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
unsafe impl Send for GrammarSampler {}

impl Drop for GrammarSampler {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_sampler_init_grammar or llama_sampler_clone and
        // is freed once. Freeing only runs destructors; a (theoretical) throw is caught.
        unsafe { shim::pardec_shim_sampler_free(self.ptr.as_ptr()) };
    }
}

impl GrammarSampler {
    /// Compiles GBNF text with the given root rule. Err(message): empty text, NUL bytes, a
    /// parse error, an undefined rule, an unknown root, left recursion, a grammar past this
    /// module's limits (see the module documentation), or a model without a text vocabulary.
    ///
    /// # Safety
    ///
    /// `vocab` is the vocabulary of a live model (`LlamaModel::vocab()`), and that model
    /// outlives the returned grammar and every clone of it.
    pub(crate) unsafe fn compile(
        vocab: *const sys::llama_vocab,
        gbnf: &str,
        root: &str,
    ) -> Result<GrammarSampler, String> {
        if vocab.is_null() {
            return Err("no vocabulary to compile the grammar against".into());
        }
        // SAFETY: a live vocabulary (the caller's guarantee); read-only queries.
        let (vocab_type, n_vocab) = unsafe { (sys::llama_vocab_type(vocab), sys::llama_vocab_n_tokens(vocab)) };
        if vocab_type == sys::LLAMA_VOCAB_TYPE_NONE || n_vocab <= 0 {
            return Err("the model has no text vocabulary, and a grammar constrains text".into());
        }
        if gbnf.len() > MAX_GRAMMAR_BYTES {
            return Err(format!(
                "the grammar is {} bytes long, more than the {MAX_GRAMMAR_BYTES} accepted",
                gbnf.len()
            ));
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
        Ok(GrammarSampler { ptr, vocab, n_vocab, eog: find_eog(vocab, n_vocab), candidates: Vec::new(), broken: None })
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
        self.candidates.extend(ids.iter().zip(logits.iter()).map(|(&id, &logit)| sys::llama_token_data {
            id,
            logit,
            p: 0.0,
        }));
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
    // Only the tests ask it (the session ends a run through `allows` and `mask`): they assert
    // with it whether the grammar is in an accepting state.
    #[cfg(test)]
    pub(crate) fn may_end(&mut self) -> Result<bool, String> {
        match self.eog {
            Some(eog) => self.allows(eog),
            None => Err("the vocabulary has no end-of-generation token".into()),
        }
    }

    /// A deep copy of the rules and the state (llama_sampler_clone), for a branch forking
    /// from a parent: advancing one leaves the other unchanged.
    pub(crate) fn try_clone(&self) -> Result<GrammarSampler, String> {
        self.usable()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: a live sampler; the clone is a new heap object owned by the result.
        if unsafe { shim::pardec_shim_sampler_clone(self.ptr.as_ptr(), &mut ptr) } != 0 {
            return Err(format!("llama.cpp failed while copying the grammar: {}", shim::last_message()));
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| "llama.cpp returned no copy of the grammar".to_string())?;
        Ok(GrammarSampler {
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
        shim::pardec_shim_tokenize(
            vocab,
            text.as_ptr().cast::<c_char>(),
            len,
            tokens.as_mut_ptr(),
            2,
            false,
            true,
            &mut n,
        )
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

#[cfg(test)]
mod tests {
    use super::gbnf;
    use super::*;
    use std::path::PathBuf;

    /// The test model, loaded through the shim as bare llama.cpp pointers; None, with a
    /// message, when the file is missing.
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
                assert_eq!(shim::pardec_shim_model_load(c_path.as_ptr(), &params, &mut ptr), 0);
                assert!(!ptr.is_null(), "the test model loads");
                Some(TestModel { ptr, vocab: sys::llama_model_get_vocab(ptr) })
            }
        }

        fn compile(&self, text: &str, root: &str) -> Result<GrammarSampler, String> {
            // SAFETY: a live vocabulary; every grammar is dropped before the model.
            unsafe { GrammarSampler::compile(self.vocab, text, root) }
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
            assert_eq!(
                unsafe { shim::pardec_shim_grammar_init(self.vocab, text.as_ptr(), root.as_ptr(), &mut ptr) },
                0
            );
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
