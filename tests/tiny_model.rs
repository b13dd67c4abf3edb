//! The shipped tiny model (`models/tiny-llada`) answers held-out problems of its task, with and
//! without dLLM-Cache, through the text pipeline.

#[path = "../examples/shared/tiny_task.rs"]
mod tiny_task;

use std::path::Path;

use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::{CacheChoice, Pipeline};
use dllm_cache::{DllmCacheConfig, SplitMix64};

#[test]
fn shipped_model_answers_held_out_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let pipeline = Pipeline::from_dir(&dir, &Device::default()).expect("the shipped model loads");
    let defaults = pipeline.default_options().clone();
    assert_eq!(defaults.max_new_tokens, tiny_task::GEN_LENGTH);
    let mut rng = SplitMix64::new(7);
    let problems: Vec<_> = (0..12)
        .map(|_| tiny_task::next_problem(&mut rng, true))
        .collect();
    for cache in [CacheChoice::None, CacheChoice::Dllm(DllmCacheConfig::new())] {
        let options = defaults.clone().with_cache(cache.clone());
        let correct = problems
            .iter()
            .filter(|p| pipeline.complete(&p.prompt, &options).unwrap().text == p.answer)
            .count();
        // The model card reports its accuracy on 500 held-out problems; a dozen must nearly all pass.
        assert!(correct >= 11, "{cache:?}: {correct}/12 correct");
    }
}

/// A pipeline batch of prompts of different lengths gives each row what it gets alone, under
/// every policy; a row the callback stops keeps what it had and the others are unaffected.
#[test]
fn pipeline_batches_equal_solo_runs_and_rows_can_be_stopped() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let pipeline = Pipeline::from_dir(&dir, &Device::default()).expect("the shipped model loads");
    let mut rng = SplitMix64::new(11);
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            let p = tiny_task::next_problem(&mut rng, true).prompt;
            // Different lengths: drop the first worked examples of some prompts.
            let cut = p.find(';').map_or(0, |c| c + 1) * i;
            pipeline
                .tokenizer()
                .encode(&p[cut.min(p.len() / 2)..], true)
                .unwrap()
        })
        .collect();
    assert!(prompts[0].len() != prompts[2].len());
    let defaults = pipeline.default_options().clone();
    for cache in [
        CacheChoice::None,
        CacheChoice::Dllm(DllmCacheConfig::new()),
        CacheChoice::Prefix,
        CacheChoice::Dual,
    ] {
        let options = defaults.clone().with_cache(cache.clone());
        let batch = pipeline
            .generate_batch_ids(&prompts, &options, &mut |_, _| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        for (r, prompt) in prompts.iter().enumerate() {
            let alone = pipeline
                .generate_ids(prompt, &options, &mut |_| {
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(batch[r].tokens, alone.tokens, "{cache:?} row {r}");
            assert_eq!(batch[r].stats.batch_size, 3);
        }
        // Stop row 1 at its first step: it keeps at most what that step committed.
        let stopped = pipeline
            .generate_batch_ids(&prompts, &options, &mut |r, _| {
                if r == 1 {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(stopped[0].tokens, batch[0].tokens, "{cache:?}");
        assert_eq!(stopped[2].tokens, batch[2].tokens, "{cache:?}");
        assert!(
            stopped[1].tokens.len() < batch[1].tokens.len().max(1),
            "{cache:?}"
        );
    }
}
