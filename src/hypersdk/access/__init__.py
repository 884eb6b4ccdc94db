"""Instant access: a generation's disk served over NBD, straight from the repository.

``export`` is the export backend (chunks read through the repository's public read API,
checked as they are read, an LRU chunk cache, an optional throwaway write overlay);
``serving`` runs the NBD server (:mod:`hypersdk.nbd.server`) on a thread and names it by
URI; ``image`` restores qcow2/vmdk by letting ``qemu-img convert`` read the served
generation; ``boot`` proves a generation boots in ``qemu-system-x86_64``.
"""

from hypersdk.access.export import RepositoryExport
from hypersdk.access.serving import BackgroundServer, Listen, nbd_uri

__all__ = ["BackgroundServer", "Listen", "RepositoryExport", "nbd_uri"]
