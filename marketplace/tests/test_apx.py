from __future__ import annotations

import hashlib
import io
import json
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from apt_marketplace.apx.errors import ApxError
from apt_marketplace.apx.extract import Limits
from apt_marketplace.apx.manifest import Manifest
from apt_marketplace.apx.pack import pack, write_apx
from apt_marketplace.apx.reader import read_apx
from apt_marketplace.apx.signing import generate_signing_key, public_key_text, verify_signature

NAME = "apt-plugin-fake"


def _manifest(files: dict[str, bytes], **extra) -> bytes:
    doc = {
        "name": NAME,
        "version": "1.0.0",
        "summary": "s",
        "provides": ["attention.fake"],
        "requires": {},
        "core": "^2.0",
        "python": ">=3.8",
        "files": {p: hashlib.sha256(b).hexdigest() for p, b in files.items()},
        **extra,
    }
    return json.dumps(doc).encode()


def _zip(entries: list[tuple[str, bytes]], mode: int | None = None, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            for name, body in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = compress
                info.create_system = 3
                info.external_attr = (mode if mode is not None and name != "apx.json" else stat.S_IFREG | 0o644) << 16
                zf.writestr(info, body)
    return buf.getvalue()


@pytest.fixture
def wheel(wheel_factory) -> tuple[str, bytes]:
    return wheel_factory(NAME, "1.0.0", ["apt-core>=2,<3"])


def _valid(wheel: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    path = f"wheels/{wheel[0]}"
    return [("apx.json", _manifest({path: wheel[1]})), (path, wheel[1])]


def test_valid_archive_reads(wheel) -> None:
    apx = read_apx(_zip(_valid(wheel)))
    assert apx.manifest.name == NAME
    assert apx.wheels[0].filename == wheel[0]
    assert b"Name: apt-plugin-fake" in apx.wheels[0].metadata
    assert apx.wheels[0].requires_python == ">=3.8"


def test_pack_builds_reproducible_archive_from_project(plugin_project, tmp_path: Path) -> None:
    project = plugin_project("apt-plugin-packme", "1.2.0rc1", requires={"apt-plugin-other": "^1.0"}, core=">=2.0 <3.0")
    first = pack(project, tmp_path / "a", build_isolation=False)
    second = pack(project, tmp_path / "b", build_isolation=False)
    assert first.name == "apt-plugin-packme-1.2.0-rc.1.apx"
    assert first.read_bytes() == second.read_bytes()
    apx = read_apx(first)
    m = apx.manifest
    assert (m.version, m.provides, dict(m.requires), m.core, m.python) == (
        "1.2.0-rc.1",
        ("attention.fake",),
        {"apt-plugin-other": "^1.0"},
        ">=2.0 <3.0",
        ">=3.8",
    )
    assert list(m.files) == ["wheels/apt_plugin_packme-1.2.0rc1-py3-none-any.whl"]
    assert b"Requires-Dist: torch" in apx.wheels[0].metadata
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_pack_explains_missing_tool_apt(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.0.0"\n')
    with pytest.raises(ApxError, match=r"\[tool.apt\]"):
        pack(tmp_path, tmp_path / "out")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.0.0"\n[tool.apt]\nprovides = []\n')
    with pytest.raises(ApxError, match="core"):
        pack(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pack_rejects_provides_that_disagree_with_entry_points(plugin_project, tmp_path: Path) -> None:
    project = plugin_project("apt-plugin-disagree")
    text = (project / "pyproject.toml").read_text().replace('provides = ["attention.fake"]', 'provides = ["router.other"]')
    (project / "pyproject.toml").write_text(text)
    with pytest.raises(ApxError, match="differs from the apt.providers entry points"):
        pack(project, tmp_path, build_isolation=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.whl", r"outside the archive root"),
        ("wheels/../../evil.whl", r"outside the archive root"),
        ("/etc/evil.whl", r"absolute path"),
        ("C:/evil.whl", r"absolute path"),
        ("wheels\\evil.whl", r"backslash"),
        ("wheels//evil.whl", r"empty path component"),
    ],
)
def test_rejects_hostile_paths(wheel, name: str, message: str) -> None:
    entries = _valid(wheel) + [(name, b"x")]
    with pytest.raises(ApxError, match=message):
        read_apx(_zip(entries))


def test_rejects_symlink(wheel) -> None:
    path = f"wheels/{wheel[0]}"
    data = _zip([("apx.json", _manifest({path: wheel[1]})), (path, wheel[1])], mode=stat.S_IFLNK | 0o777)
    with pytest.raises(ApxError, match="symlink"):
        read_apx(data)


def test_rejects_special_file(wheel) -> None:
    path = f"wheels/{wheel[0]}"
    data = _zip([("apx.json", _manifest({path: wheel[1]})), (path, wheel[1])], mode=stat.S_IFIFO | 0o644)
    with pytest.raises(ApxError, match="special file"):
        read_apx(data)


def test_rejects_duplicate_and_case_colliding_names(wheel) -> None:
    entries = _valid(wheel)
    with pytest.raises(ApxError, match="appears twice"):
        read_apx(_zip(entries + [entries[1]]))
    with pytest.raises(ApxError, match="case-insensitive"):
        read_apx(_zip(entries + [("APX.json", b"{}")]))


def test_rejects_zip_bomb() -> None:
    bomb = b"\0" * (40 << 20)
    path = "wheels/apt_plugin_fake-1.0.0-py3-none-any.whl"
    data = _zip([("apx.json", _manifest({path: bomb})), (path, bomb)])
    assert len(data) < 200_000
    with pytest.raises(ApxError, match="expands"):
        read_apx(data)


def test_rejects_archives_beyond_size_and_entry_caps(wheel) -> None:
    with pytest.raises(ApxError, match="unpacks beyond"):
        read_apx(_zip(_valid(wheel)), Limits(max_total_bytes=1000))
    with pytest.raises(ApxError, match="entries; the limit"):
        read_apx(_zip(_valid(wheel) + [(f"x{i}", b"") for i in range(70)]))


def test_rejects_unsupported_compression(wheel) -> None:
    with pytest.raises(ApxError, match="compression method"):
        read_apx(_zip(_valid(wheel), compress=zipfile.ZIP_BZIP2))


def test_rejects_hash_mismatch(wheel) -> None:
    path = f"wheels/{wheel[0]}"
    with pytest.raises(ApxError, match="does not match the manifest"):
        read_apx(_zip([("apx.json", _manifest({path: b"other"})), (path, wheel[1])]))


def test_rejects_manifest_contents_mismatch(wheel) -> None:
    path = f"wheels/{wheel[0]}"
    with pytest.raises(ApxError, match="does not list"):
        read_apx(_zip(_valid(wheel) + [("wheels/extra.whl", b"x")]))
    with pytest.raises(ApxError, match="lacks"):
        read_apx(_zip([("apx.json", _manifest({path: wheel[1], "wheels/gone-1.0.0-py3-none-any.whl": b"y"})), (path, wheel[1])]))
    with pytest.raises(ApxError, match="no apx.json"):
        read_apx(_zip([(path, wheel[1])]))


def test_rejects_wheel_of_another_project_or_version(wheel_factory) -> None:
    other = wheel_factory("pip", "1.0.0")
    with pytest.raises(ApxError, match="may only carry wheels of"):
        read_apx(_zip(_valid(other)))
    newer = wheel_factory(NAME, "1.0.1")
    with pytest.raises(ApxError, match="manifest says 1.0.0"):
        read_apx(_zip(_valid(newer)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", "1.0", "strict semver"),
        ("requires", {"apt-plugin-x": "^^1"}, "requires apt-plugin-x"),
        ("provides", ["Attention"], "kind.name"),
        ("core", ">>2", "core"),
        ("sandbox", "never", "sandbox"),
        ("python", "<3.9<", "PEP 440"),
        ("evil", 1, "unknown fields"),
    ],
)
def test_rejects_bad_manifest_fields(wheel, field: str, value, message: str) -> None:
    path = f"wheels/{wheel[0]}"
    doc = json.loads(_manifest({path: wheel[1]}))
    doc[field] = value
    with pytest.raises(ApxError, match=message):
        read_apx(_zip([("apx.json", json.dumps(doc).encode()), (path, wheel[1])]))


def test_not_a_zip() -> None:
    with pytest.raises(ApxError, match="not a zip"):
        read_apx(b"hello world" * 10)


def test_signature_round_trip(tmp_path: Path, wheel) -> None:
    key = generate_signing_key()
    manifest = Manifest(name=NAME, version="1.0.0", provides=("attention.fake",), core="^2.0")
    signed = read_apx(write_apx(tmp_path / "s.apx", manifest, {wheel[0]: wheel[1]}, key))
    verify_signature(signed, public_key_text(key))
    with pytest.raises(ApxError, match="does not verify"):
        verify_signature(signed, public_key_text(generate_signing_key()))
    unsigned = read_apx(write_apx(tmp_path / "u.apx", manifest, {wheel[0]: wheel[1]}))
    with pytest.raises(ApxError, match="must be signed"):
        verify_signature(unsigned, public_key_text(key))


def _attacks(wheel: tuple[str, bytes]) -> dict[str, tuple[bytes, str]]:
    path = f"wheels/{wheel[0]}"
    good = _valid(wheel)
    bomb = b"\0" * (40 << 20)
    return {
        "zip-slip": (_zip(good + [("../../home/user/.bashrc", b"evil")]), "outside the archive root"),
        "symlink": (_zip(good, mode=stat.S_IFLNK | 0o777), "symlink"),
        "bomb": (_zip([("apx.json", _manifest({path: bomb})), (path, bomb)]), "expands"),
        "duplicate": (_zip(good + [good[1]]), "appears twice"),
        "hash-mismatch": (_zip([("apx.json", _manifest({path: b"other"})), (path, wheel[1])]), "does not match"),
        "unlisted-file": (_zip(good + [("wheels/extra.whl", b"x")]), "does not list"),
    }


@pytest.mark.parametrize("attack", ["zip-slip", "symlink", "bomb", "duplicate", "hash-mismatch", "unlisted-file"])
def test_server_rejects_hostile_archives(server, wheel, attack: str) -> None:
    data, message = _attacks(wheel)[attack]
    with server.client(server.key(NAME)) as c:
        resp = c.post("/api/v1/publish", content=data)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_archive" and message in resp.json()["detail"]
    with server.client() as c:
        assert c.get(f"/api/v1/packages/{NAME}").status_code == 404
