"""The real download code against a scripted HTTP server on 127.0.0.1 serving tiny archives."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from domainbed.data import download
from domainbed.data.download import known_digests
from domainbed.scripts.download import main

PACS_ENVS = ("art_painting", "cartoon", "photo", "sketch")
VLCS_ENVS = ("Caltech101", "LabelMe", "SUN09", "VOC2007")


class Origin:
    """In-memory files over HTTP with scripted misbehaviour; records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first_after: dict[str, int] = {}  # path -> bytes sent before closing, once
        self.ignore_range: set[str] = set()
        self.gated: set[str] = set()  # answered by a Drive-like confirmation page unless confirm=t
        self.requests: list[tuple[str, dict[str, str]]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                origin.requests.append((self.path, dict(self.headers)))
                path, _, query = self.path.partition("?")
                if path in origin.gated and "confirm=t" not in query:
                    page = (f'<html><form id="download-form" action="{path}" method="get">'
                            '<input type="hidden" name="id" value="abc">'
                            '<input type="hidden" name="confirm" value="t"></form></html>').encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                body = origin.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start, range_header = 0, self.headers.get("Range")
                if range_header and path not in origin.ignore_range:
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = origin.cut_first_after.pop(path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    server = Origin()
    yield server
    server.close()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tar_gz(entries: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buffer.getvalue()


def image_tree(prefix: str, envs, classes=("dog", "horse")) -> dict[str, bytes]:
    return {f"{prefix}{env}/{cls}/0.png": f"{env}-{cls}".encode() for env in envs for cls in classes}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv] + ["--no_progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("dataset, folder, filename, envs, build, wrapper", [
    ("PACS", "PACS", "PACS.zip", PACS_ENVS, make_zip, "kfold/"),
    ("VLCS", "VLCS", "VLCS.tar.gz", VLCS_ENVS, make_tar_gz, "VLCS/"),
])
def test_complete_download_lays_out_dataset_and_second_run_makes_no_request(
        origin, tmp_path, capsys, dataset, folder, filename, envs, build, wrapper):
    archive = build(image_tree(wrapper, envs) | {"README.txt": b"not part of any env"})
    origin.files[f"/{dataset}/{filename}"] = archive
    data = tmp_path / "data"

    code, out, err = run(["--data_dir", data, "--datasets", dataset, "--mirror", origin.url], capsys)

    assert code == 0, err
    expected = {f"{env}/{cls}/0.png" for env in envs for cls in ("dog", "horse")} | {".complete"}
    assert files_under(data / folder) == expected
    assert (data / folder / envs[0] / "dog" / "0.png").read_bytes() == f"{envs[0]}-dog".encode()
    assert f"sha256 {hashlib.sha256(archive).hexdigest()}  {dataset}/{filename}" in out
    assert sorted(p.name for p in data.iterdir()) == [folder]  # archive and staging cleaned up
    assert len(origin.requests) == 1

    code, out, _ = run(["--data_dir", data, "--datasets", dataset, "--mirror", origin.url], capsys)
    assert code == 0 and "already complete" in out
    assert len(origin.requests) == 1


def test_cut_connection_resumes_with_range(origin, tmp_path):
    body = random.Random(0).randbytes(300_000)
    origin.files["/big.bin"] = body
    origin.cut_first_after["/big.bin"] = 100_000
    dest = tmp_path / "big.bin"

    digest = download.fetch([origin.url + "/big.bin"], dest, retry_wait=0, progress=False)

    assert dest.read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert not (tmp_path / "big.bin.part").exists()
    assert [headers.get("Range") for _, headers in origin.requests] == [None, "bytes=100000-"]


def test_server_ignoring_range_restarts_cleanly(origin, tmp_path):
    body = random.Random(1).randbytes(200_000)
    origin.files["/big.bin"] = body
    origin.cut_first_after["/big.bin"] = 50_000
    origin.ignore_range.add("/big.bin")
    dest = tmp_path / "big.bin"

    download.fetch([origin.url + "/big.bin"], dest, retry_wait=0, progress=False)

    assert origin.requests[1][1].get("Range") == "bytes=50000-"
    assert dest.read_bytes() == body  # not the first 50 kB twice


def test_drive_style_confirmation_page_is_followed(origin, tmp_path):
    origin.files["/PACS/PACS.zip"] = b"zip bytes"
    origin.gated.add("/PACS/PACS.zip")
    download.fetch([origin.url + "/PACS/PACS.zip"], tmp_path / "PACS.zip", progress=False)
    assert (tmp_path / "PACS.zip").read_bytes() == b"zip bytes"
    assert "confirm=t" in origin.requests[-1][0] and len(origin.requests) == 2


def test_digest_mismatch_stops_with_nothing_left(origin, tmp_path, capsys, monkeypatch):
    origin.files["/PACS/PACS.zip"] = make_zip(image_tree("kfold/", PACS_ENVS))
    monkeypatch.setitem(known_digests.KNOWN_SHA256, "PACS/PACS.zip", "0" * 64)
    data = tmp_path / "data"

    code, _, err = run(["--data_dir", data, "--datasets", "PACS", "--mirror", origin.url], capsys)

    assert code == 2
    assert err.startswith("error: PACS: sha256 mismatch for PACS.zip") and "Traceback" not in err
    assert files_under(data) == set()
    assert not (data / "PACS").exists()


def test_404_names_url_reason_and_manual_layout(origin, tmp_path, capsys):
    data = tmp_path / "data"
    code, _, err = run(["--data_dir", data, "--datasets", "PACS", "--mirror", origin.url + "/"], capsys)

    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{origin.url}/PACS/PACS.zip (HTTP 404 Not Found)" in err
    assert f"{data}/.downloads/PACS/PACS.zip" in err
    assert f"{data}/PACS/{{art_painting,cartoon,photo,sketch}}/<class>/<image>" in err
    assert files_under(data) == set()


def test_hand_placed_archive_is_used_without_request(origin, tmp_path, capsys):
    data = tmp_path / "data"
    (data / ".downloads" / "PACS").mkdir(parents=True)
    (data / ".downloads" / "PACS" / "PACS.zip").write_bytes(make_zip(image_tree("x/y/", PACS_ENVS)))

    code, _, err = run(["--data_dir", data, "--datasets", "PACS", "--mirror", origin.url], capsys)

    assert code == 0, err
    assert origin.requests == []
    assert (data / "PACS" / "sketch" / "horse" / "0.png").read_bytes() == b"sketch-horse"


@pytest.mark.parametrize("archive", [
    make_zip({"ok/a.txt": b"a", "../evil.txt": b"x"}),
    make_tar_gz({"ok/a.txt": b"a", "../evil.txt": b"x"}),
    make_tar_gz({"/tmp/abs_evil.txt": b"x"}),
    make_tar_gz({"ok/a.txt": b"a"}, links={"ok/link": (tarfile.SYMTYPE, "../../evil.txt")}),
    make_tar_gz({"ok/a.txt": b"a"}, links={"ok/hard": (tarfile.LNKTYPE, "/etc/passwd")}),
], ids=["zip-dotdot", "tar-dotdot", "tar-absolute", "tar-symlink", "tar-hardlink"])
def test_escaping_archive_entries_are_refused(tmp_path, archive):
    path = tmp_path / "bad.archive"
    path.write_bytes(archive)
    dest = tmp_path / "a" / "b"
    with pytest.raises(download.DownloadError, match="refusing the archive"):
        download.extract_archive(path, dest)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_refused_archive_leaves_nothing_in_place(origin, tmp_path, capsys):
    origin.files["/PACS/PACS.zip"] = make_zip(image_tree("kfold/", PACS_ENVS) | {"../evil.txt": b"x"})
    data = tmp_path / "data"

    code, _, err = run(["--data_dir", data, "--datasets", "PACS", "--mirror", origin.url], capsys)

    assert code == 2 and "outside the target" in err
    assert files_under(data) == set() and not (data / "PACS").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_domain_net_duplicates_list_is_applied(origin, tmp_path, capsys):
    for domain in download.DOMAINNET_DOMAINS:
        origin.files[f"/DomainNet/{domain}.zip"] = make_zip(image_tree("", [domain], ("cat", "dog")))
    listing = tmp_path / "dups.txt"
    listing.write_text("clipart/cat/0.png\nreal/dog/0.png\nsketch/cat/missing.png\n")
    data = tmp_path / "data"

    code, out, err = run(["--data_dir", data, "--datasets", "DomainNet", "--mirror", origin.url,
                          "--domainnet_duplicates", listing], capsys)

    assert code == 0, err
    remaining = files_under(data / "domain_net") - {".complete"}
    everything = {f"{d}/{c}/0.png" for d in download.DOMAINNET_DOMAINS for c in ("cat", "dog")}
    assert remaining == everything - {"clipart/cat/0.png", "real/dog/0.png"}
    assert "removed 2 duplicate images" in out


def test_remove_listed_files_refuses_paths_outside_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text("../keep.txt\n")
    with pytest.raises(download.DownloadError, match="outside"):
        download.remove_listed_files(tmp_path / "root", listing)
    assert (tmp_path / "keep.txt").exists()


def write_coco(path: Path, images, annotations, categories) -> None:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def test_regroup_terra_incognita_by_location_and_category(tmp_path):
    raw = tmp_path / "raw"
    (raw / "imgs" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        (raw / "imgs" / name).write_bytes(name.encode())
    (raw / "imgs" / "sub" / "f.jpg").write_bytes(b"f.jpg")
    categories = [{"id": 1, "name": "bobcat"}, {"id": 2, "name": "empty"}, {"id": 3, "name": "car"}]
    write_coco(raw / "train.json",
               [{"id": "a", "file_name": "imgs/a.jpg", "location": 38},     # kept
                {"id": "b", "file_name": "b.jpg", "location": "100"},       # kept, found by name
                {"id": "c", "file_name": "imgs/c.jpg", "location": 999},    # location excluded
                {"id": "d", "file_name": "imgs/d.jpg", "location": 43}],    # category excluded
               [{"image_id": "a", "category_id": 1}, {"image_id": "a", "category_id": 2},
                {"image_id": "b", "category_id": 2}, {"image_id": "c", "category_id": 1},
                {"image_id": "d", "category_id": 3}],
               categories)
    write_coco(raw / "val.json",
               [{"id": 7, "file_name": "f.jpg", "location": "46"},
                {"id": 8, "file_name": "e.jpg", "location": "46"}],          # no annotation
               [{"image_id": 7, "category_id": 1}], categories)
    out = tmp_path / "terra_incognita"

    counts = download.regroup_terra_incognita(raw, [raw / "train.json", raw / "val.json"], out)

    assert files_under(out) == {"location_38/bobcat/a.jpg", "location_100/empty/b.jpg",
                                "location_46/bobcat/f.jpg"}
    assert (out / "location_46" / "bobcat" / "f.jpg").read_bytes() == b"f.jpg"
    assert counts == {"38": 1, "43": 0, "46": 1, "100": 1}


def test_terra_incognita_end_to_end(origin, tmp_path, capsys):
    images = {f"eccv_18_all_images_sm/{i}.jpg": f"img{i}".encode() for i in range(8)}
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "location": loc}
                       for i, loc in enumerate(["38", "43", "46", "100"] * 2)],
            "annotations": [{"image_id": i, "category_id": i % 2} for i in range(8)],
            "categories": [{"id": 0, "name": "coyote"}, {"id": 1, "name": "raccoon"}]}
    origin.files["/TerraIncognita/eccv_18_all_images_sm.tar.gz"] = make_tar_gz(images)
    origin.files["/TerraIncognita/eccv_18_annotations.tar.gz"] = make_tar_gz(
        {"eccv_18_annotation_files/train_annotations.json": json.dumps(coco).encode()})
    data = tmp_path / "data"

    code, _, err = run(["--data_dir", data, "--datasets", "TerraIncognita", "--mirror", origin.url], capsys)

    assert code == 0, err
    assert files_under(data / "terra_incognita") == {
        ".complete", "location_38/coyote/0.jpg", "location_43/raccoon/1.jpg", "location_46/coyote/2.jpg",
        "location_100/raccoon/3.jpg", "location_38/coyote/4.jpg", "location_43/raccoon/5.jpg",
        "location_46/coyote/6.jpg", "location_100/raccoon/7.jpg"}


def test_mirror_replaces_google_drive_origin():
    plain = download.describe_files()
    mirrored = download.describe_files(mirror="https://mirror.example/data/")
    assert any(line.startswith("PACS/PACS.zip  https://drive.google.com/uc?export=download&id=")
               for line in plain)
    assert "PACS/PACS.zip  https://mirror.example/data/PACS/PACS.zip" in mirrored
    assert all("mirror.example" in line for line in mirrored)


def test_bad_dataset_name_and_incomplete_folder_are_clear_errors(tmp_path, capsys):
    code, _, err = run(["--data_dir", tmp_path, "--datasets", "PACZ"], capsys)
    assert code == 2 and "unknown dataset 'PACZ'" in err
    (tmp_path / "PACS" / "photo" / "dog").mkdir(parents=True)
    code, _, err = run(["--data_dir", tmp_path, "--datasets", "PACS", "--mirror", "http://127.0.0.1:9"],
                       capsys)
    assert code == 2 and "exists but is incomplete" in err


@pytest.mark.skipif(importlib.util.find_spec("wilds") is not None, reason="wilds is installed")
def test_wilds_without_package_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(["--data_dir", tmp_path, "--datasets", "WILDSFMoW"], capsys)
    assert code == 2 and "pip install wilds" in err and "Traceback" not in err
