"""Data-parallel training under `torchrun` or `accelerate launch`: who writes, and where the ranks part.

The Hugging Face Trainer does the data parallelism itself: it joins the process group (gloo on CPU,
nccl on CUDA with one GPU per process), wraps the model in DistributedDataParallel, gives each rank its
share of every batch, and gathers validation predictions from all ranks before computing metrics, so
every rank sees the same numbers, keeps the same best checkpoint and stops at the same evaluation.
What train.py adds is small: only the main process (rank 0) prints and writes; after training the
ranks check that they agree, meet once more, leave the process group, and every rank but the main one
exits 0. The main process then evaluates, saves, exports and zips alone, with no collective left to
call, so no rank can hang however long that takes. Run as a plain script or a notebook, the world is
one process and none of this does anything.
"""

import os
import sys


def world_size():
    """How many processes train together (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def processes_on_this_machine():
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def is_main_process():
    return rank() == 0


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(requested):
    """CPU threads for torch in this process: `requested` if set, else the cores shared by this machine's processes.

    torchrun sets OMP_NUM_THREADS=1 in every worker unless told otherwise, which leaves most cores of a
    big machine idle; 0 from a plain run keeps torch's own default (all cores).
    """
    if requested:
        return requested
    if world_size() == 1:
        return 0
    return max(1, usable_cores() // processes_on_this_machine())


def _started_alone_by_accelerate():
    """accelerate's plain launcher set this process up (MASTER_ADDR for N > 1) but started no process group."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


def accelerate_plain_launch_args():
    """`accelerate launch`'s own arguments when its plain launcher started this as the only process, else None.

    Given `--num_processes N` without `--multi_gpu` (on a machine without GPUs, say) accelerate starts one
    process and leaves the other N - 1 to mpirun; it sets MASTER_ADDR but no WORLD_SIZE. Its arguments
    are read back from the launcher's command line (Linux /proc), the one place that still has N.
    """
    if not _started_alone_by_accelerate():
        return None
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return None
    for i, part in enumerate(argv):
        if part == "launch" or part.endswith(("accelerate.commands.launch", "accelerate/commands/launch.py")):
            from accelerate.commands.launch import launch_command_parser

            try:
                return launch_command_parser().parse_args(argv[i + 1 :])
            except SystemExit:
                return None
    return None


def relaunch_if_accelerate_started_one():
    """Under `accelerate launch --num_processes N` that started one process: become torchrun with N processes.

    torchrun is what accelerate itself runs for N processes on one machine (with --multi_gpu); the
    Trainer then uses gloo on CPU and nccl on GPUs. Several machines, or N that cannot be read back, get
    a note saying which command starts them instead.
    """
    if not _started_alone_by_accelerate():
        return
    launched = accelerate_plain_launch_args()
    processes = getattr(launched, "num_processes", None)
    if not processes or (launched.num_machines or 1) > 1:
        print(
            "note: accelerate launch started this as a single process; for N processes use "
            "`accelerate launch --multi_gpu --num_processes N` (gloo on CPU, nccl on GPUs) or torchrun"
        )
        return
    if processes == 1:
        return
    print(
        f"note: accelerate launch started one process for --num_processes {processes} (its plain launcher "
        f"leaves the rest to mpirun); restarting as torchrun with {processes} processes on this machine",
        flush=True,
    )
    env = {name: value for name, value in os.environ.items() if name not in ("MASTER_ADDR", "MASTER_PORT")}
    script = os.path.abspath(sys.argv[0])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    os.execve(sys.executable, [*command, script, *sys.argv[1:]], env)


def setup(requested_threads):
    """Set this process's threads; silence stdout on all ranks but the main one, so the log reads as one run."""
    import torch

    threads = threads_per_process(requested_threads)
    if threads:
        torch.set_num_threads(threads)
    if not is_main_process():
        # Warnings and errors still reach stderr from every rank.
        sys.stdout = open(os.devnull, "w")


def backend():
    """The process group's backend once the Trainer has started it (gloo, nccl), or None in one process."""
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def description(batch_size, grad_accum):
    """What train_config.json records about the parallel layout and the batch the optimizer really sees."""
    return {
        "world_size": world_size(),
        "processes_per_machine": processes_on_this_machine(),
        "backend": backend(),
        "batch_size_per_process": batch_size,
        "grad_accum": grad_accum,
        "effective_batch_size": batch_size * world_size() * grad_accum,
    }


def leave_unless_main(agreed=None):
    """After training: check every rank holds the same `agreed` value, then keep only the main process.

    `agreed` is what must not differ between ranks (the best epoch, the validation history); a
    difference stops every rank with the same error rather than saving a model one rank would not have
    chosen. All ranks then leave the process group together, and all but the main process exit 0.
    Without a process group (one process, a notebook) it does nothing.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, agreed)
    dist.barrier()
    dist.destroy_process_group()
    if any(value != seen[0] for value in seen):
        raise RuntimeError(f"ranks disagree after training (rank 0: {seen[0]!r}; all: {seen!r})")
    if not is_main_process():
        sys.exit(0)
