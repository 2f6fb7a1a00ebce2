//! certkeeper-probe
