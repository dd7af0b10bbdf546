"""Clock steps for one agent: an LD_PRELOAD shim, compiled here with gcc, that adds an offset to
the wall clock (CLOCK_REALTIME and its coarse variant, ``time()``, ``gettimeofday()``) and leaves
the monotonic clocks alone. The offset, in whole seconds, is read from a file the harness writes
(re-read at most every 50 ms of monotonic time), so a step lands without restarting the agent.

Not Debian's libfaketime: it broke Python 3.11's ``time.sleep`` here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["ENV_FILE", "build_shim", "set_offset"]

ENV_FILE = "EDGEFLEET_SOAK_CLOCK_FILE"

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
static clock_gettime_fn real_clock_gettime;
static long offset_s;
static struct timespec checked;

static void load(void) {
    if (!real_clock_gettime)
        real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
}

static long offset(void) {
    struct timespec now;
    load();
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed_ms = (now.tv_sec - checked.tv_sec) * 1000
        + (now.tv_nsec - checked.tv_nsec) / 1000000;
    if (checked.tv_sec == 0 || elapsed_ms > 50) {
        const char *path = getenv("EDGEFLEET_SOAK_CLOCK_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        long value = 0;
        if (f) {
            if (fscanf(f, "%ld", &value) == 1)
                offset_s = value;
            fclose(f);
        }
        checked = now;
    }
    return offset_s;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    load();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
        ts->tv_sec += offset();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build_shim(folder: Path) -> Path:
    """Compile the shim into ``folder``; return the shared library's path.

    Raises:
        RuntimeError: gcc is missing or the compile failed (its output in the message).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is not installed; the clock-step fault needs it (apt install gcc)")
    source = folder / "soak_clock.c"
    library = folder / "soak_clock.so"
    source.write_text(_SOURCE, encoding="utf-8")
    result = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot compile the clock shim: {result.stderr.strip()}")
    return library


def set_offset(path: Path, seconds: int) -> None:
    """Step the shimmed wall clock to ``seconds`` from the true time (atomically replaced)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds}\n", encoding="utf-8")
    tmp.replace(path)
