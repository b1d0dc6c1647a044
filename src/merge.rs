//! Writing LoRA adapters into a model's weights (`pardec merge`).
//!
//! llama.cpp applies a LoRA adapter at run time as extra graph nodes: every adapted matrix
//! product `W·x` becomes `W·x + s·B·(A·x)` in every decode step (`build_lora_mm` in
//! llama-graph.cpp). On a small CPU that costs a quarter to a third of each step for an
//! adapter on all seven projections of every layer. Written into the weights once,
//! `W' = W + s·B·A`, the adapter costs nothing per step.
//!
//! The merge computes exactly what llama.cpp's runtime application computes, adapter by
//! adapter: `s = scale · alpha / r` when the adapter's `adapter.lora.alpha` is non-zero, else
//! `scale` (`llama_adapter_lora_weight::get_scale`), with `r = lora_b.ne[0]`; `lora_a` has
//! ggml `ne = [n_in, r]` and `lora_b` `ne = [r, n_out]`. It accepts what llama.cpp's adapter
//! loader accepts and refuses, with a specific [`Error`] and before writing anything, what it
//! refuses; three further cases that llama.cpp would load but that a merge cannot reproduce
//! are refused too: a LoRA of `token_embd.weight` (a lookup with A and B swapped, which on a
//! model whose output shares the embedding would also change the output projection), an
//! aLoRA adapter (active only after its invocation tokens), and a matrix with a separate
//! scale tensor (`X.scale`, multiplied in before the LoRA term is added). `*_norm.weight`
//! tensors in an adapter are ignored, as llama.cpp ignores them ([`MergeSummary::ignored`]
//! lists them).
//!
//! How: ggml's own GGUF reader (`gguf_init_from_file`, headers only, after pardec's bounded
//! reader has checked both files) gives each tensor's type and place; each adapted matrix is
//! read, dequantized to f32 with ggml's `to_float`, the products added in f32, and the
//! result written back. Every other tensor is copied byte for byte. In a format of 8 bits or
//! more a weight (F32, F16, BF16, Q8_0) each merged matrix is written back in its own type
//! (`ggml_quantize_chunk`, what llama.cpp's quantizer calls), so the file keeps the base's
//! exact tensor types. Otherwise, or when a format is named, the merged matrices are staged
//! as F32 in a temporary GGUF that llama.cpp's quantizer ([`crate::convert()`]) then writes
//! in the target format (Q8_0 by default).
//!
//! Why not the base's own 4-bit type: an adapter's change to a weight is far smaller than a
//! 4-bit step, so re-quantizing the merged matrix rounds most of it away. Measured on the
//! default model (SmolLM2-135M Q4_1) with the shipped adapter: merged back into Q4_1, the first
//! logits differ from the runtime adapter's by up to 16.2 (the base without the adapter: 17.9)
//! and the greedy answer is the base's; merged into Q8_0, by 1.4 (the kernels' own difference
//! between Q8_0 and F16 weights is 1.3) with the same 32 greedy tokens; into F16, by 0.05
//! against the adapter on the same F16 weights.
//!
//! # New rows (`T.row_delta`, `T.row_ids`)
//!
//! An adapter may also carry new values for some rows of a model matrix `T`, which only a merge
//! applies: in practice `token_embd.weight` (and, on a model with a separate output
//! projection, `output.weight`), for tokens that the base model never trained. SmolLM2's unused
//! control tokens, for one, all share the same embedding row, and the model's output shares
//! `token_embd.weight`, so without their own rows a model can neither tell them apart nor
//! choose one over another. llama.cpp cannot apply that at run time: a LoRA of
//! `token_embd.weight` is a lookup, and on such a model the output projection would look up
//! the same pair by name with the embedding's swapped shapes. So an adapter with row deltas is
//! refused at run time ([`crate::Adapter::load`]: write it into the model with `pardec merge`).
//! For a tensor `T` of the model the pair is:
//!
//! - `T.row_delta`: F32 (or F16), ggml `ne = [n_embd, k]`: k rows of `n_embd` (numpy shape
//!   `(k, n_embd)`), where `T` is a matrix (2-D) with `ne[0] = n_embd`;
//! - `T.row_ids`: I32, `ne = [k]`: distinct ids in `0..n_rows(T)` (`T`'s `ne[1]`);
//!
//! meaning `T[row_ids[i], :] += scale · row_delta[i, :]`, with the adapter's merge scale
//! (`--lora A:SCALE`) alone, not `alpha / r`. On a model whose output shares the embedding the
//! rows change both the tokens' input embeddings and their logits. Each half without the
//! other, another type or shape, an id out of range or listed twice, or a `T` the model lacks
//! is refused before anything is written ([`MergeSummary::rows`] counts the rows changed). `T`
//! is merged as any adapted matrix is: read as f32, changed, written in its own type or, under
//! 8 bits a weight, staged as F32 for the quantizer. An adapter may hold row deltas alone.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::adapter::{check_pair, pair_tensors, row_tensor_base, Refusal, ROW_DELTA, ROW_IDS};
use crate::convert::WeightFormat;
use crate::error::{Error, Result};
use crate::gguf::{self, HeaderError};

/// The key of an aLoRA adapter's invocation tokens (`LLM_KV_ADAPTER_ALORA_INVOCATION_TOKENS`).
const ALORA_KEY: &str = "adapter.alora.invocation_tokens";

/// What [`merge`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergeSummary {
    /// Matrices of the model that a LoRA pair changed (a matrix adapted by two adapters counts
    /// once).
    pub matrices: usize,
    /// Rows of model matrices that the adapters' row deltas (`T.row_delta`, see the module
    /// documentation) changed, over all such matrices (a row changed by two adapters counts
    /// once).
    pub rows: usize,
    /// Norm-vector tensors of the adapters (`*_norm.weight`) left out, as llama.cpp leaves
    /// them out when it applies an adapter: "adapter: tensor" for each.
    pub ignored: Vec<String>,
    /// The format llama.cpp's quantizer wrote the model in; `None`: every tensor kept its type.
    pub format: Option<WeightFormat>,
}

/// Writes the model `base` with the LoRA `adapters` (each a GGUF adapter file and the scale
/// it would be applied at, as in `SessionParams::adapters`) merged into its weights, at
/// `output`: the same model as `base` with those adapters applied at run time, at no cost
/// per decode step.
///
/// An adapter may also carry new rows for a matrix `T` of the model (in practice
/// `token_embd.weight`, and `output.weight` where the model has its own), which llama.cpp
/// cannot apply at run time ([`crate::Adapter::load`] refuses such an adapter): `T.row_delta`
/// (F32 or F16, ggml `ne = [n_embd, k]`, numpy shape `(k, n_embd)`) and `T.row_ids` (I32,
/// `ne = [k]`, distinct ids below `T`'s row count) mean `T[row_ids[i], :] += scale ·
/// row_delta[i, :]`, with the adapter's scale alone (not `alpha / r`); [`MergeSummary::rows`]
/// counts the rows changed.
///
/// `format`: `None` keeps every tensor's own type where the merged matrices are in a type of 8
/// bits or more a weight (F32, F16, BF16, Q8_0: they are re-quantized to it, everything else is
/// copied unchanged), and writes the model in Q8_0 otherwise ([`MergeSummary::format`] says
/// which): re-quantized to a 4-bit type, most of an adapter's change rounds away (see the module
/// documentation). `Some(f)` writes the model in `f` through llama.cpp's quantizer, as
/// [`crate::convert()`] does; F16 keeps the merge almost exactly, Q4_0 and Q4_1 lose most of
/// it. `n_threads` (0: all cores) computes the products and quantizes.
///
/// The file is written beside `output` under a temporary name and renamed when complete, so
/// `output` is never a partial file; an existing `output` is replaced.
///
/// Errors, all before anything is written: for `base` those of [`crate::Model::load`]'s
/// header checks; for an adapter [`Error::ModelNotFound`], [`Error::NotGguf`],
/// [`Error::NotAdapter`] (not a LoRA adapter, a pair missing a half, a stray tensor, an alpha
/// that is not a finite float32, row deltas of another type, a row id listed twice),
/// [`Error::AdapterMismatch`] (another architecture, a tensor the model lacks or of another
/// shape, a row id beyond the model's rows); [`Error::InvalidArgument`] for a non-finite scale, an
/// output that is the base or an adapter or has no folder, and the cases a merge cannot
/// reproduce (see the module documentation); [`Error::ModelLoad`] for tensor data that ends
/// beyond its file.
pub fn merge(
    base: &Path,
    adapters: &[(PathBuf, f32)],
    output: &Path,
    format: Option<WeightFormat>,
    n_threads: u32,
) -> Result<MergeSummary> {
    crate::backend::backend()?;
    // pardec's bounded header reader first: ggml's reader then only sees well-formed headers.
    let base_shapes = crate::model::check_gguf_file(base)?;
    if adapters.is_empty() {
        return Err(Error::InvalidArgument("merge: no adapter to merge".into()));
    }
    let same_file = |p: &Path| p.canonicalize().ok().is_some_and(|p| output.canonicalize().ok() == Some(p));
    if same_file(base) {
        return Err(Error::InvalidArgument(format!("merge: {} is both the base model and the output", base.display())));
    }
    if let Some((a, _)) = adapters.iter().find(|(a, _)| same_file(a)) {
        return Err(Error::InvalidArgument(format!("merge: {} is both an adapter and the output", a.display())));
    }
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "merge: no folder {} to write {} in",
            dir.display(),
            output.display()
        )));
    }

    let mut base_gguf = Gguf::open(base)
        .ok_or_else(|| Error::ModelLoad(format!("{}: ggml's GGUF reader refused it", base.display())))?;
    if base_gguf.str("general.type").as_deref() == Some("adapter") {
        return Err(Error::InvalidArgument(format!(
            "merge: {} is a LoRA adapter, not a model (the base model comes first)",
            base.display()
        )));
    }
    let arch = base_gguf.str("general.architecture").unwrap_or_default();
    let base_file = open_file(base)?;
    let base_tensors = base_gguf
        .tensors(file_len(&base_file, base)?)
        .map_err(|m| Error::ModelLoad(format!("{}: {m}", base.display())))?;
    let base_index: HashMap<&str, &Tensor> = base_tensors.iter().map(|t| (t.name.as_str(), t)).collect();

    let mut summary = MergeSummary::default();
    let mut files = Vec::with_capacity(adapters.len());
    let mut plan: HashMap<String, Change> = HashMap::new();
    let mut rows_changed: HashSet<(String, usize)> = HashSet::new();
    for (i, (path, scale)) in adapters.iter().enumerate() {
        let checked = check_adapter(path, *scale, &arch, &base_shapes, &base_index)?;
        summary.ignored.extend(checked.ignored.iter().map(|t| format!("{}: {t}", path.display())));
        for (name, mut pair) in checked.pairs {
            pair.adapter = i;
            plan.entry(name).or_default().pairs.push(pair);
        }
        for (name, mut rows) in checked.rows {
            rows.adapter = i;
            rows_changed.extend(rows.ids.iter().map(|&id| (name.clone(), id)));
            plan.entry(name).or_default().rows.push(rows);
        }
        files.push(checked.file);
    }
    summary.matrices = plan.values().filter(|c| !c.pairs.is_empty()).count();
    summary.rows = rows_changed.len();
    let format = match format {
        None if plan.keys().any(|name| !holds_change(base_index[name.as_str()].ty)) => Some(WeightFormat::Q8_0),
        format => format,
    };
    summary.format = format;

    let threads = match n_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    let job = Job { base_file, adapters: files, plan: &plan, threads };
    let partial = sibling(output, "partial");
    let written = match format {
        None => job.write(&mut base_gguf, &base_tensors, false, &partial).and_then(|()| {
            std::fs::rename(&partial, output)
                .map_err(|e| Error::InvalidArgument(format!("merge: cannot write {}: {e}", output.display())))
        }),
        Some(format) => {
            // Merged matrices as F32 beside the output, then llama.cpp's quantizer (which
            // copies tensors already in the target type and re-quantizes the rest).
            let staged = sibling(output, "f32-merge.partial");
            let written = job
                .write(&mut base_gguf, &base_tensors, true, &staged)
                .and_then(|()| crate::convert::convert(&staged, output, format, n_threads));
            let _ = std::fs::remove_file(&staged);
            written
        }
    };
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map(|()| summary)
}

/// `output`'s hidden sibling `.NAME.<tag>-<pid>`.
fn sibling(output: &Path, tag: &str) -> PathBuf {
    let name = output.file_name().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::ModelNotFound(format!("{}: {e}", path.display())))
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata().map(|m| m.len()).map_err(|e| Error::ModelNotFound(format!("{}: {e}", path.display())))
}

/// One adapted matrix's LoRA pair from one adapter.
struct Pair {
    adapter: usize,
    a: Tensor,
    b: Tensor,
    rank: usize,
    /// The effective scale, `scale · alpha / r` or `scale`.
    scale: f32,
}

/// One adapter's new rows for one matrix: `T[ids[i], :] += scale · delta[i, :]`.
struct Rows {
    adapter: usize,
    /// `T.row_delta`, ne = [n_embd, ids.len()].
    delta: Tensor,
    ids: Vec<usize>,
    scale: f32,
}

/// What the adapters change in one matrix of the model.
#[derive(Default)]
struct Change {
    pairs: Vec<Pair>,
    rows: Vec<Rows>,
}

struct CheckedAdapter {
    file: File,
    pairs: Vec<(String, Pair)>,
    rows: Vec<(String, Rows)>,
    ignored: Vec<String>,
}

/// What llama.cpp's `llama_adapter_lora_init_impl` checks, and what a merge cannot reproduce.
fn check_adapter(
    path: &Path,
    scale: f32,
    arch: &str,
    base_shapes: &HashMap<String, Vec<u64>>,
    base: &HashMap<&str, &Tensor>,
) -> Result<CheckedAdapter> {
    let shown = path.display();
    if !scale.is_finite() {
        return Err(Error::InvalidArgument(format!("merge: the scale of {shown} is {scale}, not a finite number")));
    }
    let header = gguf::read_header(path).map_err(|e| match e {
        HeaderError::Io(e) => Error::ModelNotFound(format!("adapter {shown}: {e}")),
        HeaderError::Magic => Error::NotGguf(format!("{shown} does not start with the GGUF magic bytes")),
        HeaderError::Malformed(e) => Error::NotAdapter(format!("{shown}: malformed GGUF header: {e}")),
    })?;
    let not_adapter = |m: String| Error::NotAdapter(format!("{shown}: {m}"));
    let mismatch = |m: String| Error::AdapterMismatch(format!("{shown}: {m}"));
    let general_type = header.str("general.type").unwrap_or("");
    if general_type != "adapter" {
        return Err(not_adapter(format!("general.type is {general_type:?}, not \"adapter\" (is it a model?)")));
    }
    let adapter_type = header.str("adapter.type").unwrap_or("");
    if adapter_type != "lora" {
        return Err(not_adapter(format!("adapter.type is {adapter_type:?}, not \"lora\"")));
    }
    let adapter_arch = header.str("general.architecture").unwrap_or("");
    if adapter_arch != arch {
        return Err(mismatch(format!("made for architecture {adapter_arch:?}, the model is {arch:?}")));
    }
    if header.metadata.contains_key(ALORA_KEY) {
        return Err(Error::InvalidArgument(format!(
            "merge: {shown} is an aLoRA adapter ({ALORA_KEY}): it acts only after its invocation \
             tokens, which weights cannot express; apply it at run time"
        )));
    }
    let refused = |r: Refusal| match r {
        Refusal::NotAdapter(m) => not_adapter(m),
        Refusal::Mismatch(m) => mismatch(m),
    };
    let pairs = pair_tensors(&header.tensors, true).map_err(refused)?;
    let row_names = check_row_headers(&header.tensors, base_shapes).map_err(refused)?;
    if pairs.is_empty() && row_names.is_empty() {
        return Err(not_adapter("it holds no lora_a/lora_b tensor pairs".into()));
    }
    let ignored: Vec<String> = header
        .tensors
        .iter()
        .filter(|t| !t.name.ends_with(".lora_a") && !t.name.ends_with(".lora_b"))
        .filter(|t| row_tensor_base(&t.name).is_none())
        .map(|t| t.name.clone())
        .collect();
    let mut names: Vec<&String> = pairs.keys().collect();
    names.sort();
    for name in &names {
        let (a, b) = &pairs[*name];
        if name.ends_with("token_embd.weight") {
            return Err(Error::InvalidArgument(format!(
                "merge: {shown} adapts {name}, a lookup that llama.cpp adapts with A and B swapped \
                 (and on a model whose output shares the embedding, not the output projection): \
                 merging it is not supported; apply it at run time"
            )));
        }
        let Some(w) = base_shapes.get(*name) else {
            return Err(mismatch(format!("the model has no tensor {name:?}")));
        };
        let matrix = |ne: &[u64]| ne.len() <= 2;
        if w.len() != 2 || !matrix(&a.ne) || !matrix(&b.ne) {
            return Err(Error::InvalidArgument(format!(
                "merge: {shown}: {name} {w:?} with lora_a {:?} and lora_b {:?}: only matrices (2-D) \
                 are merged",
                a.ne, b.ne
            )));
        }
        check_pair(name, w, a, b).map_err(refused)?;
        if let Some(stem) = name.strip_suffix(".weight") {
            if base_shapes.contains_key(&format!("{stem}.scale")) {
                return Err(Error::InvalidArgument(format!(
                    "merge: the model scales {name} by {stem}.scale before llama.cpp adds the LoRA \
                     term, which a merged weight cannot express; apply {shown} at run time"
                )));
            }
        }
        if b.ne[0] == 0 {
            return Err(not_adapter(format!("{name} has rank 0")));
        }
    }

    // ggml's reader for the tensor types and places (its header checks passed above).
    let c = Gguf::open(path).ok_or_else(|| not_adapter("ggml's GGUF reader refused it".into()))?;
    // llama.cpp reads alpha with gguf_get_val_f32, which stops the process on another type.
    let alpha = match c.find_key("adapter.lora.alpha") {
        None => 0.0,
        // SAFETY: a key id of this context; the type is checked before the typed read.
        Some(id) if unsafe { sys::gguf_get_kv_type(c.ptr(), id) } == sys::GGUF_TYPE_FLOAT32 => unsafe {
            sys::gguf_get_val_f32(c.ptr(), id)
        },
        Some(_) => return Err(not_adapter("adapter.lora.alpha is not a float32".into())),
    };
    if !alpha.is_finite() {
        return Err(not_adapter(format!("adapter.lora.alpha is {alpha}")));
    }
    let mut file = open_file(path)?;
    let tensors = c.tensors(file_len(&file, path)?).map_err(|m| Error::ModelLoad(format!("{shown}: {m}")))?;
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let half = |suffix: &str| {
            by_name
                .get(format!("{name}.{suffix}").as_str())
                .copied()
                .ok_or_else(|| Error::Internal(format!("{shown}: ggml's reader does not list {name}.{suffix}")))
        };
        let (a, b) = (half("lora_a")?, half("lora_b")?);
        for t in [a, b] {
            if !readable(t.ty) {
                return Err(not_adapter(format!(
                    "{} has type {}, which ggml cannot read as f32",
                    t.name,
                    type_name(t.ty)
                )));
            }
        }
        let w = base[name.as_str()];
        if !readable(w.ty) {
            return Err(Error::InvalidArgument(format!(
                "merge: the model's {name} has type {}, which ggml cannot read as f32",
                type_name(w.ty)
            )));
        }
        // The rank is lora_b's ne[0], as llama.cpp's get_scale reads it (check_pair made it
        // equal to lora_a's ne[1]); the expression is get_scale's, in f32.
        let rank = b.ne[0] as usize;
        let s = if alpha != 0.0 { scale * alpha / rank as f32 } else { scale };
        if !s.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "merge: {shown}: scale {scale} · alpha {alpha} / rank {rank} is {s}, not a finite number"
            )));
        }
        out.push((name.clone(), Pair { adapter: 0, a: a.clone(), b: b.clone(), rank, scale: s }));
    }
    let mut rows = Vec::with_capacity(row_names.len());
    for name in row_names {
        let listed = |suffix: &str| {
            by_name
                .get(format!("{name}{suffix}").as_str())
                .copied()
                .ok_or_else(|| Error::Internal(format!("{shown}: ggml's reader does not list {name}{suffix}")))
        };
        let (delta, ids) = (listed(ROW_DELTA)?, listed(ROW_IDS)?);
        if !matches!(delta.ty, sys::GGML_TYPE_F32 | sys::GGML_TYPE_F16) {
            return Err(not_adapter(format!("{} has type {}, not F32 or F16", delta.name, type_name(delta.ty))));
        }
        if ids.ty != sys::GGML_TYPE_I32 {
            return Err(not_adapter(format!("{} has type {}, not I32", ids.name, type_name(ids.ty))));
        }
        let w = base[name.as_str()];
        if !readable(w.ty) {
            return Err(Error::InvalidArgument(format!(
                "merge: the model's {name} has type {}, which ggml cannot read as f32",
                type_name(w.ty)
            )));
        }
        let n_rows = w.ne[1] as usize;
        let mut seen = HashSet::new();
        let mut list = Vec::with_capacity(ids.elements());
        for raw in read(&mut file, ids)?.chunks_exact(4) {
            let id = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let Some(id) = usize::try_from(id).ok().filter(|&id| id < n_rows) else {
                return Err(mismatch(format!(
                    "{} holds the row id {id}, outside the model's {name} (rows 0..{n_rows})",
                    ids.name
                )));
            };
            if !seen.insert(id) {
                return Err(not_adapter(format!("{} holds the row id {id} twice", ids.name)));
            }
            list.push(id);
        }
        rows.push((name, Rows { adapter: 0, delta: delta.clone(), ids: list, scale }));
    }
    Ok(CheckedAdapter { file, pairs: out, rows, ignored })
}

/// The names `T` of an adapter's row deltas (`T.row_delta` with `T.row_ids`, see the module
/// documentation), sorted, once their shapes are checked against each other and the model's.
fn check_row_headers(
    tensors: &[gguf::TensorInfo],
    base_shapes: &HashMap<String, Vec<u64>>,
) -> std::result::Result<Vec<String>, Refusal> {
    let mut halves: HashMap<&str, (Option<&gguf::TensorInfo>, Option<&gguf::TensorInfo>)> = HashMap::new();
    for t in tensors {
        if let Some(name) = t.name.strip_suffix(ROW_DELTA) {
            halves.entry(name).or_default().0 = Some(t);
        } else if let Some(name) = t.name.strip_suffix(ROW_IDS) {
            halves.entry(name).or_default().1 = Some(t);
        }
    }
    let mut names: Vec<&str> = halves.keys().copied().collect();
    names.sort_unstable();
    let dim = |ne: &[u64], i: usize| ne.get(i).copied().unwrap_or(1);
    let beyond = |ne: &[u64], n: usize| ne.iter().skip(n).any(|&d| d != 1);
    for name in &names {
        let (delta, ids) = match halves[name] {
            (Some(delta), Some(ids)) => (delta, ids),
            (Some(_), None) => {
                return Err(Refusal::NotAdapter(format!("{name}{ROW_DELTA} has no {name}{ROW_IDS} beside it")))
            }
            (None, _) => {
                return Err(Refusal::NotAdapter(format!("{name}{ROW_IDS} has no {name}{ROW_DELTA} beside it")))
            }
        };
        let Some(w) = base_shapes.get(*name) else {
            return Err(Refusal::Mismatch(format!("the model has no tensor {name:?} for {name}{ROW_DELTA}")));
        };
        if w.len() != 2 {
            return Err(Refusal::Mismatch(format!(
                "the model's {name} {w:?} is not a matrix: only rows of a matrix (2-D) are changed"
            )));
        }
        let k = dim(&delta.ne, 1);
        if dim(&delta.ne, 0) != w[0] || beyond(&delta.ne, 2) {
            return Err(Refusal::Mismatch(format!(
                "{name}{ROW_DELTA} {:?} does not fit the model's {name} {w:?}: rows of {} expected (ne \
                 [{}, k])",
                delta.ne, w[0], w[0]
            )));
        }
        if k == 0 {
            return Err(Refusal::NotAdapter(format!("{name}{ROW_DELTA} {:?} holds no rows", delta.ne)));
        }
        if dim(&ids.ne, 0) != k || beyond(&ids.ne, 1) {
            return Err(Refusal::NotAdapter(format!(
                "{name}{ROW_IDS} {:?} does not hold one id for each of the {k} rows of {name}{ROW_DELTA} {:?}",
                ids.ne, delta.ne
            )));
        }
    }
    Ok(names.into_iter().map(String::from).collect())
}

/// A tensor as ggml's GGUF reader places it.
#[derive(Clone)]
struct Tensor {
    name: String,
    ty: sys::ggml_type,
    /// ggml's ne (1 past the tensor's dimensions): [n_per_row, n_rows, 1, 1] for a matrix.
    ne: [u64; 4],
    /// From the start of the file.
    offset: u64,
    nbytes: u64,
}

impl Tensor {
    fn elements(&self) -> usize {
        self.ne.iter().product::<u64>() as usize
    }
}

/// The merge's inputs, ready to write.
struct Job<'a> {
    base_file: File,
    adapters: Vec<File>,
    plan: &'a HashMap<String, Change>,
    threads: usize,
}

impl Job<'_> {
    /// Writes the base's metadata and every tensor, the planned ones merged: in their own
    /// types, or as F32 when `as_f32`.
    fn write(mut self, base: &mut Gguf, tensors: &[Tensor], as_f32: bool, dest: &Path) -> Result<()> {
        if as_f32 {
            for name in self.plan.keys() {
                let c_name = std::ffi::CString::new(name.as_str())
                    .map_err(|_| Error::Internal(format!("tensor name {name:?} holds a NUL")))?;
                // SAFETY: a tensor of this context (ggml's reader listed it); F32's block is 1,
                // so every row length fits it.
                unsafe { sys::gguf_set_tensor_type(base.ptr.as_ptr(), c_name.as_ptr(), sys::GGML_TYPE_F32) };
            }
        }
        // SAFETY: the buffer has the size ggml reports for the same context.
        let meta = unsafe {
            let mut meta = vec![0u8; sys::gguf_get_meta_size(base.ptr())];
            sys::gguf_get_meta_data(base.ptr(), meta.as_mut_ptr().cast());
            meta
        };
        // SAFETY: plain getters of a live context.
        let alignment = unsafe { sys::gguf_get_alignment(base.ptr()) }.max(1) as u64;
        let cannot_write =
            |e: std::io::Error| Error::InvalidArgument(format!("merge: cannot write {}: {e}", dest.display()));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(dest).map_err(cannot_write)?);
        out.write_all(&meta).map_err(cannot_write)?;
        let mut pos = meta.len() as u64;
        for (i, t) in tensors.iter().enumerate() {
            // SAFETY: i < gguf_get_n_tensors: `tensors` lists the context's tensors in order.
            let expected = meta.len() as u64 + unsafe { sys::gguf_get_tensor_offset(base.ptr(), i as i64) } as u64;
            if pos != expected {
                return Err(Error::Internal(format!("merge: {} would start at {pos}, not {expected}", t.name)));
            }
            match self.plan.get(&t.name) {
                Some(change) => {
                    let bytes = self.merged(t, change, as_f32)?;
                    out.write_all(&bytes).map_err(cannot_write)?;
                    pos += bytes.len() as u64;
                }
                None => {
                    self.base_file
                        .seek(SeekFrom::Start(t.offset))
                        .map_err(|e| Error::ModelLoad(format!("reading {}: {e}", t.name)))?;
                    let copied =
                        std::io::copy(&mut (&mut self.base_file).take(t.nbytes), &mut out).map_err(cannot_write)?;
                    if copied != t.nbytes {
                        return Err(Error::ModelLoad(format!("the model's file ends inside {}", t.name)));
                    }
                    pos += copied;
                }
            }
            let padded = pos.div_ceil(alignment) * alignment;
            out.write_all(&vec![0u8; (padded - pos) as usize]).map_err(cannot_write)?;
            pos = padded;
        }
        out.flush().map_err(cannot_write)
    }

    /// `W + Σ s·B·A`, then the new rows `W[id] += s·delta`, in f32, then in W's own type or as
    /// f32.
    fn merged(&mut self, w: &Tensor, change: &Change, as_f32: bool) -> Result<Vec<u8>> {
        let (n_in, n_out) = (w.ne[0] as usize, w.ne[1] as usize);
        let mut weights = to_f32(w, &read(&mut self.base_file, w)?);
        for p in &change.pairs {
            let file = &mut self.adapters[p.adapter];
            let a = to_f32(&p.a, &read(file, &p.a)?);
            let b = to_f32(&p.b, &read(file, &p.b)?);
            add_product(&mut weights, n_in, &a, &b, p.rank, p.scale, self.threads);
        }
        for r in &change.rows {
            let delta = to_f32(&r.delta, &read(&mut self.adapters[r.adapter], &r.delta)?);
            // check_row_headers made delta's rows n_in long and one per id, each id below n_out.
            for (&id, d) in r.ids.iter().zip(delta.chunks_exact(n_in)) {
                for (x, &d) in weights[id * n_in..(id + 1) * n_in].iter_mut().zip(d) {
                    *x += r.scale * d;
                }
            }
        }
        if as_f32 {
            return Ok(weights.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
        Ok(quantize(w.ty, &weights, n_in, n_out, self.threads))
    }
}

fn read(file: &mut File, t: &Tensor) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; t.nbytes as usize];
    file.seek(SeekFrom::Start(t.offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| Error::ModelLoad(format!("reading tensor {}: {e}", t.name)))?;
    Ok(buf)
}

/// Row by row: `w[o][i] += s · Σ_k b[o][k]·a[k][i]` (`a`: r rows of n_in, `b`: n_out rows of r).
fn add_product(w: &mut [f32], n_in: usize, a: &[f32], b: &[f32], r: usize, s: f32, threads: usize) {
    let n_out = w.len() / n_in;
    let rows_per = n_out.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (chunk_index, chunk) in w.chunks_mut(rows_per * n_in).enumerate() {
            scope.spawn(move || {
                let mut delta = vec![0f32; n_in];
                for (j, row) in chunk.chunks_mut(n_in).enumerate() {
                    let o = chunk_index * rows_per + j;
                    delta.fill(0.0);
                    for (k, &coef) in b[o * r..(o + 1) * r].iter().enumerate() {
                        for (d, &x) in delta.iter_mut().zip(&a[k * n_in..(k + 1) * n_in]) {
                            *d += coef * x;
                        }
                    }
                    for (x, d) in row.iter_mut().zip(&delta) {
                        *x += s * d;
                    }
                }
            });
        }
    });
}

/// Types whose ggml traits convert to f32.
fn readable(ty: sys::ggml_type) -> bool {
    // SAFETY: `ty` came from ggml's reader, which refuses types ≥ GGML_TYPE_COUNT.
    ty == sys::GGML_TYPE_F32 || unsafe { (*sys::ggml_get_type_traits(ty)).to_float.is_some() }
}

/// Types of 8 bits or more a weight, which keep an adapter's change when a merged matrix is
/// written back in them (`ggml_quantize_chunk` writes each without an importance matrix).
fn holds_change(ty: sys::ggml_type) -> bool {
    matches!(ty, sys::GGML_TYPE_F32 | sys::GGML_TYPE_F16 | sys::GGML_TYPE_BF16 | sys::GGML_TYPE_Q8_0)
}

fn type_name(ty: sys::ggml_type) -> String {
    // SAFETY: a static string of ggml's type table (types come from ggml's reader).
    unsafe { CStr::from_ptr(sys::ggml_type_name(ty)) }.to_string_lossy().into_owned()
}

/// A tensor's data as f32 (its size was checked against its shape and type by ggml's reader).
fn to_f32(t: &Tensor, bytes: &[u8]) -> Vec<f32> {
    let n = t.elements();
    if t.ty == sys::GGML_TYPE_F32 {
        return bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    }
    let mut out = vec![0f32; n];
    // SAFETY: `readable` checked to_float exists; `bytes` holds the n elements of type ty
    // (whole blocks: ggml's reader checked each row against the block size).
    unsafe {
        let to_float = (*sys::ggml_get_type_traits(t.ty)).to_float.expect("checked readable");
        to_float(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    out
}

/// `weights` (n_rows × n_per_row) in `ty` (one of `holds_change`), rows split between threads.
fn quantize(ty: sys::ggml_type, weights: &[f32], n_per_row: usize, n_rows: usize, threads: usize) -> Vec<u8> {
    // SAFETY: plain size arithmetic of ggml's type table.
    let row_size = unsafe { sys::ggml_row_size(ty, n_per_row as i64) };
    let mut out = vec![0u8; row_size * n_rows];
    let rows_per = n_rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (i, chunk) in out.chunks_mut(rows_per * row_size).enumerate() {
            let src = &weights[i * rows_per * n_per_row..];
            scope.spawn(move || {
                let rows = chunk.len() / row_size;
                // SAFETY: `ty` needs no importance matrix (`holds_change`); `src` holds `rows` rows
                // of n_per_row floats and `chunk` exactly `rows` rows of `ty`; n_per_row is a
                // multiple of the type's block (the base tensor already had this type).
                unsafe {
                    sys::ggml_quantize_chunk(
                        ty,
                        src.as_ptr(),
                        chunk.as_mut_ptr().cast(),
                        0,
                        rows as i64,
                        n_per_row as i64,
                        std::ptr::null(),
                    )
                };
            });
        }
    });
    out
}

/// A GGUF file's header as ggml's reader holds it (no tensor data is loaded).
struct Gguf {
    ptr: NonNull<sys::gguf_context>,
}

impl Drop for Gguf {
    fn drop(&mut self) {
        // SAFETY: from gguf_init_from_file, freed once.
        unsafe { sys::gguf_free(self.ptr.as_ptr()) }
    }
}

impl Gguf {
    /// None when ggml's reader refuses the file (it logs why). Only call it on a file whose
    /// header pardec's own reader accepted.
    fn open(path: &Path) -> Option<Gguf> {
        let c_path = crate::llama::path_cstring(path)?;
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        // SAFETY: a NUL-terminated path that outlives the call; no ggml context is requested.
        NonNull::new(unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) }).map(|ptr| Gguf { ptr })
    }

    fn ptr(&self) -> *const sys::gguf_context {
        self.ptr.as_ptr()
    }

    fn find_key(&self, key: &str) -> Option<i64> {
        let key = std::ffi::CString::new(key).ok()?;
        // SAFETY: a live context and a NUL-terminated key.
        let id = unsafe { sys::gguf_find_key(self.ptr(), key.as_ptr()) };
        (id >= 0).then_some(id)
    }

    /// A string value (None when absent or of another type: the typed getter would assert).
    fn str(&self, key: &str) -> Option<String> {
        let id = self.find_key(key)?;
        // SAFETY: a valid key id; the type is checked before the typed read.
        unsafe {
            (sys::gguf_get_kv_type(self.ptr(), id) == sys::GGUF_TYPE_STRING)
                .then(|| CStr::from_ptr(sys::gguf_get_val_str(self.ptr(), id)).to_string_lossy().into_owned())
        }
    }

    /// Every tensor in file order, placed in the file; Err when one ends beyond `file_len`.
    fn tensors(&self, file_len: u64) -> std::result::Result<Vec<Tensor>, String> {
        // SAFETY: getters of a live context with ids below its tensor count.
        unsafe {
            let data = sys::gguf_get_data_offset(self.ptr()) as u64;
            (0..sys::gguf_get_n_tensors(self.ptr()))
                .map(|i| {
                    let name = CStr::from_ptr(sys::gguf_get_tensor_name(self.ptr(), i)).to_string_lossy().into_owned();
                    let offset = data + sys::gguf_get_tensor_offset(self.ptr(), i) as u64;
                    let nbytes = sys::gguf_get_tensor_size(self.ptr(), i) as u64;
                    if offset.checked_add(nbytes).map_or(true, |end| end > file_len) {
                        return Err(format!("the data of tensor {name} ends beyond the file (truncated?)"));
                    }
                    let ty = sys::gguf_get_tensor_type(self.ptr(), i);
                    let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(self.ptr(), i), 4);
                    let ne = [0, 1, 2, 3].map(|d| ne[d].max(0) as u64);
                    Ok(Tensor { name, ty, ne, offset, nbytes })
                })
                .collect()
        }
    }
}
