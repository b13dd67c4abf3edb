//! `x · w` for a few rows of `x` against a float32 `[in, out]` weight read in place, with the
//! weight rows ahead prefetched in software.
//!
//! A cached step multiplies 16-64 rows by every layer weight, so each weight element does 16-64
//! multiply-adds once it is loaded: the product is bound by how fast the weight streams from
//! memory. gemm 0.19 reads such a weight in place 64 columns of a row at a time with a row
//! stride of the full width (2-6 KiB for these layers), a pattern the hardware prefetchers
//! follow poorly (docs/benchmarks.md measured 5-8 GB/s against 27 GB/s for a sequential read).
//! This kernel walks tiles of the same size (6 rows by 64 columns of accumulators on AVX-512, 3
//! by 32 on AVX2) over passes of [`KC`] weight rows, so that the tiles after a pass's first
//! find its weights in L1, and asks for the weight rows [`AHEAD`] iterations in advance. Each
//! output element is one chain of fused multiply-adds over `i` in order.

/// Weight rows the prefetches run ahead of the loads.
const AHEAD: usize = 16;

/// Whether [`product`] runs on this CPU.
pub(super) fn available() -> bool {
    super::dot::available()
}

/// `out(r, c, v)`, for each row `r < m` and each run of columns from `c` in `cols`, the values
/// `v[j] = x[r] · w[:, c + j]`, with `x` `[m, k]` row-major and `w` `[k, n]` row-major. `false`
/// (and nothing written) where the CPU lacks AVX2 and FMA or a column bound is not a multiple
/// of the vector width used (16); the caller then takes another path.
///
/// `x.len() >= m * k` and `w.len() >= k * n` are the caller's to ensure; shorter slices end in
/// a bounds-check panic, never an out-of-bounds read.
pub(super) fn product(
    x: &[f32],
    w: &[f32],
    [m, k, n]: [usize; 3],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, &[f32]),
) -> bool {
    if !cols.start.is_multiple_of(16) || !cols.end.is_multiple_of(16) || cols.end > n {
        return false;
    }
    assert!(x.len() >= m * k && w.len() >= k * n);
    match super::simd::fma_isa() {
        // SAFETY: the CPU has the features the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { with_avx512(x, w, [m, k, n], cols, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { with_avx2(x, w, [m, k, n], cols, out) },
        _ => {
            let _ = (x, w, m, k, n, cols, out);
            return false;
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One tile: `$mr` rows from `$r0` by `$nv` vectors of `$lanes` columns from `$c0`, over the
/// weight rows `$ks`, its running sums kept in `$acc` (`[m, $nv * $lanes]` row-major, read
/// back unless the range starts at row 0). Storing and reloading a float32 sum is exact, so
/// each output element stays one chain of fused multiply-adds over `i` in order. With
/// `$ahead` the weight rows [`AHEAD`] iterations on are prefetched. Expanded inside the
/// `#[target_feature]` functions so that the intrinsics inline there.
#[cfg(target_arch = "x86_64")]
macro_rules! tile {
    ($mr:literal, $nv:literal, $lanes:literal, $zero:expr, $load:ident, $store:ident, $set1:ident, $fma:ident,
     $x:expr, $w:expr, [$k:expr, $n:expr], $ks:expr, $r0:expr, $c0:expr, $acc:expr, $ahead:expr) => {{
        let (x, w, k, n, ks, r0, c0, sums, ahead): (
            &[f32],
            &[f32],
            usize,
            usize,
            std::ops::Range<usize>,
            usize,
            usize,
            &mut [f32],
            bool,
        ) = ($x, $w, $k, $n, $ks, $r0, $c0, $acc, $ahead);
        const BW: usize = $nv * $lanes;
        // Every index below stays under these bounds.
        assert!(
            (r0 + $mr) * k <= x.len()
                && c0 + BW <= n
                && k * n <= w.len()
                && ks.end <= k
                && (r0 + $mr) * BW <= sums.len()
        );
        let (xp, wp, sp) = (x.as_ptr(), w.as_ptr(), sums.as_mut_ptr());
        let mut acc = [[$zero; $nv]; $mr];
        if ks.start > 0 {
            for r in 0..$mr {
                for v in 0..$nv {
                    // SAFETY: (r0 + r) * BW + v * lanes + lanes <= (r0 + mr) * BW (asserted).
                    acc[r][v] = unsafe { $load(sp.add((r0 + r) * BW + v * $lanes)) };
                }
            }
        }
        for i in ks {
            if ahead && i + AHEAD < k {
                for v in 0..$nv {
                    // A 64-byte line per vector on AVX-512, every other line's start on AVX2
                    // (the other half of the line shares it).
                    if $lanes == 16 || v % 2 == 0 {
                        // SAFETY: row i + AHEAD < k, columns inside n (asserted): inside w.
                        let p = unsafe { wp.add((i + AHEAD) * n + c0 + v * $lanes) };
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
            }
            let mut wv = [$zero; $nv];
            for v in 0..$nv {
                // SAFETY: row i < k, columns c0 + v * lanes.. + lanes <= n (asserted).
                wv[v] = unsafe { $load(wp.add(i * n + c0 + v * $lanes)) };
            }
            for r in 0..$mr {
                // SAFETY: row r0 + r < r0 + mr, column i < k (asserted).
                let xv = $set1(unsafe { *xp.add((r0 + r) * k + i) });
                for v in 0..$nv {
                    acc[r][v] = $fma(xv, wv[v], acc[r][v]);
                }
            }
        }
        for r in 0..$mr {
            for v in 0..$nv {
                // SAFETY: as for the loads above.
                unsafe { $store(sp.add((r0 + r) * BW + v * $lanes), acc[r][v]) };
            }
        }
    }};
}

/// Weight rows per pass over a column block: 128 rows of 64 columns are 32 KiB, which stay
/// in L1 while every row tile reads them.
const KC: usize = 128;

/// Column blocks of `$nv` vectors (then single vectors for the rest), each in passes of
/// [`KC`] weight rows, each pass over all rows in tiles of `$mr` and then the remaining rows
/// as one tile of their count: the first tile of a pass streams the weight rows from memory,
/// the others find them in cache.
#[cfg(target_arch = "x86_64")]
macro_rules! blocks {
    ($mr:literal, $nv:literal, $lanes:literal, $zero:expr, $load:ident, $store:ident, $set1:ident, $fma:ident,
     $x:expr, $w:expr, [$m:expr, $k:expr, $n:expr], $cols:expr, $out:expr) => {{
        let (x, w, m, k, n, cols): (&[f32], &[f32], usize, usize, usize, std::ops::Range<usize>) =
            ($x, $w, $m, $k, $n, $cols);
        let out = $out;
        let mut sums = vec![0f32; m * $nv * $lanes];
        let mut c0 = cols.start;
        while c0 < cols.end {
            let wide = c0 + $nv * $lanes <= cols.end;
            let bw = if wide { $nv * $lanes } else { $lanes };
            for k0 in (0..k).step_by(KC) {
                let ks = k0..(k0 + KC).min(k);
                let mut r0 = 0;
                while r0 < m {
                    let rows = $mr.min(m - r0);
                    macro_rules! at {
                        ($h:literal, $v:literal) => {
                            tile!(
                                $h,
                                $v,
                                $lanes,
                                $zero,
                                $load,
                                $store,
                                $set1,
                                $fma,
                                x,
                                w,
                                [k, n],
                                ks.clone(),
                                r0,
                                c0,
                                &mut sums[..],
                                r0 == 0
                            )
                        };
                    }
                    macro_rules! go {
                        ($h:literal) => {
                            if wide { at!($h, $nv) } else { at!($h, 1) }
                        };
                    }
                    // Row counts below $mr each get a tile of their own height, so that no
                    // lane computes a row that is not there.
                    match rows {
                        1 => go!(1),
                        2 => go!(2),
                        3 => go!(3),
                        4 if $mr >= 4 => go!(4),
                        5 if $mr >= 5 => go!(5),
                        _ => go!($mr),
                    }
                    r0 += rows;
                }
            }
            for r in 0..m {
                out(r, c0, &sums[r * bw..(r + 1) * bw]);
            }
            c0 += bw;
        }
    }};
}

// 24 accumulators, 4 weight vectors and a broadcast row value of AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn with_avx512(
    x: &[f32],
    w: &[f32],
    [m, k, n]: [usize; 3],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, &[f32]),
) {
    blocks!(
        6,
        4,
        16,
        _mm512_setzero_ps(),
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        x,
        w,
        [m, k, n],
        cols,
        out
    );
}

// 12 accumulators, 4 weight vectors and a broadcast row value of AVX2's 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2(
    x: &[f32],
    w: &[f32],
    [m, k, n]: [usize; 3],
    cols: std::ops::Range<usize>,
    out: &mut impl FnMut(usize, usize, &[f32]),
) {
    blocks!(
        3,
        4,
        8,
        _mm256_setzero_ps(),
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        x,
        w,
        [m, k, n],
        cols,
        out
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `f` hands out, as a `[m, cols.end]` matrix (NaN where nothing was written),
    /// and how many values it handed out.
    fn collect(
        m: usize,
        cols: &std::ops::Range<usize>,
        f: impl FnOnce(&mut dyn FnMut(usize, usize, &[f32])),
    ) -> (Vec<f32>, usize) {
        let mut got = vec![f32::NAN; m * cols.end];
        let mut seen = 0;
        f(&mut |r, c, v| {
            got[r * cols.end + c..][..v.len()].copy_from_slice(v);
            seen += v.len();
        });
        (got, seen)
    }

    #[test]
    fn matches_float64_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Row counts on and off the tile heights, column ranges with a partial block and an
        // offset start, k below and above the prefetch distance and one, two and
        // three passes of [`KC`] rows, the last one short.
        for (m, k, n, cols) in [
            (1, 1, 16, 0..16),
            (3, 17, 48, 16..48),
            (7, 100, 80, 0..80),
            (13, 33, 128, 64..128),
            (16, 512, 96, 0..96),
            (5, 300, 64, 0..64),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                .collect();
            type Variant<'a> = Box<dyn Fn(&mut dyn FnMut(usize, usize, &[f32])) + 'a>;
            let mut variants: Vec<(String, Variant)> = vec![(
                "dispatch".into(),
                Box::new(|out| {
                    assert!(product(&x, &w, [m, k, n], cols.clone(), &mut |r, c, v| {
                        out(r, c, v)
                    }))
                }),
            )];
            #[cfg(target_arch = "x86_64")]
            for isa in super::super::simd::isas() {
                let (x, w, cs) = (&x, &w, cols.clone());
                variants.push((
                    format!("{isa:?}"),
                    Box::new(move |out| {
                        let out = &mut |r, c, v: &[f32]| out(r, c, v);
                        // SAFETY: `isas` lists only instruction sets the CPU has.
                        unsafe {
                            match isa {
                                Isa::Avx512 => with_avx512(x, w, [m, k, n], cs.clone(), out),
                                Isa::Avx2 => with_avx2(x, w, [m, k, n], cs.clone(), out),
                            }
                        }
                    }),
                ));
            }
            // `available` and `isas` agree on what the CPU runs.
            #[cfg(target_arch = "x86_64")]
            assert!(variants.len() >= 2);
            for (name, f) in variants {
                let (got, seen) = collect(m, &cols, f);
                assert_eq!(seen, m * cols.len(), "{name} {m}x{k}x{n} {cols:?}");
                super::super::simd::assert_matches_f64(
                    &format!("{name} {m}x{k}x{n} {cols:?}"),
                    &got,
                    m,
                    cols.clone(),
                    |r, c| {
                        (0..k)
                            .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + c]))
                            .sum()
                    },
                );
            }
        }
    }

    #[test]
    fn declines_columns_off_the_vector_width() {
        let (x, w) = (vec![1f32; 4], vec![1f32; 4 * 40]);
        for cols in [0..40, 8..32, 0..48] {
            assert!(!product(&x, &w, [1, 4, 40], cols, &mut |_, _, _| {
                panic!("declined products write nothing")
            }));
        }
    }
}
