//! Random weights for tests and benchmarks.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::arch::Arch;
use super::backbone::Backbone;
use super::block::Block;
use super::norm::RmsNorm;
use super::weights::Target;
use crate::rng::SplitMix64;

/// `n` draws of `N(0, std^2)` from `rng` as a `shape` matrix in `dtype` (`None`: the device's
/// float type), each value rounded as it is drawn.
fn matrix<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    std: f32,
    device: &Device,
    dtype: Option<DType>,
) -> Tensor<D> {
    fn draw<E: Target>(rng: &mut SplitMix64, n: usize, std: f32) -> Vec<E> {
        (0..n)
            .map(|_| E::from_f32(rng.normal() as f32 * std))
            .collect()
    }
    let n = shape.iter().product();
    match dtype {
        Some(DType::BF16) => Tensor::from_data(
            TensorData::new(draw::<half::bf16>(rng, n, std), shape),
            (device, DType::BF16),
        ),
        Some(DType::F16) => Tensor::from_data(
            TensorData::new(draw::<half::f16>(rng, n, std), shape),
            (device, DType::F16),
        ),
        _ => Tensor::from_data(TensorData::new(draw::<f32>(rng, n, std), shape), device),
    }
}

/// Seeded random weights: linear weights `N(0, 1/d_in)`, the projections that write into the
/// residual stream (attention output, FFN down) scaled by `1/sqrt(2 n_layers)` so that the
/// stream's variance stays bounded with depth (GPT-2's rule), embeddings `N(0, 1)`, norm
/// weights 1, biases `N(0, 0.01)`. Generated on the host so that a seed gives the same model on every
/// backend; in a 16-bit `matrices` type, the same draw rounded.
pub(crate) fn random_backbone(
    a: &Arch,
    seed: u64,
    device: &Device,
    matrices: Option<DType>,
) -> Backbone {
    let mut rng = SplitMix64::new(seed);
    let mut linear = |d_in: usize, d_out: usize, bias: bool, scale: f32| {
        let std = scale * (1.0 / d_in as f32).sqrt();
        let weight = matrix(&mut rng, [d_in, d_out], std, device, matrices);
        Linear {
            weight: Param::from_tensor(weight),
            bias: bias.then(|| Param::from_tensor(matrix(&mut rng, [d_out], 0.1, device, None))),
        }
    };
    let norm = |d: usize| RmsNorm::from_weight(Tensor::ones([d], device), a.eps);
    let d = a.d_model;
    let hd = a.head_dim();
    let kv = a.n_kv_heads * hd;
    let mut blocks = Vec::with_capacity(a.n_layers);
    let residual = 1.0 / (2.0 * a.n_layers as f32).sqrt();
    for _ in 0..a.n_layers {
        blocks.push(Block {
            attn_norm: norm(d),
            q: linear(d, d, a.qkv_bias, 1.0),
            k: linear(d, kv, a.qkv_bias, 1.0),
            v: linear(d, kv, a.qkv_bias, 1.0),
            o: linear(d, d, false, residual),
            ffn_norm: norm(d),
            gate: linear(d, a.d_ff, false, 1.0),
            up: linear(d, a.d_ff, false, 1.0),
            down: linear(a.d_ff, d, false, residual),
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            head_dim: hd,
        });
    }
    let mut head = linear(d, a.vocab_rows, false, 1.0);
    head.weight = head.weight.map(crate::kernels::pack_thin);
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let embed = matrix(&mut rng, [a.vocab_rows, d], 1.0, device, matrices);
    Backbone {
        embed: Embedding {
            weight: Param::from_tensor(embed),
        },
        blocks,
        norm: norm(d),
        head,
    }
}

/// Random weights drawn on the device by burn's generator (fast for billions of parameters,
/// not reproducible across backends): for throughput benchmarks of large shapes, where the
/// host-side seeded draw of [`random_backbone`] would take minutes. Matrices are drawn
/// directly in `matrices` (`None`: the device's float type).
pub(crate) fn random_backbone_on_device(
    a: &Arch,
    device: &Device,
    matrices: Option<DType>,
) -> Backbone {
    use burn::tensor::Distribution;
    let draw = |shape: [usize; 2], std: f64| -> Tensor<2> {
        let dist = Distribution::Normal(0.0, std);
        match matrices {
            Some(dtype) => Tensor::random(shape, dist, (device, dtype)),
            None => Tensor::random(shape, dist, device),
        }
    };
    let linear = |d_in: usize, d_out: usize, bias: bool| Linear {
        weight: Param::from_tensor(draw([d_in, d_out], (1.0 / d_in as f64).sqrt())),
        bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
    };
    let norm = |d: usize| RmsNorm::from_weight(Tensor::ones([d], device), a.eps);
    let d = a.d_model;
    let kv = a.n_kv_heads * a.head_dim();
    let blocks = (0..a.n_layers)
        .map(|_| Block {
            attn_norm: norm(d),
            q: linear(d, d, a.qkv_bias),
            k: linear(d, kv, a.qkv_bias),
            v: linear(d, kv, a.qkv_bias),
            o: linear(d, d, false),
            ffn_norm: norm(d),
            gate: linear(d, a.d_ff, false),
            up: linear(d, a.d_ff, false),
            down: linear(a.d_ff, d, false),
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim(),
        })
        .collect();
    Backbone {
        embed: Embedding {
            weight: Param::from_tensor(draw([a.vocab_rows, d], 1.0)),
        },
        blocks,
        norm: norm(d),
        head: {
            let mut head = linear(d, a.vocab_rows, false);
            head.weight = head.weight.map(crate::kernels::pack_thin);
            head
        },
    }
}
