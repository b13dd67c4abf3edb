//! The SwiGLU product `silu(gate) * up` on the flex backend in float32.
//!
//! burn computes `silu` as `x * sigmoid(x)` in several elementwise passes, with a scalar libm
//! `exp` per element; at 1088 rows and a 1376-wide FFN that is six passes over 6 MB per layer.
//! Here one vectorised pass computes the product in the gate's own buffer when nothing else
//! holds it (the fresh output of the gate projection). The exponential is the attention
//! kernel's polynomial (relative error below 5e-7).

use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::simd::{exp, vectorised};

/// `silu(gate) * up`, or both operands back when they are not flex float32 tensors of one
/// shape whose gate buffer this call can own.
#[allow(clippy::result_large_err)] // once per FFN; the operands go back by value
pub(super) fn silu_mul(
    gate: Tensor<3>,
    up: Tensor<3>,
) -> Result<Tensor<3>, (Tensor<3>, Tensor<3>)> {
    let Some(u) = up
        .clone()
        .try_into_primitive::<Flex>()
        .ok()
        .filter(|p| p.as_slice::<f32>().is_some())
    else {
        return Err((gate, up));
    };
    let u = u.as_slice::<f32>().expect("checked above");
    let Ok(mut g) = gate.clone().try_into_primitive::<Flex>() else {
        return Err((gate, up));
    };
    // `gate` still holds the buffer: release it so that `g` is the only owner.
    drop(gate);
    if !g.is_contiguous() || g.layout().start_offset() != 0 {
        return Err((Tensor::from_primitive::<Flex>(g), up));
    }
    let Some(gs) = g.try_storage_mut::<f32>() else {
        return Err((Tensor::from_primitive::<Flex>(g), up));
    };
    if gs.len() != u.len() {
        return Err((Tensor::from_primitive::<Flex>(g), up));
    }
    gs.par_chunks_mut(16 * 1024)
        .zip(u.par_chunks(16 * 1024))
        .for_each(|(g, u)| silu_mul_chunk(g, u));
    Ok(Tensor::from_primitive::<Flex>(g))
}

/// `g = silu(g) * u` with the widest vector instructions the CPU has.
pub(super) fn silu_mul_chunk(g: &mut [f32], u: &[f32]) {
    vectorised(
        #[inline(always)]
        || {
            g.iter_mut().zip(u).for_each(|(g, &u)| *g = silu(*g) * u);
        },
    );
}

/// `x * sigmoid(x)`, branch-free: with `t = e^-|x|` (never overflows),
/// `sigmoid(x) = 1 / (1 + t)` for `x >= 0` and `t / (1 + t)` otherwise.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let t = exp(-x.abs());
    let s = if x >= 0.0 { 1.0 } else { t } / (1.0 + t);
    x * s
}

#[cfg(test)]
mod tests {
    #[test]
    fn silu_matches_the_definition() {
        let mut worst = 0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 / 1000.0;
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = super::silu(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst < 1e-6, "max relative error {worst}");
        assert_eq!(super::silu(0.0), 0.0);
        assert!(super::silu(-200.0).abs() < 1e-30 && super::silu(200.0) == 200.0);
    }
}
