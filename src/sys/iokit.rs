//! The few IOKit and CoreFoundation calls the daemon makes on macOS: a power assertion
//! while a run lasts ([`PowerAssertion`], IOKit/pwr_mgt/IOPMLib.h) and the power source for
//! `when: {ac_power: true}` ([`on_battery`], IOKit/ps/IOPowerSources.h). Declared here rather than through a bindings crate: five
//! functions do not justify one. Compile-checked in CI, never run here (docs/platforms.md).

use std::ffi::c_void;

type IOPMAssertionID = u32;
type CFStringRef = *const c_void;
/// `kIOPMAssertionLevelOn`.
const ASSERTION_LEVEL_ON: u32 = 255;
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
    fn IOPMAssertionCreateWithName(
        kind: CFStringRef,
        level: u32,
        name: CFStringRef,
        id: *mut IOPMAssertionID,
    ) -> i32;
    fn IOPMAssertionRelease(id: IOPMAssertionID) -> i32;
    fn IOPSCopyPowerSourcesInfo() -> *const c_void;
    fn IOPSGetProvidingPowerSourceType(snapshot: *const c_void) -> CFStringRef;
}

/// An owned CFString, released on drop.
struct CfString(CFStringRef);

impl CfString {
    fn new(text: &str) -> Result<CfString, String> {
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

/// A power assertion that keeps the system from idle sleep, released on drop (and by the
/// kernel if the process dies).
pub(crate) struct PowerAssertion(IOPMAssertionID);

impl PowerAssertion {
    /// Takes a `PreventUserIdleSystemSleep` assertion named `name` (what `caffeinate -i`
    /// takes); `Err` says why there is none.
    pub(crate) fn take(name: &str) -> Result<PowerAssertion, String> {
        let kind = CfString::new("PreventUserIdleSystemSleep")?;
        let name = CfString::new(name)?;
        let mut id: IOPMAssertionID = 0;
        // SAFETY: both strings are live CFStrings for the call; `id` is writable.
        let status =
            unsafe { IOPMAssertionCreateWithName(kind.0, ASSERTION_LEVEL_ON, name.0, &raw mut id) };
        if status != 0 {
            return Err(format!("IOKit refused a power assertion (IOReturn {status:#x})"));
        }
        Ok(PowerAssertion(id))
    }
}

impl Drop for PowerAssertion {
    fn drop(&mut self) {
        // SAFETY: the id came from IOPMAssertionCreateWithName and is released once.
        unsafe {
            IOPMAssertionRelease(self.0);
        }
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
