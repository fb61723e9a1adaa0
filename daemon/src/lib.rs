//! The weft overlay node: a sans-I/O core (`overlay`) and its thin I/O layer.

pub mod overlay;
pub mod sim;
