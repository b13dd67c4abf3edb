//! The two model families and the pieces they share.
//!
//! Both LLaDA and Dream are pre-norm transformers with RMSNorm, rotary embeddings, bidirectional
//! softmax attention and a SwiGLU feed-forward network; they differ in names, biases, head
//! layout and the one-position logit shift of Dream.
//!
//! | file | holds |
//! |---|---|
//! | `arch.rs` | `Arch`: the sizes and switches the shared code needs, validated |
//! | `norm.rs`, `rope.rs` | [`RmsNorm`], rotary tables for any subset of rows |
//! | `block.rs` | the transformer [`Block`]: parameters and math |
//! | `attention.rs` | attention: the kernels of `crate::kernels` or burn's fused op |
//! | `executor.rs` | the one executor of every policy's plans, for both families |
//! | `stream.rs` | the residual stream of one forward, per segment |
//! | `backbone.rs` | [`Backbone`]: embedding, blocks, final norm, LM head; the shared forward |
//! | `init.rs` | random weights |
//! | `weights.rs` | [`LoadOptions`], [`WeightDtype`]: how weights are held in memory |
//! | `checkpoint/` | name tables, safetensors loading with validation, saving |
//! | `family.rs` | construction shared by both families |
//! | `llada.rs`, `dream.rs` | each family's config, module and `Denoiser` impl |

pub(crate) mod arch;
mod attention;
mod backbone;
mod block;
pub(crate) mod checkpoint;
pub mod dream;
mod executor;
mod family;
mod init;
pub mod llada;
pub(crate) mod norm;
pub(crate) mod rope;
mod stream;
pub(crate) mod weights;

pub use backbone::Backbone;
pub use block::{Block, linear};
pub use checkpoint::{SaveDtype, TensorHeader, inspect_safetensors};
pub use norm::RmsNorm;
pub use weights::{LoadOptions, WeightDtype};
