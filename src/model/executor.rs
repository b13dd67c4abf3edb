//! The one executor of cache plans: runs a [`Block`] under the per-segment plans a
//! [`CachePolicy`](crate::cache::CachePolicy) returns, for every policy and both architectures.
//!
//! [`Block::forward_step`] asks the policy for the prompt rows and the response rows (see
//! [`crate::cache`] for the rules), validates every plan before any tensor op sees it (rows in
//! range, distinct, on the model's device; reuse only of cached features), then runs the full
//! path (both segments recomputed: one projection of the whole sequence) or the partial path
//! (segment by segment, the selected rows gathered and scattered).

use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor};

use super::attention::KvSegment;
use super::block::Block;
use super::rope::Rope;
use super::stream::Stream;
use crate::cache::store::Features;
use crate::cache::{FeatureCache, Probe, Refresh, Segment};
use crate::denoiser::{LayerTrace, RowsTrace, StepContext};
use crate::error::{Error, Result};
use crate::flops::FlopCounter;

/// Per-forward inputs shared by all layers.
pub(crate) struct LayerEnv<'a> {
    /// Rotary tables for every position of the sequence.
    pub rope: &'a Rope,
    /// Rows `0..prompt_len` are the prompt.
    pub prompt_len: usize,
    /// Keys to hide from every query (`true` = masked), `[batch, 1, 1, seq]`.
    pub key_mask: Option<&'a Tensor<4, Bool>>,
}

/// One segment's state while a layer executes.
struct Work {
    offset: usize,
    len: usize,
    refresh: Refresh,
    /// `attn_norm` of every row, when computed for a probe.
    h: Option<Tensor<3>>,
    /// Fresh value projection of every row, when computed for a probe.
    fresh_v: Option<Tensor<3>>,
    /// The validated rows of a `Refresh::Rows` plan, per batch row, on the host.
    rows: Option<Vec<Vec<usize>>>,
}

impl Block {
    /// Runs the block on the stream `x` (`[batch, seq, d_model]`) under the context's cache
    /// policy, updating it in place.
    pub(crate) fn forward_step(
        &self,
        layer: usize,
        x: &mut Stream,
        env: &LayerEnv<'_>,
        ctx: &mut StepContext<'_>,
    ) -> Result<()> {
        let [_, seq, _] = x.dims();
        let p = env.prompt_len;
        let store = ctx.policy.stores_features();
        let mut work = Vec::with_capacity(2);
        for segment in Segment::BOTH {
            let (offset, len) = match segment {
                Segment::Prompt => (0, p),
                Segment::Response => (p, seq - p),
            };
            work.push(self.plan_segment(layer, segment, offset, len, x, ctx)?);
        }
        let full = work
            .iter()
            .all(|w| w.len == 0 || matches!(w.refresh, Refresh::All));

        if let Some(trace) = ctx.trace.as_deref_mut() {
            let describe = |w: &Work| -> Result<RowsTrace> {
                Ok(match (&w.refresh, &w.rows) {
                    _ if w.len == 0 => RowsTrace::All,
                    (Refresh::Reuse, _) => RowsTrace::Reused,
                    (Refresh::Rows(_), Some(rows)) => RowsTrace::Rows(rows.clone()),
                    (Refresh::Range(r), _) => RowsTrace::Range(r.clone()),
                    _ => RowsTrace::All,
                })
            };
            trace.push(LayerTrace {
                layer,
                prompt: describe(&work[0])?,
                response: describe(&work[1])?,
            });
        }

        if full {
            let out = self.forward_full(layer, x.whole(), env, ctx.cache, ctx.flops, store, p);
            x.set_whole(out);
        } else {
            self.forward_partial(layer, x, env, work, ctx.cache, ctx.flops, store);
        }
        Ok(())
    }

    /// Asks the policy for one segment's plan, probing first if it wants to.
    fn plan_segment(
        &self,
        layer: usize,
        segment: Segment,
        offset: usize,
        len: usize,
        x: &mut Stream,
        ctx: &mut StepContext<'_>,
    ) -> Result<Work> {
        let mut w = Work {
            offset,
            len,
            refresh: Refresh::All,
            h: None,
            fresh_v: None,
            rows: None,
        };
        if len == 0 {
            return Ok(w);
        }
        let [b, _, d] = x.dims();
        let device = self.q.weight.device();
        let kv = [b, self.n_kv_heads, len, self.head_dim];
        let out = [b, len, d];
        let cached = match ctx.cache.get(layer, segment) {
            Some(f)
                if f.k.dims() == kv
                    && f.v.dims() == kv
                    && f.attn.dims() == out
                    && f.ffn.dims() == out
                    && f.k.device() == device =>
            {
                Some(f)
            }
            Some(f) => {
                return Err(Error::Policy {
                    layer,
                    reason: format!(
                        "cached {segment:?} features (values {:?} on {:?}) do not fit this pass \
                         ({kv:?} on {device:?}); use a fresh FeatureCache for each generation \
                         and model",
                        f.v.dims(),
                        f.k.device(),
                    ),
                });
            }
            None => None,
        };
        let probe_wanted = cached.is_some() && ctx.policy.wants_probe(layer, segment);
        if probe_wanted {
            let h = self.attn_norm.forward(x.segment(segment.index()));
            let fresh_v = self.proj(&self.v, h.clone(), ctx.flops);
            // Policies see values as rows, `[b, rows, kv_dim]`.
            let cached_v = cached
                .as_ref()
                .expect("checked above")
                .v
                .clone()
                .swap_dims(1, 2)
                .reshape([b, len, self.kv_dim()]);
            let probe = Probe {
                fresh_v: &fresh_v,
                cached_v: &cached_v,
            };
            w.refresh = ctx.policy.plan(layer, segment, Some(probe))?;
            w.h = Some(h);
            w.fresh_v = Some(fresh_v);
        } else {
            w.refresh = ctx.policy.plan(layer, segment, None)?;
        }
        if let Refresh::Range(r) = &w.refresh {
            if r.start > r.end || r.end > len {
                return Err(Error::Policy {
                    layer,
                    reason: format!("row range {r:?} is not inside the {segment:?}'s 0..{len}"),
                });
            }
            // A range over every row is a full refresh: run it as one.
            if r.start == 0 && r.end == len {
                w.refresh = Refresh::All;
            }
        }
        match &w.refresh {
            Refresh::All => {}
            _ if cached.is_none() => {
                return Err(Error::Policy {
                    layer,
                    reason: format!("asked to reuse {segment:?} features that were never cached"),
                });
            }
            Refresh::Reuse | Refresh::Range(_) => {}
            Refresh::Rows(idx) => {
                w.rows = Some(validate_rows(layer, segment, idx, b, len, &device)?);
            }
        }
        Ok(w)
    }

    /// Both segments recomputed: one pass over the whole sequence.
    #[allow(clippy::too_many_arguments)]
    fn forward_full(
        &self,
        layer: usize,
        x: Tensor<3>,
        env: &LayerEnv<'_>,
        cache: &mut FeatureCache,
        flops: &mut FlopCounter,
        store: bool,
        p: usize,
    ) -> Tensor<3> {
        let [_, seq, _] = x.dims();
        let h = self.attn_norm.forward(x.clone());
        let q = self.proj(&self.q, h.clone(), flops);
        let k = self.proj(&self.k, h.clone(), flops);
        let v = self.proj(&self.v, h, flops);
        let q = env.rope.apply(self.heads(q, self.n_heads));
        let k = env
            .rope
            .apply(self.heads(k, self.n_kv_heads))
            .swap_dims(1, 2);
        let v = self.heads(v, self.n_kv_heads).swap_dims(1, 2);
        // One key segment per cache segment, stored or not: the kernel hands each back
        // contiguous (what later steps read in place), and the summation order, hence every
        // bit of the result, does not depend on whether the policy stores features.
        let parts: Vec<(Segment, usize, usize)> =
            [(Segment::Prompt, 0, p), (Segment::Response, p, seq - p)]
                .into_iter()
                .filter(|&(_, _, len)| len > 0)
                .collect();
        let mut segments: Vec<KvSegment> = parts
            .iter()
            .map(|&(_, offset, len)| {
                (
                    k.clone().narrow(2, offset, len),
                    v.clone().narrow(2, offset, len),
                )
            })
            .collect();
        let attn = self.attend(q, &mut segments, env, flops);
        let x = x + attn.clone();
        let ffn = self.ffn(x.clone(), flops);
        if store {
            for ((segment, offset, len), (k, v)) in parts.into_iter().zip(segments) {
                let cut = |t: &Tensor<3>| t.clone().narrow(1, offset, len);
                let features = Features {
                    k,
                    v,
                    attn: cut(&attn),
                    ffn: cut(&ffn),
                };
                cache.set(layer, segment, features);
            }
        }
        x + ffn
    }

    /// At least one segment reuses cached features.
    #[allow(clippy::too_many_arguments)]
    fn forward_partial(
        &self,
        layer: usize,
        x: &mut Stream,
        env: &LayerEnv<'_>,
        work: Vec<Work>,
        cache: &mut FeatureCache,
        flops: &mut FlopCounter,
        store: bool,
    ) {
        // The probe's fresh values of every row replace the cached ones.
        let fresh_or_cached = |fresh: &Option<Tensor<3>>, c: &Features| match fresh {
            Some(v) => self.heads(v.clone(), self.n_kv_heads).swap_dims(1, 2),
            None => c.v.clone(),
        };
        // Keys/values of each segment after this step's updates, and the queries to run.
        let mut keys = Vec::with_capacity(2);
        let mut values = Vec::with_capacity(2);
        let mut queries = Vec::with_capacity(2);
        let mut query_rows = [0usize; 2];
        for (s, w) in work.iter().enumerate() {
            if w.len == 0 {
                continue;
            }
            let segment = Segment::BOTH[s];
            let cached = cache.get(layer, segment);
            match &w.refresh {
                Refresh::All => {
                    let h =
                        w.h.clone()
                            .unwrap_or_else(|| self.attn_norm.forward(x.segment(s)));
                    let q = self.proj(&self.q, h.clone(), flops);
                    let k = self.proj(&self.k, h.clone(), flops);
                    let v = match &w.fresh_v {
                        Some(v) => v.clone(),
                        None => self.proj(&self.v, h, flops),
                    };
                    let rope = env.rope.rows(w.offset, w.offset + w.len);
                    keys.push(rope.apply(self.heads(k, self.n_kv_heads)).swap_dims(1, 2));
                    values.push(self.heads(v, self.n_kv_heads).swap_dims(1, 2));
                    queries.push(rope.apply(self.heads(q, self.n_heads)));
                    query_rows[s] = w.len;
                }
                Refresh::Reuse => {
                    let c = cached.expect("validated in plan_segment");
                    keys.push(c.k.clone());
                    values.push(fresh_or_cached(&w.fresh_v, &c));
                }
                Refresh::Rows(idx) if idx.dims()[1] == 0 => {
                    let c = cached.expect("validated in plan_segment");
                    keys.push(c.k.clone());
                    values.push(fresh_or_cached(&w.fresh_v, &c));
                }
                Refresh::Range(r) if r.is_empty() => {
                    let c = cached.expect("validated in plan_segment");
                    keys.push(c.k.clone());
                    values.push(fresh_or_cached(&w.fresh_v, &c));
                }
                Refresh::Range(r) => {
                    let c = cached.expect("validated in plan_segment");
                    let n = r.len();
                    let h_sel = match &w.h {
                        Some(h) => h.clone().narrow(1, r.start, n),
                        None => self.attn_norm.forward(x.segment(s).narrow(1, r.start, n)),
                    };
                    let q = self.proj(&self.q, h_sel.clone(), flops);
                    let k = self.proj(&self.k, h_sel.clone(), flops);
                    let rope = env.rope.rows(w.offset + r.start, w.offset + r.end);
                    let k = rope.apply(self.heads(k, self.n_kv_heads));
                    keys.push(splice(c.k.clone(), 2, r, k.swap_dims(1, 2)));
                    values.push(match &w.fresh_v {
                        Some(_) => fresh_or_cached(&w.fresh_v, &c),
                        None => {
                            let v = self.proj(&self.v, h_sel, flops);
                            let v = self.heads(v, self.n_kv_heads).swap_dims(1, 2);
                            splice(c.v.clone(), 2, r, v)
                        }
                    });
                    queries.push(rope.apply(self.heads(q, self.n_heads)));
                    query_rows[s] = n;
                }
                Refresh::Rows(idx) => {
                    let c = cached.expect("validated in plan_segment");
                    let [_, n] = idx.dims();
                    let h_sel = match &w.h {
                        Some(h) => gather_rows(h.clone(), idx),
                        None => self.attn_norm.forward(gather_rows(x.segment(s), idx)),
                    };
                    let q = self.proj(&self.q, h_sel.clone(), flops);
                    let k = self.proj(&self.k, h_sel.clone(), flops);
                    let rope = env.rope.gather(idx, w.offset);
                    let k = rope.apply(self.heads(k, self.n_kv_heads));
                    keys.push(scatter_head_rows(c.k.clone(), idx, k.swap_dims(1, 2)));
                    values.push(match &w.fresh_v {
                        Some(_) => fresh_or_cached(&w.fresh_v, &c),
                        None => {
                            let v = self.proj(&self.v, h_sel, flops);
                            let v = self.heads(v, self.n_kv_heads).swap_dims(1, 2);
                            scatter_head_rows(c.v.clone(), idx, v)
                        }
                    });
                    queries.push(rope.apply(self.heads(q, self.n_heads)));
                    query_rows[s] = n;
                }
            }
        }
        // Attention for the recomputed rows of both segments in one call, over the key/value
        // segments as they are (the kernel reads them in place).
        let total_q: usize = query_rows.iter().sum();
        let mut segments: Vec<KvSegment> = keys.into_iter().zip(values).collect();
        let attn_rows = if total_q > 0 {
            let q = Tensor::cat(queries, 1);
            split_rows(self.attend(q, &mut segments, env, flops), &query_rows)
        } else {
            vec![None, None]
        };
        let attn = self.merge(layer, &work, attn_rows, cache, |f| &f.attn);
        for (s, a) in attn.iter().enumerate() {
            if let Some(a) = a {
                x.add(s, a.clone());
            }
        }

        // FFN for the same rows, on the post-attention residual stream.
        let mut ffn_in = Vec::with_capacity(2);
        for (s, w) in work.iter().enumerate() {
            match &w.refresh {
                _ if w.len == 0 => {}
                Refresh::All => ffn_in.push(x.segment(s)),
                Refresh::Rows(idx) if idx.dims()[1] > 0 => {
                    ffn_in.push(gather_rows(x.segment(s), idx))
                }
                Refresh::Range(r) if !r.is_empty() => {
                    ffn_in.push(x.segment(s).narrow(1, r.start, r.len()))
                }
                _ => {}
            }
        }
        let ffn_rows = if ffn_in.is_empty() {
            vec![None, None]
        } else {
            split_rows(self.ffn(Tensor::cat(ffn_in, 1), flops), &query_rows)
        };
        let ffn = self.merge(layer, &work, ffn_rows, cache, |f| &f.ffn);
        for (s, f) in ffn.iter().enumerate() {
            if let Some(f) = f {
                x.add(s, f.clone());
            }
        }

        if store {
            let mut kv = segments.into_iter();
            for (s, w) in work.iter().enumerate() {
                if w.len == 0 {
                    continue;
                }
                let (k, v) = kv.next().expect("one entry per non-empty segment");
                let (Some(attn), Some(ffn)) = (attn[s].clone(), ffn[s].clone()) else {
                    continue;
                };
                cache.set(layer, Segment::BOTH[s], Features { k, v, attn, ffn });
            }
        }
    }

    /// Full-segment outputs (attention or FFN) after this step: fresh rows where recomputed,
    /// cached rows elsewhere.
    fn merge(
        &self,
        layer: usize,
        work: &[Work],
        fresh: Vec<Option<Tensor<3>>>,
        cache: &FeatureCache,
        pick: impl Fn(&Features) -> &Tensor<3>,
    ) -> Vec<Option<Tensor<3>>> {
        work.iter()
            .zip(fresh)
            .enumerate()
            .map(|(s, (w, fresh))| {
                if w.len == 0 {
                    return None;
                }
                let cached = || {
                    pick(
                        &cache
                            .get(layer, Segment::BOTH[s])
                            .expect("validated in plan_segment"),
                    )
                    .clone()
                };
                Some(match &w.refresh {
                    Refresh::All => fresh.expect("all rows recomputed"),
                    Refresh::Reuse => cached(),
                    Refresh::Rows(idx) => match fresh {
                        Some(rows) => scatter_rows(cached(), idx, rows),
                        None => cached(),
                    },
                    Refresh::Range(r) => match fresh {
                        Some(rows) => splice(cached(), 1, r, rows),
                        None => cached(),
                    },
                })
            })
            .collect()
    }
}

/// Splits `[b, n0 + n1, d]` into the parts of the two segments (`None` for an empty part).
fn split_rows(t: Tensor<3>, rows: &[usize; 2]) -> Vec<Option<Tensor<3>>> {
    let mut start = 0;
    rows.iter()
        .map(|&n| {
            let part = (n > 0).then(|| t.clone().narrow(1, start, n));
            start += n;
            part
        })
        .collect()
}

/// `t` with its entries `range` along `dim` replaced by `rows` (whose extent along `dim` is
/// `range.len()`), by slicing and concatenating.
fn splice<const D: usize>(
    t: Tensor<D>,
    dim: usize,
    range: &std::ops::Range<usize>,
    rows: Tensor<D>,
) -> Tensor<D> {
    let len = t.dims()[dim];
    let mut parts = Vec::with_capacity(3);
    if range.start > 0 {
        parts.push(t.clone().narrow(dim, 0, range.start));
    }
    parts.push(rows);
    if range.end < len {
        parts.push(t.narrow(dim, range.end, len - range.end));
    }
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, dim)
    }
}

/// Rows `idx[b, j]` of `t[b, :, :]`.
///
/// # Shapes
/// - `t`: `[b, n, d]`, `idx`: `[b, k]`; returns `[b, k, d]`.
pub(crate) fn gather_rows(t: Tensor<3>, idx: &Tensor<2, Int>) -> Tensor<3> {
    let [b, _, d] = t.dims();
    let [_, k] = idx.dims();
    if b == 1 {
        return t.select(1, idx.clone().reshape([k]));
    }
    t.gather(1, idx.clone().reshape([b, k, 1]).expand([b, k, d]))
}

/// `t` with rows `idx[b, j]` replaced by `rows[b, j]`.
///
/// # Shapes
/// - `t`: `[b, n, d]`, `idx`: `[b, k]`, `rows`: `[b, k, d]`.
pub(crate) fn scatter_rows(t: Tensor<3>, idx: &Tensor<2, Int>, rows: Tensor<3>) -> Tensor<3> {
    let [b, _, d] = t.dims();
    let [_, k] = idx.dims();
    if k == 0 {
        return t;
    }
    if b == 1 {
        return t.select_assign(1, idx.clone().reshape([k]), rows, IndexingUpdateOp::Assign);
    }
    let index = idx.clone().reshape([b, k, 1]).expand([b, k, d]);
    t.scatter(1, index, rows, IndexingUpdateOp::Assign)
}

/// `t` with rows `idx[b, j]` of every head replaced by `rows[b, :, j]`.
///
/// # Shapes
/// - `t`: `[b, heads, n, hd]`, `idx`: `[b, k]`, `rows`: `[b, heads, k, hd]`.
fn scatter_head_rows(t: Tensor<4>, idx: &Tensor<2, Int>, rows: Tensor<4>) -> Tensor<4> {
    let [b, heads, _, hd] = t.dims();
    let [_, k] = idx.dims();
    if b == 1 {
        return t.select_assign(2, idx.clone().reshape([k]), rows, IndexingUpdateOp::Assign);
    }
    let index = idx.clone().reshape([b, 1, k, 1]).expand([b, heads, k, hd]);
    t.scatter(2, index, rows, IndexingUpdateOp::Assign)
}

/// Checks a policy's row selection before any gather or scatter sees it: shape `[batch, k]`
/// with `k <= len`, on the model's device, and per batch row every index in `0..len` and
/// distinct. Returns the rows on the host (one small read-back per selection).
fn validate_rows(
    layer: usize,
    segment: Segment,
    idx: &Tensor<2, Int>,
    batch: usize,
    len: usize,
    device: &burn::tensor::Device,
) -> Result<Vec<Vec<usize>>> {
    let bad = |reason: String| Error::Policy { layer, reason };
    let [ib, k] = idx.dims();
    if ib != batch || k > len {
        return Err(bad(format!(
            "row selection of shape [{ib}, {k}] for a {segment:?} of [{batch}, {len}] rows"
        )));
    }
    if idx.device() != *device {
        return Err(bad(format!(
            "row selection on {:?}, but the model is on {device:?}",
            idx.device()
        )));
    }
    let flat = idx
        .clone()
        .try_into_vec_as::<i64>()
        .map_err(|e| Error::Backend(format!("{e:?}")))?;
    let mut rows = Vec::with_capacity(batch);
    let mut seen = vec![false; len];
    for (r, chunk) in flat.chunks(k.max(1)).take(batch).enumerate() {
        seen.fill(false);
        let mut row = Vec::with_capacity(k);
        for &i in chunk {
            let Some(j) = usize::try_from(i).ok().filter(|&j| j < len) else {
                return Err(bad(format!(
                    "row selection holds {i} in batch row {r}, outside the {segment:?}'s 0..{len}"
                )));
            };
            if std::mem::replace(&mut seen[j], true) {
                return Err(bad(format!(
                    "row selection holds {j} twice in batch row {r} of the {segment:?}"
                )));
            }
            row.push(j);
        }
        rows.push(row);
    }
    rows.resize(batch, Vec::new());
    Ok(rows)
}
