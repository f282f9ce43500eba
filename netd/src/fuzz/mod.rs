//! Fuzzing on stable Rust (libFuzzer through `cargo fuzz` needs a nightly toolchain, which
//! these machines do not have): every parser of outside input is a target that gets its
//! corpus (`fuzz/corpus/TARGET/` in the repository), mutations of it and random bytes, and
//! must neither panic nor break its property. A failing input is shrunk (proptest's value
//! trees) and printed; once fixed it joins the corpus as a regression.
//!
//! `make test` runs a fixed-seed pass of each target; `make fuzz` runs each for
//! `HPK_FUZZ_SECS` seconds with fresh seeds and prints executions per target.

mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// Cases of the fixed-seed pass in `make test`.
const QUICK_CASES: u64 = 2000;
/// Steps spent shrinking a failing input.
const MAX_SHRINK_STEPS: usize = 10_000;
/// Longest generated input, beyond the corpus's own sizes.
const MAX_RANDOM: usize = 4096;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz target {target}: no corpus at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One edit of a corpus input.
#[derive(Clone, Debug)]
enum Edit {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    /// Copies a piece of the input elsewhere (repeats headers, lengths, fields).
    Splice(Index, Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..64).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ]
}

fn apply(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = input.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match e {
            Edit::Set(i, b) if len > 0 => {
                let i = i.index(len);
                input[i] = *b;
            }
            Edit::Insert(i, bytes) => {
                let i = at(i);
                input.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) if len > 0 => {
                let i = i.index(len);
                input.drain(i..(i + n).min(len));
            }
            Edit::Truncate(i) => input.truncate(at(i)),
            Edit::Splice(from, to, n) if len > 0 => {
                let from = from.index(len);
                let piece = input[from..(from + n).min(len)].to_vec();
                let to = at(to);
                input.splice(to..to, piece);
            }
            _ => {}
        }
    }
    input
}

/// Inputs for a target: mostly mutated corpus entries, some random bytes.
fn byte_inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..MAX_RANDOM);
    if seeds.is_empty() {
        return random.boxed();
    }
    let mutated = (select(seeds), proptest::collection::vec(edit(), 1..4))
        .prop_map(|(seed, edits)| apply(seed, &edits));
    prop_oneof![1 => random, 4 => mutated].boxed()
}

/// A value that tends to find the edges of a JSON field: wrong types, limits, odd text.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::from(i32::MAX) + 1),
            Just(i64::from(u32::MAX) + 1),
            Just(i64::MIN),
            any::<i64>()
        ]
        .prop_map(Value::from),
        Just(Value::from(1.5f64)),
        Just(Value::from(u64::MAX)),
        prop_oneof![
            Just(String::new()),
            // A file name's limit (255 bytes) and either side of it.
            Just("x".repeat(255)),
            Just("x".repeat(256)),
            Just("x".repeat(300)),
            Just("10.244.3.9".to_string()),
            Just("../../etc".to_string()),
            Just("a\u{0}b".to_string()),
            "[a-z0-9.:/_-]{0,20}"
        ]
        .prop_map(Value::String),
        Just(Value::Array(vec![])),
        Just(Value::Object(Default::default())),
    ]
}

#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
}

/// JSON pointers to every node of `v` (pre-order), the root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, c) in o {
                pointers(c, format!("{at}/{}", escape(k)), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn apply_json(mut v: Value, edits: &[JsonEdit]) -> Vec<u8> {
    for e in edits {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        match e {
            JsonEdit::Replace(i, new) => {
                if let Some(node) = v.pointer_mut(&all[i.index(all.len())]) {
                    *node = new.clone();
                }
            }
            JsonEdit::Remove(i) => {
                // Drops the chosen member from the object that holds it.
                let at = &all[i.index(all.len())];
                if let Some((parent, key)) = at.rsplit_once('/') {
                    let key = key.replace("~1", "/").replace("~0", "~");
                    if let Some(Value::Object(o)) = v.pointer_mut(parent) {
                        o.remove(&key);
                    }
                }
            }
        }
    }
    serde_json::to_vec(&v).expect("values serialize")
}

/// Inputs for a JSON target: corpus entries with fields replaced or removed, plus the
/// byte-level inputs (which mostly test the JSON reader itself).
fn json_inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let values: Vec<Value> = seeds
        .iter()
        .filter_map(|s| serde_json::from_slice(s).ok())
        .collect();
    if values.is_empty() {
        return byte_inputs(seeds);
    }
    let edit = prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
    ];
    let mutated = (select(values), proptest::collection::vec(edit, 1..4))
        .prop_map(|(v, edits)| apply_json(v, &edits));
    prop_oneof![3 => mutated, 1 => byte_inputs(seeds)].boxed()
}

/// How a target's inputs are made.
#[derive(Clone, Copy)]
pub(crate) enum Shape {
    Bytes,
    Json,
}

/// What `check(input)` did: `Ok(deep)` (whether the input got past the parser into the
/// property), or the panic message.
fn outcome(check: &impl Fn(&[u8]) -> bool, input: &[u8]) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| check(input))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn failure(check: &impl Fn(&[u8]) -> bool, input: &[u8]) -> Option<String> {
    outcome(check, input).err()
}

/// Keeps a failing input where a developer finds it.
fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let path = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    path
}

/// Runs target `name`: the corpus, then generated inputs until the budget is spent.
/// `check` panics when the property breaks and returns whether the input was accepted
/// (got past the parser): a target none of whose inputs get through tests nothing.
pub(crate) fn run(name: &str, shape: Shape, check: impl Fn(&[u8]) -> bool) {
    let seeds = corpus(name);
    for (i, seed) in seeds.iter().enumerate() {
        if let Some(msg) = failure(&check, seed) {
            panic!("fuzz target {name}: corpus entry {i} fails: {msg}");
        }
    }
    let budget = std::env::var("HPK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    // The quick pass is repeatable; a fuzzing run explores afresh each time.
    let mut runner = match budget {
        Some(_) => TestRunner::new(Config::default()),
        None => TestRunner::deterministic(),
    };
    let strategy = match shape {
        Shape::Bytes => byte_inputs(seeds.clone()),
        Shape::Json => json_inputs(seeds.clone()),
    };
    let started = Instant::now();
    let mut executions = seeds.len() as u64;
    let mut accepted = 0u64;
    loop {
        match budget {
            Some(b) if started.elapsed() >= b => break,
            None if executions >= QUICK_CASES => break,
            _ => {}
        }
        let mut tree = strategy.new_tree(&mut runner).expect("inputs generate");
        executions += 1;
        let mut msg = match outcome(&check, &tree.current()) {
            Ok(deep) => {
                accepted += u64::from(deep);
                continue;
            }
            Err(msg) => msg,
        };
        // Shrink as proptest does: simplify while it still fails, complicate when it
        // passes; the last failing input is the answer.
        let mut last = tree.current();
        if tree.simplify() {
            for _ in 0..MAX_SHRINK_STEPS {
                match failure(&check, &tree.current()) {
                    Some(m) => {
                        (msg, last) = (m, tree.current());
                        if !tree.simplify() {
                            break;
                        }
                    }
                    None if !tree.complicate() => break,
                    None => {}
                }
            }
        }
        let saved = save_failure(name, &last);
        panic!(
            "fuzz target {name}: an input of {} bytes fails after {executions} executions: {msg}; \
             it is in {} (once fixed, move it to fuzz/corpus/{name}/); first bytes: {:02x?}",
            last.len(),
            saved.display(),
            &last[..last.len().min(64)]
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {executions} executions in {secs:.1} s ({:.0}/s), {accepted} accepted, corpus {}, no failure",
        executions as f64 / secs.max(1e-9),
        seeds.len()
    );
    assert!(
        accepted * 100 >= executions,
        "fuzz target {name}: only {accepted} of {executions} inputs got past the parser"
    );
}
