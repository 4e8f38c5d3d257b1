//! `vnca`: Variational Neural Cellular Automata (Palm et al., ICLR 2022) on libtorch.
//!
//! Data flows `data -> dataset -> model (encoder -> NCA decoder) -> likelihood ->
//! objective -> train / eval -> figures`; `cli` maps the command line onto these.
pub mod bench;
pub mod cli;
pub mod config;
pub mod damage_eval;
pub mod data;
pub mod dataset;
pub mod device;
pub mod dist;
pub mod eval;
pub mod figures;
pub mod likelihood;
pub mod model;
pub mod noise;
pub mod objective;
pub mod restore;
pub mod serve;
pub mod train;
