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
use dllm_cache::{DllmCacheConfig, DreamAlg, DreamSamplerConfig, LladaSamplerConfig};

#[path = "shared/cli.rs"]
mod cli;

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
    #[arg(long, default_value_t = 100)]
    kp: usize,
    #[arg(long, default_value_t = 7)]
    kr: usize,
    #[arg(long, default_value_t = 0.25)]
    rho: f64,
    /// Do not force layer 0 to refresh (the paper's FLOPs convention).
    #[arg(long)]
    no_refresh_first_layer: bool,
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
                    .with_block_length(a.block_len),
            ),
        ),
        Preset::Dream7b => (
            ModelShape::dream_7b(),
            Sampling::Dream(
                DreamSamplerConfig::new()
                    .with_steps(a.steps)
                    .with_max_new_tokens(a.gen_len)
                    .with_alg(DreamAlg::Entropy),
            ),
        ),
    };
    let policy = DllmCacheConfig::new()
        .with_prompt_interval(a.kp)
        .with_response_interval(a.kr)
        .with_refresh_ratio(a.rho)
        .with_refresh_first_layer(!a.no_refresh_first_layer);
    let forced = policy.clone().with_refresh_first_layer(true);
    let run = |p: Option<&DllmCacheConfig>, head| {
        estimate::flops(&shape, &sampling, p, a.prompt_len, a.batch, head)
    };
    let per_token = |flops: u64| flops as f64 / (a.gen_len * a.batch) as f64 / 1e12;
    let base = run(None, HeadRows::All)?;
    let cached = run(Some(&policy), HeadRows::All)?;
    let cached_l0 = run(Some(&forced), HeadRows::All)?;
    let base_run = run(None, HeadRows::AsRun)?;
    let cached_run = run(Some(&policy), HeadRows::AsRun)?;
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
        "kp": a.kp, "kr": a.kr, "rho": a.rho,
        "refresh_first_layer": !a.no_refresh_first_layer,
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
