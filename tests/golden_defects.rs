//! The golden comparison can fail: copies of real cases with one planted defect each must be
//! reported as failures, and the unmodified copies must pass.

#[path = "common/scratch.rs"]
mod common_scratch;
#[path = "golden/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use common_scratch::Scratch;
use dllm_cache::burn::tensor::Device;
use harness::{ConfidenceKind, Models, Outcome};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// A planted case file, in a scratch folder removed when this is dropped.
struct Planted {
    _root: Scratch,
    case: PathBuf,
}

impl std::ops::Deref for Planted {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.case
    }
}

/// Copies `<arch>/cases/<case>.json` (and its arrays file) into a fresh folder, with the model
/// folder pointing back at the fixture, after `edit_json` and `edit_arrays` changed it.
fn plant(
    arch: &str,
    case: &str,
    edit_json: impl FnOnce(&mut Value),
    edit_arrays: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> Planted {
    let root = Scratch::new("defect", arch, true);
    let cases = root.join(arch).join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    let src = fixture().join(arch).join("cases");
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join(format!("{case}.json"))).unwrap())
            .unwrap();
    json["model_dir"] = fixture().join(arch).to_string_lossy().into_owned().into();
    if let Some(file) = json["arrays_file"].as_str() {
        let bytes = std::fs::read(src.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut arrays: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        arrays.sort_by(|a, b| a.0.cmp(&b.0));
        edit_arrays(&mut arrays);
        let views: Vec<_> = arrays
            .iter()
            .map(|(n, d, s, b)| {
                let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
                (n.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &cases.join(file)).unwrap();
    }
    edit_json(&mut json);
    let case = cases.join(format!("{case}.json"));
    std::fs::write(&case, json.to_string()).unwrap();
    Planted { _root: root, case }
}

fn run(arch: &str, path: &Path) -> Outcome {
    harness::run_case(arch, path, &Device::default(), &mut Models::default())
}

fn assert_fails(outcome: Outcome, needles: &[&str]) {
    match outcome {
        Outcome::Failed(d) => {
            for n in needles {
                assert!(d.contains(n), "failure message lacks {n:?}: {d}");
            }
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The transfer record of `step`'s first cache call at `layer`, batch row 0.
fn transfer_row(case: &mut Value, step: usize, layer: usize) -> &mut Value {
    let call = &mut case["step_records"][step]["cache_calls"][0];
    let t = call["transfer"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["layer"] == layer)
        .unwrap();
    &mut t["rows"][0]
}

/// Replaces the first (least similar, so most clearly chosen) row of a transfer record's set
/// with a response row outside it.
fn swap_out_first_row(row: &mut Value) {
    let index: Vec<u64> = row["index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let outsider = (0..32).find(|r| !index.contains(r)).unwrap();
    row["index"][0] = outsider.into();
}

const TIE_CASE: &str = "gen_cache_p8_g4_r0.50_g32_s32_b8";

#[test]
fn unmodified_copies_pass() {
    for (arch, case) in [("llada", TIE_CASE), ("llada", "forward")] {
        let outcome = run(arch, &plant(arch, case, |_| {}, |_| {}));
        assert!(
            matches!(outcome, Outcome::Passed(_)),
            "{arch}/{case}: {outcome:?}"
        );
    }
}

#[test]
fn a_clearly_chosen_row_swapped_out_of_a_near_tie_set_fails() {
    let path = plant(
        "llada",
        TIE_CASE,
        |case| {
            let row = transfer_row(case, 3, 1);
            let margin = row["margin"].as_f64().unwrap();
            assert!(margin <= harness::TIE_BAND, "the planted set is a near tie");
            // topk order: the first row is the least similar, far below the k-th cosine.
            let kth = row["kth_smallest_cos"].as_f64().unwrap();
            assert!(row["cos"][0].as_f64().unwrap() < kth - 1e-3);
            swap_out_first_row(row);
        },
        |_| {},
    );
    assert_fails(
        run("llada", &path),
        &["step 3", "layer 1", "outside the 1e-5 tie band"],
    );
}

#[test]
fn a_swapped_row_of_a_clear_choice_fails() {
    let path = plant(
        "llada",
        TIE_CASE,
        |case| {
            let row = transfer_row(case, 1, 1);
            assert!(row["margin"].as_f64().unwrap() > harness::TIE_BAND);
            swap_out_first_row(row);
        },
        |_| {},
    );
    assert_fails(
        run("llada", &path),
        &["step 1", "layer 1", "V-verify chose"],
    );
}

#[test]
fn a_deleted_margin_fails() {
    let path = plant(
        "llada",
        TIE_CASE,
        |case| {
            let row = transfer_row(case, 5, 1);
            row.as_object_mut().unwrap().remove("margin");
        },
        |_| {},
    );
    assert_fails(run("llada", &path), &["step 5", "margin"]);
}

#[test]
fn a_nan_in_forward_logits_fails() {
    let path = plant(
        "llada",
        "forward",
        |_| {},
        |arrays| {
            let logits = arrays.iter_mut().find(|a| a.0 == "logits").unwrap();
            assert_eq!(logits.1, safetensors::Dtype::F32);
            logits.3[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
        },
    );
    assert_fails(
        run("llada", &path),
        &["logits", "non-finite value at flat index 10"],
    );
}

#[test]
fn a_missing_hidden_state_fails() {
    let path = plant(
        "dream",
        "forward",
        |_| {},
        |arrays| {
            let hidden = arrays.iter_mut().find(|a| a.0 == "hidden_states").unwrap();
            let per = hidden.3.len() / hidden.2[0];
            hidden.2[0] -= 1;
            hidden.3.truncate(hidden.3.len() - per);
        },
    );
    assert_fails(run("dream", &path), &["hidden states, expected"]);
}

#[test]
fn a_confidence_outside_its_bound_fails() {
    let path = plant(
        "dream",
        "gen_nocache_entropy_n32_s32",
        |case| {
            let c = &mut case["step_records"][4]["rows"][0]["confidences"][0];
            *c = (c.as_f64().unwrap() * 1.01).into();
        },
        |_| {},
    );
    assert_fails(run("dream", &path), &["step 4", "exceeds the bound"]);
}

#[test]
fn a_wrong_token_fails() {
    let path = plant(
        "dream",
        "gen_cache_p4_g2_r0.25_entropy_n32_s32",
        |case| {
            let t = &mut case["step_records"][6]["rows"][0]["tokens"][0];
            *t = (t.as_u64().unwrap() + 1).into();
        },
        |_| {},
    );
    assert_fails(run("dream", &path), &["step 6", "committed"]);
}

#[test]
fn fastdllm_cases_fail_on_other_rows_another_forward_count_or_a_wrong_commit() {
    let case = "fastdllm_dual_g32_b8_t0.50";
    let unchanged = run("llada", &plant("llada", case, |_| {}, |_| {}));
    assert!(matches!(unchanged, Outcome::Passed(_)), "{unchanged:?}");
    // The official forward of step 3 was given the current block; say it was given more.
    let path = plant(
        "llada",
        case,
        |c| c["step_records"][3]["model_input"]["end"] = 42.into(),
        |_| {},
    );
    assert_fails(run("llada", &path), &["step 3", "recomputed rows"]);
    let path = plant("llada", case, |c| c["nfe"] = 21.into(), |_| {});
    assert_fails(run("llada", &path), &["forwards, the official code 21"]);
    let path = plant(
        "llada",
        case,
        |c| {
            let p = &mut c["step_records"][5]["rows"][0]["positions"][0];
            *p = (p.as_u64().unwrap() + 1).into();
        },
        |_| {},
    );
    assert_fails(run("llada", &path), &["step 5", "committed"]);
    let path = plant(
        "dream",
        "fastdllm_dream_prefix_n32_b8_t0.40",
        |c| c["step_records"][2]["block_step"] = 7.into(),
        |_| {},
    );
    assert_fails(
        run("dream", &path),
        &["step 2", "block (index, start, end, step)"],
    );
}

#[test]
fn comparisons_reject_nan_and_length_mismatch_on_either_side() {
    assert!(harness::max_abs_diff(&[1.0, f32::NAN], &[1.0, 2.0]).is_err());
    assert!(harness::max_abs_diff(&[1.0, 2.0], &[f32::INFINITY, 2.0]).is_err());
    assert!(harness::max_abs_diff(&[1.0], &[1.0, 2.0]).is_err());
    assert_eq!(harness::max_abs_diff(&[1.0, 2.5], &[1.0, 2.0]), Ok(0.5));
}

#[test]
fn confidence_bounds_follow_their_derivation() {
    // 2 * delta * scale plus the float32 rounding of a 320-term softmax.
    let vocab_term = 320.0 / (1u64 << 24) as f64;
    let b = harness::confidence_bound(ConfidenceKind::Probability, 0.5, 1e-4, 320);
    assert!((b - (2e-4 + vocab_term) * 0.5).abs() < 1e-15);
    let b = harness::confidence_bound(ConfidenceKind::Margin, 0.01, 1e-4, 320);
    assert!((b - (2e-4 + vocab_term)).abs() < 1e-15);
    let b = harness::confidence_bound(ConfidenceKind::NegEntropy, -2.0, 1e-4, 320);
    assert!((b - (2e-4 + vocab_term) * 3.0).abs() < 1e-15);
}
