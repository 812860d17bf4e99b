//! The file type identifier at offset 0: the `vhdxfile` signature and a
//! creator string kept only for diagnostics.

use binrw::binrw;

use super::codec::le_codec;

pub const SIGNATURE: [u8; 8] = *b"vhdxfile";
/// The identifier owns the first 64 KiB; only 520 bytes carry fields.
pub const REGION_SIZE: usize = 64 * 1024;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    pub signature: [u8; 8],
    /// UTF-16LE, possibly NUL-terminated.
    #[br(parse_with = crate::byte_array::read)]
    pub creator: [u8; 512],
}
le_codec!(FileIdentifier, 520);

impl FileIdentifier {
    pub fn new(creator: &str) -> Self {
        let mut c = [0u8; 512];
        // Keep one UTF-16 NUL at the end so the text is always terminated.
        for (i, u) in creator.encode_utf16().take(255).enumerate() {
            c[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
        }
        FileIdentifier {
            signature: SIGNATURE,
            creator: c,
        }
    }

    pub fn signature_ok(&self) -> bool {
        self.signature == SIGNATURE
    }

    /// The creator text up to the first NUL (lossy on bad UTF-16).
    pub fn creator_string(&self) -> String {
        let units: Vec<u16> = self
            .creator
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// The whole 64 KiB identifier region.
    pub fn to_region_bytes(&self) -> Vec<u8> {
        let mut v = self.encode();
        v.resize(REGION_SIZE, 0);
        v
    }
}

/// The identifier, both headers and both region tables: the least a VHDX
/// file holds.
pub const HEADER_SECTION_SIZE: u64 = 5 * 64 * 1024;

impl FileIdentifier {
    /// Open step 1: the file holds the header section and starts with the
    /// `vhdxfile` signature.
    pub fn load(storage: &dyn crate::Storage, name: &str, file_len: u64) -> crate::Result<Self> {
        use crate::{CorruptionKind, Error};
        const WHAT: &str = "file type identifier";
        if file_len < HEADER_SECTION_SIZE {
            return Err(Error::corrupt(
                CorruptionKind::FileTooShort,
                name,
                "file",
                0,
                format!("file is {file_len} bytes, shorter than the 320 KiB header section"),
            ));
        }
        let raw = super::codec::read_vec(storage, name, 0, Self::SIZE)?;
        let kind = CorruptionKind::FileIdentifierSignature;
        let ident = Self::decode(&raw).ok_or_else(super::codec::unreadable(kind, name, WHAT, 0))?;
        if !ident.signature_ok() {
            return Err(Error::corrupt(
                kind,
                name,
                WHAT,
                0,
                "signature is not `vhdxfile`",
            ));
        }
        Ok(ident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(sig in any::<[u8; 8]>(), creator in proptest::collection::vec(any::<u8>(), 512)) {
            let mut c = [0u8; 512];
            c.copy_from_slice(&creator);
            let f = FileIdentifier { signature: sig, creator: c };
            let bytes = f.encode();
            prop_assert_eq!(bytes.len(), 520);
            prop_assert_eq!(FileIdentifier::decode(&bytes).unwrap(), f);
        }
    }

    #[test]
    fn creator_text() {
        let f = FileIdentifier::new("chainfold 0.1");
        assert!(f.signature_ok());
        assert_eq!(f.creator_string(), "chainfold 0.1");
        assert_eq!(&f.to_region_bytes()[..8], b"vhdxfile");
    }
}
