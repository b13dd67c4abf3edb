//! FLOPs per generated token, uncached vs dLLM-Cache, for any model size, without weights.
//!
//! ```text
//! cargo run --release --example flops -- --preset llada-8b --prompt-len 819 --gen-len 256 \
//!     --steps 256 --block-len 256 --kp 25 --kr 5 --rho 0.25 --no-refresh-first-layer
//! ```
//!
//! Prints one JSON object. The top-level `tflops_per_token_*` and `reduction` use the paper's
//! convention (linear layers and the LM head over every position, no attention products),
//! which reproduces the paper's LLaDA-8B figures. `full_total` adds the attention products,
//! `layer0_refreshed` applies the official code's current layer-0 refresh, and `as_run` counts
//! what this crate executes (the LM head only on the rows a step can commit).

use clap::{Parser, ValueEnum};
use dllm_cache::estimate::{self, HeadRows, ModelShape, Sampling};
use dllm_cache::{DreamAlg, DreamSamplerConfig, LladaSamplerConfig, NoCache};

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/options.rs"]
mod options;

use options::{PolicyArgs, PolicyName};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// LLaDA-8B (Base/Instruct) with its semi-autoregressive sampler.
    #[value(name = "llada-8b")]
    Llada8b,
    /// Dream-v0-7B with its sampler (no blocks).
    #[value(name = "dream-7b")]
    Dream7b,
}

#[derive(Parser, Debug)]
#[command(about = "Estimate dLLM-Cache FLOPs per generated token")]
struct Args {
    #[arg(long, value_enum, default_value_t = Preset::Llada8b)]
    preset: Preset,
    #[arg(long, default_value_t = 819)]
    prompt_len: usize,
    #[arg(long, default_value_t = 256)]
    gen_len: usize,
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// LLaDA block length (ignored for Dream).
    #[arg(long, default_value_t = 256)]
    block_len: usize,
    /// The policy compared with no cache.
    #[arg(long, value_enum, default_value_t = PolicyName::Dllm)]
    policy: PolicyName,
    #[command(flatten)]
    options: PolicyArgs,
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let (shape, sampling) = match a.preset {
        Preset::Llada8b => (
            ModelShape::llada_8b(),
            Sampling::Llada(
                LladaSamplerConfig::new()
                    .with_steps(a.steps)
                    .with_gen_length(a.gen_len)
                    .with_block_length(a.block_len)
                    .with_commit(a.options.decode),
            ),
        ),
        Preset::Dream7b => (
            ModelShape::dream_7b(),
            Sampling::Dream(
                DreamSamplerConfig::new()
                    .with_steps(a.steps)
                    .with_max_new_tokens(a.gen_len)
                    .with_alg(DreamAlg::Entropy)
                    .with_commit(a.options.decode),
            ),
        ),
    };
    if a.options.decode.is_adaptive() {
        return Err(
            "an adaptive --decode decides its step count from the data: run it \
                    (bench_generate) and estimate from its recorded steps"
                .into(),
        );
    }
    let mut forced = a.options.clone();
    forced.no_refresh_first_layer = false;
    let run = |options: Option<&PolicyArgs>, head| -> dllm_cache::Result<_> {
        let mut policy = match options {
            Some(o) => o.policy(a.policy)?,
            None => Box::new(NoCache),
        };
        estimate::flops(
            &shape,
            &sampling,
            policy.as_mut(),
            a.prompt_len,
            a.batch,
            head,
            None,
        )
    };
    let per_token = |flops: u64| flops as f64 / (a.gen_len * a.batch) as f64 / 1e12;
    let base = run(None, HeadRows::All)?;
    let cached = run(Some(&a.options), HeadRows::All)?;
    let cached_l0 = run(Some(&forced), HeadRows::All)?;
    let base_run = run(None, HeadRows::AsRun)?;
    let cached_run = run(Some(&a.options), HeadRows::AsRun)?;
    let view = |b: u64, c: u64| {
        serde_json::json!({
            "tflops_per_token_uncached": per_token(b),
            "tflops_per_token_cached": per_token(c),
            "reduction": b as f64 / c as f64,
        })
    };
    let out = serde_json::json!({
        "preset": format!("{:?}", a.preset),
        "prompt_len": a.prompt_len,
        "gen_len": a.gen_len,
        "steps": a.steps,
        "block_len": a.block_len,
        "policy": format!("{:?}", a.policy).to_lowercase(),
        "kp": a.options.kp, "kr": a.options.kr, "rho": a.options.rho,
        "refresh_first_layer": !a.options.no_refresh_first_layer,
        "convention": "paper: 2 x linear MACs + LM head over every position, no attention products",
        "tflops_per_token_uncached": per_token(base.paper()),
        "tflops_per_token_cached": per_token(cached.paper()),
        "reduction": base.paper() as f64 / cached.paper() as f64,
        "full_total": view(base.total(), cached.total()),
        "layer0_refreshed": view(base.paper(), cached_l0.paper()),
        "as_run": {
            "paper": view(base_run.paper(), cached_run.paper()),
            "full_total": view(base_run.total(), cached_run.total()),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
