//! Maps the OS monotonic clock onto the core's virtual `Instant`, and gives the wall-clock
//! seed for link-state sequence numbers (so a restarted daemon's adverts outrank its old ones).

use weft_core::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Instant {
        // Start at one second so that "zero" never means "now" in the core.
        Instant::from_nanos(1_000_000_000 + self.origin.elapsed().as_nanos() as u64)
    }

    pub fn until(&self, deadline: Instant) -> std::time::Duration {
        deadline.saturating_since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch shifted left 16 bits: grows across restarts and leaves
/// room for 65 536 adverts per millisecond.
pub fn first_sequence() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    ms << 16
}
