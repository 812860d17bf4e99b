//! The one place where binrw schemas meet byte buffers, so every parse error
//! is turned into an error that names the file, the structure and the offset.

use std::io::Cursor;

use binrw::meta::{ReadEndian, WriteEndian};
use binrw::{BinRead, BinWrite};

use crate::{CorruptionKind, Error, Finding, Result};

/// Decode `T` from `bytes` (a structure found at `offset` in `file`).
pub fn decode<T>(bytes: &[u8], file: &str, structure: &'static str, offset: u64) -> Result<T>
where
    T: BinRead + ReadEndian,
    for<'a> T::Args<'a>: Default,
{
    T::read(&mut Cursor::new(bytes)).map_err(|e| undecodable(e, file, structure, offset))
}

fn undecodable(e: binrw::Error, file: &str, structure: &'static str, offset: u64) -> Error {
    Error::corrupt(
        CorruptionKind::Undecodable,
        file,
        structure,
        offset,
        format!("cannot decode: {e}"),
    )
}

/// Decode `T` with explicit binrw arguments (counts of variable tables).
pub fn decode_args<'a, T>(
    bytes: &[u8],
    args: T::Args<'a>,
    file: &str,
    structure: &'static str,
    offset: u64,
) -> Result<T>
where
    T: BinRead + ReadEndian,
{
    T::read_args(&mut Cursor::new(bytes), args).map_err(|e| undecodable(e, file, structure, offset))
}

/// Encode `T` into a fresh buffer.
pub fn encode<T>(value: &T, structure: &'static str) -> Result<Vec<u8>>
where
    T: BinWrite + WriteEndian,
    for<'a> T::Args<'a>: Default,
{
    let mut cur = Cursor::new(Vec::new());
    value
        .write(&mut cur)
        .map_err(|e| Error::InvalidParameter(format!("cannot encode {structure}: {e}")))?;
    Ok(cur.into_inner())
}

/// Encode a fixed-size structure: exactly `size` bytes, or an error (a
/// schema that does not add up).
pub fn encode_sized<T>(value: &T, structure: &'static str, size: usize) -> Result<Vec<u8>>
where
    T: BinWrite + WriteEndian,
    for<'a> T::Args<'a>: Default,
{
    let v = encode(value, structure)?;
    if v.len() != size {
        return Err(Error::InvalidParameter(format!(
            "{structure} encoded to {} bytes",
            v.len()
        )));
    }
    Ok(v)
}

/// Store the VHD checksum of `bytes` (which skips its own field) in the
/// big-endian field at `field`.
pub fn put_checksum(bytes: &mut [u8], field: usize) {
    let sum = crate::checksum::vhd_checksum(bytes, field);
    bytes[field..field + 4].copy_from_slice(&sum.to_be_bytes());
}

/// Where a structure an open goes on lies, and what errors call it: the
/// open steps report at its fields.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub structure: &'static str,
    pub offset: u64,
}

impl Place {
    /// Where field `field_offset` of the structure lies in the file.
    pub fn field_at(&self, field_offset: u64) -> u64 {
        self.offset + field_offset
    }

    /// Corruption of the structure, reported at its field `field_offset`.
    pub fn corrupt(
        &self,
        kind: CorruptionKind,
        name: &str,
        field_offset: u64,
        message: impl Into<String>,
    ) -> Error {
        let at = self.field_at(field_offset);
        Error::corrupt(kind, name, self.structure, at, message)
    }
}

/// Round `v` up to a multiple of 512, None on overflow.
pub fn align512(v: u64) -> Option<u64> {
    v.checked_add(511).map(|x| x & !511)
}

/// A stored checksum that does not match (`mismatch`, an
/// `Error::Checksum`): the error, unless checksums are ignored; then it
/// becomes an error finding and the structure is used as it is. The
/// footer and the dynamic disk header follow this one rule.
pub fn tolerate_checksum(
    mismatch: Error,
    ignore_checksums: bool,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let Error::Checksum {
        file,
        structure,
        offset,
        kind,
        stored,
        computed,
    } = &mismatch
    else {
        return Err(mismatch);
    };
    if !ignore_checksums {
        return Err(mismatch);
    }
    findings.push(Finding::error(
        *kind,
        file,
        structure,
        *offset,
        format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); accepted because checksums are ignored"
        ),
    ));
    Ok(())
}

/// Where the first byte lies that `set` changes in the encoding of `zero`:
/// the offset of the field `set` fills with ones. Tests pin the named
/// field offsets to the binrw schemas with it.
#[cfg(test)]
pub fn field_offset<T: Clone>(
    zero: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    set: impl FnOnce(&mut T),
) -> Option<u64> {
    let mut t = zero.clone();
    set(&mut t);
    let (a, b) = (encode(zero), encode(&t));
    a.iter().zip(&b).position(|(x, y)| x != y).map(|i| i as u64)
}
