//! `[u8; N]` fields of the binrw schemas (reserved areas, names, log
//! data), read as one block. binrw reads an array element by element (a
//! `read_exact` of one byte each: 4016 calls for a VHDX header's reserved
//! area); its writer already copies a byte array whole. Same bytes, same
//! error (an unexpected end of input) as the element-wise read.
//!
//! Use as `#[br(parse_with = crate::byte_array::read)]`.

use binrw::io::{Read, Seek};
use binrw::{BinResult, Endian};

pub(crate) fn read<R: Read + Seek, const N: usize>(
    reader: &mut R,
    _: Endian,
    _: (),
) -> BinResult<[u8; N]> {
    let mut b = [0u8; N];
    reader.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use binrw::{binread, BinRead};
    use std::io::Cursor;

    #[binread]
    #[br(little)]
    #[derive(Debug, PartialEq)]
    struct Block {
        a: u16,
        #[br(parse_with = super::read)]
        b: [u8; 5],
    }

    #[binread]
    #[br(little)]
    #[derive(Debug, PartialEq)]
    struct Elementwise {
        a: u16,
        b: [u8; 5],
    }

    /// The same value from whole input, the same error from short input
    /// (its text names the type and the source line, nothing else differs),
    /// as binrw's own array read.
    #[test]
    fn reads_like_the_elementwise_array() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7];
        let x = Block::read(&mut Cursor::new(&bytes[..])).unwrap();
        let y = Elementwise::read(&mut Cursor::new(&bytes[..])).unwrap();
        assert_eq!((x.a, x.b), (y.a, y.b));
        for n in 0..bytes.len() {
            let e1 = Block::read(&mut Cursor::new(&bytes[..n])).unwrap_err();
            let e2 = Elementwise::read(&mut Cursor::new(&bytes[..n])).unwrap_err();
            let text = |e: binrw::Error, name: &str| -> String {
                e.to_string()
                    .replace(name, "T")
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("at formats/"))
                    .collect()
            };
            assert_eq!(text(e1, "Block"), text(e2, "Elementwise"), "{n} bytes");
        }
    }
}
