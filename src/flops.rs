//! Floating-point operation accounting.
//!
//! The forward pass adds to a [`FlopCounter`] what it actually ran: two FLOPs per
//! multiply-accumulate of every linear projection (only the rows computed), the LM head rows,
//! and, separately, the two attention products (scores and weighted values). The paper's
//! convention (dLLM-Cache, Section 4 of `REFERENCE.md`) counts linear layers and the LM head but
//! not the attention products; [`FlopCounter::paper`] gives that view and
//! [`FlopCounter::total`] everything.

use std::ops::AddAssign;

/// FLOPs executed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlopCounter {
    /// Linear projections inside the transformer blocks (q, k, v, o, gate, up, down).
    pub linear: u64,
    /// The LM head (vocabulary projection).
    pub lm_head: u64,
    /// Attention score (`QK^T`) and value (`PV`) products.
    pub attention: u64,
    /// Forward passes counted.
    pub forwards: u64,
}

impl FlopCounter {
    /// A zeroed counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The paper's convention: linear layers plus LM head, no attention products.
    pub fn paper(&self) -> u64 {
        self.linear + self.lm_head
    }

    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.linear + self.lm_head + self.attention
    }

    /// Adds a linear layer applied to `rows` rows (batch rows included).
    pub(crate) fn add_linear(&mut self, rows: usize, d_in: usize, d_out: usize) {
        self.linear += 2 * (rows * d_in * d_out) as u64;
    }

    pub(crate) fn add_lm_head(&mut self, rows: usize, d_in: usize, vocab: usize) {
        self.lm_head += 2 * (rows * d_in * vocab) as u64;
    }

    /// Adds both attention products for `queries` query rows over `keys` keys.
    pub(crate) fn add_attention(
        &mut self,
        batch: usize,
        heads: usize,
        queries: usize,
        keys: usize,
        head_dim: usize,
    ) {
        self.attention += 2 * 2 * (batch * heads * queries * keys * head_dim) as u64;
    }
}

impl AddAssign for FlopCounter {
    fn add_assign(&mut self, rhs: Self) {
        self.linear += rhs.linear;
        self.lm_head += rhs.lm_head;
        self.attention += rhs.attention;
        self.forwards += rhs.forwards;
    }
}
