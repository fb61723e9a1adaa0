//! Group membership and multicast trees (filled by the multicast issue).
