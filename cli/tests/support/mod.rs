//! What the command-line tests share (`mod support;` beside `mod common;` in a test file).

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
