#!/bin/sh
# The quickstart: builds backupnizza, seeds a demo secret, starts the daemon, and shows the
# restic snapshot it made with the password served by secretbox.
#
#   examples/quickstart.sh               run the demo; the daemon keeps running afterwards
#   examples/quickstart.sh --stop-after  run the demo, then stop the daemon (used by CI)
#   examples/quickstart.sh stop          stop a demo daemon left running
#
# BACKUPNIZZA_BIN_DIR=DIR uses the binaries in DIR instead of building them (.ci/deb runs it
# with /usr/bin, against the installed Debian package).
#
# Everything it creates is under target/quickstart (removed and recreated on each run).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
export BNZ_DEMO="$top/target/quickstart"
pidfile="$BNZ_DEMO/daemon.pid"
log="$BNZ_DEMO/daemon.log"
bin="${BACKUPNIZZA_BIN_DIR:-$top/target/debug}"

if [ -t 1 ]; then bold=$(printf '\033[1m'); plain=$(printf '\033[0m'); else bold=; plain=; fi
say() { printf '%s==> %s%s\n' "$bold" "$*" "$plain"; }
stop_daemon() {
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill -TERM "$(cat "$pidfile")"
        i=0
        while kill -0 "$(cat "$pidfile")" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        say "stopped the demo daemon (pid $(cat "$pidfile"))"
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    stop) stop_daemon; exit 0 ;;
    --stop-after|"") ;;
    *) echo "usage: $0 [--stop-after | stop]" >&2; exit 2 ;;
esac

if ! command -v restic >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "restic is not installed: installing it (Debian/Ubuntu package restic)"
        "$top/.ci/install-packages" restic
    elif command -v brew >/dev/null 2>&1; then
        say "restic is not installed: installing it (brew install restic)"
        brew install restic
    fi
fi
if ! command -v restic >/dev/null 2>&1; then
    echo "restic is not installed, and this script could not install it. Install it first:" >&2
    echo "  Debian/Ubuntu: sudo apt-get install restic    macOS: brew install restic" >&2
    echo "  other systems: https://restic.readthedocs.io/en/stable/020_installation.html" >&2
    exit 1
fi

if [ -z "${BACKUPNIZZA_BIN_DIR:-}" ]; then
    say "building backupnizza and secretbox (cargo build --locked)"
    (cd "$top" && cargo build --locked --bins)
fi

stop_daemon
rm -rf "$BNZ_DEMO"
mkdir -p "$BNZ_DEMO/data"
echo "Hello from the backupnizza quickstart, $(date)" > "$BNZ_DEMO/data/hello.txt"
config="$BNZ_DEMO/quickstart.yaml"
password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
if [ "$(uname -s)" = Linux ]; then
    cp "$top/examples/quickstart.yaml" "$config"
    say "storing a random demo password in the kernel keyring (backupnizza secret set)"
    printf '%s\n' "$password" | "$bin/backupnizza" secret set demo-repo -c "$config"
    if ! "$bin/backupnizza" secret check -c "$config" >/dev/null 2>&1; then
        # Kernels without persistent keyrings do not share the key with the daemon's session.
        say "the kernel keyring is not shared between sessions here; using a 0600 file instead"
        use_file=1
    fi
fi
if [ "$(uname -s)" != Linux ] || [ -n "${use_file:-}" ]; then
    # The macOS Keychain would ask for permission; a 0600 file keeps the demo unattended.
    sed 's|keyring: {service: backupnizza-quickstart, account: demo-repo, store: keyutils}|file: ${BNZ_DEMO}/demo-repo.password|' \
        "$top/examples/quickstart.yaml" > "$config"
    (umask 077 && printf '%s\n' "$password" > "$BNZ_DEMO/demo-repo.password")
    say "stored a random demo password in $BNZ_DEMO/demo-repo.password (mode 0600)"
fi
unset password

"$bin/backupnizza" validate -c "$config"

say "starting the daemon (log: $log)"
"$bin/backupnizza" run -c "$config" 2>"$log" &
echo $! > "$pidfile"
i=0
until "$bin/backupnizza" status -c "$config" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "the daemon did not start; its log:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
done

say "creating the restic repository (backupnizza trigger init --wait)"
"$bin/backupnizza" trigger init --wait -c "$config"

say "waiting for the scheduled backup (every 10 seconds)"
i=0
until "$bin/backupnizza" history backup -c "$config" | grep -q '  backup  success'; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then echo "no successful backup after 60s; the log:" >&2; cat "$log" >&2; exit 1; fi
    sleep 0.1
done
"$bin/backupnizza" history backup -c "$config"

say "listing snapshots (restic snapshots, run by the daemon, password from secretbox)"
"$bin/backupnizza" trigger snapshots --follow -c "$config" > "$BNZ_DEMO/snapshots.txt"
cat "$BNZ_DEMO/snapshots.txt"
snapshot=$(grep -Eo '^[0-9a-f]{8}' "$BNZ_DEMO/snapshots.txt" | head -n 1)
if [ -z "$snapshot" ]; then
    echo "no snapshot found" >&2; exit 1
fi
echo
say "restic made snapshot $snapshot of $BNZ_DEMO/data with the password served by secretbox;"
say "the password never appeared in restic's environment, an argument list or a log."
grep -E 'secret redeemed' "$log" | tail -n 1 | sed 's/^/    /'
echo
say "auditing the repository against the snapshot ledger (backupnizza trigger audit --wait)"
"$bin/backupnizza" trigger audit --wait -c "$config"
echo
"$bin/backupnizza" status -c "$config"
echo
if [ "${1:-}" = "--stop-after" ]; then
    stop_daemon
else
    echo "The daemon keeps backing up every 10 seconds (pid $(cat "$pidfile"), log $log)."
    echo "Stop it with:  examples/quickstart.sh stop   (or: kill $(cat "$pidfile"))"
fi
