//! Hugging Face safetensors checkpoints: the name tables of both architectures
//! ([`names`]), reading with validation ([`load`]) and writing ([`save`]).

mod load;
mod names;
mod save;

pub(crate) use load::Checkpoint;
pub use load::{TensorHeader, inspect_safetensors};
pub(crate) use names::{DREAM_NAMES, LLADA_NAMES, NameTable, Role};
pub use save::SaveDtype;
pub(crate) use save::write_safetensors;

use super::arch::Arch;
use super::backbone::Backbone;
use super::block::Block;
use crate::error::{Error, Result};

/// Reads a whole [`Backbone`] from a checkpoint through its name table, then checks that no
/// tensor was left unused.
pub(crate) fn load_backbone(mut ckpt: Checkpoint, a: &Arch) -> Result<Backbone> {
    let d = a.d_model;
    let kv = a.n_kv_heads * a.head_dim();
    let bias = |role: Role| a.qkv_bias.then_some(role);
    let embed = ckpt.embedding(Role::Embedding, a.vocab_rows, d)?;
    let mut blocks = Vec::with_capacity(a.n_layers);
    for i in 0..a.n_layers {
        blocks.push(Block {
            attn_norm: ckpt.norm(Role::AttnNorm, i, d, a.eps)?,
            q: ckpt.linear(Role::Q, bias(Role::QBias), i, d, d)?,
            k: ckpt.linear(Role::K, bias(Role::KBias), i, d, kv)?,
            v: ckpt.linear(Role::V, bias(Role::VBias), i, d, kv)?,
            o: ckpt.linear(Role::O, None, i, d, d)?,
            ffn_norm: ckpt.norm(Role::FfnNorm, i, d, a.eps)?,
            gate: ckpt.linear(Role::Gate, None, i, d, a.d_ff)?,
            up: ckpt.linear(Role::Up, None, i, d, a.d_ff)?,
            down: ckpt.linear(Role::Down, None, i, a.d_ff, d)?,
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            head_dim: a.head_dim(),
        });
    }
    let norm = ckpt.norm(Role::FinalNorm, 0, d, a.eps)?;
    let head = ckpt.linear(Role::LmHead, None, 0, d, a.vocab_rows)?;
    ckpt.finish()?;
    Ok(Backbone {
        embed,
        blocks,
        norm,
        head,
    })
}

/// Every weight of a [`Backbone`] under its checkpoint name (PyTorch layout), the inverse of
/// [`load_backbone`].
pub(crate) fn backbone_tensors(b: &Backbone, table: NameTable) -> Result<Vec<save::NamedTensor>> {
    let name = |role: Role, layer: usize| {
        names::name_of(table, role, layer)
            .ok_or_else(|| Error::Backend(format!("no name for {role:?}")))
    };
    let mut out = Vec::new();
    let mut push =
        |n: String, (shape, values): (Vec<usize>, Vec<f32>)| out.push((n, shape, values));
    push(
        name(Role::Embedding, 0)?,
        save::tensor_values(b.embed.weight.val())?,
    );
    for (i, blk) in b.blocks.iter().enumerate() {
        push(
            name(Role::AttnNorm, i)?,
            save::tensor_values(blk.attn_norm.weight.val())?,
        );
        for (role, bias, lin) in [
            (Role::Q, Role::QBias, &blk.q),
            (Role::K, Role::KBias, &blk.k),
            (Role::V, Role::VBias, &blk.v),
        ] {
            push(name(role, i)?, save::linear_values(lin)?);
            if let Some(bias_param) = &lin.bias {
                push(name(bias, i)?, save::tensor_values(bias_param.val())?);
            }
        }
        push(name(Role::O, i)?, save::linear_values(&blk.o)?);
        push(
            name(Role::FfnNorm, i)?,
            save::tensor_values(blk.ffn_norm.weight.val())?,
        );
        push(name(Role::Gate, i)?, save::linear_values(&blk.gate)?);
        push(name(Role::Up, i)?, save::linear_values(&blk.up)?);
        push(name(Role::Down, i)?, save::linear_values(&blk.down)?);
    }
    push(
        name(Role::FinalNorm, 0)?,
        save::tensor_values(b.norm.weight.val())?,
    );
    push(name(Role::LmHead, 0)?, save::linear_values(&b.head)?);
    Ok(out)
}

/// Row-major `[rows, cols]` to `[cols, rows]`, blocked for cache locality.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut dst = vec![0f32; src.len()];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::names::name_of;
    use super::*;

    #[test]
    fn transpose_small() {
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect(); // [[0,1,2],[3,4,5]]
        assert_eq!(transpose(&src, 2, 3), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn name_table_lookup() {
        assert_eq!(
            name_of(LLADA_NAMES, Role::Gate, 7).as_deref(),
            Some("model.transformer.blocks.7.ff_proj.weight")
        );
        assert_eq!(
            name_of(DREAM_NAMES, Role::KBias, 2).as_deref(),
            Some("model.layers.2.self_attn.k_proj.bias")
        );
        assert_eq!(name_of(LLADA_NAMES, Role::QBias, 0), None);
    }
}
