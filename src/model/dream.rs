//! Dream (Ye et al., "Dream 7B", HKUNLP 2025): a diffusion LLM initialised from Qwen2.5.
//!
//! Reference implementation: the Hugging Face remote code of `Dream-org/Dream-v0-Instruct-7B`
//! (`modeling_dream.py`, `generation_utils.py`). The Qwen2 layout: RMSNorm (eps 1e-6), q/k/v
//! projections with biases, grouped-query attention, rotary embedding whose float32 tables are
//! cast to the activation dtype, bidirectional attention (masked only for left padding), output
//! projection without bias, SwiGLU (`gate_proj`, `up_proj`, `down_proj`), final norm, LM head.
//!
//! Dream keeps its autoregressive parent's head: the hidden state at position `i - 1` scores
//! the token at position `i`. The reference sampler shifts the logits right by one
//! (`cat([logits[:, :1], logits[:, :-1]])`); here that shift lives inside
//! [`Denoiser::forward`], so samplers see row `i` scoring position `i` as for LLaDA, and the LM
//! head runs only on the hidden rows the requested logits need.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use super::arch::{Arch, ArchNames};
use super::backbone::Backbone;
use super::checkpoint::{DREAM_NAMES, NameTable};
use super::family::Family;
use crate::denoiser::{Denoiser, SpecialTokens, StepContext};
use crate::error::{Error, Result};

/// Dream hyper-parameters, resolved from a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DreamConfig {
    /// Hidden width.
    pub hidden_size: usize,
    /// SwiGLU hidden width.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (4 for Dream-7B: grouped-query attention).
    pub num_key_value_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rows of the embedding and the LM head.
    pub vocab_size: usize,
    /// `[MASK]` token id.
    pub mask_token_id: u32,
    /// Padding id.
    pub pad_token_id: u32,
    /// Beginning-of-sequence id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id.
    pub eos_token_id: u32,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    vocab_size: usize,
    #[serde(default = "default_mask")]
    mask_token_id: u32,
    #[serde(default = "default_pad")]
    pad_token_id: u32,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default = "default_pad")]
    eos_token_id: u32,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    use_sliding_window: bool,
}

fn default_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_mask() -> u32 {
    151_666
}
fn default_pad() -> u32 {
    151_643
}
fn default_max_pos() -> usize {
    32_768
}

fn unsupported(field: &str, reason: &str) -> Error {
    Error::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DreamConfig {
    /// Dream-v0-7B (Base and Instruct share the architecture).
    pub fn dream_7b() -> Self {
        Self {
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            num_hidden_layers: 28,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            vocab_size: 152_064,
            mask_token_id: 151_666,
            pad_token_id: 151_643,
            bos_token_id: Some(151_643),
            eos_token_id: 151_643,
            max_position_embeddings: 131_072,
        }
    }

    /// Parses and validates a `config.json` file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Config`] (naming the file) or [`Error::Unsupported`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { path: None, reason } => Error::Config {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Unsupported`].
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: None,
            reason: e.to_string(),
        })?;
        if raw.tie_word_embeddings {
            return Err(unsupported(
                "tie_word_embeddings",
                "tied embedding and LM head are not supported",
            ));
        }
        if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(
                "rope_scaling",
                "scaled rotary embeddings are not supported",
            ));
        }
        if raw.use_sliding_window {
            return Err(unsupported(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(unsupported(
                "hidden_act",
                &format!("`{act}` (only `silu` is supported)"),
            ));
        }
        let config = Self {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            num_hidden_layers: raw.num_hidden_layers,
            rope_theta: raw.rope_theta,
            rms_norm_eps: raw.rms_norm_eps,
            vocab_size: raw.vocab_size,
            mask_token_id: raw.mask_token_id,
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
            max_position_embeddings: raw.max_position_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes describe a model this crate can build.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first inconsistent field.
    pub fn validate(&self) -> Result<()> {
        self.arch().validate(
            self.vocab_size,
            "vocab_size",
            &[
                ("mask_token_id", Some(self.mask_token_id)),
                ("pad_token_id", Some(self.pad_token_id)),
                ("eos_token_id", Some(self.eos_token_id)),
                ("bos_token_id", self.bos_token_id),
            ],
        )
    }

    /// The config as Dream's Hugging Face `config.json` (the fields its remote code needs).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["DreamModel"],
            "auto_map": {
                "AutoConfig": "configuration_dream.DreamConfig",
                "AutoModel": "modeling_dream.DreamModel"
            },
            "model_type": "Dream",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "mask_token_id": self.mask_token_id,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": self.pad_token_id,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": false,
            "use_sliding_window": false,
            "vocab_size": self.vocab_size,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Number of parameters.
    ///
    /// # Errors
    /// [`Error::Config`] if the count does not fit in `usize`.
    pub fn num_params(&self) -> Result<usize> {
        self.arch().num_params().ok_or_else(|| Error::Config {
            path: None,
            reason: "the parameter count overflows".into(),
        })
    }
}

impl Family for DreamConfig {
    const NAMES: NameTable = DREAM_NAMES;

    fn from_file(path: &Path) -> Result<Self> {
        DreamConfig::from_file(path)
    }

    fn validate(&self) -> Result<()> {
        DreamConfig::validate(self)
    }

    fn arch(&self) -> Arch {
        Arch {
            d_model: self.hidden_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            n_layers: self.num_hidden_layers,
            d_ff: self.intermediate_size,
            vocab_rows: self.vocab_size,
            eps: self.rms_norm_eps,
            qkv_bias: true,
            rope_theta: self.rope_theta,
            rotate_in_f32: false,
            max_len: self.max_position_embeddings,
            names: &ArchNames {
                d_model: "hidden_size",
                n_heads: "num_attention_heads",
                n_kv_heads: "num_key_value_heads",
                n_layers: "num_hidden_layers",
                d_ff: "intermediate_size",
                vocab_rows: "vocab_size",
                max_len: "max_position_embeddings",
            },
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        DreamConfig::to_hf_json(self)
    }
}

/// A Dream model: parameters only; per-generation state lives in the
/// [`FeatureCache`](crate::cache::FeatureCache) passed with each forward.
#[derive(Module, Debug)]
pub struct Dream {
    /// Embedding, blocks, final norm, LM head.
    pub backbone: Backbone,
    #[module(skip)]
    config: DreamConfig,
}

super::family::family_api!(Dream, DreamConfig, "Dream");

impl Denoiser for Dream {
    fn forward(&self, tokens: Tensor<2, Int>, ctx: &mut StepContext<'_>) -> Result<Tensor<3>> {
        let [_, seq] = tokens.dims();
        let rows = ctx.logit_rows.clone().unwrap_or(0..seq);
        // Checked before the shift below does arithmetic on the bounds.
        if rows.start >= rows.end || rows.end > seq {
            return Err(Error::invalid(
                "logit_rows",
                format!("{rows:?} is not a non-empty range of a {seq}-token sequence"),
            ));
        }
        if rows.start >= 1 {
            // Position i is scored by hidden row i - 1.
            return self.backbone.forward(
                &self.config.arch(),
                tokens,
                ctx,
                rows.start - 1..rows.end - 1,
                None,
            );
        }
        // Position 0 keeps its own row (the reference's `logits[:, :1]`).
        let hidden_end = rows.end.saturating_sub(1).max(1);
        let logits =
            self.backbone
                .forward(&self.config.arch(), tokens, ctx, 0..hidden_end, None)?;
        let shifted = Tensor::cat(vec![logits.clone().narrow(1, 0, 1), logits], 1);
        Ok(shifted.narrow(1, 0, rows.end))
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            mask: self.config.mask_token_id,
            eos: self.config.eos_token_id,
            pad: self.config.pad_token_id,
            bos: self.config.bos_token_id,
        }
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn max_seq_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        self.backbone.head.weight.device()
    }
}
