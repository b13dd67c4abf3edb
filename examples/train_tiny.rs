//! Train a tiny LLaDA-architecture model from scratch, in Rust, with the masked diffusion
//! objective of LLaDA's supervised fine-tuning.
//!
//! ```text
//! cargo run --release --features train --example train_tiny -- --out models/tiny-llada
//! cargo run --release --features train --example train_tiny -- --tasks hard --out /tmp/train/hard-v3
//! # then the passkey stages of models/tiny-llada-hard/README.md (--init the previous output)
//! ```
//!
//! Two task sets. `digits` (`examples/shared/tiny_task.rs`, the shipped `models/tiny-llada`): a
//! prompt shows six worked examples of a hidden digit operation (copy, +1 per digit, +5 per
//! digit, 9 - digit) on 5-digit strings, then a query; the answer applies the operation to the
//! query, padded with EOS to 8 tokens. `hard` (`examples/shared/hard_tasks.rs`, the first
//! stage of `models/tiny-llada-hard`): 16-digit multiplication by 7 with carries (answers of
//! 16-17 interdependent digits) and a 21-shot digit operation in a 259-token prompt, 32-token
//! responses; training steps take the tasks in turns, one task per batch. The shipped model
//! then learns the passkey (a marked fact among 26 in a 263-token prompt) in two more stages,
//! `passkey` alone (the copy and the search at the rate of short prompts) and `hard-passkey`
//! at the full size with the other two tasks back in the mix (its card has the commands).
//! `mul-lookup` (multiplication and key-value lookup) reruns an attempt that did not learn the
//! lookup.
//! `retrieval` and `hard-retrieval` rerun earlier attempts at a retrieval task
//! (docs/benchmarks.md, "Toward a retrieval task").
//!
//! Objective: prompt tokens are never masked; each response token is masked with probability
//! `t ~ U(eps, 1]` (one `t` per sequence, stratified over the batch); cross-entropy on the
//! masked positions, weighted by `1/t`, averaged over the response positions of the batch.
//! Seeded and reproducible.
//!
//! Writes `config.json`, `model.safetensors`, the tokenizer files and a model card into
//! `--out`. With the `cuda` feature and `--cuda` it trains on the GPU.
//!
//! Resumable: every `--checkpoint-every` steps the model and the run's counters go to
//! `--out/checkpoint/`; `--resume` continues from there with the same learning-rate schedule
//! and the same training data (the data stream is replayed up to the checkpoint's step). The
//! optimizer's moment estimates are not saved (burn 0.22 has no recorder for them) and restart
//! from zero, so a resumed run is close to, not bit-identical with, an uninterrupted one.

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/hard_tasks.rs"]
mod hard_tasks;
#[path = "shared/tiny_task.rs"]
mod tiny_task;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::module::Module;
use dllm_cache::burn::optim::grad_clipping::GradientClippingConfig;
use dllm_cache::burn::optim::{AdamWConfig, GradientsParams};
use dllm_cache::burn::tensor::activation::log_softmax;
use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::model::SaveDtype;
use dllm_cache::{
    Denoiser, FeatureCache, FlopCounter, Llada, LladaConfig, LladaSamplerConfig, NoCache,
    SplitMix64, StepContext, StepInfo,
};
use hard_tasks::Task;
use indicatif::{ProgressBar, ProgressStyle};
use tiny_task::*;

/// Which task mix to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tasks {
    /// The shipped tiny model's few-shot digit operations (8-token responses).
    Digits,
    /// 16-digit multiplication and a 21-shot digit operation (32-token responses): the first
    /// stage of models/tiny-llada-hard.
    Hard,
    /// 16-digit multiplication and long-prompt key-value lookup: an attempt at a retrieval
    /// task that a model of this size did not learn in the budget (docs/benchmarks.md).
    MulLookup,
    /// The `hard` tasks and one-letter-key retrieval in a 263-token prompt; trained from a
    /// `hard` model with `--init` (an earlier attempt, docs/benchmarks.md).
    HardRetrieval,
    /// One-letter-key retrieval alone: the stage before `hard-retrieval`, where the copy is
    /// learned at the full rate of short prompts.
    Retrieval,
    /// The `hard` tasks and passkey retrieval in a 263-token prompt; trained from a
    /// `passkey` stage with `--init` (the last stage of models/tiny-llada-hard).
    HardPasskey,
    /// Passkey retrieval alone, from a `hard` model with `--init`: the stage where the copy
    /// and the search for the marked fact are learned at the rate of short prompts (the
    /// second stage of models/tiny-llada-hard).
    Passkey,
}

impl Tasks {
    fn gen_length(self) -> usize {
        match self {
            Tasks::Digits => GEN_LENGTH,
            _ => hard_tasks::GEN_LENGTH,
        }
    }

    /// The hard tasks this mix trains and evaluates (empty for `digits`).
    fn hard(self) -> &'static [Task] {
        match self {
            Tasks::Digits => &[],
            Tasks::Hard => &[Task::Mul, Task::Fewshot],
            Tasks::MulLookup => &[Task::Mul, Task::Lookup],
            Tasks::HardRetrieval => &[Task::Mul, Task::Fewshot, Task::Retrieval],
            Tasks::Retrieval => &[Task::Retrieval],
            Tasks::HardPasskey => &[Task::Mul, Task::Fewshot, Task::Passkey],
            Tasks::Passkey => &[Task::Passkey],
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Train the embedded tiny dLLM")]
struct Args {
    /// Output folder (Hugging Face layout).
    #[arg(long, default_value = "models/tiny-llada")]
    out: PathBuf,
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 150)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 384)]
    mlp: usize,
    /// Rotary base.
    #[arg(long, default_value_t = 10_000.0)]
    rope_theta: f64,
    /// Lower bound of the masking rate t.
    #[arg(long, default_value_t = 0.05)]
    eps: f64,
    /// Evaluate exact-match accuracy on held-out problems every this many steps.
    #[arg(long, default_value_t = 500)]
    eval_every: usize,
    /// Continue from a saved model folder instead of random weights (sizes come from its config).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train on CUDA device 0 (needs the `cuda` feature).
    #[arg(long)]
    cuda: bool,
    /// Task mix.
    #[arg(long, value_enum, default_value_t = Tasks::Digits)]
    tasks: Tasks,
    /// Save a resumable checkpoint into `--out/checkpoint` every this many steps (0: never).
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Continue from `--out/checkpoint` (same flags as the interrupted run).
    #[arg(long)]
    resume: bool,
    /// Held-out problems (per task) of the final evaluation written into the model card.
    #[arg(long, default_value_t = 500)]
    final_eval: usize,
    /// Held-out problems (per task) of the evaluations during training.
    #[arg(long, default_value_t = 64)]
    eval_problems: usize,
    /// Batches of the last task of the mix (few-shot, lookup, retrieval) per turn of the
    /// others (`hard`, `mul-lookup`: per multiplication batch). Those answers supervise two to
    /// seven digits per sequence, a product seventeen, so the last task may need more of the
    /// steps.
    #[arg(long, default_value_t = 1)]
    lookup_weight: usize,
    /// `mul-lookup`, `hard-retrieval`: how training draws the number of facts of a lookup
    /// (1 to 46) or retrieval (1 to 26) batch: `uniform`, or `log` (log-uniform: short prompts,
    /// where a lookup is learned first and cheaply, more often; long ones still about one
    /// batch in nine), or `full` (always the evaluated size, 26 retrieval facts: the queried fact
    /// is then as often far from the query as near it).
    #[arg(long, value_enum, default_value_t = Facts::Uniform)]
    facts: Facts,
    /// Stop after this many steps of the `--steps` schedule (and save as at the end).
    #[arg(long)]
    stop_after: Option<usize>,
}

/// How training draws a lookup batch's number of facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Facts {
    Uniform,
    Log,
    Full,
}

fn device(cuda: bool) -> Device {
    #[cfg(feature = "cuda")]
    if cuda {
        return Device::cuda(0);
    }
    assert!(!cuda, "--cuda needs the `cuda` feature");
    Device::flex()
}

fn config(a: &Args) -> LladaConfig {
    let mut c = LladaConfig::with_sizes(a.d_model, a.layers, a.heads, a.mlp, vocab_size());
    c.mask_token_id = special_id(MASK);
    c.eos_token_id = special_id(EOS);
    c.pad_token_id = special_id(EOS);
    c.bos_token_id = Some(special_id(BOS));
    c.max_sequence_length = 512;
    // LLaDA-8B's base of 500000 suits 4096 positions; for sequences of ~90 positions a base of
    // 10000 leaves more rotary frequencies that distinguish nearby offsets.
    c.rope_theta = a.rope_theta;
    c
}

/// One training batch: left-padded prompts, partly masked responses, targets and weights.
struct Batch {
    tokens: Tensor<2, Int>,
    pads: Vec<usize>,
    prompt_len: usize,
    gen_length: usize,
    targets: Tensor<2, Int>,
    weights: Tensor<2>,
}

/// The data of one training batch, before it becomes tensors.
struct BatchData {
    ids: Vec<i64>,
    pads: Vec<usize>,
    prompt_len: usize,
    targets: Vec<i64>,
    weights: Vec<f32>,
}

/// The (prompt ids, padded answer ids) of training step `step`'s problems.
fn step_problems(
    a: &Args,
    rng: &mut SplitMix64,
    step: usize,
    size: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let tasks = a.tasks;
    match tasks {
        Tasks::Digits => (0..size)
            .map(|_| {
                let p = next_problem(rng, false);
                (encode_prompt(&p.prompt), encode_answer(&p.answer))
            })
            .collect(),
        _ => {
            // One task per batch, in turns (one batch of each task but the last, then
            // `lookup_weight` batches of the last), and one prompt size per batch: no padding.
            let tasks = tasks.hard();
            let (last, others) = tasks.split_last().expect("a hard mix has tasks");
            let turn = step % (others.len() + a.lookup_weight.max(1));
            let task = others.get(turn).copied().unwrap_or(*last);
            let facts = match (task, a.facts) {
                (Task::Fewshot, _) => {
                    1 + (rng.next_u64() % hard_tasks::TRAIN_MAX_EXAMPLES as u64) as usize
                }
                (Task::Retrieval | Task::Passkey, Facts::Uniform) => {
                    1 + (rng.next_u64() % hard_tasks::RETRIEVAL_FACTS as u64) as usize
                }
                (Task::Retrieval | Task::Passkey, Facts::Log) => {
                    let max = hard_tasks::RETRIEVAL_FACTS;
                    ((max as f64).powf(rng.uniform()) as usize).clamp(1, max)
                }
                (Task::Retrieval | Task::Passkey, Facts::Full) => hard_tasks::RETRIEVAL_FACTS,
                (_, Facts::Full) => hard_tasks::FACTS,
                (_, Facts::Uniform) => {
                    1 + (rng.next_u64() % hard_tasks::TRAIN_MAX_FACTS as u64) as usize
                }
                (_, Facts::Log) => {
                    let max = hard_tasks::TRAIN_MAX_FACTS;
                    ((max as f64).powf(rng.uniform()) as usize).clamp(1, max)
                }
            };
            (0..size)
                .map(|_| {
                    let p = hard_tasks::next_train_problem(rng, task, facts);
                    (
                        encode_prompt(&p.prompt),
                        hard_tasks::encode_answer(&p.answer),
                    )
                })
                .collect()
        }
    }
}

fn batch_data(a: &Args, rng: &mut SplitMix64, step: usize, size: usize, eps: f64) -> BatchData {
    // Stratified masking rates: one t per sequence from each of `size` equal slices of
    // (eps, 1]. Unbiased like independent draws, with far less variance in the 1/t-weighted
    // loss of a small batch.
    let offset = rng.uniform();
    let problems = step_problems(a, rng, step, size);
    let p = problems.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let (mut ids, mut targets, mut weights, mut pads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (prompt, answer)) in problems.iter().enumerate() {
        let pad = p - prompt.len();
        pads.push(pad);
        ids.extend(std::iter::repeat_n(special_id(EOS) as i64, pad));
        ids.extend(prompt.iter().map(|&t| t as i64));
        let t = eps + (1.0 - eps) * ((i as f64 + offset) / size as f64);
        for &tok in answer {
            let masked = rng.uniform() < t;
            ids.push(if masked {
                special_id(MASK) as i64
            } else {
                tok as i64
            });
            targets.push(tok as i64);
            weights.push(if masked { (1.0 / t) as f32 } else { 0.0 });
        }
    }
    BatchData {
        ids,
        pads,
        prompt_len: p,
        targets,
        weights,
    }
}

fn batch(d: BatchData, glen: usize, device: &Device) -> Batch {
    let size = d.pads.len();
    Batch {
        tokens: Tensor::from_data(TensorData::new(d.ids, [size, d.prompt_len + glen]), device),
        pads: d.pads,
        prompt_len: d.prompt_len,
        gen_length: glen,
        targets: Tensor::from_data(TensorData::new(d.targets, [size, glen]), device),
        weights: Tensor::from_data(TensorData::new(d.weights, [size, glen]), device),
    }
}

fn loss(model: &Llada, b: &Batch) -> dllm_cache::Result<Tensor<1>> {
    let [size, _] = b.targets.dims();
    let mut policy = NoCache;
    let mut cache = FeatureCache::new();
    let mut flops = FlopCounter::new();
    let info = StepInfo::new(0, b.prompt_len, b.gen_length);
    let mut ctx = StepContext::new(info, &mut policy, &mut cache, &mut flops)
        .with_logit_rows(b.prompt_len..b.prompt_len + b.gen_length)
        .with_left_padding(&b.pads);
    let logits = model.forward(b.tokens.clone(), &mut ctx)?;
    let logp = log_softmax(logits, 2)
        .gather(2, b.targets.clone().unsqueeze_dim(2))
        .squeeze_dim::<2>(2);
    Ok((logp * b.weights.clone()).sum().neg() / (size * b.gen_length) as f64)
}

/// Exact-match accuracy per task on `n` held-out problems per task (greedy, one token per
/// step, no cache; the hard tasks in blocks of 8, a task's problems as one batch).
fn accuracy(tasks: Tasks, model: &Llada, n: usize) -> dllm_cache::Result<Vec<(&'static str, f64)>> {
    match tasks {
        Tasks::Digits => Ok(vec![("digits", digits_accuracy(model, n)?)]),
        _ => {
            let sampler = LladaSamplerConfig::new()
                .with_steps(hard_tasks::GEN_LENGTH)
                .with_gen_length(hard_tasks::GEN_LENGTH)
                .with_block_length(hard_tasks::BLOCK_LENGTH)
                .init()?;
            let mut out = Vec::new();
            for &task in tasks.hard() {
                let mut rng = SplitMix64::new(0xe7a1 + task as u64);
                let problems: Vec<_> = (0..n)
                    .map(|_| hard_tasks::next_eval_problem(&mut rng, task))
                    .collect();
                let mut correct = 0;
                // Batches of 64 rows keep a long-prompt evaluation's activations small.
                for chunk in problems.chunks(64) {
                    let prompts: Vec<Vec<u32>> =
                        chunk.iter().map(|p| encode_prompt(&p.prompt)).collect();
                    let out = sampler.generate(model, &prompts, &mut NoCache)?;
                    correct += chunk
                        .iter()
                        .enumerate()
                        .filter(|(r, p)| decode_answer(out.response(*r)) == p.answer)
                        .count();
                }
                out.push((task.name(), correct as f64 / n.max(1) as f64));
            }
            Ok(out)
        }
    }
}

fn format_accuracy(acc: &[(&str, f64)]) -> String {
    acc.iter()
        .map(|(name, a)| format!("{name} {:.1}%", 100.0 * a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Exact-match accuracy on `n` held-out digit problems (greedy, one token per step, no cache).
fn digits_accuracy(model: &Llada, n: usize) -> dllm_cache::Result<f64> {
    let sampler = LladaSamplerConfig::new()
        .with_steps(GEN_LENGTH)
        .with_gen_length(GEN_LENGTH)
        .with_block_length(GEN_LENGTH)
        .init()?;
    let mut rng = SplitMix64::new(0xe7a1);
    let mut correct = 0;
    for _ in 0..n {
        let p = next_problem(&mut rng, true);
        let out = sampler.generate(model, &[encode_prompt(&p.prompt)], &mut NoCache)?;
        correct += usize::from(decode_answer(out.response(0)) == p.answer);
    }
    Ok(correct as f64 / n as f64)
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

/// One point of the training curve: step, smoothed loss, held-out accuracy per task.
type CurvePoint = (usize, f64, Vec<(String, f64)>);

/// The counters a checkpoint keeps besides the weights.
#[derive(serde::Serialize, serde::Deserialize)]
struct Progress {
    /// Steps done.
    step: usize,
    smoothed: Option<f64>,
    history: Vec<CurvePoint>,
    /// Training seconds before this run (resumed runs add theirs).
    seconds: f64,
    /// The flags of the run, so that a resume with other flags is refused.
    flags: String,
}

/// The flags that must not change across a resume.
fn flags(a: &Args) -> String {
    format!(
        "tasks={:?} steps={} batch={} lr={} warmup={} seed={} d_model={} layers={} heads={} mlp={} rope_theta={} eps={} lookup_weight={} facts={:?}",
        a.tasks,
        a.steps,
        a.batch,
        a.lr,
        a.warmup,
        a.seed,
        a.d_model,
        a.layers,
        a.heads,
        a.mlp,
        a.rope_theta,
        a.eps,
        a.lookup_weight,
        a.facts
    )
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let device = device(a.cuda).autodiff();
    let checkpoint = a.out.join("checkpoint");
    let resumed: Option<Progress> = if a.resume {
        let path = checkpoint.join("state.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("no checkpoint to resume from at {}: {e}", path.display()))?;
        let state: Progress = serde_json::from_str(&text)?;
        if state.flags != flags(&a) {
            return Err(format!(
                "the checkpoint was written with other flags:\n  {}\nthis run:\n  {}",
                state.flags,
                flags(&a)
            )
            .into());
        }
        Some(state)
    } else {
        None
    };
    let (config, mut model) = match (&resumed, &a.init) {
        (Some(_), _) => {
            let model = Llada::from_dir(&checkpoint, &device)?;
            (model.config().clone(), model)
        }
        (None, Some(dir)) => {
            let model = Llada::from_dir(dir, &device)?;
            (model.config().clone(), model)
        }
        (None, None) => {
            let config = config(&a);
            (config.clone(), Llada::random(config, a.seed, &device)?)
        }
    };
    let glen = a.tasks.gen_length();
    let first = resumed.as_ref().map_or(0, |r| r.step);
    println!(
        "training {} parameters ({} layers, d_model {}) on {:?} for {} steps of {} problems{}",
        config.num_params()?,
        config.n_layers,
        config.d_model,
        a.tasks,
        a.steps,
        a.batch,
        if first > 0 {
            format!(", resumed at step {first}")
        } else {
            String::new()
        }
    );
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let mut rng = SplitMix64::new(a.seed ^ 0x7261_696e);
    // Replay the data stream up to the checkpoint: the resumed run trains on the batches the
    // uninterrupted one would have.
    for step in 0..first {
        batch_data(&a, &mut rng, step, a.batch, a.eps);
    }
    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}",
    )?);
    bar.set_position(first as u64);
    let started = Instant::now();
    let before = resumed.as_ref().map_or(0.0, |r| r.seconds);
    let mut smoothed = resumed.as_ref().and_then(|r| r.smoothed);
    let mut history: Vec<CurvePoint> = resumed.map(|r| r.history).unwrap_or_default();
    let last = a.stop_after.unwrap_or(a.steps).min(a.steps);
    for step in first..last {
        let lr = if step < a.warmup {
            a.lr * (step + 1) as f64 / a.warmup as f64
        } else {
            let progress = (step - a.warmup) as f64 / (a.steps - a.warmup).max(1) as f64;
            a.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        };
        let b = batch(
            batch_data(&a, &mut rng, step, a.batch, a.eps),
            glen,
            &device,
        );
        let l = loss(&model, &b)?;
        let value = l.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(lr, model, grads);
        smoothed = Some(smoothed.map_or(value, |s| 0.98 * s + 0.02 * value));
        bar.set_message(format!("loss {:.4} lr {lr:.2e}", smoothed.unwrap_or(value)));
        bar.inc(1);
        let seconds = before + started.elapsed().as_secs_f64();
        if bar.is_hidden() && (step + 1) % 50 == 0 {
            // Not a terminal (a log file): progress as plain lines.
            println!(
                "step {:>5}/{}: loss {:.4}, lr {lr:.2e}, {seconds:.0}s",
                step + 1,
                a.steps,
                smoothed.unwrap_or(value),
            );
        }
        if (step + 1) % a.eval_every == 0 || step + 1 == last {
            let acc = accuracy(a.tasks, &model.valid(), a.eval_problems)?;
            let line = format!(
                "step {:>5}: loss {:.4}, held-out exact match {} ({} problems per task), {seconds:.0}s",
                step + 1,
                smoothed.unwrap_or(value),
                format_accuracy(&acc),
                a.eval_problems,
            );
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            history.push((
                step + 1,
                smoothed.unwrap_or(value),
                acc.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            ));
        }
        if a.checkpoint_every > 0 && (step + 1) % a.checkpoint_every == 0 && step + 1 < a.steps {
            std::fs::create_dir_all(&checkpoint)?;
            model.valid().save_dir(&checkpoint, SaveDtype::F32)?;
            let state = Progress {
                step: step + 1,
                smoothed,
                history: history.clone(),
                seconds: before + started.elapsed().as_secs_f64(),
                flags: flags(&a),
            };
            // Written last and renamed into place: a checkpoint is either whole or absent.
            let tmp = checkpoint.join("state.json.tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&state)?)?;
            std::fs::rename(&tmp, checkpoint.join("state.json"))?;
        }
    }
    bar.finish();
    let seconds = before + started.elapsed().as_secs_f64();
    let model = model.valid();
    let final_acc = accuracy(a.tasks, &model, a.final_eval)?;
    std::fs::create_dir_all(&a.out)?;
    model.save_dir(&a.out, SaveDtype::F32)?;
    write_tokenizer_for(&a.out, glen)?;
    // The command lines that produced this model: earlier stages from the --init model's card.
    let mut commands: Vec<String> = a
        .init
        .as_ref()
        .and_then(|dir| std::fs::read_to_string(dir.join("README.md")).ok())
        .map(|card| {
            card.lines()
                .filter(|l| l.starts_with("    cargo run"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    commands.push(format!(
        "    cargo run --release --features train --example train_tiny -- {}",
        std::env::args()
            .skip(1)
            .filter(|f| f != "--resume")
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let final_loss = history.last().map_or(f64::NAN, |h| h.1);
    // The earlier stages' time, from the --init model's card ("took N s" or "N s with the
    // earlier stages").
    let earlier_seconds = a
        .init
        .as_ref()
        .and_then(|dir| std::fs::read_to_string(dir.join("README.md")).ok())
        .and_then(|card| {
            let total = card
                .split(" s with the earlier stages")
                .next()
                .filter(|head| head.len() < card.len())
                .and_then(|head| head.rsplit(' ').next().map(str::to_string));
            let single = card
                .split("took ")
                .nth(1)
                .and_then(|tail| tail.split(' ').next().map(str::to_string));
            total.or(single)?.parse::<f64>().ok()
        });
    let card = Card {
        earlier_seconds,
        params: config.num_params()?,
        config: &config,
        commands: commands.join("\n"),
        seconds,
        device: if a.cuda {
            "CUDA"
        } else {
            "2 CPU cores (flex backend)"
        },
        final_loss,
        final_acc: &final_acc,
        final_n: a.final_eval,
        history: &history,
    };
    let text = match a.tasks {
        Tasks::Digits => card.digits(),
        _ => card.hard(),
    };
    std::fs::write(a.out.join("README.md"), text)?;
    if checkpoint.exists() {
        // The finished model supersedes it.
        std::fs::remove_dir_all(&checkpoint)?;
    }
    println!(
        "saved to {}; held-out exact match {} ({} problems per task)",
        a.out.display(),
        format_accuracy(&final_acc),
        a.final_eval
    );
    Ok(())
}

/// What a model card reports.
struct Card<'a> {
    params: usize,
    config: &'a LladaConfig,
    commands: String,
    seconds: f64,
    device: &'static str,
    final_loss: f64,
    final_acc: &'a [(&'static str, f64)],
    final_n: usize,
    history: &'a [CurvePoint],
    /// Training seconds of the stages before this one (`--init` from a `hard` card).
    earlier_seconds: Option<f64>,
}

impl Card<'_> {
    /// The opening of both cards: what the model is and how it was trained.
    fn intro(&self) -> String {
        format!(
            "A {}-parameter model of the LLaDA architecture ({} layers, d_model {}, {} heads, \
             SwiGLU {}, character vocabulary of {}), trained from scratch by this crate with the masked \
             diffusion objective of LLaDA's supervised fine-tuning",
            self.params,
            self.config.n_layers,
            self.config.d_model,
            self.config.n_heads,
            self.config.mlp_hidden_size,
            vocab_size()
        )
    }

    fn curve(&self) -> String {
        self.history
            .iter()
            .map(|(s, l, acc)| {
                let cells: Vec<String> = acc
                    .iter()
                    .map(|(_, a)| format!("{:.1}%", 100.0 * a))
                    .collect();
                format!("| {s} | {l:.4} | {} |", cells.join(" | "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn digits(&self) -> String {
        format!(
            "# tiny-llada\n\n\
             {intro}. It exists so that the examples show real answers \
             and the cache's effect on answer quality can be measured; it knows nothing else.\n\n\
             **Task.** The prompt shows six worked examples `ddddd>ddddd;` of one hidden operation on 5-digit \
             strings (copy, +1 on every digit mod 10, +5 mod 10, or 9 - digit) and a query `ddddd>`; the answer \
             applies the operation to the query, then EOS up to 8 tokens. Exact match. Held-out problems (prompt \
             hash = 0 mod 10) are never trained on.\n\n\
             **Training.** AdamW (weight decay 0.01, clip 1.0), warm-up then cosine decay of the learning \
             rate; this stage took {secs:.0} s on {device}. Commands, in order:\n\n{commands}\n\n\
             **Result.** Final smoothed loss {final_loss:.4}; exact match on {n} held-out problems (greedy, 8 steps, \
             no cache): {acc:.1}%. `cargo run --release --example eval_tiny` measures it with and without the cache.\n\n\
             Training curve (step, smoothed loss, exact match on 64 held-out problems):\n\n{curve}\n",
            intro = self.intro(),
            commands = self.commands,
            secs = self.seconds,
            device = self.device,
            final_loss = self.final_loss,
            n = self.final_n,
            acc = 100.0 * self.final_acc.first().map_or(0.0, |a| a.1),
            curve = self.curve(),
        )
    }

    fn hard(&self) -> String {
        format!(
            "# tiny-llada-hard\n\n\
             {intro}, on tasks chosen so that caching and parallel \
             decoding can cost answers (see `examples/shared/hard_tasks.rs`). It knows nothing else.\n\n\
             **Tasks** (32-token responses: the answer, then EOS; decoded in blocks of 8, exact match):\n\n\
             - `mul`: `a*7=` with a 16-digit number written least significant digit first; the answer is the \
             product in the same order (16 or 17 digits). A digit's carry (0 to 6) often depends on the carry \
             below it, so the answer digits depend on each other.\n\
             - `fewshot`: 21 worked examples `ddddd>ddddd;` of one hidden digit operation (copy, +1, +5 or \
             9 - d on every digit) and a query `ddddd>`, 259 prompt tokens; the answer applies the operation to \
             the query. Training draws 1 to 22 examples.\n\
             {retrieval}\n\
             Held-out problems (prompt hash = 0 mod 10) are never trained on. Training steps take the tasks in \
             turns, one task per batch. Tried and not used (docs/benchmarks.md): addition of two 16-digit \
             numbers and a key-value lookup with two-letter keys in a 262-token prompt (`--tasks mul-lookup`), \
             which this model did not learn within the budget.\n\n\
             **Training.** AdamW (weight decay 0.01, clip 1.0), warm-up then cosine decay of the learning \
             rate; {time} on {device}. Commands, in order:\n\n{commands}\n\n\
             **Result.** Final smoothed loss {final_loss:.4}; exact match on {n} held-out problems per task \
             (greedy, 32 steps, blocks of 8, no cache): {acc}. `cargo run --release --example eval_tiny -- --model \
             models/tiny-llada-hard` measures every cache policy and decoding rule on it.\n\n\
             Training curve of the last stage (step, smoothed loss, exact match on held-out problems):\n\n\
             | step | loss | {names} |\n|---:|---:|{align}\n{curve}\n",
            intro = self.intro(),
            retrieval = self
                .final_acc
                .iter()
                .filter_map(|(n, _)| match *n {
                    "retrieval" => Some(
                        "- `retrieval`: 26 facts `k=ddddddd;` (every letter once as a key, in random \
                         order, seven-digit values) and a query `k?`, 263 prompt tokens; the answer is \
                         the query's value. Training draws 1 to 26 facts.\n",
                    ),
                    "passkey" => Some(
                        "- `passkey`: 26 facts `k=ddddddd;`, one of them (at a random place) keyed `+` \
                         instead of a letter, and the query `+?`, 263 prompt tokens; the answer is the \
                         passkey's seven digits. Training draws 1 to 26 facts.\n",
                    ),
                    _ => None,
                })
                .collect::<String>(),
            names = self.final_acc.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" | "),
            align = "---:|".repeat(self.final_acc.len()),
            commands = self.commands,
            time = match self.earlier_seconds {
                Some(earlier) => format!(
                    "this stage took {:.0} s, {:.0} s with the earlier stages,",
                    self.seconds,
                    self.seconds + earlier
                ),
                None => format!("took {:.0} s", self.seconds),
            },
            device = self.device,
            final_loss = self.final_loss,
            n = self.final_n,
            acc = format_accuracy(self.final_acc),
            curve = self.curve(),
        )
    }
}
