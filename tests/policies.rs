//! The contract every cache policy must keep, run against every policy and every model
//! (modelled on the diffusers cache-hook test suite). A new policy joins with one line in
//! [`policies`].

use std::sync::Arc;

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::cache::{CachePolicy, FeatureCache, Probe, Refresh, Segment};
use dllm_cache::{
    Denoiser, DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Error, FlopCounter, Llada,
    LladaSamplerConfig, NoCache, StepContext, StepInfo,
};

type Factory = fn() -> Box<dyn CachePolicy>;

/// Every policy under contract, with the settings that exercise all of its branches.
fn policies() -> Vec<(&'static str, Factory)> {
    vec![
        ("none", || Box::new(NoCache)),
        ("dllm-default", || {
            Box::new(DllmCacheConfig::new().init().unwrap())
        }),
        ("dllm-4-2-0.25", || {
            Box::new(
                DllmCacheConfig::new()
                    .with_prompt_interval(4)
                    .with_response_interval(2)
                    .init()
                    .unwrap(),
            )
        }),
        ("dllm-8-3-0.5-no-l0", || {
            Box::new(
                DllmCacheConfig::new()
                    .with_prompt_interval(8)
                    .with_response_interval(3)
                    .with_refresh_ratio(0.5)
                    .with_refresh_first_layer(false)
                    .init()
                    .unwrap(),
            )
        }),
    ]
}

/// Runs a model's own sampler: (model, policy, guidance scale, steps = tokens) -> result.
type Runner =
    fn(&dyn Denoiser, &mut dyn CachePolicy, f64, usize) -> dllm_cache::Result<Vec<Vec<u32>>>;

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
    cfg: f64,
    n: usize,
) -> dllm_cache::Result<Vec<Vec<u32>>> {
    let sampler = LladaSamplerConfig::new()
        .with_steps(n)
        .with_gen_length(n)
        .with_block_length(n / 2)
        .with_cfg_scale(cfg)
        .init()?;
    Ok(sampler.generate(m, &prompts(2, 10), p)?.sequences)
}

fn run_dream(
    m: &dyn Denoiser,
    p: &mut dyn CachePolicy,
    _cfg: f64,
    n: usize,
) -> dllm_cache::Result<Vec<Vec<u32>>> {
    let sampler = DreamSamplerConfig::new()
        .with_steps(n)
        .with_max_new_tokens(n)
        .with_alg(DreamAlg::Entropy)
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
    (subject.run)(subject.model.as_ref(), policy, cfg, 16).expect("generation runs")
}

fn logits_of(model: &dyn Denoiser, policy: &mut dyn CachePolicy, steps: usize) -> Vec<Vec<f32>> {
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
        let info = StepInfo::new(index, 12, 20);
        let mut ctx = StepContext::new(info, policy, &mut cache, &mut flops);
        let logits = model.forward(tokens, &mut ctx).expect("forward");
        out.push(logits.try_into_vec_as::<f32>().unwrap());
    }
    out
}

#[test]
fn always_refresh_equals_no_cache_bit_for_bit() {
    let device = Device::default();
    for subject in models(&device) {
        let (name, model) = (subject.name, &subject.model);
        let mut always = DllmCacheConfig::new()
            .with_prompt_interval(1)
            .with_response_interval(1)
            .with_refresh_ratio(0.0)
            .init()
            .unwrap();
        let a = logits_of(model.as_ref(), &mut always, 6);
        let b = logits_of(model.as_ref(), &mut NoCache, 6);
        assert_eq!(
            a, b,
            "{name}: intervals 1 and ratio 0 must equal NoCache exactly"
        );
        // Same for whole generations, with and without guidance.
        for &cfg in guidance_scales(&subject) {
            assert_eq!(
                generate(&subject, &mut always, cfg),
                generate(&subject, &mut NoCache, cfg),
                "{name} cfg {cfg}"
            );
        }
    }
}

#[test]
fn caching_policies_actually_reuse() {
    // The contract above would also hold for a policy that ignored its settings; check that
    // the caching settings do change the computation (fewer FLOPs, slightly different logits).
    let device = Device::default();
    for Subject { name, model, .. } in models(&device) {
        let mut cached = DllmCacheConfig::new()
            .with_prompt_interval(4)
            .with_response_interval(2)
            .init()
            .unwrap();
        let a = logits_of(model.as_ref(), &mut cached, 6);
        let b = logits_of(model.as_ref(), &mut NoCache, 6);
        assert_eq!(
            a[0], b[0],
            "{name}: the first step is always a full refresh"
        );
        assert_ne!(a[1], b[1], "{name}: step 1 reuses features");
    }
}

#[test]
fn reset_isolates_generations() {
    let device = Device::default();
    for subject in models(&device) {
        let model_name = subject.name;
        for (name, make) in policies() {
            for &cfg in guidance_scales(&subject) {
                let mut reused = make();
                let first = generate(&subject, reused.as_mut(), cfg);
                let second = generate(&subject, reused.as_mut(), cfg);
                let fresh = generate(&subject, make().as_mut(), cfg);
                assert_eq!(first, fresh, "{model_name}/{name} cfg {cfg}");
                assert_eq!(second, fresh, "{model_name}/{name} cfg {cfg}: state leaked");
            }
        }
    }
}

#[test]
fn concurrent_generations_on_one_model_match_sequential_ones() {
    let device = Device::default();
    for subject in models(&device) {
        let sequential: Vec<_> = policies()
            .iter()
            .map(|(_, make)| generate(&subject, make().as_mut(), 0.0))
            .collect();
        let handles: Vec<_> = policies()
            .into_iter()
            .map(|(name, make)| {
                let (model, run) = (Arc::clone(&subject.model), subject.run);
                std::thread::spawn(move || (name, run(model.as_ref(), make().as_mut(), 0.0, 16)))
            })
            .collect();
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
    let base = DllmCacheConfig::new();
    let cases = [
        (base.clone().with_prompt_interval(0), "prompt_interval"),
        (base.clone().with_response_interval(0), "response_interval"),
        (base.clone().with_cfg_interval(0), "cfg_interval"),
        (base.clone().with_refresh_ratio(-0.1), "refresh_ratio"),
        (base.clone().with_refresh_ratio(1.5), "refresh_ratio"),
        (base.clone().with_refresh_ratio(f64::NAN), "refresh_ratio"),
    ];
    for (config, field) in cases {
        match config.init() {
            Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(base.with_refresh_ratio(1.0).init().is_ok());
}

/// A policy that breaks the rules, to check the block reports it instead of panicking.
#[derive(Clone)]
struct Rogue(Refresh);

impl CachePolicy for Rogue {
    fn name(&self) -> String {
        "rogue".into()
    }
    fn begin_step(&mut self, _: &StepInfo) {}
    fn plan(&mut self, _: usize, _: Segment, _: Option<Probe<'_>>) -> dllm_cache::Result<Refresh> {
        Ok(self.0.clone())
    }
    fn reset(&mut self) {}
    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(self.clone())
    }
}

#[test]
fn rule_breaking_policies_get_errors_not_panics() {
    let device = Device::default();
    for subject in models(&device) {
        let name = subject.name;
        let err = generate_err(&subject, &mut Rogue(Refresh::Reuse));
        assert!(
            matches!(err, Error::Policy { layer: 0, ref reason } if reason.contains("never cached")),
            "{name}: {err}"
        );

        // Rows out of the segment's range are caught before any gather.
        let too_many = Tensor::<2, Int>::zeros([2, 64], &device);
        let mut fill_then_rows = Sequence(vec![Refresh::All, Refresh::Rows(too_many)], 0);
        let err = generate_err(&subject, &mut fill_then_rows);
        assert!(
            matches!(err, Error::Policy { ref reason, .. } if reason.contains("row selection")),
            "{name}: {err}"
        );
    }
}

/// Plays a list of plans, one per forward.
#[derive(Clone)]
struct Sequence(Vec<Refresh>, usize);

impl CachePolicy for Sequence {
    fn name(&self) -> String {
        "sequence".into()
    }
    fn begin_step(&mut self, step: &StepInfo) {
        self.1 = step.index.min(self.0.len() - 1);
    }
    fn plan(&mut self, _: usize, _: Segment, _: Option<Probe<'_>>) -> dllm_cache::Result<Refresh> {
        Ok(self.0[self.1].clone())
    }
    fn reset(&mut self) {
        self.1 = 0;
    }
    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(self.clone())
    }
}

fn generate_err(subject: &Subject, policy: &mut dyn CachePolicy) -> Error {
    (subject.run)(subject.model.as_ref(), policy, 0.0, 8).expect_err("the policy breaks the rules")
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
    let device = Device::default();
    for subject in models(&device) {
        let jobs: Vec<(usize, f64)> = (0..8)
            .map(|j| {
                (
                    j % policies().len(),
                    if subject.guidance && j % 3 == 0 {
                        1.0
                    } else {
                        0.0
                    },
                )
            })
            .collect();
        let run = |model: &dyn Denoiser, run: Runner, (p, cfg): (usize, f64)| {
            let mut policy = (policies()[p].1)();
            run(model, policy.as_mut(), cfg, 16).expect("generation runs")
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
