//! The contract every cache policy must keep, run against every policy and every model
//! (modelled on the diffusers cache-hook test suite): always-refresh settings equal no cache,
//! `reset` isolates generations, concurrent generations equal sequential ones, invalid settings
//! fail, and rule-breaking plans are errors. A new policy joins with one entry in
//! [`contracts`]; every test runs for every entry.

use std::sync::Arc;

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::cache::{
    BlockInfo, CachePolicy, DualCache, FeatureCache, PrefixCache, Probe, Refresh, Segment,
};
use dllm_cache::sampler::CommitRule;
use dllm_cache::{
    Denoiser, DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Error, FlopCounter, Llada,
    LladaSamplerConfig, NoCache, StepContext, StepInfo,
};

type Policy = Box<dyn CachePolicy>;

/// A policy under contract: settings that exercise all of its branches, settings under which
/// it must compute exactly what `NoCache` computes, and settings it must reject (with the name
/// of the offending field).
struct Contract {
    name: &'static str,
    typical: Typical,
    always_refresh: fn() -> Policy,
    /// Whether `always_refresh` refreshes everything only when every step starts a block (the
    /// block caches, which have no settings): its generations then run with one-token blocks.
    by_blocks: bool,
    invalid: fn() -> Vec<(&'static str, dllm_cache::Result<Policy>)>,
}

fn boxed<P: CachePolicy + 'static>(p: dllm_cache::Result<P>) -> dllm_cache::Result<Policy> {
    p.map(|p| Box::new(p) as Policy)
}

/// Every policy under contract: a new policy joins with one entry here, and every test below
/// runs for it.
fn contracts() -> Vec<Contract> {
    vec![
        Contract {
            name: "none",
            typical: || vec![Box::new(NoCache)],
            always_refresh: || Box::new(NoCache),
            by_blocks: false,
            invalid: Vec::new,
        },
        Contract {
            name: "dllm",
            typical: || {
                let d = DllmCacheConfig::new();
                [
                    d.clone(),
                    d.clone().with_prompt_interval(4).with_response_interval(2),
                    d.with_prompt_interval(8)
                        .with_response_interval(3)
                        .with_refresh_ratio(0.5)
                        .with_refresh_first_layer(false),
                ]
                .iter()
                .map(|c| boxed(c.init()).unwrap())
                .collect()
            },
            always_refresh: || {
                let c = DllmCacheConfig::new()
                    .with_prompt_interval(1)
                    .with_response_interval(1)
                    .with_refresh_ratio(0.0);
                boxed(c.init()).unwrap()
            },
            by_blocks: false,
            invalid: || {
                let d = DllmCacheConfig::new();
                vec![
                    (
                        "prompt_interval",
                        boxed(d.clone().with_prompt_interval(0).init()),
                    ),
                    (
                        "response_interval",
                        boxed(d.clone().with_response_interval(0).init()),
                    ),
                    ("cfg_interval", boxed(d.clone().with_cfg_interval(0).init())),
                    (
                        "refresh_ratio",
                        boxed(d.clone().with_refresh_ratio(-0.1).init()),
                    ),
                    (
                        "refresh_ratio",
                        boxed(d.clone().with_refresh_ratio(1.5).init()),
                    ),
                    (
                        "refresh_ratio",
                        boxed(d.with_refresh_ratio(f64::NAN).init()),
                    ),
                ]
            },
        },
        Contract {
            name: "prefix",
            typical: || vec![Box::new(PrefixCache::new())],
            always_refresh: || Box::new(PrefixCache::new()),
            by_blocks: true,
            invalid: Vec::new,
        },
        Contract {
            name: "dual",
            typical: || vec![Box::new(DualCache::new())],
            always_refresh: || Box::new(DualCache::new()),
            by_blocks: true,
            invalid: Vec::new,
        },
    ]
}

/// The device under test: `DLLM_DEVICE` (a `device_from_name` name), else the default.
fn device() -> Device {
    match std::env::var("DLLM_DEVICE") {
        Ok(name) => dllm_cache::device_from_name(&name).expect("DLLM_DEVICE names a device"),
        Err(_) => Device::default(),
    }
}

/// Builds a contract's typical policies.
type Typical = fn() -> Vec<Policy>;

/// Every typical policy of every contract: name, builder, index.
fn all_typical() -> Vec<(String, Typical, usize)> {
    contracts()
        .into_iter()
        .flat_map(|c| {
            let n = (c.typical)().len();
            (0..n).map(move |i| (format!("{}#{i}", c.name), c.typical, i))
        })
        .collect()
}

fn make(typical: Typical, i: usize) -> Policy {
    (typical)().swap_remove(i)
}

/// How a runner drives its sampler.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Guidance scale (LLaDA).
    cfg: f64,
    /// Tokens, and steps under the schedule.
    n: usize,
    rule: CommitRule,
    /// Blocks of one token: every step is the first step of its block.
    one_token_blocks: bool,
}

impl Mode {
    fn new(cfg: f64, n: usize) -> Self {
        Self {
            cfg,
            n,
            rule: CommitRule::Schedule,
            one_token_blocks: false,
        }
    }
}

/// Runs a model's own sampler for a batch of two prompts.
type Runner = fn(&dyn Denoiser, &mut dyn CachePolicy, Mode) -> dllm_cache::Result<Vec<Vec<u32>>>;

/// A model under contract with the sampler that drives it.
struct Subject {
    name: &'static str,
    model: Arc<dyn Denoiser>,
    run: Runner,
    /// Whether its sampler has classifier-free guidance.
    guidance: bool,
}

fn run_llada(
    m: &dyn Denoiser,
    p: &mut dyn CachePolicy,
    mode: Mode,
) -> dllm_cache::Result<Vec<Vec<u32>>> {
    let n = mode.n;
    let sampler = LladaSamplerConfig::new()
        .with_steps(n)
        .with_gen_length(n)
        .with_block_length(if mode.one_token_blocks { 1 } else { n / 2 })
        .with_cfg_scale(mode.cfg)
        .with_commit(mode.rule)
        .init()?;
    Ok(sampler.generate(m, &prompts(2, 10), p)?.sequences)
}

/// Dream's own sampler under the schedule; Fast-dLLM's block sampler for one-token blocks and
/// under the adaptive rules.
fn run_dream(
    m: &dyn Denoiser,
    p: &mut dyn CachePolicy,
    mode: Mode,
) -> dllm_cache::Result<Vec<Vec<u32>>> {
    let n = mode.n;
    let block = match (mode.one_token_blocks, mode.rule.is_adaptive()) {
        (true, _) => Some(1),
        (false, true) => Some(n / 2),
        (false, false) => None,
    };
    let sampler = DreamSamplerConfig::new()
        .with_steps(n)
        .with_max_new_tokens(n)
        .with_alg(DreamAlg::Entropy)
        .with_block_length(block)
        .with_commit(mode.rule)
        .init()?;
    Ok(sampler.generate(m, &prompts(2, 10), p)?.sequences)
}

/// Every model under contract.
fn models(device: &Device) -> Vec<Subject> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    vec![
        Subject {
            name: "llada",
            model: Arc::new(Llada::from_dir(dir.join("llada"), device).expect("llada fixture")),
            run: run_llada,
            guidance: true,
        },
        Subject {
            name: "dream",
            model: Arc::new(Dream::from_dir(dir.join("dream"), device).expect("dream fixture")),
            run: run_dream,
            guidance: false,
        },
    ]
}

fn guidance_scales(subject: &Subject) -> &'static [f64] {
    if subject.guidance {
        &[0.0, 1.0]
    } else {
        &[0.0]
    }
}

fn prompts(batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| ((i * 7 + b * 13 + 5) % 250) as u32)
                .collect()
        })
        .collect()
}

/// A 16-token generation for a batch of two.
fn generate(subject: &Subject, policy: &mut dyn CachePolicy, cfg: f64) -> Vec<Vec<u32>> {
    generate_in(subject, policy, Mode::new(cfg, 16))
}

fn generate_in(subject: &Subject, policy: &mut dyn CachePolicy, mode: Mode) -> Vec<Vec<u32>> {
    (subject.run)(subject.model.as_ref(), policy, mode).expect("generation runs")
}

fn logits_of(
    model: &dyn Denoiser,
    policy: &mut dyn CachePolicy,
    steps: usize,
    one_token_blocks: bool,
) -> Vec<Vec<f32>> {
    let device = model.device();
    let mask = model.special_tokens().mask as i64;
    let mut cache = FeatureCache::new();
    let mut flops = FlopCounter::new();
    policy.reset();
    let mut out = Vec::new();
    for index in 0..steps {
        // A sequence that changes a little every step, as during denoising.
        let mut row: Vec<i64> = prompts(1, 12)[0].iter().map(|&t| t as i64).collect();
        row.extend((0..20).map(|j| {
            if j < index {
                (j * 11 % 250) as i64
            } else {
                mask
            }
        }));
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(row, [1, 32]), &device);
        let mut info = StepInfo::new(index, 12, 20);
        if one_token_blocks {
            info = info.with_block(BlockInfo::new(index, 12 + index, 13 + index, 0));
        }
        let mut ctx = StepContext::new(info, policy, &mut cache, &mut flops);
        let logits = model.forward(tokens, &mut ctx).expect("forward");
        out.push(logits.try_into_vec_as::<f32>().unwrap());
    }
    out
}

#[test]
fn always_refresh_equals_no_cache_bit_for_bit() {
    let device = device();
    for subject in models(&device) {
        let model = subject.model.as_ref();
        for contract in contracts() {
            let name = format!("{}/{}", subject.name, contract.name);
            let by_blocks = contract.by_blocks;
            let mut always = (contract.always_refresh)();
            assert_eq!(
                logits_of(model, always.as_mut(), 6, by_blocks),
                logits_of(model, &mut NoCache, 6, by_blocks),
                "{name}: always-refresh settings must equal NoCache exactly"
            );
            // Same for whole generations, with and without guidance.
            for &cfg in guidance_scales(&subject) {
                let mode = Mode {
                    one_token_blocks: by_blocks,
                    ..Mode::new(cfg, 16)
                };
                assert_eq!(
                    generate_in(&subject, always.as_mut(), mode),
                    generate_in(&subject, &mut NoCache, mode),
                    "{name} cfg {cfg}"
                );
            }
        }
    }
}

/// Every policy works with every commit rule on both models: the generation completes, and
/// running it again with the same policy value gives the same tokens.
#[test]
fn every_policy_works_with_every_commit_rule() {
    let device = device();
    for subject in models(&device) {
        let mask = subject.model.special_tokens().mask;
        for (name, typical, i) in all_typical() {
            for rule in [
                CommitRule::Schedule,
                CommitRule::Threshold(0.3),
                CommitRule::Factor(1.0),
            ] {
                let at = format!("{}/{name} {rule}", subject.name);
                let mode = Mode {
                    rule,
                    ..Mode::new(0.0, 16)
                };
                let mut policy = make(typical, i);
                let first = generate_in(&subject, policy.as_mut(), mode);
                assert!(
                    first.iter().all(|r| !r[10..].contains(&mask)),
                    "{at}: masks left {first:?}"
                );
                assert_eq!(generate_in(&subject, policy.as_mut(), mode), first, "{at}");
            }
        }
    }
}

#[test]
fn caching_policies_actually_reuse() {
    // The contract above would also hold for a policy that ignored its settings; check that
    // the caching settings do change the computation (fewer FLOPs, slightly different logits).
    let device = device();
    for Subject { name, model, .. } in models(&device) {
        let mut cached = DllmCacheConfig::new()
            .with_prompt_interval(4)
            .with_response_interval(2)
            .init()
            .unwrap();
        let a = logits_of(model.as_ref(), &mut cached, 6, false);
        let b = logits_of(model.as_ref(), &mut NoCache, 6, false);
        assert_eq!(
            a[0], b[0],
            "{name}: the first step is always a full refresh"
        );
        assert_ne!(a[1], b[1], "{name}: step 1 reuses features");
    }
}

#[test]
fn reset_isolates_generations() {
    let device = device();
    for subject in models(&device) {
        for (name, typical, i) in all_typical() {
            for &cfg in guidance_scales(&subject) {
                let at = format!("{}/{name} cfg {cfg}", subject.name);
                let mut reused = make(typical, i);
                let first = generate(&subject, reused.as_mut(), cfg);
                let second = generate(&subject, reused.as_mut(), cfg);
                let fresh = generate(&subject, make(typical, i).as_mut(), cfg);
                assert_eq!(first, fresh, "{at}");
                assert_eq!(second, fresh, "{at}: state leaked");
            }
        }
    }
}

#[test]
fn concurrent_generations_on_one_model_match_sequential_ones() {
    let device = device();
    for subject in models(&device) {
        let sequential: Vec<_> = all_typical()
            .into_iter()
            .map(|(_, typical, i)| generate(&subject, make(typical, i).as_mut(), 0.0))
            .collect();
        let handles: Vec<_> = all_typical()
            .into_iter()
            .map(|(name, typical, i)| {
                let (model, run) = (Arc::clone(&subject.model), subject.run);
                std::thread::spawn(move || {
                    (
                        name,
                        run(
                            model.as_ref(),
                            make(typical, i).as_mut(),
                            Mode::new(0.0, 16),
                        ),
                    )
                })
            })
            .collect();
        assert_eq!(handles.len(), sequential.len());
        for (handle, want) in handles.into_iter().zip(sequential) {
            let (name, got) = handle.join().expect("thread");
            assert_eq!(
                got.expect("generation runs"),
                want,
                "{}/{name}",
                subject.name
            );
        }
    }
}

#[test]
fn invalid_configs_fail() {
    for contract in contracts() {
        for (field, result) in (contract.invalid)() {
            match result {
                Err(Error::InvalidArgument { name, .. }) => {
                    assert_eq!(name, field, "{}", contract.name)
                }
                other => panic!(
                    "{} {field}: expected InvalidArgument, got {:?}",
                    contract.name,
                    other.map(|p| p.name())
                ),
            }
        }
    }
    assert!(
        DllmCacheConfig::new()
            .with_refresh_ratio(1.0)
            .init()
            .is_ok()
    );
}

/// How [`Breaker`] breaks the rules.
#[derive(Clone, Copy, Debug)]
enum Breach {
    /// Reuse at the first forward, before anything was cached.
    ReuseUncached,
    /// A row selection of the wrong batch size.
    WrongBatch,
    /// More rows than the segment has.
    TooMany,
    /// A row index one past the segment.
    OutOfRange,
    /// A negative row index.
    Negative,
    /// One row twice.
    Duplicate,
}

/// A policy's decisions, except one rule-breaking plan: at the response segment of layer 1,
/// at forward 0 ([`Breach::ReuseUncached`]) or forward 1 (the rest, when features are cached:
/// this wrapper always stores them).
struct Breaker {
    inner: Policy,
    breach: Breach,
    forward: usize,
}

impl CachePolicy for Breaker {
    fn name(&self) -> String {
        format!("breaker({:?}, {})", self.breach, self.inner.name())
    }
    fn begin_step(&mut self, step: &StepInfo) {
        self.forward = step.index;
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
        let plan = self.inner.plan(layer, segment, probe)?;
        let due = match self.breach {
            Breach::ReuseUncached => self.forward == 0,
            _ => self.forward == 1,
        };
        if !(due && layer == 1 && segment == Segment::Response) {
            return Ok(plan);
        }
        let device = device();
        // The response of the runners below: 2 batch rows of 8 positions.
        let rows = |v: Vec<i64>, shape: [usize; 2]| {
            Refresh::Rows(Tensor::<2, Int>::from_data(
                TensorData::new(v, shape),
                &device,
            ))
        };
        Ok(match self.breach {
            Breach::ReuseUncached => Refresh::Reuse,
            Breach::WrongBatch => rows(vec![0, 1, 2], [3, 1]),
            Breach::TooMany => rows((0..18).map(|i| i % 8).collect(), [2, 9]),
            Breach::OutOfRange => rows(vec![0, 8, 1, 2], [2, 2]),
            Breach::Negative => rows(vec![0, 1, -1, 2], [2, 2]),
            Breach::Duplicate => rows(vec![3, 3, 1, 2], [2, 2]),
        })
    }
    fn reset(&mut self) {
        self.inner.reset();
    }
    fn stores_features(&self) -> bool {
        true
    }
    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(Breaker {
            inner: self.inner.fork(),
            breach: self.breach,
            forward: 0,
        })
    }
    fn guidance_interval(&self) -> Option<usize> {
        self.inner.guidance_interval()
    }
}

#[test]
fn rule_breaking_plans_are_errors_not_panics() {
    let device = device();
    let breaches = [
        (Breach::ReuseUncached, "never cached"),
        (Breach::WrongBatch, "row selection of shape [3, 1]"),
        (Breach::TooMany, "row selection of shape [2, 9]"),
        (Breach::OutOfRange, "holds 8 in batch row 0"),
        (Breach::Negative, "holds -1 in batch row 1"),
        (Breach::Duplicate, "holds 3 twice in batch row 0"),
    ];
    for subject in models(&device) {
        for (name, typical, i) in all_typical() {
            for (breach, needle) in breaches {
                let mut policy = Breaker {
                    inner: make(typical, i),
                    breach,
                    forward: 0,
                };
                let at = format!("{}/{name} {breach:?}", subject.name);
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (subject.run)(subject.model.as_ref(), &mut policy, Mode::new(0.0, 8))
                }));
                match result {
                    Ok(Err(Error::Policy { layer: 1, reason })) if reason.contains(needle) => {}
                    Ok(Err(e)) => panic!("{at}: unexpected error {e}"),
                    Ok(Ok(_)) => panic!("{at}: accepted"),
                    Err(_) => panic!("{at}: panicked"),
                }
            }
        }
    }
}

/// Types an application shares between threads or moves into them.
#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Llada>();
    send_sync::<Dream>();
    send_sync::<dllm_cache::Pipeline>();
    send_sync::<dllm_cache::Tokenizer>();
    send_sync::<dllm_cache::LladaSampler>();
    send_sync::<dllm_cache::DreamSampler>();
    send_sync::<DllmCacheConfig>();
    send_sync::<dllm_cache::DllmCache>();
    send_sync::<NoCache>();
    send_sync::<FeatureCache>();
    send_sync::<dllm_cache::GenerationOutput>();
    send_sync::<Error>();
    send::<Box<dyn CachePolicy>>();
    send_sync::<Arc<dyn Denoiser>>();
}

/// 8 generations (mixed policies, prompts and guidance) from 4 threads on one shared model,
/// each equal to the same generation run alone.
#[test]
fn stress_shared_model_from_four_threads() {
    let device = device();
    for subject in models(&device) {
        let jobs: Vec<(usize, f64)> = (0..8)
            .map(|j| {
                (
                    j % all_typical().len(),
                    if subject.guidance && j % 3 == 0 {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        let run = |model: &dyn Denoiser, run: Runner, (p, cfg): (usize, f64)| {
            let (_, typical, i) = all_typical().swap_remove(p);
            let mut policy = make(typical, i);
            run(model, policy.as_mut(), Mode::new(cfg, 16)).expect("generation runs")
        };
        let sequential: Vec<_> = jobs
            .iter()
            .map(|&j| run(subject.model.as_ref(), subject.run, j))
            .collect();
        let chunks: Vec<Vec<(usize, (usize, f64))>> = (0..4)
            .map(|t| {
                jobs.iter()
                    .copied()
                    .enumerate()
                    .filter(|(i, _)| i % 4 == t)
                    .collect()
            })
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (model, runner) = (Arc::clone(&subject.model), subject.run);
                std::thread::spawn(move || {
                    chunk
                        .into_iter()
                        .map(|(i, job)| (i, run(model.as_ref(), runner, job)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = 0;
        for handle in handles {
            for (i, got) in handle.join().expect("thread") {
                assert_eq!(got, sequential[i], "{} job {i}", subject.name);
                seen += 1;
            }
        }
        assert_eq!(seen, 8);
    }
}
