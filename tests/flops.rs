//! FLOPs accounting: the estimator, computed from shapes and settings alone, equals what the
//! forward passes record, for both architectures, several policies and sampler settings; and
//! it reproduces the paper's figures.

use dllm_cache::burn::tensor::Device;
use dllm_cache::cache::{DualCache, PrefixCache};
use dllm_cache::estimate::{self, HeadRows, ModelShape, Sampling};
use dllm_cache::sampler::CommitRule;
use dllm_cache::{
    CachePolicy, DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Llada, LladaSamplerConfig,
    NoCache,
};

fn fixture(arch: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(arch)
}

/// Builds a policy.
type Make = fn() -> Box<dyn CachePolicy>;

/// Every policy, with settings that exercise its branches (guidance intervals included).
fn policies() -> Vec<(&'static str, Make)> {
    fn dllm(c: DllmCacheConfig) -> Box<dyn CachePolicy> {
        Box::new(c.init().unwrap())
    }
    vec![
        ("none", || Box::new(NoCache)),
        ("dllm", || dllm(DllmCacheConfig::new())),
        ("dllm-4-2", || {
            dllm(
                DllmCacheConfig::new()
                    .with_prompt_interval(4)
                    .with_response_interval(2),
            )
        }),
        ("dllm-8-3-0.5-no-l0", || {
            dllm(
                DllmCacheConfig::new()
                    .with_prompt_interval(8)
                    .with_response_interval(3)
                    .with_refresh_ratio(0.5)
                    .with_refresh_first_layer(false),
            )
        }),
        ("dllm-5-3-0", || {
            dllm(
                DllmCacheConfig::new()
                    .with_prompt_interval(5)
                    .with_response_interval(3)
                    .with_refresh_ratio(0.0),
            )
        }),
        ("dllm-cfg3", || {
            dllm(
                DllmCacheConfig::new()
                    .with_response_interval(2)
                    .with_refresh_ratio(0.1)
                    .with_cfg_interval(3),
            )
        }),
        ("prefix", || Box::new(PrefixCache::new())),
        ("dual", || Box::new(DualCache::new())),
    ]
}

fn rules() -> [CommitRule; 3] {
    [
        CommitRule::Schedule,
        CommitRule::Threshold(0.3),
        CommitRule::Factor(1.0),
    ]
}

fn prompts(batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| ((i * 13 + b * 5 + 1) % 280) as u32)
                .collect()
        })
        .collect()
}

/// The estimate of a run (from its recorded step counts) against what it counted.
fn check(
    shape: &ModelShape,
    sampling: Sampling,
    make: Make,
    out: &dllm_cache::GenerationOutput,
    len: usize,
    batch: usize,
    what: &str,
) {
    let est = estimate::flops(
        shape,
        &sampling,
        make().as_mut(),
        len,
        batch,
        HeadRows::AsRun,
        Some(&out.stats.block_steps),
    )
    .unwrap();
    assert_eq!(est, out.stats.flops, "{what}");
}

#[test]
fn estimate_equals_counted_for_llada() {
    let model = Llada::from_dir(fixture("llada"), &Device::default()).unwrap();
    let shape = ModelShape::from(model.config());
    let samplers = [
        LladaSamplerConfig::new()
            .with_steps(32)
            .with_gen_length(32)
            .with_block_length(8),
        LladaSamplerConfig::new()
            .with_steps(16)
            .with_gen_length(32)
            .with_block_length(32),
        LladaSamplerConfig::new()
            .with_steps(24)
            .with_gen_length(24)
            .with_block_length(8)
            .with_cfg_scale(1.5),
    ];
    let mut checked = 0;
    for base in &samplers {
        for rule in rules() {
            let sampler = base.clone().with_commit(rule);
            for (name, make) in policies() {
                for (batch, len) in [(1, 12), (2, 7)] {
                    let out = sampler
                        .init()
                        .unwrap()
                        .generate(&model, &prompts(batch, len), make().as_mut())
                        .unwrap();
                    let what = format!("{sampler:?} {name} batch {batch}");
                    check(
                        &shape,
                        Sampling::Llada(sampler.clone()),
                        make,
                        &out,
                        len,
                        batch,
                        &what,
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 3 * 8 * 2);
    // The fixed schedule needs no recorded steps.
    let sampler = samplers[0].clone();
    let out = sampler
        .init()
        .unwrap()
        .generate(&model, &prompts(1, 12), &mut PrefixCache::new())
        .unwrap();
    let est = estimate::flops(
        &shape,
        &Sampling::Llada(sampler),
        &mut PrefixCache::new(),
        12,
        1,
        HeadRows::AsRun,
        None,
    )
    .unwrap();
    assert_eq!(est, out.stats.flops);
}

#[test]
fn estimate_equals_counted_for_dream() {
    let model = Dream::from_dir(fixture("dream"), &Device::default()).unwrap();
    let shape = ModelShape::from(model.config());
    let mut checked = 0;
    // Dream's own sampler, Fast-dLLM's block sampler, and its no-cache parallel sampler.
    let samplers = [
        (32, 32, DreamAlg::Entropy, None, CommitRule::Schedule),
        (12, 24, DreamAlg::TopkMargin, None, CommitRule::Schedule),
        (16, 32, DreamAlg::Entropy, Some(8), CommitRule::Schedule),
        (
            4,
            32,
            DreamAlg::Entropy,
            Some(8),
            CommitRule::Threshold(0.3),
        ),
        (4, 32, DreamAlg::Entropy, Some(8), CommitRule::Factor(1.0)),
        (8, 32, DreamAlg::Entropy, None, CommitRule::Threshold(0.3)),
    ];
    for (steps, tokens, alg, block, rule) in samplers {
        let sampler = DreamSamplerConfig::new()
            .with_steps(steps)
            .with_max_new_tokens(tokens)
            .with_alg(alg)
            .with_block_length(block)
            .with_commit(rule);
        for (name, make) in policies() {
            // The parallel and block samplers of the official code run batch 1.
            let batch = if rule.is_adaptive() || block.is_some() {
                1
            } else {
                2
            };
            let out = sampler
                .init()
                .unwrap()
                .generate(&model, &prompts(batch, 10), make().as_mut())
                .unwrap();
            let what = format!("{sampler:?} {name}");
            check(
                &shape,
                Sampling::Dream(sampler.clone()),
                make,
                &out,
                10,
                batch,
                &what,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 8);
}

#[test]
fn adaptive_rules_need_the_recorded_steps() {
    let sampler = LladaSamplerConfig::new().with_commit(CommitRule::Threshold(0.9));
    let err = estimate::flops(
        &ModelShape::llada_8b(),
        &Sampling::Llada(sampler),
        &mut NoCache,
        100,
        1,
        HeadRows::AsRun,
        None,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        dllm_cache::Error::InvalidArgument {
            name: "block_steps",
            ..
        }
    ));
}

/// TFLOPs per generated token in the paper's convention: linear layers and the LM head over
/// every position, no attention products.
fn paper_tflops(
    prompt: usize,
    gen_len: usize,
    steps: usize,
    block: usize,
    policy: Option<&DllmCacheConfig>,
) -> f64 {
    let sampler = LladaSamplerConfig::new()
        .with_steps(steps)
        .with_gen_length(gen_len)
        .with_block_length(block);
    let mut policy: Box<dyn CachePolicy> = match policy {
        Some(c) => Box::new(c.init().unwrap()),
        None => Box::new(NoCache),
    };
    let f = estimate::flops(
        &ModelShape::llada_8b(),
        &Sampling::Llada(sampler),
        policy.as_mut(),
        prompt,
        1,
        HeadRows::All,
        None,
    )
    .unwrap();
    f.paper() as f64 / gen_len as f64 / 1e12
}

#[test]
fn estimate_reproduces_the_paper_rows() {
    let within = |got: f64, want: f64| (got / want - 1.0).abs() < 0.005;
    // LLaDA-8B Base GSM8K: K_p 25, K_r 5, rho 0.25, layer 0 not forced.
    let gsm8k = DllmCacheConfig::new()
        .with_prompt_interval(25)
        .with_response_interval(5)
        .with_refresh_first_layer(false);
    let base = paper_tflops(819, 256, 256, 256, None);
    let cached = paper_tflops(819, 256, 256, 256, Some(&gsm8k));
    assert!(
        within(base, 16.12) && within(cached, 3.21),
        "{base} -> {cached}"
    );
    // LLaDA-8B Instruct GPQA: K_p 50, K_r 6.
    let gpqa = DllmCacheConfig::new()
        .with_prompt_interval(50)
        .with_response_interval(6)
        .with_refresh_first_layer(false);
    let base = paper_tflops(1344, 128, 128, 64, None);
    let cached = paper_tflops(1344, 128, 128, 64, Some(&gpqa));
    assert!(
        within(base, 22.07) && within(cached, 2.73),
        "{base} -> {cached}"
    );
}
