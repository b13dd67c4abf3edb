//! `cargo run --release -p dllm-cache-server -- --model DIR --port N`: serves a LLaDA or Dream
//! folder (default: the shipped tiny model) on 127.0.0.1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::Pipeline;
use dllm_cache_server::{EngineConfig, Server};

#[derive(Parser, Debug)]
#[command(about = "OpenAI-compatible server for diffusion LLMs (dllm-cache)")]
struct Args {
    /// Hugging Face model folder (LLaDA or Dream). Default: models/tiny-llada.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Most rows per batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most positions per batch (rows x (longest prompt + generation length)).
    #[arg(long, default_value_t = 16_384)]
    token_budget: usize,
    /// Most waiting requests; beyond it requests get HTTP 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds a request may wait and run in all.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Device name (flex, ndarray, vulkan:N, cuda:N as the build allows).
    #[arg(long, default_value = "flex")]
    device: String,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Args::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = a
        .model
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-llada"));
    let device: Device = dllm_cache::device_from_name(&a.device)?;
    let pipeline = Pipeline::from_dir(&dir, &device)?;
    let name = dir
        .canonicalize()
        .unwrap_or(dir.clone())
        .file_name()
        .map_or("model".to_string(), |n| n.to_string_lossy().into_owned());
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port)).await?;
    let config = EngineConfig {
        max_batch: a.max_batch.max(1),
        token_budget: a.token_budget,
        max_queue: a.max_queue,
        timeout: Duration::from_secs(a.timeout),
    };
    let server = Server::start(pipeline, name.clone(), config, listener)?;
    eprintln!("serving {name} on http://{}", server.addr);
    server.run_until_ctrl_c().await?;
    Ok(())
}
