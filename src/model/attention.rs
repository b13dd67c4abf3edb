//! Bidirectional scaled dot-product attention for the shared block.
//!
//! Everywhere the block calls burn's fused `attention` op, except on the flex CPU backend in
//! float32 without autodiff, where the `cpu-attention` feature (default) runs the kernel below.
//! Profiling burn-flex 0.22.1's op at 1088 positions (8 heads of 64) showed two thirds of its
//! time in a scalar per-row online-softmax loop and a sixth in scalar `expf`, against 15% in
//! matrix products. The kernel here does the same arithmetic as the unfused definition,
//! `softmax(q k^T / sqrt(d)) v`, per block of query rows: one gemm for the scores, a
//! vectorised softmax of each row, one gemm for the output, blocks in parallel. It computes the
//! same function in float32 with a different order of summation (like any other gemm kernel
//! choice); the golden tests pass with either path.
//!
//! Operands are token-major (`[batch, rows, heads, head_dim]`, as the projections produce
//! them): the kernel reads each head at a row stride, so nothing is transposed, and cached keys
//! of a segment are contiguous rows. Keys and values may have fewer heads than queries
//! (grouped-query attention): query head `h` reads key/value head `h / (heads / kv_heads)`,
//! without materialising the repeated heads.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// `softmax(q k^T / sqrt(head_dim)) v`, keys hidden where `key_mask` is true, heads
/// concatenated per query row (the layout the output projection reads).
///
/// # Shapes
/// - `q`: `[batch, nq, heads, head_dim]`
/// - `k`, `v`: `[batch, seq, kv_heads, head_dim]` (`kv_heads` divides `heads`)
/// - `key_mask`: `[batch, 1, 1, seq]`
/// - returns `[batch, nq, heads * head_dim]`
pub(crate) fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Option<&Tensor<4, Bool>>,
) -> Tensor<3> {
    #[cfg(all(feature = "cpu-attention", feature = "flex"))]
    if q.device() == burn::tensor::Device::flex()
        && [q.dtype(), k.dtype(), v.dtype()] == [burn::tensor::DType::F32; 3]
    {
        return cpu::attention(q, k, v, key_mask);
    }
    fused(q, k, v, key_mask)
}

/// burn's fused op, which wants head-major operands, as many key/value heads as query heads
/// and a full mask.
fn fused(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Option<&Tensor<4, Bool>>,
) -> Tensor<3> {
    let [b, nq, h, hd] = q.dims();
    let [_, seq, kv_heads, _] = k.dims();
    let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
    let (k, v) = if kv_heads == h {
        (k, v)
    } else {
        let rep = h / kv_heads;
        let expand = |t: Tensor<4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, kv_heads, rep, seq, hd])
                .reshape([b, h, seq, hd])
        };
        (expand(k), expand(v))
    };
    let mask = key_mask.map(|m| m.clone().expand([b, h, nq, seq]));
    burn_attention(q, k, v, mask, None, AttentionModuleOptions::default())
        .swap_dims(1, 2)
        .reshape([b, nq, h * hd])
}

#[cfg(all(feature = "cpu-attention", feature = "flex"))]
mod cpu {
    use std::borrow::Cow;

    use burn::tensor::{Bool, Tensor, TensorData};
    use rayon::prelude::*;

    /// Most query rows per task: the score block (64 x seq floats) stays in L2.
    const MAX_ROWS: usize = 64;

    /// The values of a host tensor, borrowed when its bytes are f32 already.
    fn floats(data: &TensorData) -> Cow<'_, [f32]> {
        match data.as_slice::<f32>() {
            Ok(values) => Cow::Borrowed(values),
            Err(_) => Cow::Owned(data.iter::<f32>().collect()),
        }
    }

    /// Takes its inputs by value: a tensor nobody else holds (a fresh `cat`) is read in place
    /// instead of copied.
    pub(super) fn attention(
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        key_mask: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let device = q.device();
        let [b, nq, h, hd] = q.dims();
        let [_, seq, kv_heads, _] = k.dims();
        let width = h * hd;
        let kv_width = kv_heads * hd;
        let mut out = vec![0f32; b * nq * width];
        if nq > 0 && hd > 0 {
            let (qd, kd, vd) = (q.into_data(), k.into_data(), v.into_data());
            let qd = floats(&qd);
            // Head-major keys and values: each head's rows contiguous for the gemm, which
            // measured 2-3x slower reading them at the token-major row stride.
            let (kt, vt) = (floats(&kd), floats(&vd));
            let (kd, vd) = (
                head_major(&kt, b, seq, kv_heads, hd),
                head_major(&vt, b, seq, kv_heads, hd),
            );
            let mask = key_mask.map(|m| m.clone().into_data());
            let mask = mask.as_ref().map(|m| m.iter::<bool>().collect::<Vec<_>>());
            let scale = 1.0 / (hd as f32).sqrt();
            let rep = h / kv_heads;
            // Enough tasks for every thread even when only a few rows are recomputed.
            let tasks_per_batch = (2 * rayon::current_num_threads()).div_ceil(b);
            let rows = nq.div_ceil(tasks_per_batch).clamp(8, MAX_ROWS).min(nq);
            out.par_chunks_mut(nq * width)
                .enumerate()
                .for_each(|(bi, out_batch)| {
                    let keep = mask.as_ref().map(|m| &m[bi * seq..(bi + 1) * seq]);
                    let keys = &kd[bi * seq * kv_width..(bi + 1) * seq * kv_width];
                    let values = &vd[bi * seq * kv_width..(bi + 1) * seq * kv_width];
                    let queries = &qd[bi * nq * width..(bi + 1) * nq * width];
                    out_batch.par_chunks_mut(rows * width).enumerate().for_each(
                        |(blk, out_rows)| {
                            let n = out_rows.len() / width;
                            let q_rows = &queries[blk * rows * width..][..n * width];
                            let mut scores = vec![0f32; n * seq];
                            let dims = Dims {
                                rows: n,
                                seq,
                                hd,
                                q_stride: width,
                                kv_stride: hd,
                                out_stride: width,
                            };
                            for hi in 0..h {
                                let kv = (hi / rep) * seq * hd;
                                let head = Head {
                                    q: &q_rows[hi * hd..],
                                    k: &keys[kv..],
                                    v: &values[kv..],
                                    masked: keep,
                                };
                                block(head, &mut scores, &mut out_rows[hi * hd..], &dims, scale);
                            }
                        },
                    );
                });
        }
        Tensor::from_data(TensorData::new(out, [b, nq, width]), &device)
    }

    /// `[b, seq, kv_heads, hd]` -> `[b, kv_heads, seq, hd]` (borrowed when there is one head).
    fn head_major(src: &[f32], b: usize, seq: usize, kv_heads: usize, hd: usize) -> Cow<'_, [f32]> {
        if kv_heads == 1 {
            return Cow::Borrowed(src);
        }
        let mut dst = vec![0f32; b * kv_heads * seq * hd];
        dst.par_chunks_mut(seq * hd)
            .enumerate()
            .for_each(|(plane, head)| {
                let (bi, g) = (plane / kv_heads, plane % kv_heads);
                let rows = src[bi * seq * kv_heads * hd..].chunks_exact(kv_heads * hd);
                for (d, row) in head.chunks_exact_mut(hd).zip(rows) {
                    d.copy_from_slice(&row[g * hd..(g + 1) * hd]);
                }
            });
        Cow::Owned(dst)
    }

    /// One head's operands for a block of query rows: each slice starts at the head's first
    /// element and holds its rows at the strides of [`Dims`].
    struct Head<'a> {
        /// `[rows, hd]`, row stride `q_stride`.
        q: &'a [f32],
        /// `[seq, hd]`, row stride `kv_stride`.
        k: &'a [f32],
        /// `[seq, hd]`, row stride `kv_stride`.
        v: &'a [f32],
        masked: Option<&'a [bool]>,
    }

    /// Sizes and row strides (in elements) of one head's block.
    #[derive(Clone, Copy)]
    struct Dims {
        rows: usize,
        seq: usize,
        hd: usize,
        q_stride: usize,
        kv_stride: usize,
        out_stride: usize,
    }

    /// Elements a `[rows, hd]` matrix with row stride `stride` spans.
    fn span(rows: usize, stride: usize, hd: usize) -> usize {
        if rows == 0 {
            0
        } else {
            (rows - 1) * stride + hd
        }
    }

    /// Attention of one head for a block of query rows, written to columns `0..hd` of `out`'s
    /// rows (row stride `out_stride`).
    fn block(head: Head<'_>, scores: &mut [f32], out: &mut [f32], d: &Dims, scale: f32) {
        let Dims {
            rows,
            seq,
            hd,
            q_stride,
            kv_stride,
            out_stride,
        } = *d;
        assert!(head.q.len() >= span(rows, q_stride, hd));
        assert!(head.k.len() >= span(seq, kv_stride, hd));
        assert!(head.v.len() >= span(seq, kv_stride, hd));
        assert!(scores.len() == rows * seq && out.len() >= span(rows, out_stride, hd));
        // SAFETY: the asserts above bound every matrix inside its slice: scores [rows x seq]
        // row-major, q [rows x hd] (row stride q_stride), k^T [hd x seq] read from k [seq x hd]
        // (row stride kv_stride).
        unsafe {
            gemm::gemm(
                rows,
                seq,
                hd,
                scores.as_mut_ptr(),
                1,
                seq as isize,
                false,
                head.q.as_ptr(),
                1,
                q_stride as isize,
                head.k.as_ptr(),
                kv_stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        softmax_rows(scores, seq, head.masked);
        // SAFETY: out [rows x hd] (row stride out_stride), scores [rows x seq] row-major and
        // v [seq x hd] (row stride kv_stride), bounded by the asserts above.
        unsafe {
            gemm::gemm(
                rows,
                hd,
                seq,
                out.as_mut_ptr(),
                1,
                out_stride as isize,
                false,
                scores.as_ptr(),
                1,
                seq as isize,
                head.v.as_ptr(),
                1,
                kv_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// Row-wise softmax of `scores` (`seq` columns), masked keys excluded, with the widest
    /// vector instructions the CPU has (one feature check per block, not per row).
    fn softmax_rows(scores: &mut [f32], seq: usize, masked: Option<&[bool]>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { softmax_rows_avx512(scores, seq, masked) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { softmax_rows_avx2(scores, seq, masked) };
                return;
            }
        }
        softmax_rows_portable(scores, seq, masked);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn softmax_rows_avx512(scores: &mut [f32], seq: usize, masked: Option<&[bool]>) {
        for row in scores.chunks_exact_mut(seq) {
            softmax_in_place(row, masked);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn softmax_rows_avx2(scores: &mut [f32], seq: usize, masked: Option<&[bool]>) {
        for row in scores.chunks_exact_mut(seq) {
            softmax_in_place(row, masked);
        }
    }

    fn softmax_rows_portable(scores: &mut [f32], seq: usize, masked: Option<&[bool]>) {
        for row in scores.chunks_exact_mut(seq) {
            softmax_in_place(row, masked);
        }
    }

    /// Independent partial results per lane, so that reductions vectorise (a single running
    /// value is a serial dependency chain the compiler must not reorder).
    const LANES: usize = 16;

    /// One row's softmax, keys where `masked` is true excluded. A row whose keys are all
    /// masked becomes zeros (no key to attend to), as burn's op gives. Inlined into the
    /// feature-specific callers above, so it is compiled once per instruction set.
    #[inline(always)]
    fn softmax_in_place(row: &mut [f32], masked: Option<&[bool]>) {
        if let Some(masked) = masked {
            for (x, &m) in row.iter_mut().zip(masked) {
                if m {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l = if x > *l { x } else { *l };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c) {
                *x = exp(*x - max);
                *s += *x;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }

    /// `e^x` for `x <= 0` (softmax arguments), branch-free so that it vectorises: Cody-Waite
    /// range reduction `x = n ln2 + r`, a degree-6 minimax polynomial for `e^r` on
    /// `|r| <= ln2/2` (relative error below 2e-7), and `2^n` built in the exponent bits.
    /// Arguments below -87 (including -inf) give exactly 0.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let underflow = x < -87.0;
        let xc = x.max(-87.0);
        // Round to nearest with the 1.5 * 2^23 trick: plain adds, which vectorise everywhere.
        const ROUND: f32 = 12_582_912.0;
        let n = (xc * LOG2E + ROUND) - ROUND;
        let r = xc - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (0.166_666_67
                        + r * (0.041_666_42 + r * (0.008_333_457 + r * 0.001_398_2)))));
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        if underflow { 0.0 } else { p * scale }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn exp_is_accurate_on_softmax_arguments() {
            let mut worst = 0f32;
            for i in 0..=200_000 {
                let x = -87.0 * i as f32 / 200_000.0;
                let (got, want) = (exp(x), x.exp());
                worst = worst.max(((got - want) / want).abs());
            }
            assert!(worst < 5e-7, "max relative error {worst}");
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(-100.0), 0.0);
            assert_eq!(exp(0.0), 1.0);
        }

        #[test]
        fn softmax_rows_match_float64_and_fully_masked_rows_are_zero() {
            // Rows longer than the lane count, with a remainder, one key masked.
            let seq = 37;
            let mut scores: Vec<f32> = (0..2 * seq)
                .map(|i| (i as f32 * 0.37).sin() * 4.0)
                .collect();
            let mut masked = vec![false; seq];
            masked[5] = true;
            let want: Vec<f32> = scores
                .chunks(seq)
                .flat_map(|row| {
                    let max = row
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !masked[*j])
                        .map(|(_, &x)| x)
                        .fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f64> = row
                        .iter()
                        .enumerate()
                        .map(|(j, &x)| {
                            if masked[j] {
                                0.0
                            } else {
                                ((x - max) as f64).exp()
                            }
                        })
                        .collect();
                    let sum: f64 = e.iter().sum();
                    e.into_iter()
                        .map(move |x| (x / sum) as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            softmax_rows(&mut scores, seq, Some(&masked));
            for (g, w) in scores.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "{g} vs {w}");
            }
            assert_eq!(scores[5], 0.0);
            let mut dead = vec![f32::NEG_INFINITY; 3];
            softmax_rows(&mut dead, 3, None);
            assert_eq!(dead, vec![0.0; 3]);
        }
    }
}

#[cfg(all(test, feature = "cpu-attention", feature = "flex"))]
mod tests {
    use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

    /// The host kernel against burn's fused op: grouped heads, a key mask, batch > 1, and
    /// query counts below, at and across the row-block size.
    #[test]
    fn host_kernel_matches_burn_fused_op() {
        let device = Device::flex();
        for (b, h, kv_heads, nq, seq, hd) in [
            (1, 4, 4, 1, 5, 8),
            (2, 4, 2, 13, 40, 16),
            (1, 8, 8, 64, 64, 32),
            (2, 6, 3, 130, 150, 8),
        ] {
            let q = Tensor::<4>::random([b, nq, h, hd], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random(
                [b, seq, kv_heads, hd],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let v = Tensor::<4>::random(
                [b, seq, kv_heads, hd],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            // Batch row i hides its first i keys (left padding).
            let hidden: Vec<bool> = (0..b)
                .flat_map(|i| (0..seq).map(move |j| j < 3 * i))
                .collect();
            let mask =
                Tensor::<4, Bool>::from_data(TensorData::new(hidden, [b, 1, 1, seq]), &device);
            for key_mask in [None, Some(&mask)] {
                let want = super::fused(q.clone(), k.clone(), v.clone(), key_mask);
                let got = super::cpu::attention(q.clone(), k.clone(), v.clone(), key_mask);
                assert_eq!(got.dims(), [b, nq, h * hd]);
                let diff: f32 = (got - want).abs().max().into_scalar();
                assert!(
                    diff < 1e-5,
                    "shape {:?}: max difference {diff}",
                    (b, h, kv_heads, nq, seq, hd)
                );
            }
        }
    }
}
