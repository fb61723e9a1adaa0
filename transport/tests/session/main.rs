//! End-to-end session tests over a simulated network (virtual clock, seeded).

mod behaviour;
mod bench;
mod fuzz;
mod options;
mod outcomes;
mod sim;
mod transfer;
mod util;
