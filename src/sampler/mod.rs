//! Samplers: iterative unmasking loops that drive a [`Denoiser`] under a
//! [`CachePolicy`](crate::CachePolicy).
//!
//! Every sampler starts the response as `[MASK]` tokens and, step by step, commits the tokens
//! it is most confident about. They share the output types here: [`GenerationOutput`] with
//! [`GenerationStats`], and the per-step [`StepEvent`] given to a streaming callback, which can
//! stop the generation early by returning [`ControlFlow::Break`].

pub mod commit;
pub mod dream;
pub mod llada;

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::Duration;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cache::StepInfo;
use crate::denoiser::{Denoiser, LayerTrace};
use crate::error::{Error, Result};
use crate::flops::FlopCounter;

pub use commit::CommitRule;
pub use dream::{
    DreamAlg, DreamSampler, DreamSamplerConfig, dream_timestep, dream_timesteps,
    dream_transfer_count,
};
pub use llada::{LladaSampler, LladaSamplerConfig, Remasking};

/// One token committed at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Commit {
    /// Absolute position in the sequence (prompt included).
    pub position: usize,
    /// The token written there.
    pub token: u32,
    /// The score it was selected by (probability, margin, negative entropy or random draw,
    /// depending on the sampler's rule).
    pub confidence: f32,
}

/// Which pass of a step a forward belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The model on the current sequence.
    Conditional,
    /// Classifier-free guidance: the sequence with its prompt masked.
    Unconditional,
}

/// What one forward of a step did, layer by layer (recorded when layer tracing is on).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardTrace {
    /// Which pass.
    pub pass: Pass,
    /// The forward's index among the forwards sharing its feature cache (0-based).
    pub index: usize,
    /// The step information the policy saw.
    pub info: StepInfo,
    /// One entry per layer.
    pub layers: Vec<LayerTrace>,
}

/// Given to the streaming callback after every step.
#[derive(Debug)]
#[non_exhaustive]
pub struct StepEvent<'a> {
    /// 0-based step.
    pub step: usize,
    /// Steps the generation will take if not stopped.
    pub total_steps: usize,
    /// Semi-autoregressive block of this step (0 for samplers without blocks).
    pub block: usize,
    /// Prompt length; the response starts here.
    pub prompt_len: usize,
    /// Per batch row, the tokens committed at this step, in selection order.
    pub committed: &'a [Vec<Commit>],
    /// Per batch row, the whole sequence after this step (masks where not yet committed).
    pub sequences: &'a [Vec<u32>],
    /// The forwards of this step with their layer traces (empty unless tracing is on).
    pub forwards: &'a [ForwardTrace],
    /// Per batch row, whether it commits nothing more; set through [`stop_row`](Self::stop_row).
    pub(crate) stopped: &'a [Cell<bool>],
}

impl StepEvent<'_> {
    /// Stops batch row `row`: it commits nothing more (its sequence keeps what it has), and
    /// the generation ends once every row has stopped or reached a stop token. The row stays in
    /// the batch's forwards until then. Out-of-range rows are ignored.
    pub fn stop_row(&self, row: usize) {
        if let Some(flag) = self.stopped.get(row) {
            flag.set(true);
        }
    }

    /// Whether batch row `row` was stopped by the callback.
    pub fn is_row_stopped(&self, row: usize) -> bool {
        self.stopped.get(row).is_some_and(Cell::get)
    }
}

/// Counters of a finished generation.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct GenerationStats {
    /// Sampler steps taken.
    pub steps: usize,
    /// Model forwards run (more than `steps` with classifier-free guidance).
    pub forwards: usize,
    /// FLOPs executed.
    pub flops: FlopCounter,
    /// Largest size of the feature caches during the generation, in bytes.
    pub peak_cache_bytes: usize,
    /// Wall-clock time of the generation.
    pub wall_time: Duration,
    /// Whether the callback stopped the generation before its last step.
    pub stopped_early: bool,
    /// Steps run in each block (one entry for a sampler without blocks): what the FLOPs
    /// estimator needs to replay a generation whose commit rule decides the step count.
    pub block_steps: Vec<usize>,
}

impl GenerationStats {
    /// Generated positions per second of wall time, for `tokens` generated positions.
    pub fn tokens_per_second(&self, tokens: usize) -> f64 {
        tokens as f64 / self.wall_time.as_secs_f64().max(1e-12)
    }
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerationOutput {
    /// Per batch row, prompt followed by the response (the mask token where a position was
    /// never committed, after an early stop).
    pub sequences: Vec<Vec<u32>>,
    /// Length of the prompt part of every row.
    pub prompt_len: usize,
    /// Counters.
    pub stats: GenerationStats,
}

impl GenerationOutput {
    /// The response part of batch row `row`.
    ///
    /// # Panics
    /// If `row` is not a batch row.
    pub fn response(&self, row: usize) -> &[u32] {
        &self.sequences[row][self.prompt_len..]
    }
}

/// The streaming callback type.
pub type OnStep<'a> = dyn FnMut(&StepEvent<'_>) -> ControlFlow<()> + 'a;

/// The most denoising steps a sampler accepts: every step is at least one forward pass, and
/// Dream's float32 timestep schedule distinguishes step indices exactly only up to 2^24.
pub const MAX_STEPS: usize = 1 << 24;

/// The longest sequence (prompt plus response) a sampler lays out: rotary positions are
/// float32, exact up to 2^24, whatever a model's config claims.
pub const MAX_SEQUENCE: usize = 1 << 24;

/// How many of `masks` tokens to commit at each of `steps` steps: the same number each step,
/// the remainder spread over the first steps (LLaDA's `get_num_transfer_tokens`). See
/// [`transfer_count`] for one step without building the list.
pub fn transfer_schedule(masks: usize, steps: usize) -> Vec<usize> {
    (0..steps)
        .map(|i| transfer_count(masks, steps, i))
        .collect()
}

/// Entry `step` of [`transfer_schedule`]`(masks, steps)` (0 when `steps` is 0).
pub fn transfer_count(masks: usize, steps: usize, step: usize) -> usize {
    if steps == 0 {
        return 0;
    }
    masks / steps + usize::from(step < masks % steps)
}

/// Checks `steps` against [`MAX_STEPS`].
pub(crate) fn validate_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    if steps > MAX_STEPS {
        return Err(Error::invalid(
            "steps",
            format!("{steps} exceeds the maximum of {MAX_STEPS} (2^24)"),
        ));
    }
    Ok(())
}

/// Checks what a sampler relies on from a model: a vocabulary, room for a sequence, and
/// special ids inside the vocabulary.
fn validate_model(model: &dyn Denoiser) -> Result<()> {
    let vocab = model.vocab_size();
    let special = model.special_tokens();
    let ids = [
        ("mask", Some(special.mask)),
        ("eos", Some(special.eos)),
        ("pad", Some(special.pad)),
        ("bos", special.bos),
    ];
    for (name, id) in ids {
        if let Some(id) = id
            && id as usize >= vocab
        {
            return Err(Error::invalid(
                "model",
                format!("its {name} token {id} is outside its vocabulary of {vocab}"),
            ));
        }
    }
    Ok(())
}

/// Checks the logits a denoiser returned for a forward: `[batch, rows, vocab]` exactly.
pub(crate) fn validate_logits(
    logits: &Tensor<3>,
    batch: usize,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let dims = logits.dims();
    if dims != [batch, rows, vocab] {
        return Err(Error::invalid(
            "logits",
            format!(
                "the denoiser returned logits of shape {dims:?} where [{batch}, {rows}, {vocab}] was asked for"
            ),
        ));
    }
    Ok(())
}

/// Which rows of a batch commit nothing more: those whose committed prefix reached a stop
/// token, and those the streaming callback stopped ([`StepEvent::stop_row`]).
pub(crate) struct Stops {
    tokens: Vec<u32>,
    mask: u32,
    prompt_len: usize,
    stopped: Vec<Cell<bool>>,
}

impl Stops {
    pub(crate) fn new(tokens: &[u32], mask: u32, prompt_len: usize, rows: usize) -> Self {
        Self {
            tokens: tokens.to_vec(),
            mask,
            prompt_len,
            stopped: (0..rows).map(|_| Cell::new(false)).collect(),
        }
    }

    /// Whether row `r` (its whole sequence `seq`) is done.
    pub(crate) fn done(&self, r: usize, seq: &[u32]) -> bool {
        self.stopped.get(r).is_some_and(Cell::get)
            || row_finished(&seq[self.prompt_len..], self.mask, &self.tokens)
    }

    /// Whether every row is done.
    pub(crate) fn all_done(&self, seqs: &[Vec<u32>]) -> bool {
        seqs.iter().enumerate().all(|(r, s)| self.done(r, s))
    }

    /// The flags a [`StepEvent`] lets the callback set.
    pub(crate) fn flags(&self) -> &[Cell<bool>] {
        &self.stopped
    }

    /// Whether the callback stopped any row.
    pub(crate) fn any_stopped(&self) -> bool {
        self.stopped.iter().any(Cell::get)
    }
}

/// Whether a row is done: its committed prefix (up to the first mask) holds a stop token, so
/// everything after that token would be trimmed anyway.
pub(crate) fn row_finished(response: &[u32], mask: u32, stop: &[u32]) -> bool {
    !stop.is_empty()
        && response
            .iter()
            .take_while(|&&t| t != mask)
            .any(|t| stop.contains(t))
}

/// A validated batch: every prompt left-padded to the longest, followed by masks.
pub(crate) struct Batch {
    /// Padded prompt length.
    pub prompt_len: usize,
    /// Left padding of each row.
    pub pads: Vec<usize>,
    /// Prompt (padded) then masks, per row.
    pub seqs: Vec<Vec<u32>>,
}

/// Validates `prompts` (see [`validate_ragged_prompts`]) and lays them out for generation:
/// `gen_len` masks after each.
pub(crate) fn prepare_batch(
    model: &dyn Denoiser,
    prompts: &[Vec<u32>],
    gen_len: usize,
) -> Result<Batch> {
    validate_model(model)?;
    let special = model.special_tokens();
    let (p, pads) = validate_ragged_prompts(model, prompts, gen_len)?;
    if pads.iter().any(|&n| n > 0) && special.pad == special.mask {
        return Err(Error::invalid(
            "prompts",
            "prompts differ in length but the model's pad token equals its mask token",
        ));
    }
    let seqs = prompts
        .iter()
        .zip(&pads)
        .map(|(r, &pad)| {
            let mut s = vec![special.pad; pad];
            s.extend_from_slice(r);
            s.resize(p + gen_len, special.mask);
            s
        })
        .collect();
    Ok(Batch {
        prompt_len: p,
        pads,
        seqs,
    })
}

/// Checks a batch of prompts of any lengths; returns the longest length and each row's left
/// padding to it.
fn validate_ragged_prompts(
    model: &dyn Denoiser,
    prompts: &[Vec<u32>],
    gen_length: usize,
) -> Result<(usize, Vec<usize>)> {
    if prompts.is_empty() {
        return Err(Error::invalid("prompts", "the batch is empty"));
    }
    if let Some(row) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::invalid(
            "prompts",
            format!("prompt of row {row} is empty"),
        ));
    }
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let len = p.saturating_add(gen_length);
    let max = model.max_seq_len().min(MAX_SEQUENCE);
    if len > max {
        return Err(Error::SequenceTooLong { len, max });
    }
    let vocab = model.vocab_size();
    let mask = model.special_tokens().mask;
    for (row, prompt) in prompts.iter().enumerate() {
        for (position, &id) in prompt.iter().enumerate() {
            if id as usize >= vocab {
                return Err(Error::TokenOutOfRange {
                    id: id as i64,
                    row,
                    position,
                    vocab,
                });
            }
            if id == mask {
                return Err(Error::invalid(
                    "prompts",
                    format!("row {row} position {position} holds the mask token {mask}"),
                ));
            }
        }
    }
    Ok((p, prompts.iter().map(|r| p - r.len()).collect()))
}

/// Uploads a batch of equal-length rows.
pub(crate) fn tokens_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let len = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
}

pub(crate) fn backend_err(e: impl std::fmt::Debug) -> Error {
    Error::Backend(format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_gives_remainder_to_first_steps() {
        assert_eq!(transfer_schedule(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(transfer_schedule(8, 8), vec![1; 8]);
        assert_eq!(transfer_schedule(3, 5), vec![1, 1, 1, 0, 0]);
        assert_eq!(transfer_schedule(0, 3), vec![0, 0, 0]);
        assert_eq!(transfer_schedule(5, 0), Vec::<usize>::new());
        for (masks, steps) in [(10, 4), (3, 5), (1_000_003, 1 << 20)] {
            let whole = transfer_schedule(masks, steps);
            assert_eq!(whole.iter().sum::<usize>(), masks);
            for step in [0, steps / 2, steps - 1] {
                assert_eq!(transfer_count(masks, steps, step), whole[step]);
            }
        }
    }
}
