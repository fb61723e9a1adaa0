//! End-to-end session tests over a simulated network (virtual clock, seeded).

mod sim;
mod transfer;
mod outcomes;
mod fuzz;
