"""Keyword streams at the pace people speak (`kinds/kws/streams.py`): speech spans, composition, and how
detections are matched to words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from npubuild.config import load_recipe
from npubuild.kinds.kws import real_streams, streams
from npubuild.kinds.kws.streams import Placement

from .conftest import ROOT

RECIPE = load_recipe(ROOT / "models" / "kws.toml")
LABELS = RECIPE.labels
SR = 16000
SPEECH_DEV = ROOT.parent / "shared" / "data" / "speech-dev"


@dataclass
class D:
    word: str
    time_s: float


def test_speech_span_finds_the_loud_part_with_a_margin():
    clip = np.zeros(SR, np.float32)
    clip[4000:8960] = 0.5 * np.sin(np.arange(4960) / 3.0)  # on 10 ms frame edges
    clip += 1e-4  # a floor far below the word
    start, end = streams.speech_span(clip, SR)
    margin = int(streams.SPAN_MARGIN_S * SR)
    assert start == 4000 - margin and end == 8960 + margin
    assert streams.speech_span(np.zeros(SR, np.float32), SR) == (0, SR)  # silent: the whole clip
    assert len(streams.cut_to_speech(clip, SR)) == end - start


def test_compose_places_words_with_gaps_in_range_over_the_bed():
    rng = np.random.default_rng(3)
    words = [np.full(n, 0.25, np.float32) for n in (3000, 5000, 4000)]
    bed = rng.standard_normal(SR).astype(np.float32)
    audio, placed = streams.compose(words, [2, 3, 4], bed, rng, SR, gaps_s=(0.3, 1.0), bed_db=(-40.0, -40.0))
    assert [p.length for p in placed] == [3000, 5000, 4000] and [p.label for p in placed] == [2, 3, 4]
    assert placed[0].start == SR  # lead of 1 s
    for a, b in zip(placed, placed[1:], strict=False):
        gap = (b.start - a.start - a.length) / SR
        assert 0.3 <= gap <= 1.0
    assert len(audio) == placed[-1].start + placed[-1].length + 2 * SR  # tail of 2 s
    bed_only = audio[:placed[0].start]
    assert np.sqrt(np.mean(bed_only**2)) == pytest.approx(0.01, rel=0.2)  # -40 dBFS
    assert np.all(audio[placed[1].start:placed[1].start + 5000] > 0.2)  # the word is in


def test_match_counts_hits_in_order_wrong_words_repeats_and_strays():
    yes, no, unknown = LABELS.index("yes"), LABELS.index("no"), LABELS.index("_unknown_")
    placed = [Placement(16000, 8000, yes), Placement(30000, 8000, no), Placement(44000, 8000, unknown),
              Placement(80000, 8000, yes)]
    found = [D("yes", 1.6),  # yes, inside its word's window
             D("yes", 1.7),  # a repeat of it
             D("no", 2.5),  # no (its window is open; yes's too)
             D("left", 2.9),  # another keyword while no's window is open: a wrong word
             D("up", 3.45),  # only the unknown word's window is open
             D("go", 4.5)]  # between words: stray
    c = streams.match_detections(found, placed, LABELS, SR, tolerance_s=1.0)
    assert (c["keywords"], c["detected"], c["in_order"]) == (3, 2, 2)
    assert (c["repeats"], c["wrong_word"], c["on_unknown_words"], c["stray"]) == (1, 1, 1, 1)
    assert c["delays_s"] == pytest.approx([1.6 - 1.5, 2.5 - 38000 / SR])


def test_overlapping_windows_give_each_word_its_own_detection_and_order_counts():
    go = LABELS.index("go")
    placed = [Placement(16000, 6000, go), Placement(27000, 6000, go)]  # the same word 0.3 s apart
    late_first = [D("go", 1.8), D("go", 2.2)]
    c = streams.match_detections(late_first, placed, LABELS, SR, tolerance_s=1.0)
    assert (c["detected"], c["in_order"], c["repeats"]) == (2, 2, 0)
    # a detection of the second word before the first's: both detected, one in order
    stop, down = LABELS.index("stop"), LABELS.index("down")
    placed = [Placement(16000, 6000, stop), Placement(27000, 6000, down)]
    c = streams.match_detections([D("down", 2.0), D("stop", 2.1)], placed, LABELS, SR, tolerance_s=1.0)
    assert (c["detected"], c["in_order"]) == (2, 1)
    assert streams.sum_counts([c, c])["detected"] == 4


@pytest.mark.skipif(not SPEECH_DEV.is_dir(), reason="the real development set is not on this machine")
def test_folder_streams_from_real_recordings_keep_speakers_together():
    s = real_streams.folder_streams(RECIPE, SPEECH_DEV, seed=1)
    words = sum(1 for stream in s.streams for _, label in stream if not LABELS[label].startswith("_"))
    keyword_files = sum(len(list((SPEECH_DEV / k).glob("*.wav"))) for k in RECIPE.keywords)
    assert words == s.same_speaker_words + s.mixed_words == keyword_files
    assert s.same_speaker_words > s.mixed_words and s.unknown_words > 0 and s.noise
    lengths = [len(w) for stream in s.streams for w, _ in stream]
    assert max(lengths) <= SR and np.median(lengths) < 0.7 * SR  # cut to the speech


def test_folder_streams_name_a_folder_without_keywords(tmp_path: Path):
    from npubuild.errors import BuildError

    (tmp_path / "_silence_").mkdir()
    with pytest.raises(BuildError, match=f"^{tmp_path}: no keyword clips"):
        real_streams.folder_streams(RECIPE, tmp_path)


def test_detector_tunes_on_a_folders_own_noise_but_never_its_test_silence(tmp_path: Path):
    """A --data-dir build's detector stage tunes on the folder's background recordings and its
    non-test `_silence_/` clips (generated noise never sets the model off as real noise does);
    a folder without any falls back to generated noise."""
    from npubuild.kinds.kws.detector import tuning_noise
    from npubuild.kinds.kws.recordings import background_noise

    from .test_kws_data import write_wav

    rng = np.random.default_rng(3)
    write_wav(tmp_path / "_background_noise_" / "tap.wav", 0.1 * rng.standard_normal(3 * SR))
    for name in ("a.wav", "b.wav", "held.wav"):
        write_wav(tmp_path / "_silence_" / name, 0.05 * rng.standard_normal(SR))
    write_wav(tmp_path / "_silence_" / "short.wav", 0.05 * rng.standard_normal(SR // 2))
    (tmp_path / "testing_list.txt").write_text("_silence_/held.wav\n")
    noise = background_noise(tmp_path, SR, SR)
    assert [len(n) for n in noise] == [3 * SR, SR, SR]  # the recording, a and b: not the test clip, not the short one
    assert all(abs(float(n.mean())) < 1e-6 for n in noise)

    profile = RECIPE.profile("smoke")
    segments, source = tuning_noise(RECIPE, profile, tmp_path)
    assert source == f"background noise of {tmp_path.name} (3 recordings)"
    assert sum(len(s) for s in segments) == pytest.approx(profile.detector_noise_seconds * SR, abs=SR)
    empty = tmp_path / "empty"
    (empty / "yes").mkdir(parents=True)
    assert tuning_noise(RECIPE, profile, empty)[1] == tuning_noise(RECIPE, profile, None)[1] == "generated noise"
