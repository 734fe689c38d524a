"""The `.apx` plugin archive: a zip holding `apx.json` and `wheels/*.whl`.

Client and server share this package, so it depends on neither: no HTTP, no database and no
apt-core, only the archive format, its hardened reader, packing and Ed25519 signing.
"""
