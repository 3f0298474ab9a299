"""Small file helpers shared by the trainer and the tools."""

import hashlib


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest of the file at `path` by hashlib's `algorithm` ("sha256", "md5"), read 4 MiB at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
