"""A model version's files on disk (recsys.models.artifacts): no SQL store needed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime

import numpy as np
import pytest

from recsys.errors import ModelError
from recsys.models import artifacts
from recsys.models.artifacts import MANIFEST
from tests.models.test_repository import CountStrategy, batch, small_data

CREATED = datetime(2026, 1, 2, 3, 4, 5)


@pytest.fixture
def data():
    return small_data()


@pytest.fixture
def written(tmp_path, data):
    """A version written by ``write_version``: (path, model, WrittenVersion)."""
    path, version = artifacts.claim_version_dir(str(tmp_path), "counts", "v1", lambda v: False)
    model = CountStrategy(smoothing=0.5).fit(data)
    w = artifacts.write_version(path, model, data, {"ndcg@10": 0.25}, version, CREATED)
    return path, model, w


def verify(path: str, sha: str) -> dict:
    return artifacts.verify_version_dir(path, "counts", "v1", sha)


def test_write_verify_load_round_trip(written, data):
    path, model, w = written
    assert w.metrics == {"ndcg@10": 0.25} and w.params["params"] == {"smoothing": 0.5}
    assert w.snapshot["events"] == len(data) and w.snapshot["users"] == data.n_users
    assert w.manifest_sha256 == artifacts.sha256_file(os.path.join(path, MANIFEST))
    manifest = verify(path, w.manifest_sha256)
    on_disk = artifacts.file_checksums(path)
    del on_disk[MANIFEST]
    assert manifest == {
        "format": artifacts.MANIFEST_FORMAT,
        "strategy": "counts",
        "version": "v1",
        "created_at": "2026-01-02T03:04:05Z",
        "files": on_disk,
    }
    loaded, items, users = artifacts.load_strategy(path, CountStrategy, "counts/v1")
    np.testing.assert_array_equal(loaded.score(batch(data)), model.score(batch(data)))
    assert items.ids.tolist() == data.items.ids.tolist()
    assert users.ids.tolist() == data.users.ids.tolist()


def test_manifest_format_is_unchanged(written):
    """Versions written before the split must keep loading: same keys, same JSON layout."""
    path, _, w = written
    with open(os.path.join(path, MANIFEST)) as f:
        text = f.read()
    manifest = json.loads(text)
    assert set(manifest) == {"format", "strategy", "version", "created_at", "files"}
    assert manifest["format"] == 1
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    for entry in manifest["files"].values():
        assert set(entry) == {"sha256", "size"}


def test_a_hand_written_version_in_the_documented_layout_loads(tmp_path, data):
    """The reader against the documented layout, independent of ``write_version``."""
    path = tmp_path / "counts" / "old"
    path.mkdir(parents=True)
    model = CountStrategy().fit(data)
    model.save(str(path))
    np.savez(path / "items.npz", ids=np.asarray(data.items.ids, dtype=str))
    np.savez(path / "users.npz", ids=np.asarray(data.users.ids, dtype=str))
    (path / "snapshot.json").write_text("{}\n")
    (path / "metrics.json").write_text("{}\n")
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(path.iterdir())
    }
    manifest = {"format": 1, "strategy": "counts", "version": "old", "files": files,
                "created_at": "2025-06-01T00:00:00Z"}  # fmt: skip
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (path / MANIFEST).write_bytes(raw)
    artifacts.verify_version_dir(str(path), "counts", "old", hashlib.sha256(raw).hexdigest())
    loaded, items, _ = artifacts.load_strategy(str(path), CountStrategy, "counts/old")
    np.testing.assert_array_equal(loaded.score(batch(data)), model.score(batch(data)))
    assert items.ids.tolist() == data.items.ids.tolist()


def test_a_tampered_file_is_refused_naming_it(written):
    path, _, w = written
    target = os.path.join(path, "params.json")
    with open(target, "r+b") as f:  # same size, one byte different
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(ModelError) as e:
        verify(path, w.manifest_sha256)
    assert e.value.description == (
        "counts/v1: params.json checksum mismatch (sha256 differs from the manifest): "
        "file is corrupt or was modified"
    )
    with open(target, "ab") as f:
        f.write(b" ")
    with pytest.raises(ModelError, match=r"counts/v1: params\.json has the wrong size"):
        verify(path, w.manifest_sha256)


def test_missing_manifest_directory_and_file_are_refused(tmp_path, written):
    path, _, w = written
    with pytest.raises(ModelError, match=r"version directory .* is missing"):
        verify(str(tmp_path / "nowhere"), w.manifest_sha256)
    os.rename(os.path.join(path, "items.npz"), tmp_path / "items.npz")
    with pytest.raises(ModelError, match=r"^counts/v1: items\.npz is missing$"):
        verify(path, w.manifest_sha256)
    os.remove(os.path.join(path, MANIFEST))
    with pytest.raises(ModelError, match=r"^counts/v1: manifest\.json is missing$"):
        verify(path, w.manifest_sha256)


def test_manifest_must_match_the_recorded_checksum_and_version(written):
    path, _, w = written
    with pytest.raises(ModelError, match=r"manifest\.json checksum mismatch \(recorded 000000"):
        verify(path, "0" * 64)
    with pytest.raises(ModelError, match="describes a different version"):
        artifacts.verify_version_dir(path, "counts", "v2", w.manifest_sha256)
    # A manifest that points outside the version is refused even with a matching checksum.
    mpath = os.path.join(path, MANIFEST)
    manifest = json.load(open(mpath))
    manifest["files"]["../escape"] = {"sha256": "0" * 64, "size": 0}
    with open(mpath, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ModelError, match=r"lists a path outside the version: \.\./escape"):
        verify(path, artifacts.sha256_file(mpath))


def test_an_unlisted_file_is_refused(written):
    path, _, w = written
    os.makedirs(os.path.join(path, "sub"))
    with open(os.path.join(path, "sub", "extra.bin"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ModelError, match=r"not in the manifest: \['sub/extra\.bin'\]"):
        verify(path, w.manifest_sha256)


def test_checksum_of_a_whole_directory_is_stable(tmp_path, written):
    path, _, _ = written
    first = artifacts.file_checksums(path)
    assert artifacts.file_checksums(path) == first
    assert list(first) == sorted(first)
    copy = shutil.copytree(path, tmp_path / "elsewhere" / "copy")  # other place, other mtimes
    assert artifacts.file_checksums(str(copy)) == first
    with open(os.path.join(copy, "metrics.json"), "a") as f:
        f.write(" ")
    changed = artifacts.file_checksums(str(copy))
    assert {k for k in first if first[k] != changed[k]} == {"metrics.json"}
    os.makedirs(os.path.join(copy, "a", "b"))
    open(os.path.join(copy, "a", "b", "c.npz"), "wb").close()
    assert "a/b/c.npz" in artifacts.file_checksums(str(copy))


def test_claim_version_dir(tmp_path):
    root = str(tmp_path)
    path, v = artifacts.claim_version_dir(root, "counts", "v1", lambda v: False)
    assert path == os.path.join(root, "counts", "v1") and os.path.isdir(path) and v == "v1"
    with pytest.raises(ModelError, match="already exists") as e:
        artifacts.claim_version_dir(root, "counts", "v1", lambda v: False)  # the directory
    assert e.value.code == 409
    with pytest.raises(ModelError, match="counts version v2 already exists"):
        artifacts.claim_version_dir(root, "counts", "v2", lambda v: v == "v2")  # the record
    claimed = [artifacts.claim_version_dir(root, "counts", None, lambda v: False)[1]]
    claimed.append(artifacts.claim_version_dir(root, "counts", None, lambda v: v == claimed[0])[1])
    claimed.append(artifacts.claim_version_dir(root, "counts", None, lambda v: False)[1])
    assert len(set(claimed)) == 3 and claimed == sorted(claimed)
    for bad in ("../x", "", ".hidden", "a/b", "x" * 65):
        with pytest.raises(ModelError, match="invalid") as e:
            artifacts.claim_version_dir(root, bad, "v1", lambda v: False)
        assert e.value.code == 400


class _NoParams(CountStrategy):
    def save(self, path: str) -> None:
        np.savez(os.path.join(path, "arrays.npz"), x=np.zeros(2))


class _Reserved(CountStrategy):
    def save(self, path: str) -> None:
        super().save(path)
        with open(os.path.join(path, artifacts.METRICS_FILE), "w") as f:
            f.write("{}")


@pytest.mark.parametrize(
    ("cls", "message"),
    [(_NoParams, r"counts\.save\(\) wrote no params\.json"),
     (_Reserved, r"wrote reserved file\(s\) \['metrics\.json'\]")],
)  # fmt: skip
def test_write_version_refuses_a_bad_save(tmp_path, data, cls, message):
    path, v = artifacts.claim_version_dir(str(tmp_path), "counts", None, lambda v: False)
    with pytest.raises(ModelError, match=message):
        artifacts.write_version(path, cls().fit(data), data, None, v, CREATED)


def test_loading_never_unpickles(written):
    path, _, w = written
    np.savez(os.path.join(path, "items.npz"), ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError, match=r"counts/v1: load failed: ValueError: .*pickle"):
        artifacts.load_strategy(path, CountStrategy, "counts/v1")


def test_sizes(tmp_path, written):
    path, model, _ = written
    assert artifacts.dir_bytes(path) == sum(
        os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
    )
    assert artifacts.dir_bytes(str(tmp_path / "missing")) == 0
    c = model.cooc_
    expected = model.counts_.nbytes + c.data.nbytes + c.indices.nbytes + c.indptr.nbytes
    assert artifacts.model_nbytes(model) == expected
    assert artifacts.model_nbytes(np.zeros(10, np.float32)) == 40
