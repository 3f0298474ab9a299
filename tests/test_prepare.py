"""tools/prepare_data.py against a local HTTP server (127.0.0.1) serving small generated archives; no internet."""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
import time

import pytest

from lib.analysis import prepare as prep
from lib.analysis.prepare import (
    ARCHIVES,
    DamagedArchive,
    download,
    extract,
    prepare,
    prepare_dataset,
    verify_existing,
)
from lib.config import REPO_ROOT
from lib.datasets.synthetic import make_aircraft, make_cub
from lib.utils.errors import UserError
from lib.utils.files import lock_file, release_lock

from .conftest import one_error_line, run_cli

SCRIPT = os.path.join(REPO_ROOT, "tools", "prepare_data.py")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def _tar_gz(path, folder, arcname) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serve generated archives in the official layouts: {"url": base URL, "md5": {file: md5}}."""
    build, served = tmp_path_factory.mktemp("build"), tmp_path_factory.mktemp("served")
    make_cub(str(build / "CUB_200_2011"), num_classes=4, per_class=2, image_size=(48, 40))
    make_aircraft(str(build / "fgvc-aircraft-2013b"), num_classes=4, per_class=2, image_size=(48, 40))
    md5 = {
        "CUB_200_2011.tgz": _tar_gz(served / "CUB_200_2011.tgz", build / "CUB_200_2011", "CUB_200_2011"),
        "fgvc-aircraft-2013b.tar.gz": _tar_gz(served / "fgvc-aircraft-2013b.tar.gz", build / "fgvc-aircraft-2013b",
                                              "fgvc-aircraft-2013b"),
        "wrong_top.tgz": _tar_gz(served / "wrong_top.tgz", build / "CUB_200_2011", "birds"),
    }
    data = (served / "CUB_200_2011.tgz").read_bytes()
    (served / "truncated.tgz").write_bytes(data[: len(data) // 2])
    (served / "not_an_archive.tgz").write_bytes(b"<html>moved</html>\n")  # what a wrong URL serves
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "md5": md5, "build": build}
    httpd.shutdown()
    httpd.server_close()


def _run(*args: str, monkeypatch) -> int:
    return run_cli(SCRIPT, *args, monkeypatch=monkeypatch)


_one_error_line = one_error_line


def _left(root) -> list[str]:
    """What a command left in `root`, besides the empty lock file that runs take turns by (kept for the next)."""
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    assert prep.LOCK_FILE not in names or os.path.getsize(os.path.join(root, prep.LOCK_FILE)) == 0
    return [name for name in names if name != prep.LOCK_FILE]


@pytest.mark.parametrize("args, line", [
    # An unset shell variable: the default URL was downloaded (1.1 GB on a connected machine).
    (["--url-cub", ""], "error: argument --url-cub: is empty (an unset shell variable?); name a file or folder (see "
                        "prepare_data.py --help)"),
    (["--datasets", "aircraft", "--url-cub", "CUB_200_2011.tgz", "--md5-cub", "0" * 32],
     "error: --url-cub and --md5-cub are given, but --datasets aircraft leaves cub out; add cub to --datasets, or "
     "drop --url-cub and --md5-cub"),
    (["--datasets", "cub", "--datasets", "aircraft"], "error: --datasets is given twice (--datasets cub, then "
                                                      "--datasets aircraft); give --datasets once (see prepare_data.py "
                                                      "--help)"),
])
def test_a_flag_that_would_be_ignored_is_one_line_and_nothing_is_fetched(args, line, tmp_path, monkeypatch, capsys):
    assert _run(*args, "--root", str(tmp_path / "data"), monkeypatch=monkeypatch) == 2
    assert _one_error_line(capsys.readouterr().err) == line
    assert not (tmp_path / "data").exists()


def test_download_verify_extract_both_datasets(server, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    # What a killed earlier run left: a partial download and a half-extracted folder.
    (root / "CUB_200_2011.tgz.part").write_bytes(b"partial")
    (root / ".cub.partial-abc").mkdir()
    args = ["--root", str(root), "--url-cub", f"{server['url']}/CUB_200_2011.tgz",
            "--md5-cub", server["md5"]["CUB_200_2011.tgz"],
            "--url-aircraft", f"{server['url']}/fgvc-aircraft-2013b.tar.gz",
            "--md5-aircraft", server["md5"]["fgvc-aircraft-2013b.tar.gz"]]
    assert _run(*args, monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert _left(root) == ["aircraft", "cub"]  # archives removed once extracted, leftovers cleaned
    assert (root / "cub" / "images.txt").is_file() and (root / "cub" / "images").is_dir()
    assert (root / "aircraft" / "data" / "images_variant_test.txt").is_file()
    assert "MD5 " + server["md5"]["CUB_200_2011.tgz"] + " verified" in out
    assert "training split 8 images of 4 classes, test split 8 images of 4 classes" in out
    assert "differs from the official release" in out
    # The extracted files are the archive's, byte for byte.
    for rel in ("images.txt", "train_test_split.txt"):
        assert (root / "cub" / rel).read_bytes() == (server["build"] / "CUB_200_2011" / rel).read_bytes()

    # A second run downloads nothing and checks what is there; --verify-only checks both.
    assert _run(*args, monkeypatch=monkeypatch) == 0
    assert "is there already" in capsys.readouterr().out
    assert _run("--root", str(root), "--verify-only", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count("is complete") == 2


def test_checksum_mismatch_leaves_nothing(server, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    assert _run("--datasets", "cub", "--root", str(root), "--url-cub", f"{server['url']}/CUB_200_2011.tgz",
                "--md5-cub", "0" * 32, monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checksum mismatch" in line and "0" * 32 in line and server["md5"]["CUB_200_2011.tgz"] in line
    assert _left(root) == []


def test_published_size_is_checked_before_downloading(server, tmp_path, monkeypatch, capsys):
    # No --md5: the published MD5 and size apply, and the small archive's Content-Length already differs.
    root = tmp_path / "data"
    assert _run("--datasets", "aircraft", "--root", str(root), "--url-aircraft",
                f"{server['url']}/fgvc-aircraft-2013b.tar.gz", monkeypatch=monkeypatch) == 2
    assert f"{ARCHIVES['aircraft'].size:,} bytes" in _one_error_line(capsys.readouterr().err)
    assert _left(root) == []


@pytest.mark.parametrize("name, words", [("truncated.tgz", ["damaged", "deleted"]),
                                         ("not_an_archive.tgz", ["not a tar archive (ReadError: file could not be "
                                                                 "opened successfully);", "deleted"]),
                                         ("wrong_top.tgz", ["no CUB_200_2011/ folder", "birds", "deleted"]),
                                         ("missing.tgz", ["HTTP 404"])])
def test_bad_downloads_are_one_line_and_leave_no_dataset(name, words, server, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    assert _run("--datasets", "cub", "--root", str(root), "--url-cub", f"{server['url']}/{name}", "--no-verify",
                monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line
    assert _left(root) == []  # no dataset, no archive, no .part file, no .cub.partial-* folder


def test_an_archive_downloaded_already_is_taken_by_its_path_and_a_bad_url_or_md5_is_one_line(
        server, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "Downloads" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    md5 = _tar_gz(archive, server["build"] / "CUB_200_2011", "CUB_200_2011")
    root = tmp_path / "data"
    for flags, words in ([["--url-cub", str(tmp_path / "nope.tgz")],
                          [f"--url-cub {tmp_path / 'nope.tgz'} is neither a URL (https://..., file://...) nor an "
                           "archive file"]],
                         [["--url-cub", str(archive), "--md5-cub", "xyz"],
                          ["--md5-cub xyz is not an MD5 checksum (32 hexadecimal digits)"]]):
        assert _run("--datasets", "cub", "--root", str(root), *flags, monkeypatch=monkeypatch) == 2
        assert _one_error_line(capsys.readouterr().err) == "error: " + words[0]
        assert not root.exists()  # refused before anything is made
    assert _run("--datasets", "cub", "--root", str(root), "--url-cub", str(archive), "--md5-cub", md5,
                monkeypatch=monkeypatch) == 0
    assert f"downloading {archive.as_uri()}" in capsys.readouterr().out
    assert (root / "cub" / "images.txt").is_file() and archive.is_file()  # the user's copy is left alone


def test_verify_only_finds_missing_files(server, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    shutil.copytree(server["build"] / "CUB_200_2011", root / "cub")
    first = (root / "cub" / "images.txt").read_text().splitlines()[0].split(" ", 1)[1]
    os.remove(root / "cub" / "images" / first)
    assert _run("--root", str(root), "--verify-only", monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert os.path.basename(first) in line and "missing" in line  # the image of cub
    assert line.count("cub: ") == 1 and line.count("aircraft: ") == 1  # each named once
    assert "aircraft" in line and "does not exist" in line  # and the absent aircraft folder, in the same line


def test_verify_only_with_a_file_as_root_says_it_is_a_file(tmp_path, monkeypatch, capsys):
    # Not "<file>/cub does not exist; run tools/prepare_data.py --root <file>", which cannot work.
    afile = tmp_path / "model_best.pth"
    afile.write_bytes(b"x")
    assert _run("--datasets", "cub", "--root", str(afile), "--verify-only", monkeypatch=monkeypatch) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: cub: --root {afile} is a file, not a folder; give the folder that holds the datasets (default data)")


def test_verify_only_checks_a_root_that_is_the_dataset_folder_itself(server, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "demo_cub"  # a DATA.DATADIR such as the demo's data/demo_cub, not a root holding cub/
    shutil.copytree(server["build"] / "CUB_200_2011", folder)
    assert _run("--datasets", "cub", "--root", str(folder), "--verify-only", monkeypatch=monkeypatch) == 0
    assert f"cub: {folder} is complete" in capsys.readouterr().out
    planes = tmp_path / "planes"
    shutil.copytree(server["build"] / "fgvc-aircraft-2013b", planes)
    assert _run("--datasets", "aircraft", "--root", str(planes), "--verify-only", monkeypatch=monkeypatch) == 0
    assert f"aircraft: {planes} is complete" in capsys.readouterr().out
    os.remove(planes / "data" / "variants.txt")  # the dataset's own folder missing one file: that file is named
    assert _run("--datasets", "aircraft", "--root", str(planes), "--verify-only", monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "variants.txt" in line and "download" not in line, line
    for entry in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images"):
        shutil.rmtree(folder / entry) if entry == "images" else os.remove(folder / entry)
    # Without any of the dataset's own files it is a root again.
    assert _run("--datasets", "cub", "--root", str(folder), "--verify-only", monkeypatch=monkeypatch) == 2
    assert f"{folder / 'cub'} does not exist" in _one_error_line(capsys.readouterr().err)


def test_published_sources():
    cub, aircraft = ARCHIVES["cub"], ARCHIVES["aircraft"]
    assert cub.url.startswith("https://data.caltech.edu/records/") and cub.filename in cub.url
    assert aircraft.url.startswith("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/")
    assert (cub.md5, cub.size) == ("97eceeb196236b17998738112f37df78", 1_150_585_339)
    assert (aircraft.md5, aircraft.size) == ("d4acdd33327262359767eeaa97a4f732", 2_753_340_328)
    assert (cub.target, cub.top_folder, aircraft.target, aircraft.top_folder) == (
        "cub", "CUB_200_2011", "aircraft", "fgvc-aircraft-2013b")


def test_a_full_disk_while_extracting_names_the_folder_and_keeps_the_verified_archive(server, tmp_path, monkeypatch,
                                                                                      capsys):
    root = tmp_path / "data"
    md5 = server["md5"]["CUB_200_2011.tgz"]

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(path, "CUB_200_2011", "images.txt"))

    monkeypatch.setattr(tarfile.TarFile, "extractall", full_disk)
    assert _run("--datasets", "cub", "--root", str(root), "--url-cub", f"{server['url']}/CUB_200_2011.tgz",
                "--md5-cub", md5, monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "damaged" not in line, line
    assert "choose another folder (--root);" in line, line  # the flag that picks it, not the trainer's keys
    assert _left(root) == ["CUB_200_2011.tgz"]  # the verified download is kept for the next try


def test_hints_name_the_root_given_and_a_root_that_is_the_dataset_folder_is_caught_before_any_download(tmp_path):

    elsewhere = tmp_path / "datasets"
    with pytest.raises(UserError, match=f"--datasets cub --root {elsewhere} to download it"):
        prepare(["cub"], str(elsewhere), verify_only=True, log=lambda line: None)
    inside = tmp_path / "data" / "cub"
    inside.mkdir(parents=True)
    with pytest.raises(UserError, match=f"did you mean --root {tmp_path / 'data'}\\?"):
        prepare(["cub"], str(inside), verify_only=True, log=lambda line: None)
    # Downloading too: nothing is fetched into data/cub/cub (the URL would fail if it were tried).
    with pytest.raises(UserError, match=f"did you mean --root {tmp_path / 'data'}\\?"):
        prepare(["cub"], str(inside), urls={"cub": "http://127.0.0.1:9/none.tgz"}, log=lambda line: None)
    assert os.listdir(inside) == []
    # The other dataset's folder as --root: the advice was to download CUB into it.
    aircraft = tmp_path / "data" / "aircraft"
    aircraft.mkdir()
    for args in ({"verify_only": True}, {"urls": {"cub": "http://127.0.0.1:9/none.tgz"}}):
        with pytest.raises(UserError, match=f"--root {aircraft} is the aircraft dataset's own folder; .* did you "
                                            f"mean --root {tmp_path / 'data'}\\?"):
            prepare(["cub"], str(aircraft), log=lambda line: None, **args)
    assert os.listdir(aircraft) == []


def test_a_python_without_safe_tar_extraction_is_refused_before_any_download(server, tmp_path, monkeypatch):

    monkeypatch.delattr(tarfile, "data_filter")  # Python before 3.10.12 / 3.11.4
    with pytest.raises(UserError, match="cannot extract archives safely .* use Python 3.10.12, 3.11.4, 3.12"):
        prepare(["cub"], str(tmp_path / "data"), urls={"cub": "http://127.0.0.1:9/none.tgz"}, log=lambda line: None)
    assert not (tmp_path / "data").exists()
    # Checking what is there extracts nothing: it still works.
    shutil.copytree(server["build"] / "CUB_200_2011", tmp_path / "data" / "cub")
    (report,) = prepare(["cub"], str(tmp_path / "data"), verify_only=True, log=lambda line: None)
    assert report["train_images"] > 0


def test_an_md5_given_in_upper_case_is_accepted(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"pixel distillation")
    md5 = hashlib.md5(b"pixel distillation").hexdigest().upper()  # --md5-<name> takes [0-9a-fA-F]{32}
    download(source.as_uri(), str(tmp_path / "copy.bin"), size=18, md5=md5)
    assert (tmp_path / "copy.bin").read_bytes() == b"pixel distillation"


def _cub_archive(path, build):
    make_cub(str(build / "CUB_200_2011"), num_classes=2, per_class=1, image_size=(24, 20))
    return _tar_gz(path, build / "CUB_200_2011", "CUB_200_2011")


def test_an_archive_in_the_root_with_the_right_md5_is_extracted_without_downloading(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    md5 = _cub_archive(root / "CUB_200_2011.tgz", tmp_path / "build")
    lines = []
    report = prepare_dataset("cub", str(root), url="http://127.0.0.1:9/unreachable.tgz", md5=md5, log=lines.append)
    assert (report["train_images"], report["test_images"]) == (2, 2)
    assert not any("downloading" in line for line in lines), lines


def test_an_archive_in_the_root_with_a_wrong_md5_is_downloaded_again(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    good = tmp_path / "Downloads" / "CUB_200_2011.tgz"
    good.parent.mkdir()
    md5 = _cub_archive(good, tmp_path / "build")
    (root / "CUB_200_2011.tgz").write_bytes(b"an older, truncated download")
    lines = []
    report = prepare_dataset("cub", str(root), url=str(good), md5=md5, log=lines.append)
    assert (report["train_images"], report["test_images"]) == (2, 2)
    assert any("its MD5 is wrong; downloading it again" in line for line in lines), lines


def test_a_root_where_no_folder_can_be_made_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "disk"
    blocker.write_text("a file where the data folder should be")
    assert _run("--datasets", "cub", "--root", str(blocker / "data"), monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot create the folder {blocker / 'data'}: ") and line.endswith("(--root)"), line


def test_an_archive_that_writes_a_file_where_it_made_a_folder_is_damaged_not_a_destination_problem(tmp_path):
    archive = tmp_path / "odd.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo("CUB_200_2011/x")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        tar.addfile(tarfile.TarInfo("CUB_200_2011/x/inner"), io.BytesIO(b""))
        tar.addfile(tarfile.TarInfo("CUB_200_2011/x"), io.BytesIO(b"a file now"))  # over its own folder: EISDIR
    with pytest.raises(DamagedArchive, match="odd.tgz is damaged or not a tar archive"):
        extract(str(archive), "CUB_200_2011", str(tmp_path / "cub"))
    assert sorted(os.listdir(tmp_path)) == ["odd.tgz"]  # no temporary folder left


def test_a_download_is_refused_without_room_for_the_archive_and_its_extracted_copy(tmp_path, monkeypatch):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"x" * 1000)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda path: usage(10**9, 0, 1500))  # room for 1x, not 2.1x
    with pytest.raises(UserError, match="needs about .* free"):
        download(source.as_uri(), str(tmp_path / "copy.bin"))
    assert sorted(os.listdir(tmp_path)) == ["archive.bin"]


def test_an_archive_member_outside_its_folder_is_refused_as_damaged_and_nothing_is_written_outside(tmp_path):
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("CUB_200_2011/images.txt"), io.BytesIO(b""))
        tar.addfile(tarfile.TarInfo("CUB_200_2011/../../escaped.txt"), io.BytesIO(b"pwned"))
    (tmp_path / "root").mkdir()
    with pytest.raises(DamagedArchive):
        extract(str(archive), "CUB_200_2011", str(tmp_path / "root" / "cub"))
    assert not (tmp_path / "escaped.txt").exists()
    assert os.listdir(tmp_path / "root") == []


def test_an_archive_in_the_root_matching_an_upper_case_md5_is_not_downloaded_again(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    md5 = _cub_archive(root / "CUB_200_2011.tgz", tmp_path / "build").upper()
    lines = []
    report = prepare_dataset("cub", str(root), url="http://127.0.0.1:9/unreachable.tgz", md5=md5, log=lines.append)
    assert (report["train_images"], report["test_images"]) == (2, 2)
    assert not any("downloading" in line for line in lines), lines


def test_a_dataset_with_the_official_counts_is_reported_as_the_official_release(tmp_path, monkeypatch):
    make_cub(str(tmp_path / "data" / "cub"), num_classes=2, per_class=1, image_size=(24, 20))
    monkeypatch.setitem(ARCHIVES, "cub", dataclasses.replace(ARCHIVES["cub"], official=(2, 2, 2)))
    report = verify_existing("cub", str(tmp_path / "data"))
    assert report["official"] is True and "matches the official release" in prep._describe(report)


class _NoLengthHandler(http.server.BaseHTTPRequestHandler):
    """Serves BODY without a Content-Length (close-delimited), or with a Content-Length it does not keep."""
    BODY = b"x" * 5000
    LIE = None

    def do_GET(self):
        self.send_response(200)
        if self.LIE:
            self.send_header("Content-Length", str(self.LIE))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def plain_server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _NoLengthHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/a.tgz"
    httpd.shutdown()
    httpd.server_close()


def test_the_size_is_checked_on_the_bytes_received_when_the_server_sends_no_length(plain_server, tmp_path):
    with pytest.raises(UserError, match="has 5,000 bytes, expected 6,000"):
        download(plain_server, str(tmp_path / "a.tgz"), size=6000)
    assert os.listdir(tmp_path) == []


def test_a_download_cut_short_of_its_content_length_is_refused(plain_server, tmp_path, monkeypatch):
    monkeypatch.setattr(_NoLengthHandler, "LIE", 8000)
    with pytest.raises(UserError, match="stopped after 5,000 of 8,000 bytes"):
        download(plain_server, str(tmp_path / "a.tgz"))
    assert os.listdir(tmp_path) == []


def test_an_archive_whose_layout_fails_its_check_is_not_moved_into_place(tmp_path):
    build = tmp_path / "build"
    make_cub(str(build / "CUB_200_2011"), num_classes=2, per_class=1, image_size=(24, 20))
    first = (build / "CUB_200_2011" / "images.txt").read_text().splitlines()[0].split(" ", 1)[1]
    os.remove(build / "CUB_200_2011" / "images" / first)  # an image the annotations name is missing
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build / "CUB_200_2011", arcname="CUB_200_2011")
    root = tmp_path / "data"
    with pytest.raises(UserError, match="missing"):
        prepare_dataset("cub", str(root), url=str(archive), verify=False, log=lambda line: None)
    assert _left(root) == []  # no cub/ that a re-run would take for a finished dataset, no .partial folder


def test_an_archive_given_by_its_path_in_the_root_is_kept_when_its_md5_differs_or_it_is_damaged(tmp_path):
    # --url-cub data/CUB_200_2011.tgz: an MD5 that differs (no --md5-cub) deleted the user's only copy as a wrong
    # download, then failed to "download" it from itself.
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "CUB_200_2011.tgz"
    md5 = _cub_archive(archive, tmp_path / "build")
    with pytest.raises(UserError, match=f"checksum mismatch for {archive} \\(--url-cub\\): MD5 {md5}, expected "
                                        f"{ARCHIVES['cub'].md5}; the file is kept. Pass --md5-cub {md5} or"):
        prepare_dataset("cub", str(root), url=str(archive), log=lambda line: None)
    assert archive.is_file()
    # Damaged, unverified (--no-verify): kept too; a download into the root would have been deleted.
    archive.write_bytes(b"not a tar archive")
    with pytest.raises(UserError, match=f"--url-cub's archive {archive} is kept"):
        prepare_dataset("cub", str(root), url=str(archive), verify=False, log=lambda line: None)
    assert archive.read_bytes() == b"not a tar archive"


def test_a_second_prepare_on_the_same_root_waits_for_the_first_and_then_only_checks_its_dataset(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    other = lock_file(str(root / prep.LOCK_FILE))  # the first prepare_data.py, extracting into its hidden folder
    (root / ".cub.partial-first").mkdir()
    lines, done = [], []
    waiter = threading.Thread(target=lambda: done.append(prepare_dataset(
        "cub", str(root), url="http://127.0.0.1:9/unreachable.tgz", log=lines.append)))
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        # It waits: the first one's extraction folder is not removed as a killed run's, nothing is downloaded.
        assert lines == [f"cub: another prepare_data.py (pid {os.getpid()}) is preparing data in {root}; "
                         "waiting for it to finish"]
        assert waiter.is_alive() and (root / ".cub.partial-first").is_dir()
        make_cub(str(root / ".cub.partial-first" / "CUB_200_2011"), num_classes=2, per_class=1, image_size=(24, 20))
        os.rename(root / ".cub.partial-first" / "CUB_200_2011", root / "cub")  # the first one finishes
        os.rmdir(root / ".cub.partial-first")
    finally:
        release_lock(other)
        waiter.join(60)
    assert lines[1:] == [f"cub: {root / 'cub'} is there already; checking it"]
    assert (done[0]["train_images"], done[0]["test_images"]) == (2, 2)


def test_a_dataset_folder_made_by_something_else_during_extraction_is_left_as_it_is_in_one_line(tmp_path):
    archive = tmp_path / "CUB_200_2011.tgz"
    _cub_archive(archive, tmp_path / "build")
    dest = tmp_path / "cub"

    def check(folder):  # meanwhile another program makes the dataset's folder
        dest.mkdir()
        (dest / "theirs.txt").write_text("theirs")

    with pytest.raises(UserError) as err:
        extract(str(archive), "CUB_200_2011", str(dest), check=check)
    assert str(err.value) == (f"{dest} appeared while CUB_200_2011.tgz was extracted; nothing was moved there. "
                              "Re-run to check it, or remove it and re-run to extract again")
    assert os.listdir(dest) == ["theirs.txt"] and sorted(os.listdir(tmp_path)) == ["CUB_200_2011.tgz", "build", "cub"]
