//! ONNX models as workloads (issue 5): tract-onnx loads, optimises and plans
//! each model once ([`Model::load`]); requests run on the blocking pool, never
//! on the async runtime, bounded per model by a semaphore (`concurrency`,
//! default 1). Every request is validated against the model's input facts
//! (name, dtype, shape) before it reaches tract, with an error naming the
//! expected shape.
//!
//! Symbolic dimensions (e.g. the batch axis `N`) are pinned to 1 at load, so
//! the plan is fully static; a request carries exactly one item.
//!
//! Submodules: [`kserve`] (KServe v2 JSON types and the `/v2` router),
//! [`model_cache`] (download from the hub, Range resume, sha256 verification,
//! bounded LRU cache), [`runtime`] (what the reconciler calls per inference
//! workload), [`sink`] (`inference.result` payloads and `when` conditions).

pub mod kserve;
pub mod local_mqtt;
pub mod model_cache;
pub mod runtime;
pub mod sink;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::Semaphore;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoTValue, IntoTensor, TValue, TVec,
    Tensor, TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::Factoid;

use crate::metrics::ModelMetrics;

pub use kserve::{InferRequest, InferResponse, RequestTensor, ResponseTensor};

/// A tract error, kept as a `std::error::Error` source.
type TractSource = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot load model `{model}`")]
    Load {
        model: String,
        #[source]
        source: TractSource,
    },
    #[error("model `{model}`: {what}")]
    Unsupported { model: String, what: String },
    /// The request does not fit the model; the message names what it expects.
    #[error("{0}")]
    Invalid(String),
    #[error("model `{model}` failed to run")]
    Run {
        model: String,
        #[source]
        source: TractSource,
    },
    #[error("inference task of model `{model}` did not finish")]
    Join {
        model: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("model `{0}` is being unloaded")]
    Closed(String),
}

impl InferenceError {
    /// True when the caller sent something the model cannot take (HTTP 400).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

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

    fn from_tract(dt: DatumType) -> Option<Self> {
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
    fn describe(&self) -> String {
        format!("{} {:?}", self.dtype.kserve_name(), self.shape)
    }
}

/// A loaded, optimised and planned model. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Model {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plan: Arc<TypedRunnableModel>,
    /// Run states kept between requests (at most one per permit): a fresh
    /// state per run allocates every node's op state, a measurable share of
    /// a small model's run time.
    states: Mutex<Vec<TypedSimpleState>>,
    permits: Arc<Semaphore>,
    max_states: usize,
    metrics: Option<ModelMetrics>,
}

impl Model {
    /// Loads an ONNX file; `concurrency` bounds simultaneous runs (min 1).
    pub fn load(
        name: &str,
        path: &Path,
        concurrency: Option<u32>,
    ) -> Result<Arc<Self>, InferenceError> {
        Self::load_with_metrics(name, path, concurrency, None)
    }

    /// [`Model::load`], recording requests/errors/latency in `metrics`.
    pub fn load_with_metrics(
        name: &str,
        path: &Path,
        concurrency: Option<u32>,
        metrics: Option<ModelMetrics>,
    ) -> Result<Arc<Self>, InferenceError> {
        let load_err = |e: tract_onnx::prelude::TractError| InferenceError::Load {
            model: name.to_owned(),
            source: e.into(),
        };
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(load_err)?;
        let n_inputs = model.input_outlets().map_err(load_err)?.len();
        let mut inputs = Vec::with_capacity(n_inputs);
        for ix in 0..n_inputs {
            let outlet = model.input_outlets().map_err(load_err)?[ix];
            let input_name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(ix).map_err(load_err)?;
            let spec = pinned_spec(name, &input_name, fact)?;
            let dt = fact.datum_type.concretize().ok_or_else(|| {
                unsupported(name, format!("input `{input_name}` has no element type"))
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, spec.shape.clone()))
                .map_err(load_err)?;
            inputs.push(spec);
        }
        let typed = model.into_optimized().map_err(load_err)?;
        let mut outputs = Vec::new();
        for outlet in typed.output_outlets().map_err(load_err)? {
            let fact = typed.outlet_fact(*outlet).map_err(load_err)?;
            let out_name = typed.node(outlet.node).name.clone();
            let shape = fact
                .shape
                .as_concrete()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            let dtype = Dtype::from_tract(fact.datum_type).unwrap_or(Dtype::Fp32);
            outputs.push(TensorSpec {
                name: out_name,
                dtype,
                shape,
            });
        }
        let plan = tract_onnx::prelude::IntoRunnable::into_runnable(typed).map_err(load_err)?;
        let permits = concurrency.unwrap_or(1).max(1) as usize;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            inputs,
            outputs,
            plan,
            states: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(permits)),
            max_states: permits,
            metrics,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Validates and runs one request off the async runtime.
    pub async fn infer(
        self: &Arc<Self>,
        req: InferRequest,
    ) -> Result<InferResponse, InferenceError> {
        let started = Instant::now();
        let res = self.infer_inner(req).await;
        self.record(started, res.is_ok());
        res
    }

    /// Counts a request that failed before reaching the model (bad body).
    pub fn record_error(&self) {
        if let Some(m) = &self.metrics {
            m.requests.inc();
            m.errors.inc();
        }
    }

    fn record(&self, started: Instant, ok: bool) {
        if let Some(m) = &self.metrics {
            m.requests.inc();
            if !ok {
                m.errors.inc();
            }
            m.latency.observe(started.elapsed().as_secs_f64());
        }
    }

    async fn infer_inner(
        self: &Arc<Self>,
        req: InferRequest,
    ) -> Result<InferResponse, InferenceError> {
        let tensors = self.validate(&req)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| InferenceError::Closed(self.name.clone()))?;
        let me = Arc::clone(self);
        let outputs = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.run_tensors(tensors)
        })
        .await
        .map_err(|source| InferenceError::Join {
            model: self.name.clone(),
            source,
        })??;
        Ok(InferResponse {
            model_name: self.name.clone(),
            id: req.id,
            outputs,
        })
    }

    /// Validates and runs one request on the calling thread (blocking).
    pub fn infer_blocking(
        &self,
        req: &InferRequest,
    ) -> Result<Vec<ResponseTensor>, InferenceError> {
        let started = Instant::now();
        let res = self
            .validate(req)
            .and_then(|tensors| self.run_tensors(tensors));
        self.record(started, res.is_ok());
        res
    }

    /// Checks a request against the model's inputs and builds the tensors in
    /// model input order.
    pub fn validate(&self, req: &InferRequest) -> Result<Vec<Tensor>, InferenceError> {
        if req.inputs.len() != self.inputs.len() {
            return Err(InferenceError::Invalid(format!(
                "model `{}` takes {} input(s) ({}), the request has {}",
                self.name,
                self.inputs.len(),
                self.describe_inputs(),
                req.inputs.len()
            )));
        }
        let mut out = Vec::with_capacity(self.inputs.len());
        for (ix, spec) in self.inputs.iter().enumerate() {
            let given = if self.inputs.len() == 1 {
                &req.inputs[0]
            } else {
                req.inputs
                    .iter()
                    .find(|t| t.name == spec.name)
                    .ok_or_else(|| {
                        InferenceError::Invalid(format!(
                            "missing input `{}`: expected shape {}",
                            spec.name,
                            spec.describe()
                        ))
                    })?
            };
            out.push(build_tensor(ix, spec, given)?);
        }
        Ok(out)
    }

    fn describe_inputs(&self) -> String {
        self.inputs
            .iter()
            .map(|s| format!("`{}` {}", s.name, s.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs input tensors (in model input order, already of the served shapes)
    /// through the same plan requests use, on the calling thread, without
    /// validation or JSON conversion: the cost of the model alone (the
    /// benchmark against onnxruntime times this).
    pub fn run_plan(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let results = self
            .run_pooled(inputs.into_iter().map(|t| t.into_tvalue()).collect())
            .map_err(|e| InferenceError::Run {
                model: self.name.clone(),
                source: e.into(),
            })?;
        Ok(results.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// One run of the plan on a kept state (or a new one when all are busy).
    /// A state goes back to the pool only after a run that succeeded; after a
    /// failure it is dropped, so nothing half-done carries over.
    fn run_pooled(&self, inputs: TVec<TValue>) -> tract_onnx::prelude::TractResult<TVec<TValue>> {
        let kept = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match kept {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(inputs)?;
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() < self.max_states {
            states.push(state);
        }
        Ok(outputs)
    }

    fn run_tensors(&self, tensors: Vec<Tensor>) -> Result<Vec<ResponseTensor>, InferenceError> {
        let run_err = |e: tract_onnx::prelude::TractError| InferenceError::Run {
            model: self.name.clone(),
            source: e.into(),
        };
        let started = Instant::now();
        let inputs = tensors.into_iter().map(|t| t.into_tvalue()).collect();
        let results = self.run_pooled(inputs).map_err(run_err)?;
        tracing::trace!(model = %self.name, elapsed = ?started.elapsed(), "inference run");
        let mut out = Vec::with_capacity(results.len());
        for (ix, value) in results.iter().enumerate() {
            let name = self
                .outputs
                .get(ix)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| format!("output_{ix}"));
            out.push(response_tensor(name, value).map_err(run_err)?);
        }
        Ok(out)
    }
}

fn unsupported(model: &str, what: String) -> InferenceError {
    InferenceError::Unsupported {
        model: model.to_owned(),
        what,
    }
}

/// The served shape of an input: concrete dims kept, a symbolic or unknown
/// leading (batch) dim pinned to 1; any other open dim is unsupported.
fn pinned_spec(
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

fn build_tensor(
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

fn response_tensor(
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

/// Loaded models by the names they are served under (workload short name and
/// model name both resolve).
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<HashMap<String, Arc<Model>>>,
}

impl ModelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `model` under each of `names` (replacing what was there).
    pub fn insert(&self, names: &[&str], model: Arc<Model>) {
        let mut map = self.models.write().unwrap_or_else(|p| p.into_inner());
        for n in names {
            map.insert((*n).to_owned(), Arc::clone(&model));
        }
    }

    /// Stops serving every name in `names`.
    pub fn remove(&self, names: &[&str]) {
        let mut map = self.models.write().unwrap_or_else(|p| p.into_inner());
        for n in names {
            map.remove(*n);
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
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
