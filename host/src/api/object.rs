//! Request bodies are JSON objects.
//!
//! serde reads a struct from a JSON array too, taking its fields in order:
//! `POST …/tokens` with `["eve", 60]` minted a token for eve lasting 60 s.
//! The API's bodies are objects, and an array is refused as one.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};

/// `T`, read from a JSON object only.
#[derive(Debug, Default)]
pub(crate) struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                // The API's error mapping reads "expected struct" as "the
                // body is not an object".
                f.write_str("struct (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Pair {
        a: String,
        b: u32,
    }

    #[test]
    fn an_object_is_read_and_an_array_of_the_fields_is_not() {
        assert_eq!(serde_json::from_str::<Object<Pair>>(r#"{"a": "x", "b": 1}"#).unwrap().0, Pair { a: "x".into(), b: 1 });
        assert!(serde_json::from_str::<Pair>(r#"["x", 1]"#).is_ok(), "what plain serde accepts");
        let e = serde_json::from_str::<Object<Pair>>(r#"["x", 1]"#).unwrap_err().to_string();
        assert!(e.starts_with("invalid type: sequence, expected struct"), "{e}");
        let e = serde_json::from_str::<Object<Pair>>(r#"{"a": "x"}"#).unwrap_err().to_string();
        assert!(e.starts_with("missing field `b`"), "{e}");
    }
}
