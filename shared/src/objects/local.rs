//! Local-directory adapter (to be written).
