//! The two model families and the pieces they share.
//!
//! Both LLaDA and Dream are pre-norm transformers with RMSNorm, rotary embeddings, bidirectional
//! softmax attention and a SwiGLU feed-forward network; they differ in names, biases, head
//! layout and the one-position logit shift of Dream. The shared [`Block`] executes
//! a [`CachePolicy`](crate::cache::CachePolicy)'s plan for both.

mod attention;
pub(crate) mod block;
pub mod dream;
pub mod llada;
pub(crate) mod loader;
pub(crate) mod rope;
mod stream;

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

pub use block::Block;
pub use loader::{SaveDtype, TensorHeader, inspect_safetensors};

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
use burn::tensor::{Bool, Device, Int, TensorData};

use crate::denoiser::StepContext;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use block::{Backbone, LayerEnv};
use loader::{Checkpoint, Role};
use rope::Rope;

/// Everything the shared forward needs to know about an architecture.
#[derive(Debug, Clone)]
pub(crate) struct Arch {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    /// Rows of the embedding and the LM head.
    pub vocab_rows: usize,
    pub eps: f64,
    /// Biases on q/k/v (Dream) or none (LLaDA).
    pub qkv_bias: bool,
    pub rope_theta: f64,
    /// LLaDA rotates in float32; Dream in the activation dtype.
    pub rotate_in_f32: bool,
    pub max_len: usize,
    /// The config's names of the fields above, for error messages.
    pub names: &'static ArchNames,
}

/// Config field names of an architecture.
#[derive(Debug)]
pub(crate) struct ArchNames {
    pub d_model: &'static str,
    pub n_heads: &'static str,
    pub n_kv_heads: &'static str,
    pub n_layers: &'static str,
    pub d_ff: &'static str,
    pub vocab_rows: &'static str,
    pub max_len: &'static str,
}

impl Arch {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let kv = self.n_kv_heads * self.head_dim();
        let bias = if self.qkv_bias { d + 2 * kv } else { 0 };
        let per_layer = 2 * d + 2 * d * d + 2 * d * kv + bias + 3 * d * self.d_ff;
        self.n_layers * per_layer + d + 2 * self.vocab_rows * d
    }

    /// Checks that the sizes describe a model this crate can build; `ids` are special token
    /// ids that must index the embedding.
    pub fn validate(&self, ids: &[(&str, u32)]) -> Result<()> {
        let n = self.names;
        let bad = |reason: String| Error::Config { path: None, reason };
        for (name, v) in [
            (n.d_model, self.d_model),
            (n.n_heads, self.n_heads),
            (n.n_kv_heads, self.n_kv_heads),
            (n.n_layers, self.n_layers),
            (n.d_ff, self.d_ff),
            (n.vocab_rows, self.vocab_rows),
            (n.max_len, self.max_len),
        ] {
            if v == 0 {
                return Err(bad(format!("`{name}` must be positive")));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(bad(format!(
                "`{}` ({}) must divide `{}` ({})",
                n.n_heads, self.n_heads, n.d_model, self.d_model
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad(format!(
                "head width `{} / {}` must be even for rotary embeddings",
                n.d_model, n.n_heads
            )));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(format!(
                "`{}` ({}) must divide `{}` ({})",
                n.n_kv_heads, self.n_kv_heads, n.n_heads, self.n_heads
            )));
        }
        for &(name, id) in ids {
            if id as usize >= self.vocab_rows {
                return Err(bad(format!(
                    "`{name}` ({id}) is outside the {} embedding rows",
                    self.vocab_rows
                )));
            }
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(bad("`rope_theta` must be positive".into()));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(bad("`rms_norm_eps` must be positive".into()));
        }
        Ok(())
    }
}

/// Reads a whole [`Backbone`] from a checkpoint through its name table, then checks that no
/// tensor was left unused.
pub(crate) fn load_backbone(mut ckpt: Checkpoint, a: &Arch) -> Result<Backbone> {
    let d = a.d_model;
    let kv = a.n_kv_heads * a.head_dim();
    let bias = |role: Role| a.qkv_bias.then_some(role);
    let embed = ckpt.embedding(Role::Embedding, a.vocab_rows, d)?;
    let mut blocks = Vec::with_capacity(a.n_layers);
    for i in 0..a.n_layers {
        blocks.push(Block {
            attn_norm: ckpt.norm(Role::AttnNorm, i, d, a.eps)?,
            q: ckpt.linear(Role::Q, bias(Role::QBias), i, d, d)?,
            k: ckpt.linear(Role::K, bias(Role::KBias), i, d, kv)?,
            v: ckpt.linear(Role::V, bias(Role::VBias), i, d, kv)?,
            o: ckpt.linear(Role::O, None, i, d, d)?,
            ffn_norm: ckpt.norm(Role::FfnNorm, i, d, a.eps)?,
            gate: ckpt.linear(Role::Gate, None, i, d, a.d_ff)?,
            up: ckpt.linear(Role::Up, None, i, d, a.d_ff)?,
            down: ckpt.linear(Role::Down, None, i, a.d_ff, d)?,
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim(),
        });
    }
    let norm = ckpt.norm(Role::FinalNorm, 0, d, a.eps)?;
    let head = ckpt.linear(Role::LmHead, None, 0, d, a.vocab_rows)?;
    ckpt.finish()?;
    Ok(Backbone {
        embed,
        blocks,
        norm,
        head,
    })
}

/// Every weight of a [`Backbone`] under its checkpoint name (PyTorch layout), the inverse of
/// [`load_backbone`].
pub(crate) fn backbone_tensors(
    b: &Backbone,
    table: loader::NameTable,
) -> Result<Vec<loader::NamedTensor>> {
    let name = |role: Role, layer: usize| {
        loader::name_of(table, role, layer)
            .ok_or_else(|| Error::Backend(format!("no name for {role:?}")))
    };
    let mut out = Vec::new();
    let mut push =
        |n: String, (shape, values): (Vec<usize>, Vec<f32>)| out.push((n, shape, values));
    push(
        name(Role::Embedding, 0)?,
        loader::tensor_values(b.embed.weight.val())?,
    );
    for (i, blk) in b.blocks.iter().enumerate() {
        push(
            name(Role::AttnNorm, i)?,
            loader::tensor_values(blk.attn_norm.weight.val())?,
        );
        for (role, bias, lin) in [
            (Role::Q, Role::QBias, &blk.q),
            (Role::K, Role::KBias, &blk.k),
            (Role::V, Role::VBias, &blk.v),
        ] {
            push(name(role, i)?, loader::linear_values(lin)?);
            if let Some(bias_param) = &lin.bias {
                push(name(bias, i)?, loader::tensor_values(bias_param.val())?);
            }
        }
        push(name(Role::O, i)?, loader::linear_values(&blk.o)?);
        push(
            name(Role::FfnNorm, i)?,
            loader::tensor_values(blk.ffn_norm.weight.val())?,
        );
        push(name(Role::Gate, i)?, loader::linear_values(&blk.gate)?);
        push(name(Role::Up, i)?, loader::linear_values(&blk.up)?);
        push(name(Role::Down, i)?, loader::linear_values(&blk.down)?);
    }
    push(
        name(Role::FinalNorm, 0)?,
        loader::tensor_values(b.norm.weight.val())?,
    );
    push(name(Role::LmHead, 0)?, loader::linear_values(&b.head)?);
    Ok(out)
}

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

impl Backbone {
    /// One forward pass: validates the tokens against the context, builds rotary tables (and,
    /// for left-padded batches, per-row positions counted from each row's first real token and
    /// a key mask that hides the padding), runs every block under the context's policy and the
    /// LM head on hidden rows `head_rows`.
    ///
    /// A plain forward (no cache, every position) that also returns the hidden states: the
    /// input of every block and the final normed state.
    pub(crate) fn forward_with_hidden(
        &self,
        arch: &Arch,
        tokens: Tensor<2, Int>,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>)> {
        let [_, seq] = tokens.dims();
        let mut policy = crate::cache::NoCache;
        let mut cache = crate::cache::FeatureCache::new();
        let mut flops = crate::flops::FlopCounter::new();
        let info = crate::denoiser::StepInfo {
            index: 0,
            prompt_len: seq,
            response_len: 0,
        };
        let mut ctx = StepContext::new(info, &mut policy, &mut cache, &mut flops);
        let mut hidden = Vec::with_capacity(arch.n_layers + 1);
        let logits = self.forward(arch, tokens, &mut ctx, 0..seq, Some(&mut hidden))?;
        Ok((logits, hidden))
    }

    /// `hidden`, when given, receives the input of every block and the final normed state.
    pub(crate) fn forward(
        &self,
        arch: &Arch,
        tokens: Tensor<2, Int>,
        ctx: &mut StepContext<'_>,
        head_rows: std::ops::Range<usize>,
        hidden: Option<&mut Vec<Tensor<3>>>,
    ) -> Result<Tensor<3>> {
        let seq = validate_tokens(&tokens, ctx, arch.max_len, arch.vocab_rows)?;
        let device = tokens.device();
        let [batch, _] = tokens.dims();
        let padded = ctx.left_pad.filter(|pads| pads.iter().any(|&p| p > 0));
        let (positions, key_mask) = match padded {
            Some(pads) => {
                // Dream's `tok_idx`: cumsum(mask) - 1, with padding positions set to 1.
                let positions: Vec<Vec<i64>> = pads
                    .iter()
                    .map(|&pad| {
                        (0..seq)
                            .map(|j| if j < pad { 1 } else { (j - pad) as i64 })
                            .collect()
                    })
                    .collect();
                let mask: Vec<bool> = pads
                    .iter()
                    .flat_map(|&pad| (0..seq).map(move |j| j < pad))
                    .collect();
                let mask = Tensor::<4, Bool>::from_data(
                    TensorData::new(mask, [batch, 1, 1, seq]),
                    &device,
                );
                (positions, Some(mask))
            }
            None => (vec![(0..seq as i64).collect()], None),
        };
        let rope = Rope::new(
            arch.head_dim(),
            arch.rope_theta,
            &positions,
            arch.rotate_in_f32,
            &device,
        );
        let env = LayerEnv {
            rope: &rope,
            prompt_len: ctx.info.prompt_len,
            key_mask: key_mask.as_ref(),
        };
        self.run(tokens, &env, ctx, head_rows, hidden)
    }
}

/// Checks a forward's tokens against its context and the model limits; returns the length.
fn validate_tokens(
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
    if let Some(pads) = ctx.left_pad
        && (pads.len() != batch || pads.iter().any(|&p| p >= info.prompt_len.max(1)))
    {
        return Err(Error::invalid(
            "left_pad",
            format!(
                "{pads:?} for {batch} rows with a {}-token prompt",
                info.prompt_len
            ),
        ));
    }
    let out_of_range = tokens
        .clone()
        .lower_elem(0)
        .bool_or(tokens.clone().greater_equal_elem(vocab as i64));
    if out_of_range.any().into_scalar::<bool>() {
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
