//! Densities: p(x|z) read from the final cell states, and the Gaussian q(z|x) and p(z).
pub mod bernoulli;
pub mod gaussian;
pub mod logistic_mixture;
