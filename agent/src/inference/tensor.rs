//! Tensors between the wire and tract: the element types served, the shape
//! each input is served with (a symbolic batch axis pinned to 1), request
//! data checked against it, and outputs back as KServe JSON.

use tract_onnx::prelude::{DatumType, InferenceFact, Tensor};
use tract_onnx::tract_hir::infer::Factoid;

use super::{InferenceError, RequestTensor, ResponseTensor};

/// Element types the agent accepts on the wire (KServe v2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Fp32,
    Fp64,
    Int64,
    Int32,
}

impl Dtype {
    pub fn kserve_name(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Int64 => "INT64",
            Self::Int32 => "INT32",
        }
    }

    pub fn from_kserve(s: &str) -> Option<Self> {
        match s {
            "FP32" => Some(Self::Fp32),
            "FP64" => Some(Self::Fp64),
            "INT64" => Some(Self::Int64),
            "INT32" => Some(Self::Int32),
            _ => None,
        }
    }

    pub(super) fn from_tract(dt: DatumType) -> Option<Self> {
        match dt {
            DatumType::F32 => Some(Self::Fp32),
            DatumType::F64 => Some(Self::Fp64),
            DatumType::I64 => Some(Self::Int64),
            DatumType::I32 => Some(Self::Int32),
            _ => None,
        }
    }
}

/// One input or output of a model, as served.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub(super) fn describe(&self) -> String {
        format!("{} {:?}", self.dtype.kserve_name(), self.shape)
    }
}

pub(super) fn unsupported(model: &str, what: String) -> InferenceError {
    InferenceError::Unsupported {
        model: model.to_owned(),
        what,
    }
}

/// The served shape of an input: concrete dims kept, a symbolic or unknown
/// leading (batch) dim pinned to 1; any other open dim is unsupported.
pub(super) fn pinned_spec(
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
    let mut shape = Vec::new();
    for (axis, dim) in fact.shape.dims().enumerate() {
        let concrete = dim
            .concretize()
            .and_then(|d| d.to_i64().ok())
            .and_then(|d| usize::try_from(d).ok());
        match (concrete, axis) {
            (Some(d), _) => shape.push(d),
            (None, 0) => shape.push(1),
            (None, _) => {
                return Err(unsupported(
                    model,
                    format!("input `{input}` has a symbolic dimension on axis {axis}"),
                ));
            }
        }
    }
    Ok(TensorSpec {
        name: input.to_owned(),
        dtype,
        shape,
    })
}

pub(super) fn build_tensor(
    ix: usize,
    spec: &TensorSpec,
    given: &RequestTensor,
) -> Result<Tensor, InferenceError> {
    let expect = || {
        format!(
            "input `{}` (#{ix}): expected shape {:?} datatype {}",
            spec.name,
            spec.shape,
            spec.dtype.kserve_name()
        )
    };
    if given.datatype != spec.dtype.kserve_name() {
        return Err(InferenceError::Invalid(format!(
            "{}, got datatype {}",
            expect(),
            given.datatype
        )));
    }
    if given.shape != spec.shape {
        return Err(InferenceError::Invalid(format!(
            "{}, got shape {:?}",
            expect(),
            given.shape
        )));
    }
    let n: usize = spec.shape.iter().product();
    if given.data.len() != n {
        return Err(InferenceError::Invalid(format!(
            "{}, got {} data element(s) instead of {n}",
            expect(),
            given.data.len()
        )));
    }
    let bad =
        |e: tract_onnx::prelude::TractError| InferenceError::Invalid(format!("{}: {e}", expect()));
    match spec.dtype {
        Dtype::Fp32 => {
            #[allow(clippy::cast_possible_truncation)]
            let v: Vec<f32> = given.data.iter().map(|x| *x as f32).collect();
            Tensor::from_shape(&spec.shape, &v).map_err(bad)
        }
        Dtype::Fp64 => Tensor::from_shape(&spec.shape, &given.data).map_err(bad),
        Dtype::Int64 => {
            let v = integers::<i64>(&given.data).ok_or_else(|| {
                InferenceError::Invalid(format!("{}, got non-integer data", expect()))
            })?;
            Tensor::from_shape(&spec.shape, &v).map_err(bad)
        }
        Dtype::Int32 => {
            let v = integers::<i32>(&given.data).ok_or_else(|| {
                InferenceError::Invalid(format!("{}, got non-integer data", expect()))
            })?;
            Tensor::from_shape(&spec.shape, &v).map_err(bad)
        }
    }
}

fn integers<T: TryFrom<i64>>(data: &[f64]) -> Option<Vec<T>> {
    data.iter()
        .map(|x| {
            if x.fract() != 0.0 || !x.is_finite() {
                return None;
            }
            #[allow(clippy::cast_possible_truncation)]
            T::try_from(*x as i64).ok()
        })
        .collect()
}

pub(super) fn response_tensor(
    name: String,
    value: &Tensor,
) -> Result<ResponseTensor, tract_onnx::prelude::TractError> {
    let shape = value.shape().to_vec();
    let (datatype, data) = match value.datum_type() {
        DatumType::I64 | DatumType::I32 => {
            let v = value.cast_to::<i64>()?;
            let data = v
                .to_plain_array_view::<i64>()?
                .iter()
                .map(|x| serde_json::Value::from(*x))
                .collect();
            (Dtype::Int64, data)
        }
        _ => {
            let v = value.cast_to::<f32>()?;
            let data = v
                .to_plain_array_view::<f32>()?
                .iter()
                .map(|x| serde_json::Value::from(f64::from(*x)))
                .collect();
            (Dtype::Fp32, data)
        }
    };
    Ok(ResponseTensor {
        name,
        shape,
        datatype: datatype.kserve_name().to_owned(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_conversion_rejects_fractions() {
        assert_eq!(integers::<i64>(&[1.0, 2.0]), Some(vec![1, 2]));
        assert_eq!(integers::<i64>(&[1.5]), None);
        assert_eq!(integers::<i32>(&[f64::NAN]), None);
        assert_eq!(integers::<i32>(&[1e12]), None);
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in [Dtype::Fp32, Dtype::Fp64, Dtype::Int64, Dtype::Int32] {
            assert_eq!(Dtype::from_kserve(d.kserve_name()), Some(d));
        }
        assert_eq!(Dtype::from_kserve("BYTES"), None);
    }
}
