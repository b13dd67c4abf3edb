//! From a Hugging Face folder to text: model, tokenizer and sampler behind one call.
//!
//! ```no_run
//! use dllm_cache::burn::tensor::Device;
//! use dllm_cache::pipeline::{GenerateOptions, Pipeline};
//! use dllm_cache::tokenizer::ChatMessage;
//!
//! # fn main() -> dllm_cache::Result<()> {
//! let pipeline = Pipeline::from_dir("LLaDA-8B-Instruct", &Device::flex())?;
//! let options = GenerateOptions::default(); // dLLM-Cache on, the official defaults
//! let reply = pipeline.chat(&[ChatMessage::user("What is 7 * 8?")], &options)?;
//! println!("{} ({:.1} tokens/s)", reply.text, reply.stats.tokens_per_second);
//! # Ok(())
//! # }
//! ```

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use burn::tensor::Device;

use crate::cache::{CachePolicy, DllmCacheConfig, DualCache, NoCache, PrefixCache};
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::estimate::{self, HeadRows, ModelShape, Sampling};
use crate::flops::FlopCounter;
use crate::model::dream::Dream;
use crate::model::llada::Llada;
use crate::model::weights::LoadOptions;
use crate::sampler::{
    CommitRule, DreamAlg, DreamSamplerConfig, GenerationOutput, LladaSamplerConfig,
};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// A loaded model of either family.
#[derive(Debug)]
#[non_exhaustive]
pub enum Model {
    /// LLaDA.
    Llada(Llada),
    /// Dream.
    Dream(Dream),
}

impl Model {
    /// Loads a Hugging Face folder, choosing the architecture from `config.json`'s
    /// `model_type` (`llada` or `Dream`, case-insensitive).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for another `model_type`; loading errors as
    /// [`Llada::from_dir`].
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_dir_with(dir, device, &LoadOptions::default())
    }

    /// As [`from_dir`](Self::from_dir), holding the weights as `options` says.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_dir_with(
        dir: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: Some(path.clone()),
            reason: e.to_string(),
        })?;
        match json.get("model_type").and_then(|v| v.as_str()) {
            Some(t) if t.eq_ignore_ascii_case("llada") => {
                Ok(Model::Llada(Llada::from_dir_with(dir, device, options)?))
            }
            Some(t) if t.eq_ignore_ascii_case("dream") => {
                Ok(Model::Dream(Dream::from_dir_with(dir, device, options)?))
            }
            other => Err(Error::Unsupported {
                field: "model_type".into(),
                reason: format!("{other:?} (supported: llada, Dream)"),
            }),
        }
    }

    /// The model as a [`Denoiser`].
    pub fn denoiser(&self) -> &dyn Denoiser {
        match self {
            Model::Llada(m) => m,
            Model::Dream(m) => m,
        }
    }

    fn shape(&self) -> ModelShape {
        match self {
            Model::Llada(m) => m.config().into(),
            Model::Dream(m) => m.config().into(),
        }
    }
}

/// Which cache policy a generation runs under.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CacheChoice {
    /// No caching.
    None,
    /// dLLM-Cache with these settings.
    Dllm(DllmCacheConfig),
    /// Fast-dLLM's prefix cache.
    Prefix,
    /// Fast-dLLM's dual cache.
    Dual,
}

impl CacheChoice {
    /// The policy this choice names.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for invalid dLLM-Cache settings.
    pub fn policy(&self) -> Result<Box<dyn CachePolicy>> {
        Ok(match self {
            CacheChoice::None => Box::new(NoCache),
            CacheChoice::Dllm(c) => Box::new(c.init()?),
            CacheChoice::Prefix => Box::new(PrefixCache::new()),
            CacheChoice::Dual => Box::new(DualCache::new()),
        })
    }
}

/// Settings of one generation. `Default` gives 128 tokens in 128 greedy steps under
/// dLLM-Cache with the official scripts' defaults (K_p 100, K_r 7, rho 0.25).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Response length in tokens (the response is trimmed at the first EOS or end-of-turn).
    pub max_new_tokens: usize,
    /// Denoising steps; `None` means one per token.
    pub steps: Option<usize>,
    /// LLaDA block length; `None` means 32 when it divides `max_new_tokens`, else one block.
    /// Dream: `Some(n)` runs Fast-dLLM's block sampler with blocks of `n`, `None` Dream's own.
    pub block_length: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f64,
    /// Dream: nucleus filtering.
    pub top_p: Option<f64>,
    /// Dream: top-k filtering.
    pub top_k: Option<usize>,
    /// Dream: position selection rule.
    pub alg: DreamAlg,
    /// LLaDA: classifier-free guidance scale.
    pub cfg_scale: f64,
    /// The cache policy.
    pub cache: CacheChoice,
    /// How many candidates a step commits (fixed schedule, Fast-dLLM threshold or factor).
    pub commit: CommitRule,
    /// Seed for every random draw.
    pub seed: u64,
    /// Stop as soon as the committed prefix of the response reaches EOS or end-of-turn (the
    /// tokens after it would be trimmed anyway).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            steps: None,
            block_length: None,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            alg: DreamAlg::Entropy,
            cfg_scale: 0.0,
            cache: CacheChoice::Dllm(DllmCacheConfig::new()),
            commit: CommitRule::Schedule,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

impl GenerateOptions {
    /// Sets `max_new_tokens`: response length in tokens.
    pub fn with_max_new_tokens(mut self, max_new_tokens: usize) -> Self {
        self.max_new_tokens = max_new_tokens;
        self
    }

    /// Sets `steps`: denoising steps; `None` means one per token.
    pub fn with_steps(mut self, steps: Option<usize>) -> Self {
        self.steps = steps;
        self
    }

    /// Sets `block_length`: lLaDA block length.
    pub fn with_block_length(mut self, block_length: Option<usize>) -> Self {
        self.block_length = block_length;
        self
    }

    /// Sets `temperature`: sampling temperature; 0 is greedy.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// Sets `top_p`: dream: nucleus filtering.
    pub fn with_top_p(mut self, top_p: Option<f64>) -> Self {
        self.top_p = top_p;
        self
    }

    /// Sets `top_k`: dream: top-k filtering.
    pub fn with_top_k(mut self, top_k: Option<usize>) -> Self {
        self.top_k = top_k;
        self
    }

    /// Sets `alg`: dream: position selection rule.
    pub fn with_alg(mut self, alg: DreamAlg) -> Self {
        self.alg = alg;
        self
    }

    /// Sets `cfg_scale`: lLaDA: classifier-free guidance scale.
    pub fn with_cfg_scale(mut self, cfg_scale: f64) -> Self {
        self.cfg_scale = cfg_scale;
        self
    }

    /// Sets `cache`: the cache policy.
    pub fn with_cache(mut self, cache: CacheChoice) -> Self {
        self.cache = cache;
        self
    }

    /// Sets `commit`: the commit rule.
    pub fn with_commit(mut self, commit: CommitRule) -> Self {
        self.commit = commit;
        self
    }

    /// Sets `seed`: seed for every random draw.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `stop_at_eos`: stop at EOS / end-of-turn.
    pub fn with_stop_at_eos(mut self, stop_at_eos: bool) -> Self {
        self.stop_at_eos = stop_at_eos;
        self
    }
}

/// What a generation cost.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CompletionStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Response tokens kept (before the stop token).
    pub completion_tokens: usize,
    /// Positions generated (the response length asked for).
    pub generated_positions: usize,
    /// Rows of the batch this completion ran in: the step, forward, FLOPs, cache and time
    /// figures below are the batch's.
    pub batch_size: usize,
    /// Denoising steps run.
    pub steps: usize,
    /// Model forwards run (NFE; more than `steps` with separate guidance passes).
    pub forwards: usize,
    /// FLOPs executed.
    pub flops: FlopCounter,
    /// Total FLOPs the same steps would have cost without a cache, minus those executed.
    pub flops_saved: u64,
    /// Largest feature-cache size, bytes.
    pub cache_bytes: usize,
    /// Wall-clock time of the generation.
    pub wall_time: Duration,
    /// Generated positions per second.
    pub tokens_per_second: f64,
    /// Whether the generation ended early at EOS / end-of-turn.
    pub stopped_at_eos: bool,
}

/// A generated response.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Completion {
    /// The text, cut before the first EOS / end-of-turn.
    pub text: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Costs.
    pub stats: CompletionStats,
}

/// Given to a streaming callback after every denoising step.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StreamEvent<'a> {
    /// Text that became final at this step (often empty: a diffusion step may commit tokens
    /// after the first still-masked position).
    pub text: &'a str,
    /// 0-based step.
    pub step: usize,
    /// Steps the generation will take if not stopped.
    pub total_steps: usize,
}

/// The streaming callback type.
pub type OnText<'a> = dyn FnMut(&StreamEvent<'_>) -> ControlFlow<()> + 'a;

/// Model + tokenizer + samplers. See the [module docs](self).
#[derive(Debug)]
pub struct Pipeline {
    model: Model,
    tokenizer: Tokenizer,
    defaults: GenerateOptions,
}

impl Pipeline {
    /// Loads model, tokenizer and generation defaults (`generation_config.json`) from a Hugging
    /// Face folder.
    ///
    /// # Errors
    /// As [`Model::from_dir`] and [`Tokenizer::from_dir`].
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_dir_with(dir, device, &LoadOptions::default())
    }

    /// As [`from_dir`](Self::from_dir), holding the weights as `options` says (for example
    /// bf16 weights with float32 compute: half the memory).
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_dir_with(
        dir: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer = Tokenizer::from_dir(dir)?;
        let model = Model::from_dir_with(dir, device, options)?;
        let defaults = defaults_from(dir.join("generation_config.json"))?;
        Ok(Self::new(model, tokenizer).with_defaults(defaults))
    }

    /// A pipeline from loaded parts.
    pub fn new(model: Model, tokenizer: Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            defaults: GenerateOptions::default(),
        }
    }

    fn with_defaults(mut self, defaults: GenerateOptions) -> Self {
        self.defaults = defaults;
        self
    }

    /// The options `generation_config.json` suggests (else [`GenerateOptions::default`]).
    pub fn default_options(&self) -> &GenerateOptions {
        &self.defaults
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Continues `prompt` (tokenized with the tokenizer's special tokens, e.g. a BOS).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty prompt or invalid options, tokenizer and
    /// generation errors.
    pub fn complete(&self, prompt: &str, options: &GenerateOptions) -> Result<Completion> {
        self.complete_stream(prompt, options, &mut |_| ControlFlow::Continue(()))
    }

    /// Answers the last message of a conversation, rendered with the chat template.
    ///
    /// # Errors
    /// As [`complete`](Self::complete), and [`Error::Tokenizer`] if the template is missing or
    /// fails.
    pub fn chat(&self, messages: &[ChatMessage], options: &GenerateOptions) -> Result<Completion> {
        self.chat_stream(messages, options, &mut |_| ControlFlow::Continue(()))
    }

    /// As [`complete`](Self::complete), calling `on_text` after every step with the text that
    /// became final; returning [`ControlFlow::Break`] stops the generation.
    ///
    /// # Errors
    /// As [`complete`](Self::complete).
    pub fn complete_stream(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: &mut OnText<'_>,
    ) -> Result<Completion> {
        let ids = self.tokenizer.encode(prompt, true)?;
        self.generate_ids(&ids, options, on_text)
    }

    /// As [`chat`](Self::chat), streaming like [`complete_stream`](Self::complete_stream).
    ///
    /// # Errors
    /// As [`chat`](Self::chat).
    pub fn chat_stream(
        &self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_text: &mut OnText<'_>,
    ) -> Result<Completion> {
        let text = self.tokenizer.apply_chat_template(messages, true)?;
        let ids = self.tokenizer.encode(&text, false)?;
        self.generate_ids(&ids, options, on_text)
    }

    /// Tokens that end a response: the model's EOS, the tokenizer's EOS ids and end-of-turn.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let t = self.tokenizer.specials();
        let mut stop = t.eos.clone();
        stop.push(self.model.denoiser().special_tokens().eos);
        stop.extend(t.end_of_turn);
        stop.sort_unstable();
        stop.dedup();
        stop
    }

    /// Generates after already tokenized prompt ids, streaming text.
    ///
    /// # Errors
    /// As [`complete`](Self::complete).
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut OnText<'_>,
    ) -> Result<Completion> {
        let mut completions = self.generate_batch_ids(
            std::slice::from_ref(&prompt.to_vec()),
            options,
            &mut |_, event| on_text(event),
        )?;
        completions
            .pop()
            .ok_or_else(|| Error::Backend("a batch of one returned no completion".into()))
    }

    /// Generates after several tokenized prompts at once, as one batch (prompts may differ in
    /// length; at temperature 0 each row gets what it would get alone). `on_text(row, event)`
    /// streams each row's text; returning [`ControlFlow::Break`] stops that row (it commits
    /// nothing more and its completion keeps what it had), and the generation ends when every
    /// row has stopped or finished. The returned stats are the batch's (`batch_size` rows).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty batch or prompt or invalid options; tokenizer
    /// and generation errors.
    pub fn generate_batch_ids(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(usize, &StreamEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<Completion>> {
        if prompts.is_empty() {
            return Err(Error::invalid("prompts", "the batch is empty"));
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::invalid("prompt", "the prompt is empty"));
        }
        let o = options;
        let denoiser = self.model.denoiser();
        let mask = denoiser.special_tokens().mask;
        let stop = self.stop_tokens();
        let g = o.max_new_tokens;
        let sampling = self.sampling(o, if o.stop_at_eos { &stop } else { &[] });
        let mut policy = o.cache.policy()?;
        let rows = prompts.len();
        let mut decoders: Vec<_> = (0..rows)
            .map(|_| self.tokenizer.incremental_decoder(mask, stop.clone()))
            .collect();
        let mut stream_err = None;
        let mut stopped_at_eos = vec![false; rows];
        let mut on_step = |event: &crate::sampler::StepEvent<'_>| {
            for (r, decoder) in decoders.iter_mut().enumerate() {
                if event.is_row_stopped(r) {
                    continue;
                }
                let response = &event.sequences[r][event.prompt_len..];
                let piece = match decoder.push(response) {
                    Ok(piece) => piece,
                    Err(e) => {
                        stream_err = Some(e);
                        return ControlFlow::Break(());
                    }
                };
                let stream = StreamEvent {
                    text: &piece,
                    step: event.step,
                    total_steps: event.total_steps,
                };
                if on_text(r, &stream).is_break() {
                    event.stop_row(r);
                    continue;
                }
                if o.stop_at_eos && crate::sampler::row_finished(response, mask, &stop) {
                    stopped_at_eos[r] = event.step + 1 < event.total_steps;
                }
            }
            ControlFlow::Continue(())
        };
        let out: GenerationOutput = match (&self.model, &sampling) {
            (Model::Llada(m), Sampling::Llada(c)) => {
                c.init()?
                    .generate_with(m, prompts, policy.as_mut(), &mut on_step)?
            }
            (Model::Dream(m), Sampling::Dream(c)) => {
                c.init()?
                    .generate_with(m, prompts, policy.as_mut(), &mut on_step)?
            }
            _ => return Err(Error::Backend("sampler and model families differ".into())),
        };
        if let Some(e) = stream_err {
            return Err(e);
        }
        let s = &out.stats;
        // What the same steps would have cost without a cache.
        let uncached = estimate::flops(
            &self.model.shape(),
            &sampling,
            &mut NoCache,
            out.prompt_len,
            rows,
            HeadRows::AsRun,
            Some(&s.block_steps),
        )?;
        (0..rows)
            .map(|r| {
                let response = out.response(r);
                let keep = response
                    .iter()
                    .position(|t| stop.contains(t) || *t == mask)
                    .unwrap_or(response.len());
                let tokens = response[..keep].to_vec();
                Ok(Completion {
                    text: self.tokenizer.decode(&tokens, true)?,
                    stats: CompletionStats {
                        prompt_tokens: prompts[r].len(),
                        completion_tokens: tokens.len(),
                        generated_positions: g,
                        batch_size: rows,
                        steps: s.steps,
                        forwards: s.forwards,
                        flops: s.flops,
                        flops_saved: uncached.total().saturating_sub(s.flops.total()),
                        cache_bytes: s.peak_cache_bytes,
                        wall_time: s.wall_time,
                        tokens_per_second: s.tokens_per_second(g),
                        stopped_at_eos: stopped_at_eos[r],
                    },
                    tokens,
                })
            })
            .collect()
    }

    /// Checks that `options` make a valid generation for this model (sampler settings, cache
    /// settings, sequence length for a `prompt_len`-token prompt) without running it: what a
    /// server checks before it queues a request.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting, or [`Error::SequenceTooLong`].
    pub fn validate_options(&self, options: &GenerateOptions, prompt_len: usize) -> Result<()> {
        options.cache.policy()?;
        match self.sampling(options, &[]) {
            Sampling::Llada(c) => {
                c.init()?;
            }
            Sampling::Dream(c) => {
                c.init()?;
            }
        }
        let len = prompt_len.saturating_add(options.max_new_tokens);
        let max = self.model.denoiser().max_seq_len();
        if len > max {
            return Err(Error::SequenceTooLong { len, max });
        }
        Ok(())
    }

    /// The sampler settings `options` give for this model, stopping at `stop`.
    fn sampling(&self, o: &GenerateOptions, stop: &[u32]) -> Sampling {
        let g = o.max_new_tokens;
        let steps = o.steps.unwrap_or(g);
        match &self.model {
            Model::Llada(_) => {
                let block = o
                    .block_length
                    .unwrap_or(if g.is_multiple_of(32) { 32 } else { g });
                Sampling::Llada(
                    LladaSamplerConfig::new()
                        .with_steps(steps)
                        .with_gen_length(g)
                        .with_block_length(block)
                        .with_temperature(o.temperature)
                        .with_cfg_scale(o.cfg_scale)
                        .with_logits_eos_inf(false)
                        .with_commit(o.commit)
                        .with_seed(o.seed)
                        .with_stop_tokens(stop.to_vec()),
                )
            }
            Model::Dream(_) => Sampling::Dream(
                DreamSamplerConfig::new()
                    .with_steps(steps)
                    .with_max_new_tokens(g)
                    .with_alg(o.alg)
                    .with_temperature(o.temperature)
                    .with_top_p(o.top_p)
                    .with_top_k(o.top_k)
                    .with_block_length(o.block_length)
                    .with_commit(o.commit)
                    .with_seed(o.seed)
                    .with_stop_tokens(stop.to_vec()),
            ),
        }
    }
}

/// Generation defaults from a model folder's `generation_config.json`, if it has one.
fn defaults_from(path: impl AsRef<Path>) -> Result<GenerateOptions> {
    let path = path.as_ref();
    if !path.is_file() {
        return Ok(GenerateOptions::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    GenerateOptions::from_generation_config(&text).map_err(|e| match e {
        Error::Config { path: None, reason } => Error::Config {
            path: Some(path.to_path_buf()),
            reason,
        },
        other => other,
    })
}

impl GenerateOptions {
    /// [`GenerateOptions::default`] with the settings a `generation_config.json` suggests:
    /// `temperature`, `top_p`, `top_k`, `max_new_tokens`, `steps` and Dream's `alg` (other
    /// fields are ignored; `null` means absent).
    ///
    /// # Errors
    /// [`Error::Config`] naming the field when the text is not a JSON object, or a field this
    /// crate reads has the wrong type or an impossible value (a negative or non-finite
    /// temperature, `top_p` outside (0, 1], `top_k` or `max_new_tokens` of 0, `steps` outside
    /// `1..=`[`MAX_STEPS`](crate::sampler::MAX_STEPS), an unknown `alg`).
    pub fn from_generation_config(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Config { path: None, reason };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let fields = json
            .as_object()
            .ok_or_else(|| bad("generation config is not a JSON object".into()))?;
        let field = |k: &str| fields.get(k).filter(|v| !v.is_null());
        let number = |k: &str| -> Result<Option<f64>> {
            field(k)
                .map(|v| {
                    v.as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(format!("`{k}` must be a finite number, got {v}")))
                })
                .transpose()
        };
        let count = |k: &str, max: usize| -> Result<Option<usize>> {
            field(k)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| (1..=max).contains(&n))
                        .ok_or_else(|| {
                            bad(format!("`{k}` must be an integer in 1..={max}, got {v}"))
                        })
                })
                .transpose()
        };
        let mut o = GenerateOptions::default();
        if let Some(t) = number("temperature")? {
            if t < 0.0 {
                return Err(bad(format!("`temperature` must be >= 0, got {t}")));
            }
            o.temperature = t;
        }
        if let Some(p) = number("top_p")? {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad(format!("`top_p` must be in (0, 1], got {p}")));
            }
            o.top_p = Some(p);
        }
        o.top_k = count("top_k", usize::MAX)?.or(o.top_k);
        o.max_new_tokens =
            count("max_new_tokens", crate::sampler::MAX_SEQUENCE)?.unwrap_or(o.max_new_tokens);
        o.steps = count("steps", crate::sampler::MAX_STEPS)?.or(o.steps);
        if let Some(alg) = field("alg") {
            let name = alg
                .as_str()
                .ok_or_else(|| bad(format!("`alg` must be a string, got {alg}")))?;
            o.alg = name.parse().map_err(|e: Error| bad(e.to_string()))?;
        }
        Ok(o)
    }
}
