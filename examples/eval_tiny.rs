//! Exact match of a shipped tiny model on held-out problems of its tasks under every cache
//! policy and decoding rule of the crate, with the forwards, the FLOPs reduction and the
//! wall-clock speedup of each setting measured in the same run.
//!
//! ```text
//! cargo run --release --example eval_tiny                                        # models/tiny-llada
//! cargo run --release --example eval_tiny -- --model models/tiny-llada-hard --json
//! cargo run --release --example eval_tiny -- --model models/tiny-llada-hard --svg docs/quality-vs-speed.svg
//! cargo run --release --example eval_tiny -- --model models/tiny-llada-hard --only mul \
//!     --settings 2 --extra-dllm 1/7/0.25     # no cache, official dLLM-Cache, prompt every step
//! ```
//!
//! Every setting answers the same problems (the first `--problems` held-out problems of each
//! task drawn from `--seed`; never trained on), greedily. The settings take turns batch by
//! batch, so a drift of the machine's speed during the run reaches all of them alike. Ratios
//! are against the first setting (no cache, fixed schedule), totalled over the tasks and per
//! task. `nfe` is forwards per generation call (per problem at `--batch 1`).
//!
//! The task set follows the model: `hard` (`examples/shared/hard_tasks.rs`: 16-digit
//! multiplication by 7, a 21-shot digit operation in a 259-token prompt and a passkey among 26
//! facts in a 263-token prompt, 32 tokens in blocks of 8, 32 steps) for a model whose
//! `generation_config.json` asks for 32 new tokens, else `digits` (the shipped tiny model's
//! few-shot digit operations, one task per operation, 8 tokens in 8 steps); `--tasks`
//! overrides it.

#[path = "shared/cli.rs"]
mod cli;
#[path = "shared/hard_tasks.rs"]
mod hard_tasks;
#[path = "shared/machine.rs"]
mod machine;
#[path = "shared/tiny_task.rs"]
mod tiny_task;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::CacheChoice;
use dllm_cache::sampler::CommitRule;
use dllm_cache::{DllmCacheConfig, FlopCounter, Llada, LladaSamplerConfig, SplitMix64};
use plotters::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tasks {
    /// Decide from the model's generation_config.json.
    Auto,
    /// The few-shot digit operations of models/tiny-llada.
    Digits,
    /// Multiplication, the long few-shot prompt and the passkey of models/tiny-llada-hard.
    Hard,
}

#[derive(Parser, Debug)]
#[command(about = "Evaluate a tiny model under every cache policy and decoding rule")]
struct Args {
    /// Model folder (default: the shipped models/tiny-llada).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Tasks::Auto)]
    tasks: Tasks,
    /// Held-out problems per task (for `digits`, per operation).
    #[arg(long, default_value_t = 300)]
    problems: usize,
    /// Evaluate only these tasks (comma separated; default: all of the task set).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Problems per generation call (a batch of equal-length prompts).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seed of the held-out problem streams.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the accuracy-against-speedup plot (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Add a dLLM-Cache setting `KP/KR/RHO` after the fixed twelve (repeatable); for
    /// questions the table raises, not part of it.
    #[arg(long)]
    extra_dllm: Vec<String>,
    /// Run only these of the fixed settings, by the table's `#` (comma separated; setting 1,
    /// no cache, always runs: the ratios are against it; so do `--extra-dllm` settings).
    #[arg(long, value_delimiter = ',')]
    settings: Vec<usize>,
}

/// One evaluated configuration: a cache policy and a commit rule.
struct Setting {
    /// The table's `#` (1-based; extra settings follow the fixed twelve).
    number: usize,
    name: String,
    /// The policy's name in the JSON output.
    policy: String,
    cache: CacheChoice,
    decode: CommitRule,
}

/// The table's settings, fixed before any was measured: the aggressive ones are chosen to be
/// aggressive (the response never or rarely refreshed, nothing re-verified), not tuned.
/// dLLM-Cache with prompt interval `kp`, response interval `kr`, refresh ratio `rho`, and
/// layer 0 recomputed at every step when `l0` (the official code's refresh).
fn dllm(kp: usize, kr: usize, rho: f64, l0: bool) -> CacheChoice {
    CacheChoice::Dllm(
        DllmCacheConfig::new()
            .with_prompt_interval(kp)
            .with_response_interval(kr)
            .with_refresh_ratio(rho)
            .with_refresh_first_layer(l0),
    )
}

fn settings() -> Vec<Setting> {
    let s = |name: &str, policy: &str, cache, decode| Setting {
        number: 0,
        name: name.to_string(),
        policy: policy.to_string(),
        cache,
        decode,
    };
    use CommitRule::{Schedule, Threshold};
    vec![
        s("none", "none", CacheChoice::None, Schedule),
        s(
            "dllm 100/7/0.25 (official defaults)",
            "dllm:100/7/0.25",
            dllm(100, 7, 0.25, true),
            Schedule,
        ),
        s(
            "dllm 25/5/0.25",
            "dllm:25/5/0.25",
            dllm(25, 5, 0.25, true),
            Schedule,
        ),
        s(
            "dllm 100/16/0, layer 0 cached (aggressive)",
            "dllm:100/16/0:cached-layer0",
            dllm(100, 16, 0.0, false),
            Schedule,
        ),
        s(
            "dllm 100/32/0, layer 0 cached (aggressive)",
            "dllm:100/32/0:cached-layer0",
            dllm(100, 32, 0.0, false),
            Schedule,
        ),
        s("prefix", "prefix", CacheChoice::Prefix, Schedule),
        s("dual", "dual", CacheChoice::Dual, Schedule),
        s("threshold 0.9", "none", CacheChoice::None, Threshold(0.9)),
        s("threshold 0.7", "none", CacheChoice::None, Threshold(0.7)),
        s(
            "dual + threshold 0.9",
            "dual",
            CacheChoice::Dual,
            Threshold(0.9),
        ),
        s(
            "dual + threshold 0.7",
            "dual",
            CacheChoice::Dual,
            Threshold(0.7),
        ),
        s(
            "dllm 100/7/0.25 + threshold 0.9",
            "dllm:100/7/0.25",
            dllm(100, 7, 0.25, true),
            Threshold(0.9),
        ),
    ]
}

/// `KP/KR/RHO` of `--extra-dllm`: a dLLM-Cache setting outside the fixed table (layer 0
/// refreshed at every step, as in the official code), for a question the table raised.
fn extra_dllm(spec: &str) -> Result<Setting, String> {
    let bad = || format!("--extra-dllm `{spec}`: expected KP/KR/RHO, for example 1/7/0.25");
    let parts: Vec<&str> = spec.split('/').collect();
    let [kp, kr, rho] = parts.as_slice() else {
        return Err(bad());
    };
    let kp: usize = kp.parse().map_err(|_| bad())?;
    let kr: usize = kr.parse().map_err(|_| bad())?;
    let rho: f64 = rho.parse().map_err(|_| bad())?;
    Ok(Setting {
        number: 0,
        name: format!("dllm {kp}/{kr}/{rho} (extra)"),
        policy: format!("dllm:{kp}/{kr}/{rho}"),
        cache: dllm(kp, kr, rho, true),
        decode: CommitRule::Schedule,
    })
}

/// A held-out problem, tokenized.
struct Problem {
    prompt: Vec<u32>,
    answer: String,
}

/// A task's problems and how its responses are decoded.
struct TaskSet {
    name: &'static str,
    /// (task name, its problems)
    tasks: Vec<(&'static str, Vec<Problem>)>,
    gen_length: usize,
    block_length: usize,
}

fn task_set(kind: Tasks, problems: usize, seed: u64) -> TaskSet {
    match kind {
        Tasks::Hard | Tasks::Auto => TaskSet {
            name: "hard",
            tasks: hard_tasks::Task::ALL
                .iter()
                .map(|&task| {
                    let mut rng = SplitMix64::new(seed ^ (0x9e37 * (task as u64 + 1)));
                    let list = (0..problems)
                        .map(|_| {
                            let p = hard_tasks::next_eval_problem(&mut rng, task);
                            Problem {
                                prompt: tiny_task::encode_prompt(&p.prompt),
                                answer: p.answer,
                            }
                        })
                        .collect();
                    (task.name(), list)
                })
                .collect(),
            gen_length: hard_tasks::GEN_LENGTH,
            block_length: hard_tasks::BLOCK_LENGTH,
        },
        Tasks::Digits => {
            let mut rng = SplitMix64::new(seed);
            let names = ["copy", "increment", "addfive", "complement"];
            let mut tasks: Vec<(&'static str, Vec<Problem>)> =
                names.iter().map(|&n| (n, Vec::new())).collect();
            // The first `problems` held-out problems of each operation in one stream.
            while tasks.iter().any(|(_, list)| list.len() < problems) {
                let p = tiny_task::next_problem(&mut rng, true);
                let i = tiny_task::Op::ALL
                    .iter()
                    .position(|&op| op == p.op)
                    .unwrap_or(0);
                if tasks[i].1.len() < problems {
                    tasks[i].1.push(Problem {
                        prompt: tiny_task::encode_prompt(&p.prompt),
                        answer: p.answer,
                    });
                }
            }
            TaskSet {
                name: "digits",
                tasks,
                gen_length: tiny_task::GEN_LENGTH,
                block_length: tiny_task::GEN_LENGTH,
            }
        }
    }
}

/// Which task set a model folder was trained on: its generation_config.json's length.
fn detect(dir: &Path) -> Tasks {
    std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["max_new_tokens"].as_u64())
        .map_or(Tasks::Digits, |n| {
            if n as usize == hard_tasks::GEN_LENGTH {
                Tasks::Hard
            } else {
                Tasks::Digits
            }
        })
}

/// Counters of one setting on one task.
#[derive(Default, Clone)]
struct Tally {
    correct: usize,
    problems: usize,
    calls: usize,
    forwards: usize,
    flops: FlopCounter,
    seconds: f64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.correct += other.correct;
        self.problems += other.problems;
        self.calls += other.calls;
        self.forwards += other.forwards;
        self.flops += other.flops;
        self.seconds += other.seconds;
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.problems.max(1) as f64
    }

    fn nfe(&self) -> f64 {
        self.forwards as f64 / self.calls.max(1) as f64
    }

    /// This tally's accuracy, NFE and ratios against `base`.
    fn json(&self, base: &Tally) -> serde_json::Value {
        serde_json::json!({
            "accuracy": self.accuracy(),
            "nfe": self.nfe(),
            "flops_reduction": base.flops.total() as f64 / self.flops.total().max(1) as f64,
            "speedup": base.seconds / self.seconds.max(1e-12),
            "seconds": self.seconds,
            "gflops": self.flops.total() as f64 / 1e9,
        })
    }
}

fn main() -> std::process::ExitCode {
    cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    if a.problems == 0 || a.batch == 0 {
        return Err("--problems and --batch must be at least 1".into());
    }
    let dir = a
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada"));
    let kind = match a.tasks {
        Tasks::Auto => detect(&dir),
        k => k,
    };
    let mut set = task_set(kind, a.problems, a.seed);
    if !a.only.is_empty() {
        if let Some(bad) = a
            .only
            .iter()
            .find(|n| !set.tasks.iter().any(|(t, _)| t == n))
        {
            return Err(format!("no task `{bad}` in the {} task set", set.name).into());
        }
        set.tasks.retain(|(t, _)| a.only.iter().any(|n| n == t));
    }
    let model = Llada::from_dir(&dir, &Device::flex())?;
    let mut settings = settings();
    let fixed = settings.len();
    for spec in &a.extra_dllm {
        settings.push(extra_dllm(spec)?);
    }
    for (i, s) in settings.iter_mut().enumerate() {
        s.number = i + 1;
    }
    if !a.settings.is_empty() {
        if let Some(bad) = a.settings.iter().find(|&&n| n == 0 || n > fixed) {
            return Err(format!("--settings: no setting {bad} (1 to {fixed})").into());
        }
        // Setting 1 (no cache) stays: every ratio is against it; so do the extra settings,
        // which were asked for by name.
        settings.retain(|s| s.number == 1 || s.number > fixed || a.settings.contains(&s.number));
    }
    let samplers = settings
        .iter()
        .map(|s| {
            LladaSamplerConfig::new()
                .with_steps(set.gen_length)
                .with_gen_length(set.gen_length)
                .with_block_length(set.block_length)
                .with_commit(s.decode)
                .init()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Warm-up so that the first setting does not pay first-call costs.
    for (_, problems) in &set.tasks {
        if let Some(p) = problems.first() {
            samplers[0].generate(
                &model,
                std::slice::from_ref(&p.prompt),
                CacheChoice::None.policy()?.as_mut(),
            )?;
        }
    }
    // tallies[setting][task]
    let mut tallies = vec![vec![Tally::default(); set.tasks.len()]; settings.len()];
    let rounds = set
        .tasks
        .iter()
        .map(|(_, p)| p.len().div_ceil(a.batch))
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        for (s, setting) in settings.iter().enumerate() {
            for (t, (_, problems)) in set.tasks.iter().enumerate() {
                let start = round * a.batch;
                if start >= problems.len() {
                    continue;
                }
                let chunk = &problems[start..(start + a.batch).min(problems.len())];
                let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| p.prompt.clone()).collect();
                let mut policy = setting.cache.policy()?;
                let started = Instant::now();
                let out = samplers[s].generate(&model, &prompts, policy.as_mut())?;
                let seconds = started.elapsed().as_secs_f64();
                let tally = &mut tallies[s][t];
                tally.seconds += seconds;
                tally.calls += 1;
                tally.forwards += out.stats.forwards;
                tally.flops += out.stats.flops;
                tally.problems += chunk.len();
                tally.correct += chunk
                    .iter()
                    .enumerate()
                    .filter(|(r, p)| tiny_task::decode_answer(out.response(*r)) == p.answer)
                    .count();
            }
        }
    }
    let totals: Vec<Tally> = tallies
        .iter()
        .map(|per_task| {
            let mut total = Tally::default();
            per_task.iter().for_each(|t| total.add(t));
            total
        })
        .collect();
    let rows: Vec<serde_json::Value> = settings
        .iter()
        .enumerate()
        .map(|(s, setting)| {
            let mut row = totals[s].json(&totals[0]);
            let by_task: serde_json::Map<_, _> = set
                .tasks
                .iter()
                .enumerate()
                .map(|(t, (name, _))| (name.to_string(), tallies[s][t].json(&tallies[0][t])))
                .collect();
            let accuracy_by_task: serde_json::Map<_, _> = set
                .tasks
                .iter()
                .enumerate()
                .map(|(t, (name, _))| (name.to_string(), tallies[s][t].accuracy().into()))
                .collect();
            row["number"] = setting.number.into();
            row["setting"] = setting.name.clone().into();
            row["policy"] = setting.policy.clone().into();
            row["decode"] = setting.decode.to_string().into();
            row["accuracy_by_task"] = accuracy_by_task.into();
            row["by_task"] = by_task.into();
            row
        })
        .collect();
    if let Some(path) = &a.svg {
        plot(path, &set, &rows)?;
    }
    if a.json {
        let out = serde_json::json!({
            "model": dir.display().to_string(),
            "tasks": set.name,
            "problems_per_task": set.tasks.iter().map(|(n, p)| (n.to_string(), p.len().into())).collect::<serde_json::Map<_, _>>(),
            "batch": a.batch,
            "gen_length": set.gen_length,
            "block_length": set.block_length,
            "seed": a.seed,
            "cpu": machine::cpu_name(),
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "settings": rows,
        });
        println!("{out}");
    } else {
        print_table(&a, &set, &rows);
    }
    Ok(())
}

fn print_table(a: &Args, set: &TaskSet, rows: &[serde_json::Value]) {
    println!(
        "{} tasks, held-out problems per task: {}; greedy, {} tokens in blocks of {}, batch {}; {}\n",
        set.name,
        set.tasks
            .iter()
            .map(|(n, p)| format!("{n} {}", p.len()))
            .collect::<Vec<_>>()
            .join(", "),
        set.gen_length,
        set.block_length,
        a.batch,
        machine::cpu_name()
    );
    let names: Vec<&str> = set.tasks.iter().map(|(n, _)| *n).collect();
    println!(
        "| # | setting | {} | all | NFE | FLOPs reduction | speedup | {} |",
        names.join(" | "),
        names
            .iter()
            .map(|n| format!("{n} speedup"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---:|---|{}", "---:|".repeat(4 + 2 * names.len()));
    let pct = |v: &serde_json::Value| format!("{:.1}%", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    for r in rows {
        let by_task: Vec<String> = names
            .iter()
            .map(|n| pct(&r["accuracy_by_task"][*n]))
            .collect();
        let speedups: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "{:.2}x",
                    r["by_task"][*n]["speedup"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.2}x | {:.2}x | {} |",
            r["number"],
            r["setting"].as_str().unwrap_or_default(),
            by_task.join(" | "),
            pct(&r["accuracy"]),
            r["nfe"].as_f64().unwrap_or(f64::NAN),
            r["flops_reduction"].as_f64().unwrap_or(f64::NAN),
            r["speedup"].as_f64().unwrap_or(f64::NAN),
            speedups.join(" | ")
        );
    }
}

/// Indices of the points no other point beats on both speedup and accuracy.
fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (x, y) = points[i];
            !points
                .iter()
                .any(|&(u, v)| u >= x && v >= y && (u > x || v > y))
        })
        .collect();
    front.sort_by(|&i, &j| points[i].0.total_cmp(&points[j].0));
    front
}

/// One panel per task: accuracy against wall-clock speedup, a numbered point per setting (the
/// number is the table's `#`), the Pareto front drawn through its points.
fn plot(
    path: &Path,
    set: &TaskSet,
    rows: &[serde_json::Value],
) -> Result<(), Box<dyn std::error::Error>> {
    let panels = set.tasks.len();
    let root = SVGBackend::new(path, (460 * panels as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels));
    for (area, (task, _)) in areas.iter().zip(&set.tasks) {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r["by_task"][*task]["speedup"].as_f64().unwrap_or(0.0),
                    100.0 * r["accuracy_by_task"][*task].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.25;
        let y_min = points.iter().map(|p| p.1).fold(100.0, f64::min);
        let y_min = (y_min - 5.0).clamp(0.0, 95.0).floor();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{task}: exact match vs speedup (red: Pareto front)"),
                ("sans-serif", 17),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            // Speedups span 1x to tens of x: a log axis keeps the slow settings apart.
            .build_cartesian_2d((0.8..x_max).log_scale(), y_min..100.5)?;
        chart
            .configure_mesh()
            .x_desc("wall-clock speedup over no cache (x, log scale)")
            .y_desc("exact match (%)")
            .draw()?;
        let front = pareto(&points);
        chart.draw_series(LineSeries::new(
            front.iter().map(|&i| points[i]),
            RED.stroke_width(2),
        ))?;
        for (i, &(x, y)) in points.iter().enumerate() {
            let on_front = front.contains(&i);
            let color = if on_front { RED } else { BLUE };
            let style = if on_front {
                color.filled()
            } else {
                color.stroke_width(1)
            };
            // The number sits above and right of its point, in pixels, so it never hides it.
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, y))
                    + Circle::new((0, 0), 4, style)
                    + Text::new(
                        rows[i]["number"].to_string(),
                        (5, -14),
                        ("sans-serif", 12).into_font().color(&BLACK),
                    ),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
