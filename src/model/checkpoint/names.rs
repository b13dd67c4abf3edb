//! Checkpoint tensor names. The mapping from checkpoint names to module fields lives in one
//! table per architecture; the model constructors ask the loader for tensors by their role.

/// The role a checkpoint tensor plays in a transformer of this crate. Both architectures share
/// the block layout; the tables below give each role's checkpoint name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Embedding,
    FinalNorm,
    LmHead,
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// Checkpoint name table: `(role, name)`; `{i}` stands for the layer index.
pub(crate) type NameTable = &'static [(Role, &'static str)];

/// LLaDA (`LLaDAModelLM`, OLMo-style names). The gate of the SwiGLU is `ff_proj` (it goes through
/// SiLU); `ff_out` inside a block is the down projection, `transformer.ff_out` the LM head.
pub(crate) const LLADA_NAMES: NameTable = &[
    (Role::Embedding, "model.transformer.wte.weight"),
    (Role::FinalNorm, "model.transformer.ln_f.weight"),
    (Role::LmHead, "model.transformer.ff_out.weight"),
    (
        Role::AttnNorm,
        "model.transformer.blocks.{i}.attn_norm.weight",
    ),
    (Role::Q, "model.transformer.blocks.{i}.q_proj.weight"),
    (Role::K, "model.transformer.blocks.{i}.k_proj.weight"),
    (Role::V, "model.transformer.blocks.{i}.v_proj.weight"),
    (Role::O, "model.transformer.blocks.{i}.attn_out.weight"),
    (Role::FfnNorm, "model.transformer.blocks.{i}.ff_norm.weight"),
    (Role::Gate, "model.transformer.blocks.{i}.ff_proj.weight"),
    (Role::Up, "model.transformer.blocks.{i}.up_proj.weight"),
    (Role::Down, "model.transformer.blocks.{i}.ff_out.weight"),
];

/// Dream (Qwen2 layout). q/k/v carry biases, o_proj does not.
pub(crate) const DREAM_NAMES: NameTable = &[
    (Role::Embedding, "model.embed_tokens.weight"),
    (Role::FinalNorm, "model.norm.weight"),
    (Role::LmHead, "lm_head.weight"),
    (Role::AttnNorm, "model.layers.{i}.input_layernorm.weight"),
    (Role::Q, "model.layers.{i}.self_attn.q_proj.weight"),
    (Role::K, "model.layers.{i}.self_attn.k_proj.weight"),
    (Role::V, "model.layers.{i}.self_attn.v_proj.weight"),
    (Role::QBias, "model.layers.{i}.self_attn.q_proj.bias"),
    (Role::KBias, "model.layers.{i}.self_attn.k_proj.bias"),
    (Role::VBias, "model.layers.{i}.self_attn.v_proj.bias"),
    (Role::O, "model.layers.{i}.self_attn.o_proj.weight"),
    (
        Role::FfnNorm,
        "model.layers.{i}.post_attention_layernorm.weight",
    ),
    (Role::Gate, "model.layers.{i}.mlp.gate_proj.weight"),
    (Role::Up, "model.layers.{i}.mlp.up_proj.weight"),
    (Role::Down, "model.layers.{i}.mlp.down_proj.weight"),
];

/// Checkpoint name of `role` in layer `layer` (ignored for model-level roles).
pub(crate) fn name_of(table: NameTable, role: Role, layer: usize) -> Option<String> {
    table
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, n)| n.replace("{i}", &layer.to_string()))
}
