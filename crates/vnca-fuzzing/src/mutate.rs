//! Mutations of valid files: the fuzzer's way to reach deep into a reader, past the
//! magic numbers and checks that arbitrary bytes never get through.
//!
//! One engine for every format; what differs per format is a [`Dialect`]: how often each
//! kind of mutation is drawn (a header of big-endian u32 fields wants more word writes
//! than a text file) and which values are "interesting" (format numbers, magic words,
//! the largest lengths). Positions are drawn half of the time anywhere in the file and
//! half of the time inside one of the caller's hot regions (a header, the start of each
//! table), where a mutation changes what the rest of the file means.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use std::fmt::Debug;

/// One edit of a byte string.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip bit `bit` of the byte at `at`.
    Flip { at: Pos, bit: u8 },
    /// Overwrite the byte at `at`.
    Set { at: Pos, byte: u8 },
    /// Overwrite 2 bytes at `at` with a big-endian u16 (sfnt fields, JPEG lengths).
    SetU16Be { at: Pos, value: u16 },
    /// Overwrite 4 bytes at `at` with a big-endian u32 (IDX, packed, PNG and sfnt fields).
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

/// A position in the file: anywhere (`region` 0), or inside one of the hot regions
/// (`region` k > 0 picks region `(k - 1) % regions.len()`).
#[derive(Clone, Copy, Debug)]
pub struct Pos {
    raw: usize,
    region: u8,
}

/// A hot region: (start, length) in bytes.
pub type Region = (usize, usize);

impl Pos {
    /// A position in `0..=len`; a region reaching past `len` is cut at `len`.
    fn resolve(self, len: usize, regions: &[Region]) -> usize {
        if self.region == 0 || regions.is_empty() {
            return self.raw % (len + 1);
        }
        let (start, n) = regions[usize::from(self.region - 1) % regions.len()];
        let start = start.min(len);
        start + self.raw % (n.min(len - start) + 1)
    }
}

/// Relative weights of the kinds of [`Mutation`]; 0 leaves a kind out.
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub flip: u32,
    pub set: u32,
    pub set_u16: u32,
    pub set_u32: u32,
    pub set_u64: u32,
    pub truncate: u32,
    pub insert: u32,
    pub remove: u32,
    pub duplicate: u32,
}

/// The per-format choices of the engine. Each value list is drawn from alongside small
/// values (below 64, 256 and 4096 for u16, u32 and u64) and arbitrary ones.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    pub weights: Weights,
    /// Bytes for [`Mutation::Set`] and [`Mutation::Insert`].
    pub bytes: &'static [u8],
    pub u16s: &'static [u16],
    pub u32s: &'static [u32],
    pub u64s: &'static [u64],
}

/// One of `list` (each as likely as the small and the arbitrary draws together).
fn interesting<T: Arbitrary + Clone + Debug + 'static>(
    list: &'static [T],
    small: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    let mut arms = vec![(1, small.boxed()), (1, any::<T>().boxed())];
    if !list.is_empty() {
        arms.push((list.len() as u32, select(list).boxed()));
    }
    Union::new_weighted(arms).boxed()
}

fn pos() -> impl Strategy<Value = Pos> {
    (any::<usize>(), prop_oneof![Just(0u8), 1u8..=255])
        .prop_map(|(raw, region)| Pos { raw, region })
}

impl Dialect {
    /// One mutation.
    pub fn mutation(self) -> BoxedStrategy<Mutation> {
        let w = self.weights;
        let byte = interesting(self.bytes, any::<u8>());
        let arms: Vec<(u32, BoxedStrategy<Mutation>)> = vec![
            (
                w.flip,
                (pos(), 0u8..8)
                    .prop_map(|(at, bit)| Mutation::Flip { at, bit })
                    .boxed(),
            ),
            (
                w.set,
                (pos(), byte.clone())
                    .prop_map(|(at, byte)| Mutation::Set { at, byte })
                    .boxed(),
            ),
            (
                w.set_u16,
                (pos(), interesting(self.u16s, 0u16..64))
                    .prop_map(|(at, value)| Mutation::SetU16Be { at, value })
                    .boxed(),
            ),
            (
                w.set_u32,
                (pos(), interesting(self.u32s, 0u32..256))
                    .prop_map(|(at, value)| Mutation::SetU32Be { at, value })
                    .boxed(),
            ),
            (
                w.set_u64,
                (pos(), interesting(self.u64s, 0u64..4096))
                    .prop_map(|(at, value)| Mutation::SetU64Le { at, value })
                    .boxed(),
            ),
            (
                w.truncate,
                pos().prop_map(|len| Mutation::Truncate { len }).boxed(),
            ),
            (
                w.insert,
                (pos(), prop::collection::vec(byte, 1..16))
                    .prop_map(|(at, bytes)| Mutation::Insert { at, bytes })
                    .boxed(),
            ),
            (
                w.remove,
                (pos(), 1usize..64)
                    .prop_map(|(at, len)| Mutation::Remove { at, len })
                    .boxed(),
            ),
            (
                w.duplicate,
                (pos(), 1usize..64)
                    .prop_map(|(at, len)| Mutation::Duplicate { at, len })
                    .boxed(),
            ),
        ];
        Union::new_weighted(arms.into_iter().filter(|(w, _)| *w > 0).collect()).boxed()
    }

    /// One to four mutations, applied in order by [`mutate`].
    pub fn mutations(self) -> BoxedStrategy<Vec<Mutation>> {
        prop::collection::vec(self.mutation(), 1..5).boxed()
    }
}

/// `data` with `muts` applied in order; positions drawn as hot fall in `regions`.
pub fn mutate(data: &[u8], muts: &[Mutation], regions: &[Region]) -> Vec<u8> {
    let mut d = data.to_vec();
    // Overwrites `bytes` at a position where they fit, if the data is long enough.
    fn put(d: &mut [u8], at: Pos, bytes: &[u8], regions: &[Region]) {
        if let Some(room) = d.len().checked_sub(bytes.len()) {
            let i = at.resolve(room, regions);
            d[i..i + bytes.len()].copy_from_slice(bytes);
        }
    }
    for m in muts {
        let len = d.len();
        match m {
            Mutation::Flip { at, bit } => {
                if len > 0 {
                    let i = at.resolve(len - 1, regions);
                    d[i] ^= 1 << bit;
                }
            }
            Mutation::Set { at, byte } => put(&mut d, *at, &[*byte], regions),
            Mutation::SetU16Be { at, value } => put(&mut d, *at, &value.to_be_bytes(), regions),
            Mutation::SetU32Be { at, value } => put(&mut d, *at, &value.to_be_bytes(), regions),
            Mutation::SetU64Le { at, value } => put(&mut d, *at, &value.to_le_bytes(), regions),
            Mutation::Truncate { len: keep } => d.truncate(keep.resolve(len, regions)),
            Mutation::Insert { at, bytes } => {
                let i = at.resolve(len, regions);
                d.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove { at, len: n } => {
                let i = at.resolve(len, regions);
                d.drain(i..(i + n).min(len));
            }
            Mutation::Duplicate { at, len: n } => {
                let i = at.resolve(len, regions);
                let end = (i + n).min(len);
                let copy = d[i..end].to_vec();
                d.splice(end..end, copy);
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: usize, region: u8) -> Pos {
        Pos { raw, region }
    }

    #[test]
    fn positions_fall_in_their_region() {
        let regions = [(10, 4), (100, 50)];
        assert_eq!(at(7, 0).resolve(20, &regions), 7);
        assert_eq!(at(27, 0).resolve(20, &regions), 6);
        // Region 1: 10..=14.
        assert_eq!(at(3, 1).resolve(200, &regions), 13);
        assert_eq!(at(9, 1).resolve(200, &regions), 14);
        // Region 2, cut at the end of a 120-byte file: 100..=120.
        assert_eq!(at(25, 2).resolve(120, &regions), 104);
        // A region past the end is the end.
        assert_eq!(at(5, 2).resolve(50, &regions), 50);
    }

    #[test]
    fn mutations_edit_as_documented() {
        let data: Vec<u8> = (0..10).collect();
        let hot = [(0, 3)];
        let m = |m: Mutation| mutate(&data, &[m], &hot);
        assert_eq!(
            m(Mutation::Flip {
                at: at(2, 1),
                bit: 7
            })[2],
            0x82
        );
        assert_eq!(
            m(Mutation::SetU32Be {
                at: at(1, 1),
                value: 0x0102_0304
            })[1..5],
            [1, 2, 3, 4]
        );
        assert_eq!(
            m(Mutation::SetU64Le {
                at: at(0, 0),
                value: 1
            })[..8],
            [1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(m(Mutation::Truncate { len: at(3, 0) }), [0, 1, 2]);
        assert_eq!(
            m(Mutation::Insert {
                at: at(1, 1),
                bytes: vec![9, 9]
            })[..4],
            [0, 9, 9, 1]
        );
        assert_eq!(
            m(Mutation::Remove {
                at: at(8, 0),
                len: 5
            }),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            m(Mutation::Duplicate {
                at: at(8, 0),
                len: 5
            }),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9]
        );
        // Words longer than the data leave it alone.
        assert_eq!(
            mutate(
                &[1, 2],
                &[Mutation::SetU32Be {
                    at: at(0, 0),
                    value: 0
                }],
                &hot
            ),
            [1, 2]
        );
    }
}
