//! certkeeper-pki
