"""`invoke listen`: detect keywords in a recording with the shipped INT8 model, streaming, as firmware
does (`detector.Detector`: streaming MFCC, the reference kernels, averaging, int8 threshold, refractory
period), with the settings the build's detector stage tuned; and its timeline chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from npubuild.config import DETECTOR_FIELDS, DetectorSettings, Recipe, detector_problem
from npubuild.errors import BuildError
from npubuild.kinds.kws.detector import (  # noqa: F401 (the streaming pieces, also used from here)
    Decider,
    Detection,
    Detector,
    KwsModel,
    StreamingMfcc,
    detector_json,
    noise_segments,
    threshold_q,
    tuned_settings,
)

# --------------------------------------------------------------------------- the timeline chart


def plot_timeline(times: np.ndarray, scores: np.ndarray, keywords: Sequence[str], threshold: float,
                  detections: Sequence[Detection], path: Path, title: str = "") -> None:
    """PNG of the averaged keyword scores over time, the threshold, and the detections (deterministic:
    no timestamp or software version in the file)."""
    from npubuild.charts import pyplot, save_png

    plt = pyplot()

    palette = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    for k, word in enumerate(keywords):
        ax.plot(times, scores[:, k] if len(scores) else [], color=palette[k % len(palette)], linewidth=1,
                label=word)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for d in detections:
        colour = palette[list(keywords).index(d.word) % len(palette)]
        ax.plot([d.time_s], [d.score], marker="v", color=colour, markersize=8, markeredgecolor="black")
        ax.annotate(d.word, (d.time_s, d.score), textcoords="offset points", xytext=(0, 8), ha="center",
                    fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, max(float(times[-1]) if len(times) else 1.0, 1.0))
    ax.set_xlabel("time (s, end of the 1 s window)")
    ax.set_ylabel("averaged posterior")
    ax.set_title(title or f"{len(detections)} detection{'s' if len(detections) != 1 else ''}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save_png(fig, path)


# --------------------------------------------------------------------------- invoke listen


@dataclass
class ListenResult:
    wav: Path
    seconds: float
    model_file: Path
    technique: str
    settings: DetectorSettings
    detections: list[Detection]
    windows: int
    target: str | None = None
    inference_ms: float | None = None  # Vela's estimate on the target, when compiled for it
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What `invoke listen` prints: a header, one line per detection, a footer."""
        s = self.settings
        out = [f"{self.wav}: {self.seconds:.2f} s; model {self.model_file} ({self.technique}); "
               f"every {s.stride_ms} ms, average of {s.average_windows} window(s), threshold {s.threshold:g}, "
               f"refractory {s.refractory_ms} ms"]
        if self.inference_ms is not None:
            out.append(f"on {self.target}: {self.inference_ms:.3f} ms per inference (Vela estimate), "
                       f"one every {s.stride_ms} ms")
        out += self.notes
        out += [f"{d.time_s:9.3f} s  {d.word:<8} {d.score:.3f}" for d in self.detections]
        out.append(f"{len(self.detections)} detection(s) in {self.windows} windows "
                   f"(time: end of the window at which the averaged score reached the threshold)")
        return out


def resolve_settings(recipe: Recipe, tuned: DetectorSettings | None = None, **overrides) -> DetectorSettings:
    """The build's tuned detector settings with the options given (None: keep; strings as typed on the
    command line), checked like the recipe."""
    kinds = {f.name: float if f.type == "float" else int for f in fields(DetectorSettings)}
    given = {}
    for name, value in overrides.items():
        if value is None:
            continue
        try:
            given[name] = kinds[name](value)
        except ValueError:
            raise BuildError(f"--{name.replace('_', '-')}: expected a number, got {value!r}") from None
    if tuned is None:
        missing = [f for f in DETECTOR_FIELDS if f not in given]
        if missing:
            raise BuildError(f"{recipe.source}: no [detector] table; give --{missing[0].replace('_', '-')}")
        settings = DetectorSettings(**given)
    else:
        settings = replace(tuned, **given)
    problem = detector_problem(settings, recipe.frontend)
    if problem:
        raise BuildError(f"--{problem[0].replace('_', '-')} {problem[1]}")
    return settings


def listen(root: Path, wav: Path, *, model: str = "kws", profile: str = "default", target: str | None = None,
           stride_ms: int | str | None = None, average_windows: int | str | None = None,
           threshold: float | str | None = None, refractory_ms: int | str | None = None, plot: Path | None = None,
           build_dir: Path | None = None, block_ms: int = 100) -> ListenResult:
    """Run the shipped model of `profile` over a WAV file as firmware would, `block_ms` of audio at a time.

    WAV policy (`audio.read_wav`): stereo is averaged, other rates are resampled to the front end's."""
    import warnings

    import scipy.io.wavfile

    from npubuild.config import resolve_models, resolve_targets
    from npubuild.kinds.kws.audio import read_wav
    from npubuild.pipeline import shipped_paths

    recipe = resolve_models(root, model)[0]
    if recipe.kind != "keyword_spotting":
        raise BuildError(f"{recipe.source}: listen is for keyword spotting; {recipe.name} is {recipe.kind}")
    fe = recipe.frontend
    overrides = {"stride_ms": stride_ms, "average_windows": average_windows, "threshold": threshold,
                 "refractory_ms": refractory_ms}
    some_stride = 1000 * fe.stride_samples // fe.sample_rate
    resolve_settings(recipe, DetectorSettings(some_stride, 1, 0.5, 0), **overrides)  # bad options first
    with warnings.catch_warnings():  # scipy warns about chunks it skips; an unreadable file is one error line
        warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
        audio = read_wav(Path(wav), fe.sample_rate)
    paths = shipped_paths(root, recipe, profile, build_dir)
    tuned = tuned_settings(detector_json(paths, recipe.ship)) if recipe.detector is not None else None
    settings = resolve_settings(recipe, tuned, **overrides)
    int8 = paths.int8(recipe.ship)
    detector = Detector(KwsModel.from_build(int8, paths.features, recipe.labels), settings, fe)
    block = max(1, block_ms * fe.sample_rate // 1000)
    for start in range(0, len(audio), block):
        detector.push(audio[start:start + block])
    result = ListenResult(wav=Path(wav), seconds=len(audio) / fe.sample_rate, model_file=int8,
                          technique=recipe.ship, settings=settings, detections=detector.detections,
                          windows=len(detector.times))
    if len(audio) < fe.clip_samples:
        result.notes.append(f"shorter than one window ({fe.clip_samples / fe.sample_rate:g} s): nothing to run")
    if target is not None:
        from npubuild import vela

        tgt = resolve_targets(Path(root), target)[0]
        out = vela.VelaOutputs(paths.vela_dir(recipe.ship, tgt.name), recipe.name)
        result.target = tgt.name
        if out.summary.is_file():
            result.inference_ms = vela.read_vela_figures(out)["inference_ms"]
        else:
            result.notes.append(f"not compiled for {tgt.name} yet: no Vela estimate")
    if plot is not None:
        plot_timeline(detector.times, detector.scores, detector.decider.keywords, settings.threshold,
                      detector.detections, Path(plot), title=f"{Path(wav).name}: {recipe.name} ({recipe.ship})")
    return result


