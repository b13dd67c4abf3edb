//! Floating-point operation accounting.
//!
//! The forward pass adds to a [`FlopCounter`] what it actually ran: two FLOPs per
//! multiply-accumulate of every linear projection (only the rows computed), the LM head rows,
//! and, separately, the two attention products (scores and weighted values). The paper's
//! convention (dLLM-Cache, Section 4 of `REFERENCE.md`) counts linear layers and the LM head but
//! not the attention products; [`FlopCounter::paper`] gives that view and
//! [`FlopCounter::total`] everything. The same numbers without running a model:
//! [`crate::estimate`].

use std::ops::AddAssign;

/// FLOPs executed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
        self.linear = self
            .linear
            .saturating_add(product_flops(&[rows, d_in, d_out]));
    }

    pub(crate) fn add_lm_head(&mut self, rows: usize, d_in: usize, vocab: usize) {
        self.lm_head = self
            .lm_head
            .saturating_add(product_flops(&[rows, d_in, vocab]));
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
        let both = product_flops(&[batch, heads, queries, keys, head_dim]).saturating_mul(2);
        self.attention = self.attention.saturating_add(both);
    }
}

impl AddAssign for FlopCounter {
    fn add_assign(&mut self, rhs: Self) {
        self.linear = self.linear.saturating_add(rhs.linear);
        self.lm_head = self.lm_head.saturating_add(rhs.lm_head);
        self.attention = self.attention.saturating_add(rhs.attention);
        self.forwards = self.forwards.saturating_add(rhs.forwards);
    }
}

/// Two FLOPs per multiply-accumulate of a product of these extents, in 128-bit arithmetic and
/// saturated at `u64::MAX` (products of tensors that exist stay far below it; the estimator,
/// which takes sizes from callers, checks instead: [`crate::estimate`]).
pub(crate) fn product_flops(extents: &[usize]) -> u64 {
    let n = extents
        .iter()
        .try_fold(2u128, |acc, &e| acc.checked_mul(e as u128));
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(u64::MAX)
}
