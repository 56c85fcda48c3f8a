//! The fuzz targets in the test command: every target's body (the same
//! function cargo fuzz drives, `fuzz/src/lib.rs`) over its committed corpus,
//! then over inputs mutated from it for a bounded time, so that a target
//! that no longer compiles, or an input that crashes one, fails the tests.
//! The long runs with coverage feedback are `fuzz/run`'s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long each target runs on mutated inputs.
const MUTATING_FOR: Duration = Duration::from_millis(1500);

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    seeds.sort();
    seeds.into_iter().map(|(_, bytes)| bytes).collect()
}

/// A small deterministic generator (xorshift), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`, with `other` to splice from: a byte flipped,
/// inserted or removed, a run repeated, or a splice.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\0\n\r\\\"/.:{}[]%\x7f\xff";
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if at < data.len() => {
                data.remove(at);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(16)).min(data.len());
                let run = data[start..end].repeat(1 + rng.below(8));
                data.splice(at..at, run);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

/// Runs `body` on `input`; a panic fails the test with the input, as a
/// file cargo fuzz can replay (`fuzz/run --replay TARGET FILE`).
fn run_one(target: &str, body: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| body(input)).is_err() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/artifacts")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("crash-{:016x}", crc32c::crc32c(input)));
        std::fs::write(&file, input).unwrap();
        panic!(
            "{target} crashed on {} bytes, saved as {} (replay: fuzz/run --replay {target} FILE)",
            input.len(),
            file.display()
        );
    }
}

#[test]
fn every_fuzz_target_takes_its_corpus_and_mutations_of_it_without_a_crash() {
    let mut ran = Vec::new();
    for (target, body) in asmr_fuzz::TARGETS {
        let seeds = corpus(target);
        assert!(seeds.len() >= 10, "{target}: only {} seeds", seeds.len());
        for seed in &seeds {
            run_one(target, body, seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        let started = Instant::now();
        let mut mutated = 0u64;
        while started.elapsed() < MUTATING_FOR {
            let seed = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            run_one(target, body, &mutate(&mut rng, seed, other));
            mutated += 1;
        }
        ran.push(format!(
            "{target}: {} seeds, {mutated} mutations",
            seeds.len()
        ));
    }
    eprintln!("{}", ran.join("; "));
}

#[test]
fn a_crashing_target_fails_the_run_with_its_input_saved() {
    fn crashes_on_a_marker(data: &[u8]) {
        assert!(!data.starts_with(b"CRASH"), "found the marker");
    }
    run_one("self-test", crashes_on_a_marker, b"fine");
    let caught = std::panic::catch_unwind(|| {
        run_one("self-test", crashes_on_a_marker, b"CRASH here");
    });
    let message = caught.unwrap_err();
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("self-test crashed on 10 bytes"), "{text}");
    let saved = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/artifacts/self-test")
        .join(format!("crash-{:016x}", crc32c::crc32c(b"CRASH here")));
    assert_eq!(std::fs::read(&saved).unwrap(), b"CRASH here");
    std::fs::remove_dir_all(saved.parent().unwrap()).unwrap();
}
