//! The shipped `models/tiny-llada-hard` answers held-out problems of every task (mul, fewshot,
//! passkey), through the sampler (as `eval_tiny` runs it) and through the text pipeline.

#[path = "../examples/shared/hard_tasks.rs"]
mod hard_tasks;
#[path = "../examples/shared/tiny_task.rs"]
mod tiny_task;

use std::path::{Path, PathBuf};

use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::{CacheChoice, Pipeline};
use dllm_cache::sampler::CommitRule;
use dllm_cache::{Llada, LladaSamplerConfig, SplitMix64};
use hard_tasks::Task;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada-hard")
}

/// Eight held-out problems per task, of a seed the evaluation does not use.
fn problems(task: Task) -> Vec<hard_tasks::Problem> {
    let mut rng = SplitMix64::new(91 + task as u64);
    (0..8)
        .map(|_| hard_tasks::next_eval_problem(&mut rng, task))
        .collect()
}

#[test]
fn hard_model_answers_every_task_uncached_and_accelerated() {
    let model = Llada::from_dir(dir(), &Device::default()).expect("the shipped model loads");
    for (cache, decode) in [
        (CacheChoice::None, CommitRule::Schedule),
        (CacheChoice::Dual, CommitRule::Threshold(0.9)),
    ] {
        let sampler = LladaSamplerConfig::new()
            .with_steps(hard_tasks::GEN_LENGTH)
            .with_gen_length(hard_tasks::GEN_LENGTH)
            .with_block_length(hard_tasks::BLOCK_LENGTH)
            .with_commit(decode)
            .init()
            .unwrap();
        for task in Task::ALL {
            let problems = problems(task);
            let prompts: Vec<Vec<u32>> = problems
                .iter()
                .map(|p| tiny_task::encode_prompt(&p.prompt))
                .collect();
            match task {
                Task::Mul => assert!(problems[0].answer.len() >= 16, "a long answer"),
                _ => assert!(prompts[0].len() >= 256, "a long-context prompt"),
            }
            let out = sampler
                .generate(&model, &prompts, cache.policy().unwrap().as_mut())
                .unwrap();
            let correct = problems
                .iter()
                .enumerate()
                .filter(|(r, p)| tiny_task::decode_answer(out.response(*r)) == p.answer)
                .count();
            // The model card reports >= 90% on 300 held-out problems per task.
            assert!(
                correct >= 7,
                "{cache:?} {decode}: {} {correct}/8 correct",
                task.name()
            );
        }
    }
}

#[test]
fn hard_model_answers_through_the_text_pipeline() {
    let pipeline = Pipeline::from_dir(dir(), &Device::default()).expect("the shipped model loads");
    let options = pipeline
        .default_options()
        .clone()
        .with_block_length(Some(hard_tasks::BLOCK_LENGTH))
        .with_cache(CacheChoice::None);
    assert_eq!(options.max_new_tokens, hard_tasks::GEN_LENGTH);
    for task in Task::ALL {
        let p = &problems(task)[0];
        let text = pipeline.complete(&p.prompt, &options).unwrap().text;
        assert_eq!(text, p.answer, "{}", task.name());
    }
}
