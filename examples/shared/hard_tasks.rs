//! The tasks of `models/tiny-llada-hard`: chosen so that caching and parallel decoding *can*
//! cost answers, unlike the shipped tiny model's task, whose answer digits are independent.
//!
//! * [`Task::Add`]: two [`ADD_DIGITS`]-digit numbers, written least significant digit first,
//!   `a+b=`; the answer is their sum, least significant digit first (16 or 17 digits). A
//!   digit's carry comes from every lower digit: where the two digits below sum to 9 it is
//!   only known once the digit below is, so an answer cannot be read off the prompt in one
//!   forward; it needs the committed neighbours, which is what a stale cache hides.
//! * [`Task::Lookup`]: [`FACTS`] facts `kk=vvv;` (distinct two-letter keys, three-digit
//!   values) and a query `kk?`, 263 prompt tokens; the answer is the query's value. The long
//!   static prompt and short answer of the paper's HotpotQA-like regime.
//!
//! Every response is [`GEN_LENGTH`] tokens (answer, then EOS), decoded in blocks of
//! [`BLOCK_LENGTH`]. Characters and special tokens are those of `tiny_task.rs`. Problems are
//! split by a hash of their prompt as there: training never sees a held-out prompt.

#![allow(dead_code)] // each example uses part of this module

use dllm_cache::SplitMix64;

use crate::tiny_task::{encode_answer_to, fnv};

/// Response length of every task.
pub const GEN_LENGTH: usize = 32;
/// Semi-autoregressive block length of evaluation.
pub const BLOCK_LENGTH: usize = 8;
/// Digits of each addend.
pub const ADD_DIGITS: usize = 16;
/// Facts in an evaluated lookup prompt (1 + 37 * 7 + 3 = 263 tokens with BOS).
pub const FACTS: usize = 37;
/// Training also draws lookup prompts of 4 to `TRAIN_MAX_FACTS` facts: short ones teach the
/// lookup quickly and cheaply, the long ones keep it working at the evaluated length.
pub const TRAIN_MAX_FACTS: usize = 40;

/// A task of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Add,
    Lookup,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::Add, Task::Lookup];

    pub fn name(self) -> &'static str {
        match self {
            Task::Add => "add",
            Task::Lookup => "lookup",
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

/// Sum of two numbers given as digits, least significant first, in the same order.
pub fn add_reversed(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0;
    for i in 0..a.len().max(b.len()) {
        let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
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

/// A random addition problem (either split).
pub fn add_problem(rng: &mut SplitMix64) -> Problem {
    let a: Vec<u8> = (0..ADD_DIGITS).map(|_| digit(rng)).collect();
    let b: Vec<u8> = (0..ADD_DIGITS).map(|_| digit(rng)).collect();
    Problem {
        task: Task::Add,
        prompt: format!("{}+{}=", text(&a), text(&b)),
        answer: text(&add_reversed(&a, &b)),
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
    let mut prompt = String::with_capacity(facts * 7 + 3);
    let mut values = Vec::with_capacity(facts);
    for k in &keys {
        let v: Vec<u8> = (0..3).map(|_| digit(rng)).collect();
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

/// A random problem of `task` at the evaluated size (either split).
pub fn random_problem(rng: &mut SplitMix64, task: Task) -> Problem {
    match task {
        Task::Add => add_problem(rng),
        Task::Lookup => lookup_problem(rng, FACTS),
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

/// The next training problem of `task`; lookups with `facts` facts.
pub fn next_train_problem(rng: &mut SplitMix64, task: Task, facts: usize) -> Problem {
    loop {
        let p = match task {
            Task::Add => add_problem(rng),
            Task::Lookup => lookup_problem(rng, facts),
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
    fn reversed_addition_carries() {
        assert_eq!(add_reversed(&[9, 9], &[1, 0]), vec![0, 0, 1]);
        assert_eq!(add_reversed(&[1, 2], &[3, 4]), vec![4, 6]);
    }
}
