//! Workload runtimes the reconciler drives: Kubernetes (K3s) through
//! kube-rs. ONNX models are [`crate::inference`].

pub mod kube;
