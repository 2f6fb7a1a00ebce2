//! certkeeper-store
