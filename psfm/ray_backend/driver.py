"""The distributed driver: the run loop (:mod:`psfm.runloop`) over :class:`RayBackend`, shard
and worker actors on Ray.

:func:`train_ray` connects to Ray (a local one started here when no address is given — the
embedded default — or ``--address``/``RAY_ADDRESS``) when the backend starts, which creates
``ps.shards`` shard actors (SPREAD) and ``train.workers`` worker actors. The backend hands work
units out from a queue (a slow worker never holds the day: whoever is free takes the next unit;
the last round, and a day of fewer units than workers, is cut into single row groups,
:func:`~psfm.data.parquet.split_tail`), lets one worker train the first-day warm-up units
alone, and checkpoints with each shard writing its
own file and the driver the manifest. ``ps.mode = "sync"`` with several workers runs barrier
steps: every worker takes its slice of the same global batch, the shards sum the workers'
gradients in worker order and apply one FTRL update.

A shard or worker that dies mid-day raises ``RayActorError`` / ``WorkerCrashedError``, which
:meth:`RayBackend.lost` names as a lost actor: the loop's failure policy then starts new
actors, restores every shard from the last complete checkpoint and replays the day, so each
row is applied once in the final model.

Live metrics (:mod:`psfm.ray_backend.metrics`, every one tagged ``run``): the workers add rows
and bytes per unit, and the backend sets the driver's gauges (samples/s and progressive AUC /
logloss of the current day; per day end the days done and each shard's keys and bytes; each
scored day's AUC / logloss) from the unit reports and day-end replies it hands the loop.
``ray.dashboard`` (``--dashboard``) starts the embedded Ray with its dashboard and metrics; with
metrics on, the embedded Ray is kept on 127.0.0.1 (:func:`connect`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
from ray.exceptions import GetTimeoutError, RayActorError, WorkerCrashedError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from psfm.backend import OnUnit, UnitReport
from psfm.checkpoint import read_bytes, resolve, write_bytes, write_manifest
from psfm.config import Config, to_dict
from psfm.data.parquet import UnitQueue, WorkUnit, split_tail
from psfm.errors import ConfigError, PsfmError
from psfm.memory import memory_report, process_memory
from psfm.metrics import MetricAccumulator
from psfm.ps.messages import ShardStats
from psfm.ray_backend.actors import ShardActor, WorkerActor
from psfm.ray_backend.liveness import check_local_ray, get, wait
from psfm.ray_backend.metrics import RunMetrics, new_run_tag, run_tag
from psfm.ray_backend.placement import bundles, check_placement
from psfm.ray_backend.reaper import ray_own_pss, start_reaper
from psfm.runloop import run

__all__ = [
    "train_ray",
    "connect",
    "connect_for",
    "RayBackend",
    "RayCluster",
    "LOCAL_SYSTEM_CONFIG",
    "ACTOR_ENV_VARS",
    "actor_environment",
]

log = logging.getLogger(__name__)


# Ray puts task arguments and results over 100 KB into the shared-memory object store (a
# create/seal/get round trip per object); a worker's push and pull messages are a few hundred
# KB, and passing them inline in the task RPC instead was about 10% faster end to end (FM(8),
# 2 shards + 2 workers). On one node the messages go through psfm's own shared-memory files
# (ps.transport = "auto"); this applies to ps.transport = "ray" and to messages between
# nodes. Set for the Ray that psfm starts itself; clusters set
# RAY_max_direct_call_object_size on their nodes (cluster/README.md).
# The embedded Ray exports no metrics unless ray.metrics or ray.dashboard: its exporter serves
# them without authentication, on every interface unless the node is kept on 127.0.0.1
# (measured: the dashboard agent on 0.0.0.0; _loopback_node); a cluster keeps its own setting.
LOCAL_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 << 20, "enable_metrics_collection": False}
# One thread per actor (torch and BLAS): actors are sized one per CPU. The embedded Ray's
# processes inherit them from the driver's environment (actor_environment); a runtime env
# that sets them was measured to add about 2 s to the start of a run's actors (its workers
# are started through the runtime env agent, none prestarted serves them).
ACTOR_ENV_VARS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOOPBACK = "127.0.0.1"
ACTORS_WAIT_LOG_S = 10.0  # a line every this many seconds while actors start


TOKEN_AUTH_SINCE = (2, 52)  # the first Ray with token authentication (RAY_AUTH_MODE)
TOKEN_AUTH_LOCAL_DEFAULT = (2, 59)  # the first that turns it on for a local ray.init()


def _ray_version() -> tuple[int, ...]:
    return tuple(int(p) for p in ray.__version__.split(".")[:2] if p.isdigit())


def check_local_ray_security() -> None:
    """The embedded Ray's processes listen on every interface of the machine (measured with
    ``ss -ltnp``: raylet, GCS and workers on ``*``, whatever ``_node_ip_address`` says), so
    it must refuse calls from others. Ray >= 2.59 starts a local Ray with token
    authentication (a random token in ``~/.ray/auth_token``, readable by the user only)
    unless ``RAY_AUTH_MODE`` says otherwise; anything less is warned about, with the fix."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() == "token":
        return
    if mode is not None:
        why = f"RAY_AUTH_MODE={mode}"
    elif _ray_version() < TOKEN_AUTH_LOCAL_DEFAULT:
        why = f"ray {ray.__version__} starts it without authentication"
    else:
        return
    log.warning(
        "%s: the local Ray psfm starts accepts calls from any host that reaches this machine. "
        "Set RAY_AUTH_MODE=token before starting psfm (ray >= %d.%d) or unset it (ray >= "
        "%d.%d turns token authentication on by itself).",
        why,
        *TOKEN_AUTH_SINCE,
        *TOKEN_AUTH_LOCAL_DEFAULT,
    )


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    metrics: bool = False,
    dashboard: bool = False,
) -> None:
    """Join a cluster (``address``, else ``RAY_ADDRESS``) or start an embedded local Ray with
    token authentication (:func:`check_local_ray_security`). ``metrics``: the embedded Ray
    collects and exports metrics; ``dashboard``: it also serves its dashboard, on 127.0.0.1
    (the URL is logged once). With either, the embedded Ray's node is kept on 127.0.0.1, so
    its metrics exporter, dashboard and agents listen there only (:func:`_loopback_node`)."""
    if ray.is_initialized():
        return
    t0 = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:  # a job's runtime env (working_dir, env vars) comes from the job itself
        log.info("joining the Ray cluster at %s ...", address)
        try:
            with _own_signal_handlers():
                ctx = ray.init(address=address, log_to_driver=True)
        except ConnectionError as e:
            raise PsfmError(
                f"Cannot reach the Ray cluster at {address!r} (--address / RAY_ADDRESS): {e}. "
                "Check that its head is running ('ray status') and the address is its GCS "
                "address (host:port)."
            ) from e
        if dashboard:
            log.info(
                "--dashboard: a cluster keeps its own dashboard and metrics settings (its "
                "dashboard: %s)",
                ctx.dashboard_url or "none",
            )
    else:
        check_local_ray_security()
        # Ray announces the token authentication it turns on for a local Ray at every start;
        # psfm's README explains it, so the notice goes to psfm's debug log, not the terminal
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            _token_notice_to_debug
        )
        cpus = num_cpus or os.cpu_count()
        log.info(
            "starting a local Ray (%s CPUs%s) ...",
            cpus,
            ", dashboard and metrics" if dashboard else ", metrics" if metrics else "",
        )
        with (
            _loopback_node(required=metrics or dashboard),
            _own_signal_handlers(),
            actor_environment(),
            _lean_head(not (metrics or dashboard)),
        ):
            ctx = ray.init(
                num_cpus=cpus,
                include_dashboard=dashboard,
                **({"dashboard_host": LOOPBACK} if dashboard else {}),
                _node_ip_address=LOOPBACK,
                log_to_driver=True,
                _system_config={
                    **LOCAL_SYSTEM_CONFIG,
                    "enable_metrics_collection": metrics or dashboard,
                },
            )
        private_token()
        start_reaper(ray._private.worker._global_node)  # its processes go when this one goes
        if dashboard:
            log.info(
                "Ray dashboard: http://%s (this machine only; it asks for the Ray token, "
                "~/.ray/auth_token)",
                ctx.dashboard_url,
            )
    log.info("Ray ready in %.1fs", time.perf_counter() - t0)


def connect_for(cfgs: Sequence[Config], address: str | None = None) -> None:
    """:func:`connect` for runs of ``cfgs``: an embedded Ray sized for the largest
    (:func:`local_cpus`), with metrics / dashboard when any of them asks."""
    connect(
        address,
        num_cpus=local_cpus(cfgs),
        metrics=any(c.ray.metrics for c in cfgs),
        dashboard=any(c.ray.dashboard for c in cfgs),
    )


@contextlib.contextmanager
def actor_environment() -> Iterator[None]:
    """:data:`ACTOR_ENV_VARS` in this process's environment while a local Ray starts: its
    raylet, and every worker process it starts, inherit them; this process's own environment
    is as it was afterwards (an in-process scoring pass after a run keeps its threads; a
    process another thread starts meanwhile inherits them too)."""
    saved = {k: os.environ.get(k) for k in ACTOR_ENV_VARS}
    os.environ.update(ACTOR_ENV_VARS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _lean_head(lean: bool) -> Iterator[None]:
    """Without ``lean``, nothing. With it, the embedded Ray starts without its API server
    (the dashboard's head: ``ray.init`` starts it in a minimal form even with
    ``include_dashboard=False``, for the job and state APIs an embedded run never calls, and
    waits for it: 1.8 s of a 4.8 s start, measured) and without the autoscaler's monitor (a
    one-node Ray psfm sized has nothing to scale); each is a Python process that imports Ray
    on the cores the run's actors start on (without the monitor, ``ray status`` on it has no
    autoscaler state to show; psfm checks placement itself). Ray's node starts them in two
    methods, made no-ops for the duration of the start; a Ray without them starts as it
    would."""
    from ray._private import node

    names = ("start_api_server", "start_monitor")
    originals = {n: getattr(node.Node, n, None) for n in names}
    if not lean or None in originals.values():
        yield
        return

    def skip(*args: Any, **kwargs: Any) -> None:
        return None

    for n in names:
        setattr(node.Node, n, skip)
    try:
        yield
    finally:
        for n, f in originals.items():
            setattr(node.Node, n, f)


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Keep the Python handlers of SIGTERM and SIGINT across ``ray.init``: Ray's core installs
    its own failure handler for SIGTERM, which aborts the process with a C++ stack dump
    (measured: ``ray job stop`` or ``kill`` of a study on Ray ended with exit 134), where
    psfm's CLI handler ends the command with one line and exit 130, its checkpoints kept."""
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if callable(handler):  # Ray replaced it below Python, where getsignal cannot see
                signal.signal(sig, handler)


@contextlib.contextmanager
def _loopback_node(required: bool) -> Iterator[None]:
    """Keep the node ``ray.init`` starts on 127.0.0.1. Ray 2.60 replaces a loopback
    ``_node_ip_address`` by the host's routable IP (``ray._private.services
    .resolve_ip_for_localhost``), and then its metrics exporter (the dashboard agent), the
    dashboard's and autoscaler's own metrics servers listen on 0.0.0.0 and serve without the
    token; with node IP 127.0.0.1 they, the agents and the gRPC servers bind 127.0.0.1 only
    (measured with ``ss -ltnp``; the same wrap as ``cluster/ray_node.py``, for the duration of
    the start). Done for every embedded Ray: without it Ray's autoscaler and dashboard (when
    they run: :func:`_lean_head`) serve their own metrics on 0.0.0.0 (measured: ports 44217
    and 44227). Where this Ray has no such
    function a run without metrics or dashboard goes on (its token still guards the gRPC
    servers) and one with them (``required``) is refused."""
    from ray._private import services

    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None and not required:
        log.info(
            "ray %s: cannot keep the local Ray on 127.0.0.1 (no "
            "ray._private.services.resolve_ip_for_localhost); its token guards it",
            ray.__version__,
        )
        yield
        return
    if original is None:
        raise PsfmError(
            f"ray {ray.__version__} has no ray._private.services.resolve_ip_for_localhost: psfm "
            "cannot keep the local Ray's metrics exporter and dashboard on 127.0.0.1. Run "
            "without --dashboard and with ray.metrics = false, or on a cluster (--address)."
        )

    def keep_loopback(host: str) -> str:
        assert original is not None
        return host if host == LOOPBACK else original(host)

    services.resolve_ip_for_localhost = keep_loopback
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def _token_notice_to_debug(record: logging.LogRecord) -> bool:
    if "Token authentication is enabled" in record.getMessage():
        log.debug("ray: %s", record.getMessage())
        return False
    return True


def private_token() -> None:
    """The token of the local Ray (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN_PATH``) readable
    by its owner only: Ray writes it with the umask's permissions (measured: world-readable),
    and anyone who reads it can run code in this user's Ray."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        st = os.stat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass  # no token file (auth off, or the token comes from RAY_AUTH_TOKEN)


def _wait_ready(pg: Any, spec: list[dict[str, float]]) -> None:
    """Wait until the placement group is placed, saying every half minute what it waits for
    (the cluster can hold it: :func:`check_placement` said so; other runs hold the room)."""
    t0 = time.perf_counter()
    while True:
        try:
            ray.get(pg.ready(), timeout=30)
            return
        except GetTimeoutError:
            check_local_ray()
            cpus = sum(b.get("CPU", 0.0) for b in spec)
            log.info(
                "waiting %.0fs for room for this run's %d actors (%g CPUs): other runs hold it",
                time.perf_counter() - t0,
                len(spec),
                cpus,
            )


def _wait_actors(refs: list) -> None:
    """Wait for the actors' first replies (their constructors have run), saying every
    ``ACTORS_WAIT_LOG_S`` how many are up."""
    t0, pending = time.perf_counter(), list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=ACTORS_WAIT_LOG_S)
        ray.get(done)  # an actor whose constructor failed raises here
        if pending:
            check_local_ray()
            log.info(
                "starting actors: %d of %d ready after %.0fs",
                len(refs) - len(pending),
                len(refs),
                time.perf_counter() - t0,
            )


def check_run_dir_reach(run_dir: str, cluster: RayCluster) -> None:
    """Every shard writes its checkpoint file into the run directory and the driver its
    manifest: a folder local to each node (a path on the head that workers' nodes do not
    share) would leave checkpoints no process can resume from. Each shard reads a file the
    driver writes there and writes one back; any that cannot is an error before training."""
    probe = posixpath.join(run_dir, f".psfm-reach-{cluster.run_id}")
    token = os.urandom(16)
    write_bytes(probe, token)
    try:
        problems = [p for p in get([s.reach.remote(probe, token) for s in cluster.shards]) if p]
        for i in range(len(cluster.shards) if not problems else 0):
            try:
                ok = read_bytes(f"{probe}.shard-{i}") == token
            except Exception:  # noqa: BLE001 - not there, or not readable: not shared
                ok = False
            if not ok:
                problems.append(f"shard {i} wrote its file where the driver cannot read it")
    finally:
        fs, p = resolve(run_dir)
        for info in fs.get_file_info(pafs.FileSelector(p)):
            if info.base_name.startswith(f".psfm-reach-{cluster.run_id}"):
                fs.delete_file(info.path)
    if problems:
        raise ConfigError(
            f"Run directory '{run_dir}' is not one folder for every process of the run: "
            f"{'; '.join(problems)}. A multi-node run needs a folder every node shares (a "
            "network file system) or a URI (s3://..., gs://...) for train.run_dir."
        )


def local_cpus(cfgs: Sequence[Config]) -> int:
    """The CPUs an embedded Ray gets for runs of ``cfgs``: the machine's, or what the largest
    run's actors ask for when that is more (a 1-shard + 2-worker run on 2 cores: 3; the
    actors then share the cores, as they would as processes)."""
    need = max(
        (c.ps.shards * c.ray.shard_cpus + c.train.workers * c.ray.worker_cpus for c in cfgs),
        default=0.0,
    )
    return max(os.cpu_count() or 1, int(need + 0.999))


class RayCluster:
    """The run's actors and the calls the driver makes on them; ``run``: the tag of their
    metrics (:mod:`psfm.ray_backend.metrics`)."""

    def __init__(self, cfg: Config, run: str = "") -> None:
        self.cfg = cfg
        t0 = time.perf_counter()
        res = ray.cluster_resources()
        shard_opts: dict[str, Any] = {
            "num_cpus": cfg.ray.shard_cpus,
            "scheduling_strategy": "SPREAD",
        }
        if "psfm_shard" in res:
            shard_opts["resources"] = {"psfm_shard": 0.01}
        worker_opts: dict[str, Any] = {
            "num_cpus": cfg.ray.worker_cpus,
            "scheduling_strategy": "SPREAD",
        }
        if "psfm_worker" in res:
            worker_opts["resources"] = {"psfm_worker": 0.01}
        if cfg.train.device == "cuda" or (cfg.train.device == "auto" and res.get("GPU", 0) > 0):
            worker_opts["num_gpus"] = 1
        # fail in seconds, not wait forever, when the actors cannot all be placed
        alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        gpus = float(worker_opts.get("num_gpus", 0))
        check_placement(cfg, alive, gpus)
        n, k = cfg.ps.shards, cfg.train.workers
        # Named (psfm-RUN-shard-i / -worker-w) so operators and tests can find them.
        self.run_id = uuid.uuid4().hex[:8]
        # All the run's actors or none: a placement group, so that runs sharing a cluster (a
        # study's concurrent runs) wait for room instead of each holding part of it.
        self.pg = None
        spec = bundles(cfg, gpus, {k: k in res for k in ("psfm_shard", "psfm_worker")})
        if spec is not None:
            self.pg = placement_group(spec, strategy="SPREAD", name=f"psfm-{self.run_id}")
            _wait_ready(self.pg, spec)
        at = self._bundle_strategy
        log.info("creating %d shard(s) + %d worker(s) ...", n, k)
        self.shards = [
            ShardActor.options(
                name=f"psfm-{self.run_id}-shard-{i}", **{**shard_opts, **at(i)}
            ).remote(cfg.model, cfg.ftrl, cfg.levels, cfg.train.seed, i, n)
            for i in range(n)
        ]
        conf = to_dict(cfg)
        self.workers = [
            WorkerActor.options(
                name=f"psfm-{self.run_id}-worker-{w}", **{**worker_opts, **at(n + w)}
            ).remote(conf, self.shards, w, k, run)
            for w in range(k)
        ]
        _wait_actors(
            [s.stats.remote() for s in self.shards] + [w.ping.remote() for w in self.workers]
        )
        log.info("actors ready in %.1fs", time.perf_counter() - t0)
        self.home: dict[str, int] = {}  # unit -> the worker that read it last (its pass cache)

    def _bundle_strategy(self, i: int) -> dict[str, Any]:
        if self.pg is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, i)}

    def kill(self) -> None:
        for a in self.shards + self.workers:
            ray.kill(a, no_restart=True)
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def on_shards(self, method: str, *args: Any) -> list:
        return get([getattr(s, method).remote(*args) for s in self.shards])

    def dispatch(
        self,
        units: Sequence[WorkUnit],
        method: str,
        args: tuple,
        on_result: Callable[[Any], None],
        workers: int | None = None,
    ) -> None:
        """Hand units to whichever worker is free, one ``ray.wait`` at a time. A free worker
        takes the next unit it read before (its pass cache may hold it), else the next unit
        nobody read, else the next one left: the first pass goes in order to whoever is
        free, later passes replay where the batches are. ``workers``: only the first this
        many take units (one: a warm-up, in order)."""
        n = len(self.workers) if workers is None else min(workers, len(self.workers))
        queue = UnitQueue(units, self.home, len(self.workers))
        pending: dict = {}

        def send(w: int) -> None:
            u = queue.take(w)
            if u is not None:
                # one line a unit (-v): where each unit went, and when (the fault tests key
                # their kills to these lines)
                log.debug("%s %s -> worker %d", method, u.uid, w)
                pending[getattr(self.workers[w], method).remote(u, *args)] = w

        for w in range(n):
            send(w)
        while pending:
            done, _ = wait(list(pending), num_returns=1)
            w = pending.pop(done[0])
            on_result(ray.get(done[0]))
            send(w)

    def prefetch(self, units: Sequence[WorkUnit]) -> None:
        """While worker 0 trains the warm-up alone, every other worker decodes into its pass
        cache the unit it will take first (the next units nobody read, in order) and is made
        its home, so :meth:`dispatch` hands it there: the warm-up's idle cores read and hash
        ahead, and the model is the same (the same batches in the same order). Not waited
        for: a worker takes its next call when its prefetch ends; a failure surfaces there."""
        if not (self.cfg.data.cache_mb or self.cfg.data.cache_disk_mb):
            return
        fresh = [u for u in units if u.uid not in self.home]
        for k, u in zip(range(1, len(self.workers)), fresh):
            log.debug("prefetch %s -> worker %d", u.uid, k)
            self.home[u.uid] = k
            self.workers[k].prefetch.remote(u)

    def sync_unit(self, unit: WorkUnit, reuse: bool) -> list[UnitReport]:
        """Barrier steps over one unit: all workers step, then all shards apply."""
        log.debug("sync %s -> %d workers", unit.uid, len(self.workers))
        get([w.begin_sync.remote(unit, reuse) for w in self.workers])
        while True:
            more = get([w.sync_step.remote() for w in self.workers])
            self.on_shards("apply_buffered")
            if not any(more):
                break
        return get([w.end_sync.remote() for w in self.workers])


class RayBackend:
    """The :class:`~psfm.runloop.Backend` of :func:`train_ray`: a :class:`RayCluster` made on
    :meth:`start` (connecting to Ray first) and killed on :meth:`close`. ``run``: the ``run``
    tag of the run's metrics, the run directory's name (else a random one), the same after a
    restart; the driver's gauges are set from the unit reports handed to the loop."""

    def __init__(self, cfg: Config, address: str | None = None) -> None:
        self.cfg, self.address = cfg, address
        self.workers = cfg.train.workers
        self.cluster: RayCluster | None = None
        self.run = run_tag(cfg.train.run_dir) or new_run_tag()
        self.metrics: RunMetrics | None = None
        self._train_cpu = 0.0  # the shards' CPU seconds in train() calls, over restarts

    def start(self) -> None:
        connect_for([self.cfg], self.address)
        if self.metrics is None:  # made once Ray is up
            self.metrics = RunMetrics(self.run)
        self.metrics.day.reset()  # a restarted backend replays the day
        self.metrics.start()
        self.cluster = RayCluster(self.cfg, self.run)
        if self.cfg.train.run_dir:
            check_run_dir_reach(self.cfg.train.run_dir, self.cluster)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.cluster is not None:
            self.cluster.kill()
            self.cluster = None

    def _live(self) -> RayCluster:
        assert self.cluster is not None, "start() first"
        return self.cluster

    def _gauges(self) -> RunMetrics:
        assert self.metrics is not None, "start() first"
        return self.metrics

    def lost(self, error: BaseException) -> str | None:
        check_local_ray()  # the local Ray itself gone: no restart can help
        if isinstance(error, WorkerCrashedError):
            return "a worker process crashed"
        if isinstance(error, RayActorError):
            return "an actor died"
        return None

    def count(
        self,
        units: Sequence[WorkUnit],
        reuse: bool = False,
        on_rows: Callable[[int], None] | None = None,
    ) -> int:
        rows = [0]

        def heard(r: int) -> None:
            rows[0] += r
            if on_rows is not None:
                on_rows(r)

        c = self._live()
        if self.cfg.ps.mode == "sync" and len(c.workers) > 1:
            reuse = False  # synchronous steps read slices of units, not the units counted
        c.dispatch(
            split_tail(list(units), len(c.workers)),
            "count_unit",
            (reuse,),
            heard,
        )
        return rows[0]

    def finish_counts(self) -> dict[str, int]:
        infos = self._live().on_shards("finish_counts")
        return {k: sum(i[k] for i in infos) for k in infos[0]}

    def train(
        self, units: Sequence[WorkUnit], warmup: int, on_unit: OnUnit, reuse: bool = False
    ) -> None:
        """Barrier steps (sync mode, several workers), or units from a queue with the first
        ``warmup`` of them trained by one worker alone (FTRL's first steps from an empty
        model are large; several workers taking them on stale weights made the AUC depend
        on timing)."""
        c, gauges = self._live(), self._gauges()

        def heard(r: UnitReport) -> None:
            on_unit(r)
            gauges.train_unit(r)

        cpu0 = sum(c.on_shards("cpu_seconds"))
        if self.cfg.ps.mode == "sync" and len(c.workers) > 1:
            for u in units:
                for r in c.sync_unit(u, reuse):
                    heard(r)
        else:
            # cut first, then warm up: a small day (one unit) is cut into row groups, so its
            # warm-up is one row group and the workers share the rest
            units = split_tail(list(units), len(c.workers))
            w = min(warmup, len(units) - 1) if len(c.workers) > 1 else 0
            if w > 0:  # one worker, in order; the others meanwhile decode their first unit
                c.prefetch(units[w:])
                c.dispatch(units[:w], "run_unit", (True, False, reuse), heard, workers=1)
            c.dispatch(units[w:], "run_unit", (True, False, reuse), heard)
        self._train_cpu += sum(c.on_shards("cpu_seconds")) - cpu0

    def evaluate(
        self,
        units: Sequence[WorkUnit],
        keep_predictions: bool,
        on_unit: OnUnit,
        reuse: bool = False,
    ) -> None:
        """Score ``units``; each of their days' AUC and logloss go to the gauges at the end."""
        c = self._live()
        units = split_tail(list(units), len(c.workers))
        day_of = {u.uid: u.day for u in units}
        days: dict[str, MetricAccumulator] = {}

        def heard(r: UnitReport) -> None:
            on_unit(r)
            if r.acc_state is not None:
                acc = days.setdefault(day_of[r.unit], MetricAccumulator())
                acc.merge(MetricAccumulator.from_state(r.acc_state))

        c.dispatch(units, "run_unit", (False, keep_predictions, reuse), heard)
        self._gauges().scored(days)

    def end_day(self, days_done: int) -> dict[str, int]:
        infos = self._live().on_shards("end_day", days_done)
        self._gauges().end_day(days_done, infos)
        return {k: sum(int(i[k]) for i in infos) for k in ("keys", "evicted")}

    def checkpoint(self, ckpt_dir: str, meta: dict[str, Any]) -> None:
        shards = self._live().shards
        infos = get(
            [s.save_state.remote(f"{ckpt_dir}/shard-{i:05d}.npz") for i, s in enumerate(shards)]
        )
        write_manifest(ckpt_dir, {f"shard-{i:05d}.npz": inf for i, inf in enumerate(infos)}, meta)

    def restore(self, states: list[dict[str, np.ndarray]]) -> None:
        get([s.restore.remote(st) for s, st in zip(self._live().shards, states)])

    def snapshot(self) -> list[dict[str, np.ndarray]]:
        """Every shard's state, fetched into the driver (early stopping without a run
        directory keeps the best pass's model in memory this way; with one, it stays in the
        checkpoint the shards wrote)."""
        return self._live().on_shards("snapshot")

    def train_cpu(self) -> float | None:
        return self._train_cpu

    def memory(self) -> dict[str, Any] | None:
        c = self._live()
        try:  # one wait for every actor's answer
            every = get([a.memory.remote() for a in c.shards + c.workers])
        except Exception as e:  # a figure of the report: never the end of a finished run
            log.warning("the memory of the run's processes was not measured: %s", e)
            return None
        shards, workers = every[: len(c.shards)], every[len(c.shards) :]
        actors = {m["pid"] for m in every}
        return memory_report(process_memory(), workers, shards, ray_own_pss(actors))

    def stats(self) -> ShardStats:
        return ShardStats.merge(self._live().on_shards("stats"))


def train_ray(cfg: Config, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Train and evaluate on Ray; returns the report (also written to the run dir)."""
    return run(cfg, lambda c: RayBackend(c, address), resume=resume)
