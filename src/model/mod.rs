//! The VNCA: a convolutional encoder q(z|x) and a neural-cellular-automaton decoder p(x|z)
//! that grows the image from z (PAPER.md 3). Parameter names follow the reference
//! PyTorch `state_dict`, so its checkpoints load unchanged.
pub mod encoder;
pub mod layers;
pub mod nca;
pub mod steps;
pub mod update_net;
pub mod vnca;

pub use vnca::Vnca;
