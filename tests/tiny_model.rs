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
