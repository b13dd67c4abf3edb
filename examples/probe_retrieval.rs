//! Exact match of a model on the retrieval tasks of `examples/shared/hard_tasks.rs` at every
//! prompt size from one fact to the evaluated 26: how far a training stage's lookup reaches,
//! which the evaluation at the full size alone does not show.
//!
//! ```text
//! cargo run --release --example probe_retrieval -- --model /tmp/train/pk-log --task passkey
//! ```

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/hard_tasks.rs"]
mod hard_tasks;
#[path = "shared/tiny_task.rs"]
mod tiny_task;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::Device;
use dllm_cache::{Llada, LladaSamplerConfig, NoCache, SplitMix64};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// One-letter keys, a letter queried.
    Retrieval,
    /// One fact keyed `+` among letter-keyed distractors.
    Passkey,
}

#[derive(Parser, Debug)]
#[command(about = "Exact match on retrieval prompts of every size")]
struct Args {
    /// Model folder (a `train_tiny --tasks retrieval|hard-passkey` output or checkpoint).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = Which::Passkey)]
    task: Which,
    /// Held-out problems per prompt size.
    #[arg(long, default_value_t = 32)]
    problems: usize,
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let model = Llada::from_dir(&a.model, &Device::flex())?;
    let sampler = LladaSamplerConfig::new()
        .with_steps(hard_tasks::GEN_LENGTH)
        .with_gen_length(hard_tasks::GEN_LENGTH)
        .with_block_length(hard_tasks::BLOCK_LENGTH)
        .init()?;
    println!("| facts | prompt tokens | exact match | digits right |\n|---:|---:|---:|---:|");
    for facts in [1, 2, 3, 4, 6, 8, 12, 16, 20, 26] {
        let mut rng = SplitMix64::new(0x5052 + facts as u64);
        let problems: Vec<_> = (0..a.problems)
            .map(|_| {
                loop {
                    let p = match a.task {
                        Which::Retrieval => hard_tasks::retrieval_problem(&mut rng, facts),
                        Which::Passkey => hard_tasks::passkey_problem(&mut rng, facts),
                    };
                    if hard_tasks::held_out(&p.prompt) {
                        break p;
                    }
                }
            })
            .collect();
        let prompts: Vec<Vec<u32>> = problems
            .iter()
            .map(|p| tiny_task::encode_prompt(&p.prompt))
            .collect();
        let (mut exact, mut digits, mut total) = (0, 0, 0);
        for (chunk, ids) in problems.chunks(16).zip(prompts.chunks(16)) {
            let out = sampler.generate(&model, ids, &mut NoCache)?;
            for (r, p) in chunk.iter().enumerate() {
                let answer = tiny_task::decode_answer(out.response(r));
                exact += usize::from(answer == p.answer);
                digits += answer
                    .chars()
                    .zip(p.answer.chars())
                    .filter(|(x, y)| x == y)
                    .count();
                total += p.answer.len();
            }
        }
        println!(
            "| {facts} | {} | {}/{} | {:.0}% |",
            prompts[0].len(),
            exact,
            problems.len(),
            100.0 * digits as f64 / total.max(1) as f64
        );
    }
    Ok(())
}
