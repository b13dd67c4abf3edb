//! Criterion benchmarks: one denoising step and one whole generation per cache policy and
//! prompt length, on a random LLaDA-shaped model sized for a small CPU (d_model 512, 8 layers,
//! 8 heads, SwiGLU 1376, vocabulary 32000: 58M parameters).
//!
//! ```text
//! cargo bench --bench generation
//! cargo bench --bench generation -- step/flex/dllm-100-7-0.25   # a filter
//! ```
//!
//! Every benchmark reports its FLOPs (full total, attention included) as criterion throughput,
//! so `thrpt` reads as FLOP/s ("elem/s"). Names say `<kind>/<backend>/<policy>/prompt-<len>`.
//! A cached "step" is a typical step between refreshes (dLLM-Cache: prompt reused, response
//! V-verified; the block caches: inside the first block of 16), measured from a cache filled by
//! a full first step.

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::{
    BlockInfo, CachePolicy, Denoiser, DllmCacheConfig, DualCache, FeatureCache, FlopCounter, Llada,
    LladaConfig, LladaSamplerConfig, NoCache, PrefixCache, StepContext, StepInfo,
};

const PROMPTS: [usize; 3] = [64, 256, 1024];
const GEN: usize = 32;
/// The block of the step benchmark and of whole generations.
const BLOCK: usize = 16;

fn backend() -> &'static str {
    if cfg!(feature = "x86-v4") {
        "flex+x86-v4"
    } else {
        "flex"
    }
}

fn model(device: &Device) -> Llada {
    Llada::random(LladaConfig::with_sizes(512, 8, 8, 1376, 32_000), 0, device).expect("valid sizes")
}

type MakePolicy = fn() -> Box<dyn CachePolicy>;

fn policies() -> [(&'static str, MakePolicy); 5] {
    [
        ("none", || Box::new(NoCache)),
        ("dllm-100-7-0.25", || {
            Box::new(DllmCacheConfig::new().init().unwrap())
        }),
        ("dllm-25-5-0.25", || {
            Box::new(
                DllmCacheConfig::new()
                    .with_prompt_interval(25)
                    .with_response_interval(5)
                    .init()
                    .unwrap(),
            )
        }),
        ("prefix", || Box::new(PrefixCache::new())),
        ("dual", || Box::new(DualCache::new())),
    ]
}

fn prompt(len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7919 + 17) % 31_000).collect()
}

/// One forward at `index` on `cache`; returns its FLOPs.
fn step(
    model: &Llada,
    policy: &mut dyn CachePolicy,
    cache: &mut FeatureCache,
    tokens: &Tensor<2, Int>,
    p: usize,
    index: usize,
) -> FlopCounter {
    let mut flops = FlopCounter::new();
    // Inside the first block of `BLOCK` rows: step 0 refreshes, later steps reuse.
    let info = StepInfo::new(index, p, GEN).with_block(BlockInfo::new(0, p, p + BLOCK, index));
    let mut ctx = StepContext::new(info, policy, cache, &mut flops).with_logit_rows(p..p + GEN);
    model.forward(tokens.clone(), &mut ctx).expect("forward");
    flops
}

fn bench_step(c: &mut Criterion) {
    let device = Device::flex();
    let model = model(&device);
    let mut group = c.benchmark_group(format!("step/{}", backend()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for p in PROMPTS {
        let mut ids: Vec<i64> = prompt(p).into_iter().map(i64::from).collect();
        ids.extend(std::iter::repeat_n(
            i64::from(model.config().mask_token_id),
            GEN,
        ));
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, p + GEN]), &device);
        for (name, make) in policies() {
            let mut policy = make();
            let mut filled = FeatureCache::new();
            step(&model, policy.as_mut(), &mut filled, &tokens, p, 0);
            let index = if policy.stores_features() { 1 } else { 0 };
            let flops = step(
                &model,
                policy.as_mut(),
                &mut filled.clone(),
                &tokens,
                p,
                index,
            );
            group.throughput(Throughput::Elements(flops.total()));
            group.bench_with_input(
                BenchmarkId::new(name, format!("prompt-{p}")),
                &p,
                |b, &p| {
                    b.iter(|| {
                        step(
                            &model,
                            policy.as_mut(),
                            &mut filled.clone(),
                            &tokens,
                            p,
                            index,
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_generation(c: &mut Criterion) {
    let device = Device::flex();
    let model = model(&device);
    let sampler = LladaSamplerConfig::new()
        .with_steps(GEN)
        .with_gen_length(GEN)
        .with_block_length(BLOCK)
        .init()
        .unwrap();
    let mut group = c.benchmark_group(format!("generate/{}", backend()));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1));
    for p in PROMPTS {
        let prompts = vec![prompt(p)];
        for (name, make) in policies() {
            let mut policy = make();
            let flops = sampler
                .generate(&model, &prompts, policy.as_mut())
                .unwrap()
                .stats
                .flops;
            group.throughput(Throughput::Elements(flops.total()));
            group.bench_with_input(BenchmarkId::new(name, format!("prompt-{p}")), &p, |b, _| {
                b.iter(|| sampler.generate(&model, &prompts, policy.as_mut()).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_step, bench_generation);
criterion_main!(benches);
