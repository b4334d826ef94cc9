"""A process of the daemon's user that is not part of any task, doing what an attacker of the
same uid would to a running backup: read the environment, arguments, descriptors, maps and
memory of every process of the user, stop restic and open the pipe its password came
through, watch /proc for new secretbox processes (and restic's rclone backend) and open
their descriptors, and ptrace restic with gdb. Writes what it got to a JSON report. Run by tests/integration/sealed.rs.

usage: attacker.py REPORT STOPFILE DAEMON_PID NEEDLE... (each NEEDLE is searched in
everything read). The daemon's pid only tells it which new processes are task processes
(their parent, in `/proc/PID/stat`, which anyone may read): nothing goes through the daemon.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

report_path, stop_file, daemon = sys.argv[1], sys.argv[2], int(sys.argv[3])
needles = [n.encode() for n in sys.argv[4:]]
me = os.getpid()
uid = os.getuid()
report = {"control_environ": False, "processes": {}, "found": [], "gdb": [], "stopped": 0}


def read(path, limit=1 << 20):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def look(data, where):
    for n in needles:
        if n in data:
            report["found"].append(where)


def name_of(pid):
    argv0 = read(f"/proc/{pid}/cmdline").split(b"\0")[0]
    return argv0.decode(errors="replace")


def failed(e):
    # A process reaped between two reads is gone from /proc (ENOENT, ESRCH): there is nothing
    # left of it to guard, as for one that ended ("ended" above).
    return "ended" if e.errno in (errno.ENOENT, errno.ESRCH) else e.strerror


def note(pid, name, what, outcome):
    entry = report["processes"].setdefault(f"{pid} {name}", {})
    entry.setdefault(what, outcome)
    if outcome == "read" and entry[what] != "read":
        entry[what] = "read"


def attack(pid, name):
    for what in ("environ", "cmdline", "maps"):
        try:
            data = read(f"/proc/{pid}/{what}")
            look(data, f"{name} {what}")
            # A process that has ended has no memory left to guard: the kernel lets anyone
            # read its (empty) files. Only what held something counts as read.
            note(pid, name, what, "read" if data else "ended")
        except OSError as e:
            note(pid, name, what, failed(e))
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(0x400000)
            mem.read(16)
        note(pid, name, "mem", "read")
    except OSError as e:
        note(pid, name, "mem", failed(e))
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        note(pid, name, "fd", "read" if fds else "ended")
    except OSError as e:
        note(pid, name, "fd", failed(e))
        return
    for fd in fds:
        try:
            data = read(f"/proc/{pid}/fd/{fd}", 65536)
            look(data, f"{name} fd {fd}")
        except OSError:
            pass


def parent_of(pid):
    stat = read(f"/proc/{pid}/stat").decode()
    return int(stat.rsplit(")", 1)[1].split()[1])


def catch_children(restic, seen):
    """Watches for restic's children for a second and a half: new pids in /proc whose parent (in
    their `stat`, readable to all) is restic. A new child is first a copy of restic (Go
    forks, then executes the password command): once it has executed, it is stopped at
    once, so the secretbox is caught while its stdout is still the pipe to restic."""
    deadline = time.time() + 1.5
    known = set(os.listdir("/proc"))
    while time.time() < deadline and os.path.exists(f"/proc/{restic}"):
        now = os.listdir("/proc")
        fresh = [int(p) for p in now if p.isdigit() and p not in known]
        known.update(now)
        for child in fresh:
            try:
                if parent_of(child) != restic:
                    continue
                name = executed(child, "restic", deadline)
                os.kill(child, signal.SIGSTOP)
                report["stopped"] += 1
                # restic's rclone: backend, started by restic, named by its arguments.
                name = name_of(child) or name
                if b"serve\0restic" in read(f"/proc/{child}/cmdline"):
                    name = "rclone " + name
            except (OSError, ValueError, IndexError):
                continue
            attack(child, name)
            cont(child)
            seen.add((child, name))


# Control: the same reads work on a process of ours that is not sealed.
child = subprocess.Popen(["sleep", "30"], env={"CONTROL": "control-value"})
time.sleep(0.1)
report["control_environ"] = b"CONTROL=control-value" in read(f"/proc/{child.pid}/environ")
child.kill()
child.wait()
with open(report_path + ".ready", "w") as f:
    f.write("ready\n")

def executed(pid, old_name, deadline):
    """`pid`'s program name once it has executed something other than `old_name`."""
    name = name_of(pid)
    # (Mid-exec, the arguments read empty for a moment.)
    while (not name or os.path.basename(name) == old_name) and time.time() < deadline:
        name = name_of(pid)
    return name


def cont(pid):
    """Lets a stopped process go on (it may have been killed meanwhile)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass


def attack_restic(pid, name, seen):
    # Freeze it first: what it holds then stays where the attacker can look.
    os.kill(pid, signal.SIGSTOP)
    report["stopped"] += 1
    attack(pid, name)
    cont(pid)
    catch_children(pid, seen)
    # restic waits on its input for seconds after it read its password: ptrace it now.
    try:
        out = subprocess.run(
            ["gdb", "-p", str(pid), "-batch", "-ex", "info proc mappings"],
            capture_output=True, text=True, timeout=60,
        )
        report["gdb"].append(out.stdout[-400:] + out.stderr[-400:])
    except subprocess.TimeoutExpired:
        report["gdb"].append("gdb timed out")
    cont(pid)


seen = set()
while not os.path.exists(stop_file):
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or any(p == int(entry) for p, _ in seen):
            continue
        pid = int(entry)
        try:
            # restic started by the daemon (one restic starts is its child, not its own).
            if os.path.basename(name_of(pid)) != "restic" or parent_of(pid) != daemon:
                continue
            name = name_of(pid)
            seen.add((pid, name))
            attack_restic(pid, name, seen)
        except (OSError, ValueError, IndexError):
            pass
    time.sleep(0.001)

with open(report_path, "w") as f:
    json.dump(report, f)
