//! Embedding, blocks, final norm and LM head: the part of a model that runs a forward pass.

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::arch::Arch;
use super::block::Block;
use super::executor::LayerEnv;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::stream::Stream;
use crate::denoiser::StepContext;
use crate::error::{Error, Result};

/// Embedding, blocks, final norm and LM head: the part of a model that runs a forward pass.
#[derive(Module, Debug)]
pub struct Backbone {
    /// Token embedding, `[vocab_rows, d_model]`.
    pub embed: Embedding,
    /// The transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: RmsNorm,
    /// LM head, `d_model -> vocab`.
    pub head: Linear,
}

impl Backbone {
    /// Bytes held by every parameter, in the types they are stored in.
    pub(crate) fn weight_bytes(&self) -> usize {
        struct Sum(usize);
        impl burn::module::ModuleVisitor for Sum {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let t = param.val();
                self.0 += t.shape().num_elements() * t.dtype().size();
            }
        }
        let mut sum = Sum(0);
        burn::module::Module::visit(self, &mut sum);
        sum.0
    }
}

impl Backbone {
    /// Runs every block and the LM head on hidden rows `head_from..head_to`.
    ///
    /// `hidden`, when given, receives the input of every block and the final normed state.
    pub(crate) fn run(
        &self,
        tokens: Tensor<2, Int>,
        env: &LayerEnv<'_>,
        ctx: &mut StepContext<'_>,
        head_rows: std::ops::Range<usize>,
        mut hidden: Option<&mut Vec<Tensor<3>>>,
    ) -> Result<Tensor<3>> {
        ctx.policy.begin_step(&ctx.info);
        // 16-bit embedding tables give 16-bit rows; the stream runs in the norms' type.
        let embedded = self
            .embed
            .forward(tokens)
            .cast(self.norm.weight.val().dtype());
        let mut x = Stream::new(embedded, env.prompt_len);
        for (layer, block) in self.blocks.iter().enumerate() {
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.whole());
            }
            block.forward_step(layer, &mut x, env, ctx)?;
        }
        let [b, _, d] = x.dims();
        let rows = head_rows.end - head_rows.start;
        let x = match hidden {
            Some(h) => {
                let x = self.norm.forward(x.whole());
                h.push(x.clone());
                x.narrow(1, head_rows.start, rows)
            }
            None => self.norm.forward(x.rows(head_rows)),
        };
        let [_, vocab] = self.head.weight.dims();
        ctx.flops.add_lm_head(b * rows, d, vocab);
        ctx.flops.forwards += 1;
        Ok(super::block::apply(&self.head, x))
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
        let info = crate::cache::StepInfo::new(0, seq, 0);
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
