//! LLaDA (Nie et al., "Large Language Diffusion Models", arXiv 2502.09992).
//!
//! Reference implementation: the Hugging Face remote code of `GSAI-ML/LLaDA-8B-Instruct`
//! (`modeling_llada.py`, OLMo-derived). A LLaMA-style block without biases: RMSNorm, q/k/v
//! projections, rotary embedding in float32 with split halves, bidirectional attention without
//! any mask (the reference drops the attention mask), output projection, RMSNorm, SwiGLU with
//! the gate in `ff_proj`; final norm and an untied LM head over the embedding rows.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use super::arch::{Arch, ArchNames};
use super::backbone::Backbone;
use super::checkpoint::{LLADA_NAMES, NameTable};
use super::family::Family;
use crate::denoiser::{Denoiser, SpecialTokens, StepContext};
use crate::error::{Error, Result};

/// LLaDA hyper-parameters, resolved from a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LladaConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (equal to `n_heads` for LLaDA-8B).
    pub n_kv_heads: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// SwiGLU hidden width.
    pub mlp_hidden_size: usize,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// Rows of the embedding and the LM head (>= `vocab_size`).
    pub embedding_size: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// `[MASK]` token id.
    pub mask_token_id: u32,
    /// End-of-sequence id.
    pub eos_token_id: u32,
    /// Padding id.
    pub pad_token_id: u32,
    /// Beginning-of-sequence id, if the config names one.
    pub bos_token_id: Option<u32>,
    /// Longest supported sequence.
    pub max_sequence_length: usize,
    /// Rotate queries and keys in float32 whatever the activation dtype (`true`, as LLaDA-8B
    /// ships), or in the activation dtype with the tables cast to it (`false`). Identical in
    /// float32.
    pub rope_full_precision: bool,
}

/// The fields of LLaDA's `config.json` that this crate reads; everything else is ignored.
#[derive(Deserialize)]
struct RawConfig {
    d_model: usize,
    n_heads: usize,
    #[serde(default)]
    n_kv_heads: Option<usize>,
    #[serde(default)]
    multi_query_attention: Option<bool>,
    n_layers: usize,
    #[serde(default)]
    mlp_hidden_size: Option<usize>,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: usize,
    vocab_size: usize,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_mask_id")]
    mask_token_id: u32,
    eos_token_id: u32,
    pad_token_id: u32,
    #[serde(default)]
    bos_token_id: Option<u32>,
    max_sequence_length: usize,
    #[serde(default)]
    include_bias: bool,
    #[serde(default)]
    include_qkv_bias: Option<bool>,
    #[serde(default)]
    weight_tying: bool,
    #[serde(default)]
    alibi: bool,
    #[serde(default = "default_true")]
    rope: bool,
    #[serde(default)]
    attention_layer_norm: bool,
    #[serde(default)]
    block_type: Option<String>,
    #[serde(default)]
    activation_type: Option<String>,
    #[serde(default)]
    layer_norm_type: Option<String>,
    #[serde(default)]
    scale_logits: bool,
    #[serde(default)]
    input_emb_norm: bool,
    #[serde(default)]
    clip_qkv: Option<f64>,
    #[serde(default = "default_true")]
    rope_full_precision: bool,
}

fn default_mlp_ratio() -> usize {
    4
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_mask_id() -> u32 {
    126_336
}
fn default_true() -> bool {
    true
}

fn unsupported(field: &str, reason: &str) -> Error {
    Error::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

impl LladaConfig {
    /// LLaDA-8B (Base and Instruct share the architecture).
    pub fn llada_8b() -> Self {
        Self {
            d_model: 4096,
            n_heads: 32,
            n_kv_heads: 32,
            n_layers: 32,
            mlp_hidden_size: 12_288,
            vocab_size: 126_464,
            embedding_size: 126_464,
            rope_theta: 500_000.0,
            rms_norm_eps: 1e-5,
            mask_token_id: 126_336,
            eos_token_id: 126_081,
            pad_token_id: 126_081,
            bos_token_id: Some(126_080),
            max_sequence_length: 4096,
            rope_full_precision: true,
        }
    }

    /// A LLaDA-shaped config of the given sizes (MHA, LLaDA's rope base and special ids moved
    /// to the top of the vocabulary: mask = vocab-1, eos = pad = vocab-2, bos = vocab-3).
    pub fn with_sizes(
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        mlp_hidden_size: usize,
        vocab_size: usize,
    ) -> Self {
        let top = vocab_size.max(3) as u32;
        Self {
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            n_layers,
            mlp_hidden_size,
            vocab_size,
            embedding_size: vocab_size,
            rope_theta: 500_000.0,
            rms_norm_eps: 1e-5,
            mask_token_id: top - 1,
            eos_token_id: top - 2,
            pad_token_id: top - 2,
            bos_token_id: Some(top - 3),
            max_sequence_length: 4096,
            rope_full_precision: true,
        }
    }

    /// Parses and validates a `config.json` file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Config`] if it is not a valid LLaDA
    /// config, [`Error::Unsupported`] if it asks for a feature this crate does not implement.
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
    /// As [`from_file`](Self::from_file), without the I/O.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: None,
            reason: e.to_string(),
        })?;
        if raw.include_bias || raw.include_qkv_bias == Some(true) {
            return Err(unsupported(
                "include_bias",
                "LLaDA checkpoints with biases are not supported",
            ));
        }
        if raw.weight_tying {
            return Err(unsupported(
                "weight_tying",
                "tied embedding and LM head are not supported",
            ));
        }
        if raw.alibi {
            return Err(unsupported(
                "alibi",
                "ALiBi attention biases are not supported",
            ));
        }
        if !raw.rope {
            return Err(unsupported(
                "rope",
                "models without rotary embeddings are not supported",
            ));
        }
        if raw.attention_layer_norm {
            return Err(unsupported(
                "attention_layer_norm",
                "query/key norms are not supported",
            ));
        }
        if raw.scale_logits {
            return Err(unsupported(
                "scale_logits",
                "logit scaling is not supported",
            ));
        }
        if raw.input_emb_norm {
            return Err(unsupported(
                "input_emb_norm",
                "embedding norms are not supported",
            ));
        }
        if raw.clip_qkv.is_some() {
            return Err(unsupported("clip_qkv", "q/k/v clipping is not supported"));
        }
        for (field, value, expected) in [
            ("block_type", &raw.block_type, "llama"),
            ("activation_type", &raw.activation_type, "silu"),
            ("layer_norm_type", &raw.layer_norm_type, "rms"),
        ] {
            if let Some(v) = value
                && v != expected
            {
                return Err(unsupported(
                    field,
                    &format!("`{v}` (only `{expected}` is supported)"),
                ));
            }
        }
        let n_kv_heads = match (raw.n_kv_heads, raw.multi_query_attention) {
            (Some(n), _) => n,
            (None, Some(true)) => 1,
            (None, _) => raw.n_heads,
        };
        let config = Self {
            d_model: raw.d_model,
            n_heads: raw.n_heads,
            n_kv_heads,
            n_layers: raw.n_layers,
            mlp_hidden_size: raw.mlp_hidden_size.unwrap_or(raw.mlp_ratio * raw.d_model),
            vocab_size: raw.vocab_size,
            embedding_size: raw.embedding_size.unwrap_or(raw.vocab_size),
            rope_theta: raw.rope_theta,
            rms_norm_eps: raw.rms_norm_eps,
            mask_token_id: raw.mask_token_id,
            eos_token_id: raw.eos_token_id,
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id,
            max_sequence_length: raw.max_sequence_length,
            rope_full_precision: raw.rope_full_precision,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes describe a model this crate can build.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first inconsistent field.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.embedding_size < self.vocab_size {
            return Err(Error::Config {
                path: None,
                reason: "`embedding_size` must be at least `vocab_size` (> 0)".into(),
            });
        }
        self.arch().validate(
            self.vocab_size,
            "vocab_size",
            &[
                ("mask_token_id", Some(self.mask_token_id)),
                ("eos_token_id", Some(self.eos_token_id)),
                ("pad_token_id", Some(self.pad_token_id)),
                ("bos_token_id", self.bos_token_id),
            ],
        )
    }

    /// The config as LLaDA's Hugging Face `config.json` (the fields its remote code needs).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "activation_type": "silu",
            "alibi": false,
            "attention_layer_norm": false,
            "block_type": "llama",
            "bos_token_id": self.bos_token_id,
            "d_model": self.d_model,
            "embedding_size": self.embedding_size,
            "eos_token_id": self.eos_token_id,
            "include_bias": false,
            "include_qkv_bias": false,
            "input_emb_norm": false,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": true,
            "mask_token_id": self.mask_token_id,
            "max_sequence_length": self.max_sequence_length,
            "mlp_hidden_size": self.mlp_hidden_size,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "n_layers": self.n_layers,
            "pad_token_id": self.pad_token_id,
            "rms_norm_eps": self.rms_norm_eps,
            "rope": true,
            "rope_full_precision": self.rope_full_precision,
            "rope_theta": self.rope_theta,
            "scale_logits": false,
            "vocab_size": self.vocab_size,
            "weight_tying": false,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
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

impl Family for LladaConfig {
    const NAMES: NameTable = LLADA_NAMES;

    fn from_file(path: &Path) -> Result<Self> {
        LladaConfig::from_file(path)
    }

    fn validate(&self) -> Result<()> {
        LladaConfig::validate(self)
    }

    fn arch(&self) -> Arch {
        Arch {
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            n_layers: self.n_layers,
            d_ff: self.mlp_hidden_size,
            vocab_rows: self.embedding_size,
            eps: self.rms_norm_eps,
            qkv_bias: false,
            rope_theta: self.rope_theta,
            rotate_in_f32: self.rope_full_precision,
            max_len: self.max_sequence_length,
            names: &ArchNames {
                d_model: "d_model",
                n_heads: "n_heads",
                n_kv_heads: "n_kv_heads",
                n_layers: "n_layers",
                d_ff: "mlp_hidden_size",
                vocab_rows: "embedding_size",
                max_len: "max_sequence_length",
            },
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        LladaConfig::to_hf_json(self)
    }
}

/// A LLaDA model: parameters only; per-generation state lives in the
/// [`FeatureCache`](crate::cache::FeatureCache) passed with each forward.
#[derive(Module, Debug)]
pub struct Llada {
    /// Embedding, blocks, final norm, LM head.
    pub backbone: Backbone,
    #[module(skip)]
    config: LladaConfig,
}

super::family::family_api!(Llada, LladaConfig, "LLaDA");

impl Llada {
    fn run(
        &self,
        tokens: Tensor<2, Int>,
        ctx: &mut StepContext<'_>,
        hidden: Option<&mut Vec<Tensor<3>>>,
    ) -> Result<Tensor<3>> {
        let [_, seq] = tokens.dims();
        let rows = ctx.logit_rows.clone().unwrap_or(0..seq);
        self.backbone
            .forward(&self.config.arch(), tokens, ctx, rows, hidden)
    }
}

impl Denoiser for Llada {
    fn forward(&self, tokens: Tensor<2, Int>, ctx: &mut StepContext<'_>) -> Result<Tensor<3>> {
        self.run(tokens, ctx, None)
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
        self.config.n_layers
    }

    fn max_seq_len(&self) -> usize {
        self.config.max_sequence_length
    }

    // The logits have one column per embedding row, which may exceed the tokenizer's vocabulary.
    #[allow(clippy::misnamed_getters)]
    fn vocab_size(&self) -> usize {
        self.config.embedding_size
    }

    fn device(&self) -> Device {
        self.backbone.head.weight.device()
    }
}
