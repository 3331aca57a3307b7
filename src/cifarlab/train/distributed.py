"""Data-parallel training with PyTorch's own engine: ``torch.distributed`` +
DistributedDataParallel, processes started by ``torchrun``.

cifarlab does no process management of its own. Under ``torchrun`` the environment names the
rank, the world size and the rendezvous; :func:`setup` joins the process group (NCCL on CUDA
GPUs, gloo on CPUs) and :func:`teardown` leaves it. A plain ``cifarlab train`` is a world of
one and touches none of this.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from cifarlab.errors import CifarlabError, SettingError

# A collective that waits longer than this ends the process with an error, so a job whose peer
# died cannot hang forever even if torchrun did not notice (it normally stops the others within
# seconds). Per-epoch validation on rank 0 runs while the others wait, so allow minutes.
TIMEOUT = timedelta(seconds=int(os.environ.get("CIFARLAB_DIST_TIMEOUT", "300")))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str) -> str:
    """Join the process group if launched by torchrun; returns the device to use (each
    process its own GPU, ``cuda:LOCAL_RANK``, on CUDA)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise CifarlabError("this PyTorch build has no torch.distributed")
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("device", "cuda: no CUDA GPU is available here (try cpu)")
    if use_cuda:
        torch.cuda.set_device(local_rank())
        device = f"cuda:{local_rank()}"
    elif device == "auto":
        device = "cpu"
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks (identity in a single process)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank: all ranks stop together."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def is_peer_error(error: BaseException) -> bool:
    """Whether ``error`` is what a collective raises when a peer process died or the
    connection broke (gloo raises a plain RuntimeError naming itself)."""
    if isinstance(error, (getattr(dist, "DistError", ()), ConnectionError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed")
    )


def short(error: BaseException) -> str:
    """The first sentence of an error, without the C++ source location gloo puts in front."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split("] ", 1)[-1]
    return text.split(". ", 1)[0][:200]


def weight_digests(model: torch.nn.Module) -> list[str]:
    """A digest of the model's weights and buffers on every rank (rank order); one entry in a
    single process. Equal digests mean the ranks hold identical weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    mine = h.hexdigest()[:16]
    if not is_distributed():
        return [mine]
    out: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(d) for d in out]


@torch.no_grad()
def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP sends them
    before each forward, but each rank's forward then updates its own copy from its own
    batch; after the last step of an epoch this makes the ranks' states identical again."""
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
