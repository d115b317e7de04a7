//! `tianzhong firmware` as an engineer runs it: make a key pair, sign a binary, inspect the
//! image with the right key, another key, and after tampering; exit codes and messages.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn tianzhong(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tianzhong"))
        .current_dir(dir)
        .arg("firmware")
        .args(args)
        .output()
        .expect("run tianzhong")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn keygen_sign_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = tianzhong(d, &["keygen", "--key", "fw.key"]);
    assert!(o.status.success(), "{o:?}");
    let mode = std::fs::metadata(d.join("fw.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        tianzhong(d, &["keygen", "--key", "other.key"])
            .status
            .success()
    );
    // Keygen never overwrites.
    let o = tianzhong(d, &["keygen", "--key", "fw.key"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists; not overwriting a key"));

    let firmware: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 256) as u8).collect();
    std::fs::write(d.join("node.bin"), &firmware).unwrap();
    let o = tianzhong(
        d,
        &[
            "sign",
            "--key",
            "fw.key",
            "--model",
            "TZ-GAS-01",
            "--revision",
            "2",
            "--version",
            "1.4.0",
            "--security-counter",
            "3",
            "node.bin",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let image = std::fs::read(d.join("node.bin.tzfw")).unwrap();
    assert_eq!(image.len(), 512 + 20_000 + 148);
    assert_eq!(&image[..4], b"TZFW");
    assert_eq!(
        &image[512..],
        &[&firmware[..], &image[20_512..]].concat()[..]
    );

    let o = tianzhong(d, &["inspect", "node.bin.tzfw", "--pubkey", "fw.key.pub"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    for line in [
        "hardware    TZ-GAS-01 rev 2",
        "version     1.4.0",
        "security    counter 3",
        "payload     20000 bytes",
        "(matches the trailer)",
        "signature   valid (ed25519, verify_strict)",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    // Without a key: the header and hash, and a note that the signature went unchecked.
    let o = tianzhong(d, &["inspect", "node.bin.tzfw"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("signature   not checked (no --pubkey)"));

    // Another key: refused, exit 1.
    let o = tianzhong(
        d,
        &["inspect", "node.bin.tzfw", "--pubkey", "other.key.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("REFUSED: signed with a key this node does not trust"));

    // A private key where a public one belongs: a clear error, exit 2.
    let o = tianzhong(d, &["inspect", "node.bin.tzfw", "--pubkey", "fw.key"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("holds a private key, a public key is needed")
    );

    // One changed payload byte.
    let mut tampered = image.clone();
    tampered[600] ^= 0x01;
    std::fs::write(d.join("tampered.tzfw"), &tampered).unwrap();
    let o = tianzhong(d, &["inspect", "tampered.tzfw", "--pubkey", "fw.key.pub"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("DIFFERS from the trailer's"), "{out}");
    assert!(
        out.contains("REFUSED: SHA-256 of header and payload differs"),
        "{out}"
    );

    // Not an image at all.
    let o = tianzhong(d, &["inspect", "node.bin"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("malformed   header: not a Tianzhong firmware image"));
}
