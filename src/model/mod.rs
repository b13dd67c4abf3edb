//! The two model families and the pieces they share.
//!
//! Both LLaDA and Dream are pre-norm transformers with RMSNorm, rotary embeddings, bidirectional
//! softmax attention and a SwiGLU feed-forward network; they differ in names, biases, head
//! layout and the one-position logit shift of Dream. The shared [`Block`] executes
//! a [`CachePolicy`](crate::cache::CachePolicy)'s plan for both.

pub(crate) mod block;
pub mod llada;
pub(crate) mod loader;
pub(crate) mod rope;

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

pub use block::Block;

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

use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Int, TensorData};

use crate::denoiser::StepContext;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use block::Backbone;

/// Sizes of a [`Backbone`] to build with random weights.
pub(crate) struct BackboneShape {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub eps: f64,
    pub qkv_bias: bool,
}

/// Seeded random weights: linear weights `N(0, 1/d_in)`, embeddings `N(0, 1)`, norm weights 1,
/// biases `N(0, 0.01)`. Generated on the host so that a seed gives the same model on every
/// backend.
pub(crate) fn random_backbone(shape: &BackboneShape, seed: u64, device: &Device) -> Backbone {
    let mut rng = SplitMix64::new(seed);
    let mut normal =
        |n: usize, std: f32| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32 * std).collect() };
    let mut linear = |d_in: usize, d_out: usize, bias: bool| Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(
                normal(d_in * d_out, (1.0 / d_in as f32).sqrt()),
                [d_in, d_out],
            ),
            device,
        )),
        bias: bias.then(|| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(normal(d_out, 0.1), [d_out]),
                device,
            ))
        }),
    };
    let norm = |d: usize| RmsNorm::from_weight(Tensor::ones([d], device), shape.eps);
    let d = shape.d_model;
    let hd = d / shape.n_heads;
    let kv = shape.n_kv_heads * hd;
    let mut blocks = Vec::with_capacity(shape.n_layers);
    for _ in 0..shape.n_layers {
        blocks.push(Block {
            attn_norm: norm(d),
            q: linear(d, d, shape.qkv_bias),
            k: linear(d, kv, shape.qkv_bias),
            v: linear(d, kv, shape.qkv_bias),
            o: linear(d, d, false),
            ffn_norm: norm(d),
            gate: linear(d, shape.d_ff, false),
            up: linear(d, shape.d_ff, false),
            down: linear(shape.d_ff, d, false),
            n_heads: shape.n_heads,
            n_kv_heads: shape.n_kv_heads,
            head_dim: hd,
        });
    }
    let head = linear(d, shape.vocab, false);
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let embed: Vec<f32> = (0..shape.vocab * d).map(|_| rng.normal() as f32).collect();
    Backbone {
        embed: Embedding {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(embed, [shape.vocab, d]),
                device,
            )),
        },
        blocks,
        norm: norm(d),
        head,
    }
}

/// Checks a forward's tokens against its context and the model limits; returns the length.
pub(crate) fn validate_tokens(
    tokens: &Tensor<2, Int>,
    ctx: &StepContext<'_>,
    max_len: usize,
    vocab: usize,
) -> Result<usize> {
    let [batch, seq] = tokens.dims();
    if batch == 0 || seq == 0 {
        return Err(Error::invalid(
            "tokens",
            format!("empty token batch [{batch}, {seq}]"),
        ));
    }
    let info = ctx.info;
    if info.prompt_len + info.response_len != seq {
        return Err(Error::invalid(
            "tokens",
            format!(
                "{seq} positions but the step context says prompt {} + response {}",
                info.prompt_len, info.response_len
            ),
        ));
    }
    if seq > max_len {
        return Err(Error::SequenceTooLong {
            len: seq,
            max: max_len,
        });
    }
    if let Some(rows) = &ctx.logit_rows
        && (rows.start >= rows.end || rows.end > seq)
    {
        return Err(Error::invalid(
            "logit_rows",
            format!("{rows:?} is not a non-empty range of a {seq}-token sequence"),
        ));
    }
    let out_of_range = tokens
        .clone()
        .lower_elem(0)
        .bool_or(tokens.clone().greater_equal_elem(vocab as i64));
    let any = out_of_range.clone().any().into_scalar::<bool>();
    if any {
        let ids = tokens
            .clone()
            .try_into_vec_as::<i64>()
            .map_err(|e| Error::Backend(format!("{e:?}")))?;
        let (at, &id) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id < 0 || **id >= vocab as i64)
            .ok_or_else(|| Error::Backend("out-of-range token vanished on readback".into()))?;
        return Err(Error::TokenOutOfRange {
            id,
            row: at / seq,
            position: at % seq,
            vocab,
        });
    }
    Ok(seq)
}
