//! `pardec::convert` on the default model: the converted file declares its format, loads, and
//! decodes greedily like the original where the format loses nothing the original had (F16
//! holds every Q4_1 weight almost exactly); bad inputs and outputs are specific errors that
//! leave no partial file behind.

mod common;

use std::path::{Path, PathBuf};

use common::models;
use pardec::{
    convert, converted_path, file_format, Error, Model, ModelParams, RunLimits, Session, SessionParams, Silent,
    WeightFormat,
};

/// A fresh folder under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pardec-convert-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn greedy(path: &Path, tokens: usize) -> Vec<i32> {
    let model = Model::load(path, &ModelParams::default()).expect("load");
    let mut s = Session::new(&model, SessionParams { n_ctx: 512, max_branches: 1, n_threads: 2, ..Default::default() })
        .unwrap();
    let prompt = model.apply_chat_template(&[("user", "Name three rivers.")]).unwrap();
    s.prompt(&prompt).unwrap();
    s.generate(&RunLimits { max_tokens: tokens, ban_eog: true, ..Default::default() }, &mut Silent).unwrap();
    let n = s.node_tokens(pardec::NodeId::TRUNK).len();
    s.node_tokens(pardec::NodeId::TRUNK)[n - tokens..].to_vec()
}

#[test]
fn a_converted_model_declares_its_format_loads_and_decodes() {
    let dir = TempDir::new("ok");
    let input = models::model_path(models::DEFAULT_MODEL_FILE);
    assert_eq!(file_format(&input), Some(WeightFormat::Q4_1));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let original = greedy(&input, 16);
    for format in [WeightFormat::Q8_0, WeightFormat::F16] {
        let out = dir.0.join(format!("model.{format}.gguf"));
        convert(&input, &out, format, 2).unwrap_or_else(|e| panic!("convert to {format}: {e}"));
        assert_eq!(file_format(&out), Some(format), "{}", out.display());
        let ratio = size(&out) / size(&input);
        // Q4_1 stores 5 bits a weight (4 + a scale and a minimum per 32), Q8_0 8.5 and F16 16;
        // tensors llama.cpp keeps in another type (norms in F32) blur the ratio a little.
        let expected = if format == WeightFormat::Q8_0 { 8.5 / 5.0 } else { 16.0 / 5.0 };
        assert!(
            (ratio / expected - 1.0).abs() < 0.25,
            "{format}: {ratio:.2}× the original's size, expected about {expected:.2}×"
        );
        let tokens = greedy(&out, 16);
        if format == WeightFormat::F16 {
            // F16 holds each Q4_1 weight (an f16 scale times a 4-bit level plus an f16 minimum)
            // to within half an f16 step: the greedy text is the original's.
            assert_eq!(tokens, original, "F16 of the Q4_1 model decodes differently");
        }
        assert_eq!(tokens.len(), 16);
    }
    // Nothing else was left in the folder (no partial files).
    let names: Vec<String> =
        std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn the_default_output_sits_beside_the_model_and_names_both_formats() {
    let p = converted_path(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), WeightFormat::Q8_0);
    assert_eq!(p, Path::new("/m/SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf"));
    assert_eq!(WeightFormat::parse("bf16"), Some(WeightFormat::Bf16));
    assert_eq!(WeightFormat::parse("Q4_K"), None);
}

#[test]
fn bad_inputs_and_outputs_are_specific_errors_and_leave_nothing() {
    let dir = TempDir::new("bad");
    let input = models::model_path(models::DEFAULT_MODEL_FILE);
    let out = dir.0.join("out.gguf");
    let missing = convert(&dir.0.join("missing.gguf"), &out, WeightFormat::Q8_0, 2);
    assert!(matches!(missing, Err(Error::ModelNotFound(_))), "{missing:?}");
    let text = dir.0.join("notes.txt");
    std::fs::write(&text, "not a model").unwrap();
    let not_gguf = convert(&text, &out, WeightFormat::Q8_0, 2);
    assert!(matches!(not_gguf, Err(Error::NotGguf(_))), "{not_gguf:?}");
    let no_folder = convert(&input, &dir.0.join("no/such/folder/out.gguf"), WeightFormat::Q8_0, 2);
    assert!(matches!(&no_folder, Err(Error::InvalidArgument(m)) if m.contains("no folder")), "{no_folder:?}");
    let copy = dir.0.join("copy.gguf");
    std::fs::copy(&input, &copy).unwrap();
    let onto_itself = convert(&copy, &copy, WeightFormat::Q8_0, 2);
    assert!(
        matches!(&onto_itself, Err(Error::InvalidArgument(m)) if m.contains("both the input and the output")),
        "{onto_itself:?}"
    );
    // A truncated model: the header reads, the tensor data is missing. llama.cpp's quantizer
    // fails on it; the error is a value and no partial output remains.
    let bytes = std::fs::read(&input).unwrap();
    let truncated = dir.0.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let short = convert(&truncated, &out, WeightFormat::Q8_0, 2);
    assert!(short.is_err(), "a truncated model converted");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["copy.gguf", "notes.txt", "truncated.gguf"], "{short:?}");
}
