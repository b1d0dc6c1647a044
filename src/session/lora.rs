//! The LoRA adapters a session decodes with.

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::model::Model;

use super::Session;

impl Session {
    /// Replaces the session's LoRA adapters (an empty list: the base model). Each adapter must
    /// have been loaded for this session's model; a scale is finite (0 disables it, 1 is as
    /// trained, negative scales subtract it).
    ///
    /// Cells already in the KV cache keep the values computed with the previous adapters, as
    /// llama.cpp's hot swap does: [`Session::clear`] first for a clean switch. On an error the
    /// previous adapters stay.
    pub fn set_adapters(&mut self, adapters: &[(Adapter, f32)]) -> Result<()> {
        check_adapters(&self.model, adapters)?;
        // The context is switched before the old list is dropped: an adapter whose last
        // reference that list holds is freed only once the context no longer points at it.
        let previous = std::mem::replace(&mut self.params.adapters, adapters.to_vec());
        self.apply_adapters();
        drop(previous);
        Ok(())
    }

    /// The adapters the session decodes with, and their scales.
    pub fn adapters(&self) -> &[(Adapter, f32)] {
        &self.params.adapters
    }

    pub(super) fn apply_adapters(&mut self) {
        let list: Vec<_> = self.params.adapters.iter().map(|(a, scale)| (&a.inner.llama, *scale)).collect();
        self.ctx.set_adapters(&list);
    }
}

/// Refuses an adapter of another model (llama.cpp would read that model's tensors through it),
/// a scale that is not finite, and the same adapter twice (llama.cpp would keep one scale).
pub(super) fn check_adapters(model: &Model, adapters: &[(Adapter, f32)]) -> Result<()> {
    for (i, (adapter, scale)) in adapters.iter().enumerate() {
        if !adapter.belongs_to(model) {
            return Err(Error::InvalidArgument(format!(
                "adapter {} was loaded for another model than the session's ({})",
                adapter.path().display(),
                model.path().display()
            )));
        }
        if !scale.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "adapter {} has scale {scale}: scales are finite",
                adapter.path().display()
            )));
        }
        if adapters[..i].iter().any(|(other, _)| std::sync::Arc::ptr_eq(&other.inner, &adapter.inner)) {
            return Err(Error::InvalidArgument(format!("adapter {} is listed twice", adapter.path().display())));
        }
    }
    Ok(())
}
