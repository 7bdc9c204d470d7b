"""The trainable side of s-CDF and how it is spread over ranks: the `Student` module (the
drafter and the temperature baseline's log-temperature), its DDP or FSDP2 wrapping under
``torchrun``, full (unsharded) state dicts for checkpoints, and the plain drafter at the end.

``shard="ddp"`` (default): every rank holds the whole drafter, DistributedDataParallel
averages the gradients.  ``shard="fsdp"``: `torch.distributed.fsdp.fully_shard` (FSDP2) on
every decoder layer and on the drafter, so each rank holds 1/world of the parameters,
gradients and optimiser state; the parameters are DTensors.  Checkpoints hold full state
dicts either way (gathered to the CPU of rank 0 with `torch.distributed.checkpoint`'s
``get_*_state_dict``), so a checkpoint does not depend on the sharding.  FSDP trains full
weights only (not LoRA, not the temperature baseline's single scalar: use DDP there).  With one
process there is nothing to shard and both options train the plain module.
"""
from __future__ import annotations

import torch

from .scdf_config import SHARDS

__all__ = ["SHARDS", "Student", "fold_temperature", "wrap", "full_state", "load_full_state", "local_elements",
           "plain_drafter"]


def fold_temperature(drafter, tau: float, error: type[Exception] = ValueError):
    """Divide the logits by tau for good: scale the final norm (the output layer is linear)."""
    norm = getattr(getattr(drafter, "model", None), "norm", None)
    head = drafter.get_output_embeddings()
    if norm is None or getattr(norm, "weight", None) is None or getattr(head, "bias", None) is not None:
        raise error("temperature tuning folds tau into the final norm's weight (model.model.norm) "
                    "and needs an output layer without bias; this drafter has neither")
    with torch.no_grad():
        norm.weight.div_(tau)


class Student(torch.nn.Module):
    """The trainable side as one Module (what DDP wraps): the drafter (maybe with LoRA) and a
    log-temperature, trained only by the temperature method."""

    def __init__(self, drafter, method: str):
        super().__init__()
        self.drafter = drafter
        self.method = method
        self.log_tau = torch.nn.Parameter(torch.zeros((), dtype=torch.float32),
                                          requires_grad=(method == "temperature"))

    def forward(self, input_ids):
        logits = self.drafter(input_ids=input_ids, use_cache=False).logits
        if self.method == "temperature":
            logits = logits / self.log_tau.exp().to(logits.dtype)
        return logits


def _layers(drafter) -> list[torch.nn.Module]:
    """The decoder layers (the FSDP units): ``model.layers`` of a Hugging Face causal LM."""
    layers = getattr(getattr(drafter, "model", None), "layers", None)
    return list(layers) if layers is not None else []


def wrap(student: Student, shard: str, device: torch.device, world: int):
    """The module the training loop calls: ``student`` itself (one process), DDP around it, or
    ``student`` with its drafter sharded by FSDP2 in place."""
    if world == 1:
        return student
    if shard == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in _layers(student.drafter):
            fully_shard(layer)
        fully_shard(student.drafter)
        return student
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(student, device_ids=[device.index] if device.type == "cuda" else None)


def local_elements(module) -> int:
    """Parameter elements this rank holds (its shards under FSDP, everything otherwise)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in module.parameters())


def _sharded(module) -> bool:
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def full_state(student: Student, opt) -> tuple[dict, dict]:
    """(model, optimiser) state dicts with full CPU tensors.  Under FSDP a collective (every
    rank calls it; rank 0 gets the tensors, the others empty dicts)."""
    if not _sharded(student):
        return ({k: v.detach().cpu().clone() for k, v in student.state_dict().items()}, opt.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(student, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(student: Student, opt, model_sd: dict, opt_sd: dict, device: torch.device) -> None:
    """Inverse of `full_state` (every rank passes the full dicts it read from the checkpoint)."""
    if not _sharded(student):
        student.load_state_dict({k: v.to(device) for k, v in model_sd.items()})
        opt.load_state_dict(opt_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(student, opt, model_state_dict=model_sd, optim_state_dict=opt_sd,
                   options=StateDictOptions(full_state_dict=True))


def plain_drafter(student: Student, model_sd: dict | None):
    """The drafter as a plain (unsharded) model.  Unsharded: the drafter itself.  Sharded:
    ``model_sd`` is `full_state`'s on rank 0, loaded into a copy of the drafter built from
    its config on the CPU (its buffers copied over); None on the other ranks."""
    drafter = student.drafter
    if not _sharded(student):
        return drafter
    if model_sd is None or not model_sd:
        return None
    with torch.device("meta"):
        plain = type(drafter)(drafter.config)
    prefix = "drafter."
    plain.load_state_dict({k[len(prefix):]: v for k, v in model_sd.items() if k.startswith(prefix)},
                          strict=False, assign=True)
    for name, buf in drafter.named_buffers():
        owner, _, leaf = name.rpartition(".")
        mod = plain.get_submodule(owner) if owner else plain
        persistent = leaf not in getattr(mod, "_non_persistent_buffers_set", set())
        mod.register_buffer(leaf, buf.detach().cpu().clone(), persistent=persistent)
    plain.tie_weights()
    left = [n for n, p in plain.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"the gathered FSDP state dict lacks parameters {left[:5]}")
    return plain
