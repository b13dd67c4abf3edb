//! Sampler behaviour beyond the golden cases: validation, streaming, early stop, seeded
//! sampling and statistics.

use std::ops::ControlFlow;

use dllm_cache::burn::tensor::Device;
use dllm_cache::{
    DllmCacheConfig, Dream, DreamAlg, DreamSamplerConfig, Error, Llada, LladaSamplerConfig,
    NoCache, Remasking,
};

fn model() -> Llada {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/llada");
    Llada::from_dir(dir, &Device::default()).expect("fixture")
}

fn prompt() -> Vec<Vec<u32>> {
    vec![(0..12).map(|i| (i * 29 % 290) as u32).collect()]
}

fn sampler(steps: usize, gen_len: usize, block: usize) -> LladaSamplerConfig {
    LladaSamplerConfig::new()
        .with_steps(steps)
        .with_gen_length(gen_len)
        .with_block_length(block)
}

#[test]
fn invalid_sampler_settings_are_typed_errors() {
    let cases = [
        (sampler(16, 30, 8), "block_length"),
        (sampler(6, 32, 8), "steps"),
        (sampler(0, 32, 8), "steps"),
        (sampler(8, 0, 8), "gen_length"),
        (sampler(8, 8, 8).with_temperature(-1.0), "temperature"),
        (sampler(8, 8, 8).with_cfg_scale(f64::INFINITY), "cfg_scale"),
        (
            sampler(8, 8, 8).with_confidence_eos_eot_inf(true),
            "eot_token_id",
        ),
    ];
    for (config, field) in cases {
        match config.init() {
            Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn invalid_prompts_are_typed_errors_and_the_model_keeps_working() {
    let model = model();
    let s = sampler(8, 8, 8).init().unwrap();
    let err = s.generate(&model, &[], &mut NoCache).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "prompts",
                ..
            }
        ),
        "{err}"
    );
    let err = s.generate(&model, &[vec![]], &mut NoCache).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "prompts",
                ..
            }
        ),
        "{err}"
    );
    let err = s
        .generate(&model, &[vec![1, 320]], &mut NoCache)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                id: 320,
                row: 0,
                position: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = s
        .generate(&model, &[vec![1, 317]], &mut NoCache)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "prompts", ref reason } if reason.contains("mask")),
        "{err}"
    );
    let long = sampler(4096, 4096, 4096).init().unwrap();
    let err = long.generate(&model, &prompt(), &mut NoCache).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceTooLong {
                len: 4108,
                max: 4096
            }
        ),
        "{err}"
    );
    assert!(s.generate(&model, &prompt(), &mut NoCache).is_ok());
}

#[test]
fn streaming_reports_every_commit_and_can_stop() {
    let model = model();
    let s = sampler(16, 16, 8).init().unwrap();
    let full = s.generate(&model, &prompt(), &mut NoCache).unwrap();
    let mut seen = vec![None; 16];
    let mut steps = 0;
    let out = s
        .generate_with(&model, &prompt(), &mut NoCache, &mut |event| {
            assert_eq!(event.step, steps);
            assert_eq!(event.total_steps, 16);
            assert_eq!(event.block, steps / 8);
            for c in &event.committed[0] {
                assert!(
                    seen[c.position - 12].replace(c.token).is_none(),
                    "position committed twice"
                );
                assert_eq!(event.sequences[0][c.position], c.token);
            }
            steps += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out, {
        let mut expected = full.clone();
        expected.stats = out.stats.clone();
        expected
    });
    let streamed: Vec<u32> = seen
        .into_iter()
        .map(|t| t.expect("every position committed"))
        .collect();
    assert_eq!(streamed, full.response(0));

    // Stop after 5 steps: 5 tokens committed, the rest still masks.
    let stopped = s
        .generate_with(&model, &prompt(), &mut NoCache, &mut |event| {
            if event.step == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert!(stopped.stats.stopped_early);
    assert_eq!(stopped.stats.steps, 5);
    assert_eq!(
        stopped.response(0).iter().filter(|&&t| t == 317).count(),
        11
    );
}

#[test]
fn temperature_sampling_is_reproducible_from_the_seed() {
    let model = model();
    let run = |seed: u64, remasking: Remasking| {
        sampler(8, 16, 16)
            .with_temperature(0.8)
            .with_remasking(remasking)
            .with_seed(seed)
            .init()
            .unwrap()
            .generate(&model, &prompt(), &mut NoCache)
            .unwrap()
            .sequences
    };
    for remasking in [Remasking::LowConfidence, Remasking::Random] {
        assert_eq!(run(1, remasking), run(1, remasking));
        assert_ne!(
            run(1, remasking),
            run(2, remasking),
            "{remasking:?}: seeds must matter"
        );
    }
}

#[test]
fn eos_can_be_forbidden() {
    let model = model();
    let out = sampler(32, 32, 8)
        .with_logits_eos_inf(true)
        .init()
        .unwrap()
        .generate(&model, &prompt(), &mut NoCache)
        .unwrap();
    assert!(!out.response(0).contains(&297));
}

#[test]
fn statistics_show_the_cache_at_work() {
    let model = model();
    let s = sampler(32, 32, 8).init().unwrap();
    let plain = s.generate(&model, &prompt(), &mut NoCache).unwrap().stats;
    let mut policy = DllmCacheConfig::new()
        .with_prompt_interval(8)
        .with_response_interval(4)
        .init()
        .unwrap();
    let cached = s.generate(&model, &prompt(), &mut policy).unwrap().stats;
    assert_eq!(plain.steps, 32);
    assert_eq!(plain.forwards, 32);
    assert_eq!(plain.peak_cache_bytes, 0, "NoCache stores nothing");
    assert!(cached.peak_cache_bytes > 0);
    // 3 layers x 2 segments x (k, v: 64 wide; attn, ffn: 64 wide) x 44 rows x 4 bytes.
    assert_eq!(cached.peak_cache_bytes, 3 * 4 * 64 * 44 * 4);
    assert!(cached.flops.paper() < plain.flops.paper());
    assert!(cached.flops.total() < plain.flops.total());
    assert_eq!(
        cached.flops.lm_head, plain.flops.lm_head,
        "the head runs on the same rows"
    );
}

fn dream() -> Dream {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream");
    Dream::from_dir(dir, &Device::default()).expect("fixture")
}

fn dream_sampler(alg: DreamAlg) -> DreamSamplerConfig {
    DreamSamplerConfig::new()
        .with_steps(16)
        .with_max_new_tokens(16)
        .with_alg(alg)
}

#[test]
fn invalid_dream_settings_are_typed_errors() {
    let base = dream_sampler(DreamAlg::Entropy);
    let cases = [
        (base.clone().with_steps(0), "steps"),
        (base.clone().with_max_new_tokens(0), "max_new_tokens"),
        (base.clone().with_eps(0.0), "eps"),
        (base.clone().with_eps(1.0), "eps"),
        (base.clone().with_temperature(f64::NAN), "temperature"),
        (base.clone().with_top_p(Some(0.0)), "top_p"),
        (base.clone().with_top_p(Some(1.5)), "top_p"),
        (base.clone().with_top_k(Some(0)), "top_k"),
        (base.clone().with_alg_temp(Some(-1.0)), "alg_temp"),
    ];
    for (config, field) in cases {
        match config.init() {
            Err(Error::InvalidArgument { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
    }
    let err = "greedy".parse::<DreamAlg>().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { name: "alg", .. }));
}

#[test]
fn dream_sampling_options_run_and_are_seeded() {
    let model = dream();
    let prompt = vec![(0..8).map(|i| i * 17 % 290).collect::<Vec<u32>>()];
    for alg in [
        DreamAlg::Origin,
        DreamAlg::MaskgitPlus,
        DreamAlg::TopkMargin,
        DreamAlg::Entropy,
    ] {
        let run = |seed: u64| {
            dream_sampler(alg)
                .with_temperature(0.7)
                .with_top_p(Some(0.9))
                .with_top_k(Some(50))
                .with_alg_temp(Some(0.5))
                .with_seed(seed)
                .init()
                .unwrap()
                .generate(&model, &prompt, &mut NoCache)
                .unwrap()
        };
        let a = run(3);
        assert_eq!(a.sequences, run(3).sequences, "{alg:?}");
        assert_ne!(a.sequences, run(4).sequences, "{alg:?}: seeds must matter");
        assert!(
            !a.response(0).contains(&311),
            "{alg:?}: the last step unmasks everything"
        );
    }
}
