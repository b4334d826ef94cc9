//! How a `secretbox` run from the daemon's sealed image proves that it is that image.
//!
//! A process that executes a file its user cannot read is non-dumpable (the kernel's rule):
//! no process of the same uid may read its `/proc/PID/environ`, `fd/`, `mem` or `exe`, nor
//! ptrace it. The daemon runs `secretbox` that way for its tasks, from an execute-only copy
//! in sealed memory. But then the daemon, of the same uid, cannot read the peer's
//! `/proc/PID/exe` either, which is how it checks any other redeemer's program.
//!
//! So the image carries a key: `secretbox` holds a slot ([`KEY_SLOT`]: a marker, then 32
//! zero bytes) that the daemon fills with a fresh random key in its copy before sealing it.
//! Nobody of the user can read that copy (execute-only) nor the memory of a process running
//! it (non-dumpable), so only the genuine image's code knows the key. It proves itself with
//! `HMAC-SHA256(key, "backupnizza-secretbox-proof\0PID\0START")` in the [`PROOF_HEADER`]
//! header: bound to its own pid and start time, which the daemon reads from the kernel for
//! the connection's peer, so a proof is worth nothing to another process. A `secretbox` run
//! from disk has an empty slot, sends no proof, and is checked by its `exe` as before.

/// The header a sealed `secretbox` sends its proof in (lower-case hex).
pub const PROOF_HEADER: &str = "secretbox-proof";

/// The slot's marker, stored backwards so that only the slot itself, never the code that
/// looks for it, holds the marker as it is written into a binary.
const MARKER_BACKWARDS: &[u8; 32] = b"\0TOLS-YEK-EGAMI-XOBTERCES-AZZINP";

/// The key slot of the `secretbox` binary: the marker, then the key (zeros on disk).
/// `#[used]`: kept even though it is read only through [`image_key`]'s opaque pointer.
#[used]
static KEY_SLOT: [u8; 64] = {
    let mut slot = [0u8; 64];
    let mut i = 0;
    while i < 32 {
        slot[i] = MARKER_BACKWARDS[31 - i];
        i += 1;
    }
    slot
};

/// The marker, the right way round, as the daemon looks for it in a `secretbox` binary.
#[cfg_attr(not(target_os = "linux"), allow(dead_code, reason = "only Linux seals"))]
pub(crate) fn marker() -> [u8; 32] {
    let mut m = *MARKER_BACKWARDS;
    m.reverse();
    m
}

/// The key this process's image carries, if it was sealed by a daemon (`None` on disk).
pub fn image_key() -> Option<zeroize::Zeroizing<[u8; 32]>> {
    // Read through an opaque pointer: the compiler must not fold the zeros it was built
    // with into the code, since the daemon changes them in its copy of the file.
    let slot: &[u8; 64] = std::hint::black_box(&KEY_SLOT);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&slot[32..]);
    (key.iter().any(|b| *b != 0)).then_some(key)
}

/// The proof a process with `pid`, started at `start` (clock ticks since boot, as
/// `/proc/PID/stat` says), gives under `key`.
pub fn proof(key: &[u8; 32], pid: u32, start: u64) -> [u8; 32] {
    let message = format!("backupnizza-secretbox-proof\0{pid}\0{start}");
    crate::digest::hmac_sha256(key, message.as_bytes())
}

/// A proof as the header carries it: lower-case hex.
pub fn proof_text(proof: &[u8; 32]) -> String {
    crate::digest::hex(proof)
}

/// The proof in a header's text; `None` unless it is 64 hex digits.
pub fn parse_proof(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Writes `key` into the slot of a `secretbox` binary's bytes. Fails unless the binary has
/// exactly one empty slot (an older or foreign build has none).
#[cfg_attr(not(target_os = "linux"), allow(dead_code, reason = "only Linux seals"))]
pub(crate) fn fill_slot(binary: &mut [u8], key: &[u8; 32]) -> Result<(), &'static str> {
    let mut slot = marker().to_vec();
    slot.extend_from_slice(&[0u8; 32]);
    let mut found = memchr::memmem::find_iter(binary, &slot);
    let Some(at) = found.next() else { return Err("it has no key slot (an older build?)") };
    if found.next().is_some() {
        return Err("it has more than one key slot");
    }
    binary[at + 32..at + 64].copy_from_slice(key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_slot_is_found_once_and_an_unfilled_binary_has_no_key() {
        // This test binary links the slot: the process's own image is "on disk", keyless.
        assert!(image_key().is_none());
        let mut bytes = b"prefix".to_vec();
        bytes.extend_from_slice(&KEY_SLOT);
        bytes.extend_from_slice(b"suffix");
        let key = [7u8; 32];
        fill_slot(&mut bytes, &key).unwrap();
        assert_eq!(&bytes[6 + 32..6 + 64], &key);
        // Filled, it is no longer an empty slot.
        assert!(fill_slot(&mut bytes, &key).is_err());
        let mut twice = KEY_SLOT.repeat(2);
        assert_eq!(fill_slot(&mut twice, &key), Err("it has more than one key slot"));
        assert_ne!(proof(&key, 1, 2), proof(&key, 1, 3));
        assert_ne!(proof(&key, 1, 2), proof(&[8u8; 32], 1, 2));
        let p = proof(&key, 1, 2);
        assert_eq!(parse_proof(&proof_text(&p)), Some(p));
        assert_eq!(parse_proof("zz"), None);
        assert_eq!(parse_proof(&"g".repeat(64)), None);
    }
}
