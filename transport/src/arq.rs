//! Hop-by-hop reliable link (selective-repeat ARQ with congestion control and fair queueing).
