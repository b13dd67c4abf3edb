//! Fast-dLLM's prefix cache (Wu et al., arXiv 2505.22618, `generate_with_prefix_cache` of
//! NVlabs/Fast-dLLM): at the first step of each block a full forward refreshes every feature
//! (and is that block's first decoding step); at its other steps the prompt and the finished
//! blocks are reused and every row from the block start to the end of the sequence is
//! recomputed.

use super::{BlockInfo, CachePolicy, Probe, Refresh, Segment, StepInfo};
use crate::error::Result;

/// The prefix cache. It plans from the step's [`BlockInfo`]: a sampler without blocks passes
/// none, and the whole response then counts as one block (only the prompt is reused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCache {
    /// Response rows recomputed at this step (segment-relative), `None` at a block start.
    recompute: Option<(usize, usize)>,
}

impl PrefixCache {
    /// A reset prefix cache.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The plan of a block cache: everything at a block start (`recompute` is `None`), else the
/// prompt reused and the response rows `recompute` (segment-relative) recomputed.
pub(super) fn block_plan(recompute: Option<(usize, usize)>, segment: Segment) -> Refresh {
    match (recompute, segment) {
        (None, _) => Refresh::All,
        (Some(_), Segment::Prompt) => Refresh::Reuse,
        (Some((start, end)), Segment::Response) => Refresh::Range(start..end),
    }
}

/// The block of `step`, or the whole response when the sampler has no blocks.
pub(super) fn block_of(step: &StepInfo) -> BlockInfo {
    step.block.unwrap_or(BlockInfo::new(
        0,
        step.prompt_len,
        step.prompt_len + step.response_len,
        step.index,
    ))
}

impl CachePolicy for PrefixCache {
    fn name(&self) -> String {
        "prefix".into()
    }

    fn begin_step(&mut self, step: &StepInfo) {
        let block = block_of(step);
        let (p, g) = (step.prompt_len, step.response_len);
        self.recompute =
            (!block.is_first_step()).then(|| (block.start.saturating_sub(p).min(g), g));
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
