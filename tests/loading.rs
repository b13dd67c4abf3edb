//! Checkpoint and config loading: sharded and converted weights load to the same model, and
//! every kind of bad input returns its specific error without panicking.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::{Error, Llada, LladaConfig};
use safetensors::Dtype;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/llada")
}

/// A fresh scratch folder under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dllm-cache-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The fixture's tensors: (name, dtype, shape, bytes), sorted by name.
fn fixture_tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture().join("model.safetensors")).expect("fixture weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_safetensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("valid view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// A model folder with the fixture config and the given tensors.
fn model_dir(tag: &str, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> PathBuf {
    let dir = scratch(tag);
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).expect("copy config");
    write_safetensors(&dir.join("model.safetensors"), tensors);
    dir
}

fn logits(model: &Llada, device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = (0..20).map(|i| (i * 37 % 300) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 20]), device);
    let (logits, _) = model.forward_with_hidden_states(tokens).expect("forward");
    logits
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 logits")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_checkpoint_loads_the_same_model() {
    let device = Device::default();
    let reference = Llada::from_dir(fixture(), &device).expect("fixture loads");
    let tensors = fixture_tensors();
    let dir = scratch("sharded");
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), first);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), second);
    let mut map = serde_json::Map::new();
    for (name, ..) in first {
        map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (name, ..) in second {
        map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = Llada::from_dir(&dir, &device).expect("sharded loads");
    assert_eq!(logits(&sharded, &device), logits(&reference, &device));
}

#[test]
fn f16_and_bf16_weights_load_and_run() {
    let device = Device::default();
    let reference = logits(&Llada::from_dir(fixture(), &device).unwrap(), &device);
    for (dtype, convert) in [
        (
            Dtype::F16,
            (|v: f32| half::f16::from_f32(v).to_le_bytes()) as fn(f32) -> [u8; 2],
        ),
        (Dtype::BF16, |v: f32| half::bf16::from_f32(v).to_le_bytes()),
    ] {
        let tensors: Vec<_> = fixture_tensors()
            .into_iter()
            .map(|(n, _, s, b)| {
                let half: Vec<u8> = b
                    .chunks_exact(4)
                    .flat_map(|c| convert(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
                (n, dtype, s, half)
            })
            .collect();
        let dir = model_dir("half", &tensors);
        let model = Llada::from_dir(&dir, &device).expect("half-precision weights load");
        let got = logits(&model, &device);
        let spread = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&got, &reference);
        // Rounding the weights to 8 (bf16) or 11 (f16) mantissa bits moves logits by a few
        // percent of their range, never by the range itself.
        assert!(
            diff < 0.1 * spread,
            "{dtype:?}: diff {diff} vs spread {spread}"
        );
        assert!(diff > 0.0, "{dtype:?}: rounding must change something");
    }
}

#[test]
fn empty_directory_is_an_io_error() {
    let dir = scratch("empty");
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );
}

#[test]
fn truncated_file_is_a_checkpoint_error() {
    let dir = model_dir("truncated", &fixture_tensors());
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { ref reason, .. } if reason.contains("truncated")),
        "{err}"
    );
    std::fs::write(&file, &bytes[..5]).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { ref reason, .. } if reason.contains("too short")),
        "{err}"
    );
}

#[test]
fn header_that_lies_is_a_checkpoint_error() {
    let dir = model_dir("lying", &fixture_tensors());
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    // Header length larger than the file.
    let original = bytes[..8].to_vec();
    let lie = (bytes.len() as u64 * 2).to_le_bytes();
    bytes[..8].copy_from_slice(&lie);
    std::fs::write(&file, &bytes).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { ref reason, .. } if reason.contains("larger than the file")),
        "{err}"
    );
    // Offsets that overlap: rewrite one tensor's data_offsets to start inside another.
    bytes[..8].copy_from_slice(&original);
    let n = u64::from_le_bytes(original.try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&header).unwrap();
    let name = "model.transformer.ln_f.weight";
    let offsets = json[name]["data_offsets"].as_array().unwrap().clone();
    let start = offsets[0].as_u64().unwrap();
    let end = offsets[1].as_u64().unwrap();
    json[name]["data_offsets"] = serde_json::json!([start - 8, end - 8]);
    let mut new_header = json.to_string().into_bytes();
    new_header.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&new_header);
    std::fs::write(&file, &bytes).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { ref reason, .. } if reason.contains("invalid header")),
        "{err}"
    );
}

#[test]
fn unknown_dtype_in_header_is_a_checkpoint_error() {
    let dir = model_dir("dtype-name", &fixture_tensors());
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let patched = header.replacen("\"F32\"", "\"Q9X\"", 1);
    bytes[8..8 + n].copy_from_slice(patched.as_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { ref reason, .. } if reason.contains("Q9X")),
        "{err}"
    );
}

#[test]
fn wrong_dtype_names_the_tensor() {
    let mut tensors = fixture_tensors();
    let victim = tensors
        .iter_mut()
        .find(|t| t.0 == "model.transformer.blocks.1.up_proj.weight")
        .unwrap();
    victim.1 = Dtype::I32;
    let dir = model_dir("dtype", &tensors);
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    match err {
        Error::UnsupportedDtype { name, dtype } => {
            assert_eq!(name, "model.transformer.blocks.1.up_proj.weight");
            assert_eq!(dtype, "I32");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let mut tensors = fixture_tensors();
    let victim = tensors
        .iter_mut()
        .find(|t| t.0 == "model.transformer.blocks.2.k_proj.weight")
        .unwrap();
    victim.2 = vec![32, 128]; // same byte count as [64, 64]
    let dir = model_dir("shape", &tensors);
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    match err {
        Error::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "model.transformer.blocks.2.k_proj.weight");
            assert_eq!(expected, vec![64, 64]);
            assert_eq!(found, vec![32, 128]);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn missing_and_unused_tensors_are_errors() {
    let mut tensors = fixture_tensors();
    tensors.retain(|t| t.0 != "model.transformer.blocks.0.ff_norm.weight");
    let dir = model_dir("missing", &tensors);
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor { ref name } if name == "model.transformer.blocks.0.ff_norm.weight"),
        "{err}"
    );

    let mut tensors = fixture_tensors();
    tensors.push((
        "model.transformer.extra.bias".into(),
        Dtype::F32,
        vec![2],
        vec![0; 8],
    ));
    let dir = model_dir("unused", &tensors);
    let err = Llada::from_dir(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnusedTensors { ref names } if names == &["model.transformer.extra.bias"]),
        "{err}"
    );
}

fn config_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap()
}

#[test]
fn config_errors_are_specific() {
    let mut missing = config_json();
    missing.as_object_mut().unwrap().remove("d_model");
    let err = LladaConfig::from_json(&missing.to_string()).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref reason, .. } if reason.contains("missing field `d_model`")),
        "{err}"
    );

    let mut wrong_type = config_json();
    wrong_type["n_layers"] = "three".into();
    let err = LladaConfig::from_json(&wrong_type.to_string()).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref reason, .. } if reason.contains("invalid type")),
        "{err}"
    );

    let mut heads = config_json();
    heads["n_heads"] = 5.into();
    heads["n_kv_heads"] = 5.into();
    let err = LladaConfig::from_json(&heads.to_string()).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref reason, .. } if reason.contains("must divide `d_model`")),
        "{err}"
    );

    let mut layers = config_json();
    layers["n_layers"] = 0.into();
    let err = LladaConfig::from_json(&layers.to_string()).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref reason, .. } if reason.contains("`n_layers` must be positive")),
        "{err}"
    );

    let err = LladaConfig::from_json("{ not json").unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");

    // From a file, the error names the file.
    let dir = scratch("config");
    std::fs::write(dir.join("config.json"), missing.to_string()).unwrap();
    let err = LladaConfig::from_file(dir.join("config.json")).unwrap_err();
    assert!(
        matches!(err, Error::Config { path: Some(ref p), .. } if p.ends_with("config.json")),
        "{err}"
    );
}

#[test]
fn unsupported_settings_are_refused() {
    for (field, value) in [
        ("include_bias", serde_json::Value::Bool(true)),
        ("weight_tying", true.into()),
        ("alibi", true.into()),
        ("attention_layer_norm", true.into()),
        ("block_type", "sequential".into()),
        ("activation_type", "gelu".into()),
    ] {
        let mut config = config_json();
        config[field] = value;
        let err = LladaConfig::from_json(&config.to_string()).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { field: ref f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

#[test]
fn tokens_are_checked_before_the_forward() {
    let device = Device::default();
    let model = Llada::from_dir(fixture(), &device).unwrap();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 320, 4], [2, 2]), &device);
    let err = model.forward_with_hidden_states(tokens).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                id: 320,
                row: 1,
                position: 0,
                vocab: 320
            }
        ),
        "{err}"
    );
    let too_long = Tensor::<2, Int>::zeros([1, 4097], &device);
    let err = model.forward_with_hidden_states(too_long).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceTooLong {
                len: 4097,
                max: 4096
            }
        ),
        "{err}"
    );
    // The model still works after errors.
    let ok = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [2, 2]), &device);
    assert!(model.forward_with_hidden_states(ok).is_ok());
}

#[test]
fn dream_loads_and_its_config_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream");
    let model = dllm_cache::Dream::from_dir(&dir, &Device::default()).expect("dream fixture");
    assert_eq!(model.config().num_key_value_heads, 1);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (field, value) in [
        ("tie_word_embeddings", serde_json::Value::Bool(true)),
        ("use_sliding_window", true.into()),
        ("hidden_act", "gelu".into()),
        (
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
        ),
    ] {
        let mut config = base.clone();
        config[field] = value;
        let err = dllm_cache::DreamConfig::from_json(&config.to_string()).unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { field: ref f, .. } if f == field),
            "{field}: {err}"
        );
    }
    let mut gqa = base.clone();
    gqa["num_key_value_heads"] = 2.into(); // 7 query heads
    let err = dllm_cache::DreamConfig::from_json(&gqa.to_string()).unwrap_err();
    assert!(
        matches!(err, Error::Config { ref reason, .. } if reason.contains("`num_key_value_heads` (2) must divide `num_attention_heads` (7)")),
        "{err}"
    );
    // A Dream checkpoint is not a LLaDA checkpoint: the names do not match.
    let err = Llada::from_safetensors(
        LladaConfig::from_file(fixture().join("config.json")).unwrap(),
        &[dir.join("model.safetensors")],
        &Device::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
}
