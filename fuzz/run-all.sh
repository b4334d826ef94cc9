#!/bin/sh
# Runs each fuzz target for SECONDS (default 600) on the committed seed corpus and prints the
# libFuzzer summary lines. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable
# toolchain it runs with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Zsanitizer).
set -eu
cd "$(dirname "$0")"
seconds=${1:-600}
for target in task_file cron request; do
    mkdir -p "corpus/$target" "work/$target"
    echo "==> $target for ${seconds}s"
    # New inputs go to work/ (not committed); the seed corpus stays as it is.
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::|==|SUMMARY|INFO: Seed|.*(panicked|ERROR))' || true
done
