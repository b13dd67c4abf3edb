//! Measures the server under load on loopback: `--requests` completions from `--concurrency`
//! clients against an in-process server on an ephemeral port, and prints one JSON object with
//! completion tokens per second and the p50 / p95 request latency.
//!
//! ```text
//! cargo run --release -p dllm-cache-server --example loadgen -- --concurrency 16 --requests 64 --policy dllm
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use dllm_cache::SplitMix64;
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::Pipeline;
use dllm_cache_server::{EngineConfig, Server};
use serde_json::{Value, json};

#[path = "../../examples/shared/tiny_task.rs"]
mod tiny_task;

#[derive(Parser, Debug)]
struct Args {
    /// Model folder. Default: models/tiny-llada.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Cache policy of every request: none, dllm, prefix, dual.
    #[arg(long, default_value = "dllm")]
    policy: String,
    /// Commit rule of every request.
    #[arg(long, default_value = "schedule")]
    decode: String,
    /// Most rows per batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let dir = a
        .model
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-llada"));
    let pipeline = Pipeline::from_dir(&dir, &Device::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = EngineConfig {
        max_batch: a.max_batch,
        max_queue: a.requests.max(1),
        ..EngineConfig::default()
    };
    let server = Server::start(pipeline, "model".into(), config, listener)?;
    let url = format!("http://{}/v1/completions", server.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let mut rng = SplitMix64::new(77);
    let prompts: Vec<String> = (0..a.requests)
        .map(|_| tiny_task::next_problem(&mut rng, true).prompt)
        .collect();
    let started = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|k| {
            let mine: Vec<String> = prompts
                .iter()
                .skip(k)
                .step_by(a.concurrency.max(1))
                .cloned()
                .collect();
            let (client, url) = (client.clone(), url.clone());
            let (policy, decode) = (a.policy.clone(), a.decode.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for prompt in mine {
                    let t = Instant::now();
                    let body = json!({"prompt": prompt, "policy": policy, "decode": decode});
                    let reply: Value = client.post(&url).json(&body).send().await?.json().await?;
                    let tokens = reply["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    out.push((t.elapsed().as_secs_f64(), tokens, reply["error"].is_null()));
                }
                Ok::<_, reqwest::Error>(out)
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    let mut latency: Vec<f64> = results.iter().map(|r| r.0).collect();
    latency.sort_by(f64::total_cmp);
    let tokens: u64 = results.iter().map(|r| r.1).sum();
    let errors = results.iter().filter(|r| !r.2).count();
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await?
        .text()
        .await?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({
            "policy": a.policy,
            "decode": a.decode,
            "requests": results.len(),
            "concurrency": a.concurrency,
            "errors": errors,
            "wall_seconds": wall,
            "completion_tokens_per_s": tokens as f64 / wall,
            "p50_latency_s": percentile(&latency, 0.5),
            "p95_latency_s": percentile(&latency, 0.95),
            "mean_batch": metric("dllm_batch_rows_total") / metric("dllm_batches_total").max(1.0),
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    );
    server.shutdown();
    Ok(())
}
