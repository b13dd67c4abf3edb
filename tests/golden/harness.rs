//! The comparison of this crate against one golden case of the official code. Shared by the
//! golden test (`main.rs`, every case of a set) and the planted-defect test
//! (`tests/golden_defects.rs`, which proves that these comparisons can fail).
//!
//! What is compared, for every case of a supported kind (see `tests/fixtures/golden/FORMAT.md`):
//!
//! * forward cases: logits and every hidden state, shape for shape, every value finite on both
//!   sides, max abs difference within [`F32_TOL`] (f32) or [`bf16_tolerance`] (bf16);
//! * generate cases, step by step: the number of steps; per forward its pass, its dLLM-Cache
//!   counter, every layer's cache branch, the layers that ran V-verify and the row set each
//!   chose; the committed positions and tokens; every confidence within [`confidence_bound`];
//!   and the final sequences. All of it exactly, with one exception, the tie band below.
//!
//! **The tie band.** Where the reference's V-verify choice was decided by float noise (its
//! recorded cosine `margin` at or below [`TIE_BAND`]: rows at cos = 1.0 to within a few ulp),
//! another float32 implementation may choose other, equally valid rows, and a different row
//! recomputed moves later confidences by more than some token margins. The test policy
//! ([`FollowTies`]) then computes this crate's own cosine of every row and follows the
//! reference's set only if every row in which the two sets differ lies within [`TIE_BAND`] of
//! the reference's `kth_smallest_cos`. A clearly chosen row that differs, a set of another
//! size, or a record without a margin fails the case, naming step, layer and rows.
//!
//! bf16 generate cases (`informational_only`) are reported apart: bf16 confidences tie too
//! often for token agreement to be a requirement. They still fail on errors and NaN.

#![allow(dead_code)] // each including test uses a part

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::cache::{DualCache, PrefixCache, Probe, Refresh, Segment};
use dllm_cache::sampler::{CommitRule, ForwardTrace, Pass, dream_timesteps, dream_transfer_count};
use dllm_cache::{
    CachePolicy, Commit, DllmCacheConfig, Dream, DreamAlg, DreamConfig, DreamSamplerConfig, Llada,
    LladaConfig, LladaSamplerConfig, NoCache, RowsTrace, StepInfo,
};
use serde_json::Value;

/// Cosine margins at or below this are float noise (FORMAT.md): the chosen rows may differ
/// there, but only among rows whose own cosine is this close to the k-th smallest.
pub const TIE_BAND: f64 = 1e-5;

/// f32 forward tolerance: logits and every hidden state, absolute.
pub const F32_TOL: f32 = 1e-4;

/// Unit roundoff of float32.
const F32_EPS: f64 = 1.0 / (1u64 << 24) as f64;

/// How a case ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every comparison held.
    Passed(String),
    /// A comparison failed (or the case could not be read).
    Failed(String),
    /// A kind this crate does not run yet.
    Unsupported(String),
    /// A bf16 generate case: reported, never required to agree token for token.
    Informational(String),
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Passed(_) => "ok",
            Outcome::Failed(_) => "FAIL",
            Outcome::Unsupported(_) => "unsupported",
            Outcome::Informational(_) => "informational",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Outcome::Passed(d)
            | Outcome::Failed(d)
            | Outcome::Unsupported(d)
            | Outcome::Informational(d) => d,
        }
    }
}

type Res<T> = Result<T, String>;

// ----- strict JSON access: a missing or null field is an error, never a default -----

fn get<'a>(v: &'a Value, key: &str) -> Res<&'a Value> {
    match v.get(key) {
        None | Some(Value::Null) => Err(format!("field `{key}` is missing or null")),
        Some(x) => Ok(x),
    }
}

fn as_usize(v: &Value, what: &str) -> Res<usize> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| format!("`{what}` is not a non-negative integer: {v}"))
}

fn usize_of(v: &Value, key: &str) -> Res<usize> {
    as_usize(get(v, key)?, key)
}

fn f64_of(v: &Value, key: &str) -> Res<f64> {
    let x = get(v, key)?;
    x.as_f64()
        .ok_or_else(|| format!("`{key}` is not a number: {x}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Res<&'a str> {
    let x = get(v, key)?;
    x.as_str()
        .ok_or_else(|| format!("`{key}` is not a string: {x}"))
}

fn list_of<'a>(v: &'a Value, key: &str) -> Res<&'a Vec<Value>> {
    let x = get(v, key)?;
    x.as_array()
        .ok_or_else(|| format!("`{key}` is not a list: {x}"))
}

fn usizes_of(v: &Value, key: &str) -> Res<Vec<usize>> {
    list_of(v, key)?.iter().map(|x| as_usize(x, key)).collect()
}

fn f64s_of(v: &Value, key: &str) -> Res<Vec<f64>> {
    list_of(v, key)?
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| format!("`{key}` holds {x}")))
        .collect()
}

fn rows_of(v: &Value, key: &str) -> Res<Vec<Vec<u32>>> {
    list_of(v, key)?
        .iter()
        .map(|r| {
            r.as_array()
                .ok_or_else(|| format!("`{key}` holds a non-list row"))?
                .iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(|| format!("`{key}` holds a bad token {t}"))
                })
                .collect()
        })
        .collect()
}

// ----- numeric comparison -----

/// The largest absolute difference of two equally long arrays, or why they are not
/// comparable: different lengths, or a NaN / infinity on either side (named by index).
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> Res<f32> {
    if got.len() != want.len() {
        return Err(format!(
            "{} values where the reference has {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() || !w.is_finite() {
            return Err(format!(
                "non-finite value at flat index {i}: got {g}, reference {w}"
            ));
        }
        worst = worst.max((g - w).abs());
    }
    Ok(worst)
}

/// Bound for comparing this crate's float32 computation on bf16-rounded weights with the
/// reference's bfloat16 computation of the same weights.
///
/// The reference rounds every intermediate (q, k, v, attention and FFN outputs, residual sums,
/// norms, logits) to bf16, whose spacing near a value x is 2^(floor(log2 |x|) - 7); about ten
/// roundings per layer accumulate over the three layers before the logits. We allow 8 bf16
/// spacings of the array's largest magnitude (measured: about 3). A wrong weight conversion or
/// a wrong model moves values by the size of the values themselves, tens of spacings.
pub fn bf16_tolerance(reference: &[f32]) -> f32 {
    let max = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    8.0 * (2f32).powi(max.log2().floor() as i32 - 7)
}

/// What a confidence is, for its error bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfidenceKind {
    /// A softmax probability (LLaDA `low_confidence`, Dream `maskgit_plus` / `origin`).
    Probability,
    /// Top-1 minus top-2 probability (Dream `topk_margin`).
    Margin,
    /// `sum p log(p + 1e-10)` (Dream `entropy`).
    NegEntropy,
}

/// The largest difference a float32 implementation may show from a reference confidence `c`,
/// given logits that agree within `delta` (absolute) and a `vocab`-wide softmax.
///
/// With every logit within `delta`, `log p_i = l_i - logsumexp(l)` moves by at most `2 delta`,
/// so each probability moves by a relative `2 delta` (to first order). Hence: a probability
/// moves by `2 delta p`; a difference of two probabilities of distinct tokens by
/// `2 delta (p1 + p2) <= 2 delta`; `sum p_i log p_i` by `sum |dp_i| |log p_i + 1| <=
/// 2 delta (|c| + 1)`. Evaluating the softmax in float32 adds the rounding of a `vocab`-term
/// sum, at most `vocab * eps` relative (eps = 2^-24), on the same scale. The reference
/// computes LLaDA's confidences in float64, which only removes its own share of that term.
pub fn confidence_bound(kind: ConfidenceKind, c: f64, delta: f64, vocab: usize) -> f64 {
    let scale = match kind {
        ConfidenceKind::Probability => c.abs(),
        ConfidenceKind::Margin => 1.0,
        ConfidenceKind::NegEntropy => c.abs() + 1.0,
    };
    (2.0 * delta + vocab as f64 * F32_EPS) * scale
}

// ----- the golden set -----

/// Every `<arch>/cases/*.json` under `dir`, sorted: (arch, case name, path).
pub fn enumerate(dir: &Path) -> std::io::Result<Vec<(String, String, PathBuf)>> {
    let mut out = Vec::new();
    for arch in std::fs::read_dir(dir)? {
        let arch = arch?.path();
        let cases = arch.join("cases");
        if !cases.is_dir() {
            continue;
        }
        let arch_name = arch
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for entry in std::fs::read_dir(&cases)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                out.push((arch_name.clone(), name, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loaded models, by (model folder, weights file).
#[derive(Default)]
pub struct Models {
    llada: BTreeMap<PathBuf, Llada>,
    dream: BTreeMap<PathBuf, Dream>,
}

impl Models {
    fn llada(&mut self, dir: &Path, weights: &str, device: &Device) -> Res<&Llada> {
        let key = dir.join(weights);
        if !self.llada.contains_key(&key) {
            let config =
                LladaConfig::from_file(dir.join("config.json")).map_err(|e| e.to_string())?;
            let model = Llada::from_safetensors(config, std::slice::from_ref(&key), device)
                .map_err(|e| e.to_string())?;
            self.llada.insert(key.clone(), model);
        }
        Ok(&self.llada[&key])
    }

    fn dream(&mut self, dir: &Path, weights: &str, device: &Device) -> Res<&Dream> {
        let key = dir.join(weights);
        if !self.dream.contains_key(&key) {
            let config =
                DreamConfig::from_file(dir.join("config.json")).map_err(|e| e.to_string())?;
            let model = Dream::from_safetensors(config, std::slice::from_ref(&key), device)
                .map_err(|e| e.to_string())?;
            self.dream.insert(key.clone(), model);
        }
        Ok(&self.dream[&key])
    }
}

/// Runs one case file and compares it with the reference.
pub fn run_case(arch: &str, path: &Path, device: &Device, models: &mut Models) -> Outcome {
    match run_case_inner(arch, path, device, models) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed(format!("error: {e}")),
    }
}

fn run_case_inner(arch: &str, path: &Path, device: &Device, models: &mut Models) -> Res<Outcome> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let kind = str_of(&case, "kind")?;
    let case_dir = path.parent().ok_or("case has no folder")?;
    let model_dir = case_dir.join(str_of(&case, "model_dir")?);
    let weights = str_of(&case, "weights_file")?;
    let bf16 = match str_of(&case, "dtype")? {
        "float32" => false,
        "bfloat16" => true,
        other => return Err(format!("unknown dtype `{other}`")),
    };
    match (arch, kind) {
        ("llada", "forward") => {
            let model = models.llada(&model_dir, weights, device)?;
            forward_case(&case, case_dir, device, bf16, |tokens| {
                model
                    .forward_with_hidden_states(tokens)
                    .map_err(|e| e.to_string())
            })
        }
        ("dream", "forward") => {
            let model = models.dream(&model_dir, weights, device)?;
            forward_case(&case, case_dir, device, bf16, |tokens| {
                model
                    .forward_with_hidden_states(tokens)
                    .map_err(|e| e.to_string())
            })
        }
        ("llada", "generate") => {
            let model = models.llada(&model_dir, weights, device)?;
            let cfg = f64_of(&case, "cfg_scale")?;
            let sampler = LladaSamplerConfig::new()
                .with_steps(usize_of(&case, "steps")?)
                .with_gen_length(usize_of(&case, "gen_length")?)
                .with_block_length(usize_of(&case, "block_length")?)
                .with_cfg_scale(cfg)
                .init()
                .map_err(|e| e.to_string())?
                .with_layer_trace(true);
            let rules = Rules {
                confidence: ConfidenceKind::Probability,
                // Guided logits un + (s + 1)(cond - un) carry (2s + 1) times the logit error.
                delta: F32_TOL as f64 * (1.0 + 2.0 * cfg),
                vocab: dllm_cache::Denoiser::vocab_size(model),
                bf16,
            };
            generate_case(&case, &rules, |prompts, policy, on_step| {
                sampler
                    .generate_with(model, prompts, policy, on_step)
                    .map(|o| o.sequences)
                    .map_err(|e| e.to_string())
            })
        }
        ("dream", "generate") => {
            let model = models.dream(&model_dir, weights, device)?;
            let steps = usize_of(&case, "steps")?;
            let eps = f64_of(&case, "eps")?;
            let alg: DreamAlg = str_of(&case, "alg")?
                .parse()
                .map_err(|e: dllm_cache::Error| e.to_string())?;
            if let Some(e) = dream_schedule_mismatch(&case, steps, eps, alg)? {
                return Ok(Outcome::Failed(e));
            }
            let sampler = DreamSamplerConfig::new()
                .with_steps(steps)
                .with_max_new_tokens(usize_of(&case, "gen_length")?)
                .with_eps(eps)
                .with_alg(alg)
                .init()
                .map_err(|e| e.to_string())?
                .with_layer_trace(true);
            let rules = Rules {
                confidence: match alg {
                    DreamAlg::Origin | DreamAlg::MaskgitPlus => ConfidenceKind::Probability,
                    DreamAlg::TopkMargin => ConfidenceKind::Margin,
                    DreamAlg::Entropy => ConfidenceKind::NegEntropy,
                },
                delta: F32_TOL as f64,
                vocab: dllm_cache::Denoiser::vocab_size(model),
                bf16,
            };
            generate_case(&case, &rules, |prompts, policy, on_step| {
                sampler
                    .generate_with(model, prompts, policy, on_step)
                    .map(|o| o.sequences)
                    .map_err(|e| e.to_string())
            })
        }
        ("llada", "fastdllm_generate") => {
            let model = models.llada(&model_dir, weights, device)?;
            let sampler = LladaSamplerConfig::new()
                .with_steps(usize_of(&case, "steps")?)
                .with_gen_length(usize_of(&case, "gen_length")?)
                .with_block_length(usize_of(&case, "block_length")?)
                .with_commit(fastdllm_rule(&case)?)
                .init()
                .map_err(|e| e.to_string())?
                .with_layer_trace(true);
            let rules = Rules {
                confidence: ConfidenceKind::Probability,
                delta: F32_TOL as f64,
                vocab: dllm_cache::Denoiser::vocab_size(model),
                bf16,
            };
            fastdllm_case(&case, &rules, |prompts, policy, on_step| {
                sampler
                    .generate_with(model, prompts, policy, on_step)
                    .map(|o| (o.sequences, o.stats.forwards))
                    .map_err(|e| e.to_string())
            })
        }
        ("dream", "fastdllm_generate") => {
            let model = models.dream(&model_dir, weights, device)?;
            let rule = fastdllm_rule(&case)?;
            let block = match case.get("block_length") {
                None | Some(Value::Null) => None,
                Some(_) => Some(usize_of(&case, "block_length")?),
            };
            let sampler = DreamSamplerConfig::new()
                .with_steps(usize_of(&case, "steps")?)
                .with_max_new_tokens(usize_of(&case, "gen_length")?)
                .with_alg(DreamAlg::Entropy)
                .with_block_length(block)
                .with_commit(rule)
                .init()
                .map_err(|e| e.to_string())?
                .with_layer_trace(true);
            let rules = Rules {
                confidence: match rule {
                    CommitRule::Schedule => ConfidenceKind::NegEntropy,
                    _ => ConfidenceKind::Probability,
                },
                delta: F32_TOL as f64,
                vocab: dllm_cache::Denoiser::vocab_size(model),
                bf16,
            };
            fastdllm_case(&case, &rules, |prompts, policy, on_step| {
                sampler
                    .generate_with(model, prompts, policy, on_step)
                    .map(|o| (o.sequences, o.stats.forwards))
                    .map_err(|e| e.to_string())
            })
        }
        (_, kind) => Ok(Outcome::Unsupported(format!(
            "{arch} {kind} cases are not implemented yet"
        ))),
    }
}

/// Arrays of a case's `.safetensors` file, as f32 (ids converted) with shapes.
struct Arrays {
    bytes: Vec<u8>,
}

impl Arrays {
    fn open(case: &Value, case_dir: &Path) -> Res<Self> {
        let file = str_of(case, "arrays_file")?;
        let bytes = std::fs::read(case_dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
        Ok(Self { bytes })
    }

    fn get(&self, name: &str) -> Res<(Vec<f32>, Vec<usize>)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| e.to_string())?;
        let view = st.tensor(name).map_err(|e| e.to_string())?;
        let data = view.data();
        let values = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => return Err(format!("array {name} has dtype {other:?}")),
        };
        Ok((values, view.shape().to_vec()))
    }
}

fn host(t: Tensor<3>) -> Res<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}

fn forward_case(
    case: &Value,
    case_dir: &Path,
    device: &Device,
    bf16: bool,
    forward: impl Fn(Tensor<2, Int>) -> Res<(Tensor<3>, Vec<Tensor<3>>)>,
) -> Res<Outcome> {
    let arrays = Arrays::open(case, case_dir)?;
    let (ids, ids_shape) = arrays.get("input_ids")?;
    let (want_logits, logits_shape) = arrays.get("logits")?;
    let (want_hidden, hidden_shape) = arrays.get("hidden_states")?;
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, ids_shape), device);
    let (logits, hidden) = forward(tokens)?;
    let fail = |d: String| Ok(Outcome::Failed(d));
    if logits.dims().as_slice() != logits_shape.as_slice() {
        return fail(format!(
            "logits shape {:?}, expected {logits_shape:?}",
            logits.dims()
        ));
    }
    let dl = match max_abs_diff(&host(logits)?, &want_logits) {
        Ok(d) => d,
        Err(e) => return fail(format!("logits: {e}")),
    };
    let [entries, entry_shape @ ..] = hidden_shape.as_slice() else {
        return Err(format!("hidden_states shape {hidden_shape:?}"));
    };
    if hidden.len() != *entries {
        return fail(format!(
            "{} hidden states, expected {entries}",
            hidden.len()
        ));
    }
    let per: usize = entry_shape.iter().product();
    let mut dh = 0f32;
    let mut worst_entry = 0;
    for (i, h) in hidden.into_iter().enumerate() {
        if h.dims().as_slice() != entry_shape {
            return fail(format!(
                "hidden state {i} has shape {:?}, expected {entry_shape:?}",
                h.dims()
            ));
        }
        match max_abs_diff(&host(h)?, &want_hidden[i * per..(i + 1) * per]) {
            Ok(d) if d > dh => {
                dh = d;
                worst_entry = i;
            }
            Ok(_) => {}
            Err(e) => return fail(format!("hidden state {i}: {e}")),
        }
    }
    let detail = format!("max|dlogits|={dl:.2e} max|dhidden|={dh:.2e} (entry {worst_entry})");
    let (tol, hidden_tol) = if bf16 {
        (bf16_tolerance(&want_logits), bf16_tolerance(&want_hidden))
    } else {
        (F32_TOL, F32_TOL)
    };
    Ok(if dl <= tol && dh <= hidden_tol {
        Outcome::Passed(if bf16 {
            format!("{detail} (bf16 bounds: logits {tol:.2e}, hidden {hidden_tol:.2e})")
        } else {
            detail
        })
    } else {
        Outcome::Failed(format!(
            "{detail} exceeds the bound (logits {tol:.2e}, hidden {hidden_tol:.2e})"
        ))
    })
}

/// How a generate case is judged.
struct Rules {
    confidence: ConfidenceKind,
    /// Logit agreement the confidence bound assumes.
    delta: f64,
    vocab: usize,
    bf16: bool,
}

/// The policy a case's `cache` field describes (the official code always refreshes layer 0),
/// wrapped so that it follows the reference inside the tie band.
fn policy_of(case: &Value, ties: &Ties) -> Res<Box<dyn CachePolicy>> {
    let cache = match case.get("cache") {
        None | Some(Value::Null) => return Ok(Box::new(NoCache)),
        Some(c) => c,
    };
    let config = DllmCacheConfig::new()
        .with_prompt_interval(usize_of(cache, "prompt_interval_steps")?)
        .with_response_interval(usize_of(cache, "gen_interval_steps")?)
        .with_refresh_ratio(f64_of(cache, "transfer_ratio")?)
        .with_cfg_interval(usize_of(cache, "cfg_interval_steps")?)
        .with_refresh_first_layer(true);
    Ok(Box::new(FollowTies {
        inner: Box::new(config.init().map_err(|e| e.to_string())?),
        ties: ties.clone(),
        unconditional: false,
        forward: 0,
    }))
}

/// (unconditional pass, 1-based forward index, layer).
type TieKey = (bool, usize, usize);

/// One batch row of a reference V-verify choice.
#[derive(Debug, Clone)]
struct RefChoice {
    /// Sorted row indices (response-relative).
    index: Vec<usize>,
    margin: f64,
    kth_smallest_cos: f64,
}

/// The reference's V-verify choices of a case, keyed by forward and layer, and what the test
/// policy did with them.
#[derive(Clone, Default)]
struct Ties {
    choices: Arc<HashMap<TieKey, Vec<RefChoice>>>,
    /// The 0-based sampler step of each (pass, forward), for messages.
    steps: Arc<HashMap<(bool, usize), usize>>,
    /// Sets where this crate's choice differed from the reference's inside the tie band and
    /// the reference's was followed.
    followed: Arc<Mutex<usize>>,
    /// Rule violations, in the order met.
    violations: Arc<Mutex<Vec<String>>>,
}

impl Ties {
    /// Reads every transfer record; a record without an index, a margin or a k-th cosine is an
    /// error.
    fn of(case: &Value) -> Res<Self> {
        let mut choices = HashMap::new();
        let mut steps = HashMap::new();
        for record in list_of(case, "step_records")? {
            let step = usize_of(record, "step")?;
            let Some(calls) = record.get("cache_calls").and_then(Value::as_array) else {
                continue;
            };
            for call in calls {
                let unconditional = str_of(call, "cache_type")? == "cfg";
                let forward = usize_of(call, "current_step")?;
                steps.insert((unconditional, forward), step);
                let Some(transfers) = call.get("transfer").and_then(Value::as_array) else {
                    continue;
                };
                for t in transfers {
                    let layer = usize_of(t, "layer")?;
                    let mut rows = Vec::new();
                    for (b, row) in list_of(t, "rows")?.iter().enumerate() {
                        let at = |e: String| format!("step {step} layer {layer} row {b}: {e}");
                        let mut index = usizes_of(row, "index").map_err(at)?;
                        index.sort_unstable();
                        rows.push(RefChoice {
                            index,
                            margin: f64_of(row, "margin").map_err(at)?,
                            kth_smallest_cos: f64_of(row, "kth_smallest_cos").map_err(at)?,
                        });
                    }
                    choices.insert((unconditional, forward, layer), rows);
                }
            }
        }
        Ok(Self {
            choices: Arc::new(choices),
            steps: Arc::new(steps),
            ..Self::default()
        })
    }

    fn violation(&self, message: String) {
        self.violations.lock().expect("not poisoned").push(message);
    }
}

/// Per batch row, the cosine similarity of every row's fresh and cached value, as the policy
/// computes it (`sum(a / max(|a|, 1e-8) * b / max(|b|, 1e-8))`), in float32 on the host.
fn cosines(probe: &Probe<'_>) -> dllm_cache::Result<Vec<Vec<f64>>> {
    let [batch, rows, width] = probe.fresh_v.dims();
    let read = |t: &Tensor<3>| {
        t.clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| dllm_cache::Error::Backend(format!("{e:?}")))
    };
    let (fresh, cached) = (read(probe.fresh_v)?, read(probe.cached_v)?);
    fn unit(v: &[f32]) -> impl Iterator<Item = f32> + '_ {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
        v.iter().map(move |x| x / norm)
    }
    Ok((0..batch)
        .map(|b| {
            (0..rows)
                .map(|r| {
                    let at = (b * rows + r) * width..(b * rows + r + 1) * width;
                    unit(&fresh[at.clone()])
                        .zip(unit(&cached[at]))
                        .map(|(x, y)| x * y)
                        .sum::<f32>() as f64
                })
                .collect()
        })
        .collect())
}

/// A test policy: `inner`'s decisions, except inside the tie band, where it follows the
/// reference (see the module docs) and records every choice that breaks the band's rule.
struct FollowTies {
    inner: Box<dyn CachePolicy>,
    ties: Ties,
    unconditional: bool,
    /// 1-based index of the current forward, as the reference counts.
    forward: usize,
}

impl FollowTies {
    /// Our rows for batch row `b` (sorted), the reference's choice, and our cosines: the rows
    /// to use, or a violation.
    fn judge(
        &self,
        layer: usize,
        b: usize,
        ours: &[usize],
        want: &RefChoice,
        cos: &[f64],
    ) -> Result<Vec<usize>, String> {
        let pass = if self.unconditional {
            "unconditional"
        } else {
            "conditional"
        };
        let step = self
            .ties
            .steps
            .get(&(self.unconditional, self.forward))
            .map_or("?".to_string(), |s| s.to_string());
        let at = format!(
            "step {step} ({pass} forward {}) layer {layer} batch row {b}",
            self.forward
        );
        if want.index.len() != ours.len() {
            return Err(format!(
                "{at}: V-verify chose {} rows, the reference {}",
                ours.len(),
                want.index.len()
            ));
        }
        if ours == want.index.as_slice() || want.margin > TIE_BAND {
            // Equal, or a clear choice: compared exactly after the run.
            return Ok(ours.to_vec());
        }
        let a: BTreeSet<usize> = ours.iter().copied().collect();
        let w: BTreeSet<usize> = want.index.iter().copied().collect();
        for &row in a.symmetric_difference(&w) {
            let c = *cos
                .get(row)
                .ok_or_else(|| format!("{at}: row {row} is outside the response"))?;
            if (c - want.kth_smallest_cos).abs() > TIE_BAND {
                let side = if a.contains(&row) {
                    "this crate chose"
                } else {
                    "the reference chose"
                };
                return Err(format!(
                    "{at}: response row {row}, which {side} alone, has cosine {c:.9} while the reference's k-th smallest is {:.9} (outside the {TIE_BAND:e} tie band); ours {ours:?}, reference {:?}",
                    want.kth_smallest_cos, want.index
                ));
            }
        }
        *self.ties.followed.lock().expect("not poisoned") += 1;
        Ok(want.index.clone())
    }
}

impl CachePolicy for FollowTies {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn begin_step(&mut self, step: &StepInfo) {
        self.forward = step.index + 1;
        self.inner.begin_step(step);
    }

    fn wants_probe(&self, layer: usize, segment: Segment) -> bool {
        self.inner.wants_probe(layer, segment)
    }

    fn plan(
        &mut self,
        layer: usize,
        segment: Segment,
        probe: Option<Probe<'_>>,
    ) -> dllm_cache::Result<Refresh> {
        let cos = match (&probe, segment) {
            (Some(p), Segment::Response) => Some(cosines(p)?),
            _ => None,
        };
        let plan = self.inner.plan(layer, segment, probe)?;
        let (Refresh::Rows(rows), Some(cos)) = (&plan, cos) else {
            return Ok(plan);
        };
        let Some(want) = self
            .ties
            .choices
            .get(&(self.unconditional, self.forward, layer))
        else {
            // No reference choice here: the comparison after the run reports it.
            return Ok(plan);
        };
        let [batch, k] = rows.dims();
        let ours: Vec<i64> = rows
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| dllm_cache::Error::Backend(format!("{e:?}")))?;
        let mut chosen = Vec::with_capacity(batch * k);
        for b in 0..batch {
            let mut row: Vec<usize> = ours[b * k..(b + 1) * k]
                .iter()
                .map(|&i| i as usize)
                .collect();
            row.sort_unstable();
            let pick = match want.get(b) {
                Some(w) => match self.judge(layer, b, &row, w, &cos[b]) {
                    Ok(pick) => pick,
                    Err(v) => {
                        self.ties.violation(v);
                        row
                    }
                },
                None => row,
            };
            chosen.extend(pick.into_iter().map(|i| i as i64));
        }
        if chosen.len() != batch * k {
            return Ok(plan);
        }
        Ok(Refresh::Rows(Tensor::from_data(
            TensorData::new(chosen, [batch, k]),
            &rows.device(),
        )))
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn stores_features(&self) -> bool {
        self.inner.stores_features()
    }

    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(FollowTies {
            inner: self.inner.fork(),
            ties: self.ties.clone(),
            unconditional: true,
            forward: 0,
        })
    }

    fn guidance_interval(&self) -> Option<usize> {
        self.inner.guidance_interval()
    }
}

/// What a generation recorded at one step.
struct Recorded {
    committed: Vec<Vec<Commit>>,
    forwards: Vec<ForwardTrace>,
}

/// Counts over a generate case.
#[derive(Default)]
struct Tally {
    /// V-verify row sets compared (all of them, after the tie band).
    sets: usize,
    /// Confidences compared.
    confidences: usize,
    /// Worst confidence error relative to the reference value, and as a fraction of its bound.
    worst_relative: f64,
    worst_of_bound: f64,
}

/// Runs a generate case and compares it step by step with the reference.
fn generate_case(
    case: &Value,
    rules: &Rules,
    mut generate: impl FnMut(
        &[Vec<u32>],
        &mut dyn CachePolicy,
        &mut dyn FnMut(&dllm_cache::StepEvent<'_>) -> ControlFlow<()>,
    ) -> Res<Vec<Vec<u32>>>,
) -> Res<Outcome> {
    let prompts = rows_of(case, "prompt")?;
    let want_final = rows_of(case, "final_x")?;
    let records = list_of(case, "step_records")?;
    let ties = Ties::of(case)?;
    let mut policy = policy_of(case, &ties)?;
    let mut recorded = Vec::new();
    let got_final = generate(&prompts, policy.as_mut(), &mut |event| {
        recorded.push(Recorded {
            committed: event.committed.to_vec(),
            forwards: event.forwards.to_vec(),
        });
        ControlFlow::Continue(())
    })?;
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let agree: usize = got_final
        .iter()
        .zip(&want_final)
        .map(|(g, w)| g[p..].iter().zip(&w[p..]).filter(|(a, b)| a == b).count())
        .sum();
    let total: usize = want_final.iter().map(|w| w.len().saturating_sub(p)).sum();
    let mut tally = Tally::default();
    let mut divergence = ties
        .violations
        .lock()
        .expect("not poisoned")
        .first()
        .cloned();
    if divergence.is_none() && recorded.len() != records.len() {
        divergence = Some(format!(
            "{} steps, expected {}",
            recorded.len(),
            records.len()
        ));
    }
    if divergence.is_none() {
        for (step, (got, want)) in recorded.iter().zip(records).enumerate() {
            let checked = compare_forwards(got, want, &mut tally)
                .and_then(|()| compare_commits(got, want, rules, &mut tally));
            if let Err(e) = checked {
                divergence = Some(format!("first divergence at step {step}: {e}"));
                break;
            }
        }
    }
    if divergence.is_none() && got_final != want_final {
        divergence = Some("final sequences differ".into());
    }
    let followed = *ties.followed.lock().expect("not poisoned");
    let confidences = if rules.bf16 {
        format!(
            "{} confidences compared, no bound applied (worst {:.1e} relative)",
            tally.confidences, tally.worst_relative
        )
    } else {
        format!(
            "{} confidences within {:.3} of their bound (worst {:.1e} relative)",
            tally.confidences, tally.worst_of_bound, tally.worst_relative
        )
    };
    let summary = format!(
        "{agree}/{total} tokens, {} steps, {} V-verify sets equal ({followed} followed the reference inside the tie band), {confidences}",
        records.len(),
        tally.sets,
    );
    Ok(match (divergence, rules.bf16) {
        (None, false) => Outcome::Passed(summary),
        (None, true) => Outcome::Informational(format!("bf16: {summary}")),
        (Some(d), true) => Outcome::Informational(format!("bf16 (ties): {summary}; {d}")),
        (Some(d), false) => Outcome::Failed(format!("{summary}; {d}")),
    })
}

/// The cache decisions of a step's forwards (made before its commits, so compared first).
fn compare_forwards(got: &Recorded, want: &Value, tally: &mut Tally) -> Res<()> {
    let Some(calls) = want.get("cache_calls").and_then(Value::as_array) else {
        // A run without a cache records no calls; this crate must not have reused anything.
        for fwd in &got.forwards {
            if let Some(l) = fwd.layers.iter().find(|l| l.branch() != "full") {
                return Err(format!(
                    "layer {} ran branch `{}` where the reference recomputes everything",
                    l.layer,
                    l.branch()
                ));
            }
        }
        return Ok(());
    };
    if calls.len() != got.forwards.len() {
        return Err(format!(
            "{} forwards, expected {}",
            got.forwards.len(),
            calls.len()
        ));
    }
    for (call, fwd) in calls.iter().zip(&got.forwards) {
        let want_pass = match str_of(call, "cache_type")? {
            "cfg" => Pass::Unconditional,
            "no_cfg" => Pass::Conditional,
            other => return Err(format!("unknown cache_type `{other}`")),
        };
        let current = usize_of(call, "current_step")?;
        if fwd.pass != want_pass || fwd.index + 1 != current {
            return Err(format!(
                "forward {:?} #{} where the reference ran {want_pass:?} at current_step {current}",
                fwd.pass,
                fwd.index + 1
            ));
        }
        let branches: Vec<&str> = fwd.layers.iter().map(|l| l.branch()).collect();
        let want_branches: Vec<&str> = list_of(call, "layer_branch")?
            .iter()
            .map(|v| v.as_str().ok_or("layer_branch holds a non-string"))
            .collect::<Result<_, _>>()?;
        if branches != want_branches {
            return Err(format!(
                "{want_pass:?} pass layer branches {branches:?}, expected {want_branches:?}"
            ));
        }
        let transfers = match call.get("transfer") {
            None | Some(Value::Null) => &Vec::new(),
            Some(t) => t.as_array().ok_or("`transfer` is not a list")?,
        };
        let mut want_layers = BTreeSet::new();
        for t in transfers {
            let layer = usize_of(t, "layer")?;
            let k = usize_of(t, "k")?;
            want_layers.insert(layer);
            let Some(RowsTrace::Rows(got_rows)) = fwd.layers.get(layer).map(|l| &l.response) else {
                return Err(format!(
                    "{want_pass:?} pass layer {layer}: no V-verify where the reference chose {k} rows"
                ));
            };
            let want_rows = list_of(t, "rows")?;
            if want_rows.len() != got_rows.len() {
                return Err(format!(
                    "{want_pass:?} pass layer {layer}: {} batch rows, expected {}",
                    got_rows.len(),
                    want_rows.len()
                ));
            }
            for (b, (row, got_idx)) in want_rows.iter().zip(got_rows).enumerate() {
                let mut want_idx = usizes_of(row, "index")?;
                let mut got_idx = got_idx.clone();
                want_idx.sort_unstable();
                got_idx.sort_unstable();
                if got_idx.len() != k || want_idx != got_idx {
                    return Err(format!(
                        "{want_pass:?} pass layer {layer} batch row {b}: V-verify chose {got_idx:?}, expected {want_idx:?} (k = {k})"
                    ));
                }
                tally.sets += 1;
            }
        }
        let got_layers: BTreeSet<usize> = fwd
            .layers
            .iter()
            .filter(|l| matches!(l.response, RowsTrace::Rows(_)))
            .map(|l| l.layer)
            .collect();
        if got_layers != want_layers {
            return Err(format!(
                "{want_pass:?} pass: V-verify ran at layers {got_layers:?}, the reference at {want_layers:?}"
            ));
        }
    }
    Ok(())
}

/// The positions and tokens a step committed, exactly, and their confidences within the bound.
fn compare_commits(got: &Recorded, want: &Value, rules: &Rules, tally: &mut Tally) -> Res<()> {
    let rows = list_of(want, "rows")?;
    if rows.len() != got.committed.len() {
        return Err(format!(
            "{} batch rows committed, expected {}",
            got.committed.len(),
            rows.len()
        ));
    }
    for (b, (g, w)) in got.committed.iter().zip(rows).enumerate() {
        let positions = usizes_of(w, "positions")?;
        let tokens = usizes_of(w, "tokens")?;
        let confidences = f64s_of(w, "confidences")?;
        if tokens.len() != positions.len() || confidences.len() != positions.len() {
            return Err(format!(
                "row {b}: the record's positions, tokens and confidences differ in length"
            ));
        }
        let mut want_pairs: Vec<(usize, u32)> = positions
            .iter()
            .zip(&tokens)
            .map(|(&p, &t)| (p, t as u32))
            .collect();
        let mut got_pairs: Vec<(usize, u32)> = g.iter().map(|c| (c.position, c.token)).collect();
        want_pairs.sort_unstable();
        got_pairs.sort_unstable();
        if want_pairs != got_pairs {
            return Err(format!(
                "row {b} committed {got_pairs:?}, expected {want_pairs:?}"
            ));
        }
        for (&position, &c) in positions.iter().zip(&confidences) {
            let mine = g
                .iter()
                .find(|m| m.position == position)
                .ok_or_else(|| format!("row {b}: position {position} not committed"))?
                .confidence as f64;
            if !mine.is_finite() || !c.is_finite() {
                return Err(format!(
                    "row {b} position {position}: confidence {mine}, reference {c}"
                ));
            }
            let err = (mine - c).abs();
            tally.confidences += 1;
            tally.worst_relative = tally.worst_relative.max(err / c.abs().max(1e-30));
            if rules.bf16 {
                continue;
            }
            let bound = confidence_bound(rules.confidence, c, rules.delta, rules.vocab);
            tally.worst_of_bound = tally.worst_of_bound.max(err / bound);
            if err > bound {
                return Err(format!(
                    "row {b} position {position}: confidence {mine:.9}, reference {c:.9}: difference {err:.2e} exceeds the bound {bound:.2e}"
                ));
            }
        }
    }
    Ok(())
}

/// The commit rule of a Fast-dLLM case.
fn fastdllm_rule(case: &Value) -> Res<CommitRule> {
    Ok(match str_of(case, "rule")? {
        "threshold" | "threshold_window" => CommitRule::Threshold(f64_of(case, "threshold")?),
        "factor" => CommitRule::Factor(f64_of(case, "factor")?),
        "fixed" => CommitRule::Schedule,
        other => return Err(format!("unknown rule `{other}`")),
    })
}

/// The policy of a Fast-dLLM case, from its `implementation`.
fn fastdllm_policy(case: &Value) -> Res<Box<dyn CachePolicy>> {
    let implementation = str_of(case, "implementation")?;
    Ok(if implementation.ends_with("PrefixCache") {
        Box::new(PrefixCache::new())
    } else if implementation.ends_with("DualCache") {
        Box::new(DualCache::new())
    } else if implementation.contains("no cache") {
        Box::new(NoCache)
    } else {
        return Err(format!("unknown implementation `{implementation}`"));
    })
}

/// The absolute rows a traced forward recomputed, `[start, end)`, if they are one range the
/// same at every layer (what a Fast-dLLM forward is given), and whether it was a full forward.
fn recomputed_rows(fwd: &ForwardTrace, p: usize, seq: usize) -> Res<(usize, usize, bool)> {
    let mut out = None;
    for l in &fwd.layers {
        let rows = match (&l.prompt, &l.response) {
            (RowsTrace::All, RowsTrace::All) => (0, seq, true),
            (RowsTrace::Reused, RowsTrace::All) => (p, seq, false),
            (RowsTrace::Reused, RowsTrace::Range(r)) => (p + r.start, p + r.end, false),
            other => {
                return Err(format!(
                    "layer {}: plan {other:?} is not one row range",
                    l.layer
                ));
            }
        };
        match out {
            None => out = Some(rows),
            Some(o) if o == rows => {}
            Some(o) => {
                return Err(format!(
                    "layer {} recomputed {rows:?}, layer 0 {o:?}: not one range per forward",
                    l.layer
                ));
            }
        }
    }
    out.ok_or_else(|| "a forward without layers".to_string())
}

/// Runs a Fast-dLLM case and compares it step by step: the number of forwards, per step its
/// block, the rows the forward recomputed against those the official forward was given, the
/// committed positions and tokens, the confidences within the bound, and the final sequences.
fn fastdllm_case(
    case: &Value,
    rules: &Rules,
    mut generate: impl FnMut(
        &[Vec<u32>],
        &mut dyn CachePolicy,
        &mut dyn FnMut(&dllm_cache::StepEvent<'_>) -> ControlFlow<()>,
    ) -> Res<(Vec<Vec<u32>>, usize)>,
) -> Res<Outcome> {
    let prompts = rows_of(case, "prompt")?;
    let want_final = rows_of(case, "final_x")?;
    let records = list_of(case, "step_records")?;
    let want_nfe = usize_of(case, "nfe")?;
    let mut policy = fastdllm_policy(case)?;
    let caching = policy.stores_features();
    let mut recorded = Vec::new();
    let (got_final, nfe) = generate(&prompts, policy.as_mut(), &mut |event| {
        recorded.push(Recorded {
            committed: event.committed.to_vec(),
            forwards: event.forwards.to_vec(),
        });
        ControlFlow::Continue(())
    })?;
    let p = usize_of(case, "prompt_length")?;
    let seq = p + usize_of(case, "gen_length")?;
    let mut tally = Tally::default();
    let mut divergence = None;
    for (step, (got, want)) in recorded.iter().zip(records).enumerate() {
        let checked = compare_fastdllm_forward(got, want, p, seq, caching)
            .and_then(|()| compare_commits(got, want, rules, &mut tally));
        if let Err(e) = checked {
            divergence = Some(format!("first divergence at step {step}: {e}"));
            break;
        }
    }
    if divergence.is_none() && recorded.len() != records.len() {
        divergence = Some(format!(
            "{} steps, expected {}",
            recorded.len(),
            records.len()
        ));
    }
    if divergence.is_none() && nfe != want_nfe {
        divergence = Some(format!("{nfe} forwards, the official code {want_nfe}"));
    }
    if divergence.is_none() && got_final != want_final {
        divergence = Some("final sequences differ".into());
    }
    let summary = format!(
        "{} steps, {nfe} forwards, recomputed rows equal at every step, {} confidences within {:.3} of their bound (worst {:.1e} relative)",
        records.len(),
        tally.confidences,
        tally.worst_of_bound,
        tally.worst_relative,
    );
    Ok(match (divergence, rules.bf16) {
        (None, false) => Outcome::Passed(summary),
        (None, true) => Outcome::Informational(format!("bf16: {summary}")),
        (Some(d), true) => Outcome::Informational(format!("bf16 (ties): {d}")),
        (Some(d), false) => Outcome::Failed(d),
    })
}

/// One step's forward against the official one: its block, and the rows it recomputed.
fn compare_fastdllm_forward(
    got: &Recorded,
    want: &Value,
    p: usize,
    seq: usize,
    caching: bool,
) -> Res<()> {
    let [fwd] = got.forwards.as_slice() else {
        return Err(format!("{} forwards in one step", got.forwards.len()));
    };
    if let Some(Value::Number(_)) = want.get("block") {
        let block = fwd.info.block.ok_or("no block in the step information")?;
        let want_block = (
            usize_of(want, "block")?,
            usize_of(want, "block_start")?,
            usize_of(want, "block_end")?,
            usize_of(want, "block_step")?,
        );
        let got_block = (block.index, block.start, block.end, block.step);
        if got_block != want_block {
            return Err(format!(
                "block (index, start, end, step) {got_block:?}, the official code {want_block:?}"
            ));
        }
    }
    let input = get(want, "model_input")?;
    let want_rows = (
        usize_of(input, "start")?,
        usize_of(input, "end")?,
        input["full_forward"].as_bool().ok_or("full_forward")?,
    );
    let got_rows = recomputed_rows(fwd, p, seq)?;
    if got_rows != want_rows {
        return Err(format!(
            "recomputed rows (start, end, full) {got_rows:?}, the official forward was given {want_rows:?}"
        ));
    }
    let refresh = want["cache_refresh"].as_bool().ok_or("cache_refresh")?;
    if refresh != (caching && got_rows.2) {
        return Err(format!(
            "cache refresh {}, the official code {refresh}",
            caching && got_rows.2
        ));
    }
    Ok(())
}

/// Dream's float32 schedule: every recorded `t`, `s`, and the transfer count derived from the
/// recorded mask count, bit for bit.
fn dream_schedule_mismatch(
    case: &Value,
    steps: usize,
    eps: f64,
    alg: DreamAlg,
) -> Res<Option<String>> {
    let timesteps = dream_timesteps(steps, eps);
    let records = list_of(case, "step_records")?;
    if records.len() != steps {
        return Ok(Some(format!(
            "{} step records for {steps} steps",
            records.len()
        )));
    }
    for (i, rec) in records.iter().enumerate() {
        let t = f64_of(rec, "t")? as f32;
        let s = f64_of(rec, "s")? as f32;
        if timesteps[i] != t || timesteps[i + 1] != s {
            return Ok(Some(format!(
                "step {i}: timesteps ({}, {}) but the reference used ({t}, {s})",
                timesteps[i],
                timesteps[i + 1]
            )));
        }
        if alg == DreamAlg::Origin {
            continue;
        }
        let masks = f64_of(rec, "num_mask_per_row")? as f32;
        let want = usize_of(rec, "num_transfer")?;
        let got = dream_transfer_count(masks, t, s, i + 1 == steps);
        if got != want {
            return Ok(Some(format!(
                "step {i}: {got} tokens to transfer, the reference {want}"
            )));
        }
    }
    Ok(None)
}
