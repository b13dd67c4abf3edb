//! How a model's weights are held in memory: [`LoadOptions`] and [`WeightDtype`].

use burn::tensor::{DType, Element};

use crate::error::{Error, Result};

/// The element type of a model's weight matrices (every linear layer, the embedding and the
/// LM head) in memory. Norm weights and biases, a few thousand values, always stay in the
/// device's float type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightDtype {
    /// The device's float type (float32 unless the device was configured otherwise): the
    /// weights and the activations share one type.
    #[default]
    Float,
    /// bfloat16: half the memory of float32. With float32 activations the products widen the
    /// weights to float32 as they go (on flex, inside the matrix kernel, without a float32
    /// copy of any weight), so only the weights' rounding differs from a float32 model.
    Bf16,
    /// IEEE half precision, held and computed as [`Bf16`](Self::Bf16) is.
    F16,
}

impl WeightDtype {
    /// The burn dtype of the matrices, `None` for [`Float`](Self::Float).
    pub(crate) fn dtype(self) -> Option<DType> {
        match self {
            WeightDtype::Float => None,
            WeightDtype::Bf16 => Some(DType::BF16),
            WeightDtype::F16 => Some(DType::F16),
        }
    }

    /// Bytes per stored element, 4 for [`Float`](Self::Float) (assuming float32).
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::Float => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = Error;

    /// `f32` (the device's float type), `bf16` or `f16`, as the examples' `--weights` takes it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other name.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float" => Ok(WeightDtype::Float),
            "bf16" => Ok(WeightDtype::Bf16),
            "f16" => Ok(WeightDtype::F16),
            other => Err(Error::invalid(
                "weights",
                format!("unknown weight dtype `{other}` (expected f32, bf16 or f16)"),
            )),
        }
    }
}

/// Options of the `*_with` constructors of [`Llada`](crate::Llada) and
/// [`Dream`](crate::Dream).
///
/// ```
/// use dllm_cache::{LoadOptions, WeightDtype};
/// let options = LoadOptions::new().with_weights(WeightDtype::Bf16);
/// assert_eq!(options.weights(), WeightDtype::Bf16);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    weights: WeightDtype,
}

impl LoadOptions {
    /// The defaults: weights in the device's float type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds the weight matrices as `weights`. A checkpoint stored in another type is
    /// converted tensor by tensor while it streams in (rounding to nearest even when
    /// narrowing), so loading never holds a second full copy of the model.
    pub fn with_weights(mut self, weights: WeightDtype) -> Self {
        self.weights = weights;
        self
    }

    /// The weight matrices' type.
    pub fn weights(&self) -> WeightDtype {
        self.weights
    }
}

/// An element a tensor is read into: float32, or a 16-bit type the values are rounded to.
pub(crate) trait Target: Element + Copy + Default {
    /// `v`, rounded to nearest even where the type is narrower.
    fn from_f32(v: f32) -> Self;
}

impl Target for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Target for half::bf16 {
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

impl Target for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}
