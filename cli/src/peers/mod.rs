//! Every implementation the report compares, one trait per kind of work.
//!
//! Each workload runs all implementations of its trait through the same
//! harness; the benchmark pads every instance with `CachePadded`, so no two
//! share a cache line with each other or with the harness.

mod alloc;
mod counter;
pub mod metrics;
mod rseq_raw;
mod rwlock;
mod slot;

pub use alloc::{AllocImpl, CpuLocalNew, PercpuAlloc, ThreadLocalNew};
pub use counter::{CounterImpl, OursCounter, SharedAtomic, StripedAtomic, ThreadLocalCounter};
pub use rseq_raw::RawRseq;
pub use rwlock::{NoLock, OursRwLock, ParkingLotRwLock, RwLockImpl, ShardedRwLock, StdRwLock};
pub use slot::{OursGet, OursLock, SlotImpl, ThreadLocalGetOr};

use serde::Serialize;

/// Whose implementation a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This library.
    Ours,
    /// The physical limit: what the hardware allows, not a usable library.
    Limit,
    /// What a user would use instead.
    Peer,
}

impl Role {
    /// The prefix rows of this role carry in the table.
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Ours => "ours: ",
            Role::Limit => "limit: ",
            Role::Peer => "",
        }
    }
}
