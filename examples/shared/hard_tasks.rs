//! The tasks of `models/tiny-llada-hard`: chosen so that caching and parallel decoding *can*
//! cost answers, unlike the shipped tiny model's task, whose answer digits are independent.
//!
//! * [`Task::Mul`]: a [`MUL_DIGITS`]-digit number written least significant digit first and
//!   `*7=`; the answer is the product, least significant digit first (16 or 17 digits). Digit
//!   `i` is `7 * a_i + c_i mod 10`, and the carry `c_i` (0 to 6) comes from every lower digit:
//!   it follows from `a_{i-1}` alone only sometimes (`7 * a_{i-1} + c` crosses a multiple of
//!   10 for some carries `c` when `a_{i-1}` is 1, 2, 4, 5, 7 or 8), otherwise from the digit
//!   below, so the answer digits depend on each other and an answer cannot be read off the
//!   prompt in one forward. The committed neighbours give it away, and a stale cache hides
//!   them.
//! * [`Task::Fewshot`]: [`EXAMPLES`] worked examples `ddddd>ddddd;` of one hidden digit
//!   operation (copy, +1, +5 or 9 - d on every digit, as in the shipped tiny model's task) and
//!   a query `ddddd>`, 259 prompt tokens; the answer is the operation applied to the query
//!   (5 digits). The operation is only in the long prompt: the long static prompt and short
//!   answer of the paper's long-prompt regime (few-shot GSM8K, HotpotQA-like contexts).
//! * [`Task::Lookup`] (`train_tiny --tasks mul-lookup` only): [`FACTS`] facts `kk=vv;`
//!   (distinct two-letter keys, two-digit values) and a query `kk?`, 262 prompt tokens; the
//!   answer is the query's value. A model of this size did not learn it within the training
//!   budget (docs/benchmarks.md), so it is not among the shipped model's tasks.
//!
//! * [`Task::Retrieval`] (training stages only): [`RETRIEVAL_FACTS`] facts `k=ddddddd;`
//!   (every one-letter key once, in random order, seven-digit values) and a query `k?`, 263
//!   prompt tokens; the answer is the query's value, copied from one place in the long prompt
//!   (the paper's HotpotQA-like regime: a long context, a short answer found in it).
//!   One-letter keys make the match a comparison of one token with one token, which the
//!   two-letter lookup lacked.
//! * [`Task::Passkey`]: the same 26 facts, one of them (at a random place) keyed `+` instead of
//!   a letter, and the query `+?`: the passkey retrieval of long-context tests, the answer
//!   found in one place of a 263-token prompt among 25 distractors shaped like it. The
//!   shipped model's third task: the long context with a short retrieved answer.
//!
//! Every response is [`GEN_LENGTH`] tokens (answer, then EOS), decoded in blocks of
//! [`BLOCK_LENGTH`]. Characters and special tokens are those of `tiny_task.rs`. Problems are
//! split by a hash of their prompt as there: training never sees a held-out prompt.

#![allow(dead_code)] // each example uses part of this module

use dllm_cache::SplitMix64;

use crate::tiny_task::{Op, encode_answer_to, fnv};

/// Response length of every task.
pub const GEN_LENGTH: usize = 32;
/// Semi-autoregressive block length of evaluation.
pub const BLOCK_LENGTH: usize = 8;
/// Digits of the multiplicand.
pub const MUL_DIGITS: usize = 16;
/// The multiplier.
pub const MULTIPLIER: u8 = 7;
/// Worked examples in an evaluated few-shot prompt (1 + 21 * 12 + 6 = 259 tokens with BOS).
pub const EXAMPLES: usize = 21;
/// Training draws few-shot prompts of 1 to `TRAIN_MAX_EXAMPLES` examples.
pub const TRAIN_MAX_EXAMPLES: usize = 22;
/// Facts in a long lookup prompt (1 + 43 * 6 + 3 = 262 tokens with BOS).
pub const FACTS: usize = 43;
/// Training draws lookup prompts of 1 to `TRAIN_MAX_FACTS` facts: with one fact the answer
/// is a copy at a fixed place, with more it must be found by its key, a gradual path to the
/// lookup; the long ones keep it working at the evaluated length.
pub const TRAIN_MAX_FACTS: usize = 46;

/// Facts in an evaluated retrieval prompt: every letter once (1 + 26 * 10 + 2 = 263 tokens
/// with BOS); training draws 1 to 26 facts.
pub const RETRIEVAL_FACTS: usize = 26;
/// Digits of a retrieved value.
pub const VALUE_DIGITS: usize = 7;

/// A task of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Mul,
    Fewshot,
    Lookup,
    Retrieval,
    Passkey,
}

impl Task {
    /// The tasks of `models/tiny-llada-hard`, evaluated and tested.
    pub const ALL: [Task; 3] = [Task::Mul, Task::Fewshot, Task::Passkey];

    pub fn name(self) -> &'static str {
        match self {
            Task::Mul => "mul",
            Task::Fewshot => "fewshot",
            Task::Lookup => "lookup",
            Task::Retrieval => "retrieval",
            Task::Passkey => "passkey",
        }
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub task: Task,
    /// Prompt text (without BOS).
    pub prompt: String,
    /// Expected answer text.
    pub answer: String,
}

fn digit(rng: &mut SplitMix64) -> u8 {
    (rng.next_u64() % 10) as u8
}

/// `k * a` for a number given as digits, least significant first, in the same order.
pub fn mul_reversed(a: &[u8], k: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + 1);
    let mut carry = 0;
    for &d in a {
        let s = k * d + carry;
        out.push(s % 10);
        carry = s / 10;
    }
    if carry > 0 {
        out.push(carry);
    }
    out
}

fn text(digits: &[u8]) -> String {
    digits.iter().map(|&d| char::from(b'0' + d)).collect()
}

/// A random multiplication problem (either split).
pub fn mul_problem(rng: &mut SplitMix64) -> Problem {
    let a: Vec<u8> = (0..MUL_DIGITS).map(|_| digit(rng)).collect();
    Problem {
        task: Task::Mul,
        prompt: format!("{}*{MULTIPLIER}=", text(&a)),
        answer: text(&mul_reversed(&a, MULTIPLIER)),
    }
}

/// A random lookup problem with `facts` facts (either split).
pub fn lookup_problem(rng: &mut SplitMix64, facts: usize) -> Problem {
    let mut keys: Vec<[u8; 2]> = Vec::with_capacity(facts);
    while keys.len() < facts {
        let k = [
            b'a' + (rng.next_u64() % 26) as u8,
            b'a' + (rng.next_u64() % 26) as u8,
        ];
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut prompt = String::with_capacity(facts * 6 + 3);
    let mut values = Vec::with_capacity(facts);
    for k in &keys {
        let v: Vec<u8> = (0..2).map(|_| digit(rng)).collect();
        prompt.push(char::from(k[0]));
        prompt.push(char::from(k[1]));
        prompt.push('=');
        prompt.push_str(&text(&v));
        prompt.push(';');
        values.push(v);
    }
    let q = (rng.next_u64() % facts as u64) as usize;
    prompt.push(char::from(keys[q][0]));
    prompt.push(char::from(keys[q][1]));
    prompt.push('?');
    Problem {
        task: Task::Lookup,
        prompt,
        answer: text(&values[q]),
    }
}

/// The first `facts` letters of a random order of the alphabet (at most 26): distinct keys.
fn random_letters(rng: &mut SplitMix64, facts: usize) -> Vec<u8> {
    let mut keys: Vec<u8> = (b'a'..=b'z').collect();
    // Fisher-Yates, stopped after the places that are kept.
    for i in 0..facts {
        let j = i + (rng.next_u64() % (keys.len() - i) as u64) as usize;
        keys.swap(i, j);
    }
    keys.truncate(facts);
    keys
}

/// The facts `k=ddddddd;` of `keys`, with random values: (their text, the values).
fn facts_text(rng: &mut SplitMix64, keys: &[u8]) -> (String, Vec<String>) {
    let mut prompt = String::with_capacity(keys.len() * (VALUE_DIGITS + 3) + 2);
    let mut values = Vec::with_capacity(keys.len());
    for &k in keys {
        let v = text(&(0..VALUE_DIGITS).map(|_| digit(rng)).collect::<Vec<u8>>());
        prompt.push(char::from(k));
        prompt.push('=');
        prompt.push_str(&v);
        prompt.push(';');
        values.push(v);
    }
    (prompt, values)
}

/// A random retrieval problem with `facts` facts (at most 26; either split).
pub fn retrieval_problem(rng: &mut SplitMix64, facts: usize) -> Problem {
    let keys = random_letters(rng, facts.clamp(1, RETRIEVAL_FACTS));
    let (mut prompt, mut values) = facts_text(rng, &keys);
    let q = (rng.next_u64() % keys.len() as u64) as usize;
    prompt.push(char::from(keys[q]));
    prompt.push('?');
    Problem {
        task: Task::Retrieval,
        prompt,
        answer: values.swap_remove(q),
    }
}

/// A random passkey problem with `facts` facts (at most 26, one of them the passkey; either
/// split).
pub fn passkey_problem(rng: &mut SplitMix64, facts: usize) -> Problem {
    let mut keys = random_letters(rng, facts.clamp(1, RETRIEVAL_FACTS));
    let needle = (rng.next_u64() % keys.len() as u64) as usize;
    keys[needle] = b'+';
    let (mut prompt, mut values) = facts_text(rng, &keys);
    prompt.push_str("+?");
    Problem {
        task: Task::Passkey,
        prompt,
        answer: values.swap_remove(needle),
    }
}

/// A random few-shot problem with `examples` worked examples (either split).
pub fn fewshot_problem(rng: &mut SplitMix64, examples: usize) -> Problem {
    let op = Op::ALL[(rng.next_u64() % Op::ALL.len() as u64) as usize];
    let digits = |rng: &mut SplitMix64| -> String {
        (0..5).map(|_| char::from(b'0' + digit(rng))).collect()
    };
    let mut prompt = String::with_capacity(examples * 12 + 6);
    for _ in 0..examples {
        let x = digits(rng);
        prompt.push_str(&x);
        prompt.push('>');
        prompt.push_str(&op.apply(&x));
        prompt.push(';');
    }
    let query = digits(rng);
    prompt.push_str(&query);
    prompt.push('>');
    Problem {
        task: Task::Fewshot,
        answer: op.apply(&query),
        prompt,
    }
}

/// A random problem of `task` at the evaluated size (either split).
pub fn random_problem(rng: &mut SplitMix64, task: Task) -> Problem {
    match task {
        Task::Mul => mul_problem(rng),
        Task::Fewshot => fewshot_problem(rng, EXAMPLES),
        Task::Lookup => lookup_problem(rng, FACTS),
        Task::Retrieval => retrieval_problem(rng, RETRIEVAL_FACTS),
        Task::Passkey => passkey_problem(rng, RETRIEVAL_FACTS),
    }
}

/// Whether a prompt belongs to the held-out split.
pub fn held_out(prompt: &str) -> bool {
    fnv(prompt).is_multiple_of(10)
}

/// The next held-out problem of `task` at the evaluated size.
pub fn next_eval_problem(rng: &mut SplitMix64, task: Task) -> Problem {
    loop {
        let p = random_problem(rng, task);
        if held_out(&p.prompt) {
            return p;
        }
    }
}

/// The next training problem of `task`; few-shot prompts with `size` examples, lookups and
/// retrievals with `size` facts.
pub fn next_train_problem(rng: &mut SplitMix64, task: Task, size: usize) -> Problem {
    loop {
        let p = match task {
            Task::Mul => mul_problem(rng),
            Task::Fewshot => fewshot_problem(rng, size),
            Task::Lookup => lookup_problem(rng, size),
            Task::Retrieval => retrieval_problem(rng, size),
            Task::Passkey => passkey_problem(rng, size),
        };
        if !held_out(&p.prompt) {
            return p;
        }
    }
}

/// Target response ids: the answer, then EOS up to [`GEN_LENGTH`].
pub fn encode_answer(answer: &str) -> Vec<u32> {
    encode_answer_to(answer, GEN_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_multiplication_carries() {
        // 98 * 7 = 686; 15 * 7 = 105
        assert_eq!(mul_reversed(&[8, 9], 7), vec![6, 8, 6]);
        assert_eq!(mul_reversed(&[5, 1], 7), vec![5, 0, 1]);
    }

    #[test]
    fn retrieval_prompt_has_every_key_once_and_the_answer_after_the_query_key() {
        let mut rng = SplitMix64::new(3);
        let p = retrieval_problem(&mut rng, RETRIEVAL_FACTS);
        assert_eq!(p.prompt.len() + 1, 263);
        let facts: Vec<&str> = p.prompt.split(';').collect();
        let (query, facts) = facts.split_last().unwrap();
        let mut keys: Vec<u8> = facts.iter().map(|f| f.as_bytes()[0]).collect();
        keys.sort_unstable();
        assert_eq!(keys, (b'a'..=b'z').collect::<Vec<u8>>());
        let key = &query[..1];
        let fact = facts.iter().find(|f| f.starts_with(key)).unwrap();
        assert_eq!(&fact[2..], p.answer);
        assert_eq!(p.answer.len(), VALUE_DIGITS);
    }

    #[test]
    fn passkey_prompt_has_one_needle_among_distinct_letters() {
        let mut rng = SplitMix64::new(4);
        let p = passkey_problem(&mut rng, RETRIEVAL_FACTS);
        assert_eq!(p.prompt.len() + 1, 263);
        assert!(p.prompt.ends_with("+?"));
        let facts: Vec<&str> = p.prompt.split(';').collect();
        let (_, facts) = facts.split_last().unwrap();
        let needles: Vec<&&str> = facts.iter().filter(|f| f.starts_with('+')).collect();
        assert_eq!(needles.len(), 1);
        assert_eq!(&needles[0][2..], p.answer);
        let mut keys: Vec<u8> = facts.iter().map(|f| f.as_bytes()[0]).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), RETRIEVAL_FACTS);
    }
}
