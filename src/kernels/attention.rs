//! Attention on the flex backend in float32: `softmax(q k^T / sqrt(d)) v` per block of query
//! rows, with one gemm for the scores against keys transposed once per call, a vectorised
//! softmax of each row and accumulating gemms (one per value segment) for the output, blocks in
//! parallel.
//!
//! Profiling burn-flex 0.22.1's fused op at 1088 positions (8 heads of 64) showed two thirds of
//! its time in a scalar per-row online-softmax loop and a sixth in scalar `expf`, against 15% in
//! matrix products. This kernel computes the same function in float32 with a different order of
//! summation (like any other gemm kernel choice); the golden tests pass with either path.
//!
//! Queries are token-major (`[batch, rows, heads, head_dim]`, as the projections produce them)
//! and read at a row stride. Keys and values come as segments (prompt, response), head-major
//! (`[batch, kv_heads, rows, head_dim]`), read through burn's backend-extension access to the
//! flex primitive: values in place (the layout the output gemm reads fastest); keys in place
//! too when one block of query rows covers them all, else once per call into one transposed,
//! padded buffer per head that every row block's score gemm reads in place (gemm packed the
//! head-major form again in each of those calls). A segment that is not contiguous is made
//! contiguous once and handed back, so that the feature cache stores the contiguous form.
//! Keys and values may have fewer heads than queries (grouped-query attention): query head `h`
//! reads key/value head `h / (heads / kv_heads)`, without materialising the repeated heads.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, Tensor, TensorData};
use rayon::prelude::*;

use super::KvSegment;
use super::simd::{exp, vectorised};

/// Query rows up to which one block per head does them all: gemm packs the head's keys once,
/// in that call, and the score block (64 x seq floats) stays in L2.
const ONE_BLOCK: usize = 64;

/// Query rows per block above [`ONE_BLOCK`], where every block's gemm would pack the head's
/// keys again: the keys are transposed once per call instead, and gemm (0.19, x86) reads them
/// in place as long as a call has at most 8 x NR = 48 columns (query rows).
const MAX_ROWS: usize = 48;

/// Transposed keys are padded to a multiple of this many positions, so that gemm can read them
/// in place: it packs a left operand whose row count is not a multiple of its vector width
/// (16 floats with AVX-512, 8 with AVX2).
const KEY_PAD: usize = 16;

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
        // Above one block, every (batch row, kv head)'s keys over the whole sequence,
        // transposed once here to [hd x stride]: gemm reads that layout in place, where it
        // packed the head-major [len x hd] again in every block's call.
        let (rows_per_block, stride) = if nq <= ONE_BLOCK {
            (nq, seq)
        } else {
            (MAX_ROWS, seq.next_multiple_of(KEY_PAD))
        };
        let transposed = (nq > ONE_BLOCK).then(|| {
            let mut t = vec![0f32; b * kv_heads * hd * stride];
            t.par_chunks_mut(hd * stride)
                .enumerate()
                .for_each(|(g, dst)| {
                    let mut col = 0;
                    for (len, k, _) in &kv {
                        transpose_into(plane(k, g, *len, hd), hd, dst, stride, col);
                        col += len;
                    }
                });
            t
        });
        // Tasks are (batch row, block of query rows, heads): each writes its own tiles of
        // `out` (its rows, its heads' columns).
        let blocks = nq.div_ceil(rows_per_block);
        // Row blocks alone give every thread work on a full pass; a task then runs all
        // heads and reuses one score buffer. With few rows (a cached step recomputes 16 of
        // 1088), one task per head instead.
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
            let first = blk * rows_per_block;
            let n = rows_per_block.min(nq - first);
            let mut scores = vec![0f32; n * stride];
            for hi in hg * group..(hg + 1) * group {
                let g = bi * kv_heads + hi / rep;
                let values: Vec<&[f32]> =
                    kv.iter().map(|(len, _, v)| plane(v, g, *len, hd)).collect();
                let keys = match &transposed {
                    None => {
                        Keys::Segments(kv.iter().map(|(len, k, _)| plane(k, g, *len, hd)).collect())
                    }
                    Some(t) => Keys::Transposed(&t[g * hd * stride..(g + 1) * hd * stride]),
                };
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
                        keys,
                        &values,
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

/// Plane `g` (a batch row's kv head) of a head-major `[.., len, hd]` buffer.
fn plane(t: &[f32], g: usize, len: usize, hd: usize) -> &[f32] {
    &t[g * len * hd..(g + 1) * len * hd]
}

/// `src` (`[len x hd]` row-major) written transposed into `dst` (`[hd x stride]` row-major)
/// at columns `col..col + len`.
fn transpose_into(src: &[f32], hd: usize, dst: &mut [f32], stride: usize, col: usize) {
    // 16 source rows at a time: they stay in L1 while each of their hd columns is written
    // as one contiguous run.
    for (chunk, rows) in src.chunks(16 * hd).enumerate() {
        let at = col + 16 * chunk;
        for d in 0..hd {
            let out = &mut dst[d * stride + at..];
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(hd)) {
                *o = row[d];
            }
        }
    }
}

/// One head's keys, as the score gemm reads them.
enum Keys<'a> {
    /// Each segment head-major, `[len x hd]` row-major: gemm packs them inside the call.
    Segments(Vec<&'a [f32]>),
    /// The whole sequence transposed, `[hd x stride]` row-major (`stride` >= seq, a multiple
    /// of [`KEY_PAD`], zeros past seq): gemm reads them in place.
    Transposed(&'a [f32]),
}

/// Attention of one head for a block of query rows, against `keys` and the value segments
/// `values` (each `[len x hd]` row-major, seq rows together), written to `out` (`[rows, hd]`
/// at row stride `out_stride`). `scores` holds `rows` rows of seq floats (of `stride` for
/// transposed keys; columns past seq are ignored).
///
/// # Safety
/// `out` must be valid for writes of the `rows x hd` tile at row stride `out_stride`, and
/// nothing else may access that tile during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    query: Query<'_>,
    keys: Keys<'_>,
    values: &[&[f32]],
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
    let seq: usize = values.iter().map(|v| v.len() / hd).sum();
    let stride = match &keys {
        Keys::Segments(_) => seq,
        Keys::Transposed(t) => t.len() / hd,
    };
    assert!(q.len() >= span(rows, q_stride, hd));
    assert!(seq <= stride && scores.len() == rows * stride);
    // The score gemm `scores[.., col..col + len] = scale * q k^T` for a key matrix whose
    // element (d, j) sits at `k[d * rs + j * cs]`.
    let scores_of =
        |scores: &mut [f32], col: usize, len: usize, k: &[f32], rs: usize, cs: usize| {
            assert!(col + len <= stride && k.len() > (hd - 1) * rs + (len - 1) * cs);
            // SAFETY: scores [rows x stride] row-major, written in columns col..col + len
            // (within stride, asserted); q [rows x hd] at row stride `q_stride` (asserted
            // above); the key matrix [hd x len] at strides (rs, cs) ends inside `k`
            // (asserted).
            unsafe {
                gemm::gemm(
                    rows,
                    len,
                    hd,
                    scores.as_mut_ptr().add(col),
                    1,
                    stride as isize,
                    false,
                    q.as_ptr(),
                    1,
                    q_stride as isize,
                    k.as_ptr(),
                    cs as isize,
                    rs as isize,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
    match keys {
        Keys::Segments(segments) => {
            let mut col = 0;
            for k in segments {
                let len = k.len() / hd;
                if len > 0 {
                    scores_of(scores, col, len, k, 1, hd);
                }
                col += len;
            }
        }
        Keys::Transposed(t) => scores_of(scores, 0, stride, t, stride, 1),
    }
    softmax_rows(scores, stride, seq, masked);
    let mut col = 0;
    for (i, v) in values.iter().enumerate() {
        let len = v.len() / hd;
        // SAFETY: out [rows x hd] at row stride out_stride (the caller's contract); the score
        // columns col..col + len (within seq <= stride) of [rows x stride]; v [len x hd]
        // row-major. Segments after the first accumulate into `out`.
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
                stride as isize,
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

/// Row-wise softmax of the first `seq` columns of `scores` (rows of `stride` floats), masked
/// keys excluded, with the widest vector instructions the CPU has (one feature check per
/// block, not per row).
fn softmax_rows(scores: &mut [f32], stride: usize, seq: usize, masked: Option<&[bool]>) {
    vectorised(
        #[inline(always)]
        || {
            for row in scores.chunks_exact_mut(stride) {
                softmax_in_place(&mut row[..seq], masked);
            }
        },
    );
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

#[cfg(test)]
mod tests {
    use super::*;

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
        softmax_rows(&mut scores, seq, seq, Some(&masked));
        for (g, w) in scores.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert_eq!(scores[5], 0.0);
        let mut dead = vec![f32::NEG_INFINITY; 3];
        softmax_rows(&mut dead, 3, 3, None);
        assert_eq!(dead, vec![0.0; 3]);
        // Rows wider than the keys (padded): the padding is left as it was.
        let mut padded = vec![1.0, 1.0, 7.0, 1.0, 1.0, 7.0];
        softmax_rows(&mut padded, 3, 2, None);
        assert_eq!(padded, vec![0.5, 0.5, 7.0, 0.5, 0.5, 7.0]);
    }
}
