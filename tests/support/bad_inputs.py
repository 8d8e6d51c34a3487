"""The workspace of the bad-input table: broken and hostile files of every kind a command reads.

`make_workspace(folder, checkpoint)` writes them once per session; `CASES` (in tests/cli/test_bad_input.py) refers
to them by name through `{ws}` in its arguments.
"""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nonsingular.models.checkpoint import _META_KEY, read_metadata
from nonsingular.training import RunPaths, TrainConfig, Trainer
from tests.support.fileformats import write_npz

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn


    def raises_runtime():
        raise RuntimeError("CUDA out of memory (pretend)")


    def raises_key():
        return {}["missing"]


    def returns_tuple():
        return nn.Linear(64, 10), "extra"


    def returns_int():
        return 7


    def wrong_input():
        return nn.Sequential(nn.Flatten(), nn.Linear(10, 10))


    def five_outputs():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))


    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))


    def nan_output():
        return NaNNet()


    class ThreeD(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10, 2)


    def three_d():
        return ThreeD()


    def linear():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


    class Exp(nn.Module):
        def forward(self, z):
            return torch.exp(z)


    def exp_logits():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Exp())
        with torch.no_grad():
            net[1].weight.mul_(0.1)
        return net

    VALUE = 3
    """
)


def _with_metadata(src: Path, dst: Path, edit) -> None:
    """Copy a checkpoint with its tensors and/or metadata edited: edit(tensors, metadata) -> (tensors, header)."""
    tensors = load_file(str(src))
    header = edit(tensors, read_metadata(src))
    save_file(tensors, str(dst), metadata=header)


def _meta(metadata: dict) -> dict[str, str]:
    return {_META_KEY: json.dumps(metadata)}


def _vnnlib_files(ws: Path) -> None:
    """Broken and hostile VNNLIB properties and instance CSVs (for `verify`), beside onnx-good.onnx (64 -> 10)."""
    import gzip

    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(64)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(10)
    )
    box = "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))\n" for i in range(64))
    (ws / "v-good.vnnlib").write_text(head + box + "(assert (>= Y_1 Y_0))\n")
    (ws / "v-unbalanced.vnnlib").write_text(head + box + "(assert (>= Y_1 Y_0)\n")
    (ws / "v-define.vnnlib").write_text(head + "(define-fun f () Real 1.0)\n")
    (ws / "v-huge.vnnlib").write_text("(declare-const X_99999999 Real)\n")
    (ws / "v-unbounded.vnnlib").write_text(head + box.replace("(assert (<= X_5 0.1))", "") + "(assert (>= Y_1 Y_0))")
    (ws / "v-three.vnnlib").write_text(
        "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(3))
        + "(declare-const Y_0 Real)\n(assert (<= Y_0 0))\n"
    )
    (ws / "v-eval.vnnlib").write_text(head + box + "(assert (>= Y_1 (eval \"__import__('os')\")))\n")
    (ws / "v-broken.vnnlib.gz").write_bytes(gzip.compress((ws / "v-good.vnnlib").read_bytes())[:40])
    (ws / "instances-outside.csv").write_text("onnx-good.onnx,../v-good.vnnlib,10\n")
    (ws / "instances-absolute.csv").write_text(f"{ws}/onnx-good.onnx,v-good.vnnlib,10\n")
    (ws / "instances-timeout.csv").write_text("onnx-good.onnx,v-good.vnnlib,forever\n")
    (ws / "instances-fields.csv").write_text("onnx-good.onnx;v-good.vnnlib;10\n")


def _onnx_files(ws: Path) -> None:
    """Broken and hostile ONNX models (for `-c FILE.onnx`), built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper

    def model(nodes, inits=(), shape=(1, 1, 8, 8)) -> bytes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph(nodes, "g", [x], [y], list(inits))
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7).SerializeToString()

    flat = helper.make_node("Flatten", ["x"], ["f"])
    w = onnx.numpy_helper.from_array(np.zeros((64, 10), np.float32), "w")
    good = model([flat, helper.make_node("MatMul", ["f", "w"], ["y"])], [w])
    (ws / "onnx-good.onnx").write_bytes(good)
    (ws / "onnx-empty.onnx").write_bytes(b"")
    (ws / "onnx-garbage.onnx").write_bytes(b"\xff" * 64)
    (ws / "onnx-truncated.onnx").write_bytes(good[: len(good) // 2])
    outside = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 10], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../onnx-secret.bin"), ("length", str(64 * 10 * 4))):
        entry = outside.external_data.add()
        entry.key, entry.value = key, value
    (ws / "onnx-secret.bin").write_bytes(b"\0" * 64 * 10 * 4)
    (ws / "onnx-ext").mkdir()
    (ws / "onnx-ext" / "m.onnx").write_bytes(model([flat, helper.make_node("MatMul", ["f", "w"], ["y"])], [outside]))
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**30, 2**30], raw_data=b"\0" * 8)
    (ws / "onnx-huge.onnx").write_bytes(model([flat, helper.make_node("MatMul", ["f", "w"], ["y"])], [huge]))
    cycle = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    (ws / "onnx-cycle.onnx").write_bytes(model([*cycle, helper.make_node("Relu", ["b"], ["y"])]))
    (ws / "onnx-dangling.onnx").write_bytes(model([helper.make_node("Add", ["x", "ghost"], ["y"])]))
    soft = helper.make_node("Softsign", ["f"], ["y"], name="act1")
    (ws / "onnx-unsupported.onnx").write_bytes(model([flat, soft]))
    (ws / "onnx-32x2.onnx").write_bytes(
        model([flat, helper.make_node("MatMul", ["f", "w"], ["y"])], [w], shape=(1, 32, 2))
    )


def make_workspace(ws: Path, checkpoint: Path) -> None:
    """Write every file the bad-input cases use into `ws`."""
    good = ws / "good.safetensors"
    good.write_bytes(checkpoint.read_bytes())

    def poisoned(value: float):
        def edit(tensors, meta):
            tensors["2.weight"] = tensors["2.weight"].clone()
            tensors["2.weight"][0, 0] = value
            return _meta(meta)

        return edit

    _with_metadata(good, ws / "nan.safetensors", poisoned(float("nan")))
    _with_metadata(good, ws / "inf.safetensors", poisoned(float("inf")))
    _with_metadata(good, ws / "list-meta.safetensors", lambda t, m: {_META_KEY: json.dumps([1, 2])})
    _with_metadata(good, ws / "not-json-meta.safetensors", lambda t, m: {_META_KEY: "{not json"})
    _with_metadata(good, ws / "no-meta.safetensors", lambda t, m: {"other": "x"})
    _with_metadata(good, ws / "arch-name.safetensors", lambda t, m: _meta({**m, "architecture": {"name": "zzz"}}))
    _with_metadata(
        good,
        ws / "arch-type.safetensors",
        lambda t, m: _meta({**m, "architecture": {**m["architecture"], "widths": "abc"}}),
    )
    _with_metadata(good, ws / "arch-list.safetensors", lambda t, m: _meta({**m, "architecture": [1]}))
    _with_metadata(
        good,
        ws / "five-classes.safetensors",
        lambda t, m: _meta({**m, "architecture": {**m["architecture"], "num_classes": 5}}),
    )

    def shrink_last(tensors, meta):
        tensors["6.weight"] = tensors["6.weight"][:5].clone()
        tensors["6.bias"] = tensors["6.bias"][:5].clone()
        return _meta(meta)

    _with_metadata(good, ws / "five-outputs.safetensors", shrink_last)

    def replace(key: str, value):
        return lambda t, m: _meta({**m, key: value})

    arch = read_metadata(good)["architecture"]
    _with_metadata(good, ws / "misfit.safetensors", replace("architecture", {**arch, "widths": [8, 8]}))
    _with_metadata(good, ws / "seed-text.safetensors", replace("data", {"source": "digits", "seed": "abc"}))
    _with_metadata(good, ws / "source-int.safetensors", replace("data", {"source": 5}))
    _with_metadata(good, ws / "data-gone.safetensors", replace("data", {"source": f"npz:{ws}/gone.npz"}))
    (ws / "truncated.safetensors").write_bytes(good.read_bytes()[:300])
    (ws / "text.safetensors").write_text("hello, not a checkpoint\n")
    (ws / "empty.safetensors").write_bytes(b"")
    (ws / "pickle.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (ws / "folder.safetensors").mkdir()

    # Data files.
    rng = np.random.default_rng(0)
    x = rng.random((100, 1, 8, 8), dtype=np.float32)
    y = np.arange(100) % 10
    write_npz(ws / "ok.npz", x=x, y=y)
    write_npz(ws / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    write_npz(ws / "reshaped.npz", x=x.reshape(100, 2, 2, 16), y=y)
    write_npz(ws / "nan.npz", x=np.full((100, 1, 8, 8), np.nan, np.float32), y=y)
    write_npz(ws / "scale.npz", x=x * 255, y=y)
    write_npz(ws / "one-class.npz", x=x, y=np.zeros(100, np.int64))
    write_npz(ws / "labels-float.npz", x=x, y=y.astype(np.float32))
    write_npz(ws / "no-y.npz", x=x)
    write_npz(ws / "count.npz", x=x, y=y[:30])
    write_npz(ws / "object.npz", x=np.array([object()] * 4), y=y[:4])
    (ws / "not-zip.npz").write_text("plain text\n")
    (ws / "mnist-empty").mkdir()

    # The user's code.
    (ws / "factories.py").write_text(FACTORIES)
    (ws / "syntax_error.py").write_text("def make(:\n    pass\n")
    (ws / "import_error.py").write_text("import no_such_module_xyz_123\n")
    torch.manual_seed(0)
    from torch import nn

    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    save_file({k: v.contiguous() for k, v in linear.state_dict().items()}, str(ws / "linear.safetensors"))
    state = {k: v.clone() for k, v in linear.state_dict().items()}
    state["1.weight"][0, 0] = float("nan")
    save_file(state, str(ws / "linear-nan.safetensors"))
    save_file({"x.weight": torch.zeros(2)}, str(ws / "linear-keys.safetensors"))

    # Configs.
    (ws / "train-bad.toml").write_text("epochs = [unclosed\n")
    (ws / "train-unknown.toml").write_text("epochz = 3\n")
    (ws / "train-type.toml").write_text('epochs = "many"\n')
    (ws / "train-list.yaml").write_text("- 1\n- 2\n")
    (ws / "train.txt").write_text("epochs = 1\n")
    (ws / "train-lr.yaml").write_text("lr: -1\n")
    study = {
        "unknown-method": '[certify]\nmethods = ["ibp", "foo"]\n',
        "inf-eps": "[grid]\neps_w = [0.0, inf]\n",
        "big-eps": "[grid]\neps_x = [0.0, 2.0]\n",
        "nan-eps": "[grid]\neps_x = [0.0, nan]\n",
        "zero-ray": "[radius]\nk_x = 0.0\nk_w = 0.0\n",
        "neg-smax": "[radius]\ns_max = -1.0\n",
        "no-models": "models = []\n",
        "unknown-key": "colour = 1\n",
        "headline": "[headline]\neps_x = 0.3\n",
        "dup-names": '[[models]]\nname = "a"\n[[models]]\nname = "a"\n',
        "bad-objective": '[[models]]\nname = "a"\nobjective = "zzz"\n',
        "bad-option": '[[models]]\nname = "a"\noptions = { epochz = 2 }\n',
        "bad-data": 'data = "nowhere:x"\n',
        "bad-arch": '[architecture]\nname = "zzz"\n',
        "bad-steps": "[attack]\nsteps = 0\n",
        "syntax": "[grid\n",
        "not-table": "- 1\n",
    }
    for name, text in study.items():
        suffix = ".yaml" if name == "not-table" else ".toml"
        (ws / f"study-{name}{suffix}").write_text(text)
    (ws / "study-ok.toml").write_text(
        textwrap.dedent(
            """
            [training]
            epochs = 1
            [[models]]
            name = "standard"
            """
        )
    )
    _onnx_files(ws)
    _vnnlib_files(ws)
    (ws / "occupied").mkdir()
    (ws / "occupied" / "notes.txt").write_text("mine\n")
    (ws / "broken-state").mkdir()
    (ws / "broken-state" / "state.json").write_text("{half")

    # Outputs that must not be written or replaced.
    (ws / "existing.json").write_text('{"mine": true}\n')
    (ws / "blocker").write_text("a file where a folder would go\n")
    (ws / "outdir").mkdir()

    # A real training run (SGD, one epoch on 64 examples) to resume with the wrong settings.
    run = RunPaths(ws / "sgd.safetensors")
    Trainer(TrainConfig(epochs=1, optimizer="sgd", n_train=64, eval_steps=0, widths=[8], device="cpu"), run).fit()
