//! The keys the config structs accept, read from the structs themselves so that lists
//! of keys (error messages, the documentation check) cannot drift from them.
//!
//! [`Walk`] is a serde `Deserializer` that answers every request with a placeholder and
//! records the `fields` each struct asks for, descending into every field: options are
//! present, sequences have one element (`[]` in a path), maps with string keys
//! (`[tables]`, `[data.splits]`) have one entry named `*`, enums take their first variant.

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::BTreeSet;

/// Every key path a config file may hold: `data.csv.delimiter`,
/// `features.categorical[].dim`, `data.splits.*.paths`, `model.experts[].cross_layers`
/// (expert keys are the union over kinds; [`super::model::ExpertSection::keys`] has
/// each kind's). Paths of sections are included (`data.csv`).
pub fn accepted_keys() -> BTreeSet<String> {
    let out = RefCell::new(BTreeSet::new());
    // The walk ends early only inside a sequence element (see `Seq`); the file itself
    // always completes.
    let _ = super::wire::ConfigFile::deserialize(Walk { path: String::new(), out: &out });
    out.into_inner()
}

/// The fields `T` (a struct deriving `Deserialize`) accepts, in declaration order.
pub fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields { found: &mut found });
    found
}

/// The variant names `T` (an enum deriving `Deserialize`) accepts, in declaration order.
pub fn enum_variants<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields { found: &mut found });
    found
}

/// The error of a walk: only ever a placeholder that a visitor refused.
#[derive(Debug)]
pub struct WalkError(String);

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl de::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// Captures the `fields` of the first `deserialize_struct` (or the `variants` of the
/// first `deserialize_enum`) and stops.
struct Fields<'a> {
    found: &'a mut &'static [&'static str],
}

impl<'de> de::Deserializer<'de> for Fields<'_> {
    type Error = WalkError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError("not a struct".into()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, WalkError> {
        *self.found = fields;
        Err(WalkError("fields recorded".into()))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, WalkError> {
        *self.found = variants;
        Err(WalkError("variants recorded".into()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

/// The recording deserializer at one key path.
struct Walk<'a> {
    path: String,
    out: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Walk<'a> {
    fn child(&self, segment: &str) -> Walk<'a> {
        let path = match (self.path.is_empty(), segment) {
            (_, "[]") => format!("{}[]", self.path),
            (true, s) => s.to_string(),
            (false, s) => format!("{}.{s}", self.path),
        };
        Walk { path, out: self.out }
    }

    fn record(&self, segment: &str) -> Walk<'a> {
        let child = self.child(segment);
        self.out.borrow_mut().insert(child.path.clone());
        child
    }
}

impl<'de> de::Deserializer<'de> for Walk<'_> {
    type Error = WalkError;

    /// Self-describing requests (a buffered value) have no shape to follow.
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("{}: no placeholder for a self-describing value", self.path)))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_i64(1)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_i64(1)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_i64(1)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_i64(1)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_u64(1)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_u64(1)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_u64(1)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_u64(1)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_f64(0.5)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_f64(0.5)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_char('x')
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_str("x")
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_str("x")
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, WalkError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_seq(Seq { walk: Some(self.child("[]")), left: 1 })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, WalkError> {
        v.visit_seq(Seq { walk: Some(self.child("[]")), left: len })
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        let entry = self.record("*");
        v.visit_map(Entries {
            keys: &["*"],
            next: 0,
            walk: Walk { path: self.path, out: self.out },
            named: Some(entry),
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        for f in fields {
            self.record(f);
        }
        v.visit_map(Entries { keys: fields, next: 0, walk: self, named: None })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        let first = variants.first().copied().unwrap_or("");
        v.visit_enum(Variant { name: first, walk: self })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_str("x")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! { i128 u128 bytes byte_buf unit_struct tuple_struct }
}

/// One element per sequence (`len` for a tuple). An element the walk cannot finish (a
/// buffered value such as an expert table) ends the sequence: its keys are recorded by
/// then, and the enclosing struct goes on.
struct Seq<'a> {
    walk: Option<Walk<'a>>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, WalkError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let Some(w) = &self.walk else { return Ok(None) };
        match seed.deserialize(Walk { path: w.path.clone(), out: w.out }) {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.left == 0 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A struct's fields (each value walked at its path) or a map's one `*` entry.
struct Entries<'a> {
    keys: &'static [&'static str],
    next: usize,
    walk: Walk<'a>,
    /// For a map: the walk of its one entry's value.
    named: Option<Walk<'a>>,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, WalkError> {
        let Some(&key) = self.keys.get(self.next) else { return Ok(None) };
        let de: StrDeserializer<'_, WalkError> = key.into_deserializer();
        seed.deserialize(de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let key = self.keys[self.next];
        self.next += 1;
        let walk = match &self.named {
            Some(w) => Walk { path: w.path.clone(), out: w.out },
            None => self.walk.child(key),
        };
        seed.deserialize(walk)
    }
}

/// The first variant of an enum; its content (if any) is walked at the enum's path.
struct Variant<'a> {
    name: &'static str,
    walk: Walk<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = WalkError;
    type Variant = Walk<'a>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Walk<'a>), WalkError> {
        let de: StrDeserializer<'_, WalkError> = self.name.into_deserializer();
        Ok((seed.deserialize(de)?, self.walk))
    }
}

impl<'de> de::VariantAccess<'de> for Walk<'_> {
    type Error = WalkError;

    fn unit_variant(self) -> Result<(), WalkError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, WalkError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, WalkError> {
        de::Deserializer::deserialize_tuple(self, len, v)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, WalkError> {
        de::Deserializer::deserialize_struct(self, "", fields, v)
    }
}
