//! certkeeper-server
