//! Thin products against a weight stored `[out, in]`: every output element a dot product of
//! an input row and a weight row, both contiguous.
//!
//! The LM head multiplies only each sequence's current block (16-32 rows) by a weight that no
//! cache holds (65 MB at d512), so the product is bound by how fast the weight streams; the
//! models store it `[out, in]` for this kernel (`kernels::thin_out_in`), while layer weights
//! stay `[in, out]` for their full passes. With each output column's weights contiguous, a block of [`NR`] columns is one
//! sequential run of `NR * k` floats that the hardware prefetchers follow, read from memory
//! once and from L1 for every further block of rows. gemm 0.19 instead packs a column band
//! of a row-major weight on every call, 64 columns of a row at a time with a stride of the full
//! width: 5-8 GB/s on a VM whose plain reads reach 27-33 GB/s.
//!
//! A block of `MR` rows by `NR` columns keeps `MR * NR` vector accumulators in registers, one
//! per output, each lane summing every `L`-th term; the lanes are reduced at the end and the
//! `k % L` tail added after that. Written with `std::arch` intrinsics (the compiler kept
//! array-of-lanes accumulators in scalar FMAs), so it runs only on CPUs with AVX-512F, or
//! AVX2 with FMA, detected at run time; the caller uses gemm elsewhere.

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
    match super::simd::fma_isa() {
        // SAFETY: the CPU has the features the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { with_avx512(x, w, [m, k], cols, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { with_avx2(x, w, [m, k], cols, out) },
        _ => {
            let _ = (x, w, m, k, cols, out);
            return false;
        }
    }
    true
}

/// Whether [`product`] runs on this CPU.
pub(super) fn available() -> bool {
    super::simd::fma_isa().is_some()
}

/// `$mr` rows (`$x`, slices of length `$k`) by [`NR`] columns (`$w`, likewise): lane
/// accumulators over the full vectors, each reduced by `$sum`, then the `k % lanes` tail
/// added in order. Expanded inside the `#[target_feature]` functions below so that the
/// intrinsics inline there.
#[cfg(target_arch = "x86_64")]
macro_rules! block {
    ($mr:literal, $lanes:literal, $zero:expr, $load:ident, $fma:ident, $sum:ident, $x:expr, $w:expr, $k:expr) => {{
        let (x, w, k): ([&[f32]; $mr], [&[f32]; NR], usize) = ($x, $w, $k);
        assert!(x.iter().chain(&w).all(|s| s.len() == k));
        let xp: [*const f32; $mr] = std::array::from_fn(|r| x[r].as_ptr());
        let wp: [*const f32; NR] = std::array::from_fn(|j| w[j].as_ptr());
        let full = k - k % $lanes;
        let mut acc = [[$zero; NR]; $mr];
        let mut i = 0;
        while i < full {
            let mut xv = [$zero; $mr];
            for r in 0..$mr {
                // SAFETY: i + $lanes <= full <= k, and every row is k floats (asserted), so
                // the unaligned load reads inside row r.
                xv[r] = unsafe { $load(xp[r].add(i)) };
            }
            for j in 0..NR {
                // SAFETY: as above, for weight row j.
                let wv = unsafe { $load(wp[j].add(i)) };
                for r in 0..$mr {
                    acc[r][j] = $fma(xv[r], wv, acc[r][j]);
                }
            }
            i += $lanes;
        }
        let mut sums = [[0f32; NR]; $mr];
        for r in 0..$mr {
            for j in 0..NR {
                let mut s = $sum(acc[r][j]);
                for t in full..k {
                    s = x[r][t].mul_add(w[j][t], s);
                }
                sums[r][j] = s;
            }
        }
        sums
    }};
}

/// Blocks of [`NR`] columns (the last one padded by repeating its last column, whose extra
/// results are dropped), each over all rows, `$mr` at a time and then the rest one by one,
/// while the block's weights sit in L1.
#[cfg(target_arch = "x86_64")]
macro_rules! columns {
    ($mr:literal, $lanes:literal, $zero:expr, $load:ident, $fma:ident, $sum:ident, $x:expr, $w:expr, [$m:expr, $k:expr], $cols:expr, $out:expr) => {{
        let (x, w, m, k, cols, out): (&[f32], &[f32], usize, usize, std::ops::Range<usize>, _) =
            ($x, $w, $m, $k, $cols, $out);
        let mut c0 = cols.start;
        while c0 < cols.end {
            let width = NR.min(cols.end - c0);
            let wr: [&[f32]; NR] = std::array::from_fn(|j| &w[(c0 + j.min(width - 1)) * k..][..k]);
            let mut r0 = 0;
            while r0 + $mr <= m {
                let xr: [&[f32]; $mr] = std::array::from_fn(|i| &x[(r0 + i) * k..][..k]);
                let sums = block!($mr, $lanes, $zero, $load, $fma, $sum, xr, wr, k);
                for (i, row) in sums.iter().enumerate() {
                    for (j, &s) in row.iter().take(width).enumerate() {
                        out(r0 + i, c0 + j, s);
                    }
                }
                r0 += $mr;
            }
            for r in r0..m {
                let sums = block!(
                    1,
                    $lanes,
                    $zero,
                    $load,
                    $fma,
                    $sum,
                    [&x[r * k..][..k]],
                    wr,
                    k
                );
                for (j, &s) in sums[0].iter().take(width).enumerate() {
                    out(r, c0 + j, s);
                }
            }
            c0 += width;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// 16 accumulators, 4 row vectors and one weight vector of AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn with_avx512(
    x: &[f32],
    w: &[f32],
    [m, k]: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) {
    columns!(
        4,
        16,
        _mm512_setzero_ps(),
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        sum512,
        x,
        w,
        [m, k],
        cols,
        out
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn sum512(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

// 12 accumulators, 3 row vectors and one weight vector: AVX2's 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2(
    x: &[f32],
    w: &[f32],
    [m, k]: [usize; 2],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, f32),
) {
    columns!(
        3,
        8,
        _mm256_setzero_ps(),
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        sum256,
        x,
        w,
        [m, k],
        cols,
        out
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn sum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
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
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..cols.end * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                .collect();
            // Every variant this CPU runs, not only the one `product` dispatches to. Each
            // entry hands its kernel's values to the sink it is given.
            type Variant<'a> = Box<dyn Fn(&mut dyn FnMut(usize, usize, f32)) + 'a>;
            #[allow(unused_mut)]
            let mut variants: Vec<(String, Variant)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            for isa in super::super::simd::isas() {
                let (x, w, cs) = (&x, &w, cols.clone());
                variants.push((
                    format!("{isa:?}"),
                    Box::new(move |out| {
                        let out = &mut |r, c, v| out(r, c, v);
                        // SAFETY: `isas` lists only instruction sets the CPU has.
                        unsafe {
                            match isa {
                                Isa::Avx512 => with_avx512(x, w, [m, k], cs.clone(), out),
                                Isa::Avx2 => with_avx2(x, w, [m, k], cs.clone(), out),
                            }
                        }
                    }),
                ));
            }
            // `available` and `isas` agree on what the CPU runs.
            #[cfg(target_arch = "x86_64")]
            assert!(!variants.is_empty());
            let mut seen_dispatch = 0;
            assert!(product(&x, &w, [m, k], cols.clone(), &mut |_, _, _| {
                seen_dispatch += 1
            }));
            assert_eq!(seen_dispatch, m * cols.len());
            for (name, f) in variants {
                let mut got = vec![f32::NAN; m * cols.end];
                let mut seen = 0;
                f(&mut |r, c, v| {
                    got[r * cols.end + c] = v;
                    seen += 1;
                });
                assert_eq!(seen, m * cols.len(), "{name} {m}x{k} {cols:?}");
                super::super::simd::assert_matches_f64(
                    &format!("{name} {m}x{k} {cols:?}"),
                    &got,
                    m,
                    cols.clone(),
                    |r, c| {
                        (0..k)
                            .map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i]))
                            .sum()
                    },
                );
            }
        }
    }
}
