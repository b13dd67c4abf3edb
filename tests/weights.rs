//! 16-bit weights ([`WeightDtype`]): a model held in bf16 or f16 computes, in float32, the
//! function of a float32 model whose weights are the rounded ones; loading converts while it
//! streams; the memory is halved; the shipped model still answers its problems.

#[path = "../examples/shared/tiny_task.rs"]
mod tiny_task;

use std::path::Path;

use dllm_cache::burn::tensor::{Device, Int, Tensor, TensorData};
use dllm_cache::model::SaveDtype;
use dllm_cache::pipeline::{CacheChoice, Pipeline};
use dllm_cache::{
    DllmCacheConfig, Dream, Llada, LladaConfig, LoadOptions, SplitMix64, WeightDtype,
};

#[path = "common/scratch.rs"]
mod common_scratch;
use common_scratch::Scratch;

/// A scratch path with nothing there yet (the code under test saves a model folder to it).
fn scratch(tag: &str) -> Scratch {
    Scratch::new("weights", tag, false)
}

fn tokens(device: &Device, vocab: u32) -> Tensor<2, Int> {
    let ids: Vec<i64> = (0..2 * 24)
        .map(|i| i64::from((i * 37 + 5) % vocab))
        .collect();
    Tensor::from_data(TensorData::new(ids, [2, 24]), device)
}

/// Logits as host values, with the shape checked.
fn values(t: Tensor<3>, shape: [usize; 3]) -> Vec<f32> {
    assert_eq!(t.dims(), shape);
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Largest |a - b| over `scale` (the largest |b|); fails on NaN and on length mismatch.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
            (x - y).abs() / scale
        })
        .fold(0f32, f32::max)
}

fn llada_config() -> LladaConfig {
    LladaConfig::with_sizes(96, 2, 4, 160, 300)
}

#[test]
fn sixteen_bit_weights_compute_the_float32_function_of_the_rounded_weights() {
    let device = Device::default();
    let vocab = 300;
    let shape = [2, 24, 300];
    let f32_model = Llada::random(llada_config(), 5, &device).unwrap();
    let reference = values(
        f32_model
            .forward_with_hidden_states(tokens(&device, vocab))
            .unwrap()
            .0,
        shape,
    );
    for weights in [WeightDtype::Bf16, WeightDtype::F16] {
        let options = LoadOptions::new().with_weights(weights);
        let narrow = Llada::random_with(llada_config(), 5, &device, &options).unwrap();
        assert!(
            narrow.weight_bytes() * 10 < f32_model.weight_bytes() * 6,
            "{weights:?}: {} bytes against {} in float32",
            narrow.weight_bytes(),
            f32_model.weight_bytes()
        );
        let got = values(
            narrow
                .forward_with_hidden_states(tokens(&device, vocab))
                .unwrap()
                .0,
            shape,
        );
        // The rounded weights written out as float32 and loaded back: the float32 model of
        // exactly those weights. Its logits and the 16-bit model's differ only by summation
        // order.
        let dir = scratch("rounded");
        narrow.save_dir(&dir, SaveDtype::F32).unwrap();
        let rounded = Llada::from_dir(&dir, &device).unwrap();
        assert_eq!(rounded.weight_bytes(), f32_model.weight_bytes());
        let want = values(
            rounded
                .forward_with_hidden_states(tokens(&device, vocab))
                .unwrap()
                .0,
            shape,
        );
        let gap = relative_gap(&got, &want);
        assert!(
            gap < 1e-5,
            "{weights:?}: {gap} from the rounded float32 model"
        );
        // Rounding does change the model (the comparison above is not vacuous) ...
        let moved = relative_gap(&got, &reference);
        assert!(
            moved > 1e-5,
            "{weights:?}: no different from float32 ({moved})"
        );
        assert!(moved < 0.05, "{weights:?}: {moved} from the float32 model");
        // ... and the same float32 file loaded with the option gives the same weights again,
        // so the same logits bit for bit.
        let loaded = Llada::from_dir_with(&dir, &device, &options).unwrap();
        assert_eq!(loaded.weight_bytes(), narrow.weight_bytes());
        let again = values(
            loaded
                .forward_with_hidden_states(tokens(&device, vocab))
                .unwrap()
                .0,
            shape,
        );
        assert_eq!(again, got, "{weights:?}: loading rounds as the draw did");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn dream_runs_with_bf16_weights_and_biases() {
    // Dream has query/key/value biases, which stay in float32 beside bf16 matrices.
    let device = Device::default();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/dream");
    let vocab = Dream::from_dir(&fixture, &device)
        .unwrap()
        .config()
        .vocab_size;
    let shape = [2, 24, vocab];
    let options = LoadOptions::new().with_weights(WeightDtype::Bf16);
    let narrow = Dream::from_dir_with(&fixture, &device, &options).unwrap();
    let got = values(
        narrow
            .forward_with_hidden_states(tokens(&device, vocab as u32))
            .unwrap()
            .0,
        shape,
    );
    let dir = scratch("dream");
    narrow.save_dir(&dir, SaveDtype::F32).unwrap();
    let rounded = Dream::from_dir(&dir, &device).unwrap();
    let want = values(
        rounded
            .forward_with_hidden_states(tokens(&device, vocab as u32))
            .unwrap()
            .0,
        shape,
    );
    let gap = relative_gap(&got, &want);
    assert!(gap < 1e-5, "{gap} from the rounded float32 model");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn weight_dtype_names_parse_and_bad_ones_are_errors() {
    assert_eq!("bf16".parse::<WeightDtype>().unwrap(), WeightDtype::Bf16);
    assert_eq!("f16".parse::<WeightDtype>().unwrap(), WeightDtype::F16);
    assert_eq!("f32".parse::<WeightDtype>().unwrap(), WeightDtype::Float);
    let e = "int4".parse::<WeightDtype>().unwrap_err();
    assert!(
        matches!(e, dllm_cache::Error::InvalidArgument { .. }),
        "{e:?}"
    );
}

#[test]
fn shipped_model_with_bf16_weights_answers_held_out_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let options = LoadOptions::new().with_weights(WeightDtype::Bf16);
    let pipeline = Pipeline::from_dir_with(&dir, &Device::default(), &options).unwrap();
    let defaults = pipeline.default_options().clone();
    let mut rng = SplitMix64::new(7);
    let problems: Vec<_> = (0..12)
        .map(|_| tiny_task::next_problem(&mut rng, true))
        .collect();
    for cache in [CacheChoice::None, CacheChoice::Dllm(DllmCacheConfig::new())] {
        let options = defaults.clone().with_cache(cache.clone());
        let correct = problems
            .iter()
            .filter(|p| pipeline.complete(&p.prompt, &options).unwrap().text == p.answer)
            .count();
        assert!(correct >= 11, "{cache:?}: {correct}/12 correct");
    }
}

#[test]
fn a_bf16_feature_cache_halves_the_cache_and_keeps_the_answers() {
    use dllm_cache::burn::tensor::DType;
    use dllm_cache::{LladaSamplerConfig, Tokenizer};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llada");
    let model = Llada::from_dir(&dir, &Device::default()).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let mut rng = SplitMix64::new(3);
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|_| {
            let p = tiny_task::next_problem(&mut rng, true).prompt;
            tokenizer.encode(&p, true).unwrap()
        })
        .collect();
    let sampler = LladaSamplerConfig::new()
        .with_steps(8)
        .with_gen_length(8)
        .with_block_length(8)
        .init()
        .unwrap();
    let run = |dtype: Option<DType>, prompt: &Vec<u32>| {
        let s = match dtype {
            Some(d) => sampler.clone().with_cache_dtype(d).unwrap(),
            None => sampler.clone(),
        };
        // K_r 2 so that cached response features are reused between refreshes.
        let mut policy = DllmCacheConfig::new()
            .with_prompt_interval(4)
            .with_response_interval(2)
            .init()
            .unwrap();
        s.generate(&model, std::slice::from_ref(prompt), &mut policy)
            .unwrap()
    };
    let mut same = 0;
    for prompt in &prompts {
        let default = run(None, prompt);
        let f32_cache = run(Some(DType::F32), prompt);
        assert_eq!(
            default.sequences, f32_cache.sequences,
            "F32 storage is the default"
        );
        let half = run(Some(DType::BF16), prompt);
        assert_eq!(
            half.stats.peak_cache_bytes * 2,
            default.stats.peak_cache_bytes,
            "bf16 features take half the bytes"
        );
        same += usize::from(half.sequences == default.sequences);
    }
    assert!(
        same >= 11,
        "{same}/12 generations unchanged by bf16 feature storage"
    );
    let e = sampler.clone().with_cache_dtype(DType::I32).unwrap_err();
    assert!(
        matches!(e, dllm_cache::Error::InvalidArgument { .. }),
        "{e:?}"
    );
}
