//! Exact match of a model on the retrieval tasks of `examples/shared/hard_tasks.rs` at every
//! prompt size from one fact to the evaluated 26: how far a training stage's lookup reaches,
//! which the evaluation at the full size alone does not show. `--by-place` instead splits the
//! full-size misses by where the queried fact sits and by kind (the wrong fact copied, or the
//! right one garbled).
//!
//! ```text
//! cargo run --release --example probe_retrieval -- --model /tmp/train/pk-log --task passkey
//! cargo run --release --example probe_retrieval -- --model /tmp/train/pk-log --by-place --problems 160
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
    /// Instead of every size: at the full size, exact match by the place of the queried fact
    /// (in five groups of facts, about fifths of the prompt), and whether each wrong answer
    /// is another fact's value.
    #[arg(long)]
    by_place: bool,
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
    if a.by_place {
        return by_place(&a, &model, &sampler);
    }
    println!("| facts | prompt tokens | exact match | digits right |\n|---:|---:|---:|---:|");
    for facts in [1, 2, 3, 4, 6, 8, 12, 16, 20, 26] {
        let mut rng = SplitMix64::new(0x5052 + facts as u64);
        let problems = held_out_problems(a.task, facts, a.problems, &mut rng);
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

fn held_out_problems(
    task: Which,
    facts: usize,
    n: usize,
    rng: &mut SplitMix64,
) -> Vec<hard_tasks::Problem> {
    (0..n)
        .map(|_| {
            loop {
                let p = match task {
                    Which::Retrieval => hard_tasks::retrieval_problem(rng, facts),
                    Which::Passkey => hard_tasks::passkey_problem(rng, facts),
                };
                if hard_tasks::held_out(&p.prompt) {
                    break p;
                }
            }
        })
        .collect()
}

/// Where in the prompt the misses are, and whether a miss copied the wrong fact (a search
/// error) or garbled the right one (a copy error).
fn by_place(
    a: &Args,
    model: &dyn dllm_cache::Denoiser,
    sampler: &dllm_cache::LladaSampler,
) -> Result<(), Box<dyn std::error::Error>> {
    const BINS: usize = 5;
    let facts = hard_tasks::RETRIEVAL_FACTS;
    let mut rng = SplitMix64::new(0x504c);
    let problems = held_out_problems(a.task, facts, a.problems, &mut rng);
    let (mut right, mut seen) = ([0usize; BINS], [0usize; BINS]);
    let (mut other_fact, mut garbled) = (0usize, 0usize);
    for chunk in problems.chunks(16) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| tiny_task::encode_prompt(&p.prompt))
            .collect();
        let out = sampler.generate(model, &ids, &mut NoCache)?;
        for (r, p) in chunk.iter().enumerate() {
            let answer = tiny_task::decode_answer(out.response(r));
            // The prompt is the facts `k=value;` then the query `k?`.
            let (body, query) = p.prompt.split_at(p.prompt.len() - 2);
            let facts_of: Vec<&str> = body.split(';').filter(|f| !f.is_empty()).collect();
            let values: Vec<&str> = facts_of.iter().map(|f| f.get(2..).unwrap_or("")).collect();
            let place = facts_of
                .iter()
                .position(|f| f.as_bytes().first() == query.as_bytes().first())
                .unwrap_or(0);
            let bin = (place * BINS / facts).min(BINS - 1);
            seen[bin] += 1;
            if answer == p.answer {
                right[bin] += 1;
            } else if values.contains(&answer.as_str()) {
                other_fact += 1;
            } else {
                garbled += 1;
            }
        }
    }
    println!("| place of the fact | exact match |\n|---|---:|");
    for b in 0..BINS {
        println!(
            "| {}-{} of {facts} | {}/{} |",
            (b * facts).div_ceil(BINS) + 1,
            ((b + 1) * facts).div_ceil(BINS),
            right[b],
            seen[b]
        );
    }
    println!("wrong answers: {other_fact} another fact's value, {garbled} none of the values");
    Ok(())
}
