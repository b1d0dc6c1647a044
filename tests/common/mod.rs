//! Support code shared by the integration tests (`mod common;` in a test file).
//!
//! Every test binary compiles this module on its own and uses only part of it, hence the
//! blanket `dead_code` allowance.
#![allow(dead_code)]

pub mod models;
pub mod script;
pub mod tiny_model;
pub mod transcript;
