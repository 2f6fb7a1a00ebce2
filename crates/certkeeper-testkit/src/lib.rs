//! certkeeper-testkit
