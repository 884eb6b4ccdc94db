"""Local state of this tool: the export history under ``~/.hypersdk/incremental/``."""
