//! Signed firmware images: the signature primitive against RFC 8032's published vectors, and
//! whole images built, parsed and checked, with every kind of damage refused by its reason.

use proptest::prelude::*;
use tianzhong_protocol::image::signature::{self, SignatureRefusal};
use tianzhong_protocol::image::{
    FileError, HEADER_LEN, HardwareId, HeaderError, ImageFile, ImageHeader, Refusal, TRAILER_LEN,
    TrailerError, check_target,
};
use tianzhong_protocol::registers::profile::FirmwareVersion;

const RFC8032: &str = include_str!("vectors/rfc8032_ed25519.txt");

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Vector {
    secret: [u8; 32],
    public: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
}

fn rfc8032() -> Vec<Vector> {
    RFC8032
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Vector {
                secret: unhex(f[0]).try_into().unwrap(),
                public: unhex(f[1]).try_into().unwrap(),
                message: unhex(f[2]),
                signature: unhex(f[3]).try_into().unwrap(),
            }
        })
        .collect()
}

#[test]
fn rfc8032_vectors_sign_and_verify() {
    let vectors = rfc8032();
    assert_eq!(vectors.len(), 4);
    for v in &vectors {
        assert_eq!(signature::public_key(&v.secret), v.public);
        assert_eq!(signature::sign(&v.secret, &v.message), v.signature);
        assert_eq!(
            signature::verify(&v.public, &v.message, &v.signature),
            Ok(())
        );
    }
}

#[test]
fn rfc8032_vectors_refused_when_anything_changes() {
    for v in rfc8032() {
        // A flipped bit anywhere in R and S (every 13th bit: ed25519 is slow in debug builds).
        for bit in (0..512).step_by(13) {
            let mut s = v.signature;
            s[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                signature::verify(&v.public, &v.message, &s),
                Err(SignatureRefusal::Invalid),
                "signature bit {bit}"
            );
        }
        // Another message.
        let mut m = v.message.clone();
        m.push(0);
        assert_eq!(
            signature::verify(&v.public, &m, &v.signature),
            Err(SignatureRefusal::Invalid)
        );
        // Another vector's key.
        let other = signature::public_key(&[7; 32]);
        assert_eq!(
            signature::verify(&other, &v.message, &v.signature),
            Err(SignatureRefusal::Invalid)
        );
    }
}

/// verify_strict refuses the non-canonical form of a valid signature: S + L, where L is the
/// order of the base point, verifies under a lax check but is a second encoding of the same
/// signature.
#[test]
fn non_canonical_s_refused() {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let v = &rfc8032()[0];
    let mut s = v.signature;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[32 + i]) + u16::from(L[i]) + carry;
        s[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    assert_eq!(
        signature::verify(&v.public, &v.message, &s),
        Err(SignatureRefusal::Invalid)
    );
}

const SECRET: [u8; 32] = [0x42; 32];

fn header() -> ImageHeader {
    ImageHeader {
        hardware: HardwareId::new("TZ-GAS-01", 2).unwrap(),
        version: FirmwareVersion {
            major: 1,
            minor: 4,
            patch: 2,
        },
        security_counter: 5,
        image_size: 0, // set by build
        header_len: 64,
    }
}

fn build(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; ImageFile::len_for(64, payload.len())];
    let n = ImageFile::build(&header(), payload, &SECRET, &mut out).unwrap();
    assert_eq!(n, out.len());
    out
}

#[test]
fn built_image_parses_and_checks() {
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let bytes = build(&payload);
    assert_eq!(bytes.len(), HEADER_LEN + 1000 + TRAILER_LEN);
    let image = ImageFile::parse(&bytes).unwrap();
    assert_eq!(image.header.image_size, 1000);
    assert_eq!(image.payload, &payload[..]);
    // The digest is SHA-256 of the first 1064 bytes, computed independently here.
    assert_eq!(image.trailer.digest, signature::sha256(&bytes[..1064]));
    let public = signature::public_key(&SECRET);
    let check = image.check(&public);
    assert!(check.key_matches);
    assert_eq!(check.verdict, Ok(()));
    // And the signature is a plain RFC 8032 signature of that digest.
    assert_eq!(
        signature::verify(&public, &image.trailer.digest, &image.trailer.signature),
        Ok(())
    );
}

#[test]
fn padded_header_for_an_aligned_payload() {
    let payload = [0x77u8; 700];
    let header = ImageHeader {
        header_len: 512,
        ..header()
    };
    let mut bytes = vec![0u8; ImageFile::len_for(512, payload.len())];
    ImageFile::build(&header, &payload, &SECRET, &mut bytes).unwrap();
    assert_eq!(bytes.len(), 512 + 700 + TRAILER_LEN);
    assert_eq!(&bytes[6..8], &[0x00, 0x02]);
    assert!(bytes[64..512].iter().all(|&b| b == 0));
    assert_eq!(&bytes[512..1212], &payload[..]);
    let image = ImageFile::parse(&bytes).unwrap();
    assert_eq!(image.payload, &payload[..]);
    // The digest covers the padding.
    assert_eq!(image.trailer.digest, signature::sha256(&bytes[..1212]));
    assert_eq!(image.check(&signature::public_key(&SECRET)).verdict, Ok(()));
    bytes[100] = 1;
    assert_eq!(
        ImageFile::parse(&bytes),
        Err(FileError::PaddingNotZero { offset: 100 })
    );
}

#[test]
fn tampered_payload_refused_as_digest_mismatch() {
    let mut bytes = build(&[0xAB; 300]);
    bytes[HEADER_LEN + 17] ^= 0x01;
    let image = ImageFile::parse(&bytes).unwrap();
    assert!(matches!(
        image.check(&signature::public_key(&SECRET)).verdict,
        Err(Refusal::DigestMismatch { .. })
    ));
}

#[test]
fn tampered_and_rehashed_refused_by_signature() {
    // An attacker who also fixes the digest still cannot sign it.
    let mut bytes = build(&[0xAB; 300]);
    bytes[HEADER_LEN + 17] ^= 0x01;
    let digest = signature::sha256(&bytes[..HEADER_LEN + 300]);
    let at = HEADER_LEN + 300 + 48; // the SHA-256 TLV's value
    bytes[at..at + 32].copy_from_slice(&digest);
    let image = ImageFile::parse(&bytes).unwrap();
    assert_eq!(
        image.check(&signature::public_key(&SECRET)).verdict,
        Err(Refusal::Signature(SignatureRefusal::Invalid))
    );
}

#[test]
fn wrong_key_refused() {
    let bytes = build(&[1, 2, 3]);
    let image = ImageFile::parse(&bytes).unwrap();
    let check = image.check(&signature::public_key(&[0x43; 32]));
    assert!(!check.key_matches);
    assert_eq!(check.verdict, Err(Refusal::UnknownKey));
}

#[test]
fn target_checks() {
    let bytes = build(&[0; 100]);
    let h = ImageFile::parse(&bytes).unwrap().header;
    let me = HardwareId::new("TZ-GAS-01", 2).unwrap();
    assert_eq!(check_target(&h, &me, 5, 4096), Ok(()));
    assert_eq!(
        check_target(&h, &me, 6, 4096),
        Err(Refusal::SecurityCounterTooLow {
            current: 6,
            offered: 5
        })
    );
    let other = HardwareId::new("TZ-GAS-01", 3).unwrap();
    assert!(matches!(
        check_target(&h, &other, 0, 4096),
        Err(Refusal::WrongHardware { .. })
    ));
    assert_eq!(
        check_target(&h, &me, 0, 311),
        Err(Refusal::TooLarge {
            size: 312,
            capacity: 311
        })
    );
    let msg = check_target(&h, &other, 0, 4096).unwrap_err().to_string();
    assert_eq!(
        msg,
        "wrong hardware: the image is built for TZ-GAS-01 rev 2, this node is TZ-GAS-01 rev 3"
    );
}

#[test]
fn file_framing_errors() {
    let bytes = build(&[9; 50]);
    assert_eq!(
        ImageFile::parse(&bytes[..bytes.len() - 1]),
        Err(FileError::Truncated {
            needed: bytes.len(),
            len: bytes.len() - 1
        })
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        ImageFile::parse(&longer),
        Err(FileError::TrailingBytes { extra: 1 })
    );
    assert_eq!(
        ImageFile::parse(&bytes[..10]),
        Err(FileError::Header(HeaderError::TooShort { len: 10 }))
    );
    let mut bad_trailer = bytes.clone();
    bad_trailer[HEADER_LEN + 50] = b'X';
    assert!(matches!(
        ImageFile::parse(&bad_trailer),
        Err(FileError::Trailer(TrailerError::BadMagic { .. }))
    ));
    let mut small = [0u8; 10];
    assert_eq!(
        ImageFile::build(&header(), &[0; 50], &SECRET, &mut small),
        Err(FileError::BufferTooSmall {
            needed: bytes.len()
        })
    );
}

proptest! {
    /// Parsing is total: arbitrary bytes never panic.
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ImageFile::parse(&bytes);
        let _ = ImageHeader::parse(&bytes);
        let _ = tianzhong_protocol::image::Trailer::parse(&bytes);
    }

    /// Any single changed byte of a signed image is caught: the file no longer parses, or it
    /// parses and fails its check.
    #[test]
    fn any_changed_byte_is_caught(at in 0usize..(HEADER_LEN + 40 + TRAILER_LEN), xor in 1u8..) {
        let mut bytes = build(&[0x5A; 40]);
        bytes[at] ^= xor;
        if let Ok(image) = ImageFile::parse(&bytes) {
            prop_assert!(image.check(&signature::public_key(&SECRET)).verdict.is_err());
        }
    }
}
