"""The export repository: chunk store, object envelope, indexes, generations.

Layers, each importing only those below it: ``layout``/``files`` (names, atomic writes),
``storage`` (where objects live: a local folder or S3), ``chunkstore`` (opaque objects
by id), ``envelope`` (object header, compression, hash
check), ``index`` and ``manifest`` (generation documents), ``repository`` (config, commit
protocol, locks), and the operations ``restore``, ``verify`` and ``gc``.
The format is specified in docs/repository-format.md.
"""

from hypersdk.repository.repository import Repository

__all__ = ["Repository"]
