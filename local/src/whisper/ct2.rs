//! A reader for CTranslate2's `model.bin`: the variables (weights and
//! rank-0 settings) of a converted model, by name.
//!
//! Layout (binary version 6, little-endian), as measured on the Whisper
//! tiny.en file:
//!
//! ```text
//! u32 version | string spec name | u32 revision | u32 variable count
//! per variable: string name | u8 rank | u32 dim × rank | u8 dtype | u32 byte count | bytes
//! u32 alias count | per alias: string alias | string target
//! string = u16 length (counting a trailing NUL) | bytes
//! dtype  = 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
//! ```
//!
//! Arrays become f32 tensors on the CPU (f16/bf16 weights are widened at
//! load); rank-0 integer variables (`num_heads`, `pre_norm`, …) become
//! [`Ct2Model::setting`]s. Quantized (int8) weight arrays are not supported.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// The only binary layout this reader knows.
const BINARY_VERSION: u32 = 6;

/// A loaded `model.bin`.
#[derive(Debug)]
pub(crate) struct Ct2Model {
    pub(crate) spec: String,
    tensors: HashMap<String, Tensor>,
    settings: HashMap<String, i64>,
}

impl Ct2Model {
    /// Parses the bytes of a `model.bin`; the error says what is wrong where.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut cursor = Cursor { bytes, at: 0 };
        let version = cursor.u32()?;
        if version != BINARY_VERSION {
            return Err(format!(
                "CTranslate2 binary version {version}; only version {BINARY_VERSION} is supported"
            ));
        }
        let spec = cursor.string()?;
        let _revision = cursor.u32()?;
        let count = cursor.u32()?;
        let mut tensors = HashMap::new();
        let mut settings = HashMap::new();
        for _ in 0..count {
            let name = cursor.string()?;
            let rank = usize::from(cursor.u8()?);
            let dims = (0..rank)
                .map(|_| cursor.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = cursor.u8()?;
            let len = cursor.u32()? as usize;
            let data = cursor.take(len)?;
            if rank == 0 {
                let value = scalar(dtype, data)
                    .ok_or_else(|| format!("{name}: unsupported scalar of dtype {dtype}"))?;
                settings.insert(name, value);
                continue;
            }
            let dtype = match dtype {
                0 => DType::F32,
                4 => DType::F16,
                5 => DType::BF16,
                other => {
                    return Err(format!(
                        "{name}: arrays of dtype {other} (quantized?) are not supported; \
                         use the float16 conversion"
                    ));
                }
            };
            let expected = dims.iter().product::<usize>() * dtype.size_in_bytes();
            if expected != len {
                return Err(format!(
                    "{name}: {len} bytes for shape {dims:?}, expected {expected}"
                ));
            }
            let tensor = Tensor::from_raw_buffer(data, dtype, &dims, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| format!("{name}: {e}"))?;
            tensors.insert(name, tensor);
        }
        let aliases = cursor.u32()?;
        for _ in 0..aliases {
            let alias = cursor.string()?;
            let target = cursor.string()?;
            if let Some(tensor) = tensors.get(&target).cloned() {
                // Tensors share storage: an alias costs no memory.
                tensors.insert(alias, tensor);
            } else if let Some(value) = settings.get(&target).copied() {
                settings.insert(alias, value);
            } else {
                return Err(format!("alias {alias} names a missing {target}"));
            }
        }
        Ok(Self {
            spec,
            tensors,
            settings,
        })
    }

    /// The array variable `name`.
    pub(crate) fn tensor(&self, name: &str) -> Result<Tensor, String> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no variable {name}"))
    }

    /// An array variable that converters may omit (zero key biases).
    pub(crate) fn optional_tensor(&self, name: &str) -> Option<Tensor> {
        self.tensors.get(name).cloned()
    }

    /// The rank-0 setting `name`.
    pub(crate) fn setting(&self, name: &str) -> Option<i64> {
        self.settings.get(name).copied()
    }
}

fn scalar(dtype: u8, data: &[u8]) -> Option<i64> {
    Some(match (dtype, data) {
        (1, [b]) => i64::from(*b as i8),
        (2, [a, b]) => i64::from(i16::from_le_bytes([*a, *b])),
        (3, [a, b, c, d]) => i64::from(i32::from_le_bytes([*a, *b, *c, *d])),
        _ => return None,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: {len} bytes wanted at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            ));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = usize::from(self.u16()?);
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| format!("a name at {} is not UTF-8", self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn parses_arrays_settings_and_aliases() {
        let mut bin = Vec::new();
        bin.extend_from_slice(&6u32.to_le_bytes());
        string(&mut bin, "WhisperSpec");
        bin.extend_from_slice(&3u32.to_le_bytes());
        bin.extend_from_slice(&2u32.to_le_bytes());
        string(&mut bin, "w");
        bin.push(2);
        bin.extend_from_slice(&1u32.to_le_bytes());
        bin.extend_from_slice(&2u32.to_le_bytes());
        bin.push(4); // f16
        bin.extend_from_slice(&4u32.to_le_bytes());
        bin.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0]); // 1.0, -2.0
        string(&mut bin, "heads");
        bin.push(0);
        bin.push(2); // i16
        bin.extend_from_slice(&2u32.to_le_bytes());
        bin.extend_from_slice(&6i16.to_le_bytes());
        bin.extend_from_slice(&1u32.to_le_bytes());
        string(&mut bin, "w_alias");
        string(&mut bin, "w");

        let model = Ct2Model::parse(&bin).expect("parses");
        assert_eq!(model.spec, "WhisperSpec");
        assert_eq!(model.setting("heads"), Some(6));
        let w = model.tensor("w_alias").expect("alias");
        assert_eq!(w.dims(), &[1, 2]);
        assert_eq!(w.to_vec2::<f32>().expect("f32"), vec![vec![1.0, -2.0]]);
        assert!(Ct2Model::parse(&bin[..bin.len() - 3]).is_err());
    }
}
