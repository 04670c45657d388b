//! Workload runtimes the reconciler drives: Kubernetes (K3s) through
//! kube-rs. Inference (issue 5) will live beside it.

pub mod kube;
