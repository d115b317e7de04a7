//! The image a campaign sends, checked before anything is sent: it parses as a signed image,
//! its signature holds under one of the gateway's trusted keys (`[firmware] trusted_keys`),
//! and it is built for the hardware model of every target node. The node checks all of this
//! again; checking first means a wrong image fails once, with one clear message, rather than
//! as a hundred refusals.

use std::fmt::Write as _;

use tianzhong_protocol::image::signature::{self, KEY_LEN};
use tianzhong_protocol::image::{ImageFile, Refusal};

use super::state::ImageInfo;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks `bytes` against the trusted keys; the image's description, or why it is refused.
pub fn check(bytes: &[u8], trusted: &[[u8; KEY_LEN]]) -> Result<ImageInfo, String> {
    let image = ImageFile::parse(bytes).map_err(|e| format!("image: not a signed image: {e}"))?;
    if trusted.is_empty() {
        return Err(
            "image: the gateway trusts no firmware signing key; add `[firmware] trusted_keys` \
             to its configuration"
                .into(),
        );
    }
    let key_hash = image.trailer.key_hash;
    let Some(key) = trusted.iter().find(|k| signature::key_hash(k) == key_hash) else {
        return Err(format!(
            "image: signed with a key the gateway does not trust (key hash {}); trusted: {}",
            hex(&key_hash),
            trusted
                .iter()
                .map(|k| hex(&signature::key_hash(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let check = image.check(key);
    match check.verdict {
        Ok(()) => {}
        Err(Refusal::DigestMismatch { .. }) => {
            return Err(
                "image: SHA-256 of header and payload differs from the trailer's: the image \
                 was altered or damaged"
                    .into(),
            );
        }
        Err(e) => return Err(format!("image: {e}")),
    }
    let h = &image.header;
    Ok(ImageInfo {
        model: h.hardware.model.as_str().to_owned(),
        revision: h.hardware.revision,
        version: h.version.to_string(),
        security_counter: h.security_counter,
        size: bytes.len(),
        sha256: hex(&check.computed_digest),
        key_hash: hex(&key_hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tianzhong_protocol::registers::profile::FirmwareVersion;
    use tianzhong_simulator::update::{SIM_SIGNING_SECRET, sim_image};

    fn v(minor: u8) -> FirmwareVersion {
        FirmwareVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }

    #[test]
    fn a_signed_image_is_described_and_a_bad_one_refused_with_why() {
        let key = signature::public_key(&SIM_SIGNING_SECRET);
        let image = sim_image("TZ-GD100", v(2), 3, 900);
        let info = check(&image, &[key]).unwrap();
        assert_eq!(
            (info.model.as_str(), info.version.as_str(), info.size),
            ("TZ-GD100", "1.2.0", image.len())
        );
        assert!(check(&image, &[]).unwrap_err().contains("trusts no"));
        let other = signature::public_key(&[7; 32]);
        assert!(
            check(&image, &[other])
                .unwrap_err()
                .contains("does not trust")
        );
        let mut damaged = image.clone();
        damaged[600] ^= 1;
        assert!(check(&damaged, &[key]).unwrap_err().contains("altered"));
        assert!(
            check(&image[..100], &[key])
                .unwrap_err()
                .contains("not a signed image")
        );
    }
}
