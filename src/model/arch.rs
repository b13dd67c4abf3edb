//! What the shared code needs to know about an architecture, and its validation.

use crate::error::{Error, Result};

/// Everything the shared forward needs to know about an architecture.
#[derive(Debug, Clone)]
pub(crate) struct Arch {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    /// Rows of the embedding and the LM head.
    pub vocab_rows: usize,
    pub eps: f64,
    /// Biases on q/k/v (Dream) or none (LLaDA).
    pub qkv_bias: bool,
    pub rope_theta: f64,
    /// LLaDA rotates in float32; Dream in the activation dtype.
    pub rotate_in_f32: bool,
    pub max_len: usize,
    /// The config's names of the fields above, for error messages.
    pub names: &'static ArchNames,
}

/// Config field names of an architecture.
#[derive(Debug)]
pub(crate) struct ArchNames {
    pub d_model: &'static str,
    pub n_heads: &'static str,
    pub n_kv_heads: &'static str,
    pub n_layers: &'static str,
    pub d_ff: &'static str,
    pub vocab_rows: &'static str,
    pub max_len: &'static str,
}

impl Arch {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let kv = self.n_kv_heads * self.head_dim();
        let bias = if self.qkv_bias { d + 2 * kv } else { 0 };
        let per_layer = 2 * d + 2 * d * d + 2 * d * kv + bias + 3 * d * self.d_ff;
        self.n_layers * per_layer + d + 2 * self.vocab_rows * d
    }

    /// Checks that the sizes describe a model this crate can build; `ids` are special token
    /// ids that must index the embedding.
    pub fn validate(&self, ids: &[(&str, u32)]) -> Result<()> {
        let n = self.names;
        let bad = |reason: String| Error::Config { path: None, reason };
        for (name, v) in [
            (n.d_model, self.d_model),
            (n.n_heads, self.n_heads),
            (n.n_kv_heads, self.n_kv_heads),
            (n.n_layers, self.n_layers),
            (n.d_ff, self.d_ff),
            (n.vocab_rows, self.vocab_rows),
            (n.max_len, self.max_len),
        ] {
            if v == 0 {
                return Err(bad(format!("`{name}` must be positive")));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(bad(format!(
                "`{}` ({}) must divide `{}` ({})",
                n.n_heads, self.n_heads, n.d_model, self.d_model
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad(format!(
                "head width `{} / {}` must be even for rotary embeddings",
                n.d_model, n.n_heads
            )));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(format!(
                "`{}` ({}) must divide `{}` ({})",
                n.n_kv_heads, self.n_kv_heads, n.n_heads, self.n_heads
            )));
        }
        for &(name, id) in ids {
            if id as usize >= self.vocab_rows {
                return Err(bad(format!(
                    "`{name}` ({id}) is outside the {} embedding rows",
                    self.vocab_rows
                )));
            }
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(bad("`rope_theta` must be positive".into()));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(bad("`rms_norm_eps` must be positive".into()));
        }
        Ok(())
    }
}
