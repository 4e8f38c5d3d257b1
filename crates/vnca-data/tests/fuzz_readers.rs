//! Property tests ("fuzzing" without a nightly toolchain) of the MNIST readers: IDX
//! (raw and gzipped), Larochelle `.amat` text and our packed binarized MNIST.
//!
//! For every reader, on arbitrary bytes and on mutations (bit flips, overwritten bytes and
//! header words, truncation, insertion, deletion, duplication) of a valid file:
//! * it never panics;
//! * an error names the file it is about, on one line;
//! * no single allocation is much larger than the input, however large the lengths a
//!   corrupt header claims (a counting global allocator checks this);
//! * whatever it accepts satisfies the format's invariants;
//! * valid inputs round-trip through the matching writer.
//!
//! Cases per property: [`DEFAULT_CASES`], or `PROPTEST_CASES=N` (see docs/RELIABILITY.md).
//! Failing inputs are recorded in `fuzz_readers.proptest-regressions` beside this file
//! and replayed first.
use proptest::prelude::*;
use std::io::Write;
use vnca_data::{self as data, BinarizedMnist, ImageSet};
use vnca_fuzzing::alloc::Scope;
use vnca_fuzzing::mutate::{mutate, Dialect, Mutation, Weights};
use vnca_fuzzing::{check_error, input};

/// Generous for our inputs (at most tens of KB, inflating to at most a few MB), and far
/// below what any corrupt length field in them claims (up to 2^64).
const ALLOC_LIMIT: usize = 64 << 20;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

// Single-threaded readers: count this thread's allocations, with the tests in parallel.
vnca_fuzzing::fuzz_binary!(scope: Scope::ThisThread, cases: DEFAULT_CASES, alloc_limit: ALLOC_LIMIT);

// ---------------------------------------------------------------------------------------
// Mutations of valid files: big-endian header words (IDX dimensions, magic numbers),
// text separators for `.amat`.

const READERS: Dialect = Dialect {
    weights: Weights {
        flip: 3,
        set: 3,
        set_u16: 0,
        set_u32: 2,
        set_u64: 0,
        truncate: 2,
        insert: 2,
        remove: 2,
        duplicate: 1,
    },
    bytes: &[0, 1, 2, 9, 10, b' ', b'"', b'{', 0x7f, 0x80, 0xff],
    u16s: &[],
    u32s: &[
        0,
        1,
        2,
        7,
        28,
        0x0000_0801,
        0x0000_0803,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
    ],
    u64s: &[],
};

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    READERS.mutations()
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
        Wrap::Plain => mutate(valid, muts, &[(0, hot_len)]),
        Wrap::Gzip => gz(&mutate(valid, muts, &[(0, hot_len)])),
        // Gzip's own header is 10 bytes; the deflate data right after it is the hot part.
        Wrap::MutatedGzip => mutate(&gz(valid), muts, &[(0, 64)]),
    }
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
        Err(e) => check_error(&e, &[&f.path])?,
    }
    let (labels, peak) = largest_allocation(|| data::idx::read_labels(&f.path));
    check_alloc(peak)?;
    match labels {
        Ok(l) => prop_assert!(l.iter().all(|&d| d <= 9)),
        Err(e) => check_error(&e, &[&f.path])?,
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
            check_error(&a, &[&f.path])?;
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
        check_amat(&mutate(&amat_text(&set), &muts, &[(0, 64)]))?;
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
        Err(e) => check_error(&e, &[&f.path])?,
    }
    // The loader the CLI uses goes through the same reader.
    if let Err(e) = data::load_binarized_mnist(&f.path) {
        check_error(&e, &[&f.path])?;
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
