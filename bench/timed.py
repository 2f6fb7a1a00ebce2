#!/usr/bin/env python3
"""Run a command and report its wall time and CPU time.

Usage: timed.py RESULT_FILE STDOUT_FILE STDERR_FILE -- CMD [ARGS...]

Writes one line "wall_s user_s sys_s exit_code" to RESULT_FILE. The wall time comes from
a monotonic clock; user and system CPU come from wait4() of the command (and any children
it waited for), with microsecond resolution (what /usr/bin/time reads, without its
two-decimal rounding).
"""
import os
import sys
import time


def main() -> int:
    if len(sys.argv) < 6 or sys.argv[4] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result, out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5:]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(result, "w") as f:
        f.write(f"{wall:.6f} {usage.ru_utime:.6f} {usage.ru_stime:.6f} {code}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
