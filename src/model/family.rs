//! What LLaDA and Dream share beyond the block: how a model of either family is built from a
//! folder, from files, from a seed, and written back. Each family only says how its config is
//! read and named ([`Family`]); the public constructors of [`Llada`](super::llada::Llada) and
//! [`Dream`](super::dream::Dream) are stamped from one definition ([`family_api`]).

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::arch::Arch;
use super::backbone::Backbone;
use super::checkpoint::{self, Checkpoint, NameTable, SaveDtype};
use super::init;
use super::weights::LoadOptions;
use crate::error::{Error, Result};

/// A model family's config: how it is read, validated, described to the shared code and
/// written back.
pub(crate) trait Family: Sized {
    /// The family's checkpoint names.
    const NAMES: NameTable;

    /// Parses and validates a `config.json` file.
    fn from_file(path: &Path) -> Result<Self>;

    /// Checks the config describes a model this crate can build.
    fn validate(&self) -> Result<()>;

    /// The sizes and switches the shared code needs.
    fn arch(&self) -> Arch;

    /// The config as the family's Hugging Face `config.json`.
    fn to_hf_json(&self) -> serde_json::Value;
}

/// `config.json` and the weights of a Hugging Face folder.
pub(crate) fn load_dir<C: Family>(
    dir: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<(C, Backbone)> {
    let config = C::from_file(&dir.join("config.json"))?;
    let ckpt =
        Checkpoint::open_dir(dir, C::NAMES, device)?.with_matrices(options.weights().dtype());
    let backbone = checkpoint::load_backbone(ckpt, &config.arch())?;
    Ok((config, backbone))
}

/// Weights from explicit files.
pub(crate) fn load_files<C: Family>(
    config: C,
    files: &[PathBuf],
    device: &Device,
    options: &LoadOptions,
) -> Result<(C, Backbone)> {
    config.validate()?;
    let ckpt =
        Checkpoint::open_files(files, C::NAMES, device)?.with_matrices(options.weights().dtype());
    let backbone = checkpoint::load_backbone(ckpt, &config.arch())?;
    Ok((config, backbone))
}

/// Seeded random weights.
pub(crate) fn random<C: Family>(
    config: C,
    seed: u64,
    device: &Device,
    options: &LoadOptions,
) -> Result<(C, Backbone)> {
    config.validate()?;
    let backbone = init::random_backbone(&config.arch(), seed, device, options.weights().dtype());
    Ok((config, backbone))
}

/// Random weights from the device's own generator.
pub(crate) fn random_unseeded<C: Family>(
    config: C,
    device: &Device,
    options: &LoadOptions,
) -> Result<(C, Backbone)> {
    config.validate()?;
    let backbone =
        init::random_backbone_on_device(&config.arch(), device, options.weights().dtype());
    Ok((config, backbone))
}

/// `config.json` and `model.safetensors` into `dir`.
pub(crate) fn save_dir<C: Family>(
    config: &C,
    backbone: &Backbone,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(&config.to_hf_json())
        .map_err(|e| Error::Backend(e.to_string()))?;
    let path = dir.join("config.json");
    std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))?;
    let tensors = checkpoint::backbone_tensors(backbone, C::NAMES)?;
    checkpoint::write_safetensors(&dir.join("model.safetensors"), tensors, dtype)
}

/// The constructors, accessors and plain forward every family has, as inherent methods of
/// `$model` (a struct with fields `backbone: Backbone` and `config: $config`).
macro_rules! family_api {
    ($model:ident, $config:ident, $name:literal) => {
        impl $model {
            #[doc = concat!("Loads a Hugging Face ", $name, " folder: `config.json` plus `model.safetensors` or a")]
            /// sharded `model.safetensors.index.json`. Weights stored as f32, bf16 or f16 are
            /// converted to the device's float type.
            ///
            /// # Errors
            #[doc = concat!("Config errors as [`", stringify!($config), "::from_file`]; checkpoint errors:")]
            /// [`Error::Checkpoint`](crate::Error::Checkpoint),
            /// [`Error::MissingTensor`](crate::Error::MissingTensor),
            /// [`Error::UnusedTensors`](crate::Error::UnusedTensors),
            /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch),
            /// [`Error::UnsupportedDtype`](crate::Error::UnsupportedDtype),
            /// [`Error::Io`](crate::Error::Io).
            pub fn from_dir(
                dir: impl AsRef<std::path::Path>,
                device: &burn::tensor::Device,
            ) -> crate::error::Result<Self> {
                Self::from_dir_with(dir, device, &super::weights::LoadOptions::default())
            }

            /// As [`from_dir`](Self::from_dir), holding the weights as `options` says (for
            /// example in bf16, converted while they stream in).
            ///
            /// # Errors
            /// As [`from_dir`](Self::from_dir).
            pub fn from_dir_with(
                dir: impl AsRef<std::path::Path>,
                device: &burn::tensor::Device,
                options: &super::weights::LoadOptions,
            ) -> crate::error::Result<Self> {
                let (config, backbone) =
                    super::family::load_dir::<$config>(dir.as_ref(), device, options)?;
                Ok(Self { backbone, config })
            }

            /// Loads weights from explicit safetensors files (for example
            /// `model.bf16.safetensors`).
            ///
            /// # Errors
            /// As [`from_dir`](Self::from_dir).
            pub fn from_safetensors(
                config: $config,
                files: &[std::path::PathBuf],
                device: &burn::tensor::Device,
            ) -> crate::error::Result<Self> {
                Self::from_safetensors_with(
                    config,
                    files,
                    device,
                    &super::weights::LoadOptions::default(),
                )
            }

            /// As [`from_safetensors`](Self::from_safetensors), holding the weights as
            /// `options` says.
            ///
            /// # Errors
            /// As [`from_dir`](Self::from_dir).
            pub fn from_safetensors_with(
                config: $config,
                files: &[std::path::PathBuf],
                device: &burn::tensor::Device,
                options: &super::weights::LoadOptions,
            ) -> crate::error::Result<Self> {
                let (config, backbone) =
                    super::family::load_files(config, files, device, options)?;
                Ok(Self { backbone, config })
            }

            /// A model with random weights (seeded, the same on every backend), for tests and
            /// benchmarks.
            ///
            /// # Errors
            /// [`Error::Config`](crate::Error::Config) if the config is invalid.
            pub fn random(
                config: $config,
                seed: u64,
                device: &burn::tensor::Device,
            ) -> crate::error::Result<Self> {
                Self::random_with(config, seed, device, &super::weights::LoadOptions::default())
            }

            /// As [`random`](Self::random), holding the weights as `options` says: the same
            /// draw, each value rounded to the weight type as it is drawn (no float32 copy).
            ///
            /// # Errors
            /// As [`random`](Self::random).
            pub fn random_with(
                config: $config,
                seed: u64,
                device: &burn::tensor::Device,
                options: &super::weights::LoadOptions,
            ) -> crate::error::Result<Self> {
                let (config, backbone) = super::family::random(config, seed, device, options)?;
                Ok(Self { backbone, config })
            }

            /// A model with random weights drawn on the device by burn's own generator:
            /// seconds instead of minutes for 8B shapes, but not reproducible across backends
            /// or runs. For throughput benchmarks only; use [`random`](Self::random) for
            /// anything that compares outputs.
            ///
            /// # Errors
            /// [`Error::Config`](crate::Error::Config) if the config is invalid.
            pub fn random_unseeded(
                config: $config,
                device: &burn::tensor::Device,
            ) -> crate::error::Result<Self> {
                Self::random_unseeded_with(config, device, &super::weights::LoadOptions::default())
            }

            /// As [`random_unseeded`](Self::random_unseeded), drawn directly in the weight
            /// type `options` names.
            ///
            /// # Errors
            /// As [`random`](Self::random).
            pub fn random_unseeded_with(
                config: $config,
                device: &burn::tensor::Device,
                options: &super::weights::LoadOptions,
            ) -> crate::error::Result<Self> {
                let (config, backbone) =
                    super::family::random_unseeded(config, device, options)?;
                Ok(Self { backbone, config })
            }

            /// Bytes the weights occupy on the device, in the types they are held in (about
            /// half the float32 figure with [`WeightDtype::Bf16`](crate::WeightDtype::Bf16)).
            pub fn weight_bytes(&self) -> usize {
                self.backbone.weight_bytes()
            }

            /// The config.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// Writes the model as a Hugging Face folder (`config.json` and
            /// `model.safetensors`) that [`from_dir`](Self::from_dir) and the reference code
            /// load.
            ///
            /// # Errors
            /// [`Error::Io`](crate::Error::Io) if the folder cannot be written,
            /// [`Error::Backend`](crate::Error::Backend) if a weight cannot be read back.
            pub fn save_dir(
                &self,
                dir: impl AsRef<std::path::Path>,
                dtype: super::checkpoint::SaveDtype,
            ) -> crate::error::Result<()> {
                super::family::save_dir(&self.config, &self.backbone, dir.as_ref(), dtype)
            }

            /// Plain forward pass (no cache) returning the logits of every position, as the
            /// Hugging Face model returns them (unshifted), and the hidden states: the input of
            /// every block followed by the final normed state (`n_layers + 1` entries), as
            /// `output_hidden_states=True` reports them.
            ///
            /// # Shapes
            /// - `tokens`: `[batch, seq]`; logits `[batch, seq, vocab rows]`; each hidden state
            ///   `[batch, seq, hidden]`.
            ///
            /// # Errors
            /// As [`Denoiser::forward`](crate::Denoiser::forward).
            pub fn forward_with_hidden_states(
                &self,
                tokens: burn::tensor::Tensor<2, burn::tensor::Int>,
            ) -> crate::error::Result<(burn::tensor::Tensor<3>, Vec<burn::tensor::Tensor<3>>)>
            {
                use super::family::Family;
                self.backbone.forward_with_hidden(&self.config.arch(), tokens)
            }
        }
    };
}

pub(crate) use family_api;
