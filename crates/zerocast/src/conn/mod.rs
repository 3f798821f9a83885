//! A connection's state that is neither I/O nor application: cutting received bytes into
//! frames ([`recv`]), what is queued to be written and how a partial write is accounted
//! ([`outq`]), its deadlines ([`timing`]), and the WebSocket transport ([`ws`]). Sans-IO: nothing here makes a system call, so
//! every rule is unit-tested on plain bytes.

pub(crate) mod outq;
pub(crate) mod recv;
pub(crate) mod timing;
pub(crate) mod ws;
