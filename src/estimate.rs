//! FLOPs of a whole generation from shapes and settings alone, without weights: the same rules
//! the forward pass follows when it counts what it runs ([`FlopCounter`]), replayed for any
//! policy and commit rule. Presets for LLaDA-8B and Dream-7B reproduce the paper's figures
//! (`examples/flops.rs`).

use burn::tensor::{Device, Tensor};

use crate::cache::{BlockInfo, CachePolicy, Probe, Refresh, Segment, StepInfo, unconditional_due};
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

/// FLOPs of a whole generation, computed from shapes and settings alone by a dry run: the
/// sampler's forwards are replayed with the step information it would pass, `policy` (reset
/// first) plans every layer as it would, and each plan is costed by the executor's rules. The
/// result equals what a [`FlopCounter`] records for the same generation (batch 1 or more,
/// equal prompt lengths, every step run), for any policy.
///
/// A probe is offered to a policy that wants one as zeros of width 1 on the CPU (flex, or
/// ndarray in a build without flex): the dry run knows no values, so a policy's row count
/// must not depend on them (dLLM-Cache's V-verify selects a fixed number of rows). Under the threshold and factor commit rules the number of steps per
/// block depends on the data: pass the steps a run took (`GenerationStats::block_steps`) as
/// `block_steps`; it is optional for the fixed schedule, and overrides it when given.
///
/// # Errors
/// [`Error::InvalidArgument`] if the sampler settings are invalid, `prompt_len` or `batch` is 0,
/// a size of `model` is 0, an adaptive rule comes without `block_steps`, or a count would not
/// fit in 64 bits; [`Error::Policy`] if the policy plans what the executor would refuse.
pub fn flops(
    model: &ModelShape,
    sampling: &Sampling,
    policy: &mut dyn CachePolicy,
    prompt_len: usize,
    batch: usize,
    head: HeadRows,
    block_steps: Option<&[usize]>,
) -> Result<FlopCounter> {
    model.validate()?;
    if prompt_len == 0 || batch == 0 {
        return Err(Error::invalid(
            "prompt_len",
            "prompt length and batch must be positive",
        ));
    }
    let p = prompt_len;
    // The blocks as the sampler walks them: (start, end) absolute, with their step counts.
    struct Plan {
        g: usize,
        blocks: Vec<(usize, usize, usize)>,
        /// Whether the sampler passes block information (LLaDA, Dream's block sampler).
        blocked: bool,
        head_rows: fn(usize, usize) -> usize,
        guidance: Guidance,
    }
    let steps_of = |derived: Vec<usize>, adaptive: bool| -> Result<Vec<usize>> {
        match block_steps {
            Some(s) => Ok(s.to_vec()),
            None if adaptive => Err(Error::invalid(
                "block_steps",
                "an adaptive commit rule needs the step counts of a run",
            )),
            None => Ok(derived),
        }
    };
    let plan = match sampling {
        Sampling::Llada(c) => {
            c.init()?;
            let n = c.block_length;
            let blocks = c.gen_length / n;
            let steps = steps_of(vec![c.steps / blocks; blocks], c.commit.is_adaptive())?;
            let guidance = match (c.cfg_scale > 0.0, policy.guidance_interval()) {
                (false, _) => Guidance::Off,
                (true, None) => Guidance::Batched,
                (true, Some(k)) => Guidance::Cached(k),
            };
            Plan {
                g: c.gen_length,
                blocks: steps
                    .into_iter()
                    .take(blocks)
                    .enumerate()
                    .map(|(b, s)| (p + b * n, p + (b + 1) * n, s))
                    .collect(),
                blocked: true,
                head_rows: if matches!(guidance, Guidance::Cached(_)) {
                    |_, g| g
                } else {
                    |block, _| block
                },
                guidance,
            }
        }
        Sampling::Dream(c) => {
            c.init()?;
            let g = c.max_new_tokens;
            match c.block_length {
                Some(n) => {
                    let blocks = g / n;
                    let per_block = c.steps / blocks;
                    // The block start, then the inner steps; one step per block still runs an
                    // inner forward (the official loop tests its end after the forward).
                    let derived = if n == 1 { 1 } else { per_block.max(2) };
                    let steps = steps_of(vec![derived; blocks], c.commit.is_adaptive())?;
                    Plan {
                        g,
                        blocks: steps
                            .into_iter()
                            .take(blocks)
                            .enumerate()
                            .map(|(b, s)| (p + b * n, p + (b + 1) * n, s))
                            .collect(),
                        blocked: true,
                        head_rows: |block, _| block,
                        guidance: Guidance::Off,
                    }
                }
                None => {
                    let steps = steps_of(vec![c.steps], c.commit.is_adaptive())?;
                    Plan {
                        g,
                        blocks: vec![(p, p + g, steps.iter().sum())],
                        blocked: false,
                        head_rows: |_, g| g,
                        guidance: Guidance::Off,
                    }
                }
            }
        }
    };
    let cond_batch = match plan.guidance {
        Guidance::Batched => 2 * batch,
        _ => batch,
    };
    let g = plan.g;
    let mut cond = Replay::new(model, p, g, cond_batch);
    let mut uncond_policy = match plan.guidance {
        Guidance::Cached(_) => Some(policy.fork()),
        _ => None,
    };
    let mut uncond = Replay::new(model, p, g, batch);
    policy.reset();
    let mut total = FlopCounter::new();
    let mut step = 0;
    for (index, &(lo, hi, steps)) in plan.blocks.iter().enumerate() {
        let head_rows = match head {
            HeadRows::AsRun => (plan.head_rows)(hi - lo, g),
            HeadRows::All => p + g,
        };
        for i in 0..steps {
            let mut info = StepInfo::new(cond.forwards, p, g);
            if plan.blocked {
                info = info.with_block(BlockInfo::new(index, lo, hi, i));
            }
            cond.forward(policy, info, head_rows, &mut total)?;
            if let (Guidance::Cached(k), Some(un)) = (plan.guidance, uncond_policy.as_mut())
                && unconditional_due(step, k)
            {
                let mut info = StepInfo::new(uncond.forwards, p, g);
                info.block = plan.blocked.then(|| BlockInfo::new(index, lo, hi, i));
                uncond.forward(un.as_mut(), info, head_rows, &mut total)?;
            }
            step += 1;
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

/// The dry run of the forwards that share one feature cache.
struct Replay<'a> {
    m: &'a ModelShape,
    p: usize,
    g: usize,
    batch: usize,
    /// Per layer, whether each segment has cached features.
    cached: Vec<[bool; 2]>,
    forwards: usize,
    device: Device,
}

impl<'a> Replay<'a> {
    fn new(m: &'a ModelShape, p: usize, g: usize, batch: usize) -> Self {
        Self {
            m,
            p,
            g,
            batch,
            cached: vec![[false; 2]; m.n_layers],
            forwards: 0,
            device: crate::backend::host_device(),
        }
    }

    /// One forward: every layer's plan costed as the executor runs it, then the LM head.
    fn forward(
        &mut self,
        policy: &mut dyn CachePolicy,
        info: StepInfo,
        head_rows: usize,
        c: &mut FlopCounter,
    ) -> Result<()> {
        let m = self.m;
        let (d, kv, ff, hd, h) = (m.d_model, m.kv_dim(), m.d_ff, m.head_dim(), m.n_heads);
        let (p, g, batch) = (self.p, self.g, self.batch);
        let l = p + g;
        let lin = |c: &mut FlopCounter, rows: usize, d_in: usize, d_out: usize| {
            c.add_linear(batch * rows, d_in, d_out)
        };
        policy.begin_step(&info);
        let store = policy.stores_features();
        for layer in 0..m.n_layers {
            // Per segment: (length, rows recomputed, whether a probe computed the values).
            let mut seg = [(p, 0usize, false, true); 2];
            for (s, segment) in Segment::BOTH.into_iter().enumerate() {
                let len = if s == 0 { p } else { g };
                if len == 0 {
                    seg[s] = (0, 0, false, true);
                    continue;
                }
                let cached = self.cached[layer][s];
                let probed = cached && policy.wants_probe(layer, segment);
                let refresh = if probed {
                    lin(c, len, d, kv);
                    let zeros = Tensor::<3>::zeros([batch, len, 1], &self.device);
                    let probe = Probe::new(&zeros, &zeros);
                    policy.plan(layer, segment, Some(probe))?
                } else {
                    policy.plan(layer, segment, None)?
                };
                let (rows, all) = match &refresh {
                    Refresh::All => (len, true),
                    _ if !cached => {
                        return Err(Error::Policy {
                            layer,
                            reason: format!(
                                "asked to reuse {segment:?} features that were never cached"
                            ),
                        });
                    }
                    Refresh::Reuse => (0, false),
                    Refresh::Rows(idx) => (idx.dims()[1].min(len), false),
                    Refresh::Range(r) if r.start == 0 && r.end == len => (len, true),
                    Refresh::Range(r) => (r.end.min(len).saturating_sub(r.start), false),
                };
                seg[s] = (len, rows, probed, all);
            }
            let full = seg.iter().all(|&(len, _, _, all)| len == 0 || all);
            let queries = if full {
                lin(c, l, d, d);
                lin(c, l, d, kv);
                lin(c, l, d, kv);
                l
            } else {
                let mut q = 0;
                for &(_, rows, probed, _) in &seg {
                    if rows > 0 {
                        lin(c, rows, d, d);
                        lin(c, rows, d, kv);
                        if !probed {
                            lin(c, rows, d, kv);
                        }
                        q += rows;
                    }
                }
                q
            };
            if queries > 0 {
                lin(c, queries, d, d); // output projection
                lin(c, queries, d, ff); // gate
                lin(c, queries, d, ff); // up
                lin(c, queries, ff, d); // down
                c.add_attention(batch, h, queries, l, hd);
            }
            if store {
                for (s, &(len, ..)) in seg.iter().enumerate() {
                    self.cached[layer][s] |= len > 0;
                }
            }
        }
        c.add_lm_head(batch * head_rows, d, m.vocab);
        c.forwards += 1;
        self.forwards += 1;
        Ok(())
    }
}
