"""Model folders: safetensors + JSON only, atomic, never unpickled; the model store."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from napari_medsegdiff.checkpoints import (
    ModelStore,
    file_sha256,
    load_model,
    load_pt_weights,
    read_model_info,
    resolve_model,
    save_model,
)
from napari_medsegdiff.config import preset
from napari_medsegdiff.errors import InputError, ModelError
from napari_medsegdiff.model import build_model


@pytest.fixture
def tiny_folder(tmp_path):
    cfg = preset("tiny")
    return save_model(
        tmp_path / "tiny", build_model(cfg).state_dict(), cfg, provenance={"why": "test"}
    )


def test_roundtrip_builds_the_same_network(tmp_path):
    cfg = preset("tiny")
    torch.manual_seed(7)
    saved = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    folder = save_model(tmp_path / "tiny", saved, cfg, provenance={"why": "test"})
    torch.manual_seed(8)  # a fresh build differs: loading must bring the saved weights
    model, info = load_model(folder)
    assert info.config == cfg
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "provenance.json",
    ]
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    torch.manual_seed(8)
    fresh = build_model(cfg).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items())


def test_save_refuses_to_clobber(tiny_folder):
    cfg = preset("tiny")
    before = file_sha256(tiny_folder / "model.safetensors")
    with pytest.raises(InputError, match="already exists"):
        save_model(tiny_folder, build_model(cfg).state_dict(), cfg)
    assert file_sha256(tiny_folder / "model.safetensors") == before
    assert not [p for p in tiny_folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / "config.json").write_text("{not json"), "corrupt JSON"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 10), "corrupt safetensors"),
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    ],
)
def test_damaged_folders_are_clear_errors(tiny_folder, damage, match):
    damage(tiny_folder)
    with pytest.raises(ModelError, match=match):
        load_model(tiny_folder)


def test_wrong_shapes_name_the_tensor(tiny_folder):
    meta = json.loads((tiny_folder / "config.json").read_text(encoding="utf-8"))
    meta["model"]["base_channels"] = 16
    (tiny_folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"tensor|match"):
        load_model(tiny_folder)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    pt = tmp_path / "model.pt"
    with open(pt, "wb") as fh:
        pickle.dump({"state_dict": _Evil(str(marker))}, fh)
    torch.save({"x": _Evil(str(marker))}, tmp_path / "evil2.pt")
    for path in (pt, tmp_path / "evil2.pt"):
        with pytest.raises(ModelError, match="refusing"):
            load_pt_weights(path)
    assert not marker.exists()


def test_plain_pt_state_dict_is_accepted(tmp_path):
    cfg = preset("tiny")
    folder = save_model(tmp_path / "m", build_model(cfg).state_dict(), cfg)
    state = build_model(cfg).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "model.pt")
    model, _ = load_model(folder)
    assert torch.equal(model.state_dict()[next(iter(state))], next(iter(state.values())))


def test_store_lists_complete_versions_newest_first(tmp_path):
    store = ModelStore(tmp_path / "store")
    cfg = preset("tiny")
    first = save_model(
        store.new_version_path("base"),
        build_model(cfg).state_dict(),
        cfg,
        meta={"created": "2026-01-01T00:00:00+00:00"},
    )
    second = save_model(
        store.new_version_path("base"),
        build_model(cfg).state_dict(),
        cfg,
        meta={"created": "2026-02-01T00:00:00+00:00"},
    )
    (store.root / "broken").mkdir()
    (store.root / ".base.tmp-123").mkdir()
    names = [e.path for e in store.versions()]
    assert names == [second, first]
    assert first != second and first.name.startswith("base-ft-")
    assert resolve_model(second.name, store) == second


def test_resolve_model_errors(tmp_path):
    with pytest.raises(InputError, match="neither a model folder") as info:
        resolve_model(str(tmp_path / "nope"))
    assert info.value.argument == "model"
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        resolve_model(str(tmp_path / "file.bin"))


def test_info_without_weights(tiny_folder):
    info = read_model_info(tiny_folder)
    assert info.config.preset == "tiny" and info.meta["format"].startswith("napari-medsegdiff")
