//! LD_PRELOAD shim (filled by the shim issue).
