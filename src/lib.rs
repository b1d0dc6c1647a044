//! # pardec — parallel decoding of independent branches on llama.cpp
//!
//! A response is decoded serially until it forks; the branches then share the KV cells of
//! everything before the fork, are decoded together (one `llama_decode` per step), and are
//! joined so decoding continues while attending to every branch. See [`Session`].
//!
//! ```no_run
//! use pardec::{BranchSpec, JoinMode, Model, ModelParams, NodeId, Session, SessionParams, Silent};
//! let model = Model::load("model.gguf", &ModelParams::default())?;
//! let mut s = Session::new(&model, SessionParams::default())?;
//! s.prompt("Three fruits and one fact about each:\n")?;
//! s.fork(NodeId::TRUNK, &[BranchSpec::new("1. Apple:", 32), BranchSpec::new("2. Pear:", 32)])?;
//! s.run(&mut Silent)?;
//! s.join(NodeId::TRUNK, JoinMode::All, Some("\nIn short,"))?;
//! println!("{}\n{:?}", s.transcript().text, s.stats());
//! # Ok::<(), pardec::Error>(())
//! ```

#![warn(missing_docs)]

mod adapter;
pub mod auto;
mod backend;
pub mod conversations;
mod convert;
// The command line's benchmark and equivalence check (feature `tools`) and the C ABI (feature
// `capi`): compiled only on request, and not part of the documented Rust API.
#[cfg(feature = "tools")]
#[doc(hidden)]
pub mod bench;
#[cfg(feature = "tools")]
#[doc(hidden)]
pub mod equivalence;
mod error;
#[cfg(feature = "capi")]
#[doc(hidden)]
pub mod ffi;
mod gguf;
mod layout_rules;
mod llama;
mod merge;
mod model;
pub mod protocol;
pub mod rpc;
pub mod session;
mod stats;

pub use adapter::Adapter;
pub use backend::backend;
pub use conversations::{Conversations, ConversationsParams};
pub use convert::{convert, converted_path, file_format, WeightFormat};
pub use error::{Error, Result};
pub use merge::{merge, MergeSummary};
pub use model::{Model, ModelParams, SpecialTokens, Token};
pub use session::SamplingParams;
pub use session::{
    BranchSpec, Event, Grammar, ItemReport, JoinMode, JoinRule, KvType, NodeId, NodeReport, Observer, Origin,
    RunLimits, Selection, Session, SessionParams, Silent, StopReason, TokenLogprob, TokenScript, Transcript,
    MAX_TOP_LOGPROBS,
};
pub use stats::Stats;

/// The crate version, also in the C header as `PARDEC_VERSION`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
