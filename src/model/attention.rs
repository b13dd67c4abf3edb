//! Bidirectional scaled dot-product attention for the shared block.
//!
//! Everywhere the block calls burn's fused `attention` op, except on the flex CPU backend in
//! float32 without autodiff, where the `cpu-attention` feature (default) runs the kernel below.
//! Profiling burn-flex 0.22.1's op at 1088 positions (8 heads of 64) showed two thirds of its
//! time in a scalar per-row online-softmax loop and a sixth in scalar `expf`, against 15% in
//! matrix products. The kernel here does the same arithmetic as the unfused definition,
//! `softmax(q k^T / sqrt(d)) v`, per block of query rows: one gemm per key segment for the
//! scores, a vectorised softmax of each row, accumulating gemms for the output, blocks in
//! parallel. It computes the same function in float32 with a different order of summation
//! (like any other gemm kernel choice); the golden tests pass with either path.
//!
//! Queries are token-major (`[batch, rows, heads, head_dim]`, as the projections produce them)
//! and read at a row stride. Keys and values come as segments (prompt, response), head-major
//! (`[batch, kv_heads, rows, head_dim]`), which is what the gemm reads fastest; they are read in
//! place through burn's backend-extension access to the flex primitive, so the cached prompt
//! keys are neither copied nor concatenated at each step. A segment that is not contiguous is
//! made contiguous once and handed back, so that the feature cache stores the contiguous form.
//! Keys and values may have fewer heads than queries (grouped-query attention): query head `h`
//! reads key/value head `h / (heads / kv_heads)`, without materialising the repeated heads.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// Keys and values of one segment, head-major: `[batch, kv_heads, rows, head_dim]` each.
pub(crate) type KvSegment = (Tensor<4>, Tensor<4>);

/// `softmax(q k^T / sqrt(head_dim)) v` over the concatenation of `segments`, keys hidden where
/// `key_mask` is true, heads concatenated per query row (the layout the output projection
/// reads). Segments may be replaced by contiguous copies of themselves (same values).
///
/// # Shapes
/// - `q`: `[batch, nq, heads, head_dim]`
/// - each segment: `[batch, kv_heads, rows_s, head_dim]` (`kv_heads` divides `heads`)
/// - `key_mask`: `[batch, 1, 1, sum of rows_s]`
/// - returns `[batch, nq, heads * head_dim]`
pub(crate) fn attention(
    q: Tensor<4>,
    segments: &mut [KvSegment],
    key_mask: Option<&Tensor<4, Bool>>,
) -> Tensor<3> {
    #[cfg(all(feature = "cpu-attention", feature = "flex"))]
    if q.device() == burn::tensor::Device::flex()
        && q.dtype() == burn::tensor::DType::F32
        && segments
            .iter()
            .all(|(k, v)| [k.dtype(), v.dtype()] == [burn::tensor::DType::F32; 2])
        && let Some(out) = cpu::attention(&q, segments, key_mask)
    {
        return out;
    }
    fused(q, segments, key_mask)
}

/// burn's fused op, which wants one key tensor, head-major queries, as many key/value heads as
/// query heads and a full mask.
fn fused(q: Tensor<4>, segments: &[KvSegment], key_mask: Option<&Tensor<4, Bool>>) -> Tensor<3> {
    let [b, nq, h, hd] = q.dims();
    let k = Tensor::cat(segments.iter().map(|s| s.0.clone()).collect(), 2);
    let v = Tensor::cat(segments.iter().map(|s| s.1.clone()).collect(), 2);
    let [_, kv_heads, seq, _] = k.dims();
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
    burn_attention(
        q.swap_dims(1, 2),
        k,
        v,
        mask,
        None,
        AttentionModuleOptions::default(),
    )
    .swap_dims(1, 2)
    .reshape([b, nq, h * hd])
}

#[cfg(all(feature = "cpu-attention", feature = "flex"))]
pub(super) mod cpu {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{Bool, Tensor, TensorData};
    use rayon::prelude::*;

    use super::KvSegment;

    /// Most query rows per task: the score block (64 x seq floats) stays in L2.
    const MAX_ROWS: usize = 64;

    /// The flex primitive of `t` (sharing its buffer), made contiguous first if it is not:
    /// then `t` is replaced by the contiguous tensor, so callers keep that one.
    fn primitive(t: &mut Tensor<4>) -> Option<FlexTensor> {
        let p = t.clone().try_into_primitive::<Flex>().ok()?;
        if p.as_slice::<f32>().is_some() {
            return Some(p);
        }
        let values = match contiguous(&p) {
            Some(values) => values,
            None => t.clone().into_data().try_into_vec::<f32>().ok()?,
        };
        let device = t.device();
        *t = Tensor::from_data(TensorData::new(values, t.dims()), &device);
        let p = t.clone().try_into_primitive::<Flex>().ok()?;
        p.as_slice::<f32>().is_some().then_some(p)
    }

    /// The values of a 4-D view whose last axis has stride 1 (a head-major view of token-major
    /// keys, a narrowed segment), copied row by row in logical order. burn-flex's general
    /// strided copy walks such a view element by element; this one copies whole head rows.
    fn contiguous(p: &FlexTensor) -> Option<Vec<f32>> {
        let layout = p.layout();
        let dims: &[usize] = layout.shape();
        let strides = layout.strides();
        if dims.len() != 4 || strides[3] != 1 || strides.iter().any(|&s| s < 0) {
            return None;
        }
        let storage = p.storage::<f32>();
        let (s0, s1, s2) = (
            strides[0] as usize,
            strides[1] as usize,
            strides[2] as usize,
        );
        let (rows, row) = (dims[2], dims[3]);
        let last = layout.start_offset() + (dims[0] - 1) * s0 + (dims[1] - 1) * s1;
        if dims.contains(&0) || storage.len() < last + (rows - 1) * s2 + row {
            return None;
        }
        let mut out = vec![0f32; dims.iter().product()];
        out.par_chunks_mut(rows * row)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (i, j) = (plane / dims[1], plane % dims[1]);
                let base = layout.start_offset() + i * s0 + j * s1;
                for (r, d) in dst.chunks_exact_mut(row).enumerate() {
                    d.copy_from_slice(&storage[base + r * s2..base + r * s2 + row]);
                }
            });
        Some(out)
    }

    /// `None` when an operand is not a flex tensor (the caller then uses burn's op).
    pub(super) fn attention(
        q: &Tensor<4>,
        segments: &mut [KvSegment],
        key_mask: Option<&Tensor<4, Bool>>,
    ) -> Option<Tensor<3>> {
        let [b, nq, h, hd] = q.dims();
        let kv_heads = segments.first().map(|(k, _)| k.dims()[1])?;
        let width = h * hd;
        let mut q = q.clone();
        let qp = primitive(&mut q)?;
        let mut prims = Vec::with_capacity(segments.len());
        for (k, v) in segments.iter_mut() {
            prims.push((k.dims()[2], primitive(k)?, primitive(v)?));
        }
        let seq: usize = prims.iter().map(|(n, _, _)| n).sum();
        let mut out = vec![0f32; b * nq * width];
        if nq > 0 && hd > 0 && seq > 0 {
            let qd = qp.as_slice::<f32>()?;
            let mut kv = Vec::with_capacity(prims.len());
            for (n, k, v) in &prims {
                kv.push((*n, k.as_slice::<f32>()?, v.as_slice::<f32>()?));
            }
            let mask = key_mask.map(|m| m.clone().into_data());
            let mask = mask.as_ref().map(|m| m.iter::<bool>().collect::<Vec<_>>());
            let scale = 1.0 / (hd as f32).sqrt();
            let rep = h / kv_heads;
            // Tasks are (batch row, block of query rows, heads): each writes its own tiles of
            // `out` (its rows, its heads' columns). With few query rows (a cached step
            // recomputes 16 of 1088) there is a task per head, each packing only its own
            // head's keys for the gemm.
            let blocks = nq.div_ceil(MAX_ROWS);
            // Row blocks alone give every thread work on a full pass; a task then runs all
            // heads and reuses one score buffer. With few rows, one task per head instead.
            let group = if b * blocks >= 2 * rayon::current_num_threads() {
                h
            } else {
                1
            };
            let groups = h / group;
            let tiles = Tiles(out.as_mut_ptr());
            (0..b * blocks * groups).into_par_iter().for_each(|task| {
                let (bi, rest) = (task / (blocks * groups), task % (blocks * groups));
                let (blk, hg) = (rest / groups, rest % groups);
                let first = blk * MAX_ROWS;
                let n = MAX_ROWS.min(nq - first);
                let mut scores = vec![0f32; n * seq];
                for hi in hg * group..(hg + 1) * group {
                    let g = bi * kv_heads + hi / rep;
                    let heads: Vec<(&[f32], &[f32])> = kv
                        .iter()
                        .map(|(len, k, v)| {
                            let plane = g * len * hd..(g + 1) * len * hd;
                            (&k[plane.clone()], &v[plane])
                        })
                        .collect();
                    let query = Query {
                        q: &qd[(bi * nq + first) * width + hi * hd..],
                        rows: n,
                        q_stride: width,
                        masked: mask.as_ref().map(|m| &m[bi * seq..(bi + 1) * seq]),
                    };
                    let offset = (bi * nq + first) * width + hi * hd;
                    debug_assert!(offset + span(n, width, hd) <= b * nq * width);
                    // SAFETY: `offset` and the rows of this tile ([n x hd] at row stride
                    // `width`) lie inside `out` (b * nq * width elements); tasks cover distinct
                    // (rows, head) pairs, so no two write the same element, and `out` outlives
                    // the loop.
                    unsafe {
                        head(
                            query,
                            &heads,
                            &mut scores,
                            tiles.at(offset),
                            width,
                            hd,
                            scale,
                        );
                    }
                }
            });
        }
        Some(Tensor::from_data(
            TensorData::new(out, [b, nq, width]),
            &q.device(),
        ))
    }

    /// A block of query rows of one head: `[rows, hd]` at row stride `q_stride`.
    struct Query<'a> {
        q: &'a [f32],
        rows: usize,
        q_stride: usize,
        /// Per key of the whole sequence, whether it is hidden.
        masked: Option<&'a [bool]>,
    }

    /// Elements a `[rows, hd]` matrix with row stride `stride` spans.
    fn span(rows: usize, stride: usize, hd: usize) -> usize {
        if rows == 0 {
            0
        } else {
            (rows - 1) * stride + hd
        }
    }

    /// The output of [`attention`], written tile by tile from several tasks.
    struct Tiles(*mut f32);

    // SAFETY: tasks write disjoint tiles (see the loop in `attention`).
    unsafe impl Sync for Tiles {}

    impl Tiles {
        fn at(&self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }

    /// Attention of one head for a block of query rows over the key/value segments `kv`
    /// (each `[len, hd]` row-major), written to `out` (`[rows, hd]` at row stride
    /// `out_stride`).
    ///
    /// # Safety
    /// `out` must be valid for writes of the `rows x hd` tile at row stride `out_stride`, and
    /// nothing else may access that tile during the call.
    unsafe fn head(
        query: Query<'_>,
        kv: &[(&[f32], &[f32])],
        scores: &mut [f32],
        out: *mut f32,
        out_stride: usize,
        hd: usize,
        scale: f32,
    ) {
        let Query {
            q,
            rows,
            q_stride,
            masked,
        } = query;
        let seq: usize = kv.iter().map(|(k, _)| k.len() / hd).sum();
        assert!(q.len() >= span(rows, q_stride, hd));
        assert!(scores.len() == rows * seq);
        let mut col = 0;
        for (k, _) in kv {
            let len = k.len() / hd;
            // SAFETY: scores [rows x seq] row-major, written in columns col..col + len (within
            // seq by construction); q [rows x hd] at row stride `q_stride` (asserted above);
            // k^T [hd x len] read from k [len x hd] row-major (exactly k.len() elements).
            unsafe {
                gemm::gemm(
                    rows,
                    len,
                    hd,
                    scores.as_mut_ptr().add(col),
                    1,
                    seq as isize,
                    false,
                    q.as_ptr(),
                    1,
                    q_stride as isize,
                    k.as_ptr(),
                    hd as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            col += len;
        }
        softmax_rows(scores, seq, masked);
        let mut col = 0;
        for (i, (_, v)) in kv.iter().enumerate() {
            let len = v.len() / hd;
            // SAFETY: out [rows x hd] at row stride out_stride (the caller's contract); the score
            // columns col..col + len of [rows x seq]; v [len x hd] row-major. Segments after
            // the first accumulate into `out`.
            unsafe {
                gemm::gemm(
                    rows,
                    hd,
                    len,
                    out,
                    1,
                    out_stride as isize,
                    i > 0,
                    scores.as_ptr().add(col),
                    1,
                    seq as isize,
                    v.as_ptr(),
                    1,
                    hd as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            col += len;
        }
    }

    /// Row-wise softmax of `scores` (`seq` columns), masked keys excluded, with the widest
    /// vector instructions the CPU has (one feature check per block, not per row).
    fn softmax_rows(scores: &mut [f32], seq: usize, masked: Option<&[bool]>) {
        vectorised(
            #[inline(always)]
            || {
                for row in scores.chunks_exact_mut(seq) {
                    softmax_in_place(row, masked);
                }
            },
        );
    }

    /// Runs `body` compiled for the widest vector instructions the CPU has (AVX-512, else
    /// AVX2 + FMA, else the build's baseline), picked at run time. `body` and what it calls
    /// must be `#[inline(always)]` down to the loops, so that they are compiled inside the
    /// feature-enabled function.
    #[inline(always)]
    pub(in crate::model) fn vectorised(body: impl FnOnce()) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { with_avx512(body) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { with_avx2(body) };
                return;
            }
        }
        body()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn with_avx512(body: impl FnOnce()) {
        body()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn with_avx2(body: impl FnOnce()) {
        body()
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
    pub(in crate::model) fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let underflow = x < -87.0;
        let xc = x.max(-87.0);
        // Round to nearest with the 1.5 * 2^23 trick: plain adds, which vectorise everywhere.
        const ROUND: f32 = 12_582_912.0;
        let t = xc * LOG2E + ROUND;
        let n = t - ROUND;
        // The same n as an integer, read from t's mantissa (t = 1.5 * 2^23 + n, one unit per
        // ulp): integer arithmetic that vectorises, where `n as i32` (a saturating cast)
        // compiled to one scalar conversion per lane.
        let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
        let r = xc - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (0.166_666_67
                        + r * (0.041_666_42 + r * (0.008_333_457 + r * 0.001_398_2)))));
        let scale = f32::from_bits(((ni + 127) as u32) << 23);
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

    /// The host kernel against burn's fused op: grouped heads, a key mask, batch > 1, one or
    /// two key segments (one of them a non-contiguous view), and query counts below, at and
    /// across the row-block size.
    #[test]
    fn host_kernel_matches_burn_fused_op() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        for (b, h, kv_heads, nq, seq, hd) in [
            (1, 4, 4, 1, 5, 8),
            (2, 4, 2, 13, 40, 16),
            (1, 8, 8, 64, 64, 32),
            (2, 6, 3, 130, 150, 8),
        ] {
            let q = Tensor::<4>::random([b, nq, h, hd], normal, &device);
            // Token-major keys seen head-major: a strided view, as the block passes them.
            let k = Tensor::<4>::random([b, seq, kv_heads, hd], normal, &device).swap_dims(1, 2);
            let v = Tensor::<4>::random([b, kv_heads, seq, hd], normal, &device);
            // Batch row i hides its first i keys (left padding).
            let hidden: Vec<bool> = (0..b)
                .flat_map(|i| (0..seq).map(move |j| j < 3 * i))
                .collect();
            let mask =
                Tensor::<4, Bool>::from_data(TensorData::new(hidden, [b, 1, 1, seq]), &device);
            let cut = seq / 3;
            for key_mask in [None, Some(&mask)] {
                let whole = [(k.clone(), v.clone())];
                let want = super::fused(q.clone(), &whole, key_mask);
                let split = |t: &Tensor<4>| {
                    (
                        t.clone().narrow(2, 0, cut),
                        t.clone().narrow(2, cut, seq - cut),
                    )
                };
                let ((k0, k1), (v0, v1)) = (split(&k), split(&v));
                for mut segments in [whole.to_vec(), vec![(k0, v0), (k1, v1)]] {
                    let got = super::cpu::attention(&q, &mut segments, key_mask)
                        .expect("flex float32 operands");
                    assert_eq!(got.dims(), [b, nq, h * hd]);
                    let diff: f32 = (got - want.clone()).abs().max().into_scalar();
                    assert!(
                        diff < 1e-5,
                        "shape {:?}, {} segments: max difference {diff}",
                        (b, h, kv_heads, nq, seq, hd),
                        segments.len()
                    );
                }
            }
        }
    }
}
