//! Fast-dLLM's dual cache (Wu et al., arXiv 2505.22618, `generate_with_dual_cache` of
//! NVlabs/Fast-dLLM): at the first step of each block a full forward refreshes every feature
//! (and is that block's first decoding step); at its other steps only the current block's rows
//! are recomputed, their keys and values overwrite the cached ones, and every other row (the
//! prompt, finished blocks, and the still-masked blocks after this one) is reused from the
//! block-start forward.

use super::prefix::{block_of, block_plan};
use super::{CachePolicy, Probe, Refresh, Segment, StepInfo};
use crate::error::Result;

/// The dual cache. It plans from the step's [`BlockInfo`](super::BlockInfo): a sampler without
/// blocks passes none, and the whole response then counts as one block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DualCache {
    /// Response rows recomputed at this step (segment-relative), `None` at a block start.
    recompute: Option<(usize, usize)>,
}

impl DualCache {
    /// A reset dual cache.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CachePolicy for DualCache {
    fn name(&self) -> String {
        "dual".into()
    }

    fn begin_step(&mut self, step: &StepInfo) {
        let block = block_of(step);
        let (p, g) = (step.prompt_len, step.response_len);
        let rel = |at: usize| at.saturating_sub(p).min(g);
        self.recompute = (!block.is_first_step()).then(|| (rel(block.start), rel(block.end)));
    }

    fn plan(&mut self, _layer: usize, segment: Segment, _: Option<Probe<'_>>) -> Result<Refresh> {
        Ok(block_plan(self.recompute, segment))
    }

    fn reset(&mut self) {
        self.recompute = None;
    }

    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(Self::new())
    }
}
