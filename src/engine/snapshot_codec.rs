//! The engine `State` section of a snapshot: a compact binary serde format.
//!
//! `State` (with the topology, alert and incident tables) already derives serde, so rather than
//! a hand-written encoder that must track every private field of the engine and the CMDB, this
//! is a small non-self-describing serde format in the style of bincode: fields in declaration
//! order, unsigned integers as LEB128 varints, signed as zigzag varints, strings and sequences
//! length-prefixed, enums by variant index. It is several times smaller and faster than JSON
//! and needs no new crate. It is only for types whose serde shape is fixed (no
//! `skip_serializing_if`, no untagged or internally tagged enums), which holds for `State`.
//!
//! Decoding never trusts a length: sequence and string lengths are checked against the bytes
//! that remain, and every malformed input is a [`CodecError`], never a panic.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, SeqAccess, Visitor};
use serde::ser::{self, Serialize};

use super::State;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("engine state section: {0}")]
    Message(String),
    #[error("engine state section ends early (offset {0})")]
    Eof(usize),
    #[error("engine state section: varint too long (offset {0})")]
    Varint(usize),
    #[error(
        "engine state section: length {len} exceeds the {remaining} bytes left (offset {offset})"
    )]
    Length {
        len: u64,
        remaining: usize,
        offset: usize,
    },
    #[error("engine state section: {0} bytes after the state")]
    Trailing(usize),
    #[error("engine state section: {0} is not supported by this format")]
    Unsupported(&'static str),
}

impl ser::Error for CodecError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CodecError::Message(msg.to_string())
    }
}

impl de::Error for CodecError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CodecError::Message(msg.to_string())
    }
}

/// Appends the binary encoding of `state` to `out`: the `State` value, then the fields added
/// since the section's format was fixed (the consumed stream's identity), which a section
/// written before them simply lacks.
pub fn write_state(state: &State, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut e = Encoder { out };
    state.serialize(&mut e)?;
    state.consumed.stream.serialize(&mut e)
}

/// Reads what [`write_state`] wrote; the whole of `bytes` must be the state.
pub fn read_state(bytes: &[u8]) -> Result<State, CodecError> {
    let mut d = Decoder { bytes, pos: 0 };
    let mut state: State = serde::Deserialize::deserialize(&mut d)?;
    if d.pos < bytes.len() {
        state.consumed.stream = serde::Deserialize::deserialize(&mut d)?;
    }
    state.index_closable();
    match bytes.len() - d.pos {
        0 => Ok(state),
        n => Err(CodecError::Trailing(n)),
    }
}

/// Encodes any fixed-shape serde value (exposed for tests of the format itself).
pub fn to_vec<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    v.serialize(&mut Encoder { out: &mut out })?;
    Ok(out)
}

/// Decodes any fixed-shape serde value written by [`to_vec`].
pub fn from_slice<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let mut d = Decoder { bytes, pos: 0 };
    let v = T::deserialize(&mut d)?;
    match bytes.len() - d.pos {
        0 => Ok(v),
        n => Err(CodecError::Trailing(n)),
    }
}

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    fn uvar(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn ivar(&mut self, v: i64) {
        self.uvar(((v << 1) ^ (v >> 63)) as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.uvar(b.len() as u64);
        self.out.extend_from_slice(b);
    }

    fn len(&mut self, len: Option<usize>) -> Result<(), CodecError> {
        let len = len.ok_or(CodecError::Unsupported("a sequence of unknown length"))?;
        self.uvar(len as u64);
        Ok(())
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = CodecError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), CodecError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), CodecError> {
        self.ivar(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), CodecError> {
        self.ivar(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), CodecError> {
        self.ivar(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), CodecError> {
        self.ivar(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), CodecError> {
        self.out.push(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), CodecError> {
        self.uvar(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), CodecError> {
        self.uvar(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), CodecError> {
        self.uvar(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), CodecError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CodecError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CodecError> {
        self.uvar(v.into());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CodecError> {
        self.bytes(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CodecError> {
        self.bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CodecError> {
        self.out.push(0);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), CodecError> {
        self.out.push(1);
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CodecError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), CodecError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
    ) -> Result<(), CodecError> {
        self.uvar(idx.into());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        self.uvar(idx.into());
        v.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, CodecError> {
        self.len(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CodecError> {
        self.uvar(idx.into());
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, CodecError> {
        self.len(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        idx: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CodecError> {
        self.uvar(idx.into());
        Ok(self)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = CodecError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CodecError> {
                v.serialize(&mut **self)
            }
            fn end(self) -> Result<(), CodecError> {
                Ok(())
            }
        }
    };
}
compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);

impl ser::SerializeMap for &mut Encoder<'_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CodecError> {
        k.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CodecError> {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CodecError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Encoder<'_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        v.serialize(&mut **self)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), CodecError> {
        // A skipped field would shift every later one: only `#[serde(skip)]` (which never
        // reaches here) is allowed.
        Err(CodecError::Message(format!(
            "field {key} is skipped conditionally"
        )))
    }
    fn end(self) -> Result<(), CodecError> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Encoder<'_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        v.serialize(&mut **self)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), CodecError> {
        Err(CodecError::Message(format!(
            "field {key} is skipped conditionally"
        )))
    }
    fn end(self) -> Result<(), CodecError> {
        Ok(())
    }
}

struct Decoder<'de> {
    bytes: &'de [u8],
    pos: usize,
}

impl<'de> Decoder<'de> {
    fn u8(&mut self) -> Result<u8, CodecError> {
        // Not `ok_or`: that builds (and drops) an error for every byte read.
        let Some(&b) = self.bytes.get(self.pos) else {
            return Err(CodecError::Eof(self.pos));
        };
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], CodecError> {
        let start = self.pos;
        let end = start.checked_add(n).ok_or(CodecError::Eof(start))?;
        let s = self.bytes.get(start..end).ok_or(CodecError::Eof(start))?;
        self.pos = end;
        Ok(s)
    }

    fn uvar(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(CodecError::Varint(start));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Varint(start))
    }

    fn ivar(&mut self) -> Result<i64, CodecError> {
        let u = self.uvar()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length, refused when larger than what remains (every item takes at least a byte,
    /// except unit-like ones, which `State` does not hold in sequences).
    fn len(&mut self) -> Result<usize, CodecError> {
        let offset = self.pos;
        let n = self.uvar()?;
        let remaining = self.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(len) if len <= remaining => Ok(len),
            _ => Err(CodecError::Length {
                len: n,
                remaining,
                offset,
            }),
        }
    }

    fn narrow<T: TryFrom<u64>>(&self, v: u64) -> Result<T, CodecError> {
        T::try_from(v).map_err(|_| CodecError::Message(format!("integer {v} out of range")))
    }

    fn narrow_i<T: TryFrom<i64>>(&self, v: i64) -> Result<T, CodecError> {
        T::try_from(v).map_err(|_| CodecError::Message(format!("integer {v} out of range")))
    }

    fn str(&mut self) -> Result<&'de str, CodecError> {
        let n = self.len()?;
        let offset = self.pos;
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map_err(|_| CodecError::Message(format!("string at offset {offset} is not UTF-8")))
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = CodecError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(CodecError::Unsupported("a self-describing value"))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        match self.u8()? {
            0 => v.visit_bool(false),
            1 => v.visit_bool(true),
            b => Err(CodecError::Message(format!("bool byte {b}"))),
        }
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.ivar()?;
        v.visit_i8(self.narrow_i(x)?)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.ivar()?;
        v.visit_i16(self.narrow_i(x)?)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.ivar()?;
        v.visit_i32(self.narrow_i(x)?)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_i64(self.ivar()?)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_u8(self.u8()?)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.uvar()?;
        v.visit_u16(self.narrow(x)?)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.uvar()?;
        v.visit_u32(self.narrow(x)?)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_u64(self.uvar()?)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        v.visit_f32(f32::from_le_bytes(b))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        v.visit_f64(f64::from_le_bytes(b))
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let x = self.uvar()?;
        let c = u32::try_from(x)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| CodecError::Message(format!("char {x}")))?;
        v.visit_char(c)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_borrowed_str(self.str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_borrowed_str(self.str()?)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let n = self.len()?;
        v.visit_borrowed_bytes(self.take(n)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        self.deserialize_bytes(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        match self.u8()? {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            b => Err(CodecError::Message(format!("option byte {b}"))),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let n = self.len()?;
        v.visit_seq(Items { d: self, left: n })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, n: usize, v: V) -> Result<V::Value, CodecError> {
        v.visit_seq(Items { d: self, left: n })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        n: usize,
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_seq(Items { d: self, left: n })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, CodecError> {
        let n = self.len()?;
        v.visit_map(Items { d: self, left: n })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_seq(Items {
            d: self,
            left: fields.len(),
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_enum(self)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(CodecError::Unsupported("an identifier"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(CodecError::Unsupported("an ignored value"))
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The items of a sequence, map or struct, counted down.
struct Items<'a, 'de> {
    d: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = CodecError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, CodecError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.d).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = CodecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, CodecError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.d).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, CodecError> {
        seed.deserialize(&mut *self.d)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = CodecError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), CodecError> {
        let idx = self.uvar()?;
        let idx: u32 = self.narrow(idx)?;
        let value = seed.deserialize(idx.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = CodecError;
    fn unit_variant(self) -> Result<(), CodecError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, CodecError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, n: usize, v: V) -> Result<V::Value, CodecError> {
        v.visit_seq(Items { d: self, left: n })
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, CodecError> {
        v.visit_seq(Items {
            d: self,
            left: fields.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let state = State::default();
        let mut buf = Vec::new();
        write_state(&state, &mut buf).expect("encode");
        assert_eq!(read_state(&buf).expect("decode"), state);
        // Every cut fails except the one that leaves exactly the `State` value, which is how
        // a section written before stream identities looks.
        let mut legacy = Vec::new();
        state
            .serialize(&mut Encoder { out: &mut legacy })
            .expect("encode");
        for cut in 0..buf.len() {
            let read = read_state(&buf[..cut]);
            assert_eq!(read.is_ok(), cut == legacy.len(), "cut at {cut}");
        }
        let mut long = buf.clone();
        long.push(0);
        assert!(matches!(read_state(&long), Err(CodecError::Trailing(1))));
        // A huge claimed length is refused before anything is allocated.
        assert!(from_slice::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(from_slice::<String>(&[2, 0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_working_state_round_trips() {
        use crate::engine::{Engine, Input};
        use crate::model::{Alert, Fingerprint, Severity, Status};
        let mut engine = Engine::new(crate::rules::Rules::embedded().expect("rules"));
        let mut facts = Vec::new();
        for i in 0..200i64 {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("service".to_string(), format!("svc-{}", i % 7));
            let name = format!("Check{}", i % 5);
            let alert = Alert {
                fingerprint: Fingerprint::native("t", &name, None, &labels, None),
                source: "t".into(),
                name,
                ci: Some(format!("host-{}", i % 11)),
                severity: Severity::Major,
                status: if i % 9 == 0 {
                    Status::Resolved
                } else {
                    Status::Firing
                },
                summary: None,
                labels,
                annotations: Default::default(),
                starts_at: 1_000 + i,
                ends_at: None,
                dedup_key: None,
                received_at: 1_000 + i,
            };
            engine.begin_batch();
            let _ = engine.handle(Input::Alert(&alert), &mut facts);
        }
        let state = engine.state();
        assert!(!state.incidents.is_empty());
        let mut buf = Vec::new();
        write_state(state, &mut buf).expect("encode");
        assert_eq!(&read_state(&buf).expect("decode"), state);
    }
}
