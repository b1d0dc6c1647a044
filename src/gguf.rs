//! Reading a GGUF file's header (metadata and tensor infos) without llama.cpp.
//!
//! pardec reads an adapter's header itself before handing the file to llama.cpp, so that a
//! file that is not an adapter, or one made for another model, gets an error that says which
//! key or tensor is wrong instead of a NULL from llama.cpp. The reader trusts nothing: every
//! count and length is bounded before anything is allocated, and a truncated file is an
//! error, never a panic.
//!
//! Layout (little-endian): `GGUF`, version u32 (2 or 3), tensor count u64, KV count u64; each
//! KV: key (u64 length + bytes), value type u32, value; each tensor: name, n_dims u32, ne[]
//! u64, ggml type u32, data offset u64.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// Longest key, string value or tensor name read (llama.cpp's own keys are < 100 bytes; a
/// chat template can be tens of KiB).
const MAX_STRING: u64 = 1 << 20;
/// Most KV pairs or tensors in one header (a 70B model has ~700 tensors).
const MAX_ENTRIES: u64 = 1 << 20;
/// Most elements of one array value (vocabularies have up to a few hundred thousand tokens).
const MAX_ARRAY: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// A metadata value, as far as pardec reads it: scalars and strings; arrays are skipped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    /// A float32, widened.
    Float(f64),
    /// A float64 (kept apart: llama.cpp reads some keys as float32 only).
    Float64(f64),
    Bool(bool),
    Str(String),
    /// An array, its elements read past. `repeated`: for the vocabulary's token strings
    /// (`tokenizer.ggml.tokens`), the first string that appears twice, by index (llama.cpp
    /// asserts on one).
    Array {
        repeated: Option<(u64, String)>,
    },
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(x) | Value::Float64(x) => Some(x),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The value if it is stored as a float32: what llama.cpp's `gguf_get_val_f32` reads (it
    /// stops the process on any other type).
    pub(crate) fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::Float(x) => Some(x as f32),
            _ => None,
        }
    }
}

/// One tensor's name and shape (`ne[0]` is the contiguous dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Header {
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderError {
    /// The file cannot be opened or read.
    Io(String),
    /// It does not start with `GGUF`.
    Magic,
    /// It starts like GGUF but a field is out of bounds or the file ends early.
    Malformed(String),
}

pub(crate) fn read_header(path: &Path) -> Result<Header, HeaderError> {
    let file = std::fs::File::open(path).map_err(|e| HeaderError::Io(e.to_string()))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(HeaderError::Io("it is a directory".into()));
    }
    parse(BufReader::new(file))
}

pub(crate) fn parse(reader: impl Read) -> Result<Header, HeaderError> {
    let mut r = Reader(reader);
    let mut magic = [0u8; 4];
    r.bytes(&mut magic).map_err(|_| HeaderError::Magic)?;
    if &magic != b"GGUF" {
        return Err(HeaderError::Magic);
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(HeaderError::Malformed(format!("GGUF version {version} (pardec reads 2 and 3)")));
    }
    let n_tensors = r.count("tensors", MAX_ENTRIES)?;
    let n_kv = r.count("metadata pairs", MAX_ENTRIES)?;
    let mut header = Header::default();
    for _ in 0..n_kv {
        let key = r.string()?;
        let kind = r.u32()?;
        let value = r.value(kind, &key)?;
        header.metadata.insert(key, value);
    }
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(HeaderError::Malformed(format!("tensor {name:?} has {n_dims} dimensions")));
        }
        let ne = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let _ggml_type = r.u32()?;
        let _offset = r.u64()?;
        header.tensors.push(TensorInfo { name, ne });
    }
    Ok(header)
}

struct Reader<R>(R);

impl<R: Read> Reader<R> {
    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), HeaderError> {
        self.0.read_exact(buf).map_err(|_| HeaderError::Malformed("the file ends inside its header".into()))
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, HeaderError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn count(&mut self, what: &str, max: u64) -> Result<u64, HeaderError> {
        let n = self.u64()?;
        if n > max {
            return Err(HeaderError::Malformed(format!("{n} {what} (at most {max} are read)")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, HeaderError> {
        let len = self.count("string bytes", MAX_STRING)?;
        let mut buf = vec![0u8; len as usize];
        self.bytes(&mut buf)?;
        String::from_utf8(buf).map_err(|_| HeaderError::Malformed("a string is not UTF-8".into()))
    }

    fn skip(&mut self, n: u64) -> Result<(), HeaderError> {
        let copied = std::io::copy(&mut (&mut self.0).take(n), &mut std::io::sink())
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        if copied != n {
            return Err(HeaderError::Malformed("the file ends inside its header".into()));
        }
        Ok(())
    }

    /// One value of GGUF type `kind` (an array's elements are read past, not kept).
    fn value(&mut self, kind: u32, key: &str) -> Result<Value, HeaderError> {
        Ok(match kind {
            0 => Value::Int(self.fixed::<1>()?[0] as i64),
            1 => Value::Int(self.fixed::<1>()?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(self.fixed()?) as i64),
            3 => Value::Int(i16::from_le_bytes(self.fixed()?) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(i32::from_le_bytes(self.fixed()?) as i64),
            6 => Value::Float(f32::from_le_bytes(self.fixed()?) as f64),
            7 => Value::Bool(self.fixed::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let element = self.u32()?;
                let n = self.count("array elements", MAX_ARRAY)?;
                match element_size(element) {
                    Some(size) => self.skip(n * size)?,
                    None if element == 8 && key == "tokenizer.ggml.tokens" => {
                        let mut seen = std::collections::HashSet::new();
                        let mut repeated = None;
                        for i in 0..n {
                            let len = self.count("string bytes", MAX_STRING)?;
                            let mut buf = vec![0u8; len as usize];
                            self.bytes(&mut buf)?;
                            if repeated.is_some() {
                                continue;
                            }
                            if seen.contains(&buf) {
                                repeated = Some((i, String::from_utf8_lossy(&buf).into_owned()));
                            } else {
                                seen.insert(buf);
                            }
                        }
                        return Ok(Value::Array { repeated });
                    }
                    None if element == 8 => {
                        for _ in 0..n {
                            let len = self.count("string bytes", MAX_STRING)?;
                            self.skip(len)?;
                        }
                    }
                    None => {
                        return Err(HeaderError::Malformed(format!(
                            "key {key:?}: arrays of type {element} are not read"
                        )))
                    }
                }
                Value::Array { repeated: None }
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(i64::from_le_bytes(self.fixed()?)),
            12 => Value::Float64(f64::from_le_bytes(self.fixed()?)),
            other => return Err(HeaderError::Malformed(format!("key {key:?} has unknown value type {other}"))),
        })
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let mut b = [0u8; N];
        self.bytes(&mut b)?;
        Ok(b)
    }
}

/// Bytes per element of a fixed-size GGUF scalar type.
fn element_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_str(b: &mut Vec<u8>, key: &str, value: &str) {
        put_str(b, key);
        b.extend_from_slice(&8u32.to_le_bytes());
        put_str(b, value);
    }

    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    fn header_bytes() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&3u64.to_le_bytes()); // kv
        kv_str(&mut b, "general.type", "adapter");
        put_str(&mut b, "adapter.lora.alpha");
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&8.0f32.to_le_bytes());
        put_str(&mut b, "tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        put_str(&mut b, "a");
        put_str(&mut b, "bc");
        put_str(&mut b, "blk.0.attn_q.weight.lora_a");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&64u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b
    }

    #[test]
    fn reads_metadata_and_tensor_shapes() {
        let h = parse(&header_bytes()[..]).unwrap();
        assert_eq!(h.str("general.type"), Some("adapter"));
        assert_eq!(h.metadata["adapter.lora.alpha"].as_f64(), Some(8.0));
        assert_eq!(h.metadata["tokens"], Value::Array { repeated: None });
        assert_eq!(h.tensors, vec![TensorInfo { name: "blk.0.attn_q.weight.lora_a".into(), ne: vec![64, 4] }]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = header_bytes();
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "a header cut at {cut} bytes parsed");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes()); // a key "length" of 2^64 − 1
        assert!(matches!(parse(&b[..]), Err(HeaderError::Malformed(_))));
        assert_eq!(parse(&b"GGML\x03\0\0\0"[..]).unwrap_err(), HeaderError::Magic);
    }
}
