"""The vSphere lab: vcsim with changed block tracking, a test and demo fixture.

Never used by product code paths. See ``lab/vcsim/README.md``.
"""

from hypersdk.lab.build import LabBuild
from hypersdk.lab.vcsim import (
    LabDisk,
    LabSettings,
    LabStatus,
    LabVm,
    VcsimLab,
    VmSpec,
    default_state_dir,
    parse_size,
    parse_vm_spec,
)

__all__ = [
    "LabBuild",
    "LabDisk",
    "LabSettings",
    "LabStatus",
    "LabVm",
    "VcsimLab",
    "VmSpec",
    "default_state_dir",
    "parse_size",
    "parse_vm_spec",
]
