"""Item content generated from a latent: small RGB images and pseudo-word text.

Both renderers are fixed random functions of the latent (their parameters are drawn once per
world from the seed) plus per-item nuisance, so content really carries preference
information, but mostly in directions a randomly initialised model does not look at:

* Images: ``sigmoid(colour + signal(latent) + texture(latent) + nuisance)``. The signal is a
  smooth pattern (low-frequency cosine modes per channel) with coefficients ``tanh(A z)``;
  the texture is a grating whose frequency, orientation and colour depend on the latent and
  whose phase is random (learnable by a conv/ViT, invisible to a linear probe). A random
  background colour and a random smooth field of larger energy dominate raw-pixel
  similarity, so cosine of raw pixels is close to chance while a linear probe still finds
  the signal.
* Text: a vocabulary of pseudo-words, each with a direction in latent space; a title of 3-5
  words and a description of 8-15 words, the informative words drawn (without replacement)
  by softmax(latent . direction / temperature), the rest filler words unrelated to the latent.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np


FILLER = ("the", "a", "with", "and", "for", "in", "of", "new", "classic", "set", "daily", "perfect",
          "style", "simple", "great", "best", "easy", "fresh", "my", "our", "this", "one", "more", "all")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
MODE_FREQS = 4  # cosine modes 0..3 along each axis


def vocabulary(size: int) -> list[str]:
    """``size`` distinct pronounceable pseudo-words, the same list for every seed (seed 0 of
    its own generator), so tokenisers see the same spellings across worlds."""
    rng = np.random.default_rng(0)
    words: list[str] = []
    seen = set(FILLER)
    while len(words) < size:
        syllables = rng.integers(2, 4)
        word = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(syllables))
        if rng.random() < 0.4:
            word += _CONSONANTS[rng.integers(len(_CONSONANTS))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class ImageRenderer:
    """Renders (n, dim) latents into (n, size, size, 3) uint8 images; vectorised in numpy.

    Pixel logits = background colour + low-frequency field (both random per item: the
    nuisance that dominates raw-pixel energy) + mid-frequency field with coefficients
    tanh(A z) (the linearly decodable signal) + latent-driven grating with random phase +
    pixel noise, squashed by a sigmoid.
    """

    # Amplitudes in logit space (before the sigmoid), chosen so that the signal carries about
    # a tenth of the pixel variance: raw-pixel similarity is then close to chance while a
    # linear probe still recovers much of the latent.
    COLOUR_SD = 0.7
    LOW_SD = 0.7
    SIGNAL_AMP = 0.2
    MID_NOISE_SD = 0.05
    TEXTURE_AMP = 0.35
    PIXEL_NOISE_SD = 0.1

    def __init__(self, dim: int, size: int, rng: np.random.Generator):
        self.size = size
        grid = (np.arange(size) + 0.5) / size
        low, mid = [], []
        for fy in range(MODE_FREQS + 1):
            for fx in range(MODE_FREQS + 1):
                mode = np.outer(np.cos(np.pi * fy * grid), np.cos(np.pi * fx * grid))
                if max(fx, fy) == 0:
                    continue  # the constant mode belongs to the background colour
                (low if max(fx, fy) <= 1 else mid).append(mode)
        self.low = self._per_channel(np.stack(low))
        self.mid = self._per_channel(np.stack(mid))
        self.mix = rng.standard_normal((len(self.mid), dim))  # A: latent -> mid coefficients
        self.texture_dirs = rng.standard_normal((2, dim))  # frequency, orientation
        self.texture_colour = rng.standard_normal((3, dim))
        self.yy, self.xx = (g.astype(np.float32) for g in np.meshgrid(grid, grid, indexing="ij"))

    @staticmethod
    def _per_channel(modes: np.ndarray) -> np.ndarray:
        """(k, s, s) modes -> (3k, s*s*3) basis images, one per (mode, channel)."""
        k, s, _ = modes.shape
        basis = np.zeros((k, 3, s, s, 3), dtype=np.float32)
        for c in range(3):
            basis[:, c, :, :, c] = modes
        return basis.reshape(3 * k, -1)

    def render(self, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, s = len(latent), self.size
        f32 = np.float32
        # Latents have norm ~1, so A z has unit scale per coefficient and tanh bends it mildly.
        signal = np.tanh(latent @ self.mix.T) * self.SIGNAL_AMP
        signal += rng.standard_normal(signal.shape) * self.MID_NOISE_SD
        nuisance = rng.standard_normal((n, len(self.low))) * self.LOW_SD
        x = signal.astype(f32) @ self.mid + nuisance.astype(f32) @ self.low
        x = x.reshape(n, s, s, 3)
        x += (rng.standard_normal((n, 1, 1, 3)) * self.COLOUR_SD).astype(f32)
        # Texture: frequency 2..8 cycles and orientation from the latent, phase at random.
        proj = latent @ self.texture_dirs.T
        freq = 2.0 + 6.0 / (1.0 + np.exp(-2.0 * proj[:, 0]))
        theta = np.pi / (1.0 + np.exp(-2.0 * proj[:, 1]))
        phase = rng.uniform(0, 2 * np.pi, n)
        kx = (2 * np.pi * freq * np.cos(theta)).astype(f32)[:, None, None]
        ky = (2 * np.pi * freq * np.sin(theta)).astype(f32)[:, None, None]
        wave = np.sin(kx * self.xx + ky * self.yy + phase.astype(f32)[:, None, None])
        colour = (self.TEXTURE_AMP * np.tanh(latent @ self.texture_colour.T)).astype(f32)
        x += wave[..., None] * colour[:, None, None, :]
        x += rng.standard_normal(x.shape, dtype=f32) * f32(self.PIXEL_NOISE_SD)
        # sigmoid(x) * 255, via tanh to stay in float32 without overflow warnings
        return (np.tanh(x * f32(0.5)) * f32(127.5) + f32(127.5)).astype(np.uint8)


class TextRenderer:
    """Renders latents into ``"Title words. description words."`` strings."""

    # Half the description slots are filler words unrelated to the latent: they dominate
    # bag-of-words similarity (near chance) but a probe learns to ignore them.
    FILLER_SHARE = 0.5
    CHUNK = 2_000  # items per batch: bounds the (items x vocabulary) arrays to ~32 MB each

    def __init__(self, dim: int, vocab_size: int, temperature: float, rng: np.random.Generator):
        self.words = np.array(vocabulary(vocab_size), dtype=object)
        directions = rng.standard_normal((vocab_size, dim))
        self.directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        self.temperature = temperature

    def render(self, latent: np.ndarray, rng: np.random.Generator) -> list[str]:
        n = len(latent)
        top = np.concatenate([self._top_words(latent[lo:lo + self.CHUNK], rng) for lo in range(0, n, self.CHUNK)])
        n_title = rng.integers(3, 6, n)
        n_desc = rng.integers(8, 16, n)
        filler_slot = rng.random((n, 15)) < self.FILLER_SHARE
        filler_word = rng.integers(0, len(FILLER), (n, 15))
        texts = []
        for i in range(n):
            chosen = self.words[top[i]]
            title = " ".join(w.capitalize() for w in chosen[: n_title[i]])
            informative = iter(chosen[n_title[i]:])
            desc = [FILLER[filler_word[i, k]] if filler_slot[i, k] else next(informative) for k in range(n_desc[i])]
            texts.append(f"{title}. {' '.join(desc)}.")
        return texts

    def _top_words(self, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, 20) word indices per item, in sampling order: 20 distinct draws from
        softmax(unit latent . direction / temperature) (Gumbel top-k = sampling without
        replacement), enough for a 5-word title and a 15-word description."""
        unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
        keys = unit @ self.directions.T / self.temperature + rng.gumbel(size=(len(latent), len(self.directions)))
        top = np.argpartition(-keys, 20, axis=1)[:, :20]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)


def encode_png(pixels: np.ndarray, level: int = 1) -> list[bytes]:
    """(n, h, w, 3) uint8 -> n PNG files (8-bit RGB), filtered in one vectorised step.

    A minimal, standard PNG writer: every row uses filter type 2 ("Up": the difference from
    the row above), which suits these smooth images; only zlib runs per image. It matched
    PIL's file size at about a quarter of PIL's time (PIL tries filters per row), and PNG
    encoding is what dominates writing a large catalogue. Deterministic: no time chunks.
    """
    n, h, w, _ = pixels.shape
    rows = pixels.reshape(n, h, w * 3)
    raw = np.empty((n, h, w * 3 + 1), dtype=np.uint8)
    raw[:, :, 0] = 2
    raw[:, 0, 1:] = rows[:, 0]
    raw[:, 1:, 1:] = rows[:, 1:] - rows[:, :-1]  # uint8 arithmetic wraps modulo 256, as PNG wants
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    end = _chunk(b"IEND", b"")
    return [header + _chunk(b"IDAT", zlib.compress(image.tobytes(), level)) + end for image in raw]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
