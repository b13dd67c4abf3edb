//! Time whole generations under any cache policy and commit rule, and print one JSON object.
//!
//! ```text
//! cargo run --release --example bench_generate -- --random d_model=512,layers=8,heads=8,mlp=1376,vocab=32000 \
//!     --prompt-len 256 --gen-len 64 --steps 64 --block-len 16 --policy dllm --kp 100 --kr 7 --rho 0.25 \
//!     --repeat 3 --json
//! cargo run --release --example bench_generate -- --model DIR --prompt-len 512 --policy none
//! cargo run --release --example bench_generate -- --policy dual --decode threshold:0.9
//! ```
//!
//! Runs one untimed warm-up generation and `--repeat` timed ones on a synthetic prompt, and
//! reports the mean time, generated tokens per second, forwards (NFE), tokens per forward,
//! FLOPs executed (paper convention and full total), peak cache bytes, the backend and the
//! thread count. `--policy none|dllm|prefix|dual` (with `--kp --kr --rho`) and `--decode
//! schedule|threshold:TAU|factor:F` as in every example. `--model` takes a
//! Hugging Face LLaDA or Dream folder (detected from `config.json`'s `model_type`);
//! `--random` builds a seeded random LLaDA-shaped model of the given sizes. `--device` and
//! `--dtype` pick the backend and float type (for example `--device vulkan --dtype f16` with
//! the `vulkan` feature, see `scripts/gpu-bench.sh`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::FloatDType;
use dllm_cache::{
    CachePolicy, Denoiser, Dream, DreamAlg, DreamSamplerConfig, GenerationOutput, Llada,
    LladaConfig, LladaSamplerConfig,
};

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/options.rs"]
mod options;

use options::{PolicyArgs, PolicyName};

#[derive(Parser, Debug)]
#[command(about = "Benchmark whole generations")]
struct Args {
    /// Hugging Face LLaDA or Dream folder.
    #[arg(long, conflicts_with = "random")]
    model: Option<PathBuf>,
    /// Random LLaDA-shaped model: d_model=..,layers=..,heads=..,mlp=..,vocab=..
    #[arg(long)]
    random: Option<String>,
    #[arg(long, default_value_t = 256)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    gen_len: usize,
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// LLaDA block length.
    #[arg(long, default_value_t = 16)]
    block_len: usize,
    /// Dream: run Fast-dLLM's block sampler with blocks of this length (default: Dream's own).
    #[arg(long)]
    dream_block_len: Option<usize>,
    #[arg(long, value_enum, default_value_t = PolicyName::Dllm)]
    policy: PolicyName,
    #[command(flatten)]
    options: PolicyArgs,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
    /// Device: flex, ndarray, cuda[:N], vulkan[:N] (as the build's features allow).
    #[arg(long, default_value = "flex")]
    device: String,
    /// Float type of weights and activations on the device.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Random weights drawn on the device (fast for 8B shapes; not reproducible).
    #[arg(long)]
    device_random: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

enum Model {
    Llada(Llada),
    Dream(Dream),
}

fn parse_random(spec: &str) -> Result<LladaConfig, String> {
    let mut v = std::collections::HashMap::new();
    for part in spec.split(',') {
        let (k, n) = part
            .split_once('=')
            .ok_or(format!("`{part}` is not key=value"))?;
        v.insert(
            k.trim(),
            n.trim().parse::<usize>().map_err(|e| format!("{k}: {e}"))?,
        );
    }
    let get = |k: &str| v.get(k).copied().ok_or(format!("--random needs {k}="));
    Ok(LladaConfig::with_sizes(
        get("d_model")?,
        get("layers")?,
        get("heads")?,
        get("mlp")?,
        get("vocab")?,
    ))
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let mut device = dllm_cache::device_from_name(&a.device)?;
    // The float type must be configured before the first tensor is created on the device.
    let float = match a.dtype {
        Dtype::F32 => FloatDType::F32,
        Dtype::F16 => FloatDType::F16,
        Dtype::Bf16 => FloatDType::BF16,
    };
    device
        .configure(float)
        .map_err(|e| format!("cannot use {float:?} on {}: {e:?}", a.device))?;
    let (model, name) = match (&a.model, &a.random) {
        (Some(dir), _) => {
            let config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
            let kind = config["model_type"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            if kind == "dream" {
                (
                    Model::Dream(Dream::from_dir(dir, &device)?),
                    dir.display().to_string(),
                )
            } else {
                (
                    Model::Llada(Llada::from_dir(dir, &device)?),
                    dir.display().to_string(),
                )
            }
        }
        (None, spec) => {
            let spec = spec
                .as_deref()
                .unwrap_or("d_model=512,layers=8,heads=8,mlp=1376,vocab=32000");
            (
                Model::Llada(Llada::random(parse_random(spec)?, 0, &device)?),
                format!("random({spec})"),
            )
        }
    };
    let denoiser: &dyn Denoiser = match &model {
        Model::Llada(m) => m,
        Model::Dream(m) => m,
    };
    let special = denoiser.special_tokens();
    let vocab = denoiser.vocab_size() as u32;
    let prompt: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.prompt_len as u32)
                .map(|i| (i * 7919 + b as u32 * 31 + 17) % vocab)
                .map(|t| {
                    if t == special.mask || t == special.pad {
                        (t + 1) % vocab
                    } else {
                        t
                    }
                })
                .collect()
        })
        .collect();
    let mut policy = a.options.policy(a.policy)?;
    let run = |policy: &mut dyn CachePolicy| -> dllm_cache::Result<GenerationOutput> {
        match &model {
            Model::Llada(m) => LladaSamplerConfig::new()
                .with_steps(a.steps)
                .with_gen_length(a.gen_len)
                .with_block_length(a.block_len)
                .with_commit(a.options.decode)
                .init()?
                .generate(m, &prompt, policy),
            Model::Dream(m) => DreamSamplerConfig::new()
                .with_steps(a.steps)
                .with_max_new_tokens(a.gen_len)
                .with_alg(DreamAlg::Entropy)
                .with_block_length(a.dream_block_len)
                .with_commit(a.options.decode)
                .init()?
                .generate(m, &prompt, policy),
        }
    };
    run(policy.as_mut())?; // warm-up
    let mut seconds = Vec::with_capacity(a.repeat);
    let mut last = None;
    for _ in 0..a.repeat.max(1) {
        let out = run(policy.as_mut())?;
        seconds.push(out.stats.wall_time.as_secs_f64());
        last = Some(out);
    }
    let out = last.expect("at least one run");
    let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
    let tokens = (a.gen_len * a.batch) as f64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let json = serde_json::json!({
        "model": name,
        "device": a.device,
        "dtype": format!("{:?}", a.dtype).to_lowercase(),
        "backend": if a.device == "flex" && cfg!(feature = "x86-v4") { "flex+x86-v4".to_string() } else { a.device.clone() },
        "threads": threads,
        "policy": policy.name(),
        "decode": a.options.decode.to_string(),
        "batch": a.batch,
        "prompt_len": a.prompt_len,
        "gen_len": a.gen_len,
        "steps": a.steps,
        "block_len": a.block_len,
        "repeat": seconds.len(),
        "seconds": mean,
        "seconds_each": seconds,
        "tokens_per_s": tokens / mean,
        "forwards": out.stats.forwards,
        "tokens_per_forward": tokens / out.stats.forwards.max(1) as f64,
        "seconds_per_forward": mean / out.stats.forwards.max(1) as f64,
        "flops": {
            "paper": out.stats.flops.paper(),
            "total": out.stats.flops.total(),
            "linear": out.stats.flops.linear,
            "lm_head": out.stats.flops.lm_head,
            "attention": out.stats.flops.attention,
        },
        "gflops_per_s": out.stats.flops.total() as f64 / mean / 1e9,
        "cache_bytes": out.stats.peak_cache_bytes,
    });
    if a.json {
        println!("{json}");
    } else {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
