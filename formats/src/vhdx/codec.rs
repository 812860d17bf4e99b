//! Glue shared by every on-disk structure: GUID field mapping and the
//! fixed-size little-endian encode/decode helpers each binrw type gets.

/// GUID fields are stored Microsoft-style (Data1..3 little-endian).
pub(crate) fn guid_from_le(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes_le(bytes)
}

/// Gives a fixed-size `#[binrw]` little-endian type `SIZE`, `decode` (from
/// the first `SIZE` bytes of a buffer; `None` when it is too short) and
/// `encode` (exactly `SIZE` bytes). Checksums are handled by the callers
/// that know which bytes a checksum covers.
macro_rules! le_codec {
    ($t:ty, $size:expr) => {
        impl $t {
            pub const SIZE: usize = $size;

            pub fn decode(bytes: &[u8]) -> Option<Self> {
                let b = bytes.get(..$size)?;
                <$t as binrw::BinRead>::read_le(&mut std::io::Cursor::new(b)).ok()
            }

            pub fn encode(&self) -> Vec<u8> {
                let mut c = std::io::Cursor::new(Vec::with_capacity($size));
                // Writing plain integers into a Vec cannot fail.
                let _ = binrw::BinWrite::write_le(self, &mut c);
                let mut v = c.into_inner();
                v.resize($size, 0);
                v
            }
        }
    };
}
pub(crate) use le_codec;

/// A `size`-byte table (region table, metadata table): `header` first,
/// then the 32-byte entries, as many as fit.
pub(crate) fn table_bytes(
    size: usize,
    header: &[u8],
    entries: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<u8> {
    let mut v = vec![0u8; size];
    v[..header.len()].copy_from_slice(header);
    for (i, e) in entries.into_iter().enumerate() {
        let at = header.len() + 32 * i;
        if at + 32 > size {
            break;
        }
        v[at..at + 32].copy_from_slice(&e);
    }
    v
}

/// Round `v` up to a multiple of `to` (a power of two), `None` on overflow.
pub(crate) fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x & !(to - 1))
}

pub(crate) const MIB: u64 = 1 << 20;

/// `len` bytes at `offset`.
pub(crate) fn read_vec(
    s: &dyn crate::Storage,
    name: &str,
    offset: u64,
    len: usize,
) -> crate::Result<Vec<u8>> {
    use crate::error::IoContext;
    let mut v = vec![0u8; len];
    s.read_at(&mut v, offset).ctx(name)?;
    Ok(v)
}

/// Two byte ranges overlap.
pub(crate) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// The error for a structure of file `name` at `offset` too short to
/// decode, for `ok_or_else`.
pub(crate) fn unreadable<'a>(
    kind: crate::CorruptionKind,
    name: &'a str,
    structure: &'static str,
    offset: u64,
) -> impl FnOnce() -> crate::Error + 'a {
    move || crate::Error::corrupt(kind, name, structure, offset, "unreadable")
}

/// Corruption `kind` of `structure` when `flags` (the field at `offset`
/// of file `name`) has bits set outside `defined`.
pub(crate) fn check_reserved_flags(
    flags: u32,
    defined: u32,
    kind: crate::CorruptionKind,
    name: &str,
    structure: &'static str,
    offset: u64,
) -> crate::Result<()> {
    if flags & !defined != 0 {
        return Err(crate::Error::corrupt(
            kind,
            name,
            structure,
            offset,
            format!("reserved flag bits set ({flags:#x})"),
        ));
    }
    Ok(())
}
