//! Safetensors checkpoints (single file or sharded index) into burn modules.
//!
//! The loader reads each shard's header once, validates it (header length, dtypes, offsets,
//! data size) and then reads every tensor in pieces of 1 MiB, converting f32/bf16/f16 to the
//! target type (float32, or bf16/f16 for weight matrices under
//! [`WeightDtype`](crate::WeightDtype)) and transposing linear weights to burn's layout,
//! straight into the tensor's buffer. No shard and no second copy of a tensor is ever held in
//! memory, so the peak while loading is the model so far in its target type plus the one
//! tensor being read (on a GPU backend, plus its copy on the device while it uploads) plus the
//! 1 MiB piece.
//!
//! The model constructors ask the loader for tensors by their role ([`super::names`]), and the
//! loader is strict: a missing tensor, a tensor of the wrong shape or dtype, and any tensor left
//! unused at the end are errors that name the tensor.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};

use super::names::{NameTable, Role, name_of};
use crate::error::{Error, Result};
use crate::model::norm::RmsNorm;
use crate::model::weights::Target;

/// Bytes read from a checkpoint at a time.
const READ_CHUNK: usize = 1 << 20;

/// Largest header we accept (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

struct Shard {
    path: PathBuf,
    file: File,
    data_start: u64,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    len: usize,
}

/// An opened checkpoint: validated headers of every shard, and the set of tensors not yet taken.
pub(crate) struct Checkpoint {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    table: NameTable,
    device: Device,
    /// Type of the weight matrices; `None` for the device's float type.
    matrices: Option<DType>,
}

impl Checkpoint {
    /// Opens the weights of a Hugging Face model folder: `model.safetensors.index.json` if
    /// present (sharded), else `model.safetensors`.
    pub(crate) fn open_dir(dir: &Path, table: NameTable, device: &Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Self::open_index(&index, table, device);
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&[single], table, device);
        }
        Err(Error::io(
            single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither model.safetensors nor model.safetensors.index.json found",
            ),
        ))
    }

    /// Opens a sharded checkpoint through its `model.safetensors.index.json`.
    pub(crate) fn open_index(index: &Path, table: NameTable, device: &Device) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                path: index.to_path_buf(),
                reason: e.to_string(),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Checkpoint {
                path: index.to_path_buf(),
                reason: "no `weight_map` object".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| Error::Checkpoint {
                path: index.to_path_buf(),
                reason: format!("`weight_map` entry `{name}` is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::Checkpoint {
                    path: index.to_path_buf(),
                    reason: format!("shard name `{file}` must be a plain file name"),
                });
            }
            files.insert(dir.join(file));
        }
        let files: Vec<PathBuf> = files.into_iter().collect();
        let ckpt = Self::open_files(&files, table, device)?;
        // The index and the shard headers must agree, or a tensor might silently come from an
        // unexpected file.
        for (name, file) in map {
            let expected = dir.join(file.as_str().unwrap_or_default());
            match ckpt.entries.get(name) {
                Some(e) if ckpt.shards[e.shard].path == expected => {}
                Some(e) => {
                    return Err(Error::Checkpoint {
                        path: index.to_path_buf(),
                        reason: format!(
                            "index puts `{name}` in {} but it is in {}",
                            expected.display(),
                            ckpt.shards[e.shard].path.display()
                        ),
                    });
                }
                None => {
                    return Err(Error::Checkpoint {
                        path: index.to_path_buf(),
                        reason: format!("index lists `{name}` but no shard contains it"),
                    });
                }
            }
        }
        Ok(ckpt)
    }

    /// Opens one or more safetensors files as one checkpoint.
    pub(crate) fn open_files(paths: &[PathBuf], table: NameTable, device: &Device) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut entries = BTreeMap::new();
        for path in paths {
            let (shard, metadata) = read_header(path)?;
            let id = shards.len();
            for (name, info) in metadata.tensors() {
                let len = info.data_offsets.1 - info.data_offsets.0;
                let entry = Entry {
                    shard: id,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: shard.data_start + info.data_offsets.0 as u64,
                    len,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::Checkpoint {
                        path: path.clone(),
                        reason: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
            shards.push(shard);
        }
        Ok(Self {
            shards,
            entries,
            taken: BTreeSet::new(),
            table,
            device: device.clone(),
            matrices: None,
        })
    }

    /// Reads weight matrices as `dtype` (`None`: the device's float type).
    pub(crate) fn with_matrices(mut self, dtype: Option<DType>) -> Self {
        self.matrices = dtype;
        self
    }

    /// A weight matrix (shape `shape`, transposed from `[rows, cols]` with `transpose`) in
    /// the matrices' type.
    fn matrix<const D: usize>(
        &mut self,
        name: &str,
        stored: &[usize],
        shape: [usize; D],
        transpose: bool,
    ) -> Result<Tensor<D>> {
        let device = self.device.clone();
        Ok(match self.matrices {
            Some(DType::BF16) => Tensor::from_data(
                TensorData::new(self.read::<half::bf16>(name, stored, transpose)?, shape),
                (&device, DType::BF16),
            ),
            Some(DType::F16) => Tensor::from_data(
                TensorData::new(self.read::<half::f16>(name, stored, transpose)?, shape),
                (&device, DType::F16),
            ),
            _ => Tensor::from_data(
                TensorData::new(self.read::<f32>(name, stored, transpose)?, shape),
                &device,
            ),
        })
    }

    /// Reads a tensor by checkpoint name, checking its shape, converted to the device's float
    /// dtype.
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<D>> {
        let values = self.read::<f32>(name, &expected, false)?;
        Ok(Tensor::from_data(
            TensorData::new(values, expected),
            &self.device,
        ))
    }

    /// Reads `name`, checking its shape, as values of `E`; with `transpose`, a `[rows, cols]`
    /// tensor comes back as `[cols, rows]`. The file is read in pieces of about
    /// [`READ_CHUNK`] bytes, each converted (and transposed) into the output, so the output is
    /// the only full-size buffer.
    fn read<E: Target>(
        &mut self,
        name: &str,
        expected: &[usize],
        transpose: bool,
    ) -> Result<Vec<E>> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        if entry.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let dtype = entry.dtype;
        let width = match dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let shard = &mut self.shards[entry.shard];
        let count: usize = expected.iter().product();
        if count.checked_mul(width) != Some(entry.len) {
            return Err(Error::Checkpoint {
                path: shard.path.clone(),
                reason: format!(
                    "tensor `{name}` holds {} bytes for {count} values",
                    entry.len
                ),
            });
        }
        // Source rows and their length: a transposed tensor is read whole rows at a time.
        let (rows, cols) = match (transpose, expected) {
            (true, &[r, c]) => (r, c),
            _ => (1, count),
        };
        // Through float32, which holds every bf16 and f16 value exactly.
        let decode = |b: &[u8]| -> E {
            E::from_f32(match dtype {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            })
        };
        let mut out = vec![E::default(); count];
        shard
            .file
            .seek(SeekFrom::Start(entry.start))
            .map_err(|e| Error::io(&shard.path, e))?;
        let mut buf = Vec::new();
        if rows == 1 {
            for piece in out.chunks_mut((READ_CHUNK / width).max(1)) {
                buf.resize(piece.len() * width, 0);
                shard
                    .file
                    .read_exact(&mut buf)
                    .map_err(|e| Error::io(&shard.path, e))?;
                for (v, b) in piece.iter_mut().zip(buf.chunks_exact(width)) {
                    *v = decode(b);
                }
            }
        } else {
            let step = (READ_CHUNK / (cols * width).max(1)).max(1);
            for r0 in (0..rows).step_by(step) {
                let n = step.min(rows - r0);
                buf.resize(n * cols * width, 0);
                shard
                    .file
                    .read_exact(&mut buf)
                    .map_err(|e| Error::io(&shard.path, e))?;
                // Source row r0 + i, column c goes to out[c * rows + r0 + i]: for each column a
                // contiguous run of n outputs.
                for c in 0..cols {
                    let dst = &mut out[c * rows + r0..c * rows + r0 + n];
                    for (i, v) in dst.iter_mut().enumerate() {
                        let at = (i * cols + c) * width;
                        *v = decode(&buf[at..at + width]);
                    }
                }
            }
        }
        self.taken.insert(name.to_string());
        Ok(out)
    }

    fn role_name(&self, role: Role, layer: usize) -> String {
        // Every role a model asks for is in its table; a miss is a bug in this crate.
        name_of(self.table, role, layer).unwrap_or_else(|| format!("<no name for {role:?}>"))
    }

    /// A `[out, in]` PyTorch linear weight as a burn [`Linear`] (`[in, out]`; the LM head on
    /// flex a transposed view of the `[out, in]` storage, see `kernels::thin_out_in`), with an
    /// optional bias role.
    pub(crate) fn linear(
        &mut self,
        role: Role,
        bias: Option<Role>,
        layer: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear> {
        let name = self.role_name(role, layer);
        // The LM head read in the layout its thin products want, without a second copy.
        let weight = if role == Role::LmHead && crate::kernels::thin_out_in(&self.device) {
            self.matrix::<2>(&name, &[d_out, d_in], [d_out, d_in], false)?
                .transpose()
        } else {
            self.matrix::<2>(&name, &[d_out, d_in], [d_in, d_out], true)?
        };
        let bias = match bias {
            Some(b) => {
                let name = self.role_name(b, layer);
                Some(Param::from_tensor(self.tensor::<1>(&name, [d_out])?))
            }
            None => None,
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// An RMSNorm weight.
    pub(crate) fn norm(&mut self, role: Role, layer: usize, d: usize, eps: f64) -> Result<RmsNorm> {
        let name = self.role_name(role, layer);
        Ok(RmsNorm::from_weight(self.tensor::<1>(&name, [d])?, eps))
    }

    /// An embedding table `[rows, d]`.
    pub(crate) fn embedding(&mut self, role: Role, rows: usize, d: usize) -> Result<Embedding> {
        let name = self.role_name(role, 0);
        Ok(Embedding {
            weight: Param::from_tensor(self.matrix::<2>(&name, &[rows, d], [rows, d], false)?),
        })
    }

    /// Fails with [`Error::UnusedTensors`] if any tensor of the checkpoint was never read.
    pub(crate) fn finish(self) -> Result<()> {
        let unused: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .cloned()
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::UnusedTensors { names: unused })
        }
    }
}

/// Reads and validates one safetensors header without reading the data.
fn read_header(path: &Path) -> Result<(Shard, Metadata)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let (data_start, metadata) =
        parse_header(&mut file, file_len).map_err(|e| e.into_error(path))?;
    Ok((
        Shard {
            path: path.to_path_buf(),
            file,
            data_start,
        },
        metadata,
    ))
}

/// Why a header is rejected, before a file name is attached.
pub(crate) enum HeaderError {
    Io(std::io::Error),
    Invalid(String),
}

impl HeaderError {
    pub(crate) fn into_error(self, path: &Path) -> Error {
        match self {
            HeaderError::Io(e) => Error::io(path, e),
            HeaderError::Invalid(reason) => Error::Checkpoint {
                path: path.to_path_buf(),
                reason,
            },
        }
    }
}

/// Validates the header of a safetensors stream of `total_len` bytes read from its start:
/// the length prefix, the JSON (dtypes, shapes, contiguous non-overlapping offsets) and that
/// the data region has exactly the size the header describes. Returns the data offset.
pub(crate) fn parse_header(
    reader: &mut impl Read,
    total_len: u64,
) -> std::result::Result<(u64, Metadata), HeaderError> {
    let bad = HeaderError::Invalid;
    if total_len < 8 {
        return Err(bad(format!(
            "file is {total_len} bytes, too short for a safetensors header"
        )));
    }
    let mut len_bytes = [0u8; 8];
    reader.read_exact(&mut len_bytes).map_err(HeaderError::Io)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    if header_len > total_len - 8 {
        return Err(bad(format!(
            "header length {header_len} is larger than the file ({total_len} bytes)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).map_err(HeaderError::Io)?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("invalid header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = metadata.data_len() as u64;
    let available = total_len - data_start;
    if data_len > available {
        return Err(bad(format!(
            "header describes {data_len} bytes of tensor data but the file holds {available} (truncated?)"
        )));
    }
    if data_len < available {
        return Err(bad(format!(
            "file holds {available} bytes of tensor data but the header describes only {data_len}"
        )));
    }
    Ok((data_start, metadata))
}

/// One tensor listed in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorHeader {
    /// Checkpoint name.
    pub name: String,
    /// Stored dtype (`"F32"`, `"BF16"`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Lists the tensors of a safetensors file held in memory, after the same validation the
/// loader applies (sorted by name).
///
/// # Errors
/// [`Error::Checkpoint`] (with the path `<memory>`) for a malformed header.
pub fn inspect_safetensors(bytes: &[u8]) -> Result<Vec<TensorHeader>> {
    let mut reader = bytes;
    let (_, metadata) = parse_header(&mut reader, bytes.len() as u64)
        .map_err(|e| e.into_error(Path::new("<memory>")))?;
    let mut out: Vec<TensorHeader> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorHeader {
            name,
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tensors larger than one read piece come back whole, converted and transposed.
    #[test]
    fn large_tensors_are_read_in_pieces() {
        let (rows, cols) = (700, 600); // 1.6 MB in f32: two pieces
        let values: Vec<f32> = (0..rows * cols).map(|i| (i % 251) as f32 - 125.0).collect();
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let path =
            std::env::temp_dir().join(format!("dllm-cache-pieces-{}.st", std::process::id()));
        let views = vec![
            (
                "a".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![rows, cols], &f32_bytes)
                    .unwrap(),
            ),
            (
                "b".to_string(),
                safetensors::tensor::TensorView::new(Dtype::BF16, vec![rows, cols], &bf16_bytes)
                    .unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let mut ckpt = Checkpoint::open_files(
            std::slice::from_ref(&path),
            super::super::LLADA_NAMES,
            &Device::default(),
        )
        .unwrap();
        for name in ["a", "b"] {
            let flat = ckpt.read::<f32>(name, &[rows, cols], false).unwrap();
            let t = ckpt.read::<f32>(name, &[rows, cols], true).unwrap();
            // Straight into a 16-bit target, as 16-bit weight matrices load.
            let t16 = ckpt.read::<half::bf16>(name, &[rows, cols], true).unwrap();
            for r in [0, 1, 333, rows - 1] {
                for c in [0, 7, cols - 1] {
                    // Integers below 256 in magnitude are exact in bf16.
                    assert_eq!(flat[r * cols + c], values[r * cols + c], "{name}");
                    assert_eq!(t[c * rows + r], values[r * cols + c], "{name} transposed");
                    assert_eq!(
                        t16[c * rows + r].to_f32(),
                        values[r * cols + c],
                        "{name} bf16"
                    );
                }
            }
        }
        let _ = std::fs::remove_file(path);
    }
}
