//! Rotary position embedding, split-halves ("rotate_half") layout, for any subset of rows.
//!
//! Both architectures compute the angle table in float32 exactly as their PyTorch code does
//! (`inv_freq = 1 / theta^(2j/d)`, `angle = position * inv_freq`, duplicated over the two halves).
//! Keys are rotated once, when they are computed, and cached rotated; the table is built once
//! per forward for every absolute position and then sliced or gathered for the rows a layer
//! recomputes.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// cos/sin tables for one forward, `[rows_b, seq, 1, head_dim]` where `rows_b` is 1 (all batch
/// rows share positions) or the batch size; they broadcast over the heads of token-major
/// `[batch, seq, heads, head_dim]` projections.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// LLaDA rotates q/k in float32 (`rope_full_precision`); Dream casts the tables to the
    /// activation dtype and rotates in it. Identical in float32.
    rotate_in_f32: bool,
}

impl Rope {
    /// Tables for `positions` (one row shared by the batch, or one row per batch entry).
    pub(crate) fn new(
        head_dim: usize,
        theta: f64,
        positions: &[Vec<i64>],
        rotate_in_f32: bool,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let theta = theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let rows = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(rows * seq * head_dim);
        let mut sin = Vec::with_capacity(rows * seq * head_dim);
        for row in positions {
            for &p in row {
                let p = p as f32;
                // Each angle once; the second half of the head repeats the first.
                let start = cos.len();
                for &f in &inv_freq {
                    let a = p * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
                cos.extend_from_within(start..start + half);
                sin.extend_from_within(start..start + half);
            }
        }
        let shape = [rows, seq, 1, head_dim];
        let f32_opts = (device, DType::F32);
        let cos = Tensor::<4>::from_data(TensorData::new(cos, shape), f32_opts);
        let sin = Tensor::<4>::from_data(TensorData::new(sin, shape), f32_opts);
        Self {
            cos,
            sin,
            rotate_in_f32,
        }
    }

    /// The tables of positions `start..end`.
    pub(crate) fn rows(&self, start: usize, end: usize) -> Rope {
        let n = end - start;
        Rope {
            cos: self.cos.clone().narrow(1, start, n),
            sin: self.sin.clone().narrow(1, start, n),
            rotate_in_f32: self.rotate_in_f32,
        }
    }

    /// The tables of per-batch-row positions `offset + idx[b, j]`.
    ///
    /// # Shapes
    /// - `idx`: `[batch, n]`
    pub(crate) fn gather(&self, idx: &Tensor<2, Int>, offset: usize) -> Rope {
        let [batch, n] = idx.dims();
        let [rows_b, _, _, hd] = self.cos.dims();
        let index = (idx.clone() + offset as i64)
            .reshape([batch, n, 1, 1])
            .expand([batch, n, 1, hd]);
        let pick = |t: &Tensor<4>| {
            let t = t.clone();
            let t = if rows_b == batch {
                t
            } else {
                let [_, seq, _, _] = t.dims();
                t.expand([batch, seq, 1, hd])
            };
            t.gather(1, index.clone())
        };
        Rope {
            cos: pick(&self.cos),
            sin: pick(&self.sin),
            rotate_in_f32: self.rotate_in_f32,
        }
    }

    /// Rotates `x`.
    ///
    /// # Shapes
    /// - `x`: `[batch, n, heads, head_dim]` with `n` equal to this table's length.
    pub(crate) fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let dtype = x.dtype();
        // In float32 both architectures rotate in float32 with float32 tables.
        if dtype == DType::F32
            && let Some(out) = crate::kernels::rotary(&x, &self.cos, &self.sin)
        {
            return out;
        }
        let x = if self.rotate_in_f32 {
            x.cast(DType::F32)
        } else {
            x
        };
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        // Dream's reference casts the float32 tables to the activation dtype before rotating.
        let (cos, sin) = if self.rotate_in_f32 {
            (self.cos.clone(), self.sin.clone())
        } else {
            (self.cos.clone().cast(dtype), self.sin.clone().cast(dtype))
        };
        let out = x * cos + rotated * sin;
        if self.rotate_in_f32 {
            out.cast(dtype)
        } else {
            out
        }
    }
}
