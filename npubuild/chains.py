"""Independent chains of stages, run here or on a Ray cluster.

A chain is an ordered list of stages run on one worker, one after another; different chains may
run at once. Candidates share stages (the data, the FP32 model, a prune step shared by every recipe
that starts by pruning with the same settings): `plan_chains` gives each stage to exactly one chain,
the first candidate's that needs it, so no two workers ever write one artifact. A chain waits for the
(older) chains owning the stages it reads from, so the plan has no cycle. The wait is for the whole
owning chain (coarse: a few seconds of Vela and scoring), which keeps one chain one task.

On Ray, each chain is one task; the tasks of the chains it waits for are its arguments (Ray starts
it when they are done). A worker rebuilds the stages from plain data (model, profile, candidates,
targets) and runs them through its own `Cache` on the shared project folder: stamps are written
last, so a stage a dead worker left half-done is not up to date and simply reruns when Ray retries
the task. Assumption: the workers see the project folder at the same path (a shared filesystem),
with the same Python environment (same TF, tfmot, Vela versions: they are part of every stage key).

The candidates of `invoke fit` (and the recipes of `invoke compare --ray`) run as such chains
(`run_candidates`), here or on the cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from npubuild.errors import BuildError
from npubuild.stages import CODE_ROOT, StageResult


@dataclass
class Chain:
    stamps: list = field(default_factory=list)  # the stages' stamp paths, in order
    waits: set = field(default_factory=set)  # indexes of the chains it reads from


def plan_chains(per_candidate: list[list]) -> list[Chain]:
    """One chain per candidate (each candidate's stage list in running order): the stages no earlier
    candidate has, in order; it waits for the chains that own the stages it reads from."""
    chains: list[Chain] = []
    chain_of: dict = {}  # stamp -> chain index
    made_by: dict = {}  # output path -> stamp of the stage that writes it
    for stages in per_candidate:
        chain, index = Chain(), len(chains)
        for stage in stages:
            if stage.stamp in chain_of:
                continue
            chain.waits |= {chain_of[made_by[p]] for p in stage.inputs if p in made_by} - {index}
            chain.stamps.append(stage.stamp)
            chain_of[stage.stamp] = index
            for out in stage.outputs:
                if out in made_by:
                    raise BuildError(f"{out}: written by two stages ({made_by[out].name} and {stage.stamp.name})")
                made_by[out] = stage.stamp
        if chain.stamps:
            chains.append(chain)
    return chains


def run_in_order(cache, stages) -> None:
    """Run `stages` through `cache`, each with Keras's automatic layer names counted from zero (a Keras
    file records names such as `quantize_layer_4`, numbered by what the process built before: without
    this, the same stage writes other bytes on a worker that ran other chains first)."""
    import sys

    for stage in stages:
        if "tf_keras" in sys.modules:
            sys.modules["tf_keras"].backend.clear_session()
        cache.run(stage)


def connect(address: str) -> None:
    """Join the Ray cluster at `address`; its workers import this package from where this process does."""
    try:
        import ray
    except ImportError:
        raise BuildError("--ray needs Ray: pip install 'npubuild[ray]'") from None
    if ray.is_initialized():
        return
    code = str(CODE_ROOT.parent)
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False,
             logging_level="ERROR")


def run_chains_on_ray(address: str, cache, chains: list[Chain], job: dict, worker) -> list[StageResult]:
    """One Ray task per chain, each after the chains it waits for; results and logs in chain order.
    `worker(job, stamps)` (a module-level function: Ray sends it by name) rebuilds the stages from `job`
    and runs those of `stamps` in order, returning ([(name, ran, reason, seconds)], log lines)."""
    import ray

    connect(address)

    @ray.remote(num_cpus=1, max_retries=3)
    def run_chain(job, stamps, *_waited):
        return worker(job, stamps)

    refs: list = []
    for chain in chains:
        refs.append(run_chain.remote(job, [str(s) for s in chain.stamps], *(refs[i] for i in sorted(chain.waits))))
    results = []
    for ref in refs:
        try:
            rows, lines = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # a stage failed on a worker: its one-line error here
            if isinstance(getattr(e, "cause", None), BuildError):
                raise e.cause from None
            raise
        for line in lines:
            cache.log(line)
        for name, ran, reason, seconds in rows:
            results.append(StageResult(name, ran, reason, seconds))
    cache.results.extend(results)
    return results


# --------------------------------------------------------------------------- candidates as chains


def ray_address(given: str | None) -> str | None:
    """--ray ADDRESS, else $RAY_ADDRESS; None: run locally."""
    return given or os.environ.get("RAY_ADDRESS") or None


def stages_for(root: Path, build_dir: Path, model: str, profile: str, specs: list[dict], targets: list[str],
               validate: bool, log: Callable[[str], None] = print) -> list[list]:
    """Every candidate's stage list, rebuilt from plain data (what a Ray worker receives)."""
    from npubuild import pipeline
    from npubuild.candidates import Candidate, candidate_stages
    from npubuild.config import resolve_models, resolve_targets

    recipe = resolve_models(root, model)[0]
    tgts = [resolve_targets(root, t)[0] for t in targets]
    base = build_dir / profile / recipe.name / pipeline.dataset_id(None)
    return [candidate_stages(recipe, profile, None, base, Candidate.from_spec(s), tgts, validate, log) for s in specs]


def run_candidates(cache, layout, model: str, profile: str, specs: list[dict], targets: list[str],
                   validate: bool, ray: str | None) -> None:
    """Run every candidate's stages: in this process, chain after chain, or on a Ray cluster."""
    per_candidate = stages_for(layout.root, layout.build_dir, model, profile, specs, targets, validate, cache.log)
    chains = plan_chains(per_candidate)
    address = ray_address(ray)
    if address is None:
        by_stamp = {s.stamp: s for stages in per_candidate for s in stages}
        for chain in chains:
            run_in_order(cache, [by_stamp[stamp] for stamp in chain.stamps])
        return
    job = {"root": str(layout.root), "build_dir": str(layout.build_dir), "model": model, "profile": profile,
           "specs": specs, "targets": targets, "validate": validate}
    run_chains_on_ray(address, cache, chains, job, run_chain_job)


def compare_on_ray(ray: str | None):
    """For `pipeline.compare(run_models=...)`: each recipe's stages (the build's own) as chains on the Ray
    cluster at `ray` / $RAY_ADDRESS; None when there is none (compare then runs them itself)."""
    from npubuild.candidates import Candidate
    from npubuild.pipeline import ModelPaths, dataset_id

    if ray_address(ray) is None:
        return None

    def run_models(cache, layout, recipe, profile, techniques, targets):
        run_candidates(cache, layout, recipe.name, profile, [Candidate(t).to_spec() for t in techniques],
                       [t.name for t in targets], validate=False, ray=ray)
        return ModelPaths(layout.build_dir / profile / recipe.name / dataset_id(None), recipe.name)

    return run_models


def run_chain_job(job: dict, stamps: list[str]) -> tuple[list[tuple], list[str]]:
    """What a worker does: rebuild the stages, run those of its chain in order through a Cache."""
    from npubuild.stages import Cache

    lines: list[str] = []
    root = Path(job["root"])
    per_candidate = stages_for(root, Path(job["build_dir"]), job["model"], job["profile"], job["specs"],
                               job["targets"], job["validate"], lines.append)
    by_stamp = {str(s.stamp): s for stages in per_candidate for s in stages}
    cache = Cache(root, lines.append)
    run_in_order(cache, [by_stamp[stamp] for stamp in stamps])
    return [(r.name, r.ran, r.reason, r.seconds) for r in cache.results], lines
