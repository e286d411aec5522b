"""SyncNetColor matches Wav2Lip's checkpoint layout, and every weights format loads (or fails) clearly."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from rtdiar.errors import RtdiarError
from rtdiar.scorers.syncnet import build_model, load_weights, pair_models, save_weights


@pytest.fixture(scope="module")
def wav2lip_shapes(shared_dir: Path) -> dict[str, list[int]]:
    """Every key and shape of Wav2Lip's lipsync_expert.pth state_dict, in file order."""
    return json.loads((shared_dir / "fixtures" / "wav2lip_lipsync_expert_state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def fake_state(wav2lip_shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Random tensors laid out like the official checkpoint (distinct from a fresh model's init)."""
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in wav2lip_shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1234, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def assert_model_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


def test_layout_matches_wav2lip_checkpoint(wav2lip_shapes):
    state = build_model("wav2lip").state_dict()
    assert len(state) == 217
    assert {key: list(t.shape) for key, t in state.items()} == wav2lip_shapes


def test_embeddings_are_512_d_unit_vectors():
    model = build_model("wav2lip").eval()
    with torch.inference_mode():
        audio_emb, face_emb = model(torch.randn(3, 1, 80, 16), torch.rand(3, 15, 48, 96))
    assert audio_emb.shape == face_emb.shape == (3, 512)
    torch.testing.assert_close(audio_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(face_emb.norm(dim=1), torch.ones(3))


def test_unknown_arch_is_refused():
    with pytest.raises(RtdiarError, match="unknown model arch 'resnet'.*wav2lip"):
        build_model("resnet")


def test_loads_official_checkpoint_dict(tmp_path, fake_state):
    path = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": fake_state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path)
    model = build_model("wav2lip")
    metadata = load_weights(model, path)
    assert_model_holds(model, fake_state)
    assert metadata == {"global_step": "0", "global_epoch": "0"}


def test_loads_plain_state_dict(tmp_path, fake_state):
    path = tmp_path / "plain.pt"
    torch.save(fake_state, path)
    model = build_model("wav2lip")
    load_weights(model, path)
    assert_model_holds(model, fake_state)


def test_loads_dataparallel_module_prefix(tmp_path, fake_state):
    path = tmp_path / "parallel.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fake_state.items()}, "global_step": 7}, path)
    model = build_model("wav2lip")
    load_weights(model, path)
    assert_model_holds(model, fake_state)


def test_safetensors_round_trip_gives_identical_outputs(tmp_path, fake_state):
    source = build_model("wav2lip")
    source.load_state_dict(fake_state)
    path = tmp_path / "weights" / "syncnet.safetensors"
    save_weights(source, path, "wav2lip", {"epochs": "3"})
    copy = build_model("wav2lip")
    metadata = load_weights(copy, path)
    assert metadata == {"arch": "wav2lip", "epochs": "3"}
    audio, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96)
    with torch.inference_mode():
        for want, got in zip(source.eval()(audio, faces), copy.eval()(audio, faces)):
            assert torch.equal(want, got)


def test_safetensors_of_another_arch_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_weights(build_model("wav2lip"), path, "compact", {})
    with pytest.raises(RtdiarError, match="'compact'.*'wav2lip'"):
        load_weights(build_model("wav2lip"), path)


def test_wrong_shape_names_key_and_both_shapes(tmp_path, fake_state):
    state = dict(fake_state)
    state["face_encoder.0.conv_block.0.weight"] = torch.zeros(32, 3, 7, 7)
    path = tmp_path / "rgb.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(RtdiarError) as err:
        load_weights(build_model("wav2lip"), path)
    message = str(err.value)
    assert message == (
        f"weights {path} do not fit model 'wav2lip': face_encoder.0.conv_block.0.weight "
        "is [32, 3, 7, 7] in the file, [32, 15, 7, 7] in the model"
    )


def test_missing_and_unexpected_keys_are_named(tmp_path, fake_state):
    missing = {k: v for k, v in fake_state.items() if not k.startswith("audio_encoder.13.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(RtdiarError, match=r"missing key audio_encoder\.13\.conv_block\.0\.weight"):
        load_weights(build_model("wav2lip"), tmp_path / "missing.pth")

    extra = {**fake_state, "lip_head.weight": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(RtdiarError, match=r"unexpected key lip_head\.weight"):
        load_weights(build_model("wav2lip"), tmp_path / "extra.pth")


def cut_checkpoint_bytes() -> bytes:
    """The first half of a real checkpoint, as a download that broke off leaves it."""
    buffer = io.BytesIO()
    torch.save(build_model("wav2lip").state_dict(), buffer)
    return buffer.getvalue()[: buffer.tell() // 2]


class NotWeights:
    """Pickling this stores a reference to code, which a weights-only load must refuse."""


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("garbage.pth", lambda p: p.write_bytes(b"this is not a checkpoint\n" * 10)),
        ("truncated.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")),
        ("empty.pt", lambda p: p.write_bytes(b"")),
        ("code.pth", lambda p: torch.save({"state_dict": NotWeights()}, p)),
        ("strings.pth", lambda p: torch.save({"a": "b"}, p)),
        ("cut.pth", lambda p: p.write_bytes(cut_checkpoint_bytes())),
    ],
)
def test_unreadable_files_give_one_line_error(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    with pytest.raises(RtdiarError, match=re.escape(str(path))) as err:
        load_weights(build_model("wav2lip"), path)
    assert "\n" not in str(err.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(RtdiarError, match="not found"):
        load_weights(build_model("wav2lip"), tmp_path / "nope.pth")


def test_a_pair_scores_the_mean_of_its_members_cosines_and_round_trips(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.safetensors")
        save_weights(build_model("compact").eval(), paths[-1], "compact", {})
    pair = pair_models(*paths).eval()
    faces, audio = torch.rand(3, 15, 48, 96), torch.randn(3, 1, 80, 16)
    with torch.no_grad():
        members = [(m.embed_faces(faces) * m.embed_audio(audio)).sum(1) for m in pair.members]
        a, f = pair(audio, faces)
        torch.testing.assert_close((a * f).sum(1), (members[0] + members[1]) / 2)
        torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert not torch.equal(members[0], members[1])  # two different experts, not one twice

    save_weights(pair, tmp_path / "pair.safetensors", "compact_pair", {})
    again = build_model("compact_pair")
    load_weights(again, tmp_path / "pair.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(audio, faces)[1], f)
    with pytest.raises(RtdiarError, match="compact_pair"):
        load_weights(build_model("compact"), tmp_path / "pair.safetensors")


def test_the_pixel_and_lips_ensemble_reads_both_inputs_and_scores_the_mean_of_its_members(tmp_path):
    paths = []
    for arch in ("compact", "lips"):
        paths.append(tmp_path / f"{arch}.safetensors")
        save_weights(build_model(arch).eval(), paths[-1], arch, {})
    ensemble = pair_models(*paths, arch="compact_lips").eval()
    assert ensemble.face_inputs == ("crops", "lips")
    faces, lips, audio = torch.rand(3, 15, 48, 96), torch.randn(3, 5, 42, 2), torch.randn(3, 1, 80, 16)
    pixels, points = ensemble.members
    with torch.no_grad():
        members = [(pixels.embed_faces(faces) * pixels.embed_audio(audio)).sum(1),
                   (points.embed_faces(lips) * points.embed_audio(audio)).sum(1)]
        a, f = ensemble(audio, faces, lips)
        torch.testing.assert_close((a * f).sum(1), (members[0] + members[1]) / 2)
        torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
        moved = lips.clone()
        moved[:, 2, :40, 1] += 0.1  # the lips part in the middle frame: the lips member sees it
        assert not torch.allclose(points.embed_faces(moved), points.embed_faces(lips))
    with pytest.raises(RtdiarError, match="not an rtdiar file|do not fit|'lips'"):
        pair_models(paths[1], paths[0], arch="compact_lips")  # members in the wrong order
