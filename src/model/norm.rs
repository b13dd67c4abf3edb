//! Root-mean-square layer norm.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

/// Root-mean-square layer norm as LLaDA and Dream compute it: normalise in float32, cast back
/// to the activation dtype, then scale by the weight in that dtype.
///
/// (burn's own `RmsNorm` divides in the activation dtype, which rounds differently in bf16.)
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-feature scale, `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    pub(crate) fn from_weight(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[..., d]`; output: same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let xf = x.cast(DType::F32);
        let inv_rms = (xf.clone().square().mean_dim(D - 1) + self.eps)
            .sqrt()
            .recip();
        (xf * inv_rms).cast(dtype) * self.weight.val().unsqueeze()
    }
}
