"""Many processes: joining torchrun's process group, and the rank-aware helpers every training stage uses.

    torchrun --nproc_per_node 2 -m chatforge.cli pretrain --config configs/pretrain_tiny.yaml ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m chatforge.cli sft ...

torchrun starts the processes with RANK, WORLD_SIZE, LOCAL_RANK (and the rendezvous address) in their
environment; `setup()` joins them into one process group: gloo on CPU, NCCL on GPU, each rank on GPU
LOCAL_RANK. Without that environment (or with WORLD_SIZE=1) every helper here is the identity: a
single-process run computes exactly what it did before, with no wrapper and no communication.

How the stages use it:
    batches    the batch sizes in a config are GLOBAL; each rank takes every world_size-th item of
               each batch (`shard`), so ranks never overlap and the run sees the same data as one process
    gradients  `wrap` puts the trained model in DDP (or FSDP2's `fully_shard`), which averages gradients
               over ranks; `share` weights a rank's mean loss so that the average is the mean over the
               whole batch (ranks may hold different numbers of tokens)
    metrics    `all_reduce_mean` / `all_reduce_sum` before logging; only rank 0 (`is_main`) writes
               metrics, checkpoints and final folders, and `barrier` makes the others wait for them
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import os

import torch
import torch.distributed as dist

from chatforge.errors import ChatforgeError
from chatforge.losses import whiten

STRATEGIES = ("ddp", "fsdp")


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun); readable before the process group exists."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ChatforgeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; start with torchrun") from None


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0, the rank that writes files and prints."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device.

    Without torchrun, `device` unchanged. Under torchrun, CUDA runs use GPU LOCAL_RANK whatever the config says."""
    if env_world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        atexit.register(destroy)
        _quiet_print(is_main())
    return device


def _quiet_print(main: bool) -> None:
    """Ranks other than 0 print only with print(..., force=True): one copy of every message, not N."""
    original = builtins.print

    def print_on_main(*args, force: bool = False, **kwargs):
        if main or force:
            original(*args, **kwargs)

    builtins.print = print_on_main
    if not main:  # progress_bar hides the other ranks' bars; this hides their bar.write lines
        from tqdm import tqdm

        tqdm.write = classmethod(lambda cls, *args, **kwargs: None)


def destroy() -> None:
    """Leave the process group (registered at exit by setup)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values):
    """Sum over ranks of a number, a tensor, or a dict of numbers (the same keys on every rank)."""
    if not is_distributed():
        return values
    if isinstance(values, dict):
        keys = sorted(values)
        summed = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
        return {k: v for k, v in zip(keys, summed.tolist())}
    if isinstance(values, (tuple, list)):
        return tuple(all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist())
    if isinstance(values, torch.Tensor):
        reduced = values.detach().to(_comm_device(), copy=True)
        dist.all_reduce(reduced)
        return reduced.to(values.device)
    return all_reduce_sum(torch.tensor(float(values), dtype=torch.float64)).item()


def all_reduce_mean(values):
    """Mean over ranks of a number, a tensor, or a dict of numbers (metrics before logging)."""
    if not is_distributed():
        return values
    summed = all_reduce_sum(values)
    if isinstance(summed, dict):
        return {k: v / world_size() for k, v in summed.items()}
    return summed / world_size()


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0, in rank order (first dims may differ between ranks)."""
    if not is_distributed():
        return tensor
    local = tensor.detach().to(_comm_device())
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n.item())] for part, n in zip(parts, sizes)]).to(tensor.device)


def shard(items):
    """This rank's share of a global batch: items rank, rank + world_size, ... (a list, a range or a tensor's rows)."""
    if not is_distributed():
        return items
    return items[rank()::world_size()]


def rank_seed(seed: int) -> int:
    """A seed of this rank's own (`seed` itself on rank 0 and in a single process): ranks sample independently."""
    return seed + 1_000_000_007 * rank()


def check_divisible(stage: str, field: str, value: int) -> None:
    """Fail (before any model loads) unless a global batch `field` splits evenly over torchrun's WORLD_SIZE ranks."""
    ranks = env_world_size()
    if ranks > 1 and value % ranks:
        raise ChatforgeError(f"{stage}: field '{field}' = {value} is the global batch and must be a multiple of the "
                             f"{ranks} torchrun processes (WORLD_SIZE), each taking an equal share; use "
                             f"{max(ranks, value // ranks * ranks)}")


def eval_shard(items, model):
    """This rank's share of an evaluation set; all of it under FSDP2, where every rank must run every forward."""
    return items if is_sharded(model) else shard(items)


def eval_sum(values, model):
    """Sums over ranks of what eval_shard'ed work added up (under FSDP2 each rank saw everything: no-op)."""
    return values if is_sharded(model) else all_reduce_sum(values)


def share(items: list, count=None) -> tuple[list, float]:
    """(this rank's share of `items`, its loss weight). The weight, count(mine) * world_size / count(all),
    turns the rank's mean loss into its part of the mean over all items once DDP averages the gradients;
    count(item) is what the loss averages over in an item (default: 1, the loss is a mean over items).

    A rank left with nothing still runs one item with weight 0: every rank must run the same forward and
    backward passes. In a single process: (items, 1.0), which changes no number."""
    if not is_distributed():
        return items, 1.0
    mine = shard(items)
    if not mine:
        return items[:1], 0.0
    count = count or (lambda item: 1)
    total = sum(count(item) for item in items)
    return mine, sum(count(item) for item in mine) * world_size() / max(total, 1)


def whiten_across_ranks(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """losses.whiten with the mean and variance of the masked values over ALL ranks (PPO's advantages)."""
    if not is_distributed():
        return whiten(values, mask)
    mask = mask.to(values.dtype)
    sums = all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]))
    mean = sums[0] / sums[1].clamp(min=1)
    variance = all_reduce_sum(((values - mean) ** 2 * mask).sum()) / sums[1].clamp(min=1)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


class _Forward(torch.nn.Module):
    """`forward(model, *args)` as a module's forward, so DDP sees a call that is not the model's own forward."""

    def __init__(self, model: torch.nn.Module, forward):
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, *args, **kwargs):
        return self.fn(self.model, *args, **kwargs)


def check_strategy(strategy: str, stage: str) -> None:
    """Fail on a distributed_strategy that is not one of STRATEGIES."""
    if strategy not in STRATEGIES:
        raise ChatforgeError(f"{stage}: field 'distributed_strategy' = '{strategy}' is not one of {STRATEGIES}")


def wrap(model: torch.nn.Module, strategy: str = "ddp", forward=None):
    """The callable to train `model` through, across ranks.

    ddp: DistributedDataParallel (a full copy per rank, gradients averaged in the backward pass);
    fsdp: FSDP2 `fully_shard` on every decoder block and the root (parameters, gradients and optimizer
    state sharded over ranks, for models that do not fit one device; `model` itself becomes the sharded
    module, so build the optimizer after wrapping). `forward(model, *args)`, when given, is the call to
    train through instead of the model's own forward (e.g. a critic's per-token values).
    In a single process: the model itself, or `partial(forward, model)`."""
    if not is_distributed():
        return model if forward is None else functools.partial(forward, model)
    module = model if forward is None else _Forward(model, forward)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from chatforge.models.trainable import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(module)
        return module
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model) -> bool:
    """True for a model sharded by FSDP2's fully_shard."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


class _GatheredWeights:
    """Stands in for an FSDP2 model when saving: save_pretrained writes the gathered full state dict."""

    def __init__(self, model, state_dict: dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path, **kwargs):
        self.model.save_pretrained(path, state_dict=self.state_dict, **kwargs)


def saveable(model):
    """What save_hf_folder should write: the model itself, or under FSDP2 its full weights gathered onto
    rank 0's CPU (a collective: every rank calls it; only rank 0's result has the weights)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = getattr(model, "all_tied_weights_keys", None) or {}  # e.g. lm_head.weight -> the input embeddings
    return _GatheredWeights(model, {name: tensor for name, tensor in state.items() if name not in tied})


class _FullOptimizerState:
    """An FSDP2 optimizer's full (unsharded) state for checkpoints: gathered at creation (a collective),
    and loaded back into every rank's shards by load_state_dict."""

    def __init__(self, model, optimizer, gather: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        self.model, self.optimizer = model, optimizer
        self.options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self.state = get_optimizer_state_dict(model, optimizer, options=self.options) if gather else None

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model, optimizer, gather: bool = False):
    """The object a checkpoint saves / restores for `optimizer`: the optimizer itself, or under FSDP2 its full
    state (gather=True before a save, a collective on every rank; gather=False for loading)."""
    if not is_sharded(model):
        return optimizer
    return _FullOptimizerState(model, optimizer, gather)


def checkpoint_state(model, stateful: dict, saving: bool) -> dict:
    """The named optimizers / schedulers as a checkpoint saves or restores them: themselves, except that under
    FSDP2 an optimizer's state is gathered whole (saving=True: a collective, every rank calls it)."""
    return {name: optimizer_state(model, obj, gather=saving) if isinstance(obj, torch.optim.Optimizer) else obj
            for name, obj in stateful.items()}


def on_main(fn, *args, **kwargs):
    """Run fn on rank 0 only (writing files), then make every rank wait for it; fn's result on rank 0, else None."""
    result = fn(*args, **kwargs) if is_main() else None
    barrier()
    return result


def accumulating(model, last: bool):
    """Context for one micro-batch's forward and backward: with DDP, gradients are averaged only on the last."""
    if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
