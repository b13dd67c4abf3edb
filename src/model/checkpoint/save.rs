//! Writing a model back as a safetensors file.

use std::path::Path;

use burn::nn::Linear;
use burn::tensor::Tensor;
use safetensors::tensor::Dtype;

use super::transpose;
use crate::error::{Error, Result};

/// Float type of a written checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveDtype {
    /// 4 bytes per parameter.
    F32,
    /// 2 bytes per parameter, rounded to nearest even.
    Bf16,
}

/// A named host tensor: checkpoint name, PyTorch-layout shape, f32 values.
pub(crate) type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` as one safetensors file.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: Vec<NamedTensor>,
    dtype: SaveDtype,
) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = match dtype {
                SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                SaveDtype::Bf16 => values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            (name, shape, bytes)
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Host values of a weight in PyTorch layout: linear weights transposed back to `[out, in]`.
pub(crate) fn linear_values(lin: &Linear) -> Result<(Vec<usize>, Vec<f32>)> {
    let [d_in, d_out] = lin.weight.dims();
    let values = lin
        .weight
        .val()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Backend(format!("{e:?}")))?;
    Ok((vec![d_out, d_in], transpose(&values, d_in, d_out)))
}

pub(crate) fn tensor_values<const D: usize>(t: Tensor<D>) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = t.dims().to_vec();
    let values = t
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Backend(format!("{e:?}")))?;
    Ok((shape, values))
}
