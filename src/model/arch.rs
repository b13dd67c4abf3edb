//! What the shared code needs to know about an architecture, and its validation.

use crate::error::{Error, Result};

/// Longest supported `max_len`: positions are float32 in the rotary tables.
const MAX_POSITIONS: usize = 1 << 24;

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

    /// Parameters, or `None` if the count overflows `usize`.
    pub fn num_params(&self) -> Option<usize> {
        let d = self.d_model;
        let kv = self.n_kv_heads.checked_mul(self.head_dim())?;
        let bias = if self.qkv_bias {
            d.checked_add(kv.checked_mul(2)?)?
        } else {
            0
        };
        let square = d.checked_mul(d)?.checked_mul(2)?;
        let kv_weights = d.checked_mul(kv)?.checked_mul(2)?;
        let ffn = d.checked_mul(self.d_ff)?.checked_mul(3)?;
        let per_layer = [2 * d, square, kv_weights, bias, ffn]
            .into_iter()
            .try_fold(0usize, usize::checked_add)?;
        let embeddings = self.vocab_rows.checked_mul(d)?.checked_mul(2)?;
        self.n_layers
            .checked_mul(per_layer)?
            .checked_add(d)?
            .checked_add(embeddings)
    }

    /// Checks that the sizes describe a model this crate can build; `ids` are special token
    /// ids, which must lie inside the tokenizer vocabulary `vocab` (config field `vocab_name`,
    /// at most the embedding rows).
    pub fn validate(
        &self,
        vocab: usize,
        vocab_name: &str,
        ids: &[(&str, Option<u32>)],
    ) -> Result<()> {
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
            if let Some(id) = id
                && id as usize >= vocab.min(self.vocab_rows)
            {
                return Err(bad(format!(
                    "`{name}` ({id}) is outside the vocabulary (`{vocab_name}` = {vocab})"
                )));
            }
        }
        if self.max_len > MAX_POSITIONS {
            return Err(bad(format!(
                "`{}` ({}) exceeds {MAX_POSITIONS}: rotary positions are computed in float32, \
                 exact only up to 2^24",
                n.max_len, self.max_len
            )));
        }
        // Every weight, and all of them, must be addressable in float32: 4 bytes per parameter
        // within isize::MAX, so that no size computed from the config wraps.
        let fits = self
            .num_params()
            .and_then(|p| p.checked_mul(4))
            .is_some_and(|bytes| bytes <= isize::MAX as usize);
        if !fits {
            return Err(bad(format!(
                "the sizes ({} {}, {} {}, {} {}, {} {}) describe more parameters than this \
                 machine can address",
                n.d_model,
                self.d_model,
                n.d_ff,
                self.d_ff,
                n.n_layers,
                self.n_layers,
                n.vocab_rows,
                self.vocab_rows
            )));
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
