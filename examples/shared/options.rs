//! The cache-policy and commit-rule flags every example takes: `--policy none|dllm|prefix|dual`
//! (with `--kp --kr --rho` for dllm) and `--decode schedule|threshold:TAU|factor:F`.

#![allow(dead_code)] // each example uses part of this module

use clap::ValueEnum;
use dllm_cache::pipeline::CacheChoice;
use dllm_cache::sampler::CommitRule;
use dllm_cache::{CachePolicy, DllmCacheConfig};

/// A cache policy by name.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PolicyName {
    /// No caching.
    None,
    /// dLLM-Cache (`--kp`, `--kr`, `--rho`).
    Dllm,
    /// Fast-dLLM's prefix cache.
    Prefix,
    /// Fast-dLLM's dual cache.
    Dual,
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown policy `{s}` (none, dllm, prefix, dual)"))
    }
}

/// dLLM-Cache's settings and the commit rule, as flags.
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// dLLM-Cache prompt refresh interval K_p.
    #[arg(long, default_value_t = 100)]
    pub kp: usize,
    /// dLLM-Cache response refresh interval K_r.
    #[arg(long, default_value_t = 7)]
    pub kr: usize,
    /// dLLM-Cache V-verify ratio rho.
    #[arg(long, default_value_t = 0.25)]
    pub rho: f64,
    /// dLLM-Cache: do not force layer 0 to refresh every step (the paper's FLOPs convention).
    #[arg(long)]
    pub no_refresh_first_layer: bool,
    /// Commit rule: schedule, threshold:TAU (Fast-dLLM, e.g. threshold:0.9) or factor:F.
    #[arg(long, default_value = "schedule", value_parser = parse_rule)]
    pub decode: CommitRule,
}

fn parse_rule(s: &str) -> Result<CommitRule, String> {
    s.parse().map_err(|e: dllm_cache::Error| e.to_string())
}

impl PolicyArgs {
    /// The dLLM-Cache settings of the flags.
    pub fn dllm(&self) -> DllmCacheConfig {
        DllmCacheConfig::new()
            .with_prompt_interval(self.kp)
            .with_response_interval(self.kr)
            .with_refresh_ratio(self.rho)
            .with_refresh_first_layer(!self.no_refresh_first_layer)
    }

    /// The pipeline's name for the policy `name`.
    pub fn choice(&self, name: PolicyName) -> CacheChoice {
        match name {
            PolicyName::None => CacheChoice::None,
            PolicyName::Dllm => CacheChoice::Dllm(self.dllm()),
            PolicyName::Prefix => CacheChoice::Prefix,
            PolicyName::Dual => CacheChoice::Dual,
        }
    }

    /// The policy `name` with the flags' settings.
    pub fn policy(&self, name: PolicyName) -> dllm_cache::Result<Box<dyn CachePolicy>> {
        self.choice(name).policy()
    }
}

/// One setting of a comparison: `POLICY` or `POLICY@DECODE` (for example `dual@threshold:0.9`;
/// without `@` the `--decode` flag's rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting {
    pub policy: PolicyName,
    pub decode: Option<CommitRule>,
}

impl std::str::FromStr for Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (policy, decode) = match s.split_once('@') {
            Some((p, d)) => (p, Some(parse_rule(d)?)),
            None => (s, None),
        };
        Ok(Self {
            policy: policy.parse()?,
            decode,
        })
    }
}

impl Setting {
    /// A label: the policy, and the rule when it is not the fixed schedule.
    pub fn label(&self, default: CommitRule) -> String {
        let rule = self.decode.unwrap_or(default);
        let policy = format!("{:?}", self.policy).to_lowercase();
        match rule {
            CommitRule::Schedule => policy,
            rule => format!("{policy}@{rule}"),
        }
    }
}
