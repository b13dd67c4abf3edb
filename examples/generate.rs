//! Generate text with a LLaDA or Dream model under any cache policy and commit rule.
//!
//! ```text
//! cargo run --release --example generate -- --compare
//! cargo run --release --example generate -- --compare none,dllm,prefix,dual,dual@threshold:0.9
//! cargo run --release --example generate -- --model path/to/LLaDA-8B-Instruct --chat \
//!     --prompt "What is 12 * 7?" --gen-len 128 --block-len 32 --policy dual \
//!     --decode threshold:0.9 --stream
//! ```
//!
//! Without `--model` it uses the tiny model shipped in `models/tiny-llada` (trained by
//! `examples/train_tiny.rs` on a few-shot digit task), with one of its held-out problems as
//! the prompt; with `--model models/tiny-llada-hard` the default prompt is a held-out
//! 16-digit multiplication of that model's tasks, decoded in blocks of 8. `--compare` runs several settings (`POLICY[@DECODE]`; alone, `none,dllm,none@threshold:0.9`: no cache, dLLM-Cache, and Fast-dLLM's threshold decoding, the best Fast-dLLM setting of the eval_tiny table) and
//! prints each answer, its agreement with the first, the forwards, the FLOPs reduction and
//! the wall-clock speedup against the first.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::{CacheChoice, Completion, GenerateOptions, Pipeline};
use dllm_cache::{ChatMessage, DreamAlg};
use indicatif::{ProgressBar, ProgressStyle};
use options::{PolicyArgs, PolicyName, Setting};

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/hard_tasks.rs"]
mod hard_tasks;
#[path = "shared/options.rs"]
mod options;
#[path = "shared/tiny_task.rs"]
mod tiny_task;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Alg {
    Origin,
    MaskgitPlus,
    TopkMargin,
    Entropy,
}

#[derive(Parser, Debug)]
#[command(about = "Generate with a diffusion LLM, with or without dLLM-Cache")]
struct Args {
    /// Hugging Face model folder (LLaDA or Dream). Default: models/tiny-llada.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt. Default: a problem of the tiny model's task.
    #[arg(long)]
    prompt: Option<String>,
    /// Render the prompt as a user message with the chat template.
    #[arg(long)]
    chat: bool,
    /// Response length in tokens. Default: the folder's generation_config.json, else 128.
    #[arg(long)]
    gen_len: Option<usize>,
    /// Denoising steps (default: the folder's generation_config.json, else one per token).
    #[arg(long)]
    steps: Option<usize>,
    /// LLaDA block length (default: 32 when it divides the length, else one block).
    #[arg(long)]
    block_len: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Dream position rule.
    #[arg(long, value_enum, default_value_t = Alg::Entropy)]
    alg: Alg,
    /// LLaDA classifier-free guidance scale.
    #[arg(long, default_value_t = 0.0)]
    cfg_scale: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cache policy of a single run.
    #[arg(long, value_enum, default_value_t = PolicyName::Dllm)]
    policy: PolicyName,
    #[command(flatten)]
    options: PolicyArgs,
    /// Run several settings and compare them with the first: `POLICY[@DECODE]`, comma
    /// separated (for example `none,dllm,prefix,dual@threshold:0.9`); alone, `none,dllm,none@threshold:0.9`.
    #[arg(long, num_args = 0..=1, default_missing_value = "none,dllm,none@threshold:0.9", value_delimiter = ',')]
    compare: Option<Vec<Setting>>,
    /// Print text as it becomes final.
    #[arg(long)]
    stream: bool,
}

fn main() -> std::process::ExitCode {
    cli::exit(run(Args::parse()))
}

fn run(a: Args) -> Result<(), dllm_cache::Error> {
    let default_model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let dir = a.model.clone().unwrap_or(default_model);
    let device = Device::flex();
    let pipeline = Pipeline::from_dir(&dir, &device)?;
    // The default prompt: a held-out problem of the shipped model's task (never trained on);
    // a folder asking for 32 new tokens is taken for the hard-task model.
    let defaults = pipeline.default_options();
    let hard = defaults.max_new_tokens == hard_tasks::GEN_LENGTH;
    let mut rng = dllm_cache::SplitMix64::new(a.seed);
    let (problem, answer) = if hard {
        let p = hard_tasks::next_eval_problem(&mut rng, hard_tasks::Task::Mul);
        (p.prompt, p.answer)
    } else {
        let p = tiny_task::next_problem(&mut rng, true);
        (p.prompt, p.answer)
    };
    let prompt = a.prompt.clone().unwrap_or_else(|| problem.clone());
    println!("model:  {}", dir.display());
    println!("prompt: {prompt}");
    if a.prompt.is_none() {
        println!("expected answer: {answer}");
    }
    let block_len = a
        .block_len
        .or((hard && a.prompt.is_none()).then_some(hard_tasks::BLOCK_LENGTH));
    let base: GenerateOptions = defaults
        .clone()
        .with_max_new_tokens(a.gen_len.unwrap_or(defaults.max_new_tokens))
        .with_steps(a.steps.or(defaults.steps))
        .with_block_length(block_len)
        .with_temperature(a.temperature)
        .with_alg(match a.alg {
            Alg::Origin => DreamAlg::Origin,
            Alg::MaskgitPlus => DreamAlg::MaskgitPlus,
            Alg::TopkMargin => DreamAlg::TopkMargin,
            Alg::Entropy => DreamAlg::Entropy,
        })
        .with_cfg_scale(a.cfg_scale)
        .with_commit(a.options.decode)
        .with_seed(a.seed);
    let run = |setting: Setting, label: &str| -> Result<Completion, dllm_cache::Error> {
        let options = base
            .clone()
            .with_cache(a.options.choice(setting.policy))
            .with_commit(setting.decode.unwrap_or(a.options.decode));
        let bar = ProgressBar::new(options.steps.unwrap_or(options.max_new_tokens) as u64);
        bar.set_style(
            ProgressStyle::with_template("  {prefix} [{bar:30}] step {pos}/{len} {elapsed}")
                .expect("valid template"),
        );
        bar.set_prefix(label.to_string());
        let mut on_step = |event: &dllm_cache::StreamEvent<'_>| {
            bar.set_position(event.step as u64 + 1);
            if a.stream && !event.text.is_empty() {
                bar.suspend(|| {
                    print!("{}", event.text);
                    let _ = std::io::stdout().flush();
                });
            }
            ControlFlow::Continue(())
        };
        let out = if a.chat {
            pipeline.chat_stream(&[ChatMessage::user(prompt.clone())], &options, &mut on_step)?
        } else {
            pipeline.complete_stream(&prompt, &options, &mut on_step)?
        };
        bar.finish_and_clear();
        if a.stream {
            println!();
        }
        let s = &out.stats;
        println!("[{label}] {:?}", out.text);
        println!(
            "  {} tokens in {} steps ({} forwards), {:.3}s, {:.1} tokens/s; {:.3} GFLOPs executed, {:.3} GFLOPs saved; cache {:.1} KiB",
            s.completion_tokens,
            s.steps,
            s.forwards,
            s.wall_time.as_secs_f64(),
            s.tokens_per_second,
            s.flops.total() as f64 / 1e9,
            s.flops_saved as f64 / 1e9,
            s.cache_bytes as f64 / 1024.0
        );
        Ok(out)
    };
    match &a.compare {
        Some(settings) if !settings.is_empty() => {
            // An untimed warm-up so that no timed run pays first-call costs.
            pipeline.complete(&prompt, &base.clone().with_cache(CacheChoice::None))?;
            let mut runs = Vec::with_capacity(settings.len());
            for &setting in settings {
                let label = setting.label(a.options.decode);
                runs.push((label.clone(), run(setting, &label)?));
            }
            let (first_label, first) = &runs[0];
            for (label, out) in &runs[1..] {
                let agree = first
                    .tokens
                    .iter()
                    .zip(&out.tokens)
                    .filter(|(x, y)| x == y)
                    .count();
                println!(
                    "{label} vs {first_label}: agreement {agree}/{} tokens; {} vs {} forwards; FLOPs reduction {:.2}x; wall-clock speedup {:.2}x",
                    first.tokens.len().max(out.tokens.len()),
                    out.stats.forwards,
                    first.stats.forwards,
                    first.stats.flops.total() as f64 / out.stats.flops.total().max(1) as f64,
                    first.stats.wall_time.as_secs_f64()
                        / out.stats.wall_time.as_secs_f64().max(1e-9)
                );
            }
        }
        _ => {
            let setting = Setting {
                policy: a.policy,
                decode: None,
            };
            let out = run(setting, &setting.label(a.options.decode))?;
            println!("{:.1} tokens/s", out.stats.tokens_per_second);
        }
    }
    Ok(())
}
