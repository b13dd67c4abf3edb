//! Cache policies: who decides, per step and per layer, which features to recompute.
//!
//! A denoising step runs the whole prompt+response through every layer. A [`CachePolicy`] looks
//! at each layer of each step and answers, separately for the prompt rows and the response rows
//! (the two [`Segment`]s): recompute every row ([`Refresh::All`]), reuse the cached features
//! ([`Refresh::Reuse`]) or recompute only some rows ([`Refresh::Rows`], or a contiguous
//! [`Refresh::Range`]). Before answering it may ask for a [`Probe`]: the fresh value projection
//! of every row of the segment next to the cached one, which is what dLLM-Cache's V-verify
//! compares. [`StepInfo`] tells it where the forward stands, including the sampler's block
//! ([`BlockInfo`]) when it decodes in blocks.
//!
//! The policies: [`NoCache`], [`DllmCache`] (dLLM-Cache), [`PrefixCache`] and [`DualCache`]
//! (Fast-dLLM's block caches); see `docs/cache-policies.md` for what each recomputes, its cost
//! and which combinations with the commit rules reproduce official code.
//!
//! The transformer block executes the answer at both its attention and its FFN site, the same
//! way for every policy and every architecture:
//!
//! * keys are cached already rotated with their absolute positions (positions never change
//!   within a generation, and rotation is elementwise per row, so this is bit-identical to the
//!   reference's caching before the rotation and rotating at every call), values as projected;
//!   attention and FFN outputs are cached after their output projections; the residual stream
//!   itself always flows fresh, only the two deltas are reused;
//! * rows that are recomputed get new keys, values, attention output and FFN output, and their
//!   queries attend over the whole (partly cached) key/value sequence;
//! * when a probe ran, the fresh value of *every* row of the segment is stored, and only the
//!   selected rows get new keys, attention and FFN outputs.
//!
//! Policies never hold tensors of the model or of the cache; per-generation state lives in a
//! [`FeatureCache`] passed alongside, so one policy value can be reset and reused, and two
//! generations can run on one model at once.
//!
//! # Writing a policy
//!
//! ```
//! use dllm_cache::cache::{CachePolicy, Probe, Refresh, Segment, StepInfo};
//! use dllm_cache::Result;
//!
//! /// Recomputes everything every `n`-th step and reuses everything in between.
//! #[derive(Debug, Clone)]
//! struct EveryNth {
//!     n: usize,
//!     refresh: bool,
//! }
//!
//! impl CachePolicy for EveryNth {
//!     fn name(&self) -> String {
//!         format!("every-{}", self.n)
//!     }
//!     fn begin_step(&mut self, step: &StepInfo) {
//!         self.refresh = step.index % self.n == 0;
//!     }
//!     fn plan(&mut self, _layer: usize, _segment: Segment, _probe: Option<Probe<'_>>) -> Result<Refresh> {
//!         Ok(if self.refresh { Refresh::All } else { Refresh::Reuse })
//!     }
//!     fn reset(&mut self) {}
//!     fn fork(&self) -> Box<dyn CachePolicy> {
//!         Box::new(self.clone())
//!     }
//! }
//! ```

mod dllm;
mod dual;
mod none;
mod prefix;
pub(crate) mod store;

pub(crate) use dllm::unconditional_due;
pub use dllm::{DllmCache, DllmCacheConfig};
pub use dual::DualCache;
pub use none::NoCache;
pub use prefix::PrefixCache;
pub use store::FeatureCache;
pub(crate) use store::check_dtype as check_cache_dtype;

use burn::tensor::{Int, Tensor};

use crate::error::Result;

/// Where a forward pass stands in its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StepInfo {
    /// 0-based index of this forward among the forwards that share one [`FeatureCache`] since
    /// it was created or cleared.
    pub index: usize,
    /// Rows `0..prompt_len` are the prompt.
    pub prompt_len: usize,
    /// Rows `prompt_len..prompt_len + response_len` are the response.
    pub response_len: usize,
    /// The semi-autoregressive block this forward decodes, when the sampler works in blocks.
    pub block: Option<BlockInfo>,
}

impl StepInfo {
    /// The step information of forward `index` over `prompt_len` prompt rows followed by
    /// `response_len` response rows, outside any block.
    pub fn new(index: usize, prompt_len: usize, response_len: usize) -> Self {
        Self {
            index,
            prompt_len,
            response_len,
            block: None,
        }
    }

    /// The same step inside `block`.
    pub fn with_block(mut self, block: BlockInfo) -> Self {
        self.block = Some(block);
        self
    }
}

/// The block a forward decodes: which one, where it lies, and how far into it the sampler is.
/// Block caches ([`PrefixCache`], [`DualCache`]) plan from this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BlockInfo {
    /// 0-based block index.
    pub index: usize,
    /// Absolute position of the block's first row (prompt included).
    pub start: usize,
    /// Absolute position one past its last row.
    pub end: usize,
    /// 0-based step within the block; 0 is the block's first step.
    pub step: usize,
}

impl BlockInfo {
    /// Block `index` over absolute rows `start..end`, at its `step`-th step.
    pub fn new(index: usize, start: usize, end: usize, step: usize) -> Self {
        Self {
            index,
            start,
            end,
            step,
        }
    }

    /// Whether this is the block's first step.
    pub fn is_first_step(&self) -> bool {
        self.step == 0
    }
}

/// The two row ranges of a sequence that a policy plans separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Positions `0..prompt_len`.
    Prompt,
    /// Positions `prompt_len..prompt_len + response_len`.
    Response,
}

impl Segment {
    /// Both segments, in sequence order.
    pub const BOTH: [Segment; 2] = [Segment::Prompt, Segment::Response];

    pub(crate) fn index(self) -> usize {
        match self {
            Segment::Prompt => 0,
            Segment::Response => 1,
        }
    }
}

/// What a layer does with one segment's rows.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, one per layer and segment
#[non_exhaustive]
pub enum Refresh {
    /// Recompute every row and store its features.
    All,
    /// Reuse the cached features of every row (errors if none are cached).
    Reuse,
    /// Recompute the given rows (segment-relative positions, distinct within a batch row,
    /// `[batch, k]`) and reuse the others.
    Rows(Tensor<2, Int>),
    /// Recompute the contiguous rows `start..end` (segment-relative, the same for every batch
    /// row) and reuse the others. Executed by slicing, without gathers or scatters.
    Range(std::ops::Range<usize>),
}

/// Fresh and cached value projections of every row of a segment, offered to
/// [`CachePolicy::plan`] when the policy asked for it with [`CachePolicy::wants_probe`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Probe<'a> {
    /// `v_proj(attn_norm(x))` of this step, `[batch, rows, kv_dim]`.
    pub fresh_v: &'a Tensor<3>,
    /// The cached value projection, `[batch, rows, kv_dim]`.
    pub cached_v: &'a Tensor<3>,
}

impl<'a> Probe<'a> {
    /// A probe of fresh and cached values, `[batch, rows, kv_dim]` each.
    pub fn new(fresh_v: &'a Tensor<3>, cached_v: &'a Tensor<3>) -> Self {
        Self { fresh_v, cached_v }
    }
}

/// Decides which features each layer recomputes. See the [module docs](self).
///
/// Object-safe and `Send`: samplers take `&mut dyn CachePolicy`, and a generation can move to
/// another thread with its policy.
pub trait CachePolicy: Send {
    /// A short name with the settings, for reports and benchmark labels.
    fn name(&self) -> String;

    /// Called once before each forward pass with that pass's step information.
    fn begin_step(&mut self, step: &StepInfo);

    /// Whether [`plan`](CachePolicy::plan) for this layer and segment wants a [`Probe`]. Only
    /// asked when the segment has cached features.
    fn wants_probe(&self, layer: usize, segment: Segment) -> bool {
        let _ = (layer, segment);
        false
    }

    /// The plan for `segment` at `layer` in the current step. `probe` is `Some` exactly when
    /// [`wants_probe`](CachePolicy::wants_probe) returned true and features were cached.
    ///
    /// # Errors
    /// A policy may fail, for example when a probe has an unexpected shape.
    fn plan(&mut self, layer: usize, segment: Segment, probe: Option<Probe<'_>>)
    -> Result<Refresh>;

    /// Forgets all per-generation state (step counters); called by the samplers before each
    /// generation.
    fn reset(&mut self);

    /// Whether the block should store features at all. A policy that never reuses anything
    /// returns `false`, so running it costs neither time nor memory for the cache.
    fn stores_features(&self) -> bool {
        true
    }

    /// A fresh, reset policy with the same settings. Samplers use it for passes that need their
    /// own cache schedule (the unconditional pass of classifier-free guidance).
    fn fork(&self) -> Box<dyn CachePolicy>;

    /// How the sampler runs classifier-free guidance under this policy: `None` means the
    /// reference sampler's way (conditional and unconditional rows in one batched forward, every
    /// step); `Some(k)` means dLLM-Cache's way (a separate unconditional pass with its own cache,
    /// recomputed on the first five steps and every `k`-th step, its guidance residual reused in
    /// between).
    fn guidance_interval(&self) -> Option<usize> {
        None
    }
}

impl<P: CachePolicy + ?Sized> CachePolicy for Box<P> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn begin_step(&mut self, step: &StepInfo) {
        (**self).begin_step(step)
    }
    fn wants_probe(&self, layer: usize, segment: Segment) -> bool {
        (**self).wants_probe(layer, segment)
    }
    fn plan(
        &mut self,
        layer: usize,
        segment: Segment,
        probe: Option<Probe<'_>>,
    ) -> Result<Refresh> {
        (**self).plan(layer, segment, probe)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn stores_features(&self) -> bool {
        (**self).stores_features()
    }
    fn fork(&self) -> Box<dyn CachePolicy> {
        (**self).fork()
    }
    fn guidance_interval(&self) -> Option<usize> {
        (**self).guidance_interval()
    }
}
