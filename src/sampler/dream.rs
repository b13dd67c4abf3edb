//! Dream's sampler (`diffusion_generate` of Dream's `generation_utils.py`).
//!
//! The response (`max_new_tokens` masks after the prompt) is unmasked over `steps` steps along
//! the float32 schedule `timesteps = linspace(1, eps, steps + 1)`. At step `i` with
//! `t = timesteps[i]`, `s = timesteps[i + 1]`:
//!
//! * [`DreamAlg::Origin`]: every masked position is committed independently with probability
//!   `1 - s / t` (1 at the last step), with a token sampled from its distribution;
//! * [`DreamAlg::MaskgitPlus`], [`DreamAlg::TopkMargin`], [`DreamAlg::Entropy`]: every masked
//!   position gets a token and a confidence (top probability, top-1 minus top-2 probability,
//!   or negative entropy `sum p log(p + 1e-10)`); `int(n * (1 - s / t))` positions are
//!   committed per row (`n` = masks per row averaged over the batch, all remaining masks at the
//!   last step), the most confident ones, or sampled from `softmax(confidence / alg_temp)` when
//!   `alg_temp > 0`.
//!
//! Tokens are argmax at temperature 0, else sampled after temperature scaling and optional
//! top-p / top-k filtering. All float arithmetic of the schedule is float32, as in the
//! reference, so that `int()` truncates identically.
//!
//! Prompts of different lengths are left-padded with the pad token; padding is hidden from
//! attention and positions count from each row's first real token, as Dream's own code does
//! with an attention mask (dLLM-Cache's Dream hook drops that mask; this crate does not).
//!
//! One deviation: when a batch row has fewer masks than the per-row count (rows with different
//! mask counts), the reference's top-k also picks unmasked positions and writes the mask token
//! there; this sampler commits only that row's masked positions.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::config::Config;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::commit::CommitRule;
use super::{
    Commit, ForwardTrace, GenerationOutput, GenerationStats, OnStep, Pass, StepEvent, Stops,
    backend_err, tokens_tensor, validate_logits, validate_steps,
};
use crate::cache::{BlockInfo, CachePolicy, FeatureCache, StepInfo};
use crate::denoiser::{Denoiser, StepContext};
use crate::error::{Error, Result};
use crate::flops::FlopCounter;
use crate::rng::SplitMix64;

/// How Dream picks the positions to commit at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DreamAlg {
    /// Random positions, each with probability `1 - s/t` (`"origin"`).
    Origin,
    /// Highest top probability (`"maskgit_plus"`).
    MaskgitPlus,
    /// Largest top-1 minus top-2 probability (`"topk_margin"`).
    TopkMargin,
    /// Lowest entropy (`"entropy"`, the dLLM-Cache evaluation default).
    Entropy,
}

impl std::str::FromStr for DreamAlg {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "origin" => Ok(Self::Origin),
            "maskgit_plus" => Ok(Self::MaskgitPlus),
            "topk_margin" => Ok(Self::TopkMargin),
            "entropy" => Ok(Self::Entropy),
            other => Err(Error::invalid(
                "alg",
                format!("`{other}` (expected origin, maskgit_plus, topk_margin or entropy)"),
            )),
        }
    }
}

/// Settings of the Dream sampler, named as in `diffusion_generate`.
#[derive(Config, Debug, PartialEq)]
#[non_exhaustive]
pub struct DreamSamplerConfig {
    /// Denoising steps.
    #[config(default = 512)]
    pub steps: usize,
    /// Response length in tokens.
    #[config(default = 512)]
    pub max_new_tokens: usize,
    /// Final timestep of the schedule, in (0, 1).
    #[config(default = 1e-3)]
    pub eps: f64,
    /// Position selection rule.
    #[config(default = "DreamAlg::Origin")]
    pub alg: DreamAlg,
    /// Token sampling temperature; 0 is greedy.
    #[config(default = 0.0)]
    pub temperature: f64,
    /// Nucleus filtering: keep the smallest set of tokens whose probability reaches `top_p`.
    #[config(default = "None")]
    pub top_p: Option<f64>,
    /// Keep only the `top_k` most likely tokens.
    #[config(default = "None")]
    pub top_k: Option<usize>,
    /// Temperature of position sampling for the confidence algorithms; `None` or 0 picks the
    /// most confident positions.
    #[config(default = "None")]
    pub alg_temp: Option<f64>,
    /// Seed of the generator used for all random draws.
    #[config(default = 0)]
    pub seed: u64,
    /// Per-row early stop: a row whose committed prefix reaches one of these tokens commits
    /// nothing more, and the generation ends when every row has. Empty: run every step.
    #[config(default = "Vec::new()")]
    pub stop_tokens: Vec<u32>,
    /// `Some(n)`: Fast-dLLM's block sampler (`generation_utils_block.py`) with blocks of `n`
    /// tokens: each block's first step commits only its first position, the others follow
    /// `commit` (the schedule ranks by negative entropy whatever `alg` says, as the official
    /// code does). `None`: Dream's own sampler.
    #[config(default = "None")]
    pub block_length: Option<usize>,
    /// How many candidates a step commits: the schedule (`alg`'s rule), or Fast-dLLM's
    /// threshold or factor rule. Without blocks an adaptive rule is Fast-dLLM's no-cache
    /// parallel sampler: each step ranks the top `max_new_tokens / steps` masks plus those
    /// rejected before, commits what the rule keeps, and steps are added until none is left.
    #[config(default = "CommitRule::Schedule")]
    pub commit: CommitRule,
}

impl DreamSamplerConfig {
    /// Validates the settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero steps or tokens, `eps` outside (0, 1), a negative or
    /// non-finite temperature or `alg_temp`, `top_p` outside (0, 1], or `top_k` of 0.
    pub fn init(&self) -> Result<DreamSampler> {
        validate_steps(self.steps)?;
        if self.max_new_tokens == 0 {
            return Err(Error::invalid("max_new_tokens", "must be at least 1"));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(Error::invalid(
                "eps",
                format!("must be in (0, 1), got {}", self.eps),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("must be finite and >= 0, got {}", self.temperature),
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::invalid(
                "top_p",
                format!("must be in (0, 1], got {p}"),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k", "must be at least 1"));
        }
        if let Some(a) = self.alg_temp
            && !(a.is_finite() && a >= 0.0)
        {
            return Err(Error::invalid(
                "alg_temp",
                format!("must be finite and >= 0, got {a}"),
            ));
        }
        self.commit.validate()?;
        let g = self.max_new_tokens;
        match self.block_length {
            Some(0) => return Err(Error::invalid("block_length", "must be at least 1")),
            Some(n) if !g.is_multiple_of(n) => {
                return Err(Error::invalid(
                    "block_length",
                    format!("{n} does not divide max_new_tokens {g}"),
                ));
            }
            Some(n) if !self.steps.is_multiple_of(g / n) => {
                return Err(Error::invalid(
                    "steps",
                    format!("{} is not a multiple of the {} blocks", self.steps, g / n),
                ));
            }
            None if self.commit.is_adaptive() && !g.is_multiple_of(self.steps) => {
                return Err(Error::invalid(
                    "steps",
                    format!(
                        "{} does not divide max_new_tokens {g} (the parallel sampler's quota)",
                        self.steps
                    ),
                ));
            }
            _ => {}
        }
        Ok(DreamSampler {
            config: self.clone(),
            trace_layers: false,
            cache_dtype: None,
        })
    }
}

/// `torch.linspace(1, eps, steps + 1)` in float32, computed as PyTorch's CPU kernel does:
/// from the start for the first half, from the end for the second, each value one fused
/// multiply-add (checked bit for bit against the recorded schedules of the golden set). The
/// sampler computes entries one at a time with [`dream_timestep`].
pub fn dream_timesteps(steps: usize, eps: f64) -> Vec<f32> {
    (0..=steps).map(|i| dream_timestep(steps, eps, i)).collect()
}

/// Entry `i` (`0..=steps`) of [`dream_timesteps`]`(steps, eps)`.
pub fn dream_timestep(steps: usize, eps: f64, i: usize) -> f32 {
    let (start, end) = (1.0f32, eps as f32);
    if steps == 0 {
        return start;
    }
    let step = (end - start) / steps as f32;
    // The first half, `i < (steps + 1) / 2`, counts from the start.
    if i < steps.div_ceil(2) {
        step.mul_add(i as f32, start)
    } else {
        (-step).mul_add(steps.saturating_sub(i) as f32, end)
    }
}

/// Tokens per row committed at a step of a confidence algorithm:
/// `int(masks_per_row * (1 - s / t))` in float32, or `int(masks_per_row)` at the last step.
pub fn dream_transfer_count(masks_per_row: f32, t: f32, s: f32, last: bool) -> usize {
    if last {
        masks_per_row as usize
    } else {
        (masks_per_row * (1.0f32 - s / t)) as usize
    }
}

/// The Dream sampler. Build it with [`DreamSamplerConfig::init`].
#[derive(Debug, Clone)]
pub struct DreamSampler {
    config: DreamSamplerConfig,
    trace_layers: bool,
    /// Storage type of the feature cache; `None`: the activations' type.
    cache_dtype: Option<burn::tensor::DType>,
}

impl DreamSampler {
    /// The settings.
    pub fn config(&self) -> &DreamSamplerConfig {
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

    /// Generates `max_new_tokens` tokens after each prompt. Prompts may differ in length; they
    /// are left-padded to the longest. The returned sequences keep that padding.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty batch or prompt, a prompt holding the mask token,
    /// or ragged prompts for a model whose pad and mask tokens coincide;
    /// [`Error::SequenceTooLong`];
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
    /// [`ControlFlow::Break`] stops the generation.
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
        let super::Batch {
            prompt_len: p,
            pads,
            mut seqs,
        } = super::prepare_batch(model, prompts, c.max_new_tokens)?;
        let mut run = Run {
            model,
            policy,
            pads: &pads,
            p,
            cache: FeatureCache::for_dtype(self.cache_dtype),
            flops: FlopCounter::new(),
            stats: GenerationStats::default(),
            rng: SplitMix64::new(c.seed),
            forwards_done: 0,
            trace: self.trace_layers,
            stops: Stops::new(&c.stop_tokens, model.special_tokens().mask, p, seqs.len()),
        };
        run.policy.reset();
        match (c.block_length, c.commit.is_adaptive()) {
            (None, false) => self.plain(&mut run, &mut seqs, on_step)?,
            (None, true) => self.parallel(&mut run, &mut seqs, on_step)?,
            (Some(n), _) => self.blocks(&mut run, &mut seqs, n, on_step)?,
        }
        let Run {
            mut stats, flops, ..
        } = run;
        stats.forwards = flops.forwards as usize;
        stats.flops = flops;
        stats.wall_time = started.elapsed();
        Ok(GenerationOutput {
            sequences: seqs,
            prompt_len: p,
            stats,
        })
    }

    /// Dream's own sampler: `steps` steps along `linspace(1, eps, steps + 1)`, `alg`'s rule.
    fn plain(
        &self,
        run: &mut Run<'_>,
        seqs: &mut [Vec<u32>],
        on_step: &mut OnStep<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let special = run.model.special_tokens();
        let (p, g, b) = (run.p, c.max_new_tokens, seqs.len());
        for i in 0..c.steps {
            let masked: Vec<Vec<usize>> = seqs
                .iter()
                .map(|r| (p..p + g).filter(|&j| r[j] == special.mask).collect())
                .collect();
            let total_masks: usize = masked.iter().map(Vec::len).sum();
            let mut forwards = Vec::new();
            let mut committed = vec![Vec::new(); b];
            // A step without masks changes nothing; skip its forward.
            if total_masks > 0 {
                let info = StepInfo::new(run.forwards_done, p, g);
                let logits = run.forward(seqs, info, p..p + g, &mut forwards)?;
                let (x0, conf) = self.score(logits, c.alg, &mut run.rng)?;
                let (t, s) = (
                    dream_timestep(c.steps, c.eps, i),
                    dream_timestep(c.steps, c.eps, i + 1),
                );
                let last = i + 1 == c.steps;
                let rng = &mut run.rng;
                let chosen: Vec<Vec<usize>> = match c.alg {
                    DreamAlg::Origin => {
                        let p_transfer = if last { 1.0f32 } else { 1.0f32 - s / t };
                        // The last step commits every mask; its draws are still taken so that
                        // the stream is the same (a draw rounded to 1.0f32 would otherwise
                        // leave a mask, about once in 2^25).
                        masked
                            .iter()
                            .map(|row| {
                                row.iter()
                                    .copied()
                                    .filter(|_| (rng.uniform() as f32) < p_transfer || last)
                                    .collect()
                            })
                            .collect()
                    }
                    _ => {
                        let per_row = total_masks as f32 / b as f32;
                        let k = dream_transfer_count(per_row, t, s, last);
                        masked
                            .iter()
                            .enumerate()
                            .map(|(r, row)| self.pick(row, &conf[r * g..(r + 1) * g], p, k, rng))
                            .collect()
                    }
                };
                let scored = Scored {
                    x0: &x0,
                    conf: &conf,
                    offset: p,
                    width: g,
                };
                committed = commit(seqs, &chosen, &scored, &run.stops);
            }
            run.book_step();
            let event = StepEvent {
                step: i,
                total_steps: c.steps,
                block: 0,
                prompt_len: p,
                committed: &committed,
                sequences: seqs,
                forwards: &forwards,
                stopped: run.stops.flags(),
            };
            if run.end_step(event, on_step) {
                run.stats.stopped_early = i + 1 < c.steps;
                break;
            }
        }
        run.stats.block_steps.push(run.stats.steps);
        Ok(())
    }

    /// Fast-dLLM's no-cache parallel sampler (`generation_utils.py`, `alg =
    /// "confidence_threshold"`): per step and row a window of the `max_new_tokens / steps`
    /// most confident masks plus the row's rejected count so far; the commit rule keeps some of
    /// the window and the rest carry over. When the last step rejects any, the quota becomes 0
    /// and a step is added, until nothing is left.
    fn parallel(
        &self,
        run: &mut Run<'_>,
        seqs: &mut [Vec<u32>],
        on_step: &mut OnStep<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let special = run.model.special_tokens();
        let (p, g, b) = (run.p, c.max_new_tokens, seqs.len());
        // The rule compares float32 confidences with the threshold rounded to float32.
        let rule = match c.commit {
            CommitRule::Threshold(t) => CommitRule::Threshold(t as f32 as f64),
            other => other,
        };
        let mut quota = g / c.steps;
        let mut left = vec![0usize; b];
        let mut steps = c.steps;
        let mut i = 0;
        while i < steps {
            let masked: Vec<Vec<usize>> = seqs
                .iter()
                .map(|r| (p..p + g).filter(|&j| r[j] == special.mask).collect())
                .collect();
            if masked.iter().all(Vec::is_empty) {
                break;
            }
            let mut forwards = Vec::new();
            let info = StepInfo::new(run.forwards_done, p, g);
            let logits = run.forward(seqs, info, p..p + g, &mut forwards)?;
            let (x0, conf) = self.score(logits, DreamAlg::MaskgitPlus, &mut run.rng)?;
            let mut chosen = Vec::with_capacity(b);
            let mut rejected = false;
            for (r, row) in masked.iter().enumerate() {
                let conf_r = &conf[r * g..(r + 1) * g];
                let mut order = row.clone();
                order.sort_by(|&a, &b| conf_r[b - p].total_cmp(&conf_r[a - p]).then(a.cmp(&b)));
                order.truncate((quota + left[r]).min(row.len()));
                let sorted: Vec<f64> = order.iter().map(|&j| conf_r[j - p] as f64).collect();
                let keep = rule.count(&sorted, order.len());
                left[r] = order.len() - keep;
                rejected |= left[r] > 0;
                order.truncate(keep);
                chosen.push(order);
            }
            if i + 1 == steps && rejected {
                quota = 0;
                steps += 1;
            }
            let scored = Scored {
                x0: &x0,
                conf: &conf,
                offset: p,
                width: g,
            };
            let committed = commit(seqs, &chosen, &scored, &run.stops);
            run.book_step();
            let event = StepEvent {
                step: i,
                total_steps: steps,
                block: 0,
                prompt_len: p,
                committed: &committed,
                sequences: seqs,
                forwards: &forwards,
                stopped: run.stops.flags(),
            };
            i += 1;
            if run.end_step(event, on_step) {
                run.stats.stopped_early = seqs.iter().any(|r| r[p..].contains(&special.mask));
                break;
            }
        }
        run.stats.block_steps.push(run.stats.steps);
        Ok(())
    }

    /// Fast-dLLM's block sampler (`generation_utils_block.py`): blocks of `n` left to right;
    /// each block's first step commits its first position (argmax, no threshold); then the
    /// commit rule over the block's masks until none is left, or, under the schedule, inner
    /// steps `i = 1..` with `timesteps = linspace(1, eps, steps / blocks + 1)` committing
    /// `int(masks_in_block * (1 - s / t))` by negative entropy (all at `i = steps/blocks - 1`).
    /// As the official code, a schedule step `i = steps / blocks` runs its forward and then
    /// stops the block (only reachable with one step per block).
    fn blocks(
        &self,
        run: &mut Run<'_>,
        seqs: &mut [Vec<u32>],
        n: usize,
        on_step: &mut OnStep<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let special = run.model.special_tokens();
        let (p, g, b) = (run.p, c.max_new_tokens, seqs.len());
        let blocks = g / n;
        let steps_per_block = c.steps / blocks;
        let rule = match c.commit {
            CommitRule::Threshold(t) => CommitRule::Threshold(t as f32 as f64),
            other => other,
        };
        let mut step = 0;
        'blocks: for block in 0..blocks {
            let (lo, hi) = (p + block * n, p + (block + 1) * n);
            let mut i = 0;
            loop {
                let open = seqs
                    .iter()
                    .enumerate()
                    .any(|(r, s)| !run.stops.done(r, s) && s[lo..hi].contains(&special.mask));
                if !open {
                    break;
                }
                let mut forwards = Vec::new();
                let info = StepInfo::new(run.forwards_done, p, g)
                    .with_block(BlockInfo::new(block, lo, hi, i));
                let logits = run.forward(seqs, info, lo..hi, &mut forwards)?;
                let schedule_end = !rule.is_adaptive() && i == steps_per_block;
                // The block start commits by argmax and reports its probability; the schedule
                // ranks the other steps by negative entropy, the adaptive rules by probability.
                let kind = if i == 0 || rule.is_adaptive() {
                    DreamAlg::MaskgitPlus
                } else {
                    DreamAlg::Entropy
                };
                let (x0, conf) = self.score(logits, kind, &mut run.rng)?;
                let masked: Vec<Vec<usize>> = seqs
                    .iter()
                    .map(|r| (lo..hi).filter(|&j| r[j] == special.mask).collect())
                    .collect();
                let chosen: Vec<Vec<usize>> = if schedule_end {
                    vec![Vec::new(); b]
                } else if i == 0 {
                    masked
                        .iter()
                        .map(|row| row.iter().copied().filter(|&j| j == lo).collect())
                        .collect()
                } else {
                    let per_row = masked.iter().map(Vec::len).sum::<usize>() as f32 / b as f32;
                    let scheduled = if rule.is_adaptive() {
                        0
                    } else {
                        let (t, s) = (
                            dream_timestep(steps_per_block, c.eps, i),
                            dream_timestep(steps_per_block, c.eps, i + 1),
                        );
                        dream_transfer_count(per_row, t, s, i + 1 == steps_per_block)
                    };
                    masked
                        .iter()
                        .enumerate()
                        .map(|(r, row)| {
                            let conf_r = &conf[r * n..(r + 1) * n];
                            let mut order = row.clone();
                            order.sort_by(|&a, &b| {
                                conf_r[b - lo].total_cmp(&conf_r[a - lo]).then(a.cmp(&b))
                            });
                            let sorted: Vec<f64> =
                                order.iter().map(|&j| conf_r[j - lo] as f64).collect();
                            order.truncate(rule.count(&sorted, scheduled));
                            order
                        })
                        .collect()
                };
                let scored = Scored {
                    x0: &x0,
                    conf: &conf,
                    offset: lo,
                    width: n,
                };
                let committed = commit(seqs, &chosen, &scored, &run.stops);
                run.book_step();
                let event = StepEvent {
                    step,
                    total_steps: if rule.is_adaptive() {
                        g.max(c.steps)
                    } else {
                        c.steps
                    },
                    block,
                    prompt_len: p,
                    committed: &committed,
                    sequences: seqs,
                    forwards: &forwards,
                    stopped: run.stops.flags(),
                };
                step += 1;
                i += 1;
                if run.end_step(event, on_step) {
                    run.stats.block_steps.push(i);
                    run.stats.stopped_early = seqs.iter().any(|r| r[p..].contains(&special.mask));
                    break 'blocks;
                }
                if schedule_end {
                    break;
                }
            }
            run.stats.block_steps.push(i);
        }
        Ok(())
    }

    /// The positions among `masked` (absolute) to commit, by confidence.
    fn pick(
        &self,
        masked: &[usize],
        conf: &[f32],
        p: usize,
        k: usize,
        rng: &mut SplitMix64,
    ) -> Vec<usize> {
        let k = k.min(masked.len());
        if k == 0 {
            return Vec::new();
        }
        match self.config.alg_temp {
            Some(temp) if temp > 0.0 => {
                // softmax(confidence / alg_temp) over the masked positions, k draws without
                // replacement.
                let scores: Vec<f64> = masked.iter().map(|&j| conf[j - p] as f64 / temp).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut weights: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let mut out = Vec::with_capacity(k);
                for _ in 0..k {
                    let total: f64 = weights.iter().sum();
                    let mut u = rng.uniform() * total;
                    let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                    for (idx, &w) in weights.iter().enumerate() {
                        if u < w {
                            pick = idx;
                            break;
                        }
                        u -= w;
                    }
                    out.push(masked[pick]);
                    weights[pick] = 0.0;
                }
                out
            }
            _ => {
                let mut order = masked.to_vec();
                order.sort_by(|&a, &b| conf[b - p].total_cmp(&conf[a - p]).then(a.cmp(&b)));
                order.truncate(k);
                order
            }
        }
    }

    /// Token and confidence of every response row, row-major `[batch, rows]`.
    fn score(
        &self,
        logits: Tensor<3>,
        alg: DreamAlg,
        rng: &mut SplitMix64,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let c = &self.config;
        let filtered = c.top_p.is_some_and(|p| p < 1.0) || c.top_k.is_some();
        if c.temperature > 0.0 || filtered {
            return self.score_on_host(logits, alg, rng);
        }
        let x0 = logits.clone().argmax(2);
        let max = logits.clone().max_dim(2);
        let e = (logits.clone() - max.clone()).exp();
        let sum = e.clone().sum_dim(2);
        let conf = match alg {
            // softmax's largest entry: exp(0) / sum.
            DreamAlg::Origin | DreamAlg::MaskgitPlus => sum.recip(),
            DreamAlg::TopkMargin => {
                let top2 = logits.topk(2, 2).narrow(2, 1, 1);
                sum.clone().recip() - (top2 - max).exp() / sum
            }
            DreamAlg::Entropy => {
                let probs = e / sum;
                (probs.clone() * (probs + 1e-10).log()).sum_dim(2)
            }
        };
        let x0 = x0
            .try_into_vec_as::<i64>()
            .map_err(backend_err)?
            .into_iter()
            .map(|t| t as u32)
            .collect();
        let conf = conf.try_into_vec_as::<f32>().map_err(backend_err)?;
        Ok((x0, conf))
    }

    /// Temperature, top-p and top-k as the reference's `sample_tokens`, in float32 on the host.
    fn score_on_host(
        &self,
        logits: Tensor<3>,
        alg: DreamAlg,
        rng: &mut SplitMix64,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let c = &self.config;
        let [_, _, vocab] = logits.dims();
        let host = logits.try_into_vec_as::<f32>().map_err(backend_err)?;
        let mut x0 = Vec::with_capacity(host.len() / vocab);
        let mut conf = Vec::with_capacity(host.len() / vocab);
        let mut row = vec![0f32; vocab];
        for chunk in host.chunks_exact(vocab) {
            row.copy_from_slice(chunk);
            if c.temperature > 0.0 {
                let t = c.temperature as f32;
                row.iter_mut().for_each(|v| *v /= t);
            }
            if let Some(top_p) = c.top_p.filter(|&p| p < 1.0) {
                top_p_filter(&mut row, top_p as f32);
            }
            if let Some(k) = c.top_k {
                top_k_filter(&mut row, k);
            }
            let probs = softmax(&row);
            let (best, best_p) =
                probs
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc },
                    );
            let (token, p_token) = if c.temperature > 0.0 {
                let j = sample_categorical(&probs, rng);
                (j, probs[j])
            } else {
                (best, best_p)
            };
            x0.push(token as u32);
            conf.push(match alg {
                DreamAlg::Origin | DreamAlg::MaskgitPlus => p_token,
                DreamAlg::TopkMargin => {
                    let second = probs
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != best)
                        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
                    best_p - second
                }
                DreamAlg::Entropy => probs.iter().map(|&v| v * (v + 1e-10).ln()).sum(),
            });
        }
        Ok((x0, conf))
    }
}

/// The state one Dream generation carries from step to step.
struct Run<'a> {
    model: &'a dyn Denoiser,
    policy: &'a mut dyn CachePolicy,
    pads: &'a [usize],
    p: usize,
    cache: FeatureCache,
    flops: FlopCounter,
    stats: GenerationStats,
    rng: SplitMix64,
    forwards_done: usize,
    trace: bool,
    stops: Stops,
}

impl Run<'_> {
    /// One forward over `seqs` asking for the logits of `rows`, checked; traced if asked.
    fn forward(
        &mut self,
        seqs: &[Vec<u32>],
        info: StepInfo,
        rows: std::ops::Range<usize>,
        forwards: &mut Vec<ForwardTrace>,
    ) -> Result<Tensor<3>> {
        let width = rows.len();
        let mut layers = Vec::new();
        let mut ctx = StepContext::new(info, self.policy, &mut self.cache, &mut self.flops)
            .with_logit_rows(rows)
            .with_left_padding(self.pads);
        if self.trace {
            ctx = ctx.with_trace(&mut layers);
        }
        let logits = self
            .model
            .forward(tokens_tensor(seqs, &self.model.device()), &mut ctx)?;
        validate_logits(&logits, seqs.len(), width, self.model.vocab_size())?;
        if self.trace {
            forwards.push(ForwardTrace {
                pass: Pass::Conditional,
                index: self.forwards_done,
                info,
                layers,
            });
        }
        self.forwards_done += 1;
        Ok(logits)
    }

    /// Books a finished step.
    fn book_step(&mut self) {
        self.stats.peak_cache_bytes = self.stats.peak_cache_bytes.max(self.cache.bytes());
        self.stats.steps += 1;
    }

    /// Gives a finished step to the callback; whether the generation ends here (the callback
    /// stopped it, or every row is done).
    fn end_step(&self, event: StepEvent<'_>, on_step: &mut OnStep<'_>) -> bool {
        on_step(&event).is_break() || self.stops.all_done(event.sequences)
    }
}

/// A step's scores: per batch row, the token and confidence of `width` positions starting at
/// absolute position `offset`.
struct Scored<'a> {
    x0: &'a [u32],
    conf: &'a [f32],
    offset: usize,
    width: usize,
}

/// Writes the `chosen` positions (absolute) of every row that is not done.
fn commit(
    seqs: &mut [Vec<u32>],
    chosen: &[Vec<usize>],
    scored: &Scored<'_>,
    stops: &Stops,
) -> Vec<Vec<Commit>> {
    let mut committed = vec![Vec::new(); seqs.len()];
    for (r, positions) in chosen.iter().enumerate() {
        if stops.done(r, &seqs[r]) {
            continue;
        }
        for &j in positions {
            let at = r * scored.width + (j - scored.offset);
            seqs[r][j] = scored.x0[at];
            committed[r].push(Commit {
                position: j,
                token: scored.x0[at],
                confidence: scored.conf[at],
            });
        }
    }
    committed
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Keeps the most likely tokens whose cumulative probability first reaches `top_p`; the rest
/// get `f32::MIN` (the reference's `finfo.min`).
fn top_p_filter(row: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let sorted: Vec<f32> = order.iter().map(|&j| row[j]).collect();
    let probs = softmax(&sorted);
    let mut cum = 0f32;
    let mut remove = vec![false; row.len()];
    for (rank, &p) in probs.iter().enumerate() {
        cum += p;
        // Shifted right by one: the token that crosses the threshold is kept.
        if rank + 1 < remove.len() {
            remove[rank + 1] = cum > top_p;
        }
    }
    for (rank, &j) in order.iter().enumerate() {
        if remove[rank] {
            row[j] = f32::MIN;
        }
    }
}

/// Keeps tokens whose logit is at least the k-th largest.
fn top_k_filter(row: &mut [f32], k: usize) {
    let k = k.min(row.len());
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    row.iter_mut()
        .filter(|v| **v < kth)
        .for_each(|v| *v = f32::MIN);
}

fn sample_categorical(probs: &[f32], rng: &mut SplitMix64) -> usize {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let mut u = rng.uniform() * total;
    for (j, &p) in probs.iter().enumerate() {
        if u < p as f64 {
            return j;
        }
        u -= p as f64;
    }
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_run_from_one_to_eps() {
        let t = dream_timesteps(4, 0.001);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0], 1.0);
        assert_eq!(t[4], 0.001);
        assert!(t.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn first_step_of_a_one_token_per_step_schedule_commits_nothing() {
        // 256 masks over 256 steps: 256 * (1 - s/t) is just below 1 at the first step.
        let t = dream_timesteps(256, 1e-3);
        assert_eq!(dream_transfer_count(256.0, t[0], t[1], false), 0);
        assert_eq!(dream_transfer_count(2.0, t[255], t[256], true), 2);
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_the_threshold() {
        let mut row = vec![3.0, 2.0, 1.0, 0.0];
        top_p_filter(&mut row, 0.5);
        assert_eq!(row[0], 3.0); // p = 0.64 crosses 0.5 and is kept
        assert!(row[1..].iter().all(|&v| v == f32::MIN));
        let mut row = vec![1.0, 1.0, 1.0, 1.0];
        top_p_filter(&mut row, 0.6);
        assert_eq!(row.iter().filter(|&&v| v == f32::MIN).count(), 1);
    }

    #[test]
    fn top_k_keeps_k_best() {
        let mut row = vec![0.5, 2.0, 1.0, -1.0];
        top_k_filter(&mut row, 2);
        assert_eq!(row, vec![f32::MIN, 2.0, 1.0, f32::MIN]);
    }
}
