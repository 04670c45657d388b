//! ONNX models as workloads: tract-onnx loads, optimises and plans
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
//! workload), [`sink`] (`inference.result` payloads and `when` conditions),
//! `tensor` (element types, served shapes, KServe JSON to tract tensors and
//! back).

pub mod kserve;
pub mod local_mqtt;
pub mod model_cache;
pub mod runtime;
pub mod sink;
mod tensor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::Semaphore;
use tract_onnx::prelude::{
    Framework, InferenceFact, InferenceModelExt, IntoTValue, IntoTensor, TValue, TVec, Tensor,
    TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::Factoid;

use crate::metrics::ModelMetrics;

pub use kserve::{InferRequest, InferResponse, RequestTensor, ResponseTensor};
pub use tensor::{Dtype, TensorSpec};
use tensor::{build_tensor, pinned_spec, response_tensor, unsupported};

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
