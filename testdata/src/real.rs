//! What `../shared/testdata/README.md` lists for each real image, in one
//! table: the command-line tests (`xtask/tests/real_images.rs`) and the
//! driver tests (`formats/tests/vhdx_real.rs`) check the same values.
//! Each row names only what differs from the usual image of its format.

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One real image and the README's values for it.
#[derive(Debug, Clone, Copy)]
pub struct RealImage {
    /// The file name without the compression suffix (what
    /// [`crate::real_image_cached`] takes).
    pub name: &'static str,
    /// `vhd` or `vhdx`, as `info --json` names it.
    pub format: &'static str,
    /// `fixed`, `dynamic` or `differencing`.
    pub disk_type: &'static str,
    pub virtual_size: u64,
    /// 0 for a fixed VHD, which has no blocks.
    pub block_size: u64,
    pub logical: u32,
    pub physical: u32,
    /// sha256 of the whole virtual content (after a pending log's
    /// replay); None where not available.
    pub sha256: Option<&'static str>,
    /// Hashing the whole disk takes long (10 GiB and more): only in the
    /// opt-in slow tests.
    pub slow: bool,
}

/// The usual dynamic VHD: 2 MiB blocks, 512-byte sectors.
const VHD: RealImage = RealImage {
    name: "",
    format: "vhd",
    disk_type: "dynamic",
    virtual_size: 10 * MIB,
    block_size: 2 * MIB,
    logical: 512,
    physical: 512,
    sha256: None,
    slow: false,
};

/// The usual dynamic VHDX (Windows 10): 32 MiB blocks, 512/4096 sectors.
const VHDX: RealImage = RealImage {
    name: "",
    format: "vhdx",
    disk_type: "dynamic",
    virtual_size: GIB,
    block_size: 32 * MIB,
    logical: 512,
    physical: 4096,
    sha256: None,
    slow: false,
};

/// The two empty 127 GiB dynamic VHDs (Hyper-V 2012 R2, Virtual PC) read
/// alike: all zeros at the footer's size.
const EMPTY_127G: RealImage = RealImage {
    virtual_size: 136365211648,
    sha256: Some("dcb4f171cbcedb416d5da34e48d5a17ecc2828a0f14c416de3669b8463cb1d8e"),
    slow: true,
    ..VHD
};

pub const REAL_IMAGES: &[RealImage] = &[
    RealImage {
        name: "fixed.vhd",
        disk_type: "fixed",
        block_size: 0,
        sha256: Some("459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"),
        ..VHD
    },
    RealImage {
        name: "dynamic.vhd",
        sha256: Some("ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784"),
        ..VHD
    },
    RealImage {
        name: "fixed.vhdx",
        disk_type: "fixed",
        virtual_size: 10 * MIB,
        block_size: 2 * MIB,
        sha256: Some("bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"),
        ..VHDX
    },
    RealImage {
        name: "dynamic.vhdx",
        virtual_size: 10 * MIB,
        sha256: Some("8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"),
        ..VHDX
    },
    RealImage {
        name: "vhdx-log-replay.vhdx",
        sha256: Some("3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e"),
        ..VHDX
    },
    RealImage {
        name: "btrfs.vhdx",
        sha256: Some("0b959f9cb4e18348ad8b646f152178282542c8304f02fddf765e3fd1a1de6864"),
        ..VHDX
    },
    RealImage {
        name: "swap.vhdx",
        virtual_size: 10 * GIB,
        sha256: Some("60dd30b4c74361427d1089510cabb36e2eeda0cc4747f467ea43173acd358c49"),
        slow: true,
        ..VHDX
    },
    RealImage {
        name: "lvm2.vhdx",
        virtual_size: 10 * GIB,
        sha256: Some("f7dc6812a3b12a35f3ec895ce981bd59ff4558270fc80cd812c9cd522bff1295"),
        slow: true,
        ..VHDX
    },
    RealImage {
        name: "iotest-dynamic-1G.vhdx",
        sha256: Some("d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"),
        ..VHDX
    },
    RealImage {
        name: "iotest-dirtylog-10G-4M.vhdx",
        virtual_size: 10 * GIB,
        block_size: MIB,
        physical: 512,
        sha256: Some("179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f"),
        slow: true,
        ..VHDX
    },
    RealImage {
        name: "hyperv2012r2-dynamic.vhd",
        ..EMPTY_127G
    },
    RealImage {
        name: "virtualpc-dynamic.vhd",
        ..EMPTY_127G
    },
    RealImage {
        name: "d2v-zerofilled.vhd",
        virtual_size: 263454720,
        sha256: Some("1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"),
        ..VHD
    },
    RealImage {
        name: "differencing.avhdx",
        disk_type: "differencing",
        virtual_size: 8 * GIB,
        block_size: 2 * MIB,
        ..VHDX
    },
];

/// The row of the real image `name`.
pub fn real_image(name: &str) -> &'static RealImage {
    REAL_IMAGES
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} is not in REAL_IMAGES"))
}
