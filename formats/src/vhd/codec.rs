//! The one place where binrw schemas meet byte buffers, so every parse error
//! is turned into an error that names the file, the structure and the offset.

use std::io::Cursor;

use binrw::meta::{ReadEndian, WriteEndian};
use binrw::{BinRead, BinWrite};

use crate::{CorruptionKind, Error, Result};

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

/// Round `v` up to a multiple of 512, None on overflow.
pub fn align512(v: u64) -> Option<u64> {
    v.checked_add(511).map(|x| x & !511)
}
