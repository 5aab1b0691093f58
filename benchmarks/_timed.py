"""Run a command as a whole process under ``/usr/bin/time -v``: wall, CPU, system time and peak memory."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timed:
    wall: float
    user: float
    system: float
    peak_gb: float
    returncode: int

    @property
    def cpu_percent(self) -> float:
        """CPU time over wall time (200 % = two cores busy all along)."""
        return 100 * (self.user + self.system) / max(self.wall, 1e-9)

    @property
    def system_share(self) -> float:
        """System time as a fraction of CPU time (page faults, allocation, I/O in the kernel)."""
        return self.system / max(self.user + self.system, 1e-9)


def _wall(text: str) -> float:
    value = re.search(r"Elapsed \(wall clock\) time.*: (.+)", text).group(1).strip()  # type: ignore[union-attr]
    parts = [float(p) for p in value.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Timed:
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    err = done.stderr

    def field(name: str) -> float:
        return float(re.search(rf"{re.escape(name)}: ([0-9.]+)", err).group(1))  # type: ignore[union-attr]

    if "Maximum resident set size" not in err:
        raise RuntimeError(f"{cmd[0]} failed before /usr/bin/time reported:\n{err[-2000:]}")
    return Timed(_wall(err), field("User time (seconds)"), field("System time (seconds)"),
                 field("Maximum resident set size (kbytes)") / 1e6, done.returncode)
