//! The few IOKit and CoreFoundation calls the daemon makes on macOS: a power assertion
//! while a run lasts ([`inhibit`](super::inhibit), IOKit/pwr_mgt/IOPMLib.h) and the power
//! source for `when: {ac_power: true}` ([`conditions`](super::conditions),
//! IOKit/ps/IOPowerSources.h). Declared here rather than through a bindings crate: five
//! functions do not justify one. Compile-checked in CI, never run here (docs/platforms.md).

use std::ffi::c_void;

pub(crate) type IOPMAssertionID = u32;
type CFStringRef = *const c_void;
/// `kIOPMAssertionLevelOn`.
pub(crate) const ASSERTION_LEVEL_ON: u32 = 255;
/// `kCFStringEncodingUTF8`.
const UTF8: u32 = 0x0800_0100;

#[link(name = "CoreFoundation", kind = "framework")]
unsafe extern "C" {
    fn CFStringCreateWithBytes(
        allocator: *const c_void,
        bytes: *const u8,
        len: isize,
        encoding: u32,
        external: u8,
    ) -> CFStringRef;
    fn CFRelease(object: *const c_void);
    fn CFStringGetCString(string: CFStringRef, buf: *mut u8, len: isize, encoding: u32) -> u8;
}

#[link(name = "IOKit", kind = "framework")]
unsafe extern "C" {
    pub(crate) fn IOPMAssertionCreateWithName(
        kind: CFStringRef,
        level: u32,
        name: CFStringRef,
        id: *mut IOPMAssertionID,
    ) -> i32;
    pub(crate) fn IOPMAssertionRelease(id: IOPMAssertionID) -> i32;
    fn IOPSCopyPowerSourcesInfo() -> *const c_void;
    fn IOPSGetProvidingPowerSourceType(snapshot: *const c_void) -> CFStringRef;
}

/// An owned CFString, released on drop.
pub(crate) struct CfString(pub(crate) CFStringRef);

impl CfString {
    pub(crate) fn new(text: &str) -> Result<CfString, String> {
        let len = isize::try_from(text.len()).map_err(|_| "name too long".to_string())?;
        // SAFETY: `text` is valid UTF-8 of `len` bytes; a null allocator is the default.
        let made =
            unsafe { CFStringCreateWithBytes(std::ptr::null(), text.as_ptr(), len, UTF8, 0) };
        if made.is_null() {
            return Err("cannot make a CoreFoundation string".into());
        }
        Ok(CfString(made))
    }
}

impl Drop for CfString {
    fn drop(&mut self) {
        // SAFETY: we own this reference (a Create function returned it).
        unsafe { CFRelease(self.0) }
    }
}

/// Whether the machine draws from its battery (or a UPS) rather than AC power; `None` when
/// IOKit cannot say.
pub(crate) fn on_battery() -> Option<bool> {
    // SAFETY: a Copy function: we own the snapshot and release it below.
    let snapshot = unsafe { IOPSCopyPowerSourcesInfo() };
    if snapshot.is_null() {
        return None;
    }
    // SAFETY: a Get function on a live snapshot: the string is borrowed from it.
    let kind = unsafe { IOPSGetProvidingPowerSourceType(snapshot) };
    let mut buf = [0u8; 64];
    let read = !kind.is_null()
        // SAFETY: `kind` is a live CFString; `buf` is writable for its length.
        && unsafe { CFStringGetCString(kind, buf.as_mut_ptr(), buf.len() as isize, UTF8) } != 0;
    // SAFETY: released once, after the last use of `kind`.
    unsafe { CFRelease(snapshot) };
    if !read {
        return None;
    }
    let text = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?.to_str().ok()?;
    // kIOPMACPowerKey, kIOPMBatteryPowerKey, kIOPMUPSPowerKey.
    Some(text != "AC Power")
}
