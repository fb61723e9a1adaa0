//! The weft overlay node: a sans-I/O core (`overlay`) and its thin I/O layer.

pub mod args;
pub mod cli;
pub mod client;
pub mod config;
pub mod emulation;
pub mod io;
pub mod link_security;
pub mod logging;
pub mod metrics;
pub mod overlay;
pub mod sim;
pub mod streams;
