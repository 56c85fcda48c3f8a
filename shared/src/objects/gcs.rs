//! Cloud Storage adapter (to be written).
