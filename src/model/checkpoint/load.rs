//! Safetensors checkpoints (single file or sharded index) into burn modules.
//!
//! The loader reads each shard's header once, validates it (header length, dtypes, offsets,
//! data size) and then reads every tensor with one positioned read, converting f32/bf16/f16 to
//! the device's float type on the way. No shard is ever held in memory as a whole, so peak
//! memory is the model plus one tensor.
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
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata};

use super::names::{NameTable, Role, name_of};
use super::transpose;
use crate::error::{Error, Result};
use crate::model::norm::RmsNorm;

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
        })
    }

    /// Reads a tensor by checkpoint name, checking its shape, converted to the device's float
    /// dtype.
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<D>> {
        let (values, shape) = self.read_f32(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn read_f32(&mut self, name: &str, expected: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
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
        let width = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let count: usize = expected.iter().product();
        debug_assert_eq!(count * width, entry.len, "validated by the header check");
        let shard = &mut self.shards[entry.shard];
        let mut bytes = vec![0u8; entry.len];
        shard
            .file
            .seek(SeekFrom::Start(entry.start))
            .and_then(|_| shard.file.read_exact(&mut bytes))
            .map_err(|e| Error::io(&shard.path, e))?;
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        self.taken.insert(name.to_string());
        Ok((values, expected.to_vec()))
    }

    fn role_name(&self, role: Role, layer: usize) -> String {
        // Every role a model asks for is in its table; a miss is a bug in this crate.
        name_of(self.table, role, layer).unwrap_or_else(|| format!("<no name for {role:?}>"))
    }

    /// A `[out, in]` PyTorch linear weight as a burn [`Linear`] (`[in, out]`), with an optional
    /// bias role.
    pub(crate) fn linear(
        &mut self,
        role: Role,
        bias: Option<Role>,
        layer: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear> {
        let name = self.role_name(role, layer);
        let (values, _) = self.read_f32(&name, &[d_out, d_in])?;
        let transposed = transpose(&values, d_out, d_in);
        let weight =
            Tensor::<2>::from_data(TensorData::new(transposed, [d_in, d_out]), &self.device);
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
            weight: Param::from_tensor(self.tensor::<2>(&name, [rows, d])?),
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
