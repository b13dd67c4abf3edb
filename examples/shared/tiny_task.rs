//! The task of the embedded tiny model: infer a digit operation from worked examples.
//!
//! A prompt shows [`EXAMPLES`] worked examples `ddddd>ddddd;` of one hidden operation on
//! 5-digit strings (copy, add 1 to every digit modulo 10, add 5 modulo 10, or replace every
//! digit d by 9 - d), then a query `ddddd>`. The answer applies the same operation to the query: 5 digits,
//! then EOS up to [`GEN_LENGTH`] tokens. The answer depends on the whole static prompt (about
//! 80 characters): the operation is only visible in the examples, as in the few-shot
//! benchmarks of the paper. Checked by exact match. Tokens are characters.
//!
//! Problems are split by a hash of their prompt: training uses only problems whose hash is not
//! 0 mod 10, evaluation only those whose hash is, so held-out problems are never trained on.

#![allow(dead_code)] // each example uses part of this module

use std::path::Path;

use dllm_cache::SplitMix64;

/// Response length: 5 digits, then EOS padding.
pub const GEN_LENGTH: usize = 8;
/// Worked examples per prompt.
pub const EXAMPLES: usize = 6;
/// Digits of every operand.
pub const DIGITS: usize = 5;

/// The hidden operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Copy,
    Increment,
    AddFive,
    Complement,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Copy, Op::Increment, Op::AddFive, Op::Complement];

    pub fn apply(self, digits: &str) -> String {
        let d = |c: char| c.to_digit(10).expect("a digit");
        match self {
            Op::Copy => digits.to_string(),
            Op::AddFive => digits
                .chars()
                .map(|c| char::from(b'0' + ((d(c) + 5) % 10) as u8))
                .collect(),
            Op::Increment => digits
                .chars()
                .map(|c| char::from(b'0' + ((d(c) + 1) % 10) as u8))
                .collect(),
            Op::Complement => digits
                .chars()
                .map(|c| char::from(b'0' + (9 - d(c)) as u8))
                .collect(),
        }
    }
}

pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";
pub const MASK: &str = "<|mdm_mask|>";
pub const EOT: &str = "<|eot_id|>";
pub const HEADER_START: &str = "<|start_header_id|>";
pub const HEADER_END: &str = "<|end_header_id|>";
pub const UNK: &str = "<unk>";

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Prompt text (without BOS).
    pub prompt: String,
    /// Expected answer text.
    pub answer: String,
    /// The hidden operation.
    pub op: Op,
}

/// Characters of the vocabulary, in id order; special tokens follow.
pub fn chars() -> Vec<char> {
    let mut v: Vec<char> = ('0'..='9').collect();
    v.extend('a'..='z');
    v.extend(['=', ';', '?', '>', ' ', '\n', ':', ',', '.', '-', '+']);
    v
}

/// Special tokens after the characters, in id order.
pub fn specials() -> [&'static str; 7] {
    [UNK, BOS, EOS, MASK, EOT, HEADER_START, HEADER_END]
}

/// Id of a special token.
pub fn special_id(token: &str) -> u32 {
    let base = chars().len() as u32;
    base + specials()
        .iter()
        .position(|t| *t == token)
        .expect("a special token") as u32
}

/// Number of ids (characters plus specials).
pub fn vocab_size() -> usize {
    chars().len() + specials().len()
}

/// FNV-1a hash of a prompt: what splits problems into training and held-out sets.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Whether a problem belongs to the held-out split.
pub fn held_out(p: &Problem) -> bool {
    fnv(&p.prompt).is_multiple_of(10)
}

fn random_digits(rng: &mut SplitMix64) -> String {
    (0..DIGITS)
        .map(|_| char::from(b'0' + (rng.next_u64() % 10) as u8))
        .collect()
}

/// A random problem (either split).
pub fn random_problem(rng: &mut SplitMix64) -> Problem {
    let op = Op::ALL[(rng.next_u64() % Op::ALL.len() as u64) as usize];
    let mut prompt = String::new();
    for _ in 0..EXAMPLES {
        let x = random_digits(rng);
        prompt.push_str(&x);
        prompt.push('>');
        prompt.push_str(&op.apply(&x));
        prompt.push(';');
    }
    let query = random_digits(rng);
    prompt.push_str(&query);
    prompt.push('>');
    Problem {
        answer: op.apply(&query),
        prompt,
        op,
    }
}

/// The next problem of a split.
pub fn next_problem(rng: &mut SplitMix64, eval: bool) -> Problem {
    loop {
        let p = random_problem(rng);
        if held_out(&p) == eval {
            return p;
        }
    }
}

/// Token ids of a prompt: BOS then one id per character.
pub fn encode_prompt(prompt: &str) -> Vec<u32> {
    let chars = chars();
    std::iter::once(special_id(BOS))
        .chain(prompt.chars().map(|c| {
            chars
                .iter()
                .position(|&x| x == c)
                .map_or(special_id(UNK), |i| i as u32)
        }))
        .collect()
}

/// Target response ids: the answer's characters, then EOS up to [`GEN_LENGTH`].
pub fn encode_answer(answer: &str) -> Vec<u32> {
    encode_answer_to(answer, GEN_LENGTH)
}

/// Target response ids: the answer's characters, then EOS up to `len` tokens.
pub fn encode_answer_to(answer: &str, len: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = encode_prompt(answer)[1..].to_vec();
    ids.resize(len, special_id(EOS));
    ids
}

/// Text of a response: characters up to the first special token.
pub fn decode_answer(ids: &[u32]) -> String {
    let chars = chars();
    ids.iter()
        .map_while(|&i| chars.get(i as usize).copied())
        .collect()
}

/// Writes `tokenizer.json` (a character-level WordLevel tokenizer that adds BOS),
/// `tokenizer_config.json` (special tokens and a LLaDA-style chat template) and
/// `generation_config.json` (this task's [`GEN_LENGTH`], one token per step) into `dir`.
pub fn write_tokenizer(dir: &Path) -> std::io::Result<()> {
    write_tokenizer_for(dir, GEN_LENGTH)
}

/// As [`write_tokenizer`], for responses of `gen_length` tokens.
pub fn write_tokenizer_for(dir: &Path, gen_length: usize) -> std::io::Result<()> {
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut added = Vec::new();
    for t in specials() {
        let id = special_id(t);
        vocab.insert(t.to_string(), id.into());
        added.push(serde_json::json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        }));
    }
    let bos = special_id(BOS);
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos], "tokens": [BOS]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tokenizer)? + "\n",
    )?;
    let template = "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    let config = serde_json::json!({
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
        "mask_token": MASK,
        "chat_template": template,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast"
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    let generation = serde_json::json!({
        "bos_token_id": bos,
        "eos_token_id": special_id(EOS),
        "pad_token_id": special_id(EOS),
        "max_new_tokens": gen_length,
        "steps": gen_length,
        "temperature": 0.0
    });
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_string_pretty(&generation)? + "\n",
    )
}
