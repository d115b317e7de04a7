//! `tianzhong firmware`: the engineer's tools for signed node firmware.
//!
//! ```text
//! tianzhong firmware keygen --key fw-signing.key        # fw-signing.key (0600) + fw-signing.key.pub
//! tianzhong firmware sign --key fw-signing.key --model TZ-GAS-01 --revision 2 \
//!     --version 1.4.0 --security-counter 3 firmware.bin  # writes firmware.bin.tzfw
//! tianzhong firmware inspect firmware.bin.tzfw --pubkey fw-signing.key.pub
//! ```
//!
//! The image format is [`tianzhong_protocol::image`]: the same code parses and checks it here
//! as on the node, so what `inspect` says about an image is what a node will say.
//!
//! # Key files
//!
//! One key per file, as text: a label line, the 32 key bytes as 64 lowercase hex digits, an
//! end line (PEM's framing without base64 or DER: short enough to read and to compare by eye).
//!
//! ```text
//! -----BEGIN TIANZHONG ED25519 PRIVATE KEY-----
//! 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60
//! -----END TIANZHONG ED25519 PRIVATE KEY-----
//! ```
//!
//! The private key is the RFC 8032 secret (seed); the public key file says `PUBLIC KEY`.
//! `keygen` creates the private key file with mode 0600 and refuses to overwrite either file.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tianzhong_protocol::image::signature::{self, KEY_LEN};
use tianzhong_protocol::image::{HardwareId, ImageFile, ImageHeader, TRAILER_LEN};
use tianzhong_protocol::registers::profile::FirmwareVersion;

/// The `firmware` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FirmwareCommand {
    /// Make a signing key pair: KEY (private, mode 0600) and KEY.pub.
    Keygen {
        /// Path of the private key file; the public key goes beside it with `.pub` appended.
        #[arg(long)]
        key: PathBuf,
    },
    /// Wrap a built firmware binary in a signed image.
    Sign {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
        /// Hardware model the image is for, as the node profile's model (e.g. TZ-GAS-01).
        #[arg(long)]
        model: String,
        /// Hardware revision the image is for.
        #[arg(long, default_value_t = 1)]
        revision: u16,
        /// Firmware version, MAJOR.MINOR.PATCH.
        #[arg(long)]
        version: String,
        /// Security counter: raise it when the image fixes a vulnerability, so nodes refuse
        /// older images.
        #[arg(long)]
        security_counter: u32,
        /// Header length with padding: where the payload starts (512 aligns a Cortex-M4
        /// vector table).
        #[arg(long, default_value_t = 512)]
        header_len: u16,
        /// Output file (default: the input with `.tzfw` appended).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The firmware binary, as linked for its slot.
        image: PathBuf,
    },
    /// Show an image's header and check its hash, and its signature against a public key.
    Inspect {
        /// The image file.
        image: PathBuf,
        /// A public key file to check the signature against.
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
}

/// Why a firmware command failed.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareCliError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key file is malformed.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line value is invalid.
    #[error("{0}")]
    Argument(String),
    /// The operating system's random source failed.
    #[error("no randomness for the key: {0}")]
    Random(String),
    /// The image could not be built.
    #[error("cannot build the image: {0}")]
    Build(String),
}

/// Which kind of key a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// The private key (RFC 8032 secret).
    Private,
    /// The public key.
    Public,
}

impl KeyKind {
    fn label(self) -> &'static str {
        match self {
            KeyKind::Private => "TIANZHONG ED25519 PRIVATE KEY",
            KeyKind::Public => "TIANZHONG ED25519 PUBLIC KEY",
        }
    }
}

/// The text of a key file.
pub fn encode_key(kind: KeyKind, key: &[u8; KEY_LEN]) -> String {
    format!(
        "-----BEGIN {l}-----\n{}\n-----END {l}-----\n",
        hex(key),
        l = kind.label()
    )
}

/// The key in a key file's text, or why there is none.
pub fn parse_key(kind: KeyKind, text: &str) -> Result<[u8; KEY_LEN], String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let begin = format!("-----BEGIN {}-----", kind.label());
    let end = format!("-----END {}-----", kind.label());
    let other = match kind {
        KeyKind::Private => KeyKind::Public,
        KeyKind::Public => KeyKind::Private,
    };
    if lines.first() == Some(&format!("-----BEGIN {}-----", other.label()).as_str()) {
        return Err(format!(
            "holds a {} key, a {} key is needed",
            word(other),
            word(kind)
        ));
    }
    match lines.as_slice() {
        [b, body, e] if *b == begin && *e == end => {
            let bytes = unhex(body).ok_or_else(|| {
                "the key line is not hexadecimal digits (two per byte)".to_string()
            })?;
            <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "the key is {} bytes, an ed25519 key is {KEY_LEN}",
                    bytes.len()
                )
            })
        }
        _ => Err(format!(
            "not a key file: expected the lines `{begin}`, 64 hex digits, `{end}`"
        )),
    }
}

fn word(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Private => "private",
        KeyKind::Public => "public",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, FirmwareCliError> {
    fs::read(path).map_err(|source| FirmwareCliError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a key file.
pub fn read_key(kind: KeyKind, path: &Path) -> Result<[u8; KEY_LEN], FirmwareCliError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| FirmwareCliError::KeyFile {
        path: path.to_owned(),
        reason: "not a text file".into(),
    })?;
    parse_key(kind, &text).map_err(|reason| FirmwareCliError::KeyFile {
        path: path.to_owned(),
        reason,
    })
}

fn create(path: &Path, mode: u32, text: &str) -> Result<(), FirmwareCliError> {
    let io = |source| FirmwareCliError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The public key file beside a private key file.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Makes a key pair from the operating system's random source: the private key at `key`
/// (mode 0600), the public key beside it. Returns the public key.
pub fn keygen(key: &Path) -> Result<[u8; KEY_LEN], FirmwareCliError> {
    let public_path = public_key_path(key);
    for p in [key, public_path.as_path()] {
        if p.exists() {
            return Err(FirmwareCliError::Argument(format!(
                "{} exists; not overwriting a key",
                p.display()
            )));
        }
    }
    let mut secret = [0u8; KEY_LEN];
    getrandom::getrandom(&mut secret).map_err(|e| FirmwareCliError::Random(e.to_string()))?;
    let public = signature::public_key(&secret);
    create(key, 0o600, &encode_key(KeyKind::Private, &secret))?;
    create(&public_path, 0o644, &encode_key(KeyKind::Public, &public))?;
    Ok(public)
}

/// Parses `MAJOR.MINOR.PATCH` within the node profile's ranges (u8, u8, u16).
pub fn parse_version(s: &str) -> Result<FirmwareVersion, FirmwareCliError> {
    let bad = || {
        FirmwareCliError::Argument(format!(
            "version `{s}` is not MAJOR.MINOR.PATCH (0-255, 0-255, 0-65535)"
        ))
    };
    let parts: Vec<&str> = s.split('.').collect();
    let [major, minor, patch] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(FirmwareVersion {
        major: major.parse().map_err(|_| bad())?,
        minor: minor.parse().map_err(|_| bad())?,
        patch: patch.parse().map_err(|_| bad())?,
    })
}

/// What to sign.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// Hardware model.
    pub model: String,
    /// Hardware revision.
    pub revision: u16,
    /// Firmware version.
    pub version: FirmwareVersion,
    /// Security counter.
    pub security_counter: u32,
    /// Header length with padding.
    pub header_len: u16,
}

/// Builds the signed image of `payload`.
pub fn sign(
    request: &SignRequest,
    payload: &[u8],
    secret: &[u8; KEY_LEN],
) -> Result<Vec<u8>, FirmwareCliError> {
    let hardware = HardwareId::new(&request.model, request.revision)
        .map_err(|e| FirmwareCliError::Argument(format!("--model: {e}")))?;
    let header = ImageHeader {
        hardware,
        version: request.version,
        security_counter: request.security_counter,
        image_size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        header_len: request.header_len,
    };
    // Encoding checks every field (size, header length) with the reasons the node would give.
    header
        .encode()
        .map_err(|e| FirmwareCliError::Build(e.to_string()))?;
    let mut out = vec![0u8; ImageFile::len_for(request.header_len, payload.len())];
    ImageFile::build(&header, payload, secret, &mut out)
        .map_err(|e| FirmwareCliError::Build(e.to_string()))?;
    Ok(out)
}

/// What `inspect` found.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The report, one `name  value` line per fact.
    pub text: String,
    /// Whether the image is well-formed, its hash holds and, with a key given, its signature.
    pub ok: bool,
}

/// Inspects an image's bytes, checking the signature when `public` is given.
pub fn inspect(bytes: &[u8], public: Option<&[u8; KEY_LEN]>) -> Inspection {
    let mut t = String::new();
    let image = match ImageFile::parse(bytes) {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(t, "malformed   {e}");
            return Inspection { text: t, ok: false };
        }
    };
    let h = &image.header;
    let line = |t: &mut String, k: &str, v: String| {
        let _ = writeln!(t, "{k:<11} {v}");
    };
    line(&mut t, "size", format!("{} bytes", bytes.len()));
    line(
        &mut t,
        "format",
        format!(
            "TZFW v{}, header {} bytes, trailer {TRAILER_LEN} bytes",
            tianzhong_protocol::image::header::FORMAT_VERSION,
            h.header_len
        ),
    );
    line(&mut t, "hardware", h.hardware.to_string());
    line(&mut t, "version", h.version.to_string());
    line(
        &mut t,
        "security",
        format!("counter {}", h.security_counter),
    );
    line(&mut t, "payload", format!("{} bytes", h.image_size));
    let computed = image.digest();
    let mut ok = computed == image.trailer.digest;
    line(
        &mut t,
        "sha-256",
        if ok {
            format!("{} (matches the trailer)", hex(&computed))
        } else {
            format!(
                "{} DIFFERS from the trailer's {}: altered or damaged",
                hex(&computed),
                hex(&image.trailer.digest)
            )
        },
    );
    line(&mut t, "key hash", hex(&image.trailer.key_hash));
    match public {
        None => line(&mut t, "signature", "not checked (no --pubkey)".into()),
        Some(public) => match image.check(public).verdict {
            Ok(()) => line(
                &mut t,
                "signature",
                format!(
                    "valid (ed25519, verify_strict) for key hash {}",
                    hex(&signature::key_hash(public))
                ),
            ),
            Err(r) => {
                ok = false;
                line(&mut t, "signature", format!("REFUSED: {r}"));
            }
        },
    }
    Inspection { text: t, ok }
}

/// Runs a `firmware` subcommand, printing what it did.
pub fn run(command: FirmwareCommand) -> ExitCode {
    match run_inner(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(command: FirmwareCommand) -> Result<ExitCode, FirmwareCliError> {
    match command {
        FirmwareCommand::Keygen { key } => {
            let public = keygen(&key)?;
            println!("private key  {} (mode 0600)", key.display());
            println!("public key   {}", public_key_path(&key).display());
            println!("key hash     {}", hex(&signature::key_hash(&public)));
            Ok(ExitCode::SUCCESS)
        }
        FirmwareCommand::Sign {
            key,
            model,
            revision,
            version,
            security_counter,
            header_len,
            output,
            image,
        } => {
            let secret = read_key(KeyKind::Private, &key)?;
            let request = SignRequest {
                model,
                revision,
                version: parse_version(&version)?,
                security_counter,
                header_len,
            };
            let payload = read(&image)?;
            let signed = sign(&request, &payload, &secret)?;
            let output = output.unwrap_or_else(|| {
                let mut p = image.as_os_str().to_owned();
                p.push(".tzfw");
                PathBuf::from(p)
            });
            fs::write(&output, &signed).map_err(|source| FirmwareCliError::Io {
                path: output.clone(),
                source,
            })?;
            println!("signed       {}", output.display());
            print!(
                "{}",
                inspect(&signed, Some(&signature::public_key(&secret))).text
            );
            Ok(ExitCode::SUCCESS)
        }
        FirmwareCommand::Inspect { image, pubkey } => {
            let public = pubkey
                .as_deref()
                .map(|p| read_key(KeyKind::Public, p))
                .transpose()?;
            let bytes = read(&image)?;
            let report = inspect(&bytes, public.as_ref());
            println!("image       {}", image.display());
            print!("{}", report.text);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// RFC 8032 section 7.1, TEST 1.
    const RFC_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn request() -> SignRequest {
        SignRequest {
            model: "TZ-GAS-01".into(),
            revision: 2,
            version: parse_version("1.4.0").unwrap(),
            security_counter: 3,
            header_len: 512,
        }
    }

    #[test]
    fn key_file_round_trip_with_the_rfc_key() {
        let secret: [u8; 32] = unhex(RFC_SECRET).unwrap().try_into().unwrap();
        let text = encode_key(KeyKind::Private, &secret);
        assert_eq!(
            text,
            format!(
                "-----BEGIN TIANZHONG ED25519 PRIVATE KEY-----\n{RFC_SECRET}\n-----END TIANZHONG ED25519 PRIVATE KEY-----\n"
            )
        );
        assert_eq!(parse_key(KeyKind::Private, &text), Ok(secret));
        assert_eq!(hex(&signature::public_key(&secret)), RFC_PUBLIC);
    }

    #[test]
    fn malformed_key_files_named() {
        let public = encode_key(KeyKind::Public, &[1; 32]);
        assert_eq!(
            parse_key(KeyKind::Private, &public),
            Err("holds a public key, a private key is needed".into())
        );
        let short = public.replace(&hex(&[1; 32]), &hex(&[1; 31]));
        assert_eq!(
            parse_key(KeyKind::Public, &short),
            Err("the key is 31 bytes, an ed25519 key is 32".into())
        );
        let not_hex = public.replace("01", "zz");
        assert!(
            parse_key(KeyKind::Public, &not_hex)
                .unwrap_err()
                .contains("not hexadecimal")
        );
        assert!(
            parse_key(KeyKind::Public, "")
                .unwrap_err()
                .starts_with("not a key file")
        );
    }

    #[test]
    fn keygen_writes_a_private_file_only_the_owner_reads() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fw.key");
        let public = keygen(&key).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = read_key(KeyKind::Private, &key).unwrap();
        assert_eq!(signature::public_key(&secret), public);
        assert_eq!(
            read_key(KeyKind::Public, &public_key_path(&key)).unwrap(),
            public
        );
        // Never overwritten.
        assert!(keygen(&key).unwrap_err().to_string().contains("exists"));
        // Two key pairs differ.
        let other = keygen(&dir.path().join("other.key")).unwrap();
        assert_ne!(other, public);
    }

    #[test]
    fn signed_image_checks_on_the_node_side_code() {
        let secret = [0x5A; 32];
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let bytes = sign(&request(), &payload, &secret).unwrap();
        // Checked with the parser and the ed25519 verification, independently of `inspect`.
        let image = ImageFile::parse(&bytes).unwrap();
        assert_eq!(image.payload, &payload[..]);
        assert_eq!(image.header.header_len, 512);
        assert_eq!(
            signature::verify(
                &signature::public_key(&secret),
                &signature::sha256(&bytes[..512 + 3000]),
                &image.trailer.signature
            ),
            Ok(())
        );
        let report = inspect(&bytes, Some(&signature::public_key(&secret)));
        assert!(report.ok, "{}", report.text);
        assert!(report.text.contains("hardware    TZ-GAS-01 rev 2"));
        assert!(report.text.contains("version     1.4.0"));
        assert!(report.text.contains("security    counter 3"));
        assert!(report.text.contains("signature   valid"));
    }

    #[test]
    fn inspect_refuses_with_reasons() {
        let secret = [0x5A; 32];
        let mut bytes = sign(&request(), &[7; 100], &secret).unwrap();
        let other = inspect(&bytes, Some(&signature::public_key(&[0x6B; 32])));
        assert!(!other.ok);
        assert!(
            other
                .text
                .contains("signature   REFUSED: signed with a key this node does not trust")
        );
        bytes[520] ^= 1;
        let altered = inspect(&bytes, None);
        assert!(!altered.ok);
        assert!(altered.text.contains("DIFFERS from the trailer's"));
        let truncated = inspect(&bytes[..300], None);
        assert!(!truncated.ok);
        assert!(truncated.text.starts_with("malformed   truncated image"));
    }

    #[test]
    fn bad_arguments_named() {
        for v in ["1.2", "1.2.3.4", "256.0.0", "a.b.c", ""] {
            assert!(parse_version(v).is_err(), "{v}");
        }
        let mut r = request();
        r.model = "天中".into();
        assert!(
            sign(&r, &[1], &[0; 32])
                .unwrap_err()
                .to_string()
                .starts_with("--model")
        );
        let mut r = request();
        r.header_len = 100;
        assert!(
            sign(&r, &[1], &[0; 32])
                .unwrap_err()
                .to_string()
                .contains("header length field is 100")
        );
        assert!(
            sign(&request(), &[], &[0; 32])
                .unwrap_err()
                .to_string()
                .contains("image size 0")
        );
    }
}
