//! Generate with a LLaDA model, with and without dLLM-Cache, and compare.
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- --model DIR --prompt-tokens 1,2,3 --gen-len 64 \
//!     --steps 64 --block-len 16 --policy dllm --kp 100 --kr 7 --rho 0.25
//! ```
//!
//! Without `--model` it runs the tiny random-weight LLaDA of the test fixtures (its tokens are
//! meaningless; it shows the machinery). `--policy compare` (the default) runs the uncached and
//! the cached generation and prints both outputs, their agreement, the FLOPs reduction and the
//! wall-clock speedup.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::Device;
use dllm_cache::{
    CachePolicy, DllmCacheConfig, GenerationOutput, Llada, LladaSamplerConfig, NoCache,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    /// No caching.
    None,
    /// dLLM-Cache.
    Dllm,
    /// Both, side by side.
    Compare,
}

#[derive(Parser, Debug)]
#[command(about = "Generate with LLaDA, with and without dLLM-Cache")]
struct Args {
    /// Hugging Face model folder (config.json + model.safetensors). Default: the test fixture.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt token ids, comma-separated. Default: a fixed 32-token synthetic prompt.
    #[arg(long, value_delimiter = ',')]
    prompt_tokens: Option<Vec<u32>>,
    /// Response length.
    #[arg(long, default_value_t = 64)]
    gen_len: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Semi-autoregressive block length.
    #[arg(long, default_value_t = 16)]
    block_len: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 0.0)]
    cfg_scale: f64,
    /// Seed for temperature sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cache policy.
    #[arg(long, value_enum, default_value_t = Policy::Compare)]
    policy: Policy,
    /// dLLM-Cache prompt refresh interval K_p.
    #[arg(long, default_value_t = 100)]
    kp: usize,
    /// dLLM-Cache response refresh interval K_r.
    #[arg(long, default_value_t = 7)]
    kr: usize,
    /// dLLM-Cache V-verify refresh ratio rho.
    #[arg(long, default_value_t = 0.25)]
    rho: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex();
    let dir = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/llada")
    });
    let t = Instant::now();
    let model = Llada::from_dir(&dir, &device)?;
    let cfg = model.config();
    println!(
        "model: {} ({} layers, d_model {}, {:.1}M parameters), loaded in {:.2}s",
        dir.display(),
        cfg.n_layers,
        cfg.d_model,
        cfg.num_params() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let vocab = cfg.vocab_size as u32;
    let mask = cfg.mask_token_id;
    let prompt = args.prompt_tokens.clone().unwrap_or_else(|| {
        (0..32u32)
            .map(|i| (i * 37 + 11) % vocab)
            .map(|t| if t == mask { t - 1 } else { t })
            .collect()
    });
    let sampler = LladaSamplerConfig::new()
        .with_steps(args.steps)
        .with_gen_length(args.gen_len)
        .with_block_length(args.block_len)
        .with_temperature(args.temperature)
        .with_cfg_scale(args.cfg_scale)
        .with_seed(args.seed)
        .init()?;
    let dllm = DllmCacheConfig::new()
        .with_prompt_interval(args.kp)
        .with_response_interval(args.kr)
        .with_refresh_ratio(args.rho)
        .init()?;
    println!(
        "prompt: {} tokens; generating {} tokens in {} steps (blocks of {})",
        prompt.len(),
        args.gen_len,
        args.steps,
        args.block_len
    );

    let run = |policy: &mut dyn CachePolicy| -> Result<GenerationOutput, dllm_cache::Error> {
        let out = sampler.generate(&model, std::slice::from_ref(&prompt), policy)?;
        let s = &out.stats;
        println!(
            "[{}] {:.3}s, {:.1} tokens/s, {:.3} GFLOPs (paper convention) / {:.3} GFLOPs (total), peak cache {:.1} KiB",
            policy.name(),
            s.wall_time.as_secs_f64(),
            s.tokens_per_second(args.gen_len),
            s.flops.paper() as f64 / 1e9,
            s.flops.total() as f64 / 1e9,
            s.peak_cache_bytes as f64 / 1024.0
        );
        println!("  tokens: {:?}", out.response(0));
        Ok(out)
    };
    match args.policy {
        Policy::None => {
            run(&mut NoCache)?;
        }
        Policy::Dllm => {
            run(&mut dllm.clone())?;
        }
        Policy::Compare => {
            // One untimed warm-up so that neither run pays first-call costs.
            sampler.generate(&model, std::slice::from_ref(&prompt), &mut NoCache)?;
            let plain = run(&mut NoCache)?;
            let cached = run(&mut dllm.clone())?;
            let agree = plain
                .response(0)
                .iter()
                .zip(cached.response(0))
                .filter(|(a, b)| a == b)
                .count();
            println!(
                "agreement: {agree}/{} tokens; FLOPs reduction {:.2}x (paper convention), {:.2}x (total); wall-clock speedup {:.2}x",
                args.gen_len,
                plain.stats.flops.paper() as f64 / cached.stats.flops.paper() as f64,
                plain.stats.flops.total() as f64 / cached.stats.flops.total() as f64,
                plain.stats.wall_time.as_secs_f64() / cached.stats.wall_time.as_secs_f64()
            );
        }
    }
    Ok(())
}
