//! FLOPs accounting: the estimator, computed from shapes and settings alone, equals what the
//! forward passes record, for both architectures, several policies and sampler settings; and
//! it reproduces the paper's figures.

use dllm_cache::burn::tensor::Device;
use dllm_cache::estimate::{self, HeadRows, ModelShape, Sampling};
use dllm_cache::{
    CachePolicy, DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Llada, LladaSamplerConfig,
    NoCache,
};

fn fixture(arch: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(arch)
}

fn policies() -> Vec<Option<DllmCacheConfig>> {
    vec![
        None,
        Some(DllmCacheConfig::new()),
        Some(
            DllmCacheConfig::new()
                .with_prompt_interval(4)
                .with_response_interval(2),
        ),
        Some(
            DllmCacheConfig::new()
                .with_prompt_interval(8)
                .with_response_interval(3)
                .with_refresh_ratio(0.5)
                .with_refresh_first_layer(false),
        ),
        Some(
            DllmCacheConfig::new()
                .with_prompt_interval(5)
                .with_response_interval(3)
                .with_refresh_ratio(0.0),
        ),
        Some(
            DllmCacheConfig::new()
                .with_response_interval(2)
                .with_refresh_ratio(0.1)
                .with_cfg_interval(3),
        ),
    ]
}

fn make(policy: &Option<DllmCacheConfig>) -> Box<dyn CachePolicy> {
    match policy {
        None => Box::new(NoCache),
        Some(c) => Box::new(c.init().unwrap()),
    }
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
    for sampler in &samplers {
        for policy in policies() {
            for (batch, len) in [(1, 12), (2, 7)] {
                let out = sampler
                    .init()
                    .unwrap()
                    .generate(&model, &prompts(batch, len), make(&policy).as_mut())
                    .unwrap();
                let est = estimate::flops(
                    &shape,
                    &Sampling::Llada(sampler.clone()),
                    policy.as_ref(),
                    len,
                    batch,
                    HeadRows::AsRun,
                )
                .unwrap();
                assert_eq!(est, out.stats.flops, "{sampler:?} {policy:?} batch {batch}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn estimate_equals_counted_for_dream() {
    let model = Dream::from_dir(fixture("dream"), &Device::default()).unwrap();
    let shape = ModelShape::from(model.config());
    for alg in [DreamAlg::Entropy, DreamAlg::TopkMargin] {
        for (steps, tokens) in [(32, 32), (12, 24)] {
            let sampler = DreamSamplerConfig::new()
                .with_steps(steps)
                .with_max_new_tokens(tokens)
                .with_alg(alg);
            for policy in policies() {
                let out = sampler
                    .init()
                    .unwrap()
                    .generate(&model, &prompts(2, 10), make(&policy).as_mut())
                    .unwrap();
                let est = estimate::flops(
                    &shape,
                    &Sampling::Dream(sampler.clone()),
                    policy.as_ref(),
                    10,
                    2,
                    HeadRows::AsRun,
                )
                .unwrap();
                assert_eq!(est, out.stats.flops, "{sampler:?} {policy:?}");
            }
        }
    }
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
    let f = estimate::flops(
        &ModelShape::llada_8b(),
        &Sampling::Llada(sampler),
        policy,
        prompt,
        1,
        HeadRows::All,
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
