//! FLOPs of a whole generation from shapes and settings alone, without weights: the same rules
//! the forward pass follows when it counts what it runs ([`FlopCounter`]), replayed for any
//! policy and commit rule. Presets for LLaDA-8B and Dream-7B reproduce the paper's figures
//! (`examples/flops.rs`).

use crate::cache::{DllmCacheConfig, Segment};
use crate::error::{Error, Result};
use crate::flops::FlopCounter;
use crate::model::dream::DreamConfig;
use crate::model::llada::LladaConfig;
use crate::sampler::{DreamSamplerConfig, LladaSamplerConfig};

/// The sizes that determine a forward pass's FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelShape {
    /// Hidden width.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// SwiGLU hidden width.
    pub d_ff: usize,
    /// Rows of the LM head.
    pub vocab: usize,
}

impl ModelShape {
    /// A shape from its sizes.
    pub fn new(
        d_model: usize,
        n_heads: usize,
        n_kv_heads: usize,
        n_layers: usize,
        d_ff: usize,
        vocab: usize,
    ) -> Self {
        Self {
            d_model,
            n_heads,
            n_kv_heads,
            n_layers,
            d_ff,
            vocab,
        }
    }

    /// LLaDA-8B (REFERENCE.md section 5.1).
    pub fn llada_8b() -> Self {
        (&LladaConfig::llada_8b()).into()
    }

    /// Dream-v0-7B (REFERENCE.md section 6.1).
    pub fn dream_7b() -> Self {
        (&DreamConfig::dream_7b()).into()
    }

    fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Every size positive, heads dividing the width and key/value heads dividing the heads.
    fn validate(&self) -> Result<()> {
        let sizes = [
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.n_layers,
            self.d_ff,
            self.vocab,
        ];
        if sizes.contains(&0)
            || !self.d_model.is_multiple_of(self.n_heads)
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(Error::invalid(
                "model",
                format!(
                    "{self:?}: sizes must be positive, heads must divide the width and key/value heads the heads"
                ),
            ));
        }
        Ok(())
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }
}

impl From<&LladaConfig> for ModelShape {
    fn from(c: &LladaConfig) -> Self {
        Self {
            d_model: c.d_model,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            n_layers: c.n_layers,
            d_ff: c.mlp_hidden_size,
            vocab: c.embedding_size,
        }
    }
}

impl From<&DreamConfig> for ModelShape {
    fn from(c: &DreamConfig) -> Self {
        Self {
            d_model: c.hidden_size,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            n_layers: c.num_hidden_layers,
            d_ff: c.intermediate_size,
            vocab: c.vocab_size,
        }
    }
}

/// The sampler whose forwards are estimated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Sampling {
    /// LLaDA's sampler.
    Llada(LladaSamplerConfig),
    /// Dream's sampler.
    Dream(DreamSamplerConfig),
}

/// Which rows the LM head is counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRows {
    /// The rows this crate's samplers request (LLaDA: the current block, or the whole response
    /// under dLLM-Cache guidance; Dream: the response). Matches what [`FlopCounter`] records.
    AsRun,
    /// Every position, as the reference code (and the paper's FLOPs) computes it.
    All,
}

/// FLOPs of a whole generation, computed from shapes and settings alone, following the same
/// rules as the forward pass executes them: the result equals what a [`FlopCounter`] records
/// for the same generation (batch 1 or more, equal prompt lengths, every step run).
///
/// `policy` is `None` for [`NoCache`](crate::NoCache) or the settings of a
/// [`DllmCache`](crate::DllmCache).
///
/// # Errors
/// [`Error::InvalidArgument`] if the sampler or policy settings are invalid, `prompt_len` or
/// `batch` is 0, a size of `model` is 0, or a count would not fit in 64 bits.
pub fn flops(
    model: &ModelShape,
    sampling: &Sampling,
    policy: Option<&DllmCacheConfig>,
    prompt_len: usize,
    batch: usize,
    head: HeadRows,
) -> Result<FlopCounter> {
    model.validate()?;
    if prompt_len == 0 || batch == 0 {
        return Err(Error::invalid(
            "prompt_len",
            "prompt length and batch must be positive",
        ));
    }
    if let Some(p) = policy {
        p.init()?;
    }
    let p = prompt_len;
    let mut total = FlopCounter::new();
    // (steps, response length, LM head rows per conditional forward, guidance mode)
    let (steps, g, head_rows, guidance) = match sampling {
        Sampling::Llada(c) => {
            c.init()?;
            let guidance = match (c.cfg_scale > 0.0, policy) {
                (false, _) => Guidance::Off,
                (true, None) => Guidance::Batched,
                (true, Some(d)) => Guidance::Cached(d.cfg_interval),
            };
            let rows = match guidance {
                Guidance::Cached(_) => c.gen_length,
                _ => c.block_length,
            };
            (c.steps, c.gen_length, rows, guidance)
        }
        Sampling::Dream(c) => {
            c.init()?;
            (c.steps, c.max_new_tokens, c.max_new_tokens, Guidance::Off)
        }
    };
    let head_rows = match head {
        HeadRows::AsRun => head_rows,
        HeadRows::All => p + g,
    };
    let cond_batch = match guidance {
        Guidance::Batched => 2 * batch,
        _ => batch,
    };
    let mut uncond_forwards = 0;
    for step in 0..steps {
        total += forward_flops(model, policy, step, p, g, cond_batch, head_rows);
        if let Guidance::Cached(interval) = guidance
            && crate::cache::unconditional_due(step, interval)
        {
            total += forward_flops(model, policy, uncond_forwards, p, g, batch, head_rows);
            uncond_forwards += 1;
        }
    }
    if [total.linear, total.lm_head, total.attention].contains(&u64::MAX) {
        return Err(Error::invalid(
            "model",
            "the FLOPs of this generation do not fit in 64 bits",
        ));
    }
    Ok(total)
}

#[derive(Clone, Copy)]
enum Guidance {
    Off,
    Batched,
    Cached(usize),
}

/// One forward pass at policy step `step`.
fn forward_flops(
    m: &ModelShape,
    policy: Option<&DllmCacheConfig>,
    step: usize,
    p: usize,
    g: usize,
    batch: usize,
    head_rows: usize,
) -> FlopCounter {
    let (d, kv, ff, hd, h) = (m.d_model, m.kv_dim(), m.d_ff, m.head_dim(), m.n_heads);
    let l = p + g;
    let mut c = FlopCounter::new();
    let mut lin = |rows: usize, d_in: usize, d_out: usize| c.add_linear(batch * rows, d_in, d_out);
    let mut attention_queries = Vec::with_capacity(m.n_layers);
    for layer in 0..m.n_layers {
        let (prompt_due, response_due) = match policy {
            None => (true, true),
            Some(cfg) => (
                cfg.due(step, layer, Segment::Prompt),
                cfg.due(step, layer, Segment::Response),
            ),
        };
        let queries = if (p == 0 || prompt_due) && (g == 0 || response_due) {
            lin(l, d, d);
            lin(l, d, kv);
            lin(l, d, kv);
            l
        } else {
            let mut q = 0;
            if prompt_due {
                lin(p, d, d);
                lin(p, d, kv);
                lin(p, d, kv);
                q += p;
            }
            if response_due {
                lin(g, d, d);
                lin(g, d, kv);
                lin(g, d, kv);
                q += g;
            } else if let Some(cfg) = policy.filter(|c| c.refresh_ratio > 0.0) {
                // V-verify: fresh values of every response row, then q and k of the chosen.
                lin(g, d, kv);
                let s = cfg.verified_rows(g);
                if s > 0 {
                    lin(s, d, d);
                    lin(s, d, kv);
                    q += s;
                }
            }
            q
        };
        if queries > 0 {
            lin(queries, d, d); // output projection
            lin(queries, d, ff); // gate
            lin(queries, d, ff); // up
            lin(queries, ff, d); // down
        }
        attention_queries.push(queries);
    }
    for q in attention_queries.into_iter().filter(|&q| q > 0) {
        c.add_attention(batch, h, q, l, hd);
    }
    c.add_lm_head(batch * head_rows, d, m.vocab);
    c.forwards += 1;
    c
}
