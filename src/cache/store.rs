//! Per-generation feature storage.

use burn::tensor::Tensor;

use super::Segment;

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
#[derive(Debug, Clone, Default)]
pub struct FeatureCache {
    layers: Vec<[Option<Features>; 2]>,
}

impl FeatureCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
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
            .map(Features::bytes)
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.iter().all(Option::is_none))
    }

    pub(crate) fn get(&self, layer: usize, segment: Segment) -> Option<&Features> {
        self.layers.get(layer)?[segment.index()].as_ref()
    }

    pub(crate) fn set(&mut self, layer: usize, segment: Segment, features: Features) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Default::default);
        }
        self.layers[layer][segment.index()] = Some(features);
    }
}
