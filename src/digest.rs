//! SHA-256 and hex, one implementation of each: the digest of a file (pinned programs,
//! redeemers), of bytes (tokens, strings someone outside chose), and hex as `sha256sum`
//! prints it.

use std::fs::File;
use std::io::Read;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub(crate) type Sha256Digest = [u8; 32];

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

/// SHA-256 of everything readable from `file`, from where it stands.
pub(crate) fn sha256_file(file: &mut File) -> std::io::Result<Sha256Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under a 32-byte `key`: what a sealed `secretbox`
/// proves itself with (see [`crate::protocol::image`]).
pub(crate) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> Sha256Digest {
    // A key shorter than the block is zero-padded to it, then XORed with each pad.
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    inner.update(block.map(|b| b ^ 0x36));
    outer.update(block.map(|b| b ^ 0x5c));
    zeroize::Zeroize::zeroize(&mut block);
    inner.update(message);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Lower-case hex, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_as_sha256sum_prints_it() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"abc").unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hex(&sha256_file(&mut file).unwrap()), expected);
        assert_eq!(hex(&sha256(b"abc")), expected);
        assert_eq!(hex(&[0, 0xff, 0x0a]), "00ff0a");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 has a 4-byte key; case 1's 20 bytes of 0x0b, zero-padded to
        // 32, is the same key to HMAC (keys shorter than the block are padded with zeros).
        let mut key = [0u8; 32];
        key[..20].fill(0x0b);
        let expected = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";
        assert_eq!(hex(&hmac_sha256(&key, b"Hi There")), expected);
    }
}
