//! Bidirectional scaled dot-product attention for the shared block: the CPU kernel of
//! [`crate::kernels`] where it applies (flex, float32, feature `cpu-kernels`), else burn's
//! fused `attention` op.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

pub(crate) use crate::kernels::KvSegment;

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
    match crate::kernels::attention(&q, segments, key_mask) {
        Some(out) => out,
        None => fused(q, segments, key_mask),
    }
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

#[cfg(all(test, feature = "cpu-kernels", feature = "flex"))]
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
                    let got = crate::kernels::attention(&q, &mut segments, key_mask)
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
