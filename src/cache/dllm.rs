//! dLLM-Cache (Liu et al., arXiv 2506.06295): long-interval prompt caching, short-interval
//! response caching, and V-verify partial refresh in between.
//!
//! Semantics follow the official code (maomaocun/dLLM-cache, `cache_hook_LLaDA.py` /
//! `cache_hook_Dream.py`) rather than the paper's prose where they differ:
//!
//! * forward passes are counted from 0 since the last reset; the prompt is recomputed at passes
//!   0, K_p, 2K_p, ... and the response at 0, K_r, 2K_r, ... (the code's 1-based
//!   `(n - 1) % K == 0`);
//! * with `refresh_first_layer` (the code's behaviour since July 2025, the default) layer 0
//!   recomputes both segments at every pass; the paper's FLOPs figures were computed without it;
//! * V-verify runs only when the response is not due, whether or not the prompt is: the fresh
//!   value projection of every response row replaces the cached one, and the
//!   `floor(rho * G)` rows whose fresh and cached values are least cosine-similar (G = the whole
//!   response, all semi-autoregressive blocks) get new keys, attention and FFN outputs;
//! * cosine similarity is computed as `torch.nn.functional.cosine_similarity` does,
//!   `sum(a / max(|a|, 1e-8) * b / max(|b|, 1e-8))`.

use burn::config::Config;
use burn::tensor::Tensor;

use super::{CachePolicy, Probe, Refresh, Segment, StepInfo};
use crate::error::{Error, Result};

/// Settings of [`DllmCache`]. `DllmCacheConfig::new()` gives the official scripts' defaults
/// (K_p = 100, K_r = 7, rho = 0.25, as in `demo_LLaDA.py` and the FLOPs scripts; the paper tunes
/// them per task) with the official code's layer-0 refresh.
#[derive(Config, Debug, PartialEq)]
#[non_exhaustive]
pub struct DllmCacheConfig {
    /// K_p: recompute the prompt features every this many forward passes (>= 1).
    #[config(default = 100)]
    pub prompt_interval: usize,
    /// K_r: recompute all response features every this many forward passes (>= 1).
    #[config(default = 7)]
    pub response_interval: usize,
    /// rho in [0, 1]: fraction of the response rows refreshed by V-verify between full response
    /// refreshes. 0 disables V-verify (cached response features are reused untouched).
    #[config(default = 0.25)]
    pub refresh_ratio: f64,
    /// Recompute layer 0 fully at every pass, as the official code does since July 2025.
    /// `false` reproduces the paper's FLOPs figures.
    #[config(default = true)]
    pub refresh_first_layer: bool,
    /// With classifier-free guidance: recompute the unconditional pass every this many steps
    /// (and on the first five), reusing its guidance residual in between (>= 1).
    #[config(default = 1)]
    pub cfg_interval: usize,
}

impl DllmCacheConfig {
    /// Validates the settings and builds the policy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if an interval is 0 or `refresh_ratio` is not in `[0, 1]`.
    pub fn init(&self) -> Result<DllmCache> {
        for (name, value) in [
            ("prompt_interval", self.prompt_interval),
            ("response_interval", self.response_interval),
            ("cfg_interval", self.cfg_interval),
        ] {
            if value == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !(0.0..=1.0).contains(&self.refresh_ratio) {
            return Err(Error::invalid(
                "refresh_ratio",
                format!("must be in [0, 1], got {}", self.refresh_ratio),
            ));
        }
        Ok(DllmCache {
            config: self.clone(),
            step: 0,
        })
    }
}

/// Whether dLLM-Cache's way of guidance recomputes the unconditional pass at sampler step
/// `step` (0-based): on the first five steps and every `interval`-th (the official
/// `refresh_cfg`). The rule belongs to the policy's settings; the samplers and the FLOPs
/// estimator ask it here.
pub(crate) fn unconditional_due(step: usize, interval: usize) -> bool {
    step.is_multiple_of(interval) || step < 5
}

/// The dLLM-Cache policy. Build it with [`DllmCacheConfig::init`].
#[derive(Debug, Clone)]
pub struct DllmCache {
    config: DllmCacheConfig,
    step: usize,
}

impl DllmCache {
    /// The settings.
    pub fn config(&self) -> &DllmCacheConfig {
        &self.config
    }

    fn due(&self, layer: usize, segment: Segment) -> bool {
        self.config.due(self.step, layer, segment)
    }

    fn verifies(&self, segment: Segment) -> bool {
        segment == Segment::Response && self.config.refresh_ratio > 0.0
    }
}

impl DllmCacheConfig {
    /// Whether `segment` of `layer` is recomputed in full at forward pass `step` (0-based).
    /// The FLOPs estimator replays the schedule through this same rule.
    pub(crate) fn due(&self, step: usize, layer: usize, segment: Segment) -> bool {
        let interval = match segment {
            Segment::Prompt => self.prompt_interval,
            Segment::Response => self.response_interval,
        };
        step.is_multiple_of(interval) || (layer == 0 && self.refresh_first_layer)
    }

    /// Rows V-verify refreshes in a response of `rows` rows: Python's `int(rows * rho)`.
    pub(crate) fn verified_rows(&self, rows: usize) -> usize {
        (rows as f64 * self.refresh_ratio) as usize
    }
}

impl CachePolicy for DllmCache {
    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "dllm(kp={},kr={},rho={}{})",
            c.prompt_interval,
            c.response_interval,
            c.refresh_ratio,
            if c.refresh_first_layer { "" } else { ",no-l0" }
        )
    }

    fn begin_step(&mut self, step: &StepInfo) {
        self.step = step.index;
    }

    fn wants_probe(&self, layer: usize, segment: Segment) -> bool {
        !self.due(layer, segment) && self.verifies(segment)
    }

    fn plan(
        &mut self,
        layer: usize,
        segment: Segment,
        probe: Option<Probe<'_>>,
    ) -> Result<Refresh> {
        if self.due(layer, segment) {
            return Ok(Refresh::All);
        }
        match probe {
            Some(probe) if self.verifies(segment) => {
                let [_, rows, _] = probe.fresh_v.dims();
                let k = self.config.verified_rows(rows);
                Ok(Refresh::Rows(least_similar(probe, k)))
            }
            _ => Ok(Refresh::Reuse),
        }
    }

    fn reset(&mut self) {
        self.step = 0;
    }

    fn fork(&self) -> Box<dyn CachePolicy> {
        let mut fresh = self.clone();
        fresh.reset();
        Box::new(fresh)
    }

    fn guidance_interval(&self) -> Option<usize> {
        Some(self.config.cfg_interval)
    }
}

/// Per batch row, the `k` rows whose fresh and cached values are least cosine-similar.
fn least_similar(probe: Probe<'_>, k: usize) -> Tensor<2, burn::tensor::Int> {
    // In float32 whatever the activation dtype: similarities near 1 differ in the 4th digit.
    let unit = |t: &Tensor<3>| {
        let t = t.clone().cast(burn::tensor::DType::F32);
        let norm = t.clone().square().sum_dim(2).sqrt().clamp_min(1e-8);
        t / norm
    };
    let cos: Tensor<2> = (unit(probe.fresh_v) * unit(probe.cached_v))
        .sum_dim(2)
        .squeeze_dim(2);
    let [batch, rows] = cos.dims();
    if k == 0 {
        return Tensor::zeros([batch, 0], &cos.device());
    }
    cos.neg().topk_with_indices(k.min(rows), 1).1
}
