"""Composing a SynthMeL clip: a genre, a key, a mode and an energy in, MIDI notes out.

Mode is carried by the harmony (diatonic triads and sevenths built on the mode's scale, the
tonic chord first) and by the melody (its steps realised in the same scale). Energy is carried
by tempo (calm pieces low in the genre's range, driving ones high), note density (rhythm
vocabularies, chord and bass patterns, arpeggio rates), drum busyness and velocity.
Every random choice comes from the numpy Generator handed in, so a clip is a pure function
of its (seed, index).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from melfusion.data import melodies
from melfusion.data.genres import Genre, Part

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
DRUM_CHANNEL = 9

# Root scale degrees (0 = tonic) per bar; each family holds several loops.
# Root scale degrees (0 = tonic) per bar; each family holds several loops. The tonic chord
# comes back every other bar or so: a clear tonic is what lets major be told from minor
# (rather than from the relative key, which has the same notes).
PROGRESSIONS = {
    "loop2": ((0, 0, 5, 5), (0, 0, 3, 3), (0, 5, 0, 5), (0, 3, 0, 3)),
    "pop4": ((0, 4, 0, 3), (0, 3, 0, 4), (0, 5, 0, 4), (0, 3, 4, 0), (0, 0, 3, 4)),
    "epic4": ((0, 5, 0, 4), (0, 3, 0, 4), (0, 0, 5, 4), (0, 5, 3, 4)),
    "soul": ((0, 3, 0, 3), (0, 0, 3, 4), (0, 1, 0, 4), (0, 5, 0, 4)),
    "jazz": ((0, 0, 1, 4), (0, 1, 4, 0), (0, 3, 0, 4), (0, 5, 1, 4)),
    "blues12": ((0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4), (0, 3, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4)),
}
SEVENTHS = {"soul", "jazz", "blues12"}

# Drum grooves: {energy: {GM drum note: (16th-step onsets in a 4/4 bar)}}.
K, S, RIM, CLAP, HH, OHH, PHH, CRASH, RIDE = 36, 38, 37, 39, 42, 46, 44, 49, 51
TAMB, COWBELL, BONGO_HI, BONGO_LO, CONGA_HI, CONGA_LO, MARACAS, CLAVES, SHAKER = 54, 56, 60, 61, 63, 64, 70, 75, 82
EIGHTHS, SIXTEENTHS, QUARTERS = tuple(range(0, 16, 2)), tuple(range(16)), (0, 4, 8, 12)
GROOVES = {
    "boombap": {"calm": {K: (0, 10), S: (4, 12), HH: (0, 4, 8, 12)},
                "driving": {K: (0, 3, 7, 10, 11), S: (4, 12), HH: SIXTEENTHS, OHH: (14,)}},
    "pop": {"calm": {K: (0, 8), RIM: (4, 12), HH: QUARTERS},
            "driving": {K: (0, 6, 8, 10), S: (4, 12), CLAP: (4, 12), HH: SIXTEENTHS}},
    "latin": {"calm": {CONGA_LO: (0, 8), CONGA_HI: (6, 14), CLAVES: (0, 6, 12), SHAKER: EIGHTHS},
              "driving": {K: QUARTERS, RIM: (3, 6, 11, 14), CLAVES: (0, 3, 6, 10, 12), CONGA_HI: (2, 6, 10, 14),
                          CONGA_LO: (7, 15), SHAKER: SIXTEENTHS, COWBELL: QUARTERS}},
    "house": {"calm": {K: (0, 8), OHH: (4, 12), SHAKER: EIGHTHS},
              "driving": {K: QUARTERS, CLAP: (4, 12), OHH: (2, 6, 10, 14), HH: SIXTEENTHS}},
    "rnb": {"calm": {K: (0, 9), RIM: (4, 12), HH: QUARTERS},
            "driving": {K: (0, 3, 9, 11), S: (4, 12), CLAP: (12,), HH: SIXTEENTHS}},
    "brush": {"calm": {RIM: (12,), RIDE: (0, 8)},
              "driving": {RIM: (4, 12), RIDE: (0, 4, 6, 8, 12, 14), PHH: (4, 12), K: (0, 8)}},
    "hand": {"calm": {BONGO_LO: (0, 8), BONGO_HI: (6,), SHAKER: QUARTERS},
             "driving": {BONGO_LO: (0, 3, 8, 11), BONGO_HI: (2, 6, 10, 14), TAMB: EIGHTHS, CONGA_LO: (4, 12)}},
    "swing": {"calm": {RIDE: (0, 4, 8, 12), PHH: (4, 12)},
              "driving": {RIDE: (0, 4, 6, 8, 12, 14), PHH: (4, 12), S: (6, 14), K: (0, 10)}},
    "rock": {"calm": {K: (0, 8), S: (8,), RIDE: QUARTERS},
             "driving": {K: (0, 6, 8, 10), S: (4, 12), HH: EIGHTHS, CRASH: (0,)}},
    "shuffle": {"calm": {K: (0,), S: (12,), HH: QUARTERS},
                "driving": {K: (0, 8), S: (4, 12), HH: EIGHTHS, RIDE: QUARTERS}},
    "metal": {"calm": {K: (0, 8), S: (8,), CRASH: (0,), RIDE: QUARTERS},
              "driving": {K: SIXTEENTHS, S: (4, 12), CRASH: EIGHTHS}},
    "train": {"calm": {K: (0, 8), RIM: (4, 12)},
              "driving": {K: (0, 8), S: SIXTEENTHS, HH: (4, 12)}},
}

# Lead rhythms, onsets in beats within one 4-beat bar.
RHYTHMS = {
    "calm": ((0, 2), (0, 1.5, 2), (0, 3), (0, 1, 2), (0, 2, 3), (0, 1.5, 3)),
    "driving": ((0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5), (0, 0.75, 1.5, 2, 2.5, 3, 3.5), (0, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.25, 3.5),
                (0, 0.5, 1.5, 2, 2.5, 3.5), (0, 0.25, 0.5, 1, 1.5, 2, 2.25, 2.5, 3, 3.5)),
}


@dataclass
class Note:
    start: float   # beats
    dur: float     # beats
    pitch: int
    velocity: int
    channel: int


@dataclass
class Piece:
    bpm: int
    tonic: int                      # pitch class, 0 = C
    mode: str                       # "major" / "minor"
    energy: str                     # "calm" / "driving"
    bar_q: float
    beats: float                    # length to render, in beats
    order: list[str]                # instrument names in their order of entry (drums as "drums")
    melody_id: str
    notes: list[Note] = field(default_factory=list)
    programs: dict[int, int] = field(default_factory=dict)  # channel -> GM program

    @property
    def key(self) -> str:
        return f"{KEY_NAMES[self.tonic]} {self.mode}"


class Harmony:
    """Chords on a bar grid: `root degree` per bar, realised in the piece's scale."""

    def __init__(self, roots: list[int], bar_q: float, mode: str, tonic: int, sevenths: bool,
                 raise_leading: bool, dominant_blues: bool = False):
        self.roots, self.bar_q, self.mode, self.tonic = roots, bar_q, mode, tonic
        self.sevenths, self.raise_leading, self.dominant_blues = sevenths, raise_leading, dominant_blues
        self.scale = MAJOR if mode == "major" else MINOR

    def root_at(self, beat: float) -> int:
        return self.roots[min(int(beat // self.bar_q), len(self.roots) - 1) % len(self.roots)]

    def pitch(self, step: int, octave: int, chord_root: int | None = None) -> int:
        """MIDI pitch of scale step `step` with the tonic in MIDI octave `octave`."""
        semis = 12 * (step // 7) + self.scale[step % 7]
        if self.raise_leading and self.mode == "minor" and step % 7 == 6 and chord_root == 4:
            semis += 1  # harmonic minor on the dominant: a major V with a leading note
        return 12 * (octave + 1) + self.tonic + semis

    def chord_steps(self, beat: float) -> list[int]:
        r = self.root_at(beat)
        return [r, r + 2, r + 4] + ([r + 6] if self.sevenths else [])

    def chord_pitches(self, beat: float, octave: int) -> list[int]:
        r = self.root_at(beat)
        if self.dominant_blues and self.mode == "major":
            base = self.pitch(r, octave)
            return [base, base + 4, base + 7, base + 10]
        return [self.pitch(s, octave, r) for s in self.chord_steps(beat)]


def _vel(rng: np.random.Generator, energy: str, accent: float = 0.0) -> int:
    base = 104 if energy == "driving" else 62
    return int(np.clip(base + accent + rng.integers(-8, 9), 1, 127))


def _swing(onset: float, amount: float) -> float:
    """Delay off-beat eighths toward the triplet position (amount 1 = 2/3 of the beat)."""
    frac = onset % 1.0
    if amount and abs(frac - 0.5) < 1e-6:
        return onset + amount / 6.0
    return onset


# ---------------------------------------------------------------- melodies

def _generated_melody(g: Genre, h: Harmony, rng: np.random.Generator, energy: str, bars: int) -> list[tuple[int, float, float]]:
    """(step, start, dur) for `bars` bars of the genre's melody style over the harmony."""
    style = g.melody
    out: list[tuple[int, float, float]] = []
    if style == "arp":
        rate = 0.25 if energy == "driving" else 0.5
        shape = [0, 1, 2, 1] if rng.random() < 0.5 else [0, 1, 2, 3]
        for b in range(bars):
            steps = h.chord_steps(b * 4.0)[:3] + [h.chord_steps(b * 4.0)[0] + 7]
            t = 0.0
            while t < 4.0 - 1e-9:
                out.append((steps[shape[int(t / rate) % len(shape)]], b * 4.0 + t, rate))
                t += rate
        return out
    # A motif of one bar (riff) or two bars (song, bebop, blues) is repeated over the chords,
    # its notes re-aimed at the chord tones of each bar: loops that sound like the genre.
    motif_bars = 1 if style == "riff" else 2
    pool = RHYTHMS[energy]
    rhythms = [pool[rng.integers(len(pool))] for _ in range(motif_bars)]
    if style == "bebop" and energy == "driving":
        rhythms = [(0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5)] * motif_bars
    contour = []
    pos = int(rng.integers(0, 3))
    for rhythm in rhythms:
        bar_contour = []
        for _ in rhythm:
            pos = int(np.clip(pos + rng.choice([-2, -1, -1, 0, 1, 1, 2]), -1, 7))
            bar_contour.append(pos)
        contour.append(bar_contour)
    penta = {0, 1, 2, 4, 5} if h.mode == "major" else {0, 2, 3, 4, 6}
    for b in range(bars):
        rhythm, shape = rhythms[b % motif_bars], contour[b % motif_bars]
        tones = h.chord_steps(b * 4.0)
        for k, onset in enumerate(rhythm):
            step = shape[k]
            strong = abs(onset - round(onset)) < 1e-6 and int(onset) % 2 == 0
            if strong or k == 0:  # strong beats land on the nearest chord tone
                step = min((t + 7 * o for t in tones for o in (-1, 0, 1)), key=lambda s: (abs(s - step), s))
            elif style == "blues" and step % 7 not in penta:
                step += 1
            end = rhythm[k + 1] if k + 1 < len(rhythm) else 4.0
            out.append((step, b * 4.0 + onset, (end - onset)))
        if style in ("song", "blues") and b % 2 == 1 and out:
            # phrase ends rest a little and fall on the tonic chord's third or root
            s, t0, d = out[-1]
            out[-1] = (min((0, 2, 7), key=lambda x: abs(x - s)) if h.root_at(b * 4.0) == 0 else s, t0, d * 0.6)
    return out


def _corpus_melody(mel: dict) -> list[tuple[int, float, float]]:
    return [(int(s), float(o), float(d)) for s, o, d in mel["notes"]]


def _fit_harmony(notes: list[tuple[int, float, float]], bar_q: float, bars: int, mode: str) -> list[int]:
    """Per bar, the diatonic triad that covers most of the melody there (tonic preferred)."""
    candidates = (0, 4, 3, 5, 2) + ((1,) if mode == "major" else ())
    roots = []
    for b in range(bars):
        lo, hi = b * bar_q, (b + 1) * bar_q
        weights = np.zeros(7)
        for s, o, d in notes:
            if o < hi and o + d > lo:
                w = min(o + d, hi) - max(o, lo)
                weights[s % 7] += w * (1.5 if abs((o - lo) % 1.0) < 1e-6 else 1.0)
        bonus = {0: 1.0, 4: 0.3}  # tonic first, dominant next: the key stays unambiguous
        scores = [weights[[r % 7, (r + 2) % 7, (r + 4) % 7]].sum() + bonus.get(r, 0.0) for r in candidates]
        roots.append(candidates[int(np.argmax(scores))])
    if roots:
        roots[0] = 0  # open on the tonic chord: the mode is heard from the first bar
    return roots


# ---------------------------------------------------------------- accompaniment

def _chord_part(part: Part, h: Harmony, rng: np.random.Generator, energy: str, start: float, end: float,
                ch: int, swing: float) -> list[Note]:
    notes: list[Note] = []
    drive = energy == "driving"
    b = start
    while b < end - 1e-9:
        bar_end = min(b + h.bar_q, end)
        pitches = h.chord_pitches(b, part.octave)
        style = part.style
        if style == "power":
            r = pitches[0]
            pitches = [r, r + 7, r + 12, pitches[1] + 12]  # the third up an octave keeps the mode audible
        onsets: list[float]
        if style in ("pad",) or (not drive and style in ("block", "power", "stabs", "montuno")):
            onsets, durs = [0.0], [h.bar_q]
        elif style in ("block", "power"):
            onsets = [x * 0.5 for x in range(int(h.bar_q * 2))]
            durs = [0.45] * len(onsets)
        elif style == "stabs":
            onsets = [x + 0.5 for x in range(int(h.bar_q))]
            durs = [0.35] * len(onsets)
        elif style == "montuno":
            onsets = [0, 0.5, 1.5, 2, 2.5, 3.5][: int(h.bar_q * 1.5)]
            durs = [0.4] * len(onsets)
        elif style == "comp":
            choices = (0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5) if drive else (0, 1.5, 2.5)
            k = 4 if drive else 2
            onsets = sorted(float(x) for x in rng.choice(choices, size=k, replace=False))
            if h.bar_q < 4:
                onsets = [o for o in onsets if o < h.bar_q] or [0.0]
            durs = [0.45 if drive else 1.2] * len(onsets)
        elif style == "strum":
            onsets = [0, 1, 1.5, 2.5, 3, 3.5] if drive else [0, 2]
            onsets = [o for o in onsets if o < h.bar_q]
            durs = [0.5 if drive else 2.0] * len(onsets)
        elif style == "arp":
            rate = 0.25 if drive else 0.5
            seq = pitches[:3] + [pitches[0] + 12]
            seq = seq + seq[-2:0:-1]
            t = 0.0
            k = 0
            while t < h.bar_q - 1e-9 and b + t < end:
                notes.append(Note(b + t, rate * 1.8, seq[k % len(seq)], _vel(rng, energy, -14), ch))
                t += rate
                k += 1
            b += h.bar_q
            continue
        else:
            onsets, durs = [0.0], [h.bar_q]
        for o, d in zip(onsets, durs):
            o2 = _swing(o, swing)
            if b + o2 >= end:
                continue
            spread = 0.03 if style == "strum" else 0.0  # strummed strings arrive one after another
            v = _vel(rng, energy, -12)
            for i, p in enumerate(pitches):
                notes.append(Note(b + o2 + i * spread, min(d, bar_end - b - o2), p, v, ch))
        b += h.bar_q
    return notes


def _bass_part(part: Part, h: Harmony, rng: np.random.Generator, energy: str, start: float, end: float,
               ch: int, swing: float) -> list[Note]:
    notes: list[Note] = []
    drive = energy == "driving"
    style = part.style
    b = start
    while b < end - 1e-9:
        r = h.root_at(b)
        root = h.pitch(r, part.octave, r)
        fifth = h.pitch(r + 4, part.octave, r)
        beats = max(1, int(round(h.bar_q)))
        seq: list[tuple[float, float, int]]
        if style == "walking":
            if drive:
                tones = [root, h.pitch(r + 2, part.octave, r), fifth, h.pitch(r + 5, part.octave, r)]
                seq = [(float(i), 0.9, tones[i % 4]) for i in range(beats)]
            else:
                seq = [(0.0, 1.9, root), (2.0, 1.9, fifth)][: max(1, beats // 2)]
        elif style == "rootfifth":
            seq = [(float(i), 0.9, root if i % 2 == 0 else fifth - 12) for i in range(beats)] if drive \
                else [(0.0, 1.9, root), (2.0, 1.9, fifth - 12)][: max(1, beats // 2)]
        elif style == "tumbao":
            seq = [(0.0, 0.9, root), (1.5, 1.4, fifth - 12), (3.0, 0.9, root)] if drive else [(0.0, 3.9, root)]
        elif style in ("octaves",):
            seq = [(x * 0.5, 0.4, root + (12 if x % 2 else 0)) for x in range(beats * 2)] if drive else [(0.0, h.bar_q, root)]
        elif style == "chug":
            seq = [(x * 0.25, 0.22, root) for x in range(beats * 4)] if drive else [(0.0, h.bar_q, root)]
        elif style == "drone":
            seq = [(0.0, h.bar_q, root), (0.0, h.bar_q, fifth)] if not drive else \
                [(float(i), 0.9, root if i % 2 == 0 else fifth) for i in range(beats)]
        elif style == "pedal":
            seq = [(x * 0.5, 0.45, root) for x in range(beats * 2)] if drive else [(0.0, h.bar_q, root)]
        elif style == "synth":
            seq = [(0.0, 1.4, root), (1.75, 0.5, root), (2.5, 1.4, root)] if drive else [(0.0, 2.9, root)]
        else:  # "root"
            seq = [(x * 0.5, 0.4, root) for x in range(beats * 2)] if drive else [(0.0, 1.9, root), (2.0, 1.9, root)]
        for o, d, p in seq:
            if o >= h.bar_q:
                continue
            o2 = _swing(o, swing)
            if b + o2 < end:
                notes.append(Note(b + o2, d, p, _vel(rng, energy, -4), ch))
        b += h.bar_q
    return notes


def _drum_part(groove: str, bar_q: float, rng: np.random.Generator, energy: str, start: float, end: float,
               swing: float) -> list[Note]:
    pattern = GROOVES[groove][energy]
    notes: list[Note] = []
    b = start
    while b < end - 1e-9:
        for drum, steps in pattern.items():
            for st in steps:
                o = _swing(st / 4.0, swing)
                if o >= bar_q or b + o >= end:
                    continue
                accent = 10 if st % 4 == 0 else (-6 if st % 2 else 0)
                if drum in (HH, SHAKER, RIDE, PHH) and energy == "calm":
                    accent -= 10
                notes.append(Note(b + o, 0.25, drum, _vel(rng, energy, accent), DRUM_CHANNEL))
        b += bar_q
    return notes


# ---------------------------------------------------------------- the piece

def tempo_for(g: Genre, energy: str, rng: np.random.Generator) -> int:
    lo, hi = g.tempo
    span = hi - lo
    a, b = (lo, lo + 0.4 * span) if energy == "calm" else (lo + 0.6 * span, hi)
    return int(round(rng.uniform(a, b)))


def compose(g: Genre, rng: np.random.Generator, *, mode: str, energy: str, split: str,
            duration_s: float, melody_tag: str) -> Piece:
    """One clip's notes. `melody_tag` names a generated melody; corpus melodies come from `split`'s pool."""
    tonic = int(rng.integers(12))
    bpm = tempo_for(g, energy, rng)
    beats_needed = duration_s * bpm / 60.0 + 1.0

    # Order of entry: drums or bass often start, the lead comes last or second to last.
    backing = [g.chords] + ([g.bass] if g.bass else [])
    rng.shuffle(backing)
    order_parts: list[Part | str] = list(backing)
    if g.drums:
        order_parts.insert(int(rng.integers(0, len(order_parts) + 1)), "drums")
    order_parts.append(g.lead)
    step_beats = 1.0 if bpm < 90 else 2.0  # about a second between entries

    if g.melody.startswith("corpus:"):
        source = g.melody.split(":", 1)[1]
        bank = melodies.load_bank()[source]
        pool = melodies.split_pool(source, split)
        if g.drums:  # grooves are in 4/4: keep tunes in duple metre
            duple = [i for i in pool if bank[i]["bar_q"] in (2.0, 4.0)]
            pool = tuple(duple) or pool
        mel = bank[pool[int(rng.integers(len(pool)))]]
        bar_q = 4.0 if mel["bar_q"] in (2.0, 4.0, 8.0) else float(mel["bar_q"])
        melody_id = mel["id"]
        steps = _corpus_melody(mel)
        pickup = float(mel.get("pickup_q", 0.0)) % bar_q
        length = steps[-1][1] + steps[-1][2]
        # loop the tune if the clip is longer than it
        reps = int(math.ceil((beats_needed + bar_q) / max(length, 1.0)))
        looped = [(s, o + r * length, d) for r in range(reps) for s, o, d in steps]
        lead_start = (len(order_parts) - 1) * step_beats
        first_bar = math.ceil(lead_start / bar_q) * bar_q if pickup else lead_start
        offset = first_bar - pickup if pickup else lead_start
        if offset < lead_start:
            offset += bar_q
        bars = int(math.ceil((beats_needed + 1) / bar_q)) + 1
        # harmonise in the melody's bar grid, shifted so bar lines line up
        shifted = [(s, o + offset, d) for s, o, d in looped if o + offset < bars * bar_q]
        roots = _fit_harmony(shifted, bar_q, bars, mode)
        sevenths = False
        melody_notes = shifted
    else:
        bar_q = 4.0
        bars = int(math.ceil(beats_needed / bar_q)) + 1
        options = PROGRESSIONS[g.harmony]
        prog = options[int(rng.integers(len(options)))]
        roots = [prog[i % len(prog)] for i in range(bars)]
        sevenths = g.harmony in SEVENTHS
        melody_id = melody_tag
        melody_notes = []
    h = Harmony(roots, bar_q, mode, tonic, sevenths, g.raise_leading, dominant_blues=g.harmony == "blues12")
    if not melody_notes:
        lead_start = (len(order_parts) - 1) * step_beats
        gen = _generated_melody(g, h, rng, energy, bars)
        first_bar = math.ceil(lead_start / bar_q) * bar_q
        melody_notes = [(s, o, d) for s, o, d in gen if o >= first_bar]
        if not melody_notes:
            melody_notes = gen
    beats = duration_s * bpm / 60.0
    piece = Piece(bpm=bpm, tonic=tonic, mode=mode, energy=energy, bar_q=bar_q, beats=beats,
                  order=[p if isinstance(p, str) else p.name for p in order_parts], melody_id=melody_id)

    channels = {g.lead.name: 0, g.chords.name + "#c": 1}
    if g.bass:
        channels[g.bass.name + "#b"] = 2
    piece.programs = {0: g.lead.program, 1: g.chords.program}
    if g.bass:
        piece.programs[2] = g.bass.program
    end = beats + 0.5
    for k, p in enumerate(order_parts):
        entry = k * step_beats
        if p == "drums":
            piece.notes += _drum_part(g.drums, bar_q, rng, energy, entry, end, g.swing)
        elif p is g.chords:
            piece.notes += _chord_part(p, h, rng, energy, entry, end, 1, g.swing)
        elif p is g.bass:
            piece.notes += _bass_part(p, h, rng, energy, entry, end, 2, g.swing)
    # the lead: the melody's steps in the mode's scale, denser when driving
    octave = g.lead.octave
    for s, o, d in melody_notes:
        if o >= end:
            continue
        o2 = _swing(o, g.swing) if g.swing else o
        r = h.root_at(o2)
        dur = d * (0.9 if energy == "calm" else 0.8)
        if energy == "driving" and not g.melody.startswith("corpus:") or d < 1.0 or energy == "calm":
            piece.notes.append(Note(o2, dur, h.pitch(s, octave, r), _vel(rng, energy, 8), 0))
        else:
            # driving corpus tunes: long notes are re-struck in eighths, so density follows energy
            t = 0.0
            while t < d - 1e-9:
                piece.notes.append(Note(o2 + t, 0.4, h.pitch(s, octave, r), _vel(rng, energy, 8 if t == 0 else 0), 0))
                t += 0.5
    return piece


# ---------------------------------------------------------------- Standard MIDI File

TICKS = 480


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(piece: Piece) -> bytes:
    """A format-0 Standard MIDI File: tempo, programs, notes; stops at the clip's end."""
    events: list[tuple[int, int, bytes]] = []  # (tick, order, data); note-offs sort before note-ons
    events.append((0, 0, b"\xff\x51\x03" + struct.pack(">I", int(round(60_000_000 / piece.bpm)))[1:]))
    for ch, prog in sorted(piece.programs.items()):
        events.append((0, 1, bytes([0xC0 | ch, prog])))
        events.append((0, 1, bytes([0xB0 | ch, 91, 30])))  # a little reverb send
        events.append((0, 1, bytes([0xB0 | ch, 93, 0])))   # no chorus
    end_tick = int(round(piece.beats * TICKS))
    for n in piece.notes:
        on = int(round(n.start * TICKS))
        off = int(round((n.start + max(n.dur, 0.05)) * TICKS))
        if on >= end_tick or not 0 <= n.pitch <= 127:
            continue
        events.append((on, 3, bytes([0x90 | n.channel, n.pitch, max(1, min(127, n.velocity))])))
        events.append((off, 2, bytes([0x80 | n.channel, n.pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    track = bytearray()
    last = 0
    for tick, _, data in events:
        track += _vlq(tick - last) + data
        last = tick
    track += _vlq(max(0, end_tick + TICKS - last)) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS) + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)
