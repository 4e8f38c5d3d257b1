//! Pictures of what the model does: grids of images, and the growth of samples.
pub mod grid;
