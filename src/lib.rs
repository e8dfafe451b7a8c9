//! ls-token-refresher: keeps a Label Studio access token fresh for the workloads that call its API.
//!
//! Modules, lowest first (a module imports only from modules above it in this list):
//! - vocabulary: [`secret`], [`reason`], [`values`], [`clock`], [`token`], [`jwt`];
//! - operating state: [`metrics`], [`health`], [`notify`], [`telemetry`], [`memory`] (returning a
//!   burst's freed heap);
//! - concerns: [`schedule`] (when), [`exchange`] (Label Studio's API), [`cluster`] (Kubernetes
//!   client and Events), [`leader`] (leader election and the fencing check), [`source`] (where
//!   the PAT comes from), [`sink`] (where tokens go), [`rotate`] (replacing the PAT itself and
//!   writing it back, crash-safe);
//! - the loop: [`refresher`]; many loops' worth as a Kubernetes controller: [`controller`];
//! - serving: [`admin`] (health and metrics), [`proxy`] (the auth proxy), [`gate`] (the auth gate
//!   in front of an ML backend; uses the proxy's HTTP hygiene);
//! - commands: [`cli`] (the command line, composed from each concern's argument group), [`check`],
//!   [`cmd`] (wiring per command). `main.rs` only parses, starts telemetry and runs.
// Denied, not forbidden: `memory` allows it for its one call (`malloc_trim`).
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, clippy::dbg_macro, clippy::todo)]

pub mod clock;
pub mod jwt;
pub mod reason;
pub mod secret;
pub mod token;
pub mod values;

pub mod health;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod telemetry;

pub mod cluster;
pub mod exchange;
pub mod leader;
pub mod rotate;
pub mod schedule;
pub mod sink;
pub mod source;

pub mod refresher;

pub mod controller;

pub mod admin;
pub mod gate;
pub mod proxy;

pub mod check;
pub mod cli;
pub mod cmd;

#[cfg(test)]
mod skip;
