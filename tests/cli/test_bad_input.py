"""The bad-input table: every case must end with exit status 2, exactly one line on stderr that names the
problem, no traceback, and no existing file changed (hashes of the whole workspace before and after).

The files the cases read are made once by `bad_inputs.make_workspace`; `{ws}` is that folder and `{ck}` a good
checkpoint in it. Cases run in-process through the console entry point (`tests.support.run_cli`).
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest

from tests.support import run_cli
from tests.support.bad_inputs import make_workspace

#: Cases every command that loads a model and data shares (evaluate, certify, radius): (id, args, needle).
LOADING = [
    ("ckpt-missing", "-c {ws}/absent.safetensors", "not found"),
    ("ckpt-folder", "-c {ws}/folder.safetensors", "is a directory"),
    ("ckpt-truncated", "-c {ws}/truncated.safetensors", "not a readable safetensors"),
    ("ckpt-text", "-c {ws}/text.safetensors", "not a readable safetensors"),
    ("ckpt-empty", "-c {ws}/empty.safetensors", "not a readable safetensors"),
    ("ckpt-pickle", "-c {ws}/pickle.safetensors", "not a readable safetensors"),
    ("ckpt-no-meta", "-c {ws}/no-meta.safetensors", "no nonsingular metadata"),
    ("ckpt-meta-not-json", "-c {ws}/not-json-meta.safetensors", "corrupted metadata"),
    ("ckpt-meta-list", "-c {ws}/list-meta.safetensors", "JSON list"),
    ("ckpt-nan", "-c {ws}/nan.safetensors", "'2.weight' holds NaN"),
    ("ckpt-inf", "-c {ws}/inf.safetensors", "'2.weight' holds infinite"),
    ("ckpt-arch-name", "-c {ws}/arch-name.safetensors", "cannot rebuild its architecture"),
    ("ckpt-arch-type", "-c {ws}/arch-type.safetensors", "cannot rebuild its architecture"),
    ("ckpt-arch-list", "-c {ws}/arch-list.safetensors", "'architecture' must be an object"),
    ("ckpt-five-classes", "-c {ws}/five-classes.safetensors", "weights do not fit"),
    ("ckpt-five-outputs", "-c {ws}/five-outputs.safetensors", "weights do not fit"),
    ("ckpt-misfit", "-c {ws}/misfit.safetensors", "weights do not fit"),
    ("ckpt-seed-text", "-c {ws}/seed-text.safetensors", "metadata entry 'data'"),
    ("ckpt-source-int", "-c {ws}/source-int.safetensors", "data.source must be a string"),
    ("ckpt-data-gone", "-c {ws}/data-gone.safetensors", "gone.npz: file not found"),
    ("model-and-ckpt", "-c {ck} --model {ws}/factories.py:linear", "give either --checkpoint"),
    ("neither", "", "give either --checkpoint"),
    ("weights-with-ckpt", "-c {ck} --weights {ws}/linear.safetensors", "--weights goes with --model"),
    ("onnx-no-data", "-c {ws}/onnx-good.onnx", "pass --data"),
    ("onnx-missing", "-c {ws}/absent.onnx --data digits", "cannot read the ONNX file"),
    ("onnx-empty", "-c {ws}/onnx-empty.onnx --data digits", "the ONNX file is empty"),
    ("onnx-garbage", "-c {ws}/onnx-garbage.onnx --data digits", "not an ONNX model"),
    ("onnx-truncated", "-c {ws}/onnx-truncated.onnx --data digits", "onnx-truncated.onnx"),
    ("onnx-external-outside", "-c {ws}/onnx-ext/m.onnx --data digits", "outside the model's folder"),
    ("onnx-huge-dims", "-c {ws}/onnx-huge.onnx --data digits", "over the importer's limit"),
    ("onnx-cycle", "-c {ws}/onnx-cycle.onnx --data digits", "cycle"),
    ("onnx-dangling", "-c {ws}/onnx-dangling.onnx --data digits", "'ghost'"),
    ("onnx-unsupported-op", "-c {ws}/onnx-unsupported.onnx --data digits", "op Softsign is not supported"),
    ("onnx-input-shape", "-c {ws}/onnx-32x2.onnx --data digits", "takes inputs of shape (32, 2)"),
    ("data-scheme", "-c {ck} --data nowhere:x", "unknown data source 'nowhere'"),
    ("data-npz-missing", "-c {ck} --data npz:{ws}/absent.npz", "file not found"),
    ("data-npz-empty", "-c {ck} --data npz:{ws}/empty.npz", "holds no examples"),
    ("data-npz-shape", "-c {ck} --data npz:{ws}/reshaped.npz", "takes inputs of shape (1, 8, 8)"),
    ("data-npz-nan", "-c {ck} --data npz:{ws}/nan.npz", "NaN or infinite"),
    ("data-npz-scale", "-c {ck} --data npz:{ws}/scale.npz", "expected [0, 1]"),
    ("data-npz-one-class", "-c {ck} --data npz:{ws}/one-class.npz", "at least 2 classes"),
    ("data-npz-float-labels", "-c {ck} --data npz:{ws}/labels-float.npz", "1-d integer array"),
    ("data-npz-no-y", "-c {ck} --data npz:{ws}/no-y.npz", "no array 'y'"),
    ("data-npz-count", "-c {ck} --data npz:{ws}/count.npz", "count mismatch"),
    ("data-npz-object", "-c {ck} --data npz:{ws}/object.npz", "not a readable .npz"),
    ("data-npz-text", "-c {ck} --data npz:{ws}/not-zip.npz", "not a readable .npz"),
    ("data-npz-no-path", "-c {ck} --data npz:", "needs a path"),
    ("data-mnist-empty", "-c {ck} --data mnist:{ws}/mnist-empty", "no mnist IDX files"),
    ("data-cifar-missing", "-c {ck} --data cifar10:{ws}/absent", "not found"),
    ("n-examples-zero", "-c {ck} --n-examples 0", "--n-examples"),
    ("device", "-c {ck} --device tpu", "device"),
    ("device-index", "-c {ck} --device cuda:x", "device"),
    ("out-exists", "-c {ck} -o {ws}/existing.json", "exists; pass --force"),
    ("out-folder", "-c {ck} -o {ws}/outdir", "is a directory"),
    ("out-under-file", "-c {ck} -o {ws}/blocker/out.json", "blocker is a file"),
    ("out-unwritable", "-c {ck} -o /proc/nonsingular-test/out.json", "cannot write /proc/nonsingular-test/out.json"),
    ("factory-runtime", "--model {ws}/factories.py:raises_runtime", "CUDA out of memory (pretend)"),
    ("factory-keyerror", "--model {ws}/factories.py:raises_key", "KeyError: 'missing'"),
    ("factory-tuple", "--model {ws}/factories.py:returns_tuple", "returned a tuple"),
    ("factory-int", "--model {ws}/factories.py:returns_int", "returned a int"),
    ("factory-not-callable", "--model {ws}/factories.py:VALUE", "'VALUE' is not callable"),
    ("factory-missing", "--model {ws}/factories.py:nothing", "has no attribute 'nothing'"),
    ("factory-syntax", "--model {ws}/syntax_error.py:make", "SyntaxError"),
    ("factory-import", "--model {ws}/import_error.py:make", "no_such_module_xyz_123"),
    ("factory-module", "--model no_such_module_abc:make", "cannot import module 'no_such_module_abc'"),
    ("factory-spec", "--model nocolon", "expects package.module:factory"),
    ("factory-file-missing", "--model {ws}/absent.py:make", "not found"),
    ("model-input", "--model {ws}/factories.py:wrong_input", "does not accept inputs"),
    ("model-outputs", "--model {ws}/factories.py:five_outputs", "gives 5 outputs but data 'digits' has 10 classes"),
    ("model-nan", "--model {ws}/factories.py:nan_output", "NaN or infinite"),
    ("model-3d", "--model {ws}/factories.py:three_d", "must return logits of shape"),
    ("weights-missing", "--model {ws}/factories.py:linear --weights {ws}/absent.safetensors", "not found"),
    ("weights-nan", "--model {ws}/factories.py:linear --weights {ws}/linear-nan.safetensors", "holds NaN"),
    ("weights-keys", "--model {ws}/factories.py:linear --weights {ws}/linear-keys.safetensors", "do not fit"),
    ("weights-text", "--model {ws}/factories.py:linear --weights {ws}/text.safetensors", "not a readable"),
    ("layers-unknown", "-c {ck} --layers nope", "'nope'"),
    ("layers-relu", "-c {ck} --layers 3", "only Linear, Conv1d and Conv2d"),
    ("ball", "-c {ck} --weight-ball round", "--weight-ball"),
    ("mode", "-c {ck} --weight-mode percent", "--weight-mode"),
    ("unknown-option", "-c {ck} --colour red", "No such option: --colour"),
    ("float-syntax", "-c {ck} --n-examples many", "--n-examples"),
]

#: Threat options of evaluate and certify.
THREAT = [
    ("eps-x-nan", "-c {ck} --eps-x nan", "eps_x must be finite"),
    ("eps-x-inf", "-c {ck} --eps-x inf", "eps_x must be finite"),
    ("eps-x-negative", "-c {ck} --eps-x -0.1", "eps_x must be >= 0"),
    ("eps-x-wide", "-c {ck} --eps-x 2", "exceeds the width of the domain"),
    ("eps-w-nan", "-c {ck} --eps-w nan", "eps_w must be finite"),
    ("eps-w-inf", "-c {ck} --eps-w inf", "eps_w must be finite"),
    ("eps-w-negative", "-c {ck} --eps-w -1", "eps_w must be >= 0"),
    ("eps-b-negative", "-c {ck} --eps-b -1", "eps_b must be >= 0"),
    ("eps-x-text", "-c {ck} --eps-x abc", "--eps-x"),
    ("eps-w-huge", "-c {ck} --eps-w 1e9 --n-examples 4 --steps 1", "keeps no digit of the weight itself"),
    ("eps-w-operator-huge", "-c {ck} --eps-w 1e30 --weight-ball operator", "keeps no digit of the weight itself"),
    ("eps-b-huge", "-c {ck} --eps-b 1e12", "keeps no digit of the bias itself"),
    ("quantize-name", "-c {ck} --quantize float8", "--quantize must be intN"),
    ("quantize-bits", "-c {ck} --quantize int1", "2 to 16 bits"),
    ("quantize-eps-w", "-c {ck} --quantize int8 --eps-w 0.01", "leave out --eps-w"),
    ("quantize-ball", "-c {ck} --quantize int8 --weight-ball operator", "element-wise box"),
    ("quantize-rounding", "-c {ck} --quantize int8 --rounding up", "--rounding"),
    ("logits-overflow", "--model {ws}/factories.py:exp_logits --eps-w 100 --n-examples 4 --steps 1", "NaN or infinite"),
]

EVALUATE = [
    ("fault-bits-range", "-c {ck} --random-faults 3 --fault-bits 9", "--fault-bits must be"),
    ("fault-bits-text", "-c {ck} --random-faults 3 --fault-bits sign", "--fault-bits must be"),
    ("fault-rate", "-c {ck} --random-faults 3 --fault-rate 2", "--fault-rate must lie in [0, 1]"),
    ("faults-negative", "-c {ck} --random-faults -1", "--random-faults"),
    ("faults-operator", "-c {ck} --random-faults 3 --eps-w 0.01 --weight-ball operator", "element-wise boxes"),
    ("export-alone", "-c {ck} --export-worst {ws}/w.safetensors", "--export-worst goes with --quantize"),
    ("export-exists", "-c {ck} --quantize int8 --export-worst {ws}/existing.json", "exists; pass --force"),
    ("steps-zero", "-c {ck} --steps 0", "steps, restarts and batch_size must be >= 1"),
    ("restarts-zero", "-c {ck} --restarts 0", "steps, restarts and batch_size must be >= 1"),
    ("batch-zero", "-c {ck} --batch-size 0", "steps, restarts and batch_size must be >= 1"),
    ("step-size-zero", "-c {ck} --attack pgd --step-size 0", "rel_stepsize must be a finite number > 0"),
    ("step-size-inf", "-c {ck} --attack pgd --step-size inf", "rel_stepsize must be a finite number > 0"),
    ("step-size-nan", "-c {ck} --attack pgd --step-size nan", "rel_stepsize must be a finite number > 0"),
    ("loss", "-c {ck} --loss hinge", "--loss"),
]

CERTIFY = [
    ("method-unknown", "-c {ck} --method foo", "--method must be one of"),
    ("method-empty", "-c {ck} --method ,", "--method names no method"),
    ("steps-negative", "-c {ck} --steps -1", "--steps must be >= 0"),
    ("restarts-zero", "-c {ck} --restarts 0", "--restarts and --batch-size >= 1"),
    ("batch-zero", "-c {ck} --batch-size 0", "--restarts and --batch-size >= 1"),
]

RADIUS = [
    ("k-x-nan", "-c {ck} --k-x nan", "--k-x: Input should be a finite number"),
    ("k-x-inf", "-c {ck} --k-x inf", "--k-x: Input should be a finite number"),
    ("k-w-nan", "-c {ck} --k-w nan", "--k-w: Input should be a finite number"),
    ("k-w-negative", "-c {ck} --k-w -1", "--k-w: Input should be greater than or equal to 0"),
    ("k-b-negative", "-c {ck} --k-b -0.5", "--k-b"),
    ("zero-ray", "-c {ck} --k-x 0 --k-w 0", "ray direction must not be zero"),
    ("s-max-zero", "-c {ck} --s-max 0", "--s-max: Input should be greater than 0"),
    ("s-max-negative", "-c {ck} --s-max -1", "--s-max: Input should be greater than 0"),
    ("s-max-inf", "-c {ck} --s-max inf --k-x 0", "--s-max: Input should be a finite number"),
    ("iterations-zero", "-c {ck} --iterations 0", "--iterations"),
    ("iterations-huge", "-c {ck} --iterations 100", "--iterations"),
    ("method-unknown", "-c {ck} --method foo", "--method"),
    ("steps-zero", "-c {ck} --steps 0", "steps, restarts and batch_size must be >= 1"),
    ("restarts-zero", "-c {ck} --restarts 0", "steps, restarts and batch_size must be >= 1"),
]

TRAIN = [
    ("epochs-zero", "--epochs 0", "epochs"),
    ("batch-zero", "--batch-size 0", "batch_size"),
    ("lr-zero", "--lr 0", "lr"),
    ("lr-nan", "--lr nan", "lr"),
    ("eps-x-wide", "--eps-x 2", "eps_x and eval_eps_x must be <= 1"),
    ("eps-x-nan", "--eps-x nan", "eps_x must be a finite number"),
    ("eps-w-negative", "--eps-w -1", "eps_w must be a finite number >= 0"),
    ("objective", "--objective zzz", "zzz"),
    ("objective-combo", "--objective pgd-at+zzz", "zzz"),
    ("widths-text", "--widths abc", "--widths must be comma-separated integers"),
    ("widths-zero", "--widths 0,4", "widths must be positive integers"),
    ("val-fraction", "--val-fraction 1", "val_fraction"),
    ("data-seed", "--data-seed -1", "data_seed: Input should be greater than or equal to 0"),
    ("scope-ignored", "--objective pgd-at --scope shared", "scope='shared' applies to joint-at only"),
    ("warmup", "--warmup-epochs 5 --epochs 2", "warmup_epochs (5) exceeds epochs (2)"),
    ("data-scheme", "--data nowhere:x", "unknown data source"),
    ("data-missing", "--data npz:{ws}/absent.npz", "file not found"),
    ("data-empty", "--data npz:{ws}/empty.npz", "holds no examples"),
    ("architecture", "--architecture zzz", "zzz"),
    ("device", "--device tpu", "device"),
    ("threads", "--threads -1", "--threads"),
    ("optimizer", "--optimizer rmsprop", "--optimizer"),
    ("config-missing", "--config {ws}/absent.toml", "cannot read config"),
    ("config-syntax", "--config {ws}/train-bad.toml", "is not valid TOML"),
    ("config-unknown", "--config {ws}/train-unknown.toml", "unknown config key 'epochz'"),
    ("config-type", "--config {ws}/train-type.toml", "epochs"),
    ("config-list", "--config {ws}/train-list.yaml", "must hold a table of keys"),
    ("config-suffix", "--config {ws}/train.txt", "must be a .toml, .yaml or .yml file"),
    ("config-lr", "--config {ws}/train-lr.yaml", "lr"),
    ("resume-missing", "--resume --out-override {ws}/absent.safetensors", "no checkpoint at"),
    ("resume-not-a-run", "--resume --out-override {ck}", "holds no training state"),
    ("resume-optimizer", "--resume --optimizer adam --out-override {ws}/sgd.safetensors", "optimizer sgd"),
    ("resume-corrupt", "--resume --out-override {ws}/truncated.safetensors", "not a readable safetensors"),
    ("out-exists", "--out-override {ws}/sgd.safetensors", "exists; pass --force"),
    ("out-folder", "--out-override {ws}/outdir", "is a directory"),
    ("out-under-file", "--out-override {ws}/blocker/m.safetensors", "blocker is a file"),
    ("out-unwritable", "--out-override /proc/nonsingular-test/m.safetensors", "cannot write"),
]

STUDY = [
    *(
        (name, f"--config {{ws}}/study-{name}.{'yaml' if name == 'not-table' else 'toml'}", needle)
        for name, needle in [
            ("unknown-method", "certify.methods.1"),
            ("inf-eps", "grid.eps_w values must be finite"),
            ("big-eps", "grid.eps_x values must be <= 1"),
            ("nan-eps", "grid.eps_x values must be finite"),
            ("zero-ray", "ray direction must not be zero"),
            ("neg-smax", "radius.s_max"),
            ("no-models", "models"),
            ("unknown-key", "colour"),
            ("headline", "must be a point of the grid"),
            ("dup-names", "names must be unique"),
            ("bad-objective", "model 'a'"),
            ("bad-option", "epochz"),
            ("bad-data", "unknown data source 'nowhere'"),
            ("bad-arch", "model 'standard': architecture"),
            ("bad-steps", "attack.steps"),
            ("syntax", "is not valid TOML"),
            ("not-table", "must hold a table of settings"),
        ]
    ),
    ("config-missing", "--config {ws}/absent.toml", "cannot read study config"),
    ("out-file", "--config {ws}/study-ok.toml --out {ws}/existing.json", "is a file, not a folder"),
    ("out-occupied", "--config {ws}/study-ok.toml --out {ws}/occupied", "non-empty folder that holds no study"),
    ("out-unwritable", "--config {ws}/study-ok.toml --out /proc/nonsingular-test", "cannot write"),
    ("cache-under-file", "--config {ws}/study-ok.toml --out {ws}/s1 --cache {ws}/blocker/cache", "blocker is a file"),
    ("state-broken", "--config {ws}/study-ok.toml --out {ws}/broken-state", "state.json is unreadable"),
    ("device", "--config {ws}/study-ok.toml --device tpu", "device"),
]

VERIFY = [
    ("vnnlib-missing", "{ws}/onnx-good.onnx {ws}/absent.vnnlib", "absent.vnnlib"),
    ("vnnlib-unbalanced", "{ws}/onnx-good.onnx {ws}/v-unbalanced.vnnlib", "line 203: '(' never closed"),
    ("vnnlib-statement", "{ws}/onnx-good.onnx {ws}/v-define.vnnlib", "line 75: unsupported statement"),
    ("vnnlib-huge", "{ws}/onnx-good.onnx {ws}/v-huge.vnnlib", "exceeds the limit"),
    ("vnnlib-unbounded", "{ws}/onnx-good.onnx {ws}/v-unbounded.vnnlib", "X_5 has no upper bound"),
    ("vnnlib-eval", "{ws}/onnx-good.onnx {ws}/v-eval.vnnlib", "unsupported comparison"),
    ("vnnlib-gzip", "{ws}/onnx-good.onnx {ws}/v-broken.vnnlib.gz", "not a readable gzip file"),
    ("vnnlib-inputs", "{ws}/onnx-good.onnx {ws}/v-three.vnnlib", "the property has 3 inputs but the model takes 64"),
    ("onnx-outside", "{ws}/onnx-ext/m.onnx {ws}/v-good.vnnlib", "outside the model's folder"),
    ("onnx-garbage", "{ws}/onnx-garbage.onnx {ws}/v-good.vnnlib", "not an ONNX model"),
    ("csv-outside", "--instances {ws}/instances-outside.csv --out {ws}/new-run/r.csv", "leads outside the root"),
    ("csv-absolute", "--instances {ws}/instances-absolute.csv --out {ws}/new-run/r.csv", "must be relative"),
    ("csv-timeout", "--instances {ws}/instances-timeout.csv --out {ws}/new-run/r.csv", "'forever' is not a number"),
    ("csv-fields", "--instances {ws}/instances-fields.csv --out {ws}/new-run/r.csv", "expected 3 fields"),
    ("csv-no-out", "--instances {ws}/instances-fields.csv", "--instances needs --out"),
    ("no-property", "{ws}/onnx-good.onnx", "give MODEL.onnx PROPERTY.vnnlib"),
    ("timeout", "{ws}/onnx-good.onnx {ws}/v-good.vnnlib --timeout 0", "--timeout must be a positive"),
    ("eps-w", "{ws}/onnx-good.onnx {ws}/v-good.vnnlib --eps-w -1", "--eps-w must be"),
    ("method", "{ws}/onnx-good.onnx {ws}/v-good.vnnlib --method norm", "--method"),
]

TOP = [
    ("unknown-command", "bogus", "No such command 'bogus'"),
    ("unknown-root-option", "--colour", "No such option: --colour"),
]


def _cases() -> list:
    cases = []
    for command, table in (
        ("evaluate", LOADING + THREAT + EVALUATE),
        ("certify", LOADING + THREAT + CERTIFY),
        ("radius", LOADING + RADIUS),
        ("train", TRAIN),
        ("study", STUDY),
        ("verify", VERIFY),
        ("", TOP),
    ):
        for case_id, args, needle in table:
            cases.append(pytest.param(command, args, needle, id=f"{command or 'nonsingular'}:{case_id}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, checkpoint) -> Path:
    ws = tmp_path_factory.mktemp("bad-input")
    make_workspace(ws, checkpoint)
    return ws


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _argv(command: str, args: str, ws: Path) -> list[str]:
    words = shlex.split(args.format(ws=ws, ck=ws / "good.safetensors"))
    if command == "train":
        # Train needs --out; cases about the output give their own.
        out = ["--out", str(ws / "new-run" / "m.safetensors")]
        if "--out-override" in words:
            at = words.index("--out-override")
            out = ["--out", words[at + 1]]
            del words[at : at + 2]
        words = [*out, "--device", "cpu", *words] if "--device" not in words else [*out, *words]
    if command == "study" and "--out" not in words:
        words += ["--out", str(ws / "study-out"), "--cache", str(ws / "study-cache")]
    return [command, *words] if command else words


@pytest.mark.parametrize(("command", "args", "needle"), CASES)
def test_bad_input(monkeypatch, capsys, workspace, command, args, needle):
    before = _hashes(workspace)
    code, stdout, stderr = run_cli(monkeypatch, capsys, *_argv(command, args, workspace))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {stderr}"
    assert len(lines) == 1, f"expected one stderr line, got: {stderr!r}"
    assert lines[0].startswith("error: ")
    assert needle in lines[0], lines[0]
    assert "pydantic.dev" not in lines[0] and "Value error," not in lines[0]
    assert not lines[0].startswith("error: value:")
    assert "Traceback" not in stdout + stderr
    assert _hashes(workspace) == before, "an existing file changed"
    assert not (workspace / "new-run").exists() or not any((workspace / "new-run").iterdir())


def test_the_table_is_large_enough():
    per_command: dict[str, int] = {}
    for case in CASES:
        per_command[case.values[0] or "nonsingular"] = per_command.get(case.values[0] or "nonsingular", 0) + 1
    assert sum(per_command.values()) >= 100
    assert all(per_command[c] >= 7 for c in ("evaluate", "certify", "radius", "train", "study"))
