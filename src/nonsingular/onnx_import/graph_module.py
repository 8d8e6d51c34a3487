"""The imported model: an nn.Sequential when the graph is a chain, else an `OnnxGraphModule` that runs a fixed,
topologically sorted list of named submodules. Either way the result is plain PyTorch that torch.fx traces (the
plan is static Python data, so tracing unrolls it), with the layers named after the ONNX initializers / nodes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from .context import Step

__all__ = ["OnnxGraphModule", "build_module", "prepend"]


class OnnxGraphModule(nn.Module):
    """Runs `plan` in order: each entry (module name, input value names, output value name) applies that
    submodule to values computed earlier; the model's input is value `input_name`, its logits `output_name`.

    Forward: x (N, *input_shape) -> logits (N, K).
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        plan: Sequence[tuple[str, Sequence[str], str]],
        input_name: str,
        output_name: str,
    ) -> None:
        super().__init__()
        for name, module in modules:
            self.add_module(name, module)
        self.plan = [(name, tuple(inputs), output) for name, inputs, output in plan]
        self.input_name = input_name
        self.output_name = output_name

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {self.input_name: x}
        for name, inputs, output in self.plan:
            env[output] = getattr(self, name)(*(env[i] for i in inputs))
        return env[self.output_name]

    def extra_repr(self) -> str:
        return f"steps={len(self.plan)}, input={self.input_name!r}, output={self.output_name!r}"


def prepend(model: nn.Module, name: str, first: nn.Module) -> nn.Module:
    """`model` (as built by `build_module`) with `first` applied to its input before everything else, keeping
    every other module's name."""
    if isinstance(model, OnnxGraphModule):
        if hasattr(model, name):
            raise ValueError(f"the model already has a module named {name!r}")
        entry = f"{model.input_name}::{name}"
        modules = [(name, first), *model.named_children()]
        plan = [(name, (entry,), model.input_name), *model.plan]
        return OnnxGraphModule(modules, plan, entry, model.output_name).eval()
    if not isinstance(model, nn.Sequential) or hasattr(model, name):
        raise ValueError(f"cannot put a module named {name!r} in front of {type(model).__name__}")
    return nn.Sequential(OrderedDict([(name, first), *model.named_children()])).eval()


def build_module(steps: Sequence[Step], input_name: str, output_name: str) -> nn.Module:
    """The model from the conversion's steps (the last one writes `output_name`): a Sequential if each step reads
    exactly the previous step's output (or the input, for the first) and nothing else reads it."""
    reads: dict[str, int] = {}
    for s in steps:
        for i in s.inputs:
            reads[i] = reads.get(i, 0) + 1
    previous, chain = input_name, True
    for s in steps:
        if s.inputs != [previous] or reads.get(previous, 0) != 1:
            chain = False
            break
        previous = s.output
    if chain and previous == output_name:
        return nn.Sequential(OrderedDict((s.name, s.module) for s in steps)).eval()
    plan = [(s.name, s.inputs, s.output) for s in steps]
    return OnnxGraphModule([(s.name, s.module) for s in steps], plan, input_name, output_name).eval()
