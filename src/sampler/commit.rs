//! Commit rules: how many of a step's candidates (masked positions, ranked by confidence) the
//! step commits. Shared by both samplers and independent of the cache policy.
//!
//! * [`CommitRule::Schedule`]: a fixed number per step, set before the block starts (LLaDA's
//!   `get_num_transfer_tokens`, Dream's `int(n * (1 - s / t))`);
//! * [`CommitRule::Threshold`]: Fast-dLLM's confidence-threshold parallel decoding
//!   (`get_transfer_index` with `threshold`): the most confident candidate always, every other
//!   one iff its confidence is at least `tau`;
//! * [`CommitRule::Factor`]: Fast-dLLM's factor rule (`get_transfer_index_dynamic`): the
//!   longest prefix of the ranked candidates whose `n`-th confidence (1-based, `n >= 2`) is at
//!   least `1 - f / (n + 1)`, at least one; as in the official code the last-ranked candidate
//!   is never tested (a stop there commits it too).
//!
//! Under the threshold and factor rules a block ends when it has no mask left, so the number
//! of steps per block depends on the data; `steps` is then only checked as the official code
//! asserts it (a multiple of the number of blocks).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many candidates a step commits. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum CommitRule {
    /// The fixed schedule of the sampler (the reference samplers' rule).
    #[default]
    Schedule,
    /// Fast-dLLM threshold `tau` in (0, 1]: top-1 always, others iff confidence >= tau.
    Threshold(f64),
    /// Fast-dLLM factor `f` > 0: rank `n >= 2` passes iff confidence >= 1 - f / (n + 1).
    Factor(f64),
}

impl CommitRule {
    /// Checks the rule's parameter.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`commit`) for a threshold outside (0, 1] or a factor that is
    /// not a positive finite number.
    pub fn validate(&self) -> Result<()> {
        match *self {
            CommitRule::Schedule => Ok(()),
            CommitRule::Threshold(t) if t > 0.0 && t <= 1.0 => Ok(()),
            CommitRule::Factor(f) if f.is_finite() && f > 0.0 => Ok(()),
            CommitRule::Threshold(t) => Err(Error::invalid(
                "commit",
                format!("a threshold must be in (0, 1], got {t}"),
            )),
            CommitRule::Factor(f) => Err(Error::invalid(
                "commit",
                format!("a factor must be positive and finite, got {f}"),
            )),
        }
    }

    /// Whether the number of steps depends on the confidences (threshold and factor).
    pub fn is_adaptive(&self) -> bool {
        !matches!(self, CommitRule::Schedule)
    }

    /// How many of the candidates ranked by `sorted` (confidences, descending) this rule
    /// commits; `scheduled` is the count of the fixed schedule for this step.
    pub(crate) fn count(&self, sorted: &[f64], scheduled: usize) -> usize {
        match *self {
            CommitRule::Schedule => scheduled.min(sorted.len()),
            CommitRule::Threshold(tau) => threshold_count(sorted, tau),
            CommitRule::Factor(f) => factor_count(sorted, f),
        }
    }
}

impl std::fmt::Display for CommitRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitRule::Schedule => write!(f, "schedule"),
            CommitRule::Threshold(t) => write!(f, "threshold:{t}"),
            CommitRule::Factor(x) => write!(f, "factor:{x}"),
        }
    }
}

impl std::str::FromStr for CommitRule {
    type Err = Error;

    /// `schedule`, `threshold:TAU` or `factor:F` (the examples' `--decode`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "commit",
                format!("`{s}` (expected schedule, threshold:TAU or factor:F)"),
            )
        };
        let rule = match s.split_once(':') {
            None if s == "schedule" => CommitRule::Schedule,
            Some(("threshold", v)) => CommitRule::Threshold(v.parse().map_err(|_| bad())?),
            Some(("factor", v)) => CommitRule::Factor(v.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        rule.validate()?;
        Ok(rule)
    }
}

/// Top-1 always; each later candidate iff `confidence >= tau` (the official `< tau` un-selects).
fn threshold_count(sorted: &[f64], tau: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    1 + sorted[1..].iter().filter(|&&c| c >= tau).count()
}

/// The official scan: bounds `1 - f / (n + 1)` for ranks `n = 1..N` with the first replaced
/// by -1, stop at the first confidence below its bound; a stop at rank 1 or at the last rank,
/// or no stop at all, commits one more than the stop index.
fn factor_count(sorted: &[f64], f: f64) -> usize {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let stop = sorted
        .iter()
        .enumerate()
        .position(|(i, &c)| {
            let bound = if i == 0 {
                -1.0
            } else {
                1.0 - f / (i as f64 + 2.0)
            };
            c < bound
        })
        .unwrap_or(n - 1);
    if stop == 0 || stop == n - 1 {
        stop + 1
    } else {
        stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_top1_and_everything_at_or_above() {
        assert_eq!(threshold_count(&[], 0.9), 0);
        assert_eq!(threshold_count(&[0.2, 0.1], 0.9), 1);
        assert_eq!(threshold_count(&[0.99, 0.9, 0.89], 0.9), 2);
        assert_eq!(threshold_count(&[0.95, 0.95, 0.95], 0.9), 3);
    }

    #[test]
    fn factor_follows_the_official_scan_and_its_last_rank_quirk() {
        // Bounds for f = 1: rank 2 >= 2/3, rank 3 >= 3/4, rank 4 >= 4/5.
        assert_eq!(factor_count(&[0.3], 1.0), 1);
        // Two left: both always committed (the last rank is never tested).
        assert_eq!(factor_count(&[0.165, 0.162], 1.5), 2);
        assert_eq!(factor_count(&[0.9, 0.7, 0.1, 0.1], 1.0), 2);
        assert_eq!(factor_count(&[0.9, 0.5, 0.9, 0.9], 1.0), 1);
        // A stop at the last rank commits all.
        assert_eq!(factor_count(&[0.9, 0.8, 0.1], 1.0), 3);
        assert_eq!(factor_count(&[0.99, 0.99, 0.99, 0.99], 1.0), 4);
    }

    #[test]
    fn rules_parse_and_validate() {
        assert_eq!(
            "schedule".parse::<CommitRule>().unwrap(),
            CommitRule::Schedule
        );
        assert_eq!(
            "threshold:0.9".parse::<CommitRule>().unwrap(),
            CommitRule::Threshold(0.9)
        );
        assert_eq!(
            "factor:1".parse::<CommitRule>().unwrap(),
            CommitRule::Factor(1.0)
        );
        for bad in [
            "threshold:1.5",
            "threshold:x",
            "factor:-1",
            "greedy",
            "factor:inf",
        ] {
            assert!(bad.parse::<CommitRule>().is_err(), "{bad}");
        }
        assert_eq!(CommitRule::Threshold(0.7).to_string(), "threshold:0.7");
    }
}
