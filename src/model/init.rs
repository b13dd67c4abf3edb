//! Random weights for tests and benchmarks.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use super::arch::Arch;
use super::backbone::Backbone;
use super::block::Block;
use super::norm::RmsNorm;
use crate::rng::SplitMix64;

/// Seeded random weights: linear weights `N(0, 1/d_in)`, the projections that write into the
/// residual stream (attention output, FFN down) scaled by `1/sqrt(2 n_layers)` so that the
/// stream's variance stays bounded with depth (GPT-2's rule), embeddings `N(0, 1)`, norm
/// weights 1, biases `N(0, 0.01)`. Generated on the host so that a seed gives the same model on every
/// backend.
pub(crate) fn random_backbone(a: &Arch, seed: u64, device: &Device) -> Backbone {
    let mut rng = SplitMix64::new(seed);
    let mut normal =
        |n: usize, std: f32| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32 * std).collect() };
    let mut linear = |d_in: usize, d_out: usize, bias: bool, scale: f32| Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(
                normal(d_in * d_out, scale * (1.0 / d_in as f32).sqrt()),
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
    let head = linear(d, a.vocab_rows, false, 1.0);
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let embed: Vec<f32> = (0..a.vocab_rows * d).map(|_| rng.normal() as f32).collect();
    Backbone {
        embed: Embedding {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(embed, [a.vocab_rows, d]),
                device,
            )),
        },
        blocks,
        norm: norm(d),
        head,
    }
}

/// Random weights drawn on the device by burn's generator (fast for billions of parameters,
/// not reproducible across backends): for throughput benchmarks of large shapes, where the
/// host-side seeded draw of [`random_backbone`] would take minutes.
pub(crate) fn random_backbone_on_device(a: &Arch, device: &Device) -> Backbone {
    use burn::tensor::Distribution;
    let linear = |d_in: usize, d_out: usize, bias: bool| Linear {
        weight: Param::from_tensor(Tensor::random(
            [d_in, d_out],
            Distribution::Normal(0.0, (1.0 / d_in as f64).sqrt()),
            device,
        )),
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
            weight: Param::from_tensor(Tensor::random(
                [a.vocab_rows, d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
        },
        blocks,
        norm: norm(d),
        head: linear(d, a.vocab_rows, false),
    }
}
