//! Tokenizer, chat templates, incremental decoding and the text pipeline, without network: the
//! tokenizer is trained here with the `tokenizers` crate on this repository's own docs.

#[path = "../examples/shared/tiny_task.rs"]
mod tiny_task;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::{CacheChoice, GenerateOptions, Model, Pipeline};
use dllm_cache::tokenizer::{ChatMessage, Tokenizer};
use dllm_cache::{DllmCacheConfig, Error, SplitMix64};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, TokenizerBuilder};

const LLADA_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const QWEN_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[path = "common/scratch.rs"]
mod common_scratch;
use common_scratch::Scratch;

fn scratch(tag: &str) -> Scratch {
    Scratch::new("text", tag, true)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A byte-level BPE tokenizer trained on this repository's docs, with the special tokens of
/// LLaDA and Qwen chat formats, written as `tokenizer.json` into `dir`.
fn train_tokenizer(dir: &Path) {
    let specials = [
        "<|startoftext|>",
        "<|endoftext|>",
        "<|mdm_mask|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|im_start|>",
        "<|im_end|>",
    ];
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(400)
        .min_frequency(2)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect(),
        )
        // Every byte, so that text the docs never contain still encodes.
        .initial_alphabet(
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                .into_iter()
                .collect(),
        )
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::default()
            .add_prefix_space(false)
            .into(),
    ))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .unwrap();
    let files = ["README.md", "docs/cache-policies.md", "docs/models.md"]
        .iter()
        .map(|f| repo(f).to_string_lossy().into_owned())
        .collect();
    tokenizer.train_from_files(&mut trainer, files).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
}

fn write_config(dir: &Path, template: &str, eos: &str) {
    let config = serde_json::json!({
        "bos_token": "<|startoftext|>",
        "eos_token": {"content": eos, "special": true},
        "pad_token": "<|endoftext|>",
        "chat_template": template,
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

#[test]
fn chat_templates_render_like_hugging_face() {
    let dir = scratch("templates");
    train_tokenizer(&dir);
    write_config(&dir, LLADA_TEMPLATE, "<|endoftext|>");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let messages = [ChatMessage::user("  What is 2+2?  ")];
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let turns = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("Bye"),
    ];
    let rendered = tok.apply_chat_template(&turns, false).unwrap();
    assert!(rendered.starts_with("<|startoftext|><|start_header_id|>system"));
    assert_eq!(rendered.matches("<|eot_id|>").count(), 4);
    assert!(!rendered.ends_with("assistant<|end_header_id|>\n\n"));
    // Rendered special tokens become single special ids.
    let ids = tok
        .encode(&tok.apply_chat_template(&messages, true).unwrap(), false)
        .unwrap();
    assert_eq!(ids[0], tok.token_id("<|startoftext|>").unwrap());
    assert!(ids.contains(&tok.token_id("<|eot_id|>").unwrap()));

    write_config(&dir, QWEN_TEMPLATE, "<|im_end|>");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn special_ids_come_from_the_folder() {
    let dir = scratch("specials");
    train_tokenizer(&dir);
    write_config(&dir, LLADA_TEMPLATE, "<|endoftext|>");
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [1, 7]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let s = tok.specials();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(s.bos, Some(id("<|startoftext|>")));
    assert_eq!(s.eos, vec![id("<|endoftext|>"), 7]); // eos_token, then generation_config's extra
    assert_eq!(s.end_of_turn, Some(id("<|eot_id|>")));
    assert_eq!(s.mask, Some(id("<|mdm_mask|>")));
    assert_eq!(s.pad, Some(id("<|endoftext|>")));
}

#[test]
fn incremental_decoding_streams_the_committed_prefix_in_any_commit_order() {
    let dir = scratch("incremental");
    train_tokenizer(&dir);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let mask = tok.token_id("<|mdm_mask|>").unwrap();
    let eos = tok.token_id("<|endoftext|>").unwrap();
    // Multi-byte characters that a byte-level BPE trained on English splits across tokens.
    let text = "Diffusion déjà vu: naïve façade, 東京 and ✓ — done.";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.len() > text.chars().count() / 2);
    for seed in 0..20u64 {
        let mut rng = SplitMix64::new(seed);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut response = vec![mask; ids.len() + 3];
        let mut decoder = tok.incremental_decoder(mask, vec![eos]);
        let mut streamed = String::new();
        for (n, &pos) in order.iter().enumerate() {
            response[pos] = ids[pos];
            if n == order.len() - 1 {
                // EOS padding after the text, committed last.
                response[ids.len()..].fill(eos);
            }
            let piece = decoder.push(&response).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "seed {seed}: partial character streamed"
            );
            streamed.push_str(&piece);
            // Streamed text is always a prefix of the final text.
            assert!(text.starts_with(&streamed), "seed {seed}: {streamed:?}");
        }
        response[ids.len()..].fill(eos);
        streamed.push_str(&decoder.push(&response).unwrap());
        assert_eq!(streamed, text, "seed {seed}");
        assert_eq!(decoder.text(), text);
    }
}

/// A model folder: the fixture LLaDA's weights, the tiny character tokenizer, and a config
/// whose special ids are the tokenizer's.
fn fixture_pipeline_dir() -> Scratch {
    let dir = scratch("pipeline");
    let src = repo("tests/fixtures/golden/llada");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["mask_token_id"] = tiny_task::special_id(tiny_task::MASK).into();
    config["eos_token_id"] = tiny_task::special_id(tiny_task::EOS).into();
    config["pad_token_id"] = tiny_task::special_id(tiny_task::EOS).into();
    config["bos_token_id"] = tiny_task::special_id(tiny_task::BOS).into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    tiny_task::write_tokenizer(&dir).unwrap();
    dir
}

#[test]
fn pipeline_generates_text_with_and_without_cache() {
    let dir = fixture_pipeline_dir();
    let pipeline = Pipeline::from_dir(&dir, &Device::default()).unwrap();
    assert!(matches!(pipeline.model(), Model::Llada(_)));
    let base = GenerateOptions::default()
        .with_max_new_tokens(16)
        .with_block_length(Some(8))
        .with_stop_at_eos(false);
    for cache in [
        CacheChoice::None,
        CacheChoice::Dllm(
            DllmCacheConfig::new()
                .with_prompt_interval(4)
                .with_response_interval(2),
        ),
    ] {
        let options = base.clone().with_cache(cache.clone());
        let mut streamed = String::new();
        let out = pipeline
            .complete_stream("a=1234;b=5678;?b=", &options, &mut |event| {
                streamed.push_str(event.text);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            streamed, out.text,
            "{cache:?}: the stream adds up to the text"
        );
        assert_eq!(out.stats.prompt_tokens, 18); // BOS + 17 characters
        assert_eq!(out.stats.generated_positions, 16);
        assert_eq!(out.stats.steps, 16);
        assert_eq!(out.tokens.len(), out.stats.completion_tokens);
        assert_eq!(
            pipeline.tokenizer().decode(&out.tokens, true).unwrap(),
            out.text
        );
        assert!(out.stats.flops.total() > 0);
        match cache {
            CacheChoice::None => assert_eq!(out.stats.flops_saved, 0),
            _ => {
                assert!(out.stats.flops_saved > 0);
                assert!(out.stats.cache_bytes > 0);
            }
        }
    }
    let chat = pipeline.chat(&[ChatMessage::user("?a=")], &base).unwrap();
    assert_eq!(
        chat.stats.prompt_tokens,
        pipeline
            .tokenizer()
            .encode(
                &pipeline
                    .tokenizer()
                    .apply_chat_template(&[ChatMessage::user("?a=")], true)
                    .unwrap(),
                false
            )
            .unwrap()
            .len()
    );
}

#[test]
fn pipeline_stops_at_eos_and_trims() {
    let dir = fixture_pipeline_dir();
    let pipeline = Pipeline::from_dir(&dir, &Device::default()).unwrap();
    let eos = tiny_task::special_id(tiny_task::EOS);
    let stop = pipeline.stop_tokens();
    assert!(stop.contains(&eos) && stop.contains(&tiny_task::special_id(tiny_task::EOT)));
    // Whatever the random model writes, the kept tokens never contain a stop token.
    for seed in 0..4 {
        let options = GenerateOptions::default()
            .with_max_new_tokens(16)
            .with_block_length(Some(4))
            .with_temperature(1.0)
            .with_seed(seed);
        let out = pipeline.complete("q=9;?q=", &options).unwrap();
        assert!(out.tokens.iter().all(|t| !stop.contains(t)));
        if out.stats.stopped_at_eos {
            assert!(out.stats.steps < 16);
        }
    }
}

#[test]
fn text_inputs_fail_with_typed_errors() {
    // Missing tokenizer.json.
    let dir = scratch("missing");
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path.ends_with("tokenizer.json")),
        "{err}"
    );
    // Malformed tokenizer.json.
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)), "{err}");
    // A template that raises, one that does not parse, and no template at all.
    let dir = scratch("template");
    train_tokenizer(&dir);
    write_config(
        &dir,
        "{{ raise_exception('only user turns are supported') }}",
        "<|endoftext|>",
    );
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let err = tok
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .unwrap_err();
    assert!(
        matches!(err, Error::Tokenizer(ref m) if m.contains("only user turns")),
        "{err}"
    );
    write_config(&dir, "{% for m in messages %}", "<|endoftext|>");
    let err = Tokenizer::from_dir(&dir)
        .unwrap()
        .apply_chat_template(&[], true)
        .unwrap_err();
    assert!(
        matches!(err, Error::Tokenizer(ref m) if m.contains("does not parse")),
        "{err}"
    );
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    let err = Tokenizer::from_dir(&dir)
        .unwrap()
        .apply_chat_template(&[], true)
        .unwrap_err();
    assert!(
        matches!(err, Error::Tokenizer(ref m) if m.contains("no chat_template")),
        "{err}"
    );
    // Unknown model_type.
    let dir = fixture_pipeline_dir();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gpt2".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = Pipeline::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { ref field, .. } if field == "model_type"),
        "{err}"
    );
    // Empty prompt.
    let pipeline = Pipeline::from_dir(fixture_pipeline_dir(), &Device::default()).unwrap();
    let err = pipeline
        .generate_ids(&[], &GenerateOptions::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "prompt", .. }),
        "{err}"
    );
}
