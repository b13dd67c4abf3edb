//! Thin products against a weight stored `[out, in]`: every output element a dot product of
//! an input row and a weight row, both contiguous.
//!
//! A cached step multiplies 16-64 rows by weights that no cache holds (a layer's 12.6 MB, the
//! LM head's 65 MB at d512), so the product is bound by how fast the weight streams from
//! memory. With each output column's weights contiguous, a block of [`NR`] columns is one
//! sequential run of `NR * k` floats that the hardware prefetchers follow, read from memory
//! once and from L1 for every further block of rows. gemm 0.19 instead packs a column band
//! of a row-major weight on every call, 64 columns of a row at a time with a stride of the full
//! width: 5-8 GB/s on a VM whose plain reads reach 27-33 GB/s.
//!
//! The block of `MR` rows by `NR` columns keeps `MR * NR` vector accumulators, one per output,
//! each lane summing every `L`-th term; the lanes are added pairwise at the end and the
//! `k % L` tail after that. Fused multiply-adds only: the kernel runs only on CPUs with FMA
//! (AVX-512F, or AVX2 with FMA, detected at run time), and the caller uses gemm elsewhere.

/// Weight columns per block.
const NR: usize = 4;

/// `out(r, c) = x[r] · w[c]` for rows `r < m` of `x` (`[m, k]` row-major) and the weight rows
/// `cols` of `w` (`[_, k]` row-major: one row per output column), handed to `out` one value
/// at a time. `false` (and nothing written) where the CPU has no FMA.
///
/// `x.len() >= m * k` and `w.len() >= cols.end * k` are the caller's to ensure; shorter
/// slices end in a bounds-check panic, never an out-of-bounds read.
pub(super) fn product(
    x: &[f32],
    w: &[f32],
    [m, k]: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { with_avx512(x, w, [m, k], cols, out) };
            return true;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            unsafe { with_avx2(x, w, [m, k], cols, out) };
            return true;
        }
    }
    let _ = (x, w, m, k, cols, out);
    false
}

/// Whether [`product`] runs on this CPU.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            || (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

// 16 accumulators of 16 lanes and 8 operand vectors fit AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn with_avx512(
    x: &[f32],
    w: &[f32],
    mk: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) {
    columns::<4, 16>(x, w, mk, cols, out);
}

// 12 accumulators of 8 lanes, 3 row vectors and one weight vector: AVX2's 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2(
    x: &[f32],
    w: &[f32],
    mk: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) {
    columns::<3, 8>(x, w, mk, cols, out);
}

/// Blocks of [`NR`] columns (the last one padded by repeating its last column, whose extra
/// results are dropped), each over all rows: `MR` at a time, then the rest one by one, while
/// the block's weights sit in L1.
#[inline(always)]
fn columns<const MR: usize, const L: usize>(
    x: &[f32],
    w: &[f32],
    [m, k]: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) {
    let mut c0 = cols.start;
    while c0 < cols.end {
        let width = NR.min(cols.end - c0);
        let wr: [&[f32]; NR] =
            std::array::from_fn(|j| &w[(c0 + j.min(width - 1)) * k..][..k]);
        let mut r0 = 0;
        while r0 + MR <= m {
            let xr: [&[f32]; MR] = std::array::from_fn(|i| &x[(r0 + i) * k..][..k]);
            let sums = block::<MR, L>(xr, wr, k);
            for (i, row) in sums.iter().enumerate() {
                for (j, &s) in row.iter().take(width).enumerate() {
                    out(r0 + i, c0 + j, s);
                }
            }
            r0 += MR;
        }
        for r in r0..m {
            let sums = block::<1, L>([&x[r * k..][..k]], wr, k);
            for (j, &s) in sums[0].iter().take(width).enumerate() {
                out(r, c0 + j, s);
            }
        }
        c0 += width;
    }
}

/// The `MR x NR` dot products of `xr` and `wr` (all of length `k`).
#[inline(always)]
fn block<const MR: usize, const L: usize>(
    xr: [&[f32]; MR],
    wr: [&[f32]; NR],
    k: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[[0f32; L]; NR]; MR];
    let full = k - k % L;
    let mut i = 0;
    while i < full {
        let xv: [&[f32]; MR] = std::array::from_fn(|r| &xr[r][i..i + L]);
        for (j, wj) in wr.iter().enumerate() {
            let wv = &wj[i..i + L];
            for r in 0..MR {
                for l in 0..L {
                    acc[r][j][l] = xv[r][l].mul_add(wv[l], acc[r][j][l]);
                }
            }
        }
        i += L;
    }
    let mut sums = [[0f32; NR]; MR];
    for r in 0..MR {
        for j in 0..NR {
            let mut v = acc[r][j];
            let mut half = L / 2;
            while half > 0 {
                for l in 0..half {
                    v[l] += v[l + half];
                }
                half /= 2;
            }
            let mut s = v[0];
            for t in full..k {
                s = xr[r][t].mul_add(wr[j][t], s);
            }
            sums[r][j] = s;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_float64_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Row counts around the row block, k with and without a lane tail, column ranges
        // with a partial last block and an offset start.
        for (m, k, cols) in [
            (1, 1, 0..1),
            (3, 17, 0..5),
            (4, 16, 2..7),
            (9, 100, 1..13),
            (16, 512, 0..8),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..cols.end * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                .collect();
            let mut got = vec![f32::NAN; m * cols.end];
            let mut seen = 0;
            assert!(product(&x, &w, [m, k], cols.clone(), &mut |r, c, v| {
                got[r * cols.end + c] = v;
                seen += 1;
            }));
            assert_eq!(seen, m * cols.len(), "{m}x{k} {cols:?}");
            for r in 0..m {
                for c in cols.clone() {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i]))
                        .sum();
                    let g = f64::from(got[r * cols.end + c]);
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{k} {cols:?} [{r},{c}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
