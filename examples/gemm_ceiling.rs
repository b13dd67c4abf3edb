//! Matrix-product throughput at the real shapes of a model: the crate's linear path (what every
//! layer of the models runs) with the weight stored `[in, out]` (how the models hold a layer's
//! weights) and `[out, in]` (how they hold the LM head on flex), and burn-flex's own matmul,
//! in float32 GFLOP/s, with the CPU named.
//! `scripts/gemm-ceiling.sh` runs this beside numpy (OpenBLAS) on the same shapes.
//!
//! ```text
//! cargo run --release --example gemm_ceiling -- --d-model 512 --mlp 1376 --vocab 32000 --json
//! ```
//!
//! Shapes: for a full pass over `prompt + gen` rows (prompts 256 and 1024 by default) and for
//! a cached step's 16, 32 and 64 rows, the four projections (`d x d`), gate/up (`d x mlp`),
//! down (`mlp x d`), and the LM head (`d x vocab`) over 16, 32 and 64 rows (a block of each
//! sequence of a batch). Each product is timed
//! over enough repetitions to take about `--seconds`, after one warm-up; the best of three
//! such measurements is reported. With `--cold` every call takes the next of enough copies of
//! its weight to fill 96 MiB, so that the weight comes from memory as a model's does (a model's
//! layers together exceed the caches); without it a weight that fits stays cached between
//! calls, which flatters the thin products.

use std::time::Instant;

use clap::Parser;
use dllm_cache::burn::module::Param;
use dllm_cache::burn::nn::Linear;
use dllm_cache::burn::tensor::{DType, Device, Distribution, Tensor};

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/machine.rs"]
mod machine;

#[derive(Parser, Debug)]
#[command(about = "f32 matmul GFLOP/s at a model's shapes")]
struct Args {
    #[arg(long, default_value_t = 512)]
    d_model: usize,
    #[arg(long, default_value_t = 1376)]
    mlp: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// Generated tokens of the full passes (rows = prompt + gen).
    #[arg(long, default_value_t = 64)]
    gen_len: usize,
    /// Prompt lengths of the full passes, comma-separated.
    #[arg(long, default_value = "256,1024")]
    prompts: String,
    /// Rows of the cached steps, comma-separated.
    #[arg(long, default_value = "16,32,64")]
    step_rows: String,
    /// Target seconds per measurement.
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Also time the crate's path with bf16 weights.
    #[arg(long)]
    bf16: bool,
    /// Read every weight from memory: cycle through copies that exceed the caches.
    #[arg(long)]
    cold: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Best of three: seconds per call of `f`, each measurement about `target` seconds long.
fn time(target: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-6);
    let reps = ((target / once) as usize).clamp(1, 10_000);
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|v| v.trim().parse().map_err(|e| format!("`{v}`: {e}")))
        .collect()
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let device = Device::flex();
    let (d, f, v) = (a.d_model, a.mlp, a.vocab);
    let mut shapes: Vec<(String, usize, usize, usize)> = Vec::new();
    for p in list(&a.prompts)? {
        let rows = p + a.gen_len;
        for (name, k, n) in [("qkvo", d, d), ("gate/up", d, f), ("down", f, d)] {
            shapes.push((format!("full p{p}: {name}"), rows, k, n));
        }
    }
    for rows in list(&a.step_rows)? {
        for (name, k, n) in [("qkvo", d, d), ("gate/up", d, f), ("down", f, d)] {
            shapes.push((format!("step {rows} rows: {name}"), rows, k, n));
        }
    }
    // The LM head runs on a block's rows only, per sequence of a batch.
    for rows in list(&a.step_rows)? {
        shapes.push((format!("lm head, {rows} rows"), rows, d, v));
    }
    let mut results = Vec::new();
    for (name, m, k, n) in &shapes {
        let (m, k, n) = (*m, *k, *n);
        let x = Tensor::<3>::random([1, m, k], Distribution::Normal(0.0, 1.0), &device);
        let copies = if a.cold {
            (96usize << 20).div_ceil(4 * k * n).max(1)
        } else {
            1
        };
        let ws: Vec<Tensor<2>> = (0..copies)
            .map(|_| Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.05), &device))
            .collect();
        let lin = |w: Tensor<2>| Linear {
            weight: Param::from_tensor(w),
            bias: None,
        };
        // The crate's `[out, in]` storage: a transposed view of a contiguous `[n, k]` copy.
        let out_in = |w: &Tensor<2>| {
            Tensor::<2>::from_data(w.clone().transpose().into_data(), &device).transpose()
        };
        let in_out_lins: Vec<Linear> = ws.iter().cloned().map(lin).collect();
        let out_in_lins: Vec<Linear> = ws.iter().map(|w| lin(out_in(w))).collect();
        let flops = 2.0 * (m * k * n) as f64;
        let mut next = 0usize;
        let mut pick = move || {
            next = (next + 1) % copies;
            next
        };
        let burn = time(a.seconds, || {
            let w = &ws[pick()];
            let _ = x.clone().matmul(w.clone().unsqueeze()).into_data();
        });
        let mut crate_time = |lins: &[Linear]| {
            time(a.seconds, || {
                let _ = dllm_cache::model::linear(&lins[pick()], x.clone())
                    .expect("shapes fit")
                    .into_data();
            })
        };
        let crate_out_in = crate_time(&out_in_lins);
        let crate_in_out = crate_time(&in_out_lins);
        let crate_bf16 = if a.bf16 {
            let bf16_lins: Vec<Linear> = ws
                .iter()
                .map(|w| lin(w.clone().cast(DType::BF16)))
                .collect();
            Some(crate_time(&bf16_lins))
        } else {
            None
        };
        results.push(serde_json::json!({
            "shape": name, "m": m, "k": k, "n": n,
            "crate_f32_gflops": flops / crate_in_out / 1e9,
            "crate_f32_out_in_gflops": flops / crate_out_in / 1e9,
            "burn_flex_f32_gflops": flops / burn / 1e9,
            "crate_bf16_weights_gflops": crate_bf16.map(|t| flops / t / 1e9),
        }));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let json = serde_json::json!({
        "cpu": machine::cpu_name(),
        "threads": threads,
        "x86_v4_feature": cfg!(feature = "x86-v4"),
        "cold": a.cold,
        "shapes": results,
    });
    if a.json {
        println!("{json}");
    } else {
        println!("CPU: {} ({threads} threads)", machine::cpu_name());
        println!(
            "{:<28} {:>6} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}",
            "shape", "m", "k", "n", "crate f32", "[out,in]", "burn f32", "crate bf16"
        );
        for r in json["shapes"].as_array().into_iter().flatten() {
            println!(
                "{:<28} {:>6} {:>6} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                r["shape"].as_str().unwrap_or(""),
                r["m"].as_u64().unwrap_or(0),
                r["k"].as_u64().unwrap_or(0),
                r["n"].as_u64().unwrap_or(0),
                r["crate_f32_gflops"].as_f64().unwrap_or(f64::NAN),
                r["crate_f32_out_in_gflops"].as_f64().unwrap_or(f64::NAN),
                r["burn_flex_f32_gflops"].as_f64().unwrap_or(f64::NAN),
                r["crate_bf16_weights_gflops"]
                    .as_f64()
                    .map_or("-".into(), |g| format!("{g:.1}")),
            );
        }
    }
    Ok(())
}
