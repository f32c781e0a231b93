"""The speech engines of the built-in keyword data, behind one call: `Engines.say(spec)`.

A voice is named `<engine>:<voice>`, or plainly by its eSpeak NG name ("en-us+m3"):

- eSpeak NG (in-process, `espeak.py`): formant voices, many accents and variants. GPL-3.
- Flite (Debian package `flite`, a subprocess per word): `kal16` (diphone) and `awb`, `rms`, `slt`
  (clustergen statistical voices built from CMU ARCTIC recordings of real people). BSD-style licence.
- Festival (Debian packages `festival`, `festvox-kdlpc16k`): `ked` (diphone, a US male speaker). Festival
  is free software under a BSD-style licence; the kdlpc16k voice is free for any use.

Every engine is deterministic: the same word, voice and prosody give the same samples, so the
dataset stays a function of the seed. Flite and Festival are found on PATH; a missing one is a
one-line error naming the package.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError

ESPEAK, FLITE, FESTIVAL = "espeak", "flite", "festival"
ENGINES = (ESPEAK, FLITE, FESTIVAL)
# Debian package per engine run as a program (eSpeak NG comes with the Python package espeakng-loader).
PACKAGES = {FLITE: "flite", FESTIVAL: "festival festvox-kdlpc16k"}
# Typical fundamental frequency (Hz) of each Flite voice, around which a clip's pitch is drawn
# (`rms` ignores the f0 setting: its pitch varies by the clip's later perturbation only).
FLITE_F0 = {"kal16": 105.0, "awb": 115.0, "rms": 110.0, "slt": 175.0}
FESTIVAL_VOICES = {"ked": "voice_ked_diphone"}


def engine_of(voice: str) -> str:
    """The engine of a voice name: the part before ':' (eSpeak NG names have none)."""
    return voice.split(":", 1)[0] if ":" in voice else ESPEAK


def stretch_of(rate_wpm: int) -> float:
    """Duration stretch for a clip's speaking rate (eSpeak's words per minute; 140 is 1.0)."""
    return float(np.clip(140.0 / rate_wpm, 0.75, 1.5))


def require(engine: str) -> str:
    """The engine's program, or a one-line error saying which Debian package brings it."""
    program = {FLITE: "flite", FESTIVAL: "festival"}[engine]
    path = shutil.which(program)
    if path is None:
        raise BuildError(f"{program}: not found on PATH; the built-in keyword data needs it "
                         f"(apt-get install {PACKAGES[engine]})")
    return path


@functools.cache
def version(engine: str) -> str:
    """The engine's version, for the data stage's key (asked once per process)."""
    if engine == ESPEAK:
        from importlib.metadata import version as pkg_version

        return pkg_version("espeakng-loader")
    program = require(engine)
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    import re

    found = next((m.group(0) for line in lines if (m := re.search(r"\d+\.\d+(\.\d+)?", line))), None)
    return f"{engine} {found}" if found else "unknown"


def program_versions() -> dict[str, str]:
    """Versions of the engines run as programs (Flite, Festival): part of the keys of the stages that
    synthesise speech (the data stage, the detector's tuning)."""
    return {e: version(e) for e in (FLITE, FESTIVAL)}


def _read(path: Path) -> tuple[int, np.ndarray]:
    import scipy.io.wavfile

    rate, data = scipy.io.wavfile.read(path)
    return int(rate), data.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class Say:
    """One utterance: text, a voice name, prosody."""

    text: str
    voice: str
    rate_wpm: int
    pitch: int  # 0..99, 50 the voice's own
    pitch_range: int
    seed: int


class Engines:
    """Synthesises utterances with whichever engine a voice belongs to; one per process (eSpeak NG
    keeps global state)."""

    def __init__(self) -> None:
        self._espeak = None
        self._tmp = tempfile.TemporaryDirectory(prefix="npubuild-tts-")

    def close(self) -> None:
        self._tmp.cleanup()

    def say(self, item: Say) -> tuple[int, np.ndarray]:
        """(sample rate, float32 samples in [-1, 1])."""
        engine = engine_of(item.voice)
        if engine == ESPEAK:
            return self._say_espeak(item)
        if engine == FLITE:
            return self._say_flite(item)
        return self.say_festival([item])[0]

    def _say_espeak(self, item: Say) -> tuple[int, np.ndarray]:
        from npubuild.kinds.kws.espeak import Synthesizer, Voice

        if self._espeak is None:
            self._espeak = Synthesizer()
        audio = self._espeak.say(item.text, Voice(item.voice, item.rate_wpm, item.pitch, item.pitch_range), item.seed)
        return self._espeak.sample_rate, audio

    def _say_flite(self, item: Say) -> tuple[int, np.ndarray]:
        voice = item.voice.split(":", 1)[1]
        if voice not in FLITE_F0:
            raise BuildError(f"flite: no voice {voice!r} (have {', '.join(FLITE_F0)})")
        out = Path(self._tmp.name) / "flite.wav"
        f0 = FLITE_F0[voice] * 2 ** ((item.pitch - 50) / 66)  # +-3/4 octave over pitch 0..99: male voices reach
        # a typical female f0 (about 190 Hz from 110 Hz)
        cmd = [require(FLITE), "-voice", voice, "--setf", f"duration_stretch={stretch_of(item.rate_wpm):.4f}",
               "--setf", f"int_f0_target_mean={f0:.2f}", "-t", item.text, "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise BuildError(f"flite: failed to synthesise {item.text!r} with {voice} ({done.stderr.strip()[:200]})")
        return _read(out)

    def say_festival(self, items: list[Say]) -> list[tuple[int, np.ndarray]]:
        """Many utterances in one Festival process (it takes a quarter of a second to start)."""
        if not items:
            return []
        folder = Path(self._tmp.name)
        lines = []
        for i, item in enumerate(items):
            voice = item.voice.split(":", 1)[1]
            if voice not in FESTIVAL_VOICES:
                raise BuildError(f"festival: no voice {voice!r} (have {', '.join(FESTIVAL_VOICES)})")
            text = item.text.replace("\\", " ").replace('"', " ")
            lines += [f"({FESTIVAL_VOICES[voice]})",
                      f"(Parameter.set 'Duration_Stretch {stretch_of(item.rate_wpm):.4f})",
                      f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{folder / f"fest{i}.wav"}" \'riff)']
        script = folder / "say.scm"
        script.write_text("\n".join(lines) + "\n")
        done = subprocess.run([require(FESTIVAL), "--batch", str(script)], capture_output=True, text=True,
                              check=False)
        out = []
        for i, item in enumerate(items):
            wav = folder / f"fest{i}.wav"
            if done.returncode != 0 or not wav.is_file():
                raise BuildError(f"festival: failed to synthesise {item.text!r} ({done.stderr.strip()[:200]})")
            out.append(_read(wav))
            wav.unlink()
        return out
