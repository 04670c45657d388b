//! Tensors between the wire and tract: the element types served, the shape
//! each input and output is served with (`-1` for a dynamic dimension, as
//! KServe v2 writes it), request data (JSON or the binary data extension)
//! checked against it, and outputs back as JSON numbers or raw bytes.

use tract_onnx::prelude::{Datum, DatumType, InferenceFact, Tensor, TractResult, f16};
use tract_onnx::tract_hir::infer::Factoid;

use super::{InferenceError, RequestTensor, ResponseTensor};

/// The largest value a dynamic dimension may take in one request. With the
/// endpoint's body limit it bounds what one request can make a model
/// allocate.
pub const MAX_DYNAMIC_DIM: usize = 1024;

/// Element types the agent serves (KServe v2 names). Binary data is
/// little-endian; BOOL is one byte, 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
}

const ALL: [Dtype; 12] = [
    Dtype::Bool,
    Dtype::Uint8,
    Dtype::Uint16,
    Dtype::Uint32,
    Dtype::Uint64,
    Dtype::Int8,
    Dtype::Int16,
    Dtype::Int32,
    Dtype::Int64,
    Dtype::Fp16,
    Dtype::Fp32,
    Dtype::Fp64,
];

impl Dtype {
    pub fn kserve_name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
        }
    }

    pub fn from_kserve(s: &str) -> Option<Self> {
        ALL.into_iter().find(|d| d.kserve_name() == s)
    }

    pub(super) fn tract(self) -> DatumType {
        match self {
            Self::Bool => DatumType::Bool,
            Self::Uint8 => DatumType::U8,
            Self::Uint16 => DatumType::U16,
            Self::Uint32 => DatumType::U32,
            Self::Uint64 => DatumType::U64,
            Self::Int8 => DatumType::I8,
            Self::Int16 => DatumType::I16,
            Self::Int32 => DatumType::I32,
            Self::Int64 => DatumType::I64,
            Self::Fp16 => DatumType::F16,
            Self::Fp32 => DatumType::F32,
            Self::Fp64 => DatumType::F64,
        }
    }

    pub(super) fn from_tract(dt: DatumType) -> Option<Self> {
        ALL.into_iter().find(|d| d.tract() == dt)
    }

    /// Bytes per element in the binary data extension.
    pub fn size(self) -> usize {
        self.tract().size_of()
    }
}

/// One input or output of a model, as served: `-1` marks a dynamic
/// dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub(super) fn describe(&self) -> String {
        format!("{} {:?}", self.dtype.kserve_name(), self.shape)
    }

    /// True when every dimension is fixed.
    pub fn is_fixed(&self) -> bool {
        self.shape.iter().all(|d| *d >= 0)
    }

    /// This spec with every dynamic dimension set to 1.
    pub(super) fn ones(&self) -> Vec<usize> {
        self.shape
            .iter()
            .map(|d| usize::try_from(*d).unwrap_or(1))
            .collect()
    }
}

pub(super) fn unsupported(model: &str, what: String) -> InferenceError {
    InferenceError::Unsupported {
        model: model.to_owned(),
        what,
    }
}

/// The served spec of an input fact: concrete dims kept, symbolic or unknown
/// ones dynamic (`-1`).
pub(super) fn input_spec(
    model: &str,
    input: &str,
    fact: &InferenceFact,
) -> Result<TensorSpec, InferenceError> {
    let dt = fact
        .datum_type
        .concretize()
        .ok_or_else(|| unsupported(model, format!("input `{input}` has no element type")))?;
    let dtype = Dtype::from_tract(dt).ok_or_else(|| {
        unsupported(
            model,
            format!("input `{input}` has unsupported element type {dt:?}"),
        )
    })?;
    if fact.shape.is_open() {
        return Err(unsupported(
            model,
            format!("input `{input}` has an unknown rank"),
        ));
    }
    let shape = fact
        .shape
        .dims()
        .map(|dim| {
            dim.concretize()
                .and_then(|d| d.to_i64().ok())
                .filter(|d| *d >= 0)
                .unwrap_or(-1)
        })
        .collect();
    Ok(TensorSpec {
        name: input.to_owned(),
        dtype,
        shape,
    })
}

/// Checks `given` against `spec` and builds the tensor from its JSON data
/// or, with the binary data extension, its raw bytes.
pub(super) fn build_tensor(
    spec: &TensorSpec,
    given: &RequestTensor,
) -> Result<Tensor, InferenceError> {
    let expect = || {
        format!(
            "input `{}`: expected shape {:?} datatype {}",
            spec.name,
            spec.shape,
            spec.dtype.kserve_name()
        )
    };
    let invalid = |what: String| InferenceError::Invalid(format!("{}, {what}", expect()));
    if given.datatype != spec.dtype.kserve_name() {
        return Err(invalid(format!("got datatype {}", given.datatype)));
    }
    let fits = given.shape.len() == spec.shape.len()
        && given.shape.iter().zip(&spec.shape).all(|(g, s)| {
            if *s < 0 {
                (1..=MAX_DYNAMIC_DIM).contains(g)
            } else {
                i64::try_from(*g).is_ok_and(|g| g == *s)
            }
        });
    if !fits {
        return Err(invalid(format!(
            "got shape {:?} (a dynamic dimension takes 1 to {MAX_DYNAMIC_DIM})",
            given.shape
        )));
    }
    let n = given
        .shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| invalid("the shape is too large".to_owned()))?;
    let shape = &given.shape;
    let tensor = match (&given.raw, &given.data) {
        (Some(raw), _) => {
            let want = n * spec.dtype.size();
            if raw.len() != want {
                return Err(invalid(format!(
                    "got {} byte(s) of binary data instead of {want}",
                    raw.len()
                )));
            }
            from_le_bytes(spec.dtype, shape, raw).map_err(invalid)?
        }
        (None, Some(data)) => {
            let mut flat = Vec::with_capacity(n);
            flatten(data, &mut flat);
            if flat.len() != n {
                return Err(invalid(format!(
                    "got {} data element(s) instead of {n}",
                    flat.len()
                )));
            }
            from_json(spec.dtype, shape, &flat).map_err(invalid)?
        }
        (None, None) if given.parameters.contains_key("binary_data_size") => {
            return Err(invalid(
                "got binary_data_size where binary data cannot travel (only HTTP requests \
                 carry it; MQTT payloads carry JSON `data`)"
                    .to_owned(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "got neither `data` nor `parameters.binary_data_size`".to_owned(),
            ));
        }
    };
    Ok(tensor)
}

fn flatten<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn typed<T: Datum + Copy>(shape: &[usize], v: &[T]) -> Result<Tensor, String> {
    Tensor::from_shape(shape, v).map_err(|e| e.to_string())
}

/// JSON elements as `T`, each through `conv`; the first that does not
/// convert is named.
fn convert<T: Datum + Copy>(
    shape: &[usize],
    flat: &[&serde_json::Value],
    what: &str,
    conv: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<Tensor, String> {
    let mut v = Vec::with_capacity(flat.len());
    for (i, x) in flat.iter().enumerate() {
        v.push(conv(x).ok_or_else(|| format!("data element {i} ({x}) is not {what}"))?);
    }
    typed(shape, &v)
}

fn int<T: TryFrom<i64> + TryFrom<u64>>(x: &serde_json::Value) -> Option<T> {
    match (x.as_i64(), x.as_u64()) {
        (_, Some(u)) => T::try_from(u).ok(),
        (Some(i), None) => T::try_from(i).ok(),
        _ => None,
    }
}

fn from_json(dtype: Dtype, shape: &[usize], flat: &[&serde_json::Value]) -> Result<Tensor, String> {
    #[allow(clippy::cast_possible_truncation)]
    let f32_of = |x: &serde_json::Value| x.as_f64().map(|f| f as f32);
    let range = |t: &str| format!("an integer in the range of {t}");
    match dtype {
        Dtype::Bool => convert(shape, flat, "a boolean", serde_json::Value::as_bool),
        Dtype::Uint8 => convert::<u8>(shape, flat, &range("UINT8"), int),
        Dtype::Uint16 => convert::<u16>(shape, flat, &range("UINT16"), int),
        Dtype::Uint32 => convert::<u32>(shape, flat, &range("UINT32"), int),
        Dtype::Uint64 => convert::<u64>(shape, flat, &range("UINT64"), int),
        Dtype::Int8 => convert::<i8>(shape, flat, &range("INT8"), int),
        Dtype::Int16 => convert::<i16>(shape, flat, &range("INT16"), int),
        Dtype::Int32 => convert::<i32>(shape, flat, &range("INT32"), int),
        Dtype::Int64 => convert::<i64>(shape, flat, &range("INT64"), int),
        Dtype::Fp16 => convert(shape, flat, "a number", |x| f32_of(x).map(f16::from_f32)),
        Dtype::Fp32 => convert(shape, flat, "a number", f32_of),
        Dtype::Fp64 => convert(shape, flat, "a number", serde_json::Value::as_f64),
    }
}

fn le<T: Datum + Copy, const N: usize>(
    shape: &[usize],
    raw: &[u8],
    from: fn([u8; N]) -> T,
) -> Result<Tensor, String> {
    let v: Vec<T> = raw
        .chunks_exact(N)
        .map(|c| from(c.try_into().unwrap_or([0; N])))
        .collect();
    typed(shape, &v)
}

fn from_le_bytes(dtype: Dtype, shape: &[usize], raw: &[u8]) -> Result<Tensor, String> {
    match dtype {
        Dtype::Bool => {
            if let Some(i) = raw.iter().position(|b| *b > 1) {
                return Err(format!("binary BOOL element {i} is {}, not 0 or 1", raw[i]));
            }
            le::<bool, 1>(shape, raw, |[b]| b == 1)
        }
        Dtype::Uint8 => le(shape, raw, u8::from_le_bytes),
        Dtype::Uint16 => le(shape, raw, u16::from_le_bytes),
        Dtype::Uint32 => le(shape, raw, u32::from_le_bytes),
        Dtype::Uint64 => le(shape, raw, u64::from_le_bytes),
        Dtype::Int8 => le(shape, raw, i8::from_le_bytes),
        Dtype::Int16 => le(shape, raw, i16::from_le_bytes),
        Dtype::Int32 => le(shape, raw, i32::from_le_bytes),
        Dtype::Int64 => le(shape, raw, i64::from_le_bytes),
        Dtype::Fp16 => le(shape, raw, f16::from_le_bytes),
        Dtype::Fp32 => le(shape, raw, f32::from_le_bytes),
        Dtype::Fp64 => le(shape, raw, f64::from_le_bytes),
    }
}

fn json_values<T: Datum + Copy>(
    value: &Tensor,
    to: impl Fn(T) -> serde_json::Value,
) -> TractResult<Vec<serde_json::Value>> {
    Ok(value
        .to_plain_array_view::<T>()?
        .iter()
        .map(|x| to(*x))
        .collect())
}

/// An output tensor on the wire: JSON data, or with `binary` its raw
/// little-endian bytes (`parameters.binary_data_size` says how many). An
/// element type the wire has no name for is sent as FP32.
pub(super) fn response_tensor(
    name: String,
    value: &Tensor,
    binary: bool,
) -> TractResult<ResponseTensor> {
    let shape = value.shape().to_vec();
    let Some(dtype) = Dtype::from_tract(value.datum_type()) else {
        let as_f32 = value.cast_to::<f32>()?;
        return response_tensor(name, &as_f32, binary);
    };
    let mut out = ResponseTensor {
        name,
        shape,
        datatype: dtype.kserve_name().to_owned(),
        parameters: serde_json::Map::new(),
        data: None,
        raw: None,
    };
    if binary {
        let bytes = if dtype == Dtype::Bool {
            value
                .to_plain_array_view::<bool>()?
                .iter()
                .map(|b| u8::from(*b))
                .collect()
        } else {
            value.as_bytes().to_vec()
        };
        out.parameters
            .insert("binary_data_size".into(), bytes.len().into());
        out.raw = Some(bytes);
        return Ok(out);
    }
    let f = |x: f64| serde_json::Value::from(x);
    out.data = Some(match dtype {
        Dtype::Bool => json_values::<bool>(value, serde_json::Value::from)?,
        Dtype::Uint8 => json_values::<u8>(value, serde_json::Value::from)?,
        Dtype::Uint16 => json_values::<u16>(value, serde_json::Value::from)?,
        Dtype::Uint32 => json_values::<u32>(value, serde_json::Value::from)?,
        Dtype::Uint64 => json_values::<u64>(value, serde_json::Value::from)?,
        Dtype::Int8 => json_values::<i8>(value, serde_json::Value::from)?,
        Dtype::Int16 => json_values::<i16>(value, serde_json::Value::from)?,
        Dtype::Int32 => json_values::<i32>(value, serde_json::Value::from)?,
        Dtype::Int64 => json_values::<i64>(value, serde_json::Value::from)?,
        Dtype::Fp16 => json_values::<f16>(value, |x| f(f64::from(x.to_f32())))?,
        Dtype::Fp32 => json_values::<f32>(value, |x| f(f64::from(x)))?,
        Dtype::Fp64 => json_values::<f64>(value, f)?,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: Dtype, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    fn req(datatype: &str, shape: &[usize], data: serde_json::Value) -> RequestTensor {
        RequestTensor {
            name: "x".into(),
            shape: shape.to_vec(),
            datatype: datatype.into(),
            parameters: serde_json::Map::new(),
            data: Some(data),
            raw: None,
        }
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in ALL {
            assert_eq!(Dtype::from_kserve(d.kserve_name()), Some(d));
            assert_eq!(Dtype::from_tract(d.tract()), Some(d));
        }
        assert_eq!(Dtype::from_kserve("BYTES"), None);
    }

    #[test]
    fn integers_are_checked_against_their_type() {
        let s = spec(Dtype::Int8, &[-1, 2]);
        assert!(build_tensor(&s, &req("INT8", &[1, 2], serde_json::json!([1, -2]))).is_ok());
        for bad in [serde_json::json!([1, 200]), serde_json::json!([1, 1.5])] {
            let e = build_tensor(&s, &req("INT8", &[1, 2], bad)).unwrap_err();
            assert!(e.to_string().contains("INT8"), "{e}");
        }
        let u = spec(Dtype::Uint64, &[1]);
        let t = build_tensor(&u, &req("UINT64", &[1], serde_json::json!([u64::MAX]))).unwrap();
        assert_eq!(
            t.to_plain_array_view::<u64>()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![u64::MAX]
        );
    }

    #[test]
    fn dynamic_dimensions_take_any_size_up_to_the_bound() {
        let s = spec(Dtype::Fp32, &[-1, 2]);
        let ok = build_tensor(
            &s,
            &req("FP32", &[3, 2], serde_json::json!([[1, 2], [3, 4], [5, 6]])),
        );
        assert_eq!(ok.unwrap().shape(), &[3, 2]);
        for shape in [
            vec![0, 2],
            vec![3, 3],
            vec![MAX_DYNAMIC_DIM + 1, 2],
            vec![2],
        ] {
            let e = build_tensor(&s, &req("FP32", &shape, serde_json::json!([]))).unwrap_err();
            assert!(e.to_string().contains("[-1, 2]"), "{e}");
        }
    }

    #[test]
    fn binary_data_round_trips_for_every_type() {
        for d in ALL {
            let s = spec(d, &[2]);
            let raw: Vec<u8> = (0..2 * d.size())
                .map(|i| u8::from(i % d.size() == 0 && i > 0))
                .collect();
            let mut r = req(d.kserve_name(), &[2], serde_json::Value::Null);
            r.data = None;
            r.raw = Some(raw.clone().into());
            let t = build_tensor(&s, &r).unwrap_or_else(|e| panic!("{d:?}: {e}"));
            let out = response_tensor("y".into(), &t, true).unwrap();
            assert_eq!(out.raw.as_deref(), Some(raw.as_slice()), "{d:?}");
            assert_eq!(out.datatype, d.kserve_name());
            assert_eq!(out.parameters["binary_data_size"], raw.len());
            r.raw = Some(vec![0u8; 2 * d.size() + 1].into());
            assert!(build_tensor(&s, &r).is_err(), "{d:?}: length is checked");
        }
        let mut r = req("BOOL", &[1], serde_json::Value::Null);
        r.data = None;
        r.raw = Some(vec![2u8].into());
        let e = build_tensor(&spec(Dtype::Bool, &[1]), &r).unwrap_err();
        assert!(e.to_string().contains("not 0 or 1"), "{e}");
    }

    #[test]
    fn json_outputs_keep_their_type() {
        let b = Tensor::from_shape(&[2], &[true, false]).unwrap();
        let out = response_tensor("b".into(), &b, false).unwrap();
        assert_eq!(out.datatype, "BOOL");
        assert_eq!(out.data, Some(vec![true.into(), false.into()]));
        let h = Tensor::from_shape(&[1], &[f16::from_f32(0.5)]).unwrap();
        let out = response_tensor("h".into(), &h, false).unwrap();
        assert_eq!((out.datatype.as_str(), out.as_f64()), ("FP16", vec![0.5]));
    }
}
