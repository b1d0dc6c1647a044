//! Writing a model again in another weight format (`pardec convert`).
//!
//! On a CPU, llama.cpp's matrix kernels differ by weight type in how well one read of the
//! weights serves a batch of B rows: the format decides how much parallel branches can gain
//! (`pardec bench --formats` measures it). This re-quantizes a GGUF file with llama.cpp's own
//! `llama_model_quantize`, so the result loads anywhere llama.cpp does.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;

/// A weight format a model can be written in (llama.cpp's "file types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// 4-bit blocks of 32 with one scale.
    Q4_0,
    /// 4-bit blocks of 32 with a scale and a minimum (the default model's own).
    Q4_1,
    /// 8-bit blocks of 32 with one scale.
    Q8_0,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightFormat {
    /// Every format, in the order `pardec bench --formats` lists them.
    pub const ALL: [WeightFormat; 5] =
        [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::F16, WeightFormat::Bf16];

    /// Its name as llama.cpp's quantize tool spells it (`Q8_0`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Q4_0 => "Q4_0",
            WeightFormat::Q4_1 => "Q4_1",
            WeightFormat::Q8_0 => "Q8_0",
            WeightFormat::F16 => "F16",
            WeightFormat::Bf16 => "BF16",
        }
    }

    /// The format named `name`, in any case (`q8_0`, `BF16`).
    pub fn parse(name: &str) -> Option<WeightFormat> {
        WeightFormat::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }

    fn ftype(self) -> sys::llama_ftype {
        match self {
            WeightFormat::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            WeightFormat::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            WeightFormat::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            WeightFormat::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            WeightFormat::Bf16 => sys::LLAMA_FTYPE_MOSTLY_BF16,
        }
    }
}

/// The weight format a GGUF file declares (`general.file_type`), if it is one of these.
pub fn file_format(path: &Path) -> Option<WeightFormat> {
    let header = crate::gguf::read_header(path).ok()?;
    let ftype = header.metadata.get("general.file_type")?.as_f64()?;
    WeightFormat::ALL.into_iter().find(|f| f.ftype() as f64 == ftype)
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where `convert` writes `input` in `format` by default: beside it, the format appended to
/// the file's stem (`SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf`:
/// a Q8_0 made from a Q4_1 keeps the Q4_1's rounding, and says so).
pub fn converted_path(input: &Path, format: WeightFormat) -> PathBuf {
    let stem = input.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.{}.gguf", format.name()))
}

/// Writes the GGUF model `input` at `output` with its weights in `format`, using `n_threads`
/// threads (0: all cores). The file is written beside `output` under a temporary name and
/// renamed when complete, so `output` is never a partial file; an existing `output` is
/// replaced. Tensors whose rows do not fit the format's blocks get llama.cpp's fallback type.
pub fn convert(input: &Path, output: &Path, format: WeightFormat, n_threads: u32) -> Result<()> {
    crate::backend::backend()?;
    // The header checks loading does: llama.cpp's quantizer reads the file with the same
    // loader, which stops the process on some malformed headers instead of failing.
    crate::model::check_gguf_file(input)?;
    if input.canonicalize().ok().is_some_and(|i| output.canonicalize().ok() == Some(i)) {
        return Err(Error::InvalidArgument(format!("convert: {} is both the input and the output", input.display())));
    }
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "convert: no folder {} to write {} in",
            dir.display(),
            output.display()
        )));
    }
    let partial = output.with_file_name(format!(
        ".{}.partial-{}",
        output.file_name().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let c_path = |p: &Path| {
        crate::llama::path_cstring(p)
            .ok_or_else(|| Error::InvalidArgument(format!("convert: the path {} is not NUL-free UTF-8", p.display())))
    };
    let (c_input, c_partial) = (c_path(input)?, c_path(&partial)?);
    let written = crate::llama::quantize_file(&c_input, &c_partial, format.ftype(), n_threads)
        .map_err(|why| Error::ModelLoad(format!("convert {} to {format}: {why}", input.display())))
        .and_then(|()| {
            std::fs::rename(&partial, output)
                .map_err(|e| Error::InvalidArgument(format!("convert: cannot write {}: {e}", output.display())))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
