//! Parity with the official PyTorch code, case by case.
//!
//! Reads the golden set named by `DLLM_GOLDEN_DIR` (default: the committed copy under
//! `tests/fixtures/golden`), runs every `cases/*.json` of every architecture folder and prints
//! one line per case, then a summary line:
//!
//! ```text
//! case llada/forward: ok max|dlogits|=1.8e-5 max|dhidden|=4.5e-6 (entry 2)
//! golden: 30 passed, 0 failed, 16 unsupported, 4 informational
//! ```
//!
//! `DLLM_DEVICE` (a name as `device_from_name` takes it: `ndarray`, `vulkan:cpu`, ...) runs the
//! set on that device instead of the default flex CPU backend, under the same rules.
//!
//! The process fails if any case fails. What is compared, and the one tie band, are described
//! in `harness.rs`; `tests/golden_defects.rs` plants defects into copies of cases and checks
//! that each is reported as a failure.

mod harness;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dllm_cache::burn::tensor::Device;
use harness::Outcome;

fn main() -> ExitCode {
    let dir = std::env::var_os("DLLM_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"));
    // DLLM_DEVICE runs the set on another backend (a name as `device_from_name` takes it).
    let device = match std::env::var("DLLM_DEVICE") {
        Ok(name) => match dllm_cache::device_from_name(&name) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("golden: DLLM_DEVICE={name}: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => Device::default(),
    };
    println!(
        "golden: device {}",
        std::env::var("DLLM_DEVICE").unwrap_or_else(|_| "default (flex)".into())
    );
    let mut models = harness::Models::default();
    let cases = match harness::enumerate(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("golden: cannot read {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if cases.is_empty() {
        eprintln!("golden: no cases under {}", dir.display());
        return ExitCode::FAILURE;
    }
    let [mut passed, mut failed, mut unsupported, mut informational] = [0usize; 4];
    for (arch, name, path) in cases {
        let outcome = harness::run_case(&arch, &path, &device, &mut models);
        *match outcome {
            Outcome::Passed(_) => &mut passed,
            Outcome::Failed(_) => &mut failed,
            Outcome::Unsupported(_) => &mut unsupported,
            Outcome::Informational(_) => &mut informational,
        } += 1;
        println!(
            "case {arch}/{name}: {} {}",
            outcome.word(),
            outcome.detail()
        );
    }
    println!(
        "golden: {passed} passed, {failed} failed, {unsupported} unsupported, {informational} informational"
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
