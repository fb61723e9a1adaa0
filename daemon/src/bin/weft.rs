//! `weft`: talk to a running `weftd` (status, links, datagrams, sessions) and run programs over
//! the overlay.

fn main() {
    std::process::exit(weft_daemon::cli::main());
}
