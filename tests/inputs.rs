//! Loading and input validation. Sharded, converted and saved weights load to the same model;
//! a table of bad inputs through the public API, each with the exact error it must produce.

use std::path::{Path, PathBuf};

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::cache::{CachePolicy, FeatureCache, Probe, Refresh, Segment, StepInfo};
use dllm_cache::{
    Denoiser, DreamAlg, DreamSamplerConfig, Error, FlopCounter, Llada, LladaConfig, SpecialTokens,
    StepContext,
};
use safetensors::Dtype;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/llada")
}

#[path = "common/scratch.rs"]
mod common_scratch;
use common_scratch::Scratch;

/// A fresh, empty scratch folder under the system temp dir.
fn scratch(tag: &str) -> Scratch {
    Scratch::new("test", tag, true)
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
fn model_dir(tag: &str, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Scratch {
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
fn dream_loads_and_a_saved_llada_reloads_identically() {
    let device = Device::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream");
    let dream = dllm_cache::Dream::from_dir(&dir, &device).expect("dream fixture");
    assert_eq!(dream.config().num_key_value_heads, 1);
    let llada = Llada::from_dir(fixture(), &device).unwrap();
    let out = scratch("saved");
    llada
        .save_dir(&out, dllm_cache::model::SaveDtype::F32)
        .unwrap();
    let reloaded = Llada::from_dir(&out, &device).unwrap();
    assert_eq!(reloaded.config(), llada.config());
    assert_eq!(logits(&reloaded, &device), logits(&llada, &device));
}

fn config_json(arch: &str) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(arch);
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// The fixture folder with its weights file rewritten by `edit`.
fn edited_checkpoint(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Scratch {
    let dir = model_dir(tag, &fixture_tensors());
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    edit(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    dir
}

/// Rewrites the JSON header of a safetensors file in place (same length, space-padded).
fn edit_header(bytes: &mut [u8], edit: impl FnOnce(&mut serde_json::Value)) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut json);
    let mut header = json.to_string().into_bytes();
    assert!(header.len() <= n, "edited header must not grow");
    header.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&header);
}

/// A folder with the fixture's weights and an edited config.
fn config_dir(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Scratch {
    let dir = model_dir(tag, &fixture_tensors());
    let mut config = config_json("llada");
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn tensors_with(
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut t = fixture_tensors();
    edit(&mut t);
    t
}

fn load(dir: Scratch) -> Result<(), Error> {
    Llada::from_dir(&*dir, &Device::default()).map(|_| ())
}

/// A copy of the shipped tiny model's folder with `generation_config.json` edited.
fn shipped_with_generation_config(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Scratch {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let dir = scratch(tag);
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.join("generation_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&file, json.to_string()).unwrap();
    dir
}

fn pipeline(dir: Scratch) -> Result<(), Error> {
    dllm_cache::Pipeline::from_dir(&*dir, &Device::default()).map(|_| ())
}

/// A user-written denoiser that breaks its contract: it wraps a real model and distorts what
/// it reports or returns.
struct RogueDenoiser<'a> {
    inner: &'a Llada,
    /// Columns to drop from (negative: add to) the logits' vocabulary axis.
    vocab_cut: isize,
    /// Logit rows to drop from the end.
    rows_cut: usize,
    /// A mask id to report instead of the model's.
    mask: Option<u32>,
}

impl Denoiser for RogueDenoiser<'_> {
    fn forward(
        &self,
        tokens: Tensor<2, Int>,
        ctx: &mut StepContext<'_>,
    ) -> dllm_cache::Result<Tensor<3>> {
        let logits = self.inner.forward(tokens, ctx)?;
        let [b, rows, vocab] = logits.dims();
        let logits = logits.narrow(1, 0, rows - self.rows_cut.min(rows - 1));
        Ok(if self.vocab_cut >= 0 {
            logits.narrow(2, 0, vocab - self.vocab_cut as usize)
        } else {
            let extra = Tensor::<3>::zeros(
                [
                    b,
                    rows - self.rows_cut.min(rows - 1),
                    (-self.vocab_cut) as usize,
                ],
                &logits.device(),
            );
            Tensor::cat(vec![logits, extra], 2)
        })
    }
    fn special_tokens(&self) -> SpecialTokens {
        let s = self.inner.special_tokens();
        SpecialTokens::new(self.mask.unwrap_or(s.mask), s.eos, s.pad, s.bos)
    }
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
    fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
}

/// A user-written policy that refreshes everything at forward 0 and then returns `plan` for
/// the response of every layer.
#[derive(Clone)]
struct RoguePolicy(Refresh, usize);

impl CachePolicy for RoguePolicy {
    fn name(&self) -> String {
        "rogue".into()
    }
    fn begin_step(&mut self, step: &StepInfo) {
        self.1 = step.index;
    }
    fn plan(&mut self, _: usize, s: Segment, _: Option<Probe<'_>>) -> dllm_cache::Result<Refresh> {
        Ok(if self.1 == 0 || s == Segment::Prompt {
            Refresh::All
        } else {
            self.0.clone()
        })
    }
    fn reset(&mut self) {}
    fn fork(&self) -> Box<dyn CachePolicy> {
        Box::new(self.clone())
    }
}

fn rows(values: Vec<i64>, shape: [usize; 2]) -> Refresh {
    Refresh::Rows(Tensor::<2, Int>::from_data(
        TensorData::new(values, shape),
        &Device::default(),
    ))
}

type Check = fn(&Error) -> bool;

/// A bad input: its name, the call, and what its error must be.
type Case<'a> = (&'static str, Box<dyn Fn() -> Result<(), Error> + 'a>, Check);

/// Every bad input of the public API, the error it must produce, and no panic; afterwards the
/// model that saw the bad generation requests still generates exactly as a fresh one.
#[test]
fn bad_inputs_return_their_exact_error() {
    let device = Device::default();
    let model = Llada::from_dir(fixture(), &device).unwrap();
    let sampler = |steps, len, block| {
        dllm_cache::LladaSamplerConfig::new()
            .with_steps(steps)
            .with_gen_length(len)
            .with_block_length(block)
    };
    let ok_prompt = vec![vec![5u32, 6, 7, 8]];
    let generate = |prompts: Vec<Vec<u32>>, len: usize| -> Result<(), Error> {
        sampler(len, len, len)
            .init()?
            .generate(
                &model,
                &prompts,
                &mut dllm_cache::DllmCacheConfig::new().init()?,
            )
            .map(|_| ())
    };
    #[allow(unused_mut)] // rows that need a second backend join below
    let mut cases: Vec<Case<'_>> = vec![
        // Checkpoints.
        (
            "empty directory",
            Box::new(|| load(scratch("empty"))),
            |e| matches!(e, Error::Io { path, .. } if path.ends_with("config.json")),
        ),
        (
            "no weights file",
            Box::new(|| {
                let dir = scratch("no-weights");
                std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
                load(dir)
            }),
            |e| matches!(e, Error::Io { path, .. } if path.ends_with("model.safetensors")),
        ),
        (
            "file shorter than a header",
            Box::new(|| load(edited_checkpoint("short", |b| b.truncate(5)))),
            |e| matches!(e, Error::Checkpoint { reason, .. } if reason.contains("too short")),
        ),
        (
            "truncated data",
            Box::new(|| {
                load(edited_checkpoint("truncated", |b| {
                    b.truncate(b.len() - 100)
                }))
            }),
            |e| matches!(e, Error::Checkpoint { reason, .. } if reason.contains("truncated")),
        ),
        (
            "header length larger than the file",
            Box::new(|| {
                load(edited_checkpoint("lying", |b| {
                    let lie = (b.len() as u64 * 2).to_le_bytes();
                    b[..8].copy_from_slice(&lie);
                }))
            }),
            |e| matches!(e, Error::Checkpoint { reason, .. } if reason.contains("larger than the file")),
        ),
        (
            "overlapping offsets",
            Box::new(|| {
                load(edited_checkpoint("overlap", |b| {
                    edit_header(b, |h| {
                        let name = "model.transformer.ln_f.weight";
                        let o = h[name]["data_offsets"].as_array().unwrap().clone();
                        h[name]["data_offsets"] = serde_json::json!([
                            o[0].as_u64().unwrap() - 8,
                            o[1].as_u64().unwrap() - 8
                        ]);
                    })
                }))
            }),
            |e| matches!(e, Error::Checkpoint { reason, .. } if reason.contains("invalid header")),
        ),
        (
            "unknown dtype name",
            Box::new(|| {
                load(edited_checkpoint("dtype-name", |b| {
                    edit_header(b, |h| {
                        h["model.transformer.ln_f.weight"]["dtype"] = "Q9X".into();
                    })
                }))
            }),
            |e| matches!(e, Error::Checkpoint { reason, .. } if reason.contains("Q9X")),
        ),
        (
            "unsupported dtype",
            Box::new(|| {
                load(model_dir(
                    "dtype",
                    &tensors_with(|t| {
                        t.iter_mut()
                            .find(|t| t.0 == "model.transformer.blocks.1.up_proj.weight")
                            .unwrap()
                            .1 = Dtype::I32;
                    }),
                ))
            }),
            |e| matches!(e, Error::UnsupportedDtype { name, dtype } if name == "model.transformer.blocks.1.up_proj.weight" && dtype == "I32"),
        ),
        (
            "wrong shape",
            Box::new(|| {
                load(model_dir(
                    "shape",
                    &tensors_with(|t| {
                        t.iter_mut()
                            .find(|t| t.0 == "model.transformer.blocks.2.k_proj.weight")
                            .unwrap()
                            .2 = vec![32, 128];
                    }),
                ))
            }),
            |e| matches!(e, Error::ShapeMismatch { name, expected, found } if name == "model.transformer.blocks.2.k_proj.weight" && expected == &[64, 64] && found == &[32, 128]),
        ),
        (
            "missing tensor",
            Box::new(|| {
                load(model_dir(
                    "missing",
                    &tensors_with(|t| {
                        t.retain(|t| t.0 != "model.transformer.blocks.0.ff_norm.weight");
                    }),
                ))
            }),
            |e| matches!(e, Error::MissingTensor { name } if name == "model.transformer.blocks.0.ff_norm.weight"),
        ),
        (
            "unused tensor",
            Box::new(|| {
                load(model_dir(
                    "unused",
                    &tensors_with(|t| {
                        t.push((
                            "model.transformer.extra.bias".into(),
                            Dtype::F32,
                            vec![2],
                            vec![0; 8],
                        ));
                    }),
                ))
            }),
            |e| matches!(e, Error::UnusedTensors { names } if names == &["model.transformer.extra.bias"]),
        ),
        (
            "another architecture's checkpoint",
            Box::new(|| {
                let dream = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/golden/dream/model.safetensors");
                Llada::from_safetensors(
                    LladaConfig::from_json(&config_json("llada").to_string())?,
                    &[dream],
                    &Device::default(),
                )
                .map(|_| ())
            }),
            |e| matches!(e, Error::MissingTensor { .. }),
        ),
        // Configs.
        (
            "config missing a field",
            Box::new(|| {
                load(config_dir("no-field", |c| {
                    c.as_object_mut().unwrap().remove("d_model");
                }))
            }),
            |e| matches!(e, Error::Config { path: Some(p), reason } if p.ends_with("config.json") && reason.contains("missing field `d_model`")),
        ),
        (
            "config field of the wrong type",
            Box::new(|| load(config_dir("type", |c| c["n_layers"] = "three".into()))),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("invalid type")),
        ),
        (
            "heads not dividing d_model",
            Box::new(|| {
                load(config_dir("heads", |c| {
                    c["n_heads"] = 5.into();
                    c["n_kv_heads"] = 5.into();
                }))
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`n_heads` (5) must divide `d_model` (64)")),
        ),
        (
            "zero layers",
            Box::new(|| load(config_dir("layers", |c| c["n_layers"] = 0.into()))),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`n_layers` must be positive")),
        ),
        (
            "config is not JSON",
            Box::new(|| LladaConfig::from_json("{ not json").map(|_| ())),
            |e| matches!(e, Error::Config { .. }),
        ),
        (
            "unsupported LLaDA setting",
            Box::new(|| load(config_dir("bias", |c| c["include_bias"] = true.into()))),
            |e| matches!(e, Error::Unsupported { field, .. } if field == "include_bias"),
        ),
        (
            "unsupported Dream setting",
            Box::new(|| {
                let mut c = config_json("dream");
                c["tie_word_embeddings"] = true.into();
                dllm_cache::DreamConfig::from_json(&c.to_string()).map(|_| ())
            }),
            |e| matches!(e, Error::Unsupported { field, .. } if field == "tie_word_embeddings"),
        ),
        (
            "Dream GQA that does not divide",
            Box::new(|| {
                let mut c = config_json("dream");
                c["num_key_value_heads"] = 2.into();
                dllm_cache::DreamConfig::from_json(&c.to_string()).map(|_| ())
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`num_key_value_heads` (2) must divide `num_attention_heads` (7)")),
        ),
        // Tokenizers.
        (
            "tokenizer.json missing",
            Box::new(|| dllm_cache::Tokenizer::from_dir(scratch("no-tok")).map(|_| ())),
            |e| matches!(e, Error::Io { path, .. } if path.ends_with("tokenizer.json")),
        ),
        (
            "tokenizer.json malformed",
            Box::new(|| {
                let dir = scratch("bad-tok");
                std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
                dllm_cache::Tokenizer::from_dir(dir).map(|_| ())
            }),
            |e| matches!(e, Error::Tokenizer(_)),
        ),
        // Generation requests.
        ("empty batch", Box::new(|| generate(vec![], 8)), |e| {
            matches!(
                e,
                Error::InvalidArgument {
                    name: "prompts",
                    ..
                }
            )
        }),
        (
            "empty prompt",
            Box::new(|| generate(vec![vec![]], 8)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "prompts",
                        ..
                    }
                )
            },
        ),
        (
            "prompt plus generation longer than the model maximum",
            Box::new(|| generate(ok_prompt.clone(), 4096)),
            |e| {
                matches!(
                    e,
                    Error::SequenceTooLong {
                        len: 4100,
                        max: 4096
                    }
                )
            },
        ),
        (
            "token id outside the vocabulary",
            Box::new(|| generate(vec![vec![1, 320]], 8)),
            |e| {
                matches!(
                    e,
                    Error::TokenOutOfRange {
                        id: 320,
                        row: 0,
                        position: 1,
                        vocab: 320
                    }
                )
            },
        ),
        (
            "a batch mixing in another model's ids",
            Box::new(|| generate(vec![vec![1, 2, 3], vec![151_643, 151_666]], 8)),
            |e| {
                matches!(
                    e,
                    Error::TokenOutOfRange {
                        id: 151_643,
                        row: 1,
                        position: 0,
                        ..
                    }
                )
            },
        ),
        (
            "the mask token inside a prompt",
            Box::new(|| generate(vec![vec![1, 317]], 8)),
            |e| matches!(e, Error::InvalidArgument { name: "prompts", reason } if reason.contains("mask")),
        ),
        (
            "block length not dividing the response",
            Box::new(|| sampler(16, 30, 8).init().map(|_| ())),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "block_length",
                        ..
                    }
                )
            },
        ),
        (
            "steps not a multiple of the blocks",
            Box::new(|| sampler(6, 32, 8).init().map(|_| ())),
            |e| matches!(e, Error::InvalidArgument { name: "steps", .. }),
        ),
        (
            "zero steps",
            Box::new(|| sampler(0, 32, 8).init().map(|_| ())),
            |e| matches!(e, Error::InvalidArgument { name: "steps", .. }),
        ),
        (
            "Dream eps out of range",
            Box::new(|| {
                dllm_cache::DreamSamplerConfig::new()
                    .with_eps(1.5)
                    .init()
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "eps", .. }),
        ),
        // Cache settings.
        (
            "refresh ratio above 1",
            Box::new(|| {
                dllm_cache::DllmCacheConfig::new()
                    .with_refresh_ratio(1.5)
                    .init()
                    .map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "refresh_ratio",
                        ..
                    }
                )
            },
        ),
        (
            "refresh ratio NaN",
            Box::new(|| {
                dllm_cache::DllmCacheConfig::new()
                    .with_refresh_ratio(f64::NAN)
                    .init()
                    .map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "refresh_ratio",
                        ..
                    }
                )
            },
        ),
        (
            "interval 0",
            Box::new(|| {
                dllm_cache::DllmCacheConfig::new()
                    .with_response_interval(0)
                    .init()
                    .map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "response_interval",
                        ..
                    }
                )
            },
        ),
        // Direct forwards.
        (
            "forward of a sequence longer than the maximum",
            Box::new(|| {
                model
                    .forward_with_hidden_states(Tensor::<2, Int>::zeros(
                        [1, 4097],
                        &Device::default(),
                    ))
                    .map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::SequenceTooLong {
                        len: 4097,
                        max: 4096
                    }
                )
            },
        ),
        (
            "forward of an out-of-range id",
            Box::new(|| {
                let t = Tensor::<2, Int>::from_data(
                    TensorData::new(vec![1i64, 2, 320, 4], [2, 2]),
                    &Device::default(),
                );
                model.forward_with_hidden_states(t).map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::TokenOutOfRange {
                        id: 320,
                        row: 1,
                        position: 0,
                        vocab: 320
                    }
                )
            },
        ),
        // Impossible sizes and values from files.
        (
            "generation_config.json asking for 2^40 steps",
            Box::new(|| {
                pipeline(shipped_with_generation_config("steps", |g| {
                    g["steps"] = 1_099_511_627_776u64.into();
                }))
            }),
            |e| matches!(e, Error::Config { path: Some(p), reason } if p.ends_with("generation_config.json") && reason.contains("`steps`")),
        ),
        (
            "generation_config.json with a steps string",
            Box::new(|| {
                pipeline(shipped_with_generation_config("steps-type", |g| {
                    g["steps"] = "eight".into();
                }))
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`steps`")),
        ),
        (
            "generation_config.json with an eos id beyond 32 bits",
            Box::new(|| {
                pipeline(shipped_with_generation_config("eos", |g| {
                    g["eos_token_id"] = 4_294_967_297u64.into();
                }))
            }),
            |e| matches!(e, Error::Config { path: Some(p), reason } if p.ends_with("generation_config.json") && reason.contains("4294967297")),
        ),
        (
            "LLaDA sampler with 2^40 steps",
            Box::new(|| sampler(1 << 40, 8, 8).init().map(|_| ())),
            |e| matches!(e, Error::InvalidArgument { name: "steps", reason } if reason.contains("exceeds")),
        ),
        (
            "Dream sampler with 2^40 steps",
            Box::new(|| {
                DreamSamplerConfig::new()
                    .with_steps(1 << 40)
                    .init()
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "steps", .. }),
        ),
        (
            "config whose vocab_size is smaller than its mask id",
            Box::new(|| {
                load(config_dir("vocab", |c| {
                    c["vocab_size"] = 300.into();
                }))
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`mask_token_id` (317) is outside the vocabulary")),
        ),
        (
            "config whose bos id is outside the vocabulary",
            Box::new(|| {
                load(config_dir("bos", |c| {
                    c["bos_token_id"] = 400.into();
                }))
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("`bos_token_id` (400)")),
        ),
        (
            "config with more parameters than memory can address",
            Box::new(|| {
                let mut c = LladaConfig::with_sizes(1 << 40, 1 << 20, 1 << 10, 1 << 40, 320);
                c.mask_token_id = 1;
                c.validate()
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("more parameters")),
        ),
        (
            "num_params of sizes that overflow",
            Box::new(|| {
                LladaConfig::with_sizes(usize::MAX / 2, 4, 1, 8, 320)
                    .num_params()
                    .map(|_| ())
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("overflows")),
        ),
        (
            "config whose max_sequence_length is beyond float32 positions",
            Box::new(|| {
                load(config_dir("max-len", |c| {
                    c["max_sequence_length"] = (1u64 << 40).into();
                }))
            }),
            |e| matches!(e, Error::Config { reason, .. } if reason.contains("max_sequence_length")),
        ),
        (
            "FLOPs estimate of sizes beyond 64 bits",
            Box::new(|| {
                use dllm_cache::estimate::{self, HeadRows, ModelShape, Sampling};
                let shape = ModelShape::new(1 << 20, 16, 16, 1 << 12, 1 << 22, 1 << 20);
                let sampling = Sampling::Llada(sampler(1 << 12, 1 << 12, 1 << 12));
                let mut none = dllm_cache::NoCache;
                estimate::flops(
                    &shape,
                    &sampling,
                    &mut none,
                    1 << 20,
                    1 << 10,
                    HeadRows::All,
                    None,
                )
                .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "model", reason } if reason.contains("64 bits")),
        ),
        (
            "FLOPs estimate of a shape with zero heads",
            Box::new(|| {
                use dllm_cache::estimate::{self, HeadRows, ModelShape, Sampling};
                let shape = ModelShape::new(64, 0, 0, 2, 128, 320);
                let sampling = Sampling::Llada(sampler(8, 8, 8));
                let mut none = dllm_cache::NoCache;
                estimate::flops(&shape, &sampling, &mut none, 4, 1, HeadRows::All, None).map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "model", .. }),
        ),
        // Devices.
        (
            "a CUDA GPU that is not there",
            Box::new(|| dllm_cache::device_from_name("cuda:9").map(|_| ())),
            |e| matches!(e, Error::InvalidArgument { name: "device", .. }),
        ),
        (
            "a Vulkan GPU that is not there",
            Box::new(|| dllm_cache::device_from_name("vulkan:9").map(|_| ())),
            |e| matches!(e, Error::InvalidArgument { name: "device", .. }),
        ),
        // A user-written policy breaking the rules.
        (
            "rogue policy: a row past the response",
            Box::new(|| {
                let mut p = RoguePolicy(rows(vec![0, 8], [1, 2]), 0);
                sampler(8, 8, 8)
                    .init()?
                    .generate(&model, &ok_prompt, &mut p)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::Policy { reason, .. } if reason.contains("holds 8")),
        ),
        (
            "rogue policy: a negative row",
            Box::new(|| {
                let mut p = RoguePolicy(rows(vec![-3], [1, 1]), 0);
                sampler(8, 8, 8)
                    .init()?
                    .generate(&model, &ok_prompt, &mut p)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::Policy { reason, .. } if reason.contains("holds -3")),
        ),
        (
            "rogue policy: a duplicated row",
            Box::new(|| {
                let mut p = RoguePolicy(rows(vec![2, 2], [1, 2]), 0);
                sampler(8, 8, 8)
                    .init()?
                    .generate(&model, &ok_prompt, &mut p)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::Policy { reason, .. } if reason.contains("twice")),
        ),
        (
            "rogue policy: a selection for another batch size",
            Box::new(|| {
                let mut p = RoguePolicy(rows(vec![1, 2], [2, 1]), 0);
                sampler(8, 8, 8)
                    .init()?
                    .generate(&model, &ok_prompt, &mut p)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::Policy { reason, .. } if reason.contains("shape [2, 1]")),
        ),
        (
            "rogue policy: reuse before anything is cached",
            Box::new(|| {
                let mut p = RoguePolicy(Refresh::Reuse, 0);
                p.1 = 1;
                let mut cache = FeatureCache::new();
                let mut flops = FlopCounter::new();
                let tokens = Tensor::<2, Int>::from_data(
                    TensorData::new(vec![5i64, 6, 7, 8, 317, 317], [1, 6]),
                    &Device::default(),
                );
                let mut ctx =
                    StepContext::new(StepInfo::new(1, 4, 2), &mut p, &mut cache, &mut flops);
                model.forward(tokens, &mut ctx).map(|_| ())
            }),
            |e| matches!(e, Error::Policy { reason, .. } if reason.contains("never cached")),
        ),
        // A user-written denoiser breaking its contract.
        (
            "rogue denoiser: logits one column short",
            Box::new(|| {
                let rogue = RogueDenoiser {
                    inner: &model,
                    vocab_cut: 1,
                    rows_cut: 0,
                    mask: None,
                };
                sampler(8, 8, 8)
                    .init()?
                    .generate(&rogue, &ok_prompt, &mut dllm_cache::NoCache)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "logits", reason } if reason.contains("[1, 8, 319]")),
        ),
        (
            "rogue denoiser: logits with extra columns",
            Box::new(|| {
                let rogue = RogueDenoiser {
                    inner: &model,
                    vocab_cut: -5,
                    rows_cut: 0,
                    mask: None,
                };
                DreamSamplerConfig::new()
                    .with_steps(4)
                    .with_max_new_tokens(4)
                    .with_alg(DreamAlg::Entropy)
                    .init()?
                    .generate(&rogue, &ok_prompt, &mut dllm_cache::NoCache)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "logits", reason } if reason.contains("[1, 4, 325]")),
        ),
        (
            "rogue denoiser: fewer logit rows than asked",
            Box::new(|| {
                let rogue = RogueDenoiser {
                    inner: &model,
                    vocab_cut: 0,
                    rows_cut: 3,
                    mask: None,
                };
                sampler(8, 8, 8)
                    .init()?
                    .generate(&rogue, &ok_prompt, &mut dllm_cache::NoCache)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "logits", .. }),
        ),
        (
            "rogue denoiser: a mask id outside its vocabulary",
            Box::new(|| {
                let rogue = RogueDenoiser {
                    inner: &model,
                    vocab_cut: 0,
                    rows_cut: 0,
                    mask: Some(9999),
                };
                sampler(8, 8, 8)
                    .init()?
                    .generate(&rogue, &ok_prompt, &mut dllm_cache::NoCache)
                    .map(|_| ())
            }),
            |e| matches!(e, Error::InvalidArgument { name: "model", reason } if reason.contains("mask token 9999")),
        ),
        (
            "Dream forward with an empty logit-row range",
            Box::new(|| {
                let dream = dllm_cache::Dream::from_dir(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream"),
                    &Device::default(),
                )?;
                let (mut p, mut cache, mut flops) =
                    (dllm_cache::NoCache, FeatureCache::new(), FlopCounter::new());
                let tokens = Tensor::<2, Int>::zeros([1, 6], &Device::default());
                let mut ctx =
                    StepContext::new(StepInfo::new(0, 4, 2), &mut p, &mut cache, &mut flops)
                        .with_logit_rows(std::ops::Range { start: 5, end: 0 });
                dream.forward(tokens, &mut ctx).map(|_| ())
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        name: "logit_rows",
                        ..
                    }
                )
            },
        ),
    ];
    // With a second CPU backend in the build, a selection on the wrong device.
    #[cfg(feature = "ndarray")]
    cases.push((
        "rogue policy: rows on another device than the model",
        Box::new(|| {
            #[allow(deprecated)]
            let other = Device::ndarray();
            let idx = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &other);
            let mut p = RoguePolicy(Refresh::Rows(idx), 0);
            sampler(8, 8, 8)
                .init()?
                .generate(&model, &ok_prompt, &mut p)
                .map(|_| ())
        }),
        |e| matches!(e, Error::Policy { reason, .. } if reason.contains("but the model is on")),
    ));
    let mut failures = Vec::new();
    for (name, run, check) in &cases {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Err(e)) if check(&e) => {}
            Ok(Err(e)) => failures.push(format!("{name}: unexpected error {e:?}")),
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The model that served the bad requests still generates exactly like a fresh one.
    let fresh = Llada::from_dir(fixture(), &device).unwrap();
    let run = |m: &Llada| {
        sampler(16, 16, 8)
            .init()
            .unwrap()
            .generate(
                m,
                &ok_prompt,
                &mut dllm_cache::DllmCacheConfig::new().init().unwrap(),
            )
            .unwrap()
            .sequences
    };
    assert_eq!(run(&model), run(&fresh));
}

/// Inputs that used to be ignored or mishandled silently and must now be honoured.
#[test]
fn settings_that_were_ignored_are_honoured() {
    let device = Device::default();
    // `rope_full_precision: false` rotates in the activation dtype: the same bits in float32.
    let dir = config_dir("rope", |c| c["rope_full_precision"] = false.into());
    let half = Llada::from_dir(&dir, &device).expect("rope_full_precision false loads");
    assert!(!half.config().rope_full_precision);
    assert_eq!(half.config().to_hf_json()["rope_full_precision"], false);
    let full = Llada::from_dir(fixture(), &device).unwrap();
    assert!(full.config().rope_full_precision);
    assert_eq!(logits(&half, &device), logits(&full, &device));

    // Dream `origin`: a draw that rounds to 1.0f32 at the last step must still commit. Seed
    // 63433462's first draw is 1 - 1.07e-8, which float32 rounds to 1.0.
    let seed = 63_433_462;
    assert_eq!(dllm_cache::SplitMix64::new(seed).uniform() as f32, 1.0);
    let dream = dllm_cache::Dream::from_dir(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream"),
        &device,
    )
    .unwrap();
    let out = DreamSamplerConfig::new()
        .with_steps(1)
        .with_max_new_tokens(1)
        .with_alg(DreamAlg::Origin)
        .with_seed(seed)
        .init()
        .unwrap()
        .generate(&dream, &[vec![5, 6, 7]], &mut dllm_cache::NoCache)
        .unwrap();
    let mask = dream.special_tokens().mask;
    assert!(
        out.response(0).iter().all(|&t| t != mask),
        "{:?}",
        out.response(0)
    );
}

/// A deterministic stand-in for the cargo-fuzz target (`fuzz/`), run with every test suite:
/// thousands of random mutations of a real checkpoint header, of both configs, and of a
/// generation config and a tokenizer config must give `Ok` or `Err`, never a panic.
#[test]
fn mutated_headers_and_configs_never_panic() {
    let weights = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    // Header plus the first bytes of data; the parser sees the whole (short) buffer.
    let base = weights[..(8 + n + 64).min(weights.len())].to_vec();
    let configs = [
        config_json("llada").to_string(),
        config_json("dream").to_string(),
    ];
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let side_files = [
        std::fs::read_to_string(shipped.join("generation_config.json")).unwrap(),
        std::fs::read_to_string(shipped.join("tokenizer_config.json")).unwrap(),
    ];
    let mut rng = dllm_cache::SplitMix64::new(99);
    let mut mutate = |bytes: &mut Vec<u8>| {
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() % bytes.len() as u64) as usize;
            match rng.next_u64() % 4 {
                0 => bytes[at] = rng.next_u64() as u8,
                1 => bytes[at] = b"0123456789[]{},:\"-eE."[(rng.next_u64() % 21) as usize],
                2 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at, rng.next_u64() as u8),
            }
        }
    };
    for i in 0..3000 {
        let mut header = base.clone();
        mutate(&mut header);
        let result = std::panic::catch_unwind(|| dllm_cache::model::inspect_safetensors(&header));
        assert!(result.is_ok(), "header mutation {i} panicked");
        let mut config = configs[i % 2].clone().into_bytes();
        mutate(&mut config);
        if let Ok(text) = std::str::from_utf8(&config) {
            let result = std::panic::catch_unwind(|| {
                let _ = LladaConfig::from_json(text);
                let _ = dllm_cache::DreamConfig::from_json(text);
            });
            assert!(result.is_ok(), "config mutation {i} panicked: {text}");
        }
        let mut side = side_files[i % 2].clone().into_bytes();
        mutate(&mut side);
        if let Ok(text) = std::str::from_utf8(&side) {
            let result = std::panic::catch_unwind(|| {
                let _ = dllm_cache::GenerateOptions::from_generation_config(text);
                let _ = dllm_cache::tokenizer::generation_eos_ids(text);
                let _ = dllm_cache::tokenizer::TokenizerConfig::from_json(text);
            });
            assert!(result.is_ok(), "side-file mutation {i} panicked: {text}");
        }
    }
    // The unmutated side files parse.
    assert!(dllm_cache::GenerateOptions::from_generation_config(&side_files[0]).is_ok());
    assert!(dllm_cache::tokenizer::TokenizerConfig::from_json(&side_files[1]).is_ok());
    // The unmutated header parses and lists every tensor.
    let full = dllm_cache::model::inspect_safetensors(&weights).unwrap();
    assert_eq!(full.len(), fixture_tensors().len());
}
