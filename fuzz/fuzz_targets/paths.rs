//! `shared::paths`: any name is refused or becomes the same bytes as plain
//! segments under the root; never a path that climbs out.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::paths::{join_under, relative_path};
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let relative = relative_path(name);
    let root = Path::new("/srv/archive");
    let joined = join_under(root, name);
    assert_eq!(relative.is_ok(), joined.is_ok(), "{name:?}");
    let (Ok(relative), Ok(joined)) = (relative, joined) else {
        return;
    };
    assert_eq!(relative.to_str(), Some(name), "{name:?} changed");
    assert!(
        relative
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{name:?} -> {}",
        relative.display()
    );
    assert!(joined.starts_with(root), "{name:?} -> {}", joined.display());
    assert!(
        !name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".."),
        "{name:?} was accepted"
    );
});
