//! Exact-match accuracy of the shipped tiny model on held-out problems, without and with
//! dLLM-Cache at several settings, with the FLOPs reduction and the wall-clock speedup of each
//! setting measured in the same run.
//!
//! ```text
//! cargo run --release --example eval_tiny            # a table
//! cargo run --release --example eval_tiny -- --json  # one JSON object
//! ```
//!
//! Every setting answers the same problems (the first `--problems` of the held-out split drawn
//! from `--seed`), greedily, one token per step (8 steps for 8 tokens).

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/tiny_task.rs"]
mod tiny_task;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use dllm_cache::burn::tensor::Device;
use dllm_cache::{
    CachePolicy, DllmCacheConfig, FlopCounter, Llada, LladaSamplerConfig, NoCache, SplitMix64,
};
use tiny_task::*;

#[derive(Parser, Debug)]
#[command(about = "Evaluate the tiny model with and without dLLM-Cache")]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Held-out problems to answer.
    #[arg(long, default_value_t = 500)]
    problems: usize,
    /// Seed of the held-out problem stream.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

struct Setting {
    name: &'static str,
    policy: Option<DllmCacheConfig>,
}

fn settings() -> Vec<Setting> {
    let dllm = |kp, kr, rho, l0| {
        Some(
            DllmCacheConfig::new()
                .with_prompt_interval(kp)
                .with_response_interval(kr)
                .with_refresh_ratio(rho)
                .with_refresh_first_layer(l0),
        )
    };
    vec![
        Setting {
            name: "none",
            policy: None,
        },
        Setting {
            name: "dllm 100/7/0.25 (official defaults)",
            policy: dllm(100, 7, 0.25, true),
        },
        Setting {
            name: "dllm 100/4/0.25",
            policy: dllm(100, 4, 0.25, true),
        },
        Setting {
            name: "dllm 100/7/0.25, layer 0 cached",
            policy: dllm(100, 7, 0.25, false),
        },
        Setting {
            name: "dllm 100/8/0 (aggressive)",
            policy: dllm(100, 8, 0.0, false),
        },
    ]
}

struct Outcome {
    accuracy: f64,
    /// (operation, correct, total)
    by_op: Vec<(Op, usize, usize)>,
    flops: FlopCounter,
    seconds: f64,
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let dir = a
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada"));
    let model = Llada::from_dir(&dir, &Device::flex())?;
    let mut rng = SplitMix64::new(a.seed);
    let problems: Vec<Problem> = (0..a.problems)
        .map(|_| next_problem(&mut rng, true))
        .collect();
    let prompts: Vec<Vec<u32>> = problems.iter().map(|p| encode_prompt(&p.prompt)).collect();
    let sampler = LladaSamplerConfig::new()
        .with_steps(GEN_LENGTH)
        .with_gen_length(GEN_LENGTH)
        .with_block_length(GEN_LENGTH)
        .init()?;
    // Warm-up so that the first setting does not pay first-call costs.
    sampler.generate(&model, &prompts[..1], &mut NoCache)?;
    let mut outcomes = Vec::new();
    for s in settings() {
        let mut policy: Box<dyn CachePolicy> = match &s.policy {
            None => Box::new(NoCache),
            Some(c) => Box::new(c.init()?),
        };
        let mut flops = FlopCounter::new();
        let mut correct = 0;
        let mut by_op: Vec<(Op, usize, usize)> = Op::ALL.iter().map(|&op| (op, 0, 0)).collect();
        let started = Instant::now();
        for (p, prompt) in problems.iter().zip(&prompts) {
            let out = sampler.generate(&model, std::slice::from_ref(prompt), policy.as_mut())?;
            flops += out.stats.flops;
            let ok = decode_answer(out.response(0)) == p.answer;
            correct += usize::from(ok);
            if let Some(entry) = by_op.iter_mut().find(|e| e.0 == p.op) {
                entry.1 += usize::from(ok);
                entry.2 += 1;
            }
        }
        outcomes.push(Outcome {
            accuracy: correct as f64 / problems.len() as f64,
            by_op,
            flops,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let base = &outcomes[0];
    let rows: Vec<serde_json::Value> = settings()
        .iter()
        .zip(&outcomes)
        .map(|(s, o)| {
            serde_json::json!({
                "setting": s.name,
                "accuracy": o.accuracy,
                "accuracy_by_op": o.by_op.iter().map(|(op, c, n)| {
                    (format!("{op:?}").to_lowercase(), serde_json::json!(*c as f64 / (*n).max(1) as f64))
                }).collect::<serde_json::Map<_, _>>(),
                "flops_reduction": base.flops.total() as f64 / o.flops.total() as f64,
                "speedup": base.seconds / o.seconds,
                "seconds": o.seconds,
                "gflops": o.flops.total() as f64 / 1e9,
            })
        })
        .collect();
    if a.json {
        let out = serde_json::json!({
            "model": dir.display().to_string(),
            "problems": problems.len(),
            "seed": a.seed,
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "settings": rows,
        });
        println!("{out}");
    } else {
        println!(
            "{} held-out problems, greedy, {GEN_LENGTH} steps for {GEN_LENGTH} tokens\n",
            problems.len()
        );
        println!(
            "| setting | exact match | copy | +1 | +5 | 9-d | FLOPs reduction | wall-clock speedup |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let op = |name: &str| 100.0 * r["accuracy_by_op"][name].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.2}x | {:.2}x |",
                r["setting"].as_str().unwrap_or_default(),
                100.0 * r["accuracy"].as_f64().unwrap_or(0.0),
                op("copy"),
                op("increment"),
                op("addfive"),
                op("complement"),
                r["flops_reduction"].as_f64().unwrap_or(0.0),
                r["speedup"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
