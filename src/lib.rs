//! Diffusion LLMs (LLaDA, Dream) on burn, with training-free acceleration.
//!
//! A diffusion LLM generates by iterative unmasking: the response starts as `[MASK]` tokens and
//! every step runs the whole prompt+response through a bidirectional transformer, committing a
//! few confident tokens. [dLLM-Cache](https://arxiv.org/abs/2506.06295) (Liu et al.) caches
//! every layer's keys, values, attention output and FFN output and recomputes only what moved;
//! [Fast-dLLM](https://arxiv.org/abs/2505.22618) (Wu et al.) commits several confident tokens
//! per step and caches keys and values block by block. Both are here, token-exact with their
//! official code, and combine freely: any [`CachePolicy`] with any [`CommitRule`].
//!
//! The pieces:
//!
//! | piece | types |
//! |---|---|
//! | text in, text out | [`Pipeline`], [`GenerateOptions`], [`Completion`], [`Tokenizer`], [`ChatMessage`] |
//! | models (burn modules, loaded from Hugging Face folders) | [`Llada`], [`LladaConfig`], [`Dream`], [`DreamConfig`] |
//! | what a sampler needs from a model | [`Denoiser`], [`StepContext`], [`StepInfo`] |
//! | samplers | [`LladaSamplerConfig`] -> [`LladaSampler`], [`DreamSamplerConfig`] -> [`DreamSampler`], [`GenerationOutput`], [`StepEvent`] |
//! | cache policies | [`CachePolicy`], [`NoCache`], [`DllmCacheConfig`] -> [`DllmCache`], [`PrefixCache`], [`DualCache`], [`FeatureCache`] |
//! | commit rules (fixed schedule, Fast-dLLM threshold and factor) | [`CommitRule`] |
//! | accounting | [`FlopCounter`], [`GenerationStats`], [`estimate::flops`] |
//! | errors | [`Error`], [`Result`] |
//!
//! Library code names no burn backend: pass a [`Device`](burn::tensor::Device) (cargo
//! features `flex` and `x86-v4` (default), `ndarray`, `cuda`, `vulkan` decide which exist;
//! [`device_from_name`] picks one by name). Nothing is global: one loaded model serves any
//! number of concurrent generations, each with its own policy and [`FeatureCache`].
//!
//! # Quick start
//!
//! ```no_run
//! use dllm_cache::burn::tensor::Device;
//! use dllm_cache::{DllmCacheConfig, Llada, LladaSamplerConfig, NoCache};
//!
//! # fn main() -> dllm_cache::Result<()> {
//! let model = Llada::from_dir("path/to/LLaDA-8B-Instruct", &Device::flex())?;
//! let sampler = LladaSamplerConfig::new()
//!     .with_gen_length(128)
//!     .with_steps(128)
//!     .with_block_length(32)
//!     .init()?;
//! let prompt = vec![vec![126080, 3840, 25]]; // token ids
//! let cached = sampler.generate(&model, &prompt, &mut DllmCacheConfig::new().init()?)?;
//! let plain = sampler.generate(&model, &prompt, &mut NoCache)?;
//! println!(
//!     "{:?}\nFLOPs reduction {:.2}x",
//!     cached.response(0),
//!     plain.stats.flops.paper() as f64 / cached.stats.flops.paper() as f64
//! );
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod backend;
pub mod cache;
mod denoiser;
mod error;
pub mod estimate;
pub mod flops;
mod kernels;
pub mod model;
pub mod pipeline;
mod rng;
pub mod sampler;
pub mod tokenizer;

pub use backend::{available_devices, device_from_name};
pub use cache::{
    BlockInfo, CachePolicy, DllmCache, DllmCacheConfig, DualCache, FeatureCache, NoCache,
    PrefixCache, StepInfo,
};
pub use denoiser::{Denoiser, LayerTrace, RowsTrace, SpecialTokens, StepContext};
pub use error::{Error, Result};
pub use flops::FlopCounter;
pub use model::dream::{Dream, DreamConfig};
pub use model::llada::{Llada, LladaConfig};
pub use model::{LoadOptions, WeightDtype};
pub use pipeline::{CacheChoice, Completion, GenerateOptions, Pipeline, StreamEvent};
pub use rng::SplitMix64;
pub use sampler::{
    Commit, CommitRule, DreamAlg, DreamSampler, DreamSamplerConfig, GenerationOutput,
    GenerationStats, LladaSampler, LladaSamplerConfig, Remasking, StepEvent,
};
pub use tokenizer::{ChatMessage, Tokenizer};

/// Re-export of the burn version this crate is built on.
pub use burn;

/// The README's code examples, compiled as doctests so that they stay correct.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
