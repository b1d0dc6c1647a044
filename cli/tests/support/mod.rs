//! What the command-line tests share (`mod support;` beside `mod common;` in a test file).

// Each test binary uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

use crate::common::models;

/// `pardec ARGS` on the default model (PARDEC_MODEL), with its output captured.
pub fn pardec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .env("PARDEC_MODEL", models::model_path(models::DEFAULT_MODEL_FILE))
        .output()
        .expect("run pardec")
}

/// The one JSON object a successful command printed.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "pardec failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// `pardec` with the default model unset and unreachable: for what must not load a model.
pub fn pardec_no_model(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pardec"))
        .args(args)
        .env("PARDEC_MODEL", "/nonexistent/model.gguf")
        .output()
        .expect("run pardec")
}
