//! The rotary embedding (split-halves layout) on the flex backend in float32, in one pass.
//!
//! burn's ops rotate in five passes over the projection (two narrows, a negation, a
//! concatenation, two products and a sum, each a fresh buffer); at prompt 1024 that is about
//! 2 MB per pass for each of q and k per layer. Here each output element is the same two
//! products and one sum, in the same order, so the result has the same bits.

use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::simd::vectorised;

/// `x * cos + rotate_half(x) * sin`, or `None` where the operands are not flex float32
/// tensors of the shapes below.
///
/// # Shapes
/// - `x`: `[batch, n, heads, head_dim]` (`head_dim` even)
/// - `cos`, `sin`: `[1 or batch, n, 1, head_dim]`; returns `x`'s shape.
pub(super) fn rotate(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    let [b, n, h, hd] = x.dims();
    let [rows_b, tn, one, thd] = cos.dims();
    let fits = sin.dims() == cos.dims()
        && [tn, one, thd] == [n, 1, hd]
        && (rows_b == 1 || rows_b == b)
        && hd.is_multiple_of(2)
        && [x.dtype(), cos.dtype(), sin.dtype()] == [DType::F32; 3];
    if !fits {
        return None;
    }
    let (xp, cp, sp) = (super::flat(x)?, super::flat(cos)?, super::flat(sin)?);
    let (xs, cs, ss) = (
        xp.as_slice::<f32>()?,
        cp.as_slice::<f32>()?,
        sp.as_slice::<f32>()?,
    );
    let width = h * hd;
    if xs.len() != b * n * width || cs.len() != rows_b * n * hd || ss.len() != cs.len() {
        return None;
    }
    let mut out = vec![0f32; xs.len()];
    if width > 0 {
        let half = hd / 2;
        out.par_chunks_mut(width)
            .zip(xs.par_chunks(width))
            .enumerate()
            .with_min_len(16)
            .for_each(|(row, (o, x))| {
                // Position `row % n` of batch row `row / n`; one table row for the batch when
                // all rows share positions.
                let t = if rows_b == 1 { row % n } else { row };
                let (c, s) = (&cs[t * hd..(t + 1) * hd], &ss[t * hd..(t + 1) * hd]);
                vectorised(
                    #[inline(always)]
                    || {
                        for (o, x) in o.chunks_exact_mut(hd).zip(x.chunks_exact(hd)) {
                            let (x1, x2) = x.split_at(half);
                            let (o1, o2) = o.split_at_mut(half);
                            let (c1, c2) = c.split_at(half);
                            let (s1, s2) = s.split_at(half);
                            // rotate_half(x) = [-x2, x1]; (-a) * b rounds as -(a * b).
                            for j in 0..half {
                                o1[j] = x1[j] * c1[j] + -x2[j] * s1[j];
                                o2[j] = x2[j] * c2[j] + x1[j] * s2[j];
                            }
                        }
                    },
                );
            });
    }
    Some(Tensor::from_data(
        TensorData::new(out, [b, n, h, hd]),
        &x.device(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// burn's ops, as `Rope::apply` computes the rotation in float32.
    fn reference(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }

    #[test]
    fn rotation_has_the_bits_of_burns_ops() {
        let device = Device::flex();
        let values = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    ((i as u32 ^ seed).wrapping_mul(2_654_435_761) % 2001) as f32 / 700.0 - 1.4
                })
                .collect()
        };
        // Shared and per-batch-row tables, and a table narrowed out of a longer one (a view
        // with an offset, as `Rope::rows` gives).
        for (b, n, h, hd, rows_b) in [(1, 5, 3, 8, 1), (2, 7, 2, 16, 2), (2, 33, 4, 64, 1)] {
            let x = Tensor::<4>::from_data(
                TensorData::new(values(b * n * h * hd, 1), [b, n, h, hd]),
                &device,
            );
            let table = |seed| {
                Tensor::<4>::from_data(
                    TensorData::new(values(rows_b * (n + 3) * hd, seed), [rows_b, n + 3, 1, hd]),
                    &device,
                )
                .narrow(1, 2, n)
            };
            let (cos, sin) = (table(2), table(3));
            let want: Vec<f32> = reference(x.clone(), cos.clone(), sin.clone())
                .into_data()
                .try_into_vec()
                .unwrap();
            let got = rotate(&x, &cos, &sin).expect("kernel applies");
            assert_eq!(got.dims(), [b, n, h, hd]);
            let got: Vec<f32> = got.into_data().try_into_vec().unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.is_finite() && g.to_bits() == w.to_bits(),
                    "{b}x{n}x{h}x{hd} [{i}]: {g} vs {w}"
                );
            }
        }
        // Odd widths, mismatched tables and other dtypes decline.
        let x = Tensor::<4>::zeros([1, 2, 1, 3], &device);
        let t = Tensor::<4>::zeros([1, 2, 1, 3], &device);
        assert!(rotate(&x, &t, &t).is_none());
        let x = Tensor::<4>::zeros([1, 2, 1, 4], &device);
        assert!(
            rotate(
                &x,
                &Tensor::<4>::zeros([1, 3, 1, 4], &device),
                &Tensor::<4>::zeros([1, 3, 1, 4], &device)
            )
            .is_none()
        );
        let t = Tensor::<4>::zeros([1, 2, 1, 4], &device);
        assert!(rotate(&x.cast(DType::BF16), &t, &t).is_none());
    }
}
