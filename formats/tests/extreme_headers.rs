//! Extreme values in every offset, length, count and size field that the
//! read and write paths derive arithmetic from, on small valid images made
//! in memory by the crate's own `create`. Each field is set through the
//! crate's schema types and every checksum that covers it is recomputed,
//! so the parser gets past the checksum and meets the value itself.
//!
//! Then the image is opened read-only and writable, checked, mapped, read
//! in a few places and (writable) written. The property: no panic (the
//! test profile keeps `overflow-checks`, so an unchecked `+` / `*` on a
//! hostile value panics and fails the case), a typed error or success, no
//! single allocation above [`ALLOC_LIMIT`] (a counting global allocator
//! refuses it, which aborts the test binary) and every case quick.
#![allow(unsafe_code)] // the global allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use formats::chain::ChainReader;
use formats::checksum::crc32c_zeroed;
use formats::params::{CreateParams, DiskType, Identity, OpenOptions, ParentSpec};
use formats::vhd::{BlockAllocationTable as VhdBatTable, DynamicDiskHeader, HardDiskFooter};
use formats::vhdx::bat::BatEntry;
use formats::vhdx::header::{self as vhdx_header, VhdxHeader};
use formats::vhdx::log::entry_header::CHECKSUM_FIELD as LOG_CHECKSUM_FIELD;
use formats::vhdx::metadata_items::{self as items, ParentLocatorHeader};
use formats::vhdx::metadata_table::{self as mt, MetadataTable};
use formats::vhdx::region_table as rt;
use formats::vhdx::{DataDescriptor, LogEntryHeader, ParentLocatorKeyValueEntry, ZeroDescriptor};
use formats::{Layer, MemStorage, Storage};
use proptest::prelude::*;
use testdata::schema::{vhd_footers, vhdx_headers, vhdx_region, vhdx_regions};
use testdata::CutStorage;

// ------------------------------------------------- bounded allocations

/// No single allocation may exceed this: every size taken from a file is
/// bounded before it sizes a buffer (ARCHITECTURE.md, hostile input).
const ALLOC_LIMIT: usize = 64 << 20;

/// The system allocator, refusing (null: the process aborts with
/// "memory allocation of N bytes failed") any request above the limit.
struct Bounded;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged, except requests
// above the limit, which return null as an allocator that is out of memory
// may.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Bounded = Bounded;

// ------------------------------------------------------- the images

const MIB: u64 = 1 << 20;

fn create(vhdx: bool, kind: DiskType, parent: bool) -> Vec<u8> {
    let m = MemStorage::new();
    let p = CreateParams {
        virtual_size: 8 * MIB,
        disk_type: kind,
        block_size: Some(if vhdx { MIB as u32 } else { 512 << 10 }),
        parent: parent.then(|| ParentSpec {
            identity: if vhdx {
                Identity::Vhdx {
                    data_write_guid: uuid::Uuid::from_u128(0x1234),
                }
            } else {
                Identity::Vhd {
                    unique_id: [7; 16],
                    timestamp: 1,
                }
            },
            relative_path: ".\\p.vhdx".into(),
            absolute_path: "C:\\x\\p.vhdx".into(),
            file_name: "p.vhdx".into(),
            virtual_size: 8 * MIB,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            virtual_disk_id: None,
            geometry: None,
        }),
        ..Default::default()
    };
    if vhdx {
        formats::vhdx::create(&m, &p).expect("create VHDX");
    } else {
        formats::vhd::create(&m, &p).expect("create VHD");
    }
    // Some data in two blocks, so BAT entries and bitmaps are live.
    let s: Arc<dyn Storage> = Arc::new(m);
    {
        let mut img = formats::image::open("x", Arc::clone(&s), None, rw()).expect("open new");
        img.write_sectors(0, &[0x11; 8192]).expect("write");
        img.write_sectors(3 * MIB + 512, &[0x22; 4096])
            .expect("write");
    }
    let mut v = vec![0u8; s.len().unwrap() as usize];
    s.read_at(&mut v, 0).unwrap();
    v
}

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ignore_checksums: false,
    }
}

/// A VHDX whose header names a log entry not yet applied: the writes of
/// one commit are let through only until the entry and the header naming
/// it are on "disk".
fn pending_log() -> Vec<u8> {
    let base = create(true, DiskType::Dynamic, false);
    for n in 0..64 {
        let cut = Arc::new(CutStorage::new(Arc::new(MemStorage::from_vec(
            base.clone(),
        ))));
        let dynamic: Arc<dyn Storage> = cut.clone();
        let mut img = formats::image::open("x", dynamic, None, rw()).expect("open");
        cut.cut_after(n);
        let _ = img.write_sectors(5 * MIB, &[0x33; 4096]);
        drop(img);
        let v = cut.inner().to_vec();
        let (h, _) = current_vhdx_header(&v);
        if !h.log_guid.is_nil() {
            return v;
        }
    }
    panic!("no cut point left a pending log");
}

fn current_vhdx_header(b: &[u8]) -> (VhdxHeader, usize) {
    let hs: Vec<(VhdxHeader, bool)> = vhdx_header::SLOT_OFFSETS
        .iter()
        .map(|&o| VhdxHeader::parse(&b[o as usize..o as usize + vhdx_header::SIZE]).unwrap())
        .collect();
    let i = match (hs[0].1, hs[1].1) {
        (true, true) => usize::from(hs[1].0.sequence_number > hs[0].0.sequence_number),
        (false, _) => 1,
        _ => 0,
    };
    (hs[i].0.clone(), i)
}

#[derive(Debug, Clone, Copy)]
enum Base {
    VhdxDynamic,
    VhdxFixed,
    VhdxDiff,
    VhdxPendingLog,
    VhdDynamic,
    VhdFixed,
    VhdDiff,
}

fn base(b: Base) -> &'static [u8] {
    static IMAGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let all = IMAGES.get_or_init(|| {
        vec![
            create(true, DiskType::Dynamic, false),
            create(true, DiskType::Fixed, false),
            create(true, DiskType::Dynamic, true),
            pending_log(),
            create(false, DiskType::Dynamic, false),
            create(false, DiskType::Fixed, false),
            create(false, DiskType::Dynamic, true),
        ]
    });
    &all[b as usize]
}

// ------------------------------------------------------- the fields

/// A field of an on-disk structure that an offset, length, count or size
/// is computed from.
#[derive(Debug, Clone, Copy)]
enum Field {
    // VHDX header (both slots).
    LogOffset,
    LogLength,
    LogGuidWithVersion,
    Sequence,
    // VHDX region table (both copies), entry 0 / 1.
    RegionOffset(usize),
    RegionLength(usize),
    RegionCount,
    // VHDX metadata table.
    MetaCount,
    MetaItemOffset(usize),
    MetaItemLength(usize),
    // VHDX metadata items.
    BlockSize,
    VirtualSize,
    LogicalSector,
    PhysicalSector,
    FileFlags,
    LocatorCount,
    LocatorKeyOffset(usize),
    LocatorValueOffset(usize),
    LocatorKeyLength(usize),
    LocatorValueLength(usize),
    // VHDX BAT entry (raw, whole 64 bits).
    VhdxBat(usize),
    // VHDX log entry (the pending-log image): header and descriptor 0.
    LogEntryLength,
    LogEntryTail,
    LogDescriptorCount,
    LogFlushedOffset,
    LogLastOffset,
    LogDescriptorOffset,
    LogZeroLength,
    // VHD footer (both copies).
    DataOffset,
    CurrentSize,
    DiskType,
    // VHD dynamic header.
    TableOffset,
    MaxTableEntries,
    VhdBlockSize,
    // VHD parent locator entry.
    LocatorDataOffset(usize),
    LocatorDataLength(usize),
    LocatorDataSpace(usize),
    // VHD BAT entry.
    VhdBat(usize),
}

/// Values near the edges of every integer width, and powers of two.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u64,
            1,
            2,
            511,
            512,
            513,
            4096,
            MIB - 1,
            MIB,
            MIB + 1,
            256 * MIB,
            512 * MIB,
            u64::from(u16::MAX),
            u64::from(u32::MAX) - 1,
            u64::from(u32::MAX),
            1 << 32,
            64 << 40,
            (64 << 40) + MIB,
            1 << 48,
            (1 << 62) + 1,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + MIB,
            u64::MAX - MIB + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => (0u32..64).prop_map(|k| 1u64 << k),
        1 => any::<u64>(),
    ]
}

fn vhdx_field() -> impl Strategy<Value = Field> {
    use Field::*;
    prop_oneof![
        Just(LogOffset),
        Just(LogLength),
        Just(LogGuidWithVersion),
        Just(Sequence),
        (0usize..2).prop_map(RegionOffset),
        (0usize..2).prop_map(RegionLength),
        Just(RegionCount),
        Just(MetaCount),
        (0usize..6).prop_map(MetaItemOffset),
        (0usize..6).prop_map(MetaItemLength),
        Just(BlockSize),
        Just(VirtualSize),
        Just(LogicalSector),
        Just(PhysicalSector),
        Just(FileFlags),
        Just(LocatorCount),
        (0usize..4).prop_map(LocatorKeyOffset),
        (0usize..4).prop_map(LocatorValueOffset),
        (0usize..4).prop_map(LocatorKeyLength),
        (0usize..4).prop_map(LocatorValueLength),
        (0usize..12).prop_map(VhdxBat),
    ]
}

fn log_field() -> impl Strategy<Value = Field> {
    use Field::*;
    prop_oneof![
        Just(LogEntryLength),
        Just(LogEntryTail),
        Just(LogDescriptorCount),
        Just(LogFlushedOffset),
        Just(LogLastOffset),
        Just(LogDescriptorOffset),
        Just(LogZeroLength),
        Just(LogOffset),
        Just(LogLength),
        (0usize..12).prop_map(VhdxBat),
    ]
}

fn vhd_field() -> impl Strategy<Value = Field> {
    use Field::*;
    prop_oneof![
        Just(DataOffset),
        Just(CurrentSize),
        Just(DiskType),
        Just(TableOffset),
        Just(MaxTableEntries),
        Just(VhdBlockSize),
        (0usize..2).prop_map(LocatorDataOffset),
        (0usize..2).prop_map(LocatorDataLength),
        (0usize..2).prop_map(LocatorDataSpace),
        (0usize..20).prop_map(VhdBat),
    ]
}

// ------------------------------------------- setting a field, by schema

/// File offset of the region `guid`.
fn region(b: &[u8], guid: uuid::Uuid) -> usize {
    vhdx_region(b, guid) as usize
}

fn metadata(b: &[u8]) -> (usize, MetadataTable) {
    let at = region(b, rt::METADATA_GUID);
    let t = MetadataTable::parse(&b[at..at + mt::TABLE_SIZE]).expect("a metadata table");
    (at, t)
}

/// Absolute offset of a metadata item.
fn item(b: &[u8], id: uuid::Uuid) -> Option<usize> {
    let (at, t) = metadata(b);
    let e = t.entries.iter().find(|e| e.item_id == id)?;
    Some(at + e.offset as usize)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

fn vhdx_log_entry(b: &mut [u8], f: impl FnOnce(&mut LogEntryHeader, &mut [u8])) {
    let (h, _) = current_vhdx_header(b);
    let log = h.log_offset as usize;
    let len = h.log_length as usize;
    // The active entry is the one whose LogGuid the header names; this
    // image has exactly one, at the start of the log or after the first.
    let pos = (0..len)
        .step_by(4096)
        .find(|&p| {
            LogEntryHeader::decode(&b[log + p..])
                .is_some_and(|e| e.signature == *b"loge" && e.log_guid == h.log_guid)
        })
        .expect("the pending entry");
    let at = log + pos;
    let mut e = LogEntryHeader::decode(&b[at..]).expect("entry header");
    // An earlier edit may have made EntryLength extreme: the CRC covers
    // what of it lies inside the log.
    let covered = (e.entry_length as usize)
        .min(len - pos)
        .max(LogEntryHeader::SIZE);
    f(&mut e, &mut b[at + LogEntryHeader::SIZE..at + covered]);
    put(b, at, &e.encode());
    // The CRC covers the entry as long as it was; an EntryLength made
    // extreme is judged by its own bound, before any CRC.
    let crc = crc32c_zeroed(&b[at..at + covered], LOG_CHECKSUM_FIELD);
    put(b, at + LOG_CHECKSUM_FIELD, &crc.to_le_bytes());
}

fn vhd_header_at(b: &[u8]) -> Option<usize> {
    let n = b.len();
    let raw: &[u8; 512] = b[n - 512..].try_into().unwrap();
    let (ft, _) = HardDiskFooter::parse(raw, "x", 0).ok()?;
    let at = usize::try_from(ft.data_offset).ok()?;
    (at.checked_add(1024)? <= n).then_some(at)
}

fn vhd_header(b: &mut [u8], f: impl FnOnce(&mut DynamicDiskHeader)) {
    let Some(at) = vhd_header_at(b) else { return };
    let raw: &[u8; 1024] = b[at..at + 1024].try_into().unwrap();
    let (mut h, _) = DynamicDiskHeader::parse(raw, "x", at as u64).expect("a header");
    f(&mut h);
    put(b, at, &h.to_bytes().unwrap());
}

/// Set `field` to `v` (truncated to the field's width); `false` when the
/// image has no such field.
fn set(b: &mut [u8], field: Field, v: u64) -> bool {
    use Field::*;
    let v32 = v as u32;
    let v16 = v as u16;
    match field {
        LogOffset => vhdx_headers(b, |h| h.log_offset = v),
        LogLength => vhdx_headers(b, |h| h.log_length = v32),
        LogGuidWithVersion => vhdx_headers(b, |h| {
            h.log_guid = uuid::Uuid::from_u64_pair(v, !v);
            h.log_version = v16;
        }),
        Sequence => vhdx_headers(b, |h| h.sequence_number = v),
        RegionOffset(i) => vhdx_regions(b, |t| t.entries[i].file_offset = v),
        RegionLength(i) => vhdx_regions(b, |t| t.entries[i].length = v32),
        RegionCount => {
            // The count is re-derived from the entries by `to_bytes`: set
            // it in the raw copies and recompute their CRCs.
            for off in rt::COPY_OFFSETS {
                let at = off as usize;
                put(b, at + 8, &v32.to_le_bytes());
                let crc = crc32c_zeroed(&b[at..at + rt::SIZE], 4);
                put(b, at + 4, &crc.to_le_bytes());
            }
        }
        MetaCount => {
            let at = region(b, rt::METADATA_GUID);
            put(b, at + 10, &v16.to_le_bytes());
        }
        MetaItemOffset(i) | MetaItemLength(i) => {
            let (at, mut t) = metadata(b);
            let Some(e) = t.entries.get_mut(i) else {
                return false;
            };
            match field {
                MetaItemOffset(_) => e.offset = v32,
                _ => e.length = v32,
            }
            put(b, at, &t.to_bytes());
        }
        BlockSize | FileFlags => {
            let at = item(b, items::FILE_PARAMETERS).expect("file parameters");
            let off = if matches!(field, BlockSize) { 0 } else { 4 };
            put(b, at + off, &v32.to_le_bytes());
        }
        VirtualSize => put(
            b,
            item(b, items::VIRTUAL_DISK_SIZE).unwrap(),
            &v.to_le_bytes(),
        ),
        LogicalSector => put(
            b,
            item(b, items::LOGICAL_SECTOR_SIZE).unwrap(),
            &v32.to_le_bytes(),
        ),
        PhysicalSector => put(
            b,
            item(b, items::PHYSICAL_SECTOR_SIZE).unwrap(),
            &v32.to_le_bytes(),
        ),
        LocatorCount
        | LocatorKeyOffset(_)
        | LocatorValueOffset(_)
        | LocatorKeyLength(_)
        | LocatorValueLength(_) => {
            let Some(at) = item(b, items::PARENT_LOCATOR) else {
                return false;
            };
            let mut h = ParentLocatorHeader::decode(&b[at..]).unwrap();
            if let LocatorCount = field {
                h.key_value_count = v16;
                put(b, at, &h.encode());
                return true;
            }
            let i = match field {
                LocatorKeyOffset(i)
                | LocatorValueOffset(i)
                | LocatorKeyLength(i)
                | LocatorValueLength(i) => i,
                _ => unreachable!(),
            };
            if i >= usize::from(h.key_value_count) {
                return false;
            }
            let eat = at + ParentLocatorHeader::SIZE + i * ParentLocatorKeyValueEntry::SIZE;
            let mut e = ParentLocatorKeyValueEntry::decode(&b[eat..]).unwrap();
            match field {
                LocatorKeyOffset(_) => e.key_offset = v32,
                LocatorValueOffset(_) => e.value_offset = v32,
                LocatorKeyLength(_) => e.key_length = v16,
                _ => e.value_length = v16,
            }
            put(b, eat, &e.encode());
        }
        VhdxBat(i) => {
            let at = region(b, rt::BAT_GUID) + i * BatEntry::SIZE;
            put(b, at, &BatEntry { raw: v }.encode());
        }
        LogEntryLength => vhdx_log_entry(b, |e, _| e.entry_length = v32),
        LogEntryTail => vhdx_log_entry(b, |e, _| e.tail = v32),
        LogDescriptorCount => vhdx_log_entry(b, |e, _| e.descriptor_count = v32),
        LogFlushedOffset => vhdx_log_entry(b, |e, _| e.flushed_file_offset = v),
        LogLastOffset => vhdx_log_entry(b, |e, _| e.last_file_offset = v),
        LogDescriptorOffset | LogZeroLength => vhdx_log_entry(b, |_, body| {
            if body[..4] == *b"zero" {
                let mut d = ZeroDescriptor::decode(body).unwrap();
                match field {
                    LogZeroLength => d.zero_length = v,
                    _ => d.file_offset = v,
                }
                put(body, 0, &d.encode());
            } else if let Some(mut d) = DataDescriptor::decode(body) {
                d.file_offset = v;
                put(body, 0, &d.encode());
            }
        }),
        DataOffset => vhd_footers(b, |f| f.data_offset = v),
        CurrentSize => vhd_footers(b, |f| f.current_size = v),
        DiskType => vhd_footers(b, |f| f.disk_type = v32),
        TableOffset => vhd_header(b, |h| h.table_offset = v),
        MaxTableEntries => vhd_header(b, |h| h.max_table_entries = v32),
        VhdBlockSize => vhd_header(b, |h| h.block_size = v32),
        LocatorDataOffset(i) | LocatorDataLength(i) | LocatorDataSpace(i) => {
            let mut used = true;
            vhd_header(b, |h| {
                let e = &mut h.parent_locators[i];
                used = e.is_used();
                match field {
                    LocatorDataOffset(_) => e.platform_data_offset = v,
                    LocatorDataLength(_) => e.platform_data_length = v32,
                    _ => e.platform_data_space = v32,
                }
            });
            return used;
        }
        VhdBat(i) => {
            let Some(at) = vhd_header_at(b) else {
                return false;
            };
            let raw: &[u8; 1024] = b[at..at + 1024].try_into().unwrap();
            let (h, _) = DynamicDiskHeader::parse(raw, "x", at as u64).unwrap();
            let to = h.table_offset as usize;
            let n = h.max_table_entries as usize;
            if i >= n {
                return false;
            }
            let mut bat =
                VhdBatTable::parse(&b[to..to + 4 * n], h.max_table_entries, "x", 0).unwrap();
            bat.entries[i] = v32;
            put(b, to, &bat.to_bytes().unwrap()[..4 * n]);
        }
    }
    true
}

// --------------------------------------------------------- exercising

/// Open, check, map, read and (writable) write; any typed result is fine.
fn exercise(bytes: &[u8]) {
    for writable in [false, true] {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(bytes.to_vec()));
        let opts = OpenOptions {
            writable,
            ignore_checksums: false,
        };
        let Ok(mut img) = formats::image::open("x", Arc::clone(&storage), None, opts) else {
            continue;
        };
        let _ = img.info();
        let _ = img.check();
        let _ = img.parent_locator();
        let size = img.virtual_size();
        let sector = u64::from(img.logical_sector_size()).max(512);
        let ranges = [
            (0, size.min(4 * MIB)),
            (size.saturating_sub(MIB), size.min(MIB)),
            (size / 2 / sector * sector, size.min(64 << 10)),
            (3 * MIB, MIB),
        ];
        for (off, len) in ranges {
            let mut runs = Vec::new();
            let _ = img.map(off, len, &mut runs);
            let _ = img.next_held(off);
            let mut buf = vec![0u8; len.min(MIB) as usize];
            let _ = ChainReader::new(vec![img.as_ref() as &dyn Layer]).read(off, &mut buf);
        }
        // A write allocates a whole block at the end of the file: with a
        // valid but large block size (up to 256 MiB), or a file a log
        // replay legitimately extended, memory storage then grows past
        // this binary's 64 MiB guard, which is no bug. Writes run where
        // the file stays well below the guard.
        let file_len = storage.len().unwrap_or(u64::MAX);
        if writable
            && img.block_size() <= 16 * MIB
            && file_len.saturating_add(2 * img.block_size()) <= 32 * MIB
        {
            let last = size.saturating_sub(4096) / sector * sector;
            for off in [0, 3 * MIB, last] {
                let _ = img.write_sectors(off, &[0x5A; 4096]);
            }
            let _ = img.zero_sectors(MIB, 2 * MIB);
            // The merge batch and the compaction read the layout too.
            let identity = img.identity();
            if let Ok(mut batch) = img.begin_batch() {
                let _ = batch.write(0, &[0x6B; 4096]);
                let _ = batch.zero(MIB, MIB);
                if batch.prepare().is_ok() {
                    let _ = batch.commit(identity);
                }
            }
            let _ = img.compact();
            drop(img);
            // What the writes left must open (or refuse) just as calmly.
            if let Ok(again) = formats::image::open("x", storage, None, OpenOptions::default()) {
                let _ = again.check();
                let _ = again.map(0, again.virtual_size().min(4 * MIB), &mut Vec::new());
            }
        }
    }
}

thread_local! {
    /// Set while a setter runs: its panics are expected and not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `set`, skipped when an earlier edit left the structure it goes through
/// unparseable by this test's own helpers (their slicing then panics;
/// that is the harness, not the crate under test, so it is not a failure).
fn try_set(b: &mut [u8], field: Field, v: u64) -> bool {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    let mut copy = b.to_vec();
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| set(&mut copy, field, v)));
    QUIET.with(|q| q.set(false));
    match r {
        Ok(done) => {
            b.copy_from_slice(&copy);
            done
        }
        Err(_) => false,
    }
}

fn run(b: Base, edits: &[(Field, u64)]) -> Result<(), TestCaseError> {
    let mut bytes = base(b).to_vec();
    for &(field, v) in edits {
        try_set(&mut bytes, field, v);
    }
    let started = Instant::now();
    exercise(&bytes);
    let took = started.elapsed();
    prop_assert!(
        took < Duration::from_secs(5),
        "{b:?} {edits:?} took {took:?}"
    );
    Ok(())
}

proptest! {
    // A fixed seed: CI runs the same 160 cases every time (one seed
    // reproduces a failure); change the seed to explore others.
    #![proptest_config(ProptestConfig {
        cases: 160,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_e47e),
        ..ProptestConfig::default()
    })]

    #[test]
    fn vhdx_extreme_fields(
        b in prop::sample::select(vec![Base::VhdxDynamic, Base::VhdxFixed, Base::VhdxDiff]),
        edits in prop::collection::vec((vhdx_field(), extreme()), 1..4),
    ) {
        run(b, &edits)?;
    }

    #[test]
    fn vhdx_log_extreme_fields(edits in prop::collection::vec((log_field(), extreme()), 1..3)) {
        run(Base::VhdxPendingLog, &edits)?;
    }

    #[test]
    fn vhd_extreme_fields(
        b in prop::sample::select(vec![Base::VhdDynamic, Base::VhdFixed, Base::VhdDiff]),
        edits in prop::collection::vec((vhd_field(), extreme()), 1..4),
    ) {
        run(b, &edits)?;
    }
}

/// Every single field at every listed extreme, once (the random cases
/// above combine them).
#[test]
fn every_field_at_every_extreme() {
    use Field::*;
    let values = [
        0u64,
        1,
        511,
        MIB - 1,
        u64::from(u32::MAX),
        1 << 32,
        (1 << 63) - 1,
        1 << 63,
        u64::MAX - MIB + 1,
        u64::MAX,
    ];
    let vhdx: Vec<Field> = vec![
        LogOffset,
        LogLength,
        LogGuidWithVersion,
        Sequence,
        RegionOffset(0),
        RegionOffset(1),
        RegionLength(0),
        RegionLength(1),
        RegionCount,
        MetaCount,
        MetaItemOffset(0),
        MetaItemOffset(5),
        MetaItemLength(0),
        MetaItemLength(5),
        BlockSize,
        VirtualSize,
        LogicalSector,
        PhysicalSector,
        FileFlags,
        LocatorCount,
        LocatorKeyOffset(0),
        LocatorValueOffset(1),
        LocatorKeyLength(0),
        LocatorValueLength(1),
        VhdxBat(0),
        VhdxBat(8),
    ];
    let log = [
        LogEntryLength,
        LogEntryTail,
        LogDescriptorCount,
        LogFlushedOffset,
        LogLastOffset,
        LogDescriptorOffset,
        LogZeroLength,
    ];
    let vhd = [
        DataOffset,
        CurrentSize,
        DiskType,
        TableOffset,
        MaxTableEntries,
        VhdBlockSize,
        LocatorDataOffset(0),
        LocatorDataLength(0),
        LocatorDataSpace(1),
        VhdBat(0),
        VhdBat(6),
    ];
    let mut n = 0;
    for v in values {
        for f in &vhdx {
            for b in [Base::VhdxDynamic, Base::VhdxFixed, Base::VhdxDiff] {
                run(b, &[(*f, v)]).unwrap();
                n += 1;
            }
        }
        for f in log {
            run(Base::VhdxPendingLog, &[(f, v)]).unwrap();
            n += 1;
        }
        for f in vhd {
            for b in [Base::VhdDynamic, Base::VhdFixed, Base::VhdDiff] {
                run(b, &[(f, v)]).unwrap();
                n += 1;
            }
        }
    }
    println!(
        "{n} single-field cases; largest allocation {} bytes (limit {ALLOC_LIMIT})",
        LARGEST.load(Ordering::Relaxed)
    );
}

/// Whether `bytes` open as an image (read-only, checksums checked).
fn opens(bytes: Vec<u8>) -> bool {
    formats::image::open(
        "x",
        Arc::new(MemStorage::from_vec(bytes)),
        None,
        OpenOptions::default(),
    )
    .is_ok()
}

/// The guard works: a field that must change what the image reads does
/// (so `set` reaches the parser), and the allocator refuses nothing a
/// clean image needs.
#[test]
fn edits_reach_the_parser() {
    let clean = base(Base::VhdxDynamic).to_vec();
    assert!(opens(clean.clone()));
    let mut b = clean.clone();
    assert!(set(&mut b, Field::VirtualSize, 0));
    assert!(!opens(b));
    let mut b = base(Base::VhdDynamic).to_vec();
    assert!(set(&mut b, Field::MaxTableEntries, u64::from(u32::MAX)));
    assert!(!opens(b));
    let mut b = base(Base::VhdxPendingLog).to_vec();
    assert!(set(&mut b, Field::LogDescriptorCount, u64::from(u32::MAX)));
    assert!(!opens(b));
}

/// A write into a block whose BAT entry lies outside the file is refused
/// and leaves the file as it was (no extension to the hostile offset).
#[test]
fn write_into_a_block_outside_the_file_is_refused() {
    let mut b = base(Base::VhdxDynamic).to_vec();
    let e = BatEntry::new(formats::vhdx::bat::PAYLOAD_FULLY_PRESENT, 1 << 40);
    assert!(set(&mut b, Field::VhdxBat(2), e.raw));
    let storage = Arc::new(MemStorage::from_vec(b));
    let dynamic: Arc<dyn Storage> = storage.clone();
    let mut img = formats::image::open("x", dynamic, None, rw()).expect("opens");
    let len = storage.len().unwrap();
    let err = img.write_sectors(2 * MIB, &[1; 4096]).expect_err("refused");
    assert!(
        matches!(
            err,
            formats::Error::Corrupt {
                kind: formats::CorruptionKind::BlockOutsideFile,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(storage.len().unwrap(), len);
}
