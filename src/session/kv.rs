//! Sequence ids: who may see which KV cells.
//!
//! In a unified KV cache a cell carries a *set* of sequence ids; a token of sequence `s`
//! attends to exactly the cells carrying `s`. The trunk is sequence 0; every live branch holds
//! one id from this pool. Ids are validated here, before llama.cpp sees them: an id at or
//! above the context's `n_seq_max` is a process abort inside llama.cpp, not an error.

use crate::error::{Error, Result};

pub(crate) const TRUNK_SEQ: i32 = 0;

#[derive(Debug)]
pub(crate) struct SeqPool {
    /// Free ids, popped from the end; kept sorted descending so the lowest id is reused first.
    free: Vec<i32>,
    n_seq_max: i32,
}

impl SeqPool {
    /// A pool for a context created with `n_seq_max` sequences (id 0 is the trunk's).
    pub(crate) fn new(n_seq_max: u32) -> Self {
        let n_seq_max = n_seq_max as i32;
        SeqPool { free: (1..n_seq_max).rev().collect(), n_seq_max }
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes `n` ids, or none at all if fewer are free.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<i32>> {
        if n > self.free.len() {
            return Err(Error::TooManyBranches { requested: n, free: self.free.len() });
        }
        let at = self.free.len() - n;
        let mut ids = self.free.split_off(at);
        ids.reverse();
        Ok(ids)
    }

    pub(crate) fn give_back(&mut self, id: i32) {
        debug_assert!(id > TRUNK_SEQ && id < self.n_seq_max && !self.free.contains(&id));
        self.free.push(id);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_taken_all_or_nothing_and_reused_lowest_first() {
        let mut pool = SeqPool::new(5);
        assert_eq!(pool.take(2).unwrap(), vec![1, 2]);
        assert_eq!(pool.take(3), Err(Error::TooManyBranches { requested: 3, free: 2 }));
        assert_eq!(pool.free_count(), 2);
        pool.give_back(1);
        assert_eq!(pool.take(2).unwrap(), vec![1, 3]);
        assert_eq!(pool.free_count(), 1);
    }
}
