//! dllm-cache: diffusion LLM inference with adaptive feature caching.
#![warn(missing_docs)]

pub mod cache;
mod denoiser;
mod error;
pub mod flops;
pub mod model;
mod rng;
pub mod sampler;

pub use cache::{CachePolicy, DllmCache, DllmCacheConfig, FeatureCache, NoCache};
pub use denoiser::{Denoiser, LayerTrace, RowsTrace, SpecialTokens, StepContext, StepInfo};
pub use error::{Error, Result};
pub use flops::FlopCounter;
pub use model::llada::{Llada, LladaConfig};
pub use rng::SplitMix64;
pub use sampler::{
    Commit, GenerationOutput, GenerationStats, LladaSampler, LladaSamplerConfig, Remasking,
    StepEvent,
};

/// Re-export of the burn version this crate is built on.
pub use burn;
