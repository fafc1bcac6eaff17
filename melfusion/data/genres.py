"""The 15 MeLBench genres (appendix Table 8) and how SynthMeL plays each one.

Every genre fixes an instrumentation (General MIDI programs, in a typical order of entry),
a drum groove or none, a harmony family, a tempo range and a melody source, so that genres
differ audibly and consistently while keys, melodies and tempi vary inside each.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One instrument: what a caption calls it, its GM program (0-based) and how it plays."""
    name: str
    program: int
    style: str          # lead: "lead"; chords: block/strum/arp/comp/power/pad/montuno/stabs; bass: root/...
    octave: int         # MIDI octave of the part's tonic (4 = middle C's octave)


@dataclass(frozen=True)
class Genre:
    name: str
    subgenres: tuple[str, ...]
    tempo: tuple[int, int]          # bpm range; calm pieces sit low in it, driving ones high
    lead: Part
    chords: Part
    bass: Part | None
    drums: str | None               # groove name in music.GROOVES, or None
    harmony: str                    # progression family in music.PROGRESSIONS, or "fit" (harmonise the melody)
    melody: str                     # "riff", "song", "arp", "bebop", "blues", or "corpus:<source>"
    scenes: tuple[str, ...]         # what the image shows
    swing: float = 0.0              # 0 straight, 1 full triplet swing of off-beat eighths
    # minor V chord with the raised seventh (harmonic minor): its leading note is the surest sign
    # of minor apart from the third, and tells a minor key from its relative major
    raise_leading: bool = True


GENRES: tuple[Genre, ...] = (
    Genre("hip-hop", ("alternative hip hop", "trap", "east coast hip hop", "cloud rap", "underground hip hop", "west coast rap"),
          (78, 100), Part("pizzicato strings", 45, "lead", 5), Part("electric piano", 4, "block", 4),
          Part("synth bass", 39, "synth", 2), "boombap", "loop2", "riff", ("city", "graffiti wall"), swing=0.25),
    Genre("pop", ("dance pop", "indie pop", "electropop", "art pop", "singer-songwriter pop", "j-pop"),
          (100, 128), Part("square-wave synth lead", 80, "lead", 5), Part("piano", 0, "block", 4),
          Part("electric bass", 33, "root", 2), "pop", "pop4", "song", ("stage", "city")),
    Genre("latin", ("latin pop", "reggaeton", "tropical", "latin alternative", "banda", "mpb"),
          (88, 124), Part("trumpet", 56, "lead", 5), Part("nylon-string guitar", 24, "montuno", 4),
          Part("acoustic bass", 32, "tumbao", 2), "latin", "pop4", "song", ("beach", "street festival"),
          raise_leading=True),
    Genre("electronic", ("edm", "house", "trance", "electro house", "progressive house", "tropical house"),
          (118, 138), Part("sawtooth synth lead", 81, "lead", 5), Part("synth pad", 90, "stabs", 4),
          Part("synth bass", 38, "octaves", 2), "house", "epic4", "arp", ("neon grid", "club")),
    Genre("r&b", ("neo soul", "contemporary r&b", "quiet storm", "funk", "motown", "classic soul"),
          (66, 96), Part("synth voice", 54, "lead", 5), Part("electric piano", 5, "comp", 4),
          Part("fretless bass", 35, "root", 2), "rnb", "soul", "song", ("night city", "lounge"), swing=0.3),
    Genre("easy listening", ("adult standards", "lounge", "show tunes", "swing", "chanson", "soundtrack"),
          (76, 116), Part("vibraphone", 11, "lead", 5), Part("string ensemble", 48, "pad", 4),
          Part("upright bass", 32, "walking", 2), "brush", "jazz", "song", ("lounge", "garden"), swing=0.6,
          raise_leading=True),
    Genre("world/traditional", ("celtic", "folkmusik", "world", "laiko", "sufi", "entehno"),
          (92, 132), Part("pan flute", 75, "lead", 5), Part("accordion", 21, "block", 4),
          Part("acoustic bass", 32, "drone", 2), "hand", "fit", "corpus:irish", ("village", "mountains")),
    Genre("jazz", ("cool jazz", "hard bop", "smooth jazz", "bossa nova", "jazz piano", "soul jazz"),
          (92, 176), Part("tenor saxophone", 66, "lead", 4), Part("piano", 0, "comp", 4),
          Part("upright bass", 32, "walking", 2), "swing", "jazz", "bebop", ("jazz club", "city"), swing=0.65,
          raise_leading=True),
    Genre("rock", ("classic rock", "alternative rock", "indie rock", "hard rock", "blues rock", "punk"),
          (108, 152), Part("lead electric guitar", 29, "lead", 5), Part("overdriven rhythm guitar", 29, "power", 3),
          Part("electric bass", 34, "root", 2), "rock", "pop4", "riff", ("stage", "highway")),
    Genre("classical", ("baroque ensemble", "chamber orchestra", "choral", "neo-classical", "orchestra", "impressionism"),
          (60, 118), Part("violin", 40, "lead", 5), Part("strings", 48, "arp", 4),
          Part("cello", 42, "pedal", 3), None, "fit", "corpus:chorale", ("concert hall", "palace"),
          raise_leading=True),
    Genre("blues", ("electric blues", "delta blues", "chicago blues", "texas blues", "soul blues", "jazz blues"),
          (68, 118), Part("harmonica", 22, "lead", 5), Part("electric guitar", 26, "comp", 4),
          Part("electric bass", 33, "walking", 2), "shuffle", "blues12", "blues", ("bar", "delta river"), swing=0.7),
    Genre("metal", ("alternative metal", "thrash metal", "power metal", "nu metal", "symphonic metal", "death metal"),
          (96, 176), Part("distorted lead guitar", 30, "lead", 4), Part("distorted rhythm guitar", 30, "power", 3),
          Part("picked bass", 34, "chug", 2), "metal", "epic4", "riff", ("fire", "stage")),
    Genre("country", ("contemporary country", "outlaw country", "nashville sound", "progressive bluegrass", "alternative country", "classic texas country"),
          (88, 140), Part("fiddle", 110, "lead", 5), Part("banjo", 105, "strum", 4),
          Part("acoustic bass", 32, "rootfifth", 2), "train", "fit", "corpus:fiddle", ("fields", "ranch")),
    Genre("folk/acoustic", ("indie folk", "singer-songwriter", "new americana", "pop folk", "ambient folk", "modern indie folk"),
          (72, 124), Part("flute", 73, "lead", 5), Part("acoustic guitar", 25, "arp", 4),
          None, None, "fit", "corpus:essen", ("forest", "fields")),
    Genre("new age", ("ambient worship", "sleep", "healing hz", "background piano", "ocean", "atmosphere"),
          (58, 90), Part("celesta", 8, "lead", 5), Part("warm pad", 89, "pad", 4),
          Part("choir", 52, "pedal", 3), None, "fit", "corpus:renaissance", ("ocean", "sky")),
)

GENRE_NAMES = tuple(g.name for g in GENRES)
BY_NAME = {g.name: g for g in GENRES}

# MeLBench's image kinds and their shares (appendix Table 9: 3206/2404/2748/3092 of 11,450).
IMAGE_KINDS = ("natural", "animation", "poster", "painting")
IMAGE_KIND_WEIGHTS = (0.28, 0.21, 0.24, 0.27)


def genre(name: str) -> Genre:
    return BY_NAME[name]
