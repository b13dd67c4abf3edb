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
//! the `vulkan` feature, see `scripts/gpu-bench.sh`); `--weights bf16|f16` holds the weight
//! matrices in 16 bits with float32 activations (half the memory; LLaDA-8B's shape fits in
//! 24 GB). The JSON also reports the load time and the process's peak resident memory
//! (Linux; `null` elsewhere).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::FloatDType;
use dllm_cache::{
    CachePolicy, Denoiser, Dream, DreamAlg, DreamSamplerConfig, GenerationOutput, Llada,
    LladaConfig, LladaSamplerConfig, LoadOptions, WeightDtype,
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
    /// Feature cache storage: f32 (the activations' type), bf16 or f16.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    cache_dtype: Dtype,
    /// Weight matrices held as f32 (the device's float type), bf16 or f16.
    #[arg(long, default_value = "f32")]
    weights: WeightDtype,
    /// Random weights drawn by the device's generator (faster for 8B shapes; not
    /// reproducible).
    #[arg(long)]
    device_random: bool,
    /// Write the model (config.json + model.safetensors, float32) to this folder and exit,
    /// so that another implementation can load the same weights (scripts/bench-vs-torch.sh).
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// Untimed warm-up generations before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The device's matmul peak in TFLOP/s for this dtype: adds `peak_fraction` (counted
    /// FLOPs per second over the peak) to the JSON.
    #[arg(long)]
    peak_tflops: Option<f64>,
}

/// The process's peak resident set in bytes (`VmHWM`), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    let load = LoadOptions::new().with_weights(a.weights);
    let loading = std::time::Instant::now();
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
                    Model::Dream(Dream::from_dir_with(dir, &device, &load)?),
                    dir.display().to_string(),
                )
            } else {
                (
                    Model::Llada(Llada::from_dir_with(dir, &device, &load)?),
                    dir.display().to_string(),
                )
            }
        }
        (None, spec) => {
            let spec = spec
                .as_deref()
                .unwrap_or("d_model=512,layers=8,heads=8,mlp=1376,vocab=32000");
            let config = parse_random(spec)?;
            let model = if a.device_random {
                Llada::random_unseeded_with(config, &device, &load)?
            } else {
                Llada::random_with(config, 0, &device, &load)?
            };
            (Model::Llada(model), format!("random({spec})"))
        }
    };
    let load_seconds = loading.elapsed().as_secs_f64();
    if let Some(dir) = &a.save_model {
        match &model {
            Model::Llada(m) => m.save_dir(dir, dllm_cache::model::SaveDtype::F32)?,
            Model::Dream(m) => m.save_dir(dir, dllm_cache::model::SaveDtype::F32)?,
        }
        println!("saved {name} to {}", dir.display());
        return Ok(());
    }
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
    let cache_dtype = match a.cache_dtype {
        Dtype::F32 => None,
        Dtype::F16 => Some(dllm_cache::burn::tensor::DType::F16),
        Dtype::Bf16 => Some(dllm_cache::burn::tensor::DType::BF16),
    };
    let run = |policy: &mut dyn CachePolicy| -> dllm_cache::Result<GenerationOutput> {
        match &model {
            Model::Llada(m) => LladaSamplerConfig::new()
                .with_steps(a.steps)
                .with_gen_length(a.gen_len)
                .with_block_length(a.block_len)
                .with_commit(a.options.decode)
                .init()
                .and_then(|s| match cache_dtype {
                    Some(d) => s.with_cache_dtype(d),
                    None => Ok(s),
                })?
                .generate(m, &prompt, policy),
            Model::Dream(m) => DreamSamplerConfig::new()
                .with_steps(a.steps)
                .with_max_new_tokens(a.gen_len)
                .with_alg(DreamAlg::Entropy)
                .with_block_length(a.dream_block_len)
                .with_commit(a.options.decode)
                .init()
                .and_then(|s| match cache_dtype {
                    Some(d) => s.with_cache_dtype(d),
                    None => Ok(s),
                })?
                .generate(m, &prompt, policy),
        }
    };
    for _ in 0..a.warmup {
        run(policy.as_mut())?;
    }
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
        "cache_dtype": format!("{:?}", a.cache_dtype).to_lowercase(),
        "weights": match a.weights { WeightDtype::Bf16 => "bf16", WeightDtype::F16 => "f16", _ => "f32" },
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
        "load_seconds": load_seconds,
        "response": out.sequences.first().map(|r| &r[r.len().saturating_sub(a.gen_len)..]),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_fraction": a.peak_tflops.filter(|p| *p > 0.0).map(|p| out.stats.flops.total() as f64 / mean / (p * 1e12)),
    });
    if a.json {
        println!("{json}");
    } else {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
