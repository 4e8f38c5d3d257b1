//! Pictures of what the model does: image grids, growth and recovery sequences, GIFs.
pub mod anim;
pub mod grid;
pub mod growth;
pub mod plots;
pub mod report;
pub mod tsne;
