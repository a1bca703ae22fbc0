"""The Perimeter service: settings, composition root, storage, CLI (channels arrive later)."""
