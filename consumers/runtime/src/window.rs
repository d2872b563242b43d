//! Dedupe windows: the ids (`event_id`s, `idempotency_key`s) a key applied,
//! each with its event time, pruned by event-time retention.
//!
//! # Compact ids
//!
//! A window keeps an id as its 128-bit XXH3 hash ([`Id`]), not its text: 16
//! bytes whatever the id's length, in memory, on disk and in the changelog,
//! where a window is one base64 string of 24-byte entries (hash, event time)
//! — 32 characters per id instead of the ~50–70 the JSON text of a UUID and
//! a `source:uuid` key took.
//!
//! The risk: a new input is taken for one its key already applied only if
//! its id's hash equals the hash of one of the `n` ids the key remembers,
//! probability `n / 2^128` per input. A key remembering 10^6 ids, fed 10^15
//! inputs, drops a fresh one with probability below 3·10^-18. Windows
//! written by earlier versions (ids as text) are read and hashed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use base64::Engine;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An id as a window keeps it: its 128-bit XXH3 hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id([u8; 16]);

impl Id {
    /// The id of `text`.
    pub fn of(text: &str) -> Id {
        Id(xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_le_bytes())
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Id({:032x})", u128::from_le_bytes(self.0))
    }
}

/// Already a uniform hash: a window's map uses 8 of its bytes as is.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

/// The hasher of a window's map: an [`Id`] is hashed already.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Id`; any other input is folded in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

type Seen = HashMap<Id, i64, BuildHasherDefault<IdHasher>>;

/// Remembered ids with their event time, pruned by event-time retention.
#[derive(Debug, Clone)]
pub struct Window {
    seen: Seen,
    /// Ids remembered since the last [`Window::take_fresh`].
    fresh: Vec<(Id, i64)>,
    /// No remembered id is older than this: a prune below it has nothing to
    /// do (a hot key prunes its thousands of ids at every input otherwise).
    oldest: i64,
}

/// Equal when they remember the same ids (`oldest` is only a bound).
impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.seen == other.seen && self.fresh == other.fresh
    }
}

impl Eq for Window {}

impl Default for Window {
    fn default() -> Self {
        Window { seen: Seen::default(), fresh: vec![], oldest: i64::MAX }
    }
}

impl Window {
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains_key(&Id::of(id))
    }

    pub fn insert(&mut self, id: &str, at: i64) {
        let id = Id::of(id);
        self.remember(id, at);
        self.fresh.push((id, at));
    }

    fn remember(&mut self, id: Id, at: i64) {
        self.seen.insert(id, at);
        self.oldest = self.oldest.min(at);
    }

    /// Forgets the ids older than `older_than`.
    pub fn prune(&mut self, older_than: i64) {
        if older_than <= self.oldest {
            return;
        }
        let mut oldest = i64::MAX;
        self.seen.retain(|_, at| {
            let keep = *at >= older_than;
            if keep {
                oldest = oldest.min(*at);
            }
            keep
        });
        self.oldest = oldest;
    }

    /// The ids remembered since the last call.
    pub fn take_fresh(&mut self) -> Vec<(Id, i64)> {
        std::mem::take(&mut self.fresh)
    }

    /// Remembers recorded ids (a restore), then forgets those older than `older_than`.
    pub fn extend(&mut self, ids: Vec<(Id, i64)>, older_than: i64) {
        for (id, at) in ids {
            self.remember(id, at);
        }
        self.prune(older_than);
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Written as [`ids`] writes a list (sorted, so one window is one text).
impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(Id, i64)> = self.seen.iter().map(|(id, at)| (*id, *at)).collect();
        entries.sort_unstable();
        ids::serialize(&entries, s)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut w = Window::default();
        w.extend(ids::deserialize(d)?, i64::MIN);
        Ok(w)
    }
}

/// A list of `(id, event time)` as the changelog and the store hold it: one
/// base64 string of 24-byte entries (hash, then time, little-endian). Reads
/// also what earlier versions wrote: a list of `[text, time]` pairs, or a
/// window `{"seen": {text: time, …}}`.
pub mod ids {
    use super::*;

    const ENTRY: usize = 24;

    pub fn serialize<S: Serializer>(ids: &[(Id, i64)], s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(ids.len() * ENTRY);
        for (id, at) in ids {
            bytes.extend_from_slice(&id.0);
            bytes.extend_from_slice(&at.to_le_bytes());
        }
        s.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Id, i64)>, D::Error> {
        d.deserialize_any(IdsVisitor)
    }

    pub(super) fn decode<E: de::Error>(text: &str) -> Result<Vec<(Id, i64)>, E> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(E::custom)?;
        if bytes.len() % ENTRY != 0 {
            return Err(E::custom(format!("a window of {} bytes, not a multiple of {ENTRY}", bytes.len())));
        }
        Ok(bytes
            .chunks_exact(ENTRY)
            .map(|e| {
                let id = Id(e[..16].try_into().expect("16 bytes"));
                (id, i64::from_le_bytes(e[16..].try_into().expect("8 bytes")))
            })
            .collect())
    }
}

struct IdsVisitor;

impl<'de> Visitor<'de> for IdsVisitor {
    type Value = Vec<(Id, i64)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a base64 list of ids, a list of [id, time] pairs or a {\"seen\": {id: time}} window")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        ids::decode(text)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((text, at)) = seq.next_element::<(String, i64)>()? {
            out.push((Id::of(&text), at));
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(field) = map.next_key::<String>()? {
            if field != "seen" {
                return Err(de::Error::unknown_field(&field, &["seen"]));
            }
            let seen: HashMap<String, i64> = map.next_value()?;
            out.extend(seen.into_iter().map(|(text, at)| (Id::of(&text), at)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_round_trips_as_32_characters_per_id() {
        let mut w = Window::default();
        w.insert("0b6a3c1e-5f0d-4f51-9a55-2f1d7b6f3e10", 1_733_500_000_000);
        w.insert("order-producer:0b6a3c1e-5f0d-4f51-9a55-2f1d7b6f3e10", 1_733_500_000_001);
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(text.len(), 2 + 64, "{text}");
        let back: Window = serde_json::from_str(&text).unwrap();
        assert!(back.contains("0b6a3c1e-5f0d-4f51-9a55-2f1d7b6f3e10"));
        assert!(!back.contains("0b6a3c1e-5f0d-4f51-9a55-2f1d7b6f3e11"));
        assert_eq!(back.seen, w.seen);
    }

    #[test]
    fn windows_and_id_lists_written_by_earlier_versions_are_read_and_hashed() {
        let w: Window = serde_json::from_str(r#"{"seen":{"e-1":5,"e-2":7}}"#).unwrap();
        assert!(w.contains("e-1") && w.contains("e-2") && !w.contains("e-3"));
        #[derive(Deserialize)]
        struct Delta {
            #[serde(with = "ids")]
            e: Vec<(Id, i64)>,
        }
        let d: Delta = serde_json::from_str(r#"{"e":[["e-1",5],["e-2",7]]}"#).unwrap();
        assert_eq!(d.e, vec![(Id::of("e-1"), 5), (Id::of("e-2"), 7)]);
    }

    #[test]
    fn a_prune_forgets_exactly_the_ids_older_than_its_horizon_and_nothing_below_the_oldest() {
        let mut w = Window::default();
        for (id, at) in [("a", 10), ("b", 20), ("c", 30)] {
            w.insert(id, at);
        }
        w.prune(5);
        assert_eq!(w.len(), 3);
        w.prune(20);
        assert!(!w.contains("a") && w.contains("b") && w.contains("c"));
        assert_eq!(w.oldest, 20);
        w.insert("d", 15);
        w.prune(16);
        assert!(!w.contains("d") && w.contains("b"), "an id older than the oldest is still pruned");
        w.prune(31);
        assert!(w.is_empty());
        let back: Window = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back.oldest, i64::MAX);
    }

    #[test]
    fn a_truncated_window_is_an_error_not_a_shorter_window() {
        let mut w = Window::default();
        w.insert("a", 1);
        let text = serde_json::to_string(&w).unwrap();
        let cut = format!("{}\"", &text[..text.len() - 5]);
        assert!(serde_json::from_str::<Window>(&cut).is_err(), "{cut}");
    }

    #[test]
    fn the_hash_of_an_id_is_stable_across_versions() {
        // Windows on disk and in changelogs depend on it: it must never change.
        assert_eq!(format!("{:?}", Id::of("e-1")), format!("{:?}", Id::of("e-1")));
        assert_eq!(
            u128::from_le_bytes(Id::of("").0),
            0x99aa06d3014798d86001c324468d497f,
            "XXH3-128 of the empty string"
        );
    }
}
