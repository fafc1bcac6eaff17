"""Free-form captions in MeLBench's style (appendix Fig. 3): genre, sub-genre and the
instruments in their order of entry, in varied wording.

What a caption must never say: the mode or the mood words that give it away (the image
carries mode and energy). Tempo is mentioned in at most about a fifth of captions.
"""
from __future__ import annotations

import re

import numpy as np

# Words that would leak mode or energy into the text; captions are checked against them.
FORBIDDEN = (
    "happy", "sad", "bright", "dark", "major", "minor", "joyful", "joyous", "cheerful", "gloomy", "melancholic",
    "melancholy", "somber", "sombre", "mournful", "uplifting", "upbeat", "energetic", "calm", "relaxed", "relaxing",
    "driving", "intense", "chill", "mellow", "gentle", "soft", "aggressive", "fast", "slow", "busy", "sparse",
    "wistful", "haunting", "sunny", "moody", "triumphant", "tense", "peaceful", "serene", "lively", "heavy",
)
TEMPO_SHARE = 0.2

GENRE_WORDS = {
    "hip-hop": ("hip-hop", "hip hop"), "pop": ("pop",), "latin": ("Latin", "Latin music"),
    "electronic": ("electronic", "electronic dance"), "r&b": ("R&B", "rhythm and blues"),
    "easy listening": ("easy listening",), "world/traditional": ("world / traditional", "traditional world"),
    "jazz": ("jazz",), "rock": ("rock",), "classical": ("classical",), "blues": ("blues",),
    "metal": ("metal",), "country": ("country",), "folk/acoustic": ("folk / acoustic", "acoustic folk"),
    "new age": ("new age",),
}
SYNONYMS = {
    "electric piano": ("electric piano", "Rhodes-style keys", "an e-piano"),
    "synth bass": ("synth bass", "a synthesized bassline", "sub bass"),
    "pizzicato strings": ("pizzicato strings", "plucked strings"),
    "piano": ("piano", "acoustic piano", "grand piano"),
    "electric bass": ("electric bass", "bass guitar"),
    "square-wave synth lead": ("a square-wave synth lead", "a chiptune-like synth lead", "a synth lead"),
    "trumpet": ("trumpet", "a brass trumpet line"),
    "nylon-string guitar": ("nylon-string guitar", "Spanish guitar", "classical guitar"),
    "acoustic bass": ("acoustic bass", "upright bass", "double bass"),
    "upright bass": ("upright bass", "double bass", "acoustic bass"),
    "sawtooth synth lead": ("a sawtooth synth lead", "a saw lead", "synthesizers"),
    "synth pad": ("synth pads", "synth chords", "synthesizer stabs"),
    "synth voice": ("synth vocals", "a wordless vocal synth", "vocal-like synth"),
    "fretless bass": ("fretless bass", "a smooth bass guitar"),
    "vibraphone": ("vibraphone", "vibes"),
    "string ensemble": ("a string ensemble", "lush strings", "orchestral strings"),
    "pan flute": ("pan flute", "pan pipes"),
    "accordion": ("accordion", "squeezebox accordion"),
    "tenor saxophone": ("tenor saxophone", "tenor sax", "saxophone"),
    "lead electric guitar": ("lead electric guitar", "a guitar lead", "electric guitar solo lines"),
    "overdriven rhythm guitar": ("overdriven rhythm guitar", "crunchy electric guitars", "rhythm guitar"),
    "violin": ("violin", "solo violin"),
    "strings": ("strings", "violas and violins", "a string section"),
    "cello": ("cello", "cellos"),
    "harmonica": ("harmonica", "blues harp"),
    "electric guitar": ("electric guitar", "clean electric guitar"),
    "distorted lead guitar": ("distorted lead guitar", "shredding lead guitar", "a distorted guitar lead"),
    "distorted rhythm guitar": ("distorted rhythm guitars", "high-gain guitars", "palm-muted guitars"),
    "picked bass": ("picked bass", "bass guitar"),
    "fiddle": ("fiddle", "country fiddle"),
    "banjo": ("banjo", "five-string banjo"),
    "flute": ("flute", "wooden flute"),
    "acoustic guitar": ("acoustic guitar", "fingerpicked acoustic guitar", "steel-string guitar"),
    "celesta": ("celesta", "bell-like celesta", "chimes"),
    "warm pad": ("warm synth pads", "ambient pads", "a pad"),
    "choir": ("choir", "choral voices", "a wordless choir"),
}
DRUMS = {
    "boombap": ("boom-bap drums", "a drum machine beat", "punchy drums"),
    "pop": ("drums", "a pop drum kit", "programmed drums"),
    "latin": ("Latin percussion", "congas, claves and shakers", "percussion"),
    "house": ("a four-on-the-floor drum machine", "dance drums", "a house beat"),
    "rnb": ("drums", "a laid-back beat", "programmed drums"),
    "brush": ("brushed drums", "a light drum kit", "brushes and ride cymbal"),
    "hand": ("hand percussion", "bongos and shakers", "frame drums"),
    "swing": ("a swing drum kit", "ride cymbal and drums", "drums"),
    "rock": ("drums", "a rock drum kit", "live drums"),
    "shuffle": ("shuffle drums", "a blues drum kit", "drums"),
    "metal": ("double-kick drums", "metal drums", "thunderous drums"),
    "train": ("train-beat drums", "a snare train beat", "drums"),
}

GENRE_SENTENCES = (
    "The track falls within the {sub} genre.",
    "The track is nestled within the {sub} genre.",
    "This is a {genre} piece, more precisely {sub}.",
    "The music track belongs to the {genre} genre, in its {sub} form.",
    "A {sub} track from the wider {genre} family.",
    "The composition can be classified as {sub}, a branch of {genre}.",
    "Genre-wise it sits in {genre}, leaning toward {sub}.",
    "It is a {genre} recording with a {sub} flavour.",
    "The piece belongs to {sub}.",
    "The song can be classified as {genre}, specifically {sub}.",
)
ORDER_SENTENCES = (
    "It opens with {a}, and {rest} come in one after another.",
    "The composition begins with {a}; {rest} are layered in as it goes on.",
    "Instruments enter one by one: {seq}.",
    "It kicks off with {a}, followed by {rest}.",
    "The arrangement starts on {a} before {rest} join.",
    "First comes {a}, then {rest}.",
    "The track features {seq}, introduced in that order.",
    "Its instrumentation unfolds in sequence: {seq}.",
    "It is built from {seq}, entering in a distinct sequence.",
    "{A} sets it off, and {rest} follow.",
)
LEAD_SENTENCES = (
    "The melody is carried by {lead}.",
    "{Lead} plays the main tune.",
    "The lead line belongs to {lead}.",
    "On top, {lead} states the theme.",
    "",
    "",
)
EXTRA_SENTENCES = (
    "The piece is instrumental.",
    "There are no vocals.",
    "The mix is clean and close.",
    "It sounds like a live ensemble in a room.",
    "The recording has a little room reverb.",
    "It would fit a film scene.",
    "The harmony moves through a short repeating progression.",
    "",
    "",
    "",
)
TEMPO_SENTENCES = (
    "The tempo sits around {bpm} BPM.",
    "It moves at roughly {bpm} beats per minute.",
    "It is played at about {bpm} BPM.",
)
NO_DRUMS = ("There is no percussion.", "No drums are used.", "")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + _pick(rng, (" and ", ", and ", " and finally ")) + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_caption(rng: np.random.Generator, *, genre: str, subgenre: str, order: list[str], lead: str,
                 drums: str | None, bpm: int) -> str:
    """One caption; `order` lists instrument names (and "drums") in their order of entry."""
    names = [(_pick(rng, DRUMS[drums]) if n == "drums" else _pick(rng, SYNONYMS.get(n, (n,)))) for n in order]
    lead_name = names[order.index(lead)] if lead in order else lead
    g = _pick(rng, GENRE_WORDS[genre])
    genre_s = _pick(rng, GENRE_SENTENCES).format(sub=subgenre, genre=g)
    tpl = _pick(rng, ORDER_SENTENCES)
    order_s = tpl.format(a=names[0], A=_cap(names[0]), rest=_join(names[1:], rng), seq=_join(names, rng))
    parts = [genre_s, order_s] if rng.random() < 0.6 else [order_s, genre_s]
    lead_s = _pick(rng, LEAD_SENTENCES)
    if lead_s:
        parts.append(lead_s.format(lead=lead_name, Lead=_cap(lead_name)))
    if drums is None:
        s = _pick(rng, NO_DRUMS)
        if s:
            parts.append(s)
    extra = _pick(rng, EXTRA_SENTENCES)
    if extra:
        parts.append(extra)
    if rng.random() < TEMPO_SHARE:
        parts.insert(int(rng.integers(1, len(parts) + 1)), _pick(rng, TEMPO_SENTENCES).format(bpm=bpm))
    text = " ".join(_cap(p) for p in parts)
    return re.sub(r"\s+", " ", text).strip()


def leaked_words(caption: str) -> list[str]:
    """The forbidden words a caption contains (whole words, any case)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    return [w for w in FORBIDDEN if w in words]
