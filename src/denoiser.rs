//! What a sampler needs from a model: the [`Denoiser`] trait and the per-forward
//! [`StepContext`].

use burn::tensor::{Device, Int, Tensor};

use crate::cache::{CachePolicy, FeatureCache, StepInfo};
use crate::error::Result;
use crate::flops::FlopCounter;

/// What one layer did with each segment, as recorded by a traced forward
/// ([`StepContext::with_trace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerTrace {
    /// Layer index.
    pub layer: usize,
    /// The prompt rows.
    pub prompt: RowsTrace,
    /// The response rows.
    pub response: RowsTrace,
}

/// How a layer treated one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowsTrace {
    /// Every row recomputed.
    All,
    /// Every row reused from the cache.
    Reused,
    /// The listed rows (segment-relative, per batch row) recomputed, the others reused.
    Rows(Vec<Vec<usize>>),
    /// The contiguous rows (segment-relative, every batch row) recomputed, the others reused.
    Range(std::ops::Range<usize>),
}

impl LayerTrace {
    /// The official hook's name for this layer's branch: `"full"` (both segments recomputed),
    /// `"gen"` (response only), `"prompt"` (prompt only, response reused or partly refreshed)
    /// or `"cached"`.
    pub fn branch(&self) -> &'static str {
        match (&self.prompt, &self.response) {
            (RowsTrace::All, RowsTrace::All) => "full",
            (_, RowsTrace::All) => "gen",
            (RowsTrace::All, _) => "prompt",
            _ => "cached",
        }
    }
}

/// Everything one forward pass needs besides the tokens: where it stands, the cache policy,
/// the generation's feature cache and a FLOPs counter. Samplers build one per step.
///
/// Running without a cache means passing [`NoCache`](crate::cache::NoCache); there is no
/// second code path.
pub struct StepContext<'a> {
    pub(crate) info: StepInfo,
    pub(crate) policy: &'a mut dyn CachePolicy,
    pub(crate) cache: &'a mut FeatureCache,
    pub(crate) flops: &'a mut FlopCounter,
    pub(crate) logit_rows: Option<std::ops::Range<usize>>,
    pub(crate) trace: Option<&'a mut Vec<LayerTrace>>,
    pub(crate) left_pad: Option<&'a [usize]>,
}

impl<'a> StepContext<'a> {
    /// A context that returns logits for every position.
    pub fn new(
        info: StepInfo,
        policy: &'a mut dyn CachePolicy,
        cache: &'a mut FeatureCache,
        flops: &'a mut FlopCounter,
    ) -> Self {
        Self {
            info,
            policy,
            cache,
            flops,
            logit_rows: None,
            trace: None,
            left_pad: None,
        }
    }

    /// Returns logits only for the positions in `rows` (the LM head then runs on those rows
    /// only; samplers ask for the rows they can commit this step).
    pub fn with_logit_rows(mut self, rows: std::ops::Range<usize>) -> Self {
        self.logit_rows = Some(rows);
        self
    }

    /// Records what every layer did into `trace` (one entry per layer, appended).
    pub fn with_trace(mut self, trace: &'a mut Vec<LayerTrace>) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Marks the first `left_pad[b]` positions of batch row `b` as padding: no query attends to
    /// them, and rotary positions count from each row's first real token. Padding must lie
    /// inside the prompt.
    pub fn with_left_padding(mut self, left_pad: &'a [usize]) -> Self {
        self.left_pad = Some(left_pad);
        self
    }

    /// The step information.
    pub fn info(&self) -> &StepInfo {
        &self.info
    }
}

/// Special token ids of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecialTokens {
    /// The `[MASK]` token the response starts as.
    pub mask: u32,
    /// End of sequence (also used as padding by the SFT data of both families).
    pub eos: u32,
    /// Padding.
    pub pad: u32,
    /// Beginning of sequence, if the model has one.
    pub bos: Option<u32>,
}

impl SpecialTokens {
    /// Special ids: the mask token, end of sequence, padding and an optional beginning of
    /// sequence.
    pub fn new(mask: u32, eos: u32, pad: u32, bos: Option<u32>) -> Self {
        Self {
            mask,
            eos,
            pad,
            bos,
        }
    }
}

/// A bidirectional transformer that scores every position of a partly masked sequence.
///
/// Implemented by [`Llada`](crate::Llada). Row `i` of the returned logits scores the token at
/// position `i` (architectures whose head predicts the next position shift inside their impl).
pub trait Denoiser: Send + Sync {
    /// Runs one forward pass under the context's cache policy.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` with `seq = prompt_len + response_len` of the context;
    /// - returns `[batch, rows, vocab]` for the context's logit rows (all `seq` positions unless
    ///   [`StepContext::with_logit_rows`] narrowed them).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if the shape disagrees with the
    /// context, [`Error::SequenceTooLong`](crate::Error::SequenceTooLong),
    /// [`Error::TokenOutOfRange`](crate::Error::TokenOutOfRange), or
    /// [`Error::Policy`](crate::Error::Policy) if the policy asks for features that are not
    /// cached.
    fn forward(&self, tokens: Tensor<2, Int>, ctx: &mut StepContext<'_>) -> Result<Tensor<3>>;

    /// Special token ids.
    fn special_tokens(&self) -> SpecialTokens;

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize;

    /// Longest supported sequence (prompt plus response).
    fn max_seq_len(&self) -> usize;

    /// Number of rows of the logits' last dimension.
    fn vocab_size(&self) -> usize;

    /// The device the weights live on.
    fn device(&self) -> Device;
}
