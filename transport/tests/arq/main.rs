//! Behaviour of the hop-by-hop reliable link over a simulated channel, in virtual time.
//! Every check prints its seed; `ARQ_SEED=n cargo test -p weft-transport --test arq NAME`
//! replays one.

mod sim;
mod traffic;

mod bench;
mod chain;
mod delivery;
mod latency;
mod redundancy;
mod robustness;
mod throughput;
