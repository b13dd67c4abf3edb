//! The scheduler: a bounded queue of jobs and one worker thread that runs them in batches on the
//! one loaded model.
//!
//! The worker takes the oldest waiting job and, with it, every other waiting job that can share
//! its forwards exactly (same generation settings, see [`batchable`]) up to the configured
//! batch size and token budget; jobs that arrive meanwhile wait for the next batch. A batch is
//! one ragged batch of the library (different prompt lengths, per-row stop at EOS): at
//! temperature 0 every row produces what its request produces alone. Each row streams the text
//! that became final at every step to its job's channel; a job whose receiver is gone (the
//! client disconnected) or whose deadline passed is stopped in the batch and commits nothing
//! more, and the batch ends as soon as all its rows are done.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dllm_cache::pipeline::{CacheChoice, Completion, GenerateOptions, Model, Pipeline};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most rows per batch.
    pub max_batch: usize,
    /// Most positions (rows x (longest prompt + generation length)) per batch.
    pub token_budget: usize,
    /// Most jobs waiting; beyond it a request is refused (HTTP 429).
    pub max_queue: usize,
    /// How long a job may wait and run in all.
    pub timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            token_budget: 16_384,
            max_queue: 64,
            timeout: Duration::from_secs(120),
        }
    }
}

/// What a job reports to its request.
#[derive(Debug)]
pub enum JobEvent {
    /// Text that became final.
    Delta(String),
    /// The finished completion.
    Done(Box<Completion>),
    /// The job failed.
    Failed(String),
}

/// One request's generation.
pub struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub deadline: Instant,
    pub events: UnboundedSender<JobEvent>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full.
    QueueFull,
    /// The engine is shutting down.
    Closed,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The shared scheduler state. Cloning shares it.
#[derive(Clone)]
pub struct Engine {
    pipeline: Arc<Pipeline>,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
}

/// Whether jobs with these settings may share a batch and still each produce exactly what
/// they produce alone: greedy decoding (sampled draws are row-major over the batch), not
/// dLLM-Cache under an adaptive commit rule (its refresh schedule counts forwards, and rows
/// that finish a block early would shift it for the others), and for Dream only its block
/// sampler (its own sampler commits `int(mean masks per row x ...)` per step, which couples
/// rows once some stop).
pub fn batchable(pipeline: &Pipeline, options: &GenerateOptions) -> bool {
    let dllm = matches!(options.cache, CacheChoice::Dllm(_));
    let dream_plain = matches!(pipeline.model(), Model::Dream(_)) && options.block_length.is_none();
    options.temperature == 0.0 && !(dllm && options.commit.is_adaptive()) && !dream_plain
}

impl Engine {
    /// An engine over `pipeline`; starts its worker thread.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn start(
        pipeline: Arc<Pipeline>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let engine = Self {
            pipeline,
            queue: Arc::new((
                Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    closed: false,
                }),
                Condvar::new(),
            )),
            config,
            metrics,
        };
        let worker = engine.clone();
        std::thread::Builder::new()
            .name("dllm-cache-worker".into())
            .spawn(move || worker.run())?;
        Ok(engine)
    }

    /// The pipeline the engine runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The scheduler limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        let (lock, ready) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.jobs.len() >= self.config.max_queue {
            return Err(Refused::QueueFull);
        }
        q.jobs.push_back(job);
        self.metrics.set_queue_depth(q.jobs.len());
        ready.notify_one();
        Ok(())
    }

    /// Stops the worker after the batch it runs; waiting jobs fail.
    pub fn shutdown(&self) {
        let (lock, ready) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        for job in q.jobs.drain(..) {
            let _ = job
                .events
                .send(JobEvent::Failed("the server is shutting down".into()));
        }
        ready.notify_all();
    }

    /// The next batch: the oldest job and every compatible waiting job within the limits.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let (lock, ready) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        while q.jobs.is_empty() && !q.closed {
            q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        let first = q.jobs.pop_front()?;
        let mut batch = vec![first];
        if batchable(&self.pipeline, &batch[0].options) {
            let gen_len = batch[0].options.max_new_tokens;
            let mut longest = batch[0].prompt.len();
            let mut i = 0;
            while i < q.jobs.len() && batch.len() < self.config.max_batch {
                let candidate = &q.jobs[i];
                let longer = longest.max(candidate.prompt.len());
                let fits = (batch.len() + 1) * (longer + gen_len) <= self.config.token_budget;
                if candidate.options == batch[0].options && fits {
                    longest = longer;
                    batch.extend(q.jobs.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.metrics.set_queue_depth(q.jobs.len());
        Some(batch)
    }

    fn run(&self) {
        while let Some(batch) = self.next_batch() {
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        // Jobs whose client left or whose time ran out while they waited do not run.
        let (jobs, late): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| !j.events.is_closed() && j.deadline > now);
        for job in late {
            let _ = job
                .events
                .send(JobEvent::Failed("timed out in the queue".into()));
            self.metrics.count_failure();
        }
        if jobs.is_empty() {
            return;
        }
        self.metrics.count_batch(jobs.len());
        let prompts: Vec<Vec<u32>> = jobs.iter().map(|j| j.prompt.clone()).collect();
        let options = jobs[0].options.clone();
        let started = Instant::now();
        let result = self
            .pipeline
            .generate_batch_ids(&prompts, &options, &mut |row, event| {
                let job = &jobs[row];
                if job.events.is_closed() || Instant::now() > job.deadline {
                    return ControlFlow::Break(());
                }
                if !event.text.is_empty() {
                    let _ = job.events.send(JobEvent::Delta(event.text.to_string()));
                }
                ControlFlow::Continue(())
            });
        match result {
            Ok(completions) => {
                let first = &completions[0].stats;
                self.metrics.count_generation(
                    completions.iter().map(|c| c.tokens.len()).sum(),
                    started.elapsed(),
                    first.forwards,
                    first.flops_saved,
                );
                for (job, completion) in jobs.iter().zip(completions) {
                    if Instant::now() > job.deadline {
                        let _ = job.events.send(JobEvent::Failed("timed out".into()));
                        self.metrics.count_failure();
                    } else {
                        let _ = job.events.send(JobEvent::Done(Box::new(completion)));
                    }
                }
            }
            Err(e) => {
                for job in &jobs {
                    let _ = job.events.send(JobEvent::Failed(e.to_string()));
                    self.metrics.count_failure();
                }
            }
        }
    }
}
