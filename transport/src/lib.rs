//! Sans-I/O transport state machines. Each takes events and a `now` and hands back what to
//! send and when to be woken; none reads a clock or touches a socket.

#![forbid(unsafe_code)]

pub mod arq;
pub mod cc;
pub mod marks;
pub mod session;
