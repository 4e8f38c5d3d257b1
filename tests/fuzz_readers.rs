//! Property tests ("fuzzing" without a nightly toolchain) of every reader of untrusted
//! bytes: MNIST IDX (raw and gzipped), Larochelle `.amat` text, our packed binarized
//! MNIST, TOML configs and safetensors checkpoints.
//!
//! For every reader, on arbitrary bytes and on mutations (bit flips, overwritten bytes and
//! header words, truncation, insertion, deletion, duplication) of a valid file:
//! * it never panics;
//! * an error names the file it is about;
//! * no single allocation is much larger than the input, however large the lengths a
//!   corrupt header claims (a counting global allocator checks this);
//! * whatever it accepts satisfies the format's invariants;
//! * valid inputs round-trip through the matching writer.
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).
//! Failing inputs are recorded in `tests/fuzz_readers.proptest-regressions` and replayed first.
mod fuzzing;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vnca::checkpoint::{self, CheckpointError, Loaded, Meta};
use vnca::config::Config;
use vnca::data::{self, BinarizedMnist, ImageSet};
use vnca::model::Vnca;

// ---------------------------------------------------------------------------------------
// Allocation guard: the largest single allocation request made by this thread.

struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Runs `f` and returns its result with the largest single allocation it requested.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(|p| p.get()))
}

/// Generous for our inputs (at most tens of KB, inflating to at most a few MB), and far
/// below what any corrupt length field in them claims (up to 2^64).
const ALLOC_LIMIT: usize = 64 << 20;

// ---------------------------------------------------------------------------------------
// Configuration.

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

fn config() -> ProptestConfig {
    fuzzing::config(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------------------
// Mutations of valid files.

#[derive(Clone, Debug)]
enum Mutation {
    /// Flip bit `bit` of the byte at `at`.
    Flip { at: Pos, bit: u8 },
    /// Overwrite the byte at `at`.
    Set { at: Pos, byte: u8 },
    /// Overwrite 4 bytes at `at` with a big-endian u32 (IDX and packed header fields).
    SetU32Be { at: Pos, value: u32 },
    /// Overwrite 8 bytes at `at` with a little-endian u64 (the safetensors header length).
    SetU64Le { at: Pos, value: u64 },
    /// Keep only the first `len` bytes.
    Truncate { len: Pos },
    /// Insert bytes at `at`.
    Insert { at: Pos, bytes: Vec<u8> },
    /// Remove up to `len` bytes from `at`.
    Remove { at: Pos, len: usize },
    /// Repeat up to `len` bytes from `at` right after them.
    Duplicate { at: Pos, len: usize },
}

/// A position in the file: `hot` ones fall in the first bytes (headers, where mutations
/// are most interesting), the others anywhere.
#[derive(Clone, Copy, Debug)]
struct Pos {
    raw: usize,
    hot: bool,
}

impl Pos {
    fn resolve(self, len: usize, hot_len: usize) -> usize {
        let range = if self.hot { hot_len.min(len) } else { len };
        self.raw % (range + 1)
    }
}

fn pos() -> impl Strategy<Value = Pos> {
    (any::<usize>(), any::<bool>()).prop_map(|(raw, hot)| Pos { raw, hot })
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(7),
        Just(28),
        Just(0x0000_0801),
        Just(0x0000_0803),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(8),
        Just(100_000_000),
        Just(100_000_001),
        Just(1 << 32),
        Just(i64::MAX as u64),
        Just(u64::MAX - 7),
        Just(u64::MAX),
        0u64..4096,
        any::<u64>(),
    ]
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(1),
        Just(2),
        Just(9),
        Just(10),
        Just(b'\n'),
        Just(b' '),
        Just(b'"'),
        Just(b'{'),
        Just(0x7f),
        Just(0x80),
        Just(0xff),
        any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (pos(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        3 => (pos(), interesting_byte()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        2 => (pos(), interesting_u32()).prop_map(|(at, value)| Mutation::SetU32Be { at, value }),
        1 => (pos(), interesting_u64()).prop_map(|(at, value)| Mutation::SetU64Le { at, value }),
        2 => pos().prop_map(|len| Mutation::Truncate { len }),
        2 => (pos(), prop::collection::vec(interesting_byte(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (pos(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (pos(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// Applies `muts` in order; `hot_len` is the size of the header region.
fn mutate(data: &[u8], muts: &[Mutation], hot_len: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    for m in muts {
        let len = d.len();
        match m {
            Mutation::Flip { at, bit } => {
                if len > 0 {
                    let i = at.resolve(len - 1, hot_len);
                    d[i] ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => {
                if len > 0 {
                    let i = at.resolve(len - 1, hot_len);
                    d[i] = *byte;
                }
            }
            Mutation::SetU32Be { at, value } => {
                if len >= 4 {
                    let i = at.resolve(len - 4, hot_len);
                    d[i..i + 4].copy_from_slice(&value.to_be_bytes());
                }
            }
            Mutation::SetU64Le { at, value } => {
                if len >= 8 {
                    let i = at.resolve(len - 8, hot_len);
                    d[i..i + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
            Mutation::Truncate { len: keep } => {
                let keep = keep.resolve(len, hot_len);
                d.truncate(keep);
            }
            Mutation::Insert { at, bytes } => {
                let i = at.resolve(len, hot_len);
                d.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove { at, len: n } => {
                let i = at.resolve(len, hot_len);
                let end = (i + n).min(len);
                d.drain(i..end);
            }
            Mutation::Duplicate { at, len: n } => {
                let i = at.resolve(len, hot_len);
                let end = (i + n).min(len);
                let copy = d[i..end].to_vec();
                d.splice(end..end, copy);
            }
        }
    }
    d
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// How a file reaches the reader: as is, gzipped, or gzipped and then corrupted.
#[derive(Clone, Copy, Debug)]
enum Wrap {
    Plain,
    Gzip,
    /// Mutations applied to the gzip stream instead of its content.
    MutatedGzip,
}

fn wrap() -> impl Strategy<Value = Wrap> {
    prop_oneof![Just(Wrap::Plain), Just(Wrap::Gzip), Just(Wrap::MutatedGzip)]
}

/// The bytes of `valid` mutated by `muts` and delivered as `wrap` says.
fn corrupt(valid: &[u8], muts: &[Mutation], hot_len: usize, wrap: Wrap) -> Vec<u8> {
    match wrap {
        Wrap::Plain => mutate(valid, muts, hot_len),
        Wrap::Gzip => gz(&mutate(valid, muts, hot_len)),
        // Gzip's own header is 10 bytes; the deflate data right after it is the hot part.
        Wrap::MutatedGzip => mutate(&gz(valid), muts, 64),
    }
}

// ---------------------------------------------------------------------------------------
// Files and checks shared by the properties.

/// A temporary directory holding one input file, named so errors can be checked for it.
struct Input {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn input(name: &str, bytes: &[u8]) -> Input {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    Input { _dir: dir, path }
}

/// The error names `path`, fits on one line, and the read stayed within [`ALLOC_LIMIT`].
fn check_error(e: &dyn std::fmt::Display, path: &Path) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file `{}`: {msg}",
        path.display()
    );
    prop_assert!(!msg.contains('\n'), "error spans several lines: {msg}");
    Ok(())
}

fn check_alloc(peak: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        peak <= ALLOC_LIMIT,
        "a single allocation of {peak} bytes while reading a small file"
    );
    Ok(())
}

/// Invariants of any image set a reader returns.
fn check_set(s: &ImageSet, binary: bool) -> Result<(), TestCaseError> {
    prop_assert!(s.rows > 0 && s.cols > 0, "{}x{}", s.rows, s.cols);
    prop_assert_eq!(s.images.len(), s.len() * s.rows * s.cols);
    if binary {
        prop_assert!(s.images.iter().all(|&p| p <= 1), "non-binary pixel");
    }
    if let Some(l) = &s.labels {
        prop_assert_eq!(l.len(), s.len());
        prop_assert!(l.iter().all(|&d| d <= 9), "label above 9");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// IDX.

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [data::idx::IMAGES_MAGIC, n, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = data::idx::LABELS_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

/// A valid IDX image file with its decoded content.
fn valid_idx_images() -> impl Strategy<Value = (Vec<u8>, ImageSet)> {
    (0usize..5, 1usize..7, 1usize..7)
        .prop_flat_map(|(n, r, c)| {
            (
                Just((n, r, c)),
                prop::collection::vec(any::<u8>(), n * r * c),
            )
        })
        .prop_map(|((n, r, c), px)| {
            let bytes = idx_images(n as u32, r as u32, c as u32, &px);
            let set = ImageSet {
                images: px,
                labels: None,
                rows: r,
                cols: c,
            };
            (bytes, set)
        })
}

/// Both IDX readers on the same bytes: no panic, errors name the file, bounded memory.
fn check_idx(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = input("fuzz-input-idx3-ubyte", bytes);
    let (images, peak) = largest_allocation(|| data::idx::read_images(&f.path));
    check_alloc(peak)?;
    match images {
        Ok(s) => check_set(&s, false)?,
        Err(e) => check_error(&e, &f.path)?,
    }
    let (labels, peak) = largest_allocation(|| data::idx::read_labels(&f.path));
    check_alloc(peak)?;
    match labels {
        Ok(l) => prop_assert!(l.iter().all(|&d| d <= 9)),
        Err(e) => check_error(&e, &f.path)?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn idx_readers_survive_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..256),
        header in prop_oneof![
            Just(Vec::new()),
            Just(data::idx::IMAGES_MAGIC.to_be_bytes().to_vec()),
            Just(data::idx::LABELS_MAGIC.to_be_bytes().to_vec()),
        ],
        gzipped in any::<bool>(),
    ) {
        let raw = [header, body].concat();
        check_idx(&if gzipped { gz(&raw) } else { raw })?;
    }

    #[test]
    fn idx_images_survive_mutations(
        (valid, _) in valid_idx_images(),
        muts in mutations(),
        wrap in wrap(),
    ) {
        check_idx(&corrupt(&valid, &muts, 16, wrap))?;
    }

    #[test]
    fn idx_labels_survive_mutations(
        labels in prop::collection::vec(0u8..10, 0..40),
        muts in mutations(),
        wrap in wrap(),
    ) {
        check_idx(&corrupt(&idx_labels(&labels), &muts, 8, wrap))?;
    }

    #[test]
    fn idx_valid_files_read_back((valid, set) in valid_idx_images(), gzipped in any::<bool>(),
                                 labels in prop::collection::vec(0u8..10, 0..40)) {
        let f = input("valid-idx3-ubyte", &if gzipped { gz(&valid) } else { valid });
        prop_assert_eq!(data::idx::read_images(&f.path).unwrap(), set);
        let l = input("valid-idx1-ubyte", &if gzipped { gz(&idx_labels(&labels)) } else { idx_labels(&labels) });
        prop_assert_eq!(data::idx::read_labels(&l.path).unwrap(), labels);
    }
}

// ---------------------------------------------------------------------------------------
// Larochelle .amat text.

/// 1 to 3 random 28x28 binary images.
fn binary_images(max: usize) -> impl Strategy<Value = ImageSet> {
    (1..=max)
        .prop_flat_map(|n| prop::collection::vec(0u8..2, n * 784))
        .prop_map(|images| ImageSet {
            images,
            labels: None,
            rows: 28,
            cols: 28,
        })
}

fn amat_text(set: &ImageSet) -> Vec<u8> {
    let mut out = Vec::new();
    for img in set.images.chunks(784) {
        let line: Vec<String> = img.iter().map(|p| p.to_string()).collect();
        out.extend_from_slice(line.join(" ").as_bytes());
        out.push(b'\n');
    }
    out
}

/// Text made of the tokens an `.amat` file has, and of the mistakes it could have.
fn amat_like_text() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        8 => Just(&b"0 "[..]),
        8 => Just(&b"1 "[..]),
        1 => Just(&b"\n"[..]),
        1 => Just(&b"\r\n"[..]),
        1 => Just(&b"\t"[..]),
        1 => Just(&b"0.0 "[..]),
        1 => Just(&b"2 "[..]),
        1 => Just(&b"-1 "[..]),
        1 => Just(&b"\xff\xfe "[..]),
        1 => Just(&b"\xc3\xa9"[..]),
    ];
    prop::collection::vec(token, 0..2000).prop_map(|t| t.concat())
}

fn check_amat(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = input("fuzz-input.amat", bytes);
    let (from_file, peak) = largest_allocation(|| data::amat::read_amat(&f.path));
    check_alloc(peak)?;
    let in_memory = data::amat::parse_amat(bytes, &f.path);
    match (from_file, in_memory) {
        (Ok(a), Ok(b)) => {
            check_set(&a, true)?;
            prop_assert_eq!((a.rows, a.cols), (28, 28));
            prop_assert_eq!(a, b);
        }
        (Err(a), Err(b)) => {
            check_error(&a, &f.path)?;
            prop_assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => prop_assert!(false, "file and memory disagree: {a:?} vs {b:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn amat_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_amat(&bytes)?;
    }

    #[test]
    fn amat_survives_arbitrary_text(text in "\\PC{0,300}") {
        check_amat(text.as_bytes())?;
    }

    #[test]
    fn amat_survives_amat_like_text(bytes in amat_like_text()) {
        check_amat(&bytes)?;
    }

    #[test]
    fn amat_survives_mutated_valid_lines(set in binary_images(2), muts in mutations()) {
        check_amat(&mutate(&amat_text(&set), &muts, 64))?;
    }

    #[test]
    fn amat_round_trips(set in binary_images(3), crlf in any::<bool>(), no_final_newline in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round-trip.amat");
        data::amat::write_amat(&path, &set).unwrap();
        prop_assert_eq!(&data::amat::read_amat(&path).unwrap(), &set);
        // The tolerated variants of the layout read the same.
        let mut text = amat_text(&set);
        if crlf {
            text = String::from_utf8(text).unwrap().replace('\n', " \r\n").into_bytes();
        }
        if no_final_newline {
            while text.last().is_some_and(|b| b.is_ascii_whitespace()) {
                text.pop();
            }
        }
        prop_assert_eq!(data::amat::parse_amat(&text[..], &path).unwrap(), set);
    }
}

// ---------------------------------------------------------------------------------------
// Packed binarized MNIST.

fn binary_set(rows: usize, cols: usize) -> impl Strategy<Value = ImageSet> {
    (0usize..4, any::<bool>())
        .prop_flat_map(move |(n, labelled)| {
            (
                prop::collection::vec(0u8..2, n * rows * cols),
                prop::collection::vec(0u8..10, n).prop_map(move |l| labelled.then_some(l)),
            )
        })
        .prop_map(move |(images, labels)| ImageSet {
            images,
            labels,
            rows,
            cols,
        })
}

fn small_mnist() -> impl Strategy<Value = BinarizedMnist> {
    (1usize..10, 1usize..10).prop_flat_map(|(r, c)| {
        (binary_set(r, c), binary_set(r, c), binary_set(r, c))
            .prop_map(|(train, valid, test)| BinarizedMnist { train, valid, test })
    })
}

/// The uncompressed stream of a packed file, as `write_packed` writes it.
fn packed_stream(d: &BinarizedMnist) -> Vec<u8> {
    let f = input("unused", b"");
    data::packed::write_packed(&f.path, d).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&f.path).unwrap()),
        &mut out,
    )
    .unwrap();
    out
}

fn check_packed(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = input("fuzz-input.vbm.gz", bytes);
    let (read, peak) = largest_allocation(|| data::packed::read_packed(&f.path));
    check_alloc(peak)?;
    match read {
        Ok(d) => {
            for s in [&d.train, &d.valid, &d.test] {
                check_set(s, true)?;
                prop_assert_eq!((s.rows, s.cols), (d.train.rows, d.train.cols));
            }
        }
        Err(e) => check_error(&e, &f.path)?,
    }
    // The loader the CLI uses goes through the same reader.
    if let Err(e) = data::load_binarized_mnist(&f.path) {
        check_error(&e, &f.path)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn packed_round_trips(d in small_mnist()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round-trip.vbm.gz");
        data::packed::write_packed(&path, &d).unwrap();
        prop_assert_eq!(data::packed::read_packed(&path).unwrap(), d);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        prop_assert_eq!(names.len(), 1, "a temporary file was left behind");
    }

    #[test]
    fn packed_survives_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..256),
        magic in any::<bool>(),
    ) {
        let raw = if magic { [&data::packed::MAGIC[..], &body].concat() } else { body };
        check_packed(&gz(&raw))?;
        check_packed(&raw)?;
    }

    #[test]
    fn packed_survives_mutations(d in small_mnist(), muts in mutations(), gzip_level in any::<bool>()) {
        let stream = packed_stream(&d);
        let wrap = if gzip_level { Wrap::MutatedGzip } else { Wrap::Gzip };
        check_packed(&corrupt(&stream, &muts, 32, wrap))?;
    }
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
            check_error(&e, Path::new(origin))?;
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
        let bytes = mutate(preset_text().as_bytes(), &muts, 4096);
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
            check_error(&e, &f.path)?;
            prop_assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e:?}");
            return Ok(None);
        }
    };
    let _ = ck.names();
    let model = Vnca::new(&tiny_config().model, tch::Device::Cpu, 0);
    match ck.load_model(&model) {
        Ok(()) => Ok(None),
        Err(e) => {
            check_error(&e, &f.path)?;
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
        check_checkpoint(&mutate(bytes, &muts, header_len(bytes)))?;
    }

    #[test]
    fn checkpoint_survives_mutations_of_a_full_checkpoint(muts in mutations()) {
        let bytes = full_checkpoint_bytes();
        check_checkpoint(&mutate(bytes, &muts, header_len(bytes)))?;
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
