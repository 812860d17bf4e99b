//! `roundtrip`: arbitrary structure -> write -> read -> equal, for every
//! on-disk structure with a public schema. Byte 0 picks the structure; the
//! rest is its bytes (every bit pattern is a structure value for these
//! fixed-layout types, so bytes -> read -> write must give the same bytes,
//! and write-with-checksum -> read must verify and give the same fields).

use formats::vhd::{DynamicDiskHeader, HardDiskFooter, SectorBitmap};

fn fixed<const N: usize>(rest: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = rest.len().min(N);
    b[..n].copy_from_slice(&rest[..n]);
    b
}

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let b: [u8; 512] = fixed(rest);
            let (f, _) = HardDiskFooter::parse(&b, "fuzz", 0).expect("512 bytes are a footer");
            assert_eq!(f.to_raw_bytes().expect("encode"), b);
            let good = f.to_bytes().expect("encode");
            let (g, ok) = HardDiskFooter::parse(&good, "fuzz", 0).expect("decode");
            assert!(ok, "footer written with its checksum does not verify");
            assert_eq!(
                HardDiskFooter {
                    checksum: f.checksum,
                    ..g
                },
                f
            );
        }
        1 => {
            let b: [u8; 1024] = fixed(rest);
            let (h, _) = DynamicDiskHeader::parse(&b, "fuzz", 0).expect("1024 bytes are a header");
            assert!(h.to_raw_bytes().expect("encode")[..] == b[..]);
            let good = h.to_bytes().expect("encode");
            let good: [u8; 1024] = good.try_into().expect("1024 bytes");
            let (g, ok) = DynamicDiskHeader::parse(&good, "fuzz", 0).expect("decode");
            assert!(
                ok,
                "dynamic header written with its checksum does not verify"
            );
            assert_eq!(
                DynamicDiskHeader {
                    checksum: h.checksum,
                    ..g
                },
                h
            );
        }
        2 => {
            let n = rest.len() / 4 * 4;
            let t =
                formats::vhd::BlockAllocationTable::parse(&rest[..n], (n / 4) as u32, "fuzz", 0)
                    .expect("any multiple of 4 bytes is a BAT");
            assert_eq!(t.entries.len(), n / 4);
            // Written padded with 0xFF to whole sectors.
            let w = t.to_bytes().expect("encode");
            assert_eq!(w.len(), n.div_ceil(512) * 512);
            assert!(w[..n] == rest[..n] && w[n..].iter().all(|b| *b == 0xFF));
        }
        _ => {
            let n = rest.len().min(8192);
            if let Ok(s) = SectorBitmap::parse(&rest[..n], "fuzz", 0) {
                assert!(s.to_bytes().expect("encode")[..] == rest[..n]);
            }
        }
    }
}
