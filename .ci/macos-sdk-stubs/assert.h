/* Type-checking stub (.ci/macos): no assertion is ever evaluated. */
#define assert(x) ((void)0)
