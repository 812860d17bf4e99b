//! The known system metadata items and the parent locator.

use binrw::binrw;
use uuid::Uuid;

use super::codec::{check_reserved_flags, guid_from_le, le_codec, unreadable};
use super::metadata_table::MetadataTable;
use crate::{CorruptionKind, Error, Finding, Result, Storage};

pub const FILE_PARAMETERS: Uuid = uuid::uuid!("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
pub const VIRTUAL_DISK_SIZE: Uuid = uuid::uuid!("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
pub const VIRTUAL_DISK_ID: Uuid = uuid::uuid!("BECA12AB-B2E6-4523-93EF-C309E000C746");
pub const LOGICAL_SECTOR_SIZE: Uuid = uuid::uuid!("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
pub const PHYSICAL_SECTOR_SIZE: Uuid = uuid::uuid!("CDA348C7-445D-4471-9CC9-E9885251C556");
pub const PARENT_LOCATOR: Uuid = uuid::uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
/// The only parent locator type defined (a VHDX parent).
pub const VHDX_PARENT_LOCATOR_TYPE: Uuid = uuid::uuid!("B04AEFB7-D19E-4A81-B789-25B8E9445913");

pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;

pub const LEAVE_BLOCK_ALLOCATED: u32 = 1;
pub const HAS_PARENT: u32 = 2;

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParameters {
    pub block_size: u32,
    pub flags: u32,
}
le_codec!(FileParameters, 8);

impl FileParameters {
    pub fn leave_block_allocated(&self) -> bool {
        self.flags & LEAVE_BLOCK_ALLOCATED != 0
    }
    pub fn has_parent(&self) -> bool {
        self.flags & HAS_PARENT != 0
    }
    pub fn block_size_valid(&self) -> bool {
        self.block_size.is_power_of_two()
            && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
    }
}

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualDiskSize {
    pub size: u64,
}
le_codec!(VirtualDiskSize, 8);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualDiskId {
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub id: Uuid,
}
le_codec!(VirtualDiskId, 16);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalSectorSize {
    pub size: u32,
}
le_codec!(LogicalSectorSize, 4);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalSectorSize {
    pub size: u32,
}
le_codec!(PhysicalSectorSize, 4);

pub fn sector_size_valid(s: u32) -> bool {
    s == 512 || s == 4096
}

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocatorHeader {
    #[br(map = guid_from_le)]
    #[bw(map = |g: &Uuid| g.to_bytes_le())]
    pub locator_type: Uuid,
    pub reserved: u16,
    pub key_value_count: u16,
}
le_codec!(ParentLocatorHeader, 20);

#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocatorKeyValueEntry {
    pub key_offset: u32,
    pub value_offset: u32,
    pub key_length: u16,
    pub value_length: u16,
}
le_codec!(ParentLocatorKeyValueEntry, 12);

/// A decoded parent locator item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedParentLocator {
    pub locator_type: Uuid,
    pub entries: Vec<(String, String)>,
}

impl DecodedParentLocator {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Encode as an item: header, entries, then the UTF-16LE strings.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.entries.len();
        let head = ParentLocatorHeader {
            locator_type: self.locator_type,
            reserved: 0,
            key_value_count: n as u16,
        };
        let mut strings = Vec::new();
        let mut table = Vec::new();
        let base = 20 + 12 * n;
        for (k, v) in &self.entries {
            let kb = utf16le(k);
            let vb = utf16le(v);
            let ko = base + strings.len();
            strings.extend_from_slice(&kb);
            let vo = base + strings.len();
            strings.extend_from_slice(&vb);
            table.extend_from_slice(
                &ParentLocatorKeyValueEntry {
                    key_offset: ko as u32,
                    value_offset: vo as u32,
                    key_length: kb.len() as u16,
                    value_length: vb.len() as u16,
                }
                .encode(),
            );
        }
        let mut out = head.encode();
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        out
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Decode a parent locator item; every offset and length is checked against
/// the item. Problems are returned as messages with the offset (relative
/// to the item) where they were found.
pub fn decode_parent_locator(item: &[u8]) -> Result<DecodedParentLocator, (u64, String)> {
    let head = ParentLocatorHeader::decode(item).ok_or_else(|| {
        (
            0,
            "parent locator shorter than its 20-byte header".to_string(),
        )
    })?;
    let n = head.key_value_count as usize;
    let table_end = 20 + 12 * n;
    if table_end > item.len() {
        return Err((
            18,
            format!(
                "KeyValueCount {n} needs {table_end} bytes but the item has {}",
                item.len()
            ),
        ));
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let at = 20 + 12 * i;
        let e = item
            .get(at..)
            .and_then(ParentLocatorKeyValueEntry::decode)
            .ok_or_else(|| (at as u64, "entry outside item".to_string()))?;
        let key = string_at(item, e.key_offset, e.key_length)
            .map_err(|m| (at as u64, format!("key of entry {i}: {m}")))?;
        let value = string_at(item, e.value_offset, e.value_length)
            .map_err(|m| (at as u64, format!("value of entry {i}: {m}")))?;
        if entries.iter().any(|(k, _): &(String, String)| *k == key) {
            return Err((at as u64, format!("duplicate key `{key}`")));
        }
        entries.push((key, value));
    }
    Ok(DecodedParentLocator {
        locator_type: head.locator_type,
        entries,
    })
}

fn string_at(item: &[u8], off: u32, len: u16) -> Result<String, String> {
    if off == 0 || len == 0 {
        return Err(format!("offset {off} / length {len} must both be > 0"));
    }
    if !len.is_multiple_of(2) {
        return Err(format!(
            "length {len} is not a whole number of UTF-16 units"
        ));
    }
    let start = off as usize;
    let end = start
        .checked_add(len as usize)
        .filter(|e| *e <= item.len())
        .ok_or_else(|| {
            format!(
                "bytes {start}+{len} lie outside the {}-byte item",
                item.len()
            )
        })?;
    let units: Vec<u16> = item
        .get(start..end)
        .unwrap_or(&[])
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if units.contains(&0) {
        return Err("contains a NUL character".into());
    }
    String::from_utf16(&units).map_err(|_| "invalid UTF-16".to_string())
}

/// Parse `{xxxxxxxx-...}` case-insensitively.
pub fn parse_braced_guid(s: &str) -> Option<Uuid> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    if inner.len() != 36 {
        return None;
    }
    Uuid::parse_str(inner).ok()
}

pub fn braced_guid(g: Uuid) -> String {
    format!("{{{}}}", g.hyphenated())
}

/// The system items open knows (a required item not among them is
/// unsupported).
pub const SYSTEM_ITEMS: [Uuid; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    VIRTUAL_DISK_ID,
    LOGICAL_SECTOR_SIZE,
    PHYSICAL_SECTOR_SIZE,
    PARENT_LOCATOR,
];

impl FileParameters {
    pub const FLAGS_OFFSET: u64 = 4;
    const FLAGS_DEFINED: u32 = LEAVE_BLOCK_ALLOCATED | HAS_PARENT;

    /// Open step: the item at `off` decodes, with a valid BlockSize and no
    /// reserved flags.
    pub fn validate(item: &[u8], name: &str, off: u64) -> Result<Self> {
        const WHAT: &str = "File Parameters";
        let fp = Self::decode(item).ok_or_else(unreadable(
            CorruptionKind::MetadataItemTooShort,
            name,
            WHAT,
            off,
        ))?;
        if !fp.block_size_valid() {
            return Err(Error::corrupt(
                CorruptionKind::InvalidBlockSize,
                name,
                WHAT,
                off,
                format!(
                    "BlockSize {} is not a power of two in [1 MiB, 256 MiB]",
                    fp.block_size
                ),
            ));
        }
        let kind = CorruptionKind::FileParametersReservedFlags;
        let flags_at = off + Self::FLAGS_OFFSET;
        check_reserved_flags(fp.flags, Self::FLAGS_DEFINED, kind, name, WHAT, flags_at)?;
        Ok(fp)
    }
}

/// Open step: a sector size item (`what`, at `off`) is 512 or 4096.
fn validate_sector_size(size: u32, name: &str, what: &'static str, off: u64) -> Result<u32> {
    if !sector_size_valid(size) {
        return Err(Error::corrupt(
            CorruptionKind::InvalidSectorSize,
            name,
            what,
            off,
            format!("{size} is neither 512 nor 4096"),
        ));
    }
    Ok(size)
}

impl VirtualDiskSize {
    /// Open step: a non-zero multiple of the `lss`-byte logical sector, at
    /// most 64 TiB.
    pub fn validate(item: &[u8], name: &str, off: u64, lss: u32) -> Result<u64> {
        let vsize = Self::decode(item).map_or(0, |x| x.size);
        if vsize == 0 || !vsize.is_multiple_of(u64::from(lss)) || vsize > MAX_VIRTUAL_SIZE {
            return Err(Error::corrupt(CorruptionKind::VirtualSizeInvalid, name, "Virtual Disk Size", off, format!(
                "{vsize} must be a non-zero multiple of the {lss}-byte logical sector and at most 64 TiB")));
        }
        Ok(vsize)
    }
}

/// Open step: the parent locator item at `off` decodes (an error if not);
/// an unknown type, a missing or malformed parent_linkage and no path key
/// are findings.
pub fn validate_parent_locator(
    item: &[u8],
    name: &str,
    off: u64,
    findings: &mut Vec<Finding>,
) -> Result<DecodedParentLocator> {
    const WHAT: &str = "parent locator";
    let loc = decode_parent_locator(item).map_err(|(rel, m)| {
        Error::corrupt(
            CorruptionKind::ParentLocatorInvalid,
            name,
            WHAT,
            off + rel,
            m,
        )
    })?;
    let mut report = |kind, message: String| {
        findings.push(Finding::error(kind, name, WHAT, off, message));
    };
    if loc.locator_type != VHDX_PARENT_LOCATOR_TYPE {
        report(
            CorruptionKind::ParentLocatorType,
            format!("unknown LocatorType {}", loc.locator_type),
        );
    }
    match loc.get("parent_linkage") {
        None => report(
            CorruptionKind::ParentLocatorMissingLinkage,
            "no parent_linkage key".into(),
        ),
        Some(v) if parse_braced_guid(v).is_none() => report(
            CorruptionKind::ParentLocatorLinkageInvalid,
            "parent_linkage is not a {GUID}".into(),
        ),
        Some(_) => {}
    }
    if !["relative_path", "volume_path", "absolute_win32_path"]
        .iter()
        .any(|k| loc.get(k).is_some())
    {
        report(
            CorruptionKind::ParentLocatorNoPath,
            "no relative_path, volume_path or absolute_win32_path key".into(),
        );
    }
    Ok(loc)
}

/// The system items of a file, validated.
#[derive(Debug, Clone)]
pub struct SystemItems {
    pub file_parameters: FileParameters,
    /// Absolute offset of the File Parameters item.
    pub file_parameters_offset: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub virtual_size: u64,
    pub virtual_disk_id: Uuid,
    /// Present when the File Parameters say the file has a parent.
    pub parent_locator: Option<DecodedParentLocator>,
}

/// Open step: read and validate the system items of `table` (at `moff`
/// in `storage`), in the order File Parameters, sector sizes, virtual
/// disk size and ID, parent locator (a differencing file's).
pub fn load_system_items(
    storage: &dyn Storage,
    name: &str,
    table: &MetadataTable,
    moff: u64,
    findings: &mut Vec<Finding>,
) -> Result<SystemItems> {
    let item = |id, what_min| table.read_item(storage, name, moff, id, what_min);
    let (b, fp_off) = item(FILE_PARAMETERS, ("File Parameters", 8))?;
    let file_parameters = FileParameters::validate(&b, name, fp_off)?;
    let (b, off) = item(LOGICAL_SECTOR_SIZE, ("Logical Sector Size", 4))?;
    let size = LogicalSectorSize::decode(&b).map_or(0, |x| x.size);
    let lss = validate_sector_size(size, name, "Logical Sector Size", off)?;
    let (b, off) = item(PHYSICAL_SECTOR_SIZE, ("Physical Sector Size", 4))?;
    let size = PhysicalSectorSize::decode(&b).map_or(0, |x| x.size);
    let pss = validate_sector_size(size, name, "Physical Sector Size", off)?;
    let (b, off) = item(VIRTUAL_DISK_SIZE, ("Virtual Disk Size", 8))?;
    let virtual_size = VirtualDiskSize::validate(&b, name, off, lss)?;
    let (b, off) = item(VIRTUAL_DISK_ID, ("Virtual Disk ID", 16))?;
    let kind = CorruptionKind::MetadataItemTooShort;
    let virtual_disk_id = VirtualDiskId::decode(&b)
        .ok_or_else(unreadable(kind, name, "Virtual Disk ID", off))?
        .id;
    let parent_locator = if file_parameters.has_parent() {
        let (b, off) = item(PARENT_LOCATOR, ("Parent Locator", 20))?;
        Some(validate_parent_locator(&b, name, off, findings)?)
    } else {
        None
    };
    Ok(SystemItems {
        file_parameters,
        file_parameters_offset: fp_off,
        logical_sector_size: lss,
        physical_sector_size: pss,
        virtual_size,
        virtual_disk_id,
        parent_locator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fixed_items_round_trip(bs in any::<u32>(), fl in any::<u32>(), sz in any::<u64>(), id in any::<[u8; 16]>(), s in any::<u32>()) {
            let fp = FileParameters { block_size: bs, flags: fl };
            prop_assert_eq!(FileParameters::decode(&fp.encode()).unwrap(), fp);
            let v = VirtualDiskSize { size: sz };
            prop_assert_eq!(VirtualDiskSize::decode(&v.encode()).unwrap(), v);
            let d = VirtualDiskId { id: Uuid::from_bytes(id) };
            prop_assert_eq!(VirtualDiskId::decode(&d.encode()).unwrap(), d);
            let l = LogicalSectorSize { size: s };
            prop_assert_eq!(LogicalSectorSize::decode(&l.encode()).unwrap(), l);
            let p = PhysicalSectorSize { size: s };
            prop_assert_eq!(PhysicalSectorSize::decode(&p.encode()).unwrap(), p);
        }

        #[test]
        fn locator_round_trip(kv in proptest::collection::btree_map("[a-z_]{1,20}", "[ -~]{1,60}", 0..6), ty in any::<[u8; 16]>()) {
            let loc = DecodedParentLocator {
                locator_type: Uuid::from_bytes(ty),
                entries: kv.into_iter().collect(),
            };
            let bytes = loc.to_bytes();
            prop_assert_eq!(decode_parent_locator(&bytes).unwrap(), loc);
        }

        #[test]
        fn locator_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_parent_locator(&bytes);
        }
    }

    #[test]
    fn guid_text() {
        let g = uuid::uuid!("ff34003b-11ed-4cf8-a166-b2be05e20b80");
        assert_eq!(braced_guid(g), "{ff34003b-11ed-4cf8-a166-b2be05e20b80}");
        assert_eq!(
            parse_braced_guid("{FF34003B-11ED-4CF8-A166-B2BE05E20B80}"),
            Some(g)
        );
        assert_eq!(
            parse_braced_guid("ff34003b-11ed-4cf8-a166-b2be05e20b80"),
            None
        );
    }

    #[test]
    fn locator_out_of_bounds() {
        let loc = DecodedParentLocator {
            locator_type: VHDX_PARENT_LOCATOR_TYPE,
            entries: vec![("parent_linkage".into(), "{x}".into())],
        };
        let mut b = loc.to_bytes();
        b[20..24].copy_from_slice(&5000u32.to_le_bytes());
        assert!(decode_parent_locator(&b).unwrap_err().1.contains("outside"));
        b[18..20].copy_from_slice(&9000u16.to_le_bytes());
        assert!(decode_parent_locator(&b)
            .unwrap_err()
            .1
            .contains("KeyValueCount"));
    }
}
