//! Per-generation feature storage.

use burn::tensor::{DType, Tensor};

use super::Segment;
use crate::error::{Error, Result};

/// The cached features of one segment of one layer.
#[derive(Debug, Clone)]
pub(crate) struct Features {
    /// Key projection, rotated with its absolute positions, `[batch, kv_heads, rows, head_dim]`
    /// (head-major and, once attention has read it, contiguous: the CPU kernel reads it in
    /// place).
    /// The reference caches keys before the rotation and rotates the whole key sequence at
    /// every call; rotation is elementwise per row, so storing rotated keys gives the same bits
    /// without redoing it.
    pub k: Tensor<4>,
    /// Value projection, `[batch, kv_heads, rows, head_dim]`.
    pub v: Tensor<4>,
    /// Attention output after the output projection, `[batch, rows, d_model]`.
    pub attn: Tensor<3>,
    /// FFN output after the down projection, `[batch, rows, d_model]`.
    pub ffn: Tensor<3>,
}

impl Features {
    fn cast(self, dtype: DType) -> Self {
        Self {
            k: self.k.cast(dtype),
            v: self.v.cast(dtype),
            attn: self.attn.cast(dtype),
            ffn: self.ffn.cast(dtype),
        }
    }

    fn bytes(&self) -> usize {
        let size = |n: usize, t: burn::tensor::DType| n * t.size();
        size(self.k.shape().num_elements(), self.k.dtype())
            + size(self.v.shape().num_elements(), self.v.dtype())
            + size(self.attn.shape().num_elements(), self.attn.dtype())
            + size(self.ffn.shape().num_elements(), self.ffn.dtype())
    }
}

/// The features a cache policy can reuse: per layer and per [`Segment`], the keys (rotated)
/// and values, the attention output and the FFN output.
///
/// Create one per generation (samplers do this for you) and pass it to every forward of that
/// generation through [`StepContext`](crate::StepContext). It is a plain value, not shared
/// state: two generations with two caches never see each other's features.
///
/// Features are stored in the activations' type, or in a narrower one chosen with
/// [`with_dtype`](Self::with_dtype) (half the memory; each reuse widens them back, so a reused
/// feature carries its rounding).
#[derive(Debug, Clone, Default)]
pub struct FeatureCache {
    /// Per layer and segment: the features as stored, and the type they came in.
    layers: Vec<[Option<(Features, DType)>; 2]>,
    dtype: Option<DType>,
}

impl FeatureCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache that stores features as `dtype`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `dtype` is `F32`, `BF16` or `F16`.
    pub fn with_dtype(dtype: DType) -> Result<Self> {
        Ok(Self::for_dtype(Some(check_dtype(dtype)?)))
    }

    /// An empty cache storing as `dtype` (already checked; `None`: as the features come).
    pub(crate) fn for_dtype(dtype: Option<DType>) -> Self {
        Self {
            layers: Vec::new(),
            dtype,
        }
    }

    /// The storage type, `None` when features are kept as they come.
    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    /// Drops every stored feature.
    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// Bytes held by stored features (device memory on a GPU backend).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .map(|(f, _)| f.bytes())
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.iter().all(Option::is_none))
    }

    /// The features of `layer`'s `segment`, in the type they were stored from.
    pub(crate) fn get(&self, layer: usize, segment: Segment) -> Option<Features> {
        let (features, dtype) = self.layers.get(layer)?[segment.index()].as_ref()?;
        Some(if features.k.dtype() == *dtype {
            features.clone()
        } else {
            features.clone().cast(*dtype)
        })
    }

    pub(crate) fn set(&mut self, layer: usize, segment: Segment, features: Features) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Default::default);
        }
        let from = features.k.dtype();
        let features = match self.dtype {
            Some(dtype) if dtype != from => features.cast(dtype),
            _ => features,
        };
        self.layers[layer][segment.index()] = Some((features, from));
    }
}

/// `dtype` if features can be stored in it.
pub(crate) fn check_dtype(dtype: DType) -> Result<DType> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(dtype),
        other => Err(Error::invalid(
            "cache_dtype",
            format!("features cannot be stored as {other:?} (expected F32, BF16 or F16)"),
        )),
    }
}
