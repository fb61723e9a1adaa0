//! Shared-memory SPSC rings between the shim and the daemon.
