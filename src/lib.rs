//! `vnca`: Variational Neural Cellular Automata (Palm et al., ICLR 2022) on libtorch.
//!
//! Data flows `data -> dataset -> model (encoder -> NCA decoder) -> likelihood ->
//! objective -> train / eval -> figures`; `cli` maps the command line onto these.
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod damage_eval;
pub mod dataset;
pub mod device;
pub mod dist;
pub mod eval;
pub mod figures;
pub mod likelihood;
pub mod malloc;
pub mod model;
pub mod noise;
pub mod objective;
pub mod precision;
pub mod progress;
pub mod restore;
pub mod serve;
pub mod shipped;
pub mod tch_compat;
pub mod train;

/// The file-format readers live in their own crate (`crates/vnca-data`: no tensors, no
/// model, no config); `vnca::data::...` paths stay as they were.
pub use vnca_data as data;
