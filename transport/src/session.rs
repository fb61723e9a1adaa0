//! End-to-end reliable sessions (a byte stream between overlay endpoints).
