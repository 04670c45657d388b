//! ONNX models as workloads: tract-onnx loads, optimises and plans
//! each model once ([`Model::load`]); requests run on the blocking pool, never
//! on the async runtime, bounded per model by a semaphore (`concurrency`,
//! default 1). Every request is validated against the model's input facts
//! (name, dtype, shape) before it reaches tract, with an error naming the
//! expected shape.
//!
//! A model whose inputs are all fixed is planned once at load (the fast
//! path). Symbolic dimensions (e.g. the batch axis `N`) stay dynamic: they
//! are served as `-1`, and the model is planned per concrete set of input
//! shapes, at most [`MAX_PLANS`] plans kept per model (least recently used
//! dropped), so a batch of 8 runs as one plan of batch 8.
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
    Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, IntoTensor, TValue,
    TVec, Tensor, TractResult, TypedModel, TypedRunnableModel, TypedSimpleState,
};

use crate::metrics::ModelMetrics;

pub use kserve::{InferRequest, InferResponse, RequestTensor, RequestedOutput, ResponseTensor};
pub use tensor::MAX_DYNAMIC_DIM;
pub use tensor::{Dtype, TensorSpec};
use tensor::{build_tensor, input_spec, response_tensor};

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

/// The most plans a model with dynamic dimensions keeps, one per set of
/// concrete input shapes, least recently used dropped first. Each plan holds
/// its own optimised copy of the weights, and the unplanned model is kept to
/// plan new shapes, so this bounds a dynamic model's memory at about
/// `MAX_PLANS + 1` times its weights plus one set of activations per kept
/// run state.
pub const MAX_PLANS: usize = 4;

/// One plan for one set of concrete input shapes, with the run states kept
/// between requests (at most one per permit): a fresh state per run
/// allocates every node's op state, a measurable share of a small model's
/// run time.
#[derive(Debug)]
struct Plan {
    runnable: Arc<TypedRunnableModel>,
    states: Mutex<Vec<TypedSimpleState>>,
}

impl Plan {
    fn new(runnable: Arc<TypedRunnableModel>) -> Arc<Self> {
        Arc::new(Self {
            runnable,
            states: Mutex::new(Vec::new()),
        })
    }

    /// One run on a kept state (or a new one when all are busy). A state
    /// goes back to the pool only after a run that succeeded; after a
    /// failure it is dropped, so nothing half-done carries over.
    fn run(&self, inputs: TVec<TValue>, max_states: usize) -> TractResult<TVec<TValue>> {
        let kept = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut state = match kept {
            Some(state) => state,
            None => self.runnable.spawn()?,
        };
        let outputs = state.run(inputs)?;
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() < max_states {
            states.push(state);
        }
        Ok(outputs)
    }
}

/// How a model is planned: once, when every input dimension is fixed (the
/// fast path); per concrete input shapes otherwise.
#[derive(Debug)]
enum Plans {
    Fixed(Arc<Plan>),
    Dynamic {
        source: Box<InferenceModel>,
        /// Most recently used last.
        cache: Mutex<Vec<(Shapes, Arc<Plan>)>>,
    },
}

/// The concrete shape of each input, in model input order.
type Shapes = Vec<Vec<usize>>;

/// Optimises and plans `source` with its inputs set to `shapes`.
fn plan_for_shapes(
    source: &InferenceModel,
    inputs: &[TensorSpec],
    shapes: &[Vec<usize>],
) -> TractResult<TypedModel> {
    let mut model = source.clone();
    for (ix, (spec, shape)) in inputs.iter().zip(shapes).enumerate() {
        model.set_input_fact(
            ix,
            InferenceFact::dt_shape(spec.dtype.tract(), shape.clone()),
        )?;
    }
    model.into_optimized()
}

/// A loaded, optimised and planned model. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Model {
    name: String,
    version: Option<String>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plans: Plans,
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
        Self::load_with_metrics(name, path, concurrency, None, None)
    }

    /// [`Model::load`], served as `version` (KServe v2 model versions),
    /// recording requests/errors/latency in `metrics`.
    pub fn load_with_metrics(
        name: &str,
        path: &Path,
        concurrency: Option<u32>,
        version: Option<String>,
        metrics: Option<ModelMetrics>,
    ) -> Result<Arc<Self>, InferenceError> {
        let load_err = |e: tract_onnx::prelude::TractError| InferenceError::Load {
            model: name.to_owned(),
            source: e.into(),
        };
        let source = tract_onnx::onnx().model_for_path(path).map_err(load_err)?;
        let n_inputs = source.input_outlets().map_err(load_err)?.len();
        let mut inputs = Vec::with_capacity(n_inputs);
        for ix in 0..n_inputs {
            let outlet = source.input_outlets().map_err(load_err)?[ix];
            let input_name = source.node(outlet.node).name.clone();
            let fact = source.input_fact(ix).map_err(load_err)?;
            inputs.push(input_spec(name, &input_name, fact)?);
        }
        // Every dynamic dimension at 1: the plan a fixed model keeps, and
        // the first one a dynamic model caches (loading proves it plans).
        let ones: Shapes = inputs.iter().map(TensorSpec::ones).collect();
        let typed = plan_for_shapes(&source, &inputs, &ones).map_err(load_err)?;
        let dynamic = !inputs.iter().all(TensorSpec::is_fixed);
        // Output shapes with their dynamic dimensions, from the model before
        // any input was pinned (when tract can type it so).
        let symbolic = if dynamic {
            source.clone().into_typed().ok()
        } else {
            None
        };
        let mut outputs = Vec::new();
        for (ix, outlet) in typed.output_outlets().map_err(load_err)?.iter().enumerate() {
            let fact = typed.outlet_fact(*outlet).map_err(load_err)?;
            // The graph's own output name: optimising may rename or remove
            // the node that computed it (an Identity, say).
            let out_name = source
                .output_outlets()
                .ok()
                .and_then(|o| o.get(ix).copied())
                .map(|o| {
                    source
                        .outlet_label(o)
                        .unwrap_or(&source.node(o.node).name)
                        .to_owned()
                })
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            let mut shape: Vec<i64> = fact
                .shape
                .as_concrete()
                .map(|s| s.iter().map(|d| i64::try_from(*d).unwrap_or(-1)).collect())
                .unwrap_or_default();
            if let Some(sym) = &symbolic
                && let Some(sym_fact) = sym
                    .output_outlets()
                    .ok()
                    .and_then(|o| o.get(ix).copied())
                    .and_then(|o| sym.outlet_fact(o).ok())
                && sym_fact.rank() == shape.len()
            {
                shape = sym_fact
                    .shape
                    .iter()
                    .map(|d| d.to_i64().unwrap_or(-1))
                    .collect();
            }
            let dtype = Dtype::from_tract(fact.datum_type).unwrap_or(Dtype::Fp32);
            outputs.push(TensorSpec {
                name: out_name,
                dtype,
                shape,
            });
        }
        let first =
            Plan::new(tract_onnx::prelude::IntoRunnable::into_runnable(typed).map_err(load_err)?);
        let plans = if dynamic {
            Plans::Dynamic {
                source: Box::new(source),
                cache: Mutex::new(vec![(ones, first)]),
            }
        } else {
            Plans::Fixed(first)
        };
        let permits = concurrency.unwrap_or(1).max(1) as usize;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            version,
            inputs,
            outputs,
            plans,
            permits: Arc::new(Semaphore::new(permits)),
            max_states: permits,
            metrics,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version served (the model's sha256 when loaded by the runtime).
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// How many plans are kept (1 for a fixed model).
    pub fn plans_cached(&self) -> usize {
        match &self.plans {
            Plans::Fixed(_) => 1,
            Plans::Dynamic { cache, .. } => cache.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
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
        let wanted = self.wanted_outputs(&req)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| InferenceError::Closed(self.name.clone()))?;
        let me = Arc::clone(self);
        let outputs = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.run_tensors(tensors, &wanted)
        })
        .await
        .map_err(|source| InferenceError::Join {
            model: self.name.clone(),
            source,
        })??;
        Ok(InferResponse {
            model_name: self.name.clone(),
            model_version: self.version.clone(),
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
        let res = self.validate(req).and_then(|tensors| {
            let wanted = self.wanted_outputs(req)?;
            self.run_tensors(tensors, &wanted)
        });
        self.record(started, res.is_ok());
        res
    }

    /// Checks a request against the model's inputs, matched by name, and
    /// builds the tensors in model input order.
    pub fn validate(&self, req: &InferRequest) -> Result<Vec<Tensor>, InferenceError> {
        let takes = || format!("model `{}` takes {}", self.name, describe(&self.inputs));
        for (i, given) in req.inputs.iter().enumerate() {
            if !self.inputs.iter().any(|s| s.name == given.name) {
                return Err(InferenceError::Invalid(format!(
                    "unknown input `{}`; {}",
                    given.name,
                    takes()
                )));
            }
            if req.inputs[..i].iter().any(|t| t.name == given.name) {
                return Err(InferenceError::Invalid(format!(
                    "input `{}` is given twice; {}",
                    given.name,
                    takes()
                )));
            }
        }
        let mut out = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let given = req
                .inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| {
                    InferenceError::Invalid(format!("missing input `{}`; {}", spec.name, takes()))
                })?;
            out.push(build_tensor(spec, given)?);
        }
        Ok(out)
    }

    /// The outputs to answer with, as (model output index, binary?): those
    /// the request names, in its order, or all.
    fn wanted_outputs(&self, req: &InferRequest) -> Result<Vec<(usize, bool)>, InferenceError> {
        let Some(asked) = &req.outputs else {
            return Ok((0..self.outputs.len())
                .map(|ix| (ix, kserve::wants_binary(req, &self.outputs[ix].name)))
                .collect());
        };
        asked
            .iter()
            .map(|o| {
                let ix = self
                    .outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| {
                        InferenceError::Invalid(format!(
                            "unknown output `{}`; model `{}` gives {}",
                            o.name,
                            self.name,
                            describe(&self.outputs)
                        ))
                    })?;
                Ok((ix, kserve::wants_binary(req, &o.name)))
            })
            .collect()
    }

    /// Runs input tensors (in model input order, of shapes the model takes)
    /// through the same plans requests use, on the calling thread, without
    /// validation or JSON conversion: the cost of the model alone (the
    /// benchmark against onnxruntime times this).
    pub fn run_plan(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let results = self
            .run_values(inputs.into_iter().map(|t| t.into_tvalue()).collect())
            .map_err(|e| InferenceError::Run {
                model: self.name.clone(),
                source: e.into(),
            })?;
        Ok(results.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// The plan for these input shapes: the fixed one, or a cached or new
    /// one for a dynamic model.
    fn plan(&self, inputs: &TVec<TValue>) -> TractResult<Arc<Plan>> {
        let (source, cache) = match &self.plans {
            Plans::Fixed(plan) => return Ok(Arc::clone(plan)),
            Plans::Dynamic { source, cache } => (source, cache),
        };
        let same = |k: &Shapes| {
            k.len() == inputs.len() && k.iter().zip(inputs).all(|(k, t)| k.as_slice() == t.shape())
        };
        {
            // Requests of one shape in a row (the common case) find their
            // plan last and move nothing.
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = cache.iter().rposition(|(k, _)| same(k)) {
                let plan = Arc::clone(&cache[pos].1);
                if pos + 1 != cache.len() {
                    let hit = cache.remove(pos);
                    cache.push(hit);
                }
                return Ok(plan);
            }
        }
        let key: Shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let started = Instant::now();
        let typed = plan_for_shapes(source, &self.inputs, &key)?;
        let plan = Plan::new(tract_onnx::prelude::IntoRunnable::into_runnable(typed)?);
        tracing::debug!(model = %self.name, shapes = ?key, elapsed = ?started.elapsed(), "planned for new input shapes");
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache.iter().any(|(k, _)| *k == key) {
            cache.push((key, Arc::clone(&plan)));
            while cache.len() > MAX_PLANS {
                cache.remove(0);
            }
        }
        Ok(plan)
    }

    fn run_values(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan(&inputs)?.run(inputs, self.max_states)
    }

    fn run_tensors(
        &self,
        tensors: Vec<Tensor>,
        wanted: &[(usize, bool)],
    ) -> Result<Vec<ResponseTensor>, InferenceError> {
        let run_err = |e: tract_onnx::prelude::TractError| InferenceError::Run {
            model: self.name.clone(),
            source: e.into(),
        };
        let started = Instant::now();
        let inputs = tensors.into_iter().map(|t| t.into_tvalue()).collect();
        let results = self.run_values(inputs).map_err(run_err)?;
        tracing::trace!(model = %self.name, elapsed = ?started.elapsed(), "inference run");
        let mut out = Vec::with_capacity(wanted.len());
        for &(ix, binary) in wanted {
            let name = self
                .outputs
                .get(ix)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| format!("output_{ix}"));
            let value = results.get(ix).ok_or_else(|| InferenceError::Run {
                model: self.name.clone(),
                source: format!("the plan gave no output #{ix}").into(),
            })?;
            out.push(response_tensor(name, value, binary).map_err(run_err)?);
        }
        Ok(out)
    }
}

fn describe(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("`{}` {}", s.name, s.describe()))
        .collect::<Vec<_>>()
        .join(", ")
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
