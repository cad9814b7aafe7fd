//! Typed per-CPU operations on raw storage. (Being written.)
