import hashlib

from lib.utils.files import file_digest


def test_file_digest_reads_a_file_larger_than_its_chunk_whole(tmp_path):
    data = bytes(range(256)) * (1 << 15) + b"tail"  # 8 MiB and 4 bytes: two full chunks and a short one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(str(path), "sha256") == hashlib.sha256(data).hexdigest()
    assert file_digest(str(path), "md5") == hashlib.md5(data).hexdigest()
