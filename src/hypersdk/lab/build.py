"""Build the lab's vcsim binary from Debian's Go toolchain and govmomi sources, offline.

``lab/vcsim/main.go`` is the command; ``lab/vcsim/simulator/*.go`` are compiled into
govmomi's package ``simulator`` with ``go build -overlay`` (GOPATH mode, no modules, no
network). The binary is cached in ``lab/vcsim/bin/`` and rebuilt when a source file,
the Go version or the govmomi package changes (a stamp file records their digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hypersdk.errors import HyperSDKError

GOVMOMI_SRC = Path("/usr/share/gocode/src/github.com/vmware/govmomi")
DEBIAN_GOPATH = Path("/usr/share/gocode")
BINARY_NAME = "vcsim-lab"


def default_source_dir() -> Path:
    """``lab/vcsim`` of the source tree (``HYPERSDK_LAB_SRC`` overrides it)."""
    env = os.environ.get("HYPERSDK_LAB_SRC")
    if env:
        return Path(env)
    # src/hypersdk/lab/build.py -> repository root
    return Path(__file__).resolve().parents[3] / "lab" / "vcsim"


@dataclass(frozen=True)
class LabBuild:
    """Where the lab's Go sources are and where the binary goes."""

    source_dir: Path

    @property
    def bin_dir(self) -> Path:
        return self.source_dir / "bin"

    @property
    def binary(self) -> Path:
        return self.bin_dir / BINARY_NAME

    @property
    def stamp_file(self) -> Path:
        return self.bin_dir / (BINARY_NAME + ".stamp")

    def overlay_sources(self) -> list[Path]:
        return sorted((self.source_dir / "simulator").glob("*.go"))

    def _go(self) -> str:
        go = shutil.which("go") or "/usr/lib/go/bin/go"
        if not Path(go).exists():
            raise HyperSDKError("the lab needs the Go toolchain: apt-get install golang-go")
        return go

    def _check_sources(self) -> None:
        if not (self.source_dir / "main.go").is_file():
            raise HyperSDKError(
                f"lab sources not found in {self.source_dir} (set HYPERSDK_LAB_SRC to lab/vcsim)"
            )
        if not (GOVMOMI_SRC / "simulator" / "simulator.go").is_file():
            raise HyperSDKError(
                "govmomi sources not found: apt-get install golang-github-vmware-govmomi-dev"
            )

    def _digest(self, go: str) -> str:
        h = hashlib.sha256()
        for path in [self.source_dir / "main.go", *self.overlay_sources()]:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        version = subprocess.run(
            [go, "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        h.update(version.encode())
        govmomi = GOVMOMI_SRC / "simulator" / "simulator.go"
        h.update(str(govmomi.stat().st_mtime_ns).encode())
        return h.hexdigest()

    def is_current(self) -> bool:
        """True if the cached binary was built from the current sources."""
        if not self.binary.is_file() or not self.stamp_file.is_file():
            return False
        self._check_sources()
        return self.stamp_file.read_text().strip() == self._digest(self._go())

    def build(self, *, force: bool = False) -> Path:
        """Build the binary if it is missing or outdated; return its path."""
        self._check_sources()
        go = self._go()
        digest = self._digest(go)
        if (
            not force
            and self.binary.is_file()
            and self.stamp_file.is_file()
            and self.stamp_file.read_text().strip() == digest
        ):
            return self.binary
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        gopath = self.bin_dir / "gopath"
        gopath.mkdir(exist_ok=True)
        overlay = self.bin_dir / "overlay.json"
        replace = {
            str(GOVMOMI_SRC / "simulator" / src.name): str(src.resolve())
            for src in self.overlay_sources()
        }
        overlay.write_text(json.dumps({"Replace": replace}, indent=2) + "\n")
        tmp = self.binary.with_name(BINARY_NAME + ".tmp")
        env = dict(os.environ)
        env.update(
            GO111MODULE="off",
            GOPATH=f"{DEBIAN_GOPATH}:{gopath}",
            GOFLAGS="",
            GOPROXY="off",
            CGO_ENABLED="0",
        )
        if not any(env.get(v) for v in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
            env["GOCACHE"] = str(self.bin_dir / "gocache")  # Go needs a build cache somewhere
        proc = subprocess.run(
            [go, "build", "-overlay", str(overlay), "-o", str(tmp), "."],
            cwd=self.source_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            first = lines[0] if lines else f"exit status {proc.returncode}"
            more = f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""
            raise HyperSDKError(f"building the vcsim lab failed: {first}{more}")
        tmp.replace(self.binary)
        self.stamp_file.write_text(digest + "\n")
        return self.binary
