/* Type-checking stub (.ci/macos): ring's C asks which Apple platform it is built for. The
 * object files built with these stubs are never linked or run. */
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_MAC 1
