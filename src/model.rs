//! Loading a GGUF model once and sharing it.
//!
//! A [`Model`] is a cheap handle (an `Arc`): clone it into as many sessions and threads as
//! needed. Loading checks what llama.cpp would otherwise abort or misbehave on: a missing file,
//! a file that is not GGUF, and architectures whose state cannot be forked and joined.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::backend;
use crate::error::{Error, Result};
use crate::gguf::HeaderError;
pub use crate::llama::Token;
use crate::llama::{LlamaModel, LoadFailure};
use serde::Serialize;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelParams {
    /// Layers to offload to the GPU or the RPC servers (`None`: llama.cpp's default, all
    /// layers when a GPU backend is compiled in or servers are named). Ignored on CPU builds
    /// without servers.
    pub n_gpu_layers: Option<u32>,
    /// RPC servers (`host:port`, each running `pardec rpc-server` or llama.cpp's
    /// `rpc-server`) to put the model's layers on, split as llama.cpp splits them: in
    /// proportion to each device's free memory, servers first, then local GPUs. Empty: this
    /// machine only. Needs a build with the RPC backend ([`crate::rpc`]).
    pub rpc_servers: Vec<String>,
}

pub(crate) struct ModelInner {
    pub(crate) llama: LlamaModel,
    path: PathBuf,
    /// False for models without a tokenizer (`tokenizer.ggml.model = "none"`): llama.cpp
    /// asserts if such a vocabulary is asked to tokenize or render text, so they are driven
    /// by token ids only and their tokens are rendered as `<id>`.
    has_text_vocab: bool,
    architecture: String,
    /// Every end-of-generation token, for callers that must ban them.
    eog_tokens: Vec<Token>,
    /// Taken for writing while a LoRA adapter is loaded or freed, for reading while a context
    /// is created or decodes: llama.cpp reads the model's adapter set then (`adapter.rs`).
    pub(crate) adapter_lock: parking_lot::RwLock<()>,
    /// Tensor shapes from the file's header, for checking adapters.
    tensor_shapes: HashMap<String, Vec<u64>>,
    /// The longest text any one token stands for, in bytes (computed on first use).
    max_token_bytes: once_cell::sync::OnceCell<usize>,
    /// The RPC servers holding some of the layers, if any: their devices, and the relays whose
    /// losses every decode checks.
    remote: Option<crate::rpc::RemoteLink>,
}

/// A loaded GGUF model, shareable between sessions and threads (`Send + Sync`).
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelInner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.inner.path).field("architecture", &self.inner.architecture).finish()
    }
}

/// Reads the file's GGUF header with pardec's own bounded reader before llama.cpp parses it: a
/// missing file, a file that is not GGUF and a malformed or truncated header are refused here,
/// with their own errors, so llama.cpp only ever sees well-formed headers. The tensor shapes
/// are kept for checking adapters.
pub(crate) fn check_gguf_file(path: &Path) -> Result<HashMap<String, Vec<u64>>> {
    let header = crate::gguf::read_header(path).map_err(|e| match e {
        HeaderError::Io(e) => Error::ModelNotFound(format!("{}: {e}", path.display())),
        HeaderError::Magic => Error::NotGguf(format!("{} does not start with the GGUF magic bytes", path.display())),
        HeaderError::Malformed(e) => Error::ModelLoad(format!("{}: malformed GGUF header: {e}", path.display())),
    })?;
    check_what_llama_cpp_asserts_on(&header)
        .map_err(|why| Error::ModelLoad(format!("{}: refused before llama.cpp reads it: {why}", path.display())))?;
    Ok(header.tensors.into_iter().map(|t| (t.name, t.ne)).collect())
}

/// Header values on which llama.cpp stops the process (GGML_ASSERT) instead of refusing the
/// file: found by mutating the real model's header (issue "hostile input"). Everything else
/// is llama.cpp's to check; the tensor data itself has no checksum and is trusted.
fn check_what_llama_cpp_asserts_on(header: &crate::gguf::Header) -> std::result::Result<(), String> {
    use crate::gguf::Value;
    let arch = header.str("general.architecture").unwrap_or("");
    // LLAMA_MAX_LAYERS; 0 trips the n_layer_all assert.
    if let Some(n) = header.metadata.get(&format!("{arch}.block_count")).and_then(Value::as_f64) {
        if !(1.0..=512.0).contains(&n) {
            return Err(format!("{arch}.block_count is {n} (llama.cpp handles 1 to 512 layers)"));
        }
    }
    // A NaN or non-positive epsilon asserts at the first decode.
    for key in ["attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"] {
        let key = format!("{arch}.{key}");
        if let Some(eps) = header.metadata.get(&key).and_then(Value::as_f64) {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(format!("{key} is {eps} (it must be a positive number)"));
            }
        }
    }
    // ggml's CPU buffers assert 32-byte alignment of the mapped tensor data.
    if let Some(align) = header.metadata.get("general.alignment").and_then(Value::as_f64) {
        if !((32.0..=65536.0).contains(&align) && (align as u64).is_power_of_two()) {
            return Err(format!("general.alignment is {align} (llama.cpp needs a power of two from 32)"));
        }
    }
    // Two tokens with one text: llama.cpp asserts id_to_token.size() == token_to_id.size().
    if let Some(Value::Array { repeated: Some((i, text)) }) = header.metadata.get("tokenizer.ggml.tokens") {
        return Err(format!("token {i} ({text:?}) repeats an earlier token of tokenizer.ggml.tokens"));
    }
    Ok(())
}

impl Model {
    /// Loads a GGUF model.
    ///
    /// Errors: [`Error::ModelNotFound`], [`Error::NotGguf`], [`Error::ModelLoad`] (llama.cpp
    /// refused the file, e.g. an unknown architecture), [`Error::UnsupportedModel`] (recurrent
    /// or hybrid models, whose per-sequence state cannot be merged at a join).
    pub fn load(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model> {
        let path = path.as_ref();
        let shapes = check_gguf_file(path)?;
        backend()?;
        let remote = if params.rpc_servers.is_empty() {
            None
        } else {
            Some(crate::rpc::RemoteLink::connect(&params.rpc_servers)?)
        };
        let devices = remote.as_ref().map_or(&[][..], |r| r.devices());
        let loaded = LlamaModel::load(path, params.n_gpu_layers, devices);
        if let Some(remote) = &remote {
            // A server lost during the load: whatever llama.cpp made of it is not the model.
            remote.check()?;
        }
        let llama = loaded.map_err(|e| match e {
            LoadFailure::BadPath => {
                Error::InvalidArgument(format!("model path {} is not UTF-8 or holds a NUL byte", path.display()))
            }
            LoadFailure::Refused => Error::ModelLoad(format!(
                "llama.cpp could not load {}; the architecture may be unknown to this \
                 llama.cpp or the file corrupt (PARDEC_LLAMA_LOG=1 shows llama.cpp's log)",
                path.display()
            )),
            LoadFailure::Threw(why) => {
                Error::ModelLoad(format!("llama.cpp threw while loading {}: {why}", path.display()))
            }
        })?;
        let architecture = llama.meta_str("general.architecture").unwrap_or_else(|| "unknown".to_string());
        if llama.is_recurrent() || llama.is_hybrid() {
            return Err(Error::UnsupportedModel(format!(
                "{} has a {} architecture: its recurrent state cannot be shared by branches \
                 and merged at a join",
                path.display(),
                if llama.is_recurrent() { "recurrent" } else { "hybrid" },
            )));
        }
        let has_text_vocab = llama.meta_str("tokenizer.ggml.model").map(|m| m != "none").unwrap_or(true);
        let eog_tokens = (0..llama.n_vocab()).filter(|&t| llama.is_eog(t)).collect();
        Ok(Model {
            inner: Arc::new(ModelInner {
                llama,
                path: path.to_path_buf(),
                has_text_vocab,
                architecture,
                eog_tokens,
                adapter_lock: parking_lot::RwLock::new(()),
                tensor_shapes: shapes,
                max_token_bytes: once_cell::sync::OnceCell::new(),
                remote,
            }),
        })
    }

    /// `Err(Error::Rpc)` once an RPC server holding some of the model's layers is lost.
    pub(crate) fn check_remote(&self) -> Result<()> {
        self.inner.remote.as_ref().map_or(Ok(()), |r| r.check())
    }

    /// Whether some of the model's layers are on RPC servers.
    pub(crate) fn is_remote(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// The RPC servers holding some of the model's layers, as named at load.
    pub fn rpc_servers(&self) -> Vec<String> {
        self.inner.remote.as_ref().map_or_else(Vec::new, |r| r.servers().map(str::to_string).collect())
    }

    /// The shape (`ne`) of each tensor in the model's file, by name, as read at load.
    pub(crate) fn tensor_shapes(&self) -> &HashMap<String, Vec<u64>> {
        &self.inner.tensor_shapes
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `general.architecture` from the GGUF metadata.
    pub fn architecture(&self) -> &str {
        &self.inner.architecture
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.inner.llama.n_vocab().max(0) as usize
    }

    /// The context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        self.inner.llama.n_ctx_train()
    }

    /// Whether the model has a real tokenizer (text in, text out).
    pub fn has_text_vocab(&self) -> bool {
        self.inner.has_text_vocab
    }

    /// Every end-of-generation token of the vocabulary.
    pub fn eog_tokens(&self) -> &[Token] {
        &self.inner.eog_tokens
    }

    /// The vocabulary's special tokens (each `None` where it has none).
    pub fn special_tokens(&self) -> SpecialTokens {
        let [bos, eos, eot, sep, nl, pad] = self.inner.llama.special_tokens();
        SpecialTokens { bos, eos, eot, sep, nl, pad }
    }

    /// Whether `token` ends a generation (EOS, EOT, ...).
    pub fn is_eog(&self, token: Token) -> bool {
        self.inner.llama.is_eog(token)
    }

    /// Tokenizes text. `add_bos` adds the model's start token where its metadata asks for
    /// one; special tokens written in the text (`<|im_start|>`) are parsed as such.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<Token>> {
        self.tokenize_with(text, add_bos, true)
    }

    /// Tokenizes text as [`Model::tokenize`] does, but with `parse_special` false a special
    /// token's text (`<|im_start|>`) is tokenized as plain text: for text from users, who
    /// must not be able to open a chat turn by typing its marker.
    pub fn tokenize_with(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        if !self.inner.has_text_vocab {
            return Err(Error::InvalidArgument(
                "this model has no tokenizer (tokenizer.ggml.model = none): pass token ids".into(),
            ));
        }
        self.inner.llama.tokenize(text, add_bos, parse_special).map_err(|why| {
            Error::InvalidArgument(format!("llama.cpp could not tokenize {} bytes of text: {}", text.len(), why.0))
        })
    }

    /// The bytes a token renders to (special tokens rendered as their text). Not always
    /// valid UTF-8 on its own: a character can be split over several tokens.
    pub fn token_bytes(&self, token: Token, out: &mut Vec<u8>) {
        if !self.inner.has_text_vocab {
            out.extend_from_slice(format!("<{token}>").as_bytes());
            return;
        }
        self.inner.llama.token_piece(token, out);
    }

    /// The most bytes of text one token covers: a text of `n` bytes needs at least
    /// `n / max_token_bytes()` tokens, which bounds a prompt's length before tokenizing it.
    pub fn max_token_bytes(&self) -> usize {
        *self.inner.max_token_bytes.get_or_init(|| {
            let mut piece = Vec::new();
            let mut longest = 1;
            for token in 0..self.n_vocab() as Token {
                piece.clear();
                self.token_bytes(token, &mut piece);
                longest = longest.max(piece.len());
            }
            longest
        })
    }

    /// Renders tokens to text (invalid UTF-8 sequences replaced).
    pub fn detokenize(&self, tokens: &[Token]) -> String {
        let mut bytes = Vec::new();
        for &t in tokens {
            self.token_bytes(t, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Formats a chat with the model's own template (from its GGUF metadata), ending with the
    /// assistant's turn opened. `messages` are (role, content) pairs.
    pub fn apply_chat_template(&self, messages: &[(&str, &str)]) -> Result<String> {
        if messages.iter().any(|(r, c)| r.contains('\0') || c.contains('\0')) {
            return Err(Error::InvalidArgument("a chat message holds a NUL byte".into()));
        }
        let template = self
            .inner
            .llama
            .chat_template()
            .ok_or_else(|| Error::UnsupportedModel("the model has no chat template in its metadata".into()))?;
        LlamaModel::apply_chat_template(&template, messages).ok_or_else(|| {
            Error::UnsupportedModel("the model's chat template is not one llama.cpp's built-in renderer knows".into())
        })
    }
}

/// A vocabulary's special tokens, as llama.cpp reads them from the GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<Token>,
    /// End of sequence.
    pub eos: Option<Token>,
    /// End of turn (chat models).
    pub eot: Option<Token>,
    /// Separator.
    pub sep: Option<Token>,
    /// Newline.
    pub nl: Option<Token>,
    /// Padding.
    pub pad: Option<Token>,
}
