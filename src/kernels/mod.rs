//! Backend fast paths, and all of the crate's `unsafe`.
//!
//! With the `cpu-kernels` feature (default) and the flex backend in float32, attention, the
//! SwiGLU product (fused with the gate and up projections over more than 32 rows), the rotary
//! embedding and every linear product run on this module's kernels; everywhere else (other
//! backends, other dtypes, autodiff, the feature off) the model uses burn's own ops. Each
//! entry point says when it declines, and the caller falls back; the two paths compute the
//! same functions with a different order of float32 summation, and the golden tests pass
//! with either.
//!
//! # Safety
//!
//! The `unsafe` code here is of three kinds, each argued where it occurs:
//!
//! * calls of `gemm::gemm` on raw pointers (attention scores and outputs, the widened
//!   products): every pointer, length and stride is derived from slices whose lengths are
//!   checked against the matrix extents before the call (`assert!`s in `attention::head` and
//!   `widen::tile`), so every read and write stays inside its slice;
//! * writes into disjoint tiles of one output buffer from parallel tasks (`attention::Tiles`,
//!   `widen::Bands`; the fused FFN product `widen::linear_swiglu` also rereads its own tile
//!   to apply the SwiGLU): each task owns a distinct (query rows, head) tile, column band or
//!   column chunk (the thin kernels' writes are checked against the chunk's bounds), the
//!   tiles partition the buffer, and the buffer outlives the parallel loop;
//! * calls of functions compiled with `#[target_feature]` (`simd::vectorised`, the kernels
//!   inside `dot::product` and `thin::product`): made only after `is_x86_feature_detected!`
//!   confirmed the CPU has those features; inside those kernels, vector loads, stores and
//!   prefetches through pointers offset within slices whose lengths are asserted against the
//!   extents first.
//!
//! No other module of the crate contains `unsafe`.

#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod attention;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod dot;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod rotary;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod simd;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod swiglu;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod thin;
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
mod widen;

use burn::tensor::{Bool, Tensor};

/// The flex primitive of `t` with its float32 elements in one run (a copy only where the view
/// is not contiguous); `None` if `t` is not a flex tensor.
#[cfg(all(feature = "cpu-kernels", feature = "flex"))]
fn flat<const D: usize>(t: &Tensor<D>) -> Option<burn::backend::flex::FlexTensor> {
    let p = t.clone().try_into_primitive::<burn::backend::Flex>().ok()?;
    Some(if p.as_slice::<f32>().is_some() {
        p
    } else {
        p.to_contiguous()
    })
}

/// Keys and values of one segment, head-major: `[batch, kv_heads, rows, head_dim]` each.
pub(crate) type KvSegment = (Tensor<4>, Tensor<4>);

/// `softmax(q k^T / sqrt(head_dim)) v` over the concatenation of `segments`, keys hidden where
/// `key_mask` is true, heads concatenated per query row; `None` where no kernel applies (not
/// flex, not float32, feature off). Segments may be replaced by contiguous copies of
/// themselves (same values).
///
/// # Shapes
/// - `q`: `[batch, nq, heads, head_dim]`
/// - each segment: `[batch, kv_heads, rows_s, head_dim]` (`kv_heads` divides `heads`)
/// - `key_mask`: `[batch, 1, 1, sum of rows_s]`
/// - returns `[batch, nq, heads * head_dim]`
#[allow(unused_variables)] // without the kernels every call declines
pub(crate) fn attention(
    q: &Tensor<4>,
    segments: &mut [KvSegment],
    key_mask: Option<&Tensor<4, Bool>>,
) -> Option<Tensor<3>> {
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    if q.device() == burn::tensor::Device::flex()
        && q.dtype() == burn::tensor::DType::F32
        && segments
            .iter()
            .all(|(k, v)| [k.dtype(), v.dtype()] == [burn::tensor::DType::F32; 2])
    {
        return attention::attention(q, segments, key_mask);
    }
    None
}

/// `silu(gate) * up`, elementwise; the operands back where no kernel applies.
///
/// # Shapes
/// - `gate`, `up`: `[batch, rows, d_ff]`; returns the same shape.
#[allow(clippy::result_large_err)] // once per FFN; the operands go back by value
pub(crate) fn silu_mul(
    gate: Tensor<3>,
    up: Tensor<3>,
) -> Result<Tensor<3>, (Tensor<3>, Tensor<3>)> {
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    if gate.device() == burn::tensor::Device::flex()
        && [gate.dtype(), up.dtype()] == [burn::tensor::DType::F32; 2]
        && gate.dims() == up.dims()
    {
        return swiglu::silu_mul(gate, up);
    }
    Err((gate, up))
}

/// `x · w` for float32 `x` and a float32, bf16 or f16 weight, in float32, one single-threaded
/// gemm per output tile, without a float32 copy of a 16-bit weight; `None` where no kernel
/// applies (not flex, other dtypes, feature off), and the caller uses burn's ops.
///
/// # Shapes
/// - `x`: `[batch, rows, d_in]`, `w`: `[d_in, d_out]`; returns `[batch, rows, d_out]`.
#[allow(unused_variables)] // without the kernels every call declines
pub(crate) fn linear(x: &Tensor<3>, w: &Tensor<2>) -> Option<Tensor<3>> {
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    if x.device() == burn::tensor::Device::flex() {
        return widen::linear(x, w);
    }
    None
}

/// `silu(x · gate) * (x · up)` for float32 `x` and two weights of one shape (float32, bf16 or
/// f16), in one pass that never holds either projection's whole output: the same bits as
/// [`linear`] twice followed by [`silu_mul`]. `None` where no kernel applies (not flex, other
/// dtypes, feature off, or too few rows for the tiled product), and the caller runs those.
///
/// # Shapes
/// - `x`: `[batch, rows, d_in]`, `gate`, `up`: `[d_in, d_ff]`; returns `[batch, rows, d_ff]`.
#[allow(unused_variables)] // without the kernels every call declines
pub(crate) fn linear_swiglu(x: &Tensor<3>, gate: &Tensor<2>, up: &Tensor<2>) -> Option<Tensor<3>> {
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    if x.device() == burn::tensor::Device::flex() {
        return widen::linear_swiglu(x, gate, up);
    }
    None
}

/// `x * cos + rotate_half(x) * sin` (split-halves rotary embedding) in one pass, with the
/// bits of burn's ops; `None` where no kernel applies (not flex, not float32, feature off,
/// other shapes), and the caller uses burn's ops.
///
/// # Shapes
/// - `x`: `[batch, n, heads, head_dim]`, `cos`, `sin`: `[1 or batch, n, 1, head_dim]`;
///   returns `x`'s shape.
#[allow(unused_variables)] // without the kernels every call declines
pub(crate) fn rotary(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    if x.device() == burn::tensor::Device::flex() {
        return rotary::rotate(x, cos, sin);
    }
    None
}

/// Whether a weight whose products are always thin (the LM head, applied to each sequence's
/// current block only) is best stored `[out, in]` (PyTorch's layout) behind a transposed
/// `[in, out]` view on `device`: true on flex with the kernels, where such a product streams
/// each output column's weights as one contiguous run (see `dot`). A layout only: the values
/// are the same. Layer weights stay `[in, out]`, because their full-pass products run faster
/// from that layout (docs/benchmarks.md).
#[allow(unused_variables)] // without the kernels the answer is always no
pub(crate) fn thin_out_in(device: &burn::tensor::Device) -> bool {
    // An autodiff device is not flex's own: its tensors are not flex primitives.
    #[cfg(all(feature = "cpu-kernels", feature = "flex"))]
    let out_in = Tensor::<1>::zeros([1], device)
        .try_into_primitive::<burn::backend::Flex>()
        .is_ok();
    #[cfg(not(all(feature = "cpu-kernels", feature = "flex")))]
    let out_in = false;
    out_in
}

/// `w` (`[in, out]`) in the layout [`thin_out_in`] picks for its device: a transposed view of
/// an `[out, in]` copy there, `w` itself elsewhere. Same values, same dtype.
///
/// # Shapes
/// - `w`: `[d_in, d_out]`; returns the same shape.
pub(crate) fn pack_thin(w: Tensor<2>) -> Tensor<2> {
    if !thin_out_in(&w.device()) {
        return w;
    }
    let (device, dtype) = (w.device(), w.dtype());
    Tensor::<2>::from_data(w.transpose().into_data(), (&device, dtype)).transpose()
}
