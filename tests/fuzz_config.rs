//! Property tests ("fuzzing" without a nightly toolchain) of the readers of the main
//! crate's own files: TOML configs and safetensors checkpoints. (The data-set readers
//! are fuzzed beside them, in `crates/vnca-data/tests/`.)
//!
//! On arbitrary text and bytes, on byte mutations of a preset and of real checkpoints,
//! and on structured edits (config lines, tensor dtypes, shapes, names, metadata):
//! * no panic;
//! * an error names the file it is about, on one line, and for a tensor that does not
//!   fit the model names that tensor;
//! * no single allocation much larger than the file, whatever length its header claims
//!   (a counting global allocator checks this);
//! * an accepted config writes back and re-reads identically.
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).
//! Failing inputs are recorded in `tests/fuzz_config.proptest-regressions` and replayed
//! first.
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use vnca::checkpoint::{self, CheckpointError, Loaded, Meta};
use vnca::config::Config;
use vnca::model::Vnca;
use vnca_fuzzing::alloc::Scope;
use vnca_fuzzing::mutate::{mutate, Dialect, Mutation, Weights};
use vnca_fuzzing::{check_error, input};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

// Single-threaded readers: count this thread's allocations, with the tests in parallel.
vnca_fuzzing::fuzz_binary!(scope: Scope::ThisThread, cases: DEFAULT_CASES);

// ---------------------------------------------------------------------------------------
// Mutations: TOML punctuation for configs, the little-endian u64 header length of
// safetensors.

const FILES: Dialect = Dialect {
    weights: Weights {
        flip: 3,
        set: 3,
        set_u16: 0,
        set_u32: 2,
        set_u64: 1,
        truncate: 2,
        insert: 2,
        remove: 2,
        duplicate: 1,
    },
    bytes: &[
        0, 1, 2, 9, 10, b' ', b'"', b'{', b'[', b'=', 0x7f, 0x80, 0xff,
    ],
    u16s: &[],
    u32s: &[0, 1, 2, 0x7fff_ffff, 0x8000_0000, u32::MAX],
    u64s: &[
        0,
        1,
        8,
        100_000_000,
        100_000_001,
        1 << 32,
        i64::MAX as u64,
        u64::MAX - 7,
        u64::MAX,
    ],
};

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    FILES.mutations()
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        9 => prop::sample::select(FILES.u64s),
        1 => 0u64..4096,
        1 => any::<u64>(),
    ]
}

// ---------------------------------------------------------------------------------------
// TOML configs.

fn preset_text() -> &'static str {
    vnca::config::PRESETS
        .iter()
        .find(|(n, _)| *n == "tiny-test")
        .unwrap()
        .1
}

/// Values to put where a valid one was: wrong types, out of range, huge, odd floats.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("99999999999999999999".to_string()),
        Just("1e400".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("0.5".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"doubling\"".to_string()),
        Just("\"é\\u00e9\"".to_string()),
        Just("[]".to_string()),
        Just("[1, 2, 3]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("".to_string()),
        Just("\"unterminated".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\\PC{0,12}",
    ]
}

#[derive(Clone, Debug)]
enum LineEdit {
    /// Replace the value of the `key = value` line at this index.
    Value(usize, String),
    Delete(usize),
    Duplicate(usize),
    /// Insert an arbitrary line before this index.
    Insert(usize, String),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        4 => (any::<usize>(), toml_value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
        1 => any::<usize>().prop_map(LineEdit::Delete),
        1 => any::<usize>().prop_map(LineEdit::Duplicate),
        1 => (any::<usize>(), prop_oneof![
            Just("zdim = 3".to_string()),
            Just("[model]".to_string()),
            Just("[[train]]".to_string()),
            Just("[extra]".to_string()),
            Just("model.z_dim = 4".to_string()),
            "\\PC{0,20}",
        ]).prop_map(|(i, l)| LineEdit::Insert(i, l)),
    ]
}

fn edit_lines(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            LineEdit::Value(i, v) => {
                if let Some(line) = lines.get_mut(i % n) {
                    if let Some((key, _)) = line.split_once('=') {
                        *line = format!("{key}= {v}");
                    }
                }
            }
            LineEdit::Delete(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
            }
            LineEdit::Duplicate(i) => {
                if let Some(line) = lines.get(i % n).cloned() {
                    lines.insert(i % n, line);
                }
            }
            LineEdit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
        }
    }
    lines.join("\n")
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    let origin = "fuzz-origin.toml";
    match Config::from_toml_str(text, origin) {
        Ok(cfg) => {
            // Whatever is accepted is written back and re-read identically.
            let again = cfg.to_toml();
            let back = Config::from_toml_str(&again, "again").unwrap();
            prop_assert_eq!(back.to_toml(), again);
            prop_assert!(cfg.n_doublings() >= 3);
        }
        Err(e) => {
            // One printable line: what the TOML parser quotes from the input is escaped.
            check_error(&e, &[origin])?;
            let msg = e.to_string();
            prop_assert!(!msg.contains("`: (line"), "error without a message: {msg}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_survives_arbitrary_text(text in "\\PC{0,400}") {
        check_config(&text)?;
    }

    #[test]
    fn config_survives_toml_like_text(lines in prop::collection::vec(
        (prop_oneof![Just("[model]"), Just("[data]"), Just("[train]"), Just("name"), Just("z_dim"),
                     Just("image_size"), Just("steps"), Just("a.b"), Just("\"q\""), Just("")],
         toml_value()),
        0..20,
    )) {
        let text: Vec<String> = lines
            .iter()
            .map(|(k, v)| if k.starts_with('[') { k.to_string() } else { format!("{k} = {v}") })
            .collect();
        check_config(&text.join("\n"))?;
    }

    #[test]
    fn config_survives_byte_mutations_of_a_preset(muts in mutations()) {
        let bytes = mutate(preset_text().as_bytes(), &muts, &[(0, 4096)]);
        check_config(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn config_survives_line_edits_of_a_preset(edits in prop::collection::vec(line_edit(), 1..4)) {
        check_config(&edit_lines(preset_text(), &edits))?;
    }
}

// ---------------------------------------------------------------------------------------
// Safetensors checkpoints.

fn fixture_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_weights.safetensors"),
        )
        .unwrap()
    })
}

fn tiny_config() -> Config {
    Config::preset("tiny-test").unwrap()
}

/// A full training checkpoint (weights, Adam moments, config and state metadata).
fn full_checkpoint_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let cfg = tiny_config();
        let model = Vnca::new(&cfg.model, tch::Device::Cpu, 3);
        let mut all: BTreeMap<String, tch::Tensor> = model.vs.variables().into_iter().collect();
        for (name, p) in model.vs.variables() {
            all.insert(format!("adam.m.{name}"), p.zeros_like());
        }
        let meta = Meta {
            config: Some(cfg.to_toml()),
            state: Some(r#"{"step":4,"adam_step":4,"best_val":null}"#.into()),
        };
        checkpoint::to_bytes(&all, &meta)
    })
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// `Loaded::read`, then `load_model` into the tiny model when the file reads. Returns the
/// `load_model` error, if any, for the caller to inspect.
fn check_checkpoint(bytes: &[u8]) -> Result<Option<CheckpointError>, TestCaseError> {
    let f = input("fuzz-input.safetensors", bytes);
    let (read, peak) = largest_allocation(|| Loaded::read(&f.path));
    prop_assert!(
        peak <= 4 * bytes.len() + (1 << 20),
        "a single allocation of {peak} bytes reading a {}-byte checkpoint",
        bytes.len()
    );
    let ck = match read {
        Ok(ck) => ck,
        Err(e) => {
            check_error(&e, &[&f.path])?;
            prop_assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e:?}");
            return Ok(None);
        }
    };
    let _ = ck.names();
    let model = Vnca::new(&tiny_config().model, tch::Device::Cpu, 0);
    match ck.load_model(&model) {
        Ok(()) => Ok(None),
        Err(e) => {
            check_error(&e, &[&f.path])?;
            Ok(Some(e))
        }
    }
}

/// The tensor an error is about.
fn tensor_named(e: &CheckpointError) -> Option<&str> {
    match e {
        CheckpointError::Missing { name, .. }
        | CheckpointError::Shape { name, .. }
        | CheckpointError::Dtype { name, .. }
        | CheckpointError::Unexpected { name, .. } => Some(name),
        _ => None,
    }
}

/// One tensor of a safetensors file, decoded, for structured edits.
#[derive(Clone)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn split_safetensors(bytes: &[u8]) -> (Vec<Entry>, Option<serde_json::Value>) {
    let end = header_len(bytes);
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).unwrap();
    let mut entries = Vec::new();
    let mut meta = None;
    for (name, v) in header {
        if name == "__metadata__" {
            meta = Some(v);
            continue;
        }
        let offs: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
        entries.push(Entry {
            name,
            dtype: v["dtype"].as_str().unwrap().to_string(),
            shape: serde_json::from_value(v["shape"].clone()).unwrap(),
            data: bytes[end + offs[0]..end + offs[1]].to_vec(),
        });
    }
    (entries, meta)
}

fn join_safetensors(entries: &[Entry], meta: Option<serde_json::Value>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for e in entries {
        let start = data.len();
        data.extend_from_slice(&e.data);
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [start, data.len()]}),
        );
    }
    if let Some(m) = meta {
        header.insert("__metadata__".into(), m);
    }
    let h = serde_json::to_vec(&header).unwrap();
    [&(h.len() as u64).to_le_bytes()[..], &h, &data].concat()
}

fn dtype_size(d: &str) -> usize {
    match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

#[derive(Clone, Debug)]
enum TensorEdit {
    Dtype(usize, &'static str),
    Shape(usize, Vec<u64>),
    Drop(usize),
    Rename(usize, String),
    Extra(String, Vec<u64>),
    /// Metadata that is not a string-to-string map, or odd strings.
    Metadata(serde_json::Value),
}

fn tensor_edit() -> impl Strategy<Value = TensorEdit> {
    let dims = prop::collection::vec(0u64..6, 0..5);
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![
                Just("F16"),
                Just("BF16"),
                Just("F64"),
                Just("I64"),
                Just("I32"),
                Just("U8"),
                Just("BOOL"),
                Just("I8")
            ]
        )
            .prop_map(|(i, d)| TensorEdit::Dtype(i, d)),
        (any::<usize>(), dims.clone()).prop_map(|(i, s)| TensorEdit::Shape(i, s)),
        any::<usize>().prop_map(TensorEdit::Drop),
        (
            any::<usize>(),
            prop_oneof![
                Just("encoder.99.weight".to_string()),
                Just("adam.m.x".to_string()),
                Just("".to_string()),
                "[a-z.0-9]{1,20}"
            ]
        )
            .prop_map(|(i, n)| TensorEdit::Rename(i, n)),
        (
            prop_oneof![
                Just("nca.extra".to_string()),
                Just("adam.v.extra".to_string()),
                "\\PC{1,10}"
            ],
            dims
        )
            .prop_map(|(n, s)| TensorEdit::Extra(n, s)),
        prop_oneof![
            Just(serde_json::json!({"format": 1})),
            Just(serde_json::json!([])),
            Just(serde_json::json!({"state": "{not json", "config": "[[["})),
            Just(serde_json::json!(null)),
        ]
        .prop_map(TensorEdit::Metadata),
    ]
}

/// Applies `edits` and returns the new file with the names of the tensors touched.
fn edit_tensors(bytes: &[u8], edits: &[TensorEdit]) -> (Vec<u8>, Vec<String>) {
    let (mut entries, mut meta) = split_safetensors(bytes);
    let mut touched = Vec::new();
    for e in edits {
        let n = entries.len().max(1);
        match e {
            TensorEdit::Dtype(i, d) => {
                if let Some(t) = entries.get_mut(i % n) {
                    let numel: u64 = t.shape.iter().product();
                    t.dtype = d.to_string();
                    t.data.resize(numel as usize * dtype_size(d), 0);
                    touched.push(t.name.clone());
                }
            }
            TensorEdit::Shape(i, s) => {
                if let Some(t) = entries.get_mut(i % n) {
                    let numel: u64 = s.iter().product();
                    t.shape = s.clone();
                    t.data.resize(numel as usize * dtype_size(&t.dtype), 0);
                    touched.push(t.name.clone());
                }
            }
            TensorEdit::Drop(i) => {
                if !entries.is_empty() {
                    touched.push(entries.remove(i % n).name);
                }
            }
            TensorEdit::Rename(i, name) => {
                if let Some(t) = entries.get_mut(i % n) {
                    touched.push(std::mem::replace(&mut t.name, name.clone()));
                    touched.push(name.clone());
                }
            }
            TensorEdit::Extra(name, s) => {
                let numel: u64 = s.iter().product();
                entries.push(Entry {
                    name: name.clone(),
                    dtype: "F32".into(),
                    shape: s.clone(),
                    data: vec![0; numel as usize * 4],
                });
                touched.push(name.clone());
            }
            TensorEdit::Metadata(m) => meta = Some(m.clone()),
        }
    }
    // Names must stay unique for the file to be a fair test of `load_model`.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.name.clone()));
    (join_safetensors(&entries, meta), touched)
}

/// JSON-ish header text: fragments of real headers in random order.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        Just(&b"{"[..]),
        Just(&b"}"[..]),
        Just(&b"["[..]),
        Just(&b"]"[..]),
        Just(&b","[..]),
        Just(&b":"[..]),
        Just(&b"\"encoder.0.bias\""[..]),
        Just(&b"\"__metadata__\""[..]),
        Just(&b"\"dtype\""[..]),
        Just(&b"\"F32\""[..]),
        Just(&b"\"shape\""[..]),
        Just(&b"\"data_offsets\""[..]),
        Just(&b"0"[..]),
        Just(&b"4"[..]),
        Just(&b"16"[..]),
        Just(&b"-1"[..]),
        Just(&b"18446744073709551615"[..]),
        Just(&b"1e999"[..]),
        Just(&b"null"[..]),
        Just(&b" "[..]),
        Just(&b"\"\\u0000\""[..]),
        Just(&b"\xff"[..]),
    ];
    prop::collection::vec(frag, 0..80).prop_map(|f| f.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn checkpoint_survives_mutations_of_the_fixture(muts in mutations()) {
        let bytes = fixture_bytes();
        check_checkpoint(&mutate(bytes, &muts, &[(0, header_len(bytes))]))?;
    }

    #[test]
    fn checkpoint_survives_mutations_of_a_full_checkpoint(muts in mutations()) {
        let bytes = full_checkpoint_bytes();
        check_checkpoint(&mutate(bytes, &muts, &[(0, header_len(bytes))]))?;
    }

    #[test]
    fn checkpoint_load_names_the_wrong_tensor(edits in prop::collection::vec(tensor_edit(), 1..3)) {
        let (bytes, touched) = edit_tensors(fixture_bytes(), &edits);
        if let Some(e) = check_checkpoint(&bytes)? {
            let name = tensor_named(&e);
            prop_assert!(
                name.is_some_and(|n| touched.iter().any(|t| t == n)),
                "error is not about an edited tensor {touched:?}: {e}"
            );
        }
    }

    #[test]
    fn safetensors_header_survives_any_length_and_json(
        len in interesting_u64(),
        exact in any::<bool>(),
        body in jsonish(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let len = if exact { body.len() as u64 } else { len };
        let bytes = [&len.to_le_bytes()[..], &body, &tail].concat();
        check_checkpoint(&bytes)?;
    }
}

#[test]
fn unmodified_checkpoints_load() {
    for bytes in [fixture_bytes(), full_checkpoint_bytes()] {
        let f = input("ok.safetensors", bytes);
        let ck = Loaded::read(&f.path).unwrap();
        let model = Vnca::new(&tiny_config().model, tch::Device::Cpu, 0);
        ck.load_model(&model).unwrap();
        // The re-serialisation the structured edits use is faithful.
        let (entries, meta) = split_safetensors(bytes);
        assert!(check_checkpoint(&join_safetensors(&entries, meta))
            .unwrap()
            .is_none());
    }
}
