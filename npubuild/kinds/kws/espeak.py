"""eSpeak NG speech synthesis in-process, through the library bundled by espeakng-loader.

Synthesis is synchronous with a callback that collects 16-bit samples, so
no audio device and no subprocess are involved. eSpeak keeps global state:
use one synthesizer per process.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
# espeak_PARAMETER values
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """One way of speaking: an eSpeak voice name with a variant, plus prosody."""

    name: str  # e.g. "en-us+m3"
    rate_wpm: int
    pitch: int  # 0..99
    pitch_range: int  # 0..99
    volume: int = 100


class Synthesizer:
    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
        # The bundled data folder is found through the path argument; the
        # environment variable covers builds that read it instead.
        os.environ.setdefault("ESPEAK_DATA_PATH", str(data_path))
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"{data_path}: eSpeak NG failed to initialise (code {rate})")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self._lib.espeak_Synchronize.argtypes = []
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

    def say(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """Return the utterance as float32 samples in [-1, 1] at `self.sample_rate`.

        Variants with breath noise (e.g. `f2`, `Alicia`) draw from eSpeak NG's own
        random generator, which it seeds from the clock: `seed` reseeds it for
        every utterance, so the noise is a function of `seed`. eSpeak NG keeps
        state from one utterance to the next (even across
        espeak_Terminate/espeak_Initialize), so an utterance depends on what
        this process said before it: for reproducible audio, synthesise a fixed
        sequence in a fresh process.
        """
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
        for param, value in ((_RATE, voice.rate_wpm), (_PITCH, voice.pitch),
                             (_RANGE, voice.pitch_range), (_VOLUME, voice.volume)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        data = text.encode() + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self._lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"eSpeak NG failed to synthesise {text!r} (code {err})")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, np.float32)
        return (np.concatenate(self._chunks).astype(np.float32) / 32768.0)
