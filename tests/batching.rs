//! Batches of prompts with different lengths: at temperature 0 every row of a batch produces
//! exactly the tokens it produces alone, for both architectures, with and without the cache.
//! A property test over random prompt lengths, contents and cache settings.

use dllm_cache::burn::tensor::Device;
use dllm_cache::{
    CachePolicy, Denoiser, DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Llada,
    LladaSamplerConfig, NoCache, SplitMix64,
};

fn fixture(arch: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(arch)
}

/// Runs a model's sampler on a batch; returns each row's response.
type Run = fn(&dyn Denoiser, &[Vec<u32>], &mut dyn CachePolicy) -> Vec<Vec<u32>>;

fn run_llada(
    m: &dyn Denoiser,
    prompts: &[Vec<u32>],
    policy: &mut dyn CachePolicy,
) -> Vec<Vec<u32>> {
    let out = LladaSamplerConfig::new()
        .with_steps(16)
        .with_gen_length(16)
        .with_block_length(8)
        .init()
        .unwrap()
        .generate(m, prompts, policy)
        .unwrap();
    (0..prompts.len())
        .map(|r| out.response(r).to_vec())
        .collect()
}

fn run_dream(
    m: &dyn Denoiser,
    prompts: &[Vec<u32>],
    policy: &mut dyn CachePolicy,
) -> Vec<Vec<u32>> {
    let out = DreamSamplerConfig::new()
        .with_steps(16)
        .with_max_new_tokens(16)
        .with_alg(DreamAlg::Entropy)
        .init()
        .unwrap()
        .generate(m, prompts, policy)
        .unwrap();
    (0..prompts.len())
        .map(|r| out.response(r).to_vec())
        .collect()
}

fn random_policy(rng: &mut SplitMix64) -> Box<dyn CachePolicy> {
    if rng.next_u64().is_multiple_of(3) {
        return Box::new(NoCache);
    }
    let kp = 1 + (rng.next_u64() % 8) as usize;
    let kr = 1 + (rng.next_u64() % 4) as usize;
    let rho = [0.0, 0.25, 0.5][(rng.next_u64() % 3) as usize];
    Box::new(
        DllmCacheConfig::new()
            .with_prompt_interval(kp)
            .with_response_interval(kr)
            .with_refresh_ratio(rho)
            .with_refresh_first_layer(rng.next_u64().is_multiple_of(2))
            .init()
            .unwrap(),
    )
}

#[test]
fn every_row_of_a_ragged_batch_matches_its_solo_run() {
    let device = Device::default();
    let models: Vec<(&str, Box<dyn Denoiser>, Run)> = vec![
        (
            "llada",
            Box::new(Llada::from_dir(fixture("llada"), &device).unwrap()),
            run_llada,
        ),
        (
            "dream",
            Box::new(Dream::from_dir(fixture("dream"), &device).unwrap()),
            run_dream,
        ),
    ];
    for (name, model, run) in &models {
        let special = model.special_tokens();
        for case in 0..6u64 {
            let mut rng = SplitMix64::new(case * 7919 + 1);
            let prompts: Vec<Vec<u32>> = (0..4)
                .map(|_| {
                    let len = 3 + (rng.next_u64() % 14) as usize;
                    (0..len)
                        .map(|_| {
                            loop {
                                let t = (rng.next_u64() % 290) as u32;
                                if t != special.mask && t != special.pad {
                                    break t;
                                }
                            }
                        })
                        .collect()
                })
                .collect();
            let policy_seed = rng.next_u64();
            let batch = run(
                model.as_ref(),
                &prompts,
                random_policy(&mut SplitMix64::new(policy_seed)).as_mut(),
            );
            for (r, prompt) in prompts.iter().enumerate() {
                let solo = run(
                    model.as_ref(),
                    std::slice::from_ref(prompt),
                    random_policy(&mut SplitMix64::new(policy_seed)).as_mut(),
                );
                let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
                assert_eq!(
                    batch[r], solo[0],
                    "{name} case {case} row {r} (prompt lengths {lens:?})"
                );
            }
        }
    }
}
