//! The real test models, fetched and verified by `scripts/fetch-models.sh`.
//!
//! Tests that need them fail (never skip) when they are missing, with the command to run.

#![allow(dead_code)]

use std::path::PathBuf;

use pardec::{Model, ModelParams};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

pub fn model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PARDEC_MODEL_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache"));
    cache.join("pardec").join("models")
}

pub fn model_path(file: &str) -> PathBuf {
    let path = model_dir().join(file);
    assert!(
        path.exists(),
        "test model {} is missing: run `bash scripts/fetch-models.sh` (or set PARDEC_MODEL_DIR)",
        path.display()
    );
    path
}

pub fn load(file: &str) -> Model {
    Model::load(model_path(file), &ModelParams::default()).expect("load test model")
}

/// Both real models: the default (llama architecture) and gemma-3 (iSWA, 262k vocabulary).
pub fn both() -> Vec<(&'static str, Model)> {
    vec![(DEFAULT_MODEL_FILE, load(DEFAULT_MODEL_FILE)), (GEMMA_MODEL_FILE, load(GEMMA_MODEL_FILE))]
}
