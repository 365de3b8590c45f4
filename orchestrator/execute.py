"""Runs a planned study on Ray: the only module of pdspace that imports ray.

Units run in dependency waves: every unit whose dependencies are complete runs in the current
wave. Training units (teachers, students, baselines) go to one Ray Tune Tuner per wave, with
per-trial resources, a concurrency limit and bounded retries; a unit with several workers runs
as a Ray Train TorchTrainer (DDP) job. Logits extraction runs as Ray tasks
beside the Tuner. Each unit writes its own rows to the database (see orchestrator.worker).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from orchestrator.plan import Unit  # noqa: E402
from orchestrator.worker import execute_unit, record_failure  # noqa: E402

TRAINING_KINDS = ("teacher", "student", "baseline")


def _ray_temp_dir(artifacts: Path) -> str:
    """Ray's temp dir inside the artifacts, unless its socket paths would be too long."""
    candidate = (artifacts / "ray").resolve()
    if len(str(candidate)) > 40:  # AF_UNIX paths are limited to 107 bytes; Ray adds ~65
        digest = hashlib.sha256(str(candidate).encode()).hexdigest()[:10]
        candidate = Path(tempfile.gettempdir()) / f"pdspace-ray-{digest}"
    candidate.mkdir(parents=True, exist_ok=True)
    return str(candidate)


def start_ray(address: str | None, artifacts: Path, *, num_cpus: int | None = None,
              num_gpus: int | None = None) -> None:
    """Join ``address`` or start a local Ray sized to this machine (no dashboard, small store)."""
    if ray.is_initialized():
        return
    # Our own summary names failed units; Tune's per-trial error dumps would repeat them.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    common = dict(
        include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}},
    )
    if address:
        ray.init(address=address, **common)
        return
    temp_dir = _ray_temp_dir(artifacts)
    _kill_orphans(temp_dir)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
        object_store_memory=256 * 1024 * 1024, _temp_dir=temp_dir, **common,
    )


def _kill_orphans(temp_dir: str) -> None:
    """End Ray processes left by a `pdspace run` that was killed (SIGKILL leaves its local
    cluster running). Only processes of this artifacts folder's Ray are touched, and only while
    this process holds the folder's run lock (orchestrator.run), so none of them is in use."""
    import psutil

    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.info["pid"] == me:
                continue
            # Ray renames its agents ("ray::DashboardAgent"); their open logs still name the dir.
            cmd = " ".join(proc.info["cmdline"] or [])
            if temp_dir in cmd or (cmd.startswith("ray::") and any(
                    f.path.startswith(temp_dir) for f in proc.open_files())):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


# --------------------------------------------------------------------------------------------
# A cluster's nodes must share the artifacts home: every unit reads what others wrote there.

def read_probe(path: str, token: str) -> str | None:
    """The per-node check: None when ``path`` holds ``token`` (this node sees the file the driver
    wrote), else why not, as a phrase."""
    try:
        found = Path(path).read_text()
    except FileNotFoundError:
        return "the file is not there"
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})"
    return None if found == token else "another file is there (a different filesystem mounted at that path)"


@ray.remote(num_cpus=0, max_retries=0)
def _probe(path: str, token: str) -> str | None:
    return read_probe(path, token)


def nodes_not_seeing(path: str | os.PathLike, token: str, *, timeout_s: float = 120.0) -> list[tuple[str, str]]:
    """(node, why) for every alive Ray node on which a task cannot read ``token`` at ``path``.

    One zero-CPU task per node, pinned to it (NodeAffinitySchedulingStrategy, not soft), so a
    busy cluster still runs the check. Ray must be initialised."""
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        name = node.get("NodeManagerHostname") or "?"
        label = f"{name} ({node.get('NodeManagerAddress')}, node id {node['NodeID'][:12]})"
        pin = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs[label] = _probe.options(scheduling_strategy=pin).remote(str(path), token)
    missing = []
    for label, ref in refs.items():
        try:
            why = ray.get(ref, timeout=timeout_s)
        except GetTimeoutError:
            why = f"its check did not finish within {timeout_s:.0f} s"
        except Exception as exc:  # noqa: BLE001 - e.g. pdspace is not installed on that node
            why = f"its check failed ({_one_sentence(exc)})"
        if why:
            missing.append((label, why))
    return missing


def check_shared_artifacts(address: str | None, artifacts: Path) -> None:
    """Join the cluster at ``address`` and refuse it (ValueError: exit 2 on the CLI, nothing run)
    unless a task on every alive node reads a file the driver just wrote under the artifacts
    home; the sentence names the first node that cannot. Ray stays up for execute()."""
    start_ray(address, artifacts)
    home = Path(artifacts).resolve()
    home.mkdir(parents=True, exist_ok=True)
    token = f"{socket.gethostname()} {uuid.uuid4().hex}"
    probe = home / f".cluster-check-{uuid.uuid4().hex[:12]}"
    probe.write_text(token)
    try:
        missing = nodes_not_seeing(probe, token)
    finally:
        probe.unlink(missing_ok=True)
    if missing:
        stop_ray()
        raise shared_storage_error(home, probe, missing)


def shared_storage_error(home: Path, probe: Path, missing: list[tuple[str, str]]) -> ValueError:
    """The one sentence `pdspace run --address` refuses a cluster with."""
    node, why = missing[0]
    others = f" (and {len(missing) - 1} more node(s))" if len(missing) > 1 else ""
    return ValueError(
        f"node {node}{others} cannot see the artifacts home {home} ({why}: {probe.name}, written by this "
        f"machine just before); every node of the Ray cluster must mount it at the same path (a shared "
        f"filesystem): set PDSPACE_HOME to such a path")


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: run one training unit (resuming from its checkpoint)."""
    unit, ctx = config["unit"], config["ctx"]
    execute_unit(unit, ctx["db_url"], ctx["artifacts"], threads=unit["resources"]["cpus"])
    tune.report({"done": 1})


def _run_ddp_with_retries(unit: Unit, ctx: dict[str, Any], max_retries: int) -> str | None:
    error = None
    for _ in range(max_retries + 1):
        try:
            _run_ddp(unit.as_dict(), ctx)
            return None
        except Exception as exc:  # noqa: BLE001 - recorded by the worker; retried here
            error = _one_sentence(exc)
    return error


def _ddp_loop(loop_config: dict[str, Any]) -> None:
    # Runs on every Ray Train worker; torch.distributed (gloo/NCCL) is already initialised.
    import ray.train.torch  # noqa: F401

    unit, ctx = loop_config["unit"], loop_config["ctx"]
    device = "cpu"
    if unit["resources"]["gpus"] > 0:
        device = str(ray.train.torch.get_device())
    execute_unit(unit, ctx["db_url"], ctx["artifacts"], threads=unit["resources"]["cpus"], device=device)


DDP_TIMEOUT_S = 4 * 3600
"""How long a worker waits in a collective. Only rank 0 evaluates (held-out loss with the teacher,
then lm-eval tasks on the final checkpoint: an hour or more for MMLU, HellaSwag and GSM8k at paper
scale) while the other ranks wait at their next all-reduce or at the final barrier; Ray Train's
default of 30 min would kill such a run."""


def ddp_configs(resources: dict[str, Any]):
    """(TorchConfig, ScalingConfig) of a multi-worker unit: NCCL with one GPU per worker when the
    study asks for GPUs (validation allows exactly 1 per worker then), gloo on CPUs."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    gpus = resources["gpus"]
    return (TorchConfig(backend="nccl" if gpus > 0 else "gloo", timeout_s=DDP_TIMEOUT_S),
            ScalingConfig(num_workers=resources["workers"], use_gpu=gpus > 0,
                          resources_per_worker={"CPU": resources["cpus"], **({"GPU": gpus} if gpus else {})}))


def _run_ddp(unit: dict[str, Any], ctx: dict[str, Any]) -> None:
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    torch_config, scaling_config = ddp_configs(unit["resources"])
    trainer = TorchTrainer(
        _ddp_loop,
        train_loop_config={"unit": unit, "ctx": ctx},
        torch_config=torch_config,
        scaling_config=scaling_config,
        run_config=RunConfig(name=f"ddp-{unit['config_hash']}",
                             storage_path=str(Path(ctx["artifacts"]).resolve() / "ray_results")),
    )
    trainer.fit()


@ray.remote
def _task(unit: dict[str, Any], ctx: dict[str, Any]) -> str:
    execute_unit(unit, ctx["db_url"], ctx["artifacts"], threads=unit["resources"]["cpus"])
    return unit["config_hash"]


def run_wave(units: list[Unit], ctx: dict[str, Any], *, max_concurrent: int | None,
             max_retries: int, name: str) -> dict[str, str | None]:
    """Run one wave; returns {config_hash: None if it succeeded else an error sentence}."""
    outcome: dict[str, str | None] = {}
    tasks = {}
    for u in units:
        if u.kind not in TRAINING_KINDS:
            opts = {"num_cpus": u.resources["cpus"], "num_gpus": u.resources["gpus"],
                    "max_retries": max_retries, "retry_exceptions": True}
            tasks[u.config_hash] = _task.options(**opts).remote(u.as_dict(), ctx)
    trials = [u for u in units if u.kind in TRAINING_KINDS and u.resources["workers"] == 1]
    if trials:
        outcome.update(_run_tuner(trials, ctx, max_concurrent=max_concurrent, max_retries=max_retries, name=name))
    # Multi-worker units run as Ray Train jobs launched from here: their workers hold the
    # resources, so a Tune trial around them would only take a slot away.
    for u in units:
        if u.kind in TRAINING_KINDS and u.resources["workers"] > 1:
            outcome[u.config_hash] = _run_ddp_with_retries(u, ctx, max_retries)
    for h, ref in tasks.items():
        try:
            ray.get(ref)
            outcome[h] = None
        except Exception as exc:  # noqa: BLE001 - recorded, the study goes on
            outcome[h] = _one_sentence(exc)
    return outcome


def _run_tuner(units: list[Unit], ctx: dict[str, Any], *, max_concurrent: int | None,
               max_retries: int, name: str) -> dict[str, str | None]:
    by_resources: dict[tuple, list[Unit]] = {}
    for u in units:
        key = (u.resources["cpus"], u.resources["gpus"], u.resources["workers"])
        by_resources.setdefault(key, []).append(u)
    outcome: dict[str, str | None] = {}
    # One Tuner per resource shape (Tune's trials in one Tuner share a resource request).
    for (cpus, gpus, _workers), group in by_resources.items():
        trainable = tune.with_resources(_trial, {"cpu": cpus, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"unit": tune.grid_search([u.as_dict() for u in group]), "ctx": ctx},
            # reuse_actors: a finished trial's process takes the next unit, so torch, the model
            # code and lm-eval are imported once per slot, not once per unit (~7 s of a ~60 s
            # CPU-scale unit). Each unit seeds its own RNGs, so its results do not depend on it.
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None, num_samples=1,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{name}-{cpus}-{gpus}",
                storage_path=str(Path(ctx["artifacts"]).resolve() / "ray_results"),
                failure_config=tune.FailureConfig(max_failures=max_retries),
                verbose=0,
            ),
        )
        grid = tuner.fit()
        for result in grid:
            if not result.config:  # a trial Tune never started: the fit was interrupted (SIGINT)
                continue
            h = result.config["unit"]["config_hash"]
            outcome[h] = None if result.error is None else _one_sentence(result.error)
        if any(u.config_hash not in outcome for u in group):
            # Tune stops on SIGINT and returns; stop the whole run as Ctrl-C would (what finished is
            # recorded; an interrupted trial resumes from its checkpoint on the next run)
            raise KeyboardInterrupt
    return outcome


def _one_sentence(exc: BaseException) -> str:
    """The innermost error's message, without Ray's wrapping."""
    cause = exc
    while True:
        nxt = getattr(cause, "cause", None) or cause.__cause__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    text = str(cause).strip().splitlines()
    msg = next((line for line in reversed(text) if line.strip()), type(cause).__name__)
    return f"{type(cause).__name__}: {msg}" if not msg.startswith(type(cause).__name__) else msg


def execute(units: list[Unit], *, db_url: str, artifacts: Path, address: str | None,
            max_concurrent: int | None, max_retries: int,
            on_wave: Callable[[int, list[Unit]], None] | None = None) -> dict[str, str | None]:
    """Run every unit in dependency order; returns {config_hash: error or None}."""
    ctx = {"db_url": db_url, "artifacts": str(Path(artifacts).resolve())}
    start_ray(address, Path(artifacts))
    done: dict[str, str | None] = {}
    names = {u.config_hash: u.trial_id for u in units}
    pending = list(units)
    wave = 0
    try:
        while pending:
            ready = [u for u in pending if all(d in done for d in u.deps)]
            blocked = [u for u in ready if any(done[d] is not None for d in u.deps)]
            for u in blocked:
                failed = next(d for d in u.deps if done[d] is not None)
                done[u.config_hash] = f"not run: {names.get(failed, failed[:10])}, which it needs, failed"
                record_failure(db_url, u.config_hash, done[u.config_hash])
            ready = [u for u in ready if u not in blocked]
            pending = [u for u in pending if u.config_hash not in done and u not in ready]
            if not ready:
                if blocked:
                    continue  # their dependents may be blocked now too
                if pending:
                    raise RuntimeError("the study's units have a dependency cycle")
                break
            # longest first: with more units than slots, a long teacher started last would leave
            # every other slot idle at the end of the stage
            ready.sort(key=lambda u: -float(u.estimate.get("seconds", 0.0)))
            wave += 1
            if on_wave:
                on_wave(wave, ready)
            done.update(run_wave(ready, ctx, max_concurrent=max_concurrent, max_retries=max_retries,
                                 name=f"wave{wave}"))
    finally:
        stop_ray()
    return done
