//! Cross-calls: run a function on a chosen CPU. (Being written.)
