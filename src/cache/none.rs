//! The policy that caches nothing.

use super::{CachePolicy, Probe, Refresh, Segment, StepInfo};
use crate::error::Result;

/// Recomputes every feature of every layer at every step, and stores nothing: the plain
/// uncached model. Use it as the baseline a caching policy is compared with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoCache;

impl CachePolicy for NoCache {
    fn name(&self) -> String {
        "none".into()
    }

    fn begin_step(&mut self, _step: &StepInfo) {}

    fn plan(
        &mut self,
        _layer: usize,
        _segment: Segment,
        _probe: Option<Probe<'_>>,
    ) -> Result<Refresh> {
        Ok(Refresh::All)
    }

    fn reset(&mut self) {}

    fn stores_features(&self) -> bool {
        false
    }

    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(NoCache)
    }
}
