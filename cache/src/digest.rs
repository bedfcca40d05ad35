//! Digests and the stable hashing that produces stage keys.
//!
//! Stage keys must never change across Rust versions, platforms or crate upgrades, so they are
//! computed with our own [`StableHash`] trait (never `std::hash::Hash`): every value writes a
//! type tag, lengths are prefixed, and only ordered containers implement it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 32 raw bytes of a blake3 output.
type Bytes32 = [u8; 32];

fn to_hex(bytes: &Bytes32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

fn from_hex(text: &str) -> Option<Bytes32> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Bytes32);

        impl $name {
            /// Wraps raw digest bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
            /// The raw digest bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hexadecimal, 64 characters.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }
            /// The first 12 hex characters, for people.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                from_hex(text)
                    .map(Self)
                    .ok_or_else(|| format!("`{text}` is not a 64-character hex digest"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl StableHash for $name {
            fn stable_hash(&self, hasher: &mut StableHasher) {
                hasher.write_tag(Tag::Digest);
                hasher.write_raw(&self.0);
            }
        }
    };
}

digest_newtype!(
    /// The blake3 digest of an object's bytes (a file, or a directory's tree manifest).
    ///
    /// A plain blake3 hash, so `b3sum FILE` prints the same digest for a file output.
    ObjectDigest
);
digest_newtype!(
    /// The key of a stage: what the action cache is indexed by.
    StageKey
);

impl ObjectDigest {
    /// Hashes bytes held in memory.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// Type tags written before every value, so that `("ab", "c")` and `("a", "bc")`, or the
/// integer 1 and the string "1", never hash alike.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Tag {
    /// `null`.
    Null = 0,
    /// A boolean.
    Bool = 1,
    /// A signed integer.
    Int = 2,
    /// A float, by its IEEE-754 bits (with `-0.0` folded into `0.0`).
    Float = 3,
    /// A UTF-8 string.
    Str = 4,
    /// A sequence, length-prefixed.
    List = 5,
    /// A map with sorted keys, length-prefixed.
    Map = 6,
    /// An absent optional value.
    None = 7,
    /// A present optional value.
    Some = 8,
    /// A digest.
    Digest = 9,
    /// An unsigned integer.
    UInt = 10,
}

/// A blake3 hasher in derive-key mode whose context string separates the domains of different
/// hashes (stage keys, seeds, ...).
pub struct StableHasher(blake3::Hasher);

impl StableHasher {
    /// A hasher for the domain named by `context` (e.g. `"mipipe stage-key v1"`).
    pub fn new(context: &str) -> Self {
        Self(blake3::Hasher::new_derive_key(context))
    }

    /// Writes a type tag.
    pub fn write_tag(&mut self, tag: Tag) {
        self.0.update(&[tag as u8]);
    }

    /// Writes bytes with no length prefix (for fixed-size values).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Writes a length as a little-endian u64.
    pub fn write_len(&mut self, len: usize) {
        self.0.update(&(len as u64).to_le_bytes());
    }

    /// Hashes any [`StableHash`] value.
    pub fn write<T: StableHash + ?Sized>(&mut self, value: &T) -> &mut Self {
        value.stable_hash(self);
        self
    }

    /// The 32-byte result.
    pub fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// Hashing that is stable across processes, platforms and versions.
pub trait StableHash {
    /// Feeds `self`, tagged and length-prefixed, into the hasher.
    fn stable_hash(&self, hasher: &mut StableHasher);
}

impl StableHash for str {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::Str);
        hasher.write_len(self.len());
        hasher.write_raw(self.as_bytes());
    }
}

impl StableHash for String {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        self.as_str().stable_hash(hasher);
    }
}

impl StableHash for bool {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::Bool);
        hasher.write_raw(&[*self as u8]);
    }
}

impl StableHash for i64 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::Int);
        hasher.write_raw(&self.to_le_bytes());
    }
}

impl StableHash for u64 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::UInt);
        hasher.write_raw(&self.to_le_bytes());
    }
}

impl StableHash for u32 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        u64::from(*self).stable_hash(hasher);
    }
}

impl StableHash for f64 {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::Float);
        let folded = if *self == 0.0 { 0.0f64 } else { *self };
        hasher.write_raw(&folded.to_bits().to_le_bytes());
    }
}

impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::List);
        hasher.write_len(self.len());
        for item in self {
            item.stable_hash(hasher);
        }
    }
}

impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        self.as_slice().stable_hash(hasher);
    }
}

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        match self {
            None => hasher.write_tag(Tag::None),
            Some(value) => {
                hasher.write_tag(Tag::Some);
                value.stable_hash(hasher);
            }
        }
    }
}

impl<K: StableHash, V: StableHash> StableHash for BTreeMap<K, V> {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        hasher.write_tag(Tag::Map);
        hasher.write_len(self.len());
        for (key, value) in self {
            key.stable_hash(hasher);
            value.stable_hash(hasher);
        }
    }
}

impl<A: StableHash, B: StableHash> StableHash for (A, B) {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        self.0.stable_hash(hasher);
        self.1.stable_hash(hasher);
    }
}

/// Canonical JSON: object keys are sorted (serde_json's default map is a `BTreeMap`), integers
/// and floats are kept apart, so `1` and `1.0` are different params.
impl StableHash for serde_json::Value {
    fn stable_hash(&self, hasher: &mut StableHasher) {
        use serde_json::Value;
        match self {
            Value::Null => hasher.write_tag(Tag::Null),
            Value::Bool(b) => b.stable_hash(hasher),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    i.stable_hash(hasher)
                } else if let Some(u) = n.as_u64() {
                    u.stable_hash(hasher)
                } else {
                    n.as_f64().unwrap_or(f64::NAN).stable_hash(hasher)
                }
            }
            Value::String(s) => s.stable_hash(hasher),
            Value::Array(items) => items.stable_hash(hasher),
            Value::Object(map) => {
                hasher.write_tag(Tag::Map);
                hasher.write_len(map.len());
                // serde_json::Map iterates in key order without `preserve_order`; sort anyway
                // so that enabling that feature elsewhere in the tree can never change keys.
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (key, value) in entries {
                    key.stable_hash(hasher);
                    value.stable_hash(hasher);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of<T: StableHash + ?Sized>(value: &T) -> [u8; 32] {
        let mut h = StableHasher::new("test");
        h.write(value);
        h.finish()
    }

    #[test]
    fn strings_are_length_prefixed() {
        let a = vec!["ab".to_string(), "c".to_string()];
        let b = vec!["a".to_string(), "bc".to_string()];
        assert_ne!(key_of(&a), key_of(&b));
    }

    #[test]
    fn integers_and_floats_differ() {
        assert_ne!(
            key_of(&serde_json::json!(1)),
            key_of(&serde_json::json!(1.0))
        );
        assert_ne!(
            key_of(&serde_json::json!(1)),
            key_of(&serde_json::json!("1"))
        );
    }

    #[test]
    fn json_object_key_order_does_not_matter() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[true,null]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"b":[true,null],"a":1}"#).unwrap();
        assert_eq!(key_of(&a), key_of(&b));
    }

    #[test]
    fn contexts_separate_domains() {
        let mut a = StableHasher::new("one");
        let mut b = StableHasher::new("two");
        a.write("x");
        b.write("x");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn hex_round_trips() {
        let d = ObjectDigest::of_bytes(b"hello");
        assert_eq!(d.to_hex().parse::<ObjectDigest>().unwrap(), d);
        assert_eq!(
            d.to_hex(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert!("zz".parse::<ObjectDigest>().is_err());
    }
}
