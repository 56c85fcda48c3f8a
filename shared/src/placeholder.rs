//! Dry-run placeholders (to be written).
