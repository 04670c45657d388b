//! Two inference figures for BENCHMARKS.md, in one invocation:
//!
//! - `kserve-batch`: every reference model through the agent's KServe v2
//!   endpoint (`kserve::router` over loopback HTTP, the agent's own code),
//!   binary tensors both ways, batch 1 against batch 8, per item. The models
//!   have a dynamic batch (MobileNetV2 is generated with `--dynamic-batch`
//!   for this). Batch 8 rows are checked against the batch 1 outputs of the
//!   same items.
//! - `mobilenetv2-profile`: where MobileNetV2's time goes in tract, node by
//!   node (`SimpleState::run_plan_with_eval`, timing every node of the plan
//!   the agent runs), by kind of layer (depthwise, pointwise, full conv, ...)
//!   and by tract op, beside onnxruntime's own per-node profile of the same
//!   model (`models/profile_ort.py`).
//!
//! ```text
//! cargo run --release -p edgefleet-tests --bin bench-kserve [-- --quick]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use edge_agent::inference::{Model, ModelRegistry, kserve};
use edgefleet_tests::bench::{generate_mobilenet, latency, repo, venv_python, weyl};
use serde_json::{Value, json};
use tract_onnx::prelude::{
    DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor, TractResult,
    TypedModel, tvec,
};
use tract_onnx::tract_core::model::SpecialOps;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// What the profile shows, what was tried and what moved the number (kept
/// with the code that measures it; the figures are in the tables above).
const PROFILE_NOTES: &str = "
What it shows:
- **Pointwise (1x1) convolutions** take about half of tract's time. tract lowers them to \
`OptMatMul` (the next Clip or residual Add fused in) and reaches a fraction of onnxruntime's \
GMAC/s, whose NCHWc convolutions keep the activations in a blocked channel layout between layers.
- **Depthwise convolutions** take about a third of tract's time for 7 % of the multiply-adds. On \
x86_64, tract's `DepthWiseConv` is generic Rust: `tract-core-0.23.9/src/ops/cnn/conv/depth_wise.rs`, \
`eval_t_generic` -> `process_zone_*`, one spatial zone walk per channel in NCHW; tract-linalg has no \
SIMD depthwise kernel for x86_64 (its only special path is aarch64 f16). It is slowest on the \
stride-2 layers and on the 7x7 planes with 576-960 channels, where per-channel loop overhead \
dominates a 49-element plane. Its Clip is a separate pass (`OptBinChain(Max+Min)`); onnxruntime \
fuses it.
- **The stem** (3x3, 3 input channels) runs as `LazyIm2col` + `OptMatMul` with a reduction of 27: \
a matrix product far too thin for the kernel, several times onnxruntime's time.
- **Batch 8** makes MobileNetV2 slower per item in tract (onnxruntime stays about level): the \
pointwise products cost more per item, and Clip and the residual Adds are no longer fused into \
them. The small models gain from batching because the request's fixed cost is shared (section \
above).

Tried, and what moved the number:
- Kernel selection (`TRACT_AVX512_FMA_UNITS=1|2`, `TRACT_CPU_ISA=-avx512f`), earlier: no change \
beyond noise (section `inference`).
- NHWC for the depthwise layers, which tract's kernel walks channel-contiguously: as one-node \
models the same shapes run faster in NHWC in sum (table above; most on the small, wide planes, \
slower on the 32-channel 112x112 one). Reaching it from an ONNX model does not work: fed NHWC \
through a transpose, tract's optimiser folds the transpose into the first convolution and turns \
back to channel-first at the next pointwise convolution, so one depthwise layer of 17 sees NHWC \
and the run is unchanged. Forcing it needs a layout pass in tract that keeps NHWC through the \
pointwise convolutions (as products over [H*W, C]).
- Batching: moves the small models (per-item cost down to about a fifth) and not MobileNetV2.
- Nothing tried in the agent moved MobileNetV2's ratio: the gap is in tract's kernels and layout \
choices, in the three places above, with the per-layer figures an upstream report needs.
";

const COMMAND: &str = "cargo run --release -p edgefleet-tests --bin bench-kserve";

struct Case {
    name: &'static str,
    path: PathBuf,
    range: (f32, f32),
    /// Timed requests per batch size.
    iters: usize,
}

/// One binary KServe request of `batch` items (weyl-v1, item `i` with seed
/// `i`): the body and its JSON header length.
fn binary_request(model: &Model, batch: usize, range: (f32, f32)) -> (Vec<u8>, usize) {
    let spec = &model.inputs()[0];
    let mut shape: Vec<usize> = spec
        .shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(1))
        .collect();
    shape[0] = batch;
    let per_item: usize = shape[1..].iter().product();
    let data: Vec<f32> = (0..batch as u64)
        .flat_map(|seed| weyl(per_item, seed, range.0, range.1))
        .collect();
    let header = json!({
        "inputs": [{
            "name": spec.name, "shape": shape, "datatype": "FP32",
            "parameters": {"binary_data_size": data.len() * 4},
        }],
        "parameters": {"binary_data_output": true},
    });
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let json_len = body.len();
    for x in &data {
        body.extend_from_slice(&x.to_le_bytes());
    }
    (body, json_len)
}

/// The first output of a binary response, as f32s.
fn first_output(header_len: usize, body: &[u8]) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let header: Value = serde_json::from_slice(&body[..header_len])?;
    let out = &header["outputs"][0];
    let shape: Vec<usize> = serde_json::from_value(out["shape"].clone())?;
    let size = out["parameters"]["binary_data_size"]
        .as_u64()
        .context("binary_data_size")? as usize;
    let bytes = &body[header_len..header_len + size];
    let v = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, v))
}

struct BatchRow {
    name: String,
    item_shape: Vec<i64>,
    b1: f64,
    b8: f64,
    bytes1: usize,
    bytes8: usize,
    /// p50 of `GET /v2/models/{name}/ready` on the same connection: the
    /// HTTP round trip without the model.
    rtt: f64,
}

async fn batch_row(http: &reqwest::Client, case: &Case) -> anyhow::Result<BatchRow> {
    let model = Model::load(case.name, &case.path, Some(1))?;
    let registry = ModelRegistry::new();
    registry.insert(&[case.name], Arc::clone(&model));
    // One server per model: the router holds the registry.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, kserve::router(registry)).await;
    });
    let url = format!("http://{addr}/v2/models/{}/infer", case.name);
    let send = |body: Vec<u8>, header_len: usize| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .header(kserve::HEADER_LENGTH, header_len)
                .body(body)
                .send()
                .await?;
            ensure!(r.status().is_success(), "infer: {}", r.status());
            let len: usize = r
                .headers()
                .get(kserve::HEADER_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .context("response header length")?;
            let bytes = r.bytes().await?;
            first_output(len, &bytes)
        }
    };
    let (body1, len1) = binary_request(&model, 1, case.range);
    let (body8, len8) = binary_request(&model, 8, case.range);
    // Batch 8's row i must equal batch 1 of item i (item 0 here).
    let (_, one) = send(body1.clone(), len1).await?;
    let (shape8, eight) = send(body8.clone(), len8).await?;
    ensure!(shape8[0] == 8, "batch 8 answered shape {shape8:?}");
    let diff = one
        .iter()
        .zip(&eight[..one.len()])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    ensure!(
        diff <= 1e-4,
        "{}: batch 8 row 0 differs from batch 1 by {diff}",
        case.name
    );
    let mut s1 = Vec::new();
    let mut s8 = Vec::new();
    for _round in 0..2 {
        for (body, len, out) in [(&body1, len1, &mut s1), (&body8, len8, &mut s8)] {
            for i in 0..case.iters / 2 + 2 {
                let started = Instant::now();
                send(body.clone(), len).await?;
                if i >= 2 {
                    out.push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    let ready = format!("http://{addr}/v2/models/{}/ready", case.name);
    let mut rtt = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let r = http.get(&ready).send().await?;
        ensure!(r.status().is_success(), "ready: {}", r.status());
        r.bytes().await?;
        rtt.push(started.elapsed().as_secs_f64() * 1e6);
    }
    server.abort();
    Ok(BatchRow {
        rtt: latency(rtt).p50,
        name: case.name.to_owned(),
        item_shape: model.inputs()[0].shape[1..].to_vec(),
        b1: latency(s1).p50,
        b8: latency(s8).p50,
        bytes1: body1.len(),
        bytes8: body8.len(),
    })
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.1} µs")
    }
}

/// One node of tract's plan: its name, its op's name and µs per run.
type NodeTime = (String, String, f64);

/// Per node of tract's plan of `path` (MobileNetV2) planned for `batch`,
/// and the whole run, µs per run.
fn tract_profile(path: &Path, iters: usize, batch: usize) -> TractResult<(Vec<NodeTime>, f64)> {
    let shape = vec![batch, 3, 224, 224];
    let plan = tract_onnx::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let mut state = plan.spawn()?;
    let n: usize = shape.iter().product();
    let input = Tensor::from_shape(&shape, &weyl(n, 0, -2.0, 2.0))?;
    let nodes = plan.model().nodes().len();
    let mut times = vec![0.0f64; nodes];
    for _ in 0..3 {
        state.run(tvec![input.clone().into_tvalue()])?;
    }
    let mut total = 0.0;
    for _ in 0..iters {
        let started = Instant::now();
        state.run_plan_with_eval(
            tvec![input.clone().into_tvalue()],
            |session, op_state, node, inputs| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(session, op_state, node, inputs);
                times[node.id] += t.elapsed().as_secs_f64() * 1e6;
                r
            },
        )?;
        total += started.elapsed().as_secs_f64() * 1e6;
    }
    let rows = plan
        .model()
        .nodes()
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.op().name().to_string(),
                times[n.id] / iters as f64,
            )
        })
        .collect();
    Ok((rows, total / iters as f64))
}

/// A conv's shape as profile_ort.py gives it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
struct ConvShape {
    channels: usize,
    out: usize,
    stride: usize,
}

/// One node of the ONNX graph as profile_ort.py describes it.
struct GraphNode {
    name: String,
    kind: String,
    /// The kind of the node its first input comes from.
    after: String,
    macs: f64,
    desc: String,
    conv: Option<ConvShape>,
}

/// The graph node whose name is the longest prefix of `name`.
fn node_of<'a>(name: &str, graph: &'a [GraphNode]) -> Option<&'a GraphNode> {
    graph
        .iter()
        .filter(|g| !g.name.is_empty() && name.starts_with(g.name.as_str()))
        .max_by_key(|g| g.name.len())
}

/// The layer kind of a tract node (that of the graph node whose name is the
/// longest prefix of its name) and what was fused into it. tract fuses a
/// conv's Clip or residual Add into the conv's matrix product and names the
/// result after the Clip or Add: such a node counts with the conv, as
/// onnxruntime's fused convs do.
fn kind_of(name: &str, op: &str, graph: &[GraphNode]) -> (String, &'static str) {
    let Some(g) = node_of(name, graph) else {
        return ("(tract's own: input, reshape, ...)".to_owned(), "");
    };
    let fused = match g.kind.as_str() {
        "Clip" => "Clip",
        "Add" => "residual Add",
        _ => "",
    };
    if op.starts_with("OptMatMul") && !fused.is_empty() && g.after.contains("conv") {
        (g.after.clone(), fused)
    } else {
        (g.kind.clone(), "")
    }
}

/// One 3x3 depthwise convolution (`channels`, `out` x `out` output,
/// `stride`, zero padding 1) as a one-node tract model in `format`,
/// optimised and planned the way the agent plans models: µs per run.
fn depthwise_alone(
    channels: usize,
    out: usize,
    stride: usize,
    format: DataFormat,
    iters: usize,
) -> TractResult<f64> {
    let side = out * stride;
    let shape: Vec<usize> = if format == DataFormat::NHWC {
        vec![1, side, side, channels]
    } else {
        vec![1, channels, side, side]
    };
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact(&shape))?;
    let k = model.add_const(
        "k",
        Tensor::from_shape(&[channels, 1, 3, 3], &weyl(channels * 9, 1, -1.0, 1.0))?,
    )?;
    let b = model.add_const("b", Tensor::zero::<f32>(&[channels])?)?;
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: format,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: channels,
            output_channels: channels,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: channels,
        q_params: None,
    };
    let y = model.wire_node("dw", conv, &[x, k, b])?;
    model.select_output_outlets(&y)?;
    let plan = model.into_optimized()?.into_runnable()?;
    let n: usize = shape.iter().product();
    let input = Tensor::from_shape(&shape, &weyl(n, 0, -2.0, 2.0))?;
    let mut state = plan.spawn()?;
    for _ in 0..3 {
        state.run(tvec![input.clone().into_tvalue()])?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        state.run(tvec![input.clone().into_tvalue()])?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latency(samples).p50)
}

/// MobileNetV2's depthwise shapes run alone by tract in NCHW (what the
/// ONNX model gives tract) and in NHWC (the layout tract's depthwise kernel
/// walks channel-contiguously).
fn layout_experiment(graph: &[GraphNode], iters: usize) -> anyhow::Result<String> {
    let mut s = String::from(
        "\nExperiment: each depthwise shape above as a one-node tract model (tract's own `Conv` \
         op, optimised into `DepthWiseConv`), in NCHW, the layout ONNX gives it, and in NHWC. \
         p50 of the runs:\n\n\
         | shape (channels, output, stride) | NCHW | NHWC | NCHW/NHWC |\n|---|---|---|---|\n",
    );
    // Each shape is measured once and counted as often as the model has it.
    let mut shapes: Vec<(ConvShape, usize)> = Vec::new();
    for shape in graph
        .iter()
        .filter(|g| g.kind == "depthwise conv")
        .filter_map(|g| g.conv)
    {
        match shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, count)) => *count += 1,
            None => shapes.push((shape, 1)),
        }
    }
    let (mut total_nchw, mut total_nhwc, mut layers) = (0.0, 0.0, 0);
    for &(
        ConvShape {
            channels: c,
            out: h,
            stride,
        },
        count,
    ) in &shapes
    {
        let nchw = depthwise_alone(c, h, stride, DataFormat::NCHW, iters)?;
        let nhwc = depthwise_alone(c, h, stride, DataFormat::NHWC, iters)?;
        total_nchw += nchw * count as f64;
        total_nhwc += nhwc * count as f64;
        layers += count;
        s.push_str(&format!(
            "| {c}, {h}x{h}, {stride} | {} | {} | {:.2}× |\n",
            us(nchw),
            us(nhwc),
            nchw / nhwc
        ));
    }
    s.push_str(&format!(
        "| **all {layers}, summed** | **{}** | **{}** | **{:.2}×** |\n",
        us(total_nchw),
        us(total_nhwc),
        total_nchw / total_nhwc
    ));
    Ok(s)
}

/// The whole model fed an NHWC input through a transpose (which tract's
/// optimiser folds into the first convolution): how far the layout goes,
/// and what it does to a run.
fn nhwc_input_experiment(path: &Path, iters: usize) -> anyhow::Result<String> {
    let typed = tract_onnx::onnx().model_for_path(path)?.into_typed()?;
    let nchw_plan = typed.clone().into_optimized()?.into_runnable()?;
    let nhwc_model = nhwc(typed)?;
    let (mut channels_last, mut depthwise) = (0, 0);
    for n in nhwc_model.nodes() {
        if n.op().name().starts_with("DepthWise") {
            depthwise += 1;
            let shape = &nhwc_model.outlet_fact(n.inputs[0])?.shape;
            // [N, H, W, C] with H = W: channels last.
            if shape.rank() == 4 && shape[1] == shape[2] {
                channels_last += 1;
            }
        }
    }
    let nhwc_plan = nhwc_model.into_runnable()?;
    let nchw_in = Tensor::from_shape(&[1, 3, 224, 224], &weyl(150_528, 0, -2.0, 2.0))?;
    let nhwc_in = nchw_in.clone().permute_axes(&[0, 2, 3, 1])?;
    let mut a = nchw_plan.spawn()?;
    let mut b = nhwc_plan.spawn()?;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut diff = 0.0f32;
    for i in 0..iters + 3 {
        let started = Instant::now();
        let oa = a.run(tvec![nchw_in.clone().into_tvalue()])?;
        let mid = Instant::now();
        let ob = b.run(tvec![nhwc_in.clone().into_tvalue()])?;
        let end = Instant::now();
        if i >= 3 {
            ta.push((mid - started).as_secs_f64() * 1e6);
            tb.push((end - mid).as_secs_f64() * 1e6);
        }
        let (va, vb) = (
            oa[0].to_plain_array_view::<f32>()?,
            ob[0].to_plain_array_view::<f32>()?,
        );
        diff = va
            .iter()
            .zip(vb.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(diff, f32::max);
    }
    ensure!(diff <= 1e-4, "NHWC-input plan differs by {diff}");
    let (pa, pb) = (latency(ta).p50, latency(tb).p50);
    Ok(format!(
        "\nExperiment: the whole model fed an NHWC input through a transpose, which tract's \
         optimiser folds into the first convolution. The layout reaches {channels_last} of the \
         {depthwise} depthwise convolutions: tract turns the activations back to channel-first at \
         the next pointwise convolution (a matrix product). Run p50: NCHW {}, NHWC input {} \
         ({:.2}×), outputs equal within {diff:.1e}.\n",
        us(pa),
        us(pb),
        pa / pb
    ))
}

/// onnxruntime's profile of `path` at `batch` (models/profile_ort.py).
fn ort_profile(python: &Path, path: &Path, iters: usize, batch: usize) -> anyhow::Result<Value> {
    let out = std::process::Command::new(python)
        .arg(repo().join("models/profile_ort.py"))
        .arg(path)
        .args(["--iters", &iters.to_string(), "--batch", &batch.to_string()])
        .output()
        .context("run models/profile_ort.py")?;
    ensure!(
        out.status.success(),
        "profile_ort.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// tract's node times summed by layer kind.
fn tract_by_kind(nodes: &[NodeTime], graph: &[GraphNode]) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    for (name, op, t) in nodes {
        *by_kind.entry(kind_of(name, op, graph).0).or_default() += t;
    }
    by_kind
}

/// Per layer kind, batch 8 per item against batch 1, in tract and in
/// onnxruntime (the dynamic-batch MobileNetV2 planned for batch 8).
fn batch_kinds(
    python: &Path,
    dynamic: &Path,
    iters: usize,
    graph: &[GraphNode],
    b1_tract: &BTreeMap<String, f64>,
    b1_ort: &Value,
) -> anyhow::Result<String> {
    let ort8 = ort_profile(python, dynamic, iters.div_ceil(4), 8)?;
    let (nodes8, _) = tract_profile(dynamic, iters.div_ceil(4), 8)?;
    let tract8 = tract_by_kind(&nodes8, graph);
    let run8: f64 = nodes8.iter().map(|n| n.2).sum();
    let b1_run: f64 = b1_tract.values().sum();
    let mut s = format!(
        "\nBatch 8 (the `--dynamic-batch` model planned for 8), per item, against batch 1 above. \
         Sum of node times per item: tract {} ({:.2}× its batch 1), onnxruntime {} ({:.2}× \
         its batch 1).\n\n\
         | layer kind | tract, per item | tract batch 8 / batch 1 | onnxruntime, per item | ORT batch 8 / batch 1 |\n\
         |---|---|---|---|---|\n",
        us(run8 / 8.0),
        run8 / 8.0 / b1_run.max(1e-9),
        us(ort8["ort_run_us"].as_f64().unwrap_or(0.0) / 8.0),
        ort8["ort_run_us"].as_f64().unwrap_or(0.0)
            / 8.0
            / b1_ort["ort_run_us"].as_f64().unwrap_or(1.0),
    );
    let mut kinds: Vec<&String> = tract8.keys().collect();
    kinds.sort_by(|a, b| tract8[*b].total_cmp(&tract8[*a]));
    for k in kinds.into_iter().filter(|k| tract8[*k] >= 8.0) {
        let t = tract8[k] / 8.0;
        let o = ort8["ort_us"][k.as_str()].as_f64().unwrap_or(0.0) / 8.0;
        let o1 = b1_ort["ort_us"][k.as_str()].as_f64().unwrap_or(0.0);
        let t1 = b1_tract.get(k).copied().unwrap_or(0.0);
        s.push_str(&format!(
            "| {k} | {} | {} | {} | {} |\n",
            us(t),
            if t1 > 0.0 {
                format!("{:.2}×", t / t1)
            } else {
                "–".into()
            },
            if o > 0.0 { us(o) } else { "(fused)".into() },
            if o > 0.0 && o1 > 0.0 {
                format!("{:.2}×", o / o1)
            } else {
                "–".into()
            },
        ));
    }
    Ok(s)
}

fn profile_section(
    python: &Path,
    path: &Path,
    dynamic: &Path,
    iters: usize,
) -> anyhow::Result<String> {
    let ort = ort_profile(python, path, iters, 1)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let graph: Vec<GraphNode> = ort["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| GraphNode {
            name: text(&n["name"]),
            kind: text(&n["kind"]),
            after: text(&n["after"]),
            macs: n["macs"].as_f64().unwrap_or(0.0),
            desc: text(&n["desc"]),
            conv: serde_json::from_value(n["conv"].clone()).ok(),
        })
        .collect();
    let (nodes, run_us) = tract_profile(path, iters, 1)?;
    let node_sum: f64 = nodes.iter().map(|n| n.2).sum();
    let by_kind = tract_by_kind(&nodes, &graph);
    let mut by_op: BTreeMap<(String, String, &str), (usize, f64)> = BTreeMap::new();
    for (name, op, t) in &nodes {
        let (kind, fused) = kind_of(name, op, &graph);
        let e = by_op.entry((kind, op.clone(), fused)).or_default();
        e.0 += 1;
        e.1 += t;
    }
    let ort_us = |k: &str| ort["ort_us"][k].as_f64().unwrap_or(0.0);
    let ort_run = ort["ort_run_us"].as_f64().unwrap_or(0.0);
    let mut kinds: Vec<&String> = by_kind.keys().collect();
    kinds.sort_by(|a, b| by_kind[*b].total_cmp(&by_kind[*a]));
    let mut s = format!(
        "MobileNetV2 (models/mobilenetv2, batch 1, BN folded), 1 thread, {iters} timed runs each. \
         tract-onnx: the plan the agent runs (`into_optimized()`), every node timed with \
         `SimpleState::run_plan_with_eval`. onnxruntime {}: its own profiler \
         (`enable_profiling`), node times mapped to graph nodes by name (it fuses Conv + Clip \
         and the residual Adds into its NCHWc convolutions, so their time counts with the conv).\n\n\
         Whole run: tract **{}**, onnxruntime **{}**: **{:.2}×**. Sum of tract's node times {} \
         (the rest is the plan's own bookkeeping).\n\n\
         | layer kind | multiply-adds | tract | share | tract GMAC/s | onnxruntime | share | ORT GMAC/s | tract/ORT |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        ort["version"].as_str().unwrap_or("?"),
        us(run_us),
        us(ort_run),
        run_us / ort_run.max(1e-9),
        us(node_sum),
    );
    let ort_nodes = ort["ort_nodes_us"].as_f64().unwrap_or(1.0).max(1e-9);
    let mut macs: BTreeMap<&str, f64> = BTreeMap::new();
    for g in &graph {
        *macs.entry(g.kind.as_str()).or_default() += g.macs;
    }
    let rate = |m: f64, t: f64| {
        if m > 0.0 && t > 0.0 {
            format!("{:.2}", m / t / 1e3)
        } else {
            "–".into()
        }
    };
    for k in kinds {
        let t = by_kind[k];
        let o = ort_us(k);
        let m = macs.get(k.as_str()).copied().unwrap_or(0.0);
        s.push_str(&format!(
            "| {k} | {} | {} | {:.1} % | {} | {} | {:.1} % | {} | {} |\n",
            if m > 0.0 {
                format!("{:.1} M", m / 1e6)
            } else {
                "–".into()
            },
            us(t),
            100.0 * t / node_sum,
            rate(m, t),
            if o > 0.0 { us(o) } else { "(fused)".into() },
            100.0 * o / ort_nodes,
            rate(m, o),
            if o > 0.0 {
                format!("{:.2}×", t / o)
            } else {
                "–".into()
            },
        ));
    }
    // Every depthwise conv node: the figures an upstream report needs.
    s.push_str(
        "\nEvery depthwise convolution (tract op `DepthWiseConv`, NCHW; onnxruntime's NCHWc \
         kernel with its Clip fused):\n\n\
         | node | weights -> output, stride | multiply-adds | tract | tract GMAC/s | onnxruntime | ORT GMAC/s | tract/ORT |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for g in graph.iter().filter(|g| g.kind == "depthwise conv") {
        let t: f64 = nodes
            .iter()
            .filter(|(n, op, _)| {
                op.starts_with("DepthWise") && node_of(n, &graph).is_some_and(|o| o.name == g.name)
            })
            .map(|n| n.2)
            .sum();
        let o = ort["ort_node_us"][&g.name].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| {} | {} | {:.2} M | {} | {} | {} | {} | {} |\n",
            g.name,
            g.desc,
            g.macs / 1e6,
            us(t),
            rate(g.macs, t),
            us(o),
            rate(g.macs, o),
            if o > 0.0 {
                format!("{:.1}×", t / o)
            } else {
                "–".into()
            },
        ));
    }
    s.push_str(&layout_experiment(&graph, iters)?);
    s.push_str(&nhwc_input_experiment(path, iters)?);
    s.push_str(&batch_kinds(
        python, dynamic, iters, &graph, &by_kind, &ort,
    )?);
    s.push_str(
        "\nBy tract op (what each layer kind became in tract's plan; ops under 1 µs left out):\n\n\
         | layer kind | tract op | fused into it | nodes | time per run |\n|---|---|---|---|---|\n",
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    for ((kind, op, fused), (count, t)) in ops.into_iter().filter(|o| o.1.1 >= 1.0) {
        s.push_str(&format!(
            "| {kind} | `{op}` | {fused} | {count} | {} |\n",
            us(t)
        ));
    }
    s.push_str(PROFILE_NOTES);
    Ok(s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let python = venv_python()?;
    let fixed = repo().join("models/mobilenetv2/mobilenetv2.onnx");
    let mobilenet_dynamic = repo().join("target/bench-models/mobilenetv2-dynamic.onnx");
    generate_mobilenet(&python, &fixed, false)?;
    generate_mobilenet(&python, &mobilenet_dynamic, true)?;
    let scale = if quick { 10 } else { 1 };
    let cases = [
        Case {
            name: "digits",
            path: repo().join("models/digits/digits.onnx"),
            range: (0.0, 1.0),
            iters: 2000 / scale,
        },
        Case {
            name: "vibration",
            path: repo().join("models/vibration/vibration.onnx"),
            range: (-2.0, 2.0),
            iters: 2000 / scale,
        },
        Case {
            name: "mobilenetv2",
            path: mobilenet_dynamic.clone(),
            range: (-2.0, 2.0),
            iters: 40 / scale,
        },
    ];
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for case in &cases {
        eprintln!("bench-kserve: {}", case.name);
        rows.push(batch_row(&http, case).await?);
    }
    let mut body = String::from(
        "Every reference model served by the agent's KServe v2 router (`kserve::router`, the \
         agent's own code) on loopback HTTP, one model instance (`concurrency: 1`), requests sent \
         one after another by reqwest; inputs and outputs as binary tensors \
         (`Inference-Header-Content-Length`, `binary_data_size`). Batch is the dynamic first \
         dimension (MobileNetV2 generated with `--dynamic-batch`); each batch size has its own \
         cached plan. p50 over 2 alternating rounds. Batch 8's first row is checked against \
         batch 1 of the same item (≤ 1e-4). \"HTTP round trip alone\" is `GET \
         /v2/models/{name}/ready` on the same client and server: the fixed cost a batch shares.\n\n\
         | model | item | batch 1: per item | batch 8: per request | batch 8: per item | \
         per-item cost, batch 8 / batch 1 | request bytes (1 / 8) | HTTP round trip alone |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        body.push_str(&format!(
            "| {} | {:?} | {} | {} | {} | **{:.2}** | {} / {} | {} |\n",
            r.name,
            r.item_shape,
            us(r.b1),
            us(r.b8),
            us(r.b8 / 8.0),
            r.b8 / 8.0 / r.b1,
            r.bytes1,
            r.bytes8,
            us(r.rtt),
        ));
    }
    println!("{body}");
    let path = edgefleet_tests::bench::write_section(
        "kserve-batch",
        "Inference serving: batch 1 vs batch 8 through the KServe endpoint",
        COMMAND,
        &body,
    )?;
    eprintln!(
        "bench-kserve: wrote section `kserve-batch` of {}",
        path.display()
    );

    let profile = profile_section(
        &python,
        &fixed,
        &mobilenet_dynamic,
        if quick { 5 } else { 30 },
    )?;
    println!("{profile}");
    edgefleet_tests::bench::write_section(
        "mobilenetv2-profile",
        "MobileNetV2: where the time goes, tract vs onnxruntime, per layer kind",
        COMMAND,
        &profile,
    )?;
    eprintln!("bench-kserve: wrote section `mobilenetv2-profile`");
    Ok(())
}

/// `model` (one NCHW input) fed through an NHWC source and a transpose, so
/// that tract's optimiser may carry the NHWC layout into the convolutions.
fn nhwc(model: TypedModel) -> TractResult<TypedModel> {
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    let mut model = model.into_decluttered()?;
    let input = model.input_outlets()?[0];
    let fact = model.outlet_fact(input)?.clone();
    let shape: Vec<usize> = fact
        .shape
        .as_concrete()
        .map(<[usize]>::to_vec)
        .unwrap_or_default();
    let succs = model.node(input.node).outputs[0].successors.clone();
    let src = model.add_source(
        "input_nhwc",
        f32::fact([shape[0], shape[2], shape[3], shape[1]]),
    )?;
    let moved = model.wire_node("input_nchw", AxisOp::Move(3, 1), &[src])?[0];
    for inlet in succs {
        model.add_edge(moved, inlet)?;
    }
    model.set_input_outlets(&[src])?;
    model.into_optimized()
}
