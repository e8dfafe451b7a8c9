//! ls-token-refresher: keeps a Label Studio access token fresh for the workloads that call its API.
//!
//! Architecture (one module per concern):
//! - [`config`]: the command line / environment contract;
//! - [`source`]: where the PAT comes from (value, file, watched Secret);
//! - [`exchange`]: Label Studio's token API, with error classification into [`reason::Reason`];
//! - [`schedule`]: when to refresh, how to back off;
//! - [`refresher`]: the loop tying them together;
//! - [`sink`]: where tokens go (atomic directory, Secret via server-side apply);
//! - [`admin`], [`health`], [`metrics`], [`telemetry`]: operating it;
//! - [`cluster`]: Kubernetes client and Events; [`check`]: the diagnosis; [`app`]: wiring.

pub mod admin;
pub mod app;
pub mod check;
pub mod cluster;
pub mod config;
pub mod exchange;
pub mod health;
pub mod jwt;
pub mod metrics;
pub mod reason;
pub mod refresher;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod source;
pub mod telemetry;
