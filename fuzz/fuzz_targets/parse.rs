//! Fuzzes the parsers that read untrusted files: safetensors headers (length prefix, JSON,
//! dtypes, shapes, offsets), LLaDA / Dream `config.json`, `generation_config.json` (generation
//! defaults and EOS ids) and `tokenizer_config.json`. Any input must produce `Ok` or an `Err`,
//! never a panic, an abort or an allocation the input did not justify.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run parse -s none -- -max_total_time=60
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dllm_cache::model::inspect_safetensors(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dllm_cache::LladaConfig::from_json(text);
        let _ = dllm_cache::DreamConfig::from_json(text);
        let _ = dllm_cache::GenerateOptions::from_generation_config(text);
        let _ = dllm_cache::tokenizer::generation_eos_ids(text);
        let _ = dllm_cache::tokenizer::TokenizerConfig::from_json(text);
    }
});
