//! The pre-norm transformer block both architectures share: its parameters and its math.
//!
//! One block is `x += o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))` followed by
//! `x += down(silu(gate(n2(x))) * up(n2(x)))`, bidirectional (no causal mask), with grouped-query
//! attention when there are fewer key/value heads than query heads. How a step runs it under a
//! cache policy's plan is the executor's business (`executor.rs`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use super::attention::KvSegment;
use super::executor::LayerEnv;
use super::norm::RmsNorm;
use crate::flops::FlopCounter;

/// One pre-norm transformer block (attention + SwiGLU FFN).
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Query projection, `d_model -> n_heads * head_dim`.
    pub q: Linear,
    /// Key projection, `d_model -> n_kv_heads * head_dim`.
    pub k: Linear,
    /// Value projection, `d_model -> n_kv_heads * head_dim`.
    pub v: Linear,
    /// Attention output projection, `n_heads * head_dim -> d_model`.
    pub o: Linear,
    /// Norm before the FFN.
    pub ffn_norm: RmsNorm,
    /// SwiGLU gate (goes through SiLU), `d_model -> d_ff`.
    pub gate: Linear,
    /// SwiGLU linear branch, `d_model -> d_ff`.
    pub up: Linear,
    /// Down projection, `d_ff -> d_model`.
    pub down: Linear,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Block {
    pub(super) fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub(super) fn proj(&self, lin: &Linear, x: Tensor<3>, flops: &mut FlopCounter) -> Tensor<3> {
        count(lin, &x, flops);
        apply(lin, x)
    }

    pub(super) fn ffn(&self, x: Tensor<3>, flops: &mut FlopCounter) -> Tensor<3> {
        let h = self.ffn_norm.forward(x);
        let fused = match (&self.gate.bias, &self.up.bias) {
            (None, None) => {
                crate::kernels::linear_swiglu(&h, &self.gate.weight.val(), &self.up.weight.val())
            }
            _ => None,
        };
        let act = match fused {
            Some(act) => {
                count(&self.gate, &h, flops);
                count(&self.up, &h, flops);
                act
            }
            None => {
                let gate = self.proj(&self.gate, h.clone(), flops);
                let up = self.proj(&self.up, h, flops);
                swiglu(gate, up)
            }
        };
        self.proj(&self.down, act, flops)
    }

    /// `[b, n, heads*hd]` -> `[b, n, heads, hd]` (a view: rows stay contiguous).
    pub(super) fn heads(&self, x: Tensor<3>, heads: usize) -> Tensor<4> {
        let [b, n, _] = x.dims();
        x.reshape([b, n, heads, self.head_dim])
    }

    /// Multi-head attention of `q` (rotated, `[b, nq, h, hd]`) over the keys (rotated) and
    /// values of the whole sequence, given as head-major segments (`[b, kv_heads, rows, hd]`
    /// each, in sequence order), output projected: `[b, nq, d]`. Segments may come back as
    /// contiguous copies of themselves; store those.
    pub(super) fn attend(
        &self,
        q: Tensor<4>,
        segments: &mut [KvSegment],
        env: &LayerEnv<'_>,
        flops: &mut FlopCounter,
    ) -> Tensor<3> {
        let [b, nq, h, hd] = q.dims();
        let seq: usize = segments.iter().map(|(k, _)| k.dims()[2]).sum();
        flops.add_attention(b, h, nq, seq, hd);
        let out = super::attention::attention(q, segments, env.key_mask);
        self.proj(&self.o, out, flops)
    }
}

/// `x · W + b` as the models compute every linear layer: on flex with float32 activations the
/// crate's kernel (one single-threaded gemm per output tile; a 16-bit weight,
/// [`WeightDtype`](crate::WeightDtype), widened panel by panel inside it), elsewhere burn's
/// `Linear::forward`, or for a narrower weight the weight widened by burn's ops for the one
/// product. Public so that benchmarks and modules of your own run the same path.
///
/// # Shapes
/// - `x`: `[batch, rows, d_in]`, `lin.weight`: `[d_in, d_out]`, `lin.bias` (if any):
///   `[d_out]`; returns `[batch, rows, d_out]`.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if the shapes do not fit.
pub fn linear(lin: &Linear, x: Tensor<3>) -> crate::Result<Tensor<3>> {
    let [d_in, d_out] = lin.weight.dims();
    let [_, _, x_in] = x.dims();
    let bias = lin.bias.as_ref().map(|b| b.dims());
    if x_in != d_in || bias.is_some_and(|b| b != [d_out]) {
        return Err(crate::Error::invalid(
            "linear",
            format!("input width {x_in} against a [{d_in}, {d_out}] weight (bias {bias:?})"),
        ));
    }
    Ok(apply(lin, x))
}

/// [`linear`] on shapes the model guarantees.
pub(super) fn apply(lin: &Linear, x: Tensor<3>) -> Tensor<3> {
    let w = lin.weight.val();
    let y = match crate::kernels::linear(&x, &w) {
        Some(y) => y,
        None if w.dtype() == x.dtype() => return lin.forward(x),
        None => {
            let dtype = x.dtype();
            x.matmul(w.cast(dtype).unsqueeze())
        }
    };
    match &lin.bias {
        Some(bias) => {
            let dtype = y.dtype();
            y + bias.val().cast(dtype).unsqueeze()
        }
        None => y,
    }
}

/// Counts the FLOPs of `lin` applied to `x`.
fn count(lin: &Linear, x: &Tensor<3>, flops: &mut FlopCounter) {
    let [b, n, _] = x.dims();
    let [d_in, d_out] = lin.weight.dims();
    flops.add_linear(b * n, d_in, d_out);
}

/// `silu(gate) * up`: the kernel where one applies, else burn's ops.
fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    match crate::kernels::silu_mul(gate, up) {
        Ok(product) => product,
        Err((gate, up)) => burn::tensor::activation::silu(gate) * up,
    }
}
