//! LLaDA's sampler: semi-autoregressive blocks, low-confidence or random remasking, Gumbel-max
//! temperature sampling and classifier-free guidance.
//!
//! Mirrors `generate` of ML-GSAI/LLaDA (`generate.py`) and, for classifier-free guidance under a
//! caching policy, dLLM-Cache's `utils/generate_function.py`:
//!
//! * the response is split into `gen_length / block_length` blocks, each unmasked in
//!   `steps / num_blocks` steps; the number of tokens per step comes from the block's mask
//!   count at its first step ([`transfer_schedule`](super::transfer_schedule));
//! * each step commits, per batch row, the masked positions of the current block with the
//!   highest confidence (softmax probability of the chosen token, or a uniform draw for
//!   [`Remasking::Random`]);
//! * temperature > 0 samples with Gumbel-max in float64 (`exp(l) / (-ln u)^T`) from this
//!   sampler's seeded generator;
//! * `logits_eos_inf` forbids EOS; `confidence_eos_eot_inf` gives EOS and end-of-turn zero
//!   confidence. The reference sets these with a chained assignment that, at temperature 0,
//!   hits the logits it later uses for the confidence twice (EOS and EoT), and at temperature
//!   > 0 only once (EoT); this sampler does the same.
//!
//! The LM head runs only on the rows of the current block: the only rows a step can commit.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::config::Config;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::commit::CommitRule;
use super::{
    Commit, ForwardTrace, GenerationOutput, GenerationStats, OnStep, Pass, StepEvent, Stops,
    backend_err, tokens_tensor, transfer_count, validate_logits, validate_steps,
};
use crate::cache::{BlockInfo, CachePolicy, FeatureCache, StepInfo, unconditional_due};
use crate::denoiser::{Denoiser, StepContext};
use crate::error::{Error, Result};
use crate::flops::FlopCounter;
use crate::rng::SplitMix64;

/// How a step ranks the masked positions it may commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remasking {
    /// By the probability of the predicted token (the reference's `low_confidence`).
    LowConfidence,
    /// By a uniform random draw (`random`).
    Random,
}

/// Settings of the LLaDA sampler, named as in the reference `generate`.
#[derive(Config, Debug, PartialEq)]
#[non_exhaustive]
pub struct LladaSamplerConfig {
    /// Total denoising steps (a multiple of the number of blocks).
    #[config(default = 128)]
    pub steps: usize,
    /// Response length in tokens.
    #[config(default = 128)]
    pub gen_length: usize,
    /// Semi-autoregressive block length (divides `gen_length`; equal to it for one block).
    #[config(default = 128)]
    pub block_length: usize,
    /// Gumbel-max sampling temperature; 0 is greedy.
    #[config(default = 0.0)]
    pub temperature: f64,
    /// Classifier-free guidance scale; 0 disables guidance.
    #[config(default = 0.0)]
    pub cfg_scale: f64,
    /// Confidence rule.
    #[config(default = "Remasking::LowConfidence")]
    pub remasking: Remasking,
    /// Never predict EOS.
    #[config(default = false)]
    pub logits_eos_inf: bool,
    /// Give EOS and end-of-turn tokens zero confidence (needs `eot_token_id`).
    #[config(default = false)]
    pub confidence_eos_eot_inf: bool,
    /// End-of-turn token id (`<|eot_id|>`, 126348 for LLaDA-8B-Instruct).
    #[config(default = "None")]
    pub eot_token_id: Option<u32>,
    /// Seed of the generator used for temperature sampling and random remasking.
    #[config(default = 0)]
    pub seed: u64,
    /// Per-row early stop: a row whose committed prefix reaches one of these tokens commits
    /// nothing more, and the generation ends when every row has. Empty: run every step.
    #[config(default = "Vec::new()")]
    pub stop_tokens: Vec<u32>,
    /// How many candidates of the current block a step commits: the fixed schedule
    /// (`steps / blocks` steps per block), or Fast-dLLM's threshold or factor rule, under
    /// which a block ends when it has no mask left.
    #[config(default = "CommitRule::Schedule")]
    pub commit: CommitRule,
}

impl LladaSamplerConfig {
    /// Validates the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a length is 0, `block_length` does not divide
    /// `gen_length`, `steps` is not a multiple of the number of blocks, the temperature or
    /// guidance scale is negative or not finite, or `confidence_eos_eot_inf` lacks an
    /// `eot_token_id`.
    pub fn init(&self) -> Result<LladaSampler> {
        validate_steps(self.steps)?;
        for (name, v) in [
            ("gen_length", self.gen_length),
            ("block_length", self.block_length),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return Err(Error::invalid(
                "block_length",
                format!(
                    "{} does not divide gen_length {}",
                    self.block_length, self.gen_length
                ),
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if !self.steps.is_multiple_of(blocks) {
            return Err(Error::invalid(
                "steps",
                format!("{} is not a multiple of the {blocks} blocks", self.steps),
            ));
        }
        for (name, v) in [
            ("temperature", self.temperature),
            ("cfg_scale", self.cfg_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("must be finite and >= 0, got {v}"),
                ));
            }
        }
        self.commit.validate()?;
        if self.confidence_eos_eot_inf && self.eot_token_id.is_none() {
            return Err(Error::invalid(
                "eot_token_id",
                "confidence_eos_eot_inf needs the end-of-turn token id",
            ));
        }
        Ok(LladaSampler {
            config: self.clone(),
            trace_layers: false,
            cache_dtype: None,
        })
    }
}

/// The LLaDA sampler. Build it with [`LladaSamplerConfig::init`].
#[derive(Debug, Clone)]
pub struct LladaSampler {
    config: LladaSamplerConfig,
    trace_layers: bool,
    /// Storage type of the feature cache; `None`: the activations' type.
    cache_dtype: Option<burn::tensor::DType>,
}

/// Per-generation state of classifier-free guidance.
#[allow(clippy::large_enum_variant)] // one per generation
enum Guidance {
    Off,
    /// Reference way: `[x; x_uncond]` in one batched forward, every step.
    Batched,
    /// dLLM-Cache way: separate unconditional pass with its own policy and cache.
    Cached {
        interval: usize,
        policy: Box<dyn CachePolicy>,
        cache: FeatureCache,
        forwards: usize,
        residual: Option<Tensor<3>>,
    },
}

impl LladaSampler {
    /// The settings.
    pub fn config(&self) -> &LladaSamplerConfig {
        &self.config
    }

    /// Records what every layer of every forward did, delivered in [`StepEvent::forwards`].
    pub fn with_layer_trace(mut self, on: bool) -> Self {
        self.trace_layers = on;
        self
    }

    /// Stores cached features as `dtype` (`BF16` or `F16`: half the cache memory of float32
    /// activations, each reused feature widened back and carrying its rounding; `F32`: as
    /// they come). See [`FeatureCache::with_dtype`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `dtype` is `F32`, `BF16` or `F16`.
    pub fn with_cache_dtype(mut self, dtype: burn::tensor::DType) -> Result<Self> {
        self.cache_dtype = Some(crate::cache::check_cache_dtype(dtype)?);
        Ok(self)
    }

    /// Generates `gen_length` tokens after each prompt. Prompts may differ in length: they are
    /// left-padded with the pad token to the longest, padding is hidden from attention and
    /// rotary positions count from each row's first real token, so every row generates what it
    /// would alone. The returned sequences keep the padding.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty batch, an empty prompt or a prompt holding the
    /// mask token; [`Error::SequenceTooLong`];
    /// [`Error::TokenOutOfRange`]; errors of the model or the policy.
    pub fn generate(
        &self,
        model: &dyn Denoiser,
        prompts: &[Vec<u32>],
        policy: &mut dyn CachePolicy,
    ) -> Result<GenerationOutput> {
        self.generate_with(model, prompts, policy, &mut |_| ControlFlow::Continue(()))
    }

    /// As [`generate`](Self::generate), calling `on_step` after every step; returning
    /// [`ControlFlow::Break`] stops the generation (the output keeps the remaining masks).
    ///
    /// # Errors
    /// As [`generate`](Self::generate).
    pub fn generate_with(
        &self,
        model: &dyn Denoiser,
        prompts: &[Vec<u32>],
        policy: &mut dyn CachePolicy,
        on_step: &mut OnStep<'_>,
    ) -> Result<GenerationOutput> {
        let started = Instant::now();
        let c = &self.config;
        let special = model.special_tokens();
        let super::Batch {
            prompt_len: p,
            pads,
            mut seqs,
        } = super::prepare_batch(model, prompts, c.gen_length)?;
        let g = c.gen_length;
        let blocks = g / c.block_length;
        let steps_per_block = c.steps / blocks;

        policy.reset();
        let mut cache = FeatureCache::for_dtype(self.cache_dtype);
        let mut flops = FlopCounter::new();
        let mut guidance = if c.cfg_scale > 0.0 {
            match policy.guidance_interval() {
                None => Guidance::Batched,
                Some(interval) => Guidance::Cached {
                    interval,
                    policy: policy.fork(),
                    cache: FeatureCache::for_dtype(self.cache_dtype),
                    forwards: 0,
                    residual: None,
                },
            }
        } else {
            Guidance::Off
        };
        let mut rng = SplitMix64::new(c.seed);
        let mut stats = GenerationStats::default();
        let mut step = 0;

        let adaptive = c.commit.is_adaptive();
        let stops = Stops::new(&c.stop_tokens, special.mask, p, seqs.len());
        let mut stopped = false;
        'blocks: for block in 0..blocks {
            let lo = p + block * c.block_length;
            let hi = lo + c.block_length;
            // Each row's schedule comes from its mask count at the block's first step.
            let block_masks: Vec<usize> = seqs
                .iter()
                .map(|r| r[lo..hi].iter().filter(|&&t| t == special.mask).count())
                .collect();
            let mut i = 0;
            loop {
                // The fixed schedule runs every step of the block, as the reference does; the
                // adaptive rules stop a block once no row has a mask left in it (tested before
                // each forward, as Fast-dLLM's functions do).
                let block_open = seqs
                    .iter()
                    .enumerate()
                    .any(|(r, s)| !stops.done(r, s) && s[lo..hi].contains(&special.mask));
                if (adaptive && !block_open) || (!adaptive && i == steps_per_block) {
                    break;
                }
                let mut forwards = Vec::new();
                let info = StepInfo::new(step, p, g).with_block(BlockInfo::new(block, lo, hi, i));
                let logits = self.step_logits(
                    model,
                    &seqs,
                    &pads,
                    info,
                    policy,
                    &mut cache,
                    &mut guidance,
                    &mut flops,
                    &mut forwards,
                )?;
                let (x0, conf) = self.decide(logits, &special, &mut rng, adaptive)?;
                let width = hi - lo;
                let mut committed = Vec::with_capacity(seqs.len());
                for (r, row) in seqs.iter_mut().enumerate() {
                    if stops.done(r, row) {
                        committed.push(Vec::new());
                        continue;
                    }
                    let mut candidates: Vec<usize> = (0..width)
                        .filter(|&j| row[lo + j] == special.mask)
                        .collect();
                    candidates.sort_by(|&a, &b| {
                        conf[r * width + b]
                            .total_cmp(&conf[r * width + a])
                            .then(a.cmp(&b))
                    });
                    let sorted: Vec<f64> =
                        candidates.iter().map(|&j| conf[r * width + j]).collect();
                    let scheduled = transfer_count(block_masks[r], steps_per_block, i);
                    candidates.truncate(c.commit.count(&sorted, scheduled));
                    let commits: Vec<Commit> = candidates
                        .into_iter()
                        .map(|j| {
                            let token = x0[r * width + j];
                            row[lo + j] = token;
                            Commit {
                                position: lo + j,
                                token,
                                confidence: conf[r * width + j] as f32,
                            }
                        })
                        .collect();
                    committed.push(commits);
                }
                let guidance_bytes = match &guidance {
                    Guidance::Cached { cache, .. } => cache.bytes(),
                    _ => 0,
                };
                stats.peak_cache_bytes = stats.peak_cache_bytes.max(cache.bytes() + guidance_bytes);
                step += 1;
                i += 1;
                let event = StepEvent {
                    step: step - 1,
                    total_steps: if adaptive { g.max(c.steps) } else { c.steps },
                    block,
                    prompt_len: p,
                    committed: &committed,
                    sequences: &seqs,
                    forwards: &forwards,
                    stopped: stops.flags(),
                };
                if on_step(&event).is_break() || stops.all_done(&seqs) {
                    stats.block_steps.push(i);
                    stopped = true;
                    break 'blocks;
                }
            }
            stats.block_steps.push(i);
        }
        stats.stopped_early = stopped
            && (stops.any_stopped()
                || if adaptive {
                    seqs.iter().any(|r| r[p..].contains(&special.mask))
                } else {
                    step < c.steps
                });
        stats.steps = step;
        stats.forwards = flops.forwards as usize;
        stats.flops = flops;
        stats.wall_time = started.elapsed();
        Ok(GenerationOutput {
            sequences: seqs,
            prompt_len: p,
            stats,
        })
    }

    /// The (guided) logits of rows `block` for this step, `[batch, block_len, vocab]`.
    #[allow(clippy::too_many_arguments)]
    fn step_logits(
        &self,
        model: &dyn Denoiser,
        seqs: &[Vec<u32>],
        pads: &[usize],
        info: StepInfo,
        policy: &mut dyn CachePolicy,
        cache: &mut FeatureCache,
        guidance: &mut Guidance,
        flops: &mut FlopCounter,
        forwards: &mut Vec<ForwardTrace>,
    ) -> Result<Tensor<3>> {
        let b = seqs.len();
        let scale = self.config.cfg_scale;
        let mask = model.special_tokens().mask;
        let (p, step) = (info.prompt_len, info.index);
        let block = match info.block {
            Some(blk) => blk.start..blk.end,
            None => p..p + info.response_len,
        };
        let uncond = || -> Vec<Vec<u32>> {
            seqs.iter()
                .map(|r| {
                    let mut u = r.clone();
                    u[..p].fill(mask);
                    u
                })
                .collect()
        };
        let block_of_step = info.block;
        let mut run = |rows: &[Vec<u32>],
                       policy: &mut dyn CachePolicy,
                       cache: &mut FeatureCache,
                       index: usize,
                       pass: Pass,
                       logit_rows: std::ops::Range<usize>|
         -> Result<Tensor<3>> {
            let mut info = StepInfo::new(index, p, rows[0].len() - p);
            info.block = block_of_step;
            let mut layers = Vec::new();
            // Batched guidance runs the unconditional copies of the rows after the rows.
            let row_pads: Vec<usize> = pads.iter().cycle().take(rows.len()).copied().collect();
            let width = logit_rows.len();
            let mut ctx = StepContext::new(info, policy, cache, flops)
                .with_logit_rows(logit_rows)
                .with_left_padding(&row_pads);
            if self.trace_layers {
                ctx = ctx.with_trace(&mut layers);
            }
            let out = model.forward(tokens_tensor(rows, &model.device()), &mut ctx)?;
            validate_logits(&out, rows.len(), width, model.vocab_size())?;
            if self.trace_layers {
                forwards.push(ForwardTrace {
                    pass,
                    index,
                    info,
                    layers,
                });
            }
            Ok(out)
        };
        match guidance {
            Guidance::Off => run(seqs, policy, cache, step, Pass::Conditional, block),
            Guidance::Batched => {
                let mut both = seqs.to_vec();
                both.extend(uncond());
                let logits = run(&both, policy, cache, step, Pass::Conditional, block)?;
                let cond = logits.clone().narrow(0, 0, b);
                let un = logits.narrow(0, b, b);
                Ok(un.clone() + (cond - un) * (scale + 1.0))
            }
            Guidance::Cached {
                interval,
                policy: un_policy,
                cache: un_cache,
                forwards: un_forwards,
                residual,
            } => {
                // The residual is reused across blocks, so it covers the whole response.
                let seq = seqs[0].len();
                let refresh = unconditional_due(step, *interval) || residual.is_none();
                let cond = run(seqs, policy, cache, step, Pass::Conditional, p..seq)?;
                if refresh {
                    let un = run(
                        &uncond(),
                        un_policy.as_mut(),
                        un_cache,
                        *un_forwards,
                        Pass::Unconditional,
                        p..seq,
                    )?;
                    *un_forwards += 1;
                    *residual = Some(cond.clone() - un);
                }
                let r = residual.clone().expect("set on the first step");
                let logits = (cond - r.clone()) + r * (scale + 1.0);
                Ok(logits.narrow(1, block.start - p, block.end - block.start))
            }
        }
    }

    /// Predicted token and confidence of every row of the block, row-major `[batch, width]`.
    /// `exact` asks for the confidences of the adaptive commit rules: the softmax of the
    /// float32 logits evaluated in float64, as Fast-dLLM compares them (computed on the host);
    /// otherwise the fixed schedule's float32 confidences of the reference sampler.
    fn decide(
        &self,
        logits: Tensor<3>,
        special: &crate::denoiser::SpecialTokens,
        rng: &mut SplitMix64,
        exact: bool,
    ) -> Result<(Vec<u32>, Vec<f64>)> {
        let c = &self.config;
        let [b, width, vocab] = logits.dims();
        let device = logits.device();
        let column_bias = |cols: &[u32]| -> Tensor<3> {
            let mut bias = vec![0f32; vocab];
            for &col in cols {
                if (col as usize) < vocab {
                    bias[col as usize] = f32::NEG_INFINITY;
                }
            }
            Tensor::<1>::from_data(TensorData::new(bias, [vocab]), &device).reshape([1, 1, vocab])
        };
        let logits = if c.logits_eos_inf {
            logits + column_bias(&[special.eos])
        } else {
            logits
        };
        // Columns the reference sets to -inf in the logits its softmax reads (see module docs).
        let confidence_cols: Vec<u32> = match (c.confidence_eos_eot_inf, c.eot_token_id) {
            (true, Some(eot)) if c.temperature == 0.0 => vec![special.eos, eot],
            (true, Some(eot)) => vec![eot],
            _ => Vec::new(),
        };

        if c.temperature > 0.0 || exact {
            return self.decide_on_host(logits, &confidence_cols, rng, exact);
        }
        let x0 = logits.clone().argmax(2); // [b, width, 1]
        let x0_host: Vec<u32> = x0
            .clone()
            .try_into_vec_as::<i64>()
            .map_err(backend_err)?
            .into_iter()
            .map(|t| t as u32)
            .collect();
        let conf = match c.remasking {
            Remasking::Random => (0..b * width)
                .map(|_| rng.uniform() as f32 as f64)
                .collect(),
            Remasking::LowConfidence => {
                let l = if confidence_cols.is_empty() {
                    logits
                } else {
                    logits + column_bias(&confidence_cols)
                };
                // softmax(l)[x0] = exp(l[x0] - max) / sum(exp(l - max))
                let max = l.clone().max_dim(2);
                let sum = (l.clone() - max.clone()).exp().sum_dim(2);
                let picked = l.gather(2, x0);
                ((picked - max).exp() / sum)
                    .try_into_vec_as::<f32>()
                    .map_err(backend_err)?
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
        };
        Ok((x0_host, conf))
    }

    /// The host path, row-major over `[batch, width, vocab]`: Gumbel-max temperature sampling
    /// in float64 (at temperature 0 the plain argmax, first index on ties, like `argmax`), and
    /// the chosen token's softmax probability, with `exact` computed wholly in float64.
    fn decide_on_host(
        &self,
        logits: Tensor<3>,
        confidence_cols: &[u32],
        rng: &mut SplitMix64,
        exact: bool,
    ) -> Result<(Vec<u32>, Vec<f64>)> {
        let c = &self.config;
        let [b, width, vocab] = logits.dims();
        let host = logits.try_into_vec_as::<f32>().map_err(backend_err)?;
        let mut x0 = Vec::with_capacity(b * width);
        let mut conf = Vec::with_capacity(b * width);
        let masked = |j: usize| confidence_cols.contains(&(j as u32));
        for row in host.chunks_exact(vocab) {
            let best = if c.temperature > 0.0 {
                let mut best = (f64::NEG_INFINITY, 0usize);
                for (j, &l) in row.iter().enumerate() {
                    let noise = (-rng.uniform().ln()).powf(c.temperature);
                    let v = (l as f64).exp() / noise;
                    if v > best.0 {
                        best = (v, j);
                    }
                }
                best.1
            } else {
                row.iter()
                    .enumerate()
                    .fold((f32::NEG_INFINITY, 0usize), |acc, (j, &v)| {
                        if v > acc.0 { (v, j) } else { acc }
                    })
                    .1
            };
            x0.push(best as u32);
            conf.push(match c.remasking {
                Remasking::Random => 0.0, // drawn below, after all Gumbel draws of the step
                Remasking::LowConfidence if masked(best) => 0.0,
                Remasking::LowConfidence => {
                    let kept = || row.iter().enumerate().filter(|(j, _)| !masked(*j));
                    let max = kept().fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
                    if exact {
                        // softmax(logits.to(float64)): the differences themselves in float64.
                        let (max, top) = (max as f64, row[best] as f64);
                        let sum: f64 = kept().map(|(_, &v)| (v as f64 - max).exp()).sum();
                        (top - max).exp() / sum
                    } else {
                        let sum: f64 = kept().map(|(_, &v)| ((v - max) as f64).exp()).sum();
                        (((row[best] - max) as f64).exp() / sum) as f32 as f64
                    }
                }
            });
        }
        if c.remasking == Remasking::Random {
            for v in conf.iter_mut() {
                *v = if exact {
                    rng.uniform()
                } else {
                    rng.uniform() as f32 as f64
                };
            }
        }
        Ok((x0, conf))
    }
}
