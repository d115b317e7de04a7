//! Links each binary for its own flash region, and puts the trusted public key into the
//! bootloader.
//!
//! cortex-m-rt's link.x includes `memory.x`, which declares every region and then includes
//! `flash-region.x`; each binary finds its own `flash-region.x` (aliasing FLASH to its region)
//! in a directory that only its linker searches.
//!
//! The bootloader trusts the ed25519 public key in the key file named by `TZ_BOOT_PUBKEY` (as
//! written by `tianzhong firmware keygen`). Without it, the build embeds the TEST key in
//! `keys/test-signing.key.pub`, whose private half is in the repository, and says so.
use std::{env, fs, path::PathBuf};

/// Binary, and the memory.x region it links as FLASH.
const BINARIES: [(&str, &str); 3] = [
    ("tianzhong-board-stm32f405", "SLOT_A"),
    ("tianzhong-board-stm32f405-slot-b", "SLOT_B"),
    ("tianzhong-bootloader-stm32f405", "BOOTLOADER"),
];

const TEST_KEY: &str = "keys/test-signing.key.pub";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    for (bin, region) in BINARIES {
        let dir = out.join(bin);
        fs::create_dir_all(&dir).expect("per-binary link directory");
        fs::write(
            dir.join("flash-region.x"),
            format!("REGION_ALIAS(\"FLASH\", {region});\n"),
        )
        .expect("write flash-region.x");
        println!("cargo:rustc-link-arg-bin={bin}=-L{}", dir.display());
    }
    trusted_key(&out);
}

fn trusted_key(out: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=TZ_BOOT_PUBKEY");
    let (path, test) = match env::var("TZ_BOOT_PUBKEY") {
        Ok(p) if !p.is_empty() => (PathBuf::from(p), false),
        _ => (PathBuf::from(TEST_KEY), true),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("TZ_BOOT_PUBKEY: cannot read {}: {e}", path.display()));
    let key = parse_public_key(&text)
        .unwrap_or_else(|why| panic!("TZ_BOOT_PUBKEY: {}: {why}", path.display()));
    if test && env::var_os("CARGO_FEATURE_QEMU").is_none() {
        println!(
            "cargo:warning=the bootloader trusts the TEST signing key ({TEST_KEY}); set TZ_BOOT_PUBKEY to the fleet's public key file for real nodes"
        );
    }
    fs::write(
        out.join("trusted_key.rs"),
        format!(
            "/// The ed25519 public key images must be signed with (from {}).\n\
             pub const PUBLIC_KEY: [u8; 32] = {key:?};\n\
             /// Whether it is the repository's test key.\n\
             pub const IS_TEST_KEY: bool = {test};\n",
            path.display()
        ),
    )
    .expect("write trusted_key.rs");
}

/// The key in a public key file: the BEGIN line, 64 hex digits, the END line (the format of
/// the gateway's `firmware_cli`, which the build script cannot depend on).
fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [begin, hex, end] = lines.as_slice() else {
        return Err("not a key file: expected three lines".into());
    };
    if *begin != "-----BEGIN TIANZHONG ED25519 PUBLIC KEY-----"
        || *end != "-----END TIANZHONG ED25519 PUBLIC KEY-----"
    {
        return Err("not a Tianzhong ed25519 public key file".into());
    }
    if hex.len() != 64 || !hex.is_ascii() {
        return Err("the key line is not 64 hex digits".into());
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "the key line is not 64 hex digits".to_string())?;
    }
    Ok(key)
}
