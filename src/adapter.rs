//! LoRA adapters: loaded once for a model, applied to any of its sessions with a scale.
//!
//! llama.cpp adds `scale · (alpha / r) · B·(A·x)` to every adapted matrix product. It refuses
//! a wrong file with a NULL and a log line; pardec reads the adapter's GGUF header first
//! (`gguf.rs`) and checks what llama.cpp would check, so that each wrong file gets an error
//! that names the key or tensor: missing file, not GGUF, not a LoRA adapter, made for another
//! architecture, or shaped for another model.
//!
//! llama.cpp keeps the set of a model's adapters in the model and reads it whenever a context
//! sizes its compute graph, so loading and freeing an adapter take the model's adapter lock
//! for writing, and context creation and every decode take it for reading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::{self, HeaderError, TensorInfo};
use crate::llama::LlamaAdapter;
use crate::model::Model;

/// A LoRA adapter loaded for one model (`Send + Sync`, cheap to clone). It keeps its model
/// alive; it is freed when the last clone and the last session using it are gone.
#[derive(Clone)]
pub struct Adapter {
    pub(crate) inner: Arc<AdapterInner>,
}

pub(crate) struct AdapterInner {
    // Field order matters: the adapter belongs to the model and is freed first.
    pub(crate) llama: LlamaAdapter,
    pub(crate) model: Model,
    path: PathBuf,
    alpha: f32,
    rank: u64,
    matrices: usize,
}

impl Drop for AdapterInner {
    fn drop(&mut self) {
        let _exclusive = self.model.inner.adapter_lock.write();
        self.llama.free();
    }
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("path", &self.inner.path)
            .field("alpha", &self.inner.alpha)
            .field("rank", &self.inner.rank)
            .finish()
    }
}

impl Adapter {
    /// Loads a GGUF LoRA adapter (`general.type = adapter`, `adapter.type = lora`) for `model`.
    ///
    /// Errors: [`Error::ModelNotFound`] (no such file), [`Error::NotGguf`],
    /// [`Error::NotAdapter`] (a GGUF that is not a LoRA adapter, or a malformed one, or one
    /// that carries new rows for a model tensor: only [`crate::merge()`] applies those),
    /// [`Error::AdapterMismatch`] (another architecture, a tensor the model lacks or of another
    /// shape), [`Error::ModelLoad`] (llama.cpp refused it anyway; `PARDEC_LLAMA_LOG=1` shows why).
    pub fn load(model: &Model, path: impl AsRef<Path>) -> Result<Adapter> {
        let path = path.as_ref();
        let shown = path.display();
        let header = gguf::read_header(path).map_err(|e| match e {
            HeaderError::Io(e) => Error::ModelNotFound(format!("adapter {shown}: {e}")),
            HeaderError::Magic => Error::NotGguf(format!("{shown} does not start with the GGUF magic bytes")),
            HeaderError::Malformed(e) => Error::NotAdapter(format!("{shown}: malformed GGUF header: {e}")),
        })?;
        let shape = check_header(&header, model).map_err(|e| match e {
            Refusal::NotAdapter(m) => Error::NotAdapter(format!("{shown}: {m}")),
            Refusal::Mismatch(m) => Error::AdapterMismatch(format!("{shown}: {m}")),
        })?;
        let llama = {
            let _exclusive = model.inner.adapter_lock.write();
            LlamaAdapter::load(&model.inner.llama, path)
        };
        let llama = llama.ok_or_else(|| {
            Error::ModelLoad(format!("llama.cpp refused the adapter {shown} (PARDEC_LLAMA_LOG=1 shows its log)"))
        })?;
        Ok(Adapter {
            inner: Arc::new(AdapterInner {
                llama,
                model: model.clone(),
                path: path.to_path_buf(),
                alpha: shape.alpha,
                rank: shape.rank,
                matrices: shape.matrices,
            }),
        })
    }

    /// The file the adapter was loaded from, as given to [`Adapter::load`] (not canonicalized).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `adapter.lora.alpha` (0: llama.cpp then scales by the session's scale alone).
    pub fn alpha(&self) -> f32 {
        self.inner.alpha
    }

    /// The rank r of its first matrix pair.
    pub fn rank(&self) -> u64 {
        self.inner.rank
    }

    /// Adapted matrices (pairs of `lora_a` / `lora_b`).
    pub fn matrices(&self) -> usize {
        self.inner.matrices
    }

    /// Whether this adapter was loaded for `model` (the same loaded model, not merely the same
    /// file): llama.cpp's adapter points into its model's tensors.
    pub fn belongs_to(&self, model: &Model) -> bool {
        Arc::ptr_eq(&self.inner.model.inner, &model.inner)
    }
}

pub(crate) enum Refusal {
    NotAdapter(String),
    Mismatch(String),
}

struct Shape {
    alpha: f32,
    rank: u64,
    matrices: usize,
}

/// What llama.cpp's `llama_adapter_lora_init_impl` checks, checked here first.
fn check_header(header: &gguf::Header, model: &Model) -> std::result::Result<Shape, Refusal> {
    let general_type = header.str("general.type").unwrap_or("");
    if general_type != "adapter" {
        return Err(Refusal::NotAdapter(format!("general.type is {general_type:?}, not \"adapter\" (is it a model?)")));
    }
    let adapter_type = header.str("adapter.type").unwrap_or("");
    if adapter_type != "lora" {
        return Err(Refusal::NotAdapter(format!("adapter.type is {adapter_type:?}, not \"lora\"")));
    }
    let arch = header.str("general.architecture").unwrap_or("");
    if arch != model.architecture() {
        return Err(Refusal::Mismatch(format!(
            "made for architecture {arch:?}, the model is {:?}",
            model.architecture()
        )));
    }
    let alpha = match header.metadata.get("adapter.lora.alpha") {
        None => 0.0,
        // llama.cpp reads it with gguf_get_val_f32, which stops the process on another type.
        Some(v) => v
            .as_f32()
            .filter(|a| a.is_finite())
            .ok_or_else(|| Refusal::NotAdapter("adapter.lora.alpha is not a finite float32".into()))?,
    };
    let pairs = pair_tensors(&header.tensors, false)?;
    if pairs.is_empty() {
        return Err(Refusal::NotAdapter("it holds no lora_a/lora_b tensor pairs".into()));
    }
    let model_shapes = model.tensor_shapes();
    let mut rank = None;
    for (base, (a, b)) in &pairs {
        let Some(w) = model_shapes.get(base) else {
            return Err(Refusal::Mismatch(format!("the model has no tensor {base:?}")));
        };
        check_pair(base, w, a, b)?;
        rank.get_or_insert(b.ne[0]);
    }
    Ok(Shape { alpha, rank: rank.unwrap_or(0), matrices: pairs.len() })
}

/// The suffixes of an adapter's new rows for a model tensor `T` (`T.row_delta`, `T.row_ids`),
/// which only `pardec merge` applies (see [`crate::merge()`]).
pub(crate) const ROW_DELTA: &str = ".row_delta";
pub(crate) const ROW_IDS: &str = ".row_ids";

/// `T` of a `T.row_delta` or `T.row_ids` tensor.
pub(crate) fn row_tensor_base(name: &str) -> Option<&str> {
    name.strip_suffix(ROW_DELTA).or_else(|| name.strip_suffix(ROW_IDS))
}

/// Groups `X.lora_a` with `X.lora_b` by base name `X`. Norm vectors are skipped (llama.cpp
/// ignores them); any other name is refused, as llama.cpp refuses it. Row deltas
/// (`T.row_delta`, `T.row_ids`) are skipped when `row_deltas` (a merge, which applies them) and
/// otherwise refused before any other tensor: llama.cpp would refuse them with "unexpected
/// suffix", and on a model whose output shares the embedding no runtime adapter can change
/// those rows.
pub(crate) fn pair_tensors(
    tensors: &[TensorInfo],
    row_deltas: bool,
) -> std::result::Result<HashMap<String, (TensorInfo, TensorInfo)>, Refusal> {
    if !row_deltas {
        let mut rows: Vec<&str> = tensors.iter().filter_map(|t| row_tensor_base(&t.name)).collect();
        if !rows.is_empty() {
            rows.sort_unstable();
            rows.dedup();
            return Err(Refusal::NotAdapter(format!(
                "it carries new token rows for {} that llama.cpp cannot apply at run time: write it \
                 into the model with `pardec merge --model MODEL --lora ADAPTER --out MERGED` \
                 (pardec::merge) and use MERGED without the adapter",
                rows.join(" and ")
            )));
        }
    }
    let mut halves: HashMap<String, (Option<TensorInfo>, Option<TensorInfo>)> = HashMap::new();
    for t in tensors {
        if let Some(base) = t.name.strip_suffix(".lora_a") {
            halves.entry(base.to_string()).or_default().0 = Some(t.clone());
        } else if let Some(base) = t.name.strip_suffix(".lora_b") {
            halves.entry(base.to_string()).or_default().1 = Some(t.clone());
        } else if !(t.name.ends_with("_norm.weight") || (row_deltas && row_tensor_base(&t.name).is_some())) {
            return Err(Refusal::NotAdapter(format!("tensor {:?} is neither .lora_a nor .lora_b", t.name)));
        }
    }
    halves
        .into_iter()
        .map(|(base, pair)| match pair {
            (Some(a), Some(b)) => Ok((base, (a, b))),
            _ => Err(Refusal::NotAdapter(format!("tensor {base:?} lacks its lora_a or lora_b half"))),
        })
        .collect()
}

/// The shape rules of llama.cpp: `W` has `ne = [n_in, n_out]`, `A` `[n_in, r]` and `B`
/// `[r, n_out]`; for the token embedding (a lookup, not a product) A and B swap roles.
pub(crate) fn check_pair(base: &str, w: &[u64], a: &TensorInfo, b: &TensorInfo) -> std::result::Result<(), Refusal> {
    let dim = |ne: &[u64], i: usize| ne.get(i).copied().unwrap_or(1);
    let shape = |ne: &[u64]| format!("{ne:?}");
    let fits = if base.ends_with("token_embd.weight") {
        dim(w, 0) == dim(&b.ne, 1) && dim(w, 1) == dim(&a.ne, 1)
    } else {
        dim(w, 0) == dim(&a.ne, 0) && dim(w, 1) == dim(&b.ne, 1) && dim(&a.ne, 1) == dim(&b.ne, 0)
    };
    if fits {
        return Ok(());
    }
    Err(Refusal::Mismatch(format!(
        "{base}: lora_a {} and lora_b {} do not fit the model's {} (another model, or an \
         untransposed lora_a?)",
        shape(&a.ne),
        shape(&b.ne),
        shape(w)
    )))
}
