"""The documentation runs: docstring examples (doctest) and the README's API example."""
import doctest
import importlib
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("module", ["specfair_kernels.api", "specfair_kernels.stats"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_api_example_runs():
    text = README.read_text()
    block = text.split("## API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code, divergence = block.split("loss = sk.token_divergence", 1)
    # the one line that needs a process group or a second accumulator
    code = code.replace("stats.merge(other); stats.reset(); stats.all_reduce()",
                        "stats.merge(stats.clone()); stats.reset()")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["out"].tokens.shape == (4, 4)
    ns.update(draft_logits=torch.randn(6, 50, requires_grad=True), target_logits=torch.randn(6, 50),
              task_ids=torch.tensor([0, 1, 0, 1, 1, 0]), T=2)
    exec(compile("loss = sk.token_divergence" + divergence, "README.md", "exec"), ns)
    assert ns["loss"].shape == (2,)


def test_readme_generator_example_runs():
    pytest.importorskip("transformers")
    text = README.read_text()
    block = text.split("### Speculative generation", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert block.count("max_new_tokens=64") == 2
    block = block.replace("max_new_tokens=64", "max_new_tokens=12")     # the same code, shorter
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["out"].sequences.shape[0] == 2
    assert set(ns["rep"]["per_task"]) == {0, 1}


def test_generator_docstring_examples():
    pytest.importorskip("transformers")
    result = doctest.testmod(importlib.import_module("specfair.generator"), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
