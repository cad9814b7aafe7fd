//! Placeholder for the distributed reader/writer lock (same API as the real one).
#![allow(missing_docs)]

pub type RwLock<T> = std::sync::RwLock<T>;
