//! `x · w` on the flex backend for float32 activations and a float32, bf16 or f16 weight,
//! computed in float32 without ever holding a float32 copy of a 16-bit weight.
//!
//! The output `[m, n]` is cut into tiles of at most [`M_BLOCK`] rows ([`F32_M_BLOCK`] for a
//! float32 weight) by one band of at most [`N_BLOCK`] columns, one task each, every task a
//! single-threaded gemm (no synchronisation inside a product; burn-flex's matmul instead
//! splits each product inside the gemm). A float32 weight is read in place. A 16-bit weight
//! is cut into panels of at most [`K_BLOCK`] rows: for each panel of its band a task widens it
//! into a float32 buffer the size of L2 (512 KiB) and multiplies it in with one accumulating
//! gemm. The widening reads each weight element once per row tile, small next to the
//! multiply-adds of the tile's rows for the 16+ rows of a cached step and negligible for a
//! full pass; the weight stream itself is half as many bytes as float32.
//!
//! The weight may be `[in, out]` row-major (layer weights) or `[out, in]` behind a transposed
//! view (the LM head on flex); gemm reads either through its strides. Against at most [`THIN`]
//! input rows a float32 weight goes to a kernel of the crate's own instead: `dot::product` for
//! `[out, in]`, `thin::product` for `[in, out]` (where the width is a multiple of 16).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::vectorised;
use super::{dot, thin};

/// Weight rows per panel.
const K_BLOCK: usize = 512;
/// Most output rows per task with a 16-bit weight.
const M_BLOCK: usize = 256;
/// Most output rows per task with a float32 weight. gemm packs the weight band at every call
/// with more than 48 rows, so taller tiles pack each band fewer times: a full pass at prompt
/// 1024 (1088 rows) packs it twice instead of five times, which measured 0.965 of the uncached
/// forward time against 256-row tiles (docs/benchmarks.md); a 1088-row product's two row
/// tiles by its 128-256-column bands still give both threads several tasks.
const F32_M_BLOCK: usize = 544;
/// Most weight columns per panel (and per task's band).
const N_BLOCK: usize = 256;

/// The storage of a weight.
enum Weight<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// Where element `(i, j)` of a `[k, n]` weight lies in its storage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    /// Row-major `[k, n]`: at `i * n + j`.
    InOut,
    /// Row-major `[n, k]`, the checkpoint's `[out, in]` seen through a transposed view: at
    /// `j * k + i`.
    OutIn,
}

impl Order {
    /// The order of a flex weight's `[k, n]` layout; `None` for any other layout.
    fn of(w: &FlexTensor, [k, n]: [usize; 2]) -> Option<Self> {
        let (rows, cols, row_stride, col_stride) = w.layout().as_2d_strides()?;
        if [rows, cols] != [k, n] {
            return None;
        }
        if w.is_contiguous() {
            Some(Order::InOut)
        } else if row_stride == 1 && col_stride == k as isize {
            Some(Order::OutIn)
        } else {
            None
        }
    }

    /// `(pointer offset of column `col`, row stride, column stride)` of the storage.
    fn strides(self, [k, n]: [usize; 2], col: usize) -> (usize, usize, usize) {
        match self {
            Order::InOut => (col, n, 1),
            Order::OutIn => (col * k, 1, k),
        }
    }
}

impl Weight<'_> {
    /// Rows `rows` and columns `cols` of the `[k, n]` weight stored in `order`, widened into
    /// `panel`, which takes the same order (`[rows.len(), cols.len()]` row-major for
    /// [`Order::InOut`], its transpose for [`Order::OutIn`]), so that every read is a run
    /// along the storage.
    fn widen(
        &self,
        (order, [k, n]): (Order, [usize; 2]),
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        panel: &mut [f32],
    ) {
        // (source start, destination start, run length) of each run.
        let (runs, len) = match order {
            Order::InOut => (rows.len(), cols.len()),
            Order::OutIn => (cols.len(), rows.len()),
        };
        let run = |t: usize| match order {
            Order::InOut => (rows.start + t) * n + cols.start,
            Order::OutIn => (cols.start + t) * k + rows.start,
        };
        match self {
            Weight::F32(w) => {
                for t in 0..runs {
                    panel[t * len..(t + 1) * len].copy_from_slice(&w[run(t)..run(t) + len]);
                }
            }
            Weight::Bf16(w) => vectorised(
                #[inline(always)]
                || {
                    for t in 0..runs {
                        let src = &w[run(t)..run(t) + len];
                        let dst = &mut panel[t * len..(t + 1) * len];
                        // A bf16 is the upper half of the float32 with the same value.
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
                        }
                    }
                },
            ),
            // half converts with F16C where the CPU has it (checked at run time).
            Weight::F16(w) => {
                for t in 0..runs {
                    w[run(t)..run(t) + len]
                        .convert_to_f32_slice(&mut panel[t * len..(t + 1) * len]);
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Weight::F32(s) => s.len(),
            Weight::Bf16(s) => s.len(),
            Weight::F16(s) => s.len(),
        }
    }
}

/// The output matrix, written in disjoint column bands from several tasks.
struct Bands(*mut f32);

// SAFETY: tasks write disjoint column bands (see the loop in `linear`).
unsafe impl Sync for Bands {}

impl Bands {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Most rows for which a float32 weight goes through [`dot::product`] or [`thin::product`]
/// rather than gemm: past this the gemm's packed micro-kernel, which reuses each loaded weight
/// vector across more rows, wins even with its packing.
const THIN: usize = 32;

/// The flex storage of `x` (`[b, m, k]`, float32) and of a `[k, n]` weight, checked: shapes,
/// dtypes, a layout gemm can read. Holds the primitives the slices borrow from.
struct Operands {
    x: FlexTensor,
    w: FlexTensor,
    order: Order,
    /// `[b, m, k, n]`.
    dims: [usize; 4],
}

impl Operands {
    fn new(x: &Tensor<3>, w: &Tensor<2>) -> Option<Self> {
        let [b, m, k] = x.dims();
        let [wk, n] = w.dims();
        if wk != k || x.dtype() != DType::F32 {
            return None;
        }
        let xp = super::flat(x)?;
        let wp: FlexTensor = w.clone().try_into_primitive::<Flex>().ok()?;
        let order = Order::of(&wp, [k, n])?;
        let ops = Self {
            x: xp,
            w: wp,
            order,
            dims: [b, m, k, n],
        };
        // Both slices exist and have the lengths the shapes say.
        let (xs, weight) = (ops.xs()?, ops.weight()?);
        (xs.len() == b * m * k && weight.len() == k * n).then_some(())?;
        Some(ops)
    }

    fn xs(&self) -> Option<&[f32]> {
        self.x.as_slice::<f32>()
    }

    fn weight(&self) -> Option<Weight<'_>> {
        let [_, _, k, n] = self.dims;
        let start = self.w.layout().start_offset();
        // `storage` asserts the dtype, which the match has just checked.
        Some(match self.w.dtype() {
            DType::F32 => Weight::F32(self.w.storage::<f32>().get(start..start + k * n)?),
            DType::BF16 => Weight::Bf16(self.w.storage::<bf16>().get(start..start + k * n)?),
            DType::F16 => Weight::F16(self.w.storage::<f16>().get(start..start + k * n)?),
            _ => return None,
        })
    }
}

/// `None` when an operand is not a flex tensor of the expected dtypes and shapes (the
/// caller then uses burn's ops).
pub(super) fn linear(x: &Tensor<3>, w: &Tensor<2>) -> Option<Tensor<3>> {
    let ops = Operands::new(x, w)?;
    let [b, m, k, n] = ops.dims;
    let (xs, weight, order) = (ops.xs()?, ops.weight()?, ops.order);
    let rows = b * m;
    // Uninitialised: the tiled product writes every element (see `tiles`), so zeroing a
    // buffer of megabytes first would only cost a pass over it. The thin kernels' outputs
    // are zeroed first, as is an empty product's.
    let len = rows * n;
    let mut out = Vec::<f32>::with_capacity(len);
    if rows > 0 && n > 0 && k > 0 {
        let threads = rayon::current_num_threads().max(1);
        // Capacity is exactly `len`, so the zeroing below never moves the buffer.
        let bands = Bands(out.as_mut_ptr());
        match &weight {
            Weight::F32(w) if order == Order::OutIn && rows <= THIN && dot::available() => {
                out.resize(len, 0.0);
                // Column chunks of 16+ (four blocks of the kernel), four per thread so that
                // a slow thread does not hold up the product.
                let chunk = n.div_ceil(4 * threads).next_multiple_of(16).max(16);
                (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
                    let cols = t * chunk..((t + 1) * chunk).min(n);
                    dot::product(xs, w, [rows, k], cols, &mut |r, c, v| {
                        // SAFETY: r < rows and c < n, so the element is inside `out`
                        // (rows * n elements, alive until after the loop); column c belongs
                        // to this task's chunk alone, so no other task writes it.
                        unsafe { *bands.at(r * n + c) = v };
                    });
                });
            }
            Weight::F32(w)
                if order == Order::InOut
                    && rows <= THIN
                    && n.is_multiple_of(16)
                    && thin::available() =>
            {
                out.resize(len, 0.0);
                // Chunks of whole 64-column blocks, four per thread as above.
                let chunk = n.div_ceil(4 * threads).next_multiple_of(64).max(64);
                (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
                    let cols = t * chunk..((t + 1) * chunk).min(n);
                    let (lo, hi) = (cols.start, cols.end);
                    let done = thin::product(xs, w, [rows, k, n], cols, &mut |r, c, v| {
                        assert!(r < rows && c >= lo && c + v.len() <= hi);
                        // SAFETY: the run r, c..c + v.len() lies inside `out` (rows * n
                        // elements, alive until after the loop) and inside this task's
                        // chunk of columns (asserted), which no other task writes.
                        unsafe {
                            std::ptr::copy_nonoverlapping(v.as_ptr(), bands.at(r * n + c), v.len())
                        };
                    });
                    // Chunk bounds are multiples of 16 (n is) and the CPU was checked above:
                    // the kernel never declines here.
                    assert!(done);
                });
            }
            _ => {
                tiles(xs, &weight, (order, [k, n]), rows, threads, &bands);
                // SAFETY: the tiles partition the [rows x n] output and each tile's first
                // gemm overwrites all of it (see `tile`), so all `len` elements are
                // initialised (a panicking task never gets here).
                unsafe { out.set_len(len) };
            }
        }
    } else {
        out.resize(len, 0.0);
    }
    Some(Tensor::from_data(
        TensorData::new(out, [b, m, n]),
        &x.device(),
    ))
}

/// The tiles of a tiled product's `[rows, n]` output: row tiles of at most `m_block` rows by
/// column bands of at most `band` columns, numbered row tile by row tile.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Grid {
    rows: usize,
    n: usize,
    m_block: usize,
    band: usize,
}

impl Grid {
    /// The tiling of a `[rows, n]` output of `weight` with `threads` threads.
    fn new(weight: &Weight<'_>, rows: usize, n: usize, threads: usize) -> Self {
        // Bands narrow enough that both threads have work on small outputs, never below 64
        // columns (the gemm's efficient width).
        let band = (n.div_ceil(2 * threads).next_multiple_of(16)).clamp(64, N_BLOCK);
        let m_block = match weight {
            Weight::F32(_) => F32_M_BLOCK,
            Weight::Bf16(_) | Weight::F16(_) => M_BLOCK,
        };
        Self {
            rows,
            n,
            m_block,
            band,
        }
    }

    fn len(&self) -> usize {
        self.rows.div_ceil(self.m_block) * self.n.div_ceil(self.band)
    }

    /// Tile `t`: its first row, its row count and its columns.
    fn tile(&self, t: usize) -> (usize, usize, std::ops::Range<usize>) {
        let col_bands = self.n.div_ceil(self.band);
        let (rb, cb) = (t / col_bands, t % col_bands);
        let r0 = rb * self.m_block;
        let cols = cb * self.band..((cb + 1) * self.band).min(self.n);
        (r0, self.m_block.min(self.rows - r0), cols)
    }
}

/// The product by single-threaded gemms, one per tile of at most [`M_BLOCK`] (float32:
/// [`F32_M_BLOCK`]) rows by one band of columns, into `bands` (`[rows, n]` row-major), every
/// element of which it writes without reading any.
fn tiles(
    xs: &[f32],
    weight: &Weight<'_>,
    (order, [k, n]): (Order, [usize; 2]),
    rows: usize,
    threads: usize,
    bands: &Bands,
) {
    let grid = Grid::new(weight, rows, n, threads);
    (0..grid.len())
        .into_par_iter()
        .for_each_init(Vec::new, |panel, t| {
            let (r0, m, cols) = grid.tile(t);
            let dst = bands.at(r0 * n + cols.start);
            let lhs = &xs[r0 * k..(r0 + m) * k];
            // SAFETY: the [m x cols.len()] tile at rows r0.., columns `cols` of the
            // [rows x n] row-major output (rows * n elements, alive until after the loop) is
            // this task's alone.
            unsafe { tile(lhs, weight, (order, [k, n]), cols, (dst, n), panel) };
        });
}

/// `dst = lhs · w[.., cols]` for one tile: `lhs` `[m, k]` row-major, `dst` `[m, cols.len()]`
/// at row stride `dst.1`, by one single-threaded gemm for a float32 weight (read in place)
/// or one accumulating gemm per [`K_BLOCK`]-row panel widened into `panel` for a 16-bit one.
/// The first gemm overwrites the tile without reading it (gemm skips `dst` when told not to
/// accumulate), so `dst` may be uninitialised; `k` must be positive.
///
/// # Safety
/// `dst.0` must be valid for writes of the `[m x cols.len()]` tile at row stride `dst.1`, and
/// nothing else may access that tile during the call.
unsafe fn tile(
    lhs: &[f32],
    weight: &Weight<'_>,
    (order, [k, n]): (Order, [usize; 2]),
    cols: std::ops::Range<usize>,
    dst: (*mut f32, usize),
    panel: &mut Vec<f32>,
) {
    let width = cols.len();
    assert!(k > 0);
    let m = lhs.len() / k;
    assert!(m * k == lhs.len() && cols.end <= n);
    if let Weight::F32(w) = weight {
        let (offset, rs, cs) = order.strides([k, n], cols.start);
        // The last element the gemm reads: row k - 1 of column cols.end - 1.
        assert!(w.len() > offset + (k - 1) * rs + (width - 1) * cs);
        // SAFETY: dst is the caller's tile; lhs is the [m x k] row-major slice `lhs`
        // (exactly m * k elements, asserted); rhs is columns `cols` of the [k x n] weight at
        // its strides, its last element inside `w` (asserted).
        unsafe {
            gemm_rows(
                [m, width, k],
                (dst.0, dst.1, false),
                (lhs.as_ptr(), k),
                (w.as_ptr().add(offset), rs, cs),
            );
        }
        return;
    }
    panel.resize(K_BLOCK.min(k) * width, 0.0);
    for k0 in (0..k).step_by(K_BLOCK) {
        let kb = K_BLOCK.min(k - k0);
        let panel = &mut panel[..kb * width];
        weight.widen((order, [k, n]), k0..k0 + kb, cols.clone(), panel);
        // The panel keeps the weight's order.
        let (rs, cs) = match order {
            Order::InOut => (width, 1),
            Order::OutIn => (1, kb),
        };
        // SAFETY: dst is the caller's tile; lhs is columns k0..k0 + kb of the [m x k]
        // row-major `lhs` (m * k elements, asserted above); rhs is the [kb x width] `panel`
        // at its order's strides (exactly kb * width elements).
        unsafe {
            gemm_rows(
                [m, width, kb],
                (dst.0, dst.1, k0 > 0),
                (lhs.as_ptr().add(k0), k),
                (panel.as_ptr(), rs, cs),
            );
        }
    }
}

/// `silu(x · gate) * (x · up)` in one pass over the output: per tile, the gate product is
/// written to the output, the up product to a tile-sized buffer that stays in L2, and the
/// SwiGLU applied there, so that neither projection's `[rows, d_ff]` output is allocated or
/// read back from memory. Each product is the tile gemm [`linear`] runs for that weight (same
/// blocking, same bits), and the SwiGLU is [`swiglu`](super::swiglu)'s. `None` where the
/// operands are not flex tensors of the expected dtypes and shapes, or where [`linear`]
/// would not tile (few rows: its thin kernels), and the caller runs the two products.
pub(super) fn linear_swiglu(x: &Tensor<3>, gate: &Tensor<2>, up: &Tensor<2>) -> Option<Tensor<3>> {
    let (g, u) = (Operands::new(x, gate)?, Operands::new(x, up)?);
    let [b, m, k, n] = g.dims;
    let rows = b * m;
    if u.dims != g.dims || rows <= THIN || n == 0 || k == 0 {
        return None;
    }
    let (xs, gw, uw) = (g.xs()?, g.weight()?, u.weight()?);
    let threads = rayon::current_num_threads().max(1);
    let grid = Grid::new(&gw, rows, n, threads);
    if Grid::new(&uw, rows, n, threads) != grid {
        return None;
    }
    // Uninitialised, as in `linear`: every tile is written before it is read.
    let mut out = Vec::<f32>::with_capacity(rows * n);
    let bands = Bands(out.as_mut_ptr());
    (0..grid.len()).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(panel, ups), t| {
            let (r0, m, cols) = grid.tile(t);
            let width = cols.len();
            let lhs = &xs[r0 * k..(r0 + m) * k];
            ups.resize(m * width, 0.0);
            let dst = bands.at(r0 * n + cols.start);
            // SAFETY: `dst` is the [m x width] tile at rows r0.., columns `cols` of the
            // [rows x n] row-major output (rows * n elements, alive until after the
            // loop), this task's alone; `ups` is this task's own [m x width] buffer.
            unsafe {
                tile(lhs, &gw, (g.order, [k, n]), cols.clone(), (dst, n), panel);
                tile(
                    lhs,
                    &uw,
                    (u.order, [k, n]),
                    cols,
                    (ups.as_mut_ptr(), width),
                    panel,
                );
            }
            for (r, up) in ups.chunks_exact(width).enumerate() {
                // SAFETY: row r of the tile: `width` elements at dst + r * n, inside the
                // output and this task's (see above); the gemm above has written them.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * n), width) };
                super::swiglu::silu_mul_chunk(row, up);
            }
        },
    );
    // SAFETY: the tiles partition the [rows x n] output and each was written whole by its
    // gate gemm (`tile`), so all rows * n elements are initialised.
    unsafe { out.set_len(rows * n) };
    Some(Tensor::from_data(
        TensorData::new(out, [b, m, n]),
        &x.device(),
    ))
}

/// `dst (+)= lhs · rhs` (`[m, n] (+)= [m, k] · [k, n]`), `dst` and `lhs` row-major, each
/// given as a pointer and a row stride, `rhs` as a pointer, a row stride and a column
/// stride; single-threaded; `dst.2` says whether to accumulate.
///
/// # Safety
/// Every pointer must be valid for its matrix at its strides (reads for `lhs` and `rhs`,
/// writes for `dst`), and nothing else may access `dst`'s elements during the call.
unsafe fn gemm_rows(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, bool),
    lhs: (*const f32, usize),
    rhs: (*const f32, usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            dst.2,
            lhs.0,
            1,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn widened_product_matches_float64_on_ragged_shapes() {
        let device = Device::flex();
        // Shapes with remainders in every blocking: k over two panels, n over several
        // bands with a short last one, a single row, 300 rows over two 16-bit row tiles and
        // 600 over two float32 ones.
        for (b, m, k, n) in [
            (1, 1, 7, 5),
            (2, 3, 1030, 300),
            (1, 17, 512, 64),
            (2, 150, 40, 90),
            (1, 600, 24, 80),
        ] {
            let xv = values(b * m * k, 1);
            let wv = values(k * n, 2);
            // The same [k, n] weight stored [out, in] (read through a transposed view).
            let wt: Vec<f32> = (0..n * k).map(|t| wv[(t % k) * n + t / k]).collect();
            for (dtype, order) in [DType::F32, DType::BF16, DType::F16]
                .into_iter()
                .flat_map(|d| [(d, Order::InOut), (d, Order::OutIn)])
            {
                let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [b, m, k]), &device);
                let w = match order {
                    Order::InOut => {
                        Tensor::<2>::from_data(TensorData::new(wv.clone(), [k, n]), &device)
                            .cast(dtype)
                    }
                    Order::OutIn => {
                        Tensor::<2>::from_data(TensorData::new(wt.clone(), [n, k]), &device)
                            .cast(dtype)
                            .transpose()
                    }
                };
                let wp = w.clone().try_into_primitive::<Flex>().unwrap();
                assert_eq!(Order::of(&wp, [k, n]), Some(order), "{dtype:?} {k}x{n}");
                let wr: Vec<f32> = w
                    .clone()
                    .cast(DType::F32)
                    .into_data()
                    .try_into_vec()
                    .unwrap();
                let got: Vec<f32> = linear(&x, &w)
                    .expect("kernel applies")
                    .into_data()
                    .try_into_vec()
                    .unwrap();
                assert_eq!(got.len(), b * m * n);
                for r in 0..b * m {
                    for c in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| f64::from(xv[r * k + i]) * f64::from(wr[i * n + c]))
                            .sum();
                        let g = got[r * n + c];
                        assert!(
                            (f64::from(g) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{dtype:?} {order:?} {b}x{m}x{k}x{n} [{r},{c}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_swiglu_has_the_bits_of_two_products_and_the_swiglu() {
        let device = Device::flex();
        // Rows just past the thin kernels', two float32 row tiles, and ragged k and n.
        for (b, m, k, n) in [(1, 33, 40, 90), (2, 150, 1030, 300), (1, 600, 24, 80)] {
            let xv = values(b * m * k, 3);
            let x = Tensor::<3>::from_data(TensorData::new(xv, [b, m, k]), &device);
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let weight = |seed| {
                    Tensor::<2>::from_data(TensorData::new(values(k * n, seed), [k, n]), &device)
                        .cast(dtype)
                };
                let (gate, up) = (weight(4), weight(5));
                let want = super::super::swiglu::silu_mul(
                    linear(&x, &gate).unwrap(),
                    linear(&x, &up).unwrap(),
                )
                .unwrap_or_else(|_| panic!("the SwiGLU kernel applies"));
                let got = linear_swiglu(&x, &gate, &up).expect("kernel applies");
                assert_eq!(got.dims(), [b, m, n]);
                let got: Vec<f32> = got.into_data().try_into_vec().unwrap();
                let want: Vec<f32> = want.into_data().try_into_vec().unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.is_finite() && g.to_bits() == w.to_bits(),
                        "{dtype:?} {b}x{m}x{k}x{n} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
        // Few rows (the thin kernels' products) and mismatched weights decline.
        let x = Tensor::<3>::zeros([1, 32, 8], &device);
        let w = Tensor::<2>::zeros([8, 64], &device);
        assert!(linear_swiglu(&x, &w, &w).is_none());
        let x = Tensor::<3>::zeros([1, 40, 8], &device);
        assert!(linear_swiglu(&x, &w, &Tensor::<2>::zeros([8, 48], &device)).is_none());
        assert!(linear_swiglu(&x, &w, &Tensor::<2>::zeros([9, 64], &device)).is_none());
    }

    #[test]
    fn declines_bad_shapes_and_other_dtypes() {
        let device = Device::flex();
        let x = Tensor::<3>::zeros([1, 2, 4], &device);
        let w = Tensor::<2>::zeros([5, 3], &device).cast(DType::BF16);
        assert!(linear(&x, &w).is_none());
        let w = Tensor::<2>::zeros([4, 3], &device).cast(DType::F64);
        assert!(linear(&x, &w).is_none());
        let x16 = x.cast(DType::BF16);
        assert!(linear(&x16, &Tensor::<2>::zeros([4, 3], &device)).is_none());
    }
}
