//! The wire formats of the agent's local HTTP API that apps on the device
//! use: KServe v2 inference bodies ([`kserve`]) and posted events
//! ([`events`]). Kept apart from the agent so the fuzz targets of these
//! parsers build without the agent's runtime (kube, tract, MQTT).

pub mod events;
pub mod kserve;
