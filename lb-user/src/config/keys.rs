//! Every key the config parser accepts, read off its own serde types (so
//! the list cannot drift from the parser): a deserializer that, asked for
//! a struct, offers each of its fields once and records the field's path.
//! The docs test checks `docs/config.md` against it.

use std::cell::RefCell;

use serde::{
    de::{
        self,
        value::{BorrowedStrDeserializer, StrDeserializer},
        DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
    },
    forward_to_deserialize_any, Deserialize,
};

use super::raw::RawConfig;

/// Dotted paths of every accepted key, tables included (`global`,
/// `global.admin`, `service.backend.weight`, ...), sorted.
pub fn accepted_keys() -> Vec<String> {
    let keys = RefCell::new(Vec::new());
    RawConfig::deserialize(Collector { path: "", keys: &keys }).expect("the raw config types take any shape offered");
    let mut keys = keys.into_inner();
    keys.sort();
    keys.dedup();
    keys
}

#[derive(Debug)]
struct Never(String);

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Never {}

impl de::Error for Never {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Never(msg.to_string())
    }
}

/// toml's `Spanned<T>` reads as a struct with these private fields around
/// the value: not keys of the file.
const PRIVATE: &str = "$__";

#[derive(Clone, Copy)]
struct Collector<'a> {
    path: &'a str,
    keys: &'a RefCell<Vec<String>>,
}

impl<'de> de::Deserializer<'de> for Collector<'_> {
    type Error = Never;

    /// Untagged enums (a string or a list): a string.
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_str("1s")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_bool(false)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i32(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u16(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u32(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u64(1)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_seq(One(Some(self)))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Never> {
        let first: StrDeserializer<'_, Never> = variants[0].into_deserializer();
        v.visit_enum(first)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_map(Fields {
            parent: self,
            fields: fields.iter(),
            next: None,
        })
    }

    forward_to_deserialize_any! {
        i8 i16 i128 u8 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct map identifier ignored_any
    }
}

/// A sequence of one element (a table array's one table).
struct One<'a>(Option<Collector<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Never;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Never> {
        self.0.take().map(|c| seed.deserialize(c)).transpose()
    }
}

/// A struct's fields, each offered once.
struct Fields<'a> {
    parent: Collector<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    next: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Never;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Never> {
        let Some(f) = self.fields.next() else {
            return Ok(None);
        };
        self.next = Some(f);
        // Borrowed: toml's `Spanned` wants its private field names so.
        seed.deserialize(BorrowedStrDeserializer::<Never>::new(f)).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Never> {
        let f = self.next.take().expect("a key before its value");
        let path = if f.starts_with(PRIVATE) {
            self.parent.path.to_string()
        } else if self.parent.path.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.parent.path)
        };
        if !f.starts_with(PRIVATE) {
            self.parent.keys.borrow_mut().push(path.clone());
        }
        seed.deserialize(Collector {
            path: &path,
            keys: self.parent.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_read_off_the_parser() {
        let keys = super::accepted_keys();
        for k in [
            "global.admin",
            "service.backend.weight",
            "service.group.backend.address",
            "service.route.path_beg",
            "service.http.timeout_client",
            "stats.uri",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("$__")), "{keys:?}");
    }
}
